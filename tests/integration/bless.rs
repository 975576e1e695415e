//! `bless` and `golden merge`: writing expectations with their provenance, never losing a
//! golden (refusals, killed writes, unchanged files left alone) and never overriding the oracle.
use crate::common::*;
use reprodiff::error::exit;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_bytes(fixtures: &Path) -> Vec<u8> {
    std::fs::read(fixtures.join("golden/rng.json")).unwrap()
}

#[test]
fn bless_writes_a_missing_golden_with_provenance_and_check_then_passes() {
    let (_tmp, fixtures) = fixtures_copy();
    drop_golden(&fixtures, ONE_NAME);
    let out = reprodiff(&["bless", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("new expectation for class"), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&golden_bytes(&fixtures)).unwrap();
    let entries = v["scenarios"][ONE_NAME]["expectations"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["provenance"]["producer"], "reprodiff");
    assert!(entry["provenance"]["command"]
        .as_str()
        .unwrap()
        .starts_with("reprodiff bless"));
    let env = entry["provenance"]["environment"].as_str().unwrap();
    assert!(v["environments"][env]["versions"]["libtorch"].is_string());
    // It matches what the oracle had stored before (same bits).
    let original: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/rng.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let oracle = original["scenarios"][ONE_NAME]["expectations"]
        .as_array()
        .unwrap();
    assert!(
        oracle.iter().any(|e| e["sha256"] == entry["sha256"]),
        "{oracle:?}"
    );
    // reprodiff agreeing with its own blessing compares nothing with diffusers: counted apart,
    // and a check of nothing else compared nothing.
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(check_line(&t, ONE_NAME).starts_with("blessed only"), "{t}");
    assert!(
        t.contains("matches its own blessing; no diffusers expectation"),
        "{t}"
    );
    assert!(t.contains("nothing was compared"), "{t}");
    let out = reprodiff_with_env(
        &["check", "--filter", ONE],
        Some(&fixtures),
        &[("CI", "true")],
    );
    assert!(text(&out).contains("0 passed, 1 failed"), "{}", text(&out));
}

/// A golden write killed between its temporary file and the rename (a test hook aborts the
/// process there) leaves the goldens as they were; the next bless removes the temporary file,
/// says so, and writes; .gitignore covers such files meanwhile. For the arrays and the JSON.
#[test]
fn a_write_killed_before_its_rename_loses_nothing_and_the_next_bless_cleans_up() {
    use reprodiff::harness::store::ABORT_BEFORE_RENAME_ENV;
    for kind in ["array", "json"] {
        let (_tmp, fixtures) = fixtures_copy();
        drop_golden(&fixtures, ONE_NAME);
        // Its arrays too, so that bless writes one (an array already there is kept).
        let slug = reprodiff::harness::store::slug(ONE_NAME);
        for e in std::fs::read_dir(fixtures.join("golden/rng"))
            .unwrap()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{slug}."))
            {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let before = golden_bytes(&fixtures);
        let args = ["bless", "--filter", ONE];
        let out = reprodiff_with_env(&args, Some(&fixtures), &[(ABORT_BEFORE_RENAME_ENV, kind)]);
        assert_ne!(out.status.code(), Some(exit::OK), "{kind}: {}", text(&out));
        assert_eq!(
            golden_bytes(&fixtures),
            before,
            "{kind}: the goldens changed"
        );
        let temps = |root: &Path| -> Vec<PathBuf> {
            let mut found = Vec::new();
            for dir in [root.join("golden"), root.join("golden/rng")] {
                for e in std::fs::read_dir(dir).unwrap().flatten() {
                    if e.file_name().to_string_lossy().starts_with(".tmp-") {
                        found.push(e.path());
                    }
                }
            }
            found
        };
        let left = temps(&fixtures);
        assert_eq!(left.len(), 1, "{kind}: {left:?}");
        let ignored = Command::new("git")
            .args(["check-ignore", "-q", "--no-index"])
            .arg(format!(
                "fixtures/{}",
                left[0].strip_prefix(&fixtures).unwrap().display()
            ))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(
            ignored.success(),
            "{kind}: .gitignore does not cover {:?}",
            left[0]
        );
        let out = reprodiff(&args, Some(&fixtures));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::OK), "{kind}: {t}");
        assert!(t.contains("left by an interrupted write"), "{kind}: {t}");
        assert!(
            temps(&fixtures).is_empty(),
            "{kind}: {:?}",
            temps(&fixtures)
        );
        assert_eq!(producers(&fixtures), ["reprodiff"], "{kind}: {t}");
    }
}

#[test]
fn bless_refuses_in_ci_and_writes_nothing() {
    let (_tmp, fixtures) = fixtures_copy();
    drop_golden(&fixtures, ONE_NAME);
    let before = golden_bytes(&fixtures);
    let out = Command::new(env!("CARGO_BIN_EXE_reprodiff"))
        .args(["bless", "--filter", ONE, "--fixtures"])
        .arg(&fixtures)
        .env("CI", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit::REFUSED), "{}", text(&out));
    assert_eq!(golden_bytes(&fixtures), before);
}

#[test]
fn bless_refuses_an_unrepeatable_scenario_and_writes_nothing() {
    let (_tmp, fixtures) = fixtures_copy();
    let suite = fixtures.join("suites/rng.toml");
    let mut s = std::fs::read_to_string(&suite).unwrap();
    s.push_str(
        "\n[[scenario]]\nname = \"unseeded/4\"\n\
         run = { kind = \"random\", op = \"randn\", shape = [4], generator = { type = \"unseeded\" } }\n",
    );
    std::fs::write(&suite, s).unwrap();
    let before = golden_bytes(&fixtures);
    let out = reprodiff(
        &[
            "bless",
            "--filter",
            "^(unseeded/4|randn/cpu-generator/seed1/17)$",
        ],
        Some(&fixtures),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::REFUSED), "{t}");
    assert!(t.contains("unseeded/4: two runs differ"), "{t}");
    assert_eq!(golden_bytes(&fixtures), before);
}

/// The class a run of `filter`'s one scenario has on this host, from `check --json`.
fn run_class(fixtures: &Path, filter: &str) -> String {
    let out = reprodiff(&["check", "--json", "--filter", filter], Some(fixtures));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    v[0]["class"].as_str().unwrap().to_string()
}

/// Leaves ONE_NAME with a single oracle expectation, of class `class`, keeping its real bits
/// when `keep_bits`, else zeroed ones. Decided before bless runs, so each test knows which
/// case it is in.
fn one_oracle_expectation(fixtures: &Path, class: &str, keep_bits: bool) {
    use reprodiff::env::EnvClass;
    edit_json(&fixtures.join("golden/rng.json"), |v| {
        let list = v["scenarios"][ONE_NAME]["expectations"]
            .as_array_mut()
            .unwrap();
        // The expectation whose bits this host's run has: the nearest class's (the draws
        // depend on the ATen capability alone).
        let want: EnvClass = class.parse().unwrap();
        let classes: Vec<EnvClass> = list
            .iter()
            .map(|e| e["class"].as_str().unwrap().parse().unwrap())
            .filter(|c| want.shares(c, reprodiff::env::BITS_DEPEND_ON))
            .collect();
        let nearest = want.nearest(&classes).unwrap().to_string();
        list.retain(|e| e["class"] == nearest.as_str());
        assert_eq!(list[0]["provenance"]["producer"], "oracle");
        list[0]["class"] = serde_json::json!(class);
        if !keep_bits {
            list[0]["sha256"] = serde_json::json!("0".repeat(64));
        }
    });
}

/// A class that differs from `class` only in its vendor and oneDNN ISA: the rng suite's bits
/// rule still compares with it (the draws do not depend on those).
fn sibling_class(class: &str) -> String {
    let mut parts: Vec<String> = class.split('/').map(String::from).collect();
    parts[2] = "elsewhere".into();
    parts[4] = "onednn=sse41".into();
    parts.join("/")
}

/// The producers of ONE_NAME's expectations, sorted (the golden keeps them in the order of
/// their classes, which depends on this host's class).
fn producers(fixtures: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&golden_bytes(fixtures)).unwrap();
    let mut producers: Vec<String> = v["scenarios"][ONE_NAME]["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["provenance"]["producer"].as_str().unwrap().to_string())
        .collect();
    producers.sort();
    producers
}

/// bless never replaces the oracle's expectation for this host's class, even when this run's
/// bits differ from it: it says "kept", names the oracle's command and writes nothing.
#[test]
fn bless_never_replaces_an_oracle_expectation() {
    let (_tmp, fixtures) = fixtures_copy();
    let class = run_class(&fixtures, ONE);
    one_oracle_expectation(&fixtures, &class, false);
    let before = golden_bytes(&fixtures);
    let out = reprodiff(&["bless", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("kept: the oracle expectation") && t.contains("ci/oracle/run.sh"),
        "{t}"
    );
    assert_eq!(producers(&fixtures), ["oracle"], "{t}");
    assert_eq!(golden_bytes(&fixtures), before, "{t}");
}

/// Where the oracle never recorded this host's class, bless adds reprodiff's own expectation
/// beside the oracle's; check then still compares with the oracle's (the nearest class, by the
/// suite's rule) and uses the blessed one only as an extra exact check, which fails on its own
/// when it no longer holds.
#[test]
fn a_blessed_expectation_is_an_extra_check_never_the_authority() {
    let (_tmp, fixtures) = fixtures_copy();
    let class = run_class(&fixtures, ONE);
    let elsewhere = sibling_class(&class);
    one_oracle_expectation(&fixtures, &elsewhere, true);
    let out = reprodiff(&["bless", "--filter", ONE], Some(&fixtures));
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    assert_eq!(producers(&fixtures), ["oracle", "reprodiff"]);
    let out = reprodiff(&["check", "--filter", ONE, "--verbose"], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, ONE_NAME);
    assert!(
        line.starts_with("identical")
            && line.contains(&format!("nearest class {elsewhere} (oracle)")),
        "{line}"
    );
    assert!(t.contains("bits (blessed)"), "{t}");
    // The oracle's bits move: the blessed expectation cannot hide it.
    edit_json(&fixtures.join("golden/rng.json"), |v| {
        let e = v["scenarios"][ONE_NAME]["expectations"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| e["provenance"]["producer"] == "oracle")
            .unwrap();
        let other = reprodiff::torch::Generator::cpu(9)
            .unwrap()
            .randn(&[17], reprodiff::torch::DType::F32, CPU)
            .unwrap();
        plant_expectation(&fixtures.join("golden"), e, &other);
    });
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(check_line(&t, ONE_NAME).starts_with("drifted"), "{t}");
}

/// A second bless of an unchanged reprodiff expectation writes nothing: not a byte, and the
/// file is not even rewritten (its inode and modification time stay).
#[test]
fn bless_leaves_unchanged_goldens_byte_for_byte() {
    use std::os::unix::fs::MetadataExt;
    let (_tmp, fixtures) = fixtures_copy();
    let class = run_class(&fixtures, ONE);
    one_oracle_expectation(&fixtures, &sibling_class(&class), true);
    let out = reprodiff(&["bless", "--filter", ONE], Some(&fixtures));
    assert!(
        text(&out).contains("new expectation for class"),
        "{}",
        text(&out)
    );
    assert_eq!(producers(&fixtures), ["oracle", "reprodiff"]);
    let path = fixtures.join("golden/rng.json");
    let (before, meta) = (golden_bytes(&fixtures), std::fs::metadata(&path).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = reprodiff(&["bless", "--filter", ONE], Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("already up to date"), "{t}");
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(golden_bytes(&fixtures), before);
    assert_eq!(
        (after.ino(), after.mtime_nsec(), after.mtime()),
        (meta.ino(), meta.mtime_nsec(), meta.mtime()),
        "the golden was rewritten"
    );
}

/// `golden merge` never replaces an oracle expectation with one reprodiff blessed, and prints
/// old -> new for every replacement it makes.
#[test]
fn merge_keeps_oracle_expectations_and_prints_each_replacement() {
    let (_tmp, fixtures) = fixtures_copy();
    let class = run_class(&fixtures, ONE);
    // A golden folder (theirs: the rng suite only) whose expectation for this class was
    // blessed by reprodiff.
    let theirs_tmp = tempfile::tempdir().unwrap();
    let theirs = theirs_tmp.path().to_path_buf();
    std::fs::create_dir_all(theirs.join("golden")).unwrap();
    std::fs::copy(
        fixtures.join("golden/rng.json"),
        theirs.join("golden/rng.json"),
    )
    .unwrap();
    copy_dir(&fixtures.join("golden/rng"), &theirs.join("golden/rng"));
    one_oracle_expectation(&theirs, &class, true);
    edit_json(&theirs.join("golden/rng.json"), |v| {
        let e = &mut v["scenarios"][ONE_NAME]["expectations"][0];
        e["provenance"]["producer"] = serde_json::json!("reprodiff");
    });
    one_oracle_expectation(&fixtures, &class, false);
    let before = golden_bytes(&fixtures);
    let from = theirs.join("golden");
    let args = ["golden", "merge", "--from", from.to_str().unwrap()];
    let out = reprodiff(&args, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("kept the oracle expectation"), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&golden_bytes(&fixtures)).unwrap();
    let old: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(
        v["scenarios"][ONE_NAME], old["scenarios"][ONE_NAME],
        "the oracle expectation was touched: {t}"
    );
    // An oracle expectation from elsewhere does replace one, and says old -> new.
    edit_json(&theirs.join("golden/rng.json"), |v| {
        let e = &mut v["scenarios"][ONE_NAME]["expectations"][0];
        e["provenance"]["producer"] = serde_json::json!("oracle");
    });
    let out = reprodiff(&args, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains(&format!(
            "{ONE_NAME} [{class}]: replaced oracle sha256 000000000000 -> oracle sha256"
        )),
        "{t}"
    );
}
