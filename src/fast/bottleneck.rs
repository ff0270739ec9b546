//! MobileBERT's layer on the fast engine: the residual stream is narrowed by bottlenecks,
//! attention and a stack of feed-forward blocks run at the narrow width, and the result is
//! widened back, each step closed by a normalisation (`NoNorm` or LayerNorm).

use candle_nn::VarBuilder;

use super::attend::self_attention;
use super::grow;
use super::layer::{act, fused_linear, keep_rows, linear, Norm};
use super::{FastLayer, Scratch};
use crate::engine::Precision;
use crate::kernels::linear::Linear;
use crate::kernels::ops::Act;
use crate::nn::Activation;

/// The widths and choices of a bottleneck layer.
#[derive(Clone, Copy, Debug)]
pub struct BottleneckShape {
    /// Width of the residual stream between layers.
    pub hidden: usize,
    /// Width inside the layer (`intra_bottleneck_size`).
    pub inner: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of the feed-forward blocks.
    pub intermediate: usize,
    /// Feed-forward blocks, the last one included.
    pub feedforward: usize,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Query and key read their own bottleneck (`key_query_shared_bottleneck`).
    pub shared_query_key: bool,
}

/// How each normalisation of the layer is built (`NoNorm`, or a LayerNorm of that epsilon).
pub type NormLoader<'a> = &'a dyn Fn(usize, VarBuilder) -> candle_core::Result<Norm>;

/// The weight names of a MobileBERT layer are transformers'; this is only where its
/// normalisations come from (their kind and epsilons differ by checkpoint).
pub struct BottleneckNames<'a> {
    /// The normalisations of the bottlenecks, attention output and feed-forward blocks.
    pub inner_norm: NormLoader<'a>,
    /// The normalisation of the last feed-forward block (`output.LayerNorm`).
    pub output_norm: NormLoader<'a>,
}

/// A dense map and the normalisation of its output plus a residual.
#[derive(Debug)]
struct DenseNorm {
    dense: Linear,
    norm: Norm,
}

impl DenseNorm {
    fn load(
        vb: &VarBuilder,
        (in_dim, out_dim): (usize, usize),
        norm: NormLoader,
        precision: Precision,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            dense: linear(in_dim, out_dim, vb.pp("dense"), precision)?,
            norm: norm(out_dim, vb.pp("LayerNorm"))?,
        })
    }

    /// `out ← norm(dense(x) + residual)` over `rows` rows.
    fn forward(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, out: &mut Vec<f32>) {
        grow(out, rows * self.dense.out_features());
        self.dense.forward(x, rows, out);
        self.norm.apply(out, residual);
    }
}

/// One feed-forward block: `norm(output(act(intermediate(x))) + x)`.
#[derive(Debug)]
struct FeedForward {
    intermediate: Linear,
    output: DenseNorm,
}

/// A MobileBERT layer with bottlenecks.
#[derive(Debug)]
pub struct BottleneckLayer {
    input: DenseNorm,
    /// The separate bottleneck of query and key (`key_query_shared_bottleneck`).
    query_key_input: Option<DenseNorm>,
    /// Query and key, fused, over the narrowed stream.
    query_key: Linear,
    /// The value, over the layer's input.
    value: Linear,
    attention_output: DenseNorm,
    feedforward: Vec<FeedForward>,
    widen: DenseNorm,
    inner: usize,
    heads: usize,
    act: Act,
}

impl BottleneckLayer {
    /// Loads `encoder.layer.N` from `vb`.
    pub fn load(
        vb: &VarBuilder,
        shape: BottleneckShape,
        names: &BottleneckNames,
        precision: Precision,
    ) -> candle_core::Result<Self> {
        let (h, t, i) = (shape.hidden, shape.inner, shape.intermediate);
        let selfa = vb.pp("attention.self");
        let inner = names.inner_norm;
        let ffn = |vb: VarBuilder, norm| -> candle_core::Result<FeedForward> {
            Ok(FeedForward {
                intermediate: linear(t, i, vb.pp("intermediate.dense"), precision)?,
                output: DenseNorm::load(&vb.pp("output"), (i, t), norm, precision)?,
            })
        };
        let mut feedforward = (0..shape.feedforward.saturating_sub(1))
            .map(|n| ffn(vb.pp(format!("ffn.{n}")), inner))
            .collect::<candle_core::Result<Vec<_>>>()?;
        feedforward.push(ffn(vb.clone(), names.output_norm)?);
        Ok(Self {
            input: DenseNorm::load(&vb.pp("bottleneck.input"), (h, t), inner, precision)?,
            query_key_input: shape
                .shared_query_key
                .then(|| DenseNorm::load(&vb.pp("bottleneck.attention"), (h, t), inner, precision))
                .transpose()?,
            query_key: fused_linear(t, t, &[selfa.pp("query"), selfa.pp("key")], precision)?,
            value: linear(h, t, selfa.pp("value"), precision)?,
            attention_output: DenseNorm::load(
                &vb.pp("attention.output"),
                (t, t),
                inner,
                precision,
            )?,
            feedforward,
            widen: DenseNorm::load(&vb.pp("output.bottleneck"), (t, h), inner, precision)?,
            inner: t,
            heads: shape.heads,
            act: act(shape.activation),
        })
    }
}

impl FastLayer for BottleneckLayer {
    fn forward(&self, spans: &[(usize, usize)], scratch: &mut Scratch, keep: Option<&[usize]>) {
        let t = self.inner;
        let h = self.input.dense.in_features();
        let total = scratch.hidden.len() / h;
        // The layer's input stays for the last residual (spare[0]); the stream narrows to `t`
        // (spare[1]).
        std::mem::swap(&mut scratch.hidden, &mut scratch.spare[0]);
        let [input, narrowed] = &mut scratch.spare;
        let x = &*input;
        self.input.forward(x, total, None, narrowed);
        let query_key_in = match &self.query_key_input {
            Some(b) => {
                b.forward(x, total, None, &mut scratch.hidden);
                &scratch.hidden
            }
            None => x,
        };
        // Query, key and value side by side, as the attention kernels read them.
        grow(&mut scratch.projected, total * 2 * t);
        self.query_key
            .forward(query_key_in, total, &mut scratch.projected);
        grow(&mut scratch.intermediate, total * t);
        self.value.forward(x, total, &mut scratch.intermediate);
        grow(&mut scratch.qkv, total * 3 * t);
        for (row, qkv) in scratch.qkv.chunks_exact_mut(3 * t).enumerate() {
            qkv[..2 * t].copy_from_slice(&scratch.projected[row * 2 * t..][..2 * t]);
            qkv[2 * t..].copy_from_slice(&scratch.intermediate[row * t..][..t]);
        }
        grow(&mut scratch.context, total * t);
        let qkv = std::mem::take(&mut scratch.qkv);
        self_attention(&qkv, spans, t, self.heads, scratch);
        scratch.qkv = qkv;
        let [residual, narrowed] = &mut scratch.spare;
        let total = keep_rows(
            keep,
            h,
            residual,
            &mut [&mut scratch.context, narrowed],
            total,
        );
        let mut stream = std::mem::take(&mut scratch.hidden);
        self.attention_output.forward(
            &scratch.context,
            total,
            Some(&scratch.spare[1]),
            &mut stream,
        );
        for ffn in &self.feedforward {
            let inter = &mut scratch.intermediate;
            grow(inter, total * ffn.intermediate.out_features());
            ffn.intermediate
                .forward_activated(&stream, total, Some(self.act), inter);
            ffn.output
                .forward(inter, total, Some(&stream), &mut scratch.projected);
            std::mem::swap(&mut stream, &mut scratch.projected);
        }
        self.widen
            .forward(&stream, total, Some(&scratch.spare[0]), &mut scratch.hidden);
        scratch.projected = stream;
    }
}
