//! The store's errors, one enum per operation, as redb has them: opening
//! ([`OpenError`]), any read or write meeting a fault of the storage
//! ([`Fault`]), a write refused by a rule of the directory ([`Refusal`],
//! inside [`WriteError`]), and a consistency requirement
//! ([`AtLeastError`]). Nothing here names a backend's types: each backend
//! turns its own errors into these at its boundary. Each error says which
//! [`Code`] it is, exhaustively, so a new variant cannot fall into a
//! catch-all.

use std::path::PathBuf;

use crate::code::Code;

/// A fault of the storage: never an answer about the request. Whoever
/// meets one reports the store as unavailable (503), never a refusal and
/// never an allow.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The storage failed to read or write the file (I/O: a full disk, a
    /// failing device). Not damage: the file may recover.
    #[error("storage error: {0}")]
    Io(String),
    /// The storage engine failed otherwise.
    #[error("storage error: {0}")]
    Engine(String),
    /// The file is corrupt where the engine or a record decoder looked: a
    /// sign of damage.
    #[error("corrupt {what}: {message}")]
    Corrupt {
        /// What was found corrupt (a table, or the file).
        what: String,
        /// What the engine or the decoder said.
        message: String,
    },
    /// A record that does not encode.
    #[error("cannot encode a record for table `{table}`: {message}")]
    Encode {
        /// The table the record was meant for.
        table: &'static str,
        /// What serde said.
        message: String,
    },
    /// The file is damaged (found at open or later): nothing is read from
    /// it or written to it.
    #[error("the data file `{path}` is damaged ({reason}); writes are refused; run `cedard store check --data {path}`")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, as first found.
        reason: String,
    },
    /// The shared database cannot be reached or failed.
    #[error("{0}")]
    Unavailable(String),
    /// This replica has not confirmed the store revision with the shared
    /// database for longer than its staleness bound: what it knows may be
    /// out of date, and nothing is answered from it.
    #[error("the store revision has not been confirmed with the database for {age_ms} ms (the bound is {bound_ms} ms, `--store-max-staleness-ms`); no answer is made from what this replica remembers")]
    Stale {
        /// Milliseconds since the last confirmation.
        age_ms: u64,
        /// The bound.
        bound_ms: u64,
    },
    /// Writes cannot commit now: an I/O failure (a full disk, say) stopped
    /// them and the store has not recovered yet. Nothing was written.
    #[error("writes cannot be committed now ({reason}); nothing was written")]
    WriteOutage {
        /// What failed.
        reason: String,
    },
    /// A write failed as it committed, and whether it was committed cannot
    /// be told. Read before retrying.
    #[error("the write may have been committed ({reason}); read before retrying")]
    OutcomeUnknown {
        /// What failed.
        reason: String,
    },
}

impl Fault {
    /// Whether this fault shows the data file itself is damaged: the
    /// engine found it corrupt, or a record does not decode. Such a fault
    /// marks a redb store damaged for good.
    pub fn is_damage(&self) -> bool {
        match self {
            Fault::Corrupt { .. } | Fault::Damaged { .. } => true,
            Fault::Io(_)
            | Fault::Engine(_)
            | Fault::Encode { .. }
            | Fault::Unavailable(_)
            | Fault::Stale { .. }
            | Fault::WriteOutage { .. }
            | Fault::OutcomeUnknown { .. } => false,
        }
    }

    /// The code a caller is answered with.
    pub fn code(&self) -> Code {
        match self {
            Fault::OutcomeUnknown { .. } => Code::StoreOutcomeUnknown,
            Fault::Io(_)
            | Fault::Engine(_)
            | Fault::Corrupt { .. }
            | Fault::Encode { .. }
            | Fault::Damaged { .. }
            | Fault::Unavailable(_)
            | Fault::Stale { .. }
            | Fault::WriteOutage { .. } => Code::StoreUnavailable,
        }
    }
}

/// Why a store could not be opened (or a database connected to).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
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
    /// The storage engine could not open the file.
    #[error("cannot open the data file `{path}`: {message}")]
    Engine {
        /// The file.
        path: PathBuf,
        /// The engine's reason.
        message: String,
    },
    /// The store URL or its settings are wrong (a bad `sslmode`, a
    /// missing `sslrootcert`, not a URL).
    #[error("{0}")]
    Settings(String),
    /// Opening met a fault (a read of the file, the database unreachable).
    #[error(transparent)]
    Fault(#[from] Fault),
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

/// A write the rules of the directory refused, checked inside its
/// transaction: an answer about the request.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
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
    /// Revoking the last live key with the `admin` scope.
    #[error("`{0}` is the last live key with the `admin` scope: create another `admin` key first (rotation is create, then revoke)")]
    LastAdminKey(String),
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

impl Refusal {
    /// The code a caller is answered with.
    pub fn code(&self) -> Code {
        match self {
            Refusal::IdTaken(_)
            | Refusal::EmailTaken(_)
            | Refusal::AlreadyMember { .. }
            | Refusal::LastAdmin { .. }
            | Refusal::LastAdminKey(_)
            | Refusal::NotTeam(_)
            | Refusal::NotPersonal(_) => Code::Conflict,
            Refusal::NoUser(_)
            | Refusal::NoAccount(_)
            | Refusal::NoKey(_)
            | Refusal::NotMember { .. }
            | Refusal::NoInvite { .. } => Code::NotFound,
            Refusal::InviteGone(_) => Code::Gone,
            Refusal::EmailMismatch | Refusal::EmailUnverified => Code::Forbidden,
        }
    }
}

/// Why a write did not happen: a fault, or a rule of the directory.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A fault of the storage; nothing was written (except
    /// [`Fault::OutcomeUnknown`], which says it may have been).
    #[error(transparent)]
    Fault(#[from] Fault),
    /// A rule refused it; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl WriteError {
    /// The code a caller is answered with.
    pub fn code(&self) -> Code {
        match self {
            WriteError::Fault(f) => f.code(),
            WriteError::Refused(r) => r.code(),
        }
    }

    /// The fault inside, if this is one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            WriteError::Fault(f) => Some(f),
            WriteError::Refused(_) => None,
        }
    }
}

/// The error a write's closure fails with: made from a [`WriteError`], and
/// saying whether it carries a fault, so that damage or an I/O failure met
/// inside a write reaches the backend whatever error type carries it out.
pub trait Failure: From<WriteError> + From<Fault> {
    /// The storage fault inside, if this is one.
    fn fault(&self) -> Option<&Fault>;
}

impl Failure for WriteError {
    fn fault(&self) -> Option<&Fault> {
        WriteError::fault(self)
    }
}

/// Why a decision cannot be made at least as fresh as a store revision.
#[derive(Debug, thiserror::Error)]
pub enum AtLeastError {
    /// A fault of the storage.
    #[error(transparent)]
    Fault(#[from] Fault),
    /// A revision the store never committed: the caller's error.
    #[error("the store has not committed revision {wanted} (its newest is {newest})")]
    UnknownRevision {
        /// The revision asked for.
        wanted: u64,
        /// The newest the store has.
        newest: u64,
    },
}
