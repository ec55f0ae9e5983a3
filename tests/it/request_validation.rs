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

/// A key given twice in one object, at any depth of any JSON body, is a 400
/// naming the key's path: a proxy that reads the first occurrence and cedard
/// the last would otherwise decide two different questions.
#[tokio::test]
async fn a_key_given_twice_is_refused_at_every_depth_naming_its_path() {
    let app = crate::support::spawn_app().await;
    let cases: [(&str, &str, &str); 7] = [
        (
            "/v1/is_authorized",
            r#"{"principal": {"type": "User", "id": "u00009", "id": "u00001"}, "action": {"type": "Action", "id": "useAccount"}, "resource": {"type": "Account", "id": "acme"}}"#,
            "principal.id",
        ),
        (
            "/v1/is_authorized",
            r#"{"principal": "User::\"bob\"", "action": "Action::\"useAccount\"", "resource": "Account::\"acme\"", "context": {"a": {"b": 1, "b": 2}}}"#,
            "context.a.b",
        ),
        (
            "/v1/is_authorized/batch",
            r#"{"requests": [{"principal": "User::\"bob\"", "action": "Action::\"useAccount\"", "resource": "Account::\"acme\""}, {"principal": "User::\"bob\"", "action": "Action::\"useAccount\"", "resource": "Account::\"acme\"", "context": {"ip": "1", "ip": "2"}}]}"#,
            "requests[1].context.ip",
        ),
        (
            "/access/v1/evaluation",
            r#"{"subject": {"type": "User", "id": "bob", "properties": {"email": "a", "email": "b"}}, "action": {"name": "useAccount"}, "resource": {"type": "Account", "id": "acme"}}"#,
            "subject.properties.email",
        ),
        (
            "/access/v1/evaluations",
            r#"{"subject": {"type": "User", "id": "bob"}, "action": {"name": "useAccount"}, "evaluations": [{"resource": {"type": "Account", "id": "acme", "id": "other"}}]}"#,
            "evaluations[0].resource.id",
        ),
        (
            "/access/v1/search/subject",
            r#"{"subject": {"type": "User"}, "action": {"name": "useAccount"}, "resource": {"type": "Account", "id": "acme"}, "page": {"limit": 1, "limit": 2}}"#,
            "page.limit",
        ),
        (
            "/v1/users",
            r#"{"id": "zed", "email": "z@example.com", "name": "Zed", "name": "Zara"}"#,
            "name",
        ),
    ];
    for (path, body, key) in cases {
        let (status, answer) = app.post_raw(path, body.to_owned()).await;
        assert_eq!(status, 400, "{path} {key}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{key}:")) && message.contains("given twice"),
            "{path}: expected the path `{key}` named: {answer}"
        );
    }
}
