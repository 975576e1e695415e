//! reprodiff's portable kernels on plain float32 slices, under the **order rule** (version 1):
//! every floating-point operation's order is fixed by the shapes alone. reprodiff's
//! `src/portable/ops.rs` states the rule in full and wraps these kernels for tensors.
//!
//! - **Dot products**: 16 lanes; lane `j` accumulates, in float32 from +0, the products
//!   `a[k] * b[k]` of the indices `k ≡ j (mod 16)` in increasing `k`, each product rounded and
//!   then added (never fused); the lanes fold `j += j + 8`, `+ 4`, `+ 2`, `+ 1`; a bias last.
//!   [`gemm_nt`] computes tiles of outputs at once (registers hold several outputs' lanes), which
//!   changes no output's order: the tile shape is a matter of speed per ISA, never of bits.
//! - Threads split output elements only, so neither the ISA nor the thread count nor the batch
//!   size changes a bit.
use rayon::prelude::*;

pub mod elementwise;
pub mod norm;

/// The order rule's version: a change of any order is a new version (and new goldens).
pub const ORDER_RULE: u32 = 1;
/// The lanes of every dot product, whatever the vector unit.
pub const LANES: usize = 16;

/// The instruction sets a kernel is compiled for; all give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64's baseline (SSE2), or any other architecture's.
    Baseline,
    Avx2,
    Avx512,
}

impl Isa {
    /// Its name (`REPRODIFF_PORTABLE_ISA`'s values).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The ISAs this CPU can run, baseline first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// The fold of a dot product's 16 lanes.
#[inline(always)]
fn fold(mut acc: [f32; LANES]) -> f32 {
    for w in [8, 4, 2, 1] {
        for j in 0..w {
            acc[j] += acc[j + w];
        }
    }
    acc[0]
}

/// A micro kernel: the outputs `out[r][c] = a_r . b_c (+ bias[c])` of an R x C tile, each in
/// the order rule's order (`a` holds R rows of length k, `b` C rows, `out` R rows of stride
/// `ld`). The kernels differ in how many registers hold the 16 lanes, never in the order.
trait Tile {
    /// # Safety
    /// The CPU runs the kernel's ISA (the caller is compiled with it).
    unsafe fn tile<const R: usize, const C: usize>(
        a: &[&[f32]; R],
        b: &[&[f32]; C],
        bias: Option<&[f32]>,
        out: &mut [f32],
        ld: usize,
    );
}

/// Writes the tile's folded lanes (and bias) to `out`.
#[inline(always)]
fn finish<const R: usize, const C: usize>(
    lanes: &[[[f32; LANES]; C]; R],
    bias: Option<&[f32]>,
    out: &mut [f32],
    ld: usize,
) {
    for r in 0..R {
        for c in 0..C {
            let d = fold(lanes[r][c]);
            out[r * ld + c] = match bias {
                Some(bias) => d + bias[c],
                None => d,
            };
        }
    }
}

/// Plain Rust lanes (any architecture; the compiler vectorises what it can).
struct Scalar;

impl Tile for Scalar {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &[&[f32]; R],
        b: &[&[f32]; C],
        bias: Option<&[f32]>,
        out: &mut [f32],
        ld: usize,
    ) {
        let k = a[0].len();
        let mut acc = [[[0f32; LANES]; C]; R];
        for i in 0..k {
            let j = i % LANES;
            for r in 0..R {
                for c in 0..C {
                    acc[r][c][j] += a[r][i] * b[c][i];
                }
            }
        }
        finish(&acc, bias, out, ld);
    }
}

/// AVX-512: the 16 lanes in one register (a multiply, then an add: never `fmadd`). The last
/// k % 16 products come from masked loads whose other lanes are +0: the accumulator gains +0
/// there, which changes no value (an accumulator that starts at +0 is never -0 under
/// round-to-nearest).
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Tile for Avx512 {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &[&[f32]; R],
        b: &[&[f32]; C],
        bias: Option<&[f32]>,
        out: &mut [f32],
        ld: usize,
    ) {
        use std::arch::x86_64::*;
        let k = a[0].len();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut ar = [_mm512_setzero_ps(); R];
        let mut base = 0;
        while base < k {
            let mask: __mmask16 = if k - base >= LANES {
                0xffff
            } else {
                ((1u32 << (k - base)) - 1) as u16
            };
            for r in 0..R {
                ar[r] = _mm512_maskz_loadu_ps(mask, a[r].as_ptr().add(base));
            }
            for c in 0..C {
                let bc = _mm512_maskz_loadu_ps(mask, b[c].as_ptr().add(base));
                for r in 0..R {
                    acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_mul_ps(ar[r], bc));
                }
            }
            base += LANES;
        }
        let mut lanes = [[[0f32; LANES]; C]; R];
        for r in 0..R {
            for c in 0..C {
                _mm512_storeu_ps(lanes[r][c].as_mut_ptr(), acc[r][c]);
            }
        }
        finish(&lanes, bias, out, ld);
    }
}

/// AVX2: the 16 lanes in two registers, as [`Avx512`] otherwise (masked loads for the tail).
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Tile for Avx2 {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &[&[f32]; R],
        b: &[&[f32]; C],
        bias: Option<&[f32]>,
        out: &mut [f32],
        ld: usize,
    ) {
        use std::arch::x86_64::*;
        let k = a[0].len();
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let mut ar = [[_mm256_setzero_ps(); 2]; R];
        let mut base = 0;
        while base < k {
            let left = k - base;
            if left >= LANES {
                for r in 0..R {
                    let p = a[r].as_ptr().add(base);
                    ar[r] = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                }
                for c in 0..C {
                    let p = b[c].as_ptr().add(base);
                    let bc = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                    for r in 0..R {
                        for h in 0..2 {
                            acc[r][c][h] =
                                _mm256_add_ps(acc[r][c][h], _mm256_mul_ps(ar[r][h], bc[h]));
                        }
                    }
                }
            } else {
                let masks = [
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), idx),
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32 - 8), idx),
                ];
                // Masked-off lanes are not read, so the pointers may pass the slice's end.
                for r in 0..R {
                    let p = a[r].as_ptr().wrapping_add(base);
                    ar[r] = [
                        _mm256_maskload_ps(p, masks[0]),
                        _mm256_maskload_ps(p.wrapping_add(8), masks[1]),
                    ];
                }
                for c in 0..C {
                    let p = b[c].as_ptr().wrapping_add(base);
                    let bc = [
                        _mm256_maskload_ps(p, masks[0]),
                        _mm256_maskload_ps(p.wrapping_add(8), masks[1]),
                    ];
                    for r in 0..R {
                        for h in 0..2 {
                            acc[r][c][h] =
                                _mm256_add_ps(acc[r][c][h], _mm256_mul_ps(ar[r][h], bc[h]));
                        }
                    }
                }
            }
            base += LANES;
        }
        let mut lanes = [[[0f32; LANES]; C]; R];
        for r in 0..R {
            for c in 0..C {
                _mm256_storeu_ps(lanes[r][c].as_mut_ptr(), acc[r][c][0]);
                _mm256_storeu_ps(lanes[r][c].as_mut_ptr().add(8), acc[r][c][1]);
            }
        }
        finish(&lanes, bias, out, ld);
    }
}

/// `R` rows of the output: C-wide tiles across the columns, then single columns.
#[inline(always)]
unsafe fn rows<T: Tile, const R: usize, const C: usize>(
    a: &[f32],
    b: &[f32],
    (n, k): (usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut ar: [&[f32]; R] = [&[]; R];
    for (r, x) in ar.iter_mut().enumerate() {
        *x = &a[r * k..(r + 1) * k];
    }
    let mut j = 0;
    while j + C <= n {
        let mut bc: [&[f32]; C] = [&[]; C];
        for (c, x) in bc.iter_mut().enumerate() {
            *x = &b[(j + c) * k..(j + c + 1) * k];
        }
        T::tile::<R, C>(&ar, &bc, bias.map(|x| &x[j..]), &mut out[j..], n);
        j += C;
    }
    while j < n {
        let bc = [&b[j * k..(j + 1) * k]];
        T::tile::<R, 1>(&ar, &bc, bias.map(|x| &x[j..]), &mut out[j..], n);
        j += 1;
    }
}

/// A block of output rows of `gemm_nt` (`a` and `out` hold `out.len() / n` rows): R-row tiles,
/// then single rows.
#[inline(always)]
unsafe fn block<T: Tile, const R: usize, const C: usize>(
    a: &[f32],
    b: &[f32],
    (n, k): (usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let m = out.len() / n;
    let mut i = 0;
    while i + R <= m {
        rows::<T, R, C>(&a[i * k..], b, (n, k), bias, &mut out[i * n..(i + R) * n]);
        i += R;
    }
    while i < m {
        rows::<T, 1, C>(&a[i * k..], b, (n, k), bias, &mut out[i * n..(i + 1) * n]);
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(
    a: &[f32],
    b: &[f32],
    nk: (usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    // Two registers per output: a 2 x 3 tile keeps 12 accumulators of the 16 (2 x 2 and 2 x 3
    // measured alike, 3 x 2 and 1 x 6 slower).
    block::<Avx2, 2, 3>(a, b, nk, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(
    a: &[f32],
    b: &[f32],
    nk: (usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    // One register per output: a 4 x 6 tile keeps 24 accumulators of the 32 (measured on a
    // 1024 x 128 x 1152 product, 2 threads, Intel Xeon: 4 x 6 ~85 GFLOP/s, 3 x 8 70, 4 x 4 49-59,
    // 5 x 5 50, 6 x 4 46; libtorch's sgemm 150).
    block::<Avx512, 4, 6>(a, b, nk, bias, out)
}

/// Output rows per task. Each task streams all of b; smaller tasks for the UNets' lowest
/// resolutions (16 and 64 pixels, where b is largest) were tried and gained nothing measurable on
/// a 2-core host. Which thread computes a row changes no bit.
const ROWS_PER_TASK: usize = 16;

/// `out[i][j] = sum_k a[i][k] * b[j][k] (+ bias[j])` for a of [m, k] and b of [n, k], row-major,
/// under the order rule; blocks of rows split across threads.
pub fn gemm_nt(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(a.len() == m * k && b.len() == n * k && bias.is_none_or(|x| x.len() == n));
    let mut out = vec![0f32; m * n];
    if n == 0 || m == 0 {
        return out;
    }
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(t, o)| {
            let a = &a[t * ROWS_PER_TASK * k..];
            match isa {
                // SAFETY: plain Rust.
                Isa::Baseline => unsafe { block::<Scalar, 1, 4>(a, b, (n, k), bias, o) },
                // SAFETY: callers pick only ISAs `Isa::available` reports.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { block_avx2(a, b, (n, k), bias, o) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { block_avx512(a, b, (n, k), bias, o) },
                #[cfg(not(target_arch = "x86_64"))]
                _ => unsafe { block::<Scalar, 1, 4>(a, b, (n, k), bias, o) },
            }
        });
    out
}

/// conv2d of one image x [c, h, w] with w [o, c, kh, kw] (groups 1, dilation 1): the patches
/// [ho * wo, c * kh * kw] in the weight's own layout (padding +0) times the filters, as
/// [`gemm_nt`]; the output [o, ho, wo].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_image(
    isa: Isa,
    x: &[f32],
    (c, h, wd): (usize, usize, usize),
    w: &[f32],
    (o, kh, kw): (usize, usize, usize),
    bias: Option<&[f32]>,
    stride: usize,
    padding: usize,
) -> Vec<f32> {
    let (s, p) = (stride, padding);
    let ho = (h + 2 * p - kh) / s + 1;
    let wo = (wd + 2 * p - kw) / s + 1;
    let k = c * kh * kw;
    let mut patches = vec![0f32; ho * wo * k];
    patches
        .par_chunks_mut(k)
        .enumerate()
        .for_each(|(pix, patch)| {
            let (oy, ox) = (pix / wo, pix % wo);
            // The kernel's columns that fall inside the image (the rest stay +0).
            let x0 = (ox * s) as isize - p as isize;
            let kx_lo = (-x0).max(0) as usize;
            let kx_hi = ((wd as isize - x0).min(kw as isize)).max(0) as usize;
            if kx_lo >= kx_hi {
                return;
            }
            for ky in 0..kh {
                let iy = (oy * s + ky) as isize - p as isize;
                if iy < 0 || iy as usize >= h {
                    continue;
                }
                for ci in 0..c {
                    let src = (ci * h + iy as usize) * wd;
                    let dst = (ci * kh + ky) * kw;
                    let from = (src as isize + x0 + kx_lo as isize) as usize;
                    // A loop, not copy_from_slice: a memmove call per 3 floats cost 11%.
                    for t in 0..kx_hi - kx_lo {
                        patch[dst + kx_lo + t] = x[from + t];
                    }
                }
            }
        });
    let y = gemm_nt(isa, &patches, w, (ho * wo, o, k), bias);
    let mut out = vec![0f32; o * ho * wo];
    out.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(oc, dst)| {
            for (pix, d) in dst.iter_mut().enumerate() {
                *d = y[pix * o + oc];
            }
        });
    out
}

/// `torch.linspace(start, end, steps, dtype=float32)` by the formula of ATen's scalar lambda, in
/// float32 without fused operations: `step = (end - start) / (steps - 1)`; element `i` is
/// `start + step * i` below `steps / 2`, else `end - step * (steps - i - 1)`. (ATen's vectorised
/// lambda builds runs of 8 or 16 from one base, so its values depend on the vector width:
/// measured, linspace(1e-4, 0.02, 1000) differs between ATEN_CPU_CAPABILITY=default and avx2.)
pub fn linspace(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// `torch.cumprod(x, 0)` in float32, in index order.
pub fn cumprod(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f32;
    x.iter()
        .map(|v| {
            acc *= v;
            acc
        })
        .collect()
}
