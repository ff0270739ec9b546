//! Fixed pseudo-random tensors and comparisons for the tests of the training ops.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

/// Pseudo-random values in [-1, 1) from a fixed LCG (the tests need no generator crate).
pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A variable of `shape` holding [`values`].
pub(super) fn var(shape: &[usize], seed: u64) -> Var {
    let n = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()).unwrap()
}

/// Queries, keys and values `[b, h, s, d]` (seeds 1, 2, 3) and the additive attention bias of
/// `b` sequences of `s` tokens whose sequences after the first end in two padding positions.
pub(super) fn padded_attention_inputs(
    b: usize,
    h: usize,
    s: usize,
    d: usize,
) -> (Var, Var, Var, Tensor) {
    let (q, k, v) = (
        var(&[b, h, s, d], 1),
        var(&[b, h, s, d], 2),
        var(&[b, h, s, d], 3),
    );
    let attend: Vec<f32> = (0..b * s)
        .map(|i| f32::from(i < s || i % s < s - 2))
        .collect();
    let attend = Tensor::from_vec(attend, (b, s), &Device::Cpu).unwrap();
    let bias = super::attention_bias(&attend, DType::F32).unwrap();
    (q, k, v, bias)
}

/// Gradients of `Σ y ⊙ w` for fixed pseudo-random weights `w`: a loss that weighs every
/// element of `y` differently, so that a gradient sent to the wrong element shows.
pub(super) fn weighted_sum_grads(y: &Tensor, seed: u64) -> GradStore {
    let w = Tensor::from_vec(values(y.elem_count(), seed), y.shape(), y.device()).unwrap();
    (y * w).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Largest absolute difference of two tensors of the same shape, in f32.
pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
