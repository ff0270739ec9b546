//! bertqa's errors as Python exceptions, with bertqa's messages.
//!
//! What the caller passed (questions, contexts, parameters, an unsupported model) raises
//! `ValueError`; files and directories that are missing or unreadable raise `OSError`
//! (`FileNotFoundError` where the OS said so), as transformers does for a model it cannot find.
//! A failure inside the computation raises `RuntimeError`.

use std::any::Any;

use bertqa::Error;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// The Python exception for a bertqa error; the message is bertqa's.
pub fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match &error {
        Error::InvalidInput(_)
        | Error::InvalidParameter { .. }
        | Error::UnsupportedModel { .. }
        | Error::Tokenizer(_)
        | Error::Data { .. } => PyValueError::new_err(message),
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        Error::ModelNotFound { .. }
        | Error::Checkpoint { .. }
        | Error::Weights { .. }
        | Error::Io { .. }
        | Error::Index { .. } => PyOSError::new_err(message),
        // The Python package always runs on the CPU, so a device error is bertqa's own failure.
        Error::Candle(_) | Error::Device(_) => PyRuntimeError::new_err(message),
    }
}

/// A `RuntimeError` for a panic caught inside bertqa (or a crate it uses), instead of pyo3's
/// `PanicException`, which `except Exception` does not catch.
pub fn from_panic(payload: Box<dyn Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown cause");
    PyRuntimeError::new_err(format!(
        "bertqa failed on this input: {what}; nothing was answered"
    ))
}
