//! Finding a model on disk, offline: a diffusers pipeline folder (model_index.json, unet/,
//! scheduler/), a single model folder (config.json + diffusion_pytorch_model.safetensors), a
//! Hugging Face model id in the local hub cache, or weights reprodiff derives itself.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFolder {
    /// The folder holding config.json and the weights of the UNet.
    pub unet: PathBuf,
    /// scheduler_config.json, if the model has one.
    pub scheduler_config: Option<PathBuf>,
}

/// How a scenario or `--model` names a model: the one grammar, which suites check when they
/// load and which [`resolve_dir`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRef<'a> {
    /// `derived:ARCH`: full-size weights reprodiff derives itself (`models::derived::ARCHS`).
    Derived(&'a str),
    /// `hub:org/name`: a snapshot in the local Hugging Face cache.
    Hub(&'a str),
    /// A path, or a name under the models folder (fixtures/models/ for suites); on the command
    /// line a bare `org/name` that is no folder is a hub id too.
    Folder(&'a str),
}

impl<'a> ModelRef<'a> {
    /// Parses `spec`; the message names what is wrong with it.
    pub fn parse(spec: &'a str) -> std::result::Result<Self, String> {
        if let Some(arch) = spec.strip_prefix("derived:") {
            let known = crate::models::derived::ARCHS;
            if !known.contains(&arch) {
                return Err(format!(
                    "'{spec}': unknown derived architecture (known: {})",
                    known.join(", ")
                ));
            }
            return Ok(ModelRef::Derived(arch));
        }
        if let Some(id) = spec.strip_prefix("hub:") {
            if !is_hub_id(id) {
                return Err(format!("'{spec}': a hub id is hub:org/name"));
            }
            return Ok(ModelRef::Hub(id));
        }
        Ok(ModelRef::Folder(spec))
    }
}

/// `org/name`, each part of letters, digits and `._-`.
fn is_hub_id(id: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    id.split_once('/').is_some_and(|(o, n)| part(o) && part(n))
}

/// The model folder `spec` names ([`ModelRef`]) for the DDIM pipeline. `models_dir` resolves
/// bare names used by suites (fixtures/models/).
pub fn resolve(spec: &str, models_dir: Option<&Path>) -> Result<ModelFolder> {
    from_dir(&resolve_dir(spec, models_dir)?)
}

/// The folder `spec` names (see [`ModelRef`]), whatever pipeline it holds.
pub fn resolve_dir(spec: &str, models_dir: Option<&Path>) -> Result<PathBuf> {
    let spec =
        match ModelRef::parse(spec).map_err(|m| Error::InvalidArgument(format!("--model {m}")))? {
            ModelRef::Derived(arch) => return crate::models::derived::materialize(arch),
            ModelRef::Hub(id) => return hub_snapshot(id),
            ModelRef::Folder(spec) => spec,
        };
    // A suite's model folder is a name under its models folder, never a path out of it.
    if let Some(models) = models_dir {
        let dir = crate::paths::join(models, spec, "run.model")?;
        if dir.is_dir() {
            return Ok(dir);
        }
        return Err(Error::InvalidArgument(format!(
            "run.model {spec}: no such folder in {}",
            models.display()
        )));
    }
    let direct = PathBuf::from(spec);
    if direct.is_dir() {
        return Ok(direct);
    }
    if is_hub_id(spec) {
        return hub_snapshot(spec);
    }
    Err(Error::flag("model", spec, "no such folder"))
}

/// A pipeline folder or a single model folder.
pub fn from_dir(dir: &Path) -> Result<ModelFolder> {
    if dir.join("model_index.json").is_file() {
        let unet = dir.join("unet");
        if !unet.is_dir() {
            return Err(Error::invalid_file(
                dir.join("model_index.json"),
                "this pipeline folder has no unet/ folder",
            ));
        }
        check_weights(&unet)?;
        let sched = dir.join("scheduler/scheduler_config.json");
        return Ok(ModelFolder {
            unet,
            scheduler_config: sched.is_file().then_some(sched),
        });
    }
    if dir.join("config.json").is_file() {
        check_weights(dir)?;
        return Ok(ModelFolder {
            unet: dir.to_path_buf(),
            scheduler_config: None,
        });
    }
    Err(Error::invalid_file(
        dir,
        "not a diffusers folder: no model_index.json (pipeline) and no config.json (model)",
    ))
}

pub use crate::models::WEIGHTS;

/// Only safetensors are read: pickle files can run code when loaded.
fn check_weights(dir: &Path) -> Result<()> {
    if dir.join(WEIGHTS).is_file() {
        return Ok(());
    }
    for pickle in [
        "diffusion_pytorch_model.bin",
        "model.ckpt",
        "model.pt",
        "pytorch_model.bin",
    ] {
        if dir.join(pickle).is_file() {
            return Err(Error::invalid_file(
                dir.join(pickle),
                format!(
                    "pickle-based weights are not read (loading them can run arbitrary code). \
                     Convert them once with diffusers: `python -c \"from diffusers import \
                     UNet2DModel as M; M.from_pretrained('{0}').save_pretrained('{0}', \
                     safe_serialization=True)\"`",
                    dir.display()
                ),
            ));
        }
    }
    Err(Error::invalid_file(dir, format!("no {WEIGHTS} here")))
}

/// The hub cache root: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
pub fn hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/huggingface/hub")
}

/// models--org--name/snapshots/<revision of refs/main, else the newest snapshot>.
pub fn hub_snapshot(id: &str) -> Result<PathBuf> {
    let repo = hub_cache().join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    let by_ref = std::fs::read_to_string(repo.join("refs/main"))
        .ok()
        .map(|r| snapshots.join(r.trim()))
        .filter(|p| p.is_dir());
    let newest = || {
        std::fs::read_dir(&snapshots).ok().and_then(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .map(|e| e.path())
        })
    };
    by_ref.or_else(newest).ok_or_else(|| {
        Error::Unavailable(format!(
            "model not found: {id} is not in the local Hugging Face cache (looked in {})",
            repo.display()
        ))
    })
}

/// The identity of the model `spec` names ([`resolve_dir`]): the SHA-256 over every file of its
/// folder (weights, configs, tokenizer), each as its path relative to the folder, its length and
/// its own SHA-256, in path order. Computed once per folder and process (the full SD 1.5 weights
/// are 4 GB). A golden keeps it, so that a run on other weights says so.
pub fn model_sha256(spec: &str, models_dir: Option<&Path>) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DONE: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let dir = resolve_dir(spec, models_dir)?;
    if let Some(h) = DONE
        .lock()
        .expect("not poisoned")
        .as_ref()
        .and_then(|m| m.get(&dir))
    {
        return Ok(h.clone());
    }
    let mut files = Vec::new();
    list_files(&dir, &dir, &mut files)?;
    files.sort();
    let mut all = Sha256::new();
    for rel in &files {
        let path = dir.join(rel);
        let (len, one) = file_sha256(&path)?;
        all.update(format!("{}\0{len}\0{one}\n", rel.display()));
    }
    let hash = format!("{:x}", all.finalize());
    DONE.lock()
        .expect("not poisoned")
        .get_or_insert_with(HashMap::new)
        .insert(dir, hash.clone());
    Ok(hash)
}

/// A file's length and SHA-256. Large files (weights) are hashed once per machine: the digest
/// is kept in the reprodiff cache under the file's path, length and modification time, and
/// used while all three stay the same.
fn file_sha256(path: &Path) -> Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    let id = crate::paths::FileIdentity::of(path)?;
    let key = format!("{}\0{}\0{}", id.path.display(), id.len, id.modified_ns);
    let memo = (id.len >= 1 << 20).then(|| {
        crate::models::derived::cache_dir()
            .join("hashes")
            .join(format!("{:x}", Sha256::digest(key.as_bytes())))
    });
    if let Some(hash) = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok()) {
        if hash.len() == 64 {
            return Ok((id.len, hash));
        }
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut one = Sha256::new();
    let len = std::io::copy(&mut f, &mut one).map_err(|e| Error::io(path, e))?;
    let hash = format!("{:x}", one.finalize());
    if let Some(m) = memo {
        // A cache that cannot be written only costs the next run the hashing (and one cut
        // short by a kill is not 64 characters long, so it is not read).
        if let Some(parent) = m.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&m, &hash);
    }
    Ok((len, hash))
}

/// Every regular file under `dir` (symlinks followed: the hub cache links its blobs), relative
/// to `root`; hidden files (`.stamp`, `.cache`) left out.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else if path.is_file() {
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
    Ok(())
}
