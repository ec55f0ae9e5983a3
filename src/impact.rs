//! What a candidate policy set would change, before it goes live:
//! `cedard impact` and the console's Impact page.
//!
//! Three comparisons of a live set with a candidate, each decided offline
//! through `crate::authz` exactly as the daemon decides:
//!
//! - **the role matrix** ([`matrix_flips`]): every cell of both sets' role ×
//!   action tables (team and personal account) whose answer differs, with
//!   the policies that decide it before and after; a role or action one set
//!   lacks counts as a deny there (nobody can hold a role the schema does
//!   not declare);
//! - **recorded traffic** ([`replay`]): the decisions of a decision log
//!   (`audit`'s JSON lines) asked again of both sets, with the stored users
//!   and accounts a daemon would add (`facts`), counted by action and by
//!   deciding policies;
//! - **test suites** ([`suite_changes`]): the YAML suites run against both
//!   sets, and the cases whose verdict changes.
//!
//! An outcome is `allow`, `deny`, or `invalid` (the daemon would answer
//! 400: the request no longer fits the schema); a flip is any change of
//! outcome. This module knows nothing about HTTP; it reads a store it is
//! handed and never writes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy::EntityUid;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::audit;
use crate::authz::{self, Effect};
use crate::facts::{EntityError, EntityMemo, Facts, Inline};
use crate::matrix::{self, Matrix, MatrixError};
use crate::model::RoleCatalog;
use crate::policy::{PolicySnapshot, Sources};
use crate::store::Store;
use crate::suite::{self, Status};

/// How many flipped decisions of the log are kept as examples.
pub const EXAMPLES: usize = 5;

/// One side of a comparison: what a set answered, and which policies
/// decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `allow`, `deny`, or `invalid` (the request does not fit the set's
    /// schema; also a role or action the set does not have).
    pub outcome: String,
    /// The ids of the deciding policies, sorted (for a deny by default,
    /// none); for `invalid`, empty.
    pub policies: Vec<String>,
    /// Why the request is invalid, or why the cell is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Outcome {
    fn decided(allow: bool, policies: Vec<String>) -> Self {
        Self {
            outcome: Effect::from_allow(allow).as_str().to_owned(),
            policies,
            note: None,
        }
    }

    fn invalid(note: String) -> Self {
        Self {
            outcome: "invalid".to_owned(),
            policies: Vec::new(),
            note: Some(note),
        }
    }

    /// `allow [dev]`, `deny (no policy)`, `invalid`.
    pub fn describe(&self) -> String {
        match self.outcome.as_str() {
            "invalid" => "invalid".to_owned(),
            word if self.policies.is_empty() => format!("{word} (no policy)"),
            word => format!("{word} [{}]", self.policies.join(", ")),
        }
    }
}

/// A cell of the role matrix whose answer differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellFlip {
    /// `team` or `personal`.
    pub account: String,
    /// The role (or `non-member`).
    pub column: String,
    /// The action's id.
    pub action: String,
    /// The live set's answer.
    pub before: Outcome,
    /// The candidate's answer.
    pub after: Outcome,
}

/// The cells of the two sets' matrices whose answers differ, by account
/// kind, then action, then column (in the live set's column order, then the
/// candidate's new columns).
pub fn matrix_flips(live: &Matrix, candidate: &Matrix) -> Vec<CellFlip> {
    let mut columns: Vec<&String> = live.columns.iter().collect();
    columns.extend(
        candidate
            .columns
            .iter()
            .filter(|c| !live.columns.contains(c)),
    );
    let actions: BTreeSet<&String> = live.actions.iter().chain(&candidate.actions).collect();
    let side =
        |m: &Matrix, kind: &str, column: &str, action: &str| match m.cell(kind, column, action) {
            Some((allow, reasons)) => Outcome::decided(allow, reasons.to_vec()),
            None => {
                let note = if !m.columns.iter().any(|c| c == column) {
                    format!("no role `{column}` in this set")
                } else {
                    format!("no action `{action}` for users in this set")
                };
                Outcome {
                    outcome: "deny".to_owned(),
                    policies: Vec::new(),
                    note: Some(note),
                }
            }
        };
    let mut flips = Vec::new();
    for kind in matrix::KINDS {
        for action in &actions {
            for column in &columns {
                let before = side(live, kind, column, action);
                let after = side(candidate, kind, column, action);
                if before.outcome != after.outcome {
                    flips.push(CellFlip {
                        account: kind.to_owned(),
                        column: (*column).clone(),
                        action: (*action).clone(),
                        before,
                        after,
                    });
                }
            }
        }
    }
    flips
}

/// Computes both matrices and their flips.
pub fn matrix_impact(
    live: &PolicySnapshot,
    candidate: &PolicySnapshot,
) -> Result<Vec<CellFlip>, MatrixError> {
    let before = matrix::compute(live, &RoleCatalog::default().roles(live)?)?;
    let after = matrix::compute(candidate, &RoleCatalog::default().roles(candidate)?)?;
    Ok(matrix_flips(&before, &after))
}

/// One decision read from a decision log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The line it was read from, counting from 1.
    pub line: usize,
    /// The principal, in Cedar form.
    pub principal: String,
    /// The action, in Cedar form.
    pub action: String,
    /// The resource, in Cedar form.
    pub resource: String,
    /// The context, when the log recorded it (`--decision-log-context`).
    pub context: Option<Value>,
    /// What the daemon answered then.
    pub decision: Effect,
}

/// The decisions of a decision log and what was not one.
#[derive(Debug, Default)]
pub struct LogRead {
    /// The decisions, in file order.
    pub decisions: Vec<Logged>,
    /// Management-write lines, skipped.
    pub writes: usize,
    /// Lines that are not a decision line cedard writes (truncated, or not
    /// JSON), with their numbers (the first few).
    pub unreadable: usize,
    /// The numbers of the first unreadable lines.
    pub unreadable_lines: Vec<usize>,
}

/// The longest line of a decision log that is read; a longer one (cedard
/// writes none) is skipped as unreadable without being held.
const MAX_LOG_LINE: u64 = 1024 * 1024;

/// Reads the decision lines of a decision log, keeping at most the last
/// `keep` decisions (all with `None`): a streamed window, so that memory is
/// bounded by `keep` (and a line by [`MAX_LOG_LINE`]) however long the log
/// is.
pub fn read_log(mut reader: impl BufRead, keep: Option<usize>) -> std::io::Result<LogRead> {
    let mut out = LogRead::default();
    let mut window = std::collections::VecDeque::new();
    let mut bytes = Vec::new();
    for i in 0.. {
        bytes.clear();
        let n = std::io::Read::take(&mut reader, MAX_LOG_LINE).read_until(b'\n', &mut bytes)?;
        if n == 0 {
            break;
        }
        if !bytes.ends_with(b"\n") && n as u64 == MAX_LOG_LINE {
            skip_line(&mut reader)?;
            out.unreadable(i + 1);
            continue;
        }
        let line = String::from_utf8_lossy(&bytes);
        if line.trim().is_empty() {
            continue;
        }
        match audit::read_line(&line) {
            Some(audit::Line::Write(_)) => out.writes += 1,
            Some(audit::Line::Decision(d)) => {
                if keep.is_some_and(|keep| window.len() >= keep) {
                    window.pop_front();
                }
                if keep != Some(0) {
                    window.push_back(Logged {
                        line: i + 1,
                        principal: d.principal,
                        action: d.action,
                        resource: d.resource,
                        context: d.context,
                        decision: d.decision,
                    });
                }
            }
            None => out.unreadable(i + 1),
        }
    }
    out.decisions = window.into();
    Ok(out)
}

/// Reads past the rest of the current line without keeping it.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let all = chunk.len();
                reader.consume(all);
            }
        }
    }
}

impl LogRead {
    fn unreadable(&mut self, line: usize) {
        self.unreadable += 1;
        if self.unreadable_lines.len() < EXAMPLES {
            self.unreadable_lines.push(line);
        }
    }
}

/// One logged decision whose answer flips.
#[derive(Debug, Clone, Serialize)]
pub struct LogFlip {
    /// The line of the log.
    pub line: usize,
    /// The principal, in Cedar form.
    pub principal: String,
    /// The action, in Cedar form.
    pub action: String,
    /// The resource, in Cedar form.
    pub resource: String,
    /// The live set's answer.
    pub before: Outcome,
    /// The candidate's answer.
    pub after: Outcome,
}

/// What replaying a log against both sets found.
#[derive(Debug, Default, Serialize)]
pub struct Replay {
    /// Decisions replayed.
    pub replayed: usize,
    /// Distinct questions among them (each decided once per set).
    pub distinct: usize,
    /// How many of them flip.
    pub flipped: usize,
    /// Flips by action (Cedar form).
    pub by_action: BTreeMap<String, usize>,
    /// Flips by deciding policies, `before → after` (e.g.
    /// `allow [dev] → deny [no-stop]`).
    pub by_policy: BTreeMap<String, usize>,
    /// The first few flips.
    pub examples: Vec<LogFlip>,
    /// Decisions whose replay on the live set differs from what the log
    /// says was answered (the store changed since, the log came from
    /// another policy set, or the request sent entities inline).
    pub differs_from_log: usize,
    /// Decisions naming a principal or resource that neither the store nor
    /// the entity data files hold: the request sent it inline, which the log
    /// does not record, so they are replayed without it.
    pub incomplete: usize,
    /// How long the replay took.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Replay {
    /// Decisions replayed per second (each against both sets).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.replayed as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why a log could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store failed, or stored records do not fit a set's schema.
    #[error("{0}")]
    Store(String),
}

/// One set and what deciding against it needs.
struct Side<'a> {
    snapshot: &'a PolicySnapshot,
    catalog: RoleCatalog,
    memo: EntityMemo,
}

/// Reads an entity reference as the log writes it (`User::"bob"`). The
/// common case, a type of the schema and an id without escapes, is built
/// directly, as `authz::parse_uid_in` does for JSON references; anything
/// else goes through Cedar's parser.
fn uid_of(snapshot: &PolicySnapshot, field: &str, text: &str) -> Result<EntityUid, String> {
    if let Some((ty, rest)) = text.split_once("::\"") {
        if let Some(id) = rest
            .strip_suffix('"')
            .filter(|id| !id.contains(['\\', '"']))
        {
            if let Some(name) = snapshot.type_names.get(ty) {
                return Ok(EntityUid::from_type_name_and_id(
                    name.clone(),
                    cedar_policy::EntityId::new(id),
                ));
            }
        }
    }
    authz::parse_uid(field, &Value::String(text.to_owned())).map_err(|e| e.to_string())
}

/// What both sets answer to one question, and whether the principal and
/// resource were known.
type Answers = (Outcome, Outcome, bool);

/// The store's facts for deciding against one set, when there is a store.
fn facts_for<'a>(side: &'a Side<'a>, store: Option<&'a Store>) -> Option<Facts<'a>> {
    store.map(|store| Facts::new(side.snapshot, &side.catalog, &side.memo, store, usize::MAX))
}

/// What one logged decision is answered by one set, and whether the
/// principal and resource were both known.
fn decide_logged(
    side: &Side<'_>,
    facts: Option<&Facts<'_>>,
    d: &Logged,
) -> Result<(Outcome, bool), ReplayError> {
    let snapshot = side.snapshot;
    let parse = |field: &str, text: &str| uid_of(snapshot, field, text);
    let (principal, action, resource) = match (
        parse("principal", &d.principal),
        parse("action", &d.action),
        parse("resource", &d.resource),
    ) {
        (Ok(p), Ok(a), Ok(r)) => (p, a, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Ok((Outcome::invalid(e), true));
        }
    };
    let request = match authz::build_request(
        snapshot,
        principal.clone(),
        action,
        resource.clone(),
        d.context.as_ref(),
        true,
    ) {
        Ok(r) => r,
        Err(e) => return Ok((Outcome::invalid(e.to_string()), true)),
    };
    let entities = match facts {
        Some(facts) => match facts.entities(Inline::None, &[(&principal, &resource)]) {
            Ok(e) => e,
            Err(EntityError::Input(e)) => return Ok((Outcome::invalid(e.to_string()), true)),
            Err(e) => return Err(ReplayError::Store(e.to_string())),
        },
        None => std::borrow::Cow::Borrowed(&snapshot.base_entities),
    };
    let known = entities.get(&principal).is_some() && entities.get(&resource).is_some();
    let decision = authz::decide(snapshot, &request, &entities);
    let (reasons, _) = suite::ids_of(&decision);
    Ok((Outcome::decided(decision.allow, reasons), known))
}

/// Replays `decisions` against both sets, with the stored users and
/// accounts of `store` (when given) built as the daemon builds them.
///
/// The store does not change during a replay, so the same question (the
/// same principal, action, resource and context) gets the same answer every
/// time: each distinct question is decided once per set and its answer
/// counted for every line that asked it. Distinct questions are
/// independent, so they are decided in parallel, in chunks that each read
/// the store in one transaction.
pub fn replay(
    decisions: &[Logged],
    live: &PolicySnapshot,
    candidate: &PolicySnapshot,
    store: Option<&Store>,
) -> Result<Replay, ReplayError> {
    const CHUNK: usize = 2048;
    let started = Instant::now();
    // The first line of each distinct question, and each line's question.
    let mut index: HashMap<(&str, &str, &str, Option<String>), usize> = HashMap::new();
    let mut distinct: Vec<&Logged> = Vec::new();
    let question_of: Vec<usize> = decisions
        .iter()
        .map(|d| {
            let key = (
                d.principal.as_str(),
                d.action.as_str(),
                d.resource.as_str(),
                d.context.as_ref().map(Value::to_string),
            );
            *index.entry(key).or_insert_with(|| {
                distinct.push(d);
                distinct.len() - 1
            })
        })
        .collect();
    let sides = [live, candidate].map(|snapshot| Side {
        snapshot,
        catalog: RoleCatalog::default(),
        memo: EntityMemo::default(),
    });
    let chunks: Vec<Result<Vec<Answers>, ReplayError>> = distinct
        .par_chunks(CHUNK)
        .map(|chunk| {
            let (before_facts, after_facts) =
                (facts_for(&sides[0], store), facts_for(&sides[1], store));
            let mut out = Vec::with_capacity(chunk.len());
            for d in chunk {
                let (before, known) = decide_logged(&sides[0], before_facts.as_ref(), d)?;
                let (after, _) = decide_logged(&sides[1], after_facts.as_ref(), d)?;
                out.push((before, after, known));
            }
            Ok(out)
        })
        .collect();
    let mut answers = Vec::with_capacity(distinct.len());
    for chunk in chunks {
        answers.extend(chunk?);
    }
    let mut replay = Replay::default();
    for (d, q) in decisions.iter().zip(question_of) {
        let Some((before, after, known)) = answers.get(q) else {
            continue;
        };
        replay.replayed += 1;
        if !known {
            replay.incomplete += 1;
        }
        if before.outcome != d.decision.as_str() {
            replay.differs_from_log += 1;
        }
        if before.outcome == after.outcome {
            continue;
        }
        replay.flipped += 1;
        *replay.by_action.entry(d.action.clone()).or_default() += 1;
        *replay
            .by_policy
            .entry(format!("{} → {}", before.describe(), after.describe()))
            .or_default() += 1;
        if replay.examples.len() < EXAMPLES {
            replay.examples.push(LogFlip {
                line: d.line,
                principal: d.principal.clone(),
                action: d.action.clone(),
                resource: d.resource.clone(),
                before: before.clone(),
                after: after.clone(),
            });
        }
    }
    replay.distinct = distinct.len();
    replay.elapsed = started.elapsed();
    Ok(replay)
}

/// A test case whose verdict differs between the sets.
#[derive(Debug, Clone, Serialize)]
pub struct CaseChange {
    /// The test file.
    pub file: String,
    /// The case (or `load`, for a suite that no longer loads).
    pub case: String,
    /// Its failure on the set where it fails.
    pub failure: String,
}

/// What running the suites against both sets found.
#[derive(Debug, Default, Serialize)]
pub struct SuiteChanges {
    /// Cases (and file checks) run against each set.
    pub cases: usize,
    /// Pass on the live set, fail on the candidate.
    pub now_failing: Vec<CaseChange>,
    /// Fail on the live set, pass on the candidate.
    pub now_passing: Vec<CaseChange>,
}

/// Runs the suites in `paths` against both sets (YAML suites test the set
/// they are given; Cedar's JSON tests carry their own policies and cannot
/// differ) and lists the cases whose verdict changes. Cases are matched by
/// file, name and occurrence.
pub fn suite_changes(
    paths: &[std::path::PathBuf],
    live: &Sources,
    candidate: &Sources,
) -> SuiteChanges {
    let run = |sources: &Sources| {
        suite::run(
            paths,
            &suite::Options {
                root: None,
                policy: Some(sources.clone()),
            },
        )
    };
    let verdicts = |report: &suite::Report| {
        let mut out: HashMap<(String, String, usize), Option<String>> = HashMap::new();
        for f in &report.files {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for c in f.checks.iter().chain(&f.cases) {
                let n = seen.entry(c.name.as_str()).or_default();
                *n += 1;
                let failure = match &c.status {
                    Status::Failed(why) => Some(why.clone()),
                    _ => None,
                };
                out.insert((f.file.clone(), c.name.clone(), *n), failure);
            }
        }
        out
    };
    let (before, after) = (verdicts(&run(live)), verdicts(&run(candidate)));
    let mut changes = SuiteChanges {
        cases: before.len().max(after.len()),
        ..Default::default()
    };
    let keys: BTreeSet<&(String, String, usize)> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (file, case, _) = key;
        // A case the other run does not have (a file that stopped loading
        // has its `load` check instead) counts as passing there.
        let b = before.get(key).cloned().flatten();
        let a = after.get(key).cloned().flatten();
        match (b, a) {
            (None, Some(failure)) => changes.now_failing.push(CaseChange {
                file: file.clone(),
                case: case.clone(),
                failure,
            }),
            (Some(failure), None) => changes.now_passing.push(CaseChange {
                file: file.clone(),
                case: case.clone(),
                failure,
            }),
            _ => {}
        }
    }
    changes
}

/// Everything one impact run found.
#[derive(Debug, Default, Serialize)]
pub struct Impact {
    /// The flipped matrix cells.
    pub matrix: Vec<CellFlip>,
    /// Why the role matrix was not compared (a set of another account
    /// model, proved only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix_not_compared: Option<String>,
    /// The replayed log, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<Replay>,
    /// The suites, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suites: Option<SuiteChanges>,
    /// The proof of what can change, when asked (`--prove`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<crate::prove::Proof>,
}

impl Impact {
    /// Whether any answer flips (a matrix cell, a logged decision, or a
    /// test verdict).
    pub fn flips(&self) -> bool {
        !self.matrix.is_empty()
            || self.log.as_ref().is_some_and(|l| l.flipped > 0)
            || self
                .suites
                .as_ref()
                .is_some_and(|s| !s.now_failing.is_empty() || !s.now_passing.is_empty())
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(why) = &self.matrix_not_compared {
            out.push_str(&format!("matrix: not compared: {why}\n"));
        } else if self.matrix.is_empty() {
            out.push_str("matrix: no cell flips\n");
        } else {
            out.push_str(&format!("matrix: {} cell(s) flip\n", self.matrix.len()));
            for f in &self.matrix {
                out.push_str(&format!(
                    "  {} account, {}, {}: {} -> {}\n",
                    f.account,
                    f.column,
                    f.action,
                    f.before.describe(),
                    f.after.describe()
                ));
            }
        }
        if let Some(log) = &self.log {
            out.push_str(&format!(
                "log: {} of {} replayed decision(s) flip ({} distinct questions; {:.0} decisions/s)\n",
                log.flipped,
                log.replayed,
                log.distinct,
                log.rate()
            ));
            for (action, n) in &log.by_action {
                out.push_str(&format!("  by action: {action}: {n}\n"));
            }
            for (policy, n) in &log.by_policy {
                out.push_str(&format!("  by policy: {policy}: {n}\n"));
            }
            for e in &log.examples {
                out.push_str(&format!(
                    "  e.g. line {}: {} {} {}: {} -> {}\n",
                    e.line,
                    e.principal,
                    e.action,
                    e.resource,
                    e.before.describe(),
                    e.after.describe()
                ));
            }
            if log.incomplete > 0 {
                out.push_str(&format!(
                    "  note: {} decision(s) name an entity neither the store nor the entity data hold (sent inline, which the log does not record); replayed without it\n",
                    log.incomplete
                ));
            }
            if log.differs_from_log > 0 {
                out.push_str(&format!(
                    "  note: {} decision(s) replay on the live set differently from what the log recorded\n",
                    log.differs_from_log
                ));
            }
        }
        if let Some(s) = &self.suites {
            out.push_str(&format!(
                "suites: {} case(s) start failing, {} start passing (of {})\n",
                s.now_failing.len(),
                s.now_passing.len(),
                s.cases
            ));
            for c in &s.now_failing {
                out.push_str(&format!("  FAIL {}: {}: {}\n", c.file, c.case, c.failure));
            }
            for c in &s.now_passing {
                out.push_str(&format!(
                    "  PASS {}: {} (failed on live: {})\n",
                    c.file, c.case, c.failure
                ));
            }
        }
        if let Some(proof) = &self.proof {
            out.push_str(&proof.to_text());
        }
        out
    }
}

/// A candidate set: the live one's files with one policy file replaced (or
/// added), as the console's Impact page builds it from a pasted file.
pub fn with_file(
    live: &Sources,
    name: &str,
    text: &str,
) -> Result<Arc<PolicySnapshot>, crate::policy::PolicyError> {
    use sha2::{Digest, Sha256};
    let mut files = live.read()?;
    // The candidate is a revision of its own (caches are keyed by it).
    let mut hasher = Sha256::new();
    for part in [files.sha256.as_str(), name, text] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    files.sha256 = hex::encode(hasher.finalize());
    match files.policies.iter_mut().find(|f| f.name == name) {
        Some(f) => f.text = text.to_owned(),
        None => {
            files.policies.push(crate::policy::SourceFile {
                name: name.to_owned(),
                text: text.to_owned(),
            });
            files.policies.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    crate::policy::load_files(&files, 0)
}

/// What a candidate set is compared on besides the role matrix.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    /// The stored data: the candidate must fit it (as a reload must), and
    /// the replayed decisions read their users and accounts from it.
    pub store: Option<&'a Store>,
    /// A decision log to replay, and how many of its last decisions to keep
    /// (all with `None`).
    pub log: Option<(&'a std::path::Path, Option<usize>)>,
    /// Test files or folders to run against both sets, with the sources of
    /// each set.
    pub suites: Option<(&'a [std::path::PathBuf], &'a Sources, &'a Sources)>,
    /// The time invites are judged at, for the fit of the stored data.
    pub now: i64,
}

/// A comparison of a candidate set with the live one: the one orchestration
/// behind `cedard impact` and the console's Impact page, each of which
/// decides what to make of each part.
#[derive(Debug)]
pub struct Comparison {
    /// Why a daemon would refuse the candidate (the stored data does not
    /// fit its schema), when it would.
    pub unfit: Option<Vec<crate::policy::LoadError>>,
    /// What flips: the matrix, and the log and suites when given.
    pub impact: Impact,
    /// The log could not be read or replayed: why (the other parts stand).
    pub log_error: Option<String>,
    /// Lines of the log that are not decision or write lines: how many, and
    /// the numbers of the first few.
    pub unreadable: (usize, Vec<usize>),
}

/// Compares `candidate` with `live` on the role matrix and whatever `with`
/// gives. A set of another account model has no role matrix: the rest is
/// compared, and `matrix_not_compared` says why (each caller decides what
/// to make of it).
pub fn compare(live: &PolicySnapshot, candidate: &PolicySnapshot, with: &Inputs<'_>) -> Comparison {
    let unfit = with
        .store
        .and_then(|store| crate::fit::check(store, candidate, with.now).err());
    let (matrix, matrix_not_compared) = match matrix_impact(live, candidate) {
        Ok(flips) => (flips, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let mut comparison = Comparison {
        unfit,
        impact: Impact {
            matrix,
            matrix_not_compared,
            ..Default::default()
        },
        log_error: None,
        unreadable: (0, Vec::new()),
    };
    if let Some((path, keep)) = with.log {
        let read = std::fs::File::open(path)
            .and_then(|f| read_log(std::io::BufReader::new(f), keep))
            .map_err(|e| format!("cannot read the log `{}`: {e}", path.display()));
        match read.and_then(|read| {
            comparison.unreadable = (read.unreadable, read.unreadable_lines.clone());
            replay(&read.decisions, live, candidate, with.store)
                .map_err(|e| format!("cannot replay the log: {e}"))
        }) {
            Ok(r) => comparison.impact.log = Some(r),
            Err(e) => comparison.log_error = Some(e),
        }
    }
    if let Some((paths, live_sources, candidate_sources)) = with.suites {
        comparison.impact.suites = Some(suite_changes(paths, live_sources, candidate_sources));
    }
    comparison
}
