//! A model-based run against two oracles. A seeded random sequence of steps
//! over a small universe (four user ids, their personal accounts, one pod
//! per account) mixes every management operation — sign-up, convert,
//! invite, accept, revoke and re-link invites, change role, remove member,
//! set email verified, create and revoke keys, a policy reload — and after
//! every step asks cedard every (user, action, target) question.
//!
//! The answers are compared with two oracles that cannot be stale: an
//! independent model of the directory and of the seed's role table
//! ([`Model`], written from `policies/*.cedar`), and the same questions
//! asked at `"consistency": "full"`, which reads the store afresh and
//! bypasses every memo. The model also predicts the status of every
//! management operation. The full matrix goes through the batch; one more
//! door per step, in turn, asks a sample: `/v1/is_authorized`, AuthZEN
//! evaluation and evaluations, the three AuthZEN searches, the management
//! API's own checks (with the members and invites it lists) and the
//! console's playground. Any disagreement fails with the seed, the step,
//! the last operations, the question and the answers.
//!
//! The run is on redb (the daemon in-process) and on PostgreSQL with two
//! replicas: writes on one, decisions on the other with the write's store
//! revision as `consistency: {at_least}`, and now and then without it once
//! the documented staleness bound has passed. `CEDARD_MODEL_SEED` and
//! `CEDARD_MODEL_STEPS` choose the run; a long one by hand:
//! `CEDARD_MODEL_STEPS=100000 cargo test --test it model -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use super::pg::Cluster;
use super::support::{
    copy_pack, repo_root, roles, spawn_app_in, spawn_binary, team_table, Answer, Api, TEAM,
};

/// The seed when `CEDARD_MODEL_SEED` does not name one.
const DEFAULT_SEED: u64 = 20_250_611;

/// Steps of the redb run when `CEDARD_MODEL_STEPS` does not say: about a
/// minute in a debug build on a busy two-core machine (the two 224-question
/// batches of every step are most of it).
const REDB_STEPS: usize = 1500;

/// Steps of the PostgreSQL run when `CEDARD_MODEL_STEPS` does not say:
/// every step crosses two processes and a database (about 40 s).
const PG_STEPS: usize = 500;

/// The replicas' `--store-poll-ms`.
const STORE_POLL_MS: u64 = 100;

/// How long after a write a replica asked with no consistency may still
/// answer from before it: the poll interval, with room for a loaded
/// machine.
const STALENESS_BOUND: Duration = Duration::from_millis(5 * STORE_POLL_MS);

/// On PostgreSQL, every this many steps the matrix is also asked on the
/// reading replica without `at_least`, once the staleness bound has passed.
const STALE_CHECK_EVERY: usize = 50;

/// The operations kept for the failure message.
const HISTORY: usize = 12;

/// How long a reload may take to show on a replica.
const DEADLINE: Duration = Duration::from_secs(20);

/// The user ids of the universe; each signs up with a personal account of
/// the same id, which is the universe's accounts.
const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];

/// The actions whose resource is an account, and those on a pod.
const ACCOUNT_ACTIONS: [&str; 11] = [
    "useAccount",
    "viewMembers",
    "createPod",
    "viewBilling",
    "manageBilling",
    "updateSettings",
    "inviteMember",
    "revokeInvite",
    "changeMemberRole",
    "removeMember",
    "convertToTeam",
];
const POD_ACTIONS: [&str; 3] = ["connectPod", "startPod", "stopPod"];

/// The actions `policies/account.cedar` allows on team accounts only.
const TEAM_ONLY: [&str; 4] = [
    "inviteMember",
    "revokeInvite",
    "changeMemberRole",
    "removeMember",
];

/// The policy files (one role's permit each) a reload step removes and
/// restores; `admin.cedar`, `account.cedar` and `grants.cedar` stay.
const TOGGLED: [&str; 3] = ["basic", "billing", "dev"];

/// The key scopes.
const SCOPES: [&str; 3] = ["decide", "manage", "admin"];

fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

fn canonical_email(user: &str) -> String {
    format!("{user}@example.com")
}

fn pod_id(account: &str) -> String {
    format!("{account}-pod")
}

/// The pod of `account` as an inline entity: its `account` attribute and
/// the account as its parent.
fn pod_entity(account: &str) -> Value {
    json!({
        "uid": {"type": "Pod", "id": pod_id(account)},
        "attrs": {"account": {"type": "Account", "id": account}},
        "parents": [{"type": "Account", "id": account}],
    })
}

/// Every pod of the universe.
fn pods() -> Value {
    USERS.into_iter().map(pod_entity).collect()
}

/// What a question is about: an account, or the pod of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Account(&'static str),
    Pod(&'static str),
}

impl Target {
    fn account(self) -> &'static str {
        match self {
            Target::Account(a) | Target::Pod(a) => a,
        }
    }

    /// The reference `/v1` takes.
    fn reference(self) -> Value {
        match self {
            Target::Account(a) => json!({"type": "Account", "id": a}),
            Target::Pod(a) => json!({"type": "Pod", "id": pod_id(a)}),
        }
    }

    /// The AuthZEN resource: a pod is described by its properties.
    fn authzen(self) -> Value {
        match self {
            Target::Account(a) => json!({"type": "Account", "id": a}),
            Target::Pod(a) => json!({"type": "Pod", "id": pod_id(a),
                "properties": {"account": {"type": "Account", "id": a}}}),
        }
    }

    /// The actions that apply to this kind of target.
    fn actions(self) -> &'static [&'static str] {
        match self {
            Target::Account(_) => &ACCOUNT_ACTIONS,
            Target::Pod(_) => &POD_ACTIONS,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Account(a) => write!(f, "Account::\"{a}\""),
            Target::Pod(a) => write!(f, "Pod::\"{}\" (of Account::\"{a}\")", pod_id(a)),
        }
    }
}

/// One question: may `user` do `action` on `target`?
#[derive(Debug, Clone, Copy)]
struct Question {
    user: &'static str,
    action: &'static str,
    target: Target,
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "may User::\"{}\" {} on {}?",
            self.user, self.action, self.target
        )
    }
}

/// Every question of the universe: each user, each account action on each
/// account, each pod action on each account's pod.
fn universe() -> Vec<Question> {
    let mut out = Vec::new();
    for user in USERS {
        for account in USERS {
            for target in [Target::Account(account), Target::Pod(account)] {
                for &action in target.actions() {
                    out.push(Question {
                        user,
                        action,
                        target,
                    });
                }
            }
        }
    }
    out
}

fn word(allow: bool) -> &'static str {
    if allow {
        "allow"
    } else {
        "deny"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Personal,
    Team,
}

#[derive(Debug)]
struct UserRecord {
    /// Stored trimmed and lowercase, as cedard stores it.
    email: String,
    verified: bool,
}

#[derive(Debug)]
struct AccountRecord {
    kind: Kind,
    owner: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InviteState {
    Pending,
    Used,
    Revoked,
}

#[derive(Debug)]
struct InviteRecord {
    id: String,
    /// The live token while pending.
    token: String,
    /// Tokens a re-link replaced: dead.
    old_tokens: Vec<String>,
    account: &'static str,
    role: &'static str,
    email: Option<String>,
    created_by: &'static str,
    state: InviteState,
}

#[derive(Debug)]
struct KeyRecord {
    id: String,
    secret: String,
    scopes: Vec<&'static str>,
    revoked: bool,
}

/// The directory as the test believes it to be, and the policy files in
/// place. Each operation's method says what cedard must answer and, when
/// that is a success, changes the model as the operation changes the store.
#[derive(Debug, Default)]
struct Model {
    users: BTreeMap<&'static str, UserRecord>,
    accounts: BTreeMap<&'static str, AccountRecord>,
    /// `(account, user)` to the role held.
    roles: BTreeMap<(&'static str, &'static str), &'static str>,
    invites: Vec<InviteRecord>,
    /// The extra keys (the run's own key is not here: it is never revoked).
    keys: Vec<KeyRecord>,
    /// The role policy files removed by a reload step.
    disabled: BTreeSet<&'static str>,
}

impl Model {
    fn role(&self, account: &str, user: &str) -> Option<&'static str> {
        self.roles
            .iter()
            .find(|((a, u), _)| *a == account && *u == user)
            .map(|(_, r)| *r)
    }

    fn members(&self, account: &str) -> Vec<(String, String)> {
        self.roles
            .iter()
            .filter(|((a, _), _)| *a == account)
            .map(|((_, u), r)| ((*u).to_owned(), (*r).to_owned()))
            .collect()
    }

    fn admins(&self, account: &str) -> usize {
        self.members(account)
            .iter()
            .filter(|(_, r)| r == "admin")
            .count()
    }

    fn is_team(&self, account: &str) -> bool {
        self.accounts
            .get(account)
            .is_some_and(|a| a.kind == Kind::Team)
    }

    /// What a member holding `role` is permitted, before any forbid: the
    /// permits of `policies/{admin,basic,billing,dev}.cedar` that are in
    /// place.
    fn permits(&self, role: &str, action: &str) -> bool {
        let on = |file: &str| !self.disabled.contains(file);
        // `admin.cedar` permits everything on its own account; every other
        // role permits what the seed's table (`roles.yaml`) gives it on a
        // team account, while its policy file (named after it) is there.
        match role {
            "admin" => true,
            role => on(role) && TEAM.allows(action, role),
        }
    }

    /// The answer to "may `user` do `action` on `target`?" with no context:
    /// a stored user who is a member of the target's stored account, whose
    /// role permits the action, unless `policies/account.cedar` forbids it
    /// (converting needs the owner and a personal account; member and
    /// invite actions need a team). The role ceiling of `grants.cedar` caps
    /// only grants that a role above basic permits, and on the seed only
    /// admins, whom it never caps, may grant: it changes no answer.
    fn allowed(&self, user: &str, action: &str, target: Target) -> bool {
        let id = target.account();
        let (Some(_), Some(account)) = (self.users.get(user), self.accounts.get(id)) else {
            return false;
        };
        let Some(role) = self.role(id, user) else {
            return false;
        };
        if action == "convertToTeam" && !(account.owner == user && account.kind == Kind::Personal) {
            return false;
        }
        if TEAM_ONLY.contains(&action) && account.kind != Kind::Team {
            return false;
        }
        self.permits(role, action)
    }

    fn may(&self, actor: &str, action: &str, account: &'static str) -> bool {
        self.allowed(actor, action, Target::Account(account))
    }

    /// `POST /v1/users`: a taken id or email is a conflict; the personal
    /// account's owner holds its admin role.
    fn sign_up(&mut self, id: &'static str, email: &str, verified: bool) -> u16 {
        let email = normalize(email);
        if self.users.contains_key(id) || self.users.values().any(|u| u.email == email) {
            return 409;
        }
        self.users.insert(id, UserRecord { email, verified });
        self.accounts.insert(
            id,
            AccountRecord {
                kind: Kind::Personal,
                owner: id,
            },
        );
        self.roles.insert((id, id), "admin");
        201
    }

    /// `PUT /v1/users/{id}/email_verified`.
    fn set_email_verified(&mut self, id: &str, verified: bool) -> u16 {
        match self.users.get_mut(id) {
            Some(u) => {
                u.verified = verified;
                200
            }
            None => 404,
        }
    }

    /// `POST /v1/accounts/{id}/convert`: the policies decide (the owner of
    /// a personal account, its admin).
    fn convert(&mut self, actor: &str, account: &'static str) -> u16 {
        if !self.may(actor, "convertToTeam", account) {
            return 403;
        }
        if let Some(a) = self.accounts.get_mut(account) {
            a.kind = Kind::Team;
        }
        200
    }

    /// `POST /v1/accounts/{id}/invites` with valid input; on 201 the caller
    /// records the issued invite with [`Model::invited`].
    fn invite(&self, actor: &str, account: &'static str) -> u16 {
        if self.may(actor, "inviteMember", account) {
            201
        } else {
            403
        }
    }

    fn invited(&mut self, invite: InviteRecord) {
        self.invites.push(invite);
    }

    /// `POST /v1/invites/accept`: an unknown actor is refused; a token that
    /// is not the live one of a pending invite is gone, and so is an invite
    /// whose creator may no longer grant it; an email-bound invite needs
    /// the actor's verified address; a member cannot join again.
    fn accept(&mut self, actor: &'static str, token: &str) -> u16 {
        let Some(user) = self.users.get(actor) else {
            return 403;
        };
        let Some(at) = self
            .invites
            .iter()
            .position(|i| i.state == InviteState::Pending && i.token == token)
        else {
            return 410;
        };
        let invite = &self.invites[at];
        if !self.may(invite.created_by, "inviteMember", invite.account) {
            return 410;
        }
        if let Some(email) = &invite.email {
            if *email != user.email || !user.verified {
                return 403;
            }
        }
        if self.role(invite.account, actor).is_some() {
            return 409;
        }
        self.roles.insert((invite.account, actor), invite.role);
        self.invites[at].state = InviteState::Used;
        200
    }

    fn pending_in(&self, account: &str, invite: &str) -> Option<usize> {
        self.invites
            .iter()
            .position(|i| i.id == invite && i.account == account && i.state == InviteState::Pending)
    }

    /// `DELETE /v1/accounts/{id}/invites/{invite}`.
    fn revoke(&mut self, actor: &str, account: &'static str, invite: &str) -> u16 {
        if !self.may(actor, "revokeInvite", account) {
            return 403;
        }
        match self.pending_in(account, invite) {
            Some(at) => {
                self.invites[at].state = InviteState::Revoked;
                204
            }
            None => 404,
        }
    }

    /// `POST /v1/accounts/{id}/invites/{invite}/link`; on 200 the caller
    /// records the new token with [`Model::relinked`].
    fn relink(&self, actor: &str, account: &'static str, invite: &str) -> u16 {
        if !self.may(actor, "inviteMember", account) {
            return 403;
        }
        match self.pending_in(account, invite) {
            Some(_) => 200,
            None => 404,
        }
    }

    fn relinked(&mut self, invite: &str, token: String) {
        if let Some(i) = self.invites.iter_mut().find(|i| i.id == invite) {
            let old = std::mem::replace(&mut i.token, token);
            i.old_tokens.push(old);
        }
    }

    /// `PUT /v1/accounts/{id}/members/{user}`: an unknown role is bad
    /// input; then the policies; then the member must exist, and the last
    /// admin keeps the role.
    fn set_role(
        &mut self,
        actor: &str,
        account: &'static str,
        user: &'static str,
        role: &str,
    ) -> u16 {
        let Some(role) = roles().iter().copied().find(|r| *r == role) else {
            return 400;
        };
        if !self.may(actor, "changeMemberRole", account) {
            return 403;
        }
        let Some(current) = self.role(account, user) else {
            return 404;
        };
        if current == "admin" && role != "admin" && self.admins(account) <= 1 {
            return 409;
        }
        self.roles.insert((account, user), role);
        200
    }

    /// `DELETE /v1/accounts/{id}/members/{user}`.
    fn remove_member(&mut self, actor: &str, account: &'static str, user: &'static str) -> u16 {
        if !self.may(actor, "removeMember", account) {
            return 403;
        }
        let Some(current) = self.role(account, user) else {
            return 404;
        };
        if current == "admin" && self.admins(account) <= 1 {
            return 409;
        }
        self.roles.remove(&(account, user));
        204
    }

    /// `DELETE /v1/keys/{id}`: revoking a revoked key keeps it revoked.
    /// The run's own admin key is never revoked, so the rule that keeps the
    /// last live admin key never applies here (`auth.rs` and the store
    /// contract test it).
    fn revoke_key(&mut self, id: &str) -> u16 {
        match self.keys.iter_mut().find(|k| k.id == id) {
            Some(k) => {
                k.revoked = true;
                200
            }
            None => 404,
        }
    }

    /// What `GET /v1/accounts/{id}/invites` lists: the pending invites,
    /// `dead` when their creator may no longer grant them.
    fn listed_invites(&self, account: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .invites
            .iter()
            .filter(|i| i.account == account && i.state == InviteState::Pending)
            .map(|i| {
                let live = self.may(i.created_by, "inviteMember", i.account);
                let status = if live { "pending" } else { "dead" };
                (i.id.clone(), status.to_owned())
            })
            .collect();
        out.sort();
        out
    }

    /// The directory, for a failure message.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (id, u) in &self.users {
            out += &format!(
                "  user {id} <{}>{}\n",
                u.email,
                if u.verified { " verified" } else { "" }
            );
        }
        for (id, a) in &self.accounts {
            out += &format!(
                "  account {id} ({:?}, owner {}): {:?}\n",
                a.kind,
                a.owner,
                self.members(id)
            );
        }
        for i in self
            .invites
            .iter()
            .filter(|i| i.state == InviteState::Pending)
        {
            out += &format!(
                "  pending invite {} to {} as {} by {}{}\n",
                i.id,
                i.account,
                i.role,
                i.created_by,
                i.email
                    .as_ref()
                    .map(|e| format!(" for <{e}>"))
                    .unwrap_or_default()
            );
        }
        out += &format!("  role policy files removed: {:?}\n", self.disabled);
        out
    }
}

#[test]
fn the_model_answers_the_seed_table_on_a_team_account() {
    let mut model = Model::default();
    assert_eq!(model.sign_up("ann", "ann@example.com", true), 201);
    assert_eq!(model.convert("ann", "ann"), 200);
    // One member per role of the table (each named after the role it
    // holds; the admin is the owner), and a non-member.
    for role in roles() {
        if role == "admin" {
            continue;
        }
        assert_eq!(model.sign_up(role, &canonical_email(role), true), 201);
        model.roles.insert(("ann", role), role);
    }
    assert_eq!(model.sign_up("eve", "eve@example.com", true), 201);
    for (action, _) in team_table() {
        let target = if POD_ACTIONS.contains(action) {
            Target::Pod("ann")
        } else {
            Target::Account("ann")
        };
        for column in &TEAM.columns {
            let user = match column.as_str() {
                "admin" => "ann",
                "non-member" => "eve",
                role => role,
            };
            assert_eq!(
                model.allowed(user, action, target),
                TEAM.allows(action, column),
                "{column} ({user}) {action}"
            );
        }
    }
}

/// An answer of cedard's HTTP API.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    /// The `Cedard-Store-Revision` of a write.
    revision: Option<u64>,
}

/// The management operations a step chooses among, with their weights.
#[derive(Debug, Clone, Copy)]
enum Op {
    SignUp,
    Verify,
    Convert,
    Invite,
    Accept,
    Revoke,
    Relink,
    SetRole,
    Remove,
    CreateKey,
    RevokeKey,
    Reload,
    BadInput,
}

const WEIGHTS: [(Op, u32); 13] = [
    (Op::SignUp, 5),
    (Op::Verify, 6),
    (Op::Convert, 4),
    (Op::Invite, 12),
    (Op::Accept, 18),
    (Op::Revoke, 5),
    (Op::Relink, 4),
    (Op::SetRole, 14),
    (Op::Remove, 8),
    (Op::CreateKey, 2),
    (Op::RevokeKey, 2),
    (Op::Reload, 1),
    (Op::BadInput, 3),
];

/// One run: the daemon(s), the model, the random source, what was done.
struct Run {
    seed: u64,
    backend: &'static str,
    step: usize,
    rng: StdRng,
    model: Model,
    history: VecDeque<String>,
    /// How many operations of each kind answered each status.
    tally: BTreeMap<String, usize>,
    client: reqwest::Client,
    /// The replica that takes the writes (and the management API's own
    /// checks, which have no consistency to ask for).
    writer: String,
    /// The replica that answers the decisions.
    reader: String,
    /// Every replica, to wait for a reload on each.
    replicas: Vec<String>,
    /// The policy folder every replica watches.
    policies: PathBuf,
    /// The run's own key: decide, manage and admin; never revoked.
    master: String,
    /// The newest store revision a write answered.
    revision: u64,
    /// Whether decisions carry `consistency: {at_least: revision}`.
    at_least: bool,
    /// The console session cookie and its CSRF token, once signed in.
    console: Option<(String, String)>,
    questions: Vec<Question>,
    /// The batch's `requests`, the same every step.
    requests: Value,
}

impl Run {
    /// Creates the run's key over loopback (no key exists yet) and checks
    /// that from then on a request without it is refused.
    async fn start(
        backend: &'static str,
        default_steps: usize,
        writer: String,
        reader: String,
        replicas: Vec<String>,
        policies: PathBuf,
        at_least: bool,
    ) -> (Self, usize) {
        let seed = env_number("CEDARD_MODEL_SEED").unwrap_or(DEFAULT_SEED);
        let steps = env_number("CEDARD_MODEL_STEPS").map_or(default_steps, |n| n as usize);
        // No redirects: the console's sign-in answers a 303 whose cookie
        // the run keeps.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let created = client
            .post(format!("{writer}/v1/keys"))
            .json(&json!({"name": "model-run", "scopes": SCOPES}))
            .send()
            .await
            .expect("request");
        assert_eq!(created.status().as_u16(), 201);
        let created: Value = created.json().await.expect("JSON");
        let master = created["secret"].as_str().expect("secret").to_owned();
        let bare = client
            .get(format!("{writer}/v1/policies"))
            .send()
            .await
            .expect("request");
        assert_eq!(bare.status().as_u16(), 401, "a key exists: one is needed");
        let questions = universe();
        let requests = questions
            .iter()
            .map(|q| {
                json!({
                    "principal": {"type": "User", "id": q.user},
                    "action": {"type": "Action", "id": q.action},
                    "resource": q.target.reference(),
                })
            })
            .collect();
        let run = Self {
            seed,
            backend,
            step: 0,
            rng: StdRng::seed_from_u64(seed),
            model: Model::default(),
            history: VecDeque::new(),
            tally: BTreeMap::new(),
            client,
            writer,
            reader,
            replicas,
            policies,
            master,
            revision: 0,
            at_least,
            console: None,
            questions,
            requests,
        };
        (run, steps)
    }

    /// Runs `steps` steps; on PostgreSQL (`stale_checks`) every
    /// [`STALE_CHECK_EVERY`] steps also asks without `at_least` once the
    /// staleness bound has passed.
    async fn drive(&mut self, steps: usize, stale_checks: bool) {
        let started = Instant::now();
        for step in 0..steps {
            self.step = step;
            self.operate().await;
            self.check_matrix(self.consistency(), "batch").await;
            self.check_door(step).await;
            if stale_checks && step % STALE_CHECK_EVERY == STALE_CHECK_EVERY - 1 {
                // The wait is the point: the documented bound, not a
                // condition that could be awaited.
                tokio::time::sleep(STALENESS_BOUND).await;
                self.check_matrix(None, "batch without at_least after the staleness bound")
                    .await;
                let reader = self.reader.clone();
                self.check_management(&reader).await;
            }
        }
        eprintln!(
            "model run on {}: seed {}, {steps} steps in {:.1} s; operations by expected status: {:?}",
            self.backend,
            self.seed,
            started.elapsed().as_secs_f64(),
            self.tally
        );
    }

    fn fail(&self, what: String) -> ! {
        let history: Vec<String> = self.history.iter().map(|h| format!("  {h}")).collect();
        panic!(
            "the model run on {} disagrees with cedard at step {} (seed {}; rerun with CEDARD_MODEL_SEED={} CEDARD_MODEL_STEPS={})\n{what}\nlast operations:\n{}\nthe model's directory:\n{}",
            self.backend,
            self.step,
            self.seed,
            self.seed,
            self.step + 1,
            history.join("\n"),
            self.model.describe()
        );
    }

    /// The consistency decisions ask for: the last write's revision on
    /// PostgreSQL, the default (memos allowed) on redb.
    fn consistency(&self) -> Option<Value> {
        self.at_least.then(|| json!({"at_least": self.revision}))
    }

    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        actor: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        self.call_with(Some(&self.master), base, method, path, actor, body)
            .await
    }

    async fn call_with(
        &self,
        key: Option<&str>,
        base: &str,
        method: Method,
        path: &str,
        actor: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let api = Api {
            client: self.client.clone(),
            base: base.to_owned(),
            key: key.map(str::to_owned),
        };
        let resp = api
            .request(method, path, actor, body)
            .send()
            .await
            .expect("request");
        let answer = Answer::read(resp).await;
        Reply {
            status: answer.status,
            body: answer.body,
            revision: answer.store_revision,
        }
    }

    /// A decision request on the reader; anything but a 200 fails the run.
    async fn decide(&self, path: &str, body: &Value) -> Value {
        let reply = self
            .call(&self.reader, Method::POST, path, None, Some(body))
            .await;
        if reply.status != 200 {
            self.fail(format!(
                "`{path}` answered {}: {}\nasked: {body}",
                reply.status, reply.body
            ));
        }
        reply.body
    }

    /// A management write on the writer, checked against the model's
    /// expected status.
    async fn write(
        &mut self,
        kind: &'static str,
        detail: String,
        expected: u16,
        (method, path): (Method, String),
        actor: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let reply = self
            .call(&self.writer, method, &path, actor, body.as_ref())
            .await;
        self.record(kind, detail, expected, &reply);
        reply
    }

    /// Keeps `line` among the last operations, for a failure message.
    fn note(&mut self, line: String) {
        self.history
            .push_back(format!("step {}: {line}", self.step));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn record(&mut self, kind: &'static str, detail: String, expected: u16, reply: &Reply) {
        self.note(format!("{kind} {detail} -> {}", reply.status));
        *self.tally.entry(format!("{kind} {expected}")).or_default() += 1;
        if reply.status != expected {
            self.fail(format!(
                "`{kind} {detail}` answered {} where the model expects {expected}: {}",
                reply.status, reply.body
            ));
        }
        if let Some(r) = reply.revision {
            self.revision = self.revision.max(r);
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn any_user(&mut self) -> &'static str {
        USERS[self.rng.random_range(0..USERS.len())]
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        from.choose(&mut self.rng).copied()
    }

    /// One of `candidates` with probability `p` (when there is one); any
    /// user id otherwise, so that the run also asks about the wrong ones.
    fn mostly(&mut self, candidates: &[&'static str], p: f64) -> &'static str {
        match self.pick(candidates) {
            Some(c) if self.chance(p) => c,
            _ => self.any_user(),
        }
    }

    /// A signed-up user, mostly; anyone otherwise.
    fn signed_user(&mut self) -> &'static str {
        let signed: Vec<&'static str> = self.model.users.keys().copied().collect();
        self.mostly(&signed, 0.85)
    }

    /// A team account, mostly; any account id otherwise.
    fn team(&mut self) -> &'static str {
        let teams: Vec<&'static str> = USERS
            .into_iter()
            .filter(|a| self.model.is_team(a))
            .collect();
        self.mostly(&teams, 0.85)
    }

    /// An admin of `account`, mostly; anyone otherwise.
    fn admin_of(&mut self, account: &str) -> &'static str {
        let admins: Vec<&'static str> = USERS
            .into_iter()
            .filter(|u| self.model.role(account, u) == Some("admin"))
            .collect();
        self.mostly(&admins, 0.8)
    }

    /// A member of `account`, mostly; anyone otherwise.
    fn member_of(&mut self, account: &str) -> &'static str {
        let members: Vec<&'static str> = USERS
            .into_iter()
            .filter(|u| self.model.role(account, u).is_some())
            .collect();
        self.mostly(&members, 0.8)
    }

    /// An invite id: a pending one of `account`, mostly; another invite,
    /// or one that does not exist, otherwise.
    fn invite_of(&mut self, account: &str) -> String {
        let pending: Vec<String> = self
            .model
            .invites
            .iter()
            .filter(|i| i.account == account && i.state == InviteState::Pending)
            .map(|i| i.id.clone())
            .collect();
        let all: Vec<String> = self.model.invites.iter().map(|i| i.id.clone()).collect();
        let roll = self.rng.random_range(0..100);
        let chosen = if roll < 65 {
            pending.choose(&mut self.rng).cloned()
        } else if roll < 90 {
            all.choose(&mut self.rng).cloned()
        } else {
            None
        };
        chosen.unwrap_or_else(|| "inv_0000000000000000".to_owned())
    }

    /// One management operation, chosen by weight.
    async fn operate(&mut self) {
        let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        let mut op = Op::SignUp;
        for (candidate, weight) in WEIGHTS {
            if roll < weight {
                op = candidate;
                break;
            }
            roll -= weight;
        }
        match op {
            Op::SignUp => self.sign_up().await,
            Op::Verify => self.verify().await,
            Op::Convert => self.convert().await,
            Op::Invite => self.invite().await,
            Op::Accept => self.accept().await,
            Op::Revoke => self.revoke().await,
            Op::Relink => self.relink().await,
            Op::SetRole => self.set_role().await,
            Op::Remove => self.remove().await,
            Op::CreateKey => self.create_key().await,
            Op::RevokeKey => self.revoke_key().await,
            Op::Reload => self.reload().await,
            Op::BadInput => self.bad_input().await,
        }
    }

    async fn sign_up(&mut self) {
        let id = self.any_user();
        // Mostly the user's own address; sometimes written untidily (stored
        // trimmed and lowercase), another's (taken), or a second one.
        let email = match self.rng.random_range(0..10) {
            0 => canonical_email(self.any_user()),
            1 => format!("  {}@Example.COM ", id.to_uppercase()),
            2 => format!("{id}.second@example.com"),
            _ => canonical_email(id),
        };
        let verified = self.chance(0.4);
        let expected = self.model.sign_up(id, &email, verified);
        let body = json!({"id": id, "email": email, "email_verified": verified});
        self.write(
            "signUp",
            format!("{id} <{email}> verified={verified}"),
            expected,
            (Method::POST, "/v1/users".into()),
            None,
            Some(body),
        )
        .await;
    }

    async fn verify(&mut self) {
        let id = self.any_user();
        let verified = self.chance(0.7);
        let expected = self.model.set_email_verified(id, verified);
        self.write(
            "setEmailVerified",
            format!("{id} {verified}"),
            expected,
            (Method::PUT, format!("/v1/users/{id}/email_verified")),
            None,
            Some(json!({"email_verified": verified})),
        )
        .await;
    }

    async fn convert(&mut self) {
        let actor = self.signed_user();
        let account = if self.chance(0.8) {
            actor
        } else {
            self.any_user()
        };
        let expected = self.model.convert(actor, account);
        self.write(
            "convert",
            format!("{account} by {actor}"),
            expected,
            (Method::POST, format!("/v1/accounts/{account}/convert")),
            Some(actor),
            Some(json!({"name": format!("Team {account}")})),
        )
        .await;
    }

    async fn invite(&mut self) {
        let account = self.team();
        let actor = self.admin_of(account);
        let role = self.pick(&roles()).expect("roles");
        let email = match self.rng.random_range(0..10) {
            0..=1 => Some(canonical_email(self.any_user())),
            2 => Some(format!(" {}@EXAMPLE.com", self.any_user())),
            3 => Some("stranger@example.org".to_owned()),
            _ => None,
        };
        let expected = self.model.invite(actor, account);
        let mut body = json!({"role": role});
        if let Some(e) = &email {
            body["email"] = json!(e);
        }
        let reply = self
            .write(
                "invite",
                format!("to {account} as {role} by {actor}, email {email:?}"),
                expected,
                (Method::POST, format!("/v1/accounts/{account}/invites")),
                Some(actor),
                Some(body),
            )
            .await;
        if reply.status == 201 {
            let field = |name: &str| reply.body[name].as_str().expect(name).to_owned();
            self.model.invited(InviteRecord {
                id: field("id"),
                token: field("token"),
                old_tokens: Vec::new(),
                account,
                role,
                email: email.as_deref().map(normalize),
                created_by: actor,
                state: InviteState::Pending,
            });
        }
    }

    async fn accept(&mut self) {
        // The live token of a pending invite whose creator may still grant
        // it, mostly (pending invites of demoted creators pile up); of any
        // pending invite, often; a dead one (used, revoked, replaced by a
        // re-link) or one never issued otherwise.
        let live: Vec<usize> = (0..self.model.invites.len())
            .filter(|&i| self.model.invites[i].state == InviteState::Pending)
            .collect();
        let honoured: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| {
                let invite = &self.model.invites[i];
                self.model
                    .may(invite.created_by, "inviteMember", invite.account)
            })
            .collect();
        let dead: Vec<String> = self
            .model
            .invites
            .iter()
            .flat_map(|i| {
                let own = (i.state != InviteState::Pending).then(|| i.token.clone());
                own.into_iter().chain(i.old_tokens.iter().cloned())
            })
            .collect();
        let roll = self.rng.random_range(0..100);
        let chosen = match self.pick(&honoured) {
            Some(at) if roll < 55 => Some(at),
            _ if roll < 75 => self.pick(&live),
            _ => None,
        };
        let (token, invite) = match chosen {
            Some(at) => (self.model.invites[at].token.clone(), Some(at)),
            None => match dead.choose(&mut self.rng) {
                Some(t) if roll < 92 => (t.clone(), None),
                _ => ("not-a-token-cedard-issued".to_owned(), None),
            },
        };
        // The user an email-bound invite names, often; a signed-up user who
        // is not yet a member, mostly; anyone otherwise.
        let bound_user = invite
            .and_then(|at| self.model.invites[at].email.clone())
            .and_then(|email| {
                self.model
                    .users
                    .iter()
                    .find(|(_, u)| u.email == email)
                    .map(|(id, _)| *id)
            });
        let outsiders: Vec<&'static str> = match invite {
            Some(at) => {
                let account = self.model.invites[at].account;
                self.model
                    .users
                    .keys()
                    .copied()
                    .filter(|u| self.model.role(account, u).is_none())
                    .collect()
            }
            None => Vec::new(),
        };
        let actor = match (bound_user, self.pick(&outsiders)) {
            (Some(u), _) if self.chance(0.7) => u,
            (_, Some(u)) if self.chance(0.8) => u,
            _ => self.signed_user(),
        };
        let expected = self.model.accept(actor, &token);
        let which = match invite {
            Some(at) => self.model.invites[at].id.clone(),
            None => "a dead or unknown token".to_owned(),
        };
        self.write(
            "accept",
            format!("{which} by {actor}"),
            expected,
            (Method::POST, "/v1/invites/accept".into()),
            Some(actor),
            Some(json!({"token": token})),
        )
        .await;
    }

    async fn revoke(&mut self) {
        let account = self.team();
        let actor = self.admin_of(account);
        let invite = self.invite_of(account);
        let expected = self.model.revoke(actor, account, &invite);
        self.write(
            "revokeInvite",
            format!("{invite} of {account} by {actor}"),
            expected,
            (
                Method::DELETE,
                format!("/v1/accounts/{account}/invites/{invite}"),
            ),
            Some(actor),
            None,
        )
        .await;
    }

    async fn relink(&mut self) {
        let account = self.team();
        let actor = self.admin_of(account);
        let invite = self.invite_of(account);
        let expected = self.model.relink(actor, account, &invite);
        let reply = self
            .write(
                "relinkInvite",
                format!("{invite} of {account} by {actor}"),
                expected,
                (
                    Method::POST,
                    format!("/v1/accounts/{account}/invites/{invite}/link"),
                ),
                Some(actor),
                None,
            )
            .await;
        if reply.status == 200 {
            let token = reply.body["token"].as_str().expect("token").to_owned();
            self.model.relinked(&invite, token);
        }
    }

    async fn set_role(&mut self) {
        let account = self.team();
        let actor = self.admin_of(account);
        let user = self.member_of(account);
        let role = if self.chance(0.95) {
            self.pick(&roles()).expect("roles")
        } else {
            "owner"
        };
        let expected = self.model.set_role(actor, account, user, role);
        self.write(
            "changeRole",
            format!("{user} of {account} to {role} by {actor}"),
            expected,
            (
                Method::PUT,
                format!("/v1/accounts/{account}/members/{user}"),
            ),
            Some(actor),
            Some(json!({"role": role})),
        )
        .await;
    }

    async fn remove(&mut self) {
        let account = self.team();
        let actor = self.admin_of(account);
        let user = self.member_of(account);
        let expected = self.model.remove_member(actor, account, user);
        self.write(
            "removeMember",
            format!("{user} from {account} by {actor}"),
            expected,
            (
                Method::DELETE,
                format!("/v1/accounts/{account}/members/{user}"),
            ),
            Some(actor),
            None,
        )
        .await;
    }

    async fn create_key(&mut self) {
        let mut scopes: Vec<&'static str> = SCOPES
            .into_iter()
            .filter(|_| self.rng.random_bool(0.5))
            .collect();
        if scopes.is_empty() {
            scopes.push(self.pick(&SCOPES).expect("scopes"));
        }
        let name = format!("model-key-{}", self.model.keys.len());
        let reply = self
            .write(
                "createKey",
                format!("{name} {scopes:?}"),
                201,
                (Method::POST, "/v1/keys".into()),
                None,
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        let field = |name: &str| reply.body[name].as_str().expect(name).to_owned();
        self.model.keys.push(KeyRecord {
            id: field("id"),
            secret: field("secret"),
            scopes,
            revoked: false,
        });
        self.check_keys(self.model.keys.len() - 1).await;
    }

    async fn revoke_key(&mut self) {
        let live: Vec<usize> = (0..self.model.keys.len())
            .filter(|&i| !self.model.keys[i].revoked)
            .collect();
        let all: Vec<usize> = (0..self.model.keys.len()).collect();
        let roll = self.rng.random_range(0..100);
        let chosen = match self.pick(&live) {
            Some(k) if roll < 70 => Some(k),
            _ if roll < 85 => self.pick(&all),
            _ => None,
        };
        let id = match chosen {
            Some(k) => self.model.keys[k].id.clone(),
            None => "0123456789abcdef".to_owned(),
        };
        let expected = self.model.revoke_key(&id);
        self.write(
            "revokeKey",
            id.clone(),
            expected,
            (Method::DELETE, format!("/v1/keys/{id}")),
            None,
            None,
        )
        .await;
        if let Some(k) = chosen {
            self.check_keys(k).await;
        }
    }

    /// A decision asked with the key `touched` and up to two other extra
    /// keys, on the writer (which changed the keys; another replica
    /// re-reads them every second): a revoked key is a 401, a live one
    /// without `decide` a 403, a live one with it answers.
    async fn check_keys(&mut self, touched: usize) {
        let mut which = vec![touched];
        for _ in 0..2 {
            let k = self.rng.random_range(0..self.model.keys.len());
            which.push(k);
        }
        let question = json!({
            "principal": {"type": "User", "id": "ann"},
            "action": {"type": "Action", "id": "useAccount"},
            "resource": {"type": "Account", "id": "ann"},
        });
        for k in which {
            let key = &self.model.keys[k];
            let expected = if key.revoked {
                401
            } else if key.scopes.contains(&"decide") {
                200
            } else {
                403
            };
            let reply = self
                .call_with(
                    Some(&key.secret),
                    &self.writer,
                    Method::POST,
                    "/v1/is_authorized",
                    None,
                    Some(&question),
                )
                .await;
            if reply.status != expected {
                self.fail(format!(
                    "a decision with key {} ({:?}, revoked: {}) answered {} where {expected} was due: {}",
                    key.id, key.scopes, key.revoked, reply.status, reply.body
                ));
            }
        }
    }

    /// Removes or restores one role's policy file and waits until every
    /// replica serves the new set.
    async fn reload(&mut self) {
        let file = self.pick(&TOGGLED).expect("files");
        let path = self.policies.join(format!("{file}.cedar"));
        let restore = self.model.disabled.contains(file);
        if restore {
            let original = repo_root().join("policies").join(format!("{file}.cedar"));
            std::fs::copy(original, &path).expect("restore a policy file");
            self.model.disabled.remove(file);
        } else {
            std::fs::remove_file(&path).expect("remove a policy file");
            self.model.disabled.insert(file);
        }
        let verb = if restore { "restored" } else { "removed" };
        self.note(format!("reload with {file}.cedar {verb}"));
        *self.tally.entry("reload".into()).or_default() += 1;
        let want: Vec<&str> = TOGGLED
            .into_iter()
            .filter(|f| !self.model.disabled.contains(f))
            .collect();
        for base in self.replicas.clone() {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let listing = self
                    .call(&base, Method::GET, "/v1/policies", None, None)
                    .await;
                let ids: Vec<&str> = listing.body["policies"]
                    .as_array()
                    .map(|ps| ps.iter().filter_map(|p| p["id"].as_str()).collect())
                    .unwrap_or_default();
                let served: Vec<&str> = TOGGLED.into_iter().filter(|f| ids.contains(f)).collect();
                if served == want {
                    break;
                }
                if Instant::now() > deadline {
                    self.fail(format!(
                        "{base} did not serve the policy set with {file}.cedar {verb} within {DEADLINE:?}: {}",
                        listing.body
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Input the management API refuses before any decision: a 400 whoever
    /// asks.
    async fn bad_input(&mut self) {
        let actor = self.any_user();
        let account = self.any_user();
        let invites = (Method::POST, format!("/v1/accounts/{account}/invites"));
        let (what, request, body) = match self.rng.random_range(0..6) {
            0 => (
                "an id with a slash",
                (Method::POST, "/v1/users".to_owned()),
                json!({"id": "no/such", "email": "x@example.com"}),
            ),
            1 => (
                "an email without @",
                (Method::POST, "/v1/users".to_owned()),
                json!({"id": "zed", "email": "not-an-email"}),
            ),
            2 => ("an unknown role", invites, json!({"role": "owner"})),
            3 => (
                "an expiry of 0 hours",
                invites,
                json!({"role": "basic", "expires_in_hours": 0}),
            ),
            4 => (
                "an email without @",
                invites,
                json!({"role": "basic", "email": "nope"}),
            ),
            _ => (
                "a blank name",
                (Method::POST, format!("/v1/accounts/{account}/convert")),
                json!({"name": "   "}),
            ),
        };
        let detail = format!("{} {} with {what} by {actor}", request.0, request.1);
        self.write("badInput", detail, 400, request, Some(actor), Some(body))
            .await;
    }

    /// The whole universe through the batch, at `consistency` and at
    /// `"full"`, against the model.
    async fn check_matrix(&self, consistency: Option<Value>, label: &str) {
        let ask = |c: Option<Value>| {
            let mut body = json!({"requests": self.requests, "entities": pods()});
            if let Some(c) = c {
                body["consistency"] = c;
            }
            body
        };
        let asked = self
            .decide("/v1/is_authorized/batch", &ask(consistency))
            .await;
        let full = self
            .decide("/v1/is_authorized/batch", &ask(Some(json!("full"))))
            .await;
        let answers = |body: &Value| -> Vec<bool> {
            body["results"]
                .as_array()
                .map(|rs| rs.iter().map(|r| r["decision"] == "allow").collect())
                .unwrap_or_default()
        };
        let (asked, full) = (answers(&asked), answers(&full));
        if asked.len() != self.questions.len() || full.len() != self.questions.len() {
            self.fail(format!("the {label} answered a wrong number of results"));
        }
        let wrong: Vec<String> = self
            .questions
            .iter()
            .zip(asked.iter().zip(&full))
            .filter_map(|(q, (a, f))| {
                let want = self.model.allowed(q.user, q.action, q.target);
                (*a != want || *f != want).then(|| {
                    format!(
                        "{q} model: {}, cedard: {}, cedard at \"full\" consistency: {}",
                        word(want),
                        word(*a),
                        word(*f)
                    )
                })
            })
            .collect();
        if !wrong.is_empty() {
            self.fail(format!(
                "{} of the {} answers of the {label} disagree:\n  {}",
                wrong.len(),
                self.questions.len(),
                wrong
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
    }

    fn random_question(&mut self) -> Question {
        let at = self.rng.random_range(0..self.questions.len());
        self.questions[at]
    }

    /// One more door per step, in turn, over a sample.
    async fn check_door(&mut self, step: usize) {
        match step % 8 {
            0 => self.check_single().await,
            1 => self.check_evaluation().await,
            2 => self.check_evaluations().await,
            3 => self.check_subject_search().await,
            4 => self.check_resource_search().await,
            5 => self.check_action_search().await,
            6 => {
                let writer = self.writer.clone();
                self.check_management(&writer).await;
            }
            _ => self.check_playground().await,
        }
    }

    fn compare(&self, door: &str, q: &Question, got: bool) {
        let want = self.model.allowed(q.user, q.action, q.target);
        if got != want {
            self.fail(format!(
                "{door}: {q} model: {}, cedard: {}",
                word(want),
                word(got)
            ));
        }
    }

    /// `/v1/is_authorized`, one question at a time; a grant action carries
    /// the roles in its context, which changes no answer on the seed.
    async fn check_single(&mut self) {
        for _ in 0..6 {
            let q = self.random_question();
            let role = self.pick(&roles()).expect("roles");
            let current = self.pick(&roles()).expect("roles");
            let mut body = json!({
                "principal": {"type": "User", "id": q.user},
                "action": {"type": "Action", "id": q.action},
                "resource": q.target.reference(),
                "entities": [pod_entity(q.target.account())],
            });
            match q.action {
                "inviteMember" => body["context"] = json!({"role": role}),
                "changeMemberRole" => {
                    body["context"] = json!({"role": role, "current_role": current})
                }
                _ => {}
            }
            if let Some(c) = self.consistency() {
                body["consistency"] = c;
            }
            let answer = self.decide("/v1/is_authorized", &body).await;
            self.compare("/v1/is_authorized", &q, answer["decision"] == "allow");
        }
    }

    fn options(&self) -> Value {
        match self.consistency() {
            Some(c) => json!({"consistency": c}),
            None => json!({}),
        }
    }

    async fn check_evaluation(&mut self) {
        for _ in 0..6 {
            let q = self.random_question();
            let body = json!({
                "subject": {"type": "User", "id": q.user},
                "action": {"name": q.action},
                "resource": q.target.authzen(),
                "options": self.options(),
            });
            let answer = self.decide("/access/v1/evaluation", &body).await;
            self.compare("/access/v1/evaluation", &q, answer["decision"] == true);
        }
    }

    /// One user's whole row in one boxcarred call.
    async fn check_evaluations(&mut self) {
        let user = self.any_user();
        let row: Vec<Question> = self
            .questions
            .iter()
            .filter(|q| q.user == user)
            .copied()
            .collect();
        let items: Vec<Value> = row
            .iter()
            .map(|q| json!({"action": {"name": q.action}, "resource": q.target.authzen()}))
            .collect();
        let body = json!({
            "subject": {"type": "User", "id": user},
            "evaluations": items,
            "options": self.options(),
        });
        let answer = self.decide("/access/v1/evaluations", &body).await;
        let decisions = answer["evaluations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if decisions.len() != row.len() {
            self.fail(format!(
                "/access/v1/evaluations answered {} of {} items: {answer}",
                decisions.len(),
                row.len()
            ));
        }
        for (q, d) in row.iter().zip(&decisions) {
            self.compare("/access/v1/evaluations", q, d["decision"] == true);
        }
    }

    /// The found set of a search, sorted, against the model's.
    fn compare_found(&self, door: &str, asked: &Value, answer: &Value, field: &str, want: &[&str]) {
        let mut got: Vec<String> = answer["results"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r[field].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        if got != want || answer["page"]["next_token"] != "" {
            self.fail(format!(
                "{door} found {got:?} where the model finds {want:?}\nasked: {asked}\nanswer: {answer}"
            ));
        }
    }

    /// Who may do this action on this target? Candidates are the stored
    /// users.
    async fn check_subject_search(&mut self) {
        let q = self.random_question();
        let body = json!({
            "subject": {"type": "User"},
            "action": {"name": q.action},
            "resource": q.target.authzen(),
            "options": self.options(),
        });
        let answer = self.decide("/access/v1/search/subject", &body).await;
        let want: Vec<&str> = USERS
            .into_iter()
            .filter(|u| self.model.allowed(u, q.action, q.target))
            .collect();
        self.compare_found("/access/v1/search/subject", &body, &answer, "id", &want);
    }

    /// On which accounts may this user do this action? Candidates are the
    /// stored accounts (pods are not stored: nothing to search).
    async fn check_resource_search(&mut self) {
        let user = self.any_user();
        let action = self.pick(&ACCOUNT_ACTIONS).expect("actions");
        let body = json!({
            "subject": {"type": "User", "id": user},
            "action": {"name": action},
            "resource": {"type": "Account"},
            "options": self.options(),
        });
        let answer = self.decide("/access/v1/search/resource", &body).await;
        let want: Vec<&str> = USERS
            .into_iter()
            .filter(|a| self.model.allowed(user, action, Target::Account(a)))
            .collect();
        self.compare_found("/access/v1/search/resource", &body, &answer, "id", &want);
    }

    /// What may this user do on this target?
    async fn check_action_search(&mut self) {
        let q = self.random_question();
        let body = json!({
            "subject": {"type": "User", "id": q.user},
            "resource": q.target.authzen(),
            "options": self.options(),
        });
        let answer = self.decide("/access/v1/search/action", &body).await;
        let want: Vec<&str> = q
            .target
            .actions()
            .iter()
            .copied()
            .filter(|a| self.model.allowed(q.user, a, q.target))
            .collect();
        self.compare_found("/access/v1/search/action", &body, &answer, "name", &want);
    }

    /// The management API's own checks for one actor on every account,
    /// with what they list: `GET /v1/accounts/{id}` (useAccount), its
    /// members (viewMembers), its invites (inviteMember), and the actor's
    /// own user. These take no consistency, so they are asked of `base`
    /// (the writer, which has its own writes at once; or, after the
    /// staleness bound, the reader).
    async fn check_management(&mut self, base: &str) {
        let actor = self.any_user();
        for account in USERS {
            let checks = [
                ("useAccount", format!("/v1/accounts/{account}")),
                ("viewMembers", format!("/v1/accounts/{account}/members")),
                ("inviteMember", format!("/v1/accounts/{account}/invites")),
            ];
            for (action, path) in checks {
                let allowed = self.model.may(actor, action, account);
                let reply = self.call(base, Method::GET, &path, Some(actor), None).await;
                let expected = if allowed { 200 } else { 403 };
                if reply.status != expected {
                    let q = Question {
                        user: actor,
                        action,
                        target: Target::Account(account),
                    };
                    self.fail(format!(
                        "GET {path} as {actor} on {base} answered {} where the model expects {expected}: {q} model: {}\nanswer: {}",
                        reply.status,
                        word(allowed),
                        reply.body
                    ));
                }
                if reply.status != 200 {
                    continue;
                }
                let listed = |fields: [&str; 2]| -> Vec<(String, String)> {
                    let mut out: Vec<(String, String)> = reply
                        .body
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|m| {
                                    let text = |f: &str| m[f].as_str().unwrap_or("?").to_owned();
                                    (text(fields[0]), text(fields[1]))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.sort();
                    out
                };
                let (got, want) = match action {
                    "viewMembers" => (listed(["user", "role"]), self.model.members(account)),
                    "inviteMember" => {
                        (listed(["id", "status"]), self.model.listed_invites(account))
                    }
                    _ => continue,
                };
                if got != want {
                    self.fail(format!(
                        "GET {path} as {actor} on {base} listed {got:?} where the model has {want:?}"
                    ));
                }
            }
        }
        let reply = self
            .call(
                base,
                Method::GET,
                &format!("/v1/users/{actor}"),
                Some(actor),
                None,
            )
            .await;
        let expected = if self.model.users.contains_key(actor) {
            200
        } else {
            403
        };
        if reply.status != expected {
            self.fail(format!(
                "GET /v1/users/{actor} as {actor} answered {} where the model expects {expected}: {}",
                reply.status, reply.body
            ));
        }
        if expected == 200 {
            let mut got: Vec<(String, String)> = reply.body["memberships"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            let text = |f: &str| m[f].as_str().unwrap_or("?").to_owned();
                            (text("account"), text("role"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            let want: Vec<(String, String)> = self
                .model
                .roles
                .iter()
                .filter(|((_, u), _)| *u == actor)
                .map(|((a, _), r)| ((*a).to_owned(), (*r).to_owned()))
                .collect();
            if got != want {
                self.fail(format!(
                    "GET /v1/users/{actor} listed the memberships {got:?} where the model has {want:?}"
                ));
            }
        }
    }

    /// The console's playground, a few questions, on the writer (it takes
    /// no consistency either). It is signed in once with the run's key,
    /// which holds `admin`; its form sends the pod as JSON text, decided
    /// through the parsed-JSON path of the inline entities.
    async fn check_playground(&mut self) {
        let writer = self.writer.clone();
        if self.console.is_none() {
            let signed = self
                .client
                .post(format!("{writer}/ui/sign-in"))
                .form(&[("key", self.master.as_str())])
                .send()
                .await
                .expect("sign in");
            assert_eq!(signed.status().as_u16(), 303, "console sign-in");
            let cookie = signed
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .expect("a session cookie")
                .to_owned();
            let page = self
                .client
                .get(format!("{writer}/ui/playground"))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("playground")
                .text()
                .await
                .expect("page");
            let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
            let csrf = page[at..].split('"').next().expect("token").to_owned();
            self.console = Some((cookie, csrf));
        }
        let (cookie, csrf) = self.console.clone().expect("signed in");
        for _ in 0..3 {
            let q = self.random_question();
            let (resource_type, resource_id) = match q.target {
                Target::Account(a) => ("Account", a.to_owned()),
                Target::Pod(a) => ("Pod", pod_id(a)),
            };
            let entities = json!([pod_entity(q.target.account())]).to_string();
            let form = [
                ("csrf", csrf.clone()),
                ("principal_type", "User".to_owned()),
                ("principal_id", q.user.to_owned()),
                ("action", format!("Action::\"{}\"", q.action)),
                ("resource_type", resource_type.to_owned()),
                ("resource_id", resource_id),
                ("entities", entities),
            ];
            let resp = self
                .client
                .post(format!("{writer}/ui/playground"))
                .header("cookie", &cookie)
                .form(&form)
                .send()
                .await
                .expect("playground");
            let status = resp.status().as_u16();
            let page = resp.text().await.unwrap_or_default();
            let allow = page.contains("data-decision=\"allow\"");
            if status != 200 || !(allow || page.contains("data-decision=\"deny\"")) {
                self.fail(format!(
                    "the playground answered {status} without a decision for {q}"
                ));
            }
            self.compare("the console's playground", &q, allow);
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, found `{value}`")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_run_on_redb_agrees_with_the_model_and_with_full_consistency() {
    let app = spawn_app_in(copy_pack(), |c| {
        // Reload steps wait for the files to settle: keep that short.
        c.options.settle_ms = 50;
        c.options.debounce_ms = 10;
    })
    .await;
    let base = format!("http://{}", app.addr);
    let (mut run, steps) = Run::start(
        "redb",
        REDB_STEPS,
        base.clone(),
        base.clone(),
        vec![base],
        app.policies(),
        false,
    )
    .await;
    run.drive(steps, false).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_run_on_postgres_with_two_replicas_agrees_with_the_model() {
    let Some(pg) = Cluster::start("model_run_on_postgres_with_two_replicas_agrees_with_the_model")
    else {
        return;
    };
    // One copy of the pack that both replicas watch, so that a reload step
    // reaches both.
    let pack = copy_pack();
    let policies = pack.path().join("policies");
    let schema = pack.path().join("schema");
    let url = pg.url();
    let poll = STORE_POLL_MS.to_string();
    let args = [
        "--store",
        url.as_str(),
        "--store-poll-ms",
        poll.as_str(),
        "--policies",
        policies.to_str().expect("utf-8"),
        "--schema",
        schema.to_str().expect("utf-8"),
        "--settle-ms",
        "50",
        "--debounce-ms",
        "10",
    ];
    let writer = spawn_binary(pack.path(), &args).await;
    let reader = spawn_binary(pack.path(), &args).await;
    let (w, r) = (
        format!("http://{}", writer.addr),
        format!("http://{}", reader.addr),
    );
    let (mut run, steps) = Run::start(
        "PostgreSQL (writes on one replica, decisions on another)",
        PG_STEPS,
        w.clone(),
        r.clone(),
        vec![w, r],
        policies.clone(),
        true,
    )
    .await;
    run.drive(steps, true).await;
}
