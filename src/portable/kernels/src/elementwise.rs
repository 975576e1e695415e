//! Elementwise functions from the libm crate's transcendentals, never the platform's. SiLU and
//! QuickGELU run 16 values at a time through [`expf_lanes`], which gives libm's `expf` bits.
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

/// A function of [`expf_lanes`]' kind: [`silu`] or [`quick_gelu`], 16 values at a time.
#[derive(Debug, Clone, Copy)]
pub enum Sigmoidal {
    Silu,
    QuickGelu,
}

/// `out[i] = f(x[i])` for f [`silu`] or [`quick_gelu`], with their bits, vectorised for `isa`.
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
            _ => sigmoidal(x, o, f),
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
        _ => in_place(buf, f),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn in_place_avx512(buf: &mut [f32], f: Sigmoidal) {
    in_place(buf, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn in_place_avx2(buf: &mut [f32], f: Sigmoidal) {
    in_place(buf, f)
}

/// [`sigmoidal`] through a copy of each 16 values.
#[inline(always)]
fn in_place(buf: &mut [f32], f: Sigmoidal) {
    let mut lanes = buf.chunks_exact_mut(16);
    for x in &mut lanes {
        let v: [f32; 16] = (&*x).try_into().expect("16 values");
        sigmoidal(&v, x, f);
    }
    let rest = lanes.into_remainder();
    let v = rest.to_vec();
    sigmoidal(&v, rest, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sigmoidal_avx512(x: &[f32], out: &mut [f32], f: Sigmoidal) {
    sigmoidal(x, out, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sigmoidal_avx2(x: &[f32], out: &mut [f32], f: Sigmoidal) {
    sigmoidal(x, out, f)
}

#[inline(always)]
fn sigmoidal(x: &[f32], out: &mut [f32], f: Sigmoidal) {
    let mut o = out.chunks_exact_mut(16);
    let mut i = x.chunks_exact(16);
    for (o, x) in (&mut o).zip(&mut i) {
        let x: [f32; 16] = x.try_into().expect("16 values");
        let mut arg = [0f32; 16];
        for (a, v) in arg.iter_mut().zip(x) {
            *a = match f {
                Sigmoidal::Silu => -v,
                Sigmoidal::QuickGelu => -(v * 1.702),
            };
        }
        let e = expf_lanes(arg);
        for ((o, x), e) in o.iter_mut().zip(x).zip(e) {
            *o = x * (1.0 / (1.0 + e));
        }
    }
    let scalar = match f {
        Sigmoidal::Silu => silu,
        Sigmoidal::QuickGelu => quick_gelu,
    };
    for (o, x) in o.into_remainder().iter_mut().zip(i.remainder()) {
        *o = scalar(*x);
    }
}

// The libm crate's expf (FreeBSD's e_expf.c) constants, as its source writes them.
#[allow(clippy::excessive_precision)]
const LN2_HI: f32 = 6.9314575195e-01; // 0x3f317200
#[allow(clippy::excessive_precision)]
const LN2_LO: f32 = 1.4286067653e-06; // 0x35bfbe8e
#[allow(clippy::excessive_precision)]
const INV_LN2: f32 = 1.4426950216e+00; // 0x3fb8aa3b
#[allow(clippy::excessive_precision)]
const P1: f32 = 1.6666625440e-1; // 0xaaaa8f.0p-26
#[allow(clippy::excessive_precision)]
const P2: f32 = -2.7667332906e-3; // -0xb55215.0p-32

/// The libm crate's `expf` on 16 values, bit for bit. Where all lie in its main range,
/// 2^-14 < |x| < 87.33655 (no special case, k in [-126, 126]), every lane runs its float32
/// operations in their order without branches, so the compiler vectorises them: the argument
/// reduction's `k` (0 where libm takes `hi = x, lo = 0`, which the general formula then
/// reproduces exactly), the polynomial, and `scalbnf(y, k)`, which is `y * 2^k` for such k.
/// Otherwise each value goes through `libm::expf`.
#[inline(always)]
pub fn expf_lanes(x: [f32; 16]) -> [f32; 16] {
    let main = x.iter().all(|v| {
        let h = v.to_bits() & 0x7fff_ffff;
        h > 0x3900_0000 && h < 0x42ae_ac50
    });
    if !main {
        return x.map(libm::expf);
    }
    // Loops, not array::map: a call there would not inherit the caller's vector ISA.
    let mut out = [0f32; 16];
    for (o, v) in out.iter_mut().zip(x) {
        let hx = v.to_bits() & 0x7fff_ffff;
        let negative = v.to_bits() >> 31 == 1;
        let half = if negative { -0.5 } else { 0.5 };
        let far = (INV_LN2 * v + half) as i32;
        let near = if negative { -1 } else { 1 };
        let k = if hx > 0x3f85_1592 {
            far
        } else if hx > 0x3eb1_7218 {
            near
        } else {
            0
        };
        let kf = k as f32;
        let hi = v - kf * LN2_HI;
        let lo = kf * LN2_LO;
        let r = hi - lo;
        let xx = r * r;
        let c = r - xx * (P1 + xx * P2);
        let y = 1.0 + (r * c / (2.0 - c) - lo + hi);
        *o = y * f32::from_bits(((0x7f + k) as u32) << 23);
    }
    out
}
