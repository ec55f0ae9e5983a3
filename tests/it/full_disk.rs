//! A full disk under the data file ("Full disk on redb"): a write that
//! cannot commit answers 503 and was not committed (one that may have been
//! says `store_outcome_unknown`), `/readyz` is not ready, the outage is
//! counted and logged, decisions keep their answers (or are 503, never an
//! allow for a deny), and once the disk has room again writes commit without
//! a restart, a key that could not be revoked is revoked, and nothing
//! acknowledged is lost, then or after a restart.
//!
//! The disk is a small tmpfs the test mounts, which needs root (CI runs as
//! root). Elsewhere the test says that it did not run, and fails under `CI`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{self, copy_pack, spawn_binary_logging, wait_until, Binary};

/// The size of the filesystem the data file lives on.
const DISK: &str = "16m";

/// A tmpfs mounted on a temporary folder, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size`; `None` (the test does not run) when this
    /// process may not, outside CI.
    fn mount(size: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            support::not_run("full_disk", "mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "cedard-full-disk",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon that still holds a file cannot leave the mount
        // behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem holding `path` with one file, until it takes not one
/// byte more, then gives `slack` bytes back.
fn fill(path: &Path, slack: u64) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    for size in [1 << 16, 1 << 12, 1] {
        let chunk = vec![0xA5u8; size];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    let len = file.metadata().expect("filler size").len();
    file.set_len(len.saturating_sub(slack))
        .expect("give some room back");
}

/// A client of one daemon, with a caller key or none.
struct Api {
    client: reqwest::Client,
    base: String,
    key: Option<String>,
    /// The id of the key, for revoking it.
    key_id: Option<String>,
}

impl Api {
    fn new(bin: &Binary, key: Option<&str>) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: bin.url(""),
            key: key.map(str::to_owned),
            key_id: None,
        }
    }

    fn with_id(mut self, id: &str) -> Self {
        self.key_id = Some(id.to_owned());
        self
    }

    /// Sends one request; every request gets an answer, in the one error
    /// shape when it is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        actor: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let req = support::Api {
            client: self.client.clone(),
            base: self.base.clone(),
            key: self.key.clone(),
        }
        .request(method, path, actor, body.as_ref());
        let resp = req.send().await.expect("an answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a whole body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 && path != "/readyz" {
            assert!(body["error"]["code"].is_string(), "{status}: {body}");
        }
        (status, body)
    }

    async fn sign_up(&self, id: &str) -> (u16, Value) {
        // The longest name there may be, so that the file grows fast.
        let name = format!("{id} ")
            .repeat(100)
            .chars()
            .take(100)
            .collect::<String>();
        let body = json!({"id": id, "email": format!("{id}@example.com"), "name": name.trim()});
        self.send(Method::POST, "/v1/users", None, Some(body)).await
    }

    async fn ready(&self) -> (u16, Value) {
        self.send(Method::GET, "/readyz", None, None).await
    }

    /// The value of an unlabelled metric.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = self.send(Method::GET, "/metrics", None, None).await;
        assert_eq!(status, 200, "{body}");
        let text = body.as_str().expect("the metrics text").to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Asks whether `user` may use `account`.
    async fn decide(&self, user: &str, account: &str) -> (u16, Value) {
        let question = json!({
            "principal": {"type": "User", "id": user},
            "action": {"type": "Action", "id": "useAccount"},
            "resource": {"type": "Account", "id": account},
        });
        self.send(Method::POST, "/v1/is_authorized", None, Some(question))
            .await
    }

    /// Whether the user `id` is stored (asked as themselves).
    async fn exists(&self, id: &str) -> bool {
        let (status, body) = self
            .send(Method::GET, &format!("/v1/users/{id}"), Some(id), None)
            .await;
        match status {
            200 => true,
            401 | 403 | 404 => false,
            _ => panic!("reading user `{id}`: {status} {body}"),
        }
    }
}

/// What the sign-ups were answered.
#[derive(Default)]
struct Outcomes {
    /// 201: committed, and must be there for good.
    acked: BTreeSet<String>,
    /// 503 `store_unavailable`: not committed, and must not be there.
    refused: BTreeSet<String>,
    /// 503 `store_outcome_unknown`: either.
    unknown: BTreeSet<String>,
}

impl Outcomes {
    fn record(&mut self, id: &str, status: u16, body: &Value) {
        let set = match (status, body["error"]["code"].as_str()) {
            (201, _) => &mut self.acked,
            (503, Some("store_unavailable")) => &mut self.refused,
            (503, Some("store_outcome_unknown")) => &mut self.unknown,
            _ => panic!("sign-up of `{id}`: {status} {body}"),
        };
        set.insert(id.to_owned());
    }

    /// Every acknowledged sign-up is stored; none refused is.
    async fn verify(&self, api: &Api, when: &str) {
        for id in &self.acked {
            assert!(
                api.exists(id).await,
                "{when}: acknowledged user `{id}` is missing"
            );
        }
        for id in &self.refused {
            assert!(
                !api.exists(id).await,
                "{when}: user `{id}` was stored, but its sign-up was answered 503 (not committed)"
            );
        }
    }
}

fn serve_args(pack: &Path, data: &Path) -> Vec<String> {
    vec![
        "--data".into(),
        data.display().to_string(),
        "--policies".into(),
        pack.join("policies").display().to_string(),
        "--schema".into(),
        pack.join("schema").display().to_string(),
    ]
}

async fn start(pack: &Path, data: &Path, log: &Path) -> Binary {
    let args = serve_args(pack, data);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_binary_logging(pack, &refs, log).await
}

/// Stops the daemon with SIGTERM (a graceful shutdown) and waits for it.
fn terminate(mut bin: Binary) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(i32::try_from(bin.child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while bin.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "cedard did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts a decision: the expected one, or 503 (no decision), never the
/// other.
fn assert_decided_or_unavailable(answer: &(u16, Value), expected: &str, what: &str) {
    let (status, body) = answer;
    match status {
        200 => assert_eq!(body["decision"], expected, "{what}: {body}"),
        503 => assert!(body.get("decision").is_none(), "{what}: {body}"),
        _ => panic!("{what}: {status} {body}"),
    }
}

/// One outage: the disk fills up (but for `slack` bytes), sign-ups go on
/// until one cannot commit; then everything the outage should be is
/// checked, the space comes back, and writes must commit again within a few
/// seconds, without a restart.
async fn outage(
    api: &Api,
    doomed_api: &Api,
    disk: &Path,
    round: u32,
    slack: u64,
    outcomes: &mut Outcomes,
) {
    let filler = disk.join("filler");
    fill(&filler, slack);
    let acked_before = outcomes.acked.len();
    let mut attempts = 0;
    loop {
        assert!(attempts < 20_000, "writes kept committing on a full disk");
        let id = format!("during-{round}-{attempts:05}");
        attempts += 1;
        let (status, body) = api.sign_up(&id).await;
        outcomes.record(&id, status, &body);
        if status == 503 {
            break;
        }
    }
    eprintln!(
        "full_disk: round {round}: the first write failed after {attempts} sign-ups ({} acknowledged)",
        outcomes.acked.len() - acked_before
    );

    // The outage: every write is refused, and says it was not committed.
    for j in 0..5 {
        let id = format!("refused-{round}-{j}");
        let (status, body) = api.sign_up(&id).await;
        assert_eq!(status, 503, "{body}");
        outcomes.record(&id, status, &body);
        assert!(outcomes.refused.contains(&id), "{body}");
    }
    let (status, body) = api.ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("writes cannot be committed")),
        "{body}"
    );
    assert_eq!(api.metric("cedard_store_writable").await, Some(0.0));
    assert_eq!(
        api.metric("cedard_store_write_outages_total").await,
        Some(f64::from(round))
    );
    // The key cannot be revoked now: 503, not committed, so it still works
    // (a 503 on a write means exactly that).
    let doomed_id = doomed_api.key_id.as_deref().expect("the key's id");
    let (status, body) = api
        .send(Method::DELETE, &format!("/v1/keys/{doomed_id}"), None, None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert_eq!(doomed_api.decide("before-00", "before-00").await.0, 200);
    // Decisions on stored users keep their answers, or are 503; never the
    // other answer.
    assert_decided_or_unavailable(
        &api.decide("before-00", "before-00").await,
        "allow",
        "an owner during the outage",
    );
    assert_decided_or_unavailable(
        &api.decide("before-01", "before-00").await,
        "deny",
        "a stranger during the outage",
    );
    if let Some(last) = outcomes.acked.iter().rfind(|id| id.starts_with("during-")) {
        assert_decided_or_unavailable(
            &api.decide(last, last).await,
            "allow",
            "the last user acknowledged on a full disk",
        );
    }

    // Space returns: without a restart, the daemon becomes ready again.
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed = Instant::now();
    wait_until(Duration::from_secs(10), || async {
        api.ready().await.0 == 200
    })
    .await;
    eprintln!(
        "full_disk: round {round}: ready again {:?} after the space returned",
        freed.elapsed()
    );
    assert_eq!(api.metric("cedard_store_writable").await, Some(1.0));
    for i in 0..5 {
        let id = format!("after-{round}-{i}");
        let (status, body) = api.sign_up(&id).await;
        assert_eq!(status, 201, "{body}");
        outcomes.record(&id, status, &body);
    }
    outcomes.verify(api, &format!("after outage {round}")).await;
}

#[tokio::test]
async fn writes_recover_from_a_full_disk_without_a_restart() {
    let Some(disk) = Tmpfs::mount(DISK) else {
        return;
    };
    let pack = copy_pack();
    let log = pack.path().join("cedard.log");
    let data = disk.path().join("cedard.redb");
    let bin = start(pack.path(), &data, &log).await;

    // Two keys: the operator's, and one to be revoked.
    let (status, operator) = Api::new(&bin, None)
        .send(
            Method::POST,
            "/v1/keys",
            None,
            Some(json!({"name": "operator", "scopes": ["decide", "manage", "admin"]})),
        )
        .await;
    assert_eq!(status, 201, "{operator}");
    let operator_key = operator["secret"].as_str().expect("secret").to_owned();
    let api = Api::new(&bin, Some(&operator_key));
    let (status, doomed) = api
        .send(
            Method::POST,
            "/v1/keys",
            None,
            Some(json!({"name": "doomed", "scopes": ["decide"]})),
        )
        .await;
    assert_eq!(status, 201, "{doomed}");
    let doomed_id = doomed["id"].as_str().expect("id").to_owned();
    let doomed_api = Api::new(&bin, doomed["secret"].as_str()).with_id(&doomed_id);

    let mut outcomes = Outcomes::default();
    for i in 0..20 {
        let id = format!("before-{i:02}");
        let (status, body) = api.sign_up(&id).await;
        assert_eq!(status, 201, "{body}");
        outcomes.record(&id, status, &body);
    }
    assert_eq!(api.ready().await.0, 200);
    assert_eq!(api.metric("cedard_store_writable").await, Some(1.0));
    assert_eq!(
        api.metric("cedard_store_write_outages_total").await,
        Some(0.0)
    );

    // Twice: a disk full to the last byte (the first write fails), then one
    // with a little room (writes fail as they commit, once the file grows).
    for (round, slack) in [(1, 0), (2, 256 * 1024)] {
        outage(&api, &doomed_api, disk.path(), round, slack, &mut outcomes).await;
    }
    let (status, body) = api
        .send(Method::DELETE, &format!("/v1/keys/{doomed_id}"), None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(doomed_api.decide("before-00", "before-00").await.0, 401);
    outcomes.verify(&api, "after the outages").await;

    // The log says when writes stopped and when they came back.
    let said = std::fs::read_to_string(&log).expect("the daemon's log");
    if std::env::var_os("CEDARD_TEST_DAEMON_LOG").is_some() {
        eprintln!("{said}");
    }
    // Once as each outage began, once as it ended.
    assert_eq!(said.matches("cannot be committed: ").count(), 2, "{said}");
    assert_eq!(said.matches("commit again: ").count(), 2, "{said}");

    // And a restart finds every acknowledged write, and the key revoked.
    terminate(bin);
    let bin = start(pack.path(), &data, &log).await;
    let api = Api::new(&bin, Some(&operator_key));
    wait_until(Duration::from_secs(10), || async {
        api.ready().await.0 == 200
    })
    .await;
    outcomes.verify(&api, "after a restart").await;
    let doomed_api = Api::new(&bin, doomed_api.key.as_deref());
    assert_eq!(doomed_api.decide("before-00", "before-00").await.0, 401);
    terminate(bin);
    drop(disk);
}

/// A user for [`the_next_write_ends_an_outage_when_nothing_else_reads`],
/// with the longest name there may be, so that the file grows fast.
fn user(id: &str) -> cedard::store::User {
    cedard::store::User {
        id: id.to_owned(),
        email: format!("{id}@example.com"),
        email_verified: false,
        name: Some(format!("{id} ").repeat(100).chars().take(100).collect()),
        created_at: 0,
    }
}

/// Without the daemon's retry: through the store alone, a write refused on
/// a full disk starts the outage, later writes are refused (nothing
/// written) while reads go on, and once there is room the next write ends
/// the outage itself and commits.
#[test]
fn the_next_write_ends_an_outage_when_nothing_else_reads() {
    use cedard::store::{Fault, Store, WriteError};
    let Some(disk) = Tmpfs::mount(DISK) else {
        return;
    };
    let data = disk.path().join("cedard.redb");
    let store = Store::open(&data).expect("open");
    let filler = disk.path().join("filler");
    fill(&filler, 0);
    let mut acked = vec![];
    let failed = loop {
        assert!(
            acked.len() < 20_000,
            "writes kept committing on a full disk"
        );
        let id = format!("u{:05}", acked.len());
        match store.write(|w| w.sign_up(&user(&id), "admin")) {
            Ok(_) => acked.push(id),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&failed, WriteError::Fault(f) if !f.is_damage()),
        "{failed}"
    );
    let outage = store.write_outage().expect("an outage under way");
    assert!(outage.reason.contains("No space left"), "{outage:?}");
    assert!(store.damage().is_none());

    let refused = store
        .write(|w| w.sign_up(&user("refused"), "admin"))
        .expect_err("a full disk refuses");
    assert!(
        matches!(refused, WriteError::Fault(Fault::WriteOutage { .. })),
        "{refused}"
    );
    {
        let view = store.read().expect("reads go on");
        for id in &acked {
            assert!(view.has_user(id).expect("a read"), "`{id}` is missing");
        }
        assert!(!view.has_user("refused").expect("a read"));
    }

    std::fs::remove_file(&filler).expect("remove the filler");
    store
        .write(|w| w.sign_up(&user("after"), "admin"))
        .expect("the next write ends the outage and commits");
    assert!(store.write_outage().is_none());
    let view = store.read().expect("a read");
    for id in acked.iter().map(String::as_str).chain(["after"]) {
        assert!(view.has_user(id).expect("a read"), "`{id}` is missing");
    }
    assert!(!view.has_user("refused").expect("a read"));
    drop(view);
    drop(store);
    // Closed cleanly: the file opens again, with all of it.
    let store = Store::open(&data).expect("reopen");
    assert!(store
        .read()
        .expect("a read")
        .has_user("after")
        .expect("a read"));
}
