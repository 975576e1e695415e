//! `reprodiff report RECORDS... --against REV`: today's records against the goldens as they
//! were at git revision REV, so a maintainer sees what an upgrade (of libtorch, diffusers,
//! reprodiff) moved. The goldens of REV become a baseline record set: for each scenario a set
//! ran, the expectation REV held for that run's class.
use crate::error::{Error, Result};
use crate::harness::report::drift::{Entry, RecordSet};
use crate::harness::store::GoldenStore;
use std::path::Path;

fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| Error::io("git", e))?;
    if !out.status.success() {
        return Err(Error::InvalidArgument(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The baseline set for `sets` from the golden files of `fixtures` (a folder inside a git
/// work tree) at revision `rev`. An unknown revision is exit 2 naming it.
pub fn baseline_at(fixtures: &Path, rev: &str, sets: &[RecordSet]) -> Result<RecordSet> {
    let fixtures = fixtures
        .canonicalize()
        .map_err(|e| Error::io(fixtures, e))?;
    let top = String::from_utf8_lossy(&git(&fixtures, &["rev-parse", "--show-toplevel"])?)
        .trim()
        .to_string();
    let golden_rel = fixtures
        .join("golden")
        .strip_prefix(&top)
        .map_err(|_| Error::InvalidArgument(format!("{} is not inside {top}", fixtures.display())))?
        .to_string_lossy()
        .to_string();
    let commit = String::from_utf8_lossy(&git(
        &fixtures,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )?)
    .trim()
    .to_string();
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let top = Path::new(&top);
    let listing = git(
        top,
        &["ls-tree", "--name-only", &commit, &format!("{golden_rel}/")],
    )?;
    for path in String::from_utf8_lossy(&listing).lines() {
        if let Some(name) = path
            .strip_suffix(".json")
            .and_then(|p| p.rsplit('/').next())
        {
            let text = git(top, &["show", &format!("{commit}:{path}")])?;
            let file = tmp.path().join(format!("{name}.json"));
            std::fs::write(&file, text).map_err(|e| Error::io(&file, e))?;
        }
    }
    let store = GoldenStore::new(tmp.path());
    let mut entries = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in sets.iter().flat_map(|s| &s.entries) {
        if !seen.insert((e.name.clone(), e.class.clone())) {
            continue;
        }
        let Some((suite, scenario)) = e.name.split_once('/') else {
            continue;
        };
        let Ok(Some(file)) = store.load(suite) else {
            continue;
        };
        let Some(x) = file.scenarios.get(scenario).and_then(|s| {
            s.expectations
                .iter()
                .find(|x| x.class.to_string() == e.class)
        }) else {
            continue;
        };
        entries.push(Entry {
            name: e.name.clone(),
            verdict: crate::harness::compare::Verdict::Identical,
            class: e.class.clone(),
            l_inf: None,
            rmse_truth: None,
            dtype: None,
            truth_step_ulps: None,
            sha256: x.sha256.clone(),
            elapsed_s: None,
            trace: Vec::new(),
            array: None,
            unseeded: false,
        });
    }
    Ok(RecordSet {
        label: format!("goldens@{}", &commit[..12.min(commit.len())]),
        entries,
        unreadable: Vec::new(),
        incomplete: Vec::new(),
        duplicates: 0,
        conflicts: Vec::new(),
    })
}
