//! Attention, `softmax((q k^T) * s) v`, one block of query rows at a time: each block's scores
//! and probabilities are computed, used and dropped before the next, so the `n x m` matrix of a
//! head never exists whole (at 4,096 tokens it is 64 MiB a head). The bits are those of the
//! whole computation: every score is its own dot product ([`mod@crate::gemm`]), every row's
//! softmax its own ([`crate::norm::softmax_rows`]), every output its own dot product over that
//! row.
use crate::gemm::{gemm, pack, Rhs, View};
use crate::Isa;
use rayon::prelude::*;

/// Query rows per task (speed only): a block's scores are `ROWS x m` values; a multiple of
/// every ISA's tile height (12, 6, 4), so that no tile of a block runs part empty.
const ROWS: usize = 96;

/// The heads' shapes: `heads` heads of `n` queries and `m` keys, `d` values each.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub n: usize,
    pub m: usize,
    pub d: usize,
}

/// `out = softmax((q k^T) * scale) v` per head, for q [heads, n, d], k and v [heads, m, d] and
/// out [heads, n, d], row-major: the scores' dot products under the order rule, each multiplied
/// by `scale` in float32; with `causal`, the scores of keys after the query (`j > i`) -inf; the
/// softmax of [`crate::norm::softmax_rows`]; the outputs' dot products over the keys.
pub fn attention(
    isa: Isa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    h: Heads,
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let Heads { heads, n, m, d } = h;
    assert!(q.len() == heads * n * d && k.len() == heads * m * d && v.len() == k.len());
    assert_eq!(out.len(), q.len());
    if out.is_empty() {
        return;
    }
    // Each head's keys (as k^T, [d, m]) and values packed once, for all its blocks of queries.
    for ((qh, kh), (vh, oh)) in q
        .chunks_exact(n * d)
        .zip(k.chunks_exact(m * d))
        .zip(v.chunks_exact(m * d).zip(out.chunks_exact_mut(n * d)))
    {
        let keys = pack(isa, (d, m), View::transposed(kh, d));
        let values = pack(isa, (m, d), View::rows(vh, d));
        // A task's scores reuse the thread's buffer: the product writes every value.
        let blocks = oh.par_chunks_mut(ROWS * d).enumerate();
        blocks.for_each_init(Vec::new, |buf: &mut Vec<f32>, (b, o)| {
            let (i0, rows) = (b * ROWS, o.len() / d.max(1));
            let qb = &qh[i0 * d..][..rows * d];
            if buf.len() < rows * m {
                buf.resize(rows * m, 0.0);
            }
            let s = &mut buf[..rows * m];
            gemm(isa, (rows, m, d), View::rows(qb, d), Rhs::Packed(&keys), s);
            for (r, row) in s.chunks_exact_mut(m.max(1)).enumerate() {
                for x in row.iter_mut() {
                    *x *= scale;
                }
                if causal {
                    row.iter_mut()
                        .skip(i0 + r + 1)
                        .for_each(|x| *x = f32::NEG_INFINITY);
                }
            }
            crate::norm::softmax_rows(isa, s, m);
            gemm(isa, (rows, d, m), View::rows(s, m), Rhs::Packed(&values), o);
        });
    }
}
