//! The command line's contract: `check`'s exit codes and messages against a golden, errors that
//! name the file, field or flag at fault (exit 2), and the spellings of dtypes and devices.
use crate::common::*;
use reprodiff::error::exit;
use reprodiff::torch::{DType, DeviceSpec};
use std::path::{Path, PathBuf};

/// Applies `edit` to every expectation of `scenario` in the copied rng golden file, so that the
/// test does not depend on which class this host is or is nearest to.
fn edit_expectations(fixtures: &Path, scenario: &str, edit: impl Fn(&mut serde_json::Value)) {
    edit_json(&fixtures.join("golden/rng.json"), |v| {
        for e in v["scenarios"][scenario]["expectations"]
            .as_array_mut()
            .unwrap()
        {
            edit(e);
        }
    });
}

#[test]
fn check_passes_on_an_untouched_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let out = reprodiff(
        &[
            "check",
            "--suite",
            "rng",
            "--filter",
            ONE,
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let record = read_record(tmp.path(), "randn/cpu-generator/seed1/17");
    assert_eq!(record["schema"], 3);
    assert_eq!(record["verdict"], "identical");
    assert_eq!(record["environment"]["versions"]["libtorch"], "2.13.0");
    assert_eq!(record["spec"]["run"]["generator"]["seed"], 1);
}

#[test]
fn check_exits_1_naming_the_scenario_and_metric_when_a_golden_value_is_perturbed() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_expectations(&fixtures, ONE_NAME, |e| {
        let m = &mut e["metrics"]["sum_abs"];
        *m = serde_json::json!(m.as_f64().unwrap() * (1.0 + 1e-12));
    });
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = t.lines().find(|l| l.contains("seed1/17")).unwrap();
    assert!(
        line.starts_with("drifted") && line.contains("sum_abs"),
        "{line}"
    );
    let row = t
        .lines()
        .find(|l| l.trim_start().starts_with("sum_abs"))
        .unwrap();
    assert!(row.ends_with("drifted"), "{row}");
}

#[test]
fn check_reports_the_first_differing_element_when_bits_differ() {
    let (_tmp, fixtures) = fixtures_copy();
    // Replace the golden's output with another seed's: same shape, other bits.
    let other = reprodiff::torch::Generator::cpu(9)
        .unwrap()
        .randn(&[17], DType::F32, CPU)
        .unwrap();
    edit_expectations(&fixtures, ONE_NAME, |e| {
        plant_expectation(&fixtures.join("golden"), e, &other);
    });
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("first differing element at [0]"), "{t}");
    assert!(t.contains("largest difference"), "{t}");
}

#[test]
fn a_missing_golden_fails_and_names_the_bless_command() {
    let (_tmp, fixtures) = fixtures_copy();
    drop_golden(&fixtures, ONE_NAME);
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("no golden"), "{t}");
    assert!(t.contains("ci/oracle/run.sh --suite rng --filter"), "{t}");
}

#[test]
fn a_malformed_suite_is_exit_2_naming_the_file_and_field() {
    let (_tmp, fixtures) = fixtures_copy();
    let suite = fixtures.join("suites/rng.toml");
    let text0 = std::fs::read_to_string(&suite).unwrap();
    std::fs::write(
        &suite,
        text0.replacen("op = \"randn\"", "op = \"randm\"", 1),
    )
    .unwrap();
    let out = reprodiff(&["check"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("rng.toml") && t.contains("randm"), "{t}");
}

#[test]
fn a_malformed_golden_is_exit_2_naming_the_file() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_expectations(&fixtures, ONE_NAME, |e| {
        e["sha256"] = serde_json::json!("nothex");
    });
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("rng.json") && t.contains("sha256"), "{t}");
}

/// A suite naming a model that does not exist is a suite error (exit 2), not "not run".
#[rstest::rstest]
#[case::missing_folder("model = \"tiny-ddim-c\"", "tiny-ddim-c")]
#[case::malformed_hub_id("model = \"hub:google\"", "hub:org/name")]
#[case::unknown_derived_arch("model = \"derived:nope\"", "derived:nope")]
fn a_suite_naming_a_model_that_is_not_there_is_exit_2(#[case] model: &str, #[case] says: &str) {
    let (_tmp, fixtures) = fixtures_copy();
    let suite = fixtures.join("suites/ddim-tiny.toml");
    let text0 = std::fs::read_to_string(&suite).unwrap();
    let edited = text0.replacen(
        "model = \"tiny-ddim-b\", steps = 50",
        &format!("{model}, steps = 50"),
        1,
    );
    assert_ne!(edited, text0);
    std::fs::write(&suite, edited).unwrap();
    let out = reprodiff(&["check", "--suite", "ddim-tiny"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("ddim-tiny.toml") && t.contains(says), "{t}");
}

/// Two expectations for one class, or a class key nobody can parse: exit 2 naming the file and
/// the scenario.
#[rstest::rstest]
#[case::duplicate_class(true, "two expectations for class")]
#[case::unknown_class_key(false, "threads=")]
fn a_golden_with_a_bad_class_is_exit_2(#[case] duplicate: bool, #[case] says: &str) {
    let (_tmp, fixtures) = fixtures_copy();
    edit_json(&fixtures.join("golden/rng.json"), |v| {
        let list = v["scenarios"][ONE_NAME]["expectations"]
            .as_array_mut()
            .unwrap();
        if duplicate {
            let first = list[0].clone();
            list.push(first);
        } else {
            list[0]["class"] = serde_json::json!(
                "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/thread=2/libtorch=2.13.0"
            );
        }
    });
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(
        t.contains("rng.json") && t.contains(ONE_NAME) && t.contains(says),
        "{t}"
    );
}

#[test]
fn unknown_suites_and_bad_patterns_are_usage_errors() {
    let out = reprodiff(&["check", "--suite", "nope"], None);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", text(&out));
    assert!(text(&out).contains("--suite nope"));
    let out = reprodiff(&["check", "--filter", "("], None);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", text(&out));
    let out = reprodiff(&["check", "--no-such-flag"], None);
    assert_eq!(out.status.code(), Some(exit::USAGE));
}

/// Paths given on the command line that do not exist are exit 2 naming the flag, before any
/// work.
#[test]
fn missing_paths_on_the_command_line_name_their_flag() {
    let nowhere = "/nonexistent/reprodiff-test";
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/records/avx2-amd-epyc");
    let real = real.to_str().unwrap();
    for (args, flag) in [
        (vec!["report", nowhere], "RECORDS_DIR"),
        (vec!["report", real, "--baseline", nowhere], "--baseline"),
        (vec!["report", real, "--localized", nowhere], "--localized"),
        (vec!["golden", "merge", "--from", nowhere], "--from"),
        (
            vec!["golden", "compare", "--from", nowhere, "--out", nowhere],
            "--from",
        ),
    ] {
        let out = reprodiff(&args, None);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{args:?}: {t}");
        assert!(t.contains(&format!("{flag} {nowhere}")), "{args:?}: {t}");
    }
}

#[rstest::rstest]
#[case("f32", DType::F32)]
#[case("float16", DType::F16)]
#[case("bf16", DType::Bf16)]
#[case("float64", DType::F64)]
fn dtype_spellings_parse(#[case] text: &str, #[case] want: DType) {
    assert_eq!(text.parse::<DType>().unwrap(), want);
}

#[rstest::rstest]
#[case("cpu", Some(DeviceSpec::Cpu))]
#[case("cuda", Some(DeviceSpec::Cuda(0)))]
#[case("cuda:3", Some(DeviceSpec::Cuda(3)))]
#[case("gpu", None)]
#[case("cuda:x", None)]
fn device_spellings_parse(#[case] text: &str, #[case] want: Option<DeviceSpec>) {
    let got = text.parse::<DeviceSpec>();
    match want {
        Some(d) => assert_eq!(got.unwrap(), d),
        None => {
            let err = got.unwrap_err();
            assert!(err.to_string().contains(text), "{err}");
            assert_eq!(err.exit_code(), exit::USAGE);
        }
    }
}

#[test]
fn cosine_distance_is_diffusers_formula() {
    use reprodiff::metrics::cosine_distance;
    // Orthogonal vectors are at distance 1, opposite ones at 2, scaled copies at 0.
    approx::assert_abs_diff_eq!(cosine_distance(&[1.0, 0.0], &[0.0, 2.0]), 1.0);
    approx::assert_abs_diff_eq!(cosine_distance(&[1.0, -2.0], &[-1.0, 2.0]), 2.0);
    approx::assert_abs_diff_eq!(
        cosine_distance(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]),
        0.0,
        epsilon = 1e-15
    );
}

/// `run ddim|sd --trace DIR` writes a run record `reprodiff diff` reads (every step, the
/// initial latent and the output; two runs of one call are identical).
#[test]
fn run_trace_writes_a_run_record_diff_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models");
    let (ddim, sd) = (models.join("tiny-ddim-a"), models.join("tiny-sd-a"));
    let runs: [(&str, Vec<&str>); 2] = [
        (
            "ddim",
            vec![
                "run",
                "ddim",
                "--model",
                ddim.to_str().unwrap(),
                "--eta",
                "1",
            ],
        ),
        (
            "sd",
            vec![
                "run",
                "sd",
                "--model",
                sd.to_str().unwrap(),
                "--prompt",
                "a cat",
                "--height",
                "32",
                "--width",
                "32",
            ],
        ),
    ];
    for (name, args) in runs {
        for side in ["a", "b"] {
            let dir = tmp.path().join(format!("{name}-{side}"));
            let mut args = args.clone();
            args.extend(["--seed", "0", "--steps", "3", "--trace"]);
            args.push(dir.to_str().unwrap());
            let out = reprodiff(&args, None);
            assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
        }
        let (a, b) = (
            tmp.path().join(format!("{name}-a")),
            tmp.path().join(format!("{name}-b")),
        );
        let out = reprodiff(&["diff", a.to_str().unwrap(), b.to_str().unwrap()], None);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::OK), "{name}: {t}");
        assert!(t.contains("initial latents: identical"), "{name}: {t}");
        assert!(
            t.contains("steps: 3 and 3; every common step identical"),
            "{name}: {t}"
        );
    }
}

/// `report` takes folders of recorded runs as it takes check records: two folders of the same
/// calls compare run by run, naming the run whose output changed and from which step.
#[test]
fn report_compares_folders_of_recorded_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-ddim-a");
    let model = model.to_str().unwrap();
    for (dir, seed) in [
        ("before/same", "0"),
        ("after/same", "0"),
        ("before/moved", "0"),
        ("after/moved", "1"),
    ] {
        let dir = tmp.path().join(dir);
        let args = [
            "run", "ddim", "--model", model, "--steps", "2", "--seed", seed,
        ];
        let mut args = args.to_vec();
        args.extend(["--trace", dir.to_str().unwrap()]);
        let out = reprodiff(&args, None);
        assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    }
    let (before, after) = (tmp.path().join("before"), tmp.path().join("after"));
    let args = [
        "report",
        after.to_str().unwrap(),
        "--baseline",
        before.to_str().unwrap(),
    ];
    let out = reprodiff(&args, None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("- recorded/moved: differs from the first step"),
        "{t}"
    );
    assert!(!t.contains("- recorded/same:"), "{t}");
    assert!(t.contains("| no expectation | 2 | 2 | +0 |"), "{t}");
}
