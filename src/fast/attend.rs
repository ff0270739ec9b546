//! Multi-head self-attention over the packed windows: the fused kernel where it runs, strided
//! views otherwise (and for attention with additive score terms, as DeBERTa's).

use rayon::prelude::*;

use super::{grow, Scratch};
use crate::kernels::attention;
use crate::kernels::ops::{matmul, softmax_rows, MatMut, MatRef};

/// Multi-head self-attention of every window over the fused `[tokens, 3·hidden]` projections
/// `qkv`; writes the merged heads to `scratch.context` (`[tokens, hidden]`).
pub(crate) fn self_attention(
    qkv: &[f32],
    spans: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    scratch: &mut Scratch,
) {
    let d = hidden / heads;
    if attention::available(d) {
        attention::attention(qkv, spans, hidden, heads, &mut scratch.context);
        return;
    }
    let total = qkv.len() / (3 * hidden);
    grow(&mut scratch.heads, total * hidden);
    strided_attention(qkv, spans, hidden, heads, None, scratch);
}

/// Additive terms for a window's attention scores: called with the head, the window's first
/// token and length, and its `[len, len]` scaled scores.
pub(crate) type ScoreTerms<'a> = &'a (dyn Fn(usize, usize, usize, &mut [f32]) + Sync);

/// Attention through strided views, heads in parallel (CPUs without the fused kernel, and head
/// sizes it does not take); `terms` adds to each window's scores before the softmax.
pub(crate) fn strided_attention(
    qkv: &[f32],
    spans: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    terms: Option<(f32, ScoreTerms)>,
    scratch: &mut Scratch,
) {
    let h = hidden;
    let d = h / heads;
    let total = qkv.len() / (3 * h);
    let scale = terms.map_or(1.0 / (d as f32).sqrt(), |(scale, _)| scale);
    // Heads run in parallel; each writes its own `[tokens, head_dim]` block.
    scratch
        .heads
        .par_chunks_mut(total * d)
        .enumerate()
        .for_each(|(head, out)| {
            let mut scores = Vec::new();
            for &(start, len) in spans {
                let at = |part: usize| {
                    MatRef::new(
                        &qkv[start * 3 * h + part * h + head * d..],
                        len,
                        d,
                        3 * h,
                        1,
                    )
                };
                scores.clear();
                scores.resize(len * len, 0.0);
                let s = MatMut::row_major(&mut scores, len, len);
                matmul(s, at(0), at(1).t(), scale, false, false);
                if let Some((_, add)) = terms {
                    add(head, start, len, &mut scores);
                }
                softmax_rows(&mut scores, len);
                let o = MatMut::row_major(&mut out[start * d..(start + len) * d], len, d);
                matmul(
                    o,
                    MatRef::row_major(&scores, len, len),
                    at(2),
                    1.0,
                    false,
                    false,
                );
            }
        });
    let per_head: &[f32] = &scratch.heads;
    scratch
        .context
        .par_chunks_mut(h)
        .enumerate()
        .for_each(|(row, out)| {
            for (head, chunk) in out.chunks_exact_mut(d).enumerate() {
                let from = head * total * d + row * d;
                chunk.copy_from_slice(&per_head[from..from + d]);
            }
        });
}
