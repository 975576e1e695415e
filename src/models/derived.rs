//! Full-size architectures with weights derived deterministically (no download possible):
//! `reprodiff derive-weights --arch ddpm-cifar10-32 --out DIR` writes a diffusers pipeline folder
//! that the Python oracle loads too; `derived:ddpm-cifar10-32` materialises it in the cache.
use super::params::{derive, Folder};
use super::unet_2d::{UNet2DConfig, UNet2DModel};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Bump when the derivation changes, so caches of an older derivation are not reused.
pub const DERIVATION_VERSION: u32 = 1;

/// google/ddpm-cifar10-32's published unet/config.json.
pub const DDPM_CIFAR10_32_UNET: &str = r#"{
  "_class_name": "UNet2DModel",
  "act_fn": "silu",
  "attention_head_dim": null,
  "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 32,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
}
"#;

/// google/ddpm-cifar10-32's scheduler/scheduler_config.json.
pub const DDPM_CIFAR10_32_SCHEDULER: &str = r#"{
  "_class_name": "DDPMScheduler",
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "beta_start": 0.0001,
  "clip_sample": true,
  "num_train_timesteps": 1000,
  "trained_betas": null,
  "variance_type": "fixed_large"
}
"#;

const MODEL_INDEX: &str = r#"{
  "_class_name": "DDIMPipeline",
  "scheduler": ["diffusers", "DDPMScheduler"],
  "unet": ["diffusers", "UNet2DModel"]
}
"#;

pub const ARCHS: &[&str] = &["ddpm-cifar10-32", "stable-diffusion-v1-5"];

/// What DERIVED says of the draws. The derivation draws through ATen's randn, whose vectorised
/// kernels (avx2 and avx512 give the same bits) and scalar `default` kernel give other draws,
/// one ulp apart: weights derived under `default` are other weights, and every output made from
/// them differs from the goldens (found: a cache made by a run under ATEN_CPU_CAPABILITY=default
/// moved all of sd15-arch). So weights are always derived with the vectorised draws, in a child
/// process under avx2 when this one dispatches to `default`, and a folder whose DERIVED lacks
/// this line is made again.
const DRAWS: &str = "draws: ATen's vectorised randn (avx2 and avx512 give the same bits)";

/// Set in the child that derives under avx2, so that it never spawns another.
const CHILD_ENV: &str = "REPRODIFF_DERIVE_CHILD";

fn vectorised_draws() -> Result<bool> {
    Ok(matches!(
        crate::torch::cpu_capability()?.as_str(),
        "avx2" | "avx512"
    ))
}

/// The reprodiff executable to derive in: REPRODIFF_BIN, this process if it is reprodiff, or
/// the one beside a cargo test binary (target/<profile>/deps/NAME -> target/<profile>/).
fn reprodiff_exe() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REPRODIFF_BIN") {
        return Some(p.into());
    }
    let me = std::env::current_exe().ok()?;
    if me.file_stem().is_some_and(|s| s == "reprodiff") {
        return Some(me);
    }
    let sibling = me.parent()?.parent()?.join("reprodiff");
    sibling.is_file().then_some(sibling)
}

/// `reprodiff derive-weights --arch ARCH --out OUT` in a child under ATEN_CPU_CAPABILITY=avx2.
fn write_in_child(arch: &str, out: &Path) -> Result<()> {
    let unavailable = |why: String| {
        Err(Error::Unavailable(format!(
            "derived:{arch} needs ATen's vectorised randn (this process dispatches to `default`): \
             {why}"
        )))
    };
    if std::env::var_os(CHILD_ENV).is_some() {
        return unavailable("this CPU has neither AVX2 nor AVX-512".into());
    }
    let Some(exe) = reprodiff_exe() else {
        return unavailable(
            "no reprodiff executable to derive in (set REPRODIFF_BIN, or run `reprodiff \
             derive-weights` once on a host with AVX2)"
                .into(),
        );
    };
    let status = std::process::Command::new(&exe)
        .args(["derive-weights", "--arch", arch, "--out"])
        .arg(out)
        .env("ATEN_CPU_CAPABILITY", "avx2")
        .env(CHILD_ENV, "1")
        // The weights are defined by ATen's draws, whatever kernels the run uses.
        .env_remove(crate::torch::knobs::ENV)
        .status()
        .map_err(|e| Error::io(&exe, e))?;
    if !status.success() {
        return unavailable(format!(
            "{} derive-weights failed ({status})",
            exe.display()
        ));
    }
    Ok(())
}

/// Writes the pipeline folder for `arch` (weights seed 0) into `out`, replacing what is there.
pub fn write(arch: &str, out: &Path) -> Result<()> {
    if !vectorised_draws()? {
        return write_in_child(arch, out);
    }
    let _native = NativeDraws::new();
    let tmp = write_beside(arch, out)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, out).map_err(|e| Error::io(out, e))
}

/// While it lives, the process draws with libtorch even if it runs on the portable kernels:
/// derived weights are defined by ATen's vectorised draws, not by the run that needs them.
struct NativeDraws(bool);

impl NativeDraws {
    fn new() -> Self {
        let was = crate::portable::enabled();
        crate::portable::set_enabled(false);
        NativeDraws(was)
    }
}

impl Drop for NativeDraws {
    fn drop(&mut self) {
        crate::portable::set_enabled(self.0);
    }
}

fn folder(arch: &str) -> Result<Folder> {
    match arch {
        "ddpm-cifar10-32" => {
            let config: UNet2DConfig =
                serde_json::from_str(DDPM_CIFAR10_32_UNET).expect("a valid built-in config");
            Ok(Folder {
                texts: vec![
                    ("model_index.json", MODEL_INDEX.into()),
                    ("unet/config.json", DDPM_CIFAR10_32_UNET.into()),
                    (
                        "scheduler/scheduler_config.json",
                        DDPM_CIFAR10_32_SCHEDULER.into(),
                    ),
                ],
                weights: vec![(
                    "unet/diffusion_pytorch_model.safetensors",
                    derive(|p| UNet2DModel::new(p, config))?,
                )],
            })
        }
        "stable-diffusion-v1-5" => super::derived_sd::folder(),
        _ => Err(Error::flag(
            "arch",
            arch,
            format!("unknown architecture (known: {})", ARCHS.join(", ")),
        )),
    }
}

/// Writes the folder into a temporary directory beside `out` (same file system, so it can be
/// renamed into place in one step).
fn write_beside(arch: &str, out: &Path) -> Result<tempfile::TempDir> {
    let f = folder(arch)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".derive-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let root = tmp.path();
    let mkdir = |rel: &str| -> Result<std::path::PathBuf> {
        let path = root.join(rel);
        let dir = path.parent().expect("a file under the root");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(path)
    };
    for (rel, text) in &f.texts {
        let path = mkdir(rel)?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    for (rel, tensors) in &f.weights {
        let path = mkdir(rel)?;
        tch::Tensor::write_safetensors(tensors, &path).map_err(|e| Error::writing(&path, e))?;
    }
    std::fs::write(
        root.join("DERIVED"),
        format!(
            "reprodiff derive-weights --arch {arch} (derivation v{DERIVATION_VERSION}, seed 0): \
             each tensor from a CPU generator seeded by SHA-256 of its name; not trained \
             weights\n{DRAWS}\n"
        ),
    )
    .map_err(|e| Error::io(root.join("DERIVED"), e))?;
    Ok(tmp)
}

/// The cached folder for `derived:ARCH` (a diffusers pipeline folder), written on first use,
/// and again where an older one does not say it was made with the vectorised draws.
pub fn materialize(arch: &str) -> Result<PathBuf> {
    let dir = cache_dir().join(format!("derived/{arch}-v{DERIVATION_VERSION}"));
    let complete = |d: &Path| {
        std::fs::read_to_string(d.join("DERIVED")).is_ok_and(|t| t.lines().any(|l| l == DRAWS))
    };
    if !complete(&dir) {
        // Several processes (nextest runs tests in parallel) may get here at once: each writes
        // its own copy and renames it into place; a rename onto a folder another process put
        // there first fails, and that folder is complete, so ours is dropped. A complete folder
        // is never removed while someone may be reading it; a stale one (no DRAWS line) is.
        let parent = dir.parent().expect("a cache folder has a parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".derive-")
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        let made = staging.path().join("folder");
        write(arch, &made)?;
        if dir.join("DERIVED").is_file() && !complete(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if std::fs::rename(&made, &dir).is_err() && !complete(&dir) {
            return Err(Error::invalid_file(
                &dir,
                "cannot create the derived model folder (it exists but is incomplete: remove it)",
            ));
        }
    }
    Ok(dir)
}

/// REPRODIFF_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/reprodiff (shared with ci/install-libtorch.sh).
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("REPRODIFF_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join(".cache")
        });
    base.join("reprodiff")
}
