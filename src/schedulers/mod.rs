//! Schedulers behind one small trait, so a pipeline does not know which one it runs.
pub mod ddim;

use crate::error::Result;
use crate::torch::Generators;
use tch::Tensor;

pub trait Scheduler {
    /// `set_timesteps(n)`; errors on n = 0 or n > the training timesteps.
    fn set_timesteps(&mut self, steps: usize) -> Result<()>;
    /// The timesteps of the current schedule, first to last.
    fn timesteps(&self) -> &[i64];
    /// `init_noise_sigma`: what the initial noise is scaled by.
    fn init_noise_sigma(&self) -> f64;
    /// `scale_model_input(sample, t)`.
    fn scale_model_input(&self, sample: Tensor, t: i64) -> Result<Tensor>;
    /// `step(model_output, t, sample, ...).prev_sample`, drawing any noise from `generators`.
    fn step(
        &self,
        model_output: &Tensor,
        t: i64,
        sample: &Tensor,
        generators: &mut Generators,
    ) -> Result<Tensor>;
}
