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
//! A replica answers from what it knows only while it knows it is current:
//! the listener confirms the store revision with the database every poll
//! ([`Contact`]), and once no confirmation is younger than
//! `--store-max-staleness-ms` every read that a decision needs is refused
//! ([`Fault::Stale`], a 503), memo or not. A write is bounded by a
//! deadline (its caller's, or `write_timeout`): the wait for this replica's
//! turn, for a pooled connection, and each statement (`lock_timeout`,
//! `statement_timeout`) end by it, so a write refused for time was never
//! committed. A connection lost during `COMMIT` is resolved with
//! `txid_status` on a fresh connection; only when the database cannot be
//! reached to ask is the outcome unknown ([`Fault::OutcomeUnknown`]).
//! A pooled connection is checked before use after any connection was seen
//! to die (the pool's epoch), and a read that finds its connection dead is
//! run once more on another.
//!
//! Features relied on: transactions, `UPDATE … RETURNING`, unique indexes
//! (one partial-free), `LISTEN/NOTIFY` (optional: without it the poll
//! alone keeps replicas within `--store-poll-ms`), `pg_advisory_xact_lock`
//! for migrations (optional in the same way), `COLLATE "C"`,
//! `txid_current`/`txid_status` (resolving a lost commit).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Row};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use super::pg_tls::{self, Connector};
use super::{
    decode, encode, Account, ApiKey, Failure, Fault, Invite, Membership, OpenError, Reads, Result,
    Tx, User, View,
};

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The channel writes are announced on.
const CHANNEL: &str = "cedard_store";

/// How many times a transaction that failed to serialize is run again.
const MAX_ATTEMPTS: usize = 8;

type Tls = Connector;
type Conn = PooledConnection<Manager>;

/// How the backend connects and keeps up with other replicas.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most connections held open.
    pub pool_size: u32,
    /// How often the store revision is polled when no notification came.
    pub poll: Duration,
    /// The longest this replica answers from what it knows without having
    /// confirmed the store revision with the database: past it, reads for
    /// decisions are refused ([`Fault::Stale`]). At least twice `poll`.
    pub max_staleness: Duration,
    /// How long a write may take when its caller gives no deadline.
    pub write_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pool_size: 16,
            poll: Duration::from_millis(100),
            max_staleness: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// When this replica last confirmed the store revision with the database.
#[derive(Debug)]
pub struct Contact {
    origin: Instant,
    /// Milliseconds after `origin` of the last confirmation, plus one (0:
    /// never).
    last: AtomicU64,
}

impl Contact {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Records that the revision was read from the database by a query sent
    /// at `asked`.
    fn confirm(&self, asked: Instant) {
        let ms = asked.saturating_duration_since(self.origin).as_millis();
        self.last.fetch_max(
            u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1),
            Ordering::AcqRel,
        );
    }

    /// When the revision was last confirmed, if ever.
    pub fn confirmed_at(&self) -> Option<Instant> {
        match self.last.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.origin + Duration::from_millis(n - 1)),
        }
    }
}

/// One writer of this replica at a time, waited for until a deadline.
#[derive(Debug, Default)]
struct Turnstile {
    busy: Mutex<bool>,
    freed: Condvar,
}

/// A turn through the [`Turnstile`], given back on drop.
struct Turn<'a>(&'a Turnstile);

impl Turnstile {
    /// Waits for the turn until `deadline`; `None` when it did not come.
    /// A poisoned lock (a panic mid-write) guards nothing: the transaction
    /// it held was rolled back.
    fn enter(&self, deadline: Instant) -> Option<Turn<'_>> {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *busy {
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *busy = true;
        Some(Turn(self))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut busy = self
            .0
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *busy = false;
        self.0.freed.notify_one();
    }
}

/// The pool's connections, checked before use once any connection was seen
/// to die: a database restart or `pg_terminate_backend` kills every pooled
/// connection, and each would otherwise fail the request that drew it.
#[derive(Debug)]
struct Manager {
    inner: PostgresConnectionManager<Tls>,
    /// Raised whenever a connection is found dead; a pooled connection
    /// checked at an older epoch is pinged before it is handed out.
    epoch: Arc<AtomicU64>,
}

/// A pooled connection and the epoch it was last known alive at.
struct Pooled {
    client: Client,
    checked: u64,
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<Pooled, postgres::Error> {
        Ok(Pooled {
            checked: self.epoch.load(Ordering::Acquire),
            client: self.inner.connect()?,
        })
    }

    fn is_valid(&self, conn: &mut Pooled) -> std::result::Result<(), postgres::Error> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if conn.checked < epoch {
            conn.client.simple_query("")?;
            conn.checked = epoch;
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.client.is_closed()
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
    writing: Turnstile,
    /// When the revision was last confirmed with the database.
    contact: Arc<Contact>,
    /// The pool's epoch (see [`Manager`]).
    epoch: Arc<AtomicU64>,
    /// How to open a connection outside the pool (resolving a lost commit).
    async_config: tokio_postgres::Config,
    /// The TLS every connection opens with, as the URL's `sslmode` says.
    tls: Connector,
    options: Options,
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
fn fault(e: impl std::fmt::Display) -> Fault {
    Fault::Unavailable(format!("PostgreSQL: {e}"))
}

/// Whether `e` shows the connection itself is gone (closed, an I/O error,
/// or the server ending the session: `pg_terminate_backend`, a shutdown),
/// as opposed to a statement the server refused.
fn lost(e: &postgres::Error, conn: &Client) -> bool {
    use postgres::error::SqlState;
    conn.is_closed()
        || e.is_closed()
        || e.code().is_none_or(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        })
}

/// A write's statement that ran out of its time (`lock_timeout`,
/// `statement_timeout`): the transaction was rolled back.
fn timed_out(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == postgres::error::SqlState::LOCK_NOT_AVAILABLE
            || *c == postgres::error::SqlState::QUERY_CANCELED
    })
}

/// The refusal of a write that did not finish by its deadline.
fn out_of_time(waiting_for: &str) -> Fault {
    Fault::Unavailable(format!(
        "PostgreSQL: the write ran out of time waiting for {waiting_for}; it was not committed"
    ))
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
    pub fn connect(url: &str, options: &Options) -> Result<Self, OpenError> {
        let shown = without_password(url);
        let (mut async_config, tls) = pg_tls::connector(url, &shown)?;
        if async_config.get_connect_timeout().is_none() {
            async_config.connect_timeout(Duration::from_secs(2));
        }
        // A connection whose peer vanished (a partition, a dead host) is
        // given up by the kernel after this long with data unacknowledged,
        // rather than blocking its thread for the TCP retransmission
        // timeout (many minutes).
        if async_config.get_tcp_user_timeout().is_none() {
            async_config.tcp_user_timeout(Duration::from_secs(5));
        }
        async_config.keepalives(true);
        let config = postgres::Config::from(async_config.clone());
        let epoch = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            inner: PostgresConnectionManager::new(config.clone(), tls.clone()),
            epoch: epoch.clone(),
        };
        let pool = Pool::builder()
            .max_size(options.pool_size.max(2))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(3))
            // Cheap unless a connection was seen to die since this one was
            // last checked (see `Manager`).
            .test_on_check_out(true)
            .error_handler(tls.error_handler())
            .build(manager)
            .map_err(|e| {
                Fault::Unavailable(format!(
                    "cannot connect to `{shown}`: {}",
                    tls.explain(&e.to_string())
                ))
            })?;
        let mut conn = pool.get().map_err(fault)?;
        tls.warn_if_clear(&mut conn);
        migrate(&mut conn, &shown)?;
        let contact = Arc::new(Contact::new());
        let asked = Instant::now();
        let now = current_revision(&mut conn)?;
        contact.confirm(asked);
        drop(conn);
        let revision = Arc::new(AtomicU64::new(now));
        let stop = Arc::new(AtomicBool::new(false));
        listen(Listener {
            config: config.clone(),
            tls: tls.clone(),
            revision: revision.clone(),
            contact: contact.clone(),
            epoch: epoch.clone(),
            stop: stop.clone(),
            poll: options.poll,
        });
        Ok(Self {
            pool,
            shown,
            revision,
            stop,
            writing: Turnstile::default(),
            contact,
            epoch,
            async_config,
            tls,
            options: options.clone(),
        })
    }

    /// How this backend was configured.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// When the store revision was last confirmed with the database.
    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    /// Refuses once the revision has not been confirmed with the database
    /// for longer than `max_staleness`: what this replica knows may be
    /// older than that, and no answer is made from it.
    pub fn current(&self) -> Result<()> {
        let bound = self.options.max_staleness;
        let age = self
            .contact
            .confirmed_at()
            .map(|at| at.elapsed())
            .unwrap_or(Duration::MAX);
        if age <= bound {
            Ok(())
        } else {
            Err(Fault::Stale {
                age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                bound_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
            })
        }
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
        let asked = Instant::now();
        let now = self.read()?.with(|c| {
            c.query_one("SELECT value FROM cedard_meta WHERE key = 'revision'", &[])
                .map(|row| row.get::<_, i64>(0))
        })?;
        self.revision
            .fetch_max(u64::try_from(now).unwrap_or(0), Ordering::AcqRel);
        self.contact.confirm(asked);
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
            epoch: self.epoch.clone(),
        })
    }

    /// Runs `f` in one transaction that holds the store's write lock (the
    /// revision row), commits it, announces its revision, and returns `f`'s
    /// value with the revision. A transaction that fails to serialize, or
    /// that met a dead pooled connection before committing, is run again,
    /// at most [`MAX_ATTEMPTS`] times.
    ///
    /// Everything ends by `deadline` (or `write_timeout` from now): waiting
    /// for this replica's turn, for a connection, and each statement
    /// (`lock_timeout`, `statement_timeout`, so a write stuck behind another
    /// session's lock is rolled back by the server). A refusal for time
    /// means the write was not committed. A connection lost during `COMMIT`
    /// is resolved by asking the database whether the transaction
    /// committed.
    pub fn write<T, E: Failure>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.options.write_timeout);
        let _turn = self
            .writing
            .enter(deadline)
            .ok_or_else(|| out_of_time("this replica's earlier writes"))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| out_of_time("a database connection"))?;
            let mut conn = self.pool.get_timeout(left).map_err(fault)?;
            let outcome = run_once(&mut conn, &mut f, deadline);
            let dead = match &outcome {
                Err(Failed::Db(e) | Failed::CommitLost { error: e, .. }) => lost(e, &conn),
                _ => conn.client.is_closed(),
            };
            if dead {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            drop(conn);
            match outcome {
                Ok((value, rev)) => return Ok((value, self.committed(rev))),
                Err(Failed::Refused(e)) => return Err(e),
                Err(Failed::Late) => return Err(out_of_time("the database").into()),
                Err(Failed::CommitLost { value, rev, xid, error }) => {
                    return match self.resolve(xid, deadline) {
                        Resolved::Committed => Ok((value, self.committed(rev))),
                        Resolved::Aborted => Err(fault(error).into()),
                        Resolved::Unknown(why) => Err(Fault::OutcomeUnknown {
                            reason: format!(
                                "PostgreSQL: the connection was lost while committing ({error}), and {why}"
                            ),
                        }
                        .into()),
                    };
                }
                Err(Failed::Db(e)) if timed_out(&e) => {
                    return Err(Fault::Unavailable(format!(
                        "PostgreSQL: the write did not finish within its time limit ({e}; another session may hold the store's write lock); it was not committed"
                    ))
                    .into())
                }
                // Not committed: the connection died before `COMMIT` was
                // sent (a killed backend, a restarted server), or the
                // transaction failed to serialize.
                Err(Failed::Db(e)) if (dead || retryable(&e)) && attempt < MAX_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(2 * attempt as u64));
                    continue;
                }
                Err(Failed::Db(e)) => return Err(fault(e).into()),
            }
        }
    }

    /// Remembers a revision this replica committed: it is current up to it
    /// as of now.
    fn committed(&self, rev: u64) -> u64 {
        self.revision.fetch_max(rev, Ordering::AcqRel);
        rev
    }

    /// Whether the transaction `xid`, whose `COMMIT` lost its connection,
    /// committed: asked on a connection of its own (the pooled ones may be
    /// as dead as the lost one), until `deadline` and at least a second.
    fn resolve(&self, xid: i64, deadline: Instant) -> Resolved {
        let until = deadline.max(Instant::now() + Duration::from_secs(1));
        // The async client, so that every attempt ends by `until` whatever
        // the network does (a connection that hangs in its handshake
        // included); a blocking client could outlive the request.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return Resolved::Unknown(format!("cannot ask the database ({e})")),
        };
        let (config, tls) = (self.async_config.clone(), self.tls.clone());
        runtime.block_on(async move {
            let mut last =
                String::from("the database could not be reached to ask whether it committed");
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                let asked = tokio::time::timeout(left, async {
                    let (client, connection) = config.connect(tls.clone()).await?;
                    let driver = tokio::spawn(connection);
                    let row = client.query_one("SELECT txid_status($1)", &[&xid]).await;
                    driver.abort();
                    row
                })
                .await;
                match asked {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        last =
                            format!("the database could not be asked whether it committed ({e})");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(Ok(row)) => match row.get::<_, Option<String>>(0).as_deref() {
                        Some("committed") => return Resolved::Committed,
                        Some("aborted") => return Resolved::Aborted,
                        // The lost backend is still finishing.
                        Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        None => {
                            return Resolved::Unknown(
                                "the database no longer knows that transaction".into(),
                            )
                        }
                    },
                }
            }
            Resolved::Unknown(last)
        })
    }
}

/// The answer to "did the transaction whose `COMMIT` was lost commit?".
enum Resolved {
    Committed,
    Aborted,
    Unknown(String),
}

enum Failed<T, E> {
    /// `f` refused (or failed with a store error it chose to return).
    Refused(E),
    /// The database failed outside `f`; nothing was committed.
    Db(postgres::Error),
    /// The deadline passed before `COMMIT`; nothing was committed.
    Late,
    /// The connection was lost during `COMMIT`: the transaction `xid` may
    /// or may not have committed.
    CommitLost {
        value: T,
        rev: u64,
        xid: i64,
        error: postgres::Error,
    },
}

fn run_once<T, E: Failure>(
    conn: &mut Conn,
    f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
    deadline: Instant,
) -> Result<(T, u64), Failed<T, E>> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .ok_or(Failed::Late)?;
    let ms = left.as_millis().max(1);
    let mut tx = conn.transaction().map_err(Failed::Db)?;
    // The server ends any statement of this transaction that would run
    // past the deadline, waiting for a lock included, and rolls it back.
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {ms}"
    ))
    .map_err(Failed::Db)?;
    let row = tx
        .query_one(
            "UPDATE cedard_meta SET value = value + 1 WHERE key = 'revision' RETURNING value, txid_current()",
            &[],
        )
        .map_err(Failed::Db)?;
    let rev: i64 = row.get(0);
    let xid: i64 = row.get(1);
    let (value, tx) = {
        let mut pg = PgTx {
            tx: RefCell::new(tx),
            retry: RefCell::new(None),
        };
        let value = f(&mut pg);
        // A statement inside `f` that failed to serialize (or lost its
        // connection, or its time) surfaces as a store fault to `f`; the
        // whole transaction is judged by that statement's error.
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
    if Instant::now() >= deadline {
        // Dropping the transaction rolls it back.
        return Err(Failed::Late);
    }
    let rev = u64::try_from(rev).unwrap_or(0);
    match tx.commit() {
        Ok(()) => Ok((value, rev)),
        Err(error) if lost(&error, conn) => Err(Failed::CommitLost {
            value,
            rev,
            xid,
            error,
        }),
        Err(error) => Err(Failed::Db(error)),
    }
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
            return Err(Fault::Unavailable(format!(
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

/// What the listener thread keeps up to date.
struct Listener {
    config: postgres::Config,
    tls: Connector,
    revision: Arc<AtomicU64>,
    contact: Arc<Contact>,
    epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    poll: Duration,
}

/// Keeps `revision` up to date and confirmed: `LISTEN` on its own
/// connection, and a query of the revision every `poll` (a notification can
/// be missed while the connection is down), each confirming the revision
/// ([`Contact`]). A lost connection is reopened at once, then with a
/// growing delay (at most a second) while the database stays away; every
/// loss raises the pool's epoch, since whatever killed this connection
/// likely killed the pooled ones. Stops when `stop` is set.
fn listen(listener: Listener) {
    let spawned = std::thread::Builder::new()
        .name("cedard-store-listen".into())
        .spawn(move || {
            let mut delay = Duration::ZERO;
            while !listener.stop.load(Ordering::Acquire) {
                let began = Instant::now();
                match listen_once(&listener) {
                    Ok(()) => return,
                    Err(e) => {
                        listener.epoch.fetch_add(1, Ordering::AcqRel);
                        if began.elapsed() > Duration::from_secs(1) {
                            delay = Duration::ZERO;
                        }
                        tracing::warn!("store listener: {e}; reconnecting in {delay:?}");
                        std::thread::sleep(delay);
                        delay = (delay * 2)
                            .max(Duration::from_millis(50))
                            .min(Duration::from_secs(1));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the store listener thread: {e}; other replicas' writes are not seen, and decisions are refused once the revision is unconfirmed for the staleness bound");
    }
}

fn listen_once(l: &Listener) -> std::result::Result<(), postgres::Error> {
    let mut client = l.config.connect(l.tls.clone())?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    loop {
        if l.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        // Whatever was missed while (re)connecting shows in the query.
        let asked = Instant::now();
        let row = client.query_one("SELECT value FROM cedard_meta WHERE key = 'revision'", &[])?;
        let now: i64 = row.get(0);
        l.revision
            .fetch_max(u64::try_from(now).unwrap_or(0), Ordering::AcqRel);
        l.contact.confirm(asked);
        // Notifications until the next query is due.
        let due = asked + l.poll;
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            let mut notes = client.notifications();
            let Some(note) = notes.timeout_iter(left).next()? else {
                break;
            };
            if let Ok(rev) = note.payload().parse::<u64>() {
                l.revision.fetch_max(rev, Ordering::AcqRel);
            }
            if l.stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }
}

/// A read view over the connection pool.
pub struct PgView {
    pool: Pool<Manager>,
    epoch: Arc<AtomicU64>,
}

impl PgView {
    /// Runs `f` on a pooled connection; if the connection turns out dead
    /// (closed by a restart or `pg_terminate_backend` while pooled), once
    /// more on another, checked one.
    fn with<T>(
        &self,
        f: impl Fn(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut conn = self.pool.get().map_err(fault)?;
        match f(&mut conn) {
            Ok(v) => Ok(v),
            Err(e) if lost(&e, &conn) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                drop(conn);
                let mut conn = self.pool.get().map_err(fault)?;
                f(&mut conn).map_err(|_| fault(e))
            }
            Err(e) => Err(fault(e)),
        }
    }
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
        self.with(|c| c.query(sql, params))
    }
    fn exec(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64> {
        self.with(|c| c.execute(sql, params))
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
    /// A failed statement fails the whole transaction: remembered, so that
    /// the write is judged by it (run again, out of time, or a fault) rather
    /// than by whatever `f` made of it.
    fn failed(&self, e: postgres::Error) -> Fault {
        let shown = fault(&e);
        let mut retry = self.retry.borrow_mut();
        if retry.is_none() {
            *retry = Some(e);
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
    String::from_utf8(bytes).map_err(|e| Fault::Encode {
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

fn keys_of(q: &impl Query) -> Result<Vec<ApiKey>> {
    q.rows("SELECT record FROM cedard_keys ORDER BY id", &[])?
        .iter()
        .map(|r| record("keys", r))
        .collect()
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
        keys_of(self)
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

    fn keys(&self) -> Result<Vec<ApiKey>> {
        keys_of(self)
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
