//! Hostile and broken inputs (#30): a corrupt golden is never a verdict, data never becomes a
//! path out of its folder, concurrent blesses lose nothing, limits are errors, bad input
//! destroys nothing, and a run cut short says so.
use crate::common::*;
use reprodiff::error::exit;
use std::path::Path;
use std::process::Command;

/// A scenario of the rng suite: fast, with a committed golden on every class.
const RNG_ONE: &str = "^randn/cpu-generator/seed1/17$";

/// Flips the last byte of `file` (inside the array's data, past the .npy header).
fn flip_last_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

/// The arrays `tiny-ddim-a/steps2` names in the copied ddim-tiny golden: its truth, its step
/// truth and its first expectation.
fn steps2_arrays(fixtures: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("golden/ddim-tiny.json")).unwrap(),
    )
    .unwrap();
    let s = &v["scenarios"]["tiny-ddim-a/steps2"];
    let mut out = vec![s["truth"]["array"].as_str().unwrap().to_string()];
    if let Some(a) = s["truth"]["steps"]["array"].as_str() {
        out.push(a.to_string());
    }
    out.push(s["expectations"][0]["array"].as_str().unwrap().to_string());
    out
}

#[test]
fn a_flipped_byte_in_any_golden_array_is_an_error_naming_it_never_a_verdict() {
    for i in 0..3 {
        let (_tmp, fixtures) = fixtures_copy();
        let arrays = steps2_arrays(&fixtures);
        let Some(rel) = arrays.get(i) else { continue };
        flip_last_byte(&fixtures.join("golden").join(rel));
        let out_dir = fixtures.join("out");
        let out = reprodiff_native(
            &[
                "check",
                "--suite",
                "ddim-tiny",
                "--filter",
                "^tiny-ddim-a/steps2$",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            Some(&fixtures),
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{rel}: {t}");
        assert!(t.contains(rel.as_str()), "{rel} not named: {t}");
        assert!(t.contains("sha256"), "{t}");
        assert!(
            !out_dir.join("records.jsonl").exists(),
            "records were opened before the goldens were known good"
        );
    }
}

#[test]
fn a_flipped_published_array_is_an_error_too() {
    let (_tmp, fixtures) = fixtures_copy();
    let array = fixtures.join("golden/ddim-docs/global-seed0__50-steps__slice.published.npy");
    flip_last_byte(&array);
    let out = reprodiff(
        &["check", "--suite", "ddim-docs", "--filter", "slice"],
        Some(&fixtures),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("slice.published.npy"), "{t}");
}

/// A suite of one scenario named `name` (the rng suite's first scenario, renamed).
fn suite_named(fixtures: &Path, file: &str, suite: &str, name: &str) {
    let text = format!(
        "schema = 1\nname = \"{suite}\"\n[[scenario]]\nname = \"{name}\"\nmetrics = [\"bits\"]\n\
         run = {{ kind = \"random\", op = \"randn\", shape = [4], generator = {{ type = \
         \"single\", seed = 0 }} }}\n"
    );
    std::fs::write(fixtures.join("suites").join(file), text).unwrap();
}

#[test]
fn a_scenario_name_that_leaves_the_output_folder_writes_nothing() {
    let (tmp, fixtures) = fixtures_copy();
    for name in ["../../../escape/x", "/tmp/escape-abs/x"] {
        suite_named(&fixtures, "evil.toml", "evil", name);
        let out_dir = tmp.path().join("a/b/out");
        let out = reprodiff(
            &[
                "check",
                "--suite",
                "evil",
                "--out",
                out_dir.to_str().unwrap(),
                "--save-outputs",
            ],
            Some(&fixtures),
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
        assert!(t.contains("evil.toml") && t.contains("escape"), "{t}");
        assert!(!tmp.path().join("escape").exists());
        assert!(!Path::new("/tmp/escape-abs").exists());
    }
}

#[test]
fn a_model_path_out_of_the_models_folder_is_refused() {
    let (tmp, fixtures) = fixtures_copy();
    copy_dir(
        &fixtures.join("models/tiny-ddim-a"),
        &tmp.path().join("outside"),
    );
    let text_ = "schema = 1\nname = \"evil\"\n[[scenario]]\nname = \"x\"\nmetrics = [\"bits\"]\n\
                 run = { kind = \"ddim\", model = \"../../outside\", steps = 1, generator = { \
                 type = \"single\", seed = 0 } }\n";
    std::fs::write(fixtures.join("suites/evil.toml"), text_).unwrap();
    let out = reprodiff(&["list", "--suite", "evil"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("`..`") && t.contains("evil.toml"), "{t}");
}

#[test]
fn names_over_200_bytes_and_oversized_matrices_are_errors_and_other_suites_still_run() {
    let (_tmp, fixtures) = fixtures_copy();
    suite_named(&fixtures, "long.toml", "long", &"n".repeat(65_536));
    let out = reprodiff(&["list", "--suite", "long"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("at most 200") && !t.contains("panicked"), "{t}");
    std::fs::remove_file(fixtures.join("suites/long.toml")).unwrap();

    // 10^9 scenarios: refused before expanding; a command on another suite is untouched.
    let huge = "schema = 1\nname = \"huge\"\n[[scenario]]\nname = \"r{a}{b}{c}\"\n\
                metrics = [\"bits\"]\nmatrix = { a = [RANGE], b = [RANGE], c = [RANGE] }\n\
                run = { kind = \"random\", op = \"randn\", shape = [4], generator = { type = \
                \"single\", seed = \"$a\" } }\n"
        .replace(
            "RANGE",
            &(0..1000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    std::fs::write(fixtures.join("suites/huge.toml"), huge).unwrap();
    let out = reprodiff(&["list", "--suite", "huge"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("huge.toml") && t.contains("100000"), "{t}");
    let out = reprodiff(&["list", "--suite", "rng"], Some(&fixtures));
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
}

#[test]
fn two_suite_files_of_one_name_are_refused() {
    let (_tmp, fixtures) = fixtures_copy();
    std::fs::copy(
        fixtures.join("suites/rng.toml"),
        fixtures.join("suites/rng-copy.toml"),
    )
    .unwrap();
    let out = reprodiff(&["list"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(
        t.contains("rng-copy.toml") && t.contains("taken already"),
        "{t}"
    );
}

#[test]
fn a_bad_golden_leaves_the_records_of_the_last_run_as_they_were() {
    let (_tmp, fixtures) = fixtures_copy();
    let out_dir = fixtures.join("out");
    let args = [
        "check",
        "--suite",
        "rng",
        "--filter",
        RNG_ONE,
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let first = reprodiff(&args, Some(&fixtures));
    assert_eq!(first.status.code(), Some(exit::OK), "{}", text(&first));
    let before = std::fs::read(out_dir.join("records.jsonl")).unwrap();
    assert!(!before.is_empty());
    std::fs::write(fixtures.join("golden/rng.json"), "{ not json").unwrap();
    let second = reprodiff(&args, Some(&fixtures));
    assert_eq!(second.status.code(), Some(exit::USAGE), "{}", text(&second));
    assert_eq!(
        std::fs::read(out_dir.join("records.jsonl")).unwrap(),
        before
    );
}

#[test]
fn two_blesses_at_once_keep_both_selections() {
    let (_tmp, fixtures) = fixtures_copy();
    let names = |prefix: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join("golden/rng.json")).unwrap(),
        )
        .unwrap();
        v["scenarios"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    };
    let (a, b) = (names("randn/cpu-generator/seed"), names("batch/"));
    assert!(a.len() >= 2 && b.len() >= 2, "{a:?} {b:?}");
    for n in a.iter().chain(&b) {
        drop_golden(&fixtures, n);
    }
    let bless = |filter: &str| {
        Command::new(env!("CARGO_BIN_EXE_reprodiff"))
            .args(["bless", "--suite", "rng", "--filter", filter, "--fixtures"])
            .arg(&fixtures)
            .env_remove("CI")
            .env_remove("REPRODIFF_FIXTURES")
            .spawn()
            .unwrap()
    };
    let (mut p, mut q) = (bless("^randn/cpu-generator/seed"), bless("^batch/"));
    assert!(p.wait().unwrap().success() && q.wait().unwrap().success());
    let kept = names("");
    for n in a.iter().chain(&b) {
        assert!(
            kept.contains(n),
            "{n} lost: both blesses said it was written"
        );
    }
}

/// `reprodiff ARGS --fixtures F` under `sh` with a file-size limit of `kib` KiB, as a full disk
/// would stop its writes (SIGXFSZ ignored, so a write fails with EFBIG instead).
fn with_file_limit(kib: u32, args: &[&str], fixtures: &Path) -> std::process::Output {
    let exe = env!("CARGO_BIN_EXE_reprodiff");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f {kib}; trap '' XFSZ; exec '{exe}' {} --fixtures '{}'",
            quoted.join(" "),
            fixtures.display()
        ))
        .env_remove("CI")
        .env_remove("REPRODIFF_FIXTURES")
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_leaves_whole_lines_no_empty_array_and_a_report_that_says_incomplete() {
    let (_tmp, fixtures) = fixtures_copy();
    let out_dir = fixtures.join("out");
    let out = with_file_limit(
        24,
        &[
            "check",
            "--suite",
            "rng",
            "--out",
            out_dir.to_str().unwrap(),
            "--save-outputs",
        ],
        &fixtures,
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::INTERNAL), "{t}");
    let records = std::fs::read(out_dir.join("records.jsonl")).unwrap();
    assert_eq!(records.last(), Some(&b'\n'), "a cut-off last line");
    let mut arrays = Vec::new();
    collect_files(&out_dir.join("outputs"), &mut arrays);
    for a in &arrays {
        assert!(
            tch::Tensor::read_npy(a).is_ok(),
            "{} is cut off",
            a.display()
        );
    }
    let report = reprodiff(&["report", out_dir.to_str().unwrap()], None);
    let r = text(&report);
    assert!(r.contains("incomplete run"), "{r}");
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            collect_files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

#[test]
fn a_killed_check_is_told_from_a_complete_filtered_one() {
    let (_tmp, fixtures) = fixtures_copy();
    let out_dir = fixtures.join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprodiff"))
        .args([
            "check",
            "--suite",
            "rng",
            "--out",
            out_dir.to_str().unwrap(),
            "--fixtures",
        ])
        .arg(&fixtures)
        .env_remove("CI")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let records = out_dir.join("records.jsonl");
    let lines = || {
        std::fs::read_to_string(&records)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while lines() < 3 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let t = text(&reprodiff(&["report", out_dir.to_str().unwrap()], None));
    assert!(t.contains("incomplete run"), "{t}");

    let complete = reprodiff(
        &[
            "check",
            "--suite",
            "rng",
            "--filter",
            RNG_ONE,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Some(&fixtures),
    );
    assert_eq!(complete.status.code(), Some(exit::OK));
    let t = text(&reprodiff(&["report", out_dir.to_str().unwrap()], None));
    assert!(!t.contains("incomplete run"), "{t}");
}

#[rstest::rstest]
#[case::knobs("REPRODIFF_KNOBS", "no-such-knob")]
#[case::threads("REPRODIFF_THREADS", "zero")]
#[case::mkl_cbwr("MKL_CBWR", "NOT_A_PATH")]
#[case::newline_in_class("MKL_CBWR", "AVX2\nfake")]
#[case::onednn("ONEDNN_MAX_CPU_ISA", "avx2/../x")]
fn a_bad_environment_value_is_exit_2_naming_it_before_anything_runs(
    #[case] var: &str,
    #[case] value: &str,
) {
    let (_tmp, fixtures) = fixtures_copy();
    let out_dir = fixtures.join("out");
    let out = reprodiff_with_env(
        &[
            "check",
            "--suite",
            "rng",
            "--filter",
            RNG_ONE,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Some(&fixtures),
        &[(var, value)],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains(var), "{t}");
    assert!(!out_dir.exists(), "something ran");
}

#[test]
fn records_are_never_written_through_a_symlink() {
    let (tmp, fixtures) = fixtures_copy();
    let out_dir = fixtures.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let target = tmp.path().join("precious.txt");
    std::fs::write(&target, "keep me").unwrap();
    std::os::unix::fs::symlink(&target, out_dir.join("records.jsonl")).unwrap();
    let out = reprodiff(
        &[
            "check",
            "--suite",
            "rng",
            "--filter",
            RNG_ONE,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Some(&fixtures),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("symbolic link"), "{t}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}

#[test]
fn an_empty_records_file_and_an_out_that_is_a_file_are_named_as_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("records.jsonl"), "").unwrap();
    let out = reprodiff(&["report", tmp.path().to_str().unwrap()], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("records.jsonl holds no record"), "{t}");

    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = reprodiff(
        &[
            "check",
            "--suite",
            "rng",
            "--filter",
            RNG_ONE,
            "--out",
            file.to_str().unwrap(),
        ],
        None,
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains("is a file"), "{t}");
}

#[test]
fn a_run_on_other_weights_keeps_its_verdict_and_says_the_model_differs() {
    let (_tmp, fixtures) = fixtures_copy();
    let name = "tiny-ddim-a/steps2";
    edit_json(&fixtures.join("golden/ddim-tiny.json"), |v| {
        v["scenarios"].as_object_mut().unwrap().remove(name);
    });
    let filter = "^tiny-ddim-a/steps2$";
    let bless = reprodiff_native(
        &["bless", "--suite", "ddim-tiny", "--filter", filter],
        Some(&fixtures),
    );
    assert_eq!(bless.status.code(), Some(exit::OK), "{}", text(&bless));
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("golden/ddim-tiny.json")).unwrap(),
    )
    .unwrap();
    let recorded = v["scenarios"][name]["model_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(recorded.len(), 64);

    rewrite_weights(&fixtures.join("models/tiny-ddim-a"), |tensors| {
        let (_, w) = tensors
            .iter_mut()
            .find(|(n, _)| n.ends_with("conv_out.bias"))
            .unwrap();
        *w = &*w * 1.01;
    });
    let out_dir = fixtures.join("out");
    let check = reprodiff_native(
        &[
            "check",
            "--suite",
            "ddim-tiny",
            "--filter",
            filter,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Some(&fixtures),
    );
    let t = text(&check);
    assert_eq!(check.status.code(), Some(exit::FAILED), "{t}");
    let record = read_record(&out_dir, name);
    assert_eq!(record["verdict"], "drifted", "{record}");
    let notes = record["notes"].to_string();
    assert!(
        notes.contains("the model differs from the golden's"),
        "{notes}"
    );
    assert!(notes.contains(&recorded[..12]), "{notes}");
}
