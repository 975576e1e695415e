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
//! Recorded classes are the golden's oracle expectations (each class's array against the
//! float64 truth); record folders add the classes they ran in (their `rmse_truth`), as the `a`
//! side only: the committed ones, [`committed_records`] (kernel settings of a host that nobody
//! recorded as a class, `fixtures/records/<host>/calibration/<setting>/`), and any others given. Scenarios the rule never
//! judges are left out: own-class-only ones, rerun differences (compared exactly) and those
//! without a truth. The policy the guard test holds every suite to: its `noise_ulps` is at
//! least the need and at most [`MAX_MARGIN`] times it, so a tolerance is neither too tight for
//! a recorded host nor silently wide.
//!
//! The step rule (`step_ulps`, per dtype) is calibrated the same way from the records alone:
//! every check record of a scenario whose golden holds the per-step truth carries
//! `truth_step_ulps`, the largest distance of its trace from the truth over the comparable
//! steps, in units of each step's noise response; the need of a dtype is the largest of those
//! over the records' classes, and `step_ulps` must lie between it and [`MAX_MARGIN`] times it.
use crate::error::Result;
use crate::harness::compare::BLESSED;
use crate::harness::store::GoldenStore;
use crate::harness::suite::{CrossClass, Suite};
use crate::metrics;
use std::collections::BTreeMap;
use std::path::Path;

/// A suite's `noise_ulps` may be at most this many times what its records need.
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
    /// The recorded classes (oracle expectations) and the other classes from records.
    pub classes: Vec<String>,
    pub record_classes: Vec<String>,
    /// The need of each dtype's scenarios, where a suite has several.
    pub by_dtype: BTreeMap<String, f64>,
    /// The step rule, per dtype with figures in the records.
    pub steps: BTreeMap<String, StepNeed>,
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
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(d, n)| {
                let verdict = match n.set {
                    _ if n.runs == 0 => "NO RECORDS to calibrate it from".to_string(),
                    None => "NOT SET".to_string(),
                    Some(set) if set < n.need => format!("TOO TIGHT: {set}"),
                    Some(set) if set > MAX_MARGIN * n.need => {
                        format!("TOO WIDE: {set}, at most {:.3}", MAX_MARGIN * n.need)
                    }
                    Some(set) => format!("ok: {set} set"),
                };
                format!(
                    "; step_ulps.{d} needed {:.3} (set by {}, {} runs): {verdict}",
                    n.need, n.set_by, n.runs
                )
            })
            .collect();
        format!(
            "{}: k = {}, noise_ulps needed {:.3} (set by {}; by dtype: {}) over {} scenarios \
             ({} paired), {} recorded classes{}; {verdict}{}",
            self.suite,
            self.k,
            self.noise_ulps,
            self.set_by,
            dtypes.join(", "),
            self.scenarios,
            self.paired,
            self.classes.len(),
            if self.record_classes.is_empty() {
                String::new()
            } else {
                format!(" + {} from records", self.record_classes.len())
            },
            steps.concat()
        )
    }
}

/// The committed calibration records: `<fixtures>/records/<host>/calibration/<setting>/`
/// folders holding records.jsonl, sorted.
pub fn committed_records(fixtures: &crate::harness::suite::Fixtures) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    let hosts = std::fs::read_dir(fixtures.root.join("records"))
        .into_iter()
        .flatten();
    for host in hosts.flatten() {
        let settings = std::fs::read_dir(host.path().join("calibration"))
            .into_iter()
            .flatten();
        for setting in settings.flatten() {
            if setting.path().join("records.jsonl").is_file() {
                dirs.push(setting.path());
            }
        }
    }
    dirs.sort();
    dirs
}

/// The need of `suite` from its goldens in `store` and the check records under `records`
/// (folders holding records.jsonl); `None` for a suite without the truth rule.
pub fn need(suite: &Suite, store: &GoldenStore, records: &[&Path]) -> Result<Option<Need>> {
    let Some(golden) = store.load(&suite.name)? else {
        return Ok(None);
    };
    let mut k_set = None;
    // scenario -> (dtype, sensitivity, class -> rmse(truth, class))
    let mut figures: BTreeMap<&str, (String, f64, BTreeMap<String, f64>)> = BTreeMap::new();
    let mut recorded: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for s in &suite.scenarios {
        let Some(CrossClass::Truth {
            k,
            noise_ulps,
            step_ulps,
        }) = s.cross_class
        else {
            continue;
        };
        k_set = Some((k, noise_ulps, step_ulps));
        if s.own_class_only.is_some() || s.run.is_rerun_difference() {
            continue;
        }
        let Some(g) = golden.scenarios.get(&s.name) else {
            continue;
        };
        let Some(truth) = &g.truth else { continue };
        let (t, _) = store.read_array(&truth.array)?;
        let mut by_class = BTreeMap::new();
        for e in g
            .expectations
            .iter()
            .filter(|e| e.provenance.producer != BLESSED)
        {
            if let Some(rel) = &e.array {
                let (v, _) = store.read_array(rel)?;
                by_class.insert(e.class.to_string(), metrics::rmse(&t, &v));
            }
        }
        recorded.insert(&s.name, by_class.clone());
        figures.insert(&s.name, (g.dtype.to_string(), truth.sensitivity, by_class));
    }
    let Some((k, set, step_ulps)) = k_set else {
        return Ok(None);
    };
    let mut steps: BTreeMap<String, StepNeed> = BTreeMap::new();
    let mut record_classes = Vec::new();
    for dir in records {
        let set = crate::harness::report::drift::load(dir)?;
        let prefix = format!("{}/", suite.name);
        for e in &set.entries {
            let (Some(scenario), Some(ulps), Some(dtype)) = (
                e.name.strip_prefix(&prefix),
                e.truth_step_ulps,
                e.dtype.as_ref(),
            ) else {
                continue;
            };
            let set_ulps = dtype.parse().ok().and_then(|d| step_ulps.get(d));
            let n = steps.entry(dtype.clone()).or_insert(StepNeed {
                need: 0.0,
                set: set_ulps,
                set_by: "-".into(),
                runs: 0,
            });
            n.runs += 1;
            if ulps > n.need {
                n.need = ulps;
                n.set_by = format!("{scenario} ({})", e.class);
            }
        }
        for e in &set.entries {
            let (Some(scenario), Some(r)) = (e.name.strip_prefix(&prefix), e.rmse_truth) else {
                continue;
            };
            let class = e.class.clone();
            if let Some((_, _, by_class)) = figures.get_mut(scenario) {
                if let std::collections::btree_map::Entry::Vacant(slot) = by_class.entry(class) {
                    if !record_classes.contains(slot.key()) {
                        record_classes.push(slot.key().clone());
                    }
                    slot.insert(r);
                }
            }
        }
    }
    for (dtype, set) in step_ulps.iter() {
        steps.entry(dtype.into()).or_insert(StepNeed {
            need: 0.0,
            set: Some(set),
            set_by: "-".into(),
            runs: 0,
        });
    }
    let mut need = Need {
        suite: suite.name.clone(),
        k,
        set,
        noise_ulps: 0.0,
        set_by: "-".into(),
        scenarios: figures.len(),
        paired: 0,
        classes: Vec::new(),
        record_classes,
        by_dtype: BTreeMap::new(),
        steps,
    };
    let mut classes: Vec<String> = recorded.values().flat_map(|m| m.keys().cloned()).collect();
    classes.sort();
    classes.dedup();
    need.classes = classes;
    for (name, (dtype, sensitivity, by_class)) in &figures {
        let against = &recorded[name];
        if by_class.len() >= 2 {
            need.paired += 1;
        }
        let d = need.by_dtype.entry(dtype.clone()).or_insert(0.0);
        if *sensitivity <= 0.0 {
            continue;
        }
        for (a, ra) in by_class {
            for (b, rb) in against {
                let gap = (ra - k * rb) / sensitivity;
                if a == b || gap <= 0.0 {
                    continue;
                }
                *d = d.max(gap);
                if gap > need.noise_ulps {
                    need.noise_ulps = gap;
                    need.set_by = format!("{name}: {a} vs {b}");
                }
            }
        }
    }
    Ok(Some(need))
}
