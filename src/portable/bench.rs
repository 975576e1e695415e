//! `reprodiff bench gemm`: the portable GEMM against libtorch's sgemm on the same product, the
//! two timed in turn (interleaved, so that a noisy machine slows both alike), on float32 CPU
//! values, at the threads each uses in a portable run (rayon's pool for the portable kernels;
//! `--threads` for libtorch, default the same count).
//!
//! Each timed sample is a burst of back-to-back products (at least `BURST` of wall time), as
//! in a pipeline, and each burst starts after `SETTLE` of rest: the side that ran before
//! leaves its threads spinning (libgomp's workers spin for milliseconds after a parallel
//! region, rayon's before they sleep), and a burst started at once would share the cores with
//! them. Measured on an Intel Xeon with AMX, 2 cores (2026-12-07): timed without the rest, one
//! product at a time, the portable GEMM read 120 GFLOP/s on 4096 x 320 x 320 at 2 threads, 345
//! with libgomp told not to spin.
use super::ops;
use crate::error::{Error, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The least wall time of one timed sample (a burst of products).
const BURST: Duration = Duration::from_millis(40);
/// The rest before each burst, longer than libgomp's default spin (GOMP_SPINCOUNT's 300,000
/// pauses) and rayon's.
const SETTLE: Duration = Duration::from_millis(100);
use tch::{Kind, Tensor};

/// Each side's GFLOP/s per timed run (2 m n k flops per product) and their medians.
#[derive(Debug, Serialize)]
pub struct GemmBench {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub isa: String,
    pub kernel_threads: usize,
    pub libtorch_threads: i32,
    pub portable_gflops: Vec<f64>,
    pub libtorch_gflops: Vec<f64>,
    pub portable_median: f64,
    pub libtorch_median: f64,
    /// portable_median / libtorch_median.
    pub ratio: f64,
}

/// Times `runs` bursts of products of a [m, k] by b [k, n] on each side, in turn.
pub fn gemm(m: usize, n: usize, k: usize, runs: usize, threads: Option<i32>) -> Result<GemmBench> {
    if m == 0 || n == 0 || k == 0 || runs == 0 {
        return Err(Error::InvalidArgument(format!(
            "bench gemm: --m, --n, --k and --runs must be positive (got {m}, {n}, {k}, {runs})"
        )));
    }
    let isa = super::isa()?;
    super::join_the_pool();
    let libtorch_threads = threads.unwrap_or(rayon::current_num_threads() as i32);
    tch::set_num_threads(libtorch_threads);
    tch::manual_seed(0);
    let opts = (Kind::Float, tch::Device::Cpu);
    let a = Tensor::randn([1, m as i64, k as i64], opts);
    let b = Tensor::randn([1, k as i64, n as i64], opts);
    let flops = 2.0 * (m * n * k) as f64;
    let portable = || ops::bmm(isa, &a, &b);
    let libtorch = || Ok(a.f_matmul(&b)?);
    let reps_p = burst_len(&portable)?;
    let reps_l = burst_len(&libtorch)?;
    let (mut p, mut l) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        p.push(flops / burst(&portable, reps_p)? / 1e9);
        l.push(flops / burst(&libtorch, reps_l)? / 1e9);
    }
    let (pm, lm) = (median(&p), median(&l));
    Ok(GemmBench {
        m,
        n,
        k,
        isa: isa.name().into(),
        kernel_threads: rayon::current_num_threads(),
        libtorch_threads,
        portable_gflops: p,
        libtorch_gflops: l,
        portable_median: pm,
        libtorch_median: lm,
        ratio: pm / lm,
    })
}

/// The products per burst: enough for [`BURST`], from one warm-up product's time.
fn burst_len(f: &dyn Fn() -> Result<Tensor>) -> Result<usize> {
    let t = Instant::now();
    drop(f()?);
    let once = t.elapsed().max(Duration::from_micros(1));
    Ok((BURST.as_secs_f64() / once.as_secs_f64())
        .ceil()
        .clamp(1.0, 1000.0) as usize)
}

/// Seconds per product over a burst of `reps` back-to-back products, after [`SETTLE`].
fn burst(f: &dyn Fn() -> Result<Tensor>, reps: usize) -> Result<f64> {
    std::thread::sleep(SETTLE);
    let t = Instant::now();
    for _ in 0..reps {
        drop(f()?);
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let h = s.len() / 2;
    if s.len() % 2 == 1 {
        s[h]
    } else {
        (s[h - 1] + s[h]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_product_is_refused_naming_the_flags() {
        let e = super::gemm(0, 4, 4, 1, None).unwrap_err().to_string();
        assert!(e.contains("--m") && e.contains("got 0"), "{e}");
    }

    #[test]
    fn both_sides_are_timed_every_run() {
        let b = super::gemm(40, 33, 70, 3, Some(1)).unwrap();
        assert_eq!((b.portable_gflops.len(), b.libtorch_gflops.len()), (3, 3));
        assert!(b.portable_median > 0.0 && b.libtorch_median > 0.0 && b.ratio.is_finite());
    }
}
