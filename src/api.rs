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

use crate::authz::{self, Decision, InputError};
use crate::policy::watch::{LivePolicies, ReloadStatus};
use crate::policy::{PolicyMeta, PolicySnapshot, Revision};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The live policy set.
    pub live: Arc<LivePolicies>,
    /// The most requests one batch may hold; more is a 400, so that one call
    /// cannot monopolise the evaluator.
    pub batch_limit: usize,
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
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
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // Decision bodies are small; a generous cap keeps a runaway client
        // from making the daemon buffer gigabytes.
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(state)
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
    #[serde(default)]
    entities: Option<Value>,
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

/// Turns one question into a decision against `snapshot`.
fn decide_one(
    snapshot: &PolicySnapshot,
    principal: &Value,
    action: &Value,
    resource: &Value,
    context: Option<&Value>,
    entities: &cedar_policy::Entities,
) -> Result<Decision, InputError> {
    let principal = authz::parse_uid("principal", principal)?;
    let action = authz::parse_uid("action", action)?;
    let resource = authz::parse_uid("resource", resource)?;
    let request = authz::build_request(snapshot, principal, action, resource, context, true)?;
    Ok(authz::decide(snapshot, &request, entities))
}

async fn is_authorized(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: CheckBody = parse_json(&body)?;
    // One snapshot from the first parse to the answer.
    let snapshot = state.live.snapshot();
    let entities =
        authz::parse_entities(&snapshot, body.entities.as_ref().unwrap_or(&Value::Null))?;
    let decision = decide_one(
        &snapshot,
        &body.principal,
        &body.action,
        &body.resource,
        body.context.as_ref(),
        &entities,
    )?;
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
    let snapshot = state.live.snapshot();
    let entities =
        authz::parse_entities(&snapshot, body.entities.as_ref().unwrap_or(&Value::Null))?;
    let mut results = Vec::with_capacity(body.requests.len());
    for (i, raw) in body.requests.into_iter().enumerate() {
        let at = format!("requests[{i}]");
        let item: BatchItem =
            serde_json::from_value(raw).map_err(|e| InputError::new(at.clone(), e.to_string()))?;
        let decision = decide_one(
            &snapshot,
            &item.principal,
            &item.action,
            &item.resource,
            item.context.as_ref(),
            &entities,
        )
        .map_err(|e| e.within(&at))?;
        results.push(decision);
    }
    Ok(Json(json!({"results": results, "revision": snapshot.revision})).into_response())
}
