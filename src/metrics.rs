//! Metrics, all computed in f64 with exactly rounded sums, so that reprodiff and the Python
//! oracle (`math.fsum`) get the same f64 bits whatever the summation order or thread count.
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a scenario can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// SHA-256 of the output's raw bytes: bit-exact identity with the golden.
    Bits,
    /// `np.abs(x).sum()`, the seed document's number (here exactly rounded, in f64).
    SumAbs,
    /// `max(|x|)`.
    MaxAbs,
    /// `mean(|x|)`.
    MeanAbs,
    /// `max(|x - golden|)`, against the golden array.
    LInf,
    /// diffusers' `numpy_cosine_similarity_distance(x, golden)`.
    CosineDistance,
    /// `10 log10(peak^2 / mse)` against the golden array, peak = max |golden|.
    Psnr,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Bits,
        Metric::SumAbs,
        Metric::MaxAbs,
        Metric::MeanAbs,
        Metric::LInf,
        Metric::CosineDistance,
        Metric::Psnr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Bits => "bits",
            Metric::SumAbs => "sum_abs",
            Metric::MaxAbs => "max_abs",
            Metric::MeanAbs => "mean_abs",
            Metric::LInf => "l_inf",
            Metric::CosineDistance => "cosine_distance",
            Metric::Psnr => "psnr",
        }
    }

    /// Metrics of the output alone, stored in goldens and compared value to value.
    pub fn is_intrinsic(self) -> bool {
        matches!(self, Metric::SumAbs | Metric::MaxAbs | Metric::MeanAbs)
    }

    /// Metrics computed against the golden array (need one stored).
    pub fn needs_array(self) -> bool {
        matches!(self, Metric::LInf | Metric::CosineDistance | Metric::Psnr)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The exactly rounded sum of `xs` (Shewchuk's algorithm, as Python's `math.fsum`): the result
/// does not depend on the order of the terms.
pub fn fsum(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    let mut special = 0.0f64; // inf / nan propagate as in a plain sum
    for mut x in xs {
        if !x.is_finite() {
            special += x;
            continue;
        }
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        if !x.is_finite() {
            // Overflow of finite terms: give up on exactness as math.fsum raises; inf is honest.
            special += x;
            partials.clear();
            continue;
        }
        partials.truncate(i);
        partials.push(x);
    }
    if special != 0.0 || special.is_nan() {
        return special;
    }
    // Sum the partials from the top with the half-way correction math.fsum applies.
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

pub fn sum_abs(x: &[f64]) -> f64 {
    fsum(x.iter().map(|v| v.abs()))
}

pub fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |m, v| {
        if v.abs() > m || v.is_nan() {
            v.abs()
        } else {
            m
        }
    })
}

pub fn mean_abs(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    sum_abs(x) / x.len() as f64
}

/// `max |a - b|` and the flat index where it occurs (the first such index; NaN wins).
pub fn l_inf(a: &[f64], b: &[f64]) -> (f64, usize) {
    let mut worst = (0.0f64, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() {
            return (f64::NAN, i);
        }
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// `sqrt(mean((a - b)^2))`, the sum exactly rounded.
pub fn rmse(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    (fsum(a.iter().zip(b).map(|(x, y)| (x - y) * (x - y))) / a.len() as f64).sqrt()
}

/// `sqrt(mean(x^2))`.
pub fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (fsum(x.iter().map(|v| v * v)) / x.len() as f64).sqrt()
}

/// diffusers' `numpy_cosine_similarity_distance`: `1 - dot(a, b) / (|a| |b|)`.
pub fn cosine_distance(a: &[f64], b: &[f64]) -> f64 {
    let dot = fsum(a.iter().zip(b).map(|(x, y)| x * y));
    let na = fsum(a.iter().map(|x| x * x)).sqrt();
    let nb = fsum(b.iter().map(|y| y * y)).sqrt();
    1.0 - dot / (na * nb)
}

/// PSNR in dB of `got` against `golden`, peak = max |golden|; +inf when identical.
pub fn psnr(got: &[f64], golden: &[f64]) -> f64 {
    let n = golden.len().max(1) as f64;
    let mse = fsum(got.iter().zip(golden).map(|(x, y)| (x - y) * (x - y))) / n;
    let peak = max_abs(golden);
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (peak * peak / mse).log10()
}

/// The first flat index where the bits of two equally long arrays differ.
pub fn first_difference(a: &[f64], b: &[f64]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

/// Row-major multi-index of a flat index.
pub fn unravel(mut flat: usize, shape: &[i64]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (slot, &dim) in idx.iter_mut().zip(shape).rev() {
        let dim = dim.max(1) as usize;
        *slot = flat % dim;
        flat /= dim;
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fsum_is_exact_where_naive_summation_is_not() {
        // 1e16 + 1 + -1e16 in order loses the 1; the exact sum is 1.
        assert_eq!([1e16, 1.0, -1e16].iter().sum::<f64>(), 0.0);
        assert_eq!(fsum([1e16, 1.0, -1e16]), 1.0);
        assert_eq!(fsum([0.1; 10]), 1.0);
    }

    #[test]
    fn unravel_matches_row_major_layout() {
        assert_eq!(unravel(0, &[2, 3, 4]), vec![0, 0, 0]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(13, &[2, 3, 4]), vec![1, 0, 1]);
    }

    #[test]
    fn comparative_metrics_of_identical_arrays_are_ideal() {
        let a = [0.5, -1.25, 3.0];
        assert_eq!(l_inf(&a, &a), (0.0, 0));
        assert!(cosine_distance(&a, &a).abs() < 1e-15);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&a, &[0.5, -1.25, 3.5]), Some(2));
    }

    proptest! {
        #[test]
        fn fsum_does_not_depend_on_order(mut xs in prop::collection::vec(-1e6f64..1e6, 0..200), seed in any::<u64>()) {
            let forward = fsum(xs.iter().copied());
            // A deterministic shuffle driven by `seed`.
            let mut s = seed | 1;
            for i in (1..xs.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                xs.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(forward.to_bits(), fsum(xs.iter().copied()).to_bits());
        }

        #[test]
        fn l_inf_is_symmetric_and_bounds_every_element(
            pairs in prop::collection::vec((-1e3f64..1e3, -1e3f64..1e3), 1..100)
        ) {
            let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
            let (d, at) = l_inf(&a, &b);
            prop_assert_eq!(d, l_inf(&b, &a).0);
            prop_assert_eq!(d, (a[at] - b[at]).abs());
            prop_assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= d));
        }
    }
}
