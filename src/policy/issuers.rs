//! The trusted issuer files of a set (`--issuers`): read by `identity`,
//! then held to the set's schema — the principal type each maps tokens to
//! must be declared, and each attribute a claim is mapped to must be one
//! the schema declares on it and cedard does not store itself — so that a
//! mapping that cannot fit is refused with file and line, like a policy.

use super::{Files, LoadError, PolicyError, PolicySnapshot};
use crate::identity::{IssuerError, IssuerFolder, Issuers};

/// Reads and checks the issuer files of `files` against `snapshot`'s
/// schema.
pub fn load(files: &Files, snapshot: &PolicySnapshot) -> Result<Issuers, PolicyError> {
    let dir = files
        .issuers_dir
        .as_deref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    // Each file by its path relative to the folder (their names carry it).
    let folder = IssuerFolder {
        files: files
            .issuers
            .iter()
            .map(|f| {
                let relative = f
                    .name
                    .strip_prefix(dir.as_str())
                    .map_or(f.name.as_str(), |r| r.trim_start_matches('/'));
                (relative, f.name.as_str(), f.text.as_str())
            })
            .collect(),
    };
    let issuers = Issuers::parse(&folder)
        .map_err(|errors| PolicyError(errors.into_iter().map(located).collect()))?;
    let mut errors = Vec::new();
    for issuer in issuers.iter() {
        let text = files
            .issuers
            .iter()
            .find(|f| f.name == issuer.file)
            .map_or("", |f| f.text.as_str());
        let ty = &issuer.principal_type;
        if !snapshot.type_names.contains_key(ty) {
            errors.push(located(issuer.error_at(
                text,
                "type",
                format!("principal type `{ty}`: the schema declares no such entity type"),
            )));
            continue;
        }
        for (attribute, claim) in &issuer.attributes {
            let stored = files
                .reserved_attributes
                .iter()
                .any(|(t, a)| t == ty && a == attribute);
            let message = if stored {
                Some(format!("attribute `{attribute}` (from the claim `{claim}`): cedard stores `{ty}.{attribute}` itself; map the claim to another attribute"))
            } else if snapshot.shapes.declares(ty, attribute) == Some(false) {
                Some(format!("attribute `{attribute}` (from the claim `{claim}`): the schema declares no attribute `{attribute}` on `{ty}`; declare it (optional: `{attribute}?: …`) or remove the mapping"))
            } else {
                None
            };
            if let Some(message) = message {
                errors.push(located(issuer.error_at(text, attribute, message)));
            }
        }
    }
    if !errors.is_empty() {
        return Err(PolicyError(errors));
    }
    Ok(issuers)
}

fn located(e: IssuerError) -> LoadError {
    LoadError {
        file: e.file,
        line: e.line,
        column: e.column,
        message: e.message,
    }
}
