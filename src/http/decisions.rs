//! `/v1/is_authorized` and its batch: the wire shapes of a question and its
//! answer, handed to the decision pipeline.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{
    parse_json, CallerInfo, CedarEntity, ConsistencyBody, ContextBody, EntityRef,
};
use super::state::AppState;
use super::tokens;
use crate::authz::{Decision, InputError};
use crate::code::Code;
use crate::facts::Inline;
use crate::identity::Verified;
use crate::pdp::{ActionRef, Principal, Query};
use crate::policy::Revision;

/// The decision routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(is_authorized))
        .routes(routes!(is_authorized_batch))
}

/// One authorization question.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// `{"type": "User", "id": "alice"}` or `"User::\"alice\""`. Either
    /// this or `principal_token`.
    #[serde(default)]
    #[schema(value_type = Option<EntityRef>)]
    principal: Option<Value>,
    /// An OpenID Connect / JWT token of a trusted issuer (`--issuers`),
    /// instead of `principal`: the decision is about the token's subject,
    /// with cedard's stored facts for it and the claims its issuer maps. An
    /// invalid, expired or untrusted token is a 401 with a `reason`.
    #[serde(default)]
    principal_token: Option<String>,
    /// `{"type": "Action", "id": "startPod"}` or `"Action::\"startPod\""`.
    #[schema(value_type = EntityRef)]
    action: Value,
    /// The resource reference.
    #[schema(value_type = EntityRef)]
    resource: Value,
    /// The Cedar context, checked against the action's declared context.
    #[serde(default)]
    #[schema(value_type = Option<ContextBody>)]
    context: Option<Value>,
    /// Entities in Cedar's JSON entity format. Kept as raw JSON text so that
    /// each entity is decoded through the snapshot's memo.
    #[serde(default)]
    #[schema(value_type = Option<Vec<CedarEntity>>)]
    entities: Option<Box<RawValue>>,
    /// How fresh the stored facts must be: `"minimize_latency"` (default),
    /// `"full"`, or `{"at_least": <store_revision of a write>}`.
    #[serde(default)]
    consistency: Option<ConsistencyBody>,
}

/// One question inside a batch; entities are shared by the batch.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The principal reference; absent when the batch has a
    /// `principal_token`.
    #[serde(default)]
    #[schema(value_type = Option<EntityRef>)]
    principal: Option<Value>,
    /// The action reference.
    #[schema(value_type = EntityRef)]
    action: Value,
    /// The resource reference.
    #[schema(value_type = EntityRef)]
    resource: Value,
    /// The Cedar context.
    #[serde(default)]
    #[schema(value_type = Option<ContextBody>)]
    context: Option<Value>,
}

/// Several questions sharing one set of entities.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    /// The questions (at most `--batch-limit`). Each is kept as its raw
    /// JSON text (borrowed from the body) until the count is checked, then
    /// read once into a [`BatchItem`], so that an error names `requests[i]`.
    #[serde(borrow)]
    #[schema(value_type = Vec<BatchItem>)]
    requests: Vec<&'a RawValue>,
    /// Entities in Cedar's JSON entity format, shared by every question;
    /// raw JSON text, decoded through the snapshot's memo as for one
    /// question.
    #[serde(default, borrow)]
    #[schema(value_type = Option<Vec<CedarEntity>>)]
    entities: Option<&'a RawValue>,
    /// A token whose subject is the principal of every question (AVP's
    /// `BatchIsAuthorizedWithToken`); the questions then name no
    /// `principal`.
    #[serde(default, borrow)]
    #[schema(value_type = Option<String>)]
    principal_token: Option<&'a str>,
    /// How fresh the stored facts must be, as for one question.
    #[serde(default)]
    consistency: Option<ConsistencyBody>,
}

/// The answer to one question.
#[derive(Serialize, ToSchema)]
pub struct CheckResponse {
    #[serde(flatten)]
    decision: Decision,
    /// The policy set that answered.
    revision: Revision,
    /// The store revision the stored facts were at least as new as.
    store_revision: u64,
}

/// The answers to a batch, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// One decision per question.
    results: Vec<Decision>,
    /// The policy set that answered every question.
    revision: Revision,
    /// The store revision the stored facts were at least as new as.
    store_revision: u64,
}

/// Runs `f` on the async worker for small bodies and off it for large ones:
/// decoding thousands of inline entities must not stall the workers that
/// answer `/healthz` and small decisions.
async fn off_worker_if<T: Send + 'static>(
    heavy: bool,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if heavy {
        tokio::task::spawn_blocking(f).await?
    } else {
        f()
    }
}

/// The principal of a question: the entity `named`, or the subject of the
/// call's verified token (`sent`: whether the body has `principal_token`);
/// exactly one. `field` names the principal in errors.
fn principal<'a>(
    named: Option<&'a Value>,
    sent: bool,
    token: Option<&'a Verified>,
    field: &str,
) -> Result<Principal<'a>, InputError> {
    match (named, sent, token) {
        (Some(_), true, _) => Err(InputError::new(
            field,
            "give `principal` or `principal_token`, not both",
        )),
        (Some(p), false, _) => Ok(Principal::Ref(p)),
        (None, true, Some(t)) => Ok(Principal::Token(t)),
        // The token was read before the body; a body whose token was not
        // found there is not decided.
        (None, true, None) => Err(InputError::new(
            "principal_token",
            "must be a string at the top level of the body",
        )),
        (None, false, _) => Err(InputError::new(
            field,
            "required: an entity reference, or `principal_token`",
        )),
    }
}

/// May this principal do this action on this resource?
#[utoipa::path(
    post,
    path = "/v1/is_authorized",
    tag = "decisions",
    request_body = CheckBody,
    responses(
        (status = 200, description = "The decision (a deny is an answer, not an error)", body = CheckResponse),
        (status = 400, description = "Malformed or invalid question; the message names the field", body = ErrorBody),
        (status = 401, description = "No valid caller key, or a `principal_token` refused (`reason` says why)", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
        (status = 503, description = "cedard cannot answer now; no decision", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn is_authorized(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    // A remote store's reads block: they run off the async workers too.
    let heavy = body.len() > state.limits.blocking_threshold || state.pdp.store().is_remote();
    let token = tokens::principal_token(&state, &body).await?;
    off_worker_if(heavy, move || {
        let body: CheckBody = parse_json(&body)?;
        let inline = Inline::raw(body.entities.as_deref());
        let query = Query {
            principal: principal(
                body.principal.as_ref(),
                body.principal_token.is_some(),
                token.as_deref(),
                "principal",
            )?,
            action: ActionRef::Uid(&body.action),
            resource: &body.resource,
            context: body.context.as_ref(),
        };
        // The store work here may run on the async thread: usually the entity
        // memo answers without touching the store; otherwise it is one read
        // transaction (MVCC, so it never waits for a writer) with at most
        // three point lookups and one range over one user's roles, a few
        // microseconds from the page cache (benches/store.rs measures it).
        let mut caller = caller.caller("/v1/is_authorized");
        caller.consistency = body.consistency.map(Into::into).unwrap_or_default();
        let mut checked = state.pdp.check(&caller, &[query], inline, false)?;
        let decision = checked.decisions.pop().ok_or_else(|| {
            ApiError::new(
                Code::Internal,
                "the pipeline answered no decision for one question",
            )
        })?;
        Ok(Json(CheckResponse {
            decision,
            revision: checked.revision,
            store_revision: checked.store_revision,
        })
        .into_response())
    })
    .await
}

/// Several questions at once, sharing one set of entities.
#[utoipa::path(
    post,
    path = "/v1/is_authorized/batch",
    tag = "decisions",
    request_body = BatchBody,
    responses(
        (status = 200, description = "One decision per question, in order", body = BatchResponse),
        (status = 400, description = "A malformed question (named `requests[i]`) fails the whole batch", body = ErrorBody),
        (status = 401, description = "No valid caller key, or a `principal_token` refused (`reason` says why)", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
        (status = 503, description = "cedard cannot answer now; no decision", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn is_authorized_batch(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    // A batch may ask the store about up to three entities per question, so
    // it always runs off the async threads.
    let token = tokens::principal_token(&state, &body).await?;
    off_worker_if(true, move || {
        let body: BatchBody = parse_json(&body)?;
        let limit = state.limits.batch_limit;
        if body.requests.len() > limit {
            return Err(InputError::new(
                "requests",
                format!(
                    "a batch holds at most {limit} requests, this one has {}",
                    body.requests.len()
                ),
            )
            .into());
        }
        let mut items = Vec::with_capacity(body.requests.len());
        for (i, raw) in body.requests.iter().enumerate() {
            let item: BatchItem = serde_json::from_str(raw.get())
                .map_err(|e| InputError::new(format!("requests[{i}]"), e.to_string()))?;
            items.push(item);
        }
        let queries: Vec<Query<'_>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Ok(Query {
                    principal: principal(
                        item.principal.as_ref(),
                        body.principal_token.is_some(),
                        token.as_deref(),
                        &format!("requests[{i}].principal"),
                    )?,
                    action: ActionRef::Uid(&item.action),
                    resource: &item.resource,
                    context: item.context.as_ref(),
                })
            })
            .collect::<Result<_, InputError>>()?;
        let inline = Inline::raw(body.entities);
        let mut caller = caller.caller("/v1/is_authorized/batch");
        caller.consistency = body.consistency.map(Into::into).unwrap_or_default();
        let checked = state.pdp.check(&caller, &queries, inline, true)?;
        Ok(Json(BatchResponse {
            results: checked.decisions,
            revision: checked.revision,
            store_revision: checked.store_revision,
        })
        .into_response())
    })
    .await
}
