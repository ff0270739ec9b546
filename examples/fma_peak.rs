//! The f32 multiply-add rate this CPU reaches on `THREADS` threads (default: all cores) with
//! nothing but fused multiply-adds in registers: the ceiling for any f32 matrix product here.
//! bench/archs.sh prints it beside the engines' rates.
//!
//!     cargo run --release --example fma_peak -- [THREADS]

use std::time::Instant;

/// Independent accumulators: more than FMA latency × FMA units, so the loop is bound by
/// throughput alone.
const ACCUMULATORS: usize = 16;
/// Steps per timed call.
const STEPS: u64 = 20_000_000;

fn main() {
    let threads = match std::env::args().nth(1) {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(arg) => match arg.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("error: THREADS must be a positive integer, got {arg:?}");
                std::process::exit(2);
            }
        },
    };
    let Some((lanes, run)) = kernel() else {
        eprintln!("error: this CPU has neither AVX-512F nor AVX2 + FMA");
        std::process::exit(2);
    };
    let started = Instant::now();
    let sums: Vec<f32> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(run)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0.0))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let flop = 2.0 * (threads as u64 * STEPS * ACCUMULATORS as u64 * lanes) as f64;
    // The sums are printed so that the loop cannot be optimised away.
    println!(
        "{{\"threads\": {threads}, \"lanes\": {lanes}, \"gflops\": {:.1}, \"check\": {}}}",
        flop / seconds / 1e9,
        sums.iter().sum::<f32>().is_finite()
    );
}

/// The widest FMA loop this CPU runs: (lanes per vector, the loop).
fn kernel() -> Option<(u64, fn() -> f32)> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present (checked on the line above).
            return Some((16, || unsafe { fma_avx512() }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are present (checked on the line above).
            return Some((8, || unsafe { fma_avx2() }));
        }
    }
    None
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512() -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..STEPS {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2() -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..STEPS {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    acc.iter()
        .map(|&v| {
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            lanes.iter().sum::<f32>()
        })
        .sum()
}
