//! The daemon: opens the store, loads the policy set, starts the watcher, the
//! periodic check and the signal handlers, and serves the HTTP API until
//! shut down.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! start the very same server on `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::accounts::Accounts;
use crate::audit::{DecisionLog, LogConfig};
use crate::clock::Clock;
use crate::config::{LogOnly, Options, ReloadGuard};
use crate::http::state::AllowedHosts;
use crate::http::{self, AppState, HttpLimits, Shared};
use crate::keys::KeyRing;
use crate::pdp::{self, Pdp};
use crate::policy::watch::{self, LivePolicies};
use crate::policy::{PolicyError, Sources};
use crate::serve::{self, ServeOptions};
use crate::store::{Fault, OpenError, Store};

/// Everything the daemon needs to know to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The options of `cedard serve`.
    pub options: Options,
    /// Where "now" comes from: the system clock, or a test's clock.
    pub clock: Clock,
}

impl Config {
    /// The defaults for a policy folder and a schema path.
    pub fn new(
        policies: impl Into<std::path::PathBuf>,
        schema: impl Into<std::path::PathBuf>,
    ) -> Self {
        let mut options = Options::defaults();
        options.policy.policies = policies.into();
        options.policy.schema = schema.into();
        Self {
            options,
            clock: Clock::system(),
        }
    }

    fn sources(&self) -> Sources {
        self.options.policy.sources()
    }
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy set is invalid at start-up.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The folders cannot be watched.
    #[error("cannot watch the policy folders: {0}")]
    Watch(#[from] notify::Error),
    /// The data file cannot be opened (in use, newer format, unreadable).
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The store failed while starting (reading the caller keys).
    #[error(transparent)]
    Fault(#[from] Fault),
    /// The configuration is unsafe or inconsistent; the message says how to
    /// fix it.
    #[error("{0}")]
    Config(String),
    /// The socket failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// Refuses to serve callers off loopback with no way to authenticate them.
fn check_exposure(addr: SocketAddr, keys: &KeyRing, options: &Options) -> Result<(), Error> {
    if keys.is_unreadable() {
        // Nobody is served but the probes.
        return Ok(());
    }
    if !keys.never_keyed() && keys.live_count() == 0 {
        tracing::warn!(
            "every caller key is revoked: nobody is authenticated on any route but /healthz and /readyz until `cedard keys create` makes one"
        );
        return Ok(());
    }
    if !keys.never_keyed() {
        tracing::info!(
            keys = keys.live_count(),
            "caller keys required on every route but /healthz and /readyz"
        );
        return Ok(());
    }
    if options.insecure_no_auth {
        tracing::warn!(
            "INSECURE: --insecure-no-auth is set and no caller key exists: ANYONE WHO CAN REACH {addr} CAN ACT AS ANY USER"
        );
        return Ok(());
    }
    if !addr.ip().is_loopback() {
        return Err(Error::Config(format!(
            "refusing to listen on {addr} without caller keys: anyone who can reach it could act as any user. \
             Create a key first with `cedard keys create --name <caller> --scope decide --data {}` \
             (or listen on 127.0.0.1, or pass --insecure-no-auth for a network you fully trust)",
            options.data.display()
        )));
    }
    tracing::warn!(
        "no caller keys exist: callers are NOT authenticated (loopback only); create one with `cedard keys create`"
    );
    Ok(())
}

fn allowed_hosts(options: &Options) -> AllowedHosts {
    let mut hosts = AllowedHosts::default();
    for h in &options.allowed_hosts {
        if h.trim() == "*" {
            hosts.any = true;
        } else if !h.trim().is_empty() {
            hosts.names.push(h.trim().to_ascii_lowercase());
        }
    }
    if let Some(host) = options
        .public_url
        .as_deref()
        .unwrap_or_default()
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
    {
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        hosts
            .names
            .push(name.trim_matches(['[', ']']).to_ascii_lowercase());
    }
    if hosts.any {
        tracing::warn!("INSECURE: --allowed-host '*' accepts any Host header; web pages can reach cedard through DNS rebinding");
    }
    hosts
}

fn decision_log(options: &Options) -> Result<DecisionLog, Error> {
    let Some(path) = &options.decision_log else {
        return Ok(DecisionLog::disabled());
    };
    let mut config = LogConfig::new(path.clone());
    config.only_deny = options.decision_log_only == Some(LogOnly::Deny);
    config.with_context = options.decision_log_context;
    config.max_bytes = (options.decision_log_max_mb > 0)
        .then(|| options.decision_log_max_mb.saturating_mul(1024 * 1024));
    config.keep = options.decision_log_keep;
    let log = DecisionLog::start(config).map_err(|e| {
        Error::Config(format!(
            "cannot open the decision log `{}`: {e}",
            path.display()
        ))
    })?;
    tracing::info!(path = %path.display(), "decision log open");
    Ok(log)
}

/// Runs the daemon on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let options = config.options.clone();
    let addr = listener.local_addr()?;
    // TLS material is checked before anything else is opened.
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            serve::load_tls(cert, key).map_err(|e| Error::Config(e.to_string()))?,
        )),
        (None, None) => None,
        _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
    };
    let public_url = match &options.public_url {
        Some(url) => url.clone(),
        None => format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
    };
    // The store opens next: a data file held by another daemon or written
    // by a newer cedard stops the start before anything else happens. The
    // file is checked as it opens; a damaged one does not stop the start
    // (the store logs it and refuses every read and write, /readyz says so).
    let started = std::time::Instant::now();
    let store = match options.store.clone() {
        Some(url) => {
            let pg = crate::store::pg::Options {
                poll: options.store_poll(),
                max_staleness: options.store_max_staleness().map_err(Error::Config)?,
                ..Default::default()
            };
            let store = Arc::new(blocking(move || Store::connect(&url, &pg)).await??);
            tracing::info!(store = %store.describe(), revision = store.revision(), "directory on PostgreSQL");
            store
        }
        None => {
            let data = options.data.clone();
            let store = Arc::new(blocking(move || Store::open(&data)).await??);
            if store.damage().is_none() {
                tracing::info!(
                    path = %options.data.display(),
                    revision = store.revision(),
                    open_ms = started.elapsed().as_millis(),
                    "{}",
                    if store.checked_at_open() {
                        "data file checked in full and open"
                    } else {
                        "data file open (unchanged since the check at its last clean close)"
                    }
                );
            }
            store
        }
    };
    let keys = if store.damage().is_some() {
        tracing::warn!(
            "the caller keys cannot be read from the damaged data file: every route but /healthz and /readyz answers 503"
        );
        Arc::new(KeyRing::unreadable())
    } else {
        let reading = store.clone();
        let revision = store.revision();
        let records = blocking(move || reading.read().and_then(|v| v.keys())).await??;
        Arc::new(KeyRing::new(&records).with_max_age(store.max_staleness(), revision))
    };
    check_exposure(addr, &keys, &options)?;
    let sources = config.sources();
    let settle = options.settle();
    let live = blocking(move || LivePolicies::start(sources, settle)).await??;
    {
        // A reload whose schema no longer fits the stored data is refused;
        // with `--reload-guard no-widening`, so is one that could allow what
        // the live set denies.
        let store = store.clone();
        let clock = config.clock.clone();
        let prover = match options.reload_guard {
            ReloadGuard::Off => None,
            ReloadGuard::NoWidening => {
                let prover = options.solver.prover();
                let path = prover.solver_path().map_err(|e| {
                    Error::Config(format!("--reload-guard no-widening needs a solver: {e}"))
                })?;
                tracing::info!(solver = %path.display(), "reload guard: a reload must prove it widens nothing");
                Some(prover)
            }
        };
        live.set_guard(Box::new(move |live, snapshot, files| {
            crate::fit::check(&store, snapshot, clock.now_secs())?;
            match &prover {
                Some(prover) => crate::prove::no_widening(prover, live, snapshot, files),
                None => Ok(()),
            }
        }));
    }
    let snapshot = live.snapshot();
    tracing::info!(
        generation = snapshot.revision.generation,
        sha256 = %snapshot.revision.sha256,
        policies = snapshot.meta.len(),
        "policy set loaded"
    );
    drop(snapshot);
    let log = decision_log(&options)?;
    let watcher = if options.no_watch {
        None
    } else {
        Some(watch::watch(live.clone(), options.debounce())?)
    };
    let mut tasks = vec![tokio::spawn(watch::poll(
        live.clone(),
        options.poll_interval(),
        watcher.is_some(),
    ))];
    #[cfg(unix)]
    {
        tasks.push(tokio::spawn(watch::reload_on_sighup(live.clone())));
        tasks.push(tokio::spawn(reopen_on_sigusr1(log.clone())));
    }
    let pdp = Arc::new(Pdp::new(
        live.clone(),
        store.clone(),
        log.clone(),
        pdp::Limits {
            max_inline_entities: options.max_inline_entities,
            memo_entities: options.memo_entities,
        },
    ));
    let accounts = Arc::new(Accounts::new(
        pdp.clone(),
        keys.clone(),
        config.clock.clone(),
        &public_url,
    ));
    let every = if store.is_remote() {
        options.store_poll()
    } else {
        Duration::from_secs(1)
    };
    tasks.push(tokio::spawn(refresh_keys(accounts.clone(), every)));
    tasks.push(tokio::spawn(recover_writes(store.clone())));
    let console = Arc::new(
        http::ui::Console::new(tls.is_some(), options.decision_log.clone())
            .with_candidates_root(options.candidates_root.clone())
            .with_prover(options.solver.prover()),
    );
    let metrics = http::metrics::handle();
    if let Some(handle) = &metrics {
        tasks.push(tokio::spawn(http::metrics::upkeep(handle.clone())));
    }
    let state = AppState::new(Shared {
        console,
        pdp,
        accounts,
        keys,
        limits: Arc::new(HttpLimits {
            batch_limit: options.batch_limit,
            max_body: options.max_body_bytes,
            max_concurrent: options.max_concurrent.max(1),
            request_timeout: Duration::from_millis(options.request_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(options.body_timeout_ms.max(1)),
            hosts: allowed_hosts(&options),
            insecure_no_auth: options.insecure_no_auth,
            actor: options.actor,
            ..HttpLimits::default()
        }),
        metrics,
        identity: Arc::new(crate::identity::Identity::new(options.token_cache_bytes)),
    });
    let serve_options = ServeOptions {
        tls,
        header_read_timeout: Duration::from_millis(options.header_timeout_ms.max(1)),
        idle_timeout: Duration::from_secs(options.idle_timeout_secs.max(1)),
        max_connections: options.max_connections.max(1),
        max_connections_per_peer: options.max_connections_per_peer.max(1),
    };
    if let Some(metrics_addr) = &options.metrics_listen {
        let listener = TcpListener::bind(metrics_addr).await.map_err(|e| {
            Error::Config(format!(
                "cannot listen on `{metrics_addr}` for metrics: {e}"
            ))
        })?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        let app = http::metrics_router(state.clone());
        let opts = ServeOptions {
            tls: None,
            ..serve_options.clone()
        };
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve::serve(listener, app, opts, std::future::pending()).await {
                tracing::error!("metrics listener failed: {e}");
            }
        }));
    }
    let app = http::router(state);
    let scheme = if serve_options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {scheme}://{addr}");
    let served = serve::serve(listener, app, serve_options, shutdown).await;
    for task in tasks {
        task.abort();
        // Awaited, so that what the task held is dropped now.
        let _ = task.await;
    }
    drop(watcher);
    live.clear_guard();
    log.flush_blocking(Duration::from_secs(2));
    close(store).await;
    served?;
    Ok(())
}

/// Closes the store once nothing else holds it: a redb file is then closed
/// cleanly, checked and stamped (`store::check`), so that the next start
/// need not check it. Whatever still holds it after two seconds (a
/// connection that will not finish) leaves the file to be checked in full
/// at the next start, which is only slower.
async fn close(mut store: Arc<Store>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match Arc::try_unwrap(store) {
            Ok(store) => {
                let _ = tokio::task::spawn_blocking(move || drop(store)).await;
                return;
            }
            Err(shared) if tokio::time::Instant::now() < deadline => {
                store = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                tracing::info!("the store is still in use at shutdown: the next start checks the data file in full");
                return;
            }
        }
    }
}

/// Brings the caller keys up to the store every `every` (the store poll, on
/// a shared database), so that keys written by another replica take effect
/// within a poll, and a replica that cannot confirm its keys stops
/// authenticating (see `KeyRing::current`). Keys changed through this
/// daemon's own API take effect at once.
async fn refresh_keys(accounts: Arc<Accounts>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = accounts.clone();
        match tokio::task::spawn_blocking(move || a.refresh_keys()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot refresh the caller keys: {e}"),
            Err(e) => tracing::warn!("key refresh task failed: {e}"),
        }
    }
}

/// Ends a write outage of the store without a restart: while writes cannot
/// commit (a full disk, say), tries every second to reopen the data file and
/// commit a probe write (`Store::recover`), so that a daemon nobody writes to
/// becomes ready again once the disk has room. A write tries too, but a
/// management operation holds a read of its own, which keeps the old
/// database open; this task waits for reads to finish.
async fn recover_writes(store: Arc<Store>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.write_outage().is_none() {
            continue;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.recover()).await {
            Ok(Ok(())) => {}
            // The outage was logged as it began, and its end will be: the
            // tries in between are not worth a line each.
            Ok(Err(e)) => tracing::debug!("the store does not take writes yet: {e}"),
            Err(e) => tracing::warn!("store recovery task failed: {e}"),
        }
    }
}

/// Reopens the decision log on SIGUSR1, for logrotate's
/// move-then-signal.
#[cfg(unix)]
async fn reopen_on_sigusr1(log: DecisionLog) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1; the decision log cannot be reopened by signal");
        return;
    };
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening the decision log");
        log.reopen();
    }
}
