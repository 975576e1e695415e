//! `run ddim`, `run sd` (one pipeline call from flags, as a one-scenario run) and the hidden
//! `observe` a child process runs for [`Runner`].
use crate::error::{exit, Error, Result};
use crate::harness::oneoff::Outputs;
use crate::harness::run::observe::{self, NotObserved, Runner};
use crate::harness::suite::workload::Workload;
use crate::harness::suite::Suite;
use crate::pipelines::ddim::flags::DdimRunFlags;
use crate::pipelines::stable_diffusion::flags::SdRunFlags;
use crate::pipelines::{RunFlags, SharedRunFlags};
use crate::portable::Kernels;

use crate::torch::{DeviceSpec, GeneratorKind, GeneratorSpec};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// `run PIPELINE`: one line per pipeline, its flags the pipeline's own (`pipelines::*::flags`)
/// and the shared [`RunArgs`].
#[derive(Subcommand)]
pub(crate) enum RunPipeline {
    /// DDIMPipeline (e.g. google/ddpm-cifar10-32).
    Ddim(Box<RunCommand<DdimRunFlags>>),
    /// StableDiffusionPipeline (e.g. runwayml/stable-diffusion-v1-5), no safety checker.
    Sd(Box<RunCommand<SdRunFlags>>),
}

/// One pipeline's flags and the ones every pipeline shares.
#[derive(Args)]
pub(crate) struct RunCommand<F: Args> {
    #[command(flatten)]
    pipeline: F,
    #[command(flatten)]
    common: RunArgs,
}

/// The flags every `run` pipeline takes: generators, device, dtype, determinism, output.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// One generator for all images, seeded S.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// One generator per image (its length must be the number of images).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Which generator the seeds go to.
    #[arg(long, value_enum, default_value_t = GeneratorKind::Cpu)]
    generator: GeneratorKind,
    /// [torch.Generator().manual_seed(S)] * images: one generator listed once per image.
    #[arg(long, requires = "seed")]
    repeat_generator: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The pipeline's dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// diffusers' enable_full_determinism().
    #[arg(long)]
    deterministic: bool,
    /// Intra-op threads (torch.set_num_threads).
    #[arg(long)]
    threads: Option<usize>,
    /// diffusers' output_type: np (images in [0, 1]) or latent (the last step's sample).
    #[arg(long, default_value = "np")]
    output_type: String,
    /// Whose kernels compute the run (the scenario field `kernels`; portable takes float32 and
    /// torch.Generator objects).
    #[arg(long, value_enum, default_value_t = Kernels::Native)]
    kernels: Kernels,
    /// Write the output as .npy, exactly as diffusers returns it (bf16 as f32).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Print the result record (the record `check` writes) as one JSON line.
    #[arg(long)]
    json: bool,
    /// Write the run as a run record into this folder (every step's latent in full, the output,
    /// the environment, pipeline, model and call), the format python/reprodiff-record writes:
    /// `reprodiff diff` compares it with a recorded diffusers run.
    #[arg(long, value_name = "DIR")]
    trace: Option<PathBuf>,
}

impl RunArgs {
    fn device(&self) -> Result<DeviceSpec> {
        self.device.parse()
    }

    /// The generator spec for `images` images on `device`.
    fn generator(&self, images: usize, device: DeviceSpec) -> Result<GeneratorSpec> {
        GeneratorSpec::from_flags(
            self.seed,
            self.seeds.as_deref(),
            self.generator,
            self.repeat_generator,
            images,
            device,
        )
    }

    /// Runs `run` as a one-off scenario and reports it.
    fn run(&self, run: Workload, device: DeviceSpec, grid: Option<&Path>) -> Result<i32> {
        let mut scenario =
            crate::harness::oneoff::scenario(run, device, self.deterministic, self.threads);
        scenario.kernels = self.kernels;
        let out = Outputs {
            save: self.save.as_deref(),
            grid,
            json: self.json,
            trace: self.trace.as_deref(),
        };
        crate::harness::oneoff::run(&scenario, out)?;
        Ok(exit::OK)
    }
}

impl<F: Args + RunFlags> RunCommand<F> {
    /// One pipeline run, described as a scenario so the record matches what `check` writes.
    fn run(&self, wrap: impl FnOnce(F::Workload) -> Workload) -> Result<i32> {
        let images = self.pipeline.images()?;
        let device = self.common.device()?;
        let shared = SharedRunFlags {
            generator: self.common.generator(images, device)?,
            output_type: self.common.output_type.parse()?,
            dtype: self.common.dtype.parse()?,
        };
        let run = wrap(self.pipeline.workload(shared)?);
        self.common.run(run, device, self.pipeline.grid())
    }
}

/// `run PIPELINE`.
pub(crate) fn run(pipeline: &RunPipeline) -> Result<i32> {
    match pipeline {
        RunPipeline::Ddim(c) => c.run(Workload::Ddim),
        RunPipeline::Sd(c) => c.run(Workload::Sd),
    }
}

/// The child side of [`Runner`]'s capability switch.
pub(crate) fn observe_child(
    suite_file: &Path,
    name: &str,
    out: &Path,
    local: Option<&Path>,
) -> Result<i32> {
    let local: Option<crate::harness::run::local::LocalInputsAt> = match local {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            Some(serde_json::from_str(&text).map_err(|e| Error::invalid_file(p, e))?)
        }
        None => None,
    };
    let suite = Suite::load(suite_file)?;
    let scenario = suite
        .scenarios
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::flag("scenario", name, format!("not in {}", suite_file.display())))?;
    let runner = Runner { exe: None };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    match runner.observe(suite_file, scenario, local.as_ref()) {
        Ok(obs) => {
            observe::write_observation(out, &obs)?;
            Ok(exit::OK)
        }
        Err(NotObserved::NotRun(why)) => {
            let path = out.join(observe::NOT_RUN_FILE);
            std::fs::write(&path, &why).map_err(|e| Error::io(&path, e))?;
            Err(Error::Unavailable(why))
        }
        Err(NotObserved::Failed(e)) => Err(e),
    }
}
