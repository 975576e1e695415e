//! The flags that choose what runs: suites, a scenario filter and the fixtures tree; and what
//! the commands share (the runner, paths that must exist).
use crate::error::{Error, Result};
use crate::harness::run::observe::Runner;
use crate::harness::suite::{Fixtures, Selection};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct SelectArgs {
    /// Suite to run (repeatable; default: every suite in <fixtures>/suites).
    #[arg(long = "suite", value_name = "NAME")]
    pub(crate) suites: Vec<String>,
    /// Regular expression on scenario names ("suite/scenario" matches too).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) filter: Option<String>,
    /// The fixtures directory (suites/ and golden/).
    #[arg(long, env = "REPRODIFF_FIXTURES", value_name = "DIR")]
    pub(crate) fixtures: Option<PathBuf>,
}

impl SelectArgs {
    pub(crate) fn selection(&self) -> Selection {
        Selection {
            suites: self.suites.clone(),
            filter: self.filter.clone(),
        }
    }

    pub(crate) fn fixtures(&self) -> Result<Fixtures> {
        let root = match &self.fixtures {
            Some(dir) => dir.clone(),
            None if Path::new("fixtures/suites").is_dir() => PathBuf::from("fixtures"),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        };
        if !root.join("suites").is_dir() {
            let expected = "no suites/ directory there";
            return Err(Error::flag("fixtures", root.display(), expected));
        }
        Ok(Fixtures::new(root))
    }
}

/// Runs scenarios in this process, or in a child of this executable when they must.
pub(crate) fn runner() -> Runner {
    Runner {
        exe: std::env::current_exe().ok(),
    }
}

/// A path given on the command line must exist before any work starts: exit 2 naming the flag.
pub(crate) fn exists(flag: &str, path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{flag} {}: no such file or folder",
            path.display()
        )))
    }
}
