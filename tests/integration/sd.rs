//! `run sd`: bad flags and broken model folders (exit 2, naming the fault), the image grid and
//! the npy, and the seed document's prompt variants resembling image 0.
use crate::common::*;
use reprodiff::error::exit;
use std::path::{Path, PathBuf};
use tch::Tensor;

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

/// A model read once per process and served from the cache to later scenarios gives the bits
/// of a fresh load, under every knob that changes how weights are held (channels_last, the
/// portable kernels, a dtype): the same scenarios checked with the cache and with
/// REPRODIFF_NO_MODEL_CACHE=1 give the same output sha256, scenario by scenario.
#[test]
fn a_cached_model_gives_a_fresh_loads_bits_under_every_knob() {
    let filter = "^tiny-sd-a/(pndm-from-ddim-config/steps5|empty-prompt/steps2|rerun-difference/latent/steps2/first-run)$";
    let outputs = |knobs: &str, no_cache: bool| -> Vec<(String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Vec::new();
        if !knobs.is_empty() {
            env.push((reprodiff::torch::knobs::ENV, knobs));
        }
        if no_cache {
            env.push((reprodiff::models::params::NO_CACHE_ENV, "1"));
        }
        let args = ["check", "--suite", "sd-tiny", "--filter", filter, "--out"];
        let mut args = args.to_vec();
        args.push(dir.path().to_str().unwrap());
        let out = reprodiff_with_env(&args, None, &env);
        let records = std::fs::read_to_string(dir.path().join("records.jsonl")).unwrap();
        let mut shas: Vec<(String, String)> = records
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["output"]["sha256"].is_string())
            .map(|r| {
                (
                    r["scenario"].as_str().unwrap().to_string(),
                    r["output"]["sha256"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        shas.sort();
        assert_eq!(shas.len(), 3, "{knobs}: {}", text(&out));
        shas
    };
    for knobs in ["", "channels-last", "portable", "bf16"] {
        assert_eq!(
            outputs(knobs, false),
            outputs(knobs, true),
            "knobs '{knobs}'"
        );
    }
}
