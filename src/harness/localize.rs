//! `reprodiff localize`: where two runs of a scenario part. Each side (a matrix combination:
//! `CLASS[-threadsN][+KNOB...]`) runs the scenario in child processes: plain, and where the
//! outputs differ, again with activation capture (REPRODIFF_DUMP_DIR). Capture must not change
//! the output (instrumentation can change kernels); then the captured activations are walked in
//! execution order, as PyTorch's minifier walks modules, to the first module whose bits differ,
//! named with its denoising step. Over many scenarios (`--filter`, or a whole suite) it does
//! that for every scenario whose two outputs differ and writes `localize.jsonl`.
use crate::error::{Error, Result};
use crate::harness::run::matrix::{parse_label, Combination};
use crate::harness::run::observe::{read_observation, Observation};
use crate::harness::suite::{Fixtures, Selection};
use crate::metrics::rmse;
use crate::models::dump::INDEX;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One side's runs.
#[derive(Debug)]
pub struct Side {
    pub label: String,
    pub plain: Observation,
    /// The run with activation capture (only where the two plain outputs differ).
    pub captured: Option<Observation>,
    pub dumps: PathBuf,
}

/// Where the two sides of one scenario part.
#[derive(Debug)]
pub struct Localized {
    pub scenario: String,
    pub a: Side,
    pub b: Side,
    /// Modules identical on both sides before the first difference.
    pub identical: Vec<String>,
    /// The first differing module and its max |a - b|.
    pub first: Option<(String, f64)>,
    /// The last module compared and its max |a - b|.
    pub last: Option<(String, f64)>,
    /// rmse(truth, a) and rmse(truth, b) of the outputs, when the golden has a truth.
    pub to_truth: Option<(f64, f64)>,
    /// Held against the noise response (how far one ulp of initial noise moves side a's
    /// per-step sum_abs): the first step where the drift exceeds it, or `Ok(None)` when it
    /// never does; `Err` when there is no trace to tell.
    pub beyond_noise: std::result::Result<Option<(usize, i64)>, ()>,
    pub sentence: String,
}

/// One line of `localize.jsonl`.
#[derive(Debug, Serialize)]
pub struct Record {
    pub schema: u32,
    pub suite: String,
    pub scenario: String,
    pub a: String,
    pub b: String,
    /// "identical", "differs", "not run" or "failed".
    pub outcome: String,
    /// The denoising step (and its timestep) of the first differing module, if it has one.
    pub first_step: Option<(usize, i64)>,
    pub first_module: Option<String>,
    /// L_inf between the two outputs.
    pub l_inf: Option<f64>,
    /// The first step whose |Δ sum_abs| exceeds the noise response (what one ulp of initial
    /// noise moves it); null when it never does or there is no trace.
    pub beyond_noise_step: Option<(usize, i64)>,
    /// The side closer to the float64 truth, where the outputs differ and a truth exists.
    pub closer_to_truth: Option<String>,
    pub sentence: String,
}

fn observe(
    exe: &Path,
    suite_file: &Path,
    scenario: &str,
    c: &Combination,
    out: &Path,
    dump: Option<&Path>,
    nudge: bool,
) -> Result<Observation> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.env_remove(crate::torch::NUDGE_ENV);
    if nudge {
        cmd.env(crate::torch::NUDGE_ENV, "1");
    }
    cmd.arg("observe")
        .arg("--suite-file")
        .arg(suite_file)
        .arg("--scenario")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .env_remove("REPRODIFF_DUMP_DIR");
    if let Some(d) = dump {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        cmd.env("REPRODIFF_DUMP_DIR", d);
    }
    let status = cmd.output().map_err(|e| Error::io(exe, e))?;
    let not_run = out.join(crate::harness::run::observe::NOT_RUN_FILE);
    if not_run.exists() {
        let why = std::fs::read_to_string(&not_run).unwrap_or_default();
        return Err(Error::Unavailable(why.trim().to_string()));
    }
    if !status.status.success() {
        return Err(Error::Internal(format!(
            "localize: {scenario} as {} exited with {}: {}",
            c.label,
            status.status,
            String::from_utf8_lossy(&status.stderr).trim()
        )));
    }
    read_observation(out)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn read_dump(dir: &Path, name: &str) -> Result<Vec<f64>> {
    let path = crate::paths::join(dir, &format!("{name}.npy"), "dump index entry")?;
    let t = tch::Tensor::read_npy(&path).map_err(|e| Error::invalid_file(&path, e))?;
    crate::torch::tensor_to_f64(&t)
}

/// Runs one side of `scenario`, plain, into `dir`.
fn plain(
    exe: &Path,
    suite_file: &Path,
    scenario: &str,
    side: &Combination,
    dir: &Path,
) -> Result<Side> {
    let dumps = dir.join("dump");
    if dumps.exists() {
        std::fs::remove_dir_all(&dumps).map_err(|e| Error::io(&dumps, e))?;
    }
    Ok(Side {
        label: side.label.clone(),
        plain: observe(
            exe,
            suite_file,
            scenario,
            side,
            &dir.join("plain"),
            None,
            false,
        )?,
        captured: None,
        dumps,
    })
}

/// Runs `side` again with activation capture; refuses if capture changed the output.
fn capture(
    exe: &Path,
    suite_file: &Path,
    scenario: &str,
    c: &Combination,
    side: &mut Side,
) -> Result<()> {
    let dir = side
        .dumps
        .parent()
        .expect("dump dir has a parent")
        .join("captured");
    let captured = observe(exe, suite_file, scenario, c, &dir, Some(&side.dumps), false)?;
    if captured.sha256 != side.plain.sha256 {
        return Err(Error::Internal(format!(
            "localize: activation capture changed {scenario}'s output as {} ({} plain, {} \
             captured): its dumps cannot locate anything",
            side.label,
            &side.plain.sha256[..12],
            &captured.sha256[..12]
        )));
    }
    side.captured = Some(captured);
    Ok(())
}

/// Localizes every scenario of `suite` selected by `filter` (a regex, as for `check`; `None`:
/// all) between sides `a` and `b`, writing `<out>/localize.jsonl`. A scenario this host cannot
/// run is recorded "not run" with why, one that fails "failed" with the error; the rest go on.
#[allow(clippy::too_many_arguments)]
pub fn localize_many(
    exe: &Path,
    fixtures: &Fixtures,
    suite: &str,
    filter: Option<&str>,
    a: &str,
    b: &str,
    isa: &[String],
    out: &Path,
    mut progress: impl FnMut(&Record),
) -> Result<Vec<Record>> {
    let s = &select(fixtures, suite, filter)?;
    if s.scenarios.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no scenario of suite {suite} matches {} (see `reprodiff list --suite {suite}`)",
            filter.unwrap_or("")
        )));
    }
    let (ca, cb) = (side("a", a, isa)?, side("b", b, isa)?);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut records = Vec::new();
    for sc in &s.scenarios {
        let record = match localize_one(exe, fixtures, s, &sc.name, (&ca, &cb), out) {
            Ok(l) => l.record(suite),
            // One scenario that cannot be run or localized does not stop the others.
            Err(e) => {
                let (outcome, sentence) = match e {
                    Error::Unavailable(why) => ("not run", format!("not run: {why}")),
                    other => ("failed", format!("failed: {other}")),
                };
                Record {
                    schema: 1,
                    suite: suite.into(),
                    scenario: sc.name.clone(),
                    a: a.into(),
                    b: b.into(),
                    outcome: outcome.into(),
                    first_step: None,
                    first_module: None,
                    l_inf: None,
                    beyond_noise_step: None,
                    closer_to_truth: None,
                    sentence,
                }
            }
        };
        progress(&record);
        records.push(record);
    }
    let path = out.join("localize.jsonl");
    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).expect("a record serialises") + "\n")
        .collect();
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(records)
}

/// Localizes one scenario (`--scenario`): the full result, with both sides' dumps.
#[allow(clippy::too_many_arguments)]
pub fn localize(
    exe: &Path,
    fixtures: &Fixtures,
    suite: &str,
    scenario: &str,
    a: &str,
    b: &str,
    isa: &[String],
    out: &Path,
) -> Result<Localized> {
    let s = &select(fixtures, suite, None)?;
    if !s.scenarios.iter().any(|x| x.name == scenario) {
        let expected = format!("not in suite {suite} (see `reprodiff list --suite {suite}`)");
        return Err(Error::flag("scenario", scenario, expected));
    }
    let (ca, cb) = (side("a", a, isa)?, side("b", b, isa)?);
    localize_one(exe, fixtures, s, scenario, (&ca, &cb), out)
}

/// A side of the comparison from its label, an error naming the flag that gave it.
fn side(flag: &'static str, label: &str, isa: &[String]) -> Result<Combination> {
    parse_label(label, isa).map_err(|e| {
        let why = match e {
            Error::InvalidFlag {
                value, expected, ..
            } => format!("{value}: {expected}"),
            Error::InvalidArgument(m) | Error::Unavailable(m) => {
                m.trim_start_matches("--threads: ").to_string()
            }
            other => return other,
        };
        let expected = format!(
            "{why} (a side is CLASS[-threadsN][+KNOB...], as `matrix` labels its combinations)"
        );
        Error::flag(flag, label, expected)
    })
}

/// Suite `suite` with the scenarios `filter` selects (the suite itself was checked to exist
/// by `Fixtures::select`, so nothing found means the filter matched nothing).
fn select(
    fixtures: &Fixtures,
    suite: &str,
    filter: Option<&str>,
) -> Result<crate::harness::suite::Suite> {
    fixtures
        .select(&Selection {
            suites: vec![suite.to_string()],
            filter: filter.map(String::from),
        })?
        .into_iter()
        .find(|s| s.name == suite)
        .ok_or_else(|| {
            let expected = format!(
                "no scenario of suite {suite} matches (see `reprodiff list --suite {suite}`)"
            );
            Error::flag("filter", filter.unwrap_or(""), expected)
        })
}

fn localize_one(
    exe: &Path,
    fixtures: &Fixtures,
    s: &crate::harness::suite::Suite,
    scenario: &str,
    (ca, cb): (&Combination, &Combination),
    out: &Path,
) -> Result<Localized> {
    let base = crate::paths::join(out, scenario, "scenario name")?;
    let mut a_side = plain(exe, &s.path, scenario, ca, &base.join(&ca.label))?;
    let mut b_side = plain(exe, &s.path, scenario, cb, &base.join(&cb.label))?;
    let (mut identical, mut first, mut last) = (Vec::new(), None, None);
    let mut beyond_noise = Err(());
    if a_side.plain.sha256 != b_side.plain.sha256 {
        let dir = base.join(&ca.label).join("nudged");
        let nudged = observe(exe, &s.path, scenario, ca, &dir, None, true)?;
        beyond_noise = noise_step(&a_side.plain, &b_side.plain, &nudged);
        capture(exe, &s.path, scenario, ca, &mut a_side)?;
        capture(exe, &s.path, scenario, cb, &mut b_side)?;
        let index = std::fs::read_to_string(a_side.dumps.join(INDEX)).unwrap_or_default();
        for name in index.lines().filter(|l| !l.is_empty()) {
            let va = read_dump(&a_side.dumps, name)?;
            let vb = read_dump(&b_side.dumps, name)?;
            let same =
                va.len() == vb.len() && va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
            let d = if va.len() == vb.len() {
                max_abs_diff(&va, &vb)
            } else {
                f64::INFINITY
            };
            if same && first.is_none() {
                identical.push(name.to_string());
            } else if first.is_none() {
                first = Some((name.to_string(), d));
            }
            last = Some((name.to_string(), d));
        }
    }
    let golden = fixtures.store().load(&s.name)?;
    let to_truth = golden
        .as_ref()
        .and_then(|g| g.scenarios.get(scenario))
        .and_then(|g| g.truth.as_ref())
        .and_then(|t| fixtures.store().read_array(&t.array).ok())
        .filter(|(t, _)| t.len() == a_side.plain.values.len())
        .map(|(t, _)| {
            (
                rmse(&t, &a_side.plain.values),
                rmse(&t, &b_side.plain.values),
            )
        });
    let mut l = Localized {
        scenario: scenario.to_string(),
        a: a_side,
        b: b_side,
        identical,
        first,
        last,
        to_truth,
        beyond_noise,
        sentence: String::new(),
    };
    l.sentence = l.sentence();
    Ok(l)
}

/// The first step where |Δ sum_abs| between `a` and `b` exceeds the noise response at that
/// step, |sum_abs(nudged) - sum_abs(a)| (`nudged`: `a` with its initial noise one ulp up).
fn noise_step(
    a: &Observation,
    b: &Observation,
    nudged: &Observation,
) -> std::result::Result<Option<(usize, i64)>, ()> {
    let (Some(ta), Some(tb), Some(tn)) = (&a.trace, &b.trace, &nudged.trace) else {
        return Err(());
    };
    if ta.is_empty() || ta.len() != tb.len() || ta.len() != tn.len() {
        return Err(());
    }
    Ok(ta
        .iter()
        .zip(tb)
        .zip(tn)
        .find(|((x, y), n)| (x.sum_abs - y.sum_abs).abs() > (x.sum_abs - n.sum_abs).abs())
        .map(|((x, _), _)| (x.step, x.timestep)))
}

/// The denoising step of a dumped activation (`<t>.<module>`: its timestep t, and its step
/// number where the side's per-step trace has t) and the module; `None` and the whole name for
/// activations outside the loop (text encoder, VAE).
fn step_of(
    name: &str,
    trace: Option<&Vec<crate::pipelines::StepTrace>>,
) -> (Option<(Option<usize>, i64)>, String) {
    if let Some((t, module)) = name.split_once('.') {
        if let Ok(t) = t.parse::<i64>() {
            let step = trace
                .and_then(|tr| tr.iter().find(|s| s.timestep == t))
                .map(|s| s.step);
            return (Some((step, t)), module.to_string());
        }
    }
    (None, name.to_string())
}

impl Localized {
    fn place(&self, name: &str) -> String {
        match step_of(name, self.a.plain.trace.as_ref()) {
            (Some((Some(k), t)), m) => format!("step {k} (t = {t}) in {m}"),
            (Some((None, t)), m) => format!("t = {t} in {m}"),
            (None, m) => m,
        }
    }

    fn closer(&self) -> Option<String> {
        let (ta, tb) = self.to_truth?;
        (self.a.plain.sha256 != self.b.plain.sha256).then(|| {
            if ta <= tb {
                self.a.label.clone()
            } else {
                self.b.label.clone()
            }
        })
    }

    fn sentence(&self) -> String {
        let (a, b) = (&self.a, &self.b);
        if a.plain.sha256 == b.plain.sha256 {
            return format!("{} and {} give identical bits", a.label, b.label);
        }
        let out_d = max_abs_diff(&a.plain.values, &b.plain.values);
        let mut s = match (&self.first, self.identical.last()) {
            (None, _) => format!(
                "every captured activation is identical, yet the outputs differ (L_inf \
                 {out_d:.3e}): the difference arises after the last captured module"
            ),
            (Some((m, d)), None) => {
                format!("{} already differs (max |a - b| {d:.3e})", self.place(m))
            }
            (Some((m, d)), Some(prev)) => format!(
                "identical through {}; {} first differs (max |a - b| {d:.3e})",
                self.place(prev),
                self.place(m)
            ),
        };
        if let (Some((m, d)), Some((f, _))) = (&self.last, &self.first) {
            if m != f {
                s.push_str(&format!("; by {} it grows to {d:.3e}", self.place(m)));
            }
        }
        match self.beyond_noise {
            Ok(Some((k, t))) => s.push_str(&format!(
                "; the drift first exceeds the noise response (what one ulp of initial noise \
                 moves the latent's sum_abs) at step {k} (t = {t})"
            )),
            Ok(None) => s.push_str(
                "; at every step the drift stays within the noise response (what one ulp of \
                 initial noise moves the latent's sum_abs)",
            ),
            Err(()) => {}
        }
        s.push_str(&format!("; the outputs differ by L_inf {out_d:.3e}"));
        if let (Some(closer), Some((ta, tb))) = (self.closer(), self.to_truth) {
            s.push_str(&format!(
                "; {closer} is closer to the float64 truth (rmse {ta:.3e} for {}, {tb:.3e} for {})",
                a.label, b.label
            ));
        }
        s.push_str(". Capture on and off gave the same bits on both sides.");
        s
    }

    pub fn record(&self, suite: &str) -> Record {
        let differs = self.a.plain.sha256 != self.b.plain.sha256;
        let (first_step, first_module) = match &self.first {
            Some((name, _)) => {
                let (step, m) = step_of(name, self.a.plain.trace.as_ref());
                (step.and_then(|(k, t)| Some((k?, t))), Some(m))
            }
            None => (None, None),
        };
        Record {
            schema: 1,
            suite: suite.into(),
            scenario: self.scenario.clone(),
            a: self.a.label.clone(),
            b: self.b.label.clone(),
            outcome: if differs { "differs" } else { "identical" }.into(),
            first_step,
            first_module,
            l_inf: Some(max_abs_diff(&self.a.plain.values, &self.b.plain.values)),
            beyond_noise_step: self.beyond_noise.ok().flatten(),
            closer_to_truth: self.closer(),
            sentence: self.sentence.clone(),
        }
    }
}
