//! The request and response bodies of the question-answering endpoints, validated at the edge.
//!
//! Bodies are parsed by hand from a `serde_json::Value` so that every 422 names the offending
//! field (`inputs[1].context`, `parameters.top_k`) and says what would be valid.

use serde_json::{Map, Value};

use super::error::{ApiError, ErrorBody};
use crate::decode::Answer;
use crate::params::QaParams;

/// The server's limits on what one request may ask.
#[derive(Clone, Debug)]
pub struct InputLimits {
    /// Most inputs in one request.
    pub max_client_batch_size: usize,
    /// Longest context, in characters.
    pub max_context_chars: usize,
}

/// One question about one context.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QaInput {
    /// The question; not empty or whitespace only.
    #[schema(min_length = 1, example = "Where do I live?")]
    pub question: String,
    /// The passage the answer is cut from; not empty, at most `--max-context-chars`
    /// characters (see `/info`).
    #[schema(min_length = 1, example = "My name is Wolfgang and I live in Berlin.")]
    pub context: String,
}

/// `inputs`: one input, or a list of up to `--max-client-batch-size` inputs (see `/info`),
/// answered in order.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum QaInputs {
    /// One input.
    One(QaInput),
    /// Several inputs (at least one).
    Several(Vec<QaInput>),
}

/// A request body of the question-answering endpoints, as [`parse_body`] reads it. (The
/// server parses bodies by hand, to name the offending field in each error; this type is the
/// shape it accepts, for the OpenAPI document.)
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "inputs": {
        "question": "Where do I live?",
        "context": "My name is Wolfgang and I live in Berlin."
    },
    "parameters": {"top_k": 1}
}))]
pub struct QaRequestBody {
    /// The question(s) and context(s).
    pub inputs: QaInputs,
    /// The pipeline's keyword arguments, shared by every input; absent or null: the
    /// pipeline's defaults. Unknown names are refused.
    #[serde(default)]
    pub parameters: Option<QaParams>,
}

/// A validated request body.
#[derive(Clone, Debug, PartialEq)]
pub struct QaBody {
    /// The inputs, in order.
    pub inputs: Vec<QaInput>,
    /// True when `inputs` was a list (the response is then a list per input, as the pipeline's).
    pub listed: bool,
    /// Parameters shared by every input.
    pub params: QaParams,
}

impl QaBody {
    /// The path naming input `i` in error messages.
    pub fn input_path(&self, i: usize) -> String {
        if self.listed {
            format!("inputs[{i}]")
        } else {
            "inputs".into()
        }
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn reject_unknown(
    obj: &Map<String, Value>,
    path: &str,
    known: &[&str],
) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            let field = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            Err(ApiError::field(
                &field,
                format!("unknown field; expected one of: {}", known.join(", ")),
            ))
        }
        None => Ok(()),
    }
}

pub(super) fn text_field(
    obj: &Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<String, ApiError> {
    let field = format!("{path}.{name}");
    match obj.get(name) {
        None => Err(ApiError::field(&field, "missing; give a non-empty string")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::field(
            &field,
            "must not be empty or whitespace only",
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(ApiError::field(
            &field,
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

fn parse_input(v: &Value, path: &str, limits: &InputLimits) -> Result<QaInput, ApiError> {
    let Value::Object(obj) = v else {
        return Err(ApiError::field(
            path,
            format!(
                "expected an object {{\"question\", \"context\"}}, got {}",
                type_name(v)
            ),
        ));
    };
    reject_unknown(obj, path, &["question", "context"])?;
    let question = text_field(obj, path, "question")?;
    let context = text_field(obj, path, "context")?;
    let chars = context.chars().count();
    if chars > limits.max_context_chars {
        return Err(ApiError::field(
            &format!("{path}.context"),
            format!(
                "{chars} characters, over the server's limit of {} (--max-context-chars); \
                 split the text",
                limits.max_context_chars
            ),
        ));
    }
    Ok(QaInput { question, context })
}

/// The pipeline's keyword arguments, as `parameters` takes them (the properties of
/// [`QaParams`] in the OpenAPI document).
pub const PARAMS: &[&str] = &[
    "top_k",
    "doc_stride",
    "max_answer_len",
    "max_seq_len",
    "max_question_len",
    "handle_impossible_answer",
    "align_to_words",
];

fn parse_params(v: Option<&Value>) -> Result<QaParams, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(QaParams::default()),
        Some(Value::Object(obj)) => obj,
        Some(v) => {
            return Err(ApiError::field(
                "parameters",
                format!("expected an object, got {}", type_name(v)),
            ))
        }
    };
    reject_unknown(obj, "parameters", PARAMS)?;
    let count = |name: &str, zero_ok: bool| -> Result<Option<usize>, ApiError> {
        let field = format!("parameters.{name}");
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) if !zero_ok => Err(ApiError::field(&field, "must be at least 1")),
                Some(k) => Ok(Some(usize::try_from(k).unwrap_or(usize::MAX))),
                None => Err(ApiError::field(
                    &field,
                    format!("expected a non-negative integer, got {n}"),
                )),
            },
            Some(v) => Err(ApiError::field(
                &field,
                format!("expected an integer, got {}", type_name(v)),
            )),
        }
    };
    let flag = |name: &str| -> Result<Option<bool>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::field(
                &format!("parameters.{name}"),
                format!("expected true or false, got {}", type_name(v)),
            )),
        }
    };
    Ok(QaParams {
        top_k: count("top_k", false)?,
        doc_stride: count("doc_stride", true)?,
        max_answer_len: count("max_answer_len", false)?,
        max_seq_len: count("max_seq_len", false)?,
        max_question_len: count("max_question_len", false)?,
        handle_impossible_answer: flag("handle_impossible_answer")?,
        align_to_words: flag("align_to_words")?,
    })
}

/// Validates a JSON body: `{"inputs": {question, context} | [{question, context}, ...],
/// "parameters": {...}?}`.
pub fn parse_body(body: &Value, limits: &InputLimits) -> Result<QaBody, ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::field(
            "body",
            format!(
                "expected an object {{\"inputs\", \"parameters\"}}, got {}",
                type_name(body)
            ),
        ));
    };
    reject_unknown(obj, "", &["inputs", "parameters"])?;
    let (inputs, listed) = match obj.get("inputs") {
        None => {
            return Err(ApiError::field(
                "inputs",
                "missing; give {\"question\", \"context\"} or a list of them",
            ))
        }
        Some(Value::Array(list)) => {
            if list.is_empty() {
                return Err(ApiError::field("inputs", "the list is empty"));
            }
            if list.len() > limits.max_client_batch_size {
                return Err(ApiError::field(
                    "inputs",
                    format!(
                        "{} inputs, over the server's limit of {} per request \
                         (--max-client-batch-size); send several requests",
                        list.len(),
                        limits.max_client_batch_size
                    ),
                ));
            }
            let inputs = list
                .iter()
                .enumerate()
                .map(|(i, v)| parse_input(v, &format!("inputs[{i}]"), limits))
                .collect::<Result<Vec<_>, _>>()?;
            (inputs, true)
        }
        Some(v) => (vec![parse_input(v, "inputs", limits)?], false),
    };
    let params = parse_params(obj.get("parameters"))?;
    Ok(QaBody {
        inputs,
        listed,
        params,
    })
}

/// The pipeline's output for one input: an object when there is one answer (`top_k` 1), else
/// a list of answers, best first.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum InputAnswers {
    /// Exactly one answer (top_k = 1).
    One(Answer),
    /// Several (or no) answers, best first.
    Several(Vec<Answer>),
}

impl From<Vec<Answer>> for InputAnswers {
    fn from(mut answers: Vec<Answer>) -> Self {
        match answers.pop() {
            Some(a) if answers.is_empty() => InputAnswers::One(a),
            Some(a) => {
                answers.push(a);
                InputAnswers::Several(answers)
            }
            None => InputAnswers::Several(answers),
        }
    }
}

/// A response body of the question-answering endpoints: for one input (or a list of one) the
/// pipeline's output for it; for several inputs a list with that output per input, in order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum QaResponse {
    /// One input.
    Single(InputAnswers),
    /// Several inputs, in order.
    Batch(Vec<InputAnswers>),
}

/// Shapes answers as transformers' pipeline returns them: per input an object when it has one
/// answer (top_k = 1) or a list; a list of those for several inputs. A list of one input is
/// answered like a single input, as the pipeline does.
pub fn shape_response(mut answers: Vec<Vec<Answer>>) -> QaResponse {
    if answers.len() == 1 {
        return QaResponse::Single(answers.pop().unwrap_or_default().into());
    }
    QaResponse::Batch(answers.into_iter().map(InputAnswers::from).collect())
}

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
    /// The body is over `--payload-limit` bytes, or its inputs make more windows than
    /// `--max-windows-per-request` (refused before any model call).
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not sent as `content-type: application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// `host_not_allowed`: the `Host` header names a host the server does not answer for
    /// (`--allowed-hosts`).
    #[response(status = 421)]
    HostNotAllowed(ErrorBody),
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

/// `GET /info`: the model and the server's limits.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Info {
    /// The model's Hub id, or its folder's name (the path it was loaded from with
    /// `--show-paths`).
    pub model_id: String,
    /// `model_type` of its config.json (`bert`, `roberta`, ...).
    pub model_type: String,
    /// Longest window the model takes, in tokens (the most `max_seq_len` may be).
    pub max_position_embeddings: usize,
    /// Window length when a request gives no `max_seq_len`.
    pub default_max_seq_len: usize,
    /// `--max-concurrent-requests`: requests handled at once; more are answered 429.
    pub max_concurrent_requests: usize,
    /// `--max-batch-tokens`: most tokens in one model call.
    pub max_batch_tokens: usize,
    /// `--max-client-batch-size`: most inputs in one request.
    pub max_client_batch_size: usize,
    /// `--max-context-chars`: longest context, in characters.
    pub max_context_chars: usize,
    /// `--payload-limit`: largest request body, in bytes.
    pub payload_limit: usize,
    /// `--request-timeout`: longest a request may take, in seconds.
    pub request_timeout_s: f64,
    /// `--max-windows-per-request`: most windows the inputs of a request may make; more are
    /// answered 413.
    pub max_windows_per_request: usize,
    /// `--header-read-timeout`: longest a connection may take to send a request's head (or
    /// sit idle between requests), in seconds.
    pub header_read_timeout_s: f64,
    /// `--max-connections`: connections open at once.
    pub max_connections: usize,
    /// `--index`: the document index `POST /documents/question-answering` answers over;
    /// null when the server has none (that endpoint then answers 404).
    pub index: Option<IndexInfo>,
    /// bertqa's version.
    pub version: String,
}

/// `/info`'s description of the document index.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct IndexInfo {
    /// Files indexed.
    pub files: usize,
    /// Documents in them.
    pub documents: u64,
    /// Passages the documents are cut into.
    pub passages: u64,
    /// Passages read when a request gives no `passages`.
    pub default_passages: usize,
    /// Most `passages` a request may ask for.
    pub max_passages: usize,
}

/// `GET /health` when ready.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: HealthStatus,
}

/// The only status `/health` answers 200 with.
#[derive(Clone, Copy, Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The model has answered its warm-up request.
    Ok,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: InputLimits = InputLimits {
        max_client_batch_size: 2,
        max_context_chars: 20,
    };

    fn error(body: Value) -> String {
        parse_body(&body, &LIMITS).unwrap_err().message
    }

    #[test]
    fn accepts_one_input_or_a_list_with_parameters() {
        let one = parse_body(
            &json!({"inputs": {"question": "Who?", "context": "Ann did."},
                    "parameters": {"top_k": 3, "align_to_words": false, "doc_stride": 0}}),
            &LIMITS,
        )
        .unwrap();
        assert!(!one.listed);
        assert_eq!(one.inputs[0].context, "Ann did.");
        assert_eq!(one.params.top_k, Some(3));
        assert_eq!(one.params.doc_stride, Some(0));
        assert_eq!(one.params.align_to_words, Some(false));
        assert_eq!(one.params.max_seq_len, None);
        let list = parse_body(
            &json!({"inputs": [{"question": "a", "context": "b"}, {"question": "c", "context": "d"}],
                    "parameters": null}),
            &LIMITS,
        )
        .unwrap();
        assert!(list.listed);
        assert_eq!(list.inputs.len(), 2);
        assert_eq!(list.params, QaParams::default());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error(json!([1])).starts_with("`body`"));
        assert!(error(json!({})).starts_with("`inputs`: missing"));
        assert!(error(json!({"inputs": [], })).contains("empty"));
        let three = json!({"question": "q", "context": "c"});
        assert!(error(json!({"inputs": [three, three, three]})).contains("limit of 2"));
        assert!(error(json!({"inputs": {"question": " ", "context": "c"}}))
            .starts_with("`inputs.question`: must not be empty"));
        assert!(error(json!({"inputs": [three, {"question": "q"}]}))
            .starts_with("`inputs[1].context`: missing"));
        assert!(
            error(json!({"inputs": [three, {"question": "q", "context": 5}]}))
                .starts_with("`inputs[1].context`: expected a string")
        );
        assert!(
            error(json!({"inputs": {"question": "q", "context": "x".repeat(21)}}))
                .starts_with("`inputs.context`: 21 characters")
        );
        assert!(error(json!({"inputs": three, "extra": 1})).starts_with("`extra`: unknown"));
        assert!(error(json!({"inputs": three, "parameters": {"topk": 1}}))
            .starts_with("`parameters.topk`: unknown"));
        assert!(error(json!({"inputs": three, "parameters": {"top_k": 0}}))
            .starts_with("`parameters.top_k`: must be at least 1"));
        assert!(
            error(json!({"inputs": three, "parameters": {"max_seq_len": -3}}))
                .starts_with("`parameters.max_seq_len`: expected a non-negative integer")
        );
        assert!(
            error(json!({"inputs": three, "parameters": {"top_k": "2"}}))
                .starts_with("`parameters.top_k`: expected an integer")
        );
        assert!(
            error(json!({"inputs": three, "parameters": {"align_to_words": 1}}))
                .starts_with("`parameters.align_to_words`: expected true or false")
        );
        assert!(error(json!({"inputs": three, "parameters": [1]}))
            .starts_with("`parameters`: expected an object"));
    }

    fn answer(text: &str, start: usize) -> Answer {
        Answer {
            score: 0.5,
            start,
            end: start + text.chars().count(),
            answer: text.into(),
        }
    }

    #[test]
    fn responses_are_shaped_as_the_pipeline_s() {
        let a = answer("Ann", 0);
        let b = answer("Bob", 4);
        let obj = json!({"score": 0.5, "start": 0, "end": 3, "answer": "Ann"});
        let obj_b = json!({"score": 0.5, "start": 4, "end": 7, "answer": "Bob"});
        let shape = |answers| serde_json::to_value(shape_response(answers)).unwrap();
        assert_eq!(shape(vec![vec![a.clone()]]), obj);
        assert_eq!(shape(vec![vec![a.clone(), b.clone()]]), json!([obj, obj_b]));
        assert_eq!(
            shape(vec![vec![a.clone()], vec![b.clone()]]),
            json!([obj, obj_b])
        );
        assert_eq!(
            shape(vec![vec![a.clone(), b.clone()], vec![b.clone()]]),
            json!([[obj, obj_b], obj_b])
        );
        assert_eq!(shape(vec![vec![], vec![a.clone()]]), json!([[], obj]));
        // Keys in the pipeline's order.
        assert_eq!(
            serde_json::to_string(&shape_response(vec![vec![a]])).unwrap(),
            r#"{"score":0.5,"start":0,"end":3,"answer":"Ann"}"#
        );
    }

    /// The documented body type ([`QaRequestBody`]) accepts the shapes `parse_body` accepts
    /// and refuses those it refuses (value checks such as empty strings or `top_k` 0 are the
    /// parser's alone; the document states them as `minLength`/`minimum`).
    #[test]
    fn the_documented_body_has_the_parsed_shape() {
        let limits = InputLimits {
            max_client_batch_size: 100,
            max_context_chars: 1000,
        };
        let input = json!({"question": "Who?", "context": "Ann did."});
        for body in [
            json!({"inputs": input}),
            json!({"inputs": [input, input]}),
            json!({"inputs": input, "parameters": null}),
            json!({"inputs": input, "parameters": {"top_k": 2, "doc_stride": 0,
                "max_answer_len": 3, "max_seq_len": 64, "max_question_len": 9,
                "handle_impossible_answer": true, "align_to_words": false}}),
            json!({"inputs": input, "parameters": {"top_k": null}}),
            json!({}),
            json!([input]),
            json!({"inputs": "Who?"}),
            json!({"inputs": input, "extra": 1}),
            json!({"inputs": {"question": "Who?"}}),
            json!({"inputs": {"question": "Who?", "context": "c", "id": 1}}),
            json!({"inputs": [input, {"question": 3, "context": "c"}]}),
            json!({"inputs": input, "parameters": {"topk": 1}}),
            json!({"inputs": input, "parameters": {"top_k": "2"}}),
            json!({"inputs": input, "parameters": {"top_k": -1}}),
            json!({"inputs": input, "parameters": {"align_to_words": 1}}),
            json!({"inputs": input, "parameters": [1]}),
        ] {
            // The schema's `type: object` rules out lists (serde's derive would read a
            // struct from a list of its fields).
            let documented =
                body.is_object() && serde_json::from_value::<QaRequestBody>(body.clone()).is_ok();
            let parsed = parse_body(&body, &limits).is_ok();
            assert_eq!(documented, parsed, "{body}");
        }
    }
}
