//! The multiply-add rates this CPU reaches on `THREADS` threads (default: all cores) with
//! nothing but multiply-adds in registers: the ceilings for any matrix product here.
//! bench/archs.sh prints them beside the engines' rates.
//!
//!     cargo run --release --example fma_peak -- [THREADS]
//!
//! - f32: fused multiply-adds on the widest vectors (AVX-512F, else AVX2 + FMA), timed with 8,
//!   12, 16 and 24 independent accumulators (enough to cover FMA latency × FMA units on every
//!   x86 core so far, without spilling registers); the best is the ceiling, and each is
//!   printed so that a figure bound by latency or spills shows as such.
//! - int8: `vpdpbusd` (AVX-512 VNNI, u8 × i8 → i32) where the CPU has it, the same way.
//!
//! One JSON object: `gflops` (the f32 ceiling), `gflops_by_accumulators`, and where VNNI runs
//! `vnni_gops` / `vnni_gops_by_accumulators` (one multiply and one add count as two operations).

use std::time::Instant;

/// Steps per timed call (each step: one multiply-add per accumulator).
const STEPS: u64 = 10_000_000;

/// One timed loop: the lanes per vector and the loop itself (returns a value that depends on
/// every accumulator, so that nothing is optimised away).
struct Loop {
    accumulators: usize,
    lanes: u64,
    /// Built only by [`f32_loops`] and [`vnni_loops`], after the CPU was found to have the
    /// instructions it uses: that is what makes calling it sound.
    run: unsafe fn() -> f32,
}

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
    let f32_loops = f32_loops();
    if f32_loops.is_empty() {
        eprintln!("error: this CPU has neither AVX-512F nor AVX2 + FMA");
        std::process::exit(2);
    }
    let f32_rates: Vec<(usize, f64)> = f32_loops.iter().map(|l| rate(l, threads)).collect();
    let mut json = format!(
        "{{\"threads\": {threads}, \"lanes\": {}, \"gflops\": {:.1}, \"gflops_by_accumulators\": {}",
        f32_loops[0].lanes,
        best(&f32_rates),
        by_accumulators(&f32_rates)
    );
    let vnni = vnni_loops();
    if !vnni.is_empty() {
        let rates: Vec<(usize, f64)> = vnni.iter().map(|l| rate(l, threads)).collect();
        json.push_str(&format!(
            ", \"vnni_gops\": {:.1}, \"vnni_gops_by_accumulators\": {}",
            best(&rates),
            by_accumulators(&rates)
        ));
    }
    json.push('}');
    println!("{json}");
}

/// Runs `l` on `threads` threads at once: (accumulators, billions of operations per second).
fn rate(l: &Loop, threads: usize) -> (usize, f64) {
    let started = Instant::now();
    let finite = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    // SAFETY: `run` uses only instructions detected when its Loop was built.
                    unsafe { (l.run)() }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f32::NAN))
            .all(f32::is_finite)
    });
    let seconds = started.elapsed().as_secs_f64();
    if !finite {
        eprintln!(
            "warning: a loop of {} accumulators gave a non-finite sum",
            l.accumulators
        );
    }
    let ops = 2.0 * (threads as u64 * STEPS * l.accumulators as u64 * l.lanes) as f64;
    (l.accumulators, ops / seconds / 1e9)
}

fn best(rates: &[(usize, f64)]) -> f64 {
    rates.iter().map(|r| r.1).fold(0.0, f64::max)
}

fn by_accumulators(rates: &[(usize, f64)]) -> String {
    let items: Vec<String> = rates
        .iter()
        .map(|(n, r)| format!("\"{n}\": {r:.1}"))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// The f32 loops of the widest vectors this CPU runs.
fn f32_loops() -> Vec<Loop> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // Checked on the line above: AVX-512F.
            return vec![
                timed_loop(8, 16, fma_avx512::<8>),
                timed_loop(12, 16, fma_avx512::<12>),
                timed_loop(16, 16, fma_avx512::<16>),
                timed_loop(24, 16, fma_avx512::<24>),
            ];
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // Checked on the line above: AVX2 and FMA.
            // 16 vector registers: 12 accumulators and the two constants fit, 24 would spill.
            return vec![
                timed_loop(8, 8, fma_avx2::<8>),
                timed_loop(10, 8, fma_avx2::<10>),
                timed_loop(12, 8, fma_avx2::<12>),
            ];
        }
    }
    Vec::new()
}

fn timed_loop(accumulators: usize, lanes: u64, run: unsafe fn() -> f32) -> Loop {
    Loop {
        accumulators,
        lanes,
        run,
    }
}

/// The VNNI loops, where the CPU has AVX-512 VNNI (64 u8 × i8 products per instruction, summed
/// in fours into 16 i32 lanes: 64 multiply-adds).
fn vnni_loops() -> Vec<Loop> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
            // Checked on the line above: AVX-512F and AVX-512 VNNI.
            return vec![
                timed_loop(8, 64, dpbusd_avx512::<8>),
                timed_loop(12, 64, dpbusd_avx512::<12>),
                timed_loop(16, 64, dpbusd_avx512::<16>),
                timed_loop(24, 64, dpbusd_avx512::<24>),
            ];
        }
    }
    Vec::new()
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512<const N: usize>() -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); N];
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
unsafe fn fma_avx2<const N: usize>() -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); N];
    for _ in 0..STEPS {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    acc.iter()
        .map(|&v| {
            // SAFETY: `lanes` holds the 8 floats the store writes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
            lanes.iter().sum::<f32>()
        })
        .sum()
}

/// # Safety
/// The CPU must support AVX-512F and AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd_avx512<const N: usize>() -> f32 {
    use std::arch::x86_64::*;
    // Products of 1 × 1 summed in fours: each step adds 4 to every lane; i32 wraps, which
    // changes nothing about the timing.
    let (a, b) = (_mm512_set1_epi8(1), _mm512_set1_epi8(1));
    let mut acc = [_mm512_setzero_si512(); N];
    for _ in 0..STEPS {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_epi32(v) as f32).sum()
}
