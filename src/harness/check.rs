//! Comparing an observation with its golden: per-metric checks and a scenario verdict.
use super::golden::{GoldenEntry, GoldenStore};
use super::metrics::{self, Metric};
use super::observe::{NotObserved, Observation};
use super::suite::{Scenario, Tolerance};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Ordered from best to worst; a scenario's verdict is the worst of its metrics'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Bit-identical to the golden (or the metric's value is exactly the golden's).
    Identical,
    /// Different, inside the scenario's tolerance.
    WithinTolerance,
    /// Not run for a stated reason (no CUDA, no weights, CPU lacks a capability).
    NotRun,
    /// Outside the tolerance.
    Drifted,
    /// No golden to compare with: bless or run the oracle.
    NoGolden,
    /// The run failed, or its output cannot be compared (shape, dtype, NaN).
    Failed,
}

impl Verdict {
    pub fn passed(self) -> bool {
        matches!(
            self,
            Verdict::Identical | Verdict::WithinTolerance | Verdict::NotRun
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::WithinTolerance => "within tolerance",
            Verdict::NotRun => "not run",
            Verdict::Drifted => "drifted",
            Verdict::NoGolden => "no golden",
            Verdict::Failed => "failed",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One row of the check table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    pub metric: Metric,
    /// Golden value (for bits: the SHA-256; for comparative metrics: the ideal value).
    pub golden: String,
    pub got: String,
    pub delta: Option<f64>,
    pub tolerance: String,
    pub verdict: Verdict,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub suite: String,
    pub scenario: String,
    pub verdict: Verdict,
    pub checks: Vec<MetricCheck>,
    /// Why it failed or was not run, where the worst element is, how to fix a missing golden.
    pub notes: Vec<String>,
    pub output: Option<OutputSummary>,
    /// Who produced the golden ("oracle", "reprodiff", "published").
    pub golden_producer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSummary {
    pub shape: Vec<i64>,
    pub dtype: String,
    pub sha256: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub unseeded_seed: Option<u64>,
    pub elapsed_s: f64,
}

impl ScenarioResult {
    fn bare(suite: &str, scenario: &str, verdict: Verdict, note: String) -> Self {
        ScenarioResult {
            suite: suite.into(),
            scenario: scenario.into(),
            verdict,
            checks: Vec::new(),
            notes: vec![note],
            output: None,
            golden_producer: None,
        }
    }

    /// A scenario that produced no observation.
    pub fn not_observed(suite: &str, scenario: &str, why: &NotObserved) -> Self {
        match why {
            NotObserved::NotRun(reason) => Self::bare(
                suite,
                scenario,
                Verdict::NotRun,
                format!("not run: {reason}"),
            ),
            NotObserved::Failed(e) => Self::bare(suite, scenario, Verdict::Failed, e.to_string()),
        }
    }
}

/// The command that creates a missing golden.
pub fn bless_hint(suite: &str, scenario: &str) -> String {
    format!(
        "no golden for this scenario: run the oracle (ci/oracle/run.sh --suite {suite} --filter \
         '^{}$') or `reprodiff bless --suite {suite} --filter '^{}$'`",
        regex::escape(scenario),
        regex::escape(scenario)
    )
}

/// Compares `obs` with `golden` under `scenario`'s metrics and tolerances.
pub fn compare(
    suite: &str,
    scenario: &Scenario,
    obs: &Observation,
    golden: Option<&GoldenEntry>,
    store: &GoldenStore,
) -> ScenarioResult {
    let mut result = ScenarioResult {
        suite: suite.into(),
        scenario: scenario.name.clone(),
        verdict: Verdict::Identical,
        checks: Vec::new(),
        notes: Vec::new(),
        output: Some(OutputSummary {
            shape: obs.shape.clone(),
            dtype: obs.dtype.to_string(),
            sha256: obs.sha256.clone(),
            metrics: obs.metrics.clone(),
            unseeded_seed: obs.unseeded_seed,
            elapsed_s: obs.elapsed_s,
        }),
        golden_producer: golden.map(|g| g.provenance.producer.clone()),
    };
    let Some(golden) = golden else {
        result.verdict = Verdict::NoGolden;
        result.notes.push(bless_hint(suite, &scenario.name));
        return result;
    };
    if golden.shape != obs.shape || golden.dtype != obs.dtype {
        result.verdict = Verdict::Failed;
        result.notes.push(format!(
            "output is {} {:?}, the golden {} {:?}",
            obs.dtype, obs.shape, golden.dtype, golden.shape
        ));
        return result;
    }
    if !obs.finite {
        result.notes.push("output holds NaN or Inf".into());
    }
    let identical = golden.sha256.as_deref() == Some(obs.sha256.as_str());

    let needs_array = !identical || scenario.metrics.iter().any(|m| m.needs_array());
    let golden_values = match (&golden.array, needs_array) {
        (Some(rel), true) => match store.read_array(rel) {
            Ok((values, _)) if values.len() == obs.values.len() => Some(values),
            Ok((values, _)) => {
                result.notes.push(format!(
                    "golden array {rel} holds {} values, the output {}",
                    values.len(),
                    obs.values.len()
                ));
                None
            }
            Err(e) => {
                result.notes.push(e.to_string());
                None
            }
        },
        _ => None,
    };

    if !identical {
        if let Some(g) = &golden_values {
            if let Some(i) = metrics::first_difference(&obs.values, g) {
                result.notes.push(format!(
                    "first differing element at {:?}: got {} golden {}",
                    metrics::unravel(i, &obs.shape),
                    obs.values[i],
                    g[i]
                ));
            }
        }
    }

    for &metric in &scenario.metrics {
        let check = check_metric(
            metric,
            scenario,
            obs,
            golden,
            golden_values.as_deref(),
            identical,
        );
        if metric == Metric::LInf && check.verdict > Verdict::Identical {
            if let Some(g) = &golden_values {
                let (d, at) = metrics::l_inf(&obs.values, g);
                result.notes.push(format!(
                    "largest difference {d} at {:?}: got {} golden {}",
                    metrics::unravel(at, &obs.shape),
                    obs.values[at],
                    g[at]
                ));
            }
        }
        result.checks.push(check);
    }
    result.verdict = result
        .checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Identical);
    if !obs.finite {
        result.verdict = Verdict::Failed;
    }
    result
}

fn check_metric(
    metric: Metric,
    scenario: &Scenario,
    obs: &Observation,
    golden: &GoldenEntry,
    golden_values: Option<&[f64]>,
    identical: bool,
) -> MetricCheck {
    let tol = scenario.tolerance_for(metric);
    let row = |golden: String, got: String, delta: Option<f64>, verdict| MetricCheck {
        metric,
        golden,
        got,
        delta,
        tolerance: describe_tolerance(metric, tol),
        verdict,
    };
    if metric == Metric::Bits {
        let Some(want) = &golden.sha256 else {
            return row(
                "no bits".into(),
                obs.sha256[..12].to_string(),
                None,
                Verdict::Failed,
            );
        };
        let verdict = if identical {
            Verdict::Identical
        } else {
            Verdict::Drifted
        };
        return row(
            want[..12].to_string(),
            obs.sha256[..12].to_string(),
            None,
            verdict,
        );
    }
    if metric.is_intrinsic() {
        let (Some(&want), Some(&got)) = (
            golden.metrics.get(metric.name()),
            obs.metrics.get(metric.name()),
        ) else {
            return row("-".into(), "-".into(), None, Verdict::Failed);
        };
        let delta = (got - want).abs();
        // Compared value to value even when the bits match: a stored value that disagrees with
        // its own output (hand-edited, or computed by another definition) must not pass.
        let verdict = if got.to_bits() == want.to_bits() {
            Verdict::Identical
        } else {
            match tol {
                Tolerance::Band { abs, rel } if delta <= abs + rel * want.abs() => {
                    Verdict::WithinTolerance
                }
                _ => Verdict::Drifted,
            }
        };
        return row(want.to_string(), got.to_string(), Some(delta), verdict);
    }
    // Comparative metrics: need the golden array unless the bits are identical.
    let ideal = match metric {
        Metric::Psnr => f64::INFINITY,
        _ => 0.0,
    };
    let got = if identical {
        ideal
    } else if let Some(g) = golden_values {
        match metric {
            Metric::LInf => metrics::l_inf(&obs.values, g).0,
            Metric::CosineDistance => metrics::cosine_distance(&obs.values, g),
            Metric::Psnr => metrics::psnr(&obs.values, g),
            _ => unreachable!("intrinsic metrics handled above"),
        }
    } else {
        return row(
            ideal.to_string(),
            "no golden array".into(),
            None,
            Verdict::Failed,
        );
    };
    let verdict = if got == ideal {
        Verdict::Identical
    } else {
        let ok = match tol {
            Tolerance::Max { max } => got <= max,
            Tolerance::Min { min } => got >= min,
            Tolerance::Band { .. } => false,
        };
        if ok {
            Verdict::WithinTolerance
        } else {
            Verdict::Drifted
        }
    };
    let delta = if metric == Metric::Psnr {
        None
    } else {
        Some(got)
    };
    row(ideal.to_string(), got.to_string(), delta, verdict)
}

fn describe_tolerance(metric: Metric, tol: Tolerance) -> String {
    match (metric, tol) {
        (Metric::Bits, _) => "bit-exact".into(),
        (_, Tolerance::Band { abs, rel }) if abs == 0.0 && rel == 0.0 => "exact".into(),
        (_, Tolerance::Band { abs, rel: 0.0 }) => format!("abs {abs}"),
        (_, Tolerance::Band { abs, rel }) => format!("abs {abs} + rel {rel}"),
        (_, Tolerance::Max { max: 0.0 }) => "exact".into(),
        (_, Tolerance::Max { max }) => format!("<= {max}"),
        (_, Tolerance::Min { min }) => format!(">= {min} dB"),
    }
}
