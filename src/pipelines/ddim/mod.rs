//! `DDIMPipeline` (pipelines/ddim/pipeline_ddim.py, diffusers 0.42.1), its scenario workload
//! ([`workload`]) and its flags ([`flags`]).
pub mod flags;
pub mod workload;

use super::{OutputType, StepTrace};
use crate::error::{Error, Result};
use crate::loading::{ModelFolder, WEIGHTS};
use crate::models::params::{ParamPath, SafetensorsSource};
use crate::models::unet_2d::{UNet2DConfig, UNet2DModel};
use crate::schedulers::ddim::{DdimConfig, DdimScheduler};
use crate::schedulers::Scheduler;
use crate::torch::{initial_noise, randn_tensor, DType, DeviceSpec, Generators};
use std::cell::RefCell;
use std::rc::Rc;
use tch::Tensor;

/// The arguments of `DDIMPipeline.__call__`.
#[derive(Debug, Clone, PartialEq)]
pub struct DdimCall {
    pub batch_size: usize,
    pub num_inference_steps: usize,
    pub eta: f64,
    pub use_clipped_model_output: bool,
    pub output_type: OutputType,
}

impl Default for DdimCall {
    fn default() -> Self {
        DdimCall {
            batch_size: 1,
            num_inference_steps: 50,
            eta: 0.0,
            use_clipped_model_output: false,
            output_type: OutputType::Np,
        }
    }
}

pub struct DdimPipeline {
    pub unet: UNet2DModel,
    pub scheduler: DdimScheduler,
    pub device: DeviceSpec,
    pub dtype: DType,
    /// When `Some`, [`DdimPipeline::call`] appends one [`StepTrace`] per denoising step: where
    /// two runs part. Reading the latent changes no bits (test
    /// `run_ddim_saves_the_np_image_as_diffusers_returns_it` compares a traced and an
    /// untraced run).
    pub trace: Option<Vec<StepTrace>>,
    /// The local pass's truth ([`super::Forcing`]); `None` in every other run.
    pub forcing: Option<super::Forcing>,
    /// The latent the first step was given, kept by a traced call.
    pub initial: Option<Tensor>,
}

impl DdimPipeline {
    /// Loads the UNet in `dtype` on `device`, and converts the folder's scheduler config (DDPM
    /// or DDIM) into a DDIMScheduler as `DDIMPipeline.__init__` does, with `overrides` on top.
    pub fn load(
        model: &ModelFolder,
        dtype: DType,
        device: DeviceSpec,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        device.ensure_available()?;
        let config = UNet2DConfig::load(&model.unet.join("config.json"))?;
        let weights = model.unet.join(WEIGHTS);
        let source = Rc::new(RefCell::new(SafetensorsSource::load(
            &weights,
            dtype,
            device.device(),
        )?));
        let unet = UNet2DModel::new(&ParamPath::root(source.clone()), config)?;
        let unused = source.borrow().unused();
        if !unused.is_empty() {
            return Err(Error::invalid_file(
                &weights,
                format!("tensors the UNet does not use: {}", unused.join(", ")),
            ));
        }
        let text = match &model.scheduler_config {
            Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
            None => "{}".to_string(),
        };
        let sched_config =
            DdimConfig::with_overrides(&text, overrides).map_err(|m| {
                match &model.scheduler_config {
                    Some(p) => Error::invalid_file(p, m),
                    None => Error::InvalidArgument(format!("scheduler: {m}")),
                }
            })?;
        Ok(DdimPipeline {
            trace: None,
            forcing: None,
            initial: None,
            unet,
            scheduler: DdimScheduler::new(sched_config)?,
            device,
            dtype,
        })
    }

    /// `pipe(batch_size, generator, eta, num_inference_steps, use_clipped_model_output,
    /// output_type)`. The generators supply the initial noise and every eta noise, in order.
    pub fn call(&mut self, args: &DdimCall, generators: &mut Generators) -> Result<Tensor> {
        if args.batch_size == 0 {
            return Err(Error::flag("batch", args.batch_size, "must be >= 1"));
        }
        if args.eta < 0.0 || !args.eta.is_finite() {
            return Err(Error::flag("eta", args.eta, "must be >= 0"));
        }
        if let Generators::List(g) = generators {
            if g.len() != args.batch_size {
                return Err(Error::InvalidArgument(format!(
                    "You have passed a list of generators of length {}, but requested an effective \
                     batch size of {}. Make sure the batch size matches the length of the generators.",
                    g.len(),
                    args.batch_size
                )));
            }
        }
        let c = &self.unet.config;
        let (h, w) = c.sample_size.hw();
        let shape = [args.batch_size as i64, c.in_channels, h, w];
        self.scheduler.set_timesteps(args.num_inference_steps)?;
        self.scheduler.eta = args.eta;
        self.scheduler.use_clipped_model_output = args.use_clipped_model_output;

        let _guard = tch::no_grad_guard();
        let mut image = initial_noise(randn_tensor(&shape, generators, self.device, self.dtype)?)?;
        if self.trace.is_some() {
            self.initial = Some(image.shallow_clone());
        }
        for (i, &t) in self.scheduler.timesteps().to_vec().iter().enumerate() {
            let model_output = self.unet.forward(&image, t)?;
            image = self.scheduler.step(&model_output, t, &image, generators)?;
            image = super::trace::planted(i, image)?;
            if let Some(trace) = &mut self.trace {
                trace.push(StepTrace::of(i, t, &image)?);
            }
            if let Some(forcing) = &self.forcing {
                image = forcing.after(i, &image)?;
            }
        }
        match args.output_type {
            OutputType::Latent => Ok(image),
            // (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1)
            OutputType::Np => Ok(image
                .f_div_scalar(2)?
                .f_add_scalar(0.5)?
                .f_clamp(0, 1)?
                .f_to_device(tch::Device::Cpu)?
                .f_permute([0, 2, 3, 1])?
                .f_contiguous()?),
        }
    }
}

impl super::Pipeline for DdimPipeline {
    type Call = DdimCall;
    fn call(&mut self, args: &DdimCall, generators: &mut Generators) -> Result<Tensor> {
        DdimPipeline::call(self, args, generators)
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
