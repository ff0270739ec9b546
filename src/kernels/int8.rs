//! Int8 linear layer with dynamic quantization, for CPU inference.
//!
//! The scheme follows ONNX Runtime's dynamic int8 quantization (`U8S8`):
//!
//! * weights are quantized once, in [`QuantizedLinear::new`], to signed integers with one
//!   symmetric scale per output channel (a row of the HF `[out_features, in_features]` weight);
//! * activations are quantized on every call, one asymmetric `u8` scale and zero point per row,
//!   so that one-sided inputs (GELU outputs) use all 256 levels;
//! * dot products are accumulated exactly in `i32` and scaled back to `f32`:
//!   `y = sa·sw·(Σ qa·qw − za·Σ qw) + bias`.
//!
//! Weights use one of two ranges, set by the kernel the CPU runs (every kernel's integer sums
//! are exact):
//!
//! * `[-64, 64]` for the AVX2 kernel. It multiplies with `vpmaddubsw`, which adds two `u8·i8`
//!   products into a *saturating* `i16`; with `|qw| ≤ 64` the largest pair is
//!   `2·255·64 = 32640 ≤ 32767`, so it can never saturate (ORT calls this `reduce_range`).
//!   Widening to `i16` and using `vpmaddwd` alone would keep 8-bit weights but needs twice the
//!   multiply instructions per product; on AVX2 machines the multiply ports are the bottleneck,
//!   so the 7-bit weights are the price of the ~2× over `f32` FMA.
//! * `[-127, 127]` for the AVX-512 VNNI kernel, whose `vpdpbusd` adds four `u8·i8` products
//!   straight into an `i32`, and for the portable kernel. On XQuAD with the MiniLM checkpoint
//!   this keeps about 850 of 894 answers equal to f32's, against about 820 with 7-bit weights.
//!
//! On the same quantized weights the scalar, AVX2 and AVX-512 VNNI paths give bit-identical
//! outputs, so the scalar kernel reproduces what either of the others computes.

use rayon::prelude::*;

use super::ops::{activate_slice, Act};

/// Output channels per packed weight block: two AVX2 vectors of 8 `i32` lanes, or one
/// AVX-512 vector of 16.
const NR: usize = 16;
/// Consecutive `k` values stored together for one channel: the 4 bytes one `i32` lane sums.
const KG: usize = 4;
/// Bytes of one packed `k` group of a block (`NR` channels × `KG` values).
const GROUP_BYTES: usize = NR * KG;
/// Rows of one micro tile (accumulators: `MR × NR / 8` AVX2 registers).
const MR: usize = 4;
/// Largest row block of one parallel task: its quantized activations stay in L2.
const MC_MAX: usize = 64;
/// Largest quantized activation value (`u8`).
const A_LEVELS: f32 = 255.0;
/// Beyond this many input features an `i32` accumulator could overflow
/// (`in_features · 255 · 127 ≤ i32::MAX`).
const MAX_IN_FEATURES: usize = i32::MAX as usize / (255 * 127);

/// Which dot-product kernel a layer runs; chosen once by CPU feature detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// Portable Rust; used on CPUs without AVX2 and as the reference in tests.
    Scalar,
    /// `vpmaddubsw` + `vpmaddwd` on 256-bit vectors.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// `vpdpbusd` on 512-bit vectors (AVX-512 VNNI).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU can run.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Kernel::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Largest quantized weight magnitude whose products the kernel sums exactly (module
    /// docs).
    fn weight_levels(self) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 64.0,
            _ => 127.0,
        }
    }

    /// Whether this CPU can run the kernel (always true for [`Kernel::Scalar`]).
    #[cfg(test)]
    fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vnni")
            }
        }
    }
}

/// A linear layer (`y = x·Wᵀ + b`) whose weights are stored as int8 and whose activations are
/// quantized to `u8` on every call.
///
/// Typical BERT layers run about twice as fast as the `f32` kernel on AVX2 CPUs and three times
/// as fast with AVX-512 VNNI, at the cost of a quantization error of roughly 1% of the output's
/// magnitude.
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    out_features: usize,
    in_features: usize,
    /// `ceil(in_features / KG)`: the packed `k` extent, zero-padded.
    k_groups: usize,
    /// Quantized weights, `[block][k_group][channel in block][k in group]`; padding is zero.
    packed: Vec<i8>,
    /// Per channel `Σ_k qw`, for the activation zero-point correction (padded to whole blocks).
    col_sums: Vec<i32>,
    /// Per channel weight scale (padded to whole blocks).
    w_scales: Vec<f32>,
    /// Per channel bias, zero without one (padded to whole blocks).
    bias: Vec<f32>,
    /// Largest weight magnitude used (`Kernel::weight_levels` of the kernel quantized for).
    w_levels: f32,
    kernel: Kernel,
}

/// One quantized activation row block, laid out `[tile of MR rows][k group][row][KG]` so that
/// a micro tile reads one sequential stream (rows past the last are zero).
struct QuantizedRows {
    values: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
}

/// Bytes from one `k` group of a row of [`QuantizedRows`] to the next (`MR` rows' groups).
const GROUP_STEP: usize = MR * KG;
/// Rows of an AVX-512 VNNI micro tile: two [`MR`]-row tiles of [`QuantizedRows`].
const VNNI_ROWS: usize = 2 * MR;
/// Packed weight blocks of an AVX-512 VNNI micro tile (48 channels): with [`VNNI_ROWS`] rows,
/// 24 accumulators, 3 weight vectors and a broadcast fill 28 of the 32 registers.
const VNNI_BLOCKS: usize = 3;

impl QuantizedLinear {
    /// Quantizes a linear layer's weights, in the range of the kernel this CPU runs.
    ///
    /// `weight` is row-major `[out_features, in_features]` (HF `nn.Linear` layout), `bias`
    /// optional with `out_features` values.
    ///
    /// # Panics
    /// If the slice lengths do not match the shape, or `in_features` exceeds 66 311 (where
    /// the `i32` accumulators could overflow); both are programming errors, not input errors.
    pub fn new(
        weight: &[f32],
        bias: Option<&[f32]>,
        out_features: usize,
        in_features: usize,
    ) -> Self {
        Self::quantize(weight, bias, out_features, in_features, Kernel::detect())
    }

    /// [`QuantizedLinear::new`] for `kernel`, in its weight range.
    fn quantize(
        weight: &[f32],
        bias: Option<&[f32]>,
        out_features: usize,
        in_features: usize,
        kernel: Kernel,
    ) -> Self {
        assert_eq!(
            weight.len(),
            out_features * in_features,
            "QuantizedLinear::new: weight must have out_features·in_features values"
        );
        if let Some(bias) = bias {
            assert_eq!(
                bias.len(),
                out_features,
                "QuantizedLinear::new: bias must have out_features values"
            );
        }
        assert!(
            in_features <= MAX_IN_FEATURES,
            "QuantizedLinear::new: in_features {in_features} > {MAX_IN_FEATURES} could overflow i32 sums"
        );
        let k_groups = in_features.div_ceil(KG);
        let padded_out = out_features.div_ceil(NR) * NR;
        let mut packed = vec![0i8; padded_out * k_groups * KG];
        let mut col_sums = vec![0i32; padded_out];
        let mut w_scales = vec![0f32; padded_out];
        let mut padded_bias = vec![0f32; padded_out];
        if let Some(bias) = bias {
            padded_bias[..out_features].copy_from_slice(bias);
        }
        let w_levels = kernel.weight_levels();
        if in_features > 0 {
            for (j, row) in weight.chunks_exact(in_features).enumerate() {
                let max_abs = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = max_abs / w_levels;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                let block =
                    &mut packed[(j / NR) * k_groups * GROUP_BYTES..][..k_groups * GROUP_BYTES];
                let mut sum = 0i32;
                for (k, &w) in row.iter().enumerate() {
                    let q = round_weight(w * inv, w_levels);
                    sum += i32::from(q);
                    block[(k / KG) * GROUP_BYTES + (j % NR) * KG + k % KG] = q;
                }
                col_sums[j] = sum;
                w_scales[j] = scale;
            }
        }
        Self {
            out_features,
            in_features,
            k_groups,
            packed,
            col_sums,
            w_scales,
            bias: padded_bias,
            w_levels,
            kernel,
        }
    }

    /// The integer kernel this CPU runs, in words (for logs).
    pub fn kernel_description() -> &'static str {
        match Kernel::detect() {
            Kernel::Scalar => "portable, 8-bit weights",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "AVX2 vpmaddubsw, 7-bit weights",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "AVX-512 VNNI, 8-bit weights",
        }
    }

    /// The largest quantized weight magnitude of the kernel this CPU runs: 127 with 8-bit
    /// weights, 64 with the AVX2 kernel's 7-bit ones (whose rounding error is twice as large).
    pub fn weight_levels() -> f32 {
        Kernel::detect().weight_levels()
    }

    /// Number of input features (columns of `x`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Number of output features (columns of `out`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Computes `out = x·Wᵀ + bias`.
    ///
    /// `x` is row-major `[rows, in_features]`; `out` is row-major `[rows, out_features]` and is
    /// overwritten. Work is split over the global rayon pool. Non-finite inputs give
    /// unspecified (but non-panicking) outputs in their row.
    ///
    /// # Panics
    /// If `x` or `out` do not have `rows·in_features` / `rows·out_features` values.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.forward_with(self.kernel, x, rows, None, out);
    }

    /// Computes `out = act(x·Wᵀ + bias)`, applying `act` to each row of a tile as it is
    /// scaled back to `f32` rather than in another pass over `out`. The result is exactly
    /// that of [`Self::forward`] followed by [`super::ops::activate`].
    ///
    /// # Panics
    /// As [`Self::forward`].
    pub fn forward_activated(&self, x: &[f32], rows: usize, act: Option<Act>, out: &mut [f32]) {
        self.forward_with(self.kernel, x, rows, act, out);
    }

    /// [`Self::forward_activated`] on `kernel`, which must take the layer's weights exactly.
    fn forward_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        rows: usize,
        act: Option<Act>,
        out: &mut [f32],
    ) {
        assert_eq!(
            x.len(),
            rows * self.in_features,
            "QuantizedLinear::forward: x must have rows·in_features values"
        );
        assert_eq!(
            out.len(),
            rows * self.out_features,
            "QuantizedLinear::forward: out must have rows·out_features values"
        );
        // Only tests run a layer on another kernel than the one it was quantized for.
        assert!(
            self.w_levels <= kernel.weight_levels(),
            "QuantizedLinear: weights of ±{} are not exact on {kernel:?}",
            self.w_levels
        );
        if rows == 0 || self.out_features == 0 {
            return;
        }
        if self.in_features == 0 {
            self.fill_with_bias(act, out);
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        // About three row blocks per thread balances the load without shrinking blocks below
        // a few micro tiles.
        let mc = rows.div_ceil(3 * threads).next_multiple_of(MR).min(MC_MAX);
        let row_tasks = rows.div_ceil(mc);
        if row_tasks >= threads {
            self.forward_split_by_rows(kernel, x, mc, act, out);
        } else {
            self.forward_split_by_channels(kernel, x, rows, threads, act, out);
        }
    }

    /// The product without inputs (`in_features == 0`): every row of `out` is `act(bias)`.
    fn fill_with_bias(&self, act: Option<Act>, out: &mut [f32]) {
        for out_row in out.chunks_exact_mut(self.out_features) {
            out_row.copy_from_slice(&self.bias[..self.out_features]);
            if let Some(act) = act {
                activate_slice::<false>(act, out_row);
            }
        }
    }

    /// The product with one parallel task per block of `mc` rows, each quantizing its own rows
    /// and writing all output channels of them in place.
    fn forward_split_by_rows(
        &self,
        kernel: Kernel,
        x: &[f32],
        mc: usize,
        act: Option<Act>,
        out: &mut [f32],
    ) {
        let blocks = self.out_features.div_ceil(NR);
        out.par_chunks_mut(mc * self.out_features)
            .zip(x.par_chunks(mc * self.in_features))
            .for_each(|(out_block, x_block)| {
                let acts = self.quantize_rows(kernel, x_block);
                let target = Target {
                    blocks: 0..blocks,
                    out: out_block,
                    out_stride: self.out_features,
                    col0: 0,
                    act,
                };
                self.compute(kernel, &acts, target);
            });
    }

    /// The product for few rows (e.g. one query), too few to keep `threads` busy: the rows
    /// are quantized once and the output channels split between the tasks instead. Each task
    /// writes its columns to a small buffer of its own, copied into place afterwards.
    fn forward_split_by_channels(
        &self,
        kernel: Kernel,
        x: &[f32],
        rows: usize,
        threads: usize,
        act: Option<Act>,
        out: &mut [f32],
    ) {
        let blocks = self.out_features.div_ceil(NR);
        let acts = self.quantize_rows(kernel, x);
        let per_task = blocks.div_ceil(threads);
        let parts: Vec<(usize, usize, Vec<f32>)> = (0..blocks)
            .step_by(per_task)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|first| {
                let end = (first + per_task).min(blocks);
                let col0 = first * NR;
                let width = (end * NR).min(self.out_features) - col0;
                let mut part = vec![0f32; rows * width];
                let target = Target {
                    blocks: first..end,
                    out: &mut part,
                    out_stride: width,
                    col0,
                    act,
                };
                self.compute(kernel, &acts, target);
                (col0, width, part)
            })
            .collect();
        for (col0, width, part) in parts {
            for (out_row, part_row) in out
                .chunks_exact_mut(self.out_features)
                .zip(part.chunks_exact(width))
            {
                out_row[col0..col0 + width].copy_from_slice(part_row);
            }
        }
    }

    /// Quantizes each row of `x` (row-major `[rows, in_features]`, `in_features > 0`) to `u8`.
    fn quantize_rows(&self, kernel: Kernel, x: &[f32]) -> QuantizedRows {
        let stride = self.k_groups * KG;
        let rows = x.len() / self.in_features;
        let mut acts = QuantizedRows {
            values: vec![0u8; rows.next_multiple_of(MR) * stride],
            scales: vec![0f32; rows],
            zero_points: vec![0i32; rows],
        };
        // One row is quantized here (zero-padded to whole groups), then its groups are
        // dealt to their places in the tile layout.
        let mut q = vec![0u8; stride];
        for (r, row) in x.chunks_exact(self.in_features).enumerate() {
            let own = &mut q[..self.in_features];
            let (scale, zero_point) = match kernel {
                Kernel::Scalar => quantize_row(row, own),
                // SAFETY: `Avx2`/`Avx512Vnni` are only selected (by `Kernel::detect`, or in tests
                // after `is_supported`) when the CPU has AVX2: both check for it.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 | Kernel::Avx512Vnni => unsafe { quantize_row_avx2(row, own) },
            };
            acts.scales[r] = scale;
            acts.zero_points[r] = zero_point;
            let tile = &mut acts.values[(r / MR) * MR * stride..][..MR * stride];
            for (group, dst) in q
                .chunks_exact(KG)
                .zip(tile[(r % MR) * KG..].chunks_mut(GROUP_STEP))
            {
                dst[..KG].copy_from_slice(group);
            }
        }
        acts
    }

    /// Computes the output channels of `target.blocks` for every row of `acts`.
    fn compute(&self, kernel: Kernel, acts: &QuantizedRows, target: Target) {
        match kernel {
            Kernel::Scalar => self.compute_tiles(acts, target, tile_scalar),
            // SAFETY: this kernel is only selected when the CPU has AVX2 (see
            // `Kernel::detect` / `is_supported`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { self.compute_avx2(acts, target) },
            // SAFETY: only selected when the CPU has AVX2, AVX-512F and AVX-512 VNNI.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe { self.compute_avx512_vnni(acts, target) },
        }
    }

    /// [`Self::compute_tiles`] with the AVX2 micro kernel, compiled for AVX2 so that the
    /// scaling of each tile's sums back to `f32` is vectorised and inlined too.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn compute_avx2(&self, acts: &QuantizedRows, target: Target) {
        self.compute_tiles(acts, target, |a, rows, weights, k_groups, acc| {
            // SAFETY: the caller guarantees AVX2; slice bounds are checked inside.
            unsafe { tile_avx2(a, rows, weights, k_groups, acc) }
        })
    }

    /// The AVX-512 VNNI path: like [`Self::compute_tiles`], but each micro tile covers
    /// [`VNNI_ROWS`] rows × [`VNNI_BLOCKS`] output blocks, so that one broadcast activation
    /// feeds several weight vectors and one weight vector several rows (24 `vpdpbusd` per
    /// 11 loads, against 4 per 5 for a 4 × 16 tile).
    ///
    /// # Safety
    /// The CPU must support AVX2, AVX-512F and AVX-512 VNNI.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512vnni")]
    unsafe fn compute_avx512_vnni(&self, acts: &QuantizedRows, target: Target) {
        let Target {
            blocks,
            out,
            out_stride,
            col0,
            act,
        } = target;
        let rows = acts.scales.len();
        let block_len = self.k_groups * GROUP_BYTES;
        let tile_len = self.k_groups * GROUP_STEP;
        let mut first_block = blocks.start;
        while first_block < blocks.end {
            let nb = VNNI_BLOCKS.min(blocks.end - first_block);
            let weights = &self.packed[first_block * block_len..][..nb * block_len];
            for r0 in (0..rows).step_by(VNNI_ROWS) {
                let tile_rows = VNNI_ROWS.min(rows - r0);
                let mut acc = [[[0i32; NR]; VNNI_BLOCKS]; VNNI_ROWS];
                // SAFETY: the caller guarantees AVX-512F/VNNI; bounds are checked inside.
                unsafe {
                    tile_avx512_vnni(
                        &acts.values[(r0 / MR) * tile_len..],
                        tile_rows,
                        weights,
                        nb,
                        self.k_groups,
                        &mut acc,
                    )
                };
                for (r, acc_row) in acc.iter().enumerate().take(tile_rows) {
                    for (b, acc_block) in acc_row.iter().enumerate().take(nb) {
                        self.store_row(
                            acc_block,
                            acts,
                            r0 + r,
                            (first_block + b) * NR,
                            act,
                            &mut out[(r0 + r) * out_stride..][..out_stride],
                            col0,
                        );
                    }
                }
            }
            first_block += nb;
        }
    }

    /// The loop over output blocks and row tiles: `tile` sums a tile in `i32`, then each of
    /// its rows is scaled back to `f32` and written to `target.out`.
    #[inline(always)]
    fn compute_tiles(
        &self,
        acts: &QuantizedRows,
        target: Target,
        tile: impl Fn(&[u8], usize, &[i8], usize, &mut [[i32; NR]; MR]),
    ) {
        let Target {
            blocks,
            out,
            out_stride,
            col0,
            act,
        } = target;
        let rows = acts.scales.len();
        let block_len = self.k_groups * GROUP_BYTES;
        for block in blocks {
            let weights = &self.packed[block * block_len..][..block_len];
            let first = block * NR;
            for r0 in (0..rows).step_by(MR) {
                let tile_rows = MR.min(rows - r0);
                let mut acc = [[0i32; NR]; MR];
                tile(
                    &acts.values[r0 * self.k_groups * KG..][..MR * self.k_groups * KG],
                    tile_rows,
                    weights,
                    self.k_groups,
                    &mut acc,
                );
                for (r, acc_row) in acc.iter().enumerate().take(tile_rows) {
                    self.store_row(
                        acc_row,
                        acts,
                        r0 + r,
                        first,
                        act,
                        &mut out[(r0 + r) * out_stride..][..out_stride],
                        col0,
                    );
                }
            }
        }
    }

    /// Scales one row of a block's integer sums back to `f32` (row `row` of `acts`, output
    /// channels from `first`), applies `act` and writes it to `out_row`, whose column 0 is
    /// output channel `col0`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn store_row(
        &self,
        acc: &[i32; NR],
        acts: &QuantizedRows,
        row: usize,
        first: usize,
        act: Option<Act>,
        out_row: &mut [f32],
        col0: usize,
    ) {
        let width = NR.min(self.out_features - first);
        let params = (
            tile_params(&self.col_sums, first),
            tile_params(&self.w_scales, first),
            tile_params(&self.bias, first),
        );
        let mut values = [0f32; NR];
        finish_row(
            acc,
            acts.zero_points[row],
            acts.scales[row],
            params,
            &mut values,
        );
        if let Some(act) = act {
            activate_slice::<false>(act, &mut values);
        }
        let out = &mut out_row[first - col0..][..width];
        // A whole block is a fixed-size copy (two vector stores), not a memcpy call.
        match <&mut [f32; NR]>::try_from(&mut *out) {
            Ok(whole) => *whole = values,
            Err(_) => out.copy_from_slice(&values[..width]),
        }
    }
}

/// Where [`QuantizedLinear::compute`] writes: the output blocks to compute, the output
/// (row stride `out_stride`, column 0 = output channel `col0`) and the activation applied
/// to it.
struct Target<'a> {
    blocks: std::ops::Range<usize>,
    out: &'a mut [f32],
    out_stride: usize,
    col0: usize,
    act: Option<Act>,
}

/// The per-channel parameters of the output block starting at channel `first`.
fn tile_params<T>(all: &[T], first: usize) -> &[T; NR] {
    all[first..first + NR]
        .try_into()
        .expect("per-channel parameters are padded to whole blocks")
}

/// Scales one row of a tile's integer sums back to `f32`: `sa·sw·(acc − za·Σqw) + b`, with
/// the block's column sums, weight scales and bias in `params`.
///
/// The correction is done in `i32` (exact) and no step is fused, so every kernel gives
/// identical outputs. Always inlined, so it is vectorised for the caller's instruction set.
#[inline(always)]
fn finish_row(
    acc: &[i32; NR],
    zero_point: i32,
    a_scale: f32,
    (col_sums, w_scales, bias): (&[i32; NR], &[f32; NR], &[f32; NR]),
    out: &mut [f32; NR],
) {
    for c in 0..NR {
        let exact = acc[c] - zero_point * col_sums[c];
        out[c] = exact as f32 * (a_scale * w_scales[c]) + bias[c];
    }
}

/// Rounds a scaled weight (`|x| ≤ levels` up to rounding) to the nearest integer, ties to
/// even, and clamps it to `±levels` (at most 127).
///
/// Adding and subtracting 1.5·2^23 rounds like `round_ties_even` for `|x| < 2^22`, but
/// without the `rintf` call that `round_ties_even` becomes on baseline x86-64 (a third of the
/// time of quantizing a model at load).
#[inline(always)]
fn round_weight(x: f32, levels: f32) -> i8 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-levels, levels);
    ((x + ROUND) - ROUND) as i8
}

/// Quantizes one activation row to `u8` with its own scale and zero point; returns them.
///
/// The range always includes 0, so zero is exact; an all-zero row gets scale 0.
#[inline(always)]
fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    // Eight independent lanes so the min/max reduction vectorizes.
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..8 {
            lo[l] = if chunk[l] < lo[l] { chunk[l] } else { lo[l] };
            hi[l] = if chunk[l] > hi[l] { chunk[l] } else { hi[l] };
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
    }
    let lo = lo.iter().fold(0f32, |m, &v| if v < m { v } else { m });
    let hi = hi.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let scale = (hi - lo) / A_LEVELS;
    if !(scale > 0.0 && scale.is_finite()) {
        q.fill(0);
        return (0.0, 0);
    }
    let inv = 1.0 / scale;
    let zero_point = (-lo * inv).round_ties_even().clamp(0.0, A_LEVELS);
    for (q, &v) in q.iter_mut().zip(x) {
        let t = (v * inv).round_ties_even() + zero_point;
        let t = t.clamp(0.0, A_LEVELS);
        // `t` is a whole number in [0, 255]: adding 2^23 puts it in the low mantissa bits.
        // Unlike `as u8` (a saturating conversion) this vectorizes.
        *q = (t + 8_388_608.0).to_bits() as u8;
    }
    (scale, zero_point as i32)
}

/// [`quantize_row`] compiled for AVX2, where its loops vectorize (`vroundps`, `vminps`).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    quantize_row(x, q)
}

/// Integer sums of one micro tile: `acc[r][c] = Σ_k a[r][k]·w[c][k]` for `rows ≤ MR` rows
/// of a tile of [`QuantizedRows`] (row `r`'s group `g` at `g·GROUP_STEP + r·KG`) and the `NR`
/// channels of one packed block.
fn tile_scalar(a: &[u8], rows: usize, weights: &[i8], k_groups: usize, acc: &mut [[i32; NR]; MR]) {
    for (r, acc_row) in acc.iter_mut().enumerate().take(rows) {
        for (a_group, w_group) in a[r * KG..]
            .chunks(GROUP_STEP)
            .take(k_groups)
            .zip(weights.chunks_exact(GROUP_BYTES))
        {
            for (c, w) in w_group.chunks_exact(KG).enumerate() {
                let mut sum = 0i32;
                for k in 0..KG {
                    sum += i32::from(a_group[k]) * i32::from(w[k]);
                }
                acc_row[c] += sum;
            }
        }
    }
}

/// AVX2 version of [`tile_scalar`]; dispatches on the number of rows.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(
    a: &[u8],
    rows: usize,
    weights: &[i8],
    k_groups: usize,
    acc: &mut [[i32; NR]; MR],
) {
    // Bounds for every load below: the last row's last group, and the block's last group.
    assert!((1..=MR).contains(&rows) && k_groups > 0);
    assert!(a.len() >= (k_groups - 1) * GROUP_STEP + (rows - 1) * KG + KG);
    assert!(weights.len() >= k_groups * GROUP_BYTES);
    let (a, w) = (a.as_ptr(), weights.as_ptr());
    // SAFETY: AVX2 is enabled on this function; bounds were asserted above.
    unsafe {
        match rows {
            1 => tile_avx2_rows::<1>(a, w, k_groups, acc),
            2 => tile_avx2_rows::<2>(a, w, k_groups, acc),
            3 => tile_avx2_rows::<3>(a, w, k_groups, acc),
            _ => tile_avx2_rows::<4>(a, w, k_groups, acc),
        }
    }
}

/// The AVX2 micro kernel for `R` rows × 16 channels.
///
/// # Safety
/// The CPU must support AVX2; `a` must be readable for `(k_groups − 1)·GROUP_STEP + 4R` bytes
/// and `w` for `64·k_groups` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile_avx2_rows<const R: usize>(
    a: *const u8,
    w: *const i8,
    k_groups: usize,
    acc: &mut [[i32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..k_groups {
        // SAFETY: g < k_groups, so bytes [64g, 64g+64) are within `w`'s 64·k_groups.
        let (w0, w1) = unsafe {
            let p = w.add(g * GROUP_BYTES);
            (
                _mm256_loadu_si256(p.cast::<__m256i>()),
                _mm256_loadu_si256(p.add(32).cast::<__m256i>()),
            )
        };
        for (r, sum) in sums.iter_mut().enumerate() {
            // SAFETY: r < R and g < k_groups, so the 4 bytes at g·GROUP_STEP + 4r end within
            // (k_groups − 1)·GROUP_STEP + 4R.
            let packed = unsafe {
                a.add(g * GROUP_STEP + r * KG)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let av = _mm256_set1_epi32(packed);
            // u8·i8 pairs into i16: cannot saturate since |w| ≤ 64 (module docs).
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones);
            sum[0] = _mm256_add_epi32(sum[0], p0);
            sum[1] = _mm256_add_epi32(sum[1], p1);
        }
    }
    for (sum, out) in sums.iter().zip(acc.iter_mut()) {
        // SAFETY: each `out` row holds 16 i32 = two 32-byte vectors.
        unsafe {
            _mm256_storeu_si256(out.as_mut_ptr().cast::<__m256i>(), sum[0]);
            _mm256_storeu_si256(out.as_mut_ptr().add(8).cast::<__m256i>(), sum[1]);
        }
    }
}

/// Integer sums of one AVX-512 VNNI micro tile: `rows ≤ VNNI_ROWS` rows of [`QuantizedRows`]
/// from the start of `a` (consecutive [`MR`]-row tiles) × the `blocks ≤ VNNI_BLOCKS`
/// consecutive packed blocks of `weights`; `acc[r][b][c]` gets row `r`, channel `c` of block
/// `b`. Dispatches on both counts.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile_avx512_vnni(
    a: &[u8],
    rows: usize,
    weights: &[i8],
    blocks: usize,
    k_groups: usize,
    acc: &mut VnniAcc,
) {
    // Bounds for every load below: the last row's last group, and the last block's last
    // group.
    assert!((1..=VNNI_ROWS).contains(&rows) && (1..=VNNI_BLOCKS).contains(&blocks));
    assert!(k_groups > 0);
    let tile_len = k_groups * GROUP_STEP;
    assert!(a.len() >= (rows - 1) / MR * tile_len + (k_groups - 1) * GROUP_STEP + MR * KG);
    assert!(weights.len() >= blocks * k_groups * GROUP_BYTES);
    let (a, w) = (a.as_ptr(), weights.as_ptr());
    macro_rules! by_blocks {
        ($r:literal) => {
            // SAFETY: AVX-512F/VNNI are enabled on this function; bounds were asserted above.
            unsafe {
                match blocks {
                    1 => tile_vnni::<$r, 1>(a, tile_len, w, k_groups, acc),
                    2 => tile_vnni::<$r, 2>(a, tile_len, w, k_groups, acc),
                    _ => tile_vnni::<$r, 3>(a, tile_len, w, k_groups, acc),
                }
            }
        };
    }
    match rows {
        1 => by_blocks!(1),
        2 => by_blocks!(2),
        3 => by_blocks!(3),
        4 => by_blocks!(4),
        5 => by_blocks!(5),
        6 => by_blocks!(6),
        7 => by_blocks!(7),
        _ => by_blocks!(8),
    }
}

/// Integer sums of an AVX-512 VNNI micro tile, `[row][block][channel]`.
type VnniAcc = [[[i32; NR]; VNNI_BLOCKS]; VNNI_ROWS];

/// The AVX-512 VNNI micro kernel for `R` rows × `B` blocks of 16 channels: per `k` group,
/// `B` weight vectors and `R` broadcast activations feed `R·B` `vpdpbusd` (each adds four
/// `u8·i8` products per `i32` lane), into as many independent accumulators.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 VNNI; `a` must be readable for
/// `(R − 1) / MR · tile_len + (k_groups − 1)·GROUP_STEP + MR·KG` bytes and `w` for
/// `B · 64 · k_groups` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn tile_vnni<const R: usize, const B: usize>(
    a: *const u8,
    tile_len: usize,
    w: *const i8,
    k_groups: usize,
    acc: &mut VnniAcc,
) {
    use std::arch::x86_64::*;
    let block_len = k_groups * GROUP_BYTES;
    let mut sums = [[_mm512_setzero_si512(); B]; R];
    for g in 0..k_groups {
        let mut wv = [_mm512_setzero_si512(); B];
        for (b, v) in wv.iter_mut().enumerate() {
            // SAFETY: b < B and g < k_groups, so these 64 bytes end within B·block_len.
            *v = unsafe { _mm512_loadu_si512(w.add(b * block_len + g * GROUP_BYTES).cast()) };
        }
        for (r, sum) in sums.iter_mut().enumerate() {
            // SAFETY: row r lives in tile r / MR; its 4 bytes of group g end within the bound
            // of the function's contract.
            let packed = unsafe {
                a.add(r / MR * tile_len + g * GROUP_STEP + r % MR * KG)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let av = _mm512_set1_epi32(packed);
            for (s, &v) in sum.iter_mut().zip(&wv) {
                *s = _mm512_dpbusd_epi32(*s, av, v);
            }
        }
    }
    for (sum, out) in sums.iter().zip(acc.iter_mut()) {
        for (s, o) in sum.iter().zip(out.iter_mut()) {
            // SAFETY: each `o` holds 16 i32 = one 64-byte vector.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), *s) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::not_run::not_run;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    /// Every kernel this CPU supports (always including the scalar one).
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        all.extend([Kernel::Avx2, Kernel::Avx512Vnni]);
        let (run, lacking): (Vec<Kernel>, Vec<Kernel>) =
            all.into_iter().partition(|k| k.is_supported());
        for kernel in lacking {
            not_run(
                "int8 tests",
                &format!("the {kernel:?} kernel"),
                "its instructions",
            );
        }
        run
    }

    /// A layer whose weights every kernel of [`kernels`] sums exactly (the narrowest range
    /// among them), so that the tests can switch its kernel.
    fn shared_layer(w: &[f32], b: Option<&[f32]>, n: usize, k: usize) -> QuantizedLinear {
        let narrowest = kernels()
            .into_iter()
            .min_by(|a, b| a.weight_levels().total_cmp(&b.weight_levels()))
            .unwrap_or(Kernel::Scalar);
        QuantizedLinear::quantize(w, b, n, k, narrowest)
    }

    /// The layer's quantized weight of channel `j`, input `k`, dequantized.
    fn dequantized_weight(layer: &QuantizedLinear, j: usize, k: usize) -> f64 {
        let idx = (j / NR) * layer.k_groups * GROUP_BYTES
            + (k / KG) * GROUP_BYTES
            + (j % NR) * KG
            + k % KG;
        f64::from(layer.packed[idx]) * f64::from(layer.w_scales[j])
    }

    /// `x·Wᵀ + b` in f64 over the dequantized operands the kernels see, and a bound on the
    /// f32 rounding of the kernel's final scaling (a few ulps of the largest partial sum).
    fn dequantized_reference(
        layer: &QuantizedLinear,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (n, k) = (layer.out_features, layer.in_features);
        let mut expected = vec![0f64; rows * n];
        let mut tolerance = vec![0f64; rows * n];
        for r in 0..rows {
            let mut q = vec![0u8; k];
            let (scale, zp) = quantize_row(&x[r * k..(r + 1) * k], &mut q);
            for j in 0..n {
                let (mut sum, mut magnitude) = (0f64, 0f64);
                for (kk, &qa) in q.iter().enumerate() {
                    let term = (f64::from(qa) - f64::from(zp))
                        * f64::from(scale)
                        * dequantized_weight(layer, j, kk);
                    sum += term;
                    magnitude += term.abs();
                }
                let b = bias.map_or(0.0, |b| f64::from(b[j]));
                expected[r * n + j] = sum + b;
                tolerance[r * n + j] =
                    4.0 * f64::from(f32::EPSILON) * (magnitude + b.abs()) + 1e-30;
            }
        }
        (expected, tolerance)
    }

    fn check_shape(rows: usize, n: usize, k: usize, with_bias: bool, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = random(&mut rng, n * k, -0.2, 0.2);
        let b = random(&mut rng, n, -1.0, 1.0);
        // Shifted inputs make the activation zero point non-trivial.
        let x = random(&mut rng, rows * k, -0.5, 2.0);
        let bias = with_bias.then_some(b.as_slice());
        let mut layer = shared_layer(&w, bias, n, k);
        assert_eq!((layer.out_features(), layer.in_features()), (n, k));
        check_kernels(&mut layer, &x, rows, bias, &kernels());
    }

    /// Runs `layer` on each of `kernels`: every output within rounding of the dequantized
    /// reference, and all kernels bit-identical (they sum the same integers exactly).
    fn check_kernels(
        layer: &mut QuantizedLinear,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        kernels: &[Kernel],
    ) {
        let (n, k) = (layer.out_features, layer.in_features);
        let (expected, tolerance) = dequantized_reference(layer, x, rows, bias);
        let mut first: Option<Vec<u32>> = None;
        for &kernel in kernels {
            layer.kernel = kernel;
            let mut out = vec![f32::NAN; rows * n];
            layer.forward(x, rows, &mut out);
            for (i, (&got, (&want, &tol))) in
                out.iter().zip(expected.iter().zip(&tolerance)).enumerate()
            {
                assert!(
                    (f64::from(got) - want).abs() <= tol,
                    "{kernel:?} rows {rows} n {n} k {k}: out[{i}] = {got}, dequantized reference {want} ± {tol}"
                );
            }
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(reference) => assert_eq!(
                    reference, &bits,
                    "{kernel:?} differs from the scalar kernel (rows {rows} n {n} k {k})"
                ),
            }
        }
    }

    #[test]
    fn matches_dequantized_reference_on_odd_shapes() {
        let mut seed = 0;
        // Rows and 16-channel blocks on either side of the micro tiles' sizes (4 rows × 1
        // block; 8 rows × 3 blocks for AVX-512 VNNI). Rows are split over threads in blocks
        // of a multiple of 4; the larger counts give blocks of 8 rows and more.
        for &rows in &[1, 3, 4, 5, 8, 9, 13, 29, 53] {
            for &(n, k) in &[(1, 1), (17, 5), (16, 64), (33, 37), (40, 130), (100, 24)] {
                seed += 1;
                check_shape(rows, n, k, seed % 2 == 0, seed);
            }
        }
    }

    #[test]
    fn matches_dequantized_reference_across_parallel_splits() {
        // Many rows: row blocks in parallel, with a partial last block and tile.
        check_shape(130, 50, 96, true, 100);
        // One row, many channels: channel blocks split across threads.
        check_shape(1, 200, 70, true, 101);
        check_shape(2, 47, 300, false, 102);
    }

    #[test]
    fn scalar_and_simd_kernels_agree_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if !Kernel::Avx2.is_supported() {
            not_run(
                "scalar_and_simd_kernels_agree_bit_for_bit",
                "every SIMD kernel",
                "AVX2",
            );
        }
        let kernels = kernels();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (rows, n, k) = (37, 70, 387);
        let w = random(&mut rng, n * k, -1.0, 1.0);
        let x = random(&mut rng, rows * k, -3.0, 3.0);
        let mut layer = shared_layer(&w, None, n, k);
        let outputs: Vec<Vec<u32>> = kernels
            .iter()
            .map(|&kernel| {
                layer.kernel = kernel;
                let mut out = vec![0f32; rows * n];
                layer.forward(&x, rows, &mut out);
                out.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for (kernel, out) in kernels.iter().zip(&outputs).skip(1) {
            assert!(
                out == &outputs[0],
                "{kernel:?} differs from the scalar kernel"
            );
        }
    }

    #[test]
    fn fused_activation_equals_a_separate_pass() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // 130 rows take the row-parallel path, 2 rows the channel-parallel one; 40 channels
        // end in a partial block.
        for (rows, n, k) in [(130, 40, 70), (2, 200, 33)] {
            let w = random(&mut rng, n * k, -0.5, 0.5);
            let b = random(&mut rng, n, -1.0, 1.0);
            let x = random(&mut rng, rows * k, -3.0, 3.0);
            let mut layer = shared_layer(&w, Some(&b), n, k);
            for kernel in kernels() {
                layer.kernel = kernel;
                let mut plain = vec![0f32; rows * n];
                layer.forward(&x, rows, &mut plain);
                for act in [Act::Gelu, Act::GeluTanh, Act::Relu] {
                    let mut separate = plain.clone();
                    crate::kernels::ops::activate(act, &mut separate);
                    let mut fused = vec![f32::NAN; rows * n];
                    layer.forward_activated(&x, rows, Some(act), &mut fused);
                    assert_eq!(
                        separate.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{kernel:?} {act:?}: rows {rows} n {n} k {k}"
                    );
                }
            }
        }
        // No inputs: the activated bias.
        let layer = QuantizedLinear::new(&[], Some(&[-1.0, 2.0]), 2, 0);
        let mut out = vec![f32::NAN; 4];
        layer.forward_activated(&[], 2, Some(Act::Relu), &mut out);
        assert_eq!(out, [0.0, 2.0, 0.0, 2.0]);
    }

    #[test]
    fn close_to_the_f32_product() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (rows, n, k) = (24, 96, 768);
        let w = random(&mut rng, n * k, -0.1, 0.1);
        let b = random(&mut rng, n, -0.5, 0.5);
        let x = random(&mut rng, rows * k, -2.0, 2.0);
        let layer = QuantizedLinear::new(&w, Some(&b), n, k);
        let mut out = vec![0f32; rows * n];
        layer.forward(&x, rows, &mut out);
        let (mut err2, mut ref2) = (0f64, 0f64);
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            let (lo, hi) = xr
                .iter()
                .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let a_step = f64::from(hi - lo) / 255.0;
            for j in 0..n {
                let wj = &w[j * k..(j + 1) * k];
                let w_step = f64::from(wj.iter().fold(0f32, |m, v| m.max(v.abs()))) / 64.0;
                let exact: f64 = xr
                    .iter()
                    .zip(wj)
                    .map(|(&a, &w)| f64::from(a) * f64::from(w))
                    .sum::<f64>()
                    + f64::from(b[j]);
                // Worst case of rounding both operands by half a step each.
                let bound: f64 = xr
                    .iter()
                    .zip(wj)
                    .map(|(&a, &w)| {
                        let (a, w) = (f64::from(a).abs(), f64::from(w).abs());
                        a * w_step / 2.0 + (w + w_step / 2.0) * a_step / 2.0
                    })
                    .sum();
                let got = f64::from(out[r * n + j]);
                assert!(
                    (got - exact).abs() <= bound,
                    "out[{r},{j}] = {got}, f32 product {exact}, bound {bound}"
                );
                err2 += (got - exact).powi(2);
                ref2 += exact.powi(2);
            }
        }
        // Rounding errors are independent, so the typical error is far below the worst case.
        let relative_rms = (err2 / ref2).sqrt();
        assert!(relative_rms < 0.01, "relative RMS error {relative_rms}");
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // Activations at 255 and weights at the kernel's largest magnitude everywhere: the
        // largest `vpmaddubsw` pair sums (±64) and `vpdpbusd` quad sums (±127).
        let (rows, n, k) = (2, 16, 256);
        let x = vec![1.0f32; rows * k];
        let w: Vec<f32> = (0..n * k)
            .map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        for kernel in kernels() {
            let layer = QuantizedLinear::quantize(&w, None, n, k, kernel);
            let mut out = vec![0f32; rows * n];
            layer.forward(&x, rows, &mut out);
            for (i, &v) in out.iter().enumerate() {
                let want = if (i % n) % 2 == 0 {
                    k as f32
                } else {
                    -(k as f32)
                };
                assert!(
                    (v - want).abs() <= want.abs() * 1e-6,
                    "{kernel:?}: out[{i}] = {v}, want {want}"
                );
            }
        }
    }

    #[test]
    fn zero_rows_and_channels_give_the_bias() {
        let (rows, n, k) = (3, 5, 9);
        let mut w = vec![0.5f32; n * k];
        w[2 * k..3 * k].fill(0.0);
        let b = [0.1, -0.2, 0.3, -0.4, 0.5];
        let mut x = vec![1.0f32; rows * k];
        x[k..2 * k].fill(0.0);
        let layer = QuantizedLinear::new(&w, Some(&b), n, k);
        let mut out = vec![0f32; rows * n];
        layer.forward(&x, rows, &mut out);
        for r in 0..rows {
            for j in 0..n {
                let want = if r == 1 || j == 2 {
                    b[j]
                } else {
                    0.5 * k as f32 + b[j]
                };
                assert!(
                    (out[r * n + j] - want).abs() <= 1e-5,
                    "out[{r},{j}] = {}, want {want}",
                    out[r * n + j]
                );
            }
        }
    }

    #[test]
    fn eight_bit_weights_are_exact_on_the_kernels_that_take_them() {
        let (rows, n, k) = (7, 37, 301);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let w = random(&mut rng, n * k, -0.2, 0.2);
        let b = random(&mut rng, n, -1.0, 1.0);
        let x = random(&mut rng, rows * k, -0.5, 2.0);
        let mut layer = QuantizedLinear::quantize(&w, Some(&b), n, k, Kernel::Scalar);
        assert_eq!(
            layer.packed.iter().map(|q| q.unsigned_abs()).max(),
            Some(127)
        );
        let wide: Vec<Kernel> = kernels()
            .into_iter()
            .filter(|k| k.weight_levels() == 127.0)
            .collect();
        check_kernels(&mut layer, &x, rows, Some(&b), &wide);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[should_panic(expected = "not exact on Avx2")]
    fn eight_bit_weights_are_refused_by_the_avx2_kernel() {
        // The check comes before any AVX2 instruction, so this holds on every x86-64 CPU.
        let mut layer = QuantizedLinear::quantize(&[0.5; 8], None, 2, 4, Kernel::Scalar);
        layer.kernel = Kernel::Avx2;
        layer.forward(&[1.0; 4], 1, &mut [0.0; 2]);
    }

    #[test]
    fn weight_rounding_is_round_ties_even_then_clamp() {
        let ties = [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 63.5, -63.5, 126.5, -126.5,
        ];
        let sweep = (-70_000..=70_000).map(|i| i as f32 / 1000.0);
        for x in ties
            .into_iter()
            .chain(sweep)
            .chain([f32::MAX, f32::MIN, 1e-30])
        {
            for levels in [64.0, 127.0] {
                let expected = x.round_ties_even().clamp(-levels, levels) as i8;
                assert_eq!(
                    round_weight(x, levels),
                    expected,
                    "x = {x}, levels {levels}"
                );
            }
        }
    }

    #[test]
    fn empty_inputs_leave_nothing_to_do() {
        let layer = QuantizedLinear::new(&[], Some(&[1.0, 2.0]), 2, 0);
        let mut out = vec![0f32; 6];
        layer.forward(&[], 3, &mut out);
        assert_eq!(out, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        let layer = QuantizedLinear::new(&[0.0; 8], None, 2, 4);
        layer.forward(&[], 0, &mut []);
    }
}
