//! ELECTRA (`model_type: electra`) with a question-answering head, as transformers'
//! `ElectraForQuestionAnswering`.
//!
//! A BERT encoder whose embeddings may be narrower than the hidden states: they are computed
//! at `embedding_size` and projected to `hidden_size` by `embeddings_project`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::bert::{self, Embeddings, Encoder};
use super::{encoder_root, ModelInput, QaHead, QaLogits, QaModel};
use crate::nn::Linear;

/// config.json of an ELECTRA checkpoint: BERT's keys plus the embedding width.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// The keys shared with BERT.
    #[serde(flatten)]
    pub bert: bert::Config,
    /// Width of the embeddings (projected to `hidden_size` when different).
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
}

fn default_embedding_size() -> usize {
    128
}

/// The ELECTRA discriminator encoder (`ElectraModel`).
pub struct ElectraModel {
    embeddings: Embeddings,
    embeddings_project: Option<Linear>,
    encoder: Encoder,
}

impl ElectraModel {
    /// Loads `embeddings.*`, `embeddings_project.*` (only when `embedding_size != hidden_size`)
    /// and `encoder.layer.N.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.bert.ensure_absolute_positions()?;
        let hidden = cfg.bert.hidden_size;
        let embeddings_project = (cfg.embedding_size != hidden)
            .then(|| Linear::new(cfg.embedding_size, hidden, vb.pp("embeddings_project")))
            .transpose()?;
        Ok(Self {
            embeddings: Embeddings::new(
                &cfg.bert,
                cfg.embedding_size,
                cfg.bert.pad_token_id.unwrap_or(0),
                false,
                vb.pp("embeddings"),
            )?,
            embeddings_project,
            encoder: Encoder::new(&cfg.bert, vb.pp("encoder"))?,
        })
    }

    /// Final hidden states `[b, s, hidden]`.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let mut x = self.embeddings.forward_input(input, train)?;
        if let Some(project) = &self.embeddings_project {
            x = project.forward(&x)?;
        }
        self.encoder.forward(&x, &input.attention_mask, train)
    }
}

/// ELECTRA with the span-prediction head (`ElectraForQuestionAnswering`).
pub struct ElectraForQuestionAnswering {
    electra: ElectraModel,
    head: QaHead,
}

impl ElectraForQuestionAnswering {
    /// Loads a checkpoint whose encoder sits under `electra.` (or at the root for base models)
    /// and whose head is `qa_outputs.*`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let root = encoder_root(&vb, "electra", "embeddings.word_embeddings.weight");
        Ok(Self {
            electra: ElectraModel::new(cfg, root)?,
            head: QaHead::new(cfg.bert.hidden_size, vb)?,
        })
    }
}

impl QaModel for ElectraForQuestionAnswering {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<QaLogits> {
        let hidden = self.electra.forward(input, train)?;
        self.head.forward(&hidden)
    }
}
