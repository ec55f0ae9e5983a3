//! The management operations: sign-up, accounts, members, invites and caller
//! keys, independent of any transport.
//!
//! Every operation but sign-up and accept names its acting user and is itself
//! a Cedar decision through [`Pdp::authorize`]: may the actor do the
//! operation's action (`inviteMember`, `removeMember`, …) on the account,
//! against the live policies and the stored entities? Editing
//! `policies/admin.cedar` therefore changes who may invite, with no code
//! change. The rules that are not policy (a taken id, the last admin, an
//! invite used once) are checked by `store` inside the operation's one write
//! transaction. Every write is recorded (metrics, and the audit log with its
//! actor and outcome), refused or not. Checks run in this order: the input,
//! then the policy, then the stored state.
//!
//! Operations are synchronous: a write waits for the store's durable commit,
//! so callers on an async runtime run them in `spawn_blocking`. This module
//! knows nothing about HTTP: it returns store records and [`AccountsError`].

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::audit::WriteEvent;
use crate::authz::{InputError, Reason};
use crate::clock::Clock;
use crate::code::Code;
use crate::keys::{self, KeyRing, NewKey, Scope};
use crate::model::ADMIN_ROLE;
use crate::pdp::{Caller, Pdp, PdpError};
use crate::policy::PolicySnapshot;
use crate::store::{
    normalize_email, Account, ApiKey, Failure, Fault, GoneReason, Invite, InviteState, Membership,
    ReadView, Refusal, User, WriteError, Writer,
};

/// How long an invite stays valid when the request does not say.
pub const DEFAULT_INVITE_HOURS: i64 = 7 * 24;

/// The longest expiry an invite may ask for: one year.
pub const MAX_INVITE_HOURS: i64 = 365 * 24;

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The input is malformed (a 400).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The actor may not do this (a 403), with the deciding policies when a
    /// policy decided.
    #[error("{message}")]
    Denied {
        /// What was denied.
        message: String,
        /// The deciding policies.
        reasons: Vec<Reason>,
    },
    /// The store refused the operation under one of its rules (taken id,
    /// last admin, a dead invite link, …).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed (a 503; see [`Fault`]).
    #[error(transparent)]
    Fault(#[from] Fault),
    /// cedard cannot decide now: the schema does not describe the account
    /// model, or the store failed while deciding (a 503).
    #[error("{0}")]
    Unavailable(String),
}

impl From<PdpError> for AccountsError {
    fn from(e: PdpError) -> Self {
        match e {
            PdpError::Input(e) => AccountsError::Input(e),
            PdpError::Denied { message, reasons } => AccountsError::Denied { message, reasons },
            PdpError::Unavailable(m) => AccountsError::Unavailable(m),
            PdpError::Store(e) => AccountsError::Fault(e),
            // Management checks decide a few questions, never a search, and
            // give no deadline: still a 503, never an answer.
            e @ PdpError::OutOfTime => AccountsError::Unavailable(e.to_string()),
            // Management checks decide about the actor's stored facts, with
            // no token claims: not met, and never an answer if it were.
            PdpError::Claims(m) => AccountsError::Unavailable(m),
        }
    }
}

impl From<WriteError> for AccountsError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Fault(f) => AccountsError::Fault(f),
            WriteError::Refused(r) => AccountsError::Refused(r),
        }
    }
}

impl Failure for AccountsError {
    fn fault(&self) -> Option<&Fault> {
        match self {
            AccountsError::Fault(f) => Some(f),
            _ => None,
        }
    }
}

impl AccountsError {
    /// What went wrong, as the caller, the audit log and the metrics say it.
    pub fn code(&self) -> Code {
        match self {
            AccountsError::Input(e) => e.code(),
            AccountsError::Denied { .. } => Code::Forbidden,
            AccountsError::Refused(r) => r.code(),
            AccountsError::Fault(f) => f.code(),
            AccountsError::Unavailable(_) => Code::Unavailable,
        }
    }
}

fn bad(field: &str, message: impl Into<String>) -> AccountsError {
    AccountsError::Input(InputError::new(field, message))
}

/// Ids of users and accounts: 1–128 letters, digits and `._@-`. No `/`, so
/// that a role id `<account>/<role>` is unambiguous.
pub fn check_id(field: &str, id: &str) -> Result<(), AccountsError> {
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
fn check_email(field: &str, email: &str) -> Result<(), AccountsError> {
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

/// Display names: 1–100 characters, none of them a control character or a
/// bidirectional override or isolate (which make a name display as another:
/// U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C).
fn check_name(field: &str, name: &str) -> Result<(), AccountsError> {
    let n = name.trim().chars().count();
    let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}');
    if (1..=100).contains(&n)
        && name.chars().count() <= 100
        && !name.chars().any(|c| c.is_control() || bidi(c))
    {
        Ok(())
    } else {
        Err(bad(
            field,
            "must be 1 to 100 characters, none of them control or bidirectional-override characters",
        ))
    }
}

fn unknown_actor(actor: &str) -> AccountsError {
    AccountsError::Denied {
        message: format!("unknown user `{actor}`"),
        reasons: Vec::new(),
    }
}

/// A fresh secret: 256 bits from the operating system's secure random
/// source, hex-encoded. Only its SHA-256 is stored.
fn new_token() -> Result<String, AccountsError> {
    let mut bytes = [0u8; 32];
    keys::os_random(&mut bytes).map_err(|e| AccountsError::Unavailable(e.to_string()))?;
    Ok(hex::encode(bytes))
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_invite_id() -> Result<String, AccountsError> {
    let mut bytes = [0u8; 8];
    keys::os_random(&mut bytes).map_err(|e| AccountsError::Unavailable(e.to_string()))?;
    Ok(format!("inv_{}", hex::encode(bytes)))
}

/// What a sign-up asks for.
#[derive(Debug, Clone)]
pub struct SignUp {
    /// The user id (also the personal account's id).
    pub id: String,
    /// The email address (stored trimmed and lowercase).
    pub email: String,
    /// Whether the product verified the address (a `manage` caller's word).
    pub email_verified: bool,
    /// A display name.
    pub name: Option<String>,
}

/// What an invite asks for.
#[derive(Debug, Clone)]
pub struct NewInvite {
    /// The role the invited user gets.
    pub role: String,
    /// Binds the invite to a user with this email.
    pub email: Option<String>,
    /// Hours until it expires (default [`DEFAULT_INVITE_HOURS`]).
    pub expires_in_hours: Option<i64>,
}

/// An invite with its secret: shown once, by create and re-link.
#[derive(Debug, Clone)]
pub struct IssuedInvite {
    /// The stored invite.
    pub invite: Invite,
    /// The token; never stored.
    pub token: String,
    /// The link carrying it.
    pub link: String,
}

/// The management operations over the decision pipeline and the store.
#[derive(Debug)]
pub struct Accounts {
    pdp: Arc<Pdp>,
    keys: Arc<KeyRing>,
    clock: Clock,
    public_url: String,
}

/// One operation's record: what it was, for the audit log.
struct Op<'a> {
    caller: &'a Caller,
    operation: &'static str,
    actor: Option<&'a str>,
    account: Option<&'a str>,
    target: Option<&'a str>,
    detail: Option<Value>,
}

impl Accounts {
    /// The operations over `pdp` (and its store); invite links start with
    /// `public_url`.
    pub fn new(pdp: Arc<Pdp>, keys: Arc<KeyRing>, clock: Clock, public_url: &str) -> Self {
        Self {
            pdp,
            keys,
            clock,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL of invite links (`--public-url`), without a trailing `/`.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The live caller keys.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The clock invites expire by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs `f` with one policy snapshot and one read transaction, and
    /// records the outcome of the operation.
    fn run<T>(
        &self,
        op: Op<'_>,
        f: impl FnOnce(&Ctx<'_>) -> Result<T, AccountsError>,
    ) -> Result<T, AccountsError> {
        let snapshot = self.pdp.live().snapshot();
        let out = self
            .pdp
            .store()
            .read()
            .map_err(AccountsError::from)
            .and_then(|view| {
                f(&Ctx {
                    accounts: self,
                    caller: op.caller,
                    snapshot: &snapshot,
                    view: &view,
                })
            });
        let outcome = match &out {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        if let Err(e) = &out {
            // A damaged file, or a write outage, was logged once, when it
            // was found; each refused operation is not logged again.
            let known = matches!(
                e,
                AccountsError::Fault(Fault::Damaged { .. } | Fault::WriteOutage { .. })
            );
            let fault = matches!(e, AccountsError::Fault(_) | AccountsError::Unavailable(_));
            if fault && !known {
                tracing::error!(operation = op.operation, "management operation failed: {e}");
            }
        }
        self.pdp.log().write(WriteEvent {
            id: crate::audit::new_event_id(),
            time: self.clock.now(),
            key: op.caller.key.clone(),
            request_id: op.caller.request_id.clone(),
            actor: op.actor.map(str::to_owned),
            operation: op.operation.to_owned(),
            account: op.account.map(str::to_owned),
            target: op.target.map(str::to_owned),
            detail: op.detail,
            outcome: outcome.to_owned(),
            actor_token: op.caller.actor_token.clone(),
        });
        out
    }

    /// Signs a user up with their personal account, whose admin they are.
    pub fn sign_up(
        &self,
        caller: &Caller,
        input: SignUp,
    ) -> Result<(User, Account), AccountsError> {
        let op = Op {
            caller,
            operation: "signUp",
            actor: None,
            account: Some(&input.id),
            target: Some(&input.id),
            detail: None,
        };
        self.run(op, |ctx| {
            check_id("id", &input.id)?;
            let email = normalize_email(&input.email);
            check_email("email", &email)?;
            if let Some(name) = &input.name {
                check_name("name", name)?;
            }
            let admin = ctx.admin_role()?;
            let user = User {
                id: input.id.clone(),
                email,
                email_verified: input.email_verified,
                name: input.name.clone(),
                created_at: self.clock.now_secs(),
            };
            let account = ctx.write("signUp", |w| w.sign_up(&user, admin))?;
            Ok((user, account))
        })
    }

    /// Records whether a user's email is verified: the word of a `manage`
    /// caller (the product, after it verified the address). An invite bound
    /// to an email is accepted only by a user whose address is verified.
    pub fn set_email_verified(
        &self,
        caller: &Caller,
        id: &str,
        verified: bool,
    ) -> Result<User, AccountsError> {
        let op = Op {
            caller,
            operation: "setEmailVerified",
            actor: None,
            account: None,
            target: Some(id),
            detail: Some(json!({"email_verified": verified})),
        };
        self.run(op, |ctx| {
            check_id("id", id)?;
            ctx.write("setEmailVerified", |w| w.set_email_verified(id, verified))
        })
    }

    /// A user and their memberships; only that user may read them.
    pub fn user(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
    ) -> Result<(User, Vec<(String, String)>), AccountsError> {
        self.read(caller, |ctx| {
            let Some(user) = ctx.view.user(actor)? else {
                return Err(unknown_actor(actor));
            };
            if actor != id {
                return Err(AccountsError::Denied {
                    message: format!("only `{id}` may read user `{id}`"),
                    reasons: Vec::new(),
                });
            }
            Ok((user, ctx.view.roles_of(id)?))
        })
    }

    /// An account (`useAccount`).
    pub fn account(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
    ) -> Result<Account, AccountsError> {
        check_id("account", id)?;
        self.read(caller, |ctx| {
            ctx.authorize(actor, "useAccount", id, None)?;
            ctx.view
                .account(id)?
                .ok_or_else(|| Refusal::NoAccount(id.to_owned()).into())
        })
    }

    /// Runs a read-only operation (not recorded in the audit log).
    fn read<T>(
        &self,
        caller: &Caller,
        f: impl FnOnce(&Ctx<'_>) -> Result<T, AccountsError>,
    ) -> Result<T, AccountsError> {
        let snapshot = self.pdp.live().snapshot();
        let view = self.pdp.store().read()?;
        f(&Ctx {
            accounts: self,
            caller,
            snapshot: &snapshot,
            view: &view,
        })
    }

    /// Converts a personal account to a team (`convertToTeam`).
    pub fn convert(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
        name: &str,
    ) -> Result<Account, AccountsError> {
        let op = Op {
            caller,
            operation: "convertToTeam",
            actor: Some(actor),
            account: Some(id),
            target: None,
            detail: Some(json!({"name": name})),
        };
        self.run(op, |ctx| {
            check_id("account", id)?;
            check_name("name", name)?;
            ctx.authorize(actor, "convertToTeam", id, None)?;
            ctx.write("convertToTeam", |w| w.convert(id, name.trim()))
        })
    }

    /// The members of an account (`viewMembers`).
    pub fn members(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
    ) -> Result<Vec<(String, Membership)>, AccountsError> {
        check_id("account", id)?;
        self.read(caller, |ctx| {
            ctx.authorize(actor, "viewMembers", id, None)?;
            Ok(ctx.view.members(id)?)
        })
    }

    /// Gives a member another role (`changeMemberRole`).
    pub fn set_role(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
        user: &str,
        role: &str,
    ) -> Result<Membership, AccountsError> {
        let op = Op {
            caller,
            operation: "changeMemberRole",
            actor: Some(actor),
            account: Some(id),
            target: Some(user),
            detail: Some(json!({"role": role})),
        };
        self.run(op, |ctx| {
            check_id("account", id)?;
            check_id("user", user)?;
            ctx.check_role(role)?;
            let admin = ctx.admin_role()?;
            ctx.known_actor(actor)?;
            // The policies see the new role and the role held now, read in
            // the write transaction, so a concurrent change cannot slip a
            // higher current role past the ceiling.
            ctx.write_with("changeMemberRole", |w| {
                let context = match w.role_in(id, user)? {
                    Some(current) => json!({"role": role, "current_role": current}),
                    None => json!({"role": role}),
                };
                ctx.authorize_in_write(w, actor, "changeMemberRole", id, &context)?;
                Ok(w.set_role(id, user, role, admin)?)
            })
        })
    }

    /// Removes a member (`removeMember`).
    pub fn remove_member(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
        user: &str,
    ) -> Result<(), AccountsError> {
        let op = Op {
            caller,
            operation: "removeMember",
            actor: Some(actor),
            account: Some(id),
            target: Some(user),
            detail: None,
        };
        self.run(op, |ctx| {
            check_id("account", id)?;
            check_id("user", user)?;
            let admin = ctx.admin_role()?;
            ctx.authorize(actor, "removeMember", id, None)?;
            ctx.write("removeMember", |w| w.remove_member(id, user, admin))
        })
    }

    /// Invites someone to a team account (`inviteMember`).
    pub fn invite(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
        input: NewInvite,
    ) -> Result<IssuedInvite, AccountsError> {
        let op = Op {
            caller,
            operation: "inviteMember",
            actor: Some(actor),
            account: Some(id),
            target: None,
            detail: Some(json!({"role": input.role, "email": input.email})),
        };
        let issued = self.run(op, |ctx| {
            check_id("account", id)?;
            let email = input.email.as_deref().map(normalize_email);
            if let Some(email) = &email {
                check_email("email", email)?;
            }
            let hours = input.expires_in_hours.unwrap_or(DEFAULT_INVITE_HOURS);
            if !(1..=MAX_INVITE_HOURS).contains(&hours) {
                return Err(bad(
                    "expires_in_hours",
                    format!("must be between 1 and {MAX_INVITE_HOURS}, found {hours}"),
                ));
            }
            ctx.check_role(&input.role)?;
            ctx.authorize(
                actor,
                "inviteMember",
                id,
                Some(&json!({"role": input.role})),
            )?;
            let token = new_token()?;
            let now = self.clock.now_secs();
            let invite = Invite {
                id: new_invite_id()?,
                account: id.to_owned(),
                role: input.role.clone(),
                email,
                token_sha256: sha256_hex(&token),
                created_by: actor.to_owned(),
                created_at: now,
                expires_at: now + hours * 3600,
                state: InviteState::Pending,
            };
            ctx.write("inviteMember", |w| w.create_invite(&invite))?;
            Ok(IssuedInvite {
                link: self.link(&token),
                invite,
                token,
            })
        })?;
        metrics::counter!("cedard_invites_total", "event" => "created").increment(1);
        Ok(issued)
    }

    fn link(&self, token: &str) -> String {
        format!("{}/invites/{token}", self.public_url)
    }

    /// The pending invites of an account, without secrets (`inviteMember`),
    /// each with the reason it can no longer be accepted, if any: an invite
    /// is honoured only while its creator may grant its role.
    pub fn invites(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
    ) -> Result<Vec<(Invite, Option<GoneReason>)>, AccountsError> {
        check_id("account", id)?;
        let now = self.clock.now_secs();
        self.read(caller, |ctx| {
            ctx.authorize(actor, "inviteMember", id, None)?;
            let mut out = Vec::new();
            for invite in ctx.view.invites(id)? {
                if !invite.is_pending(now) {
                    continue;
                }
                let dead = ctx.dead_reason(&invite)?;
                out.push((invite, dead));
            }
            Ok(out)
        })
    }

    /// A fresh link for a pending invite; the old one stops working
    /// (`inviteMember`).
    pub fn relink(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
        invite: &str,
    ) -> Result<IssuedInvite, AccountsError> {
        let op = Op {
            caller,
            operation: "relinkInvite",
            actor: Some(actor),
            account: Some(id),
            target: Some(invite),
            detail: None,
        };
        self.run(op, |ctx| {
            check_id("account", id)?;
            // The policies see the role the invite grants, when it exists;
            // an unknown invite is the store's 404.
            let role = ctx
                .view
                .invites(id)?
                .into_iter()
                .find(|i| i.id == invite)
                .map(|i| json!({"role": i.role}));
            ctx.authorize(actor, "inviteMember", id, role.as_ref())?;
            let token = new_token()?;
            let sha = sha256_hex(&token);
            let now = self.clock.now_secs();
            let invite = ctx.write("relinkInvite", |w| w.relink(id, invite, &sha, now))?;
            Ok(IssuedInvite {
                link: self.link(&token),
                invite,
                token,
            })
        })
    }

    /// Revokes a pending invite (`revokeInvite`).
    pub fn revoke(
        &self,
        caller: &Caller,
        actor: &str,
        id: &str,
        invite: &str,
    ) -> Result<(), AccountsError> {
        let op = Op {
            caller,
            operation: "revokeInvite",
            actor: Some(actor),
            account: Some(id),
            target: Some(invite),
            detail: None,
        };
        self.run(op, |ctx| {
            check_id("account", id)?;
            ctx.authorize(actor, "revokeInvite", id, None)?;
            let now = self.clock.now_secs();
            ctx.write("revokeInvite", |w| w.revoke(id, invite, now))?;
            metrics::counter!("cedard_invites_total", "event" => "revoked").increment(1);
            Ok(())
        })
    }

    /// Accepts an invite: the token is the authority, and the accepting user
    /// is not asked about. The invite is honoured only if its creator may
    /// still grant its role (`inviteMember` with the role in the context),
    /// asked inside the write transaction, so a creator removed or demoted a
    /// moment before cannot have their invite accepted after; otherwise it
    /// is dead (the same 410 as any dead link). Whether it is pending, and
    /// whether the actor is already a member, is decided in that transaction
    /// too, so concurrent accepts of one invite cannot both succeed.
    pub fn accept(
        &self,
        caller: &Caller,
        actor: &str,
        token: &str,
    ) -> Result<Invite, AccountsError> {
        let op = Op {
            caller,
            operation: "acceptInvite",
            actor: Some(actor),
            account: None,
            target: None,
            detail: None,
        };
        let out = self.run(op, |ctx| {
            if !ctx.view.has_user(actor)? {
                return Err(unknown_actor(actor));
            }
            let sha = sha256_hex(token);
            let now = self.clock.now_secs();
            ctx.write_with("acceptInvite", |w| {
                let invite = w.live_invite(&sha, now)?;
                if !ctx.roles()?.contains(&invite.role) {
                    return Err(Refusal::InviteGone(GoneReason::RoleNotInSchema).into());
                }
                let context = json!({"role": invite.role});
                match ctx.authorize_in_write(
                    w,
                    &invite.created_by,
                    "inviteMember",
                    &invite.account,
                    &context,
                ) {
                    Ok(()) => {}
                    Err(AccountsError::Denied { .. }) => {
                        return Err(Refusal::InviteGone(GoneReason::CreatorCannotGrant).into())
                    }
                    Err(e) => return Err(e),
                }
                Ok(w.accept(&sha, actor, now)?)
            })
        });
        let event = match &out {
            Ok(_) => "accepted",
            Err(AccountsError::Refused(Refusal::InviteGone(GoneReason::Expired))) => "expired",
            Err(_) => "refused",
        };
        metrics::counter!("cedard_invites_total", "event" => event).increment(1);
        out
    }

    /// What the invite behind `token` is for, without accepting it: the
    /// invite and its account. The token is the authority, as for accept;
    /// an unknown, expired, revoked or used token is the same
    /// [`Refusal::InviteGone`] accept answers.
    pub fn invite_for_token(&self, token: &str) -> Result<(Invite, Account), AccountsError> {
        let sha = sha256_hex(token);
        let now = self.clock.now_secs();
        let view = self.pdp.store().read()?;
        let invite = match view.invite_by_token(&sha)? {
            Some(i) if i.is_pending(now) && i.token_sha256 == sha => i,
            Some(i) if matches!(i.state, InviteState::Pending) && now >= i.expires_at => {
                return Err(Refusal::InviteGone(GoneReason::Expired).into())
            }
            _ => return Err(Refusal::InviteGone(GoneReason::Unknown).into()),
        };
        let account = view
            .account(&invite.account)?
            .ok_or(Refusal::InviteGone(GoneReason::Unknown))?;
        Ok((invite, account))
    }

    /// Creates a caller key; the returned key is shown once. The new key is
    /// live before this returns.
    pub fn create_key(
        &self,
        caller: &Caller,
        name: &str,
        scopes: &[Scope],
    ) -> Result<NewKey, AccountsError> {
        let op = Op {
            caller,
            operation: "createKey",
            actor: None,
            account: None,
            target: Some(name),
            detail: Some(json!({"scopes": scopes})),
        };
        let key = self.run(op, |ctx| {
            check_name("name", name)?;
            let key = keys::generate(name, scopes, self.clock.now_secs())
                .map_err(|e| AccountsError::Unavailable(e.to_string()))?;
            ctx.write("createKey", |w| w.create_key(&key.record))?;
            Ok(key)
        })?;
        self.refresh_keys()?;
        Ok(key)
    }

    /// Revokes the key `id`; it stops authenticating before this returns.
    pub fn revoke_key(&self, caller: &Caller, id: &str) -> Result<ApiKey, AccountsError> {
        let op = Op {
            caller,
            operation: "revokeKey",
            actor: None,
            account: None,
            target: Some(id),
            detail: None,
        };
        let now = self.clock.now_secs();
        let key = self.run(op, |ctx| ctx.write("revokeKey", |w| w.revoke_key(id, now)))?;
        self.refresh_keys()?;
        Ok(key)
    }

    /// A read of the directory for an admin (the console's Directory page
    /// and its choices of ids): not a decision, so not asked of the
    /// policies; only an admin session reaches it.
    pub fn directory(&self) -> Result<ReadView, AccountsError> {
        Ok(self.pdp.store().read()?)
    }

    /// Every key, revoked ones included, without secrets.
    pub fn list_keys(&self) -> Result<Vec<ApiKey>, AccountsError> {
        Ok(self.pdp.store().read()?.keys()?)
    }

    /// Whether the live keys are known to be the store's within the
    /// staleness bound, confirming them first from the store's own last
    /// confirmation when the store revision has not moved since they were
    /// read (no read of the store: cheap enough for every request).
    pub fn keys_current(&self) -> bool {
        if self.keys.current() {
            return true;
        }
        let store = self.pdp.store();
        let confirmed = store.confirmed_at();
        if store.revision() == self.keys.revision() {
            if let Some(at) = confirmed {
                self.keys.confirm(at);
            }
        }
        self.keys.current()
    }

    /// Brings the live keys up to the store: read again when the store
    /// revision moved since they were read (any write, this replica's or
    /// another's), otherwise confirmed as of the store's last confirmation
    /// (unchanged revision, unchanged keys). Once the file is known damaged
    /// the keys are left as they are: those read before came from a sound
    /// file, and a damaged one is not read.
    pub fn refresh_keys(&self) -> Result<(), AccountsError> {
        let store = self.pdp.store();
        if store.damage().is_some() {
            return Ok(());
        }
        // Read before the revision: the revision confirmed then is at most
        // the one known now.
        let confirmed = store.confirmed_at();
        let known = store.revision();
        if known == self.keys.revision() {
            if let Some(at) = confirmed {
                self.keys.confirm(at);
            }
            return Ok(());
        }
        let asked = Instant::now();
        let keys = self.list_keys()?;
        self.keys.replace_at(&keys, known, asked);
        Ok(())
    }
}

/// One operation's view: the policy snapshot it is decided against and a
/// read transaction.
struct Ctx<'a> {
    accounts: &'a Accounts,
    caller: &'a Caller,
    snapshot: &'a PolicySnapshot,
    view: &'a ReadView,
}

impl Ctx<'_> {
    fn roles(&self) -> Result<Arc<Vec<String>>, AccountsError> {
        Ok(self.accounts.pdp.roles(self.snapshot)?)
    }

    /// The admin role, which must be one of the schema's roles.
    fn admin_role(&self) -> Result<&'static str, AccountsError> {
        if self.roles()?.iter().any(|r| r == ADMIN_ROLE) {
            Ok(ADMIN_ROLE)
        } else {
            Err(AccountsError::Unavailable(format!(
                "the loaded schema has no `{ADMIN_ROLE}` role in `Account.roles`; account owners and the last-admin rule need it"
            )))
        }
    }

    fn check_role(&self, role: &str) -> Result<(), AccountsError> {
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

    /// A denial unless `actor` is a stored user.
    fn known_actor(&self, actor: &str) -> Result<(), AccountsError> {
        if self.view.has_user(actor)? {
            Ok(())
        } else {
            Err(unknown_actor(actor))
        }
    }

    /// Why a pending invite can no longer be accepted, if it cannot: its
    /// role is not in the live schema, or its creator may no longer grant
    /// it.
    fn dead_reason(&self, invite: &Invite) -> Result<Option<GoneReason>, AccountsError> {
        if !self.roles()?.contains(&invite.role) {
            return Ok(Some(GoneReason::RoleNotInSchema));
        }
        let context = json!({"role": invite.role});
        let grants = self.accounts.pdp.would_allow(
            self.snapshot,
            &invite.created_by,
            "inviteMember",
            &invite.account,
            Some(&context),
        )?;
        Ok((!grants).then_some(GoneReason::CreatorCannotGrant))
    }

    /// [`Ctx::authorize`] inside a write transaction: the stored facts are
    /// read afresh, so the answer holds for the state the write commits over.
    fn authorize_in_write(
        &self,
        within: &Writer<'_>,
        actor: &str,
        action: &str,
        account: &str,
        context: &Value,
    ) -> Result<(), AccountsError> {
        let caller = Caller {
            endpoint: "management",
            ..self.caller.clone()
        };
        Ok(self.accounts.pdp.authorize_fresh(
            &caller,
            self.snapshot,
            within,
            actor,
            action,
            account,
            Some(context),
        )?)
    }

    /// Asks the policies whether `actor` may do `action` on `account`.
    fn authorize(
        &self,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
    ) -> Result<(), AccountsError> {
        if !self.view.has_user(actor)? {
            return Err(unknown_actor(actor));
        }
        let caller = Caller {
            endpoint: "management",
            ..self.caller.clone()
        };
        Ok(self
            .accounts
            .pdp
            .authorize(&caller, self.snapshot, actor, action, account, context)?)
    }

    /// One durable write transaction, timed and counted.
    fn write<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&mut Writer<'_>) -> Result<T, WriteError>,
    ) -> Result<T, AccountsError> {
        self.write_with(operation, |w| Ok(f(w)?))
    }

    /// [`Ctx::write`] whose body may also refuse with a policy decision made
    /// inside the transaction.
    fn write_with<T>(
        &self,
        operation: &'static str,
        f: impl FnMut(&mut Writer<'_>) -> Result<T, AccountsError>,
    ) -> Result<T, AccountsError> {
        let started = Instant::now();
        let out = self
            .accounts
            .pdp
            .store()
            .write_within(self.caller.deadline, f)
            .map(|(v, _)| v);
        let outcome = match &out {
            Ok(_) => "ok",
            Err(AccountsError::Fault(_) | AccountsError::Unavailable(_)) => "fault",
            Err(
                AccountsError::Input(_) | AccountsError::Denied { .. } | AccountsError::Refused(_),
            ) => "refused",
        };
        metrics::counter!("cedard_store_writes_total", "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("cedard_store_write_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        out
    }
}
