//! `torch.Generator` for Rust, and the ways diffusers pipelines take one.
//!
//! The seed document's point: a Generator is a *random state*, consumed in place. A pipeline run
//! draws its initial noise and every eta noise from the same generator(s), so each stream
//! continues across the run. [`GeneratorSpec`] names every seeding the document shows;
//! [`GeneratorSpec::build`] turns it into live [`Generators`]; [`randn_tensor`] is diffusers'
//! `utils.torch_utils.randn_tensor`, line for line.
use super::determinism::CpuCapability;
use super::ffi;
use super::types::{DType, DeviceSpec};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// A `torch.Generator`: a handle on an ATen generator (mt19937 on CPU, Philox on CUDA).
///
/// Not the process-global generator: drawing from one never touches another or the global one.
/// `Clone` makes an independent copy of the state (like `Generator().set_state(g.get_state())`);
/// [`Generator::share`] makes a second handle on the same state (Python's `[g] * n`).
pub struct Generator {
    raw: ffi::Gen,
}

// SAFETY: an at::Generator is a ref-counted handle whose state is guarded by its own mutex,
// which the ATen kernels and every function in ext.cpp take before touching it.
unsafe impl Send for Generator {}

fn torch_err(msg: String) -> Error {
    Error::Torch(msg)
}

impl Generator {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn cpu(seed: u64) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        ffi::check(unsafe { ffi::rd_gen_new_cpu(seed, &mut raw) }).map_err(torch_err)?;
        Ok(Generator { raw })
    }

    /// `torch.Generator(f"cuda:{index}").manual_seed(seed)`; an error on a host without CUDA.
    pub fn cuda(seed: u64, index: usize) -> Result<Self> {
        DeviceSpec::Cuda(index).ensure_available()?;
        let mut raw = std::ptr::null_mut();
        // CUDA is there (checked above): a generator that still cannot be made is a failure of
        // libtorch (e.g. torch_cuda not linked), never "not run".
        ffi::check(unsafe { ffi::rd_gen_new_cuda(index as i32, seed, &mut raw) })
            .map_err(torch_err)?;
        Ok(Generator { raw })
    }

    /// A generator on `device`, seeded.
    pub fn new(device: DeviceSpec, seed: u64) -> Result<Self> {
        match device {
            DeviceSpec::Cpu => Self::cpu(seed),
            DeviceSpec::Cuda(i) => Self::cuda(seed, i),
        }
    }

    /// `g.manual_seed(seed)`: resets the engine (and the cached normal) in place.
    pub fn manual_seed(&mut self, seed: u64) -> Result<&mut Self> {
        ffi::check(unsafe { ffi::rd_gen_manual_seed(self.raw, seed) }).map_err(torch_err)?;
        Ok(self)
    }

    /// `g.initial_seed()`: the seed last set.
    pub fn initial_seed(&self) -> u64 {
        let mut out = 0;
        // Reading the seed of a live generator cannot fail.
        let _ = ffi::check(unsafe { ffi::rd_gen_initial_seed(self.raw, &mut out) });
        out
    }

    pub fn device(&self) -> DeviceSpec {
        let (mut kind, mut index) = (0, 0);
        let _ = ffi::check(unsafe { ffi::rd_gen_device(self.raw, &mut kind, &mut index) });
        match kind {
            1 => DeviceSpec::Cuda(index.max(0) as usize),
            _ => DeviceSpec::Cpu,
        }
    }

    /// `g.get_state()`: a uint8 tensor (5056 bytes for a CPU generator).
    pub fn get_state(&self) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        ffi::check(unsafe { ffi::rd_gen_get_state(self.raw, &mut out) }).map_err(torch_err)?;
        // SAFETY: `out` is a fresh heap at::Tensor*, which tch takes ownership of.
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }

    /// `g.set_state(state)`; a state of the wrong size or kind is an error, not a crash.
    pub fn set_state(&mut self, state: &Tensor) -> Result<()> {
        ffi::check(unsafe { ffi::rd_gen_set_state(self.raw, state.as_ptr() as *mut _) })
            .map_err(|m| Error::InvalidArgument(format!("set_state: {m}")))
    }

    /// A second handle on this generator's state: drawing from either advances both.
    pub fn share(&self) -> Generator {
        let mut raw = std::ptr::null_mut();
        // Copying a ref-counted handle allocates a few bytes and cannot fail otherwise.
        ffi::check(unsafe { ffi::rd_gen_share(self.raw, &mut raw) })
            .expect("copying a generator handle");
        Generator { raw }
    }

    /// Whether two handles drive the same state (`[g] * n` vs a list of distinct generators).
    pub fn shares_state_with(&self, other: &Generator) -> bool {
        unsafe { ffi::rd_gen_same_state(self.raw, other.raw) != 0 }
    }

    /// `torch.randn(shape, generator=self, dtype=dtype, device=device)`; in a process on the
    /// portable kernels, [`Generator::portable_randn`] (float32 CPU draws only).
    pub fn randn(&mut self, shape: &[i64], dtype: DType, device: DeviceSpec) -> Result<Tensor> {
        if crate::portable::enabled() {
            if dtype != DType::F32 || device != DeviceSpec::Cpu {
                return Err(Error::Unavailable(format!(
                    "portable noise is float32 from a CPU generator, not {dtype} on {device}"
                )));
            }
            return self.portable_randn(shape);
        }
        self.sample(ffi::rd_randn, shape, dtype, device)
    }

    /// `torch.randn(shape, generator=g)` in float32 on the CPU, portably: the bits torch gives
    /// under `ATEN_CPU_CAPABILITY=default`, on any CPU. Sizes below 16 take another path in ATen
    /// (Box-Muller in double, one pair at a time) that is not ported: an error.
    pub fn portable_randn(&mut self, shape: &[i64]) -> Result<Tensor> {
        let n: i64 = shape.iter().product();
        if n < 16 {
            return Err(Error::InvalidArgument(format!(
                "portable randn draws 16 elements or more (ATen's normal_fill); {shape:?} has {n}"
            )));
        }
        let cpu = DeviceSpec::Cpu;
        let mut u: Vec<f32> = Vec::try_from(self.rand(&[n], DType::F32, cpu)?.view(-1))?;
        let redrawn: Option<Vec<f32>> = if n % 16 != 0 {
            Some(Vec::try_from(self.rand(&[16], DType::F32, cpu)?)?)
        } else {
            None
        };
        crate::portable::randn::normal_fill(&mut u, redrawn.as_deref());
        Ok(Tensor::from_slice(&u).reshape(shape))
    }

    /// `torch.rand(shape, generator=self, dtype=dtype, device=device)`.
    pub fn rand(&mut self, shape: &[i64], dtype: DType, device: DeviceSpec) -> Result<Tensor> {
        self.sample(ffi::rd_rand, shape, dtype, device)
    }

    /// `tensor.normal_(mean, std, generator=self)`, in place.
    pub fn normal_(&mut self, tensor: &mut Tensor, mean: f64, std: f64) -> Result<()> {
        ffi::check(unsafe { ffi::rd_normal_(tensor.as_mut_ptr() as *mut _, mean, std, self.raw) })
            .map_err(torch_err)
    }

    fn sample(
        &mut self,
        f: unsafe extern "C" fn(
            ffi::Gen,
            *const i64,
            usize,
            i32,
            i32,
            i32,
            *mut ffi::TensorPtr,
        ) -> *mut std::ffi::c_char,
        shape: &[i64],
        dtype: DType,
        device: DeviceSpec,
    ) -> Result<Tensor> {
        if let Some(bad) = shape.iter().find(|&&d| d < 0) {
            return Err(Error::InvalidArgument(format!(
                "shape {shape:?} has a negative dimension {bad}"
            )));
        }
        let (dev_type, dev_index) = device.codes();
        let mut out = std::ptr::null_mut();
        let err = unsafe {
            f(
                self.raw,
                shape.as_ptr(),
                shape.len(),
                dtype.scalar_type_code(),
                dev_type,
                dev_index,
                &mut out,
            )
        };
        ffi::check(err).map_err(torch_err)?;
        // SAFETY: a fresh heap at::Tensor*, owned by tch from here on.
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }
}

impl Clone for Generator {
    fn clone(&self) -> Self {
        let mut raw = std::ptr::null_mut();
        // CPU and CUDA generator impls both implement clone(); it only copies the state.
        ffi::check(unsafe { ffi::rd_gen_clone(self.raw, &mut raw) })
            .expect("cloning a CPU or CUDA generator");
        Generator { raw }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        unsafe { ffi::rd_gen_free(self.raw) }
    }
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("device", &self.device())
            .field("initial_seed", &self.initial_seed())
            .finish()
    }
}

/// Every way the seed document hands randomness to a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GeneratorSpec {
    /// `generator=None` in a fresh Python process: the global generator, seeded from the OS
    /// (`torch.seed()`). Not reproducible by design; the seed drawn is recorded.
    Unseeded,
    /// `torch.manual_seed(seed)`: the process-global default generators. Random draws use
    /// `generator=None` (the target device's default generator); pipelines pass the object
    /// `torch.manual_seed` returns, the CPU default generator (see [`Generators::CpuDefault`]).
    Global { seed: u64 },
    /// `torch.Generator(device).manual_seed(seed)`: one generator for the whole batch.
    Single {
        seed: u64,
        #[serde(default)]
        device: DeviceSpec,
    },
    /// `[torch.Generator(device).manual_seed(s) for s in seeds]`: one generator per sample.
    PerSample {
        seeds: Vec<u64>,
        #[serde(default)]
        device: DeviceSpec,
    },
    /// `[torch.Generator(device).manual_seed(seed)] * count`: ONE generator listed `count` times
    /// (the seed document's warning): samples are drawn from it one after another.
    Repeated {
        seed: u64,
        count: usize,
        #[serde(default)]
        device: DeviceSpec,
    },
}

/// Live generators for one pipeline run, made by [`GeneratorSpec::build`].
#[derive(Debug)]
pub enum Generators {
    /// `generator=None`: draw from the process-global default generator of the target device.
    Global,
    /// The object `torch.manual_seed(s)` returns, passed as `generator=`: the CPU default
    /// generator, so a CUDA pipeline draws on the CPU and moves the noise (the seed
    /// document's third example). Identical to `Global` on the CPU.
    CpuDefault,
    One(Generator),
    List(Vec<Generator>),
    /// No generator: every draw is the next of these values (float64), in order, rounded to
    /// the dtype asked for. The local pass replays the truth's own draws this way (the
    /// initial latent, then each step's eta noise), never drawing: CPU randn differs by ATen
    /// capability. A draw of another shape, or one past the last, is an error.
    Given(std::collections::VecDeque<Tensor>),
}

/// `--generator`: which generator the seeds go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratorKind {
    /// torch.Generator("cpu").
    Cpu,
    /// torch.Generator("cuda").
    Cuda,
    /// torch.manual_seed (the global generator).
    Global,
}

impl GeneratorSpec {
    /// The `generator=` argument as the command line spells it: `--seed S` (one generator for
    /// the batch), `--seeds S1,S2,...` (one per sample), `--generator cpu|cuda|global`,
    /// `--repeat-generator` (`[g] * batch`); no seed at all draws unseeded. A CUDA generator
    /// lives on the pipeline's CUDA device (cuda:0 when the pipeline runs on the CPU).
    pub fn from_flags(
        seed: Option<u64>,
        seeds: Option<&[u64]>,
        kind: GeneratorKind,
        repeat: bool,
        batch: usize,
        device: DeviceSpec,
    ) -> Result<Self> {
        use GeneratorKind::Global;
        let gen_device = match (kind, device) {
            (GeneratorKind::Cuda, DeviceSpec::Cuda(i)) => DeviceSpec::Cuda(i),
            (GeneratorKind::Cuda, DeviceSpec::Cpu) => DeviceSpec::Cuda(0),
            _ => DeviceSpec::Cpu,
        };
        let usage = |m: &str| Err(Error::InvalidArgument(m.into()));
        match (seeds, seed, kind, repeat) {
            (Some(_), _, Global, _) => usage("--seeds cannot be used with --generator global"),
            (Some(seeds), _, _, _) if seeds.len() != batch => usage(&format!(
                "--seeds has {} seeds but --batch is {batch}: one generator per sample",
                seeds.len()
            )),
            (Some(seeds), _, _, _) => Ok(GeneratorSpec::PerSample {
                seeds: seeds.to_vec(),
                device: gen_device,
            }),
            (None, _, Global, true) => usage("--repeat-generator needs --generator cpu or cuda"),
            (None, seed, Global, false) => Ok(GeneratorSpec::Global {
                seed: seed.unwrap_or(0),
            }),
            (None, Some(seed), _, true) => Ok(GeneratorSpec::Repeated {
                seed,
                count: batch,
                device: gen_device,
            }),
            (None, Some(seed), _, false) => Ok(GeneratorSpec::Single {
                seed,
                device: gen_device,
            }),
            (None, None, _, _) => Ok(GeneratorSpec::Unseeded),
        }
    }

    /// The batch size this spec implies, if any (a list must match the batch).
    pub fn list_len(&self) -> Option<usize> {
        match self {
            GeneratorSpec::PerSample { seeds, .. } => Some(seeds.len()),
            GeneratorSpec::Repeated { count, .. } => Some(*count),
            _ => None,
        }
    }

    /// The device generators live on (`None` for the global generator).
    pub fn device(&self) -> Option<DeviceSpec> {
        match self {
            GeneratorSpec::Unseeded | GeneratorSpec::Global { .. } => None,
            GeneratorSpec::Single { device, .. }
            | GeneratorSpec::PerSample { device, .. }
            | GeneratorSpec::Repeated { device, .. } => Some(*device),
        }
    }

    /// Creates the generators. `Global` and `Unseeded` seed the process-global generators
    /// (CPU and every CUDA device, as `torch.manual_seed` does); nothing else touches them.
    /// Returns the generators and the seed actually used for `Unseeded`.
    pub fn build(&self) -> Result<(Generators, Option<u64>)> {
        Ok(match self {
            GeneratorSpec::Unseeded => {
                let seed = os_seed();
                tch::manual_seed(seed as i64);
                (Generators::Global, Some(seed))
            }
            GeneratorSpec::Global { seed } => {
                tch::manual_seed(*seed as i64);
                (Generators::Global, None)
            }
            GeneratorSpec::Single { seed, device } => {
                (Generators::One(Generator::new(*device, *seed)?), None)
            }
            GeneratorSpec::PerSample { seeds, device } => {
                if seeds.is_empty() {
                    return Err(Error::InvalidArgument(
                        "a per-sample generator list needs at least one seed".into(),
                    ));
                }
                let gens = seeds
                    .iter()
                    .map(|&s| Generator::new(*device, s))
                    .collect::<Result<Vec<_>>>()?;
                (Generators::List(gens), None)
            }
            GeneratorSpec::Repeated {
                seed,
                count,
                device,
            } => {
                if *count == 0 {
                    return Err(Error::InvalidArgument(
                        "a repeated generator list needs count >= 1".into(),
                    ));
                }
                let g = Generator::new(*device, *seed)?;
                let gens = (0..*count).map(|_| g.share()).collect();
                (Generators::List(gens), None)
            }
        })
    }
}

/// A seed from the OS, as `torch.seed()` takes one (Python seeds its default generator so at
/// import; libtorch's C++ default is a fixed 67280421310721, which would hide non-determinism).
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() >> 1 // torch seeds are taken as int64 by tch
}

/// diffusers' `randn_tensor(shape, generator, device, dtype)`:
/// - no generator (global): `torch.randn` on the target device with the global RNG;
/// - a CPU generator and a CUDA target: draw on the CPU, then move (diffusers logs this);
/// - a CUDA generator and a CPU target: an error, as in diffusers;
/// - a list: one draw of shape `(1, *shape[1:])` per sample from its own generator, then
///   `cat(dim=0)`. Only the first generator's device decides where the list draws.
pub fn randn_tensor(
    shape: &[i64],
    generators: &mut Generators,
    device: DeviceSpec,
    dtype: DType,
) -> Result<Tensor> {
    match generators {
        Generators::Global | Generators::CpuDefault if crate::portable::enabled() => {
            Err(Error::Unavailable(
                "portable noise needs a torch.Generator object, not torch's global generator"
                    .into(),
            ))
        }
        Generators::Global => {
            device.ensure_available()?;
            Ok(Tensor::f_randn(shape, (dtype.kind(), device.device()))?)
        }
        Generators::CpuDefault => {
            device.ensure_available()?;
            Ok(Tensor::f_randn(shape, (dtype.kind(), tch::Device::Cpu))?
                .f_to_device(device.device())?)
        }
        Generators::One(g) => draw_one(g, shape, device, dtype),
        Generators::Given(values) => {
            let next = values.pop_front().ok_or_else(|| {
                Error::Internal(format!("a draw of {shape:?} past the last given value"))
            })?;
            if next.size() != shape {
                return Err(Error::Internal(format!(
                    "a draw of {shape:?} where the given value is {:?}",
                    next.size()
                )));
            }
            Ok(next.f_to_kind(dtype.kind())?.f_to_device(device.device())?)
        }
        Generators::List(gens) if gens.len() == 1 => draw_one(&mut gens[0], shape, device, dtype),
        Generators::List(gens) => {
            let batch = shape.first().copied().unwrap_or(0);
            if batch != gens.len() as i64 {
                return Err(Error::InvalidArgument(format!(
                    "You have passed a list of generators of length {}, but requested an \
                     effective batch size of {batch}. Make sure the batch size matches the \
                     length of the generators.",
                    gens.len()
                )));
            }
            let rand_device = rand_device(gens[0].device(), device)?;
            let mut one = shape.to_vec();
            one[0] = 1;
            let parts = gens
                .iter_mut()
                .map(|g| g.randn(&one, dtype, rand_device))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::f_cat(&parts, 0)?.f_to_device(device.device())?)
        }
    }
}

fn draw_one(g: &mut Generator, shape: &[i64], device: DeviceSpec, dtype: DType) -> Result<Tensor> {
    let rand_device = rand_device(g.device(), device)?;
    Ok(g.randn(shape, dtype, rand_device)?
        .f_to_device(device.device())?)
}

/// diffusers compares device *types* only: a CPU generator draws on the CPU for any target.
fn rand_device(generator: DeviceSpec, target: DeviceSpec) -> Result<DeviceSpec> {
    match (generator, target) {
        (DeviceSpec::Cpu, DeviceSpec::Cuda(_)) => Ok(DeviceSpec::Cpu),
        (DeviceSpec::Cuda(_), DeviceSpec::Cpu) => Err(Error::InvalidArgument(format!(
            "Cannot generate a {target} tensor from a generator of type cuda."
        ))),
        _ => {
            target.ensure_available()?;
            Ok(target)
        }
    }
}

/// The noise contract: portable noise is torch's CPU `randn` under this ATen capability, bit for
/// bit ([`Generator::portable_randn`]). The oracle computes a portable scenario under it (`reprodiff list --json`'s
/// `oracle_determinism`), so its float64 truth starts from exactly the portable run's noise.
pub const PORTABLE_NOISE_CAPABILITY: CpuCapability = CpuCapability::Default;

/// Set, every pipeline moves each element of its initial noise one ulp towards +inf, as the
/// oracle does to measure a scenario's noise sensitivity: `localize` uses it to measure how far
/// one ulp of noise moves each step (the noise response a drift is held against).
pub const NUDGE_ENV: &str = "REPRODIFF_NUDGE_INITIAL_NOISE";

/// The initial noise as drawn, or nudged one ulp up when [`NUDGE_ENV`] is set.
pub fn initial_noise(t: Tensor) -> Result<Tensor> {
    if std::env::var_os(NUDGE_ENV).is_none() {
        return Ok(t);
    }
    let up = Tensor::f_full([], f64::INFINITY, (t.kind(), t.device()))?;
    Ok(t.f_nextafter(&up)?)
}
