//! What an operator sees of a running cedard: `/metrics` moving by exactly
//! the requests made (on the real binary, which has its own Prometheus
//! recorder), the decision log (one line per answer under concurrency,
//! matching the HTTP answer; `--decision-log-only deny`;
//! `--decision-log-context`), management writes in the audit log with their
//! actor and outcome, a blocked log sink that drops and counts without
//! holding up a decision, `X-Request-ID` handling, and `/openapi.json`
//! describing every route, checked by making each call for real and
//! validating the answer against the schema the document declares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::support::{self, copy_pack, entity, spawn_app, spawn_binary, wait_until, Binary};

/// How long the decision log may take to show what was answered.
const LOG_WITHIN: Duration = Duration::from_secs(20);

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

fn user(id: &str, role: &str) -> Value {
    entity::user(id, &[("acme", role)])
}

/// README's team account `acme`.
fn acme() -> Value {
    entity::account("acme", "Acme", "team", "olga")
}

fn pod(id: &str) -> Value {
    entity::pod(id, "acme")
}

/// The inline entities of every question here: dana (dev) and erin (basic)
/// of `acme`, and its pod `p1`. None of them is stored.
fn entities() -> Value {
    json!([
        user("dana", "dev"),
        user("erin", "basic"),
        acme(),
        pod("p1")
    ])
}

/// A question on the inline entities; the resource is `p1` for pod actions
/// and `acme` otherwise.
fn question(principal: &str, action: &str) -> Value {
    let resource = if action.ends_with("Pod") && action != "createPod" {
        uid("Pod", "p1")
    } else {
        uid("Account", "acme")
    };
    json!({"principal": uid("User", principal), "action": uid("Action", action),
           "resource": resource, "entities": entities()})
}

/// Questions and the decision the default pack gives them.
const MIXED: [(&str, &str, &str); 4] = [
    ("dana", "startPod", "allow"),
    ("dana", "viewBilling", "deny"),
    ("erin", "connectPod", "allow"),
    ("erin", "startPod", "deny"),
];

/// A small HTTP client for one daemon.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: String) -> Self {
        Self {
            client: reqwest::Client::new(),
            base,
        }
    }

    fn of(bin: &Binary) -> Self {
        Self::new(bin.url(""))
    }

    /// Sends `method path` with a JSON body (if any), `X-Actor` and
    /// `X-Request-ID` (if any); returns the status and the JSON body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        actor: Option<&str>,
        request_id: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = support::Api::at(&self.client, &self.base).request(method, path, actor, body);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .unwrap_or_else(|_| panic!("{path} hung"))
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, actor: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, actor, None, Some(body))
            .await
    }

    async fn decide(&self, request_id: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/is_authorized",
            None,
            request_id,
            Some(body),
        )
        .await
    }

    async fn metrics(&self) -> Metrics {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Metrics::parse(&resp.text().await.expect("metrics text"))
    }

    /// README's flow: alice signs up and makes her account the team "Acme",
    /// bob signs up (his address verified), alice invites him as a dev,
    /// bound to that address, and he accepts.
    async fn alice_team_with_bob(&self) {
        let (s, b) = self
            .post(
                "/v1/users",
                None,
                &json!({"id": "alice", "email": "alice@example.com", "name": "Alice"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = self
            .post(
                "/v1/accounts/alice/convert",
                Some("alice"),
                &json!({"name": "Acme"}),
            )
            .await;
        assert_eq!((s, b["kind"].as_str()), (200, Some("team")), "{b}");
        let (s, b) = self
            .post(
                "/v1/users",
                None,
                &json!({"id": "bob", "email": "bob@example.com", "email_verified": true}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, invite) = self
            .post(
                "/v1/accounts/alice/invites",
                Some("alice"),
                &json!({"role": "dev", "email": "bob@example.com", "expires_in_hours": 48}),
            )
            .await;
        assert_eq!(s, 201, "{invite}");
        let (s, b) = self
            .post(
                "/v1/invites/accept",
                Some("bob"),
                &json!({"token": invite["token"]}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let mut b = b;
        let revision = b.as_object_mut().and_then(|m| m.remove("store_revision"));
        assert!(
            revision.is_some_and(|r| r.is_u64()),
            "a write answers its store revision"
        );
        assert_eq!(b, json!({"account": "alice", "role": "dev"}));
    }
}

/// A `/metrics` page: each series by name and label set (labels sorted, so
/// lookups do not depend on the order they are rendered in).
#[derive(Debug)]
struct Metrics(HashMap<String, f64>);

/// `name{k="v",…}` with the labels sorted.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let sorted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

impl Metrics {
    /// Parses Prometheus' text format: `name{labels} value` lines.
    fn parse(text: &str) -> Self {
        let mut all = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    (name, parse_labels(rest))
                }
                None => (head, Vec::new()),
            };
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            all.insert(series(name, &labels), value);
        }
        Self(all)
    }

    /// The value of a series; one never recorded counts as 0.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&series(name, labels)).copied().unwrap_or(0.0)
    }
}

/// `k="v",k2="v2"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} in {text:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The complete lines of a decision log (a line still being written is
/// left out).
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}

/// Waits until the log holds a line of `kind` with `request_id`.
async fn wait_for_line(path: &Path, kind: &str, request_id: &str) {
    wait_until(LOG_WITHIN, || async {
        log_lines(path)
            .iter()
            .any(|l| l["kind"] == kind && l["request_id"] == request_id)
    })
    .await;
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Policy ids of an HTTP answer's reasons.
fn reason_ids(answer: &Value) -> Vec<Value> {
    answer["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["policy_id"].clone())
        .collect()
}

/// Asserts that a decision-log line says what the HTTP answer said.
fn assert_line_matches(
    line: &Value,
    principal: &str,
    action: &str,
    resource: &str,
    answer: &Value,
) {
    assert_eq!(line["kind"], "decision", "{line}");
    assert_eq!(line["endpoint"], "/v1/is_authorized", "{line}");
    assert_eq!(line["principal"], principal, "{line}");
    assert_eq!(line["action"], action, "{line}");
    assert_eq!(line["resource"], resource, "{line}");
    assert_eq!(line["decision"], answer["decision"], "{line} vs {answer}");
    assert_eq!(
        line["reasons"].as_array().expect("reasons"),
        &reason_ids(answer),
        "{line} vs {answer}"
    );
    assert_eq!(line["errors"], json!([]), "{line}");
    assert_eq!(
        line["policy_revision"], answer["revision"]["generation"],
        "{line}"
    );
    assert_eq!(
        line["policy_sha256"], answer["revision"]["sha256"],
        "{line}"
    );
    let id = line["id"].as_str().expect("event id");
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
    assert!(
        line["latency_us"].is_u64() && line["time"].is_string(),
        "{line}"
    );
}

/// The Cedar form of a question's principal, action and resource.
fn cedar_names(q: &Value) -> (String, String, String) {
    let name = |v: &Value| {
        format!(
            "{}::\"{}\"",
            v["type"].as_str().expect("type"),
            v["id"].as_str().expect("id")
        )
    };
    (
        name(&q["principal"]),
        name(&q["action"]),
        name(&q["resource"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_the_requests_made() {
    let dir = copy_pack();
    let bin = spawn_binary(dir.path(), &[]).await;
    let api = Api::of(&bin);
    let before = api.metrics().await;

    // 3 allows and 2 denies, one bad question, a batch of one allow and one deny.
    for (principal, action) in [
        ("dana", "startPod"),
        ("dana", "connectPod"),
        ("dana", "useAccount"),
        ("dana", "viewBilling"),
        ("erin", "startPod"),
    ] {
        let (s, b) = api.decide(None, &question(principal, action)).await;
        assert_eq!(s, 200, "{b}");
    }
    let mut bad = question("dana", "startPod");
    bad["action"] = uid("Action", "fly");
    let (s, b) = api.decide(None, &bad).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = api
        .post(
            "/v1/is_authorized/batch",
            None,
            &json!({"requests": [
                        {"principal": uid("User", "dana"), "action": uid("Action", "stopPod"), "resource": uid("Pod", "p1")},
                        {"principal": uid("User", "erin"), "action": uid("Action", "manageBilling"), "resource": uid("Account", "acme")}],
                    "entities": entities()}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"][0]["decision"], "allow", "{b}");
    assert_eq!(b["results"][1]["decision"], "deny", "{b}");

    // Two sign-ups, a conversion, an invite created and accepted.
    api.alice_team_with_bob().await;

    // A policy reload: a comment added to one file, saved atomically.
    let file = dir.path().join("policies/basic.cedar");
    let text = std::fs::read_to_string(&file).expect("read policy") + "\n// touched\n";
    let tmp = dir.path().join("policies/.basic.cedar.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    let polls = AtomicUsize::new(0);
    wait_until(Duration::from_secs(20), || async {
        polls.fetch_add(1, Ordering::Relaxed);
        let (_, b) = api
            .send(reqwest::Method::GET, "/readyz", None, None, None)
            .await;
        b["revision"]["generation"] == 2
    })
    .await;

    // The reload is counted just after the new set starts serving: wait for
    // the count too, taking the last page read as the one to compare.
    let scrapes = AtomicUsize::new(0);
    let last = std::sync::Mutex::new(None);
    let reloads = |m: &Metrics| m.get("cedard_policy_reloads_total", &[("outcome", "ok")]);
    wait_until(Duration::from_secs(20), || async {
        let page = api.metrics().await;
        scrapes.fetch_add(1, Ordering::Relaxed);
        let counted = reloads(&page) > reloads(&before);
        *last.lock().expect("lock") = Some(page);
        counted
    })
    .await;
    let after = last.into_inner().expect("lock").expect("a /metrics page");
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

    let decisions = "cedard_decisions_total";
    let single = "/v1/is_authorized";
    let batch = "/v1/is_authorized/batch";
    assert_eq!(
        delta(decisions, &[("endpoint", single), ("decision", "allow")]),
        3.0
    );
    assert_eq!(
        delta(decisions, &[("endpoint", single), ("decision", "deny")]),
        2.0
    );
    assert_eq!(
        delta(decisions, &[("endpoint", batch), ("decision", "allow")]),
        1.0
    );
    assert_eq!(
        delta(decisions, &[("endpoint", batch), ("decision", "deny")]),
        1.0
    );
    // The management API's own checks: convertToTeam, inviteMember, and at
    // accept, whether the invite's creator may still grant its role.
    assert_eq!(
        delta(
            decisions,
            &[("endpoint", "management"), ("decision", "allow")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            decisions,
            &[("endpoint", "management"), ("decision", "deny")]
        ),
        0.0
    );
    assert_eq!(
        delta(
            "cedard_decision_failures_total",
            &[("endpoint", single), ("reason", "invalid_request")]
        ),
        1.0
    );
    // The latency histogram counts calls, not decisions.
    let calls = "cedard_decision_duration_seconds_count";
    assert_eq!(delta(calls, &[("endpoint", single)]), 5.0);
    assert_eq!(delta(calls, &[("endpoint", batch)]), 1.0);
    assert_eq!(delta(calls, &[("endpoint", "management")]), 3.0);

    let http = "cedard_http_requests_total";
    let route = |route: &'static str, method: &'static str, status: &'static str| {
        delta(
            http,
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(route(single, "POST", "200"), 5.0);
    assert_eq!(route(single, "POST", "400"), 1.0);
    assert_eq!(route(batch, "POST", "200"), 1.0);
    assert_eq!(route("/v1/users", "POST", "201"), 2.0);
    assert_eq!(route("/v1/accounts/{id}/convert", "POST", "200"), 1.0);
    assert_eq!(route("/v1/accounts/{id}/invites", "POST", "201"), 1.0);
    assert_eq!(route("/v1/invites/accept", "POST", "200"), 1.0);
    // A GET /metrics is counted once it has been answered: `before`'s and
    // those of the wait, but not the last page's own.
    assert_eq!(
        route("/metrics", "GET", "200"),
        scrapes.load(Ordering::Relaxed) as f64
    );
    assert_eq!(
        route("/readyz", "GET", "200"),
        polls.load(Ordering::Relaxed) as f64
    );

    let writes = "cedard_store_writes_total";
    for (operation, n) in [
        ("signUp", 2.0),
        ("convertToTeam", 1.0),
        ("inviteMember", 1.0),
        ("acceptInvite", 1.0),
    ] {
        assert_eq!(
            delta(writes, &[("operation", operation), ("outcome", "ok")]),
            n,
            "{operation}"
        );
        assert_eq!(
            delta(writes, &[("operation", operation), ("outcome", "refused")]),
            0.0,
            "{operation}"
        );
    }
    assert_eq!(delta("cedard_invites_total", &[("event", "created")]), 1.0);
    assert_eq!(delta("cedard_invites_total", &[("event", "accepted")]), 1.0);
    assert_eq!(delta("cedard_invites_total", &[("event", "refused")]), 0.0);

    assert_eq!(
        delta("cedard_policy_reloads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        delta("cedard_policy_reloads_total", &[("outcome", "refused")]),
        0.0
    );
    assert_eq!(before.get("cedard_policy_generation", &[]), 1.0);
    assert_eq!(after.get("cedard_policy_generation", &[]), 2.0);
    assert_eq!(after.get("cedard_keys", &[]), 0.0);
    assert_eq!(
        after.get(
            "cedard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_has_one_line_per_answer_from_concurrent_clients() {
    const CLIENTS: usize = 16;
    const EACH: usize = 25;
    let dir = copy_pack();
    let log = dir.path().join("decisions.log");
    let bin = spawn_binary(dir.path(), &["--decision-log", path_arg(&log)]).await;
    let api = Api::of(&bin);

    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let api = api.clone();
        clients.spawn(async move {
            let mut answers = Vec::new();
            for n in 0..EACH {
                let (principal, action, expected) = MIXED[(c + n) % MIXED.len()];
                let q = question(principal, action);
                let request_id = format!("c{c}-r{n}");
                let (status, answer) = api.decide(Some(&request_id), &q).await;
                assert_eq!(status, 200, "{answer}");
                assert_eq!(
                    answer["decision"], expected,
                    "{principal} {action}: {answer}"
                );
                answers.push((request_id, q, answer));
            }
            answers
        });
    }
    let mut answers = HashMap::new();
    while let Some(done) = clients.join_next().await {
        for (request_id, q, answer) in done.expect("client") {
            answers.insert(request_id, (q, answer));
        }
    }
    assert_eq!(answers.len(), CLIENTS * EACH);

    wait_until(LOG_WITHIN, || async {
        of_kind(&log_lines(&log), "decision").len() >= answers.len()
    })
    .await;
    // One more answer, sent without an X-Request-ID and waited for by the id
    // cedard made for it: anything logged late would show by now.
    let resp = api
        .client
        .post(format!("{}/v1/is_authorized", api.base))
        .header("content-type", "application/json")
        .body(question("dana", "startPod").to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let marker = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated x-request-id")
        .to_owned();
    wait_for_line(&log, "decision", &marker).await;

    let lines = log_lines(&log);
    let decisions = of_kind(&lines, "decision");
    assert_eq!(decisions.len(), answers.len() + 1, "one line per answer");
    assert!(of_kind(&lines, "write").is_empty());
    let mut seen = BTreeSet::new();
    for line in decisions {
        let request_id = line["request_id"].as_str().expect("request_id");
        assert!(
            seen.insert(request_id.to_owned()),
            "two lines for {request_id}"
        );
        if request_id == marker {
            continue;
        }
        let (q, answer) = answers
            .get(request_id)
            .unwrap_or_else(|| panic!("a line for an unknown request: {line}"));
        let (principal, action, resource) = cedar_names(q);
        assert_line_matches(line, &principal, &action, &resource, answer);
        assert!(
            line.get("context").is_none(),
            "context logged unasked: {line}"
        );
        assert!(line.get("key").is_none(), "{line}");
    }
}

/// The default pack with a context on `startPod` (`{reason?: String}`), so
/// that a logged context can be seen.
fn pack_with_start_context() -> tempfile::TempDir {
    let dir = copy_pack();
    let schema = dir.path().join("schema/teams.cedarschema");
    let text = std::fs::read_to_string(&schema).expect("read schema");
    let old = "action startPod, stopPod in [managePods] appliesTo {\n  principal: User,\n  resource: Pod,\n};";
    assert!(
        text.contains(old),
        "the schema's startPod declaration changed"
    );
    let new = "action startPod, stopPod in [managePods] appliesTo {\n  principal: User,\n  resource: Pod,\n  context: { reason?: String },\n};";
    std::fs::write(&schema, text.replace(old, new)).expect("write schema");
    dir
}

fn start_with_reason(principal: &str) -> Value {
    let mut q = question(principal, "startPod");
    q["context"] = json!({"reason": "deploy"});
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_only_deny_keeps_only_denials_and_every_write() {
    let dir = pack_with_start_context();
    let log = dir.path().join("decisions.log");
    let bin = spawn_binary(
        dir.path(),
        &[
            "--decision-log",
            path_arg(&log),
            "--decision-log-only",
            "deny",
        ],
    )
    .await;
    let api = Api::of(&bin);

    let mut denied = HashMap::new();
    for n in 0..8 {
        let (principal, action, expected) = MIXED[n % MIXED.len()];
        let q = if action == "startPod" {
            start_with_reason(principal)
        } else {
            question(principal, action)
        };
        let request_id = format!("q{n}");
        let (status, answer) = api.decide(Some(&request_id), &q).await;
        assert_eq!(
            (status, answer["decision"].as_str()),
            (200, Some(expected)),
            "{answer}"
        );
        if expected == "deny" {
            denied.insert(request_id, (q, answer));
        }
    }
    // A management write is kept whatever the filter says.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/users",
            None,
            Some("signup"),
            Some(&json!({"id": "zoe", "email": "zoe@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for_line(&log, "write", "signup").await;

    let lines = log_lines(&log);
    let decisions = of_kind(&lines, "decision");
    let ids: BTreeSet<&str> = decisions
        .iter()
        .map(|l| l["request_id"].as_str().expect("request_id"))
        .collect();
    assert_eq!(
        ids,
        denied.keys().map(String::as_str).collect(),
        "only the denials"
    );
    assert_eq!(decisions.len(), denied.len());
    for line in decisions {
        let (q, answer) = &denied[line["request_id"].as_str().expect("request_id")];
        let (principal, action, resource) = cedar_names(q);
        assert_line_matches(line, &principal, &action, &resource, answer);
        assert!(
            line.get("context").is_none(),
            "context logged unasked: {line}"
        );
    }
    let writes = of_kind(&lines, "write");
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0]["operation"], "signUp");
    assert_eq!(writes[0]["outcome"], "ok");
    assert_eq!(writes[0]["target"], "zoe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_context_adds_each_request_context() {
    let dir = pack_with_start_context();
    let log = dir.path().join("decisions.log");
    let bin = spawn_binary(
        dir.path(),
        &["--decision-log", path_arg(&log), "--decision-log-context"],
    )
    .await;
    let api = Api::of(&bin);

    let with = start_with_reason("dana");
    let (status, with_answer) = api.decide(Some("with"), &with).await;
    assert_eq!(
        (status, with_answer["decision"].as_str()),
        (200, Some("allow"))
    );
    let without = question("erin", "connectPod");
    let (status, without_answer) = api.decide(Some("without"), &without).await;
    assert_eq!(status, 200, "{without_answer}");
    wait_for_line(&log, "decision", "without").await;

    let lines = log_lines(&log);
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"))
            .clone()
    };
    let logged = line("with");
    let (principal, action, resource) = cedar_names(&with);
    assert_line_matches(&logged, &principal, &action, &resource, &with_answer);
    assert_eq!(logged["context"], json!({"reason": "deploy"}), "{logged}");
    // A question sent without a context has none to log.
    let logged = line("without");
    let (principal, action, resource) = cedar_names(&without);
    assert_line_matches(&logged, &principal, &action, &resource, &without_answer);
    assert!(
        logged.get("context").is_none_or(|c| c == &json!({})),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_writes_are_audited_with_their_actor_and_outcome() {
    let dir = copy_pack();
    let log = dir.path().join("decisions.log");
    let bin = spawn_binary(dir.path(), &["--decision-log", path_arg(&log)]).await;
    let api = Api::of(&bin);
    api.alice_team_with_bob().await;

    // Refused by the policies: bob (a dev) may not change roles.
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/accounts/alice/members/alice",
            Some("bob"),
            Some("bob-tries"),
            Some(&json!({"role": "basic"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Refused by the store: alice is the last admin.
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/accounts/alice/members/alice",
            Some("alice"),
            Some("alice-steps-down"),
            Some(&json!({"role": "basic"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Done: alice makes bob an admin.
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/accounts/alice/members/bob",
            Some("alice"),
            Some("promote-bob"),
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");
    wait_for_line(&log, "write", "promote-bob").await;

    let lines = log_lines(&log);
    let write = |request_id: &str| {
        let found: Vec<&Value> = of_kind(&lines, "write")
            .into_iter()
            .filter(|l| l["request_id"] == request_id)
            .collect();
        assert_eq!(found.len(), 1, "{request_id}: {found:?}");
        found[0].clone()
    };
    let promote = write("promote-bob");
    assert_eq!(promote["actor"], "alice", "{promote}");
    assert_eq!(promote["operation"], "changeMemberRole", "{promote}");
    assert_eq!(promote["account"], "alice", "{promote}");
    assert_eq!(promote["target"], "bob", "{promote}");
    assert_eq!(promote["detail"], json!({"role": "admin"}), "{promote}");
    assert_eq!(promote["outcome"], "ok", "{promote}");
    assert!(
        promote["time"].is_string() && promote["id"].is_string(),
        "{promote}"
    );

    let refused = write("bob-tries");
    assert_eq!(refused["actor"], "bob", "{refused}");
    assert_eq!(refused["operation"], "changeMemberRole", "{refused}");
    assert_eq!(refused["target"], "alice", "{refused}");
    assert_eq!(refused["detail"], json!({"role": "basic"}), "{refused}");
    assert_eq!(refused["outcome"], "forbidden", "{refused}");
    // The policy check that refused it is in the log as a decision.
    let check: Vec<&Value> = of_kind(&lines, "decision")
        .into_iter()
        .filter(|l| l["request_id"] == "bob-tries")
        .collect();
    assert_eq!(check.len(), 1, "{check:?}");
    assert_eq!(check[0]["endpoint"], "management");
    assert_eq!(check[0]["principal"], "User::\"bob\"");
    assert_eq!(check[0]["action"], "Action::\"changeMemberRole\"");
    assert_eq!(check[0]["resource"], "Account::\"alice\"");
    assert_eq!(check[0]["decision"], "deny");

    let last_admin = write("alice-steps-down");
    assert_eq!(last_admin["actor"], "alice", "{last_admin}");
    assert_eq!(last_admin["outcome"], "conflict", "{last_admin}");

    // The whole flow, in order, with its actors.
    let flow: Vec<(Value, Value, Value)> = of_kind(&lines, "write")
        .iter()
        .map(|l| {
            (
                l["operation"].clone(),
                l["actor"].clone(),
                l["outcome"].clone(),
            )
        })
        .collect();
    let expected: Vec<(Value, Value, Value)> = [
        ("signUp", Value::Null, "ok"),
        ("convertToTeam", json!("alice"), "ok"),
        ("signUp", Value::Null, "ok"),
        ("inviteMember", json!("alice"), "ok"),
        ("acceptInvite", json!("bob"), "ok"),
        ("changeMemberRole", json!("bob"), "forbidden"),
        ("changeMemberRole", json!("alice"), "conflict"),
        ("changeMemberRole", json!("alice"), "ok"),
    ]
    .into_iter()
    .map(|(op, actor, outcome)| (json!(op), actor, json!(outcome)))
    .collect();
    assert_eq!(flow, expected);
    // No secret is ever written: the invite's token is not in the log.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains("\"token\""), "a token field in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_decision_log_drops_and_counts_but_every_decision_is_answered() {
    const CLIENTS: usize = 3;
    const BATCHES: usize = 3;
    const SINGLES: usize = 100;
    const BATCH: usize = 1000;
    let dir = copy_pack();
    let fifo = dir.path().join("decisions.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    // Nobody ever reads the FIFO.
    let bin = spawn_binary(dir.path(), &["--decision-log", path_arg(&fifo)]).await;
    let api = Api::of(&bin);

    let ask = json!({"principal": uid("User", "dana"), "action": uid("Action", "startPod"),
                     "resource": uid("Pod", "p1")});
    let batch = json!({"requests": vec![ask; BATCH], "entities": entities()});
    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let api = api.clone();
        let batch = batch.clone();
        clients.spawn(async move {
            let mut answered = 0;
            for _ in 0..BATCHES {
                let (status, body) = api.post("/v1/is_authorized/batch", None, &batch).await;
                assert_eq!(status, 200, "{body}");
                let results = body["results"].as_array().expect("results");
                assert!(results.iter().all(|r| r["decision"] == "allow"));
                answered += results.len();
            }
            for n in 0..SINGLES {
                let (principal, action, expected) = MIXED[(c + n) % MIXED.len()];
                let (status, body) = api.decide(None, &question(principal, action)).await;
                assert_eq!(
                    (status, body["decision"].as_str()),
                    (200, Some(expected)),
                    "{body}"
                );
                answered += 1;
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(n) = clients.join_next().await {
        answered += n.expect("client");
    }
    let total = CLIENTS * (BATCHES * BATCH + SINGLES);
    assert_eq!(answered, total);

    let metrics = api.metrics().await;
    let dropped = metrics.get("cedard_decision_log_dropped_total", &[]);
    eprintln!("{total} decisions answered, {dropped} log entries dropped");
    assert!(dropped > 0.0, "nothing dropped for a sink nobody reads");
    // The writer is stuck opening the FIFO: what the queue cannot hold is
    // dropped, every entry queued or counted.
    assert_eq!(dropped, (total - cedard::audit::DEFAULT_QUEUE) as f64);
    assert_eq!(
        metrics.get(
            "cedard_decisions_total",
            &[
                ("endpoint", "/v1/is_authorized/batch"),
                ("decision", "allow")
            ]
        ),
        (CLIENTS * BATCHES * BATCH) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_generated_or_replaced() {
    let app = spawn_app().await;
    let get = |id: Option<reqwest::header::HeaderValue>, path: &'static str| {
        let mut req = app.client.get(app.url(path));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let id = resp
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().expect("visible ASCII").to_owned());
            (
                status,
                id.unwrap_or_else(|| panic!("{path}: no x-request-id")),
            )
        }
    };
    let generated = |id: &str| id.len() == 22 && id.chars().all(|c| c.is_ascii_hexdigit());
    let value = |s: &[u8]| Some(reqwest::header::HeaderValue::from_bytes(s).expect("header value"));

    // None sent: one is made, a different one per request.
    let (status, first) = get(None, "/healthz").await;
    assert_eq!(status, 200);
    let (_, second) = get(None, "/healthz").await;
    assert!(generated(&first) && generated(&second), "{first} {second}");
    assert_ne!(first, second);
    // On an error answer too.
    let (status, id) = get(None, "/no/such/route").await;
    assert_eq!(status, 404);
    assert!(generated(&id), "{id}");

    // A sane one is echoed, up to 128 characters.
    let (_, id) = get(value(b"abc-123"), "/healthz").await;
    assert_eq!(id, "abc-123");
    let longest = "a".repeat(128);
    let (_, id) = get(value(longest.as_bytes()), "/healthz").await;
    assert_eq!(id, longest);
    let (status, id) = get(value(b"abc-123"), "/no/such/route").await;
    assert_eq!((status, id.as_str()), (404, "abc-123"));

    // Too long, or not printable: replaced by a made one.
    let too_long = "a".repeat(129);
    for bad in [too_long.as_bytes(), b"abc def", b"abc\tdef", b"caf\xc3\xa9"] {
        let (status, id) = get(value(bad), "/healthz").await;
        assert_eq!(status, 200);
        assert!(
            generated(&id),
            "{:?} became {id}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// Every (method, path) cedard serves.
const ROUTES: [(&str, &str); 31] = [
    ("GET", "/healthz"),
    ("GET", "/.well-known/authzen-configuration"),
    ("POST", "/access/v1/evaluation"),
    ("POST", "/access/v1/evaluations"),
    ("POST", "/access/v1/search/subject"),
    ("POST", "/access/v1/search/resource"),
    ("POST", "/access/v1/search/action"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("POST", "/v1/is_authorized"),
    ("POST", "/v1/is_authorized/batch"),
    ("POST", "/v1/users"),
    ("GET", "/v1/users/{id}"),
    ("GET", "/v1/accounts/{id}"),
    ("POST", "/v1/accounts/{id}/convert"),
    ("GET", "/v1/accounts/{id}/members"),
    ("PUT", "/v1/accounts/{id}/members/{user}"),
    ("DELETE", "/v1/accounts/{id}/members/{user}"),
    ("POST", "/v1/accounts/{id}/invites"),
    ("GET", "/v1/accounts/{id}/invites"),
    ("POST", "/v1/accounts/{id}/invites/{invite}/link"),
    ("DELETE", "/v1/accounts/{id}/invites/{invite}"),
    ("POST", "/v1/invites/accept"),
    ("GET", "/invites/{token}"),
    ("PUT", "/v1/users/{id}/email_verified"),
    ("GET", "/v1/policies"),
    ("GET", "/v1/matrix"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("DELETE", "/v1/keys/{id}"),
];

/// Makes real calls and checks each answer against `/openapi.json`.
struct Walker {
    api: Api,
    doc: Value,
    bearer: Option<String>,
    /// Operations answered with their success status.
    covered: BTreeSet<(String, String)>,
    /// Every (operation, status) checked against a declared schema.
    checked: Vec<String>,
}

impl Walker {
    /// Calls `method path` (an instance of `template`), expects `status`,
    /// validates the answer against the document, and returns its body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        actor: Option<&str>,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .api
            .client
            .request(m, format!("{}{path}", self.api.base));
        if let Some(actor) = actor {
            req = req.header("x-actor", actor);
        }
        if let Some(key) = &self.bearer {
            req = req.bearer_auth(key);
        }
        if let Some(body) = &body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("request");
        let got = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let bytes = resp.bytes().await.expect("body");
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(got, status, "{method} {path}: {json}");
        assert!(
            !(got == 404 && json["error"]["message"] == "no such endpoint"),
            "{method} {path} fell through to the router's fallback"
        );
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        // A body the daemon accepted is one the document allows: a client
        // generated from it can send what cedard answers.
        if let (Some(sent), true) = (&body, (200..300).contains(&got)) {
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{method} {template} takes a body the document does not declare"
            );
            let errors = validate(&self.doc, schema, sent);
            assert!(
                errors.is_empty(),
                "{method} {path}: the accepted body does not match its declared schema:\n{}\n{sent}",
                errors.join("\n")
            );
        }
        let declared = &operation["responses"][got.to_string()];
        assert!(
            declared.is_object(),
            "{method} {template} answered {got}, which the document does not declare"
        );
        match declared.get("content").and_then(Value::as_object) {
            None => {
                if got == 204 {
                    assert!(bytes.is_empty(), "{method} {path}: 204 with a body");
                }
            }
            Some(content) => {
                let media =
                    content_type.unwrap_or_else(|| panic!("{method} {path}: no content-type"));
                let schema = &content.get(&media).unwrap_or_else(|| {
                    panic!("{method} {template} {got}: {media} not declared in {content:?}")
                })["schema"];
                let instance = if media == "application/json" {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e})"))
                } else {
                    Value::String(String::from_utf8(bytes.to_vec()).expect("UTF-8 text"))
                };
                let errors = validate(&self.doc, schema, &instance);
                assert!(
                    errors.is_empty(),
                    "{method} {path} ({got}) does not match its declared schema:\n{}\n{instance}",
                    errors.join("\n")
                );
                self.checked.push(format!("{method} {template} {got}"));
            }
        }
        if (200..300).contains(&got) {
            self.covered
                .insert((method.to_owned(), template.to_owned()));
        }
        json
    }
}

/// Validates `instance` against `schema`, resolving `$ref`s into the
/// document's `components`; returns the errors.
fn validate(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let wrapper = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&wrapper)
        .unwrap_or_else(|e| panic!("unusable schema {schema}: {e}"));
    validator
        .iter_errors(instance)
        .map(|e| format!("  {} at {}", e, e.instance_path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_the_real_answers() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.expect("JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The validator resolves `$ref`s into the document and does reject.
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert!(validate(
        &doc,
        &error_body,
        &json!({"error": {"code": "x", "message": "y"}})
    )
    .is_empty());
    assert!(!validate(&doc, &error_body, &json!({"error": {"code": "x"}})).is_empty());
    assert!(!validate(
        &doc,
        &error_body,
        &json!({"error": {"code": 1, "message": "y"}})
    )
    .is_empty());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|m| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&m.as_str())
                })
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    let mut w = Walker {
        api: Api::new(app.url("")),
        doc,
        bearer: None,
        covered: BTreeSet::new(),
        checked: Vec::new(),
    };
    let (get, post, put, delete) = ("GET", "POST", "PUT", "DELETE");

    w.call(get, "/healthz", "/healthz", None, None, 200).await;
    let ready = w.call(get, "/readyz", "/readyz", None, None, 200).await;
    assert_eq!(ready["status"], "ready");
    w.call(get, "/openapi.json", "/openapi.json", None, None, 200)
        .await;
    w.call(get, "/metrics", "/metrics", None, None, 200).await;

    // Decisions, and their declared error.
    let answer = w
        .call(
            post,
            "/v1/is_authorized",
            "/v1/is_authorized",
            None,
            Some(question("dana", "startPod")),
            200,
        )
        .await;
    assert_eq!(answer["decision"], "allow");
    let mut bad = question("dana", "startPod");
    bad["action"] = uid("Action", "fly");
    w.call(
        post,
        "/v1/is_authorized",
        "/v1/is_authorized",
        None,
        Some(bad),
        400,
    )
    .await;
    let batch = json!({"requests": [
                          {"principal": uid("User", "dana"), "action": uid("Action", "startPod"), "resource": uid("Pod", "p1")},
                          {"principal": uid("User", "erin"), "action": uid("Action", "startPod"), "resource": uid("Pod", "p1")}],
                       "entities": entities()});
    let answer = w
        .call(
            post,
            "/v1/is_authorized/batch",
            "/v1/is_authorized/batch",
            None,
            Some(batch),
            200,
        )
        .await;
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(2));
    w.call(
        post,
        "/v1/is_authorized/batch",
        "/v1/is_authorized/batch",
        None,
        Some(json!({"requests": 1})),
        400,
    )
    .await;

    // Users, a team account, members and invites.
    for (id, email) in [
        ("alice", "alice@example.com"),
        ("bob", "bob@example.com"),
        ("carol", "carol@example.com"),
    ] {
        w.call(
            post,
            "/v1/users",
            "/v1/users",
            None,
            Some(json!({"id": id, "email": email})),
            201,
        )
        .await;
    }
    w.call(
        post,
        "/v1/users",
        "/v1/users",
        None,
        Some(json!({"id": "alice", "email": "a@example.com"})),
        409,
    )
    .await;
    let detail = w
        .call(
            get,
            "/v1/users/{id}",
            "/v1/users/alice",
            Some("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(
        detail["memberships"],
        json!([{"account": "alice", "role": "admin"}])
    );
    w.call(
        get,
        "/v1/users/{id}",
        "/v1/users/alice",
        Some("bob"),
        None,
        403,
    )
    .await;
    let account = w
        .call(
            post,
            "/v1/accounts/{id}/convert",
            "/v1/accounts/alice/convert",
            Some("alice"),
            Some(json!({"name": "Acme"})),
            200,
        )
        .await;
    assert_eq!(account["kind"], "team");
    w.call(
        get,
        "/v1/accounts/{id}",
        "/v1/accounts/alice",
        Some("alice"),
        None,
        200,
    )
    .await;
    w.call(
        get,
        "/v1/accounts/{id}",
        "/v1/accounts/alice",
        Some("carol"),
        None,
        403,
    )
    .await;
    // The AuthZEN routes over the same store: alice administers the team.
    let meta = w
        .call(
            get,
            "/.well-known/authzen-configuration",
            "/.well-known/authzen-configuration",
            None,
            None,
            200,
        )
        .await;
    assert!(
        meta["access_evaluation_endpoint"]
            .as_str()
            .is_some_and(|u| u.ends_with("/access/v1/evaluation")),
        "{meta}"
    );
    let (ev, evs) = ("/access/v1/evaluation", "/access/v1/evaluations");
    let question = json!({"subject": {"type": "User", "id": "alice"},
                          "action": {"name": "viewBilling"},
                          "resource": {"type": "Account", "id": "alice"}});
    let answer = w
        .call(post, ev, ev, None, Some(question.clone()), 200)
        .await;
    assert_eq!(answer, json!({"decision": true}));
    w.call(
        post,
        ev,
        ev,
        None,
        Some(json!({"subject": {"type": "User"}})),
        400,
    )
    .await;
    let answers = w
        .call(
            post,
            evs,
            evs,
            None,
            Some(json!({"subject": {"type": "User", "id": "alice"},
                        "resource": {"type": "Account", "id": "alice"},
                        "evaluations": [{"action": {"name": "useAccount"}},
                                        {"action": {"name": "noSuchAction"}}]})),
            200,
        )
        .await;
    assert_eq!(answers["evaluations"][0], json!({"decision": true}));
    assert_eq!(answers["evaluations"][1]["context"]["error"]["status"], 400);
    w.call(
        post,
        evs,
        evs,
        None,
        Some(json!({"evaluations": "not a list"})),
        400,
    )
    .await;
    for (path, body, found) in [
        (
            "/access/v1/search/subject",
            json!({"subject": {"type": "User"}, "action": {"name": "updateSettings"},
                   "resource": {"type": "Account", "id": "alice"}}),
            json!([{"type": "User", "id": "alice"}]),
        ),
        (
            "/access/v1/search/resource",
            json!({"subject": {"type": "User", "id": "alice"}, "action": {"name": "updateSettings"},
                   "resource": {"type": "Account"}}),
            json!([{"type": "Account", "id": "alice"}]),
        ),
        (
            "/access/v1/search/action",
            json!({"subject": {"type": "User", "id": "bob"},
                   "resource": {"type": "Account", "id": "alice"}}),
            json!([]),
        ),
    ] {
        let page = w
            .call(post, path, path, None, Some(body.clone()), 200)
            .await;
        assert_eq!(page["results"], found, "{path}");
        let mut bad = body;
        bad["page"] = json!({"limit": 0});
        w.call(post, path, path, None, Some(bad), 400).await;
    }

    let invite = w
        .call(
            post,
            "/v1/accounts/{id}/invites",
            "/v1/accounts/alice/invites",
            Some("alice"),
            Some(json!({"role": "dev", "email": "bob@example.com"})),
            201,
        )
        .await;
    let invite_id = invite["id"].as_str().expect("invite id").to_owned();
    let pending = w
        .call(
            get,
            "/v1/accounts/{id}/invites",
            "/v1/accounts/alice/invites",
            Some("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(pending[0]["id"], invite_id.as_str());
    let relinked = w
        .call(
            post,
            "/v1/accounts/{id}/invites/{invite}/link",
            &format!("/v1/accounts/alice/invites/{invite_id}/link"),
            Some("alice"),
            None,
            200,
        )
        .await;
    // The first link no longer works; the fresh one does.
    let old_token = invite["token"].as_str().expect("token");
    w.call(
        post,
        "/v1/invites/accept",
        "/v1/invites/accept",
        Some("bob"),
        Some(json!({"token": old_token})),
        410,
    )
    .await;
    w.call(
        get,
        "/invites/{token}",
        &format!("/invites/{old_token}"),
        None,
        None,
        410,
    )
    .await;
    let token = relinked["token"].as_str().expect("token").to_owned();
    let shown = w
        .call(
            get,
            "/invites/{token}",
            &format!("/invites/{token}"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(shown["account"], "alice", "{shown}");
    assert_eq!(shown["role"], "dev", "{shown}");
    assert_eq!(shown["email_bound"], true, "{shown}");
    // Bound to bob's address: accepted only once it is verified.
    w.call(
        post,
        "/v1/invites/accept",
        "/v1/invites/accept",
        Some("bob"),
        Some(json!({"token": token})),
        403,
    )
    .await;
    let verified = w
        .call(
            put,
            "/v1/users/{id}/email_verified",
            "/v1/users/bob/email_verified",
            None,
            Some(json!({"email_verified": true})),
            200,
        )
        .await;
    assert_eq!(verified["email_verified"], true, "{verified}");
    let accepted = w
        .call(
            post,
            "/v1/invites/accept",
            "/v1/invites/accept",
            Some("bob"),
            Some(json!({"token": relinked["token"]})),
            200,
        )
        .await;
    let mut accepted = accepted;
    let revision = accepted
        .as_object_mut()
        .and_then(|m| m.remove("store_revision"));
    assert!(revision.is_some_and(|r| r.is_u64()), "{accepted}");
    assert_eq!(accepted, json!({"account": "alice", "role": "dev"}));
    let members = w
        .call(
            get,
            "/v1/accounts/{id}/members",
            "/v1/accounts/alice/members",
            Some("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(members.as_array().map(Vec::len), Some(2));
    w.call(
        put,
        "/v1/accounts/{id}/members/{user}",
        "/v1/accounts/alice/members/bob",
        Some("alice"),
        Some(json!({"role": "basic"})),
        200,
    )
    .await;
    w.call(
        put,
        "/v1/accounts/{id}/members/{user}",
        "/v1/accounts/alice/members/alice",
        Some("alice"),
        Some(json!({"role": "basic"})),
        409,
    )
    .await;
    w.call(
        delete,
        "/v1/accounts/{id}/members/{user}",
        "/v1/accounts/alice/members/bob",
        Some("alice"),
        None,
        204,
    )
    .await;
    w.call(
        delete,
        "/v1/accounts/{id}/members/{user}",
        "/v1/accounts/alice/members/bob",
        Some("alice"),
        None,
        404,
    )
    .await;
    let second = w
        .call(
            post,
            "/v1/accounts/{id}/invites",
            "/v1/accounts/alice/invites",
            Some("alice"),
            Some(json!({"role": "billing"})),
            201,
        )
        .await;
    let second_path = format!(
        "/v1/accounts/alice/invites/{}",
        second["id"].as_str().expect("id")
    );
    w.call(
        delete,
        "/v1/accounts/{id}/invites/{invite}",
        &second_path,
        Some("alice"),
        None,
        204,
    )
    .await;
    w.call(
        delete,
        "/v1/accounts/{id}/invites/{invite}",
        &second_path,
        Some("alice"),
        None,
        404,
    )
    .await;

    // Operators' routes.
    let listing = w
        .call(get, "/v1/policies", "/v1/policies", None, None, 200)
        .await;
    assert_eq!(listing["revision"], ready["revision"]);
    w.call(get, "/v1/matrix", "/v1/matrix", None, None, 200)
        .await;

    // Keys last: once one exists, every call needs one.
    let keys = w.call(get, "/v1/keys", "/v1/keys", None, None, 200).await;
    assert_eq!(keys, json!([]));
    let admin = w
        .call(
            post,
            "/v1/keys",
            "/v1/keys",
            None,
            Some(json!({"name": "ops", "scopes": ["admin"]})),
            201,
        )
        .await;
    w.call(get, "/v1/keys", "/v1/keys", None, None, 401).await;
    w.bearer = Some(admin["secret"].as_str().expect("secret").to_owned());
    let decider = w
        .call(
            post,
            "/v1/keys",
            "/v1/keys",
            None,
            Some(json!({"name": "svc", "scopes": ["decide"]})),
            201,
        )
        .await;
    let temporary = w
        .call(
            post,
            "/v1/keys",
            "/v1/keys",
            None,
            Some(json!({"name": "tmp", "scopes": ["manage"]})),
            201,
        )
        .await;
    let keys = w.call(get, "/v1/keys", "/v1/keys", None, None, 200).await;
    assert_eq!(keys.as_array().map(Vec::len), Some(3));
    let temporary_id = temporary["id"].as_str().expect("key id");
    let revoked = w
        .call(
            delete,
            "/v1/keys/{id}",
            &format!("/v1/keys/{temporary_id}"),
            None,
            None,
            200,
        )
        .await;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    w.call(
        delete,
        "/v1/keys/{id}",
        "/v1/keys/no-such-key",
        None,
        None,
        404,
    )
    .await;
    // A key without the route's scope, and one revoked.
    w.bearer = decider["secret"].as_str().map(str::to_owned);
    w.call(get, "/v1/policies", "/v1/policies", None, None, 403)
        .await;
    w.bearer = temporary["secret"].as_str().map(str::to_owned);
    w.call(get, "/v1/policies", "/v1/policies", None, None, 401)
        .await;

    assert_eq!(w.covered, expected, "routes not answered with a success");
    eprintln!(
        "{} answers validated against their declared schemas: {}",
        w.checked.len(),
        w.checked.join(", ")
    );
}
