//! The limits a request is held to, as a client sees them: the body size
//! (413 `too_large`), the inline-entity and batch limits (400 naming the
//! field), the concurrency cap (a fast 503 `overloaded` with `Retry-After`,
//! the probes `/healthz` and `/readyz` outside it, and the slot freed again
//! when the slow request finishes or its client leaves), slow bodies (read
//! before a request takes a slot, 408 `body_timeout` at their deadline),
//! per-request time limits (a search stops at its deadline, 503
//! `timeout`), one caller's share of the slots, the header-read timeout against
//! slowloris clients, and the real binary's peak memory under sixteen
//! concurrent maximal requests while `/healthz` keeps answering. No error
//! answer here may carry a decision.

use super::support;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::{copy_pack, entity, spawn_app, spawn_app_in, spawn_binary, TestApp};

const MIB: usize = 1024 * 1024;

/// The default `--max-inline-entities`.
const MAX_ENTITIES: usize = 2000;

/// The default `--batch-limit`.
const BATCH_LIMIT: usize = 1000;

/// How long any answer may take before the test calls it a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

/// README's `dana`, a dev of `acme`.
fn dana() -> Value {
    entity::user("dana", &[("acme", "dev")])
}

/// README's team account `acme`.
fn acme() -> Value {
    entity::account("acme", "Acme", "team", "olga")
}

fn pod(id: &str) -> Value {
    entity::pod(id, "acme")
}

/// README's question: may dana start pod p1? (allow, by `dev`), with the
/// given inline entities.
fn dana_starts_p1_with(entities: Vec<Value>) -> Value {
    json!({"principal": uid("User", "dana"), "action": uid("Action", "startPod"),
           "resource": uid("Pod", "p1"), "entities": entities})
}

fn dana_starts_p1() -> Value {
    dana_starts_p1_with(vec![dana(), acme(), pod("p1")])
}

/// dana, acme, p1 and more pods up to `total` inline entities.
fn entities(total: usize) -> Vec<Value> {
    let mut all = vec![dana(), acme(), pod("p1")];
    all.extend((all.len()..total).map(|i| pod(&format!("extra{i}"))));
    all
}

/// `body` as JSON, padded with trailing spaces to exactly `len` bytes.
fn padded(body: &Value, len: usize) -> String {
    let mut text = body.to_string();
    assert!(
        text.len() <= len,
        "{} bytes do not fit in {len}",
        text.len()
    );
    text.extend(std::iter::repeat_n(' ', len - text.len()));
    text
}

/// Asserts a 200 allow by the `dev` policy.
fn assert_dev_allow(status: u16, body: &Value) {
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow", "{body}");
    assert_eq!(body["reasons"][0]["policy_id"], "dev", "{body}");
}

/// Asserts the one error shape with `code`, and that no decision rides along.
fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body.get("decision").is_none() && body.get("results").is_none(),
        "an error carried a decision: {body}"
    );
}

/// The head of a JSON POST announcing `content_length` bytes of body.
fn post_head(path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// An HTTP/1.1 answer read off a raw socket.
struct RawResponse {
    status: u16,
    body: Value,
}

/// Reads one `Content-Length` response off `stream`.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.expect("read the answer");
        assert!(
            n > 0,
            "closed before a full answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.expect("read the body");
        assert!(n > 0, "closed in the middle of the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    RawResponse { status, body }
}

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.client
        .get(app.url(path))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Sends `request` (whole) and waits until it holds the only request slot
/// (a probe under the cap, `GET /v1/policies`, is refused). If a probe
/// happened to hold the slot when the request arrived, the request is the
/// one refused; then it tries again.
async fn hold_the_only_slot(app: &TestApp, request: &[u8]) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut slow = TcpStream::connect(app.addr).await.expect("connect");
        slow.write_all(request).await.expect("write the request");
        loop {
            assert!(
                Instant::now() < deadline,
                "the slow request never held the slot"
            );
            if status_of(app, "/v1/policies").await == 503 {
                return slow;
            }
            let mut byte = [0u8; 1];
            match slow.try_read(&mut byte) {
                // Answered (refused) or closed: it never held the slot.
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A policy pack whose data file holds `users` signed-up users (each the
/// admin of their personal account), so that a subject search over them is
/// slow: a request that holds its slot for a while.
fn pack_with_users(users: usize) -> tempfile::TempDir {
    let dir = copy_pack();
    let data = dir.path().join("data").join("cedard.redb");
    let store = cedard::store::Store::open(&data).expect("open");
    store
        .write(|w| {
            for i in 0..users {
                let id = format!("u{i:05}");
                w.sign_up(
                    &cedard::store::User {
                        email: format!("{id}@example.com"),
                        id,
                        email_verified: false,
                        name: None,
                        created_at: 0,
                    },
                    "admin",
                )?;
            }
            Ok(())
        })
        .expect("users");
    dir
}

/// "Who may use u00001's account?": every stored user is a candidate.
fn slow_search() -> Value {
    json!({
        "subject": {"type": "User"},
        "action": {"name": "useAccount"},
        "resource": {"type": "Account", "id": "u00001"},
    })
}

/// A whole raw request for `path` with a JSON `body`.
fn raw_post(path: &str, body: &Value) -> Vec<u8> {
    let text = body.to_string();
    format!("{}{text}", post_head(path, text.len())).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_too_large_and_one_at_the_limit_is_answered() {
    let app = spawn_app().await;

    // Exactly the limit (1 MiB by default) is still read and answered.
    let (status, body) = app
        .post_raw("/v1/is_authorized", padded(&dana_starts_p1(), MIB))
        .await;
    assert_dev_allow(status, &body);

    // One byte more is refused on every route that reads a body.
    let over = [
        ("/v1/is_authorized", dana_starts_p1()),
        (
            "/v1/is_authorized/batch",
            json!({"requests": [{"principal": uid("User", "dana"), "action": uid("Action", "startPod"),
                                 "resource": uid("Pod", "p1")}],
                   "entities": [dana(), acme(), pod("p1")]}),
        ),
        (
            "/v1/users",
            json!({"id": "zed", "email": "zed@example.com"}),
        ),
    ];
    for (path, body) in over {
        let (status, answer) = app.post_raw(path, padded(&body, MIB + 1)).await;
        assert_error(status, &answer, 413, "too_large");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--max-body-bytes")),
            "{path}: {answer}"
        );
    }
    // Nothing of the refused sign-up was stored: the id is still free.
    let (status, body) = app
        .post(
            "/v1/users",
            &json!({"id": "zed", "email": "zed@example.com"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_inline_entities_or_batch_requests_are_400s_naming_the_field() {
    let app = spawn_app().await;
    let ask = json!({"principal": uid("User", "dana"), "action": uid("Action", "startPod"),
                     "resource": uid("Pod", "p1")});

    // At the limit: answered.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &dana_starts_p1_with(entities(MAX_ENTITIES)),
        )
        .await;
    assert_dev_allow(status, &body);
    let (status, body) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({"requests": vec![ask.clone(); BATCH_LIMIT], "entities": entities(MAX_ENTITIES)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), BATCH_LIMIT);
    assert!(results.iter().all(|r| r["decision"] == "allow"), "{body}");

    // One entity over, on both decision routes.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &dana_starts_p1_with(entities(MAX_ENTITIES + 1)),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("entities:"), "{message}");
    assert!(message.contains(&MAX_ENTITIES.to_string()), "{message}");

    let (status, body) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({"requests": [ask.clone()], "entities": entities(MAX_ENTITIES + 1)}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("entities:"), "{message}");

    // One request over the batch limit.
    let (status, body) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({"requests": vec![ask; BATCH_LIMIT + 1], "entities": [dana(), acme(), pod("p1")]}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("requests:"), "{message}");
    assert!(message.contains(&BATCH_LIMIT.to_string()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_concurrency_cap_others_get_a_fast_503_until_the_slot_is_free() {
    // The slot is held by a search over 20,000 users: slow, and stopped at
    // its deadline (three quarters of the 3 s time limit) if not done.
    let app = spawn_app_in(pack_with_users(20_000), |c| {
        c.options.max_concurrent = 1;
        c.options.request_timeout_ms = 3000;
    })
    .await;
    let question = dana_starts_p1();
    let search = raw_post("/access/v1/search/subject", &slow_search());

    let mut slow = hold_the_only_slot(&app, &search).await;

    // A decision request is refused at once, with Retry-After and no decision.
    let started = Instant::now();
    let resp = tokio::time::timeout(
        ANSWER_WITHIN,
        app.client
            .post(app.url("/v1/is_authorized"))
            .header("content-type", "application/json")
            .body(question.to_string())
            .send(),
    )
    .await
    .expect("refused instead of queued")
    .expect("request");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal took {:?}",
        started.elapsed()
    );
    assert_eq!(resp.status(), 503);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .expect("Retry-After header");
    assert_eq!(retry_after, "1");
    let body: Value = resp.json().await.expect("JSON");
    assert_error(503, &body, 503, "overloaded");

    // The probes are outside the cap: a saturated daemon is alive and ready.
    for probe in ["/healthz", "/readyz"] {
        let resp = tokio::time::timeout(ANSWER_WITHIN, app.client.get(app.url(probe)).send())
            .await
            .unwrap_or_else(|_| panic!("{probe} hung at the cap"))
            .expect("probe");
        assert_eq!(resp.status(), 200, "{probe}");
    }

    // The search was admitted, so it is answered: its page, or a 503
    // `timeout` at its deadline on a slow machine…
    let answer = tokio::time::timeout(ANSWER_WITHIN, read_response(&mut slow))
        .await
        .expect("the slow request is answered");
    if answer.status != 200 {
        assert_error(answer.status, &answer.body, 503, "timeout");
    }
    // …and the slot is free again.
    let (status, body) = app.post("/v1/is_authorized", &question).await;
    assert_dev_allow(status, &body);

    // A slow client that gives up frees the slot too.
    let quitter = hold_the_only_slot(&app, &search).await;
    drop(quitter);
    support::wait_until(ANSWER_WITHIN, || async {
        status_of(&app, "/v1/policies").await == 200
    })
    .await;
    let (status, body) = app.post("/v1/is_authorized", &question).await;
    assert_dev_allow(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_slot_and_are_answered_408_at_the_body_deadline() {
    // Six clients trickle their bodies at one byte per 50 ms (each would
    // take ~50 s) against a cap of two: a body is read before its request
    // takes a slot, so the slots stay free for whole requests.
    let app = spawn_app_in(copy_pack(), |c| {
        c.options.max_concurrent = 2;
        c.options.body_timeout_ms = 1500;
    })
    .await;
    let question = dana_starts_p1();
    let full = padded(&question, 1000).into_bytes();
    let mut readers = Vec::new();
    let mut trickles = Vec::new();
    for _ in 0..6 {
        let stream = TcpStream::connect(app.addr).await.expect("connect");
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(post_head("/v1/is_authorized", full.len()).as_bytes())
            .await
            .expect("write head");
        let body = full.clone();
        trickles.push(tokio::spawn(async move {
            for byte in body {
                if writer.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        readers.push(reader);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let (status, body) = app.post("/v1/is_authorized", &question).await;
        assert_dev_allow(status, &body);
    }
    for mut reader in readers {
        let answer = tokio::time::timeout(ANSWER_WITHIN, read_response(&mut reader))
            .await
            .expect("answered at the body deadline instead of hanging");
        assert_error(answer.status, &answer.body, 408, "body_timeout");
    }
    for trickle in trickles {
        trickle.abort();
    }
    // A request that arrives whole is answered.
    let (status, body) = app.post("/v1/is_authorized", &question).await;
    assert_dev_allow(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let app = spawn_app_in(copy_pack(), |c| c.options.header_timeout_ms = 300).await;
    let mut slowloris = TcpStream::connect(app.addr).await.expect("connect");
    slowloris
        .write_all(b"POST /v1/is_authorized HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .await
        .expect("write half a head");

    // Others are served meanwhile.
    let (status, body) = app.post("/v1/is_authorized", &dana_starts_p1()).await;
    assert_dev_allow(status, &body);
    assert_eq!(status_of(&app, "/healthz").await, 200);

    // The half head is cut off: EOF or a reset, within a few seconds.
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(ANSWER_WITHIN, async {
        let mut buf = [0u8; 1024];
        loop {
            match slowloris.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the half-sent request is still open after {ANSWER_WITHIN:?}"
    );
    assert!(
        !seen.starts_with(b"HTTP/1.1 2"),
        "a half head was answered: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// A body just under 1 MiB holding the most inline entities allowed: dana,
/// acme and 1998 Pods (p1 and 1997 with long ids unique to `n`, so that no
/// memo can answer one request from another).
fn maximal_body(n: usize) -> String {
    let build = |pad: usize| {
        let filler = "x".repeat(pad);
        let mut all = vec![dana(), acme(), pod("p1")];
        all.extend((all.len()..MAX_ENTITIES).map(|i| pod(&format!("p{n}-{i}-{filler}"))));
        dana_starts_p1_with(all).to_string()
    };
    let base = build(0).len();
    let pods = MAX_ENTITIES - 3;
    let pad = (MIB - 2048 - base) / pods;
    let body = build(pad);
    assert!(
        body.len() < MIB && body.len() > MIB - 4096,
        "{} bytes",
        body.len()
    );
    body
}

/// A `kB` field of the process' `/proc` status (`VmHWM`, `VmRSS`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc status"))
}

fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_maximal_requests_stay_under_512_mib_while_healthz_answers() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 4;
    let dir = copy_pack();
    let bin = spawn_binary(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let (mut allowed, mut overloaded, mut probes) = (0, 0, 0);

    for round in 0..ROUNDS {
        let mut requests = JoinSet::new();
        for i in 0..CLIENTS {
            let body = maximal_body(round * CLIENTS + i);
            let request = client
                .post(bin.url("/v1/is_authorized"))
                .header("content-type", "application/json")
                .body(body);
            requests.spawn(async move {
                let resp = tokio::time::timeout(Duration::from_secs(60), request.send())
                    .await
                    .expect("a maximal request hung")
                    .expect("request");
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            });
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = requests.join_next() => match done {
                    Some(answer) => {
                        let (status, body) = answer.expect("request task");
                        if status == 503 {
                            assert_error(status, &body, 503, "overloaded");
                            overloaded += 1;
                        } else {
                            assert_dev_allow(status, &body);
                            allowed += 1;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let started = Instant::now();
                    let resp = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.get(bin.url("/healthz")).send(),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("/healthz took over 2 s in round {round}"))
                    .expect("healthz");
                    assert_eq!(resp.status(), 200, "after {:?}", started.elapsed());
                    probes += 1;
                }
            }
        }
    }

    let kib = vm_hwm_kib(bin.child.id());
    let mib = kib as f64 / 1024.0;
    eprintln!(
        "cedard peak RSS (VmHWM) after {ROUNDS} rounds of {CLIENTS} concurrent ~1 MiB requests \
         with {MAX_ENTITIES} inline entities each: {mib:.1} MiB \
         ({allowed} allowed, {overloaded} overloaded; {probes} /healthz probes answered)"
    );
    assert_eq!(allowed + overloaded, ROUNDS * CLIENTS);
    assert!(allowed > 0, "every maximal request was refused");
    assert!(mib < 512.0, "peak RSS {mib:.1} MiB");
}

fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// The `cedard_http_requests_total` series of a `/metrics` page, as their
/// label text.
fn request_series(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("cedard_http_requests_total{"))
        .filter_map(|l| l.split_once('}').map(|(labels, _)| labels.to_owned()))
        .collect()
}

/// Sends `count` requests without a key, each with its own invented method
/// of `len` bytes to its own invented path, `round` keeping them apart
/// from another call's; every one must be refused.
async fn invented_requests(
    client: &reqwest::Client,
    base: &str,
    round: &str,
    count: usize,
    len: usize,
) {
    let mut set = JoinSet::new();
    for worker in 0..8 {
        let (client, base, round) = (client.clone(), base.to_owned(), round.to_owned());
        set.spawn(async move {
            for i in (worker..count).step_by(8) {
                let name = format!("{round}{i:08}");
                let method = format!("{name}{}", "M".repeat(len.saturating_sub(name.len())));
                let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a token");
                let answer = client
                    .request(method, format!("{base}/v1/invented/{name}"))
                    .send()
                    .await
                    .expect("request");
                let status = answer.status().as_u16();
                assert!(
                    (400..500).contains(&status),
                    "an invented method got {status}"
                );
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("sender");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_leave_the_metrics_and_memory_flat() {
    const COUNT: usize = 4000;
    const LEN: usize = 8 * 1024;
    let dir = copy_pack();
    let bin = spawn_binary(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    // A keyed daemon: what follows comes from callers without a key.
    let created = client
        .post(bin.url("/v1/keys"))
        .json(&json!({"name": "ops", "scopes": ["admin"]}))
        .send()
        .await
        .expect("create a key");
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await.expect("JSON");
    let admin = created["secret"].as_str().expect("secret").to_owned();
    let scrape = || async {
        let page = client
            .get(bin.url("/metrics"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(page.status().as_u16(), 200);
        page.text().await.expect("metrics text")
    };

    // Warm up: the same shapes, so that every series and buffer they need
    // exists before memory is measured.
    invented_requests(&client, &bin.url(""), "WARM", 400, LEN).await;
    // A scrape counts itself after it is rendered: the first one makes
    // the series that the next ones show.
    scrape().await;
    let before = request_series(&scrape().await);
    let rss_before = vm_rss_kib(bin.child.id());

    invented_requests(&client, &bin.url(""), "NEW", COUNT, LEN).await;
    let page = scrape().await;
    let after = request_series(&page);
    let rss_after = vm_rss_kib(bin.child.id());

    let known = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
    ];
    for labels in &after {
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("method=\""))
            .and_then(|m| m.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no method label in {labels}"));
        assert!(
            known.contains(&method),
            "a method label from the client: {}",
            &labels[..labels.len().min(120)]
        );
    }
    assert_eq!(
        after.len(),
        before.len(),
        "{COUNT} invented methods and paths added series"
    );
    assert!(page.len() < 64 * 1024, "the scrape is {} bytes", page.len());
    // The methods alone were COUNT × 8 KiB = 32 MiB; as label values they
    // would stay in memory for good.
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "{COUNT} invented {LEN}-byte methods: {} request series before and after, RSS {} → {} MiB",
        after.len(),
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(grown_mib < 12, "RSS grew {grown_mib} MiB");
}

/// `--metrics-listen` serves `/metrics` without a key, so a web page must
/// not reach it through DNS rebinding: a `Host` cedard does not serve is
/// refused there as on the main listener.
#[tokio::test]
async fn the_metrics_listener_refuses_a_host_it_does_not_serve() {
    let dir = copy_pack();
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let bin = spawn_binary(dir.path(), &["--metrics-listen", &addr]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");
    let wait_until_up = support::wait_until(Duration::from_secs(10), || async {
        client.get(&url).send().await.is_ok()
    });
    wait_until_up.await;
    let rebound = client
        .get(&url)
        .header("host", format!("attacker.example:{port}"))
        .send()
        .await
        .expect("request");
    assert_eq!(rebound.status().as_u16(), 400);
    let body: Value = rebound.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "invalid_host", "{body}");
    let direct = client.get(&url).send().await.expect("request");
    assert_eq!(direct.status().as_u16(), 200);
    let text = direct.text().await.expect("text");
    assert!(text.contains("cedard_build_info"), "{text}");
    drop(bin);
}

/// The CPU time the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The fields after the command name (which may hold spaces), from the
    // third: utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Searches over 20,000 users that run out of time answer 503 `timeout`
/// and stop there: the daemon is idle once they are answered, rather than
/// searching on with its concurrency permits given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_that_runs_out_of_time_stops_computing() {
    let dir = pack_with_users(20_000);
    let bin = spawn_binary(dir.path(), &["--request-timeout-ms", "1000"]).await;
    let client = reqwest::Client::new();
    // Who may use u00001's account? Only u00001: every candidate is tried.
    let body = slow_search();
    let mut set = JoinSet::new();
    for _ in 0..6 {
        let (client, url, body) = (
            client.clone(),
            bin.url("/access/v1/search/subject"),
            body.clone(),
        );
        set.spawn(async move {
            let answer = client.post(url).json(&body).send().await.expect("search");
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            (status, body)
        });
    }
    while let Some(done) = set.join_next().await {
        let (status, body) = done.expect("search task");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "timeout", "{body}");
    }
    // Once the answers are out, the work is over: at most a little CPU in
    // the next second (the old code searched on for seconds, on both cores).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = bin.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    eprintln!("CPU used in the second after six timed-out searches: {used} ticks");
    assert!(
        used < 30,
        "the daemon used {used} ticks of CPU after answering"
    );
}

/// Sockets that send half a request head (and reconnect when closed) fill
/// the connection limits; a client sending whole requests is still served,
/// because a new connection at a limit closes the oldest one that has not
/// sent a whole head. Checked at the global limit and at the per-peer one
/// (every client here is the one peer 127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_cannot_lock_out_whole_requests() {
    for (total, per_peer) in [(20, 1024), (4096, 20)] {
        let app = spawn_app_in(copy_pack(), |c| {
            c.options.max_connections = total;
            c.options.max_connections_per_peer = per_peer;
        })
        .await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut attackers = JoinSet::new();
        for _ in 0..40 {
            let (addr, stop) = (app.addr, stop.clone());
            attackers.spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut socket) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = socket
                        .write_all(
                            b"POST /v1/is_authorized HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
                        )
                        .await;
                    // Held until the daemon closes it (or the test ends).
                    let mut byte = [0u8; 1];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), socket.read(&mut byte)).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A new connection for every call, as a fresh client would open.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        for i in 0..10 {
            let answer =
                tokio::time::timeout(ANSWER_WITHIN, client.get(app.url("/healthz")).send())
                    .await
                    .unwrap_or_else(|_| panic!("call {i} hung ({total}, {per_peer})"));
            let status = answer.map(|r| r.status().as_u16()).unwrap_or_else(|e| {
                panic!("call {i} at limits ({total} in all, {per_peer} a peer) failed: {e}")
            });
            assert_eq!(status, 200);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        attackers.abort_all();
    }
}
