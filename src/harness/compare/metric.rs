//! One suite metric checked against one expectation, and the scenario's worst.
use super::result::{MetricCheck, Verdict};
use crate::harness::run::observe::Observation;
use crate::harness::store::Expectation;
use crate::harness::suite::{Scenario, Tolerance};
use crate::metrics::{self, Metric};

pub(super) fn worst(checks: &[MetricCheck]) -> Verdict {
    checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Identical)
}

pub(super) fn largest_difference(obs: &Observation, g: &[f64]) -> String {
    let (d, at) = metrics::l_inf(&obs.values, g);
    format!(
        "largest difference {d} at {:?}: got {} expected {}",
        metrics::unravel(at, &obs.shape),
        obs.values[at],
        g[at]
    )
}

/// One metric of the scenario against the expectation `e` (its array `expected` where read;
/// `identical` when the bits match), with the scenario's tolerance for it.
pub(super) fn check_metric(
    metric: Metric,
    scenario: &Scenario,
    obs: &Observation,
    e: &Expectation,
    expected: Option<&[f64]>,
    identical: bool,
) -> MetricCheck {
    let tol = scenario.tolerance_for(metric);
    let row = Row { metric, tol };
    if metric == Metric::Bits {
        bits(row, obs, e, identical)
    } else if metric.is_intrinsic() {
        intrinsic(row, obs, e)
    } else {
        comparative(row, obs, expected, identical)
    }
}

/// A metric's row in the result, with its tolerance described.
#[derive(Clone, Copy)]
struct Row {
    metric: Metric,
    tol: Tolerance,
}

impl Row {
    fn check(
        self,
        golden: String,
        got: String,
        delta: Option<f64>,
        verdict: Verdict,
    ) -> MetricCheck {
        MetricCheck {
            metric: self.metric.to_string(),
            golden,
            got,
            delta,
            tolerance: describe_tolerance(self.metric, self.tol),
            verdict,
        }
    }
}

/// The output's sha256 against the expectation's.
fn bits(row: Row, obs: &Observation, e: &Expectation, identical: bool) -> MetricCheck {
    let got = obs.sha256[..12].to_string();
    let Some(want) = &e.sha256 else {
        return row.check("no bits".into(), got, None, Verdict::Failed);
    };
    let verdict = if identical {
        Verdict::Identical
    } else {
        Verdict::Drifted
    };
    row.check(want[..12].to_string(), got, None, verdict)
}

/// A metric of the output alone (sum of abs, ...) against the expectation's stored value.
fn intrinsic(row: Row, obs: &Observation, e: &Expectation) -> MetricCheck {
    let name = row.metric.name();
    let (Some(&want), Some(&got)) = (e.metrics.get(name), obs.metrics.get(name)) else {
        return row.check("-".into(), "-".into(), None, Verdict::Failed);
    };
    let delta = (got - want).abs();
    if !delta.is_finite() {
        return row.check(
            want.to_string(),
            got.to_string(),
            Some(delta),
            Verdict::Failed,
        );
    }
    // Compared value to value even when the bits match: a stored value that disagrees with
    // its own output (hand-edited, or computed by another definition) must not pass.
    let verdict = if got.to_bits() == want.to_bits() {
        Verdict::Identical
    } else {
        match row.tol {
            Tolerance::Band { abs, rel } if delta <= abs + rel * want.abs() => {
                Verdict::WithinTolerance
            }
            _ => Verdict::Drifted,
        }
    };
    row.check(want.to_string(), got.to_string(), Some(delta), verdict)
}

/// A metric between the output and the expected array (L_inf, cosine distance, PSNR): it needs
/// the array unless the bits are identical.
fn comparative(
    row: Row,
    obs: &Observation,
    expected: Option<&[f64]>,
    identical: bool,
) -> MetricCheck {
    let metric = row.metric;
    let ideal = match metric {
        Metric::Psnr => f64::INFINITY,
        _ => 0.0,
    };
    let got = if identical {
        ideal
    } else if let Some(g) = expected {
        match metric {
            Metric::LInf => metrics::l_inf(&obs.values, g).0,
            Metric::CosineDistance => metrics::cosine_distance(&obs.values, g),
            Metric::Psnr => metrics::psnr(&obs.values, g),
            _ => unreachable!("intrinsic metrics are checked by `intrinsic`"),
        }
    } else {
        let missing = "no golden array".into();
        return row.check(ideal.to_string(), missing, None, Verdict::Failed);
    };
    let verdict = if got == ideal {
        Verdict::Identical
    } else if got.is_nan() || (metric != Metric::Psnr && !got.is_finite()) {
        Verdict::Failed
    } else {
        let ok = match row.tol {
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
    row.check(ideal.to_string(), got.to_string(), delta, verdict)
}

pub(super) fn describe_tolerance(metric: Metric, tol: Tolerance) -> String {
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
