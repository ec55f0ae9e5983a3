//! The account model of the default pack's schema, written the short way:
//! accounts with a kind, an owner, members and their roles, and resources
//! that belong to an account. [`Model::entities_json`] expands it into the
//! Cedar entities the schema contract describes, so that a YAML suite and
//! `cedard matrix` never spell out raw entity JSON. Each entity is made by
//! the account model's one builder of its type, the same that builds
//! stored users and accounts.
//!
//! The contract (issue 2): `User { email, name? }` in `Role`; a `Role` is one
//! role of one account with the id `<account>/<role>`; `Account { name, kind,
//! owner, account, roles: { <role>: Role, … } }`; every other resource type is
//! `in [Account]` with an `account` attribute. The role names are the fields
//! of the schema's `Account.roles` record (read by
//! `super::RoleCatalog`), never a fixed list. This module builds
//! JSON only; parsing it against the schema and deciding is `authz`'s job.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{group, person, resource_entity, role_entity, to_json, ModelError};

/// One account of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's entity id.
    pub id: String,
    /// Its display name (the `name` attribute).
    pub name: String,
    /// `team` or `personal` (the `kind` attribute).
    pub kind: String,
    /// The user id of its owner.
    pub owner: String,
    /// Who holds which role, as (user id, role name), sorted by user.
    pub members: Vec<(String, String)>,
    /// Resources that belong to the account, as (entity type, id).
    pub resources: Vec<(String, String)>,
}

/// One person of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's entity id.
    pub id: String,
    /// The `email` attribute; `<id>@example.com` unless given.
    pub email: String,
    /// The optional `name` attribute.
    pub name: Option<String>,
}

impl User {
    /// A user with the default email address.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            name: None,
        }
    }
}

/// Accounts, users and resources: everything a decision about the account
/// model needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// The accounts.
    pub accounts: Vec<Account>,
    /// Users declared explicitly. Owners and members that are not listed here
    /// are added with the defaults of [`User::new`].
    pub users: Vec<User>,
}

/// An entity reference in Cedar's JSON form. The id stays a JSON string, so no
/// escaping is ever needed.
pub fn uid(entity_type: &str, id: &str) -> Value {
    json!({"type": entity_type, "id": id})
}

impl Model {
    /// Every user: the declared ones, then owners and members not declared.
    pub fn all_users(&self) -> Vec<User> {
        let mut users: BTreeMap<String, User> = self
            .users
            .iter()
            .map(|u| (u.id.clone(), u.clone()))
            .collect();
        for account in &self.accounts {
            let named =
                std::iter::once(&account.owner).chain(account.members.iter().map(|(u, _)| u));
            for id in named {
                users.entry(id.clone()).or_insert_with(|| User::new(id));
            }
        }
        users.into_values().collect()
    }

    /// Expands the model into Cedar's JSON entity format: one `Role` per
    /// account and role of the schema, the users in their roles, the accounts
    /// and their resources, each built by the account model's one builder
    /// of its type (see `super::person`, `super::group`).
    pub fn entities_json(&self, roles: &[String]) -> Result<Value, ModelError> {
        let mut out = Vec::new();
        for account in &self.accounts {
            for role in roles {
                out.push(to_json(&role_entity(&account.id, role))?);
            }
        }
        for user in self.all_users() {
            let held: Vec<(String, String)> = self
                .accounts
                .iter()
                .flat_map(|a| {
                    a.members
                        .iter()
                        .filter(|(member, _)| *member == user.id)
                        .map(|(_, role)| (a.id.clone(), role.clone()))
                })
                .collect();
            out.push(to_json(&person(
                &user.id,
                &user.email,
                user.name.as_deref(),
                &held,
            )?)?);
        }
        for account in &self.accounts {
            out.push(to_json(&group(
                &account.id,
                &account.name,
                &account.kind,
                &account.owner,
                roles,
            )?)?);
            for (entity_type, id) in &account.resources {
                out.push(to_json(&resource_entity(entity_type, id, &account.id)?)?);
            }
        }
        Ok(Value::Array(out))
    }
}
