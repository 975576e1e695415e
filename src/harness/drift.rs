//! Drift reports over the records `check` writes (`--out DIR`, one JSON per scenario): per
//! environment class, what was identical, within tolerance, drifted, failed or not run and the
//! worst drift; and, against a baseline set, what newly drifted or was fixed, in the style of
//! boa's test262 compare, and for every scenario whose output changed, the first denoising step
//! where the two runs part (from the records' per-step traces). Markdown, for a pull-request
//! comment.
//!
//! Records of schema 1 (before classes) read too: their class comes from their fingerprint.
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What the report needs of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `suite/scenario`.
    pub name: String,
    pub verdict: String,
    pub class: String,
    /// The largest l_inf a metric row reported against the expectation, if any.
    pub l_inf: Option<f64>,
    /// rmse(truth, output), where the run was judged across classes.
    pub rmse_truth: Option<f64>,
    pub sha256: Option<String>,
    /// Seconds the run took (the scenario's own work, without loading in the parent).
    pub elapsed_s: Option<f64>,
    /// (step, timestep, sum_abs) of the latent after each denoising step.
    pub trace: Vec<(u64, i64, f64)>,
}

/// A set of records: one host or one run, labelled by its folder.
#[derive(Debug, Clone)]
pub struct RecordSet {
    pub label: String,
    pub entries: Vec<Entry>,
    /// Files that could not be read, with why; the rest was read.
    pub unreadable: Vec<String>,
}

/// Reads every record under `dir`: the lines of `*.jsonl` files (what `check` writes) and
/// single-record `*.json` files (records of schema 1 and 2). A line or file that is not a
/// record is named (file and line) in `unreadable` and skipped; the rest is read. A folder
/// without any record is an error (exit 2).
pub fn load(dir: &Path) -> Result<RecordSet> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut set = RecordSet {
        label: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        entries: Vec::new(),
        unreadable: Vec::new(),
    };
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                set.unreadable.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        if f.extension().is_some_and(|x| x == "jsonl") {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                match entry(line) {
                    Ok(e) => set.entries.push(e),
                    Err(why) => {
                        set.unreadable
                            .push(format!("{} line {}: {why}", f.display(), i + 1))
                    }
                }
            }
            continue;
        }
        match entry(&text) {
            Ok(e) => set.entries.push(e),
            Err(why) => set.unreadable.push(format!("{}: {why}", f.display())),
        }
    }
    if set.entries.is_empty() {
        return Err(Error::invalid_file(
            dir,
            "no check records here (records.jsonl, or *.json of schema 1 and 2)",
        ));
    }
    Ok(set)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json" || x == "jsonl") {
            out.push(p);
        }
    }
    Ok(())
}

fn entry(text: &str) -> std::result::Result<Entry, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("{e} (line {}, column {})", e.line(), e.column()))?;
    match v["schema"].as_u64() {
        Some(1..=3) => {}
        other => {
            return Err(format!(
                "record schema {} is not one this reprodiff reads (1 to 3)",
                other.map_or("missing".into(), |s| s.to_string())
            ))
        }
    }
    let field = |k: &str| {
        v[k].as_str()
            .map(String::from)
            .ok_or_else(|| format!("no `{k}`: not a check record"))
    };
    let class = match v["class"].as_str() {
        Some(c) => c.to_string(),
        None if v["environment"].is_object() => {
            let fp: Fingerprint =
                serde_json::from_value(v["environment"].clone()).map_err(|e| e.to_string())?;
            let device = serde_json::from_value(v["spec"]["device"].clone()).unwrap_or_default();
            fp.class(device).to_string()
        }
        None => "(not run: no class)".into(),
    };
    let metric = |name: &str| {
        v["checks"].as_array().and_then(|checks| {
            checks
                .iter()
                .filter(|c| c["metric"] == name)
                .filter_map(|c| c["got"].as_str()?.parse::<f64>().ok())
                .reduce(f64::max)
        })
    };
    Ok(Entry {
        name: format!("{}/{}", field("suite")?, field("scenario")?),
        verdict: field("verdict")?,
        class,
        l_inf: metric("l_inf"),
        rmse_truth: metric("rmse_truth"),
        sha256: v["output"]["sha256"].as_str().map(String::from),
        elapsed_s: v["output"]["elapsed_s"].as_f64(),
        trace: v["output"]["trace"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| {
                        Some((
                            s["step"].as_u64()?,
                            s["timestep"].as_i64()?,
                            s["sum_abs"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

const VERDICTS: [&str; 8] = [
    "identical",
    "within-tolerance",
    "not-comparable",
    "not-run",
    "no-expectation",
    "drifted",
    "no-golden",
    "failed",
];

/// The Markdown report: one table per set (rows: classes), then each set against `baseline`.
pub fn markdown(sets: &[RecordSet], baseline: Option<&RecordSet>) -> String {
    let mut out = String::from("# reprodiff drift report\n");
    for set in sets.iter().chain(baseline) {
        let _ = writeln!(out, "\n## {}\n", set.label);
        out.push_str("| class | scenarios |");
        for v in VERDICTS {
            let _ = write!(out, " {} |", v.replace('-', " "));
        }
        out.push_str(" worst l_inf | worst rmse to truth |\n|---|---|");
        out.push_str(&"---|".repeat(VERDICTS.len() + 2));
        out.push('\n');
        let mut by_class: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for e in &set.entries {
            by_class.entry(&e.class).or_default().push(e);
        }
        for (class, entries) in by_class {
            let _ = write!(out, "| `{class}` | {} |", entries.len());
            for v in VERDICTS {
                let _ = write!(
                    out,
                    " {} |",
                    entries.iter().filter(|e| e.verdict == v).count()
                );
            }
            for pick in [|e: &Entry| e.l_inf, |e: &Entry| e.rmse_truth] {
                let worst = entries
                    .iter()
                    .filter_map(|e| pick(e).map(|d| (d, &e.name)))
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                match worst {
                    Some((d, name)) if d > 0.0 => {
                        let _ = write!(out, " {d:.3e} ({name}) |");
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
    }
    if let Some(base) = baseline {
        out.push_str(&audit(base, sets));
        for set in sets {
            out.push_str(&compare(base, set));
        }
    }
    out
}

/// The optimisation audit: for each set against the baseline, over the scenarios both ran, the
/// time it took relative to the baseline next to what it cost in bits and in distance from the
/// truth. With `matrix` sets, each row is one knob (a CPU class, a thread count).
pub fn audit(base: &RecordSet, sets: &[RecordSet]) -> String {
    let mut out = format!(
        "\n## Optimisation audit against {}\n\n| set | scenarios | seconds | speed-up | same bits | worst rmse to truth |\n|---|---|---|---|---|---|\n",
        base.label
    );
    let base_by: BTreeMap<&str, &Entry> =
        base.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for set in sets {
        let both: Vec<(&Entry, &Entry)> = set
            .entries
            .iter()
            .filter_map(|e| Some((*base_by.get(e.name.as_str())?, e)))
            .filter(|(b, e)| b.elapsed_s.is_some() && e.elapsed_s.is_some())
            .collect();
        let secs = |pick: fn(&(&Entry, &Entry)) -> f64| both.iter().map(pick).sum::<f64>();
        let (tb, tn) = (
            secs(|p| p.0.elapsed_s.unwrap_or(0.0)),
            secs(|p| p.1.elapsed_s.unwrap_or(0.0)),
        );
        let same = both
            .iter()
            .filter(|(b, e)| b.sha256.is_some() && b.sha256 == e.sha256)
            .count();
        let worst = both
            .iter()
            .filter_map(|(_, e)| e.rmse_truth)
            .reduce(f64::max)
            .map_or("- (same class as its expectation)".into(), |r| {
                format!("{r:.3e}")
            });
        let speedup = if tn > 0.0 {
            format!("{:.2}x", tb / tn)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {tn:.3} | {speedup} | {same} of {} | {worst} |",
            set.label,
            both.len(),
            both.len()
        );
    }
    out
}

/// `base` → `new`: counts with deltas, then newly drifted, newly fixed, new and missing
/// scenarios, each "(previously X)".
pub fn compare(base: &RecordSet, new: &RecordSet) -> String {
    let index = |s: &RecordSet| -> BTreeMap<String, String> {
        s.entries
            .iter()
            .map(|e| (e.name.clone(), e.verdict.clone()))
            .collect()
    };
    let (b, n) = (index(base), index(new));
    let by_name = |s: &'_ RecordSet| -> BTreeMap<String, Entry> {
        s.entries
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    };
    let (eb, en) = (by_name(base), by_name(new));
    let mut out = format!(
        "\n## {} against {}\n\n| verdict | base | new | change |\n|---|---|---|---|\n",
        new.label, base.label
    );
    for v in VERDICTS {
        let (cb, cn) = (
            b.values().filter(|x| *x == v).count() as i64,
            n.values().filter(|x| *x == v).count() as i64,
        );
        if cb != 0 || cn != 0 {
            let _ = writeln!(
                out,
                "| {} | {cb} | {cn} | {:+} |",
                v.replace('-', " "),
                cn - cb
            );
        }
    }
    let good = |v: &str| v == "identical" || v == "within-tolerance";
    let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, v) in &n {
        match b.get(name) {
            None => groups
                .entry("New")
                .or_default()
                .push(format!("{name}: {v}")),
            Some(old) if good(old) && !good(v) && v != "not-run" => groups
                .entry("Newly drifted or failed")
                .or_default()
                .push(format!("{name}: {v} (previously {old})")),
            Some(old) if !good(old) && good(v) => groups
                .entry("Newly fixed")
                .or_default()
                .push(format!("{name}: {v} (previously {old})")),
            _ => {}
        }
    }
    for (name, e) in &en {
        let Some(old) = eb.get(name) else { continue };
        if let (Some(x), Some(y)) = (&old.sha256, &e.sha256) {
            if x != y {
                groups.entry("First divergence").or_default().push(format!(
                    "{name}: {}",
                    first_divergence(&old.trace, &e.trace)
                ));
            }
        }
    }
    for name in b.keys().filter(|k| !n.contains_key(*k)) {
        groups.entry("Missing").or_default().push(name.clone());
    }
    for (title, lines) in groups {
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
    out
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
    let through = if i == 0 {
        "differs from the first step".to_string()
    } else {
        format!("identical through step {}", i - 1)
    };
    format!(
        "{through}; step {} (t = {}) first differs, sum_abs by {:.3e}; by the last step (t = {}) by {:.3e}",
        a[i].0, a[i].1, d(i), a[last].1, d(last)
    )
}

#[cfg(test)]
mod tests {
    use super::first_divergence;

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
