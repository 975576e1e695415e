//! `AutoencoderKL` (models/autoencoders/autoencoder_kl.py, vae.py): Stable Diffusion's VAE.
//! The pipeline decodes `latents / scaling_factor`; the encoder gives the latent
//! distribution's moments (mean and log-variance), as `_encode` does.
use super::nn::{Activation, Conv2d, GroupNorm};
use super::params::ParamPath;
use super::resnet::{ResnetBlock2D, Upsample2D};
use super::unet_2d_blocks::{AttnSpec, BlockConfig, DownBlock, DownSpec, MidBlock};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// vae/config.json, diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub act_fn: String,
    pub latent_channels: i64,
    pub norm_num_groups: i64,
    pub sample_size: serde_json::Value,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        AutoencoderKLConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: serde_json::Value::from(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    pub fn load(path: &Path) -> Result<Self> {
        super::load_config(path, Self::validate)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(format!("unsupported down_block_types = {t:?}"));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!("unsupported up_block_types = {t:?}"));
        }
        if Activation::parse(&self.act_fn).is_none() {
            return Err(format!("unsupported act_fn = {:?}", self.act_fn));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            // StableDiffusionPipeline ignores it; refuse rather than decode differently.
            return Err(format!(
                "unsupported shift_factor = {:?} (Stable Diffusion 1.x/2.x VAEs have none)",
                self.shift_factor
            ));
        }
        Ok(())
    }

    /// `2 ** (len(block_out_channels) - 1)`: pixels per latent element along each side.
    pub fn scale_factor(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }

    fn blocks(&self) -> BlockConfig {
        BlockConfig {
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: 1e-6,
            act: Activation::parse(&self.act_fn).expect("validated"),
        }
    }
}

/// `UpDecoderBlock2D`: resnets without skips, then an optional ×2 upsampler.
#[derive(Debug)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

#[derive(Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(p: &ParamPath, c: &AutoencoderKLConfig) -> Result<Self> {
        let b = c.blocks();
        let ch = &c.block_out_channels;
        let n = ch.len();
        let mid = ch[n - 1];
        let mut up_blocks = Vec::new();
        let mut out = mid;
        for i in 0..n {
            let prev = out;
            out = ch[n - 1 - i];
            let bp = p.sub("up_blocks").sub(i);
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    let cin = if j == 0 { prev } else { out };
                    ResnetBlock2D::new(&bp.sub("resnets").sub(j), b.resnet(cin, out, 1.0))
                })
                .collect::<Result<_>>()?;
            let upsampler = if i != n - 1 {
                Some(Upsample2D::new(&bp.sub("upsamplers").sub(0), out)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        Ok(Decoder {
            conv_in: Conv2d::new(&p.sub("conv_in"), c.latent_channels, mid, 3, 1, 1)?,
            mid_block: MidBlock::new(&p.sub("mid_block"), b, mid, mid_attention(c, mid), 1.0)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&p.sub("conv_norm_out"), b.groups, ch[0], 1e-6)?,
            conv_act: Activation::Silu,
            conv_out: Conv2d::new(&p.sub("conv_out"), ch[0], c.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let dump = super::dump::Dump::new("vae.decoder.");
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h, None, None)?;
        dump.write("mid_block", &h)?;
        for (i, block) in self.up_blocks.iter().enumerate() {
            for r in &block.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(u) = &block.upsampler {
                h = u.forward(&h, None)?;
            }
            dump.write(&format!("up_blocks.{i}"), &h)?;
        }
        let h = self.conv_norm_out.forward(&h)?;
        let h = self.conv_act.forward(&h)?;
        self.conv_out.forward(&h)
    }
}

fn mid_attention(c: &AutoencoderKLConfig, channels: i64) -> AttnSpec {
    if c.mid_block_add_attention {
        AttnSpec::Spatial { head_dim: channels }
    } else {
        AttnSpec::None
    }
}

#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(p: &ParamPath, c: &AutoencoderKLConfig) -> Result<Self> {
        let b = c.blocks();
        let ch = &c.block_out_channels;
        let n = ch.len();
        let mut down_blocks = Vec::new();
        let mut out = ch[0];
        for (i, &channels) in ch.iter().enumerate() {
            let cin = out;
            out = channels;
            let spec = DownSpec {
                layers: c.layers_per_block,
                cin,
                cout: out,
                attn: AttnSpec::None,
                add_downsample: i != n - 1,
                downsample_padding: 0,
            };
            down_blocks.push(DownBlock::new(&p.sub("down_blocks").sub(i), b, spec)?);
        }
        Ok(Encoder {
            conv_in: Conv2d::new(&p.sub("conv_in"), c.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::new(
                &p.sub("mid_block"),
                b,
                ch[n - 1],
                mid_attention(c, ch[n - 1]),
                1.0,
            )?,
            conv_norm_out: GroupNorm::new(&p.sub("conv_norm_out"), b.groups, ch[n - 1], 1e-6)?,
            // double_z: mean and log-variance
            conv_out: Conv2d::new(
                &p.sub("conv_out"),
                ch[n - 1],
                2 * c.latent_channels,
                3,
                1,
                1,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dump = super::dump::Dump::new("vae.encoder.");
        let mut h = self.conv_in.forward(x)?;
        dump.write("conv_in", &h)?;
        for (i, block) in self.down_blocks.iter().enumerate() {
            h = block.forward(&h, None, None)?.0;
            dump.write(&format!("down_blocks.{i}"), &h)?;
        }
        h = self.mid_block.forward(&h, None, None)?;
        dump.write("mid_block", &h)?;
        let h = self.conv_norm_out.forward(&h)?;
        let h = super::nn::Activation::Silu.forward(&h)?;
        let h = self.conv_out.forward(&h)?;
        dump.write("conv_out", &h)?;
        Ok(h)
    }
}

#[derive(Debug)]
pub struct AutoencoderKL {
    pub config: AutoencoderKLConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    pub fn new(p: &ParamPath, config: AutoencoderKLConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        let l = config.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder::new(&p.sub("encoder"), &config)?,
            decoder: Decoder::new(&p.sub("decoder"), &config)?,
            quant_conv: if config.use_quant_conv {
                Some(Conv2d::new(&p.sub("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(Conv2d::new(&p.sub("post_quant_conv"), l, l, 1, 1, 0)?)
            } else {
                None
            },
            config,
        })
    }

    /// `vae.decode(z).sample` (no tiling, no slicing).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.shallow_clone(),
        };
        self.decoder.forward(&z)
    }

    /// `vae._encode(x)`: the moments (mean ‖ log-variance along channels) the latent
    /// distribution is built from.
    pub fn encode_moments(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.encoder.forward(x)?;
        match &self.quant_conv {
            Some(c) => c.forward(&h),
            None => Ok(h),
        }
    }
}

/// Loads a `vae/` folder (config.json + diffusion_pytorch_model.safetensors) in `dtype` on
/// `device`; tensors the model does not use are an error naming the file.
pub fn load(
    dir: &Path,
    dtype: crate::torch::DType,
    device: crate::torch::DeviceSpec,
) -> Result<AutoencoderKL> {
    device.ensure_available()?;
    let config = AutoencoderKLConfig::load(&dir.join("config.json"))?;
    super::params::load_weights(&dir.join(super::WEIGHTS), (dtype, device), None, &[], |p| {
        AutoencoderKL::new(p, config)
    })
}
