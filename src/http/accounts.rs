//! The management API over HTTP: sign-up, accounts, members, invites. Each
//! handler reads its input, runs one operation of [`crate::accounts`] off
//! the async threads (a write waits for a durable commit), and shapes the
//! answer. The acting user is `X-Actor`, believed only from a `manage` key.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{Actor, Body, CallerInfo};
use super::state::AppState;
use crate::accounts::{Accounts, IssuedInvite, NewInvite, SignUp};
use crate::clock::rfc3339 as ts;
use crate::pdp::Caller;
use crate::store::{Account, GoneReason, Invite, Membership, User};

/// The management routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_email_verified))
        .routes(routes!(get_account))
        .routes(routes!(convert))
        .routes(routes!(list_members))
        .routes(routes!(set_role, remove_member))
        .routes(routes!(create_invite, list_invites))
        .routes(routes!(relink))
        .routes(routes!(revoke))
        .routes(routes!(show_invite))
}

/// The management routes an end user may call with their own token alone
/// (`Authorization: Bearer <token>`), as well as a `manage` key may:
/// sign-up from the token, their own user and memberships, accepting an
/// invite.
pub fn user_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_up))
        .routes(routes!(get_user))
        .routes(routes!(accept))
}

/// A user.
#[derive(Serialize, ToSchema)]
pub struct UserView {
    /// The id.
    id: String,
    /// The email address, trimmed and lowercase.
    email: String,
    /// Whether the product verified the address (set by a `manage` caller).
    email_verified: bool,
    /// The display name, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// When they signed up (RFC 3339).
    created_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified,
            name: u.name.clone(),
            created_at: ts(u.created_at),
        }
    }
}

/// The kinds of account.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum AccountKind {
    /// One user's own account, made at sign-up.
    Personal,
    /// A team account, converted from a personal one.
    Team,
}

/// Whether an invite can still be accepted.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum InviteStatus {
    /// It can be accepted.
    Pending,
    /// It cannot (see `dead_reason`).
    Dead,
}

/// Why an invite can no longer be accepted.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum DeadReason {
    /// Its creator was removed or demoted, or the policies no longer let
    /// them grant its role.
    CreatorCannotGrant,
    /// The schema no longer declares its role.
    RoleNotInSchema,
    /// It is gone otherwise.
    Gone,
}

/// An account.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    /// The id (a personal account's is its owner's).
    id: String,
    /// The display name.
    name: String,
    /// `personal` or `team`.
    #[schema(value_type = AccountKind)]
    kind: String,
    /// The owner's user id.
    owner: String,
    /// When it was created (RFC 3339).
    created_at: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            kind: a.kind.as_str().to_owned(),
            owner: a.owner.clone(),
            created_at: ts(a.created_at),
        }
    }
}

/// A sign-up's result.
#[derive(Serialize, ToSchema)]
pub struct SignedUp {
    /// The new user.
    user: UserView,
    /// Their personal account.
    personal_account: AccountView,
}

/// A membership, seen from the user.
#[derive(Serialize, ToSchema)]
pub struct MembershipView {
    /// The account.
    account: String,
    /// The role held there.
    role: String,
}

/// A user with their memberships.
#[derive(Serialize, ToSchema)]
pub struct UserDetail {
    /// The user.
    user: UserView,
    /// Where they belong.
    memberships: Vec<MembershipView>,
}

/// A member of an account.
#[derive(Serialize, ToSchema)]
pub struct MemberView {
    /// The user id.
    user: String,
    /// The role held.
    role: String,
    /// When they joined (RFC 3339).
    since: String,
}

impl MemberView {
    fn new(user: &str, m: &Membership) -> Self {
        Self {
            user: user.to_owned(),
            role: m.role.clone(),
            since: ts(m.since),
        }
    }
}

/// An invite not yet accepted, without its secret: pending, or dead.
#[derive(Serialize, ToSchema)]
pub struct InviteView {
    /// `pending` (it can be accepted) or `dead` (it cannot: see
    /// `dead_reason`).
    #[schema(value_type = InviteStatus)]
    status: &'static str,
    /// Why a `dead` invite can no longer be accepted:
    /// `creator_cannot_grant` (its creator was removed or demoted, or the
    /// policies no longer let them grant its role), `role_not_in_schema`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DeadReason>)]
    dead_reason: Option<&'static str>,
    /// The invite's id.
    id: String,
    /// The role it grants.
    role: String,
    /// The email it is bound to, if any.
    email: Option<String>,
    /// Who created it.
    created_by: String,
    /// When (RFC 3339).
    created_at: String,
    /// When it stops working (RFC 3339).
    expires_at: String,
}

impl InviteView {
    fn new(i: &Invite, dead: Option<GoneReason>) -> Self {
        Self {
            status: if dead.is_some() { "dead" } else { "pending" },
            dead_reason: dead.map(|r| match r {
                GoneReason::CreatorCannotGrant => "creator_cannot_grant",
                GoneReason::RoleNotInSchema => "role_not_in_schema",
                GoneReason::Unknown | GoneReason::Expired => "gone",
            }),
            id: i.id.clone(),
            role: i.role.clone(),
            email: i.email.clone(),
            created_by: i.created_by.clone(),
            created_at: ts(i.created_at),
            expires_at: ts(i.expires_at),
        }
    }
}

/// An invite with its token and link: only create and re-link show these.
#[derive(Serialize, ToSchema)]
pub struct IssuedInviteView {
    /// The invite's id.
    id: String,
    /// The secret; shown once, stored only as a hash.
    token: String,
    /// `<public-url>/invites/<token>`.
    link: String,
    /// The role it grants.
    role: String,
    /// The email it is bound to, if any.
    email: Option<String>,
    /// When it stops working (RFC 3339).
    expires_at: String,
}

impl From<IssuedInvite> for IssuedInviteView {
    fn from(i: IssuedInvite) -> Self {
        Self {
            id: i.invite.id,
            role: i.invite.role,
            email: i.invite.email,
            expires_at: ts(i.invite.expires_at),
            token: i.token,
            link: i.link,
        }
    }
}

/// What an invite link is for, shown without accepting it.
#[derive(Serialize, ToSchema)]
pub struct InviteLinkView {
    /// The account it joins.
    account: String,
    /// The account's display name.
    account_name: String,
    /// The role it grants.
    role: String,
    /// When it stops working (RFC 3339).
    expires_at: String,
    /// Whether only a user with the email it is bound to may accept it (the
    /// email itself is not shown).
    email_bound: bool,
}

/// What accepting an invite did.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The account joined.
    account: String,
    /// The role now held.
    role: String,
}

/// The body of a sign-up.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SignUpBody {
    /// The new user's id: 1 to 128 letters, digits and `._@-`.
    id: String,
    /// The email address: stored trimmed and lowercase; no other user may
    /// hold it.
    email: String,
    /// The product's word that the user controls the address (default
    /// `false`).
    email_verified: Option<bool>,
    /// The display name.
    name: Option<String>,
}

/// The body that records whether a user's email is verified.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EmailVerifiedBody {
    /// Whether the product verified the address.
    email_verified: bool,
}

/// The body of a conversion to a team account.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ConvertBody {
    /// The team account's display name.
    name: String,
}

/// The body of a role change.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RoleBody {
    /// One of the schema's roles (the seed's: `basic`, `billing`, `dev`,
    /// `admin`).
    role: String,
}

/// The body of a new invite.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewInviteBody {
    /// The role the invite grants: one of the schema's roles that the
    /// acting user may grant.
    role: String,
    /// Binds the invite to this email: only a user holding it, verified,
    /// may accept.
    email: Option<String>,
    /// Hours until the invite stops working: default 168 (a week), at most
    /// 8760 (a year).
    #[schema(minimum = 1, maximum = 8760)]
    expires_in_hours: Option<i64>,
}

/// The body of an acceptance.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AcceptBody {
    /// The invite's token (from its link).
    token: String,
}

/// Runs a management operation off the async threads: it may wait for a
/// durable commit.
async fn blocking<T: Send + 'static>(
    state: AppState,
    caller: CallerInfo,
    f: impl FnOnce(&Accounts, &Caller) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&state.accounts, &caller.caller("management"))).await?
}

/// Signs a user up, with a personal account they administer. With a
/// verified user token (the bearer alone, or `X-Actor-Token` beside a
/// `manage` key) the user is the token's subject, signed up from its
/// claims (just-in-time provisioning: the id, the email, whether the
/// issuer verified it, the name) and the body is empty or `{}`.
#[utoipa::path(post, path = "/v1/users", tag = "management",
    request_body = SignUpBody,
    responses(
        (status = 201, body = SignedUp),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "The id or the email is taken", body = ErrorBody),
    ),
    security(("bearer" = ["manage"])))]
async fn sign_up(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = match &caller.user {
        Some(user) => from_token(user, &body)?,
        None => {
            let body = Body::parse_as::<SignUpBody>(&body)?;
            SignUp {
                id: body.str("id")?,
                email: body.str("email")?,
                email_verified: body.opt_bool("email_verified")?.unwrap_or(false),
                name: body.opt_str("name")?,
            }
        }
    };
    let (user, account) = blocking(state, caller, move |a, c| Ok(a.sign_up(c, input)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(SignedUp {
            user: (&user).into(),
            personal_account: (&account).into(),
        }),
    )
        .into_response())
}

/// A sign-up from a verified token's claims; the body adds nothing.
fn from_token(user: &crate::identity::Verified, body: &[u8]) -> Result<SignUp, ApiError> {
    let empty = body.trim_ascii().is_empty()
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .is_ok_and(|m| m.is_empty());
    if !empty {
        return Err(ApiError::from(crate::authz::InputError::new(
            "body",
            "with a user token the sign-up comes from its claims: send no body, or `{}`",
        )));
    }
    let id = super::extract::acting_user(user)?;
    let email = user.email.clone().ok_or_else(|| {
        ApiError::from(crate::authz::InputError::new(
            "email",
            "the token carries no email claim (the issuer file's `profile.email_claim`), which a sign-up needs",
        ))
    })?;
    Ok(SignUp {
        id: id.to_owned(),
        email,
        email_verified: user.email_verified,
        name: user.name.clone(),
    })
}

/// Records whether a user's email is verified (the product verified it).
#[utoipa::path(put, path = "/v1/users/{id}/email_verified", tag = "management",
    params(("id" = String, Path, description = "The user id")),
    request_body = EmailVerifiedBody,
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn set_email_verified(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<UserView>, ApiError> {
    let verified = Body::parse_as::<EmailVerifiedBody>(&body)?
        .opt_bool("email_verified")?
        .unwrap_or_default();
    let user = blocking(state, caller, move |a, c| {
        Ok(a.set_email_verified(c, &id, verified)?)
    })
    .await?;
    Ok(Json((&user).into()))
}

/// A user and their memberships; only that user may read them.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "management",
    params(("id" = String, Path, description = "The user id"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 200, body = UserDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn get_user(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    Actor(actor): Actor,
) -> Result<Json<UserDetail>, ApiError> {
    let (user, roles) = blocking(state, caller, move |a, c| Ok(a.user(c, &actor, &id)?)).await?;
    Ok(Json(UserDetail {
        user: (&user).into(),
        memberships: roles
            .into_iter()
            .map(|(account, role)| MembershipView { account, role })
            .collect(),
    }))
}

/// An account (`useAccount`).
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 200, body = AccountView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn get_account(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    Actor(actor): Actor,
) -> Result<Json<AccountView>, ApiError> {
    let account = blocking(state, caller, move |a, c| Ok(a.account(c, &actor, &id)?)).await?;
    Ok(Json((&account).into()))
}

/// Converts a personal account to a team account (`convertToTeam`).
#[utoipa::path(post, path = "/v1/accounts/{id}/convert", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("X-Actor" = String, Header, description = "The acting user")),
    request_body = ConvertBody,
    responses((status = 200, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn convert(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    Actor(actor): Actor,
    body: Bytes,
) -> Result<Json<AccountView>, ApiError> {
    let name = Body::parse_as::<ConvertBody>(&body)?.str("name")?;
    let account = blocking(state, caller, move |a, c| {
        Ok(a.convert(c, &actor, &id, &name)?)
    })
    .await?;
    Ok(Json((&account).into()))
}

/// The members of an account (`viewMembers`).
#[utoipa::path(get, path = "/v1/accounts/{id}/members", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 200, body = Vec<MemberView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn list_members(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    Actor(actor): Actor,
) -> Result<Json<Vec<MemberView>>, ApiError> {
    let members = blocking(state, caller, move |a, c| Ok(a.members(c, &actor, &id)?)).await?;
    Ok(Json(
        members.iter().map(|(u, m)| MemberView::new(u, m)).collect(),
    ))
}

/// Gives a member another role (`changeMemberRole`).
#[utoipa::path(put, path = "/v1/accounts/{id}/members/{user}", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("user" = String, Path, description = "The member"), ("X-Actor" = String, Header, description = "The acting user")),
    request_body = RoleBody,
    responses((status = 200, body = MemberView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "The last admin", body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn set_role(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path((id, user)): Path<(String, String)>,
    Actor(actor): Actor,
    body: Bytes,
) -> Result<Json<MemberView>, ApiError> {
    let role = Body::parse_as::<RoleBody>(&body)?.str("role")?;
    let target = user.clone();
    let m = blocking(state, caller, move |a, c| {
        Ok(a.set_role(c, &actor, &id, &user, &role)?)
    })
    .await?;
    Ok(Json(MemberView::new(&target, &m)))
}

/// Removes a member (`removeMember`).
#[utoipa::path(delete, path = "/v1/accounts/{id}/members/{user}", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("user" = String, Path, description = "The member"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "The last admin", body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn remove_member(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path((id, user)): Path<(String, String)>,
    Actor(actor): Actor,
) -> Result<StatusCode, ApiError> {
    blocking(state, caller, move |a, c| {
        Ok(a.remove_member(c, &actor, &id, &user)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invites someone to a team account (`inviteMember`).
#[utoipa::path(post, path = "/v1/accounts/{id}/invites", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("X-Actor" = String, Header, description = "The acting user")),
    request_body = NewInviteBody,
    responses((status = 201, body = IssuedInviteView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn create_invite(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    Actor(actor): Actor,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = Body::parse_as::<NewInviteBody>(&body)?;
    let input = NewInvite {
        role: body.str("role")?,
        email: body.opt_str("email")?,
        expires_in_hours: body.opt_int("expires_in_hours")?,
    };
    let issued = blocking(state, caller, move |a, c| {
        Ok(a.invite(c, &actor, &id, input)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(IssuedInviteView::from(issued))).into_response())
}

/// The pending invites of an account, without secrets (`inviteMember`).
#[utoipa::path(get, path = "/v1/accounts/{id}/invites", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 200, body = Vec<InviteView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn list_invites(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(id): Path<String>,
    Actor(actor): Actor,
) -> Result<Json<Vec<InviteView>>, ApiError> {
    let invites = blocking(state, caller, move |a, c| Ok(a.invites(c, &actor, &id)?)).await?;
    Ok(Json(
        invites
            .iter()
            .map(|(i, dead)| InviteView::new(i, *dead))
            .collect(),
    ))
}

/// A fresh link for a pending invite; the old one stops working.
#[utoipa::path(post, path = "/v1/accounts/{id}/invites/{invite}/link", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("invite" = String, Path, description = "The invite id"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 200, body = IssuedInviteView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn relink(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path((id, invite)): Path<(String, String)>,
    Actor(actor): Actor,
) -> Result<Json<IssuedInviteView>, ApiError> {
    let issued = blocking(state, caller, move |a, c| {
        Ok(a.relink(c, &actor, &id, &invite)?)
    })
    .await?;
    Ok(Json(issued.into()))
}

/// Revokes a pending invite (`revokeInvite`).
#[utoipa::path(delete, path = "/v1/accounts/{id}/invites/{invite}", tag = "management",
    params(("id" = String, Path, description = "The account id"), ("invite" = String, Path, description = "The invite id"), ("X-Actor" = String, Header, description = "The acting user")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn revoke(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path((id, invite)): Path<(String, String)>,
    Actor(actor): Actor,
) -> Result<StatusCode, ApiError> {
    blocking(state, caller, move |a, c| {
        Ok(a.revoke(c, &actor, &id, &invite)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accepts an invite: the token is the authority.
#[utoipa::path(post, path = "/v1/invites/accept", tag = "management",
    params(("X-Actor" = String, Header, description = "The accepting user")),
    request_body = AcceptBody,
    responses((status = 200, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, description = "Unknown, expired, revoked or used", body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn accept(
    State(state): State<AppState>,
    caller: CallerInfo,
    Actor(actor): Actor,
    body: Bytes,
) -> Result<Json<Accepted>, ApiError> {
    let token = Body::parse_as::<AcceptBody>(&body)?.str("token")?;
    let invite = blocking(state, caller, move |a, c| Ok(a.accept(c, &actor, &token)?)).await?;
    Ok(Json(Accepted {
        account: invite.account,
        role: invite.role,
    }))
}

/// What the invite behind a link is for (account, role, expiry, whether it
/// is bound to an email), without accepting it: the path of the link
/// `<public-url>/invites/<token>`, for the product page that then calls
/// accept. The token is the authority, as for accept, but the route needs a
/// `manage` key like every management route: the product resolves links,
/// not the invitee's browser. A dead link is the same 410 as accept.
#[utoipa::path(get, path = "/invites/{token}", tag = "management",
    params(("token" = String, Path, description = "The invite token of the link")),
    responses((status = 200, body = InviteLinkView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 410, description = "Unknown, expired, revoked or used", body = ErrorBody)),
    security(("bearer" = ["manage"])))]
async fn show_invite(
    State(state): State<AppState>,
    caller: CallerInfo,
    Path(token): Path<String>,
) -> Result<Json<InviteLinkView>, ApiError> {
    let (invite, account) =
        blocking(state, caller, move |a, _| Ok(a.invite_for_token(&token)?)).await?;
    Ok(Json(InviteLinkView {
        account: invite.account,
        account_name: account.name,
        role: invite.role,
        expires_at: ts(invite.expires_at),
        email_bound: invite.email.is_some(),
    }))
}
