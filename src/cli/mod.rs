//! The `reprodiff` command line: the flags (clap) and, per command, the function that runs it
//! over the library. src/main.rs only calls [`main`]. Exit codes: [`crate::error::exit`].
//!
//! - `select`: the flags that choose suites, scenarios and the fixtures tree.
//! - `check`: `check`, `bless`, `list`, `matrix`, `calibrate`.
//! - `report`: `report`, `localize`, `golden compare`, `golden merge`.
//! - `run`: `run ddim`, `run sd`, and the hidden `observe` a child process runs.
//! - `bench`: `bench ddim`, `bench sd`, `bench gemm`.
//! - `model`: `derive-weights`, and the hidden `resolve-model` the oracle asks.
//! - `env`: the `env` command.
mod bench;
mod check;
mod env;
mod model;
mod report;
mod run;
mod select;

use bench::BenchPipeline;
use check::MatrixAxes;
use clap::{Parser, Subcommand};
use run::RunPipeline;
use select::SelectArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reprodiff",
    version,
    about = "Reproducibility harness and conformance suite for diffusion pipelines on libtorch"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Two recorded runs (python/reprodiff-record) side by side: what differs in their
    /// environments and calls, where their latents part, the known causes (exit 0 identical
    /// bits, 1 they differ, 2 bad input).
    Diff {
        /// A recorded run's folder (run.json).
        a: PathBuf,
        /// The other recorded run's folder.
        b: PathBuf,
    },
    /// Print the JSON Schema of a format reprodiff reads (its one definition).
    Schema {
        #[arg(value_enum)]
        kind: SchemaKind,
    },
    /// Run scenarios and compare them with their goldens (exit 0 pass, 1 drift/failure, 2 bad input).
    Check(CheckArgs),
    /// Deliberately refresh goldens: each scenario runs twice and must repeat bit for bit.
    Bless {
        #[command(flatten)]
        sel: SelectArgs,
    },
    /// Compute what each selected suite's cross-class truth rule needs (noise_ulps, step_ulps
    /// and local_ulps per dtype, for the suite's rule and each scenario override), from
    /// diffusers' recorded classes in its goldens alone, and whether each value keeps the
    /// policy (at least the need, at most 2x it). Exit 1 when one breaks it.
    Calibrate {
        #[command(flatten)]
        sel: SelectArgs,
    },
    /// List the selected scenarios.
    List {
        #[command(flatten)]
        sel: SelectArgs,
        /// JSON Lines, one expanded scenario each: {"suite", "suite_file", "scenario",
        /// "oracle_determinism", "slug"} (what the oracle reads, so that suites are expanded in
        /// one place): every determinism switch the oracle computes it under, its preset
        /// resolved, and the file-name form of its name.
        #[arg(long)]
        json: bool,
    },
    /// Run the selected scenarios under each combination of CPU kernel class, thread count,
    /// determinism, dtype, device and knob this host can run, each in its own `check` child
    /// writing <out>/<combination>/records.jsonl.
    Matrix {
        #[command(flatten)]
        sel: SelectArgs,
        #[command(flatten)]
        axes: MatrixAxes,
        /// Where each combination's records folder goes.
        #[arg(long, default_value = "reprodiff-out/matrix")]
        out: PathBuf,
    },
    /// Where two runs of one scenario part: each side (CLASS[-threadsN][+KNOB...], as matrix
    /// labels its combinations) runs it plain and with activation capture in child processes; the captured
    /// activations are walked in execution order to the first module whose bits differ.
    Localize(LocalizeArgs),
    /// A Markdown drift report over check record folders (`check --out DIR`), one set per
    /// folder: per environment class, counts by verdict and the worst l_inf; with --baseline,
    /// each set against it (newly drifted, newly fixed, new, missing).
    Report(ReportArgs),
    /// Maintain golden files.
    Golden {
        #[command(subcommand)]
        action: GoldenAction,
    },
    /// Run one pipeline and save or print its output.
    Run {
        #[command(subcommand)]
        pipeline: RunPipeline,
    },
    /// Time a pipeline: load once, one warm-up run, then timed runs; prints JSON with the
    /// seconds of each run and the peak resident memory (ci/bench.py compares with diffusers).
    Bench {
        #[command(subcommand)]
        pipeline: BenchPipeline,
    },
    /// Write a diffusers pipeline folder with deterministically derived weights.
    DeriveWeights {
        /// The architecture whose weights are derived (`models::derived::ARCHS`).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::models::derived::ARCHS))]
        arch: String,
        /// Output folder (replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the environment fingerprint.
    Env {
        /// Print JSON (the schema every record and golden carries).
        #[arg(long)]
        json: bool,
    },
    /// Where a model is, as one JSON line {"spec", "folder"} or {"spec", "unavailable"}: the
    /// oracle loads what this names, so both sides resolve models by one rule (derived weights
    /// are made in the cache first).
    #[command(hide = true)]
    ResolveModel {
        spec: String,
        /// The folder bare names are looked up in (a fixtures tree's models/).
        #[arg(long, value_name = "DIR")]
        models: Option<PathBuf>,
    },
    /// Run one scenario and write its observation (used for child processes).
    #[command(hide = true)]
    Observe {
        #[arg(long)]
        suite_file: PathBuf,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        out: PathBuf,
        /// The local pass's inputs (a JSON file the parent wrote): run it after the scenario.
        #[arg(long)]
        local: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum GoldenAction {
    /// Judge the oracle's outputs from elsewhere (another torch release, another host: a
    /// results directory) against the goldens as `check` judges a run, writing check records
    /// to <out>/records.jsonl for `reprodiff report`. The goldens are not changed.
    Compare {
        /// The oracle's results directory (results.jsonl + arrays).
        #[arg(long)]
        from: PathBuf,
        /// Where records.jsonl goes.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        sel: SelectArgs,
    },
    /// Merge the oracle's results directory (results.jsonl) or another golden directory
    /// (<suite>.json, schema 1 or 2) into the goldens: each output becomes the expectation of
    /// its environment class.
    Merge {
        /// The results or golden directory to merge from.
        #[arg(long)]
        from: PathBuf,
        /// The golden directory to merge into (default: <fixtures>/golden).
        #[arg(long)]
        golden_dir: Option<PathBuf>,
        /// Where a scenario's output changed shape or dtype, drop its old diffusers
        /// expectations and truth (named on stderr) instead of refusing the merge.
        #[arg(long)]
        replace_changed: bool,
        #[command(flatten)]
        sel: SelectArgs,
    },
}

/// `check`'s flags.
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub sel: SelectArgs,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print every scenario's metric rows and notes, not only those that are not identical.
    #[arg(long, short)]
    pub verbose: bool,
    /// Directory for the records: <DIR>/records.jsonl, one JSON line per scenario run,
    /// started afresh, or appended to while another check is writing there.
    #[arg(long, default_value = "reprodiff-out/records")]
    pub out: PathBuf,
    /// Also write each output array to <DIR>/outputs/<suite>/<scenario>.<sha12>.npy (what the
    /// HTML report draws images and difference maps from).
    #[arg(long)]
    pub save_outputs: bool,
}

/// `localize`'s flags.
#[derive(clap::Args)]
pub(crate) struct LocalizeArgs {
    /// The suite the scenarios belong to.
    #[arg(long)]
    pub suite: String,
    /// One scenario (its dumps are kept under --out); without it, every scenario of the
    /// suite matching --filter, written to <out>/localize.jsonl.
    #[arg(long, conflicts_with = "filter")]
    pub scenario: Option<String>,
    /// A regular expression over scenario names, as for check.
    #[arg(long)]
    pub filter: Option<String>,
    /// One side, e.g. native, avx2-threads1 or native+channels-last.
    #[arg(long)]
    pub a: String,
    /// The other side.
    #[arg(long)]
    pub b: String,
    /// Where the sides' records, activation dumps and localize.jsonl go.
    #[arg(long, default_value = "reprodiff-out/localize")]
    pub out: PathBuf,
    /// The fixtures directory (suites/ and golden/).
    #[arg(long, env = "REPRODIFF_FIXTURES", value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
}

/// `report`'s flags.
#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// Record folders, one per host or run.
    #[arg(required = true)]
    pub records: Vec<PathBuf>,
    /// A record folder to compare every set with.
    #[arg(long, conflicts_with = "against")]
    pub baseline: Option<PathBuf>,
    /// Compare every set with the goldens as they were at this git revision (what an
    /// upgrade moved): for each scenario, the expectation that revision held for its class.
    #[arg(long, value_name = "REV")]
    pub against: Option<String>,
    /// The fixtures directory whose goldens --against reads (default: ./fixtures).
    #[arg(long, env = "REPRODIFF_FIXTURES", value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// How the report is written.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// localize.jsonl files (`reprodiff localize --filter ... --a BASE --b SET`): each
    /// first divergence they cover also names the step and module where the runs part.
    #[arg(long, value_name = "FILE")]
    pub localized: Vec<PathBuf>,
}

/// `report --format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    /// Markdown, for a pull-request comment.
    Md,
    /// The same content as JSON.
    Json,
    /// One self-contained HTML page, with a verdict heatmap and per-step drift curves.
    Html,
}

/// The formats `reprodiff schema` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum SchemaKind {
    /// A run python/reprodiff-record writes (run.json).
    RunRecord,
}

/// Parses the flags, runs the command, prints an error as `error: ...` and returns its exit code.
pub fn main() -> ExitCode {
    // Die quietly on a closed pipe (`reprodiff list --json | head`), as Unix tools do, instead
    // of panicking on the failed print: Rust ignores SIGPIPE unless told otherwise.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    crate::torch::memory::keep_freed_memory();
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

/// The variables that choose kernels, threads and knobs, checked before any command starts, so
/// that a bad value is one error naming it (exit 2), not a failure of every scenario.
fn check_environment() -> crate::Result<()> {
    crate::env::check_kernel_env()?;
    crate::torch::knobs::Knobs::from_env()?;
    crate::harness::run::matrix::threads_override()?;
    Ok(())
}

fn dispatch(cli: Cli) -> crate::Result<i32> {
    check_environment()?;
    match cli.command {
        Command::Check(args) => check::check(&args),
        Command::Bless { sel } => check::bless(&sel),
        Command::Calibrate { sel } => check::calibrate(&sel),
        Command::List { sel, json } => check::list(&sel, json),
        Command::Matrix { sel, axes, out } => check::matrix(&sel, &axes, &out),
        Command::Localize(args) => report::localize(&args),
        Command::Report(args) => report::report(&args),
        Command::Golden {
            action: GoldenAction::Compare { from, out, sel },
        } => report::golden_compare(&from, &out, &sel),
        Command::Golden {
            action:
                GoldenAction::Merge {
                    from,
                    golden_dir,
                    replace_changed,
                    sel,
                },
        } => report::golden_merge(&from, golden_dir, replace_changed, &sel),
        Command::Run { pipeline } => run::run(&pipeline),
        Command::Bench { pipeline } => bench::bench(&pipeline),
        Command::DeriveWeights { arch, out } => model::derive_weights(&arch, &out),
        Command::ResolveModel { spec, models } => model::resolve_model(&spec, models.as_deref()),
        Command::Env { json } => env::env(json),
        Command::Diff { a, b } => {
            let d = crate::harness::report::run_diff::diff(&a, &b)?;
            print!("{}", d.text);
            Ok(if d.identical {
                crate::error::exit::OK
            } else {
                crate::error::exit::FAILED
            })
        }
        Command::Schema {
            kind: SchemaKind::RunRecord,
        } => {
            let schema = crate::harness::run_record::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("serialises")
            );
            Ok(crate::error::exit::OK)
        }
        Command::Observe {
            suite_file,
            scenario,
            out,
            local,
        } => run::observe_child(&suite_file, &scenario, &out, local.as_deref()),
    }
}
