//! Elementwise functions from the libm crate's transcendentals, never the platform's.
use rayon::prelude::*;

/// Elements per task: a smaller map runs on one thread (waking the pool costs more).
const CHUNK: usize = 1 << 14;

/// `out[i] = f(x[i])`.
pub fn map(x: &[f32], out: &mut [f32], f: fn(f32) -> f32) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o = f(*x);
            }
        });
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
