//! The Cedar paper's workloads (`../shared/cedar-workloads/`: gdrive, github
//! and tinytodo, each at small, medium and large) in process: cedard's
//! decision path (`Pdp::check`, with the workload's entities loaded as an
//! entity data file and an empty store) against bare `is_authorized` on the
//! same entities, built once. Both ask the workload's 2,000 requests in
//! turn, so one iteration is one decision. Each pair of lines of the output
//! is one ratio of the same run.
//!
//! Run: `cargo bench --bench workloads` (all nine), or with a filter,
//! `cargo bench --bench workloads -- gdrive/large`. `CEDAR_WORKLOADS` names
//! another copy of the workloads folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};
use cedard::audit::DecisionLog;
use cedard::facts::Inline;
use cedard::pdp::{ActionRef, Caller, Limits, Pdp, Principal, Query};
use cedard::policy::watch::LivePolicies;
use cedard::policy::Sources;
use cedard::store::Store;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::Value;

const WORKLOADS: [&str; 3] = ["gdrive", "github", "tinytodo"];
const SIZES: [&str; 3] = ["small", "medium", "large"];

fn root() -> PathBuf {
    std::env::var_os("CEDAR_WORKLOADS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cedar-workloads")
        })
}

fn uid(v: &Value) -> EntityUid {
    EntityUid::from_json(v.clone()).expect("a workload request names entities by uid")
}

/// One workload at one size, loaded both ways.
struct Loaded {
    pdp: Pdp,
    requests: Vec<Value>,
    bare_requests: Vec<Request>,
    bare_entities: Entities,
    bare_policies: cedar_policy::PolicySet,
    schema: cedar_policy::Schema,
    _dir: tempfile::TempDir,
}

fn load(dir: &Path, size: &str) -> Loaded {
    let entities_file = dir.join(size).join("entities.json");
    let live = LivePolicies::start(
        Sources {
            policies: dir.join("policies"),
            schema: dir.join("schema"),
            entities: Some(entities_file.clone()),
            ..Sources::default()
        },
        Duration::ZERO,
    )
    .unwrap_or_else(|e| panic!("{} loads: {e}", dir.display()));
    let data = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&data.path().join("cedard.redb")).expect("store");
    let snapshot = live.snapshot();
    let schema = snapshot.schema.clone();
    let bare_policies = snapshot.policies.clone();
    let pdp = Pdp::new(
        live.clone(),
        Arc::new(store),
        DecisionLog::disabled(),
        Limits::default(),
    );
    let text = std::fs::read_to_string(dir.join(size).join("requests.jsonl")).expect("requests");
    let requests: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a request line"))
        .collect();
    let bare_requests = requests
        .iter()
        .map(|r| {
            Request::new(
                uid(&r["principal"]),
                uid(&r["action"]),
                uid(&r["resource"]),
                Context::empty(),
                Some(&schema),
            )
            .expect("a valid request")
        })
        .collect();
    let file = std::fs::File::open(&entities_file).expect("entities");
    let bare_entities = Entities::from_json_file(file, Some(&schema)).expect("entities");
    Loaded {
        pdp,
        requests,
        bare_requests,
        bare_entities,
        bare_policies,
        schema,
        _dir: data,
    }
}

fn bench(c: &mut Criterion) {
    let root = root();
    let caller = Caller {
        endpoint: "bench",
        ..Caller::default()
    };
    let authorizer = Authorizer::new();
    for workload in WORKLOADS {
        for size in SIZES {
            let name = format!("{workload}/{size}");
            // Skip loading what the filter leaves out (a large load takes
            // seconds).
            if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
                if !name.contains(&filter) {
                    continue;
                }
            }
            let w = load(&root.join(workload), size);
            // The two paths agree on every request before either is timed.
            for (r, bare) in w.requests.iter().zip(&w.bare_requests) {
                let want = authorizer
                    .is_authorized(bare, &w.bare_policies, &w.bare_entities)
                    .decision()
                    == cedar_policy::Decision::Allow;
                let got = check(&w.pdp, &caller, r);
                assert_eq!(got, want, "{name}: {r}");
            }
            let n = w.requests.len();
            let mut group = c.benchmark_group(&name);
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(4));
            let mut i = 0;
            group.bench_function("bare is_authorized, prebuilt entities and request", |b| {
                b.iter(|| {
                    i = (i + 1) % n;
                    black_box(authorizer.is_authorized(
                        &w.bare_requests[i],
                        &w.bare_policies,
                        &w.bare_entities,
                    ))
                })
            });
            let mut i = 0;
            group.bench_function("bare Request::new with schema + is_authorized", |b| {
                b.iter(|| {
                    i = (i + 1) % n;
                    let r = &w.requests[i];
                    let request = Request::new(
                        uid(&r["principal"]),
                        uid(&r["action"]),
                        uid(&r["resource"]),
                        Context::empty(),
                        Some(&w.schema),
                    )
                    .expect("a valid request");
                    black_box(authorizer.is_authorized(
                        &request,
                        &w.bare_policies,
                        &w.bare_entities,
                    ))
                })
            });
            let mut i = 0;
            group.bench_function("cedard Pdp::check", |b| {
                b.iter(|| {
                    i = (i + 1) % n;
                    black_box(check(&w.pdp, &caller, &w.requests[i]))
                })
            });
            group.finish();
        }
    }
}

fn check(pdp: &Pdp, caller: &Caller, r: &Value) -> bool {
    let query = Query {
        principal: Principal::Ref(&r["principal"]),
        action: ActionRef::Uid(&r["action"]),
        resource: &r["resource"],
        context: r.get("context"),
    };
    let checked = pdp
        .check(caller, &[query], Inline::None, false)
        .unwrap_or_else(|e| panic!("{r}: {e}"));
    checked.decisions[0].allow
}

criterion_group!(benches, bench);
criterion_main!(benches);
