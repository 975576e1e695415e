//! The per-step trace a pipeline records when asked: where two runs of one scenario part, and
//! the elements its per-step float64 truth holds. Every pipeline records the same trace.
use crate::error::Result;
use tch::Tensor;

/// The latent after one denoising step: its sum_abs (exactly rounded, in f64), a fixed sample
/// of [`TRACE_SAMPLE`] elements at evenly spaced flat indices (both go into records), and the
/// elements the per-step float64 truth holds ([`step_subset`]; kept in memory and in a child's
/// observation, never in records).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepTrace {
    pub step: usize,
    pub timestep: i64,
    pub sum_abs: f64,
    pub sample: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subset: Vec<f64>,
}

pub const TRACE_SAMPLE: usize = 8;

/// How many elements of each step's latent the per-step truth holds: all of a latent this
/// size or smaller, else this many at evenly spaced flat indices.
pub const STEP_TRUTH_ELEMENTS: usize = 256;

/// The elements of a step's latent (flat, in order) that the per-step float64 truth holds,
/// chosen by the size alone: all when there are at most [`STEP_TRUTH_ELEMENTS`], else those at
/// flat indices `i * n / STEP_TRUTH_ELEMENTS`. One rule, used by `golden merge` on the
/// oracle's latents and by every run on its own.
pub fn step_subset(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    if n <= STEP_TRUTH_ELEMENTS {
        return values.to_vec();
    }
    (0..STEP_TRUTH_ELEMENTS)
        .map(|i| values[i * n / STEP_TRUTH_ELEMENTS])
        .collect()
}

impl StepTrace {
    pub fn of(step: usize, timestep: i64, latent: &Tensor) -> Result<Self> {
        let values = crate::torch::tensor_to_f64(latent)?;
        let n = values.len().max(1);
        Ok(StepTrace {
            step,
            timestep,
            sum_abs: crate::metrics::sum_abs(&values),
            sample: (0..TRACE_SAMPLE.min(values.len()))
                .map(|i| values[i * n / TRACE_SAMPLE.min(n)])
                .collect(),
            subset: step_subset(&values),
        })
    }
}
