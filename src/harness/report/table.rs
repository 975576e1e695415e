//! The check table: what `check` prints: one line per scenario that ran (verdict, what it was compared with, the
//! metric that decided), metric rows and notes only where something is to be read (or
//! `--verbose`); the scenarios skipped before running grouped by reason; then counts by verdict
//! and by suite.
use crate::harness::compare::{Match, ScenarioResult, Verdict};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The whole report.
pub fn render(results: &[ScenarioResult], verbose: bool, ci: bool) -> String {
    let mut out = String::new();
    let mut classes: Vec<&str> = results.iter().filter_map(|r| r.class.as_deref()).collect();
    classes.sort();
    classes.dedup();
    for c in &classes {
        let _ = writeln!(out, "host class: {c}");
    }
    if !classes.is_empty() {
        out.push('\n');
    }
    let (skipped, ran): (Vec<ScenarioResult>, Vec<ScenarioResult>) =
        results.iter().cloned().partition(is_skip);
    out.push_str(&lines(&ran, verbose));
    if !skipped.is_empty() {
        out.push('\n');
        out.push_str(&skipped_by_reason(&skipped, verbose));
    }
    out.push('\n');
    out.push_str(&summary(results, ci));
    out
}

/// Skipped before running: not run, or no expectation decided without a run.
fn is_skip(r: &ScenarioResult) -> bool {
    matches!(r.verdict, Verdict::NotRun | Verdict::NoExpectation) && r.output.is_none()
}

/// `"24 not run: <reason>"` and the scenarios' names (the first few; all with `verbose`).
pub fn skipped_by_reason(skipped: &[ScenarioResult], verbose: bool) -> String {
    let mut groups: BTreeMap<(Verdict, &str), Vec<String>> = BTreeMap::new();
    for r in skipped {
        let reason = r.notes.first().map_or("", String::as_str);
        groups
            .entry((r.verdict, reason))
            .or_default()
            .push(format!("{}/{}", r.suite, r.scenario));
    }
    let mut out = String::new();
    for ((verdict, reason), names) in &groups {
        let _ = writeln!(out, "{} {verdict}: {reason}", names.len());
        let shown = if verbose { names.len() } else { 3 };
        let mut list = names[..shown.min(names.len())].join(", ");
        if names.len() > shown {
            let _ = write!(
                list,
                " and {} more (--verbose lists them)",
                names.len() - shown
            );
        }
        let _ = writeln!(out, "    {list}");
    }
    out
}

/// One line per scenario, with details below the ones that are not identical.
pub fn lines(results: &[ScenarioResult], verbose: bool) -> String {
    let width = results
        .iter()
        .map(|r| r.suite.len() + 1 + r.scenario.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in results {
        let name = format!("{}/{}", r.suite, r.scenario);
        let line = format!(
            "{:<16}  {name:<width$}  {}  {}",
            r.verdict.label(),
            compared_with(r),
            decided_by(r)
        );
        let _ = writeln!(out, "{}", line.trim_end());
        if verbose || r.verdict != Verdict::Identical {
            out.push_str(&details(r));
        }
    }
    out
}

/// "same class", "published", `"nearest <class>"`, or "-".
pub fn compared_with(r: &ScenarioResult) -> String {
    match &r.compared_with {
        None => "-".into(),
        Some(c) => match c.how {
            Match::SameClass => format!("same class ({})", c.producer),
            Match::Published => "published".into(),
            Match::NearestClass => format!("nearest class {} ({})", c.class, c.producer),
        },
    }
}

fn decided_by(r: &ScenarioResult) -> String {
    match r.worst_check() {
        Some(c) if c.verdict == Verdict::Identical => c.metric.clone(),
        Some(c) => format!("{} {} ({})", c.metric, c.got, c.tolerance),
        None => String::new(),
    }
}

/// The metric rows and notes of one scenario, indented.
pub fn details(r: &ScenarioResult) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = r
        .checks
        .iter()
        .map(|c| {
            [
                c.metric.clone(),
                format!("expected {}", c.golden),
                format!("got {}", c.got),
                c.tolerance.clone(),
                c.verdict.to_string(),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::from("    ");
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for n in &r.notes {
        let _ = writeln!(out, "    {n}");
    }
    out
}

/// Counts per suite and in total, then the closing line
/// "N passed, N failed, N skipped" (skipped: not run, not comparable, and no expectation
/// outside CI).
pub fn summary(results: &[ScenarioResult], ci: bool) -> String {
    let mut by_suite: BTreeMap<&str, Vec<Verdict>> = BTreeMap::new();
    for r in results {
        by_suite.entry(&r.suite).or_default().push(r.verdict);
    }
    let mut out = String::new();
    for (suite, verdicts) in &by_suite {
        let _ = writeln!(out, "{suite}: {}", counts(verdicts));
    }
    let all: Vec<Verdict> = results.iter().map(|r| r.verdict).collect();
    let passed = all.iter().filter(|v| v.passed()).count();
    let failed = all.iter().filter(|v| v.fails(ci)).count();
    let _ = writeln!(out, "total: {}", counts(&all));
    if !ci && all.contains(&Verdict::NoExpectation) {
        let _ = writeln!(
            out,
            "warning: scenarios without an expectation for this host's class were not checked \
             (in CI, where CI is set, they fail)"
        );
    }
    let _ = writeln!(
        out,
        "{passed} passed, {failed} failed, {} skipped",
        all.len() - passed - failed
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
