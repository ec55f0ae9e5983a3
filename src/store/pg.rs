//! The PostgreSQL backend: the directory shared by several cedard replicas.
//!
//! Tables are prefixed `cedard_` so that they can live in a database shared
//! with other software; ids are `COLLATE "C"` so that listings come in the
//! same (byte) order as redb's. Records are stored as the same JSON redb
//! stores. The schema is versioned in `cedard_meta` (`schema_version`) and
//! migrated at start under an advisory lock, so that replicas starting
//! together do not race; a newer schema is refused.
//!
//! Every write transaction first increments `cedard_meta.revision` and ends
//! with `NOTIFY cedard_store, '<revision>'`: the row lock serialises writers
//! across replicas (as redb's single writer does within one), so the rules
//! checked inside a transaction (a taken id, one accept per invite, the last
//! admin) hold across replicas, and every committed write has its own
//! revision, which the other replicas learn through `LISTEN` (or the poll
//! that backs it up). Serialization failures and deadlocks (which a
//! PostgreSQL-protocol database running SERIALIZABLE, such as CockroachDB,
//! may report at any statement) are retried a bounded number of times.
//!
//! Features relied on: transactions, `UPDATE … RETURNING`, unique indexes
//! (one partial-free), `LISTEN/NOTIFY` (optional: without it the poll
//! alone keeps replicas within `--store-poll-ms`), `pg_advisory_xact_lock`
//! for migrations (optional in the same way), `COLLATE "C"`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Row};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    decode, encode, Account, ApiKey, Invite, Membership, Reads, Result, StoreError, Tx, User, View,
};

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The channel writes are announced on.
const CHANNEL: &str = "cedard_store";

/// How many times a transaction that failed to serialize is run again.
const MAX_ATTEMPTS: usize = 8;

type Manager = PostgresConnectionManager<NoTls>;
type Conn = PooledConnection<Manager>;

/// How the backend connects and keeps up with other replicas.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most connections held open.
    pub pool_size: u32,
    /// How often the store revision is polled when no notification came.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pool_size: 16,
            poll: Duration::from_millis(100),
        }
    }
}

/// A connection pool to the shared database, and what this replica knows
/// of the store's revision.
pub struct PgStore {
    pool: Pool<Manager>,
    /// The URL without its password, for messages.
    shown: String,
    /// The newest store revision this replica knows committed.
    revision: Arc<AtomicU64>,
    /// Set when the listener should stop.
    stop: Arc<AtomicBool>,
    /// Writes from this replica queue here rather than each holding a
    /// pooled connection while they wait for the database's write lock:
    /// the pool stays free for decisions however many writes arrive at once.
    writing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A database fault: connection, I/O, a statement that failed.
fn fault(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// Whether a failed statement is worth running the transaction again.
fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            || *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl PgStore {
    /// Connects, migrates the schema (refusing a newer one), reads the
    /// revision and starts listening for other replicas' writes.
    pub fn connect(url: &str, options: &Options) -> Result<Self> {
        let shown = without_password(url);
        let mut config: postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("`{shown}` is not a PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(2));
        }
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = Pool::builder()
            .max_size(options.pool_size.max(2))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(3))
            // A connection that broke (the database restarted) is noticed
            // when it fails and dropped; checking every checkout would cost
            // a round trip per read.
            .test_on_check_out(false)
            .build(manager)
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to `{shown}`: {e}")))?;
        let mut conn = pool.get().map_err(fault)?;
        migrate(&mut conn, &shown)?;
        let now = current_revision(&mut conn)?;
        drop(conn);
        let revision = Arc::new(AtomicU64::new(now));
        let stop = Arc::new(AtomicBool::new(false));
        listen(config, revision.clone(), stop.clone(), options.poll);
        Ok(Self {
            pool,
            shown,
            revision,
            stop,
            writing: std::sync::Mutex::new(()),
        })
    }

    /// The URL, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The newest revision this replica knows committed.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Reads the database's revision now (and remembers it).
    pub fn refresh(&self) -> Result<u64> {
        let mut conn = self.pool.get().map_err(fault)?;
        let now = current_revision(&mut conn)?;
        self.revision.fetch_max(now, Ordering::AcqRel);
        Ok(self.revision())
    }

    /// A read view: every read takes a pooled connection for its one
    /// statement and sees what is committed when it runs. A view holds no
    /// connection between reads, so requests that read and then write never
    /// hold two at once (which, with many writes waiting their turn, would
    /// empty the pool).
    pub fn read(&self) -> Result<PgView> {
        Ok(PgView {
            pool: self.pool.clone(),
        })
    }

    /// Runs `f` in one transaction that holds the store's write lock (the
    /// revision row), commits it, announces its revision, and returns `f`'s
    /// value with the revision. A transaction that fails to serialize is run
    /// again, at most [`MAX_ATTEMPTS`] times.
    pub fn write<T, E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        // Writes serialise on the revision row anyway; queueing them here
        // first costs nothing. A poisoned lock (a panic mid-write) guards
        // nothing: the transaction it held was rolled back.
        let _turn = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.get().map_err(fault)?;
            let outcome = run_once(&mut conn, &mut f);
            match outcome {
                Ok((value, rev)) => {
                    self.revision.fetch_max(rev, Ordering::AcqRel);
                    return Ok((value, rev));
                }
                Err(Failed::Refused(e)) => return Err(e),
                Err(Failed::Db(e)) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(2 * attempt as u64));
                    continue;
                }
                Err(Failed::Db(e)) => return Err(fault(e).into()),
            }
        }
    }
}

enum Failed<E> {
    /// `f` refused (or failed with a store error it chose to return).
    Refused(E),
    /// The database failed outside `f`.
    Db(postgres::Error),
}

fn run_once<T, E: From<StoreError>>(
    conn: &mut Conn,
    f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
) -> Result<(T, u64), Failed<E>> {
    let mut tx = conn.transaction().map_err(Failed::Db)?;
    let row = tx
        .query_one(
            "UPDATE cedard_meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
            &[],
        )
        .map_err(Failed::Db)?;
    let rev: i64 = row.get(0);
    let (value, tx) = {
        let mut pg = PgTx {
            tx: RefCell::new(tx),
            retry: RefCell::new(None),
        };
        let value = f(&mut pg);
        // A statement inside `f` that failed to serialize surfaces as a
        // store fault to `f`; run the whole transaction again.
        if let Some(e) = pg.retry.take() {
            return Err(Failed::Db(e));
        }
        match value {
            Ok(v) => (v, pg.tx.into_inner()),
            Err(e) => return Err(Failed::Refused(e)),
        }
    };
    let mut tx = tx;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &rev.to_string()])
        .map_err(Failed::Db)?;
    tx.commit().map_err(Failed::Db)?;
    Ok((value, u64::try_from(rev).unwrap_or(0)))
}

fn current_revision(conn: &mut Client) -> Result<u64> {
    let row = conn
        .query_one("SELECT value FROM cedard_meta WHERE key = 'revision'", &[])
        .map_err(fault)?;
    let v: i64 = row.get(0);
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Creates the tables of schema version 1, or checks the version found.
fn migrate(conn: &mut Client, shown: &str) -> Result<()> {
    let mut tx = conn.transaction().map_err(fault)?;
    // Replicas starting together migrate one at a time.
    tx.execute("SELECT pg_advisory_xact_lock(7466327)", &[])
        .map_err(fault)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cedard_meta (key text PRIMARY KEY, value bigint NOT NULL)",
    )
    .map_err(fault)?;
    let found: Option<i64> = tx
        .query_opt(
            "SELECT value FROM cedard_meta WHERE key = 'schema_version'",
            &[],
        )
        .map_err(fault)?
        .map(|r| r.get(0));
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Unavailable(format!(
                "the database `{shown}` holds cedard schema version {v}, written by a newer cedard; this cedard reads version {SCHEMA_VERSION} and refuses it"
            )))
        }
        Some(_) => {}
        None => {
            tx.batch_execute(
                "CREATE TABLE cedard_users (
                    id text COLLATE \"C\" PRIMARY KEY,
                    email text NOT NULL UNIQUE,
                    record text NOT NULL);
                 CREATE TABLE cedard_accounts (
                    id text COLLATE \"C\" PRIMARY KEY,
                    record text NOT NULL);
                 CREATE TABLE cedard_memberships (
                    account_id text COLLATE \"C\" NOT NULL,
                    user_id text COLLATE \"C\" NOT NULL,
                    role text NOT NULL,
                    since bigint NOT NULL,
                    PRIMARY KEY (account_id, user_id));
                 CREATE INDEX cedard_memberships_by_user ON cedard_memberships (user_id, account_id);
                 CREATE TABLE cedard_invites (
                    id text COLLATE \"C\" PRIMARY KEY,
                    account_id text COLLATE \"C\" NOT NULL,
                    live_token text UNIQUE,
                    record text NOT NULL);
                 CREATE INDEX cedard_invites_by_account ON cedard_invites (account_id, id);
                 CREATE TABLE cedard_keys (
                    id text COLLATE \"C\" PRIMARY KEY,
                    record text NOT NULL);
                 INSERT INTO cedard_meta (key, value) VALUES ('schema_version', 1), ('revision', 0);",
            )
            .map_err(fault)?;
        }
    }
    tx.commit().map_err(fault)
}

/// Keeps `revision` up to date: `LISTEN` on its own connection, and a poll
/// of the revision every `poll` when nothing is heard (a notification can
/// be missed while the connection is down). Reconnects with a growing
/// delay; stops when `stop` is set.
fn listen(
    config: postgres::Config,
    revision: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    poll: Duration,
) {
    let spawned = std::thread::Builder::new()
        .name("cedard-store-listen".into())
        .spawn(move || {
            let mut delay = Duration::from_millis(100);
            while !stop.load(Ordering::Acquire) {
                match listen_once(&config, &revision, &stop, poll) {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!("store listener: {e}; reconnecting in {delay:?}");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the store listener thread: {e}; other replicas' writes are not seen until a decision asks for a newer revision");
    }
}

fn listen_once(
    config: &postgres::Config,
    revision: &AtomicU64,
    stop: &AtomicBool,
    poll: Duration,
) -> std::result::Result<(), postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        // Whatever was missed while (re)connecting shows in the poll.
        let row = client.query_one("SELECT value FROM cedard_meta WHERE key = 'revision'", &[])?;
        let now: i64 = row.get(0);
        revision.fetch_max(u64::try_from(now).unwrap_or(0), Ordering::AcqRel);
        let mut notes = client.notifications();
        let mut iter = notes.timeout_iter(poll);
        while let Some(note) = iter.next()? {
            if let Ok(rev) = note.payload().parse::<u64>() {
                revision.fetch_max(rev, Ordering::AcqRel);
            }
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }
}

/// A read view over the connection pool.
pub struct PgView {
    pool: Pool<Manager>,
}

/// A write transaction.
struct PgTx<'c> {
    tx: RefCell<postgres::Transaction<'c>>,
    /// A statement that failed to serialize: the transaction is run again.
    retry: RefCell<Option<postgres::Error>>,
}

/// The statements both a view and a transaction run.
trait Query {
    fn rows(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<Vec<Row>>;
    fn exec(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64>;
}

impl Query for PgView {
    fn rows(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<Vec<Row>> {
        self.pool
            .get()
            .map_err(fault)?
            .query(sql, params)
            .map_err(fault)
    }
    fn exec(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64> {
        self.pool
            .get()
            .map_err(fault)?
            .execute(sql, params)
            .map_err(fault)
    }
}

impl Query for PgTx<'_> {
    fn rows(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<Vec<Row>> {
        self.tx
            .borrow_mut()
            .query(sql, params)
            .map_err(|e| self.failed(e))
    }
    fn exec(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64> {
        self.tx
            .borrow_mut()
            .execute(sql, params)
            .map_err(|e| self.failed(e))
    }
}

impl PgTx<'_> {
    fn failed(&self, e: postgres::Error) -> StoreError {
        let shown = fault(&e);
        if retryable(&e) {
            *self.retry.borrow_mut() = Some(e);
        }
        shown
    }
}

fn record<T: serde::de::DeserializeOwned>(table: &'static str, row: &Row) -> Result<T> {
    let text: String = row.get(0);
    decode(table, text.as_bytes())
}

fn json<T: serde::Serialize>(table: &'static str, value: &T) -> Result<String> {
    let bytes = encode(table, value)?;
    String::from_utf8(bytes).map_err(|e| StoreError::Encode {
        table,
        message: e.to_string(),
    })
}

fn one<T: serde::de::DeserializeOwned>(
    q: &impl Query,
    table: &'static str,
    sql: &str,
    id: &str,
) -> Result<Option<T>> {
    match q.rows(sql, &[&id])?.first() {
        Some(row) => Ok(Some(record(table, row)?)),
        None => Ok(None),
    }
}

fn user_of(q: &impl Query, id: &str) -> Result<Option<User>> {
    one(
        q,
        "users",
        "SELECT record FROM cedard_users WHERE id = $1",
        id,
    )
}

fn account_of(q: &impl Query, id: &str) -> Result<Option<Account>> {
    one(
        q,
        "accounts",
        "SELECT record FROM cedard_accounts WHERE id = $1",
        id,
    )
}

fn roles_of(q: &impl Query, user: &str) -> Result<Vec<(String, String)>> {
    Ok(q.rows(
        "SELECT account_id, role FROM cedard_memberships WHERE user_id = $1 ORDER BY account_id",
        &[&user],
    )?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

fn members_of(q: &impl Query, account: &str) -> Result<Vec<(String, Membership)>> {
    Ok(q
        .rows(
            "SELECT user_id, role, since FROM cedard_memberships WHERE account_id = $1 ORDER BY user_id",
            &[&account],
        )?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Membership {
                    role: r.get(1),
                    since: r.get(2),
                },
            )
        })
        .collect())
}

impl Reads for PgView {
    fn user(&self, id: &str) -> Result<Option<User>> {
        user_of(self, id)
    }
    fn account(&self, id: &str) -> Result<Option<Account>> {
        account_of(self, id)
    }
    fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        roles_of(self, user)
    }
}

impl View for PgView {
    fn members(&self, account: &str) -> Result<Vec<(String, Membership)>> {
        members_of(self, account)
    }

    fn role_census(&self, now: i64) -> Result<BTreeMap<String, (usize, usize)>> {
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in self.rows(
            "SELECT role, count(*) FROM cedard_memberships GROUP BY role",
            &[],
        )? {
            let n: i64 = r.get(1);
            out.entry(r.get(0)).or_default().0 += usize::try_from(n).unwrap_or(0);
        }
        for r in self.rows(
            "SELECT record FROM cedard_invites WHERE live_token IS NOT NULL",
            &[],
        )? {
            let invite: Invite = record("invites", &r)?;
            if invite.is_pending(now) {
                out.entry(invite.role).or_default().1 += 1;
            }
        }
        Ok(out)
    }

    fn each_user(&self, f: &mut dyn FnMut(User, Vec<(String, String)>)) -> Result<()> {
        let rows = self.rows(
            "SELECT u.record, m.account_id, m.role FROM cedard_users u
             LEFT JOIN cedard_memberships m ON m.user_id = u.id
             ORDER BY u.id, m.account_id",
            &[],
        )?;
        let mut current: Option<(User, Vec<(String, String)>)> = None;
        for r in &rows {
            let user: User = record("users", r)?;
            let role: Option<(String, String)> = match (r.get(1), r.get(2)) {
                (Some(a), Some(role)) => Some((a, role)),
                _ => None,
            };
            match &mut current {
                Some((u, roles)) if u.id == user.id => roles.extend(role),
                _ => {
                    if let Some((u, roles)) = current.take() {
                        f(u, roles);
                    }
                    current = Some((user, role.into_iter().collect()));
                }
            }
        }
        if let Some((u, roles)) = current {
            f(u, roles);
        }
        Ok(())
    }

    fn each_account(&self, f: &mut dyn FnMut(Account)) -> Result<()> {
        for r in self.rows("SELECT record FROM cedard_accounts ORDER BY id", &[])? {
            f(record("accounts", &r)?);
        }
        Ok(())
    }

    fn user_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        ids_after(self, "cedard_users", after, limit)
    }

    fn account_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        ids_after(self, "cedard_accounts", after, limit)
    }

    fn keys(&self) -> Result<Vec<ApiKey>> {
        self.rows("SELECT record FROM cedard_keys ORDER BY id", &[])?
            .iter()
            .map(|r| record("keys", r))
            .collect()
    }

    fn invites(&self, account: &str) -> Result<Vec<Invite>> {
        self.rows(
            "SELECT record FROM cedard_invites WHERE account_id = $1 ORDER BY id",
            &[&account],
        )?
        .iter()
        .map(|r| record("invites", r))
        .collect()
    }

    fn invite_by_token(&self, sha256: &str) -> Result<Option<Invite>> {
        one(
            self,
            "invites",
            "SELECT record FROM cedard_invites WHERE live_token = $1",
            sha256,
        )
    }
}

fn ids_after(
    q: &impl Query,
    table: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = format!("SELECT id FROM {table} WHERE id > $1 ORDER BY id LIMIT $2");
    Ok(q.rows(&sql, &[&after.unwrap_or(""), &limit])?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

impl Reads for PgTx<'_> {
    fn user(&self, id: &str) -> Result<Option<User>> {
        user_of(self, id)
    }
    fn account(&self, id: &str) -> Result<Option<Account>> {
        account_of(self, id)
    }
    fn roles_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        roles_of(self, user)
    }
}

impl Tx for PgTx<'_> {
    fn membership(&self, account: &str, user: &str) -> Result<Option<Membership>> {
        Ok(self
            .rows(
                "SELECT role, since FROM cedard_memberships WHERE account_id = $1 AND user_id = $2",
                &[&account, &user],
            )?
            .first()
            .map(|r| Membership {
                role: r.get(0),
                since: r.get(1),
            }))
    }

    fn members(&self, account: &str) -> Result<Vec<(String, Membership)>> {
        members_of(self, account)
    }

    fn email_holder(&self, email: &str) -> Result<Option<String>> {
        Ok(self
            .rows("SELECT id FROM cedard_users WHERE email = $1", &[&email])?
            .first()
            .map(|r| r.get(0)))
    }

    fn put_user(&mut self, user: &User) -> Result<()> {
        let record = json("users", user)?;
        self.exec(
            "INSERT INTO cedard_users (id, email, record) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, record = EXCLUDED.record",
            &[&user.id, &user.email, &record],
        )?;
        Ok(())
    }

    fn put_account(&mut self, account: &Account) -> Result<()> {
        let record = json("accounts", account)?;
        self.exec(
            "INSERT INTO cedard_accounts (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&account.id, &record],
        )?;
        Ok(())
    }

    fn put_membership(&mut self, account: &str, user: &str, m: &Membership) -> Result<()> {
        self.exec(
            "INSERT INTO cedard_memberships (account_id, user_id, role, since) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account_id, user_id) DO UPDATE SET role = EXCLUDED.role, since = EXCLUDED.since",
            &[&account, &user, &m.role, &m.since],
        )?;
        Ok(())
    }

    fn delete_membership(&mut self, account: &str, user: &str) -> Result<()> {
        self.exec(
            "DELETE FROM cedard_memberships WHERE account_id = $1 AND user_id = $2",
            &[&account, &user],
        )?;
        Ok(())
    }

    fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        one(
            self,
            "keys",
            "SELECT record FROM cedard_keys WHERE id = $1",
            id,
        )
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<()> {
        let record = json("keys", key)?;
        self.exec(
            "INSERT INTO cedard_keys (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&key.id, &record],
        )?;
        Ok(())
    }

    fn invite(&self, id: &str) -> Result<Option<Invite>> {
        one(
            self,
            "invites",
            "SELECT record FROM cedard_invites WHERE id = $1",
            id,
        )
    }

    fn put_invite(&mut self, invite: &Invite) -> Result<()> {
        let record = json("invites", invite)?;
        self.exec(
            "INSERT INTO cedard_invites (id, account_id, record) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET account_id = EXCLUDED.account_id, record = EXCLUDED.record",
            &[&invite.id, &invite.account, &record],
        )?;
        Ok(())
    }

    fn token_invite(&self, sha256: &str) -> Result<Option<String>> {
        Ok(self
            .rows(
                "SELECT id FROM cedard_invites WHERE live_token = $1",
                &[&sha256],
            )?
            .first()
            .map(|r| r.get(0)))
    }

    fn set_token(&mut self, sha256: &str, invite: &str) -> Result<()> {
        self.exec(
            "UPDATE cedard_invites SET live_token = $1 WHERE id = $2",
            &[&sha256, &invite],
        )?;
        Ok(())
    }

    fn clear_token(&mut self, sha256: &str) -> Result<()> {
        self.exec(
            "UPDATE cedard_invites SET live_token = NULL WHERE live_token = $1",
            &[&sha256],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            without_password("postgres://cedard:s3cret@db.example.com:5432/cedard"),
            "postgres://cedard@db.example.com:5432/cedard"
        );
        assert_eq!(
            without_password("postgres://db.example.com/cedard"),
            "postgres://db.example.com/cedard"
        );
    }
}
