//! The pipeline's keyword arguments, from a Python dict into [`QaParams`].

use bertqa::{Error, QaParams};
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors;

/// Largest `top_k` and `max_answer_len` passed on. No context has as many candidate spans, or
/// answers as many tokens long, so a larger value answers the same; capping keeps the decoder's
/// index arithmetic (`2·top_k + 10`, `start + max_answer_len`) far from overflowing.
const COUNT_CAP: usize = u32::MAX as usize;

/// Reads `params` (keyword argument → value; `None` values mean "the default").
pub fn from_dict(params: Option<&Bound<'_, PyDict>>) -> PyResult<QaParams> {
    let mut out = QaParams::default();
    let Some(params) = params else {
        return Ok(out);
    };
    for (key, value) in params.iter() {
        let name: String = key.extract()?;
        if value.is_none() {
            continue;
        }
        match name.as_str() {
            "top_k" => out.top_k = Some(count("top_k", &value, 1)?.min(COUNT_CAP)),
            "max_answer_len" => {
                out.max_answer_len = Some(count("max_answer_len", &value, 1)?.min(COUNT_CAP))
            }
            "max_seq_len" => out.max_seq_len = Some(count("max_seq_len", &value, 1)?),
            "doc_stride" => out.doc_stride = Some(count("doc_stride", &value, 0)?),
            "max_question_len" => {
                out.max_question_len = Some(count("max_question_len", &value, 0)?)
            }
            "handle_impossible_answer" => out.handle_impossible_answer = Some(value.is_truthy()?),
            "align_to_words" => out.align_to_words = Some(value.is_truthy()?),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument `{other}`; the pipeline takes top_k, \
                     max_answer_len, max_seq_len, doc_stride, max_question_len, \
                     handle_impossible_answer and align_to_words"
                )))
            }
        }
    }
    Ok(out)
}

/// A whole number of at least `min`, for the parameter `name`.
fn count(name: &'static str, value: &Bound<'_, PyAny>, min: usize) -> PyResult<usize> {
    let invalid = |message: String| errors::to_py(Error::InvalidParameter { name, message });
    // bool is an int in Python: `top_k=True` is 1, as transformers takes it.
    let number: i64 = match value.extract() {
        Ok(n) => n,
        Err(e) if e.is_instance_of::<PyOverflowError>(value.py()) => {
            if value.lt(0)? {
                return Err(invalid(format!("must be at least {min}, got {value}")));
            }
            i64::MAX
        }
        Err(_) => {
            return Err(PyTypeError::new_err(format!(
                "invalid parameter `{name}`: must be an int, got {}",
                value.get_type().name()?
            )))
        }
    };
    match usize::try_from(number) {
        Ok(n) if n >= min => Ok(n),
        _ => Err(invalid(format!("must be at least {min}, got {number}"))),
    }
}
