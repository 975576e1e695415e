//! `check`, `bless`, `list`, `matrix` and `calibrate`: the commands over a selection of suites.
use super::select::{runner, SelectArgs};
use crate::env::Fingerprint;
use crate::error::{exit, Error, Result};
use crate::harness::compare::{in_ci, ScenarioResult};
use crate::harness::report::table;
use crate::harness::session;
use crate::harness::store::GoldenFile;
use std::io::IsTerminal;
use std::path::Path;

/// `check`: runs the selection, compares each scenario with its golden, writes the records.
pub(crate) fn check(args: &super::CheckArgs) -> Result<i32> {
    let super::CheckArgs {
        sel,
        json,
        verbose,
        out,
        save_outputs,
    } = args;
    let (json, verbose, save_outputs) = (*json, *verbose, *save_outputs);
    let fixtures = sel.fixtures()?;
    let suites = fixtures.select(&sel.selection())?;
    if suites.is_empty() {
        return Err(Error::InvalidArgument(
            "no scenario matches the selection (see `reprodiff list`)".into(),
        ));
    }
    let store = fixtures.store();
    // Every golden is read and its arrays verified before the records are opened: bad input
    // destroys nothing.
    let goldens: Vec<Option<GoldenFile>> = suites
        .iter()
        .map(|s| store.load_verified(&s.name, s.scenarios.iter().map(|x| x.name.as_str())))
        .collect::<Result<_>>()?;
    let runner = runner();
    let host = Fingerprint::current()?;
    let total: usize = suites.iter().map(|s| s.scenarios.len()).sum();
    let progress = progress_bar(total);
    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut records = crate::harness::records::RecordWriter::create(out, total)?;
    records.save_outputs = save_outputs;
    for (suite, golden) in suites.iter().zip(&goldens) {
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
    let records_path = records.path().to_path_buf();
    records.finish()?;
    progress.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("serialises")
        );
    } else {
        print!("{}", table::render(&results, verbose, in_ci()));
        println!("records: {}", records_path.display());
    }
    if results.iter().any(|r| r.verdict.fails(in_ci())) {
        return Ok(exit::FAILED);
    }
    // A skip is never a pass: a check that compared nothing did not check anything.
    if !results.iter().any(|r| r.verdict.passed()) {
        eprintln!(
            "nothing was compared: every selected scenario was skipped (reasons above), so \
             this check proves nothing"
        );
        return Ok(exit::FAILED);
    }
    Ok(exit::OK)
}

/// `list`: the selected scenarios, as names or as the JSON lines the oracle reads.
pub(crate) fn list(sel: &SelectArgs, json: bool) -> Result<i32> {
    for suite in sel.fixtures()?.select(&sel.selection())? {
        for s in &suite.scenarios {
            if json {
                let line = serde_json::json!({
                    "suite": suite.name, "suite_file": suite.path, "scenario": s,
                    "oracle_determinism": s.oracle_determinism().resolve(),
                    "slug": crate::harness::store::slug(&s.name),
                });
                println!("{line}");
            } else {
                println!("{}/{}", suite.name, s.name);
            }
        }
    }
    Ok(exit::OK)
}

/// The axes of `matrix`; each combination of their values is one child `check`.
#[derive(clap::Args, Debug)]
pub(crate) struct MatrixAxes {
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

pub(crate) fn matrix(sel: &SelectArgs, axes: &MatrixAxes, out: &Path) -> Result<i32> {
    use crate::harness::run::matrix;
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
    // A combination whose check skipped every scenario compared nothing: no pass.
    let empty: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.records.is_some() && o.summary.starts_with("0 passed, 0 failed"))
        .map(|o| o.label.as_str())
        .collect();
    if !empty.is_empty() {
        eprintln!(
            "nothing was compared in {}: every scenario there was skipped",
            empty.join(", ")
        );
        return Ok(exit::FAILED);
    }
    Ok(exit::OK)
}

/// `calibrate`: each selected suite's cross-class need against its rule; exit 1 when one breaks it.
pub(crate) fn calibrate(sel: &SelectArgs) -> Result<i32> {
    let fixtures = sel.fixtures()?;
    let store = fixtures.store();
    // Portable suites are judged against the native rules they borrow, so those are read too.
    let all = fixtures.select(&Default::default())?;
    let chosen: Vec<String> = fixtures
        .select(&sel.selection())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut broken = 0;
    for j in crate::harness::golden::calibrate::judge(&all, &store)? {
        if chosen
            .iter()
            .any(|c| j.need.suite.split(' ').next() == Some(c))
        {
            println!("{}", j.sentence());
            broken += usize::from(!j.ok);
        }
    }
    Ok(if broken == 0 { exit::OK } else { exit::FAILED })
}

/// `bless`: refreshes the selected goldens on purpose.
pub(crate) fn bless(sel: &SelectArgs) -> Result<i32> {
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
