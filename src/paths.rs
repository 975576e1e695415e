//! Paths built from data (scenario and suite names, array paths in goldens and records, model
//! names in suites): the one place that decides whether such a value may become part of a path.
//!
//! A suite, a golden or a records file may come from someone else (another host's golden that
//! `golden merge` takes, a suite in a pull request), and reprodiff often runs as root in CI, so
//! a value from data never leaves the folder it is joined to: no `..`, no absolute path, no NUL,
//! no empty component.
use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};

/// The longest scenario or suite name, in bytes: its file-name form plus an array's
/// `.truth.<12 hex>.npy` still fits the 255 bytes most file systems allow.
pub const MAX_NAME_BYTES: usize = 200;

/// Why `value` cannot be a relative path inside a folder, or `None` when it can.
pub fn why_not_relative(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("is empty".into());
    }
    if value.contains('\0') {
        return Some("holds a NUL byte".into());
    }
    let path = Path::new(value);
    if path.is_absolute() || value.starts_with('/') {
        return Some("is an absolute path".into());
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Some("has a `..` component".into()),
            Component::RootDir | Component::Prefix(_) => return Some("is an absolute path".into()),
        }
    }
    if value.split('/').any(str::is_empty) {
        return Some("has an empty component (`//` or a trailing `/`)".into());
    }
    None
}

/// `base/relative`, where `relative` comes from data: refused (naming `what` and the value) when
/// it would leave `base`.
pub fn join(base: &Path, relative: &str, what: &str) -> Result<PathBuf> {
    match why_not_relative(relative) {
        None => Ok(base.join(relative)),
        Some(why) => Err(Error::InvalidArgument(format!(
            "{what} '{}' {why}: it must stay inside {}",
            relative.escape_debug(),
            base.display()
        ))),
    }
}

/// Why `name` cannot be a scenario name (a relative path of at most [`MAX_NAME_BYTES`]), or
/// `None`.
pub fn why_not_a_name(name: &str) -> Option<String> {
    if name.len() > MAX_NAME_BYTES {
        return Some(format!(
            "is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        ));
    }
    // A NUL is why_not_relative's to name; any other control character is a name's own fault.
    why_not_relative(name).or_else(|| {
        name.chars()
            .any(char::is_control)
            .then(|| "holds a control character".into())
    })
}

/// A file as a cache knows it: its canonical path, length and modification time (ns). A
/// cache entry under this key is good while the file stays the same.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub len: u64,
    pub modified_ns: u128,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(FileIdentity {
            path: std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?,
            len: meta.len(),
            modified_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_would_leave_its_folder_is_refused() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "a\0b", "", "a//b", "a/"] {
            assert!(why_not_relative(bad).is_some(), "{bad:?} accepted");
            let e = join(Path::new("out"), bad, "scenario name").unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
            assert!(e.to_string().contains("scenario name"), "{e}");
        }
        for good in ["x", "a/b/c.npy", "tiny-ddim-a/steps5", "./a"] {
            assert_eq!(why_not_relative(good), None, "{good:?} refused");
            assert_eq!(
                join(Path::new("out"), good, "x").unwrap(),
                Path::new("out").join(good)
            );
        }
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(why_not_a_name(&"a".repeat(MAX_NAME_BYTES)).is_none());
        assert!(why_not_a_name(&"a".repeat(MAX_NAME_BYTES + 1))
            .unwrap()
            .contains("at most 200"));
        assert!(why_not_a_name("a\nb").is_some());
        assert!(why_not_a_name("../../escape/x").is_some());
    }
}
