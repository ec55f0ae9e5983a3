//! Issue 12, the reload and the input edges: no handler waits on a reload
//! and the reload status always matches the served set; file size and
//! policy count are capped; a half-written file is never served; an
//! unreadable policy file refuses the set; a missing policy folder is
//! reported once and recovered from; display names refuse control and
//! bidirectional characters, duplicate JSON keys are refused, error answers
//! are bounded; an invite link tells what it is for.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::reload::{check, decision, disk_sha};
use crate::support::{copy_pack, free_port, spawn_app, spawn_app_in, wait_until, TestApp};

const DEADLINE: Duration = Duration::from_secs(30);

const BASIC_WITH_BILLING: &str = "@id(\"basic\")\npermit (principal, action in [Action::\"basic\", Action::\"billing\"], resource)\nwhen { principal in resource.account.roles.basic };\n";
const BASIC: &str = "@id(\"basic\")\npermit (principal, action in Action::\"basic\", resource)\nwhen { principal in resource.account.roles.basic };\n";

/// Waits until the last reload attempt read exactly the files on disk.
async fn wait_for_attempt_on_disk(app: &TestApp) -> Value {
    let want = disk_sha(app);
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["sha256"] == want.as_str()
    })
    .await;
    app.get("/v1/policies").await.1
}

/// Waits until the last reload attempt was refused with an error in
/// `file`, and returns `/v1/policies`.
async fn wait_for_error_in(app: &TestApp, file: &str) -> Value {
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["errors"][0]["file"] == file
    })
    .await;
    app.get("/v1/policies").await.1
}

/// Runs `f` on a thread of its own with its own runtime, so that a test can
/// measure the daemon's answers even if the daemon's workers are stuck.
fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce(reqwest::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        rt.block_on(f(client))
    })
}

// Finding 6: `GET /v1/policies` froze the daemon while a reload ran, and
// its status could belong to another revision than the one it listed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_health_answer_promptly_during_a_slow_reload() {
    // Every reload waits 1.5 s for the files to settle, holding the reload
    // sequence: a slow reload without any artificial hook.
    let app = spawn_app_in(copy_pack(), |c| c.options.settle_ms = 1500).await;
    std::fs::write(app.policies().join("basic.cedar"), BASIC_WITH_BILLING).expect("write");
    let base = app.url("");
    let slowest = on_own_thread(move |client| {
        Box::pin(async move {
            let mut slowest: Vec<(String, Duration)> = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let ask = |path: &'static str| {
                    let client = client.clone();
                    let url = format!("{base}{path}");
                    async move {
                        let t = Instant::now();
                        let status = client.get(url).send().await.map(|r| r.status().as_u16());
                        (path, status, t.elapsed())
                    }
                };
                // Two listings at once (one per worker) and a probe.
                let (a, b, h) =
                    tokio::join!(ask("/v1/policies"), ask("/v1/policies"), ask("/healthz"));
                for (path, status, took) in [a, b, h] {
                    assert_eq!(status.ok(), Some(200), "{path}");
                    slowest.push((path.to_owned(), took));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
            slowest.truncate(3);
            slowest
        })
    })
    .join()
    .expect("client thread");
    assert!(
        slowest[0].1 < Duration::from_millis(700),
        "answers waited on the reload: {slowest:?}"
    );
    wait_until(DEADLINE, || async {
        decision(&app, "basic", "viewBilling").await == "allow"
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_status_always_matches_the_served_revision() {
    let app = spawn_app_in(copy_pack(), |c| {
        c.options.settle_ms = 0;
        c.options.debounce_ms = 5;
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (client, url) = (app.client.clone(), app.url("/v1/policies"));
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut torn = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body: Value = client
                    .get(&url)
                    .send()
                    .await
                    .expect("request")
                    .json()
                    .await
                    .expect("json");
                reads.fetch_add(1, Ordering::Relaxed);
                let last = &body["last_reload"];
                if last["ok"] == true && last["sha256"] != body["revision"]["sha256"] {
                    torn.push(format!(
                        "status {} for revision {}",
                        last["sha256"], body["revision"]
                    ));
                }
            }
            torn
        }));
    }
    let path = app.policies().join("basic.cedar");
    let mut generation = app.generation().await;
    for i in 0..60 {
        // Saved by rename, so that no reload sees a half-written file.
        let tmp = path.with_extension("cedar.tmp~");
        std::fs::write(
            &tmp,
            if i % 2 == 0 {
                BASIC_WITH_BILLING
            } else {
                BASIC
            },
        )
        .expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let started = Instant::now();
        while app.generation().await <= generation {
            assert!(
                started.elapsed() < DEADLINE,
                "write {i} never loaded: {}",
                app.get("/v1/policies").await.1["last_reload"]
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        generation = app.generation().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut torn = Vec::new();
    for r in readers {
        torn.extend(r.await.expect("reader"));
    }
    assert!(reads.load(Ordering::Relaxed) > 100, "too few reads to tell");
    assert!(
        torn.is_empty(),
        "{} of {} reads showed a status of another revision, e.g. {}",
        torn.len(),
        reads.load(Ordering::Relaxed),
        torn[0]
    );
    app.stop().await;
}

// Finding 7: file size and policy count are capped with a clear error.

#[tokio::test]
async fn a_policy_file_over_the_size_limit_or_too_many_policies_refuse_the_set() {
    let app = spawn_app_in(copy_pack(), |c| {
        c.options.policy.max_policy_file_bytes = 4096;
        c.options.policy.max_policies = 20;
    })
    .await;
    // A file over 4 KiB.
    let big: String = (0..60)
        .map(|i| format!("@id(\"big{i}\")\npermit (principal, action == Action::\"useAccount\", resource) when {{ false }};\n"))
        .collect();
    assert!(big.len() > 4096);
    std::fs::write(app.policies().join("big.cedar"), &big).expect("write");
    let listing = wait_for_error_in(&app, "big.cedar").await;
    let last = &listing["last_reload"];
    assert_eq!(last["ok"], false, "{listing}");
    assert_eq!(last["errors"][0]["file"], "big.cedar", "{listing}");
    let message = last["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--max-policy-file-bytes"), "{message}");
    assert_eq!(listing["revision"]["generation"], 1);

    // Under 4 KiB but over 20 policies in all (with the pack's).
    let pack = crate::support::pack_policy_ids().len();
    let many: String = (0..(21 - pack.min(20)).max(15))
        .map(|i| format!("@id(\"m{i}\")\npermit (principal, action == Action::\"useAccount\", resource) when {{ false }};\n"))
        .collect();
    std::fs::remove_file(app.policies().join("big.cedar")).expect("remove");
    std::fs::write(app.policies().join("many.cedar"), &many).expect("write");
    let listing = wait_for_error_in(&app, "many.cedar").await;
    let last = &listing["last_reload"];
    assert_eq!(last["ok"], false, "{listing}");
    assert_eq!(last["errors"][0]["file"], "many.cedar", "{listing}");
    let message = last["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{} policies", pack + (21 - pack.min(20)).max(15)))
            && message.contains("--max-policies"),
        "{message}"
    );
    assert_eq!(listing["revision"]["generation"], 1);
    assert_eq!(decision(&app, "dev", "startPod").await, "allow");
    app.stop().await;
}

// Finding 8: a file written in two steps was served half-written.

/// The account's owner, holding `admin`, asks to convert the team account
/// `acme`: `convert-personal-only` in `account.cedar` must deny it.
fn owner_converts_team() -> Value {
    let mut body = check("admin", "convertToTeam");
    body["principal"] = json!({"type": "User", "id": "o"});
    body["entities"][0]["uid"] = json!({"type": "User", "id": "o"});
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_in_two_steps_is_never_served_half_written() {
    let app = spawn_app().await;
    let path = app.policies().join("account.cedar");
    let full = std::fs::read_to_string(&path).expect("read") + "// edited\n";
    // The first `forbid` alone is a valid set that lets an owner convert a
    // team account.
    let cut = full.find("// Only a personal").expect("second policy");
    let (prefix, rest) = full.split_at(cut);

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (client, url, stop) = (
            app.client.clone(),
            app.url("/v1/is_authorized"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut asked, mut allowed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let body: Value = client
                    .post(&url)
                    .json(&owner_converts_team())
                    .send()
                    .await
                    .expect("request")
                    .json()
                    .await
                    .expect("json");
                asked += 1;
                if body["decision"] != "deny" {
                    allowed += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (asked, allowed)
        })
    };
    {
        let mut file = std::fs::File::create(&path).expect("open");
        file.write_all(prefix.as_bytes()).expect("write prefix");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.write_all(rest.as_bytes()).expect("write rest");
    }
    let listing = wait_for_attempt_on_disk(&app).await;
    stop.store(true, Ordering::Relaxed);
    let (asked, allowed) = poller.await.expect("poller");
    assert!(asked > 20, "too few decisions to tell: {asked}");
    assert_eq!(allowed, 0, "the half-written file was served");
    assert_eq!(listing["last_reload"]["ok"], true, "{listing}");
    assert_eq!(
        listing["revision"]["generation"], 2,
        "the prefix became a generation of its own: {listing}"
    );
    app.stop().await;
}

// Finding 9: a dangling symlink was dropped silently; a missing policy
// folder flooded the log.

#[tokio::test]
async fn a_dangling_policy_symlink_refuses_the_set_naming_the_file() {
    // The link leads out of the policy folder (a mount beside it), which
    // only `--follow-links-out` allows.
    let app = spawn_app_in(copy_pack(), |c| c.options.policy.follow_links_out = true).await;
    std::os::unix::fs::symlink(
        app.dir.path().join("mount/forbid.cedar"),
        app.policies().join("forbid.cedar"),
    )
    .expect("symlink");
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["ok"] == false
    })
    .await;
    let (_, listing) = app.get("/v1/policies").await;
    let err = &listing["last_reload"]["errors"][0];
    assert_eq!(err["file"], "forbid.cedar", "{listing}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("symbolic link"),
        "{listing}"
    );
    assert_eq!(listing["revision"]["generation"], 1);
    // The target appears: the set loads with it.
    std::fs::create_dir(app.dir.path().join("mount")).expect("mkdir");
    std::fs::write(
        app.dir.path().join("mount/forbid.cedar"),
        "@id(\"no-billing\")\nforbid (principal, action == Action::\"viewBilling\", resource);\n",
    )
    .expect("write");
    wait_until(DEADLINE, || async {
        decision(&app, "billing", "viewBilling").await == "deny"
    })
    .await;
    app.stop().await;
}

/// Starts the real binary in `dir` with its log in `dir/cedard.log`.
fn spawn_logged(dir: &Path) -> (std::process::Child, String) {
    let port = free_port();
    let log = std::fs::File::create(dir.join("cedard.log")).expect("log file");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cedard");
    (child, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn a_missing_policy_folder_is_reported_once_and_recovered_from() {
    let dir = copy_pack();
    let (mut child, base) = spawn_logged(dir.path());
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move {
            match client.get(url).send().await {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or_default(),
                ),
                Err(_) => (0, Value::Null),
            }
        }
    };
    wait_until(DEADLINE, || async { get("/readyz").await.0 == 200 }).await;
    let ask = |role: &'static str, action: &'static str| {
        let (client, url) = (client.clone(), format!("{base}/v1/is_authorized"));
        async move {
            let body: Value = client
                .post(url)
                .json(&check(role, action))
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            body["decision"].as_str().unwrap_or_default().to_owned()
        }
    };
    let policies = dir.path().join("policies");
    let aside = dir.path().join("policies.moved");
    let log_lines = || {
        std::fs::read_to_string(dir.path().join("cedard.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = log_lines();
    std::fs::rename(&policies, &aside).expect("move the folder away");
    wait_until(DEADLINE, || async {
        get("/v1/policies").await.1["last_reload"]["ok"] == false
    })
    .await;
    // Three seconds of a missing folder: the daemon keeps serving the last
    // good set, and says so a bounded number of times.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(ask("dev", "startPod").await, "allow");
        assert_eq!(get("/readyz").await.1["revision"]["generation"], 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, listing) = get("/v1/policies").await;
    let message = listing["last_reload"]["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("cannot read the folder"), "{listing}");
    let log = std::fs::read_to_string(dir.path().join("cedard.log")).unwrap_or_default();
    let added = log_lines() - before;
    assert!(added <= 6, "{added} log lines in 3 s:\n{log}");
    // The folder comes back, edited: the daemon picks it up.
    std::fs::write(aside.join("basic.cedar"), BASIC_WITH_BILLING).expect("write");
    std::fs::rename(&aside, &policies).expect("move the folder back");
    wait_until(DEADLINE, || async {
        ask("basic", "viewBilling").await == "allow"
    })
    .await;
    assert_eq!(get("/v1/policies").await.1["last_reload"]["ok"], true);
    let _ = child.kill();
    let _ = child.wait();
}

// Finding 10: input edges.

/// Sends `method path` with an optional `X-Actor` (raw bytes) and body;
/// returns the status and the body as text.
async fn raw_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    actor: Option<&[u8]>,
    body: Option<&str>,
) -> (u16, String) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(a) = actor {
        req = req.header(
            "x-actor",
            reqwest::header::HeaderValue::from_bytes(a).expect("header value"),
        );
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn display_names_refuse_control_and_bidirectional_override_characters() {
    let app = spawn_app().await;
    let post = reqwest::Method::POST;
    for (i, name) in ["a\u{0}b", "bell\u{7}", "evil\u{202E}gnp.exe", "x\u{2066}y"]
        .iter()
        .enumerate()
    {
        let body =
            json!({"id": format!("u{i}"), "email": format!("u{i}@example.com"), "name": name});
        let (status, text) = raw_call(
            &app,
            post.clone(),
            "/v1/users",
            None,
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(status, 400, "{name:?}: {text}");
        assert!(text.contains("name"), "{text}");
    }
    // The account name of a conversion and a key's name are held to the
    // same rule.
    let ok = json!({"id": "alice", "email": "alice@example.com", "name": "Alice"});
    assert_eq!(
        raw_call(&app, post.clone(), "/v1/users", None, Some(&ok.to_string()))
            .await
            .0,
        201
    );
    let (status, text) = raw_call(
        &app,
        post.clone(),
        "/v1/accounts/alice/convert",
        Some(b"alice"),
        Some(&json!({"name": "Acme\u{202E}"}).to_string()),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = raw_call(
        &app,
        post,
        "/v1/keys",
        None,
        Some(&json!({"name": "svc\u{202D}", "scopes": ["decide"]}).to_string()),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    app.stop().await;
}

#[tokio::test]
async fn x_actor_is_never_echoed_and_must_be_text() {
    let app = spawn_app().await;
    let get = reqwest::Method::GET;
    let huge = "a".repeat(64 * 1024);
    let (status, text) = raw_call(
        &app,
        get.clone(),
        "/v1/accounts/acme",
        Some(huge.as_bytes()),
        None,
    )
    .await;
    assert_eq!(status, 403, "{}", &text[..text.len().min(300)]);
    assert!(text.len() < 1024, "the answer is {} bytes", text.len());
    let (status, text) =
        raw_call(&app, get, "/v1/accounts/acme", Some(b"\xffal\xfeice"), None).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("X-Actor"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn duplicate_json_keys_are_refused_naming_the_key() {
    let app = spawn_app().await;
    let post = reqwest::Method::POST;
    let (status, text) = raw_call(
        &app,
        post.clone(),
        "/v1/users",
        None,
        Some(r#"{"id": "bob", "email": "bob@example.com", "id": "root"}"#),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let body: Value = serde_json::from_str(&text).expect("json error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("id: this key is given twice"), "{text}");
    // Nobody was signed up under either id.
    let (status, _) = raw_call(
        &app,
        post.clone(),
        "/v1/users",
        None,
        Some(&json!({"id": "root", "email": "r@example.com"}).to_string()),
    )
    .await;
    assert_eq!(status, 201);
    // A decision's own fields are refused twice too.
    let mut check_body = check("dev", "startPod").to_string();
    check_body.insert_str(1, r#""action": {"type": "Action", "id": "viewBilling"}, "#);
    let (status, text) = raw_call(
        &app,
        post.clone(),
        "/v1/is_authorized",
        None,
        Some(&check_body),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("action: this key is given twice"), "{text}");
    // Messages quoting input are bounded.
    let long = "x".repeat(10_000);
    let (status, text) = raw_call(
        &app,
        post,
        "/v1/users",
        None,
        Some(&json!({"id": "carol", "email": "c@example.com", "name": [long]}).to_string()),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.len() < 1024, "the answer is {} bytes", text.len());
    app.stop().await;
}

// Finding 11: the invite link answered 404.

#[tokio::test]
async fn an_invite_link_tells_what_it_is_for_without_accepting_it() {
    let app = spawn_app().await;
    let post = reqwest::Method::POST;
    for (id, name) in [("alice", "Alice"), ("bob", "Bob")] {
        // Verified, so that bob may accept an invite bound to his email.
        let body = json!({"id": id, "email": format!("{id}@example.com"), "name": name, "email_verified": true});
        assert_eq!(
            raw_call(
                &app,
                post.clone(),
                "/v1/users",
                None,
                Some(&body.to_string())
            )
            .await
            .0,
            201
        );
    }
    let (status, _) = raw_call(
        &app,
        post.clone(),
        "/v1/accounts/alice/convert",
        Some(b"alice"),
        Some(r#"{"name": "Acme"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let (status, text) = raw_call(
        &app,
        post.clone(),
        "/v1/accounts/alice/invites",
        Some(b"alice"),
        Some(r#"{"role": "dev", "email": "bob@example.com"}"#),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let issued: Value = serde_json::from_str(&text).expect("json");
    let link = issued["link"].as_str().expect("link");
    let path = &link[link.find("/invites/").expect("path")..];
    let (status, shown) = app.get(path).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["account"], "alice", "{shown}");
    assert_eq!(shown["account_name"], "Acme", "{shown}");
    assert_eq!(shown["role"], "dev", "{shown}");
    assert_eq!(shown["email_bound"], true, "{shown}");
    assert_eq!(shown["expires_at"], issued["expires_at"], "{shown}");
    assert!(
        shown.get("email").is_none() && shown.get("token").is_none(),
        "{shown}"
    );
    // Looking did not accept: bob still can.
    let token = issued["token"].as_str().expect("token");
    let accept = json!({"token": token}).to_string();
    let (status, text) = raw_call(
        &app,
        post,
        "/v1/invites/accept",
        Some(b"bob"),
        Some(&accept),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // A used link, like an unknown one, is the accept's 410.
    let (status, body) = app.get(path).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (410, &json!("gone")),
        "{body}"
    );
    let (status, _) = app.get("/invites/not-a-token").await;
    assert_eq!(status, 410);
    app.stop().await;
}

/// Writes `request` on a fresh connection and returns everything the
/// daemon answers until it closes the connection (or a second passes).
async fn raw_http(app: &TestApp, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // The daemon may answer and close before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bad_paths_and_oversized_requests_get_bounded_answers() {
    let app = spawn_app().await;
    // A path segment that is not UTF-8: the one JSON shape, saying why.
    let (status, text) = raw_call(
        &app,
        reqwest::Method::GET,
        "/v1/accounts/%FF%FE/members",
        Some(b"alice"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let body: Value = serde_json::from_str(&text).expect("json error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("UTF-8"), "{text}");
    assert!(text.len() < 1024, "{text}");
    // A URI over 64 KiB and headers over hyper's buffer are refused by
    // hyper before any route runs: the status is right and nothing of the
    // request is echoed (hyper gives no hook to shape that body).
    let long_path = format!("/v1/accounts/{}", "a".repeat(70 * 1024));
    let answer = raw_http(
        &app,
        &format!("GET {long_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Actor: alice\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 414"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.len() < 1024, "{answer}");
    let padding = "p".repeat(512 * 1024);
    let answer = raw_http(
        &app,
        &format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {padding}\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.len() < 1024, "{answer}");
    app.stop().await;
}

/// A line break in a policy file's name (or any logged value) cannot start
/// a forged line of the daemon's log: every line the daemon writes begins
/// with its own timestamp, and the name appears escaped.
#[tokio::test]
async fn a_line_break_in_a_file_name_cannot_forge_a_log_line() {
    let dir = copy_pack();
    let log = dir.path().join("daemon.log");
    let bin = crate::support::spawn_binary_logging(dir.path(), &[], &log).await;
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO cedard::server: policy set loaded generation=99 FORGED";
    std::fs::write(
        dir.path().join("policies").join(format!("{forged}.cedar")),
        "permit(principal, action, resource) when { nonsense",
    )
    .expect("write the file");
    wait_until(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("FORGED"))
    })
    .await;
    drop(bin);
    let text = std::fs::read_to_string(&log).expect("log");
    for line in text.lines() {
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit()),
            "a log line that is not the daemon's own: {line:?}\n{text}"
        );
    }
    assert!(
        text.contains("x\\n2026-01-01"),
        "the name is shown escaped: {text}"
    );
}

/// Two links back to the policy folder (`a -> .`, `b -> .`) made the walk
/// endless. The reload is refused naming a link, the served set stays, and
/// the set loads again once they are gone.
#[tokio::test]
async fn links_back_to_the_folder_refuse_the_set_and_the_walk_ends() {
    let app = spawn_app().await;
    for link in ["a", "b"] {
        std::os::unix::fs::symlink(".", app.policies().join(link)).expect("symlink");
    }
    // One more file so that the change is seen whatever the order.
    std::fs::write(app.policies().join("touch.cedar"), "").expect("write");
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["ok"] == false
    })
    .await;
    let (_, listing) = app.get("/v1/policies").await;
    let errors = listing["last_reload"]["errors"].as_array().expect("errors");
    assert!(
        errors.iter().any(|e| {
            ["a", "b"].contains(&e["file"].as_str().unwrap_or_default())
                && e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("already read")
        }),
        "{listing}"
    );
    assert_eq!(listing["revision"]["generation"], 1);
    assert_eq!(decision(&app, "billing", "viewBilling").await, "allow");

    // `cedard validate` ends too, with the same finding.
    let said = validate_refuses(app.dir.path());
    assert!(said.contains("already read"), "{said}");

    for link in ["a", "b"] {
        std::fs::remove_file(app.policies().join(link)).expect("remove");
    }
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["ok"] == true
    })
    .await;
}

/// A `.cedar` link to a file elsewhere on the server (`zz.cedar ->
/// /etc/shadow`, here a secret file beside the pack) is refused naming the
/// link, and not one byte of the file reaches an answer; a link out of the
/// folder is followed only with `--follow-links-out`.
#[tokio::test]
async fn a_link_out_of_the_policy_folder_is_refused_without_reading_it() {
    let app = spawn_app().await;
    let secret = app.dir.path().join("shadow");
    std::fs::write(&secret, "root:*:20228:SECRET-HASH\n").expect("write");
    std::os::unix::fs::symlink(&secret, app.policies().join("zz.cedar")).expect("symlink");
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["ok"] == false
    })
    .await;
    let (_, listing) = app.get("/v1/policies").await;
    let text = listing.to_string();
    assert!(!text.contains("SECRET"), "{text}");
    assert!(!text.contains("root:"), "{text}");
    let err = &listing["last_reload"]["errors"][0];
    assert_eq!(err["file"], "zz.cedar", "{listing}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("outside this folder"),
        "{listing}"
    );
    assert_eq!(listing["revision"]["generation"], 1);

    // `cedard validate` says the same, and shows nothing of the file.
    let said = validate_refuses(app.dir.path());
    assert!(
        said.contains("zz.cedar") && !said.contains("SECRET"),
        "{said}"
    );
}

/// Runs `cedard validate` in `dir`, which must refuse the set; what it said
/// (stderr, then stdout).
fn validate_refuses(dir: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("validate")
        .current_dir(dir)
        .output()
        .expect("run cedard validate");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}
