//! `reprodiff run ddim` and `reprodiff bench ddim`: the DDIM pipeline's own flags.
use super::workload::DdimWorkload;
use super::{DdimCall, DdimPipeline};
use crate::error::Result;
use crate::pipelines::{Bench, BenchArgs, BenchFlags, RunFlags, SharedRunFlags};
use crate::torch::{DType, DeviceSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct DdimRunFlags {
    /// A diffusers folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    pub model: String,
    /// num_inference_steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM's eta (0: deterministic steps; 1: DDPM-like noise at each step).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// batch_size: images per call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

impl RunFlags for DdimRunFlags {
    type Workload = DdimWorkload;

    fn images(&self) -> Result<usize> {
        Ok(self.batch)
    }

    fn workload(&self, shared: SharedRunFlags) -> Result<DdimWorkload> {
        Ok(DdimWorkload {
            model: self.model.clone(),
            steps: self.steps,
            eta: self.eta,
            batch: self.batch,
            generator: shared.generator,
            output_type: shared.output_type,
            dtype: shared.dtype,
            use_clipped_model_output: false,
            twice: false,
            scheduler: Default::default(),
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DdimBenchFlags {
    /// A diffusers folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    pub model: String,
    /// num_inference_steps of each call.
    #[arg(long)]
    pub steps: usize,
    #[command(flatten)]
    pub shared: BenchArgs,
}

impl BenchFlags for DdimBenchFlags {
    fn steps(&self) -> usize {
        self.steps
    }

    fn shared(&self) -> &BenchArgs {
        &self.shared
    }

    /// Loads the model once in float32 on the CPU, then `runs + 1` calls with a CPU generator
    /// seeded 0: the loop of ci/bench_diffusers.py --pipeline ddim.
    fn bench(&self) -> Result<Bench> {
        crate::pipelines::bench_settings(self.shared.threads, self.shared.kernels)?;
        let folder = crate::loading::resolve(&self.model, None)?;
        let mut pipe =
            DdimPipeline::load(&folder, DType::F32, DeviceSpec::Cpu, &Default::default())?;
        let call = DdimCall {
            num_inference_steps: self.steps,
            ..Default::default()
        };
        crate::pipelines::bench(&mut pipe, &call, self.shared.runs)
    }
}
