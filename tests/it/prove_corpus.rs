//! The proofs of `cedard::prove::compare` against concrete evaluation over
//! Cedar's integration corpus: for a deterministic sample of the corpus's
//! tests (one in [`EVERY`], in sorted order), mutants of each policy set (a
//! permit added, a policy dropped, a `when` negated) are proved against the
//! original set, and the proof holds against everything concrete there is:
//! no corpus request of an environment proved never wider is allowed by the
//! mutant and denied by the original (nor, never narrower, the opposite),
//! every counterexample the solver returns is confirmed by Cedar's own
//! `Authorizer` outside cedard's decision path, rebuilt from the witness as
//! a caller would send it, no counterexample is left unconfirmed, and a
//! mutation that can only widen (only narrow) is never proved narrower
//! (wider). Without cvc5 the test says it did not run; under CI it fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, Policy, PolicySet, Request, Schema,
};
use cedard::authz;
use cedard::policy::{load_files, Files, Limits, PolicySnapshot, SourceFile};
use cedard::prove::{compare, Change, Difference, Prover};
use cedard::suite::cedar_json::{Pending, TestFile};
use cedard::suite::tree::Tree;
use serde_json::{json, Value};

use crate::support::{not_run, repo_root};

/// One test in this many of the corpus, in sorted order, is taken.
const EVERY: usize = 97;

/// The most failures quoted in an assertion message.
const QUOTED: usize = 8;

/// The most characters of a counterexample's entities quoted.
const ENTITIES_QUOTED: usize = 400;

/// `text` cut to [`ENTITIES_QUOTED`] characters.
fn clip(text: &str) -> String {
    match text.char_indices().nth(ENTITIES_QUOTED) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// A request environment: principal type, action, resource type.
type Env = (String, String, String);

/// One item of a policy file, in file order.
#[derive(Clone)]
struct Item {
    /// The policy in Cedar's JSON policy format; `None` for a template.
    est: Option<Value>,
    /// Its text: the original, or rendered from `est` once mutated.
    text: String,
}

/// What a mutant changed, and so what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// A copy of a permit without its conditions, or an unconditional
    /// permit, added: it can only widen.
    PermitAdded,
    /// A forbid turned into a permit: it can only widen.
    ForbidToPermit,
    /// A permit dropped: it can only narrow.
    PermitDropped,
    /// A forbid dropped: it can only widen.
    ForbidDropped,
    /// `when { c }` turned into `unless { c }`: anything.
    WhenNegated,
}

impl Mutation {
    /// Whether it can only widen (`Some(true)`), only narrow
    /// (`Some(false)`), or either (`None`).
    fn direction(self) -> Option<bool> {
        match self {
            Mutation::PermitAdded | Mutation::ForbidToPermit | Mutation::ForbidDropped => {
                Some(true)
            }
            Mutation::PermitDropped => Some(false),
            Mutation::WhenNegated => None,
        }
    }
}

/// The items of a policy file, in file order (Cedar names them `policy0`,
/// `policy1`, … as it reads them).
fn items(text: &str) -> Result<Vec<Item>, String> {
    let set = PolicySet::from_str(text).map_err(|e| e.to_string())?;
    let index = |id: &cedar_policy::PolicyId| -> Result<usize, String> {
        id.to_string()
            .strip_prefix("policy")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected policy id `{id}`"))
    };
    let mut out = Vec::new();
    for p in set.policies() {
        let est = p.to_json().map_err(|e| e.to_string())?;
        out.push((
            index(p.id())?,
            Item {
                est: Some(est),
                text: p.to_string(),
            },
        ));
    }
    for t in set.templates() {
        out.push((
            index(t.id())?,
            Item {
                est: None,
                text: t.to_string(),
            },
        ));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, item)| item).collect())
}

/// A policy in Cedar's JSON format, in Cedar syntax.
fn render(est: Value) -> Result<Item, String> {
    let policy = Policy::from_json(None, est.clone()).map_err(|e| e.to_string())?;
    let text = policy
        .to_cedar()
        .ok_or_else(|| "a policy without Cedar syntax".to_owned())?;
    Ok(Item {
        est: Some(est),
        text,
    })
}

fn effect(item: &Item) -> Option<&str> {
    item.est.as_ref()?["effect"].as_str()
}

fn conditions(item: &Item) -> &[Value] {
    item.est
        .as_ref()
        .and_then(|e| e["conditions"].as_array())
        .map_or(&[], Vec::as_slice)
}

/// Whether a condition is more than `when { true }`, which most of the
/// corpus's policies carry.
fn nontrivial(condition: &Value) -> bool {
    condition["body"] != json!({"Value": true})
}

/// The mutants of a set: a permit added (a permit's conditions dropped in a
/// copy, a forbid turned into a permit, or, when the set has neither, an
/// unconditional permit), a policy dropped, a `when` negated. Each is picked
/// by `turn` among its candidates, non-trivial conditions first, so that the
/// sample varies which policy is touched.
fn mutants(items: &[Item], turn: usize) -> Result<Vec<(Mutation, Vec<Item>)>, String> {
    let statics: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].est.is_some())
        .collect();
    let with_effect = |want: &str| -> Vec<usize> {
        statics
            .iter()
            .copied()
            .filter(|&i| effect(&items[i]) == Some(want))
            .collect()
    };
    let mut out = Vec::new();

    // A permit added.
    let conditional_permits: Vec<usize> = with_effect("permit")
        .into_iter()
        .filter(|&i| conditions(&items[i]).iter().any(nontrivial))
        .collect();
    if let Some(&i) = conditional_permits.get(turn % conditional_permits.len().max(1)) {
        let mut set = items.to_vec();
        let mut est = items[i].est.clone().unwrap_or_default();
        est["conditions"] = json!([]);
        set.push(render(est)?);
        out.push((Mutation::PermitAdded, set));
    }
    let forbids = with_effect("forbid");
    if let Some(&i) = forbids.get(turn % forbids.len().max(1)) {
        let mut set = items.to_vec();
        let mut est = items[i].est.clone().unwrap_or_default();
        est["effect"] = json!("permit");
        set[i] = render(est)?;
        out.push((Mutation::ForbidToPermit, set));
    }
    if out.is_empty() {
        let mut set = items.to_vec();
        set.push(render(json!({
            "effect": "permit",
            "principal": {"op": "All"},
            "action": {"op": "All"},
            "resource": {"op": "All"},
            "conditions": []
        }))?);
        out.push((Mutation::PermitAdded, set));
    }

    // A policy dropped.
    if let Some(&i) = statics.get(turn % statics.len().max(1)) {
        let mut set = items.to_vec();
        let dropped = set.remove(i);
        let mutation = if effect(&dropped) == Some("permit") {
            Mutation::PermitDropped
        } else {
            Mutation::ForbidDropped
        };
        out.push((mutation, set));
    }

    // A `when` negated.
    let whens = |keep: fn(&Value) -> bool| -> Vec<(usize, usize)> {
        statics
            .iter()
            .flat_map(|&i| {
                conditions(&items[i])
                    .iter()
                    .enumerate()
                    .filter(move |(_, c)| c["kind"] == "when" && keep(c))
                    .map(move |(j, _)| (i, j))
            })
            .collect()
    };
    let mut candidates = whens(nontrivial);
    if candidates.is_empty() {
        candidates = whens(|_| true);
    }
    if let Some(&(i, j)) = candidates.get(turn % candidates.len().max(1)) {
        let mut set = items.to_vec();
        let mut est = items[i].est.clone().unwrap_or_default();
        est["conditions"][j]["kind"] = json!("unless");
        set[i] = render(est)?;
        out.push((Mutation::WhenNegated, set));
    }
    Ok(out)
}

fn text_of(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| i.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A snapshot as the daemon loads one: `policy::load_files`, strictly
/// validated.
fn snapshot(policies: &str, schema: &SourceFile) -> Result<Arc<PolicySnapshot>, String> {
    let files = Files {
        issuers: Vec::new(),
        issuers_dir: None,
        reserved_attributes: Vec::new(),
        policies: vec![SourceFile {
            name: "policies.cedar".into(),
            text: policies.to_owned(),
        }],
        schemas: vec![schema.clone()],
        entities: Vec::new(),
        reserved_types: Vec::new(),
        sha256: String::new(),
        limits: Limits::default(),
        stamps: Vec::new(),
        acknowledged: String::new(),
    };
    load_files(&files, 1).map_err(|e| e.to_string())
}

/// A corpus request, valid against the schema, with the original set's
/// answer.
struct Case {
    env: Env,
    request: Request,
    allowed: bool,
    line: String,
}

fn env_of(request: &Request) -> Option<Env> {
    Some((
        request.principal()?.type_name().to_string(),
        request.action()?.to_string(),
        request.resource()?.type_name().to_string(),
    ))
}

/// A counterexample decided by Cedar's `Authorizer` alone, rebuilt from
/// the witness as a caller would send it: the request validated against
/// the schema, its entities from their JSON plus the schema's actions.
/// Answers the original set's decision and the mutant's.
fn authorize(
    d: &Difference,
    schema: &Schema,
    original: &PolicySet,
    mutant: &PolicySet,
) -> Result<(Decision, Decision), String> {
    let w = &d.witness;
    let uid = |s: &str| EntityUid::from_str(s).map_err(|e| format!("`{s}`: {e}"));
    let action = uid(&w.action)?;
    // The context as a caller sends it: Cedar's JSON, read against the
    // action's declared context.
    let context = Context::from_json_value(w.context.clone(), Some((schema, &action)))
        .map_err(|e| format!("the context {}: {e}", w.context))?;
    let request = Request::new(
        uid(&w.principal)?,
        action,
        uid(&w.resource)?,
        context,
        Some(schema),
    )
    .map_err(|e| format!("not a valid request: {e}"))?;
    Entities::from_json_value(w.entities.clone(), Some(schema))
        .map_err(|e| format!("the entities do not conform to the schema: {e}"))?;
    let actions = schema.action_entities().map_err(|e| e.to_string())?;
    let entities = Entities::from_json_value(w.entities.clone(), None)
        .map_err(|e| format!("the entities: {e}"))?
        .add_entities(actions, None)
        .map_err(|e| format!("the entities with the schema's actions: {e}"))?;
    let authorizer = Authorizer::new();
    Ok((
        authorizer
            .is_authorized(&request, original, &entities)
            .decision(),
        authorizer
            .is_authorized(&request, mutant, &entities)
            .decision(),
    ))
}

/// What the run exercised.
#[derive(Debug, Default)]
struct Counts {
    sampled: usize,
    tests: usize,
    not_loading: usize,
    pairs: usize,
    mutants_refused: usize,
    pairs_wider: usize,
    pairs_narrower: usize,
    pairs_equivalent: usize,
    envs: usize,
    equivalent: usize,
    narrower: usize,
    wider: usize,
    both: usize,
    undecided: usize,
    witnesses: usize,
    requests: usize,
    requests_invalid: usize,
    requests_widened: usize,
    requests_narrowed: usize,
    requests_under_claim: usize,
}

#[test]
fn proofs_of_mutated_corpus_sets_agree_with_cedar_on_every_request() {
    const NAME: &str = "proofs_of_mutated_corpus_sets_agree_with_cedar_on_every_request";
    let prover = Prover::default();
    if let Err(e) = prover.solver_path() {
        not_run(NAME, &e.to_string());
        return;
    }
    let started = Instant::now();
    let archive = repo_root().join("../shared/cedar-integration-tests/corpus-tests.tar.gz");
    let mut tree = Tree::default();
    let files = tree
        .add_archive(&archive)
        .unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let tests: Vec<&Path> = files
        .iter()
        .map(|p| p.as_path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".json") && !name.ends_with(".entities.json")
        })
        .collect();
    let mut counts = Counts::default();
    let mut failures: Vec<String> = Vec::new();
    let mut undecided_notes: Vec<String> = Vec::new();
    for (turn, path) in tests.iter().step_by(EVERY).enumerate() {
        counts.sampled += 1;
        let shown = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let test: TestFile = serde_json::from_str(&tree.read(path).expect("read a test"))
            .unwrap_or_else(|e| panic!("{shown}: not a corpus test: {e}"));
        let pending =
            Pending::resolve(&tree, path, test, None).unwrap_or_else(|e| panic!("{shown}: {e}"));
        let text = tree.read(&pending.policies).expect("read the policies");
        let schema = SourceFile {
            name: pending.test.schema.clone(),
            text: tree.read(&pending.schema).expect("read the schema"),
        };
        let Ok(original) = snapshot(&text, &schema) else {
            counts.not_loading += 1;
            continue;
        };
        counts.tests += 1;

        // The corpus's requests, valid against the schema, with their
        // entities; each decided by the original set.
        let entities = tree
            .read(&pending.entities)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|json| authz::parse_entities(&original, &json).ok());
        let mut cases = Vec::new();
        for (i, r) in pending.test.requests.iter().enumerate() {
            let built = (|| {
                let principal = authz::parse_uid_in(&original, "principal", &r.principal)?;
                let action = authz::parse_uid_in(&original, "action", &r.action)?;
                let resource = authz::parse_uid_in(&original, "resource", &r.resource)?;
                authz::build_request(
                    &original,
                    principal,
                    action,
                    resource,
                    Some(&r.context),
                    true,
                )
            })();
            let (Ok(request), Some(entities)) = (built, &entities) else {
                counts.requests_invalid += 1;
                continue;
            };
            let Some(env) = env_of(&request) else {
                counts.requests_invalid += 1;
                continue;
            };
            let allowed = authz::decide(&original, &request, entities).allow;
            cases.push(Case {
                env,
                line: format!("request {i} ({request})"),
                request,
                allowed,
            });
        }

        let items = items(&text).unwrap_or_else(|e| panic!("{shown}: {e}"));
        let mutants = mutants(&items, turn).unwrap_or_else(|e| panic!("{shown}: {e}"));
        for (mutation, set) in mutants {
            let what = format!("{shown}: {mutation:?}");
            let Ok(mutant) = snapshot(&text_of(&set), &schema) else {
                counts.mutants_refused += 1;
                continue;
            };
            counts.pairs += 1;
            let proof = compare(&prover, &original, &mutant)
                .unwrap_or_else(|e| panic!("{what}: no proof: {e}"));
            for u in &proof.unconfirmed {
                failures.push(format!("{what}: unconfirmed: {u}"));
            }
            let mut changes: BTreeMap<Env, Change> = BTreeMap::new();
            for e in &proof.environments {
                counts.envs += 1;
                let env = (
                    e.env.principal.clone(),
                    e.env.action.clone(),
                    e.env.resource.clone(),
                );
                changes.insert(env, e.change);
                match e.change {
                    Change::Equivalent => counts.equivalent += 1,
                    Change::Narrower => counts.narrower += 1,
                    Change::Wider => counts.wider += 1,
                    Change::Both => counts.both += 1,
                    Change::Undecided => {
                        counts.undecided += 1;
                        undecided_notes.push(format!(
                            "{what}: {}: {}",
                            e.env,
                            e.note.as_deref().unwrap_or("no note")
                        ));
                    }
                    Change::Removed => {
                        failures.push(format!("{what}: {} removed, the schema is the same", e.env))
                    }
                }
                let widens = matches!(e.change, Change::Wider | Change::Both);
                let narrows = matches!(e.change, Change::Narrower | Change::Both);
                if widens != e.wider.is_some() || narrows != e.narrower.is_some() {
                    failures.push(format!(
                        "{what}: {} is {} with a wider counterexample: {}, a narrower one: {}",
                        e.env,
                        e.change.as_str(),
                        e.wider.is_some(),
                        e.narrower.is_some()
                    ));
                }
                match mutation.direction() {
                    Some(true) if narrows => failures.push(format!(
                        "{what}: can only widen, but {} is proved {}",
                        e.env,
                        e.change.as_str()
                    )),
                    Some(false) if widens => failures.push(format!(
                        "{what}: can only narrow, but {} is proved {}",
                        e.env,
                        e.change.as_str()
                    )),
                    _ => {}
                }
                // Each counterexample, decided by Cedar alone.
                for (d, wider) in [(&e.wider, true), (&e.narrower, false)] {
                    let Some(d) = d else { continue };
                    counts.witnesses += 1;
                    let want = if wider {
                        (Decision::Deny, Decision::Allow)
                    } else {
                        (Decision::Allow, Decision::Deny)
                    };
                    match authorize(d, &original.schema, &original.policies, &mutant.policies) {
                        Ok(got) if got == want => {}
                        Ok(got) => failures.push(format!(
                            "{what}: {}: the {} counterexample ({}) is {:?} by the original and {:?} by the mutant in Cedar's authorizer, not {:?} and {:?}; entities {}",
                            e.env,
                            if wider { "wider" } else { "narrower" },
                            d.witness.request_line(),
                            got.0,
                            got.1,
                            want.0,
                            want.1,
                            clip(&d.witness.entities.to_string())
                        )),
                        Err(why) => failures.push(format!(
                            "{what}: {}: the counterexample ({}) cannot be rebuilt: {why}; entities {}",
                            e.env,
                            d.witness.request_line(),
                            clip(&d.witness.entities.to_string())
                        )),
                    }
                }
            }
            let has = |c: fn(Change) -> bool| proof.environments.iter().any(|e| c(e.change));
            if has(|c| matches!(c, Change::Wider | Change::Both)) {
                counts.pairs_wider += 1;
            }
            if has(|c| matches!(c, Change::Narrower | Change::Both)) {
                counts.pairs_narrower += 1;
            }
            if !proof.environments.is_empty() && !has(|c| c != Change::Equivalent) {
                counts.pairs_equivalent += 1;
            }

            // The corpus's requests against the proof.
            let Some(entities) = &entities else { continue };
            for case in &cases {
                counts.requests += 1;
                let now = authz::decide(&mutant, &case.request, entities).allow;
                let Some(&change) = changes.get(&case.env) else {
                    failures.push(format!(
                        "{what}: {}: its environment {:?} is not in the proof",
                        case.line, case.env
                    ));
                    continue;
                };
                if matches!(
                    change,
                    Change::Equivalent | Change::Narrower | Change::Wider
                ) {
                    counts.requests_under_claim += 1;
                }
                if now == case.allowed {
                    continue;
                }
                let fine = if now {
                    counts.requests_widened += 1;
                    matches!(change, Change::Wider | Change::Both)
                } else {
                    counts.requests_narrowed += 1;
                    matches!(change, Change::Narrower | Change::Both)
                };
                if !fine && change != Change::Undecided {
                    failures.push(format!(
                        "{what}: {:?} is proved {}, but {} is {} by the original and {} by the mutant",
                        case.env,
                        change.as_str(),
                        case.line,
                        authz::Effect::from_allow(case.allowed),
                        authz::Effect::from_allow(now)
                    ));
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "prove_corpus: {} tests sampled (1 in {EVERY}), {} loaded, {} refused; {} pairs proved ({} mutants refused): {} wider, {} narrower, {} equivalent; {} environments: {} equivalent, {} narrower, {} wider, {} both, {} undecided; {} counterexamples confirmed by Cedar; {} corpus requests checked ({} invalid skipped): {} denied then allowed, {} allowed then denied, {} under a never-wider or never-narrower claim; {secs:.1} s",
        counts.sampled,
        counts.tests,
        counts.not_loading,
        counts.pairs,
        counts.mutants_refused,
        counts.pairs_wider,
        counts.pairs_narrower,
        counts.pairs_equivalent,
        counts.envs,
        counts.equivalent,
        counts.narrower,
        counts.wider,
        counts.both,
        counts.undecided,
        counts.witnesses,
        counts.requests,
        counts.requests_invalid,
        counts.requests_widened,
        counts.requests_narrowed,
        counts.requests_under_claim,
    );
    assert!(
        failures.is_empty(),
        "{} disagreement(s) between the proofs and Cedar, the first:\n{}",
        failures.len(),
        failures[..failures.len().min(QUOTED)].join("\n")
    );
    // Undecided environments are allowed, but only a few.
    assert!(
        counts.undecided * 20 <= counts.envs,
        "{} of {} environments undecided, the first:\n{}",
        counts.undecided,
        counts.envs,
        undecided_notes[..undecided_notes.len().min(QUOTED)].join("\n")
    );
    // The comparison means something only if much was exercised: both
    // directions proved and met by corpus requests, counterexamples to
    // confirm, and equivalences the corpus's requests could refute.
    assert!(counts.tests >= 50, "{counts:?}");
    assert!(counts.pairs >= 150, "{counts:?}");
    assert!(counts.pairs_wider >= 12, "{counts:?}");
    assert!(counts.pairs_narrower >= 60, "{counts:?}");
    assert!(counts.pairs_equivalent >= 50, "{counts:?}");
    assert!(counts.equivalent >= 600, "{counts:?}");
    assert!(counts.wider >= 12 && counts.narrower >= 1_000, "{counts:?}");
    assert!(counts.witnesses >= 1_000, "{counts:?}");
    assert!(counts.requests >= 1_000, "{counts:?}");
    assert!(counts.requests_under_claim >= 1_000, "{counts:?}");
    assert!(counts.requests_widened >= 10, "{counts:?}");
    assert!(counts.requests_narrowed >= 300, "{counts:?}");
}
