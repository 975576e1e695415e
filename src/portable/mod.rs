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
