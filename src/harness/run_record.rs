//! A run recorded outside reprodiff: one diffusers pipeline call as python/reprodiff-record
//! writes it (`run.json` and its arrays in one folder). This type is the format's one
//! definition: `reprodiff schema run-record` prints its JSON Schema, which the Python package's
//! tests validate what it writes against, and [`read`] is how reprodiff takes a record in.
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use crate::torch::DType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `schema` field of every run record.
pub const SCHEMA_NAME: &str = "reprodiff-run-record";
/// The version this reprodiff writes and reads.
pub const VERSION: u32 = 1;

/// One recorded pipeline call (version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Always "reprodiff-run-record".
    pub schema: String,
    /// The format's version: 1.
    pub version: u32,
    /// A name the user gave the run, if any.
    pub name: Option<String>,
    /// Where it ran, as `reprodiff env --json` spells it; reprodiff computes the class.
    pub environment: Fingerprint,
    pub pipeline: PipelineInfo,
    pub model: ModelInfo,
    /// The call's keyword arguments; a generator as `{device, seed, state_sha256}`.
    pub call: serde_json::Map<String, serde_json::Value>,
    /// The latent the first scheduler step was given.
    pub initial_latents: Option<ArrayRef>,
    /// The latent after every scheduler step, in order.
    pub steps: Vec<StepRef>,
    /// The pipeline's output (images before any file encoding, or latents).
    pub output: Option<ArrayRef>,
    /// The float64 replay of the same call (`record(..., truth=True)`), if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<TruthRun>,
}

/// The same call in float64 on the CPU, from the recorded call's initial latents and step noise
/// (python/reprodiff-record's truth.py): its latent after every scheduler step and its output
/// (images as floats: a "pil" call's truth is its "np" image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TruthRun {
    pub steps: Vec<StepRef>,
    pub output: Option<ArrayRef>,
}

impl RunRecord {
    /// The class reprodiff gives the run (the one class rule, `env::class`).
    pub fn class(&self) -> crate::env::EnvClass {
        let device = serde_json::from_value::<crate::torch::DeviceSpec>(serde_json::Value::String(
            self.pipeline.device.clone(),
        ))
        .unwrap_or(crate::torch::DeviceSpec::Cpu);
        self.environment.class(device)
    }
}

/// The pipeline and scheduler classes and the scheduler's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineInfo {
    pub class: String,
    /// The device the pipeline ran on ("cpu", "cuda:0", "mps").
    pub device: String,
    /// The dtype of its weights.
    pub dtype: DType,
    pub scheduler: SchedulerInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerInfo {
    pub class: String,
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// Where the model came from, and per component the SHA-256 of its weights as loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The folder or hub id it was loaded from (`_name_or_path`).
    pub source: Option<String>,
    /// Component name -> SHA-256 over its state dict (each name, then its raw bytes).
    pub weights_sha256: BTreeMap<String, String>,
}

/// An array of the record: a .npy relative to the record's folder (bf16 stored as f32,
/// exactly), its dtype and shape, and the SHA-256 of its raw bytes in that dtype.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArrayRef {
    pub file: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub sha256: String,
}

/// The latent after one scheduler step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRef {
    /// 1 for the first step.
    pub step: usize,
    /// The scheduler's timestep (an integer for DDIM/DDPM/PNDM, a float for Euler's sigmas).
    pub timestep: f64,
    pub file: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub sha256: String,
}

/// The JSON Schema of a run record, as `reprodiff schema run-record` prints it.
pub fn json_schema() -> serde_json::Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(RunRecord)).expect("a schema serialises");
    schema["$id"] = format!("https://reprodiff.invalid/schemas/{SCHEMA_NAME}/v{VERSION}").into();
    schema
}

/// A record read from its folder, with every array verified.
#[derive(Debug, Clone)]
pub struct Read {
    pub dir: PathBuf,
    pub record: RunRecord,
}

/// Reads `<dir>/run.json` and checks every array it names: present, inside the folder, of the
/// recorded shape, hashing to the recorded SHA-256. Anything else is an error naming the file
/// (exit 2).
pub fn read(dir: &Path) -> Result<Read> {
    let path = dir.join("run.json");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::invalid_file(dir, "no run.json here: not a recorded run")
        }
        _ => Error::io(&path, e),
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid_file(&path, format!("not JSON: {e}")))?;
    if value["schema"] != SCHEMA_NAME || value["version"] != VERSION {
        return Err(Error::invalid_file(
            &path,
            format!(
                "schema {} version {} is not one this reprodiff reads ({SCHEMA_NAME} version \
                 {VERSION})",
                value["schema"], value["version"]
            ),
        ));
    }
    let record: RunRecord = serde_json::from_value(value)
        .map_err(|e| Error::invalid_file(&path, format!("not a run record: {e}")))?;
    let truth_steps = record.truth.iter().flat_map(|t| &t.steps);
    let arrays = record
        .initial_latents
        .iter()
        .chain(&record.output)
        .chain(record.truth.iter().filter_map(|t| t.output.as_ref()))
        .map(|a| (a.file.as_str(), a.dtype, &a.shape, a.sha256.as_str()))
        .chain(
            record
                .steps
                .iter()
                .chain(truth_steps)
                .map(|s| (s.file.as_str(), s.dtype, &s.shape, s.sha256.as_str())),
        );
    for (file, dtype, shape, sha) in arrays {
        let array = crate::paths::join(dir, file, "run record array")?;
        let (t, _) = crate::harness::store::read_verified(&array, dtype, sha, "run record")?;
        if &t.size() != shape {
            return Err(Error::invalid_file(
                &array,
                format!("shape {:?}, the record says {shape:?}", t.size()),
            ));
        }
    }
    let numbered = |steps: &[StepRef], what: &str| -> Result<()> {
        for (i, s) in steps.iter().enumerate() {
            if s.step != i + 1 {
                return Err(Error::invalid_file(
                    &path,
                    format!("{what}[{i}] is step {}: a step is missing", s.step),
                ));
            }
        }
        Ok(())
    };
    numbered(&record.steps, "steps")?;
    if let Some(t) = &record.truth {
        numbered(&t.steps, "truth.steps")?;
    }
    Ok(Read {
        dir: dir.to_path_buf(),
        record,
    })
}

/// reprodiff's own run as a run record (`reprodiff run ... --trace DIR`): the same format as
/// python/reprodiff-record writes, so `reprodiff diff` compares reprodiff's port with diffusers
/// itself step by step.
#[derive(Debug)]
pub struct OwnRun<'a> {
    pub environment: Fingerprint,
    pub pipeline: PipelineInfo,
    pub model: ModelInfo,
    pub call: serde_json::Map<String, serde_json::Value>,
    /// The trace of the run, each step with its full latent and shape.
    pub steps: &'a [crate::pipelines::StepTrace],
    /// The latent the first step was given.
    pub initial: Option<&'a tch::Tensor>,
    /// The output, as the pipeline returned it.
    pub output: &'a tch::Tensor,
}

/// Writes `own` into the folder `dir` (created): `arrays/` first, `run.json` last by one
/// rename. Returns the path of run.json.
pub fn write(dir: &Path, own: &OwnRun) -> Result<PathBuf> {
    let arrays = dir.join("arrays");
    std::fs::create_dir_all(&arrays).map_err(|e| Error::io(&arrays, e))?;
    let dtype = own.pipeline.dtype;
    let mut steps = Vec::with_capacity(own.steps.len());
    for s in own.steps {
        if s.latent.is_empty() || s.shape.is_empty() {
            return Err(Error::Internal(format!(
                "step {}: the trace holds no latent",
                s.step + 1
            )));
        }
        let t = tch::Tensor::from_slice(&s.latent)
            .f_reshape(&s.shape)?
            .f_to_kind(dtype.kind())?;
        let a = write_array(&arrays, &format!("step-{:04}", s.step + 1), &t)?;
        steps.push(StepRef {
            step: s.step + 1,
            timestep: s.timestep as f64,
            file: a.file,
            dtype: a.dtype,
            shape: a.shape,
            sha256: a.sha256,
        });
    }
    let record = RunRecord {
        schema: SCHEMA_NAME.into(),
        version: VERSION,
        name: None,
        environment: own.environment.clone(),
        pipeline: own.pipeline.clone(),
        model: own.model.clone(),
        call: own.call.clone(),
        initial_latents: own
            .initial
            .map(|t| write_array(&arrays, "initial_latents", t))
            .transpose()?,
        steps,
        output: Some(write_array(&arrays, "output", own.output)?),
        truth: None,
    };
    let json = serde_json::to_string_pretty(&record).expect("a record serialises") + "\n";
    let path = dir.join("run.json");
    crate::harness::store::write_atomic(&path, json.as_bytes())?;
    Ok(path)
}

/// Saves `t` as `<arrays>/<stem>.npy` (bf16 as f32, exactly) and describes it as the record
/// does: its dtype, shape and the SHA-256 of its raw bytes in its own dtype.
fn write_array(arrays: &Path, stem: &str, t: &tch::Tensor) -> Result<ArrayRef> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let dtype = DType::from_kind(t.kind())
        .ok_or_else(|| Error::Internal(format!("{stem}: dtype {:?}", t.kind())))?;
    let stored = if dtype == DType::Bf16 {
        t.f_to_kind(tch::Kind::Float)?
    } else {
        t.shallow_clone()
    };
    let path = arrays.join(format!("{stem}.npy"));
    stored
        .write_npy(&path)
        .map_err(|e| Error::writing(&path, e))?;
    Ok(ArrayRef {
        file: format!("arrays/{stem}.npy"),
        dtype,
        shape: t.size(),
        sha256: crate::torch::tensor_sha256(&t)?,
    })
}
