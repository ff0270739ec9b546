//! The OpenAPI document of the server, derived with utoipa from the handlers' `#[utoipa::path]`
//! attributes and the request and response types; `GET /openapi.json` serves it.

use std::sync::OnceLock;

use utoipa::OpenApi;

use super::api::{InputAnswers, QaResponse};
use super::{documents, page, routes};
use crate::decode::Answer;
use crate::index::answer::{DocumentAnswer, DocumentAnswers, PassageText};

/// The API as OpenAPI 3.1.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bertqa",
        description = "Extractive question answering with BERT-family models. Answers, scores \
            and character offsets equal those of transformers' question-answering pipeline; the \
            windows of concurrent requests share model calls. Every error is JSON \
            {\"error\", \"error_type\"}; unknown paths answer 404 `not_found`, known paths with \
            another method 405 `method_not_allowed`; a `Host` the server does not answer for \
            (`--allowed-hosts`) 421 `host_not_allowed`, and POST bodies not sent as \
            `application/json` 415 `unsupported_media_type`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        routes::answer,
        routes::answer_root,
        documents::question_answering,
        page::page,
        routes::health,
        routes::info,
        routes::metrics,
        routes::openapi,
    ),
    // The answers' schemas (the responses name them, but only paths' own bodies are
    // collected).
    components(schemas(
        QaResponse,
        InputAnswers,
        Answer,
        DocumentAnswers,
        DocumentAnswer,
        PassageText
    )),
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
    use crate::index::Index;
    use crate::pipeline::{LoadOptions, QaPipeline};
    use crate::server::error::ErrorKind;
    use crate::server::{api, documents, routes, AppState, ServerConfig};

    /// A server with a document index (kept in the returned folder), so that every route,
    /// `/documents/question-answering` included, answers.
    fn state() -> (tempfile::TempDir, Arc<AppState>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/bert-uncased");
        let qa = QaPipeline::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let work = tempfile::tempdir().unwrap();
        let text = work.path().join("berlin.txt");
        std::fs::write(&text, "Wolfgang lives in Berlin. Berlin is the capital.").unwrap();
        let index_dir = work.path().join("index");
        Index::create(&index_dir, &Default::default())
            .unwrap()
            .add(&[&text], |_| {})
            .unwrap();
        let config = ServerConfig {
            index: Some(Arc::new(Index::open(&index_dir).unwrap())),
            ..ServerConfig::default()
        };
        (work, AppState::new(Arc::new(qa), config).unwrap())
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
        let (_work, state) = state();
        let endpoints = routes::endpoints(&state);
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
            for status in ["400", "413", "415", "421", "422", "429", "500", "503"] {
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
            ErrorKind::UnsupportedMediaType,
            ErrorKind::HostNotAllowed,
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
        let (_work, state) = state();
        let app = routes::router(state);
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
        let index = info["index"].as_object().unwrap();
        assert_eq!(
            index.keys().cloned().collect::<BTreeSet<_>>(),
            properties(&doc, "IndexInfo")
        );
        assert_eq!(info["index"]["passages"], 1);
    }

    #[test]
    fn the_documents_operation_names_its_body_headers_and_errors() {
        let doc = document();
        let op = &doc["paths"]["/documents/question-answering"]["post"];
        assert_eq!(
            schema_ref(&op["requestBody"]),
            "#/components/schemas/DocumentsRequestBody"
        );
        let ok = &op["responses"]["200"];
        assert_eq!(schema_ref(ok), "#/components/schemas/DocumentAnswers");
        assert!(ok["content"]["application/json"]["example"]["answers"].is_array());
        for h in [
            "x-queue-time",
            "x-inference-time",
            "x-total-time",
            "x-request-id",
        ] {
            assert!(ok["headers"][h]["description"].is_string(), "{h}");
        }
        for status in ["400", "404", "413", "422", "429", "500", "503"] {
            let error = &op["responses"][status];
            assert!(error["description"].is_string(), "{status}");
            assert_eq!(schema_ref(error), "#/components/schemas/ErrorBody");
        }
        let parsed: BTreeSet<String> = documents::PARAMS.iter().map(|p| p.to_string()).collect();
        assert_eq!(properties(&doc, "DocumentsParams"), parsed);
        assert_eq!(
            properties(&doc, "DocumentsRequestBody"),
            BTreeSet::from(["inputs".to_string(), "parameters".to_string()])
        );
        assert!(doc["components"]["schemas"]["DocumentsRequestBody"]["example"].is_object());
        // The answer's documented properties are the ones it is serialized with.
        let answer = crate::index::answer::DocumentAnswer {
            answer: "Berlin".into(),
            score: 0.5,
            start: 18,
            end: 24,
            doc_id: "berlin.txt".into(),
            title: "berlin".into(),
            path: "berlin.txt".into(),
            passage: crate::index::answer::PassageText {
                start: 0,
                end: 25,
                text: "Wolfgang lives in Berlin.".into(),
            },
            retrieval_score: 1.0,
            reader_logit: 2.0,
        };
        let serialized = serde_json::to_value(&answer).unwrap();
        let keys = |v: &Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(&serialized), properties(&doc, "DocumentAnswer"));
        assert_eq!(
            keys(&serialized["passage"]),
            properties(&doc, "PassageText")
        );
        assert_eq!(
            properties(&doc, "DocumentAnswers"),
            ["answers", "passages_read", "reason", "warnings"]
                .map(String::from)
                .into()
        );
    }
}
