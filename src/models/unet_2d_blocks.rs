//! The UNet2D blocks of models/unets/unet_2d_blocks.py: DownBlock2D, AttnDownBlock2D,
//! UNetMidBlock2D, UpBlock2D, AttnUpBlock2D. An "Attn" block runs an Attention after each resnet.
use super::attention::Attention;
use super::nn::Activation;
use super::params::ParamPath;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::error::Result;
use tch::Tensor;

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    pub temb_channels: i64,
    pub groups: i64,
    pub eps: f64,
    pub act: Activation,
}

impl BlockConfig {
    /// Layer `i` of a down or up block: `resnets.i`, then `attentions.i` in an "Attn" block.
    #[allow(clippy::too_many_arguments)]
    fn push_layer(
        &self,
        p: &ParamPath,
        i: i64,
        cin: i64,
        cout: i64,
        attention_head_dim: Option<i64>,
        resnets: &mut Vec<ResnetBlock2D>,
        attentions: &mut Vec<Attention>,
    ) -> Result<()> {
        resnets.push(ResnetBlock2D::new(
            &p.sub("resnets").sub(i),
            self.resnet(cin, cout, 1.0),
        )?);
        if let Some(hd) = attention_head_dim {
            attentions.push(Attention::new(
                &p.sub("attentions").sub(i),
                cout,
                hd,
                self.groups,
                self.eps,
                1.0,
            )?);
        }
        Ok(())
    }

    fn resnet(&self, cin: i64, cout: i64, output_scale_factor: f64) -> ResnetConfig {
        ResnetConfig {
            in_channels: cin,
            out_channels: cout,
            temb_channels: self.temb_channels,
            groups: self.groups,
            eps: self.eps,
            act: self.act,
            output_scale_factor,
        }
    }
}

/// DownBlock2D, or AttnDownBlock2D when `attention_head_dim` is given.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &ParamPath,
        c: BlockConfig,
        layers: i64,
        cin: i64,
        cout: i64,
        attention_head_dim: Option<i64>,
        add_downsample: bool,
        downsample_padding: i64,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let rin = if i == 0 { cin } else { cout };
            c.push_layer(
                p,
                i,
                rin,
                cout,
                attention_head_dim,
                &mut resnets,
                &mut attentions,
            )?;
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                &p.sub("downsamplers").sub(0),
                cout,
                downsample_padding,
            )?)
        } else {
            None
        };
        Ok(DownBlock {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// The block's output and the states it hands to the up path.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.shallow_clone();
        let mut states = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h)?;
            }
            states.push(h.shallow_clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            states.push(h.shallow_clone());
        }
        Ok((h, states))
    }
}

/// UNetMidBlock2D: resnet, then (attention, resnet) per layer (one layer in UNet2DModel).
#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Option<Attention>, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(
        p: &ParamPath,
        c: BlockConfig,
        channels: i64,
        attention_head_dim: i64,
        add_attention: bool,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let first = ResnetBlock2D::new(
            &p.sub("resnets").sub(0),
            c.resnet(channels, channels, output_scale_factor),
        )?;
        let attn = if add_attention {
            Some(Attention::new(
                &p.sub("attentions").sub(0),
                channels,
                attention_head_dim,
                c.groups,
                c.eps,
                output_scale_factor,
            )?)
        } else {
            None
        };
        let second = ResnetBlock2D::new(
            &p.sub("resnets").sub(1),
            c.resnet(channels, channels, output_scale_factor),
        )?;
        Ok(MidBlock {
            first,
            layers: vec![(attn, second)],
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, temb)?;
        for (attn, resnet) in &self.layers {
            if let Some(a) = attn {
                h = a.forward(&h)?;
            }
            h = resnet.forward(&h, temb)?;
        }
        Ok(h)
    }
}

/// UpBlock2D, or AttnUpBlock2D when `attention_head_dim` is given.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &ParamPath,
        c: BlockConfig,
        layers: i64,
        cin: i64,
        prev_out: i64,
        cout: i64,
        attention_head_dim: Option<i64>,
        add_upsample: bool,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { cin } else { cout };
            let rin = if i == 0 { prev_out } else { cout };
            c.push_layer(
                p,
                i,
                rin + skip,
                cout,
                attention_head_dim,
                &mut resnets,
                &mut attentions,
            )?;
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(&p.sub("upsamplers").sub(0), cout)?)
        } else {
            None
        };
        Ok(UpBlock {
            resnets,
            attentions,
            upsampler,
        })
    }

    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// `skips`: this block's share of the down path's states, oldest first.
    pub fn forward(&self, x: &Tensor, skips: &[Tensor], temb: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        // res_hidden_states_tuple[-1] first: the newest state meets the first resnet.
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = Tensor::f_cat(&[&h, skip], 1)?;
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h)?;
        }
        Ok(h)
    }
}
