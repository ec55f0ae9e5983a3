//! The decision: turning a request (principal, action, resource, context,
//! entities) into allow or deny against one policy snapshot.
//!
//! This is the one evaluation path of cedard. The HTTP API, `cedard test`,
//! `cedard matrix` and the conformance suite all build their requests and
//! entities through the parsers here and decide through [`decide`]. Inputs are
//! read against the snapshot's schema, so entity references and extension
//! values may be written without their `__entity`/`__extn` markers exactly as
//! Cedar's own tooling allows. This module knows nothing about HTTP or redb.

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityUid, PolicyId, Request, Response,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::code::Code;
use crate::policy::memo::Assembled;
use crate::policy::{decode, describe, PolicySnapshot};

/// Bad input: which field, and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InputError {
    /// The JSON path of the offending field, like `principal` or `entities`.
    pub field: String,
    /// What is wrong, in Cedar's words.
    pub message: String,
}

impl InputError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// What went wrong, in the one vocabulary: always bad input.
    pub fn code(&self) -> Code {
        Code::InvalidRequest
    }

    /// The same error, nested under a parent field (`requests[3]`).
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            message: self.message,
        }
    }
}

/// The longest piece of a caller's input an error message quotes.
const MAX_QUOTED: usize = 64;

/// `text` cut to [`MAX_QUOTED`] characters (marked with `…`), so that an
/// error message never echoes a caller's megabyte back.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Parses an entity reference: `{"type": "User", "id": "alice"}`, the same
/// wrapped as `{"__entity": {...}}`, or the Cedar string `User::"alice"`.
pub fn parse_uid(field: &str, value: &Value) -> Result<EntityUid, InputError> {
    match value {
        Value::String(s) => s.parse::<EntityUid>().map_err(|e| {
            InputError::new(field, format!("`{s}` is not an entity reference: {}", describe(&e)))
        }),
        Value::Object(_) => EntityUid::from_json(value.clone())
            .map_err(|e| InputError::new(field, describe(&e))),
        Value::Null => Err(InputError::new(field, "is required")),
        other => Err(InputError::new(
            field,
            format!(
                "expected an entity reference like {{\"type\": \"User\", \"id\": \"alice\"}} or \"User::\\\"alice\\\"\", found `{other}`"
            ),
        )),
    }
}

/// Like [`parse_uid`], but an object `{"type": T, "id": I}` whose type `T`
/// is declared in the snapshot's schema is built without running Cedar's name
/// parser: `T` is then exactly the canonical name Cedar would parse it to,
/// and the id is taken verbatim, as Cedar's JSON form takes it. Anything else
/// goes to [`parse_uid`].
pub fn parse_uid_in(
    snapshot: &PolicySnapshot,
    field: &str,
    value: &Value,
) -> Result<EntityUid, InputError> {
    if let Value::Object(map) = value {
        if let (2, Some(Value::String(ty)), Some(Value::String(id))) =
            (map.len(), map.get("type"), map.get("id"))
        {
            if let Some(name) = snapshot.type_names.get(ty) {
                return Ok(EntityUid::from_type_name_and_id(
                    name.clone(),
                    EntityId::new(id),
                ));
            }
        }
    }
    parse_uid(field, value)
}

/// Builds a request. With `validate`, the principal and resource types must
/// be ones the action applies to and the context must match the action's
/// declared context, as Cedar's request validation says; without it (Cedar's
/// test format allows that per request), only the context is read against the
/// schema.
pub fn build_request(
    snapshot: &PolicySnapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Option<&Value>,
    validate: bool,
) -> Result<Request, InputError> {
    let schema = &snapshot.schema;
    let empty = match context {
        None | Some(Value::Null) => true,
        Some(Value::Object(attrs)) => attrs.is_empty(),
        Some(_) => false,
    };
    let context = match context {
        None | Some(Value::Null) => Context::empty(),
        Some(v @ Value::Object(_)) => {
            if snapshot.action_entities.get(&action).is_some() {
                Context::from_json_value(v.clone(), Some((schema, &action)))
                    .map_err(|e| InputError::new("context", describe(&e)))?
            } else if validate {
                return Err(InputError::new(
                    "action",
                    format!("unknown action `{action}`"),
                ));
            } else {
                Context::from_json_value(v.clone(), None)
                    .map_err(|e| InputError::new("context", describe(&e)))?
            }
        }
        Some(other) => {
            return Err(InputError::new(
                "context",
                format!("expected a JSON object, found `{other}`"),
            ))
        }
    };
    // Cedar's request validation is its scope check, then its context
    // check; each is skipped where the snapshot knows it passes.
    if validate {
        let known = &snapshot.valid_requests;
        if !known.scope(&principal, &action, &resource) {
            cedar_policy::validate_scope_variables(&principal, &action, &resource, schema)
                .map_err(invalid_request)?;
        }
        if !(empty && known.empty_context(&action)) {
            context.validate(schema, &action).map_err(invalid_request)?;
        }
    }
    Request::new(principal, action, resource, context, None).map_err(invalid_request)
}

/// The 400 for a request Cedar's request validation refuses, naming the
/// field at fault.
fn invalid_request(e: cedar_policy::RequestValidationError) -> InputError {
    use cedar_policy::RequestValidationError as R;
    let field = match &e {
        R::UndeclaredAction(_) | R::ExternalAction(_) => "action",
        R::UndeclaredPrincipalType(_) | R::InvalidPrincipalType(_) => "principal",
        R::UndeclaredResourceType(_) | R::InvalidResourceType(_) => "resource",
        R::InvalidContext(_) | R::TypeOfContext(_) => "context",
        // Enumerated-entity errors name the entity in their message.
        _ => "request",
    };
    InputError::new(field, describe(&e))
}

/// Parses entities in Cedar's JSON entity format against the snapshot's
/// schema, adding the schema's action entities and the entity data files'
/// entities. Every entity must conform to
/// the schema (declared type, attribute types, parent types).
pub fn parse_entities(snapshot: &PolicySnapshot, value: &Value) -> Result<Entities, InputError> {
    match value {
        Value::Null => Ok(snapshot.base_entities.clone()),
        Value::Array(items) => {
            let mut decoded = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let entity = decode::entity_from_value(&snapshot.shapes, &snapshot.schema, item)
                    .map_err(|e| InputError::new(format!("entities[{i}]"), describe(&*e)))?;
                decoded.push(entity);
            }
            assemble(snapshot, decoded, Vec::new(), || value.to_string())
        }
        other => Err(not_an_array(other)),
    }
}

/// Like [`parse_entities`], from the raw JSON text of the array, as the HTTP
/// API receives it. Each entity is decoded by Cedar's own parser against the
/// schema; the decoding is remembered per snapshot, keyed by the entity's
/// exact JSON text, because services send the same users and accounts again
/// and again and Cedar's JSON entity parser dominates the cost of a check.
/// A remembered entity is exactly what Cedar's parser made of exactly that
/// text under exactly this schema, so the memo cannot change an answer.
pub fn parse_entities_raw(
    snapshot: &PolicySnapshot,
    raw: &RawValue,
) -> Result<Entities, InputError> {
    Ok(assemble_raw(snapshot, raw)?.entities)
}

/// Decodes each entity of a raw JSON array against the snapshot's schema
/// (through the snapshot's memo), without assembling them.
pub fn decode_entities_raw(
    snapshot: &PolicySnapshot,
    raw: &RawValue,
) -> Result<Vec<Entity>, InputError> {
    let items: Vec<&RawValue> = match serde_json::from_str(raw.get()) {
        Ok(items) => items,
        Err(_) => {
            let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            return Err(not_an_array(&value));
        }
    };
    let mut decoded = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = item.get();
        let entity = match snapshot.entity_cache.entities.get(text) {
            Some(e) => e,
            None => {
                let e = decode::entity_from_str(&snapshot.shapes, &snapshot.schema, text)
                    .map_err(|e| InputError::new(format!("entities[{i}]"), describe(&*e)))?;
                snapshot.entity_cache.entities.insert(text, &e, 0);
                e
            }
        };
        decoded.push(entity);
    }
    Ok(decoded)
}

/// Puts decoded inline entities, cedard's own `extra` entities (built and
/// checked against the schema by cedard) and the schema's action entities
/// together.
///
/// Cedar's batch parser adds the schema's action entities and computes the
/// hierarchy over everything; here the action entities were built once per
/// snapshot and everything is merged in one hierarchy computation. Inline
/// action entities are rare and have special rules (they must equal the
/// schema's), so a set with one is handed whole (`whole()` is its JSON text)
/// to Cedar's batch parser instead.
fn assemble(
    snapshot: &PolicySnapshot,
    inline: Vec<Entity>,
    extra: Vec<Entity>,
    whole: impl FnOnce() -> String,
) -> Result<Entities, InputError> {
    let merge_error =
        |e: cedar_policy::entities_errors::EntitiesError| InputError::new("entities", describe(&e));
    if inline
        .iter()
        .any(|e| snapshot.action_entities.get(&e.uid()).is_some())
    {
        let entities =
            Entities::from_json_str(&whole(), Some(&snapshot.schema)).map_err(merge_error)?;
        if extra.is_empty() && snapshot.data.is_empty() {
            return Ok(entities);
        }
        return entities
            .add_entities(snapshot.data.entities.iter().cloned().chain(extra), None)
            .map_err(merge_error);
    }
    if inline.is_empty() && extra.is_empty() {
        return Ok(snapshot.base_entities.clone());
    }
    snapshot
        .base_entities
        .clone()
        .add_entities(inline.into_iter().chain(extra), None)
        .map_err(merge_error)
}

fn not_an_array(value: &Value) -> InputError {
    InputError::new(
        "entities",
        format!("expected a JSON array of entities, found {}", kind(value)),
    )
}

/// Decodes and assembles a raw JSON array of inline entities, remembering the
/// result per snapshot under the array's exact text: services that send the
/// same entities again (the same pod, the same user) then skip both Cedar's
/// JSON parser and its hierarchy computation. Entities cedard adds later
/// (stored users and accounts) are merged by the caller, per request.
pub fn assemble_raw(snapshot: &PolicySnapshot, raw: &RawValue) -> Result<Assembled, InputError> {
    if let Some(hit) = remembered_set(snapshot, raw) {
        return Ok(hit);
    }
    let decoded = decode_entities_raw(snapshot, raw)?;
    let uids: Vec<EntityUid> = decoded.iter().map(Entity::uid).collect();
    let entities = assemble_with(snapshot, raw, decoded, Vec::new())?;
    Ok(Assembled { uids, entities })
}

/// The assembly of exactly this array text remembered by the snapshot.
pub fn remembered_set(snapshot: &PolicySnapshot, raw: &RawValue) -> Option<Assembled> {
    snapshot.entity_cache.sets.get(raw.get())
}

/// Assembles `decoded` (the entities of `raw`, see [`decode_entities_raw`])
/// with cedard's `extra` entities in one hierarchy computation. The inline
/// entities alone are remembered under the text of `raw` on its second
/// sighting (built apart only then, when `extra` is not empty).
pub fn assemble_with(
    snapshot: &PolicySnapshot,
    raw: &RawValue,
    decoded: Vec<Entity>,
    extra: Vec<Entity>,
) -> Result<Entities, InputError> {
    let text = raw.get();
    let whole = || text.to_owned();
    let sets = &snapshot.entity_cache.sets;
    if sets.admits(text) {
        // Remembered without cedard's entities, which are the request's.
        let assembled = Assembled {
            uids: decoded.iter().map(Entity::uid).collect(),
            entities: assemble(snapshot, decoded.clone(), Vec::new(), whole)?,
        };
        // The set also holds the schema's action entities and the data
        // files'.
        let shared = (snapshot.action_entities.iter().count() + snapshot.data.len()) * 256;
        sets.store(text, &assembled, shared);
        if extra.is_empty() {
            return Ok(assembled.entities);
        }
    }
    assemble(snapshot, decoded, extra, whole)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null or not JSON",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A policy that contributed to a decision.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Reason {
    /// The policy's id.
    pub policy_id: String,
    /// Its file, relative to the policy folder.
    pub file: String,
    /// The line it starts on.
    pub line: usize,
}

/// A policy whose evaluation failed. Such a policy is skipped, as Cedar
/// specifies, so an error can only ever remove an allow, never add one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EvalError {
    /// The policy's id.
    pub policy_id: String,
    /// What went wrong.
    pub message: String,
}

/// The answer to one request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Decision {
    /// The decision: `allow` or `deny`.
    #[serde(serialize_with = "ser_decision", rename = "decision")]
    #[schema(value_type = Effect)]
    pub allow: bool,
    /// The policies that determined the decision, sorted by id.
    pub reasons: Vec<Reason>,
    /// The policies that failed to evaluate, sorted by id.
    pub errors: Vec<EvalError>,
    /// What the question carried that the decision did not use (only an
    /// AuthZEN question is answered so; cedard's own API refuses it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<SetAside>,
}

/// What a question carried that its decision did not use, and why: the
/// properties of an entity cedard knows (its stored facts count, never a
/// caller's), or context attributes the action does not declare (under
/// strict validation no policy can read them, so leaving them out changes
/// no answer).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SetAside {
    /// Where in the question: `context`, or `entities[i]` (an inline
    /// entity: an AuthZEN subject's or resource's `properties`).
    pub field: String,
    /// The attribute names left out, sorted.
    pub names: Vec<String>,
    /// Why.
    pub why: String,
}

fn ser_decision<S: serde::Serializer>(allow: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(Effect::from_allow(*allow).as_str())
}

/// The word for a decision, `allow` or `deny`, wherever one is read or
/// written (JSON answers, test files, the matrix, logs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Permitted.
    Allow,
    /// Not permitted.
    Deny,
}

impl Effect {
    /// `Allow` for `true`.
    pub fn from_allow(allow: bool) -> Self {
        if allow {
            Effect::Allow
        } else {
            Effect::Deny
        }
    }

    /// Whether this is `Allow`.
    pub fn is_allow(self) -> bool {
        self == Effect::Allow
    }

    /// `"allow"` or `"deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Effect {
    type Err = String;

    /// Reads `allow` or `deny`, in any case.
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.to_ascii_lowercase().as_str() {
            "allow" => Ok(Effect::Allow),
            "deny" => Ok(Effect::Deny),
            _ => Err(format!("expected `allow` or `deny`, found `{word}`")),
        }
    }
}

/// Decides one request against one snapshot.
///
/// Only the policies whose scope can match the request are evaluated (see
/// `policy::slice`): the answer is the whole set's, reasons and errors
/// included.
pub fn decide(snapshot: &PolicySnapshot, request: &Request, entities: &Entities) -> Decision {
    let policies = snapshot.slices.get(request).unwrap_or(&snapshot.policies);
    let response = Authorizer::new().is_authorized(request, policies, entities);
    to_decision(snapshot, &response)
}

fn to_decision(snapshot: &PolicySnapshot, response: &Response) -> Decision {
    let allow = response.decision() == cedar_policy::Decision::Allow;
    let mut reasons: Vec<Reason> = response
        .diagnostics()
        .reason()
        .map(|id| reason_of(snapshot, id))
        .collect();
    reasons.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
    let mut errors: Vec<EvalError> = response
        .diagnostics()
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(inner) = e;
            EvalError {
                policy_id: inner.policy_id().to_string(),
                message: describe(e),
            }
        })
        .collect();
    errors.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
    Decision {
        allow,
        reasons,
        errors,
        ignored: Vec::new(),
    }
}

fn reason_of(snapshot: &PolicySnapshot, id: &PolicyId) -> Reason {
    match snapshot.meta_of(id) {
        Some(m) => Reason {
            policy_id: m.id.clone(),
            file: m.file.clone(),
            line: m.line,
        },
        None => Reason {
            policy_id: id.to_string(),
            file: String::new(),
            line: 0,
        },
    }
}
