//! Fast CPU inference engine.

pub mod int8;
