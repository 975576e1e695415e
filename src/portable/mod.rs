//! Portable kernels (issue #14): computations whose every floating-point operation is fixed by
//! the shapes alone, so that one seed gives one result on every machine.
//!
//! So far: the noise. [`randn`] is torch's CPU `randn` as ATen computes it under
//! `ATEN_CPU_CAPABILITY=default` (the scalar Box-Muller of `normal_fill_16`), with the C
//! library's `logf`, `sinf` and `cosf` replaced by ports of glibc's own ([`libm`]), so that its
//! bits do not depend on the CPU capability, the ISA or the C library of the host.
pub mod libm;
pub mod ops;
pub mod randn;

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the models and the noise run on the portable kernels in this process (one mode per
/// process: a run is native or portable as a whole).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Switches the process to the portable kernels (or back).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed)
}

/// The ISA the portable kernels run on: [`ops::ISA_ENV`] if set, else the widest available.
pub fn isa() -> crate::error::Result<ops::Isa> {
    ops::Isa::chosen()
}
