//! The directory under attack (issue 12, findings 1–4): invites that outlive
//! their creator's rights, the role ceiling, email binding, and schema
//! reloads that would break stored data (finding 5, a damaged data file, is
//! `hardening_store.rs`). Each test reproduces what a hostile review found.

use reqwest::Method;
use serde_json::{json, Value};

use std::time::Duration;

use crate::support::{copy_pack, spawn_app, spawn_app_in, wait_until, Api, TestApp};

const DEADLINE: Duration = Duration::from_secs(20);

/// Sends `method path` as `actor` with an optional JSON body; returns the
/// status and the JSON body (`null` when empty).
async fn call(
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

async fn sign_up(app: &TestApp, id: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"id": id, "email": format!("{id}@example.com")})),
    )
    .await
}

async fn invite(app: &TestApp, actor: &str, account: &str, body: Value) -> (u16, Value) {
    call(
        app,
        Method::POST,
        &format!("/v1/accounts/{account}/invites"),
        Some(actor),
        Some(body),
    )
    .await
}

async fn accept(app: &TestApp, actor: &str, token: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        "/v1/invites/accept",
        Some(actor),
        Some(json!({"token": token})),
    )
    .await
}

async fn set_role(app: &TestApp, actor: &str, account: &str, user: &str, role: &str) -> u16 {
    call(
        app,
        Method::PUT,
        &format!("/v1/accounts/{account}/members/{user}"),
        Some(actor),
        Some(json!({"role": role})),
    )
    .await
    .0
}

fn token_of(body: &Value) -> String {
    body["token"].as_str().expect("token").to_owned()
}

/// Signs up `owner` and converts their account into a team.
async fn team(app: &TestApp, owner: &str) -> String {
    assert_eq!(sign_up(app, owner).await.0, 201);
    let (status, body) = call(
        app,
        Method::POST,
        &format!("/v1/accounts/{owner}/convert"),
        Some(owner),
        Some(json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    owner.to_owned()
}

/// Signs `user` up and has `inviter` invite them with `role`; they accept.
async fn join(app: &TestApp, inviter: &str, account: &str, user: &str, role: &str) {
    let (status, body) = sign_up(app, user).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = invite(app, inviter, account, json!({"role": role})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = accept(app, user, &token_of(&body)).await;
    assert_eq!(status, 200, "{body}");
}

/// Finding 2: a one-line policy delegating invites and role changes to devs
/// must not let a dev mint admins or demote the owner.
#[tokio::test]
async fn a_delegated_inviter_grants_only_roles_at_or_below_their_own() {
    let dir = copy_pack();
    std::fs::write(
        dir.path().join("policies/delegate.cedar"),
        "// Devs may invite and change roles too.\n@id(\"dev-invites\")\n\
         permit (principal, action in [Action::\"inviteMember\", Action::\"changeMemberRole\"], resource)\n\
         when { principal in resource.account.roles.dev };\n",
    )
    .expect("write delegate.cedar");
    let app = spawn_app_in(dir, |_| {}).await;
    let acme = team(&app, "alice").await;
    join(&app, "alice", &acme, "dave", "dev").await;

    // The dev invites at or below their own role…
    for role in ["basic", "dev"] {
        let (status, body) = invite(&app, "dave", &acme, json!({"role": role})).await;
        assert_eq!(status, 201, "dave invites {role}: {body}");
    }
    // …but not above it, nor beside it.
    for role in ["admin", "billing"] {
        let (status, body) = invite(&app, "dave", &acme, json!({"role": role})).await;
        assert_eq!(status, 403, "dave invites {role}: {body}");
        assert_eq!(body["error"]["reasons"][0]["policy_id"], "role-ceiling");
    }
    // The dev cannot demote the owner, nor promote anyone above dev.
    assert_eq!(set_role(&app, "dave", &acme, "alice", "basic").await, 403);
    join(&app, "dave", &acme, "bob", "basic").await;
    assert_eq!(set_role(&app, "dave", &acme, "bob", "admin").await, 403);
    assert_eq!(set_role(&app, "dave", &acme, "bob", "dev").await, 200);
    assert_eq!(set_role(&app, "dave", &acme, "bob", "basic").await, 200);
    // The admin grants anything.
    let (status, body) = invite(&app, "alice", &acme, json!({"role": "admin"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(set_role(&app, "alice", &acme, "bob", "billing").await, 200);
    // The policies see the role through the declared context.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": {"type": "User", "id": "dave"},
                "action": {"type": "Action", "id": "inviteMember"},
                "resource": {"type": "Account", "id": "alice"},
                "context": {"role": "admin"},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "deny");
    app.stop().await;
}

/// Finding 1: an admin creates a long-lived admin invite, is removed, and
/// must not get back in with it; a demoted creator's invites die too.
#[tokio::test]
async fn an_invite_dies_with_its_creators_rights() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    join(&app, "alice", &acme, "bob", "admin").await;
    join(&app, "alice", &acme, "carol", "admin").await;
    assert_eq!(sign_up(&app, "dave").await.0, 201);

    let (status, bobs) = invite(
        &app,
        "bob",
        &acme,
        json!({"role": "admin", "expires_in_hours": 8760}),
    )
    .await;
    assert_eq!(status, 201, "{bobs}");
    let (status, carols) = invite(&app, "carol", &acme, json!({"role": "admin"})).await;
    assert_eq!(status, 201, "{carols}");
    let (status, alices) = invite(&app, "alice", &acme, json!({"role": "dev"})).await;
    assert_eq!(status, 201, "{alices}");

    // Bob is removed, carol demoted.
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/{acme}/members/bob"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(set_role(&app, "alice", &acme, "carol", "basic").await, 200);

    // The listing says which invites can no longer be accepted, and why.
    let (status, list) = call(
        &app,
        Method::GET,
        &format!("/v1/accounts/{acme}/invites"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let by_id = |id: &Value| -> Value {
        list.as_array()
            .expect("array")
            .iter()
            .find(|i| &i["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_id(&bobs["id"])["status"], "dead", "{list}");
    assert_eq!(by_id(&bobs["id"])["dead_reason"], "creator_cannot_grant");
    assert_eq!(by_id(&carols["id"])["status"], "dead", "{list}");
    assert_eq!(by_id(&alices["id"])["status"], "pending", "{list}");

    // Bob's own invite does not bring him back; carol's is dead for dave.
    let (status, gone) = accept(&app, "bob", &token_of(&bobs)).await;
    assert_eq!(status, 410, "{gone}");
    let (_, unknown) = accept(&app, "bob", "made-up").await;
    assert_eq!(gone, unknown, "a dead invite answers like any dead link");
    let (status, body) = accept(&app, "dave", &token_of(&carols)).await;
    assert_eq!(status, 410, "{body}");
    let (status, body) = call(&app, Method::GET, "/v1/users/bob", Some("bob"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["memberships"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    // The live creator's invite still works.
    let (status, body) = accept(&app, "dave", &token_of(&alices)).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

async fn sign_up_with(app: &TestApp, body: Value) -> (u16, Value) {
    call(app, Method::POST, "/v1/users", None, Some(body)).await
}

/// Finding 3: anyone could sign up as `CEO@corp.com` and take an invite
/// bound to `ceo@corp.com`. Emails are stored normalised and unique, and a
/// bound invite needs that email verified.
#[tokio::test]
async fn an_email_bound_invite_needs_that_email_verified() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    let (status, body) = sign_up_with(&app, json!({"id": "ceo", "email": " CEO@Corp.com "})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["email"], "ceo@corp.com");
    assert_eq!(body["user"]["email_verified"], false);
    // The same address, in any case, is taken.
    for email in ["ceo@corp.com", "CEO@corp.com"] {
        let (status, body) = sign_up_with(&app, json!({"id": "mallory", "email": email})).await;
        assert_eq!(status, 409, "{email}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("ceo@corp.com"));
    }

    // The invite is bound to the normalised address.
    let (status, bound) = invite(
        &app,
        "alice",
        &acme,
        json!({"role": "billing", "email": "CEO@corp.COM"}),
    )
    .await;
    assert_eq!(status, 201, "{bound}");
    assert_eq!(bound["email"], "ceo@corp.com");
    // Unverified: refused, and the invite stays pending.
    let (status, body) = accept(&app, "ceo", &token_of(&bound)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("verified"));
    // Only a manage caller states that the product verified it.
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/users/ceo/email_verified",
        None,
        Some(json!({"email_verified": "yes"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/users/nobody/email_verified",
        None,
        Some(json!({"email_verified": true})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/users/ceo/email_verified",
        None,
        Some(json!({"email_verified": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email_verified"], true);
    let (status, body) = accept(&app, "ceo", &token_of(&bound)).await;
    assert_eq!(status, 200, "{body}");

    // A verified user with another address is refused too; one signed up
    // verified with the bound address joins.
    let (status, _) = sign_up_with(
        &app,
        json!({"id": "cfo", "email": "cfo@corp.com", "email_verified": true}),
    )
    .await;
    assert_eq!(status, 201);
    let (_, bound) = invite(
        &app,
        "alice",
        &acme,
        json!({"role": "billing", "email": "treasurer@corp.com"}),
    )
    .await;
    let (status, body) = accept(&app, "cfo", &token_of(&bound)).await;
    assert_eq!(status, 403, "{body}");
    let (_, bound) = invite(
        &app,
        "alice",
        &acme,
        json!({"role": "billing", "email": "CFO@corp.com"}),
    )
    .await;
    let (status, body) = accept(&app, "cfo", &token_of(&bound)).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// Finding 3, for files written before emails were unique: opening one
/// normalises and indexes the stored emails, in one transaction.
#[test]
fn a_format_2_file_gets_its_emails_normalised_and_indexed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("old.redb");
    {
        let db = redb::Database::create(&data).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .expect("meta");
            meta.insert("format", 2).expect("insert");
            let mut users = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("users"))
                .expect("users");
            for (id, email) in [("ann", " Ann@Example.com "), ("bea", "bea@example.com")] {
                let record = json!({"id": id, "email": email, "created_at": 0}).to_string();
                users.insert(id, record.as_bytes()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let store = cedard::store::Store::open(&data).expect("the old file opens");
    let ann = store
        .read()
        .expect("read")
        .user("ann")
        .expect("user")
        .expect("ann");
    assert_eq!(ann.email, "ann@example.com");
    assert!(!ann.email_verified);
    let taken = store.write(|w| {
        w.sign_up(
            &cedard::store::User {
                id: "mallory".into(),
                email: "ann@example.com".into(),
                email_verified: false,
                name: None,
                created_at: 0,
            },
            "admin",
        )
    });
    assert!(
        matches!(
            taken,
            Err(cedard::store::WriteError::Refused(
                cedard::store::Refusal::EmailTaken(_)
            ))
        ),
        "{taken:?}"
    );
}

/// Whether `user` may `action` on `account`, from the stored facts.
async fn allowed(app: &TestApp, user: &str, action: &str, account: &str) -> Value {
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": {"type": "User", "id": user},
                "action": {"type": "Action", "id": action},
                "resource": {"type": "Account", "id": account},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["decision"].clone()
}

/// Writes `files` (path under the pack → text) and waits until a reload
/// attempt was refused with an error containing `expect`; returns the
/// errors.
async fn refused_reload(app: &TestApp, files: &[(&str, String)], expect: &str) -> String {
    for (path, text) in files {
        std::fs::write(app.dir.path().join(path), text).expect("write");
    }
    wait_until(DEADLINE, || async {
        let (_, listing) = app.get("/v1/policies").await;
        listing["last_reload"]["ok"] == false
            && listing["last_reload"]["errors"]
                .to_string()
                .contains(expect)
    })
    .await;
    let (_, listing) = app.get("/v1/policies").await;
    assert_eq!(listing["revision"]["generation"], 1, "{listing}");
    listing["last_reload"]["errors"].to_string()
}

/// Finding 4: a schema edit that no longer fits the stored data (a renamed
/// role, a new required attribute) was accepted with `ok: true`. It is
/// refused, saying what no longer fits and how many records, and the old set
/// keeps serving.
#[tokio::test]
async fn a_reload_that_would_break_stored_data_is_refused() {
    let app = spawn_app().await;
    let acme = team(&app, "alice").await;
    join(&app, "alice", &acme, "dave", "dev").await;
    join(&app, "alice", &acme, "erin", "dev").await;
    let (status, pending) = invite(&app, "alice", &acme, json!({"role": "dev"})).await;
    assert_eq!(status, 201, "{pending}");
    let schema =
        std::fs::read_to_string(app.dir.path().join("schema/teams.cedarschema")).expect("schema");
    let pack = |path: &str| std::fs::read_to_string(app.dir.path().join(path)).expect("read");

    // Rename `dev` to `developer`, policies included: a valid set, but two
    // members and one pending invite hold `dev`.
    let errors = refused_reload(
        &app,
        &[
            (
                "schema/teams.cedarschema",
                schema.replace("    dev: Role,", "    developer: Role,"),
            ),
            (
                "policies/dev.cedar",
                pack("policies/dev.cedar").replace("roles.dev", "roles.developer"),
            ),
            (
                "policies/grants.cedar",
                pack("policies/grants.cedar").replace("roles.dev", "roles.developer"),
            ),
        ],
        "hold the role `dev`",
    )
    .await;
    assert!(
        errors.contains("2 members and 1 pending invite hold the role `dev`"),
        "{errors}"
    );
    assert_eq!(allowed(&app, "dave", "createPod", &acme).await, "allow");
    let (status, body) = accept(&app, "bob", &token_of(&pending)).await;
    assert_eq!(status, 403, "unknown user: {body}");
    assert_eq!(sign_up(&app, "bob").await.0, 201);
    let (status, body) = accept(&app, "bob", &token_of(&pending)).await;
    assert_eq!(status, 200, "the old set still serves: {body}");

    // A required attribute the stored users do not have (the policies as
    // they were).
    let errors = refused_reload(
        &app,
        &[
            (
                "schema/teams.cedarschema",
                schema.replace("  email: String,", "  email: String,\n  title: String,"),
            ),
            (
                "policies/dev.cedar",
                pack("policies/dev.cedar").replace("roles.developer", "roles.dev"),
            ),
            (
                "policies/grants.cedar",
                pack("policies/grants.cedar").replace("roles.developer", "roles.dev"),
            ),
        ],
        "stored users",
    )
    .await;
    assert!(errors.contains("4 stored users"), "{errors}");
    assert_eq!(allowed(&app, "dave", "createPod", &acme).await, "allow");
    app.stop().await;
}
