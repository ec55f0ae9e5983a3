//! What handlers take from a request besides the path: the JSON body read
//! field by field, the acting user of `X-Actor`, and the caller (key and
//! request id) that the guard attached.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use serde_json::Value;

use super::error::ApiError;
use crate::authz::InputError;
use crate::code::Code;
use crate::keys::KeyInfo;
use crate::pdp::Caller;

/// The authenticated caller of a request, attached by the guard: the key
/// (when keys are in use) and the request id.
#[derive(Debug, Clone, Default)]
pub struct CallerInfo {
    /// The key that authenticated the request.
    pub key: Option<KeyInfo>,
    /// The acting user's verified token (`X-Actor-Token`, or the bearer on
    /// the routes an end user calls).
    pub user: Option<std::sync::Arc<crate::identity::Verified>>,
    /// The request's `X-Request-ID`.
    pub request_id: Option<String>,
    /// When the work of the request must be done: three quarters of the
    /// request time limit after it was authenticated, leaving the rest for a
    /// write's commit, so that a write is refused (not committed) rather
    /// than committed after the time limit answered 503.
    pub deadline: Option<std::time::Instant>,
}

impl CallerInfo {
    /// The caller as the decision pipeline records it, at `endpoint`.
    pub fn caller(&self, endpoint: &'static str) -> Caller {
        Caller {
            key: self.key.as_ref().map(|k| k.id.clone()),
            request_id: self.request_id.clone(),
            endpoint,
            consistency: Default::default(),
            surplus: Default::default(),
            deadline: self.deadline,
            actor_token: self.user.as_deref().map(crate::audit::TokenFacts::from),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CallerInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<CallerInfo>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The user a verified token's subject is, if it is a user (its issuer
/// file maps tokens to `User`): a token for another kind of principal (a
/// service) cannot act on the directory (403).
pub fn acting_user(user: &crate::identity::Verified) -> Result<&str, ApiError> {
    if user.principal_type != crate::model::USER {
        return Err(ApiError::denied(
            format!(
                "the token's subject is a `{}`, not a `{}`: only a user acts on the directory",
                user.principal_type,
                crate::model::USER
            ),
            Vec::new(),
        ));
    }
    Ok(&user.id)
}

/// The longest `X-Actor` value read; a longer one is refused without being
/// echoed back.
const MAX_ACTOR: usize = 128;

/// The acting user: the subject of a verified user token (`X-Actor-Token`,
/// or the bearer on the routes an end user calls), else the one `X-Actor`
/// names. `X-Actor` is believed only because the guard let the request
/// through: from a `manage` key, or from loopback when no keys exist, and
/// not at all with `--actor token-only`. Missing: 401. A value that is not
/// an id cannot name a stored user, so it is denied like an unknown user.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts
            .extensions
            .get::<CallerInfo>()
            .and_then(|c| c.user.as_ref())
        {
            return acting_user(user).map(|id| Actor(id.to_owned()));
        }
        let required = || {
            ApiError::new(
                Code::Unauthenticated,
                "the acting user is required: `X-Actor-Token` with their token, or `X-Actor` naming them",
            )
        };
        let Some(value) = parts.headers.get("x-actor") else {
            return Err(required());
        };
        let Ok(text) = value.to_str() else {
            return Err(ApiError::from(InputError::new(
                "X-Actor",
                "must be visible ASCII text",
            )));
        };
        let actor = text.trim();
        if actor.is_empty() {
            return Err(required());
        }
        if actor.len() > MAX_ACTOR || crate::accounts::check_id("X-Actor", actor).is_err() {
            return Err(ApiError::denied(
                "`X-Actor` does not name a user: ids are 1 to 128 letters, digits and `._@-`",
                Vec::new(),
            ));
        }
        Ok(Actor(actor.to_owned()))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let by_token = parts
            .extensions
            .get::<CallerInfo>()
            .is_some_and(|c| c.user.is_some());
        if by_token || parts.headers.contains_key("x-actor") {
            <Actor as FromRequestParts<S>>::from_request_parts(parts, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A request body: a JSON object whose fields are read one by one, so that
/// every error names its field (serde's own messages do not always).
pub struct Body(serde_json::Map<String, Value>);

impl Body {
    /// Parses `bytes` as a JSON object with only the `allowed` fields. A
    /// key given twice, at any depth, is refused naming the key: parsers
    /// disagree on which one wins, so a proxy and cedard could read two
    /// different requests.
    pub fn parse(bytes: &[u8], allowed: &[&str]) -> Result<Self, ApiError> {
        refuse_repeated_keys(bytes)?;
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_json(clip(&format!("invalid request body: {e}"))))?;
        let Value::Object(map) = value else {
            return Err(bad("body", "expected a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                &clip(unknown),
                format!(
                    "unknown field; expected {}",
                    allowed
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(Self(map))
    }

    /// Parses `bytes` as the body `T` describes in `/openapi.json`: only
    /// its fields, and each field it requires present (not `null`). So the
    /// description is the one list of what a route reads, and cannot drift
    /// from it.
    pub fn parse_as<T: utoipa::PartialSchema>(bytes: &[u8]) -> Result<Self, ApiError> {
        use utoipa::openapi::{schema::Schema, RefOr};
        let (fields, required) = match T::schema() {
            RefOr::T(Schema::Object(object)) => (
                object.properties.keys().cloned().collect::<Vec<_>>(),
                object.required,
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let allowed: Vec<&str> = fields.iter().map(String::as_str).collect();
        let body = Self::parse(bytes, &allowed)?;
        if let Some(missing) = required
            .iter()
            .find(|f| matches!(body.0.get(f.as_str()), None | Some(Value::Null)))
        {
            return Err(bad(missing, "is required"));
        }
        Ok(body)
    }

    /// An optional string field.
    pub fn opt_str(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(
                field,
                format!("expected a string, found `{}`", shown(other)),
            )),
        }
    }

    /// A required string field.
    pub fn str(&self, field: &str) -> Result<String, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| bad(field, "is required"))
    }

    /// An optional integer field.
    pub fn opt_int(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(other) => Err(bad(
                field,
                format!("expected an integer, found `{}`", shown(other)),
            )),
        }
    }

    /// An optional boolean field.
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(bad(
                field,
                format!("expected true or false, found `{other}`"),
            )),
        }
    }

    /// An optional list of strings.
    pub fn opt_strings(&self, field: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad(
                        field,
                        format!("expected strings, found `{}`", shown(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(bad(
                field,
                format!("expected a list of strings, found `{}`", shown(other)),
            )),
        }
    }
}

/// Reads a JSON request body as `T`, refusing a key given twice first
/// (see [`refuse_repeated_keys`]): the one reading of the decision and
/// AuthZEN bodies.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    refuse_repeated_keys(body)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_json(format!("invalid request body: {e}")))
}

/// A 400 naming `field`.
pub fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::from(InputError::new(field, message))
}

pub use crate::authz::clip;

/// A JSON value as an error message quotes it: compact and clipped.
fn shown(value: &Value) -> String {
    clip(&value.to_string())
}

/// Refuses a JSON body in which an object holds a key twice, at any depth,
/// with a 400 naming the key's path (`principal.id`,
/// `requests[3].context.ip`): parsers disagree on which occurrence counts,
/// so a proxy and cedard could otherwise read two different requests.
/// Text that is not JSON passes (the parse that follows reports it).
pub fn refuse_repeated_keys(bytes: &[u8]) -> Result<(), ApiError> {
    use serde::de::DeserializeSeed;
    let mut path = Vec::new();
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = Walk {
        path: &mut path,
        found: &mut found,
    }
    .deserialize(&mut de);
    match found {
        Some(path) => Err(ApiError::from(InputError::new(
            clip(&path),
            "this key is given twice in one object; send it once",
        ))),
        None => Ok(()),
    }
}

/// A step into a JSON document. Keys are borrowed from the body where
/// they hold no escape: the walk runs on every JSON body, and allocates
/// nothing for a body without one.
enum Step<'de> {
    Key(std::borrow::Cow<'de, str>),
    Index(usize),
}

/// Walks a JSON document without keeping it, noting the path of the first
/// repeated key (and stopping there).
struct Walk<'a, 'de> {
    path: &'a mut Vec<Step<'de>>,
    found: &'a mut Option<String>,
}

impl Walk<'_, '_> {
    fn shown(&self, key: &str) -> String {
        let mut out = String::new();
        for step in self.path.iter() {
            match step {
                Step::Key(k) if out.is_empty() => out.push_str(k),
                Step::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
        out
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Reads an object key, borrowed from the body when it holds no escape
/// (serde's own `Cow` always copies).
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(key.to_owned()))
    }
}

/// Objects with up to this many keys are checked for a repeat by a scan of
/// the keys seen (no hashing, no allocation beyond one small vector);
/// larger ones through a set.
const SCANNED_KEYS: usize = 16;

impl<'de> serde::de::Visitor<'de> for Walk<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.path.push(Step::Index(i));
            let more = seq.next_element_seed(Walk {
                path: &mut *self.path,
                found: &mut *self.found,
            })?;
            self.path.pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use std::borrow::Cow;
        let mut few: Vec<Cow<'de, str>> = Vec::new();
        let mut many: std::collections::HashSet<Cow<'de, str>> = std::collections::HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let repeated = if many.is_empty() && few.len() < SCANNED_KEYS {
                let seen = few.contains(&key);
                if !seen {
                    few.push(key.clone());
                }
                seen
            } else {
                many.extend(few.drain(..));
                !many.insert(key.clone())
            };
            if repeated {
                *self.found = Some(self.shown(&key));
                return Err(serde::de::Error::custom("a repeated key"));
            }
            self.path.push(Step::Key(key));
            map.next_value_seed(Walk {
                path: &mut *self.path,
                found: &mut *self.found,
            })?;
            self.path.pop();
        }
        Ok(())
    }
}

/// How fresh a decision's stored facts must be, as a request states it:
/// `"minimize_latency"` (the default), `"full"`, or `{"at_least": <store
/// revision>}` (the `store_revision` a write answered).
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ConsistencyBody {
    /// `"minimize_latency"` or `"full"`.
    Level(ConsistencyLevel),
    /// At least this store revision.
    AtLeast {
        /// A store revision a write answered.
        at_least: u64,
    },
}

/// The consistency levels named by a word.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    /// Whatever this replica knows now.
    MinimizeLatency,
    /// Read every stored fact now.
    Full,
}

impl From<ConsistencyBody> for crate::pdp::Consistency {
    fn from(c: ConsistencyBody) -> Self {
        match c {
            ConsistencyBody::Level(ConsistencyLevel::MinimizeLatency) => Self::MinimizeLatency,
            ConsistencyBody::Level(ConsistencyLevel::Full) => Self::Full,
            ConsistencyBody::AtLeast { at_least } => Self::AtLeast(at_least),
        }
    }
}

/// An entity reference as a body writes it: `{"type": "User", "id":
/// "alice"}`, or the string `User::"alice"` as Cedar writes it. This type
/// describes the wire form in `/openapi.json`; the pipeline reads the JSON
/// itself (`authz::parse_uid_in`), so both forms mean one thing everywhere.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EntityRef {
    /// `{"type", "id"}`.
    Object(EntityRefObject),
    /// `Type::"id"`, as Cedar writes it (`User::"alice"`).
    Cedar(String),
}

/// `{"type": "User", "id": "alice"}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EntityRefObject {
    /// The entity type, with its namespace if any (`User`, `App::User`).
    #[serde(rename = "type")]
    kind: String,
    /// The entity id.
    id: String,
}

/// An entity in Cedar's JSON entity format, read against the loaded
/// schema. Described here for `/openapi.json`; Cedar's parser (or the
/// schema-directed decoder, which accepts a subset to the same effect) reads
/// it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CedarEntity {
    /// The entity (Cedar's entity format takes the object form only).
    uid: EntityRefObject,
    /// Its attributes, as the schema declares them (`{}` for none).
    attrs: Attributes,
    /// The entities it is a member of (`[]` for none).
    parents: Vec<EntityRefObject>,
    /// Its tags, where the schema declares them.
    tags: Option<Attributes>,
}

/// Attributes by name, each a Cedar value in its JSON form.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Attributes(std::collections::HashMap<String, CedarValue>);

/// A request context: attribute name → Cedar value, as the action's
/// declared context reads them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ContextBody(std::collections::HashMap<String, CedarValue>);

/// A Cedar value in JSON, as Cedar's JSON formats write one: a string, a
/// long, a boolean, an entity `{"__entity": {"type", "id"}}`, an extension
/// value `{"__extn": {"fn", "arg"}}` (`ip`, `decimal`, `datetime`,
/// `duration`), a set (an array of values) or a record (values by name;
/// where the schema expects an entity, `{"type", "id"}` alone is read as
/// one). Described as `anyOf`, not `oneOf`: an entity or extension value is
/// also a record.
pub struct CedarValue;

impl utoipa::PartialSchema for CedarValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AnyOfBuilder, ArrayBuilder, ObjectBuilder, SchemaType, Type,
        };
        use utoipa::openapi::Ref;
        let typed = |ty: Type| ObjectBuilder::new().schema_type(ty);
        let any = || ObjectBuilder::new().schema_type(SchemaType::AnyValue);
        AnyOfBuilder::new()
            .item(typed(Type::String))
            .item(typed(Type::Integer).format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            ))))
            .item(typed(Type::Boolean))
            .item(Ref::from_schema_name("EntityValue"))
            .item(Ref::from_schema_name("ExtensionValue"))
            .item(ArrayBuilder::new().items(any()))
            .item(typed(Type::Object).additional_properties(Some(any())))
            .description(Some(
                "A Cedar value in JSON: a string, a long, a boolean, an entity `{\"__entity\": {\"type\", \"id\"}}`, an extension value `{\"__extn\": {\"fn\", \"arg\"}}`, a set (an array) or a record (values by name)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for CedarValue {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push(("EntityValue".into(), EntityValue::schema()));
        schemas.push(("EntityRefObject".into(), EntityRefObject::schema()));
        schemas.push(("ExtensionValue".into(), ExtensionValue::schema()));
        schemas.push(("ExtensionCall".into(), ExtensionCall::schema()));
    }
}

/// `{"__entity": {"type", "id"}}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EntityValue {
    /// The entity referred to.
    #[serde(rename = "__entity")]
    entity: EntityRefObject,
}

/// `{"__extn": {"fn", "arg"}}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ExtensionValue {
    /// The extension constructor and its argument.
    #[serde(rename = "__extn")]
    extension: ExtensionCall,
}

/// An extension constructor applied to a string: `{"fn": "ip", "arg":
/// "10.0.0.1"}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ExtensionCall {
    /// The constructor: `ip`, `decimal`, `datetime`, `duration`.
    #[serde(rename = "fn")]
    function: String,
    /// Its argument.
    arg: String,
}

#[cfg(test)]
mod tests {
    use super::refuse_repeated_keys;

    fn refused(body: &str) -> Option<String> {
        refuse_repeated_keys(body.as_bytes())
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_repeated_key_is_found_at_any_depth_escaped_or_not_in_small_and_large_objects() {
        assert_eq!(refused(r#"{"a": 1, "b": {"c": [1, {"d": 2}]}}"#), None);
        let message = refused(r#"{"a": 1, "b": {"c": [1, {"d": 2, "d": 3}]}}"#).expect("refused");
        assert!(message.contains("b.c[1].d"), "{message}");
        // The same key written with an escape is the same key.
        let message = refused(r#"{"x": {"ab": 1, "\u0061b": 2}}"#).expect("refused");
        assert!(message.contains("x.ab"), "{message}");
        // Past the keys checked by a scan, through the set.
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        assert_eq!(refused(&format!("{{{}}}", many.join(","))), None);
        let message = refused(&format!("{{{}, \"k3\": 0}}", many.join(","))).expect("refused");
        assert!(message.contains("k3"), "{message}");
        let message = refused(&format!("{{{}, \"k39\": 0}}", many.join(","))).expect("refused");
        assert!(message.contains("k39"), "{message}");
        // Not JSON passes: the parse that follows reports it.
        assert_eq!(refused("{not json"), None);
    }
}
