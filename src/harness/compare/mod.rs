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
//! Here: [`compare`], step by step. `choose.rs` picks the expectation, `judge.rs` holds the
//! judgements, `result.rs` the verdict and the result's rows, `metric.rs` one suite metric's
//! check, `steps.rs` the per-step rule across classes, `local.rs` the local rule.
use crate::env::EnvClass;
use crate::harness::run::observe::Observation;
use crate::harness::store::{Expectation, GoldenScenario, GoldenStore};
use crate::harness::suite::{CrossClass, Scenario};
use crate::metrics;

mod choose;
mod judge;
pub mod local;
mod metric;
mod result;
mod steps;

pub use choose::{choose, Choice, NoAuthority, BLESSED};
pub use judge::{relative_sensitivity, POWERLESS_SENSITIVITY};
pub use result::*;
pub use steps::{comparable_steps, step_limit, StepReading};

use judge::{
    blessed_check, cross_class_truth, judge_locally, load_array, rerun_is_zero, same_class,
};
use steps::{step_reading, step_rule};

/// A scenario's run and the golden it is compared with.
struct Case<'a> {
    suite: &'a str,
    scenario: &'a Scenario,
    obs: &'a Observation,
    golden: &'a GoldenScenario,
    store: &'a GoldenStore,
    class: EnvClass,
}

/// [`CrossClass::Truth`]'s parameters.
struct TruthRule {
    k: f64,
    noise_ulps: f64,
    step_ulps: crate::harness::suite::PerDtype,
    local_ulps: crate::harness::suite::PerDtype,
}

/// The float64 truth's values, or why they cannot be read.
type Truth = std::result::Result<Vec<f64>, String>;
/// The run's trace against the per-step truth, or why it cannot be read.
type Steps = std::result::Result<StepReading, String>;

/// Compares `obs` with the expectation `golden` holds for its class (see the module docs), in
/// steps: no golden; the output's shape and dtype; the expectation chosen; notes on what
/// differs around the run; the float64 truth and the run's per-step reading; the judgement by
/// match and rule; the blessed check and the last word on the verdict.
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
        without_golden(&mut result, scenario, obs);
        return result;
    };
    if !same_kind_of_output(&mut result, golden, obs) {
        return result;
    }
    let case = Case {
        suite,
        scenario,
        obs,
        golden,
        store,
        class,
    };
    let choice = choose(golden, &case.class, scenario);
    let Some((expectation, how)) = authority(&mut result, choice.authority, &case.class) else {
        return result;
    };
    result.compared_with = Some(ComparedWith {
        class: expectation.class.to_string(),
        how,
        producer: expectation.provenance.producer.clone(),
    });
    note_surroundings(&mut result, &case, expectation, how);
    // The float64 truth, read once: for the cross-class rule and the output's rmse_truth.
    let truth = golden.truth.as_ref().map(|t| {
        store
            .read_array(&t.array)
            .map(|(v, _)| v)
            .map_err(|e| e.to_string())
    });
    let steps = read_steps(&mut result, &case);
    judge(
        &mut result,
        &case,
        (expectation, how),
        truth.as_ref(),
        steps.as_ref(),
    );
    finish(
        &mut result,
        &case,
        (expectation, choice.blessed),
        truth.as_ref(),
    );
    result
}

/// No golden: a rerun difference is compared with zero; anything else has no golden.
fn without_golden(result: &mut ScenarioResult, scenario: &Scenario, obs: &Observation) {
    if scenario.run.is_rerun_difference() {
        rerun_is_zero(result, obs);
    } else {
        result.verdict = Verdict::NoGolden;
        result.notes.push(bless_hint(&result.suite, &scenario.name));
    }
}

/// Whether the output has the golden's shape and dtype (a dtype knob, `bf16`, ..., makes
/// another dtype on purpose: compared by value); else the result fails.
fn same_kind_of_output(
    result: &mut ScenarioResult,
    golden: &GoldenScenario,
    obs: &Observation,
) -> bool {
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
        return false;
    }
    true
}

/// The chosen authority, or the verdict and note for its absence.
fn authority<'a>(
    result: &mut ScenarioResult,
    authority: std::result::Result<(&'a Expectation, Match), NoAuthority>,
    class: &EnvClass,
) -> Option<(&'a Expectation, Match)> {
    match authority {
        Ok(found) => Some(found),
        Err(NoAuthority::OwnClassOnly(reason)) => {
            result.verdict = Verdict::NotComparable;
            result.notes.push(format!(
                "checked only on its own class ({reason}), and this host's class {class} has no \
                 expectation: nothing here can judge it"
            ));
            None
        }
        Err(NoAuthority::NoExpectation(reason)) => {
            result.verdict = Verdict::NoExpectation;
            result.notes.push(reason);
            None
        }
    }
}

/// Notes on what differs around the run: a non-finite output, other weights, another libtorch.
fn note_surroundings(
    result: &mut ScenarioResult,
    case: &Case,
    expectation: &Expectation,
    how: Match,
) {
    let (golden, obs) = (case.golden, case.obs);
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
        (how, &case.class, &expectation.class)
    {
        if here.libtorch != there.libtorch {
            result.notes.push(format!(
                "cross-version: the expectation was recorded on libtorch {}, this run is on {}",
                there.libtorch, here.libtorch
            ));
        }
    }
}

/// The run's trace against the per-step truth, where the golden has one: for the step rule
/// and the output's truth_step_ulps (what `reprodiff calibrate` reads).
fn read_steps(result: &mut ScenarioResult, case: &Case) -> Option<Steps> {
    let steps = case
        .golden
        .truth
        .as_ref()
        .and_then(|t| t.steps.as_ref())
        .filter(|_| !case.scenario.run.is_rerun_difference())
        .and_then(|st| match case.obs.trace {
            Some(_) => Some(step_reading(st, case.obs, case.store)),
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
    steps
}

/// The judgement by how the expectation matched and the scenario's cross-class rule.
fn judge(
    result: &mut ScenarioResult,
    case: &Case,
    (expectation, how): (&Expectation, Match),
    truth: Option<&Truth>,
    steps: Option<&Steps>,
) {
    let (scenario, obs, store) = (case.scenario, case.obs, case.store);
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
            exact(result);
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
            let rule = TruthRule {
                k,
                noise_ulps,
                step_ulps,
                local_ulps,
            };
            by_truth(result, case, expectation, rule, (truth, steps));
        }
        _ => exact(result),
    }
}

/// The cross-class rule against the float64 truth: the output's rule, the per-step rule where
/// the suite sets a bound for the dtype, and the local rule where the run made its local pass.
fn by_truth(
    result: &mut ScenarioResult,
    case: &Case,
    expectation: &Expectation,
    rule: TruthRule,
    (truth, steps): (Option<&Truth>, Option<&Steps>),
) {
    let TruthRule {
        k,
        noise_ulps,
        step_ulps,
        local_ulps,
    } = rule;
    let (golden, obs, store) = (case.golden, case.obs, case.store);
    let expected = load_array(expectation, obs, store, &mut result.notes);
    cross_class_truth(
        result,
        golden,
        expectation,
        obs,
        expected.as_deref(),
        truth,
        (k, noise_ulps),
    );
    match (steps, step_ulps.get(obs.dtype)) {
        (Some(Ok(reading)), Some(bound)) => step_rule(result, reading, bound),
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
    let local = (k, local_ulps.get(obs.dtype));
    judge_locally(result, golden, &case.class, obs, store, truth, local);
}

/// The blessed check, reprodiff's agreement with itself named as such, a non-finite output
/// failed, and the output's distance to the float64 truth whatever judged it.
fn finish(
    result: &mut ScenarioResult,
    case: &Case,
    (expectation, blessed): (&Expectation, Option<&Expectation>),
    truth: Option<&Truth>,
) {
    let obs = case.obs;
    if let Some(own) = blessed {
        blessed_check(result, own, obs);
    }
    // reprodiff agreeing with its own blessing is no comparison with diffusers.
    if expectation.provenance.producer == BLESSED && result.verdict.passed() {
        result.verdict = Verdict::BlessedOnly;
        result.notes.push(format!(
            "matches its own blessing; no diffusers expectation: record one with the oracle \
             (ci/oracle/run.sh --suite {} --filter '^{}$')",
            case.suite,
            regex::escape(&case.scenario.name)
        ));
    }
    if !obs.finite {
        result.verdict = Verdict::Failed;
    }
    // How far the output is from the float64 truth, whatever it was judged by: the drift a
    // knob or another class costs (the optimisation audit).
    if let (Some(Ok(t)), Some(out)) = (truth, result.output.as_mut()) {
        if t.len() == obs.values.len() {
            out.metrics
                .insert("rmse_truth".into(), metrics::rmse(t, &obs.values));
        }
    }
}

#[cfg(test)]
mod tests;
