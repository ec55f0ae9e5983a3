//! What cedard skips of Cedar's request validation (`policy::requests`:
//! scopes and empty contexts known valid once per snapshot) against Cedar
//! itself, over every schema of Cedar's integration corpus: whenever cedard
//! takes a request's scope or its empty context as valid without asking,
//! Cedar, asked, says valid too. Every triple of the schema's entity types
//! (and an undeclared one) with every action (and an undeclared one), with
//! several ids, is tried.

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, Schema};
use cedard::policy::decode::Shapes;
use cedard::policy::requests::ValidRequests;
use cedard::policy::SourceFile;
use cedard::suite::tree::Tree;

use crate::support::repo_root;

#[test]
fn what_cedard_takes_as_valid_cedar_validates_over_the_corpus() {
    let archive = repo_root().join("../shared/cedar-integration-tests/corpus-tests.tar.gz");
    let mut tree = Tree::default();
    let files = tree
        .add_archive(&archive)
        .unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let undeclared_type: EntityTypeName = "NotInTheSchema".parse().expect("a type name");
    let undeclared_action = EntityUid::from_type_name_and_id(
        "Action".parse().expect("a type name"),
        EntityId::new("notInTheSchema"),
    );
    let ids = ["", "x", "active", "0"].map(EntityId::new);
    let (mut schemas, mut trusted, mut asked, mut contexts) = (0, 0, 0, 0);
    let mut wrong = Vec::new();
    for path in files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".cedarschema"))
    {
        let Ok(text) = tree.read(path) else { continue };
        let Ok((schema, _)) = Schema::from_cedarschema_str(&text) else {
            continue;
        };
        let shapes = Shapes::from_schema_files(&[SourceFile {
            name: "schema.cedarschema".into(),
            text,
        }]);
        let valid = ValidRequests::build(&schema, &shapes);
        schemas += 1;
        let mut types: Vec<EntityTypeName> = schema.entity_types().cloned().collect();
        types.push(undeclared_type.clone());
        let mut actions: Vec<EntityUid> = schema.actions().cloned().collect();
        actions.push(undeclared_action.clone());
        for action in &actions {
            if valid.empty_context(action) {
                contexts += 1;
                if let Err(e) = Context::empty().validate(&schema, action) {
                    wrong.push(format!(
                        "{}: empty context for {action}: {e}",
                        path.display()
                    ));
                }
            }
            for p in &types {
                for r in &types {
                    for id in &ids {
                        let principal = EntityUid::from_type_name_and_id(p.clone(), id.clone());
                        let resource = EntityUid::from_type_name_and_id(r.clone(), id.clone());
                        asked += 1;
                        if !valid.scope(&principal, action, &resource) {
                            continue;
                        }
                        trusted += 1;
                        if let Err(e) = cedar_policy::validate_scope_variables(
                            &principal, action, &resource, &schema,
                        ) {
                            wrong.push(format!(
                                "{}: {principal}, {action}, {resource}: {e}",
                                path.display()
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{schemas} schemas: {asked} scopes tried, {trusted} taken as valid without asking; {contexts} empty contexts taken as valid"
    );
    assert!(
        wrong.is_empty(),
        "{} taken as valid that Cedar refuses, the first:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    // The comparison means something only if much is taken as valid.
    assert!(schemas > 5_000, "{schemas} schemas");
    assert!(trusted > 10_000, "{trusted} scopes trusted");
    assert!(contexts > 5_000, "{contexts} contexts trusted");
}
