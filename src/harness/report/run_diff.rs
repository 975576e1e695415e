//! `reprodiff diff A B`: two recorded runs ([`crate::harness::run_record`]) side by side: what
//! differs between their environments and calls, where their latents part and how the
//! difference grows, and the known causes reprodiff's own findings name.
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use crate::harness::run_record::{self, ArrayRef, RunRecord};
use crate::metrics;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

/// What `diff` found: the text it prints, and whether every array is bit-identical.
#[derive(Debug)]
pub struct RunDiff {
    pub text: String,
    pub identical: bool,
}

/// Compares the recorded runs in the folders `a` and `b`.
pub fn diff(a: &Path, b: &Path) -> Result<RunDiff> {
    let (ra, rb) = (run_record::read(a)?, run_record::read(b)?);
    let (x, y) = (&ra.record, &rb.record);
    let mut out = String::new();
    let settings = setting_changes(x, y);
    let _ = writeln!(out, "environment and call: {}", list_or_same(&settings));
    let arrays = ArrayDiff::of(a, x, b, y)?;
    out.push_str(&arrays.text);
    out.push_str(&truth_distances(a, x, b, y, !arrays.initial_differs)?);
    for cause in known_causes(x, y, &arrays) {
        let _ = writeln!(out, "known cause: {cause}");
    }
    Ok(RunDiff {
        text: out,
        identical: arrays.identical,
    })
}

fn list_or_same(changes: &[String]) -> String {
    if changes.is_empty() {
        "the same".into()
    } else {
        changes.join("; ")
    }
}

/// "torch 2.4.1 -> 2.5.0", "ATen avx2 -> avx512", "guidance_scale 7.5 -> 7.0", ...
fn setting_changes(x: &RunRecord, y: &RunRecord) -> Vec<String> {
    let mut out = Vec::new();
    let mut change = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} {a} -> {b}"));
        }
    };
    for (what, a, b) in environment_pairs(x, y) {
        change(what, a, b);
    }
    let (ex, ey) = (&x.environment, &y.environment);
    change(
        "device",
        x.pipeline.device.clone(),
        y.pipeline.device.clone(),
    );
    change(
        "dtype",
        x.pipeline.dtype.to_string(),
        y.pipeline.dtype.to_string(),
    );
    change(
        "pipeline",
        x.pipeline.class.clone(),
        y.pipeline.class.clone(),
    );
    let (sx, sy) = (&x.pipeline.scheduler, &y.pipeline.scheduler);
    change("scheduler", sx.class.clone(), sy.class.clone());
    for (key, a, b) in map_changes(&sx.config, &sy.config) {
        if !key.starts_with('_') {
            change(&format!("scheduler.{key}"), a, b);
        }
    }
    for (key, a, b) in map_changes(&x.call, &y.call) {
        change(&key, a, b);
    }
    let determinism = |fp: &Fingerprint| serde_json::to_value(&fp.determinism).unwrap_or_default();
    if let (Value::Object(a), Value::Object(b)) = (determinism(ex), determinism(ey)) {
        for (key, a, b) in map_changes(&a, &b) {
            change(&format!("determinism.{key}"), a, b);
        }
    }
    for (name, a) in &x.model.weights_sha256 {
        let b = y.model.weights_sha256.get(name);
        if b != Some(a) {
            out.push(format!(
                "{name} weights differ (sha256 {} -> {})",
                short(a),
                b.map_or("none", |b| short(b))
            ));
        }
    }
    out
}

/// The class, versions, CPU, threads, kernel variables, libc and GPUs of both runs, named.
fn environment_pairs(x: &RunRecord, y: &RunRecord) -> Vec<(&'static str, String, String)> {
    let (ex, ey) = (&x.environment, &y.environment);
    vec![
        ("class", x.class().to_string(), y.class().to_string()),
        (
            "torch",
            ex.versions.libtorch.clone(),
            ey.versions.libtorch.clone(),
        ),
        (
            "torch build",
            opt(&ex.versions.torch_build),
            opt(&ey.versions.torch_build),
        ),
        (
            "diffusers",
            opt(&ex.versions.diffusers),
            opt(&ey.versions.diffusers),
        ),
        (
            "transformers",
            opt(&ex.versions.transformers),
            opt(&ey.versions.transformers),
        ),
        ("python", opt(&ex.versions.python), opt(&ey.versions.python)),
        ("CPU", ex.cpu.model.clone(), ey.cpu.model.clone()),
        ("ATen", ex.cpu.capability.clone(), ey.cpu.capability.clone()),
        (
            "threads",
            ex.cpu.threads.to_string(),
            ey.cpu.threads.to_string(),
        ),
        (
            "kernel variables",
            format!("{:?}", ex.cpu.kernel_env),
            format!("{:?}", ey.cpu.kernel_env),
        ),
        ("libc", opt(&ex.os.libc), opt(&ey.os.libc)),
        (
            "GPUs",
            format!("{:?}", ex.cuda.devices),
            format!("{:?}", ey.cuda.devices),
        ),
    ]
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// Keys whose values differ, with both values as JSON text ("-" where one side lacks it).
fn map_changes(
    a: &serde_json::Map<String, Value>,
    b: &serde_json::Map<String, Value>,
) -> Vec<(String, String, String)> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let text = |v: Option<&Value>| v.map_or("-".to_string(), Value::to_string);
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), text(a.get(k)), text(b.get(k))))
        .collect()
}

/// Where the two runs' arrays part.
struct ArrayDiff {
    text: String,
    identical: bool,
    initial_differs: bool,
    first_step: Option<usize>,
}

impl ArrayDiff {
    fn of(a: &Path, x: &RunRecord, b: &Path, y: &RunRecord) -> Result<Self> {
        let mut text = String::new();
        let mut identical = x.steps.len() == y.steps.len();
        let initial_differs = match (&x.initial_latents, &y.initial_latents) {
            (Some(p), Some(q)) => p.sha256 != q.sha256,
            _ => true,
        };
        identical &= !initial_differs;
        if initial_differs {
            let _ = writeln!(
                text,
                "initial latents: differ{}",
                distance(a, x.initial_latents.as_ref(), b, y.initial_latents.as_ref())?
            );
        } else {
            let _ = writeln!(text, "initial latents: identical");
        }
        let mut first_step = None;
        let mut rows = String::new();
        for (s, t) in x.steps.iter().zip(&y.steps) {
            if s.sha256 == t.sha256 {
                continue;
            }
            identical = false;
            first_step.get_or_insert(s.step);
            let (va, vb) = (values(a, &s.file)?, values(b, &t.file)?);
            let _ = writeln!(
                rows,
                "| {} | {} | {} |",
                s.step,
                s.timestep,
                stats(&va, &vb)
            );
        }
        if !rows.is_empty() {
            text.push_str(
                "| step | timestep | L_inf | rmse | sum_abs change |\n|---|---|---|---|---|\n",
            );
            text.push_str(&rows);
        }
        let _ = writeln!(
            text,
            "steps: {} and {}; {}",
            x.steps.len(),
            y.steps.len(),
            match first_step {
                None => "every common step identical".to_string(),
                Some(i) => format!("the runs part at step {i}"),
            }
        );
        match (&x.output, &y.output) {
            (Some(p), Some(q)) if p.sha256 == q.sha256 => {
                let _ = writeln!(text, "output: identical");
            }
            (p, q) => {
                identical = false;
                let _ = writeln!(
                    text,
                    "output: differs{}",
                    distance(a, p.as_ref(), b, q.as_ref())?
                );
            }
        }
        Ok(ArrayDiff {
            text,
            identical,
            initial_differs,
            first_step,
        })
    }
}

pub(crate) fn values(dir: &Path, file: &str) -> Result<Vec<f64>> {
    let path = crate::paths::join(dir, file, "run record array")?;
    let t = tch::Tensor::read_npy(&path).map_err(|e| Error::invalid_file(&path, e))?;
    crate::torch::tensor_to_f64(&t)
}

/// "L_inf x | rmse y | z" for two arrays of one size.
fn stats(a: &[f64], b: &[f64]) -> String {
    if a.len() != b.len() {
        return format!("sizes {} and {} | - | -", a.len(), b.len());
    }
    format!(
        "{:.3e} | {:.3e} | {:.3e}",
        metrics::l_inf(a, b).0,
        metrics::rmse(a, b),
        (metrics::sum_abs(a) - metrics::sum_abs(b)).abs()
    )
}

fn distance(a: &Path, p: Option<&ArrayRef>, b: &Path, q: Option<&ArrayRef>) -> Result<String> {
    let (Some(p), Some(q)) = (p, q) else {
        return Ok(" (one run did not record it)".into());
    };
    if p.shape != q.shape {
        return Ok(format!(" (shapes {:?} and {:?})", p.shape, q.shape));
    }
    let (va, vb) = (values(a, &p.file)?, values(b, &q.file)?);
    Ok(format!(
        " (L_inf {:.3e}, rmse {:.3e})",
        metrics::l_inf(&va, &vb).0,
        metrics::rmse(&va, &vb)
    ))
}

/// Each run's distance to its own float64 truth where both carry one (`record(...,
/// truth=True)`), at the final latent and, for float images of one shape, the output; which run
/// is nearer only where both started from the same initial latents: otherwise each truth is
/// another trajectory, and a user's pipeline has no calibrated tolerance to relate them.
fn truth_distances(
    a: &Path,
    x: &RunRecord,
    b: &Path,
    y: &RunRecord,
    same_start: bool,
) -> Result<String> {
    let (Some(tx), Some(ty)) = (&x.truth, &y.truth) else {
        return Ok(if x.truth.is_some() != y.truth.is_some() {
            "float64 truth: only one run carries one (record both with truth=True)\n".into()
        } else {
            String::new()
        });
    };
    let (Some(dx), Some(dy)) = (to_truth(a, x, tx)?, to_truth(b, y, ty)?) else {
        return Ok("float64 truth: a run or its truth recorded no step\n".into());
    };
    let verdict = if !same_start {
        "no nearer side: the initial latents differ, so each truth is another trajectory"
    } else if dx.0 < dy.0 {
        &format!("{} is nearer its own truth", a.display())
    } else if dy.0 < dx.0 {
        &format!("{} is nearer its own truth", b.display())
    } else {
        "both are as near"
    };
    Ok(format!(
        "float64 truth: final latent rmse {} and {}{}; {verdict}\n",
        sci(dx.0),
        sci(dy.0),
        match (dx.1, dy.1) {
            (Some(p), Some(q)) => format!(", output rmse {} and {}", sci(p), sci(q)),
            _ => String::new(),
        }
    ))
}

fn sci(v: f64) -> String {
    format!("{v:.3e}")
}

/// rmse of `r`'s last step from its truth's, and of its output from the truth's output where
/// both are of one shape; `None` where either recorded no step.
fn to_truth(
    dir: &Path,
    r: &RunRecord,
    t: &run_record::TruthRun,
) -> Result<Option<(f64, Option<f64>)>> {
    let (Some(last), Some(true_last)) = (r.steps.last(), t.steps.last()) else {
        return Ok(None);
    };
    let latent = metrics::rmse(&values(dir, &last.file)?, &values(dir, &true_last.file)?);
    let output = match (&r.output, &t.output) {
        (Some(o), Some(to)) if o.shape == to.shape => Some(metrics::rmse(
            &values(dir, &o.file)?,
            &values(dir, &to.file)?,
        )),
        _ => None,
    };
    Ok(Some((latent, output)))
}

/// The causes reprodiff's findings name for what differs (docs/findings.md).
fn known_causes(x: &RunRecord, y: &RunRecord, arrays: &ArrayDiff) -> Vec<String> {
    let mut out = Vec::new();
    let generator_devices = |r: &RunRecord| -> Vec<String> {
        let g = r.call.get("generator").cloned().unwrap_or(Value::Null);
        let list = match g {
            Value::Array(l) => l,
            other => vec![other],
        };
        list.iter()
            .map(|g| g["device"].as_str().unwrap_or("none").to_string())
            .collect()
    };
    let (ex, ey) = (&x.environment, &y.environment);
    if arrays.initial_differs {
        let (gx, gy) = (generator_devices(x), generator_devices(y));
        if gx != gy && gx.iter().chain(&gy).any(|d| d.starts_with("cuda")) {
            out.push(format!(
                "the generators are on {gx:?} and {gy:?}: a CUDA generator makes other noise \
                 than a CPU one of the same seed by design, so the initial latents differ"
            ));
        }
        if ex.cpu.capability != ey.cpu.capability {
            out.push(format!(
                "ATen's CPU capability differs ({} -> {}): CPU randn's `default` kernel draws \
                 other values than the vectorised avx2/avx512 ones (about 1e-6 apart)",
                ex.cpu.capability, ey.cpu.capability
            ));
        }
        if generator_devices(x).contains(&"none".to_string()) {
            out.push("no generator was passed: an unseeded run is not reproducible".into());
        }
    } else if arrays.first_step.is_some() {
        if ex.cpu.capability != ey.cpu.capability || ex.cpu.kernel_env != ey.cpu.kernel_env {
            out.push(
                "the CPU kernels differ (ATen capability or oneDNN/MKL settings): the same \
                 noise goes through convolutions and matmuls summed in another order"
                    .into(),
            );
        }
        if map_changes(&x.call, &y.call)
            .iter()
            .any(|(k, _, _)| k != "generator")
        {
            out.push("the call's arguments differ: the first UNet step sees another input".into());
        }
    }
    if x.pipeline.dtype != y.pipeline.dtype {
        out.push(format!(
            "the dtypes differ ({} -> {}): every value is rounded to another precision",
            x.pipeline.dtype, y.pipeline.dtype
        ));
    }
    out
}
