//! Golden fixtures: fixtures/golden/<suite>.json plus output arrays under
//! fixtures/golden/<suite>/. Written only by the oracle (ci/oracle/goldens.py) or by
//! `reprodiff bless`, always atomically; read by everything else.
//!
//! Crash safety: an array's file name carries the first 12 hex digits of its SHA-256, so new
//! arrays are written beside the old ones, then the JSON is replaced in one rename, then arrays
//! no longer referenced are removed. A crash at any point leaves a consistent old or new state.
use crate::env::Fingerprint;
use crate::error::{Error, Result};
use crate::torch::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SCHEMA: u32 = 1;
pub const GENERATED_NOTE: &str =
    "Do not edit by hand. Regenerate with the command in each scenario's provenance.";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenFile {
    pub schema: u32,
    pub suite: String,
    pub generated: String,
    /// Fingerprints referenced by the scenarios' provenance, by id.
    pub environments: BTreeMap<String, Fingerprint>,
    pub scenarios: BTreeMap<String, GoldenEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenEntry {
    pub shape: Vec<i64>,
    pub dtype: DType,
    /// SHA-256 of the output's raw bytes in its own dtype; `None` for published values, which
    /// come without bits.
    pub sha256: Option<String>,
    /// sum_abs, max_abs, mean_abs at full precision.
    pub metrics: BTreeMap<String, f64>,
    /// The output array (.npy, relative to fixtures/golden/); bf16 is stored upcast to f32.
    pub array: Option<String>,
    pub provenance: Provenance,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// "oracle" (diffusers / PyTorch in Python), "reprodiff" (bless) or "published".
    pub producer: String,
    /// The program and versions that computed the value.
    pub tool: String,
    /// The command that regenerates this entry.
    pub command: String,
    /// Id of the fingerprint in `environments`, if the producer ran here.
    pub environment: Option<String>,
}

/// Where a suite's goldens live.
#[derive(Debug, Clone)]
pub struct GoldenStore {
    pub dir: PathBuf,
}

impl GoldenStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        GoldenStore { dir: dir.into() }
    }

    pub fn json_path(&self, suite: &str) -> PathBuf {
        self.dir.join(format!("{suite}.json"))
    }

    /// The golden file of `suite`, or `None` when there is none yet.
    pub fn load(&self, suite: &str) -> Result<Option<GoldenFile>> {
        let path = self.json_path(suite);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let file: GoldenFile = serde_json::from_str(&text).map_err(|e| {
            Error::invalid_file(
                &path,
                format!("{e} (line {}, column {})", e.line(), e.column()),
            )
        })?;
        if file.schema != SCHEMA {
            return Err(Error::invalid_file(
                &path,
                format!("schema {} is not the supported {SCHEMA}", file.schema),
            ));
        }
        if file.suite != suite {
            return Err(Error::invalid_file(
                &path,
                format!("`suite` is '{}', expected '{suite}'", file.suite),
            ));
        }
        for (name, entry) in &file.scenarios {
            if let Some(env) = &entry.provenance.environment {
                if !file.environments.contains_key(env) {
                    return Err(Error::invalid_file(
                        &path,
                        format!("scenarios.\"{name}\".provenance.environment '{env}' is not in `environments`"),
                    ));
                }
            }
            let bad_sha = |s: &String| s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit());
            if entry.sha256.as_ref().is_some_and(bad_sha) {
                return Err(Error::invalid_file(
                    &path,
                    format!("scenarios.\"{name}\".sha256 is not 64 hex digits"),
                ));
            }
        }
        Ok(Some(file))
    }

    /// Reads a golden array as (values in f64, shape).
    pub fn read_array(&self, relative: &str) -> Result<(Vec<f64>, Vec<i64>)> {
        let path = self.dir.join(relative);
        if !path.exists() {
            return Err(Error::invalid_file(&path, "golden array is missing"));
        }
        let t = tch::Tensor::read_npy(&path)
            .map_err(|e| Error::invalid_file(&path, format!("not a readable .npy: {e}")))?;
        Ok((crate::torch::tensor_to_f64(&t)?, t.size()))
    }

    /// The array file name for a scenario output with this SHA-256.
    pub fn array_name(suite: &str, scenario: &str, sha256: &str) -> String {
        format!("{suite}/{}.{}.npy", slug(scenario), &sha256[..12])
    }

    /// Writes an array (already in its storage dtype) atomically under its content name.
    pub fn write_array(&self, relative: &str, tensor: &tch::Tensor) -> Result<()> {
        let path = self.dir.join(relative);
        let parent = path.parent().expect("array paths have a parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(".npy")
            .tempfile_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        tensor
            .write_npy(tmp.path())
            .map_err(|e| Error::Torch(format!("writing {}: {e}", path.display())))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }

    /// Replaces the suite's JSON in one rename, then removes arrays it no longer references.
    pub fn save(&self, file: &GoldenFile) -> Result<()> {
        let path = self.json_path(&file.suite);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut text = serde_json::to_string_pretty(file).expect("a golden file serialises");
        text.push('\n');
        write_atomic(&path, text.as_bytes())?;

        let referenced: std::collections::HashSet<PathBuf> = file
            .scenarios
            .values()
            .filter_map(|e| e.array.as_ref())
            .map(|a| self.dir.join(a))
            .collect();
        let arrays = self.dir.join(&file.suite);
        if let Ok(entries) = std::fs::read_dir(&arrays) {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|x| x == "npy") && !referenced.contains(&p) {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        Ok(())
    }
}

/// File-name form of a scenario name: "/" → "__", anything outside [A-Za-z0-9._-] → "-".
pub fn slug(name: &str) -> String {
    name.replace('/', "__")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
