//! Where the time of one HTTP check goes, piece by piece, on the default pack
//! with three inline entities (a user, an account, a pod): body parsing,
//! entity decoding (Cedar's JSON parser with the schema, as cedard does), the
//! request, and Cedar's `is_authorized`. Run: `cargo bench --bench decide`.

use std::path::PathBuf;

use cedar_policy::{Authorizer, Entities};
use cedard::policy::{self, Sources};
use cedard::{authz, model};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

/// The question of README: may dana (a dev of acme) start pod p1? Its three
/// inline entities made by the account model's builders, with the schema's
/// roles.
fn body(roles: &[String]) -> Value {
    let entity = |e: Result<cedar_policy::Entity, model::ModelError>| {
        model::to_json(&e.expect("entity")).expect("json")
    };
    let dev = [("acme".to_owned(), "dev".to_owned())];
    json!({
        "principal": {"type": "User", "id": "dana"},
        "action": {"type": "Action", "id": "startPod"},
        "resource": {"type": "Pod", "id": "p1"},
        "entities": [
            entity(model::person("dana", "dana@example.com", None, &dev)),
            entity(model::group("acme", "Acme", "team", "olga", roles)),
            entity(model::resource_entity("Pod", "p1", "acme")),
        ],
    })
}

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let snapshot = policy::load(
        &Sources {
            policies: root.join("policies"),
            schema: root.join("schema"),
            ..Default::default()
        },
        1,
    )
    .expect("the default pack loads");
    let roles = model::RoleCatalog::default()
        .roles(&snapshot)
        .expect("roles");
    let body = body(&roles);
    let raw = body.to_string();
    let entities_json = body["entities"].clone();

    c.bench_function("parse body json", |b| {
        b.iter(|| black_box(serde_json::from_str::<Value>(black_box(&raw)).expect("json")))
    });
    c.bench_function("entities: Entities::from_json_value with schema", |b| {
        b.iter(|| {
            black_box(
                Entities::from_json_value(entities_json.clone(), Some(&snapshot.schema))
                    .expect("entities"),
            )
        })
    });
    c.bench_function("entities: authz::parse_entities", |b| {
        b.iter(|| black_box(authz::parse_entities(&snapshot, &entities_json).expect("entities")))
    });
    // Cedar's JSON entity parser even without a schema: the floor of any
    // decoding that goes through it.
    c.bench_function("entities: Entity::from_json_value, no schema", |b| {
        b.iter(|| {
            let list: Vec<cedar_policy::Entity> = entities_json
                .as_array()
                .expect("array")
                .iter()
                .map(|e| cedar_policy::Entity::from_json_value(e.clone(), None).expect("entity"))
                .collect();
            black_box(list)
        })
    });
    // One entity at a time from its text, as the HTTP path decodes them:
    // Cedar's parser with the schema against cedard's schema-directed
    // decoder (which builds the same entities; tests/it/entity_decoder.rs).
    let texts: Vec<String> = entities_json
        .as_array()
        .expect("array")
        .iter()
        .map(Value::to_string)
        .collect();
    c.bench_function("entities: Entity::from_json_str with schema, each", |b| {
        b.iter(|| {
            let list: Vec<cedar_policy::Entity> = texts
                .iter()
                .map(|t| {
                    cedar_policy::Entity::from_json_str(t, Some(&snapshot.schema)).expect("entity")
                })
                .collect();
            black_box(list)
        })
    });
    c.bench_function("entities: cedard decode::entity_from_str, each", |b| {
        b.iter(|| {
            let list: Vec<cedar_policy::Entity> = texts
                .iter()
                .map(|t| {
                    policy::decode::entity_from_str(&snapshot.shapes, &snapshot.schema, t)
                        .expect("entity")
                })
                .collect();
            black_box(list)
        })
    });
    let raw_entities =
        serde_json::value::RawValue::from_string(entities_json.to_string()).expect("raw");
    c.bench_function("entities: authz::parse_entities_raw, memo hit", |b| {
        b.iter(|| black_box(authz::parse_entities_raw(&snapshot, &raw_entities).expect("entities")))
    });
    let entities = authz::parse_entities(&snapshot, &entities_json).expect("entities");
    let uid = |f: &str| authz::parse_uid(f, &body[f]).expect("uid");
    c.bench_function("request with validation", |b| {
        b.iter(|| {
            black_box(
                authz::build_request(
                    &snapshot,
                    uid("principal"),
                    uid("action"),
                    uid("resource"),
                    None,
                    true,
                )
                .expect("request"),
            )
        })
    });
    let request = authz::build_request(
        &snapshot,
        uid("principal"),
        uid("action"),
        uid("resource"),
        None,
        true,
    )
    .expect("request");
    c.bench_function("cedar is_authorized", |b| {
        b.iter(|| {
            black_box(Authorizer::new().is_authorized(&request, &snapshot.policies, &entities))
        })
    });
    c.bench_function("authz::decide (the request's slice of the set)", |b| {
        b.iter(|| black_box(authz::decide(&snapshot, &request, &entities)))
    });
    c.bench_function("whole check (body to decision)", |b| {
        b.iter(|| {
            let body: Value = serde_json::from_str(&raw).expect("json");
            let entities = authz::parse_entities(&snapshot, &body["entities"]).expect("entities");
            let request = authz::build_request(
                &snapshot,
                authz::parse_uid("principal", &body["principal"]).expect("uid"),
                authz::parse_uid("action", &body["action"]).expect("uid"),
                authz::parse_uid("resource", &body["resource"]).expect("uid"),
                None,
                true,
            )
            .expect("request");
            black_box(authz::decide(&snapshot, &request, &entities))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
