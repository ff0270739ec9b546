//! The architecture registry: what bertqa knows of each architecture besides its weights, and
//! a checkpoint's config.json parsed once against it.

use std::fmt::Debug;

use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::qa::{encoder_root, Encoder, ForQuestionAnswering, QaModel};
use super::ARCHITECTURES;
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::fast::{FastEncoder, FastQaModel};
use crate::sentencepiece::Converter;

/// One config.json `model_type`: the transformers class a QA model of it is saved as, and what
/// the README's table says of it.
#[derive(Clone, Copy, Debug)]
pub struct ModelType {
    /// config.json's `model_type`.
    pub name: &'static str,
    /// Its name in prose.
    pub title: &'static str,
    /// The class written to `architectures` when training saves a model.
    pub qa_class: &'static str,
    /// Its tokenizer, in prose.
    pub tokenizer: &'static str,
    /// A QA checkpoint of this type on the Hub.
    pub example: &'static str,
}

/// One architecture, as its file declares it in its `ARCHITECTURE` constant.
#[derive(Debug)]
pub struct Architecture {
    /// The `model_type`s it reads.
    pub model_types: &'static [ModelType],
    /// Where a QA checkpoint keeps the encoder's weights (`bert` → `bert.embeddings.…`); base
    /// checkpoints keep them at the root.
    pub weight_prefix: &'static str,
    /// How transformers converts its SentencePiece model when a checkpoint has no
    /// tokenizer.json (`None`: its tokenizer is not SentencePiece).
    pub sentencepiece: Option<Converter>,
    /// Embedding tables (weight-name suffixes) created with `padding_idx = pad_token_id`, whose
    /// padding row training never updates.
    pub padding_tables: &'static [&'static str],
    /// transformers' config class, whose keys and defaults `Config` mirrors.
    pub config_class: &'static str,
    /// Reads config.json into the architecture's typed config (see [`parse_as`]).
    pub parse: fn(&serde_json::Value) -> Result<Box<dyn ModelConfig>>,
}

/// An architecture's typed config.json: the limits and the models it builds.
pub trait ModelConfig: Debug + Send + Sync {
    /// Refuses values the models cannot run (zero heads, a hidden size that does not split
    /// into heads, position kinds that are not implemented), with a message saying which.
    fn validate(&self) -> Result<()>;

    /// Width of the final hidden states (the QA head's input).
    fn hidden_size(&self) -> usize;

    /// Longest window the position embeddings allow.
    fn max_input_len(&self) -> usize;

    /// Dropout on the final hidden states before the QA head (training only).
    fn head_dropout(&self) -> f64 {
        0.0
    }

    /// The reference encoder (candle modules named after the weights; the training model),
    /// from the weights under `root` (the encoder's prefix).
    fn encoder(&self, root: VarBuilder) -> candle_core::Result<Box<dyn Encoder>>;

    /// The encoder on the fast engine, from the weights under `root`; `Ok(None)` (the
    /// default) where the fast engine does not cover this configuration.
    fn fast_encoder(&self, root: &VarBuilder, precision: Precision) -> Result<Option<FastEncoder>> {
        let _ = (root, precision);
        Ok(None)
    }
}

/// [`Architecture::parse`] for a config type: deserializes, then validates.
pub fn parse_as<C: ModelConfig + DeserializeOwned + 'static>(
    config: &serde_json::Value,
) -> Result<Box<dyn ModelConfig>> {
    let parsed: C = serde_json::from_value(config.clone())
        .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
    parsed.validate()?;
    Ok(Box::new(parsed))
}

/// The keys of config.json that every architecture shares (transformers' `PretrainedConfig`).
#[derive(Debug, Deserialize)]
struct CommonKeys {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_initializer_range")]
    initializer_range: f64,
}

fn default_initializer_range() -> f64 {
    0.02
}

/// A checkpoint's config.json, parsed: its architecture and typed config.
#[derive(Debug)]
pub struct ModelSpec {
    model_type: ModelType,
    architecture: &'static Architecture,
    config: Box<dyn ModelConfig>,
    pad_token_id: Option<u32>,
    initializer_range: f64,
}

impl ModelSpec {
    /// Parses config.json. Fails for a `model_type` bertqa cannot run, and for a config its
    /// architecture refuses.
    pub fn parse(config: &serde_json::Value) -> Result<Self> {
        let common: CommonKeys = serde_json::from_value(config.clone())
            .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
        let name = common.model_type.unwrap_or_default();
        let (architecture, model_type) = lookup(&name).ok_or_else(|| Error::UnsupportedModel {
            model_type: name.clone(),
            supported: supported_model_types(),
        })?;
        Ok(Self {
            model_type,
            architecture,
            config: (architecture.parse)(config)?,
            pad_token_id: common.pad_token_id,
            initializer_range: common.initializer_range,
        })
    }

    /// config.json's `model_type`.
    pub fn model_type(&self) -> &'static str {
        self.model_type.name
    }

    /// The transformers class a QA model of this type is saved as.
    pub fn qa_class(&self) -> &'static str {
        self.model_type.qa_class
    }

    /// The architecture.
    pub fn architecture(&self) -> &'static Architecture {
        self.architecture
    }

    /// The typed config.
    pub fn config(&self) -> &dyn ModelConfig {
        self.config.as_ref()
    }

    /// Longest window the model takes.
    pub fn max_input_len(&self) -> usize {
        self.config.max_input_len()
    }

    /// `pad_token_id` as config.json declares it (`None` when it declares none).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// Std of the normal initialisation of weights a checkpoint lacks (the QA head of a base
    /// model).
    pub fn initializer_range(&self) -> f64 {
        self.initializer_range
    }

    /// The reference model (candle; the code that also trains) from the weights under `vb`.
    pub fn reference_model(&self, vb: VarBuilder) -> candle_core::Result<Box<dyn QaModel>> {
        let root = encoder_root(&vb, self.architecture.weight_prefix);
        let encoder = self.config.encoder(root)?;
        let hidden = self.config.hidden_size();
        let model = ForQuestionAnswering::new(encoder, hidden, self.config.head_dropout(), vb)?;
        Ok(Box::new(model))
    }

    /// The model on the fast engine, or `Ok(None)` where the fast engine does not cover it.
    pub fn fast_model(&self, vb: &VarBuilder, precision: Precision) -> Result<Option<FastQaModel>> {
        let root = encoder_root(vb, self.architecture.weight_prefix);
        match self.config.fast_encoder(&root, precision)? {
            Some(encoder) => Ok(Some(FastQaModel::new(encoder, vb)?)),
            None => Ok(None),
        }
    }
}

/// The architecture that reads `model_type`, and that type's entry.
pub fn lookup(model_type: &str) -> Option<(&'static Architecture, ModelType)> {
    ARCHITECTURES.iter().find_map(|arch| {
        arch.model_types
            .iter()
            .find(|t| t.name == model_type)
            .map(|t| (*arch, *t))
    })
}

/// Every `model_type` bertqa can run, sorted.
pub fn supported_model_types() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = ARCHITECTURES
        .iter()
        .flat_map(|a| a.model_types.iter().map(|t| t.name))
        .collect();
    names.sort_unstable();
    names
}

/// Fails unless `heads` is at least one and splits `hidden` evenly.
pub(crate) fn check_heads(hidden: usize, heads: usize) -> Result<()> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::InvalidInput(format!(
            "config.json: hidden size {hidden} is not a multiple of {heads} attention heads; \
             the checkpoint's config is damaged"
        )));
    }
    Ok(())
}

/// Fails unless `kind` (config.json's `position_embedding_type`) is absolute, the only kind
/// implemented.
pub(crate) fn check_absolute_positions(kind: Option<&str>) -> Result<()> {
    match kind {
        None | Some("absolute") => Ok(()),
        Some(kind) => Err(Error::InvalidInput(format!(
            "config.json: position_embedding_type `{kind}` is not supported (only `absolute`)"
        ))),
    }
}

/// The README's table of supported architectures, one row per `model_type`, from the registry.
pub fn markdown_table() -> String {
    let mut table = String::from(
        "| `model_type` | architecture | tokenizer | saved as | Hub example |\n|---|---|---|---|---|\n",
    );
    for t in ARCHITECTURES.iter().flat_map(|a| a.model_types) {
        table.push_str(&format!(
            "| `{}` | {} | {} | `{}` | `{}` |\n",
            t.name, t.title, t.tokenizer, t.qa_class, t.example
        ));
    }
    table
}
