//! Fully connected layers: f32 on packed weights, or int8.

use super::ops::{activate, fill_rows, matmul, Act, MatMut, MatRef};
use super::sgemm::PackedWeights;
use crate::engine::Precision;

/// An f32 linear layer `y = x·Wᵀ + b`, with `W` in Hugging Face's `[out, in]` layout.
///
/// On CPUs where [`PackedWeights`] runs, the weight is packed into its panels once, here, so
/// that no call repacks it; elsewhere it stays row-major and gemm reads it through a
/// transposed view.
#[derive(Clone, Debug)]
pub struct DenseLinear {
    weight: Weight,
    bias: Vec<f32>,
    in_features: usize,
}

/// How a [`DenseLinear`] keeps its weight.
#[derive(Clone, Debug)]
enum Weight {
    RowMajor(Vec<f32>),
    Packed(PackedWeights),
}

impl DenseLinear {
    /// A layer from a row-major `[out, in]` weight and its `[out]` bias.
    ///
    /// # Panics
    /// If the lengths do not agree (the loader checks shapes first).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert!(!bias.is_empty() && weight.len().is_multiple_of(bias.len()));
        let in_features = weight.len() / bias.len();
        let weight = if PackedWeights::available() {
            Weight::Packed(PackedWeights::pack(&weight, bias.len(), in_features))
        } else {
            Weight::RowMajor(weight)
        };
        Self {
            weight,
            bias,
            in_features,
        }
    }

    /// Number of output features.
    pub fn out_features(&self) -> usize {
        self.bias.len()
    }

    /// Number of input features.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The bias, `[out]`.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// `out = x·Wᵀ + b` for `rows` rows of `x` (row-major); overwrites `out`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.forward_activated(x, rows, None, out);
    }

    /// `out = act(x·Wᵀ + b)` for `rows` rows of `x` (row-major); overwrites `out`. The packed
    /// kernel applies `act` to each finished tile, saving a pass over `out`.
    pub fn forward_activated(&self, x: &[f32], rows: usize, act: Option<Act>, out: &mut [f32]) {
        let out = &mut out[..rows * self.bias.len()];
        let x = &x[..rows * self.in_features];
        match &self.weight {
            Weight::RowMajor(w) => {
                dense_forward(x, w, &self.bias, rows, out);
                if let Some(act) = act {
                    activate(act, out);
                }
            }
            Weight::Packed(p) => p.forward(x, rows, &self.bias, act, out),
        }
    }
}

/// `out = x·Wᵀ + b` for `rows` rows of `x` (row-major), `weight` row-major `[out, in]` and
/// `bias` `[out]`; overwrites the first `rows · out` elements of `out`. The bias is the
/// product's starting value, so it is added without another pass.
///
/// # Panics
/// If `x` or `out` is too short, or `weight` does not hold whole rows of `bias.len()`.
pub fn dense_forward(x: &[f32], weight: &[f32], bias: &[f32], rows: usize, out: &mut [f32]) {
    let n = bias.len();
    assert!(
        n > 0 && weight.len().is_multiple_of(n),
        "weight is not [out, in]"
    );
    let k = weight.len() / n;
    let out = &mut out[..rows * n];
    fill_rows(out, bias);
    matmul(
        MatMut::row_major(out, rows, n),
        MatRef::row_major(&x[..rows * k], rows, k),
        MatRef::row_major(weight, n, k).t(),
        1.0,
        true,
        true,
    );
}

/// A linear layer in the precision chosen at load.
#[derive(Debug)]
pub enum Linear {
    /// f32 weights.
    Dense(DenseLinear),
    /// int8 weights, per output channel; activations quantized per call.
    Int8(super::int8::QuantizedLinear),
}

impl Linear {
    /// A layer in `precision` from a row-major `[out, in]` weight and its `[out]` bias; int8
    /// quantizes the weight straight from this layout (the f32 one is never packed).
    ///
    /// # Panics
    /// If the lengths do not agree (the loader checks shapes first).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Linear::Dense(DenseLinear::new(weight, bias)),
            Precision::Int8 => {
                assert!(!bias.is_empty() && weight.len().is_multiple_of(bias.len()));
                let (out_features, in_features) = (bias.len(), weight.len() / bias.len());
                Linear::Int8(super::int8::QuantizedLinear::new(
                    &weight,
                    Some(&bias),
                    out_features,
                    in_features,
                ))
            }
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense(l) => l.out_features(),
            Linear::Int8(l) => l.out_features(),
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        match self {
            Linear::Dense(l) => l.in_features(),
            Linear::Int8(l) => l.in_features(),
        }
    }

    /// `out = x·Wᵀ + b` for `rows` rows of `x`; overwrites `out`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.forward_activated(x, rows, None, out);
    }

    /// `out = act(x·Wᵀ + b)` for the first `rows` rows of `x`; overwrites the first `rows` rows
    /// of `out` (either may be longer).
    pub fn forward_activated(&self, x: &[f32], rows: usize, act: Option<Act>, out: &mut [f32]) {
        match self {
            Linear::Dense(l) => l.forward_activated(x, rows, act, out),
            Linear::Int8(l) => l.forward_activated(
                &x[..rows * l.in_features()],
                rows,
                act,
                &mut out[..rows * l.out_features()],
            ),
        }
    }
}
