//! `run ddim`, `run sd` (one pipeline call from flags, as a one-scenario run) and the hidden
//! `observe` a child process runs for [`Runner`].
use super::select::kernels_flag;
use crate::error::{exit, Error, Result};
use crate::harness::oneoff::Outputs;
use crate::harness::run::observe::{self, NotObserved, Runner};
use crate::harness::suite::Suite;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum RunPipeline {
    /// DDIMPipeline (e.g. google/ddpm-cifar10-32).
    Ddim(Box<DdimArgs>),
    /// StableDiffusionPipeline (e.g. runwayml/stable-diffusion-v1-5), no safety checker.
    Sd(Box<SdArgs>),
}

#[derive(Args)]
pub(crate) struct DdimArgs {
    /// A diffusers folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    common: RunArgs,
}

#[derive(Args)]
pub(crate) struct SdArgs {
    /// A diffusers Stable Diffusion folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    model: String,
    /// The prompt; repeat the flag for a list of prompts (one image each, or
    /// --num-images-per-prompt each).
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    /// Negative prompt(s): one, or one per --prompt.
    #[arg(long = "negative-prompt")]
    negative_prompts: Vec<String>,
    /// Classifier-free guidance scale (none at <= 1).
    #[arg(long, default_value_t = 7.5)]
    guidance_scale: f64,
    /// Default: the UNet's sample_size × the VAE's scale factor.
    #[arg(long)]
    height: Option<i64>,
    #[arg(long)]
    width: Option<i64>,
    #[arg(long, default_value_t = 1)]
    num_images_per_prompt: usize,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Swap the scheduler as `DDIMScheduler.from_config(pipe.scheduler.config)` does
    /// (default: the folder's own, PNDM for SD 1.5).
    #[arg(long, value_parser = ["ddim", "pndm"])]
    scheduler: Option<String>,
    /// Take the text encoder's hidden state this many layers before the last.
    #[arg(long)]
    clip_skip: Option<usize>,
    /// Write the images as one PNG grid (diffusers' make_image_grid layout).
    #[arg(long)]
    grid: Option<PathBuf>,
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
    /// cpu: torch.Generator("cpu"); cuda: torch.Generator("cuda"); global: torch.manual_seed.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "global"])]
    generator: String,
    /// [torch.Generator().manual_seed(S)] * images: one generator listed once per image.
    #[arg(long, requires = "seed")]
    repeat_generator: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// diffusers' enable_full_determinism().
    #[arg(long)]
    deterministic: bool,
    /// Intra-op threads (torch.set_num_threads).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "np")]
    output_type: String,
    /// native: libtorch's kernels, bit for bit diffusers'; portable: reprodiff's own, the
    /// same bits on every CPU (the scenario field `kernels`; float32, torch.Generator objects).
    #[arg(long, default_value = "native", value_parser = ["native", "portable"])]
    kernels: String,
    /// Write the output as .npy, exactly as diffusers returns it (bf16 as f32).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Print the result record (the record `check` writes) as one JSON line.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    fn device(&self) -> Result<crate::torch::DeviceSpec> {
        self.device.parse()
    }

    /// The generator spec for `images` images on `device`.
    fn generator(
        &self,
        images: usize,
        device: crate::torch::DeviceSpec,
    ) -> Result<crate::torch::GeneratorSpec> {
        crate::torch::GeneratorSpec::from_flags(
            self.seed,
            self.seeds.as_deref(),
            &self.generator,
            self.repeat_generator,
            images,
            device,
        )
    }

    /// Runs `run` as a one-off scenario and reports it.
    fn run(
        &self,
        run: crate::harness::suite::workload::Workload,
        device: crate::torch::DeviceSpec,
        grid: Option<&Path>,
    ) -> Result<i32> {
        let mut scenario =
            crate::harness::oneoff::scenario(run, device, self.deterministic, self.threads);
        scenario.kernels = kernels_flag(&self.kernels);
        let out = Outputs {
            save: self.save.as_deref(),
            grid,
            json: self.json,
        };
        crate::harness::oneoff::run(&scenario, out)?;
        Ok(exit::OK)
    }
}

/// `run PIPELINE`.
pub(crate) fn run(pipeline: &RunPipeline) -> Result<i32> {
    match pipeline {
        RunPipeline::Ddim(args) => run_ddim(args),
        RunPipeline::Sd(args) => run_sd(args),
    }
}

/// `reprodiff run ddim`: one pipeline run, described as a scenario so the record matches
/// what `check` writes.
fn run_ddim(a: &DdimArgs) -> Result<i32> {
    use crate::harness::suite::workload::Workload;
    let device = a.common.device()?;
    let run = Workload::Ddim {
        model: a.model.clone(),
        steps: a.steps,
        eta: a.eta,
        batch: a.batch,
        generator: a.common.generator(a.batch, device)?,
        output_type: a.common.output_type.parse()?,
        dtype: a.common.dtype.parse()?,
        use_clipped_model_output: false,
        twice: false,
        scheduler: Default::default(),
    };
    a.common.run(run, device, None)
}

/// `reprodiff run sd`: one StableDiffusionPipeline call.
fn run_sd(a: &SdArgs) -> Result<i32> {
    use crate::harness::suite::workload::Workload;
    use crate::pipelines::stable_diffusion::Prompts;

    if let Some(i) = a.prompts.iter().position(|p| p.trim().is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "--prompt #{}: an empty prompt (diffusers would generate unconditionally; say what to draw)",
            i + 1
        )));
    }
    let prompt = match a.prompts.as_slice() {
        [one] => Prompts::One(one.clone()),
        many => Prompts::Many(many.to_vec()),
    };
    let negative_prompt = match a.negative_prompts.as_slice() {
        [] => None,
        [one] if matches!(prompt, Prompts::One(_)) => Some(Prompts::One(one.clone())),
        many => Some(Prompts::Many(many.to_vec())),
    };
    let images = a.prompts.len() * a.num_images_per_prompt;
    let device = a.common.device()?;
    let run = Workload::Sd {
        model: a.model.clone(),
        prompt,
        negative_prompt,
        guidance_scale: a.guidance_scale,
        steps: a.steps,
        eta: a.eta,
        num_images_per_prompt: a.num_images_per_prompt,
        height: a.height,
        width: a.width,
        clip_skip: a.clip_skip,
        generator: a.common.generator(images, device)?,
        output_type: a.common.output_type.parse()?,
        dtype: a.common.dtype.parse()?,
        scheduler_class: a.scheduler.as_deref().map(str::parse).transpose()?,
        scheduler: Default::default(),
        twice: false,
    };
    a.common.run(run, device, a.grid.as_deref())
}

/// The child side of [`Runner`]'s capability switch.
pub(crate) fn observe_child(suite_file: &Path, name: &str, out: &Path) -> Result<i32> {
    let suite = Suite::load(suite_file)?;
    let scenario = suite
        .scenarios
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--scenario {name}: not in {}",
                suite_file.display()
            ))
        })?;
    let runner = Runner { exe: None };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    match runner.observe(suite_file, scenario) {
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
