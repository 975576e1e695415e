//! Reading a `.safetensors` file straight into libtorch tensors.
//!
//! tch's `Tensor::read_safetensors` reads the whole file into one buffer and then copies every
//! tensor out of it: twice the file's size in fresh memory, a page fault per 4 KiB page of
//! both (the full SD 1.5 UNet is 3.4 GB). Here each tensor is allocated by libtorch, as tch's
//! copy allocates it (`torch::empty`, so the same 64-byte alignment and the same bits), asked
//! for transparent huge pages ([`super::memory::advise_huge_pages`]), and filled by one read
//! from the file at its offset.
//!
//! The format (<https://huggingface.co/docs/safetensors>): an 8-byte little-endian header
//! length, a JSON header naming each tensor's dtype, shape and byte range after the header
//! (`__metadata__` aside), then the bytes. The header's entries are the safetensors crate's
//! [`TensorInfo`], their dtypes mapped to libtorch kinds by tch's own conversion.
use crate::error::{Error, Result};
use safetensors::tensor::TensorInfo;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tch::{Kind, Tensor};

/// The largest header the format allows (100 MB, as the safetensors crate).
const MAX_HEADER: u64 = 100_000_000;

/// The error for a malformed file: [`Error::InvalidFile`] naming it and what is wrong.
fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid_file(path, format!("not a readable safetensors file: {why}"))
}

/// Every tensor of the file at `path`, in the header's name order, on the CPU. A malformed
/// file is [`Error::InvalidFile`] naming it and what is wrong.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = File::open(path).map_err(|e| bad(path, e))?;
    let file_len = file.metadata().map_err(|e| bad(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)
        .map_err(|_| bad(path, "shorter than its 8-byte header length"))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        let why = format!("a header of {header_len} bytes in a file of {file_len}");
        return Err(bad(path, why));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| bad(path, e))?;
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(path, format!("header: {e}")))?;
    entries.remove("__metadata__");
    let mut parsed = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let info: TensorInfo = serde_json::from_value(value)
            .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
        parsed.push((name, info));
    }
    let data_start = 8 + header_len;
    check_layout(path, &parsed, (file_len - data_start) as usize)?;
    parsed
        .into_iter()
        .map(|(name, info)| {
            let t = tensor(path, &file, &name, &info, data_start)?;
            Ok((name, t))
        })
        .collect()
}

/// The tensors' byte ranges tile the data exactly, as the format requires: in offset order
/// each starts where the one before ended, from 0 to the data's end (no gap, overlap or tail).
fn check_layout(path: &Path, entries: &[(String, TensorInfo)], data_len: usize) -> Result<()> {
    let mut ranges: Vec<(usize, usize, &str)> = entries
        .iter()
        .map(|(n, e)| (e.data_offsets.0, e.data_offsets.1, n.as_str()))
        .collect();
    ranges.sort_unstable();
    let mut end = 0;
    for (from, to, name) in ranges {
        if from != end || to < from || to > data_len {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}`: bytes {from}..{to}, where the data has {data_len} bytes \
                     and the tensor before it ends at {end}"
                ),
            ));
        }
        end = to;
    }
    if end != data_len {
        let why = format!("{} bytes of data after the last tensor", data_len - end);
        return Err(bad(path, why));
    }
    Ok(())
}

/// One tensor (its bytes at `data_start` plus its offsets): allocated by libtorch, advised huge
/// pages, read from the file.
fn tensor(
    path: &Path,
    file: &File,
    name: &str,
    info: &TensorInfo,
    data_start: u64,
) -> Result<Tensor> {
    let bad = |why: String| bad(path, format!("tensor `{name}`: {why}"));
    let kind = Kind::try_from(info.dtype).map_err(|e| bad(e.to_string()))?;
    let (from, to) = info.data_offsets;
    let bytes = to - from;
    let numel: usize = info.shape.iter().product();
    if numel * kind.elt_size_in_bytes() != bytes {
        return Err(bad(format!(
            "shape {:?} of {:?} takes {} bytes, the header gives it {bytes}",
            info.shape,
            info.dtype,
            numel * kind.elt_size_in_bytes()
        )));
    }
    let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::f_empty(&shape, (kind, tch::Device::Cpu))?;
    if bytes > 0 {
        // SAFETY: a fresh contiguous CPU tensor owns `bytes` bytes at its data pointer, and
        // nothing else refers to them yet.
        let dst = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, bytes) };
        super::memory::advise_huge_pages(dst);
        file.read_exact_at(dst, data_start + from as u64)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The same names, shapes, kinds and bytes as tch's reader, for every dtype tch writes.
    #[test]
    fn reads_what_tch_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let x = Tensor::randn([3, 5, 7], (Kind::Float, tch::Device::Cpu));
        let written = [
            ("a.weight", x.shallow_clone()),
            ("b", x.to_kind(Kind::Half)),
            ("c", x.to_kind(Kind::BFloat16)),
            ("d", x.to_kind(Kind::Double)),
            ("e", Tensor::arange(11, (Kind::Int64, tch::Device::Cpu))),
            (
                "empty",
                Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu)),
            ),
        ];
        Tensor::write_safetensors(&written, &path).unwrap();
        let theirs = Tensor::read_safetensors(&path).unwrap();
        let ours = read(&path).unwrap();
        assert_eq!(ours.len(), theirs.len());
        let theirs: BTreeMap<_, _> = theirs.into_iter().collect();
        for (name, t) in &ours {
            let u = &theirs[name];
            assert_eq!((t.size(), t.kind()), (u.size(), u.kind()), "{name}");
            let bytes = |t: &Tensor| crate::torch::tensor_bytes(t).unwrap();
            assert_eq!(bytes(t), bytes(u), "{name}");
        }
    }

    /// A file holding one float tensor `w` of 64 values, its bytes passed through `edit`.
    fn one_tensor_file(dir: &tempfile::TempDir, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
        let path = dir.path().join("t.safetensors");
        let x = Tensor::ones([64], (Kind::Float, tch::Device::Cpu));
        Tensor::write_safetensors(&[("w", x)], &path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        edit(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Bytes after the last tensor (a file cut and glued, or two written over each other).
    #[test]
    fn a_tail_after_the_last_tensor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_tensor_file(&dir, |b| b.extend_from_slice(&[0; 4]));
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("4 bytes of data after the last tensor"), "{e}");
    }

    /// A header that promises more bytes than the file holds names the tensor.
    #[test]
    fn a_short_file_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_tensor_file(&dir, |b| b.truncate(b.len() - 4));
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("tensor `w`") && e.contains("t.safetensors"),
            "{e}"
        );
    }
}
