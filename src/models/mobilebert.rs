//! MobileBERT (`model_type: mobilebert`) with a question-answering head, as transformers'
//! `MobileBertForQuestionAnswering`.
//!
//! MobileBERT keeps a wide residual stream (`hidden_size`) between layers but computes inside
//! each layer at `true_hidden_size`: bottleneck projections narrow the stream on the way in and
//! widen it on the way out. Each layer also stacks `num_feedforward_networks` feed-forward
//! blocks, and normalisation is usually the cheap element-wise `NoNorm`.

use candle_core::{Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use super::{check_heads, parse_as, Architecture, Encoder, ModelConfig, ModelInput, ModelType};
use crate::engine::Precision;
use crate::error::Error;
use crate::fast::{
    self, BottleneckNames, BottleneckShape, EmbeddingSpec, FastEncoder, PositionIds,
};
use crate::nn::{self, Activation, LayerNorm, Linear};

/// MobileBERT in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[ModelType {
    name: "mobilebert",
    title: "MobileBERT",
    qa_class: "MobileBertForQuestionAnswering",
    tokenizer: "WordPiece",
    example: "csarron/mobilebert-uncased-squad-v2",
}],
    weight_prefix: "mobilebert",
    sentencepiece: None,
    padding_tables: &["word_embeddings"],
    config_class: "https://huggingface.co/docs/transformers/model_doc/mobilebert#transformers.MobileBertConfig",
    parse: parse_as::<Config>,
};

/// config.json of a MobileBERT checkpoint (defaults as transformers' `MobileBertConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the word embeddings.
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
    /// Width of the residual stream between layers.
    pub hidden_size: usize,
    /// Width of the bottleneck projections: the width inside each layer with `use_bottleneck`.
    #[serde(default = "default_inner_size")]
    pub intra_bottleneck_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layers.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Dropout on hidden states (training only).
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_attention_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Number of position embeddings.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (where transformers passes it; see `Norm`).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Embed each token with its neighbours (`[next, token, previous]`) before projecting.
    #[serde(default = "default_true")]
    pub trigram_input: bool,
    /// Narrow the residual stream to `intra_bottleneck_size` inside each layer.
    #[serde(default = "default_true")]
    pub use_bottleneck: bool,
    /// Feed the bottlenecked input to query, key and value alike.
    #[serde(default)]
    pub use_bottleneck_attention: bool,
    /// Query and key share one bottleneck of their own.
    #[serde(default = "default_true")]
    pub key_query_shared_bottleneck: bool,
    /// Feed-forward blocks per layer (the last one is `intermediate`/`output`).
    #[serde(default = "default_ffns")]
    pub num_feedforward_networks: usize,
    /// `no_norm` (x·weight + bias) or `layer_norm`.
    #[serde(default = "default_normalization")]
    pub normalization_type: NormalizationType,
}

impl Config {
    /// Width inside a layer (attention and feed-forward). Like transformers, this is derived
    /// (`intra_bottleneck_size` with bottlenecks, else `hidden_size`); config.json's
    /// `true_hidden_size` is not read.
    pub fn true_hidden_size(&self) -> usize {
        if self.use_bottleneck {
            self.intra_bottleneck_size
        } else {
            self.hidden_size
        }
    }
}

/// config.json's `normalization_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizationType {
    /// Element-wise affine map without normalisation.
    NoNorm,
    /// Standard layer normalisation.
    LayerNorm,
}

fn default_embedding_size() -> usize {
    128
}
fn default_inner_size() -> usize {
    128
}
fn default_act() -> Activation {
    Activation::Relu
}
fn default_attention_dropout() -> f64 {
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
fn default_true() -> bool {
    true
}
fn default_ffns() -> usize {
    4
}
fn default_normalization() -> NormalizationType {
    NormalizationType::NoNorm
}

/// PyTorch's `nn.LayerNorm` default epsilon, which transformers' MobileBERT uses wherever it
/// builds a LayerNorm without passing `layer_norm_eps` (embeddings and layer output).
const TORCH_DEFAULT_EPS: f64 = 1e-5;

/// MobileBERT's normalisation: `NoNorm` (`x * weight + bias`) or a LayerNorm.
enum Norm {
    NoNorm { weight: Tensor, bias: Tensor },
    LayerNorm(LayerNorm),
}

impl Norm {
    fn new(kind: NormalizationType, size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormalizationType::NoNorm => Norm::NoNorm {
                weight: vb.get(size, "weight")?,
                bias: vb.get(size, "bias")?,
            },
            NormalizationType::LayerNorm => Norm::LayerNorm(LayerNorm::new(size, eps, vb)?),
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::NoNorm { weight, bias } => x.broadcast_mul(weight)?.broadcast_add(bias),
            Norm::LayerNorm(ln) => ln.forward(x, train),
        }
    }
}

/// A linear map followed by a normalisation of `dense(x) + residual` (or of `dense(x)` alone).
struct DenseNorm {
    dense: Linear,
    norm: Norm,
}

impl DenseNorm {
    fn new(cfg: &Config, in_dim: usize, out_dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(in_dim, out_dim, vb.pp("dense"))?,
            norm: Norm::new(cfg.normalization_type, out_dim, eps, vb.pp("LayerNorm"))?,
        })
    }

    /// `norm(dropout(dense(x)) + residual)`.
    fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        dropout: f64,
        train: bool,
    ) -> Result<Tensor> {
        let y = nn::dropout(&self.dense.forward(x)?, dropout, train)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        self.norm.forward(&y, train)
    }
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    /// Present with trigram input or when `embedding_size != hidden_size`.
    embedding_transformation: Option<Linear>,
    norm: Norm,
    trigram_input: bool,
    dropout: f64,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let transformation = if cfg.trigram_input || cfg.embedding_size != cfg.hidden_size {
            let width = cfg.embedding_size * if cfg.trigram_input { 3 } else { 1 };
            Some(Linear::new(
                width,
                cfg.hidden_size,
                vb.pp("embedding_transformation"),
            )?)
        } else {
            None
        };
        Ok(Self {
            word_embeddings: candle_nn::embedding(
                cfg.vocab_size,
                cfg.embedding_size,
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
            embedding_transformation: transformation,
            norm: Norm::new(
                cfg.normalization_type,
                cfg.hidden_size,
                TORCH_DEFAULT_EPS,
                vb.pp("LayerNorm"),
            )?,
            trigram_input: cfg.trigram_input,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `[next token, token, previous token]` embeddings side by side, zeros past either end.
    fn trigram(words: &Tensor) -> Result<Tensor> {
        let (b, s, e) = words.dims3()?;
        let zero = Tensor::zeros((b, 1, e), words.dtype(), words.device())?;
        let (next, previous) = if s > 1 {
            (
                Tensor::cat(&[&words.narrow(1, 1, s - 1)?, &zero], 1)?,
                Tensor::cat(&[&zero, &words.narrow(1, 0, s - 1)?], 1)?,
            )
        } else {
            (zero.clone(), zero)
        };
        Tensor::cat(&[&next, words, &previous], 2)
    }

    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let (_, seq_len) = input.input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq_len as u32, input.input_ids.device())?;
        let mut x = self.word_embeddings.forward(&input.input_ids)?;
        if self.trigram_input {
            x = Self::trigram(&x)?;
        }
        if let Some(t) = &self.embedding_transformation {
            x = t.forward(&x)?;
        }
        let types = self.token_type_embeddings.forward(&input.token_type_ids)?;
        let pos = self.position_embeddings.forward(&positions)?;
        let x = (x + types)?.broadcast_add(&pos)?;
        let x = self.norm.forward(&x, train)?;
        nn::dropout(&x, self.dropout, train)
    }
}

/// The input bottlenecks: `input` narrows the residual stream, `attention` (with
/// `key_query_shared_bottleneck`) narrows it separately for query and key.
struct Bottleneck {
    input: DenseNorm,
    attention: Option<DenseNorm>,
    use_bottleneck_attention: bool,
}

/// What the attention block reads: query, key and value inputs and the residual.
struct AttentionInputs {
    query: Tensor,
    key: Tensor,
    value: Tensor,
    residual: Tensor,
}

impl Bottleneck {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, b, eps) = (
            cfg.hidden_size,
            cfg.intra_bottleneck_size,
            cfg.layer_norm_eps,
        );
        let attention = if cfg.key_query_shared_bottleneck {
            Some(DenseNorm::new(cfg, h, b, eps, vb.pp("attention"))?)
        } else {
            None
        };
        Ok(Self {
            input: DenseNorm::new(cfg, h, b, eps, vb.pp("input"))?,
            attention,
            use_bottleneck_attention: cfg.use_bottleneck_attention,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<AttentionInputs> {
        let narrowed = self.input.forward(x, None, 0.0, train)?;
        if self.use_bottleneck_attention {
            return Ok(AttentionInputs {
                query: narrowed.clone(),
                key: narrowed.clone(),
                value: narrowed.clone(),
                residual: narrowed,
            });
        }
        let shared = match &self.attention {
            Some(attention) => attention.forward(x, None, 0.0, train)?,
            None => x.clone(),
        };
        Ok(AttentionInputs {
            query: shared.clone(),
            key: shared,
            value: x.clone(),
            residual: narrowed,
        })
    }
}

/// An extra feed-forward block (`ffn.N`): `norm(output(act(intermediate(x))) + x)`.
struct FeedForward {
    intermediate: Linear,
    output: DenseNorm,
    act: Activation,
}

impl FeedForward {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            intermediate: Linear::new(
                cfg.true_hidden_size(),
                cfg.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: DenseNorm::new(
                cfg,
                cfg.intermediate_size,
                cfg.true_hidden_size(),
                cfg.layer_norm_eps,
                vb.pp("output"),
            )?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let inter = self.act.forward(&self.intermediate.forward(x)?)?;
        self.output.forward(&inter, Some(x), 0.0, train)
    }
}

struct Layer {
    bottleneck: Option<Bottleneck>,
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: DenseNorm,
    ffn: Vec<FeedForward>,
    intermediate: Linear,
    output: DenseNorm,
    /// `output.bottleneck`: widens back to `hidden_size` (with `use_bottleneck`).
    output_bottleneck: Option<DenseNorm>,
    heads: usize,
    act: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl Layer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, t) = (cfg.hidden_size, cfg.true_hidden_size());
        let attn = vb.pp("attention");
        let selfa = attn.pp("self");
        let value_in = if cfg.use_bottleneck_attention { t } else { h };
        let (bottleneck, output_bottleneck) = if cfg.use_bottleneck {
            (
                Some(Bottleneck::new(cfg, vb.pp("bottleneck"))?),
                Some(DenseNorm::new(
                    cfg,
                    t,
                    h,
                    cfg.layer_norm_eps,
                    vb.pp("output").pp("bottleneck"),
                )?),
            )
        } else {
            (None, None)
        };
        let ffn = (0..cfg.num_feedforward_networks.saturating_sub(1))
            .map(|i| FeedForward::new(cfg, vb.pp(format!("ffn.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            bottleneck,
            query: Linear::new(t, t, selfa.pp("query"))?,
            key: Linear::new(t, t, selfa.pp("key"))?,
            value: Linear::new(value_in, t, selfa.pp("value"))?,
            attention_output: DenseNorm::new(cfg, t, t, cfg.layer_norm_eps, attn.pp("output"))?,
            ffn,
            intermediate: Linear::new(t, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: DenseNorm::new(
                cfg,
                cfg.intermediate_size,
                t,
                TORCH_DEFAULT_EPS,
                vb.pp("output"),
            )?,
            output_bottleneck,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
            hidden_dropout: cfg.hidden_dropout_prob,
            attention_dropout: cfg.attention_probs_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
        let inputs = match &self.bottleneck {
            Some(b) => b.forward(x, train)?,
            None => AttentionInputs {
                query: x.clone(),
                key: x.clone(),
                value: x.clone(),
                residual: x.clone(),
            },
        };
        let q = nn::split_heads(&self.query.forward(&inputs.query)?, self.heads)?;
        let k = nn::split_heads(&self.key.forward(&inputs.key)?, self.heads)?;
        let v = nn::split_heads(&self.value.forward(&inputs.value)?, self.heads)?;
        let ctx = nn::attention(&q, &k, &v, bias, self.attention_dropout, train)?;
        let ctx = nn::merge_heads(&ctx)?;
        // With bottlenecks, transformers drops out only after the output bottleneck.
        let inner_dropout = if self.output_bottleneck.is_some() {
            0.0
        } else {
            self.hidden_dropout
        };
        let mut attended =
            self.attention_output
                .forward(&ctx, Some(&inputs.residual), inner_dropout, train)?;
        for ffn in &self.ffn {
            attended = ffn.forward(&attended, train)?;
        }
        let inter = self.act.forward(&self.intermediate.forward(&attended)?)?;
        let out = self
            .output
            .forward(&inter, Some(&attended), inner_dropout, train)?;
        match &self.output_bottleneck {
            Some(widen) => widen.forward(&out, Some(x), self.hidden_dropout, train),
            None => Ok(out),
        }
    }
}

/// The MobileBERT encoder (`MobileBertModel` without pooler).
pub struct MobileBertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl MobileBertModel {
    /// Loads `embeddings.*` and `encoder.layer.N.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embeddings = Embeddings::new(cfg, vb.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }
}

impl Encoder for MobileBertModel {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let mut x = self.embeddings.forward(input, train)?;
        let bias = nn::attention_bias(&input.attention_mask, x.dtype())?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, train)?;
        }
        Ok(x)
    }
}

impl ModelConfig for Config {
    fn validate(&self) -> crate::error::Result<()> {
        if self.num_feedforward_networks == 0 {
            return Err(Error::InvalidInput(
                "config.json: num_feedforward_networks must be at least 1".into(),
            ));
        }
        check_heads(self.true_hidden_size(), self.num_attention_heads)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_input_len(&self) -> usize {
        self.max_position_embeddings
    }

    fn encoder(&self, root: VarBuilder) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(MobileBertModel::new(self, root)?))
    }

    /// The fast engine runs the published layout: bottlenecks, value from the layer's input.
    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        if !self.use_bottleneck || self.use_bottleneck_attention {
            return Ok(None);
        }
        let embeddings = self.fast_embeddings(&root.pp("embeddings"))?;
        let shape = BottleneckShape {
            hidden: self.hidden_size,
            inner: self.true_hidden_size(),
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            feedforward: self.num_feedforward_networks,
            activation: self.hidden_act,
            shared_query_key: self.key_query_shared_bottleneck,
        };
        let norm = |eps: f64| move |size: usize, vb: VarBuilder| self.fast_norm(size, eps, vb);
        let (inner, output) = (norm(self.layer_norm_eps), norm(TORCH_DEFAULT_EPS));
        let names = BottleneckNames {
            inner_norm: &inner,
            output_norm: &output,
        };
        let layers = (0..self.num_hidden_layers)
            .map(|i| -> Result<std::sync::Arc<dyn fast::FastLayer>> {
                let vb = root.pp(format!("encoder.layer.{i}"));
                Ok(std::sync::Arc::new(fast::BottleneckLayer::load(
                    &vb, shape, &names, precision,
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(FastEncoder::new(embeddings, layers, self.hidden_size)))
    }
}

impl Config {
    /// A normalisation of this config's kind (`NoNorm`, or a LayerNorm of `eps`).
    fn fast_norm(&self, size: usize, eps: f64, vb: VarBuilder) -> Result<fast::Norm> {
        match self.normalization_type {
            NormalizationType::NoNorm => fast::Norm::no_norm(size, vb),
            NormalizationType::LayerNorm => fast::Norm::layer_norm(size, eps, vb),
        }
    }

    /// The embeddings on the fast engine: narrow words, with their neighbours when
    /// `trigram_input`, mapped to the hidden width, then positions and types added.
    fn fast_embeddings(&self, vb: &VarBuilder) -> Result<fast::Embeddings> {
        let (e, h) = (self.embedding_size, self.hidden_size);
        let word_transform = if self.trigram_input || e != h {
            let width = e * if self.trigram_input { 3 } else { 1 };
            Some(fast::WordTransform {
                word_width: e,
                trigram: self.trigram_input,
                transformation: fast::dense_linear(width, h, vb.pp("embedding_transformation"))?,
            })
        } else {
            None
        };
        let embeddings = fast::Embeddings::load(
            vb,
            EmbeddingSpec {
                vocab_size: self.vocab_size,
                width: h,
                max_positions: self.max_position_embeddings,
                type_vocab_size: Some(self.type_vocab_size),
                segment_ids: true,
                position_ids: PositionIds::FromZero,
                fixed_positions: None,
                eps: TORCH_DEFAULT_EPS,
                word_transform,
            },
        )?;
        Ok(embeddings.with_norm(self.fast_norm(h, TORCH_DEFAULT_EPS, vb.pp("LayerNorm"))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn trigram_puts_next_token_then_token_then_previous() {
        // Two sequences of three one-dimensional embeddings.
        let words = Tensor::new(&[[[1f32], [2.], [3.]], [[4.], [5.], [6.]]], &Device::Cpu).unwrap();
        let got: Vec<Vec<Vec<f32>>> = Embeddings::trigram(&words).unwrap().to_vec3().unwrap();
        let want = vec![
            vec![vec![2., 1., 0.], vec![3., 2., 1.], vec![0., 3., 2.]],
            vec![vec![5., 4., 0.], vec![6., 5., 4.], vec![0., 6., 5.]],
        ];
        assert_eq!(got, want);
        let single = Tensor::new(&[[[7f32, 8.]]], &Device::Cpu).unwrap();
        let got: Vec<Vec<Vec<f32>>> = Embeddings::trigram(&single).unwrap().to_vec3().unwrap();
        assert_eq!(got, vec![vec![vec![0., 0., 7., 8., 0., 0.]]]);
    }

    #[test]
    fn true_hidden_size_is_derived_like_transformers() {
        let mut config: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 64,
            "intra_bottleneck_size": 16, "true_hidden_size": 999
        }))
        .unwrap();
        assert_eq!(config.true_hidden_size(), 16);
        config.use_bottleneck = false;
        assert_eq!(config.true_hidden_size(), 32);
    }
}
