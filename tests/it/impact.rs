//! `cedard impact`: known edits to the default pack give exactly the
//! expected flips (matrix cells, replayed log decisions, suite cases), with
//! the exit status a CI gate reads; an invalid candidate is reported like
//! `cedard validate`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cedard::store::{Store, User};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{copy_dir, copy_pack, spawn_app_in};

/// The default pack in `live/{policies,schema}` and an identical candidate
/// in `candidate/{policies,schema}`, to be edited by the test (the proofs'
/// tests use it too).
pub(crate) struct Sets {
    dir: TempDir,
}

impl Sets {
    pub(crate) fn new() -> Self {
        let pack = copy_pack();
        let dir = tempfile::tempdir().expect("temp dir");
        for side in ["live", "candidate"] {
            for sub in ["policies", "schema"] {
                copy_dir(&pack.path().join(sub), &dir.path().join(side).join(sub));
            }
        }
        Self { dir }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file of the candidate.
    pub(crate) fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path("candidate").join(rel), text).expect("write candidate file");
    }

    /// Replaces `from` with `to` in every file below the candidate's `sub`.
    pub(crate) fn replace_all(&self, sub: &str, from: &str, to: &str) {
        let dir = self.path("candidate").join(sub);
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            std::fs::write(&path, text.replace(from, to)).expect("write");
        }
    }

    /// Replaces `from` with `to` in one file of the candidate, which must
    /// hold it.
    pub(crate) fn edit(&self, rel: &str, from: &str, to: &str) {
        let path = self.path("candidate").join(rel);
        let text = std::fs::read_to_string(&path).expect("read candidate file");
        assert!(text.contains(from), "{rel} has no `{from}`");
        std::fs::write(&path, text.replace(from, to)).expect("write candidate file");
    }

    /// Runs `cedard impact` on the two sets with `extra` arguments.
    pub(crate) fn impact(&self, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cedard"))
            .arg("impact")
            .args(["--policies", "live/policies", "--schema", "live/schema"])
            .args(["--candidate", "candidate/policies"])
            .args(extra)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cedard impact")
    }

    /// Runs it with `--format json` and returns the exit code and report.
    pub(crate) fn impact_json(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["--format", "json"];
        args.extend_from_slice(extra);
        let out = self.impact(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not a JSON report ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().expect("exit code"), report)
    }
}

/// The flipped cells of a report: (account, column, action, before, after).
fn cells(report: &Value) -> BTreeSet<(String, String, String, String, String)> {
    report["matrix"]
        .as_array()
        .expect("matrix flips")
        .iter()
        .map(|f| {
            let s = |v: &Value| v.as_str().expect("string").to_owned();
            (
                s(&f["account"]),
                s(&f["column"]),
                s(&f["action"]),
                s(&f["before"]["outcome"]),
                s(&f["after"]["outcome"]),
            )
        })
        .collect()
}

fn cell(
    account: &str,
    column: &str,
    action: &str,
    before: &str,
    after: &str,
) -> (String, String, String, String, String) {
    (
        account.into(),
        column.into(),
        action.into(),
        before.into(),
        after.into(),
    )
}

const NO_STOP: &str = r#"// Devs may no longer stop Pods.
@id("devs-no-stop")
forbid (principal, action == Action::"stopPod", resource)
when { principal in resource.account.roles.dev };
"#;

#[test]
fn an_unchanged_candidate_flips_nothing_and_exits_0() {
    let sets = Sets::new();
    let out = sets.impact(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("matrix: no cell flips"), "{stdout}");
}

#[test]
fn a_new_forbid_flips_the_dev_stop_pod_cells_with_their_policies() {
    let sets = Sets::new();
    sets.write("policies/no-stop.cedar", NO_STOP);
    let (code, report) = sets.impact_json(&[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        cells(&report),
        BTreeSet::from([
            cell("team", "dev", "stopPod", "allow", "deny"),
            cell("personal", "dev", "stopPod", "allow", "deny"),
        ])
    );
    for flip in report["matrix"].as_array().expect("flips") {
        assert_eq!(flip["before"]["policies"], json!(["dev"]));
        assert_eq!(flip["after"]["policies"], json!(["devs-no-stop"]));
    }
    // The text report names the cell and the deciding policies.
    let text = String::from_utf8_lossy(&sets.impact(&[]).stdout).into_owned();
    assert!(
        text.contains("team account, dev, stopPod: allow [dev] -> deny [devs-no-stop]"),
        "{text}"
    );
}

#[test]
fn a_widened_permit_flips_billing_use_account() {
    let sets = Sets::new();
    sets.replace_all(
        "policies",
        r#"action in Action::"billing","#,
        r#"action in [Action::"billing", Action::"useAccount"],"#,
    );
    let (code, report) = sets.impact_json(&[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        cells(&report),
        BTreeSet::from([
            cell("team", "billing", "useAccount", "deny", "allow"),
            cell("personal", "billing", "useAccount", "deny", "allow"),
        ])
    );
    let flip = &report["matrix"][0];
    assert_eq!(flip["before"]["policies"], json!([]));
    assert_eq!(flip["after"]["policies"], json!(["billing"]));
}

#[test]
fn a_renamed_role_moves_every_dev_allow_to_the_new_column() {
    let sets = Sets::new();
    // Schema and policies together: `dev` becomes `developer`.
    sets.replace_all("schema", "dev: Role", "developer: Role");
    sets.replace_all("policies", "roles.dev", "roles.developer");
    sets.replace_all("policies", "\"dev\"", "\"developer\"");
    let (code, report) = sets.impact_json(&["--candidate-schema", "candidate/schema"]);
    assert_eq!(code, 1, "{report:#}");
    let dev_allows = [
        "useAccount",
        "viewMembers",
        "connectPod",
        "startPod",
        "stopPod",
        "createPod",
    ];
    let mut expected = BTreeSet::new();
    for account in ["team", "personal"] {
        for action in dev_allows {
            expected.insert(cell(account, "dev", action, "allow", "deny"));
            expected.insert(cell(account, "developer", action, "deny", "allow"));
        }
    }
    assert_eq!(cells(&report), expected);
    let gone = report["matrix"]
        .as_array()
        .expect("flips")
        .iter()
        .find(|f| f["column"] == "dev")
        .expect("a dev cell");
    assert_eq!(gone["after"]["note"], "no role `dev` in this set");
}

#[test]
fn an_invalid_candidate_is_reported_with_file_line_and_column_and_exits_2() {
    let sets = Sets::new();
    sets.write(
        "policies/dev.cedar",
        "@id(\"dev\")\npermit (principal, action, resource)\nwhen { principal.nickname == \"x\" };\n",
    );
    let out = sets.impact(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("candidate/policies/dev.cedar:3:8: "),
        "no file:line:column in: {stderr}"
    );
    assert!(
        stderr.contains("the candidate policy set is invalid"),
        "{stderr}"
    );
}

/// A data file with alice (owner, admin) of the team `acme`, bob (basic)
/// and carol (billing).
fn seed_store(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("folder")).expect("create folder");
    let store = Store::open(path).expect("open store");
    let user = |id: &str| User {
        id: id.into(),
        email: format!("{id}@example.com"),
        email_verified: true,
        name: None,
        created_at: 1_700_000_000,
    };
    store
        .write(|w| {
            w.sign_up(&user("alice"), "admin")?;
            w.convert("alice", "Acme")?;
            for (id, role) in [("bob", "basic"), ("carol", "billing")] {
                w.sign_up(&user(id), "admin")?;
                w.add_member("alice", id, role, 1_700_000_000)?;
            }
            Ok(())
        })
        .expect("seed the store");
}

/// A decision line exactly as `audit.rs` writes it.
fn decision_line(principal: &str, action: &str, resource: &str, decision: &str) -> String {
    json!({
        "kind": "decision", "id": "0123456789abcdef", "time": "2026-11-28T07:29:07.72Z",
        "key": "6a5b1779d4197914", "request_id": "512c7e6c69590000000003",
        "endpoint": "/v1/is_authorized",
        "principal": format!("User::\"{principal}\""),
        "action": format!("Action::\"{action}\""),
        "resource": resource,
        "decision": decision, "reasons": [], "errors": [],
        "policy_revision": 1, "policy_sha256": "00", "latency_us": 41
    })
    .to_string()
}

fn write_log(sets: &Sets) -> PathBuf {
    let acme = "Account::\"alice\"";
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(decision_line("carol", "useAccount", acme, "deny"));
    }
    for _ in 0..2 {
        lines.push(decision_line("bob", "useAccount", acme, "allow"));
    }
    lines.push(decision_line("carol", "viewBilling", acme, "allow"));
    lines.push(decision_line("bob", "viewBilling", acme, "deny"));
    lines.push(
        json!({"kind": "write", "id": "1", "time": "2026-11-28T07:29:08Z", "actor": "alice",
               "operation": "changeMemberRole", "account": "alice", "target": "bob",
               "detail": {"role": "basic"}, "outcome": "ok"})
        .to_string(),
    );
    let path = sets.path("decisions.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write log");
    path
}

#[test]
fn a_replayed_log_counts_exactly_the_decisions_that_flip() {
    let sets = Sets::new();
    let data = sets.path("data/cedard.redb");
    seed_store(&data);
    write_log(&sets);
    sets.replace_all(
        "policies",
        r#"action in Action::"billing","#,
        r#"action in [Action::"billing", Action::"useAccount"],"#,
    );
    let before = std::fs::read(&data).expect("read data file");
    let (code, report) =
        sets.impact_json(&["--log", "decisions.jsonl", "--data", "data/cedard.redb"]);
    assert_eq!(code, 1, "{report:#}");
    let log = &report["log"];
    assert_eq!(log["replayed"], 7, "{log:#}");
    assert_eq!(log["distinct"], 4, "each question is decided once: {log:#}");
    assert_eq!(log["flipped"], 3, "{log:#}");
    assert_eq!(log["by_action"], json!({"Action::\"useAccount\"": 3}));
    assert_eq!(
        log["by_policy"],
        json!({"deny (no policy) → allow [billing]": 3})
    );
    assert_eq!(log["examples"][0]["principal"], "User::\"carol\"");
    // Every logged answer is what the live set gives with the stored facts.
    assert_eq!(log["differs_from_log"], 0, "{log:#}");
    assert_eq!(log["incomplete"], 0, "{log:#}");
    // The data file was only read.
    assert_eq!(std::fs::read(&data).expect("read data file"), before);

    // Without the store, nobody holds a role: nothing allows, nothing flips.
    let (code, report) = sets.impact_json(&["--log", "decisions.jsonl"]);
    assert_eq!(report["log"]["flipped"], 0, "{report:#}");
    assert_eq!(report["log"]["incomplete"], 7, "{report:#}");
    assert_eq!(code, 1, "the matrix still flips");
}

#[tokio::test]
async fn a_data_file_held_by_a_running_daemon_is_refused_clearly() {
    let sets = Sets::new();
    write_log(&sets);
    let pack = copy_pack();
    let app = spawn_app_in(pack, |_| {}).await;
    let held = app.dir.path().join("data").join("cedard.redb");
    let out = sets.impact(&[
        "--log",
        "decisions.jsonl",
        "--data",
        held.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(stderr.contains("a running daemon holds it"), "{stderr}");
    app.stop().await;
}

#[test]
fn a_stored_role_the_candidate_drops_is_refused_like_a_reload() {
    let sets = Sets::new();
    let data = sets.path("data/cedard.redb");
    seed_store(&data);
    sets.replace_all("schema", "billing: Role", "finance: Role");
    sets.replace_all("policies", "roles.billing", "roles.finance");
    sets.replace_all("policies", "== \"billing\"", "== \"finance\"");
    let out = sets.impact(&[
        "--candidate-schema",
        "candidate/schema",
        "--data",
        "data/cedard.redb",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("1 member holds the role `billing`"),
        "{stderr}"
    );
}

#[test]
fn a_suite_case_that_starts_failing_is_listed() {
    let sets = Sets::new();
    let suite = r#"
accounts:
  acme:
    kind: team
    owner: alice
    members: {alice: admin, dave: dev}
    resources: {Pod: [p1]}
cases:
  - dave stopPod p1 -> allow
  - dave startPod p1 -> allow
"#;
    std::fs::write(sets.path("pods.yaml"), suite).expect("write suite");
    sets.write("policies/no-stop.cedar", NO_STOP);
    let (code, report) = sets.impact_json(&["--suite", "pods.yaml"]);
    assert_eq!(code, 1, "{report:#}");
    let failing = report["suites"]["now_failing"].as_array().expect("list");
    assert_eq!(failing.len(), 1, "{report:#}");
    assert_eq!(failing[0]["case"], "dave stopPod p1");
    assert!(
        failing[0]["failure"]
            .as_str()
            .expect("text")
            .contains("expected allow, got deny (reasons: devs-no-stop"),
        "{report:#}"
    );
    assert_eq!(report["suites"]["now_passing"], json!([]));
}

/// Reading a long log keeps a window of the last `keep` decisions: what is
/// held while reading is bounded by the window, not by the log (a 683 MB log
/// once took 426 MB for one Impact click). The kept decisions are the last
/// ones, in order, with their line numbers.
#[test]
fn a_long_log_is_read_through_a_bounded_window() {
    const LINES: usize = 50_000;
    const KEEP: usize = 1_000;
    let mut text = String::new();
    for i in 0..LINES {
        if i == 100 {
            // A line cedard never writes: 2 MiB with no line break. Skipped
            // as unreadable, not held.
            text.push_str(&"x".repeat(2 * 1024 * 1024));
            text.push('\n');
        }
        text.push_str(&decision_line(
            &format!("u{i:05}"),
            "useAccount",
            "Account::\"acme\"",
            "deny",
        ));
        text.push('\n');
    }
    let read = cedard::impact::read_log(std::io::Cursor::new(text), Some(KEEP)).expect("read");
    assert_eq!(read.decisions.len(), KEEP);
    assert_eq!(
        (read.unreadable, read.unreadable_lines.clone()),
        (1, vec![101])
    );
    // Line numbers count the long line.
    assert_eq!(read.decisions[0].line, LINES - KEEP + 2);
    assert_eq!(read.decisions[0].principal, "User::\"u49000\"");
    assert_eq!(read.decisions[KEEP - 1].line, LINES + 1);
    // What was allocated for the decisions while reading: the window's own
    // growth, never the whole log's.
    assert!(
        read.decisions.capacity() <= 2 * KEEP,
        "{} decisions' room held for a window of {KEEP}",
        read.decisions.capacity()
    );
}
