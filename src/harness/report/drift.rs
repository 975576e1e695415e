//! Drift reports over the records `check` writes (`--out DIR`, one JSON per scenario): per
//! environment class, what was identical, within tolerance, drifted, failed or not run and the
//! worst drift; and, against a baseline set, what newly drifted or was fixed, in the style of
//! boa's test262 compare, and for every scenario whose output changed, the first denoising step
//! where the two runs part (from the records' per-step traces). Markdown, for a pull-request
//! comment.
//!
//! Records are read through [`records`], old schemas too.
use crate::error::{Error, Result};
use crate::harness::compare::Verdict;
use crate::harness::records::{self, Record};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What the report needs of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `suite/scenario`.
    pub name: String,
    pub verdict: Verdict,
    pub class: String,
    /// The largest l_inf a metric row reported against the expectation, if any.
    pub l_inf: Option<f64>,
    /// rmse(truth, output): the cross-class rule's row, or the output's own `rmse_truth`.
    pub rmse_truth: Option<f64>,
    /// The output's dtype ("f32", "bf16", ...), where it ran.
    pub dtype: Option<String>,
    /// The run's worst comparable step against the per-step truth, in noise responses.
    pub truth_step_ulps: Option<f64>,
    pub sha256: Option<String>,
    /// Seconds the run took (the scenario's own work, without loading in the parent).
    pub elapsed_s: Option<f64>,
    /// (step, timestep, sum_abs) of the latent after each denoising step.
    pub trace: Vec<(u64, i64, f64)>,
    /// The output array (`check --save-outputs`), resolved against the record's folder.
    pub array: Option<PathBuf>,
    /// An unseeded run (a fresh OS seed each time): two of its records may differ.
    pub unseeded: bool,
}

/// A set of records: one host or one run, labelled by its folder.
#[derive(Debug, Clone)]
pub struct RecordSet {
    pub label: String,
    pub entries: Vec<Entry>,
    /// Files and lines that could not be read, with why; the rest was read.
    pub unreadable: Vec<String>,
    /// Runs that started and never ended ([`records::Read::incomplete`]).
    pub incomplete: Vec<String>,
    /// Records dropped as copies of another (same scenario, class and output).
    pub duplicates: usize,
    /// "suite/scenario (class)" with records of different outputs in one class.
    pub conflicts: Vec<String>,
}

/// Reads every record under `dir` ([`records::read`]): a line or file that is not a record
/// is named (file and line) in `unreadable` and skipped; the rest is read. A folder without
/// any readable record is an error (exit 2) that says why. (`report` reads folders of recorded
/// runs too, through [`super::recorded::load`].)
pub fn load(dir: &Path) -> Result<RecordSet> {
    let read = records::read(dir)?;
    let mut set = RecordSet {
        label: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        entries: read
            .records
            .iter()
            .map(|(file, r)| Entry::of(r, file))
            .collect(),
        unreadable: read.unreadable,
        incomplete: read.incomplete,
        duplicates: 0,
        conflicts: Vec::new(),
    };
    if set.entries.is_empty() {
        let why = if set.unreadable.is_empty() && dir.join("records.jsonl").is_file() {
            let mut why = "records.jsonl holds no record".to_string();
            if let Some(i) = set.incomplete.first() {
                why = format!("{why}: {i}");
            }
            why
        } else if set.unreadable.is_empty() {
            "no records.jsonl here, nor *.json records of schema 1".to_string()
        } else {
            format!(
                "nothing in it is a readable check record: {}",
                set.unreadable.join("; ")
            )
        };
        return Err(Error::invalid_file(dir, why));
    }
    set.dedupe();
    Ok(set)
}

impl Entry {
    /// What the report needs of `record`, read from `file`.
    pub fn of(record: &Record, file: &Path) -> Self {
        let r = &record.result;
        let metric = |name: &str| {
            r.checks
                .iter()
                .filter(|c| c.metric == name)
                .filter_map(|c| c.got.parse::<f64>().ok())
                .reduce(f64::max)
        };
        let out = r.output.as_ref();
        Entry {
            name: format!("{}/{}", r.suite, r.scenario),
            verdict: r.verdict,
            class: r
                .class
                .clone()
                .unwrap_or_else(|| "(not run: no class)".into()),
            l_inf: metric("l_inf"),
            rmse_truth: metric("rmse_truth")
                .or_else(|| out.and_then(|o| o.metrics.get("rmse_truth").copied())),
            dtype: out.map(|o| o.dtype.clone()),
            truth_step_ulps: out.and_then(|o| o.metrics.get("truth_step_ulps").copied()),
            sha256: out.map(|o| o.sha256.clone()),
            elapsed_s: out.map(|o| o.elapsed_s),
            trace: out
                .and_then(|o| o.trace.as_ref())
                .map(|t| {
                    t.iter()
                        .map(|s| (s.step as u64, s.timestep, s.sum_abs))
                        .collect()
                })
                .unwrap_or_default(),
            // An array path from a records file stays beside it.
            array: record
                .array
                .as_deref()
                .filter(|a| crate::paths::why_not_relative(a).is_none())
                .map(|a| file.with_file_name(a)),
            unseeded: out.is_some_and(|o| o.unseeded_seed.is_some()),
        }
    }
}

impl RecordSet {
    /// Counts a record of the same scenario, class and output as one seen before once, as a
    /// duplicate; names a scenario whose records in one class hold different outputs as
    /// conflicting (unseeded scenarios draw a fresh seed each run, so they are left alone).
    fn dedupe(&mut self) {
        let mut seen: BTreeMap<(String, String), Vec<Option<String>>> = BTreeMap::new();
        let mut kept = Vec::new();
        for e in std::mem::take(&mut self.entries) {
            let outputs = seen.entry((e.name.clone(), e.class.clone())).or_default();
            if outputs.contains(&e.sha256) {
                self.duplicates += 1;
                continue;
            }
            if !outputs.is_empty() && !e.unseeded {
                self.conflicts.push(format!("{} ({})", e.name, e.class));
            }
            outputs.push(e.sha256.clone());
            kept.push(e);
        }
        self.conflicts.sort();
        self.conflicts.dedup();
        self.entries = kept;
    }
}

/// The report's content, rendered as Markdown ([`markdown`]) or JSON (serde).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema: u32,
    /// Every set, the baseline last.
    pub sets: Vec<SetSummary>,
    /// Against the baseline, one row per other set.
    pub audit: Vec<AuditRow>,
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetSummary {
    pub label: String,
    pub classes: Vec<ClassSummary>,
    pub unreadable: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
    /// Records counted once because another had the same scenario, class and output.
    #[serde(skip_serializing_if = "is_zero")]
    pub duplicates: usize,
    /// Scenarios with records of different outputs in one class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSummary {
    pub class: String,
    pub scenarios: usize,
    /// Count per verdict, in [`Verdict::ALL`] order, zeros included.
    pub verdicts: Vec<(String, usize)>,
    pub worst_l_inf: Option<Worst>,
    pub worst_rmse_truth: Option<Worst>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Worst {
    pub value: f64,
    pub scenario: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub set: String,
    /// Scenarios both this set and the baseline ran, with times.
    pub scenarios: usize,
    pub seconds: f64,
    pub baseline_seconds: f64,
    /// How many kept the baseline's bits.
    pub same_bits: usize,
    /// The largest l_inf to the expectation a check reported.
    pub worst_l_inf: Option<f64>,
    pub worst_rmse_truth: Option<f64>,
    /// Median over scenarios of rmse(truth, this set) / rmse(truth, baseline): how much
    /// farther from the float64 truth the setting takes a typical output.
    pub truth_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub base: String,
    pub new: String,
    /// (verdict, count in base, count in new), for verdicts either has.
    pub verdicts: Vec<(String, usize, usize)>,
    /// "New", "Newly drifted or failed", "Newly fixed", "Missing", "First divergence".
    pub groups: BTreeMap<String, Vec<String>>,
}

/// The report of `sets`, each compared with `baseline` when there is one. A set that is the
/// baseline itself (`report matrix/* --baseline matrix/native`) is summarized once, keeps its
/// audit row (1.00x, the reference) and is not compared with itself.
pub fn summarize(sets: &[RecordSet], baseline: Option<&RecordSet>) -> Report {
    let is_base = |s: &RecordSet| baseline.is_some_and(|b| b.label == s.label);
    let extra = baseline.filter(|b| !sets.iter().any(|s| s.label == b.label));
    Report {
        schema: 1,
        sets: sets.iter().chain(extra).map(summarize_set).collect(),
        audit: baseline.map_or_else(Vec::new, |b| sets.iter().map(|s| audit_row(b, s)).collect()),
        comparisons: baseline.map_or_else(Vec::new, |b| {
            sets.iter()
                .filter(|s| !is_base(s))
                .map(|s| compare(b, s))
                .collect()
        }),
    }
}

fn summarize_set(set: &RecordSet) -> SetSummary {
    let mut by_class: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in &set.entries {
        by_class.entry(&e.class).or_default().push(e);
    }
    let worst = |entries: &[&Entry], pick: fn(&Entry) -> Option<f64>| {
        entries
            .iter()
            .filter_map(|e| pick(e).map(|d| (d, &e.name)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(value, name)| Worst {
                value,
                scenario: name.clone(),
            })
    };
    SetSummary {
        label: set.label.clone(),
        classes: by_class
            .into_iter()
            .map(|(class, entries)| ClassSummary {
                class: class.into(),
                scenarios: entries.len(),
                verdicts: Verdict::ALL
                    .iter()
                    .map(|v| (v.key(), entries.iter().filter(|e| e.verdict == *v).count()))
                    .collect(),
                worst_l_inf: worst(&entries, |e| e.l_inf),
                worst_rmse_truth: worst(&entries, |e| e.rmse_truth),
            })
            .collect(),
        unreadable: set.unreadable.clone(),
        incomplete: set.incomplete.clone(),
        duplicates: set.duplicates,
        conflicts: set.conflicts.clone(),
    }
}

/// The optimisation audit row of `set`: over the scenarios both it and the baseline ran, the
/// time it took against the baseline's, next to what it cost in bits and in distance from the
/// truth. With `matrix` sets, each row is one knob (a CPU class, a thread count).
fn audit_row(base: &RecordSet, set: &RecordSet) -> AuditRow {
    let base_by: BTreeMap<&str, &Entry> =
        base.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let both: Vec<(&Entry, &Entry)> = set
        .entries
        .iter()
        .filter_map(|e| Some((*base_by.get(e.name.as_str())?, e)))
        .filter(|(b, e)| b.elapsed_s.is_some() && e.elapsed_s.is_some())
        .collect();
    AuditRow {
        set: set.label.clone(),
        scenarios: both.len(),
        // `+ 0.0`: an empty f64 sum is -0.0, which would print as "-0.000".
        seconds: both.iter().filter_map(|p| p.1.elapsed_s).sum::<f64>() + 0.0,
        baseline_seconds: both.iter().filter_map(|p| p.0.elapsed_s).sum::<f64>() + 0.0,
        same_bits: both
            .iter()
            .filter(|(b, e)| b.sha256.is_some() && b.sha256 == e.sha256)
            .count(),
        worst_l_inf: both.iter().filter_map(|(_, e)| e.l_inf).reduce(f64::max),
        worst_rmse_truth: both
            .iter()
            .filter_map(|(_, e)| e.rmse_truth)
            .reduce(f64::max),
        truth_ratio: median(
            both.iter()
                .filter_map(|(b, e)| match (b.rmse_truth, e.rmse_truth) {
                    (Some(rb), Some(re)) if rb > 0.0 => Some(re / rb),
                    _ => None,
                })
                .collect(),
        ),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `base` → `new`: counts per verdict, then newly drifted, newly fixed, new and missing
/// scenarios, each "(previously X)", and where changed outputs first part.
fn compare(base: &RecordSet, new: &RecordSet) -> Comparison {
    let by_name = |s: &'_ RecordSet| -> BTreeMap<String, Entry> {
        s.entries
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    };
    let (b, n) = (by_name(base), by_name(new));
    let verdicts = Verdict::ALL
        .iter()
        .map(|v| {
            let count =
                |m: &BTreeMap<String, Entry>| m.values().filter(|e| e.verdict == *v).count();
            (v.key(), count(&b), count(&n))
        })
        .filter(|(_, cb, cn)| *cb != 0 || *cn != 0)
        .collect();
    let good = |v: Verdict| v.passed();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |group: &str, line: String| groups.entry(group.into()).or_default().push(line);
    for (name, e) in &n {
        let v = e.verdict;
        let Some(old) = b.get(name) else {
            add("New", format!("{name}: {}", v.key()));
            continue;
        };
        let (now, was) = (v.key(), old.verdict.key());
        if good(old.verdict) && !good(v) && v != Verdict::NotRun {
            add(
                "Newly drifted or failed",
                format!("{name}: {now} (previously {was})"),
            );
        } else if !good(old.verdict) && good(v) {
            add("Newly fixed", format!("{name}: {now} (previously {was})"));
        }
        if let (Some(x), Some(y)) = (&old.sha256, &e.sha256) {
            if x != y {
                add(
                    "First divergence",
                    format!("{name}: {}", first_divergence(&old.trace, &e.trace)),
                );
            }
        }
    }
    for name in b.keys().filter(|k| !n.contains_key(*k)) {
        add("Missing", name.clone());
    }
    Comparison {
        base: base.label.clone(),
        new: new.label.clone(),
        verdicts,
        groups,
    }
}

/// The Markdown form, for a pull-request comment: one table per set (rows: classes), the
/// optimisation audit, then each set against the baseline with collapsible lists.
pub fn markdown(report: &Report) -> String {
    let mut out = String::from("# reprodiff drift report\n");
    for set in &report.sets {
        markdown_set(&mut out, set);
    }
    if let Some(base) = report.comparisons.first().map(|c| &c.base) {
        markdown_audit(&mut out, base, &report.audit);
    }
    for c in &report.comparisons {
        markdown_comparison(&mut out, c);
    }
    out
}

/// One set's table (rows: classes) and what could not be counted.
fn markdown_set(out: &mut String, set: &SetSummary) {
    let _ = writeln!(out, "\n## {}\n", set.label);
    out.push_str("| class | scenarios |");
    for v in Verdict::ALL {
        let _ = write!(out, " {} |", v.label());
    }
    out.push_str(" worst l_inf | worst rmse to truth |\n|---|---|");
    out.push_str(&"---|".repeat(Verdict::ALL.len() + 2));
    out.push('\n');
    for c in &set.classes {
        let _ = write!(out, "| `{}` | {} |", c.class, c.scenarios);
        for (_, k) in &c.verdicts {
            let _ = write!(out, " {k} |");
        }
        for worst in [&c.worst_l_inf, &c.worst_rmse_truth] {
            match worst {
                Some(w) if w.value > 0.0 => {
                    let _ = write!(out, " {:.3e} ({}) |", w.value, w.scenario);
                }
                Some(_) => out.push_str(" 0 |"),
                None => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    for u in &set.unreadable {
        let _ = writeln!(out, "\nunreadable, skipped: {u}");
    }
    for i in &set.incomplete {
        let _ = writeln!(out, "\nincomplete run: {i}");
    }
    if set.duplicates > 0 {
        let _ = writeln!(
            out,
            "\n{} duplicate record(s) (same scenario, class and output as another) counted once",
            set.duplicates
        );
    }
    for c in &set.conflicts {
        let _ = writeln!(
            out,
            "\nconflicting: {c} has records with different outputs in one class"
        );
    }
}

/// The optimisation audit: each set's time, speed-up and accuracy against the baseline `base`.
fn markdown_audit(out: &mut String, base: &str, audit: &[AuditRow]) {
    let _ = write!(
        out,
        "\n## Optimisation audit against {base}\n\n| set | scenarios | seconds | speed-up | same bits | worst l_inf to expectation | worst rmse to truth | rmse to truth / baseline's (median) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for r in audit {
        let speedup = if r.seconds > 0.0 {
            format!("{:.2}x", r.baseline_seconds / r.seconds)
        } else {
            "-".into()
        };
        let num = |x: Option<f64>| x.map_or("-".into(), |w| format!("{w:.3e}"));
        let ratio = r.truth_ratio.map_or("-".into(), |x| format!("{x:.2}x"));
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {speedup} | {} of {} | {} | {} | {ratio} |",
            r.set,
            r.scenarios,
            r.seconds,
            r.same_bits,
            r.scenarios,
            num(r.worst_l_inf),
            num(r.worst_rmse_truth)
        );
    }
}

/// One set against the baseline: verdict counts and the collapsible lists.
fn markdown_comparison(out: &mut String, c: &Comparison) {
    let _ = write!(
        out,
        "\n## {} against {}\n\n| verdict | base | new | change |\n|---|---|---|---|\n",
        c.new, c.base
    );
    for (v, cb, cn) in &c.verdicts {
        let _ = writeln!(
            out,
            "| {} | {cb} | {cn} | {:+} |",
            v.replace('-', " "),
            *cn as i64 - *cb as i64
        );
    }
    for (title, lines) in &c.groups {
        let _ = writeln!(
            out,
            "\n<details><summary>{title} ({})</summary>\n",
            lines.len()
        );
        for l in lines {
            let _ = writeln!(out, "- {l}");
        }
        out.push_str("\n</details>\n");
    }
}

/// One line of `localize.jsonl` (`reprodiff localize --filter ...`), as the report uses it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Localized {
    pub suite: String,
    pub scenario: String,
    pub a: String,
    pub b: String,
    pub outcome: String,
    pub first_step: Option<(u64, i64)>,
    pub first_module: Option<String>,
    #[serde(default)]
    pub beyond_noise_step: Option<(u64, i64)>,
}

/// Reads `localize.jsonl` files; a line that is not a localize record is an error naming the
/// file and line (exit 2).
pub fn load_localized(paths: &[PathBuf]) -> Result<Vec<Localized>> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            out.push(serde_json::from_str(line).map_err(|e| {
                Error::invalid_file(p, format!("line {}: not a localize record: {e}", i + 1))
            })?);
        }
    }
    Ok(out)
}

/// Adds the module where the runs part to each "First divergence" line whose scenario was
/// localized between the comparison's two sets (matched by their labels, which are the matrix
/// labels `localize` takes as sides).
pub fn annotate(report: &mut Report, localized: &[Localized]) {
    for c in &mut report.comparisons {
        let Some(lines) = c.groups.get_mut("First divergence") else {
            continue;
        };
        for line in lines.iter_mut() {
            let found = localized.iter().find(|l| {
                l.outcome == "differs"
                    && ((l.a == c.base && l.b == c.new) || (l.a == c.new && l.b == c.base))
                    && line.starts_with(&format!("{}/{}: ", l.suite, l.scenario))
            });
            if let Some(l) = found {
                let at = match (&l.first_step, &l.first_module) {
                    (Some((k, t)), Some(m)) => format!("step {k} (t = {t}) in {m}"),
                    (None, Some(m)) => m.clone(),
                    _ => "after the last captured module".into(),
                };
                line.push_str(&format!("; localize: first differs at {at}"));
                if let Some((k, t)) = l.beyond_noise_step {
                    line.push_str(&format!(
                        ", beyond the noise response (one ulp of initial noise) from step {k} \
                         (t = {t})"
                    ));
                }
            }
        }
    }
}

/// Where two runs of one scenario whose outputs differ part, from their per-step traces: a
/// sentence a person can act on.
pub fn first_divergence(a: &[(u64, i64, f64)], b: &[(u64, i64, f64)]) -> String {
    if a.is_empty() || b.is_empty() {
        return "outputs differ; no per-step trace to say where".into();
    }
    if a.len() != b.len() {
        return format!(
            "outputs differ; the runs have {} and {} steps",
            a.len(),
            b.len()
        );
    }
    let Some(i) = a
        .iter()
        .zip(b)
        .position(|(x, y)| x.2.to_bits() != y.2.to_bits())
    else {
        return "every step's latent has the same sum_abs: the outputs part after the loop \
                (post-processing) or below the trace's resolution"
            .into();
    };
    let last = a.len() - 1;
    let d = |k: usize| (a[k].2 - b[k].2).abs();
    // A trace without timesteps (the oracle's results, golden compare) has -1.
    let t = |k: usize| {
        if a[k].1 < 0 {
            String::new()
        } else {
            format!(" (t = {})", a[k].1)
        }
    };
    let through = if i == 0 {
        "differs from the first step".to_string()
    } else {
        format!("identical through step {}", i - 1)
    };
    format!(
        "{through}; step {}{} first differs, sum_abs by {:.3e}; by the last step{} by {:.3e}",
        a[i].0,
        t(i),
        d(i),
        t(last),
        d(last)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(label: &str) -> RecordSet {
        RecordSet {
            label: label.into(),
            entries: vec![Entry {
                name: "s/x".into(),
                verdict: Verdict::Identical,
                class: "c".into(),
                l_inf: None,
                rmse_truth: None,
                dtype: None,
                truth_step_ulps: None,
                sha256: Some("a".into()),
                elapsed_s: None,
                trace: Vec::new(),
                array: None,
                unseeded: false,
            }],
            unreadable: Vec::new(),
            incomplete: Vec::new(),
            duplicates: 0,
            conflicts: Vec::new(),
        }
    }

    #[test]
    fn an_audit_row_without_times_says_zero_seconds_not_minus_zero() {
        let (base, other) = (set("base"), set("other"));
        let text = markdown(&summarize(&[other], Some(&base)));
        assert!(text.contains("| other | 0 | 0.000 |"), "{text}");
        assert!(!text.contains("-0.000"), "{text}");
    }

    #[test]
    fn first_divergence_names_the_step_and_how_far_it_grows() {
        let a = [
            (0, 900, 10.0),
            (1, 800, 11.0),
            (2, 700, 12.0),
            (3, 600, 13.0),
        ];
        let mut b = a;
        b[2].2 = 12.5;
        b[3].2 = 14.0;
        assert_eq!(
            first_divergence(&a, &b),
            "identical through step 1; step 2 (t = 700) first differs, sum_abs by 5.000e-1; by \
             the last step (t = 600) by 1.000e0"
        );
        assert!(first_divergence(&a, &a).starts_with("every step's latent"));
        assert!(first_divergence(&a, &[]).contains("no per-step trace"));
    }
}
