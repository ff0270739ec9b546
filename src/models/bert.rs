//! BERT (`model_type: bert`) with a question-answering head, as transformers'
//! `BertForQuestionAnswering`.

use candle_core::{Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use super::{check_absolute_positions, check_heads, parse_as, Architecture, ModelType};
use super::{Encoder as EncoderModel, ModelConfig, ModelInput};
use crate::engine::Precision;
use crate::fast::{self, EmbeddingSpec, FastEncoder, LayerNames, LayerShape, PositionIds};
use crate::nn::{self, Activation, LayerNorm, Linear};

/// BERT in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[ModelType {
        name: "bert",
        title: "BERT",
        qa_class: "BertForQuestionAnswering",
        tokenizer: "WordPiece",
        example: "bert-large-uncased-whole-word-masking-finetuned-squad",
    }],
    weight_prefix: "bert",
    sentencepiece: None,
    padding_tables: &["word_embeddings"],
    config_class: "https://huggingface.co/docs/transformers/model_doc/bert#transformers.BertConfig",
    parse: parse_as::<Config>,
};

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
    /// Id of the padding token, whose embedding row is not trained (BERT's default: 0).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

pub(crate) fn default_act() -> Activation {
    Activation::Gelu
}
pub(crate) fn default_dropout() -> f64 {
    0.1
}
pub(crate) fn default_positions() -> usize {
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

/// Word, position and token-type embeddings of width `size`, summed and normalised.
/// ELECTRA uses a width below the hidden size; RoBERTa passes its own position ids.
pub(crate) struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
    /// Row of `word_embeddings` (and for RoBERTa of `position_embeddings`) left untrained.
    padding_idx: u32,
    pad_positions: bool,
}

impl Embeddings {
    /// Loads `word_embeddings`, `position_embeddings`, `token_type_embeddings` and `LayerNorm`
    /// under `vb`, all of width `size`. `padding_idx` is the padding token's id; with
    /// `pad_positions` it is also the position of padding (RoBERTa).
    pub(crate) fn new(
        cfg: &Config,
        size: usize,
        padding_idx: u32,
        pad_positions: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, size, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                cfg.type_vocab_size,
                size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::new(size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
            padding_idx,
            pad_positions,
        })
    }

    /// Embeds `input_ids`/`token_type_ids` (`[b, s]`) at `position_ids` (`[s]` or `[b, s]`).
    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        position_ids: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let words = nn::embed(
            &self.word_embeddings,
            input_ids,
            Some(self.padding_idx),
            train,
        )?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let pos_pad = self.pad_positions.then_some(self.padding_idx);
        let pos = nn::embed(&self.position_embeddings, position_ids, pos_pad, train)?;
        let x = (words + types)?.broadcast_add(&pos)?;
        let x = self.layer_norm.forward(&x, train)?;
        nn::dropout(&x, self.dropout, train)
    }

    /// Embeds `input` at absolute positions 0, 1, … (BERT, ELECTRA).
    pub(crate) fn forward_input(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let (_, seq_len) = input.input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq_len as u32, input.input_ids.device())?;
        self.forward(&input.input_ids, &input.token_type_ids, &positions, train)
    }
}

pub(crate) struct Layer {
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
    /// Loads `attention.*`, `intermediate.*` and `output.*` under `vb`.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
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

    /// One layer over `x` (`[b, s, hidden]`) with the additive attention `bias`.
    pub(crate) fn forward(&self, x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
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

/// The stack of transformer layers (`encoder.layer.N`), shared by BERT, RoBERTa and ELECTRA.
pub(crate) struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    /// Loads `layer.0` … `layer.{num_hidden_layers - 1}` under `vb`.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Runs every layer over `x` (`[b, s, hidden]`); `attention_mask` is 1 for real tokens.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let bias = nn::attention_bias(attention_mask, x.dtype())?;
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &bias, train)?;
        }
        Ok(x)
    }
}

/// The BERT encoder (`BertModel` without pooler).
pub struct BertModel {
    embeddings: Embeddings,
    encoder: Encoder,
}

impl BertModel {
    /// Loads `embeddings.*` and `encoder.layer.N.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            embeddings: Embeddings::new(
                cfg,
                cfg.hidden_size,
                cfg.pad_token_id.unwrap_or(0),
                false,
                vb.pp("embeddings"),
            )?,
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
        })
    }
}

impl EncoderModel for BertModel {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let x = self.embeddings.forward_input(input, train)?;
        self.encoder.forward(&x, &input.attention_mask, train)
    }
}

/// Where BERT, RoBERTa and ELECTRA layers (`encoder.layer.N`) keep their weights.
const LAYER_NAMES: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

impl Config {
    /// The validation every BERT-style config shares.
    pub(crate) fn check(&self) -> crate::error::Result<()> {
        check_absolute_positions(self.position_embedding_type.as_deref())?;
        check_heads(self.hidden_size, self.num_attention_heads)
    }

    /// The fast engine's embeddings of a BERT-style checkpoint (`embeddings.*` under `root`),
    /// `width` wide and numbered by `position_ids`; `segment_ids` says whether token types are
    /// model inputs.
    pub(crate) fn fast_embeddings(
        &self,
        root: &VarBuilder,
        width: usize,
        position_ids: PositionIds,
        segment_ids: bool,
    ) -> Result<fast::Embeddings> {
        fast::Embeddings::load(
            &root.pp("embeddings"),
            EmbeddingSpec {
                vocab_size: self.vocab_size,
                width,
                max_positions: self.max_position_embeddings,
                type_vocab_size: Some(self.type_vocab_size),
                segment_ids,
                position_ids,
                fixed_positions: None,
                eps: self.layer_norm_eps,
                word_transform: None,
            },
        )
    }

    /// The fast encoder's layers (`encoder.layer.N` under `root`) over `embeddings`.
    pub(crate) fn fast_stack(
        &self,
        root: &VarBuilder,
        embeddings: fast::Embeddings,
        precision: Precision,
    ) -> crate::error::Result<FastEncoder> {
        let shape = LayerShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            eps: self.layer_norm_eps,
            activation: self.hidden_act,
        };
        let layers = fast::Layer::load_stack(
            root,
            "encoder.layer",
            self.num_hidden_layers,
            &LAYER_NAMES,
            shape,
            precision,
        )?;
        Ok(FastEncoder::new(embeddings, layers, self.hidden_size))
    }
}

impl ModelConfig for Config {
    fn validate(&self) -> crate::error::Result<()> {
        self.check()
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_input_len(&self) -> usize {
        self.max_position_embeddings
    }

    fn encoder(&self, root: VarBuilder) -> Result<Box<dyn EncoderModel>> {
        Ok(Box::new(BertModel::new(self, root)?))
    }

    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        let embeddings =
            self.fast_embeddings(root, self.hidden_size, PositionIds::FromZero, true)?;
        self.fast_stack(root, embeddings, precision).map(Some)
    }
}
