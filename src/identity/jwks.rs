//! An issuer's signing keys: a JWKS read, fetched over HTTPS (OpenID
//! discovery or a `jwks_uri`), cached, refreshed as `Cache-Control` says
//! (or every `keys_refresh_seconds`), refetched for an unknown `kid` at most
//! once per `unknown_kid_refetch_seconds`, and kept while the endpoint
//! fails only until `keys_lifetime_seconds` after the last good fetch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    /// A JWKS URL.
    Uri(String),
    /// A JWKS file, read with the issuer file.
    File,
}

/// How an issuer's keys are had and kept: from its file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The issuer (`iss`), for discovery and metrics.
    pub issuer: String,
    /// Where the keys come from.
    pub source: KeySource,
    /// The keys of a JWKS file.
    pub file_keys: Option<Arc<KeySet>>,
    /// Seconds between key fetches when no `Cache-Control` says.
    pub refresh: u64,
    /// Seconds the last good keys serve while the key endpoint fails.
    pub keys_lifetime: u64,
    /// The least seconds between fetches an unknown `kid` may cause.
    pub unknown_kid_refetch: u64,
}

/// Whether `url` may be fetched: HTTPS, or plain HTTP to a loopback host
/// (tests, a local identity provider).
pub fn fetchable(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(parsed)
            } else {
                Err(format!(
                    "`{url}` is plain HTTP: keys are fetched over HTTPS (plain HTTP only from a loopback host)"
                ))
            }
        }
        other => Err(format!("`{url}` has the scheme `{other}`; use https")),
    }
}

/// The OpenID discovery document's URL for `issuer`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The largest key document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One usable key of a set.
pub struct Key {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// Its `alg`, if it names one.
    pub alg: Option<Algorithm>,
    /// Which algorithms it can check: `"RSA"`, `"EC"`, `"OKP"`.
    pub family: &'static str,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish()
    }
}

/// The keys of one JWKS document.
#[derive(Debug)]
pub struct KeySet {
    /// The usable keys.
    pub keys: Vec<Key>,
    /// Keys left out (an encryption key, an unsupported type).
    pub skipped: usize,
    /// Which fetch this is (a token cached under another is checked again).
    pub generation: u64,
}

impl KeySet {
    /// The keys that may check a token signed with `alg` and naming `kid`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.family == family(alg)
                && k.alg.is_none_or(|a| a == alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }
}

/// The key family an asymmetric algorithm needs.
pub fn family(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => "RSA",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "OKP",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "oct",
    }
}

/// Reads a JWKS document. Keys that cannot sign (`use: enc`), symmetric
/// keys (a public document never carries an HMAC secret cedard would use)
/// and keys of types cedard does not know are left out, not refused.
pub fn parse_set(text: &str, generation: u64) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_str(text)
        .map_err(|e| format!("not a JWKS document (`{{\"keys\": [...]}}`): {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            skipped += 1;
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            skipped += 1;
            continue;
        }
        let fam = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => "RSA",
            AlgorithmParameters::EllipticCurve(_) => "EC",
            AlgorithmParameters::OctetKeyPair(_) => "OKP",
            AlgorithmParameters::OctetKey(_) => {
                skipped += 1;
                continue;
            }
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            skipped += 1;
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            family: fam,
            key,
        });
    }
    Ok(KeySet {
        keys,
        skipped,
        generation,
    })
}

/// What a key fetch learned: the set and how long it may be used before it
/// is fetched again.
struct Fetched {
    set: KeySet,
    max_age: Option<Duration>,
}

/// The cached keys of one issuer (by its `iss` and key source), shared by
/// every snapshot that trusts it.
#[derive(Default)]
pub struct KeyCache {
    state: Mutex<State>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// When the keys should be fetched again.
    refresh_at: Option<Instant>,
    /// When the keys stop serving if no fetch succeeds.
    valid_until: Option<Instant>,
    /// When a fetch was last tried (successful or not).
    last_attempt: Option<Instant>,
    /// Whether a background refresh is under way.
    refreshing: bool,
    /// Why the last fetch failed, while no fetch has succeeded since.
    last_error: Option<String>,
    generation: u64,
}

/// Why no key could be had.
#[derive(Debug, Clone)]
pub enum KeyError {
    /// The keys could not be fetched (and none are still valid).
    Unavailable(String),
}

/// Keys in hand for one verification, and until when they may serve.
pub struct Held {
    /// The set.
    pub set: Arc<KeySet>,
    /// When it stops serving (never, for a file).
    pub valid_until: Option<Instant>,
}

impl KeyCache {
    /// The generation of the keys held now, if any.
    pub fn generation(&self) -> Option<u64> {
        lock(&self.state).keys.as_ref().map(|k| k.generation)
    }

    /// The issuer's keys, fetched when none are valid; refreshed in the
    /// background when due.
    pub async fn keys(
        self: &Arc<Self>,
        client: &reqwest::Client,
        issuer: &Plan,
    ) -> Result<Held, KeyError> {
        if let (KeySource::File, Some(set)) = (&issuer.source, &issuer.file_keys) {
            return Ok(Held {
                set: set.clone(),
                valid_until: None,
            });
        }
        let now = Instant::now();
        {
            let mut state = lock(&self.state);
            if let (Some(keys), Some(valid_until)) = (&state.keys, state.valid_until) {
                if now < valid_until {
                    let held = Held {
                        set: keys.clone(),
                        valid_until: Some(valid_until),
                    };
                    let due = state.refresh_at.is_none_or(|t| now >= t);
                    if due && !state.refreshing {
                        state.refreshing = true;
                        let cache = self.clone();
                        let client = client.clone();
                        let issuer = issuer.clone();
                        tokio::spawn(async move {
                            cache.refresh(&client, &issuer).await;
                            lock(&cache.state).refreshing = false;
                        });
                    }
                    return Ok(held);
                }
            }
        }
        self.fetch(client, issuer).await
    }

    /// Fetches again for a token whose `kid` the held set does not have,
    /// unless a fetch was tried within the issuer's refetch interval (then
    /// the set another request's fetch brought, if newer than `held`).
    pub async fn refetch_for_unknown(
        &self,
        client: &reqwest::Client,
        issuer: &Plan,
        held: &Held,
    ) -> Option<Held> {
        if issuer.source == KeySource::File {
            return None;
        }
        let interval = Duration::from_secs(issuer.unknown_kid_refetch);
        let _one = self.fetching.lock().await;
        {
            let state = lock(&self.state);
            if state.last_attempt.is_some_and(|t| t.elapsed() < interval) {
                return state
                    .keys
                    .as_ref()
                    .filter(|k| k.generation != held.set.generation)
                    .map(|k| Held {
                        set: k.clone(),
                        valid_until: state.valid_until,
                    });
            }
        }
        self.fetch_locked(client, issuer).await.ok()
    }

    /// A fetch for a request that holds no valid keys. Requests that waited
    /// for another's fetch take its outcome; after a failure, a second is
    /// not tried within [`RETRY_AFTER_FAILURE`].
    async fn fetch(&self, client: &reqwest::Client, issuer: &Plan) -> Result<Held, KeyError> {
        let started = Instant::now();
        let _one = self.fetching.lock().await;
        {
            let state = lock(&self.state);
            let recent = state
                .last_attempt
                .is_some_and(|t| t >= started || t.elapsed() < RETRY_AFTER_FAILURE);
            if recent {
                if let Some(held) = state.valid() {
                    return Ok(held);
                }
                return Err(KeyError::Unavailable(
                    state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no keys were fetched".into()),
                ));
            }
        }
        self.fetch_locked(client, issuer).await
    }

    /// A background refresh, one at a time with the other fetches.
    async fn refresh(&self, client: &reqwest::Client, issuer: &Plan) {
        let _one = self.fetching.lock().await;
        let _ = self.fetch_locked(client, issuer).await;
    }

    /// Fetches the keys; the caller holds `fetching`.
    async fn fetch_locked(
        &self,
        client: &reqwest::Client,
        issuer: &Plan,
    ) -> Result<Held, KeyError> {
        let generation = {
            let mut state = lock(&self.state);
            state.last_attempt = Some(Instant::now());
            state.generation += 1;
            state.generation
        };
        let outcome = fetch_keys(client, issuer, generation).await;
        let mut state = lock(&self.state);
        match outcome {
            Ok(fetched) => {
                let now = Instant::now();
                metrics::counter!("cedard_jwks_fetches_total", "issuer" => issuer.issuer.clone(), "outcome" => "ok").increment(1);
                metrics::gauge!("cedard_jwks_keys", "issuer" => issuer.issuer.clone())
                    .set(fetched.set.keys.len() as f64);
                let lifetime = Duration::from_secs(issuer.keys_lifetime);
                let refresh = fetched
                    .max_age
                    .unwrap_or(Duration::from_secs(issuer.refresh))
                    .clamp(Duration::from_secs(1), lifetime);
                state.keys = Some(Arc::new(fetched.set));
                state.refresh_at = Some(now + refresh);
                state.valid_until = Some(now + lifetime);
                state.last_error = None;
                state
                    .valid()
                    .ok_or_else(|| KeyError::Unavailable("the keys lapsed at once".into()))
            }
            Err(message) => {
                metrics::counter!("cedard_jwks_fetches_total", "issuer" => issuer.issuer.clone(), "outcome" => "error").increment(1);
                tracing::warn!(issuer = %issuer.issuer, error = %message, "cannot fetch the issuer's signing keys");
                state.last_error = Some(message.clone());
                // The last good keys serve until their lifetime ends.
                state.valid().ok_or(KeyError::Unavailable(message))
            }
        }
    }
}

/// After a failed fetch, how long requests without valid keys are refused
/// at once instead of each trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl State {
    /// The keys, while they may serve.
    fn valid(&self) -> Option<Held> {
        match (&self.keys, self.valid_until) {
            (Some(keys), Some(until)) if Instant::now() < until => Some(Held {
                set: keys.clone(),
                valid_until: Some(until),
            }),
            _ => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// GETs `url` (HTTPS, or HTTP on loopback) as text of at most
/// [`MAX_DOCUMENT_BYTES`], with its `Cache-Control: max-age`.
async fn get(client: &reqwest::Client, url: &str) -> Result<(String, Option<Duration>), String> {
    let url = fetchable(url)?;
    let response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: {}", response.status()));
    }
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("GET {url}: the document is over 1 MiB"));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("GET {url}: the document is over 1 MiB"));
    }
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| format!("GET {url}: not UTF-8"))?;
    Ok((text, max_age))
}

/// `Cache-Control`'s `max-age` (`no-store` and `no-cache` are zero).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (name, secs) = d.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| {
                secs.trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })
            .flatten()
    })
}

async fn fetch_keys(
    client: &reqwest::Client,
    issuer: &Plan,
    generation: u64,
) -> Result<Fetched, String> {
    let jwks_uri = match &issuer.source {
        KeySource::Uri(uri) => uri.clone(),
        KeySource::Discovery => {
            #[derive(serde::Deserialize)]
            struct Discovery {
                issuer: String,
                jwks_uri: String,
            }
            let url = discovery_url(&issuer.issuer);
            let (text, _) = get(client, &url).await?;
            let doc: Discovery = serde_json::from_str(&text)
                .map_err(|e| format!("{url}: not an OpenID configuration: {e}"))?;
            if doc.issuer != issuer.issuer {
                return Err(format!(
                    "{url} names the issuer `{}`, not `{}`",
                    doc.issuer, issuer.issuer
                ));
            }
            doc.jwks_uri
        }
        KeySource::File => return Err("a JWKS file is not fetched".into()),
    };
    let (text, max_age) = get(client, &jwks_uri).await?;
    let set = parse_set(&text, generation).map_err(|m| format!("{jwks_uri}: {m}"))?;
    Ok(Fetched { set, max_age })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_reads_the_directive_and_no_store() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
