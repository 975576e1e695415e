//! Normalisations and the softmax: statistics in float64, in increasing index, two passes
//! (mean, then the squared deviations); `((x - mean) * rstd)` in float64 with
//! `rstd = 1 / sqrt(var + eps)`, rounded to float32 once, then `* gamma + beta` in float32.
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

/// group_norm of x [n, c, per_channel...] (flat) into out, with per-channel gamma and beta.
pub fn group_norm(
    x: &[f32],
    out: &mut [f32],
    (n, c): (usize, usize),
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
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

/// softmax over rows of length `d` into out: `expf(x - max)` in float32, the sum in float64
/// (increasing index), each divided by it in float64 and rounded once.
pub fn softmax(x: &[f32], out: &mut [f32], d: usize) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(d.max(1))
        .zip(x.par_chunks(d.max(1)))
        .for_each(|(row, src)| {
            let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (x, s) in row.iter_mut().zip(src) {
                *x = libm::expf(*s - max);
            }
            let sum: f64 = row.iter().map(|&x| f64::from(x)).sum();
            for x in row.iter_mut() {
                *x = (f64::from(*x) / sum) as f32;
            }
        });
}
