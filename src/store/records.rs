//! The records the store keeps, as stored (JSON values in redb tables).
//! Times are Unix seconds, so that the format does not depend on a text
//! date format.

use serde::{Deserialize, Serialize};

/// A person who signed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The id, unique among users and accounts.
    pub id: String,
    /// The email address, normalised (trimmed, lowercase) and unique among
    /// users; an invite bound to an email can only be accepted by a user
    /// with this address, verified.
    pub email: String,
    /// Whether the product verified that the user controls `email`, as a
    /// `manage` caller stated it. Files from before format 3 read `false`.
    #[serde(default)]
    pub email_verified: bool,
    /// An optional display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the user signed up.
    pub created_at: i64,
}

/// Personal or team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// Created at sign-up; only its owner is a member.
    Personal,
    /// Converted from a personal account; members join by invite.
    Team,
}

impl AccountKind {
    /// The name policies see in `resource.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Personal => "personal",
            AccountKind::Team => "team",
        }
    }
}

/// An account: the unit roles are held in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The id; a personal account has its owner's id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Personal or team.
    pub kind: AccountKind,
    /// The user who signed up for it.
    pub owner: String,
    /// When it was created.
    pub created_at: i64,
}

/// A user's place in an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The role held: one of the fields of `Account.roles` in the schema.
    pub role: String,
    /// When the user joined (or signed up, for the owner).
    pub since: i64,
}

/// Where an invite stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum InviteState {
    /// Waiting to be accepted (until it expires).
    Pending,
    /// Accepted.
    Used {
        /// Who accepted it.
        by: String,
        /// When.
        at: i64,
    },
    /// Revoked by an admin.
    Revoked {
        /// When.
        at: i64,
    },
}

/// An invitation to join an account with a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The invite's id (not secret: it names the invite in the API).
    pub id: String,
    /// The account to join.
    pub account: String,
    /// The role the invited user gets.
    pub role: String,
    /// When set, only a user with this email may accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Hex SHA-256 of the current token; the token itself is never stored.
    pub token_sha256: String,
    /// The admin who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: i64,
    /// When it stops being valid.
    pub expires_at: i64,
    /// Pending, used or revoked.
    #[serde(flatten)]
    pub state: InviteState,
}

impl Invite {
    /// Whether the invite can still be accepted at `now`.
    pub fn is_pending(&self, now: i64) -> bool {
        matches!(self.state, InviteState::Pending) && now < self.expires_at
    }
}

/// The scope that manages caller keys: the store keeps the last live key
/// holding it (see [`super::Writer::revoke_key`]).
pub const ADMIN_SCOPE: &str = "admin";

/// A caller key: how a service proves who it is to cedard. Only the SHA-256
/// of its secret is stored; the key itself is shown once, at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The key's public id, part of the key and shown in logs.
    pub id: String,
    /// A name for people: which service holds it.
    pub name: String,
    /// What the key may do: `decide`, `manage`, `admin` (opaque to the store).
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the key's secret part.
    pub secret_sha256: String,
    /// When it was created.
    pub created_at: i64,
    /// When it was revoked; a revoked key never authenticates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}
