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

use crate::api::{self, AppState};
use crate::policy::watch::{self, LivePolicies};
use crate::policy::{PolicyError, Sources};

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
        }
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

/// Shared handle type for the live policies.
pub type Live = Arc<LivePolicies>;
