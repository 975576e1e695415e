//! One error type for the library, grouped by who has to act, and the process exit codes.
use std::path::PathBuf;

/// `reprodiff` exit codes. Documented in docs/commands.md; CI and scripts rely on them.
pub mod exit {
    /// Every scenario identical or within tolerance (scenarios not run for a stated reason count).
    pub const OK: i32 = 0;
    /// At least one scenario drifted, failed or had no golden.
    pub const FAILED: i32 = 1;
    /// Bad usage or bad input: a flag, a suite, a golden, a model folder.
    pub const USAGE: i32 = 2;
    /// `bless` refused (outputs not repeatable, NaN/Inf, or running in CI); nothing was written.
    pub const REFUSED: i32 = 3;
    /// libtorch or the file system failed underneath us.
    pub const INTERNAL: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the user's input is at fault (exit 2) ---
    /// A file (suite, golden, config, weights) is malformed; names the file and the field.
    #[error("{}: {message}", path.display())]
    InvalidFile { path: PathBuf, message: String },
    /// A flag's value is not one it takes: the flag (without its dashes), the value, what it
    /// expects.
    #[error("--{flag} {value}: {expected}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        expected: String,
    },
    /// An environment variable's value is not one it takes: its name, the value, what it expects.
    #[error("{name}={value}: {expected}")]
    InvalidEnv {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// A flag or a parameter is out of range or inconsistent, beyond one flag's value.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request needs something this host does not have (CUDA, a CPU capability).
    #[error("{0}")]
    Unavailable(String),

    // --- bless refused (exit 3) ---
    #[error("bless refused: {0}")]
    BlessRefused(String),

    // --- the machinery underneath failed (exit 4) ---
    #[error("libtorch: {0}")]
    Torch(String),
    /// reprodiff's own machinery: a child process that failed, an image encoder.
    #[error("{0}")]
    Internal(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidFile { .. }
            | Error::InvalidFlag { .. }
            | Error::InvalidEnv { .. }
            | Error::InvalidArgument(_)
            | Error::Unavailable(_) => exit::USAGE,
            Error::BlessRefused(_) => exit::REFUSED,
            Error::Torch(_) | Error::Internal(_) | Error::Io { .. } => exit::INTERNAL,
        }
    }

    pub fn invalid_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::InvalidFile {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A libtorch call that wrote `path` failed: a file-system error is the file's (it names
    /// the file, with no "libtorch:" prefix); anything else is libtorch's.
    pub fn writing(path: &std::path::Path, e: tch::TchError) -> Self {
        match e {
            tch::TchError::Io(source) => Error::io(path, source),
            e => Error::Torch(format!("writing {}: {e}", path.display())),
        }
    }

    /// `--flag value` is not a value the flag takes: `expected` says what it takes.
    pub fn flag(
        flag: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidFlag {
            flag,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// `name=value` in the environment is not a value it takes: `expected` says what it takes.
    pub fn env(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidEnv {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file libtorch cannot write is the file system's error: it names the file, with no
    /// "libtorch:" prefix, and is exit 4 like every failure underneath reprodiff.
    #[test]
    fn a_file_libtorch_cannot_write_is_named_without_a_libtorch_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder/x.npy");
        let e = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu))
            .write_npy(&path)
            .map_err(|e| Error::writing(&path, e))
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(!text.contains("libtorch"), "{text}");
        assert_eq!(e.exit_code(), exit::INTERNAL);
    }

    /// A flag's or a variable's bad value is typed: it carries the flag (or the name), the
    /// value and what was expected, reads as `--flag value: expected` (`NAME=value: expected`),
    /// and is the user's to fix (exit 2).
    #[test]
    fn a_bad_flag_or_variable_carries_its_name_and_value() {
        let e = Error::flag("eta", -1.5, "must be >= 0");
        assert!(
            matches!(&e, Error::InvalidFlag { flag: "eta", value, .. } if value == "-1.5"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "--eta -1.5: must be >= 0");
        assert_eq!(e.exit_code(), exit::USAGE);
        let e = Error::env("REPRODIFF_THREADS", "0", "must be a whole number >= 1");
        assert!(
            matches!(
                &e,
                Error::InvalidEnv {
                    name: "REPRODIFF_THREADS",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "REPRODIFF_THREADS=0: must be a whole number >= 1"
        );
        assert_eq!(e.exit_code(), exit::USAGE);
    }
}
