//! Normalisations and the softmax: statistics in float64, in increasing index, two passes
//! (mean, then the squared deviations); `((x - mean) * rstd)` in float64 with
//! `rstd = 1 / sqrt(var + eps)`, rounded to float32 once, then `* gamma + beta` in float32.
use crate::elementwise::Sigmoidal;
use crate::Isa;
use rayon::prelude::*;

/// The mean and `1 / sqrt(var + eps)` of `chunk`, in float64, in increasing index.
#[inline(always)]
fn moments(chunk: &[f32], eps: f64) -> (f64, f64) {
    let n = chunk.len() as f64;
    let mean = chunk.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = chunk
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// group_norm of x [n, c, per_channel...] (flat) into out, with per-channel gamma and beta;
/// then, with `then`, that function of each output value (as its own pass would give it:
/// group_norm's float32 value in, the function's bits out), channel by channel while in cache.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    out: &mut [f32],
    (n, c): (usize, usize),
    groups: usize,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    then: Option<(Isa, Sigmoidal)>,
) {
    let per_channel = x.len() / (n * c).max(1);
    let per_group = per_channel * c / groups;
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(per_group.max(1))
        .zip(x.par_chunks(per_group.max(1)))
        .enumerate()
        .for_each(|(i, (out, chunk))| {
            let first_channel = (i % groups) * (c / groups);
            let (mean, rstd) = moments(chunk, eps);
            // Channel by channel, so that gamma and beta are constants of the inner loop.
            let channels = out
                .chunks_mut(per_channel.max(1))
                .zip(chunk.chunks(per_channel.max(1)));
            for (j, (o, channel)) in channels.enumerate() {
                let (g, b) = (gamma[first_channel + j], beta[first_channel + j]);
                for (o, x) in o.iter_mut().zip(channel) {
                    *o = ((f64::from(*x) - mean) * rstd) as f32 * g + b;
                }
                if let Some((isa, f)) = then {
                    crate::elementwise::sigmoidal_in_place(isa, o, f);
                }
            }
        });
}

/// layer_norm over rows of length `d` into out, with gamma and beta of `[d]`.
pub fn layer_norm(x: &[f32], out: &mut [f32], d: usize, gamma: &[f32], beta: &[f32], eps: f64) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(d.max(1))
        .zip(x.par_chunks(d.max(1)))
        .for_each(|(out, row)| {
            let (mean, rstd) = moments(row, eps);
            for (((o, x), g), b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = ((f64::from(*x) - mean) * rstd) as f32 * g + b;
            }
        });
}

/// softmax over rows of length `d` into out: [`softmax_rows`].
pub fn softmax(isa: Isa, x: &[f32], out: &mut [f32], d: usize) {
    assert_eq!(x.len(), out.len());
    let group = SIDE * d.max(1);
    out.par_chunks_mut(group)
        .zip(x.par_chunks(group))
        .for_each(|(rows, src)| {
            rows.copy_from_slice(src);
            softmax_rows(isa, rows, d);
        });
}

/// softmax of each row (of length `d`) of `rows` in place: `expf(x - max)` in float32 (libm's
/// `expf`, 16 lanes at a time where they can be), the sum in float64 in increasing index, each
/// value divided by it in float64 and rounded once ([`divide`]). Sixteen rows at a time, so that
/// their sums, each one chain in its own order, run side by side instead of waiting on each
/// addition.
pub fn softmax_rows(isa: Isa, rows: &mut [f32], d: usize) {
    if d == 0 {
        return;
    }
    match isa {
        // SAFETY: callers pick only ISAs `Isa::available` reports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { softmax_rows_avx512(rows, d) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_rows_avx2(rows, d) },
        _ => softmax_rows_on(Isa::Baseline, rows, d),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(rows: &mut [f32], d: usize) {
    softmax_rows_on(Isa::Avx512, rows, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_rows_avx2(rows: &mut [f32], d: usize) {
    softmax_rows_on(Isa::Avx2, rows, d)
}

/// Rows whose float64 sums run side by side: each sum is one chain of additions in its own order,
/// and sixteen chains keep the adders busy where one would wait on each addition.
const SIDE: usize = 16;

/// [`softmax_rows`] with `isa`'s exp, inlined into a caller compiled for `isa` (so that the
/// maximum and the division are vectorised for it too).
#[inline(always)]
fn softmax_rows_on(isa: Isa, rows: &mut [f32], d: usize) {
    for group in rows.chunks_mut(SIDE * d) {
        for row in group.chunks_exact_mut(d) {
            let max = max_of(row);
            exp_shifted(isa, row, max);
        }
        let sums = row_sums(group, d);
        for (row, sum) in group.chunks_exact_mut(d).zip(sums) {
            // SAFETY: the caller runs with `isa`'s features.
            unsafe { divide_on(isa, row, sum) };
        }
    }
}

/// The largest value of `row`, NaNs ignored (as `f32::max` ignores them), -inf for none: a
/// fold's value, taken in 16 lanes. Only the sign of a zero maximum may differ from a fold's,
/// and no `x - max` depends on it (`x - 0` and `x + 0` agree but at `x = -0`, whose results
/// `-0` and `+0` have the same `expf`, 1).
#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    // Four sets of 16 lanes, so that no maximum waits on the one before it.
    let mut lanes = [[f32::NEG_INFINITY; 16]; 4];
    let mut chunks = row.chunks_exact(64);
    for chunk in &mut chunks {
        for (set, part) in lanes.iter_mut().zip(chunk.chunks_exact(16)) {
            for (m, x) in set.iter_mut().zip(part) {
                *m = m.max(*x);
            }
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    lanes.into_iter().flatten().fold(tail, f32::max)
}

/// `x = (x as f64 / sum) as f32` for every value of `row`, bit for bit; the public form of the
/// softmax's division, for the tests that hold it to the quotient.
pub fn divide(isa: Isa, row: &mut [f32], sum: f64) {
    // SAFETY: callers pick only ISAs `Isa::available` reports.
    unsafe { divide_on(isa, row, sum) }
}

/// [`divide`] on `isa`.
///
/// # Safety
/// The CPU runs `isa`.
#[inline(always)]
unsafe fn divide_on(isa: Isa, row: &mut [f32], sum: f64) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => divide_avx512(row, sum),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => divide_avx2(row, sum),
        _ => divide_in_place(row, sum),
    }
}

/// [`divide_in_place`] written with AVX-512 intrinsics (the compiler's vectors for the plain
/// form gathered across chunks): the same products, checks and fallback.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn divide_avx512(row: &mut [f32], sum: f64) {
    use std::arch::x86_64::*;
    if !SURE_SUMS.contains(&sum) {
        return divide_exactly(row, sum);
    }
    let inv = _mm512_set1_pd(1.0 / sum);
    let low_mask = _mm512_set1_epi64(LOW_BITS as i64);
    let from = _mm512_set1_epi64((MIDPOINT - MARGIN) as i64);
    let width = _mm512_set1_epi64((2 * MARGIN) as i64);
    let (tiny, zero) = (_mm512_set1_pd(TINY), _mm512_setzero_pd());
    let unsure = |p: __m512d| {
        let low = _mm512_and_si512(_mm512_castpd_si512(p), low_mask);
        let near = _mm512_cmple_epu64_mask(_mm512_sub_epi64(low, from), width);
        let plain = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(p, tiny) | _mm512_cmpeq_pd_mask(p, zero);
        near | !plain
    };
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let x = _mm512_loadu_ps(chunk.as_ptr());
        let halves = [
            _mm512_castps512_ps256(x),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
        ];
        let p = halves.map(|h| _mm512_mul_pd(_mm512_cvtps_pd(h), inv));
        if unsure(p[0]) | unsure(p[1]) != 0 {
            divide_exactly(chunk, sum);
        } else {
            _mm256_storeu_ps(chunk.as_mut_ptr(), _mm512_cvtpd_ps(p[0]));
            _mm256_storeu_ps(chunk.as_mut_ptr().add(8), _mm512_cvtpd_ps(p[1]));
        }
    }
    divide_exactly(chunks.into_remainder(), sum);
}

/// Each value divided by `sum` in float64, rounded once to float32: the rare way out of
/// [`divide_in_place`] and [`divide_avx512`], kept out of their loops (see [`crate::expf`]'s).
#[cold]
#[inline(never)]
fn divide_exactly(row: &mut [f32], sum: f64) {
    row.iter_mut()
        .for_each(|x| *x = (f64::from(*x) / sum) as f32);
}

/// [`divide_in_place`]'s constants: float32's rounding point in a float64's low bits, the
/// steps kept clear of it, the smallest quotient taken from the product, the sums it serves.
const MIDPOINT: u64 = 0x1000_0000;
const LOW_BITS: u64 = 0x1fff_ffff;
const MARGIN: u64 = 8;
const TINY: f64 = 1.0 / (1u128 << 125) as f64;
const SURE_SUMS: std::ops::Range<f64> = 1.0..1e300;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn divide_avx2(row: &mut [f32], sum: f64) {
    divide_in_place(row, sum)
}

/// [`divide`]: the float64 quotient rounded to float32, computed as `p = x * (1 / sum)` where
/// that provably rounds to the same float32, else by the division.
///
/// Why: with `inv = 1 / sum` and `p = x * inv` each rounded once (relative error 2^-53 each),
/// `|p - x / sum| < 2.2 ulp(p)`, so the correctly rounded quotient `q` lies within 6 float64
/// steps of `p` (a binade boundary between them halves the steps). `q as f32` changes value
/// only at a midpoint between two float32 values, a float64 whose low 29 bits are 0x1000_0000
/// (float32 keeps 24 of float64's 53 significant bits). So where p's low 29 bits are more than
/// 8 steps from that, `p as f32 == q as f32`. The multiplication is used only where that holds
/// and `p` is zero or at least 2^-125 (above float32's subnormals, whose rounding point
/// differs), for `1 <= sum < 2^1000` (a softmax's sum is at least 1, its largest term's; no
/// float64 overflow or subnormal); everything else (NaN, negative, tiny) is divided.
#[inline(always)]
fn divide_in_place(row: &mut [f32], sum: f64) {
    if !SURE_SUMS.contains(&sum) {
        return divide_exactly(row, sum);
    }
    let inv = 1.0 / sum;
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let mut q = [0f32; 16];
        let mut unsure = 0u64;
        for (q, x) in q.iter_mut().zip(chunk.iter()) {
            let p = f64::from(*x) * inv;
            let low = p.to_bits() & LOW_BITS;
            let near = low.wrapping_sub(MIDPOINT - MARGIN) <= 2 * MARGIN;
            let plain = p >= TINY || p == 0.0;
            unsure |= u64::from(near | !plain);
            *q = p as f32;
        }
        if unsure == 0 {
            chunk.copy_from_slice(&q);
        } else {
            divide_exactly(chunk, sum);
        }
    }
    divide_exactly(chunks.into_remainder(), sum);
}

/// Each row's float64 sum from +0 in increasing index, for up to [`SIDE`] rows (the entries
/// past them stay 0); all side by side.
fn row_sums(group: &[f32], d: usize) -> [f64; SIDE] {
    let mut s = [0f64; SIDE];
    if group.len() == SIDE * d {
        let rows: [&[f32]; SIDE] = std::array::from_fn(|r| &group[r * d..][..d]);
        for i in 0..d {
            for (sum, row) in s.iter_mut().zip(rows) {
                *sum += f64::from(row[i]);
            }
        }
    } else {
        for (sum, row) in s.iter_mut().zip(group.chunks_exact(d)) {
            *sum = row.iter().fold(0f64, |s, &x| s + f64::from(x));
        }
    }
    s
}

/// `x = expf(x - max)` on every value, libm's bits.
#[inline(always)]
fn exp_shifted(isa: Isa, row: &mut [f32], max: f32) {
    let mut lanes = row.chunks_exact_mut(16);
    for x in &mut lanes {
        let mut arg = [0f32; 16];
        for (a, v) in arg.iter_mut().zip(x.iter()) {
            *a = *v - max;
        }
        // SAFETY: the caller runs with `isa`'s features.
        x.copy_from_slice(&unsafe { crate::expf::expf16(isa, arg) });
    }
    for x in lanes.into_remainder() {
        *x = libm::expf(*x - max);
    }
}
