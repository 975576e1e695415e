//! `ResnetBlock2D` (models/resnet.py), `Downsample2D` (downsampling.py), `Upsample2D`
//! (upsampling.py), with diffusers' default time_embedding_norm and conv resampling.
use super::nn::{Activation, Conv2d, GroupNorm, Linear};
use super::params::ParamPath;
use crate::error::Result;
use tch::Tensor;

#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    /// None: no time embedding (the VAE's resnets).
    pub temb_channels: Option<i64>,
    pub groups: i64,
    pub eps: f64,
    pub act: Activation,
    pub output_scale_factor: f64,
}

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(p: &ParamPath, c: ResnetConfig) -> Result<Self> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::new(&p.sub("norm1"), c.groups, c.in_channels, c.eps)?,
            conv1: Conv2d::new(&p.sub("conv1"), c.in_channels, c.out_channels, 3, 1, 1)?,
            time_emb_proj: match c.temb_channels {
                Some(t) => Some(Linear::new(
                    &p.sub("time_emb_proj"),
                    t,
                    c.out_channels,
                    true,
                )?),
                None => None,
            },
            norm2: GroupNorm::new(&p.sub("norm2"), c.groups, c.out_channels, c.eps)?,
            conv2: Conv2d::new(&p.sub("conv2"), c.out_channels, c.out_channels, 3, 1, 1)?,
            conv_shortcut: if c.in_channels != c.out_channels {
                Some(Conv2d::new(
                    &p.sub("conv_shortcut"),
                    c.in_channels,
                    c.out_channels,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
            act: c.act,
            output_scale_factor: c.output_scale_factor,
        })
    }

    pub fn forward(&self, input: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_act(input, self.act)?;
        let mut h = self.conv1.forward(&h)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            // temb = time_emb_proj(act(temb))[:, :, None, None]; h = h + temb
            let t = proj.forward(&self.act.forward(temb)?)?;
            let t = t.f_unsqueeze(-1)?.f_unsqueeze(-1)?;
            h = h.f_add(&t)?;
        }
        let h = self.norm2.forward_act(&h, self.act)?;
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(input)?,
            None => input.shallow_clone(),
        };
        // (input_tensor + hidden_states) / output_scale_factor
        Ok(shortcut.f_add(&h)?.f_div_scalar(self.output_scale_factor)?)
    }
}

/// `Downsample2D(use_conv=True, padding=p)`: padding 0 pads (0, 1, 0, 1) first.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_first: bool,
}

impl Downsample2D {
    pub fn new(p: &ParamPath, channels: i64, padding: i64) -> Result<Self> {
        Ok(Downsample2D {
            conv: Conv2d::new(&p.sub("conv"), channels, channels, 3, 2, padding)?,
            pad_first: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_first {
            // F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
            let padded = x.f_constant_pad_nd([0, 1, 0, 1])?;
            self.conv.forward(&padded)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D(use_conv=True)`: nearest ×2, then a 3x3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(p: &ParamPath, channels: i64) -> Result<Self> {
        Ok(Upsample2D {
            conv: Conv2d::new(&p.sub("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// `output_size`: the size UNet2DConditionModel forwards when the sample is not a multiple
    /// of 2^upsamplers (`F.interpolate(x, size=output_size)`), else ×2.
    pub fn forward(&self, x: &Tensor, output_size: Option<[i64; 2]>) -> Result<Tensor> {
        let (h, w) = (x.size()[2], x.size()[3]);
        let up = match output_size {
            // F.interpolate(x, size=output_size, mode="nearest")
            Some(size) => x.f_upsample_nearest2d(size, None, None)?,
            // F.interpolate(x, scale_factor=2.0, mode="nearest")
            None => x.f_upsample_nearest2d([h * 2, w * 2], Some(2.0), Some(2.0))?,
        };
        self.conv.forward(&up)
    }
}
