//! `PNDMScheduler` (schedulers/scheduling_pndm.py, diffusers 0.42.1) with `skip_prk_steps`, as
//! Stable Diffusion 1.5 ships it: linear multistep (PLMS) updates over the last four model
//! outputs, in float32 with the same libtorch ops in the same order as diffusers.
use super::ddim::timesteps as ddim_timesteps;
use super::{BetaSchedule, PredictionType, Scheduler, TimestepSpacing};
use crate::error::{Error, Result};
use crate::torch::Generators;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// scheduler_config.json of a PNDMScheduler, diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PndmConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub skip_prk_steps: bool,
    pub set_alpha_to_one: bool,
    pub prediction_type: String,
    pub timestep_spacing: String,
    pub steps_offset: i64,
}

impl Default for PndmConfig {
    fn default() -> Self {
        PndmConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            skip_prk_steps: false,
            set_alpha_to_one: false,
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
            steps_offset: 0,
        }
    }
}

impl PndmConfig {
    /// Parses a config and applies `overrides`, as `PNDMScheduler.from_config(c, **o)`.
    pub fn with_overrides(
        text: &str,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<Self, String> {
        super::config_with_overrides(text, overrides, Self::validate)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.skip_prk_steps {
            return Err(
                "unsupported skip_prk_steps = false (reprodiff implements PNDM's PLMS steps only, \
                 as Stable Diffusion ships it)"
                    .into(),
            );
        }
        if self.trained_betas.is_none() {
            BetaSchedule::parse(&self.beta_schedule)?;
        }
        if PredictionType::parse(&self.prediction_type)? == PredictionType::Sample {
            return Err(format!(
                "unsupported prediction_type = {:?} (PNDM takes epsilon or v_prediction)",
                self.prediction_type
            ));
        }
        TimestepSpacing::parse(&self.timestep_spacing)?;
        if self.num_train_timesteps == 0 {
            return Err("num_train_timesteps must be >= 1".into());
        }
        Ok(())
    }
}

pub struct PndmScheduler {
    pub config: PndmConfig,
    /// The config's `timestep_spacing` and `prediction_type`, parsed.
    spacing: TimestepSpacing,
    prediction: PredictionType,
    alphas_cumprod: Tensor,
    final_alpha_cumprod: Tensor,
    timesteps: Vec<i64>,
    num_inference_steps: usize,
    counter: usize,
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
}

impl PndmScheduler {
    pub fn new(config: PndmConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        let betas = super::train_betas(
            config.trained_betas.as_deref(),
            &config.beta_schedule,
            (config.beta_start, config.beta_end),
            config.num_train_timesteps,
        )?;
        let alphas_cumprod = super::alphas_cumprod(&betas)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            Tensor::from(1.0f32)
        } else {
            alphas_cumprod.f_get(0)?
        };
        Ok(PndmScheduler {
            spacing: TimestepSpacing::parse(&config.timestep_spacing)
                .map_err(Error::InvalidArgument)?,
            prediction: PredictionType::parse(&config.prediction_type)
                .map_err(Error::InvalidArgument)?,
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
        })
    }

    /// `_get_prev_sample`: formula (9) of the PNDM paper, 0-d float32 coefficients.
    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, out: &Tensor) -> Result<Tensor> {
        let a_t = self.alphas_cumprod.f_get(t)?;
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod.f_get(prev_t)?
        } else {
            self.final_alpha_cumprod.shallow_clone()
        };
        let b_t = a_t.f_rsub_scalar(1)?;
        let b_prev = a_prev.f_rsub_scalar(1)?;
        let out = if self.prediction == PredictionType::VPrediction {
            super::sqrt(&a_t)?
                .f_mul(out)?
                .f_add(&super::sqrt(&b_t)?.f_mul(sample)?)?
        } else {
            out.shallow_clone()
        };
        let sample_coeff = super::sqrt(&a_prev.f_div(&a_t)?)?;
        // alpha_prod_t * beta_prod_t_prev ** 0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
        let denom = a_t
            .f_mul(&super::sqrt(&b_prev)?)?
            .f_add(&super::sqrt(&a_t.f_mul(&b_t)?.f_mul(&a_prev)?)?)?;
        // sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom
        let update = a_prev.f_sub(&a_t)?.f_mul(&out)?.f_div(&denom)?;
        Ok(sample_coeff.f_mul(sample)?.f_sub(&update)?)
    }
}

impl Scheduler for PndmScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let t = self.config.num_train_timesteps;
        if n == 0 {
            return Err(Error::InvalidArgument(
                "the number of inference steps must be >= 1".into(),
            ));
        }
        if n > t {
            return Err(Error::InvalidArgument(format!(
                "`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`: {t}"
            )));
        }
        // PNDM's `_timesteps` ascend; DDIM's spacings give the same values descending.
        let mut asc = ddim_timesteps(self.spacing, t, n, self.config.steps_offset);
        asc.reverse();
        // skip_prk_steps: concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1]
        let k = asc.len();
        let mut plms: Vec<i64> = asc[..k.saturating_sub(1)].to_vec();
        if k >= 2 {
            plms.push(asc[k - 2]);
        }
        plms.extend(asc.last());
        plms.reverse();
        self.timesteps = plms;
        self.num_inference_steps = n;
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _t: i64) -> Result<Tensor> {
        Ok(sample)
    }

    /// `step_plms`.
    fn step(
        &mut self,
        model_output: &Tensor,
        t: i64,
        sample: &Tensor,
        _generators: &mut Generators,
    ) -> Result<Tensor> {
        if self.num_inference_steps == 0 {
            return Err(Error::InvalidArgument(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler".into(),
            ));
        }
        let ratio = (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let (mut t, mut prev_t) = (t, t - ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.shallow_clone());
        } else {
            prev_t = t;
            t += ratio;
        }
        let e = &self.ets;
        let n = e.len();
        let mut sample = sample.shallow_clone();
        let out = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.shallow_clone());
            model_output.shallow_clone()
        } else if n == 1 && self.counter == 1 {
            // (model_output + ets[-1]) / 2, from the sample saved at counter 0
            sample = self.cur_sample.take().unwrap_or(sample);
            model_output.f_add(&e[n - 1])?.f_div_scalar(2)?
        } else if n == 2 {
            // (3 * ets[-1] - ets[-2]) / 2
            e[1].f_mul_scalar(3)?.f_sub(&e[0])?.f_div_scalar(2)?
        } else if n == 3 {
            // (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
            e[2].f_mul_scalar(23)?
                .f_sub(&e[1].f_mul_scalar(16)?)?
                .f_add(&e[0].f_mul_scalar(5)?)?
                .f_div_scalar(12)?
        } else {
            // (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
            e[3].f_mul_scalar(55)?
                .f_sub(&e[2].f_mul_scalar(59)?)?
                .f_add(&e[1].f_mul_scalar(37)?)?
                .f_sub(&e[0].f_mul_scalar(9)?)?
                .f_mul_scalar(1.0 / 24.0)?
        };
        let prev = self.prev_sample(&sample, t, prev_t, &out)?;
        self.counter += 1;
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> PndmScheduler {
        PndmScheduler::new(PndmConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            skip_prk_steps: true,
            steps_offset: 1,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn plms_schedule_repeats_the_second_timestep() {
        // diffusers 0.42.1, SD 1.5's PNDMScheduler: set_timesteps(2) -> [501, 1, 1];
        // set_timesteps(50) -> [981, 961, 961, 941, ..., 21, 1] (51 timesteps).
        let mut s = sd15();
        s.set_timesteps(2).unwrap();
        assert_eq!(s.timesteps(), &[501, 1, 1]);
        s.set_timesteps(50).unwrap();
        let ts = s.timesteps();
        assert_eq!(
            (ts.len(), ts[0], ts[1], ts[2], ts[3], ts[50]),
            (51, 981, 961, 961, 941, 1)
        );
        s.set_timesteps(1).unwrap();
        assert_eq!(s.timesteps(), &[1]);
    }

    #[test]
    fn prk_steps_are_refused_with_the_key() {
        let err = PndmConfig::with_overrides("{}", &Default::default()).unwrap_err();
        assert!(err.contains("skip_prk_steps"), "{err}");
    }
}
