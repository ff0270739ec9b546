//! A post-LayerNorm transformer layer of the fast engine (BERT's, and with relative-position
//! terms DeBERTa's), loaded from an architecture's weight names, and the loading helpers and
//! normalisations the architectures' other parts use.

use std::sync::Arc;

use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::attend::self_attention;
use super::relative::RelativeAttention;
use super::{grow, FastLayer, Scratch};
use crate::engine::Precision;
use crate::kernels::linear::{DenseLinear, Linear};
use crate::kernels::ops::{add_layer_norm, Act};
use crate::nn::Activation;

/// The normalisation that closes a sub-layer.
#[derive(Debug)]
pub enum Norm {
    /// `LayerNorm(x)`, with its parameters.
    LayerNorm {
        /// Scale.
        gamma: Vec<f32>,
        /// Shift.
        beta: Vec<f32>,
        /// Epsilon.
        eps: f32,
    },
    /// MobileBERT's `NoNorm`: `x · weight + bias`, element-wise.
    NoNorm {
        /// Scale.
        weight: Vec<f32>,
        /// Shift.
        bias: Vec<f32>,
    },
}

impl Norm {
    /// Loads a LayerNorm (`weight`, `bias`) of width `size` under `vb`.
    pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let ln = candle_nn::layer_norm(size, eps, vb)?;
        let beta = match ln.bias() {
            Some(b) => b.to_vec1()?,
            None => candle_core::bail!("layer norm without bias"),
        };
        Ok(Self::LayerNorm {
            gamma: ln.weight().to_vec1()?,
            beta,
            eps: eps as f32,
        })
    }

    /// Loads a `NoNorm` (`weight`, `bias`) of width `size` under `vb`.
    pub fn no_norm(size: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self::NoNorm {
            weight: vb.get(size, "weight")?.to_vec1()?,
            bias: vb.get(size, "bias")?.to_vec1()?,
        })
    }

    /// `x ← norm(x + residual)`.
    pub(crate) fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        match self {
            Norm::LayerNorm { gamma, beta, eps } => add_layer_norm(x, residual, gamma, beta, *eps),
            Norm::NoNorm { weight, bias } => {
                let width = weight.len();
                x.par_chunks_mut(width * 64)
                    .enumerate()
                    .for_each(|(i, rows)| {
                        let start = i * width * 64;
                        let res = residual.map(|r| &r[start..start + rows.len()]);
                        for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                            if let Some(res) = res {
                                let res = &res[r * width..(r + 1) * width];
                                row.iter_mut().zip(res).for_each(|(v, r)| *v += r);
                            }
                            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                                *v = *v * w + b;
                            }
                        }
                    });
            }
        }
    }
}

/// A linear layer's row-major `[out, in]` weight and `[out]` bias under `vb`, before any
/// packing.
pub fn linear_parts(
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

/// An f32 linear layer (`weight`, `bias`) under `vb`.
pub fn dense_linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> candle_core::Result<DenseLinear> {
    let (weight, bias) = linear_parts(in_dim, out_dim, vb)?;
    Ok(DenseLinear::new(weight, bias))
}

/// A linear layer under `vb`, in `precision`.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
    precision: Precision,
) -> candle_core::Result<Linear> {
    let (weight, bias) = linear_parts(in_dim, out_dim, vb)?;
    Ok(Linear::new(weight, bias, precision))
}

/// Linear layers of the same input stacked into one product (e.g. query, key and value), in
/// `precision`.
pub fn fused_linear(
    in_dim: usize,
    out_dim: usize,
    vbs: &[VarBuilder],
    precision: Precision,
) -> candle_core::Result<Linear> {
    let mut weight = Vec::with_capacity(vbs.len() * out_dim * in_dim);
    let mut bias = Vec::with_capacity(vbs.len() * out_dim);
    for vb in vbs {
        let (w, b) = linear_parts(in_dim, out_dim, vb.clone())?;
        weight.extend_from_slice(&w);
        bias.extend_from_slice(&b);
    }
    Ok(Linear::new(weight, bias, precision))
}

/// The feed-forward activation as the kernels name it.
pub(crate) fn act(activation: Activation) -> Act {
    match activation {
        Activation::Gelu => Act::Gelu,
        Activation::GeluNew => Act::GeluTanh,
        Activation::Relu => Act::Relu,
    }
}

/// Where a post-LayerNorm layer keeps its weights, relative to the layer's own module (e.g.
/// BERT's `attention.self.query` under `encoder.layer.N`).
#[derive(Clone, Copy, Debug)]
pub struct LayerNames {
    /// The query projection.
    pub query: &'static str,
    /// The key projection.
    pub key: &'static str,
    /// The value projection.
    pub value: &'static str,
    /// The projection of the merged heads.
    pub attention_output: &'static str,
    /// The LayerNorm closing the attention block.
    pub attention_norm: &'static str,
    /// The feed-forward block's first (widening) layer.
    pub intermediate: &'static str,
    /// The feed-forward block's second layer.
    pub output: &'static str,
    /// The LayerNorm closing the feed-forward block.
    pub output_norm: &'static str,
}

/// The shape of a layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerShape {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of the feed-forward block.
    pub intermediate: usize,
    /// Epsilon of both LayerNorms.
    pub eps: f64,
    /// The feed-forward activation.
    pub activation: Activation,
}

/// One transformer layer: self-attention (with relative-position terms where the
/// architecture has them), then the feed-forward block, each closed by residual + LayerNorm.
#[derive(Debug)]
pub struct Layer {
    qkv: Linear,
    relative: Option<RelativeAttention>,
    attention_output: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
    hidden: usize,
    heads: usize,
    act: Act,
}

impl Layer {
    /// Loads a layer from `vb` (the layer's module) by `names`, its linear layers in
    /// `precision` (query, key and value fused into one product).
    pub fn load(
        vb: &VarBuilder,
        names: &LayerNames,
        shape: LayerShape,
        precision: Precision,
    ) -> candle_core::Result<Self> {
        let LayerShape {
            hidden: h,
            heads,
            intermediate,
            eps,
            activation,
        } = shape;
        let qkv = [names.query, names.key, names.value].map(|name| vb.pp(name));
        Ok(Layer {
            qkv: fused_linear(h, h, &qkv, precision)?,
            relative: None,
            attention_output: linear(h, h, vb.pp(names.attention_output), precision)?,
            attention_norm: Norm::layer_norm(h, eps, vb.pp(names.attention_norm))?,
            intermediate: linear(h, intermediate, vb.pp(names.intermediate), precision)?,
            output: linear(intermediate, h, vb.pp(names.output), precision)?,
            output_norm: Norm::layer_norm(h, eps, vb.pp(names.output_norm))?,
            hidden: h,
            heads,
            act: act(activation),
        })
    }

    /// `count` layers, `{prefix}.0` … `{prefix}.{count - 1}` under `vb`.
    pub fn load_stack(
        vb: &VarBuilder,
        prefix: &str,
        count: usize,
        names: &LayerNames,
        shape: LayerShape,
        precision: Precision,
    ) -> candle_core::Result<Vec<Arc<dyn FastLayer>>> {
        (0..count)
            .map(|i| -> candle_core::Result<Arc<dyn FastLayer>> {
                let layer = Self::load(&vb.pp(format!("{prefix}.{i}")), names, shape, precision)?;
                Ok(Arc::new(layer))
            })
            .collect()
    }

    /// This layer with DeBERTa's relative-position terms in its attention.
    pub fn with_relative(mut self, relative: RelativeAttention) -> Self {
        self.relative = Some(relative);
        self
    }
}

impl FastLayer for Layer {
    fn forward(&self, spans: &[(usize, usize)], scratch: &mut Scratch, keep: Option<&[usize]>) {
        let h = self.hidden;
        let total = scratch.hidden.len() / h;
        grow(&mut scratch.qkv, total * 3 * h);
        grow(&mut scratch.context, total * h);
        self.qkv.forward(&scratch.hidden, total, &mut scratch.qkv);
        let qkv = std::mem::take(&mut scratch.qkv);
        match &self.relative {
            Some(relative) => relative.attention(&qkv, spans, self.heads, scratch),
            None => self_attention(&qkv, spans, h, self.heads, scratch),
        }
        scratch.qkv = qkv;
        let total = keep_rows(
            keep,
            h,
            &mut scratch.hidden,
            &mut [&mut scratch.context],
            total,
        );
        let x = &mut scratch.hidden;
        grow(&mut scratch.projected, total * h);
        self.attention_output
            .forward(&scratch.context, total, &mut scratch.projected);
        self.attention_norm.apply(x, Some(&scratch.projected));
        let inter = &mut scratch.intermediate;
        grow(inter, total * self.intermediate.out_features());
        self.intermediate
            .forward_activated(x, total, Some(self.act), inter);
        self.output.forward(inter, total, &mut scratch.projected);
        self.output_norm.apply(x, Some(&scratch.projected));
    }
}

/// With `keep` (ascending rows), moves the kept rows of `x` (`width` wide) and of the `others`
/// (each `width` wide) to the front and truncates `x` to them: every row's keys and values
/// were needed, but from here on rows are independent. Returns the rows left.
pub(crate) fn keep_rows(
    keep: Option<&[usize]>,
    width: usize,
    x: &mut Vec<f32>,
    others: &mut [&mut Vec<f32>],
    total: usize,
) -> usize {
    let Some(rows) = keep else { return total };
    // Rows ascend, so each moves down or stays.
    for (to, &from) in rows.iter().enumerate() {
        x.copy_within(from * width..(from + 1) * width, to * width);
        for other in others.iter_mut() {
            let w = other.len() / total;
            other.copy_within(from * w..(from + 1) * w, to * w);
        }
    }
    x.truncate(rows.len() * width);
    rows.len()
}
