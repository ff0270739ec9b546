//! DeBERTa's disentangled attention on the fast engine: the content scores `Q·Kᵀ` plus, for
//! every (query, key) pair, the content-to-position term `Q_i · Kr[r]` and the
//! position-to-content term `K_j · Qr[r]`, where `r` is the pair's bucketed relative distance.
//!
//! The relative embeddings, their LayerNorm and their projections do not depend on the input:
//! the architecture computes the relative keys and queries `Kr`, `Qr` once at load, and the
//! engine lays them out for its kernels.

use super::attend::strided_attention;
use super::{grow, Scratch};
use crate::kernels::attention::{self, relative_panels, RelativeTerms};
use crate::kernels::ops::{matmul, MatMut, MatRef};

/// What the architecture computes once for a layer's relative attention.
#[derive(Debug)]
pub struct RelativeSpec {
    /// The relative keys `Kr` (`[rows][heads·d]`), for the content-to-position term.
    pub keys: Option<Vec<f32>>,
    /// The relative queries `Qr` (`[rows][heads·d]`), for the position-to-content term.
    pub queries: Option<Vec<f32>>,
    /// Rows of the tables (`2·span`).
    pub rows: usize,
    /// The table row of every distance `i − j` of query `i` and key `j`, at `i − j + offset`.
    pub index: Vec<u32>,
    /// Largest distance `index` covers (the longest window less one).
    pub offset: usize,
    /// Scale of the scores and of both terms (`1 / √(d · (1 + terms))`).
    pub scale: f32,
}

/// A layer's relative-position terms, laid out for the attention kernels.
#[derive(Debug)]
pub struct RelativeAttention {
    spec: RelativeSpec,
    heads: usize,
    d: usize,
    /// Each head's tables as `[d][16]` panels, for the fused kernel.
    key_panels: Option<Vec<f32>>,
    query_panels: Option<Vec<f32>>,
    /// Rows of the panels (`rows` rounded up to 16).
    panel_rows: usize,
}

impl RelativeAttention {
    /// The terms of `spec` for `heads` heads of `d` values.
    pub fn new(spec: RelativeSpec, heads: usize, d: usize) -> Self {
        let panels = |t: &Option<Vec<f32>>| {
            t.as_ref()
                .filter(|_| attention::available(d))
                .map(|t| relative_panels(t, spec.rows, heads, d))
        };
        Self {
            key_panels: panels(&spec.keys),
            query_panels: panels(&spec.queries),
            panel_rows: spec.rows.next_multiple_of(16),
            spec,
            heads,
            d,
        }
    }

    /// Longest window the relative index covers.
    pub fn max_len(&self) -> usize {
        self.spec.offset + 1
    }

    /// Attention of every window over `qkv` (`[tokens, 3·hidden]`) with the relative terms;
    /// writes the merged heads to `scratch.context`.
    pub(crate) fn attention(
        &self,
        qkv: &[f32],
        spans: &[(usize, usize)],
        heads: usize,
        scratch: &mut Scratch,
    ) {
        let hidden = heads * self.d;
        if attention::available(self.d) {
            let terms = RelativeTerms {
                keys: self.key_panels.as_deref(),
                queries: self.query_panels.as_deref(),
                rows: self.panel_rows,
                index: &self.spec.index,
                offset: self.spec.offset,
                scale: self.spec.scale,
            };
            attention::relative_attention(qkv, spans, hidden, heads, &terms, &mut scratch.context);
            return;
        }
        let total = qkv.len() / (3 * hidden);
        grow(&mut scratch.heads, total * hidden);
        let add = |head: usize, start: usize, len: usize, scores: &mut [f32]| {
            self.add_terms(qkv, head, start, len, scores)
        };
        strided_attention(
            qkv,
            spans,
            hidden,
            heads,
            Some((self.spec.scale, &add)),
            scratch,
        );
    }

    /// Adds the relative terms of head `head` to the `[len, len]` scores of the window
    /// starting at token `start` (the path without the fused kernel).
    fn add_terms(&self, qkv: &[f32], head: usize, start: usize, len: usize, scores: &mut [f32]) {
        let (d, rows, h) = (self.d, self.spec.rows, self.heads * self.d);
        let part =
            |p: usize| MatRef::new(&qkv[start * 3 * h + p * h + head * d..], len, d, 3 * h, 1);
        let product = |a: MatRef, t: &[f32]| {
            let mut out = vec![0f32; len * rows];
            let m = MatMut::row_major(&mut out, len, rows);
            let table = MatRef::new(&t[head * d..], rows, d, h, 1);
            matmul(m, a, table.t(), self.spec.scale, false, false);
            out
        };
        let content = self.spec.keys.as_deref().map(|k| product(part(0), k));
        let position = self.spec.queries.as_deref().map(|q| product(part(1), q));
        let offset = self.spec.offset;
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            for (j, score) in row.iter_mut().enumerate() {
                let r = self.spec.index[offset + i - j] as usize;
                if let Some(c) = &content {
                    *score += c[i * rows + r];
                }
                if let Some(p) = &position {
                    *score += p[j * rows + r];
                }
            }
        }
    }
}
