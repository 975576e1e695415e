//! Elementwise functions from the libm crate's transcendentals, never the platform's.
use rayon::prelude::*;

/// `f` on every element, in place.
pub fn map(x: &mut [f32], f: fn(f32) -> f32) {
    x.par_iter_mut().for_each(|x| *x = f(*x));
}

/// `x * (1 / (1 + expf(-x)))`.
pub fn silu(x: f32) -> f32 {
    x * (1.0 / (1.0 + libm::expf(-x)))
}

/// GELU, erf form: `(x * 0.5) * (1 + erff(x * FRAC_1_SQRT_2))`.
pub fn gelu(x: f32) -> f32 {
    (x * 0.5) * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// transformers' QuickGELU: `x * (1 / (1 + expf(-(x * 1.702))))`.
pub fn quick_gelu(x: f32) -> f32 {
    x * (1.0 / (1.0 + libm::expf(-(x * 1.702))))
}
