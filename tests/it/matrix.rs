//! `cedard matrix` and `GET /v1/matrix`: the role × action table computed
//! from the policies is the table the decision daemon issue promises, and
//! the daemon's follows the live policies.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{repo_root, schema_roles, spawn_app, wait_until, PERSONAL, TEAM};

/// The seed's team table as its one home (`tests/policies/roles.yaml`)
/// states it.
fn seed_cells() -> Cells {
    let mut cells = Cells::new();
    for (action, row) in &TEAM.rows {
        for (column, allow) in TEAM.columns.iter().zip(row) {
            let decision = if *allow { "allow" } else { "deny" };
            cells.insert((action.clone(), column.clone()), decision.to_owned());
        }
    }
    cells
}

/// On a personal account the owner (who holds admin) may do everything
/// except what `roles.yaml`'s personal table denies the owner (managing
/// members and invites).
fn owner_denied() -> Vec<String> {
    PERSONAL
        .rows
        .iter()
        .filter(|(action, _)| !PERSONAL.allows(action, "owner"))
        .map(|(action, _)| action.clone())
        .collect()
}

/// The table README shows for the default pack: the first Markdown table
/// after "What it answers on a team account".
fn readme_table() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let (_, after) = readme
        .split_once("What it answers on a team account")
        .expect("README shows the team table");
    after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// (action, column) → decision, read from a Markdown table.
type Cells = BTreeMap<(String, String), String>;

/// Reads a Markdown table; rows may list several actions separated by
/// commas.
fn parse_table(markdown: &str) -> Cells {
    let rows: Vec<Vec<String>> = markdown
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    let (header, body) = rows.split_first().expect("a header row");
    let mut cells = Cells::new();
    for row in body {
        for action in row[0].split(',').map(str::trim) {
            for (column, decision) in header[1..].iter().zip(&row[1..]) {
                cells.insert((action.to_owned(), column.clone()), decision.clone());
            }
        }
    }
    cells
}

/// Splits `cedard matrix` output into its tables by `## ` heading.
fn tables(markdown: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for section in markdown.split("## ").skip(1) {
        let (title, body) = section.split_once('\n').expect("a heading line");
        out.insert(title.trim().to_owned(), body.to_owned());
    }
    out
}

fn cedard_matrix(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("matrix")
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cedard matrix");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_matrix_of_the_default_pack_is_the_issue_table() {
    let markdown = cedard_matrix(&[]);
    let tables = tables(&markdown);
    let team = parse_table(&tables["Team account"]);
    let expected = seed_cells();
    assert_eq!(team, expected, "{markdown}");
    // README shows the same table.
    assert_eq!(parse_table(&readme_table()), expected, "README's table");
    // The columns come in the table's order, least permitted role first.
    let header = format!("| action | {} |", TEAM.columns.join(" | "));
    assert!(markdown.contains(&header), "{header}\n{markdown}");

    let personal = parse_table(&tables["Personal account"]);
    for ((action, column), decision) in &personal {
        let want = match column.as_str() {
            "admin" if owner_denied().contains(action) => "deny",
            "admin" => "allow",
            // The other roles answer as on a team account, except that no
            // one else may convert an account they do not own.
            _ => &expected[&(action.clone(), column.clone())],
        };
        assert_eq!(decision, want, "personal account, {column} {action}");
    }
    assert_eq!(personal.len(), team.len());
}

#[test]
fn the_json_matrix_says_the_same() {
    let json: Value = serde_json::from_str(&cedard_matrix(&["--format", "json"])).expect("json");
    let expected = seed_cells();
    for ((action, column), decision) in &expected {
        assert_eq!(json["team"][action][column], *decision, "{column} {action}");
    }
    assert_eq!(json["roles"], serde_json::json!(schema_roles()));
    assert_eq!(json["personal"]["convertToTeam"]["admin"], "allow");
    assert_eq!(json["personal"]["inviteMember"]["admin"], "deny");
}

#[tokio::test]
async fn the_daemon_serves_the_matrix_of_the_live_policies() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/matrix").await;
    assert_eq!(status, 200, "{body}");
    let cli: Value = serde_json::from_str(&cedard_matrix(&["--format", "json"])).expect("json");
    for key in ["roles", "columns", "actions", "team", "personal"] {
        assert_eq!(body[key], cli[key], "{key}");
    }
    assert_eq!(body["revision"]["generation"], 1);

    // Give the dev role billing; once the reload is live, so is the matrix.
    std::fs::write(
        app.policies().join("dev.cedar"),
        "@id(\"dev\")\npermit (principal, action in [Action::\"basic\", Action::\"managePods\", Action::\"billing\"], resource)\nwhen { principal in resource.account.roles.dev };\n",
    )
    .expect("edit dev.cedar");
    wait_until(Duration::from_secs(10), || async {
        app.generation().await > 1
    })
    .await;
    let (status, body) = app.get("/v1/matrix").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["team"]["viewBilling"]["dev"], "allow");
    assert_eq!(body["team"]["viewBilling"]["basic"], "deny");
    app.stop().await;
}
