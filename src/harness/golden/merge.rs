//! `reprodiff golden merge`: brings expectations made elsewhere into the golden store.
//!
//! Two sources:
//! - the oracle's results directory (`results.jsonl` and `arrays/`, written by
//!   ci/oracle/goldens.py): one float32 output per scenario, its fingerprint, and for pipeline
//!   scenarios the float64 truth and the sensitivity;
//! - another golden directory (`<suite>.json`, schema 1 or 2), e.g. the oracle's goldens from a
//!   host of another CPU class.
//!
//! Each output becomes the expectation of the class its fingerprint gives (one rule, in
//! [`crate::env::class`]), replacing that class's old expectation; metrics are recomputed here
//! from the arrays, so every golden value has one definition. Arrays are verified against
//! their SHA-256 before anything is written, and the golden JSON is written by
//! [`GoldenStore::save`] (atomic, canonical).
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use crate::harness::compare::BLESSED;
use crate::harness::store::{
    Expectation, GoldenFile, GoldenScenario, GoldenStore, LocalFigures, LocalInputs, Provenance,
    StepTruth, Truth, TruthArray,
};
use crate::harness::suite::{Fixtures, Selection};
use crate::metrics;
use crate::pipelines::StepTrace;
use crate::torch::{tensor_sha256, tensor_to_f64, DType};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One line of the oracle's results.jsonl.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OracleResult {
    pub suite: String,
    pub scenario: String,
    shape: Vec<i64>,
    pub dtype: DType,
    pub sha256: String,
    /// The output .npy, relative to the results directory.
    pub array: String,
    pub environment: Fingerprint,
    provenance: ResultProvenance,
    truth: Option<OracleTruth>,
}

impl OracleResult {
    /// The scenario of `suites` (the fixtures' own, expanded) this result is of; a result of
    /// none is bad input in `file`.
    pub(crate) fn scenario_in<'a>(
        &self,
        suites: &'a [crate::harness::suite::Suite],
        fixtures: &Fixtures,
        file: &Path,
    ) -> Result<&'a crate::harness::suite::Scenario> {
        suites
            .iter()
            .find(|s| s.name == self.suite)
            .and_then(|s| s.scenarios.iter().find(|x| x.name == self.scenario))
            .ok_or_else(|| {
                Error::invalid_file(
                    file,
                    format!(
                        "{}/{} is not a scenario of {}",
                        self.suite,
                        self.scenario,
                        fixtures.suites_dir().display()
                    ),
                )
            })
    }

    /// The run's latent after every scheduler step, as a trace (`None` for a result without
    /// per-step latents). The results hold no timesteps: each step's is -1, "not recorded".
    pub(crate) fn run_trace(&self, from: &Path) -> Result<Option<Vec<StepTrace>>> {
        let Some(steps) = self.truth.as_ref().and_then(|t| t.steps.as_ref()) else {
            return Ok(None);
        };
        let where_ = format!("{}/{}", self.suite, self.scenario);
        let (shape, values) = read_f64(from, &steps.run, &where_)?;
        let n = shape.first().copied().unwrap_or(0).max(1) as usize;
        let per = values.len() / n;
        (0..n)
            .map(|i| {
                let latent = tch::Tensor::from_slice(&values[i * per..(i + 1) * per])
                    .f_reshape(&shape[1..])?;
                StepTrace::of(i, -1, &latent)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// The lines of `<from>/results.jsonl`; a line that does not parse is an error naming it.
pub(crate) fn read_results(from: &Path) -> Result<Vec<OracleResult>> {
    let results = from.join("results.jsonl");
    let text = std::fs::read_to_string(&results).map_err(|e| Error::io(&results, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let bad = |m: String| Error::invalid_file(&results, format!("line {}: {m}", i + 1));
            let r: OracleResult = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            // Every array path stays inside the results folder (crate::paths), so the readers
            // below join them as they are.
            if let Some((a, why)) = r
                .arrays()
                .find_map(|a| crate::paths::why_not_relative(a).map(|why| (a, why)))
            {
                return Err(bad(format!("array '{}' {why}", a.escape_debug())));
            }
            Ok(r)
        })
        .collect()
}

impl OracleResult {
    /// Every array path the result names: its output, its truth and the truth's step arrays.
    fn arrays(&self) -> impl Iterator<Item = &str> {
        let truth = self.truth.as_ref();
        let steps = truth.and_then(|t| t.steps.as_ref());
        std::iter::once(self.array.as_str())
            .chain(truth.map(|t| t.array.as_str()))
            .chain(
                steps
                    .into_iter()
                    .flat_map(|s| s.arrays().map(|a| a.array.as_str())),
            )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultProvenance {
    producer: String,
    tool: String,
    command: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OracleTruth {
    array: String,
    sha256: String,
    sensitivity: f64,
    #[serde(default)]
    components: std::collections::BTreeMap<String, f64>,
    tool: String,
    #[serde(default)]
    steps: Option<OracleSteps>,
}

/// The latent after every scheduler step, [steps, *latent] as float64, of the run, its truth
/// and its nudged run (ci/oracle/truth.py, steps_recorded); and the local pass
/// (ci/oracle/local.py), absent from results made before it: its steps and output, those of its
/// nudged twin, and the truth's inputs it was forced with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OracleSteps {
    run: OracleArray,
    truth: OracleArray,
    nudged: OracleArray,
    #[serde(default)]
    local: Option<OracleArray>,
    #[serde(default)]
    local_nudged: Option<OracleArray>,
    #[serde(default)]
    local_output: Option<OracleArray>,
    #[serde(default)]
    local_nudged_output: Option<OracleArray>,
    #[serde(default)]
    initial: Option<OracleArray>,
    #[serde(default)]
    noise: Option<OracleArray>,
}

/// The local pass of one result, all its arrays present.
struct OracleLocal<'a> {
    local: &'a OracleArray,
    local_nudged: &'a OracleArray,
    local_output: &'a OracleArray,
    local_nudged_output: &'a OracleArray,
    initial: &'a OracleArray,
    noise: Option<&'a OracleArray>,
}

impl OracleSteps {
    fn arrays(&self) -> impl Iterator<Item = &OracleArray> {
        [&self.run, &self.truth, &self.nudged].into_iter().chain(
            [
                &self.local,
                &self.local_nudged,
                &self.local_output,
                &self.local_nudged_output,
                &self.initial,
                &self.noise,
            ]
            .into_iter()
            .flatten(),
        )
    }

    /// The local pass, where the result has one: all of its arrays or none (`noise` only with
    /// eta noise).
    fn local(&self) -> std::result::Result<Option<OracleLocal<'_>>, String> {
        match (
            &self.local,
            &self.local_nudged,
            &self.local_output,
            &self.local_nudged_output,
            &self.initial,
        ) {
            (
                Some(local),
                Some(local_nudged),
                Some(local_output),
                Some(nudged_output),
                Some(initial),
            ) => Ok(Some(OracleLocal {
                local,
                local_nudged,
                local_output,
                local_nudged_output: nudged_output,
                initial,
                noise: self.noise.as_ref(),
            })),
            (None, None, None, None, None) if self.noise.is_none() => Ok(None),
            _ => Err(
                "truth.steps: the local pass needs local, local_nudged, local_output, \
                      local_nudged_output and initial together"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OracleArray {
    array: String,
    sha256: String,
}

/// The golden's per-step truth from the oracle's per-step latents: every element of the
/// truth's latent after each step, stored as [steps, elements], each step's noise response (the
/// rmse between the nudged run and the run), and the local pass's inputs where the result has
/// them.
fn step_truth(
    store: &GoldenStore,
    from: &Path,
    steps: &OracleSteps,
    suite: &str,
    scenario: &str,
) -> Result<StepTruth> {
    let where_ = format!("{suite}/{scenario}");
    let read = |a: &OracleArray| read_f64(from, a, &where_);
    let (run, truth, nudged) = (read(&steps.run)?, read(&steps.truth)?, read(&steps.nudged)?);
    if run.0 != truth.0 || run.0 != nudged.0 || run.0.len() < 2 {
        return Err(Error::invalid_file(
            from.join(&steps.truth.array),
            format!(
                "{where_}: per-step latents of shapes {:?}, {:?}, {:?}: not one [steps, *latent]",
                run.0, truth.0, nudged.0
            ),
        ));
    }
    let n_steps = run.0[0] as usize;
    let per = run.1.len() / n_steps.max(1);
    let noise_response = (0..n_steps)
        .map(|i| {
            let at = |v: &[f64]| v[i * per..(i + 1) * per].to_vec();
            metrics::rmse(&at(&nudged.1), &at(&run.1))
        })
        .collect();
    let name = |kind: &str, sha256: &str| {
        format!(
            "{suite}/{}.{kind}.{}.npy",
            crate::harness::store::slug(scenario),
            &sha256[..12]
        )
    };
    let store_f64 = |kind: &str, shape: &[i64], values: &[f64]| -> Result<TruthArray> {
        let tensor = tch::Tensor::from_slice(values).reshape(shape);
        let sha256 = tensor_sha256(&tensor)?;
        let array = name(kind, &sha256);
        store.write_array(&array, &tensor)?;
        Ok(TruthArray { array, sha256 })
    };
    let latents = store_f64("steps", &[n_steps as i64, per as i64], &truth.1)?;
    let local = match steps
        .local()
        .map_err(|m| Error::invalid_file(from.join("results.jsonl"), format!("{where_}: {m}")))?
    {
        None => None,
        Some(l) => {
            let (shape, initial) = read(l.initial)?;
            let noise = match l.noise {
                Some(a) => {
                    let (shape, values) = read(a)?;
                    Some(store_f64("noise", &shape, &values)?)
                }
                None => None,
            };
            Some(LocalInputs {
                initial: store_f64("initial", &shape, &initial)?,
                noise,
            })
        }
    };
    Ok(StepTruth {
        array: latents.array,
        sha256: latents.sha256,
        noise_response,
        local,
    })
}

/// A float64 array of the oracle's results, verified: its shape and values.
fn read_f64(from: &Path, a: &OracleArray, where_: &str) -> Result<(Vec<i64>, Vec<f64>)> {
    let (t, v) = read_verified(&from.join(&a.array), DType::F64, &a.sha256, where_)?;
    Ok((t.size(), v))
}

/// One class's figures from its result, against the result's own truth (its per-step latents,
/// read once, and its truth output at `truth_output`): per step, rmse(truth, its run) (what
/// `calibrate` sizes the step rule from), and its local figures where it made the local pass.
fn class_figures(
    from: &Path,
    steps: &OracleSteps,
    truth_output: &[f64],
    where_: &str,
) -> Result<(Vec<f64>, Option<LocalFigures>)> {
    let ((shape, truth), (run_shape, run)) = (
        read_f64(from, &steps.truth, where_)?,
        read_f64(from, &steps.run, where_)?,
    );
    if shape != run_shape || shape.is_empty() {
        return Err(Error::invalid_file(
            from.join(&steps.run.array),
            format!(
                "{where_}: the run's per-step latents are {run_shape:?}, the truth's {shape:?}"
            ),
        ));
    }
    let n_steps = shape[0] as usize;
    let per = truth.len() / n_steps.max(1);
    let at = |v: &[f64], i: usize| v[i * per..(i + 1) * per].to_vec();
    let per_step = |a: &[f64], b: &[f64]| -> Vec<f64> {
        (0..n_steps)
            .map(|i| metrics::rmse(&at(a, i), &at(b, i)))
            .collect()
    };
    let step_error = per_step(&truth, &run);
    let Some(l) = steps
        .local()
        .map_err(|m| Error::invalid_file(from.join("results.jsonl"), format!("{where_}: {m}")))?
    else {
        return Ok((step_error, None));
    };
    let read = |a: &OracleArray| Ok::<_, Error>(read_f64(from, a, where_)?.1);
    let (local, nudged) = (read(l.local)?, read(l.local_nudged)?);
    let (output, nudged_output) = (read(l.local_output)?, read(l.local_nudged_output)?);
    if local.len() != truth.len() || nudged.len() != truth.len() {
        return Err(Error::invalid_file(
            from.join(&l.local.array),
            format!("{where_}: the local pass's steps are not the truth's shape"),
        ));
    }
    if output.len() != truth_output.len() || nudged_output.len() != truth_output.len() {
        return Err(Error::invalid_file(
            from.join(&l.local_output.array),
            format!("{where_}: the local pass's output is not the truth's shape"),
        ));
    }
    let local_figures = LocalFigures {
        error: per_step(&local, &truth),
        response: per_step(&nudged, &local),
        output_error: metrics::rmse(&output, truth_output),
        output_response: metrics::rmse(&nudged_output, &output),
    };
    Ok((step_error, Some(local_figures)))
}

/// What a merge did to one suite.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MergeSummary {
    pub suite: String,
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    /// Oracle or published expectations kept where the source had a blessed one.
    pub kept: usize,
    pub truths: usize,
    /// Whether the merge may drop the diffusers expectations and truth of a scenario whose
    /// output changed shape or dtype (`golden merge --replace-changed`); without it, it refuses.
    pub replace_changed: bool,
}

/// Merges `from` (a results directory or a golden directory) into `fixtures`' golden store:
/// the scenarios `sel` selects (all by default).
pub fn merge(
    fixtures: &Fixtures,
    from: &Path,
    replace_changed: bool,
    sel: &Selection,
) -> Result<Vec<MergeSummary>> {
    let mut opened = Opened {
        store: fixtures.store(),
        replace_changed,
        locks: Vec::new(),
        files: BTreeMap::new(),
    };
    let selected = selected_names(fixtures, sel)?;
    if from.join("results.jsonl").is_file() {
        merge_results(fixtures, from, &selected, &mut opened)?;
    } else {
        merge_goldens(from, &selected, &mut opened)?;
    }
    let mut out = Vec::new();
    for (_, (mut file, summary)) in opened.files {
        file.prune_environments();
        opened.store.save(&file)?;
        out.push(summary);
    }
    drop(opened.locks);
    Ok(out)
}

/// The suites' golden files a merge has opened, each read under its lock and held until it is
/// written: a bless or another merge at the same time waits, then reads what this one wrote.
struct Opened {
    store: GoldenStore,
    replace_changed: bool,
    locks: Vec<crate::harness::store::GoldenLock>,
    files: BTreeMap<String, (GoldenFile, MergeSummary)>,
}

impl Opened {
    /// The suite's golden file (an empty one where none exists) and its summary, opened once.
    fn get(&mut self, suite: &str) -> Result<(&GoldenStore, &mut GoldenFile, &mut MergeSummary)> {
        if !self.files.contains_key(suite) {
            self.locks.push(self.store.lock(suite)?);
            let file = self
                .store
                .load(suite)?
                .unwrap_or_else(|| GoldenFile::new(suite));
            let summary = MergeSummary {
                suite: suite.into(),
                replace_changed: self.replace_changed,
                ..Default::default()
            };
            self.files.insert(suite.into(), (file, summary));
        }
        let (file, summary) = self.files.get_mut(suite).expect("opened");
        Ok((&self.store, file, summary))
    }
}

/// Each selected suite's name and its selected scenarios' names.
pub(crate) fn selected_names(
    fixtures: &Fixtures,
    sel: &Selection,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    Ok(fixtures
        .select(sel)?
        .into_iter()
        .map(|s| (s.name, s.scenarios.into_iter().map(|x| x.name).collect()))
        .collect())
}

/// Whether `selected` holds `suite`/`scenario`.
pub(crate) fn is_selected(
    selected: &BTreeMap<String, BTreeSet<String>>,
    suite: &str,
    scenario: &str,
) -> bool {
    selected.get(suite).is_some_and(|s| s.contains(scenario))
}

/// The oracle's results directory: each selected result becomes its class's expectation (a
/// result of no scenario of the fixtures is an error, selected or not).
fn merge_results(
    fixtures: &Fixtures,
    from: &Path,
    selected: &BTreeMap<String, BTreeSet<String>>,
    opened: &mut Opened,
) -> Result<()> {
    let suites = fixtures.select(&Default::default())?;
    let models = fixtures.root.join("models");
    for r in read_results(from)? {
        let scenario = r.scenario_in(&suites, fixtures, from)?;
        if !is_selected(selected, &r.suite, &r.scenario) {
            continue;
        }
        // The oracle loaded the model reprodiff resolves for the scenario: its identity.
        let model = scenario
            .run
            .model()
            .map(|m| crate::loading::model_sha256(m, Some(&models)))
            .transpose()?;
        let name = r.scenario.clone();
        let (store, file, summary) = opened.get(&r.suite)?;
        merge_result(store, from, file, summary, r, scenario.device)?;
        if let Some(s) = file.scenarios.get_mut(&name) {
            s.model_sha256 = model.or(s.model_sha256.take());
        }
    }
    Ok(())
}

/// Another golden directory: the golden file (`<suite>.json`) of each selected suite, its
/// selected scenarios merged into ours. Other files there (tokenizer-ids.json, suites this
/// fixtures tree lacks) are not goldens of ours: named on stderr and left alone.
fn merge_goldens(
    from: &Path,
    selected: &BTreeMap<String, BTreeSet<String>>,
    opened: &mut Opened,
) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(|e| Error::io(from, e))?;
    let mut stems: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    stems.sort();
    let (suites, others): (Vec<String>, Vec<String>) =
        stems.into_iter().partition(|s| selected.contains_key(s));
    for other in &others {
        eprintln!(
            "{}: not the golden of a selected suite; left alone",
            from.join(format!("{other}.json")).display()
        );
    }
    if suites.is_empty() {
        return Err(Error::invalid_file(
            from,
            "neither results.jsonl nor the golden <suite>.json of a selected suite here",
        ));
    }
    let other = GoldenStore::new(from);
    for suite in suites {
        let mut theirs = other.load(&suite)?.expect("the file exists");
        theirs
            .scenarios
            .retain(|name, _| is_selected(selected, &suite, name));
        let (store, file, summary) = opened.get(&suite)?;
        merge_golden(store, &other, file, summary, theirs)?;
    }
    Ok(())
}

fn merge_result(
    store: &GoldenStore,
    from: &Path,
    file: &mut GoldenFile,
    summary: &mut MergeSummary,
    r: OracleResult,
    device: crate::torch::DeviceSpec,
) -> Result<()> {
    let where_ = format!("{}/{}", r.suite, r.scenario);
    let (tensor, values) = read_verified(&from.join(&r.array), r.dtype, &r.sha256, &where_)?;
    let class = r.environment.class(device);
    let env_id = r.environment.id();
    let array = GoldenStore::array_name(&r.suite, &r.scenario, &r.sha256);
    store.write_array(&array, &tensor)?;
    let (step_error, local) = match r
        .truth
        .as_ref()
        .and_then(|t| t.steps.as_ref().map(|st| (t, st)))
    {
        Some((t, st)) => {
            let truth_output =
                read_verified(&from.join(&t.array), DType::F64, &t.sha256, &where_)?.1;
            let (e, l) = class_figures(from, st, &truth_output, &where_)?;
            (Some(e), l)
        }
        None => (None, None),
    };
    let expectation = Expectation {
        class,
        sha256: Some(r.sha256),
        metrics: BTreeMap::from([
            ("sum_abs".to_string(), metrics::sum_abs(&values)),
            ("max_abs".to_string(), metrics::max_abs(&values)),
            ("mean_abs".to_string(), metrics::mean_abs(&values)),
        ]),
        array: Some(array),
        array_sha256: None,
        local,
        step_error,
        provenance: Provenance {
            producer: r.provenance.producer,
            tool: r.provenance.tool,
            command: r.provenance.command,
            environment: Some(env_id.clone()),
        },
    };
    let truth = match r.truth {
        Some(t) => {
            let at = (r.suite.as_str(), r.scenario.as_str(), r.shape.as_slice());
            result_truth(store, from, file, at, &expectation, device, t)?
        }
        None => None,
    };
    file.environments.insert(env_id, r.environment);
    put(
        file,
        summary,
        &r.scenario,
        r.shape,
        r.dtype,
        expectation,
        truth,
    )
}

/// The result's float64 truth as the golden records it (its arrays written), or None where the
/// recorded truth is kept.
fn result_truth(
    store: &GoldenStore,
    from: &Path,
    file: &GoldenFile,
    (suite, scenario, shape): (&str, &str, &[i64]),
    expectation: &Expectation,
    device: crate::torch::DeviceSpec,
    t: OracleTruth,
) -> Result<Option<Truth>> {
    let depth = t
        .steps
        .as_ref()
        .map_or(StepDepth::None, StepDepth::of_results);
    let array = from.join(&t.array);
    let class = &expectation.class;
    if keeps_recorded_truth(
        store, file, scenario, class, shape, device, &t.sha256, &array, depth,
    )? {
        return Ok(None);
    }
    let where_ = format!("{suite}/{scenario}");
    let (tensor, _) = read_verified(&array, DType::F64, &t.sha256, &where_)?;
    let name = truth_array_name(suite, scenario, &t.sha256);
    store.write_array(&name, &tensor)?;
    let steps = t
        .steps
        .as_ref()
        .map(|st| step_truth(store, from, st, suite, scenario))
        .transpose()?;
    Ok(Some(Truth {
        array: name,
        sha256: t.sha256,
        sensitivity: t.sensitivity,
        components: t.components,
        steps,
        provenance: Provenance {
            producer: expectation.provenance.producer.clone(),
            tool: t.tool,
            command: expectation.provenance.command.clone(),
            environment: expectation.provenance.environment.clone(),
        },
    }))
}

fn merge_golden(
    store: &GoldenStore,
    other: &GoldenStore,
    file: &mut GoldenFile,
    summary: &mut MergeSummary,
    theirs: GoldenFile,
) -> Result<()> {
    for (name, scenario) in theirs.scenarios {
        let where_ = format!("{}/{name}", theirs.suite);
        let model = scenario.model_sha256.clone();
        let copy = |rel: &str, dtype: DType, sha: &str| -> Result<()> {
            let (tensor, _) = read_verified(&other.path_of(rel)?, dtype, sha, &where_)?;
            store.write_array(rel, &tensor)
        };
        // Another host's whole golden: its truth comes in only where none is recorded.
        let recorded = file.scenarios.get(&name).is_some_and(|s| {
            s.truth.is_some() && s.shape == scenario.shape && s.dtype == scenario.dtype
        });
        let truth = match scenario.truth {
            Some(t) if !recorded => {
                copy(&t.array, DType::F64, &t.sha256)?;
                for (rel, sha) in t.step_arrays() {
                    copy(rel, DType::F64, sha)?;
                }
                Some(t)
            }
            _ => None,
        };
        for (i, mut e) in scenario.expectations.into_iter().enumerate() {
            match (&e.array, e.sha256.as_ref().or(e.array_sha256.as_ref())) {
                (Some(rel), Some(sha)) => copy(rel, scenario.dtype, sha)?,
                // A published array has no bits: it is taken as it is, and from here on its
                // values' hash finds a changed byte.
                (Some(rel), None) => {
                    let path = other.path_of(rel)?;
                    let t = tch::Tensor::read_npy(&path)
                        .map_err(|e| Error::invalid_file(&path, format!("{where_}: {e}")))?;
                    e.array_sha256 = Some(tensor_sha256(&t.f_to_kind(scenario.dtype.kind())?)?);
                    store.write_array(rel, &t)?;
                }
                _ => {}
            }
            if let Some(id) = &e.provenance.environment {
                file.environments
                    .insert(id.clone(), theirs.environments[id].clone());
            }
            let t = if i == 0 { truth.clone() } else { None };
            put(
                file,
                summary,
                &name,
                scenario.shape.clone(),
                scenario.dtype,
                e,
                t,
            )?;
        }
        if let (Some(m), Some(s)) = (model, file.scenarios.get_mut(&name)) {
            s.model_sha256.get_or_insert(m);
        }
    }
    Ok(())
}

/// How much of the per-step truth a truth holds: none, the latents (with, from an older oracle, a
/// subset of their elements), or the latents and the local pass's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StepDepth {
    None,
    Latents,
    Local,
}

impl StepDepth {
    fn of_results(st: &OracleSteps) -> Self {
        if st.initial.is_some() {
            StepDepth::Local
        } else {
            StepDepth::Latents
        }
    }

    fn of_golden(t: &Truth) -> Self {
        match &t.steps {
            None => StepDepth::None,
            Some(st) if st.local.is_some() => StepDepth::Local,
            Some(_) => StepDepth::Latents,
        }
    }
}

/// Whether the truth already recorded for `scenario` stays, rather than the merged one at
/// `path`: it does unless it was made in the same class as the merged result (a re-recording)
/// or the output's shape changed, or only the merged one holds the per-step truth, or the
/// local pass's inputs (a truth the local pass can start from replaces one it cannot). The float64 truth itself depends a little on the host that
/// made it (measured: Intel Xeon against AMD EPYC truths differ by up to 5e-7 relative on SD
/// scenarios, AMD AVX-512 against AMD AVX2 not at all), so one host's truth is kept for every
/// class's expectation to be measured against, and the difference is said.
#[allow(clippy::too_many_arguments)]
fn keeps_recorded_truth(
    store: &GoldenStore,
    file: &GoldenFile,
    scenario: &str,
    class: &crate::env::EnvClass,
    shape: &[i64],
    device: crate::torch::DeviceSpec,
    sha256: &str,
    path: &Path,
    brings: StepDepth,
) -> Result<bool> {
    let Some(s) = file.scenarios.get(scenario).filter(|s| s.shape == shape) else {
        return Ok(false);
    };
    let Some(old) = &s.truth else {
        return Ok(false);
    };
    if brings > StepDepth::of_golden(old) {
        return Ok(false);
    }
    if old.sha256 == sha256 {
        return Ok(true);
    }
    let made_in = old
        .provenance
        .environment
        .as_ref()
        .and_then(|id| file.environments.get(id))
        .map(|fp| fp.class(device));
    if made_in.as_ref() == Some(class) {
        return Ok(false);
    }
    let (recorded, _) = store.read_array(&old.array)?;
    let merged = tensor_to_f64(
        &tch::Tensor::read_npy(path).map_err(|e| Error::invalid_file(path, e.to_string()))?,
    )?;
    eprintln!(
        "{}/{scenario}: kept the recorded float64 truth (made in {}); this one (made in {class}) \
         differs by rmse {:.3e} = {:.3} of the sensitivity",
        file.suite,
        made_in.map_or("an unknown class".into(), |c| c.to_string()),
        metrics::rmse(&recorded, &merged),
        metrics::rmse(&recorded, &merged) / old.sensitivity.max(f64::MIN_POSITIVE)
    );
    Ok(true)
}

/// Puts one expectation (and a truth) into `file`, counting what changed. An output of another
/// shape or dtype than the scenario's recorded one makes the old expectations meaningless:
/// blessed ones are dropped; diffusers' (oracle or published) and the truth only with
/// `--replace-changed`, else the merge refuses, naming them, and writes nothing.
fn put(
    file: &mut GoldenFile,
    summary: &mut MergeSummary,
    name: &str,
    shape: Vec<i64>,
    dtype: DType,
    e: Expectation,
    truth: Option<Truth>,
) -> Result<()> {
    let s = file
        .scenarios
        .entry(name.to_string())
        .or_insert_with(|| GoldenScenario {
            shape: shape.clone(),
            dtype,
            truth: None,
            expectations: Vec::new(),
            model_sha256: None,
        });
    if s.shape != shape || s.dtype != dtype {
        reset_changed(&file.suite, name, s, summary.replace_changed, shape, dtype)?;
    }
    place(&file.suite, name, s, summary, e);
    if let Some(t) = truth {
        summary.truths += 1;
        s.truth = Some(t);
    }
    Ok(())
}

/// An output of another shape or dtype than the scenario's recorded one: blessed expectations
/// are dropped; diffusers' and the truth only with `replace_changed`, else an error naming them.
fn reset_changed(
    suite: &str,
    name: &str,
    s: &mut GoldenScenario,
    replace_changed: bool,
    shape: Vec<i64>,
    dtype: DType,
) -> Result<()> {
    let diffusers: Vec<String> = s
        .expectations
        .iter()
        .filter(|x| x.provenance.producer != BLESSED)
        .map(|x| format!("{} [{}]", x.provenance.producer, x.class))
        .chain(s.truth.as_ref().map(|_| "the float64 truth".to_string()))
        .collect();
    if !diffusers.is_empty() && !replace_changed {
        return Err(Error::InvalidArgument(format!(
            "{}/{name}: the output is now {dtype} {shape:?} (was {} {:?}); merging would drop \
             {}. Nothing was written. If the scenario changed on purpose, re-record its \
             classes with the oracle and merge with --replace-changed",
            suite,
            s.dtype,
            s.shape,
            diffusers.join(", ")
        )));
    }
    eprintln!(
        "{}/{name}: the output is now {dtype} {shape:?} (was {} {:?}): dropping {} old expectation(s)",
        suite,
        s.dtype,
        s.shape,
        s.expectations.len()
    );
    *s = GoldenScenario {
        shape,
        dtype,
        truth: None,
        expectations: Vec::new(),
        model_sha256: None,
    };
    Ok(())
}

/// Puts `e` in place of its class's expectation, counting whether it was added, replaced, kept
/// out (diffusers' is never replaced by a blessed one) or unchanged.
fn place(
    suite: &str,
    name: &str,
    s: &mut GoldenScenario,
    summary: &mut MergeSummary,
    e: Expectation,
) {
    match s.expectation(&e.class) {
        Some(old)
            if old.sha256 == e.sha256
                && old.metrics == e.metrics
                && old.array_sha256 == e.array_sha256 =>
        {
            summary.unchanged += 1;
            // The same output, measured again with figures the old one lacks: they come in.
            let mut e = e;
            e.local = e.local.or_else(|| old.local.clone());
            e.step_error = e.step_error.or_else(|| old.step_error.clone());
            if e.local != old.local || e.step_error != old.step_error {
                s.put(e);
            }
        }
        // What diffusers computed is never replaced by what reprodiff blessed.
        Some(old) if e.provenance.producer == BLESSED && old.provenance.producer != BLESSED => {
            summary.kept += 1;
            eprintln!(
                "{}/{name} [{}]: kept the {} expectation ({}); not merged over it: {}",
                suite,
                e.class,
                old.provenance.producer,
                described(old),
                described(&e)
            );
        }
        Some(old) => {
            summary.replaced += 1;
            eprintln!(
                "{}/{name} [{}]: replaced {} -> {}",
                suite,
                e.class,
                described(old),
                described(&e)
            );
            s.put(e);
        }
        None => {
            summary.added += 1;
            s.put(e);
        }
    }
}

/// "oracle sha256 0123456789ab": who made an expectation and its bits.
fn described(e: &Expectation) -> String {
    let sha = e
        .sha256
        .as_deref()
        .map_or("(none)", |s| &s[..12.min(s.len())]);
    format!("{} sha256 {sha}", e.provenance.producer)
}

/// The truth array's file name, beside the expectations' arrays.
pub fn truth_array_name(suite: &str, scenario: &str, sha256: &str) -> String {
    format!(
        "{suite}/{}.truth.{}.npy",
        crate::harness::store::slug(scenario),
        &sha256[..12]
    )
}

pub(crate) use crate::harness::store::read_verified;
