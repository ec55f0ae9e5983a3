//! `cedard test`, run as the real binary: Cedar's own integration tests and
//! its whole corpus pass, the repository's role suite passes, and a broken
//! policy or a wrong expectation is reported with what was expected and what
//! came back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{copy_pack, repo_root};

/// Cedar's integration tests, next to the repository.
fn cedar_tests() -> PathBuf {
    repo_root().join("../shared/cedar-integration-tests")
}

/// Runs `cedard test` with `args` from `cwd`.
fn cedard_test(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cedard"))
        .arg("test")
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cedard test")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads the last line, `N passed, M failed`.
fn summary(text: &str) -> (usize, usize) {
    let last = text.lines().last().unwrap_or_default();
    let numbers: Vec<usize> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    assert!(
        last.ends_with(" failed") && numbers.len() == 2,
        "the last line should be `N passed, M failed`, got `{last}`"
    );
    (numbers[0], numbers[1])
}

/// Unpacks Cedar's corpus into a new temporary folder (never committed: it
/// is 7,809 files).
fn unpack_corpus() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = cedar_tests().join("corpus-tests.tar.gz");
    let file = std::fs::File::open(&archive)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", archive.display()));
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir.path())
        .expect("unpack the corpus");
    dir
}

#[test]
fn cedar_integration_tests_and_the_whole_corpus_pass() {
    let corpus = unpack_corpus();
    let shared = cedar_tests();
    let out = cedard_test(
        &repo_root(),
        &[
            "--verbose",
            shared.to_str().expect("utf-8 path"),
            corpus.path().to_str().expect("utf-8 path"),
        ],
    );
    let text = stdout(&out);
    let (passed, failed) = summary(&text);
    assert_eq!(failed, 0, "{text}");
    assert!(
        passed >= 62_472 + 74,
        "the corpus alone is 62,472 requests and the hand-written tests 74: {text}"
    );
    assert!(out.status.success(), "{text}");
    // The validation flags that cedar-policy 4.14.1 answers differently are
    // reported, counted, listed (with `--verbose`), and not failures.
    assert!(
        text.lines()
            .any(|l| l.starts_with("35 known differences") && l.contains("shouldValidate: false")),
        "{text}"
    );
    let listed = text
        .lines()
        .filter(|l| l.starts_with("known difference: ") && l.contains("corpus-tests/"))
        .count();
    assert_eq!(listed, 35, "{text}");
}

#[test]
fn the_repository_suite_passes() {
    let out = cedard_test(&repo_root(), &["tests/policies"]);
    let text = stdout(&out);
    let (passed, failed) = summary(&text);
    assert!(out.status.success(), "{text}");
    assert_eq!(failed, 0, "{text}");
    // The single cases, the team matrix (each action × each column) and the
    // personal matrix, as roles.yaml states them.
    let (team, personal) = (&crate::support::TEAM, &crate::support::PERSONAL);
    let expected = crate::support::seed_case_count()
        + team.rows.len() * team.columns.len()
        + personal.rows.len() * personal.columns.len();
    assert_eq!(passed, expected, "{text}");
}

#[test]
fn a_policy_edit_that_changes_a_role_fails_the_suite() {
    let dir = copy_pack();
    let suites = dir.path().join("tests/policies");
    std::fs::create_dir_all(&suites).expect("suite dir");
    std::fs::copy(
        repo_root().join("tests/policies/roles.yaml"),
        suites.join("roles.yaml"),
    )
    .expect("copy suite");
    // Give the dev role billing as well.
    std::fs::write(
        dir.path().join("policies/dev.cedar"),
        "@id(\"dev\")\npermit (principal, action in [Action::\"basic\", Action::\"managePods\", Action::\"billing\"], resource)\nwhen { principal in resource.account.roles.dev };\n",
    )
    .expect("edit dev.cedar");
    // `cedard test` with no path runs `tests/policies`.
    let out = cedard_test(dir.path(), &[]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l
            == "FAIL tests/policies/roles.yaml: team account: dev viewBilling: expected deny, got allow (reasons: dev; errors: none)"),
        "{text}"
    );
    assert_eq!(summary(&text).1, 2, "viewBilling and manageBilling: {text}");
}

#[test]
fn an_invalid_policy_set_fails_the_suite_with_its_location() {
    let dir = copy_pack();
    std::fs::create_dir_all(dir.path().join("tests")).expect("tests dir");
    std::fs::copy(
        repo_root().join("tests/policies/roles.yaml"),
        dir.path().join("tests/roles.yaml"),
    )
    .expect("copy suite");
    std::fs::write(
        dir.path().join("policies/dev.cedar"),
        "permit (principal, action, resource) when { resource.nope };\n",
    )
    .expect("break dev.cedar");
    let out = cedard_test(dir.path(), &["tests/roles.yaml"]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL tests/roles.yaml: load: the policies do not load"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("dev.cedar:1:"), "{line}");
}

/// A Cedar test next to its policy, entities and schema files.
fn cedar_test_dir(decision: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write test file");
    };
    write(
        "policies.cedar",
        "permit (principal == User::\"alice\", action, resource);\n",
    );
    write(
        "schema.cedarschema",
        "entity User; entity Doc; action read appliesTo { principal: User, resource: Doc };\n",
    );
    write("entities.json", "[]");
    write(
        "test.json",
        &serde_json::json!({
            "policies": "policies.cedar",
            "entities": "entities.json",
            "schema": "schema.cedarschema",
            "shouldValidate": true,
            "requests": [{
                "description": "alice reads",
                "principal": {"type": "User", "id": "alice"},
                "action": {"type": "Action", "id": "read"},
                "resource": {"type": "Doc", "id": "d"},
                "context": {},
                "decision": decision,
                "reason": if decision == "allow" { vec!["policy0"] } else { vec![] },
                "errors": []
            }]
        })
        .to_string(),
    );
    write("broken.json", "{ not json");
    dir
}

#[test]
fn a_wrong_expectation_and_a_broken_file_are_reported_not_panicked_on() {
    let dir = cedar_test_dir("deny");
    let out = cedard_test(dir.path(), &["."]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "FAIL ./test.json: alice reads: expected deny (reasons: none; errors: none), got allow (reasons: policy0; errors: none)"
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL ./broken.json: load: not valid JSON")),
        "{text}"
    );
    assert_eq!(summary(&text), (0, 2), "{text}");
}

#[test]
fn junit_output_names_every_case() {
    let dir = cedar_test_dir("allow");
    std::fs::remove_file(dir.path().join("broken.json")).expect("remove broken file");
    let out = cedard_test(dir.path(), &["--format", "junit", "test.json"]);
    let xml = stdout(&out);
    assert!(out.status.success(), "{xml}");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains("<testsuites name=\"cedard test\" tests=\"2\" failures=\"0\" skipped=\"0\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase classname=\"test.json\" name=\"alice reads\"/>"),
        "{xml}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "1 passed, 0 failed"
    );

    let dir = cedar_test_dir("deny");
    let out = cedard_test(dir.path(), &["--format", "junit", "test.json"]);
    let xml = stdout(&out);
    assert!(!out.status.success(), "{xml}");
    assert!(
        xml.contains("<failure message=\"expected deny (reasons: none; errors: none), got allow (reasons: policy0; errors: none)\">"),
        "{xml}"
    );
}

#[test]
fn a_yaml_suite_states_cases_and_reports_names_it_does_not_know() {
    let dir = copy_pack();
    std::fs::write(
        dir.path().join("suite.yaml"),
        r#"
accounts:
  acme: {kind: team, owner: alice, members: {alice: admin, bob: basic}, resources: {Pod: [p1]}}
cases:
  - bob connectPod p1 -> allow [basic]
  - principal: bob
    action: viewBilling
    resource: acme
    expect: deny
    reasons: []
  - zed connectPod p1 -> allow
"#,
    )
    .expect("write suite");
    let out = cedard_test(dir.path(), &["suite.yaml"]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL suite.yaml: zed connectPod p1: expected allow, got an invalid request: unknown user `zed`"),
        "{text}"
    );
    assert_eq!(summary(&text), (2, 1), "{text}");
}

#[test]
fn a_tar_gz_archive_is_searched_like_a_folder() {
    let dir = cedar_test_dir("allow");
    std::fs::remove_file(dir.path().join("broken.json")).expect("remove broken file");
    let archive = dir.path().join("tests.tar.gz");
    {
        let file = std::fs::File::create(&archive).expect("create archive");
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for name in [
            "test.json",
            "policies.cedar",
            "schema.cedarschema",
            "entities.json",
        ] {
            tar.append_path_with_name(dir.path().join(name), format!("inside/{name}"))
                .expect("append");
        }
        tar.into_inner()
            .expect("finish tar")
            .finish()
            .expect("finish gzip");
    }
    let out = cedard_test(dir.path(), &["tests.tar.gz"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(summary(&text), (1, 0), "{text}");
}

/// A link back to the folder being searched (`loop -> .`) neither makes
/// `cedard test` run forever nor runs a case twice.
#[test]
fn a_link_back_to_the_folder_is_walked_once() {
    let dir = cedar_test_dir("allow");
    std::fs::remove_file(dir.path().join("broken.json")).expect("remove broken file");
    std::os::unix::fs::symlink(".", dir.path().join("loop")).expect("symlink");
    std::os::unix::fs::symlink(".", dir.path().join("again")).expect("symlink");
    let out = cedard_test(dir.path(), &["."]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(summary(&text), (1, 0), "{text}");
}
