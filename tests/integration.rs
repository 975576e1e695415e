//! Properties of the torch seam, the command line's contract (exit codes, errors that name the
//! file and field at fault, bless never losing a golden) and snapshots of what people read.
use proptest::prelude::*;
use reprodiff::error::exit;
use reprodiff::harness::check::{ComparedWith, Match, MetricCheck, ScenarioResult, Verdict};
use reprodiff::harness::metrics::Metric;
use reprodiff::harness::report;
use reprodiff::torch::{
    randn_tensor, CpuCapability, DType, Determinism, DeviceSpec, Generator, GeneratorSpec,
    Generators, Preset,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

const CPU: DeviceSpec = DeviceSpec::Cpu;

fn bits(t: &Tensor) -> Vec<u8> {
    reprodiff::torch::tensor_bytes(t).unwrap()
}

fn shape_strategy() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(1i64..6, 1..4)
}

// ---------------------------------------------------------------- generators (properties)

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn same_seed_gives_identical_draws(seed in any::<u32>(), shape in shape_strategy()) {
        let a = Generator::cpu(seed as u64).unwrap().randn(&shape, DType::F32, CPU).unwrap();
        let b = Generator::cpu(seed as u64).unwrap().randn(&shape, DType::F32, CPU).unwrap();
        prop_assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn drawing_from_one_generator_leaves_others_and_the_global_one_alone(
        seed in any::<u32>(), other in any::<u32>(), shape in shape_strategy()
    ) {
        // Reference: what `other` and the global generator give when nothing else draws.
        let alone = Generator::cpu(other as u64).unwrap().randn(&shape, DType::F32, CPU).unwrap();
        tch::manual_seed(11);
        let global_alone = Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu));

        tch::manual_seed(11);
        let mut busy = Generator::cpu(seed as u64).unwrap();
        let mut quiet = Generator::cpu(other as u64).unwrap();
        for _ in 0..3 {
            let _ = busy.randn(&[17], DType::F32, CPU).unwrap();
        }
        let global_after = Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
        prop_assert_eq!(bits(&quiet.randn(&shape, DType::F32, CPU).unwrap()), bits(&alone));
        prop_assert_eq!(bits(&global_after), bits(&global_alone));
    }

    #[test]
    fn generator_list_equals_samples_drawn_alone(
        seeds in prop::collection::vec(any::<u32>(), 2..5), sample in shape_strategy()
    ) {
        let seeds: Vec<u64> = seeds.into_iter().map(u64::from).collect();
        let mut shape = vec![seeds.len() as i64];
        shape.extend(&sample);
        let (mut gens, _) = GeneratorSpec::PerSample { seeds: seeds.clone(), device: CPU }.build().unwrap();
        let batch = randn_tensor(&shape, &mut gens, CPU, DType::F32).unwrap();
        let mut one = vec![1];
        one.extend(&sample);
        for (i, &s) in seeds.iter().enumerate() {
            let alone = Generator::cpu(s).unwrap().randn(&one, DType::F32, CPU).unwrap();
            prop_assert_eq!(bits(&batch.narrow(0, i as i64, 1)), bits(&alone));
        }
    }

    #[test]
    fn repeated_generator_draws_its_samples_in_sequence(
        seed in any::<u32>(), count in 2usize..5, sample in shape_strategy()
    ) {
        let mut shape = vec![count as i64];
        shape.extend(&sample);
        let (mut gens, _) = GeneratorSpec::Repeated { seed: seed as u64, count, device: CPU }.build().unwrap();
        let batch = randn_tensor(&shape, &mut gens, CPU, DType::F32).unwrap();
        let mut one = vec![1];
        one.extend(&sample);
        let mut g = Generator::cpu(seed as u64).unwrap();
        for i in 0..count {
            let next = g.randn(&one, DType::F32, CPU).unwrap();
            prop_assert_eq!(bits(&batch.narrow(0, i as i64, 1)), bits(&next));
        }
    }

    #[test]
    fn restoring_a_state_replays_the_draws(seed in any::<u32>(), warmup in 0i64..40, shape in shape_strategy()) {
        let mut g = Generator::cpu(seed as u64).unwrap();
        if warmup > 0 {
            let _ = g.randn(&[warmup], DType::F32, CPU).unwrap();
        }
        let state = g.get_state().unwrap();
        let first = g.randn(&shape, DType::F32, CPU).unwrap();
        g.set_state(&state).unwrap();
        prop_assert_eq!(bits(&g.randn(&shape, DType::F32, CPU).unwrap()), bits(&first));
    }
}

#[test]
fn clone_copies_the_state_and_share_aliases_it() {
    let mut g = Generator::cpu(3).unwrap();
    let _ = g.randn(&[5], DType::F32, CPU).unwrap();
    let mut copy = g.clone();
    let mut alias = g.share();
    assert!(alias.shares_state_with(&g));
    assert!(!copy.shares_state_with(&g));
    let from_copy = copy.randn(&[20], DType::F32, CPU).unwrap();
    let from_alias = alias.randn(&[20], DType::F32, CPU).unwrap();
    assert_eq!(
        bits(&from_copy),
        bits(&from_alias),
        "clone starts where g was"
    );
    // The alias advanced g; the copy did not.
    assert_ne!(
        bits(&g.randn(&[20], DType::F32, CPU).unwrap()),
        bits(&from_alias)
    );
    assert_eq!(g.initial_seed(), 3);
    assert_eq!(g.device(), CPU);
}

#[test]
fn manual_seed_resets_a_used_generator() {
    let mut g = Generator::cpu(5).unwrap();
    let first = g.randn(&[7], DType::F32, CPU).unwrap();
    g.manual_seed(5).unwrap();
    assert_eq!(bits(&g.randn(&[7], DType::F32, CPU).unwrap()), bits(&first));
}

#[test]
fn generators_in_concurrent_threads_match_draws_made_alone() {
    let alone: Vec<Vec<u8>> = (0..4)
        .map(|s| {
            bits(
                &Generator::cpu(s)
                    .unwrap()
                    .randn(&[3, 32, 32], DType::F32, CPU)
                    .unwrap(),
            )
        })
        .collect();
    let handles: Vec<_> = (0..4u64)
        .map(|s| {
            std::thread::spawn(move || {
                let mut g = Generator::cpu(s).unwrap();
                let mut last = Vec::new();
                for _ in 0..20 {
                    g.manual_seed(s).unwrap();
                    last = bits(&g.randn(&[3, 32, 32], DType::F32, CPU).unwrap());
                    tch::manual_seed(99); // a neighbour seeding the global generator
                }
                last
            })
        })
        .collect();
    for (s, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), alone[s], "seed {s}");
    }
}

#[test]
fn a_state_of_the_wrong_size_is_an_error_not_a_crash() {
    let mut g = Generator::cpu(0).unwrap();
    let garbage = Tensor::zeros([3], (tch::Kind::Uint8, tch::Device::Cpu));
    let err = g.set_state(&garbage).unwrap_err();
    assert_eq!(err.exit_code(), exit::USAGE, "{err}");
}

#[test]
fn a_generator_list_of_the_wrong_length_is_rejected() {
    let (mut gens, _) = GeneratorSpec::PerSample {
        seeds: vec![0, 1, 2],
        device: CPU,
    }
    .build()
    .unwrap();
    let err = randn_tensor(&[2, 3], &mut gens, CPU, DType::F32).unwrap_err();
    assert!(err.to_string().contains("length 3"), "{err}");
    assert_eq!(err.exit_code(), exit::USAGE);
}

/// Without CUDA, asking for it is a clear usage error; with CUDA, the same calls work and a
/// CPU generator's noise moved to the GPU is the CPU draw (diffusers' randn_tensor).
#[test]
fn cuda_generators_and_devices_are_clear_errors_without_cuda_and_work_with_it() {
    let cuda = DeviceSpec::Cuda(0);
    if tch::Cuda::is_available() {
        let mut gpu = Generators::One(Generator::cuda(0, 0).unwrap());
        let t = randn_tensor(&[2], &mut gpu, cuda, DType::F32).unwrap();
        assert_eq!(t.device(), tch::Device::Cuda(0));
        let mut one = Generators::One(Generator::cpu(0).unwrap());
        let moved = randn_tensor(&[17], &mut one, cuda, DType::F32).unwrap();
        let cpu = Generator::cpu(0)
            .unwrap()
            .randn(&[17], DType::F32, CPU)
            .unwrap();
        assert_eq!(bits(&moved.to_device(tch::Device::Cpu)), bits(&cpu));
        return;
    }
    let err = Generator::cuda(0, 0).unwrap_err();
    assert!(err.to_string().contains("CUDA is not available"), "{err}");
    assert_eq!(err.exit_code(), exit::USAGE);
    let err = randn_tensor(&[2], &mut Generators::Global, cuda, DType::F32).unwrap_err();
    assert!(err.to_string().contains("cuda:0"), "{err}");
    let mut one = Generators::One(Generator::cpu(0).unwrap());
    assert!(randn_tensor(&[2], &mut one, cuda, DType::F32).is_err());
}

// ---------------------------------------------------------------- determinism

#[test]
fn full_determinism_preset_is_diffusers_enable_full_determinism_and_reads_back() {
    let full = Determinism::preset(Preset::Full);
    full.apply().unwrap();
    let now = Determinism::in_force().unwrap();
    assert!(now.deterministic_algorithms && now.cudnn_deterministic);
    assert!(!now.cudnn_benchmark && !now.allow_tf32_cublas);
    assert_eq!(now.cublas_workspace_config.as_deref(), Some(":16:8"));
    assert!(now.cuda_launch_blocking);
    // enable_full_determinism leaves cuDNN TF32 alone.
    assert!(now.allow_tf32_cudnn);
}

#[test]
fn threads_setting_is_applied() {
    let det = Determinism {
        threads: Some(1),
        ..Determinism::torch_defaults()
    };
    det.apply().unwrap();
    assert_eq!(Determinism::in_force().unwrap().threads, Some(1));
}

/// `check` runs many scenarios in one process: one that names no thread count or no full
/// determinism must not inherit them from the scenario before it (nextest, one process per
/// test, would give other bits).
#[test]
fn a_scenario_inherits_nothing_from_the_one_before() {
    let default_threads = tch::get_num_threads() as usize;
    let first = Determinism {
        threads: Some(default_threads + 1),
        ..Determinism::full()
    };
    first.apply().unwrap();
    assert_eq!(
        Determinism::in_force().unwrap().threads,
        Some(default_threads + 1)
    );
    Determinism::torch_defaults().apply().unwrap();
    let now = Determinism::in_force().unwrap();
    assert_eq!(now.threads, Some(default_threads));
    assert_eq!(now.cublas_workspace_config, None);
    assert!(!now.cuda_launch_blocking && !now.deterministic_algorithms);
}

#[test]
fn another_cpu_capability_needs_a_child_process() {
    let now = reprodiff::torch::cpu_capability().unwrap();
    let other = if now == "default" {
        CpuCapability::Avx2
    } else {
        CpuCapability::Default
    };
    let det = Determinism {
        cpu_capability: Some(other),
        ..Determinism::torch_defaults()
    };
    let err = det.apply().unwrap_err();
    assert!(err.to_string().contains("child process"), "{err}");
    assert!("avx9".parse::<CpuCapability>().is_err());
    assert!("paranoid".parse::<Preset>().is_err());
}

// ---------------------------------------------------------------- the command line

fn reprodiff(args: &[&str], fixtures: Option<&Path>) -> Output {
    reprodiff_with_env(args, fixtures, &[])
}

/// `reprodiff ARGS` with extra environment variables (e.g. another CPU class's).
fn reprodiff_with_env(args: &[&str], fixtures: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprodiff"));
    cmd.args(args)
        .env_remove("CI")
        .env_remove("REPRODIFF_FIXTURES")
        .envs(env.iter().copied());
    if let Some(f) = fixtures {
        cmd.arg("--fixtures").arg(f);
    }
    cmd.output().unwrap()
}

/// `reprodiff ARGS` on this host's own kernels: the variables that choose CPU kernels (which a
/// run of the whole suite under another class sets) removed.
fn reprodiff_native(args: &[&str], fixtures: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprodiff"));
    cmd.args(args)
        .env_remove("CI")
        .env_remove("REPRODIFF_FIXTURES");
    for k in reprodiff::env::KERNEL_ENV {
        cmd.env_remove(k);
    }
    if let Some(f) = fixtures {
        cmd.arg("--fixtures").arg(f);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A private copy of fixtures/ for tests that change goldens.
fn fixtures_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fixtures");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        &root,
    );
    (tmp, root)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The record of `scenario` in `<out>/records.jsonl`.
fn read_record(out: &Path, scenario: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["scenario"] == scenario)
        .unwrap_or_else(|| panic!("no record of {scenario} in {text}"))
}

const ONE_NAME: &str = "randn/cpu-generator/seed1/17";
const ONE: &str = "^randn/cpu-generator/seed1/17$";

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

/// Removes one scenario's entry from the copied rng golden file.
fn drop_golden(fixtures: &Path, scenario: &str) {
    edit_json(&fixtures.join("golden/rng.json"), |v| {
        v["scenarios"].as_object_mut().unwrap().remove(scenario);
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
        let array = fixtures.join("golden").join(e["array"].as_str().unwrap());
        std::fs::remove_file(&array).ok();
        other.write_npy(array).unwrap();
        e["sha256"] = serde_json::json!("0".repeat(64));
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
    assert!(t.contains("reprodiff bless --suite rng --filter"), "{t}");
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

// ---------------------------------------------------------------- bless

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
    let out = reprodiff(&["check", "--filter", ONE], Some(&fixtures));
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
}

/// A golden write killed between its temporary file and the rename (a test hook aborts the
/// process there) leaves the goldens as they were; the next bless removes the temporary file,
/// says so, and writes; .gitignore covers such files meanwhile. For the arrays and the JSON.
#[test]
fn a_write_killed_before_its_rename_loses_nothing_and_the_next_bless_cleans_up() {
    use reprodiff::harness::golden::ABORT_BEFORE_RENAME_ENV;
    for kind in ["array", "json"] {
        let (_tmp, fixtures) = fixtures_copy();
        drop_golden(&fixtures, ONE_NAME);
        // Its arrays too, so that bless writes one (an array already there is kept).
        let slug = reprodiff::harness::golden::slug(ONE_NAME);
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

// ---------------------------------------------------------------- snapshots

fn snapshot_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("../snapshots");
    s.set_prepend_module_to_snapshot(false);
    s
}

#[test]
fn env_json_schema() {
    let out = reprodiff(&["env", "--json"], None);
    assert_eq!(out.status.code(), Some(exit::OK));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    snapshot_settings().bind(|| {
        insta::assert_json_snapshot!("env_json_schema", v, {
            ".versions.reprodiff" => "[version]",
            ".versions.torch_build" => "[build]",
            ".cpu.model" => "[cpu model]",
            ".cpu.isa" => "[isa flags]",
            ".cpu.capability" => "[capability]",
            ".cpu.vendor" => "[vendor]",
            ".cpu.kernel_env" => "[kernel env]",
            ".class" => "[class]",
            ".cpu.threads" => "[threads]",
            ".determinism.threads" => "[threads]",
            ".determinism.cpu_capability" => "[capability]",
            ".cuda" => "[cuda]",
            ".os.arch" => "[arch]",
            ".os.libc" => "[libc]",
        });
    });
}

const HOST: &str =
    "cpu/x86_64/intel/aten=avx512/onednn=avx512_core_amx/mkl=auto/threads=2/libtorch=2.13.0";
const AMD_AVX2: &str = "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0";

#[test]
fn check_table_layout() {
    let row =
        |metric: Metric, golden: &str, got: &str, delta, tolerance: &str, verdict| MetricCheck {
            metric: metric.to_string(),
            golden: golden.into(),
            got: got.into(),
            delta,
            tolerance: tolerance.into(),
            verdict,
        };
    let results = vec![
        ScenarioResult {
            suite: "rng".into(),
            scenario: "randn/seed0/4".into(),
            verdict: Verdict::Identical,
            checks: vec![
                row(
                    Metric::Bits,
                    "3d2a6e6ad1af",
                    "3d2a6e6ad1af",
                    None,
                    "bit-exact",
                    Verdict::Identical,
                ),
                row(
                    Metric::SumAbs,
                    "4.581645607948303",
                    "4.581645607948303",
                    Some(0.0),
                    "exact",
                    Verdict::Identical,
                ),
            ],
            notes: vec![],
            output: None,
            class: Some(HOST.into()),
            compared_with: Some(ComparedWith {
                class: HOST.into(),
                how: Match::SameClass,
                producer: "oracle".into(),
            }),
        },
        ScenarioResult {
            suite: "ddim".into(),
            scenario: "cifar10/50-steps".into(),
            verdict: Verdict::Drifted,
            checks: vec![
                row(
                    Metric::SumAbs,
                    "1491.1711",
                    "1491.2",
                    Some(0.0289),
                    "abs 0.01",
                    Verdict::Drifted,
                ),
                row(
                    Metric::LInf,
                    "0",
                    "0.00002",
                    Some(0.00002),
                    "<= 0.0001",
                    Verdict::WithinTolerance,
                ),
            ],
            notes: vec![
                "largest difference 0.00002 at [0, 31, 2, 1]: got 0.5 golden 0.49998".into(),
            ],
            output: None,
            class: Some(HOST.into()),
            compared_with: Some(ComparedWith {
                class: "any".into(),
                how: Match::Published,
                producer: "published".into(),
            }),
        },
        ScenarioResult {
            suite: "ddim-tiny".into(),
            scenario: "tiny-ddim-a/steps5".into(),
            verdict: Verdict::WithinTolerance,
            checks: vec![MetricCheck {
                metric: "rmse_truth".into(),
                golden: "7.8e-7".into(),
                got: "1.32e-6".into(),
                delta: Some(5.4e-7),
                tolerance: "<= 2 * 7.800e-7 + 1e-7 = 1.660e-6".into(),
                verdict: Verdict::WithinTolerance,
            }],
            notes: vec![],
            output: None,
            class: Some(HOST.into()),
            compared_with: Some(ComparedWith {
                class: AMD_AVX2.into(),
                how: Match::NearestClass,
                producer: "oracle".into(),
            }),
        },
        ScenarioResult {
            suite: "ddim".into(),
            scenario: "docs/2-steps".into(),
            verdict: Verdict::NotRun,
            checks: vec![],
            notes: vec!["model not found".into()],
            output: None,
            class: None,
            compared_with: None,
        },
    ];
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("check_table_layout", report::render(&results, false, true));
    });
}

// ---------------------------------------------------------------- spellings

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
    use reprodiff::harness::metrics::cosine_distance;
    // Orthogonal vectors are at distance 1, opposite ones at 2, scaled copies at 0.
    approx::assert_abs_diff_eq!(cosine_distance(&[1.0, 0.0], &[0.0, 2.0]), 1.0);
    approx::assert_abs_diff_eq!(cosine_distance(&[1.0, -2.0], &[-1.0, 2.0]), 2.0);
    approx::assert_abs_diff_eq!(
        cosine_distance(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]),
        0.0,
        epsilon = 1e-15
    );
}

// ---------------------------------------------------------------- DDIM: running and bad input

fn tiny_model_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-ddim-a");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-ddim-a"),
        &dir,
    );
    (tmp, dir)
}

fn run_ddim(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "ddim", "--model", model.to_str().unwrap()];
    args.extend(extra);
    reprodiff(&args, None)
}

/// Runs `reprodiff run ddim --model MODEL ARGS --save PATH`, checks it succeeded, reads the image.
fn ddim_image(model: &Path, args: &[&str], path: &Path) -> Tensor {
    let mut all = args.to_vec();
    all.extend(["--save", path.to_str().unwrap()]);
    let out = run_ddim(model, &all);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    Tensor::read_npy(path).unwrap()
}

#[test]
fn run_ddim_saves_the_np_image_as_diffusers_returns_it() {
    let (tmp, model) = tiny_model_copy();
    let image = ddim_image(
        &model,
        &["--seed", "0", "--steps", "2"],
        &tmp.path().join("x.npy"),
    );
    assert_eq!(image.size(), vec![1, 8, 8, 3], "NHWC");
    let values = reprodiff::torch::tensor_to_f64(&image).unwrap();
    assert!(
        values.iter().all(|v| (0.0..=1.0).contains(v)),
        "np output is clamped to [0, 1]"
    );
    // The record describes the saved image.
    let json = run_ddim(&model, &["--seed", "0", "--steps", "2", "--json"]);
    let record: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        record["output"]["sha256"],
        reprodiff::torch::tensor_sha256(&image).unwrap()
    );
    assert_eq!(record["spec"]["run"]["generator"]["type"], "single");
    // It is a check record of the current schema, with the per-step trace, one line long:
    // appended to a records.jsonl, `report` reads it.
    assert_eq!(record["schema"], 3);
    assert_eq!(record["verdict"], "no-golden");
    assert_eq!(record["output"]["trace"].as_array().unwrap().len(), 2);
    assert_eq!(
        String::from_utf8_lossy(&json.stdout).trim().lines().count(),
        1
    );
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    std::fs::write(runs.join("records.jsonl"), &json.stdout).unwrap();
    let read = reprodiff(&["report", runs.to_str().unwrap()], None);
    assert_eq!(read.status.code(), Some(exit::OK), "{}", text(&read));
    assert!(text(&read).contains("| 1 |"), "{}", text(&read));
    // It is the image the ddim-tiny golden pins: `check` of that scenario (same model, seed,
    // steps and threads) passes against diffusers' expectation and saw the same bits.
    let pinned = ddim_image(
        &model,
        &["--seed", "0", "--steps", "2", "--threads", "2"],
        &tmp.path().join("pinned.npy"),
    );
    let out_dir = tmp.path().join("records");
    let out = reprodiff(
        &[
            "check",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps2$",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let checked = read_record(&out_dir, "tiny-ddim-a/steps2");
    assert!(
        ["identical", "within-tolerance"].contains(&checked["verdict"].as_str().unwrap()),
        "{checked}"
    );
    assert_eq!(
        checked["output"]["sha256"],
        reprodiff::torch::tensor_sha256(&pinned).unwrap()
    );
}

#[test]
fn per_sample_generators_reproduce_each_image_of_a_batch() {
    // The seed document's deterministic batch generation: image i of a batch made with
    // [Generator().manual_seed(s) for s in seeds] is the image made alone with seed s.
    let (tmp, model) = tiny_model_copy();
    let args = ["--steps", "3", "--eta", "1"];
    let batch = ddim_image(
        &model,
        &[&args[..], &["--batch", "2", "--seeds", "5,7"]].concat(),
        &tmp.path().join("batch.npy"),
    );
    let alone = ddim_image(
        &model,
        &[&args[..], &["--seed", "7"]].concat(),
        &tmp.path().join("alone.npy"),
    );
    // Not bit for bit: the UNet's kernels differ with the batch size, in diffusers too (measured
    // 1.4e-6 there, 1.5e-6 here, on this model); the noise itself is identical (see
    // generator_list_equals_samples_drawn_alone). diffusers' own batch test uses 1e-3.
    let diff = (batch.narrow(0, 1, 1) - &alone)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        diff < 1e-5,
        "image 1 of the batch is {diff} from the image made alone"
    );
}

#[rstest::rstest]
#[case::zero_steps(&["--seed", "0", "--steps", "0"], "steps")]
#[case::too_many_steps(&["--seed", "0", "--steps", "1001"], "cannot be larger")]
#[case::negative_eta(&["--seed", "0", "--eta=-0.5"], "eta")]
#[case::infinite_eta(&["--seed", "0", "--eta", "inf"], "eta = inf: must be a finite number")]
#[case::seeds_of_the_wrong_length(&["--seeds", "1,2,3", "--batch", "2"], "--seeds has 3 seeds")]
#[case::unknown_dtype(&["--seed", "0", "--dtype", "f8"], "f8")]
#[case::cuda_device_that_is_not_there(&["--seed", "0", "--device", "cuda:99"], "cuda:99")]
fn bad_ddim_arguments_are_exit_2(#[case] args: &[&str], #[case] says: &str) {
    let (_tmp, model) = tiny_model_copy();
    let out = run_ddim(&model, args);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains(says), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

fn expect_model_error(model: &Path, says: &[&str]) {
    let out = run_ddim(model, &["--seed", "0", "--steps", "1"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    for s in says {
        assert!(t.contains(s), "expected {s:?} in: {t}");
    }
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn a_pipeline_folder_without_a_unet_is_exit_2() {
    let (_tmp, model) = tiny_model_copy();
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    expect_model_error(&model, &["model_index.json", "no unet/"]);
}

#[test]
fn a_truncated_safetensors_file_is_exit_2_naming_it() {
    let (_tmp, model) = tiny_model_copy();
    let weights = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    expect_model_error(&model, &["diffusion_pytorch_model.safetensors"]);
}

#[test]
fn pickle_weights_are_refused_with_how_to_convert() {
    let (_tmp, model) = tiny_model_copy();
    std::fs::rename(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        model.join("unet/diffusion_pytorch_model.bin"),
    )
    .unwrap();
    expect_model_error(&model, &["pickle", "safe_serialization=True"]);
}

fn rewrite_weights(model: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = model.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

#[test]
fn a_tensor_of_the_wrong_shape_names_it_and_both_shapes() {
    let (_tmp, model) = tiny_model_copy();
    rewrite_weights(&model, |ts| {
        let (_, t) = ts.iter_mut().find(|(n, _)| n == "conv_in.weight").unwrap();
        *t = Tensor::zeros([4, 3, 3, 4], (tch::Kind::Float, tch::Device::Cpu));
    });
    expect_model_error(&model, &["conv_in.weight", "[4, 3, 3, 4]", "[4, 3, 3, 3]"]);
}

#[test]
fn a_missing_tensor_is_named() {
    let (_tmp, model) = tiny_model_copy();
    rewrite_weights(&model, |ts| ts.retain(|(n, _)| n != "conv_out.bias"));
    expect_model_error(&model, &["missing tensor `conv_out.bias`", "[3]"]);
}

#[test]
fn legacy_attention_names_load_and_give_the_same_image() {
    let (tmp, model) = tiny_model_copy();
    let args = ["--seed", "0", "--steps", "2"];
    let before = ddim_image(&model, &args, &tmp.path().join("before.npy"));
    rewrite_weights(&model, |ts| {
        for (name, _) in ts.iter_mut() {
            for (new, old) in [
                (".to_q.", ".query."),
                (".to_k.", ".key."),
                (".to_v.", ".value."),
                (".to_out.0.", ".proj_attn."),
            ] {
                *name = name.replace(new, old);
            }
        }
    });
    let after = ddim_image(&model, &args, &tmp.path().join("after.npy"));
    assert_eq!(bits(&before), bits(&after));
}

#[test]
fn an_unsupported_config_value_names_the_key() {
    let (_tmp, model) = tiny_model_copy();
    edit_json(&model.join("unet/config.json"), |v| {
        v["act_fn"] = serde_json::json!("tanh")
    });
    expect_model_error(&model, &["config.json", "act_fn", "tanh"]);
    let (_tmp, model) = tiny_model_copy();
    edit_json(&model.join("scheduler/scheduler_config.json"), |v| {
        v["beta_schedule"] = serde_json::json!("sigmoid")
    });
    expect_model_error(
        &model,
        &["scheduler_config.json", "beta_schedule", "sigmoid"],
    );
}

#[test]
fn a_hub_model_is_found_in_the_local_cache_and_docs_scenarios_then_run() {
    // A stand-in hub cache holding the tiny model under the real id: the scenarios run (their
    // values cannot match the published ones, but they must not report "not run").
    let (tmp, model) = tiny_model_copy();
    let snap = tmp
        .path()
        .join("hub/models--google--ddpm-cifar10-32/snapshots/abc123");
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    std::fs::rename(&model, &snap).unwrap();
    std::fs::create_dir_all(tmp.path().join("hub/models--google--ddpm-cifar10-32/refs")).unwrap();
    std::fs::write(
        tmp.path()
            .join("hub/models--google--ddpm-cifar10-32/refs/main"),
        "abc123",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reprodiff"))
        .args([
            "check",
            "--suite",
            "ddim-docs",
            "--filter",
            "2-steps/sum-abs",
        ])
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .env_remove("CI")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!t.contains("not run"), "{t}");
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    // Without the cache entry they report where they looked, and pass as "not run".
    let out = Command::new(env!("CARGO_BIN_EXE_reprodiff"))
        .args(["check", "--suite", "ddim-docs"])
        .env("HF_HUB_CACHE", tmp.path().join("empty"))
        .env_remove("CI")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("not run: model not found") && t.contains("empty"),
        "{t}"
    );
}

// ---------------------------------------------------------------- classes

/// The genuine AVX2 host (fixtures/records/avx2-amd-epyc/README.md): replaying what reprodiff
/// output there, every scenario it ran selects its own class's expectation and is bit-identical
/// to it, so both README commands pass on such a host. This Intel host cannot emulate that
/// class (ATen, oneDNN and MKL held to AVX2 give other bits), hence the replay.
#[test]
fn avx2_host_records_are_identical_to_their_class_expectations() {
    use reprodiff::env::{EnvClass, Fingerprint};
    use reprodiff::harness::golden::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    let records = root.join("records/avx2-amd-epyc/check-records");
    let avx2: EnvClass = "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0"
        .parse()
        .unwrap();
    let (mut compared, mut in_avx2_class) = (0, 0);
    for suite_dir in std::fs::read_dir(&records).unwrap() {
        let suite_dir = suite_dir.unwrap().path();
        let suite = suite_dir.file_name().unwrap().to_str().unwrap().to_string();
        let golden = store.load(&suite).unwrap().unwrap();
        for file in std::fs::read_dir(&suite_dir).unwrap() {
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(file.unwrap().path()).unwrap())
                    .unwrap();
            let Some(sha) = r["output"]["sha256"].as_str() else {
                continue; // not run there (CUDA, weights)
            };
            let fp: Fingerprint = serde_json::from_value(r["environment"].clone()).unwrap();
            let device = serde_json::from_value(r["spec"]["device"].clone()).unwrap();
            let class = fp.class(device);
            let name = r["scenario"].as_str().unwrap();
            let e = golden.scenarios[name]
                .expectation(&class)
                .unwrap_or_else(|| panic!("{suite}/{name}: no expectation for {class}"));
            assert_eq!(e.sha256.as_deref(), Some(sha), "{suite}/{name} ({class})");
            compared += 1;
            in_avx2_class += usize::from(class == avx2);
        }
    }
    // 138 scenarios ran there; one (rng's randn/cpu-capability-default) in a child process
    // under the `default` capability, which is another class.
    assert_eq!((compared, in_avx2_class), (138, 137));
}

/// The AMD EPYC AVX-512 host and the AMD AVX2 class emulated on it (fixtures/records/
/// avx512-amd-epyc/, avx2-amd-epyc-emulated/): every record `reprodiff check` wrote there for
/// sd-tiny and sd15-arch selects its own class's expectation (merged from that host's oracle)
/// and has its bits, so such a host says "identical" to all 39; the records say so too.
#[test]
fn amd_host_records_are_identical_to_their_class_expectations() {
    use reprodiff::env::Fingerprint;
    use reprodiff::harness::golden::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    for host in ["avx512-amd-epyc", "avx2-amd-epyc-emulated"] {
        let path = root
            .join("records")
            .join(host)
            .join("check-records/records.jsonl");
        let mut compared = 0;
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let (suite, name) = (
                r["suite"].as_str().unwrap(),
                r["scenario"].as_str().unwrap(),
            );
            let golden = store.load(suite).unwrap().unwrap();
            let fp: Fingerprint = serde_json::from_value(r["environment"].clone()).unwrap();
            let device = serde_json::from_value(r["spec"]["device"].clone()).unwrap();
            let class = fp.class(device);
            let e = golden.scenarios[name]
                .expectation(&class)
                .unwrap_or_else(|| panic!("{host}: {suite}/{name}: no expectation for {class}"));
            assert_eq!(e.provenance.producer, "oracle", "{host}: {suite}/{name}");
            assert_eq!(
                e.sha256.as_deref(),
                r["output"]["sha256"].as_str(),
                "{host}: {name}"
            );
            assert_eq!(r["verdict"], "identical", "{host}: {suite}/{name}");
            compared += 1;
        }
        assert_eq!(compared, 39, "{host}");
    }
}

/// Derived weights are the same whatever ATen capability the deriving process dispatches to:
/// under `default` (whose scalar randn gives other draws) the derivation runs in a child under
/// avx2. Found when a cache made under `default` moved every sd15-arch output.
#[test]
fn derived_weights_do_not_depend_on_the_aten_capability() {
    let tmp = tempfile::tempdir().unwrap();
    let derive = |name: &str, env: &[(&str, &str)]| {
        let out = tmp.path().join(name);
        let args = [
            "derive-weights",
            "--arch",
            "ddpm-cifar10-32",
            "--out",
            out.to_str().unwrap(),
        ];
        let run = reprodiff_with_env(&args, None, env);
        assert_eq!(run.status.code(), Some(exit::OK), "{}", text(&run));
        std::fs::read(out.join("unet/diffusion_pytorch_model.safetensors")).unwrap()
    };
    let native = derive("native", &[]);
    let scalar = derive("default", &[("ATEN_CPU_CAPABILITY", "default")]);
    assert!(
        native == scalar,
        "the weights derived under ATen `default` differ"
    );
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

/// `run --save` into a folder that does not exist is refused before any computation, naming
/// the flag.
#[test]
fn run_checks_its_output_paths_before_computing() {
    let (_tmp, model) = tiny_model_copy();
    let out = run_ddim(
        &model,
        &["--steps", "50", "--save", "/nonexistent/dir/x.npy"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(
        t.contains("--save /nonexistent/dir/x.npy") && t.contains("does not exist"),
        "{t}"
    );
}

/// A rerun-difference scenario's zeros only say that two runs agree; a pipeline that ignored
/// its input would pass it too. So every such scenario of a suite with goldens has a sibling
/// that runs the same thing once and is compared with its expectation (under any determinism
/// setting: ddim-cuda's default-determinism rerun claims repeatability, its first run is pinned
/// under full determinism).
#[test]
fn every_rerun_difference_has_its_first_run_pinned() {
    use reprodiff::harness::workload::Workload;
    let fixtures = reprodiff::harness::session::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let suites = fixtures.select(&Default::default()).unwrap();
    let mut twice = 0;
    for suite in &suites {
        for s in &suite.scenarios {
            if !matches!(
                &s.run,
                Workload::Ddim { twice: true, .. } | Workload::Sd { twice: true, .. }
            ) {
                continue;
            }
            twice += 1;
            let mut once = s.run.clone();
            if let Workload::Ddim { twice, .. } | Workload::Sd { twice, .. } = &mut once {
                *twice = false;
            }
            assert!(
                suite
                    .scenarios
                    .iter()
                    .any(|o| o.run == once && o.device == s.device),
                "{}/{}: no scenario pins its first run",
                suite.name,
                s.name
            );
        }
    }
    assert!(twice >= 4, "found {twice} rerun-difference scenarios");
}

/// Applies `edit` to every tensor of tiny-ddim-a's UNet in a fixtures copy.
fn edit_tiny_a(fixtures: &Path, edit: impl Fn(&str, &mut Tensor)) {
    rewrite_weights(&fixtures.join("models/tiny-ddim-a"), |ts| {
        for (name, t) in ts.iter_mut() {
            edit(name, t);
        }
    });
}

/// The line `check` prints for one scenario.
fn check_line<'a>(t: &'a str, scenario: &str) -> &'a str {
    t.lines()
        .find(|l| l.contains(scenario))
        .unwrap_or_else(|| panic!("no line for {scenario} in: {t}"))
}

/// On the host's own class the comparison is bit for bit: nudging one bias of tiny-ddim-a by
/// one ulp fails. (bless first gives this host's class an expectation when it has none; that
/// one is then checked bit for bit beside the truth rule against the nearest oracle class.)
#[test]
fn a_one_ulp_change_of_one_weight_fails_on_the_hosts_own_class() {
    let (_tmp, fixtures) = fixtures_copy();
    let check = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps5$",
    ];
    let out = reprodiff(
        &[
            "bless",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps5$",
        ],
        Some(&fixtures),
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let out = reprodiff(&check, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, "tiny-ddim-a/steps5");
    let own_oracle_class = line.contains("same class (oracle)");
    // Without an oracle expectation of its own, the host is judged against the nearest class
    // (identical where that class's bits are the same, else within tolerance) and bit for bit
    // against the expectation bless just made.
    assert!(
        (line.starts_with("identical") && own_oracle_class)
            || ((line.starts_with("within tolerance") || line.starts_with("identical"))
                && t.contains("bits (blessed)")),
        "{t}"
    );
    edit_tiny_a(&fixtures, |name, t| {
        if name == "conv_out.bias" {
            let v = t.double_value(&[0]) as f32;
            let _ = t.narrow(0, 0, 1).fill_(f64::from(v.next_up()));
        }
    });
    let out = reprodiff(&check, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = check_line(&t, "tiny-ddim-a/steps5");
    assert!(line.starts_with("drifted"), "{line}");
    assert!(
        if own_oracle_class {
            line.contains("same class") && line.contains("bits")
        } else {
            t.contains("bits (blessed)") && t.contains("drifted")
        },
        "{t}"
    );
}

/// A CPU class nobody recorded (ATen `default`, oneDNN held to SSE4.1) passes ddim-tiny by the
/// calibrated cross-class rule and names the class it compared with; the same class fails
/// once tiny-ddim-a's weights are scaled by 1.01.
#[test]
fn an_unrecorded_cpu_class_passes_by_the_truth_rule_and_scaled_weights_fail() {
    let foreign = [
        ("ATEN_CPU_CAPABILITY", "default"),
        ("ONEDNN_MAX_CPU_ISA", "SSE41"),
    ];
    let (_tmp, fixtures) = fixtures_copy();
    let check = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps(2|5|10)$",
    ];
    let out = reprodiff_with_env(&check, Some(&fixtures), &foreign);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("host class: cpu/x86_64/"), "{t}");
    assert!(t.contains("/aten=default/onednn=sse41/"), "{t}");
    for steps in [2, 5, 10] {
        let line = check_line(&t, &format!("tiny-ddim-a/steps{steps} "));
        assert!(
            line.starts_with("within tolerance") && line.contains("nearest class cpu/"),
            "{line}"
        );
    }
    edit_tiny_a(&fixtures, |_, t| {
        let scaled = &*t * 1.01;
        t.copy_(&scaled);
    });
    let out = reprodiff_with_env(&check, Some(&fixtures), &foreign);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = check_line(&t, "tiny-ddim-a/steps5 ");
    assert!(
        line.starts_with("drifted") && line.contains("rmse_truth"),
        "{line}"
    );
}

/// A CPU class nobody recorded: ATen's scalar code and oneDNN at SSE4.1.
const FOREIGN: [(&str, &str); 2] = [
    ("ATEN_CPU_CAPABILITY", "default"),
    ("ONEDNN_MAX_CPU_ISA", "SSE41"),
];

/// Edits one ddim-tiny scenario's golden entry in a fixtures copy.
fn edit_ddim_tiny(fixtures: &Path, scenario: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    edit_json(&fixtures.join("golden/ddim-tiny.json"), |v| {
        edit(&mut v["scenarios"][scenario])
    });
}

/// Appends `line` to the `[[scenario]]` named `name` in ddim-tiny.toml of a fixtures copy.
fn add_to_ddim_tiny_scenario(fixtures: &Path, name: &str, line: &str) {
    let path = fixtures.join("suites/ddim-tiny.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = format!("name = \"{name}\"\n");
    assert!(text.contains(&head), "no scenario {name}");
    std::fs::write(&path, text.replacen(&head, &format!("{head}{line}\n"), 1)).unwrap();
}

const SENSITIVE: &str = "tiny-ddim-b/steps50";
const SENSITIVE_FILTER: &str = "^tiny-ddim-b/steps50$";

/// On a class without an expectation, a scenario whose sensitivity makes the truth rule
/// powerless is "not comparable": a failure, with the number, never a pass.
#[test]
fn a_powerless_cross_class_comparison_is_not_comparable_and_fails() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_ddim_tiny(&fixtures, SENSITIVE, |s| {
        s["truth"]["sensitivity"] = 1.0.into();
        // Without the per-step truth nothing else can judge it.
        s["truth"].as_object_mut().unwrap().remove("steps");
    });
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        SENSITIVE_FILTER,
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(
        check_line(&t, SENSITIVE).starts_with("not comparable"),
        "{t}"
    );
    assert!(
        t.contains("a 1-ulp change of the initial noise moves the output"),
        "{t}"
    );
    assert!(t.contains("0 passed, 1 failed"), "{t}");
}

/// With its per-step truth, a scenario whose output is too sensitive to compare is judged by
/// its steps: within tolerance as far as they are comparable, said in the line.
#[test]
fn a_chaotic_output_is_judged_by_its_per_step_truth() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_ddim_tiny(&fixtures, SENSITIVE, |s| {
        s["truth"]["sensitivity"] = 1.0.into()
    });
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        SENSITIVE_FILTER,
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, SENSITIVE);
    assert!(
        line.starts_with("within tolerance") && line.contains("rmse_truth_steps"),
        "{t}"
    );
    assert!(
        t.contains("within tolerance through step 50 of 50 by the per-step truth"),
        "{t}"
    );
    assert!(t.contains("1 passed, 0 failed"), "{t}");
}

const CIFAR_CHAOTIC: &str = "eta0.0/cpu-generator-seed0/steps50";

/// The proof of the step rule on a chaotic scenario: on a foreign class (ATen default, oneDNN
/// SSE4.1), ddim-cifar10-arch's eta-0 50-step image cannot be compared at the output (one ulp
/// of noise moves it by a third of its RMS), but its trajectory can be through its comparable
/// steps. The plain run passes, saying how far it looked; the UNet's weights scaled by 1.01 or
/// by 1.0001 (a planted defect) fail, naming the first step beyond the rule.
#[test]
fn a_planted_defect_in_a_chaotic_scenario_fails_at_the_first_step_beyond_the_rule() {
    let args = [
        "check",
        "--suite",
        "ddim-cifar10-arch",
        "--filter",
        "^eta0\\.0/cpu-generator-seed0/steps50$",
    ];
    let out = reprodiff_with_env(&args, None, &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, CIFAR_CHAOTIC);
    assert!(line.starts_with("within tolerance"), "{t}");
    assert!(line.contains("rmse_truth_steps"), "{t}");
    assert!(t.contains("chaotic after"), "{t}");
    let named = regex::Regex::new(r"beyond the step rule at step (\d+) of 50").unwrap();
    for factor in ["1.01", "1.0001"] {
        let mut env = FOREIGN.to_vec();
        env.push((reprodiff::models::params::PLANT_SCALE_ENV, factor));
        let out = reprodiff_with_env(&args, None, &env);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::FAILED), "x{factor}: {t}");
        assert!(
            check_line(&t, CIFAR_CHAOTIC).starts_with("drifted"),
            "x{factor}: {t}"
        );
        let step = named
            .captures(&t)
            .unwrap_or_else(|| panic!("x{factor}: {t}"))[1]
            .parse::<usize>()
            .unwrap();
        eprintln!("weights x{factor}: first step beyond the rule {step}");
    }
}

/// The proof in reduced precision: sd-tiny's f16 latent, on a class without an f16
/// expectation, is judged in its own precision by its per-step truth: the plain run passes, and
/// the weights scaled by 1.01 (a planted defect) fail at the first step. (What f16 cannot see,
/// measured on an Intel Xeon: weights x1.001 give 0.964 noise responses against the plain
/// run's 0.945, guidance 7.4 for 7.5 gives 1.017; bf16 does not see x1.01, 0.922 against 0.861.)
#[test]
fn a_planted_defect_in_an_f16_scenario_fails_on_a_class_without_its_expectation() {
    let scenario = "tiny-sd-a/f16/latent/steps2";
    let args = [
        "check",
        "--suite",
        "sd-tiny",
        "--filter",
        "^tiny-sd-a/f16/latent/steps2$",
    ];
    let out = reprodiff_with_env(&args, None, &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        check_line(&t, scenario).starts_with("within tolerance"),
        "{t}"
    );
    assert!(t.contains("by the per-step truth"), "{t}");
    let mut env = FOREIGN.to_vec();
    env.push((reprodiff::models::params::PLANT_SCALE_ENV, "1.01"));
    let out = reprodiff_with_env(&args, None, &env);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(check_line(&t, scenario).starts_with("drifted"), "{t}");
    assert!(t.contains("beyond the step rule at step 1 of 2"), "{t}");
}

/// The suite's `own_class_only`, with its reason, makes such a scenario a skip decided before
/// it runs on another class (said with the reason, never a pass), and leaves it checked bit for
/// bit on its own class.
#[test]
fn an_own_class_only_scenario_is_skipped_before_running_on_another_class() {
    let (_tmp, fixtures) = fixtures_copy();
    add_to_ddim_tiny_scenario(
        &fixtures,
        SENSITIVE,
        "own_class_only = \"planted by a test: too sensitive\"",
    );
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        SENSITIVE_FILTER,
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("1 not run: checked only on its own class (planted by a test: too sensitive)"),
        "{t}"
    );
    assert!(t.contains("0 passed, 0 failed, 1 skipped"), "{t}");
    let out = reprodiff_native(&args, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    if t.contains("1 not run: checked only on its own class") {
        // A host of a class nobody recorded: its own class has no expectation either.
        assert!(t.contains("has none"), "{t}");
    } else {
        assert!(check_line(&t, SENSITIVE).starts_with("identical"), "{t}");
    }
}

/// Without a cross-class rule a class with no expectation is "no expectation": a skip decided
/// before running, outside CI; a failure in CI.
#[test]
fn no_expectation_is_a_skip_outside_ci_and_a_failure_in_it() {
    let (_tmp, fixtures) = fixtures_copy();
    let path = fixtures.join("suites/ddim-tiny.toml");
    let text_ = std::fs::read_to_string(&path).unwrap();
    let without = text_.replace(
        "cross_class = { rule = \"truth\", k = 2.0",
        "# cross_class = { rule = \"truth\", k = 2.0",
    );
    assert_ne!(without, text_, "the suite's cross_class line moved");
    std::fs::write(&path, without).unwrap();
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps2$",
    ];
    let mut env = FOREIGN.to_vec();
    env.push(("CI", ""));
    let out = reprodiff_with_env(&args, Some(&fixtures), &env);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        t.contains("1 no expectation: no expectation for this host's class"),
        "{t}"
    );
    assert!(t.contains("0 passed, 0 failed, 1 skipped"), "{t}");
    env.pop();
    env.push(("CI", "true"));
    let out = reprodiff_with_env(&args, Some(&fixtures), &env);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("0 passed, 1 failed"), "{t}");
}

/// The truth rule without a recorded truth cannot judge: failed, naming the oracle command.
#[test]
fn a_missing_truth_fails_across_classes() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_ddim_tiny(&fixtures, "tiny-ddim-a/steps2", |s| {
        s.as_object_mut().unwrap().remove("truth");
    });
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps2$",
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(
        check_line(&t, "tiny-ddim-a/steps2").starts_with("failed"),
        "{t}"
    );
    assert!(t.contains("no float64 truth recorded"), "{t}");
}

/// An output with exactly the nearest class's bits is "identical" across classes, and says the
/// rule was not needed; one ulp of difference in one stored hash is not.
#[test]
fn the_nearest_class_identical_shortcut_needs_the_very_bits() {
    let (_tmp, fixtures) = fixtures_copy();
    let out_dir = tempfile::tempdir().unwrap();
    let scenario = "tiny-ddim-a/steps2";
    let mut args = vec![
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps2$",
        "--verbose",
    ];
    let records = out_dir.path().to_str().unwrap();
    args.extend(["--out", records]);
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let r = read_record(out_dir.path(), scenario);
    assert_eq!(r["compared_with"]["match"], "nearest-class", "{r}");
    let (sha, nearest) = (
        r["output"]["sha256"].clone(),
        r["compared_with"]["class"].clone(),
    );
    edit_ddim_tiny(&fixtures, scenario, |s| {
        for e in s["expectations"].as_array_mut().unwrap() {
            if e["class"] == nearest {
                e["sha256"] = sha.clone();
            }
        }
    });
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(check_line(&t, scenario).starts_with("identical"), "{t}");
    assert!(t.contains("the cross-class rule was not needed"), "{t}");
}

/// A rerun difference (run 1 minus run 2) is zero on every class: across classes it is
/// compared exactly, not by the truth rule, so a stored non-zero difference fails there.
#[test]
fn a_rerun_difference_is_compared_exactly_on_every_class() {
    let (_tmp, fixtures) = fixtures_copy();
    let scenario = "tiny-ddim-b/rerun-difference/per-sample-generators/eta1/steps5";
    let filter = format!("^{}$", regex::escape(scenario));
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        &filter,
        "--verbose",
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, scenario);
    assert!(
        line.starts_with("identical") && line.contains("nearest class"),
        "{t}"
    );
    assert!(
        t.contains("a rerun difference is exactly zero on every class"),
        "{t}"
    );
    edit_ddim_tiny(&fixtures, scenario, |s| {
        for e in s["expectations"].as_array_mut().unwrap() {
            e["sha256"] = serde_json::json!("0".repeat(64));
            e["metrics"]["sum_abs"] = 1e-9.into();
        }
    });
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = check_line(&t, scenario);
    assert!(
        line.starts_with("drifted") && !line.contains("rmse_truth"),
        "{t}"
    );
}

/// `own_class_only` is data with a guard: it marks exactly the scenarios under the truth rule
/// that nothing can judge across classes, those whose recorded sensitivity makes the output's
/// comparison powerless and whose per-step truth keeps no step comparable (or which have none,
/// or no step_ulps for their dtype). So it can neither hide a comparable scenario nor be
/// missing from one that cannot be compared; and the chaotic scenarios the steps judge are
/// named.
#[test]
fn own_class_only_marks_exactly_the_scenarios_nothing_can_judge_across_classes() {
    use reprodiff::harness::check::{
        comparable_steps, relative_sensitivity, POWERLESS_SENSITIVITY,
    };
    use reprodiff::harness::suite::CrossClass;
    let fixtures = reprodiff::harness::session::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let store = fixtures.store();
    let (mut marked, mut by_steps, mut judged) = (Vec::new(), Vec::new(), 0);
    for suite in fixtures.select(&Default::default()).unwrap() {
        let Some(golden) = store.load(&suite.name).unwrap() else {
            continue;
        };
        for s in &suite.scenarios {
            let name = format!("{}/{}", suite.name, s.name);
            let g = golden.scenarios.get(&s.name);
            let truth = g.and_then(|g| g.truth.as_ref());
            let (Some(g), Some(truth), Some(CrossClass::Truth { step_ulps, .. })) =
                (g, truth, s.cross_class)
            else {
                assert!(
                    s.own_class_only.is_none(),
                    "{name}: own_class_only without a truth rule and truth"
                );
                continue;
            };
            let (values, _) = store.read_array(&truth.array).unwrap();
            let relative = relative_sensitivity(truth.sensitivity, &values);
            let powerless = relative > POWERLESS_SENSITIVITY;
            let steps = match (&truth.steps, step_ulps.get(g.dtype)) {
                (Some(st), Some(_)) => {
                    let (v, _) = store.read_array(&st.array).unwrap();
                    comparable_steps(&v, &st.noise_response, g.dtype)
                }
                _ => 0,
            };
            let nothing_judges = powerless && steps == 0;
            assert_eq!(
                nothing_judges,
                s.own_class_only.is_some(),
                "{name}: sensitivity is {:.3}% of the truth's RMS (limit {}%), {steps} comparable \
                 steps under a step rule, own_class_only = {:?}",
                100.0 * relative,
                100.0 * POWERLESS_SENSITIVITY,
                s.own_class_only
            );
            judged += 1;
            if nothing_judges {
                marked.push(name);
            } else if powerless {
                by_steps.push(format!(
                    "{name}: {steps} of {} steps",
                    truth.steps.as_ref().map_or(0, |st| st.noise_response.len())
                ));
            }
        }
    }
    assert!(judged > 100, "{judged} scenarios with a truth");
    assert_eq!(marked, Vec::<String>::new(), "own_class_only");
    assert_eq!(
        by_steps,
        [
            "ddim-cifar10-arch/eta0.0/cpu-generator-seed0/steps50: 13 of 50 steps",
            "sd-tiny/tiny-sd-a/bf16/latent/steps2: 2 of 2 steps",
            "sd-tiny/tiny-sd-a/f16/latent/steps2: 2 of 2 steps",
        ],
        "judged by their steps alone"
    );
}

/// Every suite's truth rule keeps the calibration policy on the committed records: its
/// noise_ulps is at least what every pair of recorded classes needs and at most twice that
/// (`reprodiff calibrate` prints the same figures).
#[test]
fn every_truth_rule_is_calibrated_from_the_recorded_classes() {
    use reprodiff::harness::suite::CrossClass;
    let fixtures = reprodiff::harness::session::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let store = fixtures.store();
    let mut calibrated = Vec::new();
    let suites = fixtures.select(&Default::default()).unwrap();
    let is_portable = |s: &reprodiff::harness::suite::Suite| {
        s.scenarios
            .iter()
            .all(|x| x.kernels == reprodiff::portable::Kernels::Portable)
    };
    for suite in &suites {
        // A portable suite has one class, so nothing to calibrate from: it borrows the rule of
        // the native suite it mirrors, which must then be one calibrated here.
        if is_portable(suite) {
            for x in &suite.scenarios {
                let borrowed = suites
                    .iter()
                    .filter(|s| !is_portable(s))
                    .flat_map(|s| &s.scenarios)
                    .filter(|y| match (x.cross_class, y.cross_class) {
                        (
                            Some(CrossClass::Truth {
                                k,
                                noise_ulps,
                                step_ulps,
                            }),
                            Some(CrossClass::Truth {
                                k: k2,
                                noise_ulps: n2,
                                step_ulps: s2,
                            }),
                        ) => k == k2 && noise_ulps == n2 && step_ulps.f32 == s2.f32,
                        _ => false,
                    })
                    .count();
                assert!(
                    borrowed > 0,
                    "{}/{}: a rule no calibrated suite has",
                    suite.name,
                    x.name
                );
            }
            continue;
        }
        let records = reprodiff::harness::calibrate::committed_records(&fixtures);
        let dirs: Vec<&Path> = records.iter().map(PathBuf::as_path).collect();
        if let Some(need) = reprodiff::harness::calibrate::need(suite, &store, &dirs).unwrap() {
            assert!(need.holds(), "{}", need.sentence());
            assert!(need.classes.len() >= 3, "{}", need.sentence());
            calibrated.push(suite.name.clone());
        }
    }
    assert_eq!(
        calibrated,
        ["ddim-cifar10-arch", "ddim-tiny", "sd-tiny", "sd15-arch"]
    );
}

/// The verdicts of the committed records, recomputed from their arrays by today's rule (not
/// re-rendered from stored verdicts): each recorded class's oracle output, judged as a run of a
/// class with no expectation of its own against the classes that remain, passes wherever the
/// rule can judge it, and only the chaotic scenarios are left unjudged (they are judged by
/// their per-step truth, and the oracle records no trace of its outputs).
#[test]
fn each_recorded_class_passes_when_judged_by_the_others() {
    use reprodiff::harness::check::{compare, Verdict};
    let fixtures = reprodiff::harness::session::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let store = fixtures.store();
    let mut tally: std::collections::BTreeMap<Verdict, usize> = Default::default();
    for suite in fixtures.select(&Default::default()).unwrap() {
        if !["ddim-tiny", "ddim-cifar10-arch", "sd-tiny", "sd15-arch"]
            .contains(&suite.name.as_str())
        {
            continue;
        }
        let golden = store.load(&suite.name).unwrap().unwrap();
        for s in &suite.scenarios {
            let g = &golden.scenarios[&s.name];
            for e in &g.expectations {
                let mut others = g.clone();
                others.expectations.retain(|x| x.class != e.class);
                if others.expectations.is_empty() {
                    continue;
                }
                // The oracle's outputs carry no per-step trace: the output's rule alone.
                let mut chaotic = false;
                if let Some(t) = others.truth.as_mut() {
                    t.steps = None;
                    let (v, _) = store.read_array(&t.array).unwrap();
                    chaotic = reprodiff::harness::check::relative_sensitivity(t.sensitivity, &v)
                        > reprodiff::harness::check::POWERLESS_SENSITIVITY;
                }
                let path = store.dir.join(e.array.as_ref().unwrap());
                let t = Tensor::read_npy(&path).unwrap().to_kind(g.dtype.kind());
                let mut obs = reprodiff::harness::observe::describe(t, None, 0.0).unwrap();
                let id = e.provenance.environment.as_ref().unwrap();
                obs.environment = golden.environments[id].clone();
                assert_eq!(obs.environment.class(s.device), e.class, "{}", s.name);
                let r = compare(&suite.name, s, &obs, Some(&others), &store);
                let where_ = format!("{}/{} as {}: {:?}", suite.name, s.name, e.class, r.notes);
                if chaotic && !s.run.is_rerun_difference() {
                    // Not comparable, unless its bits are another class's.
                    assert!(
                        matches!(r.verdict, Verdict::NotComparable | Verdict::Identical),
                        "{} {where_}",
                        r.verdict
                    );
                } else {
                    assert!(r.verdict.passed(), "{} {where_}", r.verdict);
                }
                *tally.entry(r.verdict).or_default() += 1;
            }
        }
    }
    let judged: usize = tally.values().sum();
    assert!(judged > 300, "{tally:?}");
}

/// Who made each committed expectation: the oracle (diffusers / PyTorch) for every suite but
/// ddim-docs, whose values are the seed document's published numbers. A `reprodiff bless` or a
/// hand edit of a committed golden shows up here.
#[test]
fn every_committed_expectation_names_its_producer() {
    use reprodiff::harness::golden::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    let suites = reprodiff::harness::session::Fixtures::new(&root)
        .select(&Default::default())
        .unwrap();
    let mut seen = 0;
    for suite in &suites {
        let Some(golden) = store.load(&suite.name).unwrap() else {
            // Only a suite of real hub weights that cannot be downloaded here (sd15-docs) may
            // ship without goldens: the oracle records them where the weights are.
            assert!(
                suite
                    .scenarios
                    .iter()
                    .all(|s| s.run.model().is_some_and(|m| m.starts_with("hub:"))),
                "{} has no golden file",
                suite.name
            );
            continue;
        };
        let want = if suite.name == "ddim-docs" {
            "published"
        } else {
            "oracle"
        };
        for (name, s) in &golden.scenarios {
            assert!(!s.expectations.is_empty(), "{}/{name}", suite.name);
            // A portable scenario has its portable class's expectation, which only bless makes
            // (diffusers has no portable kernels); its others are the oracle's.
            let spec = suite.scenarios.iter().find(|x| &x.name == name);
            let portable =
                spec.is_some_and(|x| x.kernels == reprodiff::portable::Kernels::Portable);
            assert_eq!(
                s.expectations
                    .iter()
                    .any(|e| matches!(e.class, reprodiff::env::EnvClass::Portable { .. })),
                portable,
                "{}/{name}: a portable expectation if and only if the scenario is portable",
                suite.name
            );
            for e in &s.expectations {
                let p = &e.provenance;
                let (want, command) = match e.class {
                    reprodiff::env::EnvClass::Portable { .. } => (
                        "reprodiff",
                        format!("reprodiff bless --suite {} ", suite.name),
                    ),
                    _ if want == "oracle" => (want, "ci/oracle/run.sh ".to_string()),
                    _ => (want, "ci/oracle/run.sh --published".to_string()),
                };
                assert_eq!(p.producer, want, "{}/{name} ({})", suite.name, e.class);
                assert!(
                    p.command.starts_with(&command),
                    "{}/{name}: {}",
                    suite.name,
                    p.command
                );
                seen += 1;
            }
            if let Some(t) = &s.truth {
                assert_eq!(
                    t.provenance.producer, "oracle",
                    "{}/{name} truth",
                    suite.name
                );
            }
        }
    }
    assert!(seen > 400, "{seen} expectations");
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
    let out = reprodiff(&["check", "--suite", "rng"], Some(&fixtures));
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

fn producers(fixtures: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&golden_bytes(fixtures)).unwrap();
    v["scenarios"][ONE_NAME]["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["provenance"]["producer"].as_str().unwrap().to_string())
        .collect()
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
        e["sha256"] = serde_json::json!("0".repeat(64));
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

// ---------------------------------------------------------------- drift reports

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
    for line in records.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("a whole record");
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
        (vec!["calibrate", "--records", nowhere], "--records"),
    ] {
        let out = reprodiff(&args, None);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{args:?}: {t}");
        assert!(t.contains(&format!("{flag} {nowhere}")), "{args:?}: {t}");
    }
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
    let set = reprodiff::harness::drift::load(&avx2_records()).unwrap();
    let mut set = set;
    set.label = "avx2-amd-epyc".into();
    snapshot_settings().bind(|| {
        insta::assert_snapshot!(
            "drift_report_avx2_host",
            reprodiff::harness::drift::markdown(&reprodiff::harness::drift::summarize(
                &[set],
                None
            ))
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
    let loc = tmp.path().join("localize");
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
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium on this CI host: .ci/run installs Debian's chromium"
        );
        eprintln!("skipped: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("matrix");
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
    let page = tmp.path().join("report.html");
    std::fs::write(&page, &report.stdout).unwrap();
    let browse = |extra: &[&str]| {
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
            .arg(format!(
                "--user-data-dir={}",
                tmp.path().join("profile").display()
            ))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap()
    };
    let dom = browse(&["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(
        !log.contains("CONSOLE") && !log.contains("Uncaught"),
        "{log}"
    );
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
    let pngs = inline_pngs(&dom_text);
    assert_eq!(pngs.len(), 6);
    for img in pngs {
        assert_eq!((img.width(), img.height()), (8, 8));
    }
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

// ---------------------------------------------------------------- run sd: bad input

/// A private copy of one tiny SD pipeline folder, edited by `edit`.
fn tiny_sd_copy(name: &str, edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/models")
            .join(name),
        &dir,
    );
    edit(&dir);
    (tmp, dir)
}

/// Each bad input of `run sd` is exit 2 with a message naming the flag, file or key at fault,
/// before any denoising (and never a panic).
#[rstest::rstest]
#[case::empty_prompt(&["--prompt", " "], "--prompt #1: an empty prompt")]
#[case::height_not_divisible_by_8(&["--prompt", "a cat", "--height", "60"], "divisible by 8 but height is 60")]
#[case::negative_prompt_list_length(
    &["--prompt", "a", "--prompt", "b", "--negative-prompt", "x", "--negative-prompt", "y", "--negative-prompt", "z"],
    "negative_prompt has 3 prompts but prompt has 2"
)]
#[case::generator_list_length(&["--prompt", "a cat", "--num-images-per-prompt", "2", "--seeds", "0,1,2"], "3")]
#[case::unknown_scheduler(&["--prompt", "a cat", "--scheduler", "euler"], "euler")]
fn run_sd_rejects_bad_flags(#[case] args: &[&str], #[case] says: &str) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-sd-a");
    let mut all = vec![
        "run",
        "sd",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "1",
    ];
    all.extend_from_slice(args);
    let out = reprodiff(&all, None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{t}");
    assert!(t.contains(says), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

/// A case of a broken model folder: what is wrong, the edit, what the error must say.
type BrokenFolder = (&'static str, Box<dyn FnOnce(&Path)>, &'static str);

#[test]
fn run_sd_rejects_broken_model_folders_naming_the_file() {
    let cases: Vec<BrokenFolder> = vec![
        (
            "no tokenizer files",
            Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer/tokenizer.json")).unwrap()),
            "neither tokenizer.json nor vocab.json + merges.txt",
        ),
        (
            "text encoder width differs from cross_attention_dim",
            Box::new(|d: &Path| {
                edit_json(&d.join("text_encoder/config.json"), |v| {
                    v["hidden_size"] = 16.into();
                    v["num_attention_heads"] = 4.into();
                })
            }),
            "does not match the UNet's cross_attention_dim",
        ),
        (
            "an unsupported UNet key",
            Box::new(|d: &Path| {
                edit_json(&d.join("unet/config.json"), |v| {
                    v["class_embed_type"] = "timestep".into()
                })
            }),
            "class_embed_type",
        ),
    ];
    for (what, edit, says) in cases {
        let (_tmp, dir) = tiny_sd_copy("tiny-sd-a", edit);
        let out = reprodiff(
            &[
                "run",
                "sd",
                "--model",
                dir.to_str().unwrap(),
                "--prompt",
                "a cat",
                "--steps",
                "1",
            ],
            None,
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{what}: {t}");
        assert!(t.contains(says), "{what}: {t}");
        assert!(
            t.contains(dir.to_str().unwrap()),
            "{what}: names no file: {t}"
        );
    }
}

/// `run sd --grid` writes diffusers' make_image_grid layout: 4 images of 64x64 in 2x2.
#[test]
fn run_sd_writes_the_image_grid_and_the_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let (grid, npy) = (tmp.path().join("grid.png"), tmp.path().join("out.npy"));
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-sd-b");
    let out = reprodiff(
        &[
            "run",
            "sd",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Labrador in the style of Vermeer",
            "--num-images-per-prompt",
            "4",
            "--seeds",
            "0,1,2,3",
            "--steps",
            "2",
            "--threads",
            "2",
            "--grid",
            grid.to_str().unwrap(),
            "--save",
            npy.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let img = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (128, 128));
    let images = Tensor::read_npy(&npy).unwrap();
    assert_eq!(images.size(), [4, 64, 64, 3]);
    // Cell (row 1, col 0) is image 2; pixel (0, 0) of it is round(255 * value).
    let v = f32::try_from(images.get(2).get(0).get(0).get(0)).unwrap();
    assert_eq!(img.get_pixel(0, 64)[0], (v * 255.0).round_ties_even() as u8);
    // Image 0 of a per-image generator list is the single-generator image of seed 0.
    let one = tmp.path().join("one.npy");
    let out = reprodiff(
        &[
            "run",
            "sd",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Labrador in the style of Vermeer",
            "--seed",
            "0",
            "--steps",
            "2",
            "--threads",
            "2",
            "--save",
            one.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let first = Tensor::read_npy(&one).unwrap();
    let ratio = (images.get(0) - first.get(0)).abs().max().double_value(&[]);
    // Not bit-equal in general (batch 4 vs batch 1 changes kernel paths), but the same image.
    assert!(
        ratio < 1e-3,
        "image 0 of the batch differs from the seed-0 image by {ratio}"
    );
}

/// The seed document's deterministic batch generation: after four images from generators seeded
/// 0..3, four prompt variants all on seed 0 "should resemble the first image". On diffusers'
/// own images (sd-tiny's goldens, which reprodiff reproduces bit for bit): every variant is
/// closer to image 0 than to any of images 1..3.
#[test]
fn prompt_variants_on_seed_0_resemble_image_0() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("sd-tiny.json")).unwrap())
            .unwrap();
    let images = |scenario: &str| {
        let array = file["scenarios"][scenario]["expectations"][0]["array"]
            .as_str()
            .unwrap_or_else(|| panic!("{scenario}: no array"));
        Tensor::read_npy(golden.join(array))
            .unwrap()
            .to_kind(tch::Kind::Double)
    };
    let seeds = images("tiny-sd-b/batch/4-images-seeds-0-3/steps5");
    let variants = images("tiny-sd-b/batch/4-prompt-variants-seed-0/steps5");
    assert_eq!((seeds.size()[0], variants.size()[0]), (4, 4));
    let rmse = |a: &Tensor, b: &Tensor| {
        (a - b)
            .square()
            .mean(tch::Kind::Double)
            .sqrt()
            .double_value(&[])
    };
    for v in 0..4 {
        let d: Vec<f64> = (0..4)
            .map(|i| rmse(&variants.get(v), &seeds.get(i)))
            .collect();
        assert!(
            d[1..].iter().all(|&other| d[0] < other),
            "variant {v}: rmse to images 0..3 = {d:?}"
        );
    }
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
    if record["compared_with"]["how"] == "same-class" {
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
        .map(|d| reprodiff::harness::drift::load(d).unwrap())
        .collect();
    let base = reprodiff::harness::drift::load(&root.join("native-threads2+f32")).unwrap();
    let report = reprodiff::harness::drift::summarize(&sets, Some(&base));
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
            reprodiff::harness::drift::markdown(&report)
        );
    });
}

/// diffusers on torch 2.11.0 and 2.12.1 (the oracle's records, fixtures/records/diffusers-torch-*,
/// judged by `golden compare`) against the torch 2.13.0 goldens: what a torch release moves.
#[test]
fn drift_report_across_torch_releases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
    let sets: Vec<_> = ["diffusers-torch-2.11.0", "diffusers-torch-2.12.1"]
        .iter()
        .map(|d| reprodiff::harness::drift::load(&root.join(d)).unwrap())
        .collect();
    snapshot_settings().bind(|| {
        insta::assert_snapshot!(
            "drift_report_torch_releases",
            reprodiff::harness::drift::markdown(&reprodiff::harness::drift::summarize(&sets, None))
        );
    });
}

/// The portable kernels (#14) on the DDIM pipeline: one seed, one image, whatever ATen's CPU
/// capability, oneDNN's ISA, the portable kernels' own ISA and the thread count; and each image
/// of a batch made with per-sample generators is, bit for bit, the image made alone with its
/// seed. A control shows the same settings do move native's bits.
/// Asserts that `run` (a `reprodiff run ...` command line) on the portable kernels gives one
/// sha256 under each setting that moves native bits, one axis at a time, that the record names
/// the ISA and kernel threads a setting forces, and (the control) that native's bits do move
/// between ATen's default and avx2 capabilities.
fn assert_portable_bits_ignore_the_machine(run: &[&str]) {
    let sha = |extra: &[&str], env: &[(&str, &str)]| -> String {
        let mut args = run.to_vec();
        args.push("--json");
        args.extend_from_slice(extra);
        let out = reprodiff_with_env(&args, None, env);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::OK), "{t}");
        let record: serde_json::Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
        // Which path ran: the ISA a setting forces is the one the record names.
        let ran = &record["environment"]["portable"];
        if extra.contains(&"portable") {
            let forced = env.iter().find(|(k, _)| *k == "REPRODIFF_PORTABLE_ISA");
            if let Some((_, isa)) = forced {
                assert_eq!(ran["isa"], *isa, "{record}");
            }
            let threads = env.iter().find(|(k, _)| *k == "RAYON_NUM_THREADS");
            if let Some((_, n)) = threads {
                assert_eq!(ran["threads"].to_string(), *n, "{record}");
            }
        } else {
            assert!(ran.is_null(), "{record}");
        }
        record["output"]["sha256"].as_str().unwrap().to_string()
    };
    let portable = ["--kernels", "portable"];
    let reference = sha(&portable, &[]);
    type Setting<'a> = (String, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let mut settings: Vec<Setting> = vec![
        (
            "aten default".into(),
            vec![("ATEN_CPU_CAPABILITY", "default")],
            vec![],
        ),
        (
            "onednn sse41".into(),
            vec![("ONEDNN_MAX_CPU_ISA", "SSE41")],
            vec![],
        ),
        (
            "portable isa baseline".into(),
            vec![("REPRODIFF_PORTABLE_ISA", "baseline")],
            vec![],
        ),
        ("1 libtorch thread".into(), vec![], vec!["--threads", "1"]),
        ("3 libtorch threads".into(), vec![], vec!["--threads", "3"]),
        // The portable kernels' own threads (rayon's pool).
        (
            "1 kernel thread".into(),
            vec![("RAYON_NUM_THREADS", "1")],
            vec![],
        ),
        (
            "3 kernel threads".into(),
            vec![("RAYON_NUM_THREADS", "3")],
            vec![],
        ),
    ];
    if std::arch::is_x86_feature_detected!("avx2") {
        settings.push((
            "aten avx2".into(),
            vec![("ATEN_CPU_CAPABILITY", "avx2")],
            vec![],
        ));
        settings.push((
            "portable isa avx2".into(),
            vec![("REPRODIFF_PORTABLE_ISA", "avx2")],
            vec![],
        ));
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        settings.push((
            "aten avx512".into(),
            vec![("ATEN_CPU_CAPABILITY", "avx512")],
            vec![],
        ));
        settings.push((
            "portable isa avx512".into(),
            vec![("REPRODIFF_PORTABLE_ISA", "avx512")],
            vec![],
        ));
    }
    for (name, env, extra) in &settings {
        let mut args = portable.to_vec();
        args.extend_from_slice(extra);
        assert_eq!(sha(&args, env), reference, "portable under {name}");
    }
    // Control: native's bits do depend on ATen's capability (linspace, randn, convolutions).
    assert_ne!(
        sha(&[], &[("ATEN_CPU_CAPABILITY", "default")]),
        sha(&[], &[("ATEN_CPU_CAPABILITY", "avx2")]),
        "native under default and avx2"
    );
}

#[test]
fn portable_ddim_gives_one_image_whatever_the_cpu_kernels_threads_and_batch() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-ddim-b");
    let model = model.to_str().unwrap();
    assert_portable_bits_ignore_the_machine(&[
        "run", "ddim", "--model", model, "--steps", "5", "--eta", "1", "--seed", "0",
    ]);
    // Batch invariance: per-sample generators, batch 3.
    let tmp = tempfile::tempdir().unwrap();
    let save = |name: &str, extra: &[&str]| -> Tensor {
        let path = tmp.path().join(name);
        let mut args = vec![
            "run",
            "ddim",
            "--model",
            model,
            "--steps",
            "5",
            "--eta",
            "1",
            "--kernels",
            "portable",
            "--save",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = reprodiff(&args, None);
        assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
        Tensor::read_npy(&path).unwrap()
    };
    let batch = save("batch.npy", &["--seeds", "0,1,2", "--batch", "3"]);
    for i in 0..3i64 {
        let seed = i.to_string();
        let alone = save(&format!("{i}.npy"), &["--seed", &seed]);
        assert!(
            batch.narrow(0, i, 1).equal(&alone),
            "image {i} of the batch"
        );
    }
}

/// The portable kernels on the Stable Diffusion pipeline (CLIP text encoder, UNet2DCondition,
/// VAE decoder, PNDM and, with `--scheduler ddim`, DDIM with eta noise): one image whatever
/// the CPU kernels and thread counts, as for DDIM above.
#[rstest::rstest]
#[case::pndm(&["--steps", "3"])]
#[case::ddim_eta1_negative_prompt(&["--steps", "2", "--scheduler", "ddim", "--eta", "1", "--negative-prompt", "blurry"])]
fn portable_sd_gives_one_image_whatever_the_cpu_kernels_and_threads(#[case] extra: &[&str]) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-sd-b");
    let mut run = vec![
        "run",
        "sd",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "A bear is playing a guitar on Times Square",
        "--seed",
        "0",
    ];
    run.extend_from_slice(extra);
    assert_portable_bits_ignore_the_machine(&run);
}

/// Derived weights are ATen's draws whatever kernels the run that needs them uses: a portable
/// run that derives the full cifar10 architecture into an empty cache gives the image of a
/// portable run on the weights derived natively (found on a GPU host with an empty cache, where
/// the derivation went through the portable noise and failed).
#[test]
fn a_portable_run_derives_the_same_weights_as_a_native_one() {
    let args = [
        "run",
        "ddim",
        "--model",
        "derived:ddpm-cifar10-32",
        "--steps",
        "1",
        "--seed",
        "0",
        "--kernels",
        "portable",
        "--json",
    ];
    let sha = |out: &Output| -> String {
        let t = text(out);
        assert_eq!(out.status.code(), Some(exit::OK), "{t}");
        let record: serde_json::Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
        record["output"]["sha256"].as_str().unwrap().to_string()
    };
    let usual = sha(&reprodiff(&args, None));
    let empty = tempfile::tempdir().unwrap();
    let fresh = sha(&reprodiff_with_env(
        &args,
        None,
        &[("REPRODIFF_CACHE", empty.path().to_str().unwrap())],
    ));
    assert_eq!(fresh, usual);
}

/// The seed document's deterministic batch generation, exactly, on every host: in the blessed
/// portable goldens, image i of each batch made with per-sample generators [0, 1, 2] is, bit
/// for bit, the image that seed i makes alone (the conformance trials hold every host to those
/// goldens, so this holds wherever they pass).
#[test]
fn portable_batch_images_equal_the_images_made_alone() {
    use reprodiff::env::EnvClass;
    let fixtures = reprodiff::harness::session::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let store = fixtures.store();
    let portable = EnvClass::Portable {
        order_rule: reprodiff::portable::ops::ORDER_RULE,
    };
    // (suite, batch scenario, the scenario of seed i alone for each image i)
    let mut cases: Vec<(&str, String, Vec<String>)> = Vec::new();
    for model in ["tiny-ddim-a", "tiny-ddim-b"] {
        for eta in ["0.0", "1.0"] {
            cases.push((
                "ddim-portable",
                format!("{model}/eta{eta}/per-sample-generators/batch3/steps5"),
                (0..3)
                    .map(|i| format!("{model}/eta{eta}/cpu-generator-seed{i}/steps5"))
                    .collect(),
            ));
        }
    }
    cases.push((
        "sd-portable",
        "tiny-sd-b/batch/4-images-seeds-0-3/steps5".into(),
        (0..4)
            .map(|i| format!("tiny-sd-b/batch/seed{i}-alone/steps5"))
            .collect(),
    ));
    for (suite, batch, alone) in &cases {
        let golden = store.load(suite).unwrap().unwrap();
        let image = |scenario: &str| -> Tensor {
            let e = golden.scenarios[scenario]
                .expectation(&portable)
                .unwrap_or_else(|| panic!("{suite}/{scenario}: no portable expectation"));
            Tensor::read_npy(store.dir.join(e.array.as_ref().unwrap())).unwrap()
        };
        let b = image(batch);
        assert_eq!(b.size()[0], alone.len() as i64, "{suite}/{batch}");
        for (i, scenario) in alone.iter().enumerate() {
            assert!(
                b.narrow(0, i as i64, 1).equal(&image(scenario)),
                "{suite}/{batch}: image {i} is not {scenario}"
            );
        }
    }
}

/// A portable run under another CPU class (ATen default, oneDNN SSE4.1, the portable kernels
/// forced to the baseline ISA, one kernel thread) has the portable class, matches the blessed
/// portable expectation bit for bit, and is also judged for accuracy: by the truth rule against
/// diffusers' run (the oracle's, under the noise contract's capability), not skipped as "same
/// class". Its record says which ISA and how many threads the kernels ran on.
#[test]
fn a_portable_run_is_held_to_its_blessed_bits_and_to_the_float64_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = "tiny-ddim-b/eta1.0/cpu-generator-seed0/steps5";
    let out = reprodiff_with_env(
        &[
            "check",
            "--suite",
            "ddim-portable",
            "--filter",
            &format!("^{}$", regex::escape(scenario)),
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        None,
        &[
            ("ATEN_CPU_CAPABILITY", "default"),
            ("ONEDNN_MAX_CPU_ISA", "SSE41"),
            ("REPRODIFF_PORTABLE_ISA", "baseline"),
            ("RAYON_NUM_THREADS", "1"),
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let r = read_record(tmp.path(), scenario);
    let class = format!(
        "portable/order-rule={}",
        reprodiff::portable::ops::ORDER_RULE
    );
    assert_eq!(r["class"], class.as_str(), "{r}");
    assert_eq!(r["environment"]["cpu"]["capability"], "default");
    assert_eq!(r["environment"]["portable"]["isa"], "baseline");
    assert_eq!(r["environment"]["portable"]["threads"], 1);
    assert_eq!(r["verdict"], "within-tolerance", "{r}");
    let compared = r["compared_with"]["class"].as_str().unwrap();
    assert!(compared.contains("/aten=default/"), "{compared}");
    assert_eq!(r["compared_with"]["producer"], "oracle");
    let checks = r["checks"].as_array().unwrap();
    let by = |m: &str| {
        checks
            .iter()
            .find(|c| c["metric"] == m)
            .unwrap_or_else(|| panic!("no {m} check in {r}"))
    };
    assert_eq!(by("bits (blessed)")["verdict"], "identical");
    assert_eq!(by("rmse_truth")["verdict"], "within-tolerance");
    assert!(r["output"]["metrics"]["rmse_truth"].as_f64().unwrap() > 0.0);
}
