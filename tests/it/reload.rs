//! Hot reload with real file edits: good edits go live, broken edits change
//! nothing and are reported with file and line, multi-file edits apply all or
//! nothing, deletes and saves-by-rename work, SIGHUP and the periodic check
//! reload, and an invalid set at start-up refuses to start.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    copy_pack, entity, spawn_app, spawn_app_in, spawn_binary, wait_until, TestApp,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// A check of `action` by a member holding `role` in team account `acme`,
/// on pod `p1` or on the account.
pub(crate) fn check(role: &str, action: &str) -> Value {
    let resource = if matches!(action, "connectPod" | "startPod" | "stopPod") {
        json!({"type": "Pod", "id": "p1"})
    } else {
        json!({"type": "Account", "id": "acme"})
    };
    json!({
        "principal": {"type": "User", "id": "m"},
        "action": {"type": "Action", "id": action},
        "resource": resource,
        "entities": [
            entity::user("m", &[("acme", role)]),
            entity::account("acme", "Acme", "team", "o"),
            entity::pod("p1", "acme"),
        ],
    })
}

pub(crate) async fn decision(app: &TestApp, role: &str, action: &str) -> String {
    let (status, body) = app.post("/v1/is_authorized", &check(role, action)).await;
    assert_eq!(status, 200, "{body}");
    body["decision"].as_str().expect("decision").to_owned()
}

async fn wait_for_decision(app: &TestApp, role: &str, action: &str, want: &str) {
    wait_until(DEADLINE, || async {
        decision(app, role, action).await == want
    })
    .await;
}

/// The SHA-256 cedard computes for the files now on disk, through the same
/// library code the daemon uses.
pub(crate) fn disk_sha(app: &TestApp) -> String {
    cedard::policy::Sources {
        policies: app.policies(),
        schema: app.dir.path().join("schema"),
        ..Default::default()
    }
    .read()
    .expect("files readable")
    .sha256
}

/// Waits until the daemon has attempted to load exactly the files on disk,
/// and returns `/v1/policies`.
async fn wait_for_attempt_on_disk(app: &TestApp) -> Value {
    let want = disk_sha(app);
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["sha256"] == want.as_str()
    })
    .await;
    app.get("/v1/policies").await.1
}

/// Saves a file the way editors do: write a temporary file, then rename it.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("cedar.tmp~");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

const BASIC_WITH_BILLING: &str = r#"// Basic now also sees billing.
@id("basic")
permit (principal, action in [Action::"basic", Action::"billing"], resource)
when { principal in resource.account.roles.basic };
"#;

#[tokio::test]
async fn a_valid_edit_goes_live() {
    let app = spawn_app().await;
    assert_eq!(decision(&app, "basic", "viewBilling").await, "deny");
    std::fs::write(app.policies().join("basic.cedar"), BASIC_WITH_BILLING).expect("write");
    wait_for_decision(&app, "basic", "viewBilling", "allow").await;
    let (_, listing) = app.get("/v1/policies").await;
    assert!(
        listing["revision"]["generation"].as_u64() >= Some(2),
        "{listing}"
    );
    assert_eq!(listing["last_reload"]["ok"], true);
    assert_eq!(listing["last_reload"]["trigger"], "watch");
    app.stop().await;
}

#[tokio::test]
async fn a_broken_edit_changes_nothing_and_is_reported_with_file_and_line() {
    let app = spawn_app().await;
    // Saved as editors save (a rename), so that no load can see the file
    // truncated and empty (a valid set without `dev`) however loaded the
    // machine is.
    // A syntax error on line 4.
    save_by_rename(
        &app.policies().join("dev.cedar"),
        "// Dev\n@id(\"dev\")\npermit (principal, action, resource)\nwhen { principal in };\n",
    );
    let listing = wait_for_attempt_on_disk(&app).await;
    assert_eq!(listing["last_reload"]["ok"], false, "{listing}");
    let err = &listing["last_reload"]["errors"][0];
    assert_eq!(err["file"], "dev.cedar", "{listing}");
    assert_eq!(err["line"], 4, "{listing}");
    assert!(err["column"].as_u64().is_some(), "{listing}");
    assert_eq!(listing["revision"]["generation"], 1);
    // The old answers still stand.
    assert_eq!(decision(&app, "dev", "startPod").await, "allow");
    assert_eq!(decision(&app, "dev", "viewBilling").await, "deny");

    // A type error (the validator's, not the parser's) is refused the same way.
    save_by_rename(
        &app.policies().join("dev.cedar"),
        "@id(\"dev\")\npermit (principal, action, resource)\nwhen {\n  resource.account.nosuch\n};\n",
    );
    let listing = wait_for_attempt_on_disk(&app).await;
    assert_eq!(listing["last_reload"]["ok"], false, "{listing}");
    let err = &listing["last_reload"]["errors"][0];
    assert_eq!(
        (err["file"].as_str(), err["line"].as_u64()),
        (Some("dev.cedar"), Some(4)),
        "{listing}"
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nosuch"),
        "{listing}"
    );
    assert_eq!(decision(&app, "dev", "startPod").await, "allow");

    // A duplicate @id is refused too.
    save_by_rename(
        &app.policies().join("dev.cedar"),
        "@id(\"basic\")\npermit (principal, action, resource) when { false };\n",
    );
    let listing = wait_for_attempt_on_disk(&app).await;
    let message = listing["last_reload"]["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("duplicate policy id `basic`"), "{listing}");
    assert_eq!(listing["revision"]["generation"], 1, "{listing}");
    app.stop().await;
}

#[tokio::test]
async fn a_two_file_edit_with_one_broken_file_applies_neither() {
    let app = spawn_app().await;
    std::fs::write(
        app.policies().join("billing.cedar"),
        "permit (principal, action, resource) when {",
    )
    .expect("write");
    std::fs::write(app.policies().join("basic.cedar"), BASIC_WITH_BILLING).expect("write");
    let listing = wait_for_attempt_on_disk(&app).await;
    assert_eq!(listing["last_reload"]["ok"], false, "{listing}");
    assert_eq!(
        listing["last_reload"]["errors"][0]["file"], "billing.cedar",
        "{listing}"
    );
    assert_eq!(listing["revision"]["generation"], 1);
    assert_eq!(
        decision(&app, "basic", "viewBilling").await,
        "deny",
        "the valid half did not apply"
    );
    assert_eq!(
        decision(&app, "billing", "viewBilling").await,
        "allow",
        "the old billing policy still serves"
    );

    // Fixing the broken file applies both.
    std::fs::copy(
        cedard_pack_file("billing.cedar"),
        app.policies().join("billing.cedar"),
    )
    .expect("copy");
    wait_for_decision(&app, "basic", "viewBilling", "allow").await;
    assert!(app.generation().await >= 2);
    app.stop().await;
}

fn cedard_pack_file(name: &str) -> std::path::PathBuf {
    crate::support::repo_root().join("policies").join(name)
}

#[tokio::test]
async fn deleting_a_file_removes_its_policies() {
    let app = spawn_app().await;
    assert_eq!(decision(&app, "billing", "viewBilling").await, "allow");
    std::fs::remove_file(app.policies().join("billing.cedar")).expect("remove");
    wait_for_decision(&app, "billing", "viewBilling", "deny").await;
    let (_, listing) = app.get("/v1/policies").await;
    let files: Vec<&str> = listing["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| p["file"].as_str().expect("file"))
        .collect();
    assert!(!files.contains(&"billing.cedar"), "{listing}");
    app.stop().await;
}

#[tokio::test]
async fn a_save_by_rename_goes_live_and_editor_files_are_ignored() {
    let app = spawn_app().await;
    // Editor droppings that are not policy files must not break the set.
    std::fs::write(app.policies().join(".#dev.cedar"), "garbage {").expect("write");
    std::fs::write(app.policies().join("dev.cedar~"), "garbage {").expect("write");
    std::fs::write(app.policies().join(".dev.cedar.swp"), "garbage {").expect("write");
    std::fs::write(app.policies().join("4913"), "").expect("write");
    // Dev loses Pod management.
    save_by_rename(
        &app.policies().join("dev.cedar"),
        "@id(\"dev\")\npermit (principal, action in Action::\"basic\", resource)\nwhen { principal in resource.account.roles.dev };\n",
    );
    wait_for_decision(&app, "dev", "startPod", "deny").await;
    assert_eq!(decision(&app, "dev", "connectPod").await, "allow");
    let (_, listing) = app.get("/v1/policies").await;
    assert_eq!(listing["last_reload"]["ok"], true, "{listing}");
    assert_eq!(
        listing["policies"].as_array().expect("policies").len(),
        crate::support::pack_policy_ids().len()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_new_file_in_a_subfolder_is_loaded() {
    let app = spawn_app().await;
    let sub = app.policies().join("extra");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(sub.join("billing-sees-members.cedar"), "@id(\"billing-members\")\npermit (principal, action == Action::\"viewMembers\", resource)\nwhen { principal in resource.account.roles.billing };\n").expect("write");
    wait_for_decision(&app, "billing", "viewMembers", "allow").await;
    let (_, listing) = app.get("/v1/policies").await;
    let entry = listing["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["id"] == "billing-members")
        .cloned()
        .expect("listed");
    assert_eq!(entry["file"], "extra/billing-sees-members.cedar");
    app.stop().await;
}

#[tokio::test]
async fn the_periodic_check_catches_changes_without_file_events() {
    let app = spawn_app_in(copy_pack(), |c| {
        c.options.no_watch = true;
        c.options.poll_secs = 0.2;
    })
    .await;
    std::fs::write(app.policies().join("basic.cedar"), BASIC_WITH_BILLING).expect("write");
    wait_for_decision(&app, "basic", "viewBilling", "allow").await;
    let (_, listing) = app.get("/v1/policies").await;
    assert_eq!(listing["last_reload"]["trigger"], "poll");
    app.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_real_binary() {
    let dir = copy_pack();
    // No watcher and a one-hour check: only SIGHUP can pick up the change.
    let bin = spawn_binary(dir.path(), &["--no-watch", "--poll-secs", "3600"]).await;
    let client = reqwest::Client::new();
    let ask = || async {
        let resp = client
            .post(bin.url("/v1/is_authorized"))
            .json(&check("basic", "viewBilling"))
            .send()
            .await
            .expect("request");
        resp.json::<Value>().await.expect("json")["decision"]
            .as_str()
            .expect("decision")
            .to_owned()
    };
    assert_eq!(ask().await, "deny");
    std::fs::write(dir.path().join("policies/basic.cedar"), BASIC_WITH_BILLING).expect("write");
    // Nothing changes by itself…
    assert_eq!(ask().await, "deny");
    let pid = nix::unistd::Pid::from_raw(bin.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_until(DEADLINE, || async { ask().await == "allow" }).await;
    let listing: Value = client
        .get(bin.url("/v1/policies"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(listing["last_reload"]["trigger"], "signal");
    assert_eq!(listing["revision"]["generation"], 2);
}

#[test]
fn an_invalid_set_at_startup_refuses_to_start_and_names_file_and_line() {
    let dir = copy_pack();
    std::fs::write(
        dir.path().join("policies/admin.cedar"),
        "@id(\"admin\")\npermit (principal, action, resource)\nwhen { principal.nosuch };\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .expect("run cedard");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policies/admin.cedar:3:"), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("validate")
        .current_dir(dir.path())
        .output()
        .expect("run cedard");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policies/admin.cedar:3:8:"), "{stderr}");
}

#[test]
fn validate_accepts_the_default_pack() {
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("validate")
        .current_dir(crate::support::repo_root())
        .output()
        .expect("run cedard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("ok: {} policies", crate::support::pack_policy_ids().len());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&want),
        "{want}"
    );
}
