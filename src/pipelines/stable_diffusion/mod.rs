//! `StableDiffusionPipeline` (pipelines/stable_diffusion/pipeline_stable_diffusion.py,
//! diffusers 0.42.1) without the safety checker: CLIP prompt encoding, classifier-free
//! guidance, a DDIM or PNDM loop over UNet2DConditionModel, AutoencoderKL decoding; its
//! scenario workloads ([`workload`]: `sd` and `vae-encode`) and its flags ([`flags`]).
pub mod flags;
pub mod workload;

use super::{OutputType, StepTrace};
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::params::load_weights;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::WEIGHTS;
use crate::schedulers::{loaded_config, Scheduler, SchedulerClass};
use crate::tokenizer::ClipTokenizer;
use crate::torch::{initial_noise, randn_tensor, DType, DeviceSpec, Generators};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// `prompt=`: one string or a list (diffusers treats them differently for negative prompts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompts {
    One(String),
    Many(Vec<String>),
}

impl Prompts {
    pub fn list(&self) -> Vec<String> {
        match self {
            Prompts::One(p) => vec![p.clone()],
            Prompts::Many(v) => v.clone(),
        }
    }
}

/// The arguments of `StableDiffusionPipeline.__call__` that reprodiff supports.
#[derive(Debug, Clone, PartialEq)]
pub struct SdCall {
    pub prompt: Prompts,
    pub negative_prompt: Option<Prompts>,
    pub guidance_scale: f64,
    pub num_images_per_prompt: usize,
    pub height: Option<i64>,
    pub width: Option<i64>,
    pub num_inference_steps: usize,
    pub eta: f64,
    pub clip_skip: Option<usize>,
    pub output_type: OutputType,
}

impl SdCall {
    /// `check_inputs` and the prompt/negative-prompt rules of `encode_prompt`; the effective
    /// batch (prompts × images per prompt).
    pub fn validate(&self) -> std::result::Result<usize, String> {
        let prompts = self.prompt.list();
        if prompts.is_empty() {
            return Err("prompt: an empty list of prompts".into());
        }
        if self.num_images_per_prompt == 0 {
            return Err("num_images_per_prompt must be >= 1".into());
        }
        for (key, v) in [("height", self.height), ("width", self.width)] {
            if let Some(v) = v {
                if v <= 0 || v % 8 != 0 {
                    return Err(format!(
                        "`height` and `width` have to be divisible by 8 but {key} is {v}"
                    ));
                }
            }
        }
        if self.num_inference_steps == 0 {
            return Err("steps must be >= 1".into());
        }
        if !(self.eta >= 0.0 && self.eta.is_finite()) {
            return Err(format!("eta = {}: must be >= 0", self.eta));
        }
        if !self.guidance_scale.is_finite() {
            return Err(format!("guidance_scale = {}", self.guidance_scale));
        }
        match (&self.prompt, &self.negative_prompt) {
            (Prompts::One(_), Some(Prompts::Many(_))) | (Prompts::Many(_), Some(Prompts::One(_))) => {
                return Err("negative_prompt must be the same type as prompt (a string or a list), as diffusers requires".into())
            }
            (Prompts::Many(p), Some(Prompts::Many(n))) if p.len() != n.len() => {
                return Err(format!(
                    "negative_prompt has {} prompts but prompt has {}: they must match",
                    n.len(),
                    p.len()
                ))
            }
            _ => {}
        }
        Ok(prompts.len() * self.num_images_per_prompt)
    }

    fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

pub struct SdPipeline {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler: Box<dyn Scheduler>,
    pub scheduler_class: SchedulerClass,
    pub device: DeviceSpec,
    pub dtype: DType,
    /// Per-step traces of the latent, when `Some` (see `DdimPipeline::trace`).
    pub trace: Option<Vec<StepTrace>>,
    /// The local pass's truth ([`super::Forcing`]); `None` in every other run.
    pub forcing: Option<super::Forcing>,
    /// The latent the first step was given, kept by a traced call.
    pub initial: Option<Tensor>,
}

/// A Stable Diffusion folder's scheduler class (if reprodiff implements it) and config, with the
/// fixes `StableDiffusionPipeline.__init__` applies (steps_offset 1, clip_sample off).
pub fn scheduler_config(
    dir: &Path,
) -> Result<(
    Option<SchedulerClass>,
    serde_json::Map<String, serde_json::Value>,
)> {
    let sched_path = dir.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&sched_path).map_err(|e| Error::io(&sched_path, e))?;
    let (own, mut config) =
        loaded_config(&text).map_err(|m| Error::invalid_file(&sched_path, m))?;
    if config
        .get("steps_offset")
        .and_then(|v| v.as_i64())
        .unwrap_or(1)
        != 1
    {
        config.insert("steps_offset".into(), 1.into());
    }
    if config.get("clip_sample") == Some(&serde_json::Value::Bool(true)) {
        config.insert("clip_sample".into(), false.into());
    }
    Ok((own, config))
}

impl SdPipeline {
    /// Loads a diffusers Stable Diffusion folder (model_index.json, tokenizer/, text_encoder/,
    /// unet/, vae/, scheduler/) in `dtype` on `device`. The folder's scheduler config gets the
    /// fixes `StableDiffusionPipeline.__init__` applies (steps_offset 1, clip_sample off);
    /// `class` then converts it as `Class.from_config(pipe.scheduler.config, **overrides)`.
    pub fn load(
        dir: &Path,
        dtype: DType,
        device: DeviceSpec,
        class: Option<SchedulerClass>,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        device.ensure_available()?;
        if !dir.join("model_index.json").is_file() {
            return Err(Error::invalid_file(
                dir,
                "not a diffusers pipeline folder (no model_index.json)",
            ));
        }
        let tokenizer = ClipTokenizer::load(&dir.join("tokenizer"))?;
        let te_config_path = dir.join("text_encoder/config.json");
        let te_config = ClipTextConfig::load(&te_config_path)?;
        let unet_config_path = dir.join("unet/config.json");
        let unet_config = UNet2DConditionConfig::load(&unet_config_path)?;
        if te_config.hidden_size != unet_config.cross_attention_dim() {
            return Err(Error::invalid_file(
                &te_config_path,
                format!(
                    "hidden_size {} does not match the UNet's cross_attention_dim {} ({})",
                    te_config.hidden_size,
                    unet_config.cross_attention_dim(),
                    unet_config_path.display()
                ),
            ));
        }
        let vae_config = AutoencoderKLConfig::load(&dir.join("vae/config.json"))?;
        if vae_config.latent_channels != unet_config.in_channels {
            return Err(Error::invalid_file(
                dir.join("vae/config.json"),
                format!(
                    "latent_channels {} does not match the UNet's in_channels {}",
                    vae_config.latent_channels, unet_config.in_channels
                ),
            ));
        }
        let on = (dtype, device);
        // transformers saves CLIPTextModel under `text_model.`; older files keep position_ids.
        let text_encoder = load_weights(
            &dir.join("text_encoder/model.safetensors"),
            on,
            Some("text_model"),
            &["position_ids"],
            |p| ClipTextModel::new(p, te_config),
        )?;
        let unet = load_weights(&dir.join("unet").join(WEIGHTS), on, None, &[], |p| {
            UNet2DConditionModel::new(p, unet_config)
        })?;
        let vae = load_weights(&dir.join("vae").join(WEIGHTS), on, None, &[], |p| {
            AutoencoderKL::new(p, vae_config)
        })?;

        let sched_path = dir.join("scheduler/scheduler_config.json");
        let (own, config) = scheduler_config(dir)?;
        let class = class.or(own).ok_or_else(|| {
            Error::invalid_file(
                &sched_path,
                format!(
                    "unsupported _class_name {} (reprodiff runs DDIMScheduler and PNDMScheduler: pass --scheduler ddim|pndm)",
                    config.get("_class_name").map_or("(none)".into(), |v| v.to_string())
                ),
            )
        })?;
        let scheduler = class
            .build(&config, overrides)
            .map_err(|m| Error::invalid_file(&sched_path, m))?;
        Ok(SdPipeline {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            scheduler_class: class,
            device,
            dtype,
            trace: None,
            forcing: None,
            initial: None,
        })
    }

    /// `tokenizer(prompts, padding="max_length", truncation=True)` → text_encoder, in the
    /// pipeline's dtype: (len(prompts), 77, hidden).
    pub fn encode(&self, prompts: &[String], clip_skip: Option<usize>) -> Result<Tensor> {
        let mut ids = Vec::new();
        for p in prompts {
            ids.extend(self.tokenizer.encode(p)?);
        }
        let ids = Tensor::from_slice(&ids)
            .f_view([prompts.len() as i64, -1])?
            .f_to_device(self.device.device())?;
        Ok(self
            .text_encoder
            .forward(&ids, clip_skip)?
            .f_to_kind(self.dtype.kind())?)
    }

    /// `prompt_embeds.repeat(1, n, 1).view(b * n, seq, -1)`.
    fn per_image(embeds: &Tensor, n: usize) -> Result<Tensor> {
        let (b, seq, _) = embeds.size3()?;
        Ok(embeds
            .f_repeat([1, n as i64, 1])?
            .f_view([b * n as i64, seq, -1])?)
    }

    /// `pipe(prompt, ..., generator=generators)`.images: NHWC float32 in [0, 1] for "np", the
    /// NCHW latents for "latent".
    pub fn call(&mut self, args: &SdCall, generators: &mut Generators) -> Result<Tensor> {
        let (batch, height, width) = self.checked_size(args, generators)?;
        let _guard = tch::no_grad_guard();
        let embeds = self.prompt_embeds(args)?;
        self.scheduler.set_timesteps(args.num_inference_steps)?;
        self.scheduler.set_eta(args.eta);
        let vsf = self.vae.config.scale_factor();
        let shape = [
            batch as i64,
            self.unet.config.in_channels,
            height / vsf,
            width / vsf,
        ];
        let latents = initial_noise(randn_tensor(&shape, generators, self.device, self.dtype)?)?
            .f_mul_scalar(self.scheduler.init_noise_sigma())?;
        if self.trace.is_some() {
            self.initial = Some(latents.shallow_clone());
        }
        let latents = self.denoise(args, &embeds, latents, generators)?;
        match args.output_type {
            OutputType::Latent => Ok(latents),
            OutputType::Np => self.decode_np(&latents),
        }
    }

    /// The call's effective batch (checked against a generator list's length) and the image's
    /// height and width (the UNet's sample_size times the VAE's scale factor by default).
    fn checked_size(&self, args: &SdCall, generators: &Generators) -> Result<(usize, i64, i64)> {
        let batch = args.validate().map_err(Error::InvalidArgument)?;
        if let Generators::List(g) = generators {
            if g.len() != batch {
                return Err(Error::InvalidArgument(format!(
                    "You have passed a list of generators of length {}, but requested an effective \
                     batch size of {batch}. Make sure the batch size matches the length of the generators.",
                    g.len()
                )));
            }
        }
        let vsf = self.vae.config.scale_factor();
        let default_size = match self.unet.config.sample_size {
            Some(s) => s.hw(),
            None => {
                return Err(Error::InvalidArgument(
                    "the UNet config has no sample_size: pass --height and --width".into(),
                ))
            }
        };
        let height = args.height.unwrap_or(default_size.0 * vsf);
        let width = args.width.unwrap_or(default_size.1 * vsf);
        Ok((batch, height, width))
    }

    /// `encode_prompt`: the prompts' embeddings, each repeated per image, with the negative
    /// prompts' in front under classifier-free guidance.
    fn prompt_embeds(&mut self, args: &SdCall) -> Result<Tensor> {
        let prompts = args.prompt.list();
        let n = args.num_images_per_prompt;
        let mut embeds = Self::per_image(&self.encode(&prompts, args.clip_skip)?, n)?;
        if args.guided() {
            let uncond = match &args.negative_prompt {
                None => vec![String::new(); prompts.len()],
                Some(neg) => neg.list(),
            };
            // The negative embeddings never take clip_skip in diffusers.
            let negative = Self::per_image(&self.encode(&uncond, None)?, n)?;
            embeds = Tensor::f_cat(&[&negative, &embeds], 0)?;
        }
        Ok(embeds)
    }

    /// The denoising loop: the UNet's noise (guided), the scheduler's step, and the trace, the
    /// planted defect and the forcing after each step.
    fn denoise(
        &mut self,
        args: &SdCall,
        embeds: &Tensor,
        mut latents: Tensor,
        generators: &mut Generators,
    ) -> Result<Tensor> {
        for (i, &t) in self.scheduler.timesteps().to_vec().iter().enumerate() {
            let input = if args.guided() {
                Tensor::f_cat(&[&latents, &latents], 0)?
            } else {
                latents.shallow_clone()
            };
            let input = self.scheduler.scale_model_input(input, t)?;
            let mut noise = self.unet.forward(&input, t, embeds)?;
            if args.guided() {
                let parts = noise.f_chunk(2, 0)?;
                let (uncond, text) = (&parts[0], &parts[1]);
                // noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                noise = uncond.f_add(&text.f_sub(uncond)?.f_mul_scalar(args.guidance_scale)?)?;
            }
            latents = self.scheduler.step(&noise, t, &latents, generators)?;
            latents = super::trace::planted(i, latents)?;
            if let Some(trace) = &mut self.trace {
                trace.push(StepTrace::of(i, t, &latents)?);
            }
            if let Some(forcing) = &self.forcing {
                latents = forcing.after(i, &latents)?;
            }
        }
        Ok(latents)
    }

    /// The VAE's decode and VaeImageProcessor.postprocess: (x * 0.5 + 0.5).clamp(0, 1), NHWC
    /// float32 on the CPU.
    fn decode_np(&self, latents: &Tensor) -> Result<Tensor> {
        let z = latents.f_div_scalar(self.vae.config.scaling_factor)?;
        let image = self.vae.decode(&z)?;
        Ok(image
            .f_mul_scalar(0.5)?
            .f_add_scalar(0.5)?
            .f_clamp(0, 1)?
            .f_to_device(tch::Device::Cpu)?
            .f_permute([0, 2, 3, 1])?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?)
    }
}

impl super::Pipeline for SdPipeline {
    type Call = SdCall;
    fn call(&mut self, args: &SdCall, generators: &mut Generators) -> Result<Tensor> {
        SdPipeline::call(self, args, generators)
    }
    fn trace_mut(&mut self) -> &mut Option<Vec<StepTrace>> {
        &mut self.trace
    }
    fn forcing_mut(&mut self) -> &mut Option<super::Forcing> {
        &mut self.forcing
    }
    fn initial_mut(&mut self) -> &mut Option<Tensor> {
        &mut self.initial
    }
}
