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

// Modules from the bottom layer up: each imports only modules of the layers above it in this
// list. ARCHITECTURE.md draws the same map.

// Errors, files, the floating-point environment of model threads.
pub mod error;
pub mod files;
pub mod fpenv;
// Where the model runs; the engine interface; tokenizer conversion; SQuAD data and metric.
pub mod device;
pub mod engine;
pub mod sentencepiece;
pub mod squad;
// Checkpoint files; the numeric kernels.
pub mod checkpoint;
pub mod kernels;
// Training ops (candle).
pub mod nn;
// The fast inference engine.
pub mod fast;
// The architectures and their registry.
pub mod models;
// Question + context → windows.
pub mod features;
// Logits → answer spans; the per-question parameters.
pub mod decode;
pub mod params;
// Windows → engine → answers.
pub mod pipeline;
// Over the pipeline: SQuAD evaluation, the document index.
pub mod evaluate;
pub mod index;
// At the top: training and the HTTP server.
pub mod server;
pub mod train;

pub use checkpoint::{HubOptions, DEFAULT_MODEL};
pub use decode::{Answer, DecodeParams, Decoded};
pub use device::{DeviceChoice, FloatType};
pub use engine::{Engine, EngineKind, Precision, Tokens, WindowLogits};
pub use error::{Error, Result};
pub use params::QaParams;
pub use pipeline::{EngineChoice, LoadOptions, QaPipeline, QaRequest};
