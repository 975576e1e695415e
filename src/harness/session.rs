//! `check` and `bless` over a selection of suites and scenarios.
use crate::env::{EnvClass, Fingerprint};
use crate::error::{Error, Result};
use crate::harness::compare::{self, ScenarioResult, Verdict};
use crate::harness::run::local::LocalInputsAt;
use crate::harness::run::observe::{NotObserved, Observation, Runner};
use crate::harness::store::{Expectation, GoldenFile, GoldenScenario, GoldenStore, Provenance};
use crate::harness::suite::{Fixtures, Scenario, Selection, Suite};

/// Why `scenario` will not be run on `host`, decided before it runs, so that a test runner can
/// skip it at list time and `check` can group it by reason: what the host lacks (CUDA, a CPU
/// capability, what a knob needs, a hub model not in the local cache), as `NotRun`; or that
/// nothing recorded can judge the class the run would have (`harness::compare::choose`), as
/// `NotRun` for a scenario checked only on its own class and `NoExpectation` otherwise (a
/// failure in CI). `None`: it runs and is compared. Whatever turns up missing only once a
/// scenario runs is a failure.
pub fn plan(
    suite: &Suite,
    scenario: &Scenario,
    golden_file: Option<&GoldenFile>,
    host: &Fingerprint,
) -> Option<(Verdict, String)> {
    let golden = golden_file.and_then(|g| g.scenarios.get(&scenario.name));
    let not_run = |why: String| Some((Verdict::NotRun, why));
    let knobs = match crate::torch::knobs::Knobs::from_env() {
        Ok(k) => k,
        Err(_) => return None, // the run names the bad variable
    };
    if let Some(why) = knobs.unavailable() {
        return not_run(format!("knobs {}: {why}", knobs.tokens().join("+")));
    }
    let Ok((run, det)) = crate::harness::run::observe::as_run(scenario, &knobs) else {
        return None; // the run names the bad variable
    };
    let device = run.device;
    if let Err(e) = device.ensure_available() {
        return not_run(e.to_string());
    }
    if let Some(want) = det.cpu_capability {
        let missing = want.missing(&host.cpu.isa);
        if host.os.arch == "x86_64" && !missing.is_empty() {
            return not_run(format!(
                "ATen capability '{want}' requested, but this CPU lacks {}",
                missing.join(", ")
            ));
        }
    }
    if let Some(id) = scenario.run.model().and_then(|m| m.strip_prefix("hub:")) {
        if let Err(e) = crate::loading::hub_snapshot(id) {
            return not_run(e.to_string());
        }
    }
    let recorded =
        golden_file.is_some_and(|g| g.scenarios.values().any(|s| !s.expectations.is_empty()));
    if !recorded && !scenario.run.is_rerun_difference() {
        return Some((
            Verdict::NoExpectation,
            format!(
                "no expectation recorded for this suite; record it with ci/oracle/run.sh \
                 --suite {} on a host that has what it needs",
                suite.name
            ),
        ));
    }
    let golden = golden.filter(|g| !g.expectations.is_empty())?;
    let class = run_class(&run, &det, host);
    match compare::choose(golden, &class, scenario).authority {
        Ok(_) => None,
        Err(compare::NoAuthority::OwnClassOnly(reason)) => not_run(format!(
            "checked only on its own class ({reason}); this host's class {class} has none"
        )),
        Err(compare::NoAuthority::NoExpectation(reason)) => Some((Verdict::NoExpectation, reason)),
    }
}

/// The class a run of `run` (a scenario as it runs, [`as_run`]) under `det` on `host` has.
fn run_class(run: &Scenario, det: &crate::torch::Determinism, host: &Fingerprint) -> EnvClass {
    let mut fp = host.clone();
    if let Some(n) = det.threads {
        fp.cpu.threads = n;
    }
    if let Some(want) = det.cpu_capability {
        fp.cpu.capability = want.name().into();
    }
    if run.kernels == crate::portable::Kernels::Portable {
        fp.portable = Some(crate::portable::PortableRun::would_run());
    }
    fp.class(run.device)
}

/// The local pass's inputs where a run of `scenario` on `host` needs them: the run is
/// judged across classes (its class has no diffusers expectation of its own), the global rules
/// cannot see all of it (`global_rules_blind`), the truth holds the local pass's inputs and a
/// recorded class holds diffusers' local figures.
pub fn local_inputs(
    store: &GoldenStore,
    golden: &GoldenScenario,
    scenario: &Scenario,
    host: &Fingerprint,
) -> Result<Option<LocalInputsAt>> {
    let Some(st) = golden.truth.as_ref().and_then(|t| t.steps.as_ref()) else {
        return Ok(None);
    };
    let knobs = crate::torch::knobs::Knobs::from_env()?;
    let (run, det) = crate::harness::run::observe::as_run(scenario, &knobs)?;
    if !golden.expectations.iter().any(|e| e.local.is_some())
        || !global_rules_blind(store, golden, run.run.dtype())?
    {
        return Ok(None);
    }
    let class = run_class(&run, &det, host);
    match compare::choose(golden, &class, scenario).authority {
        Ok((_, compare::Match::NearestClass)) => LocalInputsAt::of(store, st),
        _ => Ok(None),
    }
}

/// Where the global rules cannot see the whole run of a scenario in `dtype` (a knob may change
/// it): its output is too sensitive to compare across classes, its trajectory is comparable for
/// fewer than all of its steps, or it runs in reduced precision.
fn global_rules_blind(
    store: &GoldenStore,
    golden: &GoldenScenario,
    dtype: crate::torch::DType,
) -> Result<bool> {
    use crate::torch::DType;
    let Some(truth) = &golden.truth else {
        return Ok(false);
    };
    if matches!(dtype, DType::F16 | DType::Bf16) {
        return Ok(true);
    }
    let (values, _) = store.read_array(&truth.array)?;
    if compare::relative_sensitivity(truth.sensitivity, &values) > compare::POWERLESS_SENSITIVITY {
        return Ok(true);
    }
    let Some(st) = &truth.steps else {
        return Ok(false);
    };
    let (latents, _) = store.read_array(&st.array)?;
    Ok(compare::comparable_steps(&latents, &st.noise_response, dtype) < st.noise_response.len())
}

/// Plans, runs and checks one scenario against the store (`host`: this process's fingerprint,
/// for the plan).
pub fn check_one(
    runner: &Runner,
    store: &GoldenStore,
    suite: &Suite,
    golden: Option<&GoldenFile>,
    scenario: &Scenario,
    host: &Fingerprint,
) -> (ScenarioResult, Option<Observation>) {
    let entry = golden.and_then(|g| g.scenarios.get(&scenario.name));
    if let Some((verdict, why)) = plan(suite, scenario, golden, host) {
        return (
            ScenarioResult::skipped(&suite.name, &scenario.name, verdict, &why),
            None,
        );
    }
    let local = match entry
        .map(|g| local_inputs(store, g, scenario, host))
        .transpose()
    {
        Ok(l) => l.flatten(),
        Err(e) => {
            let why = NotObserved::Failed(e);
            return (
                ScenarioResult::not_observed(&suite.name, &scenario.name, &why),
                None,
            );
        }
    };
    match runner.observe(&suite.path, scenario, local.as_ref()) {
        Ok(obs) => {
            let mut result = compare::compare(&suite.name, scenario, &obs, entry, store);
            // The plan found an expectation, the run's own class has none: it ran and nothing
            // judged it, which is no skip.
            if result.verdict == Verdict::NoExpectation {
                result.verdict = Verdict::Failed;
                result
                    .notes
                    .push("no expectation was found only after the run (its class differs from the one planned)".into());
            }
            (result, Some(obs))
        }
        Err(why) => {
            let mut r = ScenarioResult::not_observed(&suite.name, &scenario.name, &why);
            if entry.is_none() && r.verdict == Verdict::Failed {
                r.notes
                    .push(compare::bless_hint(&suite.name, &scenario.name));
            }
            (r, None)
        }
    }
}

/// What bless would change for one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct BlessChange {
    pub suite: String,
    pub scenario: String,
    /// The class whose expectation this is.
    pub class: String,
    /// Lines "field: old -> new", "new expectation", or why an expectation was kept.
    pub changes: Vec<String>,
    /// False when bless left another producer's expectation in place.
    pub written: bool,
}

/// Runs every selected scenario twice and writes this host's class's expectation when both
/// runs agree bit for bit and the output is finite. Refuses (writing nothing at all) if any
/// scenario fails that, and in CI. Bless adds or refreshes only expectations it produced
/// itself: one from the oracle or a publication is never replaced (it is reported as kept).
/// Returns what changed; unchanged entries are left exactly as they were.
pub fn bless(runner: &Runner, fixtures: &Fixtures, sel: &Selection) -> Result<Vec<BlessChange>> {
    if compare::in_ci() {
        return Err(Error::BlessRefused(
            "CI is set: goldens are refreshed on purpose by a maintainer, never in CI".into(),
        ));
    }
    let store = fixtures.store();
    let mut refusals = Vec::new();
    let mut changes = Vec::new();
    let mut plans = Vec::new();
    for suite in &fixtures.select(sel)? {
        let file = store
            .load(&suite.name)?
            .unwrap_or_else(|| GoldenFile::new(&suite.name));
        let mut plan = SuitePlan {
            suite: suite.name.clone(),
            blessed: Vec::new(),
            arrays: Vec::new(),
        };
        for scenario in &suite.scenarios {
            let observed = match twice_identical(runner, suite, scenario) {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(why) => {
                    refusals.push(format!("{}/{}: {why}", suite.name, scenario.name));
                    continue;
                }
            };
            match decide(suite, scenario, &file, observed) {
                Decision::Refused(why) => refusals.push(why),
                Decision::Kept(change) => changes.push(change),
                Decision::Unchanged => {}
                Decision::Write(change, blessed, array) => {
                    changes.push(change);
                    plan.arrays.extend(array);
                    plan.blessed.push(*blessed);
                }
            }
        }
        plans.push(plan);
    }
    if !refusals.is_empty() {
        return Err(Error::BlessRefused(format!(
            "nothing was written:\n  {}",
            refusals.join("\n  ")
        )));
    }
    for plan in plans {
        write_plan(&store, plan)?;
    }
    Ok(changes)
}

/// One suite's part of a bless: the expectations to write and their arrays.
struct SuitePlan {
    suite: String,
    blessed: Vec<Blessed>,
    arrays: Vec<(String, tch::Tensor)>,
}

/// What a bless does with one scenario's twice-identical output.
enum Decision {
    /// Nothing may be written (the whole bless is refused): why.
    Refused(String),
    /// Another producer's expectation stays, though the output differs from it.
    Kept(BlessChange),
    /// The expectation already holds these bits.
    Unchanged,
    /// A new or refreshed expectation, and its array where the suite stores one.
    Write(BlessChange, Box<Blessed>, Option<(String, tch::Tensor)>),
}

/// What to do with `a`, `scenario`'s output, given the suite's golden file (see [`bless`]).
fn decide(suite: &Suite, scenario: &Scenario, file: &GoldenFile, a: Observation) -> Decision {
    let class = a.environment.class(scenario.device);
    let change = |changes, written| BlessChange {
        suite: suite.name.clone(),
        scenario: scenario.name.clone(),
        class: class.to_string(),
        changes,
        written,
    };
    let old_scenario = file.scenarios.get(&scenario.name);
    if let Some(old) = old_scenario {
        let others = old.expectations.iter().any(|e| e.class != class);
        if (old.shape != a.shape || old.dtype != a.dtype) && others {
            return Decision::Refused(format!(
                "{}/{}: the output is {} {:?} but the other classes' expectations are {} {:?}: \
                 change the suite's goldens with the oracle",
                suite.name, scenario.name, a.dtype, a.shape, old.dtype, old.shape
            ));
        }
    }
    let old = old_scenario.and_then(|s| s.expectation(&class));
    if let Some(o) = old.filter(|o| o.provenance.producer != compare::BLESSED) {
        if o.sha256.as_deref() == Some(a.sha256.as_str()) {
            return Decision::Unchanged;
        }
        return Decision::Kept(change(
            vec![format!(
                "kept: the {} expectation for this class is not bless's to replace (it \
                 differs: sha256 {} here); {}",
                o.provenance.producer,
                &a.sha256[..12],
                o.provenance.command
            )],
            false,
        ));
    }
    if old.is_some_and(|o| {
        o.sha256.as_deref() == Some(a.sha256.as_str())
            && old_scenario.is_some_and(|s| s.shape == a.shape && s.dtype == a.dtype)
    }) {
        return Decision::Unchanged; // keep the entry and its provenance as they are
    }
    let array = scenario
        .store_array
        .then(|| GoldenStore::array_name(&suite.name, &scenario.name, &a.sha256));
    let entry = blessed_expectation(suite, scenario, &a, class.clone(), array.clone());
    let mut notes = describe_change(old, &entry);
    notes.extend(retired_order_rules(old_scenario, &class));
    let stored = array.zip(a.stored);
    let blessed = Blessed {
        scenario: scenario.name.clone(),
        shape: a.shape,
        dtype: a.dtype,
        env: (a.environment.id(), a.environment),
        entry,
        model_sha256: a.model_sha256,
    };
    Decision::Write(change(notes, true), Box::new(blessed), stored)
}

/// The expectation bless writes for `a`, this class's output of `scenario`.
fn blessed_expectation(
    suite: &Suite,
    scenario: &Scenario,
    a: &Observation,
    class: EnvClass,
    array: Option<String>,
) -> Expectation {
    Expectation {
        class,
        sha256: Some(a.sha256.clone()),
        metrics: a.metrics.clone(),
        array,
        array_sha256: None,
        local: None,
        step_error: None,
        provenance: Provenance {
            producer: compare::BLESSED.into(),
            tool: format!(
                "reprodiff {} on libtorch {}",
                env!("CARGO_PKG_VERSION"),
                a.environment.versions.libtorch
            ),
            command: format!(
                "reprodiff bless --suite {} --filter '^{}$'",
                suite.name,
                regex::escape(&scenario.name)
            ),
            environment: Some(a.environment.id()),
        },
    }
}

/// Writes one suite's blessed expectations: under the golden's lock the file is read again and
/// they are put into it (a bless or merge that wrote meanwhile keeps its work), their arrays
/// first, then the arrays no expectation names any more removed.
fn write_plan(store: &GoldenStore, plan: SuitePlan) -> Result<()> {
    let SuitePlan {
        suite,
        blessed,
        arrays,
    } = plan;
    if blessed.is_empty() {
        return Ok(());
    }
    let _lock = store.lock(&suite)?;
    let mut file = store
        .load(&suite)?
        .unwrap_or_else(|| GoldenFile::new(&suite));
    for (rel, t) in &arrays {
        store.write_array(rel, t)?;
    }
    let retired: Vec<String> = blessed
        .into_iter()
        .flat_map(|b| b.put_into(&mut file))
        .collect();
    file.prune_environments();
    store.save(&file)?;
    for rel in &retired {
        store.remove_unreferenced_array(&file, rel)?;
    }
    Ok(())
}

/// One expectation a bless writes, with what its scenario's entry needs.
struct Blessed {
    scenario: String,
    shape: Vec<i64>,
    dtype: crate::torch::DType,
    env: (String, Fingerprint),
    entry: Expectation,
    model_sha256: Option<String>,
}

impl Blessed {
    /// Puts the expectation into `file` (retiring the scenario's portable expectations of other
    /// order rules); returns the arrays of those it retired.
    fn put_into(self, file: &mut GoldenFile) -> Vec<String> {
        file.environments.insert(self.env.0, self.env.1);
        let target = file
            .scenarios
            .entry(self.scenario)
            .or_insert_with(|| GoldenScenario {
                shape: self.shape.clone(),
                dtype: self.dtype,
                truth: None,
                expectations: Vec::new(),
                model_sha256: None,
            });
        target.shape = self.shape;
        target.model_sha256 = self.model_sha256.or(target.model_sha256.take());
        target.dtype = self.dtype;
        let mut retired = Vec::new();
        let class = self.entry.class.clone();
        target.expectations.retain(|e| {
            let old = under_an_older_rule(&e.class, &class);
            if old {
                retired.extend(e.array.clone());
            }
            !old
        });
        target.put(self.entry);
        retired
    }
}

/// Two runs of a scenario that agree bit for bit and are finite; `Ok(None)` when it cannot run
/// here (said on stderr), `Err` with the reason a golden must not be made of it.
fn twice_identical(
    runner: &Runner,
    suite: &Suite,
    scenario: &Scenario,
) -> std::result::Result<Option<Observation>, String> {
    let (a, b) = match (
        runner.observe(&suite.path, scenario, None),
        runner.observe(&suite.path, scenario, None),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(NotObserved::NotRun(why)), _) | (_, Err(NotObserved::NotRun(why))) => {
            eprintln!("skipped {}/{}: not run: {why}", suite.name, scenario.name);
            return Ok(None);
        }
        (Err(NotObserved::Failed(e)), _) | (_, Err(NotObserved::Failed(e))) => {
            return Err(e.to_string())
        }
    };
    if a.sha256 != b.sha256 {
        let at = crate::metrics::first_difference(&a.values, &b.values)
            .map(|i| {
                format!(
                    " (first difference at {:?})",
                    crate::metrics::unravel(i, &a.shape)
                )
            })
            .unwrap_or_default();
        return Err(format!("two runs differ{at}; a golden must be repeatable"));
    }
    if !a.finite {
        return Err("output holds NaN or Inf".into());
    }
    Ok(Some(a))
}

/// What blessing a portable expectation under `class`'s order rule retires: the scenario's
/// expectations under other order rules, which no run makes any more (a new order rule is new
/// goldens; the old ones stay in git's history).
fn retired_order_rules(old: Option<&GoldenScenario>, class: &EnvClass) -> Vec<String> {
    old.into_iter()
        .flat_map(|s| &s.expectations)
        .filter(|e| under_an_older_rule(&e.class, class))
        .map(|e| format!("retired: {} (sha256 {})", e.class, short(&e.sha256)))
        .collect()
}

/// Whether `other` is a portable class under another order rule than `blessed`'s (only a
/// portable bless retires anything).
fn under_an_older_rule(other: &EnvClass, blessed: &EnvClass) -> bool {
    matches!(
        (other, blessed),
        (EnvClass::Portable { order_rule: o }, EnvClass::Portable { order_rule: b }) if o != b
    )
}

fn describe_change(old: Option<&Expectation>, new: &Expectation) -> Vec<String> {
    let Some(old) = old else {
        return vec![format!(
            "new expectation for class {}: sha256 {} sum_abs {}",
            new.class,
            short(&new.sha256),
            new.metrics.get("sum_abs").copied().unwrap_or(f64::NAN)
        )];
    };
    let mut out = vec![format!(
        "sha256: {} -> {}",
        short(&old.sha256),
        short(&new.sha256)
    )];
    for (k, v) in &new.metrics {
        match old.metrics.get(k) {
            Some(o) if o.to_bits() == v.to_bits() => {}
            Some(o) => out.push(format!("{k}: {o} -> {v}")),
            None => out.push(format!("{k}: (none) -> {v}")),
        }
    }
    out
}

fn short(sha: &Option<String>) -> &str {
    sha.as_deref().map_or("(none)", |s| &s[..12])
}
