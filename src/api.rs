//! The HTTP API: routes, request bodies, response shapes and the one error
//! shape `{"error": {"code", "message"}}`.
//!
//! Handlers read their input, take one policy snapshot, and hand everything
//! to `authz` (decisions) or `store` (accounts). This module owns status codes
//! and JSON shapes; it makes no decision itself.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::accounts::Clock;
use crate::authz::{self, Decision, InputError, Reason};
use crate::entities::{EntityError, EntityMemo, Facts, Inline, RoleCatalog};
use crate::policy::watch::{LivePolicies, ReloadStatus};
use crate::policy::{PolicyMeta, PolicySnapshot, Revision};
use crate::store::{Store, StoreError};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The live policy set.
    pub live: Arc<LivePolicies>,
    /// The most requests one batch may hold; more is a 400, so that one call
    /// cannot monopolise the evaluator.
    pub batch_limit: usize,
    /// The accounts, members and invites, which decisions read.
    pub store: Arc<Store>,
    /// The role names of the live schema, cached per policy revision.
    pub roles: Arc<RoleCatalog>,
    /// Stored entities already built for decisions, valid until the next
    /// write to the store.
    pub memo: Arc<EntityMemo>,
    /// The base of invite links: `<public_url>/invites/<token>`.
    pub public_url: Arc<str>,
    /// Where "now" comes from, for invite expiry.
    pub clock: Clock,
}

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
    /// No `X-Actor` header: 401.
    #[error("{0}")]
    Unauthorized(String),
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
    /// The loaded schema cannot describe the stored facts: 503.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside cedard: 500. The detail is logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StoreError as S;
        match e {
            S::IdTaken(_)
            | S::AlreadyMember { .. }
            | S::LastAdmin { .. }
            | S::NotTeam(_)
            | S::NotPersonal(_) => ApiError::Conflict(e.to_string()),
            S::NoUser(_) | S::NoAccount(_) | S::NotMember { .. } | S::NoInvite { .. } => {
                ApiError::NotFound(e.to_string())
            }
            S::InviteGone => ApiError::Gone(e.to_string()),
            S::EmailMismatch => ApiError::Forbidden {
                message: e.to_string(),
                reasons: Vec::new(),
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<EntityError> for ApiError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::Input(e) => ApiError::BadRequest(e),
            EntityError::Store(e) => e.into(),
            EntityError::Schema(m) => ApiError::Unavailable(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
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
            ApiError::Unavailable(m) => {
                tracing::warn!("{m}");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
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

/// The one error body shape.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Builds the router for the decision API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/policies", get(list_policies))
        .route("/v1/is_authorized", post(is_authorized))
        .route("/v1/is_authorized/batch", post(is_authorized_batch))
        .route("/v1/matrix", get(matrix))
        .merge(crate::accounts::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // Decision bodies are small; a generous cap keeps a runaway client
        // from making the daemon buffer gigabytes.
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Gives the errors axum answers by itself (a wrong method, a body over the
/// limit) the one JSON error shape, so that clients parse every error alike.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "the request body is over the 8 MiB limit"),
        _ => ("error", status.canonical_reason().unwrap_or("error")),
    };
    let mut fixed = error_response(status, code, message);
    // Keep headers such as `Allow` that tell the client what would work.
    for (name, value) in response.headers() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready once a valid policy set is serving. The daemon refuses to start on
/// an invalid set, so a running daemon is always ready; the revision says
/// which set.
async fn readyz(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.live.snapshot();
    Json(json!({"status": "ready", "revision": snapshot.revision}))
}

#[derive(Serialize)]
struct PolicyListing {
    revision: Revision,
    #[serde(with = "time::serde::rfc3339")]
    loaded_at: time::OffsetDateTime,
    last_reload: ReloadStatus,
    warnings: Vec<crate::policy::LoadError>,
    policies: Vec<PolicyMeta>,
}

async fn list_policies(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.live.snapshot();
    let listing = PolicyListing {
        revision: snapshot.revision.clone(),
        loaded_at: snapshot.loaded_at,
        last_reload: state.live.last_reload(),
        warnings: snapshot.warnings.clone(),
        policies: snapshot.meta.clone(),
    };
    Json(serde_json::to_value(listing).unwrap_or(Value::Null))
}

/// One authorization question, as sent over HTTP.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    principal: Value,
    action: Value,
    resource: Value,
    #[serde(default)]
    context: Option<Value>,
    /// Kept as raw JSON text so that each entity is decoded through the
    /// snapshot's memo (see `authz::parse_entities_raw`).
    #[serde(default)]
    entities: Option<Box<serde_json::value::RawValue>>,
}

/// One question inside a batch; entities are shared by the batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    principal: Value,
    action: Value,
    resource: Value,
    #[serde(default)]
    context: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    requests: Vec<Value>,
    #[serde(default)]
    entities: Option<Value>,
}

#[derive(Serialize)]
struct CheckResponse {
    #[serde(flatten)]
    decision: Decision,
    revision: Revision,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadJson(format!("invalid request body: {e}")))
}

/// One question, parsed and checked against the schema, with the UIDs the
/// store is asked about.
struct Question {
    principal: cedar_policy::EntityUid,
    resource: cedar_policy::EntityUid,
    request: cedar_policy::Request,
}

/// Parses one question against `snapshot`.
fn question(
    snapshot: &PolicySnapshot,
    principal: &Value,
    action: &Value,
    resource: &Value,
    context: Option<&Value>,
) -> Result<Question, InputError> {
    let principal = authz::parse_uid_in(snapshot, "principal", principal)?;
    let action = authz::parse_uid_in(snapshot, "action", action)?;
    let resource = authz::parse_uid_in(snapshot, "resource", resource)?;
    let request = authz::build_request(
        snapshot,
        principal.clone(),
        action,
        resource.clone(),
        context,
        true,
    )?;
    Ok(Question {
        principal,
        resource,
        request,
    })
}

/// The inline entities plus what the store knows about each question's
/// principal, resource and the resource's account.
fn entities_for(
    state: &AppState,
    snapshot: &PolicySnapshot,
    inline: Inline<'_>,
    questions: &[Question],
) -> Result<cedar_policy::Entities, ApiError> {
    let facts = Facts::new(snapshot, &state.roles, &state.memo, &state.store);
    let pairs: Vec<_> = questions
        .iter()
        .map(|q| (&q.principal, &q.resource))
        .collect();
    Ok(facts.entities(inline, &pairs)?)
}

async fn is_authorized(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: CheckBody = parse_json(&body)?;
    // One snapshot from the first parse to the answer.
    let snapshot = state.live.snapshot();
    let q = question(
        &snapshot,
        &body.principal,
        &body.action,
        &body.resource,
        body.context.as_ref(),
    )?;
    // The store work here runs on the async thread on purpose: usually the
    // entity memo answers without touching redb; otherwise it is one redb
    // read transaction (MVCC, so it never waits for a writer) with at most
    // three point lookups and one range over one user's roles, a few
    // microseconds from redb's page cache (benches/store.rs measures it).
    let inline = match body.entities.as_deref() {
        Some(raw) if raw.get().trim() != "null" => Inline::Raw(raw),
        _ => Inline::None,
    };
    let entities = entities_for(&state, &snapshot, inline, std::slice::from_ref(&q))?;
    let decision = authz::decide(&snapshot, &q.request, &entities);
    Ok(Json(CheckResponse {
        decision,
        revision: snapshot.revision.clone(),
    })
    .into_response())
}

async fn is_authorized_batch(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: BatchBody = parse_json(&body)?;
    if body.requests.len() > state.batch_limit {
        return Err(InputError::new(
            "requests",
            format!(
                "a batch holds at most {} requests, this one has {}",
                state.batch_limit,
                body.requests.len()
            ),
        )
        .into());
    }
    // A batch may ask the store about up to three entities per request, so
    // the whole batch runs off the async threads.
    tokio::task::spawn_blocking(move || -> Result<Response, ApiError> {
        let snapshot = state.live.snapshot();
        let mut questions = Vec::with_capacity(body.requests.len());
        for (i, raw) in body.requests.into_iter().enumerate() {
            let at = format!("requests[{i}]");
            let item: BatchItem = serde_json::from_value(raw)
                .map_err(|e| InputError::new(at.clone(), e.to_string()))?;
            let q = question(
                &snapshot,
                &item.principal,
                &item.action,
                &item.resource,
                item.context.as_ref(),
            )
            .map_err(|e| e.within(&at))?;
            questions.push(q);
        }
        let inline = match body.entities.as_ref() {
            Some(v) => Inline::Json(v),
            None => Inline::None,
        };
        let entities = entities_for(&state, &snapshot, inline, &questions)?;
        let results: Vec<Decision> = questions
            .iter()
            .map(|q| authz::decide(&snapshot, &q.request, &entities))
            .collect();
        Ok(Json(json!({"results": results, "revision": snapshot.revision})).into_response())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("batch task failed: {e}")))?
}

/// The role × action matrix of the serving policy set (see `crate::matrix`),
/// with the revision it was computed from.
async fn matrix(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.live.snapshot();
    // The role names may have to be read from the schema files (once per
    // revision): blocking file work, so it runs off the async threads.
    let computed = tokio::task::spawn_blocking(move || {
        let roles = state.roles.roles(&snapshot)?;
        let matrix = crate::matrix::compute(&snapshot, &roles)?;
        Ok::<_, crate::matrix::MatrixError>((matrix, snapshot.revision.clone()))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the matrix task failed: {e}")))?;
    match computed {
        Ok((matrix, revision)) => {
            let mut body = matrix.to_json();
            body["revision"] = json!(revision);
            Ok(Json(body))
        }
        Err(crate::matrix::MatrixError::Roles(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
