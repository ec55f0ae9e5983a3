//! The data file under the real binary: writes survive SIGKILL at random
//! points, a second daemon on the same file is refused, and a file from a
//! newer cedard is refused without being touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{copy_pack, free_port, spawn_binary, Api, Binary};

/// A tiny deterministic PRNG (xorshift64*), so a failing run can be replayed
/// from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn serve_args(dir: &Path) -> Vec<String> {
    vec![
        "--data".into(),
        dir.join("state/cedard.redb").display().to_string(),
        "--policies".into(),
        dir.join("policies").display().to_string(),
        "--schema".into(),
        dir.join("schema").display().to_string(),
    ]
}

async fn start(dir: &Path) -> Binary {
    let args = serve_args(dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_binary(dir, &refs).await
}

async fn send(
    client: &reqwest::Client,
    bin_url: &str,
    method: reqwest::Method,
    path: &str,
    actor: Option<&str>,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let req = Api::at(client, bin_url).request(method, path, actor, body.as_ref());
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// What the daemon acknowledged before it was killed.
#[derive(Default)]
struct Acked {
    /// Users whose sign-up answered 201 (with their personal account).
    users: BTreeSet<String>,
    /// Users whose invite accept into the team answered 200.
    members: BTreeSet<String>,
}

/// One writer: signs users up, and every other one joins the team through
/// an invite (create + accept, two acknowledged writes), until the daemon
/// stops answering.
async fn writer(url: String, worker: usize, round: usize, acked: Arc<Mutex<Acked>>) {
    let client = reqwest::Client::new();
    for i in 0.. {
        let id = format!("r{round}w{worker}n{i}");
        let body = json!({"id": id, "email": format!("{id}@example.com")});
        match send(
            &client,
            &url,
            reqwest::Method::POST,
            "/v1/users",
            None,
            Some(body),
        )
        .await
        {
            Some((201, _)) => {
                if let Ok(mut a) = acked.lock() {
                    a.users.insert(id.clone());
                }
            }
            _ => return,
        }
        if i % 2 == 1 {
            continue;
        }
        let Some((201, created)) = send(
            &client,
            &url,
            reqwest::Method::POST,
            "/v1/accounts/owner/invites",
            Some("owner"),
            Some(json!({"role": "dev"})),
        )
        .await
        else {
            return;
        };
        let token = created["token"].as_str().unwrap_or_default().to_owned();
        match send(
            &client,
            &url,
            reqwest::Method::POST,
            "/v1/invites/accept",
            Some(&id),
            Some(json!({"token": token})),
        )
        .await
        {
            Some((200, _)) => {
                if let Ok(mut a) = acked.lock() {
                    a.members.insert(id);
                }
            }
            _ => return,
        }
    }
}

/// Checks that every acknowledged write is present: each user, their
/// personal account, and each accepted membership.
async fn verify(bin: &Binary, acked: &Acked) {
    let client = reqwest::Client::new();
    let url = bin.url("");
    let (status, members) = send(
        &client,
        &url,
        reqwest::Method::GET,
        "/v1/accounts/owner/members",
        Some("owner"),
        None,
    )
    .await
    .expect("members answer");
    assert_eq!(status, 200, "{members}");
    let joined: BTreeSet<String> = members
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["user"].as_str().expect("user").to_owned())
        .collect();
    for m in &acked.members {
        assert!(joined.contains(m), "acknowledged member `{m}` is missing");
    }
    for u in &acked.users {
        let (status, body) = send(
            &client,
            &url,
            reqwest::Method::GET,
            &format!("/v1/users/{u}"),
            Some(u),
            None,
        )
        .await
        .expect("user answer");
        assert_eq!(status, 200, "acknowledged user `{u}` is missing: {body}");
        let (status, body) = send(
            &client,
            &url,
            reqwest::Method::GET,
            &format!("/v1/accounts/{u}"),
            Some(u),
            None,
        )
        .await
        .expect("account answer");
        assert_eq!(status, 200, "personal account of `{u}` is missing: {body}");
    }
}

fn sigkill(bin: &mut Binary) {
    let pid = nix::unistd::Pid::from_raw(bin.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    let _ = bin.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = copy_pack();
    let seed = std::env::var("CEDARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_CEDA_u64);
    println!("crash test seed: {seed} (set CEDARD_CRASH_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let acked = Arc::new(Mutex::new(Acked::default()));

    // The team every round's writers join.
    {
        let bin = start(dir.path()).await;
        let client = reqwest::Client::new();
        let url = bin.url("");
        let r = send(
            &client,
            &url,
            reqwest::Method::POST,
            "/v1/users",
            None,
            Some(json!({"id": "owner", "email": "o@example.com"})),
        )
        .await;
        assert_eq!(r.map(|r| r.0), Some(201));
        let r = send(
            &client,
            &url,
            reqwest::Method::POST,
            "/v1/accounts/owner/convert",
            Some("owner"),
            Some(json!({"name": "Team"})),
        )
        .await;
        assert_eq!(r.map(|r| r.0), Some(200));
    }

    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        let mut bin = start(dir.path()).await;
        // Everything acknowledged so far, including in earlier rounds, must
        // have survived the previous kill.
        {
            let snapshot = acked.lock().map(|a| Acked {
                users: a.users.clone(),
                members: a.members.clone(),
            });
            verify(&bin, &snapshot.expect("lock")).await;
        }
        let workers: Vec<_> = (0..4)
            .map(|w| tokio::spawn(writer(bin.url(""), w, round, acked.clone())))
            .collect();
        // Kill at a random point: somewhere between 30 ms and 600 ms of
        // concurrent writes, mid-request for some of the writers.
        let delay = 30 + rng.below(570);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        sigkill(&mut bin);
        for w in workers {
            let _ = w.await;
        }
    }

    // A final start opens the file cleanly and holds everything.
    let bin = start(dir.path()).await;
    let acked = acked.lock().map(|a| Acked {
        users: a.users.clone(),
        members: a.members.clone(),
    });
    let acked = acked.expect("lock");
    assert!(
        acked.users.len() > ROUNDS,
        "too few writes to mean anything: {}",
        acked.users.len()
    );
    verify(&bin, &acked).await;
    println!(
        "{} sign-ups and {} invite accepts acknowledged across {ROUNDS} kills",
        acked.users.len(),
        acked.members.len()
    );
    drop(bin);
    // The file also opens directly and cleanly after the daemon is gone.
    cedard::store::Store::open(&dir.path().join("state/cedard.redb")).expect("store opens");
}

/// Runs `cedard serve` expecting it to refuse to start; returns its stderr.
fn refused(dir: &Path, data: &Path) -> String {
    let mut args = serve_args(dir);
    args[1] = data.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("serve")
        .args(&args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cedard");
    assert!(
        !out.status.success(),
        "cedard started on a file it should refuse"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_second_daemon_on_the_same_file_is_refused() {
    let dir = copy_pack();
    let first = start(dir.path()).await;
    let data: PathBuf = dir.path().join("state/cedard.redb");
    let stderr = refused(dir.path(), &data);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(stderr.contains("cedard.redb"), "{stderr}");
    // The first one still serves.
    let resp = reqwest::get(first.url("/healthz")).await.expect("healthz");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn a_file_from_a_newer_cedard_is_refused_untouched() {
    let dir = copy_pack();
    let data = dir.path().join("newer.redb");
    {
        let db = redb::Database::create(&data).expect("create");
        let txn = db.begin_write().expect("txn");
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .expect("meta");
            meta.insert("format", cedard::store::FORMAT_VERSION + 1)
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let before = std::fs::read(&data).expect("read");
    let stderr = refused(dir.path(), &data);
    assert!(stderr.contains("newer cedard"), "{stderr}");
    assert!(stderr.contains("newer.redb"), "{stderr}");
    assert_eq!(
        std::fs::read(&data).expect("read"),
        before,
        "the file was modified"
    );
}
