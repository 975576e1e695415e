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

pub(super) fn check_metric(
    metric: Metric,
    scenario: &Scenario,
    obs: &Observation,
    e: &Expectation,
    expected: Option<&[f64]>,
    identical: bool,
) -> MetricCheck {
    let tol = scenario.tolerance_for(metric);
    let row = |golden: String, got: String, delta: Option<f64>, verdict| MetricCheck {
        metric: metric.to_string(),
        golden,
        got,
        delta,
        tolerance: describe_tolerance(metric, tol),
        verdict,
    };
    if metric == Metric::Bits {
        let Some(want) = &e.sha256 else {
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
        let (Some(&want), Some(&got)) =
            (e.metrics.get(metric.name()), obs.metrics.get(metric.name()))
        else {
            return row("-".into(), "-".into(), None, Verdict::Failed);
        };
        let delta = (got - want).abs();
        if !delta.is_finite() {
            return row(
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
            match tol {
                Tolerance::Band { abs, rel } if delta <= abs + rel * want.abs() => {
                    Verdict::WithinTolerance
                }
                _ => Verdict::Drifted,
            }
        };
        return row(want.to_string(), got.to_string(), Some(delta), verdict);
    }
    // Comparative metrics: need the expected array unless the bits are identical.
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
    } else if got.is_nan() || (metric != Metric::Psnr && !got.is_finite()) {
        Verdict::Failed
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
