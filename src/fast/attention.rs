//! Multi-head self-attention of windows packed end to end, for AVX2 + FMA CPUs.
//!
//! Per window and head, `softmax(scale · Q·Kᵀ)·V` is computed six query rows at a time: their
//! scores (a strip of `6 × keys` floats, in L1) go through the softmax and straight into the
//! product with the values, whose result is written into the merged `[tokens, hidden]`
//! context. Nothing of size `keys × keys` is materialised, and no per-head output is copied
//! into place afterwards.
//!
//! Keys are laid out once per window as `[16-key panel][hidden][16]` and values as
//! `[head][key][head_dim]`, so that both products run a 6 × 16 register-blocked kernel (the
//! shape of [`super::sgemm`]'s) on contiguous panels; queries and scores are read in place.
//! The `gemm` crate would repack its operands on each of the thousands of small products a
//! batch needs (one per window, head and product) and was measured slower on them.

use rayon::prelude::*;

use super::kernels::exp_shifted_fma;
#[cfg(target_arch = "x86_64")]
use super::sgemm::product_6x16;
use super::sgemm::PackedWeights;

/// Query rows per micro tile.
const MR: usize = 6;
/// Keys (of the scores) or head dimensions (of the output) per micro tile: two 8-lane vectors
/// ([`product_6x16`]'s shape).
const NR: usize = 16;
/// Query tiles per parallel task.
const TILES_PER_TASK: usize = 4;

/// Whether [`attention`] runs on this CPU for heads of `head_dim` values: where the packed
/// linear kernel runs (AVX2 and FMA, no AVX-512) and `head_dim` is a multiple of 16.
pub fn available(head_dim: usize) -> bool {
    PackedWeights::available() && head_dim > 0 && head_dim.is_multiple_of(NR)
}

/// Scratch space of [`attention`], kept between calls (fresh multi-megabyte buffers cost page
/// faults on first touch).
#[derive(Debug, Default)]
pub struct AttentionScratch {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// Self-attention of every window: `qkv` is `[tokens, 3·hidden]` (queries, keys, values side
/// by side, heads of `hidden / heads` values each), `spans` the consecutive `(first token,
/// tokens)` of each window, and the merged heads are written to `context` (`[tokens, hidden]`).
///
/// # Panics
/// If [`available`] is false for the head size, or the lengths disagree.
pub fn attention(
    qkv: &[f32],
    spans: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    scratch: &mut AttentionScratch,
    context: &mut [f32],
) {
    assert!(
        heads > 0 && hidden.is_multiple_of(heads),
        "attention: bad heads"
    );
    let d = hidden / heads;
    assert!(
        available(d),
        "attention: needs AVX2/FMA and a head size that is a multiple of 16"
    );
    let total = context.len() / hidden;
    assert_eq!(
        qkv.len(),
        total * 3 * hidden,
        "attention: qkv is not [tokens, 3·hidden]"
    );
    let mut next = 0;
    for &(start, len) in spans {
        assert_eq!(start, next, "attention: windows must be consecutive");
        next = start + len;
    }
    assert_eq!(next, total, "attention: windows do not cover the tokens");

    // Each window's keys and values take `heads · padded(len) · d` floats.
    let sizes: Vec<usize> = spans
        .iter()
        .map(|&(_, len)| heads * len.next_multiple_of(NR) * d)
        .collect();
    let needed: usize = sizes.iter().sum();
    for buffer in [&mut scratch.keys, &mut scratch.values] {
        if buffer.len() < needed {
            buffer.resize(needed, 0.0);
        }
    }
    let mut windows = Vec::with_capacity(spans.len());
    let (mut keys, mut values, mut ctx) = (
        &mut scratch.keys[..],
        &mut scratch.values[..],
        &mut context[..],
    );
    for (&(start, len), &size) in spans.iter().zip(&sizes) {
        let (k, k_rest) = std::mem::take(&mut keys).split_at_mut(size);
        let (v, v_rest) = std::mem::take(&mut values).split_at_mut(size);
        let (c, c_rest) = std::mem::take(&mut ctx).split_at_mut(len * hidden);
        windows.push(Window {
            start,
            len,
            keys: k,
            values: v,
            context: c,
        });
        (keys, values, ctx) = (k_rest, v_rest, c_rest);
    }
    let shape = Shape {
        hidden,
        heads,
        d,
        scale: 1.0 / (d as f32).sqrt(),
    };
    windows.into_par_iter().for_each(|w| w.run(qkv, shape));
}

#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    heads: usize,
    d: usize,
    scale: f32,
}

/// One window: its tokens, its key/value layouts and its rows of the context.
struct Window<'a> {
    start: usize,
    len: usize,
    keys: &'a mut [f32],
    values: &'a mut [f32],
    context: &'a mut [f32],
}

impl Window<'_> {
    fn run(self, qkv: &[f32], s: Shape) {
        let Shape { hidden: h, d, .. } = s;
        let (n, padded) = (self.len, self.len.next_multiple_of(NR));
        if n == 0 {
            return;
        }
        let row = |j: usize| &qkv[(self.start + j) * 3 * h..][..3 * h];
        // Keys `[panel][hidden][16]`: each panel is the transpose of 16 key rows (zero past the
        // last key), so head `i` of it is the `[d][16]` block at `i·d·16`. Values
        // `[head][key][d]`. Key rows are read whole and in order.
        self.keys
            .par_chunks_mut(h * NR)
            .enumerate()
            .for_each(|(panel, block)| {
                for lane in 0..NR {
                    let j = panel * NR + lane;
                    let column = block.iter_mut().skip(lane).step_by(NR);
                    if j < n {
                        column.zip(&row(j)[h..2 * h]).for_each(|(dst, &k)| *dst = k);
                    } else {
                        column.for_each(|dst| *dst = 0.0);
                    }
                }
            });
        self.values
            .par_chunks_mut(padded * d)
            .enumerate()
            .for_each(|(head, values)| {
                for (j, dst) in values.chunks_exact_mut(d).take(n).enumerate() {
                    dst.copy_from_slice(&row(j)[2 * h + head * d..][..d]);
                }
            });
        let (keys, values): (&[f32], &[f32]) = (self.keys, self.values);
        self.context
            .par_chunks_mut(TILES_PER_TASK * MR * h)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * TILES_PER_TASK * MR;
                let mut scores = vec![0f32; MR * padded];
                for (t, out) in out.chunks_mut(MR * h).enumerate() {
                    let r0 = first + t * MR;
                    let rows = out.len() / h;
                    // SAFETY: `available(d)` was asserted by `attention` (AVX2 and FMA).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        query_tile(
                            qkv,
                            self.start + r0,
                            rows,
                            n,
                            keys,
                            values,
                            &mut scores,
                            out,
                            s,
                        )
                    };
                }
            });
    }
}

/// Attention of `rows` (≤ 6) query rows, tokens `q0..q0+rows` of `qkv`, over the window's `n`
/// keys; writes their merged heads to `out` (`rows × hidden`).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn query_tile(
    qkv: &[f32],
    q0: usize,
    rows: usize,
    n: usize,
    keys: &[f32],
    values: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
    s: Shape,
) {
    let Shape {
        hidden: h,
        heads,
        d,
        scale,
    } = s;
    let padded = n.next_multiple_of(NR);
    debug_assert!((1..=MR).contains(&rows) && out.len() == rows * h);
    debug_assert!(scores.len() == MR * padded && keys.len() == padded * h);
    // Rows past `rows` repeat the last one; their results are dropped.
    let query = |r: usize| &qkv[(q0 + r.min(rows - 1)) * 3 * h..][..h];
    let mut edge = [0f32; MR * NR];
    for head in 0..heads {
        let values = &values[head * padded * d..][..padded * d];
        // Scores: [MR][padded], one 6 × 16 tile per key panel.
        let q: [&[f32]; MR] = std::array::from_fn(|r| &query(r)[head * d..][..d]);
        for (panel, block) in keys.chunks_exact(h * NR).enumerate() {
            let block = &block[head * d * NR..][..d * NR];
            // SAFETY: each `q[r]` holds d values and `block` d·16 (ldb 16); the C tile is
            // rows 0..6 × columns 16·panel..16·panel+16 of `scores` (stride `padded`, a
            // multiple of 16), inside its MR·padded values. AVX2/FMA: this function's contract.
            unsafe {
                tile(
                    d,
                    q,
                    block,
                    NR,
                    scores.as_mut_ptr().add(panel * NR),
                    padded,
                    [scale; MR],
                );
            }
        }
        // Softmax numerators; the division by their sum is applied to the output rows (d
        // values each instead of n).
        let mut inverse = [1f32; MR];
        for (row, inv) in scores.chunks_exact_mut(padded).zip(&mut inverse).take(rows) {
            *inv = 1.0 / exp_shifted_fma(&mut row[..n]);
        }
        // Output: [rows][d] at columns head·d.. of `out`, 16 columns per tile.
        let p: [&[f32]; MR] = std::array::from_fn(|r| &scores[r.min(rows - 1) * padded..][..n]);
        for part in 0..d / NR {
            let v = &values[part * NR..];
            let col = head * d + part * NR;
            if rows == MR {
                // SAFETY: each `p[r]` holds n values; `v` holds rows kk·d + 0..16 for kk < n
                // (values is padded·d long); the C tile is rows 0..6 × columns col..col+16 of
                // `out` (stride h, col + 16 ≤ h), inside its MR·h values.
                unsafe { tile(n, p, v, d, out.as_mut_ptr().add(col), h, inverse) };
            } else {
                // SAFETY: as above, with the C tile being `edge` (MR rows of 16).
                unsafe { tile(n, p, v, d, edge.as_mut_ptr(), NR, inverse) };
                for r in 0..rows {
                    out[r * h + col..][..NR].copy_from_slice(&edge[r * NR..][..NR]);
                }
            }
        }
    }
}

/// The 6 × 16 kernel: `C[r][c] = scale[r] · Σ_{kk<k} a[r][kk] · b[kk·ldb + c]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; every `a[r]` must hold `k` values, `b` must hold
/// `(k − 1)·ldb + 16` values, and `c` must be valid for writes of 6 rows of 16 values at row
/// stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile(
    k: usize,
    a: [&[f32]; MR],
    b: &[f32],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    scale: [f32; MR],
) {
    use std::arch::x86_64::*;
    debug_assert!(a.iter().all(|r| r.len() >= k));
    debug_assert!(k == 0 || b.len() >= (k - 1) * ldb + NR);
    let a = a.map(|r| r.as_ptr());
    // SAFETY: for kk < k, a[r] + kk lies in row r (k values) and b[kk·ldb .. kk·ldb + 16] in
    // `b` (this function's contract); AVX2/FMA as here.
    let acc = unsafe { product_6x16(k, |r, kk| a[r].wrapping_add(kk), b.as_ptr(), ldb) };
    for (r, acc) in acc.iter().enumerate() {
        let scale = _mm256_set1_ps(scale[r]);
        // SAFETY: row r < 6 of the C tile, 16 values (the function's contract).
        unsafe {
            let row = c.add(r * ldc);
            _mm256_storeu_ps(row, _mm256_mul_ps(acc[0], scale));
            _mm256_storeu_ps(row.add(8), _mm256_mul_ps(acc[1], scale));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Attention of each window and head in f64, straight from the definition.
    fn reference(qkv: &[f32], spans: &[(usize, usize)], h: usize, heads: usize) -> Vec<f64> {
        let d = h / heads;
        let total: usize = spans.iter().map(|s| s.1).sum();
        let at = |token: usize, part: usize, i: usize| qkv[token * 3 * h + part * h + i] as f64;
        let mut out = vec![0f64; total * h];
        for &(start, n) in spans {
            for head in 0..heads {
                for q in start..start + n {
                    let scores: Vec<f64> = (start..start + n)
                        .map(|k| {
                            (0..d)
                                .map(|t| at(q, 0, head * d + t) * at(k, 1, head * d + t))
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for t in 0..d {
                        out[q * h + head * d + t] = (start..start + n)
                            .zip(&exps)
                            .map(|(k, e)| e / sum * at(k, 2, head * d + t))
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_uneven_windows() {
        if !available(16) {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Window lengths off the 6-row and 16-key tiles, one token, more than one task.
        for &(h, heads) in &[(64, 2), (64, 4), (96, 3)] {
            let lens = [1usize, 7, 23, 40, 6, 16, 31];
            let mut spans = Vec::new();
            let mut start = 0;
            for &n in &lens {
                spans.push((start, n));
                start += n;
            }
            let qkv: Vec<f32> = (0..start * 3 * h)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let expected = reference(&qkv, &spans, h, heads);
            let mut scratch = AttentionScratch::default();
            // Twice: the second call reuses (stale) scratch buffers.
            for _ in 0..2 {
                let mut context = vec![f32::NAN; start * h];
                attention(&qkv, &spans, h, heads, &mut scratch, &mut context);
                for (i, (&got, &want)) in context.iter().zip(&expected).enumerate() {
                    assert!(
                        (got as f64 - want).abs() < 1e-5,
                        "h {h} heads {heads}: element {i} is {got}, expected {want}"
                    );
                }
            }
        }
    }
}
