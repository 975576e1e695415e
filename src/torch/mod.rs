//! The torch seam: everything reprodiff needs from libtorch that tch does not give directly.
//!
//! - [`Generator`]: real `torch.Generator` objects (C++ extension `ext.cpp`), and
//!   [`GeneratorSpec`] / [`randn_tensor`], diffusers' ways of seeding a pipeline.
//! - [`Determinism`]: `torch.use_deterministic_algorithms`, cuDNN, TF32, CUBLAS_WORKSPACE_CONFIG,
//!   threads and the CPU capability, with diffusers' `enable_full_determinism` as a preset.
//! - [`DType`] and [`DeviceSpec`]: the spellings suites and flags use.
//! - [`knobs`]: channels_last, oneDNN off, math attention and the other speed settings.
//! - [`memory`]: glibc's malloc kept from unmapping what libtorch frees (speed, no bit changes).
//! - [`safetensors`]: a weights file read straight into libtorch tensors.
mod determinism;
mod ffi;
mod generator;
pub mod knobs;
pub mod memory;
pub mod safetensors;
mod types;

pub use determinism::{CpuCapability, Determinism, DeterminismSpec, Preset};
pub use generator::{
    initial_noise, randn_tensor, Generator, GeneratorKind, GeneratorSpec, Generators, NUDGE_ENV,
    PORTABLE_NOISE_CAPABILITY,
};
pub use types::{tensor_bytes, tensor_sha256, tensor_to_f64, DType, DeviceSpec};

use crate::error::{Error, Result};

/// The libtorch version compiled in (e.g. "2.13.0").
pub fn torch_version() -> Result<String> {
    read_string(ffi::rd_torch_version)
}

/// The CPU capability ATen dispatches to in this process ("avx512", "avx2", "default", ...),
/// lower-cased. Fixed when libtorch starts: ATEN_CPU_CAPABILITY changes it for a new process.
pub fn cpu_capability() -> Result<String> {
    Ok(read_string(ffi::rd_cpu_capability)?.to_ascii_lowercase())
}

/// ATen's parallel backend description (OpenMP version, thread counts).
pub fn parallel_info() -> Result<String> {
    read_string(ffi::rd_parallel_info)
}

/// While it lives, libtorch's profiler records every ATen op this thread runs; dropped, it
/// writes them with their CPU times to its path as a Chrome trace (the events torch's legacy
/// autograd profiler writes), for comparison op by op with torch.profiler on diffusers' side.
pub struct Profile(());

impl Profile {
    pub fn start(path: &std::path::Path) -> Result<Profile> {
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).map_err(|_| {
            Error::InvalidArgument(format!("{}: a NUL in the path", path.display()))
        })?;
        ffi::check(unsafe { ffi::rd_profile_start(c.as_ptr()) }).map_err(Error::Torch)?;
        Ok(Profile(()))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Err(e) = ffi::check(unsafe { ffi::rd_profile_stop() }) {
            eprintln!("warning: libtorch's profiler: {e}");
        }
    }
}

/// What CUDA libtorch sees: available, device count, CUDA runtime and cuDNN versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaInfo {
    pub available: bool,
    pub devices: usize,
    pub runtime_version: i64,
    pub cudnn_version: i64,
}

pub fn cuda_info() -> Result<CudaInfo> {
    let (mut has, mut n, mut rt, mut dnn) = (0, 0, 0, 0);
    ffi::check(unsafe { ffi::rd_cuda_info(&mut has, &mut n, &mut rt, &mut dnn) })
        .map_err(Error::Torch)?;
    Ok(CudaInfo {
        available: has != 0,
        devices: n.max(0) as usize,
        runtime_version: rt,
        cudnn_version: dnn,
    })
}

fn read_string(
    f: unsafe extern "C" fn(*mut *mut std::ffi::c_char) -> *mut std::ffi::c_char,
) -> Result<String> {
    let mut out = std::ptr::null_mut();
    ffi::check(unsafe { f(&mut out) }).map_err(Error::Torch)?;
    Ok(ffi::take_string(out))
}
