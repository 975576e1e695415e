//! `UNet2DConditionModel` (models/unets/unet_2d_condition.py): Stable Diffusion's denoiser,
//! conditioned on text embeddings through the Transformer2DModels of its CrossAttn blocks.
use super::embeddings::{broadcast_timestep, TimestepEmbedding, Timesteps};
use super::nn::{Activation, Conv2d, GroupNorm};
use super::params::ParamPath;
use super::unet_2d::SampleSize;
use super::unet_2d_blocks::{
    AttnSpec, BlockConfig, DownBlock, DownSpec, MidBlock, UpBlock, UpSpec,
};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// A config value given once for all blocks or per block (`attention_head_dim: 8` or `[5, 10,
/// 20, 20]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks; a list of another length is an error naming `key`.
    pub fn expand(&self, n: usize, key: &str) -> std::result::Result<Vec<T>, String> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(format!(
                "{key} lists {} values for {n} down blocks",
                v.len()
            )),
        }
    }
}

/// unet/config.json of a UNet2DConditionModel, diffusers' defaults. Keys this implementation
/// does not compute must hold their defaults (checked by `validate`, naming the key).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub sample_size: Option<SampleSize>,
    pub in_channels: i64,
    pub out_channels: i64,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: PerBlock<i64>,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<i64>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<i64>,
    pub transformer_layers_per_block: PerBlock<i64>,
    pub attention_head_dim: PerBlock<i64>,
    pub num_attention_heads: Option<PerBlock<i64>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<i64>,
    pub conv_in_kernel: i64,
    pub conv_out_kernel: i64,
    pub attention_type: String,
    /// Keys that must be null (absent) here: extra embeddings this implementation lacks.
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub encoder_hid_dim: Option<i64>,
    pub time_cond_proj_dim: Option<i64>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub num_class_embeds: Option<i64>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        UNet2DConditionConfig {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            class_embed_type: None,
            addition_embed_type: None,
            encoder_hid_dim: None,
            time_cond_proj_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            num_class_embeds: None,
            reverse_transformer_layers_per_block: None,
        }
    }
}

/// The per-block values, expanded.
struct Expanded {
    heads: Vec<i64>,
    cross: Vec<i64>,
    layers: Vec<i64>,
    transformer_layers: Vec<i64>,
    only_cross: Vec<bool>,
}

/// `unsupported {key} = {value:?}`: a config value this implementation does not compute.
fn unsupported<T>(key: &str, value: &dyn std::fmt::Debug) -> std::result::Result<T, String> {
    Err(format!("unsupported {key} = {value:?}"))
}

impl UNet2DConditionConfig {
    pub fn load(path: &Path) -> Result<Self> {
        super::load_config(path, Self::validate)
    }

    fn expanded(&self) -> std::result::Result<Expanded, String> {
        let n = self.block_out_channels.len();
        // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (the
        // config's "attention_head_dim" of SD 1.x is the number of heads).
        Ok(Expanded {
            heads: self.attention_head_dim.expand(n, "attention_head_dim")?,
            cross: self.cross_attention_dim.expand(n, "cross_attention_dim")?,
            layers: self.layers_per_block.expand(n, "layers_per_block")?,
            transformer_layers: self
                .transformer_layers_per_block
                .expand(n, "transformer_layers_per_block")?,
            only_cross: self
                .only_cross_attention
                .expand(n, "only_cross_attention")?,
        })
    }

    /// Rejects what this implementation does not compute, naming the key and value: the keys
    /// it takes only at their defaults, then the blocks' kinds and counts, then their heads.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.validate_keys()?;
        self.validate_blocks()?;
        self.validate_heads()
    }

    /// The keys this implementation takes only at one value (or absent).
    fn validate_keys(&self) -> std::result::Result<(), String> {
        let defaults = [
            (
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "default",
            ),
            (
                "time_embedding_type",
                &self.time_embedding_type,
                "positional",
            ),
            ("attention_type", &self.attention_type, "default"),
        ];
        for (key, value, want) in defaults {
            if value != want {
                return unsupported(key, value);
            }
        }
        let absent: [(&str, bool); 9] = [
            ("class_embed_type", self.class_embed_type.is_some()),
            ("addition_embed_type", self.addition_embed_type.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_some(),
            ),
            ("dual_cross_attention", self.dual_cross_attention),
        ];
        if let Some((key, _)) = absent.iter().find(|(_, set)| *set) {
            return Err(format!("unsupported {key}: must be null or false here"));
        }
        if self.num_attention_heads.is_some() {
            // diffusers raises the same for UNet2DConditionModel.
            return unsupported("num_attention_heads", &self.num_attention_heads);
        }
        if Activation::parse(&self.act_fn).is_none() {
            return unsupported("act_fn", &self.act_fn);
        }
        if self.conv_in_kernel % 2 == 0 || self.conv_out_kernel % 2 == 0 {
            return unsupported("conv_in_kernel/conv_out_kernel", &self.conv_in_kernel);
        }
        Ok(())
    }

    /// The blocks' kinds, and one of each per entry of `block_out_channels`.
    fn validate_blocks(&self) -> std::result::Result<(), String> {
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(m) => return unsupported("mid_block_type", &m),
        }
        for t in &self.down_block_types {
            if t != "DownBlock2D" && t != "CrossAttnDownBlock2D" {
                return unsupported("down_block_types", t);
            }
        }
        for t in &self.up_block_types {
            if t != "UpBlock2D" && t != "CrossAttnUpBlock2D" {
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
        Ok(())
    }

    /// Each attending block's head count divides its channels; every block has a layer.
    fn validate_heads(&self) -> std::result::Result<(), String> {
        let e = self.expanded()?;
        // Only blocks with attention use their head count (diffusers: channels // heads).
        let n_blocks = self.block_out_channels.len();
        let attends = |i: usize| {
            self.down_block_types[i] == "CrossAttnDownBlock2D"
                || self.up_block_types[n_blocks - 1 - i] == "CrossAttnUpBlock2D"
                || (i == n_blocks - 1 && self.mid_block_type.is_some())
        };
        for (i, (&ch, &h)) in self.block_out_channels.iter().zip(&e.heads).enumerate() {
            if attends(i) && (h < 1 || ch % h != 0) {
                return Err(format!(
                    "attention_head_dim[{i}] = {h} heads do not divide block_out_channels[{i}] = {ch}"
                ));
            }
        }
        if e.layers.iter().any(|&l| l < 1) {
            return unsupported("layers_per_block", &e.layers);
        }
        Ok(())
    }

    /// `cross_attention_dim` of the first block: the text encoder's hidden size must equal it.
    pub fn cross_attention_dim(&self) -> i64 {
        match &self.cross_attention_dim {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.first().copied().unwrap_or(0),
        }
    }
}

#[derive(Debug)]
pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
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

impl UNet2DConditionModel {
    pub fn new(p: &ParamPath, config: UNet2DConditionConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        let e = config.expanded().map_err(Error::InvalidArgument)?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let act = Activation::parse(&config.act_fn).expect("validated");
        let time_embed_dim = config.time_embedding_dim.unwrap_or(ch[0] * 4);
        let groups = config.norm_num_groups.unwrap_or(32);
        let c = BlockConfig {
            temb_channels: Some(time_embed_dim),
            groups,
            eps: config.norm_eps,
            act,
        };
        let conv_in = Conv2d::new(
            &p.sub("conv_in"),
            config.in_channels,
            ch[0],
            config.conv_in_kernel,
            1,
            (config.conv_in_kernel - 1) / 2,
        )?;
        let time_proj = Timesteps {
            dim: ch[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        };
        let time_embedding =
            TimestepEmbedding::new(&p.sub("time_embedding"), ch[0], time_embed_dim, act)?;

        let down_blocks = down_blocks(p, &config, &e, c)?;

        let mid_block = match config.mid_block_type.as_deref() {
            None => None,
            Some(_) => Some(MidBlock::new(
                &p.sub("mid_block"),
                c,
                ch[n - 1],
                cross(&config, &e, n - 1, true),
                config.mid_block_scale_factor,
            )?),
        };

        let up_blocks = up_blocks(p, &config, &e, c)?;

        Ok(UNet2DConditionModel {
            conv_norm_out: GroupNorm::new(&p.sub("conv_norm_out"), groups, ch[0], config.norm_eps)?,
            conv_act: act,
            conv_out: Conv2d::new(
                &p.sub("conv_out"),
                ch[0],
                config.out_channels,
                config.conv_out_kernel,
                1,
                (config.conv_out_kernel - 1) / 2,
            )?,
            conv_in,
            time_proj,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            config,
        })
    }

    /// `unet(sample, t, encoder_hidden_states).sample`. With REPRODIFF_DUMP_DIR set, writes
    /// `<t>.<module>.npy` after each top-level module (as UNet2DModel does).
    pub fn forward(&self, sample: &Tensor, t: i64, encoder: &Tensor) -> Result<Tensor> {
        let dump = super::dump::Dump::new(format!("{t}."));
        // Sizes not divisible by 2^upsamplers: each upsampler gets its skip's size.
        let factor = 1i64 << self.up_blocks.len().saturating_sub(1);
        let forward_upsample_size = sample.size()[2..].iter().any(|d| d % factor != 0);
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
        dump.write("time_embedding", &emb)?;

        let mut h = self.conv_in.forward(&sample)?;
        dump.write("conv_in", &h)?;
        let mut states = vec![h.shallow_clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, s) = block.forward(&h, Some(&emb), Some(encoder))?;
            h = out;
            dump.write(&format!("down_blocks.{i}"), &h)?;
            states.extend(s);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, Some(&emb), Some(encoder))?;
            dump.write("mid_block", &h)?;
        }
        let last = self.up_blocks.len() - 1;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.layers();
            let skips = states.split_off(states.len() - k);
            let size = (i != last && forward_upsample_size)
                .then(|| states.last().map(|s| [s.size()[2], s.size()[3]]))
                .flatten();
            h = block.forward(&h, &skips, Some(&emb), Some(encoder), size)?;
            dump.write(&format!("up_blocks.{i}"), &h)?;
        }
        let h = self.conv_norm_out.forward(&h)?;
        let h = self.conv_act.forward(&h)?;
        let out = self.conv_out.forward(&h)?;
        dump.write("conv_out", &out)?;
        Ok(out)
    }
}

/// Block `i`'s cross-attention where it `attends` (its heads, transformer layers and
/// cross-attention width), else none.
fn cross(config: &UNet2DConditionConfig, e: &Expanded, i: usize, attends: bool) -> AttnSpec {
    if !attends {
        return AttnSpec::None;
    }
    AttnSpec::Cross {
        heads: e.heads[i],
        layers: e.transformer_layers[i],
        cross_attention_dim: e.cross[i],
        use_linear_projection: config.use_linear_projection,
        only_cross_attention: e.only_cross[i],
    }
}

/// The down blocks, one per `down_block_types` entry, cross-attention where it says
/// `CrossAttnDownBlock2D`.
fn down_blocks(
    p: &ParamPath,
    config: &UNet2DConditionConfig,
    e: &Expanded,
    c: BlockConfig,
) -> Result<Vec<DownBlock>> {
    let ch = &config.block_out_channels;
    let n = ch.len();
    let mut down_blocks = Vec::new();
    let mut out = ch[0];
    for (i, kind) in config.down_block_types.iter().enumerate() {
        let cin = out;
        out = ch[i];
        let attn = cross(config, e, i, kind == "CrossAttnDownBlock2D");
        let spec = DownSpec {
            layers: e.layers[i],
            cin,
            cout: out,
            attn,
            add_downsample: i != n - 1,
            downsample_padding: config.downsample_padding,
        };
        down_blocks.push(DownBlock::new(&p.sub("down_blocks").sub(i), c, spec)?);
    }
    Ok(down_blocks)
}

/// The up blocks, one per `up_block_types` entry (block `i` on the channels of `n - 1 - i`),
/// cross-attention where it says `CrossAttnUpBlock2D`.
fn up_blocks(
    p: &ParamPath,
    config: &UNet2DConditionConfig,
    e: &Expanded,
    c: BlockConfig,
) -> Result<Vec<UpBlock>> {
    let ch = &config.block_out_channels;
    let n = ch.len();
    let mut up_blocks = Vec::new();
    let mut out = ch[n - 1];
    for (i, kind) in config.up_block_types.iter().enumerate() {
        let r = n - 1 - i; // reversed_*[i]
        let prev = out;
        out = ch[r];
        let cin = ch[r.saturating_sub(1)];
        let attn = cross(config, e, r, kind == "CrossAttnUpBlock2D");
        let spec = UpSpec {
            layers: e.layers[r] + 1,
            cin,
            prev_out: prev,
            cout: out,
            attn,
            add_upsample: i != n - 1,
        };
        up_blocks.push(UpBlock::new(&p.sub("up_blocks").sub(i), c, spec)?);
    }
    Ok(up_blocks)
}
