//! Numeric kernels on `f32` slices, shared by the fast inference engine ([`crate::fast`]) and
//! the training ops ([`crate::nn`]); neither owns them, and they know nothing of either.
//!
//! - [`ops`]: matrix products on strided views and the fused element-wise passes (bias,
//!   activation, residual + LayerNorm, softmax);
//! - [`sgemm`]: the f32 product on weights packed once (AVX2/FMA and AVX-512 micro kernels);
//! - [`int8`]: int8 products (AVX-512 VNNI, AVX2, portable);
//! - [`attention`]: fused per-window self-attention;
//! - [`linear`]: linear layers in the chosen [`Precision`](crate::engine::Precision).
//!
//! Hand-written because candle's CPU ops call libm per element, allocate per op and repack
//! weights on every product; each kernel is tested against a plain reference and, where the
//! CPU has several instruction-set variants, for bit-identical results across them.

pub mod attention;
pub mod int8;
pub mod linear;
#[cfg(test)]
mod not_run;
pub mod ops;
pub mod sgemm;
mod simd;
