//! A TCP proxy the test controls, standing between a replica and its
//! database: [`Proxy::cut`] freezes every connection through it (no byte
//! crosses, in either direction, and a new connection is accepted but not
//! forwarded), as a network partition does to a replica that keeps its
//! sockets open; [`Proxy::heal`] lets the held bytes through again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to one target port on loopback.
pub struct Proxy {
    /// The port to connect to instead of the target's.
    pub port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (cut, watching) = watch::channel(false);
        let to: SocketAddr = format!("127.0.0.1:{target}").parse().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let cut = watching.clone();
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
                    tokio::spawn(pipe(ri, wo, cut.clone()));
                    tokio::spawn(pipe(ro, wi, cut));
                });
            }
        });
        Self { port, cut, task }
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
