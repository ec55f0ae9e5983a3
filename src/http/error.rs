//! The one error shape `{"error": {"code", "message"}}`, and the one map
//! from the code vocabulary ([`Code`]) to HTTP statuses ([`status`]). Each
//! error of the layers below says its own code, in an exhaustive match of
//! its own; an [`ApiError`] carries that code, so no mapping here can let a
//! new kind of error fall into another's status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::accounts::AccountsError;
use crate::authz::{InputError, Reason};
use crate::code::Code;
use crate::pdp::PdpError;
use crate::store::{Fault, Refusal, WriteError};

/// The HTTP status of each code.
pub fn status(code: Code) -> StatusCode {
    match code {
        Code::InvalidRequest | Code::MalformedJson | Code::InvalidHost => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Forbidden => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::Conflict => StatusCode::CONFLICT,
        Code::Gone => StatusCode::GONE,
        Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable
        | Code::StoreUnavailable
        | Code::StoreOutcomeUnknown
        | Code::Overloaded
        | Code::Timeout => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// What a caller is told instead of the message, for the codes whose
/// message is an internal detail (logged, not sent).
fn public_message(code: Code) -> Option<&'static str> {
    match code {
        Code::Unavailable => {
            Some("cedard cannot answer now; no decision was made (see the daemon's log)")
        }
        Code::StoreUnavailable => Some(
            "cedard cannot reach its store or confirm it is current; no decision was made and nothing was written (see the daemon's log)",
        ),
        Code::StoreOutcomeUnknown => Some(
            "the write failed as it was committing and may have been committed; read the state before retrying",
        ),
        Code::Internal => Some("internal error"),
        Code::InvalidRequest
        | Code::MalformedJson
        | Code::InvalidHost
        | Code::Unauthenticated
        | Code::Forbidden
        | Code::NotFound
        | Code::MethodNotAllowed
        | Code::Conflict
        | Code::Gone
        | Code::TooLarge
        | Code::BodyTimeout
        | Code::UnsupportedMediaType
        | Code::Overloaded
        | Code::Timeout => None,
    }
}

/// Every error a handler answers with: its code, and what to say.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What went wrong.
    pub code: Code,
    /// For people: names the offending field, header or file. For the codes
    /// that carry an internal detail, logged and replaced by a public text.
    pub message: String,
    /// For a denial: the deciding policies (empty when no policy permitted
    /// it, or no policy was asked).
    pub reasons: Vec<Reason>,
    /// A missing or wrong bearer key: the answer carries
    /// `WWW-Authenticate: Bearer`.
    pub challenge: bool,
    /// For a refused token: why (`token_expired`, `token_audience`, …).
    pub reason: Option<&'static str>,
}

impl ApiError {
    /// An error of `code` saying `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reasons: Vec::new(),
            challenge: false,
            reason: None,
        }
    }

    /// A refused token (a 401 with its reason code); `challenge` when it
    /// came in `Authorization`.
    pub fn token(e: &crate::identity::TokenError, what: &str, challenge: bool) -> Self {
        Self {
            challenge,
            reason: Some(e.reason()),
            ..Self::new(Code::Unauthenticated, format!("{what}: {e}"))
        }
    }

    /// A denial with the policies that decided it.
    pub fn denied(message: impl Into<String>, reasons: Vec<Reason>) -> Self {
        Self {
            reasons,
            ..Self::new(Code::Forbidden, message)
        }
    }

    /// A missing or wrong bearer key: 401 with `WWW-Authenticate`.
    pub fn no_key(message: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(Code::Unauthenticated, message)
        }
    }

    /// The body is not the JSON expected.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(Code::MalformedJson, message)
    }
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
    /// `unsupported_media_type`, `store_unavailable` (for a write: not
    /// committed), `store_outcome_unknown` (a write that may have been
    /// committed), `overloaded`, `timeout`, `unavailable`, `internal`, …
    pub code: String,
    /// For people; names the offending field, header or file.
    pub message: String,
    /// For a denial: the deciding policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<Reason>>,
    /// For a refused token (`unauthenticated`): why — `token_malformed`,
    /// `token_algorithm`, `token_issuer`, `token_audience`,
    /// `token_expired`, `token_not_yet_valid`, `token_signature`,
    /// `token_key_unknown`, `token_keys_unavailable`, `token_claims`,
    /// `token_subject`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<Fault> for ApiError {
    fn from(e: Fault) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<PdpError> for ApiError {
    fn from(e: PdpError) -> Self {
        let code = e.code();
        match e {
            PdpError::Denied { message, reasons } => Self::denied(message, reasons),
            PdpError::Claims(message) => Self {
                reason: Some("token_claims"),
                ..Self::new(code, message)
            },
            PdpError::Input(_)
            | PdpError::Unavailable(_)
            | PdpError::Store(_)
            | PdpError::OutOfTime => Self::new(code, e.to_string()),
        }
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        let code = e.code();
        match e {
            AccountsError::Denied { message, reasons } => Self::denied(message, reasons),
            AccountsError::Input(_)
            | AccountsError::Refused(_)
            | AccountsError::Fault(_)
            | AccountsError::Unavailable(_) => Self::new(code, e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        // A worker that panicked (a fault, never a decision) is a 503 like
        // any other fault; the detail goes to the log.
        Self::new(Code::Unavailable, format!("a worker task failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match public_message(self.code) {
            Some(public) => {
                if self.code == Code::Internal || self.code == Code::StoreOutcomeUnknown {
                    tracing::error!("answering {}: {}", self.code, self.message);
                } else {
                    tracing::warn!("answering {}: {}", self.code, self.message);
                }
                public.to_owned()
            }
            None => self.message,
        };
        let mut response = if self.code == Code::Forbidden {
            (
                status(self.code),
                Json(json!({"error": {
                    "code": self.code.as_str(),
                    "message": message,
                    "reasons": self.reasons,
                }})),
            )
                .into_response()
        } else if let Some(reason) = self.reason {
            (
                status(self.code),
                Json(json!({"error": {
                    "code": self.code.as_str(),
                    "reason": reason,
                    "message": message,
                }})),
            )
                .into_response()
        } else {
            error_response(self.code, &message)
        };
        if self.challenge {
            // RFC 6750 §3: a refused bearer token says `invalid_token`.
            let value = if self.reason.is_some() {
                "Bearer realm=\"cedard\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"cedard\""
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        response
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
        Code::Unavailable,
        public_message(Code::Unavailable).unwrap_or_default(),
    )
}

/// The one error body shape, with the status of `code`.
pub fn error_response(code: Code, message: &str) -> Response {
    (
        status(code),
        Json(json!({"error": {"code": code.as_str(), "message": message}})),
    )
        .into_response()
}
