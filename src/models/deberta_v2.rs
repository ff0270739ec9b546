//! DeBERTa-v2 / DeBERTa-v3 (`model_type: deberta-v2`) with a question-answering head, as
//! transformers' `DebertaV2ForQuestionAnswering`.
//!
//! Differences from BERT: no absolute positions by default (`position_biased_input: false`);
//! instead every layer adds disentangled attention terms between content and log-bucketed
//! relative positions (content→position "c2p", position→content "p2c"), computed from one shared
//! table `encoder.rel_embeddings`. The first layer's output can be mixed with a convolution over
//! the embeddings (`conv_kernel_size`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Deserializer};

use super::{parse_as, Architecture, Encoder, ModelConfig, ModelInput, ModelType};
use crate::engine::Precision;
use crate::error::Error;
use crate::fast::{
    self, EmbeddingSpec, FastEncoder, FastLayer, LayerNames, LayerShape, PositionIds,
};
use crate::fast::{RelativeAttention, RelativeSpec};
use crate::nn::{self, Activation, LayerNorm, Linear};
use crate::sentencepiece::Converter;

/// DeBERTa-v2 and -v3 in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &[ModelType {
        name: "deberta-v2",
        title: "DeBERTa-v2 / v3",
        qa_class: "DebertaV2ForQuestionAnswering",
        tokenizer: "SentencePiece unigram",
        example: "deepset/deberta-v3-base-squad2",
    }],
    weight_prefix: "deberta",
    sentencepiece: Some(Converter::DebertaV2),
    padding_tables: &["word_embeddings"],
    config_class:
        "https://huggingface.co/docs/transformers/model_doc/deberta-v2#transformers.DebertaV2Config",
    parse: parse_as::<Config>,
};

/// config.json of a DeBERTa-v2/v3 checkpoint.
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
    /// Width of one head (default `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub attention_head_size: Option<usize>,
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
    /// Number of absolute position embeddings (also the relative span when
    /// `max_relative_positions < 1`).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Number of token types; 0 means the model has no token type embeddings.
    #[serde(default)]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of the word embeddings when it differs from `hidden_size` (then `embed_proj` maps it).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// Whether absolute position embeddings are added to the word embeddings.
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    /// Whether the attention has the disentangled relative-position terms.
    #[serde(default)]
    pub relative_attention: bool,
    /// Largest relative distance; values below 1 mean `max_position_embeddings`.
    #[serde(default = "default_minus_one")]
    pub max_relative_positions: i64,
    /// Number of log buckets for relative positions; values below 1 disable bucketing.
    #[serde(default = "default_minus_one")]
    pub position_buckets: i64,
    /// Relative attention terms: `c2p` and/or `p2c` (a list or a `|`-separated string).
    #[serde(default, deserialize_with = "deserialize_att_types")]
    pub pos_att_type: Vec<String>,
    /// Whether the relative-position projections reuse the content query/key projections.
    #[serde(default)]
    pub share_att_key: bool,
    /// Normalisation of the relative embeddings, e.g. `layer_norm` (`|`-separated).
    #[serde(default = "default_norm_rel_ebd")]
    pub norm_rel_ebd: String,
    /// Kernel size of the convolution after the first layer; 0 or absent means none.
    #[serde(default)]
    pub conv_kernel_size: usize,
    /// Groups of that convolution.
    #[serde(default = "default_conv_groups")]
    pub conv_groups: usize,
    /// Activation after that convolution.
    #[serde(default = "default_conv_act")]
    pub conv_act: String,
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
fn default_eps() -> f64 {
    1e-7
}
fn default_true() -> bool {
    true
}
fn default_minus_one() -> i64 {
    -1
}
fn default_norm_rel_ebd() -> String {
    "none".into()
}
fn default_conv_groups() -> usize {
    1
}
fn default_conv_act() -> String {
    "tanh".into()
}

/// Reads `pos_att_type` as transformers does: a list, a `"p2c|c2p"` string, or null.
fn deserialize_att_types<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Types {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Option::<Types>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(Types::List(list)) => list,
        Some(Types::Joined(s)) => s
            .to_lowercase()
            .split('|')
            .map(|x| x.trim().into())
            .collect(),
    })
}

impl Config {
    fn head_size(&self) -> usize {
        self.attention_head_size
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn all_head_size(&self) -> usize {
        self.num_attention_heads * self.head_size()
    }

    fn has_att_type(&self, kind: &str) -> bool {
        self.pos_att_type.iter().any(|t| t == kind)
    }

    /// `max_relative_positions`, with its fallback to `max_position_embeddings`.
    fn max_relative_positions(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        }
    }

    /// Half the number of rows of `rel_embeddings` (the attention's `pos_ebd_size`).
    fn att_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative_positions() as usize
        }
    }
}

/// The bucketed relative position of a query at distance `rel = q - k` from its key
/// (`make_log_bucket_position`). Distances within ±`bucket_size / 2` keep their value, larger ones
/// are mapped logarithmically so that `max_position - 1` lands on the last bucket. The arithmetic
/// is done in f32, as PyTorch does on the float tensors, so that bucket boundaries agree.
pub fn log_bucket_position(rel: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    if rel.abs() <= mid {
        return rel;
    }
    let abs_pos = rel.abs() as f32;
    let ratio = ((max_position - 1) as f64 / mid as f64) as f32;
    let log_pos = ((abs_pos / mid as f32).ln() / ratio.ln() * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * rel.signum()
}

/// Relative positions `[q][k]` of a sequence of `len` tokens (`build_relative_position`).
fn relative_positions(len: usize, bucket_size: i64, max_position: i64) -> Vec<i64> {
    // Only 2·len − 1 distinct distances: bucket each once.
    let offset = len as i64 - 1;
    let by_distance: Vec<i64> = (-offset..=offset)
        .map(|d| {
            if bucket_size > 0 && max_position > 0 {
                log_bucket_position(d, bucket_size, max_position)
            } else {
                d
            }
        })
        .collect();
    let mut out = Vec::with_capacity(len * len);
    for q in 0..len as i64 {
        for k in 0..len as i64 {
            out.push(by_distance[(q - k + offset) as usize]);
        }
    }
    out
}

/// Flat indices into `[rows, 2·span]` score matrices that pick, for every (query, key) pair,
/// the score of their relative position: `c2p` reads row `q` at `rel[q][k] + span`, `p2c` reads
/// row `k` at `−rel[k][q] + span` (the transposed gather of transformers), both clamped.
struct RelIndex {
    c2p: Tensor,
    p2c: Tensor,
}

impl RelIndex {
    fn new(
        len: usize,
        span: usize,
        bucket_size: i64,
        max_position: i64,
        dev: &Device,
    ) -> Result<Self> {
        let rel = relative_positions(len, bucket_size, max_position);
        let width = 2 * span as i64;
        let clamp = |x: i64| x.clamp(0, width - 1);
        let mut c2p = Vec::with_capacity(len * len);
        let mut p2c = Vec::with_capacity(len * len);
        for q in 0..len {
            for k in 0..len {
                c2p.push((q as i64 * width + clamp(rel[q * len + k] + span as i64)) as u32);
                p2c.push((k as i64 * width + clamp(-rel[k * len + q] + span as i64)) as u32);
            }
        }
        Ok(Self {
            c2p: Tensor::from_vec(c2p, len * len, dev)?,
            p2c: Tensor::from_vec(p2c, len * len, dev)?,
        })
    }
}

/// Picks `scores[b, h, row, col]` (`[b, h, len, 2·span]`) at the flat `index` → `[b, h, len, len]`.
fn gather_relative(scores: &Tensor, index: &Tensor) -> Result<Tensor> {
    let (b, h, len, width) = scores.dims4()?;
    scores
        .reshape((b, h, len * width))?
        .index_select(index, 2)?
        .reshape((b, h, len, len))
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Option<Embedding>,
    token_type_embeddings: Option<Embedding>,
    embed_proj: Option<Linear>,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let size = cfg.embedding_size.unwrap_or(cfg.hidden_size);
        let position_embeddings = if cfg.position_biased_input {
            Some(candle_nn::embedding(
                cfg.max_position_embeddings,
                size,
                vb.pp("position_embeddings"),
            )?)
        } else {
            None
        };
        let token_type_embeddings = if cfg.type_vocab_size > 0 {
            Some(candle_nn::embedding(
                cfg.type_vocab_size,
                size,
                vb.pp("token_type_embeddings"),
            )?)
        } else {
            None
        };
        let embed_proj = if size != cfg.hidden_size {
            Some(Linear::new_no_bias(
                size,
                cfg.hidden_size,
                vb.pp("embed_proj"),
            )?)
        } else {
            None
        };
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, size, vb.pp("word_embeddings"))?,
            position_embeddings,
            token_type_embeddings,
            embed_proj,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `mask` is the attention mask as f32 `[b, s, 1]`: padding embeddings are zeroed.
    fn forward(&self, input: &ModelInput, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (_, seq_len) = input.input_ids.dims2()?;
        let mut x = self.word_embeddings.forward(&input.input_ids)?;
        if let Some(pos) = &self.position_embeddings {
            let positions = Tensor::arange(0u32, seq_len as u32, input.input_ids.device())?;
            x = x.broadcast_add(&pos.forward(&positions)?)?;
        }
        if let Some(types) = &self.token_type_embeddings {
            x = (x + types.forward(&input.token_type_ids)?)?;
        }
        if let Some(proj) = &self.embed_proj {
            x = proj.forward(&x)?;
        }
        let x = self.layer_norm.forward(&x, train)?;
        let x = x.broadcast_mul(mask)?;
        nn::dropout(&x, self.dropout, train)
    }
}

/// Disentangled self-attention (`DisentangledSelfAttention`).
struct SelfAttention {
    query_proj: Linear,
    key_proj: Linear,
    value_proj: Linear,
    /// Separate position projections when `share_att_key` is off.
    pos_key_proj: Option<Linear>,
    pos_query_proj: Option<Linear>,
    heads: usize,
    c2p: bool,
    p2c: bool,
    /// `sqrt(head_size · (1 + number of relative terms))`.
    scale: f64,
    span: usize,
    attention_dropout: f64,
    pos_dropout: f64,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let all = cfg.all_head_size();
        let (c2p, p2c) = (cfg.has_att_type("c2p"), cfg.has_att_type("p2c"));
        let separate = cfg.relative_attention && !cfg.share_att_key;
        let pos_key_proj = if separate && c2p {
            Some(Linear::new(h, all, vb.pp("pos_key_proj"))?)
        } else {
            None
        };
        let pos_query_proj = if separate && p2c {
            Some(Linear::new(h, all, vb.pp("pos_query_proj"))?)
        } else {
            None
        };
        let factor = 1 + c2p as usize + p2c as usize;
        // transformers computes sqrt(head_size * factor) as a float32 tensor.
        let scale = ((cfg.head_size() * factor) as f32).sqrt() as f64;
        Ok(Self {
            query_proj: Linear::new(h, all, vb.pp("query_proj"))?,
            key_proj: Linear::new(h, all, vb.pp("key_proj"))?,
            value_proj: Linear::new(h, all, vb.pp("value_proj"))?,
            pos_key_proj,
            pos_query_proj,
            heads: cfg.num_attention_heads,
            c2p,
            p2c,
            scale,
            span: cfg.att_span(),
            attention_dropout: cfg.attention_probs_dropout_prob,
            pos_dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        rel: Option<(&Tensor, &RelIndex)>,
        train: bool,
    ) -> Result<Tensor> {
        let q = nn::split_heads(&self.query_proj.forward(x)?, self.heads)?;
        let k = nn::split_heads(&self.key_proj.forward(x)?, self.heads)?;
        let v = nn::split_heads(&self.value_proj.forward(x)?, self.heads)?;
        let mut scores = q.matmul(&(k.t()? / self.scale)?)?;
        // `rel` is present exactly when the model has relative attention.
        if let Some((rel_embeddings, index)) = rel {
            if let Some(bias) = self.relative_bias(&q, &k, rel_embeddings, index, train)? {
                scores = (scores + bias)?;
            }
        }
        let scores = scores.broadcast_add(bias)?;
        let probs = nn::softmax_last_dim(&scores, train)?;
        let probs = nn::dropout(&probs, self.attention_dropout, train)?;
        nn::merge_heads(&probs.matmul(&v)?)
    }

    /// The sum of the c2p and p2c terms (`disentangled_attention_bias`), `[b, heads, s, s]`,
    /// already scaled; `None` when `pos_att_type` names neither.
    fn relative_bias(
        &self,
        q: &Tensor,
        k: &Tensor,
        rel_embeddings: &Tensor,
        index: &RelIndex,
        train: bool,
    ) -> Result<Option<Tensor>> {
        let rel_embeddings = nn::dropout(rel_embeddings, self.pos_dropout, train)?
            .narrow(0, 0, 2 * self.span)?
            .unsqueeze(0)?;
        // [1, heads, 2·span, head_size]
        let project = |proj: &Linear| nn::split_heads(&proj.forward(&rel_embeddings)?, self.heads);
        let mut terms = Vec::with_capacity(2);
        if self.c2p {
            let pos_key = project(self.pos_key_proj.as_ref().unwrap_or(&self.key_proj))?;
            let full = q.broadcast_matmul(&pos_key.t()?)?;
            terms.push((gather_relative(&full, &index.c2p)? / self.scale)?);
        }
        if self.p2c {
            let pos_query = project(self.pos_query_proj.as_ref().unwrap_or(&self.query_proj))?;
            let full = k.broadcast_matmul(&pos_query.t()?)?;
            terms.push((gather_relative(&full, &index.p2c)? / self.scale)?);
        }
        let mut terms = terms.into_iter();
        terms.next().map_or(Ok(None), |first| {
            terms.try_fold(first, |acc, t| acc + t).map(Some)
        })
    }
}

struct Layer {
    attention: SelfAttention,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: Activation,
    hidden_dropout: f64,
}

impl Layer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let attn = vb.pp("attention");
        let all = cfg.all_head_size();
        Ok(Self {
            attention: SelfAttention::new(cfg, attn.pp("self"))?,
            attention_output: Linear::new(all, h, attn.pp("output").pp("dense"))?,
            attention_norm: LayerNorm::new(
                h,
                cfg.layer_norm_eps,
                attn.pp("output").pp("LayerNorm"),
            )?,
            intermediate: Linear::new(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: Linear::new(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            output_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        rel: Option<(&Tensor, &RelIndex)>,
        train: bool,
    ) -> Result<Tensor> {
        let ctx = self.attention.forward(x, bias, rel, train)?;
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

/// Activation of the convolution layer (`conv_act`, an `ACT2FN` name).
#[derive(Clone, Copy, Debug)]
enum ConvActivation {
    Tanh,
    Other(Activation),
}

impl ConvActivation {
    fn parse(name: &str) -> Result<Self> {
        if name == "tanh" {
            return Ok(Self::Tanh);
        }
        serde_json::from_value(serde_json::Value::String(name.into()))
            .map(Self::Other)
            .map_err(|_| {
                candle_core::Error::Msg(format!(
                    "conv_act `{name}` is not supported (use tanh, gelu, gelu_new or relu)"
                ))
            })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Tanh => x.tanh(),
            Self::Other(act) => act.forward(x),
        }
    }
}

/// Convolution over the embeddings, added to the first layer's output (`ConvLayer`).
struct ConvLayer {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    padding: usize,
    act: ConvActivation,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl ConvLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let k = cfg.conv_kernel_size;
        let groups = cfg.conv_groups.max(1);
        if h / groups * groups != h {
            candle_core::bail!("conv_groups {groups} does not divide hidden_size {h}");
        }
        let conv = vb.pp("conv");
        Ok(Self {
            weight: conv.get((h, h / groups, k), "weight")?,
            bias: conv.get(h, "bias")?,
            groups,
            padding: (k - 1) / 2,
            act: ConvActivation::parse(&cfg.conv_act)?,
            layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `embeddings` and `residual` are `[b, s, hidden]`, `mask` the f32 mask `[b, s, 1]`.
    fn forward(
        &self,
        embeddings: &Tensor,
        residual: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let out = embeddings
            .transpose(1, 2)?
            .contiguous()?
            .conv1d(&self.weight, self.padding, 1, 1, self.groups)?
            .broadcast_add(&self.bias.reshape((1, (), 1))?)?
            .transpose(1, 2)?;
        // Padding positions are zeroed before the activation.
        let out = out.broadcast_mul(mask)?;
        let out = self.act.forward(&nn::dropout(&out, self.dropout, train)?)?;
        let out = self
            .layer_norm
            .forward(&(residual + out)?.contiguous()?, train)?;
        out.broadcast_mul(mask)
    }
}

/// The DeBERTa-v2 encoder (`DebertaV2Model`).
pub struct DebertaV2Model {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    rel_embeddings: Option<Tensor>,
    rel_norm: Option<LayerNorm>,
    conv: Option<ConvLayer>,
    span: usize,
    position_buckets: i64,
    max_relative_positions: i64,
    /// The weights' floating-point type, which masks and biases take.
    dtype: DType,
}

impl DebertaV2Model {
    /// Loads `embeddings.*` and `encoder.*` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embeddings = Embeddings::new(cfg, vb.pp("embeddings"))?;
        let enc = vb.pp("encoder");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, enc.pp(format!("layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm_rel: Vec<String> = cfg
            .norm_rel_ebd
            .to_lowercase()
            .split('|')
            .map(|x| x.trim().to_string())
            .collect();
        let (rel_embeddings, rel_norm) = if cfg.relative_attention {
            let table = enc.get(
                (2 * cfg.att_span(), cfg.hidden_size),
                "rel_embeddings.weight",
            )?;
            let norm = if norm_rel.iter().any(|x| x == "layer_norm") {
                Some(LayerNorm::new(
                    cfg.hidden_size,
                    cfg.layer_norm_eps,
                    enc.pp("LayerNorm"),
                )?)
            } else {
                None
            };
            (Some(table), norm)
        } else {
            (None, None)
        };
        let conv = if cfg.conv_kernel_size > 0 {
            Some(ConvLayer::new(cfg, enc.pp("conv"))?)
        } else {
            None
        };
        Ok(Self {
            embeddings,
            layers,
            rel_embeddings,
            rel_norm,
            conv,
            span: cfg.att_span(),
            position_buckets: cfg.position_buckets,
            max_relative_positions: cfg.max_relative_positions(),
            dtype: vb.dtype(),
        })
    }
}

impl Encoder for DebertaV2Model {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let (b, s) = input.attention_mask.dims2()?;
        let dev = input.input_ids.device();
        let mask = input
            .attention_mask
            .to_dtype(self.dtype)?
            .reshape((b, s, 1))?;
        let bias = nn::attention_bias(&input.attention_mask, self.dtype)?;
        let embedded = self.embeddings.forward(input, &mask, train)?;
        let rel_embeddings = match (&self.rel_embeddings, &self.rel_norm) {
            (Some(table), Some(norm)) => Some(norm.forward(table, train)?),
            (table, _) => table.clone(),
        };
        let index = match rel_embeddings {
            Some(_) => Some(RelIndex::new(
                s,
                self.span,
                self.position_buckets,
                self.max_relative_positions,
                dev,
            )?),
            None => None,
        };
        let rel = rel_embeddings.as_ref().zip(index.as_ref());
        let mut x = embedded.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &bias, rel, train)?;
            if i == 0 {
                if let Some(conv) = &self.conv {
                    x = conv.forward(&embedded, &x, &mask, train)?;
                }
            }
        }
        Ok(x)
    }
}

impl ModelConfig for Config {
    fn validate(&self) -> crate::error::Result<()> {
        let heads = self.num_attention_heads;
        if heads == 0
            || (self.attention_head_size.is_none() && !self.hidden_size.is_multiple_of(heads))
        {
            return Err(Error::InvalidInput(format!(
                "config.json: hidden size {} is not a multiple of {heads} attention heads \
                 (and no attention_head_size is given)",
                self.hidden_size
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
        Ok(Box::new(DebertaV2Model::new(self, root)?))
    }

    /// DeBERTa-v3's layout (no convolution, embeddings as wide as the hidden states, heads
    /// that split the hidden size); other configs run on the reference model.
    fn fast_encoder(
        &self,
        root: &VarBuilder,
        precision: Precision,
    ) -> crate::error::Result<Option<FastEncoder>> {
        let h = self.hidden_size;
        let fits = self.conv_kernel_size == 0
            && self.embedding_size.is_none_or(|e| e == h)
            && self.all_head_size() == h;
        if !fits {
            return Ok(None);
        }
        let embeddings = fast::Embeddings::load(
            &root.pp("embeddings"),
            EmbeddingSpec {
                vocab_size: self.vocab_size,
                width: h,
                max_positions: if self.position_biased_input {
                    self.max_position_embeddings
                } else {
                    0
                },
                type_vocab_size: (self.type_vocab_size > 0).then_some(self.type_vocab_size),
                segment_ids: true,
                position_ids: PositionIds::FromZero,
                fixed_positions: None,
                eps: self.layer_norm_eps,
                word_transform: None,
            },
        )?;
        let shape = LayerShape {
            hidden: h,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            eps: self.layer_norm_eps,
            activation: self.hidden_act,
        };
        let encoder = root.pp("encoder");
        let rel_embeddings = self.normalised_rel_embeddings(&encoder)?;
        let layers = (0..self.num_hidden_layers)
            .map(|i| -> crate::error::Result<std::sync::Arc<dyn FastLayer>> {
                let vb = encoder.pp(format!("layer.{i}"));
                let mut layer = fast::Layer::load(&vb, &LAYER_NAMES, shape, precision)?;
                if let Some(rel) = &rel_embeddings {
                    let spec = self.relative_spec(rel, &vb.pp("attention.self"))?;
                    let d = self.head_size();
                    let heads = self.num_attention_heads;
                    layer = layer.with_relative(RelativeAttention::new(spec, heads, d));
                }
                Ok(std::sync::Arc::new(layer))
            })
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok(Some(
            FastEncoder::new(embeddings, layers, h).with_max_window(self.max_position_embeddings),
        ))
    }
}

/// Where a DeBERTa-v2 layer (`encoder.layer.N`) keeps its weights.
const LAYER_NAMES: LayerNames = LayerNames {
    query: "attention.self.query_proj",
    key: "attention.self.key_proj",
    value: "attention.self.value_proj",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

impl Config {
    /// The relative embeddings after their LayerNorm (`norm_rel_ebd`), `[2·span, hidden]`; `None`
    /// without relative attention. They do not depend on the input: computed once at load.
    fn normalised_rel_embeddings(&self, encoder: &VarBuilder) -> Result<Option<Tensor>> {
        if !self.relative_attention {
            return Ok(None);
        }
        let table = encoder.get(
            (2 * self.att_span(), self.hidden_size),
            "rel_embeddings.weight",
        )?;
        let layer_norm = self
            .norm_rel_ebd
            .to_lowercase()
            .split('|')
            .any(|x| x.trim() == "layer_norm");
        if !layer_norm {
            return Ok(Some(table));
        }
        let norm = LayerNorm::new(
            self.hidden_size,
            self.layer_norm_eps,
            encoder.pp("LayerNorm"),
        )?;
        Ok(Some(norm.forward(&table, false)?))
    }

    /// A layer's relative-position terms: the relative embeddings through its key and query
    /// projections (or its own `pos_*_proj` without `share_att_key`), and the bucketed row of
    /// every distance.
    fn relative_spec(&self, rel: &Tensor, attention: &VarBuilder) -> Result<RelativeSpec> {
        let (h, all) = (self.hidden_size, self.all_head_size());
        let (c2p, p2c) = (self.has_att_type("c2p"), self.has_att_type("p2c"));
        let project = |shared: &str, own: &str| -> Result<Vec<f32>> {
            let name = if self.share_att_key { shared } else { own };
            let proj = Linear::new(h, all, attention.pp(name))?;
            proj.forward(rel)?.flatten_all()?.to_vec1()
        };
        let rows = 2 * self.att_span();
        let offset = self.max_position_embeddings.saturating_sub(1);
        let (buckets, max_position) = (self.position_buckets, self.max_relative_positions());
        let index = (-(offset as i64)..=offset as i64)
            .map(|distance| {
                let bucket = if buckets > 0 && max_position > 0 {
                    log_bucket_position(distance, buckets, max_position)
                } else {
                    distance
                };
                (bucket + self.att_span() as i64).clamp(0, rows as i64 - 1) as u32
            })
            .collect();
        let factor = 1 + c2p as usize + p2c as usize;
        // transformers computes sqrt(head_size * factor) as a float32 tensor.
        let scale = 1.0 / ((self.head_size() * factor) as f32).sqrt();
        Ok(RelativeSpec {
            keys: c2p
                .then(|| project("key_proj", "pos_key_proj"))
                .transpose()?,
            queries: p2c
                .then(|| project("query_proj", "pos_query_proj"))
                .transpose()?,
            rows,
            index,
            offset,
            scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_match_transformers() {
        // Values of transformers' make_log_bucket_position(x, 256, 512).
        for (rel, want) in [
            (0, 0),
            (5, 5),
            (-128, -128),
            (128, 128),
            (129, 129),
            (200, 169),
            (-200, -169),
            (256, 192),
            (383, 229),
            (511, 255),
            (512, 256),
            (-1000, -317),
        ] {
            assert_eq!(log_bucket_position(rel, 256, 512), want, "rel {rel}");
        }
    }

    #[test]
    fn config_reads_joined_att_types_and_defaults() {
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16,
            "relative_attention": true, "pos_att_type": "P2C | c2p",
            "max_relative_positions": -1, "max_position_embeddings": 64
        }))
        .expect("config");
        assert_eq!(cfg.pos_att_type, ["p2c", "c2p"]);
        assert_eq!(cfg.head_size(), 4);
        // No buckets: the span falls back to max_position_embeddings.
        assert_eq!(cfg.att_span(), 64);
        assert!(cfg.position_biased_input);
        assert_eq!(cfg.conv_kernel_size, 0);
        let none: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "pos_att_type": null,
            "position_buckets": 32
        }))
        .expect("config");
        assert!(none.pos_att_type.is_empty());
        assert_eq!(none.att_span(), 32);
    }

    #[test]
    fn relative_indices_pick_the_clamped_transposed_positions() -> Result<()> {
        // No bucketing, span 2: positions q − k clamp into [0, 3] after adding the span.
        let index = RelIndex::new(4, 2, -1, -1, &Device::Cpu)?;
        let c2p: Vec<u32> = index.c2p.to_vec1()?;
        let p2c: Vec<u32> = index.p2c.to_vec1()?;
        // q = 3, k = 0: rel 3 → clamp(5) = 3, row 3 → 3·4 + 3.
        assert_eq!(c2p[3 * 4], 15);
        // q = 0, k = 3: rel −3 → clamp(−1) = 0, row 0.
        assert_eq!(c2p[3], 0);
        // p2c for q = 0, k = 3 reads row k = 3 at −(3 − 0) + 2 → clamp(−1) = 0.
        assert_eq!(p2c[3], 12);
        // p2c for q = 3, k = 0 reads row 0 at −(0 − 3) + 2 = 5 → clamp 3.
        assert_eq!(p2c[3 * 4], 3);
        Ok(())
    }
}
