//! Row kernels of the fast engine: matrix products on strided views, and the element-wise
//! passes (bias, activation, residual + LayerNorm, softmax) fused so that each touches memory
//! once.
//!
//! The element-wise loops are written so that LLVM vectorises them (fixed-width lane arrays,
//! branch-free polynomial `exp`/`erf`), and are compiled by
//! [`multiversion`](mod@multiversion) once per instruction set (AVX-512, AVX2+FMA, baseline),
//! the best of which the CPU has is picked at run time. Their loops are plain `for` loops
//! rather than `for_each`/`fold`: LLVM may outline an adaptor's `fold` into a separate
//! function, which is then compiled for the baseline instruction set (SSE2) whatever the
//! caller's. Hand-written because candle's CPU ops call libm per element and allocate per op.

use gemm::Parallelism;
use multiversion::multiversion;

/// Lanes of the manual accumulators: wide enough for AVX-512, and a multiple of AVX2's 8.
const LANES: usize = 16;

/// Elements per parallel task of the element-wise passes.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// A read-only matrix view into a slice: element (r, c) is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A view of `rows × cols` elements with the given strides.
    ///
    /// # Panics
    /// If the last element lies outside `data` (a programming error, not an input error).
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        assert!(
            rows == 0
                || cols == 0
                || (rows - 1) * row_stride + (cols - 1) * col_stride < data.len(),
            "matrix view {rows}x{cols} (strides {row_stride}, {col_stride}) exceeds {} elements",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A dense row-major `rows × cols` view.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A writable row-major matrix view: element (r, c) is `data[r * row_stride + c]`, with
/// `row_stride >= cols` so that distinct elements never alias.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A view of `rows × cols` elements, rows `row_stride` apart.
    ///
    /// # Panics
    /// If rows overlap or the last element lies outside `data` (programming errors).
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(row_stride >= cols, "rows of a writable view overlap");
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * row_stride + cols <= data.len(),
            "matrix view {rows}x{cols} (row stride {row_stride}) exceeds {} elements",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }

    /// A dense row-major `rows × cols` view.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }
}

/// `dst = scale · a·b` (or `dst += scale · a·b` with `accumulate`).
///
/// `parallel` splits the product over the global rayon pool; pass `false` from inside a
/// parallel loop.
///
/// # Panics
/// If the shapes do not chain (a programming error).
pub fn matmul(dst: MatMut, a: MatRef, b: MatRef, scale: f32, accumulate: bool, parallel: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert_eq!(
        (dst.rows, dst.cols),
        (a.rows, b.cols),
        "output shape differs"
    );
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst.data[r * dst.row_stride..r * dst.row_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the constructors of `MatRef`/`MatMut` checked that every element (r, c) the
    // strides address lies inside its slice, and the asserts above that the shapes agree, so
    // gemm reads and writes only inside `a.data`, `b.data` and `dst.data`. `dst` is borrowed
    // mutably, so it cannot alias `a` or `b`, and its rows do not overlap (`row_stride >= cols`,
    // column stride 1), so no two output elements share memory. Strides fit in `isize`
    // because they index into slices, which never exceed `isize::MAX` bytes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `a·b + c`: one rounding (an FMA instruction) when `FUSED`, two otherwise. Only callers
/// compiled for FMA pass `FUSED = true`: elsewhere `mul_add` is a slow library call.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` to about 2 ulp, without branches so that loops over it vectorise. Inputs below
/// -87.3 give ~1e-38 instead of 0 and inputs above 88 are clamped; neither occurs where it
/// is used (softmax after subtracting the row maximum, erf on bounded arguments).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp`], with fused multiply-adds when `FUSED` (see [`madd`]).
#[inline(always)]
fn exp_with<const FUSED: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest (Cody–Waite), so x − n·ln2 stays exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let madd = madd::<FUSED>;
    let x = x.clamp(-87.3, 88.3);
    let t = madd(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = madd(-n, LN2_LO, madd(-n, LN2_HI, x));
    // Taylor series of e^r on |r| ≤ ln2/2, truncated after r^6 (error < 2e-7 relative).
    let p = 1.0 / 720.0;
    let p = madd(p, r, 1.0 / 120.0);
    let p = madd(p, r, 1.0 / 24.0);
    let p = madd(p, r, 1.0 / 6.0);
    let p = madd(p, r, 0.5);
    let p = madd(p, r, 1.0);
    let p = madd(p, r, 1.0);
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    p * scale
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, plus f32
/// rounding: under 5e-7 in all).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_with::<false>(x)
}

/// [`erf`], with fused multiply-adds when `FUSED` (see [`madd`]).
#[inline(always)]
fn erf_with<const FUSED: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let madd = madd::<FUSED>;
    let a = x.abs();
    let t = 1.0 / madd(P, a, 1.0);
    let poly = madd(madd(madd(madd(A5, t, A4), t, A3), t, A2), t, A1) * t;
    let y = madd(-poly, exp_with::<FUSED>(-a * a), 1.0);
    y.copysign(x)
}

/// The activation functions of the feed-forward layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Exact GELU, `x·Φ(x)` with erf.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// max(x, 0).
    Relu,
}

/// The fused forms of `exp`, GELU and tanh-GELU, for the tests of their vector forms.
#[cfg(test)]
pub(crate) fn exp_fused(x: f32) -> f32 {
    exp_with::<true>(x)
}

#[cfg(test)]
pub(crate) fn gelu_fused(x: f32) -> f32 {
    gelu_with::<true>(x)
}

#[cfg(test)]
pub(crate) fn gelu_tanh_fused(x: f32) -> f32 {
    gelu_tanh_with::<true>(x)
}

#[cfg(test)]
fn gelu(x: f32) -> f32 {
    gelu_with::<false>(x)
}

#[inline(always)]
fn gelu_with<const FUSED: bool>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_with::<FUSED>(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
fn gelu_tanh(x: f32) -> f32 {
    gelu_tanh_with::<false>(x)
}

#[inline(always)]
fn gelu_tanh_with<const FUSED: bool>(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    // tanh(y) = 1 − 2 / (e^{2y} + 1); saturates correctly at both ends.
    let tanh = 1.0 - 2.0 / (exp_with::<FUSED>(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// Applies `act` in place to every element.
pub fn activate(act: Act, data: &mut [f32]) {
    use rayon::prelude::*;
    data.par_chunks_mut(ELEMENTWISE_CHUNK)
        .for_each(|chunk| activate_serial(act, chunk));
}

#[multiversion(targets = "simd")]
fn activate_serial(act: Act, data: &mut [f32]) {
    activate_slice::<false>(act, data);
}

/// Applies `act` to every element of `data` on this thread; inlined so that it is vectorised
/// for the caller's target features. `FUSED` only where the caller is compiled for FMA.
#[inline(always)]
pub(crate) fn activate_slice<const FUSED: bool>(act: Act, data: &mut [f32]) {
    match act {
        Act::Gelu => {
            for v in data {
                *v = gelu_with::<FUSED>(*v);
            }
        }
        Act::GeluTanh => {
            for v in data {
                *v = gelu_tanh_with::<FUSED>(*v);
            }
        }
        Act::Relu => {
            for v in data {
                *v = v.max(0.0);
            }
        }
    }
}

/// `grad ← grad · gelu'(x)` in place, with `gelu'(x) = Φ(x) + x·φ(x)` (exact GELU's
/// derivative, as PyTorch's backward computes it), over the rayon pool.
pub fn gelu_backward(x: &[f32], grad: &mut [f32]) {
    use rayon::prelude::*;
    assert_eq!(x.len(), grad.len(), "gelu backward: lengths differ");
    grad.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(g, x)| gelu_backward_serial(x, g));
}

#[multiversion(targets = "simd")]
fn gelu_backward_serial(x: &[f32], grad: &mut [f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &v) in grad.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
        *g *= cdf + v * pdf;
    }
}

/// Sum of a slice with `LANES` independent accumulators (vectorises; the order of additions
/// differs from a plain loop only by rounding).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut total = 0.0;
    for a in acc {
        total += a;
    }
    let mut rest = 0.0;
    for &t in tail {
        rest += t;
    }
    total + rest
}

/// Dot product with `LANES` independent accumulators, added up as [`sum`] does.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let mut tail = 0.0;
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        tail += x * y;
    }
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut total = 0.0;
    for a in acc {
        total += a;
    }
    total + tail
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc {
        m = m.max(v);
    }
    for &v in tail {
        m = m.max(v);
    }
    m
}

/// Softmax of one row, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let m = max(row);
    for v in row.iter_mut() {
        *v = exp(*v - m);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Softmax of every row of a row-major `[rows, cols]` block, in place.
#[multiversion(targets = "simd")]
pub fn softmax_rows(data: &mut [f32], cols: usize) {
    for row in data.chunks_exact_mut(cols) {
        softmax_row(row);
    }
}

/// `row ← softmax(scale · row + bias)` for one row (`bias` of the row's length).
#[multiversion(targets = "simd")]
pub fn softmax_row_biased(row: &mut [f32], bias: &[f32], scale: f32) {
    assert_eq!(row.len(), bias.len(), "softmax: bias length differs");
    for (x, b) in row.iter_mut().zip(bias) {
        *x = *x * scale + b;
    }
    softmax_row(row);
}

/// Softmax backward for one row, in place: `d ← scale · p ⊙ (d − Σ d ⊙ p)`, where `p` is the
/// softmax output, `d` the gradient with respect to it and `scale` that of the scores.
#[multiversion(targets = "simd")]
pub fn softmax_grad_row(d: &mut [f32], p: &[f32], scale: f32) {
    assert_eq!(d.len(), p.len(), "softmax backward: lengths differ");
    let dot = dot(d, p);
    for (g, &pv) in d.iter_mut().zip(p) {
        *g = scale * pv * (*g - dot);
    }
}

/// `x ← LayerNorm(x + y)` row by row (`y` may be `None`), with `gamma`/`beta` of the row width.
/// This is the residual connection and normalisation that close every sub-layer.
pub fn add_layer_norm(x: &mut [f32], y: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) {
    use rayon::prelude::*;
    let width = gamma.len();
    let rows_per_task = (4096 / width).max(1);
    x.par_chunks_mut(rows_per_task * width)
        .enumerate()
        .for_each(|(i, xs)| {
            let start = i * rows_per_task * width;
            let ys = y.map(|y| &y[start..start + xs.len()]);
            add_layer_norm_serial(xs, ys, gamma, beta, eps)
        });
}

#[multiversion(targets = "simd")]
fn add_layer_norm_serial(x: &mut [f32], y: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    for (r, row) in x.chunks_exact_mut(width).enumerate() {
        if let Some(y) = y {
            let yr = &y[r * width..(r + 1) * width];
            for (a, b) in row.iter_mut().zip(yr) {
                *a += b;
            }
        }
        let mean = sum(row) / width as f32;
        for v in row.iter_mut() {
            *v -= mean;
        }
        let var = dot(row, row) / width as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = *v * rstd * g + b;
        }
    }
}

/// Copies `bias` into every row of a row-major `[rows, bias.len()]` block (the starting value
/// of an accumulating product, which fuses the bias add into the matmul).
pub fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            let rel = ((exp(x) - want) / want).abs();
            let rel_fused = ((exp_with::<true>(x) - want) / want).abs();
            worst = worst.max(rel).max(rel_fused);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_matches_libm() {
        let mut x = -6.0f64;
        while x < 6.0 {
            let want = libm_erf(x);
            let got = erf(x as f32) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
            x += 0.001;
        }
    }

    /// erf by its Taylor series / continued fraction in f64 (reference only).
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)), exact enough for |x| ≤ 3 in f64;
        // beyond that erf is 1 to within 2e-5 · e^-9 < 1e-8.
        if x.abs() > 3.0 {
            return x.signum() * (1.0 - erfc_asymptotic(x.abs()));
        }
        let mut term = x;
        let mut total = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            total += term / (2 * n + 1) as f64;
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn erfc_asymptotic(x: f64) -> f64 {
        let mut sum = 1.0;
        let mut term = 1.0;
        for n in 1..8 {
            term *= -((2 * n - 1) as f64) / (2.0 * x * x);
            sum += term;
        }
        (-x * x).exp() / (x * std::f64::consts::PI.sqrt()) * sum
    }

    #[test]
    fn gelu_variants_match_their_definitions() {
        for i in -400..400 {
            let x = i as f32 / 50.0;
            let exact = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - exact).abs() < 1e-6, "gelu({x})");
            let fused = gelu_with::<true>(x) as f64;
            assert!((fused - exact).abs() < 1e-6, "fused gelu({x})");
            let y =
                (2.0 / std::f64::consts::PI).sqrt() * (x as f64 + 0.044715 * (x as f64).powi(3));
            let tanh = 0.5 * x as f64 * (1.0 + y.tanh());
            assert!((gelu_tanh(x) as f64 - tanh).abs() < 1e-6, "gelu_tanh({x})");
            let fused = gelu_tanh_with::<true>(x) as f64;
            assert!((fused - tanh).abs() < 1e-6, "fused gelu_tanh({x})");
        }
    }

    #[test]
    fn softmax_and_layer_norm_match_naive_versions() {
        let cols = 37;
        let data: Vec<f32> = (0..cols * 3)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0)
            .collect();
        let mut got = data.clone();
        softmax_rows(&mut got, cols);
        for (row, out) in data.chunks(cols).zip(got.chunks(cols)) {
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            for (v, o) in row.iter().zip(out) {
                assert!((((*v as f64 - m).exp() / z) - *o as f64).abs() < 1e-6);
            }
        }

        let width = 40;
        let x: Vec<f32> = (0..width * 5)
            .map(|i| (i % 13) as f32 * 0.3 - 1.0)
            .collect();
        let y: Vec<f32> = (0..width * 5).map(|i| (i % 7) as f32 * 0.1).collect();
        let gamma: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 / 100.0).collect();
        let beta: Vec<f32> = (0..width).map(|i| i as f32 / 1000.0).collect();
        let mut got = x.clone();
        add_layer_norm(&mut got, Some(&y), &gamma, &beta, 1e-12);
        for r in 0..5 {
            let v: Vec<f64> = (0..width)
                .map(|c| (x[r * width + c] + y[r * width + c]) as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / width as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / width as f64;
            for c in 0..width {
                let want = (v[c] - mean) / (var + 1e-12).sqrt() * gamma[c] as f64 + beta[c] as f64;
                assert!((got[r * width + c] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn matmul_on_strided_views_matches_naive_product() {
        // a: 3x4 stored transposed (column-major), b: 4x5 row-major, dst rows padded to 6.
        let a_t: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..20).map(|i| (i % 7) as f32 - 3.0).collect();
        let a = MatRef::row_major(&a_t, 4, 3).t();
        let bm = MatRef::row_major(&b, 4, 5);
        let mut dst = vec![1.0f32; 3 * 6];
        matmul(MatMut::new(&mut dst, 3, 5, 6), a, bm, 2.0, true, false);
        for r in 0..3 {
            for c in 0..5 {
                let want: f32 =
                    1.0 + 2.0 * (0..4).map(|k| a_t[k * 3 + r] * b[k * 5 + c]).sum::<f32>();
                assert!((dst[r * 6 + c] - want).abs() < 1e-5);
            }
            assert_eq!(dst[r * 6 + 5], 1.0, "padding column untouched");
        }
    }
}
