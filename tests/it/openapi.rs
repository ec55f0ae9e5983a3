//! `/openapi.json` as a calling team uses it: a real linter finds no
//! problem in it, and a client that a real generator made from it runs the
//! seed's flow with its typed models alone (`tests/openapi/seed_flow.py`).
//!
//! The tools are Redocly CLI and openapi-python-client, from the package
//! registries: `tests/openapi/install-tools` puts them in
//! `target/openapi-tools` (or `$CEDARD_OPENAPI_TOOLS`), and `.ci/run` runs
//! it. Without them a test says it did not run; under CI it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::support::{copy_pack, not_run, repo_root, spawn_binary, Binary};

/// Where the tools are.
struct Tools {
    redocly: PathBuf,
    python: PathBuf,
    generator: PathBuf,
}

/// The tools, or `None` after saying why a test cannot run.
fn tools(test: &str) -> Option<Tools> {
    let dir = std::env::var_os("CEDARD_OPENAPI_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/openapi-tools"));
    let tools = Tools {
        redocly: dir.join("node/node_modules/.bin/redocly"),
        python: dir.join("venv/bin/python"),
        generator: dir.join("venv/bin/openapi-python-client"),
    };
    let missing: Vec<String> = [&tools.redocly, &tools.python, &tools.generator]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(tools);
    }
    not_run(
        test,
        &format!(
            "{} not found (run tests/openapi/install-tools, as .ci/run does)",
            missing.join(", ")
        ),
    );
    None
}

/// The real daemon on the default pack, with one key holding every scope.
async fn daemon() -> (tempfile::TempDir, Binary, String) {
    use cedard::keys::Scope;
    let dir = copy_pack();
    let data = dir.path().join("data/cedard.redb");
    std::fs::create_dir_all(data.parent().expect("folder")).expect("mkdir");
    let key = cedard::keys::generate(
        "seed-flow",
        &[Scope::Decide, Scope::Manage, Scope::Admin],
        1,
    )
    .expect("key");
    cedard::store::Store::open(&data)
        .expect("open store")
        .write(|w| w.create_key(&key.record))
        .expect("store the key");
    let bin = spawn_binary(dir.path(), &[]).await;
    (dir, bin, key.secret)
}

/// The description the daemon serves, saved in `dir`.
async fn served_description(bin: &Binary, key: &str, dir: &Path) -> (PathBuf, Value) {
    let text = reqwest::Client::new()
        .get(bin.url("/openapi.json"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET /openapi.json")
        .error_for_status()
        .expect("200")
        .text()
        .await
        .expect("body");
    let path = dir.join("openapi.json");
    std::fs::write(&path, &text).expect("save the description");
    (path, serde_json::from_str(&text).expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_description_passes_redocly_lint_without_a_problem() {
    let Some(tools) = tools("openapi::the_served_description_passes_redocly_lint") else {
        return;
    };
    let (dir, bin, key) = daemon().await;
    let (path, doc) = served_description(&bin, &key, dir.path()).await;
    assert_eq!(
        doc["servers"][0]["url"],
        bin.url(""),
        "servers: {}",
        doc["servers"]
    );
    let out = Command::new(&tools.redocly)
        .args(["lint", "--format=json"])
        .arg(&path)
        .output()
        .expect("run redocly");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "redocly's report is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        (&report["totals"]["errors"], &report["totals"]["warnings"]),
        (&Value::from(0), &Value::from(0)),
        "redocly {}: {:#}",
        report["version"],
        report["problems"]
    );
    assert!(out.status.success(), "redocly failed: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_seed_flow_with_its_typed_models() {
    let Some(tools) = tools("openapi::a_generated_python_client_runs_the_seed_flow") else {
        return;
    };
    let (dir, bin, key) = daemon().await;
    let (path, _) = served_description(&bin, &key, dir.path()).await;
    // No post-processing hooks: the generated code is what the generator
    // wrote.
    let config = dir.path().join("generator.yaml");
    std::fs::write(&config, "post_hooks: []\n").expect("write the config");
    let client = dir.path().join("client");
    let out = Command::new(&tools.generator)
        .arg("generate")
        .arg("--path")
        .arg(&path)
        .args(["--meta", "none", "--output-path"])
        .arg(client.join("cedard_client"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run openapi-python-client");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "generation failed:\n{said}");
    assert!(
        !said.contains("Warning"),
        "the generator warned about the description:\n{said}"
    );
    let out = Command::new(&tools.python)
        .arg(repo_root().join("tests/openapi/seed_flow.py"))
        .env("CEDARD_URL", bin.url(""))
        .env("CEDARD_KEY", &key)
        .env("PYTHONPATH", &client)
        .output()
        .expect("run the seed flow");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all steps ok"),
        "the seed flow failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The places in `schema` (under `at`) that say only "an object": a
/// generator makes such a body `Record<string, never>` or an untyped dict.
fn untyped(schema: &Value, at: &str, found: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            let object = map.get("type").is_some_and(|t| {
                t == "object"
                    || t.as_array()
                        .is_some_and(|t| t.contains(&Value::from("object")))
            });
            let described = [
                "properties",
                "additionalProperties",
                "oneOf",
                "anyOf",
                "allOf",
            ]
            .iter()
            .any(|k| map.contains_key(*k));
            if object && !described {
                found.push(at.to_owned());
            }
            for (k, v) in map {
                untyped(v, &format!("{at}/{k}"), found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                untyped(v, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_body_is_typed_and_every_operation_names_its_security() {
    let doc = serde_json::to_value(cedard::http::openapi("https://pdp.example.com")).expect("JSON");
    assert_eq!(
        doc["servers"],
        serde_json::json!([{"url": "https://pdp.example.com"}])
    );
    let mut found = Vec::new();
    untyped(&doc["components"], "#/components", &mut found);
    untyped(&doc["paths"], "#/paths", &mut found);
    assert!(found.is_empty(), "untyped objects: {found:#?}");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            operations += 1;
            assert!(
                op["operationId"].is_string(),
                "{method} {path}: no operationId"
            );
            assert!(op["security"].is_array(), "{method} {path}: no security");
            let keyed = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
            });
            if keyed {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
            if let Some(body) = op.get("requestBody") {
                assert!(
                    body["content"]["application/json"]["schema"]["$ref"].is_string(),
                    "{method} {path}: the body is not a named schema: {body}"
                );
            }
        }
    }
    // The routes themselves are checked against the router in
    // `observe::the_openapi_document_describes_every_route_and_the_real_answers`.
    assert!(operations > 30, "{operations} operations");
}
