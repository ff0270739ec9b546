//! BERT (`model_type: bert`) with a question-answering head, as transformers'
//! `BertForQuestionAnswering`.

use candle_core::{Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use super::{encoder_root, ModelInput, QaHead, QaLogits, QaModel};
use crate::nn::{self, Activation, LayerNorm, Linear};

/// config.json of a BERT checkpoint.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Dropout on hidden states (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
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
    /// Std of the normal initialisation of new weights (the QA head of a base model).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
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
fn default_init_range() -> f64 {
    0.02
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            word_embeddings: candle_nn::embedding(
                cfg.vocab_size,
                cfg.hidden_size,
                vb.pp("word_embeddings"),
            )?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                cfg.type_vocab_size,
                cfg.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
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

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    act: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl Layer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let attn = vb.pp("attention");
        let selfa = attn.pp("self");
        Ok(Self {
            query: Linear::new(h, h, selfa.pp("query"))?,
            key: Linear::new(h, h, selfa.pp("key"))?,
            value: Linear::new(h, h, selfa.pp("value"))?,
            attention_output: Linear::new(h, h, attn.pp("output").pp("dense"))?,
            attention_norm: LayerNorm::new(
                h,
                cfg.layer_norm_eps,
                attn.pp("output").pp("LayerNorm"),
            )?,
            intermediate: Linear::new(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: Linear::new(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            output_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
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
        let ctx = nn::merge_heads(&ctx)?;
        let attn = nn::dropout(
            &self.attention_output.forward(&ctx)?,
            self.hidden_dropout,
            train,
        )?;
        let x = self.attention_norm.forward(&(attn + x)?, train)?;
        let inter = self.act.forward(&self.intermediate.forward(&x)?)?;
        let out = nn::dropout(&self.output.forward(&inter)?, self.hidden_dropout, train)?;
        self.output_norm.forward(&(out + x)?, train)
    }
}

/// The BERT encoder (`BertModel` without pooler).
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Loads `embeddings.*` and `encoder.layer.N.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if let Some(kind) = cfg.position_embedding_type.as_deref() {
            if kind != "absolute" {
                candle_core::bail!(
                    "position_embedding_type `{kind}` is not supported (only `absolute`)"
                );
            }
        }
        let embeddings = Embeddings::new(cfg, vb.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }

    /// Final hidden states `[b, s, hidden]`.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let bias = nn::attention_bias(&input.attention_mask, candle_core::DType::F32)?;
        let mut x = self.embeddings.forward(input, train)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, train)?;
        }
        Ok(x)
    }
}

/// BERT with the span-prediction head (`BertForQuestionAnswering`).
pub struct BertForQuestionAnswering {
    bert: BertModel,
    head: QaHead,
}

impl BertForQuestionAnswering {
    /// Loads a checkpoint whose encoder sits under `bert.` (or at the root for base models)
    /// and whose head is `qa_outputs.*`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let root = encoder_root(&vb, "bert", "embeddings.word_embeddings.weight");
        Ok(Self {
            bert: BertModel::new(cfg, root)?,
            head: QaHead::new(cfg.hidden_size, vb)?,
        })
    }
}

impl QaModel for BertForQuestionAnswering {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<QaLogits> {
        let hidden = self.bert.forward(input, train)?;
        self.head.forward(&hidden)
    }
}
