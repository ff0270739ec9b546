//! A post-LayerNorm transformer layer of the fast engine, loaded from an architecture's weight
//! names, and the loading helpers the architectures use for their other parts.

use candle_nn::VarBuilder;

use crate::engine::Precision;
use crate::kernels::linear::{DenseLinear, Linear};
use crate::kernels::ops::add_layer_norm;

/// A LayerNorm's parameters.
#[derive(Debug)]
pub(crate) struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// Loads `weight` and `bias` of width `size` under `vb`.
    pub(crate) fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
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
    pub(crate) fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        add_layer_norm(x, residual, &self.gamma, &self.beta, self.eps);
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

/// A layer's linear layer under `vb`, in `precision`.
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

/// The widths of a layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerShape {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of the feed-forward block.
    pub intermediate: usize,
    /// Epsilon of both LayerNorms.
    pub eps: f64,
}

/// One transformer layer: self-attention, then the feed-forward block, each closed by
/// residual + LayerNorm.
#[derive(Debug)]
pub struct Layer {
    pub(super) qkv: Linear,
    pub(super) attention_output: Linear,
    pub(super) attention_norm: Norm,
    pub(super) intermediate: Linear,
    pub(super) output: Linear,
    pub(super) output_norm: Norm,
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
            intermediate,
            eps,
        } = shape;
        let qkv = [names.query, names.key, names.value].map(|name| vb.pp(name));
        Ok(Layer {
            qkv: fused_qkv(h, qkv, precision)?,
            attention_output: layer_linear(h, h, vb.pp(names.attention_output), precision)?,
            attention_norm: Norm::load(h, eps, vb.pp(names.attention_norm))?,
            intermediate: layer_linear(h, intermediate, vb.pp(names.intermediate), precision)?,
            output: layer_linear(intermediate, h, vb.pp(names.output), precision)?,
            output_norm: Norm::load(h, eps, vb.pp(names.output_norm))?,
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
    ) -> candle_core::Result<Vec<Self>> {
        (0..count)
            .map(|i| Self::load(&vb.pp(format!("{prefix}.{i}")), names, shape, precision))
            .collect()
    }
}
