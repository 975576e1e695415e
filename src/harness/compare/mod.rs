//! Comparing an observation with its golden: which expectation, per-metric checks and a
//! scenario verdict.
//!
//! The expectation is chosen by the run's environment class ([`crate::env::class`]), in one
//! place ([`choose`]), before the run (to skip what cannot be judged here) and after it:
//! 1. the expectation of the same class made by the oracle (diffusers / PyTorch), compared with
//!    the scenario's own tolerances (bit for bit in every suite here);
//! 2. else a published expectation (class `any`), with the same tolerances: a publication stays
//!    the authority for its scenario;
//! 3. else the nearest recorded class ([`EnvClass::nearest`]) the scenario's `cross_class` rule
//!    can use, judged by that rule. A rerun difference (run 1 minus run 2) is compared exactly
//!    on every class. A scenario the suite marks `own_class_only` is never judged across
//!    classes; one whose sensitivity makes the truth rule powerless without that mark is
//!    "not comparable", a failure: nothing passes unlooked at.
//!
//! An expectation `reprodiff bless` wrote for the run's class is an extra exact check beside
//! the authority, never a replacement for it.
//!
//! Here: choosing and comparing; `result.rs` the verdict and the result's rows, `metric.rs` one
//! suite metric's check, `steps.rs` the per-step rule across classes.
use crate::env::EnvClass;
use crate::harness::run::observe::Observation;
use crate::harness::store::{Expectation, GoldenScenario, GoldenStore};
use crate::harness::suite::{CrossClass, Scenario};
use crate::metrics::{self, Metric};

pub mod local;
mod metric;
mod result;
mod steps;

use metric::{check_metric, largest_difference, worst};
pub use result::*;
pub use steps::{comparable_steps, step_limit, StepReading};
use steps::{step_reading, step_rule};

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

/// The producer of the expectations `reprodiff bless` writes.
pub const BLESSED: &str = "reprodiff";

/// Why a run of some class has no expectation to be judged by.
#[derive(Debug, Clone, PartialEq)]
pub enum NoAuthority {
    /// The suite checks the scenario on its own class only (its reason), and this class has no
    /// expectation.
    OwnClassOnly(String),
    /// No expectation the scenario's cross-class rule can use (or it has no rule): why.
    NoExpectation(String),
}

/// The expectations a run of one class is compared with.
#[derive(Debug)]
pub struct Choice<'a> {
    /// What diffusers (or a publication) says: this class's oracle expectation, else a
    /// published one, else the nearest recorded class the scenario's cross-class rule can use.
    pub authority: std::result::Result<(&'a Expectation, Match), NoAuthority>,
    /// This class's own expectation made by `reprodiff bless` where the authority is another:
    /// an extra exact check, never a replacement for the comparison with diffusers.
    pub blessed: Option<&'a Expectation>,
}

/// Chooses what a run of `class` is compared with (see the module docs). One place, used both
/// before a scenario runs (`harness::session::plan`) and after (`compare`).
pub fn choose<'a>(golden: &'a GoldenScenario, class: &EnvClass, scenario: &Scenario) -> Choice<'a> {
    let is_blessed = |e: &Expectation| e.provenance.producer == BLESSED;
    let own = golden.expectation(class);
    let authorities: Vec<&EnvClass> = golden
        .expectations
        .iter()
        .filter(|e| !is_blessed(e))
        .map(|e| &e.class)
        .collect();
    if authorities.is_empty() {
        // Only reprodiff's own expectations (kernels with no diffusers counterpart).
        return Choice {
            authority: own.map(|e| (e, Match::SameClass)).ok_or_else(|| {
                NoAuthority::NoExpectation(format!(
                    "the golden holds only expectations reprodiff blessed, none for this host's \
                     class {class}"
                ))
            }),
            blessed: None,
        };
    }
    let blessed = own.filter(|e| is_blessed(e));
    let pick = |authority| Choice { authority, blessed };
    if let Some(e) = own.filter(|e| !is_blessed(e)) {
        return pick(Ok((e, Match::SameClass)));
    }
    if let Some(e) = golden.expectation(&EnvClass::Any) {
        return pick(Ok((e, Match::Published)));
    }
    let nearest = |usable: Vec<&EnvClass>| {
        class
            .nearest(usable)
            .and_then(|c| golden.expectation(c))
            .map(|e| (e, Match::NearestClass))
    };
    if scenario.run.is_rerun_difference() {
        return pick(Ok(nearest(authorities).expect("authorities is not empty")));
    }
    if let Some(reason) = &scenario.own_class_only {
        return pick(Err(NoAuthority::OwnClassOnly(reason.clone())));
    }
    let found = match scenario.cross_class {
        None => {
            return pick(Err(NoAuthority::NoExpectation(format!(
                "no expectation for this host's class {class} and no cross_class rule in the \
                 suite: record this class with the oracle (ci/oracle/run.sh) on such a host"
            ))))
        }
        Some(CrossClass::Bits) => nearest(
            authorities
                .into_iter()
                .filter(|c| class.shares(c, crate::env::BITS_DEPEND_ON))
                .collect(),
        ),
        Some(CrossClass::Truth { .. }) => nearest(authorities),
    };
    pick(found.ok_or_else(|| {
        NoAuthority::NoExpectation(format!(
            "the suite's bits rule compares only with a class of the same {}, and none was \
             recorded for this host's class {class}: record it with the oracle (ci/oracle/run.sh, \
             which any host can run under ATEN_CPU_CAPABILITY=...)",
            crate::env::BITS_DEPEND_ON.join(", ")
        ))
    }))
}

/// The extra exact check against this class's blessed expectation.
fn blessed_check(result: &mut ScenarioResult, own: &Expectation, obs: &Observation) {
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

/// Compares `obs` with the expectation `golden` holds for its class (see the module docs).
pub fn compare(
    suite: &str,
    scenario: &Scenario,
    obs: &Observation,
    golden: Option<&GoldenScenario>,
    store: &GoldenStore,
) -> ScenarioResult {
    let class = obs.environment.class(scenario.device);
    let mut result = ScenarioResult {
        suite: suite.into(),
        scenario: scenario.name.clone(),
        verdict: Verdict::Identical,
        class: Some(class.to_string()),
        compared_with: None,
        checks: Vec::new(),
        notes: Vec::new(),
        output: Some(OutputSummary::of(obs)),
    };
    let Some(golden) = golden.filter(|g| !g.expectations.is_empty()) else {
        if scenario.run.is_rerun_difference() {
            rerun_is_zero(&mut result, obs);
            return result;
        }
        result.verdict = Verdict::NoGolden;
        result.notes.push(bless_hint(suite, &scenario.name));
        return result;
    };
    // A dtype knob (`bf16`, ...) makes another dtype on purpose: compared by value.
    let dtype_knob = obs.environment.knobs.iter().any(|k| {
        matches!(
            crate::torch::knobs::Knob::parse(k),
            Ok(crate::torch::knobs::Knob::Dtype(_))
        )
    });
    if golden.dtype != obs.dtype && dtype_knob && golden.shape == obs.shape {
        result.notes.push(format!(
            "computed in {} by a knob: compared by value with the {} expectation",
            obs.dtype, golden.dtype
        ));
    } else if golden.shape != obs.shape || golden.dtype != obs.dtype {
        result.verdict = Verdict::Failed;
        result.notes.push(format!(
            "output is {} {:?}, the golden {} {:?}",
            obs.dtype, obs.shape, golden.dtype, golden.shape
        ));
        return result;
    }
    let choice = choose(golden, &class, scenario);
    let (expectation, how) = match choice.authority {
        Ok(found) => found,
        Err(NoAuthority::OwnClassOnly(reason)) => {
            result.verdict = Verdict::NotComparable;
            result.notes.push(format!(
                "checked only on its own class ({reason}), and this host's class {class} has no \
                 expectation: nothing here can judge it"
            ));
            return result;
        }
        Err(NoAuthority::NoExpectation(reason)) => {
            result.verdict = Verdict::NoExpectation;
            result.notes.push(reason);
            return result;
        }
    };
    result.compared_with = Some(ComparedWith {
        class: expectation.class.to_string(),
        how,
        producer: expectation.provenance.producer.clone(),
    });
    if !obs.finite {
        result.notes.push("output holds NaN or Inf".into());
    }
    if let (Some(want), Some(got)) = (&golden.model_sha256, &obs.model_sha256) {
        if want != got {
            result.notes.push(format!(
                "the model differs from the golden's (sha256 {} here, {} in the golden): the \
                 weights or configs changed since the expectations were made",
                &got[..12.min(got.len())],
                &want[..12.min(want.len())]
            ));
        }
    }
    if let (Match::NearestClass, EnvClass::Host(here), EnvClass::Host(there)) =
        (how, &class, &expectation.class)
    {
        if here.libtorch != there.libtorch {
            result.notes.push(format!(
                "cross-version: the expectation was recorded on libtorch {}, this run is on {}",
                there.libtorch, here.libtorch
            ));
        }
    }
    // The float64 truth, read once: for the cross-class rule and the output's rmse_truth.
    let truth_values = golden.truth.as_ref().map(|t| {
        store
            .read_array(&t.array)
            .map(|(v, _)| v)
            .map_err(|e| e.to_string())
    });
    // The run's trace against the per-step truth, where the golden has one: for the step rule
    // and the output's truth_step_ulps (what `reprodiff calibrate` reads).
    let steps = golden
        .truth
        .as_ref()
        .and_then(|t| t.steps.as_ref())
        .filter(|_| !scenario.run.is_rerun_difference())
        .and_then(|st| match obs.trace {
            Some(_) => Some(step_reading(st, obs, store)),
            // An output without its run (`golden compare` of the oracle's results): the
            // output's rule alone.
            None => {
                result.notes.push(
                    "the output comes without its per-step trace: the step rule was not applied"
                        .into(),
                );
                None
            }
        });
    if let (Some(Ok(reading)), Some(out)) = (&steps, result.output.as_mut()) {
        if let Some(worst) = reading.worst() {
            out.metrics.insert("truth_step_ulps".into(), worst);
        }
    }
    // The expectation's array is read only where it is compared: across classes always, within
    // a class when the bits differ or a metric needs it.
    let exact = |result: &mut ScenarioResult| {
        let identical = expectation.sha256.as_deref() == Some(obs.sha256.as_str());
        let expected = (!identical || scenario.metrics.iter().any(|m| m.needs_array()))
            .then(|| load_array(expectation, obs, store, &mut result.notes))
            .flatten();
        same_class(result, scenario, expectation, obs, expected.as_deref());
    };
    match (how, scenario.cross_class) {
        // Run 1 minus run 2 is zero on every host, or the claim fails: never a tolerance.
        (Match::NearestClass, _) if scenario.run.is_rerun_difference() => {
            result.notes.push(
                "a rerun difference is exactly zero on every class: compared exactly with that \
                 class's expectation"
                    .into(),
            );
            exact(&mut result);
        }
        // The same bits as another class's expectation: identical, whatever the rule (a
        // release or CPU that changed nothing for this scenario is worth saying so).
        (Match::NearestClass, Some(CrossClass::Truth { .. }))
            if expectation.sha256.as_deref() == Some(obs.sha256.as_str()) =>
        {
            result.verdict = Verdict::Identical;
            result.notes.push(
                "bit-identical to that class's expectation (the cross-class rule was not needed)"
                    .into(),
            );
        }
        (
            Match::NearestClass,
            Some(CrossClass::Truth {
                k,
                noise_ulps,
                step_ulps,
                local_ulps,
            }),
        ) => {
            let expected = load_array(expectation, obs, store, &mut result.notes);
            cross_class_truth(
                &mut result,
                golden,
                expectation,
                obs,
                expected.as_deref(),
                truth_values.as_ref(),
                (k, noise_ulps),
            );
            match (&steps, step_ulps.get(obs.dtype)) {
                (Some(Ok(reading)), Some(bound)) => step_rule(&mut result, reading, bound),
                (Some(Err(why)), _) => {
                    result.verdict = Verdict::Failed;
                    result
                        .notes
                        .push(format!("the per-step truth cannot be read: {why}"));
                }
                (Some(Ok(_)), None) if result.verdict == Verdict::NotComparable => {
                    result.notes.push(format!(
                        "the suite sets no step_ulps for {}: the per-step truth was not used",
                        obs.dtype
                    ));
                }
                _ => {}
            }
            judge_locally(
                &mut result,
                golden,
                &class,
                obs,
                store,
                truth_values.as_ref(),
                (k, local_ulps.get(obs.dtype)),
            );
        }
        _ => exact(&mut result),
    }
    if let Some(own) = choice.blessed {
        blessed_check(&mut result, own, obs);
    }
    // reprodiff agreeing with its own blessing is no comparison with diffusers.
    if expectation.provenance.producer == BLESSED && result.verdict.passed() {
        result.verdict = Verdict::BlessedOnly;
        result.notes.push(format!(
            "matches its own blessing; no diffusers expectation: record one with the oracle \
             (ci/oracle/run.sh --suite {suite} --filter '^{}$')",
            regex::escape(&scenario.name)
        ));
    }
    if !obs.finite {
        result.verdict = Verdict::Failed;
    }
    // How far the output is from the float64 truth, whatever it was judged by: the drift a
    // knob or another class costs (the optimisation audit).
    if let (Some(Ok(t)), Some(out)) = (&truth_values, result.output.as_mut()) {
        if t.len() == obs.values.len() {
            out.metrics
                .insert("rmse_truth".into(), metrics::rmse(t, &obs.values));
        }
    }
    result
}

/// The local rule where the run made its local pass (`session::local_inputs` asks for it where
/// the golden holds what it needs). A local pass that cannot be judged (no `local_ulps` for the
/// dtype, unreadable arrays) fails: it was made because the global rules could not see.
fn judge_locally(
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
fn rerun_is_zero(result: &mut ScenarioResult, obs: &Observation) {
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
fn load_array(
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
fn same_class(
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

/// The cross-class rule against the float64 truth; `rule` is (k, noise_ulps).
fn cross_class_truth(
    result: &mut ScenarioResult,
    golden: &GoldenScenario,
    e: &Expectation,
    obs: &Observation,
    expected: Option<&[f64]>,
    truth_values: Option<&std::result::Result<Vec<f64>, String>>,
    (k, noise_ulps): (f64, f64),
) {
    let Some(truth) = &golden.truth else {
        result.verdict = Verdict::Failed;
        result.notes.push(format!(
            "no float64 truth recorded for the cross-class rule: run the oracle \
             (ci/oracle/run.sh --suite {} --filter '^{}$')",
            result.suite,
            regex::escape(&result.scenario)
        ));
        return;
    };
    let Some(expected) = expected else {
        result.verdict = Verdict::Failed;
        result
            .notes
            .push("the expectation has no array to measure against the truth".into());
        return;
    };
    let truth_values = match truth_values.expect("read where the golden has a truth") {
        Ok(v) if v.len() == obs.values.len() => v,
        Ok(v) => {
            result.verdict = Verdict::Failed;
            result.notes.push(format!(
                "truth array holds {} values, the output {}",
                v.len(),
                obs.values.len()
            ));
            return;
        }
        Err(err) => {
            result.verdict = Verdict::Failed;
            result.notes.push(err.to_string());
            return;
        }
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

#[cfg(test)]
mod tests;
