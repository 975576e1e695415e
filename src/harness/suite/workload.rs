//! What a scenario runs. Each workload turns its parameters into one output tensor, drawing
//! every random number from the scenario's generators. The pipelines join this enum later.
use crate::error::{Error, Result};
use crate::pipelines::ddim::{DdimCall, DdimPipeline};
use crate::pipelines::stable_diffusion::{Prompts, SdCall, SdPipeline};
use crate::pipelines::OutputType;
use crate::schedulers::SchedulerClass;
use crate::torch::{randn_tensor, DType, DeviceSpec, GeneratorSpec, Generators};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Workload {
    /// Random draws through a generator spec: the RNG parity suite.
    Random {
        op: RandomOp,
        shape: Vec<i64>,
        #[serde(default)]
        dtype: DType,
        generator: GeneratorSpec,
        /// A draw of this shape made first and discarded (the stream continues).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<Vec<i64>>,
        /// get_state, draw, set_state, draw again: the output is the second draw.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        state_roundtrip: bool,
        /// For op "normal".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mean: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        std: Option<f64>,
    },
    /// `DDIMPipeline(unet, scheduler)(...)`.
    Ddim {
        /// A folder under fixtures/models/, a path, `hub:org/name` or `derived:ARCH`.
        model: String,
        steps: usize,
        #[serde(default)]
        eta: f64,
        #[serde(default = "one")]
        batch: usize,
        generator: GeneratorSpec,
        #[serde(default)]
        output_type: OutputType,
        #[serde(default)]
        dtype: DType,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        use_clipped_model_output: bool,
        /// Run the pipeline twice, re-seeding the generators in between, and output the
        /// difference of the two images: the seed document's "L_inf dist = 0" claim.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        twice: bool,
        /// DDIMScheduler config overrides: `DDIMScheduler.from_config(config, **scheduler)`.
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        scheduler: serde_json::Map<String, serde_json::Value>,
    },
    /// `StableDiffusionPipeline(...)(prompt, ...)` without the safety checker.
    Sd {
        /// A pipeline folder under fixtures/models/, a path, `hub:org/name` or `derived:ARCH`.
        model: String,
        /// One prompt or a list (`prompt=` of diffusers).
        prompt: Prompts,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        negative_prompt: Option<Prompts>,
        #[serde(default = "default_guidance")]
        guidance_scale: f64,
        steps: usize,
        #[serde(default)]
        eta: f64,
        #[serde(default = "one")]
        num_images_per_prompt: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_skip: Option<usize>,
        generator: GeneratorSpec,
        #[serde(default)]
        output_type: OutputType,
        #[serde(default)]
        dtype: DType,
        /// `pipe.scheduler = <Class>.from_config(pipe.scheduler.config, **scheduler)`; absent:
        /// the folder's own scheduler class.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler_class: Option<SchedulerClass>,
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        scheduler: serde_json::Map<String, serde_json::Value>,
        /// As for ddim: run 1 minus run 2, generators re-seeded in between.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        twice: bool,
    },
    /// A Stable Diffusion folder's `vae._encode(x)` on `x = randn_tensor(shape, generator)`:
    /// the latent distribution's moments (mean and log-variance along channels).
    VaeEncode {
        model: String,
        #[serde(default = "default_vae_shape")]
        shape: Vec<i64>,
        generator: GeneratorSpec,
        #[serde(default)]
        dtype: DType,
    },
}

/// The VAE's encoder on noise images: `pipe.vae._encode(x)`, the moments (mean ‖ log-variance)
/// of the latent distribution, for `x = randn_tensor(shape, generator)`.
fn default_vae_shape() -> Vec<i64> {
    vec![1, 3, 64, 64]
}

fn default_guidance() -> f64 {
    7.5
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RandomOp {
    /// diffusers' randn_tensor.
    Randn,
    /// torch.rand, per sample for a list like randn_tensor.
    Rand,
    /// torch.empty(shape).normal_(mean, std, generator=g).
    Normal,
}

/// What a workload produced.
#[derive(Debug)]
pub struct Output {
    pub tensor: Tensor,
    /// The per-step trace of a pipeline's (first) run, when asked for.
    pub trace: Option<Vec<crate::pipelines::StepTrace>>,
    /// The seed drawn from the OS for an unseeded run, so that the run can be repeated.
    pub unseeded_seed: Option<u64>,
}

impl Workload {
    /// Run 1 minus run 2 of a re-seeded pipeline: the seed document claims it is exactly zero,
    /// on every host, so it is compared exactly on every class (`harness::check`).
    pub fn is_rerun_difference(&self) -> bool {
        matches!(
            self,
            Workload::Ddim { twice: true, .. } | Workload::Sd { twice: true, .. }
        )
    }

    /// The dtype the workload computes in.
    pub fn dtype(&self) -> DType {
        match self {
            Workload::Random { dtype, .. }
            | Workload::Ddim { dtype, .. }
            | Workload::Sd { dtype, .. }
            | Workload::VaeEncode { dtype, .. } => *dtype,
        }
    }

    /// The dtype the workload computes in, which a dtype knob can change.
    pub fn dtype_mut(&mut self) -> &mut DType {
        match self {
            Workload::Random { dtype, .. }
            | Workload::Ddim { dtype, .. }
            | Workload::Sd { dtype, .. }
            | Workload::VaeEncode { dtype, .. } => dtype,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Workload::Random {
                op,
                shape,
                generator,
                skip,
                state_roundtrip,
                mean,
                std,
                ..
            } => {
                if shape.iter().any(|&d| d < 0) {
                    return Err(format!("run.shape {shape:?} has a negative dimension"));
                }
                if let Some(n) = generator.list_len() {
                    for s in std::iter::once(shape).chain(skip.as_ref()) {
                        if s.first().copied() != Some(n as i64) {
                            return Err(format!(
                                "run.generator lists {n} generators but shape {s:?} has batch {}",
                                s.first().map_or("none".into(), |b| b.to_string())
                            ));
                        }
                    }
                }
                if *state_roundtrip && !matches!(generator, GeneratorSpec::Single { .. }) {
                    return Err("run.state_roundtrip needs a generator of type single".into());
                }
                if *op == RandomOp::Normal {
                    if generator.list_len().is_some() {
                        return Err("run.op normal takes a single or global generator".into());
                    }
                    if std.is_some_and(|s| s < 0.0) {
                        return Err("run.std must be >= 0".into());
                    }
                } else if mean.is_some() || std.is_some() {
                    return Err("run.mean and run.std only apply to op normal".into());
                }
                Ok(())
            }
            Workload::Ddim {
                steps,
                eta,
                batch,
                generator,
                ..
            } => {
                if *steps == 0 {
                    return Err("run.steps must be >= 1".into());
                }
                if !(eta.is_finite() && *eta >= 0.0) {
                    return Err(format!("eta = {eta}: must be a finite number >= 0"));
                }
                if *batch == 0 {
                    return Err("run.batch must be >= 1".into());
                }
                match generator.list_len() {
                    Some(n) if n != *batch => Err(format!(
                        "run.generator lists {n} generators but run.batch is {batch}"
                    )),
                    _ => Ok(()),
                }
            }
            Workload::VaeEncode {
                shape, generator, ..
            } => {
                if shape.len() != 4 || shape.iter().any(|&d| d < 1) {
                    return Err(format!(
                        "run.shape {shape:?}: expected [batch, channels, h, w]"
                    ));
                }
                match generator.list_len() {
                    Some(n) if n as i64 != shape[0] => Err(format!(
                        "run.generator lists {n} generators but run.shape has batch {}",
                        shape[0]
                    )),
                    _ => Ok(()),
                }
            }
            Workload::Sd { generator, .. } => {
                let batch = self.sd_call().expect("an sd workload").validate()?;
                match generator.list_len() {
                    Some(n) if n != batch => Err(format!(
                        "run.generator lists {n} generators but the run makes {batch} images \
                         (prompts × num_images_per_prompt)"
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The model a pipeline workload loads.
    pub fn model(&self) -> Option<&str> {
        match self {
            Workload::Ddim { model, .. }
            | Workload::Sd { model, .. }
            | Workload::VaeEncode { model, .. } => Some(model),
            Workload::Random { .. } => None,
        }
    }

    /// The pipeline call of an `sd` workload.
    pub fn sd_call(&self) -> Option<SdCall> {
        match self {
            Workload::Sd {
                prompt,
                negative_prompt,
                guidance_scale,
                steps,
                eta,
                num_images_per_prompt,
                height,
                width,
                clip_skip,
                output_type,
                ..
            } => Some(SdCall {
                prompt: prompt.clone(),
                negative_prompt: negative_prompt.clone(),
                guidance_scale: *guidance_scale,
                num_images_per_prompt: *num_images_per_prompt,
                height: *height,
                width: *width,
                num_inference_steps: *steps,
                eta: *eta,
                clip_skip: *clip_skip,
                output_type: *output_type,
            }),
            _ => None,
        }
    }

    /// Runs the workload on `device`; bare model names resolve under `models_dir`. With
    /// `trace`, a pipeline records its per-step trace (of the first run, for `twice`).
    pub fn run(
        &self,
        device: DeviceSpec,
        models_dir: Option<&Path>,
        trace: bool,
    ) -> Result<Output> {
        match self {
            Workload::VaeEncode {
                model,
                shape,
                generator,
                dtype,
            } => {
                let dir = crate::loading::resolve_dir(model, models_dir)?;
                let vae = crate::models::vae::load(&dir.join("vae"), *dtype, device)?;
                let (mut gens, unseeded_seed) = generator.build()?;
                let _guard = tch::no_grad_guard();
                let x = randn_tensor(shape, &mut gens, device, *dtype)?;
                Ok(Output {
                    tensor: vae.encode_moments(&x)?,
                    trace: None,
                    unseeded_seed,
                })
            }
            Workload::Sd {
                model,
                generator,
                dtype,
                scheduler_class,
                scheduler,
                twice,
                ..
            } => {
                let call = self.sd_call().expect("an sd workload");
                let dir = crate::loading::resolve_dir(model, models_dir)?;
                let mut pipe = SdPipeline::load(&dir, *dtype, device, *scheduler_class, scheduler)?;
                let (tensor, trace, unseeded_seed) =
                    crate::pipelines::run(&mut pipe, &call, generator, *twice, trace)?;
                Ok(Output {
                    tensor,
                    trace,
                    unseeded_seed,
                })
            }
            Workload::Ddim {
                model,
                steps,
                eta,
                batch,
                generator,
                output_type,
                dtype,
                use_clipped_model_output,
                twice,
                scheduler,
            } => {
                let folder = crate::loading::resolve(model, models_dir)?;
                let mut pipe = DdimPipeline::load(&folder, *dtype, device, scheduler)?;
                let call = DdimCall {
                    batch_size: *batch,
                    num_inference_steps: *steps,
                    eta: *eta,
                    use_clipped_model_output: *use_clipped_model_output,
                    output_type: *output_type,
                };
                let (tensor, trace, unseeded_seed) =
                    crate::pipelines::run(&mut pipe, &call, generator, *twice, trace)?;
                Ok(Output {
                    tensor,
                    trace,
                    unseeded_seed,
                })
            }
            Workload::Random {
                op,
                shape,
                dtype,
                generator,
                skip,
                state_roundtrip,
                mean,
                std,
            } => {
                let (mut gens, unseeded_seed) = generator.build()?;
                let (mean, std) = (mean.unwrap_or(0.0), std.unwrap_or(1.0));
                let draw = |gens: &mut Generators, shape: &[i64]| {
                    random_draw(*op, shape, gens, device, *dtype, mean, std)
                };
                if let Some(skip) = skip {
                    let _discarded = draw(&mut gens, skip)?;
                }
                let tensor = match &mut gens {
                    Generators::One(g) if *state_roundtrip => {
                        let state = g.get_state()?;
                        let mut gens = Generators::One(g.share());
                        let _first = draw(&mut gens, shape)?; // advances the shared state
                        g.set_state(&state)?;
                        draw(&mut gens, shape)?
                    }
                    _ => draw(&mut gens, shape)?,
                };
                Ok(Output {
                    tensor,
                    trace: None,
                    unseeded_seed,
                })
            }
        }
    }
}

fn random_draw(
    op: RandomOp,
    shape: &[i64],
    gens: &mut Generators,
    device: DeviceSpec,
    dtype: DType,
    mean: f64,
    std: f64,
) -> Result<Tensor> {
    match (op, gens) {
        (RandomOp::Randn, gens) => randn_tensor(shape, gens, device, dtype),
        (RandomOp::Rand, Generators::Global) => {
            device.ensure_available()?;
            Ok(Tensor::f_rand(shape, (dtype.kind(), device.device()))?)
        }
        (RandomOp::Rand, Generators::CpuDefault) => {
            device.ensure_available()?;
            Ok(Tensor::f_rand(shape, (dtype.kind(), tch::Device::Cpu))?
                .f_to_device(device.device())?)
        }
        (RandomOp::Rand, Generators::One(g)) => {
            let on = g.device();
            Ok(g.rand(shape, dtype, on)?.f_to_device(device.device())?)
        }
        (RandomOp::Rand, Generators::List(gs)) => {
            let mut one = shape.to_vec();
            one[0] = 1;
            let parts = gs
                .iter_mut()
                .map(|g| {
                    let on = g.device();
                    g.rand(&one, dtype, on)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::f_cat(&parts, 0)?.f_to_device(device.device())?)
        }
        (RandomOp::Normal, Generators::CpuDefault) => {
            device.ensure_available()?;
            let mut t = Tensor::f_empty(shape, (dtype.kind(), tch::Device::Cpu))?;
            t = t.f_normal_(mean, std)?;
            Ok(t.f_to_device(device.device())?)
        }
        (RandomOp::Normal, Generators::Global) => {
            device.ensure_available()?;
            let mut t = Tensor::f_empty(shape, (dtype.kind(), device.device()))?;
            Ok(t.f_normal_(mean, std)?)
        }
        (RandomOp::Normal, Generators::One(g)) => {
            let mut t = Tensor::f_empty(shape, (dtype.kind(), g.device().device()))?;
            g.normal_(&mut t, mean, std)?;
            Ok(t.f_to_device(device.device())?)
        }
        (RandomOp::Normal, Generators::List(_)) => Err(Error::InvalidArgument(
            "op normal takes a single or global generator".into(),
        )),
    }
}
