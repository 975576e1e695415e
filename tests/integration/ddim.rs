//! `run ddim`: the saved image and its record, per-sample generators in a batch, and bad
//! arguments and broken pipeline folders (exit 2, naming the flag, file or tensor at fault).
use crate::common::*;
use reprodiff::error::exit;
use std::path::Path;
use std::process::{Command, Output};
use tch::Tensor;

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
    // Without the cache entry they report where they looked, as "not run": skips, and a check
    // of nothing else compared nothing, which is no pass.
    let out = Command::new(env!("CARGO_BIN_EXE_reprodiff"))
        .args(["check", "--suite", "ddim-docs"])
        .env("HF_HUB_CACHE", tmp.path().join("empty"))
        .env_remove("CI")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("nothing was compared"), "{t}");
    assert!(
        t.contains("not run: model not found") && t.contains("empty"),
        "{t}"
    );
}
