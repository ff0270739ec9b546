//! ALBERT (`model_type: albert`) with a question-answering head, as transformers'
//! `AlbertForQuestionAnswering`.
//!
//! Two things set ALBERT apart from BERT: the embeddings are narrower than the hidden states
//! (`embedding_size`, projected up by `embedding_hidden_mapping_in`), and the transformer layers
//! share parameters: `num_hidden_layers` steps run through `num_hidden_groups` groups of
//! `inner_group_num` layers each.

use candle_core::{Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use super::{check_absolute_positions, check_heads, parse_as, Architecture, ModelConfig};
use super::{Encoder, ModelInput, ModelType};
use crate::engine::Precision;
use crate::error::Error;
use crate::fast::{
    self, EmbeddingSpec, FastEncoder, FastLayer, LayerNames, LayerShape, PositionIds,
};
use crate::nn::{self, Activation, LayerNorm, Linear};
use crate::sentencepiece::Converter;

/// ALBERT in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[ModelType {
        name: "albert",
        title: "ALBERT",
        qa_class: "AlbertForQuestionAnswering",
        tokenizer: "SentencePiece unigram",
        example: "twmkn9/albert-base-v2-squad2",
    }],
    weight_prefix: "albert",
    sentencepiece: Some(Converter::Albert),
    padding_tables: &["word_embeddings"],
    config_class:
        "https://huggingface.co/docs/transformers/model_doc/albert#transformers.AlbertConfig",
    parse: parse_as::<Config>,
};

/// config.json of an ALBERT checkpoint (defaults as transformers' `AlbertConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the token, position and type embeddings.
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of layer applications (steps through the shared groups).
    pub num_hidden_layers: usize,
    /// Number of distinct groups of layer parameters.
    #[serde(default = "default_one")]
    pub num_hidden_groups: usize,
    /// Layers inside each group, applied one after the other.
    #[serde(default = "default_one")]
    pub inner_group_num: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Dropout on hidden states (training only).
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    /// Number of position embeddings.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_embedding_size() -> usize {
    128
}
fn default_one() -> usize {
    1
}
fn default_act() -> Activation {
    Activation::GeluNew
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Word, position and token-type embeddings of width `embedding_size`.
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embedding_size;
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, e, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                e,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                cfg.type_vocab_size,
                e,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::new(e, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let (_, seq_len) = input.input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq_len as u32, input.input_ids.device())?;
        let words = self.word_embeddings.forward(&input.input_ids)?;
        let types = self.token_type_embeddings.forward(&input.token_type_ids)?;
        let pos = self.position_embeddings.forward(&positions)?;
        let x = (words + types)?.broadcast_add(&pos)?;
        let x = self.layer_norm.forward(&x, train)?;
        nn::dropout(&x, self.dropout, train)
    }
}

/// One `albert_layers.I` block: self-attention then feed-forward, each with a residual LayerNorm.
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    attention_norm: LayerNorm,
    ffn: Linear,
    ffn_output: Linear,
    full_layer_norm: LayerNorm,
    heads: usize,
    act: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl Layer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let attn = vb.pp("attention");
        Ok(Self {
            query: Linear::new(h, h, attn.pp("query"))?,
            key: Linear::new(h, h, attn.pp("key"))?,
            value: Linear::new(h, h, attn.pp("value"))?,
            dense: Linear::new(h, h, attn.pp("dense"))?,
            attention_norm: LayerNorm::new(h, cfg.layer_norm_eps, attn.pp("LayerNorm"))?,
            ffn: Linear::new(h, cfg.intermediate_size, vb.pp("ffn"))?,
            ffn_output: Linear::new(cfg.intermediate_size, h, vb.pp("ffn_output"))?,
            full_layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("full_layer_layer_norm"))?,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
            hidden_dropout: cfg.hidden_dropout_prob,
            attention_dropout: cfg.attention_probs_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
        let q = nn::split_heads(&self.query.forward(x)?, self.heads)?;
        let k = nn::split_heads(&self.key.forward(x)?, self.heads)?;
        let v = nn::split_heads(&self.value.forward(x)?, self.heads)?;
        let ctx = nn::attention(&q, &k, &v, bias, self.attention_dropout, train)?;
        let projected = self.dense.forward(&nn::merge_heads(&ctx)?)?;
        let projected = nn::dropout(&projected, self.hidden_dropout, train)?;
        let x = self.attention_norm.forward(&(x + projected)?, train)?;
        // transformers applies no dropout to the feed-forward output of ALBERT layers.
        let ffn = self.act.forward(&self.ffn.forward(&x)?)?;
        let ffn = self.ffn_output.forward(&ffn)?;
        self.full_layer_norm.forward(&(ffn + x)?, train)
    }
}

/// The ALBERT encoder (`AlbertModel` without pooler).
pub struct AlbertModel {
    embeddings: Embeddings,
    embedding_hidden_mapping_in: Linear,
    /// `albert_layer_groups.G.albert_layers.I`, indexed `[G][I]`.
    groups: Vec<Vec<Layer>>,
    num_hidden_layers: usize,
}

impl AlbertModel {
    /// Loads `embeddings.*` and `encoder.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let encoder = vb.pp("encoder");
        let groups = (0..cfg.num_hidden_groups)
            .map(|g| {
                let group = encoder.pp(format!("albert_layer_groups.{g}.albert_layers"));
                (0..cfg.inner_group_num)
                    .map(|i| Layer::new(cfg, group.pp(i)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            embedding_hidden_mapping_in: Linear::new(
                cfg.embedding_size,
                cfg.hidden_size,
                encoder.pp("embedding_hidden_mapping_in"),
            )?,
            groups,
            num_hidden_layers: cfg.num_hidden_layers,
        })
    }
}

impl Encoder for AlbertModel {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let x = self.embeddings.forward(input, train)?;
        let bias = nn::attention_bias(&input.attention_mask, x.dtype())?;
        let mut x = self.embedding_hidden_mapping_in.forward(&x)?;
        for step in 0..self.num_hidden_layers {
            let group = group_of(step, self.num_hidden_layers, self.groups.len());
            for layer in &self.groups[group] {
                x = layer.forward(&x, &bias, train)?;
            }
        }
        Ok(x)
    }
}

/// The parameter group that layer step `step` runs, computed in floating point exactly as
/// transformers does (`int(step / (num_hidden_layers / num_hidden_groups))`): for some shapes
/// rounding makes it differ from the exact quotient (step 9 of 18 with 14 groups runs group 6).
fn group_of(step: usize, num_hidden_layers: usize, num_hidden_groups: usize) -> usize {
    let per_group = num_hidden_layers as f64 / num_hidden_groups as f64;
    ((step as f64 / per_group) as usize).min(num_hidden_groups - 1)
}

impl ModelConfig for Config {
    fn validate(&self) -> crate::error::Result<()> {
        check_absolute_positions(self.position_embedding_type.as_deref())?;
        check_heads(self.hidden_size, self.num_attention_heads)?;
        if self.num_hidden_groups == 0 || self.num_hidden_groups > self.num_hidden_layers {
            return Err(Error::InvalidInput(format!(
                "config.json: num_hidden_groups ({}) must be between 1 and num_hidden_layers ({})",
                self.num_hidden_groups, self.num_hidden_layers
            )));
        }
        Ok(())
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_input_len(&self) -> usize {
        self.max_position_embeddings
    }

    fn encoder(&self, root: VarBuilder) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(AlbertModel::new(self, root)?))
    }

    /// Each group's layers are loaded (and packed) once, then listed at every step that runs
    /// them.
    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        let e = self.embedding_size;
        let embeddings = fast::Embeddings::load(
            &root.pp("embeddings"),
            EmbeddingSpec {
                vocab_size: self.vocab_size,
                width: e,
                max_positions: self.max_position_embeddings,
                type_vocab_size: Some(self.type_vocab_size),
                segment_ids: true,
                position_ids: PositionIds::FromZero,
                fixed_positions: None,
                eps: self.layer_norm_eps,
                word_transform: None,
            },
        )?;
        let encoder = root.pp("encoder");
        let mapping = fast::dense_linear(
            e,
            self.hidden_size,
            encoder.pp("embedding_hidden_mapping_in"),
        )?;
        let shape = LayerShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            eps: self.layer_norm_eps,
            activation: self.hidden_act,
        };
        let groups = (0..self.num_hidden_groups)
            .map(|g| {
                let group = encoder.pp(format!("albert_layer_groups.{g}"));
                let n = self.inner_group_num;
                fast::Layer::load_stack(&group, "albert_layers", n, &LAYER_NAMES, shape, precision)
            })
            .collect::<Result<Vec<_>>>()?;
        let steps = self.num_hidden_layers;
        let layers: Vec<std::sync::Arc<dyn FastLayer>> = (0..steps)
            .flat_map(|step| groups[group_of(step, steps, groups.len())].iter().cloned())
            .collect();
        let embeddings = embeddings.with_projection(mapping);
        Ok(Some(FastEncoder::new(embeddings, layers, self.hidden_size)))
    }
}

/// Where an ALBERT layer (`albert_layer_groups.G.albert_layers.I`) keeps its weights.
const LAYER_NAMES: LayerNames = LayerNames {
    query: "attention.query",
    key: "attention.key",
    value: "attention.value",
    attention_output: "attention.dense",
    attention_norm: "attention.LayerNorm",
    intermediate: "ffn",
    output: "ffn_output",
    output_norm: "full_layer_layer_norm",
};

#[cfg(test)]
mod tests {
    use super::group_of;

    #[test]
    fn groups_are_scheduled_as_transformers() {
        let schedule: Vec<usize> = (0..12).map(|i| group_of(i, 12, 3)).collect();
        assert_eq!(schedule, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(
            (0..2).map(|i| group_of(i, 2, 1)).collect::<Vec<_>>(),
            [0, 0]
        );
        assert_eq!(
            (0..3).map(|i| group_of(i, 3, 3)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Floating-point rounding as in Python: 9 / (18 / 14) = 6.999... → group 6, not 7.
        assert_eq!(group_of(9, 18, 14), 6);
        assert_eq!(group_of(33, 44, 20), 14);
    }
}
