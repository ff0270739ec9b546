//! DistilBERT (`model_type: distilbert`) with a question-answering head, as transformers'
//! `DistilBertForQuestionAnswering`.
//!
//! Compared with BERT: no token types, attention and feed-forward named `q_lin`… / `ffn.lin1`…,
//! no dropout after the attention projection, and dropout (`qa_dropout`) before the QA head.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use super::{bert, check_heads, parse_as, Architecture, ModelConfig, ModelInput, ModelType};
use crate::engine::Precision;
use crate::fast::{self, EmbeddingSpec, FastEncoder, LayerNames, LayerShape, PositionIds};
use crate::nn::{self, Activation, LayerNorm, Linear};

/// DistilBERT in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[ModelType {
    name: "distilbert",
    title: "DistilBERT",
    qa_class: "DistilBertForQuestionAnswering",
    tokenizer: "WordPiece",
    example: "distilbert-base-cased-distilled-squad",
}],
    weight_prefix: "distilbert",
    sentencepiece: None,
    padding_tables: &["word_embeddings"],
    config_class: "https://huggingface.co/docs/transformers/model_doc/distilbert#transformers.DistilBertConfig",
    parse: parse_as::<Config>,
};

/// DistilBERT uses this epsilon in every LayerNorm (it is not in config.json).
const LAYER_NORM_EPS: f64 = 1e-12;

/// config.json of a DistilBERT checkpoint.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub dim: usize,
    /// Number of transformer layers.
    pub n_layers: usize,
    /// Attention heads per layer.
    pub n_heads: usize,
    /// Width of the feed-forward layer.
    pub hidden_dim: usize,
    /// Feed-forward activation.
    #[serde(default = "bert::default_act")]
    pub activation: Activation,
    /// Dropout on embeddings and feed-forward outputs (training only).
    #[serde(default = "bert::default_dropout")]
    pub dropout: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "bert::default_dropout")]
    pub attention_dropout: f64,
    /// Dropout on the final hidden states before the QA head (training only).
    #[serde(default = "bert::default_dropout")]
    pub qa_dropout: f64,
    /// Number of position embeddings.
    #[serde(default = "bert::default_positions")]
    pub max_position_embeddings: usize,
    /// Fixed sinusoidal position embeddings instead of learned ones.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// Id of the padding token, whose embedding row is not trained.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

/// The fixed table of `sinusoidal_pos_embds`: sin on even and cos on odd columns of
/// `pos / 10000^(2⌊j/2⌋/dim)`, computed in f64 as numpy does in transformers.
pub(crate) fn sinusoidal_table(positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let mut table = Vec::with_capacity(positions * dim);
    for pos in 0..positions {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dim as f64);
            table.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    Tensor::from_vec(table, (positions, dim), device)
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
    padding_idx: u32,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let positions = vb.pp("position_embeddings");
        // Sinusoidal tables are saved with the weights but may be left out; they are fixed.
        let position_embeddings =
            if cfg.sinusoidal_pos_embds && !positions.contains_tensor("weight") {
                let table = sinusoidal_table(cfg.max_position_embeddings, cfg.dim, vb.device())?;
                Embedding::new(table.to_dtype(vb.dtype())?, cfg.dim)
            } else {
                candle_nn::embedding(cfg.max_position_embeddings, cfg.dim, positions)?
            };
        Ok(Self {
            word_embeddings: candle_nn::embedding(
                cfg.vocab_size,
                cfg.dim,
                vb.pp("word_embeddings"),
            )?,
            position_embeddings,
            layer_norm: LayerNorm::new(cfg.dim, LAYER_NORM_EPS, vb.pp("LayerNorm"))?,
            dropout: cfg.dropout,
            padding_idx: cfg.pad_token_id.unwrap_or(0),
        })
    }

    fn forward(&self, input_ids: &Tensor, train: bool) -> Result<Tensor> {
        let (_, seq_len) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq_len as u32, input_ids.device())?;
        let words = nn::embed(
            &self.word_embeddings,
            input_ids,
            Some(self.padding_idx),
            train,
        )?;
        let pos = self.position_embeddings.forward(&positions)?;
        let x = self
            .layer_norm
            .forward(&words.broadcast_add(&pos)?, train)?;
        nn::dropout(&x, self.dropout, train)
    }
}

struct TransformerBlock {
    q_lin: Linear,
    k_lin: Linear,
    v_lin: Linear,
    out_lin: Linear,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_layer_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    dropout: f64,
    attention_dropout: f64,
}

impl TransformerBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        let attn = vb.pp("attention");
        let ffn = vb.pp("ffn");
        Ok(Self {
            q_lin: Linear::new(d, d, attn.pp("q_lin"))?,
            k_lin: Linear::new(d, d, attn.pp("k_lin"))?,
            v_lin: Linear::new(d, d, attn.pp("v_lin"))?,
            out_lin: Linear::new(d, d, attn.pp("out_lin"))?,
            sa_layer_norm: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("sa_layer_norm"))?,
            lin1: Linear::new(d, cfg.hidden_dim, ffn.pp("lin1"))?,
            lin2: Linear::new(cfg.hidden_dim, d, ffn.pp("lin2"))?,
            output_layer_norm: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("output_layer_norm"))?,
            heads: cfg.n_heads,
            activation: cfg.activation,
            dropout: cfg.dropout,
            attention_dropout: cfg.attention_dropout,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
        let q = nn::split_heads(&self.q_lin.forward(x)?, self.heads)?;
        let k = nn::split_heads(&self.k_lin.forward(x)?, self.heads)?;
        let v = nn::split_heads(&self.v_lin.forward(x)?, self.heads)?;
        let ctx = nn::attention(&q, &k, &v, bias, self.attention_dropout, train)?;
        let sa = self.out_lin.forward(&nn::merge_heads(&ctx)?)?;
        let x = self.sa_layer_norm.forward(&(sa + x)?, train)?;
        let ffn = self.activation.forward(&self.lin1.forward(&x)?)?;
        let ffn = nn::dropout(&self.lin2.forward(&ffn)?, self.dropout, train)?;
        self.output_layer_norm.forward(&(ffn + x)?, train)
    }
}

/// The DistilBERT encoder (`DistilBertModel`).
pub struct DistilBertModel {
    embeddings: Embeddings,
    layers: Vec<TransformerBlock>,
}

impl DistilBertModel {
    /// Loads `embeddings.*` and `transformer.layer.N.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embeddings = Embeddings::new(cfg, vb.pp("embeddings"))?;
        let layers = (0..cfg.n_layers)
            .map(|i| TransformerBlock::new(cfg, vb.pp(format!("transformer.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }
}

impl super::Encoder for DistilBertModel {
    /// Final hidden states `[b, s, dim]`. Token types are ignored: DistilBERT has none.
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let mut x = self.embeddings.forward(&input.input_ids, train)?;
        let bias = nn::attention_bias(&input.attention_mask, x.dtype())?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, train)?;
        }
        Ok(x)
    }
}

/// Where DistilBERT layers (`transformer.layer.N`) keep their weights.
const LAYER_NAMES: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

impl ModelConfig for Config {
    fn validate(&self) -> crate::error::Result<()> {
        check_heads(self.dim, self.n_heads)
    }

    fn hidden_size(&self) -> usize {
        self.dim
    }

    fn max_input_len(&self) -> usize {
        self.max_position_embeddings
    }

    fn head_dropout(&self) -> f64 {
        self.qa_dropout
    }

    fn encoder(&self, root: VarBuilder) -> Result<Box<dyn super::Encoder>> {
        Ok(Box::new(DistilBertModel::new(self, root)?))
    }

    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        let d = self.dim;
        let fixed_positions = self
            .sinusoidal_pos_embds
            .then(|| sinusoidal_table(self.max_position_embeddings, d, root.device()))
            .transpose()?;
        let embeddings = fast::Embeddings::load(
            &root.pp("embeddings"),
            EmbeddingSpec {
                vocab_size: self.vocab_size,
                width: d,
                max_positions: self.max_position_embeddings,
                type_vocab_size: None,
                segment_ids: false,
                position_ids: PositionIds::FromZero,
                fixed_positions,
                eps: LAYER_NORM_EPS,
                word_transform: None,
            },
        )?;
        let shape = LayerShape {
            hidden: d,
            heads: self.n_heads,
            intermediate: self.hidden_dim,
            eps: LAYER_NORM_EPS,
            activation: self.activation,
        };
        let layers = fast::Layer::load_stack(
            root,
            "transformer.layer",
            self.n_layers,
            &LAYER_NAMES,
            shape,
            precision,
        )?;
        Ok(Some(FastEncoder::new(embeddings, layers, d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_table_alternates_sin_and_cos() -> Result<()> {
        let table: Vec<Vec<f32>> = sinusoidal_table(3, 4, &Device::Cpu)?.to_vec2()?;
        // Position 0: sin 0 = 0 on even columns, cos 0 = 1 on odd ones.
        assert_eq!(table[0], vec![0.0, 1.0, 0.0, 1.0]);
        // Position 2, columns 2/3: angle 2 / 10000^(2/4) = 0.02.
        let expected = [2f32.sin(), 2f32.cos(), 0.02f32.sin(), 0.02f32.cos()];
        for (got, want) in table[2].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        Ok(())
    }
}
