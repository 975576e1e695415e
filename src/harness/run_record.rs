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
    let arrays = record
        .initial_latents
        .iter()
        .chain(&record.output)
        .map(|a| (a.file.as_str(), a.dtype, &a.shape, a.sha256.as_str()))
        .chain(
            record
                .steps
                .iter()
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
    for (i, s) in record.steps.iter().enumerate() {
        if s.step != i + 1 {
            return Err(Error::invalid_file(
                &path,
                format!("steps[{i}] is step {}: a step is missing", s.step),
            ));
        }
    }
    Ok(Read {
        dir: dir.to_path_buf(),
        record,
    })
}
