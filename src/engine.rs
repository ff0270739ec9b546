//! What every inference engine shares: token windows in, per-window start/end logits out.
//!
//! Two engines implement [`Engine`]: the fast CPU engine ([`crate::fast`]), which packs windows
//! end to end, and the reference models ([`crate::models`], candle, the code that also trains),
//! which pad them to the longest. The pipeline, the server's batcher and evaluation see only
//! this trait.

use crate::error::Result;

/// The tokens of one window, unpadded.
#[derive(Clone, Copy, Debug)]
pub struct Tokens<'a> {
    /// Token ids.
    pub input_ids: &'a [u32],
    /// Segment ids (ignored by models without token types).
    pub token_type_ids: &'a [u32],
}

/// Start and end logits of one window, one value per token.
pub type WindowLogits = (Vec<f32>, Vec<f32>);

/// The arithmetic of the encoder's linear layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout (the same answers as transformers).
    #[default]
    F32,
    /// int8 weights (per output channel) and activations (per row), i32 accumulation; about
    /// 1.5–2× as fast as f32 on AVX2 machines, 2–2.5× with AVX-512 VNNI (whole model).
    /// Attention, LayerNorm and the QA head stay f32. Fast engine only.
    Int8,
}

/// Which implementation an engine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The fast CPU engine: packed windows, fused kernels.
    Fast,
    /// The reference models (candle), padded batches.
    Reference,
}

/// Runs an encoder with its QA head over windows of tokens.
pub trait Engine: Send + Sync {
    /// Which implementation this is.
    fn kind(&self) -> EngineKind;

    /// Start and end logits of every token of every window, as one batch.
    fn logits(&self, windows: &[Tokens]) -> Result<Vec<WindowLogits>>;

    /// [`Engine::logits`] for answering: `p_masks[w]` flags the tokens of window `w` that
    /// cannot start or end an answer, whose logits decoding never reads. An engine may leave
    /// them uncomputed (NaN); by default every logit is computed.
    fn answer_logits(&self, windows: &[Tokens], p_masks: &[&[bool]]) -> Result<Vec<WindowLogits>> {
        let _ = p_masks;
        self.logits(windows)
    }

    /// Whether a batch is padded to its longest window (else windows are packed end to end).
    fn is_padded(&self) -> bool;

    /// What a batch of windows of these lengths costs, in tokens computed: the padded size
    /// (`windows × longest`) for a padded engine, the sum of lengths for a packed one.
    fn batch_cost(&self, lengths: &[usize]) -> usize {
        if self.is_padded() {
            lengths.iter().max().copied().unwrap_or(0) * lengths.len()
        } else {
            lengths.iter().sum()
        }
    }
}
