//! The fast CPU inference engine for post-LayerNorm BERT-style encoders.
//!
//! It computes what the reference models in [`crate::models`] compute, arranged for speed:
//! - windows are packed end to end without padding: the linear layers run once over all
//!   tokens of a batch, attention runs per window, so no work is spent on padding;
//! - query, key and value are one fused `[3·hidden, hidden]` product, on weights packed once at
//!   load ([`crate::kernels::sgemm`]) or quantized to int8 ([`crate::kernels::int8`]);
//! - attention runs per window, six query rows at a time through scores, softmax and values
//!   ([`crate::kernels::attention`], on AVX2 CPUs); elsewhere it reads heads in place through
//!   strided views and runs heads in parallel;
//! - biases are fused into the products, activations and residual + LayerNorm are single
//!   vectorised passes;
//! - when answering, the last layer runs only on the tokens that can be in an answer.
//!
//! Architectures describe themselves to it through its building blocks ([`Embeddings`],
//! [`Layer`]): each architecture file names its weights (see `fast_encoder` in
//! [`crate::models::ModelConfig`]); the engine knows nothing of any architecture.

mod embeddings;
mod layer;

pub use embeddings::{EmbeddingSpec, Embeddings, PositionIds};
pub use layer::{dense_linear, linear_parts, Layer, LayerNames, LayerShape};

use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::engine::{Engine, EngineKind, Tokens, WindowLogits};
use crate::error::{Error, Result};
use crate::kernels::attention;
use crate::kernels::ops::{matmul, softmax_rows, Act, MatMut, MatRef};
use crate::nn::Activation;

/// An encoder on the fast engine: embeddings and a stack of layers.
#[derive(Debug)]
pub struct FastEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    act: Act,
}

impl FastEncoder {
    /// An encoder of `layers` over `embeddings`, with `heads` attention heads over hidden
    /// states of width `hidden` and the feed-forward activation `activation`.
    pub fn new(
        embeddings: Embeddings,
        layers: Vec<Layer>,
        hidden: usize,
        heads: usize,
        activation: Activation,
    ) -> Result<Self> {
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(Error::InvalidInput(format!(
                "config.json: hidden size {hidden} is not a multiple of {heads} attention heads"
            )));
        }
        let act = match activation {
            Activation::Gelu => Act::Gelu,
            Activation::GeluNew => Act::GeluTanh,
            Activation::Relu => Act::Relu,
        };
        Ok(Self {
            embeddings,
            layers,
            hidden,
            heads,
            act,
        })
    }
}

/// Scratch buffers reused by every layer of a forward pass, and kept between passes: fresh
/// multi-megabyte buffers come from the OS as pages that it must zero on first touch.
#[derive(Debug, Default)]
struct Scratch {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    intermediate: Vec<f32>,
}

/// An encoder with its QA head, for inference on CPU.
#[derive(Debug)]
pub struct FastQaModel {
    encoder: FastEncoder,
    /// `qa_outputs`: row 0 is the start vector S, row 1 the end vector E.
    qa_weight: Vec<f32>,
    qa_bias: [f32; 2],
    /// Buffers of finished passes, for the next ones (one per concurrent caller).
    scratch: std::sync::Mutex<Vec<Scratch>>,
}

impl FastQaModel {
    /// Puts the QA head `qa_outputs.*` found under `vb` (the checkpoint root) on `encoder`.
    pub fn new(encoder: FastEncoder, vb: &VarBuilder) -> Result<Self> {
        let (qa_weight, qa_bias) = linear_parts(encoder.hidden, 2, vb.pp("qa_outputs"))?;
        Ok(Self {
            encoder,
            qa_weight,
            qa_bias: [qa_bias[0], qa_bias[1]],
            scratch: Default::default(),
        })
    }

    /// Start and end logits of every window.
    pub fn forward(&self, windows: &[Tokens]) -> Result<Vec<WindowLogits>> {
        self.forward_keeping(windows, None)
    }

    /// [`FastQaModel::forward`] for answering questions: `masked[w]` flags the tokens of window
    /// `w` that cannot start or end an answer (the question and special tokens: the windows'
    /// `p_mask`), whose logits decoding replaces before using them. The last layer computes
    /// only the other tokens, and the logits of the flagged ones are NaN.
    pub fn forward_unmasked(
        &self,
        windows: &[Tokens],
        masked: &[&[bool]],
    ) -> Result<Vec<WindowLogits>> {
        if masked.len() != windows.len()
            || windows
                .iter()
                .zip(masked)
                .any(|(w, m)| m.len() != w.input_ids.len())
        {
            return Err(Error::InvalidInput(
                "give one mask flag per token of each window".into(),
            ));
        }
        let keep: Vec<usize> = masked
            .iter()
            .flat_map(|m| m.iter())
            .enumerate()
            .filter(|(_, &m)| !m)
            .map(|(row, _)| row)
            .collect();
        self.forward_keeping(windows, Some(&keep))
    }

    /// The forward pass; with `keep` (ascending rows of the packed windows), the last layer
    /// runs only on those rows and the other rows' logits are NaN.
    fn forward_keeping(
        &self,
        windows: &[Tokens],
        keep: Option<&[usize]>,
    ) -> Result<Vec<WindowLogits>> {
        let mut spans = Vec::with_capacity(windows.len());
        let mut total = 0;
        for w in windows {
            spans.push((total, w.input_ids.len()));
            total += w.input_ids.len();
        }
        let mut scratch = self.take_scratch();
        let result = self.encode(windows, &spans, total, keep, &mut scratch);
        let logits = result.map(|()| self.head(&scratch.hidden, &spans, keep));
        self.return_scratch(scratch);
        logits
    }

    /// Runs the encoder; leaves the final hidden states (of the kept rows) in
    /// `scratch.hidden`.
    fn encode(
        &self,
        windows: &[Tokens],
        spans: &[(usize, usize)],
        total: usize,
        keep: Option<&[usize]>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let encoder = &self.encoder;
        let h = encoder.hidden;
        let inter = encoder
            .layers
            .first()
            .map_or(0, |l| l.intermediate.out_features());
        let mut x = std::mem::take(&mut scratch.hidden);
        let embedded = encoder.embeddings.forward(windows, total, &mut x);
        scratch.hidden = x;
        embedded?;
        for (buffer, len) in [
            (&mut scratch.qkv, total * 3 * h),
            (&mut scratch.context, total * h),
            (&mut scratch.projected, total * h),
            (&mut scratch.intermediate, total * inter),
        ] {
            // Every buffer is written before it is read: growing one need not copy its old
            // contents (a realloc would).
            if len > buffer.capacity() {
                *buffer = Vec::new();
            }
            buffer.resize(len, 0.0);
        }
        let layers = encoder.layers.len();
        for (i, layer) in encoder.layers.iter().enumerate() {
            let keep = keep.filter(|_| i + 1 == layers);
            encoder.layer_forward(layer, spans, scratch, keep);
        }
        Ok(())
    }

    /// The QA head over the final hidden states `x`: start and end logits per window, NaN for
    /// tokens whose rows were not kept.
    fn head(
        &self,
        x: &[f32],
        spans: &[(usize, usize)],
        keep: Option<&[usize]>,
    ) -> Vec<WindowLogits> {
        let h = self.encoder.hidden;
        // Row of `x` holding each token, if it was computed.
        let mut kept = keep.map(|k| k.iter().peekable());
        let mut next_row = 0;
        let mut row_of = |token: usize| match &mut kept {
            None => Some(token),
            Some(rows) => rows.next_if_eq(&&token).map(|_| {
                next_row += 1;
                next_row - 1
            }),
        };
        let (s, e) = self.qa_weight.split_at(h);
        spans
            .iter()
            .map(|&(start, len)| {
                (start..start + len)
                    .map(|token| match row_of(token) {
                        Some(r) => {
                            let row = &x[r * h..(r + 1) * h];
                            let dot =
                                |v: &[f32]| row.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
                            (dot(s) + self.qa_bias[0], dot(e) + self.qa_bias[1])
                        }
                        None => (f32::NAN, f32::NAN),
                    })
                    .unzip()
            })
            .collect()
    }

    fn take_scratch(&self) -> Scratch {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn return_scratch(&self, scratch: Scratch) {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(scratch);
    }
}

impl Engine for FastQaModel {
    fn kind(&self) -> EngineKind {
        EngineKind::Fast
    }

    fn logits(&self, windows: &[Tokens]) -> Result<Vec<WindowLogits>> {
        self.forward(windows)
    }

    fn answer_logits(&self, windows: &[Tokens], p_masks: &[&[bool]]) -> Result<Vec<WindowLogits>> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        self.forward_unmasked(windows, p_masks)
    }

    fn is_padded(&self) -> bool {
        false
    }
}

impl FastEncoder {
    /// One layer over the rows of `scratch.hidden`; with `keep`, only those rows (ascending)
    /// go on past attention, and the hidden states are left holding them alone, in order.
    fn layer_forward(
        &self,
        layer: &Layer,
        spans: &[(usize, usize)],
        scratch: &mut Scratch,
        keep: Option<&[usize]>,
    ) {
        let h = self.hidden;
        let x = &mut scratch.hidden;
        let mut total = x.len() / h;
        layer.qkv.forward(x, total, &mut scratch.qkv);
        let d = h / self.heads;
        if attention::available(d) {
            attention::attention(&scratch.qkv, spans, h, self.heads, &mut scratch.context);
        } else {
            scratch.heads.resize(total * h, 0.0);
            self.attention(
                &scratch.qkv,
                spans,
                &mut scratch.heads,
                &mut scratch.context,
            );
        }
        if let Some(rows) = keep {
            // Every row's keys and values were needed; from here on rows are independent, so
            // the kept ones move to the front (rows ascend, so each moves down or stays).
            for (to, &from) in rows.iter().enumerate() {
                x.copy_within(from * h..(from + 1) * h, to * h);
                scratch
                    .context
                    .copy_within(from * h..(from + 1) * h, to * h);
            }
            total = rows.len();
            x.truncate(total * h);
        }
        layer
            .attention_output
            .forward(&scratch.context, total, &mut scratch.projected);
        layer.attention_norm.apply(x, Some(&scratch.projected));
        let inter = &mut scratch.intermediate;
        layer
            .intermediate
            .forward_activated(x, total, Some(self.act), inter);
        layer.output.forward(inter, total, &mut scratch.projected);
        layer.output_norm.apply(x, Some(&scratch.projected));
    }

    /// Multi-head self-attention of every window over the fused `[tokens, 3·hidden]`
    /// projections; writes the merged heads to `context` (`[tokens, hidden]`).
    fn attention(
        &self,
        qkv: &[f32],
        spans: &[(usize, usize)],
        per_head: &mut [f32],
        context: &mut [f32],
    ) {
        let h = self.hidden;
        let d = h / self.heads;
        let total = context.len() / h;
        let scale = 1.0 / (d as f32).sqrt();
        // Heads run in parallel; each writes its own `[tokens, head_dim]` block.
        per_head
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
        let per_head: &[f32] = per_head;
        context
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(row, out)| {
                for (head, chunk) in out.chunks_exact_mut(d).enumerate() {
                    let from = head * total * d + row * d;
                    chunk.copy_from_slice(&per_head[from..from + d]);
                }
            });
    }
}
