//! The floating-point environment model math runs in: subnormal floats flushed to zero.
//!
//! Values below `f32::MIN_POSITIVE` (about 1.2e-38; 2.2e-308 for f64) are subnormal. Intel cores
//! take a microcode assist on every SIMD operation with a subnormal operand or result, 100 cycles
//! or more, and fine-tuning a fresh QA head makes many of them in the backward pass (small
//! gradients times small activations): a training step ran 6x slower than with them flushed.
//! On x86_64 the flush is two bits of the thread's MXCSR register: FTZ (a subnormal result
//! becomes 0) and DAZ (a subnormal operand reads as 0). Elsewhere every function here is a
//! no-op.
//!
//! Where the bits are set:
//! - threads bertqa starts for model math keep them for good: the pools built with
//!   [`pool_builder`], rayon's global pool where [`init_global_pool`] builds it (the `bertqa`
//!   binary, the Python module), the server's model workers;
//! - a thread that calls in (a Python thread, a Rust caller of the library's entry points)
//!   holds a [`FlushGuard`] for the call, which gives the thread its previous bits back when
//!   the call returns.
//!
//! `BERTQA_KEEP_SUBNORMALS=1` in the environment (read once) turns the flush off everywhere: a
//! diagnostic, to measure what the flush is worth on a CPU (`bench/subnormals.sh`).

use std::marker::PhantomData;
use std::sync::OnceLock;

/// MXCSR's flush-to-zero bit: a subnormal result is written as zero.
pub const FTZ: u32 = 1 << 15;
/// MXCSR's denormals-are-zero bit: a subnormal operand is read as zero.
pub const DAZ: u32 = 1 << 6;
/// The bits the flush sets.
pub const FLUSH_BITS: u32 = FTZ | DAZ;

/// The environment variable that turns the flush off.
pub const KEEP_SUBNORMALS_VAR: &str = "BERTQA_KEEP_SUBNORMALS";

/// Whether `BERTQA_KEEP_SUBNORMALS` turns the flush off (set to anything but empty or `0`).
pub fn keep_subnormals() -> bool {
    static KEEP: OnceLock<bool> = OnceLock::new();
    *KEEP.get_or_init(|| {
        std::env::var_os(KEEP_SUBNORMALS_VAR).is_some_and(|v| !v.is_empty() && v != "0")
    })
}

/// The current thread's MXCSR (0 off x86_64).
pub fn mxcsr() -> u32 {
    imp::update(0, 0)
}

/// Whether the current thread flushes subnormals (both bits set; always false off x86_64).
pub fn flushing() -> bool {
    mxcsr() & FLUSH_BITS == FLUSH_BITS
}

/// Sets the flush bits on the current thread for good, unless `BERTQA_KEEP_SUBNORMALS` is set.
/// For threads bertqa owns, at their start; a thread that calls in holds a [`FlushGuard`].
pub fn flush_subnormals() {
    if !keep_subnormals() {
        imp::update(FLUSH_BITS, FLUSH_BITS);
    }
}

/// Sets the flush bits on `set`, clears them on `!set`, on the current thread whatever
/// `BERTQA_KEEP_SUBNORMALS` says; returns the MXCSR from before. Only the FTZ and DAZ bits
/// change. For tests and benchmarks.
pub fn set_flush(set: bool) -> u32 {
    imp::update(FLUSH_BITS, if set { FLUSH_BITS } else { 0 })
}

/// Flushes subnormals on the current thread while it lives, and gives the thread back its
/// previous FTZ and DAZ bits when dropped; the other bits of MXCSR (rounding, exception masks)
/// are not touched, and the exception flags raised meanwhile stay raised. Guards nest. Drop it
/// on the thread that made it (it is neither `Send` nor `Sync`).
#[must_use = "the flush ends when the guard is dropped"]
pub struct FlushGuard {
    /// The bits to restore; `None` where nothing was changed.
    previous: Option<u32>,
    _same_thread: PhantomData<*const ()>,
}

impl FlushGuard {
    /// Sets the flush bits on the current thread (unless `BERTQA_KEEP_SUBNORMALS` is set).
    pub fn new() -> Self {
        let previous = if keep_subnormals() {
            None
        } else {
            let before = imp::update(FLUSH_BITS, FLUSH_BITS);
            (before & FLUSH_BITS != FLUSH_BITS).then_some(before & FLUSH_BITS)
        };
        Self {
            previous,
            _same_thread: PhantomData,
        }
    }
}

impl Default for FlushGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        if let Some(bits) = self.previous {
            imp::update(FLUSH_BITS, bits);
        }
    }
}

/// A rayon pool builder whose threads flush subnormals from their start (a `start_handler`);
/// set the thread count and names on it as usual.
pub fn pool_builder() -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().start_handler(|_| flush_subnormals())
}

/// Builds rayon's global pool from [`pool_builder`], with `threads` threads (`None`: rayon's
/// default, `RAYON_NUM_THREADS` or one per core). Fails where the global pool is running
/// already (built by the program, or by a first parallel call): its threads keep their
/// settings, and model math on them runs with subnormals.
pub fn init_global_pool(threads: Option<usize>) -> Result<(), rayon::ThreadPoolBuildError> {
    let builder = pool_builder();
    match threads {
        Some(n) => builder.num_threads(n),
        None => builder,
    }
    .build_global()
}

/// [`init_global_pool`] with rayon's default thread count, tried once per process; whether
/// this call or an earlier one built the pool. For programs in which bertqa owns rayon's
/// global pool (the Python module links its own rayon).
pub fn ensure_global_pool() -> bool {
    static BUILT: OnceLock<bool> = OnceLock::new();
    *BUILT.get_or_init(|| match init_global_pool(None) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "rayon's global pool was running already; its threads keep their floating-point settings");
            false
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod imp {
    /// Sets MXCSR to `(old & !clear) | set` and returns `old`, in one asm block.
    pub(super) fn update(clear: u32, set: u32) -> u32 {
        let mut old: u32 = 0;
        let mut new: u32 = 0;
        // SAFETY:
        // - Memory: `stmxcsr` writes 4 bytes to `old`, `ldmxcsr` reads 4 bytes from `new`; both
        //   are live, aligned, exclusively borrowed locals. The block touches no other memory and
        //   no stack (`nostack`); `tmp` is declared as clobbered. It changes EFLAGS (`and`, `or`),
        //   so `preserves_flags` is not claimed.
        // - The instructions: SSE is part of the x86_64 baseline, so `stmxcsr`/`ldmxcsr` exist on
        //   every CPU this code runs on. `ldmxcsr` faults (#GP) on a reserved bit set; the value
        //   loaded is the register's own with only FTZ (bit 15) and DAZ (bit 6) changed (callers
        //   pass `clear`/`set` within `FLUSH_BITS`), and both bits are implemented on every
        //   x86_64 CPU (AMD64 and Intel 64 both came after DAZ was introduced). Reading and
        //   writing in one block keeps the exception flags as they were, as inline assembly must.
        // - The language: Rust documents changing DAZ as undefined behaviour in the abstract,
        //   because the compiler assumes the default floating-point environment (a float
        //   operation it folds at compile time, or moves across this block, computes as if
        //   subnormals were kept). What that can change is the value of a float operation whose
        //   operand or result is below 1.2e-38 (2.2e-308 for f64): it becomes 0 or stays
        //   subnormal. It cannot change control flow or memory access through anything but a
        //   float value, and no unsafe code in bertqa derives a length, index or pointer from a
        //   float, so memory safety does not depend on which of the two values an operation
        //   gives. Rounding mode and exception masks, which the compiler's folding also assumes,
        //   are never changed here.
        unsafe {
            core::arch::asm!(
                "stmxcsr [{old}]",
                "mov {tmp:e}, dword ptr [{old}]",
                "and {tmp:e}, {keep:e}",
                "or {tmp:e}, {set:e}",
                "mov dword ptr [{new}], {tmp:e}",
                "ldmxcsr [{new}]",
                old = in(reg) &mut old as *mut u32,
                new = in(reg) &mut new as *mut u32,
                keep = in(reg) !clear,
                set = in(reg) set,
                tmp = out(reg) _,
                options(nostack),
            );
        }
        old
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    /// No flush bits to set off x86_64: MXCSR reads as 0 and nothing changes.
    pub(super) fn update(_clear: u32, _set: u32) -> u32 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// The smallest normal f32 halved: its product is subnormal.
    const TINY_PRODUCT: (f32, f32) = (f32::MIN_POSITIVE, 0.5);
    /// A subnormal f32 (below 1.2e-38).
    const SUBNORMAL: f32 = 1e-39;

    /// Products and sums with subnormal operands or results, kept from compile-time folding.
    fn subnormal_results() -> [f32; 3] {
        let (a, b) = TINY_PRODUCT;
        [
            black_box(black_box(a) * black_box(b)),
            black_box(black_box(SUBNORMAL) * black_box(1.0f32)),
            black_box(black_box(SUBNORMAL) + black_box(0.0f32)),
        ]
    }

    fn f64_subnormal_product() -> f64 {
        black_box(black_box(5e-324f64) * black_box(1.0f64))
    }

    /// Runs `f` on a fresh thread, whose MXCSR nothing else in the test binary has touched.
    fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("test thread panicked")
    }

    #[test]
    fn subnormals_survive_on_an_unflushed_thread() {
        let (flushing, results, f64_result) =
            on_fresh_thread(|| (flushing(), subnormal_results(), f64_subnormal_product()));
        assert!(!flushing, "a new thread starts with subnormals kept");
        assert!(
            results.iter().all(|&r| r != 0.0 && r.is_subnormal()),
            "{results:?}"
        );
        assert!(f64_result != 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn subnormals_become_zero_on_a_flushed_thread() {
        let (results, f64_result) = on_fresh_thread(|| {
            set_flush(true);
            assert!(flushing());
            (subnormal_results(), f64_subnormal_product())
        });
        assert_eq!(results, [0.0; 3]);
        assert_eq!(f64_result, 0.0, "DAZ applies to f64 as well");
    }

    /// Whether a subnormal added to the smallest normal changes it (a normal result: DAZ alone
    /// decides).
    fn subnormal_operand_counts() -> bool {
        black_box(black_box(SUBNORMAL) + black_box(f32::MIN_POSITIVE)) != f32::MIN_POSITIVE
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_bit_does_its_part() {
        let (ftz_only, daz_only) = on_fresh_thread(|| {
            imp::update(FLUSH_BITS, FTZ);
            let ftz = (subnormal_results(), subnormal_operand_counts());
            imp::update(FLUSH_BITS, DAZ);
            let daz = (subnormal_results(), subnormal_operand_counts());
            imp::update(FLUSH_BITS, 0);
            (ftz, daz)
        });
        // FTZ: every subnormal result is 0, but a subnormal operand is read as it is.
        assert_eq!(ftz_only, ([0.0; 3], true));
        // DAZ: a subnormal operand reads as 0; a subnormal result of normal operands stays.
        let (results, counts) = daz_only;
        assert!(results[0].is_subnormal(), "{results:?}");
        assert_eq!((&results[1..], counts), (&[0.0, 0.0][..], false));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_guard_restores_the_previous_bits_exactly() {
        on_fresh_thread(|| {
            for before in [0, FTZ, DAZ, FLUSH_BITS] {
                imp::update(FLUSH_BITS, before);
                let outside = mxcsr();
                {
                    let _guard = FlushGuard::new();
                    assert_eq!(mxcsr(), outside | FLUSH_BITS, "inside, from {before:#x}");
                    {
                        let _inner = FlushGuard::new();
                        assert!(flushing());
                    }
                    assert!(flushing(), "an inner guard leaves the outer one's bits");
                }
                // No float operation ran in between: the whole register is as it was.
                assert_eq!(mxcsr(), outside, "after, from {before:#x}");
                assert_eq!(outside & FLUSH_BITS, before);
            }
            imp::update(FLUSH_BITS, 0);
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_guard_leaves_rounding_and_masks_alone() {
        on_fresh_thread(|| {
            let outside = mxcsr();
            let guard = FlushGuard::new();
            let results = subnormal_results();
            drop(guard);
            let after = subnormal_results();
            // Bits 0-5 are exception flags, which the products may raise; the rest is control.
            assert_eq!(mxcsr() & !0x3f, outside & !0x3f);
            assert_eq!(results, [0.0; 3]);
            assert!(after.iter().all(|&r| r != 0.0), "{after:?}");
        });
    }

    #[test]
    fn pools_from_the_builder_flush_on_every_thread() {
        let pool = pool_builder().num_threads(3).build().unwrap();
        let (flags, results): (Vec<bool>, Vec<[f32; 3]>) = pool
            .broadcast(|_| (flushing(), subnormal_results()))
            .into_iter()
            .unzip();
        assert_eq!(flags.len(), 3);
        let expected = cfg!(target_arch = "x86_64") && !keep_subnormals();
        assert!(flags.iter().all(|&f| f == expected), "{flags:?}");
        if expected {
            assert!(results.iter().all(|r| *r == [0.0; 3]), "{results:?}");
        }
        // A pool built without it keeps subnormals.
        let plain = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert!(plain
            .broadcast(|_| !flushing())
            .into_iter()
            .all(|kept| kept));
    }
}
