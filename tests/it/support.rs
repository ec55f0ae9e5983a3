//! Starting the real daemon for a test: in-process on `127.0.0.1:0` with
//! [`spawn_app`], or as the real `cedard` binary with [`spawn_binary`].

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use cedard::server::{self, Config};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A role table of the default pack as `tests/policies/roles.yaml` states
/// it: its columns (roles in table order, then `non-member`, or `owner`)
/// and, for each action, whether each column may do it.
pub struct RoleTable {
    /// The columns, in order.
    pub columns: Vec<String>,
    /// Each action and its row, in file order.
    pub rows: Vec<(String, Vec<bool>)>,
}

impl RoleTable {
    /// The answer for `action` in `column`.
    pub fn allows(&self, action: &str, column: &str) -> bool {
        let i = self
            .columns
            .iter()
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("no column `{column}`"));
        self.rows
            .iter()
            .find(|(a, _)| a == action)
            .unwrap_or_else(|| panic!("no action `{action}`"))
            .1[i]
    }
}

/// The role tables of the seed, read from their one home: the readable
/// suite `tests/policies/roles.yaml` that `cedard test` runs. Adding a role
/// means a column there, not a change here.
fn role_table(name: &str) -> RoleTable {
    let path = repo_root().join("tests/policies/roles.yaml");
    let text = std::fs::read_to_string(&path).expect("read roles.yaml");
    let suite: Value = serde_yaml_ng::from_str(&text).expect("roles.yaml is YAML");
    let matrix = suite["matrix"]
        .as_array()
        .expect("a matrix list")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("roles.yaml has no matrix `{name}`"));
    let columns: Vec<String> = matrix["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("a column name").to_owned())
        .collect();
    let mut rows = Vec::new();
    for (actions, answers) in matrix["rows"].as_object().expect("rows") {
        let row: Vec<bool> = answers
            .as_str()
            .expect("a row of answers")
            .split_whitespace()
            .map(|a| a == "allow")
            .collect();
        assert_eq!(row.len(), columns.len(), "roles.yaml: {actions}");
        for action in actions.split(',').map(str::trim) {
            rows.push((action.to_owned(), row.clone()));
        }
    }
    RoleTable { columns, rows }
}

/// The seed's role table for a team account: for each action, the answer
/// for a member holding each role of [`roles`], then for a non-member.
pub static TEAM: LazyLock<RoleTable> = LazyLock::new(|| role_table("team account"));

/// The seed's table for a personal account: its owner, and a non-member.
pub static PERSONAL: LazyLock<RoleTable> = LazyLock::new(|| role_table("personal account"));

/// [`TEAM`]'s rows: for each action, the answer for a member holding each
/// role of [`roles`], then for a non-member.
pub fn team_table() -> &'static [(&'static str, Vec<bool>)] {
    static ROWS: LazyLock<Vec<(&'static str, Vec<bool>)>> = LazyLock::new(|| {
        TEAM.rows
            .iter()
            .map(|(a, r)| (a.as_str(), r.clone()))
            .collect()
    });
    &ROWS
}

/// The roles of the team table, in table order (least permitted first).
pub fn roles() -> Vec<&'static str> {
    TEAM.columns
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "non-member")
        .collect()
}

/// The ids of the default pack's policies (`@id` annotations), by file
/// name, then in file order: what a listing of the pack shows.
pub fn pack_policy_ids() -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("policies"))
        .expect("policies")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    let mut ids = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read");
        for part in text.split("@id(\"").skip(1) {
            ids.push(part.split('"').next().expect("an id").to_owned());
        }
    }
    ids
}

/// How many single cases `tests/policies/roles.yaml` states besides its
/// matrices.
pub fn seed_case_count() -> usize {
    let text = std::fs::read_to_string(repo_root().join("tests/policies/roles.yaml"))
        .expect("read roles.yaml");
    let suite: Value = serde_yaml_ng::from_str(&text).expect("roles.yaml is YAML");
    suite["cases"].as_array().map_or(0, Vec::len)
}

/// The role names of the default pack's schema (the fields of
/// `Account.roles`), sorted, as cedard reads them.
pub fn schema_roles() -> Vec<String> {
    static ROLES: LazyLock<Vec<String>> = LazyLock::new(|| {
        let root = repo_root();
        let snapshot = cedard::policy::load(
            &cedard::policy::Sources {
                policies: root.join("policies"),
                schema: root.join("schema"),
                ..Default::default()
            },
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        cedard::model::RoleCatalog::default()
            .roles(&snapshot)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_vec()
    });
    ROLES.clone()
}

/// Entities of the account model as a caller sends them inline, each made
/// by the account model's one builder of its type (`cedard::model`), with
/// the schema's roles.
pub mod entity {
    use serde_json::Value;

    fn json(e: Result<cedar_policy::Entity, cedard::model::ModelError>) -> Value {
        cedard::model::to_json(&e.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `User::"id"` (email `<id>@example.com`) holding `role` in each
    /// `(account, role)`.
    pub fn user(id: &str, roles: &[(&str, &str)]) -> Value {
        let roles: Vec<(String, String)> = roles
            .iter()
            .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
            .collect();
        json(cedard::model::person(
            id,
            &format!("{id}@example.com"),
            None,
            &roles,
        ))
    }

    /// `Account::"id"`, named `name`, of `kind`, owned by `owner`, with the
    /// schema's roles.
    pub fn account(id: &str, name: &str, kind: &str, owner: &str) -> Value {
        json(cedard::model::group(
            id,
            name,
            kind,
            owner,
            &super::schema_roles(),
        ))
    }

    /// `Pod::"id"` of `account`.
    pub fn pod(id: &str, account: &str) -> Value {
        json(cedard::model::resource_entity("Pod", id, account))
    }
}

/// Says that `test` did not run, and why, where the test harness cannot
/// hide it (straight to the process's stderr: a passing test's printed
/// output is captured). Under CI (`CI` set) a test that cannot run fails
/// instead: CI must run every test.
pub fn not_run(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: required in CI, and {why}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOT RUN: {test}: {why}");
}

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

/// Copies a folder, its subfolders included.
pub fn copy_dir(from: &Path, to: &Path) {
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
    let stderr = if std::env::var_os("CEDARD_TEST_DAEMON_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    start_binary(cwd, args, "warn", stderr).await
}

/// [`spawn_binary`] with the daemon's log (at `info`) appended to `log`,
/// for a test that reads what the daemon said.
pub async fn spawn_binary_logging(cwd: &Path, args: &[&str], log: &Path) -> Binary {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the daemon's log");
    start_binary(cwd, args, "info", Stdio::from(file)).await
}

async fn start_binary(cwd: &Path, args: &[&str], level: &str, stderr: Stdio) -> Binary {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("serve")
        .args(args)
        .arg("--listen")
        .arg(addr.to_string())
        .current_dir(cwd)
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
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

    /// A caller of the daemon at `base` (`http://host:port`) through
    /// `client`, with no key.
    pub fn at(client: &reqwest::Client, base: &str) -> Self {
        Self {
            client: client.clone(),
            base: base.trim_end_matches('/').to_owned(),
            key: None,
        }
    }

    /// The request `method path`, ready to send: the key as a bearer,
    /// `actor` in `X-Actor`, `body` as JSON. The one way tests build a
    /// request to the daemon.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        actor: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
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
        req
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
        let resp = self
            .request(method, path, actor, body.as_ref())
            .send()
            .await
            .expect("request");
        Answer::read(resp).await
    }
}

impl Answer {
    /// Reads a response: its status, its JSON body (`null` when empty or
    /// not JSON), and its `Cedard-Store-Revision`.
    pub async fn read(resp: reqwest::Response) -> Self {
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
