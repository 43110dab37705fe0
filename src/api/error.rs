//! The API's one error type: a status, a machine-readable code, a message,
//! and optional details, returned as `{ "error": { ... } }`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use crate::core::history::QueryError;
use crate::handle::NodeError;
use crate::model::DenyReason;

/// A malformed query parameter: 400 `bad_query`, naming it in
/// `error.param` (history, usage and utilization queries).
impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError {
            details: Some(json!({ "param": e.param })),
            ..ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.to_string())
        }
    }
}

/// The query string as `(name, value)` pairs, or 400 `bad_query` when it
/// cannot be decoded.
pub(super) fn query_params(
    params: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Vec<(String, String)>, ApiError> {
    params.map(|q| q.0).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("invalid query string: {}", e.body_text()),
        )
    })
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unknown_allocation(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_allocation",
            format!("no allocation {id} is held or granted by this node"),
        )
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", message)
            }
            NodeError::BadRequest(m) => ApiError::bad_request(m),
            NodeError::UnknownAllocation(id) => ApiError::unknown_allocation(&id),
            NodeError::NoCapacity { refusals, excluded } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_capacity",
                message,
                details: Some(json!({ "refusals": refusals, "excluded": excluded })),
            },
            NodeError::Denied(d) => {
                let status = match d.reason {
                    DenyReason::Forbidden => StatusCode::FORBIDDEN,
                    DenyReason::BadRequest => StatusCode::BAD_REQUEST,
                    DenyReason::UnknownLease => StatusCode::NOT_FOUND,
                    DenyReason::Busy => StatusCode::TOO_MANY_REQUESTS,
                    DenyReason::Unsatisfiable => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::CONFLICT,
                };
                let details = (d.retry_after_ms.is_some() || !d.hints.is_empty())
                    .then(|| json!({ "retry_after_ms": d.retry_after_ms, "hints": d.hints }));
                ApiError {
                    details,
                    ..ApiError::new(status, d.reason.code(), d.message)
                }
            }
            NodeError::Storage(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", m)
            }
            NodeError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            NodeError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            NodeError::TaskRefused { reason, message } => {
                let status = match reason.as_str() {
                    "no_lease" | "forbidden" => StatusCode::FORBIDDEN,
                    "unknown_template" | "unknown_model" => StatusCode::NOT_FOUND,
                    "bad_params" | "bad_request" => StatusCode::BAD_REQUEST,
                    "busy" => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                ApiError {
                    details: Some(json!({ "reason": reason })),
                    ..ApiError::new(status, "task_refused", message)
                }
            }
            NodeError::Unreachable(m) => ApiError::new(StatusCode::BAD_GATEWAY, "unreachable", m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let (Some(Value::Object(details)), Some(obj)) = (self.details, err.as_object_mut()) {
            obj.extend(details);
        }
        (self.status, Json(json!({ "error": err }))).into_response()
    }
}
