//! `reprodiff run sd` and `reprodiff bench sd`: the Stable Diffusion pipeline's own flags.
use super::workload::SdWorkload;
use super::{Prompts, SdCall, SdPipeline};
use crate::error::{Error, Result};
use crate::pipelines::{Bench, BenchArgs, BenchFlags, OutputType, RunFlags, SharedRunFlags};
use crate::torch::{DType, DeviceSpec};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct SdRunFlags {
    /// A diffusers Stable Diffusion folder, a Hugging Face id in the local cache, or derived:ARCH.
    #[arg(long)]
    pub model: String,
    /// The prompt; repeat the flag for a list of prompts (one image each, or
    /// --num-images-per-prompt each).
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Negative prompt(s): one, or one per --prompt.
    #[arg(long = "negative-prompt")]
    pub negative_prompts: Vec<String>,
    /// Classifier-free guidance scale (none at <= 1).
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f64,
    /// Default: the UNet's sample_size × the VAE's scale factor.
    #[arg(long)]
    pub height: Option<i64>,
    /// Default: as --height's.
    #[arg(long)]
    pub width: Option<i64>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub num_images_per_prompt: usize,
    /// num_inference_steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM's eta (ignored by PNDM, as diffusers ignores it).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Swap the scheduler as `DDIMScheduler.from_config(pipe.scheduler.config)` does
    /// (default: the folder's own, PNDM for SD 1.5).
    #[arg(long, value_parser = ["ddim", "pndm"])]
    pub scheduler: Option<String>,
    /// Take the text encoder's hidden state this many layers before the last.
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// Write the images as one PNG grid (diffusers' make_image_grid layout).
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

impl RunFlags for SdRunFlags {
    type Workload = SdWorkload;

    fn images(&self) -> Result<usize> {
        if let Some(i) = self.prompts.iter().position(|p| p.trim().is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "--prompt #{}: an empty prompt (diffusers would generate unconditionally; say what to draw)",
                i + 1
            )));
        }
        Ok(self.prompts.len() * self.num_images_per_prompt)
    }

    fn workload(&self, shared: SharedRunFlags) -> Result<SdWorkload> {
        let prompt = match self.prompts.as_slice() {
            [one] => Prompts::One(one.clone()),
            many => Prompts::Many(many.to_vec()),
        };
        let negative_prompt = match self.negative_prompts.as_slice() {
            [] => None,
            [one] if matches!(prompt, Prompts::One(_)) => Some(Prompts::One(one.clone())),
            many => Some(Prompts::Many(many.to_vec())),
        };
        Ok(SdWorkload {
            model: self.model.clone(),
            prompt,
            negative_prompt,
            guidance_scale: self.guidance_scale,
            steps: self.steps,
            eta: self.eta,
            num_images_per_prompt: self.num_images_per_prompt,
            height: self.height,
            width: self.width,
            clip_skip: self.clip_skip,
            generator: shared.generator,
            output_type: shared.output_type,
            dtype: shared.dtype,
            scheduler_class: self.scheduler.as_deref().map(str::parse).transpose()?,
            scheduler: Default::default(),
            twice: false,
        })
    }

    fn grid(&self) -> Option<&Path> {
        self.grid.as_deref()
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct SdBenchFlags {
    /// A diffusers Stable Diffusion folder, a Hugging Face id in the local cache, or
    /// derived:ARCH.
    #[arg(long)]
    pub model: String,
    /// num_inference_steps of each call.
    #[arg(long)]
    pub steps: usize,
    /// Height and width (default: the model's).
    #[arg(long)]
    pub size: Option<i64>,
    #[command(flatten)]
    pub shared: BenchArgs,
}

impl BenchFlags for SdBenchFlags {
    fn steps(&self) -> usize {
        self.steps
    }

    fn shared(&self) -> &BenchArgs {
        &self.shared
    }

    /// Loads the model once in float32 on the CPU, then `runs + 1` calls (the first a warm-up,
    /// not counted) with a CPU generator re-seeded 0, the seed document's prompt and guidance
    /// 7.5: the loop of ci/bench_diffusers.py --pipeline sd.
    fn bench(&self) -> Result<Bench> {
        crate::pipelines::bench_settings(self.shared.threads, self.shared.kernels)?;
        let dir = crate::loading::resolve_dir(&self.model, None)?;
        let mut pipe =
            SdPipeline::load(&dir, DType::F32, DeviceSpec::Cpu, None, &Default::default())?;
        let call = SdCall {
            prompt: Prompts::One("A bear is playing a guitar on Times Square".into()),
            negative_prompt: None,
            guidance_scale: 7.5,
            num_images_per_prompt: 1,
            height: self.size,
            width: self.size,
            num_inference_steps: self.steps,
            eta: 0.0,
            clip_skip: None,
            output_type: OutputType::Np,
        };
        crate::pipelines::bench(&mut pipe, &call, self.shared.runs)
    }
}
