//! Check records and what reads them: records.jsonl written concurrently, `report` (drift
//! reports, baselines, `--against`, the HTML page in a browser), `golden compare` across torch
//! releases, and `matrix` (classes, threads, knobs), with the reports' insta snapshots.
use crate::common::*;
use reprodiff::error::exit;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

fn avx2_records() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/records/avx2-amd-epyc/check-records")
}

/// Two `check` processes writing into one folder at once keep every record whole and every
/// saved array (named by content); a later run alone starts the file afresh.
#[test]
fn concurrent_checks_into_one_folder_keep_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = [
        "check",
        "--suite",
        "rng",
        "--filter",
        "^randn/",
        "--save-outputs",
        "--out",
        out,
    ];
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_reprodiff"))
            .args(args)
            .env_remove("CI")
            .env_remove("REPRODIFF_FIXTURES")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(exit::OK), "{}", text(&a));
    assert_eq!(b.status.code(), Some(exit::OK), "{}", text(&b));
    let scenarios = text(&a)
        .lines()
        .filter(|l| l.starts_with("identical"))
        .count();
    assert!(scenarios > 10, "{}", text(&a));
    let records = std::fs::read_to_string(dir.path().join("records.jsonl")).unwrap();
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    let mut ended = 0;
    for line in records.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("a whole record");
        // Each run's start and end lines: both runs ended.
        if r.get("event").is_some() {
            ended += usize::from(r["event"] == "run-end");
            continue;
        }
        *names
            .entry(r["scenario"].as_str().unwrap().into())
            .or_default() += 1;
        let array = dir.path().join(r["array"].as_str().unwrap());
        assert!(array.is_file(), "{array:?}");
    }
    // Both runs started before either wrote, or the second appended: every record is there
    // (a run that found the other finished would have started afresh, leaving its own).
    assert!(
        names.values().all(|&n| n == 2) || names.values().all(|&n| n == 1),
        "{names:?}"
    );
    assert_eq!(names.len(), scenarios);
    assert!(ended >= 1, "no run ended: {records}");
}

/// A records.jsonl of this host's rng suite (checked now), as lines.
fn rng_record_lines(filter: &str) -> Vec<String> {
    let out_dir = tempfile::tempdir().unwrap();
    let args = ["check", "--suite", "rng", "--filter", filter, "--out"];
    let mut args = args.to_vec();
    args.push(out_dir.path().to_str().unwrap());
    let out = reprodiff(&args, None);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    std::fs::read_to_string(out_dir.path().join("records.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"event\":"))
        .map(String::from)
        .collect()
}

fn report_of(lines: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    std::fs::create_dir(&set).unwrap();
    std::fs::write(set.join("records.jsonl"), lines).unwrap();
    reprodiff(&["report", set.to_str().unwrap()], None)
}

/// `report` reads every line it can: bad bytes, a line that is not JSON and a record of an
/// unknown schema are each named (file, line, why) and the good records still count; a file
/// with nothing readable is exit 2 saying why, not "no records here".
#[test]
fn report_reads_every_good_line_and_names_each_bad_one() {
    let good = rng_record_lines("^randn/cpu-generator/seed0/");
    assert!(good.len() >= 5, "{good:?}");
    let mut bytes = Vec::new();
    for (i, l) in good.iter().enumerate() {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
        if i == 1 {
            bytes.extend_from_slice(b"\xff\xfe garbage\n{\"schema\": 99, \"suite\": \"rng\"}\n}\n");
        }
    }
    bytes.extend((0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    let out = report_of(&bytes);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains(&format!("` | {} | {} |", good.len(), good.len())),
        "{t}"
    );
    assert!(t.contains("line 3: not UTF-8"), "{t}");
    assert!(
        t.contains("line 4: record schema 99 is not one this reprodiff reads"),
        "{t}"
    );
    assert!(t.contains("line 5: "), "{t}");
    for only in [&b"\xff\xfe\n"[..], &b"{\"schema\": 99}\n"[..]] {
        let out = report_of(only);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
        assert!(
            t.contains("nothing in it is a readable check record"),
            "{t}"
        );
        assert!(t.contains("not UTF-8") || t.contains("schema 99"), "{t}");
    }
}

/// Copies of one record count once and are reported as duplicates; two records of one scenario
/// and class with different outputs are flagged as conflicting.
#[test]
fn report_counts_duplicates_once_and_flags_conflicting_records() {
    let good = rng_record_lines("^randn/cpu-generator/seed0/4$");
    assert_eq!(good.len(), 1);
    let copies = format!("{}\n", good[0]).repeat(1000);
    let out = report_of(copies.as_bytes());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("` | 1 | 1 |"), "{t}");
    assert!(t.contains("999 duplicate record(s)"), "{t}");
    assert!(!t.contains("conflicting"), "{t}");
    let mut other: serde_json::Value = serde_json::from_str(&good[0]).unwrap();
    other["output"]["sha256"] = serde_json::json!("f".repeat(64));
    let out = report_of(format!("{}\n{other}\n", good[0]).as_bytes());
    let t = text(&out);
    assert!(
        t.contains("conflicting: rng/randn/cpu-generator/seed0/4"),
        "{t}"
    );
}

/// The report over the genuine AVX2 host's records (checked there against AVX-512 goldens):
/// per class, the verdicts and the worst drift, pinned.
#[test]
fn drift_report_of_the_avx2_host_records() {
    let set = reprodiff::harness::report::drift::load(&avx2_records()).unwrap();
    let mut set = set;
    set.label = "avx2-amd-epyc".into();
    snapshot_settings().bind(|| {
        insta::assert_snapshot!(
            "drift_report_avx2_host",
            reprodiff::harness::report::drift::markdown(
                &reprodiff::harness::report::drift::summarize(&[set], None)
            )
        );
    });
}

/// Against a baseline: a scenario that was identical and now drifted is listed "(previously
/// identical)", one fixed "(previously drifted)", a removed one as missing, a new one as new;
/// an unreadable record is named and the rest still read.
#[test]
fn drift_report_compares_with_a_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let new = tmp.path().join("new");
    copy_dir(&avx2_records(), &new);
    let steps5 = new.join("ddim-tiny/tiny-ddim-a__steps5.json");
    let rng = new.join("rng/randn__cpu-generator__seed0__4.json");
    edit_json(&steps5, |v| v["verdict"] = serde_json::json!("identical"));
    edit_json(&rng, |v| v["verdict"] = serde_json::json!("drifted"));
    std::fs::remove_file(new.join("rng/randn__cpu-generator__seed1__4.json")).unwrap();
    std::fs::write(new.join("rng/truncated.json"), "{\"schema\": 2, \"suite\"").unwrap();
    // JSON Lines as check writes them: a good line, a truncated one, another good one.
    let mut line: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rng).unwrap()).unwrap();
    line["scenario"] = serde_json::json!("extra/one");
    let good = serde_json::to_string(&line).unwrap();
    line["scenario"] = serde_json::json!("extra/two");
    let jsonl = format!(
        "{good}\n{{\"schema\": 3, \"sui\n{}\n",
        serde_json::to_string(&line).unwrap()
    );
    std::fs::write(new.join("records.jsonl"), jsonl).unwrap();
    let out = reprodiff(
        &[
            "report",
            new.to_str().unwrap(),
            "--baseline",
            avx2_records().to_str().unwrap(),
        ],
        None,
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("ddim-tiny/tiny-ddim-a/steps5: identical (previously drifted)"),
        "{t}"
    );
    assert!(
        t.contains("rng/randn/cpu-generator/seed0/4: drifted (previously identical)"),
        "{t}"
    );
    assert!(
        t.contains("Missing (1)") && t.contains("- rng/randn/cpu-generator/seed1/4"),
        "{t}"
    );
    assert!(
        t.contains("unreadable, skipped:") && t.contains("truncated.json"),
        "{t}"
    );
    assert!(t.contains("records.jsonl line 2:"), "{t}");
    assert!(
        t.contains("rng/extra/one: drifted") && t.contains("rng/extra/two: drifted"),
        "{t}"
    );
    // The same content as JSON.
    let out = reprodiff(
        &[
            "report",
            new.to_str().unwrap(),
            "--baseline",
            avx2_records().to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = &j["comparisons"][0]["groups"];
    assert_eq!(
        groups["Newly fixed"][0],
        "ddim-tiny/tiny-ddim-a/steps5: identical (previously drifted)"
    );
    assert_eq!(groups["Missing"][0], "rng/randn/cpu-generator/seed1/4");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = reprodiff(&["report", empty.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", text(&out));
}

/// `report --against REV` compares records with the goldens as they were at a git revision:
/// today's run of a committed scenario is unchanged against HEAD; a revision that does not
/// exist is exit 2 naming it.
#[test]
fn report_against_a_revision_reads_that_revisions_goldens() {
    let tmp = tempfile::tempdir().unwrap();
    let records = tmp.path().join("today");
    let run = reprodiff_native(
        &[
            "check",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps2$",
            "--out",
            records.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(exit::OK), "{}", text(&run));
    let report = reprodiff_native(
        &["report", records.to_str().unwrap(), "--against", "HEAD"],
        None,
    );
    let t = text(&report);
    assert_eq!(report.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("## today against goldens@"), "{t}");
    // The baseline is the expectation HEAD holds for the run's own class: on a host of a class
    // nobody recorded (an Intel Xeon without AMX, say) there is none, and the run is new.
    let record = read_record(&records, "tiny-ddim-a/steps2");
    if record["compared_with"]["match"] == "same-class" {
        assert!(t.contains("| identical | 1 | 1 | +0 |"), "{t}");
    } else {
        assert!(t.contains("| identical | 0 | 1 | +1 |"), "{t}");
        assert!(
            t.contains("- ddim-tiny/tiny-ddim-a/steps2: identical"),
            "{t}"
        );
    }
    let bad = reprodiff_native(
        &[
            "report",
            records.to_str().unwrap(),
            "--against",
            "no-such-rev",
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(exit::USAGE), "{}", text(&bad));
    assert!(text(&bad).contains("no-such-rev"), "{}", text(&bad));
}

/// `golden compare` judges oracle outputs from another torch release like a check run: the
/// golden's own bits under a libtorch 2.12 fingerprint are identical (labelled with their
/// class), the same output 1% larger drifts, and the goldens are left alone.
#[test]
fn golden_compare_judges_results_from_another_torch_release() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let scenario = "tiny-sd-a/own-scheduler/steps2";
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("golden/sd-tiny.json")).unwrap())
            .unwrap();
    let env = reprodiff(&["env", "--json"], None);
    let mut env: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    // The expectation a 2.12 run of this host is compared with: its nearest class.
    let run_class: reprodiff::env::EnvClass = env["class"]
        .as_str()
        .unwrap()
        .replace("libtorch=2.13.0", "libtorch=2.12.0")
        .parse()
        .unwrap();
    let expectations = golden["scenarios"][scenario]["expectations"]
        .as_array()
        .unwrap();
    let classes: Vec<reprodiff::env::EnvClass> = expectations
        .iter()
        .map(|e| e["class"].as_str().unwrap().parse().unwrap())
        .collect();
    let nearest = run_class.nearest(&classes).unwrap().to_string();
    let e = expectations.iter().find(|e| e["class"] == nearest).unwrap();
    let image = Tensor::read_npy(root.join("golden").join(e["array"].as_str().unwrap())).unwrap();
    env.as_object_mut().unwrap().remove("class");
    env["producer"] = "oracle".into();
    env["versions"]["libtorch"] = "2.12.0".into();
    let sd_tiny = || std::fs::read(root.join("golden/sd-tiny.json")).unwrap();
    let before = sd_tiny();
    for (scale, want) in [(1.0, "identical"), (1.01, "drifted")] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("arrays")).unwrap();
        let out = &image * scale;
        out.write_npy(tmp.path().join("arrays/out.npy")).unwrap();
        let line = serde_json::json!({
            "suite": "sd-tiny", "scenario": scenario, "shape": out.size(), "dtype": "f32",
            "sha256": reprodiff::torch::tensor_sha256(&out).unwrap(), "array": "arrays/out.npy",
            "environment": env,
            "provenance": {"producer": "oracle", "tool": "test", "command": "test"},
        });
        std::fs::write(tmp.path().join("results.jsonl"), format!("{line}\n")).unwrap();
        let records = tmp.path().join("records");
        let run = reprodiff(
            &[
                "golden",
                "compare",
                "--from",
                tmp.path().to_str().unwrap(),
                "--out",
                records.to_str().unwrap(),
            ],
            None,
        );
        let t = text(&run);
        assert_eq!(run.status.code(), Some(exit::OK), "{t}");
        assert!(t.contains(&format!("1 results compared: 1 {want}")), "{t}");
        let record = read_record(&records, scenario);
        assert!(
            record.to_string().contains("libtorch=2.12.0"),
            "the record names the run's class: {record}"
        );
    }
    assert_eq!(sd_tiny(), before, "compare changed the goldens");
}

/// `golden compare` reads and verifies every selected result before it opens the records: a
/// result whose array is missing is exit 2 with no records file written.
#[test]
fn golden_compare_finds_bad_input_before_writing_a_record() {
    let env = reprodiff(&["env", "--json"], None);
    let mut env: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    env.as_object_mut().unwrap().remove("class");
    env["producer"] = "oracle".into();
    let image = Tensor::zeros([1, 8, 8, 3], (tch::Kind::Float, tch::Device::Cpu));
    let tmp = tempfile::tempdir().unwrap();
    let line = serde_json::json!({
        "suite": "sd-tiny", "scenario": "tiny-sd-a/own-scheduler/steps2", "shape": image.size(),
        "dtype": "f32", "sha256": reprodiff::torch::tensor_sha256(&image).unwrap(),
        "array": "arrays/out.npy", "environment": env,
        "provenance": {"producer": "oracle", "tool": "test", "command": "test"},
    });
    std::fs::write(tmp.path().join("results.jsonl"), format!("{line}\n")).unwrap();
    let records = tmp.path().join("records");
    let from = tmp.path().to_str().unwrap();
    let args = [
        "golden",
        "compare",
        "--from",
        from,
        "--out",
        records.to_str().unwrap(),
    ];
    let run = reprodiff(&args, None);
    let t = text(&run);
    assert_eq!(run.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("out.npy"), "{t}");
    assert!(!records.join("records.jsonl").exists(), "{t}");
}

/// diffusers on torch 2.11.0 and 2.12.1 (the oracle's records, fixtures/records/diffusers-torch-*,
/// judged by `golden compare`) against the torch 2.13.0 goldens: what a torch release moves.
#[test]
fn drift_report_across_torch_releases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
    let sets: Vec<_> = ["diffusers-torch-2.11.0", "diffusers-torch-2.12.1"]
        .iter()
        .map(|d| reprodiff::harness::report::drift::load(&root.join(d)).unwrap())
        .collect();
    snapshot_settings().bind(|| {
        insta::assert_snapshot!(
            "drift_report_torch_releases",
            reprodiff::harness::report::drift::markdown(
                &reprodiff::harness::report::drift::summarize(&sets, None)
            )
        );
    });
}

/// `matrix` with every combination skipped (CUDA on a host without it) ran nothing: exit 2
/// with the reason, not a success pointing at records that do not exist.
#[test]
fn a_matrix_whose_every_combination_is_skipped_fails_with_the_reason() {
    let env = reprodiff(&["env", "--json"], None);
    let env: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let args = [
        "matrix",
        "--suite",
        "rng",
        "--filter",
        ONE,
        "--device",
        "cuda",
        "--out",
        out_dir.path().to_str().unwrap(),
    ];
    let out = reprodiff(&args, None);
    let t = text(&out);
    if env["cuda"]["available"] == true {
        assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    } else {
        assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
        assert!(t.contains("every combination was skipped"), "{t}");
        assert!(!t.contains("compare them with"), "{t}");
    }
}

/// `matrix` runs the selection once per CPU class × thread count, each in its own child, each
/// writing its records; the records carry the class each combination really ran as.
#[test]
fn matrix_runs_each_combination_in_its_own_class_and_report_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("matrix");
    let run = reprodiff_native(
        &[
            "matrix",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps2$",
            "--cpu-class",
            "native,sse41",
            "--threads",
            "1,2",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    let t = text(&run);
    assert_eq!(run.status.code(), Some(exit::OK), "{t}");
    for (label, class_part) in [
        ("native-threads1", "/threads=1/"),
        ("native-threads2", "/threads=2/"),
        (
            "sse41-threads1",
            "/aten=default/onednn=sse41/mkl=auto/threads=1/",
        ),
        (
            "sse41-threads2",
            "/aten=default/onednn=sse41/mkl=auto/threads=2/",
        ),
    ] {
        let record = read_record(&out.join(label), "tiny-ddim-a/steps2");
        let class = record["class"].as_str().unwrap();
        assert!(class.contains(class_part), "{label}: {class}");
        assert!(
            t.contains(&format!("{label:<28}  1 passed, 0 failed")),
            "{t}"
        );
    }
    let dirs: Vec<String> = ["native-threads2", "sse41-threads1"]
        .iter()
        .map(|d| out.join(d).display().to_string())
        .collect();
    let report = reprodiff_native(&["report", &dirs[1], "--baseline", &dirs[0]], None);
    let r = text(&report);
    assert!(
        r.contains("## sse41-threads1") && r.contains("/aten=default/onednn=sse41/"),
        "{r}"
    );
    // The output changed between the two classes: the report says at which step, and what the
    // class cost in time and bits.
    assert!(r.contains("First divergence (1)"), "{r}");
    assert!(
        r.contains("## Optimisation audit against native-threads2"),
        "{r}"
    );
    assert!(r.contains("| sse41-threads1 | 1 | "), "{r}");
    assert!(
        r.contains("ddim-tiny/tiny-ddim-a/steps2: ") && r.contains(" first differs, sum_abs by "),
        "{r}"
    );
    let bad = reprodiff_native(&["matrix", "--cpu-class", "avx1024"], None);
    assert_eq!(bad.status.code(), Some(exit::USAGE), "{}", text(&bad));
    assert!(text(&bad).contains("avx1024"));
}

/// The matrix's setting axes: each knob set runs in its own child with the knobs recorded in
/// the fingerprint; math attention changes the bits of a model with attention; a CUDA
/// combination on a host without CUDA is skipped with the reason; an unknown knob is exit 2.
#[test]
fn matrix_knobs_are_applied_recorded_and_skipped_where_the_host_lacks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("matrix");
    let run = reprodiff(
        &[
            "matrix",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps2$",
            "--threads",
            "2",
            "--knob",
            "none,math-attention,channels-last+onednn-off",
            "--determinism",
            "full",
            "--device",
            "cpu,cuda",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    let t = text(&run);
    assert_eq!(run.status.code(), Some(exit::OK), "{t}");
    let base = read_record(&out.join("native-threads2+det-full"), "tiny-ddim-a/steps2");
    let math = read_record(
        &out.join("native-threads2+math-attention+det-full"),
        "tiny-ddim-a/steps2",
    );
    let both = read_record(
        &out.join("native-threads2+channels-last+onednn-off+det-full"),
        "tiny-ddim-a/steps2",
    );
    assert_eq!(
        math["environment"]["knobs"],
        serde_json::json!(["math-attention", "det-full"])
    );
    assert_eq!(
        both["environment"]["knobs"],
        serde_json::json!(["channels-last", "onednn-off", "det-full"])
    );
    assert_eq!(
        base["environment"]["determinism"]["deterministic_algorithms"],
        true
    );
    assert_ne!(
        base["output"]["sha256"], math["output"]["sha256"],
        "math attention left the bits unchanged: the knob did not reach libtorch"
    );
    assert!(math["output"]["metrics"]["rmse_truth"].as_f64().unwrap() > 0.0);
    // Localized between the two matrix labels, the report's first divergence names the step
    // and module where the knob's run parts from the baseline.
    let (base_label, math_label) = (
        "native-threads2+det-full",
        "native-threads2+math-attention+det-full",
    );
    let r = localized_report(tmp.path(), &out, base_label, math_label);
    assert!(
        r.contains("; localize: first differs at step 0 (t = 500) in down_blocks.1"),
        "{r}"
    );
    let has_cuda = base["environment"]["cuda"]["available"] == true;
    if !has_cuda {
        assert!(
            t.contains("native-threads2+det-full+cuda skipped: no CUDA device on this host"),
            "{t}"
        );
    }
    let bad = reprodiff(&["matrix", "--knob", "turbo"], None);
    assert_eq!(bad.status.code(), Some(exit::USAGE), "{}", text(&bad));
    assert!(text(&bad).contains("'turbo'"), "{}", text(&bad));
}

/// `localize` between the matrix sets `a` and `b` of `tiny-ddim-a/steps2`, then `report` of
/// `b` against `a` with what localize found: the report's text.
fn localized_report(dir: &Path, out: &Path, base_label: &str, math_label: &str) -> String {
    let loc = dir.join("localize");
    let l = reprodiff(
        &[
            "localize",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps2$",
            "--a",
            base_label,
            "--b",
            math_label,
            "--out",
            loc.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(l.status.code(), Some(exit::OK), "{}", text(&l));
    let report = reprodiff(
        &[
            "report",
            out.join(math_label).to_str().unwrap(),
            "--baseline",
            out.join(base_label).to_str().unwrap(),
            "--localized",
            loc.join("localize.jsonl").to_str().unwrap(),
        ],
        None,
    );
    let r = text(&report);
    assert_eq!(report.status.code(), Some(exit::OK), "{r}");
    r
}

/// The optimisation audit over committed matrix records (fixtures/records/intel-xeon-avx512/
/// knob-audit: the full cifar10 architecture under channels-last, math attention and bf16):
/// the README's table, pinned.
#[test]
fn knob_audit_of_the_full_cifar10_architecture() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/records/intel-xeon-avx512/knob-audit/ddim-cifar10-arch");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let sets: Vec<_> = dirs
        .iter()
        .map(|d| reprodiff::harness::report::drift::load(d).unwrap())
        .collect();
    let base = reprodiff::harness::report::drift::load(&root.join("native-threads2+f32")).unwrap();
    let report = reprodiff::harness::report::drift::summarize(&sets, Some(&base));
    // Every knob changed the bits of every output but the all-zero rerun difference, and bf16
    // is orders of magnitude farther from the truth than any f32 knob.
    for row in &report.audit {
        let f32_knob = !row.set.contains("bf16");
        assert_eq!(row.scenarios, 6, "{row:?}");
        if row.set != base.label {
            assert!(row.same_bits <= 1, "{row:?}");
        }
        let ratio = row.truth_ratio.unwrap();
        assert!(
            if f32_knob {
                ratio < 10.0
            } else {
                ratio > 1000.0
            },
            "{row:?}"
        );
    }
    snapshot_settings().bind(|| {
        insta::assert_snapshot!(
            "knob_audit_ddim_cifar10_arch",
            reprodiff::harness::report::drift::markdown(&report)
        );
    });
}

/// The inline PNGs (`data:` URIs) of an HTML page, decoded.
fn inline_pngs(page: &str) -> Vec<image::DynamicImage> {
    use base64::Engine;
    page.split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|s| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&s[..s.find('"').unwrap()])
                .unwrap();
            image::load_from_memory(&bytes).unwrap()
        })
        .collect()
}

/// The seed document's deterministic batch in the HTML report: with the outputs saved, each
/// batch scenario's images appear as one grid in `make_image_grid`'s layout (4 images: 2 x 2).
#[test]
fn html_report_shows_the_deterministic_batch_grids() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("records");
    let run = reprodiff(
        &[
            "check",
            "--suite",
            "sd-tiny",
            "--filter",
            "tiny-sd-b/batch/",
            "--save-outputs",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(exit::OK), "{}", text(&run));
    let record = read_record(&out, "tiny-sd-b/batch/4-images-seeds-0-3/steps5");
    let shape: Vec<u32> = serde_json::from_value(record["output"]["shape"].clone()).unwrap();
    assert_eq!(shape[0], 4);
    let saved = out.join(record["array"].as_str().unwrap());
    assert!(saved.is_file(), "{}", saved.display());
    let report = reprodiff(&["report", out.to_str().unwrap(), "--format", "html"], None);
    assert_eq!(report.status.code(), Some(exit::OK), "{}", text(&report));
    let page = String::from_utf8_lossy(&report.stdout);
    assert!(page.contains("<h2>Deterministic batch generation</h2>"));
    assert_eq!(page.matches("class=\"batch\"").count(), 2, "{page}");
    let img = &inline_pngs(&page)[0];
    assert_eq!((img.width(), img.height()), (2 * shape[2], 2 * shape[1]));
}

/// The HTML report in a real headless browser (Debian's chromium; .ci/run installs it): it
/// loads without console errors and renders the heatmap cells and the per-step drift curves.
#[test]
fn drift_report_html_renders_in_a_headless_browser() {
    let chromium = find_chromium();
    let tmp = tempfile::tempdir().unwrap();
    let page = sse41_against_native_html(tmp.path());
    let browse = |extra: &[&str]| headless(chromium, tmp.path(), &page, extra);
    let dom = browse(&["--dump-dom"]);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(
        !log.contains("CONSOLE") && !log.contains("Uncaught"),
        "{log}"
    );
    assert_rendered(&String::from_utf8_lossy(&dom.stdout));
    let shot = tmp.path().join("report.png");
    let s = browse(&[&format!("--screenshot={}", shot.display())]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// A browser to test in; without one the test fails (a test that passes doing nothing is no
/// test).
fn find_chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "no chromium on this machine: the HTML report is tested in a real browser \
                 (`apt-get install chromium`; .ci/run installs it)"
            )
        })
}

/// The HTML report of two tiny DDIM scenarios under the SSE4.1 capability against native,
/// written to `dir`/report.html.
fn sse41_against_native_html(dir: &Path) -> PathBuf {
    let out = dir.join("matrix");
    let run = reprodiff_native(
        &[
            "matrix",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps(2|5)$",
            "--cpu-class",
            "native,sse41",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(exit::OK), "{}", text(&run));
    let (native, sse41) = (out.join("native"), out.join("sse41"));
    let report = reprodiff_native(
        &[
            "report",
            sse41.to_str().unwrap(),
            "--baseline",
            native.to_str().unwrap(),
            "--format",
            "html",
        ],
        None,
    );
    assert_eq!(report.status.code(), Some(exit::OK), "{}", text(&report));
    let page = dir.join("report.html");
    std::fs::write(&page, &report.stdout).unwrap();
    page
}

/// Chromium, headless, on `page` with `extra` flags, its profile in `dir`.
fn headless(chromium: &str, dir: &Path, page: &Path, extra: &[&str]) -> Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

/// What the page must show once rendered: the heatmap's cells, the curves, the image
/// comparisons, and what a reviewer reads first.
fn assert_rendered(dom_text: &str) {
    assert_eq!(
        dom_text.matches("class=\"cell\"").count(),
        4,
        "2 sets x 2 scenarios"
    );
    assert_eq!(
        dom_text.matches("class=\"curve\"").count(),
        2,
        "both outputs changed"
    );
    // Both changed image outputs side by side with their difference map: three inline PNGs
    // each, which decode to the 8x8 image (the page scales it up).
    assert_eq!(
        dom_text.matches("class=\"compare\"").count(),
        2,
        "{dom_text}"
    );
    // What a reviewer reads: a summary sentence per set first, the heatmap's key, curves that
    // name their scenario and number their steps, image columns that say what they are, and
    // one colour scale per difference map.
    let summary = dom_text.find("<h2>Summary</h2>").expect("a summary");
    assert!(summary < dom_text.find("id=\"heatmap\"").unwrap());
    assert_eq!(
        dom_text.matches("class=\"summary-set\"").count(),
        2,
        "{dom_text}"
    );
    assert!(dom_text.contains("class=\"legend\""));
    assert_eq!(dom_text.matches("class=\"curve-label\"").count(), 2);
    assert!(dom_text.matches("class=\"step-tick\"").count() >= 2);
    assert_eq!(dom_text.matches("<th>difference</th>").count(), 2);
    assert_eq!(dom_text.matches("class=\"scale\"").count(), 2);
    let pngs = inline_pngs(dom_text);
    assert_eq!(pngs.len(), 6);
    for img in pngs {
        assert_eq!((img.width(), img.height()), (8, 8));
    }
}

/// diffusers 0.35.2 and 0.38.0 against 0.42.1 (the oracle's records on one host,
/// fixtures/records/diffusers-*, judged by `golden compare`): what a diffusers release moves,
/// and from which step (docs/findings.md, "Drift across diffusers releases").
#[test]
fn drift_report_across_diffusers_releases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
    let load = |d: &str| reprodiff::harness::report::drift::load(&root.join(d)).unwrap();
    let sets = [load("diffusers-0.35.2"), load("diffusers-0.38.0")];
    let base = load("diffusers-0.42.1");
    let report = reprodiff::harness::report::drift::summarize(&sets, Some(&base));
    let moved = &report.comparisons[0].groups["First divergence"];
    assert!(
        moved
            .iter()
            .any(|l| l.starts_with("ddim-tiny/tiny-ddim-b/steps5: differs from the first step")),
        "{moved:?}"
    );
    assert!(!report.comparisons[1]
        .groups
        .contains_key("First divergence"));
    snapshot_settings().bind(|| {
        insta::assert_snapshot!(
            "drift_report_diffusers_releases",
            reprodiff::harness::report::drift::markdown(&report)
        );
    });
}
