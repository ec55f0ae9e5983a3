//! A TCP proxy the test controls, standing between a replica and its
//! database: [`Proxy::cut`] freezes every connection through it (no byte
//! crosses, in either direction, and a new connection is accepted but not
//! forwarded), as a network partition does to a replica that keeps its
//! sockets open; [`Proxy::heal`] lets the held bytes through again.
//! [`Proxy::sever`] closes every connection open through it, as a lost
//! connection would be seen by both ends.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to one target port on loopback.
pub struct Proxy {
    /// The port to connect to instead of the target's.
    pub port: u16,
    cut: watch::Sender<bool>,
    /// Raised to close every open connection.
    severed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (cut, watching) = watch::channel(false);
        let (severed, severing) = watch::channel(0u64);
        let to: SocketAddr = format!("127.0.0.1:{target}").parse().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let cut = watching.clone();
                let mut sever = severing.clone();
                sever.mark_unchanged();
                tokio::spawn(async move {
                    let mut open = cut.clone();
                    if open.wait_for(|c| !*c).await.is_err() {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let mut up = tokio::spawn(pipe(ri, wo, cut.clone()));
                    let mut down = tokio::spawn(pipe(ro, wi, cut));
                    // Both halves end together, when severed or when either
                    // side closes: dropping them closes both sockets.
                    tokio::select! {
                        _ = sever.changed() => {}
                        _ = &mut up => {}
                        _ = &mut down => {}
                    }
                    up.abort();
                    down.abort();
                });
            }
        });
        Self {
            port,
            cut,
            severed,
            task,
        }
    }

    /// Closes every connection open through the proxy now.
    pub fn sever(&self) {
        self.severed.send_modify(|n| *n += 1);
    }

    /// Freezes every connection and holds new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets everything through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding what it read while the proxy is cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
