//! The decision pipeline: the one way a served question becomes an answer.
//!
//! Every decision cedard serves — `/v1/is_authorized`, its batch, and the
//! management API's own checks — goes through [`Pdp`]: resolve each question
//! against one policy snapshot, assemble the entities (inline ones decoded
//! through the snapshot's memo, stored ones added by `facts`, with one
//! ownership check), decide through [`authz::decide`], then record the
//! decision (metrics, the decision log). Caller identity, metrics and the log
//! are therefore written once. `cedard test` and `cedard matrix` decide
//! offline, with no store and nobody to record for, through the same
//! `authz` functions.
//!
//! This module knows nothing about HTTP: it returns [`PdpError`], which the
//! HTTP layer maps to status codes. It never answers allow on an error: an
//! error is not a decision.

use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{Entities, EntityUid};
use serde_json::Value;

use crate::audit::{DecisionEvent, DecisionLog};
use crate::authz::{self, Decision, InputError, Reason};
use crate::facts::{EntityError, EntityMemo, Facts, Inline};
use crate::model::{self, RoleCatalog};
use crate::policy::watch::LivePolicies;
use crate::policy::{PolicySnapshot, Revision};
use crate::store::{Reads, Store, StoreError};

/// Who asks, for the record (the caller's key and request, and the route),
/// and how fresh the stored facts of the answer must be.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The id of the key that authenticated the call, if keys are in use.
    pub key: Option<String>,
    /// The request's `X-Request-ID`.
    pub request_id: Option<String>,
    /// Which door the question came in by, as metrics and the log name it
    /// (`/v1/is_authorized`, `management`, …).
    pub endpoint: &'static str,
    /// How fresh the stored facts must be.
    pub consistency: Consistency,
    /// When the caller stops waiting: a write still undone by then is not
    /// committed (it is refused, and says so), rather than committed after
    /// the caller was told it failed.
    pub deadline: Option<std::time::Instant>,
}

/// How fresh the stored facts of an answer must be, as the caller asks.
/// Like SpiceDB's consistency levels: the default answers fastest from what
/// this replica knows (at most `--store-poll-ms` behind another replica's
/// write); `AtLeast` a store revision a write returned makes
/// write-then-check never stale, on any replica; `Full` reads the store for
/// everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever this replica knows now (entities may come from its memo).
    #[default]
    MinimizeLatency,
    /// A view at least as new as this store revision.
    AtLeast(u64),
    /// Every stored fact read from the store now, never from a memo.
    Full,
}

/// How a question names its action.
#[derive(Debug, Clone, Copy)]
pub enum ActionRef<'a> {
    /// An entity reference: `{"type": "Action", "id": "startPod"}` or
    /// `"Action::\"startPod\""`.
    Uid(&'a Value),
    /// The action's id alone (AuthZEN's `action.name`), looked up among the
    /// schema's actions.
    Name(&'a str),
}

/// One question as it arrived: entity references and context as JSON,
/// read against the snapshot's schema by the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The principal reference.
    pub principal: &'a Value,
    /// The action.
    pub action: ActionRef<'a>,
    /// The resource reference.
    pub resource: &'a Value,
    /// The context, if any.
    pub context: Option<&'a Value>,
}

/// The answers to a call's questions, in order, and the policy set that gave
/// them.
#[derive(Debug, Clone)]
pub struct Checked {
    /// One decision per question.
    pub decisions: Vec<Decision>,
    /// The revision of the snapshot every decision was made against.
    pub revision: Revision,
    /// The store revision the stored facts are at least as new as.
    pub store_revision: u64,
}

/// Why no decision was made. None of these is an allow.
#[derive(Debug, thiserror::Error)]
pub enum PdpError {
    /// The question is malformed or does not fit the schema (a 400).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The policies deny the management action (a 403), with the policies
    /// that decided.
    #[error("{message}")]
    Denied {
        /// What was denied.
        message: String,
        /// The deciding policies.
        reasons: Vec<Reason>,
    },
    /// The loaded schema cannot describe the stored facts (a 503): cedard
    /// cannot know the answer.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed, or cannot be confirmed current (a 503): cedard
    /// cannot know the answer.
    #[error(transparent)]
    Store(StoreError),
}

impl From<EntityError> for PdpError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::Input(e) => PdpError::Input(e),
            EntityError::Store(e) => PdpError::Store(e),
            EntityError::Schema(e) => PdpError::Unavailable(e.to_string()),
        }
    }
}

/// One question with the inline entities of its own (AuthZEN's items each
/// carry the properties of their subject and resource).
#[derive(Clone, Copy)]
pub struct Item<'a> {
    /// The question.
    pub query: Query<'a>,
    /// Its inline entities.
    pub inline: Inline<'a>,
}

/// Where a series of answers stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Answer every question.
    All,
    /// Stop after the first deny or error.
    FirstDeny,
    /// Stop after the first permit.
    FirstPermit,
}

/// The answers of [`Pdp::evaluate`]: one per question answered, in order.
#[derive(Debug)]
pub struct Evaluated {
    /// A decision, or why the question could not be asked.
    pub outcomes: Vec<Result<Decision, InputError>>,
    /// The revision every decision was made against.
    pub revision: Revision,
    /// The store revision the stored facts are at least as new as.
    pub store_revision: u64,
}

/// Which part of the question a search leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Which subjects (principals)?
    Subject,
    /// Which resources?
    Resource,
    /// Which actions?
    Action,
}

/// A search: the question with one part left open.
#[derive(Clone, Copy)]
pub struct Search<'a> {
    /// The open part.
    pub slot: Slot,
    /// The principal reference (ignored when the subject is searched).
    pub principal: &'a Value,
    /// The action (ignored when the action is searched).
    pub action: ActionRef<'a>,
    /// The resource reference (ignored when the resource is searched).
    pub resource: &'a Value,
    /// The entity type searched for, when a subject or resource is.
    pub searched_type: &'a str,
    /// The context.
    pub context: Option<&'a Value>,
    /// Inline entities (the properties of the fixed parts).
    pub inline: Inline<'a>,
    /// Continue after this candidate id (or action name).
    pub after: Option<&'a str>,
    /// The most results to return.
    pub limit: usize,
}

/// One page of search results.
#[derive(Debug)]
pub struct Page {
    /// The ids (or action names) found, in order.
    pub results: Vec<String>,
    /// Whether at least one more result follows the last one.
    pub more: bool,
    /// The policy revision searched.
    pub revision: Option<Revision>,
}

/// Limits a question is held to before any work is spent on it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most inline entities one call may send.
    pub max_inline_entities: usize,
    /// The most stored entities the entity memo holds.
    pub memo_entities: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inline_entities: 10_000,
            memo_entities: EntityMemo::DEFAULT_CAPACITY,
        }
    }
}

/// From this many questions in one call, they are decided in parallel.
const PARALLEL_BATCH: usize = 64;

/// The decision pipeline and what it reads: the live policies, the store,
/// the caches of what was built from them, and where decisions are recorded.
pub struct Pdp {
    live: Arc<LivePolicies>,
    store: Arc<Store>,
    roles: RoleCatalog,
    memo: EntityMemo,
    log: DecisionLog,
    limits: Limits,
}

impl std::fmt::Debug for Pdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdp")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Pdp {
    /// A pipeline over `live` and `store`, recording to `log`.
    pub fn new(
        live: Arc<LivePolicies>,
        store: Arc<Store>,
        log: DecisionLog,
        limits: Limits,
    ) -> Self {
        Self {
            live,
            store,
            roles: RoleCatalog::default(),
            memo: EntityMemo::new(limits.memo_entities),
            log,
            limits,
        }
    }

    /// The live policy set.
    pub fn live(&self) -> &Arc<LivePolicies> {
        &self.live
    }

    /// The store decisions read.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Where decisions and management writes are recorded.
    pub fn log(&self) -> &DecisionLog {
        &self.log
    }

    /// The role names of `snapshot`'s schema.
    pub fn roles(&self, snapshot: &PolicySnapshot) -> Result<Arc<Vec<String>>, PdpError> {
        self.roles
            .roles(snapshot)
            .map_err(|e| PdpError::Unavailable(e.to_string()))
    }

    fn facts<'a>(&'a self, snapshot: &'a PolicySnapshot) -> Facts<'a> {
        Facts::new(
            snapshot,
            &self.roles,
            &self.memo,
            &self.store,
            self.limits.max_inline_entities,
        )
    }

    /// The facts of one call, as fresh as `caller` asks: for `AtLeast`, once
    /// this replica knows that revision (a revision the store never
    /// committed is the caller's error); for `Full`, read afresh.
    fn facts_for<'a>(
        &'a self,
        caller: &Caller,
        snapshot: &'a PolicySnapshot,
    ) -> Result<Facts<'a>, PdpError> {
        match caller.consistency {
            Consistency::MinimizeLatency => {}
            Consistency::AtLeast(wanted) => {
                self.store.at_least(wanted).map_err(|e| match e {
                    StoreError::UnknownRevision { .. } => {
                        PdpError::Input(InputError::new("consistency.at_least", e.to_string()))
                    }
                    e => PdpError::Store(e),
                })?;
            }
            Consistency::Full => {
                self.store.refresh_revision().map_err(PdpError::Store)?;
                return Ok(self.facts(snapshot).fresh());
            }
        }
        Ok(self.facts(snapshot))
    }

    /// Answers `queries` against one snapshot. `batch` names the questions
    /// `requests[i]` in errors. Any bad question fails the whole call (a
    /// client sending a malformed batch gets no partial answers to misread).
    pub fn check(
        &self,
        caller: &Caller,
        queries: &[Query<'_>],
        inline: Inline<'_>,
        batch: bool,
    ) -> Result<Checked, PdpError> {
        let started = Instant::now();
        let snapshot = self.live.snapshot();
        let outcome = self
            .facts_for(caller, &snapshot)
            .and_then(|facts| self.check_in(&facts, &snapshot, queries, inline, batch));
        let elapsed = started.elapsed();
        match &outcome {
            Ok((requests, decisions, _)) => {
                self.record(caller, &snapshot, requests, queries, decisions, elapsed)
            }
            Err(e) => failed(caller, e),
        }
        outcome.map(|(_, decisions, store_revision)| Checked {
            decisions,
            revision: snapshot.revision.clone(),
            store_revision,
        })
    }

    fn check_in(
        &self,
        facts: &Facts<'_>,
        snapshot: &PolicySnapshot,
        queries: &[Query<'_>],
        inline: Inline<'_>,
        batch: bool,
    ) -> Result<(Vec<Resolved>, Vec<Decision>, u64), PdpError> {
        let mut resolved = Vec::with_capacity(queries.len());
        for (i, q) in queries.iter().enumerate() {
            let r = resolve(snapshot, q).map_err(|e| {
                if batch {
                    e.within(&format!("requests[{i}]"))
                } else {
                    e
                }
            })?;
            resolved.push(r);
        }
        let pairs: Vec<_> = resolved
            .iter()
            .map(|r| (&r.principal, &r.resource))
            .collect();
        let entities = facts.entities(inline, &pairs)?;
        // A large batch is decided on every core (the entities and the
        // policies are shared, read-only); answers keep their order.
        let decisions = if resolved.len() >= PARALLEL_BATCH {
            use rayon::prelude::*;
            let entities: &Entities = &entities;
            resolved
                .par_iter()
                .map(|r| authz::decide(snapshot, &r.request, entities))
                .collect()
        } else {
            resolved
                .iter()
                .map(|r| authz::decide(snapshot, &r.request, &entities))
                .collect()
        };
        Ok((resolved, decisions, facts.generation()))
    }

    /// Answers each of `items` on its own, against one snapshot: an item
    /// whose question is malformed (already, or against the schema) gets its
    /// own error and no decision (the others are still answered), as
    /// AuthZEN's evaluations API wants. A
    /// store fault fails the whole call. `until` stops at the first deny (or
    /// error) or the first permit; the answers up to and including it are
    /// returned.
    pub fn evaluate(
        &self,
        caller: &Caller,
        items: &[Result<Item<'_>, InputError>],
        until: Until,
    ) -> Result<Evaluated, PdpError> {
        let started = Instant::now();
        let snapshot = self.live.snapshot();
        let facts = self
            .facts_for(caller, &snapshot)
            .inspect_err(|e| failed(caller, e))?;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut decided: Vec<(Resolved, Query<'_>, Decision)> = Vec::with_capacity(items.len());
        for item in items {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    failed(caller, &PdpError::Input(e.clone()));
                    outcomes.push(Err(e.clone()));
                    if until == Until::FirstDeny {
                        break;
                    }
                    continue;
                }
            };
            let outcome = match resolve(&snapshot, &item.query) {
                Err(e) => Err(e),
                Ok(r) => match facts.entities(item.inline, &[(&r.principal, &r.resource)]) {
                    Ok(entities) => Ok((authz::decide(&snapshot, &r.request, &entities), r)),
                    Err(EntityError::Input(e)) => Err(e),
                    Err(e) => {
                        let e = PdpError::from(e);
                        failed(caller, &e);
                        return Err(e);
                    }
                },
            };
            let stop = match &outcome {
                Ok((d, _)) => match until {
                    Until::All => false,
                    Until::FirstDeny => !d.allow,
                    Until::FirstPermit => d.allow,
                },
                Err(_) => until == Until::FirstDeny,
            };
            match outcome {
                Ok((d, r)) => {
                    outcomes.push(Ok(d.clone()));
                    decided.push((r, item.query, d));
                }
                Err(e) => {
                    failed(caller, &PdpError::Input(e.clone()));
                    outcomes.push(Err(e));
                }
            }
            if stop {
                break;
            }
        }
        let (resolved, rest): (Vec<Resolved>, Vec<(Query<'_>, Decision)>) =
            decided.into_iter().map(|(r, q, d)| (r, (q, d))).unzip();
        let (queries, decisions): (Vec<Query<'_>>, Vec<Decision>) = rest.into_iter().unzip();
        self.record(
            caller,
            &snapshot,
            &resolved,
            &queries,
            &decisions,
            started.elapsed(),
        );
        Ok(Evaluated {
            outcomes,
            revision: snapshot.revision.clone(),
            store_revision: facts.generation(),
        })
    }

    /// Lists, a page at a time, what a search asks for: the subjects, the
    /// resources or the actions for which the question would be answered
    /// allow. Exact: a candidate is listed if and only if the same question
    /// asked alone would be allowed. Candidates are the entities of the
    /// asked type cedard knows (stored users or accounts; otherwise the
    /// entity data files), or for actions the schema's actions that apply to
    /// the principal and resource types; they are taken in id order, after
    /// `search.after`. Decisions are counted in the metrics; a search is not
    /// written to the decision log candidate by candidate.
    pub fn search(&self, caller: &Caller, search: &Search<'_>) -> Result<Page, PdpError> {
        let started = Instant::now();
        let snapshot = self.live.snapshot();
        let outcome = self
            .facts_for(caller, &snapshot)
            .and_then(|facts| self.search_in(&facts, &snapshot, search));
        match &outcome {
            Ok((_, (allowed, denied))) => {
                count(caller.endpoint, *allowed, *denied, 0, started.elapsed())
            }
            Err(e) => failed(caller, e),
        }
        outcome.map(|(mut page, _)| {
            page.revision = Some(snapshot.revision.clone());
            page
        })
    }

    fn search_in(
        &self,
        facts: &Facts<'_>,
        snapshot: &PolicySnapshot,
        search: &Search<'_>,
    ) -> Result<(Page, (u64, u64)), PdpError> {
        const CHUNK: usize = 256;
        let mut results: Vec<String> = Vec::new();
        let mut more = false;
        let mut after: Option<String> = search.after.map(str::to_owned);
        let (mut allowed, mut denied) = (0u64, 0u64);
        // Action search: the schema's actions for the two types, in id order.
        let fixed = match search.slot {
            Slot::Action => {
                let principal = authz::parse_uid_in(snapshot, "subject", search.principal)?;
                let resource = authz::parse_uid_in(snapshot, "resource", search.resource)?;
                let mut actions: Vec<&EntityUid> = snapshot
                    .schema
                    .actions_for_principal_and_resource(principal.type_name(), resource.type_name())
                    .collect();
                actions.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
                actions.dedup();
                let entities = facts.entities(search.inline, &[(&principal, &resource)])?;
                for action in actions {
                    let name = action.id().unescaped();
                    if after.as_deref().is_some_and(|a| name <= a) {
                        continue;
                    }
                    // An action whose context the question does not fit
                    // would be answered 400 alone, never allow: not listed.
                    let Ok(request) = authz::build_request(
                        snapshot,
                        principal.clone(),
                        action.clone(),
                        resource.clone(),
                        search.context,
                        true,
                    ) else {
                        continue;
                    };
                    if authz::decide(snapshot, &request, &entities).allow {
                        allowed += 1;
                        if results.len() == search.limit {
                            more = true;
                            break;
                        }
                        results.push(name.to_owned());
                    } else {
                        denied += 1;
                    }
                }
                return Ok((
                    Page {
                        results,
                        more,
                        revision: None,
                    },
                    (allowed, denied),
                ));
            }
            Slot::Subject => ("resource", search.resource),
            Slot::Resource => ("subject", search.principal),
        };
        let fixed_uid = authz::parse_uid_in(snapshot, fixed.0, fixed.1)?;
        let searched_field = if search.slot == Slot::Subject {
            "subject"
        } else {
            "resource"
        };
        let type_name = snapshot
            .type_names
            .get(search.searched_type)
            .ok_or_else(|| {
                InputError::new(
                    format!("{searched_field}.type"),
                    format!(
                        "`{}` is not an entity type of the loaded schema",
                        authz::clip(search.searched_type)
                    ),
                )
            })?;
        let action = action_uid(snapshot, search.action)?;
        'pages: loop {
            let ids = self.candidates(snapshot, type_name, after.as_deref(), CHUNK)?;
            if ids.is_empty() {
                break;
            }
            after = ids.last().cloned();
            let uids: Vec<EntityUid> = ids
                .iter()
                .map(|id| {
                    EntityUid::from_type_name_and_id(
                        type_name.clone(),
                        cedar_policy::EntityId::new(id),
                    )
                })
                .collect();
            let pairs: Vec<(&EntityUid, &EntityUid)> = uids
                .iter()
                .map(|u| match search.slot {
                    Slot::Subject => (u, &fixed_uid),
                    _ => (&fixed_uid, u),
                })
                .collect();
            let entities = facts.entities(search.inline, &pairs)?;
            for ((principal, resource), id) in pairs.iter().zip(&ids) {
                let request = authz::build_request(
                    snapshot,
                    (*principal).clone(),
                    action.clone(),
                    (*resource).clone(),
                    search.context,
                    true,
                )?;
                if authz::decide(snapshot, &request, &entities).allow {
                    allowed += 1;
                    if results.len() == search.limit {
                        more = true;
                        break 'pages;
                    }
                    results.push(id.clone());
                } else {
                    denied += 1;
                }
            }
            if ids.len() < CHUNK {
                break;
            }
        }
        Ok((
            Page {
                results,
                more,
                revision: None,
            },
            (allowed, denied),
        ))
    }

    /// Up to `limit` ids of entities of `type_name` after `after`, in id
    /// order: stored users or accounts, or the entity data files' entities.
    fn candidates(
        &self,
        snapshot: &PolicySnapshot,
        type_name: &cedar_policy::EntityTypeName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, PdpError> {
        let unavailable = PdpError::Store;
        if type_name == &model::TYPES.user || type_name == &model::TYPES.account {
            // Candidates from a store this replica cannot confirm current
            // would miss (or list) what another replica just wrote.
            self.store.current().map_err(unavailable)?;
        }
        if type_name == &model::TYPES.user {
            return self
                .store
                .read()
                .and_then(|v| v.user_ids_after(after, limit))
                .map_err(unavailable);
        }
        if type_name == &model::TYPES.account {
            return self
                .store
                .read()
                .and_then(|v| v.account_ids_after(after, limit))
                .map_err(unavailable);
        }
        let Some(ids) = snapshot.data.by_type.get(&type_name.to_string()) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(a) => ids.partition_point(|id| id.as_str() <= a),
            None => 0,
        };
        Ok(ids[start..].iter().take(limit).cloned().collect())
    }

    /// Asks the live policies whether the stored user `actor` may do the
    /// management `action` on `account`: a denial is [`PdpError::Denied`]
    /// with the deciding policies. `context` is the action's context.
    pub fn authorize(
        &self,
        caller: &Caller,
        snapshot: &PolicySnapshot,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
    ) -> Result<(), PdpError> {
        self.management(
            Some(caller),
            snapshot,
            actor,
            action,
            account,
            context,
            None,
        )
    }

    /// [`Pdp::authorize`] for a check made inside a store write
    /// transaction: the stored facts are read afresh through the
    /// transaction itself (`within`, never from the entity memo), so the
    /// answer is about exactly the state the transaction commits over.
    #[allow(clippy::too_many_arguments)]
    pub fn authorize_fresh(
        &self,
        caller: &Caller,
        snapshot: &PolicySnapshot,
        within: &dyn Reads,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
    ) -> Result<(), PdpError> {
        self.management(
            Some(caller),
            snapshot,
            actor,
            action,
            account,
            context,
            Some(within),
        )
    }

    /// Whether the policies would allow the management `action`, without
    /// recording a decision: for views that report what a stored record
    /// still permits (an invite whose creator may no longer grant it).
    pub fn would_allow(
        &self,
        snapshot: &PolicySnapshot,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
    ) -> Result<bool, PdpError> {
        match self.management(None, snapshot, actor, action, account, context, None) {
            Ok(()) => Ok(true),
            Err(PdpError::Denied { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One management decision; recorded when `caller` is given, read
    /// afresh through `within` (a write transaction) when given.
    #[allow(clippy::too_many_arguments)]
    fn management(
        &self,
        caller: Option<&Caller>,
        snapshot: &PolicySnapshot,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
        within: Option<&dyn Reads>,
    ) -> Result<(), PdpError> {
        let started = Instant::now();
        let principal = model::user_uid(actor);
        let resource = model::account_uid(account);
        let action_ref = serde_json::json!({"type": "Action", "id": action});
        let request = authz::parse_uid_in(snapshot, "action", &action_ref).and_then(|action_uid| {
            authz::build_request(
                snapshot,
                principal.clone(),
                action_uid,
                resource.clone(),
                context,
                true,
            )
        });
        let request = match request {
            Ok(r) => r,
            // The schema no longer declares the action this call checks:
            // nobody may do it until it does (fail closed).
            Err(e) => {
                return Err(PdpError::Denied {
                    message: format!("`{action}` cannot be decided against the loaded schema: {e}"),
                    reasons: Vec::new(),
                })
            }
        };
        let mut facts = self.facts(snapshot);
        if let Some(reads) = within {
            facts = facts.through(reads);
        }
        let entities = facts
            .entities(Inline::None, &[(&principal, &resource)])
            .inspect_err(|e| tracing::warn!("management check failed: {e}"))?;
        let decision = authz::decide(snapshot, &request, &entities);
        let resolved = [Resolved {
            principal,
            resource,
            request,
        }];
        let query = [Query {
            principal: &Value::Null,
            action: ActionRef::Uid(&action_ref),
            resource: &Value::Null,
            context,
        }];
        if let Some(caller) = caller {
            self.record(
                caller,
                snapshot,
                &resolved,
                &query,
                std::slice::from_ref(&decision),
                started.elapsed(),
            );
        }
        if decision.allow {
            Ok(())
        } else {
            Err(PdpError::Denied {
                message: format!(
                    "the policies do not allow `{actor}` to `{action}` on account `{account}`"
                ),
                reasons: decision.reasons,
            })
        }
    }

    /// Counts the decisions and writes them to the decision log.
    fn record(
        &self,
        caller: &Caller,
        snapshot: &PolicySnapshot,
        resolved: &[Resolved],
        queries: &[Query<'_>],
        decisions: &[Decision],
        elapsed: std::time::Duration,
    ) {
        let endpoint = caller.endpoint;
        let mut allowed = 0u64;
        let mut errors = 0u64;
        for d in decisions {
            allowed += u64::from(d.allow);
            errors += d.errors.len() as u64;
        }
        let denied = decisions.len() as u64 - allowed;
        count(endpoint, allowed, denied, errors, elapsed);
        if !self.log.is_enabled() {
            return;
        }
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let now = time::OffsetDateTime::now_utc();
        for ((r, q), d) in resolved.iter().zip(queries).zip(decisions) {
            if !self.log.wants(d.allow) {
                continue;
            }
            self.log.decision(DecisionEvent {
                id: crate::audit::new_event_id(),
                time: now,
                key: caller.key.clone(),
                request_id: caller.request_id.clone(),
                endpoint: endpoint.to_owned(),
                principal: r.principal.to_string(),
                action: r
                    .request
                    .action()
                    .map(EntityUid::to_string)
                    .unwrap_or_default(),
                resource: r.resource.to_string(),
                decision: authz::Effect::from_allow(d.allow),
                reasons: d.reasons.iter().map(|r| r.policy_id.clone()).collect(),
                errors: d
                    .errors
                    .iter()
                    .map(|e| crate::audit::PolicyError {
                        policy_id: e.policy_id.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
                policy_revision: snapshot.revision.generation,
                policy_sha256: snapshot.revision.sha256.clone(),
                latency_us,
                context: if self.log.with_context() {
                    q.context.cloned()
                } else {
                    None
                },
            });
        }
    }
}

/// Counts one call's decisions and its time.
fn count(
    endpoint: &'static str,
    allowed: u64,
    denied: u64,
    errors: u64,
    elapsed: std::time::Duration,
) {
    metrics::histogram!("cedard_decision_duration_seconds", "endpoint" => endpoint)
        .record(elapsed.as_secs_f64());
    if allowed > 0 {
        metrics::counter!("cedard_decisions_total", "endpoint" => endpoint, "decision" => "allow")
            .increment(allowed);
    }
    if denied > 0 {
        metrics::counter!("cedard_decisions_total", "endpoint" => endpoint, "decision" => "deny")
            .increment(denied);
    }
    if errors > 0 {
        metrics::counter!("cedard_evaluation_errors_total", "endpoint" => endpoint)
            .increment(errors);
    }
}

/// Counts a call that got no decision.
fn failed(caller: &Caller, e: &PdpError) {
    let kind = match e {
        PdpError::Input(_) => "invalid_request",
        PdpError::Denied { .. } => "forbidden",
        PdpError::Unavailable(_) => "unavailable",
        PdpError::Store(_) => "store_unavailable",
    };
    metrics::counter!("cedard_decision_failures_total", "endpoint" => caller.endpoint, "reason" => kind)
        .increment(1);
}

/// One question parsed against the snapshot, with the UIDs the store is
/// asked about.
struct Resolved {
    principal: EntityUid,
    resource: EntityUid,
    request: cedar_policy::Request,
}

fn resolve(snapshot: &PolicySnapshot, q: &Query<'_>) -> Result<Resolved, InputError> {
    let principal = authz::parse_uid_in(snapshot, "principal", q.principal)?;
    let action = action_uid(snapshot, q.action)?;
    let resource = authz::parse_uid_in(snapshot, "resource", q.resource)?;
    let request = authz::build_request(
        snapshot,
        principal.clone(),
        action,
        resource.clone(),
        q.context,
        true,
    )?;
    Ok(Resolved {
        principal,
        resource,
        request,
    })
}

/// The action a question names, as an entity of the snapshot's schema.
fn action_uid(snapshot: &PolicySnapshot, action: ActionRef<'_>) -> Result<EntityUid, InputError> {
    match action {
        ActionRef::Uid(v) => authz::parse_uid_in(snapshot, "action", v),
        ActionRef::Name(name) => match snapshot.actions_by_name.get(name).map(Vec::as_slice) {
            Some([only]) => Ok(only.clone()),
            Some(several) => Err(InputError::new(
                "action.name",
                format!(
                    "`{name}` names {} actions of the loaded schema ({}); cedard cannot tell which",
                    several.len(),
                    several
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Err(InputError::new(
                "action.name",
                format!(
                    "`{}` is not an action of the loaded schema",
                    authz::clip(name)
                ),
            )),
        },
    }
}
