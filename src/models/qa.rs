//! The question-answering head every architecture shares, and the one wrapper that puts it on
//! an encoder (transformers' `XForQuestionAnswering` classes differ only in their encoder).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn;

/// One padded batch of windows, every tensor `[batch, seq]` of `u32`.
#[derive(Clone, Debug)]
pub struct ModelInput {
    /// Token ids.
    pub input_ids: Tensor,
    /// Segment ids: 0 for the question, 1 for the context (ignored by models without token types).
    pub token_type_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

/// Start and end logits, each `[batch, seq]`.
#[derive(Clone, Debug)]
pub struct QaLogits {
    /// Start score of every token (S·Tᵢ + b).
    pub start: Tensor,
    /// End score of every token (E·Tᵢ + b).
    pub end: Tensor,
}

/// An encoder with its question-answering head.
pub trait QaModel: Send + Sync {
    /// Runs the model. With `train`, dropout is on and only differentiable ops are used.
    fn forward(&self, input: &ModelInput, train: bool) -> Result<QaLogits>;
}

/// An architecture's encoder (transformers' `XModel` without pooler).
pub trait Encoder: Send + Sync {
    /// Final hidden states `[b, s, hidden]`. With `train`, dropout is on and only
    /// differentiable ops are used.
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor>;
}

/// The QA head of every architecture: one linear layer hidden → 2 named `qa_outputs`, whose
/// two rows are the start vector S and the end vector E.
#[derive(Clone, Debug)]
pub struct QaHead {
    qa_outputs: nn::Linear,
}

impl QaHead {
    /// Loads `qa_outputs.weight` / `qa_outputs.bias` under `vb` (the checkpoint root).
    pub fn new(hidden_size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qa_outputs: nn::Linear::new(hidden_size, 2, vb.pp("qa_outputs"))?,
        })
    }

    /// Maps final hidden states `[b, s, hidden]` to start/end logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<QaLogits> {
        let logits = self.qa_outputs.forward(hidden)?;
        Ok(QaLogits {
            start: logits.narrow(2, 0, 1)?.squeeze(2)?.contiguous()?,
            end: logits.narrow(2, 1, 1)?.squeeze(2)?.contiguous()?,
        })
    }
}

/// An encoder with the span-prediction head: transformers' `XForQuestionAnswering` for every
/// architecture X.
pub struct ForQuestionAnswering {
    encoder: Box<dyn Encoder>,
    /// Dropout on the final hidden states before the head (DistilBERT's `qa_dropout`).
    head_dropout: f64,
    head: QaHead,
}

impl ForQuestionAnswering {
    /// Puts the head `qa_outputs.*` found under `vb` (the checkpoint root) on `encoder`.
    pub fn new(
        encoder: Box<dyn Encoder>,
        hidden_size: usize,
        head_dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            encoder,
            head_dropout,
            head: QaHead::new(hidden_size, vb)?,
        })
    }
}

impl QaModel for ForQuestionAnswering {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<QaLogits> {
        let hidden = self.encoder.forward(input, train)?;
        let hidden = nn::dropout(&hidden, self.head_dropout, train)?;
        self.head.forward(&hidden)
    }
}

/// Returns `vb` under `prefix` when the checkpoint stores the encoder there (`bert.`), else `vb`
/// itself: base checkpoints saved from `BertModel` carry no prefix.
pub fn encoder_root<'a>(vb: &VarBuilder<'a>, prefix: &str) -> VarBuilder<'a> {
    let prefixed = vb.pp(prefix);
    if prefixed.contains_tensor("embeddings.word_embeddings.weight") {
        prefixed
    } else {
        vb.clone()
    }
}
