//! The role matrix: what a member holding each role may do, computed from
//! the loaded policies rather than written down, so it cannot drift from
//! them.
//!
//! For a team account and a personal account (whose owner holds `admin`),
//! [`compute`] asks, for a member holding each role of the schema and for a
//! user who is not a member, every action of the schema that applies to
//! users, through `crate::authz` like any other decision. `cedard matrix`
//! prints the result as Markdown or JSON and the daemon serves it at
//! `GET /v1/matrix`. This module knows nothing about HTTP.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::EntityUid;
use serde_json::{json, Map, Value};

use crate::authz::{self, InputError};
use crate::model::sketch::{uid, Account, Model, User};
pub use crate::model::NON_MEMBER;
use crate::model::{self, ModelError, RoleCatalog, ADMIN_ROLE as OWNER_ROLE};
use crate::policy::{PolicyError, PolicySnapshot, Sources};

/// The two kinds of account the matrix is computed for.
pub const KINDS: [&str; 2] = ["team", "personal"];

/// Why the matrix could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The policies or the schema do not load.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The schema has no roles, or they cannot be read.
    #[error(transparent)]
    Roles(#[from] ModelError),
    /// The entities or a request built for the matrix are not valid against
    /// the schema (the schema does not follow the account model).
    #[error("the schema does not fit the account model: {0}")]
    Input(#[from] InputError),
}

/// The computed matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// The roles of the schema, sorted.
    pub roles: Vec<String>,
    /// The roles from least to most permitted, then [`NON_MEMBER`].
    pub columns: Vec<String>,
    /// The actions that apply to users, sorted.
    pub actions: Vec<String>,
    /// One table per kind of account, in the order of [`KINDS`].
    pub tables: Vec<Table>,
}

/// The decisions for one kind of account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `team` or `personal`.
    pub kind: String,
    /// Action → one decision per column (`true` is allow).
    pub decisions: BTreeMap<String, Vec<bool>>,
    /// Action → the ids of the policies that decided each cell, sorted (for
    /// a default deny, none), in the order of the columns.
    pub reasons: BTreeMap<String, Vec<Vec<String>>>,
}

/// Reads and validates the policy set at `sources` as the daemon does, then
/// computes its matrix.
pub fn from_sources(sources: &Sources) -> Result<Matrix, MatrixError> {
    let snapshot = crate::policy::load(sources, 1)?;
    let roles = RoleCatalog::default().roles(&snapshot)?;
    compute(&snapshot, &roles)
}

/// The user who holds `role` in both accounts of the matrix.
fn member_for(role: &str) -> String {
    role.to_owned()
}

/// Computes the matrix of `snapshot` for the given roles.
pub fn compute(snapshot: &PolicySnapshot, roles: &[String]) -> Result<Matrix, MatrixError> {
    let schema = &snapshot.schema;
    let mut actions: Vec<EntityUid> = schema
        .actions()
        .filter(|a| {
            schema
                .principals_for_action(a)
                .is_some_and(|mut p| p.any(|t| t.to_string() == model::USER))
        })
        .cloned()
        .collect();
    actions.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
    let mut columns: Vec<String> = roles.to_vec();
    columns.push(NON_MEMBER.to_owned());
    let owner = if roles.iter().any(|r| r == OWNER_ROLE) {
        member_for(OWNER_ROLE)
    } else {
        "owner".to_owned()
    };
    let mut tables = Vec::new();
    for kind in KINDS {
        let resource_types: Vec<String> = {
            let mut types: Vec<String> = actions
                .iter()
                .filter_map(|a| resource_type(snapshot, a))
                .filter(|t| t != model::ACCOUNT)
                .collect();
            types.sort();
            types.dedup();
            types
        };
        let account = Account {
            id: kind.to_owned(),
            name: format!("a {kind} account"),
            kind: kind.to_owned(),
            owner: owner.clone(),
            members: roles.iter().map(|r| (member_for(r), r.clone())).collect(),
            resources: resource_types
                .iter()
                .map(|t| (t.clone(), format!("{kind}/{}", t.to_lowercase())))
                .collect(),
        };
        let model = Model {
            accounts: vec![account.clone()],
            users: vec![User::new(NON_MEMBER)],
        };
        let entities = authz::parse_entities(snapshot, &model.entities_json(roles)?)?;
        let mut decisions = BTreeMap::new();
        let mut reasons = BTreeMap::new();
        for action in &actions {
            let resource = match resource_type(snapshot, action) {
                Some(t) if t != model::ACCOUNT => uid(&t, &format!("{kind}/{}", t.to_lowercase())),
                _ => uid(model::ACCOUNT, &account.id),
            };
            let mut row = Vec::with_capacity(columns.len());
            let mut why = Vec::with_capacity(columns.len());
            for column in &columns {
                let principal = if column == NON_MEMBER {
                    NON_MEMBER.to_owned()
                } else {
                    member_for(column)
                };
                let request = authz::build_request(
                    snapshot,
                    authz::parse_uid("principal", &uid(model::USER, &principal))?,
                    action.clone(),
                    authz::parse_uid("resource", &resource)?,
                    None,
                    true,
                )?;
                let decision = authz::decide(snapshot, &request, &entities);
                row.push(decision.allow);
                why.push(decision.reasons.into_iter().map(|r| r.policy_id).collect());
            }
            let name = action.id().unescaped().to_owned();
            decisions.insert(name.clone(), row);
            reasons.insert(name, why);
        }
        tables.push(Table {
            kind: kind.to_owned(),
            decisions,
            reasons,
        });
    }
    let mut matrix = Matrix {
        roles: roles.to_vec(),
        columns,
        actions: actions
            .iter()
            .map(|a| a.id().unescaped().to_owned())
            .collect(),
        tables,
    };
    matrix.order_columns();
    Ok(matrix)
}

/// The resource type the matrix uses for `action`: the account type when
/// the action applies to it, else the first type it applies to.
fn resource_type(snapshot: &PolicySnapshot, action: &EntityUid) -> Option<String> {
    let mut types: Vec<String> = snapshot
        .schema
        .resources_for_action(action)?
        .map(ToString::to_string)
        .collect();
    types.sort();
    if types.iter().any(|t| t == model::ACCOUNT) {
        Some(model::ACCOUNT.to_owned())
    } else {
        types.into_iter().next()
    }
}

fn word(allow: bool) -> &'static str {
    crate::authz::Effect::from_allow(allow).as_str()
}

impl Table {
    /// Actions with identical decisions share a row. Rows are ordered by
    /// their decisions, allow before deny column by column, so the most
    /// permitted actions come first.
    pub fn rows(&self) -> Vec<(Vec<String>, Vec<bool>)> {
        let mut grouped: BTreeMap<Vec<bool>, Vec<String>> = BTreeMap::new();
        for (action, decisions) in &self.decisions {
            grouped
                .entry(decisions.clone())
                .or_default()
                .push(action.clone());
        }
        let mut rows: Vec<(Vec<String>, Vec<bool>)> =
            grouped.into_iter().map(|(d, a)| (a, d)).collect();
        // `true` (allow) sorts after `false`; reverse so allow comes first.
        rows.sort_by(|a, b| b.1.cmp(&a.1));
        rows
    }
}

impl Matrix {
    /// The decision of one cell and the policies that made it: `kind` is
    /// `team` or `personal`, `column` a role or [`NON_MEMBER`]. `None` when
    /// the matrix has no such column or action.
    pub fn cell(&self, kind: &str, column: &str, action: &str) -> Option<(bool, &[String])> {
        let c = self.columns.iter().position(|x| x == column)?;
        let table = self.tables.iter().find(|t| t.kind == kind)?;
        let allow = *table.decisions.get(action)?.get(c)?;
        let reasons = table.reasons.get(action)?.get(c)?;
        Some((allow, reasons.as_slice()))
    }

    /// Orders the role columns from least to most permitted: a role that may
    /// do everything another may (and more) comes after it; otherwise roles
    /// keep their order by name. [`NON_MEMBER`] stays last. For the default
    /// pack this gives basic, billing, dev, admin.
    fn order_columns(&mut self) {
        let roles = self.roles.len();
        let allowed: Vec<BTreeSet<(usize, &String)>> = (0..roles)
            .map(|c| {
                self.tables
                    .iter()
                    .enumerate()
                    .flat_map(|(t, table)| {
                        table
                            .decisions
                            .iter()
                            .filter(move |(_, d)| d.get(c).copied().unwrap_or(false))
                            .map(move |(action, _)| (t, action))
                    })
                    .collect()
            })
            .collect();
        // Repeatedly take the first role (by name) that no remaining role's
        // permissions are strictly contained in.
        let mut remaining: Vec<usize> = (0..roles).collect();
        let mut order = Vec::with_capacity(self.columns.len());
        while !remaining.is_empty() {
            let pick = remaining
                .iter()
                .position(|&r| {
                    !remaining.iter().any(|&o| {
                        o != r
                            && allowed[o].is_subset(&allowed[r])
                            && allowed[o].len() < allowed[r].len()
                    })
                })
                .unwrap_or(0);
            order.push(remaining.remove(pick));
        }
        order.extend(roles..self.columns.len());
        self.columns = order.iter().map(|&i| self.columns[i].clone()).collect();
        for table in &mut self.tables {
            for row in table.decisions.values_mut() {
                *row = order
                    .iter()
                    .map(|&i| row.get(i).copied().unwrap_or(false))
                    .collect();
            }
            for row in table.reasons.values_mut() {
                *row = order
                    .iter()
                    .map(|&i| row.get(i).cloned().unwrap_or_default())
                    .collect();
            }
        }
    }

    /// The matrix as Markdown: one table per kind of account.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        for table in &self.tables {
            let (title, note) = if table.kind == "personal" {
                (
                    "Personal account",
                    format!("The owner holds `{OWNER_ROLE}`."),
                )
            } else {
                (
                    "Team account",
                    format!(
                        "A member holding each role (the one holding `{OWNER_ROLE}` owns the \
                         account), and a user who is not a member."
                    ),
                )
            };
            out.push_str(&format!("## {title}\n\n{note}\n\n"));
            out.push_str("| action |");
            for c in &self.columns {
                out.push_str(&format!(" {c} |"));
            }
            out.push_str("\n|---|");
            for _ in &self.columns {
                out.push_str("---|");
            }
            out.push('\n');
            for (actions, decisions) in table.rows() {
                out.push_str(&format!("| {} |", actions.join(", ")));
                for d in decisions {
                    out.push_str(&format!(" {} |", word(d)));
                }
                out.push('\n');
            }
            out.push('\n');
        }
        out
    }

    /// The matrix as JSON: `roles`, `columns`, `actions`, and per kind of
    /// account (`team`, `personal`) action → column → `allow`/`deny`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("roles".into(), json!(self.roles));
        out.insert("columns".into(), json!(self.columns));
        out.insert("actions".into(), json!(self.actions));
        for table in &self.tables {
            let mut actions = Map::new();
            for (action, decisions) in &table.decisions {
                let cells: Map<String, Value> = self
                    .columns
                    .iter()
                    .zip(decisions)
                    .map(|(c, d)| (c.clone(), Value::String(word(*d).into())))
                    .collect();
                actions.insert(action.clone(), Value::Object(cells));
            }
            out.insert(table.kind.clone(), Value::Object(actions));
        }
        Value::Object(out)
    }
}
