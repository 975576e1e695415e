//! `localize`: the first step and module where two kernel classes or knob sets part, and the
//! messages that name the flag (or variable) the user passed.
use crate::common::*;
use reprodiff::error::exit;
use std::process::Command;

/// `localize` names the first module where two kernel classes part (ATen's default kernels
/// against this CPU's own), after proving that activation capture leaves the output's bits
/// alone, and says which side is closer to the float64 truth; a class against itself is
/// identical throughout.
#[test]
fn localize_names_the_first_differing_module() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let run = |a: &str, b: &str| {
        reprodiff_native(
            &[
                "localize",
                "--suite",
                "sd-tiny",
                "--scenario",
                "tiny-sd-b/own-scheduler/steps1",
                "--a",
                a,
                "--b",
                b,
                "--out",
                out,
            ],
            None,
        )
    };
    let differs = run("native", "sse41");
    let t = text(&differs);
    assert_eq!(differs.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("first differs (max |a - b|"), "{t}");
    assert!(t.contains("closer to the float64 truth"), "{t}");
    assert!(t.contains("Capture on and off gave the same bits"), "{t}");
    let same = run("native", "native");
    assert!(
        text(&same).contains("native and native give identical bits"),
        "{}",
        text(&same)
    );
    let bad = reprodiff(
        &[
            "localize",
            "--suite",
            "sd-tiny",
            "--scenario",
            "nope",
            "--a",
            "native",
            "--b",
            "sse41",
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(exit::USAGE), "{}", text(&bad));
    assert!(text(&bad).contains("--scenario nope"), "{}", text(&bad));
}

/// Over many scenarios, localize names for each the denoising step and module where the two
/// sides part: the math attention knob against the fused (flash) kernel first differs inside
/// tiny-ddim-a's attention block (down_blocks.1) at the first step, and everything before it
/// is bit-identical; `localize.jsonl` says the same in fields.
#[test]
fn localize_over_a_filter_names_the_step_and_module_of_each_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let run = reprodiff(
        &[
            "localize",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/(steps2|beta-linear/steps5)$",
            "--a",
            "native-threads2",
            "--b",
            "native-threads2+math-attention",
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        None,
    );
    let t = text(&run);
    assert_eq!(run.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("tiny-ddim-a/steps2: identical through step 0 (t = 500) in down_blocks.0; step 0 (t = 500) in down_blocks.1 first differs"),
        "{t}"
    );
    assert!(t.contains("2 of 2 differ, 0 failed, 0 not run"), "{t}");
    let lines = std::fs::read_to_string(tmp.path().join("localize.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["outcome"], "differs", "{r}");
        assert_eq!(r["first_module"], "down_blocks.1", "{r}");
        assert_eq!(r["first_step"][0], 0, "{r}");
        assert!(r["l_inf"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r.get("beyond_noise_step").is_some(), "{r}");
    }
    // bf16 against f32 moves the first step's latent far more than one ulp of initial noise
    // does: beyond the noise response from step 0.
    let bf16 = reprodiff(
        &[
            "localize",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps2$",
            "--a",
            "native-threads2",
            "--b",
            "native-threads2+bf16",
            "--out",
            tmp.path().join("bf16").to_str().unwrap(),
        ],
        None,
    );
    let t = text(&bf16);
    assert_eq!(bf16.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("the drift first exceeds the noise response (what one ulp of initial noise moves the latent's sum_abs) at step 0 (t = 500)"),
        "{t}"
    );
}

/// `localize` names the flag the user passed: a bad side is `--a`/`--b`, a filter matching
/// nothing is `--filter`; a dump folder that does not exist names REPRODIFF_DUMP_DIR.
#[test]
fn messages_name_what_the_user_passed() {
    for (args, says) in [
        (
            vec![
                "localize",
                "--suite",
                "ddim-tiny",
                "--scenario",
                "tiny-ddim-a/steps2",
                "--a",
                "native",
                "--b",
                "zen9",
            ],
            "--b zen9: zen9: unknown",
        ),
        (
            vec![
                "localize",
                "--suite",
                "ddim-tiny",
                "--scenario",
                "tiny-ddim-a/steps2",
                "--a",
                "native-threads0",
                "--b",
                "native",
            ],
            "--a native-threads0: must be >= 1",
        ),
        (
            vec![
                "localize",
                "--suite",
                "ddim-tiny",
                "--filter",
                "nomatch",
                "--a",
                "native",
                "--b",
                "sse41",
            ],
            "--filter nomatch: no scenario of suite ddim-tiny matches",
        ),
    ] {
        let out = reprodiff_native(&args, None);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{args:?}: {t}");
        assert!(t.contains(says), "{args:?}: {t}");
        assert!(
            !t.contains("--cpu-class") && !t.contains("no such suite"),
            "{t}"
        );
    }
    let (_tmp, model) = tiny_model_copy();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprodiff"));
    cmd.args([
        "run",
        "ddim",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "1",
        "--seed",
        "0",
    ])
    .env("REPRODIFF_DUMP_DIR", "/nonexistent/dumps");
    let out = cmd.output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(
        t.contains("REPRODIFF_DUMP_DIR=/nonexistent/dumps: no such folder"),
        "{t}"
    );
}
