//! Fully connected layers of the fast engine.

use super::kernels::{fill_rows, matmul, MatMut, MatRef};

/// An f32 linear layer `y = x·Wᵀ + b`, with `W` in Hugging Face's `[out, in]` layout.
///
/// The weight stays in that layout: the product reads it through a transposed view, and gemm
/// packs the panels it needs as it goes.
#[derive(Clone, Debug)]
pub struct DenseLinear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_features: usize,
}

impl DenseLinear {
    /// A layer from a row-major `[out, in]` weight and its `[out]` bias.
    ///
    /// # Panics
    /// If the lengths do not agree (the loader checks shapes first).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert!(!bias.is_empty() && weight.len() % bias.len() == 0);
        let in_features = weight.len() / bias.len();
        Self {
            weight,
            bias,
            in_features,
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.bias.len()
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The weight, row-major `[out, in]`.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// The bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// `out = x·Wᵀ + b` for `rows` rows of `x` (row-major); overwrites `out`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (n, k) = (self.out_features(), self.in_features);
        let out = &mut out[..rows * n];
        fill_rows(out, &self.bias);
        let w_t = MatRef::row_major(&self.weight, n, k).t();
        matmul(
            MatMut::row_major(out, rows, n),
            MatRef::row_major(&x[..rows * k], rows, k),
            w_t,
            1.0,
            true,
            true,
        );
    }
}
