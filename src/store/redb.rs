//! The embedded backend: the directory in one redb file.
//!
//! Every write is one redb write transaction committed with
//! [`Durability::Immediate`], so a write acknowledged to a client is on disk.
//! redb admits one writer at a time and lets reads run alongside (MVCC); the
//! store revision is kept in the `meta` table and raised in every write
//! transaction, so it survives restarts. Records are JSON; the tables below
//! hold the indexes point lookups need.
//!
//! A damaged file is never written. [`RedbStore::open`] checks the file
//! first (`check.rs`: redb's integrity check on a copy-on-write view, then
//! every record decoded); a damaged file is not even opened by redb, which
//! would write its header. Damage met later (redb reports corruption, a
//! record does not decode, redb panics on a garbage page) marks the store
//! damaged for good. A damaged store refuses every read and every write
//! with [`StoreError::Damaged`], a fault: stored facts that may be garbage
//! are never answered from.

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use redb::{
    Database, DatabaseError, Durability, ReadOnlyTable, ReadTransaction, ReadableTable,
    TableDefinition, WriteTransaction,
};

use super::check::{self, lock};
use super::overlay::Overlay;
use super::{
    decode, encode, normalize_email, Account, ApiKey, Invite, Membership, Reads, Result,
    StoreError, Tx, User, View, WriteError,
};

/// The data format this build reads and writes. A file with a higher number
/// was written by a newer cedard and is refused, never overwritten.
///
/// Format 2 added caller keys. A format-1 file is upgraded in place at open
/// (the `keys` table is created and the version raised in one transaction),
/// so that an older cedard, which would not enforce the keys, refuses it.
///
/// Format 3 added the email index (emails are unique) and
/// `User.email_verified`. An older file is upgraded at open in the same way:
/// stored emails are normalised and indexed; where two users share an
/// address, the first by id holds it in the index.
pub const FORMAT_VERSION: u64 = 3;

/// `format` → the data format version of the file.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// User id → [`User`] (JSON).
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Account id → [`Account`] (JSON).
pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// (account id, user id) → [`Membership`] (JSON): who belongs to an account.
pub(super) const MEMBERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("memberships");
/// (user id, account id) → role: the index a decision reads to find a user's
/// roles without scanning the memberships.
pub(super) const USER_ACCOUNTS: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("user_accounts");
/// Invite id → [`Invite`] (JSON).
pub(super) const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
/// SHA-256 of a live invite token → invite id. Only pending invites have an
/// entry; the token itself is never stored.
pub(super) const INVITE_TOKENS: TableDefinition<&[u8], &str> =
    TableDefinition::new("invite_tokens");
/// (account id, invite id) → (): the invites of an account, for listing.
pub(super) const ACCOUNT_INVITES: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("account_invites");
/// Key id → [`ApiKey`] (JSON): the caller keys, hashed.
pub(super) const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// Normalised email → user id: one user per address.
pub(super) const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
redb_errors!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The open data file.
#[derive(Debug)]
pub struct RedbStore {
    /// The database; `None` when the file was found damaged at open, so
    /// that redb never opened (nor wrote) it.
    db: Option<Database>,
    /// The file, open and locked, while `db` is `None`: the lock keeps
    /// another cedard from opening a file this one found damaged.
    _held: Option<File>,
    path: PathBuf,
    /// Whether the file is known to be damaged; shared with the read views.
    health: Arc<Health>,
    /// Whether closing checks the file and stamps it sound (see
    /// `check::check_and_stamp`): for a file this store owns and wrote.
    stamp_on_close: bool,
    /// Whether opening checked the file in full (`false` when its stamp
    /// showed the bytes were checked before, or for a read-only view).
    checked: bool,
}

/// Whether the file is known to be damaged. Set once, never cleared: a file
/// found damaged stays refused until an operator replaces it and restarts.
#[derive(Debug)]
struct Health {
    path: PathBuf,
    damage: OnceLock<String>,
}

impl Health {
    /// A file not (yet) known to be damaged.
    fn new(path: &Path) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_path_buf(),
            damage: OnceLock::new(),
        })
    }

    /// Records the damage; the first report is logged (once), later ones
    /// are dropped.
    fn mark(&self, reason: String) {
        let mut first = false;
        self.damage.get_or_init(|| {
            first = true;
            reason
        });
        if first {
            let reason = self.damage.get().map(String::as_str).unwrap_or_default();
            tracing::error!(
                path = %self.path.display(),
                "the data file `{}` is damaged: {reason}; writes are refused and stored facts are not used; \
                 run `cedard store check --data {}` and restore the file from a backup",
                self.path.display(),
                self.path.display(),
            );
        }
    }

    /// The error every operation on a damaged store answers.
    fn error(&self) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            reason: self.damage.get().cloned().unwrap_or_default(),
        }
    }

    /// Refuses once the file is known to be damaged.
    fn refusal(&self) -> Result<()> {
        match self.damage.get() {
            None => Ok(()),
            Some(_) => Err(self.error()),
        }
    }

    /// Runs one read of the file: refused once the file is known damaged;
    /// an error showing damage, or a panic inside redb (which is how redb
    /// meets a page of garbage), marks it damaged. The panic is caught here
    /// so that it cannot take down the request, or the connection, that
    /// happened to read the page.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.refusal()?;
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_damage() => {
                self.mark(e.to_string());
                Err(e)
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                self.mark(format!(
                    "redb panicked while reading it ({})",
                    check::panic_message(panic.as_ref())
                ));
                Err(self.error())
            }
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the data file at `path`, creating its folder. A
    /// file held by another process, written by a newer cedard, or not a
    /// cedard file is refused with a message that says so.
    ///
    /// An existing file is checked first (what [`super::check_file`] does,
    /// without a second open). A damaged file is not refused: the store
    /// opens in the damaged state ([`RedbStore::damage`]), holding the
    /// file's lock, and refuses every read and write, so that a daemon can
    /// keep answering what needs no stored fact and say what is wrong.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| StoreError::File {
                path: path.to_path_buf(),
                source,
            })?;
        lock(&file, path)?;
        let health = Health::new(path);
        // A file that holds exactly the bytes the last clean close found
        // sound (the stamp beside it) is not checked again: start-up then
        // costs one read of the file, not a decode of every record.
        let checked = !check::checked_before(&file, path);
        if checked {
            if let Some(damage) = check::check_locked(&file, path)?.damage {
                health.mark(damage);
                return Ok(Self {
                    db: None,
                    _held: Some(file),
                    path: path.to_path_buf(),
                    health,
                    stamp_on_close: false,
                    checked,
                });
            }
        }
        // redb locks the file again through the same open file, which holds
        // the lock already: no other process can slip in between.
        let db = match Database::builder().create_file(file) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(path.to_path_buf()))
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })
            }
        };
        let store = Self {
            db: Some(db),
            _held: None,
            path: path.to_path_buf(),
            health,
            stamp_on_close: true,
            checked,
        };
        store.check_format()?;
        Ok(store)
    }

    /// Opens the data file at `path` for reading only: a private view in
    /// which nothing written ever reaches the file (see `overlay`), for
    /// tools that look at a store they do not own (`cedard impact --data`).
    /// The file is held with a shared lock while the view lives, so a file a
    /// daemon holds (an exclusive lock) is [`StoreError::Locked`], and no
    /// daemon can start on it meanwhile. A file of an older format is
    /// upgraded in the view only. The file is not checked first (a tool may
    /// run `cedard store check`); damage met while reading is reported as
    /// it is by the daemon.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let file_error = |source| StoreError::File {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(file_error)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(file_error(e)),
        }
        let len = file.metadata().map_err(file_error)?.len();
        if len == 0 {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                message: "the file is empty".into(),
            });
        }
        let health = Health::new(path);
        let db = catch_unwind(AssertUnwindSafe(|| {
            Database::builder().create_with_backend(Overlay::new(file, len))
        }))
        .map_err(|panic| StoreError::Damaged {
            path: path.to_path_buf(),
            reason: format!(
                "redb panicked while opening it ({})",
                check::panic_message(panic.as_ref())
            ),
        })?
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let store = Self {
            db: Some(db),
            _held: None,
            path: path.to_path_buf(),
            health,
            stamp_on_close: false,
            checked: false,
        };
        store.check_format()?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is wrong with the file, if it is known to be damaged (at open,
    /// or since). A damaged store refuses every read and write.
    pub fn damage(&self) -> Option<&str> {
        self.health.damage.get().map(String::as_str)
    }

    /// Whether opening checked the file in full: `false` when the stamp
    /// beside it (written by the last clean close, after a check) showed
    /// that it holds exactly the bytes that check found sound.
    pub fn checked_at_open(&self) -> bool {
        self.checked
    }

    /// `Ok` while the file is not known to be damaged; the error every
    /// operation on a damaged store answers otherwise.
    pub fn sound(&self) -> Result<()> {
        self.health.refusal()
    }

    /// The database, unless the file is known to be damaged.
    fn db(&self) -> Result<&Database> {
        self.health.refusal()?;
        self.db.as_ref().ok_or_else(|| self.health.error())
    }

    /// The revision of the last committed write.
    pub fn revision(&self) -> Result<u64> {
        let db = self.db()?;
        self.health.guard(|| {
            let read = db.begin_read()?;
            let meta = read.open_table(META)?;
            Ok(meta.get("revision")?.map(|v| v.value()).unwrap_or(0))
        })
    }

    /// Reads the format version with a read transaction first, so that a
    /// newer file is refused before anything is written to it; a fresh file
    /// gets the current version and every table.
    fn check_format(&self) -> Result<()> {
        let db = self.db()?;
        let read = db.begin_read()?;
        let found = match read.open_table(META) {
            Ok(meta) => meta.get("format")?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => {
                return Err(StoreError::Foreign {
                    path: self.path.clone(),
                    message: e.to_string(),
                })
            }
        };
        drop(read);
        match found {
            Some(v) if v > FORMAT_VERSION => Err(StoreError::NewerFormat {
                path: self.path.clone(),
                found: v,
                supported: FORMAT_VERSION,
            }),
            Some(v) if v == FORMAT_VERSION => Ok(()),
            Some(v) => {
                // Format 1 and 2: add what they lack (the keys table, the
                // email index) and raise the version, all in one transaction.
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate);
                create_tables(&txn)?;
                if v < 3 {
                    index_emails(&txn)?;
                }
                {
                    let mut meta = txn.open_table(META)?;
                    meta.insert("format", FORMAT_VERSION)?;
                }
                txn.commit()?;
                Ok(())
            }
            None => {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate);
                {
                    let mut meta = txn.open_table(META)?;
                    meta.insert("format", FORMAT_VERSION)?;
                }
                create_tables(&txn)?;
                txn.commit()?;
                Ok(())
            }
        }
    }

    /// A consistent read view: everything read through it comes from one
    /// committed state of the file.
    pub fn read(&self) -> Result<RedbView> {
        let db = self.db()?;
        self.health.guard(|| {
            let txn = db.begin_read()?;
            Ok(RedbView {
                users: txn.open_table(USERS)?,
                accounts: txn.open_table(ACCOUNTS)?,
                user_accounts: txn.open_table(USER_ACCOUNTS)?,
                txn,
                health: self.health.clone(),
            })
        })
    }

    /// Runs `f` in one write transaction that also raises the revision, and
    /// commits it durably ([`Durability::Immediate`]) when `f` succeeds;
    /// when `f` fails nothing is written. Returns `f`'s value and the
    /// revision the write committed.
    ///
    /// A damaged store refuses before a transaction begins. Damage met
    /// inside the transaction (an error showing it, or a panic: after one,
    /// redb's state is unknown) aborts it and marks the store damaged, so
    /// that nothing more is written to the file.
    pub fn write<T, E: WriteError>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let db = self.db()?;
        let out = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = db.begin_write().map_err(StoreError::from)?;
            txn.set_durability(Durability::Immediate);
            let out = {
                let mut w = RedbTx { txn: &txn };
                f(&mut w)
            };
            match out {
                Ok(v) => {
                    let revision = {
                        let mut meta = txn.open_table(META).map_err(StoreError::from)?;
                        let next = meta
                            .get("revision")
                            .map_err(StoreError::from)?
                            .map(|v| v.value())
                            .unwrap_or(0)
                            + 1;
                        meta.insert("revision", next).map_err(StoreError::from)?;
                        next
                    };
                    txn.commit().map_err(StoreError::from)?;
                    Ok((v, revision))
                }
                Err(e) => {
                    txn.abort().map_err(StoreError::from)?;
                    Err(e)
                }
            }
        }));
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if let Some(s) = e.store_error().filter(|s| s.is_damage()) {
                    self.health.mark(s.to_string());
                }
                Err(e)
            }
            Err(panic) => {
                self.health.mark(format!(
                    "a write transaction panicked ({})",
                    check::panic_message(panic.as_ref())
                ));
                Err(self.health.error().into())
            }
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if self.health.damage.get().is_some() {
            if let Some(db) = self.db.take() {
                // redb rewrites the file's header when it closes. A file
                // known to be damaged is not written, not even that: the
                // database is let go without closing (the process's exit
                // releases the file and its lock).
                std::mem::forget(db);
            }
            return;
        }
        if self.stamp_on_close {
            // redb closes the file (writing its header) as it drops; then
            // the closed file is checked, and stamped when sound.
            if let Some(db) = self.db.take() {
                drop(db);
                check::check_and_stamp(&self.path);
            }
        }
    }
}

/// Creates every table the current format has (opening one creates it).
fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(USERS)?;
    txn.open_table(ACCOUNTS)?;
    txn.open_table(MEMBERS)?;
    txn.open_table(USER_ACCOUNTS)?;
    txn.open_table(INVITES)?;
    txn.open_table(INVITE_TOKENS)?;
    txn.open_table(ACCOUNT_INVITES)?;
    txn.open_table(KEYS)?;
    txn.open_table(EMAILS)?;
    Ok(())
}

/// The format-3 upgrade: normalises every stored email and indexes it; of
/// users sharing an address, the first by id holds it in the index.
fn index_emails(txn: &WriteTransaction) -> Result<()> {
    let mut users = txn.open_table(USERS)?;
    let mut emails = txn.open_table(EMAILS)?;
    let mut changed: Vec<User> = Vec::new();
    for item in users.iter()? {
        let (_, v) = item?;
        let mut user: User = decode("users", v.value())?;
        let email = normalize_email(&user.email);
        if emails.get(email.as_str())?.is_none() {
            emails.insert(email.as_str(), user.id.as_str())?;
        }
        if email != user.email {
            user.email = email;
            changed.push(user);
        }
    }
    for user in changed {
        users.insert(user.id.as_str(), encode("users", &user)?.as_slice())?;
    }
    Ok(())
}

/// The keys of `table` after `after`, at most `limit`, in order.
fn ids_after(
    table: &ReadOnlyTable<&'static str, &'static [u8]>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    use std::ops::Bound;
    let range = match after {
        Some(a) => table.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
        None => table.range::<&str>(..)?,
    };
    let mut out = Vec::with_capacity(limit.min(4096));
    for item in range.take(limit) {
        let (k, _) = item?;
        out.push(k.value().to_owned());
    }
    Ok(out)
}

/// A read transaction with the tables decisions need already open.
pub struct RedbView {
    users: ReadOnlyTable<&'static str, &'static [u8]>,
    accounts: ReadOnlyTable<&'static str, &'static [u8]>,
    user_accounts: ReadOnlyTable<(&'static str, &'static str), &'static str>,
    txn: ReadTransaction,
    /// The store's health: every read is guarded by it (see
    /// [`Health::guard`]).
    health: Arc<Health>,
}

impl Reads for RedbView {
    /// The user `id`, if stored.
    fn user(&self, id: &str) -> Result<Option<User>> {
        self.health.guard(|| match self.users.get(id)? {
            Some(v) => Ok(Some(decode("users", v.value())?)),
            None => Ok(None),
        })
    }

    /// Whether the user `id` is stored.
    fn has_user(&self, id: &str) -> Result<bool> {
        self.health.guard(|| Ok(self.users.get(id)?.is_some()))
    }

    /// The account `id`, if stored.
    fn account(&self, id: &str) -> Result<Option<Account>> {
        self.health.guard(|| match self.accounts.get(id)? {
            Some(v) => Ok(Some(decode("accounts", v.value())?)),
            None => Ok(None),
        })
    }

    /// Whether the account `id` is stored.
    fn has_account(&self, id: &str) -> Result<bool> {
        self.health.guard(|| Ok(self.accounts.get(id)?.is_some()))
    }

    /// The `(account, role)` pairs of a user, from the per-user index: a
    /// range over this one user's keys, never a scan.
    fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        self.health.guard(|| {
            let mut out = Vec::new();
            for item in self.user_accounts.range((user, "")..)? {
                let (k, v) = item?;
                let (u, account) = k.value();
                if u != user {
                    break;
                }
                out.push((account.to_owned(), v.value().to_owned()));
            }
            Ok(out)
        })
    }
}

impl View for RedbView {
    /// The members of an account with their roles, ordered by user id.
    fn members(&self, account: &str) -> Result<Vec<(String, Membership)>> {
        self.health.guard(|| {
            let table = self.txn.open_table(MEMBERS)?;
            members_in(&table, account)
        })
    }

    /// How many memberships and invites pending at `now` hold each role: a
    /// scan, for checking a new schema against what is stored.
    fn role_census(&self, now: i64) -> Result<BTreeMap<String, (usize, usize)>> {
        self.health.guard(|| {
            let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for item in self.user_accounts.iter()? {
                let (_, v) = item?;
                out.entry(v.value().to_owned()).or_default().0 += 1;
            }
            let invites = self.txn.open_table(INVITES)?;
            for item in invites.iter()? {
                let (_, v) = item?;
                let invite: Invite = decode("invites", v.value())?;
                if invite.is_pending(now) {
                    out.entry(invite.role).or_default().1 += 1;
                }
            }
            Ok(out)
        })
    }

    /// Calls `f` with every stored user and its `(account, role)` pairs, in
    /// id order: one pass over the users and the per-user index together.
    fn each_user(&self, f: &mut dyn FnMut(User, Vec<(String, String)>)) -> Result<()> {
        // A panic in `f` is the caller's, not the file's: it goes on
        // unwinding once the read is over, without marking the store.
        let mut f = Blameless::new(f);
        let out = self.health.guard(|| {
            let mut index = self.user_accounts.iter()?.peekable();
            for item in self.users.iter()? {
                let (_, v) = item?;
                let user: User = decode("users", v.value())?;
                let mut roles = Vec::new();
                loop {
                    let next = match index.peek() {
                        Some(Ok((k, _))) => k.value().0.cmp(user.id.as_str()),
                        Some(Err(_)) => {
                            if let Some(Err(e)) = index.next() {
                                return Err(e.into());
                            }
                            continue;
                        }
                        None => break,
                    };
                    match next {
                        std::cmp::Ordering::Less => {
                            index.next();
                        }
                        std::cmp::Ordering::Equal => {
                            if let Some(Ok((k, v))) = index.next() {
                                roles.push((k.value().1.to_owned(), v.value().to_owned()));
                            }
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
                if !f.call(|f| f(user, roles)) {
                    break;
                }
            }
            Ok(())
        });
        f.resume();
        out
    }

    /// Up to `limit` user ids after `after` (from the first when `None`), in
    /// id order: the candidates of a subject search, a page at a time.
    fn user_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.health.guard(|| ids_after(&self.users, after, limit))
    }

    /// Up to `limit` account ids after `after`, in id order.
    fn account_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.health
            .guard(|| ids_after(&self.accounts, after, limit))
    }

    /// Calls `f` with every stored account, in id order.
    fn each_account(&self, f: &mut dyn FnMut(Account)) -> Result<()> {
        // As in `each_user`, a panic in `f` is not taken for damage.
        let mut f = Blameless::new(f);
        let out = self.health.guard(|| {
            for item in self.accounts.iter()? {
                let (_, v) = item?;
                let account = decode("accounts", v.value())?;
                if !f.call(|f| f(account)) {
                    break;
                }
            }
            Ok(())
        });
        f.resume();
        out
    }

    /// Every caller key, revoked ones included, ordered by id.
    fn keys(&self) -> Result<Vec<ApiKey>> {
        self.health.guard(|| {
            let table = self.txn.open_table(KEYS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (_, v) = item?;
                out.push(decode("keys", v.value())?);
            }
            Ok(out)
        })
    }

    /// The invites of an account, pending or not, ordered by id.
    fn invites(&self, account: &str) -> Result<Vec<Invite>> {
        self.health.guard(|| {
            let index = self.txn.open_table(ACCOUNT_INVITES)?;
            let invites = self.txn.open_table(INVITES)?;
            let mut out = Vec::new();
            for item in index.range((account, "")..)? {
                let (k, _) = item?;
                let (a, id) = k.value();
                if a != account {
                    break;
                }
                if let Some(v) = invites.get(id)? {
                    out.push(decode("invites", v.value())?);
                }
            }
            Ok(out)
        })
    }

    /// The invite whose token hashes to `sha256`, whatever its state.
    fn invite_by_token(&self, sha256: &str) -> Result<Option<Invite>> {
        self.health.guard(|| {
            let tokens = self.txn.open_table(INVITE_TOKENS)?;
            let Some(id) = tokens.get(hash_key(sha256).as_slice())? else {
                return Ok(None);
            };
            let invites = self.txn.open_table(INVITES)?;
            let found = invites.get(id.value())?;
            match found {
                Some(v) => Ok(Some(decode("invites", v.value())?)),
                None => Ok(None),
            }
        })
    }
}

/// A caller's callback run inside a guarded read: its panic is caught and
/// kept apart, so that the guard does not take it for damage, then resumed.
struct Blameless<F> {
    f: F,
    panic: Option<Box<dyn std::any::Any + Send>>,
}

impl<F> Blameless<F> {
    fn new(f: F) -> Self {
        Self { f, panic: None }
    }

    /// Runs the callback; `false` once it has panicked (the read stops).
    fn call(&mut self, run: impl FnOnce(&mut F)) -> bool {
        match catch_unwind(AssertUnwindSafe(|| run(&mut self.f))) {
            Ok(()) => true,
            Err(panic) => {
                self.panic = Some(panic);
                false
            }
        }
    }

    /// Goes on unwinding the callback's panic, if it panicked.
    fn resume(self) {
        if let Some(panic) = self.panic {
            std::panic::resume_unwind(panic);
        }
    }
}

fn members_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    account: &str,
) -> Result<Vec<(String, Membership)>> {
    let mut out = Vec::new();
    for item in table.range((account, "")..)? {
        let (k, v) = item?;
        let (a, user) = k.value();
        if a != account {
            break;
        }
        out.push((user.to_owned(), decode("memberships", v.value())?));
    }
    Ok(out)
}

/// One write transaction's primitives; the rules over them are
/// [`super::Writer`]'s.
struct RedbTx<'t> {
    txn: &'t WriteTransaction,
}

impl RedbTx<'_> {
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        id: &str,
    ) -> Result<Option<T>> {
        let t = self.txn.open_table(def)?;
        let found = t.get(id)?;
        match found {
            Some(v) => Ok(Some(decode(table, v.value())?)),
            None => Ok(None),
        }
    }

    fn put<T: serde::Serialize>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        id: &str,
        value: &T,
    ) -> Result<()> {
        let mut t = self.txn.open_table(def)?;
        t.insert(id, encode(table, value)?.as_slice())?;
        Ok(())
    }
}

impl Reads for RedbTx<'_> {
    fn user(&self, id: &str) -> Result<Option<User>> {
        self.get(USERS, "users", id)
    }

    fn account(&self, id: &str) -> Result<Option<Account>> {
        self.get(ACCOUNTS, "accounts", id)
    }

    fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        let index = self.txn.open_table(USER_ACCOUNTS)?;
        let mut out = Vec::new();
        for item in index.range((user, "")..)? {
            let (k, v) = item?;
            let (u, account) = k.value();
            if u != user {
                break;
            }
            out.push((account.to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }
}

impl Tx for RedbTx<'_> {
    fn membership(&self, account: &str, user: &str) -> Result<Option<Membership>> {
        let table = self.txn.open_table(MEMBERS)?;
        let found = table.get((account, user))?;
        match found {
            Some(v) => Ok(Some(decode("memberships", v.value())?)),
            None => Ok(None),
        }
    }

    fn members(&self, account: &str) -> Result<Vec<(String, Membership)>> {
        let table = self.txn.open_table(MEMBERS)?;
        members_in(&table, account)
    }

    fn email_holder(&self, email: &str) -> Result<Option<String>> {
        let emails = self.txn.open_table(EMAILS)?;
        let found = emails.get(email)?;
        Ok(found.map(|v| v.value().to_owned()))
    }

    fn put_user(&mut self, user: &User) -> Result<()> {
        let previous: Option<User> = self.user(&user.id)?;
        let mut emails = self.txn.open_table(EMAILS)?;
        if let Some(old) = previous.filter(|old| old.email != user.email) {
            emails.remove(old.email.as_str())?;
        }
        emails.insert(user.email.as_str(), user.id.as_str())?;
        drop(emails);
        self.put(USERS, "users", &user.id, user)
    }

    fn put_account(&mut self, account: &Account) -> Result<()> {
        self.put(ACCOUNTS, "accounts", &account.id, account)
    }

    fn put_membership(&mut self, account: &str, user: &str, m: &Membership) -> Result<()> {
        let mut members = self.txn.open_table(MEMBERS)?;
        members.insert((account, user), encode("memberships", m)?.as_slice())?;
        let mut index = self.txn.open_table(USER_ACCOUNTS)?;
        index.insert((user, account), m.role.as_str())?;
        Ok(())
    }

    fn delete_membership(&mut self, account: &str, user: &str) -> Result<()> {
        let mut members = self.txn.open_table(MEMBERS)?;
        members.remove((account, user))?;
        let mut index = self.txn.open_table(USER_ACCOUNTS)?;
        index.remove((user, account))?;
        Ok(())
    }

    fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.get(KEYS, "keys", id)
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<()> {
        self.put(KEYS, "keys", &key.id, key)
    }

    fn invite(&self, id: &str) -> Result<Option<Invite>> {
        self.get(INVITES, "invites", id)
    }

    fn put_invite(&mut self, invite: &Invite) -> Result<()> {
        self.put(INVITES, "invites", &invite.id, invite)?;
        let mut index = self.txn.open_table(ACCOUNT_INVITES)?;
        index.insert((invite.account.as_str(), invite.id.as_str()), ())?;
        Ok(())
    }

    fn token_invite(&self, sha256: &str) -> Result<Option<String>> {
        let tokens = self.txn.open_table(INVITE_TOKENS)?;
        let found = tokens.get(hash_key(sha256).as_slice())?;
        Ok(found.map(|v| v.value().to_owned()))
    }

    fn set_token(&mut self, sha256: &str, invite: &str) -> Result<()> {
        let mut tokens = self.txn.open_table(INVITE_TOKENS)?;
        tokens.insert(hash_key(sha256).as_slice(), invite)?;
        Ok(())
    }

    fn clear_token(&mut self, sha256: &str) -> Result<()> {
        let mut tokens = self.txn.open_table(INVITE_TOKENS)?;
        tokens.remove(hash_key(sha256).as_slice())?;
        Ok(())
    }
}

/// The token index's key: the SHA-256 as raw bytes (hex decoding of our own
/// encoding; a malformed value maps to its bytes, which match nothing).
fn hash_key(sha256_hex: &str) -> Vec<u8> {
    hex::decode(sha256_hex).unwrap_or_else(|_| sha256_hex.as_bytes().to_vec())
}
