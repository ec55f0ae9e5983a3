//! cedard's decision and audit log (`--decision-log PATH`, or `-` for stdout): one JSON
//! line per authorization decision or management write, written by one background thread
//! fed through a bounded queue. This module owns the queue, the writer thread, the line
//! format, size-based rotation, reopening for logrotate, and the drop accounting. It knows
//! nothing about HTTP or Cedar: callers hand it finished [`DecisionEvent`]s and
//! [`WriteEvent`]s made of plain strings and numbers. Its one promise to the request path is
//! that recording never blocks and never fails: when the queue is full or the sink is broken,
//! entries are dropped and counted (`dropped()` and the [`DROPPED_METRIC`] counter), never
//! waited for.
//!
//! Line format: every line is one JSON object whose first field is `"kind"`, either
//! `"decision"` or `"write"`, followed by the fields of [`DecisionEvent`] or [`WriteEvent`]
//! under the same names. `time` is RFC 3339 (UTC as the caller gives it). Optional fields
//! that are `None` are left out of the line rather than written as `null`; `reasons` and
//! `errors` are always present, possibly empty. [`read_line`] reads a line back, so that
//! the format has one owner for writing and reading (`cedard impact` replays the log).

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::authz::{Effect, SetAside};

/// Name of the counter of log entries lost, whether to a full queue or to a failing sink.
pub const DROPPED_METRIC: &str = "cedard_decision_log_dropped_total";

/// Default capacity of the queue between callers and the writer thread.
pub const DEFAULT_QUEUE: usize = 8192;

/// Default number of rotated files kept (`PATH.1` … `PATH.5`).
pub const DEFAULT_KEEP: usize = 5;

/// How often, at most, the writer thread reports a growing drop count. Drops happen on the
/// request path, which must not log, so the writer reports them for it, rate-limited.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Back-off between attempts to queue a flush marker behind a full queue: std's
/// `SyncSender` has no `send_timeout`, and the request path must keep using `try_send`.
const FLUSH_RETRY: Duration = Duration::from_millis(1);

/// Where and what to log, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// File to append to; `-` means stdout. A FIFO or device is fine and is never rotated.
    pub path: PathBuf,
    /// `--decision-log-only deny`: keep only denials. Management writes are always kept.
    pub only_deny: bool,
    /// `--decision-log-context`: include each request's context. Off by default because
    /// contexts can be large and can carry data the operator would rather not keep.
    pub with_context: bool,
    /// `--decision-log-max-mb`, in bytes: rotate before a line would take the file past this.
    /// `None` never rotates (logrotate's move-then-[`DecisionLog::reopen`] still works).
    pub max_bytes: Option<u64>,
    /// Rotated files kept, `PATH.1` (newest) … `PATH.keep` (oldest); older ones are deleted.
    /// With 0, rotation simply deletes the full file.
    pub keep: usize,
    /// Capacity of the queue in entries; 0 is taken as 1.
    pub queue: usize,
}

impl LogConfig {
    /// A config for `path` with the defaults: every decision, no context, no rotation,
    /// [`DEFAULT_KEEP`] rotated files, a [`DEFAULT_QUEUE`]-entry queue.
    pub fn new(path: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            path: path.into(),
            only_deny: false,
            with_context: false,
            max_bytes: None,
            keep: DEFAULT_KEEP,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// A policy that failed to evaluate during a decision, written as
/// `{"policy_id": …, "message": …}` so the log says why, not only which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyError {
    /// Id of the policy whose evaluation errored.
    pub policy_id: String,
    /// The evaluation error, as text.
    pub message: String,
}

/// One authorization decision, written as a `"kind": "decision"` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionEvent {
    /// Unique id of this decision; [`new_event_id`] makes one.
    pub id: String,
    /// When the decision was made; RFC 3339 in the line.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Id of the caller's API key, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The request's id, to join the line with access logs and traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The endpoint that asked, e.g. `/v1/is_authorized`.
    pub endpoint: String,
    /// The principal in Cedar form, e.g. `User::"bob"`.
    pub principal: String,
    /// The action in Cedar form, e.g. `Action::"view"`.
    pub action: String,
    /// The resource in Cedar form, e.g. `Document::"d1"`.
    pub resource: String,
    /// Allow or deny.
    pub decision: Effect,
    /// Ids of the policies that decided.
    pub reasons: Vec<String>,
    /// Policies that errored during evaluation, with their messages.
    pub errors: Vec<PolicyError>,
    /// Generation of the policy set that decided; goes up by one on every reload.
    pub policy_revision: u64,
    /// SHA-256 (hex) of the policy set that decided, to tie the line to exact policy text.
    pub policy_sha256: String,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
    /// The request context; written only when the log was started with `with_context`,
    /// whatever the caller puts here (check [`DecisionLog::with_context`] to skip building it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Value>,
    /// What the question carried that the decision did not use (an AuthZEN
    /// subject's properties when cedard knows the subject; undeclared
    /// context attributes), with why; absent when nothing was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<SetAside>,
    /// For a principal identified by a token: its issuer, subject and `jti`
    /// (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenFacts>,
}

/// Who a verified token said the principal is, for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFacts {
    /// The issuer (`iss`).
    pub issuer: String,
    /// The subject (`sub`, else the issuer's id claim).
    pub subject: String,
    /// The token's `jti`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl From<&crate::identity::Verified> for TokenFacts {
    fn from(t: &crate::identity::Verified) -> Self {
        Self {
            issuer: t.issuer.clone(),
            subject: t.sub.clone().unwrap_or_else(|| t.id.clone()),
            jti: t.jti.clone(),
        }
    }
}

/// One management write (members, roles, invites…), written as a `"kind": "write"` line,
/// so the log can answer "who made bob an admin, and when?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteEvent {
    /// Unique id of this event; [`new_event_id`] makes one.
    pub id: String,
    /// When the write was attempted; RFC 3339 in the line.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Id of the caller's API key, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who made the write, as the caller identifies them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What was done, e.g. `changeMemberRole`.
    pub operation: String,
    /// The account written to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The user or invite the write was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Operation-specific detail, e.g. `{"role": "admin"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// `ok`, or an error code such as `forbidden` or `conflict`.
    pub outcome: String,
    /// When the actor was named by a verified token: its issuer, subject
    /// and `jti` (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_token: Option<TokenFacts>,
}

/// A fresh event id: 16 hex characters, unique within the process and, with overwhelming
/// likelihood, across restarts. Made from std only: a per-process seed (std's randomly keyed
/// hasher over the clock and pid) plus a counter, passed through a bijective mix so that
/// distinct counters can never give the same id.
pub fn new_event_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut hasher = RandomState::new().build_hasher();
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .hash(&mut hasher);
        std::process::id().hash(&mut hasher);
        hasher.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Odd step (the golden ratio constant), so seed + n * step is distinct for every n.
    let x = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    format!("{:016x}", mix64(x))
}

/// splitmix64's finalizer: a bijection on u64 that makes sequential ids look unrelated.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Handle on the decision log. Cheap to clone; every clone feeds the same writer thread.
/// When the last clone is dropped, the writer writes what is still queued and exits.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    only_deny: bool,
    with_context: bool,
}

/// State both the callers and the writer thread touch.
#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    reopen: AtomicBool,
}

impl Shared {
    fn lose(&self, lines: u64) {
        if lines > 0 {
            self.dropped.fetch_add(lines, Ordering::Relaxed);
            metrics::counter!(DROPPED_METRIC).increment(lines);
        }
    }
}

/// What travels through the queue. Events are boxed so the queue's preallocated slots stay
/// small; they are serialized by the writer thread, never by the caller.
enum Msg {
    Decision(Box<DecisionEvent>),
    Write(Box<WriteEvent>),
    /// Wakes an idle writer so it acts on a reopen request now.
    Wake,
    /// Everything queued before this has been written once it is acknowledged.
    Flush(SyncSender<()>),
}

/// The line as written: the event's own fields after a leading `"kind"`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record<'a> {
    Decision(&'a DecisionEvent),
    Write(&'a WriteEvent),
}

/// A line of the log read back: what [`Record`] wrote.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Line {
    /// A `"kind": "decision"` line.
    Decision(DecisionEvent),
    /// A `"kind": "write"` line.
    Write(WriteEvent),
}

/// Reads one line of the log; `None` for anything cedard does not write (a
/// truncated line, another program's JSON, garbage).
pub fn read_line(text: &str) -> Option<Line> {
    serde_json::from_str(text).ok()
}

impl DecisionLog {
    /// Starts the log and its one writer thread.
    ///
    /// Fails when the path's folder does not exist, when the path is a folder, or when a
    /// regular file cannot be opened for appending, so that a mistyped flag stops start-up.
    /// A FIFO or device is opened by the writer thread instead, since opening a FIFO blocks
    /// until someone reads it and start-up must not wait for that.
    pub fn start(config: LogConfig) -> io::Result<DecisionLog> {
        let first = open_at_start(&config.path)?;
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            stdout: is_stdout(&config.path),
            path: config.path,
            max_bytes: config.max_bytes,
            keep: config.keep,
            with_context: config.with_context,
            shared: Arc::clone(&shared),
            sink: None,
            unflushed: 0,
            failing: false,
            line: Vec::with_capacity(1024),
            reported_dropped: 0,
            last_report: None,
        };
        thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer.run(rx, first))?;
        Ok(DecisionLog {
            inner: Some(Arc::new(Inner {
                tx,
                shared,
                only_deny: config.only_deny,
                with_context: config.with_context,
            })),
        })
    }

    /// A log that records nothing, for when `--decision-log` is not given.
    pub fn disabled() -> DecisionLog {
        DecisionLog { inner: None }
    }

    /// Whether anything is recorded at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a decision with this outcome would be kept, so callers can skip building an
    /// event that would be thrown away: false when disabled, or for an allow under `only_deny`.
    pub fn wants(&self, allow: bool) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| !(inner.only_deny && allow))
    }

    /// Whether request contexts are written, so callers can skip cloning one that is not.
    pub fn with_context(&self) -> bool {
        self.inner.as_ref().is_some_and(|inner| inner.with_context)
    }

    /// Records a decision. Never blocks: if the queue is full the entry is dropped and
    /// counted. Allows are ignored under `only_deny` even if the caller did not ask [`wants`].
    ///
    /// [`wants`]: DecisionLog::wants
    pub fn decision(&self, event: DecisionEvent) {
        if let Some(inner) = &self.inner {
            if !(inner.only_deny && event.decision == Effect::Allow) {
                inner.send(Msg::Decision(Box::new(event)));
            }
        }
    }

    /// Records a management write. Never blocks, like [`DecisionLog::decision`]; writes are
    /// kept whatever `only_deny` says.
    pub fn write(&self, event: WriteEvent) {
        if let Some(inner) = &self.inner {
            inner.send(Msg::Write(Box::new(event)));
        }
    }

    /// Entries lost so far: to a full queue, or to a sink that failed to take them.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.shared.dropped.load(Ordering::Relaxed))
    }

    /// Asks the writer to close the file and open `PATH` afresh, for logrotate's
    /// move-then-signal. Returns at once; entries still queued go to the new file.
    /// Does nothing for stdout.
    pub fn reopen(&self) {
        if let Some(inner) = &self.inner {
            inner.shared.reopen.store(true, Ordering::Release);
            // Wake an idle writer so the moved file is let go now, not at the next entry.
            // If the queue is full the writer is busy and will see the flag anyway.
            let _ = inner.tx.try_send(Msg::Wake);
        }
    }

    /// Blocks until everything queued before the call has been handed to the sink and
    /// flushed (not fsynced), for shutdown and tests. Returns false if that did not happen
    /// within `timeout`, e.g. because the writer is stuck opening a FIFO nobody reads.
    /// Entries the sink refused count as handled: they show in [`DecisionLog::dropped`].
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let deadline = Instant::now().checked_add(timeout);
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match inner.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    let left = remaining(deadline);
                    if left.is_zero() {
                        return false;
                    }
                    msg = back;
                    thread::sleep(FLUSH_RETRY.min(left));
                }
            }
        }
        ack_rx.recv_timeout(remaining(deadline)).is_ok()
    }
}

/// How long the writer naps between drains while entries keep coming.
const NAP: Duration = Duration::from_millis(2);

/// Empty naps in a row after which the writer blocks until the next entry.
const IDLE_NAPS: u32 = 50;

impl Inner {
    fn send(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            // Disconnected means the writer thread is gone; the entry is just as lost.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.shared.lose(1),
        }
    }
}

/// Time left until `deadline`; `None` is a deadline too far away to represent.
fn remaining(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    })
}

fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Checks the path at start-up, and opens it there when that cannot block.
fn open_at_start(path: &Path) -> io::Result<Option<File>> {
    if is_stdout(path) {
        return Ok(None);
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "decision log {}: folder {} does not exist",
                path.display(),
                folder.display()
            ),
        ));
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("decision log {} is a folder", path.display()),
        )),
        // A FIFO or device: opening may wait for a reader, so the writer thread does it.
        Ok(meta) if !meta.is_file() => Ok(None),
        _ => open_append(path).map(Some).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("decision log {}: {err}", path.display()),
            )
        }),
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        // Lines name principals and may carry request contexts: not for every local user.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

/// `PATH.n`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `PATH.(keep-1)` → `PATH.keep` … `PATH` → `PATH.1`; the rename onto `PATH.keep`
/// replaces the oldest file, so no more than `keep` are ever left.
fn rotate_files(path: &Path, keep: usize) -> io::Result<()> {
    if keep == 0 {
        return ignore_missing(fs::remove_file(path));
    }
    for n in (1..keep).rev() {
        ignore_missing(fs::rename(numbered(path, n), numbered(path, n + 1)))?;
    }
    ignore_missing(fs::rename(path, numbered(path, 1)))
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An open sink: buffered, with what it takes to decide on rotation.
struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
    /// Bytes in the file, counting those still buffered.
    size: u64,
    /// Only regular files rotate: renaming a FIFO or a device would make no sense.
    rotates: bool,
}

impl Sink {
    fn stdout() -> Sink {
        Sink {
            out: BufWriter::new(Box::new(io::stdout())),
            size: 0,
            rotates: false,
        }
    }

    fn file(file: File) -> io::Result<Sink> {
        let meta = file.metadata()?;
        Ok(Sink {
            out: BufWriter::new(Box::new(file)),
            size: meta.len(),
            rotates: meta.is_file(),
        })
    }
}

/// The writer thread's state. Only this thread touches the sink.
struct Writer {
    path: PathBuf,
    stdout: bool,
    max_bytes: Option<u64>,
    keep: usize,
    with_context: bool,
    shared: Arc<Shared>,
    sink: Option<Sink>,
    /// Lines handed to the sink since its last good flush: what a failed flush loses.
    unflushed: u64,
    /// Set on the first I/O error, cleared on the next good flush, so a broken sink is
    /// reported once rather than once per line.
    failing: bool,
    /// Serialization buffer, reused for every line.
    line: Vec<u8>,
    reported_dropped: u64,
    last_report: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>, first: Option<File>) {
        // Open before taking entries: for a FIFO this waits for a reader, here and not in
        // start(); meanwhile the queue fills and callers drop.
        self.sink = match first {
            Some(file) => match Sink::file(file) {
                Ok(sink) => Some(sink),
                Err(err) => {
                    self.fail("open", &err);
                    None
                }
            },
            None => self.open(),
        };
        // Blocks only while the log is idle: a sender finding this thread blocked
        // must wake it (a system call and a context switch on the request's
        // thread, 10% of a busy daemon's CPU when it happened for every entry).
        // While entries keep coming, the thread naps and drains instead, so
        // senders find nobody to wake; after `IDLE_NAPS` empty naps it blocks
        // again, and an idle daemon's writer uses no CPU.
        while let Ok(msg) = rx.recv() {
            self.handle(msg);
            let mut empty = 0;
            loop {
                // Take whatever is queued before flushing, so a busy log flushes once
                // per nap and an idle one has every line visible to readers at once.
                let mut took = false;
                let gone = loop {
                    match rx.try_recv() {
                        Ok(msg) => {
                            self.handle(msg);
                            took = true;
                        }
                        Err(mpsc::TryRecvError::Empty) => break false,
                        Err(mpsc::TryRecvError::Disconnected) => break true,
                    }
                };
                self.flush();
                self.report_drops();
                if gone {
                    return;
                }
                empty = if took { 0 } else { empty + 1 };
                if empty >= IDLE_NAPS {
                    break;
                }
                std::thread::sleep(NAP);
            }
        }
        // Every handle is gone and the queue is drained; the last flush above covered it.
    }

    fn handle(&mut self, msg: Msg) {
        // Checked per entry so that everything the writer takes after a reopen request goes
        // to the new file.
        if self.shared.reopen.load(Ordering::Acquire)
            && self.shared.reopen.swap(false, Ordering::AcqRel)
        {
            self.reopen();
        }
        match msg {
            Msg::Decision(mut event) => {
                if !self.with_context {
                    event.context = None;
                }
                self.write_line(&Record::Decision(&event));
            }
            Msg::Write(event) => self.write_line(&Record::Write(&event)),
            Msg::Wake => {}
            Msg::Flush(ack) => {
                self.flush();
                // The caller may have timed out and gone; nothing to tell it then.
                let _ = ack.try_send(());
            }
        }
    }

    fn write_line(&mut self, record: &Record<'_>) {
        self.line.clear();
        if let Err(err) = serde_json::to_writer(&mut self.line, record) {
            // Only a failing Serialize impl gets here (serde_json::Value cannot fail);
            // losing the one entry beats losing the thread.
            warn!(error = %err, "decision log: cannot serialize an entry; dropped");
            self.shared.lose(1);
            return;
        }
        self.line.push(b'\n');
        let len = self.line.len() as u64;

        if self.sink.is_none() {
            self.sink = self.open();
        }
        let full = match (&self.sink, self.max_bytes) {
            // A line longer than the limit still goes into an empty file rather than
            // rotating forever.
            (Some(sink), Some(max)) => sink.rotates && sink.size > 0 && sink.size + len > max,
            _ => false,
        };
        if full {
            self.rotate();
        }
        let Some(sink) = &mut self.sink else {
            self.shared.lose(1);
            return;
        };
        self.unflushed += 1;
        match sink.out.write_all(&self.line) {
            Ok(()) => sink.size += len,
            Err(err) => self.lose_sink("write", &err),
        }
    }

    fn flush(&mut self) {
        let Some(sink) = &mut self.sink else {
            return;
        };
        match sink.out.flush() {
            Ok(()) => {
                if self.unflushed > 0 && self.failing {
                    info!(path = %self.path.display(), "decision log writing again");
                    self.failing = false;
                }
                self.unflushed = 0;
            }
            Err(err) => self.lose_sink("flush", &err),
        }
    }

    /// Flushes and closes the sink; the next line opens it again.
    fn close(&mut self) {
        self.flush();
        self.sink = None;
    }

    fn reopen(&mut self) {
        if self.stdout {
            return;
        }
        self.close();
        // Open now, so that `PATH` exists again right after the signal, as logrotate's users
        // expect; if it fails, the next line tries again.
        self.sink = self.open();
    }

    fn rotate(&mut self) {
        // Flush first, so every line counted towards this file lands in it, whole.
        self.close();
        if let Err(err) = rotate_files(&self.path, self.keep) {
            self.fail("rotate", &err);
        }
        self.sink = self.open();
    }

    fn open(&mut self) -> Option<Sink> {
        if self.stdout {
            return Some(Sink::stdout());
        }
        match open_append(&self.path).and_then(Sink::file) {
            Ok(sink) => Some(sink),
            Err(err) => {
                self.fail("open", &err);
                None
            }
        }
    }

    /// Gives up the sink after an I/O error, counting the lines it held as lost. The
    /// buffer is discarded, not flushed again on drop, so those lines are not half-retried.
    fn lose_sink(&mut self, what: &str, err: &io::Error) {
        if let Some(sink) = self.sink.take() {
            let _ = sink.out.into_parts();
        }
        self.shared.lose(self.unflushed);
        self.unflushed = 0;
        self.fail(what, err);
    }

    fn fail(&mut self, what: &str, err: &io::Error) {
        if !self.failing {
            warn!(
                path = %self.path.display(),
                error = %err,
                "decision log {what} failed; dropping entries until it recovers"
            );
            self.failing = true;
        }
    }

    fn report_drops(&mut self) {
        let total = self.shared.dropped.load(Ordering::Relaxed);
        if total > self.reported_dropped
            && self
                .last_report
                .is_none_or(|at| at.elapsed() >= DROP_REPORT_EVERY)
        {
            warn!(
                dropped = total - self.reported_dropped,
                total, "decision log dropped entries: queue full or sink failing"
            );
            self.reported_dropped = total;
            self.last_report = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::HashSet;
    use std::process::Command;

    /// Generous bound for anything that should take milliseconds; only a hang reaches it.
    const WAIT: Duration = Duration::from_secs(60);

    fn decision(i: usize, allow: bool) -> DecisionEvent {
        DecisionEvent {
            id: new_event_id(),
            time: OffsetDateTime::now_utc(),
            key: Some("key-1".into()),
            request_id: Some(format!("r{i}")),
            endpoint: "/v1/is_authorized".into(),
            principal: r#"User::"bob""#.into(),
            action: r#"Action::"view""#.into(),
            resource: format!(r#"Document::"d{i}""#),
            decision: if allow { Effect::Allow } else { Effect::Deny },
            reasons: vec!["policy0".into()],
            errors: vec![PolicyError {
                policy_id: "policy9".into(),
                message: "type error".into(),
            }],
            policy_revision: 3,
            policy_sha256: "ab".repeat(32),
            latency_us: 42,
            context: Some(json!({"ip": "10.0.0.1"})),
            ignored: Vec::new(),
            token: None,
        }
    }

    fn write_event(i: usize) -> WriteEvent {
        WriteEvent {
            id: new_event_id(),
            time: OffsetDateTime::now_utc(),
            key: None,
            request_id: Some(format!("r{i}")),
            actor: Some(r#"User::"alice""#.into()),
            operation: "changeMemberRole".into(),
            account: Some("acme".into()),
            target: Some("bob".into()),
            detail: Some(json!({"role": "admin"})),
            outcome: "ok".into(),
            actor_token: None,
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        let text = fs::read_to_string(path).expect("read log");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "last line cut short"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    fn request_ids(lines: &[Value]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l["request_id"].as_str().expect("request_id").to_owned())
            .collect()
    }

    fn expected_ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("r{i}")).collect()
    }

    fn mkfifo(path: &Path) {
        let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
        assert!(status.success(), "mkfifo failed");
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads a FIFO to its end in a thread, handing back the text through a channel so a
    /// broken writer fails the test instead of hanging it.
    fn read_fifo(path: &Path) -> mpsc::Receiver<String> {
        let path = path.to_owned();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let text = fs::read_to_string(&path).expect("read fifo");
            let _ = tx.send(text);
        });
        rx
    }

    #[test]
    fn every_event_written_once_in_order_as_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.log");
        let log = DecisionLog::start(LogConfig::new(&path)).expect("start");
        assert!(log.is_enabled());
        for i in 0..500 {
            if i % 5 == 0 {
                log.write(write_event(i));
            } else {
                log.decision(decision(i, i % 2 == 0));
            }
        }
        assert!(log.flush_blocking(WAIT));
        assert_eq!(log.dropped(), 0);

        let lines = lines(&path);
        assert_eq!(request_ids(&lines), expected_ids(0..500));
        let ids: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
        assert_eq!(ids.len(), 500, "ids are unique");

        let write = &lines[0];
        assert_eq!(write["kind"], "write");
        assert_eq!(write["operation"], "changeMemberRole");
        assert_eq!(write["detail"], json!({"role": "admin"}));
        assert_eq!(write["outcome"], "ok");
        assert!(write.get("key").is_none(), "None fields are left out");

        let deny = &lines[1];
        assert_eq!(deny["kind"], "decision");
        assert_eq!(deny["decision"], "deny");
        assert_eq!(deny["principal"], r#"User::"bob""#);
        assert_eq!(deny["reasons"], json!(["policy0"]));
        assert_eq!(
            deny["errors"],
            json!([{"policy_id": "policy9", "message": "type error"}])
        );
        assert_eq!(deny["policy_revision"], 3);
        assert_eq!(deny["latency_us"], 42);
        let time = deny["time"].as_str().expect("time is a string");
        assert!(
            time.contains('T') && time.ends_with('Z'),
            "RFC 3339: {time}"
        );
        assert_eq!(lines[2]["decision"], "allow");
    }

    #[test]
    fn only_deny_keeps_denials_and_all_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.log");
        let log = DecisionLog::start(LogConfig {
            only_deny: true,
            ..LogConfig::new(&path)
        })
        .expect("start");
        assert!(!log.wants(true));
        assert!(log.wants(false));
        // A caller that ignores wants() still gets only denials logged.
        log.decision(decision(0, true));
        log.decision(decision(1, false));
        log.write(write_event(2));
        assert!(log.flush_blocking(WAIT));
        assert_eq!(request_ids(&lines(&path)), ["r1", "r2"]);

        let all = DecisionLog::start(LogConfig::new(dir.path().join("all.log"))).expect("start");
        assert!(all.wants(true) && all.wants(false));
    }

    #[test]
    fn context_written_only_with_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        for with_context in [false, true] {
            let path = dir.path().join(format!("{with_context}.log"));
            let log = DecisionLog::start(LogConfig {
                with_context,
                ..LogConfig::new(&path)
            })
            .expect("start");
            assert_eq!(log.with_context(), with_context);
            log.decision(decision(0, false));
            assert!(log.flush_blocking(WAIT));
            let line = &lines(&path)[0];
            if with_context {
                assert_eq!(line["context"], json!({"ip": "10.0.0.1"}));
            } else {
                assert!(line.get("context").is_none(), "context left out: {line}");
            }
        }
    }

    /// Reads `PATH.keep` … `PATH.1`, `PATH` in that (chronological) order, checking sizes.
    fn rotated_lines(path: &Path, max: u64, keep: usize) -> Vec<Value> {
        assert!(
            !numbered(path, keep + 1).exists(),
            "more than {keep} rotated files"
        );
        let mut all = Vec::new();
        for n in (0..=keep).rev() {
            let file = if n == 0 {
                path.to_owned()
            } else {
                numbered(path, n)
            };
            if !file.exists() {
                continue;
            }
            let size = fs::metadata(&file).expect("metadata").len();
            assert!(size <= max, "{} is {size} bytes", file.display());
            all.extend(lines(&file));
        }
        all
    }

    #[test]
    fn rotation_loses_and_splits_no_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.log");
        let (max, keep) = (2048, 50);
        let log = DecisionLog::start(LogConfig {
            max_bytes: Some(max),
            keep,
            ..LogConfig::new(&path)
        })
        .expect("start");
        for i in 0..100 {
            log.decision(decision(i, false));
        }
        assert!(log.flush_blocking(WAIT));
        assert!(numbered(&path, 5).exists(), "rotated several times");
        assert_eq!(
            request_ids(&rotated_lines(&path, max, keep)),
            expected_ids(0..100)
        );
    }

    #[test]
    fn rotation_keeps_at_most_keep_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.log");
        let (max, keep) = (1024, 2);
        let log = DecisionLog::start(LogConfig {
            max_bytes: Some(max),
            keep,
            ..LogConfig::new(&path)
        })
        .expect("start");
        for i in 0..100 {
            log.decision(decision(i, false));
        }
        assert!(log.flush_blocking(WAIT));
        assert!(numbered(&path, keep).exists());
        let ids = request_ids(&rotated_lines(&path, max, keep));
        // What is left is the newest lines, contiguous, ending with the last one.
        assert!(ids.len() < 100);
        assert_eq!(ids, expected_ids(100 - ids.len()..100));
        let files = fs::read_dir(dir.path()).expect("read_dir").count();
        assert_eq!(files, keep + 1);
    }

    #[test]
    fn reopen_after_move_writes_to_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.log");
        let moved = dir.path().join("decisions.log.old");
        let log = DecisionLog::start(LogConfig::new(&path)).expect("start");
        for i in 0..10 {
            log.decision(decision(i, false));
        }
        assert!(log.flush_blocking(WAIT));

        // logrotate: move the file away, then signal.
        fs::rename(&path, &moved).expect("move");
        log.reopen();
        wait_until("PATH to be created again", || path.exists());
        for i in 10..20 {
            log.decision(decision(i, false));
        }
        assert!(log.flush_blocking(WAIT));
        assert_eq!(request_ids(&lines(&moved)), expected_ids(0..10));
        assert_eq!(request_ids(&lines(&path)), expected_ids(10..20));
    }

    #[test]
    fn fifo_nobody_reads_never_blocks_callers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        // Start must not wait for a reader either.
        let log = DecisionLog::start(LogConfig {
            queue: 1024,
            ..LogConfig::new(&fifo)
        })
        .expect("start");

        let calls = 100_000;
        let caller = log.clone();
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            for i in 0..calls {
                caller.decision(decision(i, false));
            }
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(WAIT)
            .expect("every decision() call returns while the sink is blocked");
        let dropped = log.dropped();
        assert!(dropped > 0);
        // The writer is still stuck opening the FIFO, so nothing can have been flushed.
        assert!(!log.flush_blocking(Duration::from_millis(20)));

        // Become the reader; once the handle is gone the writer drains the queue and exits.
        let text = read_fifo(&fifo);
        drop(log);
        let text = text.recv_timeout(WAIT).expect("writer finished");
        let written = text.lines().count() as u64;
        assert_eq!(
            written + dropped,
            calls as u64,
            "every entry written or counted"
        );
    }

    #[test]
    fn reader_going_away_counts_losses_and_writer_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let log = DecisionLog::start(LogConfig::new(&fifo)).expect("start");
        // A reader that opens and leaves at once: the writer's open succeeds, its first
        // write then fails with EPIPE.
        drop(File::open(&fifo).expect("open fifo for reading"));
        log.decision(decision(0, false));
        assert!(log.flush_blocking(WAIT));
        assert_eq!(log.dropped(), 1);

        // The next line reopens, which waits for a new reader.
        let text = read_fifo(&fifo);
        for i in 1..5 {
            log.decision(decision(i, false));
        }
        assert!(log.flush_blocking(WAIT), "writer thread still alive");
        drop(log);
        let text = text.recv_timeout(WAIT).expect("writer finished");
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(request_ids(&got), expected_ids(1..5));
    }

    #[test]
    fn full_disk_counts_losses_and_keeps_the_writer() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let log = DecisionLog::start(LogConfig::new(full)).expect("start");
        for round in 1..=2u64 {
            for i in 0..10 {
                log.decision(decision(i, false));
            }
            assert!(log.flush_blocking(WAIT), "writer thread still alive");
            assert_eq!(log.dropped(), 10 * round);
        }
    }

    #[test]
    fn dropping_the_last_handle_drains_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.log");
        let log = DecisionLog::start(LogConfig::new(&path)).expect("start");
        for i in 0..100 {
            log.decision(decision(i, false));
        }
        drop(log);
        wait_until("queued lines to be written", || {
            fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 100)
        });
        assert_eq!(request_ids(&lines(&path)), expected_ids(0..100));
    }

    #[test]
    fn disabled_log_records_nothing() {
        let log = DecisionLog::disabled();
        assert!(!log.is_enabled());
        assert!(!log.wants(false) && !log.wants(true));
        assert!(!log.with_context());
        log.decision(decision(0, false));
        log.write(write_event(1));
        log.reopen();
        assert!(log.flush_blocking(Duration::ZERO));
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn bad_paths_fail_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = DecisionLog::start(LogConfig::new(dir.path().join("nope/decisions.log")));
        assert_eq!(
            missing.expect_err("missing folder").kind(),
            io::ErrorKind::NotFound
        );
        assert!(DecisionLog::start(LogConfig::new(dir.path())).is_err());
        // Nothing was created by the failed starts.
        assert_eq!(fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }

    #[test]
    fn event_ids_are_unique_hex() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_event_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())));
    }
}
