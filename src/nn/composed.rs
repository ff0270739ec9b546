//! The training ops composed from candle's differentiable tensor ops, for devices other than the
//! CPU.
//!
//! The single ops of `train_ops` have hand-written backward passes on CPU kernels; candle's
//! `CustomOp`s have no fallback elsewhere and fail with "no cuda implementation". On a GPU the
//! same functions are written here with candle's own ops (matmul, exp, sums, element-wise
//! products), whose gradients candle derives. Dropout applies the masks of the same seeded
//! generator as on the CPU, so a run draws the same masks on either device.
//!
//! In bf16/f16 the statistics of LayerNorm and the softmax are taken in f32, as transformers'
//! kernels accumulate them, and cast back.
//!
//! [`with_composed_ops`] makes the CPU take these paths too, so that they can be checked against
//! the CPU's single ops (and transformers' gradients) on a machine without a GPU.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor, D};

use super::train_ops::DropoutMask;

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the training ops composed from candle's differentiable ops on every device, the
/// CPU included: the path a GPU takes, for checking it against the CPU's single ops where no GPU
/// is at hand. Applies to this thread (the forward pass; the backward pass needs no flag).
pub fn with_composed_ops<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the previous setting even if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(true)));
    f()
}

/// Whether `x` takes the CPU's single ops (it is on the CPU and composed ops are not forced).
pub(super) fn single_ops_for(x: &Tensor) -> bool {
    x.device().is_cpu() && !FORCED.with(Cell::get)
}

/// `x` in f32 for a reduction, and the dtype to return to.
fn widened(x: &Tensor) -> Result<(Tensor, DType)> {
    Ok((x.to_dtype(DType::F32)?, x.dtype()))
}

/// LayerNorm over the last dimension, statistics in f32: `(x − mean) / √(var + eps) · w + b`.
pub(super) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let (x32, dtype) = widened(x)?;
    let n = x32.dim(D::Minus1)? as f64;
    let mean = (x32.sum_keepdim(D::Minus1)? / n)?;
    let centred = x32.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / n)?;
    let normed = centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .to_dtype(dtype)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, in f32, returned in `x`'s dtype.
pub(super) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let (x32, dtype) = widened(x)?;
    candle_nn::ops::softmax(&x32, D::Minus1)?.to_dtype(dtype)
}

/// The mask as a tensor shaped like `like`, on its device: `1 / (1 − p)` where kept, 0 where
/// dropped, in f32. Copied as one byte per element.
fn dense_mask(mask: &DropoutMask, like: &Tensor) -> Result<Tensor> {
    if mask.elements() != like.elem_count() {
        candle_core::bail!(
            "dropout: mask of {} for {} elements",
            mask.elements(),
            like.elem_count()
        );
    }
    Tensor::from_vec(mask.kept_bytes(), like.shape(), like.device())?
        .to_dtype(DType::F32)?
        .affine(f64::from(mask.scale()), 0.0)
}

/// `x ⊙ mask` (inverted dropout), the product taken in f32.
pub(super) fn dropout(x: &Tensor, mask: &DropoutMask) -> Result<Tensor> {
    let dense = dense_mask(mask, x)?;
    if x.dtype() == DType::F32 {
        return x * dense;
    }
    (x.to_dtype(DType::F32)? * dense)?.to_dtype(x.dtype())
}

/// `dropout(softmax(q kᵀ / √d + bias)) v` over `[b, heads, s, d]` tensors, `bias` broadcastable
/// to `[b, 1, 1, s]`.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    mask: Option<&DropoutMask>,
) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    // Bias, softmax and dropout in f32: the bias holds f32's lowest value.
    let scores = scores
        .to_dtype(DType::F32)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let probs = match mask {
        Some(m) => (&probs * dense_mask(m, &probs)?)?,
        None => probs,
    };
    probs.to_dtype(v.dtype())?.matmul(v)
}

#[cfg(test)]
mod tests {
    //! The composed ops against the CPU's single ops: same values, same gradients.
    use candle_core::{DType, Device, Tensor};

    use super::super::test_tensors::{
        max_diff, padded_attention_inputs, var, weighted_sum_grads as grads,
    };
    use super::super::{self as nn, train_ops};
    use super::*;

    fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
        let d = max_diff(a, b);
        assert!(d <= tol, "{what} differs by {d} (tolerance {tol})");
    }

    /// A mask that drops about `p` of `n` elements, from the training generator.
    fn drawn_mask(n: usize, p: f64, seed: u64) -> DropoutMask {
        nn::seed_dropout(seed);
        nn::dropout_rng::mask(n, p)
    }

    #[test]
    fn attention_matches_the_single_op_with_dropout_and_padding() {
        let (b, h, s, d) = (2, 3, 7, 4);
        let (q, k, v, bias) = padded_attention_inputs(b, h, s, d);
        let single_mask = drawn_mask(b * h * s * s, 0.25, 5);
        let composed_mask = drawn_mask(b * h * s * s, 0.25, 5);

        let single = train_ops::attention(&q, &k, &v, &bias, Some(single_mask)).unwrap();
        let composed = attention(&q, &k, &v, &bias, Some(&composed_mask)).unwrap();
        assert_close("attention", &single, &composed, 1e-6);
        let (gs, gc) = (grads(&single, 9), grads(&composed, 9));
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            assert_close(name, gs.get(x).unwrap(), gc.get(x).unwrap(), 1e-5);
        }
    }

    #[test]
    fn layer_norm_matches_the_single_op() {
        let (x, w, b) = (var(&[3, 5, 16], 11), var(&[16], 12), var(&[16], 13));
        let single = train_ops::layer_norm(&x, &w, &b, 1e-12).unwrap();
        let composed = layer_norm(&x, &w, &b, 1e-12).unwrap();
        assert_close("layer norm", &single, &composed, 1e-5);
        let (gs, gc) = (grads(&single, 14), grads(&composed, 14));
        for (name, t) in [("x", &x), ("weight", &w), ("bias", &b)] {
            assert_close(name, gs.get(t).unwrap(), gc.get(t).unwrap(), 1e-4);
        }
    }

    #[test]
    fn dropout_applies_the_same_mask_as_the_single_op() {
        let x = var(&[6, 70], 21);
        let single = train_ops::dropout(&x, drawn_mask(420, 0.1, 3)).unwrap();
        let composed = dropout(&x, &drawn_mask(420, 0.1, 3)).unwrap();
        assert_eq!(max_diff(&single, &composed), 0.0);
        let dropped = single
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .filter(|v| **v == 0.0)
            .count();
        assert!(
            (10..=80).contains(&dropped),
            "{dropped} of 420 dropped at p = 0.1"
        );
        let (gs, gc) = (grads(&single, 22), grads(&composed, 22));
        assert_eq!(max_diff(gs.get(&x).unwrap(), gc.get(&x).unwrap()), 0.0);
    }

    #[test]
    fn reduced_precision_keeps_statistics_in_f32() {
        let x = (var(&[4, 64], 31).as_tensor() * 100.0).unwrap();
        let (w, b) = (var(&[64], 32), var(&[64], 33));
        let exact = layer_norm(&x, w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let half = layer_norm(
            &x.to_dtype(DType::BF16).unwrap(),
            &w.as_tensor().to_dtype(DType::BF16).unwrap(),
            &b.as_tensor().to_dtype(DType::BF16).unwrap(),
            1e-5,
        )
        .unwrap();
        assert_eq!(half.dtype(), DType::BF16);
        // bf16 keeps 8 bits: products of values of magnitude ≤ 2 are within about 2⁻⁶.
        assert_close("bf16 layer norm", &exact, &half, 0.05);
        let probs = softmax_last_dim(&x.to_dtype(DType::F16).unwrap()).unwrap();
        let sums: Vec<f32> = probs
            .to_dtype(DType::F32)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-2), "{sums:?}");
    }

    #[test]
    fn forcing_composed_ops_is_scoped_and_survives_a_panic() {
        let x = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(single_ops_for(&x));
        with_composed_ops(|| {
            assert!(!single_ops_for(&x));
            with_composed_ops(|| assert!(!single_ops_for(&x)));
            assert!(!single_ops_for(&x));
        });
        assert!(single_ops_for(&x));
        let caught = std::panic::catch_unwind(|| with_composed_ops(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(single_ops_for(&x));
    }

    /// The single ops take f32 only, so bf16 training tensors on the CPU show which path ran:
    /// an error from the single op, a result from the composed one.
    #[test]
    fn forcing_routes_training_ops_to_the_composed_path() {
        let bf16 =
            |shape: &[usize], seed| var(shape, seed).as_tensor().to_dtype(DType::BF16).unwrap();
        let x = bf16(&[2, 3, 8], 51);
        let (w, b) = (bf16(&[8], 52), bf16(&[8], 53));
        let vb = candle_nn::VarBuilder::from_tensors(
            [("weight".to_string(), w), ("bias".to_string(), b)].into(),
            DType::BF16,
            &Device::Cpu,
        );
        let norm = nn::LayerNorm::new(8, 1e-5, vb).unwrap();
        let (q, k, v) = (
            bf16(&[1, 2, 4, 4], 54),
            bf16(&[1, 2, 4, 4], 55),
            bf16(&[1, 2, 4, 4], 56),
        );
        let attend = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
        let bias = nn::attention_bias(&attend, DType::BF16).unwrap();
        let run = || {
            (
                norm.forward(&x, true).map(|_| ()),
                nn::attention(&q, &k, &v, &bias, 0.2, true).map(|_| ()),
                nn::dropout(&x, 0.2, true).map(|_| ()),
            )
        };
        let (n, a, d) = run();
        for (what, r) in [("layer norm", n), ("attention", a), ("dropout", d)] {
            let err = r.expect_err(what).to_string();
            assert!(err.contains("f32"), "{what}: {err}");
        }
        let (n, a, d) = with_composed_ops(run);
        n.unwrap();
        a.unwrap();
        d.unwrap();
    }

    #[test]
    fn layers_take_the_composed_path_when_forced_with_the_same_gradients() {
        let x = var(&[2, 9, 24], 41);
        let vb = candle_nn::VarBuilder::from_tensors(
            [
                ("weight".to_string(), var(&[10, 24], 42).as_tensor().clone()),
                ("bias".to_string(), var(&[10], 43).as_tensor().clone()),
            ]
            .into(),
            DType::F32,
            &Device::Cpu,
        );
        let linear = nn::Linear::new(24, 10, vb).unwrap();
        let run = || {
            let y = linear.forward(&x).unwrap();
            nn::Activation::Gelu.forward(&y).unwrap()
        };
        let single = run();
        let composed = with_composed_ops(run);
        assert_close("linear + gelu", &single, &composed, 1e-5);
        let (gs, gc) = (grads(&single, 44), grads(&composed, 44));
        assert_close("dx", gs.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-5);
    }
}
