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
//! (`__metadata__` aside), then the bytes.
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tch::{Kind, Tensor};

/// The header's description of one tensor.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The largest header the format allows (100 MB, as the safetensors crate).
const MAX_HEADER: u64 = 100_000_000;

/// Every tensor of the file at `path`, in the header's name order, on the CPU. A malformed
/// file is [`Error::InvalidFile`] naming it and what is wrong.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad =
        |why: String| Error::invalid_file(path, format!("not a readable safetensors file: {why}"));
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(bad(format!(
            "a header of {header_len} bytes in a file of {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| bad(e.to_string()))?;
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    entries.remove("__metadata__");
    let data_start = 8 + header_len;
    let mut parsed = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let entry: Entry =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        parsed.push((name, entry));
    }
    check_layout(&parsed, file_len - data_start).map_err(&bad)?;
    let mut tensors = Vec::with_capacity(parsed.len());
    for (name, entry) in parsed {
        let (from, to) = entry.data_offsets;
        let t = tensor(
            &file,
            &name,
            &entry,
            data_start + from,
            (to - from) as usize,
        );
        tensors.push((name, t.map_err(&bad)?));
    }
    Ok(tensors)
}

/// The tensors' byte ranges tile the data exactly, as the format requires: in offset order
/// each starts where the one before ended, from 0 to the data's end (no gap, overlap or tail).
fn check_layout(entries: &[(String, Entry)], data_len: u64) -> std::result::Result<(), String> {
    let mut ranges: Vec<(u64, u64, &str)> = entries
        .iter()
        .map(|(n, e)| (e.data_offsets.0, e.data_offsets.1, n.as_str()))
        .collect();
    ranges.sort_unstable();
    let mut end = 0;
    for (from, to, name) in ranges {
        if from != end || to < from || to > data_len {
            return Err(format!(
                "tensor `{name}`: bytes {from}..{to}, where the data has {data_len} bytes and \
                 the tensor before it ends at {end}"
            ));
        }
        end = to;
    }
    if end != data_len {
        return Err(format!(
            "{} bytes of data after the last tensor",
            data_len - end
        ));
    }
    Ok(())
}

/// One tensor: allocated by libtorch, advised huge pages, read from `offset`.
fn tensor(
    file: &File,
    name: &str,
    e: &Entry,
    offset: u64,
    bytes: usize,
) -> std::result::Result<Tensor, String> {
    let kind = kind(&e.dtype).ok_or_else(|| format!("tensor `{name}`: dtype {}", e.dtype))?;
    let numel: usize = e.shape.iter().product();
    if numel * kind.elt_size_in_bytes() != bytes {
        return Err(format!(
            "tensor `{name}`: shape {:?} of {} takes {} bytes, the header gives it {bytes}",
            e.shape,
            e.dtype,
            numel * kind.elt_size_in_bytes()
        ));
    }
    let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::f_empty(&shape, (kind, tch::Device::Cpu)).map_err(|e| e.to_string())?;
    if bytes > 0 {
        // SAFETY: a fresh contiguous CPU tensor owns `bytes` bytes at its data pointer, and
        // nothing else refers to them yet.
        let dst = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, bytes) };
        super::memory::advise_huge_pages(dst);
        file.read_exact_at(dst, offset)
            .map_err(|err| format!("tensor `{name}`: {err}"))?;
    }
    Ok(t)
}

/// The libtorch kind of a safetensors dtype name (those tch converts).
fn kind(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "BOOL" => Kind::Bool,
        "U8" => Kind::Uint8,
        "I8" => Kind::Int8,
        "I16" => Kind::Int16,
        "I32" => Kind::Int,
        "I64" => Kind::Int64,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Bytes after the last tensor (a file cut and glued, or two written over each other).
    #[test]
    fn a_tail_after_the_last_tensor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let x = Tensor::ones([64], (Kind::Float, tch::Device::Cpu));
        Tensor::write_safetensors(&[("w", x)], &path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 4]);
        std::fs::write(&path, bytes).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("4 bytes of data after the last tensor"), "{e}");
    }

    /// A header that promises more bytes than the file holds names the tensor.
    #[test]
    fn a_short_file_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let x = Tensor::ones([64], (Kind::Float, tch::Device::Cpu));
        Tensor::write_safetensors(&[("w", x)], &path).unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 4]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("tensor `w`") && e.contains("t.safetensors"),
            "{e}"
        );
    }
}
