//! Trusted issuer files: one YAML file per OpenID Connect / JWT issuer in
//! the issuers folder (`--issuers`), read with the policies and refused,
//! with file and line, like a policy.

use std::collections::{BTreeMap, HashSet};

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::jwks::{self, discovery_url, fetchable, KeySource, Plan};
use super::IssuerFolder;

/// The algorithms an issuer accepts when its file names none.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Seconds of clock skew allowed on `exp` and `nbf` by default.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;
/// Seconds between key fetches when the key endpoint sends no
/// `Cache-Control: max-age`.
pub const DEFAULT_REFRESH_SECONDS: u64 = 300;
/// Seconds the last good keys serve while the key endpoint cannot be
/// reached; then tokens are refused.
pub const DEFAULT_KEYS_LIFETIME_SECONDS: u64 = 86_400;
/// The least time between two fetches a token with an unknown `kid` may
/// cause.
pub const DEFAULT_UNKNOWN_KID_SECONDS: u64 = 60;

/// One issuer file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    hmac_secret_file: Option<String>,
    #[serde(default)]
    leeway_seconds: Option<u64>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    keys_refresh_seconds: Option<u64>,
    #[serde(default)]
    keys_lifetime_seconds: Option<u64>,
    #[serde(default)]
    unknown_kid_refetch_seconds: Option<u64>,
    #[serde(default)]
    principal: PrincipalFile,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    profile: ProfileFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id_claim: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    email_claim: Option<String>,
    #[serde(default)]
    name_claim: Option<String>,
    #[serde(default)]
    email_verified_claim: Option<String>,
}

/// Which claims of a verified token give the sign-up profile (just-in-time
/// provisioning from a token).
#[derive(Debug, Clone)]
pub struct Profile {
    /// The email claim (default `email`).
    pub email_claim: String,
    /// The display name claim (default `name`).
    pub name_claim: String,
    /// Whether the issuer verified the email (default `email_verified`).
    pub email_verified_claim: String,
}

/// One trusted issuer, read and checked.
#[derive(Debug)]
pub struct Issuer {
    /// The file it was read from.
    pub file: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The audiences accepted (a token's `aud` must name one).
    pub audiences: Vec<String>,
    /// Where the keys come from, and how long they are kept.
    pub keys: Plan,
    /// The algorithms accepted (never `none`; HMAC only with a secret).
    pub algorithms: Vec<Algorithm>,
    /// The HMAC secret, when the file names one.
    pub hmac: Option<Secret>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    /// Claims a token must carry besides `exp`, `iss`, `aud` and the id
    /// claim.
    pub required_claims: Vec<String>,
    /// The principal's entity type (default `User`).
    pub principal_type: String,
    /// The claim whose value is the principal's id (default `sub`).
    pub id_claim: String,
    /// Principal attributes set from claims: `(attribute, claim)`.
    pub attributes: Vec<(String, String)>,
    /// The sign-up profile's claims.
    pub profile: Profile,
}

/// An issuer's HMAC secret (never printed).
pub struct Secret(pub DecodingKey);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A problem in an issuer file, located.
#[derive(Debug, Clone)]
pub struct IssuerError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The text of the file `path` of the issuers folder, which must end with
/// `suffix`.
fn companion<'a>(folder: &IssuerFolder<'a>, path: &str, suffix: &str) -> Result<&'a str, String> {
    if !path.ends_with(suffix) {
        return Err(format!(
            "`{path}` must be a `*{suffix}` file in the issuers folder"
        ));
    }
    folder
        .companion(path)
        .ok_or_else(|| format!("the issuers folder holds no file `{path}`"))
}

/// The 1-based line on which `key:` is first written at the start of a
/// line (indented or not), for errors about a field's value.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let wanted = format!("{key}:");
    text.lines()
        .position(|l| l.trim_start().starts_with(&wanted))
        .map(|i| i + 1)
}

/// Whether a file of the issuers folder is an issuer file (the others are
/// the JWKS files and secrets they name).
pub fn is_issuer_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Whether a file of the issuers folder is read with it: an issuer file, a
/// JWKS file (`*.json`) or an HMAC secret (`*.secret`).
pub fn is_folder_file(name: &str) -> bool {
    is_issuer_file(name) || name.ends_with(".json") || name.ends_with(".secret")
}

/// Reads one issuer file. `folder` holds the files its `jwks_file` and
/// `hmac_secret_file` name, read with it (so that an edit of one reloads
/// the set, within the same size and link rules as every file).
pub fn parse(file: &str, text: &str, folder: &IssuerFolder<'_>) -> Result<Issuer, IssuerError> {
    let err = |key: Option<&str>, message: String| IssuerError {
        file: file.to_owned(),
        line: key.and_then(|k| line_of(text, k)),
        column: None,
        message,
    };
    let raw: IssuerFile = serde_yaml_ng::from_str(text).map_err(|e| IssuerError {
        file: file.to_owned(),
        line: e.location().map(|l| l.line()),
        column: e.location().map(|l| l.column()),
        message: e.to_string(),
    })?;
    if raw.issuer.trim().is_empty() {
        return Err(err(Some("issuer"), "`issuer` is empty".into()));
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(err(
            Some("audiences"),
            "`audiences` must list at least one audience, none empty: a token is accepted only when its `aud` names one".into(),
        ));
    }
    let source = match (&raw.jwks_uri, &raw.jwks_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                Some("jwks_file"),
                "name one of `jwks_uri` and `jwks_file`, not both".into(),
            ))
        }
        (Some(uri), None) => {
            fetchable(uri).map_err(|m| err(Some("jwks_uri"), format!("jwks_uri: {m}")))?;
            KeySource::Uri(uri.clone())
        }
        (None, Some(_)) => KeySource::File,
        (None, None) => {
            let discovery = discovery_url(&raw.issuer);
            fetchable(&discovery).map_err(|m| {
                err(
                    Some("issuer"),
                    format!("keys by OpenID discovery (no `jwks_uri` or `jwks_file`): {m}"),
                )
            })?;
            KeySource::Discovery
        }
    };
    let hmac = match &raw.hmac_secret_file {
        Some(path) => {
            let secret = companion(folder, path, ".secret")
                .map_err(|m| err(Some("hmac_secret_file"), format!("hmac_secret_file: {m}")))?
                .as_bytes()
                .trim_ascii();
            if secret.len() < 32 {
                return Err(err(
                    Some("hmac_secret_file"),
                    format!(
                        "the HMAC secret `{path}` has {} bytes; at least 32 are required",
                        secret.len()
                    ),
                ));
            }
            Some(Secret(DecodingKey::from_secret(secret)))
        }
        None => None,
    };
    let algorithms = match &raw.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) => {
            let mut out = Vec::new();
            for name in names {
                if name.eq_ignore_ascii_case("none") {
                    return Err(err(
                        Some("algorithms"),
                        "`none` is never accepted: an unsigned token proves nothing".into(),
                    ));
                }
                let alg: Algorithm = name.parse().map_err(|_| {
                    err(
                        Some("algorithms"),
                        format!("unknown algorithm `{name}`; expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, or HS256/HS384/HS512 with `hmac_secret_file`"),
                    )
                })?;
                if is_hmac(alg) && hmac.is_none() {
                    return Err(err(
                        Some("algorithms"),
                        format!("`{name}` needs `hmac_secret_file`: an HMAC token is checked only with a secret configured for this issuer, never with a public key"),
                    ));
                }
                if !out.contains(&alg) {
                    out.push(alg);
                }
            }
            if out.is_empty() {
                return Err(err(Some("algorithms"), "`algorithms` is empty".into()));
            }
            out
        }
    };
    if hmac.is_some() && !algorithms.iter().any(|a| is_hmac(*a)) {
        return Err(err(
            Some("hmac_secret_file"),
            "`hmac_secret_file` is set but `algorithms` lists no HS256, HS384 or HS512".into(),
        ));
    }
    let file_keys = match &raw.jwks_file {
        Some(path) => {
            let text = companion(folder, path, ".json")
                .map_err(|m| err(Some("jwks_file"), format!("jwks_file: {m}")))?;
            let set = jwks::parse_set(text, u64::MAX)
                .map_err(|m| err(Some("jwks_file"), format!("jwks_file `{path}`: {m}")))?;
            Some(std::sync::Arc::new(set))
        }
        None => None,
    };
    let principal_type = raw.principal.kind.unwrap_or_else(|| "User".to_owned());
    let id_claim = raw.principal.id_claim.unwrap_or_else(|| "sub".to_owned());
    let mut seen = HashSet::new();
    let mut attributes = Vec::new();
    for (attribute, claim) in raw.attributes {
        if claim.trim().is_empty() {
            return Err(err(
                Some(&attribute),
                format!("attribute `{attribute}`: the claim name is empty"),
            ));
        }
        if !seen.insert(attribute.clone()) {
            continue;
        }
        attributes.push((attribute, claim));
    }
    for (name, value) in [
        ("leeway_seconds", raw.leeway_seconds),
        ("keys_refresh_seconds", raw.keys_refresh_seconds),
        ("keys_lifetime_seconds", raw.keys_lifetime_seconds),
        (
            "unknown_kid_refetch_seconds",
            raw.unknown_kid_refetch_seconds,
        ),
    ] {
        if value.is_some_and(|v| v > 365 * 86_400) {
            return Err(err(Some(name), format!("`{name}` is over a year")));
        }
    }
    let refresh = raw
        .keys_refresh_seconds
        .unwrap_or(DEFAULT_REFRESH_SECONDS)
        .max(1);
    let keys_lifetime = raw
        .keys_lifetime_seconds
        .unwrap_or(DEFAULT_KEYS_LIFETIME_SECONDS)
        .max(1);
    if keys_lifetime < refresh {
        return Err(err(
            Some("keys_lifetime_seconds"),
            format!("`keys_lifetime_seconds` ({keys_lifetime}) is shorter than `keys_refresh_seconds` ({refresh}): keys would lapse before they are refreshed"),
        ));
    }
    Ok(Issuer {
        file: file.to_owned(),
        issuer: raw.issuer.clone(),
        audiences: raw.audiences,
        keys: Plan {
            issuer: raw.issuer.clone(),
            source,
            file_keys,
            refresh,
            keys_lifetime,
            unknown_kid_refetch: raw
                .unknown_kid_refetch_seconds
                .unwrap_or(DEFAULT_UNKNOWN_KID_SECONDS)
                .max(1),
        },
        algorithms,
        hmac,
        leeway: raw.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS),
        required_claims: raw.required_claims,
        principal_type,
        id_claim,
        attributes,
        profile: Profile {
            email_claim: raw.profile.email_claim.unwrap_or_else(|| "email".into()),
            name_claim: raw.profile.name_claim.unwrap_or_else(|| "name".into()),
            email_verified_claim: raw
                .profile
                .email_verified_claim
                .unwrap_or_else(|| "email_verified".into()),
        },
    })
}

impl Issuer {
    /// The line of `key` in this issuer's file text, for checks made after
    /// parsing (against the schema).
    pub fn error_at(&self, text: &str, key: &str, message: String) -> IssuerError {
        IssuerError {
            file: self.file.clone(),
            line: line_of(text, key),
            column: None,
            message,
        }
    }
}

/// Whether `alg` is an HMAC algorithm.
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Issuer, IssuerError> {
        parse("idp.yaml", text, &IssuerFolder { files: Vec::new() })
    }

    fn refused(text: &str) -> IssuerError {
        match read(text) {
            Ok(i) => panic!("accepted: {i:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let i = read("issuer: https://id.example.com\naudiences: [cedard]\n").expect("valid");
        assert_eq!(i.keys.source, KeySource::Discovery);
        assert_eq!(i.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(
            (i.principal_type.as_str(), i.id_claim.as_str()),
            ("User", "sub")
        );
        assert_eq!(i.leeway, DEFAULT_LEEWAY_SECONDS);
        assert!(i.hmac.is_none());
    }

    #[test]
    fn unsafe_or_contradictory_settings_are_refused_at_their_line() {
        let e =
            refused("issuer: https://id.example.com\naudiences: [cedard]\nalgorithms: [none]\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("never accepted"), "{}", e.message);
        let e =
            refused("issuer: https://id.example.com\naudiences: [cedard]\nalgorithms: [HS256]\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("hmac_secret_file"), "{}", e.message);
        let e = refused("issuer: http://id.example.com\naudiences: [cedard]\n");
        assert!(e.message.contains("plain HTTP"), "{}", e.message);
        let e = refused(
            "issuer: https://id.example.com\naudiences: [cedard]\njwks_uri: https://id.example.com/k\njwks_file: k.json\n",
        );
        assert!(e.message.contains("not both"), "{}", e.message);
        let e = refused("issuer: https://id.example.com\naudiences: []\n");
        assert_eq!(e.line, Some(2));
        let e = refused("issuer: https://id.example.com\naudiences: [cedard]\nkeys_refresh_seconds: 600\nkeys_lifetime_seconds: 60\n");
        assert_eq!(e.line, Some(4));
        let e = refused("issuer: https://id.example.com\naudiences: [cedard]\nsurprise: 1\n");
        assert_eq!(e.line, Some(3), "{}", e.message);
    }

    #[test]
    fn plain_http_is_fetched_only_from_loopback() {
        assert!(fetchable("http://127.0.0.1:8080/jwks").is_ok());
        assert!(fetchable("http://localhost/jwks").is_ok());
        assert!(fetchable("http://[::1]:9/jwks").is_ok());
        assert!(fetchable("https://id.example.com/jwks").is_ok());
        assert!(fetchable("http://10.0.0.1/jwks").is_err());
        assert!(fetchable("ftp://id.example.com/jwks").is_err());
    }
}
