//! What the store costs: a decision for a stored principal with 100,000
//! users and 10,000 accounts in redb (one read transaction, the principal's
//! roles, the account, the entities built and checked against the schema),
//! against the same decision on prebuilt in-memory entities with bare
//! cedar-policy; and the latency of an invite accept and of a role change,
//! each one durable (fsync'd) redb commit.
//!
//! Run: `cargo bench --bench store -- --warm-up-time 1 --measurement-time 3`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use cedar_policy::{Authorizer, Entities, EntityUid};
use cedard::authz;
use cedard::facts::{EntityMemo, Facts, Inline};
use cedard::model::{self as entities, RoleCatalog};
use cedard::policy::{self, Sources};
use cedard::store::{Account, AccountKind, Invite, InviteState, Store, User};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};

const USERS: usize = 100_000;
const ACCOUNTS: usize = 10_000;
const ROLES: [&str; 4] = ["basic", "billing", "dev", "admin"];

fn user(i: usize) -> User {
    User {
        id: format!("u{i}"),
        email: format!("u{i}@example.com"),
        email_verified: false,
        name: Some(format!("User {i}")),
        created_at: 0,
    }
}

/// Fills the store: every account `a<k>` is a team owned by `u<k>` (its
/// admin); every user is a member of account `i % 10,000` with a role by
/// `i % 4`, and every third user also of the next account.
fn populate(store: &Store) {
    store
        .write(|w| {
            for k in 0..ACCOUNTS {
                w.import_account(&Account {
                    id: format!("a{k}"),
                    name: format!("Account {k}"),
                    kind: AccountKind::Team,
                    owner: format!("u{k}"),
                    created_at: 0,
                })?;
            }
            for i in 0..USERS {
                w.import_user(&user(i))?;
                let a = format!("a{}", i % ACCOUNTS);
                let role = if i < ACCOUNTS { "admin" } else { ROLES[i % 4] };
                w.add_member(&a, &format!("u{i}"), role, 0)?;
                if i % 3 == 0 {
                    let b = format!("a{}", (i + 1) % ACCOUNTS);
                    w.add_member(&b, &format!("u{i}"), ROLES[(i / 3) % 4], 0)?;
                }
            }
            Ok(())
        })
        .expect("populate");
}

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sources = Sources {
        policies: root.join("policies"),
        schema: root.join("schema"),
        ..Default::default()
    };
    let snapshot = policy::load(&sources, 1).expect("the default pack loads");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("bench.redb")).expect("store");
    let started = std::time::Instant::now();
    populate(&store);
    eprintln!(
        "populated {USERS} users, {ACCOUNTS} accounts in {:?}",
        started.elapsed()
    );
    let catalog = RoleCatalog::default();
    let memo = EntityMemo::default();

    // The questions: user u<i> (a dev, i ≡ 2 mod 4, not an owner) asks to
    // `createPod` on their account; 1,000 different users in turn.
    let askers: Vec<usize> = (0..1000)
        .map(|n| ACCOUNTS + 2 + 4 * 97 * n % (USERS - ACCOUNTS - 4))
        .collect();
    let askers: Vec<usize> = askers.into_iter().map(|i| i - i % 4 + 2).collect();
    let action: EntityUid = r#"Action::"createPod""#.parse().expect("action");
    let questions: Vec<(EntityUid, EntityUid)> = askers
        .iter()
        .map(|&i| {
            (
                entities::user_uid(&format!("u{i}")),
                entities::account_uid(&format!("a{}", i % ACCOUNTS)),
            )
        })
        .collect();

    // The store path's answer must be the bare path's answer.
    let roles = catalog.roles(&snapshot).expect("roles");
    let prebuilt: Vec<Entities> = askers
        .iter()
        .map(|&i| {
            let view = store.read().expect("read");
            let u = view.user(&format!("u{i}")).expect("get").expect("user");
            let a = view
                .account(&format!("a{}", i % ACCOUNTS))
                .expect("get")
                .expect("account");
            let memberships = view.roles_of(&u.id).expect("roles");
            snapshot
                .action_entities
                .clone()
                .add_entities(
                    [
                        entities::user_entity(&u, &memberships).expect("user entity"),
                        entities::account_entity(&a, &roles).expect("account entity"),
                    ],
                    Some(&snapshot.schema),
                )
                .expect("entities")
        })
        .collect();

    let mut group = c.benchmark_group("decision");
    let n = AtomicU64::new(0);
    let bare = |n: &AtomicU64| {
        let k = n.fetch_add(1, Ordering::Relaxed) as usize % questions.len();
        let (p, r) = &questions[k];
        let request =
            authz::build_request(&snapshot, p.clone(), action.clone(), r.clone(), None, true)
                .expect("request");
        let response = Authorizer::new().is_authorized(&request, &snapshot.policies, &prebuilt[k]);
        assert_eq!(response.decision(), cedar_policy::Decision::Allow);
        response
    };
    group.bench_function("bare cedar-policy, prebuilt entities", |b| {
        b.iter(|| black_box(bare(&n)))
    });
    let stored = |memo: &EntityMemo| {
        let k = n.fetch_add(1, Ordering::Relaxed) as usize % questions.len();
        let (p, r) = &questions[k];
        let facts = Facts::new(&snapshot, &catalog, memo, &store, usize::MAX);
        let entities = facts.entities(Inline::None, &[(p, r)]).expect("entities");
        let request =
            authz::build_request(&snapshot, p.clone(), action.clone(), r.clone(), None, true)
                .expect("request");
        let decision = authz::decide(&snapshot, &request, &entities);
        assert!(decision.allow);
        decision
    };
    // The usual case: no write since these users were last asked about, so
    // the entity memo answers and redb is not touched.
    group.bench_function("stored principal and account, memo hit", |b| {
        b.iter(|| black_box(stored(&memo)))
    });
    // The worst case: as if a write landed before every decision, so each
    // one opens a read transaction, reads, builds and schema-checks.
    group.bench_function("stored principal and account, read from redb", |b| {
        b.iter(|| black_box(stored(&EntityMemo::default())))
    });
    // Right after a write to someone else: each decision follows a
    // committed write (another user's email flag toggled, not timed), which
    // makes the memo forget that user only.
    let toggle = AtomicU64::new(0);
    // One committed write: user u99999's email flag toggled in `store`.
    let toggle_in = |store: &Store| {
        let verified = toggle.fetch_add(1, Ordering::Relaxed).is_multiple_of(2);
        store
            .write(|w| w.set_email_verified("u99999", verified).map(|_| ()))
            .expect("write");
    };
    group.bench_function("stored principal and account, right after a write", |b| {
        b.iter_batched(
            || toggle_in(&store),
            |()| black_box(stored(&memo)),
            BatchSize::PerIteration,
        )
    });
    // The control for the line above: the same pause for a durable write
    // (a file written and synced, not the store), then a memo hit. What the
    // two lines share is the cost of a decision made cold, after a commit.
    let scratch = tempfile::NamedTempFile::new().expect("scratch file");
    group.bench_function(
        "stored principal and account, memo hit after an fsync",
        |b| {
            b.iter_batched(
                || {
                    use std::io::Write;
                    let mut f = scratch.reopen().expect("reopen");
                    f.write_all(b"x").expect("write");
                    f.sync_all().expect("sync");
                },
                |()| black_box(stored(&memo)),
                BatchSize::PerIteration,
            )
        },
    );
    // The baseline for "right after a write" under the same conditions:
    // bare cedar-policy on prebuilt entities, each decision right after the
    // same write to the store (which bare cedar-policy does not read).
    group.bench_function(
        "bare cedar-policy, prebuilt entities, right after a write",
        |b| {
            b.iter_batched(
                || toggle_in(&store),
                |()| black_box(bare(&n)),
                BatchSize::PerIteration,
            )
        },
    );
    // A second control: the same write, committed to another redb file
    // (one user), then a memo hit. It pays what a commit costs the caches
    // and nothing of the memo's eviction; the difference between this line
    // and "right after a write" is what the eviction itself costs.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = Store::open(&other_dir.path().join("other.redb")).expect("store");
    other
        .write(|w| {
            w.import_user(&User {
                id: "u99999".into(),
                email: "u99999@example.com".into(),
                email_verified: false,
                name: None,
                created_at: 0,
            })
        })
        .expect("populate the other store");
    group.bench_function(
        "stored principal and account, memo hit after a write to another store",
        |b| {
            b.iter_batched(
                || toggle_in(&other),
                |()| black_box(stored(&memo)),
                BatchSize::PerIteration,
            )
        },
    );
    // As the HTTP API gets it: `startPod` on a Pod sent inline (raw JSON),
    // the user and the Pod's account from the store (memo hit).
    let start: EntityUid = r#"Action::"startPod""#.parse().expect("action");
    let pods: Vec<(EntityUid, Box<serde_json::value::RawValue>)> = askers
        .iter()
        .map(|&i| {
            let account = format!("a{}", i % ACCOUNTS);
            let pod = cedard::model::resource_entity("Pod", &format!("{account}-p1"), &account)
                .expect("pod");
            let json = serde_json::json!([cedard::model::to_json(&pod).expect("json")]);
            (
                format!(r#"Pod::"{account}-p1""#).parse().expect("pod"),
                serde_json::value::to_raw_value(&json).expect("raw"),
            )
        })
        .collect();
    let bare_pods: Vec<Entities> = prebuilt
        .iter()
        .zip(&pods)
        .map(|(e, (_, raw))| {
            let pod = authz::parse_entities_raw(&snapshot, raw).expect("pod");
            e.clone()
                .add_entities(
                    pod.iter()
                        .filter(|p| p.uid().type_name().to_string() == "Pod")
                        .cloned(),
                    None,
                )
                .expect("merge")
        })
        .collect();
    group.bench_function("bare cedar-policy, prebuilt entities with the Pod", |b| {
        b.iter(|| {
            let k = n.fetch_add(1, Ordering::Relaxed) as usize % questions.len();
            let (p, _) = &questions[k];
            let request = authz::build_request(
                &snapshot,
                p.clone(),
                start.clone(),
                pods[k].0.clone(),
                None,
                true,
            )
            .expect("request");
            let response =
                Authorizer::new().is_authorized(&request, &snapshot.policies, &bare_pods[k]);
            assert_eq!(response.decision(), cedar_policy::Decision::Allow);
            black_box(response)
        })
    });
    group.bench_function("stored principal and account, inline Pod, memo hit", |b| {
        b.iter(|| {
            let k = n.fetch_add(1, Ordering::Relaxed) as usize % questions.len();
            let (p, _) = &questions[k];
            let (pod, raw) = &pods[k];
            let facts = Facts::new(&snapshot, &catalog, &memo, &store, usize::MAX);
            let entities = facts
                .entities(Inline::Raw(raw), &[(p, pod)])
                .expect("entities");
            let request =
                authz::build_request(&snapshot, p.clone(), start.clone(), pod.clone(), None, true)
                    .expect("request");
            let decision = authz::decide(&snapshot, &request, &entities);
            assert!(decision.allow);
            black_box(decision)
        })
    });
    group.finish();

    // Where the stored decision's time goes, piece by piece.
    let mut group = c.benchmark_group("stored decision pieces");
    let (p0, r0) = &questions[0];
    let (uid0, aid0) = (
        p0.id().unescaped().to_owned(),
        r0.id().unescaped().to_owned(),
    );
    group.bench_function("redb: read transaction + user, roles, account", |b| {
        b.iter(|| {
            let view = store.read().expect("read");
            let u = view.user(&uid0).expect("get");
            let m = view.roles_of(&uid0).expect("roles");
            let a = view.account(&aid0).expect("get");
            black_box((u, m, a))
        })
    });
    let view = store.read().expect("read");
    let (u0, m0, a0) = (
        view.user(&uid0).expect("get").expect("user"),
        view.roles_of(&uid0).expect("roles"),
        view.account(&aid0).expect("get").expect("account"),
    );
    drop(view);
    group.bench_function("build the two entities", |b| {
        b.iter(|| {
            black_box((
                entities::user_entity(&u0, &m0).expect("user"),
                entities::account_entity(&a0, &roles).expect("account"),
            ))
        })
    });
    let extra = [
        entities::user_entity(&u0, &m0).expect("user"),
        entities::account_entity(&a0, &roles).expect("account"),
    ];
    group.bench_function("merge into action entities, schema-checked", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .action_entities
                    .clone()
                    .add_entities(extra.clone(), Some(&snapshot.schema))
                    .expect("merge"),
            )
        })
    });
    group.bench_function("merge into action entities, unchecked", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .action_entities
                    .clone()
                    .add_entities(extra.clone(), None)
                    .expect("merge"),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("durable write");
    // Accept: each iteration a fresh user accepts a fresh invite to `a0`.
    let next = AtomicU64::new(0);
    group.bench_function("invite accept (one commit)", |b| {
        b.iter_batched(
            || {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let id = format!("joiner{i}");
                let sha = format!("{:064x}", i + 1);
                store
                    .write(|w| {
                        w.import_user(&User {
                            id: id.clone(),
                            email: format!("{id}@example.com"),
                            email_verified: false,
                            name: None,
                            created_at: 0,
                        })?;
                        w.create_invite(&Invite {
                            id: format!("inv{i}"),
                            account: "a0".into(),
                            role: "dev".into(),
                            email: None,
                            token_sha256: sha.clone(),
                            created_by: "u0".into(),
                            created_at: 0,
                            expires_at: i64::MAX,
                            state: InviteState::Pending,
                        })
                    })
                    .expect("setup");
                (id, sha)
            },
            |(id, sha)| store.write(|w| w.accept(&sha, &id, 1)).expect("accept"),
            BatchSize::PerIteration,
        )
    });
    // Role change: a member of `a1` alternates between two roles.
    let flip = AtomicU64::new(0);
    group.bench_function("role change (one commit)", |b| {
        b.iter(|| {
            let role = ROLES[(flip.fetch_add(1, Ordering::Relaxed) % 2) as usize];
            store
                .write(|w| w.set_role("a1", "u10001", role, "admin"))
                .expect("set role")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
