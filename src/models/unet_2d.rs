//! `UNet2DModel` (models/unets/unet_2d.py): the denoiser of google/ddpm-cifar10-32.
use super::embeddings::{broadcast_timestep, TimestepEmbedding, Timesteps};
use super::nn::{Activation, Conv2d, GroupNorm};
use super::params::ParamPath;
use super::unet_2d_blocks::{
    AttnSpec, BlockConfig, DownBlock, DownSpec, MidBlock, UpBlock, UpSpec,
};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// unet/config.json. Unknown keys are tolerated (diffusers does too); values this
/// implementation does not support are errors naming the key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    /// (height, width) or one size.
    pub sample_size: SampleSize,
    pub in_channels: i64,
    pub out_channels: i64,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<i64>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: i64,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f64,
    pub act_fn: String,
    pub attention_head_dim: Option<i64>,
    pub norm_num_groups: Option<i64>,
    pub attn_norm_num_groups: Option<i64>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(i64),
    Rect([i64; 2]),
}

impl SampleSize {
    pub fn hw(self) -> (i64, i64) {
        match self {
            SampleSize::Square(s) => (s, s),
            SampleSize::Rect([h, w]) => (h, w),
        }
    }
}

impl Default for UNet2DConfig {
    /// diffusers' UNet2DModel.__init__ defaults.
    fn default() -> Self {
        UNet2DConfig {
            sample_size: SampleSize::Square(32),
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
        }
    }
}

impl UNet2DConfig {
    pub fn load(path: &Path) -> Result<Self> {
        super::load_config(path, Self::validate)
    }

    /// Rejects what this implementation does not compute, naming the key and value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let unsupported =
            |key: &str, value: &dyn std::fmt::Debug| Err(format!("unsupported {key} = {value:?}"));
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type);
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        if self.downsample_type != "conv" {
            return unsupported("downsample_type", &self.downsample_type);
        }
        if self.upsample_type != "conv" {
            return unsupported("upsample_type", &self.upsample_type);
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return unsupported("class_embed_type", &self.class_embed_type);
        }
        if Activation::parse(&self.act_fn).is_none() {
            return unsupported("act_fn", &self.act_fn);
        }
        if let Some(m) = &self.mid_block_type {
            if m != "UNetMidBlock2D" {
                return unsupported("mid_block_type", m);
            }
        }
        for t in &self.down_block_types {
            if t != "DownBlock2D" && t != "AttnDownBlock2D" {
                return unsupported("down_block_types", t);
            }
        }
        for t in &self.up_block_types {
            if t != "UpBlock2D" && t != "AttnUpBlock2D" {
                return unsupported("up_block_types", t);
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self.layers_per_block < 1 {
            return unsupported("layers_per_block", &self.layers_per_block);
        }
        // The mid block's attention norm uses the resnet groups ("default" time scale shift);
        // a separate attn_norm_num_groups is not implemented.
        if let Some(g) = self.attn_norm_num_groups {
            if Some(g) != self.norm_num_groups {
                return unsupported("attn_norm_num_groups", &g);
            }
        }
        if self.attention_head_dim.is_some_and(|d| d < 1) {
            return unsupported("attention_head_dim", &self.attention_head_dim);
        }
        Ok(())
    }
}

/// The UNet. `forward(sample, t)` is `unet(sample, t).sample`.
#[derive(Debug)]
pub struct UNet2DModel {
    pub config: UNet2DConfig,
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
}

impl UNet2DModel {
    pub fn new(p: &ParamPath, config: UNet2DConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        let ch = &config.block_out_channels;
        let act = Activation::parse(&config.act_fn).expect("validated");
        let time_embed_dim = config.time_embedding_dim.unwrap_or(ch[0] * 4);
        let groups = config
            .norm_num_groups
            .unwrap_or_else(|| (ch[0] / 4).min(32));
        let c = BlockConfig {
            temb_channels: Some(time_embed_dim),
            groups,
            eps: config.norm_eps,
            act,
        };

        let conv_in = Conv2d::new(&p.sub("conv_in"), config.in_channels, ch[0], 3, 1, 1)?;
        let time_proj = Timesteps {
            dim: ch[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        };
        let time_embedding =
            TimestepEmbedding::new(&p.sub("time_embedding"), ch[0], time_embed_dim, act)?;

        let down_blocks = down_blocks(p, &config, c)?;

        let last_ch = *ch.last().expect("validated non-empty");
        let mid_block = match &config.mid_block_type {
            Some(_) => Some(MidBlock::new(
                &p.sub("mid_block"),
                c,
                last_ch,
                spatial(&config, config.add_attention, last_ch),
                config.mid_block_scale_factor,
            )?),
            None => None,
        };

        let up_blocks = up_blocks(p, &config, c)?;

        Ok(UNet2DModel {
            conv_norm_out: GroupNorm::new(&p.sub("conv_norm_out"), groups, ch[0], config.norm_eps)?,
            conv_act: act,
            conv_out: Conv2d::new(&p.sub("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            conv_in,
            time_proj,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            config,
        })
    }

    /// `unet(sample, t).sample` for an integer timestep.
    ///
    /// With REPRODIFF_DUMP_DIR set, writes the activations after each top-level module as
    /// `<dir>/<step t>.<module>.npy` (conv_in, time_embedding, down_blocks.i, mid_block,
    /// up_blocks.i, conv_out): the tool for finding where bits part from diffusers (register
    /// forward hooks on the same modules there).
    pub fn forward(&self, sample: &Tensor, t: i64) -> Result<Tensor> {
        let dumper = super::dump::Dump::new(format!("{t}."));
        let dump = |name: &str, x: &Tensor| dumper.write(name, x);
        let sample = if self.config.center_input_sample {
            sample.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?
        } else {
            sample.shallow_clone()
        };
        let batch = sample.size()[0];
        let timesteps = broadcast_timestep(t, batch, sample.device())?;
        let t_emb = self
            .time_proj
            .forward(&timesteps)?
            .f_to_kind(sample.kind())?;
        let emb = self.time_embedding.forward(&t_emb)?;
        dump("time_embedding", &emb)?;

        let mut h = self.conv_in.forward(&sample)?;
        dump("conv_in", &h)?;
        let mut states = vec![h.shallow_clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, s) = block.forward(&h, Some(&emb), None)?;
            h = out;
            dump(&format!("down_blocks.{i}"), &h)?;
            states.extend(s);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, Some(&emb), None)?;
            dump("mid_block", &h)?;
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n = block.layers();
            let skips = states.split_off(states.len() - n);
            h = block.forward(&h, &skips, Some(&emb), None, None)?;
            dump(&format!("up_blocks.{i}"), &h)?;
        }
        let h = self.conv_norm_out.forward(&h)?;
        let h = self.conv_act.forward(&h)?;
        let out = self.conv_out.forward(&h)?;
        dump("conv_out", &out)?;
        Ok(out)
    }
}

/// A block's self-attention over `channels` where it `attends` (heads of `attention_head_dim`
/// values, else one head of all channels), else none.
fn spatial(config: &UNet2DConfig, attends: bool, channels: i64) -> AttnSpec {
    match attends {
        true => AttnSpec::Spatial {
            head_dim: config.attention_head_dim.unwrap_or(channels),
        },
        false => AttnSpec::None,
    }
}

/// The down blocks, one per `down_block_types` entry, attention where it says `AttnDownBlock2D`.
fn down_blocks(p: &ParamPath, config: &UNet2DConfig, c: BlockConfig) -> Result<Vec<DownBlock>> {
    let ch = &config.block_out_channels;
    let mut down_blocks = Vec::new();
    let mut out = ch[0];
    for (i, kind) in config.down_block_types.iter().enumerate() {
        let cin = out;
        out = ch[i];
        let last = i == ch.len() - 1;
        let attn = spatial(config, kind == "AttnDownBlock2D", out);
        let spec = DownSpec {
            layers: config.layers_per_block,
            cin,
            cout: out,
            attn,
            add_downsample: !last,
            downsample_padding: config.downsample_padding,
        };
        down_blocks.push(DownBlock::new(&p.sub("down_blocks").sub(i), c, spec)?);
    }
    Ok(down_blocks)
}

/// The up blocks, one per `up_block_types` entry, attention where it says `AttnUpBlock2D`.
fn up_blocks(p: &ParamPath, config: &UNet2DConfig, c: BlockConfig) -> Result<Vec<UpBlock>> {
    let ch = &config.block_out_channels;
    let rev: Vec<i64> = ch.iter().rev().copied().collect();
    let mut up_blocks = Vec::new();
    let mut out = rev[0];
    for (i, kind) in config.up_block_types.iter().enumerate() {
        let prev = out;
        out = rev[i];
        let cin = rev[(i + 1).min(ch.len() - 1)];
        let last = i == ch.len() - 1;
        let attn = spatial(config, kind == "AttnUpBlock2D", out);
        let spec = UpSpec {
            layers: config.layers_per_block + 1,
            cin,
            prev_out: prev,
            cout: out,
            attn,
            add_upsample: !last,
        };
        up_blocks.push(UpBlock::new(&p.sub("up_blocks").sub(i), c, spec)?);
    }
    Ok(up_blocks)
}
