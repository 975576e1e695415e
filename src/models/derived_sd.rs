//! `derived:stable-diffusion-v1-5`: the full Stable Diffusion 1.5 architecture (UNet 860 M,
//! VAE 84 M, CLIP ViT-L/14 text encoder 123 M parameters) with SD 1.5's published configs, its
//! tokenizer (fixtures/tokenizers/clip-vit-large-patch14, built into the binary) and weights
//! derived deterministically (see [`super::params::DerivedSource`]). The text encoder's tensors
//! carry the `text_model.` prefix, as the SD 1.5 repository's files do.
use super::clip::{ClipTextConfig, ClipTextModel};
use super::params::{derive, Folder};
use super::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use super::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::error::Result;

/// runwayml/stable-diffusion-v1-5's unet/config.json.
pub const UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}
"#;

/// vae/config.json.
pub const VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}
"#;

/// text_encoder/config.json (openai/clip-vit-large-patch14's text tower).
pub const TEXT_ENCODER: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "float32",
  "vocab_size": 49408
}
"#;

/// scheduler/scheduler_config.json: PNDM with skip_prk_steps.
pub const SCHEDULER: &str = r#"{
  "_class_name": "PNDMScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
"#;

const MODEL_INDEX: &str = r#"{
  "_class_name": "StableDiffusionPipeline",
  "feature_extractor": [null, null],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}
"#;

const VOCAB: &str = include_str!("../../fixtures/tokenizers/clip-vit-large-patch14/vocab.json");
const MERGES: &str = include_str!("../../fixtures/tokenizers/clip-vit-large-patch14/merges.txt");
const TOKENIZER_CONFIG: &str =
    include_str!("../../fixtures/tokenizers/clip-vit-large-patch14/tokenizer_config.json");
const SPECIAL_TOKENS: &str =
    include_str!("../../fixtures/tokenizers/clip-vit-large-patch14/special_tokens_map.json");

pub(crate) fn folder() -> Result<Folder> {
    let unet: UNet2DConditionConfig = serde_json::from_str(UNET).expect("a valid built-in config");
    let vae: AutoencoderKLConfig = serde_json::from_str(VAE).expect("a valid built-in config");
    let text: ClipTextConfig = serde_json::from_str(TEXT_ENCODER).expect("a valid built-in config");
    Ok(Folder {
        texts: vec![
            ("model_index.json", MODEL_INDEX.into()),
            ("unet/config.json", UNET.into()),
            ("vae/config.json", VAE.into()),
            ("text_encoder/config.json", TEXT_ENCODER.into()),
            ("scheduler/scheduler_config.json", SCHEDULER.into()),
            ("tokenizer/vocab.json", VOCAB.into()),
            ("tokenizer/merges.txt", MERGES.into()),
            ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG.into()),
            ("tokenizer/special_tokens_map.json", SPECIAL_TOKENS.into()),
        ],
        weights: vec![
            (
                "text_encoder/model.safetensors",
                derive(|p| ClipTextModel::new(&p.sub("text_model"), text))?,
            ),
            (
                "unet/diffusion_pytorch_model.safetensors",
                derive(|p| UNet2DConditionModel::new(p, unet))?,
            ),
            (
                "vae/diffusion_pytorch_model.safetensors",
                derive(|p| AutoencoderKL::new(p, vae))?,
            ),
        ],
    })
}
