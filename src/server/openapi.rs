//! The OpenAPI document of the server, derived with utoipa from the handlers' `#[utoipa::path]`
//! attributes and the request and response types; `GET /openapi.json` serves it.

use std::sync::OnceLock;

use utoipa::OpenApi;

use super::api::{InputAnswers, QaResponse};
use super::error::ErrorBody;
use super::{page, routes};
use crate::decode::Answer;

/// The responses of the question-answering endpoints.
#[derive(utoipa::IntoResponses)]
pub enum AnswerResponses {
    /// Answers, in the pipeline's shapes. Headers give the time spent queued, in model calls
    /// and in total.
    #[response(
        status = 200,
        headers(
            ("x-queue-time" = f64, description = "Milliseconds before the first model call (longest over the inputs)."),
            ("x-inference-time" = f64, description = "Milliseconds from the first model call to the last (longest over the inputs)."),
            ("x-total-time" = f64, description = "Milliseconds from receiving the body to the response."),
            ("x-request-id" = String, description = "The request's id (the client's own x-request-id when it is short and printable), as in the server's logs."),
        ),
        example = json!({"score": 0.32063043, "start": 11, "end": 40, "answer": "Wolfgang and I live in Berlin"})
    )]
    Answers(QaResponse),
    /// The body is not JSON.
    #[response(status = 400)]
    InvalidJson(ErrorBody),
    /// The body is over `--payload-limit` bytes.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// JSON of the wrong shape, an empty question or context, a context over
    /// `--max-context-chars`, more inputs than `--max-client-batch-size`, or a parameter out of
    /// range (including a `max_seq_len` over the model's or a question too long for the
    /// window). The message starts with the field's path, e.g. `inputs[1].context`.
    #[response(status = 422)]
    Validation(ErrorBody),
    /// `--max-concurrent-requests` requests are already being handled (answered at once, not
    /// queued); retry later.
    #[response(status = 429)]
    Overloaded(ErrorBody),
    /// The model failed on this input (the inputs batched with it are answered).
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: the model has stopped (the server is shutting down); `timeout`: the
    /// request took longer than `--request-timeout` (its inputs are withdrawn).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The API as OpenAPI 3.1.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bertqa",
        description = "Extractive question answering with BERT-family models. Answers, scores \
            and character offsets equal those of transformers' question-answering pipeline; the \
            windows of concurrent requests share model calls. Every error is JSON \
            {\"error\", \"error_type\"}; unknown paths answer 404 `not_found`, known paths with \
            another method 405 `method_not_allowed`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        routes::answer,
        routes::answer_root,
        page::page,
        routes::health,
        routes::info,
        routes::metrics,
        routes::openapi,
    ),
    // The answers' schemas (the responses name them, but only paths' own bodies are
    // collected).
    components(schemas(QaResponse, InputAnswers, Answer)),
    tags(
        (name = "question answering", description = "transformers' question-answering pipeline over HTTP"),
        (name = "page", description = "A page for asking questions in a browser"),
        (name = "operations", description = "Readiness, limits, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::json;
    use crate::pipeline::{LoadOptions, QaPipeline};
    use crate::server::error::ErrorKind;
    use crate::server::{api, routes, AppState, ServerConfig};

    fn state() -> Arc<AppState> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/bert-uncased");
        let qa = QaPipeline::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        AppState::new(Arc::new(qa), ServerConfig::default()).unwrap()
    }

    fn document() -> Value {
        serde_json::from_str(json()).unwrap()
    }

    /// Every `$ref` in `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn schema_ref(v: &Value) -> &str {
        v["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON schema reference in {v}"))
    }

    /// The property names of schema `name`.
    fn properties(doc: &Value, name: &str) -> BTreeSet<String> {
        let schema = &doc["components"]["schemas"][name];
        schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties: {schema}"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_route_is_in_the_document_and_every_operation_is_a_route() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let endpoints = routes::endpoints(&state());
        let routes: BTreeSet<(String, String)> = endpoints
            .iter()
            .map(|e| (e.path.to_string(), e.method.as_str().to_lowercase()))
            .collect();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert!(
                    operation["responses"]["200"]["description"].is_string(),
                    "{method} {path}: no described 200 response"
                );
                assert!(
                    operation["summary"].is_string(),
                    "{method} {path}: no summary"
                );
                documented.insert((path.clone(), method.clone()));
            }
        }
        assert_eq!(routes, documented);
        assert!(routes.len() >= 7, "{routes:?}");
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 10, "{all:?}");
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is not in the document"
            );
        }
    }

    #[test]
    fn the_question_answering_operations_name_their_bodies_headers_and_errors() {
        let doc = document();
        for path in ["/", "/question-answering"] {
            let op = &doc["paths"][path]["post"];
            assert_eq!(
                schema_ref(&op["requestBody"]),
                "#/components/schemas/QaRequestBody",
                "{path}"
            );
            let ok = &op["responses"]["200"];
            assert_eq!(schema_ref(ok), "#/components/schemas/QaResponse");
            for h in [
                "x-queue-time",
                "x-inference-time",
                "x-total-time",
                "x-request-id",
            ] {
                assert!(ok["headers"][h]["description"].is_string(), "{path}: {h}");
            }
            for status in ["400", "413", "422", "429", "500", "503"] {
                let error = &op["responses"][status];
                assert!(error["description"].is_string(), "{path} {status}");
                assert_eq!(schema_ref(error), "#/components/schemas/ErrorBody");
            }
        }
        let params = properties(&doc, "QaParams");
        let parsed: BTreeSet<String> = api::PARAMS.iter().map(|p| p.to_string()).collect();
        assert_eq!(params, parsed);
        assert_eq!(
            properties(&doc, "QaRequestBody"),
            BTreeSet::from(["inputs".to_string(), "parameters".to_string()])
        );
        assert_eq!(
            properties(&doc, "Answer"),
            ["score", "start", "end", "answer"].map(String::from).into()
        );
        let body = &doc["components"]["schemas"]["QaRequestBody"];
        assert_eq!(body["type"], "object");
        assert!(body["example"].is_object());
    }

    #[test]
    fn error_types_in_the_document_are_those_the_server_answers() {
        let doc = document();
        let listed: BTreeSet<&str> = doc["components"]["schemas"]["ErrorKind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let answered: BTreeSet<&str> = [
            ErrorKind::InvalidJson,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::PayloadTooLarge,
            ErrorKind::Validation,
            ErrorKind::Overloaded,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ]
        .map(ErrorKind::as_str)
        .into();
        assert_eq!(listed, answered);
    }

    /// Each documented operation answers in memory (never 404 or 405), and `/info` answers
    /// exactly the properties its schema lists.
    #[tokio::test]
    async fn documented_operations_answer() {
        let doc = document();
        let app = routes::router(state());
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let body = if method == Method::POST { "{}" } else { "" };
                let request = Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                let status = app.clone().oneshot(request).await.unwrap().status();
                assert!(
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: {status}"
                );
            }
        }
        let request = Request::get("/info").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let info: Value = serde_json::from_slice(&bytes).unwrap();
        let keys: BTreeSet<String> = info.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, properties(&doc, "Info"));
    }
}
