//! `reprodiff golden compare --from RESULTS --out DIR`: outputs the oracle made elsewhere (with
//! another torch release, on another host) judged as `check` judges a run of this host, and
//! written as check records (`DIR/records.jsonl`), so `reprodiff report` shows diffusers'
//! drift across torch releases next to reprodiff's across CPUs. Nothing in the goldens changes.
use crate::error::{Error, Result};
use crate::harness::compare;
use crate::harness::golden::merge::{
    is_selected, read_results, read_verified, selected_names, OracleResult,
};
use crate::harness::records::RecordWriter;
use crate::harness::store::GoldenFile;
use crate::harness::suite::{Fixtures, Scenario, Selection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a comparison wrote.
#[derive(Debug)]
pub struct Compared {
    pub records: PathBuf,
    pub scenarios: usize,
    /// Verdict name → count.
    pub verdicts: BTreeMap<String, usize>,
}

pub fn compare_results(
    fixtures: &Fixtures,
    from: &Path,
    out: &Path,
    sel: &Selection,
) -> Result<Compared> {
    let store = fixtures.store();
    let inputs = read_inputs(fixtures, from, sel)?;
    let scenarios = inputs.len();
    let mut writer = RecordWriter::create(out, scenarios)?;
    // The oracle's arrays travel with its records, for the HTML report's images.
    writer.save_outputs = true;
    let mut goldens: BTreeMap<String, Option<GoldenFile>> = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    for input in inputs {
        let (r, scenario) = (&input.result, &input.scenario);
        if !goldens.contains_key(&r.suite) {
            goldens.insert(r.suite.clone(), store.load(&r.suite)?);
        }
        let golden = goldens[&r.suite]
            .as_ref()
            .and_then(|g| g.scenarios.get(&r.scenario));
        let tensor = input.tensor.f_to_kind(r.dtype.kind())?;
        let mut obs = crate::harness::run::observe::describe(tensor, None, 0.0)?;
        obs.environment = r.environment.clone();
        obs.trace = input.trace;
        let result = compare::compare(&r.suite, scenario, &obs, golden, &store);
        *verdicts.entry(result.verdict.to_string()).or_insert(0) += 1;
        writer.append(
            scenario,
            &result,
            Some(&obs.environment),
            obs.stored.as_ref(),
        )?;
    }
    let records = writer.path().to_path_buf();
    writer.finish()?;
    Ok(Compared {
        records,
        scenarios,
        verdicts,
    })
}

/// One selected result, read and verified.
struct Input {
    result: OracleResult,
    scenario: Scenario,
    tensor: tch::Tensor,
    /// The run's per-step latents, where the oracle recorded them: the record's trace, so that
    /// `report` says from which step two releases' outputs part.
    trace: Option<Vec<crate::pipelines::StepTrace>>,
}

/// The selected results of `from`, each with its scenario, its verified output and its
/// per-step trace: all bad input (a result of no scenario here, a missing or altered array)
/// is found before any record is written.
fn read_inputs(fixtures: &Fixtures, from: &Path, sel: &Selection) -> Result<Vec<Input>> {
    let results = read_results(from)?;
    if results.is_empty() {
        return Err(Error::invalid_file(
            from.join("results.jsonl"),
            "no results in this file",
        ));
    }
    let suites = fixtures.select(&Default::default())?;
    let selected = selected_names(fixtures, sel)?;
    let mut inputs = Vec::new();
    for r in results {
        let where_ = format!("{}/{}", r.suite, r.scenario);
        let scenario = r
            .scenario_in(&suites, fixtures, &from.join("results.jsonl"))?
            .clone();
        if !is_selected(&selected, &r.suite, &r.scenario) {
            continue;
        }
        let (tensor, _) = read_verified(&from.join(&r.array), r.dtype, &r.sha256, &where_)?;
        let trace = r.run_trace(from)?;
        inputs.push(Input {
            result: r,
            scenario,
            tensor,
            trace,
        });
    }
    if inputs.is_empty() {
        return Err(Error::invalid_file(
            from.join("results.jsonl"),
            "no result of the selected scenarios in this file",
        ));
    }
    Ok(inputs)
}
