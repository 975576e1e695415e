//! Dtype and device spellings shared by suites, flags and records.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// A floating dtype as suites and flags spell it (`f32`, `f16`, `bf16`, `f64`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    F16,
    Bf16,
    F64,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::Bf16, DType::F64];

    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::F16 => Kind::Half,
            DType::Bf16 => Kind::BFloat16,
            DType::F64 => Kind::Double,
        }
    }

    /// c10::ScalarType code, for the C++ extension (tch keeps `Kind::c_int` private).
    pub(crate) fn scalar_type_code(self) -> i32 {
        match self {
            DType::F32 => 6,
            DType::F16 => 5,
            DType::Bf16 => 15,
            DType::F64 => 7,
        }
    }

    pub fn from_kind(kind: Kind) -> Option<Self> {
        DType::ALL.into_iter().find(|d| d.kind() == kind)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F64 => "f64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            "f64" | "float64" => Ok(DType::F64),
            _ => Err(Error::InvalidArgument(format!(
                "unknown dtype '{s}': expected one of f32, f16, bf16, f64"
            ))),
        }
    }
}

/// Where a tensor lives: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    pub fn device(self) -> Device {
        match self {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => Device::Cuda(i),
        }
    }

    /// (type code, index) for the C++ extension: 0 = CPU, 1 = CUDA.
    pub(crate) fn codes(self) -> (i32, i32) {
        match self {
            DeviceSpec::Cpu => (0, -1),
            DeviceSpec::Cuda(i) => (1, i as i32),
        }
    }

    /// Errors (exit 2) when the device is CUDA and this host has no such CUDA device.
    pub fn ensure_available(self) -> Result<()> {
        if let DeviceSpec::Cuda(i) = self {
            let info = super::cuda_info()?;
            if !info.available {
                return Err(Error::Unavailable(format!(
                    "device '{self}' requested, but CUDA is not available on this host"
                )));
            }
            if i >= info.devices {
                return Err(Error::Unavailable(format!(
                    "device '{self}' requested, but this host has {} CUDA device(s)",
                    info.devices
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown device '{s}': expected cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The raw bytes of a tensor in its own dtype (row-major, native endian): what `sha256` hashes.
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_flatten(0, -1)?;
    let bytes = flat.f_view_dtype(Kind::Uint8)?;
    Ok(Vec::<u8>::try_from(&bytes)?)
}

/// SHA-256 (hex) of [`tensor_bytes`]: the identity the `bits` metric compares.
pub fn tensor_sha256(t: &Tensor) -> Result<String> {
    use sha2::{Digest, Sha256};
    Ok(format!("{:x}", Sha256::digest(tensor_bytes(t)?)))
}

/// The values of a tensor as f64 (exact for every floating dtype reprodiff uses).
pub fn tensor_to_f64(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Double)?
        .f_flatten(0, -1)?;
    Ok(Vec::<f64>::try_from(&flat)?)
}
