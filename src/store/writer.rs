//! The rules of the directory, written once over the primitives of one
//! write transaction, so both backends enforce exactly the same contract: a
//! taken id or email, one accept per invite, the last admin, invite expiry
//! and email binding. They are checked against the transaction's own view,
//! so concurrent operations cannot both pass a check only one may pass.
//!
//! A [`Writer`] reaches the backend only through [`Recorded`], which notes
//! what every mutation changed: a rule written here cannot forget to tell
//! the decision memo.

use super::recorded::{Changed, Recorded};
use super::{
    normalize_email, Account, AccountKind, ApiKey, GoneReason, Invite, InviteState, Membership,
    Reads, Refusal, Result, User, WriteError, ADMIN_SCOPE,
};

/// The operations of one write transaction.
pub struct Writer<'t> {
    tx: Recorded<'t>,
}

impl<'t> Writer<'t> {
    /// The rules over one attempt of a write transaction.
    pub(super) fn new(tx: Recorded<'t>) -> Self {
        Self { tx }
    }

    /// What this transaction changed.
    pub(super) fn into_changed(self) -> Vec<Changed> {
        self.tx.into_changed()
    }
}

impl Reads for Writer<'_> {
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

impl Writer<'_> {
    /// The user `id`, if stored.
    pub fn user(&self, id: &str) -> Result<Option<User>, WriteError> {
        Ok(self.tx.user(id)?)
    }

    /// The account `id`, if stored.
    pub fn account(&self, id: &str) -> Result<Option<Account>, WriteError> {
        Ok(self.tx.account(id)?)
    }

    /// The role `user` holds in `account`, if a member.
    pub fn role_in(&self, account: &str, user: &str) -> Result<Option<String>, WriteError> {
        Ok(self.tx.membership(account, user)?.map(|m| m.role))
    }

    /// Stores a new caller key. Ids are random; a clash is refused rather
    /// than overwriting a key.
    pub fn create_key(&mut self, key: &ApiKey) -> Result<(), WriteError> {
        if self.tx.key(&key.id)?.is_some() {
            return Err(Refusal::IdTaken(key.id.clone()).into());
        }
        Ok(self.tx.put_key(key)?)
    }

    /// Revokes the key `id` at `now` (revoking a revoked key keeps the first
    /// time). An unknown id is `NoKey`. The last live key holding the
    /// `admin` scope is not revoked (`LastAdminKey`): without it nobody
    /// could manage keys, and rotation is create-then-revoke.
    pub fn revoke_key(&mut self, id: &str, now: i64) -> Result<ApiKey, WriteError> {
        let Some(mut key) = self.tx.key(id)? else {
            return Err(Refusal::NoKey(id.to_owned()).into());
        };
        if key.revoked_at.is_none() && key.scopes.iter().any(|s| s == ADMIN_SCOPE) {
            let other_admin = self.tx.keys()?.iter().any(|k| {
                k.id != key.id
                    && k.revoked_at.is_none()
                    && k.scopes.iter().any(|s| s == ADMIN_SCOPE)
            });
            if !other_admin {
                return Err(Refusal::LastAdminKey(key.id).into());
            }
        }
        key.revoked_at.get_or_insert(now);
        self.tx.put_key(&key)?;
        Ok(key)
    }

    /// Signs a user up: stores the user and their personal account (whose id
    /// is the user's id) with the user holding `owner_role` in it.
    pub fn sign_up(&mut self, user: &User, owner_role: &str) -> Result<Account, WriteError> {
        if self.tx.user(&user.id)?.is_some() || self.tx.account(&user.id)?.is_some() {
            return Err(Refusal::IdTaken(user.id.clone()).into());
        }
        self.import_user(user)?;
        let account = Account {
            id: user.id.clone(),
            name: user.name.clone().unwrap_or_else(|| user.id.clone()),
            kind: AccountKind::Personal,
            owner: user.id.clone(),
            created_at: user.created_at,
        };
        self.tx.put_account(&account)?;
        self.tx.put_membership(
            &account.id,
            &user.id,
            &Membership {
                role: owner_role.to_owned(),
                since: user.created_at,
            },
        )?;
        Ok(account)
    }

    /// Converts a personal account into a team account named `name`. The
    /// owner keeps the role they hold.
    pub fn convert(&mut self, account: &str, name: &str) -> Result<Account, WriteError> {
        let mut acc = self
            .tx
            .account(account)?
            .ok_or_else(|| WriteError::from(Refusal::NoAccount(account.to_owned())))?;
        if acc.kind != AccountKind::Personal {
            return Err(Refusal::NotPersonal(account.to_owned()).into());
        }
        acc.kind = AccountKind::Team;
        acc.name = name.to_owned();
        self.tx.put_account(&acc)?;
        Ok(acc)
    }

    fn admins(&self, account: &str, admin_role: &str) -> Result<usize> {
        Ok(self
            .tx
            .members(account)?
            .iter()
            .filter(|(_, m)| m.role == admin_role)
            .count())
    }

    fn member(&self, account: &str, user: &str) -> Result<Membership, WriteError> {
        self.tx.membership(account, user)?.ok_or_else(|| {
            WriteError::from(Refusal::NotMember {
                account: account.to_owned(),
                user: user.to_owned(),
            })
        })
    }

    /// Gives a member a new role. Demoting the last holder of `admin_role`
    /// is refused.
    pub fn set_role(
        &mut self,
        account: &str,
        user: &str,
        role: &str,
        admin_role: &str,
    ) -> Result<Membership, WriteError> {
        let mut m = self.member(account, user)?;
        if m.role == admin_role && role != admin_role && self.admins(account, admin_role)? <= 1 {
            return Err(Refusal::LastAdmin {
                account: account.to_owned(),
                user: user.to_owned(),
                role: admin_role.to_owned(),
            }
            .into());
        }
        m.role = role.to_owned();
        self.tx.put_membership(account, user, &m)?;
        Ok(m)
    }

    /// Removes a member. Removing the last holder of `admin_role` is refused.
    pub fn remove_member(
        &mut self,
        account: &str,
        user: &str,
        admin_role: &str,
    ) -> Result<(), WriteError> {
        let m = self.member(account, user)?;
        if m.role == admin_role && self.admins(account, admin_role)? <= 1 {
            return Err(Refusal::LastAdmin {
                account: account.to_owned(),
                user: user.to_owned(),
                role: admin_role.to_owned(),
            }
            .into());
        }
        Ok(self.tx.delete_membership(account, user)?)
    }

    /// Stores a user as given, without the personal account sign-up
    /// creates (for imports, seeding and benchmarks).
    /// Its email must be free (normalised by the caller); it is indexed.
    pub fn import_user(&mut self, user: &User) -> Result<(), WriteError> {
        match self.tx.email_holder(&user.email)? {
            Some(id) if id != user.id => Err(Refusal::EmailTaken(user.email.clone()).into()),
            _ => Ok(self.tx.put_user(user)?),
        }
    }

    /// Records whether the user's email is verified.
    pub fn set_email_verified(&mut self, id: &str, verified: bool) -> Result<User, WriteError> {
        let mut user = self
            .tx
            .user(id)?
            .ok_or_else(|| WriteError::from(Refusal::NoUser(id.to_owned())))?;
        user.email_verified = verified;
        self.tx.put_user(&user)?;
        Ok(user)
    }

    /// Stores an account as given (for imports, seeding and benchmarks).
    pub fn import_account(&mut self, account: &Account) -> Result<(), WriteError> {
        Ok(self.tx.put_account(account)?)
    }

    /// Adds a member directly, without an invite (for imports, seeding and
    /// benchmarks; the API adds members only through invites).
    pub fn add_member(
        &mut self,
        account: &str,
        user: &str,
        role: &str,
        since: i64,
    ) -> Result<(), WriteError> {
        if self.tx.membership(account, user)?.is_some() {
            return Err(Refusal::AlreadyMember {
                account: account.to_owned(),
                user: user.to_owned(),
            }
            .into());
        }
        Ok(self.tx.put_membership(
            account,
            user,
            &Membership {
                role: role.to_owned(),
                since,
            },
        )?)
    }

    /// Stores an invite as given, its token live if it is pending (for
    /// copying a directory between backends).
    pub fn import_invite(&mut self, invite: &Invite) -> Result<(), WriteError> {
        self.tx.put_invite(invite)?;
        if matches!(invite.state, InviteState::Pending) {
            self.tx.set_token(&invite.token_sha256, &invite.id)?;
        }
        Ok(())
    }

    /// Stores a caller key as given (for copying a directory).
    pub fn import_key(&mut self, key: &ApiKey) -> Result<(), WriteError> {
        Ok(self.tx.put_key(key)?)
    }

    /// Stores a new invite whose token hashes to `invite.token_sha256`. The
    /// account must be a team account.
    pub fn create_invite(&mut self, invite: &Invite) -> Result<(), WriteError> {
        let acc = self
            .tx
            .account(&invite.account)?
            .ok_or_else(|| WriteError::from(Refusal::NoAccount(invite.account.clone())))?;
        if acc.kind != AccountKind::Team {
            return Err(Refusal::NotTeam(acc.id).into());
        }
        self.tx.put_invite(invite)?;
        Ok(self.tx.set_token(&invite.token_sha256, &invite.id)?)
    }

    /// The invite `id` of `account` if it is still pending at `now`.
    fn pending_invite(&self, account: &str, id: &str, now: i64) -> Result<Invite, WriteError> {
        match self.tx.invite(id)? {
            Some(i) if i.account == account && i.is_pending(now) => Ok(i),
            _ => Err(Refusal::NoInvite {
                account: account.to_owned(),
                invite: id.to_owned(),
            }
            .into()),
        }
    }

    /// Gives a pending invite a new token: the old token stops working in
    /// the same commit.
    pub fn relink(
        &mut self,
        account: &str,
        id: &str,
        new_sha256: &str,
        now: i64,
    ) -> Result<Invite, WriteError> {
        let mut invite = self.pending_invite(account, id, now)?;
        self.tx.clear_token(&invite.token_sha256)?;
        invite.token_sha256 = new_sha256.to_owned();
        self.tx.put_invite(&invite)?;
        self.tx.set_token(new_sha256, &invite.id)?;
        Ok(invite)
    }

    /// Revokes a pending invite; its token stops working.
    pub fn revoke(&mut self, account: &str, id: &str, now: i64) -> Result<Invite, WriteError> {
        let mut invite = self.pending_invite(account, id, now)?;
        self.tx.clear_token(&invite.token_sha256)?;
        invite.state = InviteState::Revoked { at: now };
        self.tx.put_invite(&invite)?;
        Ok(invite)
    }

    /// Accepts the invite whose token hashes to `sha256` for `user`: marks
    /// it used and adds the membership, both in this transaction. Unknown,
    /// expired, revoked and used tokens all fail with
    /// [`Refusal::InviteGone`].
    pub fn accept(&mut self, sha256: &str, user: &str, now: i64) -> Result<Invite, WriteError> {
        let mut invite = self.live_invite(sha256, now)?;
        let joining = self
            .tx
            .user(user)?
            .ok_or_else(|| WriteError::from(Refusal::NoUser(user.to_owned())))?;
        if let Some(bound) = &invite.email {
            if normalize_email(bound) != normalize_email(&joining.email) {
                return Err(Refusal::EmailMismatch.into());
            }
            if !joining.email_verified {
                return Err(Refusal::EmailUnverified.into());
            }
        }
        if self.tx.membership(&invite.account, user)?.is_some() {
            return Err(Refusal::AlreadyMember {
                account: invite.account.clone(),
                user: user.to_owned(),
            }
            .into());
        }
        self.tx.clear_token(sha256)?;
        invite.state = InviteState::Used {
            by: user.to_owned(),
            at: now,
        };
        self.tx.put_invite(&invite)?;
        let role = invite.role.clone();
        self.tx
            .put_membership(&invite.account, user, &Membership { role, since: now })?;
        Ok(invite)
    }

    /// The pending invite whose token hashes to `sha256`, as this
    /// transaction sees it. Unknown, expired, revoked and used tokens all
    /// fail with [`Refusal::InviteGone`].
    pub fn live_invite(&self, sha256: &str, now: i64) -> Result<Invite, WriteError> {
        let Some(id) = self.tx.token_invite(sha256)? else {
            return Err(Refusal::InviteGone(GoneReason::Unknown).into());
        };
        let Some(invite) = self.tx.invite(&id)? else {
            return Err(Refusal::InviteGone(GoneReason::Unknown).into());
        };
        if !invite.is_pending(now) || invite.token_sha256 != sha256 {
            let expired = matches!(invite.state, InviteState::Pending) && now >= invite.expires_at;
            return Err(Refusal::InviteGone(if expired {
                GoneReason::Expired
            } else {
                GoneReason::Unknown
            })
            .into());
        }
        Ok(invite)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::store::Store;

    /// Every stored fact an entity is built from: each user with their
    /// `(account, role)` pairs, each account.
    type Facts = (
        BTreeMap<String, (User, Vec<(String, String)>)>,
        BTreeMap<String, Account>,
    );

    fn facts(store: &Store) -> Facts {
        let view = store.read().unwrap_or_else(|e| panic!("{e}"));
        let mut users = BTreeMap::new();
        view.each_user(&mut |u, roles| {
            users.insert(u.id.clone(), (u, roles));
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let mut accounts = BTreeMap::new();
        view.each_account(&mut |a| {
            accounts.insert(a.id.clone(), a);
        })
        .unwrap_or_else(|e| panic!("{e}"));
        (users, accounts)
    }

    /// The entities whose facts differ between two readings.
    fn differ(before: &Facts, after: &Facts) -> BTreeSet<Changed> {
        let mut out = BTreeSet::new();
        let ids: BTreeSet<&String> = before.0.keys().chain(after.0.keys()).collect();
        for id in ids {
            if before.0.get(id) != after.0.get(id) {
                out.insert(Changed::User(id.clone()));
            }
        }
        let ids: BTreeSet<&String> = before.1.keys().chain(after.1.keys()).collect();
        for id in ids {
            if before.1.get(id) != after.1.get(id) {
                out.insert(Changed::Account(id.clone()));
            }
        }
        out
    }

    fn user(id: &str, verified: bool) -> User {
        User {
            id: id.into(),
            email: format!("{id}@example.com"),
            email_verified: verified,
            name: None,
            created_at: 1,
        }
    }

    fn invite(id: &str, account: &str, role: &str, token: &str, email: Option<&str>) -> Invite {
        Invite {
            id: id.into(),
            account: account.into(),
            role: role.into(),
            email: email.map(str::to_owned),
            token_sha256: token.into(),
            created_by: account.into(),
            created_at: 1,
            expires_at: 1_000,
            state: InviteState::Pending,
        }
    }

    fn key(id: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            secret_sha256: "00".repeat(32),
            scopes: vec!["decide".into()],
            created_at: 1,
            revoked_at: None,
        }
    }

    /// Each operation of the rules, run through the store: every entity
    /// whose stored facts it changed is among what it recorded, so the
    /// decision memo forgets it. This is the test the accept defect would
    /// have failed (accept once wrote the membership unrecorded).
    #[test]
    fn every_operation_records_each_entity_whose_facts_it_changed() {
        type Op = Box<dyn Fn(&mut Writer<'_>) -> Result<(), WriteError>>;
        let ops: Vec<(&str, Op)> = vec![
            (
                "sign_up olga",
                Box::new(|w| w.sign_up(&user("olga", true), "admin").map(drop)),
            ),
            (
                "sign_up bob",
                Box::new(|w| w.sign_up(&user("bob", true), "admin").map(drop)),
            ),
            (
                "sign_up cy",
                Box::new(|w| w.sign_up(&user("cy", false), "admin").map(drop)),
            ),
            ("convert", Box::new(|w| w.convert("olga", "Acme").map(drop))),
            (
                "create_invite",
                Box::new(|w| w.create_invite(&invite("i1", "olga", "dev", "aa", None))),
            ),
            ("accept", Box::new(|w| w.accept("aa", "bob", 2).map(drop))),
            (
                "set_role",
                Box::new(|w| w.set_role("olga", "bob", "basic", "admin").map(drop)),
            ),
            (
                "create_invite bound",
                Box::new(|w| {
                    w.create_invite(&invite("i2", "olga", "dev", "bb", Some("cy@example.com")))
                }),
            ),
            (
                "relink",
                Box::new(|w| w.relink("olga", "i2", "cc", 2).map(drop)),
            ),
            (
                "set_email_verified",
                Box::new(|w| w.set_email_verified("cy", true).map(drop)),
            ),
            (
                "accept bound",
                Box::new(|w| w.accept("cc", "cy", 3).map(drop)),
            ),
            (
                "create_invite to revoke",
                Box::new(|w| w.create_invite(&invite("i3", "olga", "billing", "dd", None))),
            ),
            ("revoke", Box::new(|w| w.revoke("olga", "i3", 3).map(drop))),
            (
                "remove_member",
                Box::new(|w| w.remove_member("olga", "bob", "admin")),
            ),
            (
                "import_user",
                Box::new(|w| w.import_user(&user("dee", true))),
            ),
            (
                "import_account",
                Box::new(|w| {
                    w.import_account(&Account {
                        id: "deeco".into(),
                        name: "Dee & Co".into(),
                        kind: AccountKind::Team,
                        owner: "dee".into(),
                        created_at: 1,
                    })
                }),
            ),
            (
                "add_member",
                Box::new(|w| w.add_member("deeco", "dee", "admin", 4)),
            ),
            (
                "import_invite",
                Box::new(|w| w.import_invite(&invite("i4", "deeco", "dev", "ee", None))),
            ),
            ("create_key", Box::new(|w| w.create_key(&key("k1")))),
            ("revoke_key", Box::new(|w| w.revoke_key("k1", 5).map(drop))),
            ("import_key", Box::new(|w| w.import_key(&key("k2")))),
        ];
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("d.redb")).unwrap_or_else(|e| panic!("{e}"));
        for (name, op) in &ops {
            let before = facts(&store);
            let ((), revision) = store
                .write_revision(|w| op(w))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let changed = differ(&before, &facts(&store));
            let recorded: BTreeSet<Changed> = store
                .changed_between(revision - 1, revision)
                .unwrap_or_else(|| panic!("{name}: the store lost what it recorded"))
                .into_iter()
                .collect();
            let missed: Vec<&Changed> = changed.difference(&recorded).collect();
            assert!(
                missed.is_empty(),
                "{name} changed {missed:?} without recording it (recorded {recorded:?})"
            );
        }
    }
}
