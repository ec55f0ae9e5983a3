//! Proofs with cvc5 (`cedard impact --prove`, `cedard validate --prove`,
//! the reload guard): known edits to the default pack are proved
//! equivalent, narrower, wider or both, each counterexample is confirmed by
//! Cedar's own authorizer; the health check finds dead and erring
//! policies; the guard refuses a widening reload on a running daemon until
//! it is acknowledged; without a solver, `--prove` exits 2 and says how to
//! install one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;
use std::time::Duration;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request, Schema,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::impact::Sets;
use crate::reload::{decision, disk_sha, wait_for_attempt_on_disk};
use crate::support::{copy_pack, not_run, repo_root, spawn_app_in, wait_until};

/// Whether cvc5 is here; under CI its absence fails the test.
fn solver_here(test: &str) -> bool {
    match cedard::prove::Prover::default().solver_path() {
        Ok(_) => true,
        Err(e) => {
            not_run(test, &format!("{e}"));
            false
        }
    }
}

/// `cedard impact --prove` on the sets with `extra` arguments.
fn prove(sets: &Sets, extra: &[&str]) -> Output {
    let mut args = vec!["--prove"];
    args.extend_from_slice(extra);
    sets.impact(&args)
}

/// The exit code and the proof of `cedard impact --prove --format json`.
fn proof(sets: &Sets) -> (i32, Value) {
    let (code, report) = sets.impact_json(&["--prove"]);
    (code, report["proof"].clone())
}

/// One side of the sets, loaded as the daemon loads it.
fn snapshot(sets: &Sets, side: &str) -> std::sync::Arc<cedard::policy::PolicySnapshot> {
    cedard::policy::load(
        &cedard::policy::Sources {
            policies: sets.path(side).join("policies"),
            schema: sets.path(side).join("schema"),
            ..Default::default()
        },
        1,
    )
    .expect("a valid set")
}

/// The environments of a proof with their change, but the equivalent ones.
fn changes(proof: &Value) -> Vec<(String, String)> {
    proof["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter(|e| e["change"] != "equivalent")
        .map(|e| {
            (
                e["env"]["action"].as_str().expect("action").to_owned(),
                e["change"].as_str().expect("change").to_owned(),
            )
        })
        .collect()
}

fn env<'a>(proof: &'a Value, action: &str) -> &'a Value {
    proof["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .find(|e| e["env"]["action"] == action)
        .unwrap_or_else(|| panic!("no environment for {action}: {proof:#}"))
}

/// Decides a counterexample with Cedar's own authorizer (not cedard's
/// decision path): the policies of `side`, the witness's entities and the
/// schema's actions.
fn cedar_decides(sets: &Sets, side: &str, witness: &Value) -> Decision {
    let read_dir = |sub: &str, ext: &str| -> String {
        let mut text = String::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(sets.path(side).join(sub))
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect();
        paths.sort();
        for p in paths {
            text.push_str(&std::fs::read_to_string(p).expect("read"));
            text.push('\n');
        }
        text
    };
    let policies = PolicySet::from_str(&read_dir("policies", ".cedar")).expect("policies");
    let (schema, _) =
        Schema::from_cedarschema_str(&read_dir("schema", ".cedarschema")).expect("schema");
    let uid = |field: &str| {
        EntityUid::from_str(witness[field].as_str().expect("uid")).expect("an entity uid")
    };
    let context = Context::from_json_value(witness["context"].clone(), None).expect("a context");
    let request = Request::new(
        uid("principal"),
        uid("action"),
        uid("resource"),
        context,
        Some(&schema),
    )
    .expect("the counterexample fits the schema");
    let entities = Entities::from_json_value(witness["entities"].clone(), Some(&schema))
        .expect("entities")
        .add_entities(schema.action_entities().expect("actions"), None)
        .expect("with actions");
    Authorizer::new()
        .is_authorized(&request, &policies, &entities)
        .decision()
}

const NO_STOP: &str = r#"// Devs may no longer stop Pods.
@id("devs-no-stop")
forbid (principal, action == Action::"stopPod", resource)
when { principal in resource.account.roles.dev };
"#;

#[test]
fn the_default_pack_reordered_and_reformatted_is_proved_equivalent_and_exits_0() {
    if !solver_here("the_default_pack_reordered_and_reformatted_is_proved_equivalent") {
        return;
    }
    let sets = Sets::new();
    // Every policy in one file, in the reverse order, reformatted.
    let mut all = Vec::new();
    for entry in std::fs::read_dir(sets.path("candidate/policies")).expect("read dir") {
        let path = entry.expect("entry").path();
        all.push(std::fs::read_to_string(&path).expect("read"));
        std::fs::remove_file(&path).expect("remove");
    }
    all.sort();
    all.reverse();
    let text: String = all
        .iter()
        .map(|t| t.replace('\n', "\n    ").replace("  ", " "))
        .collect::<Vec<_>>()
        .join("\n");
    sets.write("policies/all.cedar", &text);
    let (code, proof) = proof(&sets);
    assert_eq!(code, 0, "{proof:#}");
    assert_eq!(changes(&proof), Vec::<(String, String)>::new(), "{proof:#}");
    assert_eq!(proof["environments"].as_array().map(Vec::len), Some(14));
    let text = String::from_utf8_lossy(&prove(&sets, &[]).stdout).into_owned();
    assert!(
        text.contains("14 equivalent") && text.contains("never wider"),
        "{text}"
    );
}

#[test]
fn a_new_forbid_is_proved_narrower_only_with_a_confirmed_counterexample() {
    if !solver_here("a_new_forbid_is_proved_narrower_only") {
        return;
    }
    let sets = Sets::new();
    sets.write("policies/no-stop.cedar", NO_STOP);
    let (code, proof) = proof(&sets);
    assert_eq!(code, 0, "narrower only exits 0: {proof:#}");
    assert_eq!(
        changes(&proof),
        vec![(r#"Action::"stopPod""#.to_owned(), "narrower".to_owned())]
    );
    let narrower = &env(&proof, r#"Action::"stopPod""#)["narrower"];
    assert_eq!(narrower["live"]["decision"], "allow", "{narrower:#}");
    assert_eq!(narrower["live"]["policies"], serde_json::json!(["dev"]));
    assert_eq!(narrower["candidate"]["decision"], "deny");
    assert_eq!(
        narrower["candidate"]["policies"],
        serde_json::json!(["devs-no-stop"])
    );
    assert_eq!(
        cedar_decides(&sets, "live", &narrower["witness"]),
        Decision::Allow
    );
    assert_eq!(
        cedar_decides(&sets, "candidate", &narrower["witness"]),
        Decision::Deny
    );
}

#[test]
fn a_widened_permit_is_proved_wider_with_a_counterexample_cedar_confirms() {
    if !solver_here("a_widened_permit_is_proved_wider") {
        return;
    }
    let sets = Sets::new();
    sets.edit(
        "policies/billing.cedar",
        r#"action in Action::"billing","#,
        r#"action in [Action::"billing", Action::"useAccount"],"#,
    );
    let (code, proof) = proof(&sets);
    assert_eq!(code, 1, "wider exits 1: {proof:#}");
    assert_eq!(
        changes(&proof),
        vec![(r#"Action::"useAccount""#.to_owned(), "wider".to_owned())]
    );
    let wider = &env(&proof, r#"Action::"useAccount""#)["wider"];
    assert_eq!(wider["live"]["decision"], "deny", "{wider:#}");
    assert_eq!(wider["candidate"]["decision"], "allow");
    assert_eq!(
        wider["candidate"]["policies"],
        serde_json::json!(["billing"])
    );
    assert_eq!(
        cedar_decides(&sets, "live", &wider["witness"]),
        Decision::Deny
    );
    assert_eq!(
        cedar_decides(&sets, "candidate", &wider["witness"]),
        Decision::Allow
    );
    // The text report names the environment, the request and both answers.
    let text = String::from_utf8_lossy(&prove(&sets, &[]).stdout).into_owned();
    assert!(
        text.contains(r#"(User, Action::"useAccount", Account) wider"#)
            && text.contains("live: deny (no policy)")
            && text.contains("candidate: allow [billing]")
            && text.contains("wider: the candidate allows requests the live set denies"),
        "{text}"
    );
}

#[test]
fn a_renamed_role_is_proved_wider_and_narrower() {
    if !solver_here("a_renamed_role_is_proved_wider_and_narrower") {
        return;
    }
    let sets = Sets::new();
    // The dev policy now names the billing role.
    sets.edit("policies/dev.cedar", "roles.dev", "roles.billing");
    let (code, proof) = proof(&sets);
    assert_eq!(code, 1, "{proof:#}");
    // Dev's own actions (Pods) are both: billing gains them, dev loses them.
    for action in ["startPod", "stopPod", "createPod"] {
        let e = env(&proof, &format!("Action::\"{action}\""));
        assert_eq!(e["change"], "both", "{action}: {e:#}");
        for (side, want) in [("wider", Decision::Allow), ("narrower", Decision::Deny)] {
            let d = &e[side];
            assert_eq!(
                cedar_decides(&sets, "candidate", &d["witness"]),
                want,
                "{d:#}"
            );
        }
    }
}

#[test]
fn the_cli_proof_agrees_with_the_library_on_the_same_sets() {
    if !solver_here("the_cli_proof_agrees_with_the_library") {
        return;
    }
    let sets = Sets::new();
    sets.write("policies/no-stop.cedar", NO_STOP);
    let library = cedard::prove::compare(
        &cedard::prove::Prover::default(),
        &snapshot(&sets, "live"),
        &snapshot(&sets, "candidate"),
    )
    .expect("a proof");
    assert_eq!(library.verdict(), cedard::prove::Verdict::NeverWider);
    assert!(library.unconfirmed.is_empty(), "{:?}", library.unconfirmed);
    let (_, json) = proof(&sets);
    assert_eq!(changes(&json).len(), library.widened().count() + 1);
}

/// A small set with one policy that can error (a long overflows), one that
/// can never match, and one healthy.
fn unhealthy_set() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("policies")).expect("dir");
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "entity User { age: Long, nick?: String };\nentity Doc { owner: User };\naction view appliesTo { principal: User, resource: Doc };\n",
    )
    .expect("schema");
    std::fs::write(
        dir.path().join("policies/doc.cedar"),
        r#"@id("grown-up")
permit (principal, action == Action::"view", resource)
when { principal.age + 1 > 18 };

@id("never")
permit (principal, action == Action::"view", resource)
when { principal.age > 5 && principal.age < 3 };

@id("owner")
permit (principal, action == Action::"view", resource)
when { resource.owner == principal && principal has nick && principal.nick != "" };
"#,
    )
    .expect("policies");
    dir
}

fn validate(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["validate", "--policies", "policies", "--schema"])
        .arg(if dir.join("schema.cedarschema").exists() {
            "schema.cedarschema"
        } else {
            "schema"
        })
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("run cedard validate")
}

#[test]
fn validate_prove_finds_a_dead_policy_and_one_that_can_error_with_the_request() {
    if !solver_here("validate_prove_finds_a_dead_policy_and_one_that_can_error") {
        return;
    }
    let dir = unhealthy_set();
    let out = validate(dir.path(), &["--prove", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let health: Value = serde_json::from_slice(&out.stdout).expect("JSON health");
    let policy = |id: &str| {
        health["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no {id}: {health:#}"))
            .clone()
    };
    assert_eq!(policy("never")["status"], "dead", "{health:#}");
    assert_eq!(policy("grown-up")["status"], "live");
    assert_eq!(policy("owner")["status"], "live");
    assert!(policy("owner")["errors"].is_null(), "{health:#}");
    let error = &policy("grown-up")["errors"][0];
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("overflow"),
        "{error:#}"
    );
    // The request makes it error: the principal's age is the largest long.
    let entities = error["witness"]["entities"].to_string();
    assert!(entities.contains("9223372036854775807"), "{entities}");
    // An optional attribute read without `has` never gets this far:
    // strict validation refuses it, naming the file and line.
    std::fs::write(
        dir.path().join("policies/nick.cedar"),
        "@id(\"nick\")\npermit (principal, action, resource)\nwhen { principal.nick == \"x\" };\n",
    )
    .expect("write");
    let refused = validate(dir.path(), &["--prove"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nick.cedar:3:"),
        "{refused:?}"
    );
    std::fs::remove_file(dir.path().join("policies/nick.cedar")).expect("remove");
    let text = String::from_utf8_lossy(&validate(dir.path(), &["--prove"]).stdout).into_owned();
    assert!(
        text.contains("doc.cedar:5: never: dead")
            && text.contains("doc.cedar:1: grown-up: can error in (User, Action::\"view\", Doc)"),
        "{text}"
    );
}

#[test]
fn validate_prove_on_the_default_pack_is_healthy() {
    if !solver_here("validate_prove_on_the_default_pack_is_healthy") {
        return;
    }
    let dir = copy_pack();
    let out = validate(dir.path(), &["--prove"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}{out:?}");
    assert!(
        text.contains("0 dead, 0 can error; 14 environment(s)"),
        "{text}"
    );
}

#[test]
fn without_a_solver_prove_exits_2_and_says_how_to_install_one() {
    let sets = Sets::new();
    let out = prove(&sets, &["--solver", "/nonexistent/cvc5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no SMT solver") && stderr.contains("apt-get install cvc5"),
        "{stderr}"
    );
    // Not on PATH and no CVC5 either.
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["validate", "--prove"])
        .current_dir(repo_root())
        .env("PATH", "/nonexistent")
        .env_remove("CVC5")
        .output()
        .expect("run cedard validate");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`cvc5` is not on PATH"));
}

/// Replaces `from` with `to` in the file at `path`, which must hold it.
fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    std::fs::write(path, text.replace(from, to)).expect("write");
}

#[tokio::test]
async fn the_reload_guard_refuses_a_widening_edit_until_it_is_acknowledged() {
    if !solver_here("the_reload_guard_refuses_a_widening_edit_until_it_is_acknowledged") {
        return;
    }
    let live_copy = copy_pack();
    let app = spawn_app_in(copy_pack(), |c| {
        c.options.reload_guard = cedard::config::ReloadGuard::NoWidening;
    })
    .await;
    let deadline = Duration::from_secs(30);
    // A narrowing edit goes live.
    std::fs::write(app.policies().join("no-stop.cedar"), NO_STOP).expect("write");
    wait_until(deadline, || async {
        decision(&app, "dev", "stopPod").await == "deny"
    })
    .await;
    std::fs::write(live_copy.path().join("policies/no-stop.cedar"), NO_STOP).expect("write");
    // A widening one is refused, located at the policy that widens, with
    // the environment, the counterexample and the hash to acknowledge.
    replace_in(
        &app.policies().join("billing.cedar"),
        r#"action in Action::"billing","#,
        r#"action in [Action::"billing", Action::"useAccount"],"#,
    );
    let sha = disk_sha(&app);
    let listing = wait_for_attempt_on_disk(&app).await;
    assert_eq!(listing["last_reload"]["ok"], false, "{listing:#}");
    let error = &listing["last_reload"]["errors"][0];
    assert_eq!(error["file"], "billing.cedar", "{error:#}");
    assert_eq!(error["line"], 2, "{error:#}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains(r#"widens (User, Action::"useAccount", Account)"#)
            && message.contains("allow [billing]")
            && message.contains(&sha),
        "{message}"
    );
    assert_eq!(decision(&app, "billing", "useAccount").await, "deny");
    // Reviewed and acknowledged with `cedard impact --prove --acknowledge`:
    // it goes live.
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("impact")
        .arg("--policies")
        .arg(live_copy.path().join("policies"))
        .arg("--schema")
        .arg(app.dir.path().join("schema"))
        .arg("--candidate")
        .arg(app.policies())
        .args(["--prove", "--acknowledge"])
        .output()
        .expect("run cedard impact");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let ack = std::fs::read_to_string(app.policies().join("acknowledged.sha256")).expect("ack");
    assert!(ack.starts_with(&sha), "{ack}");
    wait_until(deadline, || async {
        decision(&app, "billing", "useAccount").await == "allow"
    })
    .await;
    // The acknowledgement is of that set only: a further widening is
    // refused again.
    replace_in(
        &app.policies().join("basic.cedar"),
        r#"action in Action::"basic","#,
        r#"action in [Action::"basic", Action::"billing"],"#,
    );
    let listing = wait_for_attempt_on_disk(&app).await;
    assert_eq!(listing["last_reload"]["ok"], false, "{listing:#}");
    assert_eq!(decision(&app, "basic", "viewBilling").await, "deny");
    app.stop().await;
}

#[test]
fn a_hung_solver_is_killed_at_the_time_limit_and_the_proof_is_undecided() {
    let sets = Sets::new();
    // A "solver" that answers `--version` and then never answers a query.
    let solver = sets.path("hung-solver");
    // Its sleep has an argument no other process has, to find it by.
    let marker = format!("999.{}", std::process::id());
    std::fs::write(
        &solver,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo hung; exit 0; }}\nexec sleep {marker}\n"
        ),
    )
    .expect("write the script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&solver, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Two environments change, so the solver must be asked (identical
    // sets are proved by the compiler alone).
    sets.write("policies/no-stop.cedar", NO_STOP);
    sets.edit(
        "policies/billing.cedar",
        r#"action in Action::"billing","#,
        r#"action in [Action::"billing", Action::"useAccount"],"#,
    );
    let started = std::time::Instant::now();
    let out = prove(
        &sets,
        &[
            "--solver",
            solver.to_str().expect("utf-8 path"),
            "--prove-query-ms",
            "200",
            "--prove-run-ms",
            "1500",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "undecided exits 2: {stdout}");
    assert!(
        stdout.contains(
            r#"(User, Action::"stopPod", Pod) undecided: the solver gave no answer within 200 ms"#
        ) && stdout.contains(
            r#"(User, Action::"useAccount", Account) undecided: the run's time limit was reached"#
        ) && stdout.contains("undecided: not every environment could be proved"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the run's limit bounds it"
    );
    // Every solver process it started was killed.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("sleep ") && c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "solver processes left running: {left:?}");
}

/// A folder with `schema` as `schema.cedarschema` and each `(folder,
/// policies)` as `folder/p.cedar`; then `cedard impact --prove --format json`
/// with the first folder live and the last the candidate: its exit code and
/// report.
fn prove_small(schema: &str, sides: &[(&str, &str)]) -> (i32, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("schema.cedarschema"), schema).expect("schema");
    for (side, policies) in sides {
        std::fs::create_dir_all(dir.path().join(side)).expect("dir");
        std::fs::write(dir.path().join(side).join("p.cedar"), policies).expect("policies");
    }
    let (live, candidate) = (sides[0].0, sides[sides.len() - 1].0);
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["impact", "--prove", "--format", "json"])
        .args(["--policies", live, "--schema", "schema.cedarschema"])
        .args(["--candidate", candidate])
        .current_dir(dir.path())
        .output()
        .expect("run cedard impact");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (out.status.code().expect("exit code"), report)
}

#[test]
fn a_change_only_requests_naming_unknown_entities_see_is_found_too() {
    if !solver_here("a_change_only_requests_naming_unknown_entities_see_is_found_too") {
        return;
    }
    // Over well-formed entities the two sets are equivalent (the solver's
    // domain); for a principal nobody holds, reading `x` errors and the
    // live policy is skipped, while the candidate allows.
    let (code, report) = prove_small(
        "entity User { x: Long };\nentity Doc;\naction view appliesTo { principal: User, resource: Doc };\n",
        &[
            (
                "live",
                "permit (principal, action, resource) when { principal.x == principal.x };",
            ),
            ("candidate", "permit (principal, action, resource);"),
        ],
    );
    assert_eq!(code, 1, "{report:#}");
    let e = &report["proof"]["environments"][0];
    assert_eq!(e["change"], "wider", "{e:#}");
    assert_eq!(e["wider"]["witness"]["principal"], r#"User::"""#);
    assert_eq!(e["wider"]["witness"]["entities"], serde_json::json!([]));
    assert_eq!(e["wider"]["live"]["decision"], "deny");
    assert_eq!(e["wider"]["candidate"]["decision"], "allow");
    assert!(
        e["wider"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("neither entity is known")),
        "{e:#}"
    );
}

#[tokio::test]
async fn the_reload_guard_without_a_solver_stops_the_start_saying_how_to_install_one() {
    let dir = copy_pack();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config =
        cedard::server::Config::new(dir.path().join("policies"), dir.path().join("schema"));
    config.options.data = dir.path().join("data").join("cedard.redb");
    config.options.reload_guard = cedard::config::ReloadGuard::NoWidening;
    config.options.solver.solver = Some(PathBuf::from("/nonexistent/cvc5"));
    let result = cedard::server::run(listener, config, std::future::pending()).await;
    let message = result
        .expect_err("started a guard that cannot prove")
        .to_string();
    assert!(
        message.contains("--reload-guard no-widening needs a solver")
            && message.contains("/nonexistent/cvc5")
            && message.contains("apt-get install cvc5"),
        "{message}"
    );
}

#[test]
fn a_thousand_policy_set_is_proved_without_running_out_of_stack() {
    if !solver_here("a_thousand_policy_set_is_proved_without_running_out_of_stack") {
        return;
    }
    // The compiler and the model reader recurse as deep as the set is long:
    // on a 2 MiB thread this aborted the process.
    let sets = Sets::new();
    let grants: String = (0..1000)
        .map(|i| {
            format!(
                "@id(\"g{i}\")\npermit (principal == User::\"u{i}\", action in [Action::\"basic\"], resource)\nwhen {{ resource.account == Account::\"a{}\" }};\n\n",
                i % 50
            )
        })
        .collect();
    for side in ["live", "candidate"] {
        std::fs::write(sets.path(side).join("policies/generated.cedar"), &grants).expect("write");
    }
    sets.write(
        "policies/copy.cedar",
        "@id(\"copy\")\npermit (principal, action, resource)\nwhen { principal in resource.account.roles.admin };\n",
    );
    let (code, proof) = proof(&sets);
    assert_eq!(code, 0, "{proof:#}");
    assert_eq!(changes(&proof), Vec::<(String, String)>::new(), "{proof:#}");
}

#[test]
fn templates_are_reported_not_analyzed_in_each_environment_they_cover() {
    if !solver_here("templates_are_reported_not_analyzed_in_each_environment_they_cover") {
        return;
    }
    let (code, report) = prove_small(
        "entity User;\nentity Doc;\naction view, edit appliesTo { principal: User, resource: Doc };\n",
        &[(
            "policies",
            "@id(\"viewers\")\npermit (principal == ?principal, action == Action::\"view\", resource);\n\n@id(\"editors\")\npermit (principal, action == Action::\"edit\", resource);\n",
        )],
    );
    assert_eq!(code, 0, "{report:#}");
    let envs = report["proof"]["environments"]
        .as_array()
        .expect("environments");
    let view = envs
        .iter()
        .find(|e| e["env"]["action"] == r#"Action::"view""#)
        .expect("view");
    let edit = envs
        .iter()
        .find(|e| e["env"]["action"] == r#"Action::"edit""#)
        .expect("edit");
    assert_eq!(
        view["not_analyzed"],
        serde_json::json!(["viewers (p.cedar:1)"]),
        "{report:#}"
    );
    assert!(edit["not_analyzed"].is_null(), "{report:#}");
}
