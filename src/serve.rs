//! The HTTP front door: serving an axum [`Router`] on an already-bound
//! [`TcpListener`], over plain TCP or TLS, with the connection-level
//! protections that `axum::serve` lacks.
//!
//! This module owns everything between `accept(2)` and the router: the accept
//! loop and its back-off on errors (EMFILE and friends), the connection limits
//! (in all and per peer address, shedding the oldest connection that has not
//! sent a whole request head before refusing a new one),
//! the TLS handshake and certificate loading, HTTP/1.1 and HTTP/2 (picked by
//! ALPN over TLS, by the connection preface in plain text), the slowloris and
//! idle timeouts, handing each request the peer address as
//! `ConnectInfo<SocketAddr>`, and graceful shutdown. It must not know what the
//! routes do: no Cedar, no accounts, no business logic, no request-level
//! policy (request timeouts, body limits and the like belong to the router's
//! tower layers). Anything it needs to decide is a field of [`ServeOptions`].
//!
//! How the timeouts fit together (measured against hyper 1.12 / hyper-util
//! 0.1.21):
//!
//! * hyper's HTTP/1 `header_read_timeout` starts its timer when hyper begins
//!   waiting for a request head, not when the first byte of it arrives, and it
//!   re-arms that timer as soon as a keep-alive response is finished. So on
//!   HTTP/1 it also bounds the idle gap between keep-alive requests: an idle
//!   HTTP/1 connection is closed after `min(header_read_timeout,
//!   idle_timeout)`. It does nothing for HTTP/2, nor for the phase in which
//!   hyper-util's auto builder sniffs for the HTTP/2 preface (a client that
//!   sends nothing at all sits there forever).
//! * Hence a per-connection watchdog here: it counts requests in flight (from
//!   the moment the router is called until the response body has been sent or
//!   dropped) and shuts the connection down gracefully once nothing has been in
//!   flight for `header_read_timeout` (before the first request) or
//!   `idle_timeout` (after one). If the connection still has not closed after a
//!   further quiet `header_read_timeout` (a client ignoring an HTTP/2 GOAWAY, or
//!   half a request head that hyper's graceful shutdown waits for) it is
//!   dropped.
//! * Slow request *bodies* and slow handlers count as in flight and are not
//!   bounded here; that is a job for the router's layers.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

/// How long [`serve`] waits, after `shutdown` fires, for in-flight requests to
/// finish before it drops the connections that remain and returns.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// First pause after an accept error that is not about a single connection.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after repeated accept errors; short enough that the daemon
/// recovers quickly once file descriptors are freed again.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one "connection limit reached" warning per this interval, so an
/// overload does not also flood the log.
const LIMIT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Connection-level settings for [`serve`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Serve TLS with this configuration; `None` serves plain HTTP. If the
    /// configuration advertises no ALPN protocols, `serve` offers `h2` and
    /// `http/1.1`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A client must complete the TLS handshake within this, then send a
    /// complete request head within this; otherwise its connection is cut
    /// (slowloris protection). On HTTP/1 hyper also applies it to the wait for
    /// each following keep-alive request, see the module documentation.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is shut down.
    /// HTTP/1 connections are in effect held to the shorter of this and
    /// `header_read_timeout` (hyper's doing, see the module documentation).
    pub idle_timeout: Duration,
    /// Connections accepted while this many are open are closed at once,
    /// without reading from them. Closing rather than leaving them in the
    /// kernel's backlog gives an overloaded client an immediate, visible error
    /// instead of a hang of up to `idle_timeout` while keep-alive connections
    /// hold every slot. Zero refuses every connection.
    ///
    /// Before refusing, the oldest connection that has not yet sent a whole
    /// request head (a slow head, or a socket opened and left silent) is
    /// closed to make room: a client holding sockets with half-sent heads
    /// cannot lock out clients that send whole requests.
    pub max_connections: usize,
    /// The most connections one peer address holds at once; past it, that
    /// peer's oldest connection without a whole request head is closed to
    /// make room, or else the new one is refused.
    pub max_connections_per_peer: usize,
}

impl Default for ServeOptions {
    /// Plain HTTP, 10 s header timeout, 60 s idle timeout, 512 connections
    /// (below the common soft limit of 1024 file descriptors, leaving room
    /// for the daemon's own files).
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_connections_per_peer: 128,
        }
    }
}

/// Why [`load_tls`] could not build a TLS configuration. Every message names
/// the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, unreadable, a directory, ...).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file is not valid PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// The malformed file.
        path: PathBuf,
        /// What the PEM parser objected to.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{} contains no PEM certificate (expected a \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private-key block.
    #[error(
        "{} contains no PEM private key (expected a \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The first certificate in the file could not be parsed.
    #[error("{} holds an unusable certificate: {source}", path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What rustls objected to.
        source: rustls::Error,
    },
    /// The private key is malformed or of an unsupported type.
    #[error("{} holds an unusable private key: {source}", path.display())]
    BadPrivateKey {
        /// The key file.
        path: PathBuf,
        /// What rustls objected to.
        source: rustls::Error,
    },
    /// The private key is not the one the certificate was issued for.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Any other refusal by rustls.
    #[error(
        "cannot build a TLS configuration from {} and {}: {source}",
        cert.display(),
        key.display()
    )]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls objected to.
        source: rustls::Error,
    },
}

/// Builds a TLS server configuration from a PEM certificate chain (leaf
/// first) and a PEM private key (PKCS#8, PKCS#1 or SEC1), using rustls' `ring`
/// provider, safe default protocol versions, no client authentication, and
/// ALPN `h2` and `http/1.1`.
///
/// Reads the files synchronously: meant for start-up (or a reload off the
/// request path).
pub fn load_tls(cert_pem: &Path, key_pem: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let cert_bytes = read_file(cert_pem)?;
    let key_bytes = read_file(key_pem)?;

    let certs = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_pem.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_pem.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: key_pem.to_owned(),
        },
        source => TlsError::Pem {
            path: key_pem.to_owned(),
            source,
        },
    })?;

    // An explicit provider rather than `ServerConfig::builder()`: the latter
    // panics if some other crate in the final binary also enables aws-lc-rs.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |source| TlsError::Config {
        cert: cert_pem.to_owned(),
        key: key_pem.to_owned(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| match source {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert_pem.to_owned(),
                key: key_pem.to_owned(),
            },
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                TlsError::BadCertificate {
                    path: cert_pem.to_owned(),
                    source,
                }
            }
            // The ring key provider reports keys it cannot load as `General`.
            rustls::Error::General(_) => TlsError::BadPrivateKey {
                path: key_pem.to_owned(),
                source,
            },
            source => config_error(source),
        })?;
    config.alpn_protocols = alpn_protocols();
    Ok(config)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Serves `app` on `listener` until `shutdown` completes.
///
/// Every request carries the peer's address as
/// `axum::extract::ConnectInfo<SocketAddr>`. Errors on accept (for example
/// running out of file descriptors) and on single connections (failed TLS
/// handshakes, protocol errors, timeouts) are logged and survived.
///
/// When `shutdown` completes, the listener is closed, idle connections are
/// closed, and in-flight requests get up to [`SHUTDOWN_GRACE`] to finish;
/// connections still open after that are dropped and `serve` returns.
///
/// Returns an error only if the listener is unusable from the start (its local
/// address cannot be read).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_grace(listener, app, options, shutdown, SHUTDOWN_GRACE).await
}

/// What every connection task needs; shared.
struct Shared {
    app: Router,
    http: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// The open connections that have not yet sent a whole request head.
    unproven: Unproven,
    /// Open connections by peer address.
    peers: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// The open connections that have not yet sent a whole request head, by
/// the order they were accepted, each with the signal that closes it: the
/// ones shed first when the connection limits are reached.
#[derive(Default)]
struct Unproven {
    next: std::sync::atomic::AtomicU64,
    waiting: std::sync::Mutex<std::collections::BTreeMap<u64, Waiting>>,
}

/// A connection in [`Unproven`]: its peer, the signal that closes it, and
/// whether it has sent anything yet.
type Waiting = (
    std::net::IpAddr,
    Arc<tokio::sync::Notify>,
    Arc<std::sync::atomic::AtomicBool>,
);

/// One connection's place in [`Unproven`], until it sends a whole head or
/// ends.
struct Pending {
    shared: Arc<Shared>,
    id: u64,
    proven: std::sync::atomic::AtomicBool,
    shed: Arc<tokio::sync::Notify>,
    /// Set once the client has sent a byte.
    spoke: Arc<std::sync::atomic::AtomicBool>,
}

impl Unproven {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Waiting>> {
        // Entries are inserted and removed whole: a poisoned map is intact.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the oldest connection without a whole head (of `peer` only,
    /// when given); whether there was one. One that sent part of a head
    /// (a slow or stalled sender) goes before one that has sent nothing
    /// yet (most likely a client that just connected and is about to send
    /// its whole request), so that a burst of half-sent heads cannot shed
    /// a client between its connect and its request.
    fn shed_oldest(&self, peer: Option<std::net::IpAddr>) -> bool {
        use std::sync::atomic::Ordering;
        let mut waiting = self.lock();
        let of_peer = |(_, (ip, _, _)): &(&u64, &Waiting)| peer.is_none_or(|p| p == *ip);
        let oldest = waiting
            .iter()
            .filter(of_peer)
            .find(|(_, (_, _, spoke))| spoke.load(Ordering::Relaxed))
            .or_else(|| waiting.iter().find(of_peer))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| waiting.remove(&id)) {
            Some((_, shed, _)) => {
                shed.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Pending {
    fn enter(shared: &Arc<Shared>, peer: std::net::IpAddr) -> Self {
        let id = shared
            .unproven
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shed = Arc::new(tokio::sync::Notify::new());
        let spoke = Arc::new(std::sync::atomic::AtomicBool::new(false));
        shared
            .unproven
            .lock()
            .insert(id, (peer, Arc::clone(&shed), Arc::clone(&spoke)));
        Self {
            shared: Arc::clone(shared),
            id,
            proven: std::sync::atomic::AtomicBool::new(false),
            shed,
            spoke,
        }
    }

    /// The connection sent a whole request head: it is no longer shed.
    fn prove(&self) {
        if !self.proven.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.shared.unproven.lock().remove(&self.id);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.prove();
    }
}

/// A connection's count against its peer's limit, given back on drop.
struct PeerSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr, most: usize) -> Option<Self> {
        let mut peers = shared.peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = peers.entry(ip).or_default();
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.shared.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// How long the accept loop waits for a shed connection's place.
const SHED_WAIT: Duration = Duration::from_millis(100);

async fn serve_with_grace(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared {
        app,
        http: http_builder(options.header_read_timeout),
        tls: options.tls.map(|config| {
            tokio_rustls::TlsAcceptor::from(if config.alpn_protocols.is_empty() {
                let mut config = (*config).clone();
                config.alpn_protocols = alpn_protocols();
                Arc::new(config)
            } else {
                config
            })
        }),
        header_read_timeout: options.header_read_timeout,
        idle_timeout: options.idle_timeout,
        unproven: Unproven::default(),
        peers: std::sync::Mutex::default(),
    });
    // `Semaphore::new` panics above MAX_PERMITS; no real limit is that high.
    let slots = Arc::new(Semaphore::new(
        options.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut last_limit_warning: Option<Instant> = None;
    tracing::info!(%local, tls = shared.tls.is_some(), "serving HTTP");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // Shutdown first, so a stream of new connections cannot delay it.
            biased;
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow with
            // every connection ever served.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                log_task_end(finished);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let ip = peer.ip().to_canonical();
                    let most = options.max_connections_per_peer.max(1);
                    let mut peer_slot = PeerSlot::take(&shared, ip, most);
                    if peer_slot.is_none() && shared.unproven.shed_oldest(Some(ip)) {
                        let deadline = Instant::now() + SHED_WAIT;
                        while peer_slot.is_none() && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            peer_slot = PeerSlot::take(&shared, ip, most);
                        }
                    }
                    let Some(peer_slot) = peer_slot else {
                        tracing::debug!(%peer, "per-peer connection limit reached; closing the new connection");
                        drop(stream);
                        continue;
                    };
                    let mut slot = Arc::clone(&slots).try_acquire_owned().ok();
                    if slot.is_none() && shared.unproven.shed_oldest(None) {
                        slot = tokio::time::timeout(SHED_WAIT, Arc::clone(&slots).acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok);
                    }
                    let Some(slot) = slot else {
                        let now = Instant::now();
                        if last_limit_warning.is_none_or(|at| now - at >= LIMIT_WARN_INTERVAL) {
                            last_limit_warning = Some(now);
                            tracing::warn!(
                                %peer,
                                max_connections = options.max_connections,
                                "connection limit reached; closing new connections"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    let pending = Pending::enter(&shared, ip);
                    connections.spawn(connection(
                        stream,
                        peer,
                        Arc::clone(&shared),
                        stop_rx.clone(),
                        (slot, peer_slot, pending),
                    ));
                }
                Err(error) if is_per_connection_error(&error) => {
                    tracing::debug!(%error, "accept failed for one connection");
                }
                Err(error) => {
                    // EMFILE, ENFILE, ENOBUFS, ...: retrying at once would
                    // spin; waiting lets open connections finish and free
                    // descriptors.
                    tracing::warn!(%error, retry_in = ?backoff, "accept failed; backing off");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    // Closing the listening socket makes new clients fail fast instead of
    // queueing in a backlog nobody will accept from.
    drop(listener);
    stop_tx.send_replace(true);
    tracing::info!(
        open = connections.len(),
        "shutting down; waiting for in-flight requests"
    );
    let drained = tokio::time::timeout(grace, async {
        while let Some(finished) = connections.join_next().await {
            log_task_end(finished);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            ?grace,
            "connections still open after the shutdown grace period; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // HTTP/2 needs a timer for its keep-alive pings, should they be enabled.
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accept errors that concern only the connection being accepted; the next
/// accept can go ahead immediately.
fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn log_task_end(finished: Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished {
        if error.is_panic() {
            tracing::error!(%error, "connection task panicked");
        }
    }
}

/// Runs one connection: TLS handshake if configured, then HTTP. The slots
/// are held for the connection's lifetime so that it counts against the
/// limits; until it sends a whole request head it may be shed (closed at
/// once) to make room for another.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    (_slot, _peer_slot, pending): (OwnedSemaphorePermit, PeerSlot, Pending),
) {
    // Requests and responses are small; Nagle would only add latency.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let stream = Heard {
        io: stream,
        spoke: Arc::clone(&pending.spoke),
    };
    let pending = Arc::new(pending);
    let shed = Arc::clone(&pending.shed);
    let served = async {
        let Some(acceptor) = shared.tls.clone() else {
            serve_http(stream, peer, &shared, stop, &pending).await;
            return;
        };
        // The handshake runs here, in the connection's own task, so a client
        // that stalls it holds only its own connection, and only for this
        // long.
        let handshake = tokio::select! {
            result = tokio::time::timeout(shared.header_read_timeout, acceptor.accept(stream)) => result,
            () = stopped(&mut stop) => return,
        };
        match handshake {
            Ok(Ok(tls)) => serve_http(tls, peer, &shared, stop, &pending).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_elapsed) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    };
    tokio::select! {
        () = served => {}
        () = shed.notified() => {
            tracing::debug!(%peer, "closed a connection without a whole request head to make room");
        }
    }
}

/// A connection's stream that notes when the client first sent a byte
/// (see [`Unproven::shed_oldest`]).
struct Heard<IO> {
    io: IO,
    spoke: Arc<std::sync::atomic::AtomicBool>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Heard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.spoke.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Heard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves HTTP on one connection until the client closes it, it errors, the
/// watchdog finds it idle, or the server shuts down.
async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    pending: &Arc<Pending>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (activity_tx, activity_rx) = watch::channel(Activity::default());
    let activity = Arc::new(activity_tx);

    let service = {
        let app = shared.app.clone();
        let activity = Arc::clone(&activity);
        let pending = Arc::clone(pending);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // Counted from the moment hyper has a full request head, which is
            // when it calls the service; from then on the connection is not
            // shed.
            pending.prove();
            let guard = InFlightGuard::enter(&activity);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    _guard: guard,
                }))
            }
        })
    };

    let conn = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let watchdog = quiet_for(
        activity_rx.clone(),
        shared.header_read_timeout,
        shared.idle_timeout,
    );
    tokio::pin!(watchdog);
    let mut closing = false;

    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = watchdog.as_mut() => {
                if closing {
                    tracing::debug!(%peer, "connection ignored graceful shutdown; dropping it");
                    return;
                }
                tracing::debug!(%peer, "closing idle connection");
                closing = true;
                conn.as_mut().graceful_shutdown();
                watchdog.set(quiet_for(
                    activity_rx.clone(),
                    shared.header_read_timeout,
                    shared.header_read_timeout,
                ));
            }
            () = stopped(&mut stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                watchdog.set(quiet_for(
                    activity_rx.clone(),
                    shared.header_read_timeout,
                    shared.header_read_timeout,
                ));
            }
        }
    }
}

/// Completes when the server starts shutting down (or has gone away).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens when `serve` is
    // finished: treat it as a stop too.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Completes once no request has been in flight for `first` (if none has
/// started yet) or `then` (after one has).
async fn quiet_for(mut activity: watch::Receiver<Activity>, first: Duration, then: Duration) {
    loop {
        // Read the state rather than infer it from wake-ups: a whole request
        // can start and finish before this future is first polled.
        let Activity { in_flight, started } = *activity.borrow_and_update();
        if in_flight > 0 {
            if activity.changed().await.is_err() {
                return;
            }
            continue;
        }
        let limit = if started == 0 { first } else { then };
        match tokio::time::timeout(limit, activity.changed()).await {
            Ok(Ok(())) => {}
            // Quiet for `limit`, or the counter is gone with its connection:
            // nothing left to wait for.
            Err(_) | Ok(Err(_)) => return,
        }
    }
}

/// Requests on one connection, as seen by its watchdog.
#[derive(Clone, Copy, Debug, Default)]
struct Activity {
    /// Requests whose response has not been fully sent or dropped yet.
    in_flight: usize,
    /// Requests ever started on this connection.
    started: u64,
}

/// One request in flight on a connection, until dropped.
struct InFlightGuard(Arc<watch::Sender<Activity>>);

impl InFlightGuard {
    fn enter(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.started = a.started.saturating_add(1);
        });
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0
            .send_modify(|a| a.in_flight = a.in_flight.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has sent it completely or given up on it (hyper drops the body then).
struct TrackedBody {
    inner: Body,
    _guard: InFlightGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    // Forwarded so hyper still sees exact lengths (Content-Length instead of
    // chunked encoding) and empty bodies.
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// Generous upper bound for anything that should happen "soon".
    const SOON: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(30);

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn shut_down(mut self) -> io::Result<()> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(SOON * 3, self.task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task does not panic")
        }
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/sleep/{ms}",
                get(
                    |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        "slept"
                    },
                ),
            )
    }

    fn options(header_read_timeout: Duration, idle_timeout: Duration) -> ServeOptions {
        ServeOptions {
            tls: None,
            header_read_timeout,
            idle_timeout,
            max_connections: 64,
            max_connections_per_peer: 64,
        }
    }

    async fn start(options: ServeOptions) -> Server {
        start_with_grace(options, SHUTDOWN_GRACE).await
    }

    async fn start_with_grace(options: ServeOptions, grace: Duration) -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with_grace(
            listener,
            app(),
            options,
            async move {
                let _ = stopped.await;
            },
            grace,
        ));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn plain_client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(SOON)
            .build()
            .expect("client")
    }

    /// Reads from `stream` until `needle` has been seen; panics after `SOON`.
    async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
        let mut seen = Vec::new();
        tokio::time::timeout(SOON, async {
            let mut buf = [0_u8; 4096];
            while !String::from_utf8_lossy(&seen).contains(needle) {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "connection closed before {needle:?} arrived");
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("response arrives");
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// Whether the server closes `stream` (EOF or reset) within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            let mut buf = [0_u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn get_on(stream: &mut TcpStream, path: &str) -> String {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .expect("write request");
        read_until(stream, "\r\n\r\n").await
    }

    #[tokio::test]
    async fn plain_round_trip_sees_peer_address() {
        let server = start(options(LONG, LONG)).await;

        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let me = stream.local_addr().expect("local addr").to_string();
        let response = get_on(&mut stream, "/peer").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let response = if response.contains(&me) {
            response
        } else {
            read_until(&mut stream, &me).await
        };
        assert!(response.contains(&me), "{response}");

        let body = plain_client()
            .get(format!("http://{}/peer", server.addr))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        let peer: SocketAddr = body.parse().expect("peer address");
        assert_eq!(peer.ip(), Ipv4Addr::LOCALHOST);

        drop(stream);
        server.shut_down().await.expect("clean shutdown");
    }

    struct TlsFiles {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        cert_pem: String,
    }

    fn tls_files() -> TlsFiles {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generate certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let cert_pem = certified.cert.pem();
        std::fs::write(&cert, &cert_pem).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        TlsFiles {
            _dir: dir,
            cert,
            key,
            cert_pem,
        }
    }

    fn tls_client(files: &TlsFiles, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(files.cert_pem.as_bytes()).expect("root");
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(SOON)
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .resolve("localhost", addr);
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().expect("client")
    }

    async fn start_tls(files: &TlsFiles, header_read_timeout: Duration) -> Server {
        let config = load_tls(&files.cert, &files.key).expect("load_tls");
        start(ServeOptions {
            tls: Some(Arc::new(config)),
            ..options(header_read_timeout, LONG)
        })
        .await
    }

    #[tokio::test]
    async fn tls_round_trip_negotiates_h2_and_http1() {
        let files = tls_files();
        let server = start_tls(&files, LONG).await;
        let url = format!("https://localhost:{}/peer", server.addr.port());

        let response = tls_client(&files, server.addr, false)
            .get(&url)
            .send()
            .await
            .expect("h2 request");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let peer: SocketAddr = response.text().await.expect("body").parse().expect("peer");
        assert_eq!(peer.ip(), Ipv4Addr::LOCALHOST);

        let response = tls_client(&files, server.addr, true)
            .get(&url)
            .send()
            .await
            .expect("http/1.1 request");
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        assert_eq!(response.status(), 200);

        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn tls_config_without_alpn_still_offers_h2() {
        let files = tls_files();
        let mut config = load_tls(&files.cert, &files.key).expect("load_tls");
        config.alpn_protocols.clear();
        let server = start(ServeOptions {
            tls: Some(Arc::new(config)),
            ..options(LONG, LONG)
        })
        .await;
        let response = tls_client(&files, server.addr, false)
            .get(format!("https://localhost:{}/peer", server.addr.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn slowloris_is_cut_off_while_others_are_served() {
        let server = start(options(SHORT, LONG)).await;

        let mut slow = TcpStream::connect(server.addr).await.expect("connect");
        slow.write_all(b"GET /peer HTTP/1.1\r\nHost: te")
            .await
            .expect("write half a head");

        let response = plain_client()
            .get(format!("http://{}/peer", server.addr))
            .send()
            .await
            .expect("normal client is served");
        assert_eq!(response.status(), 200);

        assert!(closed_within(&mut slow, SOON).await, "slowloris still open");
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn silent_plain_client_is_cut_off() {
        // Nothing sent at all: hyper-util is still sniffing for the HTTP/2
        // preface, where hyper's own header timeout does not apply.
        let server = start(options(SHORT, LONG)).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        assert!(
            closed_within(&mut silent, SOON).await,
            "silent client still open"
        );

        // Half an HTTP/2 preface stalls the same sniffing step.
        let mut half_h2 = TcpStream::connect(server.addr).await.expect("connect");
        half_h2
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        assert!(
            closed_within(&mut half_h2, SOON).await,
            "half preface still open"
        );

        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
        // hyper's header timer is long here, so only the watchdog can close it.
        let server = start(options(LONG, SHORT)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let response = get_on(&mut stream, "/peer").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            closed_within(&mut stream, SOON).await,
            "idle connection still open"
        );
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn hyper_header_timeout_also_closes_idle_http1_keep_alive() {
        // Pins down the hyper behaviour described in the module docs: with a
        // long idle_timeout, the short header timeout still ends an idle
        // HTTP/1 keep-alive connection.
        let server = start(options(SHORT, LONG)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let response = get_on(&mut stream, "/peer").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            closed_within(&mut stream, SOON).await,
            "idle connection still open"
        );
        server.shut_down().await.expect("clean shutdown");
    }

    /// Opens a prior-knowledge HTTP/2 (h2c) connection; the returned task
    /// ends when the server closes the connection.
    async fn h2_connect(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, driver)
    }

    #[tokio::test]
    async fn idle_http2_connection_is_closed_after_idle_timeout() {
        let server = start(options(LONG, SHORT)).await;
        let (send, driver) = h2_connect(server.addr).await;
        let mut send = send.ready().await.expect("ready");
        let request = Request::get(format!("http://{}/peer", server.addr))
            .body(())
            .expect("request");
        let (response, _) = send.send_request(request, true).expect("send");
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            chunk.expect("body chunk");
        }
        drop(send);

        tokio::time::timeout(SOON, driver)
            .await
            .expect("idle h2 connection closed")
            .expect("driver");
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn http2_client_that_never_sends_a_request_is_cut_off() {
        // hyper's header timeout is HTTP/1 only; the watchdog covers HTTP/2.
        let server = start(options(SHORT, LONG)).await;
        let (_send, driver) = h2_connect(server.addr).await;
        tokio::time::timeout(SOON, driver)
            .await
            .expect("silent h2 connection closed")
            .expect("driver");
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn http2_client_ignoring_goaway_is_dropped() {
        // Preface and SETTINGS, then deaf: never acknowledges the SETTINGS or
        // the shutdown PING, so graceful shutdown cannot complete by itself.
        let server = start(options(SHORT, LONG)).await;
        let mut deaf = TcpStream::connect(server.addr).await.expect("connect");
        deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("write preface");
        assert!(closed_within(&mut deaf, SOON).await, "deaf h2 client open");
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn request_in_flight_is_not_idle() {
        // The handler takes several idle timeouts; the connection must stay.
        let server = start(options(LONG, Duration::from_millis(100))).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let response = get_on(&mut stream, "/sleep/800").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn silent_tls_client_does_not_block_others() {
        let files = tls_files();
        // A long handshake timeout: only running handshakes off the accept
        // loop lets the second client through.
        let server = start_tls(&files, LONG).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");

        let response = tls_client(&files, server.addr, false)
            .get(format!("https://localhost:{}/peer", server.addr.port()))
            .send()
            .await
            .expect("second client is served");
        assert_eq!(response.status(), 200);
        assert!(
            !closed_within(&mut silent, Duration::from_millis(50)).await,
            "silent client was closed before its handshake timeout"
        );
        drop(silent);
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn silent_tls_client_is_cut_off_after_handshake_timeout() {
        let files = tls_files();
        let server = start_tls(&files, SHORT).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        assert!(
            closed_within(&mut silent, SOON).await,
            "silent client still open"
        );

        // A client that is not speaking TLS at all does no harm either.
        let mut garbage = TcpStream::connect(server.addr).await.expect("connect");
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert!(
            closed_within(&mut garbage, SOON).await,
            "non-TLS client open"
        );

        let response = tls_client(&files, server.addr, true)
            .get(format!("https://localhost:{}/peer", server.addr.port()))
            .send()
            .await
            .expect("still serving");
        assert_eq!(response.status(), 200);
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_at_once() {
        let server = start(ServeOptions {
            max_connections: 1,
            ..options(LONG, LONG)
        })
        .await;
        let mut first = TcpStream::connect(server.addr).await.expect("connect");
        let response = get_on(&mut first, "/peer").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        let mut second = TcpStream::connect(server.addr).await.expect("connect");
        assert!(
            closed_within(&mut second, SOON).await,
            "connection over the limit was kept"
        );

        // Once the first connection is gone its slot is free again.
        drop(first);
        let served = tokio::time::timeout(SOON, async {
            loop {
                let mut third = TcpStream::connect(server.addr).await.expect("connect");
                let request = b"GET /peer HTTP/1.1\r\nHost: test\r\n\r\n";
                if third.write_all(request).await.is_ok() {
                    let mut buf = [0_u8; 64];
                    if let Ok(n) = third.read(&mut buf).await {
                        if buf[..n].starts_with(b"HTTP/1.1 200") {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(served.is_ok(), "slot was not released");
        server.shut_down().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_in_flight_requests() {
        let server = start(options(LONG, LONG)).await;
        let addr = server.addr;

        // An idle keep-alive connection must not hold shutdown up.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let response = get_on(&mut idle, "/peer").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /sleep/500 HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        // Let the request reach the handler before shutting down.
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = Instant::now();
        server.shut_down().await.expect("clean shutdown");
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "shutdown waited for the idle connection"
        );

        let response = read_until(&mut busy, "slept").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(closed_within(&mut idle, SOON).await, "idle connection open");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener still accepting after shutdown"
        );
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_forever_for_a_hung_request() {
        let server = start_with_grace(options(LONG, LONG), Duration::from_millis(200)).await;
        let mut hung = TcpStream::connect(server.addr).await.expect("connect");
        hung.write_all(b"GET /sleep/60000 HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.shut_down().await.expect("serve returns");
        assert!(closed_within(&mut hung, SOON).await, "hung connection open");
    }

    fn message(result: Result<rustls::ServerConfig, TlsError>) -> String {
        match result {
            Ok(_) => panic!("load_tls accepted bad input"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn load_tls_accepts_a_matching_pair() {
        let files = tls_files();
        let config = load_tls(&files.cert, &files.key).expect("load_tls");
        assert_eq!(config.alpn_protocols, alpn_protocols());
    }

    #[test]
    fn load_tls_errors_name_the_file() {
        let files = tls_files();
        let dir = tempfile::tempdir().expect("tempdir");

        let missing = dir.path().join("missing.pem");
        let text = message(load_tls(&missing, &files.key));
        assert!(text.contains("missing.pem"), "{text}");
        let text = message(load_tls(&files.cert, &missing));
        assert!(text.contains("missing.pem"), "{text}");

        // A key where the certificate should be, and the other way round.
        let text = message(load_tls(&files.key, &files.key));
        assert!(
            text.contains("key.pem") && text.contains("no PEM certificate"),
            "{text}"
        );
        let text = message(load_tls(&files.cert, &files.cert));
        assert!(
            text.contains("cert.pem") && text.contains("no PEM private key"),
            "{text}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let text = message(load_tls(&empty, &files.key));
        assert!(
            text.contains("empty.pem") && text.contains("no PEM certificate"),
            "{text}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").expect("write");
        let text = message(load_tls(&broken, &files.key));
        assert!(text.contains("broken.pem"), "{text}");

        let other = tls_files();
        let text = message(load_tls(&files.cert, &other.key));
        assert!(text.contains("does not match"), "{text}");
        assert!(
            text.contains(&*files.cert.to_string_lossy())
                && text.contains(&*other.key.to_string_lossy()),
            "{text}"
        );
    }
}
