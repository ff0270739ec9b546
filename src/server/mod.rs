//! `bertqa serve`: an HTTP question-answering server with dynamic batching.
//!
//! Requests are validated at the edge ([`api`]), tokenized on the blocking thread pool, and their
//! windows queued for a scheduler that packs windows of many requests into model calls and runs
//! one call per core at a time ([`batcher`]). The endpoints ([`routes`]) answer in the shapes of
//! transformers' `question-answering` pipeline; errors are JSON `{"error", "error_type"}`
//! ([`error`]). Around them: request ids, logs, metrics ([`metrics`]), the `Host` allow-list
//! ([`hosts`]), compression, timeouts and CORS ([`layers`]); [`openapi`] derives the API's
//! document from the handlers and types. Connections are hyper's, with a header-read timeout
//! and a cap on how many are open at once ([`serve`]).

pub mod api;
pub mod batcher;
pub mod documents;
pub mod error;
mod handling;
pub mod hosts;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod routes;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::pipeline::{QaPipeline, QaRequest};
use batcher::{BatchCost, BatchOptions, Batcher, Runner};
pub use hosts::AllowedHosts;
pub use layers::CorsOrigins;
use metrics::Metrics;

/// The server's limits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Requests handled at once; more are answered 429 at once.
    pub max_concurrent_requests: usize,
    /// Most tokens per model call, as the engine counts them (padded engines: windows ×
    /// longest window; the fast engine: the sum of window lengths).
    pub max_batch_tokens: usize,
    /// Most inputs in one request.
    pub max_client_batch_size: usize,
    /// Longest context, in characters.
    pub max_context_chars: usize,
    /// Largest request body, in bytes.
    pub payload_limit: usize,
    /// The document index `POST /documents/question-answering` answers over (none: that
    /// endpoint answers 404).
    pub index: Option<Arc<crate::index::Index>>,
    /// Longest a request may take; longer ones are answered 503 and their inputs withdrawn.
    pub request_timeout: Duration,
    /// Origins whose pages may call the API (CORS).
    pub cors_allow_origins: CorsOrigins,
    /// Most windows the inputs of one request may make; more are answered 413 before any
    /// model call.
    pub max_windows_per_request: usize,
    /// Longest a connection may take to send a request's head, counted from its opening or
    /// from the previous response (so also how long an idle keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// `Host` headers answered; others get 421.
    pub allowed_hosts: AllowedHosts,
    /// Whether `/info` names the model by the path it was loaded from (else by its folder's
    /// name alone, so that the host's paths are not shown).
    pub show_paths: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 512,
            max_batch_tokens: 16384,
            max_client_batch_size: 32,
            max_context_chars: crate::pipeline::DEFAULT_MAX_CONTEXT_CHARS,
            payload_limit: 2_000_000,
            index: None,
            request_timeout: Duration::from_secs(60),
            cors_allow_origins: CorsOrigins::SameOrigin,
            max_windows_per_request: DEFAULT_MAX_WINDOWS_PER_REQUEST,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            allowed_hosts: AllowedHosts::loopback(),
            show_paths: false,
        }
    }
}

/// Default `--max-windows-per-request`: about 100,000 tokens of context at 384-token windows.
pub const DEFAULT_MAX_WINDOWS_PER_REQUEST: usize = 256;

/// What the handlers share.
pub struct AppState {
    /// The model and tokenizer (tokenization runs on the blocking pool).
    pub pipeline: Arc<QaPipeline>,
    /// The model workers' queue.
    pub batcher: Batcher,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub config: ServerConfig,
    /// True once the model has answered the warm-up request, false again when stopping.
    pub ready: AtomicBool,
    /// One permit per request being handled.
    pub permits: Arc<Semaphore>,
    /// The OpenAPI document `GET /openapi.json` serves, built on its first request.
    pub openapi: fn() -> &'static str,
}

impl AppState {
    /// Starts the batcher for `pipeline`: one model worker per thread of rayon's pool.
    pub fn new(pipeline: Arc<QaPipeline>, config: ServerConfig) -> std::io::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::default());
        let model = pipeline.clone();
        let runner: Runner = Arc::new(move |windows| model.answer_logits(windows));
        let engine = pipeline.clone();
        let cost: BatchCost = Arc::new(move |lengths| engine.engine().batch_cost(lengths));
        let options = BatchOptions::new(config.max_batch_tokens);
        tracing::debug!(workers = options.workers, "model workers");
        let batcher = Batcher::start(runner, cost, options, metrics.clone())?;
        Ok(Arc::new(Self {
            pipeline,
            batcher,
            metrics,
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            config,
            ready: AtomicBool::new(false),
            openapi: openapi::json,
        }))
    }
}

const WARM_UP_QUESTION: &str = "What is this request for?";
const WARM_UP_CONTEXT: &str = "This request warms the model up before the server reports ready.";

/// Sends one request through the whole path (tokenizer, queue, model, decoding); marks the
/// server ready when it is answered.
async fn warm_up(state: Arc<AppState>) {
    let start = Instant::now();
    let qa = state.pipeline.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        qa.prepare(&QaRequest::new(WARM_UP_QUESTION, WARM_UP_CONTEXT))
    })
    .await;
    let prepared = match prepared {
        Ok(Ok(p)) => Arc::new(p),
        Ok(Err(e)) => return tracing::error!(error = %e, "warm-up request failed to tokenize"),
        Err(e) => return tracing::error!(error = %e, "warm-up task failed"),
    };
    let reply = match state.batcher.enqueue(prepared.clone()) {
        Ok(rx) => rx.await.unwrap_or(Err(batcher::BatchError::Stopped)),
        Err(e) => Err(e),
    };
    match reply {
        Ok(computed) => {
            let answers = prepared.answers(&computed.logits).answers;
            state.ready.store(true, Ordering::Release);
            tracing::info!(
                elapsed_ms = start.elapsed().as_secs_f64() * 1e3,
                answers = answers.len(),
                "model warmed up; ready"
            );
        }
        Err(e) => tracing::error!(error = %e, "warm-up request failed; /health stays 503"),
    }
}

/// Folds histogram samples into buckets every few seconds, whether or not anyone scrapes, and
/// lets the allocator return the memory that large model calls freed and no call has reused
/// since (with the purge delay `bertqa serve` sets), so that an idle server shrinks back.
async fn metrics_upkeep(metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        metrics.run_upkeep();
        // SAFETY: `mi_collect` takes no pointers; it tidies the calling thread's mimalloc heap
        // and purges the process's freed pages whose purge delay has passed. It is safe from any
        // thread, and harmless where mimalloc is not the global allocator (its heaps are then
        // empty).
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting connections and returns
/// once the requests in flight are answered.
///
/// Each connection is hyper's HTTP/1.1 with `header_read_timeout` (a client that sends its
/// request head slowly, or none, or sits idle between requests, is closed), and at most
/// `max_connections` are open at once: the next one is accepted when one closes.
pub async fn serve(
    pipeline: Arc<QaPipeline>,
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let state = AppState::new(pipeline, config)?;
    tokio::spawn(warm_up(state.clone()));
    tokio::spawn(metrics_upkeep(state.metrics.clone()));
    let app = routes::router(state.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Header-read timeouts, resets and malformed requests: the client's doing.
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    state.ready.store(false, Ordering::Release);
    tracing::info!("shutting down: finishing requests in flight");
    graceful.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits after a failed `accept`: errors of one connection (reset before it was accepted) are
/// retried at once; others (out of file descriptors) after a second, instead of spinning.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
