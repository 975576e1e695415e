//! The UNet blocks of models/unets/unet_2d_blocks.py: DownBlock2D, AttnDownBlock2D,
//! CrossAttnDownBlock2D, UNetMidBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D, AttnUpBlock2D,
//! CrossAttnUpBlock2D. A block with attention runs it after each resnet: a spatial
//! self-attention ("Attn" blocks) or a Transformer2DModel ("CrossAttn" blocks).
use super::attention::Attention;
use super::nn::Activation;
use super::params::ParamPath;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::transformer_2d::{Transformer2DModel, TransformerConfig};
use crate::error::Result;
use tch::Tensor;

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    /// None: resnets without a time embedding (the VAE).
    pub temb_channels: Option<i64>,
    pub groups: i64,
    pub eps: f64,
    pub act: Activation,
}

/// The attention after each resnet of a block.
#[derive(Debug, Clone, Copy)]
pub enum AttnSpec {
    None,
    /// `Attention(channels, heads=channels // head_dim, ...)` with group norm and residual.
    Spatial {
        head_dim: i64,
    },
    /// `Transformer2DModel(heads, channels // heads, in_channels=channels, ...)`.
    Cross {
        heads: i64,
        layers: i64,
        cross_attention_dim: i64,
        use_linear_projection: bool,
        only_cross_attention: bool,
    },
}

#[derive(Debug)]
enum LayerAttention {
    Spatial(Attention),
    Transformer(Transformer2DModel),
}

impl LayerAttention {
    fn forward(&self, h: &Tensor, encoder: Option<&Tensor>) -> Result<Tensor> {
        match (self, encoder) {
            (LayerAttention::Spatial(a), _) => a.forward(h, None),
            (LayerAttention::Transformer(t), Some(e)) => t.forward(h, e),
            (LayerAttention::Transformer(_), None) => Err(crate::Error::InvalidArgument(
                "a cross-attention block needs encoder_hidden_states".into(),
            )),
        }
    }
}

impl BlockConfig {
    fn attention(
        &self,
        p: &ParamPath,
        channels: i64,
        spec: AttnSpec,
        rescale: f64,
    ) -> Result<Option<LayerAttention>> {
        Ok(match spec {
            AttnSpec::None => None,
            AttnSpec::Spatial { head_dim } => Some(LayerAttention::Spatial(Attention::spatial(
                p,
                channels,
                head_dim,
                self.groups,
                self.eps,
                rescale,
            )?)),
            AttnSpec::Cross {
                heads,
                layers,
                cross_attention_dim,
                use_linear_projection,
                only_cross_attention,
            } => Some(LayerAttention::Transformer(Transformer2DModel::new(
                p,
                TransformerConfig {
                    heads,
                    head_dim: channels / heads.max(1),
                    in_channels: channels,
                    layers,
                    cross_attention_dim,
                    groups: self.groups,
                    use_linear_projection,
                    only_cross_attention,
                },
            )?)),
        })
    }

    /// Layer `i` of a down or up block: `resnets.i`, then `attentions.i`.
    fn push_layer(
        &self,
        p: &ParamPath,
        i: i64,
        (cin, cout): (i64, i64),
        attn: AttnSpec,
        resnets: &mut Vec<ResnetBlock2D>,
        attentions: &mut Vec<LayerAttention>,
    ) -> Result<()> {
        resnets.push(ResnetBlock2D::new(
            &p.sub("resnets").sub(i),
            self.resnet(cin, cout, 1.0),
        )?);
        if let Some(a) = self.attention(&p.sub("attentions").sub(i), cout, attn, 1.0)? {
            attentions.push(a);
        }
        Ok(())
    }

    pub fn resnet(&self, cin: i64, cout: i64, output_scale_factor: f64) -> ResnetConfig {
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

/// DownBlock2D, AttnDownBlock2D, CrossAttnDownBlock2D or DownEncoderBlock2D (no temb).
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<LayerAttention>,
    downsampler: Option<Downsample2D>,
}

/// A down block's shape: `layers` resnets (with their attentions) from `cin` to `cout`
/// channels, then a downsampler (`add_downsample`, padding `downsample_padding`).
#[derive(Debug, Clone, Copy)]
pub struct DownSpec {
    pub layers: i64,
    pub cin: i64,
    pub cout: i64,
    pub attn: AttnSpec,
    pub add_downsample: bool,
    pub downsample_padding: i64,
}

impl DownBlock {
    pub fn new(p: &ParamPath, c: BlockConfig, spec: DownSpec) -> Result<Self> {
        let DownSpec {
            layers,
            cin,
            cout,
            attn,
            add_downsample,
            downsample_padding,
        } = spec;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let rin = if i == 0 { cin } else { cout };
            c.push_layer(p, i, (rin, cout), attn, &mut resnets, &mut attentions)?;
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
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        encoder: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.shallow_clone();
        let mut states = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, encoder)?;
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

/// UNetMidBlock2D (spatial attention or none) or UNetMidBlock2DCrossAttn: resnet, then
/// (attention, resnet) for the one layer these UNets have.
#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Option<LayerAttention>, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(
        p: &ParamPath,
        c: BlockConfig,
        channels: i64,
        attn: AttnSpec,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let first = ResnetBlock2D::new(
            &p.sub("resnets").sub(0),
            c.resnet(channels, channels, output_scale_factor),
        )?;
        let attn = c.attention(
            &p.sub("attentions").sub(0),
            channels,
            attn,
            output_scale_factor,
        )?;
        let second = ResnetBlock2D::new(
            &p.sub("resnets").sub(1),
            c.resnet(channels, channels, output_scale_factor),
        )?;
        Ok(MidBlock {
            first,
            layers: vec![(attn, second)],
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        encoder: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = self.first.forward(x, temb)?;
        for (attn, resnet) in &self.layers {
            if let Some(a) = attn {
                h = a.forward(&h, encoder)?;
            }
            h = resnet.forward(&h, temb)?;
        }
        Ok(h)
    }
}

/// UpBlock2D, AttnUpBlock2D or CrossAttnUpBlock2D.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<LayerAttention>,
    upsampler: Option<Upsample2D>,
}

/// An up block's shape: `layers` resnets taking the previous block's `prev_out` channels and
/// the skips of the down block of `cin` to `cout`, then an upsampler (`add_upsample`).
#[derive(Debug, Clone, Copy)]
pub struct UpSpec {
    pub layers: i64,
    pub cin: i64,
    pub prev_out: i64,
    pub cout: i64,
    pub attn: AttnSpec,
    pub add_upsample: bool,
}

impl UpBlock {
    pub fn new(p: &ParamPath, c: BlockConfig, spec: UpSpec) -> Result<Self> {
        let UpSpec {
            layers,
            cin,
            prev_out,
            cout,
            attn,
            add_upsample,
        } = spec;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { cin } else { cout };
            let rin = if i == 0 { prev_out } else { cout };
            c.push_layer(
                p,
                i,
                (rin + skip, cout),
                attn,
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
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: Option<&Tensor>,
        encoder: Option<&Tensor>,
        upsample_size: Option<[i64; 2]>,
    ) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        // res_hidden_states_tuple[-1] first: the newest state meets the first resnet.
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = Tensor::f_cat(&[&h, skip], 1)?;
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, encoder)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h, upsample_size)?;
        }
        Ok(h)
    }
}
