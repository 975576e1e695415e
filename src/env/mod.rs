//! The environment fingerprint: what produced a number. Every record and golden carries one.
//!
//! Schema 2 (docs/concepts.md, "Environment fingerprint"); the Python oracle starts from
//! `reprodiff env --json` and fills in its own producer, versions and threads. Schema 1 (no
//! `cpu.vendor`, no `cpu.kernel_env`) still reads.
//!
//! [`class`] turns a fingerprint into the environment class that goldens are keyed by.
pub mod class;

pub use class::{EnvClass, BITS_DEPEND_ON};

use crate::error::{Error, Result};
use crate::torch::{self, Determinism};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const SCHEMA: u32 = 2;

/// ISA flags that decide which ATen kernels can run, in a fixed order.
const X86_ISA: &[&str] = &[
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
];

/// Environment variables that choose CPU kernels, read once when libtorch (ATen, oneDNN, MKL)
/// starts. Measured on an AVX2 AMD EPYC with diffusers: ATEN_CPU_CAPABILITY and
/// ONEDNN_MAX_CPU_ISA change a DDIM image's bits, MKL_CBWR too (MKL's sgemm is on the path).
pub const KERNEL_ENV: &[&str] = &[
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
];
/// The values each kernel variable may take, as the library that reads it accepts them
/// (case-insensitive; MKL_CBWR may add `,STRICT`). They are copied into the environment class,
/// so anything else is refused before a run starts ([`check_kernel_env`]). `None`: a name made
/// of letters, digits and `_` (oneDNN's ISA names grow with each release).
const KERNEL_ENV_VALUES: &[(&str, Option<&[&str]>)] = &[
    (
        "ATEN_CPU_CAPABILITY",
        Some(&["default", "avx2", "avx512", "sve256", "zvector", "vsx"]),
    ),
    ("ONEDNN_MAX_CPU_ISA", None),
    ("DNNL_MAX_CPU_ISA", None),
    (
        "MKL_CBWR",
        Some(&[
            "auto",
            "compatible",
            "sse2",
            "sse3",
            "ssse3",
            "sse4_1",
            "sse4_2",
            "avx",
            "avx2",
            "avx512",
            "avx512_e1",
            "avx512_mic",
            "avx512_mic_e1",
            "avx512_e2",
            "avx512_e3",
            "avx512_e4",
            "avx2_e1",
        ]),
    ),
    (
        "MKL_ENABLE_INSTRUCTIONS",
        Some(&[
            "sse4_2",
            "avx",
            "avx2",
            "avx2_e1",
            "avx512",
            "avx512_e1",
            "avx512_e2",
            "avx512_e3",
            "avx512_e4",
            "avx512_e5",
            "avx10",
        ]),
    ),
    ("MKL_DEBUG_CPU_TYPE", None),
];

/// Refuses (exit 2, naming the variable) a kernel variable whose value the library reading it
/// would not take, or that would not fit in the environment class (a newline, a `/`).
pub fn check_kernel_env() -> Result<()> {
    for (name, allowed) in KERNEL_ENV_VALUES {
        let Ok(value) = std::env::var(name) else {
            if std::env::var_os(name).is_some() {
                return Err(Error::InvalidArgument(format!("{name}: not UTF-8")));
            }
            continue;
        };
        let v = value.to_ascii_lowercase();
        let v = if *name == "MKL_CBWR" {
            v.strip_suffix(",strict").unwrap_or(&v).to_string()
        } else {
            v
        };
        let ok = match allowed {
            Some(list) => list.contains(&v.as_str()),
            None => !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        };
        if !ok {
            let takes = allowed.map_or("letters, digits and _".into(), |l| l.join(", "));
            let expected = format!("not a value it takes ({takes})");
            return Err(Error::env(name, value.escape_debug(), expected));
        }
    }
    Ok(())
}

const ARM_ISA: &[&str] = &["asimd", "sve", "sve2", "bf16", "i8mm"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fingerprint {
    pub schema: u32,
    /// "reprodiff" or "oracle".
    pub producer: String,
    pub versions: Versions,
    pub os: Os,
    pub cpu: Cpu,
    pub cuda: Cuda,
    pub determinism: Determinism,
    /// The knobs in force ([`crate::torch::knobs`]): channels-last, onednn-off, bf16, ...; and
    /// `nudged-initial-noise` when the pipelines nudge their initial noise (`localize`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knobs: Vec<String>,
    /// Set when the run was on the portable kernels: their order rule (the class key), ISA and
    /// thread count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portable: Option<crate::portable::PortableRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Versions {
    pub reprodiff: Option<String>,
    pub tch: Option<String>,
    /// libtorch's version, without a build suffix ("2.13.0").
    pub libtorch: String,
    /// The Python torch build the oracle ran ("2.13.0+cu130"); reprodiff: the wheel it links.
    pub torch_build: Option<String>,
    pub python: Option<String>,
    pub diffusers: Option<String>,
    /// transformers' version, where a recorded run (reprodiff-record) had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformers: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Os {
    pub name: String,
    pub arch: String,
    /// The C library and its version, e.g. "glibc 2.36". ATen's scalar code paths call its
    /// math: torch's `default`-capability randn is glibc's logf, cosf and sinf bit for bit (0 of
    /// 3,072 draws differ with glibc's, 35 with correctly rounded ones). Recorded, not in the
    /// class key: every host recorded so far ran glibc 2.36, so no record shows it matters yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<String>,
}

/// The C library this process runs on ("glibc 2.36"); `None` where it cannot be asked.
fn libc_version() -> Option<String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: gnu_get_libc_version returns a pointer to a static NUL-terminated string.
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        Some(format!("glibc {}", version.to_string_lossy()))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cpu {
    pub model: String,
    /// "intel", "amd", ... from the CPU's vendor id; `None` in schema-1 fingerprints.
    #[serde(default)]
    pub vendor: Option<String>,
    pub isa: Vec<String>,
    /// The capability ATen dispatches to in the process that ran ("avx512", "avx2", "default").
    pub capability: String,
    pub threads: usize,
    /// The [`KERNEL_ENV`] variables set in the process that ran, with their values.
    #[serde(default)]
    pub kernel_env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cuda {
    pub available: bool,
    pub runtime: Option<String>,
    pub cudnn: Option<i64>,
    pub devices: Vec<String>,
    /// Each device's compute capability ("9.0"), where a recorded run had it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compute_capability: Vec<String>,
}

impl Fingerprint {
    /// The fingerprint of this process, now.
    pub fn current() -> Result<Self> {
        let info = torch::cuda_info()?;
        let (model, vendor, isa) = cpu_model_and_isa();
        Ok(Fingerprint {
            schema: SCHEMA,
            producer: "reprodiff".into(),
            versions: Versions {
                reprodiff: Some(env!("CARGO_PKG_VERSION").into()),
                tch: Some(TCH_VERSION.into()),
                libtorch: torch::torch_version()?,
                torch_build: option_env!("REPRODIFF_TORCH_BUILD").map(String::from),
                python: None,
                diffusers: None,
                transformers: None,
            },
            os: Os {
                name: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                libc: libc_version(),
            },
            cpu: Cpu {
                model,
                vendor,
                isa,
                capability: torch::cpu_capability()?,
                threads: tch::get_num_threads().max(1) as usize,
                kernel_env: KERNEL_ENV
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                    .collect(),
            },
            cuda: Cuda {
                available: info.available,
                runtime: info.available.then(|| cuda_version(info.runtime_version)),
                cudnn: (info.cudnn_version > 0).then_some(info.cudnn_version),
                devices: if info.available {
                    gpu_names(info.devices)
                } else {
                    Vec::new()
                },
                compute_capability: Vec::new(),
            },
            determinism: Determinism::in_force()?,
            knobs: {
                let mut k = torch::knobs::in_force().tokens();
                // localize's noise-response run: never silent in a record.
                if std::env::var_os(crate::torch::NUDGE_ENV).is_some() {
                    k.push("nudged-initial-noise".into());
                }
                k
            },
            portable: crate::portable::PortableRun::current(),
        })
    }

    /// The environment class of a run in this environment on `device`.
    pub fn class(&self, device: crate::torch::DeviceSpec) -> EnvClass {
        EnvClass::of(self, device)
    }

    /// A short stable id ("env-" + 12 hex of the SHA-256 of the canonical JSON), used to
    /// de-duplicate fingerprints inside golden files.
    pub fn id(&self) -> String {
        let value = serde_json::to_value(self).expect("a fingerprint serialises");
        let canonical = serde_json::to_string(&value).expect("a JSON value serialises");
        let digest = Sha256::digest(canonical.as_bytes());
        format!("env-{}", &format!("{digest:x}")[..12])
    }
}

/// The tch version this build links (kept in step with Cargo.toml's `tch = "=..."`).
pub const TCH_VERSION: &str = "0.26.0";

fn cuda_version(v: i64) -> String {
    // CUDART encodes 13.0 as 13000.
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn cpu_model_and_isa() -> (String, Option<String>, Vec<String>) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name")
        .or_else(|| field("Model"))
        .unwrap_or_else(|| "unknown".into());
    let vendor = field("vendor_id").map(|v| class::vendor_name(&v));
    let flags: Vec<String> = field("flags")
        .or_else(|| field("Features"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let known = if std::env::consts::ARCH == "aarch64" {
        ARM_ISA
    } else {
        X86_ISA
    };
    let isa = known
        .iter()
        .filter(|k| flags.iter().any(|f| f == *k))
        .map(|k| k.to_string())
        .collect();
    (model, vendor, isa)
}

/// GPU names from nvidia-smi when it is there (libtorch's C API has no device-name query
/// without the CUDA headers); "cuda:N" otherwise.
fn gpu_names(n: usize) -> Vec<String> {
    let names = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    (0..n)
        .map(|i| names.get(i).cloned().unwrap_or_else(|| format!("cuda:{i}")))
        .collect()
}
