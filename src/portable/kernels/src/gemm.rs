//! The order rule's dot products (stated in full in reprodiff's `src/portable/ops.rs`): per
//! output, blocks of [`KC`] = 64 reduction indices in increasing order, each a float32 chain of
//! fused multiply-adds from +0, the blocks' sums added in order.
//!
//! So an output's bits depend on its own row of `a` and column of `b` alone: the tile shape, the
//! vector width, the thread that computes it and the other rows of the batch change nothing.
//! That freedom is what makes the kernels fast: vectors run across output columns, registers
//! hold an `MR x NR` tile of accumulators, and b is packed into contiguous panels (the BLIS
//! scheme) while a's rows are read in place, so neither a horizontal fold nor a transpose is
//! needed. (Why 64, and what it was measured against: docs/portable.md.)
use crate::Isa;
use rayon::prelude::*;

/// A read-only strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix of `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix of `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn t(self) -> Self {
        View {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The reduction's block, part of the order rule (a different block is a different rule).
pub const KC: usize = 64;
/// Tiles of `MR` rows per task and column panels of `NR` per task (speed only).
const ROW_TILES_PER_TASK: usize = 4;
const COL_PANELS_PER_TASK: usize = 8;
/// The reduction indices a by-columns task packs and runs at a time: whole blocks (speed only).
const K_CHUNK: usize = 4 * KC;
/// Row tiles a by-columns task runs through all its panels before the next rows (speed only).
const ROW_GROUP: usize = 4;
/// The most values of b packed whole (1 MiB; a larger b is packed by chunks).
const WHOLE_B_MAX: usize = 1 << 18;
/// How many reduction indices ahead the AVX-512 micro kernel prefetches its panel into L1
/// (speed only; the measurements, and why the AVX2 kernel has none: docs/portable.md).
const PREFETCH_P: usize = 8;

/// The shape of one ISA's register tile.
#[derive(Clone, Copy)]
struct Shape {
    mr: usize,
    nr: usize,
}

/// The tile for a product of `n` columns on `isa`. AVX-512 has three: 12 x 32; 8 x 48 where
/// that leaves fewer lanes empty (a head of 40 values); 12 x 16 where 32 would leave a quarter
/// more of the lanes empty (few pixels). (12 x 16 waits on loads: 13 per 12 multiply-adds.)
fn shape(isa: Isa, n: usize) -> Shape {
    let padded = |nr: usize| n.div_ceil(nr) * nr;
    match isa {
        Isa::Baseline => Shape { mr: 4, nr: 4 },
        Isa::Avx2 => Shape { mr: 6, nr: 16 },
        Isa::Avx512 if padded(48) < padded(32).min(padded(16) * 13 / 12) => Shape { mr: 8, nr: 48 },
        Isa::Avx512 if padded(16) * 5 < padded(32) * 4 => Shape { mr: 12, nr: 16 },
        Isa::Avx512 => Shape { mr: 12, nr: 32 },
    }
}

/// The raw output, written by tasks that own disjoint tiles.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}
impl Out {
    /// Element (i, j)'s address.
    ///
    /// # Safety
    /// (i, j) lies inside the output.
    unsafe fn at(&self, i: usize, j: usize) -> *mut f32 {
        self.ptr.add(i * self.rs + j * self.cs)
    }
}

// SAFETY: tasks write disjoint elements (their own tiles) and the owner waits for them all.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Writes rows `p0..p0 + kb` of b's columns `j0..j0 + live` into panels of `w` columns and `kb`
/// rows, one after another (`chunk[panel][p - p0][c]`, column `j0 + panel * w + c`), every
/// value of `chunk` (+0 past column n): `fill(j0, live, p0, w, chunk)`. Several panels at
/// once, so that a convolution reads each image row once for all of them.
pub type Fill<'a> = &'a (dyn Fn(usize, usize, usize, usize, &mut [f32]) + Sync);

/// The right-hand operand: a strided view, a [`Fill`] that writes it panel by panel (a
/// convolution's patches, straight from the image), or packed once by [`pack`] for several
/// products (attention's keys and values, for each block of queries).
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    View(View<'a>),
    Fill(Fill<'a>),
    Packed(&'a Packed),
}

/// b of [k, n] packed whole in the panels its products take ([`pack`]).
#[derive(Debug)]
pub struct Packed {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

/// b of [k, n] packed for `isa`'s products of n columns, to be used as [`Rhs::Packed`].
pub fn pack(isa: Isa, (k, n): (usize, usize), b: View) -> Packed {
    let nr = shape(isa, n).nr;
    let fill = |j0: usize, live: usize, p0: usize, w: usize, panel: &mut [f32]| {
        pack_panel(panel, b.t(), (j0, live), p0, w)
    };
    Packed {
        data: pack_panels(nr, (k, n), &fill),
        k,
        n,
    }
}

/// The widest panel of `isa` (columns of b per panel).
pub fn panel_width(isa: Isa) -> usize {
    shape(isa, usize::MAX).nr
}

/// `c = a b` for a of [m, k] and b of [k, n], any strides; c row-major [m, n], every element
/// written (its previous contents do not matter).
pub fn gemm(isa: Isa, (m, n, k): (usize, usize, usize), a: View, b: Rhs, c: &mut [f32]) {
    assert_eq!(c.len(), m * n, "gemm: the output holds m * n values");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let out = Out {
        ptr: c.as_mut_ptr(),
        rs: n,
        cs: 1,
    };
    // Each output's bits are its own, so the product may as well run transposed (c^T = b^T a^T)
    // where that costs less: fewer padded lanes (a UNet's lowest resolutions have few pixels
    // and many channels) or less packing (a's rows are read in place when contiguous; b is
    // packed, cheaply when its rows are contiguous).
    // A transposed output's tiles go through a buffer, each value copied out once by a store
    // across rows (a cache line each: weighed as 8 fused multiply-adds of 32).
    let cost = |(m, n): (usize, usize), a: View, b: View, copy_out: usize| {
        let s = shape(isa, n);
        let padded = m.div_ceil(s.mr) * s.mr * n.div_ceil(s.nr) * s.nr;
        let a_pack = if a.cs == 1 { 0 } else { m * k };
        let b_pack = if b.cs == 1 { n * k / 4 } else { n * k };
        padded * k / 32 + a_pack + b_pack + copy_out
    };
    match b {
        Rhs::View(b) if cost((n, m), b.t(), a.t(), 8 * m * n) < cost((m, n), a, b, 0) => {
            let out_t = Out {
                ptr: out.ptr,
                rs: 1,
                cs: n,
            };
            product(
                isa,
                shape(isa, m),
                (n, m, k),
                b.t(),
                Rhs::View(a.t()),
                out_t,
            );
        }
        _ => product(isa, shape(isa, n), (m, n, k), a, b, out),
    }
}

/// b of [k, n] whole in panels of [`panel_width`] columns, `[panel][p][column]` with zeros past
/// column n, written by `fill`.
fn pack_panels(nr: usize, (k, n): (usize, usize), fill: Fill) -> Vec<f32> {
    let mut packed = vec![0f32; n.div_ceil(nr) * nr * k];
    packed
        .par_chunks_mut(nr * k.max(1))
        .enumerate()
        .for_each(|(jp, panel)| fill(jp * nr, (n - jp * nr).min(nr), 0, nr, panel));
    packed
}

/// `out[i][j] = sum_p a[i][p] b[p][j]`, block by block of `k`, by one of two schemes (which
/// changes no bit: each tile still runs through k in increasing order). A small b is packed
/// whole, then one parallel loop runs groups of output tiles through all of k. A large b (more
/// than [`WHOLE_B_MAX`] values) would come back from memory, so the columns are split among the
/// threads instead, and each task packs its columns a chunk of [`K_CHUNK`] rows at a time (a
/// chunk stays in cache while every row tile runs through it).
fn product(isa: Isa, s: Shape, (m, n, k): (usize, usize, usize), a: View, b: Rhs, out: Out) {
    let panels = n.div_ceil(s.nr);
    let view_fill = |j0: usize, live: usize, p0: usize, w: usize, chunk: &mut [f32]| match b {
        Rhs::View(b) => {
            let kb = chunk.len() / live.div_ceil(w) / w;
            for (i, panel) in chunk.chunks_exact_mut(kb * w).enumerate() {
                let (j, left) = (j0 + i * w, (live - i * w).min(w));
                if left < w {
                    panel.fill(0.0);
                }
                pack_panel(panel, b.t(), (j, left), p0, w);
            }
        }
        _ => unreachable!("only a view is packed here"),
    };
    let fill: Fill = match b {
        Rhs::Fill(f) => f,
        _ => &view_fill,
    };
    // a's rows: in place when contiguous, else gathered row-major.
    let gathered;
    let arows: (&[f32], usize) = if a.cs == 1 {
        (a.data, a.rs)
    } else {
        let mut buf = vec![0f32; m * k];
        buf.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            for (p, v) in row.iter_mut().enumerate() {
                *v = a.data[i * a.rs + p * a.cs];
            }
        });
        gathered = buf;
        (&gathered, k)
    };
    let threads = rayon::current_num_threads();
    if let Rhs::Packed(p) = b {
        assert_eq!((p.k, p.n), (k, n), "gemm: b packed as [k, n]");
        assert_eq!(
            p.data.len(),
            panels * s.nr * k,
            "gemm: b packed for this ISA"
        );
        whole_b(isa, s, (m, n, k), arows, &p.data, out);
    } else if k * panels * s.nr > WHOLE_B_MAX && panels >= threads {
        let tasks = threads * panels.div_ceil(threads * COL_PANELS_PER_TASK);
        by_columns(isa, s, (m, n, k), arows, fill, out, panels.div_ceil(tasks));
    } else {
        let bp = pack_panels(s.nr, (k, n), fill);
        whole_b(isa, s, (m, n, k), arows, &bp, out);
    }
}

/// [`product`] with b packed whole in `bp`: tasks of [`ROW_TILES_PER_TASK`] row tiles by
/// [`COL_PANELS_PER_TASK`] panels, each tile through all of k.
fn whole_b(
    isa: Isa,
    s: Shape,
    (m, n, k): (usize, usize, usize),
    (arows, lda): (&[f32], usize),
    bp: &[f32],
    out: Out,
) {
    let (row_tiles, panels) = (m.div_ceil(s.mr), n.div_ceil(s.nr));
    let row_tasks = row_tiles.div_ceil(ROW_TILES_PER_TASK);
    let col_tasks = panels.div_ceil(COL_PANELS_PER_TASK);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|t| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let tiles = rt * ROW_TILES_PER_TASK..((rt + 1) * ROW_TILES_PER_TASK).min(row_tiles);
        let cols = ct * COL_PANELS_PER_TASK..((ct + 1) * COL_PANELS_PER_TASK).min(panels);
        for jp in cols {
            let panel = &bp[jp * s.nr * k..(jp + 1) * s.nr * k];
            for it in tiles.clone() {
                let (i0, j0) = (it * s.mr, jp * s.nr);
                let valid = ((m - i0).min(s.mr), (n - j0).min(s.nr));
                let ap = (&arows[i0 * lda..], lda);
                // SAFETY: this task alone owns the tile (i0, j0); `valid` keeps it in c.
                unsafe { tile((isa, s), k, ap, panel, out, (i0, j0), valid) };
            }
        }
    });
}

/// [`product`] for a large b: one task per `per` panels of columns, each packing its panels
/// a chunk of k at a time and running every row tile through the chunk. A task sums its
/// columns in its own contiguous buffer (whole tiles, rows past m included: a row of a large
/// output would put every row of a tile in the same cache set); the last block of a whole tile
/// stores its sums in c, the other tiles are copied out at the end.
/// A task's buffers are reused by the next task on the thread (every value is written before
/// it is read: the panels by `fill`, the sums by the first block, which stores).
#[allow(clippy::too_many_arguments)]
fn by_columns(
    isa: Isa,
    s: Shape,
    (m, n, k): (usize, usize, usize),
    (arows, lda): (&[f32], usize),
    fill: Fill,
    out: Out,
    per: usize,
) {
    let (row_tiles, panels) = (m.div_ceil(s.mr), n.div_ceil(s.nr));
    let tasks = (0..panels.div_ceil(per)).into_par_iter();
    tasks.for_each_init(Vec::new, |bufs: &mut Vec<f32>, t| {
        let cols = t * per..((t + 1) * per).min(panels);
        let width = cols.len() * s.nr;
        let j0 = cols.start * s.nr;
        let live = (cols.end * s.nr).min(n) - j0;
        let (b_len, c_len) = (width * K_CHUNK.min(k), row_tiles * s.mr * width);
        if bufs.len() < b_len + c_len {
            bufs.resize(b_len + c_len, 0.0);
        }
        let (buf, sums) = bufs.split_at_mut(b_len);
        let sums = &mut sums[..c_len];
        // Whole tiles of a row-major output take their last block's sums straight from the
        // buffer into c; the rest are copied out at the end.
        let direct = out.cs == 1;
        let (whole_rows, whole_cols) = match direct {
            true => (m / s.mr * s.mr, live / s.nr * s.nr),
            false => (0, 0),
        };
        let mut p0 = 0;
        while p0 < k {
            let kb = K_CHUNK.min(k - p0);
            let final_chunk = p0 + kb == k;
            fill(j0, live, p0, s.nr, &mut buf[..width * kb]);
            for group in (0..row_tiles).step_by(ROW_GROUP) {
                for (jp, panel) in buf.chunks_exact(s.nr * kb).take(cols.len()).enumerate() {
                    for it in group..(group + ROW_GROUP).min(row_tiles) {
                        let i0 = it * s.mr;
                        let ap = (&arows[i0 * lda + p0..], lda);
                        let c = sums[i0 * width + jp * s.nr..].as_mut_ptr();
                        let mv = (m - i0).min(s.mr);
                        let whole = i0 + s.mr <= whole_rows && (jp + 1) * s.nr <= whole_cols;
                        // SAFETY: a whole tile lies in c, in columns this task alone owns.
                        let last = (final_chunk && whole)
                            .then(|| unsafe { (out.at(i0, j0 + jp * s.nr), out.rs) });
                        // SAFETY: the tile lies in this task's buffer.
                        unsafe { blocks((isa, s), kb, ap, mv, panel, (c, width), p0 > 0, last) };
                    }
                }
            }
            p0 += kb;
        }
        for (i, row) in sums.chunks_exact(width).take(m).enumerate() {
            let from = if i < whole_rows { whole_cols } else { 0 };
            // SAFETY: this task alone owns these columns of c, all inside it.
            unsafe {
                if direct {
                    let n = live - from;
                    std::ptr::copy_nonoverlapping(row[from..].as_ptr(), out.at(i, j0 + from), n);
                } else {
                    for (j, v) in row[..live].iter().enumerate() {
                        *out.at(i, j0 + j) = *v;
                    }
                }
            }
        }
    });
}

/// Packs rows `p0..` of b's columns `j0..j0 + live` as a panel chunk `buf[p - p0][c]` of width
/// `w` (`bt` is b^T, [n, k]; where `live < w`, `buf` comes zeroed, so the columns past n stay
/// +0).
fn pack_panel(buf: &mut [f32], bt: View, (j0, live): (usize, usize), p0: usize, w: usize) {
    let kb = buf.len() / w;
    if bt.rs == 1 {
        // The live values of one p are contiguous.
        for (p, dst) in buf.chunks_exact_mut(w).enumerate() {
            let src = &bt.data[j0 + (p0 + p) * bt.cs..][..live];
            dst[..live].copy_from_slice(src);
        }
    } else {
        for c in 0..live {
            let row = &bt.data[(j0 + c) * bt.rs + p0 * bt.cs..];
            if bt.cs == 1 {
                for (p, v) in row[..kb].iter().enumerate() {
                    buf[p * w + c] = *v;
                }
            } else {
                for p in 0..kb {
                    buf[p * w + c] = row[p * bt.cs];
                }
            }
        }
    }
}

/// One register tile over all of `k` (whole blocks of [`KC`] but the last): each block's chain
/// from +0, the first block's sum stored, the others added to it; the `valid` part of the tile
/// stored. a's rows are `ap.0[r * ap.1..][..k]`, the rows past the valid ones repeating the
/// last (their outputs are not stored); `bp` is the panel `[p][nr]`. A whole tile of a
/// row-major output is summed in place, an edge tile (or a transposed output's) in a buffer.
///
/// # Safety
/// The tile lies inside `out` where `valid` says, and no other thread touches it.
unsafe fn tile(
    (isa, s): (Isa, Shape),
    k: usize,
    (a, lda): (&[f32], usize),
    bp: &[f32],
    out: Out,
    (i0, j0): (usize, usize),
    (mv, nv): (usize, usize),
) {
    assert!(mv >= 1 && a.len() >= (mv - 1) * lda + k && bp.len() >= k * s.nr);
    let at = |r: usize, c: usize| out.ptr.add((i0 + r) * out.rs + (j0 + c) * out.cs);
    if out.cs == 1 && mv == s.mr && nv == s.nr {
        return blocks(
            (isa, s),
            k,
            (a, lda),
            mv,
            bp,
            (at(0, 0), out.rs),
            false,
            None,
        );
    }
    let mut acc = [0f32; 12 * 32];
    let c = (acc.as_mut_ptr(), s.nr);
    blocks((isa, s), k, (a, lda), mv, bp, c, false, None);
    for r in 0..mv {
        for col in 0..nv {
            *at(r, col) = acc[r * s.nr + col];
        }
    }
}

/// [`tile`]'s blocks of k on the tile `c` (`c.0[r * c.1 + j]`), the first added to c's values
/// when `partial`; with `last`, the last block's sums (c's values plus it) go to `last`'s tile
/// instead of c's.
///
/// # Safety
/// As [`tile`]'s, for c's (and `last`'s) `mr x nr` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn blocks(
    (isa, s): (Isa, Shape),
    kb: usize,
    (a, lda): (&[f32], usize),
    mv: usize,
    bp: &[f32],
    c: (*mut f32, usize),
    partial: bool,
    last: Option<(*mut f32, usize)>,
) {
    let mut rows = [a.as_ptr(); 12];
    let mut p0 = 0;
    while p0 < kb {
        let kc = KC.min(kb - p0);
        for (r, row) in rows.iter_mut().enumerate().take(s.mr) {
            *row = a.as_ptr().add(r.min(mv - 1) * lda + p0);
        }
        let add = (partial || p0 > 0).then_some((c.0 as *const f32, c.1));
        let dst = match last {
            Some(d) if p0 + kc == kb => d,
            _ => c,
        };
        micro((isa, s), kc, &rows, &bp[p0 * s.nr..], add, dst);
        p0 += kc;
    }
}

/// A tile's values a micro kernel adds its sums to (`add.0[r * add.1 + j]`), when it has any.
type Add = Option<(*const f32, usize)>;

/// The ISA's micro kernel on an `mr x nr` tile: each output's chain over the block from +0,
/// then `add`'s value plus it (or it alone, without `add`), stored in c (`c.0[r * c.1 + j]`).
///
/// # Safety
/// `rows[..mr]` each point at kc values, bp holds kc * nr, add's tile is readable and c's
/// writable (they may be the same).
unsafe fn micro(
    (isa, s): (Isa, Shape),
    kc: usize,
    rows: &[*const f32; 12],
    bp: &[f32],
    add: Add,
    c: (*mut f32, usize),
) {
    match isa {
        Isa::Baseline => micro_scalar::<4, 4>(kc, rows, bp, add, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => micro_avx2(kc, rows, bp, add, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if s.nr == 16 => micro_avx512::<12, 1>(kc, rows, bp, add, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if s.nr == 48 => micro_avx512::<8, 3>(kc, rows, bp, add, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => micro_avx512::<12, 2>(kc, rows, bp, add, c),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only x86-64 has the AVX ISAs"),
    }
}

/// Plain Rust: the libm crate's `fmaf` (correctly rounded in software where the CPU has no FMA).
unsafe fn micro_scalar<const MR: usize, const NR: usize>(
    kc: usize,
    rows: &[*const f32; 12],
    bp: &[f32],
    add: Add,
    (c, ldc): (*mut f32, usize),
) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        for (r, row) in acc.iter_mut().enumerate() {
            let a = *rows[r].add(p);
            for (j, x) in row.iter_mut().enumerate() {
                *x = libm::fmaf(a, bp[p * NR + j], *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, x) in row.iter().enumerate() {
            let v = match add {
                Some((a, lda)) => *a.add(r * lda + j) + *x,
                None => *x,
            };
            *c.add(r * ldc + j) = v;
        }
    }
}

/// AVX2 + FMA: a 6 x 16 tile in 12 registers of 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(
    kc: usize,
    rows: &[*const f32; 12],
    bp: &[f32],
    add: Add,
    (c, ldc): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    debug_assert!(bp.len() >= kc * NR);
    let rows: [*const f32; MR] = std::array::from_fn(|r| rows[r]);
    let mut v = [[_mm256_setzero_ps(); 2]; MR];
    let mut b = bp.as_ptr();
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (r, row) in v.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*rows[r].add(p));
            row[0] = _mm256_fmadd_ps(x, b0, row[0]);
            row[1] = _mm256_fmadd_ps(x, b1, row[1]);
        }
        b = b.add(NR);
    }
    for (r, row) in v.iter().enumerate() {
        for (h, x) in row.iter().enumerate() {
            let x = match add {
                Some((a, lda)) => _mm256_add_ps(_mm256_loadu_ps(a.add(r * lda + h * 8)), *x),
                None => *x,
            };
            _mm256_storeu_ps(c.add(r * ldc + h * 8), x);
        }
    }
}

/// AVX-512: an `MR x 16 NV` tile in `MR NV` registers of 16 lanes (12 x 32, 12 x 16, 8 x 48).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512<const MR: usize, const NV: usize>(
    kc: usize,
    rows: &[*const f32; 12],
    bp: &[f32],
    add: Add,
    (c, ldc): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    let nr = 16 * NV;
    debug_assert!(bp.len() >= kc * nr);
    let rows: [*const f32; MR] = std::array::from_fn(|r| rows[r]);
    let mut v = [[_mm512_setzero_ps(); NV]; MR];
    let mut b = bp.as_ptr();
    for p in 0..kc {
        for h in 0..NV {
            _mm_prefetch::<_MM_HINT_T0>(b.add(PREFETCH_P * nr + 16 * h) as *const i8);
        }
        let bv: [__m512; NV] = std::array::from_fn(|h| _mm512_loadu_ps(b.add(16 * h)));
        for (r, row) in v.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*rows[r].add(p));
            for (acc, bh) in row.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(x, *bh, *acc);
            }
        }
        b = b.add(nr);
    }
    for (r, row) in v.iter().enumerate() {
        for (h, x) in row.iter().enumerate() {
            let x = match add {
                Some((a, lda)) => _mm512_add_ps(_mm512_loadu_ps(a.add(r * lda + h * 16)), *x),
                None => *x,
            };
            _mm512_storeu_ps(c.add(r * ldc + h * 16), x);
        }
    }
}
