//! Accounts, members and invites over HTTP: the seed's story end to end, each
//! rule of the management API, policy edits that change who may invite, and
//! decisions that read the stored roles.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cedard::clock::Clock;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{
    copy_pack, entity, spawn_app, spawn_app_in, team_table, wait_until, Api, TestApp, TEAM,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// Sends `method path` as `actor` (the `X-Actor` header) with an optional
/// JSON body; returns the status and the JSON body (`null` when empty).
pub(crate) async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    actor: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let answer = Api::at(&app.client, &app.url(""))
        .call(method, path, actor, body)
        .await;
    (answer.status, answer.body)
}

pub(crate) async fn sign_up(app: &TestApp, id: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"id": id, "email": format!("{id}@example.com"), "name": id.to_uppercase()})),
    )
    .await
}

pub(crate) async fn convert(app: &TestApp, actor: &str, account: &str, name: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        &format!("/v1/accounts/{account}/convert"),
        Some(actor),
        Some(json!({"name": name})),
    )
    .await
}

pub(crate) async fn invite(app: &TestApp, actor: &str, account: &str, body: Value) -> (u16, Value) {
    call(
        app,
        Method::POST,
        &format!("/v1/accounts/{account}/invites"),
        Some(actor),
        Some(body),
    )
    .await
}

pub(crate) async fn accept(app: &TestApp, actor: &str, token: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        "/v1/invites/accept",
        Some(actor),
        Some(json!({"token": token})),
    )
    .await
}

async fn members(app: &TestApp, actor: &str, account: &str) -> Vec<(String, String)> {
    let (status, body) = call(
        app,
        Method::GET,
        &format!("/v1/accounts/{account}/members"),
        Some(actor),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("array")
        .iter()
        .map(|m| {
            (
                m["user"].as_str().expect("user").to_owned(),
                m["role"].as_str().expect("role").to_owned(),
            )
        })
        .collect()
}

fn token_of(body: &Value) -> String {
    body["token"].as_str().expect("token").to_owned()
}

/// Signs up `owner`, converts their account into a team named "Acme", and
/// returns the team's id (the owner's personal account id).
pub(crate) async fn team(app: &TestApp, owner: &str) -> String {
    assert_eq!(sign_up(app, owner).await.0, 201);
    let (status, body) = convert(app, owner, owner, "Acme").await;
    assert_eq!(status, 200, "{body}");
    owner.to_owned()
}

/// Invites `user` (signing them up) with `role` and accepts.
pub(crate) async fn join(app: &TestApp, admin: &str, account: &str, user: &str, role: &str) {
    let (status, body) = sign_up(app, user).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = invite(app, admin, account, json!({"role": role})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = accept(app, user, &token_of(&body)).await;
    assert_eq!(status, 200, "{body}");
}

fn pod(id: &str, account: &str) -> Value {
    json!({
        "uid": {"type": "Pod", "id": id},
        "attrs": {"account": {"type": "Account", "id": account}},
        "parents": [{"type": "Account", "id": account}],
    })
}

/// Asks `/v1/is_authorized` whether `user` may `action` on pod `p1` of
/// `account` (Pod actions) or on the account, sending only the Pod entity.
pub(crate) async fn decide(app: &TestApp, user: &str, action: &str, account: &str) -> Value {
    let resource = if matches!(action, "connectPod" | "startPod" | "stopPod") {
        json!({"type": "Pod", "id": format!("{account}-p1")})
    } else {
        json!({"type": "Account", "id": account})
    };
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": {"type": "User", "id": user},
                "action": {"type": "Action", "id": action},
                "resource": resource,
                "entities": [pod(&format!("{account}-p1"), account)],
            }),
        )
        .await;
    assert_eq!(status, 200, "{user} {action}: {body}");
    body
}

#[tokio::test]
async fn the_seed_story_end_to_end() {
    let app = spawn_app().await;
    // Sign-up gives a personal account whose owner holds its admin role.
    let (status, body) = sign_up(&app, "alice").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["id"], "alice");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["personal_account"]["id"], "alice");
    assert_eq!(body["personal_account"]["kind"], "personal");
    assert_eq!(body["personal_account"]["owner"], "alice");
    assert_eq!(
        members(&app, "alice", "alice").await,
        [("alice".into(), "admin".into())]
    );

    // Converting gives a team account; the owner stays its admin.
    let (status, body) = convert(&app, "alice", "alice", "Acme").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "team");
    assert_eq!(body["name"], "Acme");

    // One invite per role, each accepted by a new user.
    let people = [
        ("bob", "basic"),
        ("carol", "billing"),
        ("dave", "dev"),
        ("erin", "admin"),
    ];
    for (user, role) in people {
        assert_eq!(sign_up(&app, user).await.0, 201);
        let (status, body) = invite(&app, "alice", "alice", json!({"role": role})).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["role"], role);
        let (status, body) = accept(&app, user, &token_of(&body)).await;
        assert_eq!(status, 200, "{body}");
        let mut body = body;
        let revision = body
            .as_object_mut()
            .and_then(|m| m.remove("store_revision"));
        assert!(
            revision.is_some_and(|r| r.is_u64()),
            "a write answers its store revision"
        );
        assert_eq!(body, json!({"account": "alice", "role": role}));
    }
    assert_eq!(sign_up(&app, "mallory").await.0, 201);

    let mut listed = members(&app, "alice", "alice").await;
    listed.sort();
    let mut expected: Vec<(String, String)> = people
        .iter()
        .map(|(u, r)| (u.to_string(), r.to_string()))
        .chain([("alice".to_string(), "admin".to_string())])
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // A user sees their own memberships.
    let (status, body) = call(&app, Method::GET, "/v1/users/dave", Some("dave"), None).await;
    assert_eq!(status, 200, "{body}");
    let mut accounts: Vec<Value> = body["memberships"].as_array().expect("array").clone();
    accounts.sort_by_key(|m| m["account"].to_string());
    assert_eq!(
        accounts,
        [
            json!({"account": "alice", "role": "dev"}),
            json!({"account": "dave", "role": "admin"})
        ]
    );

    // Every decision of the table, for each member and a non-member, with
    // only the Pod sent: the roles come from the store.
    let users = [
        ("bob", "basic"),
        ("carol", "billing"),
        ("dave", "dev"),
        ("erin", "admin"),
        ("mallory", "non-member"),
        // The owner holds the admin role.
        ("alice", "admin"),
    ];
    for (action, _) in team_table() {
        for (user, column) in users {
            let body = decide(&app, user, action, "alice").await;
            let want = if TEAM.allows(action, column) {
                "allow"
            } else {
                "deny"
            };
            assert_eq!(body["decision"], want, "{user} {action}: {body}");
        }
    }

    // A personal account: its owner may do everything except the member
    // actions, and may convert it.
    for (action, _) in team_table() {
        let body = decide(&app, "bob", action, "bob").await;
        let denied = matches!(
            *action,
            "inviteMember" | "revokeInvite" | "changeMemberRole" | "removeMember"
        );
        let want = if denied { "deny" } else { "allow" };
        assert_eq!(body["decision"], want, "bob {action} on bob: {body}");
    }
    app.stop().await;
}

/// The seed's central flow as an app runs it: the app asks about a user
/// before they accept an invite (deny), the user accepts, and every later
/// answer is on the new membership at once, with no restart. Every kind of
/// change to a membership (accept, change of role, removal) reaches the
/// very next decision about that user, through `/v1` and through the
/// management API's own checks.
#[tokio::test]
async fn a_member_who_accepts_an_invite_is_allowed_at_once() {
    let app = spawn_app().await;
    assert_eq!(sign_up(&app, "kim").await.0, 201);
    assert_eq!(sign_up(&app, "lee").await.0, 201);
    let (status, body) = convert(&app, "kim", "kim", "Kim & Co").await;
    assert_eq!(status, 200, "{body}");

    // Asked before lee is a member: deny, and lee's entity is now
    // remembered.
    assert_eq!(
        decide(&app, "lee", "useAccount", "kim").await["decision"],
        "deny"
    );
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/accounts/kim/members",
        Some("lee"),
        None,
    )
    .await;
    assert_eq!(status, 403);

    let (status, body) = invite(&app, "kim", "kim", json!({"role": "basic"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = accept(&app, "lee", &token_of(&body)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["account"].as_str(), body["role"].as_str()),
        (Some("kim"), Some("basic"))
    );

    // The same questions, at once: allow.
    assert_eq!(
        decide(&app, "lee", "useAccount", "kim").await["decision"],
        "allow"
    );
    assert_eq!(
        decide(&app, "lee", "connectPod", "kim").await["decision"],
        "allow"
    );
    assert_eq!(
        decide(&app, "lee", "startPod", "kim").await["decision"],
        "deny"
    );
    assert_eq!(
        members(&app, "lee", "kim").await,
        [
            ("kim".into(), "admin".into()),
            ("lee".into(), "basic".into())
        ]
    );

    // A change of role and a removal reach the next answer as well.
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/accounts/kim/members/lee",
        Some("kim"),
        Some(json!({"role": "dev"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decide(&app, "lee", "startPod", "kim").await["decision"],
        "allow"
    );
    let (status, body) = call(
        &app,
        Method::DELETE,
        "/v1/accounts/kim/members/lee",
        Some("kim"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        decide(&app, "lee", "useAccount", "kim").await["decision"],
        "deny"
    );
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/accounts/kim/members",
        Some("lee"),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn decisions_read_stored_roles_and_refuse_owned_inline_entities() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    join(&app, "alice", &acme, "bob", "dev").await;

    // No entities at all: the principal and the account come from the store.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": "User::\"bob\"",
                "action": "Action::\"createPod\"",
                "resource": "Account::\"alice\"",
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow");
    assert_eq!(body["reasons"][0]["policy_id"], "dev");

    // An inline entity cedard stores is refused, naming the entity.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": "User::\"bob\"",
                "action": "Action::\"createPod\"",
                "resource": "Account::\"alice\"",
                "entities": [
                    pod("p9", "alice"),
                    {"uid": {"type": "User", "id": "bob"}, "attrs": {"email": "b@x.io"}, "parents": []},
                ],
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("entities[1]"), "{message}");
    assert!(message.contains("User::\"bob\""), "{message}");

    // So is an unstored user claiming a role of a stored account.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": "User::\"eve\"",
                "action": "Action::\"manageBilling\"",
                "resource": "Account::\"alice\"",
                "entities": [{
                    "uid": {"type": "User", "id": "eve"},
                    "attrs": {"email": "eve@x.io"},
                    "parents": [{"type": "Role", "id": "alice/admin"}],
                }],
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("entities[0]"), "{message}");
    assert!(message.contains("alice/admin"), "{message}");

    // And an inline stored account.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": "User::\"bob\"",
                "action": "Action::\"useAccount\"",
                "resource": "Account::\"alice\"",
                "entities": [entity::account("alice", "x", "team", "bob")],
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .starts_with("entities[0]"));

    // The batch API refuses them the same way.
    let (status, body) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({
                "requests": [{"principal": "User::\"bob\"", "action": "Action::\"startPod\"", "resource": "Pod::\"p1\""}],
                "entities": [pod("p1", "alice"), {"uid": {"type": "Role", "id": "alice/dev"}, "attrs": {}, "parents": []}],
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("entities[1]"), "{message}");

    // A batch reads the store for each request.
    let (status, body) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({
                "requests": [
                    {"principal": "User::\"bob\"", "action": "Action::\"startPod\"", "resource": "Pod::\"p1\""},
                    {"principal": "User::\"bob\"", "action": "Action::\"viewBilling\"", "resource": "Account::\"alice\""},
                    {"principal": "User::\"alice\"", "action": "Action::\"viewBilling\"", "resource": "Account::\"alice\""},
                ],
                "entities": [pod("p1", "alice")],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let decisions: Vec<&Value> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["decision"])
        .collect();
    assert_eq!(
        decisions,
        [&json!("allow"), &json!("deny"), &json!("allow")]
    );

    // Removing a member takes effect on the next decision.
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/accounts/alice/members/bob",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let body = decide(&app, "bob", "startPod", "alice").await;
    assert_eq!(body["decision"], "deny");
    app.stop().await;
}

#[tokio::test]
async fn editing_admin_policy_stops_invites_without_restart() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    let (status, body) = invite(&app, "alice", &acme, json!({"role": "basic"})).await;
    assert_eq!(status, 201, "{body}");

    // Admins keep everything except inviting.
    std::fs::write(
        app.policies().join("admin.cedar"),
        "// Admin role: everything on its own account except inviting.\n\
         @id(\"admin\")\n\
         permit (principal, action, resource)\n\
         when { principal in resource.account.roles.admin }\n\
         unless { action == Action::\"inviteMember\" };\n",
    )
    .expect("write admin.cedar");
    wait_until(DEADLINE, || async {
        invite(&app, "alice", &acme, json!({"role": "basic"}))
            .await
            .0
            == 403
    })
    .await;
    let (status, body) = invite(&app, "alice", &acme, json!({"role": "basic"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("inviteMember"));
    // Listing invites is checked with the same action.
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/accounts/alice/invites",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Everything else an admin does still works.
    assert_eq!(members(&app, "alice", &acme).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn sign_up_rules() {
    let app = spawn_app().await;
    let long = "a".repeat(129);
    for (body, field) in [
        (json!({"id": "", "email": "a@b.io"}), "id"),
        (json!({"id": "a/b", "email": "a@b.io"}), "id"),
        (json!({"id": "a b", "email": "a@b.io"}), "id"),
        (json!({"id": long, "email": "a@b.io"}), "id"),
        (json!({"id": "ann", "email": "not-an-email"}), "email"),
        (json!({"id": "ann", "email": "a@b"}), "email"),
        (json!({"id": "ann", "email": "a @b.io"}), "email"),
        (json!({"id": "ann", "email": "a@b.io", "name": ""}), "name"),
        (
            json!({"id": "ann", "email": "a@b.io", "name": "n".repeat(101)}),
            "name",
        ),
        (json!({"id": "ann"}), "email"),
        (json!({"email": "a@b.io"}), "id"),
        (
            json!({"id": "ann", "email": "a@b.io", "admin": true}),
            "admin",
        ),
        (json!({"id": 7, "email": "a@b.io"}), "id"),
    ] {
        let (status, resp) = call(&app, Method::POST, "/v1/users", None, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {resp}");
        let message = resp["error"]["message"].as_str().expect("message");
        assert!(message.contains(field), "{body}: {message}");
    }
    let ok = "a.B_c-1@d".to_string() + &"x".repeat(119);
    assert_eq!(ok.len(), 128);
    let body = json!({"id": ok, "email": "long@example.com"});
    assert_eq!(
        call(&app, Method::POST, "/v1/users", None, Some(body))
            .await
            .0,
        201
    );
    assert_eq!(sign_up(&app, "ann").await.0, 201);
    let (status, body) = sign_up(&app, "ann").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("`ann`"));
    let (status, _) = call(&app, Method::POST, "/v1/users", None, Some(json!("nope"))).await;
    assert_eq!(status, 400);

    // Reading a user: only that user.
    let (status, body) = call(&app, Method::GET, "/v1/users/ann", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, body) = call(&app, Method::GET, "/v1/users/ann", Some("ghost"), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("ghost"));
    assert_eq!(sign_up(&app, "ben").await.0, 201);
    let (status, _) = call(&app, Method::GET, "/v1/users/ann", Some("ben"), None).await;
    assert_eq!(status, 403);
    let (status, body) = call(&app, Method::GET, "/v1/users/ann", Some("ann"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["name"], "ANN");
    assert_eq!(
        body["memberships"],
        json!([{"account": "ann", "role": "admin"}])
    );
    app.stop().await;
}

#[tokio::test]
async fn convert_rules() {
    let app = spawn_app().await;
    assert_eq!(sign_up(&app, "alice").await.0, 201);
    assert_eq!(sign_up(&app, "bob").await.0, 201);
    for name in [json!(""), json!("   "), json!("n".repeat(101))] {
        let (status, body) = call(
            &app,
            Method::POST,
            "/v1/accounts/alice/convert",
            Some("alice"),
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("name"));
    }
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/accounts/alice/convert",
        Some("alice"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Only the owner may convert.
    let (status, body) = convert(&app, "bob", "alice", "Acme").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = convert(&app, "alice", "alice", "Acme").await;
    assert_eq!(status, 200, "{body}");
    // A team account stays a team: the policy forbids it, with its reason.
    let (status, body) = convert(&app, "alice", "alice", "Again").await;
    assert_eq!(status, 403, "{body}");
    let reasons: Vec<&str> = body["error"]["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["policy_id"].as_str().expect("id"))
        .collect();
    assert_eq!(reasons, ["convert-personal-only"]);
    let (status, body) = call(&app, Method::GET, "/v1/accounts/alice", Some("alice"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "Acme");
    assert_eq!(body["kind"], "team");
    // Without the policy's forbid, the rule still holds (409).
    std::fs::remove_file(app.policies().join("account.cedar")).expect("remove");
    std::fs::write(
        app.policies().join("account.cedar"),
        "// Anyone holding admin may convert.\n@id(\"noop\")\nforbid (principal, action, resource) when { false };\n",
    )
    .expect("write");
    wait_until(DEADLINE, || async {
        convert(&app, "alice", "alice", "Again").await.0 != 403
    })
    .await;
    let (status, body) = convert(&app, "alice", "alice", "Again").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("already a team"));
    app.stop().await;
}

#[tokio::test]
async fn invite_rules() {
    let app = spawn_app_in(copy_pack(), |c| {
        c.options.public_url = Some("https://cedard.example.com/".into())
    })
    .await;
    assert_eq!(sign_up(&app, "alice").await.0, 201);
    assert_eq!(sign_up(&app, "bob").await.0, 201);
    // A personal account: the policy forbids, with its reason.
    let (status, body) = invite(&app, "alice", "alice", json!({"role": "dev"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["reasons"][0]["policy_id"],
        "members-team-only"
    );
    assert_eq!(convert(&app, "alice", "alice", "Acme").await.0, 200);

    for (body, field) in [
        (json!({"role": "owner"}), "role"),
        (json!({}), "role"),
        (json!({"role": "dev", "email": "nope"}), "email"),
        (
            json!({"role": "dev", "expires_in_hours": 0}),
            "expires_in_hours",
        ),
        (
            json!({"role": "dev", "expires_in_hours": 9000}),
            "expires_in_hours",
        ),
        (
            json!({"role": "dev", "expires_in_hours": "soon"}),
            "expires_in_hours",
        ),
    ] {
        let (status, resp) = invite(&app, "alice", "alice", body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .expect("message")
                .contains(field),
            "{resp}"
        );
    }
    // Only admins may invite; an actor is required and must exist.
    let (status, body) = invite(&app, "bob", "alice", json!({"role": "dev"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/accounts/alice/invites",
        None,
        Some(json!({"role": "dev"})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = invite(&app, "ghost", "alice", json!({"role": "dev"})).await;
    assert_eq!(status, 403);

    let (status, created) = invite(&app, "alice", "alice", json!({"role": "dev"})).await;
    assert_eq!(status, 201, "{created}");
    let token = token_of(&created);
    assert!(
        token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    assert_eq!(
        created["link"],
        format!("https://cedard.example.com/invites/{token}")
    );
    assert_eq!(created["email"], Value::Null);
    // Pending invites are listed without secrets.
    let (status, listed) = call(
        &app,
        Method::GET,
        "/v1/accounts/alice/invites",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().expect("array").len(), 1);
    assert_eq!(listed[0]["id"], created["id"]);
    assert_eq!(listed[0]["role"], "dev");
    assert!(!listed.to_string().contains(&token));
    assert!(listed[0].get("token").is_none() && listed[0].get("link").is_none());

    // Accept needs an actor.
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/invites/accept",
        None,
        Some(json!({"token": token})),
    )
    .await;
    assert_eq!(status, 401);
    // An existing member gets 409, and the invite stays pending.
    let (status, body) = accept(&app, "alice", &token).await;
    assert_eq!(status, 409, "{body}");
    let (_, listed) = call(
        &app,
        Method::GET,
        "/v1/accounts/alice/invites",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(listed.as_array().expect("array").len(), 1);
    let (status, _) = accept(&app, "bob", &token).await;
    assert_eq!(status, 200);
    // Used, unknown, revoked: one identical answer.
    let (used_status, used) = accept(&app, "bob", &token).await;
    let (unknown_status, unknown) = accept(&app, "bob", &"0".repeat(64)).await;
    let (empty_status, empty) = accept(&app, "bob", "").await;
    assert_eq!((used_status, unknown_status, empty_status), (410, 410, 410));
    assert_eq!(used, unknown);
    assert_eq!(used, empty);
    let (_, listed) = call(
        &app,
        Method::GET,
        "/v1/accounts/alice/invites",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(listed, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn invites_need_a_team_account_even_without_the_policy_forbid() {
    let app = spawn_app().await;
    assert_eq!(sign_up(&app, "bob").await.0, 201);
    std::fs::write(
        app.policies().join("account.cedar"),
        "// Nothing is forbidden by account kind.\n@id(\"noop\")\nforbid (principal, action, resource) when { false };\n",
    )
    .expect("write");
    wait_until(DEADLINE, || async {
        invite(&app, "bob", "bob", json!({"role": "dev"})).await.0 != 403
    })
    .await;
    let (status, body) = invite(&app, "bob", "bob", json!({"role": "dev"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("team account"));
    app.stop().await;
}

#[tokio::test]
async fn a_role_added_to_the_schema_and_a_policy_file_can_be_granted() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    assert_eq!(sign_up(&app, "olly").await.0, 201);
    let (status, body) = invite(&app, "alice", &acme, json!({"role": "ops"})).await;
    assert_eq!(status, 400, "{body}");

    // Add `ops` to `Account.roles` and a policy for it: ops may start and
    // stop Pods, nothing else.
    let schema = app.dir.path().join("schema/teams.cedarschema");
    let text = std::fs::read_to_string(&schema).expect("schema");
    let text = text.replace("    admin: Role,\n", "    admin: Role,\n    ops: Role,\n");
    std::fs::write(&schema, text).expect("write schema");
    std::fs::write(
        app.policies().join("ops.cedar"),
        "// Ops role: start and stop Pods.\n@id(\"ops\")\n\
         permit (principal, action in [Action::\"startPod\", Action::\"stopPod\"], resource)\n\
         when { principal in resource.account.roles.ops };\n",
    )
    .expect("write ops.cedar");
    wait_until(DEADLINE, || async {
        invite(&app, "alice", &acme, json!({"role": "ops"})).await.0 == 201
    })
    .await;
    let (status, body) = invite(&app, "alice", &acme, json!({"role": "ops"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(accept(&app, "olly", &token_of(&body)).await.0, 200);
    assert_eq!(
        decide(&app, "olly", "startPod", "alice").await["decision"],
        "allow"
    );
    assert_eq!(
        decide(&app, "olly", "createPod", "alice").await["decision"],
        "deny"
    );
    // The other roles still decide as before.
    assert_eq!(
        decide(&app, "alice", "createPod", "alice").await["decision"],
        "allow"
    );
    app.stop().await;
}

#[tokio::test]
async fn email_binding_relink_and_revoke() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    assert_eq!(sign_up(&app, "bob").await.0, 201);
    assert_eq!(sign_up(&app, "carol").await.0, 201);

    // Bound to carol's email: bob gets 403, carol joins.
    let (_, bound) = invite(
        &app,
        "alice",
        &acme,
        json!({"role": "billing", "email": "CAROL@example.com"}),
    )
    .await;
    assert_eq!(bound["email"], "carol@example.com");
    let (status, body) = accept(&app, "bob", &token_of(&bound)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("email"));
    // Carol's address must be verified first (by a `manage` caller).
    let (status, _) = call(
        &app,
        Method::PUT,
        "/v1/users/carol/email_verified",
        None,
        Some(json!({"email_verified": true})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = accept(&app, "carol", &token_of(&bound)).await;
    assert_eq!(status, 200, "{body}");

    // Re-link: a fresh token; the old one answers like any dead link.
    let (_, first) = invite(&app, "alice", &acme, json!({"role": "dev"})).await;
    let id = first["id"].as_str().expect("id");
    let (status, fresh) = call(
        &app,
        Method::POST,
        &format!("/v1/accounts/alice/invites/{id}/link"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["id"], first["id"]);
    assert_ne!(fresh["token"], first["token"]);
    assert!(fresh["link"]
        .as_str()
        .expect("link")
        .ends_with(&token_of(&fresh)));
    let (status, dead) = accept(&app, "bob", &token_of(&first)).await;
    assert_eq!(status, 410);
    let (_, unknown) = accept(&app, "bob", "made-up").await;
    assert_eq!(dead, unknown);
    // Only admins re-link.
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/accounts/alice/invites/{id}/link"),
        Some("carol"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = accept(&app, "bob", &token_of(&fresh)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "dev");

    // Revoke: the token stops working; revoking again is 404.
    assert_eq!(sign_up(&app, "dave").await.0, 201);
    let (_, doomed) = invite(&app, "alice", &acme, json!({"role": "basic"})).await;
    let id = doomed["id"].as_str().expect("id");
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/alice/invites/{id}"),
        Some("carol"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/alice/invites/{id}"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, revoked) = accept(&app, "dave", &token_of(&doomed)).await;
    assert_eq!(status, 410);
    assert_eq!(revoked, unknown);
    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/alice/invites/{id}"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/accounts/alice/invites/{id}/link"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn invites_expire() {
    // The daemon's clock is a test clock that can jump forward.
    let offset = Arc::new(AtomicI64::new(0));
    let skew = offset.clone();
    let app = spawn_app_in(copy_pack(), move |c| {
        c.clock = Clock::new(move || {
            time::OffsetDateTime::now_utc() + time::Duration::seconds(skew.load(Ordering::SeqCst))
        });
    })
    .await;
    let acme = team(&app, "alice").await;
    for u in ["bob", "carol", "dave"] {
        assert_eq!(sign_up(&app, u).await.0, 201);
    }
    let (_, week) = invite(&app, "alice", &acme, json!({"role": "basic"})).await;
    let (_, hour) = invite(
        &app,
        "alice",
        &acme,
        json!({"role": "dev", "expires_in_hours": 1}),
    )
    .await;
    let (_, later) = invite(
        &app,
        "alice",
        &acme,
        json!({"role": "dev", "expires_in_hours": 200}),
    )
    .await;

    // Half an hour on, the one-hour invite still works.
    offset.store(30 * 60, Ordering::SeqCst);
    let (status, _) = accept(&app, "carol", &token_of(&hour)).await;
    assert_eq!(status, 200);

    // Seven days and a minute on, the default expiry has passed.
    offset.store(7 * 24 * 3600 + 60, Ordering::SeqCst);
    let (status, expired) = accept(&app, "bob", &token_of(&week)).await;
    assert_eq!(status, 410, "{expired}");
    let (_, unknown) = accept(&app, "bob", "no-such-token").await;
    assert_eq!(expired, unknown);
    let (_, listed) = call(
        &app,
        Method::GET,
        "/v1/accounts/alice/invites",
        Some("alice"),
        None,
    )
    .await;
    let ids: Vec<&Value> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|i| &i["id"])
        .collect();
    assert_eq!(ids, [&later["id"]]);
    let (status, _) = accept(&app, "dave", &token_of(&later)).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn member_rules_and_the_last_admin() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    join(&app, "alice", &acme, "bob", "basic").await;
    assert_eq!(sign_up(&app, "zed").await.0, 201);

    let put = |actor: &'static str, user: &'static str, role: Value| {
        let app = &app;
        async move {
            call(
                app,
                Method::PUT,
                &format!("/v1/accounts/alice/members/{user}"),
                Some(actor),
                Some(json!({"role": role})),
            )
            .await
        }
    };
    // Only admins change roles; the role must be a schema role.
    assert_eq!(put("bob", "bob", json!("admin")).await.0, 403);
    let (status, body) = put("alice", "bob", json!("owner")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("`basic`"));
    assert_eq!(put("alice", "zed", json!("dev")).await.0, 404);
    // The last admin can be neither demoted nor removed.
    let (status, body) = put("alice", "alice", json!("dev")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("last"));
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/accounts/alice/members/alice",
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    // With a second admin, the first may step down.
    let (status, body) = put("alice", "bob", json!("admin")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");
    assert_eq!(put("alice", "alice", json!("billing")).await.0, 200);
    // Now alice is billing: she may no longer manage members.
    assert_eq!(put("alice", "bob", json!("dev")).await.0, 403);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/accounts/alice/members/bob",
        Some("bob"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/accounts/alice/members/alice",
        Some("bob"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/accounts/alice/members/alice",
        Some("bob"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        members(&app, "bob", &acme).await,
        [("bob".into(), "admin".into())]
    );
    // A removed member cannot see the account any more.
    let (status, _) = call(&app, Method::GET, "/v1/accounts/alice", Some("alice"), None).await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_accepts_one_joins() {
    let app = Arc::new(spawn_app().await);
    let acme = team(&app, "alice").await;
    for i in 0..50 {
        assert_eq!(sign_up(&app, &format!("u{i}")).await.0, 201);
    }
    let (_, created) = invite(&app, "alice", &acme, json!({"role": "dev"})).await;
    let token = token_of(&created);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = app.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            accept(&app, &format!("u{i}"), &token).await.0
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
    assert_eq!(members(&app, "alice", &acme).await.len(), 2);
}
