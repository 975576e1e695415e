//! reprodiff's portable kernels on plain float32 slices, under the **order rule** (version 2):
//! every floating-point operation's order is fixed by the shapes alone, so neither the ISA nor
//! the thread count nor the batch size changes a bit. reprodiff's `src/portable/ops.rs` states
//! the rule in full, once, and wraps these kernels for tensors.
use rayon::prelude::*;

pub mod attention;
pub mod elementwise;
pub mod erff;
pub mod expf;
pub mod gemm;
pub mod norm;

pub use gemm::{gemm, panel_width, Fill, Rhs, View};

/// The order rule's version: a change of any order is a new version (and new goldens; the
/// versions' history is in docs/portable.md).
pub const ORDER_RULE: u32 = 2;

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
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// `out[i][j] = sum_k a[i][k] * b[j][k] (+ bias[j])` for a of [m, k] and b of [n, k], row-major,
/// under the order rule ([`mod@gemm`]); the bias is added last.
pub fn gemm_nt(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(a.len() == m * k && b.len() == n * k && bias.is_none_or(|x| x.len() == n));
    let b = Rhs::View(View::transposed(b, k));
    gemm(isa, (m, n, k), View::rows(a, k), b, out);
    if let Some(bias) = bias {
        out.par_chunks_mut(n.max(1)).for_each(|row| {
            for (o, b) in row.iter_mut().zip(bias) {
                *o += b;
            }
        });
    }
}

/// A convolution's geometry: input [c, h, w], kernel kh x kw, stride, padding, output ho x wo.
#[derive(Debug, Clone, Copy)]
pub struct Conv {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv {
    /// The output's height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        (
            (self.h + 2 * p - self.kh) / s + 1,
            (self.w + 2 * p - self.kw) / s + 1,
        )
    }

    /// The output columns `lo..hi` whose input column `ox * s + kx - p` lies inside the image.
    #[inline(always)]
    fn columns_inside(&self, kx: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = p.saturating_sub(kx).div_ceil(s);
        let hi = if self.w + p > kx {
            (self.w + p - kx - 1) / s + 1
        } else {
            0
        };
        (lo, hi.min(self.out_hw().1))
    }

    /// Writes into `dst` the patch values of reduction index `row` (`(ci * kh + ky) *
    /// kw + kx`, the weight's layout) for output row `oy` and columns `ox0..ox0 + dst.len()`:
    /// `x[ci][oy * s + ky - p][ox * s + kx - p]`, +0 for those outside the image.
    #[inline(always)]
    fn patch_segment(&self, x: &[f32], row: usize, oy: usize, ox0: usize, dst: &mut [f32]) {
        let (ci, ky, kx) = (
            row / (self.kh * self.kw),
            row / self.kw % self.kh,
            row % self.kw,
        );
        let inside = self.columns_inside(kx);
        self.segment(x, (ci, ky, kx), inside, (oy, ox0), dst);
    }

    /// [`Conv::patch_segment`] with the row's indices and columns inside worked out.
    #[inline(always)]
    fn segment(
        &self,
        x: &[f32],
        (ci, ky, kx): (usize, usize, usize),
        (lo, hi): (usize, usize),
        (oy, ox0): (usize, usize),
        dst: &mut [f32],
    ) {
        let (s, p) = (self.stride, self.padding);
        let iy = (oy * s + ky) as isize - p as isize;
        if iy < 0 || iy as usize >= self.h {
            dst.fill(0.0);
            return;
        }
        let (lo, hi) = (lo.max(ox0), hi.min(ox0 + dst.len()));
        if lo >= hi {
            dst.fill(0.0);
            return;
        }
        dst[..lo - ox0].fill(0.0);
        dst[hi - ox0..].fill(0.0);
        let src = &x[(ci * self.h + iy as usize) * self.w..][..self.w];
        if s == 1 {
            let ix = lo + kx - p;
            copy_run(&mut dst[lo - ox0..hi - ox0], &src[ix..ix + hi - lo]);
        } else {
            for ox in lo..hi {
                dst[ox - ox0] = src[ox * s + kx - p];
            }
        }
    }

    /// Rows `p0..` of the patch matrix's columns `j0..j0 + live` (output pixels) into panels of
    /// width `w` (`chunk[panel][p - p0][c]`), every value: a [`crate::Fill`] for the product.
    /// Each reduction index's image row is read once for all the panels, in order; the pieces
    /// (a run of pixels in one output row and one panel) are worked out once per call.
    fn fill(&self, x: &[f32], (j0, live): (usize, usize), p0: usize, w: usize, chunk: &mut [f32]) {
        let wo = self.out_hw().1;
        let kb = chunk.len() / live.div_ceil(w) / w;
        // (output row, first output column, offset in the chunk's row p = 0, length)
        let mut pieces = Vec::with_capacity(live / w + live / wo.max(1) + 2);
        let mut j = j0;
        while j < j0 + live {
            let (oy, ox) = (j / wo, j % wo);
            let (panel, c) = ((j - j0) / w, (j - j0) % w);
            let len = (wo - ox).min(j0 + live - j).min(w - c);
            pieces.push((oy, ox, panel * kb * w + c, len));
            j += len;
        }
        let taps = self.kh * self.kw;
        for r in 0..kb {
            let row = p0 + r;
            let tap = (row / taps, row % taps / self.kw, row % self.kw);
            let inside = self.columns_inside(tap.2);
            for &(oy, ox, at, len) in &pieces {
                let dst = &mut chunk[at + r * w..][..len];
                self.segment(x, tap, inside, (oy, ox), dst);
            }
        }
        // The last panel's columns past the pixels.
        let (panel, c) = ((live - 1) / w, (live - 1) % w + 1);
        for row in chunk[panel * kb * w..].chunks_exact_mut(w) {
            row[c..].fill(0.0);
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of a panel's row, 16 values at a time by
/// copies of fixed length (a call to memmove per run cost as much as the copy).
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let d: &mut [f32; 16] = d.try_into().expect("16 values");
        *d = s.try_into().expect("16 values");
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// conv2d of one image x [c, h, w] with w [o, c, kh, kw] (groups 1, dilation 1) into out
/// [o, ho, wo]: the filters [o, c * kh * kw] times the patches [c * kh * kw, ho * wo] (the
/// reduction index in the weight's own layout, a padded input element +0), as [`mod@gemm`]; the
/// bias is added last.
pub fn conv2d_image(
    isa: Isa,
    x: &[f32],
    g: Conv,
    (w, o): (&[f32], usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (ho, wo) = g.out_hw();
    let (k, pix) = (g.c * g.kh * g.kw, ho * wo);
    let filters = View::rows(w, k);
    if g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0 {
        // A 1x1 convolution's patches are the image itself.
        gemm(
            isa,
            (o, pix, k),
            filters,
            Rhs::View(View::rows(x, pix)),
            out,
        );
    } else if pix < panel_width(isa) && pix < o {
        // Few pixels: the patches as a matrix, which gemm may take transposed.
        let mut patches = vec![0f32; k * pix];
        patches
            .par_chunks_mut(pix)
            .enumerate()
            .for_each(|(row, dst)| {
                for (oy, line) in dst.chunks_exact_mut(wo).enumerate() {
                    g.patch_segment(x, row, oy, 0, line);
                }
            });
        gemm(
            isa,
            (o, pix, k),
            filters,
            Rhs::View(View::rows(&patches, pix)),
            out,
        );
    } else {
        // The patches straight into the product's panels (no patch matrix).
        let patches = |j0, live, p0, w, chunk: &mut [f32]| g.fill(x, (j0, live), p0, w, chunk);
        gemm(isa, (o, pix, k), filters, Rhs::Fill(&patches), out);
    }
    if let Some(bias) = bias {
        out.par_chunks_mut(pix.max(1))
            .zip(bias)
            .for_each(|(plane, b)| plane.iter_mut().for_each(|v| *v += b));
    }
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
