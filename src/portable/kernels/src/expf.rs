//! The libm crate's `expf` on 16 values at a time, bit for bit: [`expf16`] for each ISA.
use crate::Isa;

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
        return each(x);
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

/// `libm::expf` of each value: the lanes' rare way out (a value outside the main range), kept
/// out of line: inlined into a loop, it had doubled the vector path's time even where no value
/// took it (Intel Xeon AVX-512, 2026-12-07: 0.82 against 0.36 ns a value).
#[cold]
#[inline(never)]
fn each<const N: usize>(x: [f32; N]) -> [f32; N] {
    x.map(libm::expf)
}

/// [`expf_lanes`] on `isa`'s vector unit: the same float32 operations in the same order, written
/// with the ISA's intrinsics (the compiler left the reduction's `k` and the scaling scalar).
///
/// # Safety
/// The CPU runs `isa`.
#[inline(always)]
pub unsafe fn expf16(isa: Isa, x: [f32; 16]) -> [f32; 16] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => expf16_avx512(x),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let lo: [f32; 8] = x[..8].try_into().expect("8 values");
            let hi: [f32; 8] = x[8..].try_into().expect("8 values");
            let (lo, hi) = (expf8_avx2(lo), expf8_avx2(hi));
            std::array::from_fn(|i| if i < 8 { lo[i] } else { hi[i - 8] })
        }
        _ => expf_lanes(x),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn expf16_avx512(x: [f32; 16]) -> [f32; 16] {
    use std::arch::x86_64::*;
    let v = _mm512_loadu_ps(x.as_ptr());
    let bits = _mm512_castps_si512(v);
    let hx = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fff_ffff));
    let main = _mm512_cmpgt_epu32_mask(hx, _mm512_set1_epi32(0x3900_0000))
        & _mm512_cmplt_epu32_mask(hx, _mm512_set1_epi32(0x42ae_ac50));
    if main != 0xffff {
        return each(x);
    }
    let negative = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
    let half = _mm512_mask_blend_ps(negative, _mm512_set1_ps(0.5), _mm512_set1_ps(-0.5));
    let far = _mm512_cvttps_epi32(_mm512_add_ps(
        _mm512_mul_ps(_mm512_set1_ps(INV_LN2), v),
        half,
    ));
    let near = _mm512_mask_blend_epi32(negative, _mm512_set1_epi32(1), _mm512_set1_epi32(-1));
    let k = _mm512_maskz_mov_epi32(
        _mm512_cmpgt_epu32_mask(hx, _mm512_set1_epi32(0x3eb1_7218)),
        near,
    );
    let k = _mm512_mask_mov_epi32(
        k,
        _mm512_cmpgt_epu32_mask(hx, _mm512_set1_epi32(0x3f85_1592)),
        far,
    );
    let kf = _mm512_cvtepi32_ps(k);
    let hi = _mm512_sub_ps(v, _mm512_mul_ps(kf, _mm512_set1_ps(LN2_HI)));
    let lo = _mm512_mul_ps(kf, _mm512_set1_ps(LN2_LO));
    let r = _mm512_sub_ps(hi, lo);
    let xx = _mm512_mul_ps(r, r);
    let poly = _mm512_add_ps(_mm512_set1_ps(P1), _mm512_mul_ps(xx, _mm512_set1_ps(P2)));
    let c = _mm512_sub_ps(r, _mm512_mul_ps(xx, poly));
    let q = _mm512_div_ps(_mm512_mul_ps(r, c), _mm512_sub_ps(_mm512_set1_ps(2.0), c));
    let y = _mm512_add_ps(_mm512_set1_ps(1.0), _mm512_add_ps(_mm512_sub_ps(q, lo), hi));
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(0x7f)));
    let mut out = [0f32; 16];
    _mm512_storeu_ps(
        out.as_mut_ptr(),
        _mm512_mul_ps(y, _mm512_castsi512_ps(scale)),
    );
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn expf8_avx2(x: [f32; 8]) -> [f32; 8] {
    use std::arch::x86_64::*;
    let v = _mm256_loadu_ps(x.as_ptr());
    let bits = _mm256_castps_si256(v);
    let hx = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff));
    // hx < 2^31: signed compares are unsigned ones.
    let main = _mm256_and_si256(
        _mm256_cmpgt_epi32(hx, _mm256_set1_epi32(0x3900_0000)),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(0x42ae_ac50), hx),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(main)) != 0xff {
        return each(x);
    }
    let negative = _mm256_srai_epi32::<31>(bits);
    let half = _mm256_blendv_ps(
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(-0.5),
        _mm256_castsi256_ps(negative),
    );
    let far = _mm256_cvttps_epi32(_mm256_add_ps(
        _mm256_mul_ps(_mm256_set1_ps(INV_LN2), v),
        half,
    ));
    let near = _mm256_blendv_epi8(_mm256_set1_epi32(1), _mm256_set1_epi32(-1), negative);
    let k = _mm256_and_si256(near, _mm256_cmpgt_epi32(hx, _mm256_set1_epi32(0x3eb1_7218)));
    let k = _mm256_blendv_epi8(
        k,
        far,
        _mm256_cmpgt_epi32(hx, _mm256_set1_epi32(0x3f85_1592)),
    );
    let kf = _mm256_cvtepi32_ps(k);
    let hi = _mm256_sub_ps(v, _mm256_mul_ps(kf, _mm256_set1_ps(LN2_HI)));
    let lo = _mm256_mul_ps(kf, _mm256_set1_ps(LN2_LO));
    let r = _mm256_sub_ps(hi, lo);
    let xx = _mm256_mul_ps(r, r);
    let poly = _mm256_add_ps(_mm256_set1_ps(P1), _mm256_mul_ps(xx, _mm256_set1_ps(P2)));
    let c = _mm256_sub_ps(r, _mm256_mul_ps(xx, poly));
    let q = _mm256_div_ps(_mm256_mul_ps(r, c), _mm256_sub_ps(_mm256_set1_ps(2.0), c));
    let y = _mm256_add_ps(_mm256_set1_ps(1.0), _mm256_add_ps(_mm256_sub_ps(q, lo), hi));
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(0x7f)));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(
        out.as_mut_ptr(),
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale)),
    );
    out
}
