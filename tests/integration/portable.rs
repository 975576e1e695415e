//! The portable kernels (#14): one image per seed whatever the CPU kernels, ISA and threads, on
//! DDIM and Stable Diffusion; batch invariance; derived weights; blessed bits and the truth rule.
use crate::common::*;
use reprodiff::error::exit;
use std::path::PathBuf;
use std::process::Output;
use tch::Tensor;

/// Asserts that `run` (a `reprodiff run ...` command line) on the portable kernels gives one
/// sha256 under each setting that moves native bits, one axis at a time, that the record names
/// the ISA and kernel threads a setting forces, and (the control) that native's bits do move
/// between ATen's default and avx2 capabilities.
fn assert_portable_bits_ignore_the_machine(run: &[&str]) {
    let sha = |extra: &[&str], env: &[(&str, &str)]| run_sha(run, extra, env);
    let portable = ["--kernels", "portable"];
    let reference = sha(&portable, &[]);
    let settings = machine_settings();
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

/// One setting that moves native's bits: its name, its environment and its extra flags.
type Setting = (String, Vec<(&'static str, &'static str)>, Vec<&'static str>);

/// The settings, one axis at a time: ATen's capability, oneDNN's ISA, the portable ISA, the
/// libtorch and kernel threads (the ISAs the host has).
fn machine_settings() -> Vec<Setting> {
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
    settings
}

/// The output's sha256 of `run` with `extra` flags and `env`, asserting that the record names
/// the portable ISA and kernel threads the environment forces (and no portable path on native).
fn run_sha(run: &[&str], extra: &[&str], env: &[(&str, &str)]) -> String {
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
}

/// The portable kernels (#14) on the DDIM pipeline: one seed, one image, whatever ATen's CPU
/// capability, oneDNN's ISA, the portable kernels' own ISA and the thread count; and each image
/// of a batch made with per-sample generators is, bit for bit, the image made alone with its
/// seed. A control shows the same settings do move native's bits.
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
    let fixtures = reprodiff::harness::suite::Fixtures::new(
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
