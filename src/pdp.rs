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

use cedar_policy::EntityUid;
use serde_json::Value;

use crate::audit::{DecisionEvent, DecisionLog};
use crate::authz::{self, Decision, InputError, Reason};
use crate::facts::{EntityError, EntityMemo, Facts, Inline};
use crate::model::{self, RoleCatalog};
use crate::policy::watch::LivePolicies;
use crate::policy::{PolicySnapshot, Revision};
use crate::store::Store;

/// Who asks, for the record: the caller's key and request, and the route.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The id of the key that authenticated the call, if keys are in use.
    pub key: Option<String>,
    /// The request's `X-Request-ID`.
    pub request_id: Option<String>,
    /// Which door the question came in by, as metrics and the log name it
    /// (`/v1/is_authorized`, `management`, …).
    pub endpoint: &'static str,
}

/// One question as it arrived: entity references and context as JSON,
/// read against the snapshot's schema by the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The principal reference.
    pub principal: &'a Value,
    /// The action reference.
    pub action: &'a Value,
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
    /// The store failed, or the loaded schema cannot describe the stored
    /// facts (a 503): cedard cannot know the answer.
    #[error("{0}")]
    Unavailable(String),
}

impl From<EntityError> for PdpError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::Input(e) => PdpError::Input(e),
            EntityError::Store(e) => PdpError::Unavailable(e.to_string()),
            EntityError::Schema(e) => PdpError::Unavailable(e.to_string()),
        }
    }
}

/// Limits a question is held to before any work is spent on it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most inline entities one call may send.
    pub max_inline_entities: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inline_entities: 10_000,
        }
    }
}

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
            memo: EntityMemo::default(),
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
        let outcome = self.check_in(&snapshot, queries, inline, batch);
        let elapsed = started.elapsed();
        match &outcome {
            Ok((requests, decisions)) => {
                self.record(caller, &snapshot, requests, queries, decisions, elapsed)
            }
            Err(e) => failed(caller, e),
        }
        outcome.map(|(_, decisions)| Checked {
            decisions,
            revision: snapshot.revision.clone(),
        })
    }

    fn check_in(
        &self,
        snapshot: &PolicySnapshot,
        queries: &[Query<'_>],
        inline: Inline<'_>,
        batch: bool,
    ) -> Result<(Vec<Resolved>, Vec<Decision>), PdpError> {
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
        let entities = self.facts(snapshot).entities(inline, &pairs)?;
        let decisions = resolved
            .iter()
            .map(|r| authz::decide(snapshot, &r.request, &entities))
            .collect();
        Ok((resolved, decisions))
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
            false,
        )
    }

    /// [`Pdp::authorize`] for a check made inside a store write
    /// transaction: the stored facts are read afresh (never from the entity
    /// memo), so the answer is about exactly the state the transaction
    /// commits over (redb admits one writer, so no other write can land in
    /// between).
    pub fn authorize_fresh(
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
            true,
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
        match self.management(None, snapshot, actor, action, account, context, false) {
            Ok(()) => Ok(true),
            Err(PdpError::Denied { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One management decision; recorded when `caller` is given, read from
    /// the store afresh when `fresh`.
    #[allow(clippy::too_many_arguments)]
    fn management(
        &self,
        caller: Option<&Caller>,
        snapshot: &PolicySnapshot,
        actor: &str,
        action: &str,
        account: &str,
        context: Option<&Value>,
        fresh: bool,
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
        if fresh {
            facts = facts.fresh();
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
            action: &action_ref,
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
        metrics::histogram!("cedard_decision_duration_seconds", "endpoint" => endpoint)
            .record(elapsed.as_secs_f64());
        let mut allowed = 0u64;
        let mut errors = 0u64;
        for d in decisions {
            allowed += u64::from(d.allow);
            errors += d.errors.len() as u64;
        }
        let denied = decisions.len() as u64 - allowed;
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

/// Counts a call that got no decision.
fn failed(caller: &Caller, e: &PdpError) {
    let kind = match e {
        PdpError::Input(_) => "invalid_request",
        PdpError::Denied { .. } => "forbidden",
        PdpError::Unavailable(_) => "unavailable",
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
    let action = authz::parse_uid_in(snapshot, "action", q.action)?;
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
