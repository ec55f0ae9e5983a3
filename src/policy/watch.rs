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
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use serde::Serialize;
use time::OffsetDateTime;

use super::{load_files, LoadError, PolicyError, PolicySnapshot, Sources};

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
}

/// A check a new snapshot must pass before it replaces the live one, beyond
/// its own validity: the server installs one that checks the stored data
/// still fits the new schema, so that this module knows nothing of the store.
pub type Guard = Box<dyn Fn(&PolicySnapshot) -> Result<(), Vec<LoadError>> + Send + Sync>;

/// The live policy set and the machinery that replaces it.
pub struct LivePolicies {
    sources: Sources,
    current: ArcSwap<PolicySnapshot>,
    /// The check a reloaded snapshot must pass before the swap. A `std`
    /// mutex: taken only inside a reload, which never crosses an `.await`.
    guard: Mutex<Option<Arc<Guard>>>,
    /// Guards the reload sequence and remembers the last attempt. A
    /// `std::sync::Mutex` because reloads are synchronous file work that never
    /// crosses an `.await`.
    state: Mutex<ReloadState>,
}

struct ReloadState {
    generation: u64,
    last: ReloadStatus,
}

impl LivePolicies {
    /// Loads the policy set for the first time. Fails with every error found
    /// when the set is invalid, so that the daemon refuses to start on it.
    pub fn start(sources: Sources) -> Result<Arc<Self>, PolicyError> {
        let files = sources.read()?;
        let snapshot = load_files(&files, 1)?;
        let last = ReloadStatus {
            ok: true,
            trigger: Trigger::Startup,
            at: snapshot.loaded_at,
            sha256: files.sha256.clone(),
            errors: Vec::new(),
        };
        Ok(Arc::new(Self {
            sources,
            current: ArcSwap::new(snapshot),
            guard: Mutex::new(None),
            state: Mutex::new(ReloadState {
                generation: 1,
                last,
            }),
        }))
    }

    /// The snapshot serving now. Callers keep the returned `Arc` for the whole
    /// of one decision, so a reload in the middle never mixes two sets.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.current.load_full()
    }

    /// Installs the check every reloaded snapshot must pass before it
    /// replaces the live one; a snapshot it refuses is refused like an
    /// invalid one (its errors in [`LivePolicies::last_reload`], the old set
    /// serving).
    pub fn set_guard(&self, guard: Guard) {
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(guard));
    }

    /// The outcome of the last reload attempt.
    pub fn last_reload(&self) -> ReloadStatus {
        self.lock().last.clone()
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
    /// unless `force`. Returns whether a new snapshot is now serving.
    pub fn reload(&self, trigger: Trigger, force: bool) -> bool {
        let mut state = self.lock();
        let files = match self.sources.read() {
            Ok(f) => f,
            Err(PolicyError(errors)) => {
                return self.refuse(&mut state, trigger, String::new(), errors, force);
            }
        };
        if !force && files.sha256 == state.last.sha256 {
            return false;
        }
        if !force && state.last.ok && files.sha256 == self.current.load().revision.sha256 {
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
                tracing::info!(
                    generation = snapshot.revision.generation,
                    sha256 = %snapshot.revision.sha256,
                    policies = snapshot.meta.len(),
                    ?trigger,
                    "policy set reloaded"
                );
                state.last = ReloadStatus {
                    ok: true,
                    trigger,
                    at: snapshot.loaded_at,
                    sha256: files.sha256,
                    errors: Vec::new(),
                };
                self.current.store(snapshot);
                metrics::counter!("cedard_policy_reloads_total", "outcome" => "ok").increment(1);
                true
            }
            Err(PolicyError(errors)) => {
                self.refuse(&mut state, trigger, files.sha256, errors, force)
            }
        }
    }

    fn refuse(
        &self,
        state: &mut ReloadState,
        trigger: Trigger,
        sha256: String,
        errors: Vec<LoadError>,
        force: bool,
    ) -> bool {
        // The same broken files are reported once, not on every poll.
        let repeated = !state.last.ok && state.last.sha256 == sha256 && !sha256.is_empty();
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
        state.last = ReloadStatus {
            ok: false,
            trigger,
            at: OffsetDateTime::now_utc(),
            sha256,
            errors,
        };
        false
    }
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    _debouncer: Box<dyn std::any::Any + Send>,
}

/// Watches the policy folder and the schema path and reloads on changes.
///
/// Folders are watched rather than files, because editors save by writing a
/// temporary file and renaming it over the original. Bursts of events are
/// debounced into one reload, which reads the whole set again, so a change
/// spanning several files is applied all at once or not at all.
pub fn watch(live: Arc<LivePolicies>, debounce: Duration) -> Result<WatchGuard, notify::Error> {
    let handler_live = live.clone();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        match result {
            Ok(events) if !events.is_empty() => {
                handler_live.reload(Trigger::Watch, false);
            }
            Ok(_) => {}
            Err(errors) => {
                for e in errors {
                    tracing::warn!("file watcher error: {e}");
                }
                // Something may have been missed: check the content.
                handler_live.reload(Trigger::Watch, false);
            }
        }
    })?;
    let sources = live.sources();
    debouncer.watch(&sources.policies, RecursiveMode::Recursive)?;
    let schema_dir: &Path = if sources.schema.is_dir() {
        &sources.schema
    } else {
        sources.schema.parent().unwrap_or(Path::new("."))
    };
    if schema_dir != sources.policies.as_path() {
        debouncer.watch(schema_dir, RecursiveMode::Recursive)?;
    }
    Ok(WatchGuard {
        _debouncer: Box::new(debouncer),
    })
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
