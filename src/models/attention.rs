//! diffusers' `Attention` (models/attention_processor.py) run by `AttnProcessor2_0`, op for op,
//! in the two forms these pipelines build it:
//! - spatial self-attention of the UNet2D and VAE blocks (`_from_deprecated_attn_block`: group
//!   norm, 4-d input, residual, rescale), [`Attention::spatial`];
//! - the self- and cross-attention of a `BasicTransformerBlock` (3-d input, no q/k/v bias),
//!   [`Attention::transformer`].
use super::nn::{GroupNorm, Linear};
use super::params::ParamPath;
use crate::error::Result;
use tch::Tensor;

#[derive(Debug)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    residual_connection: bool,
    rescale_output_factor: f64,
}

impl Attention {
    /// `Attention(channels, heads=channels // head_dim, dim_head=head_dim, norm_num_groups,
    /// residual_connection=True, bias=True, _from_deprecated_attn_block=True)`.
    pub fn spatial(
        p: &ParamPath,
        channels: i64,
        head_dim: i64,
        groups: i64,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        let heads = (channels / head_dim.max(1)).max(1);
        let inner = head_dim * heads;
        Ok(Attention {
            group_norm: Some(GroupNorm::new(&p.sub("group_norm"), groups, channels, eps)?),
            to_q: Linear::new(&p.sub("to_q"), channels, inner, true)?,
            to_k: Linear::new(&p.sub("to_k"), channels, inner, true)?,
            to_v: Linear::new(&p.sub("to_v"), channels, inner, true)?,
            to_out: Linear::new(&p.sub("to_out").sub(0), inner, channels, true)?,
            heads,
            residual_connection: true,
            rescale_output_factor,
        })
    }

    /// `Attention(query_dim, cross_attention_dim, heads, dim_head, bias=attention_bias)` of a
    /// BasicTransformerBlock; `cross_dim` None is self-attention.
    pub fn transformer(
        p: &ParamPath,
        query_dim: i64,
        cross_dim: Option<i64>,
        heads: i64,
        head_dim: i64,
        bias: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let kv_dim = cross_dim.unwrap_or(query_dim);
        Ok(Attention {
            group_norm: None,
            to_q: Linear::new(&p.sub("to_q"), query_dim, inner, bias)?,
            to_k: Linear::new(&p.sub("to_k"), kv_dim, inner, bias)?,
            to_v: Linear::new(&p.sub("to_v"), kv_dim, inner, bias)?,
            to_out: Linear::new(&p.sub("to_out").sub(0), inner, query_dim, true)?,
            heads,
            residual_connection: false,
            rescale_output_factor: 1.0,
        })
    }

    /// `attn(hidden_states, encoder_hidden_states)`: 4-d (B, C, H, W) or 3-d (B, N, C) input.
    pub fn forward(&self, x: &Tensor, encoder: Option<&Tensor>) -> Result<Tensor> {
        let residual = x;
        let four_d = x.dim() == 4;
        let (mut hs, nchw) = if four_d {
            let (b, c, h, w) = x.size4()?;
            // hidden_states.view(b, c, h*w).transpose(1, 2)
            (x.f_view([b, c, h * w])?.f_transpose(1, 2)?, Some((c, h, w)))
        } else {
            (x.shallow_clone(), None)
        };
        let b = hs.size()[0];
        if let Some(gn) = &self.group_norm {
            // group_norm(hs.transpose(1, 2)).transpose(1, 2)
            hs = gn.forward(&hs.f_transpose(1, 2)?)?.f_transpose(1, 2)?;
        }
        let q = self.to_q.forward(&hs)?;
        let context = encoder.unwrap_or(&hs);
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let inner = k.size()[2];
        let head_dim = inner / self.heads;
        let split = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_view([b, -1, self.heads, head_dim])?.f_transpose(1, 2)?)
        };
        let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
        let out = sdpa(&q, &k, &v, false, None)?;
        let out = out
            .f_transpose(1, 2)?
            .f_reshape([b, -1, self.heads * head_dim])?;
        let out = out.f_to_kind(q.kind())?;
        let mut out = self.to_out.forward(&out)?; // to_out[1] is Dropout: identity at inference
        if let Some((c, h, w)) = nchw {
            out = out.f_transpose(-1, -2)?.f_reshape([b, c, h, w])?;
        }
        if self.residual_connection {
            out = out.f_add(residual)?;
        }
        Ok(out.f_div_scalar(self.rescale_output_factor)?)
    }
}

/// `F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)` for q, k, v of
/// [b, heads, n, d]: libtorch's, or on the portable kernels `portable_attention` (whose scale is
/// always the rule's `(1 / sqrt(d)) as f32`, the value both callers pass).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    scale: Option<f64>,
) -> Result<Tensor> {
    if crate::portable::enabled() {
        return portable_attention(q, k, v, causal);
    }
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        None::<&Tensor>,
        0.0,
        causal,
        scale,
        false,
    )?)
}

/// SDPA's math for q, k, v of [b, heads, n, d] under the portable order rule
/// ([`crate::portable::ops::attention`]): `softmax(q k^T * (1 / sqrt(d))) v`, the scale a
/// float32 multiply after the dot products; `causal`: query i sees keys 0..=i only (CLIP's text
/// encoder).
fn portable_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    crate::portable::ops::attention(crate::portable::isa()?, q, k, v, causal)
}
