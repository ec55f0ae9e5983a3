//! Starting the real daemon for a test: in-process on `127.0.0.1:0` with
//! [`spawn_app`], or as the real `cedard` binary with [`spawn_binary`].

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cedard::server::{self, Config};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The roles of the default pack, in table order.
pub const ROLES: [&str; 4] = ["basic", "billing", "dev", "admin"];

/// The seed's role table for a team account: for each action, the answer for
/// a member holding basic, billing, dev, admin, and for a non-member.
pub const TEAM_TABLE: &[(&str, [bool; 5])] = &[
    ("useAccount", [true, false, true, true, false]),
    ("viewMembers", [true, false, true, true, false]),
    ("connectPod", [true, false, true, true, false]),
    ("viewBilling", [false, true, false, true, false]),
    ("manageBilling", [false, true, false, true, false]),
    ("startPod", [false, false, true, true, false]),
    ("stopPod", [false, false, true, true, false]),
    ("createPod", [false, false, true, true, false]),
    ("updateSettings", [false, false, false, true, false]),
    ("inviteMember", [false, false, false, true, false]),
    ("revokeInvite", [false, false, false, true, false]),
    ("changeMemberRole", [false, false, false, true, false]),
    ("removeMember", [false, false, false, true, false]),
    ("convertToTeam", [false, false, false, false, false]),
];

/// The repository root, where the default pack lives.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the default policy pack (`policies/`, `schema/`) into a new
/// temporary folder.
pub fn copy_pack() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for sub in ["policies", "schema"] {
        copy_dir(&repo_root().join(sub), &dir.path().join(sub));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A running in-process daemon.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client for it.
    pub client: reqwest::Client,
    /// The temporary folder holding `policies/` and `schema/`.
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), server::Error>>>,
}

impl TestApp {
    /// The policy folder the daemon watches.
    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` and returns the status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a JSON body to `path` and returns the status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    /// POSTs raw bytes to `path` and returns the status and JSON body.
    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The current policy generation.
    pub async fn generation(&self) -> u64 {
        let (_, body) = self.get("/v1/policies").await;
        body["revision"]["generation"].as_u64().expect("generation")
    }

    /// Stops the daemon and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Starts the daemon in-process on `127.0.0.1:0` over a fresh copy of the
/// default pack.
pub async fn spawn_app() -> TestApp {
    spawn_app_in(copy_pack(), |_| {}).await
}

/// Starts the daemon in-process over `dir` (holding `policies/` and
/// `schema/`), letting the test adjust the configuration first.
pub async fn spawn_app_in(dir: TempDir, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::new(dir.path().join("policies"), dir.path().join("schema"));
    // Each daemon gets its own data file inside its temporary folder.
    config.options.data = dir.path().join("data").join("cedard.redb");
    adjust(&mut config);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, config, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let app = TestApp {
        addr,
        client,
        dir,
        shutdown: Some(tx),
        task: Some(task),
    };
    wait_until(Duration::from_secs(20), || async {
        app.client.get(app.url("/readyz")).send().await.is_ok()
    })
    .await;
    app
}

/// Waits until `check` is true, polling every 20 ms, and panics at the
/// deadline. Tests wait for conditions, never for fixed sleeps.
pub async fn wait_until<F, Fut>(deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `cedard` binary.
pub struct Binary {
    /// The child process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Binary {
    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Picks a free loopback port. The tiny window between releasing it and the
/// binary binding it is acceptable for tests.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs `cedard serve` with `args` (plus `--listen` on a free port) from
/// `cwd`, and waits until it answers `/healthz`.
pub async fn spawn_binary(cwd: &Path, args: &[&str]) -> Binary {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("serve")
        .args(args)
        .arg("--listen")
        .arg(addr.to_string())
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("CEDARD_TEST_DAEMON_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn cedard");
    let bin = Binary { child, addr };
    let client = reqwest::Client::new();
    let url = bin.url("/healthz");
    wait_until(Duration::from_secs(20), || {
        let client = client.clone();
        let url = url.clone();
        async move { client.get(url).send().await.is_ok() }
    })
    .await;
    bin
}

/// A caller of a running daemon over HTTP, as a service would be: the
/// daemon's base URL and, once keys exist, a bearer key.
#[derive(Clone)]
pub struct Api {
    /// The HTTP client.
    pub client: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
    /// The bearer key sent with every call, if any.
    pub key: Option<String>,
}

/// What one call answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`null` when empty or not JSON).
    pub body: Value,
    /// The `Cedard-Store-Revision` header a write answers with.
    pub store_revision: Option<u64>,
}

impl Api {
    /// A caller of the daemon at `addr`, with no key.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: format!("http://{addr}"),
            key: None,
        }
    }

    /// The same caller presenting `key`.
    pub fn with_key(&self, key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
            ..self.clone()
        }
    }

    /// Sends `method path`, as `actor` (`X-Actor`) when given, with an
    /// optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        actor: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(a) = actor {
            req = req.header("x-actor", a);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let store_revision = resp
            .headers()
            .get("cedard-store-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            store_revision,
        }
    }
}
