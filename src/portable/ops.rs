//! The portable kernels' operations, each with its order of floating-point operations fixed by
//! the shapes alone (the **order rule**, version 2, written so that a CUDA kernel can follow it:
//! one thread per output element does exactly this):
//!
//! - **Dot products** (linear, matmul, conv2d as filters times patches): the reduction indices
//!   `k` fall into blocks of 64 in increasing order (the last may be shorter); each block is one
//!   float32 accumulator that starts at +0 and takes `acc = fma(a[k], b[k], acc)` for its `k`
//!   in increasing order, every fused multiply-add rounded once (IEEE 754's fusedMultiplyAdd:
//!   AVX-512, AVX2+FMA, CUDA's `fmaf` and the libm crate's software `fmaf` all give its one
//!   correctly rounded result); the output is the blocks' sums added in order,
//!   `((s0 + s1) + s2) + ...`. A bias is added last. For conv2d the
//!   reduction index runs over the weight's own layout (`[in channel][ky][kx]`), a padded input
//!   element being +0.
//! - **Statistics** (group_norm's mean and variance, softmax's denominator): float64, in
//!   increasing flat index, two passes (mean, then the squared deviations).
//! - **Normalisations** (group_norm, layer_norm): `((x - mean) * rstd)` in float64 with
//!   `rstd = 1 / sqrt(var + eps)`, rounded to float32 once, then `* gamma + beta` in float32.
//! - **Transcendentals**: the `libm` crate (rust-lang's port of musl), never the platform's:
//!   `silu(x) = x * (1 / (1 + expf(-x)))`, softmax's `expf(x - max)`,
//!   `gelu(x) = (x * 0.5) * (1 + erff(x * FRAC_1_SQRT_2))` (erf form, diffusers' and CLIP's
//!   "gelu"), `quick_gelu(x) = x * (1 / (1 + expf(-(x * 1.702))))` (CLIP's QuickGELU).
//! - **Attention**: `softmax((q k^T) * s) v` with `s = (1 / sqrt(d)) as f32` multiplied after
//!   the dot products; a causal mask sets the scores of later keys to -inf before the softmax
//!   (whose `expf` then gives exactly 0).
//!
//! Threads (rayon) split output elements only; a vector unit of any width computes lanes of
//! independent sums. So the bits depend on neither the ISA ([`Isa`], which the tests force in
//! turn), the thread count nor the batch size (each sample's outputs are computed alone).
//!
//! The kernels themselves are the crate `reprodiff-kernels` (src/portable/kernels/), built
//! optimised whatever reprodiff's own opt-level; this module is their tensor glue, and its
//! tests are theirs.
use crate::error::{Error, Result};
use reprodiff_kernels::{elementwise, norm, Rhs, View};
use tch::{Kind, Tensor};

pub use reprodiff_kernels::{cumprod, linspace, Isa, ORDER_RULE};

/// Forces an ISA for the portable kernels (`baseline`, `avx2`, `avx512`): the tests run each.
pub const ISA_ENV: &str = "REPRODIFF_PORTABLE_ISA";

/// [`ISA_ENV`] if set (an error names a value this CPU cannot run), else the widest.
pub fn chosen_isa() -> Result<Isa> {
    let available = Isa::available();
    match std::env::var(ISA_ENV) {
        Err(_) => Ok(*available.last().expect("baseline is always available")),
        Ok(v) => parse_isa(&v, &available),
    }
}

/// `v` as an ISA of `available`, or an error naming the variable and the value.
pub fn parse_isa(v: &str, available: &[Isa]) -> Result<Isa> {
    let isa = match v {
        "baseline" => Isa::Baseline,
        "avx2" => Isa::Avx2,
        "avx512" => Isa::Avx512,
        _ => return Err(Error::env(ISA_ENV, v, "expected baseline, avx2 or avx512")),
    };
    if !available.contains(&isa) {
        return Err(Error::Unavailable(format!(
            "{ISA_ENV}={v}: this CPU cannot run it"
        )));
    }
    Ok(isa)
}

/// A float32 CPU tensor's values and shape.
pub fn values(t: &Tensor) -> Result<(Vec<f32>, Vec<i64>)> {
    let t = dense(t)?;
    Ok((slice(&t).to_vec(), t.size()))
}

/// x as a contiguous float32 CPU tensor (x itself when it is one already).
fn dense(x: &Tensor) -> Result<Tensor> {
    if x.kind() != Kind::Float || x.device() != tch::Device::Cpu {
        return Err(Error::InvalidArgument(format!(
            "portable kernels take float32 CPU tensors, not {:?} on {:?}",
            x.kind(),
            x.device()
        )));
    }
    Ok(x.contiguous())
}

/// The values of a tensor from [`dense`] or [`empty`], borrowed (no copy).
fn slice(t: &Tensor) -> &[f32] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    // SAFETY: t is a contiguous float32 CPU tensor of n elements (dense or empty made it), and
    // the borrow of t keeps its storage alive.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
}

/// A new float32 CPU tensor of `shape`, uninitialised, and its values to write.
fn empty(shape: &[i64]) -> Tensor {
    Tensor::empty(shape, (Kind::Float, tch::Device::Cpu))
}

/// The values of a tensor made by [`empty`], to write.
fn slice_mut(t: &mut Tensor) -> &mut [f32] {
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    // SAFETY: t is a fresh contiguous float32 CPU tensor of n elements that nothing else
    // references, and the mutable borrow of t keeps it so.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
}

/// `x @ w.T + b` over the last dimension of x ([.., k]) with w of [n, k].
pub fn linear(isa: Isa, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x, w) = (dense(x)?, dense(w)?);
    let b = b.map(dense).transpose()?;
    let xs = x.size();
    let k = *xs.last().expect("linear input has a last dimension") as usize;
    let n = w.size()[0] as usize;
    let m = x.numel() / k.max(1);
    let mut shape = xs.clone();
    *shape.last_mut().expect("non-empty") = n as i64;
    let mut out = empty(&shape);
    let bias = b.as_ref().map(slice);
    reprodiff_kernels::gemm_nt(
        isa,
        slice(&x),
        slice(&w),
        (m, n, k),
        bias,
        slice_mut(&mut out),
    );
    Ok(out)
}

/// `bmm(a, b)` for a of [batch, m, k] and b of [batch, k, n]; b may be the transpose of a
/// contiguous [batch, n, k] (attention's keys), read as it lies.
pub fn bmm(isa: Isa, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = dense(a)?;
    let s = a.size();
    let (batch, m, k, n) = (
        s[0] as usize,
        s[1] as usize,
        s[2] as usize,
        b.size()[2] as usize,
    );
    let bt = b.transpose(1, 2);
    let transposed = bt.is_contiguous();
    let bd = dense(if transposed { &bt } else { b })?;
    let (av, bv) = (slice(&a), slice(&bd));
    let mut out = empty(&[batch as i64, m as i64, n as i64]);
    for (i, o) in slice_mut(&mut out).chunks_mut(m * n).enumerate() {
        let bi = &bv[i * n * k..(i + 1) * n * k];
        let view = if transposed {
            View::transposed(bi, k)
        } else {
            View::rows(bi, n)
        };
        let ai = View::rows(&av[i * m * k..(i + 1) * m * k], k);
        reprodiff_kernels::gemm(isa, (m, n, k), ai, Rhs::View(view), o);
    }
    Ok(out)
}

/// `softmax((q k^T) * s) v` for q [b, h, n, d] and k, v [b, h, m, d], with `s = (1 / sqrt(d)) as
/// f32` multiplied after the dot products; `causal`: query i sees keys 0..=i only. Row block by
/// row block ([`reprodiff_kernels::attention`]): the bits of the whole computation (`bmm`, the
/// scale, the mask, [`softmax`], `bmm`) without its `n x m` scores.
pub fn attention(isa: Isa, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
    let s = q.size();
    let (heads, n, d) = ((s[0] * s[1]) as usize, s[2] as usize, s[3] as usize);
    let m = k.size()[2] as usize;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let mut out = empty(&s);
    let shape = reprodiff_kernels::attention::Heads { heads, n, m, d };
    let qkv = (slice(&q), slice(&k), slice(&v));
    reprodiff_kernels::attention::attention(isa, qkv, shape, scale, causal, slice_mut(&mut out));
    Ok(out)
}

/// conv2d of x [N, C, H, W] with w [O, C, kh, kw] (groups 1, dilation 1), each sample alone.
pub fn conv2d(
    isa: Isa,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: i64,
    padding: i64,
) -> Result<Tensor> {
    let (x, w) = (dense(x)?, dense(w)?);
    let b = b.map(dense).transpose()?;
    let (xs, ws) = (x.size(), w.size());
    let [n, c, h, wd] = [xs[0], xs[1], xs[2], xs[3]].map(|d| d as usize);
    let [o, wc, kh, kw] = [ws[0], ws[1], ws[2], ws[3]].map(|d| d as usize);
    if wc != c {
        return Err(Error::InvalidArgument(format!(
            "conv2d: input has {c} channels, the weight {wc}"
        )));
    }
    let g = reprodiff_kernels::Conv {
        c,
        h,
        w: wd,
        kh,
        kw,
        stride: stride as usize,
        padding: padding as usize,
    };
    let (ho, wo) = g.out_hw();
    let mut out = empty(&[n as i64, o as i64, ho as i64, wo as i64]);
    let (xv, wv, bias) = (slice(&x), slice(&w), b.as_ref().map(slice));
    for (img, dst) in slice_mut(&mut out).chunks_mut(o * ho * wo).enumerate() {
        let xi = &xv[img * c * h * wd..(img + 1) * c * h * wd];
        reprodiff_kernels::conv2d_image(isa, xi, g, (wv, o), bias, dst);
    }
    Ok(out)
}

/// group_norm of x [N, C, *] with per-channel gamma and beta: per sample and group, mean and
/// variance in float64 (two passes, increasing index), `rstd = 1 / sqrt(var + eps)` in float64,
/// then `((x - mean) * rstd) as f32 * gamma + beta` in float32.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    group_norm_then(x, groups, (gamma, beta), eps, None)
}

/// [`silu`] of [`group_norm`], in one pass over x: the bits of the two.
pub fn group_norm_silu(
    isa: Isa,
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let then = (isa, elementwise::Sigmoidal::Silu);
    group_norm_then(x, groups, (gamma, beta), eps, Some(then))
}

fn group_norm_then(
    x: &Tensor,
    groups: usize,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    then: Option<(Isa, elementwise::Sigmoidal)>,
) -> Result<Tensor> {
    let (x, g, b) = (dense(x)?, dense(gamma)?, dense(beta)?);
    let s = x.size();
    let mut out = empty(&s);
    let nc = (s[0] as usize, s[1] as usize);
    let (xv, gv, bv) = (slice(&x), slice(&g), slice(&b));
    norm::group_norm(xv, slice_mut(&mut out), nc, groups, (gv, bv), eps, then);
    Ok(out)
}

/// layer_norm of x [.., d] over its last dimension with gamma and beta of `[d]`: per row, as
/// [`group_norm`] per group (float64 mean and variance in increasing index, one rounding).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let (x, g, b) = (dense(x)?, dense(gamma)?, dense(beta)?);
    let s = x.size();
    let d = *s.last().expect("layer_norm over a last dimension") as usize;
    if g.numel() != d || b.numel() != d {
        return Err(Error::InvalidArgument(format!(
            "layer_norm: the last dimension is {d}, the weight {} and the bias {}",
            g.numel(),
            b.numel()
        )));
    }
    let mut out = empty(&s);
    norm::layer_norm(slice(&x), slice_mut(&mut out), d, slice(&g), slice(&b), eps);
    Ok(out)
}

/// `f` on every element of a float32 CPU tensor (the libm crate's transcendentals, say).
pub fn map(x: &Tensor, f: fn(f32) -> f32) -> Result<Tensor> {
    let x = dense(x)?;
    let mut out = empty(&x.size());
    elementwise::map(slice(&x), slice_mut(&mut out), f);
    Ok(out)
}

/// [`elementwise::silu`], [`elementwise::quick_gelu`] or [`elementwise::gelu`] on every element,
/// 16 at a time.
fn sigmoidal(x: &Tensor, f: elementwise::Sigmoidal) -> Result<Tensor> {
    let isa = chosen_isa()?;
    let x = dense(x)?;
    let mut out = empty(&x.size());
    elementwise::map_sigmoidal(isa, slice(&x), slice_mut(&mut out), f);
    Ok(out)
}

/// `x * (1 / (1 + expf(-x)))`, elementwise.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    sigmoidal(x, elementwise::Sigmoidal::Silu)
}

/// GELU, erf form: `(x * 0.5) * (1 + erff(x * FRAC_1_SQRT_2))`, elementwise.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    sigmoidal(x, elementwise::Sigmoidal::Gelu)
}

/// transformers' QuickGELU: `x * (1 / (1 + expf(-(x * 1.702))))`, elementwise.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    sigmoidal(x, elementwise::Sigmoidal::QuickGelu)
}

/// softmax over the last dimension: `expf(x - max)` in float32, the sum in float64 (increasing
/// index), each divided by it in float64 and rounded once.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let x = dense(x)?;
    let s = x.size();
    let d = *s.last().expect("softmax over a last dimension") as usize;
    let mut out = empty(&s);
    norm::softmax(chosen_isa()?, slice(&x), slice_mut(&mut out), d);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(shape)
    }

    /// Deterministic values in [-1, 1) (xorshift), fixed by the seed.
    fn noise(seed: u64, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        tensor(&v, shape)
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        values(t).unwrap().0.iter().map(|x| x.to_bits()).collect()
    }

    /// Every op of the order rule on shapes the UNets use: conv2d 3x3 (stride 1 and 2), 1x1,
    /// linear, bmm (odd sizes, so every tile shape and its edges run), group_norm, silu,
    /// softmax, layer_norm, gelu, quick_gelu.
    fn all_ops(isa: Isa) -> Vec<Vec<u32>> {
        let x = noise(1, &[2, 35, 9, 7]);
        let w3 = noise(2, &[19, 35, 3, 3]);
        let w1 = noise(3, &[5, 35, 1, 1]);
        let b = noise(4, &[19]);
        let lx = noise(5, &[3, 4, 77]);
        let lw = noise(6, &[21, 77]);
        let qa = noise(7, &[2, 13, 40]);
        let qb = noise(8, &[2, 40, 11]);
        let qk = noise(18, &[1, 2, 67, 24]);
        vec![
            bits(&conv2d(isa, &x, &w3, Some(&b), 1, 1).unwrap()),
            bits(&conv2d(isa, &x, &w3, None, 2, 1).unwrap()),
            bits(&conv2d(isa, &x, &w1, None, 1, 0).unwrap()),
            // Patches too many to pack whole: packed a chunk at a time by column tasks.
            bits(
                &conv2d(
                    isa,
                    &noise(19, &[1, 30, 40, 40]),
                    &noise(23, &[8, 30, 3, 3]),
                    None,
                    1,
                    1,
                )
                .unwrap(),
            ),
            // Few pixels, many filters: the patch matrix, maybe transposed, on the wide ISAs.
            bits(
                &conv2d(
                    isa,
                    &noise(14, &[1, 8, 4, 4]),
                    &noise(15, &[40, 8, 3, 3]),
                    None,
                    2,
                    1,
                )
                .unwrap(),
            ),
            bits(&linear(isa, &lx, &lw, Some(&noise(9, &[21]))).unwrap()),
            bits(&bmm(isa, &qa, &qb).unwrap()),
            bits(&group_norm(&x, 5, &noise(10, &[35]), &noise(11, &[35]), 1e-6).unwrap()),
            bits(&silu(&x).unwrap()),
            bits(&group_norm_silu(isa, &x, 5, &noise(10, &[35]), &noise(11, &[35]), 1e-6).unwrap()),
            bits(&softmax(&(&lx * 8.0)).unwrap()),
            bits(&layer_norm(&lx, &noise(12, &[77]), &noise(13, &[77]), 1e-5).unwrap()),
            bits(&gelu(&(&x * 4.0)).unwrap()),
            bits(&quick_gelu(&(&x * 4.0)).unwrap()),
            bits(&attention(isa, &noise(16, &[1, 2, 70, 24]), &qk, &qk, false).unwrap()),
            bits(&attention(isa, &qk, &qk, &noise(17, &[1, 2, 67, 24]), true).unwrap()),
        ]
    }

    /// The same bits from every ISA this CPU runs and at 1, 2 and 3 threads.
    #[test]
    fn the_bits_depend_on_neither_the_isa_nor_the_thread_count() {
        let isas = Isa::available();
        let reference = all_ops(Isa::Baseline);
        for &isa in &isas {
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| all_ops(isa));
                assert!(got == reference, "{isa:?} at {threads} threads differs");
            }
        }
        eprintln!("same bits on {isas:?} at 1, 2, 3 threads");
    }

    /// The order rule written out plainly, one output at a time: blocks of 64 reduction
    /// indices, each a chain of `f32::mul_add` (correctly rounded on every platform) from +0,
    /// the blocks' sums added in order.
    fn rule_dot(a: impl Iterator<Item = f32>, b: impl Iterator<Item = f32>) -> f32 {
        let pairs: Vec<(f32, f32)> = a.zip(b).collect();
        let mut out: Option<f32> = None;
        for block in pairs.chunks(64) {
            let s = block.iter().fold(0f32, |acc, (x, y)| x.mul_add(*y, acc));
            out = Some(out.map_or(s, |o| o + s));
        }
        out.unwrap_or(0.0)
    }

    /// Every ISA's GEMM, on shapes with edges in every direction, a reduction of several
    /// blocks and both orientations, equals the rule computed one output at a time: a small b
    /// (packed whole) and a large one (packed a chunk at a time by column tasks).
    #[test]
    fn the_gemm_is_the_order_rule_one_output_at_a_time() {
        for (m, k, n) in [(29, 203, 45), (13, 500, 600)] {
            let (a, b) = (noise(20, &[2, m, k]), noise(21, &[2, k, n]));
            let keys = noise(22, &[2, n, k]);
            let av = values(&a).unwrap().0;
            let bv = values(&b).unwrap().0;
            let kv = values(&keys).unwrap().0;
            let (m, k, n) = (m as usize, k as usize, n as usize);
            for isa in Isa::available() {
                let got = values(&bmm(isa, &a, &b).unwrap()).unwrap().0;
                let got_t = values(&bmm(isa, &a, &keys.transpose(1, 2)).unwrap())
                    .unwrap()
                    .0;
                for (bi, i, j) in
                    (0..2).flat_map(|x| (0..m).flat_map(move |i| (0..n).map(move |j| (x, i, j))))
                {
                    let row = || (0..k).map(|p| av[(bi * m + i) * k + p]);
                    let want = rule_dot(row(), (0..k).map(|p| bv[(bi * k + p) * n + j]));
                    let want_t = rule_dot(row(), (0..k).map(|p| kv[(bi * n + j) * k + p]));
                    let at = (bi * m + i) * n + j;
                    let (g, gt) = (got[at].to_bits(), got_t[at].to_bits());
                    assert_eq!(g, want.to_bits(), "{isa:?} {m}x{n}x{k} ({bi}, {i}, {j})");
                    assert_eq!(
                        gt,
                        want_t.to_bits(),
                        "{isa:?} {m}x{n}x{k} keys ({bi}, {i}, {j})"
                    );
                }
            }
        }
    }

    /// softmax, its rows side by side, is each row's rule computed alone: libm's expf of
    /// `x - max`, the float64 sum in increasing index, the float64 division rounded once.
    #[test]
    fn softmax_is_its_rule_row_by_row() {
        let x = noise(43, &[2, 5, 77]) * 20.0;
        let (xv, _) = values(&x).unwrap();
        let got = values(&softmax(&x).unwrap()).unwrap().0;
        for (row, out) in xv.chunks(77).zip(got.chunks(77)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|v| libm::expf(v - max)).collect();
            let mut sum = 0f64;
            for v in &e {
                sum += f64::from(*v);
            }
            for (o, v) in out.iter().zip(&e) {
                assert_eq!(o.to_bits(), ((f64::from(*v) / sum) as f32).to_bits());
            }
        }
    }

    /// softmax's division by its row sum, taken from a product where that is provably the same,
    /// is the float64 quotient rounded once on every ISA: on values of every magnitude and
    /// kind, and on quotients planted within a few float64 steps of float32's rounding points
    /// (sums made as `x / midpoint`, then moved by up to 12 steps either way).
    #[test]
    fn the_division_by_the_sum_is_the_quotient_bit_for_bit() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let specials = [0.0, -0.0, f32::NAN, f32::INFINITY, -1.0, 1e-45, 1e-39, 1.0];
        let mut cases: Vec<(f64, Vec<f32>)> = Vec::new();
        for sum in [0.5, 1.0, 3.0, 4096.5, 1e301, f64::NAN, f64::INFINITY] {
            let mut xs = specials.to_vec();
            xs.extend((0..4000).map(|_| f32::from_bits(next() as u32 & 0x7fff_ffff)));
            cases.push((sum, xs));
        }
        for _ in 0..20_000 {
            let x = f32::from_bits(0x3000_0000 + (next() as u32 % 0x0f80_0000));
            let v = f32::from_bits(0x0100_0000 + (next() as u32 % (x.to_bits() - 0x0100_0000)));
            let midpoint = f64::from_bits(f64::from(v).to_bits() + 0x1000_0000);
            let sum = f64::from(x) / midpoint;
            let nearby =
                (-12i64..=12).map(|s| f64::from_bits(sum.to_bits().wrapping_add_signed(s)));
            cases.extend(nearby.filter(|s| *s >= 1.0).map(|s| (s, vec![x; 19])));
        }
        for isa in Isa::available() {
            for (sum, xs) in &cases {
                let mut got = xs.clone();
                norm::divide(isa, &mut got, *sum);
                for (g, x) in got.iter().zip(xs) {
                    let want = (f64::from(*x) / sum) as f32;
                    assert_eq!(g.to_bits(), want.to_bits(), "{isa:?}: {x:e} / {sum:e}");
                }
            }
        }
    }

    /// group_norm with SiLU in one pass gives the bits of the two ops in turn.
    #[test]
    fn group_norm_silu_is_silu_of_group_norm() {
        let x = noise(40, &[2, 64, 9, 7]) * 5.0;
        let (g, b) = (noise(41, &[64]), noise(42, &[64]));
        for isa in Isa::available() {
            let fused = bits(&group_norm_silu(isa, &x, 32, &g, &b, 1e-5).unwrap());
            let apart = bits(&silu(&group_norm(&x, 32, &g, &b, 1e-5).unwrap()).unwrap());
            assert!(fused == apart, "{isa:?}");
        }
    }

    /// Attention row block by row block gives the bits of the whole computation: the scores by
    /// [`bmm`], times the scale in float32 (libtorch's multiply), the causal mask, [`softmax`],
    /// [`bmm`] by v; with more queries than a block and keys past a block of the reduction.
    #[test]
    fn attention_by_row_blocks_is_the_whole_computation() {
        let whole = |isa, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool| {
            let (s, m) = (q.size(), k.size()[2]);
            let flat = |t: &Tensor, rows| t.contiguous().reshape([s[0] * s[1], rows, s[3]]);
            let scores = bmm(isa, &flat(q, s[2]), &flat(k, m).transpose(1, 2)).unwrap();
            let mut scores = scores * f64::from((1.0 / (s[3] as f64).sqrt()) as f32);
            if causal {
                let later = Tensor::ones([s[2], m], (Kind::Bool, tch::Device::Cpu)).triu(1);
                scores = scores.masked_fill(&later, f64::NEG_INFINITY);
            }
            let probs = softmax(&scores).unwrap();
            bmm(isa, &probs, &flat(v, m)).unwrap().reshape(&s[..])
        };
        for isa in Isa::available() {
            for (n, m, causal) in [(150, 77, false), (150, 150, true), (9, 130, false)] {
                let q = noise(30, &[2, 3, n, 40]) * 3.0;
                let (k, v) = (noise(31, &[2, 3, m, 40]) * 3.0, noise(32, &[2, 3, m, 40]));
                let got = bits(&attention(isa, &q, &k, &v, causal).unwrap());
                let want = bits(&whole(isa, &q, &k, &v, causal));
                assert!(got == want, "{isa:?} n {n} m {m} causal {causal}");
            }
        }
    }

    /// `lane` on 16 values is `scalar` on each, bit for bit (NaN for NaN), on every ISA: on every
    /// 61st float32 bit pattern (all exponents, both signs, NaNs and infinities), in blocks that
    /// mix special values in, and on `dense` (2^22 blocks of 16 neighbouring values across it).
    fn lanes_are_scalar(
        name: &str,
        lane: unsafe fn(Isa, [f32; 16]) -> [f32; 16],
        scalar: fn(f32) -> f32,
        dense: (f32, f32),
    ) {
        let mut blocks = 0u64;
        let mut block = [0f32; 16];
        let mut check = |block: &[f32; 16]| {
            for isa in Isa::available() {
                // SAFETY: `available` lists what this CPU runs.
                let got = unsafe { lane(isa, *block) };
                for (g, x) in got.iter().zip(block) {
                    let want = scalar(*x);
                    if g.to_bits() != want.to_bits() && !(g.is_nan() && want.is_nan()) {
                        panic!("{isa:?}: {name}({x:e}) = {g:e}, libm {want:e}");
                    }
                }
            }
            blocks += 1;
        };
        for (n, bits) in (0..=u32::MAX).step_by(61).enumerate() {
            block[n % 16] = f32::from_bits(bits);
            if n % 16 == 15 {
                check(&block);
            }
        }
        let (from, to) = dense;
        for i in 0..(1 << 22) {
            let base = from + (to - from) * (i as f32 / (1u32 << 22) as f32);
            let b: [f32; 16] = std::array::from_fn(|j| f32::from_bits(base.to_bits() + j as u32));
            check(&b);
        }
        assert!(blocks > 4_000_000, "{name}: {blocks} blocks");
    }

    /// The 16-lane expf is the libm crate's, bit for bit; dense in its main range.
    #[test]
    fn the_lane_expf_is_libms_bit_for_bit() {
        let lane = reprodiff_kernels::expf::expf16;
        lanes_are_scalar("expf", lane, libm::expf, (-87.3, 87.3));
    }

    /// The 16-lane erff is the libm crate's, bit for bit: the every-61st pass reaches all its
    /// formulas (|x| below 2^-28, 0.84375, 1.25, 1/0.35 and 6, and above); the dense one covers
    /// -7..7 with 16 neighbouring values every 3.3e-6.
    #[test]
    fn the_lane_erff_is_libms_bit_for_bit() {
        let lane = reprodiff_kernels::erff::erff16;
        lanes_are_scalar("erff", lane, libm::erff, (-7.0, 7.0));
    }

    /// Each sample of a batch is computed alone: a batch of 3 gives each image's own bits.
    #[test]
    fn the_bits_do_not_depend_on_the_batch() {
        let isa = chosen_isa().unwrap();
        let x = noise(1, &[3, 12, 8, 8]);
        let w = noise(2, &[7, 12, 3, 3]);
        let batch = bits(&conv2d(isa, &x, &w, None, 1, 1).unwrap());
        let gb = noise(3, &[12]);
        let gnb = bits(&group_norm(&x, 4, &gb, &gb, 1e-5).unwrap());
        let per = batch.len() / 3;
        let per_gn = gnb.len() / 3;
        for i in 0..3 {
            let one = x.narrow(0, i, 1);
            assert_eq!(
                bits(&conv2d(isa, &one, &w, None, 1, 1).unwrap()),
                batch[i as usize * per..(i as usize + 1) * per]
            );
            assert_eq!(
                bits(&group_norm(&one, 4, &gb, &gb, 1e-5).unwrap()),
                gnb[i as usize * per_gn..(i as usize + 1) * per_gn]
            );
        }
    }

    /// Against libtorch in float64, every output is within the order rule's error bound:
    /// `|got - exact| <= (64 + ceil(k / 64) + 1) * 2^-24 * sum_k |a_k b_k|` for a dot product
    /// of length k (a block's chain of at most 64 fused multiply-adds, each rounded once, the
    /// blocks' additions, the bias), and group_norm within a few float32 ulps.
    #[test]
    fn the_order_rule_is_as_accurate_as_its_bound() {
        let isa = chosen_isa().unwrap();
        let x = noise(1, &[2, 64, 8, 8]);
        let w = noise(2, &[16, 64, 3, 3]);
        let got = values(&conv2d(isa, &x, &w, None, 1, 1).unwrap()).unwrap().0;
        let f64_ = |t: &Tensor| t.to_kind(Kind::Double);
        let exact = f64_(&x).conv2d(&f64_(&w), None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let scale =
            f64_(&x)
                .abs()
                .conv2d(&f64_(&w).abs(), None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let exact: Vec<f64> = Vec::try_from(exact.view(-1)).unwrap();
        let scale: Vec<f64> = Vec::try_from(scale.view(-1)).unwrap();
        let k = 64 * 9;
        let gamma = (64.0 + (k as f64 / 64.0).ceil() + 1.0) * 2f64.powi(-24);
        let worst = got
            .iter()
            .zip(&exact)
            .zip(&scale)
            .map(|((g, e), s)| (f64::from(*g) - e).abs() / (gamma * s))
            .fold(0.0, f64::max);
        assert!(worst <= 1.0, "conv2d at {worst} of its bound");
        let gb = Tensor::ones([64], (Kind::Float, tch::Device::Cpu));
        let zb = Tensor::zeros([64], (Kind::Float, tch::Device::Cpu));
        let gn = values(&group_norm(&x, 8, &gb, &zb, 1e-6).unwrap())
            .unwrap()
            .0;
        let gn_exact: Vec<f64> = Vec::try_from(
            f64_(&x)
                .group_norm(8, None::<Tensor>, None::<Tensor>, 1e-6, false)
                .view(-1),
        )
        .unwrap();
        let ulps = gn
            .iter()
            .zip(&gn_exact)
            .map(|(g, e)| (f64::from(*g) - e).abs() / (e.abs().max(1e-3) * 2f64.powi(-23)))
            .fold(0.0, f64::max);
        assert!(ulps <= 2.0, "group_norm within {ulps} ulps");
    }

    #[test]
    fn a_forced_isa_the_cpu_lacks_or_a_typo_is_named() {
        let e = parse_isa("neon", &[Isa::Baseline]).unwrap_err().to_string();
        assert!(e.contains(ISA_ENV) && e.contains("neon"), "{e}");
        let e = parse_isa("avx512", &[Isa::Baseline, Isa::Avx2]).unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e}");
        assert_eq!(
            parse_isa("avx2", &[Isa::Baseline, Isa::Avx2]).unwrap(),
            Isa::Avx2
        );
    }
}
