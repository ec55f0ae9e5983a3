//! Whether a data file is sound, found without writing a byte to it.
//!
//! redb does not verify page checksums on normal reads: a damaged page is
//! read as it is, and answers garbage or makes redb panic. Its integrity
//! check verifies every checksum, but it takes the database for writing and
//! repairs what it can in place (it may roll the file back to the previous
//! commit and commit that). So cedard never runs it on the data file: redb
//! opens the file through an [`Overlay`], a copy-on-write view that reads
//! the file and keeps whatever redb writes in memory, and checks that. Then
//! every record of every table is read and decoded, so that a page whose
//! checksum holds but whose content does not decode is caught too. A panic
//! inside redb while it reads garbage is caught and reported as damage.
//!
//! The caller holds the file's lock (the one redb and every cedard take), so
//! no daemon writes the file while it is checked.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    AccessGuard, Builder, DatabaseError, Key, ReadTransaction, ReadableTable, TableDefinition,
    TableError, TableHandle, Value,
};

use sha2::{Digest, Sha256};

use super::overlay::Overlay;
use super::tables::{
    ACCOUNTS, ACCOUNT_INVITES, EMAILS, FORMAT_VERSION, INVITES, INVITE_TOKENS, KEYS, MEMBERS, META,
    USERS, USER_ACCOUNTS,
};
use super::{decode, Account, ApiKey, Invite, Membership, OpenError, User};

/// redb's read cache while checking: the check reads each page about three
/// times in a row, so a small cache costs little and bounds the memory a
/// large file can take.
const CHECK_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// What is wrong, in words (redb's message or the record that does not
    /// decode); `None` when the file is sound.
    pub damage: Option<String>,
    /// The data format version the file declares (`None` for an empty file).
    pub format: Option<u64>,
    /// How many records each table holds, as far as the scan got.
    pub counts: RecordCounts,
    /// How long the check took.
    pub elapsed: Duration,
}

/// How many records the file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Users.
    pub users: u64,
    /// Accounts, personal and team.
    pub accounts: u64,
    /// Memberships (user in account, with a role).
    pub memberships: u64,
    /// Invites in every state.
    pub invites: u64,
    /// Caller keys, revoked ones included.
    pub keys: u64,
}

/// Checks the data file at `path` without writing to it: redb's integrity
/// check on a copy-on-write view of the file, then every record read and
/// decoded. The file is opened read-only and locked as a daemon locks it,
/// so a file a running cedard holds is [`OpenError::Locked`]; a missing
/// file is [`OpenError::File`].
pub fn check_file(path: &Path) -> Result<CheckReport, OpenError> {
    let file = File::open(path).map_err(|source| OpenError::File {
        path: path.to_path_buf(),
        source,
    })?;
    lock(&file, path)?;
    check_locked(&file, path)
}

/// Takes the lock redb takes (an exclusive `flock` on Unix), without
/// waiting: a file another process holds is [`OpenError::Locked`].
pub(super) fn lock(file: &File, path: &Path) -> Result<(), OpenError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(path.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(OpenError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Checks the open, locked data file `file` (found at `path`). A file redb
/// cannot open for a reason other than damage (not a redb file, an older
/// redb format) is an error, as it is when the daemon opens it.
pub(super) fn check_locked(file: &File, path: &Path) -> Result<CheckReport, OpenError> {
    let started = Instant::now();
    let io_error = |source: io::Error| OpenError::File {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io_error)?.len();
    if len == 0 {
        // A new file: nothing to check.
        return Ok(CheckReport {
            damage: None,
            format: None,
            counts: RecordCounts::default(),
            elapsed: started.elapsed(),
        });
    }
    let overlay = Overlay::new(file.try_clone().map_err(io_error)?, len);
    let mut found = Found::default();
    let outcome = catch_unwind(AssertUnwindSafe(|| inspect(overlay, &mut found)));
    let damage = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(Inspect::Damage(message))) => Some(message),
        Ok(Err(Inspect::Open(source))) => {
            return Err(OpenError::Engine {
                path: path.to_path_buf(),
                message: source.to_string(),
            })
        }
        Err(panic) => Some(format!(
            "redb panicked while reading it ({})",
            panic_message(panic.as_ref())
        )),
    };
    Ok(CheckReport {
        damage,
        format: found.format,
        counts: found.counts,
        elapsed: started.elapsed(),
    })
}

/// The text of a caught panic, on one line (for one log line).
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "no message"
    };
    text.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

/// What the scan has found so far (kept when it stops on damage).
#[derive(Default)]
struct Found {
    format: Option<u64>,
    counts: RecordCounts,
}

/// Why an inspection stopped.
enum Inspect {
    /// The file is damaged: this is what redb or the decoder said.
    Damage(String),
    /// redb cannot open the file for a reason that is not damage.
    Open(DatabaseError),
}

/// Opens `overlay` with redb, runs redb's integrity check on it, then reads
/// and decodes every record.
fn inspect(overlay: Overlay, found: &mut Found) -> Result<(), Inspect> {
    let mut db = Builder::new()
        .set_cache_size(CHECK_CACHE_BYTES)
        .create_with_backend(overlay)
        .map_err(|e| match e {
            DatabaseError::Storage(redb::StorageError::Corrupted(m)) => {
                Inspect::Damage(format!("redb cannot open it: {m}"))
            }
            other => Inspect::Open(other),
        })?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => {
            return Err(Inspect::Damage(
                "redb's integrity check failed: it found damage it would repair \
                 by rolling the file back to an earlier commit or rebuilding its \
                 allocation state"
                    .into(),
            ))
        }
        Err(e) => {
            return Err(Inspect::Damage(format!(
                "redb's integrity check failed: {e}"
            )))
        }
    }
    let txn = db
        .begin_read()
        .map_err(|e| Inspect::Damage(format!("redb cannot read it: {e}")))?;
    scan(&txn, found).map_err(Inspect::Damage)
}

/// Reads and decodes every record of every table. A file without the `meta`
/// table or with a newer format is left to [`Store::open`](super::Store::open),
/// which refuses it by name; its records are not this build's to judge.
fn scan(txn: &ReadTransaction, found: &mut Found) -> Result<(), String> {
    let format = match txn.open_table(META) {
        Ok(meta) => meta
            .get("format")
            .map_err(|e| format!("cannot read table `meta`: {e}"))?
            .map(|v| v.value()),
        // No `meta` of cedard's shape: not a cedard file (or a new one).
        Err(TableError::TableDoesNotExist(_) | TableError::TableTypeMismatch { .. }) => None,
        Err(e) => return Err(format!("cannot open table `meta`: {e}")),
    };
    found.format = format;
    match format {
        Some(v) if v <= FORMAT_VERSION => {}
        _ => return Ok(()),
    }
    let counts = &mut found.counts;
    counts.users = each(txn, USERS, |v| record::<User>("users", v))?;
    counts.accounts = each(txn, ACCOUNTS, |v| record::<Account>("accounts", v))?;
    counts.memberships = each(txn, MEMBERS, |v| record::<Membership>("memberships", v))?;
    counts.invites = each(txn, INVITES, |v| record::<Invite>("invites", v))?;
    counts.keys = each(txn, KEYS, |v| record::<ApiKey>("keys", v))?;
    let index = each(txn, USER_ACCOUNTS, |v| {
        let _ = v.value();
        Ok(())
    })?;
    if index != counts.memberships {
        return Err(format!(
            "the index `user_accounts` holds {index} entries but `memberships` holds {}",
            counts.memberships
        ));
    }
    each(txn, INVITE_TOKENS, |v| {
        let _ = v.value();
        Ok(())
    })?;
    each(txn, ACCOUNT_INVITES, |_| Ok(()))?;
    each(txn, EMAILS, |v| {
        let _ = v.value();
        Ok(())
    })?;
    Ok(())
}

fn record<T: serde::de::DeserializeOwned>(
    table: &'static str,
    v: &AccessGuard<'_, &'static [u8]>,
) -> Result<(), String> {
    decode::<T>(table, v.value())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Calls `f` on every value of `def` (after decoding its key) and counts
/// them. A table the file's format does not have yet counts 0.
fn each<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'_, K, V>,
    mut f: impl FnMut(&AccessGuard<'_, V>) -> Result<(), String>,
) -> Result<u64, String> {
    let name = def.name().to_owned();
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(format!("cannot open table `{name}`: {e}")),
    };
    let mut n = 0;
    let items = table
        .iter()
        .map_err(|e| format!("cannot read table `{name}`: {e}"))?;
    for item in items {
        let (k, v) = item.map_err(|e| format!("cannot read table `{name}`: {e}"))?;
        // Decoding the key is what catches a key that is not UTF-8.
        let _ = k.value();
        f(&v)?;
        n += 1;
    }
    Ok(n)
}

/// The file beside a data file that records the bytes a check last found
/// sound: `cedard.redb` → `cedard.redb.checked`.
pub(super) fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".checked");
    path.with_file_name(name)
}

/// The length and SHA-256 of the whole file, read from its start: what a
/// stamp records. Two files with the same fingerprint hold the same bytes.
fn fingerprint(file: &File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(0))?;
    let len = io::copy(&mut reader, &mut hasher)?;
    Ok(format!(
        "cedard-checked 1 len={len} sha256={}",
        hex::encode(hasher.finalize())
    ))
}

/// Whether the open, locked data file holds exactly the bytes a check last
/// found sound (the stamp beside it says so). A missing, unreadable or
/// stale stamp is `false`: the file is then checked in full.
pub(super) fn checked_before(file: &File, path: &Path) -> bool {
    let Ok(stamp) = std::fs::read_to_string(stamp_path(path)) else {
        return false;
    };
    matches!(fingerprint(file), Ok(now) if now == stamp.trim_end())
}

/// Checks the data file at `path` after its database has closed, and, when
/// it is sound, stamps it (see [`checked_before`]) so that the next open
/// need not check it again. Skipped (no stamp written, the next open checks)
/// when another process has taken the file meanwhile or anything fails.
pub(super) fn check_and_stamp(path: &Path) {
    let stale = stamp_path(path);
    // A stamp that no longer matches is worthless; remove it first, so that
    // a failure below leaves no stamp rather than a stale one.
    let _ = std::fs::remove_file(&stale);
    let Ok(file) = File::open(path) else { return };
    if lock(&file, path).is_err() {
        return;
    }
    let Ok(fingerprint) = fingerprint(&file) else {
        return;
    };
    match check_locked(&file, path) {
        Ok(CheckReport { damage: None, .. }) => {}
        _ => return,
    }
    let tmp = stale.with_extension("checked.tmp");
    let written = super::tables::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{fingerprint}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &stale));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %stale.display(), "cannot stamp the checked data file ({e}); the next start checks it in full");
    }
}
