//! Schedulers behind one small trait, so a pipeline does not know which one it runs, and the
//! config conversions of `SchedulerClass.from_config(pipe.scheduler.config)`.
pub mod ddim;
pub mod pndm;

use crate::error::Result;
use crate::torch::Generators;
use serde_json::{Map, Value};
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
    /// The `eta` a pipeline passes to `step` when the scheduler's step accepts one (DDIM);
    /// others ignore it, as diffusers' `prepare_extra_step_kwargs` does.
    fn set_eta(&mut self, _eta: f64) {}
    /// `step(model_output, t, sample, ...).prev_sample`, drawing any noise from `generators`.
    fn step(
        &mut self,
        model_output: &Tensor,
        t: i64,
        sample: &Tensor,
        generators: &mut Generators,
    ) -> Result<Tensor>;
}

/// The training betas both schedulers build in `__init__`, float32 as diffusers keeps them:
/// `trained_betas`, or `linear` (linspace), `scaled_linear` (linspace of the square roots,
/// squared) or `squaredcos_cap_v2` (the Glide cosine in Python floats). Schedules are validated
/// by the configs.
/// Config values diffusers spells as strings, parsed once where a config is validated: an
/// unknown value is an error naming its key, never a fall-through branch below.
fn one_of<T: Copy>(key: &str, value: &str, table: &[(&str, T)]) -> std::result::Result<T, String> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!(
                "unsupported {key} = {value:?} (expected one of {})",
                names.join(", ")
            )
        })
}

/// `timestep_spacing`: how `set_timesteps` spreads the inference steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

impl TimestepSpacing {
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        use TimestepSpacing::*;
        let table = [
            ("leading", Leading),
            ("trailing", Trailing),
            ("linspace", Linspace),
        ];
        one_of("timestep_spacing", value, &table)
    }
}

/// `prediction_type`: what the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    Sample,
    VPrediction,
}

impl PredictionType {
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        use PredictionType::*;
        let table = [
            ("epsilon", Epsilon),
            ("sample", Sample),
            ("v_prediction", VPrediction),
        ];
        one_of("prediction_type", value, &table)
    }
}

/// `beta_schedule`, where no `trained_betas` are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

impl BetaSchedule {
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        use BetaSchedule::*;
        let table = [
            ("linear", Linear),
            ("scaled_linear", ScaledLinear),
            ("squaredcos_cap_v2", SquaredcosCapV2),
        ];
        one_of("beta_schedule", value, &table)
    }
}

pub(crate) fn train_betas(
    trained: Option<&[f64]>,
    schedule: &str,
    (start, end): (f64, f64),
    train: usize,
) -> Result<Tensor> {
    use tch::{Device, Kind};
    let portable = crate::portable::enabled();
    // torch.linspace(a, b, train, dtype=float32): libtorch's, or the portable kernels'.
    let linspace = |a: f64, b: f64| -> Result<Tensor> {
        Ok(if portable {
            Tensor::from_slice(&crate::portable::ops::linspace(a, b, train))
        } else {
            Tensor::f_linspace(a, b, train as i64, (Kind::Float, Device::Cpu))?
        })
    };
    // Python's `x ** 0.5` is the platform's pow; the portable kernels take the correctly rounded
    // sqrt instead.
    let root = |x: f64| if portable { x.sqrt() } else { x.powf(0.5) };
    // torch.tensor(trained_betas, dtype=torch.float32)
    if let Some(b) = trained {
        return Ok(Tensor::from_slice(b).f_to_kind(Kind::Float)?);
    }
    Ok(
        match BetaSchedule::parse(schedule).map_err(crate::Error::InvalidArgument)? {
            BetaSchedule::Linear => linspace(start, end)?,
            // ** 2 is one float32 multiply on every path.
            BetaSchedule::ScaledLinear => {
                linspace(root(start), root(end))?.f_pow_tensor_scalar(2)?
            }
            BetaSchedule::SquaredcosCapV2 => {
                Tensor::from_slice(&ddim::betas_for_alpha_bar(train, 0.999))
                    .f_to_kind(Kind::Float)?
            }
        },
    )
}

/// `SchedulerClass.from_config(config, **overrides)`: the config's JSON with `overrides` on
/// top, null values dropped (diffusers writes null for unset optional keys; serde's defaults
/// apply to absent ones), parsed into `T` and checked by `validate`.
pub(crate) fn config_with_overrides<T: serde::de::DeserializeOwned>(
    text: &str,
    overrides: &serde_json::Map<String, serde_json::Value>,
    validate: impl FnOnce(&T) -> std::result::Result<(), String>,
) -> std::result::Result<T, String> {
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = value
        .as_object_mut()
        .ok_or("a scheduler config must be a JSON object")?;
    for (k, v) in overrides {
        obj.insert(k.clone(), v.clone());
    }
    obj.retain(|_, v| !v.is_null());
    let config: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    validate(&config)?;
    Ok(config)
}

/// `x ** 0.5` on a float32 tensor: libtorch's (diffusers' own), or in a process on the portable
/// kernels the correctly rounded square root. libtorch's CPU sqrt is MKL's vector math on x86
/// (whatever `ATEN_CPU_CAPABILITY` says), and its bits depend on the CPU's vendor: on an AMD
/// EPYC 14% of a million uniform float32 square roots are not the correctly rounded ones; on the
/// Intel Xeon the portable goldens were blessed on, every square root the DDIM and SD scenarios
/// take was, but one (`sqrt(0.33933258)`, 0.0003 ulp from a rounding boundary).
pub(crate) fn sqrt(x: &Tensor) -> Result<Tensor> {
    if crate::portable::enabled() {
        return crate::portable::ops::map(x, f32::sqrt);
    }
    Ok(x.f_pow_tensor_scalar(0.5)?)
}

/// `torch.cumprod(1 - betas, dim=0)` in float32: libtorch's, or in a process on the portable
/// kernels, [`crate::portable::ops::cumprod`].
pub(crate) fn alphas_cumprod(betas: &Tensor) -> Result<Tensor> {
    let alphas = betas.f_rsub_scalar(1.0)?;
    if crate::portable::enabled() {
        let (v, _) = crate::portable::ops::values(&alphas)?;
        return Ok(Tensor::from_slice(&crate::portable::ops::cumprod(&v)));
    }
    Ok(alphas.f_cumprod(0, tch::Kind::Float)?)
}

/// The scheduler classes reprodiff implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerClass {
    Ddim,
    Pndm,
}

impl std::str::FromStr for SchedulerClass {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ddim" => Ok(SchedulerClass::Ddim),
            "pndm" => Ok(SchedulerClass::Pndm),
            _ => Err(crate::Error::flag("scheduler", s, "expected ddim or pndm")),
        }
    }
}

impl SchedulerClass {
    /// The class a config's `_class_name` names, if reprodiff implements it.
    pub fn from_class_name(name: &str) -> Option<Self> {
        match name {
            "DDIMScheduler" => Some(SchedulerClass::Ddim),
            "PNDMScheduler" => Some(SchedulerClass::Pndm),
            _ => None,
        }
    }

    /// diffusers' name of the class.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::Pndm => "PNDMScheduler",
        }
    }

    /// The config `cls.from_config(config, **overrides).config` holds, as nearly as reprodiff
    /// knows it: `config`'s keys, every parameter of the class with its value on top.
    pub fn resolved_config(
        self,
        config: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> std::result::Result<Map<String, Value>, String> {
        let text = serde_json::to_string(config).expect("serialises");
        let parsed = match self {
            SchedulerClass::Ddim => {
                serde_json::to_value(ddim::DdimConfig::with_overrides(&text, overrides)?)
            }
            SchedulerClass::Pndm => {
                serde_json::to_value(pndm::PndmConfig::with_overrides(&text, overrides)?)
            }
        };
        let mut out = config.clone();
        if let Value::Object(values) = parsed.expect("serialises") {
            out.extend(values);
        }
        Ok(out)
    }

    /// Every config key of the class with its default, as `scheduler.config` holds them.
    fn defaults(self) -> Map<String, Value> {
        let v = match self {
            SchedulerClass::Ddim => serde_json::to_value(ddim::DdimConfig::default()),
            SchedulerClass::Pndm => serde_json::to_value(pndm::PndmConfig::default()),
        };
        match v.expect("serialises") {
            Value::Object(m) => m,
            _ => unreachable!("a struct serialises to an object"),
        }
    }

    /// `cls.from_config(config, **overrides)`: keys the class does not know are ignored.
    pub fn build(
        self,
        config: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> std::result::Result<Box<dyn Scheduler>, String> {
        let text = serde_json::to_string(config).expect("serialises");
        Ok(match self {
            SchedulerClass::Ddim => Box::new(
                ddim::DdimScheduler::new(ddim::DdimConfig::with_overrides(&text, overrides)?)
                    .map_err(|e| e.to_string())?,
            ),
            SchedulerClass::Pndm => Box::new(
                pndm::PndmScheduler::new(pndm::PndmConfig::with_overrides(&text, overrides)?)
                    .map_err(|e| e.to_string())?,
            ),
        })
    }
}

/// A scheduler_config.json as diffusers holds it once loaded: the class's defaults for every
/// key the file leaves out, plus every key the file has (unknown ones are kept, as diffusers
/// keeps them for compatible classes). Returns the file's class, if reprodiff implements it.
pub fn loaded_config(
    text: &str,
) -> std::result::Result<(Option<SchedulerClass>, Map<String, Value>), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Value::Object(file) = value else {
        return Err("a scheduler config must be a JSON object".into());
    };
    let class = file
        .get("_class_name")
        .and_then(Value::as_str)
        .and_then(SchedulerClass::from_class_name);
    let mut config = class.map(SchedulerClass::defaults).unwrap_or_default();
    for (k, v) in file {
        if !v.is_null() {
            config.insert(k, v);
        }
    }
    Ok((class, config))
}

#[cfg(test)]
mod tests {
    use tch::Tensor;

    /// The portable square root is the correctly rounded one, on a sweep and on the hard case
    /// ddim-portable's squaredcos_cap_v2 schedule takes at t = 600, where the Intel Xeon's
    /// libtorch rounded the other way.
    #[test]
    fn the_portable_square_root_is_correctly_rounded() {
        let x: Vec<f32> = (0..100_000)
            .map(|i| i as f32 * 1.37e-5)
            .chain([0.339_332_58_f32])
            .collect();
        crate::portable::set_enabled(true);
        let got = Vec::<f32>::try_from(super::sqrt(&Tensor::from_slice(&x)).unwrap()).unwrap();
        crate::portable::set_enabled(false);
        assert_eq!(got.len(), x.len());
        for (x, g) in x.iter().zip(&got) {
            // f64's sqrt rounded to f32 is f32's correctly rounded sqrt (53 >= 2 * 24 + 2).
            assert_eq!(
                g.to_bits(),
                (f64::from(*x).sqrt() as f32).to_bits(),
                "sqrt({x})"
            );
        }
    }
}
