//! What counts as a comparison (#26): only diffusers' expectations are an authority, a check
//! that compared nothing is no pass, a suite nobody recorded says how to record it, and a merge
//! never drops diffusers' expectations without refusing.
use crate::common::*;
use reprodiff::error::exit;
use std::path::Path;

/// A suite `unrecorded` with no golden: a random draw (needs a golden) and a DDIM rerun
/// difference (needs none: run 1 minus run 2 is exactly zero).
fn unrecorded_suite(fixtures: &Path) {
    let text = "schema = 1\nname = \"unrecorded\"\n[defaults]\nmetrics = [\"max_abs\"]\n\
                [[scenario]]\nname = \"draw\"\nrun = { kind = \"random\", op = \"randn\", \
                shape = [4], generator = { type = \"single\", seed = 0 } }\n\
                [[scenario]]\nname = \"rerun-difference\"\nrun = { kind = \"ddim\", model = \
                \"tiny-ddim-b\", steps = 2, twice = true, generator = { type = \"single\", \
                seed = 0 } }\n";
    std::fs::write(fixtures.join("suites/unrecorded.toml"), text).unwrap();
}

#[test]
fn a_suite_nobody_recorded_says_how_to_record_it_and_fails_in_ci() {
    let (_tmp, fixtures) = fixtures_copy();
    unrecorded_suite(&fixtures);
    let args = ["check", "--suite", "unrecorded"];
    let out = reprodiff(&args, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("no expectation recorded for this suite; record it with ci/oracle/run.sh --suite unrecorded"),
        "{t}"
    );
    // The rerun difference ran and was compared with exact zero.
    assert!(
        check_line(&t, "unrecorded/rerun-difference").starts_with("identical"),
        "{t}"
    );
    assert!(t.contains("1 passed, 0 failed, 1 skipped"), "{t}");
    let out = reprodiff_with_env(&args, Some(&fixtures), &[("CI", "true")]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("1 passed, 1 failed"), "{t}");
}

#[test]
fn a_check_that_compared_nothing_is_not_a_pass() {
    let (tmp, fixtures) = fixtures_copy();
    let text_ = "schema = 1\nname = \"absent\"\n[[scenario]]\nname = \"hub-model\"\n\
                 metrics = [\"bits\"]\nrun = { kind = \"ddim\", model = \
                 \"hub:nobody/no-such-model\", steps = 1, generator = { type = \"single\", \
                 seed = 0 } }\n";
    std::fs::write(fixtures.join("suites/absent.toml"), text_).unwrap();
    let cache = tmp.path().join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    let out = reprodiff_with_env(
        &["check", "--suite", "absent"],
        Some(&fixtures),
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(
        t.contains("model not found") && t.contains("nothing was compared"),
        "{t}"
    );
    // The same under `matrix`: a combination that skipped everything compared nothing.
    let matrix_out = tmp.path().join("matrix");
    let out = reprodiff_with_env(
        &[
            "matrix",
            "--suite",
            "absent",
            "--out",
            matrix_out.to_str().unwrap(),
        ],
        Some(&fixtures),
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("nothing was compared in native"), "{t}");
}

/// A scenario whose output changed shape: the merge refuses rather than drop diffusers'
/// expectations and truth, and writes nothing; `--replace-changed` drops them, naming them.
#[test]
fn a_merge_never_drops_a_diffusers_expectation_without_refusing() {
    let (_tmp, fixtures) = fixtures_copy();
    let theirs_tmp = tempfile::tempdir().unwrap();
    let theirs = theirs_tmp.path().join("golden");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::copy(fixtures.join("golden/rng.json"), theirs.join("rng.json")).unwrap();
    copy_dir(&fixtures.join("golden/rng"), &theirs.join("rng"));
    plant_their_output(&theirs, 18);
    let before = std::fs::read(fixtures.join("golden/rng.json")).unwrap();
    let args = ["golden", "merge", "--from", theirs.to_str().unwrap()];
    let out = reprodiff(&args, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(
        t.contains("merging would drop") && t.contains("oracle ["),
        "{t}"
    );
    assert_eq!(
        std::fs::read(fixtures.join("golden/rng.json")).unwrap(),
        before
    );
    let mut args = args.to_vec();
    args.push("--replace-changed");
    let out = reprodiff(&args, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("dropping"), "{t}");
}

/// Another host's whole golden folder, as the docs say to merge it: files that are not the
/// golden of a selected suite (tokenizer-ids.json, suites not selected) are named and left
/// alone, and `--suite` / `--filter` choose what is merged. Their rng golden with one
/// scenario's expectation altered is the witness: merged only where selected.
#[test]
fn a_golden_folder_merge_takes_only_the_selected_suites_and_scenarios() {
    let (_tmp, fixtures) = fixtures_copy();
    let theirs_tmp = tempfile::tempdir().unwrap();
    let theirs = theirs_tmp.path().join("golden");
    copy_dir(&fixtures.join("golden"), &theirs);
    assert!(theirs.join("tokenizer-ids.json").is_file());
    plant_their_output(&theirs, 17);
    let before = std::fs::read(fixtures.join("golden/rng.json")).unwrap();
    let merge = |extra: &[&str]| {
        let mut args = vec!["golden", "merge", "--from", theirs.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = reprodiff(&args, Some(&fixtures));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::OK), "{t}");
        t
    };
    // Another suite selected: rng's golden is not touched.
    let t = merge(&["--suite", "ddim-tiny"]);
    assert!(
        t.contains("tokenizer-ids.json: not the golden of a selected suite"),
        "{t}"
    );
    assert!(t.contains("ddim-tiny:") && !t.contains("rng:"), "{t}");
    assert_eq!(
        std::fs::read(fixtures.join("golden/rng.json")).unwrap(),
        before
    );
    // rng selected, but a filter that misses the altered scenario: nothing replaced.
    let t = merge(&["--suite", "rng", "--filter", "^randn/cpu-generator/seed0/"]);
    assert!(t.contains("rng: 0 expectation(s) added, 0 replaced"), "{t}");
    // The altered scenario selected: its expectation is replaced.
    let t = merge(&["--suite", "rng"]);
    assert!(t.contains("rng: 0 expectation(s) added, 1 replaced"), "{t}");
    assert_ne!(
        std::fs::read(fixtures.join("golden/rng.json")).unwrap(),
        before
    );
}

/// In the golden folder `theirs`, ONE_NAME's output becomes `len` other values (shape [len]:
/// 17 is its own shape, anything else a changed one), its first expectation holding them and
/// the others dropped.
fn plant_their_output(theirs: &Path, len: i64) {
    let other = reprodiff::torch::Generator::cpu(3)
        .unwrap()
        .randn(&[len], reprodiff::torch::DType::F32, CPU)
        .unwrap();
    edit_json(&theirs.join("rng.json"), |v| {
        let s = &mut v["scenarios"][ONE_NAME];
        s["shape"] = serde_json::json!([len]);
        let list = s["expectations"].as_array_mut().unwrap();
        list.truncate(1);
        plant_expectation(theirs, &mut list[0], &other);
    });
}
