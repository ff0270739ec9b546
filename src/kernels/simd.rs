//! AVX2 + FMA forms of the element-wise functions in [`super::ops`], eight lanes at a time,
//! for the inner loops of the packed kernels: the linear kernel applies the activation to its
//! result registers before storing them, and attention takes its softmax numerators here.
//!
//! Each function computes, lane by lane, exactly the operations of its scalar counterpart with
//! fused multiply-adds (`exp_with::<true>`, `gelu_with::<true>`, …), in the same order, so the
//! results are the same bits; the tests check that. Writing them with intrinsics keeps their
//! constants in registers across a loop and lets a caller keep its data in registers, which
//! the auto-vectorised scalar forms could not do from inside the kernels.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::ops::Act;

/// Lanes per vector.
pub(crate) const LANES: usize = 8;

/// `e^x` per lane: [`super::ops::exp`]'s algorithm with fused multiply-adds.
///
/// Callable without `unsafe` from code compiled for AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn exp8(x: __m256) -> __m256 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let set = |v: f32| _mm256_set1_ps(v);
    // `clamp`: the input is the second operand of max/min, so a NaN lane stays NaN.
    let x = _mm256_min_ps(set(88.3), _mm256_max_ps(set(-87.3), x));
    let t = _mm256_fmadd_ps(x, set(LOG2E), set(ROUND));
    let n = _mm256_sub_ps(t, set(ROUND));
    let r = _mm256_fnmadd_ps(n, set(LN2_LO), _mm256_fnmadd_ps(n, set(LN2_HI), x));
    let mut p = set(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, set(c));
    }
    let n_int = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(ROUND.to_bits() as i32),
    );
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
}

/// The error function per lane: [`super::ops::erf`]'s algorithm with fused multiply-adds.
///
/// Callable without `unsafe` from code compiled for AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn erf8(x: __m256) -> __m256 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let set = |v: f32| _mm256_set1_ps(v);
    let sign = set(-0.0);
    let one = set(1.0);
    let a = _mm256_andnot_ps(sign, x);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(set(P), a, one));
    let mut poly = set(A[4]);
    for c in [A[3], A[2], A[1], A[0]] {
        poly = _mm256_fmadd_ps(poly, t, set(c));
    }
    let poly = _mm256_mul_ps(poly, t);
    // `-a * a` negates first; the product's magnitude is the same either way.
    let e = exp8(_mm256_mul_ps(_mm256_xor_ps(a, sign), a));
    let y = _mm256_fnmadd_ps(poly, e, one);
    _mm256_or_ps(_mm256_andnot_ps(sign, y), _mm256_and_ps(sign, x))
}

/// `act` per lane, as [`super::ops`]'s fused scalar forms compute it.
///
/// Callable without `unsafe` from code compiled for AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn activate8(act: Act, x: __m256) -> __m256 {
    let set = |v: f32| _mm256_set1_ps(v);
    let one = set(1.0);
    match act {
        Act::Gelu => {
            let erf = erf8(_mm256_mul_ps(x, set(std::f32::consts::FRAC_1_SQRT_2)));
            _mm256_mul_ps(_mm256_mul_ps(set(0.5), x), _mm256_add_ps(one, erf))
        }
        Act::GeluTanh => {
            // 0.044715·x·x·x, then √(2/π)·(x + that), each product rounded as written.
            let cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(set(0.044_715), x), x), x);
            let y = _mm256_mul_ps(set(0.797_884_6), _mm256_add_ps(x, cube));
            let e = exp8(_mm256_mul_ps(set(2.0), y));
            let tanh = _mm256_sub_ps(one, _mm256_div_ps(set(2.0), _mm256_add_ps(e, one)));
            _mm256_mul_ps(_mm256_mul_ps(set(0.5), x), _mm256_add_ps(one, tanh))
        }
        // `f32::max(x, 0)` gives 0 for NaN, as does `max_ps` with x first.
        Act::Relu => _mm256_max_ps(x, _mm256_setzero_ps()),
    }
}

/// `row ← e^(row − max(row))` in place, returning the sum of the new values (the softmax's
/// denominator, for callers that fold the division into a later step).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_shifted(row: &mut [f32]) -> f32 {
    let (body, tail) = row.split_at_mut(row.len() - row.len() % LANES);
    let mut m = f32::NEG_INFINITY;
    if !body.is_empty() {
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        for chunk in body.chunks_exact(LANES) {
            // SAFETY: the chunk holds LANES values; AVX is enabled here.
            acc = _mm256_max_ps(acc, unsafe { _mm256_loadu_ps(chunk.as_ptr()) });
        }
        m = horizontal(acc, f32::max);
    }
    m = tail.iter().fold(m, |m, &v| m.max(v));
    let shift = _mm256_set1_ps(m);
    let mut sum = _mm256_setzero_ps();
    for chunk in body.chunks_exact_mut(LANES) {
        // SAFETY: the chunk holds LANES values; AVX2/FMA are enabled here.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), shift));
            _mm256_storeu_ps(chunk.as_mut_ptr(), e);
            sum = _mm256_add_ps(sum, e);
        }
    }
    let mut total = horizontal(sum, |a, b| a + b);
    for v in tail {
        *v = _mm256_cvtss_f32(exp8(_mm256_set1_ps(*v - m)));
        total += *v;
    }
    total
}

/// The transpose of an 8 × 8 block held as eight row vectors: lane `c` of output `r` is lane
/// `r` of input `c`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn transpose8x8(rows: [__m256; 8]) -> [__m256; 8] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves exchanged.
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// The eight lanes folded with `f`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn horizontal(v: __m256, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds LANES values; AVX is enabled here.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    let half: [f32; 4] = std::array::from_fn(|i| f(lanes[i], lanes[i + 4]));
    f(f(half[0], half[2]), f(half[1], half[3]))
}

#[cfg(test)]
mod tests {
    use super::super::not_run::not_run;
    use super::super::ops::{exp_fused, gelu_fused, gelu_tanh_fused};
    use super::*;

    fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Inputs across the ranges the callers see, both tails and special values.
    fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 1e-3).collect();
        xs.extend((-2_000..=2_000).map(|i| i as f32 * 0.05));
        xs.extend([
            0.0, -0.0, 1e-40, -1e-40, 87.2, -87.2, 88.5, -88.5, 1e6, -1e6,
        ]);
        xs.extend([f32::MIN_POSITIVE, f32::INFINITY, f32::NEG_INFINITY]);
        xs
    }

    fn lanes(f: impl Fn(__m256) -> __m256, xs: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(xs.len());
        for chunk in xs.chunks(LANES) {
            let mut v = [0f32; LANES];
            v[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: `v` holds LANES values.
            let r = f(unsafe { _mm256_loadu_ps(v.as_ptr()) });
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), r) };
            out.extend_from_slice(&v[..chunk.len()]);
        }
        out
    }

    fn assert_same_bits(name: &str, got: &[f32], xs: &[f32], want: impl Fn(f32) -> f32) {
        for (&x, &g) in xs.iter().zip(got) {
            let w = want(x);
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{name}({x:e}): vector {g:e}, scalar {w:e}"
            );
        }
    }

    #[test]
    fn vector_functions_give_the_scalar_bits() {
        if !available() {
            not_run(
                "vector_functions_give_the_scalar_bits",
                "the whole test",
                "AVX2/FMA",
            );
            return;
        }
        let xs = inputs();
        // SAFETY: AVX2 and FMA were checked above.
        let exp = lanes(|v| unsafe { exp8(v) }, &xs);
        assert_same_bits("exp", &exp, &xs, exp_fused);
        // SAFETY: as above.
        let gelu = lanes(|v| unsafe { activate8(Act::Gelu, v) }, &xs);
        assert_same_bits("gelu", &gelu, &xs, gelu_fused);
        // SAFETY: as above.
        let tanh = lanes(|v| unsafe { activate8(Act::GeluTanh, v) }, &xs);
        assert_same_bits("gelu_tanh", &tanh, &xs, gelu_tanh_fused);
        // SAFETY: as above.
        let relu = lanes(|v| unsafe { activate8(Act::Relu, v) }, &xs);
        assert_same_bits("relu", &relu, &xs, |x| x.max(0.0));
    }

    #[test]
    fn transpose8x8_transposes() {
        if !available() {
            not_run("transpose8x8_transposes", "the whole test", "AVX2/FMA");
            return;
        }
        let m: Vec<f32> = (0..64).map(|i| i as f32).collect();
        // SAFETY: AVX2 and FMA were checked above; each row holds 8 values.
        let rows = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(m[r * 8..].as_ptr()) });
        // SAFETY: as above.
        let t = unsafe { transpose8x8(rows) };
        for (r, v) in t.iter().enumerate() {
            let mut got = [0f32; 8];
            // SAFETY: `got` holds 8 values.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), *v) };
            for (c, &g) in got.iter().enumerate() {
                assert_eq!(g, m[c * 8 + r], "row {r} column {c}");
            }
        }
    }

    #[test]
    fn exp_shifted_matches_the_definition() {
        if !available() {
            not_run(
                "exp_shifted_matches_the_definition",
                "the whole test",
                "AVX2/FMA",
            );
            return;
        }
        for n in [1usize, 7, 8, 9, 16, 23, 169] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 1.7).collect();
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut got = row.clone();
            // SAFETY: AVX2 and FMA were checked above.
            let total = unsafe { exp_shifted(&mut got) };
            let mut want_total = 0f64;
            for (&x, &g) in row.iter().zip(&got) {
                let want = (x as f64 - max).exp();
                want_total += want;
                assert!(
                    (g as f64 - want).abs() <= 5e-7 * want,
                    "n {n}: {g} vs {want}"
                );
            }
            assert!((total as f64 - want_total).abs() <= 1e-6 * want_total);
        }
    }
}
