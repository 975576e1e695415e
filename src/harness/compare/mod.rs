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
use crate::env::EnvClass;
use crate::harness::run::observe::{NotObserved, Observation};
use crate::harness::store::{Expectation, GoldenScenario, GoldenStore};
use crate::harness::suite::{CrossClass, Scenario, Tolerance};
use crate::metrics::{self, Metric};
use serde::{Deserialize, Serialize};
use std::fmt;

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

/// Ordered from best to worst; a scenario's verdict is the worst of its metrics'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Bit-identical to the expectation (or the metric's value is exactly the expectation's).
    Identical,
    /// Different, inside the scenario's tolerance (or its cross-class tolerance).
    WithinTolerance,
    /// Not run, for a reason found before running it (no CUDA, no weights, the CPU lacks a
    /// capability, a scenario checked only on its own class on another class). Neither a pass
    /// nor a failure: a skip, said with its reason. A scenario that turns out not to run only
    /// once started is `Failed`.
    NotRun,
    /// Only another class's expectation, and the scenario too sensitive for any tolerance to
    /// mean something there: nothing could be compared. A failure; a suite that knows it marks
    /// the scenario `own_class_only`, with the measured reason, and it is skipped instead.
    NotComparable,
    /// This host's class has no expectation the scenario's cross-class rule can use. A failure
    /// in CI; elsewhere a skip, decided before running.
    NoExpectation,
    /// Outside the tolerance.
    Drifted,
    /// No golden to compare with: bless or run the oracle.
    NoGolden,
    /// The run failed, or its output cannot be compared (shape, dtype, NaN).
    Failed,
}

impl Verdict {
    /// Whether this verdict fails a check run (`ci`: running in CI, where a host without an
    /// expectation means the goldens do not cover the machines the project is tested on).
    pub fn fails(self, ci: bool) -> bool {
        match self {
            Verdict::Identical | Verdict::WithinTolerance | Verdict::NotRun => false,
            Verdict::NoExpectation => ci,
            Verdict::NotComparable | Verdict::Drifted | Verdict::NoGolden | Verdict::Failed => true,
        }
    }

    /// Compared and found good: identical or within tolerance.
    pub fn passed(self) -> bool {
        matches!(self, Verdict::Identical | Verdict::WithinTolerance)
    }

    /// Every verdict, best first.
    pub const ALL: [Verdict; 8] = [
        Verdict::Identical,
        Verdict::WithinTolerance,
        Verdict::NotComparable,
        Verdict::NotRun,
        Verdict::NoExpectation,
        Verdict::Drifted,
        Verdict::NoGolden,
        Verdict::Failed,
    ];

    /// The name records and reports use ("within-tolerance"): serde's name of the variant.
    pub fn key(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .expect("a verdict serialises as its name")
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::WithinTolerance => "within tolerance",
            Verdict::NotRun => "not run",
            Verdict::NotComparable => "not comparable",
            Verdict::NoExpectation => "no expectation",
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

/// Whether this process runs in CI (the `CI` variable set, as CI services do).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// One row of the check table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    /// A suite metric's name, or "rmse_truth" for the cross-class rule.
    pub metric: String,
    /// Expected value (for bits: the SHA-256; for comparative metrics: the ideal value).
    pub golden: String,
    pub got: String,
    pub delta: Option<f64>,
    pub tolerance: String,
    pub verdict: Verdict,
}

/// How the expectation was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Match {
    /// The run's own class.
    SameClass,
    /// A published value (class `any`).
    Published,
    /// The nearest recorded class, under the scenario's cross-class rule.
    NearestClass,
}

/// The expectation a run was compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedWith {
    pub class: String,
    #[serde(rename = "match")]
    pub how: Match,
    pub producer: String,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub suite: String,
    pub scenario: String,
    pub verdict: Verdict,
    /// The environment class the scenario ran in.
    pub class: Option<String>,
    pub compared_with: Option<ComparedWith>,
    pub checks: Vec<MetricCheck>,
    /// Why it failed or was not run, where the worst element is, how to fix a missing golden.
    pub notes: Vec<String>,
    pub output: Option<OutputSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSummary {
    pub shape: Vec<i64>,
    pub dtype: String,
    pub sha256: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub unseeded_seed: Option<u64>,
    pub elapsed_s: f64,
    /// The per-step trace of a pipeline scenario: where two runs part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<crate::pipelines::StepTrace>>,
}

impl OutputSummary {
    pub fn of(obs: &Observation) -> Self {
        OutputSummary {
            shape: obs.shape.clone(),
            dtype: obs.dtype.to_string(),
            sha256: obs.sha256.clone(),
            metrics: obs.metrics.clone(),
            unseeded_seed: obs.unseeded_seed,
            elapsed_s: obs.elapsed_s,
            // Records keep each step's sum_abs and sample, not the truth's elements.
            trace: obs.trace.as_ref().map(|t| {
                t.iter()
                    .map(|s| crate::pipelines::StepTrace {
                        subset: Vec::new(),
                        ..s.clone()
                    })
                    .collect()
            }),
        }
    }
}

impl ScenarioResult {
    /// A run compared with nothing (`reprodiff run --json`): verdict "no golden", the output
    /// described, and `note` saying why.
    pub fn uncompared(suite: &str, scenario: &str, obs: &Observation, note: &str) -> Self {
        ScenarioResult {
            output: Some(OutputSummary::of(obs)),
            ..Self::bare(suite, scenario, Verdict::NoGolden, note.into())
        }
    }

    fn bare(suite: &str, scenario: &str, verdict: Verdict, note: String) -> Self {
        ScenarioResult {
            suite: suite.into(),
            scenario: scenario.into(),
            verdict,
            class: None,
            compared_with: None,
            checks: Vec::new(),
            notes: vec![note],
            output: None,
        }
    }

    /// A scenario skipped before it ran: `verdict` is `NotRun` or `NoExpectation`.
    pub fn skipped(suite: &str, scenario: &str, verdict: Verdict, reason: &str) -> Self {
        Self::bare(suite, scenario, verdict, reason.into())
    }

    /// A scenario that produced no observation. Whatever was found missing only once it ran
    /// is a failure: what a host lacks is decided before running (`session::plan`).
    pub fn not_observed(suite: &str, scenario: &str, why: &NotObserved) -> Self {
        match why {
            NotObserved::NotRun(reason) => Self::bare(
                suite,
                scenario,
                Verdict::Failed,
                format!(
                    "could not run, although nothing was found missing before it started: \
                     {reason}"
                ),
            ),
            NotObserved::Failed(e) => Self::bare(suite, scenario, Verdict::Failed, e.to_string()),
        }
    }

    /// The row that decided the verdict: the first check with the scenario's verdict.
    pub fn worst_check(&self) -> Option<&MetricCheck> {
        self.checks.iter().find(|c| c.verdict == self.verdict)
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
        }
        _ => exact(&mut result),
    }
    if let Some(own) = choice.blessed {
        blessed_check(&mut result, own, obs);
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
    let verdict = if r_got <= bound {
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

/// A run's trace held against the per-step truth: per step, how far the run is from the
/// truth in units of that step's noise response, as far as the trajectory is comparable.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReading {
    /// Denoising steps in the run.
    pub steps: usize,
    /// Per comparable step (the first `ratios.len()` steps, those whose noise response is at
    /// most [`step_limit`] of the truth's RMS there): rmse(truth, run) / response.
    pub ratios: Vec<f64>,
    /// The step limit of the run's dtype ([`step_limit`]).
    pub limit: f64,
}

impl StepReading {
    /// The largest ratio over the comparable steps.
    pub fn worst(&self) -> Option<f64> {
        self.ratios.iter().copied().reduce(f64::max)
    }
}

/// The most a step's noise response may be, relative to the truth's RMS there, for the step to
/// be comparable across classes, in a run of `dtype`. For float32 it is the output's limit,
/// [`POWERLESS_SENSITIVITY`]: rounding amplified some 8,400 times (1e-3 / 2^-23). A run in
/// f16 or bf16 starts from a noise response of about its own epsilon (2^-10, 2^-7), so the same
/// amplification of its own rounding is allowed, up to [`STEP_CHAOS_CAP`]: beyond a tenth of
/// the latent, one ulp has become another trajectory whatever the precision.
pub fn step_limit(dtype: crate::torch::DType) -> f64 {
    use crate::torch::DType;
    let eps = |d: DType| match d {
        DType::F32 => f64::from(f32::EPSILON),
        DType::F16 => 2f64.powi(-10),
        DType::Bf16 => 2f64.powi(-7),
        DType::F64 => f64::EPSILON,
    };
    (POWERLESS_SENSITIVITY * eps(dtype) / eps(DType::F32)).min(STEP_CHAOS_CAP)
}

/// The largest relative noise response any step may have and still be compared ([`step_limit`]).
pub const STEP_CHAOS_CAP: f64 = 0.1;

/// How many steps, from the first, a per-step truth (`truth`: [steps, elements], flat) keeps
/// comparable across classes for a run of `dtype`: those whose noise response is at most
/// [`step_limit`] of the truth's RMS at that step. After the first that is not, the trajectory
/// is chaotic.
pub fn comparable_steps(
    truth: &[f64],
    noise_response: &[f64],
    dtype: crate::torch::DType,
) -> usize {
    let per = truth.len() / noise_response.len().max(1);
    let limit = step_limit(dtype);
    noise_response
        .iter()
        .enumerate()
        .take_while(|(i, r)| relative_sensitivity(**r, &truth[i * per..(i + 1) * per]) <= limit)
        .count()
}

/// Reads the golden's per-step truth and holds the run's trace against it.
fn step_reading(
    st: &crate::harness::store::StepTruth,
    obs: &Observation,
    store: &GoldenStore,
) -> std::result::Result<StepReading, String> {
    let trace = obs
        .trace
        .as_ref()
        .ok_or("the run recorded no per-step trace")?;
    let (values, shape) = store.read_array(&st.array).map_err(|e| e.to_string())?;
    let steps = st.noise_response.len();
    if shape.len() != 2 || shape[0] as usize != steps || trace.len() != steps {
        return Err(format!(
            "the per-step truth {} is {shape:?} for {steps} noise responses; the run made {} steps",
            st.array,
            trace.len()
        ));
    }
    let per = shape[1] as usize;
    let comparable = comparable_steps(&values, &st.noise_response, obs.dtype);
    let mut ratios = Vec::new();
    for (i, (step, response)) in trace.iter().zip(&st.noise_response).enumerate() {
        if step.subset.len() != per {
            return Err(format!(
                "step {}: the run's trace holds {} of the truth's {per} elements",
                i + 1,
                step.subset.len()
            ));
        }
        if i >= comparable {
            continue;
        }
        let r = metrics::rmse(&values[i * per..(i + 1) * per], &step.subset);
        ratios.push(if *response > 0.0 {
            r / response
        } else if r == 0.0 {
            0.0
        } else {
            f64::INFINITY
        });
    }
    Ok(StepReading {
        steps,
        ratios,
        limit: step_limit(obs.dtype),
    })
}

/// The cross-class step rule: every comparable step within `bound` noise responses of the
/// truth. Where the output itself is not comparable, this is the verdict ("within tolerance
/// through step 31 of 50; chaotic after"); else the worse of the two.
fn step_rule(result: &mut ScenarioResult, reading: &StepReading, bound: f64) {
    let (n, m) = (reading.ratios.len(), reading.steps);
    let output_chaotic = result.verdict == Verdict::NotComparable;
    if n == 0 {
        result.notes.push(format!(
            "not one of the {m} steps is comparable across classes: the noise response exceeds \
             {}% of the latent from the first step on",
            100.0 * reading.limit
        ));
        return;
    }
    let beyond = reading.ratios.iter().position(|r| *r > bound);
    let verdict = match beyond {
        Some(_) => Verdict::Drifted,
        None => Verdict::WithinTolerance,
    };
    let worst = reading.worst().expect("n > 0");
    result.checks.push(MetricCheck {
        metric: "rmse_truth_steps".into(),
        golden: "0".into(),
        got: format!("{worst:.3}"),
        delta: Some(worst),
        tolerance: format!("<= {bound} noise responses at steps 1 to {n} of {m}"),
        verdict,
    });
    let chaotic = if n < m {
        format!(
            "; chaotic after, where the noise response exceeds {}% of the latent",
            100.0 * reading.limit
        )
    } else {
        String::new()
    };
    result.notes.push(match beyond {
        Some(i) => format!(
            "beyond the step rule at step {} of {m}: rmse(truth, got) is {:.3} noise responses \
             of that step, the bound {bound}; comparable through step {n}{chaotic}",
            i + 1,
            reading.ratios[i]
        ),
        None => format!(
            "within tolerance through step {n} of {m} by the per-step truth (worst {worst:.3} of \
             {bound} noise responses){chaotic}"
        ),
    });
    result.verdict = if output_chaotic {
        verdict
    } else {
        result.verdict.max(verdict)
    };
}

fn worst(checks: &[MetricCheck]) -> Verdict {
    checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Identical)
}

fn largest_difference(obs: &Observation, g: &[f64]) -> String {
    let (d, at) = metrics::l_inf(&obs.values, g);
    format!(
        "largest difference {d} at {:?}: got {} expected {}",
        metrics::unravel(at, &obs.shape),
        obs.values[at],
        g[at]
    )
}

fn check_metric(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::store::Provenance;
    use crate::harness::suite::Suite;
    use std::path::Path;

    const INTEL: &str =
        "cpu/x86_64/intel/aten=avx512/onednn=avx512_core_amx/mkl=auto/threads=2/libtorch=2.13.0";
    const AMD: &str =
        "cpu/x86_64/amd/aten=avx512/onednn=avx512_core_bf16/mkl=auto/threads=2/libtorch=2.13.0";
    const AMD_DEFAULT: &str =
        "cpu/x86_64/amd/aten=default/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0";

    fn scenario(extra: &str) -> Scenario {
        let text = format!(
            "schema = 1\nname = \"t\"\n[[scenario]]\nname = \"s\"\nmetrics = [\"bits\"]\n\
             run = {{ kind = \"random\", op = \"randn\", shape = [4], generator = {{ type = \
             \"single\", seed = 0 }} }}\n{extra}\n"
        );
        Suite::parse(&text, Path::new("t.toml"))
            .unwrap()
            .scenarios
            .remove(0)
    }

    fn expectation(class: &str, producer: &str) -> Expectation {
        Expectation {
            class: class.parse().unwrap(),
            sha256: Some(format!("{producer}-{class}")),
            metrics: Default::default(),
            array: None,
            provenance: Provenance {
                producer: producer.into(),
                tool: "t".into(),
                command: format!("made by {producer}"),
                environment: None,
            },
        }
    }

    fn golden(expectations: &[(&str, &str)]) -> GoldenScenario {
        GoldenScenario {
            shape: vec![4],
            dtype: crate::torch::DType::F32,
            truth: None,
            expectations: expectations
                .iter()
                .map(|(c, p)| expectation(c, p))
                .collect(),
        }
    }

    fn authority<'a>(c: &Choice<'a>) -> (&'a str, Match) {
        let (e, how) = c.authority.as_ref().expect("an authority");
        (e.provenance.producer.as_str(), *how)
    }

    const TRUTH: &str = "cross_class = { rule = \"truth\", k = 2.0, noise_ulps = 1.0 }";

    #[test]
    fn the_own_oracle_expectation_is_the_authority() {
        let g = golden(&[(INTEL, "oracle"), (AMD, "oracle")]);
        let c = choose(&g, &INTEL.parse().unwrap(), &scenario(TRUTH));
        assert_eq!(authority(&c), ("oracle", Match::SameClass));
        assert!(c.blessed.is_none());
    }

    #[test]
    fn a_blessed_expectation_never_replaces_the_nearest_oracle_class() {
        let g = golden(&[(INTEL, "reprodiff"), (AMD, "oracle")]);
        let c = choose(&g, &INTEL.parse().unwrap(), &scenario(TRUTH));
        let (e, how) = c.authority.as_ref().unwrap();
        assert_eq!(
            (e.class.to_string().as_str(), *how),
            (AMD, Match::NearestClass)
        );
        assert_eq!(c.blessed.unwrap().class.to_string(), INTEL);
    }

    #[test]
    fn a_publication_stays_the_authority_beside_a_blessed_expectation() {
        let g = golden(&[("any", "published"), (INTEL, "reprodiff")]);
        let c = choose(&g, &INTEL.parse().unwrap(), &scenario(""));
        assert_eq!(authority(&c), ("published", Match::Published));
        assert!(c.blessed.is_some());
    }

    #[test]
    fn only_blessed_expectations_are_all_there_is() {
        let g = golden(&[(INTEL, "reprodiff")]);
        let c = choose(&g, &INTEL.parse().unwrap(), &scenario(""));
        assert_eq!(authority(&c), ("reprodiff", Match::SameClass));
        assert!(c.blessed.is_none());
        let c = choose(&g, &AMD.parse().unwrap(), &scenario(TRUTH));
        assert!(matches!(c.authority, Err(NoAuthority::NoExpectation(_))));
    }

    #[test]
    fn own_class_only_and_no_rule_have_no_authority_on_another_class() {
        let g = golden(&[(AMD, "oracle")]);
        let own = scenario(&format!("{TRUTH}\nown_class_only = \"measured\""));
        let c = choose(&g, &INTEL.parse().unwrap(), &own);
        assert_eq!(
            c.authority.unwrap_err(),
            NoAuthority::OwnClassOnly("measured".into())
        );
        let c = choose(&g, &INTEL.parse().unwrap(), &scenario(""));
        assert!(matches!(c.authority, Err(NoAuthority::NoExpectation(_))));
        // On its own class an own-class-only scenario is judged as any other.
        let c = choose(&g, &AMD.parse().unwrap(), &own);
        assert_eq!(authority(&c), ("oracle", Match::SameClass));
    }

    #[test]
    fn the_bits_rule_compares_only_with_the_same_aten_capability() {
        let bits = scenario("cross_class = { rule = \"bits\" }");
        let g = golden(&[(AMD, "oracle"), (AMD_DEFAULT, "oracle")]);
        let intel_default: EnvClass =
            "cpu/x86_64/intel/aten=default/onednn=sse41/mkl=auto/threads=1/libtorch=2.13.0"
                .parse()
                .unwrap();
        let c = choose(&g, &intel_default, &bits);
        let (e, _) = c.authority.unwrap();
        assert_eq!(e.class.to_string(), AMD_DEFAULT);
        let g = golden(&[(AMD, "oracle")]);
        assert!(matches!(
            choose(&g, &intel_default, &bits).authority,
            Err(NoAuthority::NoExpectation(_))
        ));
        assert!(choose(&g, &INTEL.parse().unwrap(), &bits).authority.is_ok());
    }

    #[test]
    fn a_scenario_found_missing_only_at_run_time_fails() {
        let r = ScenarioResult::not_observed("s", "x", &NotObserved::NotRun("gone".into()));
        assert_eq!(r.verdict, Verdict::Failed);
        assert!(r.notes[0].contains("gone"), "{:?}", r.notes);
        assert!(Verdict::NotComparable.fails(false));
        assert!(!Verdict::NotRun.fails(true));
        assert!(Verdict::NoExpectation.fails(true) && !Verdict::NoExpectation.fails(false));
    }

    /// The elements the per-step truth holds depend on the latent's size alone: all of a
    /// small latent, else 256 evenly spaced ones, the first element first.
    #[test]
    fn the_step_truth_elements_are_fixed_by_the_size_alone() {
        use crate::pipelines::trace::{step_subset, STEP_TRUTH_ELEMENTS};
        let small: Vec<f64> = (0..192).map(f64::from).collect();
        assert_eq!(step_subset(&small), small);
        let big: Vec<f64> = (0..4096).map(f64::from).collect();
        let sub = step_subset(&big);
        assert_eq!(sub.len(), STEP_TRUTH_ELEMENTS);
        assert_eq!(&sub[..3], &[0.0, 16.0, 32.0]);
        assert_eq!(sub[255], 4080.0);
    }

    fn reading(ratios: &[f64], steps: usize) -> StepReading {
        StepReading {
            steps,
            ratios: ratios.to_vec(),
            limit: POWERLESS_SENSITIVITY,
        }
    }

    fn chaotic() -> ScenarioResult {
        ScenarioResult::skipped("s", "x", Verdict::NotComparable, "output chaotic")
    }

    /// Where the output is chaotic, the comparable steps decide, and the line says how far it
    /// looked; the first step beyond the bound is named.
    #[test]
    fn the_step_rule_judges_a_chaotic_output_by_its_comparable_steps() {
        let mut r = chaotic();
        step_rule(&mut r, &reading(&[0.5, 1.2, 0.9], 50), 2.0);
        assert_eq!(r.verdict, Verdict::WithinTolerance);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("through step 3 of 50") && n.contains("chaotic after")),
            "{:?}",
            r.notes
        );
        let mut r = chaotic();
        step_rule(&mut r, &reading(&[0.5, 2.5, 9.0], 50), 2.0);
        assert_eq!(r.verdict, Verdict::Drifted);
        assert!(
            r.notes.iter().any(|n| n.contains("at step 2 of 50")),
            "{:?}",
            r.notes
        );
        // No comparable step: the output's "not comparable" stands (a failure).
        let mut r = chaotic();
        step_rule(&mut r, &reading(&[], 50), 2.0);
        assert_eq!(r.verdict, Verdict::NotComparable);
        // A comparable output that drifted stays drifted whatever the steps say.
        let mut r = chaotic();
        r.verdict = Verdict::Drifted;
        step_rule(&mut r, &reading(&[0.1], 1), 2.0);
        assert_eq!(r.verdict, Verdict::Drifted);
    }

    /// A step is comparable while its noise response is at most POWERLESS_SENSITIVITY of the
    /// truth's RMS there; the first that is not ends the comparable steps.
    #[test]
    fn comparable_steps_end_at_the_first_chaotic_step() {
        let truth = vec![1.0; 6]; // 3 steps of 2 elements, RMS 1
        let limit = POWERLESS_SENSITIVITY;
        use crate::torch::DType;
        assert_eq!(
            comparable_steps(&truth, &[0.0, limit, limit * 0.5], DType::F32),
            3
        );
        assert_eq!(
            comparable_steps(&truth, &[0.0, limit * 2.0, 0.0], DType::F32),
            1
        );
        assert_eq!(
            comparable_steps(&truth, &[limit * 2.0, 0.0, 0.0], DType::F32),
            0
        );
        // f16's own rounding is 2^13 times float32's: the same amplification is allowed, up
        // to the cap.
        assert_eq!(step_limit(DType::F32), limit);
        assert_eq!(comparable_steps(&truth, &[0.05, 0.09, 0.2], DType::F16), 2);
        assert_eq!(step_limit(DType::Bf16), STEP_CHAOS_CAP);
    }
}
