//! The management API: sign-up, accounts, members and invites over HTTP.
//!
//! Every call except sign-up names its acting user in `X-Actor` and is itself
//! a Cedar decision: the handler asks [`crate::authz::decide`] whether the
//! actor may do the call's action (`inviteMember`, `removeMember`, …) on the
//! account, against the live policy snapshot and the store's entities, so
//! editing `policies/admin.cedar` changes who may invite with no code change.
//! The rules that are not policy (a taken id, the last admin, an invite used
//! once) are checked by `store` inside the call's one write transaction. This
//! module owns request and response shapes of these routes; it does not
//! touch redb tables or build Cedar entities itself.
//!
//! Store work runs in `spawn_blocking`: a write waits for redb's durable
//! commit (an fsync), which must not stall the async threads.

use std::fmt;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use rand::TryRngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::{ApiError, AppState};
use crate::authz;
use crate::entities::{self, Facts, Inline};
use crate::policy::PolicySnapshot;
use crate::store::{Account, Invite, InviteState, Membership, ReadView, StoreError, User};

/// The role the owner of an account holds, and the one the last-admin rule
/// protects. It must be one of the schema's roles.
pub const ADMIN_ROLE: &str = "admin";

/// How long an invite stays valid when the request does not say.
pub const DEFAULT_INVITE_HOURS: i64 = 7 * 24;

/// The longest expiry an invite may ask for: one year.
pub const MAX_INVITE_HOURS: i64 = 365 * 24;

/// Where "now" comes from. The daemon uses the system clock; tests pass a
/// clock they can move forward to see an invite expire without waiting days.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(OffsetDateTime::now_utc))
    }

    /// A clock that asks `f` for the time.
    pub fn new(f: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// The routes of the management API, merged into [`crate::api::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(sign_up))
        .route("/v1/users/{id}", get(get_user))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/convert", post(convert))
        .route("/v1/accounts/{id}/members", get(list_members))
        .route(
            "/v1/accounts/{id}/members/{user}",
            put(set_role).delete(remove_member),
        )
        .route(
            "/v1/accounts/{id}/invites",
            post(create_invite).get(list_invites),
        )
        .route("/v1/accounts/{id}/invites/{invite}/link", post(relink))
        .route("/v1/accounts/{id}/invites/{invite}", delete(revoke))
        .route("/v1/invites/accept", post(accept))
}

// ---------------------------------------------------------------------------
// Input checks

/// Ids of users and accounts: 1–128 letters, digits and `._@-`. No `/`, so
/// that a role id `<account>/<role>` is unambiguous.
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.chars().count() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("`{id}` is not a valid id: use 1 to 128 letters, digits and `._@-`"),
        ))
    }
}

/// An email's shape: `local@domain.tld`, no spaces, at most 254 characters.
fn check_email(field: &str, email: &str) -> Result<(), ApiError> {
    let shaped = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if shaped {
        Ok(())
    } else {
        Err(bad(field, format!("`{email}` is not an email address")))
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let n = name.trim().chars().count();
    if (1..=100).contains(&n) && name.chars().count() <= 100 {
        Ok(())
    } else {
        Err(bad(field, "must be 1 to 100 characters"))
    }
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(authz::InputError::new(field, message))
}

/// A request body: a JSON object whose fields are read one by one, so that
/// every error names its field (serde's own messages do not always).
struct Body(serde_json::Map<String, Value>);

impl Body {
    /// Parses `bytes` as a JSON object with only the `allowed` fields.
    fn parse(bytes: &[u8], allowed: &[&str]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadJson(format!("invalid request body: {e}")))?;
        let Value::Object(map) = value else {
            return Err(bad("body", "expected a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                unknown,
                format!(
                    "unknown field; expected {}",
                    allowed
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(Self(map))
    }

    fn opt_str(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(field, format!("expected a string, found `{other}`"))),
        }
    }

    fn str(&self, field: &str) -> Result<String, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| bad(field, "is required"))
    }

    fn opt_int(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(other) => Err(bad(field, format!("expected an integer, found `{other}`"))),
        }
    }
}

/// The acting user named by `X-Actor`. Missing: 401. A value that is not an
/// id cannot name a stored user, so it is denied like an unknown user.
fn actor(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("x-actor") else {
        return Err(ApiError::Unauthorized(
            "the `X-Actor` header naming the acting user is required".into(),
        ));
    };
    let actor = value.to_str().unwrap_or_default().trim().to_owned();
    if actor.is_empty() {
        return Err(ApiError::Unauthorized(
            "the `X-Actor` header naming the acting user is required".into(),
        ));
    }
    if check_id("X-Actor", &actor).is_err() {
        return Err(unknown_actor(&actor));
    }
    Ok(actor)
}

fn unknown_actor(actor: &str) -> ApiError {
    ApiError::Forbidden {
        message: format!("unknown user `{actor}`"),
        reasons: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Shared plumbing

/// One call's view of the daemon: the policy snapshot it is decided
/// against, a read transaction, and the state.
struct Ctx<'a> {
    state: &'a AppState,
    snapshot: &'a PolicySnapshot,
    view: &'a ReadView,
}

impl Ctx<'_> {
    fn facts(&self) -> Facts<'_> {
        Facts::new(
            self.snapshot,
            &self.state.roles,
            &self.state.memo,
            &self.state.store,
        )
    }

    fn roles(&self) -> Result<Arc<Vec<String>>, ApiError> {
        Ok(self.state.roles.roles(self.snapshot)?)
    }

    /// The admin role, which must be one of the schema's roles.
    fn admin_role(&self) -> Result<&'static str, ApiError> {
        if self.roles()?.iter().any(|r| r == ADMIN_ROLE) {
            Ok(ADMIN_ROLE)
        } else {
            Err(ApiError::Unavailable(format!(
                "the loaded schema has no `{ADMIN_ROLE}` role in `Account.roles`; account owners and the last-admin rule need it"
            )))
        }
    }

    fn check_role(&self, role: &str) -> Result<(), ApiError> {
        let roles = self.roles()?;
        if roles.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(bad(
                "role",
                format!(
                    "unknown role `{role}`; the schema's roles are {}",
                    roles
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    /// Asks the loaded policies whether `actor` may do `action` on
    /// `account`. A denial is a 403 carrying the decision's reasons.
    fn authorize(&self, actor: &str, action: &str, account: &str) -> Result<(), ApiError> {
        if !self.view.has_user(actor)? {
            return Err(unknown_actor(actor));
        }
        let principal = entities::user_uid(actor);
        let resource = entities::account_uid(account);
        let action_uid = authz::parse_uid_in(
            self.snapshot,
            "action",
            &json!({"type": "Action", "id": action}),
        )?;
        let entities = self
            .facts()
            .entities(Inline::None, &[(&principal, &resource)])?;
        let request =
            authz::build_request(self.snapshot, principal, action_uid, resource, None, true)
                .map_err(|e| ApiError::Forbidden {
                    // The schema no longer declares the action this call checks:
                    // nobody may do it until it does (fail closed).
                    message: format!("`{action}` cannot be decided against the loaded schema: {e}"),
                    reasons: Vec::new(),
                })?;
        let decision = authz::decide(self.snapshot, &request, &entities);
        if decision.allow {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                message: format!(
                    "the policies do not allow `{actor}` to `{action}` on account `{account}`"
                ),
                reasons: decision.reasons,
            })
        }
    }
}

/// Runs `f` off the async threads with one policy snapshot and one read
/// transaction.
async fn with_ctx<T: Send + 'static>(
    state: AppState,
    f: impl FnOnce(&Ctx<'_>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let snapshot = state.live.snapshot();
        let view = state.store.read()?;
        let ctx = Ctx {
            state: &state,
            snapshot: &snapshot,
            view: &view,
        };
        f(&ctx)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
}

fn now_secs(state: &AppState) -> i64 {
    state.clock.now().unix_timestamp()
}

fn ts(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn user_json(u: &User) -> Value {
    let mut v = json!({"id": u.id, "email": u.email, "created_at": ts(u.created_at)});
    if let Some(name) = &u.name {
        v["name"] = json!(name);
    }
    v
}

fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "kind": a.kind.as_str(),
        "owner": a.owner,
        "created_at": ts(a.created_at),
    })
}

fn member_json(user: &str, m: &Membership) -> Value {
    json!({"user": user, "role": m.role, "since": ts(m.since)})
}

fn invite_json(i: &Invite) -> Value {
    json!({
        "id": i.id,
        "role": i.role,
        "email": i.email,
        "created_by": i.created_by,
        "created_at": ts(i.created_at),
        "expires_at": ts(i.expires_at),
    })
}

/// A fresh secret: 256 bits from the operating system's secure random
/// source, hex-encoded. Only its SHA-256 is stored.
fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("the OS random source failed: {e}")))?;
    Ok(hex::encode(bytes))
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_invite_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("the OS random source failed: {e}")))?;
    Ok(format!("inv_{}", hex::encode(bytes)))
}

fn link(state: &AppState, token: &str) -> String {
    format!("{}/invites/{token}", state.public_url.trim_end_matches('/'))
}

// ---------------------------------------------------------------------------
// Handlers

async fn sign_up(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = Body::parse(&body, &["id", "email", "name"])?;
    let (id, email, name) = (body.str("id")?, body.str("email")?, body.opt_str("name")?);
    check_id("id", &id)?;
    check_email("email", &email)?;
    if let Some(name) = &name {
        check_name("name", name)?;
    }
    let user = User {
        id,
        email,
        name,
        created_at: now_secs(&state),
    };
    let (user, account) = with_ctx(state.clone(), move |ctx| {
        let admin = ctx.admin_role()?;
        let account = ctx.state.store.write(|w| w.sign_up(&user, admin))?;
        Ok((user, account))
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": user_json(&user), "personal_account": account_json(&account)})),
    )
        .into_response())
}

async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    with_ctx(state, move |ctx| {
        let Some(user) = ctx.view.user(&actor)? else {
            return Err(unknown_actor(&actor));
        };
        if actor != id {
            return Err(ApiError::Forbidden {
                message: format!("only `{id}` may read user `{id}`"),
                reasons: Vec::new(),
            });
        }
        let memberships: Vec<Value> = ctx
            .view
            .roles_of(&id)?
            .into_iter()
            .map(|(account, role)| json!({"account": account, "role": role}))
            .collect();
        Ok(Json(
            json!({"user": user_json(&user), "memberships": memberships}),
        ))
    })
    .await
}

async fn get_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    with_ctx(state, move |ctx| {
        ctx.authorize(&actor, "useAccount", &id)?;
        let account = ctx
            .view
            .account(&id)?
            .ok_or_else(|| StoreError::NoAccount(id.clone()))?;
        Ok(Json(account_json(&account)))
    })
    .await
}

async fn convert(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    let name = Body::parse(&body, &["name"])?.str("name")?;
    check_name("name", &name)?;
    with_ctx(state, move |ctx| {
        ctx.authorize(&actor, "convertToTeam", &id)?;
        let account = ctx.state.store.write(|w| w.convert(&id, name.trim()))?;
        Ok(Json(account_json(&account)))
    })
    .await
}

async fn list_members(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    with_ctx(state, move |ctx| {
        ctx.authorize(&actor, "viewMembers", &id)?;
        let members: Vec<Value> = ctx
            .view
            .members(&id)?
            .iter()
            .map(|(u, m)| member_json(u, m))
            .collect();
        Ok(Json(Value::Array(members)))
    })
    .await
}

async fn set_role(
    State(state): State<AppState>,
    Path((id, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    check_id("user", &user)?;
    let role = Body::parse(&body, &["role"])?.str("role")?;
    with_ctx(state, move |ctx| {
        ctx.check_role(&role)?;
        let admin = ctx.admin_role()?;
        ctx.authorize(&actor, "changeMemberRole", &id)?;
        let m = ctx
            .state
            .store
            .write(|w| w.set_role(&id, &user, &role, admin))?;
        Ok(Json(member_json(&user, &m)))
    })
    .await
}

async fn remove_member(
    State(state): State<AppState>,
    Path((id, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    check_id("user", &user)?;
    with_ctx(state, move |ctx| {
        let admin = ctx.admin_role()?;
        ctx.authorize(&actor, "removeMember", &id)?;
        ctx.state
            .store
            .write(|w| w.remove_member(&id, &user, admin))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn create_invite(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    let body = Body::parse(&body, &["role", "email", "expires_in_hours"])?;
    let role = body.str("role")?;
    let email = body.opt_str("email")?;
    if let Some(email) = &email {
        check_email("email", email)?;
    }
    let hours = body
        .opt_int("expires_in_hours")?
        .unwrap_or(DEFAULT_INVITE_HOURS);
    if !(1..=MAX_INVITE_HOURS).contains(&hours) {
        return Err(bad(
            "expires_in_hours",
            format!("must be between 1 and {MAX_INVITE_HOURS}, found {hours}"),
        ));
    }
    let token = new_token()?;
    let now = now_secs(&state);
    let invite = Invite {
        id: new_invite_id()?,
        account: id.clone(),
        role,
        email,
        token_sha256: sha256_hex(&token),
        created_by: actor.clone(),
        created_at: now,
        expires_at: now + hours * 3600,
        state: InviteState::Pending,
    };
    let link = link(&state, &token);
    let invite = with_ctx(state, move |ctx| {
        ctx.check_role(&invite.role)?;
        ctx.authorize(&actor, "inviteMember", &id)?;
        ctx.state.store.write(|w| w.create_invite(&invite))?;
        Ok(invite)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(secret_json(&invite, &token, &link)),
    )
        .into_response())
}

/// An invite with its token and link: only create and re-link show these.
fn secret_json(i: &Invite, token: &str, link: &str) -> Value {
    json!({
        "id": i.id,
        "token": token,
        "link": link,
        "role": i.role,
        "email": i.email,
        "expires_at": ts(i.expires_at),
    })
}

async fn list_invites(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    let now = now_secs(&state);
    with_ctx(state, move |ctx| {
        ctx.authorize(&actor, "inviteMember", &id)?;
        let pending: Vec<Value> = ctx
            .view
            .invites(&id)?
            .iter()
            .filter(|i| i.is_pending(now))
            .map(invite_json)
            .collect();
        Ok(Json(Value::Array(pending)))
    })
    .await
}

async fn relink(
    State(state): State<AppState>,
    Path((id, invite)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    let token = new_token()?;
    let sha = sha256_hex(&token);
    let link = link(&state, &token);
    let now = now_secs(&state);
    with_ctx(state, move |ctx| {
        ctx.authorize(&actor, "inviteMember", &id)?;
        let invite = ctx
            .state
            .store
            .write(|w| w.relink(&id, &invite, &sha, now))?;
        Ok(Json(secret_json(&invite, &token, &link)))
    })
    .await
}

async fn revoke(
    State(state): State<AppState>,
    Path((id, invite)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let actor = actor(&headers)?;
    check_id("account", &id)?;
    let now = now_secs(&state);
    with_ctx(state, move |ctx| {
        ctx.authorize(&actor, "revokeInvite", &id)?;
        ctx.state.store.write(|w| w.revoke(&id, &invite, now))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn accept(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let actor = actor(&headers)?;
    let token = Body::parse(&body, &["token"])?.str("token")?;
    let sha = sha256_hex(&token);
    let now = now_secs(&state);
    with_ctx(state, move |ctx| {
        if !ctx.view.has_user(&actor)? {
            return Err(unknown_actor(&actor));
        }
        // The token is the authority: no policy is asked. Whether it is
        // pending, and whether the actor is already a member, is decided
        // inside the write transaction, so concurrent accepts of one invite
        // cannot both succeed.
        let invite = ctx.state.store.write(|w| w.accept(&sha, &actor, now))?;
        Ok(Json(
            json!({"account": invite.account, "role": invite.role}),
        ))
    })
    .await
}
