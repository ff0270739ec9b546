//! Error responses: always JSON `{"error": message, "error_type": kind}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What kind of error a response reports (`error_type` in the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint does not take this method.
    MethodNotAllowed,
    /// 413: the body is over the payload limit, or its inputs make more windows than a
    /// request may.
    PayloadTooLarge,
    /// 415: a POST body that is not `application/json`.
    UnsupportedMediaType,
    /// 421: a `Host` the server does not answer (`--allowed-hosts`).
    HostNotAllowed,
    /// 422: JSON of the wrong shape or values out of range.
    Validation,
    /// 429: too many concurrent requests.
    Overloaded,
    /// 503: the model is not ready or has stopped.
    Unavailable,
    /// 503: the request took longer than `--request-timeout`.
    Timeout,
    /// 500: the model failed.
    Internal,
}

impl ErrorKind {
    /// The HTTP status of this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable | ErrorKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::HostNotAllowed => "host_not_allowed",
            ErrorKind::Validation => "validation",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error answered to the client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// Its kind (status and `error_type`).
    pub kind: ErrorKind,
    /// What went wrong and what to do; validation errors start with the field's path.
    pub message: String,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A 422 about `field` (a path such as `inputs[2].context` or `parameters.top_k`).
    pub fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Validation, format!("`{field}`: {message}"))
    }
}

/// The body of every error response.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "error": "`inputs.context`: missing; give a non-empty string",
    "error_type": "validation"
}))]
pub struct ErrorBody {
    /// What went wrong and what to do; for `validation`, it starts with the field's path
    /// (`inputs[1].context`, `parameters.top_k`).
    pub error: String,
    /// The kind of error.
    pub error_type: ErrorKind,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            error_type: self.kind,
        };
        (self.kind.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind::*;

    /// `error_type` in bodies (serde) and in the OpenAPI document (its enum) are the names
    /// `as_str` gives.
    #[test]
    fn error_types_serialize_as_their_names() {
        for kind in [
            InvalidJson,
            NotFound,
            MethodNotAllowed,
            PayloadTooLarge,
            UnsupportedMediaType,
            HostNotAllowed,
            Validation,
            Overloaded,
            Unavailable,
            Timeout,
            Internal,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
