//! PyTorch's determinism switches as one value.
//!
//! [`Preset::Full`] is diffusers' `enable_full_determinism()` (utils/torch_utils.py):
//! CUDA_LAUNCH_BLOCKING=1, CUBLAS_WORKSPACE_CONFIG=":16:8", use_deterministic_algorithms(True),
//! cudnn.deterministic=True, cudnn.benchmark=False, cuda.matmul.allow_tf32=False. It leaves
//! cuDNN TF32, thread counts and the CPU capability alone, and so does the preset.
use super::ffi;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The ISA level ATen's CPU kernels dispatch to. Read once when libtorch starts, from
/// ATEN_CPU_CAPABILITY, so running under another one needs a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CpuCapability {
    Default,
    Avx2,
    Avx512,
}

impl CpuCapability {
    pub const ENV: &'static str = "ATEN_CPU_CAPABILITY";

    pub fn name(self) -> &'static str {
        match self {
            CpuCapability::Default => "default",
            CpuCapability::Avx2 => "avx2",
            CpuCapability::Avx512 => "avx512",
        }
    }

    /// The /proc/cpuinfo flags ATen needs before it dispatches to this capability
    /// (aten/src/ATen/native/DispatchStub.cpp: AVX-512 needs VL, BW, DQ and FMA; AVX2 needs
    /// AVX2 and FMA).
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            CpuCapability::Default => &[],
            CpuCapability::Avx2 => &["avx2", "fma"],
            CpuCapability::Avx512 => &["avx512vl", "avx512bw", "avx512dq", "fma"],
        }
    }

    /// The flags of `needs` missing from `isa` (a fingerprint's ISA list); empty when an x86
    /// CPU with these flags can run the capability.
    pub fn missing<'a>(self, isa: &[String]) -> Vec<&'a str> {
        self.needs()
            .iter()
            .copied()
            .filter(|f| !isa.iter().any(|i| i == f))
            .collect()
    }

    /// The capability this process dispatches to, if it is one of the known ones.
    pub fn current() -> Result<Option<Self>> {
        Ok(super::cpu_capability()?.parse().ok())
    }
}

impl fmt::Display for CpuCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuCapability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "default" => Ok(CpuCapability::Default),
            "avx2" => Ok(CpuCapability::Avx2),
            "avx512" => Ok(CpuCapability::Avx512),
            _ => Err(Error::InvalidArgument(format!(
                "unknown CPU capability '{s}': expected default, avx2 or avx512"
            ))),
        }
    }
}

/// libtorch's intra-op thread count before anything set it: what a scenario that names no
/// thread count runs with.
static DEFAULT_THREADS: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Named starting points for a [`Determinism`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// PyTorch's own defaults: nothing forced.
    #[default]
    Default,
    /// diffusers' `enable_full_determinism()`.
    Full,
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Preset::Default),
            "full" => Ok(Preset::Full),
            _ => Err(Error::InvalidArgument(format!(
                "unknown determinism preset '{s}': expected default or full"
            ))),
        }
    }
}

/// Every switch that decides whether two runs on one machine give the same bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Determinism {
    /// `torch.use_deterministic_algorithms(b)`.
    pub deterministic_algorithms: bool,
    /// `torch.use_deterministic_algorithms(b, warn_only=...)`.
    pub warn_only: bool,
    /// `torch.backends.cudnn.deterministic`.
    pub cudnn_deterministic: bool,
    /// `torch.backends.cudnn.benchmark`.
    pub cudnn_benchmark: bool,
    /// `torch.backends.cuda.matmul.allow_tf32`.
    pub allow_tf32_cublas: bool,
    /// `torch.backends.cudnn.allow_tf32`.
    pub allow_tf32_cudnn: bool,
    /// CUBLAS_WORKSPACE_CONFIG; only effective if set before cuBLAS initialises.
    pub cublas_workspace_config: Option<String>,
    /// CUDA_LAUNCH_BLOCKING=1.
    pub cuda_launch_blocking: bool,
    /// `torch.set_num_threads(n)` (intra-op threads); `None` leaves libtorch's choice.
    pub threads: Option<usize>,
    /// ATEN_CPU_CAPABILITY; `None` leaves the best the CPU supports.
    pub cpu_capability: Option<CpuCapability>,
}

impl Determinism {
    /// PyTorch's defaults (observed on torch 2.13: TF32 off for cuBLAS, on for cuDNN).
    pub fn torch_defaults() -> Self {
        Determinism {
            deterministic_algorithms: false,
            warn_only: false,
            cudnn_deterministic: false,
            cudnn_benchmark: false,
            allow_tf32_cublas: false,
            allow_tf32_cudnn: true,
            cublas_workspace_config: None,
            cuda_launch_blocking: false,
            threads: None,
            cpu_capability: None,
        }
    }

    /// diffusers' `enable_full_determinism()`.
    pub fn full() -> Self {
        Determinism {
            deterministic_algorithms: true,
            cudnn_deterministic: true,
            cudnn_benchmark: false,
            allow_tf32_cublas: false,
            cublas_workspace_config: Some(":16:8".into()),
            cuda_launch_blocking: true,
            ..Self::torch_defaults()
        }
    }

    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::Default => Self::torch_defaults(),
            Preset::Full => Self::full(),
        }
    }

    /// Puts these settings in force for this process. Environment variables are set first, so
    /// call this before anything touches CUDA. A CPU capability other than the one dispatched
    /// is an error here: [`Determinism::child_env`] gives what a child process needs.
    pub fn apply(&self) -> Result<()> {
        if let Some(want) = self.cpu_capability {
            let now = super::cpu_capability()?;
            if now != want.name() {
                return Err(Error::Unavailable(format!(
                    "CPU capability '{want}' requested but this process dispatches to '{now}': \
                     it is fixed when libtorch starts, run in a child process with {}={want}",
                    CpuCapability::ENV
                )));
            }
        }
        // Every switch is set, to the preset's value when the spec leaves it open, so that a
        // scenario never inherits the one before it (`check` runs many in one process, nextest
        // one per process: both must give the same bits).
        let env = self.child_env();
        for key in ["CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING"] {
            match env.iter().find(|(k, _)| *k == key) {
                Some((_, value)) => std::env::set_var(key, value),
                None => std::env::remove_var(key),
            }
        }
        let default_threads = *DEFAULT_THREADS.get_or_init(tch::get_num_threads);
        let threads = match self.threads {
            Some(0) => return Err(Error::InvalidArgument("threads must be >= 1".into())),
            Some(n) => n as i32,
            None => default_threads,
        };
        tch::set_num_threads(threads);
        ffi::check(unsafe {
            ffi::rd_set_determinism(
                self.deterministic_algorithms as i32,
                self.warn_only as i32,
                self.cudnn_deterministic as i32,
                self.cudnn_benchmark as i32,
                self.allow_tf32_cublas as i32,
                self.allow_tf32_cudnn as i32,
            )
        })
        .map_err(Error::Torch)
    }

    /// The environment variables these settings need in a process that has not started yet.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(c) = &self.cublas_workspace_config {
            env.push(("CUBLAS_WORKSPACE_CONFIG", c.clone()));
        }
        if self.cuda_launch_blocking {
            env.push(("CUDA_LAUNCH_BLOCKING", "1".to_string()));
        }
        if let Some(c) = self.cpu_capability {
            env.push((CpuCapability::ENV, c.name().to_string()));
        }
        env
    }

    /// What is in force in this process now, read back from libtorch and the environment.
    pub fn in_force() -> Result<Self> {
        let (mut a, mut w, mut cd, mut cb, mut t1, mut t2) = (0, 0, 0, 0, 0, 0);
        ffi::check(unsafe {
            ffi::rd_get_determinism(&mut a, &mut w, &mut cd, &mut cb, &mut t1, &mut t2)
        })
        .map_err(Error::Torch)?;
        Ok(Determinism {
            deterministic_algorithms: a != 0,
            warn_only: w != 0,
            cudnn_deterministic: cd != 0,
            cudnn_benchmark: cb != 0,
            allow_tf32_cublas: t1 != 0,
            allow_tf32_cudnn: t2 != 0,
            cublas_workspace_config: std::env::var("CUBLAS_WORKSPACE_CONFIG").ok(),
            cuda_launch_blocking: std::env::var("CUDA_LAUNCH_BLOCKING").is_ok_and(|v| v == "1"),
            threads: Some(tch::get_num_threads().max(1) as usize),
            cpu_capability: CpuCapability::current()?,
        })
    }
}

/// How a suite or a flag asks for determinism: a preset name, or a preset plus overrides:
/// `determinism = "full"` or `determinism = { preset = "full", threads = 1 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, try_from = "DeterminismInput")]
pub struct DeterminismSpec {
    #[serde(default)]
    pub preset: Preset,
    pub deterministic_algorithms: Option<bool>,
    pub warn_only: Option<bool>,
    pub cudnn_deterministic: Option<bool>,
    pub cudnn_benchmark: Option<bool>,
    pub allow_tf32_cublas: Option<bool>,
    pub allow_tf32_cudnn: Option<bool>,
    pub cublas_workspace_config: Option<String>,
    pub cuda_launch_blocking: Option<bool>,
    pub threads: Option<usize>,
    pub cpu_capability: Option<CpuCapability>,
}

impl DeterminismSpec {
    pub fn resolve(&self) -> Determinism {
        let base = Determinism::preset(self.preset);
        Determinism {
            deterministic_algorithms: self
                .deterministic_algorithms
                .unwrap_or(base.deterministic_algorithms),
            warn_only: self.warn_only.unwrap_or(base.warn_only),
            cudnn_deterministic: self.cudnn_deterministic.unwrap_or(base.cudnn_deterministic),
            cudnn_benchmark: self.cudnn_benchmark.unwrap_or(base.cudnn_benchmark),
            allow_tf32_cublas: self.allow_tf32_cublas.unwrap_or(base.allow_tf32_cublas),
            allow_tf32_cudnn: self.allow_tf32_cudnn.unwrap_or(base.allow_tf32_cudnn),
            cublas_workspace_config: self
                .cublas_workspace_config
                .clone()
                .or(base.cublas_workspace_config),
            cuda_launch_blocking: self
                .cuda_launch_blocking
                .unwrap_or(base.cuda_launch_blocking),
            threads: self.threads.or(base.threads),
            cpu_capability: self.cpu_capability.or(base.cpu_capability),
        }
    }
}

/// The two spellings a suite may use; see [`DeterminismSpec`].
#[derive(Deserialize)]
#[serde(untagged)]
enum DeterminismInput {
    Name(String),
    Table(DeterminismTable),
}

/// [`DeterminismSpec`]'s fields, deserialised without the string shortcut.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeterminismTable {
    #[serde(default)]
    preset: Preset,
    deterministic_algorithms: Option<bool>,
    warn_only: Option<bool>,
    cudnn_deterministic: Option<bool>,
    cudnn_benchmark: Option<bool>,
    allow_tf32_cublas: Option<bool>,
    allow_tf32_cudnn: Option<bool>,
    cublas_workspace_config: Option<String>,
    cuda_launch_blocking: Option<bool>,
    threads: Option<usize>,
    cpu_capability: Option<CpuCapability>,
}

impl TryFrom<DeterminismInput> for DeterminismSpec {
    type Error = String;
    fn try_from(input: DeterminismInput) -> std::result::Result<Self, String> {
        match input {
            DeterminismInput::Name(name) => Ok(DeterminismSpec {
                preset: name.parse().map_err(|e: Error| e.to_string())?,
                ..Default::default()
            }),
            DeterminismInput::Table(t) => Ok(DeterminismSpec {
                preset: t.preset,
                deterministic_algorithms: t.deterministic_algorithms,
                warn_only: t.warn_only,
                cudnn_deterministic: t.cudnn_deterministic,
                cudnn_benchmark: t.cudnn_benchmark,
                allow_tf32_cublas: t.allow_tf32_cublas,
                allow_tf32_cudnn: t.allow_tf32_cudnn,
                cublas_workspace_config: t.cublas_workspace_config,
                cuda_launch_blocking: t.cuda_launch_blocking,
                threads: t.threads,
                cpu_capability: t.cpu_capability,
            }),
        }
    }
}
