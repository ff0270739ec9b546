//! Architectures, one file each, and the registry that lists them.
//!
//! An architecture file holds everything bertqa knows of one family of encoders:
//! - `ARCHITECTURE`, its [`Architecture`] entry: the config.json `model_type`s it reads and the
//!   transformers class each is saved as, where its weights live, its tokenizer;
//! - `Config`, a serde struct mirroring transformers' config class (keys and defaults), parsed
//!   once and implementing [`ModelConfig`]: its limits, its reference encoder (candle modules
//!   named after the Hugging Face weights, so checkpoints load by path; the same code trains),
//!   and its description to the fast engine ([`crate::fast`]).
//!
//! Everything else — the supported list, error messages, the class `train` saves, the padding
//! rows training freezes, the tokenizer fallback, the README's table — is read from the
//! registry. Adding an architecture is one new file, its `pub mod` line and its entry in [`ARCHITECTURES`].

mod qa;
mod reference;
mod registry;

pub mod albert;
pub mod bert;
pub mod deberta_v2;
pub mod distilbert;
pub mod electra;
pub mod mobilebert;
pub mod roberta;

/// Every architecture bertqa runs.
pub static ARCHITECTURES: &[&Architecture] = &[
    &albert::ARCHITECTURE,
    &bert::ARCHITECTURE,
    &deberta_v2::ARCHITECTURE,
    &distilbert::ARCHITECTURE,
    &electra::ARCHITECTURE,
    &mobilebert::ARCHITECTURE,
    &roberta::ARCHITECTURE,
];

pub use qa::{encoder_root, Encoder, ForQuestionAnswering, ModelInput, QaHead, QaLogits, QaModel};
pub use reference::ReferenceEngine;
pub(crate) use registry::{check_absolute_positions, check_heads};
pub use registry::{
    lookup, markdown_table, parse_as, supported_model_types, Architecture, ModelConfig, ModelSpec,
    ModelType,
};

use candle_nn::VarBuilder;

use crate::error::Result;

/// Builds the reference model of the architecture config.json names from the weights under
/// `vb`, with its parsed config.
pub fn build(config: &serde_json::Value, vb: VarBuilder) -> Result<(Box<dyn QaModel>, ModelSpec)> {
    let spec = ModelSpec::parse(config)?;
    let model = spec.reference_model(vb)?;
    Ok((model, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
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
                assert_eq!(supported, &supported_model_types());
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

    #[test]
    fn every_model_type_is_read_by_one_architecture_only() {
        let names = supported_model_types();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique, "a model_type is listed twice");
        for name in names {
            let (arch, model_type) = lookup(name).expect("listed types are found");
            assert!(model_type.qa_class.ends_with("ForQuestionAnswering"));
            assert!(!arch.weight_prefix.is_empty());
        }
    }
}
