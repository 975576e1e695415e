//! `report`, `localize`, `golden compare` and `golden merge`: reading records, finding where two
//! runs part, and keeping the goldens.
use super::select::{exists, SelectArgs};
use crate::env::Fingerprint;
use crate::error::{exit, Error, Result};
use crate::harness::golden::{ingest, merge};
use crate::harness::localize;
use crate::harness::report::{against, drift, html, recorded};
use std::path::{Path, PathBuf};

/// The fixtures tree `--fixtures` (or the default) names, for a command without a selection.
fn fixtures_root(fixtures: Option<PathBuf>) -> Result<crate::harness::suite::Fixtures> {
    SelectArgs {
        suites: Vec::new(),
        filter: None,
        fixtures,
    }
    .fixtures()
}

/// `localize`: one scenario (its activation dumps kept), or every scenario `filter` matches.
pub(crate) fn localize(args: &super::LocalizeArgs) -> Result<i32> {
    let super::LocalizeArgs {
        suite,
        scenario,
        filter,
        a,
        b,
        out,
        fixtures,
    } = args;
    let (scenario, filter) = (scenario.as_deref(), filter.as_deref());
    let isa = Fingerprint::current()?.cpu.isa;
    let exe = std::env::current_exe().map_err(|e| Error::io("reprodiff", e))?;
    let fx = fixtures_root(fixtures.clone())?;
    if let Some(scenario) = scenario {
        let l = localize::localize(&exe, &fx, suite, scenario, a, b, &isa, out)?;
        println!("{suite}/{scenario}: {}", l.sentence);
        if l.a.captured.is_some() {
            println!(
                "activations: {} and {}",
                l.a.dumps.display(),
                l.b.dumps.display()
            );
        }
        return Ok(exit::OK);
    }
    let records = localize::localize_many(&exe, &fx, suite, filter, a, b, &isa, out, |r| {
        println!("{}/{}: {}", r.suite, r.scenario, r.sentence)
    })?;
    let count = |o: &str| records.iter().filter(|r| r.outcome == o).count();
    println!(
        "{} of {} differ, {} failed, {} not run; {}",
        count("differs"),
        records.len(),
        count("failed"),
        count("not run"),
        out.join("localize.jsonl").display()
    );
    Ok(if count("failed") > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// `report`: the drift report over record folders, against a baseline folder or the goldens of
/// a git revision, as Markdown, JSON or one HTML page.
pub(crate) fn report(args: &super::ReportArgs) -> Result<i32> {
    let super::ReportArgs {
        records,
        baseline,
        against: against_rev,
        fixtures,
        format,
        localized,
    } = args;
    let (baseline, against_rev) = (baseline.as_deref(), against_rev.as_deref());
    for dir in records {
        exists("RECORDS_DIR", dir)?;
    }
    if let Some(dir) = baseline {
        exists("--baseline", dir)?;
    }
    for file in localized {
        exists("--localized", file)?;
    }
    let sets = records
        .iter()
        .map(|d| recorded::load(d))
        .collect::<Result<Vec<_>>>()?;
    let base = match (baseline, against_rev) {
        (Some(dir), _) => Some(recorded::load(dir)?),
        (None, Some(rev)) => {
            let root = fixtures_root(fixtures.clone())?.root;
            Some(against::baseline_at(&root, rev, &sets)?)
        }
        (None, None) => None,
    };
    let mut report = drift::summarize(&sets, base.as_ref());
    drift::annotate(&mut report, &drift::load_localized(localized)?);
    match format {
        super::ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serialises")
        ),
        super::ReportFormat::Html => print!("{}", html::html(&report, &sets, base.as_ref())),
        super::ReportFormat::Md => print!("{}", drift::markdown(&report)),
    }
    Ok(exit::OK)
}

/// `golden compare`: the oracle's outputs from elsewhere judged as `check` judges a run.
pub(crate) fn golden_compare(from: &Path, out: &Path, sel: &SelectArgs) -> Result<i32> {
    exists("--from", from)?;
    let c = ingest::compare_results(&sel.fixtures()?, from, out, &sel.selection())?;
    let counts: Vec<String> = c.verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    println!(
        "{} results compared: {}; records: {}",
        c.scenarios,
        counts.join(", "),
        c.records.display()
    );
    Ok(exit::OK)
}

/// `golden merge`: the oracle's results or another golden folder into the goldens.
pub(crate) fn golden_merge(
    from: &Path,
    golden_dir: Option<PathBuf>,
    replace_changed: bool,
    sel: &SelectArgs,
) -> Result<i32> {
    exists("--from", from)?;
    let mut fixtures = sel.fixtures()?;
    if let Some(dir) = golden_dir {
        fixtures.golden = dir;
    }
    for m in merge::merge(&fixtures, from, replace_changed, &sel.selection())? {
        println!(
            "{}: {} expectation(s) added, {} replaced, {} unchanged, {} kept over a \
             blessed one; {} truth(s) written",
            m.suite, m.added, m.replaced, m.unchanged, m.kept, m.truths
        );
    }
    Ok(exit::OK)
}
