//! `GET /`: a page for asking questions from a browser, embedded in the binary.
//!
//! One self-contained HTML file (inline CSS and script, no external resources, no build step),
//! so the page works offline and ships with every build. It calls the JSON endpoints with
//! relative URLs, so it also works behind a proxy that serves the API under a path prefix.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page's HTML.
pub const HTML: &str = include_str!("index.html");

/// Allows the page's own inline style and script, requests to its own origin and `data:` images
/// (the favicon) and nothing else: a stray external resource would fail loudly in development
/// instead of breaking offline use later.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The browser page
///
/// A self-contained HTML page (no external resources) for asking questions: paste a context,
/// ask, and see the answers highlighted with their scores.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html"))
)]
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The page changes with the binary: revalidate instead of keeping a stale copy.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        HTML,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::HTML;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // Every src/href is inline data; the SVG namespace is an identifier, not a fetch.
        for attr in ["src=", "href="] {
            for (at, _) in HTML.match_indices(attr) {
                let value = &HTML[at + attr.len()..];
                assert!(
                    value.starts_with("\"data:"),
                    "{attr} at byte {at} is not a data: URL: {}",
                    &value[..value.len().min(60)]
                );
            }
        }
        for banned in ["@import", "url(", "<iframe", "<object", "<embed"] {
            assert!(!HTML.contains(banned), "the page uses {banned}");
        }
    }

    #[test]
    fn the_page_calls_the_endpoints_by_relative_url() {
        for path in [
            "\"question-answering\"",
            "\"documents/question-answering\"",
            "\"info\"",
            "\"health\"",
        ] {
            assert!(HTML.contains(path), "the page does not call {path}");
        }
        assert!(
            !HTML.contains("fetch(\"/"),
            "absolute URLs break behind a path prefix"
        );
    }
}
