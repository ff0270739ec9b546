//! # bertqa
//!
//! Extractive question answering with BERT-family models: given a question and a passage,
//! return the answer span inside the passage with its score and character offsets — the
//! answers of transformers' `question-answering` pipeline, from a Rust library and one binary.
//!
//! ```no_run
//! use bertqa::{LoadOptions, QaPipeline, QaRequest};
//!
//! let qa = QaPipeline::load("distilbert-base-cased-distilled-squad", &LoadOptions::default())?;
//! let answers = qa.answer_one(&QaRequest::new(
//!     "Where do I live?",
//!     "My name is Wolfgang and I live in Berlin.",
//! ))?;
//! println!("{} ({:.3})", answers[0].answer, answers[0].score);
//! # Ok::<(), bertqa::Error>(())
//! ```

// Modules from the bottom layer up: each imports only those listed before it.
pub mod checkpoint;
pub mod decode;
pub mod device;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod fast;
pub mod features;
pub mod files;
pub mod fpenv;
pub mod index;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod sentencepiece;
pub mod server;
pub mod squad;
pub mod train;

pub use checkpoint::{HubOptions, DEFAULT_MODEL};
pub use decode::{Answer, DecodeParams, Decoded};
pub use device::{DeviceChoice, FloatType};
pub use engine::{Engine, EngineKind, Precision, Tokens, WindowLogits};
pub use error::{Error, Result};
pub use pipeline::{EngineChoice, LoadOptions, QaParams, QaPipeline, QaRequest};
