//! Entity data files: the entities the policies need that cedard does not
//! store (users of another directory, documents, routes), read from Cedar
//! JSON entity files and made part of the snapshot.
//!
//! They are loaded with the policies and schema, checked against the schema
//! (every attribute and parent type), and swapped in with them, so an edit to
//! a policy and an entity file in one save applies together or not at all.
//! An error names the file, the line where the entity starts and its index in
//! the file (`entities[3]`). A file may not define an entity of a type cedard
//! stores (the caller says which, in [`Sources::reserved_types`]): those come
//! from the store alone, so that no file can make someone a member of an
//! account. That holds where the schema describes cedard's account model
//! (it declares every one of those types); a schema of another domain (the
//! Cedar paper's workloads, say, whose `User` is not cedard's) may have a
//! data file define a `User`.
//!
//! [`Sources::reserved_types`]: super::Sources::reserved_types

use std::collections::{BTreeMap, HashMap};

use cedar_policy::{Entities, Entity, EntityUid, Schema};
use serde_json::value::RawValue;

use super::{describe, LineIndex, LoadError, SourceFile};

/// The entities of the data files, as one snapshot holds them.
#[derive(Debug)]
pub struct DataEntities {
    /// Every entity of every file, hierarchy computed.
    pub entities: Entities,
    /// The entity ids of each type, sorted: the candidates of a search.
    pub by_type: HashMap<String, Vec<String>>,
    /// Where each entity was defined: `file` and index, for messages.
    pub origin: HashMap<EntityUid, (String, usize)>,
}

impl Default for DataEntities {
    fn default() -> Self {
        Self {
            entities: Entities::empty(),
            by_type: HashMap::new(),
            origin: HashMap::new(),
        }
    }
}

impl DataEntities {
    /// How many entities the files define.
    pub fn len(&self) -> usize {
        self.origin.len()
    }

    /// Whether the files define no entity.
    pub fn is_empty(&self) -> bool {
        self.origin.is_empty()
    }

    /// Whether `uid` is defined by a data file, and where.
    pub fn origin(&self, uid: &EntityUid) -> Option<&(String, usize)> {
        self.origin.get(uid)
    }
}

/// Parses every entity data file against `schema`. Returns every problem
/// found, each located at its file and line and named `entities[i]`.
pub fn parse(
    files: &[SourceFile],
    schema: &Schema,
    reserved_types: &[String],
) -> Result<DataEntities, Vec<LoadError>> {
    let declared: Vec<String> = schema.entity_types().map(|t| t.to_string()).collect();
    let reserved_types: &[String] = if reserved_types.iter().all(|t| declared.contains(t)) {
        reserved_types
    } else {
        &[]
    };
    let mut errors = Vec::new();
    let mut all: Vec<Entity> = Vec::new();
    let mut origin: HashMap<EntityUid, (String, usize)> = HashMap::new();
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let items: Vec<&RawValue> = match serde_json::from_str(&file.text) {
            Ok(items) => items,
            Err(e) => {
                errors.push(LoadError {
                    file: file.name.clone(),
                    line: Some(e.line()),
                    column: Some(e.column()),
                    message: format!("not a JSON array of Cedar entities: {e}"),
                });
                continue;
            }
        };
        let lines = LineIndex::new(&file.text);
        for (i, item) in items.into_iter().enumerate() {
            // `item` borrows from `file.text`: its address gives its offset.
            let offset = (item.get().as_ptr() as usize).saturating_sub(file.text.as_ptr() as usize);
            let (line, column) = lines.line_col(offset);
            let error = |message: String| LoadError {
                file: file.name.clone(),
                line: Some(line),
                column: Some(column),
                message: format!("entities[{i}]: {message}"),
            };
            let entity = match Entity::from_json_str(item.get(), Some(schema)) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(error(describe(&e)));
                    continue;
                }
            };
            let uid = entity.uid();
            let type_name = uid.type_name().to_string();
            if reserved_types.contains(&type_name) {
                errors.push(error(format!(
                    "`{uid}` is of type `{type_name}`, which cedard stores; entities of that type come from the store (the management API), not from data files"
                )));
                continue;
            }
            if let Some((f, j)) = origin.get(&uid) {
                errors.push(error(format!(
                    "`{uid}` is already defined in {f} (entities[{j}])"
                )));
                continue;
            }
            origin.insert(uid.clone(), (file.name.clone(), i));
            by_type
                .entry(type_name)
                .or_default()
                .push(uid.id().unescaped().to_owned());
            all.push(entity);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Each entity was checked against the schema as it was decoded; this
    // computes the hierarchy (and finds parents of undeclared types).
    let entities = Entities::empty().add_entities(all, None).map_err(|e| {
        vec![LoadError {
            file: files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            line: None,
            column: None,
            message: describe(&e),
        }]
    })?;
    let by_type = by_type
        .into_iter()
        .map(|(t, mut ids)| {
            ids.sort();
            (t, ids)
        })
        .collect();
    Ok(DataEntities {
        entities,
        by_type,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let (frag, _) = cedar_policy::SchemaFragment::from_cedarschema_str(
            "entity Team; entity Doc in [Team] { owner: String }; entity User; entity Account; entity Role;",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Schema::from_schema_fragments([frag]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn file(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn entities_load_with_their_hierarchy_and_are_listed_by_type() {
        let data = parse(
            &[file(
                "docs.json",
                r#"[{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []},
                    {"uid": {"type": "Doc", "id": "b"}, "attrs": {"owner": "x"}, "parents": [{"type": "Team", "id": "t"}]},
                    {"uid": {"type": "Doc", "id": "a"}, "attrs": {"owner": "y"}, "parents": []}]"#,
            )],
            &schema(),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(data.len(), 3);
        assert_eq!(data.by_type["Doc"], vec!["a", "b"]);
        let doc: EntityUid = r#"Doc::"b""#.parse().unwrap_or_else(|e| panic!("{e}"));
        let team: EntityUid = r#"Team::"t""#.parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(data
            .entities
            .ancestors(&doc)
            .is_some_and(|mut a| a.any(|p| p == &team)));
    }

    #[test]
    fn a_bad_entity_is_named_by_file_line_and_index() {
        let text = "[\n  {\"uid\": {\"type\": \"Team\", \"id\": \"t\"}, \"attrs\": {}, \"parents\": []},\n  {\"uid\": {\"type\": \"Doc\", \"id\": \"d\"}, \"attrs\": {\"owner\": 7}, \"parents\": []}\n]\n";
        let errors = parse(&[file("docs.json", text)], &schema(), &[]).err();
        let errors = errors.unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, "docs.json");
        assert_eq!(errors[0].line, Some(3));
        assert!(
            errors[0].message.starts_with("entities[1]: "),
            "{}",
            errors[0].message
        );
        assert!(errors[0].message.contains("owner"), "{}", errors[0].message);
    }

    #[test]
    fn a_schema_without_the_account_model_may_have_users_in_data_files() {
        let (frag, _) =
            cedar_policy::SchemaFragment::from_cedarschema_str("entity User; entity Doc;")
                .unwrap_or_else(|e| panic!("{e}"));
        let schema = Schema::from_schema_fragments([frag]).unwrap_or_else(|e| panic!("{e}"));
        let users = [file(
            "a.json",
            r#"[{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": []}]"#,
        )];
        let reserved = ["User".to_owned(), "Account".to_owned(), "Role".to_owned()];
        let data = parse(&users, &schema, &reserved).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(data.len(), 1);
    }

    #[test]
    fn stored_types_and_duplicates_are_refused() {
        let errors = parse(
            &[
                file("a.json", r#"[{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": []}, {"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}]"#),
                file("b.json", r#"[{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}]"#),
            ],
            &schema(),
            &["User".to_owned(), "Account".to_owned(), "Role".to_owned()],
        )
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].message.contains("which cedard stores"),
            "{errors:?}"
        );
        assert_eq!(errors[1].file, "b.json");
        assert!(
            errors[1]
                .message
                .contains("already defined in a.json (entities[1])"),
            "{errors:?}"
        );
    }

    #[test]
    fn malformed_json_is_located() {
        let errors = parse(&[file("x.json", "[\n  {\"uid\": \n")], &schema(), &[])
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(3));
    }
}
