//! Cedar conformance over HTTP: corpus files from Cedar's integration tests
//! that should validate, each served by a real daemon over its own policies
//! and schema, every request sent to `/v1/is_authorized` with the file's
//! entities inline, and the answer compared with Cedar's expected decision,
//! reasons and errors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde_json::{json, Value};

use crate::support::{repo_root, spawn_app_in};

/// How many corpus files are served. Each gets its own daemon, so this is
/// what bounds the test's run time.
const FILES: usize = 300;

/// Every file of the corpus archive, by path inside it.
fn corpus_archive() -> BTreeMap<String, Vec<u8>> {
    let path = repo_root().join("../shared/cedar-integration-tests/corpus-tests.tar.gz");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = BTreeMap::new();
    for entry in archive.entries().expect("archive entries") {
        let mut entry = entry.expect("archive entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        files.insert(name, bytes);
    }
    files
}

fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(
        files
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone(),
    )
    .expect("utf-8")
}

fn id_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_answers_corpus_requests_as_cedar_does() {
    let files = corpus_archive();
    let tests: Vec<(String, Value)> = files
        .keys()
        .filter(|k| k.ends_with(".json") && !k.ends_with(".entities.json"))
        .map(|k| {
            let test: Value = serde_json::from_str(&text(&files, k)).expect("test json");
            (k.clone(), test)
        })
        .filter(|(_, t)| t["shouldValidate"] == json!(true))
        .take(FILES)
        .collect();
    assert_eq!(tests.len(), FILES, "the corpus has enough valid files");

    let mut mismatches = Vec::new();
    let mut requests = 0usize;
    // What the sample covers, so that a sample of only denials cannot pass
    // for conformance.
    let (mut allows, mut with_errors) = (0usize, 0usize);
    for (name, test) in &tests {
        let field = |f: &str| test[f].as_str().expect("path field").to_owned();
        let stem = name
            .trim_start_matches("corpus-tests/")
            .trim_end_matches(".json")
            .to_owned();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        std::fs::create_dir_all(dir.path().join("schema")).expect("schema dir");
        std::fs::write(
            dir.path().join("policies").join(format!("{stem}.cedar")),
            text(&files, &field("policies")),
        )
        .expect("write policies");
        std::fs::write(
            dir.path()
                .join("schema")
                .join(format!("{stem}.cedarschema")),
            text(&files, &field("schema")),
        )
        .expect("write schema");
        let entities: Value =
            serde_json::from_str(&text(&files, &field("entities"))).expect("entities json");

        let app = spawn_app_in(dir, |_| {}).await;
        // cedard names policies by `@id` or file and position; Cedar's format
        // names them `policy<index>` within the one file, so a policy listed
        // in any other file keeps its cedard id and shows up as a mismatch.
        let (status, listing) = app.get("/v1/policies").await;
        assert_eq!(status, 200, "{name}: {listing}");
        let cedar_name: BTreeMap<String, String> = listing["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .filter(|p| p["file"] == json!(format!("{stem}.cedar")))
            .map(|p| {
                (
                    p["id"].as_str().expect("id").to_owned(),
                    format!("policy{}", p["index"].as_u64().expect("index")),
                )
            })
            .collect();
        let rename = |ids: BTreeSet<String>| -> BTreeSet<String> {
            ids.into_iter()
                .map(|id| cedar_name.get(&id).cloned().unwrap_or(id))
                .collect()
        };

        for request in test["requests"].as_array().expect("requests") {
            requests += 1;
            assert_eq!(
                request["validateRequest"],
                json!(true),
                "{name}: the daemon always validates requests"
            );
            let body = json!({
                "principal": request["principal"],
                "action": request["action"],
                "resource": request["resource"],
                "context": request["context"],
                "entities": entities,
            });
            let (status, answer) = app.post("/v1/is_authorized", &body).await;
            let want = (
                request["decision"]
                    .as_str()
                    .expect("decision")
                    .to_lowercase(),
                id_set(&request["reason"]),
                id_set(&request["errors"]),
            );
            let reasons: Value = answer["reasons"]
                .as_array()
                .map(|r| r.iter().map(|x| x["policy_id"].clone()).collect())
                .unwrap_or(Value::Null);
            let errors: Value = answer["errors"]
                .as_array()
                .map(|r| r.iter().map(|x| x["policy_id"].clone()).collect())
                .unwrap_or(Value::Null);
            let got = (
                answer["decision"].as_str().unwrap_or_default().to_owned(),
                rename(id_set(&reasons)),
                rename(id_set(&errors)),
            );
            allows += usize::from(want.0 == "allow");
            with_errors += usize::from(!want.2.is_empty());
            if status != 200 || got != want {
                mismatches.push(format!(
                    "{name} {}: expected {want:?}, got {status} {got:?} {answer}",
                    request["description"]
                ));
            }
        }
        app.stop().await;
    }
    assert_eq!(requests, FILES * 8, "every corpus file has 8 requests");
    assert!(
        allows > 0 && allows < requests && with_errors > 0,
        "{allows} allows and {with_errors} requests with errors in {requests}"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {requests} requests differ from Cedar, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}
