//! The tables of the redb data file and its format version: the one
//! description of the file, read by the backend that writes it
//! (`redb.rs`) and by the check that inspects it without writing
//! (`check.rs`).

use redb::TableDefinition;

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
/// User id → [`User`](super::User) (JSON).
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Account id → [`Account`](super::Account) (JSON).
pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// (account id, user id) → [`Membership`](super::Membership) (JSON): who belongs to an account.
pub(super) const MEMBERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("memberships");
/// (user id, account id) → role: the index a decision reads to find a user's
/// roles without scanning the memberships.
pub(super) const USER_ACCOUNTS: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("user_accounts");
/// Invite id → [`Invite`](super::Invite) (JSON).
pub(super) const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
/// SHA-256 of a live invite token → invite id. Only pending invites have an
/// entry; the token itself is never stored.
pub(super) const INVITE_TOKENS: TableDefinition<&[u8], &str> =
    TableDefinition::new("invite_tokens");
/// (account id, invite id) → (): the invites of an account, for listing.
pub(super) const ACCOUNT_INVITES: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("account_invites");
/// Key id → [`ApiKey`](super::ApiKey) (JSON): the caller keys, hashed.
pub(super) const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// Normalised email → user id: one user per address.
pub(super) const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");

/// Options that create a file of the store (the data file, its stamp)
/// readable and writable by its owner only (`0600`), whatever the umask:
/// the file holds emails and names. An existing file keeps its mode.
pub(super) fn private_file() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}
