//! The `ddim` scenario workload: `DDIMPipeline(unet, scheduler)(...)` on a model folder.
use super::{DdimCall, DdimPipeline};
use crate::error::Result;
use crate::pipelines::{Output, OutputType, WorkloadKind};
use crate::torch::{DType, DeviceSpec, GeneratorSpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `DDIMPipeline(unet, scheduler)(...)`: a suite's `run = { kind = "ddim", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdimWorkload {
    /// A folder under fixtures/models/, a path, `hub:org/name` or `derived:ARCH`.
    pub model: String,
    pub steps: usize,
    #[serde(default)]
    pub eta: f64,
    #[serde(default = "one")]
    pub batch: usize,
    pub generator: GeneratorSpec,
    #[serde(default)]
    pub output_type: OutputType,
    #[serde(default)]
    pub dtype: DType,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_clipped_model_output: bool,
    /// Run the pipeline twice, re-seeding the generators in between, and output the
    /// difference of the two images: the seed document's "L_inf dist = 0" claim.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub twice: bool,
    /// DDIMScheduler config overrides: `DDIMScheduler.from_config(config, **scheduler)`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub scheduler: serde_json::Map<String, serde_json::Value>,
}

fn one() -> usize {
    1
}

impl DdimWorkload {
    /// The pipeline call these fields describe.
    pub fn call(&self) -> DdimCall {
        DdimCall {
            batch_size: self.batch,
            num_inference_steps: self.steps,
            eta: self.eta,
            use_clipped_model_output: self.use_clipped_model_output,
            output_type: self.output_type,
        }
    }
}

impl WorkloadKind for DdimWorkload {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.steps == 0 {
            return Err("run.steps must be >= 1".into());
        }
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            return Err(format!("eta = {}: must be a finite number >= 0", self.eta));
        }
        if self.batch == 0 {
            return Err("run.batch must be >= 1".into());
        }
        match self.generator.list_len() {
            Some(n) if n != self.batch => Err(format!(
                "run.generator lists {n} generators but run.batch is {}",
                self.batch
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
        let folder = crate::loading::resolve(&self.model, models_dir)?;
        let mut pipe = DdimPipeline::load(&folder, self.dtype, device, &self.scheduler)?;
        crate::pipelines::run(&mut pipe, &self.call(), &self.generator, self.twice, trace)
    }

    fn run_forced(
        &self,
        device: DeviceSpec,
        models_dir: Option<&Path>,
        forcing: crate::pipelines::Forcing,
    ) -> Result<Option<Output>> {
        let folder = crate::loading::resolve(&self.model, models_dir)?;
        let mut pipe = DdimPipeline::load(&folder, self.dtype, device, &self.scheduler)?;
        crate::pipelines::run_forced(&mut pipe, &self.call(), forcing).map(Some)
    }
}
