//! The YAML suite: a readable test format for policy admins.
//!
//! A suite describes accounts, their members and roles in a few lines
//! (expanded into Cedar entities by [`super::model`]), then states expected
//! answers either one case at a time (`bob connectPod p1 -> allow`) or as a
//! matrix of roles × actions, which is how a role table is written anyway.
//! By default it tests the repository's own `policies/` and `schema/`,
//! loaded and strictly validated exactly as the daemon loads them, with the
//! daemon's policy ids (`@id` annotations). README.md documents the format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cedar_policy::{EntityUid, Schema};
use serde::Deserialize;
use serde_json::Value;

use super::{describe_decision, judge, CaseResult, FileResult, Status, SuiteError};
use crate::authz;
use crate::model::sketch::{uid, Account, Model, User};
use crate::model::{self, NON_MEMBER};
use crate::policy::{self, PolicySnapshot, Sources};

/// The column of a matrix that stands for the account's owner.
pub const OWNER: &str = "owner";

/// A suite file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    /// The policy folder, relative to the suite file.
    #[serde(default)]
    policies: Option<String>,
    /// The schema file or folder, relative to the suite file.
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    accounts: BTreeMap<String, AccountSpec>,
    #[serde(default)]
    users: Option<serde_yaml_ng::Value>,
    /// Extra entities in Cedar's JSON entity format, for what the account
    /// model does not cover.
    #[serde(default)]
    entities: Vec<Value>,
    #[serde(default)]
    cases: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    matrix: Vec<MatrixSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountSpec {
    kind: String,
    owner: String,
    #[serde(default)]
    name: Option<String>,
    /// User → role.
    #[serde(default)]
    members: BTreeMap<String, String>,
    /// Entity type → ids of resources that belong to the account.
    #[serde(default)]
    resources: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullCase {
    #[serde(default)]
    name: Option<String>,
    principal: String,
    action: String,
    resource: String,
    expect: String,
    #[serde(default)]
    reasons: Option<Vec<String>>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    context: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixSpec {
    #[serde(default)]
    name: Option<String>,
    account: String,
    columns: Vec<String>,
    /// Actions (separated by commas or spaces) → one decision per column.
    rows: serde_yaml_ng::Mapping,
}

/// One case, ready to run.
struct Case {
    name: String,
    principal: String,
    action: String,
    resource: String,
    allow: bool,
    reasons: Option<Vec<String>>,
    errors: Vec<String>,
    context: Option<Value>,
}

/// Runs one YAML suite file, against `policy` when given, else against the
/// policy set the suite names.
pub fn run_file(path: &Path, policy: Option<&Sources>) -> FileResult {
    let file = path.display().to_string();
    match load(path, policy) {
        Ok(suite) => suite.run(file),
        Err(e) => FileResult::broken(file, &e),
    }
}

/// A loaded suite: the policies, the entities, and the cases.
struct Loaded {
    snapshot: std::sync::Arc<PolicySnapshot>,
    entities: cedar_policy::Entities,
    resolver: Resolver,
    cases: Vec<Result<Case, SuiteError>>,
}

fn load(path: &Path, policy: Option<&Sources>) -> Result<Loaded, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let suite: SuiteFile = serde_yaml_ng::from_str(&text)
        .map_err(|e| SuiteError::Format(format!("not a valid suite: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let sources = match policy {
        Some(given) => given.clone(),
        None => sources_for(dir, &suite)?,
    };
    let files = sources.read()?;
    let snapshot = policy::load_files(&files, 1)?;
    let roles = crate::model::RoleCatalog::default().roles(&snapshot)?;
    let model = build_model(&suite, &roles)?;
    let mut entities = match model.entities_json(&roles)? {
        Value::Array(items) => items,
        other => vec![other],
    };
    entities.extend(suite.entities.iter().cloned());
    let entities = authz::parse_entities(&snapshot, &Value::Array(entities))?;
    let resolver = Resolver::new(&model, &suite.entities, &snapshot.schema);
    let mut cases = Vec::new();
    for (i, raw) in suite.cases.iter().enumerate() {
        cases.push(case_from(raw).map_err(|e| SuiteError::Suite(format!("cases[{i}]: {e}"))));
    }
    for (i, spec) in suite.matrix.iter().enumerate() {
        match matrix_cases(spec, &model, &roles, &snapshot.schema) {
            Ok(expanded) => cases.extend(expanded.into_iter().map(Ok)),
            Err(e) => cases.push(Err(SuiteError::Suite(format!("matrix[{i}]: {e}")))),
        }
    }
    Ok(Loaded {
        snapshot,
        entities,
        resolver,
        cases,
    })
}

/// The policy folder and schema a suite tests: its `policies:` and `schema:`
/// keys (relative to the suite file), or else the `policies/` and `schema/`
/// of the nearest folder above the suite that has both.
fn sources_for(dir: &Path, suite: &SuiteFile) -> Result<Sources, SuiteError> {
    let repo = dir
        .ancestors()
        .find(|d| d.join("policies").is_dir() && d.join("schema").exists());
    let pick = |given: &Option<String>, default: &str| -> Result<PathBuf, SuiteError> {
        match (given, repo) {
            (Some(p), _) => Ok(dir.join(p)),
            (None, Some(repo)) => Ok(repo.join(default)),
            (None, None) => Err(SuiteError::Suite(format!(
                "no folder above the suite has `policies/` and `schema/`; set `{default}:` in the suite"
            ))),
        }
    };
    Ok(Sources {
        policies: pick(&suite.policies, "policies")?,
        schema: pick(&suite.schema, "schema")?,
        ..Default::default()
    })
}

fn build_model(suite: &SuiteFile, roles: &[String]) -> Result<Model, SuiteError> {
    let mut users = Vec::new();
    match &suite.users {
        None | Some(serde_yaml_ng::Value::Null) => {}
        Some(serde_yaml_ng::Value::Sequence(list)) => {
            for item in list {
                match item.as_str() {
                    Some(id) => users.push(User::new(id)),
                    None => {
                        return Err(SuiteError::Suite(
                            "users: expected a list of user names or a map of user name to `{email, name}`".into(),
                        ))
                    }
                }
            }
        }
        Some(serde_yaml_ng::Value::Mapping(map)) => {
            for (key, value) in map {
                let Some(id) = key.as_str() else {
                    return Err(SuiteError::Suite(
                        "users: user names must be strings".into(),
                    ));
                };
                let spec: UserSpec = if value.is_null() {
                    UserSpec::default()
                } else {
                    serde_yaml_ng::from_value(value.clone())
                        .map_err(|e| SuiteError::Suite(format!("users.{id}: {e}")))?
                };
                let mut user = User::new(id);
                if let Some(email) = spec.email {
                    user.email = email;
                }
                user.name = spec.name;
                users.push(user);
            }
        }
        Some(_) => {
            return Err(SuiteError::Suite(
                "users: expected a list of user names or a map of user name to `{email, name}`"
                    .into(),
            ))
        }
    }
    let mut accounts = Vec::new();
    for (id, spec) in &suite.accounts {
        let mut members = Vec::new();
        for (user, role) in &spec.members {
            if !roles.contains(role) {
                return Err(SuiteError::Suite(format!(
                    "accounts.{id}.members: `{user}` holds `{role}`, which is not a role of the schema (its roles are {})",
                    roles.join(", ")
                )));
            }
            members.push((user.clone(), role.clone()));
        }
        let resources = spec
            .resources
            .iter()
            .flat_map(|(ty, ids)| ids.iter().map(|i| (ty.clone(), i.clone())))
            .collect();
        accounts.push(Account {
            id: id.clone(),
            name: spec.name.clone().unwrap_or_else(|| id.clone()),
            kind: spec.kind.clone(),
            owner: spec.owner.clone(),
            members,
            resources,
        });
    }
    let mut model = Model { accounts, users };
    // A matrix with a non-member column needs a user who belongs nowhere.
    let wants_outsider = suite
        .matrix
        .iter()
        .any(|m| m.columns.iter().any(|c| c == NON_MEMBER));
    if wants_outsider && !model.all_users().iter().any(|u| u.id == NON_MEMBER) {
        model.users.push(User::new(NON_MEMBER));
    }
    Ok(model)
}

/// Splits `a, b c` into `["a", "b", "c"]`.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_decision(word: &str) -> Result<bool, String> {
    word.parse::<authz::Effect>().map(authz::Effect::is_allow)
}

/// Reads a case: the short form `principal action resource -> allow [ids]`
/// or the long form with named fields.
fn case_from(raw: &serde_yaml_ng::Value) -> Result<Case, String> {
    if let Some(line) = raw.as_str() {
        let Some((left, right)) = line.split_once("->") else {
            return Err(format!(
                "`{line}`: expected `principal action resource -> allow|deny`"
            ));
        };
        let [principal, action, resource] = <[String; 3]>::try_from(words(left)).map_err(|w| {
            format!(
                "`{line}`: expected three names before `->` (principal, action, resource), found {}",
                w.len()
            )
        })?;
        let right = right.trim();
        let (decision, rest) = right.split_once(char::is_whitespace).unwrap_or((right, ""));
        let allow = parse_decision(decision).map_err(|e| format!("`{line}`: {e}"))?;
        let rest = rest.trim();
        let reasons = if rest.is_empty() {
            None
        } else if let Some(list) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(words(list))
        } else {
            return Err(format!(
                "`{line}`: after the decision, expected the policy ids in brackets, like `[basic]`"
            ));
        };
        return Ok(Case {
            name: format!("{principal} {action} {resource}"),
            principal,
            action,
            resource,
            allow,
            reasons,
            errors: Vec::new(),
            context: None,
        });
    }
    let full: FullCase = serde_yaml_ng::from_value(raw.clone()).map_err(|e| e.to_string())?;
    let allow = parse_decision(&full.expect)?;
    Ok(Case {
        name: full
            .name
            .unwrap_or_else(|| format!("{} {} {}", full.principal, full.action, full.resource)),
        principal: full.principal,
        action: full.action,
        resource: full.resource,
        allow,
        reasons: full.reasons,
        errors: full.errors,
        context: full.context,
    })
}

/// Finds the one schema action called `name`.
fn find_action(schema: &Schema, name: &str) -> Result<EntityUid, String> {
    let mut found: Vec<&EntityUid> = schema
        .actions()
        .filter(|a| a.id().unescaped() == name)
        .collect();
    match found.len() {
        1 => Ok(found.remove(0).clone()),
        0 => Err(format!("unknown action `{name}`")),
        _ => Err(format!(
            "the action name `{name}` is ambiguous; write it in full, like `Action::\"{name}\"`"
        )),
    }
}

/// Expands a matrix into one case per action and column.
fn matrix_cases(
    spec: &MatrixSpec,
    model: &Model,
    roles: &[String],
    schema: &Schema,
) -> Result<Vec<Case>, String> {
    let account = model
        .accounts
        .iter()
        .find(|a| a.id == spec.account)
        .ok_or_else(|| format!("unknown account `{}`", spec.account))?;
    let users: BTreeSet<String> = model.all_users().into_iter().map(|u| u.id).collect();
    let mut principals = Vec::new();
    for column in &spec.columns {
        let principal = if roles.contains(column) {
            if users.contains(column) {
                return Err(format!(
                    "the column `{column}` is both a role and a user; rename the user"
                ));
            }
            account
                .members
                .iter()
                .find(|(_, role)| role == column)
                .map(|(user, _)| user.clone())
                .ok_or_else(|| {
                    format!(
                        "no member of `{}` holds the role `{column}`; add one under `members`",
                        account.id
                    )
                })?
        } else if column == NON_MEMBER {
            if account.members.iter().any(|(u, _)| u == NON_MEMBER) {
                return Err(format!(
                    "the user `{NON_MEMBER}` is a member of `{}`",
                    account.id
                ));
            }
            NON_MEMBER.to_owned()
        } else if column == OWNER {
            account.owner.clone()
        } else if users.contains(column) {
            column.clone()
        } else {
            return Err(format!(
                "the column `{column}` is not a role of the schema ({}), `{NON_MEMBER}`, `{OWNER}` or a user",
                roles.join(", ")
            ));
        };
        principals.push(principal);
    }
    let title = spec.name.clone().unwrap_or_else(|| account.id.clone());
    let mut cases = Vec::new();
    for (key, value) in &spec.rows {
        let Some(key) = key.as_str() else {
            return Err("each row is keyed by action names".into());
        };
        let decisions: Vec<String> = match value {
            serde_yaml_ng::Value::String(s) => words(s),
            serde_yaml_ng::Value::Sequence(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).unwrap_or_default())
                .collect(),
            _ => return Err(format!("row `{key}`: expected decisions like `allow deny`")),
        };
        if decisions.len() != spec.columns.len() {
            return Err(format!(
                "row `{key}` has {} decisions for {} columns",
                decisions.len(),
                spec.columns.len()
            ));
        }
        for action in words(key) {
            let uid = find_action(schema, &action)?;
            let resource = resource_for(schema, &uid, account)?;
            for ((column, principal), decision) in
                spec.columns.iter().zip(&principals).zip(&decisions)
            {
                let allow = parse_decision(decision).map_err(|e| format!("row `{key}`: {e}"))?;
                cases.push(Case {
                    name: format!("{title}: {column} {action}"),
                    principal: principal.clone(),
                    action: action.clone(),
                    resource: resource.clone(),
                    allow,
                    reasons: None,
                    errors: Vec::new(),
                    context: None,
                });
            }
        }
    }
    Ok(cases)
}

/// The resource a matrix uses for `action` in `account`: the account itself
/// when the action applies to accounts, otherwise the first resource of the
/// account of a type the action applies to.
fn resource_for(schema: &Schema, action: &EntityUid, account: &Account) -> Result<String, String> {
    let types: Vec<String> = schema
        .resources_for_action(action)
        .map(|t| t.map(ToString::to_string).collect())
        .unwrap_or_default();
    if types.iter().any(|t| t == model::ACCOUNT) {
        return Ok(account.id.clone());
    }
    account
        .resources
        .iter()
        .find(|(ty, _)| types.contains(ty))
        .map(|(_, id)| id.clone())
        .ok_or_else(|| {
            format!(
                "`{}` applies to {}; declare one under `accounts.{}.resources`",
                action.id().unescaped(),
                types.join(", "),
                account.id
            )
        })
}

/// Turns the names a suite uses into entity references.
struct Resolver {
    users: BTreeSet<String>,
    /// Resource name → entity type (accounts and declared resources).
    resources: BTreeMap<String, Vec<String>>,
    /// Actions by name, for the schema the suite tests.
    actions: BTreeMap<String, Vec<EntityUid>>,
}

impl Resolver {
    fn new(model: &Model, extra: &[Value], schema: &Schema) -> Self {
        let users = model.all_users().into_iter().map(|u| u.id).collect();
        let mut resources: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in &model.accounts {
            resources
                .entry(a.id.clone())
                .or_default()
                .push(model::ACCOUNT.into());
            for (ty, id) in &a.resources {
                resources.entry(id.clone()).or_default().push(ty.clone());
            }
        }
        // Extra entities can be named by their id too.
        for e in extra {
            if let (Some(ty), Some(id)) = (e["uid"]["type"].as_str(), e["uid"]["id"].as_str()) {
                resources.entry(id.into()).or_default().push(ty.into());
            }
        }
        let mut actions: BTreeMap<String, Vec<EntityUid>> = BTreeMap::new();
        for a in schema.actions() {
            actions
                .entry(a.id().unescaped().to_owned())
                .or_default()
                .push(a.clone());
        }
        Self {
            users,
            resources,
            actions,
        }
    }

    /// A name written in Cedar syntax (`User::"bob"`) is taken as it is.
    fn cedar(field: &str, name: &str) -> Option<Result<EntityUid, String>> {
        name.contains("::").then(|| {
            authz::parse_uid(field, &Value::String(name.to_owned())).map_err(|e| e.to_string())
        })
    }

    fn principal(&self, name: &str) -> Result<EntityUid, String> {
        if let Some(uid) = Self::cedar("principal", name) {
            return uid;
        }
        if !self.users.contains(name) {
            return Err(format!(
                "unknown user `{name}`: declare it under `users`, as an owner or as a member"
            ));
        }
        authz::parse_uid("principal", &uid(model::USER, name)).map_err(|e| e.to_string())
    }

    fn action(&self, name: &str) -> Result<EntityUid, String> {
        if let Some(uid) = Self::cedar("action", name) {
            return uid;
        }
        match self.actions.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            Some(_) => Err(format!(
                "the action name `{name}` is ambiguous; write it in full, like `Action::\"{name}\"`"
            )),
            None => Err(format!("unknown action `{name}`")),
        }
    }

    fn resource(&self, name: &str) -> Result<EntityUid, String> {
        if let Some(uid) = Self::cedar("resource", name) {
            return uid;
        }
        let ty = match self.resources.get(name).map(Vec::as_slice) {
            Some([one]) => one.clone(),
            Some(_) => {
                return Err(format!(
                    "the resource name `{name}` is ambiguous; write it in Cedar syntax, like `Pod::\"{name}\"`"
                ))
            }
            None if self.users.contains(name) => model::USER.to_owned(),
            None => {
                return Err(format!(
                    "unknown resource `{name}`: declare it as an account or under an account's `resources`"
                ))
            }
        };
        authz::parse_uid("resource", &uid(&ty, name)).map_err(|e| e.to_string())
    }
}

impl Loaded {
    fn run(self, file: String) -> FileResult {
        let mut checks = vec![CaseResult {
            name: "load".into(),
            status: Status::Passed,
        }];
        let mut cases = Vec::new();
        for case in &self.cases {
            match case {
                Ok(case) => cases.push(self.run_case(case)),
                Err(e) => checks.push(CaseResult {
                    name: "load".into(),
                    status: Status::Failed(e.to_string()),
                }),
            }
        }
        if cases.is_empty() && checks.len() == 1 {
            checks.push(CaseResult {
                name: "load".into(),
                status: Status::Failed("the suite has no `cases` and no `matrix`".into()),
            });
        }
        FileResult {
            file,
            checks,
            cases,
        }
    }

    fn run_case(&self, case: &Case) -> CaseResult {
        let want_reasons = case.reasons.clone().map(|mut r| {
            r.sort();
            r.dedup();
            r
        });
        let mut want_errors = case.errors.clone();
        want_errors.sort();
        want_errors.dedup();
        let expected = match &want_reasons {
            Some(r) => describe_decision(case.allow, r, &want_errors),
            None => authz::Effect::from_allow(case.allow).to_string(),
        };
        let decided = (|| {
            let principal = self.resolver.principal(&case.principal)?;
            let action = self.resolver.action(&case.action)?;
            let resource = self.resolver.resource(&case.resource)?;
            let request = authz::build_request(
                &self.snapshot,
                principal,
                action,
                resource,
                case.context.as_ref(),
                true,
            )
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(authz::decide(&self.snapshot, &request, &self.entities))
        })();
        let status = judge(
            decided,
            &expected,
            case.allow,
            want_reasons.as_deref(),
            &want_errors,
        );
        CaseResult {
            name: case.name.clone(),
            status,
        }
    }
}
