//! The Stable Diffusion scenario workloads: `sd` (one `StableDiffusionPipeline` call) and
//! `vae-encode` (the VAE's encoder of such a folder on noise images).
use super::{Prompts, SdCall, SdPipeline};
use crate::error::Result;
use crate::pipelines::{Output, OutputType, WorkloadKind};
use crate::schedulers::SchedulerClass;
use crate::torch::{randn_tensor, DType, DeviceSpec, GeneratorSpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `StableDiffusionPipeline(...)(prompt, ...)` without the safety checker: a suite's
/// `run = { kind = "sd", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdWorkload {
    /// A pipeline folder under fixtures/models/, a path, `hub:org/name` or `derived:ARCH`.
    pub model: String,
    /// One prompt or a list (`prompt=` of diffusers).
    pub prompt: Prompts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<Prompts>,
    #[serde(default = "default_guidance")]
    pub guidance_scale: f64,
    pub steps: usize,
    #[serde(default)]
    pub eta: f64,
    #[serde(default = "one")]
    pub num_images_per_prompt: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<usize>,
    pub generator: GeneratorSpec,
    #[serde(default)]
    pub output_type: OutputType,
    #[serde(default)]
    pub dtype: DType,
    /// `pipe.scheduler = <Class>.from_config(pipe.scheduler.config, **scheduler)`; absent:
    /// the folder's own scheduler class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_class: Option<SchedulerClass>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub scheduler: serde_json::Map<String, serde_json::Value>,
    /// As for ddim: run 1 minus run 2, generators re-seeded in between.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub twice: bool,
}

fn default_guidance() -> f64 {
    7.5
}

fn one() -> usize {
    1
}

impl SdWorkload {
    /// The pipeline call these fields describe.
    pub fn call(&self) -> SdCall {
        SdCall {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            guidance_scale: self.guidance_scale,
            num_images_per_prompt: self.num_images_per_prompt,
            height: self.height,
            width: self.width,
            num_inference_steps: self.steps,
            eta: self.eta,
            clip_skip: self.clip_skip,
            output_type: self.output_type,
        }
    }
}

impl SdWorkload {
    /// The pipeline from its folder (bare names under `models_dir`), in the workload's dtype.
    fn load(&self, device: DeviceSpec, models_dir: Option<&Path>) -> Result<SdPipeline> {
        let dir = crate::loading::resolve_dir(&self.model, models_dir)?;
        SdPipeline::load(
            &dir,
            self.dtype,
            device,
            self.scheduler_class,
            &self.scheduler,
        )
    }
}

impl WorkloadKind for SdWorkload {
    fn validate(&self) -> std::result::Result<(), String> {
        let batch = self.call().validate()?;
        match self.generator.list_len() {
            Some(n) if n != batch => Err(format!(
                "run.generator lists {n} generators but the run makes {batch} images \
                 (prompts × num_images_per_prompt)"
            )),
            _ => Ok(()),
        }
    }

    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn dtype_mut(&mut self) -> &mut DType {
        &mut self.dtype
    }

    fn is_rerun_difference(&self) -> bool {
        self.twice
    }

    fn run(&self, device: DeviceSpec, models_dir: Option<&Path>, trace: bool) -> Result<Output> {
        let mut pipe = self.load(device, models_dir)?;
        crate::pipelines::run(&mut pipe, &self.call(), &self.generator, self.twice, trace)
    }

    fn run_forced(
        &self,
        device: DeviceSpec,
        models_dir: Option<&Path>,
        forcing: crate::pipelines::Forcing,
    ) -> Result<Option<Output>> {
        let mut pipe = self.load(device, models_dir)?;
        crate::pipelines::run_forced(&mut pipe, &self.call(), forcing).map(Some)
    }
}

/// A Stable Diffusion folder's `vae._encode(x)` on `x = randn_tensor(shape, generator)`: the
/// latent distribution's moments (mean ‖ log-variance along channels). A suite's
/// `run = { kind = "vae-encode", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeEncodeWorkload {
    pub model: String,
    #[serde(default = "default_vae_shape")]
    pub shape: Vec<i64>,
    pub generator: GeneratorSpec,
    #[serde(default)]
    pub dtype: DType,
}

fn default_vae_shape() -> Vec<i64> {
    vec![1, 3, 64, 64]
}

impl WorkloadKind for VaeEncodeWorkload {
    fn validate(&self) -> std::result::Result<(), String> {
        let shape = &self.shape;
        if shape.len() != 4 || shape.iter().any(|&d| d < 1) {
            return Err(format!(
                "run.shape {shape:?}: expected [batch, channels, h, w]"
            ));
        }
        match self.generator.list_len() {
            Some(n) if n as i64 != shape[0] => Err(format!(
                "run.generator lists {n} generators but run.shape has batch {}",
                shape[0]
            )),
            _ => Ok(()),
        }
    }

    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn dtype_mut(&mut self) -> &mut DType {
        &mut self.dtype
    }

    fn run(&self, device: DeviceSpec, models_dir: Option<&Path>, _trace: bool) -> Result<Output> {
        let dir = crate::loading::resolve_dir(&self.model, models_dir)?;
        let vae = crate::models::vae::load(&dir.join("vae"), self.dtype, device)?;
        let (mut gens, unseeded_seed) = self.generator.build()?;
        let _guard = tch::no_grad_guard();
        let x = randn_tensor(&self.shape, &mut gens, device, self.dtype)?;
        Ok(Output {
            tensor: vae.encode_moments(&x)?,
            trace: None,
            initial: None,
            unseeded_seed,
        })
    }
}
