//! Int8 `QuantizedLinear::forward` (activation quantization included) against an `f32`
//! `gemm::gemm` of the same shape and the pre-packed `f32` kernel (`PackedWeights`), for the linear layers of BERT-base and MiniLM at 384 tokens.
//!
//! Run with `cargo bench --bench linear`.

use bertqa::kernels::int8::QuantizedLinear;
use bertqa::kernels::sgemm::PackedWeights;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gemm::Parallelism;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

/// Rows (tokens) of every benchmark: one 384-token sequence.
const ROWS: usize = 384;

/// `(name, in_features, out_features)` of the benchmarked layers.
const SHAPES: &[(&str, usize, usize)] = &[
    ("bert_qkv", 768, 2304),
    ("bert_attn_out", 768, 768),
    ("bert_ffn_in", 768, 3072),
    ("bert_ffn_out", 3072, 768),
    ("minilm_qkv", 384, 1152),
    ("minilm_ffn_in", 384, 1536),
    ("minilm_ffn_out", 1536, 384),
];

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `dst = x·Wᵀ` with `x` row-major `[m, k]` and `w` row-major `[n, k]`, as candle's matmul
/// calls gemm for a linear layer.
fn f32_linear(x: &[f32], w: &[f32], dst: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(x.len() == m * k && w.len() == n * k && dst.len() == m * n);
    // SAFETY: the asserted lengths cover every element the strides below address:
    // dst[i·n + j], x[i·k + l] and w[j·k + l] for i < m, j < n, l < k.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        )
    }
}

fn linear(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for &(name, k, n) in SHAPES {
        let x = random(&mut rng, ROWS * k, 2.0);
        let w = random(&mut rng, n * k, 0.05);
        let b = random(&mut rng, n, 0.1);
        let layer = QuantizedLinear::new(&w, Some(&b), n, k);
        let mut out = vec![0f32; ROWS * n];

        let mut group = c.benchmark_group(format!("linear/{name}_{k}x{n}"));
        group.throughput(Throughput::Elements((ROWS * k * n) as u64));
        group.bench_function(BenchmarkId::from_parameter("int8"), |bench| {
            bench.iter(|| layer.forward(black_box(&x), ROWS, black_box(&mut out)))
        });
        group.bench_function(BenchmarkId::from_parameter("f32_gemm"), |bench| {
            bench.iter(|| {
                f32_linear(
                    black_box(&x),
                    black_box(&w),
                    black_box(&mut out),
                    ROWS,
                    k,
                    n,
                )
            })
        });
        if PackedWeights::available() {
            let packed = PackedWeights::pack(&w, n, k);
            group.bench_function(BenchmarkId::from_parameter("f32_packed"), |bench| {
                bench.iter(|| packed.accumulate(black_box(&x), ROWS, black_box(&mut out)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, linear);
criterion_main!(benches);
