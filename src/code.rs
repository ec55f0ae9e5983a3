//! The one vocabulary of what went wrong: every error of every boundary
//! (input, store, pipeline, management, HTTP) says which [`Code`] it is, in
//! an exhaustive match of its own, and the HTTP layer maps each code to its
//! status in one place (`http::error::status`). The codes are the `code`
//! field of every error answer, the `outcome` of a management write in the
//! decision log, and the `reason` label of failure metrics. This module
//! knows nothing about HTTP.

/// What went wrong, as a caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Malformed or invalid input; the message names the field.
    InvalidRequest,
    /// The body is not the JSON expected.
    MalformedJson,
    /// A `Host` cedard does not serve (DNS rebinding).
    InvalidHost,
    /// No valid caller key (or no acting user).
    Unauthenticated,
    /// Denied: by the policies, by the key's scopes, or by a rule about who
    /// may act.
    Forbidden,
    /// No such route or record.
    NotFound,
    /// The route does not take that method.
    MethodNotAllowed,
    /// The request conflicts with the stored state.
    Conflict,
    /// An invite link that no longer works.
    Gone,
    /// The body is over the limit.
    TooLarge,
    /// The body did not arrive in time (`--body-timeout-ms`).
    BodyTimeout,
    /// The body is not JSON (or a form, on the console).
    UnsupportedMediaType,
    /// cedard cannot answer now for a reason of its own (the schema cannot
    /// describe the stored facts, a worker failed, a handler panicked).
    Unavailable,
    /// The store failed or cannot be confirmed current; nothing was
    /// decided or written.
    StoreUnavailable,
    /// A write failed as it committed and may have been committed.
    StoreOutcomeUnknown,
    /// Too many requests at once.
    Overloaded,
    /// The request ran out of time; nothing was decided.
    Timeout,
    /// A fault inside cedard.
    Internal,
}

impl Code {
    /// The code as answers, the log and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::MalformedJson => "malformed_json",
            Code::InvalidHost => "invalid_host",
            Code::Unauthenticated => "unauthenticated",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Conflict => "conflict",
            Code::Gone => "gone",
            Code::TooLarge => "too_large",
            Code::BodyTimeout => "body_timeout",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::Unavailable => "unavailable",
            Code::StoreUnavailable => "store_unavailable",
            Code::StoreOutcomeUnknown => "store_outcome_unknown",
            Code::Overloaded => "overloaded",
            Code::Timeout => "timeout",
            Code::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
