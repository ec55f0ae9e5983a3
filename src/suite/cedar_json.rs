//! Cedar's integration-test format: a JSON file naming a policy file, an
//! entities file and a schema, saying whether the policies should validate,
//! and listing requests with the expected decision, reasons and errors.
//!
//! It is run the way Cedar's own harness (`cedar-testing`) runs it: policies
//! are named `policy0`, `policy1`, … in file order; the schema is read from
//! Cedar syntax (or JSON); entities and each request's context are parsed
//! against the schema; a request is validated against the schema only when
//! `validateRequest` says so; and a file that should not validate is still
//! evaluated. The decision is compared with the reason set and the set of
//! erroring policy ids, as Cedar's harness compares them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cedar_policy::{Entities, Schema};
use serde::Deserialize;
use serde_json::Value;

use super::tree::Tree;
use super::{describe_decision, judge, CaseResult, FileResult, Status, SuiteError};
use crate::authz;
use crate::policy::{parse_schema, Naming, PolicySnapshot, Revision, SourceFile};

/// The validator message that Cedar 4.12 turned from an error into a
/// warning. Corpus files generated with Cedar 4.10 that expect validation to
/// fail for this reason alone now validate.
const ACTION_APPLICATION_WARNING: &str = "unable to find an applicable action";

/// One test file, as Cedar writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestFile {
    /// The policy file, relative to the root.
    pub policies: String,
    /// The entities file, relative to the root.
    pub entities: String,
    /// The schema file, relative to the root.
    pub schema: String,
    /// Whether the policies validate against the schema.
    pub should_validate: bool,
    /// The requests and their expected answers.
    pub requests: Vec<TestRequest>,
}

/// One request and its expected answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRequest {
    /// What the request checks.
    #[serde(default)]
    pub description: String,
    /// The principal.
    #[serde(default)]
    pub principal: Value,
    /// The action.
    #[serde(default)]
    pub action: Value,
    /// The resource.
    #[serde(default)]
    pub resource: Value,
    /// The context record.
    #[serde(default)]
    pub context: Value,
    /// Whether to validate the request against the schema.
    #[serde(default = "yes")]
    pub validate_request: bool,
    /// `allow` or `deny` (any case).
    pub decision: String,
    /// The ids of the policies that determine the decision.
    #[serde(default)]
    pub reason: Vec<String>,
    /// The ids of the policies whose evaluation fails.
    #[serde(default)]
    pub errors: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A test file whose paths have been resolved against its root.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The test file.
    pub file: PathBuf,
    /// Its content.
    pub test: TestFile,
    /// The policy file on disk.
    pub policies: PathBuf,
    /// The entities file on disk.
    pub entities: PathBuf,
    /// The schema file on disk.
    pub schema: PathBuf,
}

impl Pending {
    /// Resolves the paths of `test` against `root`, or (without one) against
    /// the nearest folder above the test file in which all three exist.
    pub fn resolve(
        tree: &Tree,
        file: &Path,
        test: TestFile,
        root: Option<&Path>,
    ) -> Result<Self, SuiteError> {
        let named = [&test.policies, &test.entities, &test.schema];
        let base = match root {
            Some(root) => {
                if let Some(missing) = named.iter().find(|p| !tree.is_file(&root.join(p.as_str())))
                {
                    return Err(SuiteError::Suite(format!(
                        "cannot find `{missing}` in the root folder `{}`",
                        root.display()
                    )));
                }
                root.to_path_buf()
            }
            None => file
                .ancestors()
                .skip(1)
                .find(|dir| named.iter().all(|p| tree.is_file(&dir.join(p.as_str()))))
                .map(Path::to_path_buf)
                .ok_or_else(|| {
                    let dir = file.parent().unwrap_or(file);
                    let missing = named
                        .iter()
                        .find(|p| !tree.is_file(&dir.join(p.as_str())))
                        .unwrap_or(&named[0]);
                    SuiteError::Unresolved((*missing).clone())
                })?,
        };
        Ok(Self {
            file: file.to_path_buf(),
            policies: base.join(&test.policies),
            entities: base.join(&test.entities),
            schema: base.join(&test.schema),
            test,
        })
    }
}

fn revision() -> Revision {
    Revision {
        generation: 0,
        sha256: String::new(),
    }
}

/// Runs test files that share one schema file and one entities file, parsing
/// those once.
pub fn run_group(
    tree: &Tree,
    schema_path: &Path,
    entities_path: &Path,
    tests: Vec<Pending>,
) -> Vec<FileResult> {
    let shown = |p: &Pending| p.file.display().to_string();
    let schema = tree.read(schema_path).and_then(|text| {
        let name = tests
            .first()
            .map(|t| t.test.schema.clone())
            .unwrap_or_default();
        Ok(parse_schema(&[SourceFile { name, text }])?)
    });
    let schema = match schema {
        Ok(s) => s,
        Err(e) => {
            return tests
                .iter()
                .map(|t| FileResult::broken(shown(t), &e))
                .collect()
        }
    };
    let entities_json: Result<Value, SuiteError> = tree.read(entities_path).and_then(|text| {
        serde_json::from_str(&text).map_err(|e| {
            SuiteError::Format(format!(
                "`{}` is not valid JSON: {e}",
                entities_path.display()
            ))
        })
    });
    // Entities depend only on the schema, so the first snapshot built parses
    // them for every file of the group.
    let mut entities: Option<Result<Entities, String>> = None;
    let mut remaining = tests.len();
    let mut out = Vec::with_capacity(remaining);
    let mut schema = Some(schema);
    for pending in tests {
        // Every file but the last gets a copy; the last takes the schema.
        remaining -= 1;
        let this = if remaining == 0 {
            schema.take()
        } else {
            schema.clone()
        };
        if let Some(this) = this {
            out.push(run_one(tree, pending, this, &entities_json, &mut entities));
        }
    }
    out
}

fn run_one(
    tree: &Tree,
    pending: Pending,
    schema: Schema,
    entities_json: &Result<Value, SuiteError>,
    entities: &mut Option<Result<Entities, String>>,
) -> FileResult {
    let file = pending.file.display().to_string();
    let text = match tree.read(&pending.policies) {
        Ok(t) => t,
        Err(e) => return FileResult::broken(file, &e),
    };
    let files = [SourceFile {
        name: pending.test.policies.clone(),
        text,
    }];
    let mut snapshot = match PolicySnapshot::build(&files, schema, Naming::CedarDefault, revision())
    {
        Ok(s) => s,
        Err(e) => return FileResult::broken(file, &SuiteError::Policy(e)),
    };
    let errors = snapshot.validate(&files);
    let validation = validation_check(&pending.test, &errors, &snapshot);
    let entities = entities.get_or_insert_with(|| match entities_json {
        Ok(json) => authz::parse_entities(&snapshot, json).map_err(|e| {
            format!(
                "the entities `{}` are not valid against the schema: {}",
                pending.test.entities, e.message
            )
        }),
        Err(e) => Err(e.to_string()),
    });
    let entities = match entities {
        Ok(e) => e,
        Err(message) => {
            return FileResult {
                file,
                checks: vec![
                    validation,
                    CaseResult::new("load", Status::Failed(message.clone())),
                ],
                cases: Vec::new(),
            }
        }
    };
    let cases = pending
        .test
        .requests
        .iter()
        .enumerate()
        .map(|(i, request)| run_request(&snapshot, entities, i, request))
        .collect();
    FileResult {
        file,
        checks: vec![validation],
        cases,
    }
}

/// Whether validation came out as `shouldValidate` says.
fn validation_check(
    test: &TestFile,
    errors: &[crate::policy::LoadError],
    snapshot: &PolicySnapshot,
) -> CaseResult {
    let status = match (test.should_validate, errors.is_empty()) {
        (true, true) | (false, false) => Status::Passed,
        (true, false) => {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Status::Failed(format!(
                "expected the policies to validate against the schema, but: {}",
                all.join("; ")
            ))
        }
        (false, true) => {
            let warning = snapshot
                .warnings
                .iter()
                .find(|w| w.message.contains(ACTION_APPLICATION_WARNING));
            match warning {
                Some(_) => Status::KnownDifference(format!(
                    "marked `shouldValidate: false`, but validates under cedar-policy {}: \
                     since Cedar 4.12 \"{ACTION_APPLICATION_WARNING}\" is a validation warning, \
                     not an error; decisions are unaffected",
                    cedar_policy::get_sdk_version(),
                )),
                None => Status::Failed(
                    "expected the policies not to validate against the schema, but they do".into(),
                ),
            }
        }
    };
    CaseResult::new("validation", status)
}

fn run_request(
    snapshot: &PolicySnapshot,
    entities: &Entities,
    index: usize,
    request: &TestRequest,
) -> CaseResult {
    let name = if request.description.is_empty() {
        format!("request {index}")
    } else {
        request.description.clone()
    };
    let expected_allow = match request.decision.parse::<authz::Effect>() {
        Ok(effect) => effect.is_allow(),
        Err(message) => {
            return CaseResult::new(
                name,
                Status::Failed(format!("the expected decision: {message}")),
            )
        }
    };
    let sorted = |ids: &[String]| -> Vec<String> {
        let set: BTreeSet<&String> = ids.iter().collect();
        set.into_iter().cloned().collect()
    };
    let want_reasons = sorted(&request.reason);
    let want_errors = sorted(&request.errors);
    let expected = describe_decision(expected_allow, &want_reasons, &want_errors);
    let decided = (|| {
        let principal = authz::parse_uid_in(snapshot, "principal", &request.principal)?;
        let action = authz::parse_uid_in(snapshot, "action", &request.action)?;
        let resource = authz::parse_uid_in(snapshot, "resource", &request.resource)?;
        let built = authz::build_request(
            snapshot,
            principal,
            action,
            resource,
            Some(&request.context),
            request.validate_request,
        )?;
        Ok::<_, authz::InputError>(authz::decide(snapshot, &built, entities))
    })();
    let status = judge(
        decided,
        &expected,
        expected_allow,
        Some(&want_reasons),
        &want_errors,
    );
    CaseResult::new(name, status)
}
