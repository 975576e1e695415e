//! `reprodiff localize`: where two runs of one scenario part. Each side (a CPU kernel class and
//! thread count, as `matrix` spells them) runs the scenario twice in child processes: once
//! plain, once with activation capture (REPRODIFF_DUMP_DIR). Capture must not change the output
//! (instrumentation can change kernels); then the captured activations are walked in execution
//! order, as PyTorch's minifier walks modules, to the first module whose bits differ.
use super::matrix::{combinations, Combination};
use super::observe::{read_observation, Observation};
use super::session::Fixtures;
use crate::error::{Error, Result};
use crate::models::dump::INDEX;
use std::path::{Path, PathBuf};

/// One side's runs.
#[derive(Debug)]
pub struct Side {
    pub label: String,
    pub plain: Observation,
    pub captured: Observation,
    pub dumps: PathBuf,
}

/// Where the two sides part.
#[derive(Debug)]
pub struct Localized {
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
    pub sentence: String,
}

/// `native`, `avx2-threads1`, ...: a class of [`super::matrix::CPU_CLASSES`], optionally
/// `-threadsN`.
fn side(spec: &str, isa: &[String]) -> Result<Combination> {
    let (class, threads) = match spec.rsplit_once("-threads") {
        Some((c, n)) => (
            c,
            Some(n.parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!("{spec}: expected CLASS or CLASS-threadsN"))
            })?),
        ),
        None => (spec, None),
    };
    let mut c = combinations(&[class.to_string()], &[threads], isa)?.remove(0);
    if let Some(why) = c.skipped.take() {
        return Err(Error::Unavailable(format!("{spec}: {why}")));
    }
    c.label = spec.to_string();
    Ok(c)
}

fn observe(
    exe: &Path,
    suite_file: &Path,
    scenario: &str,
    c: &Combination,
    out: &Path,
    dump: Option<&Path>,
) -> Result<Observation> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut cmd = std::process::Command::new(exe);
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
    if !status.status.success() {
        return Err(Error::Torch(format!(
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

fn rmse(a: &[f64], b: &[f64]) -> f64 {
    (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len().max(1) as f64).sqrt()
}

fn read_dump(dir: &Path, name: &str) -> Result<Vec<f64>> {
    let path = dir.join(format!("{name}.npy"));
    let t = tch::Tensor::read_npy(&path).map_err(|e| Error::invalid_file(&path, e))?;
    crate::torch::tensor_to_f64(&t)
}

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
    let suites = fixtures.select(&super::session::Selection {
        suites: vec![suite.to_string()],
        filter: None,
    })?;
    let s = suites
        .iter()
        .find(|s| s.name == suite)
        .ok_or_else(|| Error::InvalidArgument(format!("--suite {suite}: no such suite")))?;
    if !s.scenarios.iter().any(|x| x.name == scenario) {
        return Err(Error::InvalidArgument(format!(
            "--scenario {scenario}: not in suite {suite} (see `reprodiff list --suite {suite}`)"
        )));
    }
    let mut sides = Vec::new();
    for spec in [a, b] {
        let c = side(spec, isa)?;
        let dir = out.join(spec);
        let dumps = dir.join("dump");
        if dumps.exists() {
            std::fs::remove_dir_all(&dumps).map_err(|e| Error::io(&dumps, e))?;
        }
        let plain = observe(exe, &s.path, scenario, &c, &dir.join("plain"), None)?;
        let captured = observe(
            exe,
            &s.path,
            scenario,
            &c,
            &dir.join("captured"),
            Some(&dumps),
        )?;
        if plain.sha256 != captured.sha256 {
            return Err(Error::Torch(format!(
                "localize: activation capture changed {scenario}'s output as {spec} \
                 ({} plain, {} captured): its dumps cannot locate anything",
                &plain.sha256[..12],
                &captured.sha256[..12]
            )));
        }
        sides.push(Side {
            label: spec.to_string(),
            plain,
            captured,
            dumps,
        });
    }
    let (b_side, a_side) = (sides.pop().expect("two"), sides.pop().expect("two"));
    let index = std::fs::read_to_string(a_side.dumps.join(INDEX)).unwrap_or_default();
    let mut identical = Vec::new();
    let mut first = None;
    let mut last = None;
    for name in index.lines().filter(|l| !l.is_empty()) {
        let va = read_dump(&a_side.dumps, name)?;
        let vb = read_dump(&b_side.dumps, name)?;
        let d = if va.len() == vb.len() {
            max_abs_diff(&va, &vb)
        } else {
            f64::INFINITY
        };
        let same =
            va.len() == vb.len() && va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
        if same && first.is_none() {
            identical.push(name.to_string());
        } else if first.is_none() {
            first = Some((name.to_string(), d));
        }
        last = Some((name.to_string(), d));
    }
    let golden = fixtures.store().load(suite)?;
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
    let sentence = sentence(&a_side, &b_side, &identical, &first, &last, to_truth);
    Ok(Localized {
        a: a_side,
        b: b_side,
        identical,
        first,
        last,
        to_truth,
        sentence,
    })
}

fn sentence(
    a: &Side,
    b: &Side,
    identical: &[String],
    first: &Option<(String, f64)>,
    last: &Option<(String, f64)>,
    to_truth: Option<(f64, f64)>,
) -> String {
    let out_d = max_abs_diff(&a.plain.values, &b.plain.values);
    let mut s = match (first, identical.last()) {
        _ if a.plain.sha256 == b.plain.sha256 && first.is_none() => {
            format!("{} and {} give identical bits throughout", a.label, b.label)
        }
        (None, _) => format!(
            "every captured activation is identical, yet the outputs differ (L_inf {out_d:.3e}): \
             the difference arises after the last captured module"
        ),
        (Some((m, d)), None) => format!("{m} already differs (max |a - b| {d:.3e})"),
        (Some((m, d)), Some(prev)) => {
            format!("identical through {prev}; {m} first differs (max |a - b| {d:.3e})")
        }
    };
    if let Some((m, d)) = last {
        if first.is_some() && Some(m) != first.as_ref().map(|f| &f.0) {
            s.push_str(&format!("; by {m} it grows to {d:.3e}"));
        }
    }
    if a.plain.sha256 != b.plain.sha256 {
        s.push_str(&format!("; the outputs differ by L_inf {out_d:.3e}"));
    }
    if let Some((ta, tb)) = to_truth {
        if a.plain.sha256 != b.plain.sha256 {
            let closer = if ta <= tb { &a.label } else { &b.label };
            s.push_str(&format!(
                "; {closer} is closer to the float64 truth (rmse {ta:.3e} for {}, {tb:.3e} for {})",
                a.label, b.label
            ));
        }
    }
    s.push_str(". Capture on and off gave the same bits on both sides.");
    s
}
