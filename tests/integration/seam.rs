//! The seam with the Python oracle: what the oracle reads from reprodiff (`list --json`,
//! `resolve-model`) carries every fact it needs, in the shape its code takes, so that neither
//! side re-implements the other's rules (the determinism presets, the slug, the model folder).
use crate::common::*;
use reprodiff::error::exit;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fields of ci/oracle/determinism.py's `Determinism` dataclass, which the oracle builds
/// from `oracle_determinism` with `Determinism(**...)`.
fn oracle_determinism_fields() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("ci/oracle/determinism.py")).unwrap();
    let class = &text[text.find("class Determinism:").expect("the dataclass")..];
    let body = &class[..class.find("\n\n\n").unwrap_or(class.len())];
    let mut fields: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| !l.starts_with(' ') && !l.starts_with('"'))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    fields.sort();
    fields
}

#[test]
fn list_json_gives_each_scenario_every_determinism_switch_and_its_slug() {
    let out = reprodiff(
        &[
            "list",
            "--json",
            "--suite",
            "ddim-portable",
            "--filter",
            "^tiny-ddim-a/steps2$",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let det = line["oracle_determinism"].as_object().unwrap();
    let mut keys: Vec<String> = det.keys().cloned().collect();
    keys.sort();
    let fields = oracle_determinism_fields();
    assert!(fields.len() >= 10, "{fields:?}");
    assert_eq!(
        keys, fields,
        "reprodiff's switches and the oracle's dataclass"
    );
    // Resolved: no preset left for the oracle to expand, and the portable noise contract's
    // capability in force.
    assert!(!det.contains_key("preset"));
    assert_eq!(det["cpu_capability"], "default");
    assert_eq!(det["deterministic_algorithms"], false);
    assert_eq!(line["slug"], "tiny-ddim-a__steps2");
}

#[test]
fn resolve_model_names_the_folder_both_sides_load() {
    let models = repo().join("fixtures/models");
    let resolve = |spec: &str| {
        let out = reprodiff(
            &["resolve-model", spec, "--models", models.to_str().unwrap()],
            None,
        );
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        (out, line)
    };
    let (out, line) = resolve("tiny-ddim-a");
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["kind"], "folder");
    assert_eq!(
        Path::new(v["folder"].as_str().unwrap()),
        models.join("tiny-ddim-a")
    );
    // A hub model this host does not have is said so, for the oracle to skip.
    let (out, line) = resolve("hub:nobody-here/no-such-model");
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        v["unavailable"]
            .as_str()
            .unwrap()
            .contains("not in the local Hugging Face cache"),
        "{v}"
    );
    // A name that is nothing is bad input, named.
    let (out, _) = resolve("no-such-model");
    assert_eq!(out.status.code(), Some(exit::USAGE));
    assert!(text(&out).contains("no-such-model"), "{}", text(&out));
}
