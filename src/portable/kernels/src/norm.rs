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

/// group_norm in place of x [n, c, per_channel...] (flat), with per-channel gamma and beta.
pub fn group_norm(
    x: &mut [f32],
    (n, c): (usize, usize),
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) {
    let per_channel = x.len() / (n * c).max(1);
    let per_group = per_channel * c / groups;
    x.par_chunks_mut(per_group.max(1))
        .enumerate()
        .for_each(|(i, chunk)| {
            let first_channel = (i % groups) * (c / groups);
            let (mean, rstd) = moments(chunk, eps);
            // Channel by channel, so that gamma and beta are constants of the inner loop.
            for (j, channel) in chunk.chunks_mut(per_channel.max(1)).enumerate() {
                let (g, b) = (gamma[first_channel + j], beta[first_channel + j]);
                for x in channel {
                    *x = ((f64::from(*x) - mean) * rstd) as f32 * g + b;
                }
            }
        });
}

/// layer_norm in place over rows of length `d`, with gamma and beta of [d].
pub fn layer_norm(x: &mut [f32], d: usize, gamma: &[f32], beta: &[f32], eps: f64) {
    x.par_chunks_mut(d.max(1)).for_each(|row| {
        let (mean, rstd) = moments(row, eps);
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = ((f64::from(*x) - mean) * rstd) as f32 * g + b;
        }
    });
}

/// softmax in place over rows of length `d`: `expf(x - max)` in float32, the sum in float64
/// (increasing index), each divided by it in float64 and rounded once.
pub fn softmax(x: &mut [f32], d: usize) {
    x.par_chunks_mut(d.max(1)).for_each(|row| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in row.iter_mut() {
            *x = libm::expf(*x - max);
        }
        let sum: f64 = row.iter().map(|&x| f64::from(x)).sum();
        for x in row.iter_mut() {
            *x = (f64::from(*x) / sum) as f32;
        }
    });
}
