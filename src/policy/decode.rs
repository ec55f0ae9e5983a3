//! A decoder of Cedar JSON entities directed by the schema, for the forms
//! services send on every request; Cedar's own parser for everything else.
//!
//! Cedar's JSON entity parser, given a schema, describes the entity's type
//! afresh for every entity it reads (it copies the type's attribute table and
//! walks every entity type of the schema to find the allowed parents), and
//! that dominates the cost of a check whose principal is new. Here the
//! schema is read once per snapshot into [`Shapes`]: for each entity type,
//! its attributes with their types and whether they are required, and the
//! types its parents may have. An entity whose JSON fits its shape exactly is
//! built with cedar-policy's public constructors (`Entity::new` with
//! `RestrictedExpression`s).
//!
//! The rule that keeps answers unchanged: this decoder never reports an
//! error and never guesses. Anything it is not sure of — a type it has no
//! shape for (actions, enumerated types, types with tags, attribute types it
//! does not model such as extensions), a missing or undeclared attribute, a
//! value of the wrong JSON kind, a parent type the schema does not allow, a
//! `__extn` or other escape, an unexpected key — makes [`Shapes::decode_str`]
//! answer `None`, and the caller hands the text to Cedar's parser, which
//! decides and reports as it always did. So what this decoder accepts is a
//! subset of what Cedar's accepts, decoded to the same entity; the
//! differential test (`tests/it/entity_decoder.rs`) holds it to that over
//! Cedar's whole integration corpus and mutations of it.

use std::collections::{HashMap, HashSet};

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::SourceFile;

/// The entity types of a schema as the decoder reads them. Empty (every
/// entity goes to Cedar's parser) when the schema files cannot be read as
/// JSON schemas.
#[derive(Debug, Default)]
pub struct Shapes {
    /// By canonical type name (`NS::Type`); `None` for a type the decoder
    /// leaves to Cedar's parser.
    types: HashMap<String, Option<Shape>>,
    /// Every declared entity type's name, parsed once.
    names: HashMap<String, EntityTypeName>,
    /// The ids an enumerated entity type allows: a reference to another id
    /// is Cedar's parser's to refuse.
    enums: HashMap<String, HashSet<String>>,
    /// By action, the names of the attributes its context declares; an
    /// action whose context the reader cannot list (a record open to
    /// additional attributes, a type it cannot resolve) is absent.
    contexts: HashMap<EntityUid, HashSet<String>>,
}

#[derive(Debug)]
struct Shape {
    name: EntityTypeName,
    attrs: HashMap<String, (Ty, bool)>,
    /// Canonical names of the types a parent may have.
    parents: HashSet<String>,
}

/// An attribute type the decoder builds values of.
#[derive(Debug, Clone)]
enum Ty {
    String,
    Long,
    Bool,
    /// An entity of exactly this (canonical) type.
    Entity(String),
    Set(Box<Ty>),
    /// Fields with their types and whether each is required.
    Record(HashMap<String, (Ty, bool)>),
}

/// The most nesting of common types and records followed in a schema.
const MAX_DEPTH: usize = 32;

/// The schema's namespaces, merged across files: `(entity types, common
/// types)` by namespace.
type Namespaces = HashMap<String, (Map<String, Value>, Map<String, Value>)>;

impl Shapes {
    /// Reads the schema files (Cedar syntax or JSON) into shapes. A file
    /// that cannot be read as a JSON schema leaves the shapes empty.
    pub fn from_schema_files(files: &[SourceFile]) -> Self {
        let mut namespaces: Namespaces = HashMap::new();
        let mut actions: Vec<(String, String, Value)> = Vec::new();
        for f in files {
            let Some(Value::Object(fragment)) = f.schema_json() else {
                return Self::default();
            };
            for (ns, body) in fragment {
                if let Some(Value::Object(declared)) = body.get("actions") {
                    for (name, def) in declared {
                        actions.push((ns.clone(), name.clone(), def.clone()));
                    }
                }
                let entry = namespaces.entry(ns).or_default();
                if let Some(Value::Object(types)) = body.get("entityTypes") {
                    entry.0.extend(types.clone());
                }
                if let Some(Value::Object(common)) = body.get("commonTypes") {
                    entry.1.extend(common.clone());
                }
            }
        }
        let reader = Reader {
            namespaces: &namespaces,
        };
        let mut names = HashMap::new();
        let mut enums = HashMap::new();
        for (ns, (types, _)) in &namespaces {
            for (name, def) in types {
                let full = qualify(ns, name);
                if let Some(choices) = def.get("enum") {
                    let Some(choices) = choices.as_array() else {
                        return Self::default();
                    };
                    let ids = choices.iter().filter_map(|c| c.as_str().map(str::to_owned));
                    enums.insert(full.clone(), ids.collect::<HashSet<_>>());
                }
                match full.parse::<EntityTypeName>() {
                    Ok(t) => {
                        names.insert(full, t);
                    }
                    Err(_) => return Self::default(),
                }
            }
        }
        let mut shapes = HashMap::new();
        for (ns, (types, _)) in &namespaces {
            for (name, def) in types {
                let full = qualify(ns, name);
                let shape = names
                    .get(&full)
                    .and_then(|t| reader.shape(ns, def, t.clone()));
                shapes.insert(full, shape);
            }
        }
        let mut contexts = HashMap::new();
        for (ns, name, def) in &actions {
            let Ok(ty) = qualify(ns, "Action").parse::<EntityTypeName>() else {
                continue;
            };
            // No `appliesTo` or no `context`: the empty record.
            let keys = match def.get("appliesTo").and_then(|a| a.get("context")) {
                None => Some(HashSet::new()),
                Some(context) => reader.record_keys(ns, context, 0),
            };
            if let Some(keys) = keys {
                contexts.insert(
                    EntityUid::from_type_name_and_id(ty, EntityId::new(name)),
                    keys,
                );
            }
        }
        Self {
            types: shapes,
            names,
            enums,
            contexts,
        }
    }

    /// Whether the entity type `ty` (a canonical name) declares
    /// `attribute`; `None` when the decoder does not read the type (Cedar
    /// then checks each entity built with it).
    pub fn declares(&self, ty: &str, attribute: &str) -> Option<bool> {
        self.types
            .get(ty)?
            .as_ref()
            .map(|s| s.attrs.contains_key(attribute))
    }

    /// The attribute names `action`'s context declares, or `None` when they
    /// cannot be listed (then nothing may be dropped from a context).
    pub fn context_attributes(&self, action: &EntityUid) -> Option<&HashSet<String>> {
        self.contexts.get(action)
    }

    /// Whether `ty` (a canonical name) is a declared entity type that is not
    /// enumerated. `false` for every type when the schema files could not be
    /// read.
    pub fn is_plain_type(&self, ty: &str) -> bool {
        self.names.contains_key(ty) && !self.enums.contains_key(ty)
    }

    /// Decodes one entity from its JSON text, or `None`: leave it to Cedar's
    /// parser.
    pub fn decode_str(&self, text: &str) -> Option<Entity> {
        if self.types.is_empty() {
            return None;
        }
        let Strict(value) = serde_json::from_str(text).ok()?;
        self.decode_value(&value)
    }

    /// [`Shapes::decode_str`] for a parsed JSON value.
    pub fn decode_value(&self, value: &Value) -> Option<Entity> {
        if self.types.is_empty() {
            return None;
        }
        let obj = value.as_object()?;
        if obj.len() != 3 {
            return None;
        }
        let attrs = obj.get("attrs")?.as_object()?;
        let parents = obj.get("parents")?.as_array()?;
        self.build(obj.get("uid")?, attrs, parents)
    }

    fn build(&self, uid: &Value, attrs: &Map<String, Value>, parents: &[Value]) -> Option<Entity> {
        let (ty, id) = uid_parts(uid)?;
        let shape = self.types.get(ty)?.as_ref()?;
        let mut built = HashMap::with_capacity(attrs.len());
        for (name, value) in attrs {
            let (t, _) = shape.attrs.get(name)?;
            built.insert(name.clone(), self.value(t, value)?);
        }
        if shape
            .attrs
            .iter()
            .any(|(name, (_, required))| *required && !attrs.contains_key(name))
        {
            return None;
        }
        let mut ancestors = HashSet::with_capacity(parents.len());
        for p in parents {
            let (pty, pid) = uid_parts(p)?;
            if !shape.parents.contains(pty) {
                return None;
            }
            ancestors.insert(self.uid(pty, pid)?);
        }
        let uid = EntityUid::from_type_name_and_id(shape.name.clone(), EntityId::new(id));
        Entity::new(uid, built, ancestors).ok()
    }

    fn uid(&self, ty: &str, id: &str) -> Option<EntityUid> {
        if self.enums.get(ty).is_some_and(|ids| !ids.contains(id)) {
            return None;
        }
        Some(EntityUid::from_type_name_and_id(
            self.names.get(ty)?.clone(),
            EntityId::new(id),
        ))
    }

    fn value(&self, t: &Ty, v: &Value) -> Option<RestrictedExpression> {
        Some(match t {
            Ty::String => RestrictedExpression::new_string(v.as_str()?.to_owned()),
            Ty::Long => RestrictedExpression::new_long(v.as_i64()?),
            Ty::Bool => RestrictedExpression::new_bool(v.as_bool()?),
            Ty::Entity(want) => {
                let (ty, id) = uid_parts(v)?;
                if ty != want {
                    return None;
                }
                RestrictedExpression::new_entity_uid(self.uid(ty, id)?)
            }
            Ty::Set(element) => {
                let items = v.as_array()?;
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(self.value(element, item)?);
                }
                RestrictedExpression::new_set(out)
            }
            Ty::Record(fields) => {
                let obj = v.as_object()?;
                let mut out = Vec::with_capacity(obj.len());
                for (name, value) in obj {
                    if name.starts_with("__") {
                        return None;
                    }
                    let (ft, _) = fields.get(name)?;
                    out.push((name.clone(), self.value(ft, value)?));
                }
                if fields
                    .iter()
                    .any(|(name, (_, required))| *required && !obj.contains_key(name))
                {
                    return None;
                }
                RestrictedExpression::new_record(out).ok()?
            }
        })
    }
}

/// Decodes one entity from its JSON text: the schema-directed decoder when
/// it is sure, Cedar's parser (with the schema) otherwise.
pub fn entity_from_str(
    shapes: &Shapes,
    schema: &Schema,
    text: &str,
) -> Result<Entity, Box<EntitiesError>> {
    match shapes.decode_str(text) {
        Some(entity) => Ok(entity),
        None => Entity::from_json_str(text, Some(schema)).map_err(Box::new),
    }
}

/// [`entity_from_str`] for a parsed JSON value.
pub fn entity_from_value(
    shapes: &Shapes,
    schema: &Schema,
    value: &Value,
) -> Result<Entity, Box<EntitiesError>> {
    match shapes.decode_value(value) {
        Some(entity) => Ok(entity),
        None => Entity::from_json_value(value.clone(), Some(schema)).map_err(Box::new),
    }
}

/// `{"type": T, "id": I}` or `{"__entity": {"type": T, "id": I}}`, exactly.
fn uid_parts(v: &Value) -> Option<(&str, &str)> {
    let obj = v.as_object()?;
    let obj = match obj.get("__entity") {
        Some(inner) if obj.len() == 1 => inner.as_object()?,
        Some(_) => return None,
        None => obj,
    };
    if obj.len() != 2 {
        return None;
    }
    Some((obj.get("type")?.as_str()?, obj.get("id")?.as_str()?))
}

fn qualify(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}::{name}")
    }
}

/// Reads types out of the merged schema JSON.
struct Reader<'a> {
    namespaces: &'a Namespaces,
}

impl Reader<'_> {
    fn shape(&self, ns: &str, def: &Value, name: EntityTypeName) -> Option<Shape> {
        let obj = def.as_object()?;
        // Enumerated types and types with tags are Cedar's parser's.
        if obj
            .keys()
            .any(|k| !matches!(k.as_str(), "memberOfTypes" | "shape" | "annotations"))
        {
            return None;
        }
        let attrs = match obj.get("shape") {
            None => HashMap::new(),
            Some(shape) => match self.ty(ns, shape, 0)? {
                Ty::Record(fields) => fields,
                _ => return None,
            },
        };
        let mut parents = HashSet::new();
        if let Some(list) = obj.get("memberOfTypes") {
            for p in list.as_array()? {
                parents.insert(self.entity(ns, p.as_str()?)?);
            }
        }
        Some(Shape {
            name,
            attrs,
            parents,
        })
    }

    /// The canonical name of entity type `name` as written in namespace `ns`.
    fn entity(&self, ns: &str, name: &str) -> Option<String> {
        match name.rsplit_once("::") {
            Some((qns, n)) => self.declares(qns, n).then(|| name.to_owned()),
            None if self.declares(ns, name) => Some(qualify(ns, name)),
            None if self.declares("", name) => Some(name.to_owned()),
            None => None,
        }
    }

    /// Whether namespace `ns` declares the entity type `name`.
    fn declares(&self, ns: &str, name: &str) -> bool {
        self.namespaces
            .get(ns)
            .is_some_and(|(types, _)| types.contains_key(name))
    }

    /// The definition of common type `name` in namespace `ns`.
    fn common(&self, ns: &str, name: &str) -> Option<&Value> {
        self.namespaces
            .get(ns)
            .and_then(|(_, common)| common.get(name))
    }

    fn ty(&self, ns: &str, v: &Value, depth: usize) -> Option<Ty> {
        if depth > MAX_DEPTH {
            return None;
        }
        let obj = v.as_object()?;
        let kind = obj.get("type")?.as_str()?;
        match kind {
            "String" | "Long" | "Boolean" => primitive(kind),
            "Set" => Some(Ty::Set(Box::new(self.ty(
                ns,
                obj.get("element")?,
                depth + 1,
            )?))),
            "Record" => {
                if obj
                    .get("additionalAttributes")
                    .is_some_and(|a| a != &Value::Bool(false))
                {
                    return None;
                }
                let mut fields = HashMap::new();
                if let Some(attrs) = obj.get("attributes") {
                    for (name, t) in attrs.as_object()? {
                        let required = match t.get("required") {
                            None => true,
                            Some(r) => r.as_bool()?,
                        };
                        fields.insert(name.clone(), (self.ty(ns, t, depth + 1)?, required));
                    }
                }
                Some(Ty::Record(fields))
            }
            "Entity" => Some(Ty::Entity(self.entity(ns, obj.get("name")?.as_str()?)?)),
            "EntityOrCommon" => self.named(ns, obj.get("name")?.as_str()?, depth),
            // Extensions (and anything newer) are Cedar's parser's.
            "Extension" => None,
            other => self.named(ns, other, depth),
        }
    }

    /// The attribute names of the record type `v` (written in namespace
    /// `ns`), resolving common types; `None` for a record open to
    /// additional attributes or a type that is not a record.
    fn record_keys(&self, ns: &str, v: &Value, depth: usize) -> Option<HashSet<String>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let obj = v.as_object()?;
        let kind = obj.get("type")?.as_str()?;
        let name = match kind {
            "Record" => {
                if obj
                    .get("additionalAttributes")
                    .is_some_and(|a| a != &Value::Bool(false))
                {
                    return None;
                }
                return match obj.get("attributes") {
                    None => Some(HashSet::new()),
                    Some(attrs) => Some(attrs.as_object()?.keys().cloned().collect()),
                };
            }
            "EntityOrCommon" => obj.get("name")?.as_str()?,
            other => other,
        };
        if let Some((qns, n)) = name.rsplit_once("::") {
            return self.record_keys(qns, self.common(qns, n)?, depth + 1);
        }
        let (scope, def) = [ns, ""]
            .into_iter()
            .find_map(|scope| self.common(scope, name).map(|def| (scope, def)))?;
        self.record_keys(scope, def, depth + 1)
    }

    /// A type written by name, resolved in Cedar's order: a common type of
    /// the namespace, an entity type of the namespace, a common type of the
    /// empty namespace, an entity type of it, a primitive.
    fn named(&self, ns: &str, name: &str, depth: usize) -> Option<Ty> {
        if let Some((qns, n)) = name.rsplit_once("::") {
            if qns == "__cedar" {
                return primitive(n);
            }
            if let Some(def) = self.common(qns, n) {
                return self.ty(qns, def, depth + 1);
            }
            return self.declares(qns, n).then(|| Ty::Entity(name.to_owned()));
        }
        for scope in [ns, ""] {
            if let Some(def) = self.common(scope, name) {
                return self.ty(scope, def, depth + 1);
            }
            if self.declares(scope, name) {
                return Some(Ty::Entity(qualify(scope, name)));
            }
        }
        primitive(name)
    }
}

fn primitive(name: &str) -> Option<Ty> {
    match name {
        "String" => Some(Ty::String),
        "Long" => Some(Ty::Long),
        "Bool" | "Boolean" => Some(Ty::Bool),
        _ => None,
    }
}

/// A JSON value read from text refusing a key repeated in an object, as
/// Cedar's entity parser does (`serde_json::Value` keeps the last).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some((k, Strict(v))) = map.next_entry::<String, Strict>()? {
            if out.insert(k, v).is_some() {
                return Err(serde::de::Error::custom("a key is repeated"));
            }
        }
        Ok(Strict(Value::Object(out)))
    }
}
