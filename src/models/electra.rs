//! ELECTRA (`model_type: electra`) with a question-answering head, as transformers'
//! `ElectraForQuestionAnswering`.
//!
//! A BERT encoder whose embeddings may be narrower than the hidden states: they are computed
//! at `embedding_size` and projected to `hidden_size` by `embeddings_project`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::bert::{self, Embeddings, Encoder};
use super::{parse_as, Architecture, Encoder as EncoderModel, ModelConfig, ModelInput, ModelType};
use crate::engine::Precision;
use crate::fast::{dense_linear, FastEncoder, PositionIds};
use crate::nn::Linear;

/// ELECTRA in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[ModelType {
        name: "electra",
        title: "ELECTRA",
        qa_class: "ElectraForQuestionAnswering",
        tokenizer: "WordPiece",
        example: "deepset/electra-base-squad2",
    }],
    weight_prefix: "electra",
    sentencepiece: None,
    padding_tables: &["word_embeddings"],
    config_class:
        "https://huggingface.co/docs/transformers/model_doc/electra#transformers.ElectraConfig",
    parse: parse_as::<Config>,
};

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
}

impl EncoderModel for ElectraModel {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let mut x = self.embeddings.forward_input(input, train)?;
        if let Some(project) = &self.embeddings_project {
            x = project.forward(&x)?;
        }
        self.encoder.forward(&x, &input.attention_mask, train)
    }
}

impl ModelConfig for Config {
    fn validate(&self) -> crate::error::Result<()> {
        self.bert.check()
    }

    fn hidden_size(&self) -> usize {
        self.bert.hidden_size
    }

    fn max_input_len(&self) -> usize {
        self.bert.max_position_embeddings
    }

    fn encoder(&self, root: VarBuilder) -> Result<Box<dyn EncoderModel>> {
        Ok(Box::new(ElectraModel::new(self, root)?))
    }

    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        let (cfg, e) = (&self.bert, self.embedding_size);
        let mut embeddings = cfg.fast_embeddings(root, e, PositionIds::FromZero, true)?;
        if e != cfg.hidden_size {
            let project = dense_linear(e, cfg.hidden_size, root.pp("embeddings_project"))?;
            embeddings = embeddings.with_projection(project);
        }
        cfg.fast_stack(root, embeddings, precision).map(Some)
    }
}
