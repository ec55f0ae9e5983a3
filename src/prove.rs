//! Proofs about policy sets: what a candidate set can change compared with
//! the live one ([`compare`]), and the health of one set ([`health`]:
//! policies that can never match, policies that can error, request
//! environments the set always allows or always denies).
//!
//! Cedar's symbolic compiler (`cedar-policy-symcc`) turns each question
//! about one request environment of the schema (principal type, action,
//! resource type) into an SMT query over every request and every entity
//! store that fits the schema, and an SMT solver (cvc5, a child process per
//! run) answers it. A "never" is therefore a proof, not a sample.
//!
//! What is proved: Cedar's symbolic compiler models well-formed inputs,
//! so a proof covers every request whose entities are all present and fit
//! the schema (every required attribute, any hierarchy, any context of the
//! declared shape). The daemon also decides requests naming an entity
//! nobody holds (an unknown user): reading its attributes errors and the
//! policy is skipped, which the solver does not see. The request of each
//! environment naming an unknown principal and an unknown resource is
//! therefore decided concretely as well, and a difference there reported
//! like a counterexample (`unknown_entities`); one known and one unknown
//! entity is outside the proof.
//!
//! Every counterexample the solver returns is decided again through
//! `authz::decide` with each set, as the daemon decides. One the decision
//! path does not confirm is reported in `unconfirmed` (a bug of the
//! compiler, the solver or cedard), never as a finding.
//!
//! Bounded: each query has a time limit (the solver's own `--tlimit-per`,
//! and a wall-clock limit after which its process is killed) and the whole
//! run has one; what is not decided within them is `undecided`, with the
//! reason, never taken for an answer. Nothing of this runs on the decision
//! path: the CLI, the console and the reload guard call it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{Entities, EntityUid, Policy, PolicySet, Request, RequestEnv, Schema};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};
use serde::Serialize;

use crate::authz::{self, Effect};
use crate::policy::{parse_acknowledged, Files, LoadError, PolicySnapshot, ACKNOWLEDGED_FILE};

/// The time limit of one solver query, by default.
pub const DEFAULT_QUERY_LIMIT: Duration = Duration::from_secs(10);

/// The time limit of a whole run, by default.
pub const DEFAULT_RUN_LIMIT: Duration = Duration::from_secs(120);

/// The stack of the thread a proof runs on: the symbolic compiler and the
/// reading of the solver's model recurse as deep as a set is long (a
/// 1,000-policy set overflowed the default 2 MiB). Reserved, not used:
/// pages are touched only as deep as a proof goes.
const PROOF_STACK_BYTES: usize = 1 << 30;

/// How to run the solver.
#[derive(Debug, Clone)]
pub struct Prover {
    /// The solver's path (`--solver`); without it, the `CVC5` variable,
    /// then `cvc5` on `PATH`.
    pub solver: Option<PathBuf>,
    /// The time limit of one query.
    pub query_limit: Duration,
    /// The time limit of a whole run.
    pub run_limit: Duration,
}

impl Default for Prover {
    fn default() -> Self {
        Self {
            solver: None,
            query_limit: DEFAULT_QUERY_LIMIT,
            run_limit: DEFAULT_RUN_LIMIT,
        }
    }
}

/// Why nothing could be proved at all.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// No solver could be started.
    #[error("no SMT solver: {0}. Install cvc5 (`apt-get install cvc5`, or a release from https://github.com/cvc5/cvc5/releases), put it on PATH or name it with `--solver PATH` (or the CVC5 variable)")]
    NoSolver(String),
    /// The proof's thread or runtime could not run.
    #[error("the proof could not run: {0}")]
    Failed(String),
}

impl Prover {
    /// The solver's path, once it is found to run (`--version`).
    pub fn solver_path(&self) -> Result<PathBuf, ProveError> {
        let path = match &self.solver {
            Some(p) => p.clone(),
            None => match std::env::var_os("CVC5") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => on_path("cvc5")
                    .ok_or_else(|| ProveError::NoSolver("`cvc5` is not on PATH".to_owned()))?,
            },
        };
        match std::process::Command::new(&path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => Ok(path),
            Ok(out) => Err(ProveError::NoSolver(format!(
                "`{}` --version exited with {}",
                path.display(),
                out.status
            ))),
            Err(e) => Err(ProveError::NoSolver(format!(
                "`{}` cannot be run: {e}",
                path.display()
            ))),
        }
    }

    /// Runs `work` with a solver session on a thread and runtime of its
    /// own, so that callers inside and outside an async runtime alike can
    /// wait for it.
    fn run<T: Send>(
        &self,
        work: impl AsyncFnOnce(&mut Session) -> T + Send,
    ) -> Result<T, ProveError> {
        let path = self.solver_path()?;
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("cedard-prove".into())
                // The compiler and the solver's answers are walked
                // recursively, as deep as the set is long.
                .stack_size(PROOF_STACK_BYTES)
                .spawn_scoped(scope, || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| ProveError::Failed(format!("no runtime: {e}")))?;
                    let mut session = Session {
                        path,
                        query_limit: self.query_limit,
                        deadline: Instant::now() + self.run_limit,
                        compiler: None,
                    };
                    Ok(runtime.block_on(work(&mut session)))
                })
                .map_err(|e| ProveError::Failed(format!("no thread: {e}")))?
                .join()
                .unwrap_or_else(|_| Err(ProveError::Failed("its thread panicked".to_owned())))
        })
    }
}

/// The first `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One run's solver: a child process, started on first use and again after
/// a query it had to be killed for.
struct Session {
    path: PathBuf,
    query_limit: Duration,
    deadline: Instant,
    compiler: Option<CedarSymCompiler<LocalSolver>>,
}

/// Extra wall-clock time a query gets beyond the solver's own limit before
/// its process is killed.
const GRACE: Duration = Duration::from_millis(500);

impl Session {
    fn compiler(&mut self) -> Result<&mut CedarSymCompiler<LocalSolver>, String> {
        if self.compiler.is_none() {
            let mut command = tokio::process::Command::new(&self.path);
            command
                .args(["--lang", "smt"])
                .arg(format!("--tlimit-per={}", self.query_limit.as_millis()))
                .kill_on_drop(true);
            let solver = LocalSolver::from_command(&mut command)
                .map_err(|e| format!("cannot start `{}`: {e}", self.path.display()))?;
            let compiler = CedarSymCompiler::new(solver)
                .map_err(|e| format!("cannot start the symbolic compiler: {e}"))?;
            self.compiler = Some(compiler);
        }
        self.compiler
            .as_mut()
            .ok_or_else(|| "the solver is not running".to_owned())
    }

    /// Asks one query within the time limits; `Err` says why it has no
    /// answer.
    async fn ask<T>(
        &mut self,
        query: impl AsyncFnOnce(
            &mut CedarSymCompiler<LocalSolver>,
        ) -> cedar_policy_symcc::err::Result<T>,
    ) -> Result<T, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the run's time limit was reached".to_owned());
        }
        let limit = (self.query_limit + GRACE).min(left);
        let compiler = self.compiler()?;
        match tokio::time::timeout(limit, query(compiler)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(cedar_policy_symcc::err::Error::SolverUnknown)) => Err(format!(
                "the solver gave no answer within {} ms",
                self.query_limit.as_millis()
            )),
            Ok(Err(e)) => {
                // The solver's state is unknown after an error: start afresh.
                self.compiler = None;
                Err(e.to_string())
            }
            Err(_) => {
                // Dropping the compiler kills the solver (`kill_on_drop`).
                self.compiler = None;
                Err(if limit < self.query_limit + GRACE {
                    "the run's time limit was reached".to_owned()
                } else {
                    format!(
                        "the solver gave no answer within {} ms",
                        self.query_limit.as_millis()
                    )
                })
            }
        }
    }
}

/// A request environment: principal type, action, resource type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EnvName {
    /// The principal's entity type.
    pub principal: String,
    /// The action (`Action::"view"`).
    pub action: String,
    /// The resource's entity type.
    pub resource: String,
}

impl EnvName {
    fn of(env: &RequestEnv) -> Self {
        Self {
            principal: env.principal().to_string(),
            action: env.action().to_string(),
            resource: env.resource().to_string(),
        }
    }
}

impl std::fmt::Display for EnvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}, {}, {})",
            self.principal, self.action, self.resource
        )
    }
}

/// The schema's request environments, in a stable order.
fn environments(schema: &Schema) -> Vec<(EnvName, RequestEnv)> {
    let mut envs: Vec<(EnvName, RequestEnv)> = schema
        .request_envs()
        .map(|e| (EnvName::of(&e), e))
        .collect();
    envs.sort_by(|a, b| a.0.cmp(&b.0));
    envs
}

/// What one set answered a counterexample, through `authz::decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// `allow` or `deny`.
    pub decision: Effect,
    /// The deciding policies, sorted.
    pub policies: Vec<String>,
    /// The policies that failed to evaluate, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Answer {
    fn of(snapshot: &PolicySnapshot, request: &Request, entities: &Entities) -> Self {
        let d = authz::decide(snapshot, request, entities);
        Self {
            decision: Effect::from_allow(d.allow),
            policies: d.reasons.into_iter().map(|r| r.policy_id).collect(),
            errors: d
                .errors
                .into_iter()
                .map(|e| format!("{}: {}", e.policy_id, e.message))
                .collect(),
        }
    }

    /// `allow [dev]`, `deny (no policy)`.
    pub fn describe(&self) -> String {
        let mut out = if self.policies.is_empty() {
            format!("{} (no policy)", self.decision)
        } else {
            format!("{} [{}]", self.decision, self.policies.join(", "))
        };
        if !self.errors.is_empty() {
            out.push_str(&format!(" errors: {}", self.errors.join("; ")));
        }
        out
    }
}

/// A concrete request, with its entities, that the solver produced.
#[derive(Debug, Clone, Serialize)]
pub struct Witness {
    /// The principal.
    pub principal: String,
    /// The action.
    pub action: String,
    /// The resource.
    pub resource: String,
    /// The context, in Cedar's JSON value format (what a decision request's
    /// `context` takes).
    pub context: serde_json::Value,
    /// The entities, in Cedar's JSON entity format, but the schema's
    /// actions (the decision path adds those, as the daemon does).
    pub entities: serde_json::Value,
}

impl Witness {
    /// `request` with `entities`, written as a caller would send them (the
    /// schema's actions left out).
    fn new(request: &Request, entities: &Entities) -> Self {
        let uid = |u: Option<&EntityUid>| u.map(ToString::to_string).unwrap_or_default();
        Self {
            principal: uid(request.principal()),
            action: uid(request.action()),
            resource: uid(request.resource()),
            context: request
                .context()
                .map(context_json)
                .unwrap_or_else(|| serde_json::json!({})),
            entities: Entities::from_entities(
                entities
                    .iter()
                    .filter(|e| e.uid().type_name().basename() != "Action")
                    .cloned(),
                None,
            )
            .ok()
            .and_then(|e| e.to_json_value().ok())
            .unwrap_or(serde_json::Value::Null),
        }
    }

    /// The request on one line.
    pub fn request_line(&self) -> String {
        let context = match self.context.as_object() {
            Some(record) if !record.is_empty() => format!(", context {}", self.context),
            _ => String::new(),
        };
        format!(
            "principal {}, action {}, resource {}{context}",
            self.principal, self.action, self.resource
        )
    }
}

/// A context in Cedar's JSON value format: Cedar writes an entity's
/// attributes in it, so the context's pairs are written as the attributes
/// of a scratch entity.
fn context_json(context: &cedar_policy::Context) -> serde_json::Value {
    let attrs: std::collections::HashMap<String, cedar_policy::RestrictedExpression> =
        context.clone().into_iter().collect();
    cedar_policy::EntityTypeName::from_str("Context")
        .ok()
        .map(|t| EntityUid::from_type_name_and_id(t, cedar_policy::EntityId::new("context")))
        .and_then(|uid| cedar_policy::Entity::new(uid, attrs, Default::default()).ok())
        .and_then(|e| e.to_json_value().ok())
        .and_then(|mut v| v.get_mut("attrs").map(serde_json::Value::take))
        .unwrap_or_else(|| serde_json::Value::String(context.to_string()))
}

/// `entities` and the schema's action entities it lacks: what a
/// counterexample is decided with (the daemon always has the actions).
fn with_actions(entities: &Entities, snapshot: &PolicySnapshot) -> Entities {
    let have: BTreeSet<String> = entities.iter().map(|e| e.uid().to_string()).collect();
    let actions: Vec<cedar_policy::Entity> = snapshot
        .action_entities
        .iter()
        .filter(|e| !have.contains(&e.uid().to_string()))
        .cloned()
        .collect();
    entities
        .clone()
        .add_entities(actions, None)
        .unwrap_or_else(|_| entities.clone())
}

/// A counterexample to "nothing changes" in one environment, decided by
/// both sets.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The request and its entities.
    pub witness: Witness,
    /// What the live set answers it.
    pub live: Answer,
    /// What the candidate answers it.
    pub candidate: Answer,
    /// Where it comes from when not from the solver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a candidate does to one request environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Every request gets the same answer from both sets.
    Equivalent,
    /// Some request the live set allows is denied; nothing new is allowed.
    Narrower,
    /// Some request the live set denies is allowed; nothing is taken away.
    Wider,
    /// Both: something is allowed that was not, and something denied that
    /// was allowed.
    Both,
    /// The candidate's schema no longer declares it: no request of it is
    /// valid any more, so nothing in it can be allowed.
    Removed,
    /// Not decided (no answer within the time limits, or the compiler
    /// cannot analyze a policy): see the note.
    Undecided,
}

impl Change {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Equivalent => "equivalent",
            Change::Narrower => "narrower",
            Change::Wider => "wider",
            Change::Both => "wider and narrower",
            Change::Removed => "removed",
            Change::Undecided => "undecided",
        }
    }

    /// Whether some request may now be allowed that was denied.
    pub fn widens(self) -> bool {
        matches!(self, Change::Wider | Change::Both)
    }
}

/// One environment of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct EnvChange {
    /// Which environment.
    pub env: EnvName,
    /// What changes.
    pub change: Change,
    /// A request the candidate allows and the live set denies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wider: Option<Difference>,
    /// A request the live set allows and the candidate denies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub narrower: Option<Difference>,
    /// Why it is undecided, or what else to know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Templates of either set whose action scope covers this environment:
    /// not analyzed (unlinked, they decide nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_analyzed: Vec<String>,
    /// How long its proof took, in milliseconds.
    pub millis: u64,
}

/// What a candidate set can change, environment by environment.
#[derive(Debug, Clone, Serialize)]
pub struct Proof {
    /// Every environment of either schema, sorted.
    pub environments: Vec<EnvChange>,
    /// Counterexamples the decision path did not confirm: each is a bug to
    /// report, and makes the proof undecided.
    pub unconfirmed: Vec<String>,
    /// How long the whole proof took, in milliseconds.
    pub millis: u64,
}

/// The exit status of `--prove` for CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Equivalent or narrower everywhere: 0.
    NeverWider,
    /// Wider somewhere: 1.
    Wider,
    /// Could not decide somewhere (and wider nowhere proved): 2.
    Undecided,
}

impl Verdict {
    /// `never_wider`, `wider` or `undecided`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NeverWider => "never_wider",
            Verdict::Wider => "wider",
            Verdict::Undecided => "undecided",
        }
    }

    /// What it means, for people.
    pub fn sentence(self) -> &'static str {
        match self {
            Verdict::NeverWider => "never wider: the candidate allows nothing the live set denies",
            Verdict::Wider => "wider: the candidate allows requests the live set denies",
            Verdict::Undecided => "undecided: not every environment could be proved",
        }
    }

    /// The exit status: 0, 1 or 2.
    pub fn code(self) -> u8 {
        match self {
            Verdict::NeverWider => 0,
            Verdict::Wider => 1,
            Verdict::Undecided => 2,
        }
    }
}

impl Proof {
    /// The environments where some request may now be allowed.
    pub fn widened(&self) -> impl Iterator<Item = &EnvChange> {
        self.environments.iter().filter(|e| e.change.widens())
    }

    /// 1 when something widens, else 2 when something is undecided (or a
    /// counterexample was not confirmed), else 0. Never 0 when a part could
    /// not be decided.
    pub fn verdict(&self) -> Verdict {
        if self.widened().next().is_some() {
            Verdict::Wider
        } else if !self.unconfirmed.is_empty()
            || self
                .environments
                .iter()
                .any(|e| e.change == Change::Undecided)
        {
            Verdict::Undecided
        } else {
            Verdict::NeverWider
        }
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let count = |c: Change| self.environments.iter().filter(|e| e.change == c).count();
        out.push_str(&format!(
            "proof: {} environment(s): {} equivalent, {} narrower, {} wider, {} wider and narrower, {} removed, {} undecided ({} ms)\n",
            self.environments.len(),
            count(Change::Equivalent),
            count(Change::Narrower),
            count(Change::Wider),
            count(Change::Both),
            count(Change::Removed),
            count(Change::Undecided),
            self.millis
        ));
        for e in &self.environments {
            if !e.not_analyzed.is_empty() {
                out.push_str(&format!(
                    "  {} not analyzed: template(s) {} (unlinked, they decide nothing)\n",
                    e.env,
                    e.not_analyzed.join(", ")
                ));
            }
            if e.change == Change::Equivalent {
                continue;
            }
            out.push_str(&format!("  {} {}", e.env, e.change.as_str()));
            if let Some(note) = &e.note {
                out.push_str(&format!(": {note}"));
            }
            out.push('\n');
            for (word, d) in [("wider", &e.wider), ("narrower", &e.narrower)] {
                let Some(d) = d else { continue };
                if let Some(note) = &d.note {
                    out.push_str(&format!("    ({note})\n"));
                }
                out.push_str(&format!(
                    "    {word}, e.g. {}\n      live: {}\n      candidate: {}\n      entities: {}\n",
                    d.witness.request_line(),
                    d.live.describe(),
                    d.candidate.describe(),
                    d.witness.entities
                ));
            }
        }
        for u in &self.unconfirmed {
            out.push_str(&format!("  BUG, not a finding: {u}\n"));
        }
        out.push_str(self.verdict().sentence());
        out.push('\n');
        out
    }
}

/// The templates of `sets` whose action scope covers `env`'s action
/// (directly or through an action group), by id, file and line.
fn templates_in(sets: &[&PolicySnapshot], env: &RequestEnv) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for set in sets {
        let groups: Vec<&EntityUid> = set
            .action_entities
            .ancestors(env.action())
            .map(Iterator::collect)
            .unwrap_or_default();
        let covers = |uid: &EntityUid| uid == env.action() || groups.contains(&uid);
        for t in set.policies.templates() {
            let applies = match t.action_constraint() {
                cedar_policy::ActionConstraint::Any => true,
                cedar_policy::ActionConstraint::Eq(uid) => covers(&uid),
                cedar_policy::ActionConstraint::In(uids) => uids.iter().any(covers),
            };
            if !applies {
                continue;
            }
            let id = t.id().to_string();
            let named = match set.meta_of(t.id()) {
                Some(m) => format!("{} ({}:{})", m.id, m.file, m.line),
                None => id,
            };
            if !out.contains(&named) {
                out.push(named);
            }
        }
    }
    out.sort();
    out
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Proves what `candidate` can change compared with `live`, in every
/// request environment of either schema. The candidate's schema is the one
/// the comparison is made under; an environment only the live schema has is
/// `Removed`, one only the candidate's has is compared with a set that
/// allows nothing there (its requests were invalid before).
pub fn compare(
    prover: &Prover,
    live: &PolicySnapshot,
    candidate: &PolicySnapshot,
) -> Result<Proof, ProveError> {
    let started = Instant::now();
    let live_envs: BTreeSet<EnvName> = environments(&live.schema)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let candidate_envs = environments(&candidate.schema);
    let mut proof = prover.run(async |session: &mut Session| {
        let mut environments = Vec::new();
        let mut unconfirmed = Vec::new();
        for (name, env) in &candidate_envs {
            let began = Instant::now();
            let declared = live_envs.contains(name);
            let mut change =
                compare_env(session, env, (live, candidate), declared, &mut unconfirmed).await;
            change.not_analyzed = templates_in(&[live, candidate], env);
            change.millis = millis(began);
            if !declared && change.note.is_none() {
                change.note = Some(
                    "new: the live schema does not declare it (its requests were refused)".into(),
                );
            }
            environments.push(change);
        }
        (environments, unconfirmed)
    })?;
    let declared: BTreeSet<&EnvName> = candidate_envs.iter().map(|(n, _)| n).collect();
    for gone in live_envs.iter().filter(|n| !declared.contains(n)) {
        proof.0.push(EnvChange {
            env: gone.clone(),
            change: Change::Removed,
            wider: None,
            narrower: None,
            note: Some("the candidate's schema does not declare it".into()),
            not_analyzed: Vec::new(),
            millis: 0,
        });
    }
    proof.0.sort_by(|a, b| a.env.cmp(&b.env));
    Ok(Proof {
        environments: proof.0,
        unconfirmed: proof.1,
        millis: millis(started),
    })
}

/// One environment of [`compare`]; `millis` and `not_analyzed` are filled
/// in by the caller. `live_declared`: whether the live schema declares the
/// environment (if not, the live daemon refuses its requests).
async fn compare_env(
    session: &mut Session,
    env: &RequestEnv,
    sets: (&PolicySnapshot, &PolicySnapshot),
    live_declared: bool,
    unconfirmed: &mut Vec<String>,
) -> EnvChange {
    let (live, candidate) = sets;
    let mut out = EnvChange {
        env: EnvName::of(env),
        change: Change::Undecided,
        wider: None,
        narrower: None,
        note: None,
        not_analyzed: Vec::new(),
        millis: 0,
    };
    let nothing = PolicySet::new();
    let before = if live_declared {
        &live.policies
    } else {
        &nothing
    };
    let schema = &candidate.schema;
    let compiled = CompiledPolicySet::compile(before, env, schema)
        .map_err(|e| format!("the live set cannot be analyzed here: {e}"))
        .and_then(|b| {
            CompiledPolicySet::compile(&candidate.policies, env, schema)
                .map(|a| (b, a))
                .map_err(|e| format!("the candidate cannot be analyzed here: {e}"))
        });
    let (b, a) = match compiled {
        Ok(pair) => pair,
        Err(note) => {
            out.note = Some(note);
            return out;
        }
    };
    // Wider: allowed by the candidate, not by the live set.
    let wider = session
        .ask(async |c| c.check_implies_with_counterexample_opt(&a, &b).await)
        .await;
    let narrower = session
        .ask(async |c| c.check_implies_with_counterexample_opt(&b, &a).await)
        .await;
    let (wider, narrower) = match (wider, narrower) {
        (Ok(w), Ok(n)) => (w, n),
        (Err(e), _) | (_, Err(e)) => {
            out.note = Some(e);
            return out;
        }
    };
    let mut confirm = |cex: Env, widening: bool| {
        let d = decide_both(&cex.request, &cex.entities, sets, live_declared);
        if widens(&d) == Some(widening) {
            return Some(d);
        }
        let (was, now) = if widening {
            (Effect::Deny, Effect::Allow)
        } else {
            (Effect::Allow, Effect::Deny)
        };
        unconfirmed.push(format!(
            "{}: the solver's counterexample ({}) was to be {was} by the live set and {now} by the candidate, but the decision path answers {} and {}",
            out.env,
            d.witness.request_line(),
            d.live.decision,
            d.candidate.decision
        ));
        None
    };
    let mut wider = wider.map(|cex| confirm(cex, true));
    let mut narrower = narrower.map(|cex| confirm(cex, false));
    // Outside the solver's domain: a request naming entities cedard does
    // not have, decided here concretely.
    if let Some((difference, widening)) = unknown_entities(env, sets, live_declared) {
        let slot = if widening { &mut wider } else { &mut narrower };
        if slot.is_none() {
            *slot = Some(Some(difference));
        }
    }
    out.change = match (&wider, &narrower) {
        (Some(None), _) | (_, Some(None)) => {
            out.note = Some("a counterexample was not confirmed by the decision path".into());
            Change::Undecided
        }
        (None, None) => Change::Equivalent,
        (Some(_), None) => Change::Wider,
        (None, Some(_)) => Change::Narrower,
        (Some(_), Some(_)) => Change::Both,
    };
    out.wider = wider.flatten();
    out.narrower = narrower.flatten();
    out
}

/// `request` with `entities` (and each schema's actions) decided by both
/// sets through `authz::decide`. A request only the candidate's schema
/// declares (`live_declared` false) is refused by the live daemon: a deny
/// by no policy, whatever the live policies would say.
fn decide_both(
    request: &Request,
    entities: &Entities,
    (live, candidate): (&PolicySnapshot, &PolicySnapshot),
    live_declared: bool,
) -> Difference {
    let live_answer = if live_declared {
        Answer::of(live, request, &with_actions(entities, live))
    } else {
        Answer {
            decision: Effect::Deny,
            policies: Vec::new(),
            errors: Vec::new(),
        }
    };
    Difference {
        witness: Witness::new(request, entities),
        live: live_answer,
        candidate: Answer::of(candidate, request, &with_actions(entities, candidate)),
        note: None,
    }
}

/// `Some(true)` when the candidate allows what the live set denies,
/// `Some(false)` the reverse, `None` when both answer alike.
fn widens(d: &Difference) -> Option<bool> {
    match (d.live.decision, d.candidate.decision) {
        (Effect::Deny, Effect::Allow) => Some(true),
        (Effect::Allow, Effect::Deny) => Some(false),
        _ => None,
    }
}

/// The request of `env` whose principal and resource are entities nobody
/// holds (neither the store, the data files nor the request), with an
/// empty context, decided by both sets: the solver proves over entity
/// stores that hold every entity a request names, but the daemon also
/// decides requests naming unknown entities (reading their attributes
/// errors, and the policy is skipped), so a change there is found here.
/// `Some((difference, widens))` when the answers differ; `None` when they
/// agree, or when the action needs a context.
fn unknown_entities(
    env: &RequestEnv,
    sets: (&PolicySnapshot, &PolicySnapshot),
    live_declared: bool,
) -> Option<(Difference, bool)> {
    if !sets.1.valid_requests.empty_context(env.action()) {
        return None;
    }
    let unknown = |t: &cedar_policy::EntityTypeName| {
        EntityUid::from_type_name_and_id(t.clone(), cedar_policy::EntityId::new(""))
    };
    let request = Request::new(
        unknown(env.principal()),
        env.action().clone(),
        unknown(env.resource()),
        cedar_policy::Context::empty(),
        None,
    )
    .ok()?;
    let mut difference = decide_both(&request, &Entities::empty(), sets, live_declared);
    let widening = widens(&difference)?;
    difference.note = Some(
        "neither entity is known (no stored or data entity): decided without the solver".into(),
    );
    Some((difference, widening))
}

/// What a health proof found of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStatus {
    /// It can match some request.
    Live,
    /// It can never match a request the schema admits.
    Dead,
    /// A template: unlinked, it decides nothing; not analyzed.
    Template,
    /// Not decided (see its notes).
    Undecided,
}

impl PolicyStatus {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyStatus::Live => "live",
            PolicyStatus::Dead => "dead",
            PolicyStatus::Template => "template",
            PolicyStatus::Undecided => "undecided",
        }
    }
}

/// The health of one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyHealth {
    /// The policy's id.
    pub id: String,
    /// Its file, relative to the policy folder.
    pub file: String,
    /// The line it starts on.
    pub line: usize,
    /// Whether it can match.
    pub status: PolicyStatus,
    /// Environments where it can error at evaluation, each with a request
    /// that makes it error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PolicyError>,
    /// Why something is undecided.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A request on which a policy errors.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyError {
    /// The environment.
    pub env: EnvName,
    /// The request and its entities.
    pub witness: Witness,
    /// What the decision path reports for it.
    pub message: String,
}

/// An environment the set answers the same way whatever the request.
#[derive(Debug, Clone, Serialize)]
pub struct EnvHealth {
    /// Which environment.
    pub env: EnvName,
    /// `allow` or `deny` when the set always answers it; `None` when it
    /// depends on the request.
    pub always: Option<Effect>,
    /// Why it is undecided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What `validate --prove` finds.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Every policy and template, in file order.
    pub policies: Vec<PolicyHealth>,
    /// Every request environment of the schema.
    pub environments: Vec<EnvHealth>,
    /// Counterexamples the decision path did not confirm (bugs).
    pub unconfirmed: Vec<String>,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

impl Health {
    /// How many policies are dead.
    pub fn dead(&self) -> usize {
        self.policies
            .iter()
            .filter(|p| p.status == PolicyStatus::Dead)
            .count()
    }

    /// How many policies can error.
    pub fn erring(&self) -> usize {
        self.policies
            .iter()
            .filter(|p| !p.errors.is_empty())
            .count()
    }

    /// Whether a policy is dead or can error.
    pub fn findings(&self) -> bool {
        self.dead() + self.erring() > 0
    }

    /// Whether something could not be decided.
    pub fn undecided(&self) -> bool {
        !self.unconfirmed.is_empty()
            || self.policies.iter().any(|p| !p.notes.is_empty())
            || self.environments.iter().any(|e| e.note.is_some())
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "health: {} policies: {} dead, {} can error; {} environment(s) ({} ms)\n",
            self.policies.len(),
            self.dead(),
            self.erring(),
            self.environments.len(),
            self.millis
        ));
        for p in &self.policies {
            if p.status == PolicyStatus::Dead {
                out.push_str(&format!(
                    "  {}:{}: {}: dead: it can never match a request the schema admits\n",
                    p.file, p.line, p.id
                ));
            }
            for e in &p.errors {
                out.push_str(&format!(
                    "  {}:{}: {}: can error in {}: {}\n    e.g. {}\n    entities: {}\n",
                    p.file,
                    p.line,
                    p.id,
                    e.env,
                    e.message,
                    e.witness.request_line(),
                    e.witness.entities
                ));
            }
            for n in &p.notes {
                out.push_str(&format!(
                    "  {}:{}: {}: undecided: {n}\n",
                    p.file, p.line, p.id
                ));
            }
        }
        for p in self
            .policies
            .iter()
            .filter(|p| p.status == PolicyStatus::Template)
        {
            out.push_str(&format!(
                "  {}:{}: {}: template: not analyzed (unlinked, it decides nothing)\n",
                p.file, p.line, p.id
            ));
        }
        for e in &self.environments {
            match (&e.always, &e.note) {
                (Some(effect), _) => out.push_str(&format!("  {} always {effect}\n", e.env)),
                (None, Some(note)) => out.push_str(&format!("  {} undecided: {note}\n", e.env)),
                (None, None) => {}
            }
        }
        for u in &self.unconfirmed {
            out.push_str(&format!("  BUG, not a finding: {u}\n"));
        }
        out
    }
}

/// Proves the health of one set: which policies can never match, which can
/// error (with a request that makes each error), and which environments the
/// set always allows or always denies.
pub fn health(prover: &Prover, snapshot: &PolicySnapshot) -> Result<Health, ProveError> {
    let started = Instant::now();
    let envs = environments(&snapshot.schema);
    let (policies, environments, unconfirmed) = prover.run(async |session: &mut Session| {
        let mut unconfirmed = Vec::new();
        let mut policies = Vec::new();
        for meta in &snapshot.meta {
            let mut health = PolicyHealth {
                id: meta.id.clone(),
                file: meta.file.clone(),
                line: meta.line,
                status: PolicyStatus::Dead,
                errors: Vec::new(),
                notes: Vec::new(),
            };
            let policy = cedar_policy::PolicyId::new(&meta.id);
            let Some(policy) = snapshot.policies.policy(&policy) else {
                health.status = PolicyStatus::Template;
                policies.push(health);
                continue;
            };
            for (name, env) in &envs {
                policy_in_env(
                    session,
                    snapshot,
                    policy,
                    (name, env),
                    &mut health,
                    &mut unconfirmed,
                )
                .await;
            }
            if health.status == PolicyStatus::Dead && !health.notes.is_empty() {
                health.status = PolicyStatus::Undecided;
            }
            policies.push(health);
        }
        let mut environments = Vec::new();
        for (name, env) in &envs {
            environments.push(set_in_env(session, snapshot, (name, env)).await);
        }
        (policies, environments, unconfirmed)
    })?;
    Ok(Health {
        policies,
        environments,
        unconfirmed,
        millis: millis(started),
    })
}

/// One policy in one environment: whether it can match, whether it can
/// error.
async fn policy_in_env(
    session: &mut Session,
    snapshot: &PolicySnapshot,
    policy: &Policy,
    (name, env): (&EnvName, &RequestEnv),
    health: &mut PolicyHealth,
    unconfirmed: &mut Vec<String>,
) {
    let compiled = match CompiledPolicy::compile(policy, env, &snapshot.schema) {
        Ok(c) => c,
        Err(e) => {
            health
                .notes
                .push(format!("{name}: cannot be analyzed: {e}"));
            return;
        }
    };
    if health.status == PolicyStatus::Dead {
        match session
            .ask(async |c| c.check_never_matches_opt(&compiled).await)
            .await
        {
            Ok(true) => {}
            Ok(false) => health.status = PolicyStatus::Live,
            Err(e) => health.notes.push(format!("{name}: {e}")),
        }
    }
    match session
        .ask(async |c| {
            c.check_never_errors_with_counterexample_opt(&compiled)
                .await
        })
        .await
    {
        Ok(None) => {}
        Ok(Some(cex)) => {
            let witness = Witness::new(&cex.request, &cex.entities);
            let d = authz::decide(
                snapshot,
                &cex.request,
                &with_actions(&cex.entities, snapshot),
            );
            match d.errors.iter().find(|e| e.policy_id == health.id) {
                Some(e) => health.errors.push(PolicyError {
                    env: name.clone(),
                    witness,
                    message: e.message.clone(),
                }),
                None => unconfirmed.push(format!(
                    "{name}: the solver's request on which `{}` errors ({}) evaluates without an error of it on the decision path",
                    health.id,
                    witness.request_line()
                )),
            }
        }
        Err(e) => health.notes.push(format!("{name}: {e}")),
    }
}

/// Whether the set always allows or always denies one environment.
async fn set_in_env(
    session: &mut Session,
    snapshot: &PolicySnapshot,
    (name, env): (&EnvName, &RequestEnv),
) -> EnvHealth {
    let mut out = EnvHealth {
        env: name.clone(),
        always: None,
        note: None,
    };
    let compiled = match CompiledPolicySet::compile(&snapshot.policies, env, &snapshot.schema) {
        Ok(c) => c,
        Err(e) => {
            out.note = Some(format!("cannot be analyzed: {e}"));
            return out;
        }
    };
    match session
        .ask(async |c| c.check_always_denies_opt(&compiled).await)
        .await
    {
        Ok(true) => {
            out.always = Some(Effect::Deny);
            return out;
        }
        Ok(false) => {}
        Err(e) => {
            out.note = Some(e);
            return out;
        }
    }
    match session
        .ask(async |c| c.check_always_allows_opt(&compiled).await)
        .await
    {
        Ok(true) => out.always = Some(Effect::Allow),
        Ok(false) => {}
        Err(e) => out.note = Some(e),
    }
    out
}

/// The most characters of a counterexample's entities a refusal quotes.
const MAX_ENTITIES_QUOTED: usize = 600;

/// The reload guard of `--reload-guard no-widening`: lets `candidate`
/// replace `live` only when it is proved to allow nothing `live` denies,
/// or when its files' hash is listed in the policy folder's
/// [`ACKNOWLEDGED_FILE`] (a widening an admin reviewed). Anything not
/// proved (no solver, a time limit, an environment the compiler cannot
/// analyze) refuses the reload too: the guard never lets through what it
/// could not check. Each widened environment is one error, located at the
/// candidate's policy that allows the counterexample.
pub fn no_widening(
    prover: &Prover,
    live: &PolicySnapshot,
    candidate: &PolicySnapshot,
    files: &Files,
) -> Result<(), Vec<LoadError>> {
    if parse_acknowledged(&files.acknowledged).contains(&files.sha256) {
        tracing::warn!(
            sha256 = %files.sha256,
            "reload guard: this set's hash is acknowledged in {ACKNOWLEDGED_FILE}; it goes live without a proof"
        );
        return Ok(());
    }
    let hint = format!(
        "review it (`cedard impact --prove`), then acknowledge it: `cedard impact --prove --acknowledge`, or add the line `{}` to {ACKNOWLEDGED_FILE} in the policy folder",
        files.sha256
    );
    let unproved = |why: String| {
        LoadError {
        file: ACKNOWLEDGED_FILE.to_owned(),
        line: None,
        column: None,
        message: format!(
            "reload guard (no-widening): cannot prove this set allows nothing the live set denies: {why}; {hint}"
        ),
    }
    };
    let proof = compare(prover, live, candidate).map_err(|e| vec![unproved(e.to_string())])?;
    let mut errors = Vec::new();
    for e in &proof.environments {
        if let Some(d) = e.wider.as_ref().filter(|_| e.change.widens()) {
            let at = d
                .candidate
                .policies
                .first()
                .and_then(|id| candidate.meta_of(&cedar_policy::PolicyId::new(id)));
            let mut entities = d.witness.entities.to_string();
            if let Some((i, _)) = entities.char_indices().nth(MAX_ENTITIES_QUOTED) {
                entities.truncate(i);
                entities.push('…');
            }
            errors.push(LoadError {
                file: at.map_or_else(|| ACKNOWLEDGED_FILE.to_owned(), |m| m.file.clone()),
                line: at.map(|m| m.line),
                column: None,
                message: format!(
                    "reload guard (no-widening): this edit widens {}: {} is denied now and would be {}; entities {entities}; {hint}",
                    e.env,
                    d.witness.request_line(),
                    d.candidate.describe()
                ),
            });
        } else if e.change == Change::Undecided {
            errors.push(unproved(format!(
                "{}: {}",
                e.env,
                e.note.as_deref().unwrap_or("undecided")
            )));
        }
    }
    for u in &proof.unconfirmed {
        errors.push(unproved(format!("a counterexample was not confirmed: {u}")));
    }
    if errors.is_empty() {
        tracing::info!(
            millis = proof.millis,
            environments = proof.environments.len(),
            "reload guard: proved the new set allows nothing the live set denies"
        );
        Ok(())
    } else {
        Err(errors)
    }
}
