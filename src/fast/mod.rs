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

mod attend;
mod bottleneck;
mod embeddings;
mod layer;
mod relative;

pub use bottleneck::{BottleneckLayer, BottleneckNames, BottleneckShape};
pub use embeddings::{EmbeddingSpec, Embeddings, PositionIds, WordTransform};
pub use layer::{
    dense_linear, fused_linear, linear, linear_parts, Layer, LayerNames, LayerShape, Norm,
};
pub use relative::{RelativeAttention, RelativeSpec};

use std::sync::Arc;

use candle_nn::VarBuilder;

use crate::engine::{Engine, EngineKind, Tokens, WindowLogits};
use crate::error::{Error, Result};

/// One layer of a fast encoder: reads and rewrites the packed hidden states in a [`Scratch`].
pub trait FastLayer: std::fmt::Debug + Send + Sync {
    /// One layer over the rows of `scratch.hidden` (windows `spans`, end to end); with `keep`,
    /// only those rows (ascending) go on past attention, and the hidden states are left
    /// holding them alone, in order.
    fn forward(&self, spans: &[(usize, usize)], scratch: &mut Scratch, keep: Option<&[usize]>);
}

/// An encoder on the fast engine: embeddings and the layers they go through, in order (a layer
/// may appear several times: ALBERT shares one layer's weights between all of its steps).
#[derive(Debug)]
pub struct FastEncoder {
    embeddings: Embeddings,
    layers: Vec<Arc<dyn FastLayer>>,
    hidden: usize,
    /// Longest window the layers take, where the embeddings do not bound it themselves.
    max_window: Option<usize>,
}

impl FastEncoder {
    /// An encoder of `layers` over `embeddings`, whose final hidden states are `hidden` wide.
    pub fn new(embeddings: Embeddings, layers: Vec<Arc<dyn FastLayer>>, hidden: usize) -> Self {
        Self {
            embeddings,
            layers,
            hidden,
            max_window: None,
        }
    }

    /// Refuses windows longer than `tokens` (models without a position table, whose relative
    /// positions reach that far).
    pub fn with_max_window(mut self, tokens: usize) -> Self {
        self.max_window = Some(tokens);
        self
    }
}

/// Buffers reused by every layer of a forward pass, and kept between passes: fresh
/// multi-megabyte buffers come from the OS as pages that it must zero on first touch.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The hidden states, `[rows, width]`.
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    intermediate: Vec<f32>,
    /// Two more buffers for layers that keep values across their own steps (the bottleneck
    /// layer keeps its input and its narrowed stream for the residuals); others leave them.
    spare: [Vec<f32>; 2],
}

/// Makes `buffer` hold `len` values. It is written before it is read, so growing it need not
/// copy its old contents (a realloc would).
pub(crate) fn grow(buffer: &mut Vec<f32>, len: usize) {
    if len > buffer.capacity() {
        *buffer = Vec::new();
    }
    buffer.resize(len, 0.0);
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
        if let Some(max) = encoder.max_window {
            if let Some(w) = windows.iter().find(|w| w.input_ids.len() > max) {
                return Err(Error::InvalidInput(format!(
                    "a window of {} tokens is longer than the model's {max} positions",
                    w.input_ids.len()
                )));
            }
        }
        let mut x = std::mem::take(&mut scratch.hidden);
        let embedded = encoder.embeddings.forward(windows, total, &mut x);
        scratch.hidden = x;
        embedded?;
        let layers = encoder.layers.len();
        for (i, layer) in encoder.layers.iter().enumerate() {
            let keep = keep.filter(|_| i + 1 == layers);
            layer.forward(spans, scratch, keep);
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
