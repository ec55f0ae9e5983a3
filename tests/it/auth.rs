//! Who may call cedard, as a caller sees it: caller keys and their scopes on
//! every route of the OpenAPI document (401 with `WWW-Authenticate` for a
//! missing, malformed, unknown or revoked key, 403 for a key without the
//! route's scope), `X-Actor` believed only from a `manage` key, keys made,
//! listed and revoked over HTTP and with `cedard keys` (before the daemon
//! starts, and through `--url` while it runs), the loopback-only start
//! without keys and `--insecure-no-auth`, the `Host` check against DNS
//! rebinding, JSON-only writes, and HTTPS with `--tls-cert`/`--tls-key`.

use super::support::{self, entity};
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cedard::keys::{NewKey, Scope};
use cedard::server::{self, Config};
use cedard::store::Store;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What a caller sees of one answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// A 401 asking for a bearer key, in the one error shape.
    fn is_unauthenticated(&self) -> bool {
        self.status == 401
            && self
                .www_authenticate
                .as_deref()
                .is_some_and(|h| h.starts_with("Bearer"))
            && self.code() == "unauthenticated"
            && self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
    }

    /// A 403 in the one error shape.
    fn is_forbidden(&self) -> bool {
        self.status == 403 && self.code() == "forbidden"
    }
}

/// One request: `key` goes in `Authorization: Bearer`, `actor` in
/// `X-Actor`, `body` as JSON.
async fn call(
    client: &Client,
    method: Method,
    url: &str,
    key: Option<&str>,
    actor: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let api = support::Api {
        client: client.clone(),
        base: String::new(),
        key: key.map(str::to_owned),
    };
    let request = api.request(method, url, actor, body);
    reply(request.send().await.expect("request")).await
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        www_authenticate,
        body,
    }
}

/// The data file `spawn_app_in` gives a daemon started over `dir`.
fn data_file(dir: &Path) -> PathBuf {
    dir.join("data").join("cedard.redb")
}

/// Writes caller keys into the data file under `dir` before a daemon opens
/// it: `(name, scopes, revoked)`. Returns the keys by name.
fn seed_keys(dir: &Path, specs: &[(&str, &[Scope], bool)]) -> HashMap<String, NewKey> {
    let path = data_file(dir);
    std::fs::create_dir_all(path.parent().expect("data folder")).expect("create data folder");
    let store = Store::open(&path).expect("open store");
    let mut keys = HashMap::new();
    for (name, scopes, revoked) in specs {
        let key = cedard::keys::generate(name, scopes, 1_700_000_000).expect("random");
        store
            .write(|w| {
                w.create_key(&key.record)?;
                if *revoked {
                    w.revoke_key(&key.record.id, 1_700_000_001)?;
                }
                Ok(())
            })
            .expect("store key");
        keys.insert((*name).to_owned(), key);
    }
    // The daemon opens the file next; redb admits one open per process.
    drop(store);
    keys
}

/// The README's question: dana, a dev of acme, may start acme's pod.
fn allowed_question() -> Value {
    json!({
        "principal": {"type": "User", "id": "dana"},
        "action": {"type": "Action", "id": "startPod"},
        "resource": {"type": "Pod", "id": "p1"},
        "context": {},
        "entities": [
            entity::user("dana", &[("acme", "dev")]),
            entity::account("acme", "Acme", "team", "olga"),
            entity::pod("p1", "acme"),
        ]
    })
}

/// What a documented route asks of its caller, as the spec states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    AnyKey,
    Scope(Scope),
}

fn need_of(path: &str) -> Option<Need> {
    Some(match path {
        "/healthz" | "/readyz" => Need::Nothing,
        "/openapi.json" => Need::AnyKey,
        "/.well-known/authzen-configuration" => Need::Nothing,
        "/v1/is_authorized" | "/v1/is_authorized/batch" => Need::Scope(Scope::Decide),
        p if p.starts_with("/access/v1/") => Need::Scope(Scope::Decide),
        "/v1/invites/accept" | "/invites/{token}" => Need::Scope(Scope::Manage),
        p if p.starts_with("/v1/users") || p.starts_with("/v1/accounts/") => {
            Need::Scope(Scope::Manage)
        }
        "/v1/policies" | "/v1/matrix" | "/v1/keys" | "/v1/keys/{id}" | "/metrics" => {
            Need::Scope(Scope::Admin)
        }
        _ => return None,
    })
}

/// A documented path with plausible values for its parameters: the user
/// `alice`, her (team) account `alice`, a member `bob`, an unknown invite or
/// key.
fn concrete(path: &str) -> String {
    let id = if path.starts_with("/v1/keys/") {
        "0123456789abcdef"
    } else {
        "alice"
    };
    path.replace("{id}", id)
        .replace("{user}", "bob")
        .replace("{invite}", "inv_0000000000000000")
        .replace("{token}", "0000")
}

#[tokio::test]
async fn every_documented_route_asks_for_a_key_with_its_scope() {
    let dir = support::copy_pack();
    let keys = seed_keys(
        dir.path(),
        &[
            ("decide", &[Scope::Decide], false),
            ("manage", &[Scope::Manage], false),
            ("admin", &[Scope::Admin], false),
            ("all-but-decide", &[Scope::Manage, Scope::Admin], false),
            ("all-but-manage", &[Scope::Decide, Scope::Admin], false),
            ("all-but-admin", &[Scope::Decide, Scope::Manage], false),
            ("revoked", &Scope::ALL, true),
        ],
    );
    let key = |name: &str| keys[name].secret.clone();
    let app = support::spawn_app_in(dir, |_| {}).await;
    let client = &app.client;

    // alice administers the team account `alice`, so that management calls
    // with the right key get past the key check to the policies.
    let signed = call(
        client,
        Method::POST,
        &app.url("/v1/users"),
        Some(&key("manage")),
        None,
        Some(&json!({"id": "alice", "email": "alice@example.com"})),
    )
    .await;
    assert_eq!(signed.status, 201, "{signed:?}");
    let converted = call(
        client,
        Method::POST,
        &app.url("/v1/accounts/alice/convert"),
        Some(&key("manage")),
        Some("alice"),
        Some(&json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(converted.status, 200, "{converted:?}");

    let doc = serde_json::to_value(cedard::http::openapi("http://127.0.0.1:8180"))
        .expect("serialize the document");
    let paths = doc["paths"].as_object().expect("paths");
    for spec_route in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/v1/is_authorized",
        "/v1/is_authorized/batch",
        "/v1/users",
        "/v1/invites/accept",
        "/v1/policies",
        "/v1/matrix",
        "/v1/keys",
        "/v1/keys/{id}",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(spec_route),
            "{spec_route} is not documented"
        );
    }

    let stranger = cedard::keys::generate("stranger", &Scope::ALL, 0)
        .expect("random")
        .secret;
    let mut wrong_secret = key("admin");
    let last = wrong_secret.pop().expect("non-empty");
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    // `Authorization` values that must not authenticate (None: no header).
    let invalid: Vec<(&str, Option<String>)> = vec![
        ("no key", None),
        ("malformed key", Some("Bearer garbage".into())),
        ("basic auth", Some("Basic YWRtaW46YWRtaW4=".into())),
        ("unknown key", Some(format!("Bearer {stranger}"))),
        ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
        ("revoked key", Some(format!("Bearer {}", key("revoked")))),
    ];

    let mut failures = Vec::new();
    let mut operations = 0;
    for (path, item) in paths {
        let Some(need) = need_of(path) else {
            failures.push(format!(
                "{path}: documented, but the spec names no scope for it"
            ));
            continue;
        };
        let url = app.url(&concrete(path));
        let actor = path.starts_with("/v1/users/") || need == Need::Scope(Scope::Manage);
        let actor = actor.then_some("alice");
        for (method, operation) in item.as_object().expect("path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let body =
                matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let route = format!("{method} {path}");
            let send = |authorization: Option<String>| {
                let mut request = client.request(method.clone(), &url);
                if let Some(a) = authorization {
                    request = request.header(AUTHORIZATION, a);
                }
                if let Some(actor) = actor {
                    request = request.header("x-actor", actor);
                }
                if let Some(body) = &body {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.to_string());
                }
                async move { reply(request.send().await.expect("request")).await }
            };

            if need == Need::Nothing {
                let r = send(None).await;
                if r.status != 200 {
                    failures.push(format!("{route} without a key: {} {}", r.status, r.body));
                }
                continue;
            }
            for (what, authorization) in &invalid {
                let r = send(authorization.clone()).await;
                if !r.is_unauthenticated() {
                    failures.push(format!(
                        "{route} with {what}: expected 401 unauthenticated with WWW-Authenticate, got {} {:?} {}",
                        r.status, r.www_authenticate, r.body
                    ));
                }
            }
            match need {
                Need::Nothing => {}
                Need::AnyKey => {
                    for name in ["decide", "manage", "admin"] {
                        let r = send(Some(format!("Bearer {}", key(name)))).await;
                        if r.status != 200 {
                            failures.push(format!(
                                "{route} with a {name} key: {} {}",
                                r.status, r.body
                            ));
                        }
                    }
                }
                Need::Scope(scope) => {
                    let declared = &operation["security"];
                    if *declared != json!([{"bearer": [scope.as_str()]}]) {
                        failures.push(format!(
                            "{route}: the document declares security {declared}, expected the {scope} scope"
                        ));
                    }
                    let r =
                        send(Some(format!("Bearer {}", key(&format!("all-but-{scope}"))))).await;
                    if !r.is_forbidden() {
                        failures.push(format!(
                            "{route} with every scope but {scope}: expected 403 forbidden, got {} {}",
                            r.status, r.body
                        ));
                    }
                    // The required scope alone is enough: the answer comes
                    // from the handler, not from the key check.
                    let r = send(Some(format!("Bearer {}", key(scope.as_str())))).await;
                    if r.status == 401 || r.status == 403 {
                        failures.push(format!(
                            "{route} with a {scope} key: {} {}",
                            r.status, r.body
                        ));
                    }
                }
            }
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.stop().await;
}

#[tokio::test]
async fn x_actor_is_believed_only_from_a_manage_key() {
    let dir = support::copy_pack();
    let keys = seed_keys(
        dir.path(),
        &[
            ("decide", &[Scope::Decide], false),
            ("manage", &[Scope::Manage], false),
        ],
    );
    let app = support::spawn_app_in(dir, |_| {}).await;
    let (decide, manage) = (&keys["decide"].secret, &keys["manage"].secret);
    let c = &app.client;
    let signed = call(
        c,
        Method::POST,
        &app.url("/v1/users"),
        Some(manage),
        None,
        Some(&json!({"id": "alice", "email": "alice@example.com"})),
    )
    .await;
    assert_eq!(signed.status, 201, "{signed:?}");

    // A decide key naming alice cannot read her or convert her account.
    let url = app.url("/v1/users/alice");
    let r = call(c, Method::GET, &url, Some(decide), Some("alice"), None).await;
    assert!(r.is_forbidden(), "{r:?}");
    let convert = app.url("/v1/accounts/alice/convert");
    let body = json!({"name": "Hijacked"});
    let r = call(
        c,
        Method::POST,
        &convert,
        Some(decide),
        Some("alice"),
        Some(&body),
    )
    .await;
    assert!(r.is_forbidden(), "{r:?}");
    let account = app.url("/v1/accounts/alice");
    let r = call(c, Method::GET, &account, Some(manage), Some("alice"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["kind"], "personal", "{r:?}");

    // The same header from a manage key is believed.
    let r = call(c, Method::GET, &url, Some(manage), Some("alice"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"]["id"], "alice", "{r:?}");

    // X-Actor on a decision route changes nothing.
    let question = allowed_question();
    let decide_url = app.url("/v1/is_authorized");
    let r = call(
        c,
        Method::POST,
        &decide_url,
        Some(decide),
        Some("alice"),
        Some(&question),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["decision"]),
        (200, &json!("allow")),
        "{r:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn keys_are_made_listed_and_revoked_over_http() {
    let dir = support::copy_pack();
    let keys = seed_keys(
        dir.path(),
        &[
            ("ops", &[Scope::Admin], false),
            ("svc", &[Scope::Decide], false),
        ],
    );
    let app = support::spawn_app_in(dir, |_| {}).await;
    let admin = keys["ops"].secret.as_str();
    let c = &app.client;
    let keys_url = app.url("/v1/keys");

    // Bad bodies are refused with the field named, and only admin keys
    // create keys.
    for (body, field) in [
        (json!({"name": "x"}), "scopes"),
        (json!({"scopes": ["decide"]}), "name"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "x", "scopes": ["root"]}), "scopes"),
        (
            json!({"name": "x", "scopes": ["decide"], "secret": "mine"}),
            "secret",
        ),
    ] {
        let r = call(c, Method::POST, &keys_url, Some(admin), None, Some(&body)).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{body}: {r:?}");
    }
    let body = json!({"name": "billing-svc", "scopes": ["decide"]});
    let svc = keys["svc"].secret.as_str();
    let r = call(c, Method::POST, &keys_url, Some(svc), None, Some(&body)).await;
    assert!(r.is_forbidden(), "{r:?}");

    let created = call(c, Method::POST, &keys_url, Some(admin), None, Some(&body)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_str().expect("id").to_owned();
    let secret = created.body["secret"].as_str().expect("secret").to_owned();
    assert_eq!(created.body["name"], "billing-svc");
    assert_eq!(created.body["scopes"], json!(["decide"]));
    assert!(created.body["created_at"].is_string(), "{created:?}");
    assert!(secret.starts_with(&format!("cdk_{id}_")), "{secret}");
    let hidden = secret.rsplit('_').next().expect("secret part").to_owned();
    assert_eq!(hidden.len(), 64, "{secret}");

    // The new key decides at once, and may do nothing else.
    let question = allowed_question();
    let decide_url = app.url("/v1/is_authorized");
    let r = call(
        c,
        Method::POST,
        &decide_url,
        Some(&secret),
        None,
        Some(&question),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["decision"]),
        (200, &json!("allow")),
        "{r:?}"
    );
    let r = call(c, Method::GET, &keys_url, Some(&secret), None, None).await;
    assert!(r.is_forbidden(), "{r:?}");

    // The listing shows every key and no secret, in any form.
    let listing = c
        .get(&keys_url)
        .bearer_auth(admin)
        .send()
        .await
        .expect("request");
    assert_eq!(listing.status(), StatusCode::OK);
    let text = listing.text().await.expect("body");
    let listed: Value = serde_json::from_str(&text).expect("JSON");
    let mut names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .map(|k| k["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["billing-svc", "ops", "svc"], "{text}");
    let hash = hex::encode(Sha256::digest(hidden.as_bytes()));
    for leak in [hidden.as_str(), hash.as_str(), "secret", "sha256"] {
        assert!(!text.contains(leak), "the listing shows `{leak}`: {text}");
    }

    // Revoked: the key stops working at once and the listing says so.
    let one = app.url(&format!("/v1/keys/{id}"));
    let r = call(c, Method::DELETE, &one, Some(admin), None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["id"], id.as_str());
    assert!(r.body["revoked_at"].is_string(), "{r:?}");
    let r = call(
        c,
        Method::POST,
        &decide_url,
        Some(&secret),
        None,
        Some(&question),
    )
    .await;
    assert!(r.is_unauthenticated(), "{r:?}");
    let r = call(c, Method::GET, &keys_url, Some(admin), None, None).await;
    let revoked = r
        .body
        .as_array()
        .expect("list")
        .iter()
        .find(|k| k["id"] == id.as_str());
    assert!(
        revoked.is_some_and(|k| k["revoked_at"].is_string()),
        "{r:?}"
    );
    let r = call(
        c,
        Method::DELETE,
        &app.url("/v1/keys/0123456789abcdef"),
        Some(admin),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{r:?}");

    // The last live admin key is kept: without it nobody could manage keys.
    let ops = &keys["ops"].record.id;
    let r = call(
        c,
        Method::DELETE,
        &app.url(&format!("/v1/keys/{ops}")),
        Some(admin),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "conflict"), "{r:?}");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(ops.as_str()) && message.contains("last live key"),
        "{r:?}"
    );
    let r = call(c, Method::GET, &keys_url, Some(admin), None, None).await;
    assert_eq!(r.status, 200, "the refused revocation left the key live");
    app.stop().await;
}

#[tokio::test]
async fn without_keys_loopback_is_served_until_the_first_key_exists() {
    let app = support::spawn_app().await;
    let c = &app.client;
    let policies = app.url("/v1/policies");
    let r = call(c, Method::GET, &policies, None, None, None).await;
    assert_eq!(r.status, 200, "{r:?}");

    let body = json!({"name": "ops", "scopes": ["admin"]});
    let created = call(
        c,
        Method::POST,
        &app.url("/v1/keys"),
        None,
        None,
        Some(&body),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let key = created.body["secret"].as_str().expect("secret").to_owned();
    let id = created.body["id"].as_str().expect("id").to_owned();

    // From now on the same caller needs the key.
    let r = call(c, Method::GET, &policies, None, None, None).await;
    assert!(r.is_unauthenticated(), "{r:?}");
    let r = call(c, Method::GET, &policies, Some(&key), None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(c, Method::GET, &app.url("/healthz"), None, None, None).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Revoking keys never reopens the daemon: the last admin key is kept,
    // and once another replaces it, the old one's revocation leaves the
    // daemon as closed as before.
    let url = app.url(&format!("/v1/keys/{id}"));
    let r = call(c, Method::DELETE, &url, Some(&key), None, None).await;
    assert_eq!((r.status, r.code()), (409, "conflict"), "{r:?}");
    let body = json!({"name": "ops-next", "scopes": ["admin"]});
    let next = call(
        c,
        Method::POST,
        &app.url("/v1/keys"),
        Some(&key),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(next.status, 201, "{next:?}");
    let r = call(c, Method::DELETE, &url, Some(&key), None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    for (method, path) in [(Method::GET, "/v1/policies"), (Method::POST, "/v1/keys")] {
        let r = call(c, method, &app.url(path), None, None, Some(&body)).await;
        assert!(r.is_unauthenticated(), "{path}: {r:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_data_file_whose_every_key_is_revoked_authenticates_nobody() {
    // Keys revoked outside the API (the CLI, another tool): none is live,
    // yet the file had keys, so the no-key mode does not come back.
    let dir = support::copy_pack();
    seed_keys(dir.path(), &[("svc", &[Scope::Decide], true)]);
    let app = support::spawn_app_in(dir, |_| {}).await;
    let c = &app.client;
    let body = json!({"name": "intruder", "scopes": ["admin"]});
    for (method, path) in [
        (Method::GET, "/v1/policies"),
        (Method::POST, "/v1/keys"),
        (Method::POST, "/v1/is_authorized"),
    ] {
        let r = call(c, method, &app.url(path), None, None, Some(&body)).await;
        assert!(r.is_unauthenticated(), "{path}: {r:?}");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("every caller key is revoked"), "{r:?}");
    }
    let r = call(c, Method::GET, &app.url("/healthz"), None, None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    app.stop().await;
}

/// Runs `cedard <args>` from `cwd` to completion.
fn cedard(cwd: &Path, args: &[&str], admin_key: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cedard"));
    command
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env_remove("CEDARD_KEY")
        .env_remove("CEDARD_DATA")
        .stdin(Stdio::null());
    if let Some(key) = admin_key {
        command.env("CEDARD_KEY", key);
    }
    command.output().expect("run cedard")
}

/// The key a successful `cedard keys create` printed: stdout holds it alone.
fn printed_key(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keys create failed: {stderr}");
    let key = stdout.trim_end_matches('\n');
    assert!(
        key.starts_with("cdk_") && !key.contains(char::is_whitespace),
        "stdout is not one key: {stdout:?}"
    );
    key.to_owned()
}

fn key_id(key: &str) -> &str {
    key.split('_').nth(1).expect("key id")
}

#[tokio::test]
async fn keys_from_the_cli_before_and_while_the_daemon_runs() {
    let dir = support::copy_pack();
    let cwd = dir.path();
    let data = "data/cedard.redb";
    let create = |name: &str, scope: &str| {
        cedard(
            cwd,
            &[
                "keys", "create", "--name", name, "--scope", scope, "--data", data,
            ],
            None,
        )
    };
    // Before the daemon: straight into the data file.
    let admin = printed_key(&create("ops", "admin"));
    let early = printed_key(&create("early-svc", "decide"));

    let daemon = support::spawn_binary(
        cwd,
        &[
            "--policies",
            "policies",
            "--schema",
            "schema",
            "--data",
            data,
        ],
    )
    .await;
    let client = Client::new();
    let question = allowed_question();
    let decide = daemon.url("/v1/is_authorized");
    let r = call(
        &client,
        Method::POST,
        &decide,
        Some(&early),
        None,
        Some(&question),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["decision"]),
        (200, &json!("allow")),
        "{r:?}"
    );
    let r = call(&client, Method::POST, &decide, None, None, Some(&question)).await;
    assert!(r.is_unauthenticated(), "{r:?}");

    // The file is the daemon's now: the CLI says to go through it.
    let refused = create("late-svc", "decide");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "keys create on a held file succeeded"
    );
    assert!(stderr.contains("--url"), "{stderr}");
    assert!(refused.stdout.is_empty(), "{refused:?}");

    // Through the daemon, with the admin key.
    let base = format!("http://{}", daemon.addr);
    let late = printed_key(&cedard(
        cwd,
        &[
            "keys", "create", "--name", "late-svc", "--scope", "decide", "--url", &base,
        ],
        Some(&admin),
    ));
    let r = call(
        &client,
        Method::POST,
        &decide,
        Some(&late),
        None,
        Some(&question),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["decision"]),
        (200, &json!("allow")),
        "{r:?}"
    );
    let listed = cedard(cwd, &["keys", "list", "--url", &base], Some(&admin));
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    for name in ["ops", "early-svc", "late-svc"] {
        assert!(listing.contains(name), "{listing}");
    }
    assert!(!listing.contains(&late[late.len() - 64..]), "{listing}");

    // Revoked through the daemon: stops working within a second.
    for key in [&early, &late] {
        let out = cedard(
            cwd,
            &["keys", "revoke", key_id(key), "--url", &base],
            Some(&admin),
        );
        assert!(out.status.success(), "{out:?}");
        let revoked_at = Instant::now();
        loop {
            let r = call(
                &client,
                Method::POST,
                &decide,
                Some(key),
                None,
                Some(&question),
            )
            .await;
            if r.is_unauthenticated() {
                break;
            }
            assert_eq!(r.status, 200, "{r:?}");
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "a revoked key still works after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The CLI without the admin key is refused by the daemon.
    let out = cedard(cwd, &["keys", "list", "--url", &base], None);
    assert!(!out.status.success(), "{out:?}");
    drop(daemon);
}

/// Starts `cedard serve` on `listen` with piped stderr.
fn serve_binary(cwd: &Path, listen: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["serve", "--policies", "policies", "--schema", "schema"])
        .args(["--data", "data/cedard.redb", "--listen", listen])
        .args(extra)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cedard")
}

/// Stops `child` (if it still runs) and returns its stderr.
fn stop_and_read_stderr(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    stderr
}

#[tokio::test]
async fn a_network_listener_without_keys_is_refused_unless_insecure() {
    let dir = support::copy_pack();
    let port = support::free_port();
    let listen = format!("0.0.0.0:{port}");

    let mut child = serve_binary(dir.path(), &listen, &[]);
    let mut status = None;
    support::wait_until(Duration::from_secs(20), || {
        status = child.try_wait().expect("wait");
        std::future::ready(status.is_some())
    })
    .await;
    let stderr = stop_and_read_stderr(child);
    assert!(!status.expect("exited").success(), "{stderr}");
    assert!(stderr.contains("cedard keys create"), "{stderr}");

    // With --insecure-no-auth it starts, loudly. Traffic goes to loopback.
    let child = serve_binary(dir.path(), &listen, &["--insecure-no-auth"]);
    let client = Client::new();
    let url = format!("http://127.0.0.1:{port}");
    support::wait_until(Duration::from_secs(20), || {
        let request = client.get(format!("{url}/healthz")).send();
        async { request.await.is_ok() }
    })
    .await;
    let r = call(
        &client,
        Method::GET,
        &format!("{url}/v1/policies"),
        None,
        None,
        None,
    )
    .await;
    let stderr = stop_and_read_stderr(child);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(stderr.contains("INSECURE"), "{stderr}");
}

#[tokio::test]
async fn only_served_host_names_are_answered() {
    let app = support::spawn_app_in(support::copy_pack(), |c| {
        c.options.allowed_hosts = vec!["cedard.internal".into()];
    })
    .await;
    let port = app.addr.port();
    let question = allowed_question();
    for (host, expected) in [
        ("evil.example:8180".to_owned(), 400),
        (format!("evil.example:{port}"), 400),
        ("evil.example".to_owned(), 400),
        (format!("localhost.evil.example:{port}"), 400),
        (format!("localhost:{port}"), 200),
        (format!("LOCALHOST:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
        (format!("[::1]:{port}"), 200),
        (format!("cedard.internal:{port}"), 200),
        ("cedard.internal".to_owned(), 200),
    ] {
        for (method, path, body) in [
            (Method::GET, "/v1/policies", None),
            (Method::POST, "/v1/is_authorized", Some(&question)),
        ] {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .header(HOST, &host);
            if let Some(body) = body {
                request = request.json(body);
            }
            let r = reply(request.send().await.expect("request")).await;
            assert_eq!(
                r.status, expected,
                "{method} {path} with Host {host}: {r:?}"
            );
            if expected == 400 {
                assert_eq!(r.code(), "invalid_host", "{host}: {r:?}");
                assert!(r.body.get("decision").is_none(), "{r:?}");
            }
        }
    }

    // A client whose DNS says evil.example is 127.0.0.1 (rebinding).
    let rebound = Client::builder()
        .resolve("evil.example", app.addr)
        .build()
        .expect("client");
    let r = reply(
        rebound
            .get(format!("http://evil.example:{port}/v1/policies"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "invalid_host"), "{r:?}");
    app.stop().await;
}

#[tokio::test]
async fn writes_must_be_json_and_a_refused_write_stores_nothing() {
    let app = support::spawn_app().await;
    let c = &app.client;
    let form = "application/x-www-form-urlencoded";
    let json_as_text = r#"{"id": "mallory", "email": "mallory@example.com"}"#;
    for (method, path, content_type, body) in [
        (
            Method::POST,
            "/v1/users",
            form,
            "id=mallory&email=mallory%40example.com",
        ),
        (Method::POST, "/v1/users", "text/plain", json_as_text),
        (
            Method::POST,
            "/v1/users",
            "multipart/form-data; boundary=x",
            "--x--",
        ),
        (Method::POST, "/v1/keys", form, "name=ops&scopes=admin"),
        (Method::POST, "/v1/is_authorized", "text/plain", "{}"),
        (
            Method::PUT,
            "/v1/accounts/alice/members/mallory",
            form,
            "role=admin",
        ),
    ] {
        let r = reply(
            c.request(method.clone(), app.url(path))
                .header(CONTENT_TYPE, content_type)
                .header("x-actor", "alice")
                .body(body)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (415, "unsupported_media_type"),
            "{method} {path} as {content_type}: {r:?}"
        );
    }
    // A body with no content type at all is no JSON either.
    let r = reply(
        c.post(app.url("/v1/keys"))
            .body(r#"{"name": "ops", "scopes": ["admin"]}"#)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (415, "unsupported_media_type"),
        "{r:?}"
    );

    // Nothing was stored: no key exists (so loopback is still open), and
    // mallory is unknown until she signs up with JSON.
    let r = call(c, Method::GET, &app.url("/v1/keys"), None, None, None).await;
    assert_eq!((r.status, &r.body), (200, &json!([])), "{r:?}");
    let mallory = app.url("/v1/users/mallory");
    let r = call(c, Method::GET, &mallory, None, Some("mallory"), None).await;
    assert_ne!(r.status, 200, "{r:?}");
    let body: Value = serde_json::from_str(json_as_text).expect("JSON");
    let r = call(
        c,
        Method::POST,
        &app.url("/v1/users"),
        None,
        None,
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(c, Method::GET, &mallory, None, Some("mallory"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    app.stop().await;
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as
/// `cert.pem` and `key.pem` into `dir`; returns the certificate's PEM.
fn write_certificate(dir: &Path) -> String {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let cert = certified.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert).expect("write cert");
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).expect("write key");
    cert
}

/// A TLS configuration over the pack in `dir`.
fn tls_config(dir: &Path, cert: PathBuf, key: PathBuf) -> Config {
    let mut config = Config::new(dir.join("policies"), dir.join("schema"));
    config.options.data = data_file(dir);
    config.options.tls_cert = Some(cert);
    config.options.tls_key = Some(key);
    config
}

#[tokio::test]
async fn https_with_a_certificate_and_no_plain_http() {
    let dir = support::copy_pack();
    let cert = write_certificate(dir.path());
    let config = tls_config(
        dir.path(),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let client = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).expect("PEM"))
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let base = format!("https://localhost:{}", addr.port());
    support::wait_until(Duration::from_secs(20), || {
        let request = client.get(format!("{base}/readyz")).send();
        async { request.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;

    let response = client
        .post(format!("{base}/v1/is_authorized"))
        .json(&allowed_question())
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN offers h2"
    );
    let r = reply(response).await;
    assert_eq!(
        (r.status, &r.body["decision"]),
        (200, &json!("allow")),
        "{r:?}"
    );
    let by_ip = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).expect("PEM"))
        .build()
        .expect("client");
    let r = by_ip
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .expect("request by IP");
    assert_eq!(r.status(), StatusCode::OK);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", addr.port()))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    let _ = stop.send(());
    task.await.expect("join").expect("server ran");
}

#[tokio::test]
async fn unreadable_tls_files_stop_the_start_naming_the_file() {
    let dir = support::copy_pack();
    write_certificate(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let missing = dir.path().join("no-such-cert.pem");
    for (cert, key, named) in [
        (missing.clone(), key.clone(), "no-such-cert.pem"),
        (cert.clone(), missing.clone(), "no-such-cert.pem"),
        (key.clone(), key.clone(), "key.pem"),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = tls_config(dir.path(), cert, key);
        let result = server::run(listener, config, std::future::pending()).await;
        let message = result.expect_err("started with a bad TLS file").to_string();
        assert!(message.contains(named), "{message}");
    }
}
