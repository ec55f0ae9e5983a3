//! Times AuthZEN searches over a large store through the real daemon on a
//! real socket: resource search ("which of 10,000 accounts may u42 see the
//! billing of?") and subject search ("which of 100,000 users may start a pod
//! of a42?"). Each is asked `ROUNDS` times (default 5); the first answer
//! builds the entity memo, the rest reuse it.
//!
//!     cargo run --release --example search_latency [ROUNDS]

use std::time::{Duration, Instant};

use cedard::server::{self, Config};
use cedard::store::Store;
use serde_json::{json, Value};

mod common;

const USERS: usize = 100_000;
const ACCOUNTS: usize = 10_000;

fn populate(path: &std::path::Path) {
    let store = Store::open(path).expect("open");
    common::populate(&store, USERS, ACCOUNTS);
    store
        .write(|w| {
            // u42 also holds billing in a hundred other accounts.
            for k in 0..100 {
                w.add_member(&format!("a{}", 100 + k * 97), "u42", "billing", 0)?;
            }
            Ok(())
        })
        .expect("populate");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("big.redb");
    let started = Instant::now();
    populate(&data);
    println!(
        "store: {USERS} users, {ACCOUNTS} accounts, built in {:.1?}",
        started.elapsed()
    );
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::new(root.join("policies"), root.join("schema"));
    config.options.data = data;
    config.options.no_watch = true;
    config.options.request_timeout_ms = 120_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(server::run(listener, config, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    for _ in 0..500 {
        if client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let searches = [
        (
            "resource search, 10,000 accounts (u42 viewBilling)",
            "/access/v1/search/resource",
            json!({"subject": {"type": "User", "id": "u42"}, "action": {"name": "viewBilling"},
                   "resource": {"type": "Account"}}),
        ),
        (
            "subject search, 100,000 users (startPod on a pod of a42)",
            "/access/v1/search/subject",
            json!({"subject": {"type": "User"}, "action": {"name": "startPod"},
                   "resource": {"type": "Pod", "id": "p1",
                                "properties": {"account": {"type": "Account", "id": "a42"}}}}),
        ),
    ];
    for (name, path, body) in searches {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..rounds {
            let started = Instant::now();
            let mut token = String::new();
            found = 0;
            loop {
                let mut b = body.clone();
                b["page"] = json!({"token": token});
                let answer: Value = client
                    .post(format!("http://{addr}{path}"))
                    .json(&b)
                    .send()
                    .await
                    .expect("search")
                    .json()
                    .await
                    .expect("json");
                found += answer["results"].as_array().map_or(0, Vec::len);
                token = answer["page"]["next_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if token.is_empty() {
                    break;
                }
            }
            times.push(started.elapsed());
        }
        let first = times[0];
        let warm = median(times[1..].to_vec());
        println!(
            "{name}: {found} results; first {first:.1?}, then median {warm:.1?} over {} rounds",
            rounds - 1
        );
    }
    let _ = tx.send(());
    let _ = daemon.await;
}
