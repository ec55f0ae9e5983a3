//! `cedard store`: operations on a directory as a whole, with no daemon
//! running on it. `check` checks a redb data file without writing to it;
//! `copy` moves an installation from its redb file to a PostgreSQL
//! database, verifying the counts.
//!
//! `check` runs the check a daemon runs when it opens the file
//! (`store::check_file`): redb's integrity check on a copy-on-write view of
//! the file, then every record read and decoded. It takes the lock a daemon
//! holds, so a file in use by a running cedard is not read (that daemon
//! checked it when it started; its log and `/readyz` say whether it is
//! damaged).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::store::{
    self, pg, Account, ApiKey, CheckReport, Fault, Invite, Membership, OpenError, Store, User,
    WriteError,
};

/// The `cedard store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check a redb data file without modifying it: exit 0 when it is
    /// sound, 1 when it is damaged (or not a data file), 2 when it cannot
    /// be checked (missing, unreadable, in use by a running cedard).
    Check(CheckArgs),
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

/// Options of `cedard store check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The data file.
    #[arg(long, env = "CEDARD_DATA", default_value = "data/cedard.redb")]
    pub data: PathBuf,
}

/// Runs a `cedard store` subcommand.
pub fn run(command: StoreCommand) -> ExitCode {
    match command {
        StoreCommand::Check(args) => check(&args),
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
    fn read(store: &Store) -> Result<Self, Fault> {
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

/// Why a copy did not happen (or does not match).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source or the target cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading failed.
    #[error(transparent)]
    Fault(#[from] Fault),
    /// The write into the target failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The target holds cedard data already, or does not hold what was
    /// copied.
    #[error("{0}")]
    Refused(String),
}

/// Copies the redb directory at `args.from` into the PostgreSQL database at
/// `args.to`, refusing a target that already holds cedard data, and checks
/// that the target then holds exactly what the source does.
pub fn copy(args: &CopyArgs) -> Result<Counts, CopyError> {
    let source = Store::open(&args.from)?;
    // One transaction copies everything: give it far longer than an API
    // write.
    let options = pg::Options {
        write_timeout: std::time::Duration::from_secs(3600),
        ..pg::Options::default()
    };
    let target = Store::connect(&args.to, &options)?;
    let found = Everything::read(&target)?.counts();
    if found != Counts::default() {
        return Err(CopyError::Refused(format!(
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
        return Err(CopyError::Refused(format!(
            "the copy does not match: the source holds {expected:?}, the target {copied:?}"
        )));
    }
    Ok(copied)
}

/// The exit status of a damaged file.
const DAMAGED: u8 = 1;
/// The exit status of a file that could not be checked.
const NOT_CHECKED: u8 = 2;

fn check(args: &CheckArgs) -> ExitCode {
    let path = args.data.display();
    // redb may panic on a page of garbage; the check catches the panic and
    // reports it as damage, so the default hook's message and backtrace
    // would only repeat it. This command runs on one thread: the hook is
    // quiet for exactly the check.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let checked = store::check_file(&args.data);
    std::panic::set_hook(hook);
    match checked {
        Ok(report) => match &report.damage {
            None => {
                crate::cli::print_out(&format!("ok: {path} is sound: {}\n", summary(&report)));
                ExitCode::SUCCESS
            }
            Some(damage) => {
                eprintln!(
                    "error: {path} is damaged: {damage} (checked in {}); \
                     cedard serving it refuses every write and every stored fact; \
                     restore it from a backup",
                    seconds(&report)
                );
                ExitCode::from(DAMAGED)
            }
        },
        Err(OpenError::Locked(_)) => {
            eprintln!(
                "error: {path} is in use by a running cedard, which checked it when it started \
                 (its log and /readyz say whether it is damaged); stop it to check the file here"
            );
            ExitCode::from(NOT_CHECKED)
        }
        Err(OpenError::Engine { message, .. }) => {
            // redb cannot even read the header: a damaged file, or not a
            // data file at all. Either way it is not a sound one.
            eprintln!(
                "error: {path} is damaged, or not a cedard data file: redb cannot open it: {message}"
            );
            ExitCode::from(DAMAGED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(NOT_CHECKED)
        }
    }
}

/// What a sound file holds: `format 3, 2610 users, … (checked in 0.41 s)`.
fn summary(report: &CheckReport) -> String {
    let c = &report.counts;
    let what = match report.format {
        None => "empty (a new data file)".to_owned(),
        Some(v) => format!(
            "format {v}, {} users, {} accounts, {} memberships, {} invites, {} keys",
            c.users, c.accounts, c.memberships, c.invites, c.keys
        ),
    };
    format!("{what} (checked in {})", seconds(report))
}

fn seconds(report: &CheckReport) -> String {
    format!("{:.2} s", report.elapsed.as_secs_f64())
}
