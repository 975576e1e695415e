//! The `reprodiff` command line. Exit codes: see `reprodiff::error::exit` and README.md.
use clap::{Args, Parser, Subcommand};
use reprodiff::env::Fingerprint;
use reprodiff::error::{exit, Error, Result};
use reprodiff::harness::check::{in_ci, ScenarioResult};
use reprodiff::harness::golden::GoldenFile;
use reprodiff::harness::observe::{self, NotObserved, Runner};
use reprodiff::harness::oneoff::Outputs;
use reprodiff::harness::report;
use reprodiff::harness::session::{self, Fixtures, Selection};
use reprodiff::harness::suite::Suite;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reprodiff",
    version,
    about = "Reproducibility harness and conformance suite for diffusion pipelines on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios and compare them with their goldens (exit 0 pass, 1 drift/failure, 2 bad input).
    Check {
        #[command(flatten)]
        sel: SelectArgs,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Print every scenario's metric rows and notes, not only those that are not identical.
        #[arg(long, short)]
        verbose: bool,
        /// Directory for the records: <DIR>/records.jsonl, one JSON line per scenario run,
        /// started afresh, or appended to while another check is writing there.
        #[arg(long, default_value = "reprodiff-out/records")]
        out: PathBuf,
        /// Also write each output array to <DIR>/outputs/<suite>/<scenario>.<sha12>.npy (what the
        /// HTML report draws images and difference maps from).
        #[arg(long)]
        save_outputs: bool,
    },
    /// Deliberately refresh goldens: each scenario runs twice and must repeat bit for bit.
    Bless {
        #[command(flatten)]
        sel: SelectArgs,
    },
    /// Compute the noise_ulps each selected suite's cross-class truth rule needs, from the
    /// recorded classes' expectations in its goldens and the committed calibration records
    /// (<fixtures>/records/*/calibration/*; --records adds folders),
    /// and whether the suite's value keeps the policy (at least the need, at most 2x it).
    /// Exit 1 when a suite breaks it.
    Calibrate {
        #[command(flatten)]
        sel: SelectArgs,
        /// A check-record folder (records.jsonl) whose classes count as more classes to pass
        /// (repeatable).
        #[arg(long = "records", value_name = "DIR")]
        records: Vec<PathBuf>,
    },
    /// List the selected scenarios.
    List {
        #[command(flatten)]
        sel: SelectArgs,
        /// JSON Lines, one expanded scenario each: {"suite", "suite_file", "scenario",
        /// "oracle_determinism"} (what the oracle reads, so that suites are expanded in one
        /// place; the last is what the oracle computes it under).
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
        #[arg(long, default_value = "reprodiff-out/matrix")]
        out: PathBuf,
    },
    /// Where two runs of one scenario part: each side (CLASS[-threadsN][+KNOB...], as matrix
    /// labels its combinations) runs it plain and with activation capture in child processes; the captured
    /// activations are walked in execution order to the first module whose bits differ.
    Localize {
        #[arg(long)]
        suite: String,
        /// One scenario (its dumps are kept under --out); without it, every scenario of the
        /// suite matching --filter, written to <out>/localize.jsonl.
        #[arg(long, conflicts_with = "filter")]
        scenario: Option<String>,
        /// A regular expression over scenario names, as for check.
        #[arg(long)]
        filter: Option<String>,
        /// One side, e.g. native, avx2-threads1 or native+channels-last.
        #[arg(long)]
        a: String,
        /// The other side.
        #[arg(long)]
        b: String,
        #[arg(long, default_value = "reprodiff-out/localize")]
        out: PathBuf,
        /// The fixtures directory (suites/ and golden/).
        #[arg(long, env = "REPRODIFF_FIXTURES", value_name = "DIR")]
        fixtures: Option<PathBuf>,
    },
    /// A Markdown drift report over check record folders (`check --out DIR`), one set per
    /// folder: per environment class, counts by verdict and the worst l_inf; with --baseline,
    /// each set against it (newly drifted, newly fixed, new, missing).
    Report {
        /// Record folders, one per host or run.
        #[arg(required = true)]
        records: Vec<PathBuf>,
        /// A record folder to compare every set with.
        #[arg(long, conflicts_with = "against")]
        baseline: Option<PathBuf>,
        /// Compare every set with the goldens as they were at this git revision (what an
        /// upgrade moved): for each scenario, the expectation that revision held for its class.
        #[arg(long, value_name = "REV")]
        against: Option<String>,
        /// The fixtures directory whose goldens --against reads (default: ./fixtures).
        #[arg(long, env = "REPRODIFF_FIXTURES", value_name = "DIR")]
        fixtures: Option<PathBuf>,
        /// md (for a pull-request comment), json (the same content) or html (one
        /// self-contained page with a verdict heatmap and per-step drift curves).
        #[arg(long, default_value = "md", value_parser = ["md", "json", "html"])]
        format: String,
        /// localize.jsonl files (`reprodiff localize --filter ... --a BASE --b SET`): each
        /// first divergence they cover also names the step and module where the runs part.
        #[arg(long, value_name = "FILE")]
        localized: Vec<PathBuf>,
    },
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
        /// Architecture (ddpm-cifar10-32).
        #[arg(long)]
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
    /// Run one scenario and write its observation (used for child processes).
    #[command(hide = true)]
    Observe {
        #[arg(long)]
        suite_file: PathBuf,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum GoldenAction {
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
        #[command(flatten)]
        sel: SelectArgs,
    },
}

#[derive(Subcommand)]
enum RunPipeline {
    /// DDIMPipeline (e.g. google/ddpm-cifar10-32).
    Ddim(Box<DdimArgs>),
    /// StableDiffusionPipeline (e.g. runwayml/stable-diffusion-v1-5), no safety checker.
    Sd(Box<SdArgs>),
}

#[derive(Subcommand)]
enum BenchPipeline {
    /// StableDiffusionPipeline, the seed document's prompt, guidance 7.5, a CPU generator
    /// seeded 0, re-seeded before each run.
    Sd {
        #[arg(long)]
        model: String,
        #[arg(long)]
        steps: usize,
        /// Height and width (default: the model's).
        #[arg(long)]
        size: Option<i64>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// native (libtorch's kernels) or portable (reprodiff's).
        #[arg(long, default_value = "native", value_parser = ["native", "portable"])]
        kernels: String,
    },
    /// The portable kernels' GEMM against libtorch's sgemm (matmul) on one float32 product of
    /// [m, k] by [k, n], timed in turn; prints JSON with each side's GFLOP/s and their medians.
    Gemm {
        #[arg(long, default_value_t = 1024)]
        m: usize,
        #[arg(long, default_value_t = 128)]
        n: usize,
        #[arg(long, default_value_t = 1152)]
        k: usize,
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// libtorch's threads (default: the portable kernels' count, rayon's).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// DDIMPipeline with a CPU generator seeded 0, re-seeded before each run.
    Ddim {
        #[arg(long)]
        model: String,
        #[arg(long)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// native (libtorch's kernels) or portable (reprodiff's).
        #[arg(long, default_value = "native", value_parser = ["native", "portable"])]
        kernels: String,
    },
}

#[derive(Args)]
struct DdimArgs {
    /// A diffusers folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    common: RunArgs,
}

#[derive(Args)]
struct SdArgs {
    /// A diffusers Stable Diffusion folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    model: String,
    /// The prompt; repeat the flag for a list of prompts (one image each, or
    /// --num-images-per-prompt each).
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    /// Negative prompt(s): one, or one per --prompt.
    #[arg(long = "negative-prompt")]
    negative_prompts: Vec<String>,
    /// Classifier-free guidance scale (none at <= 1).
    #[arg(long, default_value_t = 7.5)]
    guidance_scale: f64,
    /// Default: the UNet's sample_size × the VAE's scale factor.
    #[arg(long)]
    height: Option<i64>,
    #[arg(long)]
    width: Option<i64>,
    #[arg(long, default_value_t = 1)]
    num_images_per_prompt: usize,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Swap the scheduler as `DDIMScheduler.from_config(pipe.scheduler.config)` does
    /// (default: the folder's own, PNDM for SD 1.5).
    #[arg(long, value_parser = ["ddim", "pndm"])]
    scheduler: Option<String>,
    /// Take the text encoder's hidden state this many layers before the last.
    #[arg(long)]
    clip_skip: Option<usize>,
    /// Write the images as one PNG grid (diffusers' make_image_grid layout).
    #[arg(long)]
    grid: Option<PathBuf>,
    #[command(flatten)]
    common: RunArgs,
}

/// The flags every `run` pipeline takes: generators, device, dtype, determinism, output.
#[derive(Args)]
struct RunArgs {
    /// One generator for all images, seeded S.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// One generator per image (its length must be the number of images).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// cpu: torch.Generator("cpu"); cuda: torch.Generator("cuda"); global: torch.manual_seed.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "global"])]
    generator: String,
    /// [torch.Generator().manual_seed(S)] * images: one generator listed once per image.
    #[arg(long, requires = "seed")]
    repeat_generator: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// diffusers' enable_full_determinism().
    #[arg(long)]
    deterministic: bool,
    /// Intra-op threads (torch.set_num_threads).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "np")]
    output_type: String,
    /// native: libtorch's kernels, bit for bit diffusers'; portable: reprodiff's own, the
    /// same bits on every CPU (the scenario field `kernels`; float32, torch.Generator objects).
    #[arg(long, default_value = "native", value_parser = ["native", "portable"])]
    kernels: String,
    /// Write the output as .npy, exactly as diffusers returns it (bf16 as f32).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Print the result record (the record `check` writes) as one JSON line.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    fn device(&self) -> Result<reprodiff::torch::DeviceSpec> {
        self.device.parse()
    }

    /// The generator spec for `images` images on `device`.
    fn generator(
        &self,
        images: usize,
        device: reprodiff::torch::DeviceSpec,
    ) -> Result<reprodiff::torch::GeneratorSpec> {
        reprodiff::torch::GeneratorSpec::from_flags(
            self.seed,
            self.seeds.as_deref(),
            &self.generator,
            self.repeat_generator,
            images,
            device,
        )
    }

    /// Runs `run` as a one-off scenario and reports it.
    fn run(
        &self,
        run: reprodiff::harness::workload::Workload,
        device: reprodiff::torch::DeviceSpec,
        grid: Option<&Path>,
    ) -> Result<i32> {
        let mut scenario =
            reprodiff::harness::oneoff::scenario(run, device, self.deterministic, self.threads);
        scenario.kernels = kernels_flag(&self.kernels);
        let out = Outputs {
            save: self.save.as_deref(),
            grid,
            json: self.json,
        };
        reprodiff::harness::oneoff::run(&scenario, out)?;
        Ok(exit::OK)
    }
}

#[derive(Args)]
struct SelectArgs {
    /// Suite to run (repeatable; default: every suite in <fixtures>/suites).
    #[arg(long = "suite", value_name = "NAME")]
    suites: Vec<String>,
    /// Regular expression on scenario names ("suite/scenario" matches too).
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// The fixtures directory (suites/ and golden/).
    #[arg(long, env = "REPRODIFF_FIXTURES", value_name = "DIR")]
    fixtures: Option<PathBuf>,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection {
            suites: self.suites.clone(),
            filter: self.filter.clone(),
        }
    }

    fn fixtures(&self) -> Result<Fixtures> {
        let root = match &self.fixtures {
            Some(dir) => dir.clone(),
            None if Path::new("fixtures/suites").is_dir() => PathBuf::from("fixtures"),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        };
        if !root.join("suites").is_dir() {
            return Err(Error::InvalidArgument(format!(
                "--fixtures {}: no suites/ directory there",
                root.display()
            )));
        }
        Ok(Fixtures::new(root))
    }
}

fn runner() -> Runner {
    Runner {
        exe: std::env::current_exe().ok(),
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`reprodiff list --json | head`), as Unix tools do, instead
    // of panicking on the failed print: Rust ignores SIGPIPE unless told otherwise.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Check {
            sel,
            json,
            verbose,
            out,
            save_outputs,
        } => check(&sel, json, verbose, &out, save_outputs),
        Command::Bless { sel } => bless(&sel),
        Command::Calibrate { sel, records } => calibrate(&sel, &records),
        Command::List { sel, json } => {
            for suite in sel.fixtures()?.select(&sel.selection())? {
                for s in &suite.scenarios {
                    if json {
                        let line = serde_json::json!({
                            "suite": suite.name, "suite_file": suite.path, "scenario": s,
                            "oracle_determinism": s.oracle_determinism(),
                        });
                        println!("{line}");
                    } else {
                        println!("{}/{}", suite.name, s.name);
                    }
                }
            }
            Ok(exit::OK)
        }
        Command::Matrix { sel, axes, out } => matrix(&sel, &axes, &out),
        Command::Localize {
            suite,
            scenario,
            filter,
            a,
            b,
            out,
            fixtures,
        } => {
            use reprodiff::harness::localize;
            let sel = SelectArgs {
                suites: vec![suite.clone()],
                filter: None,
                fixtures,
            };
            let isa = Fingerprint::current()?.cpu.isa;
            let exe = std::env::current_exe().map_err(|e| Error::io("reprodiff", e))?;
            let fx = sel.fixtures()?;
            if let Some(scenario) = scenario {
                let l = localize::localize(&exe, &fx, &suite, &scenario, &a, &b, &isa, &out)?;
                println!("{suite}/{scenario}: {}", l.sentence);
                if l.a.captured.is_some() {
                    println!(
                        "activations: {} and {}",
                        l.a.dumps.display(),
                        l.b.dumps.display()
                    );
                }
            } else {
                let records = localize::localize_many(
                    &exe,
                    &fx,
                    &suite,
                    filter.as_deref(),
                    &a,
                    &b,
                    &isa,
                    &out,
                    |r| println!("{}/{}: {}", r.suite, r.scenario, r.sentence),
                )?;
                let count = |o: &str| records.iter().filter(|r| r.outcome == o).count();
                println!(
                    "{} of {} differ, {} failed, {} not run; {}",
                    count("differs"),
                    records.len(),
                    count("failed"),
                    count("not run"),
                    out.join("localize.jsonl").display()
                );
                if count("failed") > 0 {
                    return Ok(exit::FAILED);
                }
            }
            Ok(exit::OK)
        }
        Command::Report {
            records,
            baseline,
            against,
            fixtures,
            format,
            localized,
        } => {
            use reprodiff::harness::drift;
            for dir in &records {
                exists("RECORDS_DIR", dir)?;
            }
            if let Some(dir) = &baseline {
                exists("--baseline", dir)?;
            }
            for file in &localized {
                exists("--localized", file)?;
            }
            let sets = records
                .iter()
                .map(|d| drift::load(d))
                .collect::<Result<Vec<_>>>()?;
            let base = match (&baseline, &against) {
                (Some(dir), _) => Some(drift::load(dir)?),
                (None, Some(rev)) => {
                    let sel = SelectArgs {
                        suites: Vec::new(),
                        filter: None,
                        fixtures,
                    };
                    let root = sel.fixtures()?.root;
                    Some(reprodiff::harness::against::baseline_at(&root, rev, &sets)?)
                }
                (None, None) => None,
            };
            let mut report = drift::summarize(&sets, base.as_ref());
            drift::annotate(&mut report, &drift::load_localized(&localized)?);
            match format.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serialises")
                ),
                "html" => print!(
                    "{}",
                    reprodiff::harness::drift_html::html(&report, &sets, base.as_ref())
                ),
                _ => print!("{}", drift::markdown(&report)),
            }
            Ok(exit::OK)
        }
        Command::Golden {
            action: GoldenAction::Compare { from, out, sel },
        } => {
            exists("--from", &from)?;
            let c = reprodiff::harness::ingest::compare_results(&sel.fixtures()?, &from, &out)?;
            let counts: Vec<String> = c.verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
            println!(
                "{} results compared: {}; records: {}",
                c.scenarios,
                counts.join(", "),
                c.records.display()
            );
            Ok(exit::OK)
        }
        Command::Golden {
            action:
                GoldenAction::Merge {
                    from,
                    golden_dir,
                    sel,
                },
        } => {
            exists("--from", &from)?;
            let mut fixtures = sel.fixtures()?;
            if let Some(dir) = golden_dir {
                fixtures.golden = dir;
            }
            for m in reprodiff::harness::merge::merge(&fixtures, &from)? {
                println!(
                    "{}: {} expectation(s) added, {} replaced, {} unchanged, {} kept over a \
                     blessed one; {} truth(s) written",
                    m.suite, m.added, m.replaced, m.unchanged, m.kept, m.truths
                );
            }
            Ok(exit::OK)
        }
        Command::Run {
            pipeline: RunPipeline::Ddim(args),
        } => run_ddim(&args),
        Command::Run {
            pipeline: RunPipeline::Sd(args),
        } => run_sd(&args),
        Command::Bench {
            pipeline:
                BenchPipeline::Ddim {
                    model,
                    steps,
                    runs,
                    threads,
                    kernels,
                },
        } => {
            let b = reprodiff::pipelines::ddim::bench(
                &model,
                steps,
                runs,
                threads,
                kernels_flag(&kernels),
            )?;
            print_bench(&b, steps, &kernels);
            Ok(exit::OK)
        }
        Command::Bench {
            pipeline:
                BenchPipeline::Sd {
                    model,
                    steps,
                    size,
                    runs,
                    threads,
                    kernels,
                },
        } => {
            let b = reprodiff::pipelines::stable_diffusion::bench(
                &model,
                steps,
                size,
                runs,
                threads,
                kernels_flag(&kernels),
            )?;
            print_bench(&b, steps, &kernels);
            Ok(exit::OK)
        }
        Command::Bench {
            pipeline:
                BenchPipeline::Gemm {
                    m,
                    n,
                    k,
                    runs,
                    threads,
                },
        } => {
            let b = reprodiff::portable::bench::gemm(m, n, k, runs, threads)?;
            println!("{}", serde_json::to_string(&b).expect("serialisable"));
            Ok(exit::OK)
        }
        Command::DeriveWeights { arch, out } => {
            reprodiff::models::derived::write(&arch, &out)?;
            println!("wrote {} (derived weights for {arch})", out.display());
            Ok(exit::OK)
        }
        Command::Env { json } => {
            let fp = Fingerprint::current()?;
            if json {
                let mut value = serde_json::to_value(&fp).expect("serialises");
                value["class"] = fp.class(Default::default()).to_string().into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serialises")
                );
            } else {
                print_env(&fp);
            }
            Ok(exit::OK)
        }
        Command::Observe {
            suite_file,
            scenario,
            out,
        } => observe_child(&suite_file, &scenario, &out),
    }
}

fn check(
    sel: &SelectArgs,
    json: bool,
    verbose: bool,
    out: &Path,
    save_outputs: bool,
) -> Result<i32> {
    let fixtures = sel.fixtures()?;
    let suites = fixtures.select(&sel.selection())?;
    if suites.is_empty() {
        return Err(Error::InvalidArgument(
            "no scenario matches the selection (see `reprodiff list`)".into(),
        ));
    }
    let store = fixtures.store();
    let runner = runner();
    let host = Fingerprint::current()?;
    let total: usize = suites.iter().map(|s| s.scenarios.len()).sum();
    let progress = progress_bar(total);
    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut records = reprodiff::harness::records::RecordWriter::create(out)?;
    records.save_outputs = save_outputs;
    for suite in &suites {
        let golden: Option<GoldenFile> = store.load(&suite.name)?;
        for scenario in &suite.scenarios {
            progress.set_message(format!("{}/{}", suite.name, scenario.name));
            let (result, obs) =
                session::check_one(&runner, &store, suite, golden.as_ref(), scenario, &host);
            records.append(
                scenario,
                &result,
                obs.as_ref().map(|o| &o.environment),
                obs.as_ref().and_then(|o| o.stored.as_ref()),
            )?;
            results.push(result);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("serialises")
        );
    } else {
        print!("{}", report::render(&results, verbose, in_ci()));
        println!("records: {}", records.path().display());
    }
    Ok(if results.iter().all(|r| !r.verdict.fails(in_ci())) {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// The axes of `matrix`; each combination of their values is one child `check`.
#[derive(clap::Args, Debug)]
struct MatrixAxes {
    /// CPU kernel classes: native, avx512, avx2, sse41, mkl-compatible.
    #[arg(long, value_delimiter = ',', default_value = "native")]
    cpu_class: Vec<String>,
    /// Thread counts (default: each suite's own).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Determinism presets forced on every scenario: default, full (default: each scenario's).
    #[arg(long, value_delimiter = ',')]
    determinism: Vec<String>,
    /// dtypes every scenario computes in: f32, bf16, f16 (default: each scenario's).
    #[arg(long, value_delimiter = ',')]
    dtype: Vec<String>,
    /// Devices: cpu (each scenario's own), cuda (CPU scenarios moved to cuda:0).
    #[arg(long, value_delimiter = ',')]
    device: Vec<String>,
    /// Kernels: native (libtorch's), portable (reprodiff's, the same bits on every CPU).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Knob sets: none, channels-last, onednn-off, math-attention; join several with +.
    #[arg(long, value_delimiter = ',')]
    knob: Vec<String>,
}

fn matrix(sel: &SelectArgs, axes: &MatrixAxes, out: &Path) -> Result<i32> {
    use reprodiff::harness::matrix;
    sel.fixtures()?.select(&sel.selection())?; // bad suites and filters fail here, once
    let threads: Vec<Option<usize>> = if axes.threads.is_empty() {
        vec![None]
    } else {
        axes.threads.iter().map(|&t| Some(t)).collect()
    };
    let isa = Fingerprint::current()?.cpu.isa;
    let knobs = matrix::knob_sets(&matrix::SettingAxes {
        determinism: axes.determinism.clone(),
        dtype: axes.dtype.clone(),
        device: axes.device.clone(),
        kernels: axes.kernels.clone(),
        knob: axes.knob.clone(),
    })?;
    let combos = matrix::combinations(&axes.cpu_class, &threads, &knobs, &isa)?;
    let mut args = Vec::new();
    for s in &sel.suites {
        args.extend(["--suite".to_string(), s.clone()]);
    }
    if let Some(f) = &sel.filter {
        args.extend(["--filter".to_string(), f.clone()]);
    }
    if let Some(f) = &sel.fixtures {
        args.extend(["--fixtures".to_string(), f.display().to_string()]);
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("reprodiff", e))?;
    let outcomes = matrix::run(&exe, &args, &combos, out)?;
    for o in &outcomes {
        println!("{:<28}  {}", o.label, o.summary);
    }
    if outcomes.iter().all(|o| o.records.is_none()) {
        return Err(Error::Unavailable(format!(
            "every combination was skipped (reasons above), so nothing ran and {} holds no \
             records to report",
            out.display()
        )));
    }
    println!(
        "records: {}/<combination>/records.jsonl; compare them with `reprodiff report {}/*`",
        out.display(),
        out.display()
    );
    Ok(exit::OK)
}

/// A path given on the command line must exist before any work starts: exit 2 naming the flag.
fn exists(flag: &str, path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{flag} {}: no such file or folder",
            path.display()
        )))
    }
}

fn calibrate(sel: &SelectArgs, records: &[PathBuf]) -> Result<i32> {
    for dir in records {
        if !dir.join("records.jsonl").is_file() {
            return Err(Error::InvalidArgument(format!(
                "--records {}: no records.jsonl in that folder",
                dir.display()
            )));
        }
    }
    let fixtures = sel.fixtures()?;
    let store = fixtures.store();
    let mut all = reprodiff::harness::calibrate::committed_records(&fixtures);
    all.extend(records.iter().cloned());
    let dirs: Vec<&Path> = all.iter().map(PathBuf::as_path).collect();
    let mut broken = 0;
    for suite in fixtures.select(&sel.selection())? {
        if let Some(need) = reprodiff::harness::calibrate::need(&suite, &store, &dirs)? {
            println!("{}", need.sentence());
            broken += usize::from(!need.holds());
        }
    }
    Ok(if broken == 0 { exit::OK } else { exit::FAILED })
}

fn bless(sel: &SelectArgs) -> Result<i32> {
    let fixtures = sel.fixtures()?;
    let changes = session::bless(&runner(), &fixtures, &sel.selection())?;
    if changes.is_empty() {
        println!("every selected golden is already up to date; nothing written");
    }
    for c in &changes {
        println!("{}/{}", c.suite, c.scenario);
        for line in &c.changes {
            println!("    {line}");
        }
    }
    if !changes.is_empty() {
        println!(
            "{} golden(s) written under {}",
            changes.len(),
            fixtures.store().dir.display()
        );
    }
    Ok(exit::OK)
}

/// `reprodiff run ddim`: one pipeline run, described as a scenario so the record matches
/// what `check` writes.
fn run_ddim(a: &DdimArgs) -> Result<i32> {
    use reprodiff::harness::workload::Workload;
    let device = a.common.device()?;
    let run = Workload::Ddim {
        model: a.model.clone(),
        steps: a.steps,
        eta: a.eta,
        batch: a.batch,
        generator: a.common.generator(a.batch, device)?,
        output_type: a.common.output_type.parse()?,
        dtype: a.common.dtype.parse()?,
        use_clipped_model_output: false,
        twice: false,
        scheduler: Default::default(),
    };
    a.common.run(run, device, None)
}

/// `reprodiff run sd`: one StableDiffusionPipeline call.
fn run_sd(a: &SdArgs) -> Result<i32> {
    use reprodiff::harness::workload::Workload;
    use reprodiff::pipelines::stable_diffusion::Prompts;

    if let Some(i) = a.prompts.iter().position(|p| p.trim().is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "--prompt #{}: an empty prompt (diffusers would generate unconditionally; say what to draw)",
            i + 1
        )));
    }
    let prompt = match a.prompts.as_slice() {
        [one] => Prompts::One(one.clone()),
        many => Prompts::Many(many.to_vec()),
    };
    let negative_prompt = match a.negative_prompts.as_slice() {
        [] => None,
        [one] if matches!(prompt, Prompts::One(_)) => Some(Prompts::One(one.clone())),
        many => Some(Prompts::Many(many.to_vec())),
    };
    let images = a.prompts.len() * a.num_images_per_prompt;
    let device = a.common.device()?;
    let run = Workload::Sd {
        model: a.model.clone(),
        prompt,
        negative_prompt,
        guidance_scale: a.guidance_scale,
        steps: a.steps,
        eta: a.eta,
        num_images_per_prompt: a.num_images_per_prompt,
        height: a.height,
        width: a.width,
        clip_skip: a.clip_skip,
        generator: a.common.generator(images, device)?,
        output_type: a.common.output_type.parse()?,
        dtype: a.common.dtype.parse()?,
        scheduler_class: a.scheduler.as_deref().map(str::parse).transpose()?,
        scheduler: Default::default(),
        twice: false,
    };
    a.common.run(run, device, a.grid.as_deref())
}

/// A `--kernels` value clap has checked.
fn kernels_flag(value: &str) -> reprodiff::portable::Kernels {
    match value {
        "portable" => reprodiff::portable::Kernels::Portable,
        _ => reprodiff::portable::Kernels::Native,
    }
}

fn print_bench(b: &reprodiff::pipelines::Bench, steps: usize, kernels: &str) {
    println!(
        "{}",
        serde_json::json!({"impl": "reprodiff", "kernels": kernels, "steps": steps,
                           "threads": b.threads, "kernel_threads": rayon::current_num_threads(),
                           "seconds": b.seconds, "peak_rss_kb": b.peak_rss_kb, "sha256": b.sha256})
    );
}

/// The child side of [`Runner`]'s capability switch.
fn observe_child(suite_file: &Path, name: &str, out: &Path) -> Result<i32> {
    let suite = Suite::load(suite_file)?;
    let scenario = suite
        .scenarios
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--scenario {name}: not in {}",
                suite_file.display()
            ))
        })?;
    let runner = Runner { exe: None };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    match runner.observe(suite_file, scenario) {
        Ok(obs) => {
            observe::write_observation(out, &obs)?;
            Ok(exit::OK)
        }
        Err(NotObserved::NotRun(why)) => {
            let path = out.join(observe::NOT_RUN_FILE);
            std::fs::write(&path, &why).map_err(|e| Error::io(&path, e))?;
            Err(Error::Unavailable(why))
        }
        Err(NotObserved::Failed(e)) => Err(e),
    }
}

fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
    if !interactive {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{pos}/{len} [{elapsed}] {wide_msg}")
            .expect("a valid template"),
    );
    bar
}

fn print_env(fp: &Fingerprint) {
    let v = &fp.versions;
    println!(
        "reprodiff {} · tch {} · libtorch {} ({})",
        v.reprodiff.as_deref().unwrap_or("?"),
        v.tch.as_deref().unwrap_or("?"),
        v.libtorch,
        v.torch_build.as_deref().unwrap_or("?")
    );
    println!(
        "os        {} {}{}",
        fp.os.name,
        fp.os.arch,
        fp.os
            .libc
            .as_deref()
            .map_or(String::new(), |l| format!(", {l}"))
    );
    println!("cpu       {} ({} threads)", fp.cpu.model, fp.cpu.threads);
    println!("isa       {}", fp.cpu.isa.join(" "));
    println!("dispatch  {}", fp.cpu.capability);
    if !fp.cpu.kernel_env.is_empty() {
        let vars: Vec<String> = fp
            .cpu
            .kernel_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("kernels   {}", vars.join(" "));
    }
    println!("class     {}", fp.class(Default::default()));
    if fp.cuda.available {
        println!(
            "cuda      {} · cuDNN {} · {}",
            fp.cuda.runtime.as_deref().unwrap_or("?"),
            fp.cuda.cudnn.map_or("-".into(), |v| v.to_string()),
            fp.cuda.devices.join(", ")
        );
    } else {
        println!("cuda      not available");
    }
    let d = &fp.determinism;
    println!(
        "determinism  algorithms={} warn_only={} cudnn.deterministic={} cudnn.benchmark={} tf32(cublas)={} tf32(cudnn)={} CUBLAS_WORKSPACE_CONFIG={}",
        d.deterministic_algorithms,
        d.warn_only,
        d.cudnn_deterministic,
        d.cudnn_benchmark,
        d.allow_tf32_cublas,
        d.allow_tf32_cudnn,
        d.cublas_workspace_config.as_deref().unwrap_or("unset")
    );
}
