//! The routes for operators: the policies and the matrix of the serving set,
//! caller keys, metrics, health, and the API description.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{bad, Body, CallerInfo};
use super::state::AppState;
use crate::clock::rfc3339 as ts;
use crate::code::Code;
use crate::keys::{self, Scope};
use crate::policy::watch::ReloadStatus;
use crate::policy::{LoadError, PolicyMeta, Revision};
use crate::store::ApiKey;

/// `/v1/policies`, `/v1/matrix`, `/v1/keys`, `/metrics`: the `admin` scope.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies))
        .routes(routes!(matrix))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(metrics))
}

/// `/healthz` and `/readyz`: no key needed, so that probes need no secret.
pub fn health() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `ready`.
    status: String,
    /// The serving policy set (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<Revision>,
    /// The store revision this replica knows (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    store_revision: Option<u64>,
    /// Why the daemon is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        revision: None,
        store_revision: None,
        reason: None,
    })
}

/// Ready when a valid policy set is serving (the daemon refuses to start
/// on an invalid set) and the store answers: a shared database that cannot
/// be reached within a second, or whose caller keys this replica cannot
/// confirm (it would authenticate nobody), makes the replica not ready
/// (503), so that a load balancer sends its callers elsewhere. A damaged data file (found at
/// start or since) makes the daemon not ready for good; the details are in
/// the daemon's log, not shown to an unauthenticated probe. A write outage
/// (writes cannot commit: a full disk, say) makes it not ready until writes
/// commit again, which the daemon finds out by itself (see
/// `server::recover_writes`); decisions are still answered meanwhile.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Health),
    (status = 503, description = "The store cannot be reached, the data file is damaged (stored facts are not used, writes are refused), or writes cannot be committed now (a full disk: writes are refused until they can); `reason` says which", body = Health)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let snapshot = state.pdp.live().snapshot();
    let store = state.pdp.store().clone();
    let checked = if store.damage().is_some() {
        Err(
            "the data file is damaged: stored facts are not used and writes are refused; \
             see the daemon's log and run `cedard store check`"
                .to_owned(),
        )
    } else if let Some(outage) = store.write_outage() {
        let since = outage
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Err(format!(
            "writes cannot be committed since {} (an I/O failure such as a full disk; \
             writes are refused until they can, and the daemon retries every second); \
             see the daemon's log",
            ts(since)
        ))
    } else if store.is_remote() {
        // The revision read now, and the caller keys brought up to it: a
        // replica whose keys are not confirmed authenticates nobody, so it
        // is not ready until they are (after an outage, say).
        let accounts = state.accounts.clone();
        let probe = tokio::task::spawn_blocking(move || {
            let revision = store.refresh_revision().map_err(|e| e.to_string())?;
            accounts.refresh_keys().map_err(|e| e.to_string())?;
            if accounts.keys_current() {
                Ok(revision)
            } else {
                Err("the caller keys have not been confirmed with the store".to_owned())
            }
        });
        match tokio::time::timeout(std::time::Duration::from_secs(1), probe).await {
            Ok(Ok(checked)) => checked,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the store did not answer within a second".to_owned()),
        }
    } else {
        Ok(store.revision())
    };
    match checked {
        Ok(revision) => Json(Health {
            status: "ready".into(),
            revision: Some(snapshot.revision.clone()),
            store_revision: Some(revision),
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not ready".into(),
                revision: Some(snapshot.revision.clone()),
                store_revision: None,
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// The serving policy set.
#[derive(Serialize, ToSchema)]
pub struct PolicyListing {
    revision: Revision,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    loaded_at: OffsetDateTime,
    last_reload: ReloadStatus,
    warnings: Vec<LoadError>,
    policies: Vec<PolicyMeta>,
    /// The trusted token issuers (`--issuers`), by `iss`.
    issuers: Vec<IssuerView>,
}

/// One trusted issuer, as its file says (never a secret or a key).
#[derive(Serialize, ToSchema)]
pub struct IssuerView {
    /// The `iss` its tokens carry.
    issuer: String,
    /// The file it was read from.
    file: String,
    /// The accepted audiences.
    audiences: Vec<String>,
    /// Where its keys come from: `discovery`, the `jwks_uri`, or `file`.
    keys: String,
    /// The accepted algorithms.
    algorithms: Vec<String>,
    /// The principal's entity type and the claim that is its id.
    principal_type: String,
    /// The claim whose value is the principal's id.
    id_claim: String,
    /// Principal attributes from claims: `{attribute: claim}`.
    attributes: std::collections::BTreeMap<String, String>,
}

/// Every loaded policy, the revision, and the last reload's outcome.
#[utoipa::path(get, path = "/v1/policies", tag = "admin",
    responses((status = 200, body = PolicyListing), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn list_policies(State(state): State<AppState>) -> Json<PolicyListing> {
    // The snapshot and the reload status come from one atomic load: they
    // always match, and a reload in progress is never waited on.
    let published = state.pdp.live().published();
    let snapshot = &published.snapshot;
    Json(PolicyListing {
        revision: snapshot.revision.clone(),
        loaded_at: snapshot.loaded_at,
        last_reload: published.last_reload.clone(),
        warnings: snapshot.warnings.clone(),
        policies: snapshot.meta.clone(),
        issuers: {
            let mut issuers: Vec<IssuerView> = snapshot
                .issuers
                .iter()
                .map(|i| IssuerView {
                    issuer: i.issuer.clone(),
                    file: i.file.clone(),
                    audiences: i.audiences.clone(),
                    keys: match &i.keys.source {
                        crate::identity::KeySource::Discovery => "discovery".to_owned(),
                        crate::identity::KeySource::Uri(u) => u.clone(),
                        crate::identity::KeySource::File => "file".to_owned(),
                    },
                    algorithms: i.algorithms.iter().map(|a| format!("{a:?}")).collect(),
                    principal_type: i.principal_type.clone(),
                    id_claim: i.id_claim.clone(),
                    attributes: i.attributes.iter().cloned().collect(),
                })
                .collect();
            issuers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
            issuers
        },
    })
}

/// The role × action matrix: for each kind of account, each action's
/// decision for each column.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MatrixView {
    /// The schema's roles.
    roles: Vec<String>,
    /// The columns: each role, then `non-member` (a user of no role there).
    columns: Vec<String>,
    /// The rows: the actions a user may be asked about.
    actions: Vec<String>,
    /// In a team account: action → column → decision.
    team:
        std::collections::HashMap<String, std::collections::HashMap<String, crate::authz::Effect>>,
    /// In a personal account: action → column → decision.
    personal:
        std::collections::HashMap<String, std::collections::HashMap<String, crate::authz::Effect>>,
    /// The policy set it was computed from.
    revision: Revision,
}

/// The role × action matrix of the serving policy set (see `crate::matrix`),
/// with the revision it was computed from.
#[utoipa::path(get, path = "/v1/matrix", tag = "admin",
    responses((status = 200, body = MatrixView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn matrix(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.pdp.live().snapshot();
    // Evaluating every cell is CPU work: off the async threads.
    let computed = tokio::task::spawn_blocking(move || {
        let roles = state.pdp.roles(&snapshot)?;
        let matrix = crate::matrix::compute(&snapshot, &roles)
            .map_err(|e| ApiError::new(Code::Unavailable, e.to_string()))?;
        Ok::<_, ApiError>((matrix, snapshot.revision.clone()))
    })
    .await??;
    let (matrix, revision) = computed;
    let mut body = matrix.to_json();
    body["revision"] = json!(revision);
    Ok(Json(body))
}

/// A caller key, without its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    /// The public id, shown in logs.
    id: String,
    /// Who holds it.
    name: String,
    /// What it may do.
    #[schema(value_type = Vec<Scope>)]
    scopes: Vec<String>,
    /// When it was created (RFC 3339).
    created_at: String,
    /// When it was revoked (RFC 3339), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            created_at: ts(k.created_at),
            revoked_at: k.revoked_at.map(ts),
        }
    }
}

/// A key just created: the only time its secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: KeyView,
    /// The whole key, `cdk_<id>_<secret>`: shown once, stored only hashed.
    secret: String,
}

/// The body of a new caller key.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewKeyBody {
    /// A name for people (which service holds the key).
    name: String,
    /// What the key may do: one or more of `decide`, `manage`, `admin`.
    scopes: Vec<Scope>,
}

/// Every caller key, revoked ones included; never a secret.
#[utoipa::path(get, path = "/v1/keys", tag = "admin",
    responses((status = 200, body = Vec<KeyView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn list_keys(State(state): State<AppState>) -> Result<Json<Vec<KeyView>>, ApiError> {
    let keys = tokio::task::spawn_blocking(move || state.accounts.list_keys()).await??;
    Ok(Json(keys.iter().map(KeyView::from).collect()))
}

/// Creates a caller key; the answer holds its secret, shown this once.
#[utoipa::path(post, path = "/v1/keys", tag = "admin",
    request_body = NewKeyBody,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn create_key(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = Body::parse_as::<NewKeyBody>(&body)?;
    let name = body.str("name")?;
    let scopes = body.opt_strings("scopes")?.unwrap_or_default();
    let scopes: Vec<Scope> = keys::parse_scopes(&scopes).map_err(|m| bad("scopes", m))?;
    let created = tokio::task::spawn_blocking(move || {
        state
            .accounts
            .create_key(&caller.caller("management"), &name, &scopes)
    })
    .await??;
    tracing::info!(key = %created.record.id, name = %created.record.name, "caller key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: (&created.record).into(),
            secret: created.secret,
        }),
    )
        .into_response())
}

/// Revokes a caller key; it stops working at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key id")),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "The last live key with the `admin` scope: revoking it would lock every operator out", body = ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn revoke_key(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let key = tokio::task::spawn_blocking(move || {
        state.accounts.revoke_key(&caller.caller("management"), &id)
    })
    .await??;
    tracing::info!(key = %key.id, "caller key revoked");
    Ok(Json((&key).into()))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = state.metrics.as_ref() else {
        return Err(ApiError::new(
            Code::NotFound,
            "metrics are served on `--metrics-listen`",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics::render(handle, &state),
    )
        .into_response())
}
