//! `f32` product against weights packed once at load, for AVX2 + FMA CPUs.
//!
//! A linear layer multiplies the same weight matrix on every call. The `gemm` crate behind
//! candle (like `matrixmultiply`) repacks that matrix into cache-sized panels on every call and
//! has no API to keep the packed form. So this module packs the weights once, in
//! [`PackedWeights::pack`], into panels of 16 output channels laid out `[k][16]`, and multiplies
//! them with a 6 × 16 register-blocked micro kernel (12 accumulators, the shape of BLIS's
//! Haswell kernel). Only the activations are packed per call, in blocks that stay in L2.
//!
//! CPUs with AVX-512 run a 6 × 64 kernel instead (four panels at a time, 24 accumulators of 16
//! lanes), on the same packed layout. Against the `gemm` crate's 512-bit kernels, which repack
//! the weights on every call, it saves most at short inputs: BERT-base at 384 tokens, batch 1.

use rayon::prelude::*;

use super::ops::{activate_slice, fill_rows, Act};
#[cfg(target_arch = "x86_64")]
use super::simd::{activate8, transpose8x8};

/// Output channels per packed panel: two 8-lane vectors.
const NR: usize = 16;
/// Rows per micro tile.
const MR: usize = 6;
/// Most `k` values per block: a panel's block (`KC·NR` floats, 32 KiB) stays in L1 or close.
const KC: usize = 512;
/// Largest row block of one parallel task: its packed activations (`MC·KC` floats) stay in L2.
const MC_MAX: usize = 192;

/// A `[n, k]` weight matrix (HF `nn.Linear` layout) packed for [`PackedWeights::accumulate`].
#[derive(Clone, Debug)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    /// `[panel][k][NR]`: panel `p` holds output channels `16p..16p+16`, zero beyond `n`.
    data: Vec<f32>,
}

impl PackedWeights {
    /// Whether this CPU runs the packed kernel (AVX2 and FMA; the 512-bit one with AVX-512F).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The f32 product this CPU runs, in words (for logs).
    pub fn kernel_description() -> &'static str {
        if !Self::available() {
            "gemm crate"
        } else if Self::wide() {
            "AVX-512, packed weights"
        } else {
            "AVX2 + FMA, packed weights"
        }
    }

    /// Whether this CPU runs the 6 × 64 AVX-512 kernel (AVX-512F; attention's products use
    /// 512-bit vectors there too).
    pub(crate) fn wide() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Packs `weight`, row-major `[n, k]`.
    ///
    /// # Panics
    /// If `weight.len() != n·k`.
    pub fn pack(weight: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            weight.len(),
            n * k,
            "PackedWeights::pack: weight is not [n, k]"
        );
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        if k > 0 {
            for (j, row) in weight.chunks_exact(k).enumerate() {
                let panel = &mut data[(j / NR) * k * NR..][..k * NR];
                for (kk, &w) in row.iter().enumerate() {
                    panel[kk * NR + j % NR] = w;
                }
            }
        }
        Self { n, k, data }
    }

    /// Packs the `[n, k]` weight from its row-major `[k, n]` transpose `weight_t`, which is
    /// read row by row (for a product with `Wᵀ`, pass `W` itself).
    ///
    /// # Panics
    /// If `weight_t.len() != n·k`.
    pub fn pack_transposed(weight_t: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            weight_t.len(),
            n * k,
            "PackedWeights::pack_transposed: weight is not [k, n]"
        );
        let mut data = vec![0f32; n.div_ceil(NR) * k * NR];
        if n > 0 {
            for (kk, row) in weight_t.chunks_exact(n).enumerate() {
                for (p, channels) in row.chunks(NR).enumerate() {
                    data[(p * k + kk) * NR..][..channels.len()].copy_from_slice(channels);
                }
            }
        }
        Self { n, k, data }
    }

    /// The weights, row-major `[n, k]` again.
    pub fn unpack(&self) -> Vec<f32> {
        let mut weight = vec![0f32; self.n * self.k];
        if self.k > 0 {
            for (j, row) in weight.chunks_exact_mut(self.k).enumerate() {
                let panel = &self.data[(j / NR) * self.k * NR..][..self.k * NR];
                for (kk, w) in row.iter_mut().enumerate() {
                    *w = panel[kk * NR + j % NR];
                }
            }
        }
        weight
    }

    /// Output channels (`n`).
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features (`k`).
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// `out += x · Wᵀ` for `x` row-major `[rows, k]` and `out` row-major `[rows, n]`, split
    /// over the rayon pool by row blocks.
    ///
    /// # Panics
    /// If the slice lengths do not match, or [`PackedWeights::available`] is false.
    pub fn accumulate(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.product(x, rows, out, None, None, Self::wide());
    }

    /// `out = act(x · Wᵀ + bias)`, overwriting `out`: the bias is the sums' starting value and
    /// the activation is applied to each tile in registers before it is stored, so neither
    /// costs a pass over `out`. Each element is computed exactly as by filling `out` with the
    /// bias, calling [`PackedWeights::accumulate`] and then applying `act` (evaluated with
    /// fused multiply-adds).
    ///
    /// # Panics
    /// If the slice lengths do not match, `bias` is not `[n]`, or
    /// [`PackedWeights::available`] is false.
    pub fn forward(&self, x: &[f32], rows: usize, bias: &[f32], act: Option<Act>, out: &mut [f32]) {
        assert_eq!(bias.len(), self.n, "PackedWeights: bias is not [n]");
        self.product(x, rows, out, Some(bias), act, Self::wide());
    }

    /// The product, on the AVX-512 kernel if `wide` (which must then be [`Self::wide`]).
    fn product(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        bias: Option<&[f32]>,
        act: Option<Act>,
        wide: bool,
    ) {
        assert!(
            !wide || Self::wide(),
            "PackedWeights: this CPU lacks AVX-512F"
        );
        assert_eq!(x.len(), rows * self.k, "PackedWeights: x is not [rows, k]");
        assert_eq!(
            out.len(),
            rows * self.n,
            "PackedWeights: out is not [rows, n]"
        );
        assert!(Self::available(), "PackedWeights: this CPU lacks AVX2/FMA");
        if rows == 0 || self.n == 0 {
            return;
        }
        if self.k == 0 {
            // No products: what remains is the bias and the activation.
            if let Some(bias) = bias {
                fill_rows(out, bias);
            }
            if let Some(act) = act {
                activate_slice::<true>(act, out);
            }
            return;
        }
        // Equal row blocks, a whole number of them per thread: a lone short block at the end
        // would leave one thread idle while the other finishes.
        let threads = rayon::current_num_threads().max(1);
        let blocks = rows.div_ceil(MC_MAX).div_ceil(threads) * threads;
        let mc = rows.div_ceil(blocks).next_multiple_of(MR).min(MC_MAX);
        out.par_chunks_mut(mc * self.n)
            .zip(x.par_chunks(mc * self.k))
            .for_each(|(out_block, x_block)| {
                // SAFETY: `available()` was asserted above (AVX2 and FMA present), and `wide`
                // only where `Self::wide()` (AVX-512F present).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    if wide {
                        self.row_block_avx512(x_block, out_block, bias, act)
                    } else {
                        self.row_block_avx2(x_block, out_block, bias, act)
                    }
                }
            });
    }

    /// [`Self::row_block`] with the 6 × 16 AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row_block_avx2(
        &self,
        x: &[f32],
        out: &mut [f32],
        bias: Option<&[f32]>,
        act: Option<Act>,
    ) {
        // SAFETY: the caller guarantees AVX2/FMA, which `kernel` needs; `row_block` calls the
        // closure only with tiles that meet the rest of `kernel`'s contract.
        unsafe { self.row_block::<1>(x, out, bias, act, |tile| kernel(tile)) }
    }

    /// [`Self::row_block`] with the 6 × 64 AVX-512 kernel.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn row_block_avx512(
        &self,
        x: &[f32],
        out: &mut [f32],
        bias: Option<&[f32]>,
        act: Option<Act>,
    ) {
        // SAFETY: for all four widths, the caller guarantees AVX2/FMA/AVX-512F, which `kernel_avx512`
        // needs; `row_block` calls the closure only with tiles that meet the rest of its
        // contract, and `tile.panels` picks the matching `P`.
        unsafe {
            self.row_block::<WIDE_PANELS>(x, out, bias, act, |tile| match tile.panels {
                1 => kernel_avx512::<1>(tile),
                2 => kernel_avx512::<2>(tile),
                3 => kernel_avx512::<3>(tile),
                _ => kernel_avx512::<4>(tile),
            })
        }
    }

    /// One task: all output channels of a block of at most `MC_MAX` rows, in micro tiles of
    /// `MR` rows × up to `P` panels, each computed by `kernel`. Every tile passed to `kernel`
    /// meets the micro kernels' contract: `a` holds `kc·MR` values, `b` reaches `kc·NR` values
    /// into each of its `panels` panels, and `c` is valid for `MR` rows of `panels·NR` values.
    ///
    /// # Safety
    /// The CPU must support what `kernel` needs, besides AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn row_block<const P: usize>(
        &self,
        x: &[f32],
        out: &mut [f32],
        bias: Option<&[f32]>,
        act: Option<Act>,
        kernel: impl Fn(Tile),
    ) {
        let (n, k) = (self.n, self.k);
        let rows = x.len() / k;
        let tiles = rows.div_ceil(MR);
        // Equal k blocks: 384 is one block, not 256 + a half-empty 128.
        let kc_max = k.div_ceil(k.div_ceil(KC));
        // Each worker keeps its packing buffer: a fresh one per call (~400 KB) cost page faults
        // and zeroing on every product.
        thread_local! {
            static PACKED_X: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut packed_x = PACKED_X.take();
        packed_x.resize(packed_x.len().max(tiles * MR * kc_max + PACK_SLACK), 0.0);
        for k0 in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - k0);
            // SAFETY: the CPU supports AVX2 and FMA (this function's contract).
            unsafe { pack_k_block(x, k, k0, kc, &mut packed_x) };
            // The first k block starts the sums from the bias (or from `out`), the last one
            // applies the activation.
            let block = KBlock {
                k0,
                kc,
                rows,
                packed: &packed_x,
                bias: if k0 == 0 { bias } else { None },
                act: if k0 + kc == k { act } else { None },
            };
            let panels = n.div_ceil(NR);
            for first_panel in (0..panels).step_by(P) {
                let group = P.min(panels - first_panel);
                self.panel_group(&block, first_panel, group, out, &kernel);
            }
        }
        PACKED_X.set(packed_x);
    }

    /// One k block of a row block against the `group` panels from `first_panel`: every row
    /// tile through `kernel`, each meeting the contract stated at [`Self::row_block`]. Edge
    /// tiles (fewer than `MR` rows, or a partial panel) run on a copy.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn panel_group(
        &self,
        block: &KBlock,
        first_panel: usize,
        group: usize,
        out: &mut [f32],
        kernel: &impl Fn(Tile),
    ) {
        let (n, k) = (self.n, self.k);
        let KBlock {
            k0,
            kc,
            rows,
            packed,
            bias,
            act,
        } = *block;
        let weights = &self.data[first_panel * k * NR..][..group * k * NR];
        let weights = &weights[k0 * NR..];
        let col0 = first_panel * NR;
        let cols = (group * NR).min(n - col0);
        // The bias of a partial panel is padded to NR (its extra sums are dropped).
        let mut bias_tile = [0f32; WIDE_PANELS * NR];
        let start = match bias {
            Some(b) => {
                bias_tile[..cols].copy_from_slice(&b[col0..col0 + cols]);
                Start::Bias(&bias_tile)
            }
            None => Start::Accumulate,
        };
        for t in 0..rows.div_ceil(MR) {
            let a = &packed[t * kc * MR..][..kc * MR];
            let r0 = t * MR;
            let tile_rows = MR.min(rows - r0);
            let tile = |c: *mut f32, ldc: usize| Tile {
                kc,
                a,
                b: weights,
                panel_stride: k * NR,
                panels: group,
                c,
                ldc,
                start,
                act,
            };
            if tile_rows == MR && cols == group * NR {
                // SAFETY: `a` holds kc·MR values and `weights` reaches kc·NR values into each
                // of the `group` panels; the C tile spans rows r0..r0+MR (≤ rows) and columns
                // col0..col0+group·NR (≤ n) of `out`, whose row stride is n, so its last
                // element lies inside `out`.
                kernel(tile(unsafe { out.as_mut_ptr().add(r0 * n + col0) }, n));
            } else {
                // Edge tile: run on a full-size copy, write back the valid part.
                let (edge_rows, edge_cols) = (r0..r0 + tile_rows, col0..col0 + cols);
                on_edge_tile(out, n, edge_rows, edge_cols, group * NR, |c, ldc| {
                    kernel(tile(c, ldc))
                });
            }
        }
    }
}

/// One k block of a row block, as [`PackedWeights::panel_group`] reads it.
#[derive(Clone, Copy)]
struct KBlock<'a> {
    /// First `k` of the block.
    k0: usize,
    /// Its length.
    kc: usize,
    /// Rows of the row block.
    rows: usize,
    /// The block's packed activations, `[tile][kc][MR]` (see [`pack_k_block`]).
    packed: &'a [f32],
    /// The bias the sums start from (the first k block only), else they start from `out`.
    bias: Option<&'a [f32]>,
    /// The activation applied to the sums (the last k block only).
    act: Option<Act>,
}

/// Packs the activations `x[.., k0..k0 + kc]` (row-major, `k` per row) as `[tile][kc][MR]`,
/// written in order (the six source rows are read as sequential streams). Rows past the end
/// repeat the last row: their sums are never written back.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pack_k_block(x: &[f32], k: usize, k0: usize, kc: usize, packed: &mut [f32]) {
    let rows = x.len() / k;
    for t in 0..rows.div_ceil(MR) {
        let r0 = t * MR;
        let last = rows - r0 - 1;
        let row = |r: usize| &x[(r0 + r.min(last)) * k + k0..][..kc];
        // Spelled out: `array::from_fn` here was left as a call, not inlined.
        let src: [&[f32]; MR] = [row(0), row(1), row(2), row(3), row(4), row(5)];
        // SAFETY: AVX2/FMA are enabled (the caller's contract); the slice has the slack
        // `pack_tile` needs (the buffer holds PACK_SLACK values past the last tile).
        unsafe { pack_tile(src, &mut packed[t * kc * MR..][..kc * MR + PACK_SLACK]) };
    }
}

/// Runs `kernel` on an edge tile of `out` (row stride `n`): the rows `rows` (at most `MR`) and
/// columns `cols` are copied into a full-size tile of `MR` rows of `width` values, which
/// `kernel` gets (pointer and row stride), and the valid part is written back.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn on_edge_tile(
    out: &mut [f32],
    n: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    width: usize,
    kernel: impl FnOnce(*mut f32, usize),
) {
    let (r0, col0, cols) = (rows.start, cols.start, cols.len());
    let mut c = [0f32; MR * WIDE_PANELS * NR];
    for r in 0..rows.len() {
        let at = (r0 + r) * n + col0;
        c[r * width..r * width + cols].copy_from_slice(&out[at..at + cols]);
    }
    // The kernel's C tile is `c`: MR rows of `width` ≤ WIDE_PANELS·NR values.
    kernel(c.as_mut_ptr(), width);
    for r in 0..rows.len() {
        let at = (r0 + r) * n + col0;
        out[at..at + cols].copy_from_slice(&c[r * width..r * width + cols]);
    }
}

/// Values [`pack_tile`] may write past the tile it packs.
const PACK_SLACK: usize = 2;

/// `dst[kk·6 + r] = src[r][kk]` for `kk < kc` (the row length): six rows interleaved, 8 × 8
/// blocks at a time through registers (two zero rows fill the block). Each of a block's 8
/// column stores writes 8 values of which the last 2 fall on the next column's slots and are
/// overwritten by the next store, so `dst` must hold `kc·6 + PACK_SLACK` values.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_tile(src: [&[f32]; MR], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let kc = src[0].len();
    assert!(src.iter().all(|r| r.len() == kc) && dst.len() == kc * MR + PACK_SLACK);
    let body = kc - kc % 8;
    for kk0 in (0..body).step_by(8) {
        let zero = _mm256_setzero_ps();
        let block = std::array::from_fn(|r| match src.get(r) {
            // SAFETY: kk0 + 8 ≤ kc, so each row has 8 values from kk0.
            Some(row) => unsafe { _mm256_loadu_ps(row[kk0..kk0 + 8].as_ptr()) },
            None => zero,
        });
        // SAFETY: AVX2/FMA are enabled here.
        let columns = unsafe { transpose8x8(block) };
        for (t, column) in columns.into_iter().enumerate() {
            // 8 values from (kk0 + t)·6: at most (kc − 1)·6 + 8 = kc·6 + 2 = dst.len().
            let at = &mut dst[(kk0 + t) * MR..][..8];
            // SAFETY: `at` holds 8 values.
            unsafe { _mm256_storeu_ps(at.as_mut_ptr(), column) };
        }
    }
    for kk in body..kc {
        for (r, row) in src.iter().enumerate() {
            dst[kk * MR + r] = row[kk];
        }
    }
}

/// `Σ_{kk<k} a(r, kk) · b[kk·ldb .. kk·ldb + 16]` for the 6 rows `r`, as 6 × 2 vectors: the
/// register-blocked core of the linear kernel and of attention (12 FMAs per step on 12
/// independent accumulators). `a(r, kk)` addresses the left operand, packed or in place.
///
/// # Safety
/// The CPU must support AVX2 and FMA; for every `r < 6` and `kk < k`, `a(r, kk)` must point to
/// a readable `f32` and `b` must be valid for reads of `(k − 1)·ldb + 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn product_6x16(
    k: usize,
    a: impl Fn(usize, usize) -> *const f32,
    b: *const f32,
    ldb: usize,
) -> [[std::arch::x86_64::__m256; 2]; MR] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let step = |acc: &mut [[__m256; 2]; MR], kk: usize| {
        // SAFETY: kk < k (both loops below), so a(r, kk) and b[kk·ldb .. kk·ldb + 16] are
        // readable (the function's contract); AVX2/FMA are enabled in this function.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(kk * ldb));
            let b1 = _mm256_loadu_ps(b.add(kk * ldb + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a(r, kk));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
    };
    unrolled_by_four(k, |kk| step(&mut acc, kk));
    acc
}

/// Calls `step(kk)` for `kk` in `0..k`, unrolled by four: in the micro kernels this measured
/// 3–5% faster than the plain loop (less loop overhead per FMA, and the loads of the next steps
/// issue early).
#[inline(always)]
fn unrolled_by_four(k: usize, mut step: impl FnMut(usize)) {
    let body = k - k % 4;
    for kk in (0..body).step_by(4) {
        step(kk);
        step(kk + 1);
        step(kk + 2);
        step(kk + 3);
    }
    for kk in body..k {
        step(kk);
    }
}

/// Where the sums of a [`kernel`] call start.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// From the C tile's values.
    Accumulate,
    /// From the bias of the tile's columns (the C tile is only written).
    Bias(&'a [f32; WIDE_PANELS * NR]),
}

/// Panels of one AVX-512 micro tile: 6 rows × 64 channels are 24 accumulators, and with the 4
/// weight vectors and a broadcast, 29 of the 32 registers.
const WIDE_PANELS: usize = 4;

/// One micro tile's operands: `C[r][c] = act(start[r][c] + Σ_kk a[kk][r] · b(c)[kk])` for
/// `MR` rows and the `panels · NR` columns of `panels` consecutive weight panels.
#[derive(Clone, Copy)]
struct Tile<'a> {
    /// Steps of the product (`k` of this block).
    kc: usize,
    /// Packed activations, `[kc][MR]`.
    a: &'a [f32],
    /// The first panel's weights from this block's `k`, `[kc][NR]`; panel `p`'s start
    /// `p · panel_stride` values further.
    b: &'a [f32],
    panel_stride: usize,
    /// Panels of the tile (1 to [`WIDE_PANELS`]).
    panels: usize,
    /// The C tile: `MR` rows of `panels · NR` values, `ldc` apart.
    c: *mut f32,
    ldc: usize,
    start: Start<'a>,
    act: Option<Act>,
}

/// The 6 × 16 micro kernel: `C[r][c] = act(start[r][c] + Σ_kk a[kk][r] · b[kk][c])` over `kc`
/// steps, where `start` is C itself or the bias row and `act` (if any) is applied to the
/// result registers before they are stored.
///
/// The sums start from zero and C is added at the end: C's rows lie `ldc` apart, a pattern the
/// hardware prefetcher does not follow, so they are prefetched first and read only once the
/// products are done (loading them up front stalled on cache misses).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` must hold `kc·MR` values, `b` `kc·NR`, and `c` must
/// be valid for reads and writes of `MR` rows of `NR` values at row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn kernel(tile: Tile) {
    use std::arch::x86_64::*;
    let Tile {
        kc,
        a,
        b,
        c,
        ldc,
        start,
        act,
        ..
    } = tile;
    debug_assert!(tile.panels == 1 && a.len() >= kc * MR && b.len() >= kc * NR);
    for r in 0..MR {
        // SAFETY: a prefetch never faults; both addresses lie in row r of the C tile.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + NR - 1) as *const i8);
        }
    }
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: for kk < kc, a[kk·6 + r] (r < 6) and b[kk·16 .. kk·16 + 16] lie in the slices
    // (this function's contract); AVX2/FMA as here.
    let mut sums = unsafe { product_6x16(kc, |r, kk| a.wrapping_add(kk * MR + r), b, NR) };
    for (r, sums) in sums.iter_mut().enumerate() {
        // SAFETY: row r < MR of the C tile, NR = 16 values (the caller's contract); the bias
        // tile holds NR values.
        unsafe {
            let row = c.add(r * ldc);
            let (from0, from8) = match start {
                Start::Accumulate => (row as *const f32, row.add(8) as *const f32),
                Start::Bias(bias) => (bias.as_ptr(), bias.as_ptr().add(8)),
            };
            // `acc + start`, the same single rounding either way round.
            sums[0] = _mm256_add_ps(_mm256_loadu_ps(from0), sums[0]);
            sums[1] = _mm256_add_ps(_mm256_loadu_ps(from8), sums[1]);
        }
    }
    if let Some(act) = act {
        for v in sums.iter_mut().flatten() {
            *v = activate8(act, *v);
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        // SAFETY: row r < MR of the C tile, NR = 16 values (the caller's contract).
        unsafe {
            let row = c.add(r * ldc);
            _mm256_storeu_ps(row, sums[0]);
            _mm256_storeu_ps(row.add(8), sums[1]);
        }
    }
}

/// `Σ_{kk<k} a(r, kk) · b[p·panel_stride + kk·16 ..][..16]` for the 6 rows `r` and `P`
/// panels `p`, as 6 × `P` vectors: [`product_6x16`] on 512-bit vectors, `P` panels at once.
/// Each element is summed in the same order, with the same fused multiply-adds, as there.
///
/// # Safety
/// The CPU must support AVX-512F; for every `r < 6` and `kk < k`, `a(r, kk)` must point to a
/// readable `f32`, and `b` must be readable for `(P − 1)·panel_stride + k·16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn product_6xp<const P: usize>(
    k: usize,
    a: impl Fn(usize, usize) -> *const f32,
    b: *const f32,
    panel_stride: usize,
) -> [[std::arch::x86_64::__m512; P]; MR] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); P]; MR];
    let step = |acc: &mut [[__m512; P]; MR], kk: usize| {
        let mut bv = [_mm512_setzero_ps(); P];
        for (p, v) in bv.iter_mut().enumerate() {
            // SAFETY: kk < k, so these 16 values lie within the contract's bound.
            *v = unsafe { _mm512_loadu_ps(b.add(p * panel_stride + kk * NR)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: kk < k and r < 6: readable (the contract).
            let av = _mm512_set1_ps(unsafe { *a(r, kk) });
            for (s, &w) in acc.iter_mut().zip(&bv) {
                *s = _mm512_fmadd_ps(av, w, *s);
            }
        }
    };
    unrolled_by_four(k, |kk| step(&mut acc, kk));
    acc
}

/// The 6 × (16·`P`) AVX-512 micro kernel: [`kernel`]'s sums for `P` panels at once, one
/// 16-lane accumulator per row and panel. Each step loads `P` weight vectors and broadcasts
/// the 6 activations, for `6·P` FMAs.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512F; `tile.a` must hold `kc·MR` values, `tile.b`
/// `(P − 1)·panel_stride + kc·NR`, and `tile.c` must be valid for reads and writes of `MR` rows
/// of `P·NR` values at row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
#[inline]
unsafe fn kernel_avx512<const P: usize>(tile: Tile) {
    use std::arch::x86_64::*;
    let Tile {
        kc,
        a,
        b,
        panel_stride,
        c,
        ldc,
        start,
        act,
        ..
    } = tile;
    assert!(tile.panels == P && P <= WIDE_PANELS && a.len() >= kc * MR);
    assert!(kc == 0 || b.len() >= (P - 1) * panel_stride + kc * NR);
    for r in 0..MR {
        for p in 0..P {
            // SAFETY: a prefetch never faults; the address lies in row r of the C tile.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + p * NR) as *const i8) };
        }
    }
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: for kk < kc, a[kk·6 + r] (r < 6) lies in `a`, and `b`'s bound was asserted
    // above; AVX-512F as here.
    let sums =
        unsafe { product_6xp::<P>(kc, |r, kk| a.wrapping_add(kk * MR + r), b, panel_stride) };
    for (r, row) in sums.iter().enumerate() {
        for (p, &sum) in row.iter().enumerate() {
            // SAFETY: row r < MR, columns 16p..16p+16 < P·NR of the C tile (the caller's
            // contract); the bias tile holds WIDE_PANELS·NR ≥ P·NR values.
            unsafe {
                let at = c.add(r * ldc + p * NR);
                let from = match start {
                    Start::Accumulate => at as *const f32,
                    Start::Bias(bias) => bias.as_ptr().add(p * NR),
                };
                // `acc + start`, the same single rounding as the AVX2 kernel.
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(from), sum));
                if let Some(act) = act {
                    // The AVX2 activation, so both kernels give the same bits.
                    _mm256_storeu_ps(at, activate8(act, _mm256_loadu_ps(at)));
                    _mm256_storeu_ps(at.add(8), activate8(act, _mm256_loadu_ps(at.add(8))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::not_run::not_run;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `out + x·Wᵀ` in f64.
    fn reference(x: &[f32], w: &[f32], out: &[f32], rows: usize, n: usize, k: usize) -> Vec<f64> {
        (0..rows * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                out[i] as f64
                    + (0..k)
                        .map(|l| x[r * k + l] as f64 * w[j * k + l] as f64)
                        .sum::<f64>()
            })
            .collect()
    }

    /// The kernels this CPU runs: `false` for AVX2, `true` for AVX-512 where present.
    fn kernels() -> Vec<bool> {
        let mut all = vec![false];
        if PackedWeights::wide() {
            all.push(true);
        } else {
            not_run("sgemm tests", "the AVX-512 kernel", "AVX-512F");
        }
        all
    }

    #[test]
    fn pack_then_unpack_gives_the_weights_back() {
        let w: Vec<f32> = (0..37 * 13).map(|i| i as f32).collect();
        assert_eq!(PackedWeights::pack(&w, 37, 13).unpack(), w);
    }

    #[test]
    fn packing_the_transpose_gives_the_same_panels() {
        let (n, k) = (37, 13);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let w_t: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert_eq!(
            PackedWeights::pack_transposed(&w_t, n, k).data,
            PackedWeights::pack(&w, n, k).data
        );
    }

    #[test]
    fn matches_the_product_on_edge_shapes() {
        if !PackedWeights::available() {
            not_run(
                "matches_the_product_on_edge_shapes",
                "the whole test",
                "AVX2/FMA",
            );
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Rows and channels off the tile sizes, k across block boundaries, one row.
        for &(rows, n, k) in &[
            (1, 16, 8),
            (7, 17, 3),
            (13, 33, 257),
            (97, 40, 600),
            (200, 64, 512),
            (11, 20, 1100),
            (1001, 20, 9),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..rows * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let expected = reference(&x, &w, &bias, rows, n, k);
            let packed = PackedWeights::pack(&w, n, k);
            let mut first: Option<Vec<f32>> = None;
            for wide in kernels() {
                let mut out = bias.clone();
                packed.product(&x, rows, &mut out, None, None, wide);
                for (i, (&got, &want)) in out.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-5 * (k as f64).sqrt() * 4.0;
                    assert!(
                        (got as f64 - want).abs() <= tolerance,
                        "wide {wide} rows {rows} n {n} k {k}: element {i} is {got}, expected {want}"
                    );
                }
                // Both kernels sum in the same order: the same bits.
                match &first {
                    None => first = Some(out),
                    Some(narrow) => assert!(
                        narrow
                            .iter()
                            .zip(&out)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "rows {rows} n {n} k {k}: the AVX-512 kernel differs from the AVX2 one"
                    ),
                }
            }
        }
    }

    #[test]
    fn fused_bias_and_activation_match_the_separate_passes_exactly() {
        if !PackedWeights::available() {
            not_run(
                "fused_bias_and_activation_match_the_separate_passes_exactly",
                "the whole test",
                "AVX2/FMA",
            );
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Full and edge tiles, one and several k blocks, no k at all.
        for &(rows, n, k) in &[(13, 40, 384), (30, 16, 1100), (5, 7, 3), (4, 9, 0)] {
            let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let packed = PackedWeights::pack(&w, n, k);
            let acts = [None, Some(Act::Gelu), Some(Act::GeluTanh), Some(Act::Relu)];
            for (wide, act) in kernels().into_iter().flat_map(|w| acts.map(|a| (w, a))) {
                let mut expected: Vec<f32> = bias.iter().copied().cycle().take(rows * n).collect();
                packed.product(&x, rows, &mut expected, None, None, wide);
                if let Some(act) = act {
                    activate_slice::<true>(act, &mut expected);
                }
                // Stale values in `out` must not leak into the result.
                let mut out = vec![f32::NAN; rows * n];
                packed.product(&x, rows, &mut out, Some(&bias), act, wide);
                for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "wide {wide} rows {rows} n {n} k {k} {act:?}: element {i} is {got}, expected {want}"
                    );
                }
            }
        }
    }
}
