//! Several real cedard processes on one real PostgreSQL database, as a
//! caller sees them: the seed's flows through one replica seen by another;
//! write-then-check with the returned store revision never stale on another
//! replica; concurrent accepts and demotions across replicas keeping the
//! directory's rules; a replica killed mid-write losing no acknowledged
//! write; a database outage answered 503 (never allow) and recovered from;
//! `cedard store copy` from a redb file.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::pg::Cluster;
use super::support::{repo_root, spawn_binary, wait_until, Api, Binary};

const DEADLINE: Duration = Duration::from_secs(20);

async fn replica(pg: &Cluster) -> Binary {
    spawn_binary(
        &repo_root(),
        &["--store", &pg.url(), "--store-poll-ms", "100"],
    )
    .await
}

/// One call: `actor` in `X-Actor`, `body` as JSON; the status, the JSON
/// answer and the `Cedard-Store-Revision` header.
async fn call(
    client: &reqwest::Client,
    bin: &Binary,
    method: Method,
    path: &str,
    actor: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, Option<u64>) {
    let answer = Api::at(client, &bin.url(""))
        .call(method, path, actor, body)
        .await;
    (answer.status, answer.body, answer.store_revision)
}

async fn sign_up(client: &reqwest::Client, bin: &Binary, id: &str) {
    let (status, body, _) = call(
        client,
        bin,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"id": id, "email": format!("{id}@example.com")})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// `owner`'s team account, created through `bin`.
async fn team(client: &reqwest::Client, bin: &Binary, owner: &str) {
    sign_up(client, bin, owner).await;
    let path = format!("/v1/accounts/{owner}/convert");
    let (status, body, _) = call(
        client,
        bin,
        Method::POST,
        &path,
        Some(owner),
        Some(json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn invite(client: &reqwest::Client, bin: &Binary, account: &str, role: &str) -> String {
    let path = format!("/v1/accounts/{account}/invites");
    let (status, body, _) = call(
        client,
        bin,
        Method::POST,
        &path,
        Some(account),
        Some(json!({"role": role})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

async fn accept(
    client: &reqwest::Client,
    bin: &Binary,
    user: &str,
    token: &str,
) -> (u16, Value, Option<u64>) {
    call(
        client,
        bin,
        Method::POST,
        "/v1/invites/accept",
        Some(user),
        Some(json!({"token": token})),
    )
    .await
}

/// May `user` start a pod of `account`? `consistency` as the caller asks.
async fn may_start(
    client: &reqwest::Client,
    bin: &Binary,
    user: &str,
    account: &str,
    consistency: Option<Value>,
) -> (u16, Value) {
    let mut body = json!({
        "principal": {"type": "User", "id": user},
        "action": {"type": "Action", "id": "startPod"},
        "resource": {"type": "Pod", "id": "p1"},
        "entities": [{"uid": {"type": "Pod", "id": "p1"},
                      "attrs": {"account": {"type": "Account", "id": account}}, "parents": []}],
    });
    if let Some(c) = consistency {
        body["consistency"] = c;
    }
    let (status, body, _) = call(
        client,
        bin,
        Method::POST,
        "/v1/is_authorized",
        None,
        Some(body),
    )
    .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_then_check_with_its_revision_is_never_stale_on_another_replica() {
    let Some(pg) =
        Cluster::start("write_then_check_with_its_revision_is_never_stale_on_another_replica")
    else {
        return;
    };
    let (a, b) = (replica(&pg).await, replica(&pg).await);
    let client = reqwest::Client::new();
    // The seed's flow through A: sign-up, convert, invite with a role, accept.
    team(&client, &a, "olga").await;
    sign_up(&client, &a, "dana").await;
    let token = invite(&client, &a, "olga", "dev").await;
    let (status, body, revision) = accept(&client, &a, "dana", &token).await;
    assert_eq!(status, 200, "{body}");
    let revision = revision.expect("a write answers its store revision");
    assert_eq!(body["store_revision"], revision, "{body}");
    // Seen through B.
    let (status, members, _) = call(
        &client,
        &b,
        Method::GET,
        "/v1/accounts/olga/members",
        Some("olga"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{members}");
    assert!(members.to_string().contains("\"dana\""), "{members}");
    let (status, answer) = may_start(
        &client,
        &b,
        "dana",
        "olga",
        Some(json!({"at_least": revision})),
    )
    .await;
    assert_eq!(
        (status, answer["decision"].as_str()),
        (200, Some("allow")),
        "{answer}"
    );
    assert!(
        answer["store_revision"].as_u64() >= Some(revision),
        "{answer}"
    );

    // A role change on A, then a check on B with the revision it returned:
    // exactly right every time. B's memo is warm from the previous round,
    // so a stale answer would show.
    for round in 0..200 {
        let role = if round % 2 == 0 { "basic" } else { "dev" };
        let (status, body, revision) = call(
            &client,
            &a,
            Method::PUT,
            "/v1/accounts/olga/members/dana",
            Some("olga"),
            Some(json!({"role": role})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let revision = revision.expect("revision header");
        let (status, answer) = may_start(
            &client,
            &b,
            "dana",
            "olga",
            Some(json!({"at_least": revision})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let want = if role == "dev" { "allow" } else { "deny" };
        assert_eq!(answer["decision"], want, "round {round}: {answer}");
    }

    // Without a revision, B catches up by itself (notification or poll).
    let (status, _, _) = call(
        &client,
        &a,
        Method::PUT,
        "/v1/accounts/olga/members/dana",
        Some("olga"),
        Some(json!({"role": "dev"})),
    )
    .await;
    assert_eq!(status, 200);
    wait_until(DEADLINE, || async {
        may_start(&client, &b, "dana", "olga", None).await.1["decision"] == "allow"
    })
    .await;

    // A revision the store never committed is the caller's error.
    let (status, answer) = may_start(
        &client,
        &b,
        "dana",
        "olga",
        Some(json!({"at_least": 1_000_000})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("consistency.at_least"),
        "{answer}"
    );
    // `full` reads the store.
    let (status, answer) = may_start(&client, &b, "dana", "olga", Some(json!("full"))).await;
    assert_eq!(
        (status, answer["decision"].as_str()),
        (200, Some("allow")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_accepts_and_demotions_across_replicas_keep_the_rules() {
    let Some(pg) =
        Cluster::start("concurrent_accepts_and_demotions_across_replicas_keep_the_rules")
    else {
        return;
    };
    let replicas = [replica(&pg).await, replica(&pg).await, replica(&pg).await];
    let client = reqwest::Client::new();
    team(&client, &replicas[0], "olga").await;
    let token = invite(&client, &replicas[0], "olga", "dev").await;
    for i in 0..50 {
        sign_up(&client, &replicas[i % 3], &format!("u{i}")).await;
    }
    // 50 accepts of one invite, spread over the three replicas, at once.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        let url = replicas[i % 3].url("/v1/invites/accept");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("x-actor", format!("u{i}"))
                .header("content-type", "application/json")
                .body(json!({"token": token}).to_string())
                .send()
                .await
                .expect("accept")
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 410).count(),
        49,
        "{statuses:?}"
    );
    let (_, members, _) = call(
        &client,
        &replicas[1],
        Method::GET,
        "/v1/accounts/olga/members",
        Some("olga"),
        None,
    )
    .await;
    assert_eq!(members.as_array().map(Vec::len), Some(2), "{members}");

    // Two admins demoting each other on two replicas at once: the last
    // admin always survives.
    let admin = invite(&client, &replicas[0], "olga", "admin").await;
    sign_up(&client, &replicas[0], "ann").await;
    assert_eq!(accept(&client, &replicas[1], "ann", &admin).await.0, 200);
    for round in 0..10 {
        let demote = |bin: &Binary, actor: &'static str, target: &'static str| {
            let client = client.clone();
            let url = bin.url(&format!("/v1/accounts/olga/members/{target}"));
            async move {
                client
                    .put(url)
                    .header("x-actor", actor)
                    .header("content-type", "application/json")
                    .body(json!({"role": "dev"}).to_string())
                    .send()
                    .await
                    .expect("demote")
                    .status()
                    .as_u16()
            }
        };
        let (x, y) = tokio::join!(
            demote(&replicas[0], "ann", "olga"),
            demote(&replicas[2], "olga", "ann")
        );
        let (_, members, _) = call(
            &client,
            &replicas[1],
            Method::GET,
            "/v1/accounts/olga/members",
            Some("ann"),
            None,
        )
        .await;
        let admins: Vec<&Value> = members
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["role"] == "admin")
            .collect();
        assert_eq!(admins.len(), 1, "round {round}: {x} {y} {members}");
        assert_eq!(
            [x, y].iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {x} {y}"
        );
        // Make both admins again for the next round.
        let survivor = admins[0]["user"].as_str().expect("user").to_owned();
        let other = if survivor == "olga" { "ann" } else { "olga" };
        let (status, body, _) = call(
            &client,
            &replicas[round % 3],
            Method::PUT,
            &format!("/v1/accounts/olga/members/{other}"),
            Some(&survivor),
            Some(json!({"role": "admin"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_write_loses_no_acknowledged_write() {
    let Some(pg) = Cluster::start("a_replica_killed_mid_write_loses_no_acknowledged_write") else {
        return;
    };
    let (a, b) = (replica(&pg).await, replica(&pg).await);
    let client = reqwest::Client::new();
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let url = a.url("/v1/users");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(json!({"id": id, "email": format!("{id}@example.com")}).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        acknowledged.lock().expect("lock").push(id)
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until(DEADLINE, || async {
        acknowledged.lock().expect("lock").len() >= 40
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(a.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    for w in writers {
        let _ = w.await;
    }
    let ids = acknowledged.lock().expect("lock").clone();
    assert!(ids.len() >= 40);
    for id in &ids {
        let (status, body, _) = call(
            &client,
            &b,
            Method::GET,
            &format!("/v1/users/{id}"),
            Some(id),
            None,
        )
        .await;
        assert_eq!(status, 200, "acknowledged {id} is missing: {body}");
    }
    eprintln!(
        "{} acknowledged writes, all present after SIGKILL",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_a_503_never_an_allow_and_the_replica_recovers() {
    let Some(pg) =
        Cluster::start("a_database_outage_is_a_503_never_an_allow_and_the_replica_recovers")
    else {
        return;
    };
    let a = replica(&pg).await;
    let client = reqwest::Client::new();
    team(&client, &a, "olga").await;
    for user in ["dana", "erin"] {
        sign_up(&client, &a, user).await;
        let token = invite(&client, &a, "olga", "dev").await;
        assert_eq!(accept(&client, &a, user, &token).await.0, 200);
    }
    assert_eq!(
        may_start(&client, &a, "dana", "olga", None).await.1["decision"],
        "allow"
    );

    pg.stop_server();
    // Facts cedard must read (erin was never decided on, so nothing of her
    // is remembered), a fully consistent read, a write: 503s, never allow.
    let (status, answer) = may_start(&client, &a, "erin", "olga", None).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
    let (status, answer) = may_start(&client, &a, "dana", "olga", Some(json!("full"))).await;
    assert_eq!(status, 503, "{answer}");
    let (status, _, _) = call(
        &client,
        &a,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"id": "zed", "email": "z@example.com"})),
    )
    .await;
    assert_eq!(status, 503);
    let ready = client.get(a.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let ready: Value = ready.json().await.expect("json");
    assert!(ready["reason"].is_string(), "{ready}");

    pg.start_server();
    wait_until(DEADLINE, || async {
        client
            .get(a.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    let (status, answer) = may_start(&client, &a, "erin", "olga", Some(json!("full"))).await;
    assert_eq!(
        (status, answer["decision"].as_str()),
        (200, Some("allow")),
        "{answer}"
    );
}

#[test]
fn store_copy_moves_a_redb_directory_of_ten_thousand_users() {
    let Some(pg) = Cluster::start("store_copy_moves_a_redb_directory_of_ten_thousand_users") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("big.redb");
    {
        let store = cedard::store::Store::open(&file).expect("open");
        store
            .write(|w| {
                for i in 0..10_000 {
                    let user = cedard::store::User {
                        id: format!("u{i:05}"),
                        email: format!("u{i}@example.com"),
                        email_verified: i % 2 == 0,
                        name: None,
                        created_at: 1,
                    };
                    w.sign_up(&user, "admin")?;
                }
                w.convert("u00000", "Acme")?;
                for i in 1..100 {
                    w.add_member("u00000", &format!("u{i:05}"), "dev", 2)?;
                }
                Ok(())
            })
            .expect("populate");
    }
    let copy = |to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cedard"))
            .args(["store", "copy", "--from"])
            .arg(&file)
            .args(["--to", to])
            .output()
            .expect("run cedard store copy")
    };
    let out = copy(&pg.url());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied 10000 users, 10000 accounts, 10099 memberships, 0 invites, 0 keys"),
        "{stdout}"
    );
    // A second copy into the same database is refused: it is not empty.
    let again = copy(&pg.url());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds cedard data"));
    // What was copied is what the source holds.
    let store = cedard::store::Store::connect(&pg.url(), &Default::default()).expect("connect");
    let view = store.read().expect("read");
    assert_eq!(
        view.roles_of("u00042").expect("roles"),
        vec![
            ("u00000".into(), "dev".into()),
            ("u00042".into(), "admin".into())
        ]
    );
    assert_eq!(
        view.user("u00042").expect("user").map(|u| u.email_verified),
        Some(true)
    );
}
