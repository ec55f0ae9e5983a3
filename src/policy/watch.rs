//! Hot reload: the live policy snapshot, and everything that replaces it.
//!
//! [`LivePolicies`] holds the snapshot that decisions use behind an atomic
//! pointer. A reload re-reads every file, builds and validates a whole new
//! snapshot, and swaps it in only if it is valid; a refused reload leaves the
//! old snapshot serving and records its errors. Reloads are triggered by file
//! system events (debounced), by SIGHUP, and by a periodic content check that
//! catches events the watcher missed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use serde::Serialize;
use time::OffsetDateTime;

use super::{load_files, Files, LoadError, PolicyError, PolicySnapshot, Sources, Stamp};

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
                .chain(&files.issuers)
                .find(|f| f.name == e.file)?;
            let text = file.text.lines().nth(line.checked_sub(1)?)?;
            Some(text.chars().take(240).collect())
        })
        .collect()
}

/// A check a new snapshot must pass before it replaces the live one, beyond
/// its own validity, given the live snapshot, the new one and the files it
/// was read from: the server installs one that checks the stored data still
/// fits the new schema, and with `--reload-guard no-widening` one that
/// proves the new set allows nothing the live one denies, so that this
/// module knows nothing of the store or the solver.
pub type Guard = Box<
    dyn Fn(&PolicySnapshot, &PolicySnapshot, &Files) -> Result<(), Vec<LoadError>> + Send + Sync,
>;

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
    /// The stamps of the files the last attempt read (`None` when they
    /// could not be read): the periodic check reads no file while these
    /// are unchanged.
    stamps: Option<Vec<Stamp>>,
    /// The stamps the periodic check last saw differ, left to the watcher
    /// for one interval.
    deferred: Option<Option<Vec<Stamp>>>,
    /// The acknowledgement file's text at the last attempt: a refused set
    /// is tried again when it changes, even if the set did not.
    acknowledged: String,
}

impl LivePolicies {
    /// Loads the policy set for the first time, once its files have been
    /// unchanged for `settle`. Fails with every error found when the set is
    /// invalid, so that the daemon refuses to start on it.
    pub fn start(sources: Sources, settle: Duration) -> Result<Arc<Self>, PolicyError> {
        let files = read_settled(&sources, settle, &[])?;
        let snapshot = load_files(&files, 1)?;
        let stamps = Some(files.stamps.clone());
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
            state: Mutex::new(ReloadState {
                generation: 1,
                stamps,
                deferred: None,
                acknowledged: files.acknowledged.clone(),
            }),
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
        self.reload_with(trigger, force, &[])
    }

    /// [`LivePolicies::reload`] after file events that show the files at
    /// `complete` (canonical paths: files, or folders whose files all
    /// count) appeared whole, by a rename: they are not waited on to
    /// settle. Every other file still is.
    pub fn reload_complete(&self, trigger: Trigger, complete: &[PathBuf]) -> bool {
        self.reload_with(trigger, false, complete)
    }

    /// The periodic check: looks at the files' metadata only, and reloads
    /// when it differs from what the last attempt read. With a watcher
    /// running (`watched`), a difference is left to it for one interval
    /// first: the watcher knows which files appeared whole by a rename,
    /// and a check racing it would hold them to settle. A difference still
    /// there at the next check is one the watcher missed.
    pub fn check(&self, watched: bool) -> bool {
        let stamps = self.sources.stamps();
        {
            let mut state = self.lock();
            if stamps.is_some() && stamps == state.stamps {
                state.deferred = None;
                return false;
            }
            if watched && state.deferred.as_ref() != Some(&stamps) {
                state.deferred = Some(stamps);
                return false;
            }
            state.deferred = None;
        }
        self.reload(Trigger::Poll, false)
    }

    fn reload_with(&self, trigger: Trigger, force: bool, complete: &[PathBuf]) -> bool {
        let mut state = self.lock();
        // Only this function replaces `current`, under the lock: what it
        // loads here is the last attempt's outcome.
        let published = self.current.load_full();
        let last = &published.last_reload;
        if !force {
            // A cheap first look: nothing changed since the last attempt.
            if let Ok(files) = self.sources.read() {
                if (files.sha256 == last.sha256 && files.acknowledged == state.acknowledged)
                    || (last.ok && files.sha256 == published.snapshot.revision.sha256)
                {
                    state.stamps = Some(files.stamps);
                    return false;
                }
            }
        }
        let files = match read_settled(&self.sources, self.settle, complete) {
            Ok(f) => f,
            Err(PolicyError(errors)) => {
                state.stamps = None;
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
        state.stamps = Some(files.stamps.clone());
        if !force && files.sha256 == last.sha256 && files.acknowledged == state.acknowledged {
            return false;
        }
        state.acknowledged = files.acknowledged.clone();
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let loaded = load_files(&files, state.generation + 1).and_then(|snapshot| {
            match guard
                .as_ref()
                .map_or(Ok(()), |g| g(&published.snapshot, &snapshot, &files))
            {
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
///
/// Files at `complete` (see [`LivePolicies::reload_complete`]) are not
/// waited on: they appeared whole. They are still read twice like the rest.
pub fn read_settled(
    sources: &Sources,
    settle: Duration,
    complete: &[PathBuf],
) -> Result<Files, PolicyError> {
    let mut previous = sources.read()?;
    if settle.is_zero() {
        return Ok(previous);
    }
    for _ in 0..MAX_SETTLE_PASSES {
        // Wait until the youngest file is `settle` old; a modification time
        // in the future (clock skew) waits the whole interval.
        let wait = previous
            .youngest_but(complete)
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

/// Keeps the watcher alive; dropping it stops watching (and ends the
/// thread that reloads on its events).
pub struct WatchGuard {
    _watcher: Box<dyn std::any::Any + Send>,
}

/// Watches the policy folder, the schema path and the entity data path, and
/// reloads on changes.
///
/// Folders are watched rather than files, because editors save by writing a
/// temporary file and renaming it over the original. The events of a burst
/// are gathered until none has come for `debounce`, then one reload reads
/// the whole set again, so a change spanning several files is applied all
/// at once or not at all. The burst's events say which files appeared whole
/// by a rename (see [`Burst`]): those are taken at once, every other change
/// only once it has settled.
pub fn watch(live: Arc<LivePolicies>, debounce: Duration) -> Result<WatchGuard, notify::Error> {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        // The receiver is gone only when the watch is being dropped.
        let _ = tx.send(event);
    })?;
    let sources = live.sources();
    watcher.watch(&sources.policies, RecursiveMode::Recursive)?;
    let schema_dir: &Path = if sources.schema.is_dir() {
        &sources.schema
    } else {
        sources.schema.parent().unwrap_or(Path::new("."))
    };
    let mut watched: Vec<&Path> = vec![sources.policies.as_path()];
    if !watched.iter().any(|w| schema_dir.starts_with(w)) {
        watcher.watch(schema_dir, RecursiveMode::Recursive)?;
        watched.push(schema_dir);
    }
    if let Some(entities) = &sources.entities {
        let entities_dir: &Path = if entities.is_dir() {
            entities
        } else {
            entities.parent().unwrap_or(Path::new("."))
        };
        if !watched.iter().any(|w| entities_dir.starts_with(w)) {
            watcher.watch(entities_dir, RecursiveMode::Recursive)?;
            watched.push(entities_dir);
        }
    }
    if let Some(issuers) = sources.issuers.as_deref().filter(|d| d.is_dir()) {
        if !watched.iter().any(|w| issuers.starts_with(w)) {
            watcher.watch(issuers, RecursiveMode::Recursive)?;
        }
    }
    std::thread::Builder::new()
        .name("cedard-watch".into())
        .spawn(move || reload_on_bursts(&live, &rx, debounce))
        .map_err(notify::Error::io)?;
    Ok(WatchGuard {
        _watcher: Box::new(watcher),
    })
}

/// Reloads once per burst of events that may change something, until the
/// watcher is dropped.
fn reload_on_bursts(
    live: &LivePolicies,
    rx: &std::sync::mpsc::Receiver<notify::Result<notify::Event>>,
    debounce: Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut backoff = Backoff::default();
    loop {
        let mut burst = Burst::default();
        // Wait for an event that may change something: opens and reads (the
        // reloads' own among them) neither start a burst nor prolong one.
        while !burst.changed {
            match rx.recv() {
                Ok(event) => {
                    burst.add(event);
                }
                Err(_) => return,
            }
        }
        let mut quiet_from = std::time::Instant::now() + debounce;
        loop {
            let wait = quiet_from.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(event) => {
                    if burst.add(event) {
                        quiet_from = std::time::Instant::now() + debounce;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // The same error repeated (a watched folder that is gone) is logged
        // once per back-off step, not on every event.
        if !backoff.ready() {
            continue;
        }
        for e in &burst.errors {
            tracing::warn!("file watcher error: {e}");
        }
        live.reload_complete(Trigger::Watch, &burst.complete());
        // Files that cannot be read at all (a missing folder, a mount gone
        // away) are retried with a growing delay; the periodic check keeps
        // looking meanwhile.
        let last = live.last_reload();
        backoff.record(last.ok || !last.sha256.is_empty());
    }
}

/// What one burst of file events says.
#[derive(Debug, Default)]
struct Burst {
    /// Whether anything may have changed. Opens and reads do not count:
    /// the watch reports them (inotify's `IN_OPEN`), the reloads' own reads
    /// included, and reacting to them would read the files for ever.
    changed: bool,
    /// Paths that appeared by a rename.
    renamed: Vec<PathBuf>,
    /// Paths written in place, created or otherwise touched.
    written: Vec<PathBuf>,
    /// What the watcher could not report (something may have been missed).
    errors: Vec<notify::Error>,
}

impl Burst {
    /// Adds one event; whether it may change something.
    fn add(&mut self, event: notify::Result<notify::Event>) -> bool {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                self.errors.push(e);
                self.changed = true;
                return true;
            }
        };
        let mut paths = event.paths;
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                self.written.append(&mut paths)
            }
            EventKind::Access(_) => return false,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                self.renamed.extend(paths.pop())
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => self.renamed.append(&mut paths),
            EventKind::Modify(ModifyKind::Name(RenameMode::From))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Metadata(_)) => {}
            _ => self.written.append(&mut paths),
        }
        self.changed = true;
        true
    }

    /// The canonical paths that appeared by a rename and were not written
    /// in place in the burst: complete files (an editor's save), or a
    /// folder (a ConfigMap's `..data` link swapped to a new version).
    fn complete(&self) -> Vec<PathBuf> {
        let mut complete: Vec<PathBuf> = self
            .renamed
            .iter()
            .filter(|p| !self.written.contains(p))
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        // inotify reports a rename within the watch as `From`, `To` and
        // `Both`: one path, named once.
        complete.sort();
        complete.dedup();
        complete
    }
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

/// Re-checks the files every `interval`, for file systems or editors whose
/// events the watcher misses (see [`LivePolicies::check`]: their metadata,
/// then their content only when that changed). `watched`: whether a
/// watcher runs too.
pub async fn poll(live: Arc<LivePolicies>, interval: Duration, watched: bool) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let live = live.clone();
        // File reads and parsing are blocking work.
        let _ = tokio::task::spawn_blocking(move || live.check(watched)).await;
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };
    use notify::Event;

    use super::Burst;

    fn event(kind: EventKind, paths: &[&Path]) -> notify::Result<Event> {
        Ok(Event {
            kind,
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            attrs: Default::default(),
        })
    }

    fn burst(events: Vec<notify::Result<Event>>) -> Burst {
        let mut burst = Burst::default();
        for e in events {
            burst.add(e);
        }
        burst
    }

    #[test]
    fn opens_and_reads_are_not_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a.cedar");
        let b = burst(vec![
            event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                &[&file],
            ),
            event(EventKind::Access(AccessKind::Read), &[&file]),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                &[&file],
            ),
        ]);
        assert!(!b.changed);
    }

    #[test]
    fn a_file_renamed_in_is_complete_and_one_written_in_place_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tmp, file) = (dir.path().join(".a.cedar.tmp"), dir.path().join("a.cedar"));
        std::fs::write(&file, "x").expect("write");
        // An editor's save: the temporary file written, then renamed over.
        let save = burst(vec![
            event(EventKind::Create(CreateKind::File), &[&tmp]),
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &[&tmp],
            ),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[&tmp],
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &[&tmp],
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                &[&file],
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[&tmp, &file],
            ),
        ]);
        assert!(save.changed);
        let complete: Vec<PathBuf> = save.complete();
        assert_eq!(complete, [file.canonicalize().expect("canonical")]);
        // Written in place: waits to settle.
        let in_place = burst(vec![
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &[&file],
            ),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[&file],
            ),
        ]);
        assert!(in_place.changed);
        assert!(in_place.complete().is_empty());
        // Renamed in, then written in place in the same burst: waits too.
        let both = burst(vec![
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                &[&file],
            ),
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &[&file],
            ),
        ]);
        assert!(both.complete().is_empty());
        // An event the watcher could not deliver: something may have changed.
        let lost = burst(vec![Err(notify::Error::generic("queue overflow"))]);
        assert!(lost.changed && lost.complete().is_empty());
        let removed = burst(vec![event(EventKind::Remove(RemoveKind::File), &[&file])]);
        assert!(removed.changed && removed.complete().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_configmap_swap_makes_its_new_version_folder_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let version = dir.path().join("..2026_12_07_10_05_00.2");
        std::fs::create_dir(&version).expect("mkdir");
        std::fs::write(version.join("a.cedar"), "x").expect("write");
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(&version, &data).expect("link");
        let tmp = dir.path().join("..data_tmp");
        let swap = burst(vec![
            event(EventKind::Create(CreateKind::Folder), &[&version]),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[&version.join("a.cedar")],
            ),
            event(EventKind::Create(CreateKind::Any), &[&tmp]),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[&tmp, &data],
            ),
        ]);
        assert_eq!(
            swap.complete(),
            [version.canonicalize().expect("canonical")]
        );
    }
}
