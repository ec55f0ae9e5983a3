//! `cedard test`: running policy test files and reporting what passed.
//!
//! Two formats are understood. Cedar's integration-test JSON
//! ([`cedar_json`]) is what Cedar's own conformance corpus is written in; the
//! YAML suite ([`yaml`]) lets a policy admin describe accounts, members and
//! roles in a few lines and state what each role may do. Both decide every
//! case through `crate::authz`, the same path the HTTP API takes, so a passing
//! suite says something about the daemon, not about a second evaluator.
//!
//! This module finds the files, runs them in parallel (the corpus is
//! thousands of small files), and collects a [`Report`]; [`report`] renders it
//! as text or JUnit XML. It knows nothing about HTTP or redb.

pub mod cedar_json;
pub mod report;
pub mod tree;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use self::tree::Tree;
use crate::authz::{Decision, InputError};
use crate::policy::PolicyError;

/// Why a test file could not be run (as opposed to a case that ran and gave
/// the wrong answer). Each is reported as a failure of the file.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A path given on the command line does not exist.
    #[error("no such file or folder")]
    NotFound,
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the JSON or YAML it should be.
    #[error("{0}")]
    Format(String),
    /// A path inside a test file does not resolve.
    #[error("cannot find `{0}` relative to the test file or any folder above it; pass `--root`")]
    Unresolved(String),
    /// The policies or schema do not load.
    #[error("{}", describe_policy_error(.0))]
    Policy(#[from] PolicyError),
    /// The schema does not describe the account model a YAML suite needs.
    #[error(transparent)]
    Roles(#[from] crate::model::ModelError),
    /// Entities, or a request, are not valid against the schema.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A YAML suite names something it does not declare, or is inconsistent.
    #[error("{0}")]
    Suite(String),
}

fn describe_policy_error(e: &PolicyError) -> String {
    let all: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    format!("the policies do not load: {}", all.join("; "))
}

/// How a case, or a check of a whole file, came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// As expected.
    Passed,
    /// Not as expected: what was expected and what came back.
    Failed(String),
    /// Not as the file expects, for a reason that is known and explained (an
    /// expectation the cedar-policy version cedard uses no longer meets). Not
    /// a failure, but always reported.
    KnownDifference(String),
}

/// One case (one request) or one check of a whole file (validation, loading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// What the case is called: the request's description, or a name made
    /// from principal, action and resource.
    pub name: String,
    /// How it came out.
    pub status: Status,
}

impl CaseResult {
    fn new(name: impl Into<String>, status: Status) -> Self {
        Self {
            name: name.into(),
            status,
        }
    }
}

/// What running one test file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileResult {
    /// The test file, as found from the paths given.
    pub file: String,
    /// Checks of the file as a whole: that it loads, and (Cedar's format)
    /// that validation succeeds exactly when `shouldValidate` says. They are
    /// not counted as passed cases, but each failure counts as a failure.
    pub checks: Vec<CaseResult>,
    /// One entry per request.
    pub cases: Vec<CaseResult>,
}

impl FileResult {
    /// A file that could not be run at all.
    pub fn broken(file: impl Into<String>, error: &SuiteError) -> Self {
        Self {
            file: file.into(),
            checks: vec![CaseResult::new("load", Status::Failed(error.to_string()))],
            cases: Vec::new(),
        }
    }
}

/// Everything one `cedard test` run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per test file, sorted by file.
    pub files: Vec<FileResult>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.all_cases()
            .filter(|c| c.status == Status::Passed)
            .count()
    }

    /// Cases and file checks that failed.
    pub fn failed(&self) -> usize {
        self.files
            .iter()
            .flat_map(|f| f.cases.iter().chain(&f.checks))
            .filter(|c| matches!(c.status, Status::Failed(_)))
            .count()
    }

    /// Known differences, as (file, what differs).
    pub fn known_differences(&self) -> Vec<(&str, &str)> {
        self.files
            .iter()
            .flat_map(|f| {
                f.checks
                    .iter()
                    .chain(&f.cases)
                    .filter_map(|c| match &c.status {
                        Status::KnownDifference(why) => Some((f.file.as_str(), why.as_str())),
                        _ => None,
                    })
            })
            .collect()
    }

    /// Whether the run succeeded: nothing failed.
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    fn all_cases(&self) -> impl Iterator<Item = &CaseResult> {
        self.files.iter().flat_map(|f| f.cases.iter())
    }
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The folder that paths inside Cedar test files are relative to. Without
    /// it, each file uses the nearest folder above it where they resolve.
    pub root: Option<PathBuf>,
    /// The policy set every YAML suite tests instead of the one it names
    /// (`cedard impact` runs the same suites against two sets). Cedar's
    /// integration tests carry their own policies and are not affected.
    pub policy: Option<crate::policy::Sources>,
}

/// A test file found on disk, not yet read.
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    /// Named on the command line (so it must be a test), rather than found in
    /// a folder (where JSON that is not a test is data).
    explicit: bool,
}

/// Runs every test file in `paths` (files, or folders searched recursively).
pub fn run(paths: &[PathBuf], options: &Options) -> Report {
    let mut files = Vec::new();
    let mut found = Vec::new();
    let mut tree = Tree::default();
    for path in paths {
        if Tree::is_archive(path) && path.is_file() {
            // An archive is searched like a folder.
            match tree.add_archive(path) {
                Ok(inside) => found.extend(inside.into_iter().filter(|p| is_candidate(p)).map(
                    |path| Found {
                        path,
                        explicit: false,
                    },
                )),
                Err(e) => files.push(FileResult::broken(path.display().to_string(), &e)),
            }
        } else if path.is_dir() {
            walk(path, &mut found, &mut std::collections::HashSet::new());
        } else if path.is_file() {
            found.push(Found {
                path: path.clone(),
                explicit: true,
            });
        } else {
            files.push(FileResult::broken(
                path.display().to_string(),
                &SuiteError::NotFound,
            ));
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);

    // Reading and parsing the test files is independent work; so is running
    // each group below.
    let loaded: Vec<Loaded> = found.par_iter().map(|f| load(&tree, f)).collect();
    let mut groups: BTreeMap<(PathBuf, PathBuf), Vec<cedar_json::Pending>> = BTreeMap::new();
    let mut suites = Vec::new();
    for item in loaded {
        match item {
            Loaded::Skip => {}
            Loaded::Broken(result) => files.push(result),
            Loaded::Yaml(path) => suites.push(path),
            Loaded::Cedar(path, test) => {
                match cedar_json::Pending::resolve(&tree, &path, *test, options.root.as_deref()) {
                    Ok(pending) => groups
                        .entry((pending.schema.clone(), pending.entities.clone()))
                        .or_default()
                        .push(pending),
                    Err(e) => files.push(FileResult::broken(path.display().to_string(), &e)),
                }
            }
        }
    }
    // Files that share a schema and an entities file (the hand-written tests
    // share a few sample-data files) parse them once.
    let groups: Vec<_> = groups.into_iter().collect();
    let cedar: Vec<FileResult> = groups
        .into_par_iter()
        .flat_map_iter(|((schema, entities), tests)| {
            cedar_json::run_group(&tree, &schema, &entities, tests)
        })
        .collect();
    let yaml: Vec<FileResult> = suites
        .par_iter()
        .map(|p| yaml::run_file(p, options.policy.as_ref()))
        .collect();
    files.extend(cedar);
    files.extend(yaml);
    files.sort_by(|a, b| a.file.cmp(&b.file));
    Report { files }
}

/// A test file after reading it.
enum Loaded {
    /// Not a test (a data file found in a folder).
    Skip,
    /// A file that cannot be run.
    Broken(FileResult),
    /// A YAML suite (read when it runs).
    Yaml(PathBuf),
    /// A Cedar integration test.
    Cedar(PathBuf, Box<cedar_json::TestFile>),
}

fn load(tree: &Tree, found: &Found) -> Loaded {
    let path = &found.path;
    let shown = path.display().to_string();
    if is_yaml(path) {
        return Loaded::Yaml(path.clone());
    }
    let text = match tree.read(path) {
        Ok(t) => t,
        Err(e) => return Loaded::Broken(FileResult::broken(shown, &e)),
    };
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return Loaded::Broken(FileResult::broken(
                shown,
                &SuiteError::Format(format!("not valid JSON: {e}")),
            ))
        }
    };
    // In a folder, JSON that is not an object with `requests` is data (an
    // entities file, a JSON schema); named on the command line, it is a
    // mistake.
    let is_test = value
        .as_object()
        .is_some_and(|o| o.contains_key("requests"));
    if !is_test {
        return if found.explicit {
            Loaded::Broken(FileResult::broken(
                shown,
                &SuiteError::Format(
                    "not a test file: expected a Cedar integration test (an object with `requests`)"
                        .into(),
                ),
            ))
        } else {
            Loaded::Skip
        };
    }
    match serde_json::from_value::<cedar_json::TestFile>(value) {
        Ok(test) => Loaded::Cedar(path.clone(), Box::new(test)),
        Err(e) => Loaded::Broken(FileResult::broken(
            shown,
            &SuiteError::Format(format!("not a Cedar integration test: {e}")),
        )),
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Whether a JSON file may be a Cedar test: entity and schema files are
/// recognised by name and never read as tests.
fn is_candidate(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let data = name.ends_with(".entities.json")
        || name == "entities.json"
        || name.ends_with(".cedarschema.json");
    name.ends_with(".json") && !data
}

/// Collects candidate test files below `dir`: YAML suites, and JSON files
/// other than entity and schema files (which are recognised by name and
/// never read here). Hidden files and folders are skipped, and so is a
/// folder already walked (by device and inode, links followed: a link back
/// to `.` or a parent), so that the walk ends and no file is run twice.
fn walk(dir: &Path, out: &mut Vec<Found>, seen: &mut std::collections::HashSet<(u64, u64)>) {
    if crate::policy::folder_identity(dir).is_some_and(|id| !seen.insert(id)) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out, seen);
            continue;
        }
        if is_yaml(&path) || is_candidate(&path) {
            out.push(Found {
                path,
                explicit: false,
            });
        }
    }
}

/// A readable summary of a decision: `allow (reasons: a, b; errors: none)`.
pub fn describe_decision(allow: bool, reasons: &[String], errors: &[String]) -> String {
    let list = |ids: &[String]| {
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    };
    format!(
        "{} (reasons: {}; errors: {})",
        crate::authz::Effect::from_allow(allow),
        list(reasons),
        list(errors)
    )
}

/// The verdict on one case: `decided` against an expected decision, reason
/// ids (checked only when given) and error ids, both sorted; `expected` is
/// how the expectation is described in a failure line.
pub fn judge<E: std::fmt::Display>(
    decided: Result<Decision, E>,
    expected: &str,
    allow: bool,
    want_reasons: Option<&[String]>,
    want_errors: &[String],
) -> Status {
    match decided {
        Err(e) => Status::Failed(format!("expected {expected}, got an invalid request: {e}")),
        Ok(decision) => {
            let (reasons, errors) = ids_of(&decision);
            let reasons_ok = want_reasons.is_none_or(|r| r == reasons.as_slice());
            if decision.allow == allow && reasons_ok && errors == want_errors {
                Status::Passed
            } else {
                let mut got = describe_decision(decision.allow, &reasons, &errors);
                for e in &decision.errors {
                    got.push_str(&format!("; {}: {}", e.policy_id, e.message));
                }
                Status::Failed(format!("expected {expected}, got {got}"))
            }
        }
    }
}

/// The reason and error ids of a decision, sorted.
pub fn ids_of(decision: &Decision) -> (Vec<String>, Vec<String>) {
    let mut reasons: Vec<String> = decision
        .reasons
        .iter()
        .map(|r| r.policy_id.clone())
        .collect();
    reasons.sort();
    reasons.dedup();
    let mut errors: Vec<String> = decision
        .errors
        .iter()
        .map(|e| e.policy_id.clone())
        .collect();
    errors.sort();
    errors.dedup();
    (reasons, errors)
}
