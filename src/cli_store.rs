//! `cedard store`: operations on a directory as a whole, with no daemon
//! running on it. `copy` moves an installation from its redb file to a
//! PostgreSQL database, verifying the counts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::store::{pg, Account, ApiKey, Invite, Membership, Store, StoreError, User};

/// The `cedard store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a directory from a redb file into an empty PostgreSQL database,
    /// in one transaction, and verify the counts.
    Copy(CopyArgs),
}

/// Options of `cedard store copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The redb data file to copy (no daemon may hold it).
    #[arg(long)]
    pub from: PathBuf,
    /// The PostgreSQL URL to copy into; its cedard tables must be empty.
    #[arg(long)]
    pub to: String,
}

/// Runs a `cedard store` subcommand.
pub fn run(command: StoreCommand) -> ExitCode {
    match command {
        StoreCommand::Copy(args) => match copy(&args) {
            Ok(counts) => {
                println!(
                    "copied {} users, {} accounts, {} memberships, {} invites, {} keys from {} to {}; counts verified",
                    counts.users,
                    counts.accounts,
                    counts.memberships,
                    counts.invites,
                    counts.keys,
                    args.from.display(),
                    crate::store::pg::without_password(&args.to)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// What a directory holds.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Counts {
    /// Users.
    pub users: usize,
    /// Accounts.
    pub accounts: usize,
    /// Memberships.
    pub memberships: usize,
    /// Invites, in every state.
    pub invites: usize,
    /// Caller keys, revoked ones included.
    pub keys: usize,
}

/// Everything a directory holds, read in one view.
struct Everything {
    users: Vec<User>,
    accounts: Vec<Account>,
    memberships: Vec<(String, String, Membership)>,
    invites: Vec<Invite>,
    keys: Vec<ApiKey>,
}

impl Everything {
    fn read(store: &Store) -> Result<Self, StoreError> {
        let view = store.read()?;
        let mut users = Vec::new();
        view.each_user(&mut |u, _| users.push(u))?;
        let mut accounts = Vec::new();
        view.each_account(&mut |a| accounts.push(a))?;
        let mut memberships = Vec::new();
        let mut invites = Vec::new();
        for a in &accounts {
            for (user, m) in view.members(&a.id)? {
                memberships.push((a.id.clone(), user, m));
            }
            invites.extend(view.invites(&a.id)?);
        }
        let keys = view.keys()?;
        Ok(Self {
            users,
            accounts,
            memberships,
            invites,
            keys,
        })
    }

    fn counts(&self) -> Counts {
        Counts {
            users: self.users.len(),
            accounts: self.accounts.len(),
            memberships: self.memberships.len(),
            invites: self.invites.len(),
            keys: self.keys.len(),
        }
    }
}

/// Copies the redb directory at `args.from` into the PostgreSQL database at
/// `args.to`, refusing a target that already holds cedard data, and checks
/// that the target then holds exactly what the source does.
pub fn copy(args: &CopyArgs) -> Result<Counts, StoreError> {
    let source = Store::open(&args.from)?;
    let target = Store::connect(&args.to, &pg::Options::default())?;
    let found = Everything::read(&target)?.counts();
    if found != Counts::default() {
        return Err(StoreError::Unavailable(format!(
            "the target already holds cedard data ({found:?}); copy into an empty database"
        )));
    }
    let all = Everything::read(&source)?;
    target.write(|w| {
        for u in &all.users {
            w.import_user(u)?;
        }
        for a in &all.accounts {
            w.import_account(a)?;
        }
        for (account, user, m) in &all.memberships {
            w.add_member(account, user, &m.role, m.since)?;
        }
        for i in &all.invites {
            w.import_invite(i)?;
        }
        for k in &all.keys {
            w.import_key(k)?;
        }
        Ok(())
    })?;
    let copied = Everything::read(&target)?.counts();
    let expected = all.counts();
    if copied != expected {
        return Err(StoreError::Unavailable(format!(
            "the copy does not match: the source holds {expected:?}, the target {copied:?}"
        )));
    }
    Ok(copied)
}
