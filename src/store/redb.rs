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
//! with [`Fault::Damaged`], a fault: stored facts that may be garbage
//! are never answered from.
//!
//! A write that fails on I/O (a full disk) is not damage: it starts a write
//! outage (`outage.rs`). redb refuses every later write, and every read of a
//! page it has not cached, once one I/O call has failed, until the file is
//! opened again; so the database is retired, and reads are served meanwhile
//! from a read-only view of the file as it is on disk (an [`Overlay`]),
//! which is also what tells whether a write that failed inside its commit
//! reached the disk. [`RedbStore::recover`] ends the outage: once the
//! filesystem has room, and every read of the retired database has
//! finished, the store drops it, opens the file again through the same
//! checked path as at start, and commits a probe write.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use redb::{
    Database, DatabaseError, Durability, ReadOnlyTable, ReadTransaction, ReadableTable,
    TableDefinition, WriteTransaction,
};

use super::check::{self, lock};
use super::outage::{Outages, WriteOutage};
use super::overlay::Overlay;
use super::{
    decode, encode, normalize_email, Account, ApiKey, Failure, Fault, Invite, Membership,
    OpenError, Reads, Result, Tx, User, View,
};

pub use super::tables::FORMAT_VERSION;
use super::tables::{
    private_file, ACCOUNTS, ACCOUNT_INVITES, EMAILS, INVITES, INVITE_TOKENS, KEYS, MEMBERS, META,
    USERS, USER_ACCOUNTS,
};

/// A redb error as the backend-neutral fault it is: an I/O failure (not
/// damage: a full disk recovers), corruption (damage), or another failure
/// of the engine.
fn fault(e: redb::Error) -> Fault {
    match e {
        redb::Error::Io(e) => Fault::Io(e.to_string()),
        e @ redb::Error::PreviousIo => Fault::Io(e.to_string()),
        redb::Error::Corrupted(message) => Fault::Corrupt {
            what: "data file".into(),
            message,
        },
        e @ redb::Error::LockPoisoned(_) => Fault::Corrupt {
            what: "data file".into(),
            message: e.to_string(),
        },
        e => Fault::Engine(e.to_string()),
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Self {
                fault(e.into())
            }
        }

        impl From<$t> for OpenError {
            fn from(e: $t) -> Self {
                OpenError::Fault(fault(e.into()))
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

/// How long [`RedbStore::recover`] waits for the reads of a retired
/// database to finish before it gives up until the next try. Reads are short
/// (one request's), so this is only reached by one that hangs.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How much a scratch file must take on the data file's filesystem before a
/// recovery lets go of anything: a full disk fails here, cheaply, rather
/// than after the file was closed, checked and repaired for nothing.
const ROOM_BYTES: usize = 1 << 20;

/// The open data file.
#[derive(Debug)]
pub struct RedbStore {
    /// The database reads and writes go through; swapped when a write
    /// outage begins and when it ends.
    serving: RwLock<Serving>,
    /// The file, open and locked, while no database of this store holds it:
    /// the file found damaged (at open or at a reopen), or between two tries
    /// to reopen it during an outage. The lock keeps another cedard from
    /// opening a file this one found damaged, or is about to reopen.
    held: Mutex<Option<File>>,
    path: PathBuf,
    /// Whether the file is known to be damaged; shared with the read views.
    health: Arc<Health>,
    /// The write outage under way, if writes cannot commit now.
    outages: Outages,
    /// Held by each write from before its transaction begins until its
    /// failure, if it fails, is dealt with: redb lets the next writer in as
    /// soon as a commit fails, and after a failed commit redb must not be
    /// asked to commit again (it asserts), so the next writer must find the
    /// outage already begun.
    writing: Mutex<()>,
    /// One outage start or recovery at a time; it holds the databases
    /// retired by outages, which the store drops itself once nothing reads
    /// them (so that no late reader is left to close one).
    recovery: Mutex<Vec<Arc<Database>>>,
    /// Whether this store opened the file for writing (not a read-only
    /// view, nor a file found damaged at open): only then does an I/O
    /// failure start a write outage that a reopen ends, and closing check
    /// the file and stamp it sound (see `check::check_and_stamp`).
    owned: bool,
    /// Whether opening checked the file in full (`false` when its stamp
    /// showed the bytes were checked before, or for a read-only view).
    checked: bool,
}

/// The database in service, and what it is.
#[derive(Debug)]
struct Serving {
    /// `None` when the file was found damaged at open (redb never opened it,
    /// nor wrote it), or while one database is swapped for another.
    db: Option<Arc<Database>>,
    /// Whether `db` has the file open for writing; `false` for the read-only
    /// view that serves reads during a write outage.
    writable: bool,
    /// Counts the times the file was opened for writing, so that a write
    /// failing on a database already retired does not start a second outage.
    generation: u64,
}

/// What opening a locked file found.
enum Opened {
    /// The file is sound, and open.
    Database(Database),
    /// The check found it damaged: redb has not opened it. The file stays
    /// locked.
    Damaged { file: File, reason: String },
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
    fn error(&self) -> Fault {
        Fault::Damaged {
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
    ///
    /// The file holds emails and names: a folder cedard creates is `0700`
    /// and a file it creates `0600`, whatever the umask; an existing file
    /// that others may read is warned about, not changed.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private_dir(parent).map_err(|source| OpenError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let file = lock_file(path)?;
        warn_if_shared(&file, path);
        let health = Health::new(path);
        let (opened, checked) = Self::open_locked(file, path)?;
        let store = match opened {
            Opened::Damaged { file, reason } => {
                health.mark(reason);
                return Ok(Self::with(path, health, None, Some(file), false, checked));
            }
            Opened::Database(db) => Self::with(path, health, Some(db), None, true, checked),
        };
        store.check_format()?;
        Ok(store)
    }

    /// Opens the open, locked data `file` (found at `path`) with redb,
    /// checking it first unless its stamp shows it holds exactly the bytes
    /// the last clean close found sound (start-up then costs one read of
    /// the file, not a decode of every record). Also says whether it was
    /// checked. The path of [`RedbStore::open`], and of a reopen after a
    /// write outage.
    fn open_locked(file: File, path: &Path) -> Result<(Opened, bool), OpenError> {
        let checked = !check::checked_before(&file, path);
        if checked {
            if let Some(reason) = check::check_locked(&file, path)?.damage {
                return Ok((Opened::Damaged { file, reason }, checked));
            }
        }
        // redb locks the file again through the same open file, which holds
        // the lock already: no other process can slip in between.
        match Database::builder().create_file(file) {
            Ok(db) => Ok((Opened::Database(db), checked)),
            Err(DatabaseError::DatabaseAlreadyOpen) => Err(OpenError::Locked(path.to_path_buf())),
            Err(source) => Err(OpenError::Engine {
                path: path.to_path_buf(),
                message: source.to_string(),
            }),
        }
    }

    fn with(
        path: &Path,
        health: Arc<Health>,
        db: Option<Database>,
        held: Option<File>,
        owned: bool,
        checked: bool,
    ) -> Self {
        Self {
            serving: RwLock::new(Serving {
                writable: db.is_some(),
                db: db.map(Arc::new),
                generation: 0,
            }),
            held: Mutex::new(held),
            path: path.to_path_buf(),
            health,
            outages: Outages::default(),
            writing: Mutex::new(()),
            recovery: Mutex::new(Vec::new()),
            owned,
            checked,
        }
    }

    /// Opens the data file at `path` for reading only: a private view in
    /// which nothing written ever reaches the file (see `overlay`), for
    /// tools that look at a store they do not own (`cedard impact --data`).
    /// The file is held with a shared lock while the view lives, so a file a
    /// daemon holds (an exclusive lock) is [`OpenError::Locked`], and no
    /// daemon can start on it meanwhile. A file of an older format is
    /// upgraded in the view only. The file is not checked first (a tool may
    /// run `cedard store check`); damage met while reading is reported as
    /// it is by the daemon.
    pub fn open_read_only(path: &Path) -> Result<Self, OpenError> {
        let file_error = |source| OpenError::File {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(file_error)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(file_error(e)),
        }
        let len = file.metadata().map_err(file_error)?.len();
        if len == 0 {
            return Err(OpenError::Foreign {
                path: path.to_path_buf(),
                message: "the file is empty".into(),
            });
        }
        let health = Health::new(path);
        let db = open_overlay(file, len, path)?;
        let store = Self::with(path, health, Some(db), None, false, false);
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

    /// The write outage under way, if writes cannot commit now (see
    /// [`RedbStore::recover`]). Reads are still answered, from what is on
    /// disk.
    pub fn write_outage(&self) -> Option<WriteOutage> {
        self.outages.current()
    }

    fn serving(&self) -> std::sync::RwLockReadGuard<'_, Serving> {
        // Nothing that can panic runs under this lock (no database is
        // opened, used or dropped under it).
        self.serving.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn serving_mut(&self) -> std::sync::RwLockWriteGuard<'_, Serving> {
        self.serving.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn retired(&self) -> MutexGuard<'_, Vec<Arc<Database>>> {
        self.recovery.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store, for messages.
    fn describe(&self) -> String {
        format!("the data file `{}`", self.path.display())
    }

    /// The database reads go through (during a write outage, the read-only
    /// view of the file), unless the file is known to be damaged.
    fn db(&self) -> Result<Arc<Database>> {
        self.health.refusal()?;
        let db = self.serving().db.clone();
        db.ok_or_else(|| {
            self.health.refusal().err().unwrap_or_else(|| {
                Fault::Unavailable(format!(
                    "{} cannot be read now: writes to it failed, and it is being opened again",
                    self.describe()
                ))
            })
        })
    }

    /// The revision of the last committed write.
    pub fn revision(&self) -> Result<u64> {
        let db = self.db()?;
        self.health.guard(|| stored_revision(&db))
    }

    /// Reads the format version with a read transaction first, so that a
    /// newer file is refused before anything is written to it; a fresh file
    /// gets the current version and every table.
    fn check_format(&self) -> Result<(), OpenError> {
        check_format(&*self.db()?, &self.path)
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
                _db: Arc::clone(&db),
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
    ///
    /// An I/O failure starts a write outage, during which writes are refused
    /// ([`Fault::WriteOutage`]) unless this one can end it first. A
    /// commit that fails may still have reached the disk: the file as it is
    /// on disk (what a reopen will find) tells, and the write answers as
    /// committed, or with its error (not committed), or, when the file
    /// cannot be read, [`Fault::OutcomeUnknown`].
    pub fn write<T, E: Failure>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        // See `writing`: held until a failure is dealt with.
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let (db, generation) = self.writable()?;
        let ended = catch_unwind(AssertUnwindSafe(|| transact(&db, &mut f)));
        match ended {
            Ok(Ended::Committed(value, revision)) => Ok((value, revision)),
            Ok(Ended::Refused(e)) => {
                match e.fault() {
                    Some(s) if s.is_damage() => self.health.mark(s.to_string()),
                    Some(s) if is_io(s) && self.owned => self.begin_outage(generation, s),
                    _ => {}
                }
                Err(e)
            }
            Ok(Ended::CommitFailed {
                value,
                revision,
                error,
            }) => {
                if error.is_damage() {
                    self.health.mark(error.to_string());
                    return Err(error.into());
                }
                if !is_io(&error) || !self.owned {
                    return Err(error.into());
                }
                self.begin_outage(generation, &error);
                // The write holds the retired database (`db`), so no reopen
                // can happen before the view of the file answers.
                match self.view_revision(generation) {
                    Some(on_disk) if on_disk == revision => {
                        tracing::warn!(
                            revision,
                            "a write failed as it committed ({error}) but reached the disk: answered as committed"
                        );
                        Ok((value, revision))
                    }
                    Some(on_disk) if on_disk < revision => {
                        tracing::warn!(
                            revision,
                            "a write failed as it committed ({error}) and did not reach the disk: answered as not committed"
                        );
                        Err(error.into())
                    }
                    _ => {
                        tracing::error!(
                            revision,
                            "a write failed as it committed ({error}) and the file cannot be read to tell whether it reached the disk: answered as possibly committed"
                        );
                        self.outages.note_unknown();
                        Err(Fault::OutcomeUnknown {
                            reason: error.to_string(),
                        }
                        .into())
                    }
                }
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

    /// The database writes go through, and its generation. During a write
    /// outage the write first tries to end it, without waiting: a caller
    /// holding a read view of its own (every management operation does)
    /// keeps the retired database open, and then only the background retry
    /// ([`RedbStore::recover`]) can end it, once that view is gone. Not
    /// either after a write whose outcome is unknown: that one may have
    /// moved the revision, which only [`super::Store::recover`] reads
    /// afresh.
    fn writable(&self) -> Result<(Arc<Database>, u64)> {
        self.health.refusal()?;
        if self.outages.current().is_some() && !self.outages.has_unknown() {
            if let Ok(mut retired) = self.recovery.try_lock() {
                if let Err(e) = self.recover_locked(&mut retired, Duration::ZERO) {
                    tracing::debug!("a write could not end the write outage: {e}");
                }
            }
        }
        let serving = self.serving();
        match &serving.db {
            Some(db) if serving.writable => Ok((db.clone(), serving.generation)),
            _ => Err(self.refusal()),
        }
    }

    /// What a write answers during a write outage: nothing was written.
    fn refusal(&self) -> Fault {
        if let Err(damaged) = self.health.refusal() {
            return damaged;
        }
        Fault::WriteOutage {
            reason: self
                .outages
                .current()
                .map(|o| o.reason)
                .unwrap_or_else(|| "the data file is being opened again".into()),
        }
    }

    /// Starts a write outage because a write on the database of
    /// `generation` failed on I/O: that database is retired (redb will not
    /// write again through it, nor read what it has not cached), and reads
    /// are served from a view of the file as it is on disk. A failure on a
    /// database already retired changes nothing.
    fn begin_outage(&self, generation: u64, error: &Fault) {
        let mut retired = self.retired();
        let old = {
            let mut serving = self.serving_mut();
            if !serving.writable || serving.generation != generation {
                return;
            }
            serving.writable = false;
            serving.db.take()
        };
        self.outages.begin(&self.describe(), error.to_string());
        retired.extend(old);
        if let Err(e) = self.serve_view() {
            tracing::warn!(
                "{} cannot be read while its writes fail ({e}): stored facts are unavailable (503) until it is open again",
                self.describe()
            );
        }
    }

    /// Serves reads, while writes cannot commit, from a read-only view of
    /// the file as it is on disk ([`Overlay`]: redb's repair stays in
    /// memory), which is what a reopen, or a restart, will find. redb writes
    /// nothing more through a database whose I/O failed, so the file does not
    /// change under the view until a reopen, which first takes it away.
    fn serve_view(&self) -> Result<(), OpenError> {
        let file = File::open(&self.path).map_err(|source| OpenError::File {
            path: self.path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| OpenError::File {
                path: self.path.clone(),
                source,
            })?
            .len();
        let view = Arc::new(open_overlay(file, len, &self.path)?);
        let mut serving = self.serving_mut();
        if serving.db.is_none() {
            serving.db = Some(view);
        }
        Ok(())
    }

    /// The revision of the file as it is on disk, read through the view
    /// serving the outage of `generation`; `None` when it cannot be read.
    fn view_revision(&self, generation: u64) -> Option<u64> {
        let view = {
            let serving = self.serving();
            if serving.writable || serving.generation != generation {
                return None;
            }
            serving.db.clone()?
        };
        self.health.guard(|| stored_revision(&view)).ok()
    }

    /// Tries to end a write outage now; `Ok` at once when there is none, or
    /// once writes commit again. The filesystem must have room (1 MiB on a
    /// scratch file beside the data file); then reads are held off while
    /// those of the retired database finish (up to two seconds), the store
    /// drops it, opens the file again through the same checked path as
    /// [`RedbStore::open`], and commits a probe write (the time, under
    /// `meta`'s `write_probe`; the revision does not move). Until all of that
    /// succeeds the outage goes on, and reads are served from the view of
    /// the file again.
    pub fn recover(&self) -> Result<()> {
        let mut retired = self.retired();
        self.recover_locked(&mut retired, DRAIN_WAIT)
            .map_err(|e| match e {
                OpenError::Fault(f) => f,
                other => Fault::Engine(other.to_string()),
            })
    }

    fn recover_locked(
        &self,
        retired: &mut Vec<Arc<Database>>,
        wait: Duration,
    ) -> Result<(), OpenError> {
        self.health.refusal()?;
        if self.outages.current().is_none() || self.serving().writable {
            return Ok(());
        }
        // Whether anyone but the store holds the view or a retired database.
        let in_use = |view: Option<&Arc<Database>>| {
            retired
                .iter()
                .chain(view)
                .any(|db| Arc::strong_count(db) > 1)
        };
        // Asked not to wait (by a write), do nothing while anyone reads: the
        // background retry waits.
        if wait.is_zero() && in_use(self.serving().db.as_ref()) {
            return Err(Fault::WriteOutage {
                reason: "the retired database is still being read".into(),
            }
            .into());
        }
        if let Err(e) = room_to_write(&self.path) {
            return Err(Fault::WriteOutage {
                reason: format!("no room to write on the filesystem yet ({e})"),
            }
            .into());
        }
        // New reads are refused (503) from here, so that the view and the
        // retired database can drain.
        let view = self.serving_mut().db.take();
        let deadline = Instant::now() + wait;
        while in_use(view.as_ref()) {
            if Instant::now() >= deadline {
                let mut serving = self.serving_mut();
                if serving.db.is_none() {
                    serving.db = view;
                }
                return Err(Fault::WriteOutage {
                    reason: format!("reads of the retired database did not finish within {wait:?}"),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The store closes them itself, now that nothing else holds them.
        drop(view);
        retired.clear();
        match self.reopen() {
            Ok(db) => {
                {
                    let mut serving = self.serving_mut();
                    serving.db = Some(Arc::new(db));
                    serving.writable = true;
                    serving.generation += 1;
                }
                self.outages.end(&self.describe());
                Ok(())
            }
            Err(e) => {
                let damaged = self.health.refusal().is_err();
                if !damaged && !matches!(e, OpenError::Locked(_)) {
                    if let Err(view) = self.serve_view() {
                        tracing::debug!("cannot serve reads from the data file: {view}");
                    }
                }
                Err(e)
            }
        }
    }

    /// Opens the file again as [`RedbStore::open`] does (locked, checked
    /// unless stamped, its format read) and commits a probe write. Between
    /// failed tries, the file stays locked (`held`). A file found damaged
    /// marks the store damaged.
    fn reopen(&self) -> Result<Database, OpenError> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let file = match held {
            Some(file) => file,
            None => lock_file(&self.path)?,
        };
        // A second handle on the same open file: redb unlocks the file when
        // the database it opened closes, and this takes the lock back for the
        // next try.
        let keep = file.try_clone();
        // A panic inside redb (a page of garbage the check missed) is damage,
        // as it is when a read meets one.
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<_, OpenError> {
            match Self::open_locked(file, &self.path)? {
                (Opened::Damaged { file, reason }, _) => Ok(Err((file, reason))),
                (Opened::Database(db), _) => {
                    check_format(&db, &self.path)?;
                    probe(&db)?;
                    Ok(Ok(db))
                }
            }
        }));
        let error = match opened {
            Ok(Ok(Ok(db))) => return Ok(db),
            Ok(Ok(Err((file, reason)))) => {
                self.health.mark(reason);
                *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
                return Err(self.health.error().into());
            }
            Ok(Err(e)) => e,
            Err(panic) => {
                self.health.mark(format!(
                    "redb panicked while opening it again ({})",
                    check::panic_message(panic.as_ref())
                ));
                self.health.error().into()
            }
        };
        if let Ok(keep) = keep {
            if lock(&keep, &self.path).is_ok() {
                *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(keep);
            }
        }
        Err(error)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        let serving = self
            .serving
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let db = serving.db.take();
        let writable = serving.writable;
        let retired = std::mem::take(
            self.recovery
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if self.health.damage.get().is_some() {
            // redb rewrites the file's header when it closes. A file known to
            // be damaged is not written, not even that: the databases are
            // let go without closing (the process's exit releases the file
            // and its lock).
            std::mem::forget(db);
            std::mem::forget(retired);
            return;
        }
        // Databases retired by a write outage write nothing as they close
        // (redb refuses after an I/O failure), nor does the view.
        drop(retired);
        drop(db);
        // A file closed in a write outage was not closed cleanly: it is not
        // stamped, and the next start checks it in full.
        if self.owned && writable {
            // redb closed the file (writing its header) as the database
            // dropped; the closed file is checked, and stamped when sound.
            check::check_and_stamp(&self.path);
        }
    }
}

/// Creates `dir` and its missing parents, each one created `0700`.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Warns, once at open, when users other than the owner may read or write
/// the data file (emails and names are in it).
fn warn_if_shared(file: &File, path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = file.metadata() {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the data file can be read by users other than its owner (mode {mode:o}); it holds emails and names: `chmod 600` it"
                );
            }
        }
    }
}

/// Opens (or creates, `0600`) the data file and takes its lock, without
/// waiting.
fn lock_file(path: &Path) -> Result<File, OpenError> {
    let file = private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| OpenError::File {
            path: path.to_path_buf(),
            source,
        })?;
    lock(&file, path)?;
    Ok(file)
}

/// Opens a copy-on-write view of `file` (`len` bytes) with redb: nothing
/// redb writes reaches the file. A panic inside redb (a page of garbage) is
/// an error, not a crash.
fn open_overlay(file: File, len: u64, path: &Path) -> Result<Database, OpenError> {
    catch_unwind(AssertUnwindSafe(|| {
        Database::builder().create_with_backend(Overlay::new(file, len))
    }))
    .map_err(|panic| Fault::Damaged {
        path: path.to_path_buf(),
        reason: format!(
            "redb panicked while opening it ({})",
            check::panic_message(panic.as_ref())
        ),
    })?
    .map_err(|source| OpenError::Engine {
        path: path.to_path_buf(),
        message: source.to_string(),
    })
}

/// The revision `db` last committed.
fn stored_revision(db: &Database) -> Result<u64> {
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    Ok(meta.get("revision")?.map(|v| v.value()).unwrap_or(0))
}

/// Reads the format version of `db` (the file at `path`) with a read
/// transaction first, so that a newer file is refused before anything is
/// written to it; a fresh file gets the current version and every table.
fn check_format(db: &Database, path: &Path) -> Result<(), OpenError> {
    let read = db.begin_read()?;
    let found = match read.open_table(META) {
        Ok(meta) => meta.get("format")?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => {
            return Err(OpenError::Foreign {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    drop(read);
    match found {
        Some(v) if v > FORMAT_VERSION => Err(OpenError::NewerFormat {
            path: path.to_path_buf(),
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

/// How one write transaction ended.
enum Ended<T, E> {
    /// Committed: `f`'s value and the revision.
    Committed(T, u64),
    /// Not committed: `f` refused, or the transaction failed before its
    /// commit began.
    Refused(E),
    /// The commit failed: the write, `f`'s `value` at `revision`, may or
    /// may not be on disk.
    CommitFailed {
        value: T,
        revision: u64,
        error: Fault,
    },
}

/// Runs `f` in one write transaction of `db` that also raises the
/// revision, and commits it durably when `f` succeeds.
fn transact<T, E: Failure>(
    db: &Database,
    f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
) -> Ended<T, E> {
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return Ended::Refused(Fault::from(e).into()),
    };
    txn.set_durability(Durability::Immediate);
    let out = {
        let mut w = RedbTx { txn: &txn };
        f(&mut w)
    };
    let value = match out {
        Ok(value) => value,
        Err(e) => {
            // After an I/O failure redb must not be asked to roll back (it
            // asserts that no commit failed); dropping the transaction lets
            // it choose.
            if e.fault().is_some_and(is_io) {
                drop(txn);
            } else if let Err(abort) = txn.abort() {
                return Ended::Refused(Fault::from(abort).into());
            }
            return Ended::Refused(e);
        }
    };
    let revision = match next_revision(&txn) {
        Ok(revision) => revision,
        Err(e) => return Ended::Refused(e.into()),
    };
    match txn.commit() {
        Ok(()) => Ended::Committed(value, revision),
        Err(e) => Ended::CommitFailed {
            value,
            revision,
            error: e.into(),
        },
    }
}

/// Raises the revision in `meta` inside `txn`; the new revision.
fn next_revision(txn: &WriteTransaction) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get("revision")?.map(|v| v.value()).unwrap_or(0) + 1;
    meta.insert("revision", next)?;
    Ok(next)
}

/// Commits one write that changes no record: the time of the probe under
/// `meta`'s `write_probe`, which is not the revision (the store's revision
/// does not move).
fn probe(db: &Database) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    {
        let mut meta = txn.open_table(META)?;
        meta.insert("write_probe", now)?;
    }
    txn.commit()?;
    Ok(())
}

/// Whether this error is redb's I/O failure (this call's, or an earlier
/// one's that redb remembers): a write outage, not damage.
fn is_io(e: &Fault) -> bool {
    matches!(e, Fault::Io(_))
}

/// Whether the data file's filesystem takes writes again: [`ROOM_BYTES`]
/// of fresh random bytes (which no filesystem can compress away) written
/// and synced to a scratch file beside the data file, then removed. Only a
/// full filesystem or quota counts against it: a folder the daemon may not
/// create files in says nothing about the data file, and the reopen tries.
fn room_to_write(path: &Path) -> std::io::Result<()> {
    use rand::RngCore;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".space-check");
    let scratch = path.with_file_name(name);
    let written = (|| {
        let mut bytes = vec![0u8; ROOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let mut file = File::create(&scratch)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&scratch);
    match written {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
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
    /// The database the view reads, held so that the store can tell when
    /// no view reads a database it retired, and close it itself. Last, so
    /// that it is let go after the transaction.
    _db: Arc<Database>,
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
        self.health.guard(|| keys_in(&self.txn.open_table(KEYS)?))
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

/// Every key of the `keys` table, in id order.
fn keys_in(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Vec<ApiKey>> {
    let mut out = Vec::new();
    for item in table.iter()? {
        let (_, v) = item?;
        out.push(decode("keys", v.value())?);
    }
    Ok(out)
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

    fn keys(&self) -> Result<Vec<ApiKey>> {
        keys_in(&self.txn.open_table(KEYS)?)
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
