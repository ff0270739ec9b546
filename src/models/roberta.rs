//! RoBERTa and XLM-RoBERTa (`model_type: roberta`, `xlm-roberta`) with a question-answering
//! head, as transformers' `RobertaForQuestionAnswering` / `XLMRobertaForQuestionAnswering`.
//!
//! The encoder is BERT's; only the embeddings differ: position ids count real tokens from
//! `pad_token_id + 1` (padding sits at `pad_token_id`), and there is a single token type.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::bert::{self, Embeddings, Encoder};
use super::{parse_as, Architecture, Encoder as EncoderModel, ModelConfig, ModelInput, ModelType};
use crate::engine::Precision;
use crate::fast::{FastEncoder, PositionIds};
use crate::sentencepiece::Converter;

/// RoBERTa and XLM-RoBERTa in the registry: one network, two tokenizers.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[
        ModelType {
            name: "roberta",
            title: "RoBERTa",
            qa_class: "RobertaForQuestionAnswering",
            tokenizer: "byte-level BPE",
            example: "deepset/roberta-base-squad2",
        },
        ModelType {
            name: "xlm-roberta",
            title: "XLM-RoBERTa",
            qa_class: "XLMRobertaForQuestionAnswering",
            tokenizer: "SentencePiece unigram",
            example: "deepset/xlm-roberta-large-squad2",
        },
    ],
    weight_prefix: "roberta",
    sentencepiece: Some(Converter::XlmRoberta),
    padding_tables: &["word_embeddings", "position_embeddings"],
    config_class:
        "https://huggingface.co/docs/transformers/model_doc/roberta#transformers.RobertaConfig",
    parse: parse_as::<Config>,
};

/// config.json of a RoBERTa or XLM-RoBERTa checkpoint: BERT's keys, read with RoBERTa's
/// defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(transparent)]
pub struct Config {
    /// The keys shared with BERT.
    pub bert: bert::Config,
}

impl Config {
    /// Id of `<pad>` (RoBERTa's default: 1); also the position of padding (`padding_idx` of
    /// the position embeddings).
    pub fn pad_token_id(&self) -> u32 {
        self.bert.pad_token_id.unwrap_or(1)
    }
}

/// Position ids as transformers' `create_position_ids_from_input_ids`: the running count of
/// non-padding tokens plus `padding_idx`, and `padding_idx` itself on padding.
pub fn position_ids(input_ids: &Tensor, padding_idx: u32) -> Result<Tensor> {
    // f32 counts are exact far beyond any sequence length.
    let real = input_ids.ne(padding_idx)?.to_dtype(DType::F32)?;
    let counts = (real.cumsum(1)? * &real)?;
    (counts + padding_idx as f64)?.to_dtype(DType::U32)
}

/// The RoBERTa encoder (`RobertaModel` without pooler).
pub struct RobertaModel {
    embeddings: Embeddings,
    encoder: Encoder,
    padding_idx: u32,
}

impl RobertaModel {
    /// Loads `embeddings.*` and `encoder.layer.N.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            embeddings: Embeddings::new(
                &cfg.bert,
                cfg.bert.hidden_size,
                cfg.pad_token_id(),
                true,
                vb.pp("embeddings"),
            )?,
            encoder: Encoder::new(&cfg.bert, vb.pp("encoder"))?,
            padding_idx: cfg.pad_token_id(),
        })
    }
}

impl EncoderModel for RobertaModel {
    /// Final hidden states `[b, s, hidden]`. Token types are ignored: the tokenizer's segment
    /// ids are not model inputs for RoBERTa, so every token gets type 0, as in transformers.
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let positions = position_ids(&input.input_ids, self.padding_idx)?;
        let types = input.input_ids.zeros_like()?;
        let x = self
            .embeddings
            .forward(&input.input_ids, &types, &positions, train)?;
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

    /// The first `pad_token_id + 1` positions are never used by real tokens, so fewer tokens
    /// fit than the table has.
    fn max_input_len(&self) -> usize {
        self.bert
            .max_position_embeddings
            .saturating_sub(self.pad_token_id() as usize + 1)
    }

    fn encoder(&self, root: VarBuilder) -> Result<Box<dyn EncoderModel>> {
        Ok(Box::new(RobertaModel::new(self, root)?))
    }

    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        let cfg = &self.bert;
        let positions = PositionIds::AfterPadding(self.pad_token_id());
        let embeddings = cfg.fast_embeddings(root, cfg.hidden_size, positions, false)?;
        cfg.fast_stack(root, embeddings, precision).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn positions_count_real_tokens_after_padding_idx() -> Result<()> {
        // Two rows with padding id 1: real tokens get 2, 3, …; padding stays at 1.
        let ids = Tensor::new(&[[0u32, 5, 7, 2, 1, 1], [0, 9, 1, 4, 2, 1]], &Device::Cpu)?;
        let got: Vec<Vec<u32>> = position_ids(&ids, 1)?.to_vec2()?;
        assert_eq!(got, vec![vec![2, 3, 4, 5, 1, 1], vec![2, 3, 1, 4, 5, 1]]);
        Ok(())
    }
}
