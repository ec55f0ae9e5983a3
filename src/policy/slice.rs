//! The policies that can apply to a request, by the request's principal type,
//! action and resource type: built once per snapshot, so that a decision
//! evaluates only the policies whose scope can match instead of every policy
//! of the set.
//!
//! Cedar evaluates a policy's scope before its conditions, and stops at the
//! first part that is false; a scope part that is false is never an error. So
//! a policy whose scope cannot match a request is neither a reason nor an
//! error for it, and leaving it out changes nothing in the answer: not the
//! decision, not the reasons, not the errors. A policy is left out only on
//! what the scope says for certain:
//! - `principal == E` / `resource == E` where `E` is of another type than the
//!   request's;
//! - `principal is T` / `principal is T in E` where `T` is another type;
//! - `action == A` where `A` is another action, and `action in [..]` where
//!   the request's action is none of them nor a member of any of them in the
//!   schema's action hierarchy (every decision's entities carry exactly the
//!   schema's action entities: Cedar refuses others when it parses entities
//!   with the schema).
//!
//! `principal in E` is kept whatever `E` is (membership depends on the
//! entities). A request whose types and action the schema does not pair (one
//! asked without request validation) gets the whole set.

use std::collections::HashMap;

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, Schema,
};

/// How many policy entries all slices together may hold, as a multiple of the
/// set's size (plus a floor for small sets): a set with many actions and
/// many policies applying to all of them is left whole rather than copied
/// once per action.
const BUDGET_FACTOR: usize = 8;
const BUDGET_FLOOR: usize = 4096;

/// The slices of one snapshot's policy set.
#[derive(Debug, Default)]
pub struct Slices {
    by_action: HashMap<EntityUid, Vec<Slice>>,
}

#[derive(Debug)]
struct Slice {
    principal: EntityTypeName,
    resource: EntityTypeName,
    policies: PolicySet,
}

impl Slices {
    /// Slices `policies` by every request the schema declares. Empty (every
    /// decision evaluates the whole set) when the set holds template-linked
    /// policies, or when the slices would be too large to be worth it.
    pub fn build(policies: &PolicySet, schema: &Schema, actions: &Entities) -> Self {
        let all: Vec<_> = policies.policies().collect();
        if all.iter().any(|p| !p.is_static()) {
            return Self::default();
        }
        let mut picked = Vec::new();
        let mut total = 0usize;
        let budget = all.len() * BUDGET_FACTOR + BUDGET_FLOOR;
        for env in schema.request_envs() {
            let action_ancestors: Vec<&EntityUid> = actions
                .ancestors(env.action())
                .map(Iterator::collect)
                .unwrap_or_default();
            let keep: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    principal_may(&p.principal_constraint(), env.principal())
                        && action_may(&p.action_constraint(), env.action(), &action_ancestors)
                        && resource_may(&p.resource_constraint(), env.resource())
                })
                .map(|(i, _)| i)
                .collect();
            // A slice that keeps everything is no better than the set.
            if keep.len() == all.len() {
                continue;
            }
            total += keep.len();
            if total > budget {
                return Self::default();
            }
            picked.push((env, keep));
        }
        let mut by_action: HashMap<EntityUid, Vec<Slice>> = HashMap::new();
        for (env, keep) in picked {
            let Ok(policies) = PolicySet::from_policies(keep.iter().map(|&i| all[i].clone()))
            else {
                // Only static policies are added, so this cannot fail; if it
                // did, the whole set is still right.
                return Self::default();
            };
            by_action
                .entry(env.action().clone())
                .or_default()
                .push(Slice {
                    principal: env.principal().clone(),
                    resource: env.resource().clone(),
                    policies,
                });
        }
        Self { by_action }
    }

    /// The policies that can apply to `request`, or `None` for the whole set.
    pub fn get(&self, request: &Request) -> Option<&PolicySet> {
        let slices = self.by_action.get(request.action()?)?;
        let principal = request.principal()?.type_name();
        let resource = request.resource()?.type_name();
        slices
            .iter()
            .find(|s| &s.principal == principal && &s.resource == resource)
            .map(|s| &s.policies)
    }

    /// Whether no request has a slice (every decision evaluates every
    /// policy).
    pub fn is_empty(&self) -> bool {
        self.by_action.is_empty()
    }
}

fn principal_may(c: &PrincipalConstraint, ty: &EntityTypeName) -> bool {
    match c {
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
        PrincipalConstraint::Eq(e) => e.type_name() == ty,
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => t == ty,
    }
}

fn resource_may(c: &ResourceConstraint, ty: &EntityTypeName) -> bool {
    match c {
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
        ResourceConstraint::Eq(e) => e.type_name() == ty,
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => t == ty,
    }
}

fn action_may(c: &ActionConstraint, action: &EntityUid, ancestors: &[&EntityUid]) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action || ancestors.contains(&a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Authorizer, Context};

    const SCHEMA: &str = r#"
        entity Group;
        entity User in [Group];
        entity Doc, Folder;
        action read, write appliesTo { principal: [User, Group], resource: [Doc, Folder] };
        action admin;
        action purge in [admin] appliesTo { principal: [User], resource: [Doc] };
    "#;

    const POLICIES: &str = r#"
        permit (principal, action == Action::"read", resource);
        permit (principal is User, action in [Action::"write"], resource is Doc);
        permit (principal == Group::"g", action, resource);
        forbid (principal in Group::"g", action in [Action::"admin"], resource == Doc::"d")
            when { context.nope };
        permit (principal, action, resource in Folder::"f");
    "#;

    fn uid(t: &str, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(
            t.parse().expect("the test fixture"),
            id.parse().expect("the test fixture"),
        )
    }

    /// The schema, the set, the schema's action entities, and the slices.
    fn fixture() -> (Schema, PolicySet, Entities, Slices) {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).expect("the test fixture");
        let policies: PolicySet = POLICIES.parse().expect("the test fixture");
        let actions = schema.action_entities().expect("the test fixture");
        let slices = Slices::build(&policies, &schema, &actions);
        (schema, policies, actions, slices)
    }

    /// Every request the schema declares, for every principal and resource
    /// named in the policies and others: the slice answers exactly as the
    /// whole set (decision, reasons and errors).
    #[test]
    fn a_slice_answers_exactly_as_the_whole_set() {
        let (schema, policies, actions, slices) = fixture();
        assert!(!slices.is_empty(), "this set has policies to leave out");
        let group = cedar_policy::Entity::new_no_attrs(uid("Group", "g"), Default::default());
        let user = cedar_policy::Entity::new_no_attrs(
            uid("User", "u"),
            [uid("Group", "g")].into_iter().collect(),
        );
        let entities = actions
            .add_entities([group, user], Some(&schema))
            .expect("the test fixture");
        let principals = [uid("User", "u"), uid("User", "v"), uid("Group", "g")];
        let resources = [uid("Doc", "d"), uid("Doc", "e"), uid("Folder", "f")];
        let mut compared = 0;
        let mut narrowed = 0;
        for env in schema.request_envs() {
            for p in principals
                .iter()
                .filter(|p| p.type_name() == env.principal())
            {
                for r in resources.iter().filter(|r| r.type_name() == env.resource()) {
                    let request = Request::new(
                        p.clone(),
                        env.action().clone(),
                        r.clone(),
                        Context::empty(),
                        None,
                    )
                    .expect("the test fixture");
                    let whole = Authorizer::new().is_authorized(&request, &policies, &entities);
                    let Some(slice) = slices.get(&request) else {
                        continue;
                    };
                    narrowed += usize::from(slice.policies().count() < policies.policies().count());
                    let sliced = Authorizer::new().is_authorized(&request, slice, &entities);
                    assert_eq!(whole.decision(), sliced.decision(), "{request}");
                    let ids = |r: &cedar_policy::Response| {
                        let mut reasons: Vec<String> =
                            r.diagnostics().reason().map(ToString::to_string).collect();
                        reasons.sort();
                        let mut errors: Vec<String> =
                            r.diagnostics().errors().map(ToString::to_string).collect();
                        errors.sort();
                        (reasons, errors)
                    };
                    assert_eq!(ids(&whole), ids(&sliced), "{request}");
                    compared += 1;
                }
            }
        }
        assert!(compared >= 10, "compared {compared}");
        assert!(narrowed >= 5, "narrowed {narrowed}");
    }

    /// `purge` is a member of `admin`: a policy on `action in [admin]` is
    /// kept for it; one on `action == read`, one on `write`, and one on
    /// `principal == Group::"g"` (for a `User`) are not; `resource in` is
    /// always kept.
    #[test]
    fn an_action_group_keeps_its_members_policies() {
        let (_, _, _, slices) = fixture();
        let request = Request::new(
            uid("User", "u"),
            uid("Action", "purge"),
            uid("Doc", "d"),
            Context::empty(),
            None,
        )
        .expect("the test fixture");
        let kept: Vec<String> = slices
            .get(&request)
            .expect("a slice")
            .policies()
            .map(|p| p.id().to_string())
            .collect();
        assert_eq!(kept, ["policy3", "policy4"]);
    }

    /// A request the schema does not pair gets the whole set.
    #[test]
    fn an_undeclared_request_gets_the_whole_set() {
        let (_, _, _, slices) = fixture();
        let request = Request::new(
            uid("Doc", "d"),
            uid("Action", "read"),
            uid("User", "u"),
            Context::empty(),
            None,
        )
        .expect("the test fixture");
        assert!(slices.get(&request).is_none());
    }
}
