//! Running one scenario and describing its output: an [`Observation`].
//!
//! A scenario that asks for a CPU capability other than the one this process dispatches to
//! (ATEN_CPU_CAPABILITY is read once, when libtorch starts), or a CUDA scenario whose
//! determinism needs CUBLAS_WORKSPACE_CONFIG / CUDA_LAUNCH_BLOCKING that this process was not
//! started with (they only act before CUDA starts), runs in a child process: the hidden
//! `reprodiff observe` command, which writes the observation and the output array.
use super::local::{LocalInputsAt, LocalObservation};
use crate::error::{Error, Result};
use crate::harness::suite::Scenario;
use crate::metrics;
use crate::portable::Kernels;
use crate::torch::knobs::{Knob, Knobs};
use crate::torch::{tensor_sha256, tensor_to_f64, CpuCapability, DType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Set in the environment of a child `reprodiff observe`, so it never spawns another.
pub const CHILD_ENV: &str = "REPRODIFF_CHILD";
/// Written by a child `reprodiff observe` that could not run its scenario on this host.
pub const NOT_RUN_FILE: &str = "not-run.txt";
/// Where a parent writes the local pass's inputs for a child (`reprodiff observe --local`).
pub const LOCAL_INPUTS_FILE: &str = "local-inputs.json";

/// What one run of a scenario produced.
#[derive(Debug, Serialize, Deserialize)]
pub struct Observation {
    pub shape: Vec<i64>,
    pub dtype: DType,
    pub sha256: String,
    /// sum_abs, max_abs, mean_abs.
    pub metrics: BTreeMap<String, f64>,
    pub finite: bool,
    pub unseeded_seed: Option<u64>,
    pub elapsed_s: f64,
    /// A pipeline's latent after each denoising step (sum_abs and a fixed sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<crate::pipelines::StepTrace>>,
    /// The environment the run happened in (a child's own, when it ran in one).
    pub environment: crate::env::Fingerprint,
    /// The model's identity ([`crate::loading::model_sha256`]), for a pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// The local pass, where it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<super::local::LocalObservation>,
    #[serde(skip)]
    pub values: Vec<f64>,
    /// The output in its storage dtype (bf16 upcast to f32), for bless.
    #[serde(skip)]
    pub stored: Option<Tensor>,
}

/// Why a scenario did not produce an observation.
#[derive(Debug)]
pub enum NotObserved {
    /// The host lacks what the scenario needs (CUDA, a CPU capability, model weights).
    NotRun(String),
    /// The scenario failed to run.
    Failed(Error),
}

impl From<Error> for NotObserved {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => NotObserved::NotRun(m),
            other => NotObserved::Failed(other),
        }
    }
}

/// `scenario` as it runs under `knobs` (a dtype, a device, a determinism preset) and
/// REPRODIFF_THREADS, with the determinism it runs under. One rule, for the run and for the
/// plan made before it (`session::plan`).
pub fn as_run(scenario: &Scenario, knobs: &Knobs) -> Result<(Scenario, crate::torch::Determinism)> {
    let mut s = scenario.clone();
    if let Some(d) = knobs.dtype() {
        *s.run.dtype_mut() = d;
    }
    if knobs.has(Knob::Portable) {
        s.kernels = Kernels::Portable;
    }
    if let (Some(dev), crate::torch::DeviceSpec::Cpu) = (knobs.device(), s.device) {
        s.device = dev;
    }
    let mut det = s.determinism.resolve();
    if let Some(preset) = knobs.determinism() {
        det = crate::torch::Determinism {
            threads: det.threads,
            cpu_capability: det.cpu_capability,
            ..crate::torch::Determinism::preset(preset)
        };
    }
    if let Some(n) = crate::harness::run::matrix::threads_override()? {
        det.threads = Some(n);
    }
    Ok((s, det))
}

/// Puts `knobs` in force for `scenario` (as run, [`as_run`]), its kernels included
/// ([`Knobs::for_kernels`]).
pub fn apply_knobs(scenario: &Scenario, knobs: &Knobs) -> Result<()> {
    knobs.clone().for_kernels(scenario.kernels).apply()
}

/// How to run scenarios: in this process, or in a child when the scenario needs one.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The reprodiff executable for child processes (`None`: never spawn; such scenarios
    /// report "not run").
    pub exe: Option<PathBuf>,
}

impl Runner {
    /// Runs `scenario`, and with `local` its local pass after it ([`super::local`]).
    pub fn observe(
        &self,
        suite_path: &Path,
        scenario: &Scenario,
        local: Option<&LocalInputsAt>,
    ) -> Result<Observation, NotObserved> {
        // As the binary does from its start (src/cli), for runs made through the library.
        crate::torch::memory::keep_freed_memory();
        let knobs = Knobs::from_env()?;
        if let Some(why) = knobs.unavailable() {
            return Err(NotObserved::NotRun(format!(
                "knobs {}: {why}",
                knobs.tokens().join("+")
            )));
        }
        let (scenario, det) = as_run(scenario, &knobs)?;
        let scenario = &scenario;
        let in_child = std::env::var_os(CHILD_ENV).is_some();
        if let Some(want) = det.cpu_capability {
            let now = crate::torch::cpu_capability()?;
            if now != want.name() {
                if in_child {
                    return Err(NotObserved::NotRun(format!(
                        "CPU capability '{want}' requested, but libtorch dispatches to '{now}' \
                         even with {}={want}: this CPU lacks it",
                        CpuCapability::ENV
                    )));
                }
                return self.observe_in_child(
                    suite_path,
                    scenario,
                    local,
                    &format!("{}={want}", CpuCapability::ENV),
                    &det,
                );
            }
        }
        scenario.device.ensure_available()?;
        // CUBLAS_WORKSPACE_CONFIG and CUDA_LAUNCH_BLOCKING only take effect if they are set
        // before CUDA starts, and an earlier scenario of this process may have started it.
        if scenario.device.is_cuda() && !in_child {
            let missing: Vec<String> = det
                .child_env()
                .into_iter()
                .filter(|(k, v)| std::env::var(k).ok().as_deref() != Some(v.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !missing.is_empty() {
                return self.observe_in_child(
                    suite_path,
                    scenario,
                    local,
                    &missing.join(" "),
                    &det,
                );
            }
        }
        det.apply()?;
        apply_knobs(scenario, &knobs)?;
        let start = std::time::Instant::now();
        // Models named by a bare name live in fixtures/models/, beside fixtures/suites/.
        let models = suite_path
            .parent()
            .and_then(Path::parent)
            .map(|f| f.join("models"));
        let out = scenario.run.run(scenario.device, models.as_deref(), true)?;
        let elapsed = start.elapsed().as_secs_f64();
        let tensor = sliced(scenario, out.tensor)?;
        let mut obs = describe(tensor, out.unseeded_seed, elapsed)?;
        obs.trace = out.trace;
        if let Some(inputs) = local {
            let forced = scenario.run.kind().run_forced(
                scenario.device,
                models.as_deref(),
                inputs.load()?,
            )?;
            if let Some(f) = forced {
                let output = sliced(scenario, f.tensor)?;
                obs.local = Some(LocalObservation::of(&output, f.trace.unwrap_or_default())?);
            }
        }
        obs.model_sha256 = scenario
            .run
            .model()
            .map(|m| crate::loading::model_sha256(m, models.as_deref()))
            .transpose()?;
        Ok(obs)
    }

    fn observe_in_child(
        &self,
        suite_path: &Path,
        scenario: &Scenario,
        local: Option<&LocalInputsAt>,
        need: &str,
        det: &crate::torch::Determinism,
    ) -> Result<Observation, NotObserved> {
        let Some(exe) = &self.exe else {
            return Err(NotObserved::NotRun(format!(
                "needs a child process with {need}, and no reprodiff executable was given"
            )));
        };
        let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let mut command = std::process::Command::new(exe);
        command
            .arg("observe")
            .arg("--suite-file")
            .arg(suite_path)
            .arg("--scenario")
            .arg(&scenario.name)
            .arg("--out")
            .arg(dir.path());
        if let Some(inputs) = local {
            let path = dir.path().join(LOCAL_INPUTS_FILE);
            let json = serde_json::to_string(inputs).expect("paths serialise");
            std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
            command.arg("--local").arg(&path);
        }
        let status = command
            .env(CHILD_ENV, "1")
            .envs(det.child_env())
            .status()
            .map_err(|e| Error::io(exe, e))?;
        let not_run = dir.path().join(NOT_RUN_FILE);
        match status.code() {
            Some(0) => read_observation(dir.path()).map_err(NotObserved::Failed),
            _ if not_run.exists() => {
                let why = std::fs::read_to_string(&not_run).unwrap_or_default();
                Err(NotObserved::NotRun(why.trim().to_string()))
            }
            _ => Err(NotObserved::Failed(Error::Internal(format!(
                "child `reprodiff observe` for '{}' exited with {status}",
                scenario.name
            )))),
        }
    }
}

/// The scenario's slice of an output (all of it without one).
fn sliced(scenario: &Scenario, tensor: Tensor) -> Result<Tensor> {
    match &scenario.slice {
        Some(s) => {
            let axes = crate::harness::suite::parse_slice(s).map_err(Error::InvalidArgument)?;
            crate::harness::suite::apply_slice(&tensor, &axes)
        }
        None => Ok(tensor),
    }
}

/// Computes the observation of an output tensor.
pub fn describe(tensor: Tensor, unseeded_seed: Option<u64>, elapsed_s: f64) -> Result<Observation> {
    let dtype = DType::from_kind(tensor.kind()).ok_or_else(|| {
        Error::Torch(format!(
            "output dtype {:?} is not a float dtype",
            tensor.kind()
        ))
    })?;
    let sha256 = tensor_sha256(&tensor)?;
    let values = tensor_to_f64(&tensor)?;
    let finite = values.iter().all(|v| v.is_finite());
    let metrics = BTreeMap::from([
        ("sum_abs".to_string(), metrics::sum_abs(&values)),
        ("max_abs".to_string(), metrics::max_abs(&values)),
        ("mean_abs".to_string(), metrics::mean_abs(&values)),
    ]);
    let cpu = tensor.f_to_device(tch::Device::Cpu)?;
    let stored = if dtype == DType::Bf16 {
        cpu.f_to_kind(Kind::Float)?
    } else {
        cpu
    };
    Ok(Observation {
        shape: tensor.size(),
        dtype,
        sha256,
        metrics,
        finite,
        unseeded_seed,
        elapsed_s,
        trace: None,
        environment: crate::env::Fingerprint::current()?,
        model_sha256: None,
        local: None,
        values,
        stored: Some(stored),
    })
}

/// Writes an observation for a parent process: observation.json and output.npy in `dir`.
pub fn write_observation(dir: &Path, obs: &Observation) -> Result<()> {
    let json = serde_json::to_string_pretty(obs).expect("an observation serialises");
    let path = dir.join("observation.json");
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    if let Some(t) = &obs.stored {
        let npy = dir.join("output.npy");
        t.write_npy(&npy).map_err(|e| Error::writing(&npy, e))?;
    }
    Ok(())
}

pub fn read_observation(dir: &Path) -> Result<Observation> {
    let path = dir.join("observation.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut obs: Observation =
        serde_json::from_str(&text).map_err(|e| Error::invalid_file(&path, e))?;
    let npy = dir.join("output.npy");
    let t = Tensor::read_npy(&npy).map_err(|e| Error::invalid_file(&npy, e))?;
    obs.values = tensor_to_f64(&t)?;
    obs.stored = Some(t);
    Ok(obs)
}
