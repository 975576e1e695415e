//! The drift report as one self-contained HTML page: no script, no network at view time. The
//! pictures are inline SVG: a heatmap of sets × scenarios coloured by verdict, and per-step
//! drift curves (|Δ sum_abs| of the latent against the baseline, log scale) for scenarios whose
//! output changed. The tables are those of the Markdown form.
use super::drift::{RecordSet, Report};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// At most this many curves per set, the largest final drift first.
const CURVES: usize = 12;

pub fn html(report: &Report, sets: &[RecordSet], baseline: Option<&RecordSet>) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>reprodiff drift report</title><style>\
         body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px}code{font-size:12px}\
         svg{border:1px solid #ddd;margin:0.5em 0}</style></head><body>\n\
         <h1>reprodiff drift report</h1>\n",
    );
    out.push_str("<h2>Verdicts: sets × scenarios</h2>\n");
    out.push_str(&heatmap(sets.iter().chain(baseline)));
    if let Some(base) = baseline {
        out.push_str("<h2>Per-step drift against the baseline</h2>\n");
        for set in sets {
            out.push_str(&curves(base, set));
        }
    }
    out.push_str("<h2>Tables</h2>\n<pre>");
    out.push_str(&escape(&super::drift::markdown(report)));
    out.push_str("</pre>\n</body></html>\n");
    out
}

fn colour(verdict: &str) -> &'static str {
    match verdict {
        "identical" => "#2e7d32",
        "within-tolerance" => "#9ccc65",
        "not-comparable" => "#ffb300",
        "not-run" => "#bdbdbd",
        "no-expectation" => "#8d6e63",
        "drifted" => "#e53935",
        _ => "#6a1b9a",
    }
}

/// One row per set, one column per scenario any set has; a cell's title names both.
fn heatmap<'a>(sets: impl Iterator<Item = &'a RecordSet> + Clone) -> String {
    let names: BTreeSet<&str> = sets
        .clone()
        .flat_map(|s| s.entries.iter().map(|e| e.name.as_str()))
        .collect();
    let names: Vec<&str> = names.into_iter().collect();
    let (cell, label_w) = (6usize, 180usize);
    let rows: Vec<&RecordSet> = sets.collect();
    let (w, h) = (
        label_w + cell * names.len().max(1),
        cell * 3 * rows.len().max(1) + 10,
    );
    let mut svg = format!(
        "<svg id=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">\n"
    );
    for (r, set) in rows.iter().enumerate() {
        let y = r * cell * 3 + 5;
        let by: BTreeMap<&str, &str> = set
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.verdict.as_str()))
            .collect();
        let _ = writeln!(
            svg,
            "<text x=\"2\" y=\"{}\" font-size=\"11\">{}</text>",
            y + cell * 2,
            escape(&set.label)
        );
        for (c, name) in names.iter().enumerate() {
            let verdict = by.get(name).copied().unwrap_or("missing");
            let _ = writeln!(
                svg,
                "<rect class=\"cell\" x=\"{}\" y=\"{y}\" width=\"{cell}\" height=\"{}\" fill=\"{}\"><title>{}: {}</title></rect>",
                label_w + c * cell,
                cell * 2,
                if verdict == "missing" { "#ffffff" } else { colour(verdict) },
                escape(name),
                verdict
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// |Δ sum_abs| per step between the baseline's and this set's run of each scenario whose
/// output changed, on a log scale from 1e-12 to 1e2.
fn curves(base: &RecordSet, set: &RecordSet) -> String {
    let base_by: BTreeMap<&str, _> = base.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut lines: Vec<(f64, &str, Vec<f64>)> = set
        .entries
        .iter()
        .filter_map(|e| {
            let b = base_by.get(e.name.as_str())?;
            if b.sha256 == e.sha256 || b.trace.len() != e.trace.len() || e.trace.is_empty() {
                return None;
            }
            let d: Vec<f64> = b
                .trace
                .iter()
                .zip(&e.trace)
                .map(|(x, y)| (x.2 - y.2).abs().max(1e-12))
                .collect();
            Some((*d.last()?, e.name.as_str(), d))
        })
        .collect();
    lines.sort_by(|a, b| b.0.total_cmp(&a.0));
    lines.truncate(CURVES);
    let (w, h, pad) = (640.0, 260.0, 40.0);
    let mut svg = format!(
        "<h3>{} against {}</h3>\n<svg class=\"curves\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">\n",
        escape(&set.label),
        escape(&base.label)
    );
    let y_of = |d: f64| pad + (h - 2.0 * pad) * (2.0 - d.log10()) / 14.0;
    for exp in [-12, -8, -4, 0] {
        let y = y_of(10f64.powi(exp));
        let _ = writeln!(
            svg,
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"2\" y=\"{:.1}\" font-size=\"10\">1e{exp}</text>",
            w - pad,
            y + 3.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">denoising step, first to last →</text>\
         <text x=\"{pad}\" y=\"14\" font-size=\"11\">|Δ sum_abs| of the latent (log)</text>",
        h - 8.0
    );
    if lines.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{pad}\" y=\"{}\" font-size=\"12\">no changed output with a per-step trace</text>",
            h / 2.0
        );
    }
    for (i, (_, name, d)) in lines.iter().enumerate() {
        let n = (d.len().max(2) - 1) as f64;
        let points: Vec<String> = d
            .iter()
            .enumerate()
            .map(|(k, v)| {
                format!(
                    "{:.1},{:.1}",
                    pad + (w - 2.0 * pad) * k as f64 / n,
                    y_of(*v)
                )
            })
            .collect();
        let hue = (i * 360 / CURVES) % 360;
        let _ = writeln!(
            svg,
            "<polyline class=\"curve\" fill=\"none\" stroke=\"hsl({hue},70%,45%)\" points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
