//! The account model: the contract between cedard's store and the schema.
//!
//! One home for what the default pack's schema and cedard agree on: the
//! entity types (`User`, `Account`, `Role`), the role id `<account>/<role>`,
//! the admin role that owners hold and the last-admin rule protects, the role
//! names (the fields of `Account.roles` in the loaded schema, read by
//! [`RoleCatalog`]), and the builders that turn stored records into Cedar
//! entities. [`sketch`] writes the same model the short way for YAML suites
//! and `cedard matrix`. This module knows nothing about HTTP, redb tables or
//! the test runner; it reads store records, never the store.

pub mod sketch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::Value;

use crate::policy::{describe, PolicySnapshot};
use crate::store::{Account, User};

/// The entity type of people.
pub const USER: &str = "User";
/// The attributes of a stored user that [`person`] builds from its record.
pub const USER_ATTRIBUTES: [&str; 2] = ["email", "name"];
/// The entity type of roles.
pub const ROLE: &str = "Role";
/// The entity type of accounts.
pub const ACCOUNT: &str = "Account";

/// The role the owner of an account holds, and the one the last-admin rule
/// protects. It must be one of the schema's roles.
pub const ADMIN_ROLE: &str = "admin";

/// The id of a user who belongs to no account, and the name of the matrix
/// column that stands for them.
pub const NON_MEMBER: &str = "non-member";

/// The id of the `Role` entity for `role` in `account`.
pub fn role_id(account: &str, role: &str) -> String {
    format!("{account}/{role}")
}

/// The loaded schema cannot describe the account model (a 503 until the
/// schema is fixed): no `roles` record on `Account`, or stored records that
/// no longer conform.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

/// The entity types of the account model (the contract of the default
/// schema; see `schema/teams.cedarschema`).
pub(crate) struct Types {
    pub(crate) user: EntityTypeName,
    pub(crate) account: EntityTypeName,
    pub(crate) role: EntityTypeName,
}

/// The parsed type names, for comparisons on the decision path.
pub(crate) static TYPES: LazyLock<Types> = LazyLock::new(|| {
    // These are constant, valid Cedar type names; parsing them cannot fail.
    #[allow(clippy::expect_used)]
    let parse = |s: &str| s.parse::<EntityTypeName>().expect("valid type name");
    Types {
        user: parse(USER),
        account: parse(ACCOUNT),
        role: parse(ROLE),
    }
});

/// `Role::"<account>/<role>"`.
pub fn role_uid(account: &str, role: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(TYPES.role.clone(), EntityId::new(role_id(account, role)))
}

/// `User::"<id>"`.
pub fn user_uid(id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(TYPES.user.clone(), EntityId::new(id))
}

/// `Account::"<id>"`.
pub fn account_uid(id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(TYPES.account.clone(), EntityId::new(id))
}

/// The entity of a stored user: `email`, `name` if set, and as parents the
/// role it holds in each account (`roles` are `(account, role)` pairs).
pub fn user_entity(user: &User, roles: &[(String, String)]) -> Result<Entity, ModelError> {
    person(&user.id, &user.email, user.name.as_deref(), roles)
}

/// The entity of a user of the account model, from its parts: the one
/// definition of a `User` entity, for stored users and for sketches alike.
pub fn person(
    id: &str,
    email: &str,
    name: Option<&str>,
    roles: &[(String, String)],
) -> Result<Entity, ModelError> {
    let mut attrs = HashMap::with_capacity(2);
    attrs.insert(
        "email".to_owned(),
        RestrictedExpression::new_string(email.to_owned()),
    );
    if let Some(name) = name {
        attrs.insert(
            "name".to_owned(),
            RestrictedExpression::new_string(name.to_owned()),
        );
    }
    let parents: HashSet<EntityUid> = roles.iter().map(|(a, r)| role_uid(a, r)).collect();
    Entity::new(user_uid(id), attrs, parents).map_err(|e| ModelError(describe(&e)))
}

/// The entity of a stored account: `name`, `kind`, `owner`, `account`
/// (itself) and `roles`, one `Role::"<account>/<role>"` per role name.
pub fn account_entity(account: &Account, role_names: &[String]) -> Result<Entity, ModelError> {
    group(
        &account.id,
        &account.name,
        account.kind.as_str(),
        &account.owner,
        role_names,
    )
}

/// The entity of an account of the account model, from its parts: the one
/// definition of an `Account` entity, for stored accounts and for sketches
/// alike. `kind` is `personal` or `team` for stored accounts.
pub fn group(
    id: &str,
    name: &str,
    kind: &str,
    owner: &str,
    role_names: &[String],
) -> Result<Entity, ModelError> {
    let uid = account_uid(id);
    let roles = RestrictedExpression::new_record(role_names.iter().map(|r| {
        (
            r.clone(),
            RestrictedExpression::new_entity_uid(role_uid(id, r)),
        )
    }))
    .map_err(|e| ModelError(describe(&e)))?;
    let attrs = HashMap::from([
        (
            "name".to_owned(),
            RestrictedExpression::new_string(name.to_owned()),
        ),
        (
            "kind".to_owned(),
            RestrictedExpression::new_string(kind.to_owned()),
        ),
        (
            "owner".to_owned(),
            RestrictedExpression::new_entity_uid(user_uid(owner)),
        ),
        (
            "account".to_owned(),
            RestrictedExpression::new_entity_uid(uid.clone()),
        ),
        ("roles".to_owned(), roles),
    ]);
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| ModelError(describe(&e)))
}

/// The entity of role `role` of `account`: no attributes, no parents.
pub fn role_entity(account: &str, role: &str) -> Entity {
    Entity::new_no_attrs(role_uid(account, role), HashSet::new())
}

/// The entity of a resource that belongs to `account` (a `Pod`, say): an
/// `account` attribute and the account as its parent, as the account model
/// wants of every resource type.
pub fn resource_entity(entity_type: &str, id: &str, account: &str) -> Result<Entity, ModelError> {
    let ty: EntityTypeName = entity_type
        .parse()
        .map_err(|e: cedar_policy::ParseErrors| {
            ModelError(format!(
                "`{entity_type}` is not an entity type name: {}",
                describe(&e)
            ))
        })?;
    let account = account_uid(account);
    Entity::new(
        EntityUid::from_type_name_and_id(ty, EntityId::new(id)),
        HashMap::from([(
            "account".to_owned(),
            RestrictedExpression::new_entity_uid(account.clone()),
        )]),
        HashSet::from([account]),
    )
    .map_err(|e| ModelError(describe(&e)))
}

/// An entity as Cedar's JSON entity format writes it.
pub fn to_json(entity: &Entity) -> Result<Value, ModelError> {
    entity.to_json_value().map_err(|e| ModelError(describe(&e)))
}

/// The role names of each loaded schema, remembered per policy revision so
/// that they are worked out once per reload, not once per request.
///
/// cedar-policy's `Schema` does not list an entity type's attributes, so the
/// names are read from the schema files the snapshot was built from, then
/// checked against the snapshot's schema (an `Account` with exactly these
/// roles must conform).
#[derive(Debug, Default)]
pub struct RoleCatalog {
    /// The revision's SHA-256 and its role names. A `std` mutex: it is held
    /// only to copy an `Arc`, never across an `.await`.
    cache: Mutex<Option<(String, Arc<Vec<String>>)>>,
}

impl RoleCatalog {
    /// The role names of `snapshot`'s schema, sorted.
    pub fn roles(&self, snapshot: &PolicySnapshot) -> Result<Arc<Vec<String>>, ModelError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((sha, names)) = cache.as_ref() {
                if *sha == snapshot.revision.sha256 {
                    return Ok(names.clone());
                }
            }
        }
        let names = Arc::new(role_names(&snapshot.schema_files)?);
        let probe = Account {
            id: "probe".into(),
            name: "probe".into(),
            kind: crate::store::AccountKind::Team,
            owner: "probe".into(),
            created_at: 0,
        };
        let entity = account_entity(&probe, &names)?;
        if let Err(e) = Entities::from_entities([entity], Some(&snapshot.schema)) {
            return Err(ModelError(format!(
                "`Account` in the schema does not match the account model: {}",
                describe(&e)
            )));
        }
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((snapshot.revision.sha256.clone(), names.clone()));
        }
        Ok(names)
    }
}

/// Reads the fields of the `roles` record of `Account` from schema files
/// (Cedar syntax or JSON), resolving a common type if `roles` names one.
fn role_names(files: &[crate::policy::SourceFile]) -> Result<Vec<String>, ModelError> {
    for f in files {
        let Some(Value::Object(namespaces)) = f.schema_json() else {
            continue;
        };
        // The account model lives in the empty namespace.
        let Some(fragment) = namespaces.get("") else {
            continue;
        };
        let Some(roles) = fragment.pointer("/entityTypes/Account/shape/attributes/roles") else {
            continue;
        };
        let resolved = resolve_record(fragment, roles, 0);
        if let Some(Value::Object(fields)) = resolved.and_then(|r| r.get("attributes")) {
            let mut names: Vec<String> = fields.keys().cloned().collect();
            names.sort();
            if !names.is_empty() {
                return Ok(names);
            }
        }
    }
    Err(ModelError(
        "the loaded schema has no `roles` record on `Account`, so cedard cannot manage accounts"
            .into(),
    ))
}

/// Follows common-type references until a record type is found.
fn resolve_record<'a>(fragment: &'a Value, ty: &'a Value, depth: usize) -> Option<&'a Value> {
    if depth > 8 {
        return None;
    }
    match ty.get("type").and_then(Value::as_str) {
        Some("Record") => Some(ty),
        Some(name) => {
            let name = ty.get("name").and_then(Value::as_str).unwrap_or(name);
            let common = fragment.get("commonTypes")?.get(name)?;
            resolve_record(fragment, common, depth + 1)
        }
        None => None,
    }
}
