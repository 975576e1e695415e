//! `reprodiff run`: one pipeline call from command-line flags, as a one-scenario run, printed
//! as a line or a JSON record, optionally saved as .npy and as a PNG image grid.
use crate::error::{Error, Result};
use crate::harness::suite::Scenario;
use std::path::Path;
use tch::Tensor;

/// What to do with the output besides printing it.
#[derive(Debug, Default)]
pub struct Outputs<'a> {
    pub save: Option<&'a Path>,
    pub grid: Option<&'a Path>,
    pub json: bool,
    /// Write the run as a run record into this folder (`run ... --trace DIR`).
    pub trace: Option<&'a Path>,
}

/// The one-scenario run of `reprodiff run`: `run` on `device`, with diffusers'
/// `enable_full_determinism()` when `deterministic`, on `threads` intra-op threads.
pub fn scenario(
    run: crate::harness::suite::workload::Workload,
    device: crate::torch::DeviceSpec,
    deterministic: bool,
    threads: Option<usize>,
) -> Scenario {
    use crate::torch::{DeterminismSpec, Preset};
    Scenario {
        name: "run".into(),
        description: None,
        run,
        device,
        kernels: Default::default(),
        determinism: DeterminismSpec {
            preset: if deterministic {
                Preset::Full
            } else {
                Preset::Default
            },
            threads,
            ..Default::default()
        },
        metrics: vec![crate::metrics::Metric::SumAbs],
        tolerance: Default::default(),
        cross_class: None,
        own_class_only: None,
        slice: None,
        store_array: true,
    }
}

/// Runs `scenario` (validated, its determinism and the knobs in force applied) and reports
/// its output.
pub fn run(scenario: &Scenario, out: Outputs) -> Result<()> {
    scenario.validate().map_err(Error::InvalidArgument)?;
    // Where the output goes is checked before any work, so a typo costs no computation.
    check_folders(&out)?;
    // The knobs in force (REPRODIFF_KNOBS; `--kernels portable` is the scenario's field), as
    // `check` applies them.
    let knobs = crate::torch::knobs::Knobs::from_env()?;
    if let Some(why) = knobs.unavailable() {
        return Err(Error::Unavailable(format!(
            "knobs {}: {why}",
            knobs.tokens().join("+")
        )));
    }
    let (scenario, det) = crate::harness::run::observe::as_run(scenario, &knobs)?;
    let scenario = &scenario;
    det.apply()?;
    crate::harness::run::observe::apply_knobs(scenario, &knobs)?;
    let start = std::time::Instant::now();
    let trace_info = out
        .trace
        .map(|_| crate::harness::own_record::info(scenario))
        .transpose()?;
    let output = scenario
        .run
        .run(scenario.device, None, out.json || out.trace.is_some())?;
    if let (Some(dir), Some(info)) = (out.trace, trace_info) {
        write_trace(dir, info, &output)?;
    }
    let mut obs = crate::harness::run::observe::describe(
        output.tensor,
        output.unseeded_seed,
        start.elapsed().as_secs_f64(),
    )?;
    obs.trace = output.trace;
    let stored = obs.stored.as_ref().expect("describe keeps the output");
    if let Some(path) = out.save {
        stored
            .write_npy(path)
            .map_err(|e| Error::writing(path, e))?;
    }
    if let Some(path) = out.grid {
        write_grid(stored, path)?;
    }
    if out.json {
        // The record `check` writes (schema 3, one line), so `run --json >> DIR/records.jsonl`
        // makes a record set `report` reads.
        let result = crate::harness::compare::ScenarioResult::uncompared(
            "run",
            &scenario.name,
            &obs,
            "a one-off `reprodiff run`: compared with no golden",
        );
        let record =
            crate::harness::records::Record::new(&result, scenario, Some(&obs.environment));
        print!("{}", record.line());
        return Ok(());
    }
    print_summary(&obs, &out);
    Ok(())
}

/// `--save` and `--grid`: each one's folder exists.
fn check_folders(out: &Outputs) -> Result<()> {
    for (flag, path) in [("save", out.save), ("grid", out.grid)] {
        if let Some(path) = path {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                let dir = dir.expect("checked").display();
                return Err(Error::flag(
                    flag,
                    path.display(),
                    format!("the folder {dir} does not exist"),
                ));
            }
        }
    }
    Ok(())
}

/// `run --trace DIR`: the run written as a run record into DIR.
fn write_trace(
    dir: &Path,
    (pipeline, model, call): crate::harness::own_record::Info,
    output: &crate::pipelines::Output,
) -> Result<()> {
    let own = crate::harness::run_record::OwnRun {
        environment: crate::env::Fingerprint::current()?,
        pipeline,
        model,
        call,
        steps: output.trace.as_deref().unwrap_or_default(),
        initial: output.initial.as_ref(),
        output: &output.tensor,
    };
    let path = crate::harness::run_record::write(dir, &own)?;
    eprintln!("run record: {}", path.display());
    Ok(())
}

/// The line `run` prints (shape, dtype, sum_abs, max_abs, sha256, time), the seed it chose
/// where none was given, and the files it saved.
fn print_summary(obs: &crate::harness::run::observe::Observation, out: &Outputs) {
    println!(
        "{:?} {}  sum_abs {}  max_abs {}  sha256 {}  ({:.2} s)",
        obs.shape,
        obs.dtype,
        obs.metrics["sum_abs"],
        obs.metrics["max_abs"],
        &obs.sha256[..12],
        obs.elapsed_s
    );
    if let Some(seed) = obs.unseeded_seed {
        println!("no seed given: the global generator was seeded with {seed} (pass --generator global --seed {seed} to repeat)");
    }
    for path in [out.save, out.grid].into_iter().flatten() {
        println!("saved {}", path.display());
    }
}

/// `make_image_grid(numpy_to_pil(images), rows, cols)` of diffusers, written as a PNG
/// ([`crate::harness::report::pictures::image_grid`]).
pub fn write_grid(images: &Tensor, path: &Path) -> Result<()> {
    let values = crate::torch::tensor_to_f64(images)?;
    let grid = crate::harness::report::pictures::image_grid(&images.size(), &values)
        .map_err(|e| Error::InvalidArgument(format!("--grid: {e}")))?;
    grid.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}
