//! Where a model's tensors come from: a diffusers safetensors file, or a deterministic
//! derivation (for full-size architectures whose real weights cannot be downloaded here).
//!
//! Models ask for each tensor once, by its diffusers state-dict name and expected shape, through
//! a [`ParamPath`]; a tensor with the wrong shape or missing is an error naming it.
use crate::error::{Error, Result};
use crate::torch::{DType, Generator};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Device, Tensor};

/// A supplier of named tensors.
pub trait ParamSource {
    /// The tensor `name` with shape `shape`, in the model's dtype.
    fn tensor(&mut self, name: &str, shape: &[i64]) -> Result<Tensor>;
}

/// Tensors read from a `.safetensors` file (copied into libtorch memory, so 64-byte aligned:
/// memory-mapped, unaligned weights move CPU results by ~1e-6).
pub struct SafetensorsSource {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
    dtype: DType,
    device: Device,
}

/// Test-only: every floating-point weight read from a safetensors file is multiplied by this
/// factor (`REPRODIFF_TEST_SCALE_WEIGHTS=1.01`), a planted defect that the cross-class rules
/// must catch (tests `a_planted_defect_*`). Unset, nothing changes.
pub const PLANT_SCALE_ENV: &str = "REPRODIFF_TEST_SCALE_WEIGHTS";

/// A safetensors file as read: its identity, and the planted scale.
type FileKey = (crate::paths::FileIdentity, Option<u64>);

thread_local! {
    /// The tensors of every safetensors file this thread has read, by [`FileKey`]: a `check`
    /// that runs several scenarios on one model reads its weights once (the full SD 1.5 weights
    /// took ~7 s a load). Models get tensors that share the cached storage and never write it:
    /// the dtype and device conversions and channels_last make new tensors, and a parameter is
    /// a detached alias (`ParamPath::get`), so a cached load gives the same bits as a fresh one,
    /// alignment and all (test `a_cached_model_gives_a_fresh_loads_bits_under_every_knob`).
    static READ: RefCell<BTreeMap<FileKey, Vec<(String, Tensor)>>> = const { RefCell::new(BTreeMap::new()) };
}

/// `REPRODIFF_NO_MODEL_CACHE=1`: every load reads its file (for measuring what the cache saves).
pub const NO_CACHE_ENV: &str = "REPRODIFF_NO_MODEL_CACHE";

/// The tensors of `path` (renamed as diffusers renames them, scaled where a test plants a
/// defect), from this thread's cache where the same file was read before.
fn read_tensors(path: &Path, scale: Option<f64>) -> Result<Vec<(String, Tensor)>> {
    let key = (
        crate::paths::FileIdentity::of(path)?,
        scale.map(f64::to_bits),
    );
    let cached = READ.with(|r| {
        r.borrow().get(&key).map(|v| {
            v.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect()
        })
    });
    if let Some(tensors) = cached {
        return Ok(tensors);
    }
    let raw = crate::torch::safetensors::read(path)?;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, t) in raw {
        let t = match scale {
            Some(f) if t.is_floating_point() => t.f_mul_scalar(f)?,
            _ => t,
        };
        tensors.push((rename_legacy(&name), t));
    }
    if std::env::var_os(NO_CACHE_ENV).is_none() {
        let copy = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        READ.with(|r| r.borrow_mut().insert(key, copy));
    }
    Ok(tensors)
}

/// SHA-256 over a safetensors file's tensors as a model in `dtype` holds them: in name order,
/// each name's UTF-8 bytes, then the tensor's raw bytes (floating tensors in `dtype`, others as
/// stored). python/reprodiff-record hashes a loaded component's state dict the same way, so a
/// run record made by either names the same weights alike.
pub fn weights_sha256(path: &Path, dtype: DType) -> Result<String> {
    let source = SafetensorsSource::load(path, dtype, Device::Cpu)?;
    let mut h = Sha256::new();
    for (name, t) in &source.tensors {
        let t = if t.is_floating_point() {
            t.f_to_kind(dtype.kind())?
        } else {
            t.shallow_clone()
        };
        h.update(name.as_bytes());
        h.update(crate::torch::tensor_bytes(&t)?);
    }
    Ok(format!("{:x}", h.finalize()))
}

impl SafetensorsSource {
    pub fn load(path: &Path, dtype: DType, device: Device) -> Result<Self> {
        let scale = match std::env::var(PLANT_SCALE_ENV) {
            Ok(v) => Some(
                v.parse::<f64>()
                    .map_err(|_| Error::env(PLANT_SCALE_ENV, &v, "not a number"))?,
            ),
            Err(_) => None,
        };
        let tensors: BTreeMap<String, Tensor> = read_tensors(path, scale)?.into_iter().collect();
        Ok(SafetensorsSource {
            path: path.to_path_buf(),
            tensors,
            used: BTreeSet::new(),
            dtype,
            device,
        })
    }

    /// Whether any tensor name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// Names present in the file that the model never asked for.
    pub fn unused(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }
}

/// diffusers renames the attention weights of old checkpoints (`query`, `key`, `value`,
/// `proj_attn`) on load (`_convert_deprecated_attention_blocks`); so do we.
fn rename_legacy(name: &str) -> String {
    let Some((prefix, leaf)) = name.rsplit_once('.') else {
        return name.to_string();
    };
    for (old, new) in [
        (".query", ".to_q"),
        (".key", ".to_k"),
        (".value", ".to_v"),
        (".proj_attn", ".to_out.0"),
    ] {
        if let Some(base) = prefix.strip_suffix(old) {
            if base.contains(".attentions.") {
                return format!("{base}{new}.{leaf}");
            }
        }
    }
    name.to_string()
}

impl ParamSource for SafetensorsSource {
    fn tensor(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::invalid_file(
                &self.path,
                format!("missing tensor `{name}` (expected shape {shape:?})"),
            )
        })?;
        if t.size() != shape {
            return Err(Error::invalid_file(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.size()
                ),
            ));
        }
        self.used.insert(name.to_string());
        // Weights end up in the dtype asked for, never silently in the file's.
        Ok(t.f_to_device(self.device)?.f_to_kind(self.dtype.kind())?)
    }
}

/// Deterministic weights: tensor `name` is drawn from a CPU generator seeded with the first 8
/// bytes of SHA-256(`seed` || name), so every tensor is independent of the order of creation.
/// Matrices and kernels get N(0, 1/fan_in) (keeps activations of any depth finite), 1-d
/// weights (norm scales) 1 + N(0, 0.05²), biases N(0, 0.05²).
pub struct DerivedSource {
    pub seed: u64,
    pub dtype: DType,
    /// Every tensor handed out, for writing them to a safetensors file.
    pub made: Vec<(String, Tensor)>,
}

impl DerivedSource {
    pub fn new(seed: u64, dtype: DType) -> Self {
        DerivedSource {
            seed,
            dtype,
            made: Vec::new(),
        }
    }
}

impl ParamSource for DerivedSource {
    fn tensor(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(name.as_bytes());
        let digest = h.finalize();
        let seed = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) >> 1;
        let mut g = Generator::cpu(seed)?;
        let noise = g.randn(shape, DType::F32, crate::torch::DeviceSpec::Cpu)?;
        let t = if name.ends_with("bias") {
            noise * 0.05
        } else if shape.len() == 1 {
            noise * 0.05 + 1.0
        } else {
            let fan_in: i64 = shape[1..].iter().product();
            noise * (1.0 / (fan_in.max(1) as f64).sqrt())
        };
        let t = t.f_to_kind(self.dtype.kind())?;
        self.made.push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }
}

/// A position in the parameter tree ("down_blocks.0.resnets.1"), like tch's VarStore paths.
#[derive(Clone)]
pub struct ParamPath {
    source: Rc<RefCell<dyn ParamSource>>,
    prefix: String,
}

impl ParamPath {
    pub fn root(source: Rc<RefCell<dyn ParamSource>>) -> Self {
        ParamPath {
            source,
            prefix: String::new(),
        }
    }

    /// The child path `name` (a field or a list index).
    pub fn sub(&self, name: impl std::fmt::Display) -> ParamPath {
        ParamPath {
            source: self.source.clone(),
            prefix: if self.prefix.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", self.prefix)
            },
        }
    }

    /// The tensor `leaf` under this path, as a parameter: a leaf that requires grad, like
    /// diffusers' `nn.Parameter`s. That matters for bits, not for gradients (pipelines run
    /// under no_grad): `at::matmul` decides whether to fold a non-contiguous batched input
    /// into one mm by looking at `requires_grad` of the weight, so `linear` on a transposed
    /// activation (the attention blocks, batch > 1) takes another kernel path with plain
    /// tensors and differs from diffusers in the last bit.
    pub fn get(&self, leaf: &str, shape: &[i64]) -> Result<Tensor> {
        let name = self.sub(leaf).prefix;
        let mut t = self.source.borrow_mut().tensor(&name, shape)?;
        if t.dim() == 4 && crate::torch::knobs::channels_last() {
            // `.to(memory_format=torch.channels_last)`: NHWC in memory, NCHW in shape.
            t = t
                .f_permute([0, 2, 3, 1])?
                .f_contiguous()?
                .f_permute([0, 3, 1, 2])?;
        }
        Ok(t.detach().set_requires_grad(true))
    }
}

/// Loads `path` into `build` through a safetensors source, refusing tensors left unused
/// (except names ending in one of `ignore`). With `prefix` present in the file, the model's
/// names are looked up under it.
pub fn load_weights<T>(
    path: &Path,
    (dtype, device): (DType, crate::torch::DeviceSpec),
    prefix: Option<&str>,
    ignore: &[&str],
    build: impl FnOnce(&ParamPath) -> Result<T>,
) -> Result<T> {
    if !path.is_file() {
        return Err(Error::invalid_file(
            path,
            "missing (weights are read from safetensors only)",
        ));
    }
    let source = Rc::new(RefCell::new(SafetensorsSource::load(
        path,
        dtype,
        device.device(),
    )?));
    let dyn_source: Rc<RefCell<dyn ParamSource>> = source.clone();
    let root = ParamPath::root(dyn_source);
    let model = match prefix {
        Some(p) if source.borrow().has_prefix(&format!("{p}.")) => build(&root.sub(p))?,
        _ => build(&root)?,
    };
    let unused: Vec<String> = source
        .borrow()
        .unused()
        .into_iter()
        .filter(|k| !ignore.iter().any(|i| k.ends_with(i)))
        .collect();
    if !unused.is_empty() {
        return Err(Error::invalid_file(
            path,
            format!("tensors the model does not use: {}", unused.join(", ")),
        ));
    }
    Ok(model)
}

/// A derived pipeline folder: text files (configs, tokenizer) and safetensors files, by path.
pub(crate) struct Folder {
    pub texts: Vec<(&'static str, String)>,
    pub weights: Vec<(&'static str, Vec<(String, tch::Tensor)>)>,
}

/// The tensors `build` asks a [`DerivedSource`] for (seed 0), by their state-dict names.
pub(crate) fn derive<T>(
    build: impl FnOnce(&ParamPath) -> Result<T>,
) -> Result<Vec<(String, tch::Tensor)>> {
    let source = Rc::new(RefCell::new(DerivedSource::new(0, DType::F32)));
    build(&ParamPath::root(source.clone()))?;
    let made = std::mem::take(&mut source.borrow_mut().made);
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::rename_legacy;

    #[test]
    fn legacy_attention_names_are_renamed_like_diffusers() {
        assert_eq!(
            rename_legacy("mid_block.attentions.0.query.weight"),
            "mid_block.attentions.0.to_q.weight"
        );
        assert_eq!(
            rename_legacy("down_blocks.1.attentions.1.proj_attn.bias"),
            "down_blocks.1.attentions.1.to_out.0.bias"
        );
        assert_eq!(rename_legacy("conv_in.weight"), "conv_in.weight");
        assert_eq!(rename_legacy("x.key.weight"), "x.key.weight");
    }
}
