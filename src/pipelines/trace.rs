//! The per-step trace a pipeline records when asked: where two runs of one scenario part, and
//! the elements its per-step float64 truth holds. Every pipeline records the same trace.
use crate::error::{Error, Result};
use tch::Tensor;

/// The latent after one denoising step: its sum_abs (exactly rounded, in f64), a fixed sample
/// of [`TRACE_SAMPLE`] elements at evenly spaced flat indices (both go into records), and every
/// element, which the step rule holds to the per-step float64 truth (kept in memory and in a
/// child's observation, never in records).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepTrace {
    pub step: usize,
    pub timestep: i64,
    pub sum_abs: f64,
    pub sample: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latent: Vec<f64>,
    /// The latent's shape (kept beside `latent`, never in records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shape: Vec<i64>,
}

pub const TRACE_SAMPLE: usize = 8;

/// How many elements of each step's latent a per-step truth recorded by an older oracle holds: all of
/// a latent this size or smaller, else this many at evenly spaced flat indices. Truths recorded
/// since hold every element.
pub const STEP_TRUTH_ELEMENTS: usize = 256;

/// The elements of a step's latent (flat, in order) that a per-step truth recorded by an older oracle
/// holds, chosen by the size alone: all when there are at most [`STEP_TRUTH_ELEMENTS`], else
/// those at flat indices `i * n / STEP_TRUTH_ELEMENTS`.
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
            latent: values,
            shape: latent.size(),
        })
    }
}

/// Test-only: `REPRODIFF_TEST_PLANT_STEP=STEP:AMOUNT` adds AMOUNT to the last column (the
/// last index of the width axis) of the latent after denoising step STEP (from 1), in every run
/// and local pass: a defect confined to one step and 1/width of the latent, which the
/// cross-class rules must catch (test `a_last_column_defect_*`). Unset, nothing changes.
pub const PLANT_STEP_ENV: &str = "REPRODIFF_TEST_PLANT_STEP";

/// The latent after step `i` (from 0) with [`PLANT_STEP_ENV`]'s defect, where it names this
/// step.
pub fn planted(i: usize, latent: Tensor) -> Result<Tensor> {
    let Ok(spec) = std::env::var(PLANT_STEP_ENV) else {
        return Ok(latent);
    };
    let bad = || Error::env(PLANT_STEP_ENV, &spec, "expected STEP:AMOUNT");
    let (step, amount) = spec.split_once(':').ok_or_else(bad)?;
    let step: usize = step.parse().map_err(|_| bad())?;
    let amount: f64 = amount.parse().map_err(|_| bad())?;
    if step != i + 1 {
        return Ok(latent);
    }
    let width = *latent.size().last().ok_or_else(bad)?;
    let column = latent.f_narrow(-1, width - 1, 1)?.f_add_scalar(amount)?;
    Ok(Tensor::f_cat(
        &[latent.f_narrow(-1, 0, width - 1)?, column],
        -1,
    )?)
}

/// The local pass's inputs: a run teacher-forced by the float64 truth. Every draw is
/// the truth's own (its initial latent, then each step's eta noise), and after each step the
/// truth's latent replaces the step's own, so that each step starts from the truth's input to
/// it. The run's trace then holds each step's own latent: the step computed from the truth's
/// input (ci/oracle/local.py does the same in diffusers).
#[derive(Debug)]
pub struct Forcing {
    /// The truth's latent after each step, float64 [steps, elements].
    pub latents: Tensor,
    /// The truth's initial latent, float64, in its own shape.
    pub initial: Tensor,
    /// The truth's eta noise of each step, float64 [steps, *latent]; `None` without.
    pub noise: Option<Tensor>,
}

impl Forcing {
    /// The number of steps the truth holds.
    pub fn steps(&self) -> usize {
        self.latents.size().first().copied().unwrap_or(0) as usize
    }

    /// The draws the forced run consumes, in order: the initial latent, then each step's noise.
    pub fn draws(&self) -> std::collections::VecDeque<Tensor> {
        let noise = self
            .noise
            .iter()
            .flat_map(|n| (0..n.size()[0]).map(move |i| n.get(i)));
        std::iter::once(self.initial.shallow_clone())
            .chain(noise)
            .collect()
    }

    /// The truth's latent after step `i` (from 0), as the next step's input in place of `own`
    /// (the step's own latent): rounded to its dtype, on its device, in its shape.
    pub fn after(&self, i: usize, own: &Tensor) -> Result<Tensor> {
        if i >= self.steps() {
            return Err(Error::Internal(format!(
                "the local pass made step {} of a truth with {} steps",
                i + 1,
                self.steps()
            )));
        }
        Ok(self
            .latents
            .get(i as i64)
            .f_reshape(own.size())?
            .f_to_kind(own.kind())?
            .f_to_device(own.device())?)
    }
}
