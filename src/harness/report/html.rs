//! The drift report as one self-contained HTML page: no script, no network at view time. First
//! a summary (one sentence per set and per comparison with the baseline); then inline SVG: a
//! heatmap of sets × scenarios coloured by verdict (with its key; hover a cell for its set,
//! scenario and verdict), and per-step drift curves (|Δ sum_abs| of the latent against the
//! baseline, log scale, steps numbered, each curve labelled with its scenario) for scenarios
//! whose output changed; and inline PNGs where the records carry their output arrays (`check
//! --save-outputs`, which `matrix` always passes): the baseline's and the set's images under
//! their column labels beside their difference map and its colour scale in the output's units,
//! and the deterministic batch's image grids. The tables are those of the Markdown form.
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
         figcaption{font-size:12px;max-width:60em}\
         .triple th{font-weight:normal;font-size:12px;border:none;text-align:left}\
         .triple td{border:none;padding:0 6px 0 0;vertical-align:top}\
         ul.summary li{margin:0.3em 0}</style></head><body>\n\
         <h1>reprodiff drift report</h1>\n",
    );
    out.push_str(&summary(report));
    out.push_str("<h2>Verdicts: sets × scenarios</h2>\n");
    out.push_str(&heatmap(sets.iter().chain(baseline)));
    out.push_str(&legend());
    out.push_str("<p>Hover a cell for its set, scenario and verdict.</p>\n");
    if let Some(base) = baseline {
        out.push_str("<h2>Per-step drift against the baseline</h2>\n");
        for set in sets {
            out.push_str(&curves(base, set));
        }
        out.push_str(
            "<h2>Images: baseline, this set, and where they differ</h2>\n<p>Each row: the \
             baseline's output, the set's, and the difference map: each pixel's largest |Δ| \
             over its channels, on the scale below it (absolute units of the output).</p>\n",
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

/// One sentence per set (its scenarios and their verdicts, the worst distance), and one per
/// comparison with the baseline: what a reviewer reads first.
fn summary(report: &Report) -> String {
    let mut out = String::from("<h2>Summary</h2>\n<ul class=\"summary\">\n");
    for set in &report.sets {
        let total: usize = set.classes.iter().map(|c| c.scenarios).sum();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for class in &set.classes {
            for (verdict, n) in &class.verdicts {
                *counts.entry(verdict.as_str()).or_default() += n;
            }
        }
        let parts: Vec<String> = Verdict::ALL
            .iter()
            .filter_map(|v| {
                let n = counts.get(v.key().as_str()).copied().unwrap_or(0);
                (n > 0).then(|| format!("{n} {}", v.label()))
            })
            .collect();
        let failing: usize = Verdict::ALL
            .iter()
            .filter(|v| v.fails(false))
            .filter_map(|v| counts.get(v.key().as_str()))
            .sum();
        let worst = set
            .classes
            .iter()
            .filter_map(|c| c.worst_l_inf.as_ref())
            .filter(|w| w.value > 0.0)
            .max_by(|a, b| a.value.total_cmp(&b.value))
            .map_or(String::new(), |w| {
                format!(
                    "; the largest L_inf is {:.3e} ({})",
                    w.value,
                    escape(&w.scenario)
                )
            });
        let _ = writeln!(
            out,
            "<li class=\"summary-set\"><b>{}</b>: {total} scenario(s) on {} class(es): {}; {}{worst}.</li>",
            escape(&set.label),
            set.classes.len(),
            parts.join(", "),
            if failing == 0 {
                "none failed".to_string()
            } else {
                format!("{failing} failed")
            }
        );
    }
    for c in &report.comparisons {
        let groups: Vec<String> = c
            .groups
            .iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(group, names)| format!("{}: {}", escape(group), names.len()))
            .collect();
        let _ = writeln!(
            out,
            "<li class=\"summary-comparison\"><b>{}</b> against <b>{}</b>: {}.</li>",
            escape(&c.new),
            escape(&c.base),
            if groups.is_empty() {
                "no scenario changed its verdict".to_string()
            } else {
                groups.join(", ")
            }
        );
    }
    out.push_str("</ul>\n");
    out
}

/// The heatmap's key: each verdict's colour and name.
fn legend() -> String {
    let mut out = String::from("<p class=\"legend\">");
    for v in Verdict::ALL {
        let _ = write!(
            out,
            "<span style=\"display:inline-block;width:10px;height:10px;background:{};\
             border:1px solid #999;margin:0 3px 0 12px\"></span>{}",
            colour(&v.key()),
            v.label()
        );
    }
    out.push_str("</p>\n");
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
        Some(Verdict::BlessedOnly) => "#4fc3f7",
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
    // Cells as large as a page's width allows: 10px, or 6px for a few hundred scenarios.
    let cell = if names.len() > 120 { 6usize } else { 10 };
    let label_w = (longest * 7 + 10).max(180);
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
                "<rect class=\"cell\" x=\"{}\" y=\"{y}\" width=\"{cell}\" height=\"{}\" fill=\"{}\"><title>{} · {}: {}</title></rect>",
                label_w + c * cell,
                cell * 2,
                if verdict == "missing" { "#ffffff" } else { colour(verdict) },
                escape(&set.label),
                escape(name),
                verdict
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// |Δ sum_abs| per step between the baseline's and this set's run of each scenario whose
/// output changed, on a log scale from 1e-12 to 1e2; the x axis numbers the denoising steps,
/// and each curve is labelled with its scenario at its end (and in the list below the plot).
fn curves(base: &RecordSet, set: &RecordSet) -> String {
    let lines = changed(base, set);
    let plot = Plot {
        w: 820.0,
        h: 280.0,
        pad: 44.0,
        right: 220.0,
    };
    let mut svg = format!(
        "<h3>{} against {}</h3>\n<svg class=\"curves\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\">\n",
        escape(&set.label),
        escape(&base.label),
        plot.w,
        plot.h
    );
    let steps = lines.iter().map(|l| l.2.len()).max().unwrap_or(0);
    plot.axes(&mut svg, steps);
    if lines.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\">no changed output with a per-step trace</text>",
            plot.pad,
            plot.h / 2.0
        );
    }
    let mut list = String::from("<ol class=\"curve-list\">");
    for (i, (_, name, d)) in lines.iter().enumerate() {
        plot.curve(&mut svg, &mut list, i, name, d);
    }
    svg.push_str("</svg>\n");
    list.push_str("</ol>\n");
    if !lines.is_empty() {
        svg.push_str(&list);
    }
    svg
}

/// The scenarios whose output changed and whose traces match in length, with |Δ sum_abs| per
/// step (floored at 1e-12), the CURVES largest by their last step's.
fn changed<'a>(base: &RecordSet, set: &'a RecordSet) -> Vec<(f64, &'a str, Vec<f64>)> {
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
    lines
}

/// The curves' plot: its size, the padding round it and the right margin that holds the
/// curves' labels.
struct Plot {
    w: f64,
    h: f64,
    pad: f64,
    right: f64,
}

impl Plot {
    fn y_of(&self, d: f64) -> f64 {
        self.pad + (self.h - 2.0 * self.pad) * (2.0 - d.log10()) / 14.0
    }

    fn plot_w(&self) -> f64 {
        self.w - self.pad - self.right
    }

    /// The decades' grid lines, the step numbers (every step up to 12 of them, else about ten
    /// evenly spaced) and the axes' titles.
    fn axes(&self, svg: &mut String, steps: usize) {
        let (pad, h, plot_w) = (self.pad, self.h, self.plot_w());
        for exp in [-12, -8, -4, 0] {
            let y = self.y_of(10f64.powi(exp));
            let _ = writeln!(
                svg,
                "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"2\" y=\"{:.1}\" font-size=\"10\">1e{exp}</text>",
                pad + plot_w,
                y + 3.0
            );
        }
        if steps > 0 {
            let every = steps.div_ceil(10).max(1);
            let n = (steps.max(2) - 1) as f64;
            for k in (0..steps).filter(|k| k % every == 0 || *k == steps - 1) {
                let x = pad + plot_w * k as f64 / n;
                let _ = writeln!(
                    svg,
                    "<text class=\"step-tick\" x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                    h - pad + 14.0,
                    k + 1
                );
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">denoising step</text>\
             <text x=\"{pad}\" y=\"14\" font-size=\"11\">|Δ sum_abs| of the latent against the baseline (log)</text>",
            h - 6.0
        );
    }

    /// Curve `i`: its polyline, its label at its end (the scenario's name, shortened from the
    /// left to fit the margin) and its line in the list below the plot.
    fn curve(&self, svg: &mut String, list: &mut String, i: usize, name: &str, d: &[f64]) {
        let n = (d.len().max(2) - 1) as f64;
        let at = |k: usize, v: f64| (self.pad + self.plot_w() * k as f64 / n, self.y_of(v));
        let points: Vec<String> = d
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let (x, y) = at(k, *v);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let hue = (i * 360 / CURVES) % 360;
        let (x_end, y_end) = at(d.len() - 1, d[d.len() - 1]);
        let chars: Vec<char> = name.chars().collect();
        let short: String = if chars.len() > 34 {
            std::iter::once('…')
                .chain(chars[chars.len() - 33..].iter().copied())
                .collect()
        } else {
            name.to_string()
        };
        let _ = writeln!(
            svg,
            "<polyline class=\"curve\" fill=\"none\" stroke=\"hsl({hue},70%,45%)\" points=\"{}\"><title>{}</title></polyline>\
             <text class=\"curve-label\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"hsl({hue},70%,35%)\">{} {}</text>",
            points.join(" "),
            escape(name),
            x_end + 6.0,
            y_end + 3.0,
            i + 1,
            escape(&short)
        );
        let _ = write!(
            list,
            "<li style=\"color:hsl({hue},70%,35%)\"><code>{}</code>: |Δ| {:.3e} at the last step</li>",
            escape(name),
            d[d.len() - 1]
        );
    }
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
            "<figure class=\"compare\"><table class=\"triple\"><tr><th>baseline ({})</th>\
             <th>this set ({})</th><th>difference</th></tr><tr><td>{}</td><td>{}</td><td>{}<br>{}</td>\
             </tr></table><figcaption>{}: max |Δ| {max:.3e}</figcaption></figure>\n",
            escape(&base.label),
            escape(&set.label),
            img(&ga, &format!("{} ({})", e.name, base.label)),
            img(&gb, &format!("{} ({})", e.name, set.label)),
            img(&map, &format!("{}: difference map", e.name)),
            scale(max),
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

/// The difference map's colour scale in the output's own units: black at 0, red at a third of
/// `max`, yellow at two thirds, white at `max` (pictures::difference_map's colours).
fn scale(max: f64) -> String {
    let (w, bar) = (200.0, 10.0);
    let mut svg = format!(
        "<svg class=\"scale\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"30\">\
         <defs><linearGradient id=\"heat-{id}\"><stop offset=\"0\" stop-color=\"#000\"/>\
         <stop offset=\"0.333\" stop-color=\"#f00\"/><stop offset=\"0.667\" stop-color=\"#ff0\"/>\
         <stop offset=\"1\" stop-color=\"#fff\"/></linearGradient></defs>\
         <rect x=\"10\" y=\"2\" width=\"{w}\" height=\"{bar}\" fill=\"url(#heat-{id})\" stroke=\"#999\"/>",
        w + 40.0,
        id = format!("{:x}", max.to_bits())
    );
    for (i, f) in [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0].iter().enumerate() {
        let anchor = ["start", "middle", "middle", "end"][i];
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"26\" font-size=\"9\" text-anchor=\"{anchor}\">{}</text>",
            10.0 + w * f,
            if *f == 0.0 {
                "0".to_string()
            } else {
                format!("{:.1e}", max * f)
            }
        );
    }
    svg.push_str("</svg>");
    svg
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
