//! The judgements [`super::compare`] makes once it knows its expectation: the same class's
//! metrics, the cross-class rule against the float64 truth, the local rule, a rerun's zero and
//! the extra check against a blessed expectation.
use crate::env::EnvClass;
use crate::harness::run::observe::Observation;
use crate::harness::store::{Expectation, GoldenScenario, GoldenStore};
use crate::harness::suite::Scenario;
use crate::metrics::{self, Metric};

use super::metric::{check_metric, largest_difference, worst};
use super::{local, MetricCheck, ScenarioResult, Verdict};

/// A cross-class comparison is powerless when a one-ulp change of the initial noise moves the
/// output by more than this fraction of its RMS: rounding differences between CPUs are then
/// amplified into a different result, and no tolerance separates a bug from the hardware.
pub const POWERLESS_SENSITIVITY: f64 = 1e-3;

/// `sensitivity` as a fraction of the truth's RMS (0 for an all-zero truth): above
/// [`POWERLESS_SENSITIVITY`] no cross-class tolerance can tell a bug from the hardware.
pub fn relative_sensitivity(sensitivity: f64, truth: &[f64]) -> f64 {
    let scale = metrics::rms(truth);
    if scale > 0.0 {
        sensitivity / scale
    } else {
        0.0
    }
}

/// The extra exact check against this class's blessed expectation.
pub(super) fn blessed_check(result: &mut ScenarioResult, own: &Expectation, obs: &Observation) {
    let identical = own.sha256.as_deref() == Some(obs.sha256.as_str());
    let verdict = if identical {
        Verdict::Identical
    } else {
        Verdict::Drifted
    };
    result.checks.push(MetricCheck {
        metric: "bits (blessed)".into(),
        golden: own.sha256.as_deref().map_or("no bits", |h| &h[..12]).into(),
        got: obs.sha256[..12].to_string(),
        delta: None,
        tolerance: "bit-exact".into(),
        verdict,
    });
    result.notes.push(format!(
        "also compared bit for bit with this class's expectation that reprodiff blessed ({}): {}",
        own.provenance.command, verdict
    ));
    result.verdict = result.verdict.max(verdict);
}

/// The local rule where the run made its local pass (`session::local_inputs` asks for it where
/// the golden holds what it needs). A local pass that cannot be judged (no `local_ulps` for the
/// dtype, unreadable arrays) fails: it was made because the global rules could not see.
pub(super) fn judge_locally(
    result: &mut ScenarioResult,
    golden: &GoldenScenario,
    class: &EnvClass,
    obs: &Observation,
    store: &GoldenStore,
    truth: Option<&std::result::Result<Vec<f64>, String>>,
    (k, ulps): (f64, Option<f64>),
) {
    if obs.local.is_none() {
        return;
    }
    let judged = (|| {
        let reference = local::reference(golden, class).ok_or("no class has local figures")?;
        let figures = reference.local.as_ref().expect("reference has figures");
        let ulps = ulps.ok_or_else(|| format!("the suite sets no local_ulps for {}", obs.dtype))?;
        let truth = match truth {
            Some(Ok(t)) => t,
            Some(Err(why)) => return Err(why.clone()),
            None => return Err("the golden has no truth".into()),
        };
        let stages = local::local_stages(golden, figures, obs, store, truth, (k, ulps))?;
        Ok::<_, String>((reference, stages, ulps))
    })();
    match judged {
        Ok((reference, stages, ulps)) => local::local_rule(result, &stages, reference, (k, ulps)),
        Err(why) => {
            result.verdict = Verdict::Failed;
            result
                .notes
                .push(format!("the local pass cannot be judged: {why}"));
        }
    }
}

/// A rerun difference (run 1 minus run 2) needs no golden: it is exactly zero, or the claim
/// that two runs repeat fails.
pub(super) fn rerun_is_zero(result: &mut ScenarioResult, obs: &Observation) {
    let largest = metrics::max_abs(&obs.values);
    let verdict = if largest == 0.0 && obs.finite {
        Verdict::Identical
    } else {
        Verdict::Drifted
    };
    result.checks.push(MetricCheck {
        metric: "max_abs".into(),
        golden: "0".into(),
        got: largest.to_string(),
        delta: Some(largest),
        tolerance: "exact".into(),
        verdict,
    });
    result.notes.push(
        "a rerun difference needs no golden: run 1 minus run 2 was compared with exact zero".into(),
    );
    result.verdict = verdict;
}

/// The expectation's array as f64, when it has one of the output's size.
pub(super) fn load_array(
    e: &Expectation,
    obs: &Observation,
    store: &GoldenStore,
    notes: &mut Vec<String>,
) -> Option<Vec<f64>> {
    let rel = e.array.as_ref()?;
    match store.read_array(rel) {
        Ok((values, _)) if values.len() == obs.values.len() => Some(values),
        Ok((values, _)) => {
            notes.push(format!(
                "golden array {rel} holds {} values, the output {}",
                values.len(),
                obs.values.len()
            ));
            None
        }
        Err(e) => {
            notes.push(e.to_string());
            None
        }
    }
}

/// Every metric of the scenario against the expectation, with the scenario's own tolerances.
pub(super) fn same_class(
    result: &mut ScenarioResult,
    scenario: &Scenario,
    e: &Expectation,
    obs: &Observation,
    expected: Option<&[f64]>,
) {
    let identical = e.sha256.as_deref() == Some(obs.sha256.as_str());
    if !identical {
        if let Some(g) = expected {
            if let Some(i) = metrics::first_difference(&obs.values, g) {
                result.notes.push(format!(
                    "first differing element at {:?}: got {} expected {}",
                    metrics::unravel(i, &obs.shape),
                    obs.values[i],
                    g[i]
                ));
            }
        }
    }
    for &metric in &scenario.metrics {
        let check = check_metric(metric, scenario, obs, e, expected, identical);
        if metric == Metric::LInf && check.verdict > Verdict::Identical {
            if let Some(g) = expected {
                result.notes.push(largest_difference(obs, g));
            }
        }
        result.checks.push(check);
    }
    result.verdict = worst(&result.checks);
}

/// What the cross-class rule measures with: the golden's truth record, its values and the
/// expectation's array; else `None`, with a note saying which is missing.
fn truth_inputs<'a>(
    result: &mut ScenarioResult,
    golden: &'a GoldenScenario,
    obs: &Observation,
    expected: Option<&'a [f64]>,
    truth_values: Option<&'a std::result::Result<Vec<f64>, String>>,
) -> Option<(&'a crate::harness::store::Truth, &'a [f64], &'a [f64])> {
    let Some(truth) = &golden.truth else {
        result.notes.push(format!(
            "no float64 truth recorded for the cross-class rule: run the oracle \
             (ci/oracle/run.sh --suite {} --filter '^{}$')",
            result.suite,
            regex::escape(&result.scenario)
        ));
        return None;
    };
    let Some(expected) = expected else {
        result
            .notes
            .push("the expectation has no array to measure against the truth".into());
        return None;
    };
    match truth_values.expect("read where the golden has a truth") {
        Ok(v) if v.len() == obs.values.len() => Some((truth, v, expected)),
        Ok(v) => {
            result.notes.push(format!(
                "truth array holds {} values, the output {}",
                v.len(),
                obs.values.len()
            ));
            None
        }
        Err(err) => {
            result.notes.push(err.to_string());
            None
        }
    }
}

/// The cross-class rule against the float64 truth; `rule` is (k, noise_ulps).
pub(super) fn cross_class_truth(
    result: &mut ScenarioResult,
    golden: &GoldenScenario,
    e: &Expectation,
    obs: &Observation,
    expected: Option<&[f64]>,
    truth_values: Option<&std::result::Result<Vec<f64>, String>>,
    (k, noise_ulps): (f64, f64),
) {
    let Some((truth, truth_values, expected)) =
        truth_inputs(result, golden, obs, expected, truth_values)
    else {
        result.verdict = Verdict::Failed;
        return;
    };
    let scale = metrics::rms(truth_values);
    let relative = relative_sensitivity(truth.sensitivity, truth_values);
    if relative > POWERLESS_SENSITIVITY {
        result.verdict = Verdict::NotComparable;
        result.notes.push(format!(
            "not comparable across classes: a 1-ulp change of the initial noise moves the output \
             by rmse {:.3e} ({:.2}% of its RMS {:.3e}; the limit is {}%), so another class's \
             rounding gives another result",
            truth.sensitivity,
            100.0 * relative,
            scale,
            100.0 * POWERLESS_SENSITIVITY
        ));
        return;
    }
    let r_expected = metrics::rmse(truth_values, expected);
    let r_got = metrics::rmse(truth_values, &obs.values);
    let floor = noise_ulps * truth.sensitivity;
    let bound = k * r_expected + floor;
    // A bound or a distance that is not finite compares nothing: a failure, never a pass.
    let verdict = if !(r_got.is_finite() && bound.is_finite()) {
        result.notes.push(format!(
            "rmse_truth {r_got:e} or its bound {bound:e} is not finite: nothing could be compared"
        ));
        Verdict::Failed
    } else if r_got <= bound {
        Verdict::WithinTolerance
    } else {
        Verdict::Drifted
    };
    result.checks.push(MetricCheck {
        metric: "rmse_truth".into(),
        golden: format!("{r_expected:.4e}"),
        got: format!("{r_got:.4e}"),
        delta: Some(r_got - r_expected),
        tolerance: format!(
            "<= {k} * {r_expected:.3e} + {noise_ulps} * {:.3e} = {bound:.3e}",
            truth.sensitivity
        ),
        verdict,
    });
    let (d, _) = metrics::l_inf(&obs.values, expected);
    result.notes.push(format!(
        "compared with class {} by the float64 truth: rmse(truth, got) {r_got:.3e}, \
         rmse(truth, expectation) {r_expected:.3e}; l_inf to that expectation {d:e}",
        e.class
    ));
    result.verdict = verdict;
}
