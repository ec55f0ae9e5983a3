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
            deadline: self.deadline,
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

/// The longest `X-Actor` value read; a longer one is refused without being
/// echoed back.
const MAX_ACTOR: usize = 128;

/// The acting user named by `X-Actor`. Believed only because the guard let
/// the request through: from a `manage` key, or from loopback when no keys
/// exist. Missing: 401. A value that is not an id cannot name a stored user,
/// so it is denied like an unknown user.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let required = || {
            ApiError::new(
                Code::Unauthenticated,
                "the `X-Actor` header naming the acting user is required",
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
        if parts.headers.contains_key("x-actor") {
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
        let Strict(value) = serde_json::from_slice(bytes)
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

/// A 400 naming `field`.
pub fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::from(InputError::new(field, message))
}

pub use crate::authz::clip;

/// A JSON value as an error message quotes it: compact and clipped.
fn shown(value: &Value) -> String {
    clip(&value.to_string())
}

/// A JSON value parsed like `serde_json::Value`, except that an object
/// holding the same key twice is an error naming the key.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key `{}`",
                    clip(&key)
                )));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
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
