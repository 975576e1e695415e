//! Model re-implementations, one file per diffusers building block, named as in diffusers:
//! [`unet_2d::UNet2DModel`] is diffusers' `UNet2DModel` (google/ddpm-cifar10-32).
//! Every forward calls the same ATen ops in the same order as the PyTorch module it mirrors,
//! which is what makes outputs bit-identical on the same libtorch and CPU.
pub mod attention;
pub mod clip;
pub mod derived;
pub mod derived_sd;
pub mod dump;
pub mod embeddings;
pub mod nn;
pub mod params;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod vae;

/// The file a diffusers model folder keeps its weights in (safetensors only).
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Reads a diffusers config.json into `T` and checks it with `validate` (which rejects what
/// this implementation does not compute, naming the key): an error names the file.
pub(crate) fn load_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    validate: impl FnOnce(&T) -> std::result::Result<(), String>,
) -> crate::Result<T> {
    use crate::error::Error;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let config: T = serde_json::from_str(&text).map_err(|e| Error::invalid_file(path, e))?;
    validate(&config).map_err(|m| Error::invalid_file(path, m))?;
    Ok(config)
}
