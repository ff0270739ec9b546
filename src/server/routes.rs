//! HTTP endpoints and the middleware around them (request ids, logs, metrics, concurrency limit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tracing::Instrument;

use super::api::{self, InputLimits};
use super::batcher::BatchError;
use super::error::{ApiError, ErrorKind};
use super::AppState;
use crate::error::Error;
use crate::pipeline::QaRequest;

/// The OpenAPI 3 description of the endpoints.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Builds the router: question answering on `POST /` and `POST /question-answering`, plus
/// `/health`, `/info`, `/metrics`, `/openapi.json` and the browser page on `GET /`.
pub fn router(state: Arc<AppState>) -> Router {
    let qa = Router::new()
        .route("/", post(question_answering))
        .route("/question-answering", post(question_answering))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_concurrency,
        ));
    Router::new()
        .merge(qa)
        // Outside the concurrency limit: loading the page must not take a request's permit.
        .route("/", get(super::page::page))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.payload_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Endpoint label for metrics; unknown paths share one label to bound cardinality.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/question-answering" => "/question-answering",
        "/health" => "/health",
        "/info" => "/info",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        _ => "other",
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is short and printable, else a fresh one.
fn request_id(req: &Request) -> String {
    let given = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        });
    if let Some(id) = given {
        return id.to_string();
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Gives every request an id (logged and echoed in `x-request-id`), logs it and counts it.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let endpoint = endpoint_label(req.uri().path());
    // `GET /` is the page, not a question.
    let answers_questions =
        req.method() == Method::POST && matches!(endpoint, "/" | "/question-answering");
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let start = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let latency = start.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .record_request(endpoint, status, answers_questions.then_some(latency));
    span.in_scope(|| {
        let latency_ms = latency.as_secs_f64() * 1e3;
        if answers_questions || status >= 400 {
            tracing::info!(status, latency_ms, "request finished");
        } else {
            tracing::debug!(status, latency_ms, "request finished");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// Decrements the in-flight gauge however the request ends (including client cancellation).
struct InFlight<'a>(&'a AppState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

/// Answers 429 at once when `max_concurrent_requests` requests are already being handled.
async fn limit_concurrency(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "the server is handling its limit of {} concurrent requests; retry later",
                state.config.max_concurrent_requests
            ),
        )
        .into_response();
    };
    state.metrics.in_flight.inc();
    let _in_flight = InFlight(&state);
    next.run(req).await
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
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
fn prepare_error(error: Error, path: &str) -> ApiError {
    match error {
        Error::InvalidParameter { name, message } => {
            ApiError::field(&format!("parameters.{name}"), message)
        }
        Error::InvalidInput(message) | Error::Tokenizer(message) => ApiError::field(path, message),
        other => ApiError::new(ErrorKind::Internal, other.to_string()),
    }
}

fn batch_error(error: BatchError) -> ApiError {
    match error {
        BatchError::Stopped => ApiError::new(
            ErrorKind::Unavailable,
            "the model is not running (the server is stopping); retry on another instance",
        ),
        BatchError::Model(_) => ApiError::new(ErrorKind::Internal, error.to_string()),
    }
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("worker task failed: {e}"))
}

fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// `POST /` and `POST /question-answering`.
async fn question_answering(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let bytes = body.map_err(|r| body_error(r, state.config.payload_limit))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let limits = InputLimits {
        max_client_batch_size: state.config.max_client_batch_size,
        max_context_chars: state.config.max_context_chars,
    };
    let body = api::parse_body(&value, &limits)?;
    drop(value);
    let paths: Vec<String> = (0..body.inputs.len()).map(|i| body.input_path(i)).collect();

    // Tokenize on the blocking pool, inputs in parallel.
    let tasks: Vec<_> = body
        .inputs
        .into_iter()
        .map(|input| {
            let qa = state.pipeline.clone();
            let request = QaRequest {
                question: input.question,
                context: input.context,
                params: body.params.clone(),
            };
            tokio::task::spawn_blocking(move || qa.prepare(&request))
        })
        .collect();
    let mut prepared = Vec::with_capacity(tasks.len());
    for (task, path) in tasks.into_iter().zip(&paths) {
        let p = task
            .await
            .map_err(join_error)?
            .map_err(|e| prepare_error(e, path))?;
        prepared.push(Arc::new(p));
    }
    let windows: usize = prepared.iter().map(|p| p.windows.len()).sum();
    tracing::debug!(inputs = prepared.len(), windows, "tokenized");

    // Queue every input, then wait for each; dropping this future withdraws what is left.
    let receivers = prepared
        .iter()
        .map(|p| state.batcher.enqueue(p.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(batch_error)?;
    let (mut queue_time, mut inference_time) = (Duration::ZERO, Duration::ZERO);
    let mut logits = Vec::with_capacity(receivers.len());
    for rx in receivers {
        let computed = rx
            .await
            .unwrap_or(Err(BatchError::Stopped))
            .map_err(batch_error)?;
        queue_time = queue_time.max(computed.queue_time);
        inference_time = inference_time.max(computed.inference_time);
        logits.push(computed.logits);
    }

    let answers = tokio::task::spawn_blocking(move || {
        prepared
            .iter()
            .zip(&logits)
            .map(|(p, l)| p.answers(l).answers)
            .collect::<Vec<_>>()
    })
    .await
    .map_err(join_error)?;
    let mut response = Json(api::shape_response(answers)).into_response();
    let headers = response.headers_mut();
    headers.insert("x-queue-time", millis(queue_time));
    headers.insert("x-inference-time", millis(inference_time));
    headers.insert("x-total-time", millis(start.elapsed()));
    Ok(response)
}

/// `GET /health`: 200 once the model has answered its warm-up request, 503 before and while
/// shutting down.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::new(
            ErrorKind::Unavailable,
            "the model is warming up (or the server is stopping)",
        )
        .into_response()
    }
}

/// `GET /info`: the model and the server's limits.
async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let qa = &state.pipeline;
    let c = &state.config;
    Json(json!({
        "model_id": qa.files().name,
        "model_type": qa.spec().model_type(),
        "max_position_embeddings": qa.spec().max_input_len(),
        "default_max_seq_len": qa.default_max_seq_len(),
        "max_concurrent_requests": c.max_concurrent_requests,
        "max_batch_tokens": c.max_batch_tokens,
        "max_client_batch_size": c.max_client_batch_size,
        "max_context_chars": c.max_context_chars,
        "payload_limit": c.payload_limit,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "no such endpoint; see /openapi.json for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "this endpoint does not take that method; see /openapi.json for the API",
    )
}
