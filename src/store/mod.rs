//! The store: users, accounts, memberships and invites in one redb file.
//!
//! Every write is one redb write transaction committed with
//! [`Durability::Immediate`], so a write acknowledged to a client is on disk,
//! and an operation either happens whole or not at all (accepting an invite
//! marks it used and adds the member in the same transaction). The rules that
//! must hold atomically (a taken id, an invite accepted once, the last admin of
//! an account) are checked inside that transaction. This module knows nothing
//! about HTTP or Cedar: it stores records and the indexes point lookups need,
//! and the role names it is handed are opaque strings.

mod records;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, DatabaseError, Durability, ReadOnlyTable, ReadTransaction, ReadableTable,
    TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use records::{Account, AccountKind, ApiKey, Invite, InviteState, Membership, User};

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
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// User id → [`User`] (JSON).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Account id → [`Account`] (JSON).
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// (account id, user id) → [`Membership`] (JSON): who belongs to an account.
const MEMBERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("memberships");
/// (user id, account id) → role: the index a decision reads to find a user's
/// roles without scanning the memberships.
const USER_ACCOUNTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("user_accounts");
/// Invite id → [`Invite`] (JSON).
const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
/// SHA-256 of a live invite token → invite id. Only pending invites have an
/// entry; the token itself is never stored.
const INVITE_TOKENS: TableDefinition<&[u8], &str> = TableDefinition::new("invite_tokens");
/// (account id, invite id) → (): the invites of an account, for listing.
const ACCOUNT_INVITES: TableDefinition<(&str, &str), ()> = TableDefinition::new("account_invites");
/// Key id → [`ApiKey`] (JSON): the caller keys, hashed.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// Normalised email → user id: one user per address.
const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");

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
    /// Another process (another cedard) holds the file.
    #[error("the data file `{0}` is in use by another process (is another cedard running on it?)")]
    Locked(PathBuf),
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
        source: Box<DatabaseError>,
    },
    /// A storage fault while reading or writing.
    #[error("storage error: {0}")]
    Db(Box<redb::Error>),
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
                | StoreError::Locked(_)
                | StoreError::NewerFormat { .. }
                | StoreError::Foreign { .. }
                | StoreError::Open { .. }
                | StoreError::Db(_)
                | StoreError::Encode { .. }
                | StoreError::Corrupt { .. }
        )
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

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The open data file. Cheap to share behind an `Arc`; redb serialises write
/// transactions and lets reads run alongside them (MVCC).
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Counts committed writes since the file was opened. Bumped after each
    /// commit, so a reader that sees generation `g` and then opens a read
    /// transaction reads a state at least as new as `g`; caches of what was
    /// read are tagged with it.
    generation: AtomicU64,
}

impl Store {
    /// Opens (or creates) the data file at `path`, creating its folder. A
    /// file held by another process, written by a newer cedard, or not a
    /// cedard file is refused with a message that says so.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let db = match Database::create(path) {
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
            db,
            path: path.to_path_buf(),
            generation: AtomicU64::new(0),
        };
        store.check_format()?;
        Ok(store)
    }

    /// The number of writes committed since the file was opened.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the format version with a read transaction first, so that a
    /// newer file is refused before anything is written to it; a fresh file
    /// gets the current version and every table.
    fn check_format(&self) -> Result<()> {
        let read = self.db.begin_read()?;
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
                let mut txn = self.db.begin_write()?;
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
                let mut txn = self.db.begin_write()?;
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
    pub fn read(&self) -> Result<ReadView> {
        let txn = self.db.begin_read()?;
        Ok(ReadView {
            users: txn.open_table(USERS)?,
            accounts: txn.open_table(ACCOUNTS)?,
            user_accounts: txn.open_table(USER_ACCOUNTS)?,
            txn,
        })
    }

    /// Runs `f` in one write transaction and commits it durably
    /// ([`Durability::Immediate`]) when `f` succeeds; when `f` fails nothing
    /// is written. Each API operation is exactly one call of this.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.write_with(f)
    }

    /// [`Store::write`] whose `f` may fail with its caller's own error type
    /// (a policy check made inside the transaction, say); store errors
    /// convert into it.
    pub fn write_with<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        txn.set_durability(Durability::Immediate);
        let out = {
            let mut w = Writer { txn: &txn };
            f(&mut w)
        };
        match out {
            Ok(v) => {
                txn.commit().map_err(StoreError::from)?;
                self.generation.fetch_add(1, Ordering::AcqRel);
                Ok(v)
            }
            Err(e) => {
                txn.abort().map_err(StoreError::from)?;
                Err(e)
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
pub struct ReadView {
    users: ReadOnlyTable<&'static str, &'static [u8]>,
    accounts: ReadOnlyTable<&'static str, &'static [u8]>,
    user_accounts: ReadOnlyTable<(&'static str, &'static str), &'static str>,
    txn: ReadTransaction,
}

impl ReadView {
    /// The user `id`, if stored.
    pub fn user(&self, id: &str) -> Result<Option<User>> {
        match self.users.get(id)? {
            Some(v) => Ok(Some(decode("users", v.value())?)),
            None => Ok(None),
        }
    }

    /// Whether the user `id` is stored.
    pub fn has_user(&self, id: &str) -> Result<bool> {
        Ok(self.users.get(id)?.is_some())
    }

    /// The account `id`, if stored.
    pub fn account(&self, id: &str) -> Result<Option<Account>> {
        match self.accounts.get(id)? {
            Some(v) => Ok(Some(decode("accounts", v.value())?)),
            None => Ok(None),
        }
    }

    /// Whether the account `id` is stored.
    pub fn has_account(&self, id: &str) -> Result<bool> {
        Ok(self.accounts.get(id)?.is_some())
    }

    /// The `(account, role)` pairs of a user, from the per-user index: a
    /// range over this one user's keys, never a scan.
    pub fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
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
    }

    /// The members of an account with their roles, ordered by user id.
    pub fn members(&self, account: &str) -> Result<Vec<(String, Membership)>> {
        let table = self.txn.open_table(MEMBERS)?;
        members_in(&table, account)
    }

    /// How many memberships and invites pending at `now` hold each role: a
    /// scan, for checking a new schema against what is stored.
    pub fn role_census(&self, now: i64) -> Result<BTreeMap<String, (usize, usize)>> {
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
    }

    /// Calls `f` with every stored user and its `(account, role)` pairs, in
    /// id order: one pass over the users and the per-user index together.
    pub fn each_user(&self, mut f: impl FnMut(User, Vec<(String, String)>)) -> Result<()> {
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
            f(user, roles);
        }
        Ok(())
    }

    /// Up to `limit` user ids after `after` (from the first when `None`), in
    /// id order: the candidates of a subject search, a page at a time.
    pub fn user_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        ids_after(&self.users, after, limit)
    }

    /// Up to `limit` account ids after `after`, in id order.
    pub fn account_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        ids_after(&self.accounts, after, limit)
    }

    /// Calls `f` with every stored account, in id order.
    pub fn each_account(&self, mut f: impl FnMut(Account)) -> Result<()> {
        for item in self.accounts.iter()? {
            let (_, v) = item?;
            f(decode("accounts", v.value())?);
        }
        Ok(())
    }

    /// Every caller key, revoked ones included, ordered by id.
    pub fn keys(&self) -> Result<Vec<ApiKey>> {
        let table = self.txn.open_table(KEYS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(decode("keys", v.value())?);
        }
        Ok(out)
    }

    /// The invites of an account, pending or not, ordered by id.
    pub fn invites(&self, account: &str) -> Result<Vec<Invite>> {
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
    }

    /// The invite whose token hashes to `sha256`, whatever its state.
    pub fn invite_by_token(&self, sha256: &str) -> Result<Option<Invite>> {
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

/// The operations of one write transaction. Each method checks its rules
/// against the transaction's own view, so concurrent operations cannot both
/// pass a check that only one may pass.
pub struct Writer<'t> {
    txn: &'t WriteTransaction,
}

impl Writer<'_> {
    /// The user `id`, if stored.
    pub fn user(&self, id: &str) -> Result<Option<User>> {
        let table = self.txn.open_table(USERS)?;
        let found = table.get(id)?;
        match found {
            Some(v) => Ok(Some(decode("users", v.value())?)),
            None => Ok(None),
        }
    }

    /// The account `id`, if stored.
    pub fn account(&self, id: &str) -> Result<Option<Account>> {
        let table = self.txn.open_table(ACCOUNTS)?;
        let found = table.get(id)?;
        match found {
            Some(v) => Ok(Some(decode("accounts", v.value())?)),
            None => Ok(None),
        }
    }

    fn put_account(&mut self, account: &Account) -> Result<()> {
        let mut table = self.txn.open_table(ACCOUNTS)?;
        table.insert(account.id.as_str(), encode("accounts", account)?.as_slice())?;
        Ok(())
    }

    /// The role `user` holds in `account`, if a member.
    pub fn role_in(&self, account: &str, user: &str) -> Result<Option<String>> {
        Ok(self.membership(account, user)?.map(|m| m.role))
    }

    fn membership(&self, account: &str, user: &str) -> Result<Option<Membership>> {
        let table = self.txn.open_table(MEMBERS)?;
        let found = table.get((account, user))?;
        match found {
            Some(v) => Ok(Some(decode("memberships", v.value())?)),
            None => Ok(None),
        }
    }

    fn put_membership(&mut self, account: &str, user: &str, m: &Membership) -> Result<()> {
        let mut members = self.txn.open_table(MEMBERS)?;
        members.insert((account, user), encode("memberships", m)?.as_slice())?;
        let mut index = self.txn.open_table(USER_ACCOUNTS)?;
        index.insert((user, account), m.role.as_str())?;
        Ok(())
    }

    /// Stores a new caller key. Ids are random; a clash is refused rather
    /// than overwriting a key.
    pub fn create_key(&mut self, key: &ApiKey) -> Result<()> {
        let mut table = self.txn.open_table(KEYS)?;
        if table.get(key.id.as_str())?.is_some() {
            return Err(StoreError::IdTaken(key.id.clone()));
        }
        table.insert(key.id.as_str(), encode("keys", key)?.as_slice())?;
        Ok(())
    }

    /// Revokes the key `id` at `now` (revoking a revoked key keeps the first
    /// time). An unknown id is `NoKey`.
    pub fn revoke_key(&mut self, id: &str, now: i64) -> Result<ApiKey> {
        let mut table = self.txn.open_table(KEYS)?;
        let found: Option<ApiKey> = match table.get(id)? {
            Some(v) => Some(decode("keys", v.value())?),
            None => None,
        };
        let Some(mut key) = found else {
            return Err(StoreError::NoKey(id.to_owned()));
        };
        key.revoked_at.get_or_insert(now);
        table.insert(id, encode("keys", &key)?.as_slice())?;
        Ok(key)
    }

    /// Signs a user up: stores the user and their personal account (whose id
    /// is the user's id) with the user holding `owner_role` in it.
    pub fn sign_up(&mut self, user: &User, owner_role: &str) -> Result<Account> {
        if self.user(&user.id)?.is_some() || self.account(&user.id)?.is_some() {
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
        let table = self.txn.open_table(MEMBERS)?;
        Ok(members_in(&table, account)?
            .iter()
            .filter(|(_, m)| m.role == admin_role)
            .count())
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
        let mut m = self
            .membership(account, user)?
            .ok_or_else(|| StoreError::NotMember {
                account: account.to_owned(),
                user: user.to_owned(),
            })?;
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
        let m = self
            .membership(account, user)?
            .ok_or_else(|| StoreError::NotMember {
                account: account.to_owned(),
                user: user.to_owned(),
            })?;
        if m.role == admin_role && self.admins(account, admin_role)? <= 1 {
            return Err(StoreError::LastAdmin {
                account: account.to_owned(),
                user: user.to_owned(),
                role: admin_role.to_owned(),
            });
        }
        let mut members = self.txn.open_table(MEMBERS)?;
        members.remove((account, user))?;
        let mut index = self.txn.open_table(USER_ACCOUNTS)?;
        index.remove((user, account))?;
        Ok(())
    }

    /// Stores a user as given, without the personal account sign-up
    /// creates (for imports, seeding and benchmarks).
    /// Its email must be free (normalised by the caller); it is indexed.
    pub fn import_user(&mut self, user: &User) -> Result<()> {
        let mut emails = self.txn.open_table(EMAILS)?;
        let holder = emails
            .get(user.email.as_str())?
            .map(|v| v.value().to_owned());
        match holder {
            Some(id) if id != user.id => return Err(StoreError::EmailTaken(user.email.clone())),
            Some(_) => {}
            None => {
                emails.insert(user.email.as_str(), user.id.as_str())?;
            }
        }
        let mut users = self.txn.open_table(USERS)?;
        users.insert(user.id.as_str(), encode("users", user)?.as_slice())?;
        Ok(())
    }

    /// Records whether the user's email is verified.
    pub fn set_email_verified(&mut self, id: &str, verified: bool) -> Result<User> {
        let mut user = self
            .user(id)?
            .ok_or_else(|| StoreError::NoUser(id.to_owned()))?;
        user.email_verified = verified;
        let mut users = self.txn.open_table(USERS)?;
        users.insert(user.id.as_str(), encode("users", &user)?.as_slice())?;
        Ok(user)
    }

    /// Stores an account as given (for imports, seeding and benchmarks).
    pub fn import_account(&mut self, account: &Account) -> Result<()> {
        self.put_account(account)
    }

    /// Adds a member directly, without an invite (for imports, seeding and
    /// benchmarks; the API adds members only through invites).
    pub fn add_member(&mut self, account: &str, user: &str, role: &str, since: i64) -> Result<()> {
        if self.membership(account, user)?.is_some() {
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

    /// Stores a new invite whose token hashes to `invite.token_sha256`. The
    /// account must be a team account.
    pub fn create_invite(&mut self, invite: &Invite) -> Result<()> {
        let acc = self
            .account(&invite.account)?
            .ok_or_else(|| StoreError::NoAccount(invite.account.clone()))?;
        if acc.kind != AccountKind::Team {
            return Err(StoreError::NotTeam(acc.id));
        }
        self.put_invite(invite)?;
        let mut tokens = self.txn.open_table(INVITE_TOKENS)?;
        tokens.insert(
            hash_key(&invite.token_sha256).as_slice(),
            invite.id.as_str(),
        )?;
        let mut index = self.txn.open_table(ACCOUNT_INVITES)?;
        index.insert((invite.account.as_str(), invite.id.as_str()), ())?;
        Ok(())
    }

    fn put_invite(&mut self, invite: &Invite) -> Result<()> {
        let mut invites = self.txn.open_table(INVITES)?;
        invites.insert(invite.id.as_str(), encode("invites", invite)?.as_slice())?;
        Ok(())
    }

    /// The invite `id` of `account` if it is still pending at `now`.
    fn pending_invite(&self, account: &str, id: &str, now: i64) -> Result<Invite> {
        let invites = self.txn.open_table(INVITES)?;
        let found = invites.get(id)?;
        let invite: Option<Invite> = match found {
            Some(v) => Some(decode("invites", v.value())?),
            None => None,
        };
        match invite {
            Some(i) if i.account == account && i.is_pending(now) => Ok(i),
            _ => Err(StoreError::NoInvite {
                account: account.to_owned(),
                invite: id.to_owned(),
            }),
        }
    }

    /// Gives a pending invite a new token: the old token's entry is removed,
    /// so the old link stops working in the same commit.
    pub fn relink(
        &mut self,
        account: &str,
        id: &str,
        new_sha256: &str,
        now: i64,
    ) -> Result<Invite> {
        let mut invite = self.pending_invite(account, id, now)?;
        let mut tokens = self.txn.open_table(INVITE_TOKENS)?;
        tokens.remove(hash_key(&invite.token_sha256).as_slice())?;
        invite.token_sha256 = new_sha256.to_owned();
        tokens.insert(hash_key(new_sha256).as_slice(), invite.id.as_str())?;
        drop(tokens);
        self.put_invite(&invite)?;
        Ok(invite)
    }

    /// Revokes a pending invite; its token stops working.
    pub fn revoke(&mut self, account: &str, id: &str, now: i64) -> Result<Invite> {
        let mut invite = self.pending_invite(account, id, now)?;
        let mut tokens = self.txn.open_table(INVITE_TOKENS)?;
        tokens.remove(hash_key(&invite.token_sha256).as_slice())?;
        drop(tokens);
        invite.state = InviteState::Revoked { at: now };
        self.put_invite(&invite)?;
        Ok(invite)
    }

    /// Accepts the invite whose token hashes to `sha256` for `user`: marks
    /// it used and adds the membership, both in this transaction. Unknown,
    /// expired, revoked and used tokens all fail with
    /// [`StoreError::InviteGone`].
    pub fn accept(&mut self, sha256: &str, user: &str, now: i64) -> Result<Invite> {
        let mut invite = self.live_invite(sha256, now)?;
        let joining = self
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
        if self.membership(&invite.account, user)?.is_some() {
            return Err(StoreError::AlreadyMember {
                account: invite.account.clone(),
                user: user.to_owned(),
            });
        }
        let mut tokens = self.txn.open_table(INVITE_TOKENS)?;
        tokens.remove(hash_key(sha256).as_slice())?;
        drop(tokens);
        invite.state = InviteState::Used {
            by: user.to_owned(),
            at: now,
        };
        self.put_invite(&invite)?;
        let role = invite.role.clone();
        self.put_membership(&invite.account, user, &Membership { role, since: now })?;
        Ok(invite)
    }

    /// The pending invite whose token hashes to `sha256`, as this
    /// transaction sees it. Unknown, expired, revoked and used tokens all
    /// fail with [`StoreError::InviteGone`].
    pub fn live_invite(&self, sha256: &str, now: i64) -> Result<Invite> {
        let id = {
            let tokens = self.txn.open_table(INVITE_TOKENS)?;
            let found = tokens.get(hash_key(sha256).as_slice())?;
            match found {
                Some(v) => v.value().to_owned(),
                None => return Err(StoreError::InviteGone(GoneReason::Unknown)),
            }
        };
        let invite: Invite = {
            let invites = self.txn.open_table(INVITES)?;
            let found = invites.get(id.as_str())?;
            match found {
                Some(v) => decode("invites", v.value())?,
                None => return Err(StoreError::InviteGone(GoneReason::Unknown)),
            }
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

/// The token index's key: the SHA-256 as raw bytes (hex decoding of our own
/// encoding; a malformed value maps to its bytes, which match nothing).
fn hash_key(sha256_hex: &str) -> Vec<u8> {
    hex::decode(sha256_hex).unwrap_or_else(|_| sha256_hex.as_bytes().to_vec())
}
