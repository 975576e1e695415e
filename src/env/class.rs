//! The environment class: the part of a fingerprint that decides a run's bits.
//!
//! Goldens hold one expectation per class. Two runs of one scenario in the same class are
//! expected to be bit-identical; across classes they are compared with the scenario's
//! cross-class tolerance (see `harness::compare::choose`). What is in the key, and why (each
//! component was measured to move the bits of a DDIM image with diffusers and with reprodiff):
//!
//! | component | what | evidence |
//! |---|---|---|
//! | device | `cpu`, or `cuda:<gpu>` | CUDA kernels and generators differ from the CPU's |
//! | arch, vendor | `x86_64`, `amd` / `intel` | an Intel Xeon with ATen, oneDNN and MKL held to AVX2 gives other image bits than an AVX2 AMD EPYC (tiny-ddim-a, 5 steps) |
//! | aten | ATen's dispatched capability | `ATEN_CPU_CAPABILITY=default` changes image and randn bits |
//! | onednn | oneDNN's effective ISA: the CPU's best, capped by `ONEDNN_MAX_CPU_ISA` | `ONEDNN_MAX_CPU_ISA=SSE41` changes image bits (convolutions), not randn |
//! | mkl | MKL's code path: `auto`, or what `MKL_CBWR` / `MKL_ENABLE_INSTRUCTIONS` force | `MKL_CBWR=COMPATIBLE` changes image bits |
//! | threads | intra-op threads | 1 thread gives other convolution bits than 2 |
//! | libtorch | the version | f16/bf16 CPU randn changed between torch 2.11 and 2.13 |
//!
//! The key is a path of these components, e.g.
//! `cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0`; `any` is the
//! class of a published value, which no run was recorded for.
//!
//! A run on the portable kernels (`crate::portable`) has the class `portable/order-rule=N`:
//! no CPU fact at all, since its bits depend on none (the tests force every ISA, ATen
//! capability, oneDNN ISA and thread count). It holds the order rule's version, which is what
//! its bits do depend on. Not the dtype: a portable scenario's dtype is the scenario's own
//! (float32; the golden entry states it). Not libtorch's version: the portable path calls
//! libtorch only for operations that are exact (+, -, *, /, sqrt, copies), so a libtorch that
//! moved portable bits would be a finding, and the test of a blessed portable expectation fails
//! on it; the version stays in the fingerprint.
use super::Fingerprint;
use crate::torch::DeviceSpec;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// oneDNN's x86 ISA levels, lowest first (oneDNN's `cpu_isa_t` order as ONEDNN_MAX_CPU_ISA
/// names them), each with the /proc/cpuinfo flags it needs beyond the level below.
const ONEDNN_ISA: &[(&str, &[&str])] = &[
    ("sse41", &["sse4_1"]),
    ("avx", &["avx"]),
    ("avx2", &["avx2", "fma"]),
    ("avx2_vnni", &["avx_vnni"]),
    ("avx512_core", &["avx512f", "avx512bw", "avx512vl"]),
    ("avx512_core_vnni", &["avx512_vnni"]),
    ("avx512_core_bf16", &["avx512_bf16"]),
    ("avx512_core_fp16", &["avx512_fp16"]),
    ("avx512_core_amx", &["amx_tile", "amx_bf16", "amx_int8"]),
    ("avx512_core_amx_fp16", &["amx_fp16"]),
];

/// ONEDNN_MAX_CPU_ISA's other spellings for the levels above.
const ONEDNN_ALIASES: &[(&str, &str)] = &[
    ("avx10_1_512", "avx512_core_fp16"),
    ("avx10_1_512_amx", "avx512_core_amx"),
    ("avx10_1_512_amx_fp16", "avx512_core_amx_fp16"),
];

/// The components CPU random draws depend on. Measured: one seed gives the same draws on an
/// AMD EPYC with AVX-512, an AMD EPYC with AVX2 and an Intel Xeon at the same ATen capability,
/// whatever oneDNN, MKL or the thread count do; another capability (`default`'s scalar
/// Box-Muller against the vectorised one) changes them. A `bits` cross-class rule compares only
/// with an expectation whose class shares all of these.
pub const BITS_DEPEND_ON: &[&str] = &["device", "arch", "aten", "libtorch"];

/// ATen's capabilities, lowest first.
const ATEN: &[&str] = &["default", "avx2", "avx512"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EnvClass {
    /// A published number: it applies to every class and carries no bits.
    Any,
    Host(HostClass),
    /// The portable kernels under order rule `order_rule`, on any host.
    Portable {
        order_rule: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostClass {
    /// `"cpu"` or `"cuda:<gpu name>"`.
    pub device: String,
    pub arch: String,
    pub vendor: String,
    pub aten: String,
    pub onednn: String,
    pub mkl: String,
    pub threads: usize,
    pub libtorch: String,
}

impl EnvClass {
    /// The class of a run on `device` in the environment `fp`.
    pub fn of(fp: &Fingerprint, device: DeviceSpec) -> Self {
        if let Some(p) = &fp.portable {
            return EnvClass::Portable {
                order_rule: p.order_rule,
            };
        }
        let cpu = &fp.cpu;
        let env = |k: &str| cpu.kernel_env.get(k).map(|v| v.to_ascii_lowercase());
        let gpu = match device {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(i) => Some(
                fp.cuda
                    .devices
                    .get(i)
                    .map_or_else(|| format!("cuda{i}"), |n| slug(n)),
            ),
        };
        EnvClass::Host(HostClass {
            device: gpu.map_or("cpu".into(), |g| format!("cuda:{g}")),
            arch: fp.os.arch.clone(),
            vendor: cpu
                .vendor
                .clone()
                .unwrap_or_else(|| vendor_from_model(&cpu.model)),
            aten: cpu.capability.to_ascii_lowercase(),
            onednn: onednn_isa(
                &cpu.isa,
                env("ONEDNN_MAX_CPU_ISA").or(env("DNNL_MAX_CPU_ISA")),
            ),
            mkl: match (env("MKL_CBWR"), env("MKL_ENABLE_INSTRUCTIONS")) {
                (Some(c), _) if c != "auto" => format!("cbwr-{c}"),
                (_, Some(i)) => format!("instructions-{i}"),
                _ => "auto".into(),
            },
            threads: cpu.threads,
            libtorch: fp.versions.libtorch.clone(),
        })
    }

    /// How far `other` is from `self`, for choosing the nearest recorded class when a host has
    /// none of its own. A weighted count of differing components: the device, the libtorch
    /// version and the architecture weigh most, then threads, the vendor, then the ISA levels
    /// by how many levels apart they are, then MKL's path. Equal distances are broken by the
    /// keys' order, so the choice never depends on the order of a golden file.
    pub fn distance(&self, other: &EnvClass) -> u32 {
        let (EnvClass::Host(a), EnvClass::Host(b)) = (self, other) else {
            return if self == other { 0 } else { 10_000 };
        };
        let ne = |x: &str, y: &str| u32::from(x != y);
        let levels = |list: &[&str], x: &str, y: &str| match (
            list.iter().position(|l| *l == x),
            list.iter().position(|l| *l == y),
        ) {
            (Some(i), Some(j)) => i.abs_diff(j) as u32,
            _ => ne(x, y) * list.len() as u32,
        };
        let onednn: Vec<&str> = ONEDNN_ISA.iter().map(|(n, _)| *n).collect();
        1000 * ne(&a.device, &b.device)
            + 100 * (ne(&a.libtorch, &b.libtorch) + ne(&a.arch, &b.arch))
            + 20 * u32::from(a.threads != b.threads)
            + 10 * ne(&a.vendor, &b.vendor)
            + 4 * levels(ATEN, &a.aten, &b.aten)
            + 2 * levels(&onednn, &a.onednn, &b.onednn)
            + ne(&a.mkl, &b.mkl)
    }

    /// Whether `self` and `other` agree on every component named in `parts` (names as in the
    /// key: device, arch, vendor, aten, onednn, mkl, threads, libtorch). `any` shares nothing.
    pub fn shares(&self, other: &EnvClass, parts: &[&str]) -> bool {
        let (EnvClass::Host(a), EnvClass::Host(b)) = (self, other) else {
            return false;
        };
        parts.iter().all(|p| a.component(p) == b.component(p))
    }

    /// The nearest of `candidates` (see [`EnvClass::distance`]); `None` when there are none.
    pub fn nearest<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a EnvClass>,
    ) -> Option<&'a EnvClass> {
        candidates.into_iter().min_by(|x, y| {
            (self.distance(x), x.to_string()).cmp(&(self.distance(y), y.to_string()))
        })
    }
}

impl HostClass {
    /// One component by its name in the key; `None` for an unknown name.
    pub fn component(&self, name: &str) -> Option<String> {
        Some(match name {
            "device" => self.device.clone(),
            "arch" => self.arch.clone(),
            "vendor" => self.vendor.clone(),
            "aten" => self.aten.clone(),
            "onednn" => self.onednn.clone(),
            "mkl" => self.mkl.clone(),
            "threads" => self.threads.to_string(),
            "libtorch" => self.libtorch.clone(),
            _ => return None,
        })
    }
}

impl fmt::Display for EnvClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvClass::Any => f.write_str("any"),
            EnvClass::Portable { order_rule } => write!(f, "portable/order-rule={order_rule}"),
            EnvClass::Host(h) => write!(
                f,
                "{}/{}/{}/aten={}/onednn={}/mkl={}/threads={}/libtorch={}",
                h.device, h.arch, h.vendor, h.aten, h.onednn, h.mkl, h.threads, h.libtorch
            ),
        }
    }
}

impl FromStr for EnvClass {
    type Err = String;
    /// Parses a key written by [`fmt::Display`]; anything else is an error naming the part.
    fn from_str(key: &str) -> Result<Self, String> {
        if key == "any" {
            return Ok(EnvClass::Any);
        }
        if let Some(rest) = key.strip_prefix("portable/") {
            let order_rule = rest
                .strip_prefix("order-rule=")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    format!("class '{key}': a portable class is portable/order-rule=<number>")
                })?;
            return Ok(EnvClass::Portable { order_rule });
        }
        let parts: Vec<&str> = key.split('/').collect();
        let [device, arch, vendor, rest @ ..] = parts.as_slice() else {
            return Err(format!("class '{key}' has too few parts"));
        };
        let names = ["aten", "onednn", "mkl", "threads", "libtorch"];
        if rest.len() != names.len() {
            return Err(format!(
                "class '{key}' must be device/arch/vendor/aten=/onednn=/mkl=/threads=/libtorch="
            ));
        }
        let mut values = Vec::new();
        for (part, name) in rest.iter().zip(names) {
            match part.split_once('=') {
                Some((k, v)) if k == name && !v.is_empty() => values.push(v.to_string()),
                _ => {
                    return Err(format!(
                        "class '{key}': expected `{name}=...`, found `{part}`"
                    ))
                }
            }
        }
        if !(*device == "cpu" || device.strip_prefix("cuda:").is_some_and(|g| !g.is_empty())) {
            return Err(format!(
                "class '{key}': device '{device}' is not cpu or cuda:<gpu>"
            ));
        }
        let threads = values[3]
            .parse()
            .map_err(|_| format!("class '{key}': threads '{}' is not a number", values[3]))?;
        Ok(EnvClass::Host(HostClass {
            device: device.to_string(),
            arch: arch.to_string(),
            vendor: vendor.to_string(),
            aten: values[0].clone(),
            onednn: values[1].clone(),
            mkl: values[2].clone(),
            threads,
            libtorch: values[4].clone(),
        }))
    }
}

impl Serialize for EnvClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnvClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// "GenuineIntel" → "intel", "AuthenticAMD" → "amd"; other ids lower-cased.
pub fn vendor_name(vendor_id: &str) -> String {
    match vendor_id.trim() {
        "GenuineIntel" => "intel".into(),
        "AuthenticAMD" => "amd".into(),
        other => slug(other),
    }
}

/// Schema-1 fingerprints have no vendor: their model string names it.
fn vendor_from_model(model: &str) -> String {
    let m = model.to_ascii_lowercase();
    if m.contains("intel") {
        "intel".into()
    } else if m.contains("amd") {
        "amd".into()
    } else {
        "unknown".into()
    }
}

/// oneDNN's effective ISA: the highest level whose flags the CPU has, capped by
/// ONEDNN_MAX_CPU_ISA. (oneDNN's own answer, `dnnl_get_effective_cpu_isa`, is not exported by
/// libtorch.) `sse4_2` implies SSE4.1 for fingerprints that list only it.
pub fn onednn_isa(flags: &[String], max_isa: Option<String>) -> String {
    let has = |f: &str| flags.iter().any(|x| x == f) || (f == "sse4_1" && has_sse42(flags));
    // A level needs its own flags and those of every level below it, except the side branch
    // avx2_vnni, which the AVX-512 levels do not need.
    let supported = |i: usize| {
        ONEDNN_ISA[..=i]
            .iter()
            .enumerate()
            .filter(|(j, (name, _))| *j == i || *name != "avx2_vnni")
            .all(|(_, (_, needs))| needs.iter().all(|f| has(f)))
    };
    if !has("sse4_1") {
        return "none".into();
    }
    let cap = max_isa
        .map(|m| {
            ONEDNN_ALIASES
                .iter()
                .find(|(alias, _)| *alias == m)
                .map_or(m.clone(), |(_, level)| level.to_string())
        })
        .and_then(|m| ONEDNN_ISA.iter().position(|(n, _)| *n == m))
        .unwrap_or(ONEDNN_ISA.len() - 1);
    let level = (0..=cap).rev().find(|&i| supported(i)).unwrap_or(0);
    ONEDNN_ISA[level].0.into()
}

fn has_sse42(flags: &[String]) -> bool {
    flags.iter().any(|x| x == "sse4_2")
}

/// Lower-case letters, digits and '-' only (GPU names, vendor ids).
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn onednn_isa_is_the_best_level_capped_by_the_environment() {
        let zen2 = flags("sse4_2 avx avx2 fma f16c");
        let zen4 =
            flags("sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16 avx512_vnni");
        let spr = flags("sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 avx512_vnni avx_vnni amx_tile amx_bf16 amx_int8");
        assert_eq!(onednn_isa(&zen2, None), "avx2");
        assert_eq!(onednn_isa(&zen4, None), "avx512_core_bf16");
        assert_eq!(onednn_isa(&spr, None), "avx512_core_amx");
        assert_eq!(onednn_isa(&spr, Some("avx2".into())), "avx2");
        assert_eq!(onednn_isa(&spr, Some("sse41".into())), "sse41");
        assert_eq!(onednn_isa(&zen2, Some("avx512_core".into())), "avx2");
        assert_eq!(
            onednn_isa(&spr, Some("avx10_1_512".into())),
            "avx512_core_fp16"
        );
    }

    #[test]
    fn class_keys_round_trip_and_bad_keys_name_the_part() {
        let key = "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0";
        let class: EnvClass = key.parse().unwrap();
        assert_eq!(class.to_string(), key);
        assert_eq!("any".parse::<EnvClass>().unwrap(), EnvClass::Any);
        let portable: EnvClass = "portable/order-rule=1".parse().unwrap();
        assert_eq!(portable, EnvClass::Portable { order_rule: 1 });
        assert_eq!(portable.to_string(), "portable/order-rule=1");
        let err = "portable/v1".parse::<EnvClass>().unwrap_err();
        assert!(err.contains("portable/order-rule="), "{err}");
        let err = "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/thread=2/libtorch=2.13.0"
            .parse::<EnvClass>()
            .unwrap_err();
        assert!(err.contains("threads="), "{err}");
        assert!(
            "gpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0"
                .parse::<EnvClass>()
                .is_err()
        );
    }

    #[test]
    fn nearest_weighs_isa_distance_against_vendor_and_ignores_list_order() {
        let c = |s: &str| s.parse::<EnvClass>().unwrap();
        let here =
            c("cpu/x86_64/intel/aten=default/onednn=sse41/mkl=auto/threads=2/libtorch=2.13.0");
        let amd2 = c("cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0");
        let amd512 = c(
            "cpu/x86_64/amd/aten=avx512/onednn=avx512_core_bf16/mkl=auto/threads=2/libtorch=2.13.0",
        );
        let intel = c("cpu/x86_64/intel/aten=avx512/onednn=avx512_core_amx/mkl=auto/threads=2/libtorch=2.13.0");
        // Intel without AVX: AMD's avx2 class is 18 away (vendor 10, one ATen level 4, two
        // oneDNN levels 4), Intel's avx512 class 24 (two ATen levels 8, eight oneDNN levels 16).
        assert_eq!(here.distance(&amd2), 18);
        assert_eq!(here.distance(&intel), 24);
        assert_eq!(here.nearest([&amd2, &amd512, &intel]), Some(&amd2));
        assert_eq!(here.nearest([&intel, &amd512, &amd2]), Some(&amd2));
        let intel2 = c("cpu/x86_64/intel/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0");
        assert_eq!(intel2.nearest([&amd2, &intel]), Some(&amd2));
        let intel512 = c("cpu/x86_64/intel/aten=avx512/onednn=avx512_core_bf16/mkl=auto/threads=2/libtorch=2.13.0");
        assert_eq!(intel512.nearest([&amd512, &amd2, &intel]), Some(&intel));
        let amd_default =
            c("cpu/x86_64/amd/aten=default/onednn=sse41/mkl=auto/threads=2/libtorch=2.13.0");
        assert_eq!(amd_default.nearest([&amd512, &amd2, &intel]), Some(&amd2));
    }
}
