//! The schema-directed entity decoder (`policy::decode`) against Cedar's own
//! JSON entity parser: over every entity of Cedar's integration corpus, and
//! mutations of each (values of the wrong kind, missing and undeclared
//! attributes, parents of every declared type, escapes, repeated keys), an
//! entity the decoder builds must be exactly the entity Cedar's parser builds
//! from the same text under the same schema; where the decoder is not sure it
//! declines, and Cedar's parser answers (its entity or its error) as before.

use cedar_policy::{Entity, Schema};
use cedard::policy::decode::Shapes;
use cedard::policy::SourceFile;
use cedard::suite::tree::Tree;
use serde_json::{json, Value};

use crate::support::repo_root;

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

#[derive(Default, Debug)]
struct Tally {
    schemas: usize,
    texts: usize,
    decoded: usize,
    declined: usize,
    mismatches: Vec<String>,
}

impl Tally {
    /// Decodes `text` both ways (from the text, and from a parsed value as
    /// the batch API does) and records any disagreement.
    fn compare(&mut self, shapes: &Shapes, schema: &Schema, text: &str) {
        self.texts += 1;
        let cedar = Entity::from_json_str(text, Some(schema));
        match shapes.decode_str(text) {
            Some(ours) => {
                self.decoded += 1;
                match &cedar {
                    Ok(theirs) if *theirs == ours => {}
                    Ok(theirs) => self
                        .mismatches
                        .push(format!("{text}\n  ours:  {ours:?}\n  cedar: {theirs:?}")),
                    Err(e) => self
                        .mismatches
                        .push(format!("{text}\n  ours:  {ours:?}\n  cedar refused: {e}")),
                }
            }
            None => self.declined += 1,
        }
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            if let Some(ours) = shapes.decode_value(&value) {
                match Entity::from_json_value(value, Some(schema)) {
                    Ok(theirs) if theirs == ours => {}
                    other => self.mismatches.push(format!(
                        "(value) {text}\n  ours: {ours:?}\n  cedar: {other:?}"
                    )),
                }
            }
        }
    }
}

/// Mutations of one entity: each a whole entity text.
fn mutants(entity: &Value, types: &[String], rng: &mut Rng) -> Vec<String> {
    let mut out = Vec::new();
    let replacements = [
        json!("x"),
        json!(1),
        json!(-7),
        json!(true),
        json!(1.5),
        json!(1e30),
        json!(9_223_372_036_854_775_808u64),
        json!(null),
        json!([]),
        json!({}),
        json!([1, 2]),
        json!(["a"]),
        json!({"a": 1}),
        json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}}),
        json!({"fn": "decimal", "arg": "1.5"}),
    ];
    let mut with = |f: &dyn Fn(&mut Value)| {
        let mut e = entity.clone();
        f(&mut e);
        out.push(e.to_string());
    };
    let attrs: Vec<String> = entity["attrs"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for name in &attrs {
        let r = replacements[rng.below(replacements.len())].clone();
        with(&|e| e["attrs"][name] = r.clone());
        let ty = &types[rng.below(types.len())];
        with(&|e| e["attrs"][name] = json!({"type": ty, "id": "m"}));
        with(&|e| {
            let v = e["attrs"][name].clone();
            e["attrs"][name] = json!({"__entity": v});
        });
        with(&|e| {
            if let Some(m) = e["attrs"].as_object_mut() {
                m.remove(name);
            }
        });
        // Inside a record or a set: the first field or element changed.
        with(&|e| match &mut e["attrs"][name] {
            Value::Object(m) => {
                if let Some((_, v)) = m.iter_mut().next() {
                    *v = r.clone();
                }
            }
            Value::Array(items) => items.push(r.clone()),
            _ => {}
        });
    }
    with(&|e| e["attrs"]["undeclared"] = json!("x"));
    let ty = &types[rng.below(types.len())];
    with(&|e| {
        if let Some(p) = e["parents"].as_array_mut() {
            p.push(json!({"type": ty, "id": "p"}));
        }
    });
    with(&|e| {
        let uid = e["uid"].clone();
        if let Some(p) = e["parents"].as_array_mut() {
            p.push(json!({"__entity": uid}));
        }
    });
    with(&|e| e["uid"] = json!({"__entity": e["uid"].clone()}));
    with(&|e| e["uid"]["type"] = json!(ty));
    with(&|e| e["tags"] = json!({}));
    with(&|e| {
        if let Some(m) = e.as_object_mut() {
            m.remove("parents");
        }
    });
    // A repeated key, which only the text can carry.
    let text = entity.to_string();
    out.push(text.replacen("\"attrs\":", "\"attrs\":{},\"attrs\":", 1));
    if let Some(first) = attrs.first() {
        let key = format!("\"{first}\":");
        out.push(text.replacen(&key, &format!("{key}null,{key}"), 1));
    }
    out
}

#[test]
fn the_decoder_builds_what_cedar_builds_over_the_corpus_and_its_mutations() {
    let archive = repo_root().join("../shared/cedar-integration-tests/corpus-tests.tar.gz");
    let mut tree = Tree::default();
    let files = tree
        .add_archive(&archive)
        .unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let mut tally = Tally::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for path in files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".cedarschema"))
    {
        let entities_path = path.with_extension("entities.json");
        let (Ok(schema_text), Ok(entities_text)) = (tree.read(path), tree.read(&entities_path))
        else {
            continue;
        };
        let Ok((schema, _)) = Schema::from_cedarschema_str(&schema_text) else {
            continue;
        };
        let shapes = Shapes::from_schema_files(&[SourceFile {
            name: "schema.cedarschema".into(),
            text: schema_text.clone(),
        }]);
        tally.schemas += 1;
        let Ok(items) = serde_json::from_str::<Vec<Value>>(&entities_text) else {
            continue;
        };
        let mut types: Vec<String> = schema.entity_types().map(|t| t.to_string()).collect();
        types.push("Action".into());
        for item in &items {
            tally.compare(&shapes, &schema, &item.to_string());
            for m in mutants(item, &types, &mut rng) {
                tally.compare(&shapes, &schema, &m);
            }
        }
    }
    eprintln!(
        "{} schemas, {} entity texts: {} decoded by cedard's decoder, {} left to Cedar's parser",
        tally.schemas, tally.texts, tally.decoded, tally.declined
    );
    assert!(
        tally.mismatches.is_empty(),
        "{} disagreements, the first:\n{}",
        tally.mismatches.len(),
        tally
            .mismatches
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The comparison means something only if the decoder decodes much of
    // the corpus itself, and declines the mutants Cedar refuses.
    assert!(tally.schemas > 5_000, "{tally:?}");
    assert!(tally.decoded > 20_000, "{tally:?}");
    assert!(tally.declined > 20_000, "{tally:?}");
}

#[test]
fn the_default_pack_and_the_paper_workloads_are_decoded_without_cedars_parser() {
    let cases = [
        (repo_root().join("schema"), None),
        (
            repo_root().join("../shared/cedar-workloads/gdrive/schema"),
            Some("gdrive/medium"),
        ),
        (
            repo_root().join("../shared/cedar-workloads/github/schema"),
            Some("github/medium"),
        ),
        (
            repo_root().join("../shared/cedar-workloads/tinytodo/schema"),
            Some("tinytodo/medium"),
        ),
    ];
    for (dir, data) in cases {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            files.push(SourceFile {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
                text: std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")),
            });
        }
        let schema = if files[0].name.ends_with(".json") {
            Schema::from_json_str(&files[0].text).unwrap_or_else(|e| panic!("{e}"))
        } else {
            Schema::from_cedarschema_str(&files[0].text)
                .unwrap_or_else(|e| panic!("{e}"))
                .0
        };
        let shapes = Shapes::from_schema_files(&files);
        let texts: Vec<String> = match data {
            None => vec![
                r#"{"uid": {"type": "User", "id": "dana"}, "attrs": {"email": "dana@example.com"}, "parents": [{"type": "Role", "id": "acme/dev"}]}"#.into(),
                format!(
                    r#"{{"uid": {{"type": "Account", "id": "acme"}}, "attrs": {{"name": "Acme", "kind": "team", "owner": {{"type": "User", "id": "olga"}}, "account": {{"type": "Account", "id": "acme"}}, "roles": {{{}}}}}, "parents": []}}"#,
                    crate::support::schema_roles()
                        .iter()
                        .map(|r| format!(r#""{r}": {{"type": "Role", "id": "acme/{r}"}}"#))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                r#"{"uid": {"type": "Pod", "id": "p1"}, "attrs": {"account": {"type": "Account", "id": "acme"}}, "parents": [{"type": "Account", "id": "acme"}]}"#.into(),
            ],
            Some(w) => {
                let text = std::fs::read_to_string(
                    repo_root().join(format!("../shared/cedar-workloads/{w}/entities.json")),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                serde_json::from_str::<Vec<Value>>(&text)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .iter()
                    .map(Value::to_string)
                    .collect()
            }
        };
        for text in &texts {
            let ours = shapes
                .decode_str(text)
                .unwrap_or_else(|| panic!("{}: declined {text}", dir.display()));
            let theirs =
                Entity::from_json_str(text, Some(&schema)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ours, theirs, "{text}");
        }
    }
}
