//! The check table a person reads, and the one-line summary.
use super::check::{ScenarioResult, Verdict};
use std::collections::BTreeMap;
use std::fmt::Write;

const HEADERS: [&str; 7] = [
    "scenario",
    "metric",
    "golden",
    "got",
    "delta",
    "tolerance",
    "verdict",
];

/// One row per metric checked (one row per scenario that has none), then its notes indented.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut rows: Vec<([String; 7], Vec<String>)> = Vec::new();
    for r in results {
        let name = format!("{}/{}", r.suite, r.scenario);
        if r.checks.is_empty() {
            rows.push((
                [
                    name,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    r.verdict.to_string(),
                ],
                r.notes.clone(),
            ));
            continue;
        }
        for (i, c) in r.checks.iter().enumerate() {
            let last = i + 1 == r.checks.len();
            rows.push((
                [
                    name.clone(),
                    c.metric.to_string(),
                    c.golden.clone(),
                    c.got.clone(),
                    c.delta.map_or("-".into(), |d| d.to_string()),
                    c.tolerance.clone(),
                    c.verdict.to_string(),
                ],
                if last { r.notes.clone() } else { Vec::new() },
            ));
        }
    }
    let mut widths = HEADERS.map(str::len);
    for (cells, _) in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let _ = write!(s, "{c:<w$}");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &HEADERS.map(String::from));
    for (cells, notes) in &rows {
        line(&mut out, cells);
        for n in notes {
            let _ = writeln!(out, "    {n}");
        }
    }
    out
}

/// "rng: 96 scenarios: 95 identical, 1 drifted" per suite, then the total.
pub fn summary(results: &[ScenarioResult]) -> String {
    let mut by_suite: BTreeMap<&str, Vec<Verdict>> = BTreeMap::new();
    for r in results {
        by_suite.entry(&r.suite).or_default().push(r.verdict);
    }
    let mut out = String::new();
    for (suite, verdicts) in &by_suite {
        let _ = writeln!(out, "{suite}: {}", counts(verdicts));
    }
    let all: Vec<Verdict> = results.iter().map(|r| r.verdict).collect();
    let failed = all.iter().filter(|v| !v.passed()).count();
    let _ = writeln!(
        out,
        "total: {}\n{} passed, {} failed",
        counts(&all),
        all.len() - failed,
        failed
    );
    out
}

fn counts(verdicts: &[Verdict]) -> String {
    let mut n: BTreeMap<Verdict, usize> = BTreeMap::new();
    for v in verdicts {
        *n.entry(*v).or_default() += 1;
    }
    let parts: Vec<String> = n.iter().map(|(v, k)| format!("{k} {v}")).collect();
    format!("{} scenarios: {}", verdicts.len(), parts.join(", "))
}
