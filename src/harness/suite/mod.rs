//! Suites: data files listing named scenarios (fixtures/suites/*.toml).
//!
//! A suite has `[defaults]` merged into every `[[scenario]]` (scenario keys win), and a scenario
//! with a `matrix` expands into one scenario per combination: the string "$key" anywhere in it
//! becomes the matrix value, "{key}" in its name the value's label. This is the only
//! implementation of the expansion: the oracle reads the expanded scenarios from
//! `reprodiff list --json`. docs/concepts.md ("Suites") documents the format.
//!
//! [`workload`]: what a scenario runs; [`fixtures`]: the tree suites and goldens live in, and
//! the selection a command makes of them.
pub mod fixtures;
pub mod workload;

use crate::error::{Error, Result};
use crate::metrics::Metric;
use crate::portable::Kernels;
use crate::torch::{DeterminismSpec, DeviceSpec};
pub use fixtures::{Fixtures, Selection};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Value;
use workload::Workload;

pub const SCHEMA: i64 = 1;

/// A tolerance for one metric. Intrinsic metrics (sum_abs, max_abs, mean_abs) pass when
/// `|got - golden| <= abs + rel * |golden|`; l_inf and cosine_distance when `got <= max`;
/// psnr when `got >= min` (dB).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tolerance {
    // Order matters for the untagged match: `max`/`min` are required keys, Band's are not.
    Max {
        max: f64,
    },
    Min {
        min: f64,
    },
    Band {
        #[serde(default)]
        abs: f64,
        #[serde(default)]
        rel: f64,
    },
}

/// How a run is judged against the expectation of another environment class, when its own
/// class has none ([`crate::harness::compare::choose`] picks the nearest recorded class).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CrossClass {
    /// The bits must still be identical: the suite claims they do not depend on the class's
    /// vendor, oneDNN ISA, MKL path or thread count (measured for CPU random draws), only on
    /// the components in [`crate::env::BITS_DEPEND_ON`] (device, arch, ATen capability,
    /// libtorch): only an expectation that shares those is compared with.
    Bits,
    /// PyTorch's accuracy rule (`torch._dynamo.utils.same`) against the float64 truth,
    /// `rmse(truth, got) <= k * rmse(truth, expectation) + floor`, with the floor in units of
    /// the scenario's sensitivity (the rmse by which one ulp of initial noise moves the output):
    /// `floor = noise_ulps * sensitivity`. Another CPU's rounding acts like a few ulps of noise,
    /// and how far that carries is the scenario's own figure (`reprodiff calibrate`).
    ///
    /// `step_ulps` is the same idea step by step, where the golden holds the per-step truth:
    /// at every step whose noise response is still small next to the latent
    /// ([`crate::harness::compare::POWERLESS_SENSITIVITY`]), `rmse(truth_t, got_t) <= step_ulps *
    /// noise_response_t`, per dtype of the run (rounding of f16 or bf16 carries differently).
    /// The run's own trace is held to the truth alone, so the step rule judges scenarios whose
    /// output is too chaotic to compare, as far as their trajectory stays comparable.
    ///
    /// `local_ulps` is the local rule's (`harness::compare::local`), per dtype: each step
    /// and the output computed from the truth's own input to them, `rmse(truth_t, local_t) <=
    /// k * diffusers' local error_t + local_ulps * local response_t`.
    Truth {
        k: f64,
        noise_ulps: f64,
        #[serde(default)]
        step_ulps: PerDtype,
        #[serde(default)]
        local_ulps: PerDtype,
    },
}

/// A value per dtype of the run, where one is set (`{ f32 = 3.0, bf16 = 6.0 }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerDtype {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f32: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f16: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16: Option<f64>,
}

impl PerDtype {
    pub fn get(&self, dtype: crate::torch::DType) -> Option<f64> {
        match dtype {
            crate::torch::DType::F32 => self.f32,
            crate::torch::DType::F16 => self.f16,
            crate::torch::DType::Bf16 => self.bf16,
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [("f32", self.f32), ("f16", self.f16), ("bf16", self.bf16)]
            .into_iter()
            .filter_map(|(n, v)| Some((n, v?)))
    }
}

/// One named thing to run and check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What runs.
    pub run: Workload,
    /// Where it runs.
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub determinism: DeterminismSpec,
    /// The kernels it runs on: libtorch's (`native`, the default) or reprodiff's `portable`
    /// ones, whose runs have one class on every host (`crate::env::EnvClass::Portable`).
    #[serde(default, skip_serializing_if = "Kernels::is_native")]
    pub kernels: Kernels,
    /// What is checked against the golden.
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub tolerance: BTreeMap<Metric, Tolerance>,
    /// How the run is compared with another class's expectation; `None`: it is not, and a
    /// host of a class without an expectation gets the verdict "no expectation".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_class: Option<CrossClass>,
    /// The scenario is compared only with its own class's expectation (or a published one),
    /// never across classes, for the measured reason given here (e.g. its sensitivity makes
    /// any cross-class tolerance powerless). On a host whose class has no expectation it is
    /// skipped before it runs, with this reason. A test holds the reason to the golden's truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_class_only: Option<String>,
    /// Check only this part of the output, numpy-style: "0, -3:, -3:, -1" is
    /// `image[0, -3:, -3:, -1]` (what diffusers' slow tests pin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Store the output array in the golden (needed by l_inf, cosine_distance, psnr and to
    /// locate the first differing element). Default: true.
    #[serde(default = "yes")]
    pub store_array: bool,
}

fn yes() -> bool {
    true
}

impl Scenario {
    /// The tolerance for `metric`, defaulting to exact (zero width).
    pub fn tolerance_for(&self, metric: Metric) -> Tolerance {
        self.tolerance
            .get(&metric)
            .copied()
            .unwrap_or(match metric {
                Metric::Psnr => Tolerance::Min { min: f64::INFINITY },
                Metric::LInf | Metric::CosineDistance => Tolerance::Max { max: 0.0 },
                _ => Tolerance::Band { abs: 0.0, rel: 0.0 },
            })
    }

    /// The determinism the oracle computes this scenario under: the scenario's own, and for
    /// portable kernels the noise contract's ATen capability
    /// ([`crate::torch::PORTABLE_NOISE_CAPABILITY`]), so that diffusers' run and its float64 truth
    /// start from the portable run's noise. (`reprodiff list --json`'s `oracle_determinism`.)
    pub fn oracle_determinism(&self) -> DeterminismSpec {
        let mut d = self.determinism.clone();
        if self.kernels == Kernels::Portable {
            d.cpu_capability = Some(crate::torch::PORTABLE_NOISE_CAPABILITY);
        }
        d
    }

    /// Whether the scenario can be run as written (the suite loader's check; `run` uses it).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.kernels == Kernels::Portable {
            if self.device != DeviceSpec::Cpu {
                return Err(format!(
                    "kernels = \"portable\" runs on the CPU, not on device {}",
                    self.device
                ));
            }
            if self.determinism.cpu_capability.is_some() {
                return Err(
                    "kernels = \"portable\" does not depend on the ATen capability: \
                            determinism.cpu_capability would only hide that"
                        .into(),
                );
            }
            if self.run.dtype() != crate::torch::DType::F32 {
                return Err(format!(
                    "kernels = \"portable\" computes in float32 only (order rule v{}), not {}",
                    crate::portable::ops::ORDER_RULE,
                    self.run.dtype()
                ));
            }
        }
        if self.metrics.is_empty() {
            return Err("`metrics` is empty: a scenario must check something".into());
        }
        for (metric, tol) in &self.tolerance {
            let ok = match tol {
                Tolerance::Band { abs, rel } => metric.is_intrinsic() && *abs >= 0.0 && *rel >= 0.0,
                Tolerance::Max { max } => {
                    matches!(metric, Metric::LInf | Metric::CosineDistance) && *max >= 0.0
                }
                Tolerance::Min { .. } => *metric == Metric::Psnr,
            };
            if !ok {
                return Err(format!(
                    "tolerance.{metric}: {tol:?} does not fit this metric (sum_abs/max_abs/mean_abs \
                     take {{ abs, rel }} >= 0, l_inf/cosine_distance {{ max }}, psnr {{ min }})"
                ));
            }
        }
        if let Some(CrossClass::Truth {
            k,
            noise_ulps,
            step_ulps,
            local_ulps,
        }) = self.cross_class
        {
            if !(k >= 1.0 && noise_ulps >= 0.0 && k.is_finite() && noise_ulps.is_finite()) {
                return Err(format!(
                    "cross_class: k = {k}, noise_ulps = {noise_ulps}: k must be >= 1 and \
                     noise_ulps >= 0"
                ));
            }
            if let Some((dtype, v)) = step_ulps.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
                return Err(format!(
                    "cross_class: step_ulps.{dtype} = {v}: must be finite and > 0"
                ));
            }
            // A floor: 0 where k alone passes every pair of recorded classes.
            if let Some((dtype, v)) = local_ulps
                .iter()
                .find(|(_, v)| !(v.is_finite() && *v >= 0.0))
            {
                return Err(format!(
                    "cross_class: local_ulps.{dtype} = {v}: must be finite and >= 0"
                ));
            }
            if !self.store_array {
                return Err(
                    "cross_class rule \"truth\" compares arrays but store_array = false".into(),
                );
            }
        }
        if self
            .own_class_only
            .as_deref()
            .is_some_and(|r| r.trim().is_empty())
        {
            return Err("own_class_only: give the measured reason, not an empty string".into());
        }
        if let Some(s) = &self.slice {
            parse_slice(s).map_err(|m| format!("slice: {m}"))?;
        }
        if self.metrics.iter().any(|m| m.needs_array()) && !self.store_array {
            return Err("metrics compare against the golden array but store_array = false".into());
        }
        self.run.validate()
    }
}

/// One axis of a numpy-style slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Index(i64),
    Range(Option<i64>, Option<i64>),
}

/// Parses "0, -3:, -3:, -1" (indices and start:stop ranges, no steps).
pub fn parse_slice(text: &str) -> std::result::Result<Vec<Axis>, String> {
    let int = |s: &str| -> std::result::Result<Option<i64>, String> {
        let s = s.trim();
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse()
                .map(Some)
                .map_err(|_| format!("'{s}' is not an integer"))
        }
    };
    text.split(',')
        .map(|part| match part.split_once(':') {
            Some((a, b)) => Ok(Axis::Range(int(a)?, int(b)?)),
            None => int(part)?
                .map(Axis::Index)
                .ok_or_else(|| "empty index".to_string()),
        })
        .collect()
}

/// Applies a parsed slice to a tensor.
pub fn apply_slice(t: &tch::Tensor, axes: &[Axis]) -> crate::error::Result<tch::Tensor> {
    let mut out = t.shallow_clone();
    let mut dim = 0i64;
    for axis in axes {
        let size = *out.size().get(dim as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "slice has more axes than the output's {:?}",
                t.size()
            ))
        })?;
        let norm = |i: i64| {
            if i < 0 {
                (i + size).clamp(0, size)
            } else {
                i.min(size)
            }
        };
        match *axis {
            Axis::Index(i) => {
                if i >= size || i < -size {
                    return Err(Error::InvalidArgument(format!(
                        "slice index {i} is out of range for size {size}"
                    )));
                }
                out = out.f_select(dim, if i < 0 { i + size } else { i })?;
            }
            Axis::Range(a, b) => {
                let (a, b) = (norm(a.unwrap_or(0)), norm(b.unwrap_or(size)));
                out = out.f_narrow(dim, a, (b - a).max(0))?;
                dim += 1;
            }
        }
    }
    Ok(out.f_contiguous()?)
}

/// A parsed suite file.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub scenarios: Vec<Scenario>,
}

/// The most scenarios one suite may expand to: a matrix beyond it is refused before it is
/// expanded, so a typo in one suite cannot exhaust the memory of every command.
pub const MAX_SCENARIOS: u64 = 100_000;

/// A suite file read and its header checked, its scenarios not yet expanded: what every command
/// reads of every suite file, so that only the selected suites pay for their matrices.
#[derive(Debug, Clone)]
pub struct SuiteFile {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    defaults: toml::Table,
    raw: Vec<Value>,
}

impl SuiteFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::invalid_file(path, msg);
        let mut root: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for key in root.keys() {
            if !["schema", "name", "description", "defaults", "scenario"].contains(&key.as_str()) {
                return Err(bad(format!(
                    "unknown top-level key `{key}` (expected schema, name, description, \
                     defaults, scenario)"
                )));
            }
        }
        match root.get("schema") {
            Some(Value::Integer(SCHEMA)) => {}
            other => {
                return Err(bad(format!(
                    "`schema` must be {SCHEMA}, found {}",
                    other.map_or("nothing".into(), |v| v.to_string())
                )))
            }
        }
        let name = match root.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(bad("`name` must be a non-empty string".into())),
        };
        if let Some(why) = crate::paths::why_not_a_name(&name).or_else(|| {
            name.contains('/')
                .then(|| "holds a `/` (a suite name is one file name)".to_string())
        }) {
            return Err(bad(format!("`name` '{}' {why}", name.escape_debug())));
        }
        let description = match root.get("description") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let defaults = match root.remove("defaults") {
            None => toml::Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => return Err(bad("`defaults` must be a table".into())),
        };
        let raw = match root.remove("scenario") {
            Some(Value::Array(a)) => a,
            _ => return Err(bad("no [[scenario]] entries".into())),
        };
        let file = SuiteFile {
            name,
            description,
            path: path.to_path_buf(),
            defaults,
            raw,
        };
        Ok(file)
    }

    /// How many scenarios the file expands to, counted without expanding; more than
    /// [`MAX_SCENARIOS`] is an error naming the file.
    pub fn count_scenarios(&self) -> Result<u64> {
        let mut total: u64 = 0;
        for entry in &self.raw {
            let n = match entry.get("matrix").or_else(|| self.defaults.get("matrix")) {
                Some(Value::Table(m)) => m.values().try_fold(1u64, |n, v| match v {
                    Value::Array(a) => n.checked_mul(a.len() as u64),
                    _ => Some(n),
                }),
                _ => Some(1),
            };
            total = n.and_then(|n| total.checked_add(n)).unwrap_or(u64::MAX);
            if total > MAX_SCENARIOS {
                return Err(Error::invalid_file(
                    &self.path,
                    format!(
                        "expands to more than {MAX_SCENARIOS} scenarios (the limit per suite); \
                         split the matrix or the suite"
                    ),
                ));
            }
        }
        Ok(total)
    }

    /// The suite with its scenarios expanded and validated.
    pub fn expand(self) -> Result<Suite> {
        self.count_scenarios()?;
        let path = self.path;
        let bad = |msg: String| Error::invalid_file(&path, msg);
        let mut scenarios = Vec::new();
        for (i, entry) in self.raw.into_iter().enumerate() {
            let Value::Table(own) = entry else {
                return Err(bad(format!("scenario #{}: must be a table", i + 1)));
            };
            let mut merged = self.defaults.clone();
            merged.extend(own);
            let label = merged
                .get("name")
                .and_then(Value::as_str)
                .map_or(format!("scenario #{}", i + 1), |n| {
                    format!("scenario '{}'", n.escape_debug())
                });
            for table in expand(merged).map_err(|m| bad(format!("{label}: {m}")))? {
                scenarios.push(scenario_of(table).map_err(bad)?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &scenarios {
            if !seen.insert(s.name.as_str()) {
                return Err(bad(format!("scenario name '{}' appears twice", s.name)));
            }
        }
        Ok(Suite {
            name: self.name,
            description: self.description,
            path,
            scenarios,
        })
    }
}

/// One expanded scenario table as a validated scenario; the message names it.
fn scenario_of(table: toml::Table) -> std::result::Result<Scenario, String> {
    let name = table
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let label = name.escape_debug().to_string();
    if let Some(why) = crate::paths::why_not_a_name(&name) {
        return Err(format!(
            "scenario '{}': the name {why} (a name becomes a path under --out)",
            label.chars().take(80).collect::<String>()
        ));
    }
    let scenario: Scenario = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("scenario '{label}': {}", e.message()))?;
    scenario
        .validate()
        .map_err(|m| format!("scenario '{label}': {m}"))?;
    Ok(scenario)
}

impl Suite {
    pub fn load(path: &Path) -> Result<Self> {
        SuiteFile::load(path)?.expand()
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        SuiteFile::parse(text, path)?.expand()
    }

    /// Every suite file in `dir` (*.toml), sorted by file name, headers read but not expanded. Two files of one suite name are refused: both would run and
    /// count twice.
    pub fn load_dir(dir: &Path) -> Result<Vec<SuiteFile>> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let files: Vec<SuiteFile> = paths
            .iter()
            .map(|p| SuiteFile::load(p))
            .collect::<Result<_>>()?;
        let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
        for f in &files {
            if let Some(first) = seen.insert(&f.name, &f.path) {
                return Err(Error::invalid_file(
                    &f.path,
                    format!(
                        "suite name '{}' is taken already by {}: every suite needs a name of \
                         its own",
                        f.name,
                        first.display()
                    ),
                ));
            }
        }
        Ok(files)
    }
}

/// Expands `matrix` (if any) into one table per combination, last key varying fastest.
fn expand(mut table: toml::Table) -> std::result::Result<Vec<toml::Table>, String> {
    let Some(matrix) = table.remove("matrix") else {
        return Ok(vec![table]);
    };
    let Value::Table(matrix) = matrix else {
        return Err("`matrix` must be a table of lists".into());
    };
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (key, values) in &matrix {
        let Value::Array(values) = values else {
            return Err(format!("matrix.{key} must be a list"));
        };
        if values.is_empty() {
            return Err(format!("matrix.{key} is empty"));
        }
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    Ok(combos
        .into_iter()
        .map(|combo| {
            let mut t = table.clone();
            for (key, value) in &combo {
                for (_, v) in t.iter_mut() {
                    substitute(v, key, value);
                }
                if let Some(Value::String(name)) = t.get_mut("name") {
                    *name = name.replace(&format!("{{{key}}}"), &label(value));
                }
            }
            t
        })
        .collect())
}

fn substitute(v: &mut Value, key: &str, value: &Value) {
    match v {
        Value::String(s) if s.strip_prefix('$') == Some(key) => *v = value.clone(),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, key, value)),
        Value::Table(t) => t.iter_mut().for_each(|(_, x)| substitute(x, key, value)),
        _ => {}
    }
}

/// How a matrix value reads in a scenario name: lists join with "x", floats as Python's repr.
fn label(v: &Value) -> String {
    match v {
        Value::Array(a) => a.iter().map(label).collect::<Vec<_>>().join("x"),
        Value::String(s) => s.clone(),
        Value::Float(f) => format!("{f:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = r#"
schema = 1
name = "t"
[defaults]
metrics = ["bits"]
[[scenario]]
name = "r/seed{seed}/{shape}"
matrix = { seed = [0, 1], shape = [[2, 3], [4]] }
run = { kind = "random", op = "randn", shape = "$shape", generator = { type = "single", seed = "$seed" } }
"#;

    #[test]
    fn matrix_expands_last_key_fastest_with_labels() {
        let s = Suite::parse(SUITE, Path::new("t.toml")).unwrap();
        let names: Vec<_> = s.scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["r/seed0/2x3", "r/seed0/4", "r/seed1/2x3", "r/seed1/4"]
        );
    }

    #[test]
    fn unknown_field_is_named_with_the_file_and_scenario() {
        let text = SUITE.replace("op = \"randn\"", "op = \"randn\", shaep = [1]");
        let err = Suite::parse(&text, Path::new("fixtures/suites/t.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("fixtures/suites/t.toml: scenario 'r/seed0/2x3'"),
            "{msg}"
        );
        assert!(msg.contains("shaep"), "{msg}");
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }

    #[test]
    fn a_tolerance_of_the_wrong_kind_is_rejected() {
        let text = SUITE.replace(
            "metrics = [\"bits\"]",
            "metrics = [\"bits\"]\ntolerance = { l_inf = { abs = 1.0 } }",
        );
        let msg = Suite::parse(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tolerance.l_inf"), "{msg}");
    }

    #[test]
    fn numpy_style_slices_select_like_numpy() {
        let t = tch::Tensor::arange(2 * 4 * 4 * 3, (tch::Kind::Float, tch::Device::Cpu))
            .view([2, 4, 4, 3]);
        let axes = parse_slice("0, -3:, -3:, -1").unwrap();
        let s = apply_slice(&t, &axes).unwrap();
        assert_eq!(s.size(), vec![3, 3]);
        // image[0, 1, 1, 2] is the first element: ((0*4 + 1)*4 + 1)*3 + 2 = 17.
        assert_eq!(s.double_value(&[0, 0]), 17.0);
        assert!(parse_slice("0, x:").is_err());
        assert!(apply_slice(&t, &parse_slice("5").unwrap()).is_err());
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let text = SUITE.replace("r/seed{seed}/{shape}", "same");
        let msg = Suite::parse(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("appears twice"), "{msg}");
    }
}
