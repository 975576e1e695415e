//! What a scenario runs: the `run` table of a suite, one kind per variant. Each workload turns
//! its parameters into one output tensor, drawing every random number from the scenario's
//! generators. The pipelines own their kinds ([`crate::pipelines::WorkloadKind`]); the random
//! draws of the RNG parity suite are the harness's own.
use crate::error::{Error, Result};
use crate::pipelines::ddim::workload::DdimWorkload;
use crate::pipelines::stable_diffusion::workload::{SdWorkload, VaeEncodeWorkload};
use crate::pipelines::WorkloadKind;
use crate::torch::{randn_tensor, DType, DeviceSpec, GeneratorSpec, Generators};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

use crate::pipelines::Output;

/// A scenario's workload. Adding a pipeline adds one line here (docs/development.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Workload {
    /// Random draws through a generator spec: the RNG parity suite.
    Random(RandomWorkload),
    /// `DDIMPipeline(unet, scheduler)(...)`.
    Ddim(DdimWorkload),
    /// `StableDiffusionPipeline(...)(prompt, ...)` without the safety checker.
    Sd(SdWorkload),
    /// A Stable Diffusion folder's `vae._encode(x)` on noise images.
    VaeEncode(VaeEncodeWorkload),
}

impl Workload {
    /// The workload's kind, which answers everything the harness asks.
    pub fn kind(&self) -> &dyn WorkloadKind {
        match self {
            Workload::Random(w) => w,
            Workload::Ddim(w) => w,
            Workload::Sd(w) => w,
            Workload::VaeEncode(w) => w,
        }
    }

    fn kind_mut(&mut self) -> &mut dyn WorkloadKind {
        match self {
            Workload::Random(w) => w,
            Workload::Ddim(w) => w,
            Workload::Sd(w) => w,
            Workload::VaeEncode(w) => w,
        }
    }

    /// Run 1 minus run 2 of a re-seeded pipeline: the seed document claims it is exactly zero,
    /// on every host, so it is compared exactly on every class (`harness::compare`).
    pub fn is_rerun_difference(&self) -> bool {
        self.kind().is_rerun_difference()
    }

    /// The dtype the workload computes in.
    pub fn dtype(&self) -> DType {
        self.kind().dtype()
    }

    /// The dtype the workload computes in, which a dtype knob can change.
    pub fn dtype_mut(&mut self) -> &mut DType {
        self.kind_mut().dtype_mut()
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.kind().validate()
    }

    /// The model a pipeline workload loads.
    pub fn model(&self) -> Option<&str> {
        self.kind().model()
    }

    /// Runs the workload on `device`; bare model names resolve under `models_dir`. With
    /// `trace`, a pipeline records its per-step trace (of the first run, for `twice`).
    pub fn run(
        &self,
        device: DeviceSpec,
        models_dir: Option<&Path>,
        trace: bool,
    ) -> Result<Output> {
        self.kind().run(device, models_dir, trace)
    }
}

/// Random draws through a generator spec: a suite's `run = { kind = "random", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomWorkload {
    pub op: RandomOp,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub dtype: DType,
    pub generator: GeneratorSpec,
    /// A draw of this shape made first and discarded (the stream continues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<Vec<i64>>,
    /// get_state, draw, set_state, draw again: the output is the second draw.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub state_roundtrip: bool,
    /// For op "normal".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RandomOp {
    /// diffusers' randn_tensor.
    Randn,
    /// torch.rand, per sample for a list like randn_tensor.
    Rand,
    /// torch.empty(shape).normal_(mean, std, generator=g).
    Normal,
}

impl WorkloadKind for RandomWorkload {
    fn validate(&self) -> std::result::Result<(), String> {
        let RandomWorkload {
            op,
            shape,
            generator,
            skip,
            state_roundtrip,
            mean,
            std,
            ..
        } = self;
        if shape.iter().any(|&d| d < 0) {
            return Err(format!("run.shape {shape:?} has a negative dimension"));
        }
        if let Some(n) = generator.list_len() {
            for s in std::iter::once(shape).chain(skip.as_ref()) {
                if s.first().copied() != Some(n as i64) {
                    return Err(format!(
                        "run.generator lists {n} generators but shape {s:?} has batch {}",
                        s.first().map_or("none".into(), |b| b.to_string())
                    ));
                }
            }
        }
        if *state_roundtrip && !matches!(generator, GeneratorSpec::Single { .. }) {
            return Err("run.state_roundtrip needs a generator of type single".into());
        }
        if *op == RandomOp::Normal {
            if generator.list_len().is_some() {
                return Err("run.op normal takes a single or global generator".into());
            }
            if std.is_some_and(|s| s < 0.0) {
                return Err("run.std must be >= 0".into());
            }
        } else if mean.is_some() || std.is_some() {
            return Err("run.mean and run.std only apply to op normal".into());
        }
        Ok(())
    }

    fn model(&self) -> Option<&str> {
        None
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn dtype_mut(&mut self) -> &mut DType {
        &mut self.dtype
    }

    fn run(&self, device: DeviceSpec, _models_dir: Option<&Path>, _trace: bool) -> Result<Output> {
        let RandomWorkload {
            op,
            shape,
            dtype,
            generator,
            skip,
            state_roundtrip,
            mean,
            std,
        } = self;
        let (mut gens, unseeded_seed) = generator.build()?;
        let (mean, std) = (mean.unwrap_or(0.0), std.unwrap_or(1.0));
        let draw = |gens: &mut Generators, shape: &[i64]| {
            random_draw(*op, shape, gens, device, *dtype, mean, std)
        };
        if let Some(skip) = skip {
            let _discarded = draw(&mut gens, skip)?;
        }
        let tensor = match &mut gens {
            Generators::One(g) if *state_roundtrip => {
                let state = g.get_state()?;
                let mut gens = Generators::One(g.share());
                let _first = draw(&mut gens, shape)?; // advances the shared state
                g.set_state(&state)?;
                draw(&mut gens, shape)?
            }
            _ => draw(&mut gens, shape)?,
        };
        Ok(Output {
            tensor,
            trace: None,
            initial: None,
            unseeded_seed,
        })
    }
}

fn random_draw(
    op: RandomOp,
    shape: &[i64],
    gens: &mut Generators,
    device: DeviceSpec,
    dtype: DType,
    mean: f64,
    std: f64,
) -> Result<Tensor> {
    match (op, gens) {
        (RandomOp::Randn, gens) => randn_tensor(shape, gens, device, dtype),
        (RandomOp::Rand, Generators::Global) => {
            device.ensure_available()?;
            Ok(Tensor::f_rand(shape, (dtype.kind(), device.device()))?)
        }
        (RandomOp::Rand, Generators::CpuDefault) => {
            device.ensure_available()?;
            Ok(Tensor::f_rand(shape, (dtype.kind(), tch::Device::Cpu))?
                .f_to_device(device.device())?)
        }
        (RandomOp::Rand | RandomOp::Normal, Generators::Given(_)) => Err(Error::Internal(
            "given values replace randn draws only".into(),
        )),
        (RandomOp::Rand, Generators::One(g)) => {
            let on = g.device();
            Ok(g.rand(shape, dtype, on)?.f_to_device(device.device())?)
        }
        (RandomOp::Rand, Generators::List(gs)) => {
            let mut one = shape.to_vec();
            one[0] = 1;
            let parts = gs
                .iter_mut()
                .map(|g| {
                    let on = g.device();
                    g.rand(&one, dtype, on)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::f_cat(&parts, 0)?.f_to_device(device.device())?)
        }
        (RandomOp::Normal, Generators::CpuDefault) => {
            device.ensure_available()?;
            let mut t = Tensor::f_empty(shape, (dtype.kind(), tch::Device::Cpu))?;
            t = t.f_normal_(mean, std)?;
            Ok(t.f_to_device(device.device())?)
        }
        (RandomOp::Normal, Generators::Global) => {
            device.ensure_available()?;
            let mut t = Tensor::f_empty(shape, (dtype.kind(), device.device()))?;
            Ok(t.f_normal_(mean, std)?)
        }
        (RandomOp::Normal, Generators::One(g)) => {
            let mut t = Tensor::f_empty(shape, (dtype.kind(), g.device().device()))?;
            g.normal_(&mut t, mean, std)?;
            Ok(t.f_to_device(device.device())?)
        }
        (RandomOp::Normal, Generators::List(_)) => Err(Error::InvalidArgument(
            "op normal takes a single or global generator".into(),
        )),
    }
}
