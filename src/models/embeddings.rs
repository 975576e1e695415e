//! diffusers' `Timesteps` (sinusoidal projection) and `TimestepEmbedding` (linear-act-linear),
//! models/embeddings.py.
use super::nn::{Activation, Linear};
use super::params::ParamPath;
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// `get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift)`.
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    pub dim: i64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl Timesteps {
    /// `timesteps`: int64 of shape (batch,).
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let half = self.dim / 2;
        // exponent = -math.log(max_period) * torch.arange(0, half, dtype=float32)
        let exponent = Tensor::f_arange_start(0, half, (Kind::Float, timesteps.device()))?
            .f_mul_scalar(-(10000f64.ln()))?;
        // exponent / (half_dim - downscale_freq_shift)
        let exponent = exponent.f_div_scalar(half as f64 - self.freq_shift)?;
        let portable = crate::portable::enabled();
        // Elementwise transcendentals: libtorch's vectorised ones depend on the ISA, so the
        // portable kernels take them from the libm crate.
        use crate::portable::ops::map;
        let freqs = if portable {
            map(&exponent, libm::expf)?
        } else {
            exponent.f_exp()?
        };
        // timesteps[:, None].float() * emb[None, :]; `scale * emb` with scale = 1 is exact.
        let emb = timesteps
            .f_unsqueeze(1)?
            .f_to_kind(Kind::Float)?
            .f_mul(&freqs.f_unsqueeze(0)?)?;
        let emb = if portable {
            Tensor::f_cat(&[map(&emb, libm::sinf)?, map(&emb, libm::cosf)?], -1)?
        } else {
            Tensor::f_cat(&[emb.f_sin()?, emb.f_cos()?], -1)?
        };
        let emb = if self.flip_sin_to_cos {
            Tensor::f_cat(
                &[emb.f_narrow(1, half, half)?, emb.f_narrow(1, 0, half)?],
                -1,
            )?
        } else {
            emb
        };
        Ok(if self.dim % 2 == 1 {
            emb.f_constant_pad_nd([0, 1, 0, 0])?
        } else {
            emb
        })
    }
}

/// `TimestepEmbedding(in, time_embed_dim)`: linear_1 → act → linear_2.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl TimestepEmbedding {
    pub fn new(p: &ParamPath, cin: i64, dim: i64, act: Activation) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::new(&p.sub("linear_1"), cin, dim, true)?,
            linear_2: Linear::new(&p.sub("linear_2"), dim, dim, true)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.linear_1.forward(x)?;
        let h = self.act.forward(&h)?;
        self.linear_2.forward(&h)
    }
}

/// The batch of timesteps UNet2DModel.forward builds from a scalar step:
/// `timesteps[None] * torch.ones(batch, dtype=int64)`.
pub fn broadcast_timestep(t: i64, batch: i64, device: Device) -> Result<Tensor> {
    let t = Tensor::from_slice(&[t]).f_to_device(device)?;
    Ok(t.f_mul(&Tensor::f_ones([batch], (Kind::Int64, device))?)?)
}
