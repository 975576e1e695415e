//! transformers' `CLIPTextModel` (models/clip/modeling_clip.py, transformers 5.24) as
//! StableDiffusionPipeline runs it: token + position embeddings, pre-norm encoder layers with
//! causal self-attention (SDPA, `is_causal=True`) and a quick_gelu MLP, final layer norm.
use super::nn::{Activation, Embedding, LayerNorm, Linear};
use super::params::ParamPath;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// text_encoder/config.json (CLIPTextConfig), transformers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Unsupported unless absent/false: a padding mask for the text encoder.
    pub use_attention_mask: bool,
    pub projection_dim: Option<i64>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            use_attention_mask: false,
            projection_dim: None,
        }
    }
}

impl ClipTextConfig {
    pub fn load(path: &Path) -> Result<Self> {
        super::load_config(path, Self::validate)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "quick_gelu" && self.hidden_act != "gelu" {
            return Err(format!("unsupported hidden_act = {:?}", self.hidden_act));
        }
        if self.num_attention_heads < 1 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.use_attention_mask {
            return Err("unsupported use_attention_mask = true".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
    act: Activation,
}

impl EncoderLayer {
    fn new(p: &ParamPath, c: &ClipTextConfig) -> Result<Self> {
        let d = c.hidden_size;
        let a = p.sub("self_attn");
        let m = p.sub("mlp");
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::new(&p.sub("layer_norm1"), d, c.layer_norm_eps)?,
            q_proj: Linear::new(&a.sub("q_proj"), d, d, true)?,
            k_proj: Linear::new(&a.sub("k_proj"), d, d, true)?,
            v_proj: Linear::new(&a.sub("v_proj"), d, d, true)?,
            out_proj: Linear::new(&a.sub("out_proj"), d, d, true)?,
            layer_norm2: LayerNorm::new(&p.sub("layer_norm2"), d, c.layer_norm_eps)?,
            fc1: Linear::new(&m.sub("fc1"), d, c.intermediate_size, true)?,
            fc2: Linear::new(&m.sub("fc2"), c.intermediate_size, d, true)?,
            heads: c.num_attention_heads,
            act: Activation::parse(&c.hidden_act).expect("validated"),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.size3()?;
        let head_dim = d / self.heads;
        let h = self.layer_norm1.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.f_view([b, n, -1, head_dim])?.f_transpose(1, 2)?)
        };
        let q = split(self.q_proj.forward(&h)?)?;
        let k = split(self.k_proj.forward(&h)?)?;
        let v = split(self.v_proj.forward(&h)?)?;
        // sdpa_attention_forward: no mask, is_causal, scale = head_dim ** -0.5
        let scale = (head_dim as f64).powf(-0.5);
        let a = super::attention::sdpa(&q, &k, &v, true, Some(scale))?;
        let a = a.f_transpose(1, 2)?.f_contiguous()?;
        let a = a.f_reshape([b, n, -1])?.f_contiguous()?;
        let a = self.out_proj.forward(&a)?;
        let x = x.f_add(&a)?; // residual + hidden_states
        let h = self.layer_norm2.forward(&x)?;
        let h = self.fc1.forward(&h)?;
        let h = self.act.forward(&h)?;
        let h = self.fc2.forward(&h)?;
        Ok(x.f_add(&h)?)
    }
}

#[derive(Debug)]
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// `p` is the `text_model` path of the state dict.
    pub fn new(p: &ParamPath, config: ClipTextConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        let d = config.hidden_size;
        let e = p.sub("embeddings");
        Ok(ClipTextModel {
            token_embedding: Embedding::new(&e.sub("token_embedding"), config.vocab_size, d)?,
            position_embedding: Embedding::new(
                &e.sub("position_embedding"),
                config.max_position_embeddings,
                d,
            )?,
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(&p.sub("encoder").sub("layers").sub(i), &config))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::new(&p.sub("final_layer_norm"), d, config.layer_norm_eps)?,
            config,
        })
    }

    /// The prompt embeddings StableDiffusionPipeline takes from `ids` (batch, seq): the last
    /// hidden state after final_layer_norm, or with `clip_skip` k the hidden state k layers
    /// before the last, through final_layer_norm.
    pub fn forward(&self, ids: &Tensor, clip_skip: Option<usize>) -> Result<Tensor> {
        let seq = ids.size()[1];
        if seq > self.config.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "sequence length {seq} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let skip = clip_skip.unwrap_or(0);
        if skip > self.layers.len() {
            let expected = format!("the text encoder has {} layers", self.layers.len());
            return Err(Error::flag("clip-skip", skip, expected));
        }
        // One prefix per call (the pipeline encodes the prompt, then the negative prompt).
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dump = super::dump::Dump::new(format!("text_encoder.{call}."));
        let device = ids.device();
        let positions = Tensor::f_arange(seq, (Kind::Int64, Device::Cpu))?
            .f_unsqueeze(0)?
            .f_to_device(device)?;
        let tokens = self.token_embedding.forward(ids)?;
        let mut h = tokens.f_add(&self.position_embedding.forward(&positions)?)?;
        dump.write("embeddings", &h)?;
        let keep = self.layers.len() - skip;
        for (i, layer) in self.layers.iter().take(keep).enumerate() {
            h = layer.forward(&h)?;
            dump.write(&format!("encoder.layers.{i}"), &h)?;
        }
        self.final_layer_norm.forward(&h)
    }
}
