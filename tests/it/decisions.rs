//! Decisions over HTTP with inline entities: the role table of the default
//! pack, the personal account, batches, and every class of bad input.

use serde_json::{json, Value};

use crate::support::{entity, pack_policy_ids, roles, spawn_app, team_table, TEAM};

/// Actions whose resource is a Pod rather than the account.
fn on_pod(action: &str) -> bool {
    matches!(action, "connectPod" | "startPod" | "stopPod")
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

/// `User::"id"` in the roles `parents` (ids `<account>/<role>`).
fn user(id: &str, parents: &[String]) -> Value {
    let held: Vec<(&str, &str)> = parents
        .iter()
        .map(|p| p.split_once('/').expect("a role id"))
        .collect();
    entity::user(id, &held)
}

fn account(id: &str, kind: &str, owner: &str) -> Value {
    entity::account(id, id, kind, owner)
}

fn pod(id: &str, account: &str) -> Value {
    entity::pod(id, account)
}

/// The three entities a caller sends: the principal, the account, and the pod.
fn team_entities(principal: &str, role: Option<&str>) -> Value {
    let parents: Vec<String> = role.map(|r| format!("acme/{r}")).into_iter().collect();
    json!([
        user(principal, &parents),
        account("acme", "team", "owner"),
        pod("p1", "acme")
    ])
}

fn check_body(principal: &str, action: &str, account_id: &str, entities: Value) -> Value {
    let resource = if on_pod(action) {
        uid("Pod", "p1")
    } else {
        uid("Account", account_id)
    };
    json!({
        "principal": uid("User", principal),
        "action": uid("Action", action),
        "resource": resource,
        "context": {},
        "entities": entities,
    })
}

#[tokio::test]
async fn every_cell_of_the_team_role_table() {
    let app = spawn_app().await;
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for (action, row) in team_table() {
        for (col, expected) in row.iter().enumerate() {
            let (principal, role) = match roles().get(col) {
                Some(r) => (format!("{r}-member"), Some(*r)),
                None => ("stranger".to_string(), None),
            };
            let body = check_body(&principal, action, "acme", team_entities(&principal, role));
            let (status, resp) = app.post("/v1/is_authorized", &body).await;
            assert_eq!(status, 200, "{action} for {principal}: {resp}");
            cells += 1;
            let allowed = resp["decision"] == "allow";
            if allowed != *expected {
                mismatches.push(format!(
                    "{action} for {principal}: got {}",
                    resp["decision"]
                ));
            }
            if allowed {
                let reasons = resp["reasons"].as_array().expect("reasons");
                assert!(!reasons.is_empty(), "an allow names its policies: {resp}");
                assert!(reasons[0]["file"]
                    .as_str()
                    .expect("file")
                    .ends_with(".cedar"));
                assert!(reasons[0]["line"].as_u64().expect("line") >= 1);
            }
            assert_eq!(
                resp["errors"],
                json!([]),
                "{action} for {principal}: {resp}"
            );
        }
    }
    assert_eq!(cells, team_table().len() * TEAM.columns.len());
    assert!(
        mismatches.is_empty(),
        "cells differing from the seed's table: {mismatches:#?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn personal_account_owner_may_do_everything_but_manage_members() {
    let app = spawn_app().await;
    let owner = "solo";
    let entities = json!([
        user(owner, &["solo-acct/admin".to_string()]),
        account("solo-acct", "personal", owner),
        pod("p1", "solo-acct"),
    ]);
    for (action, _) in team_table() {
        let expected = !matches!(
            *action,
            "inviteMember" | "revokeInvite" | "changeMemberRole" | "removeMember"
        );
        let body = check_body(owner, action, "solo-acct", entities.clone());
        let (status, resp) = app.post("/v1/is_authorized", &body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(
            resp["decision"] == "allow",
            expected,
            "{action} for the owner: {resp}"
        );
        if !expected {
            assert_eq!(
                resp["reasons"][0]["policy_id"], "members-team-only",
                "{resp}"
            );
        }
    }
    // A user holding admin on someone else's personal account still cannot
    // convert it: only the owner may.
    let entities = json!([
        user("intruder", &["solo-acct/admin".to_string()]),
        account("solo-acct", "personal", owner),
    ]);
    let body = check_body("intruder", "convertToTeam", "solo-acct", entities);
    let (_, resp) = app.post("/v1/is_authorized", &body).await;
    assert_eq!(resp["decision"], "deny", "{resp}");
    assert_eq!(
        resp["reasons"][0]["policy_id"], "convert-owner-only",
        "{resp}"
    );
    app.stop().await;
}

#[tokio::test]
async fn string_uids_are_accepted_and_the_revision_is_reported() {
    let app = spawn_app().await;
    let body = json!({
        "principal": "User::\"dev-member\"",
        "action": "Action::\"startPod\"",
        "resource": "Pod::\"p1\"",
        "entities": team_entities("dev-member", Some("dev")),
    });
    let (status, resp) = app.post("/v1/is_authorized", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["decision"], "allow");
    assert_eq!(
        resp["reasons"],
        json!([{"policy_id": "dev", "file": "dev.cedar", "line": 3}])
    );
    assert_eq!(resp["revision"]["generation"], 1);
    assert_eq!(resp["revision"]["sha256"].as_str().expect("sha").len(), 64);
    app.stop().await;
}

#[tokio::test]
async fn batch_answers_in_order_with_shared_entities() {
    let app = spawn_app().await;
    let entities = json!([
        user("b", &["acme/basic".to_string()]),
        user("d", &["acme/dev".to_string()]),
        account("acme", "team", "owner"),
        pod("p1", "acme"),
    ]);
    let requests: Vec<Value> = [("b", "startPod", false), ("d", "startPod", true), ("b", "connectPod", true), ("d", "viewBilling", false)]
        .iter()
        .map(|(p, a, _)| json!({"principal": uid("User", p), "action": uid("Action", a), "resource": if on_pod(a) { uid("Pod", "p1") } else { uid("Account", "acme") }}))
        .collect();
    let (status, resp) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({"requests": requests, "entities": entities}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let got: Vec<&str> = resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["decision"].as_str().expect("decision"))
        .collect();
    assert_eq!(got, ["deny", "allow", "allow", "deny"]);

    // Over the limit is refused as a whole.
    let one = json!({"principal": uid("User", "b"), "action": uid("Action", "useAccount"), "resource": uid("Account", "acme")});
    let too_many: Vec<Value> = std::iter::repeat_n(one, 1001).collect();
    let (status, resp) = app
        .post("/v1/is_authorized/batch", &json!({"requests": too_many}))
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("at most 1000"),
        "{resp}"
    );

    // A bad item names its index, and nothing in the batch is answered.
    let bad = json!({"requests": [
        {"principal": uid("User", "b"), "action": uid("Action", "useAccount"), "resource": uid("Account", "acme")},
        {"principal": uid("User", "b"), "action": uid("Action", "fly"), "resource": uid("Account", "acme")},
    ]});
    let (status, resp) = app.post("/v1/is_authorized/batch", &bad).await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .expect("msg")
            .starts_with("requests[1].action"),
        "{resp}"
    );
    app.stop().await;
}

/// Each class of bad input gets a 400 in the one error shape, with a message
/// naming the field.
#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_never_an_allow() {
    let app = spawn_app().await;
    let good = check_body(
        "admin-member",
        "startPod",
        "acme",
        team_entities("admin-member", Some("admin")),
    );
    let (status, resp) = app.post("/v1/is_authorized", &good).await;
    assert_eq!(
        (status, resp["decision"].as_str()),
        (200, Some("allow")),
        "{resp}"
    );

    let with = |path: &str, value: Value| {
        let mut body = good.clone();
        body[path] = value;
        body
    };
    let mut wrong_attr = team_entities("admin-member", Some("admin"));
    wrong_attr[1]["attrs"]["kind"] = json!(7);
    let mut unknown_type = team_entities("admin-member", Some("admin"));
    unknown_type[2]["uid"]["type"] = json!("Spaceship");
    let mut missing_attr = team_entities("admin-member", Some("admin"));
    missing_attr[0]["attrs"] = json!({});
    let mut no_principal = good.clone();
    no_principal
        .as_object_mut()
        .expect("object")
        .remove("principal");

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown action",
            with("action", uid("Action", "fly")),
            "action",
        ),
        (
            "unknown principal type",
            with("principal", uid("Robot", "r2")),
            "principal",
        ),
        (
            "unknown resource type",
            with("resource", uid("Spaceship", "x")),
            "resource",
        ),
        (
            "action not for this resource type",
            with("resource", uid("Account", "acme")),
            "resource",
        ),
        (
            "action not for this principal type",
            with("principal", uid("Pod", "p1")),
            "principal",
        ),
        (
            "wrong attribute type",
            with("entities", wrong_attr),
            "entities",
        ),
        (
            "unknown entity type",
            with("entities", unknown_type),
            "entities",
        ),
        (
            "missing required attribute",
            with("entities", missing_attr),
            "entities",
        ),
        (
            "entities not an array",
            with("entities", json!({"a": 1})),
            "entities",
        ),
        (
            "context not an object",
            with("context", json!([1])),
            "context",
        ),
        (
            "undeclared context attribute",
            with("context", json!({"ip": "1.2.3.4"})),
            "context",
        ),
        (
            "malformed uid string",
            with("principal", json!("User::alice")),
            "principal",
        ),
        (
            "uid of the wrong shape",
            with("principal", json!(42)),
            "principal",
        ),
        ("missing field", no_principal, "principal"),
    ];
    for (what, body, field) in cases {
        let (status, resp) = app.post("/v1/is_authorized", &body).await;
        assert_eq!(status, 400, "{what}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{what}: message should name `{field}`: {resp}"
        );
        assert!(resp["error"]["code"].is_string(), "{what}: {resp}");
        assert!(resp.get("decision").is_none(), "{what}: {resp}");
    }

    for raw in ["{not json", "", "[]", "{\"principal\": 1,}"] {
        let (status, resp) = app.post_raw("/v1/is_authorized", raw.to_string()).await;
        assert_eq!(status, 400, "{raw:?}: {resp}");
        assert_eq!(resp["error"]["code"], "malformed_json", "{raw:?}: {resp}");
    }
    let (status, resp) = app
        .post("/v1/is_authorized", &with("extra", json!(1)))
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("extra"),
        "{resp}"
    );

    let (status, resp) = app.get("/v1/nowhere").await;
    assert_eq!(status, 404, "{resp}");
    assert_eq!(resp["error"]["code"], "not_found");

    // Errors axum answers by itself keep the one shape too.
    let (status, resp) = app.get("/v1/is_authorized").await;
    assert_eq!(status, 405, "{resp}");
    assert_eq!(resp["error"]["code"], "method_not_allowed", "{resp}");
    let huge = format!("{{\"principal\": \"{}\"}}", "x".repeat(9 * 1024 * 1024));
    let (status, resp) = app.post_raw("/v1/is_authorized", huge).await;
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"]["code"], "too_large", "{resp}");
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_policy_listing() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["revision"]["generation"], 1);
    let (status, listing) = app.get("/v1/policies").await;
    assert_eq!(status, 200);
    let policies = listing["policies"].as_array().expect("policies");
    let ids: Vec<&str> = policies
        .iter()
        .map(|p| p["id"].as_str().expect("id"))
        .collect();
    // Every policy of the pack's files, by file name, then in file order.
    let in_files = pack_policy_ids();
    assert_eq!(ids, in_files);
    assert!(ids.contains(&"members-team-only"), "{ids:?}");
    let members = &policies[2];
    assert_eq!(members["file"], "account.cedar");
    assert_eq!(members["index"], 2);
    assert_eq!(members["effect"], "forbid");
    assert_eq!(members["line"], 12);
    assert_eq!(members["annotations"]["id"], "members-team-only");
    assert_eq!(listing["last_reload"]["ok"], true);
    assert!(listing["loaded_at"].is_string());
    app.stop().await;
}
