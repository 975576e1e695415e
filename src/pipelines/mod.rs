//! Pipelines: diffusers' `__call__` loops over a model and a scheduler, and the seam through
//! which the harness and the command line reach them.
//!
//! A pipeline is one folder here that owns everything about it:
//!
//! - `mod.rs`: the pipeline itself (loading a diffusers folder, `__call__`), implementing
//!   [`Pipeline`];
//! - `workload.rs`: its scenario workload (the `run = { kind = "..." }` table of a suite, its
//!   fields, validation and run), implementing [`WorkloadKind`];
//! - `flags.rs`: its `reprodiff run` and `reprodiff bench` flags, implementing [`RunFlags`]
//!   and [`BenchFlags`].
//!
//! The harness lists the workloads in one enum (`harness::suite::workload::Workload`) and the
//! command line lists the flags in two (`run`, `bench`); each holds one line per pipeline.
//! docs/development.md has the recipe for adding one.
pub mod call;
pub mod ddim;
pub mod stable_diffusion;
pub mod trace;

pub use call::{bench, bench_settings, peak_rss_kb, run, run_forced, Bench, PROFILE_ENV};
pub use trace::{Forcing, StepTrace};

use crate::error::Result;
use crate::torch::{DType, DeviceSpec, GeneratorSpec, Generators};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// What the harness and the benchmarks need of a pipeline: one `__call__`, and the per-step
/// trace it records when asked.
pub trait Pipeline {
    type Call;
    fn call(&mut self, args: &Self::Call, generators: &mut Generators) -> Result<Tensor>;
    fn trace_mut(&mut self) -> &mut Option<Vec<StepTrace>>;
    /// The truth's latents that replace each step's own in the local pass ([`Forcing::after`]);
    /// `None` in every other run.
    fn forcing_mut(&mut self) -> &mut Option<trace::Forcing>;
    /// The latent the first step was given, which a traced call keeps here.
    fn initial_mut(&mut self) -> &mut Option<Tensor>;
}

/// What a scenario workload produced.
#[derive(Debug)]
pub struct Output {
    pub tensor: Tensor,
    /// The per-step trace of a pipeline's (first) run, when asked for.
    pub trace: Option<Vec<StepTrace>>,
    /// The latent the first denoising step was given, in a traced run.
    pub initial: Option<Tensor>,
    /// The seed drawn from the OS for an unseeded run, so that the run can be repeated.
    pub unseeded_seed: Option<u64>,
}

/// One kind of scenario workload (a suite's `run` table): its fields are the struct's, and the
/// harness asks it only this.
pub trait WorkloadKind {
    /// Checks the fields together (a suite names the key at fault: `run.steps must be >= 1`).
    fn validate(&self) -> std::result::Result<(), String>;
    /// The model folder the workload loads, as the scenario names it.
    fn model(&self) -> Option<&str>;
    /// The dtype the workload computes in.
    fn dtype(&self) -> DType;
    /// The dtype, which a dtype knob can change.
    fn dtype_mut(&mut self) -> &mut DType;
    /// Run 1 minus run 2 of a re-seeded pipeline: the seed document claims it is exactly zero,
    /// on every host, so it is compared exactly on every class.
    fn is_rerun_difference(&self) -> bool {
        false
    }
    /// Runs the workload on `device`; bare model names resolve under `models_dir`. With
    /// `trace`, a pipeline records its per-step trace (of the first run, for `twice`).
    fn run(&self, device: DeviceSpec, models_dir: Option<&Path>, trace: bool) -> Result<Output>;
    /// The local pass: the pipeline's call teacher-forced by the truth
    /// ([`Forcing`]), its trace holding each step's own latent. `None` for a workload that is
    /// no denoising loop.
    fn run_forced(
        &self,
        _device: DeviceSpec,
        _models_dir: Option<&Path>,
        _forcing: Forcing,
    ) -> Result<Option<Output>> {
        Ok(None)
    }
}

/// The values of the flags every `reprodiff run PIPELINE` shares that go into its workload.
#[derive(Debug, Clone)]
pub struct SharedRunFlags {
    pub generator: GeneratorSpec,
    pub output_type: OutputType,
    pub dtype: DType,
}

/// A pipeline's own `reprodiff run` flags: they describe one workload.
pub trait RunFlags {
    type Workload: WorkloadKind;
    /// The number of images the flags ask for (a generator list has this length), once the
    /// flags that decide it are checked.
    fn images(&self) -> Result<usize>;
    /// The workload these flags and the shared ones describe.
    fn workload(&self, shared: SharedRunFlags) -> Result<Self::Workload>;
    /// Where to write the images as one PNG grid, for a pipeline that offers `--grid`.
    fn grid(&self) -> Option<&Path> {
        None
    }
}

/// The flags every `reprodiff bench PIPELINE` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Timed calls, after one warm-up call.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Intra-op threads (torch.set_num_threads; the portable kernels' too).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Whose kernels compute the run.
    #[arg(long, value_enum, default_value_t = crate::portable::Kernels::Native)]
    pub kernels: crate::portable::Kernels,
}

/// A pipeline's own `reprodiff bench` flags: load once, a warm-up call, timed calls.
pub trait BenchFlags {
    /// The denoising steps of each call.
    fn steps(&self) -> usize;
    fn shared(&self) -> &BenchArgs;
    fn bench(&self) -> Result<Bench>;
}

/// diffusers' `output_type` values reprodiff produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// NHWC in [0, 1]: what `output_type="np"` returns.
    #[default]
    Np,
    /// The raw NCHW sample of the last step.
    Latent,
}

impl std::str::FromStr for OutputType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "np" => Ok(OutputType::Np),
            "latent" => Ok(OutputType::Latent),
            _ => Err(crate::Error::flag(
                "output-type",
                s,
                "expected np or latent",
            )),
        }
    }
}
