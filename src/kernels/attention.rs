//! Multi-head self-attention of windows packed end to end, for AVX2 + FMA CPUs.
//!
//! Each window and head is one task. It lays out the head's keys as `[16-key panel][d][16]`
//! and its values as `[d / 16][key][16]` (together about 43 KB for 170 tokens and 32-value
//! heads, so they stay in L1/L2 while every query of the window uses them), then computes
//! `softmax(scale · Q·Kᵀ)·V` six query rows at a time: their scores (a strip of `6 × keys`
//! floats) go through the softmax and straight into the product with the values, whose result
//! is written into the head's columns of the merged `[tokens, hidden]` context. Nothing of
//! size `keys × keys` is materialised, and no per-head output is copied into place afterwards.
//!
//! Both products run a 6 × 16 register-blocked kernel (the shape of [`super::sgemm`]'s) on
//! contiguous panels; queries and scores are read in place. The `gemm` crate would repack its
//! operands on each of the thousands of small products a batch needs (one per window, head
//! and product) and was measured slower on them.

use rayon::prelude::*;

use super::sgemm::PackedWeights;
#[cfg(target_arch = "x86_64")]
use super::sgemm::{product_6x16, product_6xp};
#[cfg(target_arch = "x86_64")]
use super::simd::{exp_shifted, transpose8x8};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};

/// Query rows per micro tile.
const MR: usize = 6;
/// Keys (of the scores) or head dimensions (of the output) per micro tile: two 8-lane vectors
/// ([`product_6x16`]'s shape).
const NR: usize = 16;

/// Whether [`attention`] runs on this CPU for heads of `head_dim` values: where the packed
/// linear kernel runs (AVX2 and FMA) and `head_dim` is a multiple of 16.
pub fn available(head_dim: usize) -> bool {
    PackedWeights::available() && head_dim > 0 && head_dim.is_multiple_of(NR)
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
    context: &mut [f32],
) {
    attention_on(
        PackedWeights::wide(),
        qkv,
        spans,
        hidden,
        heads,
        None,
        context,
    );
}

/// Relative-position terms of DeBERTa's disentangled attention: the score of query `i` and key
/// `j` gains `scale · (Q_i · Kr[r] + K_j · Qr[r])`, where `r = index[i − j + offset]` is their
/// relative row, `Kr` the relative keys (the content-to-position term) and `Qr` the relative
/// queries (position-to-content).
#[derive(Clone, Copy, Debug)]
pub struct RelativeTerms<'a> {
    /// Every head's relative keys, `rows / 16` panels of `[d][16]` each (head after head), or
    /// `None` without the content-to-position term.
    pub keys: Option<&'a [f32]>,
    /// The relative queries, laid out as `keys`; `None` without the position-to-content term.
    pub queries: Option<&'a [f32]>,
    /// Rows of the relative tables, a multiple of 16.
    pub rows: usize,
    /// The relative row of every distance `i − j`, at `i − j + offset`.
    pub index: &'a [u32],
    /// Largest distance `index` covers: windows may hold `offset + 1` tokens.
    pub offset: usize,
    /// Scale of the content scores and of both terms.
    pub scale: f32,
}

/// Lays out a relative table for [`RelativeTerms`]: `table` is `[rows][heads·d]` (the relative
/// embeddings through a query or key projection); the result holds each head's `rows` rows
/// (padded with zeros to a multiple of 16) as panels of `[d][16]`.
pub fn relative_panels(table: &[f32], rows: usize, heads: usize, d: usize) -> Vec<f32> {
    let padded = rows.next_multiple_of(NR);
    let mut out = vec![0f32; heads * padded * d];
    for head in 0..heads {
        let head_out = &mut out[head * padded * d..][..padded * d];
        for r in 0..rows {
            let src = &table[r * heads * d + head * d..][..d];
            let panel = &mut head_out[(r / NR) * d * NR..][..d * NR];
            for (i, &v) in src.iter().enumerate() {
                panel[i * NR + r % NR] = v;
            }
        }
    }
    out
}

/// [`attention`] with DeBERTa's relative-position terms added to the scores (scaled by
/// `terms.scale` instead of `1 / √d`).
///
/// # Panics
/// As [`attention`], and if a window is longer than `terms.offset + 1` tokens or the tables do
/// not hold `terms.rows` rows per head.
pub fn relative_attention(
    qkv: &[f32],
    spans: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    terms: &RelativeTerms,
    context: &mut [f32],
) {
    let d = hidden / heads.max(1);
    let table = heads * terms.rows * d;
    assert!(
        terms.rows.is_multiple_of(NR)
            && terms.keys.is_none_or(|k| k.len() == table)
            && terms.queries.is_none_or(|q| q.len() == table),
        "relative attention: tables of the wrong size"
    );
    assert!(
        spans.iter().all(|&(_, n)| n <= terms.offset + 1)
            && terms.index.len() == 2 * terms.offset + 1
            && terms.index.iter().all(|&r| (r as usize) < terms.rows),
        "relative attention: a window is longer than the relative index"
    );
    let wide = PackedWeights::wide();
    attention_on(wide, qkv, spans, hidden, heads, Some(terms), context);
}

/// [`attention`], with the products on 512-bit vectors if `wide` (which must then be
/// [`PackedWeights::wide`]).
fn attention_on(
    wide: bool,
    qkv: &[f32],
    spans: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    relative: Option<&RelativeTerms>,
    context: &mut [f32],
) {
    assert!(
        !wide || PackedWeights::wide(),
        "attention: this CPU lacks AVX-512F"
    );
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
        context.len(),
        total * hidden,
        "attention: context is not [tokens, hidden]"
    );
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

    let shape = Shape {
        hidden,
        d,
        scale: relative.map_or(1.0 / (d as f32).sqrt(), |r| r.scale),
        #[cfg(target_arch = "x86_64")]
        wide,
    };
    let out = Context(context.as_mut_ptr());
    let tasks: Vec<(usize, usize, usize)> = spans
        .iter()
        .filter(|&&(_, len)| len > 0)
        .flat_map(|&(start, len)| (0..heads).map(move |head| (start, len, head)))
        .collect();
    tasks.into_par_iter().for_each(|(start, len, head)| {
        // SAFETY: `available(d)` was asserted (AVX2 and FMA). The window's tokens
        // start..start+len lie within the `total` rows of `context` (the spans were checked to
        // cover them), and head·d + d ≤ hidden; each task writes only its own window's rows
        // and its own head's columns, so no two tasks write the same element.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            head_attention(qkv, start, len, head, shape, relative, &out)
        }
    });
}

/// The `[tokens, hidden]` context being written by the attention tasks, each into its own
/// window's rows and head's columns.
struct Context(*mut f32);

// SAFETY: the pointer is only written through by `head_attention`, each task in a disjoint
// set of elements (see `attention`), while `attention` holds the `&mut` borrow of the buffer.
unsafe impl Sync for Context {}

#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    d: usize,
    scale: f32,
    /// Whether the CPU has AVX-512F: the products then run [`strip_avx512`].
    #[cfg(target_arch = "x86_64")]
    wide: bool,
}

/// Attention of head `head` over the window of tokens `start..start+n`: writes columns
/// `head·d..head·d + d` of those rows of `out`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `out` must be valid for writes of rows `start..start+n`
/// (row stride `hidden`) at those columns, and no one else may access them meanwhile; with
/// `relative`, its tables and index must be as [`relative_attention`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_attention(
    qkv: &[f32],
    start: usize,
    n: usize,
    head: usize,
    s: Shape,
    relative: Option<&RelativeTerms>,
    out: &Context,
) {
    let Shape {
        hidden: h,
        d,
        scale,
        wide,
    } = s;
    let padded = n.next_multiple_of(NR);
    // Each worker keeps its buffers: fresh ones per task would be page-faulted in again.
    thread_local! {
        static BUFFERS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buffers = BUFFERS.take();
    // The relative tables' panels this window's distances reach.
    let panels = relative.map_or(0..0, |r| {
        let first = r.index[r.offset + 1 - n] as usize / NR;
        let last = r.index[r.offset + n - 1] as usize / NR;
        first.min(last)..first.max(last) + 1
    });
    let width = panels.len() * NR;
    let needed = 2 * padded * d + MR * padded + MR * d + (n.next_multiple_of(MR) + MR) * width;
    buffers.resize(buffers.len().max(needed), 0.0);
    let (keys, rest) = buffers.split_at_mut(padded * d);
    let (values, rest) = rest.split_at_mut(padded * d);
    let (scores, rest) = rest.split_at_mut(MR * padded);
    let (edge, rest) = rest.split_at_mut(MR * d);
    let (position_scores, rest) = rest.split_at_mut(n.next_multiple_of(MR) * width);
    let content_scores = &mut rest[..MR * width];
    let row = |j: usize| &qkv[(start + j) * 3 * h..][..3 * h];
    // Keys `[panel][d][16]`: each panel is the transpose of 16 keys (zero past the last one),
    // built from 8 × 8 blocks. Values `[d / 16][key][16]`: 16 of a key's values per row, so that
    // both products step through their right operand 16 values at a time.
    let zero = [0f32; 8];
    // A head's keys and values are 2·d of each token's 3·hidden values: the rows are far apart
    // and were just written by the QKV product, mostly out of cache. The hardware prefetcher
    // does not fetch ahead across them, so the loop asks for the rows `AHEAD` blocks on.
    const AHEAD: usize = 2;
    for j0 in (0..padded).step_by(8) {
        for j in (j0 + 8 * AHEAD..j0 + 8 * (AHEAD + 1)).take_while(|&j| j < n) {
            prefetch_row_part(&row(j)[h + head * d..][..d]);
            prefetch_row_part(&row(j)[2 * h + head * d..][..d]);
        }
        let key = |t: usize, i0: usize| match j0 + t < n {
            true => row(j0 + t)[h + head * d + i0..][..8].as_ptr(),
            false => zero.as_ptr(),
        };
        let dst = &mut keys[(j0 / NR) * d * NR + j0 % NR..];
        for i0 in (0..d).step_by(8) {
            // SAFETY: `key` points to 8 readable values (a key's dims i0..i0+8, i0 + 8 ≤ d, or
            // zeros); the 8 stores land at (i0 + t)·16 + 0..8 past `dst`'s start, within the
            // panel of d·16 values (j0 % 16 is 0 or 8). AVX2/FMA: this function's contract.
            unsafe {
                let block = std::array::from_fn(|t| _mm256_loadu_ps(key(t, i0)));
                for (t, v) in transpose8x8(block).into_iter().enumerate() {
                    _mm256_storeu_ps(dst[(i0 + t) * NR..][..8].as_mut_ptr(), v);
                }
            }
        }
        for j in j0..(j0 + 8).min(n) {
            let src = &row(j)[2 * h + head * d..][..d];
            for (part, src) in src.chunks_exact(8).enumerate() {
                let dst = &mut values[(part / 2) * padded * NR + j * NR + (part % 2) * 8..][..8];
                // SAFETY: both slices hold 8 values; AVX as here.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_loadu_ps(src.as_ptr())) };
            }
        }
    }
    // This head's panels of a relative table, from the first one the window reaches.
    let table_start = head * rel_rows(relative) * d + panels.start * d * NR;
    if let Some(queries) = relative.and_then(|r| r.queries) {
        // Position-to-content scores of every key: [n][width].
        // SAFETY: AVX2/FMA (this function's contract); the key rows hold d values each, the
        // relative queries `panels.len()` panels of d·16 from `table`'s start, and the output
        // rows `j0..j0 + 6` of `position_scores` lie within its n rounded up to 6 rows.
        unsafe {
            for j0 in (0..n).step_by(MR) {
                let k: [&[f32]; MR] =
                    std::array::from_fn(|r| &row((j0 + r).min(n - 1))[h + head * d..][..d]);
                let c = position_scores[j0 * width..].as_mut_ptr();
                let b = &queries[table_start..];
                any_strip(wide, d, k, b, d * NR, panels.len(), c, width, [scale; MR]);
            }
        }
    }
    for r0 in (0..n).step_by(MR) {
        let rows = MR.min(n - r0);
        // Rows past `rows` repeat the last one; their results are dropped.
        let q: [&[f32]; MR] = std::array::from_fn(|r| &row(r0 + r.min(rows - 1))[head * d..][..d]);
        // The next tile's queries, while this one computes (same reason as above).
        for j in (r0 + MR..r0 + 2 * MR).take_while(|&j| j < n) {
            prefetch_row_part(&row(j)[head * d..][..d]);
        }
        // Scores: [MR][padded], one 6 × 16 tile per key panel.
        // SAFETY: each `q[r]` holds d values; panel p of `keys` is the d·16 values at p·d·16
        // (ldb 16), p < padded / 16; its C tile is rows 0..6 × columns 16p..16p+16 of `scores`
        // (stride `padded`), inside its MR·padded values. AVX2/FMA: this function's contract.
        unsafe {
            any_strip(
                wide,
                d,
                q,
                keys,
                d * NR,
                padded / NR,
                scores.as_mut_ptr(),
                padded,
                [scale; MR],
            );
        }
        if let Some(rel) = relative {
            if let Some(keys) = rel.keys {
                // SAFETY: AVX2/FMA (the contract); `content_scores` holds 6 rows of `width`,
                // the relative keys `panels.len()` panels from `table`'s start.
                unsafe {
                    let c = content_scores.as_mut_ptr();
                    let b = &keys[table_start..];
                    any_strip(wide, d, q, b, d * NR, panels.len(), c, width, [scale; MR]);
                }
            }
            let terms = RelativeScores {
                content: rel.keys.map(|_| &content_scores[..]),
                position: rel.queries.map(|_| &position_scores[..]),
                width,
                first: panels.start * NR,
            };
            add_relative(rel, &terms, r0, rows, n, padded, scores);
        }
        // Softmax numerators; the division by their sum is applied to the output rows (d
        // values each instead of n).
        let mut inverse = [1f32; MR];
        for (row, inv) in scores.chunks_exact_mut(padded).zip(&mut inverse).take(rows) {
            // SAFETY: AVX2/FMA (this function's contract).
            *inv = 1.0 / unsafe { exp_shifted(&mut row[..n]) };
        }
        // Output: [rows][d], 16 columns per tile. A full tile goes straight into the head's
        // columns of `out`; a partial one into `edge`, whose valid rows are then copied out.
        let p: [&[f32]; MR] = std::array::from_fn(|r| &scores[r.min(rows - 1) * padded..][..n]);
        // SAFETY: row start + r0 < start + n and column head·d are this task's (the contract).
        let c = unsafe { out.0.add((start + r0) * h + head * d) };
        let (target, ldc) = match rows == MR {
            true => (c, h),
            false => (edge.as_mut_ptr(), d),
        };
        // SAFETY: each `p[r]` holds n values; part p of `values` is rows kk·16 + 0..16 (kk < n
        // ≤ padded) at p·padded·16, p < d / 16; the C tiles cover 6 rows of d values at stride
        // h in `out` (this task's rows and columns), or all of `edge` (MR rows of d).
        unsafe {
            any_strip(
                wide,
                n,
                p,
                values,
                padded * NR,
                d / NR,
                target,
                ldc,
                inverse,
            )
        };
        if rows < MR {
            for r in 0..rows {
                // SAFETY: row r < rows of this task's rows in `out`, d values at its columns.
                unsafe { std::ptr::copy_nonoverlapping(edge[r * d..].as_ptr(), c.add(r * h), d) };
            }
        }
    }
    BUFFERS.set(buffers);
}

/// Rows per head of the relative tables (0 without them).
fn rel_rows(relative: Option<&RelativeTerms>) -> usize {
    relative.map_or(0, |r| r.rows)
}

/// A window's relative scores, already scaled: `content` is the current strip's
/// content-to-position scores (`[6][width]`), `position` every key's position-to-content scores
/// (`[n][width]`); column `c` holds relative row `first + c`.
struct RelativeScores<'a> {
    content: Option<&'a [f32]>,
    position: Option<&'a [f32]>,
    width: usize,
    first: usize,
}

/// Adds to the scores of queries `r0..r0 + rows` (the strip, row stride `padded`) the
/// relative terms of each (query, key) pair, picked at their relative row.
fn add_relative(
    rel: &RelativeTerms,
    terms: &RelativeScores,
    r0: usize,
    rows: usize,
    n: usize,
    padded: usize,
    scores: &mut [f32],
) {
    for r in 0..rows {
        let i = r0 + r;
        let strip = &mut scores[r * padded..][..n];
        // Column of the relative row of (i, j) for j = 0: distances fall as j grows.
        let columns = &rel.index[rel.offset + i + 1 - n..][..n];
        if let Some(content) = terms.content {
            let content = &content[r * terms.width..][..terms.width];
            for (score, &row) in strip.iter_mut().zip(columns.iter().rev()) {
                *score += content[row as usize - terms.first];
            }
        }
        if let Some(position) = terms.position {
            for (j, (score, &row)) in strip.iter_mut().zip(columns.iter().rev()).enumerate() {
                *score += position[j * terms.width + row as usize - terms.first];
            }
        }
    }
}

/// Asks for the cache lines of `part` (a head's slice of a token's row) to be loaded into L1.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_row_part(part: &[f32]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // 64-byte lines: every 16th value and the last one touch each line the slice spans.
    for at in (0..part.len())
        .step_by(16)
        .chain([part.len().saturating_sub(1)])
    {
        // SAFETY: a prefetch never faults, and the address lies in `part` anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(part.as_ptr().wrapping_add(at) as *const i8) };
    }
}

/// A strip of `panels` 6 × 16 tiles: `C[r][16p + c] = scale[r] · Σ_{kk<k} a[r][kk] ·
/// b[p·b_step + kk·16 + c]`. One call per strip rather than per tile, so that the setup of a
/// call is paid once per row of tiles.
///
/// # Safety
/// The CPU must support AVX2 and FMA; every `a[r]` must hold `k` values, `b` must hold
/// `(panels − 1)·b_step + k·16` values, and `c` must be valid for writes of 6 rows of
/// `16·panels` values at row stride `ldc`.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn strip(
    k: usize,
    a: [&[f32]; MR],
    b: &[f32],
    b_step: usize,
    panels: usize,
    c: *mut f32,
    ldc: usize,
    scale: [f32; MR],
) {
    use std::arch::x86_64::*;
    debug_assert!(a.iter().all(|r| r.len() >= k));
    debug_assert!(panels == 0 || b.len() >= (panels - 1) * b_step + k * NR);
    let a = a.map(|r| r.as_ptr());
    let scale = scale.map(|s| _mm256_set1_ps(s));
    for panel in 0..panels {
        // SAFETY: for kk < k, a[r] + kk lies in row r (k values) and the panel's
        // b[kk·16 .. kk·16 + 16] in `b` (this function's contract); AVX2/FMA as here.
        let acc = unsafe {
            let b = b.as_ptr().add(panel * b_step);
            product_6x16(k, |r, kk| a[r].wrapping_add(kk), b, NR)
        };
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row r < 6 of the C strip, columns 16·panel .. 16·panel + 16 (the
            // function's contract).
            unsafe {
                let row = c.add(r * ldc + panel * NR);
                _mm256_storeu_ps(row, _mm256_mul_ps(acc[0], scale[r]));
                _mm256_storeu_ps(row.add(8), _mm256_mul_ps(acc[1], scale[r]));
            }
        }
    }
}

/// [`strip_avx512`] where the CPU has AVX-512F (`wide`), else [`strip`].
///
/// # Safety
/// As [`strip`], and `wide` only where the CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn any_strip(
    wide: bool,
    k: usize,
    a: [&[f32]; MR],
    b: &[f32],
    b_step: usize,
    panels: usize,
    c: *mut f32,
    ldc: usize,
    scale: [f32; MR],
) {
    // SAFETY: for both calls, the operands are the caller's (as `strip` requires); `strip_avx512` runs
    // only with `wide`, which the caller sets only where the CPU has AVX-512F.
    unsafe {
        if wide {
            strip_avx512(k, a, b, b_step, panels, c, ldc, scale)
        } else {
            strip(k, a, b, b_step, panels, c, ldc, scale)
        }
    }
}

/// [`strip`] on 512-bit vectors, two panels (6 × 32) at a time: the same sums, in the same
/// order, with twice the values per instruction.
///
/// # Safety
/// As [`strip`], and the CPU must support AVX-512F.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn strip_avx512(
    k: usize,
    a: [&[f32]; MR],
    b: &[f32],
    b_step: usize,
    panels: usize,
    c: *mut f32,
    ldc: usize,
    scale: [f32; MR],
) {
    use std::arch::x86_64::*;
    debug_assert!(a.iter().all(|r| r.len() >= k));
    debug_assert!(panels == 0 || b.len() >= (panels - 1) * b_step + k * NR);
    let a = a.map(|r| r.as_ptr());
    let at = |r: usize, kk: usize| a[r].wrapping_add(kk);
    let scale = scale.map(|s| _mm512_set1_ps(s));
    let mut panel = 0;
    while panel < panels {
        let b = b.as_ptr().wrapping_add(panel * b_step);
        // SAFETY: for kk < k, a[r] + kk lies in row r (k values) and each panel's
        // b[kk·16 .. kk·16 + 16] in `b`; the C tiles are rows 0..6, columns 16·panel on, of the
        // C strip (this function's contract); AVX-512F as here.
        unsafe {
            let c = c.add(panel * NR);
            if panel + 1 < panels {
                store_scaled(product_6xp::<2>(k, at, b, b_step), c, ldc, scale);
                panel += 2;
            } else {
                store_scaled(product_6xp::<1>(k, at, b, b_step), c, ldc, scale);
                panel += 1;
            }
        }
    }
}

/// Stores `scale[r] · sums[r][p]` to row `r`, columns `16p..16p + 16` of `c` (row stride
/// `ldc`).
///
/// # Safety
/// The CPU must support AVX-512F; `c` must be valid for writes of 6 rows of `16·P` values at
/// row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_scaled<const P: usize>(
    sums: [[std::arch::x86_64::__m512; P]; MR],
    c: *mut f32,
    ldc: usize,
    scale: [std::arch::x86_64::__m512; MR],
) {
    use std::arch::x86_64::*;
    for (r, row) in sums.iter().enumerate() {
        for (p, &sum) in row.iter().enumerate() {
            // SAFETY: row r < 6, columns 16p..16p + 16 < 16·P (the contract).
            unsafe { _mm512_storeu_ps(c.add(r * ldc + p * NR), _mm512_mul_ps(sum, scale[r])) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::not_run::not_run;
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
            not_run(
                "matches_the_definition_on_uneven_windows",
                "the whole test",
                "AVX2/FMA",
            );
            return;
        }
        if !PackedWeights::wide() {
            not_run(
                "matches_the_definition_on_uneven_windows",
                "the AVX-512 kernel",
                "AVX-512F",
            );
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
            // Twice per kernel: the second call reuses (stale) per-thread buffers.
            let kernels = [false, true]
                .into_iter()
                .filter(|&w| !w || PackedWeights::wide());
            let mut first: Option<Vec<f32>> = None;
            for wide in kernels.flat_map(|w| [w, w]) {
                let mut context = vec![f32::NAN; start * h];
                attention_on(wide, &qkv, &spans, h, heads, None, &mut context);
                for (i, (&got, &want)) in context.iter().zip(&expected).enumerate() {
                    assert!(
                        (got as f64 - want).abs() < 1e-5,
                        "wide {wide} h {h} heads {heads}: element {i} is {got}, expected {want}"
                    );
                }
                // Both kernels sum in the same order: the same bits.
                match &first {
                    None => first = Some(context),
                    Some(narrow) => assert!(
                        narrow
                            .iter()
                            .zip(&context)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "h {h} heads {heads}: the AVX-512 products differ from the AVX2 ones"
                    ),
                }
            }
        }
    }
}
