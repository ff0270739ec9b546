//! Encoders with a question-answering head, one file per architecture.
//!
//! Each architecture mirrors its transformers implementation: a serde config struct that reads
//! config.json, modules named after the Hugging Face weights (so checkpoints load by path), and a
//! forward pass that returns per-token start and end logits. The same code trains (see
//! [`crate::nn`]): pass `train = true` to enable dropout and differentiable kernels.

pub mod albert;
pub mod bert;
pub mod deberta_v2;
pub mod distilbert;
pub mod electra;
pub mod mobilebert;
pub mod roberta;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

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
    fn forward(&self, input: &ModelInput, train: bool) -> CandleResult<QaLogits>;
}

/// The QA head of every architecture: one linear layer hidden → 2 named `qa_outputs`, whose
/// two rows are the start vector S and the end vector E.
#[derive(Clone, Debug)]
pub struct QaHead {
    qa_outputs: crate::nn::Linear,
}

impl QaHead {
    /// Loads `qa_outputs.weight` / `qa_outputs.bias` under `vb` (the checkpoint root).
    pub fn new(hidden_size: usize, vb: VarBuilder) -> CandleResult<Self> {
        Ok(Self {
            qa_outputs: crate::nn::Linear::new(hidden_size, 2, vb.pp("qa_outputs"))?,
        })
    }

    /// Maps final hidden states `[b, s, hidden]` to start/end logits.
    pub fn forward(&self, hidden: &Tensor) -> CandleResult<QaLogits> {
        let logits = self.qa_outputs.forward(hidden)?;
        Ok(QaLogits {
            start: logits.narrow(2, 0, 1)?.squeeze(2)?.contiguous()?,
            end: logits.narrow(2, 1, 1)?.squeeze(2)?.contiguous()?,
        })
    }
}

/// Returns `vb` under `prefix` when the checkpoint stores the encoder there (`bert.`), else `vb`
/// itself: base checkpoints saved from `BertModel` carry no prefix.
pub fn encoder_root<'a>(vb: &VarBuilder<'a>, prefix: &str, probe: &str) -> VarBuilder<'a> {
    let prefixed = vb.pp(prefix);
    if prefixed.contains_tensor(probe) {
        prefixed
    } else {
        vb.clone()
    }
}

/// Every `model_type` (config.json) that bertqa can run.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "albert",
    "bert",
    "deberta-v2",
    "distilbert",
    "electra",
    "mobilebert",
    "roberta",
    "xlm-roberta",
];

/// What the pipeline needs to know about an architecture besides its weights.
#[derive(Clone, Debug)]
pub struct ArchInfo {
    /// config.json's `model_type`.
    pub model_type: String,
    /// Longest input the position embeddings allow (for RoBERTa: the table size less the
    /// positions up to the padding index).
    pub max_position_embeddings: usize,
}

/// Reads what the pipeline needs to know about the architecture from config.json, without
/// loading weights. Fails for a `model_type` bertqa cannot run.
pub fn arch_info(config: &serde_json::Value) -> Result<ArchInfo> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
        return Err(Error::UnsupportedModel {
            model_type,
            supported: SUPPORTED_MODEL_TYPES.to_vec(),
        });
    }
    let max_position_embeddings = match model_type.as_str() {
        "roberta" | "xlm-roberta" => {
            let cfg: roberta::Config = parse_config(config)?;
            // Positions start after the padding index, so fewer tokens fit than the table has.
            cfg.max_input_len()
        }
        _ => config
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(512) as usize,
    };
    Ok(ArchInfo {
        model_type,
        max_position_embeddings,
    })
}

/// Reads config.json into an architecture's config struct.
pub(crate) fn parse_config<C: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
) -> Result<C> {
    serde_json::from_value(config.clone())
        .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))
}

/// Parses the architecture's config and builds its model, boxed.
fn boxed<C, M>(
    config: &serde_json::Value,
    vb: VarBuilder,
    new: impl FnOnce(&C, VarBuilder) -> CandleResult<M>,
) -> Result<Box<dyn QaModel>>
where
    C: serde::de::DeserializeOwned,
    M: QaModel + 'static,
{
    let cfg: C = parse_config(config)?;
    Ok(Box::new(new(&cfg, vb)?))
}

/// Builds the architecture named by `config["model_type"]` from weights under `vb`.
pub fn build(config: &serde_json::Value, vb: VarBuilder) -> Result<(Box<dyn QaModel>, ArchInfo)> {
    let info = arch_info(config)?;
    let model = match info.model_type.as_str() {
        "bert" => boxed(config, vb, bert::BertForQuestionAnswering::new)?,
        "distilbert" => boxed(config, vb, distilbert::DistilBertForQuestionAnswering::new)?,
        "electra" => boxed(config, vb, electra::ElectraForQuestionAnswering::new)?,
        "roberta" | "xlm-roberta" => boxed(config, vb, roberta::RobertaForQuestionAnswering::new)?,
        "albert" => boxed(config, vb, albert::AlbertForQuestionAnswering::new)?,
        "mobilebert" => boxed(config, vb, mobilebert::MobileBertForQuestionAnswering::new)?,
        "deberta-v2" => boxed(config, vb, deberta_v2::DebertaV2ForQuestionAnswering::new)?,
        _ => {
            return Err(Error::UnsupportedModel {
                model_type: info.model_type,
                supported: SUPPORTED_MODEL_TYPES.to_vec(),
            })
        }
    };
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn unsupported_model_type_is_refused_with_the_supported_list() {
        let config = serde_json::json!({ "model_type": "xlnet", "d_model": 32 });
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = match build(&config, vb) {
            Ok(_) => panic!("xlnet was accepted"),
            Err(e) => e,
        };
        match &err {
            Error::UnsupportedModel {
                model_type,
                supported,
            } => {
                assert_eq!(model_type, "xlnet");
                assert_eq!(supported.as_slice(), SUPPORTED_MODEL_TYPES);
                for arch in [
                    "albert",
                    "bert",
                    "deberta-v2",
                    "distilbert",
                    "electra",
                    "mobilebert",
                    "roberta",
                    "xlm-roberta",
                ] {
                    assert!(
                        supported.contains(&arch),
                        "{arch} missing from {supported:?}"
                    );
                }
            }
            other => panic!("expected UnsupportedModel, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("xlnet") && message.contains("xlm-roberta"),
            "{message}"
        );
        assert!(err.is_user_error());
    }

    #[test]
    fn missing_model_type_is_refused() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(matches!(
            build(&serde_json::json!({}), vb),
            Err(Error::UnsupportedModel { .. })
        ));
    }
}
