//! Folders of recorded runs (python/reprodiff-record's `record`, `reprodiff run ... --trace`)
//! as a report's record set, so that `reprodiff report` takes them wherever it takes check
//! records: two folders of the same calls (before and after an upgrade, on two machines) compare
//! as two hosts' records do, run by run, with the first step where each pair parts and, in
//! HTML, the curves and image triples.
//!
//! Each run is one entry named `recorded/NAME` (its record's `name`, else its folder's name),
//! in the class reprodiff computes from its fingerprint, with the sum_abs of every step's latent
//! read from its arrays and, where it carries a float64 truth, its output's rmse to that truth.
//! A recorded run was judged against nothing, so its verdict is "no expectation": the report
//! says what changed between folders, not whether a run passed.
use super::drift::{Entry, RecordSet};
use super::run_diff::values;
use crate::error::{Error, Result};
use crate::harness::compare::Verdict;
use crate::harness::run_record::{self, RunRecord};
use crate::metrics;
use std::path::{Path, PathBuf};

/// The record set `report` reads from `dir`: its recorded runs where it holds any (a run.json
/// in it or in its subfolders), else its check records ([`super::drift::load`]).
pub fn load(dir: &Path) -> Result<RecordSet> {
    match runs(dir)? {
        Some(set) => Ok(set),
        None => super::drift::load(dir),
    }
}

/// The recorded runs in `dir` (a run's own folder, or a folder of run folders), each read and
/// verified ([`run_record::read`]: a bad record is an error naming its file); `None` where
/// `dir` holds no run.json at either level.
fn runs(dir: &Path) -> Result<Option<RecordSet>> {
    let folders = run_folders(dir)?;
    if folders.is_empty() {
        return Ok(None);
    }
    let entries = folders
        .iter()
        .map(|f| entry(f))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(RecordSet {
        label: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        entries,
        unreadable: Vec::new(),
        incomplete: Vec::new(),
        duplicates: 0,
        conflicts: Vec::new(),
    }))
}

fn run_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("run.json").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut folders = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        if path.join("run.json").is_file() {
            folders.push(path);
        }
    }
    folders.sort();
    Ok(folders)
}

fn entry(folder: &Path) -> Result<Entry> {
    let r = run_record::read(folder)?.record;
    let name = r.name.clone().unwrap_or_else(|| {
        folder.file_name().map_or_else(
            || folder.display().to_string(),
            |n| n.to_string_lossy().into(),
        )
    });
    let trace = r
        .steps
        .iter()
        .map(|s| {
            let sum_abs = metrics::sum_abs(&values(folder, &s.file)?);
            Ok((s.step as u64 - 1, s.timestep.round() as i64, sum_abs))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Entry {
        name: format!("recorded/{name}"),
        verdict: Verdict::NoExpectation,
        class: r.class().to_string(),
        l_inf: None,
        rmse_truth: rmse_truth(folder, &r)?,
        dtype: r.output.as_ref().map(|o| o.dtype.to_string()),
        truth_step_ulps: None,
        sha256: r.output.as_ref().map(|o| o.sha256.clone()),
        elapsed_s: None,
        trace,
        array: r
            .output
            .as_ref()
            .map(|o| crate::paths::join(folder, &o.file, "run record array"))
            .transpose()?,
        unseeded: r
            .call
            .get("generator")
            .is_some_and(serde_json::Value::is_null),
    })
}

/// rmse(truth's output, output) where the run carries a truth of its output's shape.
fn rmse_truth(folder: &Path, r: &RunRecord) -> Result<Option<f64>> {
    let truth = r.truth.as_ref().and_then(|t| t.output.as_ref());
    match (&r.output, truth) {
        (Some(o), Some(t)) if o.shape == t.shape => Ok(Some(metrics::rmse(
            &values(folder, &t.file)?,
            &values(folder, &o.file)?,
        ))),
        _ => Ok(None),
    }
}
