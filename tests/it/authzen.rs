//! The AuthZEN Authorization API 1.0 as a caller sees it: the working
//! group's interop suites replayed by `cedard interop` against the real
//! binary serving each example pack; the default pack answering the same
//! over AuthZEN as over `/v1` for every cell of the role table; action,
//! resource and subject search over the store, with pages; boxcarred
//! evaluations and their semantics; entity data files that reload
//! atomically with the policies; the metadata document and caller keys.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::accounts::{decide, join, sign_up, team};
use super::support::{
    self, repo_root, spawn_app_in, spawn_binary, team_table, wait_until, TestApp,
};

const DEADLINE: Duration = Duration::from_secs(20);

fn interop_data() -> std::path::PathBuf {
    repo_root().join("../shared/authzen-interop")
}

/// Serves `examples/authzen/<pack>` with the real binary and replays
/// `suites` with the real `cedard interop`; returns its last line.
async fn replay(pack: &str, suites: &[&str]) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let base = format!("examples/authzen/{pack}");
    let redb = data.path().join("pack.redb");
    let daemon = spawn_binary(
        &repo_root(),
        &[
            "--policies",
            &format!("{base}/policies"),
            "--schema",
            &format!("{base}/schema"),
            "--entities",
            &format!("{base}/entities"),
            "--data",
            redb.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("interop")
        .arg("--url")
        .arg(daemon.url(""))
        .args(suites.iter().map(|s| interop_data().join(s)))
        .output()
        .expect("run cedard interop");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{pack}: cedard interop failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_interop_suites_pass_through_the_real_daemon() {
    assert!(
        interop_data().join("SCENARIOS.md").exists(),
        "the interop data is missing at {}",
        interop_data().display()
    );
    // The final data and the runner's default file, whose subject carries
    // a field the spec says a PDP must ignore (`_note`).
    assert_eq!(
        replay(
            "todo",
            &[
                "todo/decisions.json",
                "todo/decisions-authorization-api-1_0-01.json"
            ]
        )
        .await,
        "83 passed, 0 failed"
    );
    assert_eq!(
        replay("gateway", &["gateway/decisions.json"]).await,
        "25 passed, 0 failed"
    );
    assert_eq!(
        replay(
            "search",
            &[
                "search/subject-results.json",
                "search/resource-results.json",
                "search/action-results.json",
            ],
        )
        .await,
        "198 passed, 0 failed"
    );
    assert_eq!(
        replay("idp", &["idp/results.json"]).await,
        "6 passed, 0 failed"
    );
}

#[tokio::test]
async fn the_runner_reports_a_wrong_answer() {
    // A pack whose editors may update any todo answers some Todo cases
    // wrongly: the runner must say so and fail.
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("examples/authzen/todo");
    for sub in ["schema", "entities", "policies"] {
        copy(&pack.join(sub), &dir.path().join(sub));
    }
    let editor = dir.path().join("policies/editor.cedar");
    let text = std::fs::read_to_string(&editor).expect("read editor.cedar");
    let loosened = text.replace(
        "when { resource has ownerID && resource.ownerID == principal.email }",
        "",
    );
    assert_ne!(text, loosened, "the editor policy changed shape");
    std::fs::write(&editor, loosened).expect("write");
    let daemon = spawn_binary(
        dir.path(),
        &[
            "--entities",
            "entities",
            "--data",
            dir.path().join("d.redb").to_str().expect("utf-8"),
        ],
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["interop", "--url", &daemon.url("")])
        .arg(interop_data().join("todo/decisions.json"))
        .output()
        .expect("run cedard interop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" failed") && !last.ends_with(" 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL todo/decisions.json: evaluation["),
        "{stdout}"
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    app.post(path, &body).await
}

fn pod_actions(action: &str) -> bool {
    matches!(action, "connectPod" | "startPod" | "stopPod")
}

/// The AuthZEN resource for `action` on `account`: its pod `p1` (described
/// by properties) or the account itself.
fn resource_for(action: &str, account: &str) -> Value {
    if pod_actions(action) {
        json!({"type": "Pod", "id": format!("{account}-p1"),
               "properties": {"account": {"type": "Account", "id": account}}})
    } else {
        json!({"type": "Account", "id": account})
    }
}

/// The seed's team: `owner` administers `acme`; one member per role; `nobody`
/// belongs to no account but their own.
async fn seeded_team(app: &TestApp) {
    team(app, "acme").await;
    for role in support::roles() {
        join(app, "acme", "acme", &format!("m-{role}"), role).await;
    }
    assert_eq!(sign_up(app, "nobody").await.0, 201);
}

#[tokio::test]
async fn the_default_pack_answers_the_same_over_authzen_as_over_v1() {
    let app = support::spawn_app().await;
    seeded_team(&app).await;
    let users: Vec<String> = support::roles()
        .iter()
        .map(|r| format!("m-{r}"))
        .chain(["nobody".to_owned()])
        .collect();
    let mut cells = 0;
    for (action, row) in team_table() {
        for (user, expected) in users.iter().zip(row) {
            let v1 = decide(&app, user, action, "acme").await;
            let (status, authzen) = post(
                &app,
                "/access/v1/evaluation",
                json!({
                    "subject": {"type": "User", "id": user},
                    "action": {"name": action},
                    "resource": resource_for(action, "acme"),
                }),
            )
            .await;
            assert_eq!(status, 200, "{user} {action}: {authzen}");
            assert_eq!(
                authzen,
                json!({"decision": *expected}),
                "{user} {action} over AuthZEN"
            );
            assert_eq!(
                v1["decision"] == "allow",
                *expected,
                "{user} {action} over /v1"
            );
            cells += 1;
        }
    }
    assert_eq!(cells, team_table().len() * support::TEAM.columns.len());

    // The same row, asked as one action search per member: on the account,
    // the actions that apply to accounts; on a pod, the pod actions.
    for (i, user) in users.iter().enumerate() {
        for on_pod in [false, true] {
            let resource = resource_for(if on_pod { "startPod" } else { "useAccount" }, "acme");
            let (status, body) = post(
                &app,
                "/access/v1/search/action",
                json!({"subject": {"type": "User", "id": user}, "resource": resource}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let mut got: Vec<String> = body["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| r["name"].as_str().expect("name").to_owned())
                .collect();
            got.sort();
            let mut want: Vec<String> = team_table()
                .iter()
                .filter(|(a, row)| pod_actions(a) == on_pod && row[i])
                .map(|(a, _)| (*a).to_owned())
                .collect();
            want.sort();
            assert_eq!(got, want, "{user}, on a pod: {on_pod}");
            assert_eq!(body["page"], json!({"next_token": ""}));
        }
    }
}

#[tokio::test]
async fn resource_search_lists_the_accounts_where_bob_holds_billing_or_admin() {
    let app = support::spawn_app().await;
    assert_eq!(sign_up(&app, "bob").await.0, 201);
    for (account, role) in [
        ("t-admin", Some("admin")),
        ("t-basic", Some("basic")),
        ("t-billing", Some("billing")),
        ("t-dev", Some("dev")),
        ("t-none", None),
    ] {
        team(&app, account).await;
        if let Some(role) = role {
            invite_existing(&app, account, "bob", role).await;
        }
    }
    let question = json!({
        "subject": {"type": "User", "id": "bob"},
        "action": {"name": "viewBilling"},
        "resource": {"type": "Account"},
    });
    let (status, body) = post(&app, "/access/v1/search/resource", question.clone()).await;
    assert_eq!(status, 200, "{body}");
    // bob's own personal account, which he owns as admin, and the two teams.
    let want = json!([
        {"type": "Account", "id": "bob"},
        {"type": "Account", "id": "t-admin"},
        {"type": "Account", "id": "t-billing"},
    ]);
    assert_eq!(body["results"], want);
    assert_eq!(body["page"]["next_token"], "");

    // One at a time, following the tokens: the same list, each once.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let mut q = question.clone();
        q["page"] = json!({"limit": 1, "token": token});
        let (status, body) = post(&app, "/access/v1/search/resource", q).await;
        assert_eq!(status, 200, "{body}");
        paged.extend(body["results"].as_array().expect("results").clone());
        token = body["page"]["next_token"]
            .as_str()
            .expect("token")
            .to_owned();
        if token.is_empty() {
            break;
        }
        assert!(paged.len() <= 3, "pages never end: {paged:?}");
    }
    assert_eq!(Value::Array(paged), want);

    // A token is bound to its search: another search refuses it.
    let mut q = question.clone();
    q["page"] = json!({"limit": 1});
    let (_, first) = post(&app, "/access/v1/search/resource", q).await;
    let token = first["page"]["next_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut other = question.clone();
    other["action"] = json!({"name": "useAccount"});
    other["page"] = json!({"token": token});
    let (status, body) = post(&app, "/access/v1/search/resource", other).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("page.token"),
        "{body}"
    );
    let mut q = question.clone();
    q["page"] = json!({"limit": 0});
    assert_eq!(post(&app, "/access/v1/search/resource", q).await.0, 400);

    // Subject search over the store: who may start a pod of t-dev?
    let (status, body) = post(
        &app,
        "/access/v1/search/subject",
        json!({
            "subject": {"type": "User"},
            "action": {"name": "startPod"},
            "resource": {"type": "Pod", "id": "p1",
                         "properties": {"account": {"type": "Account", "id": "t-dev"}}},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"],
        json!([{"type": "User", "id": "bob"}, {"type": "User", "id": "t-dev"}])
    );
}

/// Invites the signed-up `user` into `account` with `role`, and accepts.
async fn invite_existing(app: &TestApp, account: &str, user: &str, role: &str) {
    let (status, body) =
        super::accounts::invite(app, account, account, json!({"role": role})).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token");
    let (status, body) = super::accounts::accept(app, user, token).await;
    assert_eq!(status, 200, "{body}");
}

/// The Todo pack served in-process, for the evaluation API's own rules.
async fn todo_app(adjust: impl FnOnce(&mut cedard::server::Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("examples/authzen/todo");
    for sub in ["schema", "entities", "policies"] {
        copy(&pack.join(sub), &dir.path().join(sub));
    }
    let entities = dir.path().join("entities");
    spawn_app_in(dir, move |c| {
        c.options.policy.entities = Some(entities);
        adjust(c);
    })
    .await
}

const MORTY: &str = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";

fn todo_of(owner: &str) -> Value {
    json!({"resource": {"type": "todo", "id": format!("t-{owner}"),
                        "properties": {"ownerID": format!("{owner}@the-citadel.com")}}})
}

#[tokio::test]
async fn evaluations_follow_the_three_semantics_and_answer_bad_items_in_place() {
    let app = todo_app(|_| {}).await;
    // morty (an editor) may update his own todo, not rick's.
    let call = |semantic: Option<&str>, items: Vec<Value>| {
        let mut body = json!({
            "subject": {"type": "user", "id": MORTY},
            "action": {"name": "can_update_todo"},
            "evaluations": items,
        });
        if let Some(s) = semantic {
            body["options"] = json!({"evaluations_semantic": s});
        }
        body
    };
    let items = vec![todo_of("morty"), todo_of("rick"), todo_of("morty")];
    let (status, body) = post(&app, "/access/v1/evaluations", call(None, items.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"evaluations": [{"decision": true}, {"decision": false}, {"decision": true}]})
    );
    let (_, body) = post(
        &app,
        "/access/v1/evaluations",
        call(Some("deny_on_first_deny"), items.clone()),
    )
    .await;
    assert_eq!(
        body,
        json!({"evaluations": [{"decision": true},
            {"decision": false, "context": {"code": "200", "reason": "deny_on_first_deny"}}]})
    );
    let (_, body) = post(
        &app,
        "/access/v1/evaluations",
        call(Some("permit_on_first_permit"), items.clone()),
    )
    .await;
    assert_eq!(body, json!({"evaluations": [{"decision": true}]}));
    let (status, body) = post(
        &app,
        "/access/v1/evaluations",
        call(Some("all"), items.clone()),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("options.evaluations_semantic"));

    // An item naming a type the schema lacks is a deny with its error, in
    // its place; the others are answered.
    let bad = json!({"resource": {"type": "document", "id": "d"}});
    let (status, body) = post(
        &app,
        "/access/v1/evaluations",
        call(None, vec![todo_of("morty"), bad, todo_of("rick")]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answers = body["evaluations"].as_array().expect("evaluations");
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0], json!({"decision": true}));
    assert_eq!(answers[1]["decision"], false);
    assert_eq!(answers[1]["context"]["error"]["status"], 400);
    assert!(
        answers[1]["context"]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("evaluations[1].resource"),
        "{body}"
    );
    assert_eq!(answers[2], json!({"decision": false}));

    // An item that lacks a part the call gives no default for cannot be
    // evaluated: it is answered in its place (AuthZEN 1.0, Errors), and
    // the item beside it is decided.
    let (status, body) = post(
        &app,
        "/access/v1/evaluations",
        json!({"action": {"name": "can_read_todos"},
               "evaluations": [{"resource": {"type": "todo", "id": "1"}},
                               {"subject": {"type": "user", "id": MORTY},
                                "resource": {"type": "todo", "id": "1"}}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answers = body["evaluations"].as_array().expect("evaluations");
    assert_eq!(answers.len(), 2, "{body}");
    assert_eq!(answers[0]["decision"], false);
    assert_eq!(answers[0]["context"]["error"]["status"], 400);
    assert!(
        answers[0]["context"]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("evaluations[0].subject"),
        "{body}"
    );
    assert_eq!(answers[1], json!({"decision": true}));

    // Without items, the call is one evaluation.
    let (_, body) = post(
        &app,
        "/access/v1/evaluations",
        json!({"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_read_todos"},
               "resource": {"type": "todo", "id": "1"}}),
    )
    .await;
    assert_eq!(body, json!({"decision": true}));
}

#[tokio::test]
async fn single_evaluations_explain_on_request_and_refuse_what_they_cannot_mean() {
    let app = todo_app(|_| {}).await;
    let question = |extra: Value| {
        let mut q = json!({"subject": {"type": "user", "id": MORTY},
                           "action": {"name": "can_update_todo"}});
        q["resource"] = todo_of("morty")["resource"].clone();
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                q[k] = v;
            }
        }
        q
    };
    let (status, body) = post(&app, "/access/v1/evaluation", question(json!({}))).await;
    assert_eq!((status, body), (200, json!({"decision": true})));
    let (_, body) = post(
        &app,
        "/access/v1/evaluation",
        question(json!({"options": {"explain": true}})),
    )
    .await;
    assert_eq!(body["decision"], true);
    assert_eq!(body["context"]["reasons"], json!(["editor-update-own"]));
    assert_eq!(body["context"]["revision"]["generation"], 1);

    for (extra, field) in [
        (json!({"action": {"name": "fly"}}), "action.name"),
        (
            json!({"action": {"name": "can_update_todo", "properties": {"m": "PUT"}}}),
            "action.properties",
        ),
        (json!({"subject": {"type": "user"}}), "subject.id"),
        (json!({"subject": {"type": "robot", "id": "r"}}), "subject"),
        (
            json!({"resource": {"type": "todo", "id": "1", "properties": {"ownerID": 7}}}),
            "resource.properties",
        ),
    ] {
        let (status, body) = post(&app, "/access/v1/evaluation", question(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{extra}: {message}");
    }
}

#[tokio::test]
async fn the_metadata_is_open_and_the_api_needs_a_decide_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("examples/authzen/todo");
    for sub in ["schema", "entities", "policies"] {
        copy(&pack.join(sub), &dir.path().join(sub));
    }
    let data = dir.path().join("data").join("cedard.redb");
    std::fs::create_dir_all(data.parent().expect("folder")).expect("mkdir");
    let (decide_key, manage_key) = {
        let store = cedard::store::Store::open(&data).expect("open store");
        let d = cedard::keys::generate("pep", &[cedard::keys::Scope::Decide], 1).expect("key");
        let m = cedard::keys::generate("ops", &[cedard::keys::Scope::Manage], 1).expect("key");
        store
            .write(|w| {
                w.create_key(&d.record)?;
                w.create_key(&m.record)
            })
            .expect("store keys");
        (d.secret, m.secret)
    };
    let entities = dir.path().join("entities");
    let app = spawn_app_in(dir, move |c| {
        c.options.policy.entities = Some(entities);
        c.options.public_url = Some("https://pdp.example.com".into());
    })
    .await;
    let (status, meta) = app.get("/.well-known/authzen-configuration").await;
    assert_eq!(status, 200);
    assert_eq!(meta["policy_decision_point"], "https://pdp.example.com");
    assert_eq!(
        meta["access_evaluation_endpoint"],
        "https://pdp.example.com/access/v1/evaluation"
    );
    assert_eq!(
        meta["search_action_endpoint"],
        "https://pdp.example.com/access/v1/search/action"
    );
    let question = json!({"subject": {"type": "user", "id": MORTY},
                          "action": {"name": "can_read_todos"},
                          "resource": {"type": "todo", "id": "1"}});
    let ask = |key: Option<String>| {
        let mut r = app
            .client
            .post(app.url("/access/v1/evaluation"))
            .header("content-type", "application/json")
            .body(question.to_string());
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(ask(None).await.expect("send").status().as_u16(), 401);
    assert_eq!(
        ask(Some(manage_key)).await.expect("send").status().as_u16(),
        403
    );
    let answer = ask(Some(decide_key)).await.expect("send");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        answer.json::<Value>().await.expect("json"),
        json!({"decision": true})
    );
}

#[tokio::test]
async fn entity_files_reload_atomically_with_the_policies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    for sub in ["policies", "schema", "entities"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::write(
        root.join("schema/docs.cedarschema"),
        "entity Person; entity Doc { owner: String, public?: Bool };\n\
         action read appliesTo { principal: Person, resource: Doc };\n",
    )
    .expect("write schema");
    std::fs::write(
        root.join("policies/owner.cedar"),
        "@id(\"owner-reads\")\npermit (principal, action == Action::\"read\", resource)\n  when { resource.owner == \"ann\" };\n",
    )
    .expect("write policy");
    let doc = |owner: &str, public: Option<bool>| {
        let mut attrs = json!({"owner": owner});
        if let Some(p) = public {
            attrs["public"] = json!(p);
        }
        json!([{"uid": {"type": "Doc", "id": "d1"}, "attrs": attrs, "parents": []}]).to_string()
    };
    std::fs::write(root.join("entities/docs.json"), doc("ann", None)).expect("write entities");
    let entities = root.join("entities");
    let app = spawn_app_in(dir, move |c| {
        // The two files of one save are written back to back; the settle
        // interval is what makes them one change (`--settle-ms`). A second,
        // so that a test thread descheduled on a loaded machine between the
        // two writes still makes one save.
        c.options.policy.entities = Some(entities);
        c.options.settle_ms = 1000;
    })
    .await;
    let root = app.dir.path().to_path_buf();
    let read = || {
        post(
            &app,
            "/access/v1/evaluation",
            json!({"subject": {"type": "Person", "id": "p"}, "action": {"name": "read"},
                   "resource": {"type": "Doc", "id": "d1"}}),
        )
    };
    assert_eq!(read().await.1, json!({"decision": true}));

    // A bad entity file changes nothing and is reported with its file,
    // line and index.
    std::fs::write(
        root.join("entities/docs.json"),
        "[\n  {\"uid\": {\"type\": \"Doc\", \"id\": \"d1\"}, \"attrs\": {\"owner\": 7}, \"parents\": []}\n]\n",
    )
    .expect("write");
    wait_until(DEADLINE, || async {
        let (_, body) = app.get("/v1/policies").await;
        body["last_reload"]["ok"] == false
    })
    .await;
    let (_, listing) = app.get("/v1/policies").await;
    let error = &listing["last_reload"]["errors"][0];
    assert!(
        error["file"].as_str().unwrap_or("").ends_with("docs.json"),
        "{listing}"
    );
    assert_eq!(error["line"], 2, "{listing}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("entities[0]: "),
        "{listing}"
    );
    assert_eq!(read().await.1, json!({"decision": true}));
    assert_eq!(app.generation().await, 1);

    // A new entity file saved with a policy that does not validate: neither
    // applies.
    std::fs::write(root.join("entities/docs.json"), doc("bob", Some(true))).expect("write");
    std::fs::write(
        root.join("policies/public.cedar"),
        "permit (principal, action == Action::\"read\", resource) when { resource.public };\n",
    )
    .expect("write");
    wait_until(DEADLINE, || async {
        let (_, body) = app.get("/v1/policies").await;
        body["last_reload"]["ok"] == false
            && body["last_reload"]["errors"][0]["file"] == "public.cedar"
    })
    .await;
    assert_eq!(
        read().await.1,
        json!({"decision": true}),
        "the new owner applied alone"
    );

    assert_eq!(app.generation().await, 1);

    // Fixed (saved by rename, as editors do): both apply together; bob owns
    // d1 now, and it is public.
    std::fs::write(
        root.join("public.cedar.tmp"),
        "@id(\"public-reads\")\npermit (principal, action == Action::\"read\", resource)\n  when { resource has public && resource.public };\n",
    )
    .expect("write");
    std::fs::rename(
        root.join("public.cedar.tmp"),
        root.join("policies/public.cedar"),
    )
    .expect("rename");
    wait_until(DEADLINE, || async { app.generation().await == 2 }).await;
    let (_, body) = post(
        &app,
        "/access/v1/evaluation",
        json!({"subject": {"type": "Person", "id": "p"}, "action": {"name": "read"},
               "resource": {"type": "Doc", "id": "d1"}, "options": {"explain": true}}),
    )
    .await;
    assert_eq!(body["decision"], true);
    assert_eq!(body["context"]["reasons"], json!(["public-reads"]));
    // A request cannot redefine an entity of the data files: AuthZEN
    // properties of one are left out, and said to be.
    let (status, body) = post(
        &app,
        "/access/v1/evaluation",
        json!({"subject": {"type": "Person", "id": "p"}, "action": {"name": "read"},
               "resource": {"type": "Doc", "id": "d1", "properties": {"owner": "ann"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], true, "{body}");
    assert_eq!(
        body["context"]["ignored"][0]["field"],
        "resource.properties"
    );
    // cedard's own API refuses it, naming the file.
    let (status, body) = post(
        &app,
        "/v1/is_authorized",
        json!({"principal": {"type": "Person", "id": "p"}, "action": {"type": "Action", "id": "read"},
               "resource": {"type": "Doc", "id": "d1"},
               "entities": [{"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": "ann"}, "parents": []}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("entity data file"),
        "{body}"
    );
}

#[test]
fn a_data_file_may_not_define_what_cedard_stores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users.json");
    std::fs::write(
        &file,
        r#"[{"uid": {"type": "User", "id": "mallory"}, "attrs": {"email": "m@example.com"}, "parents": [{"type": "Role", "id": "acme/admin"}]}]"#,
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("validate")
        .arg("--entities")
        .arg(&file)
        .current_dir(repo_root())
        .output()
        .expect("run cedard validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("users.json:1:2: entities[0]"), "{stderr}");
    assert!(stderr.contains("which cedard stores"), "{stderr}");
}

/// "Receivers MUST ignore unknown fields present in request or response
/// bodies" (AuthZEN 1.0, Transport): a field cedard does not know, at any
/// level of any AuthZEN body, changes nothing.
#[tokio::test]
async fn unknown_fields_are_ignored_at_every_level() {
    let app = todo_app(|_| {}).await;
    let subject = json!({"type": "user", "id": MORTY, "_note": "a runner's note"});
    let evaluation = json!({
        "subject": subject,
        "action": {"name": "can_update_todo", "x-trace": 1},
        "resource": {"type": "todo", "id": "1", "properties": {"ownerID": "morty@the-citadel.com"}, "extra": []},
        "options": {"explain": false, "vendor_option": true},
        "request_version": "1.0",
    });
    let (status, body) = post(&app, "/access/v1/evaluation", evaluation).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"decision": true})),
        "{body}"
    );

    let evaluations = json!({
        "subject": subject,
        "action": {"name": "can_update_todo"},
        "evaluations": [{"resource": {"type": "todo", "id": "1",
                          "properties": {"ownerID": "morty@the-citadel.com"}}, "label": "mine"}],
        "options": {"evaluations_semantic": "execute_all", "unknown": 1},
        "trace_id": "abc",
    });
    let (status, body) = post(&app, "/access/v1/evaluations", evaluations).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"evaluations": [{"decision": true}]}));

    let search = json!({
        "subject": {"type": "user", "id": MORTY, "_note": "ignored"},
        "action": {"name": "can_read_todos"},
        "resource": {"type": "todo", "_note": "ignored"},
        "page": {"limit": 10, "cursor_hint": "x"},
        "what": "ever",
    });
    let (status, body) = post(&app, "/access/v1/search/resource", search).await;
    assert_ne!(status, 400, "{body}");
    assert_eq!(status, 200, "{body}");
}

/// Reads the decision log at `path` until a line for `endpoint` appears.
async fn logged_line(path: &Path, endpoint: &str) -> Value {
    for _ in 0..200 {
        let found = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["endpoint"] == endpoint);
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no decision-log line for {endpoint} in {}", path.display())
}

#[tokio::test]
async fn properties_of_a_known_entity_and_undeclared_context_are_left_out_and_noted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("decisions.jsonl");
    let logged = log.clone();
    let app = todo_app(move |c| c.options.decision_log = Some(logged)).await;
    let rick_todo =
        json!({"type": "todo", "id": "7", "properties": {"ownerID": "rick@the-citadel.com"}});
    let morty_todo = todo_of("morty")["resource"].clone();
    // Morty (an editor, from the entity data file) may update his own todo,
    // not Rick's. Claiming Rick's email in properties changes nothing:
    // cedard's facts about Morty count, the caller's do not.
    let claim = json!({"type": "user", "id": MORTY,
                       "properties": {"email": "rick@the-citadel.com", "name": "Rick"}});
    let (status, body) = post(
        &app,
        "/access/v1/evaluation",
        json!({"subject": claim, "action": {"name": "can_update_todo"}, "resource": rick_todo}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], false, "{body}");
    let notes = body["context"]["ignored"]
        .as_array()
        .expect("ignored notes");
    assert_eq!(notes.len(), 1, "{body}");
    assert_eq!(notes[0]["field"], "subject.properties");
    assert_eq!(notes[0]["names"], json!(["email", "name"]));
    assert!(
        notes[0]["why"].as_str().unwrap_or("").contains(MORTY),
        "{body}"
    );
    let line = logged_line(&log, "/access/v1/evaluation").await;
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["ignored"][0]["field"], "entities[0]", "{line}");
    assert_eq!(
        line["ignored"][0]["names"],
        json!(["email", "name"]),
        "{line}"
    );

    // A context the action does not declare: dropped, the answer the one
    // given without it, and noted.
    let (status, body) = post(
        &app,
        "/access/v1/evaluation",
        json!({"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_update_todo"},
               "resource": morty_todo, "context": {"time": "2026-12-07T10:00:00Z", "ip": "10.0.0.1"},
               "options": {"explain": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], true, "{body}");
    assert_eq!(body["context"]["reasons"], json!(["editor-update-own"]));
    assert_eq!(body["context"]["ignored"][0]["field"], "context", "{body}");
    assert_eq!(
        body["context"]["ignored"][0]["names"],
        json!(["ip", "time"])
    );

    // Evaluations name each item's notes where the item sits; an item that
    // carries nothing surplus has none.
    let (status, body) = post(
        &app,
        "/access/v1/evaluations",
        json!({"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_update_todo"},
               "evaluations": [
                   {"resource": morty_todo, "context": {"ip": "10.0.0.1"}},
                   {"subject": claim, "resource": rick_todo},
                   {"resource": morty_todo}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answers = body["evaluations"].as_array().expect("evaluations");
    assert_eq!(answers[0]["decision"], true, "{body}");
    assert_eq!(
        answers[0]["context"]["ignored"][0]["field"],
        "evaluations[0].context"
    );
    assert_eq!(answers[1]["decision"], false, "{body}");
    assert_eq!(
        answers[1]["context"]["ignored"][0]["field"],
        "evaluations[1].subject.properties"
    );
    assert_eq!(answers[2], json!({"decision": true}));

    // A search with the known subject's properties and a free-form context
    // lists what the same search lists without them, and says what it left
    // out.
    let search = |subject: Value, context: Value| {
        json!({"subject": subject, "action": {"name": "can_read_user"},
               "resource": {"type": "user"}, "context": context})
    };
    let (status, plain) = post(
        &app,
        "/access/v1/search/resource",
        search(json!({"type": "user", "id": MORTY}), json!({})),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain.get("context").is_none(), "{plain}");
    let (status, noted) = post(
        &app,
        "/access/v1/search/resource",
        search(claim.clone(), json!({"ip": "10.0.0.1"})),
    )
    .await;
    assert_eq!(status, 200, "{noted}");
    assert_eq!(noted["results"], plain["results"]);
    let fields: Vec<&Value> = noted["context"]["ignored"]
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| &n["field"])
        .collect();
    assert_eq!(
        fields,
        [&json!("subject.properties"), &json!("context")],
        "{noted}"
    );

    // cedard's own API keeps refusing both, naming the field.
    let v1 = |principal_entities: Value, context: Value| {
        json!({"principal": {"type": "user", "id": MORTY},
               "action": {"type": "Action", "id": "can_update_todo"},
               "resource": {"type": "todo", "id": "1"},
               "entities": principal_entities, "context": context})
    };
    let (status, body) = post(
        &app,
        "/v1/is_authorized",
        v1(json!([]), json!({"ip": "10.0.0.1"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("context"),
        "{body}"
    );
    let (status, body) = post(
        &app,
        "/v1/is_authorized",
        v1(
            json!([{"uid": {"type": "user", "id": MORTY}, "attrs": {"email": "x@y", "name": "X"}, "parents": []}]),
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("entities[0]"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stored_users_properties_are_left_out_and_noted() {
    let app = support::spawn_app().await;
    assert_eq!(sign_up(&app, "kim").await.0, 201);
    let asked = |properties: Value| {
        json!({"subject": {"type": "User", "id": "kim", "properties": properties},
               "action": {"name": "useAccount"},
               "resource": {"type": "Account", "id": "kim"}})
    };
    let (status, plain) = post(&app, "/access/v1/evaluation", asked(json!({}))).await;
    assert_eq!((status, &plain), (200, &json!({"decision": true})));
    let (status, body) = post(
        &app,
        "/access/v1/evaluation",
        asked(json!({"email": "someone@else.example", "email_verified": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], true, "{body}");
    assert_eq!(body["context"]["ignored"][0]["field"], "subject.properties");
    assert_eq!(
        body["context"]["ignored"][0]["names"],
        json!(["email", "email_verified"])
    );
}
