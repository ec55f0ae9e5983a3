//! Replicas on a real PostgreSQL when the database misbehaves, as an
//! operator would meet it: a replica cut off from the database (a TCP proxy
//! the test freezes) stops answering from memory once its staleness bound
//! has passed, for decisions and for keys alike; writes stuck behind
//! another session's lock are refused within their time and never commit
//! later; after every connection is killed, writes go on and the other
//! replica catches up at once.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::pg::Cluster;
use super::proxy::Proxy;
use super::support::{repo_root, spawn_binary, wait_until, Answer, Api, Binary};

const DEADLINE: Duration = Duration::from_secs(20);

/// The staleness bound the replicas run with (the default).
const BOUND: Duration = Duration::from_millis(1000);

async fn replica(url: &str, extra: &[&str]) -> (Binary, Api) {
    let mut args = vec!["--store", url, "--store-poll-ms", "100"];
    args.extend_from_slice(extra);
    let bin = spawn_binary(&repo_root(), &args).await;
    let api = Api::new(bin.addr);
    (bin, api)
}

/// A key with every scope, created on a daemon that has none yet (loopback
/// callers are served then); the secret.
async fn first_key(api: &Api) -> String {
    let made = api
        .call(
            Method::POST,
            "/v1/keys",
            None,
            Some(json!({"name": "ops", "scopes": ["decide", "manage", "admin"]})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    made.body["secret"].as_str().expect("secret").to_owned()
}

async fn sign_up(api: &Api, id: &str) -> Answer {
    api.call(
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"id": id, "email": format!("{id}@example.com")})),
    )
    .await
}

/// `owner`'s team, and `member` in it with `role`, all through `api`.
async fn team_with(api: &Api, owner: &str, member: &str, role: &str) {
    for id in [owner, member] {
        let a = sign_up(api, id).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = api
        .call(
            Method::POST,
            &format!("/v1/accounts/{owner}/convert"),
            Some(owner),
            Some(json!({"name": "Acme"})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api
        .call(
            Method::POST,
            &format!("/v1/accounts/{owner}/invites"),
            Some(owner),
            Some(json!({"role": role})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let token = a.body["token"].as_str().expect("token").to_owned();
    let a = api
        .call(
            Method::POST,
            "/v1/invites/accept",
            Some(member),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// May `user` start a pod of `account`?
async fn may_start(api: &Api, user: &str, account: &str) -> Answer {
    api.call(
        Method::POST,
        "/v1/is_authorized",
        None,
        Some(json!({
            "principal": {"type": "User", "id": user},
            "action": {"type": "Action", "id": "startPod"},
            "resource": {"type": "Pod", "id": "p1"},
            "entities": [{"uid": {"type": "Pod", "id": "p1"},
                          "attrs": {"account": {"type": "Account", "id": account}},
                          "parents": [{"type": "Account", "id": account}]}],
        })),
    )
    .await
}

/// A plain connection of the test's own to the database, for what an
/// operator's session does (locks, `pg_terminate_backend`).
fn session(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_its_database_refuses_after_the_staleness_bound() {
    let Some(pg) =
        Cluster::start("a_replica_cut_off_from_its_database_refuses_after_the_staleness_bound")
    else {
        return;
    };
    let proxy = Proxy::start(pg.port()).await;
    let (_a, a) = replica(&pg.url(), &[]).await;
    let (_b, b) = replica(&pg.url_on(proxy.port), &["--request-timeout-ms", "3000"]).await;
    let secret = first_key(&a).await;
    let (a, b) = (a.with_key(&secret), b.with_key(&secret));
    let doomed = a
        .call(
            Method::POST,
            "/v1/keys",
            None,
            Some(json!({"name": "doomed", "scopes": ["decide"]})),
        )
        .await;
    assert_eq!(doomed.status, 201, "{}", doomed.body);
    let doomed_id = doomed.body["id"].as_str().expect("id").to_owned();
    let doomed = b.with_key(doomed.body["secret"].as_str().expect("secret"));
    team_with(&a, "olga", "bob", "dev").await;
    // B knows bob is a dev (and remembers his entity), and the doomed key.
    wait_until(DEADLINE, || async {
        may_start(&b, "bob", "olga").await.body["decision"] == "allow"
    })
    .await;
    wait_until(DEADLINE, || async {
        may_start(&doomed, "bob", "olga").await.status == 200
    })
    .await;

    proxy.cut();
    let cut = Instant::now();
    // Through A: bob leaves the team, the doomed key is revoked.
    let removed = a
        .call(
            Method::DELETE,
            "/v1/accounts/olga/members/bob",
            Some("olga"),
            None,
        )
        .await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    let revoked = a
        .call(Method::DELETE, &format!("/v1/keys/{doomed_id}"), None, None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);

    // B may answer from what it knows for at most the bound: its last
    // confirmation came before the cut, so a request sent after cut + bound
    // is refused (503 `store_unavailable`), never an allow, never the key.
    // Requests are judged by when they were sent, so a slow answer on a
    // loaded machine cannot make a legitimate early allow look late.
    let mut refused_after = None;
    while cut.elapsed() < BOUND * 3 {
        let sent = cut.elapsed();
        let answer = may_start(&b, "bob", "olga").await;
        let key = may_start(&doomed, "bob", "olga").await;
        if sent > BOUND + Duration::from_millis(50) {
            assert_eq!(
                answer.status, 503,
                "sent {sent:?} after the cut: {}",
                answer.body
            );
            assert_eq!(
                answer.body["error"]["code"], "store_unavailable",
                "{}",
                answer.body
            );
            assert_eq!(key.status, 503, "the revoked key on B: {}", key.body);
            assert_eq!(
                key.body["error"]["code"], "store_unavailable",
                "{}",
                key.body
            );
        }
        if answer.status == 503 && refused_after.is_none() {
            refused_after = Some(sent);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused_after = refused_after.expect("B refused");
    eprintln!("the cut-off replica refused a request sent {refused_after:?} after the cut (bound {BOUND:?})");
    let ready = b.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);

    // Healed: B answers on the current facts.
    proxy.heal();
    wait_until(DEADLINE, || async {
        may_start(&b, "bob", "olga").await.status == 200
    })
    .await;
    let answer = may_start(&b, "bob", "olga").await;
    assert_eq!(answer.body["decision"], "deny", "{}", answer.body);
    wait_until(DEADLINE, || async {
        may_start(&doomed, "bob", "olga").await.status == 401
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_up_by_a_lock_is_refused_in_time_and_never_commits() {
    let Some(pg) = Cluster::start("a_write_held_up_by_a_lock_is_refused_in_time_and_never_commits")
    else {
        return;
    };
    let url = pg.url();
    let (_a, a) = replica(&url, &["--request-timeout-ms", "4000"]).await;
    assert_eq!(sign_up(&a, "first").await.status, 201);

    // Another session takes cedard's write lock (the revision row) and
    // holds it.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let holder = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut client = session(&url);
            let mut tx = client.transaction().expect("begin");
            tx.query_one(
                "SELECT value FROM cedard_meta WHERE key = 'revision' FOR UPDATE",
                &[],
            )
            .expect("lock");
            locked.send(()).expect("signal");
            let _ = held.recv();
            tx.rollback().expect("rollback");
        })
    };
    is_locked.recv().expect("locked");

    let ids: Vec<String> = (0..8).map(|i| format!("held{i}")).collect();
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (a, id) = (a.clone(), id.clone());
            tokio::spawn(async move { sign_up(&a, &id).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("sign-up task"));
    }
    let took = started.elapsed();
    for (id, answer) in ids.iter().zip(&answers) {
        assert_eq!(answer.status, 503, "{id}: {}", answer.body);
        assert_eq!(
            answer.body["error"]["code"], "store_unavailable",
            "{id}: the store's own refusal, before the request's time limit: {}",
            answer.body
        );
    }
    eprintln!(
        "{} writes behind a held lock refused in {took:?}",
        ids.len()
    );

    release.send(()).expect("release");
    holder.join().expect("holder");
    // Once the lock is gone, none of the refused writes appears, and a new
    // write goes through.
    assert_eq!(sign_up(&a, "after").await.status, 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count: i64 = tokio::task::spawn_blocking(move || {
        session(&url)
            .query_one(
                "SELECT count(*) FROM cedard_users WHERE id LIKE 'held%'",
                &[],
            )
            .expect("count")
            .get(0)
    })
    .await
    .expect("count task");
    assert_eq!(count, 0, "a write answered 503 committed later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_every_connection_is_killed_writes_go_on_and_replicas_catch_up() {
    let Some(pg) =
        Cluster::start("after_every_connection_is_killed_writes_go_on_and_replicas_catch_up")
    else {
        return;
    };
    let url = pg.url();
    let (_a, a) = replica(&url, &[]).await;
    let (_b, b) = replica(&url, &[]).await;
    team_with(&a, "olga", "bob", "basic").await;
    wait_until(DEADLINE, || async {
        may_start(&b, "bob", "olga").await.body["decision"] == "deny"
    })
    .await;
    // Warm both pools.
    for i in 0..4 {
        assert_eq!(sign_up(&a, &format!("warm{i}")).await.status, 201);
        assert_eq!(may_start(&b, &format!("warm{i}"), "olga").await.status, 200);
    }

    let killer = url.clone();
    let killed: i64 = tokio::task::spawn_blocking(move || {
        session(&killer)
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'cedard'",
                &[],
            )
            .expect("terminate")
            .get(0)
    })
    .await
    .expect("terminate task");
    assert!(killed >= 4, "terminated {killed} connections");

    // The next writes through A all go through: dead pooled connections
    // are found before they fail a request.
    for i in 0..3 {
        let answer = sign_up(&a, &format!("next{i}")).await;
        assert_eq!(
            answer.status, 201,
            "write {i} after the kill: {}",
            answer.body
        );
    }
    // A role change through A reaches B's default answers within the
    // staleness bound, since B's listener reconnects at once.
    let changed = Instant::now();
    let answer = a
        .call(
            Method::PUT,
            "/v1/accounts/olga/members/bob",
            Some("olga"),
            Some(json!({"role": "dev"})),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut seen = None;
    while changed.elapsed() < DEADLINE {
        let sent = changed.elapsed();
        let answer = may_start(&b, "bob", "olga").await;
        assert_ne!(answer.status, 500, "{}", answer.body);
        if answer.body["decision"] == "allow" {
            seen = Some(sent);
            break;
        }
        // Never the old answer once the bound has passed: B knows the
        // write, or refuses.
        if sent > BOUND + Duration::from_millis(50) {
            assert_ne!(
                answer.body["decision"], "deny",
                "B answered from stale facts {sent:?} after the write"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.expect("B saw the change");
    eprintln!("after the kill, B saw A's write in a request sent {seen:?} after it");
}

/// Makes every `COMMIT` of a user whose id starts with `slow` take a
/// second (a deferred trigger runs at commit), so that the test can lose
/// the connection while the commit is in flight.
fn slow_commits(url: &str) {
    session(url)
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON cedard_users
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
               WHEN (NEW.id LIKE 'slow%') EXECUTE FUNCTION slow_commit();",
        )
        .expect("trigger");
}

/// Whether the user `id` is stored, asked of the database directly.
async fn stored(url: &str, id: &str) -> bool {
    let (url, id) = (url.to_owned(), id.to_owned());
    tokio::task::spawn_blocking(move || {
        session(&url)
            .query_opt("SELECT 1 FROM cedard_users WHERE id = $1", &[&id])
            .expect("query")
            .is_some()
    })
    .await
    .expect("query task")
}

/// A write whose connection is lost while its `COMMIT` is in flight gets
/// the answer of what happened: the database is asked (`txid_status`) on a
/// fresh connection. Committed: the write's own success. Aborted (its
/// backend was terminated): a 503, and nothing stored. Not askable (the
/// database cannot be reached): 503 `store_outcome_unknown`, never a
/// success or a plain 503 that could be a lie.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_whose_connection_is_lost_is_answered_with_what_happened() {
    let Some(pg) =
        Cluster::start("a_commit_whose_connection_is_lost_is_answered_with_what_happened")
    else {
        return;
    };
    let proxy = Proxy::start(pg.port()).await;
    let (_a, a) = replica(&pg.url_on(proxy.port), &[]).await;
    assert_eq!(sign_up(&a, "first").await.status, 201);
    let url = pg.url();
    {
        let url = url.clone();
        tokio::task::spawn_blocking(move || slow_commits(&url))
            .await
            .expect("trigger task");
    }
    let in_commit = || async {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            session(&url)
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'cedard' AND wait_event = 'PgSleep'",
                    &[],
                )
                .expect("query")
                .map(|row| row.get::<_, i32>(0))
        })
        .await
        .expect("query task")
    };

    // The connection is lost, the commit completes on the server.
    let write = tokio::spawn({
        let a = a.clone();
        async move { sign_up(&a, "slow1").await }
    });
    wait_until(DEADLINE, || async { in_commit().await.is_some() }).await;
    proxy.sever();
    let answer = write.await.expect("write");
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert!(stored(&url, "slow1").await);

    // The backend is terminated in the commit: aborted.
    let write = tokio::spawn({
        let a = a.clone();
        async move { sign_up(&a, "slow2").await }
    });
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = in_commit().await {
            break Some(pid);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the write never reached its commit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    {
        let (url, pid) = (url.clone(), pid.expect("pid"));
        tokio::task::spawn_blocking(move || {
            session(&url)
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .expect("terminate")
        })
        .await
        .expect("terminate task");
    }
    let answer = write.await.expect("write");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["code"], "store_unavailable",
        "{}",
        answer.body
    );
    assert!(
        !stored(&url, "slow2").await,
        "a write answered 503 is stored"
    );

    // The connection is lost and the database cannot be reached to ask.
    let write = tokio::spawn({
        let a = a.clone();
        async move { sign_up(&a, "slow3").await }
    });
    wait_until(DEADLINE, || async { in_commit().await.is_some() }).await;
    proxy.cut();
    proxy.sever();
    let answer = write.await.expect("write");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["code"], "store_outcome_unknown",
        "{}",
        answer.body
    );
    // It did commit: "unknown" was the truth, not a refusal.
    proxy.heal();
    assert!(stored(&url, "slow3").await);
}
