//! What Cedar's request validation answers that depends on the schema alone,
//! worked out once per snapshot instead of on every request.
//!
//! Validating a request is two checks (`Request::new` with a schema is
//! exactly these, in this order): its scope (the principal's and the
//! resource's types are declared and are ones the action applies to, the
//! action is declared and not external, an enumerated entity's id is one
//! of its choices) and its context (it matches the action's declared
//! context). For a principal and a resource of declared types that are not
//! enumerated, the scope check reads only their types, never their ids; and
//! an empty context is valid or not by its action alone. So both are asked
//! of Cedar here once, for every request the schema declares, and a request
//! whose answer is known is not asked again. Anything else (an enumerated
//! type, a context with attributes, a triple Cedar refused) is checked in
//! full on every request, so refusals keep Cedar's exact words.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, Schema};

use super::decode::Shapes;

/// The requests whose validation is known to pass.
#[derive(Debug, Default)]
pub struct ValidRequests {
    /// By action, the `(principal type, resource type)` pairs whose scope
    /// is valid whatever the ids.
    scopes: HashMap<EntityUid, Vec<(EntityTypeName, EntityTypeName)>>,
    /// Actions for which an empty context is valid.
    empty_context: HashSet<EntityUid>,
}

impl ValidRequests {
    /// Asks Cedar, for every request the schema declares, whether its scope
    /// is valid (for types `shapes` knows to be declared and not
    /// enumerated) and whether its action accepts an empty context. Empty
    /// when `shapes` could not read the schema: every request is then
    /// validated in full.
    pub fn build(schema: &Schema, shapes: &Shapes) -> Self {
        let plain = |t: &EntityTypeName| shapes.is_plain_type(&t.to_string());
        let probe = EntityId::new("");
        let mut scopes: HashMap<EntityUid, Vec<_>> = HashMap::new();
        let mut empty_context = HashSet::new();
        for env in schema.request_envs() {
            let (p, a, r) = (env.principal(), env.action(), env.resource());
            if !plain(p) || !plain(r) {
                continue;
            }
            let principal = EntityUid::from_type_name_and_id(p.clone(), probe.clone());
            let resource = EntityUid::from_type_name_and_id(r.clone(), probe.clone());
            if cedar_policy::validate_scope_variables(&principal, a, &resource, schema).is_ok() {
                scopes
                    .entry(a.clone())
                    .or_default()
                    .push((p.clone(), r.clone()));
            }
            if !empty_context.contains(a) && Context::empty().validate(schema, a).is_ok() {
                empty_context.insert(a.clone());
            }
        }
        Self {
            scopes,
            empty_context,
        }
    }

    /// Whether the scope of a request for these three is known valid.
    pub fn scope(&self, principal: &EntityUid, action: &EntityUid, resource: &EntityUid) -> bool {
        let (p, r) = (principal.type_name(), resource.type_name());
        self.scopes
            .get(action)
            .is_some_and(|pairs| pairs.iter().any(|(pp, rr)| pp == p && rr == r))
    }

    /// Whether an empty context is known valid for `action`.
    pub fn empty_context(&self, action: &EntityUid) -> bool {
        self.empty_context.contains(action)
    }
}
