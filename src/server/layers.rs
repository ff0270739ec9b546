//! The middleware around every route: request ids, request logs, metrics, the `Host`
//! allow-list, compression, timeouts and CORS, from tower-http; what is the server's own is the
//! rules (which client ids are kept, which requests are logged at info, which hosts are
//! answered, the JSON body of a timeout), and the check that question bodies are JSON.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

use super::error::{ApiError, ErrorKind};
use super::AppState;

/// Wraps `router` in the server's middleware, outermost first: request id, request log,
/// metrics, `Host` allow-list, compression, timeout, CORS (when configured).
pub fn around(router: Router<Arc<AppState>>, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let config = &state.config;
    let router = match cors_layer(&config.cors_allow_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(
        ServiceBuilder::new()
            .layer(middleware::map_request(drop_unusable_request_id))
            .layer(SetRequestIdLayer::x_request_id(NextRequestId))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(RequestSpan)
                    .on_request(())
                    .on_response(LogResponse)
                    .on_body_chunk(())
                    .on_eos(())
                    // Failures are logged where they happen, with what went wrong.
                    .on_failure(()),
            )
            .layer(middleware::from_fn_with_state(state.clone(), count))
            .layer(middleware::from_fn_with_state(state.clone(), check_host))
            .layer(CompressionLayer::new())
            .layer(middleware::map_response_with_state(
                config.request_timeout,
                timeout_as_json,
            ))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                config.request_timeout,
            )),
    )
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's request id is kept when it is short and printable (it goes into logs).
pub fn usable_request_id(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|s| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    })
}

/// Removes a client's `x-request-id` that is not usable, so that the request gets a fresh one.
async fn drop_unusable_request_id(mut req: Request) -> Request {
    if req
        .headers()
        .get_all(&X_REQUEST_ID)
        .iter()
        .any(|v| !usable_request_id(v))
    {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

/// Fresh request ids: a random prefix per process, then a counter.
#[derive(Clone, Copy)]
struct NextRequestId;

impl MakeRequestId for NextRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let prefix = PREFIX.get_or_init(rand::random::<u32>);
        let id = format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed));
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Every request's log lines carry its id, method and path.
#[derive(Clone, Copy)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        let id = req
            .extensions()
            .get::<RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or("-");
        tracing::info_span!(
            "request",
            request_id = %id,
            method = %req.method(),
            path = %req.uri().path(),
        )
    }
}

/// Set on the responses of question-answering requests (see [`count`]).
#[derive(Clone, Copy)]
struct AnsweredQuestions;

/// Logs each response: at info for questions and errors, at debug for the rest (health
/// checks and scrapes would drown the log).
#[derive(Clone, Copy)]
struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, _: &Span) {
        let status = response.status().as_u16();
        let latency_ms = latency.as_secs_f64() * 1e3;
        if status >= 400 || response.extensions().get::<AnsweredQuestions>().is_some() {
            tracing::info!(status, latency_ms, "request finished");
        } else {
            tracing::debug!(status, latency_ms, "request finished");
        }
    }
}

/// Endpoint label for metrics; unknown paths share one label to bound cardinality.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/question-answering" => "/question-answering",
        "/documents/question-answering" => "/documents/question-answering",
        "/health" => "/health",
        "/info" => "/info",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        _ => "other",
    }
}

/// Counts every request by endpoint and status, and times the question-answering ones.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.uri().path());
    // `GET /` is the page, not a question.
    let answers_questions = req.method() == Method::POST
        && matches!(
            endpoint,
            "/" | "/question-answering" | "/documents/question-answering"
        );
    let start = Instant::now();
    let mut response = next.run(req).await;
    let status = response.status().as_u16();
    state
        .metrics
        .record_request(endpoint, status, answers_questions.then(|| start.elapsed()));
    if answers_questions {
        response.extensions_mut().insert(AnsweredQuestions);
    }
    response
}

/// Answers 421 to a request whose `Host` is not allowed (a page of another site whose name
/// resolves to this server, see [`super::hosts`]). Requests without a `Host` (HTTP/1.0) come
/// from no browser and are answered.
async fn check_host(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if !state.config.allowed_hosts.allows(host) => {
            let shown: String = host.chars().take(100).collect();
            ApiError::new(
                ErrorKind::HostNotAllowed,
                format!(
                    "this server does not answer for host `{shown}`; reach it by an allowed \
                     name, or start it with --allowed-hosts {} (or `*` for any)",
                    shown
                        .rsplit_once(':')
                        .map_or(shown.as_str(), |(name, _)| name)
                ),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Answers 415 to a body not sent as `application/json`, before it is read: browsers send
/// `text/plain` and form bodies to any site without asking it first (no CORS preflight), JSON
/// only after the server has agreed.
pub async fn require_json(req: Request, next: Next) -> Response {
    let content_type = req.headers().get(header::CONTENT_TYPE);
    let json = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if json {
        return next.run(req).await;
    }
    let given = content_type.map_or("none".to_string(), |v| {
        format!(
            "`{}`",
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        )
    });
    ApiError::new(
        ErrorKind::UnsupportedMediaType,
        format!("the body must be sent with content-type: application/json (it was {given})"),
    )
    .into_response()
}

/// Gives the timeout layer's bare 503 the JSON error body every other error has. (Every 503
/// of the server's own has a content type.)
async fn timeout_as_json(State(timeout): State<Duration>, response: Response) -> Response {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    ApiError::new(
        ErrorKind::Timeout,
        format!(
            "the request took longer than the server's limit of {} (--request-timeout); \
             send fewer or shorter inputs, or retry when the server is less busy",
            humantime::format_duration(timeout)
        ),
    )
    .into_response()
}

/// Which origins may call the API from a browser page of theirs (CORS).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum CorsOrigins {
    /// Only pages the server serves itself (no CORS headers).
    #[default]
    SameOrigin,
    /// Any origin (`*`).
    Any,
    /// These origins, exactly.
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    /// Reads `--cors-allow-origin` values: `*` alone, or origins such as
    /// `https://example.com` or `http://localhost:3000`; none is [`CorsOrigins::SameOrigin`].
    pub fn parse(origins: &[String]) -> Result<Self, String> {
        if origins.iter().any(|o| o == "*") {
            return if origins.len() == 1 {
                Ok(Self::Any)
            } else {
                Err("`*` already allows every origin; give it alone".into())
            };
        }
        if origins.is_empty() {
            return Ok(Self::SameOrigin);
        }
        origins
            .iter()
            .map(|o| parse_origin(o))
            .collect::<Result<_, _>>()
            .map(Self::List)
    }
}

fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let wrong = || {
        format!(
            "`{origin}` is not an origin; write scheme://host[:port], e.g. https://example.com \
             (no path, no trailing slash), or `*` for any"
        )
    };
    let (scheme, host) = origin.split_once("://").ok_or_else(wrong)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if !matches!(scheme, "http" | "https") || !host_ok || !port_ok(host) {
        return Err(wrong());
    }
    HeaderValue::from_str(origin).map_err(|_| wrong())
}

/// The port of `host` (`name:port`, `[v6]:port`), when it has one, is a TCP port.
fn port_ok(host: &str) -> bool {
    let port = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, rest)) => rest,
            None => return false,
        },
        None => host.find(':').map_or("", |colon| &host[colon..]),
    };
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|n| n.parse::<u16>().is_ok_and(|n| n > 0))
}

/// The CORS layer for `origins`; none for same-origin only.
fn cors_layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::SameOrigin => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, X_REQUEST_ID.clone()])
            .expose_headers([
                X_REQUEST_ID.clone(),
                HeaderName::from_static("x-queue-time"),
                HeaderName::from_static("x-inference-time"),
                HeaderName::from_static("x-total-time"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_are_kept_when_short_and_printable() {
        for id in [
            "trace-42",
            "a",
            "0af7651916cd43dd8448eb211c80319c",
            "x.y_z:1",
        ] {
            assert!(usable_request_id(&HeaderValue::from_static(id)), "{id}");
        }
        let long = "x".repeat(129);
        for id in ["", "has space", "semi;colon", "quote\"", long.as_str()] {
            assert!(
                !usable_request_id(&HeaderValue::from_str(id).unwrap()),
                "{id}"
            );
        }
        // Bytes that are not ASCII.
        assert!(!usable_request_id(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }

    #[test]
    fn cors_origins_are_star_alone_or_scheme_host_port() {
        let parse = |list: &[&str]| {
            CorsOrigins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(parse(&[]), Ok(CorsOrigins::SameOrigin));
        assert_eq!(parse(&["*"]), Ok(CorsOrigins::Any));
        assert_eq!(
            parse(&[
                "https://example.com",
                "http://localhost:3000",
                "http://[::1]:8080",
                "http://[::1]"
            ]),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://example.com"),
                HeaderValue::from_static("http://localhost:3000"),
                HeaderValue::from_static("http://[::1]:8080"),
                HeaderValue::from_static("http://[::1]"),
            ]))
        );
        assert!(parse(&["*", "https://example.com"])
            .unwrap_err()
            .contains("give it alone"));
        for bad in [
            "example.com",
            "https://example.com/",
            "https://example.com/app",
            "ftp://example.com",
            "https://",
            "https://exa mple.com",
            "https://example.com?x",
            "http://localhost:99999",
            "http://localhost:0",
            "http://localhost:",
            "http://a:b:1",
            "http://[::1]x",
        ] {
            let e = parse(&[bad]).unwrap_err();
            assert!(e.contains("is not an origin"), "{bad}: {e}");
        }
    }
}
