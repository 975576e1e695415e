//! How this process gets its memory back from glibc's malloc.
//!
//! By default glibc hands every block larger than its mmap threshold to the kernel on `free`
//! and maps a fresh one on the next `malloc`: a page fault per 4 KiB page touched. oneDNN
//! reorders each convolution's weights into a new buffer on every call, so one UNet step of the
//! full SD 1.5 architecture maps and unmaps about 1.8 GB (some 460,000 page faults a step, in
//! diffusers as here). [`keep_freed_memory`] tells malloc to serve large blocks from its heap
//! and keep what is freed for reuse. No bit changes (the suites' goldens say so, on every class:
//! libtorch's allocator aligns every tensor to 64 bytes either way); the full SD 1.5
//! architecture runs a step about 1.8 times as fast, for a few percent more peak memory.
//! `REPRODIFF_MALLOC=default` keeps glibc's own behaviour. diffusers gains as much from the
//! same setting in its environment: `GLIBC_TUNABLES=glibc.malloc.mmap_max=0`
//! (docs/performance.md).

/// Set to `default`, reprodiff leaves glibc's malloc settings alone.
pub const MALLOC_ENV: &str = "REPRODIFF_MALLOC";

/// What [`keep_freed_memory`] did: `keep-freed` or `default`, as benchmarks report it.
pub fn malloc_policy() -> &'static str {
    if std::env::var(MALLOC_ENV).is_ok_and(|v| v == "default") || !cfg!(target_env = "gnu") {
        "default"
    } else {
        "keep-freed"
    }
}

/// Large blocks from the heap (`M_MMAP_MAX` 0) and freed memory kept there up to 2 GiB at its
/// top (`M_TRIM_THRESHOLD`), unless [`MALLOC_ENV`] says `default`. Process-wide; idempotent.
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    if malloc_policy() == "keep-freed" {
        // mallopt returns 1 on success; a refusal leaves glibc's defaults, which are correct.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Asks the kernel for transparent huge pages under the whole 2 MiB pages of `buf`
/// (`madvise(MADV_HUGEPAGE)`): one fault per 2 MiB instead of per 4 KiB where the host's
/// `transparent_hugepage` setting is `madvise` (with `always` they come anyway, with `never`
/// the advice is ignored). For large buffers about to be written whole (a model's weights as
/// they are read). Speed only: the buffer's address, and so every bit, is unchanged.
pub fn advise_huge_pages(buf: &mut [u8]) {
    const HUGE: usize = 2 << 20;
    let start = (buf.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (buf.as_ptr() as usize + buf.len()) / HUGE * HUGE;
    #[cfg(target_os = "linux")]
    if end > start {
        // SAFETY: the range lies inside `buf`; advice changes no contents. A refusal (an older
        // kernel, THP compiled out) leaves 4 KiB pages, which are correct.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}
