//! The fast CPU inference engine for BERT-style encoders.
//!
//! [`FastQaModel`] runs the same math as the reference models in [`crate::models`] for
//! `bert`, `roberta`, `xlm-roberta`, `electra` and `distilbert`, without padding, with fused
//! kernels and weights laid out once at load; optionally with int8 weights ([`int8`]).
//! Training always uses the reference models.

pub mod attention;
pub mod encoder;
pub mod int8;
pub mod kernels;
pub mod linear;
pub mod sgemm;
mod simd;

pub use encoder::{FastQaModel, Tokens};
