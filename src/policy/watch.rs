//! Hot reload: the live policy snapshot, and everything that replaces it.
//!
//! [`LivePolicies`] holds the snapshot that decisions use behind an atomic
//! pointer. A reload re-reads every file, builds and validates a whole new
//! snapshot, and swaps it in only if it is valid; a refused reload leaves the
//! old snapshot serving and records its errors. Reloads are triggered by file
//! system events (debounced), by SIGHUP, and by a periodic content check that
//! catches events the watcher missed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use serde::Serialize;
use time::OffsetDateTime;

use super::{load_files, Files, LoadError, PolicyError, PolicySnapshot, Sources};

/// What started a reload attempt.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The first load at start-up.
    Startup,
    /// A file system event in a watched folder.
    Watch,
    /// The periodic content check found changed files.
    Poll,
    /// SIGHUP or an explicit request.
    Signal,
}

/// The outcome of the most recent reload attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReloadStatus {
    /// Whether the attempt produced the snapshot now serving.
    pub ok: bool,
    /// What started it.
    pub trigger: Trigger,
    /// When it finished.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// SHA-256 of the files it read (empty if they could not be read).
    pub sha256: String,
    /// Why it was refused; empty when `ok`.
    pub errors: Vec<LoadError>,
    /// For each error, the line of the refused file it points at, as it
    /// was read (at most 240 characters), so that the console can show the
    /// offending line even after the file changed. Not part of the JSON
    /// answer, which has the location.
    #[serde(skip)]
    pub lines: Vec<Option<String>>,
}

/// The line each error points at, in the files that were read.
fn offending_lines(files: &Files, errors: &[LoadError]) -> Vec<Option<String>> {
    errors
        .iter()
        .map(|e| {
            let line = e.line?;
            let file = files
                .policies
                .iter()
                .chain(&files.schemas)
                .chain(&files.entities)
                .find(|f| f.name == e.file)?;
            let text = file.text.lines().nth(line.checked_sub(1)?)?;
            Some(text.chars().take(240).collect())
        })
        .collect()
}

/// A check a new snapshot must pass before it replaces the live one, beyond
/// its own validity: the server installs one that checks the stored data
/// still fits the new schema, so that this module knows nothing of the store.
pub type Guard = Box<dyn Fn(&PolicySnapshot) -> Result<(), Vec<LoadError>> + Send + Sync>;

/// A snapshot and the outcome of the reload attempt that left it serving,
/// published together in one atomic swap: a reader never sees a status that
/// does not belong to the set it is served.
#[derive(Debug)]
pub struct Published {
    /// The set decisions use.
    pub snapshot: Arc<PolicySnapshot>,
    /// The last reload attempt (which produced `snapshot` when `ok`).
    pub last_reload: ReloadStatus,
}

/// The most reads a reload makes while waiting for files to stop changing
/// before it gives up (the old set keeps serving; the next event or poll
/// tries again).
const MAX_SETTLE_PASSES: usize = 10;

/// The live policy set and the machinery that replaces it.
pub struct LivePolicies {
    sources: Sources,
    /// How long every file must stay unchanged before it is taken.
    settle: Duration,
    /// What readers load: never locked, so no request waits on a reload.
    current: ArcSwap<Published>,
    /// Serialises reloads. A `std::sync::Mutex` because reloads are
    /// synchronous file work that never crosses an `.await`; readers never
    /// take it.
    /// The check a reloaded snapshot must pass before the swap. A `std`
    /// mutex: taken only inside a reload, which never crosses an `.await`.
    guard: Mutex<Option<Arc<Guard>>>,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    generation: u64,
}

impl LivePolicies {
    /// Loads the policy set for the first time, once its files have been
    /// unchanged for `settle`. Fails with every error found when the set is
    /// invalid, so that the daemon refuses to start on it.
    pub fn start(sources: Sources, settle: Duration) -> Result<Arc<Self>, PolicyError> {
        let files = read_settled(&sources, settle)?;
        let snapshot = load_files(&files, 1)?;
        let last_reload = ReloadStatus {
            ok: true,
            trigger: Trigger::Startup,
            at: snapshot.loaded_at,
            sha256: files.sha256.clone(),
            errors: Vec::new(),
            lines: Vec::new(),
        };
        Ok(Arc::new(Self {
            sources,
            settle,
            guard: Mutex::new(None),
            current: ArcSwap::from_pointee(Published {
                snapshot,
                last_reload,
            }),
            state: Mutex::new(ReloadState { generation: 1 }),
        }))
    }

    /// The snapshot serving now. Callers keep the returned `Arc` for the whole
    /// of one decision, so a reload in the middle never mixes two sets.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.current.load().snapshot.clone()
    }

    /// The snapshot serving now with the outcome of the last reload attempt,
    /// as one consistent pair. Never waits on a reload in progress.
    pub fn published(&self) -> Arc<Published> {
        self.current.load_full()
    }

    /// Installs the check every reloaded snapshot must pass before it
    /// replaces the live one; a snapshot it refuses is refused like an
    /// invalid one (its errors in [`LivePolicies::last_reload`], the old set
    /// serving).
    pub fn set_guard(&self, guard: Guard) {
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(guard));
    }

    /// Drops the guard (and what it holds), at shutdown: a reload after this
    /// is checked by nothing but validation.
    pub fn clear_guard(&self) {
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The outcome of the last reload attempt. Never waits on a reload in
    /// progress.
    pub fn last_reload(&self) -> ReloadStatus {
        self.current.load().last_reload.clone()
    }

    /// Where the policies are read from.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        // A panic while holding this lock cannot leave the state half-written
        // (every field is replaced whole), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the files and swaps in a new snapshot if they changed and are
    /// valid. Unchanged files (same SHA-256 as the last attempt) are skipped
    /// unless `force`; changed files are taken only once they have stopped
    /// changing (see [`read_settled`]). Returns whether a new snapshot is
    /// now serving.
    pub fn reload(&self, trigger: Trigger, force: bool) -> bool {
        let mut state = self.lock();
        // Only this function replaces `current`, under the lock: what it
        // loads here is the last attempt's outcome.
        let published = self.current.load_full();
        let last = &published.last_reload;
        if !force {
            // A cheap first look: nothing changed since the last attempt.
            if let Ok(files) = self.sources.read() {
                if files.sha256 == last.sha256
                    || (last.ok && files.sha256 == published.snapshot.revision.sha256)
                {
                    return false;
                }
            }
        }
        let files = match read_settled(&self.sources, self.settle) {
            Ok(f) => f,
            Err(PolicyError(errors)) => {
                let lines = vec![None; errors.len()];
                return self.refuse(
                    &state,
                    &published,
                    trigger,
                    String::new(),
                    (errors, lines),
                    force,
                );
            }
        };
        if !force && files.sha256 == last.sha256 {
            return false;
        }
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let loaded = load_files(&files, state.generation + 1).and_then(|snapshot| {
            match guard.as_ref().map_or(Ok(()), |g| g(&snapshot)) {
                Ok(()) => Ok(snapshot),
                Err(errors) => Err(PolicyError(errors)),
            }
        });
        match loaded {
            Ok(snapshot) => {
                state.generation += 1;
                if !last.ok && last.sha256.is_empty() {
                    tracing::info!("the policy files are readable again");
                }
                tracing::info!(
                    generation = snapshot.revision.generation,
                    sha256 = %snapshot.revision.sha256,
                    policies = snapshot.meta.len(),
                    ?trigger,
                    "policy set reloaded"
                );
                let last_reload = ReloadStatus {
                    ok: true,
                    trigger,
                    at: snapshot.loaded_at,
                    sha256: files.sha256,
                    errors: Vec::new(),
                    lines: Vec::new(),
                };
                // Counted before the swap, so that a scrape never shows the
                // new generation with the old count.
                metrics::counter!("cedard_policy_reloads_total", "outcome" => "ok").increment(1);
                self.current.store(Arc::new(Published {
                    snapshot,
                    last_reload,
                }));
                true
            }
            Err(PolicyError(errors)) => {
                let lines = offending_lines(&files, &errors);
                self.refuse(
                    &state,
                    &published,
                    trigger,
                    files.sha256,
                    (errors, lines),
                    force,
                )
            }
        }
    }

    fn refuse(
        &self,
        state: &ReloadState,
        published: &Published,
        trigger: Trigger,
        sha256: String,
        (errors, lines): (Vec<LoadError>, Vec<Option<String>>),
        force: bool,
    ) -> bool {
        // The same failure (the same broken files, or the same unreadable
        // folder) is reported once, not on every event or poll.
        let last = &published.last_reload;
        let repeated = !last.ok && last.sha256 == sha256 && last.errors == errors;
        if !repeated || force {
            for e in &errors {
                tracing::error!(
                    ?trigger,
                    "reload refused, still serving generation {}: {e}",
                    state.generation
                );
            }
        }
        metrics::counter!("cedard_policy_reloads_total", "outcome" => "refused").increment(1);
        let last_reload = ReloadStatus {
            ok: false,
            trigger,
            at: OffsetDateTime::now_utc(),
            sha256,
            errors,
            lines,
        };
        self.current.store(Arc::new(Published {
            snapshot: published.snapshot.clone(),
            last_reload,
        }));
        false
    }
}

/// Reads the files once they have stopped changing: two reads whose
/// content, sizes and modification times agree, the second taken when the
/// most recently modified file has been left alone for `settle`. A file
/// written in several steps (`cat > file`, a deploy tool copying in place)
/// is therefore never taken half-written, as long as the writer does not
/// pause longer than `settle`. Files still changing after
/// [`MAX_SETTLE_PASSES`] reads are refused, naming the file.
pub fn read_settled(sources: &Sources, settle: Duration) -> Result<Files, PolicyError> {
    let mut previous = sources.read()?;
    if settle.is_zero() {
        return Ok(previous);
    }
    for _ in 0..MAX_SETTLE_PASSES {
        // Wait until the youngest file is `settle` old; a modification time
        // in the future (clock skew) waits the whole interval.
        let wait = previous
            .youngest()
            .map(|t| match SystemTime::now().duration_since(t) {
                Ok(age) => settle.saturating_sub(age),
                Err(_) => settle,
            })
            .unwrap_or(Duration::ZERO);
        std::thread::sleep(wait);
        let next = sources.read()?;
        if next.sha256 == previous.sha256 && next.stamps == previous.stamps {
            return Ok(next);
        }
        previous = next;
    }
    let file = sources
        .read()
        .ok()
        .and_then(|now| now.first_difference(&previous))
        .unwrap_or_else(|| sources.policies.display().to_string());
    Err(PolicyError(vec![LoadError {
        file,
        line: None,
        column: None,
        message: format!(
            "the file is still being written; it is read once unchanged for {} ms",
            settle.as_millis()
        ),
    }]))
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    _debouncer: Box<dyn std::any::Any + Send>,
}

/// Watches the policy folder, the schema path and the entity data path, and
/// reloads on changes.
///
/// Folders are watched rather than files, because editors save by writing a
/// temporary file and renaming it over the original. Bursts of events are
/// debounced into one reload, which reads the whole set again, so a change
/// spanning several files is applied all at once or not at all.
pub fn watch(live: Arc<LivePolicies>, debounce: Duration) -> Result<WatchGuard, notify::Error> {
    let handler_live = live.clone();
    let mut backoff = Backoff::default();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        let changed = match result {
            Ok(events) => !events.is_empty(),
            Err(errors) => {
                // Something may have been missed: check the content. The
                // same error repeated (a watched folder that is gone) is
                // logged once per back-off step, not on every tick.
                if backoff.ready() {
                    for e in errors {
                        tracing::warn!("file watcher error: {e}");
                    }
                }
                true
            }
        };
        if changed && backoff.ready() {
            handler_live.reload(Trigger::Watch, false);
            // Files that cannot be read at all (a missing folder, a mount
            // gone away) are retried with a growing delay; the periodic
            // check keeps looking meanwhile.
            let last = handler_live.last_reload();
            backoff.record(last.ok || !last.sha256.is_empty());
        }
    })?;
    let sources = live.sources();
    debouncer.watch(&sources.policies, RecursiveMode::Recursive)?;
    let schema_dir: &Path = if sources.schema.is_dir() {
        &sources.schema
    } else {
        sources.schema.parent().unwrap_or(Path::new("."))
    };
    let mut watched: Vec<&Path> = vec![sources.policies.as_path()];
    if !watched.iter().any(|w| schema_dir.starts_with(w)) {
        debouncer.watch(schema_dir, RecursiveMode::Recursive)?;
        watched.push(schema_dir);
    }
    if let Some(entities) = &sources.entities {
        let entities_dir: &Path = if entities.is_dir() {
            entities
        } else {
            entities.parent().unwrap_or(Path::new("."))
        };
        if !watched.iter().any(|w| entities_dir.starts_with(w)) {
            debouncer.watch(entities_dir, RecursiveMode::Recursive)?;
        }
    }
    Ok(WatchGuard {
        _debouncer: Box::new(debouncer),
    })
}

/// The delay before the watcher retries files it could not read: from
/// 100 ms, doubling, up to 10 s; back to nothing after a read succeeds.
#[derive(Debug, Default)]
struct Backoff {
    delay: Duration,
    until: Option<std::time::Instant>,
}

impl Backoff {
    fn ready(&self) -> bool {
        self.until.is_none_or(|t| std::time::Instant::now() >= t)
    }

    fn record(&mut self, readable: bool) {
        if readable {
            *self = Self::default();
        } else {
            self.delay =
                (self.delay * 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
            self.until = Some(std::time::Instant::now() + self.delay);
        }
    }
}

/// Re-checks the files' content every `interval`, for file systems or editors
/// whose events the watcher misses. Cheap: it hashes the files and rebuilds
/// only when they differ from the last attempt.
pub async fn poll(live: Arc<LivePolicies>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let live = live.clone();
        // File reads and parsing are blocking work.
        let _ = tokio::task::spawn_blocking(move || live.reload(Trigger::Poll, false)).await;
    }
}

/// Forces a reload on every SIGHUP.
#[cfg(unix)]
pub async fn reload_on_sighup(live: Arc<LivePolicies>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading policies");
        let live = live.clone();
        let _ = tokio::task::spawn_blocking(move || live.reload(Trigger::Signal, true)).await;
    }
}
