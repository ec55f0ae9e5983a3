//! Policy sets: reading Cedar policy files and a schema from disk, naming every
//! policy, validating the set strictly, and describing where each policy and
//! each error lives (file, line, column).
//!
//! The result is a [`PolicySnapshot`]: an immutable value that the rest of
//! cedard evaluates against. Hot reload (`policy::watch`) builds a new snapshot
//! and swaps it in whole. This module knows nothing about HTTP, redb or the
//! test runner.

pub mod data;
pub mod decode;
pub mod issuers;
pub mod memo;
pub mod requests;
pub mod slice;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{
    Entities, EntityTypeName, Policy, PolicyId, PolicySet, Schema, SchemaFragment, Template,
    ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// One problem found while loading a policy set, located as precisely as the
/// source allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LoadError {
    /// The file, relative to the policy folder (or the schema path as given).
    pub file: String,
    /// 1-based line, when the problem has a location.
    pub line: Option<usize>,
    /// 1-based column, when the problem has a location.
    pub column: Option<usize>,
    /// What is wrong, in Cedar's words.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Why a policy set was refused: every problem found, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the policy set is invalid ({} error(s)); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct PolicyError(pub Vec<LoadError>);

/// Where one policy came from and what it says, for listings, reasons and
/// error reports.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PolicyMeta {
    /// The id decisions report: the `@id` annotation, or `<file>#<index>`.
    pub id: String,
    /// The file, relative to the policy folder.
    pub file: String,
    /// 1-based line of the policy's first token (its first annotation).
    pub line: usize,
    /// Position of the policy within its file, counting from 0.
    pub index: usize,
    /// `permit` or `forbid`.
    #[schema(value_type = String)]
    pub effect: &'static str,
    /// Whether this is a template (templates decide nothing until linked).
    pub template: bool,
    /// All annotations, `@id` included.
    pub annotations: BTreeMap<String, String>,
}

/// Identifies the exact files a snapshot was built from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Revision {
    /// Counts successful loads since the daemon started, from 1.
    pub generation: u64,
    /// SHA-256 over the relative path and content of every loaded file.
    pub sha256: String,
}

/// How policies are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `@id("...")` if present, else `<file>#<index>`: what the daemon uses.
    Annotation,
    /// Cedar's own `policy0`, `policy1`, … in file order, as
    /// `PolicySet::from_str` assigns them: what Cedar's test format expects.
    CedarDefault,
}

/// A source file read from disk (or anywhere else).
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the folder it was found in, with `/` separators.
    pub name: String,
    /// The file's text.
    pub text: String,
}

impl SourceFile {
    /// This schema file in Cedar's JSON schema format (a Cedar-syntax file
    /// converted, its common types resolved), or `None` when it does not
    /// read as a schema. For readers that need more of the schema than
    /// cedar-policy's `Schema` exposes.
    pub fn schema_json(&self) -> Option<serde_json::Value> {
        if self.name.ends_with(".json") {
            serde_json::from_str(&self.text).ok()
        } else {
            cedar_policy::schema_str_to_json_with_resolved_types(&self.text)
                .ok()
                .map(|(v, _)| v)
        }
    }
}

/// An immutable, fully parsed policy set with its schema. Every decision is
/// evaluated against exactly one snapshot.
#[derive(Debug)]
pub struct PolicySnapshot {
    /// The policies, named as [`PolicyMeta::id`] says.
    pub policies: PolicySet,
    /// The schema the policies, requests and entities are checked against.
    pub schema: Schema,
    /// The schema files the schema was parsed from, for readers that need
    /// more than cedar-policy's `Schema` exposes (like attribute names).
    pub schema_files: Vec<SourceFile>,
    /// One entry per policy and template, in file order then position.
    pub meta: Vec<PolicyMeta>,
    by_id: HashMap<PolicyId, usize>,
    /// The action entities of the schema, built once so that each decision
    /// does not rebuild them.
    pub action_entities: Entities,
    /// Which files this is.
    pub revision: Revision,
    /// When this snapshot was built.
    pub loaded_at: OffsetDateTime,
    /// Validator warnings (they do not refuse a set, but admins want them).
    pub warnings: Vec<LoadError>,
    /// Inline entities already decoded against this snapshot's schema. It
    /// lives and dies with the snapshot, so a reload (perhaps of the schema)
    /// never reuses a decoding made under another schema.
    pub entity_cache: memo::InlineMemo,
    /// Every entity type of the schema (actions' types included) by its
    /// canonical name, so that entity references naming them need not go
    /// through Cedar's name parser on every request.
    pub type_names: HashMap<String, EntityTypeName>,
    /// The entities of the entity data files (`--entities`).
    pub data: data::DataEntities,
    /// The schema's entity types as the schema-directed entity decoder
    /// reads them (empty until the schema files are known: then every
    /// entity goes to Cedar's parser).
    pub shapes: decode::Shapes,
    /// What every decision's entities start from: the schema's action
    /// entities and the data files' entities, hierarchy computed once per
    /// load.
    pub base_entities: Entities,
    /// The schema's actions by their id (`"startPod"` →
    /// `Action::"startPod"`), for APIs that name an action by its id alone.
    pub actions_by_name: HashMap<String, Vec<cedar_policy::EntityUid>>,
    /// The policies that can apply to each kind of request the schema
    /// declares, so that a decision evaluates only those.
    pub slices: slice::Slices,
    /// The requests whose validation against the schema is known to pass
    /// (empty until the schema files are known: every request is then
    /// validated in full).
    pub valid_requests: requests::ValidRequests,
    /// The trusted issuers of the issuer files (`--issuers`), checked
    /// against the schema.
    pub issuers: Arc<crate::identity::Issuers>,
}

impl PolicySnapshot {
    /// Looks up the metadata of a policy by the id decisions report.
    pub fn meta_of(&self, id: &PolicyId) -> Option<&PolicyMeta> {
        self.by_id.get(id).map(|&i| &self.meta[i])
    }

    /// Parses policy files and assembles a snapshot, without validating the
    /// policies against the schema (see [`validate`](Self::validate)).
    pub fn build(
        files: &[SourceFile],
        schema: Schema,
        naming: Naming,
        revision: Revision,
    ) -> Result<Self, PolicyError> {
        let mut errors = Vec::new();
        let mut policies = PolicySet::new();
        let mut meta: Vec<PolicyMeta> = Vec::new();
        let mut by_id: HashMap<PolicyId, usize> = HashMap::new();
        for file in files {
            let parsed = match parse_file(&file.text) {
                Ok(p) => p,
                Err(e) => {
                    errors.extend(diagnostic_errors(&file.name, &file.text, e.as_ref()));
                    continue;
                }
            };
            for (index, item) in parsed.into_iter().enumerate() {
                let id = match naming {
                    Naming::CedarDefault => format!("policy{index}"),
                    Naming::Annotation => item
                        .annotation("id")
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{}#{index}", file.name)),
                };
                let pid = PolicyId::new(&id);
                if let Some(&previous) = by_id.get(&pid) {
                    let first = &meta[previous];
                    errors.push(LoadError {
                        file: file.name.clone(),
                        line: Some(item.line),
                        column: Some(1),
                        message: format!(
                            "duplicate policy id `{id}`: already used at {}:{}",
                            first.file, first.line
                        ),
                    });
                    continue;
                }
                let entry = PolicyMeta {
                    id: id.clone(),
                    file: file.name.clone(),
                    line: item.line,
                    index,
                    effect: item.effect(),
                    template: matches!(item.body, Item::Template(_)),
                    annotations: item.annotations(),
                };
                let added = match item.body {
                    Item::Policy(p) => policies.add(p.new_id(pid.clone())),
                    Item::Template(t) => policies.add_template(t.new_id(pid.clone())),
                };
                if let Err(e) = added {
                    errors.push(LoadError {
                        file: file.name.clone(),
                        line: Some(item.line),
                        column: Some(1),
                        message: e.to_string(),
                    });
                    continue;
                }
                by_id.insert(pid, meta.len());
                meta.push(entry);
            }
        }
        let action_entities = match schema.action_entities() {
            Ok(a) => a,
            Err(e) => {
                errors.push(LoadError {
                    file: "schema".into(),
                    line: None,
                    column: None,
                    message: describe(&e),
                });
                Entities::empty()
            }
        };
        if !errors.is_empty() {
            return Err(PolicyError(errors));
        }
        let base_entities = action_entities.clone();
        let slices = slice::Slices::build(&policies, &schema, &action_entities);
        Ok(Self {
            slices,
            valid_requests: requests::ValidRequests::default(),
            issuers: Arc::default(),
            policies,
            meta,
            by_id,
            action_entities,
            revision,
            loaded_at: OffsetDateTime::now_utc(),
            warnings: Vec::new(),
            entity_cache: memo::InlineMemo::default(),
            type_names: schema_type_names(&schema),
            data: data::DataEntities::default(),
            shapes: decode::Shapes::default(),
            base_entities,
            actions_by_name: actions_by_name(&schema),
            schema,
            schema_files: Vec::new(),
        })
    }

    /// Validates the policies against the schema in strict mode. Returns the
    /// errors (empty when the set validates) and records warnings.
    pub fn validate(&mut self, files: &[SourceFile]) -> Vec<LoadError> {
        let result =
            Validator::new(self.schema.clone()).validate(&self.policies, ValidationMode::Strict);
        // One line index per file, built when a diagnostic first needs it.
        let indexes: std::cell::RefCell<HashMap<&str, LineIndex<'_>>> = Default::default();
        let locate = |id: &PolicyId, diag: &dyn Diagnostic, message: String| {
            let (file, text) = match self.meta_of(id) {
                Some(m) => (
                    m.file.clone(),
                    files
                        .iter()
                        .find(|f| f.name == m.file)
                        .map(|f| (f.name.as_str(), f.text.as_str())),
                ),
                None => (id.to_string(), None),
            };
            let (line, column) = match (first_offset(diag), text) {
                (Some(off), Some((name, text))) => {
                    let (l, c) = indexes
                        .borrow_mut()
                        .entry(name)
                        .or_insert_with(|| LineIndex::new(text))
                        .line_col(off);
                    (Some(l), Some(c))
                }
                _ => (self.meta_of(id).map(|m| m.line), None),
            };
            LoadError {
                file,
                line,
                column,
                message,
            }
        };
        let warnings = result
            .validation_warnings()
            .map(|w| locate(w.policy_id(), w, describe(w)))
            .collect();
        let errors = result
            .validation_errors()
            .map(|e| locate(e.policy_id(), e, describe(e)))
            .collect();
        self.warnings = warnings;
        errors
    }
}

/// The entity types of a schema, actions' types included, by canonical name.
fn schema_type_names(schema: &Schema) -> HashMap<String, EntityTypeName> {
    schema
        .entity_types()
        .cloned()
        .chain(schema.actions().map(|a| a.type_name().clone()))
        .map(|t| (t.to_string(), t))
        .collect()
}

/// The schema's actions by id, each id with every action type that has it
/// (one, unless namespaces repeat an id).
fn actions_by_name(schema: &Schema) -> HashMap<String, Vec<cedar_policy::EntityUid>> {
    let mut out: HashMap<String, Vec<cedar_policy::EntityUid>> = HashMap::new();
    for action in schema.actions() {
        out.entry(action.id().unescaped().to_owned())
            .or_default()
            .push(action.clone());
    }
    out
}

/// A parsed policy or template with its position in the file.
struct Parsed {
    line: usize,
    body: Item,
}

enum Item {
    Policy(Policy),
    Template(Template),
}

impl Parsed {
    fn annotation(&self, key: &str) -> Option<&str> {
        match &self.body {
            Item::Policy(p) => p.annotation(key),
            Item::Template(t) => t.annotation(key),
        }
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let pairs: Vec<(&str, &str)> = match &self.body {
            Item::Policy(p) => p.annotations().collect(),
            Item::Template(t) => t.annotations().collect(),
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn effect(&self) -> &'static str {
        let effect = match &self.body {
            Item::Policy(p) => p.effect(),
            Item::Template(t) => t.effect(),
        };
        match effect {
            cedar_policy::Effect::Permit => "permit",
            cedar_policy::Effect::Forbid => "forbid",
        }
    }
}

/// Parses one file into its policies and templates, in file order, each with
/// the line it starts on. Cedar numbers the statements of a file `policy0`,
/// `policy1`, … in order, whether they are policies or templates.
fn parse_file(text: &str) -> Result<Vec<Parsed>, Box<cedar_policy::ParseErrors>> {
    let set: PolicySet = text.parse().map_err(Box::new)?;
    let lines = LineIndex::new(text);
    let count = set.policies().count() + set.templates().count();
    let mut out = Vec::with_capacity(count);
    let mut cursor = 0usize;
    for i in 0..count {
        let pid = PolicyId::new(format!("policy{i}"));
        let (body, source) = if let Some(p) = set.policy(&pid) {
            (Item::Policy(p.clone()), p.to_cedar())
        } else if let Some(t) = set.template(&pid) {
            (Item::Template(t.clone()), Some(t.to_cedar()))
        } else {
            // Cedar numbers every statement; a gap cannot happen, but if it
            // did, skipping keeps the remaining policies correctly placed.
            continue;
        };
        // `to_cedar` returns the policy's exact source text, so finding it
        // after the previous policy gives the policy's offset in the file.
        let offset = source
            .as_deref()
            .and_then(|s| text[cursor..].find(s).map(|o| (cursor + o, s.len())));
        let line = match offset {
            Some((start, len)) => {
                cursor = start + len;
                lines.line(start)
            }
            None => lines.line(cursor),
        };
        out.push(Parsed { line, body });
    }
    Ok(out)
}

/// Converts a byte offset into a 1-based line and column (in characters).
/// For many offsets into one text, build a [`LineIndex`] once instead.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(offset)
}

/// Where each line of one text starts, so that locating a byte offset is a
/// binary search rather than a count from the start of the file: locating
/// every policy of a file stays linear in the file's size.
pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line; the first is 0.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes `text` in one pass.
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        // The number of lines starting at or before `offset`.
        self.starts.partition_point(|&s| s <= offset)
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line(offset);
        let start = self.starts[line - 1];
        let column = self.text[start..offset].chars().count() + 1;
        (line, column)
    }
}

/// The byte offset of a diagnostic's first labelled span, if it has one.
fn first_offset(diag: &dyn Diagnostic) -> Option<usize> {
    diag.labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset())
}

/// A one-line description of a Cedar diagnostic: its message, then its help.
pub fn describe(diag: &dyn Diagnostic) -> String {
    let mut message = diag.to_string();
    // Some Cedar errors say only what failed ("entity does not conform to
    // the schema") and keep why in their source.
    let mut source = diag.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    if let Some(help) = diag.help() {
        message.push_str(": ");
        message.push_str(&help.to_string());
    }
    message
}

/// Converts a Cedar error with possibly many parts (like `ParseErrors`) into
/// located errors for one file.
fn diagnostic_errors(file: &str, text: &str, diag: &dyn Diagnostic) -> Vec<LoadError> {
    let lines = LineIndex::new(text);
    let locate = |d: &dyn Diagnostic| {
        let (line, column) = match first_offset(d) {
            Some(off) => {
                let (l, c) = lines.line_col(off);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        LoadError {
            file: file.to_owned(),
            line,
            column,
            message: describe(d),
        }
    };
    let related: Vec<LoadError> = diag
        .related()
        .map(|r| r.map(&locate).collect())
        .unwrap_or_default();
    if related.is_empty() {
        vec![locate(diag)]
    } else {
        let mut all = vec![locate(diag)];
        all.extend(related);
        all.dedup();
        all
    }
}

/// Where a policy set lives on disk.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The folder of `*.cedar` files (searched recursively).
    pub policies: PathBuf,
    /// A schema file, or a folder of `*.cedarschema` / `*.cedarschema.json`.
    pub schema: PathBuf,
    /// The bounds a load is held to.
    pub limits: Limits,
    /// An entity data file, or a folder of `*.json` entity files (searched
    /// recursively): entities the policies need that cedard does not store.
    pub entities: Option<PathBuf>,
    /// Entity types a data file may not define (the types cedard stores).
    pub reserved_types: Vec<String>,
    /// `(type, attribute)`: the attributes cedard builds from its records,
    /// which no token claim may be mapped to.
    pub reserved_attributes: Vec<(String, String)>,
    /// A folder of trusted issuer files (`*.yaml`, `*.yml`): the OpenID
    /// Connect / JWT issuers whose tokens identify principals.
    pub issuers: Option<PathBuf>,
}

/// The largest policy or schema file read, by default: 16 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The most policies and templates in one set, by default.
pub const DEFAULT_MAX_POLICIES: usize = 100_000;

/// Bounds on what one load reads, so that a runaway file (a log written into
/// the policy folder, a generator gone wrong) is refused with a clear error
/// instead of holding the reload, and memory, for minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest policy or schema file, in bytes.
    pub max_file_bytes: u64,
    /// The most policies and templates in the whole set.
    pub max_policies: usize,
    /// Whether links out of a folder are followed (`--follow-links-out`).
    pub links_out: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_policies: DEFAULT_MAX_POLICIES,
            links_out: false,
        }
    }
}

/// The raw files of one load: read once, hashed, then parsed.
#[derive(Debug, Clone)]
pub struct Files {
    /// Policy files, sorted by relative path.
    pub policies: Vec<SourceFile>,
    /// Schema files, sorted by name.
    pub schemas: Vec<SourceFile>,
    /// Entity data files, sorted by relative path.
    pub entities: Vec<SourceFile>,
    /// The issuers folder's files (issuer files and the JWKS files and
    /// secrets they name), named with their folder, sorted.
    pub issuers: Vec<SourceFile>,
    /// The issuers folder (each file's path within it, which issuer files
    /// use to name their JWKS files and secrets, is its name without it).
    pub issuers_dir: Option<PathBuf>,
    /// The types data files may not define.
    pub reserved_types: Vec<String>,
    /// The attributes no claim may be mapped to (see [`Sources`]).
    pub reserved_attributes: Vec<(String, String)>,
    /// SHA-256 of all of the above.
    pub sha256: String,
    /// The bounds the files were read under (the policy count is checked
    /// once they are parsed).
    pub limits: Limits,
    /// Size and modification time of every file read, sorted by path: with
    /// the content, what tells a file that is still being written.
    pub stamps: Vec<Stamp>,
    /// The text of the policy folder's [`ACKNOWLEDGED_FILE`] (empty when
    /// there is none): the candidates a reload guard was told to let
    /// through. Not part of `sha256`, which names the set itself.
    pub acknowledged: String,
}

/// The file in the policy folder that lists the hashes (`sha256` of
/// [`Files`]) of the policy sets an admin acknowledged after review, one per
/// line (`#` starts a comment): the reload guard lets them through.
pub const ACKNOWLEDGED_FILE: &str = "acknowledged.sha256";

/// The hashes an acknowledgement file's text lists.
pub fn parse_acknowledged(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A file's size and modification time when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The path as read.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Its modification time, where the file system keeps one.
    pub modified: Option<std::time::SystemTime>,
    /// Its status-change time (seconds, nanoseconds) and inode, on unix:
    /// a rewrite or a file renamed over it changes them even when its size
    /// and modification time stay the same.
    pub changed: Option<(i64, i64, u64)>,
}

impl Stamp {
    /// The stamp of the file at `path` whose metadata (links followed) is
    /// `meta`.
    fn of(path: &Path, meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let changed = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.ctime(), meta.ctime_nsec(), meta.ino()))
        };
        #[cfg(not(unix))]
        let changed = None;
        Self {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
        }
    }
}

impl Files {
    /// The most recent modification time of any file read but those that
    /// `complete` holds (each a canonical path: a file, or a folder whose
    /// files all count as complete).
    pub fn youngest_but(&self, complete: &[PathBuf]) -> Option<std::time::SystemTime> {
        self.stamps
            .iter()
            .filter(|s| {
                complete.is_empty()
                    || !s
                        .path
                        .canonicalize()
                        .is_ok_and(|p| complete.iter().any(|c| p.starts_with(c)))
            })
            .filter_map(|s| s.modified)
            .max()
    }

    /// The first file whose content, size or modification time differs
    /// between `self` and `other`, or that only one of them has.
    pub fn first_difference(&self, other: &Files) -> Option<String> {
        let texts = |f: &Files| {
            f.policies
                .iter()
                .chain(&f.schemas)
                .chain(&f.entities)
                .chain(&f.issuers)
                .map(|s| (s.name.clone(), s.text.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let (a, b) = (texts(self), texts(other));
        if let Some(name) = a
            .iter()
            .find(|(n, t)| b.get(*n) != Some(*t))
            .map(|(n, _)| n.clone())
            .or_else(|| b.keys().find(|n| !a.contains_key(*n)).cloned())
        {
            return Some(name);
        }
        self.stamps
            .iter()
            .zip(&other.stamps)
            .find(|(x, y)| x != y)
            .map(|(x, _)| x.path.display().to_string())
            .or_else(|| (self.stamps.len() != other.stamps.len()).then(|| "a file".to_owned()))
    }
}

impl Sources {
    /// Reads every policy and schema file. Fails with located errors when a
    /// folder or file cannot be read.
    pub fn read(&self) -> Result<Files, PolicyError> {
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        let mut stamps = Vec::new();
        collect(
            &self.policies,
            &self.policies,
            &mut policies,
            &mut stamps,
            &mut errors,
            Wanted {
                name: is_policy_file,
                max_bytes: self.limits.max_file_bytes,
                links_out: self.limits.links_out,
                contents: true,
            },
        );
        let mut schemas = Vec::new();
        if self.schema.is_dir() {
            collect(
                &self.schema,
                &self.schema,
                &mut schemas,
                &mut stamps,
                &mut errors,
                Wanted {
                    name: is_schema_file,
                    max_bytes: self.limits.max_file_bytes,
                    links_out: self.limits.links_out,
                    contents: true,
                },
            );
            if schemas.is_empty() && errors.is_empty() {
                errors.push(LoadError {
                    file: self.schema.display().to_string(),
                    line: None,
                    column: None,
                    message: "no `*.cedarschema` or `*.cedarschema.json` file in the schema folder"
                        .into(),
                });
            }
        } else {
            match read_capped(&self.schema, self.limits.max_file_bytes) {
                Ok((text, stamp)) => {
                    stamps.push(stamp);
                    schemas.push(SourceFile {
                        name: self
                            .schema
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        text,
                    })
                }
                Err(e) => errors.push(LoadError {
                    file: self.schema.display().to_string(),
                    line: None,
                    column: None,
                    message: format!("cannot read the schema: {e}"),
                }),
            }
        }
        let mut entities = Vec::new();
        if let Some(path) = &self.entities {
            self.read_entities(path, &mut entities, &mut stamps, &mut errors);
        }
        let mut issuers = Vec::new();
        if let Some(dir) = &self.issuers {
            if dir.is_dir() {
                self.read_folder(
                    dir,
                    crate::identity::issuer::is_folder_file,
                    &mut issuers,
                    &mut stamps,
                    &mut errors,
                );
            } else {
                errors.push(LoadError {
                    file: dir.display().to_string(),
                    line: None,
                    column: None,
                    message: "the issuers folder (`--issuers`) is not a folder".into(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError(errors));
        }
        // Absent (or unreadable) means nothing acknowledged.
        let acknowledged = match read_capped(
            &self.policies.join(ACKNOWLEDGED_FILE),
            self.limits.max_file_bytes,
        ) {
            Ok((text, stamp)) => {
                stamps.push(stamp);
                text
            }
            Err(_) => String::new(),
        };
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        schemas.sort_by(|a, b| a.name.cmp(&b.name));
        entities.sort_by(|a, b| a.name.cmp(&b.name));
        issuers.sort_by(|a, b| a.name.cmp(&b.name));
        stamps.sort_by(|a, b| a.path.cmp(&b.path));
        let mut hasher = Sha256::new();
        for (kind, list) in [
            ("policy", &policies),
            ("schema", &schemas),
            ("entities", &entities),
            ("issuer", &issuers),
        ] {
            for f in list {
                hasher.update(kind.as_bytes());
                hasher.update([0]);
                hasher.update(f.name.as_bytes());
                hasher.update([0]);
                hasher.update((f.text.len() as u64).to_le_bytes());
                hasher.update(f.text.as_bytes());
            }
        }
        Ok(Files {
            policies,
            schemas,
            entities,
            issuers,
            issuers_dir: self.issuers.clone(),
            reserved_types: self.reserved_types.clone(),
            reserved_attributes: self.reserved_attributes.clone(),
            sha256: hex::encode(hasher.finalize()),
            limits: self.limits,
            stamps,
            acknowledged,
        })
    }
}

impl Sources {
    /// The stamps of every file a read would take, without reading one
    /// (the same walk, metadata only), sorted by path; `None` when a folder
    /// or file cannot be looked at (a full read then reports it). What the
    /// periodic check compares, so that an idle daemon reads no file.
    pub fn stamps(&self) -> Option<Vec<Stamp>> {
        let mut stamps = Vec::new();
        let mut errors = Vec::new();
        let mut none = Vec::new();
        let mut walk = |dir: &Path, name: fn(&str) -> bool, stamps: &mut Vec<Stamp>| {
            collect(
                dir,
                dir,
                &mut none,
                stamps,
                &mut errors,
                Wanted {
                    name,
                    max_bytes: self.limits.max_file_bytes,
                    links_out: self.limits.links_out,
                    contents: false,
                },
            )
        };
        walk(&self.policies, is_policy_file, &mut stamps);
        let acknowledged = self.policies.join(ACKNOWLEDGED_FILE);
        if let Ok(meta) = std::fs::metadata(&acknowledged) {
            stamps.push(Stamp::of(&acknowledged, &meta));
        }
        for (path, name) in [
            (Some(&self.schema), is_schema_file as fn(&str) -> bool),
            (self.entities.as_ref(), is_entity_file),
            (
                self.issuers.as_ref(),
                crate::identity::issuer::is_folder_file,
            ),
        ] {
            let Some(path) = path else { continue };
            if path.is_dir() {
                walk(path, name, &mut stamps);
            } else {
                let meta = std::fs::metadata(path).ok()?;
                stamps.push(Stamp::of(path, &meta));
            }
        }
        if !errors.is_empty() {
            return None;
        }
        stamps.sort_by(|a, b| a.path.cmp(&b.path));
        Some(stamps)
    }

    /// Reads every file below the folder `dir` that `name` takes, each
    /// named with the folder, so that an error names a path a user can open
    /// (policy files are named relative to their folder).
    fn read_folder(
        &self,
        dir: &Path,
        name: fn(&str) -> bool,
        out: &mut Vec<SourceFile>,
        stamps: &mut Vec<Stamp>,
        errors: &mut Vec<LoadError>,
    ) {
        let mut found = Vec::new();
        collect(
            dir,
            dir,
            &mut found,
            stamps,
            errors,
            Wanted {
                name,
                max_bytes: self.limits.max_file_bytes,
                links_out: self.limits.links_out,
                contents: true,
            },
        );
        out.extend(found.into_iter().map(|f| SourceFile {
            name: dir.join(&f.name).display().to_string(),
            text: f.text,
        }));
    }

    /// Reads the entity data file, or every `*.json` file below the folder.
    fn read_entities(
        &self,
        path: &Path,
        out: &mut Vec<SourceFile>,
        stamps: &mut Vec<Stamp>,
        errors: &mut Vec<LoadError>,
    ) {
        if path.is_dir() {
            self.read_folder(path, is_entity_file, out, stamps, errors);
            return;
        }
        match read_capped(path, self.limits.max_file_bytes) {
            Ok((text, stamp)) => {
                stamps.push(stamp);
                out.push(SourceFile {
                    name: path.display().to_string(),
                    text,
                });
            }
            Err(e) => errors.push(LoadError {
                file: path.display().to_string(),
                line: None,
                column: None,
                message: format!("cannot read the entity data: {e}"),
            }),
        }
    }
}

/// Parses schema files (Cedar syntax or JSON) into one schema.
pub fn parse_schema(files: &[SourceFile]) -> Result<Schema, PolicyError> {
    let mut errors = Vec::new();
    let mut fragments = Vec::new();
    for f in files {
        let parsed = if f.name.ends_with(".json") {
            SchemaFragment::from_json_str(&f.text)
                .map_err(|e| diagnostic_errors(&f.name, &f.text, &e))
        } else {
            SchemaFragment::from_cedarschema_str(&f.text)
                .map(|(frag, _warnings)| frag)
                .map_err(|e| diagnostic_errors(&f.name, &f.text, &e))
        };
        match parsed {
            Ok(frag) => fragments.push(frag),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(PolicyError(errors));
    }
    Schema::from_schema_fragments(fragments).map_err(|e| {
        // Errors that span fragments can only be placed in a file when there
        // is one file.
        let errs = match files {
            [only] => diagnostic_errors(&only.name, &only.text, &e),
            _ => vec![LoadError {
                file: files
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                line: None,
                column: None,
                message: describe(&e),
            }],
        };
        PolicyError(errs)
    })
}

/// Reads, parses and strictly validates a policy folder and schema: what the
/// daemon does at start and on every reload, and what `cedard validate` does.
pub fn load(sources: &Sources, generation: u64) -> Result<Arc<PolicySnapshot>, PolicyError> {
    let files = sources.read()?;
    load_files(&files, generation)
}

/// Like [`load`], from files already read.
pub fn load_files(files: &Files, generation: u64) -> Result<Arc<PolicySnapshot>, PolicyError> {
    let schema = parse_schema(&files.schemas)?;
    let revision = Revision {
        generation,
        sha256: files.sha256.clone(),
    };
    let mut snapshot =
        PolicySnapshot::build(&files.policies, schema, Naming::Annotation, revision)?;
    // Checked before validation, the expensive part. The error names the
    // file in which the count went over.
    let max = files.limits.max_policies;
    if let Some(over) = snapshot.meta.get(max) {
        return Err(PolicyError(vec![LoadError {
            file: over.file.clone(),
            line: Some(over.line),
            column: None,
            message: format!(
                "the set has {} policies, over the limit of {max} (`--max-policies`)",
                snapshot.meta.len()
            ),
        }]));
    }
    snapshot.schema_files = files.schemas.clone();
    snapshot.shapes = decode::Shapes::from_schema_files(&files.schemas);
    snapshot.valid_requests = requests::ValidRequests::build(&snapshot.schema, &snapshot.shapes);
    let errors = snapshot.validate(&files.policies);
    if !errors.is_empty() {
        return Err(PolicyError(errors));
    }
    if !files.entities.is_empty() {
        let data = data::parse(&files.entities, &snapshot.schema, &files.reserved_types)
            .map_err(PolicyError)?;
        snapshot.base_entities = snapshot
            .action_entities
            .clone()
            .add_entities(data.entities.iter().cloned(), None)
            .map_err(|e| {
                PolicyError(vec![LoadError {
                    file: files
                        .entities
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    line: None,
                    column: None,
                    message: describe(&e),
                }])
            })?;
        snapshot.data = data;
    }
    if !files.issuers.is_empty() {
        snapshot.issuers = Arc::new(issuers::load(files, &snapshot)?);
    }
    Ok(Arc::new(snapshot))
}

fn is_policy_file(name: &str) -> bool {
    name.ends_with(".cedar")
}

fn is_entity_file(name: &str) -> bool {
    name.ends_with(".json")
}

fn is_schema_file(name: &str) -> bool {
    name.ends_with(".cedarschema") || name.ends_with(".cedarschema.json")
}

/// Which files [`collect`] takes, and how large they may be.
#[derive(Clone, Copy)]
struct Wanted {
    name: fn(&str) -> bool,
    max_bytes: u64,
    /// Whether links leading out of the walked folder are followed.
    links_out: bool,
    /// Whether the files are read, or only their stamps taken.
    contents: bool,
}

/// Why a file could not be taken.
#[derive(Debug)]
enum ReadError {
    /// Gone between listing and reading.
    Gone,
    /// Over the size limit.
    TooLarge { size: u64, max: u64 },
    /// A FIFO, socket or device: reading it could block a reload forever.
    NotRegular,
    /// A symbolic link whose target does not exist.
    Dangling(PathBuf),
    /// Anything else the system reported.
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Gone => f.write_str("the file disappeared while it was read"),
            ReadError::TooLarge { size, max } => write!(
                f,
                "the file is {size} bytes, over the {max}-byte limit (`--max-policy-file-bytes`)"
            ),
            ReadError::NotRegular => f.write_str("not a regular file"),
            ReadError::Dangling(target) => write!(
                f,
                "a symbolic link to `{}`, which does not exist",
                target.display()
            ),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads a whole file as text, refusing what is not a regular file or is
/// over `max` bytes (checked before reading, and again while reading, in
/// case the file grows).
fn read_capped(path: &Path, max: u64) -> Result<(String, Stamp), ReadError> {
    use std::io::Read;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // `metadata` follows links: a link that is still there points
            // nowhere, which must not pass for a deleted file.
            return match std::fs::read_link(path) {
                Ok(target) => Err(ReadError::Dangling(target)),
                Err(_) => Err(ReadError::Gone),
            };
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Gone,
        _ => ReadError::Io(e),
    })?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    let size = bytes.len() as u64;
    if size > max {
        return Err(ReadError::TooLarge { size, max });
    }
    let stamp = Stamp::of(path, &meta);
    let text = String::from_utf8(bytes).map_err(|e| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })?;
    Ok((text, stamp))
}

/// The most folders below one another a walk enters.
const MAX_DEPTH: usize = 32;
/// The most folders one walk reads.
const MAX_FOLDERS: usize = 4096;
/// The most matching files one walk takes.
const MAX_FILES: usize = 10_000;

/// Collects matching files below `dir`. Hidden files and folders (editor
/// locks, swap files, `.git`) are skipped; only names with the right ending
/// count, so backup files like `basic.cedar~` never load. A matching name
/// that cannot be read (a dangling link, a FIFO, a file over the size
/// limit) is an error, never silently skipped: a `forbid` file behind a
/// missing mount must not vanish from the set.
///
/// The walk ends: a folder reached a second time (a link back to `.` or a
/// parent: a cycle; or two links to one folder) is an error naming it, and
/// the depth, folders and files are bounded ([`MAX_DEPTH`],
/// [`MAX_FOLDERS`], [`MAX_FILES`]), each an error naming where it stopped.
fn collect(
    root: &Path,
    dir: &Path,
    out: &mut Vec<SourceFile>,
    stamps: &mut Vec<Stamp>,
    errors: &mut Vec<LoadError>,
    wanted: Wanted,
) {
    let mut walk = Walk {
        root,
        real_root: root.canonicalize().ok(),
        wanted,
        out,
        stamps,
        errors,
        seen: std::collections::HashSet::new(),
        folders: 0,
        files: 0,
    };
    walk.enter(dir);
    walk.folder(dir, 0);
}

/// A folder's device and inode, links followed: the same for every path
/// that reaches it, so that a walk can tell a folder it has read already
/// (a link back to `.` or a parent). `None` where that is not known.
pub fn folder_identity(dir: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// One folder walk's state (see [`collect`]).
struct Walk<'a> {
    root: &'a Path,
    /// The root with every link resolved: what "inside the folder" means.
    real_root: Option<PathBuf>,
    wanted: Wanted,
    out: &'a mut Vec<SourceFile>,
    stamps: &'a mut Vec<Stamp>,
    errors: &'a mut Vec<LoadError>,
    /// The folders read, by device and inode (links followed).
    seen: std::collections::HashSet<(u64, u64)>,
    folders: usize,
    files: usize,
}

impl Walk<'_> {
    /// `path` relative to the walk's root, `/`-separated.
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn refuse(&mut self, file: String, message: String) {
        self.errors.push(LoadError {
            file,
            line: None,
            column: None,
            message,
        });
    }

    /// Records that the folder `dir` is read; `false` (with an error) when
    /// it was read before in this walk, or when the walk read its limit of
    /// folders.
    fn enter(&mut self, dir: &Path) -> bool {
        self.folders += 1;
        if self.folders > MAX_FOLDERS {
            if self.folders == MAX_FOLDERS + 1 {
                let file = self.rel(dir);
                self.refuse(
                    file,
                    format!("more than {MAX_FOLDERS} folders to read; the walk stopped here"),
                );
            }
            return false;
        }
        if let Some(id) = folder_identity(dir) {
            if !self.seen.insert(id) {
                let file = self.rel(dir);
                self.refuse(
                    file,
                    "this folder was already read through another path (a link back to a folder \
                     above it, or a second link to one folder); remove the link"
                        .into(),
                );
                return false;
            }
        }
        true
    }

    /// Whether `entry` is a link out of the walked folder that is not
    /// followed (`--follow-links-out` off): a folder or a file the walk
    /// would read is refused naming the link, and nothing behind it is read
    /// (so neither the answers nor the console ever show bytes of a file
    /// elsewhere on the server); any other name is passed over. A dangling
    /// link is not judged here: reading it reports it.
    fn leads_out(&mut self, entry: &std::fs::DirEntry, path: &Path, name: &str) -> bool {
        if self.wanted.links_out || !entry.file_type().is_ok_and(|t| t.is_symlink()) {
            return false;
        }
        let (Some(root), Ok(target)) = (&self.real_root, path.canonicalize()) else {
            return false;
        };
        if target.starts_with(root) {
            return false;
        }
        if target.is_dir() || (self.wanted.name)(name) {
            let file = self.rel(path);
            self.refuse(
                file,
                "a link to a file or folder outside this folder: not followed \
                 (start cedard with `--follow-links-out` to allow it)"
                    .into(),
            );
        }
        true
    }

    fn folder(&mut self, dir: &Path, depth: usize) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.refuse(
                    dir.display().to_string(),
                    format!("cannot read the folder: {e}"),
                );
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if self.leads_out(&entry, &path, &name) {
                continue;
            }
            if path.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    let file = self.rel(&path);
                    self.refuse(
                        file,
                        format!("folders nested deeper than {MAX_DEPTH}; not read"),
                    );
                } else if self.enter(&path) {
                    self.folder(&path, depth + 1);
                }
            } else if (self.wanted.name)(&name) {
                let rel = self.rel(&path);
                self.files += 1;
                if self.files > MAX_FILES {
                    if self.files == MAX_FILES + 1 {
                        self.refuse(
                            rel,
                            format!("more than {MAX_FILES} files; the walk stopped here"),
                        );
                    }
                    return;
                }
                if !self.wanted.contents {
                    match std::fs::metadata(&path) {
                        Ok(meta) => self.stamps.push(Stamp::of(&path, &meta)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => self.refuse(rel, format!("cannot look at the file: {e}")),
                    }
                    continue;
                }
                match read_capped(&path, self.wanted.max_bytes) {
                    Ok((text, stamp)) => {
                        self.stamps.push(stamp);
                        self.out.push(SourceFile { name: rel, text });
                    }
                    // A file deleted between listing and reading is simply gone.
                    Err(ReadError::Gone) => {}
                    Err(e) => self.refuse(rel, format!("cannot read the file: {e}")),
                }
            }
        }
    }
}
