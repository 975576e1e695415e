//! Calibrating a suite's cross-class truth rule from measurements: `reprodiff calibrate`.
//!
//! The rule ([`crate::harness::suite::CrossClass::Truth`]) passes a run of an unrecorded class when
//! `rmse(truth, got) <= k * rmse(truth, nearest expectation) + noise_ulps * S`. For a fixed k
//! (PyTorch dynamo's 2), the floor a suite needs is the smallest `noise_ulps` for which every
//! recorded class `a` would pass against every other recorded class `b`, on every scenario the
//! rule judges:
//!
//! ```text
//! need = max over scenarios, a != b of (rmse(truth, a) - k * rmse(truth, b)) / S
//! ```
//!
//! Recorded classes are the golden's oracle expectations: diffusers' runs on real hosts and
//! under kernel settings the oracle ran (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`, `MKL_CBWR`
//! give classes of their own), each class's array against the float64 truth. Every value is
//! sized from them alone, never from reprodiff's own runs, so a defect of reprodiff present at
//! calibration time cannot be absorbed into a tolerance. Scenarios the rule never judges are
//! left out: own-class-only ones, rerun differences (compared exactly) and those without a
//! truth. The policy the guard test holds every suite to: each value is at least its need and
//! at most [`MAX_MARGIN`] times it, so a tolerance is neither too tight for a recorded class
//! nor silently wide.
//!
//! The step rule (`step_ulps`, per dtype) the same way: each recorded class's expectation keeps
//! its `step_error` (diffusers' own run against the truth, step by step, measured by the oracle
//! where it recorded per-step latents); the need of a dtype is the largest `step_error_t /
//! noise_response_t` over the steps the rule compares (`step_need`).
//!
//! The local rule (`local_ulps`, per dtype) from the classes' local figures, pair by pair
//! (`local_need`).
use crate::error::Result;
use crate::harness::compare::BLESSED;
use crate::harness::store::GoldenStore;
use crate::harness::suite::{CrossClass, Scenario, Suite};
use crate::metrics;
use std::collections::BTreeMap;

/// A suite's calibrated values may be at most this many times what its recorded classes need.
pub const MAX_MARGIN: f64 = 2.0;

/// What one suite's records need.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub suite: String,
    /// The k the need was computed for (the suite's own).
    pub k: f64,
    /// The suite's `noise_ulps`.
    pub set: f64,
    /// The smallest `noise_ulps` every pair passes with.
    pub noise_ulps: f64,
    /// The scenario and pair that set it ("scenario: class a vs class b").
    pub set_by: String,
    /// Scenarios the rule judges, and how many of them have figures of two classes or more.
    pub scenarios: usize,
    pub paired: usize,
    /// The recorded classes (the oracle's expectations).
    pub classes: Vec<String>,
    /// The need of each dtype's scenarios, where a suite has several.
    pub by_dtype: BTreeMap<String, f64>,
    /// The step rule, per dtype with diffusers' per-step figures (`runs` counts the
    /// (scenario, class) figures).
    pub steps: BTreeMap<String, StepNeed>,
    /// The local rule, per dtype with diffusers' local figures of two classes or more (`runs`
    /// counts the pairs of classes measured).
    pub local: BTreeMap<String, StepNeed>,
}

/// What one dtype's step rule needs: the largest `truth_step_ulps` of the records.
#[derive(Debug, Clone, PartialEq)]
pub struct StepNeed {
    pub need: f64,
    /// The suite's `step_ulps` for the dtype.
    pub set: Option<f64>,
    /// "scenario (class)" that set the need.
    pub set_by: String,
    /// Records (scenario runs) that had figures.
    pub runs: usize,
}

impl StepNeed {
    /// Set, calibrated from at least one run, and between the need and MAX_MARGIN times it.
    pub fn holds(&self) -> bool {
        self.runs > 0
            && self
                .set
                .is_some_and(|set| set >= self.need && set <= MAX_MARGIN * self.need.max(1e-9))
    }
}

impl Need {
    /// Whether the suite's value keeps the policy (see the module docs).
    pub fn holds(&self) -> bool {
        self.noise_ulps > 0.0
            && self.set >= self.noise_ulps
            && self.set <= MAX_MARGIN * self.noise_ulps
            && self.steps.values().all(StepNeed::holds)
            && self.local.values().all(StepNeed::holds)
    }

    /// Whether every value set is at least what its recorded classes need (the policy's lower
    /// half): what a rule borrowed from another suite must keep on the suite that borrows it.
    pub fn covers(&self) -> bool {
        let floor = |n: &StepNeed| n.set.is_none_or(|set| set >= n.need);
        self.set >= self.noise_ulps
            && self.steps.values().all(floor)
            && self.local.values().all(floor)
    }

    /// One line for people: the need, what set it, and the verdict of the policy.
    pub fn sentence(&self) -> String {
        let verdict = if self.paired == 0 {
            "no pair of classes to calibrate from".to_string()
        } else if self.noise_ulps == 0.0 {
            format!(
                "no floor needed: k alone passes every pair ({} set)",
                self.set
            )
        } else if self.set < self.noise_ulps {
            format!("TOO TIGHT: {} is below the need", self.set)
        } else if self.set > MAX_MARGIN * self.noise_ulps {
            format!(
                "TOO WIDE: {} is more than {MAX_MARGIN}x the need (at most {:.3})",
                self.set,
                MAX_MARGIN * self.noise_ulps
            )
        } else {
            format!(
                "ok: {} set ({:.2}x the need)",
                self.set,
                self.set / self.noise_ulps
            )
        };
        let dtypes: Vec<String> = self
            .by_dtype
            .iter()
            .map(|(d, n)| format!("{d} {n:.3}"))
            .collect();
        let rule = |name: &'static str, needs: &BTreeMap<String, StepNeed>| -> Vec<String> {
            needs
                .iter()
                .map(|(d, n)| {
                    let verdict = match n.set {
                        _ if n.runs == 0 => "NOTHING to calibrate it from".to_string(),
                        None => "NOT SET".to_string(),
                        Some(set) if set < n.need => format!("TOO TIGHT: {set}"),
                        Some(set) if set > MAX_MARGIN * n.need => {
                            format!("TOO WIDE: {set}, at most {:.3}", MAX_MARGIN * n.need)
                        }
                        Some(set) => format!("ok: {set} set"),
                    };
                    format!(
                        "; {name}.{d} needed {:.3} (set by {}, {} runs): {verdict}",
                        n.need, n.set_by, n.runs
                    )
                })
                .collect()
        };
        let mut steps = rule("step_ulps", &self.steps);
        steps.extend(rule("local_ulps", &self.local));
        format!(
            "{}: k = {}, noise_ulps needed {:.3} (set by {}; by dtype: {}) over {} scenarios \
             ({} paired), {} recorded classes; {verdict}{}",
            self.suite,
            self.k,
            self.noise_ulps,
            self.set_by,
            dtypes.join(", "),
            self.scenarios,
            self.paired,
            self.classes.len(),
            steps.concat()
        )
    }
}

/// The needs of `suite` from its goldens in `store`, diffusers' figures alone: one per distinct
/// truth rule among its judged scenarios (a suite's default, and each scenario override that
/// differs from it, each calibrated from its own scenarios). Empty for a suite without the
/// truth rule or without goldens.
pub fn needs(suite: &Suite, store: &GoldenStore) -> Result<Vec<Need>> {
    let Some(golden) = store.load(&suite.name)? else {
        return Ok(Vec::new());
    };
    let mut groups: Vec<(CrossClass, Vec<&Scenario>)> = Vec::new();
    for s in judged(suite) {
        let Some(rule @ CrossClass::Truth { .. }) = s.cross_class else {
            continue;
        };
        match groups.iter_mut().find(|(r, _)| *r == rule) {
            Some((_, members)) => members.push(s),
            None => groups.push((rule, vec![s])),
        }
    }
    let several = groups.len() > 1;
    groups
        .into_iter()
        .map(|(rule, members)| {
            let name = if several {
                format!(
                    "{} ({} scenarios, from {})",
                    suite.name,
                    members.len(),
                    members[0].name
                )
            } else {
                suite.name.clone()
            };
            need(&name, &members, rule, store, &golden)
        })
        .collect()
}

/// The need of one rule from the scenarios that have it.
fn need(
    name: &str,
    scenarios: &[&Scenario],
    rule: CrossClass,
    store: &GoldenStore,
    golden: &crate::harness::store::GoldenFile,
) -> Result<Need> {
    let CrossClass::Truth {
        k,
        noise_ulps: set,
        step_ulps,
        local_ulps,
    } = rule
    else {
        unreachable!("needs() groups truth rules only");
    };
    let mut need = Need {
        suite: name.to_string(),
        k,
        set,
        noise_ulps: 0.0,
        set_by: "-".into(),
        scenarios: 0,
        paired: 0,
        classes: Vec::new(),
        by_dtype: BTreeMap::new(),
        steps: step_need(scenarios, store, golden, step_ulps)?,
        local: local_need(scenarios, golden, k, local_ulps),
    };
    let mut classes = std::collections::BTreeSet::new();
    for s in scenarios {
        let Some(g) = golden.scenarios.get(&s.name) else {
            continue;
        };
        let Some(truth) = &g.truth else { continue };
        let (t, _) = store.read_array(&truth.array)?;
        let mut by_class = BTreeMap::new();
        for e in diffusers(g) {
            if let Some(rel) = &e.array {
                let (v, _) = store.read_array(rel)?;
                by_class.insert(e.class.to_string(), metrics::rmse(&t, &v));
            }
        }
        classes.extend(by_class.keys().cloned());
        need.scenarios += 1;
        need.paired += usize::from(by_class.len() >= 2);
        let d = need.by_dtype.entry(g.dtype.to_string()).or_insert(0.0);
        if truth.sensitivity <= 0.0 {
            continue;
        }
        for (a, ra) in &by_class {
            for (b, rb) in &by_class {
                let gap = (ra - k * rb) / truth.sensitivity;
                if a == b || gap <= 0.0 {
                    continue;
                }
                *d = d.max(gap);
                if gap > need.noise_ulps {
                    need.noise_ulps = gap;
                    need.set_by = format!("{}: {a} vs {b}", s.name);
                }
            }
        }
    }
    need.classes = classes.into_iter().collect();
    Ok(need)
}

/// The scenarios a suite's cross-class rules judge: not own-class-only ones, not rerun
/// differences (compared exactly).
fn judged(suite: &Suite) -> impl Iterator<Item = &Scenario> {
    suite
        .scenarios
        .iter()
        .filter(|s| s.own_class_only.is_none() && !s.run.is_rerun_difference())
}

/// A golden scenario's diffusers expectations (the oracle's, not reprodiff's blessings).
fn diffusers(
    g: &crate::harness::store::GoldenScenario,
) -> impl Iterator<Item = &crate::harness::store::Expectation> {
    g.expectations
        .iter()
        .filter(|e| e.provenance.producer != BLESSED)
}

/// What the step rule needs per dtype, from diffusers' runs alone: for every scenario whose
/// golden holds the per-step truth and every class whose expectation holds its `step_error`
/// (diffusers' own run against the truth, step by step), the largest `step_error_t /
/// noise_response_t` over the steps the rule compares (`comparable_steps`). `runs` counts the
/// (scenario, class) figures.
fn step_need(
    scenarios: &[&Scenario],
    store: &GoldenStore,
    golden: &crate::harness::store::GoldenFile,
    set: crate::harness::suite::PerDtype,
) -> Result<BTreeMap<String, StepNeed>> {
    let mut needs = unmeasured(set);
    for s in scenarios {
        let Some(g) = golden.scenarios.get(&s.name) else {
            continue;
        };
        let Some(st) = g.truth.as_ref().and_then(|t| t.steps.as_ref()) else {
            continue;
        };
        let (truth, _) = store.read_array(&st.array)?;
        let comparable =
            crate::harness::compare::comparable_steps(&truth, &st.noise_response, g.dtype);
        for e in diffusers(g) {
            let Some(errors) = &e.step_error else {
                continue;
            };
            let n = needs.entry(g.dtype.to_string()).or_insert(StepNeed {
                need: 0.0,
                set: set.get(g.dtype),
                set_by: "-".into(),
                runs: 0,
            });
            n.runs += 1;
            for (i, (err, response)) in errors
                .iter()
                .zip(&st.noise_response)
                .enumerate()
                .take(comparable)
            {
                let ratio = match (err, response) {
                    (e, _) if *e == 0.0 => 0.0,
                    (e, r) if *r > 0.0 => e / r,
                    _ => f64::INFINITY,
                };
                if ratio > n.need {
                    n.need = ratio;
                    n.set_by = format!("{} step {} ({})", s.name, i + 1, e.class);
                }
            }
        }
    }
    Ok(needs)
}

/// A need per dtype the suite sets a value for, nothing measured yet.
fn unmeasured(set: crate::harness::suite::PerDtype) -> BTreeMap<String, StepNeed> {
    set.iter()
        .map(|(dtype, v)| {
            (
                dtype.to_string(),
                StepNeed {
                    need: 0.0,
                    set: Some(v),
                    set_by: "-".into(),
                    runs: 0,
                },
            )
        })
        .collect()
}

/// What the local rule needs per dtype, from diffusers' local figures alone (the oracle's local
/// pass on each recorded class): for every scenario the rule judges, every stage (each step and
/// the output) and every two classes `a != b` that were measured,
///
/// ```text
/// need = max (error_a - k * error_b) / response_b
/// ```
///
/// the smallest `local_ulps` for which class `a` passes against class `b`'s figures. A dtype
/// the suite sets a value for but no pair measured has `runs` 0 and fails the policy.
fn local_need(
    scenarios: &[&Scenario],
    golden: &crate::harness::store::GoldenFile,
    k: f64,
    set: crate::harness::suite::PerDtype,
) -> BTreeMap<String, StepNeed> {
    let mut needs = unmeasured(set);
    for s in scenarios {
        let Some(g) = golden.scenarios.get(&s.name) else {
            continue;
        };
        let measured: Vec<_> = diffusers(g)
            .filter_map(|e| e.local.as_ref().map(|l| (&e.class, l)))
            .collect();
        let dtype = g.dtype.to_string();
        for (a, fa) in &measured {
            for (b, fb) in &measured {
                if a == b {
                    continue;
                }
                let n = needs.entry(dtype.clone()).or_insert(StepNeed {
                    need: 0.0,
                    set: set.get(g.dtype),
                    set_by: "-".into(),
                    runs: 0,
                });
                n.runs += 1;
                let stages = fa
                    .error
                    .iter()
                    .zip(&fb.error)
                    .zip(&fb.response)
                    .map(|((ea, eb), rb)| (*ea, *eb, *rb))
                    .chain([(fa.output_error, fb.output_error, fb.output_response)]);
                for (i, (ea, eb, rb)) in stages.enumerate() {
                    let gap = match (ea - k * eb, rb) {
                        (over, _) if over <= 0.0 => 0.0,
                        (over, rb) if rb > 0.0 => over / rb,
                        _ => f64::INFINITY,
                    };
                    if gap > n.need {
                        n.need = gap;
                        let stage = if i < fa.error.len() {
                            format!("step {}", i + 1)
                        } else {
                            "output".into()
                        };
                        n.set_by = format!("{} {stage}: {a} vs {b}", s.name);
                    }
                }
            }
        }
    }
    needs
}

/// One rule's need and the policy's verdict on it.
#[derive(Debug, Clone)]
pub struct Judged {
    pub need: Need,
    /// Whether the rule keeps the policy.
    pub ok: bool,
    /// Whether it is a portable suite's rule (judged by what it borrows).
    pub portable: bool,
    /// For a portable suite's rule: the native rule it borrows, where one matches.
    pub borrows: Option<String>,
}

impl Judged {
    /// The need's sentence, with how a portable rule was judged.
    pub fn sentence(&self) -> String {
        match &self.borrows {
            _ if !self.portable => self.need.sentence(),
            None => format!(
                "{}; PORTABLE: its rule is no calibrated native suite's",
                self.need.sentence()
            ),
            Some(native) => format!(
                "{}: borrows {native}'s rule (a portable run is held to what another CPU class \
                 is held to); {}",
                self.need.suite,
                if self.ok {
                    "it covers what this suite's own diffusers classes need"
                } else {
                    "TOO TIGHT for this suite's own diffusers classes"
                }
            ),
        }
    }
}

/// The policy over all of `suites` (see the module docs): a native suite's rules must hold it
/// from their own recorded classes; a portable suite's (every scenario on the portable
/// kernels) must be a native rule that holds it, and must cover what the portable suite's own
/// diffusers classes need.
pub fn judge(suites: &[Suite], store: &GoldenStore) -> Result<Vec<Judged>> {
    let is_portable = |s: &Suite| {
        s.scenarios
            .iter()
            .all(|x| x.kernels == crate::portable::Kernels::Portable)
    };
    let values = |n: &Need| {
        let f32 = |m: &BTreeMap<String, StepNeed>| m.get("f32").and_then(|s| s.set);
        (n.k, n.set, f32(&n.steps), f32(&n.local))
    };
    let mut native = Vec::new();
    let mut portable = Vec::new();
    for suite in suites {
        for need in needs(suite, store)? {
            if is_portable(suite) {
                portable.push(need);
            } else {
                native.push(need);
            }
        }
    }
    let mut judged: Vec<Judged> = native
        .iter()
        .map(|n| Judged {
            ok: n.holds(),
            need: n.clone(),
            portable: false,
            borrows: None,
        })
        .collect();
    for need in portable {
        let source = native
            .iter()
            .find(|n| n.holds() && values(n) == values(&need))
            .map(|n| n.suite.clone());
        judged.push(Judged {
            ok: source.is_some() && need.covers(),
            need,
            portable: true,
            borrows: source,
        });
    }
    Ok(judged)
}
