//! The decision pipeline: the one way a served question becomes an answer.
//!
//! Every decision cedard serves — `/v1/is_authorized`, its batch, AuthZEN's
//! evaluations and searches, the management API's own checks, the
//! console's playground — is made by one core, `Call::decide`: the
//! questions of a call are read against one policy snapshot (`resolve`,
//! `ask`: the one place a served request is built), their entities are
//! assembled once (inline ones decoded through the snapshot's memo,
//! cedard's stored ones added by `facts`, with its one ownership check),
//! Cedar decides each through [`authz::decide`], and the call is recorded
//! when it ends (`Call::finish`: metrics, the decision log). `check`,
//! `evaluate`, `search` and `authorize` are thin shapes around it: how
//! questions arrive, where a series stops, what is recorded. `cedard test`,
//! `cedard matrix` and `cedard impact` decide offline, with nobody to
//! record for, through the same `authz` functions.
//!
//! This module knows nothing about HTTP: it returns [`PdpError`], which the
//! HTTP layer maps to status codes. It never answers allow on an error: an
//! error is not a decision.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{Entities, EntityUid};
use serde_json::Value;

use crate::audit::{DecisionEvent, DecisionLog};
use crate::authz::{self, Decision, InputError, Reason, SetAside};
use crate::code::Code;
use crate::facts::{EntityError, EntityMemo, Facts, Inline};
use crate::identity::Verified;
use crate::model::{self, RoleCatalog};
use crate::policy::watch::LivePolicies;
use crate::policy::{PolicySnapshot, Revision};
use crate::store::{AtLeastError, Fault, Reads, Store};

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
    /// What becomes of what a question carries that cannot count.
    pub surplus: Surplus,
    /// The verified token that named the acting user of a management call
    /// (its issuer, subject and `jti`, for the record).
    pub actor_token: Option<crate::audit::TokenFacts>,
}

/// What the pipeline does with what a question carries that cannot count
/// towards its answer: the properties of an inline entity cedard supplies
/// itself (a stored user or account, an entity of the data files: cedard's
/// facts win, a caller never overrides them), and context attributes the
/// action does not declare (under strict validation no policy can read
/// them). Either way the answer is the one given without them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Surplus {
    /// A 400 naming the field: cedard's own API, whose callers send Cedar's
    /// shapes and should hear that part of what they sent means nothing.
    #[default]
    Refuse,
    /// Left out of the question and noted on the decision (and its
    /// decision-log line): AuthZEN, whose receivers must take free-form
    /// context and the properties a PEP sends routinely.
    Ignore,
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

/// Who a question is about.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    /// An entity reference the caller names.
    Ref(&'a Value),
    /// The subject of a verified token: the entity of the issuer's mapped
    /// type and id, with cedard's stored facts for it and the token's
    /// mapped claims as attributes.
    Token(&'a Verified),
}

/// One question as it arrived: entity references and context as JSON,
/// read against the snapshot's schema by the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The principal.
    pub principal: Principal<'a>,
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
    Store(Fault),
    /// The call's work passed its deadline (a search over many candidates)
    /// and was stopped: no answer was made (a 503).
    #[error("the request ran out of its time (`--request-timeout-ms`) and was stopped; no answer was made")]
    OutOfTime,
    /// A verified token's claims do not fit the schema where its issuer
    /// maps them (a 401 `token_claims`): never half-applied.
    #[error("{0}")]
    Claims(String),
}

impl PdpError {
    /// What went wrong, in the one vocabulary.
    pub fn code(&self) -> Code {
        match self {
            PdpError::Input(e) => e.code(),
            PdpError::Denied { .. } => Code::Forbidden,
            PdpError::Unavailable(_) => Code::Unavailable,
            PdpError::Store(f) => f.code(),
            PdpError::OutOfTime => Code::Timeout,
            PdpError::Claims(_) => Code::Unauthenticated,
        }
    }
}

impl From<EntityError> for PdpError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::Input(e) => PdpError::Input(e),
            EntityError::Store(e) => PdpError::Store(e),
            EntityError::Schema(e) => PdpError::Unavailable(e.to_string()),
            EntityError::Claims(m) => PdpError::Claims(m),
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
    /// The principal (ignored when the subject is searched).
    pub principal: Principal<'a>,
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
    /// What the search's question carried that its decisions did not use.
    pub ignored: Vec<SetAside>,
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
                    AtLeastError::UnknownRevision { .. } => {
                        PdpError::Input(InputError::new("consistency.at_least", e.to_string()))
                    }
                    AtLeastError::Fault(f) => PdpError::Store(f),
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
    /// One call's decisions against `snapshot`, recorded as `record` says
    /// when the call ends ([`Call::finish`]); the facts as fresh as the
    /// caller asks. A call that fails before it is opened is counted as a
    /// failure.
    fn call<'a>(
        &'a self,
        caller: &'a Caller,
        snapshot: &'a PolicySnapshot,
        record: Record,
    ) -> Result<Call<'a>, PdpError> {
        let facts = self
            .facts_for(caller, snapshot)
            .inspect_err(|e| failed(caller, e))?;
        Ok(Call::new(self, Some(caller), snapshot, facts, record))
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
        let snapshot = self.live.snapshot();
        let mut call = self.call(caller, &snapshot, Record::Each)?;
        let decided = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                resolve(&snapshot, q, caller.surplus).map_err(|e| match batch {
                    true => e.within(&format!("requests[{i}]")),
                    false => e,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(PdpError::from)
            .and_then(|asks| Ok(call.decide(inline, asks)?));
        match decided {
            Ok(decisions) => Ok(Checked {
                decisions,
                revision: snapshot.revision.clone(),
                store_revision: call.finish(),
            }),
            Err(e) => {
                failed(caller, &e);
                Err(e)
            }
        }
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
        let snapshot = self.live.snapshot();
        let mut call = self.call(caller, &snapshot, Record::Each)?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let outcome = match item {
                Err(e) => Err(e.clone()),
                Ok(item) => match resolve(&snapshot, &item.query, caller.surplus) {
                    Err(e) => Err(e),
                    Ok(ask) => match call.decide(item.inline, vec![ask]) {
                        Ok(mut decisions) => decisions.pop().ok_or_else(|| {
                            InputError::new("", "the pipeline answered no decision")
                        }),
                        Err(EntityError::Input(e)) => Err(e),
                        Err(e) => {
                            let e = PdpError::from(e);
                            failed(caller, &e);
                            return Err(e);
                        }
                    },
                },
            };
            let stop = match &outcome {
                Ok(d) => match until {
                    Until::All => false,
                    Until::FirstDeny => !d.allow,
                    Until::FirstPermit => d.allow,
                },
                Err(e) => {
                    failed(caller, &PdpError::Input(e.clone()));
                    until == Until::FirstDeny
                }
            };
            outcomes.push(outcome);
            if stop {
                break;
            }
        }
        Ok(Evaluated {
            outcomes,
            revision: snapshot.revision.clone(),
            store_revision: call.finish(),
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
        let snapshot = self.live.snapshot();
        let mut call = self.call(caller, &snapshot, Record::Count)?;
        match self.search_in(&mut call, &snapshot, search, caller.deadline) {
            Ok(mut page) => {
                page.ignored = call.set_aside.clone();
                call.finish();
                page.revision = Some(snapshot.revision.clone());
                Ok(page)
            }
            Err(e) => {
                failed(caller, &e);
                Err(e)
            }
        }
    }

    fn search_in(
        &self,
        call: &mut Call<'_>,
        snapshot: &PolicySnapshot,
        search: &Search<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Page, PdpError> {
        const CHUNK: usize = 256;
        let mut page = Page {
            results: Vec::new(),
            more: false,
            revision: None,
            ignored: Vec::new(),
        };
        // Takes the allowed candidates, in order, up to the limit; whether
        // one more was allowed.
        let mut take = |ids: &[String], decisions: &[Decision]| -> bool {
            for (id, d) in ids.iter().zip(decisions) {
                if d.allow {
                    if page.results.len() == search.limit {
                        page.more = true;
                        return true;
                    }
                    page.results.push(id.clone());
                }
            }
            false
        };
        if search.slot == Slot::Action {
            // The schema's actions for the two types, in id order.
            let (principal, token) = principal_of(snapshot, "subject", search.principal)?;
            let resource = authz::parse_uid_in(snapshot, "resource", search.resource)?;
            let mut actions: Vec<&EntityUid> = snapshot
                .schema
                .actions_for_principal_and_resource(principal.type_name(), resource.type_name())
                .filter(|a| search.after.is_none_or(|after| a.id().unescaped() > after))
                .collect();
            actions.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
            actions.dedup();
            // An action whose context the question does not fit would be
            // answered 400 alone, never allow: not a candidate.
            let (names, asks): (Vec<String>, Vec<Resolved<'_>>) = actions
                .into_iter()
                .filter_map(|action| {
                    let mut ask = ask(
                        snapshot,
                        principal.clone(),
                        action.clone(),
                        resource.clone(),
                        search.context,
                        call.surplus(),
                    )
                    .ok()?;
                    ask.token = token;
                    Some((action.id().unescaped().to_owned(), ask))
                })
                .unzip();
            // Decided even when no action is a candidate: the stored facts
            // of the fixed parts are checked (and refused) as for any ask.
            let decisions = call.decide(search.inline, asks)?;
            take(&names, &decisions);
            return Ok(page);
        }
        let (fixed_uid, token, searched_field) = match search.slot {
            Slot::Subject => (
                authz::parse_uid_in(snapshot, "resource", search.resource)?,
                None,
                "subject",
            ),
            _ => {
                let (uid, token) = principal_of(snapshot, "subject", search.principal)?;
                (uid, token, "resource")
            }
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
        let surplus = call.surplus();
        let mut after: Option<String> = search.after.map(str::to_owned);
        loop {
            // Checked between chunks: a search over many candidates stops at
            // its deadline (before the request's time limit answers), so
            // that it never runs on after its answer, holding no permit.
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(PdpError::OutOfTime);
            }
            let ids = self.candidates(snapshot, type_name, after.as_deref(), CHUNK)?;
            if ids.is_empty() {
                break;
            }
            after = ids.last().cloned();
            let asks = ids
                .iter()
                .map(|id| {
                    let candidate = EntityUid::from_type_name_and_id(
                        type_name.clone(),
                        cedar_policy::EntityId::new(id),
                    );
                    let (principal, resource) = match search.slot {
                        Slot::Subject => (candidate, fixed_uid.clone()),
                        _ => (fixed_uid.clone(), candidate),
                    };
                    ask(
                        snapshot,
                        principal,
                        action.clone(),
                        resource,
                        search.context,
                        surplus,
                    )
                    .map(|mut a| {
                        a.token = token;
                        a
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let decisions = call.decide(search.inline, asks)?;
            if take(&ids, &decisions) || ids.len() < CHUNK {
                break;
            }
        }
        Ok(page)
    }
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
            self.facts(snapshot),
            actor,
            action,
            account,
            context,
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
            self.facts(snapshot).through(within),
            actor,
            action,
            account,
            context,
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
        match self.management(None, self.facts(snapshot), actor, action, account, context) {
            Ok(()) => Ok(true),
            Err(PdpError::Denied { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One management decision on `facts`; recorded when `caller` is given.
    fn management(
        &self,
        caller: Option<&Caller>,
        facts: Facts<'_>,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
    ) -> Result<(), PdpError> {
        let snapshot = facts.snapshot();
        let action_ref = serde_json::json!({"type": "Action", "id": action});
        let asked = authz::parse_uid_in(snapshot, "action", &action_ref).and_then(|action| {
            ask(
                snapshot,
                model::user_uid(actor),
                action,
                model::account_uid(account),
                context,
                Surplus::Refuse,
            )
        });
        let asked = match asked {
            Ok(a) => a,
            // The schema no longer declares the action this call checks:
            // nobody may do it until it does (fail closed).
            Err(e) => {
                return Err(PdpError::Denied {
                    message: format!("`{action}` cannot be decided against the loaded schema: {e}"),
                    reasons: Vec::new(),
                })
            }
        };
        let record = match caller {
            Some(_) => Record::Each,
            None => Record::Nothing,
        };
        let mut call = Call::new(self, caller, snapshot, facts, record);
        let decision = call
            .decide(Inline::None, vec![asked])
            .inspect_err(|e| tracing::warn!("management check failed: {e}"))?
            .pop()
            .ok_or_else(|| PdpError::Unavailable("the pipeline answered no decision".into()))?;
        call.finish();
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
}

/// How a call's decisions are recorded when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// Counted in the metrics, each written to the decision log.
    Each,
    /// Counted in the metrics only (a search's candidates).
    Count,
    /// Not recorded (a view asking what the policies would allow).
    Nothing,
}

/// The decisions of one call: one policy snapshot, one reader of the stored
/// facts, and what is recorded when the call ends. [`Call::decide`] is the
/// one place a served question becomes a decision.
struct Call<'a> {
    pdp: &'a Pdp,
    caller: Option<&'a Caller>,
    snapshot: &'a PolicySnapshot,
    facts: Facts<'a>,
    record: Record,
    started: Instant,
    allowed: u64,
    denied: u64,
    errors: u64,
    /// Decision-log entries, written when the call ends.
    logged: Vec<DecisionEvent>,
    /// What the call's questions carried that their decisions did not use,
    /// each note once.
    set_aside: Vec<SetAside>,
}

impl<'a> Call<'a> {
    fn new(
        pdp: &'a Pdp,
        caller: Option<&'a Caller>,
        snapshot: &'a PolicySnapshot,
        facts: Facts<'a>,
        record: Record,
    ) -> Self {
        Self {
            pdp,
            caller,
            snapshot,
            facts,
            record,
            started: Instant::now(),
            allowed: 0,
            denied: 0,
            errors: 0,
            logged: Vec::new(),
            set_aside: Vec::new(),
        }
    }

    /// What becomes of what the call's questions carry that cannot count.
    fn surplus(&self) -> Surplus {
        self.caller.map(|c| c.surplus).unwrap_or_default()
    }

    /// Decides `asks`, which share the inline entities `inline`: the
    /// entities are assembled once (inline ones decoded whatever their form,
    /// cedard's stored ones added, one ownership check), then Cedar answers
    /// each question (on every core for a large call), and each answer is
    /// kept for the record.
    fn decide(
        &mut self,
        inline: Inline<'_>,
        asks: Vec<Resolved<'_>>,
    ) -> Result<Vec<Decision>, EntityError> {
        // Inline entities cedard supplies itself are left out (not refused)
        // when the caller's surplus is ignored: the ownership check then
        // finds none of them.
        let (kept, set_aside) = match (self.surplus(), inline) {
            (Surplus::Ignore, Inline::Raw(raw)) => self.facts.set_aside_known(raw)?,
            _ => (None, Vec::new()),
        };
        let inline = match &kept {
            Some(raw) => Inline::raw(Some(&**raw)),
            None => inline,
        };
        let pairs: Vec<_> = asks.iter().map(|a| (&a.principal, &a.resource)).collect();
        let entities = self.facts.entities(inline, &pairs)?;
        let subjects: Vec<(&EntityUid, &Verified)> = asks
            .iter()
            .filter_map(|a| a.token.map(|t| (&a.principal, t)))
            .collect();
        let entities = if subjects.is_empty() {
            entities
        } else {
            self.facts.with_token_subjects(entities, &subjects)?
        };
        let snapshot = self.snapshot;
        let mut decisions: Vec<Decision> = if asks.len() >= PARALLEL_BATCH {
            use rayon::prelude::*;
            let entities: &Entities = &entities;
            asks.par_iter()
                .map(|a| authz::decide(snapshot, &a.request, entities))
                .collect()
        } else {
            asks.iter()
                .map(|a| authz::decide(snapshot, &a.request, &entities))
                .collect()
        };
        for (ask, d) in asks.iter().zip(decisions.iter_mut()) {
            d.ignored = set_aside.clone();
            d.ignored.extend(ask.ignored.iter().cloned());
            for note in &d.ignored {
                if !self.set_aside.contains(note) {
                    self.set_aside.push(note.clone());
                }
            }
            self.note(ask, d);
        }
        Ok(decisions)
    }

    /// Counts a decision and keeps its decision-log entry.
    fn note(&mut self, ask: &Resolved<'_>, d: &Decision) {
        if d.allow {
            self.allowed += 1;
        } else {
            self.denied += 1;
        }
        self.errors += d.errors.len() as u64;
        let (Record::Each, Some(caller)) = (self.record, self.caller) else {
            return;
        };
        let log = &self.pdp.log;
        if !log.is_enabled() || !log.wants(d.allow) {
            return;
        }
        self.logged.push(DecisionEvent {
            id: crate::audit::new_event_id(),
            time: time::OffsetDateTime::now_utc(),
            key: caller.key.clone(),
            request_id: caller.request_id.clone(),
            endpoint: caller.endpoint.to_owned(),
            principal: ask.principal.to_string(),
            action: ask
                .request
                .action()
                .map(EntityUid::to_string)
                .unwrap_or_default(),
            resource: ask.resource.to_string(),
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
            policy_revision: self.snapshot.revision.generation,
            policy_sha256: self.snapshot.revision.sha256.clone(),
            latency_us: 0,
            context: if log.with_context() {
                ask.context.as_deref().cloned()
            } else {
                None
            },
            ignored: d.ignored.clone(),
            token: ask.token.map(crate::audit::TokenFacts::from),
        });
    }

    /// Records the call (its decisions in the metrics, their entries in the
    /// decision log, with the call's time) and returns the store revision
    /// its stored facts are at least as new as.
    fn finish(self) -> u64 {
        let generation = self.facts.generation();
        let Some(caller) = self.caller.filter(|_| self.record != Record::Nothing) else {
            return generation;
        };
        let elapsed = self.started.elapsed();
        count(
            caller.endpoint,
            self.allowed,
            self.denied,
            self.errors,
            elapsed,
        );
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        for mut event in self.logged {
            event.latency_us = latency_us;
            self.pdp.log.decision(event);
        }
        generation
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
    DECISION_METRICS.with_borrow_mut(|endpoints| {
        let m = endpoints
            .entry(endpoint)
            .or_insert_with(|| DecisionMetrics {
                duration: metrics::histogram!("cedard_decision_duration_seconds", "endpoint" => endpoint),
                allowed: metrics::counter!("cedard_decisions_total", "endpoint" => endpoint, "decision" => "allow"),
                denied: metrics::counter!("cedard_decisions_total", "endpoint" => endpoint, "decision" => "deny"),
                errors: metrics::counter!("cedard_evaluation_errors_total", "endpoint" => endpoint),
            });
        m.duration.record(elapsed.as_secs_f64());
        if allowed > 0 {
            m.allowed.increment(allowed);
        }
        if denied > 0 {
            m.denied.increment(denied);
        }
        if errors > 0 {
            m.errors.increment(errors);
        }
    });
}

/// The decision metric handles of one endpoint.
struct DecisionMetrics {
    duration: metrics::Histogram,
    allowed: metrics::Counter,
    denied: metrics::Counter,
    errors: metrics::Counter,
}

thread_local! {
    /// Each thread's decision metric handles by endpoint, registered on
    /// first use, so that a call's counting builds no key (endpoints are a
    /// fixed set of names).
    static DECISION_METRICS: std::cell::RefCell<
        std::collections::HashMap<&'static str, DecisionMetrics>,
    > = std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Counts a call that got no decision.
fn failed(caller: &Caller, e: &PdpError) {
    metrics::counter!("cedard_decision_failures_total", "endpoint" => caller.endpoint, "reason" => e.code().as_str())
        .increment(1);
}

/// One question read against the snapshot: the entities the store is asked
/// about, the Cedar request, the context as decided (for the log), and what
/// was left out of the question.
struct Resolved<'q> {
    principal: EntityUid,
    resource: EntityUid,
    request: cedar_policy::Request,
    context: Option<Cow<'q, Value>>,
    ignored: Vec<SetAside>,
    /// The verified token the principal is the subject of.
    token: Option<&'q Verified>,
}

/// A question as it arrived, read against the snapshot.
fn resolve<'q>(
    snapshot: &PolicySnapshot,
    q: &Query<'q>,
    surplus: Surplus,
) -> Result<Resolved<'q>, InputError> {
    let (principal, token) = principal_of(snapshot, "principal", q.principal)?;
    let action = action_uid(snapshot, q.action)?;
    let resource = authz::parse_uid_in(snapshot, "resource", q.resource)?;
    let mut resolved = ask(snapshot, principal, action, resource, q.context, surplus)?;
    resolved.token = token;
    Ok(resolved)
}

/// The principal's entity, and the verified token it is the subject of;
/// `field` names a reference in errors.
fn principal_of<'q>(
    snapshot: &PolicySnapshot,
    field: &str,
    principal: Principal<'q>,
) -> Result<(EntityUid, Option<&'q Verified>), InputError> {
    Ok(match principal {
        Principal::Ref(v) => (authz::parse_uid_in(snapshot, field, v)?, None),
        Principal::Token(t) => (token_subject(snapshot, t)?, Some(t)),
    })
}

/// The entity a verified token's subject is: the issuer's mapped type
/// (which the schema declared when the issuer files were loaded) and id.
fn token_subject(snapshot: &PolicySnapshot, token: &Verified) -> Result<EntityUid, InputError> {
    authz::parse_uid_in(
        snapshot,
        "principal_token",
        &serde_json::json!({"type": token.principal_type, "id": token.id}),
    )
}

/// A question of known entities: the one place a served request is built
/// (and validated against the schema). With [`Surplus::Ignore`] the context
/// attributes the action does not declare are left out first, and noted.
fn ask<'q>(
    snapshot: &PolicySnapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Option<&'q Value>,
    surplus: Surplus,
) -> Result<Resolved<'q>, InputError> {
    let (context, ignored) = match surplus {
        Surplus::Refuse => (context.map(Cow::Borrowed), Vec::new()),
        Surplus::Ignore => declared_only(snapshot, &action, context),
    };
    let request = authz::build_request(
        snapshot,
        principal.clone(),
        action,
        resource.clone(),
        context.as_deref(),
        true,
    )?;
    Ok(Resolved {
        principal,
        resource,
        request,
        context,
        ignored,
        token: None,
    })
}

/// `context` without the attributes `action`'s context does not declare,
/// and a note naming them. Unchanged when it declares them all, when it is
/// not an object, or when the schema's declaration cannot be listed (then
/// strict validation refuses what does not fit, as for any question).
fn declared_only<'q>(
    snapshot: &PolicySnapshot,
    action: &EntityUid,
    context: Option<&'q Value>,
) -> (Option<Cow<'q, Value>>, Vec<SetAside>) {
    let unchanged = (context.map(Cow::Borrowed), Vec::new());
    let (Some(Value::Object(attrs)), Some(declared)) =
        (context, snapshot.shapes.context_attributes(action))
    else {
        return unchanged;
    };
    let mut undeclared: Vec<String> = attrs
        .keys()
        .filter(|k| !declared.contains(k.as_str()))
        .cloned()
        .collect();
    undeclared.sort();
    if undeclared.is_empty() {
        return unchanged;
    }
    let kept: serde_json::Map<String, Value> = attrs
        .iter()
        .filter(|(k, _)| declared.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let note = SetAside {
        field: "context".into(),
        names: undeclared,
        why: format!("the schema declares no such attribute in the context of `{action}`, so no policy can read it"),
    };
    (Some(Cow::Owned(Value::Object(kept))), vec![note])
}

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
