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
    let group = 4 * d.max(1);
    out.par_chunks_mut(group)
        .zip(x.par_chunks(group))
        .for_each(|(rows, src)| {
            rows.copy_from_slice(src);
            softmax_rows(isa, rows, d);
        });
}

/// softmax of each row (of length `d`) of `rows` in place: `expf(x - max)` in float32 (libm's
/// `expf`, 16 lanes at a time where they can be), the sum in float64 in increasing index, each
/// value divided by it in float64 and rounded once. Four rows at a time, so that their sums,
/// each one chain in its own order, run side by side instead of waiting on each addition.
pub fn softmax_rows(isa: Isa, rows: &mut [f32], d: usize) {
    if d == 0 {
        return;
    }
    for group in rows.chunks_mut(4 * d) {
        for row in group.chunks_exact_mut(d) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            match isa {
                // SAFETY: callers pick only ISAs `Isa::available` reports.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { exp_shifted_avx512(row, max) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { exp_shifted_avx2(row, max) },
                _ => exp_shifted(Isa::Baseline, row, max),
            }
        }
        let sums = row_sums(group, d);
        for (row, sum) in group.chunks_exact_mut(d).zip(sums) {
            for x in row.iter_mut() {
                *x = (f64::from(*x) / sum) as f32;
            }
        }
    }
}

/// Each row's float64 sum from +0 in increasing index, for up to four rows (the entries past
/// them stay 0); four side by side.
fn row_sums(group: &[f32], d: usize) -> [f64; 4] {
    let mut s = [0f64; 4];
    if group.len() == 4 * d {
        let (a, rest) = group.split_at(d);
        let (b, rest) = rest.split_at(d);
        let (c, e) = rest.split_at(d);
        for i in 0..d {
            s[0] += f64::from(a[i]);
            s[1] += f64::from(b[i]);
            s[2] += f64::from(c[i]);
            s[3] += f64::from(e[i]);
        }
    } else {
        for (sum, row) in s.iter_mut().zip(group.chunks_exact(d)) {
            *sum = row.iter().fold(0f64, |s, &x| s + f64::from(x));
        }
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(row: &mut [f32], max: f32) {
    exp_shifted(Isa::Avx512, row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(row: &mut [f32], max: f32) {
    exp_shifted(Isa::Avx2, row, max)
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
