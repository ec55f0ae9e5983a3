//! The one error shape `{"error": {"code", "message"}}` and the status each
//! error of the layers below maps to, in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::accounts::AccountsError;
use crate::authz::{InputError, Reason};
use crate::pdp::PdpError;
use crate::store::StoreError;

/// Every error a handler can answer with. Each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input: 400.
    #[error("{0}")]
    BadRequest(#[from] InputError),
    /// The body is not the JSON expected: 400.
    #[error("{0}")]
    BadJson(String),
    /// No such route or resource: 404.
    #[error("{0}")]
    NotFound(String),
    /// No valid caller key, or no `X-Actor`: 401.
    #[error("{message}")]
    Unauthorized {
        /// What is missing.
        message: String,
        /// Whether a bearer key is what is missing (then the answer carries
        /// `WWW-Authenticate: Bearer`).
        bearer: bool,
    },
    /// Denied: 403, with the reasons of the decision when one was made.
    #[error("{message}")]
    Forbidden {
        /// What was denied.
        message: String,
        /// The policies that determined the denial (empty when no policy
        /// permitted it).
        reasons: Vec<Reason>,
    },
    /// The request conflicts with the stored state: 409.
    #[error("{0}")]
    Conflict(String),
    /// An invite link that no longer works: 410.
    #[error("{0}")]
    Gone(String),
    /// A write whose body is not `application/json`: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// cedard cannot answer now (the schema cannot describe the stored
    /// facts, a worker failed): 503. The detail is logged.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed or cannot be confirmed current: 503
    /// `store_unavailable`. No decision was made and nothing was written.
    /// The detail is logged.
    #[error("{0}")]
    StoreUnavailable(String),
    /// A write lost its connection while committing and whether it
    /// committed cannot be told: 503 `store_outcome_unknown`.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A fault inside cedard: 500. The detail is logged, not sent.
    #[error("{0}")]
    Internal(String),
}

/// The error body, as the OpenAPI document describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `invalid_request`, `malformed_json`, `unauthenticated`,
    /// `forbidden`, `not_found`, `conflict`, `gone`, `too_large`,
    /// `unsupported_media_type`, `unavailable` (for a write: not committed),
    /// `store_outcome_unknown` (a write that may have been committed),
    /// `overloaded`, `internal`, …
    pub code: String,
    /// For people; names the offending field, header or file.
    pub message: String,
    /// For a policy denial: the deciding policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<Reason>>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StoreError as S;
        if let S::OutcomeUnknown { .. } = e {
            return ApiError::OutcomeUnknown(e.to_string());
        }
        if e.is_fault() {
            return ApiError::StoreUnavailable(e.to_string());
        }
        match e {
            S::NoUser(_)
            | S::NoAccount(_)
            | S::NotMember { .. }
            | S::NoInvite { .. }
            | S::NoKey(_) => ApiError::NotFound(e.to_string()),
            S::InviteGone(_) => ApiError::Gone(e.to_string()),
            S::EmailMismatch | S::EmailUnverified => ApiError::Forbidden {
                message: e.to_string(),
                reasons: Vec::new(),
            },
            _ => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<PdpError> for ApiError {
    fn from(e: PdpError) -> Self {
        match e {
            PdpError::Input(e) => ApiError::BadRequest(e),
            PdpError::Denied { message, reasons } => ApiError::Forbidden { message, reasons },
            PdpError::Unavailable(m) => ApiError::Unavailable(m),
            PdpError::Store(e) => e.into(),
        }
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::Input(e) => ApiError::BadRequest(e),
            AccountsError::Denied { message, reasons } => ApiError::Forbidden { message, reasons },
            AccountsError::Store(e) => e.into(),
            AccountsError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        // A worker that panicked (a fault, never a decision) is a 503 like
        // any other fault; the detail goes to the log.
        ApiError::Unavailable(format!("a worker task failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized { bearer, message } => {
                let mut r = error_response(StatusCode::UNAUTHORIZED, "unauthenticated", message);
                if *bearer {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"cedard\""),
                    );
                }
                return r;
            }
            ApiError::Forbidden { message, reasons } => {
                return (
                    StatusCode::FORBIDDEN,
                    Json(json!({"error": {
                        "code": "forbidden",
                        "message": message,
                        "reasons": reasons,
                    }})),
                )
                    .into_response();
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(m) => {
                tracing::warn!("answering 503: {m}");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "cedard cannot answer now; no decision was made (see the daemon's log)",
                );
            }
            ApiError::StoreUnavailable(m) => {
                tracing::warn!("answering 503 store_unavailable: {m}");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "cedard cannot reach its store or confirm it is current; no decision was made and nothing was written (see the daemon's log)",
                );
            }
            ApiError::OutcomeUnknown(m) => {
                tracing::error!("answering 503 store_outcome_unknown: {m}");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_outcome_unknown",
                    "the write failed as it was committing and may have been committed; read the state before retrying",
                );
            }
            ApiError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                );
            }
        };
        error_response(status, code, &self.to_string())
    }
}

/// The answer to a request whose handler panicked: a fault, so a 503 in the
/// one error shape (never a dropped connection, never a decision); the
/// panic's message goes to the log.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let text = if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "no message"
    };
    let message = text.lines().map(str::trim).collect::<Vec<_>>().join("; ");
    tracing::error!("a request handler panicked: {message}; answered 503");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "cedard cannot answer now; no decision was made (see the daemon's log)",
    )
}

/// The one error body shape.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
