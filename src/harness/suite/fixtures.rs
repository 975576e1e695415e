//! The fixtures tree a run reads (fixtures/suites/*.toml, fixtures/golden/, fixtures/models/)
//! and the selection of suites and scenarios a command names.
use super::{Scenario, Suite};
use crate::error::{Error, Result};
use crate::harness::store::GoldenStore;
use regex::Regex;
use std::path::{Path, PathBuf};

/// Which scenarios to run: suites by name (all when empty) and a regex on scenario names.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub suites: Vec<String>,
    pub filter: Option<String>,
}

/// A fixtures tree: fixtures/suites/*.toml and fixtures/golden/.
#[derive(Debug, Clone)]
pub struct Fixtures {
    pub root: PathBuf,
    /// Where the goldens are: `<root>/golden` unless told otherwise.
    pub golden: PathBuf,
}

impl Fixtures {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Fixtures {
            golden: root.join("golden"),
            root,
        }
    }

    pub fn suites_dir(&self) -> PathBuf {
        self.root.join("suites")
    }

    pub fn store(&self) -> GoldenStore {
        GoldenStore::new(&self.golden)
    }

    /// The selected suites, each with its selected scenarios (suites left empty are dropped).
    pub fn select(&self, sel: &Selection) -> Result<Vec<Suite>> {
        let all = Suite::load_dir(&self.suites_dir())?;
        for wanted in &sel.suites {
            if !all.iter().any(|s| &s.name == wanted) {
                let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                let expected = format!(
                    "no such suite in {} (known: {})",
                    self.suites_dir().display(),
                    known.join(", ")
                );
                return Err(Error::flag("suite", wanted, expected));
            }
        }
        let filter = sel
            .filter
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("--filter: {e}")))?;
        let models = self.root.join("models");
        let mut suites = Vec::new();
        for file in all {
            if !(sel.suites.is_empty() || sel.suites.contains(&file.name)) {
                continue;
            }
            let mut suite = file.expand()?;
            for scenario in &suite.scenarios {
                check_model_reference(&suite, scenario, &models)?;
            }
            suite.scenarios.retain(|sc| {
                filter.as_ref().is_none_or(|f| {
                    f.is_match(&sc.name) || f.is_match(&format!("{}/{}", suite.name, sc.name))
                })
            });
            suites.push(suite);
        }
        Ok(suites
            .into_iter()
            .filter(|s| !s.scenarios.is_empty())
            .collect())
    }
}

/// A suite's model reference must name something that exists: a folder under fixtures/models/
/// or a path, a known derived architecture, or a hub id (`hub:org/name`, looked up at run time:
/// one not in the local cache is "not run", since the host may simply not have it). A typo is a
/// suite error (exit 2), never "not run".
fn check_model_reference(suite: &Suite, scenario: &Scenario, models: &Path) -> Result<()> {
    let Some(model) = scenario.run.model() else {
        return Ok(());
    };
    let bad = |m: String| {
        Err(Error::invalid_file(
            &suite.path,
            format!("scenario '{}': run.model {m}", scenario.name),
        ))
    };
    match crate::loading::ModelRef::parse(model) {
        Err(m) => bad(m),
        Ok(crate::loading::ModelRef::Folder(name))
            if crate::paths::why_not_relative(name).is_some() =>
        {
            bad(format!(
                "'{model}' {}: a suite names a folder under {} (hub models are written \
                 hub:org/name, derived ones derived:ARCH)",
                crate::paths::why_not_relative(name).unwrap_or_default(),
                models.display()
            ))
        }
        Ok(crate::loading::ModelRef::Folder(name)) if !models.join(name).is_dir() => bad(format!(
            "'{model}': no such folder in {} (hub models are written hub:org/name)",
            models.display()
        )),
        Ok(_) => Ok(()),
    }
}
