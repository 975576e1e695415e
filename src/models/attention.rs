//! diffusers' `Attention` as the UNet2D blocks build it (`_from_deprecated_attn_block`:
//! group norm, self-attention, residual, rescale) run by `AttnProcessor2_0`
//! (models/attention_processor.py), op for op.
use super::nn::{GroupNorm, Linear};
use super::params::ParamPath;
use crate::error::Result;
use tch::Tensor;

#[derive(Debug)]
pub struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    rescale_output_factor: f64,
}

impl Attention {
    /// `Attention(channels, heads=channels // head_dim, dim_head=head_dim, ...)`.
    pub fn new(
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
            group_norm: GroupNorm::new(&p.sub("group_norm"), groups, channels, eps)?,
            to_q: Linear::new(&p.sub("to_q"), channels, inner, true)?,
            to_k: Linear::new(&p.sub("to_k"), channels, inner, true)?,
            to_v: Linear::new(&p.sub("to_v"), channels, inner, true)?,
            to_out: Linear::new(&p.sub("to_out").sub(0), inner, channels, true)?,
            heads,
            rescale_output_factor,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let residual = x;
        let (b, c, h, w) = x.size4()?;
        // hidden_states.view(b, c, h*w).transpose(1, 2)
        let hs = x.f_view([b, c, h * w])?.f_transpose(1, 2)?;
        // group_norm(hs.transpose(1, 2)).transpose(1, 2)
        let hs = self
            .group_norm
            .forward(&hs.f_transpose(1, 2)?)?
            .f_transpose(1, 2)?;
        let q = self.to_q.forward(&hs)?;
        let k = self.to_k.forward(&hs)?;
        let v = self.to_v.forward(&hs)?;
        let inner = k.size()[2];
        let head_dim = inner / self.heads;
        let split = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_view([b, -1, self.heads, head_dim])?.f_transpose(1, 2)?)
        };
        let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
        let out = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        )?;
        let out = out
            .f_transpose(1, 2)?
            .f_reshape([b, -1, self.heads * head_dim])?;
        let out = out.f_to_kind(q.kind())?;
        let out = self.to_out.forward(&out)?; // to_out[1] is Dropout: identity at inference
        let out = out.f_transpose(-1, -2)?.f_reshape([b, c, h, w])?;
        let out = out.f_add(residual)?;
        Ok(out.f_div_scalar(self.rescale_output_factor)?)
    }
}
