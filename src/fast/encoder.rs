//! The fast inference forward of post-LayerNorm BERT-style encoders (BERT, RoBERTa,
//! XLM-RoBERTa, ELECTRA, DistilBERT) with their QA head.
//!
//! It computes what the candle models in [`crate::models`] compute, arranged for speed:
//! - windows are packed end to end without padding: the linear layers run once over all
//!   tokens of a batch, attention runs per window, so no work is spent on padding;
//! - query, key and value are one fused `[3·hidden, hidden]` product;
//! - attention runs per window, six query rows at a time through scores, softmax and values
//!   ([`super::attention`], on AVX2 CPUs); elsewhere it reads heads in place through strided
//!   views and runs heads in parallel;
//! - biases are fused into the products, activations and residual + LayerNorm are single
//!   vectorised passes.

use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::attention;
use super::kernels::{add_layer_norm, matmul, softmax_rows, Act, MatMut, MatRef};
use super::linear::{DenseLinear, Linear, Precision};
use crate::error::{Error, Result};
use crate::models::{bert, distilbert, electra, encoder_root, parse_config, roberta};
use crate::nn::Activation;

/// The tokens of one window, unpadded.
#[derive(Clone, Copy, Debug)]
pub struct Tokens<'a> {
    /// Token ids.
    pub input_ids: &'a [u32],
    /// Segment ids (ignored by models without token types).
    pub token_type_ids: &'a [u32],
}

/// Start and end logits of one window, one value per token.
pub type Logits = (Vec<f32>, Vec<f32>);

/// A LayerNorm's parameters.
#[derive(Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let ln = candle_nn::layer_norm(size, eps, vb)?;
        let beta = match ln.bias() {
            Some(b) => b.to_vec1()?,
            None => candle_core::bail!("layer norm without bias"),
        };
        Ok(Self {
            gamma: ln.weight().to_vec1()?,
            beta,
            eps: eps as f32,
        })
    }

    /// `x ← LayerNorm(x + residual)`.
    fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        add_layer_norm(x, residual, &self.gamma, &self.beta, self.eps);
    }
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<DenseLinear> {
    let (weight, bias) = linear_parts(in_dim, out_dim, vb)?;
    Ok(DenseLinear::new(weight, bias))
}

/// A linear layer's row-major `[out, in]` weight and `[out]` bias, before any packing.
fn linear_parts(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        vb.get((out_dim, in_dim), "weight")?
            .flatten_all()?
            .to_vec1()?,
        vb.get(out_dim, "bias")?.to_vec1()?,
    ))
}

/// An encoder layer's linear layer, in `precision`.
fn layer_linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
    precision: Precision,
) -> candle_core::Result<Linear> {
    let (weight, bias) = linear_parts(in_dim, out_dim, vb)?;
    Ok(Linear::new(weight, bias, precision))
}

/// Query, key and value stacked into one `[3·hidden, hidden]` layer, in `precision`.
fn fused_qkv(
    hidden: usize,
    vbs: [VarBuilder; 3],
    precision: Precision,
) -> candle_core::Result<Linear> {
    let mut weight = Vec::with_capacity(3 * hidden * hidden);
    let mut bias = Vec::with_capacity(3 * hidden);
    for vb in vbs {
        let (w, b) = linear_parts(hidden, hidden, vb)?;
        weight.extend_from_slice(&w);
        bias.extend_from_slice(&b);
    }
    Ok(Linear::new(weight, bias, precision))
}

/// How position ids are assigned.
#[derive(Clone, Copy, Debug)]
enum Positions {
    /// 0, 1, 2, … (BERT, ELECTRA, DistilBERT).
    FromZero,
    /// RoBERTa's `create_position_ids_from_input_ids`: padding_idx + running count of
    /// non-padding tokens, and padding_idx on padding tokens.
    AfterPadding(u32),
}

#[derive(Debug)]
struct Embeddings {
    width: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Option<Vec<f32>>,
    /// Whether the tokenizer's segment ids select the token-type row; RoBERTa does not take
    /// them as input, so every token gets type 0.
    segment_ids: bool,
    norm: Norm,
    positions: Positions,
    /// ELECTRA's projection from the embedding width to the hidden width.
    project: Option<DenseLinear>,
}

impl Embeddings {
    fn vocab_size(&self) -> usize {
        self.word.len() / self.width
    }

    /// Embeds every window into consecutive rows of the returned `[tokens, hidden]` matrix.
    fn forward(&self, windows: &[Tokens], total: usize, out: &mut Vec<f32>) -> Result<()> {
        let e = self.width;
        let mut x = std::mem::take(out);
        x.clear();
        x.resize(total * e, 0.0);
        let mut row = 0;
        for w in windows {
            let mut seen = 0u32;
            for (i, &id) in w.input_ids.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab_size() {
                    return Err(Error::InvalidInput(format!(
                        "token id {id} is outside the vocabulary of {} entries",
                        self.vocab_size()
                    )));
                }
                let pos = match self.positions {
                    Positions::FromZero => i,
                    Positions::AfterPadding(pad) if id as u32 == pad => pad as usize,
                    Positions::AfterPadding(pad) => {
                        seen += 1;
                        (pad + seen) as usize
                    }
                };
                if (pos + 1) * e > self.position.len() {
                    return Err(Error::InvalidInput(format!(
                        "a window of {} tokens is longer than the model's {} positions",
                        w.input_ids.len(),
                        self.position.len() / e
                    )));
                }
                let out = &mut x[row * e..(row + 1) * e];
                out.copy_from_slice(&self.word[id * e..(id + 1) * e]);
                let p = &self.position[pos * e..(pos + 1) * e];
                out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
                if let Some(types) = &self.token_type {
                    let t = match self.segment_ids {
                        true => w.token_type_ids.get(i).copied().unwrap_or(0) as usize,
                        false => 0,
                    };
                    if (t + 1) * e > types.len() {
                        return Err(Error::InvalidInput(format!(
                            "token type {t} is outside the model's {} types",
                            types.len() / e
                        )));
                    }
                    let tt = &types[t * e..(t + 1) * e];
                    out.iter_mut().zip(tt).for_each(|(o, v)| *o += v);
                }
                row += 1;
            }
        }
        self.norm.apply(&mut x, None);
        match &self.project {
            Some(project) => {
                out.resize(total * project.out_features(), 0.0);
                project.forward(&x, total, out);
            }
            None => *out = x,
        }
        Ok(())
    }
}

/// One transformer layer: self-attention, then the feed-forward block, each closed by
/// residual + LayerNorm.
#[derive(Debug)]
struct Layer {
    qkv: Linear,
    attention_output: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
}

/// Scratch buffers reused by every layer of a forward pass, and kept between passes: fresh
/// multi-megabyte buffers come from the OS as pages that it must zero on first touch.
#[derive(Debug, Default)]
struct Scratch {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    intermediate: Vec<f32>,
}

/// A BERT-style encoder with its QA head, for inference on CPU.
#[derive(Debug)]
pub struct FastQaModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    act: Act,
    /// `qa_outputs`: row 0 is the start vector S, row 1 the end vector E.
    qa_weight: Vec<f32>,
    qa_bias: [f32; 2],
    /// Buffers of finished passes, for the next ones (one per concurrent caller).
    scratch: std::sync::Mutex<Vec<Scratch>>,
}

fn act(activation: Activation) -> Act {
    match activation {
        Activation::Gelu => Act::Gelu,
        Activation::GeluNew => Act::GeluTanh,
        Activation::Relu => Act::Relu,
    }
}

impl FastQaModel {
    /// Builds the fast engine for the checkpoint when its architecture is one it covers
    /// (`bert`, `roberta`, `xlm-roberta`, `electra`, `distilbert` with absolute positions);
    /// `Ok(None)` otherwise, so that the caller can use the reference models.
    /// `precision` chooses the arithmetic of the encoder's linear layers.
    pub fn load(
        config: &serde_json::Value,
        vb: &VarBuilder,
        precision: Precision,
    ) -> Result<Option<Self>> {
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let absolute = |cfg: &bert::Config| {
            matches!(
                cfg.position_embedding_type.as_deref(),
                None | Some("absolute")
            )
        };
        let model = match model_type {
            "bert" => {
                let cfg: bert::Config = parse_config(config)?;
                if !absolute(&cfg) {
                    return Ok(None);
                }
                let root = encoder_root(vb, "bert", "embeddings.word_embeddings.weight");
                let positions = Positions::FromZero;
                let hidden = cfg.hidden_size;
                Self::load_bert_like(&cfg, hidden, positions, None, root, vb, precision)?
            }
            "roberta" | "xlm-roberta" => {
                let cfg: roberta::Config = parse_config(config)?;
                if !absolute(&cfg.bert) {
                    return Ok(None);
                }
                let root = encoder_root(vb, "roberta", "embeddings.word_embeddings.weight");
                let positions = Positions::AfterPadding(cfg.pad_token_id());
                let hidden = cfg.bert.hidden_size;
                Self::load_bert_like(&cfg.bert, hidden, positions, None, root, vb, precision)?
            }
            "electra" => {
                let cfg: electra::Config = parse_config(config)?;
                if !absolute(&cfg.bert) {
                    return Ok(None);
                }
                let root = encoder_root(vb, "electra", "embeddings.word_embeddings.weight");
                let hidden = cfg.bert.hidden_size;
                let project = (cfg.embedding_size != hidden)
                    .then(|| linear(cfg.embedding_size, hidden, root.pp("embeddings_project")))
                    .transpose()?;
                let e = cfg.embedding_size;
                let positions = Positions::FromZero;
                Self::load_bert_like(&cfg.bert, e, positions, project, root, vb, precision)?
            }
            "distilbert" => {
                let cfg: distilbert::Config = parse_config(config)?;
                Self::load_distilbert(&cfg, vb, precision)?
            }
            _ => return Ok(None),
        };
        Ok(Some(model))
    }

    fn load_bert_like(
        cfg: &bert::Config,
        embedding_size: usize,
        positions: Positions,
        project: Option<DenseLinear>,
        root: VarBuilder,
        vb: &VarBuilder,
        precision: Precision,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let emb = root.pp("embeddings");
        let table = |rows: usize, name: &str| -> candle_core::Result<Vec<f32>> {
            emb.get((rows, embedding_size), &format!("{name}.weight"))?
                .flatten_all()?
                .to_vec1()
        };
        let embeddings = Embeddings {
            width: embedding_size,
            word: table(cfg.vocab_size, "word_embeddings")?,
            position: table(cfg.max_position_embeddings, "position_embeddings")?,
            token_type: Some(table(cfg.type_vocab_size, "token_type_embeddings")?),
            segment_ids: matches!(positions, Positions::FromZero),
            norm: Norm::load(embedding_size, eps, emb.pp("LayerNorm"))?,
            positions,
            project,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| -> candle_core::Result<Layer> {
                let vb = root.pp(format!("encoder.layer.{i}"));
                let attn = vb.pp("attention");
                let selfa = attn.pp("self");
                Ok(Layer {
                    qkv: fused_qkv(
                        h,
                        [selfa.pp("query"), selfa.pp("key"), selfa.pp("value")],
                        precision,
                    )?,
                    attention_output: layer_linear(h, h, attn.pp("output").pp("dense"), precision)?,
                    attention_norm: Norm::load(h, eps, attn.pp("output").pp("LayerNorm"))?,
                    intermediate: layer_linear(
                        h,
                        cfg.intermediate_size,
                        vb.pp("intermediate.dense"),
                        precision,
                    )?,
                    output: layer_linear(
                        cfg.intermediate_size,
                        h,
                        vb.pp("output.dense"),
                        precision,
                    )?,
                    output_norm: Norm::load(h, eps, vb.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Self::with_head(
            embeddings,
            layers,
            h,
            cfg.num_attention_heads,
            act(cfg.hidden_act),
            vb,
        )
    }

    fn load_distilbert(
        cfg: &distilbert::Config,
        vb: &VarBuilder,
        precision: Precision,
    ) -> Result<Self> {
        // DistilBERT's LayerNorm epsilon is fixed in transformers, not read from config.json.
        const EPS: f64 = 1e-12;
        let d = cfg.dim;
        let root = encoder_root(vb, "distilbert", "embeddings.word_embeddings.weight");
        let emb = root.pp("embeddings");
        let positions = emb.pp("position_embeddings");
        let position = if cfg.sinusoidal_pos_embds && !positions.contains_tensor("weight") {
            distilbert::sinusoidal_table(cfg.max_position_embeddings, d, vb.device())?
        } else {
            positions.get((cfg.max_position_embeddings, d), "weight")?
        };
        let embeddings = Embeddings {
            width: d,
            word: emb
                .get((cfg.vocab_size, d), "word_embeddings.weight")?
                .flatten_all()?
                .to_vec1()?,
            position: position.flatten_all()?.to_vec1()?,
            token_type: None,
            segment_ids: false,
            norm: Norm::load(d, EPS, emb.pp("LayerNorm"))?,
            positions: Positions::FromZero,
            project: None,
        };
        let layers = (0..cfg.n_layers)
            .map(|i| -> candle_core::Result<Layer> {
                let vb = root.pp(format!("transformer.layer.{i}"));
                let attn = vb.pp("attention");
                Ok(Layer {
                    qkv: fused_qkv(
                        d,
                        [attn.pp("q_lin"), attn.pp("k_lin"), attn.pp("v_lin")],
                        precision,
                    )?,
                    attention_output: layer_linear(d, d, attn.pp("out_lin"), precision)?,
                    attention_norm: Norm::load(d, EPS, vb.pp("sa_layer_norm"))?,
                    intermediate: layer_linear(d, cfg.hidden_dim, vb.pp("ffn.lin1"), precision)?,
                    output: layer_linear(cfg.hidden_dim, d, vb.pp("ffn.lin2"), precision)?,
                    output_norm: Norm::load(d, EPS, vb.pp("output_layer_norm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Self::with_head(embeddings, layers, d, cfg.n_heads, act(cfg.activation), vb)
    }

    fn with_head(
        embeddings: Embeddings,
        layers: Vec<Layer>,
        hidden: usize,
        heads: usize,
        act: Act,
        vb: &VarBuilder,
    ) -> Result<Self> {
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(Error::InvalidInput(format!(
                "config.json: hidden size {hidden} is not a multiple of {heads} attention heads"
            )));
        }
        let (qa_weight, qa_bias) = linear_parts(hidden, 2, vb.pp("qa_outputs"))?;
        Ok(Self {
            embeddings,
            layers,
            hidden,
            heads,
            act,
            qa_weight,
            qa_bias: [qa_bias[0], qa_bias[1]],
            scratch: Default::default(),
        })
    }

    /// Start and end logits of every window.
    pub fn forward(&self, windows: &[Tokens]) -> Result<Vec<Logits>> {
        self.forward_keeping(windows, None)
    }

    /// [`FastQaModel::forward`] for answering questions: `masked[w]` flags the tokens of window
    /// `w` that cannot start or end an answer (the question and special tokens: the windows'
    /// `p_mask`), whose logits decoding replaces before using them. The last layer computes
    /// only the other tokens, and the logits of the flagged ones are NaN.
    pub fn forward_unmasked(&self, windows: &[Tokens], masked: &[&[bool]]) -> Result<Vec<Logits>> {
        if masked.len() != windows.len()
            || windows
                .iter()
                .zip(masked)
                .any(|(w, m)| m.len() != w.input_ids.len())
        {
            return Err(Error::InvalidInput(
                "give one mask flag per token of each window".into(),
            ));
        }
        let keep: Vec<usize> = masked
            .iter()
            .flat_map(|m| m.iter())
            .enumerate()
            .filter(|(_, &m)| !m)
            .map(|(row, _)| row)
            .collect();
        self.forward_keeping(windows, Some(&keep))
    }

    /// The forward pass; with `keep` (ascending rows of the packed windows), the last layer
    /// runs only on those rows and the other rows' logits are NaN.
    fn forward_keeping(&self, windows: &[Tokens], keep: Option<&[usize]>) -> Result<Vec<Logits>> {
        let total: usize = windows.iter().map(|w| w.input_ids.len()).sum();
        let mut spans = Vec::with_capacity(windows.len());
        let mut start = 0;
        for w in windows {
            spans.push((start, w.input_ids.len()));
            start += w.input_ids.len();
        }
        let inter = self
            .layers
            .first()
            .map_or(0, |l| l.intermediate.out_features());
        let h = self.hidden;
        let mut scratch = self.take_scratch();
        let mut x = std::mem::take(&mut scratch.hidden);
        self.embeddings.forward(windows, total, &mut x)?;
        for (buffer, len) in [
            (&mut scratch.qkv, total * 3 * h),
            (&mut scratch.context, total * h),
            (&mut scratch.projected, total * h),
            (&mut scratch.intermediate, total * inter),
        ] {
            // Every buffer is written before it is read: growing one need not copy its old
            // contents (a realloc would).
            if len > buffer.capacity() {
                *buffer = Vec::new();
            }
            buffer.resize(len, 0.0);
        }
        let layers = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let keep = keep.filter(|_| i + 1 == layers);
            self.layer_forward(layer, &mut x, &spans, &mut scratch, keep);
        }
        // Row of `x` holding each token, if it was computed.
        let mut kept = keep.map(|k| k.iter().peekable());
        let mut next_row = 0;
        let mut row_of = |token: usize| match &mut kept {
            None => Some(token),
            Some(rows) => rows.next_if_eq(&&token).map(|_| {
                next_row += 1;
                next_row - 1
            }),
        };
        let (s, e) = self.qa_weight.split_at(h);
        let logits = spans
            .iter()
            .map(|&(start, len)| {
                (start..start + len)
                    .map(|token| match row_of(token) {
                        Some(r) => {
                            let row = &x[r * h..(r + 1) * h];
                            let dot =
                                |v: &[f32]| row.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
                            (dot(s) + self.qa_bias[0], dot(e) + self.qa_bias[1])
                        }
                        None => (f32::NAN, f32::NAN),
                    })
                    .unzip()
            })
            .collect();
        scratch.hidden = x;
        self.return_scratch(scratch);
        Ok(logits)
    }

    fn take_scratch(&self) -> Scratch {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn return_scratch(&self, scratch: Scratch) {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(scratch);
    }

    /// One layer over the `x.len() / hidden` rows of `x`; with `keep`, only those rows (ascending)
    /// go on past attention, and `x` is left holding them alone, in order.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &mut Vec<f32>,
        spans: &[(usize, usize)],
        scratch: &mut Scratch,
        keep: Option<&[usize]>,
    ) {
        let h = self.hidden;
        let mut total = x.len() / h;
        layer.qkv.forward(x, total, &mut scratch.qkv);
        let d = self.hidden / self.heads;
        if attention::available(d) {
            attention::attention(
                &scratch.qkv,
                spans,
                self.hidden,
                self.heads,
                &mut scratch.context,
            );
        } else {
            scratch.heads.resize(total * self.hidden, 0.0);
            self.attention(
                &scratch.qkv,
                spans,
                &mut scratch.heads,
                &mut scratch.context,
            );
        }
        if let Some(rows) = keep {
            // Every row's keys and values were needed; from here on rows are independent, so
            // the kept ones move to the front (rows ascend, so each moves down or stays).
            for (to, &from) in rows.iter().enumerate() {
                x.copy_within(from * h..(from + 1) * h, to * h);
                scratch
                    .context
                    .copy_within(from * h..(from + 1) * h, to * h);
            }
            total = rows.len();
            x.truncate(total * h);
        }
        layer
            .attention_output
            .forward(&scratch.context, total, &mut scratch.projected);
        layer.attention_norm.apply(x, Some(&scratch.projected));
        let inter = &mut scratch.intermediate;
        layer
            .intermediate
            .forward_activated(x, total, Some(self.act), inter);
        layer.output.forward(inter, total, &mut scratch.projected);
        layer.output_norm.apply(x, Some(&scratch.projected));
    }

    /// Multi-head self-attention of every window over the fused `[tokens, 3·hidden]`
    /// projections; writes the merged heads to `context` (`[tokens, hidden]`).
    fn attention(
        &self,
        qkv: &[f32],
        spans: &[(usize, usize)],
        per_head: &mut [f32],
        context: &mut [f32],
    ) {
        let h = self.hidden;
        let d = h / self.heads;
        let total = context.len() / h;
        let scale = 1.0 / (d as f32).sqrt();
        // Heads run in parallel; each writes its own `[tokens, head_dim]` block.
        per_head
            .par_chunks_mut(total * d)
            .enumerate()
            .for_each(|(head, out)| {
                let mut scores = Vec::new();
                for &(start, len) in spans {
                    let at = |part: usize| {
                        MatRef::new(
                            &qkv[start * 3 * h + part * h + head * d..],
                            len,
                            d,
                            3 * h,
                            1,
                        )
                    };
                    scores.clear();
                    scores.resize(len * len, 0.0);
                    let s = MatMut::row_major(&mut scores, len, len);
                    matmul(s, at(0), at(1).t(), scale, false, false);
                    softmax_rows(&mut scores, len);
                    let o = MatMut::row_major(&mut out[start * d..(start + len) * d], len, d);
                    matmul(
                        o,
                        MatRef::row_major(&scores, len, len),
                        at(2),
                        1.0,
                        false,
                        false,
                    );
                }
            });
        let per_head: &[f32] = per_head;
        context
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(row, out)| {
                for (head, chunk) in out.chunks_exact_mut(d).enumerate() {
                    let from = head * total * d + row * d;
                    chunk.copy_from_slice(&per_head[from..from + d]);
                }
            });
    }
}
