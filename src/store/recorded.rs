//! The one way a write reaches a backend's transaction: [`Recorded`] wraps
//! the backend's [`Tx`] and notes, from the keys each mutation writes, what
//! it changed ([`Changed`]). The rules (`writer.rs`) hold a `Recorded`, never
//! the `Tx` itself (its field is private to this module), so no write path,
//! present or future, can change a stored fact without the decision memo
//! learning of it.
//!
//! Which entity a key belongs to is decided here and nowhere else: a user's
//! entity is built from the user record and the user's memberships; an
//! account's from the account record. Keys and invites are no entity's, but
//! they are noted too, so that whoever follows the changes sees every
//! write.

use super::{Account, ApiKey, Invite, Membership, Reads, Result, Tx, User};

/// A stored record a write changed: what the decision memo must forget when
/// it moves to that write's revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Changed {
    /// `User::"id"`: the user record, or one of the user's memberships.
    User(String),
    /// `Account::"id"`: the account record.
    Account(String),
    /// The caller key `id`.
    Key(String),
    /// The invite `id`, or its live token.
    Invite(String),
}

/// A backend transaction whose every mutation is noted.
pub struct Recorded<'t> {
    tx: &'t mut dyn Tx,
    changed: Vec<Changed>,
}

impl<'t> Recorded<'t> {
    /// Wraps one attempt of a write transaction (a retried one starts over
    /// with a new `Recorded`).
    pub(super) fn new(tx: &'t mut dyn Tx) -> Self {
        Self {
            tx,
            changed: Vec::new(),
        }
    }

    /// What this transaction changed, in the order written.
    pub(super) fn into_changed(self) -> Vec<Changed> {
        self.changed
    }

    fn note(&mut self, c: Changed) {
        if !self.changed.contains(&c) {
            self.changed.push(c);
        }
    }

    // Reads, as the transaction sees them.

    /// `user`'s membership of `account`.
    pub fn membership(&self, account: &str, user: &str) -> Result<Option<Membership>> {
        self.tx.membership(account, user)
    }

    /// The members of `account`, ordered by user id.
    pub fn members(&self, account: &str) -> Result<Vec<(String, Membership)>> {
        self.tx.members(account)
    }

    /// The user holding a (normalised) email address.
    pub fn email_holder(&self, email: &str) -> Result<Option<String>> {
        self.tx.email_holder(email)
    }

    /// The caller key `id`.
    pub fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.tx.key(id)
    }

    /// Every caller key, revoked ones included.
    pub fn keys(&self) -> Result<Vec<ApiKey>> {
        self.tx.keys()
    }

    /// The invite `id`.
    pub fn invite(&self, id: &str) -> Result<Option<Invite>> {
        self.tx.invite(id)
    }

    /// The invite a live token (by its SHA-256) belongs to.
    pub fn token_invite(&self, sha256: &str) -> Result<Option<String>> {
        self.tx.token_invite(sha256)
    }

    // Writes: each notes what it changed.

    /// Stores a user, and indexes its email.
    pub fn put_user(&mut self, user: &User) -> Result<()> {
        self.note(Changed::User(user.id.clone()));
        self.tx.put_user(user)
    }

    /// Stores an account.
    pub fn put_account(&mut self, account: &Account) -> Result<()> {
        self.note(Changed::Account(account.id.clone()));
        self.tx.put_account(account)
    }

    /// Stores a membership: the member's entity changes (its parents).
    pub fn put_membership(&mut self, account: &str, user: &str, m: &Membership) -> Result<()> {
        self.note(Changed::User(user.to_owned()));
        self.tx.put_membership(account, user, m)
    }

    /// Removes a membership: the member's entity changes (its parents).
    pub fn delete_membership(&mut self, account: &str, user: &str) -> Result<()> {
        self.note(Changed::User(user.to_owned()));
        self.tx.delete_membership(account, user)
    }

    /// Stores a caller key.
    pub fn put_key(&mut self, key: &ApiKey) -> Result<()> {
        self.note(Changed::Key(key.id.clone()));
        self.tx.put_key(key)
    }

    /// Stores an invite.
    pub fn put_invite(&mut self, invite: &Invite) -> Result<()> {
        self.note(Changed::Invite(invite.id.clone()));
        self.tx.put_invite(invite)
    }

    /// Makes a token live for an invite.
    pub fn set_token(&mut self, sha256: &str, invite: &str) -> Result<()> {
        self.note(Changed::Invite(invite.to_owned()));
        self.tx.set_token(sha256, invite)
    }

    /// Ends a token. The invite it belonged to is noted when the
    /// transaction knows it.
    pub fn clear_token(&mut self, sha256: &str) -> Result<()> {
        if let Some(invite) = self.tx.token_invite(sha256)? {
            self.note(Changed::Invite(invite));
        }
        self.tx.clear_token(sha256)
    }
}

impl Reads for Recorded<'_> {
    fn user(&self, id: &str) -> Result<Option<User>> {
        self.tx.user(id)
    }

    fn account(&self, id: &str) -> Result<Option<Account>> {
        self.tx.account(id)
    }

    fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        self.tx.roles_of(user)
    }
}
