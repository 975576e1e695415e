//! Golden fixtures: `fixtures/golden/<suite>.json` plus output arrays under
//! `fixtures/golden/<suite>/`. Written only through [`GoldenStore::save`]: by `reprodiff golden
//! merge` (the oracle's results, goldens from other hosts) or `reprodiff bless`, always
//! atomically; read by everything else.
//!
//! Crash safety: an array's file name carries the first 12 hex digits of its SHA-256, so new
//! arrays are written beside the old ones, then the JSON is replaced in one rename, then arrays
//! no longer referenced are removed. A crash at any point leaves a consistent old or new state.
use crate::env::{EnvClass, Fingerprint};
use crate::error::{Error, Result};
use crate::torch::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SCHEMA: u32 = 2;
pub const GENERATED_NOTE: &str =
    "Do not edit by hand. Regenerate with the command in each expectation's provenance.";

/// `fixtures/golden/<suite>.json`, schema 2: per scenario, one expectation per environment
/// class (see [`crate::env::class`]) and optionally the float64 truth that calibrates
/// comparisons across classes. Schema 1 (one entry per scenario) reads as one expectation whose
/// class comes from its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenFile {
    pub schema: u32,
    pub suite: String,
    pub generated: String,
    /// Fingerprints referenced by provenance, by id.
    pub environments: BTreeMap<String, Fingerprint>,
    pub scenarios: BTreeMap<String, GoldenScenario>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenScenario {
    pub shape: Vec<i64>,
    pub dtype: DType,
    /// The float64 run of the same scenario (same float32 noise, cast): the reference that
    /// cross-class tolerances are measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<Truth>,
    /// At most one per class, sorted by class.
    pub expectations: Vec<Expectation>,
    /// The identity of the model the expectations were made with
    /// ([`crate::loading::model_sha256`]); a run on other weights says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    /// A float64 .npy, relative to fixtures/golden/.
    pub array: String,
    pub sha256: String,
    /// rmse between the float32 output and the float32 output of the same run whose initial
    /// noise is one ulp higher everywhere: how strongly the scenario amplifies rounding.
    pub sensitivity: f64,
    /// The same figure per pipeline component (e.g. text_encoder, unet, vae): the rmse of the
    /// output when that component's output is nudged one float32 ulp (relative) in its first
    /// call, so a user sees which component amplifies rounding.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, f64>,
    /// The truth step by step, made by the same oracle run; absent where the oracle that made
    /// the truth recorded no steps, and for a rerun difference (compared exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepTruth>,
    pub provenance: Provenance,
}

impl GoldenScenario {
    /// Every array the scenario names: its expectations', its truth's and the per-step truth's.
    pub fn arrays(&self) -> impl Iterator<Item = &str> {
        let truth = self
            .truth
            .iter()
            .flat_map(|t| std::iter::once(t.array.as_str()).chain(t.step_arrays().map(|(a, _)| a)));
        self.expectations
            .iter()
            .filter_map(|e| e.array.as_deref())
            .chain(truth)
    }
}

impl Truth {
    /// The float64 arrays its per-step truth names (path, sha256): the latents and the local
    /// pass's inputs.
    pub fn step_arrays(&self) -> impl Iterator<Item = (&str, &str)> {
        let st = self.steps.as_ref();
        let local = st.and_then(|st| st.local.as_ref());
        fn named(a: &TruthArray) -> (&str, &str) {
            (a.array.as_str(), a.sha256.as_str())
        }
        st.map(|st| (st.array.as_str(), st.sha256.as_str()))
            .into_iter()
            .chain(local.map(|l| named(&l.initial)))
            .chain(local.and_then(|l| l.noise.as_ref()).map(named))
    }
}

/// The float64 truth of a pipeline's latent after every denoising step, and each step's noise
/// response: what the cross-class step rule holds a run's own trace against, and (with its
/// `local` inputs) where the local pass starts each step from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTruth {
    /// A float64 .npy of shape [steps, elements], relative to fixtures/golden/: every element
    /// of each step's latent, or (truths recorded by an older oracle) the
    /// [`crate::pipelines::trace::STEP_TRUTH_ELEMENTS`] that
    /// [`crate::pipelines::trace::step_subset`] picks.
    pub array: String,
    pub sha256: String,
    /// Per step, the rmse (on the same elements) by which the float32 run's latent moves when
    /// its initial noise is one ulp (of the run's dtype) higher everywhere.
    pub noise_response: Vec<f64>,
    /// The truth's own inputs the local pass needs besides its latents; absent in truths
    /// recorded before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalInputs>,
}

/// A float64 array a truth keeps, relative to fixtures/golden/, and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthArray {
    pub array: String,
    pub sha256: String,
}

/// What the local pass takes from the truth besides its per-step latents (ci/oracle/local.py).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalInputs {
    /// The truth's initial latent: its first draw, made in the run's dtype and cast.
    pub initial: TruthArray,
    /// The eta noise the truth drew at each step, [steps, *latent]; absent where the run
    /// draws none (eta 0, PNDM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<TruthArray>,
}

/// One class's local error, measured in diffusers by the oracle (ci/oracle/local.py): each step
/// computed from the truth's input to it, and the output (decode and post-processing) from the
/// truth's final latent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFigures {
    /// Per step, rmse(truth's latent after the step, the step from the truth's input).
    pub error: Vec<f64>,
    /// Per step, the rmse by which that step moves when its input is one ulp (of the run's
    /// dtype) higher everywhere: the local rule's unit.
    pub response: Vec<f64>,
    /// The same two for the output stage.
    pub output_error: f64,
    pub output_response: f64,
}

impl LocalFigures {
    /// Every figure finite and >= 0, one per step of `steps`.
    fn check(&self, steps: Option<usize>) -> std::result::Result<(), String> {
        let figures = self.error.iter().chain(&self.response);
        let all = figures.chain([&self.output_error, &self.output_response]);
        if all.into_iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err("local: every figure must be finite and >= 0".into());
        }
        if self.error.len() != self.response.len() || steps.is_some_and(|n| n != self.error.len()) {
            return Err(format!(
                "local: {} errors and {} responses for {} steps",
                self.error.len(),
                self.response.len(),
                steps.map_or("no".into(), |n| n.to_string())
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub class: EnvClass,
    /// SHA-256 of the output's raw bytes in its own dtype; `None` for published values, which
    /// come without bits.
    pub sha256: Option<String>,
    /// sum_abs, max_abs, mean_abs at full precision.
    pub metrics: BTreeMap<String, f64>,
    /// The output array (.npy, relative to fixtures/golden/); bf16 is stored upcast to f32.
    pub array: Option<String>,
    /// For a published array (which has no `sha256`, since it comes without bits): the SHA-256
    /// of its values in the scenario's dtype as `golden merge` took them in, so a changed byte
    /// is found like any other golden array's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_sha256: Option<String>,
    /// This class's local error in diffusers (the oracle's local pass); absent where the oracle
    /// that recorded the class had none, and for blessed and published expectations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalFigures>,
    /// Per step, rmse(truth's latent, this class's latent) of diffusers' own run against the
    /// truth the oracle made beside it: what the step rule is calibrated from (`reprodiff
    /// calibrate`). Absent where the oracle recorded no per-step latents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_error: Option<Vec<f64>>,
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

/// Who may produce an expectation. `bless` replaces only its own.
pub const PRODUCERS: &[&str] = &["oracle", "reprodiff", "published"];

impl GoldenScenario {
    pub fn expectation(&self, class: &EnvClass) -> Option<&Expectation> {
        self.expectations.iter().find(|e| &e.class == class)
    }

    /// Inserts or replaces the expectation of `e.class`, keeping the list sorted by class.
    pub fn put(&mut self, e: Expectation) {
        self.expectations.retain(|x| x.class != e.class);
        self.expectations.push(e);
        self.expectations.sort_by_key(|x| x.class.to_string());
    }
}

impl GoldenFile {
    pub fn new(suite: &str) -> Self {
        GoldenFile {
            schema: SCHEMA,
            suite: suite.into(),
            generated: GENERATED_NOTE.into(),
            environments: BTreeMap::new(),
            scenarios: BTreeMap::new(),
        }
    }

    /// Parses and validates a golden file's text (schema 1 or 2); errors name `path` and the
    /// scenario at fault.
    pub fn parse(text: &str, path: &Path, suite: &str) -> Result<Self> {
        let bad = |m: String| Error::invalid_file(path, m);
        let mut root: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| bad(format!("{e} (line {}, column {})", e.line(), e.column())))?;
        let schema = root.get("schema").and_then(|v| v.as_u64());
        let file_suite = root.get("suite").and_then(|v| v.as_str()).unwrap_or("");
        if file_suite != suite {
            return Err(bad(format!(
                "`suite` is '{file_suite}', expected '{suite}'"
            )));
        }
        let environments: BTreeMap<String, Fingerprint> =
            serde_json::from_value(root["environments"].take())
                .map_err(|e| bad(format!("environments: {e}")))?;
        let scenarios = match root["scenarios"].take() {
            serde_json::Value::Object(m) => m,
            _ => return Err(bad("`scenarios` must be an object".into())),
        };
        let mut file = GoldenFile {
            environments,
            ..GoldenFile::new(suite)
        };
        for (name, value) in scenarios {
            let at = |m: String| bad(format!("scenarios.\"{name}\": {m}"));
            let scenario = match schema {
                Some(2) => serde_json::from_value::<GoldenScenario>(value)
                    .map_err(|e| at(e.to_string()))?,
                Some(1) => {
                    let old: EntryV1 =
                        serde_json::from_value(value).map_err(|e| at(e.to_string()))?;
                    old.upgrade(&file.environments).map_err(at)?
                }
                other => {
                    return Err(bad(format!(
                        "schema {} is not a supported one (1 or {SCHEMA})",
                        other.map_or("missing".into(), |s| s.to_string())
                    )))
                }
            };
            scenario.validate(&file.environments).map_err(at)?;
            file.scenarios.insert(name, scenario);
        }
        Ok(file)
    }

    /// The canonical text: keys sorted, two-space indent, a final newline. Rust and the oracle
    /// both write through this (the oracle by `reprodiff golden merge`), so a review diff shows
    /// exactly the entries that changed.
    pub fn to_canonical_json(&self) -> String {
        let value = serde_json::to_value(self).expect("a golden file serialises");
        let mut text = serde_json::to_string_pretty(&value).expect("a JSON value serialises");
        text.push('\n');
        text
    }

    /// Drops fingerprints no provenance refers to.
    pub fn prune_environments(&mut self) {
        let used: std::collections::HashSet<String> = self
            .scenarios
            .values()
            .flat_map(|s| {
                s.expectations
                    .iter()
                    .map(|e| &e.provenance)
                    .chain(s.truth.as_ref().map(|t| &t.provenance))
            })
            .filter_map(|p| p.environment.clone())
            .collect();
        self.environments.retain(|id, _| used.contains(id));
    }
}

impl GoldenScenario {
    fn validate(
        &self,
        environments: &BTreeMap<String, Fingerprint>,
    ) -> std::result::Result<(), String> {
        let bad_sha = |s: &str| s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit());
        let mut seen = std::collections::HashSet::new();
        for e in &self.expectations {
            let class = e.class.to_string();
            if !seen.insert(class.clone()) {
                return Err(format!("two expectations for class {class}"));
            }
            check_provenance(&e.provenance, environments)
                .map_err(|m| format!("class {class}: {m}"))?;
            if e.sha256.as_deref().is_some_and(bad_sha)
                || e.array_sha256.as_deref().is_some_and(bad_sha)
            {
                return Err(format!("class {class}: sha256 is not 64 hex digits"));
            }
            if let Some(why) = e.array.as_deref().and_then(crate::paths::why_not_relative) {
                return Err(format!("class {class}: array {why}"));
            }

            if (e.provenance.producer == "published") != (e.class == EnvClass::Any) {
                return Err(format!(
                    "class {class}: published values, and only they, have class `any`"
                ));
            }
        }
        if self.model_sha256.as_deref().is_some_and(bad_sha) {
            return Err("model_sha256 is not 64 hex digits".into());
        }
        if let Some(t) = &self.truth {
            check_provenance(&t.provenance, environments).map_err(|m| format!("truth: {m}"))?;
            for a in std::iter::once(t.array.as_str()).chain(t.step_arrays().map(|a| a.0)) {
                if let Some(why) = crate::paths::why_not_relative(a) {
                    return Err(format!("truth: array '{}' {why}", a.escape_debug()));
                }
            }
            if bad_sha(&t.sha256) || !t.sensitivity.is_finite() || t.sensitivity < 0.0 {
                return Err("truth: sha256 must be 64 hex digits and sensitivity >= 0".into());
            }
            if let Some(st) = &t.steps {
                if bad_sha(&st.sha256)
                    || st.noise_response.is_empty()
                    || st.noise_response.iter().any(|r| !r.is_finite() || *r < 0.0)
                {
                    return Err("truth.steps: sha256 must be 64 hex digits and every \
                                noise_response finite and >= 0"
                        .into());
                }
            }
        }
        let steps = self
            .truth
            .as_ref()
            .and_then(|t| t.steps.as_ref())
            .map(|st| st.noise_response.len());
        for e in &self.expectations {
            if let Some(l) = &e.local {
                l.check(steps)
                    .map_err(|m| format!("class {}: {m}", e.class))?;
            }
            if let Some(v) = &e.step_error {
                if v.iter().any(|x| !x.is_finite() || *x < 0.0)
                    || steps.is_some_and(|n| n != v.len())
                {
                    return Err(format!(
                        "class {}: step_error must hold one finite figure >= 0 per step",
                        e.class
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_provenance(
    p: &Provenance,
    environments: &BTreeMap<String, Fingerprint>,
) -> std::result::Result<(), String> {
    if !PRODUCERS.contains(&p.producer.as_str()) {
        return Err(format!(
            "provenance.producer '{}' is not one of {}",
            p.producer,
            PRODUCERS.join(", ")
        ));
    }
    if p.tool.trim().is_empty() || p.command.trim().is_empty() {
        return Err("provenance needs a tool and the command that regenerates it".into());
    }
    if let Some(env) = &p.environment {
        if !environments.contains_key(env) {
            return Err(format!(
                "provenance.environment '{env}' is not in `environments`"
            ));
        }
    }
    Ok(())
}

/// A schema-1 scenario entry: one expectation, its class implied by its fingerprint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1 {
    shape: Vec<i64>,
    dtype: DType,
    sha256: Option<String>,
    metrics: BTreeMap<String, f64>,
    array: Option<String>,
    provenance: Provenance,
}

impl EntryV1 {
    fn upgrade(
        self,
        environments: &BTreeMap<String, Fingerprint>,
    ) -> std::result::Result<GoldenScenario, String> {
        // Schema 1 did not record the device; every CUDA golden of schema 1 came from the GPU
        // named in its fingerprint, and those suites run on cuda:0.
        let class = match &self.provenance.environment {
            None => EnvClass::Any,
            Some(id) => {
                let fp = environments.get(id).ok_or_else(|| {
                    format!("provenance.environment '{id}' is not in `environments`")
                })?;
                let device = if fp.cuda.available && !fp.cuda.devices.is_empty() {
                    crate::torch::DeviceSpec::Cuda(0)
                } else {
                    crate::torch::DeviceSpec::Cpu
                };
                fp.class(device)
            }
        };
        Ok(GoldenScenario {
            shape: self.shape,
            dtype: self.dtype,
            truth: None,
            expectations: vec![Expectation {
                class,
                sha256: self.sha256,
                metrics: self.metrics,
                array: self.array,
                array_sha256: None,
                local: None,
                step_error: None,
                provenance: self.provenance,
            }],
            model_sha256: None,
        })
    }
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
        match std::fs::read_to_string(&path) {
            Ok(text) => GoldenFile::parse(&text, &path, suite).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Reads a golden array as (values in f64, shape).
    pub fn read_array(&self, relative: &str) -> Result<(Vec<f64>, Vec<i64>)> {
        let path = self.path_of(relative)?;
        if !path.exists() {
            return Err(Error::invalid_file(&path, "golden array is missing"));
        }
        let t = tch::Tensor::read_npy(&path)
            .map_err(|e| Error::invalid_file(&path, format!("not a readable .npy: {e}")))?;
        Ok((crate::torch::tensor_to_f64(&t)?, t.size()))
    }

    /// Where an array named in a golden lies: inside the store, whatever the JSON says.
    pub fn path_of(&self, relative: &str) -> Result<PathBuf> {
        crate::paths::join(&self.dir, relative, "golden array")
    }

    /// Checks every array that `names` (scenarios of `file`) reference, expectations, truths
    /// and step truths, against its recorded SHA-256, before anything is compared with them: a
    /// changed byte is an error naming the file (exit 2), never a verdict.
    pub fn verify<'a>(
        &self,
        file: &GoldenFile,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        for name in names {
            let Some(s) = file.scenarios.get(name) else {
                continue;
            };
            let at = format!("{}/{name}", file.suite);
            for e in &s.expectations {
                let Some(rel) = &e.array else { continue };
                let Some(sha) = e.sha256.as_ref().or(e.array_sha256.as_ref()) else {
                    return Err(Error::invalid_file(
                        self.json_path(&file.suite),
                        format!(
                            "{at} [{}]: the array {rel} has no sha256 to verify it by; \
                             regenerate it with `{}`",
                            e.class, e.provenance.command
                        ),
                    ));
                };
                let _ = verified_tensor(&self.path_of(rel)?, s.dtype, sha, &at)?;
            }
            if let Some(t) = &s.truth {
                let _ = verified_tensor(&self.path_of(&t.array)?, DType::F64, &t.sha256, &at)?;
                for (rel, sha) in t.step_arrays() {
                    let _ = verified_tensor(&self.path_of(rel)?, DType::F64, sha, &at)?;
                }
            }
        }
        Ok(())
    }

    /// The golden of `suite` with the arrays of the scenarios `names` verified ([`Self::verify`]).
    pub fn load_verified<'a>(
        &self,
        suite: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<GoldenFile>> {
        let file = self.load(suite)?;
        if let Some(f) = &file {
            self.verify(f, names)?;
        }
        Ok(file)
    }

    /// An exclusive advisory lock on `suite`'s golden (`<suite>.json.lock` beside it), held
    /// until the value is dropped: `bless` and `golden merge` read, change and write the JSON
    /// and its arrays under it, so two at once keep both's work.
    pub fn lock(&self, suite: &str) -> Result<GoldenLock> {
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.dir.join(format!("{suite}.json.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; released when `file` closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(&path, std::io::Error::last_os_error()));
        }
        Ok(GoldenLock { _file: file })
    }

    /// The array file name for a scenario output with this SHA-256.
    pub fn array_name(suite: &str, scenario: &str, sha256: &str) -> String {
        format!("{suite}/{}.{}.npy", slug(scenario), &sha256[..12])
    }

    /// Writes an array (already in its storage dtype) atomically under its content name. A file
    /// already there is left as it is: its name carries its content's hash.
    pub fn write_array(&self, relative: &str, tensor: &tch::Tensor) -> Result<()> {
        let path = self.path_of(relative)?;
        if path.is_file() {
            return Ok(());
        }
        let parent = path.parent().expect("array paths have a parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(".npy")
            .tempfile_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        tensor
            .write_npy(tmp.path())
            .map_err(|e| Error::writing(&path, e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(tmp.path(), e))?;
        abort_before_rename_if_asked("array");
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(parent)
    }

    /// Removes an array that `file` no longer references (after `save`: a retired expectation's
    /// output); one that an entry still names stays.
    pub fn remove_unreferenced_array(&self, file: &GoldenFile, relative: &str) -> Result<()> {
        let named = file
            .scenarios
            .values()
            .any(|s| s.arrays().any(|a| a == relative));
        let path = self.path_of(relative)?;
        if named || !path.is_file() {
            return Ok(());
        }
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))
    }

    /// Removes what an interrupted write left (`.tmp-*` beside the JSON files and in the suite's
    /// array folder), saying so on stderr.
    fn remove_stray_temps(&self, suite: &str) -> Result<()> {
        for dir in [self.dir.clone(), self.dir.join(suite)] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let p = entry.path();
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                    eprintln!("removed {}: left by an interrupted write", p.display());
                }
            }
        }
        Ok(())
    }

    /// Replaces the suite's JSON in one rename, then removes arrays it no longer references.
    pub fn save(&self, file: &GoldenFile) -> Result<()> {
        let path = self.json_path(&file.suite);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        self.remove_stray_temps(&file.suite)?;
        write_atomic(&path, file.to_canonical_json().as_bytes())?;

        let referenced: std::collections::HashSet<PathBuf> = file
            .scenarios
            .values()
            .flat_map(GoldenScenario::arrays)
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

/// A held lock on one suite's golden ([`GoldenStore::lock`]).
pub struct GoldenLock {
    _file: std::fs::File,
}

/// Reads an .npy and checks that its values in `dtype` hash to `sha256` (bf16 outputs are
/// stored upcast to f32, so they are cast back first); the error names the file.
pub fn read_verified(
    path: &Path,
    dtype: DType,
    sha256: &str,
    scenario: &str,
) -> Result<(tch::Tensor, Vec<f64>)> {
    let t = verified_tensor(path, dtype, sha256, scenario)?;
    let values = crate::torch::tensor_to_f64(&t)?;
    Ok((t, values))
}

fn verified_tensor(path: &Path, dtype: DType, sha256: &str, scenario: &str) -> Result<tch::Tensor> {
    if !path.is_file() {
        return Err(Error::invalid_file(
            path,
            format!("{scenario}: the array is missing"),
        ));
    }
    let t = tch::Tensor::read_npy(path)
        .map_err(|e| Error::invalid_file(path, format!("{scenario}: not a readable .npy: {e}")))?;
    let got = crate::torch::tensor_sha256(&t.f_to_kind(dtype.kind())?)?;
    if got != sha256 {
        return Err(Error::invalid_file(
            path,
            format!(
                "{scenario}: the array's sha256 is {got}, the golden says {sha256}: the file \
                 changed since it was written (restore it with `git checkout`, or regenerate it \
                 with the command in its provenance)"
            ),
        ));
    }
    Ok(t)
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

/// Writes `bytes` to `path`: a temporary file in the same directory, fsync, rename, fsync of
/// the directory.
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
    abort_before_rename_if_asked("json");
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    sync_dir(parent)
}

/// fsync of a folder after a rename in it, so the new name survives a power cut.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Set by tests to `array` or `json`: that kind of golden write aborts the process between its
/// temporary file and the rename, as a kill at that moment would (no destructor runs, so the
/// temporary file stays).
pub const ABORT_BEFORE_RENAME_ENV: &str = "REPRODIFF_TEST_ABORT_BEFORE_RENAME";

fn abort_before_rename_if_asked(kind: &str) {
    if std::env::var(ABORT_BEFORE_RENAME_ENV).is_ok_and(|v| v == kind) {
        std::process::abort();
    }
}
