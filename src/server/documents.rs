//! `POST /documents/question-answering`: a question answered over the server's document index
//! (`bertqa serve --index DIR`), its passages read by the same queue and model workers as every
//! other request.
//!
//! Body: `{"inputs": {"question": "..."}, "parameters": {"top_k": 1, "passages": 3}}`
//! (`parameters` optional). Response: [`DocumentAnswers`], each answer as
//! `bertqa ask --index --json` prints it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use super::api::{reject_unknown, text_field, type_name, IndexInfo};
use super::error::{ApiError, ErrorBody, ErrorKind};
use super::handling::{body_error, compute, join_error, millis, prepare_error, read_json};
use super::AppState;
use crate::index::answer::{rank_read, DocumentAnswers, DEFAULT_PASSAGES};
use crate::index::{AskOptions, Index};
use crate::QaParams;

/// Most passages one request may have read.
pub const MAX_PASSAGES: usize = 50;

/// Most answers one request may ask for.
pub const MAX_TOP_K: usize = 100;

/// The names `parameters` takes (the properties of [`DocumentsParams`] in the OpenAPI
/// document).
pub const PARAMS: &[&str] = &["top_k", "passages"];

/// The question of a request.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentsInput {
    /// The question; not empty or whitespace only, at most 2000 characters and 256 distinct
    /// words.
    #[schema(
        min_length = 1,
        max_length = 2000,
        example = "How many points did the Panthers defense give up?"
    )]
    pub question: String,
}

/// How many answers, from how many passages.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentsParams {
    /// Answers to return, best first (default 1).
    #[schema(minimum = 1, maximum = 100)]
    pub top_k: Option<usize>,
    /// Passages retrieved by BM25 and read (default in `/info`'s `index.default_passages`).
    #[schema(minimum = 1, maximum = 50)]
    pub passages: Option<usize>,
}

/// A request body of `POST /documents/question-answering`, as the handler reads it. (Bodies
/// are parsed by hand, to name the offending field in each error; this type is the shape
/// accepted, for the OpenAPI document.)
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "inputs": {"question": "How many points did the Panthers defense give up?"},
    "parameters": {"top_k": 2, "passages": 3}
}))]
pub struct DocumentsRequestBody {
    /// The question (no context: the passages come from the index).
    pub inputs: DocumentsInput,
    /// Absent or null: one answer from the default number of passages. Unknown names are
    /// refused.
    #[serde(default)]
    pub parameters: Option<DocumentsParams>,
}

/// A validated body.
#[derive(Debug, PartialEq)]
struct DocumentsBody {
    question: String,
    top_k: usize,
    passages: usize,
}

/// `/info`'s description of `index`.
pub fn index_info(index: &Index) -> IndexInfo {
    let stats = index.stats();
    IndexInfo {
        files: stats.files,
        documents: stats.documents,
        passages: stats.passages,
        default_passages: DEFAULT_PASSAGES,
        max_passages: MAX_PASSAGES,
    }
}

/// The responses of `POST /documents/question-answering`.
#[derive(utoipa::IntoResponses)]
pub enum DocumentsResponses {
    /// The answers, best first, each with its document and the passage it was read in;
    /// `reason` says why there are none. Headers give the time spent queued, in model calls
    /// and in total.
    #[response(
        status = 200,
        headers(
            ("x-queue-time" = f64, description = "Milliseconds before the first model call (longest over the passages)."),
            ("x-inference-time" = f64, description = "Milliseconds from the first model call to the last (longest over the passages)."),
            ("x-total-time" = f64, description = "Milliseconds from receiving the body to the response."),
            ("x-request-id" = String, description = "The request's id (the client's own x-request-id when it is short and printable), as in the server's logs."),
        ),
        example = json!({
            "answers": [{
                "answer": "308",
                "score": 0.97,
                "start": 20,
                "end": 23,
                "doc_id": "56beb4343aeaaa14008c925c",
                "title": "Super_Bowl_50",
                "path": "xquad-en-train.json",
                "passage": {"start": 0, "end": 89, "text": "The Panthers defense gave up 308 points, ranking sixth in the league."},
                "retrieval_score": 14.2,
                "reader_logit": 17.5
            }],
            "passages_read": 3
        })
    )]
    Answers(DocumentAnswers),
    /// The body is not JSON.
    #[response(status = 400)]
    InvalidJson(ErrorBody),
    /// The server has no document index (start it with `--index DIR`).
    #[response(status = 404)]
    NoIndex(ErrorBody),
    /// The body is over `--payload-limit` bytes.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// JSON of the wrong shape, an empty question, a question too long for the model's
    /// window, or `top_k` / `passages` out of range. The message starts with the field's
    /// path, e.g. `parameters.passages`.
    #[response(status = 422)]
    Validation(ErrorBody),
    /// `--max-concurrent-requests` requests are already being handled; retry later.
    #[response(status = 429)]
    Overloaded(ErrorBody),
    /// The index could not be read, or the model failed on a passage.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: the model has stopped (the server is shutting down); `timeout`: the
    /// request took longer than `--request-timeout`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// A count in `parameters`: absent or null is `default`; else an integer from 1 to `max`.
fn count(
    params: &Map<String, Value>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let field = format!("parameters.{name}");
    let out_of_range = |found: &dyn std::fmt::Display| {
        ApiError::field(
            &field,
            format!("must be an integer from 1 to {max}, got {found}"),
        )
    };
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if k >= 1 && k <= max as u64 => Ok(k as usize),
            _ => Err(out_of_range(n)),
        },
        Some(v) => Err(out_of_range(&type_name(v))),
    }
}

/// Validates a body, naming the offending field in each error.
fn parse(body: &Value) -> Result<DocumentsBody, ApiError> {
    let Value::Object(root) = body else {
        return Err(ApiError::field(
            "body",
            format!(
                "expected an object {{\"inputs\", \"parameters\"}}, got {}",
                type_name(body)
            ),
        ));
    };
    reject_unknown(root, "", &["inputs", "parameters"])?;
    let inputs = match root.get("inputs") {
        Some(Value::Object(inputs)) => inputs,
        None => return Err(ApiError::field("inputs", "missing; give {\"question\"}")),
        Some(v) => {
            return Err(ApiError::field(
                "inputs",
                format!("expected an object {{\"question\"}}, got {}", type_name(v)),
            ))
        }
    };
    reject_unknown(inputs, "inputs", &["question"])?;
    let question = text_field(inputs, "inputs", "question")?;
    let empty = Map::new();
    let params = match root.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(params)) => params,
        Some(v) => {
            return Err(ApiError::field(
                "parameters",
                format!("expected an object, got {}", type_name(v)),
            ))
        }
    };
    reject_unknown(params, "parameters", PARAMS)?;
    Ok(DocumentsBody {
        question,
        top_k: count(params, "top_k", 1, MAX_TOP_K)?,
        passages: count(params, "passages", DEFAULT_PASSAGES, MAX_PASSAGES)?,
    })
}

/// Answers a question over the server's documents
///
/// Only with `bertqa serve --index DIR` (see `/info`'s `index`): the best `passages` passages
/// of the index by BM25 are read, and answers ranked across them by reader logit and BM25
/// score. `start`/`end` are character offsets into the document, `passage.start`/`passage.end`
/// those of the passage read. The passages' windows share model calls with every other request.
#[utoipa::path(
    post,
    path = "/documents/question-answering",
    tag = "question answering",
    request_body = DocumentsRequestBody,
    responses(DocumentsResponses)
)]
pub async fn question_answering(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let Some(index) = state.config.index.clone() else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "this server has no document index; start it with `bertqa serve --index DIR`",
        ));
    };
    let bytes = body.map_err(|r| body_error(r, state.config.payload_limit))?;
    let body = parse(&read_json(bytes).await?)?;
    let options = AskOptions {
        passages: body.passages,
        params: QaParams {
            top_k: Some(body.top_k),
            ..QaParams::default()
        },
        ..AskOptions::default()
    };

    // Retrieval and tokenization on the blocking pool.
    let qa = state.pipeline.clone();
    let reading = options.params.clone();
    let (retrieval, prepared) = tokio::task::spawn_blocking(move || {
        let retrieval = index
            .search(&body.question, body.passages)
            .map_err(|e| match e {
                // Over the question bounds: the message names the limit.
                crate::Error::InvalidInput(m) => ApiError::field("inputs.question", m),
                other => ApiError::new(ErrorKind::Internal, other.to_string()),
            })?;
        let prepared = qa
            .prepare_hits(&body.question, &retrieval.hits, &reading)
            .map_err(|e| prepare_error(e, "inputs.question"))?;
        Ok::<_, ApiError>((retrieval, prepared))
    })
    .await
    .map_err(join_error)??;
    let prepared: Vec<_> = prepared.into_iter().map(Arc::new).collect();
    let logits = compute(&state, &prepared).await?;
    let (queue_time, inference_time) = (logits.queue_time, logits.inference_time);
    let found = tokio::task::spawn_blocking(move || {
        rank_read(&retrieval, &prepared, &logits.per_input, &options)
    })
    .await
    .map_err(join_error)?;
    let mut response = Json(found).into_response();
    let headers = response.headers_mut();
    headers.insert("x-queue-time", millis(queue_time));
    headers.insert("x-inference-time", millis(inference_time));
    headers.insert("x-total-time", millis(start.elapsed()));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(body: Value) -> String {
        parse(&body).unwrap_err().message
    }

    #[test]
    fn bodies_are_validated_field_by_field() {
        assert_eq!(
            parse(&json!({"inputs": {"question": "Who?"}})).unwrap(),
            DocumentsBody {
                question: "Who?".into(),
                top_k: 1,
                passages: DEFAULT_PASSAGES
            }
        );
        let body =
            json!({"inputs": {"question": "Who?"}, "parameters": {"top_k": 2, "passages": 5}});
        assert_eq!(
            parse(&body).unwrap(),
            DocumentsBody {
                question: "Who?".into(),
                top_k: 2,
                passages: 5
            }
        );
        assert!(error(json!({"inputs": {"question": " "}}))
            .starts_with("`inputs.question`: must not be empty"));
        assert!(error(json!({"inputs": {}})).starts_with("`inputs.question`: missing"));
        assert!(error(json!({"inputs": {"question": 3}}))
            .starts_with("`inputs.question`: expected a string"));
        assert!(error(json!({"inputs": {"question": "Q", "context": "C"}}))
            .starts_with("`inputs.context`: unknown field"));
        assert!(error(json!({"inputs": {"question": "Q"}, "extra": 1}))
            .starts_with("`extra`: unknown field"));
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"passages": 0}}))
                .starts_with("`parameters.passages`: must be an integer from 1 to 50, got 0")
        );
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"passages": 51}}))
                .contains("from 1 to 50")
        );
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"top_k": 1e30}}))
                .starts_with("`parameters.top_k`: must be an integer from 1 to 100")
        );
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"top_k": "2"}}))
                .ends_with("got a string")
        );
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"max_seq_len": 64}}))
                .starts_with("`parameters.max_seq_len`: unknown field")
        );
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": [1]}))
                .starts_with("`parameters`: expected an object")
        );
        assert!(error(json!({"inputs": "Q"})).starts_with("`inputs`: expected an object"));
        assert!(error(json!({})).starts_with("`inputs`: missing"));
        assert!(error(json!([1])).starts_with("`body`: expected an object"));
    }

    /// The documented body type accepts the shapes `parse` accepts and refuses those it
    /// refuses (value checks such as empty strings or ranges are the parser's alone; the
    /// document states them as `minLength`/`minimum`/`maximum`).
    #[test]
    fn the_documented_body_has_the_parsed_shape() {
        let input = json!({"question": "Who?"});
        for body in [
            json!({"inputs": input}),
            json!({"inputs": input, "parameters": null}),
            json!({"inputs": input, "parameters": {"top_k": 2, "passages": 5}}),
            json!({"inputs": input, "parameters": {"top_k": null}}),
            json!({}),
            json!([input]),
            json!({"inputs": "Who?"}),
            json!({"inputs": [input]}),
            json!({"inputs": input, "extra": 1}),
            json!({"inputs": {"question": "Who?", "context": "c"}}),
            json!({"inputs": {"question": 3}}),
            json!({"inputs": input, "parameters": {"topk": 1}}),
            json!({"inputs": input, "parameters": {"top_k": "2"}}),
            json!({"inputs": input, "parameters": {"passages": -1}}),
            json!({"inputs": input, "parameters": [1]}),
        ] {
            let documented = body.is_object()
                && serde_json::from_value::<DocumentsRequestBody>(body.clone()).is_ok();
            assert_eq!(documented, parse(&body).is_ok(), "{body}");
        }
    }
}
