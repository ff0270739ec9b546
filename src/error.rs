//! Typed errors of the library. Each message says what went wrong and what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in bertqa's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A question or context that cannot be answered (empty, whitespace only, too long...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A parameter outside its valid range (e.g. `doc_stride > max_seq_len`).
    #[error("invalid parameter `{name}`: {message}")]
    InvalidParameter {
        /// Parameter name as the transformers pipeline spells it.
        name: &'static str,
        /// What is wrong and what would be valid.
        message: String,
    },

    /// The model could not be found locally or in the Hugging Face cache.
    #[error("model `{model}` not found: {message}")]
    ModelNotFound {
        /// Directory or Hub id that was asked for.
        model: String,
        /// Why it was not found and what to try.
        message: String,
    },

    /// A checkpoint file is missing, unreadable or malformed.
    #[error("checkpoint file {}: {message}", path.display())]
    Checkpoint {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A tensor the architecture needs is absent from the weights or has the wrong shape.
    #[error("weights in {}: tensor `{tensor}`: {message}", path.display())]
    Weights {
        /// The weight file.
        path: PathBuf,
        /// The tensor name (Hugging Face naming).
        tensor: String,
        /// What is wrong: missing, wrong shape, unreadable.
        message: String,
    },

    /// config.json names an architecture this build cannot run.
    #[error("unsupported model_type `{model_type}`; supported: {}", supported.join(", "))]
    UnsupportedModel {
        /// The `model_type` found in config.json.
        model_type: String,
        /// Every `model_type` bertqa can load.
        supported: Vec<&'static str>,
    },

    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A data file (SQuAD JSON, JSONL) is malformed.
    #[error("{location}: {message}")]
    Data {
        /// File, line or field where the problem is.
        location: String,
        /// What is wrong.
        message: String,
    },

    /// The device asked for cannot be used (a build without CUDA, no GPU, no driver).
    #[error("device: {0}")]
    Device(String),

    /// Tensor computation failed.
    #[error("model computation: {0}")]
    Candle(#[from] candle_core::Error),

    /// I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error comes from what the user supplied (bad input, bad files,
    /// unsupported model) rather than from a failure inside bertqa. The CLI exits with 2 for these.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Candle(_))
    }
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
