//! The loops every pipeline shares: one scenario call (with its trace, and the re-seeded
//! second run of `twice`), and the benchmark loop of `reprodiff bench`.
use super::{Forcing, Output, Pipeline};
use crate::error::{Error, Result};
use crate::torch::{GeneratorSpec, Generators};

/// How a seeded global generator reaches a pipeline: `generator=torch.manual_seed(s)`, the CPU
/// default generator object. An unseeded run passes `generator=None`.
fn as_pipeline_argument(gens: Generators, unseeded: bool) -> Generators {
    match gens {
        Generators::Global if !unseeded => Generators::CpuDefault,
        other => other,
    }
}

/// One call with the generators of `spec` (its trace and initial latent recorded when
/// `trace`), and with `twice` a second call with generators seeded afresh (`g.manual_seed(s)`
/// again), returning run 1 minus run 2: the seed document's "L_inf dist = 0". The output holds
/// the first run's trace and the OS seed of an unseeded spec.
pub fn run<P: Pipeline>(
    pipe: &mut P,
    args: &P::Call,
    spec: &GeneratorSpec,
    twice: bool,
    trace: bool,
) -> Result<Output> {
    let (gens, unseeded_seed) = spec.build()?;
    let mut gens = as_pipeline_argument(gens, unseeded_seed.is_some());
    *pipe.trace_mut() = trace.then(Vec::new);
    let mut tensor = pipe.call(args, &mut gens)?;
    let first_trace = pipe.trace_mut().take();
    let initial = pipe.initial_mut().take();
    if twice {
        let (again, _) = match unseeded_seed {
            Some(seed) => GeneratorSpec::Global { seed }.build()?,
            None => spec.build()?,
        };
        let mut again = as_pipeline_argument(again, unseeded_seed.is_some());
        tensor = tensor.f_sub(&pipe.call(args, &mut again)?)?;
    }
    Ok(Output {
        tensor,
        trace: first_trace,
        initial,
        unseeded_seed,
    })
}

/// The local pass: one call teacher-forced by `forcing`, drawing nothing but the
/// truth's own draws. The output holds what the call made from the truth's final latent and,
/// as its trace, each step's own latent; an error when the call consumed other draws or made
/// other steps than the truth.
pub fn run_forced<P: Pipeline>(pipe: &mut P, args: &P::Call, forcing: Forcing) -> Result<Output> {
    let steps = forcing.steps();
    let mut gens = Generators::Given(forcing.draws());
    *pipe.trace_mut() = Some(Vec::new());
    *pipe.forcing_mut() = Some(forcing);
    let out = pipe.call(args, &mut gens);
    let trace = pipe.trace_mut().take().unwrap_or_default();
    *pipe.forcing_mut() = None;
    let out = out?;
    let left = match &gens {
        Generators::Given(left) => left.len(),
        _ => 0,
    };
    if left > 0 || trace.len() != steps {
        return Err(Error::Internal(format!(
            "the local pass made {} steps of the truth's {steps} and left {left} of its draws",
            trace.len()
        )));
    }
    Ok(Output {
        tensor: out,
        trace: Some(trace),
        initial: None,
        unseeded_seed: None,
    })
}

/// What `reprodiff bench` measures.
#[derive(Debug, Clone)]
pub struct Bench {
    pub threads: i32,
    /// Seconds of each timed call (a warm-up call comes first and is not counted).
    pub seconds: Vec<f64>,
    /// VmHWM of this process, in kB.
    pub peak_rss_kb: Option<u64>,
    /// SHA-256 of the last image, to check both sides computed the same thing.
    pub sha256: String,
}

/// A benchmark's settings: torch's defaults on `threads` intra-op threads, and the kernels (the
/// knob `portable` in force for portable ones, as a portable scenario runs).
pub fn bench_settings(threads: Option<usize>, kernels: crate::portable::Kernels) -> Result<()> {
    crate::torch::Determinism {
        threads,
        ..crate::torch::Determinism::torch_defaults()
    }
    .apply()?;
    crate::torch::knobs::Knobs::default()
        .for_kernels(kernels)
        .apply()
}

/// Set to a path, `bench` makes one more call after the timed ones under libtorch's profiler
/// and writes its ops there ([`crate::torch::Profile`]); the timed calls are not profiled.
pub const PROFILE_ENV: &str = "REPRODIFF_PROFILE";

/// A warm-up call, then `runs` timed calls, each with a CPU generator seeded 0 (and, with
/// [`PROFILE_ENV`] set, one profiled call).
pub fn bench<P: Pipeline>(pipe: &mut P, args: &P::Call, runs: usize) -> Result<Bench> {
    let spec = GeneratorSpec::Single {
        seed: 0,
        device: crate::torch::DeviceSpec::Cpu,
    };
    let mut seconds = Vec::new();
    let mut sha256 = String::new();
    for i in 0..=runs {
        let (mut gens, _) = spec.build()?;
        let start = std::time::Instant::now();
        let image = pipe.call(args, &mut gens)?;
        if i > 0 {
            seconds.push(start.elapsed().as_secs_f64());
        }
        sha256 = crate::torch::tensor_sha256(&image)?;
    }
    if let Some(path) = std::env::var_os(PROFILE_ENV) {
        let (mut gens, _) = spec.build()?;
        let _profile = crate::torch::Profile::start(std::path::Path::new(&path))?;
        let _image = pipe.call(args, &mut gens)?;
    }
    Ok(Bench {
        threads: tch::get_num_threads(),
        seconds,
        peak_rss_kb: peak_rss_kb(),
        sha256,
    })
}

/// VmHWM of this process in kB (Linux), for the benchmarks.
pub fn peak_rss_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
            })
        })
        .and_then(|v| v.parse().ok())
}
