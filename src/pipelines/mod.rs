//! Pipelines: diffusers' `__call__` loops over a model and a scheduler.
pub mod ddim;
pub mod stable_diffusion;

pub use ddim::StepTrace;

use serde::{Deserialize, Serialize};

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
            _ => Err(crate::Error::InvalidArgument(format!(
                "--output-type {s}: expected np or latent"
            ))),
        }
    }
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
