//! The store: users, accounts, memberships, invites and caller keys, behind
//! one seam with two backends: an embedded redb file (`redb.rs`, the
//! default) and a PostgreSQL database shared by several replicas (`pg.rs`,
//! reached over TLS as its URL's `sslmode` says: `pg_tls.rs`).
//!
//! A backend provides reads ([`Reads`], [`View`]) and the primitives of one
//! write transaction ([`Tx`]); the rules (a taken id, one accept per invite,
//! the last admin, …) are [`Writer`]'s, written once over those primitives
//! and checked inside the transaction, so both backends enforce exactly the
//! same contract. Every committed write advances the store revision (a
//! number kept by the backend, in the same transaction), which answers and
//! caches are tagged with. Errors come one enum per operation (`error.rs`):
//! a rule's refusal ([`Refusal`]) is told apart from a fault ([`Fault`]): a fault
//! is a 503, never a refusal and never an allow. This module knows nothing
//! about HTTP or Cedar; the role names it is handed are opaque strings.
//!
//! A damaged redb file is never written: it is checked before redb opens it
//! (`check.rs`), and damage found then or later puts the store in a damaged
//! state that refuses every read and write ([`Fault::Damaged`],
//! [`Store::damage`]).

mod check;
mod error;
mod outage;
mod overlay;
pub mod pg;
mod pg_tls;
mod recorded;
mod records;
pub mod redb;
mod tables;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use check::{check_file, CheckReport, RecordCounts};
pub use error::{AtLeastError, Failure, Fault, GoneReason, OpenError, Refusal, WriteError};
pub use outage::WriteOutage;
pub use recorded::Changed;
pub use records::{
    Account, AccountKind, ApiKey, Invite, InviteState, Membership, User, ADMIN_SCOPE,
};
pub use tables::FORMAT_VERSION;
pub use writer::Writer;

/// An email as stored and compared: trimmed and lowercase.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Shorthand for store results: a read or a primitive fails only with a
/// fault.
pub type Result<T, E = Fault> = std::result::Result<T, E>;

/// Serialises a record. Plain structs of strings and integers do not fail to
/// serialise, but if one ever did, the write fails whole rather than storing
/// an empty record.
fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Fault::Encode {
        table,
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Fault::Corrupt {
        what: format!("record in table `{table}`"),
        message: e.to_string(),
    })
}

/// The point lookups a decision needs: in a read view, and inside a write
/// transaction (so that a policy check made while writing reads exactly the
/// state the write commits over).
pub trait Reads {
    /// The user `id`, if stored.
    fn user(&self, id: &str) -> Result<Option<User>>;
    /// Whether the user `id` is stored.
    fn has_user(&self, id: &str) -> Result<bool> {
        Ok(self.user(id)?.is_some())
    }
    /// The account `id`, if stored.
    fn account(&self, id: &str) -> Result<Option<Account>>;
    /// Whether the account `id` is stored.
    fn has_account(&self, id: &str) -> Result<bool> {
        Ok(self.account(id)?.is_some())
    }
    /// The `(account, role)` pairs of a user, ordered by account: from an
    /// index, never a scan.
    fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>>;
}

/// A read view: lookups, listings and scans.
pub trait View: Reads {
    /// The members of an account with their roles, ordered by user id.
    fn members(&self, account: &str) -> Result<Vec<(String, Membership)>>;
    /// How many memberships and invites pending at `now` hold each role: a
    /// scan, for checking a new schema against what is stored.
    fn role_census(&self, now: i64) -> Result<BTreeMap<String, (usize, usize)>>;
    /// Calls `f` with every stored user and its `(account, role)` pairs, in
    /// id order.
    fn each_user(&self, f: &mut dyn FnMut(User, Vec<(String, String)>)) -> Result<()>;
    /// Calls `f` with every stored account, in id order.
    fn each_account(&self, f: &mut dyn FnMut(Account)) -> Result<()>;
    /// Up to `limit` user ids after `after` (from the first when `None`), in
    /// id order: the candidates of a subject search, a page at a time.
    fn user_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// Up to `limit` account ids after `after`, in id order.
    fn account_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// Every caller key, revoked ones included, ordered by id.
    fn keys(&self) -> Result<Vec<ApiKey>>;
    /// The invites of an account, pending or not, ordered by id.
    fn invites(&self, account: &str) -> Result<Vec<Invite>>;
    /// The invite a live token (by its SHA-256) belongs to.
    fn invite_by_token(&self, sha256: &str) -> Result<Option<Invite>>;
}

/// A read view of either backend.
pub type ReadView = Box<dyn View>;

/// The primitives of one write transaction, which a backend provides; the
/// rules over them are [`Writer`]'s.
pub trait Tx: Reads {
    /// `user`'s membership of `account`.
    fn membership(&self, account: &str, user: &str) -> Result<Option<Membership>>;
    /// The members of `account`, ordered by user id.
    fn members(&self, account: &str) -> Result<Vec<(String, Membership)>>;
    /// The user holding a (normalised) email address.
    fn email_holder(&self, email: &str) -> Result<Option<String>>;
    /// Stores a user, and indexes its email.
    fn put_user(&mut self, user: &User) -> Result<()>;
    /// Stores an account.
    fn put_account(&mut self, account: &Account) -> Result<()>;
    /// Stores a membership (and the per-user index).
    fn put_membership(&mut self, account: &str, user: &str, m: &Membership) -> Result<()>;
    /// Removes a membership.
    fn delete_membership(&mut self, account: &str, user: &str) -> Result<()>;
    /// The caller key `id`.
    fn key(&self, id: &str) -> Result<Option<ApiKey>>;
    /// Every caller key, revoked ones included, ordered by id.
    fn keys(&self) -> Result<Vec<ApiKey>>;
    /// Stores a caller key.
    fn put_key(&mut self, key: &ApiKey) -> Result<()>;
    /// The invite `id`.
    fn invite(&self, id: &str) -> Result<Option<Invite>>;
    /// Stores an invite (and indexes it under its account).
    fn put_invite(&mut self, invite: &Invite) -> Result<()>;
    /// The invite a live token (by its SHA-256) belongs to.
    fn token_invite(&self, sha256: &str) -> Result<Option<String>>;
    /// Makes a token live for an invite.
    fn set_token(&mut self, sha256: &str, invite: &str) -> Result<()>;
    /// Ends a token: it matches nothing from now on.
    fn clear_token(&mut self, sha256: &str) -> Result<()>;
}

/// Which backend holds the directory.
#[derive(Debug)]
enum Backend {
    Redb(self::redb::RedbStore),
    Postgres(Box<pg::PgStore>),
}

/// The directory: either backend behind one API. Cheap to share behind an
/// `Arc`.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
    /// The newest revision this process committed or learned of: caches of
    /// what was read are tagged with it. For redb it is exact (one process
    /// holds the file); for PostgreSQL, other replicas' writes raise it
    /// through `LISTEN/NOTIFY` and the poll.
    revision: AtomicU64,
    /// What this process's recent writes changed, by revision.
    changes: ChangeLog,
}

/// What the recent writes of this process changed, by revision: the last
/// [`ChangeLog::CAPACITY`] writes. Revisions it does not hold (older ones,
/// another replica's) are unknown, and a reader must assume anything
/// changed.
#[derive(Debug, Default)]
struct ChangeLog {
    entries: Mutex<VecDeque<(u64, Vec<Changed>)>>,
}

impl ChangeLog {
    const CAPACITY: usize = 4096;

    fn note(&self, revision: u64, changed: Vec<Changed>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Two writers may note out of commit order: keep the log sorted.
        let at = entries.partition_point(|(r, _)| *r < revision);
        entries.insert(at, (revision, changed));
        if entries.len() > Self::CAPACITY {
            entries.pop_front();
        }
    }

    fn between(&self, from: u64, to: u64) -> Option<Vec<Changed>> {
        let entries = self.entries.lock().ok()?;
        let wanted = usize::try_from(to.checked_sub(from)?).ok()?;
        let start = entries.partition_point(|(r, _)| *r <= from);
        let mut seen = 0;
        let mut out = Vec::new();
        for (r, changed) in entries.range(start..) {
            if *r > to {
                break;
            }
            seen += 1;
            out.extend(changed.iter().cloned());
        }
        (seen == wanted).then_some(out)
    }
}

impl Store {
    /// Opens (or creates) the redb data file at `path`, creating its folder.
    /// A file held by another process, written by a newer cedard, or not a
    /// cedard file is refused with a message that says so.
    ///
    /// The file is checked before redb opens it. A damaged file is not
    /// refused: the store opens damaged ([`Store::damage`]) and refuses
    /// every read and write.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::redb(self::redb::RedbStore::open(path)?)
    }

    /// Opens the redb file at `path` for reading only
    /// ([`redb::RedbStore::open_read_only`]): nothing is ever written to it.
    pub fn open_read_only(path: &Path) -> Result<Self, OpenError> {
        Self::redb(self::redb::RedbStore::open_read_only(path)?)
    }

    /// The facade over an open redb file, at the file's revision. A damaged
    /// file has no revision to read; nothing will be read from it.
    fn redb(db: self::redb::RedbStore) -> Result<Self, OpenError> {
        let revision = match db.damage() {
            Some(_) => 0,
            None => db.revision()?,
        };
        Ok(Self::with(Backend::Redb(db), revision))
    }

    fn with(backend: Backend, revision: u64) -> Self {
        Self {
            backend,
            revision: AtomicU64::new(revision),
            changes: ChangeLog::default(),
        }
    }

    /// Connects to the PostgreSQL database at `url`, creating or checking
    /// cedard's tables (a newer schema is refused).
    pub fn connect(url: &str, options: &pg::Options) -> Result<Self, OpenError> {
        let db = pg::PgStore::connect(url, options)?;
        let revision = db.revision();
        Ok(Self::with(Backend::Postgres(Box::new(db)), revision))
    }

    /// The newest store revision this process knows committed.
    pub fn revision(&self) -> u64 {
        match &self.backend {
            Backend::Redb(_) => self.revision.load(Ordering::Acquire),
            Backend::Postgres(db) => db.revision(),
        }
    }

    /// The entities the writes after revision `from` up to `to` changed,
    /// when this process knows every one of those writes (its own recent
    /// writes); `None` when it does not, and anything may have changed.
    pub fn changed_between(&self, from: u64, to: u64) -> Option<Vec<Changed>> {
        self.changes.between(from, to)
    }

    /// The revision caches are tagged with: see [`Store::revision`].
    pub fn generation(&self) -> u64 {
        self.revision()
    }

    /// Reads the backend's revision now: for PostgreSQL, a query that also
    /// catches up with writes not yet notified.
    pub fn refresh_revision(&self) -> Result<u64> {
        match &self.backend {
            // A damaged file's revision says nothing a read could honour.
            Backend::Redb(db) => db.sound().map(|()| self.revision()),
            Backend::Postgres(db) => db.refresh(),
        }
    }

    /// Waits until this process knows revision `wanted` (reading the
    /// backend's revision once if it does not yet): a decision that must be
    /// at least that fresh. A revision the store never committed is an
    /// error, not a wait; so is a damaged data file (the damaged fault).
    pub fn at_least(&self, wanted: u64) -> Result<u64, AtLeastError> {
        if let Backend::Redb(db) = &self.backend {
            db.sound()?;
        }
        let known = self.revision();
        if known >= wanted {
            return Ok(known);
        }
        let newest = self.refresh_revision()?;
        if newest >= wanted {
            Ok(newest)
        } else {
            Err(AtLeastError::UnknownRevision { wanted, newest })
        }
    }

    /// Refuses when what this process knows of the store may be older than
    /// its bound: a replica that has not confirmed the revision with the
    /// shared database for longer than `--store-max-staleness-ms`
    /// ([`Fault::Stale`]), or a damaged redb file. An embedded file is
    /// always current otherwise (one process writes it).
    pub fn current(&self) -> Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.sound(),
            Backend::Postgres(db) => db.current(),
        }
    }

    /// How stale this process may be before it refuses to answer from what
    /// it knows: `None` for the embedded file, which is exact.
    pub fn max_staleness(&self) -> Option<Duration> {
        match &self.backend {
            Backend::Redb(_) => None,
            Backend::Postgres(db) => Some(db.options().max_staleness),
        }
    }

    /// When the store revision was last confirmed with the shared database
    /// (`None` for the embedded file, and before the first confirmation).
    pub fn confirmed_at(&self) -> Option<Instant> {
        match &self.backend {
            Backend::Redb(_) => None,
            Backend::Postgres(db) => db.contact().confirmed_at(),
        }
    }

    /// Whether reads cross a network (a blocking call, kept off the async
    /// workers).
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The data file, for the embedded backend.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Redb(db) => Some(db.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// What is wrong with the data file, if it is known to be damaged (at
    /// open, or since); a damaged store refuses every read and write. Only
    /// the embedded backend has a file to damage.
    pub fn damage(&self) -> Option<&str> {
        match &self.backend {
            Backend::Redb(db) => db.damage(),
            Backend::Postgres(_) => None,
        }
    }

    /// The write outage under way, if writes cannot commit now: an I/O
    /// failure (a full disk, say) stopped them, and the store has not
    /// recovered yet; writes are refused meanwhile
    /// ([`Fault::WriteOutage`]) and reads are answered from what is
    /// stored. Only the embedded backend has one (PostgreSQL: `None`).
    pub fn write_outage(&self) -> Option<WriteOutage> {
        match &self.backend {
            Backend::Redb(db) => db.write_outage(),
            Backend::Postgres(_) => None,
        }
    }

    /// Tries to end a write outage now ([`redb::RedbStore::recover`]):
    /// `Ok` when there is none, or once writes commit again; the error says
    /// why not yet. The revision is read afresh, since a write whose outcome
    /// was unknown may have advanced it. PostgreSQL has nothing to recover.
    pub fn recover(&self) -> Result<()> {
        match &self.backend {
            Backend::Redb(db) => {
                db.recover()?;
                self.revision.fetch_max(db.revision()?, Ordering::AcqRel);
                Ok(())
            }
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Whether opening checked the redb file in full (`false` when its
    /// stamp showed it was checked before, and on PostgreSQL).
    pub fn checked_at_open(&self) -> bool {
        match &self.backend {
            Backend::Redb(db) => db.checked_at_open(),
            Backend::Postgres(_) => false,
        }
    }

    /// Where the directory lives, for messages: the file, or the URL
    /// without its password.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Redb(db) => db.path().display().to_string(),
            Backend::Postgres(db) => db.shown().to_owned(),
        }
    }

    /// A read view. On redb, everything read through it comes from one
    /// committed state; on PostgreSQL, each read sees what is committed when
    /// it runs.
    pub fn read(&self) -> Result<ReadView> {
        Ok(match &self.backend {
            Backend::Redb(db) => Box::new(db.read()?),
            Backend::Postgres(db) => Box::new(db.read()?),
        })
    }

    /// Runs `f` in one write transaction and commits it durably when `f`
    /// succeeds; when `f` fails nothing is written. Each API operation is
    /// exactly one call of this. `f` may run more than once on PostgreSQL
    /// (a transaction that failed to serialize is retried), so it must not
    /// have effects outside the transaction.
    pub fn write<T>(
        &self,
        f: impl FnMut(&mut Writer<'_>) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        self.write_with(f)
    }

    /// [`Store::write`] whose `f` may fail with its caller's own error type
    /// (a policy check made inside the transaction, say); store errors
    /// convert into it.
    pub fn write_with<T, E: Failure>(
        &self,
        f: impl FnMut(&mut Writer<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_revision(f).map(|(v, _)| v)
    }

    /// [`Store::write_with`], also returning the revision the write
    /// committed.
    pub fn write_revision<T, E: Failure>(
        &self,
        f: impl FnMut(&mut Writer<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        self.write_within(None, f)
    }

    /// [`Store::write_revision`] that ends by `deadline` (with PostgreSQL,
    /// each wait and statement; when none is given, the backend's own write
    /// timeout): a write refused for time was not committed.
    pub fn write_within<T, E: Failure>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&mut Writer<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let mut changed = Vec::new();
        let mut run = |tx: &mut dyn Tx| {
            // Every mutation goes through the recording layer; a retried
            // transaction (PostgreSQL) starts its notes over.
            let mut writer = Writer::new(recorded::Recorded::new(tx));
            let out = f(&mut writer);
            changed = writer.into_changed();
            out
        };
        let (value, revision) = match &self.backend {
            Backend::Redb(db) => db.write(&mut run)?,
            Backend::Postgres(db) => db.write(deadline, &mut run)?,
        };
        // Noted before the revision is raised: whoever sees the revision
        // finds what it changed.
        self.changes.note(revision, changed);
        self.revision.fetch_max(revision, Ordering::AcqRel);
        Ok((value, revision))
    }
}
