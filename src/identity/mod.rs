//! Verified identities: OpenID Connect / JWT tokens checked against the
//! trusted issuers of the issuers folder (`--issuers`), so that a decision
//! or a management call is about the person or service the token's issuer
//! vouches for, not whoever a header names.
//!
//! An issuer file ([`issuer`]) names the `iss`, the audiences, where the
//! signing keys come from, the algorithms accepted (never `none`; HMAC only
//! with a secret configured for that issuer, never with a public key), the
//! clock leeway, required claims and the mapping: which claim is the
//! principal's id and its entity type, and which claims become attributes
//! of the principal. The keys ([`jwks`]) are fetched and cached per issuer
//! and shared across reloads. Signatures and the registered claims are
//! checked by `jsonwebtoken`. A verified token is remembered, keyed by the
//! whole token, bounded in bytes, never past its `exp`, its keys' lifetime
//! or a change of its issuer's keys or files.
//!
//! This module knows nothing of Cedar, HTTP or the store: it answers
//! [`Verified`] or a [`TokenError`] whose [`TokenError::reason`] is the
//! `reason` of a 401.

pub mod issuer;
pub mod jwks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

pub use issuer::{is_issuer_file, Issuer, IssuerError};
pub use jwks::KeySource;

/// The longest token read.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The default bound of the verified-token cache, in bytes.
pub const DEFAULT_TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The trusted issuers of one policy snapshot, by `iss`.
#[derive(Debug, Default)]
pub struct Issuers {
    by_iss: HashMap<String, Issuer>,
    /// Which reading of the files this is: a token verified under another
    /// is verified again.
    id: u64,
}

/// The issuers folder as read: every file in it by its path relative to
/// the folder (the issuer files, `*.yaml`/`*.yml`, and the JWKS files and
/// HMAC secrets they name), each with the name errors show.
pub struct IssuerFolder<'a> {
    /// `(relative path, shown name, text)`, issuer files and companions.
    pub files: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'a> IssuerFolder<'a> {
    /// The text of the file at `relative`, if the folder holds it.
    pub fn companion(&self, relative: &str) -> Option<&'a str> {
        let relative = relative.trim_start_matches("./");
        self.files
            .iter()
            .find(|(r, _, _)| *r == relative)
            .map(|(_, _, text)| *text)
    }
}

static READINGS: AtomicU64 = AtomicU64::new(1);

impl Issuers {
    /// Reads every issuer file of `folder`; all errors at once. Two files
    /// naming one `iss` are refused.
    pub fn parse(folder: &IssuerFolder<'_>) -> Result<Self, Vec<IssuerError>> {
        let mut by_iss: HashMap<String, Issuer> = HashMap::new();
        let mut errors = Vec::new();
        let issuer_files = folder
            .files
            .iter()
            .filter(|(relative, _, _)| issuer::is_issuer_file(relative));
        for (_, name, text) in issuer_files {
            match issuer::parse(name, text, folder) {
                Ok(i) => {
                    if let Some(first) = by_iss.get(&i.issuer) {
                        errors.push(i.error_at(
                            text,
                            "issuer",
                            format!(
                                "the issuer `{}` is already trusted by {}",
                                i.issuer, first.file
                            ),
                        ));
                        continue;
                    }
                    by_iss.insert(i.issuer.clone(), i);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            by_iss,
            id: READINGS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Whether no issuer is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// The issuers, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Issuer> {
        self.by_iss.values()
    }

    /// How many issuers are trusted.
    pub fn len(&self) -> usize {
        self.by_iss.len()
    }
}

/// What a verified token says: who, by whom, and the claims the issuer's
/// mapping takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The issuer (`iss`).
    pub issuer: String,
    /// The `sub` claim, when present (the decision log records it).
    pub sub: Option<String>,
    /// The principal's id: the value of the issuer's id claim.
    pub id: String,
    /// The principal's entity type, as the issuer file names it.
    pub principal_type: String,
    /// Principal attributes from claims, `(attribute, value)`, for the
    /// claims the token carries.
    pub attributes: Vec<(String, Value)>,
    /// Which claim each attribute came from, for errors.
    pub claims: Vec<String>,
    /// The token's `jti`, if any.
    pub jti: Option<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
    /// The email of the sign-up profile, if the token carries one.
    pub email: Option<String>,
    /// The display name of the sign-up profile.
    pub name: Option<String>,
    /// Whether the issuer verified the email.
    pub email_verified: bool,
}

/// Why a token was refused. Every one is a 401, never a decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or over [`MAX_TOKEN_BYTES`].
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// `none`, an algorithm the issuer does not accept, or HMAC without a
    /// secret.
    #[error("the token's algorithm is not accepted: {0}")]
    Algorithm(String),
    /// No trusted issuer has this `iss`.
    #[error("the token's issuer is not trusted: {0}")]
    Issuer(String),
    /// `aud` names none of the issuer's audiences.
    #[error("the token's audience is not accepted: {0}")]
    Audience(String),
    /// Past `exp` (with the issuer's leeway).
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` (with the issuer's leeway).
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The signature does not verify with the issuer's key.
    #[error("the token's signature does not verify: {0}")]
    Signature(String),
    /// No key of the issuer matches the token's `kid` and algorithm, even
    /// after a refetch.
    #[error("no signing key of the issuer matches the token: {0}")]
    KeyUnknown(String),
    /// The issuer's keys cannot be had (and no cached keys may still serve).
    #[error("the issuer's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// A required claim is missing, or a claim does not fit where it is
    /// mapped.
    #[error("the token's claims are not accepted: {0}")]
    Claims(String),
    /// The id claim is missing or not a string.
    #[error("the token names no subject: {0}")]
    Subject(String),
}

impl TokenError {
    /// The reason code of the 401 (`token_expired`, `token_audience`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Algorithm(_) => "token_algorithm",
            TokenError::Issuer(_) => "token_issuer",
            TokenError::Audience(_) => "token_audience",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Signature(_) => "token_signature",
            TokenError::KeyUnknown(_) => "token_key_unknown",
            TokenError::KeysUnavailable(_) => "token_keys_unavailable",
            TokenError::Claims(_) => "token_claims",
            TokenError::Subject(_) => "token_subject",
        }
    }
}

/// Verifies tokens: the HTTP client that fetches keys, the key caches (by
/// issuer and key source, kept across reloads) and the verified-token
/// cache.
pub struct Identity {
    client: reqwest::Client,
    caches: Mutex<HashMap<(String, String), Arc<jwks::KeyCache>>>,
    tokens: Mutex<TokenCache>,
    max_cache_bytes: usize,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct TokenCache {
    entries: HashMap<Box<str>, Cached>,
    bytes: usize,
}

struct Cached {
    verified: Arc<Verified>,
    /// The reading of the issuer files it was verified under.
    issuers: u64,
    /// The key set it was verified with, and its generation (none for an
    /// HMAC secret or a JWKS file, which change only with the files).
    keys: Option<(Arc<jwks::KeyCache>, u64)>,
    /// When the keys it was verified with stop serving.
    keys_until: Option<Instant>,
}

impl Identity {
    /// An identity verifier whose verified-token cache holds at most
    /// `max_cache_bytes` (0: no cache).
    pub fn new(max_cache_bytes: usize) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cedard/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            client,
            caches: Mutex::new(HashMap::new()),
            tokens: Mutex::new(TokenCache::default()),
            max_cache_bytes,
        }
    }

    /// Verifies `token` against `issuers`.
    pub async fn verify(
        &self,
        issuers: &Issuers,
        token: &str,
    ) -> Result<Arc<Verified>, TokenError> {
        let outcome = self.verify_uncounted(issuers, token).await;
        let label = match &outcome {
            Ok(_) => "valid",
            Err(e) => e.reason(),
        };
        VERIFICATIONS.with_borrow_mut(|counters| {
            counters
                .entry(label)
                .or_insert_with(
                    || metrics::counter!("cedard_token_verifications_total", "outcome" => label),
                )
                .increment(1)
        });
        outcome
    }

    async fn verify_uncounted(
        &self,
        issuers: &Issuers,
        token: &str,
    ) -> Result<Arc<Verified>, TokenError> {
        let token = token.trim();
        if let Some(hit) = self.remembered(issuers, token) {
            return Ok(hit);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "over {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let (header, claims) = peek(token)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Issuer("the token has no `iss` claim".into()))?;
        if issuers.is_empty() {
            return Err(TokenError::Issuer(
                "no issuer is trusted (the issuers folder, `--issuers`, lists none)".into(),
            ));
        }
        let issuer = issuers.by_iss.get(iss).ok_or_else(|| {
            TokenError::Issuer(format!("`{}` is not a trusted issuer", clip(iss)))
        })?;
        let alg = header.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err(TokenError::Algorithm(format!(
                "{alg:?} is not accepted from `{}` (accepted: {})",
                issuer.issuer,
                issuer
                    .algorithms
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let validation = validation(issuer, alg);
        let (decoded, keys, keys_until) = if issuer::is_hmac(alg) {
            // Only ever the issuer's configured secret.
            let secret = issuer.hmac.as_ref().ok_or_else(|| {
                TokenError::Algorithm(format!("{alg:?} needs a secret this issuer has none of"))
            })?;
            (decode(token, &secret.0, &validation)?, None, None)
        } else {
            let cache = self.cache_for(issuer);
            let held = cache
                .keys(&self.client, &issuer.keys)
                .await
                .map_err(|jwks::KeyError::Unavailable(m)| TokenError::KeysUnavailable(m))?;
            let kid = header.kid.as_deref();
            let held = if held.set.candidates(kid, alg).next().is_some() {
                held
            } else {
                match cache
                    .refetch_for_unknown(&self.client, &issuer.keys, &held)
                    .await
                {
                    Some(newer) if newer.set.candidates(kid, alg).next().is_some() => newer,
                    _ => {
                        return Err(TokenError::KeyUnknown(match kid {
                            Some(kid) => format!(
                                "`{}` has no {} key with kid `{}`",
                                issuer.issuer,
                                jwks::family(alg),
                                clip(kid)
                            ),
                            None => format!(
                                "`{}` has no {} key for {alg:?}",
                                issuer.issuer,
                                jwks::family(alg)
                            ),
                        }))
                    }
                }
            };
            let mut last = None;
            let mut decoded = None;
            for key in held.set.candidates(kid, alg) {
                match decode(token, &key.key, &validation) {
                    Ok(c) => {
                        decoded = Some(c);
                        break;
                    }
                    Err(e @ TokenError::Signature(_)) => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            let decoded = match decoded {
                Some(c) => c,
                None => {
                    return Err(
                        last.unwrap_or_else(|| TokenError::Signature("no key verified it".into()))
                    )
                }
            };
            // A JWKS file changes only with the issuer files, which a
            // remembered token is tied to already.
            let keys = match issuer.keys.source {
                KeySource::File => None,
                _ => Some((cache, held.set.generation)),
            };
            (decoded, keys, held.valid_until)
        };
        let verified = Arc::new(map_claims(issuer, decoded)?);
        self.remember(issuers, token, &verified, keys, keys_until);
        Ok(verified)
    }

    /// The key cache of `issuer`, kept across reloads while its `iss` and
    /// key source stay the same.
    fn cache_for(&self, issuer: &Issuer) -> Arc<jwks::KeyCache> {
        let source = match &issuer.keys.source {
            KeySource::Discovery => "discovery".to_owned(),
            KeySource::Uri(u) => u.clone(),
            KeySource::File => "file".to_owned(),
        };
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        caches
            .entry((issuer.issuer.clone(), source))
            .or_default()
            .clone()
    }

    fn remembered(&self, issuers: &Issuers, token: &str) -> Option<Arc<Verified>> {
        if self.max_cache_bytes == 0 {
            return None;
        }
        let now = unix_now();
        let tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = tokens.entries.get(token)?;
        let current = hit.issuers == issuers.id
            && now < hit.verified.expires_at
            && hit.keys_until.is_none_or(|t| Instant::now() < t)
            && hit
                .keys
                .as_ref()
                .is_none_or(|(cache, generation)| cache.generation() == Some(*generation));
        current.then(|| hit.verified.clone())
    }

    fn remember(
        &self,
        issuers: &Issuers,
        token: &str,
        verified: &Arc<Verified>,
        keys: Option<(Arc<jwks::KeyCache>, u64)>,
        keys_until: Option<Instant>,
    ) {
        if self.max_cache_bytes == 0 || unix_now() >= verified.expires_at {
            return;
        }
        // The token, the verified facts and the map's own share, estimated.
        let cost = 2 * token.len() + 256;
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tokens.bytes + cost > self.max_cache_bytes {
            // Full: start over (expired entries go with the rest).
            tokens.entries.clear();
            tokens.bytes = 0;
        }
        let previous = tokens.entries.insert(
            token.into(),
            Cached {
                verified: verified.clone(),
                issuers: issuers.id,
                keys,
                keys_until,
            },
        );
        if previous.is_none() {
            tokens.bytes += cost;
        }
    }
}

thread_local! {
    /// Each thread's verification counters by outcome (a fixed set of
    /// names), registered on first use.
    static VERIFICATIONS: std::cell::RefCell<HashMap<&'static str, metrics::Counter>> =
        std::cell::RefCell::new(HashMap::new());
}

/// The header fields cedard reads, and the claims, before the signature is
/// checked (to find the issuer and its key; nothing is believed until the
/// signature verifies).
struct Head {
    alg: Algorithm,
    kid: Option<String>,
}

fn peek(token: &str) -> Result<(Head, Map<String, Value>), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "a JWT has three base64url parts separated by `.`".into(),
        ));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Map<String, Value> = b64
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| TokenError::Malformed("the header is not base64url JSON".into()))?;
    let claims: Map<String, Value> = b64
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            TokenError::Malformed("the payload is not a base64url JSON object".into())
        })?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Malformed("the header has no `alg`".into()))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::Algorithm(
            "`none`: an unsigned token is never accepted".into(),
        ));
    }
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| TokenError::Algorithm(format!("unknown algorithm `{}`", clip(alg))))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed("`kid` is not a string".into())),
    };
    Ok((Head { alg, kid }, claims))
}

/// What `jsonwebtoken` checks: the signature, `exp`, `nbf`, `iss`, `aud`,
/// with the issuer's leeway.
fn validation(issuer: &Issuer, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = issuer.leeway;
    v.validate_nbf = true;
    v.set_issuer(&[&issuer.issuer]);
    v.set_audience(&issuer.audiences);
    let mut required = vec!["exp", "iss", "aud"];
    if issuer.id_claim == "sub" {
        required.push("sub");
    }
    v.set_required_spec_claims(&required);
    v
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, TokenError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => {
                TokenError::Audience("`aud` names none of the issuer's audiences".into())
            }
            ErrorKind::InvalidIssuer => TokenError::Issuer("`iss` does not match".into()),
            ErrorKind::MissingRequiredClaim(c) => {
                TokenError::Claims(format!("the claim `{c}` is required"))
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                TokenError::Algorithm("the key cannot check this algorithm".into())
            }
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => TokenError::Malformed(e.to_string()),
            _ => TokenError::Signature(e.to_string()),
        })
}

/// The verified claims as the issuer maps them.
fn map_claims(issuer: &Issuer, claims: Map<String, Value>) -> Result<Verified, TokenError> {
    for c in &issuer.required_claims {
        if !claims.contains_key(c) {
            return Err(TokenError::Claims(format!("the claim `{c}` is required")));
        }
    }
    let id = match claims.get(&issuer.id_claim) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => s.clone(),
        Some(Value::String(_)) => {
            return Err(TokenError::Subject(format!(
                "the claim `{}` is empty or over 1024 bytes",
                issuer.id_claim
            )))
        }
        Some(_) => {
            return Err(TokenError::Subject(format!(
                "the claim `{}` is not a string",
                issuer.id_claim
            )))
        }
        None => {
            return Err(TokenError::Subject(format!(
                "the token has no `{}` claim",
                issuer.id_claim
            )))
        }
    };
    let text = |name: &str| -> Result<Option<String>, TokenError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(TokenError::Claims(format!(
                "the claim `{name}` is not a string"
            ))),
        }
    };
    let email_verified = match claims.get(&issuer.profile.email_verified_claim) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(TokenError::Claims(format!(
                "the claim `{}` is not a boolean",
                issuer.profile.email_verified_claim
            )))
        }
    };
    let mut attributes = Vec::new();
    let mut mapped = Vec::new();
    for (attribute, claim) in &issuer.attributes {
        if let Some(value) = claims.get(claim).filter(|v| !v.is_null()) {
            attributes.push((attribute.clone(), value.clone()));
            mapped.push(claim.clone());
        }
    }
    Ok(Verified {
        issuer: issuer.issuer.clone(),
        sub: text("sub")?,
        id,
        principal_type: issuer.principal_type.clone(),
        attributes,
        claims: mapped,
        jti: text("jti")?,
        expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        email: text(&issuer.profile.email_claim)?,
        name: text(&issuer.profile.name_claim)?,
        email_verified,
    })
}

/// At most 100 characters of what a token said, for messages.
fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
