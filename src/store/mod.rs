//! The store: users, accounts, memberships, invites and caller keys, behind
//! one seam with two backends: an embedded redb file (`redb.rs`, the
//! default) and a PostgreSQL database shared by several replicas (`pg.rs`).
//!
//! A backend provides reads ([`Reads`], [`View`]) and the primitives of one
//! write transaction ([`Tx`]); the rules (a taken id, one accept per invite,
//! the last admin, …) are [`Writer`]'s, written once over those primitives
//! and checked inside the transaction, so both backends enforce exactly the
//! same contract. Every committed write advances the store revision (a
//! number kept by the backend, in the same transaction), which answers and
//! caches are tagged with. Business refusals ([`StoreError`]'s rule
//! variants) are told apart from faults ([`StoreError::is_fault`]): a fault
//! is a 503, never a refusal and never an allow. This module knows nothing
//! about HTTP or Cedar; the role names it is handed are opaque strings.
//!
//! A damaged redb file is never written: it is checked before redb opens it
//! (`check.rs`), and damage found then or later puts the store in a damaged
//! state that refuses every read and write ([`StoreError::Damaged`],
//! [`Store::damage`]).

mod check;
mod overlay;
pub mod pg;
mod records;
pub mod redb;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::redb::FORMAT_VERSION;
pub use check::{check_file, CheckReport, RecordCounts};
pub use records::{Account, AccountKind, ApiKey, Invite, InviteState, Membership, User};

/// An email as stored and compared: trimmed and lowercase.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Everything the store can answer besides success: faults of the file, and
/// the rules it enforces inside a transaction.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data file's folder cannot be created.
    #[error("cannot create the folder `{path}`: {source}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data file cannot be opened or read as a file.
    #[error("cannot open the data file `{path}`: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// Another process (another cedard) holds the file.
    #[error("the data file `{0}` is in use by another process (is another cedard running on it?)")]
    Locked(PathBuf),
    /// The file is damaged (found at open or later): nothing is read from
    /// it or written to it.
    #[error("the data file `{path}` is damaged ({reason}); writes are refused; run `cedard store check --data {path}`")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, as first found.
        reason: String,
    },
    /// The file was written by a newer cedard.
    #[error("the data file `{path}` was written by a newer cedard (data format {found}; this cedard reads format {supported}); refusing to open it")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u64,
        /// The newest this build reads.
        supported: u64,
    },
    /// The file is not a cedard data file.
    #[error("the data file `{path}` is not a cedard data file: {message}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What was found.
        message: String,
    },
    /// redb could not open the file.
    #[error("cannot open the data file `{path}`: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// redb's reason.
        source: Box<::redb::DatabaseError>,
    },
    /// A storage fault while reading or writing.
    #[error("storage error: {0}")]
    Db(Box<::redb::Error>),
    /// A record that does not encode.
    #[error("cannot encode a record for table `{table}`: {message}")]
    Encode {
        /// The table the record was meant for.
        table: &'static str,
        /// What serde said.
        message: String,
    },
    /// A record that does not decode.
    #[error("corrupt record in table `{table}`: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// Sign-up with an id that is taken.
    #[error("the id `{0}` is taken")]
    IdTaken(String),
    /// Sign-up with an email another user has.
    #[error("the email `{0}` belongs to another user")]
    EmailTaken(String),
    /// No such user.
    #[error("no user `{0}`")]
    NoUser(String),
    /// No such account.
    #[error("no account `{0}`")]
    NoAccount(String),
    /// No such caller key.
    #[error("no key `{0}`")]
    NoKey(String),
    /// The user is not a member of the account.
    #[error("`{user}` is not a member of account `{account}`")]
    NotMember {
        /// The account.
        account: String,
        /// The user.
        user: String,
    },
    /// No such pending invite in the account.
    #[error("no pending invite `{invite}` in account `{account}`")]
    NoInvite {
        /// The account.
        account: String,
        /// The invite id.
        invite: String,
    },
    /// The user already belongs to the account.
    #[error("`{user}` is already a member of account `{account}`")]
    AlreadyMember {
        /// The account.
        account: String,
        /// The user.
        user: String,
    },
    /// The change would leave a team without an admin.
    #[error(
        "`{user}` is the last `{role}` of account `{account}`; make another member `{role}` first"
    )]
    LastAdmin {
        /// The account.
        account: String,
        /// The user.
        user: String,
        /// The admin role's name.
        role: String,
    },
    /// Invites need a team account.
    #[error("account `{0}` is a personal account; invites need a team account (convert it first)")]
    NotTeam(String),
    /// Only a personal account can be converted.
    #[error("account `{0}` is already a team account; only a personal account can be converted")]
    NotPersonal(String),
    /// The invite token is unknown, expired, revoked or used: one answer for
    /// all, so that the answer gives no hint which.
    #[error("this invite link is not valid: it may have expired, been revoked or been used")]
    InviteGone(GoneReason),
    /// The invite is bound to another email address.
    #[error("this invite is for another email address")]
    EmailMismatch,
    /// The shared database cannot be reached or failed (a fault: 503).
    #[error("{0}")]
    Unavailable(String),
    /// A consistency requirement this store cannot meet: a revision it has
    /// never committed.
    #[error("the store has not committed revision {wanted} (its newest is {newest})")]
    UnknownRevision {
        /// The revision asked for.
        wanted: u64,
        /// The newest the store has.
        newest: u64,
    },
    /// The invite is bound to the user's email, which is not verified.
    #[error("this invite is bound to an email address; it can be accepted only once that address is verified")]
    EmailUnverified,
}

impl StoreError {
    /// Whether this is a fault of the storage (the file, I/O, a record that
    /// does not decode) rather than a rule the store enforced: a fault is
    /// never an answer about the request, so callers report it as the
    /// store being unavailable.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            StoreError::CreateDir { .. }
                | StoreError::File { .. }
                | StoreError::Locked(_)
                | StoreError::Damaged { .. }
                | StoreError::NewerFormat { .. }
                | StoreError::Foreign { .. }
                | StoreError::Open { .. }
                | StoreError::Db(_)
                | StoreError::Encode { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Unavailable(_)
        )
    }

    /// Whether this error shows the data file itself is damaged: redb
    /// reports corruption or a poisoned lock (left by a panic inside redb),
    /// or a record does not decode. Such an error marks a redb store
    /// damaged.
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } | StoreError::Damaged { .. } => true,
            StoreError::Db(e) => matches!(
                **e,
                ::redb::Error::Corrupted(_) | ::redb::Error::LockPoisoned(_)
            ),
            _ => false,
        }
    }
}

/// The error a write's closure fails with: made from a store error, and
/// saying whether it is one, so that damage met inside a write marks the
/// store whatever error type carries it out.
pub trait WriteError: From<StoreError> {
    /// The store error inside, if this is one.
    fn store_error(&self) -> Option<&StoreError>;
}

impl WriteError for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

/// Why an invite link no longer works: for metrics only. Every reason gets
/// the same answer, so that a link's holder learns nothing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// No live invite has this token (never issued, replaced, used, revoked).
    Unknown,
    /// The invite expired.
    Expired,
    /// Its creator may no longer grant its role (removed, demoted, or the
    /// policies changed).
    CreatorCannotGrant,
    /// Its role is not one of the live schema's roles.
    RoleNotInSchema,
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Serialises a record. Plain structs of strings and integers do not fail to
/// serialise, but if one ever did, the write fails whole rather than storing
/// an empty record.
fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        table,
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
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
    Postgres(pg::PgStore),
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

/// An entity a write changed: what the decision memo must forget when it
/// moves to that write's revision. A user's entity is built from the user
/// and their memberships; an account's from the account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Changed {
    /// `User::"id"`.
    User(String),
    /// `Account::"id"`.
    Account(String),
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
    pub fn open(path: &Path) -> Result<Self> {
        Self::redb(self::redb::RedbStore::open(path)?)
    }

    /// Opens the redb file at `path` for reading only
    /// ([`redb::RedbStore::open_read_only`]): nothing is ever written to it.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        Self::redb(self::redb::RedbStore::open_read_only(path)?)
    }

    /// The facade over an open redb file, at the file's revision. A damaged
    /// file has no revision to read; nothing will be read from it.
    fn redb(db: self::redb::RedbStore) -> Result<Self> {
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
    pub fn connect(url: &str, options: &pg::Options) -> Result<Self> {
        let db = pg::PgStore::connect(url, options)?;
        let revision = db.revision();
        Ok(Self::with(Backend::Postgres(db), revision))
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
    pub fn at_least(&self, wanted: u64) -> Result<u64> {
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
            Err(StoreError::UnknownRevision { wanted, newest })
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
    pub fn write<T>(&self, f: impl FnMut(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.write_with(f)
    }

    /// [`Store::write`] whose `f` may fail with its caller's own error type
    /// (a policy check made inside the transaction, say); store errors
    /// convert into it.
    pub fn write_with<T, E: WriteError>(
        &self,
        f: impl FnMut(&mut Writer<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_revision(f).map(|(v, _)| v)
    }

    /// [`Store::write_with`], also returning the revision the write
    /// committed.
    pub fn write_revision<T, E: WriteError>(
        &self,
        mut f: impl FnMut(&mut Writer<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let mut changed = Vec::new();
        let mut run = |tx: &mut dyn Tx| {
            // A retried transaction (PostgreSQL) starts its notes over.
            changed.clear();
            f(&mut Writer {
                tx,
                changed: &mut changed,
            })
        };
        let (value, revision) = match &self.backend {
            Backend::Redb(db) => db.write(&mut run)?,
            Backend::Postgres(db) => db.write(&mut run)?,
        };
        // Noted before the revision is raised: whoever sees the revision
        // finds what it changed.
        self.changes.note(revision, changed);
        self.revision.fetch_max(revision, Ordering::AcqRel);
        Ok((value, revision))
    }
}

/// The operations of one write transaction: the rules of the directory,
/// checked against the transaction's own view, so concurrent operations
/// cannot both pass a check that only one may pass.
pub struct Writer<'t> {
    tx: &'t mut dyn Tx,
    /// The entities this write changes, noted as it goes.
    changed: &'t mut Vec<Changed>,
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
    // The writes that change what an entity is built from go through these,
    // which note the entity for the decision memo (see `Changed`).

    fn put_user(&mut self, user: &User) -> Result<()> {
        self.changed.push(Changed::User(user.id.clone()));
        self.tx.put_user(user)
    }

    fn put_account(&mut self, account: &Account) -> Result<()> {
        self.changed.push(Changed::Account(account.id.clone()));
        self.tx.put_account(account)
    }

    fn put_membership(&mut self, account: &str, user: &str, m: &Membership) -> Result<()> {
        self.changed.push(Changed::User(user.to_owned()));
        self.tx.put_membership(account, user, m)
    }

    fn delete_membership(&mut self, account: &str, user: &str) -> Result<()> {
        self.changed.push(Changed::User(user.to_owned()));
        self.tx.delete_membership(account, user)
    }

    /// The user `id`, if stored.
    pub fn user(&self, id: &str) -> Result<Option<User>> {
        self.tx.user(id)
    }

    /// The account `id`, if stored.
    pub fn account(&self, id: &str) -> Result<Option<Account>> {
        self.tx.account(id)
    }

    /// The role `user` holds in `account`, if a member.
    pub fn role_in(&self, account: &str, user: &str) -> Result<Option<String>> {
        Ok(self.tx.membership(account, user)?.map(|m| m.role))
    }

    /// Stores a new caller key. Ids are random; a clash is refused rather
    /// than overwriting a key.
    pub fn create_key(&mut self, key: &ApiKey) -> Result<()> {
        if self.tx.key(&key.id)?.is_some() {
            return Err(StoreError::IdTaken(key.id.clone()));
        }
        self.tx.put_key(key)
    }

    /// Revokes the key `id` at `now` (revoking a revoked key keeps the first
    /// time). An unknown id is `NoKey`.
    pub fn revoke_key(&mut self, id: &str, now: i64) -> Result<ApiKey> {
        let Some(mut key) = self.tx.key(id)? else {
            return Err(StoreError::NoKey(id.to_owned()));
        };
        key.revoked_at.get_or_insert(now);
        self.tx.put_key(&key)?;
        Ok(key)
    }

    /// Signs a user up: stores the user and their personal account (whose id
    /// is the user's id) with the user holding `owner_role` in it.
    pub fn sign_up(&mut self, user: &User, owner_role: &str) -> Result<Account> {
        if self.tx.user(&user.id)?.is_some() || self.tx.account(&user.id)?.is_some() {
            return Err(StoreError::IdTaken(user.id.clone()));
        }
        self.import_user(user)?;
        let account = Account {
            id: user.id.clone(),
            name: user.name.clone().unwrap_or_else(|| user.id.clone()),
            kind: AccountKind::Personal,
            owner: user.id.clone(),
            created_at: user.created_at,
        };
        self.put_account(&account)?;
        self.put_membership(
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
    pub fn convert(&mut self, account: &str, name: &str) -> Result<Account> {
        let mut acc = self
            .tx
            .account(account)?
            .ok_or_else(|| StoreError::NoAccount(account.to_owned()))?;
        if acc.kind != AccountKind::Personal {
            return Err(StoreError::NotPersonal(account.to_owned()));
        }
        acc.kind = AccountKind::Team;
        acc.name = name.to_owned();
        self.put_account(&acc)?;
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

    fn member(&self, account: &str, user: &str) -> Result<Membership> {
        self.tx
            .membership(account, user)?
            .ok_or_else(|| StoreError::NotMember {
                account: account.to_owned(),
                user: user.to_owned(),
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
    ) -> Result<Membership> {
        let mut m = self.member(account, user)?;
        if m.role == admin_role && role != admin_role && self.admins(account, admin_role)? <= 1 {
            return Err(StoreError::LastAdmin {
                account: account.to_owned(),
                user: user.to_owned(),
                role: admin_role.to_owned(),
            });
        }
        m.role = role.to_owned();
        self.put_membership(account, user, &m)?;
        Ok(m)
    }

    /// Removes a member. Removing the last holder of `admin_role` is refused.
    pub fn remove_member(&mut self, account: &str, user: &str, admin_role: &str) -> Result<()> {
        let m = self.member(account, user)?;
        if m.role == admin_role && self.admins(account, admin_role)? <= 1 {
            return Err(StoreError::LastAdmin {
                account: account.to_owned(),
                user: user.to_owned(),
                role: admin_role.to_owned(),
            });
        }
        self.delete_membership(account, user)
    }

    /// Stores a user as given, without the personal account sign-up
    /// creates (for imports, seeding and benchmarks).
    /// Its email must be free (normalised by the caller); it is indexed.
    pub fn import_user(&mut self, user: &User) -> Result<()> {
        match self.tx.email_holder(&user.email)? {
            Some(id) if id != user.id => Err(StoreError::EmailTaken(user.email.clone())),
            _ => self.put_user(user),
        }
    }

    /// Records whether the user's email is verified.
    pub fn set_email_verified(&mut self, id: &str, verified: bool) -> Result<User> {
        let mut user = self
            .tx
            .user(id)?
            .ok_or_else(|| StoreError::NoUser(id.to_owned()))?;
        user.email_verified = verified;
        self.put_user(&user)?;
        Ok(user)
    }

    /// Stores an account as given (for imports, seeding and benchmarks).
    pub fn import_account(&mut self, account: &Account) -> Result<()> {
        self.put_account(account)
    }

    /// Adds a member directly, without an invite (for imports, seeding and
    /// benchmarks; the API adds members only through invites).
    pub fn add_member(&mut self, account: &str, user: &str, role: &str, since: i64) -> Result<()> {
        if self.tx.membership(account, user)?.is_some() {
            return Err(StoreError::AlreadyMember {
                account: account.to_owned(),
                user: user.to_owned(),
            });
        }
        self.put_membership(
            account,
            user,
            &Membership {
                role: role.to_owned(),
                since,
            },
        )
    }

    /// Stores an invite as given, its token live if it is pending (for
    /// copying a directory between backends).
    pub fn import_invite(&mut self, invite: &Invite) -> Result<()> {
        self.tx.put_invite(invite)?;
        if matches!(invite.state, InviteState::Pending) {
            self.tx.set_token(&invite.token_sha256, &invite.id)?;
        }
        Ok(())
    }

    /// Stores a caller key as given (for copying a directory).
    pub fn import_key(&mut self, key: &ApiKey) -> Result<()> {
        self.tx.put_key(key)
    }

    /// Stores a new invite whose token hashes to `invite.token_sha256`. The
    /// account must be a team account.
    pub fn create_invite(&mut self, invite: &Invite) -> Result<()> {
        let acc = self
            .tx
            .account(&invite.account)?
            .ok_or_else(|| StoreError::NoAccount(invite.account.clone()))?;
        if acc.kind != AccountKind::Team {
            return Err(StoreError::NotTeam(acc.id));
        }
        self.tx.put_invite(invite)?;
        self.tx.set_token(&invite.token_sha256, &invite.id)
    }

    /// The invite `id` of `account` if it is still pending at `now`.
    fn pending_invite(&self, account: &str, id: &str, now: i64) -> Result<Invite> {
        match self.tx.invite(id)? {
            Some(i) if i.account == account && i.is_pending(now) => Ok(i),
            _ => Err(StoreError::NoInvite {
                account: account.to_owned(),
                invite: id.to_owned(),
            }),
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
    ) -> Result<Invite> {
        let mut invite = self.pending_invite(account, id, now)?;
        self.tx.clear_token(&invite.token_sha256)?;
        invite.token_sha256 = new_sha256.to_owned();
        self.tx.put_invite(&invite)?;
        self.tx.set_token(new_sha256, &invite.id)?;
        Ok(invite)
    }

    /// Revokes a pending invite; its token stops working.
    pub fn revoke(&mut self, account: &str, id: &str, now: i64) -> Result<Invite> {
        let mut invite = self.pending_invite(account, id, now)?;
        self.tx.clear_token(&invite.token_sha256)?;
        invite.state = InviteState::Revoked { at: now };
        self.tx.put_invite(&invite)?;
        Ok(invite)
    }

    /// Accepts the invite whose token hashes to `sha256` for `user`: marks
    /// it used and adds the membership, both in this transaction. Unknown,
    /// expired, revoked and used tokens all fail with
    /// [`StoreError::InviteGone`].
    pub fn accept(&mut self, sha256: &str, user: &str, now: i64) -> Result<Invite> {
        let mut invite = self.live_invite(sha256, now)?;
        let joining = self
            .tx
            .user(user)?
            .ok_or_else(|| StoreError::NoUser(user.to_owned()))?;
        if let Some(bound) = &invite.email {
            if normalize_email(bound) != normalize_email(&joining.email) {
                return Err(StoreError::EmailMismatch);
            }
            if !joining.email_verified {
                return Err(StoreError::EmailUnverified);
            }
        }
        if self.tx.membership(&invite.account, user)?.is_some() {
            return Err(StoreError::AlreadyMember {
                account: invite.account.clone(),
                user: user.to_owned(),
            });
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
    /// fail with [`StoreError::InviteGone`].
    pub fn live_invite(&self, sha256: &str, now: i64) -> Result<Invite> {
        let Some(id) = self.tx.token_invite(sha256)? else {
            return Err(StoreError::InviteGone(GoneReason::Unknown));
        };
        let Some(invite) = self.tx.invite(&id)? else {
            return Err(StoreError::InviteGone(GoneReason::Unknown));
        };
        if !invite.is_pending(now) || invite.token_sha256 != sha256 {
            let expired = matches!(invite.state, InviteState::Pending) && now >= invite.expires_at;
            return Err(StoreError::InviteGone(if expired {
                GoneReason::Expired
            } else {
                GoneReason::Unknown
            }));
        }
        Ok(invite)
    }
}
