//! Elementwise functions from the libm crate's transcendentals, never the platform's. SiLU,
//! QuickGELU and GELU run 16 values at a time through [`crate::expf`] and [`crate::erff`], which
//! give libm's `expf` and `erff` bits.
use crate::erff::erff16;
use crate::expf::expf16;
use crate::Isa;
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

/// An activation computed 16 values at a time: [`silu`] or [`quick_gelu`] (through
/// [`crate::expf::expf16`]) or [`gelu`] (through [`crate::erff::erff16`]).
#[derive(Debug, Clone, Copy)]
pub enum Sigmoidal {
    Silu,
    QuickGelu,
    Gelu,
}

/// `out[i] = f(x[i])` for f [`silu`], [`quick_gelu`] or [`gelu`], with their bits, vectorised
/// for `isa`.
pub fn map_sigmoidal(isa: Isa, x: &[f32], out: &mut [f32], f: Sigmoidal) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| match isa {
            // SAFETY: callers pick only ISAs `Isa::available` reports.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { sigmoidal_avx512(x, o, f) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { sigmoidal_avx2(x, o, f) },
            _ => sigmoidal(Isa::Baseline, x, o, f),
        });
}

/// [`map_sigmoidal`] in place on one thread (a caller's task already runs in parallel).
pub fn sigmoidal_in_place(isa: Isa, buf: &mut [f32], f: Sigmoidal) {
    match isa {
        // SAFETY: callers pick only ISAs `Isa::available` reports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { in_place_avx512(buf, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { in_place_avx2(buf, f) },
        _ => in_place(Isa::Baseline, buf, f),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn in_place_avx512(buf: &mut [f32], f: Sigmoidal) {
    in_place(Isa::Avx512, buf, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn in_place_avx2(buf: &mut [f32], f: Sigmoidal) {
    in_place(Isa::Avx2, buf, f)
}

/// [`sigmoidal`] through a copy of each 16 values.
#[inline(always)]
fn in_place(isa: Isa, buf: &mut [f32], f: Sigmoidal) {
    let mut lanes = buf.chunks_exact_mut(16);
    for x in &mut lanes {
        let v: [f32; 16] = (&*x).try_into().expect("16 values");
        sigmoidal(isa, &v, x, f);
    }
    let rest = lanes.into_remainder();
    let mut v = [0f32; 16];
    v[..rest.len()].copy_from_slice(rest);
    sigmoidal(isa, &v[..rest.len()], rest, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sigmoidal_avx512(x: &[f32], out: &mut [f32], f: Sigmoidal) {
    sigmoidal(Isa::Avx512, x, out, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sigmoidal_avx2(x: &[f32], out: &mut [f32], f: Sigmoidal) {
    sigmoidal(Isa::Avx2, x, out, f)
}

#[inline(always)]
fn sigmoidal(isa: Isa, x: &[f32], out: &mut [f32], f: Sigmoidal) {
    let mut o = out.chunks_exact_mut(16);
    let mut i = x.chunks_exact(16);
    for (o, x) in (&mut o).zip(&mut i) {
        let x: [f32; 16] = x.try_into().expect("16 values");
        // SAFETY: the caller runs with `isa`'s features.
        let y = unsafe { lanes(isa, x, f) };
        o.copy_from_slice(&y);
    }
    let scalar = match f {
        Sigmoidal::Silu => silu,
        Sigmoidal::QuickGelu => quick_gelu,
        Sigmoidal::Gelu => gelu,
    };
    for (o, x) in o.into_remainder().iter_mut().zip(i.remainder()) {
        *o = scalar(*x);
    }
}

/// `f` on 16 values, each as its scalar form computes it.
///
/// # Safety
/// The CPU runs `isa`.
#[inline(always)]
unsafe fn lanes(isa: Isa, x: [f32; 16], f: Sigmoidal) -> [f32; 16] {
    let mut out = [0f32; 16];
    if let Sigmoidal::Gelu = f {
        let mut arg = [0f32; 16];
        for (a, v) in arg.iter_mut().zip(x) {
            *a = v * std::f32::consts::FRAC_1_SQRT_2;
        }
        let e = erff16(isa, arg);
        for ((o, x), e) in out.iter_mut().zip(x).zip(e) {
            *o = (x * 0.5) * (1.0 + e);
        }
        return out;
    }
    let mut arg = [0f32; 16];
    for (a, v) in arg.iter_mut().zip(x) {
        *a = match f {
            Sigmoidal::QuickGelu => -(v * 1.702),
            _ => -v,
        };
    }
    let e = expf16(isa, arg);
    for ((o, x), e) in out.iter_mut().zip(x).zip(e) {
        *o = x * (1.0 / (1.0 + e));
    }
    out
}
