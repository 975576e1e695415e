//! The torch.nn layers the models use, each calling the same ATen op as its PyTorch module
//! (`F.conv2d`, `F.linear`, `F.group_norm`, ...), so the same libtorch gives the same bits; or,
//! in a process switched to the portable kernels ([`crate::portable`]), reprodiff's own.
use super::params::ParamPath;
use crate::error::{Error, Result};
use crate::portable::ops;

/// An operation the portable kernels do not have yet (the SD models' LayerNorm, GELU, ...).
pub fn not_portable(what: &str) -> Error {
    Error::Unavailable(format!(
        "{what} has no portable kernel yet: run with the native kernels"
    ))
}
use tch::Tensor;

/// nn.Conv2d (bias always on in these models).
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(
        p: &ParamPath,
        cin: i64,
        cout: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        Ok(Conv2d {
            weight: p.get("weight", &[cout, cin, kernel, kernel])?,
            bias: p.get("bias", &[cout])?,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::portable::enabled() {
            let isa = crate::portable::isa()?;
            return ops::conv2d(
                isa,
                x,
                &self.weight,
                Some(&self.bias),
                self.stride,
                self.padding,
            );
        }
        Ok(x.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

/// nn.Linear.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: &ParamPath, cin: i64, cout: i64, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: p.get("weight", &[cout, cin])?,
            bias: if bias {
                Some(p.get("bias", &[cout])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::portable::enabled() {
            let isa = crate::portable::isa()?;
            return ops::linear(isa, x, &self.weight, self.bias.as_ref());
        }
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// nn.GroupNorm(affine=True).
#[derive(Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(p: &ParamPath, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        if groups <= 0 || channels % groups != 0 {
            return Err(Error::InvalidArgument(format!(
                "GroupNorm: {channels} channels cannot be split into {groups} groups (norm_num_groups)"
            )));
        }
        Ok(GroupNorm {
            weight: p.get("weight", &[channels])?,
            bias: p.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    /// `act(group_norm(x))`: on the portable kernels group_norm with SiLU is one pass.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if crate::portable::enabled() && act == Activation::Silu {
            let (w, b) = (&self.weight, &self.bias);
            let isa = crate::portable::isa()?;
            return ops::group_norm_silu(isa, x, self.groups as usize, w, b, self.eps);
        }
        act.forward(&self.forward(x)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::portable::enabled() {
            return ops::group_norm(x, self.groups as usize, &self.weight, &self.bias, self.eps);
        }
        // F.group_norm passes torch.backends.cudnn.enabled (True by default).
        Ok(x.f_group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// nn.LayerNorm(dim, elementwise_affine=True) over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: &ParamPath, dim: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: p.get("weight", &[dim])?,
            bias: p.get("bias", &[dim])?,
            dim,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::portable::enabled() {
            return ops::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        // F.layer_norm passes torch.backends.cudnn.enabled (True by default).
        Ok(x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// nn.Embedding (no padding_idx).
#[derive(Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    pub fn new(p: &ParamPath, count: i64, dim: i64) -> Result<Self> {
        Ok(Embedding {
            weight: p.get("weight", &[count, dim])?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.weight, ids, -1, false, false)?)
    }
}

/// diffusers' `get_activation` and transformers' ACT2FN, the ones these models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Mish,
    Gelu,
    Relu,
    /// transformers' QuickGELUActivation: `x * sigmoid(1.702 * x)` (CLIP).
    QuickGelu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "mish" => Some(Activation::Mish),
            "gelu" => Some(Activation::Gelu),
            "relu" => Some(Activation::Relu),
            "quick_gelu" => Some(Activation::QuickGelu),
            _ => None,
        }
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        if crate::portable::enabled() {
            return match self {
                Activation::Silu => ops::silu(x),
                Activation::Gelu => ops::gelu(x),
                Activation::QuickGelu => ops::quick_gelu(x),
                // max(x, 0): exact on every path.
                Activation::Relu => Ok(x.f_relu()?),
                Activation::Mish => Err(not_portable("Mish")),
            };
        }
        Ok(match self {
            Activation::Silu => x.f_silu()?,
            Activation::Mish => x.f_mish()?,
            Activation::Gelu => x.f_gelu("none")?,
            Activation::Relu => x.f_relu()?,
            Activation::QuickGelu => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?)?,
        })
    }
}
