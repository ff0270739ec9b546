//! HTTP endpoints: the route table, the handlers and the concurrency limit of the
//! question-answering endpoints. The middleware around them is in [`super::layers`], their
//! OpenAPI document in [`super::openapi`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};

use super::api::{self, AnswerResponses, Health, HealthStatus, Info, InputLimits, QaBody};
use super::error::{ApiError, ErrorBody, ErrorKind};
use super::handling::{body_error, compute, join_error, millis, prepare_error, read_json};
use super::{documents, layers, page, AppState};
use crate::pipeline::{Prepared, QaRequest};

/// One route: a method on a path, and what answers it.
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The path, as in the OpenAPI document.
    pub path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

fn endpoint<H, T>(method: Method, path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone())
        .unwrap_or_else(|_| unreachable!("the routes use GET and POST only"));
    Endpoint {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// Every route the server answers. The router is built from this list, and a test checks
/// that the OpenAPI document describes each of them.
pub fn endpoints(state: &Arc<AppState>) -> Vec<Endpoint> {
    // Questions: JSON bodies only (checked first, before a permit is taken), a permit each.
    let limited = |mut e: Endpoint| {
        e.handler = e
            .handler
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                limit_concurrency,
            ))
            .route_layer(middleware::from_fn(layers::require_json));
        e
    };
    vec![
        limited(endpoint(Method::POST, "/", answer_root)),
        limited(endpoint(Method::POST, "/question-answering", answer)),
        limited(endpoint(
            Method::POST,
            "/documents/question-answering",
            documents::question_answering,
        )),
        // Outside the concurrency limit: loading the page must not take a request's permit.
        endpoint(Method::GET, "/", page::page),
        endpoint(Method::GET, "/health", health),
        endpoint(Method::GET, "/info", info),
        endpoint(Method::GET, "/metrics", metrics),
        endpoint(Method::GET, "/openapi.json", openapi),
    ]
}

/// Builds the router: question answering on `POST /` and `POST /question-answering`, over the
/// document index on `POST /documents/question-answering`, plus `/health`, `/info`, `/metrics`, `/openapi.json` and the browser page on `GET /`, inside
/// the layers of [`layers::around`].
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for e in endpoints(&state) {
        router = router.route(e.path, e.handler);
    }
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.payload_limit));
    layers::around(router, &state).with_state(state)
}

/// Decrements the in-flight gauge however the request ends (including client cancellation
/// and timeouts).
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

/// Parses and validates a body.
async fn read_body(state: &AppState, bytes: Bytes) -> Result<QaBody, ApiError> {
    let value = read_json(bytes).await?;
    let limits = InputLimits {
        max_client_batch_size: state.config.max_client_batch_size,
        max_context_chars: state.config.max_context_chars,
    };
    api::parse_body(&value, &limits)
}

/// Tokenizes every input on the blocking pool, inputs in parallel.
async fn tokenize(state: &AppState, body: QaBody) -> Result<Vec<Arc<Prepared>>, ApiError> {
    let paths: Vec<String> = (0..body.inputs.len()).map(|i| body.input_path(i)).collect();
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
    Ok(prepared)
}

/// Answers questions about passages
///
/// One input gives the pipeline's output for it: an answer object when there is one answer
/// (top_k = 1), else a list of answers, best first. A list of several inputs gives a list with
/// that output per input. A list of one input is answered as a single input, as the pipeline
/// does. Windows of concurrent requests share model calls.
#[utoipa::path(
    post,
    path = "/question-answering",
    tag = "question answering",
    request_body = api::QaRequestBody,
    responses(AnswerResponses)
)]
pub async fn answer(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let bytes = body.map_err(|r| body_error(r, state.config.payload_limit))?;
    let body = read_body(&state, bytes).await?;
    let prepared = tokenize(&state, body).await?;
    let windows: usize = prepared.iter().map(|p| p.windows.len()).sum();
    tracing::debug!(inputs = prepared.len(), windows, "tokenized");
    let logits = compute(&state, &prepared).await?;
    let answers = tokio::task::spawn_blocking(move || {
        prepared
            .iter()
            .zip(&logits.per_input)
            .map(|(p, l)| p.answers(l).answers)
            .collect::<Vec<_>>()
    })
    .await
    .map_err(join_error)?;
    let mut response = Json(api::shape_response(answers)).into_response();
    let headers = response.headers_mut();
    headers.insert("x-queue-time", millis(logits.queue_time));
    headers.insert("x-inference-time", millis(logits.inference_time));
    headers.insert("x-total-time", millis(start.elapsed()));
    Ok(response)
}

/// Answers questions about passages (the same as `POST /question-answering`)
#[utoipa::path(
    post,
    path = "/",
    tag = "question answering",
    request_body = api::QaRequestBody,
    responses(AnswerResponses)
)]
pub async fn answer_root(
    state: State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(state, body).await
}

/// Readiness
///
/// 200 once the model has answered a warm-up request; 503 before that and while shutting down.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Health),
        (status = 503, description = "Warming up, or shutting down.", body = ErrorBody),
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(Health {
            status: HealthStatus::Ok,
        })
        .into_response()
    } else {
        ApiError::new(
            ErrorKind::Unavailable,
            "the model is warming up (or the server is stopping)",
        )
        .into_response()
    }
}

/// Model and limits
#[utoipa::path(
    get,
    path = "/info",
    tag = "operations",
    responses((status = 200, description = "The model and the server's limits.", body = Info))
)]
pub async fn info(State(state): State<Arc<AppState>>) -> Json<Info> {
    let qa = &state.pipeline;
    let c = &state.config;
    Json(Info {
        model_id: model_name(&qa.files().name, c.show_paths),
        model_type: qa.spec().model_type().to_string(),
        max_position_embeddings: qa.spec().max_input_len(),
        default_max_seq_len: qa.default_max_seq_len(),
        max_concurrent_requests: c.max_concurrent_requests,
        max_batch_tokens: c.max_batch_tokens,
        max_client_batch_size: c.max_client_batch_size,
        max_context_chars: c.max_context_chars,
        payload_limit: c.payload_limit,
        request_timeout_s: c.request_timeout.as_secs_f64(),
        max_windows_per_request: c.max_windows_per_request,
        header_read_timeout_s: c.header_read_timeout.as_secs_f64(),
        max_connections: c.max_connections,
        index: c.index.as_deref().map(documents::index_info),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// How `/info` names the model: a Hub id as it is; a local folder by its name alone (the
/// host's paths are nobody's business), or as given with `--show-paths`.
fn model_name(name: &str, show_paths: bool) -> String {
    let path = std::path::Path::new(name);
    if show_paths || !path.exists() {
        return name.to_string();
    }
    let folder = match path.file_name() {
        Some(folder) => Some(folder.to_owned()),
        // `.`, `..` or `/`: the name of the folder they are.
        None => std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_owned())),
    };
    folder.map_or_else(
        || "local model".to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// Prometheus metrics
///
/// `bertqa_requests_total{endpoint,status}`, `bertqa_requests_in_flight`, `bertqa_queue_size`,
/// `bertqa_cancelled_inputs_total`, `bertqa_batches_total` and the histograms
/// `bertqa_request_duration_seconds` (question-answering requests only),
/// `bertqa_queue_duration_seconds`, `bertqa_inference_duration_seconds`, `bertqa_batch_size`
/// (windows per model call) and `bertqa_batch_tokens` (tokens per model call).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4.",
        body = String,
        content_type = "text/plain; version=0.0.4"
    ))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The API as OpenAPI 3.1.", body = serde_json::Value))
)]
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        (state.openapi)(),
    )
        .into_response()
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
