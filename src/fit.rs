//! Whether the stored data fits a schema: the check a reloaded policy set
//! must pass before it replaces the live one (installed by the server as the
//! [`LivePolicies`](crate::policy::watch::LivePolicies) guard).
//!
//! A schema edit can be valid on its own and still break what is stored: a
//! renamed role that members and pending invites hold, a required attribute
//! stored users lack. Such a set is refused with what no longer fits and how
//! many records, and the old set keeps serving. The check scans the store
//! (memberships, pending invites, users, accounts) in one read transaction,
//! building each user and account entity as a decision would and validating
//! it against the new schema in batches. This module knows nothing about
//! HTTP; it reads the store through its scans and the schema through
//! `model`.

use cedar_policy::{Entities, Entity};

use crate::model::{account_entity, user_entity, RoleCatalog};
use crate::policy::{describe, LoadError, PolicySnapshot};
use crate::store::Store;

/// How many entities are validated together; a failing batch is validated
/// one by one to count the records that do not fit.
const BATCH: usize = 2_048;

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Checks the data in `store` against `snapshot`'s schema at `now` (for
/// which invites are pending). Every problem is one [`LoadError`] naming the
/// schema file.
pub fn check(store: &Store, snapshot: &PolicySnapshot, now: i64) -> Result<(), Vec<LoadError>> {
    let file = match snapshot.schema_files.as_slice() {
        [one] => one.name.clone(),
        _ => "schema".to_owned(),
    };
    let error = |message: String| LoadError {
        file: file.clone(),
        line: None,
        column: None,
        message,
    };
    let fault = |e: crate::store::Fault| {
        vec![error(format!(
            "cannot check the stored data against the new schema: {e}"
        ))]
    };
    let view = store.read().map_err(fault)?;
    let census = view.role_census(now).map_err(fault)?;
    let mut accounts = Vec::new();
    view.each_account(&mut |a| accounts.push(a))
        .map_err(fault)?;
    if census.is_empty() && accounts.is_empty() {
        return Ok(());
    }
    let roles = match RoleCatalog::default().roles(snapshot) {
        Ok(r) => r,
        Err(e) => {
            return Err(vec![error(format!(
                "{} are stored, but {e}",
                plural(accounts.len(), "account", "accounts")
            ))])
        }
    };
    let mut errors = Vec::new();
    for (role, (members, invites)) in &census {
        if roles.iter().any(|r| r == role) {
            continue;
        }
        let who = match (*members, *invites) {
            (m, 0) => plural(m, "member", "members"),
            (0, i) => plural(i, "pending invite", "pending invites"),
            (m, i) => format!(
                "{} and {}",
                plural(m, "member", "members"),
                plural(i, "pending invite", "pending invites")
            ),
        };
        let verb = if members + invites == 1 {
            "holds"
        } else {
            "hold"
        };
        errors.push(error(format!(
            "{who} {verb} the role `{role}`, which the new schema does not declare"
        )));
    }
    let mut users = Misfits::new("user", "users");
    let mut batch = Vec::with_capacity(BATCH);
    view.each_user(&mut |user, held| {
        match user_entity(&user, &held) {
            Ok(e) => batch.push(e),
            Err(e) => users.add(1, &format!("`User::\"{}\"`: {e}", user.id)),
        }
        if batch.len() >= BATCH {
            users.validate(snapshot, &mut batch);
        }
    })
    .map_err(fault)?;
    users.validate(snapshot, &mut batch);
    let mut stored = Misfits::new("account", "accounts");
    for account in &accounts {
        match account_entity(account, &roles) {
            Ok(e) => batch.push(e),
            Err(e) => stored.add(1, &format!("`Account::\"{}\"`: {e}", account.id)),
        }
        if batch.len() >= BATCH {
            stored.validate(snapshot, &mut batch);
        }
    }
    stored.validate(snapshot, &mut batch);
    errors.extend(users.report().map(error));
    errors.extend(stored.report().map(error));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Stored records of one kind that do not conform, counted, with the first.
struct Misfits {
    one: &'static str,
    many: &'static str,
    count: usize,
    first: Option<String>,
}

impl Misfits {
    fn new(one: &'static str, many: &'static str) -> Self {
        Self {
            one,
            many,
            count: 0,
            first: None,
        }
    }

    fn add(&mut self, n: usize, first: &str) {
        self.count += n;
        if self.first.is_none() {
            self.first = Some(first.to_owned());
        }
    }

    /// Validates and empties `batch`; a failing batch is checked entity by
    /// entity.
    fn validate(&mut self, snapshot: &PolicySnapshot, batch: &mut Vec<Entity>) {
        if batch.is_empty() {
            return;
        }
        let all = std::mem::take(batch);
        if Entities::empty()
            .add_entities(all.clone(), Some(&snapshot.schema))
            .is_ok()
        {
            return;
        }
        for e in all {
            let uid = e.uid();
            if let Err(err) = Entities::empty().add_entities([e], Some(&snapshot.schema)) {
                self.add(1, &format!("`{uid}`: {}", describe(&err)));
            }
        }
    }

    fn report(&self) -> Option<String> {
        (self.count > 0).then(|| {
            format!(
                "{} stored {} {} not conform to the new schema (first: {})",
                self.count,
                if self.count == 1 { self.one } else { self.many },
                if self.count == 1 { "does" } else { "do" },
                self.first.as_deref().unwrap_or_default()
            )
        })
    }
}
