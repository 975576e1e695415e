//! Activation dumps for parity hunting: with REPRODIFF_DUMP_DIR set, a model writes its
//! activations after each top-level module as `<dir>/<prefix><module>.npy` (register forward
//! hooks on the same modules in diffusers or transformers and compare file by file). Every
//! name written is appended to `<dir>/index.txt`, so the files can be walked in execution
//! order (`reprodiff localize`).
use crate::error::{Error, Result};
use std::path::PathBuf;
use tch::Tensor;

/// The file listing the dumped names in the order they were written.
pub const INDEX: &str = "index.txt";

pub struct Dump {
    dir: Option<PathBuf>,
    prefix: String,
}

impl Dump {
    /// Reads REPRODIFF_DUMP_DIR; `prefix` names the call (e.g. "981." for a UNet step).
    pub fn new(prefix: impl Into<String>) -> Self {
        Dump {
            dir: std::env::var_os("REPRODIFF_DUMP_DIR").map(PathBuf::from),
            prefix: prefix.into(),
        }
    }

    pub fn write(&self, module: &str, x: &Tensor) -> Result<()> {
        if let Some(dir) = &self.dir {
            if !dir.is_dir() {
                let expected = "no such folder (create it first)";
                return Err(Error::env("REPRODIFF_DUMP_DIR", dir.display(), expected));
            }
            let path = dir.join(format!("{}{module}.npy", self.prefix));
            // .npy has no bfloat16: such activations are written as float32 (exactly).
            let x = if x.kind() == tch::Kind::BFloat16 {
                x.f_to_kind(tch::Kind::Float)?
            } else {
                x.shallow_clone()
            };
            x.write_npy(&path).map_err(|e| Error::writing(&path, e))?;
            use std::io::Write;
            let index = dir.join(INDEX);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&index)
                .and_then(|mut f| writeln!(f, "{}{module}", self.prefix))
                .map_err(|e| Error::io(&index, e))?;
        }
        Ok(())
    }
}
