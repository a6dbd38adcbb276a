//! The error answer every route gives: `{"error": {"code", "message", "field"}}` with a
//! stable `code` and the JSON path of the field at fault.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use gantry_actors::actor::scheduler::CommandError;
use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
#[error("{code}: {message}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before asking again (`Retry-After`), for 429.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: u16,
        code: &str,
        message: impl Into<String>,
        field: Option<String>,
    ) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            field,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message, None)
    }

    pub fn unavailable(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(503, "unavailable", message.to_string(), None)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(serde_json::json!({ "error": self }))
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        let fault = e.fault();
        ApiError {
            status: fault.status,
            code: fault.code,
            message: fault.message,
            field: fault.field,
            retry_after: None,
        }
    }
}

impl From<gantry_projections::Error> for ApiError {
    fn from(e: gantry_projections::Error) -> ApiError {
        ApiError::unavailable(e)
    }
}

pub(crate) fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::unavailable(format!("supervisor: {e}"))
}
