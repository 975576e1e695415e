//! `DDIMScheduler` (schedulers/scheduling_ddim.py, diffusers 0.42.1), computed in float32 with
//! the same libtorch ops in the same order, so the bits match: the scalars alpha_prod_t & co.
//! are 0-d float32 tensors as in diffusers, not f64 numbers.
use super::{BetaSchedule, PredictionType, Scheduler, TimestepSpacing};
use crate::error::{Error, Result};
use crate::torch::{randn_tensor, DType, DeviceSpec, Generators};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// scheduler/scheduler_config.json, DDIM's keys with diffusers' defaults. Keys DDIM does not
/// know (a DDPMScheduler's `variance_type`, `_class_name`) are ignored, as `from_config` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: i64,
    pub prediction_type: String,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: String,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DdimConfig {
    fn default() -> Self {
        DdimConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: "epsilon".into(),
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: "leading".into(),
            rescale_betas_zero_snr: false,
        }
    }
}

impl DdimConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|m| Error::invalid_file(path, m))
    }

    /// Parses a config (a DDIM or DDPM scheduler config) and applies `overrides` on top, as
    /// `DDIMScheduler.from_config(config, **overrides)`.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        Self::with_overrides(text, &serde_json::Map::new())
    }

    pub fn with_overrides(
        text: &str,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<Self, String> {
        super::config_with_overrides(text, overrides, Self::validate)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.trained_betas.is_none() {
            BetaSchedule::parse(&self.beta_schedule)?;
        }
        PredictionType::parse(&self.prediction_type)?;
        TimestepSpacing::parse(&self.timestep_spacing)?;
        if self.num_train_timesteps == 0 {
            return Err("num_train_timesteps must be >= 1".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(format!(
                    "trained_betas has {} values but num_train_timesteps = {}",
                    b.len(),
                    self.num_train_timesteps
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct DdimScheduler {
    pub config: DdimConfig,
    /// The config's `timestep_spacing` and `prediction_type`, parsed.
    spacing: TimestepSpacing,
    prediction: PredictionType,
    /// float32, as diffusers keeps them.
    pub alphas_cumprod: Tensor,
    final_alpha_cumprod: Tensor,
    timesteps: Vec<i64>,
    num_inference_steps: usize,
    /// eta and use_clipped_model_output: per-call arguments of `step` in diffusers.
    pub eta: f64,
    pub use_clipped_model_output: bool,
}

impl DdimScheduler {
    pub fn new(config: DdimConfig) -> Result<Self> {
        config.validate().map_err(Error::InvalidArgument)?;
        let betas = super::train_betas(
            config.trained_betas.as_deref(),
            &config.beta_schedule,
            (config.beta_start, config.beta_end),
            config.num_train_timesteps,
        )?;
        let betas = if config.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)?
        } else {
            betas
        };
        // alphas = 1.0 - betas; alphas_cumprod = torch.cumprod(alphas, dim=0)
        let alphas_cumprod = super::alphas_cumprod(&betas)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            Tensor::from(1.0f32)
        } else {
            alphas_cumprod.f_get(0)?
        };
        Ok(DdimScheduler {
            spacing: TimestepSpacing::parse(&config.timestep_spacing)
                .map_err(Error::InvalidArgument)?,
            prediction: PredictionType::parse(&config.prediction_type)
                .map_err(Error::InvalidArgument)?,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            eta: 0.0,
            use_clipped_model_output: false,
            config,
        })
    }

    /// `alphas_cumprod[t] if t >= 0 else final_alpha_cumprod`, for the previous timestep.
    fn alpha_at(&self, t: i64) -> Result<Tensor> {
        if t >= 0 {
            Ok(self.alphas_cumprod.f_get(t)?)
        } else {
            Ok(self.final_alpha_cumprod.shallow_clone())
        }
    }

    /// `_threshold_sample`: dynamic thresholding (Imagen).
    fn threshold_sample(&self, sample: &Tensor) -> Result<Tensor> {
        let kind = sample.kind();
        let x = if kind != Kind::Float && kind != Kind::Double {
            sample.f_to_kind(Kind::Float)?
        } else {
            sample.shallow_clone()
        };
        let dims = x.size();
        let rest: i64 = dims[1..].iter().product();
        let x = x.f_reshape([dims[0], rest])?;
        let abs = x.f_abs()?;
        let s = abs.f_quantile_scalar(
            self.config.dynamic_thresholding_ratio,
            Some(1),
            false,
            "linear",
        )?;
        let s = s.f_clamp(1.0, self.config.sample_max_value)?;
        let s = s.f_unsqueeze(1)?;
        let x = x.f_clamp_tensor(Some(&s.f_neg()?), Some(&s))?.f_div(&s)?;
        Ok(x.f_reshape(&dims)?.f_to_kind(kind)?)
    }
}

impl Scheduler for DdimScheduler {
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
        self.num_inference_steps = n;
        self.timesteps = timesteps(self.spacing, t, n, self.config.steps_offset);
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

    fn set_eta(&mut self, eta: f64) {
        self.eta = eta;
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: i64,
        sample: &Tensor,
        generators: &mut Generators,
    ) -> Result<Tensor> {
        if self.num_inference_steps == 0 {
            return Err(Error::InvalidArgument(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler".into(),
            ));
        }
        let c = &self.config;
        let prev_t = t - (c.num_train_timesteps / self.num_inference_steps) as i64;
        // self.alphas_cumprod[timestep]: Python indexing, so t = -1 (see `timesteps`) is the last.
        let a_t = self.alphas_cumprod.f_get(t)?;
        let a_prev = self.alpha_at(prev_t)?;
        let b_t = a_t.f_rsub_scalar(1)?; // 1 - alpha_prod_t
        let sqrt = super::sqrt;

        let (mut x0, mut eps) = match self.prediction {
            PredictionType::Epsilon => {
                // (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
                let x0 = sample
                    .f_sub(&sqrt(&b_t)?.f_mul(model_output)?)?
                    .f_div(&sqrt(&a_t)?)?;
                (x0, model_output.shallow_clone())
            }
            PredictionType::Sample => {
                let x0 = model_output.shallow_clone();
                // (sample - alpha_prod_t ** 0.5 * pred_original_sample) / beta_prod_t ** 0.5
                let eps = sample
                    .f_sub(&sqrt(&a_t)?.f_mul(&x0)?)?
                    .f_div(&sqrt(&b_t)?)?;
                (x0, eps)
            }
            PredictionType::VPrediction => {
                // a**0.5 * sample - b**0.5 * out;  a**0.5 * out + b**0.5 * sample
                let x0 = sqrt(&a_t)?
                    .f_mul(sample)?
                    .f_sub(&sqrt(&b_t)?.f_mul(model_output)?)?;
                let eps = sqrt(&a_t)?
                    .f_mul(model_output)?
                    .f_add(&sqrt(&b_t)?.f_mul(sample)?)?;
                (x0, eps)
            }
        };
        if c.thresholding {
            x0 = self.threshold_sample(&x0)?;
        } else if c.clip_sample {
            x0 = x0.f_clamp(-c.clip_sample_range, c.clip_sample_range)?;
        }
        // _get_variance: (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        let b_prev = a_prev.f_rsub_scalar(1)?;
        let variance = b_prev
            .f_div(&b_t)?
            .f_mul(&a_t.f_div(&a_prev)?.f_rsub_scalar(1)?)?;
        // std_dev_t = eta * variance ** 0.5
        let std_dev = sqrt(&variance)?.f_mul_scalar(self.eta)?;
        if self.use_clipped_model_output {
            eps = sample
                .f_sub(&sqrt(&a_t)?.f_mul(&x0)?)?
                .f_div(&sqrt(&b_t)?)?;
        }
        // (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        let direction = sqrt(
            &a_prev
                .f_rsub_scalar(1)?
                .f_sub(&std_dev.f_pow_tensor_scalar(2)?)?,
        )?
        .f_mul(&eps)?;
        // alpha_prod_t_prev ** 0.5 * pred_original_sample + pred_sample_direction
        let mut prev = sqrt(&a_prev)?.f_mul(&x0)?.f_add(&direction)?;
        if self.eta > 0.0 {
            let device = match model_output.device() {
                Device::Cuda(i) => DeviceSpec::Cuda(i),
                _ => DeviceSpec::Cpu,
            };
            let dtype = DType::from_kind(model_output.kind()).ok_or_else(|| {
                Error::Torch(format!("unsupported dtype {:?}", model_output.kind()))
            })?;
            let noise = randn_tensor(&model_output.size(), generators, device, dtype)?;
            prev = prev.f_add(&std_dev.f_mul(&noise)?)?;
        }
        Ok(prev)
    }
}

/// `set_timesteps`' three spacings, with numpy's arithmetic (round half to even; arange and
/// linspace filled as numpy fills them).
///
/// Mirrors a diffusers quirk: "trailing" computes `np.arange(T, 0, -T / n)`, whose length is
/// `ceil(T / (T / n))` in floating point, so for some n (201 with T = 1000) it yields n + 1
/// timesteps ending at -1, and the pipeline then runs n + 1 steps.
pub fn timesteps(spacing: TimestepSpacing, train: usize, n: usize, offset: i64) -> Vec<i64> {
    let tt = train as f64;
    match spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, T - 1, n).round()[::-1]
            let stop = tt - 1.0;
            let mut v: Vec<f64> = if n == 1 {
                vec![0.0]
            } else {
                let step = stop / (n - 1) as f64;
                let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
                v[n - 1] = stop;
                v
            };
            v.reverse();
            v.into_iter().map(|x| x.round_ties_even() as i64).collect()
        }
        TimestepSpacing::Trailing => {
            // np.round(np.arange(T, 0, -T / n)).astype(int64) - 1
            let step = -tt / n as f64;
            let len = ((0.0 - tt) / step).ceil().max(0.0) as usize;
            let first = tt;
            let second = tt + step;
            let delta = second - first;
            (0..len)
                .map(|i| match i {
                    0 => first,
                    1 => second,
                    _ => first + i as f64 * delta,
                })
                .map(|x| x.round_ties_even() as i64 - 1)
                .collect()
        }
        TimestepSpacing::Leading => {
            // (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
            let ratio = (train / n) as i64;
            (0..n as i64).rev().map(|i| i * ratio + offset).collect()
        }
    }
}

/// diffusers' `betas_for_alpha_bar(T, max_beta=0.999)` with the cosine transform, in Python
/// floats (f64): `t1 = i / T`, `t2 = (i + 1) / T` are true divisions.
pub fn betas_for_alpha_bar(train: usize, max_beta: f64) -> Vec<f64> {
    // The platform's cos, as Python's math.cos; the portable kernels take the libm crate's.
    let cos = if crate::portable::enabled() {
        libm::cos
    } else {
        f64::cos
    };
    let alpha_bar = |t: f64| cos((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).powi(2);
    (0..train)
        .map(|i| {
            let t1 = i as f64 / train as f64;
            let t2 = (i + 1) as f64 / train as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// `rescale_zero_terminal_snr(betas)` (arXiv 2305.08891, Algorithm 1), float32 tensor ops.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Result<Tensor> {
    let sqrt = super::sqrt(&super::alphas_cumprod(betas)?)?;
    let s0 = sqrt.f_get(0)?;
    let st = sqrt.f_get(-1)?;
    let sqrt = sqrt.f_sub(&st)?;
    let sqrt = sqrt.f_mul(&s0.f_div(&s0.f_sub(&st)?)?)?;
    let bar = sqrt.f_pow_tensor_scalar(2)?;
    let n = bar.size()[0];
    let alphas = bar
        .f_narrow(0, 1, n - 1)?
        .f_div(&bar.f_narrow(0, 0, n - 1)?)?;
    let alphas = Tensor::f_cat(&[bar.f_narrow(0, 0, 1)?, alphas], 0)?;
    Ok(alphas.f_rsub_scalar(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documented_schedules() {
        // reference: CIFAR 2 steps → [500, 0]; SD (offset 1) 50 steps → [981, 961, ..., 1].
        assert_eq!(
            timesteps(TimestepSpacing::Leading, 1000, 2, 0),
            vec![500, 0]
        );
        let sd = timesteps(TimestepSpacing::Leading, 1000, 50, 1);
        assert_eq!((sd[0], sd[1], sd[49], sd.len()), (981, 961, 1, 50));
        assert_eq!(
            timesteps(TimestepSpacing::Trailing, 1000, 3, 0),
            vec![999, 666, 332]
        );
        assert_eq!(
            timesteps(TimestepSpacing::Linspace, 1000, 3, 0),
            vec![999, 500, 0]
        );
    }

    #[test]
    fn cosine_betas_use_true_division() {
        // The Rust ports that used integer division zeroed every beta but the last.
        let b = betas_for_alpha_bar(1000, 0.999);
        assert!(b[0] > 0.0 && b[500] > 0.0);
        assert_eq!(b[999], 0.999);
    }

    #[test]
    fn trailing_spacing_keeps_numpys_extra_step() {
        // diffusers 0.42.1: DDIMScheduler(timestep_spacing="trailing").set_timesteps(201)
        // gives 202 timesteps, [999, 994, 989, ..., 9, 4, -1].
        let ts = timesteps(TimestepSpacing::Trailing, 1000, 201, 0);
        assert_eq!(ts.len(), 202);
        assert_eq!(&ts[..3], &[999, 994, 989]);
        assert_eq!(&ts[199..], &[9, 4, -1]);
    }

    proptest! {
        #[test]
        fn timesteps_decrease_and_stay_in_range(n in 1usize..=1000, spacing in prop::sample::select(vec!["leading", "trailing", "linspace"])) {
            let spacing = TimestepSpacing::parse(spacing).unwrap();
            let ts = timesteps(spacing, 1000, n, 0);
            prop_assert!(ts.windows(2).all(|w| w[0] > w[1]));
            if spacing == TimestepSpacing::Trailing && ts.len() == n + 1 {
                // numpy's extra step (see `timesteps`): only ever one, at -1.
                prop_assert_eq!(ts[n], -1);
                prop_assert!(ts[..n].iter().all(|&t| (0..1000).contains(&t)));
            } else {
                prop_assert_eq!(ts.len(), n);
                prop_assert!(ts.iter().all(|&t| (0..1000).contains(&t)));
            }
        }
    }
}
