//! What the handlers share: reading a JSON body, turning library and batcher errors into API
//! errors, and computing the logits of prepared inputs through the batcher.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode};
use serde_json::Value;

use super::batcher::{BatchError, Computed};
use super::error::{ApiError, ErrorKind};
use super::AppState;
use crate::engine::WindowLogits;
use crate::error::Error;
use crate::pipeline::Prepared;

/// A body that could not be read as an API error: over the size limit, or not readable.
pub(super) fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the body is over the server's limit of {limit} bytes (--payload-limit); \
                 send fewer or shorter inputs"
            ),
        )
    } else {
        ApiError::new(ErrorKind::InvalidJson, rejection.body_text())
    }
}

/// A library error about input `path` as a response.
pub(super) fn prepare_error(error: Error, path: &str) -> ApiError {
    match error {
        Error::InvalidParameter { name, message } => {
            ApiError::field(&format!("parameters.{name}"), message)
        }
        Error::InvalidInput(message) | Error::Tokenizer(message) => ApiError::field(path, message),
        other => ApiError::new(ErrorKind::Internal, other.to_string()),
    }
}

/// A batcher error as an API error.
pub(super) fn batch_error(error: BatchError) -> ApiError {
    match error {
        BatchError::Stopped => ApiError::new(
            ErrorKind::Unavailable,
            "the model is not running (the server is stopping); retry on another instance",
        ),
        BatchError::Model(_) => ApiError::new(ErrorKind::Internal, error.to_string()),
    }
}

/// A blocking task that failed (panicked) as an API error.
pub(super) fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("worker task failed: {e}"))
}

/// A duration as a header value in milliseconds.
pub(super) fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// Bodies up to this size are parsed on the async runtime; larger ones on the blocking pool,
/// so that a 2 MB body does not hold up the other connections of its runtime thread.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Parses a body as JSON (a large one on the blocking pool).
pub(super) async fn read_json(bytes: Bytes) -> Result<Value, ApiError> {
    if bytes.len() <= INLINE_PARSE_BYTES {
        parse_json(&bytes)
    } else {
        tokio::task::spawn_blocking(move || parse_json(&bytes))
            .await
            .map_err(join_error)?
    }
}

/// The logits of every input, with the longest queue and inference times among them.
pub(super) struct Logits {
    /// Per input, in the order given, its windows' logits.
    pub per_input: Vec<Vec<WindowLogits>>,
    /// The longest time an input waited before its first model call.
    pub queue_time: Duration,
    /// The longest time from an input's first model call to its last.
    pub inference_time: Duration,
}

/// Queues every input, then waits for each; dropping this future withdraws what is left.
/// Inputs that make more windows than `--max-windows-per-request` are refused first.
pub(super) async fn compute(
    state: &AppState,
    prepared: &[Arc<Prepared>],
) -> Result<Logits, ApiError> {
    let windows: usize = prepared.iter().map(|p| p.windows.len()).sum();
    let limit = state.config.max_windows_per_request;
    if windows > limit {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the inputs make {windows} windows for the model, over the server's limit of \
                 {limit} per request (--max-windows-per-request); send shorter contexts or \
                 fewer inputs"
            ),
        ));
    }
    let receivers = prepared
        .iter()
        .map(|p| state.batcher.enqueue(p.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(batch_error)?;
    let mut out = Logits {
        per_input: Vec::with_capacity(receivers.len()),
        queue_time: Duration::ZERO,
        inference_time: Duration::ZERO,
    };
    for rx in receivers {
        let computed: Computed = rx
            .await
            .unwrap_or(Err(BatchError::Stopped))
            .map_err(batch_error)?;
        out.queue_time = out.queue_time.max(computed.queue_time);
        out.inference_time = out.inference_time.max(computed.inference_time);
        out.per_input.push(computed.logits);
    }
    Ok(out)
}
