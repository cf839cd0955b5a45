//! Refusals: a status, a JSON body `{"error": "<reason>"}` and one log line.
//!
//! The reason is written for the sender; it never holds the secret, a token
//! or any of the payload.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A refused request.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: String,
    /// The body field at fault (422 only).
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Rejection { status, reason: reason.into(), field: None }
    }
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, reason)
    }
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }
    /// 503 for a write the store did not acknowledge. Not stored, unless
    /// Redis still runs a transaction it had received before it stalled or
    /// the connection broke; the retry then finds it, as a duplicate.
    pub fn not_stored(err: &crate::intake::IntakeError) -> Self {
        Self::unavailable(format!(
            "queue unavailable, not accepted (if the store ran the write after all, a retry is answered as a duplicate): {err}"
        ))
    }
    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let field = field.into();
        Rejection {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            reason: format!("{field}: {}", reason.into()),
            field: Some(field),
        }
    }

    /// The label `hookbus_webhooks_total` counts this refusal under.
    pub fn result_label(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "rejected",
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = match &self.field {
            Some(field) => serde_json::json!({ "error": self.reason, "field": field }),
            None => serde_json::json!({ "error": self.reason }),
        };
        (self.status, Json(body)).into_response()
    }
}
