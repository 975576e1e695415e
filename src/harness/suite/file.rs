//! A suite file read: its header checked, `[defaults]` merged into each `[[scenario]]`, and
//! each `matrix` expanded (the only implementation of the expansion).
use super::Scenario;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Value;

pub const SCHEMA: i64 = 1;

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
    fn duplicate_names_are_rejected() {
        let text = SUITE.replace("r/seed{seed}/{shape}", "same");
        let msg = Suite::parse(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("appears twice"), "{msg}");
    }
}
