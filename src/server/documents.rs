//! `POST /documents/question-answering`: a question answered over the server's document index
//! (`bertqa serve --index DIR`), its passages read through the same batching model thread as
//! every other request.
//!
//! Body: `{"inputs": {"question": "..."}, "parameters": {"top_k": 1, "passages": 3}}`
//! (`parameters` optional). Response: `{"answers": [...], "passages_read": n, "reason"?}`,
//! each answer as `bertqa ask --index --json` prints it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::batcher::BatchError;
use super::error::{ApiError, ErrorKind};
use super::routes::{batch_error, body_error, join_error, millis};
use super::AppState;
use crate::index::answer::{rank_read, DEFAULT_PASSAGES};
use crate::index::{AskOptions, Index};
use crate::QaParams;

/// Most passages one request may have read.
pub const MAX_PASSAGES: usize = 50;

/// A validated body.
#[derive(Debug, PartialEq)]
struct DocumentsBody {
    question: String,
    top_k: usize,
    passages: usize,
}

/// `/info`'s description of the index.
pub fn info(index: &Index) -> Value {
    let stats = index.stats();
    json!({
        "files": stats.files,
        "documents": stats.documents,
        "passages": stats.passages,
        "default_passages": DEFAULT_PASSAGES,
        "max_passages": MAX_PASSAGES,
    })
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::field(path, "must be an object"))
}

fn only(obj: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::field(
            &format!("{path}.{k}"),
            format!("unknown field; expected one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn count(
    params: &Map<String, Value>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let path = format!("parameters.{name}");
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
            _ => Err(ApiError::field(
                &path,
                format!("must be an integer from 1 to {max}, found {v}"),
            )),
        },
    }
}

fn parse(body: &Value) -> Result<DocumentsBody, ApiError> {
    let root = object(body, "(body)")?;
    only(root, "(body)", &["inputs", "parameters"])?;
    let inputs = object(
        root.get("inputs")
            .ok_or_else(|| ApiError::field("inputs", "is missing; give {\"question\": ...}"))?,
        "inputs",
    )?;
    only(inputs, "inputs", &["question"])?;
    let question = match inputs.get("question") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
        Some(Value::String(_)) => return Err(ApiError::field("inputs.question", "is empty")),
        _ => {
            return Err(ApiError::field(
                "inputs.question",
                "must be a string (the question)",
            ))
        }
    };
    let empty = Map::new();
    let params = match root.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(p) => object(p, "parameters")?,
    };
    only(params, "parameters", &["top_k", "passages"])?;
    Ok(DocumentsBody {
        question,
        top_k: count(params, "top_k", 1, 100)?,
        passages: count(params, "passages", DEFAULT_PASSAGES, MAX_PASSAGES)?,
    })
}

/// `POST /documents/question-answering`.
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
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let body = parse(&value)?;
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
        let retrieval = index.search(&body.question, body.passages)?;
        let prepared = qa.prepare_hits(&body.question, &retrieval.hits, &reading)?;
        Ok::<_, crate::Error>((retrieval, prepared))
    })
    .await
    .map_err(join_error)?
    .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    let prepared: Vec<_> = prepared.into_iter().map(Arc::new).collect();

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
    let found =
        tokio::task::spawn_blocking(move || rank_read(&retrieval, &prepared, &logits, &options))
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
        assert_eq!(parse(&body).unwrap().passages, 5);
        assert!(error(json!({"inputs": {"question": " "}})).starts_with("`inputs.question`"));
        assert!(error(json!({"inputs": {"question": "Q", "context": "C"}}))
            .starts_with("`inputs.context`: unknown field"));
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"passages": 0}}))
                .starts_with("`parameters.passages`")
        );
        assert!(
            error(json!({"inputs": {"question": "Q"}, "parameters": {"passages": 51}}))
                .contains("from 1 to 50")
        );
        assert!(error(json!({"inputs": "Q"})).starts_with("`inputs`: must be an object"));
        assert!(error(json!({})).starts_with("`inputs`: is missing"));
    }
}
