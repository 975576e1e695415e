//! `Transformer2DModel` with continuous input (models/transformers/transformer_2d.py) and its
//! `BasicTransformerBlock` with a GEGLU `FeedForward` (models/attention.py): the spatial
//! transformer of Stable Diffusion's cross-attention UNet blocks, op for op.
use super::attention::Attention;
use super::nn::{Activation, Conv2d, GroupNorm, LayerNorm, Linear};
use super::params::ParamPath;
use crate::error::Result;
use tch::Tensor;

/// What a Transformer2DModel is built with (UNet2DConditionModel's config, per block).
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub heads: i64,
    pub head_dim: i64,
    pub in_channels: i64,
    pub layers: i64,
    pub cross_attention_dim: i64,
    pub groups: i64,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
}

/// `GEGLU`: proj to 2 × inner, `hidden * gelu(gate)`.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(p: &ParamPath, dim: i64) -> Result<Self> {
        let inner = dim * 4;
        Ok(FeedForward {
            proj: Linear::new(&p.sub("net").sub(0).sub("proj"), dim, inner * 2, true)?,
            out: Linear::new(&p.sub("net").sub(2), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        // hidden_states, gate = hidden_states.chunk(2, dim=-1)
        let parts = h.f_chunk(2, -1)?;
        let h = parts[0].f_mul(&Activation::Gelu.forward(&parts[1])?)?;
        self.out.forward(&h) // net[1] is Dropout
    }
}

/// `BasicTransformerBlock(norm_type="layer_norm")`: self-attention, cross-attention,
/// feed-forward, each after a LayerNorm and added to its input.
#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn new(p: &ParamPath, dim: i64, c: &TransformerConfig) -> Result<Self> {
        let eps = 1e-5;
        let attn1_cross = c.only_cross_attention.then_some(c.cross_attention_dim);
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(&p.sub("norm1"), dim, eps)?,
            attn1: Attention::transformer(
                &p.sub("attn1"),
                dim,
                attn1_cross,
                c.heads,
                c.head_dim,
                false,
            )?,
            norm2: LayerNorm::new(&p.sub("norm2"), dim, eps)?,
            attn2: Attention::transformer(
                &p.sub("attn2"),
                dim,
                Some(c.cross_attention_dim),
                c.heads,
                c.head_dim,
                false,
            )?,
            norm3: LayerNorm::new(&p.sub("norm3"), dim, eps)?,
            ff: FeedForward::new(&p.sub("ff"), dim)?,
            only_cross_attention: c.only_cross_attention,
        })
    }

    fn forward(&self, x: &Tensor, encoder: &Tensor) -> Result<Tensor> {
        let n = self.norm1.forward(x)?;
        let a = self
            .attn1
            .forward(&n, self.only_cross_attention.then_some(encoder))?;
        let x = a.f_add(x)?; // attn_output + hidden_states
        let n = self.norm2.forward(&x)?;
        let a = self.attn2.forward(&n, Some(encoder))?;
        let x = a.f_add(&x)?;
        let n = self.norm3.forward(&x)?;
        let f = self.ff.forward(&n)?;
        Ok(f.f_add(&x)?)
    }
}

#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(p: &ParamPath, cin: i64, cout: i64, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::new(p, cin, cout, true)?)
        } else {
            Projection::Conv(Conv2d::new(p, cin, cout, 1, 1, 0)?)
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Conv(c) => c.forward(x),
            Projection::Linear(l) => l.forward(x),
        }
    }
}

#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    inner: i64,
    in_channels: i64,
    linear: bool,
}

impl Transformer2DModel {
    pub fn new(p: &ParamPath, c: TransformerConfig) -> Result<Self> {
        let inner = c.heads * c.head_dim;
        let linear = c.use_linear_projection;
        Ok(Transformer2DModel {
            norm: GroupNorm::new(&p.sub("norm"), c.groups, c.in_channels, 1e-6)?,
            proj_in: Projection::new(&p.sub("proj_in"), c.in_channels, inner, linear)?,
            blocks: (0..c.layers)
                .map(|i| BasicTransformerBlock::new(&p.sub("transformer_blocks").sub(i), inner, &c))
                .collect::<Result<_>>()?,
            proj_out: Projection::new(&p.sub("proj_out"), inner, c.in_channels, linear)?,
            inner,
            in_channels: c.in_channels,
            linear,
        })
    }

    pub fn forward(&self, x: &Tensor, encoder: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.size4()?;
        let residual = x;
        let hs = self.norm.forward(x)?;
        let mut hs = if self.linear {
            let c = hs.size()[1];
            let hs = hs.f_permute([0, 2, 3, 1])?.f_reshape([b, h * w, c])?;
            self.proj_in.forward(&hs)?
        } else {
            let hs = self.proj_in.forward(&hs)?;
            let c = hs.size()[1];
            hs.f_permute([0, 2, 3, 1])?.f_reshape([b, h * w, c])?
        };
        for block in &self.blocks {
            hs = block.forward(&hs, encoder)?;
        }
        let out = if self.linear {
            // inner_dim was taken before proj_in here: the input's channel count.
            let hs = self.proj_out.forward(&hs)?;
            hs.f_reshape([b, h, w, self.in_channels])?
                .f_permute([0, 3, 1, 2])?
                .f_contiguous()?
        } else {
            let hs = hs
                .f_reshape([b, h, w, self.inner])?
                .f_permute([0, 3, 1, 2])?
                .f_contiguous()?;
            self.proj_out.forward(&hs)?
        };
        Ok(out.f_add(residual)?)
    }
}
