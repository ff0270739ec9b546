//! Building blocks shared by the encoders.
//!
//! Every block takes a `train` flag. In training, differentiable kernels with hand-written
//! backward passes are used (see `train_ops`; candle's fused LayerNorm and softmax have no
//! backward pass), and dropout is active. In inference candle's fused kernels are used and
//! dropout is off. Linear layers and GELU take the same single ops (with their own backward
//! passes) in both modes on f32 CPU tensors. Off the CPU (a GPU), where those single ops have
//! no kernels, the same functions are composed from candle's differentiable ops (`composed`).

mod composed;
#[cfg(test)]
mod test_tensors;
mod train_ops;

pub use composed::with_composed_ops;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// A dense layer `y = x Wᵀ + b`, with the weight stored as PyTorch does (`[out, in]`).
#[derive(Clone, Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Loads `weight` and `bias` under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::linear(in_dim, out_dim, vb)?,
        })
    }

    /// Loads `weight` only (no bias).
    pub fn new_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::linear_no_bias(in_dim, out_dim, vb)?,
        })
    }

    /// The weight matrix, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// Applies the layer to `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(bias), true) = (self.inner.bias(), composed::single_ops_for(x)) {
            if let Some(y) = train_ops::linear(x, self.inner.weight(), bias)? {
                return Ok(y);
            }
        }
        self.inner.forward(x)
    }
}

/// Layer normalisation over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight`/`bias` (or the older `gamma`/`beta`) under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let ln = candle_nn::layer_norm(size, eps, vb)?;
        let bias = match ln.bias() {
            Some(b) => b.clone(),
            None => candle_core::bail!("layer norm without bias"),
        };
        Ok(Self {
            weight: ln.weight().clone(),
            bias,
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train && composed::single_ops_for(x) {
            train_ops::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else if train || !x.is_contiguous() {
            // Off the CPU in training, and for tensors the fused kernel does not take (in f32
            // the same arithmetic as before).
            composed::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// Softmax over the last dimension. In bf16/f16 its sums are taken in f32: composed in
/// training and on the CPU (whose fused kernel sums in the tensor's type); the GPU's fused
/// kernel sums in f32 itself.
pub fn softmax_last_dim(x: &Tensor, train: bool) -> Result<Tensor> {
    if x.dtype() != DType::F32 && (train || x.device().is_cpu()) {
        composed::softmax_last_dim(x)
    } else if train {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Dropout with probability `p`, active only in training.
///
/// Masks come from this thread's dropout generator (see [`seed_dropout`]) rather than candle's
/// unseedable one, so that a training run can be reproduced and resumed exactly.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !(train && p > 0.0) {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let mask = dropout_rng::mask(x.elem_count(), p);
    if composed::single_ops_for(x) {
        train_ops::dropout(x, mask)
    } else {
        composed::dropout(x, &mask)
    }
}

/// Seeds this thread's dropout generator (ChaCha8 keyed by `seed`). Training seeds it once at the
/// start; unseeded threads draw a seed from the OS on first use.
pub fn seed_dropout(seed: u64) {
    dropout_rng::restore(DropoutRngState { seed, word_pos: 0 });
}

/// Where this thread's dropout generator stands: its seed and how many 32-bit words it has used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropoutRngState {
    /// The seed given to [`seed_dropout`].
    pub seed: u64,
    /// Words of the ChaCha8 stream consumed so far (one per masked element).
    pub word_pos: u64,
}

/// The state of this thread's dropout generator, to save alongside a training checkpoint.
pub fn dropout_rng_state() -> DropoutRngState {
    dropout_rng::state()
}

/// Puts this thread's dropout generator back where [`dropout_rng_state`] found it.
pub fn restore_dropout_rng(state: DropoutRngState) {
    dropout_rng::restore(state);
}

mod dropout_rng {
    use std::cell::Cell;

    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rayon::prelude::*;

    use super::DropoutRngState;

    /// Elements per independently positioned chunk, so that masks are generated in parallel
    /// yet identical for any number of threads.
    const CHUNK: usize = 1 << 16;

    thread_local! {
        static STATE: Cell<Option<DropoutRngState>> = const { Cell::new(None) };
    }

    pub(super) fn state() -> DropoutRngState {
        STATE.with(|s| match s.get() {
            Some(state) => state,
            None => {
                let state = DropoutRngState {
                    seed: rand::random(),
                    word_pos: 0,
                };
                s.set(Some(state));
                state
            }
        })
    }

    pub(super) fn restore(state: DropoutRngState) {
        STATE.with(|s| s.set(Some(state)));
    }

    /// A mask of `n` elements, each dropped with probability `p`. Element `i` uses word
    /// `word_pos + i` of the stream.
    pub(super) fn mask(n: usize, p: f64) -> super::train_ops::DropoutMask {
        let start = state();
        let mut bits = vec![0u64; n.div_ceil(64)];
        bits.par_chunks_mut(CHUNK / 64)
            .enumerate()
            .for_each(|(c, words)| {
                let mut rng = ChaCha8Rng::seed_from_u64(start.seed);
                rng.set_word_pos(start.word_pos as u128 + (c * CHUNK) as u128);
                let first = c * CHUNK;
                for (w, word) in words.iter_mut().enumerate() {
                    let count = n.saturating_sub(first + w * 64).min(64);
                    for j in 0..count {
                        // 24 random bits → a uniform float in [0, 1).
                        let u = (rng.next_u32() >> 8) as f64 * (1.0 / (1u32 << 24) as f64);
                        *word |= u64::from(u >= p) << j;
                    }
                }
            });
        restore(DropoutRngState {
            seed: start.seed,
            word_pos: start.word_pos + n as u64,
        });
        super::train_ops::DropoutMask::new(bits, n, p)
    }
}

/// The activation functions that config.json's `hidden_act` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (erf), PyTorch's `gelu`.
    Gelu,
    /// GELU with the tanh approximation.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// Rectified linear unit.
    Relu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu if composed::single_ops_for(x) => match train_ops::gelu(x)? {
                Some(y) => Ok(y),
                None => x.gelu_erf(),
            },
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluNew => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// Additive attention bias from a `[batch, seq]` mask of 1 (attend) / 0 (padding):
/// `[batch, 1, 1, seq]` with 0 where attended and the lowest value of `dtype` where masked, as
/// transformers does.
pub fn attention_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let lowest = match dtype {
        DType::BF16 => half::bf16::MIN.to_f64(),
        DType::F16 => half::f16::MIN.to_f64(),
        _ => f32::MIN as f64,
    };
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((1.0 - mask)? * lowest)?;
    bias.reshape((b, 1, 1, s))?.to_dtype(dtype)
}

/// Scaled dot-product attention over `[batch, heads, seq, head_dim]` tensors with an additive bias.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    dropout_p: f64,
    train: bool,
) -> Result<Tensor> {
    if train {
        let mask = if dropout_p > 0.0 {
            let (b, h, s, _) = q.dims4()?;
            Some(dropout_rng::mask(b * h * s * k.dim(2)?, dropout_p))
        } else {
            None
        };
        if composed::single_ops_for(q) {
            return train_ops::attention(q, k, v, bias, mask);
        }
        return composed::attention(q, k, v, bias, mask.as_ref());
    }
    let head_dim = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    let scores = scores.broadcast_add(bias)?;
    let probs = softmax_last_dim(&scores, train)?;
    let probs = dropout(&probs, dropout_p, train)?;
    probs.matmul(v)
}

/// `[b, s, heads*head_dim]` → `[b, heads, s, head_dim]`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    x.reshape((b, s, heads, h / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[b, heads, s, head_dim]` → `[b, s, heads*head_dim]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, n, s, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, s, n * d))
}

/// Looks `ids` up in `embedding`. In training, rows looked up at `padding_idx` get no gradient,
/// as with PyTorch's `nn.Embedding(padding_idx=…)`; their values are used all the same.
pub fn embed(
    embedding: &candle_nn::Embedding,
    ids: &Tensor,
    padding_idx: Option<u32>,
    train: bool,
) -> Result<Tensor> {
    let x = embedding.forward(ids)?;
    match padding_idx {
        Some(pad) if train => {
            // frozen + (x − frozen)·keep equals x exactly; only kept rows carry a gradient.
            let keep = ids.ne(pad)?.to_dtype(x.dtype())?.unsqueeze(D::Minus1)?;
            let frozen = x.detach();
            let trained = (x - &frozen)?.broadcast_mul(&keep)?;
            frozen + trained
        }
        _ => Ok(x),
    }
}
