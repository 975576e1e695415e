//! The drift report as one self-contained HTML page: no script, no network at view time. The
//! pictures are inline SVG: a heatmap of sets × scenarios coloured by verdict, and per-step
//! drift curves (|Δ sum_abs| of the latent against the baseline, log scale) for scenarios whose
//! output changed; and inline PNGs where the records carry their output arrays (`check
//! --save-outputs`, which `matrix` always passes): the baseline's and the set's images side by
//! side with their difference map, and the deterministic batch's image grids. The tables are
//! those of the Markdown form.
use crate::harness::compare::Verdict;
use crate::harness::report::drift::{Entry, RecordSet, Report};
use crate::harness::report::pictures;
use base64::Engine;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// At most this many curves per set, the largest final drift first.
const CURVES: usize = 12;
/// At most this many side-by-side image comparisons per set, the largest difference first.
const PICTURES: usize = 6;

pub fn html(report: &Report, sets: &[RecordSet], baseline: Option<&RecordSet>) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>reprodiff drift report</title><style>\
         body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px}code{font-size:12px}\
         svg{border:1px solid #ddd;margin:0.5em 0}\
         figure{display:inline-block;margin:0.5em 1em 0.5em 0;vertical-align:top}\
         figure img{image-rendering:pixelated;border:1px solid #ddd;margin-right:4px}\
         figcaption{font-size:12px;max-width:60em}</style></head><body>\n\
         <h1>reprodiff drift report</h1>\n",
    );
    out.push_str("<h2>Verdicts: sets × scenarios</h2>\n");
    out.push_str(&heatmap(sets.iter().chain(baseline)));
    if let Some(base) = baseline {
        out.push_str("<h2>Per-step drift against the baseline</h2>\n");
        for set in sets {
            out.push_str(&curves(base, set));
        }
        out.push_str(
            "<h2>Images: baseline, this set, and where they differ</h2>\n<p>Each row: the \
             baseline's output, the set's, and the difference map (each pixel's largest |Δ| \
             over its channels, the largest of all brightest).</p>\n",
        );
        for set in sets {
            out.push_str(&side_by_side(base, set));
        }
    }
    out.push_str(&batch_grids(baseline.into_iter().chain(sets)));
    out.push_str("<h2>Tables</h2>\n<pre>");
    out.push_str(&escape(&crate::harness::report::drift::markdown(report)));
    out.push_str("</pre>\n</body></html>\n");
    out
}

/// A verdict's colour on the page, by its record name (`Verdict::key`); anything else (a
/// scenario a set lacks) is drawn in its own colour by the caller.
fn colour(verdict: &str) -> &'static str {
    let parsed = serde_json::from_value(serde_json::Value::String(verdict.into())).ok();
    match parsed {
        Some(Verdict::Identical) => "#2e7d32",
        Some(Verdict::WithinTolerance) => "#9ccc65",
        Some(Verdict::NotComparable) => "#ffb300",
        Some(Verdict::NotRun) => "#bdbdbd",
        Some(Verdict::NoExpectation) => "#8d6e63",
        Some(Verdict::Drifted) => "#e53935",
        Some(Verdict::NoGolden | Verdict::Failed) | None => "#6a1b9a",
    }
}

/// One row per set, one column per scenario any set has; a cell's title names both.
fn heatmap<'a>(sets: impl Iterator<Item = &'a RecordSet> + Clone) -> String {
    let names: BTreeSet<&str> = sets
        .clone()
        .flat_map(|s| s.entries.iter().map(|e| e.name.as_str()))
        .collect();
    let names: Vec<&str> = names.into_iter().collect();
    let rows: Vec<&RecordSet> = sets.collect();
    // Wide enough for the longest label (11px sans-serif: about 7px a character).
    let longest = rows
        .iter()
        .map(|s| s.label.chars().count())
        .max()
        .unwrap_or(0);
    let (cell, label_w) = (6usize, (longest * 7 + 10).max(180));
    let (w, h) = (
        label_w + cell * names.len().max(1),
        cell * 3 * rows.len().max(1) + 10,
    );
    let mut svg = format!(
        "<svg id=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">\n"
    );
    for (r, set) in rows.iter().enumerate() {
        let y = r * cell * 3 + 5;
        let by: BTreeMap<&str, String> = set
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.verdict.key()))
            .collect();
        let _ = writeln!(
            svg,
            "<text x=\"2\" y=\"{}\" font-size=\"11\">{}</text>",
            y + cell * 2,
            escape(&set.label)
        );
        for (c, name) in names.iter().enumerate() {
            let verdict = by.get(name).map_or("missing", String::as_str);
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

/// An image output read back from its record's array: (shape, values), if it is an image.
fn image_of(e: &Entry) -> Option<(Vec<i64>, Vec<f64>)> {
    let t = tch::Tensor::read_npy(e.array.as_ref()?).ok()?;
    let shape = t.size();
    if !pictures::is_image(&shape) {
        return None;
    }
    Some((shape, crate::torch::tensor_to_f64(&t).ok()?))
}

/// An inline PNG, scaled up so that tiny outputs can be seen (pixelated, not smoothed).
fn img(picture: &image::RgbImage, alt: &str) -> String {
    let Ok(bytes) = pictures::png(picture) else {
        return String::new();
    };
    let (w, h) = picture.dimensions();
    let scale = (256 / w.max(h).max(1)).clamp(1, 8);
    format!(
        "<img class=\"picture\" alt=\"{}\" width=\"{}\" height=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        w * scale,
        h * scale,
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The baseline's image, the set's, and their difference map, for each image scenario whose
/// output changed and both records carry the array.
fn side_by_side(base: &RecordSet, set: &RecordSet) -> String {
    let base_by: BTreeMap<&str, &Entry> =
        base.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut found: Vec<(f64, String)> = Vec::new();
    for e in &set.entries {
        let Some(b) = base_by.get(e.name.as_str()) else {
            continue;
        };
        if b.sha256 == e.sha256 || e.array.is_none() || b.array.is_none() {
            continue;
        }
        let (Some((sa, va)), Some((sb, vb))) = (image_of(b), image_of(e)) else {
            continue;
        };
        if sa != sb {
            continue;
        }
        let (Ok(ga), Ok(gb), Ok((map, max))) = (
            pictures::image_grid(&sa, &va),
            pictures::image_grid(&sb, &vb),
            pictures::difference_map(&sa, &va, &vb),
        ) else {
            continue;
        };
        let html = format!(
            "<figure class=\"compare\">{}{}{}<figcaption>{}: max |Δ| {max:.3e}</figcaption></figure>\n",
            img(&ga, &format!("{} ({})", e.name, base.label)),
            img(&gb, &format!("{} ({})", e.name, set.label)),
            img(&map, &format!("{}: difference map", e.name)),
            escape(&e.name)
        );
        found.push((max, html));
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out = format!(
        "<h3>{} against {}</h3>\n",
        escape(&set.label),
        escape(&base.label)
    );
    if found.is_empty() {
        out.push_str("<p>No changed image output with its array in both records.</p>\n");
    }
    for (_, html) in found.into_iter().take(PICTURES) {
        out.push_str(&html);
    }
    out
}

/// The seed document's deterministic batch: the image grids of every `batch` scenario of the
/// first set whose records carry arrays.
fn batch_grids<'a>(sets: impl Iterator<Item = &'a RecordSet>) -> String {
    for set in sets {
        let grids: Vec<String> = set
            .entries
            .iter()
            .filter(|e| e.name.contains("/batch/"))
            .filter_map(|e| {
                let (shape, values) = image_of(e)?;
                let g = pictures::image_grid(&shape, &values).ok()?;
                Some(format!(
                    "<figure class=\"batch\">{}<figcaption>{} ({})</figcaption></figure>\n",
                    img(&g, &e.name),
                    escape(&e.name),
                    escape(&set.label)
                ))
            })
            .collect();
        if !grids.is_empty() {
            return format!(
                "<h2>Deterministic batch generation</h2>\n<p>One generator per image (seeds \
                 0..n), then prompt variants all on seed 0: each variant should resemble image \
                 0 of the first grid.</p>\n{}",
                grids.concat()
            );
        }
    }
    String::new()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
