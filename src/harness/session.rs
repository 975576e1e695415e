//! `check` and `bless` over a selection of suites and scenarios.
use super::check::{self, ScenarioResult, Verdict};
use super::golden::{GoldenEntry, GoldenFile, GoldenStore, Provenance, GENERATED_NOTE};
use super::observe::{NotObserved, Observation, Runner};
use super::suite::{Scenario, Suite};
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use regex::Regex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which scenarios to run: suites by name (all when empty) and a regex on scenario names.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub suites: Vec<String>,
    pub filter: Option<String>,
}

/// A fixtures tree: fixtures/suites/*.toml and fixtures/golden/.
#[derive(Debug, Clone)]
pub struct Fixtures {
    pub root: PathBuf,
}

impl Fixtures {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Fixtures { root: root.into() }
    }

    pub fn suites_dir(&self) -> PathBuf {
        self.root.join("suites")
    }

    pub fn store(&self) -> GoldenStore {
        GoldenStore::new(self.root.join("golden"))
    }

    /// The selected suites, each with its selected scenarios (suites left empty are dropped).
    pub fn select(&self, sel: &Selection) -> Result<Vec<Suite>> {
        let all = Suite::load_dir(&self.suites_dir())?;
        for wanted in &sel.suites {
            if !all.iter().any(|s| &s.name == wanted) {
                let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::InvalidArgument(format!(
                    "--suite {wanted}: no such suite in {} (known: {})",
                    self.suites_dir().display(),
                    known.join(", ")
                )));
            }
        }
        let filter = sel
            .filter
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("--filter: {e}")))?;
        Ok(all
            .into_iter()
            .filter(|s| sel.suites.is_empty() || sel.suites.contains(&s.name))
            .map(|mut s| {
                s.scenarios.retain(|sc| {
                    filter.as_ref().is_none_or(|f| {
                        f.is_match(&sc.name) || f.is_match(&format!("{}/{}", s.name, sc.name))
                    })
                });
                s
            })
            .filter(|s| !s.scenarios.is_empty())
            .collect())
    }
}

/// One JSON record per scenario run: the result, the scenario as run and the environment.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub schema: u32,
    #[serde(flatten)]
    pub result: &'a ScenarioResult,
    pub spec: &'a Scenario,
    pub environment: Option<&'a Fingerprint>,
}

/// Runs and checks one scenario against the store.
pub fn check_one(
    runner: &Runner,
    store: &GoldenStore,
    suite: &Suite,
    golden: Option<&GoldenFile>,
    scenario: &Scenario,
) -> (ScenarioResult, Option<Observation>) {
    let entry = golden.and_then(|g| g.scenarios.get(&scenario.name));
    match runner.observe(&suite.path, scenario) {
        Ok(obs) => {
            let result = check::compare(&suite.name, scenario, &obs, entry, store);
            (result, Some(obs))
        }
        Err(why) => {
            let mut r = ScenarioResult::not_observed(&suite.name, &scenario.name, &why);
            if entry.is_none() && r.verdict == Verdict::Failed {
                r.notes.push(check::bless_hint(&suite.name, &scenario.name));
            }
            (r, None)
        }
    }
}

/// Writes a record to `<out>/<suite>/<slug>.json`.
pub fn write_record(
    out: &Path,
    scenario: &Scenario,
    result: &ScenarioResult,
    env: Option<&Fingerprint>,
) -> Result<()> {
    let dir = out.join(&result.suite);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{}.json", super::golden::slug(&result.scenario)));
    let record = Record {
        schema: 1,
        result,
        spec: scenario,
        environment: env,
    };
    let text = serde_json::to_string_pretty(&record).expect("a record serialises");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// What bless would change for one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct BlessChange {
    pub suite: String,
    pub scenario: String,
    /// Lines "field: old -> new" (or "new golden").
    pub changes: Vec<String>,
}

/// Runs every selected scenario twice and refreshes its golden when both runs agree bit for
/// bit and the output is finite. Refuses (writing nothing at all) if any scenario fails that,
/// and in CI. Returns what changed; unchanged entries are left exactly as they were.
pub fn bless(runner: &Runner, fixtures: &Fixtures, sel: &Selection) -> Result<Vec<BlessChange>> {
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        return Err(Error::BlessRefused(
            "CI is set: goldens are refreshed on purpose by a maintainer, never in CI".into(),
        ));
    }
    let store = fixtures.store();
    let suites = fixtures.select(sel)?;
    let mut refusals = Vec::new();
    let mut changes = Vec::new();
    let mut plans: Vec<(GoldenFile, Vec<(String, tch::Tensor)>)> = Vec::new();

    for suite in &suites {
        let mut file = store.load(&suite.name)?.unwrap_or_else(|| GoldenFile {
            schema: super::golden::SCHEMA,
            suite: suite.name.clone(),
            generated: GENERATED_NOTE.into(),
            environments: BTreeMap::new(),
            scenarios: BTreeMap::new(),
        });
        let mut arrays = Vec::new();
        for scenario in &suite.scenarios {
            let (a, b) = match (
                runner.observe(&suite.path, scenario),
                runner.observe(&suite.path, scenario),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(NotObserved::NotRun(why)), _) | (_, Err(NotObserved::NotRun(why))) => {
                    eprintln!("skipped {}/{}: not run: {why}", suite.name, scenario.name);
                    continue;
                }
                (Err(NotObserved::Failed(e)), _) | (_, Err(NotObserved::Failed(e))) => {
                    refusals.push(format!("{}/{}: {e}", suite.name, scenario.name));
                    continue;
                }
            };
            if a.sha256 != b.sha256 {
                let at = super::metrics::first_difference(&a.values, &b.values)
                    .map(|i| {
                        format!(
                            " (first difference at {:?})",
                            super::metrics::unravel(i, &a.shape)
                        )
                    })
                    .unwrap_or_default();
                refusals.push(format!(
                    "{}/{}: two runs differ{at}; a golden must be repeatable",
                    suite.name, scenario.name
                ));
                continue;
            }
            if !a.finite {
                refusals.push(format!(
                    "{}/{}: output holds NaN or Inf",
                    suite.name, scenario.name
                ));
                continue;
            }
            let old = file.scenarios.get(&scenario.name);
            if old.is_some_and(|o| {
                o.sha256.as_deref() == Some(a.sha256.as_str())
                    && o.shape == a.shape
                    && o.dtype == a.dtype
            }) {
                continue; // unchanged: keep the entry and its provenance as they are
            }
            let env_id = a.environment.id();
            let array = scenario
                .store_array
                .then(|| GoldenStore::array_name(&suite.name, &scenario.name, &a.sha256));
            let entry = GoldenEntry {
                shape: a.shape.clone(),
                dtype: a.dtype,
                sha256: Some(a.sha256.clone()),
                metrics: a.metrics.clone(),
                array: array.clone(),
                provenance: Provenance {
                    producer: "reprodiff".into(),
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
                    environment: Some(env_id.clone()),
                },
            };
            changes.push(BlessChange {
                suite: suite.name.clone(),
                scenario: scenario.name.clone(),
                changes: describe_change(old, &entry),
            });
            if let (Some(rel), Some(t)) = (array, a.stored) {
                arrays.push((rel, t));
            }
            file.environments.insert(env_id, a.environment);
            file.scenarios.insert(scenario.name.clone(), entry);
        }
        plans.push((file, arrays));
    }
    if !refusals.is_empty() {
        return Err(Error::BlessRefused(format!(
            "nothing was written:\n  {}",
            refusals.join("\n  ")
        )));
    }
    for (mut file, arrays) in plans {
        if arrays.is_empty() && !changes.iter().any(|c| c.suite == file.suite) {
            continue;
        }
        for (rel, t) in &arrays {
            store.write_array(rel, t)?;
        }
        // Drop fingerprints no entry refers to any more.
        let used: std::collections::HashSet<String> = file
            .scenarios
            .values()
            .filter_map(|e| e.provenance.environment.clone())
            .collect();
        file.environments.retain(|id, _| used.contains(id));
        store.save(&file)?;
    }
    Ok(changes)
}

fn describe_change(old: Option<&GoldenEntry>, new: &GoldenEntry) -> Vec<String> {
    let Some(old) = old else {
        return vec![format!(
            "new golden: sha256 {} sum_abs {}",
            short(&new.sha256),
            new.metrics.get("sum_abs").copied().unwrap_or(f64::NAN)
        )];
    };
    let mut out = vec![format!(
        "sha256: {} -> {}",
        short(&old.sha256),
        short(&new.sha256)
    )];
    if old.shape != new.shape {
        out.push(format!("shape: {:?} -> {:?}", old.shape, new.shape));
    }
    if old.dtype != new.dtype {
        out.push(format!("dtype: {} -> {}", old.dtype, new.dtype));
    }
    for (k, v) in &new.metrics {
        match old.metrics.get(k) {
            Some(o) if o.to_bits() == v.to_bits() => {}
            Some(o) => out.push(format!("{k}: {o} -> {v}")),
            None => out.push(format!("{k}: (none) -> {v}")),
        }
    }
    if old.provenance.producer != new.provenance.producer {
        out.push(format!(
            "producer: {} -> {}",
            old.provenance.producer, new.provenance.producer
        ));
    }
    out
}

fn short(sha: &Option<String>) -> &str {
    sha.as_deref().map_or("(none)", |s| &s[..12])
}
