//! Raw declarations of src/torch/ext.cpp. Only src/torch/ uses them; see that file's contract.
use std::ffi::{c_char, c_int, c_void};

pub type Gen = *mut c_void;
pub type TensorPtr = *mut c_void;

extern "C" {
    pub fn rd_free_string(s: *mut c_char);

    pub fn rd_gen_new_cpu(seed: u64, out: *mut Gen) -> *mut c_char;
    pub fn rd_gen_new_cuda(index: c_int, seed: u64, out: *mut Gen) -> *mut c_char;
    pub fn rd_gen_free(g: Gen);
    pub fn rd_gen_share(g: Gen, out: *mut Gen) -> *mut c_char;
    pub fn rd_gen_clone(g: Gen, out: *mut Gen) -> *mut c_char;
    pub fn rd_gen_same_state(a: Gen, b: Gen) -> c_int;
    pub fn rd_gen_manual_seed(g: Gen, seed: u64) -> *mut c_char;
    pub fn rd_gen_initial_seed(g: Gen, out: *mut u64) -> *mut c_char;
    pub fn rd_gen_device(g: Gen, kind: *mut c_int, index: *mut c_int) -> *mut c_char;
    pub fn rd_gen_get_state(g: Gen, out: *mut TensorPtr) -> *mut c_char;
    pub fn rd_gen_set_state(g: Gen, state: TensorPtr) -> *mut c_char;

    pub fn rd_randn(
        g: Gen,
        sizes: *const i64,
        ndim: usize,
        dtype: c_int,
        dev_type: c_int,
        dev_index: c_int,
        out: *mut TensorPtr,
    ) -> *mut c_char;
    pub fn rd_rand(
        g: Gen,
        sizes: *const i64,
        ndim: usize,
        dtype: c_int,
        dev_type: c_int,
        dev_index: c_int,
        out: *mut TensorPtr,
    ) -> *mut c_char;
    pub fn rd_normal_(tensor: TensorPtr, mean: f64, std: f64, g: Gen) -> *mut c_char;

    pub fn rd_set_determinism(
        algorithms: c_int,
        warn_only: c_int,
        cudnn_deterministic: c_int,
        cudnn_benchmark: c_int,
        tf32_cublas: c_int,
        tf32_cudnn: c_int,
    ) -> *mut c_char;
    pub fn rd_get_determinism(
        algorithms: *mut c_int,
        warn_only: *mut c_int,
        cudnn_deterministic: *mut c_int,
        cudnn_benchmark: *mut c_int,
        tf32_cublas: *mut c_int,
        tf32_cudnn: *mut c_int,
    ) -> *mut c_char;

    pub fn rd_set_backends(onednn: c_int, fused_attention: c_int) -> *mut c_char;
    pub fn rd_get_backends(onednn: *mut c_int, flash_attention: *mut c_int) -> *mut c_char;

    pub fn rd_torch_version(out: *mut *mut c_char) -> *mut c_char;
    pub fn rd_cpu_capability(out: *mut *mut c_char) -> *mut c_char;
    pub fn rd_parallel_info(out: *mut *mut c_char) -> *mut c_char;
    pub fn rd_profile_start(path: *const c_char) -> *mut c_char;
    pub fn rd_profile_stop() -> *mut c_char;
    pub fn rd_cuda_info(
        has_cuda: *mut c_int,
        gpus: *mut c_int,
        cudart: *mut i64,
        cudnn: *mut i64,
    ) -> *mut c_char;
}

/// Turns the extension's error convention (null = ok, else an owned message) into a Result.
pub fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated malloc'd string that we now own.
    let msg = unsafe { std::ffi::CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { rd_free_string(err) };
    Err(msg)
}

/// Takes ownership of a malloc'd string returned through an out-parameter.
pub fn take_string(s: *mut c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    let out = unsafe { std::ffi::CStr::from_ptr(s) }
        .to_string_lossy()
        .into_owned();
    unsafe { rd_free_string(s) };
    out
}
