//! The OpenID AuthZEN Authorization API 1.0: the metadata document, access
//! evaluation (single and boxcarred) and subject, resource and action search.
//!
//! Only wire shapes live here. An AuthZEN question becomes a pipeline
//! question as follows: `subject {type, id}` is the principal `<type>::"<id>"`,
//! `action {name}` the schema's action with that id, `resource {type, id}` the
//! resource, `context` the Cedar context. `properties` of a subject or
//! resource make it an inline entity with those attributes (no parents),
//! read against the schema, so a resource the PDP does not know (a todo, a
//! pod) can be described by the caller. Every call asks with
//! [`Surplus::Ignore`]: the properties of a subject or resource that cedard
//! stores or an entity data file defines, and context attributes the action
//! does not declare, are left out (they cannot count) and the answer's
//! `context.ignored` names them, spelled as the request spelled them. The
//! answers are otherwise exactly the spec's shapes: `{"decision": true}`
//! unless the caller asks for an explanation with
//! `"options": {"explain": true}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{parse_json, Attributes, CallerInfo, ConsistencyBody, ContextBody};
use super::state::AppState;
use super::tokens;
use crate::authz::{Decision, InputError, SetAside};
use crate::code::Code;
use crate::facts::Inline;
use crate::identity::Verified;
use crate::pdp::{ActionRef, Caller, Item, Principal, Query, Search, Slot, Surplus, Until};
use crate::policy::Revision;
use std::collections::HashMap;
use std::sync::Arc;

/// The most results one search page holds, and the page size when the
/// caller names none.
pub const MAX_PAGE: usize = 1000;

/// The AuthZEN routes that need a `decide` key.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(evaluation))
        .routes(routes!(evaluations))
        .routes(routes!(search_subject))
        .routes(routes!(search_resource))
        .routes(routes!(search_action))
}

/// The metadata document, which needs no key: it tells only where the
/// endpoints are, like any `.well-known` document.
pub fn discovery() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(configuration))
}

/// A subject or resource: `{type, id, properties?}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Entity {
    /// The entity type, as the schema names it (`user`, `Account`).
    #[serde(rename = "type")]
    kind: String,
    /// The entity id (left out, or ignored, for the searched part).
    #[serde(default)]
    id: Option<String>,
    /// Attributes of an entity the PDP does not know, read against the
    /// schema's declaration of the type; left out (and said to be, in the
    /// answer's `context.ignored`) for one it stores or a data file
    /// defines.
    #[serde(default)]
    #[schema(value_type = Option<Attributes>)]
    properties: Option<Map<String, Value>>,
}

/// An action: `{name, properties?}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Action {
    /// The id of one of the schema's actions.
    name: String,
    /// Refused when not empty: Cedar actions have no attributes a request
    /// can set (send such facts in `context`).
    #[serde(default)]
    #[schema(value_type = Option<Attributes>)]
    properties: Option<Map<String, Value>>,
}

/// Where an evaluations call stops (read as text, so that an unknown one
/// is refused naming the three).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum EvaluationsSemantic {
    /// Answer every item (the default).
    ExecuteAll,
    /// Stop after the first deny (or item error).
    DenyOnFirstDeny,
    /// Stop after the first permit.
    PermitOnFirstPermit,
}

/// Options of an evaluation call.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Options {
    /// `execute_all` (default), `deny_on_first_deny` or
    /// `permit_on_first_permit`.
    #[serde(default)]
    #[schema(value_type = Option<EvaluationsSemantic>)]
    evaluations_semantic: Option<String>,
    /// Answer with a `context` naming the deciding policies, the evaluation
    /// errors and the policy revision.
    #[serde(default)]
    explain: bool,
    /// How fresh the stored facts must be: `"minimize_latency"` (default),
    /// `"full"`, or `{"at_least": <store_revision of a write>}`.
    #[serde(default)]
    consistency: Option<ConsistencyBody>,
}

impl Options {
    fn consistency(&self) -> crate::pdp::Consistency {
        self.consistency.map(Into::into).unwrap_or_default()
    }
}

/// One access evaluation request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluationBody {
    subject: Entity,
    action: Action,
    resource: Entity,
    #[serde(default)]
    #[schema(value_type = Option<ContextBody>)]
    context: Option<Value>,
    #[serde(default)]
    options: Option<Options>,
}

/// One item of an evaluations call: each part overrides the top-level one.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EvaluationItem {
    #[serde(default)]
    subject: Option<Entity>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    resource: Option<Entity>,
    #[serde(default)]
    #[schema(value_type = Option<ContextBody>)]
    context: Option<Value>,
}

/// Several evaluations with top-level defaults.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluationsBody {
    #[serde(default)]
    subject: Option<Entity>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    resource: Option<Entity>,
    #[serde(default)]
    #[schema(value_type = Option<ContextBody>)]
    context: Option<Value>,
    #[serde(default)]
    evaluations: Option<Vec<EvaluationItem>>,
    #[serde(default)]
    options: Option<Options>,
}

/// A page request: the token of the previous page, and a size.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PageRequest {
    /// `page.next_token` of the previous answer.
    #[serde(default)]
    token: Option<String>,
    /// The same, under the name the drafts used.
    #[serde(default)]
    next_token: Option<String>,
    /// The most results to return (1 to 1000; 1000 when left out).
    #[serde(default)]
    limit: Option<usize>,
}

/// A search request; the searched part names only its type.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SearchBody {
    subject: Entity,
    #[serde(default)]
    action: Option<Action>,
    resource: Entity,
    #[serde(default)]
    #[schema(value_type = Option<ContextBody>)]
    context: Option<Value>,
    #[serde(default)]
    page: Option<PageRequest>,
    /// `consistency`, as for an evaluation (`explain` does not apply).
    #[serde(default)]
    options: Option<Options>,
}

/// A decision, as the spec shapes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionBody {
    /// Allow (`true`) or deny.
    decision: bool,
    /// Present on request (`options.explain`), on a per-item error, and on
    /// the item that stopped a short-circuiting call.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DecisionContext>)]
    context: Option<Value>,
}

/// The `context` of an AuthZEN answer: each part present only where it
/// applies.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DecisionContext {
    /// With `options.explain`: the ids of the deciding policies.
    reasons: Option<Vec<String>>,
    /// With `options.explain`: the policies that failed to evaluate.
    errors: Option<Vec<crate::authz::EvalError>>,
    /// With `options.explain`: the policy set that answered.
    revision: Option<Revision>,
    /// What the question carried that the decision did not use: the
    /// properties of a subject or resource cedard knows (its own facts
    /// count), context attributes the action does not declare.
    ignored: Option<Vec<SetAside>>,
    /// An item of an evaluations call that could not be evaluated: why.
    error: Option<ItemError>,
    /// On the deny that stopped a `deny_on_first_deny` call: `"200"`.
    code: Option<String>,
    /// On the deny that stopped a `deny_on_first_deny` call:
    /// `"deny_on_first_deny"`.
    reason: Option<String>,
}

/// Why an item of an evaluations call could not be evaluated.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ItemError {
    /// `400`.
    status: u16,
    /// What is wrong, naming the field (`evaluations[2].subject.id: …`).
    message: String,
}

/// The answers of an evaluations call, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationsResponse {
    evaluations: Vec<DecisionBody>,
}

/// One page of search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// `{type, id}` for subject and resource search, `{name}` for actions.
    #[schema(value_type = Vec<SearchResult>)]
    results: Vec<Value>,
    /// Where the next page starts.
    #[schema(value_type = PageOut)]
    page: Value,
    /// Present when the search's question carried something its decisions
    /// did not use: `{"ignored": [{"field", "names", "why"}]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DecisionContext>)]
    context: Option<Value>,
}

/// One search result.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum SearchResult {
    /// A subject or resource: `{type, id}`.
    Entity {
        /// The entity type.
        #[serde(rename = "type")]
        kind: String,
        /// The entity id.
        id: String,
    },
    /// An action: `{name}`.
    Action {
        /// The action's id.
        name: String,
    },
}

/// Where the next page of a search starts.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PageOut {
    /// Pass back as `page.next_token` for the next page; empty on the last
    /// page.
    next_token: String,
}

/// The AuthZEN metadata document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Configuration {
    policy_decision_point: String,
    access_evaluation_endpoint: String,
    access_evaluations_endpoint: String,
    search_subject_endpoint: String,
    search_resource_endpoint: String,
    search_action_endpoint: String,
}

/// The pipeline's caller for an AuthZEN call at `endpoint`: what cannot
/// count towards an answer is left out and noted ([`Surplus::Ignore`]), and
/// the stored facts are as fresh as `options` ask.
fn asker(caller: &CallerInfo, endpoint: &'static str, options: Option<&Options>) -> Caller {
    let mut who = caller.caller(endpoint);
    who.surplus = Surplus::Ignore;
    who.consistency = options.map(Options::consistency).unwrap_or_default();
    who
}

/// An entity reference for the pipeline.
fn reference(entity: &Entity, id: &str) -> Value {
    json!({"type": entity.kind, "id": id})
}

/// The id of a part that must name one (`field` names it in errors).
fn id_of<'a>(entity: &'a Entity, field: &str) -> Result<&'a str, InputError> {
    entity
        .id
        .as_deref()
        .ok_or_else(|| InputError::new(format!("{field}.id"), "required"))
}

/// The verified tokens of a call, by their text.
type Tokens = HashMap<String, Arc<Verified>>;

/// The token a subject carries in `properties.token`, if any; with one,
/// the subject's `type` and `id` may be left empty, and must otherwise name
/// the token's subject (checked against the verified token).
fn subject_token<'a>(subject: &'a Entity, field: &str) -> Result<Option<&'a str>, InputError> {
    match subject.properties.as_ref().and_then(|p| p.get("token")) {
        None => Ok(None),
        Some(Value::String(t)) => Ok(Some(t)),
        Some(_) => Err(InputError::new(
            format!("{field}.properties.token"),
            "must be a string: the subject's OpenID Connect / JWT token",
        )),
    }
}

/// Verifies every `subject.properties.token` of an AuthZEN body (the
/// call's subject and each evaluation's) before it is decided; a refused
/// token refuses the call (a 401 with its reason).
async fn verify_subject_tokens(state: &AppState, body: &[u8]) -> Result<Tokens, ApiError> {
    let mut tokens = Tokens::new();
    const FIELD: &[u8] = b"\"token\"";
    if !body.windows(FIELD.len()).any(|w| w == FIELD) {
        return Ok(tokens);
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(tokens);
    };
    // (token, id, type) of each subject with a token, owned, before any
    // verification awaits.
    let mut subjects: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    let mut take = |subject: Option<&Value>| {
        let Some(subject) = subject else { return };
        if let Some(token) = subject
            .get("properties")
            .and_then(|p| p.get("token"))
            .and_then(Value::as_str)
        {
            let text = |k: &str| {
                subject
                    .get(k)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            };
            subjects.push((token.to_owned(), text("id"), text("type")));
        }
    };
    take(value.get("subject"));
    if let Some(items) = value.get("evaluations").and_then(Value::as_array) {
        for item in items {
            take(item.get("subject"));
        }
    }
    for (token, id, kind) in subjects {
        let verified = match tokens.get(&token) {
            Some(v) => v.clone(),
            None => tokens::verify(state, &token, "subject.properties.token", false).await?,
        };
        for (field, given, named) in [
            ("subject.id", id, &verified.id),
            ("subject.type", kind, &verified.principal_type),
        ] {
            if given.is_some_and(|g| g != *named) {
                return Err(InputError::new(
                    field,
                    format!(
                        "the token's subject has `{named}` here; leave it empty or name the same"
                    ),
                )
                .into());
            }
        }
        tokens.insert(token, verified);
    }
    Ok(tokens)
}

/// Refuses action properties: Cedar cannot give an action request-time
/// attributes, and ignoring them could change what the caller meant.
fn check_action(action: &Action, field: &str) -> Result<(), InputError> {
    match &action.properties {
        Some(p) if !p.is_empty() => Err(InputError::new(
            format!("{field}.properties"),
            "Cedar actions have no request-time attributes; send these facts in `context`",
        )),
        _ => Ok(()),
    }
}

/// The inline entities the properties of `parts` describe, as the text of
/// a Cedar JSON array (so that the snapshot's memo of decoded entities
/// serves repeated properties, as it does `/v1`'s entities), with the name
/// of each one's `properties` field (`subject.properties`).
fn inline_entities(
    parts: &[(&Entity, &str, &'static str)],
) -> (Option<Box<RawValue>>, Vec<&'static str>) {
    let mut names = Vec::new();
    let items: Vec<Value> = parts
        .iter()
        .filter_map(|(entity, id, name)| {
            let properties = entity.properties.as_ref().filter(|p| !p.is_empty())?;
            names.push(*name);
            Some(json!({
                "uid": {"type": entity.kind, "id": id},
                "attrs": properties,
                "parents": [],
            }))
        })
        .collect();
    let raw = (!items.is_empty())
        .then(|| RawValue::from_string(Value::Array(items).to_string()).ok())
        .flatten();
    (raw, names)
}

/// Names a pipeline error's field as the AuthZEN request spelled it:
/// `principal` is `subject`, `entities[i]` the `properties` of the part that
/// became inline entity `i` (`inline` names them), under `prefix`.
fn renamed(e: InputError, inline: &[&str], prefix: &str) -> InputError {
    InputError::new(spelled(&e.field, inline, prefix), e.message)
}

/// A pipeline field name as the AuthZEN request spelled it (see
/// [`renamed`]).
fn spelled(field: &str, inline: &[&str], prefix: &str) -> String {
    let spelled = if let Some(rest) = field.strip_prefix("principal") {
        format!("subject{rest}")
    } else if field == "action" {
        "action.name".to_owned()
    } else if let Some(rest) = field.strip_prefix("entities[") {
        match rest.split_once(']') {
            Some((i, tail)) => match i.parse::<usize>().ok().and_then(|i| inline.get(i)) {
                Some(name) => format!("{name}{tail}"),
                None => field.to_owned(),
            },
            None => field.to_owned(),
        }
    } else if field == "entities" {
        "properties".to_owned()
    } else {
        field.to_owned()
    };
    match (prefix.is_empty(), spelled.is_empty()) {
        (true, _) => spelled,
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{spelled}"),
    }
}

/// What a decision left out of the question, as the request spelled it:
/// `[{"field": "subject.properties", "names": [...], "why": ...}]`.
fn ignored(notes: &[SetAside], inline: &[&str], prefix: &str) -> Value {
    Value::Array(
        notes
            .iter()
            .map(|n| {
                json!({
                    "field": spelled(&n.field, inline, prefix),
                    "names": n.names,
                    "why": n.why,
                })
            })
            .collect(),
    )
}

/// One evaluation, assembled: references, context and inline entities.
struct Asked {
    principal: Value,
    action: String,
    resource: Value,
    context: Option<Value>,
    inline: Option<Box<RawValue>>,
    /// The request fields the inline entities came from, in order.
    inline_names: Vec<&'static str>,
    /// Where the question sits in the request (`evaluations[2]`).
    prefix: String,
    /// The verified token of `subject.properties.token`, whose subject is
    /// the principal.
    token: Option<Arc<Verified>>,
    /// What of the subject was set aside for the token's facts.
    notes: Vec<SetAside>,
}

impl Asked {
    fn new(
        subject: &Entity,
        action: &Action,
        resource: &Entity,
        context: Option<&Value>,
        prefix: &str,
        tokens: &Tokens,
    ) -> Result<Self, InputError> {
        let at = |f: &str| {
            if prefix.is_empty() {
                f.to_owned()
            } else {
                format!("{prefix}.{f}")
            }
        };
        let resource_id = id_of(resource, &at("resource"))?;
        check_action(action, &at("action"))?;
        if let Some(token) = subject_token(subject, &at("subject"))? {
            let verified = tokens.get(token).cloned().ok_or_else(|| {
                InputError::new(at("subject.properties.token"), "was not verified")
            })?;
            let (inline, inline_names) =
                inline_entities(&[(resource, resource_id, "resource.properties")]);
            let mut notes = Vec::new();
            let rest: Vec<String> = subject
                .properties
                .iter()
                .flat_map(|p| p.keys())
                .filter(|k| k.as_str() != "token")
                .cloned()
                .collect();
            if !rest.is_empty() {
                notes.push(SetAside {
                    field: "subject.properties".into(),
                    names: rest,
                    why: "the subject is the token's: its facts come from the token and cedard's store, never a caller's".into(),
                });
            }
            return Ok(Self {
                principal: reference(subject, &verified.id),
                action: action.name.clone(),
                resource: reference(resource, resource_id),
                context: context.cloned(),
                inline,
                inline_names,
                prefix: prefix.to_owned(),
                token: Some(verified),
                notes,
            });
        }
        let subject_id = id_of(subject, &at("subject"))?;
        let (inline, inline_names) = inline_entities(&[
            (subject, subject_id, "subject.properties"),
            (resource, resource_id, "resource.properties"),
        ]);
        Ok(Self {
            principal: reference(subject, subject_id),
            action: action.name.clone(),
            resource: reference(resource, resource_id),
            context: context.cloned(),
            inline,
            inline_names,
            prefix: prefix.to_owned(),
            token: None,
            notes: Vec::new(),
        })
    }

    /// A pipeline error about this question, named as the request spells it.
    fn error(&self, e: InputError) -> InputError {
        renamed(e, &self.inline_names, &self.prefix)
    }

    /// The answer to this question as the spec shapes it (see [`shaped`]).
    fn answer(&self, decision: &Decision, explain: bool, revision: &Revision) -> DecisionBody {
        let mut body = shaped(decision, explain, revision);
        if !decision.ignored.is_empty() || !self.notes.is_empty() {
            let all: Vec<SetAside> = self
                .notes
                .iter()
                .chain(&decision.ignored)
                .cloned()
                .collect();
            let notes = ignored(&all, &self.inline_names, &self.prefix);
            body.context
                .get_or_insert_with(|| json!({}))
                .as_object_mut()
                .map(|c| c.insert("ignored".into(), notes));
        }
        body
    }

    fn item(&self) -> Item<'_> {
        Item {
            query: Query {
                principal: match &self.token {
                    Some(t) => Principal::Token(t),
                    None => Principal::Ref(&self.principal),
                },
                action: ActionRef::Name(&self.action),
                resource: &self.resource,
                context: self.context.as_ref(),
            },
            inline: Inline::raw(self.inline.as_deref()),
        }
    }
}

/// A decision as the spec shapes it; with `explain`, the deciding policies,
/// the evaluation errors and the revision in `context`.
fn shaped(decision: &Decision, explain: bool, revision: &Revision) -> DecisionBody {
    DecisionBody {
        decision: decision.allow,
        context: explain.then(|| {
            json!({
                "reasons": decision.reasons.iter().map(|r| r.policy_id.clone()).collect::<Vec<_>>(),
                "errors": decision.errors,
                "revision": revision,
            })
        }),
    }
}

/// A per-item error, as the spec shapes one: a deny with the reason.
fn item_error(e: &InputError) -> DecisionBody {
    DecisionBody {
        decision: false,
        context: Some(json!({"error": {"status": 400, "message": e.to_string()}})),
    }
}

/// May this subject do this action on this resource? (AuthZEN)
#[utoipa::path(
    post,
    path = "/access/v1/evaluation",
    tag = "authzen",
    request_body = EvaluationBody,
    responses(
        (status = 200, description = "The decision: `{\"decision\": true|false}`", body = DecisionBody),
        (status = 400, description = "Malformed or invalid question; the message names the field", body = ErrorBody),
        (status = 401, description = "No valid caller key", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn evaluation(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tokens = verify_subject_tokens(&state, &body).await?;
    // A remote store's reads block: they run off the async workers.
    if state.pdp.store().is_remote() {
        tokio::task::spawn_blocking(move || evaluate_one(&state, &caller, &body, &tokens)).await?
    } else {
        evaluate_one(&state, &caller, &body, &tokens)
    }
}

fn evaluate_one(
    state: &AppState,
    caller: &CallerInfo,
    body: &[u8],
    tokens: &Tokens,
) -> Result<Response, ApiError> {
    let body: EvaluationBody = parse_json(body)?;
    let explain = body.options.as_ref().is_some_and(|o| o.explain);
    if let Some(o) = &body.options {
        if o.evaluations_semantic.is_some() {
            return Err(InputError::new(
                "options.evaluations_semantic",
                "applies to `/access/v1/evaluations` only",
            )
            .into());
        }
    }
    let asked = Asked::new(
        &body.subject,
        &body.action,
        &body.resource,
        body.context.as_ref(),
        "",
        tokens,
    )?;
    let who = asker(caller, "/access/v1/evaluation", body.options.as_ref());
    let mut evaluated = state.pdp.evaluate(&who, &[Ok(asked.item())], Until::All)?;
    match evaluated.outcomes.pop() {
        Some(Ok(d)) => Ok(Json(asked.answer(&d, explain, &evaluated.revision)).into_response()),
        Some(Err(e)) => Err(asked.error(e).into()),
        None => Err(ApiError::new(
            Code::Internal,
            "the pipeline answered no decision for one question",
        )),
    }
}

/// Several evaluations in one call, with top-level defaults (AuthZEN).
#[utoipa::path(
    post,
    path = "/access/v1/evaluations",
    tag = "authzen",
    request_body = EvaluationsBody,
    responses(
        (status = 200, description = "`{\"evaluations\": [...]}` in request order (cut short by `deny_on_first_deny` or `permit_on_first_permit`); without `evaluations`, one `{\"decision\"}`. A bad item is `{\"decision\": false, \"context\": {\"error\": ...}}`", body = EvaluationsResponse),
        (status = 400, description = "The payload is malformed (not the JSON of an evaluations call, a key given twice, too many items); an item that cannot be evaluated is answered in place instead", body = ErrorBody),
        (status = 401, description = "No valid caller key", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn evaluations(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tokens = verify_subject_tokens(&state, &body).await?;
    tokio::task::spawn_blocking(move || {
        let body: EvaluationsBody = parse_json(&body)?;
        let options = body.options.clone().unwrap_or_default();
        let who = asker(&caller, "/access/v1/evaluations", Some(&options));
        let until = match options.evaluations_semantic.as_deref() {
            None | Some("execute_all") => Until::All,
            Some("deny_on_first_deny") => Until::FirstDeny,
            Some("permit_on_first_permit") => Until::FirstPermit,
            Some(other) => {
                return Err(InputError::new(
                    "options.evaluations_semantic",
                    format!(
                        "`{}` is not one of `execute_all`, `deny_on_first_deny`, `permit_on_first_permit`",
                        crate::authz::clip(other)
                    ),
                )
                .into())
            }
        };
        let items = match body.evaluations.as_deref() {
            // Without items the call is one evaluation, answered as one.
            None | Some([]) => None,
            Some(items) => Some(items),
        };
        let Some(items) = items else {
            let (Some(subject), Some(action), Some(resource)) =
                (&body.subject, &body.action, &body.resource)
            else {
                return Err(InputError::new(
                    "evaluations",
                    "without `evaluations`, `subject`, `action` and `resource` are required",
                )
                .into());
            };
            let asked = Asked::new(
                subject,
                action,
                resource,
                body.context.as_ref(),
                "",
                &tokens,
            )?;
            let mut evaluated = state.pdp.evaluate(&who, &[Ok(asked.item())], Until::All)?;
            return match evaluated.outcomes.pop() {
                Some(Ok(d)) => Ok(Json(asked.answer(
                    &d,
                    options.explain,
                    &evaluated.revision,
                ))
                .into_response()),
                Some(Err(e)) => Err(asked.error(e).into()),
                None => Err(ApiError::new(Code::Internal,
                    "the pipeline answered no decision for one question",
                )),
            };
        };
        let limit = state.limits.batch_limit;
        if items.len() > limit {
            return Err(InputError::new(
                "evaluations",
                format!(
                    "at most {limit} evaluations are accepted in one call, this one has {}",
                    items.len()
                ),
            )
            .into());
        }
        // Each item with the defaults filled in. An item that cannot be
        // evaluated (it lacks a part the call gives no default for, or a
        // part does not fit the schema) is answered in place, as the spec's
        // errors section asks: a deny with the error in its context.
        let mut asked: Vec<Result<Asked, InputError>> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = format!("evaluations[{i}]");
            let missing = |part: &str| {
                InputError::new(
                    format!("{field}.{part}"),
                    format!("required: the item has no `{part}` and the call gives no default"),
                )
            };
            let filled = (|| {
                let subject = item
                    .subject
                    .as_ref()
                    .or(body.subject.as_ref())
                    .ok_or_else(|| missing("subject"))?;
                let action = item
                    .action
                    .as_ref()
                    .or(body.action.as_ref())
                    .ok_or_else(|| missing("action"))?;
                let resource = item
                    .resource
                    .as_ref()
                    .or(body.resource.as_ref())
                    .ok_or_else(|| missing("resource"))?;
                let context = item.context.as_ref().or(body.context.as_ref());
                Asked::new(subject, action, resource, context, &field, &tokens)
            })();
            asked.push(filled);
        }
        let items: Vec<Result<Item<'_>, InputError>> = asked
            .iter()
            .map(|a| a.as_ref().map(Asked::item).map_err(Clone::clone))
            .collect();
        let evaluated = state.pdp.evaluate(&who, &items, until)?;
        let mut answers: Vec<DecisionBody> = Vec::with_capacity(items.len());
        for (outcome, asked) in evaluated.outcomes.into_iter().zip(&asked) {
            answers.push(match (outcome, asked) {
                (Ok(d), Ok(asked)) => asked.answer(&d, options.explain, &evaluated.revision),
                (Ok(d), Err(_)) => shaped(&d, options.explain, &evaluated.revision),
                (Err(e), Ok(asked)) => item_error(&asked.error(e)),
                (Err(e), Err(_)) => item_error(&e),
            });
        }
        mark_stop(&mut answers, until);
        Ok(Json(EvaluationsResponse {
            evaluations: answers,
        })
        .into_response())
    })
    .await?
}

/// Marks the deny that stopped a `deny_on_first_deny` call, as the spec's
/// example does (`"reason": "deny_on_first_deny"`); an item error keeps its
/// own context.
fn mark_stop(answers: &mut [DecisionBody], until: Until) {
    if until != Until::FirstDeny {
        return;
    }
    if let Some(last) = answers.last_mut() {
        if !last.decision && last.context.is_none() {
            last.context = Some(json!({"code": "200", "reason": "deny_on_first_deny"}));
        }
    }
}

/// Which subjects may do this action on this resource? (AuthZEN)
#[utoipa::path(
    post,
    path = "/access/v1/search/subject",
    tag = "authzen",
    request_body = SearchBody,
    responses(
        (status = 200, description = "The subjects of `subject.type` for which the evaluation would answer true, in id order; `page.next_token` is empty on the last page", body = SearchResponse),
        (status = 400, description = "Malformed or invalid search; the message names the field", body = ErrorBody),
        (status = 401, description = "No valid caller key", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn search_subject(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    search(state, caller, body, Slot::Subject).await
}

/// Which resources may this subject do this action on? (AuthZEN)
#[utoipa::path(
    post,
    path = "/access/v1/search/resource",
    tag = "authzen",
    request_body = SearchBody,
    responses(
        (status = 200, description = "The resources of `resource.type` for which the evaluation would answer true, in id order; `page.next_token` is empty on the last page", body = SearchResponse),
        (status = 400, description = "Malformed or invalid search; the message names the field", body = ErrorBody),
        (status = 401, description = "No valid caller key", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn search_resource(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    search(state, caller, body, Slot::Resource).await
}

/// What may this subject do on this resource? (AuthZEN)
#[utoipa::path(
    post,
    path = "/access/v1/search/action",
    tag = "authzen",
    request_body = SearchBody,
    responses(
        (status = 200, description = "The schema's actions for the two types for which the evaluation would answer true, as `{name}`, in name order", body = SearchResponse),
        (status = 400, description = "Malformed or invalid search; the message names the field", body = ErrorBody),
        (status = 401, description = "No valid caller key", body = ErrorBody),
        (status = 403, description = "The key lacks the `decide` scope", body = ErrorBody),
    ),
    security(("bearer" = ["decide"]))
)]
async fn search_action(
    State(state): State<AppState>,
    caller: CallerInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    search(state, caller, body, Slot::Action).await
}

/// The page token: the search it belongs to (a digest of the request
/// without its page) and the last result given, so that a token is refused
/// on another search and a page continues after the last result whatever
/// was written in between.
fn token(binding: &str, last: &str) -> String {
    format!("{binding}.{}", hex::encode(last))
}

/// What a page token binds to: a digest of the request without its page.
/// `body` has been read once already ([`parse_json`]), so it is JSON with
/// no key given twice.
fn binding(body: &[u8]) -> Result<String, ApiError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_json(format!("invalid request body: {e}")))?;
    if let Value::Object(map) = &mut value {
        map.remove("page");
    }
    let digest = Sha256::digest(value.to_string().as_bytes());
    Ok(hex::encode(&digest[..8]))
}

fn after_token(binding: &str, token: &str) -> Result<String, InputError> {
    let bad = || {
        InputError::new(
            "page.token",
            "not a token this search gave (tokens belong to the search that returned them)",
        )
    };
    let (b, last) = token.split_once('.').ok_or_else(bad)?;
    if b != binding {
        return Err(bad());
    }
    hex::decode(last)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(bad)
}

async fn search(
    state: AppState,
    caller: CallerInfo,
    body: Bytes,
    slot: Slot,
) -> Result<Response, ApiError> {
    let tokens = match slot {
        // The subject is what is searched: a token there names nobody.
        Slot::Subject => Tokens::new(),
        _ => verify_subject_tokens(&state, &body).await?,
    };
    // A search may decide thousands of candidates: off the async workers.
    tokio::task::spawn_blocking(move || {
        let parsed: SearchBody = parse_json(&body)?;
        let page = parsed.page.as_ref();
        let limit = page.and_then(|p| p.limit).unwrap_or(MAX_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(
                InputError::new("page.limit", format!("must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        let binding = binding(&body)?;
        let after = match page.and_then(|p| p.token.as_deref().or(p.next_token.as_deref())) {
            Some("") | None => None,
            Some(t) => Some(after_token(&binding, t)?),
        };
        // A subject with a token is the token's (as in an evaluation).
        let verified = match slot {
            Slot::Subject => None,
            _ => match subject_token(&parsed.subject, "subject")? {
                Some(t) => Some(tokens.get(t).cloned().ok_or_else(|| {
                    InputError::new("subject.properties.token", "was not verified")
                })?),
                None => None,
            },
        };
        // The searched part's id is ignored, as the spec says.
        let subject_id = match (slot, &verified) {
            (Slot::Subject, _) => "",
            (_, Some(v)) => v.id.as_str(),
            _ => id_of(&parsed.subject, "subject")?,
        };
        let resource_id = match slot {
            Slot::Resource => "",
            _ => id_of(&parsed.resource, "resource")?,
        };
        let action_name = match (slot, &parsed.action) {
            (Slot::Action, _) => "",
            (_, Some(a)) => {
                check_action(a, "action")?;
                a.name.as_str()
            }
            (_, None) => return Err(InputError::new("action", "required").into()),
        };
        let principal = reference(&parsed.subject, subject_id);
        let resource = reference(&parsed.resource, resource_id);
        let subject_part = (&parsed.subject, subject_id, "subject.properties");
        let resource_part = (&parsed.resource, resource_id, "resource.properties");
        let fixed = match (slot, &verified) {
            (Slot::Subject, _) => vec![resource_part],
            // The token's subject is cedard's to supply.
            (Slot::Resource, Some(_)) => vec![],
            (Slot::Action, Some(_)) => vec![resource_part],
            (Slot::Resource, None) => vec![subject_part],
            (Slot::Action, None) => vec![subject_part, resource_part],
        };
        let (inline, inline_names) = inline_entities(&fixed);
        let searched_type = match slot {
            Slot::Subject => parsed.subject.kind.as_str(),
            Slot::Resource => parsed.resource.kind.as_str(),
            Slot::Action => "",
        };
        let endpoint = match slot {
            Slot::Subject => "/access/v1/search/subject",
            Slot::Resource => "/access/v1/search/resource",
            Slot::Action => "/access/v1/search/action",
        };
        let who = asker(&caller, endpoint, parsed.options.as_ref());
        let found = state.pdp.search(
            &who,
            &Search {
                slot,
                principal: match &verified {
                    Some(v) => Principal::Token(v),
                    None => Principal::Ref(&principal),
                },
                action: ActionRef::Name(action_name),
                resource: &resource,
                searched_type,
                context: parsed.context.as_ref(),
                inline: Inline::raw(inline.as_deref()),
                after: after.as_deref(),
                limit,
            },
        );
        let found = match found {
            Err(crate::pdp::PdpError::Input(e)) => return Err(renamed(e, &inline_names, "").into()),
            other => other?,
        };
        let next = match (found.more, found.results.last()) {
            (true, Some(last)) => token(&binding, last),
            _ => String::new(),
        };
        let results = found
            .results
            .iter()
            .map(|id| match slot {
                Slot::Subject => json!({"type": parsed.subject.kind, "id": id}),
                Slot::Resource => json!({"type": parsed.resource.kind, "id": id}),
                Slot::Action => json!({"name": id}),
            })
            .collect();
        let context = (!found.ignored.is_empty())
            .then(|| json!({"ignored": ignored(&found.ignored, &inline_names, "")}));
        Ok(Json(SearchResponse {
            results,
            page: json!({"next_token": next}),
            context,
        })
        .into_response())
    })
    .await?
}

/// The AuthZEN metadata document: where each endpoint is, under
/// `--public-url`.
#[utoipa::path(
    get,
    path = "/.well-known/authzen-configuration",
    tag = "authzen",
    responses(
        (status = 200, description = "The PDP's AuthZEN metadata", body = Configuration),
    )
)]
async fn configuration(State(state): State<AppState>) -> Json<Configuration> {
    let base = state.accounts.public_url().to_owned();
    let at = |path: &str| format!("{base}{path}");
    Json(Configuration {
        access_evaluation_endpoint: at("/access/v1/evaluation"),
        access_evaluations_endpoint: at("/access/v1/evaluations"),
        search_subject_endpoint: at("/access/v1/search/subject"),
        search_resource_endpoint: at("/access/v1/search/resource"),
        search_action_endpoint: at("/access/v1/search/action"),
        policy_decision_point: base,
    })
}
