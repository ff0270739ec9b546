//! Differentiable training kernels with hand-written backward passes (candle `CustomOp`s).
//!
//! Built from candle's small differentiable ops, attention keeps half a dozen `[b, heads, s, s]`
//! tensors per layer alive for the backward pass, LayerNorm eight `[b, s, h]` ones, and every
//! dropout an f32 mask. These ops keep only their inputs (and dropout masks as bits):
//! attention recomputes its probabilities in the backward pass, LayerNorm its statistics.
//! Attention never holds more than one `[s, s]` block per thread: each (batch entry, head) pair
//! runs start to end on one thread. Linear layers and GELU are single ops on the fast engine's
//! kernels (the packed f32 kernel where the CPU runs it, gemm otherwise), in training and
//! inference alike: composed from candle ops, their backward passes copied
//! transposed gradients, reduced the bias gradient with a strided sum and evaluated erf/exp
//! through libm. They run on the CPU in f32, the dtype training uses.

use crate::kernels::linear::dense_forward;
use crate::kernels::ops::{self as kernels, Act, MatMut, MatRef};
use crate::kernels::sgemm::PackedWeights;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, StorageRef, Tensor,
};
use multiversion::multiversion;
use rayon::prelude::*;

/// Rows handled per parallel task in the row-wise kernels.
const ROWS_PER_TASK: usize = 64;

/// A dropout mask: one bit per element (1 = kept), kept elements scaled by `1 / (1 - p)`.
#[derive(Clone, Debug)]
pub(crate) struct DropoutMask {
    bits: Vec<u64>,
    len: usize,
    scale: f32,
}

impl DropoutMask {
    /// Wraps `bits` (element `i` kept when bit `i % 64` of word `i / 64` is set).
    pub(crate) fn new(bits: Vec<u64>, len: usize, p: f64) -> Self {
        Self {
            bits,
            len,
            scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// Number of elements the mask covers.
    pub(crate) fn elements(&self) -> usize {
        self.len
    }

    /// The factor kept elements are multiplied by, `1 / (1 - p)`.
    pub(crate) fn scale(&self) -> f32 {
        self.scale
    }

    /// One byte per element: 1 where kept, 0 where dropped (for masks applied by tensor ops,
    /// off the CPU).
    pub(crate) fn kept_bytes(&self) -> Vec<u8> {
        (0..self.len)
            .map(|i| ((self.bits[i / 64] >> (i % 64)) & 1) as u8)
            .collect()
    }

    /// Multiplies `values`, elements `start..start + values.len()` of the masked tensor, by
    /// their part of the mask, in place.
    fn apply_at(&self, start: usize, values: &mut [f32]) {
        debug_assert!(start + values.len() <= self.len);
        if start.is_multiple_of(64) {
            apply_mask_bits(values, &self.bits[start / 64..], self.scale);
        } else {
            for (i, v) in (start..).zip(values.iter_mut()) {
                let kept = (self.bits[i / 64] >> (i % 64)) & 1 == 1;
                *v = if kept { *v * self.scale } else { 0.0 };
            }
        }
    }

    /// Multiplies `values` (of the mask's length) by the mask, in place.
    fn apply(&self, values: &mut [f32]) {
        debug_assert_eq!(values.len(), self.len);
        values
            .par_chunks_mut(64 * 1024)
            .zip(self.bits.par_chunks(1024))
            .for_each(|(chunk, words)| apply_mask_bits(chunk, words, self.scale));
    }
}

/// `v ← v · scale` where the element's bit is set, `0` where not, for 64 elements per word.
/// Compiled per instruction set: with AVX2's per-lane shifts the bit tests vectorise.
#[multiversion(targets = "simd")]
fn apply_mask_bits(values: &mut [f32], words: &[u64], scale: f32) {
    for (vals, &word) in values.chunks_mut(64).zip(words) {
        for (j, v) in vals.iter_mut().enumerate() {
            let kept = (word >> j) & 1 == 1;
            *v = if kept { *v * scale } else { 0.0 };
        }
    }
}

/// The f32 values of a contiguous CPU tensor.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: training runs in f32")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: expects a contiguous tensor"),
    }
}

/// A tensor's values, row-major.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// A tensor's f32 values, row-major: borrowed from its storage when it is a contiguous CPU
/// tensor (the backward passes read large activations; copying them showed in profiles),
/// copied otherwise.
enum Values<'a> {
    Borrowed(StorageRef<'a>, (usize, usize)),
    Copied(Vec<f32>),
}

impl Values<'_> {
    fn of(t: &Tensor) -> Result<Values<'_>> {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(_)), Some(range)) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(Values::Borrowed(storage, range));
        }
        drop(storage);
        Ok(Values::Copied(values(t)?))
    }

    fn slice(&self) -> &[f32] {
        match self {
            Values::Borrowed(storage, (start, end)) => match &**storage {
                Storage::Cpu(CpuStorage::F32(data)) => &data[*start..*end],
                // `of` borrows f32 CPU storage only.
                _ => &[],
            },
            Values::Copied(data) => data,
        }
    }
}

fn require_cpu(t: &Tensor, op: &str) -> Result<()> {
    if !t.device().is_cpu() {
        bail!("{op}: training runs on the CPU only");
    }
    Ok(())
}

/// Inverted dropout with a precomputed mask; the backward pass applies the same mask.
struct DropoutOp {
    mask: DropoutMask,
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = f32_slice(storage, layout, self.name())?.to_vec();
        self.mask.apply(&mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut g = values(grad)?;
        self.mask.apply(&mut g);
        Ok(Some(Tensor::from_vec(g, grad.shape(), grad.device())?))
    }
}

/// `x ⊙ mask`, differentiable, keeping the mask as bits.
pub(crate) fn dropout(x: &Tensor, mask: DropoutMask) -> Result<Tensor> {
    require_cpu(x, "dropout")?;
    if mask.len != x.elem_count() {
        bail!(
            "dropout: mask of {} for {} elements",
            mask.len,
            x.elem_count()
        );
    }
    x.contiguous()?.apply_op1(DropoutOp { mask })
}

/// `y = x·Wᵀ + b` as one op. Where the CPU runs the fast engine's packed kernel, the forward
/// product and `dx` use it, with the weight packed per call; the rest, and other CPUs, use gemm.
/// candle's composition (transpose, matmul, broadcast add) copies the transposed gradients and
/// sums the bias gradient with a strided reduction.
struct LinearOp;

/// `[rows, cols]` of a contiguous tensor whose last dimension is `cols`.
fn rows_of(len: usize, cols: usize) -> usize {
    len.checked_div(cols).unwrap_or(0)
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let (n, k) = l2.shape().dims2()?;
        let m = rows_of(x.len(), k);
        let mut out = vec![0f32; m * n];
        if PackedWeights::available() {
            // Packing costs n·k moves against the product's m·n·k multiply-adds.
            PackedWeights::pack(w, n, k).forward(x, m, b, None, &mut out);
        } else {
            dense_forward(x, w, b, m, &mut out);
        }
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, dyv) = (Values::of(x)?, Values::of(w)?, Values::of(grad)?);
        let (xs, ws, dys) = (xv.slice(), wv.slice(), dyv.slice());
        let (n, k) = w.dims2()?;
        let m = rows_of(xs.len(), k);
        // dx = dy·W, a product against Wᵀ as the `[k, n]` weight (W is its transpose)
        let mut dx = vec![0f32; m * k];
        if PackedWeights::available() {
            PackedWeights::pack_transposed(ws, k, n).accumulate(dys, m, &mut dx);
        } else {
            kernels::matmul(
                MatMut::row_major(&mut dx, m, k),
                MatRef::row_major(dys, m, n),
                MatRef::row_major(ws, n, k),
                1.0,
                false,
                true,
            );
        }
        // dW = dyᵀ·x
        let mut dw = vec![0f32; n * k];
        kernels::matmul(
            MatMut::row_major(&mut dw, n, k),
            MatRef::row_major(dys, m, n).t(),
            MatRef::row_major(xs, m, k),
            1.0,
            false,
            true,
        );
        // db = column sums of dy: partial sums per task, added in task order so that the
        // result does not depend on the number of threads.
        let partials: Vec<Vec<f32>> = dys
            .par_chunks(n * ROWS_PER_TASK)
            .map(|rows| {
                let mut acc = vec![0f32; n];
                for row in rows.chunks(n) {
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .collect();
        let mut db = vec![0f32; n];
        for p in partials {
            db.iter_mut().zip(p).for_each(|(a, v)| *a += v);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// Differentiable `x·Wᵀ + b` for f32 CPU tensors (`w` is `[out, in]`, `b` `[out]`); `None` for
/// other tensors, which take candle's ops.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(f32_cpu(x) && f32_cpu(w) && f32_cpu(b)) || w.rank() != 2 || b.rank() != 1 {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    if x.dim(candle_core::D::Minus1)? != k || b.elem_count() != n {
        bail!(
            "linear: input of shape {:?} for weight {:?} and bias {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)
        .map(Some)
}

/// Exact GELU with the vectorised kernels; the backward pass recomputes from the input.
struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = f32_slice(storage, layout, self.name())?.to_vec();
        kernels::activate(Act::Gelu, &mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = Values::of(arg)?;
        let mut g = values(grad)?;
        kernels::gelu_backward(x.slice(), &mut g);
        Ok(Some(Tensor::from_vec(g, grad.shape(), grad.device())?))
    }
}

/// Exact (erf) GELU of an f32 CPU tensor, differentiable; `None` for other tensors, which
/// take candle's own op.
pub(crate) fn gelu(x: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    x.contiguous()?.apply_op1(GeluOp).map(Some)
}

/// `dropout(softmax(q kᵀ · scale + bias)) v` over `[b, heads, s, d]` tensors. Only `q`, `k`,
/// `v` are kept for the backward pass, which recomputes the probabilities.
struct AttentionOp {
    /// Additive bias, one row of `s` per batch entry.
    bias: Vec<f32>,
    scale: f32,
    mask: Option<DropoutMask>,
}

impl AttentionOp {
    /// One (batch entry, head) pair's probabilities, `softmax(q kᵀ · scale + bias)` as `[s, s]`
    /// in `p`, from its `[s, d]` queries and keys; `batch` picks the bias row.
    fn head_probs(&self, q: &[f32], k: &[f32], batch: usize, s: usize, p: &mut [f32]) {
        let d = q.len() / s;
        serial_product(p, s, mat(q, d), mat(k, d).t());
        let bias = &self.bias[batch * s..][..s];
        for row in p.chunks_exact_mut(s) {
            kernels::softmax_row_biased(row, bias, self.scale);
        }
    }

    /// Applies the dropout mask to pair `pair`'s `[s, s]` probabilities (or their gradient).
    fn drop_head(&self, pair: usize, p: &mut [f32]) {
        if let Some(mask) = &self.mask {
            mask.apply_at(pair * p.len(), p);
        }
    }
}

/// A row-major matrix of `cols` columns over all of `data`.
fn mat(data: &[f32], cols: usize) -> MatRef<'_> {
    MatRef::row_major(data, data.len() / cols, cols)
}

/// `out = a·b`, `out` row-major with `cols` columns, on the calling thread (the attention
/// pairs are already spread over the pool).
fn serial_product(out: &mut [f32], cols: usize, a: MatRef, b: MatRef) {
    let rows = out.len() / cols;
    kernels::matmul(MatMut::row_major(out, rows, cols), a, b, 1.0, false, false);
}

/// `[s, d]` blocks of a contiguous `[b, h, s, d]` tensor, one per (batch entry, head) pair.
fn heads(data: &[f32], s: usize, d: usize) -> std::slice::ChunksExact<'_, f32> {
    data.chunks_exact(s * d)
}

// The (batch entry, head) pairs are independent: each runs on one thread with serial
// products on its own `[s, s]` scratch, which stays in cache, instead of materialising
// `[b, h, s, s]` tensors and splitting every small product across threads.
impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32_slice(s1, l1, self.name())?;
        let k = f32_slice(s2, l2, self.name())?;
        let v = f32_slice(s3, l3, self.name())?;
        let (_, h, s, d) = l1.shape().dims4()?;
        let mut out = vec![0f32; q.len()];
        if s * d > 0 {
            let inputs: Vec<_> = heads(q, s, d)
                .zip(heads(k, s, d))
                .zip(heads(v, s, d))
                .collect();
            out.par_chunks_mut(s * d)
                .zip(inputs)
                .enumerate()
                .for_each_init(
                    || vec![0f32; s * s],
                    |p, (pair, (o, ((q, k), v)))| {
                        self.head_probs(q, k, pair / h, s, p);
                        self.drop_head(pair, p);
                        serial_product(o, d, mat(p, s), mat(v, d));
                    },
                );
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, h, s, d) = q.dims4()?;
        let (qv, kv, vv, gv) = (
            Values::of(q)?,
            Values::of(k)?,
            Values::of(v)?,
            Values::of(grad)?,
        );
        let n = qv.slice().len();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        if s * d > 0 {
            let inputs: Vec<_> = heads(qv.slice(), s, d)
                .zip(heads(kv.slice(), s, d))
                .zip(heads(vv.slice(), s, d))
                .zip(heads(gv.slice(), s, d))
                .collect();
            let grads = dq
                .par_chunks_mut(s * d)
                .zip(dk.par_chunks_mut(s * d))
                .zip(dv.par_chunks_mut(s * d));
            grads.zip(inputs).enumerate().for_each_init(
                || (vec![0f32; s * s], vec![0f32; s * s]),
                |(p, work), (pair, (((dq, dk), dv), (((q, k), v), g)))| {
                    self.head_probs(q, k, pair / h, s, p);
                    // dV = dropout(P)ᵀ dO
                    work.copy_from_slice(p);
                    self.drop_head(pair, work);
                    serial_product(dv, d, mat(work, s).t(), mat(g, d));
                    // dP = dropout'(dO Vᵀ); dS = scale · P ⊙ (dP − Σ dP ⊙ P)
                    serial_product(work, s, mat(g, d), mat(v, d).t());
                    self.drop_head(pair, work);
                    for (drow, prow) in work.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                        kernels::softmax_grad_row(drow, prow, self.scale);
                    }
                    // dQ = dS K, dK = dSᵀ Q
                    serial_product(dq, d, mat(work, s), mat(k, d));
                    serial_product(dk, d, mat(work, s).t(), mat(q, d));
                },
            );
        }
        let tensor = |data| Tensor::from_vec(data, q.shape(), q.device());
        Ok((Some(tensor(dq)?), Some(tensor(dk)?), Some(tensor(dv)?)))
    }
}

/// Scaled dot-product attention for training: `dropout(softmax(q kᵀ / √d + bias)) v` over
/// `[b, heads, s, d]` tensors, `bias` broadcastable to `[b, 1, 1, s]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    mask: Option<DropoutMask>,
) -> Result<Tensor> {
    require_cpu(q, "attention")?;
    let (b, h, s, d) = q.dims4()?;
    if let Some(m) = &mask {
        if m.len != b * h * s * s {
            bail!(
                "attention: dropout mask of {} for {} weights",
                m.len,
                b * h * s * s
            );
        }
    }
    let bias = values(
        &bias
            .to_dtype(candle_core::DType::F32)?
            .broadcast_as((b, 1, 1, s))?,
    )?;
    let op = AttentionOp {
        bias,
        scale: (1.0 / (d as f64).sqrt()) as f32,
        mask,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// Layer normalisation over the last dimension, `(x − mean) / √(var + eps) · weight + bias`,
/// with the statistics recomputed in the backward pass.
struct LayerNormOp {
    eps: f32,
}

/// Mean and `√(var + eps)` of a row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let n = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(ochunk, xchunk)| {
                for (orow, xrow) in ochunk.chunks_mut(n).zip(xchunk.chunks(n)) {
                    let (mean, std) = row_stats(xrow, self.eps);
                    for (((o, x), w), b) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
                        *o = (x - mean) / std * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, dyv) = (Values::of(x)?, Values::of(w)?, Values::of(grad)?);
        let (xs, ws, dys) = (xv.slice(), wv.slice(), dyv.slice());
        let n = ws.len();
        let mut dx = vec![0f32; xs.len()];
        // Per task: partial sums of dy ⊙ x̂ and dy, added up in task order so that the result
        // does not depend on the number of threads.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(n * ROWS_PER_TASK)
            .zip(xs.par_chunks(n * ROWS_PER_TASK))
            .zip(dys.par_chunks(n * ROWS_PER_TASK))
            .map(|((dxchunk, xchunk), dychunk)| {
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                let mut xhat = vec![0f32; n];
                for ((dxrow, xrow), dyrow) in dxchunk
                    .chunks_mut(n)
                    .zip(xchunk.chunks(n))
                    .zip(dychunk.chunks(n))
                {
                    let (mean, std) = row_stats(xrow, self.eps);
                    let (mut mean_g, mut mean_gx) = (0f32, 0f32);
                    for i in 0..n {
                        xhat[i] = (xrow[i] - mean) / std;
                        let g = dyrow[i] * ws[i];
                        mean_g += g;
                        mean_gx += g * xhat[i];
                        dw[i] += dyrow[i] * xhat[i];
                        db[i] += dyrow[i];
                    }
                    mean_g /= n as f32;
                    mean_gx /= n as f32;
                    for i in 0..n {
                        let g = dyrow[i] * ws[i];
                        dxrow[i] = (g - mean_g - xhat[i] * mean_gx) / std;
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
        for (pw, pb) in partials {
            dw.iter_mut().zip(pw).for_each(|(a, p)| *a += p);
            db.iter_mut().zip(pb).for_each(|(a, p)| *a += p);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// Differentiable LayerNorm of `x` over its last dimension.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    require_cpu(x, "layer-norm")?;
    let n = x.dim(candle_core::D::Minus1)?;
    if weight.elem_count() != n || bias.elem_count() != n {
        bail!(
            "layer-norm: parameters of size {} for rows of {n}",
            weight.elem_count()
        );
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    use super::super::test_tensors::{
        max_diff, padded_attention_inputs, values, var, weighted_sum_grads,
    };
    use super::*;

    /// Every third element dropped, the rest scaled by 1 / (1 - p).
    fn mask(n: usize, p: f64) -> (DropoutMask, Tensor) {
        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut dense = vec![0f32; n];
        for i in (0..n).filter(|i| i % 3 != 0) {
            bits[i / 64] |= 1 << (i % 64);
            dense[i] = (1.0 / (1.0 - p)) as f32;
        }
        let dense = Tensor::from_vec(dense, n, &Device::Cpu).unwrap();
        (DropoutMask::new(bits, n, p), dense)
    }

    #[test]
    fn attention_matches_composed_ops_with_dropout_and_padding() {
        // s = 5: each head's part of the dropout mask starts mid-word; s = 8: on a word
        // boundary (the vectorised path).
        check_attention(2, 3, 5, 4);
        check_attention(2, 2, 8, 4);
    }

    fn check_attention(b: usize, h: usize, s: usize, d: usize) {
        // Sequences after the first: last two positions are padding.
        let (q, k, v, bias) = padded_attention_inputs(b, h, s, d);
        let (dropout, dense) = mask(b * h * s * s, 0.25);

        let fused = attention(&q, &k, &v, &bias, Some(dropout)).unwrap();
        let fused_grads = weighted_sum_grads(&fused, 4);

        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let probs =
            candle_nn::ops::softmax(&scores.broadcast_add(&bias).unwrap(), D::Minus1).unwrap();
        let dropped = (probs * dense.reshape((b, h, s, s)).unwrap()).unwrap();
        let composed = dropped.matmul(&v).unwrap();
        let composed_grads = weighted_sum_grads(&composed, 4);

        assert!(max_diff(&fused, &composed) < 1e-6);
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (fused_grads.get(x).unwrap(), composed_grads.get(x).unwrap());
            assert!(
                max_diff(a, b) < 1e-5,
                "d{name} differs by {}",
                max_diff(a, b)
            );
            assert!(
                max_diff(a, &a.zeros_like().unwrap()) > 1e-3,
                "d{name} is zero"
            );
        }
    }

    #[test]
    fn layer_norm_matches_composed_ops() {
        let (x, w, bias) = (var(&[3, 7, 16], 5), var(&[16], 6), var(&[16], 7));
        let eps = 1e-5;
        let fused = layer_norm(&x, &w, &bias, eps).unwrap();
        let fused_grads = weighted_sum_grads(&fused, 8);

        let mean = (x.sum_keepdim(D::Minus1).unwrap() / 16.0).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var_ = (centred.sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / 16.0).unwrap();
        let normed = centred
            .broadcast_div(&(var_ + eps).unwrap().sqrt().unwrap())
            .unwrap();
        let composed = normed
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let composed_grads = weighted_sum_grads(&composed, 8);

        assert!(max_diff(&fused, &composed) < 1e-5);
        for (name, t) in [("x", &x), ("weight", &w), ("bias", &bias)] {
            let (a, b) = (fused_grads.get(t).unwrap(), composed_grads.get(t).unwrap());
            assert!(
                max_diff(a, b) < 1e-4,
                "d{name} differs by {}",
                max_diff(a, b)
            );
        }
    }

    #[test]
    fn linear_matches_composed_ops() {
        // 2·70 rows: more than one parallel task of the bias-gradient sum.
        let (x, w, bias) = (var(&[2, 70, 24], 11), var(&[10, 24], 12), var(&[10], 13));
        let fused = linear(&x, &w, &bias).unwrap().unwrap();
        let fused_grads = weighted_sum_grads(&fused, 14);
        let composed = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let composed_grads = weighted_sum_grads(&composed, 14);

        assert_eq!(fused.dims(), &[2, 70, 10]);
        assert!(max_diff(&fused, &composed) < 1e-5);
        for (name, t) in [("x", &x), ("weight", &w), ("bias", &bias)] {
            let (a, b) = (fused_grads.get(t).unwrap(), composed_grads.get(t).unwrap());
            assert!(
                max_diff(a, b) < 1e-4,
                "d{name} differs by {}",
                max_diff(a, b)
            );
        }
    }

    #[test]
    fn linear_rejects_mismatched_shapes() {
        let (x, w, bias) = (var(&[3, 5], 1), var(&[4, 6], 2), var(&[4], 3));
        assert!(linear(&x, &w, &bias).is_err());
    }

    #[test]
    fn gelu_matches_candle_gelu_erf() {
        // Spans the saturated tails, where the derivative's exp underflows.
        let x = Var::from_tensor(
            &(Tensor::from_vec(values(4000, 21), (40, 100), &Device::Cpu).unwrap() * 12.0).unwrap(),
        )
        .unwrap();
        let fused = gelu(&x).unwrap().unwrap();
        let fused_grads = weighted_sum_grads(&fused, 22);
        let composed = x.gelu_erf().unwrap();
        let composed_grads = weighted_sum_grads(&composed, 22);

        assert!(max_diff(&fused, &composed) < 1e-5);
        let (a, b) = (
            fused_grads.get(&x).unwrap(),
            composed_grads.get(&x).unwrap(),
        );
        assert!(max_diff(a, b) < 1e-5, "dx differs by {}", max_diff(a, b));
    }

    #[test]
    fn dropout_masks_values_and_gradients_alike() {
        let x = var(&[4, 50], 9);
        let (m, dense) = mask(200, 0.5);
        let y = dropout(&x, m).unwrap();
        let dense = dense.reshape((4, 50)).unwrap();
        assert_eq!(max_diff(&y, &(x.as_tensor() * &dense).unwrap()), 0.0);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(max_diff(grads.get(&x).unwrap(), &dense), 0.0);
    }
}
