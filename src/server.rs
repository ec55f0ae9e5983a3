//! The daemon: loads the policy set, starts the watcher, the periodic check
//! and the SIGHUP handler, and serves the HTTP API until shut down.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! start the very same server on `127.0.0.1:0`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::accounts::Clock;
use crate::api::{self, AppState};
use crate::entities::{EntityMemo, RoleCatalog};
use crate::policy::watch::{self, LivePolicies};
use crate::policy::{PolicyError, Sources};
use crate::store::{Store, StoreError};

/// Everything the daemon needs to know to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the policies and the schema are.
    pub sources: Sources,
    /// The most requests one batch may hold.
    pub batch_limit: usize,
    /// How long the watcher waits for a burst of file events to settle.
    pub debounce: Duration,
    /// How often the files' content is re-checked in case an event was missed.
    pub poll_interval: Duration,
    /// Whether to watch the folders for file events. Off for file systems
    /// that deliver none (some network mounts); the periodic check and
    /// SIGHUP still reload.
    pub watch: bool,
    /// The redb file of users, accounts, memberships and invites.
    pub data: PathBuf,
    /// The base URL invite links start with (`<public_url>/invites/<token>`),
    /// since the daemon cannot know the address its users reach it by.
    pub public_url: String,
    /// Where "now" comes from: the system clock, or a test's clock.
    pub clock: Clock,
}

impl Config {
    /// The defaults for a policy folder and a schema path.
    pub fn new(policies: impl Into<PathBuf>, schema: impl Into<PathBuf>) -> Self {
        Self {
            sources: Sources {
                policies: policies.into(),
                schema: schema.into(),
            },
            batch_limit: 1000,
            debounce: Duration::from_millis(50),
            poll_interval: Duration::from_secs(2),
            watch: true,
            data: PathBuf::from(DEFAULT_DATA),
            public_url: DEFAULT_PUBLIC_URL.to_owned(),
            clock: Clock::system(),
        }
    }
}

/// The data file when none is given.
pub const DEFAULT_DATA: &str = "data/cedard.redb";

/// The invite-link base when none is given: the default listen address.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8180";

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
    Store(#[from] StoreError),
    /// The socket failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the daemon on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // The store opens first: a data file held by another daemon or written
    // by a newer cedard stops the start before anything else happens.
    let data = config.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    tracing::info!(path = %config.data.display(), "data file open");
    let sources = config.sources.clone();
    let live = tokio::task::spawn_blocking(move || LivePolicies::start(sources))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let snapshot = live.snapshot();
    tracing::info!(
        generation = snapshot.revision.generation,
        sha256 = %snapshot.revision.sha256,
        policies = snapshot.meta.len(),
        "policy set loaded"
    );
    drop(snapshot);
    let _watch = if config.watch {
        Some(watch::watch(live.clone(), config.debounce)?)
    } else {
        None
    };
    let poller = tokio::spawn(watch::poll(live.clone(), config.poll_interval));
    #[cfg(unix)]
    let hup = tokio::spawn(watch::reload_on_sighup(live.clone()));
    let state = AppState {
        live: live.clone(),
        batch_limit: config.batch_limit,
        store: Arc::new(store),
        roles: Arc::new(RoleCatalog::default()),
        memo: Arc::new(EntityMemo::default()),
        public_url: config.public_url.clone().into(),
        clock: config.clock.clone(),
    };
    let app = api::router(state);
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    poller.abort();
    #[cfg(unix)]
    hup.abort();
    served?;
    Ok(())
}
