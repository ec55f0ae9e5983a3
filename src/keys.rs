//! Caller keys: how a calling service proves who it is, and what it may do.
//!
//! A key reads `cdk_<id>_<secret>`: a recognisable prefix (so secret scanners
//! and people spot it), a public id that logs and the decision log show, and
//! 256 bits from the operating system's secure random source. Only the
//! secret's SHA-256 is stored (in the store, so a running daemon sees new and
//! revoked keys at once); the key is shown once, when it is created. A
//! presented key is found by its id and its secret's hash compared in
//! constant time. The [`KeyRing`] is the in-memory view a request checks,
//! swapped whole after every key write and refreshed from the store every
//! second. This module knows nothing about HTTP; it knows the store's
//! `ApiKey` record and nothing else of the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::ApiKey;

/// The prefix every key starts with.
pub const PREFIX: &str = "cdk_";

/// What a key may do. No scope implies another: a service that only asks
/// for decisions holds `decide` and nothing else.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The decision routes (`/v1/is_authorized`, its batch).
    Decide,
    /// The management API (accounts, members, invites); only a `manage` key
    /// is believed when it names an acting user in `X-Actor`.
    Manage,
    /// Reading the policies and the matrix, metrics, and managing keys.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 3] = [Scope::Decide, Scope::Manage, Scope::Admin];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Decide => "decide",
            Scope::Manage => "manage",
            Scope::Admin => crate::store::ADMIN_SCOPE,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope `{s}`; the scopes are `decide`, `manage`, `admin`")
            })
    }
}

/// Reads a list of scopes (`decide,manage`), refusing an empty list and
/// unknown names.
pub fn parse_scopes(list: &[String]) -> Result<Vec<Scope>, String> {
    let mut scopes = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        scopes.push(item.parse::<Scope>()?);
    }
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err("a key needs at least one scope: `decide`, `manage` or `admin`".into());
    }
    Ok(scopes)
}

/// A key just created: the record to store, and the key to show once.
pub struct NewKey {
    /// What the store keeps.
    pub record: ApiKey,
    /// The whole key; never stored, never logged.
    pub secret: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret must not reach a log through a stray `{:?}`.
        f.debug_struct("NewKey")
            .field("record", &self.record)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The operating system's random source failed: no key can be made safely.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

/// Fills `bytes` from the operating system's secure random source.
pub fn os_random(bytes: &mut [u8]) -> Result<(), RandomError> {
    rand::rngs::OsRng
        .try_fill_bytes(bytes)
        .map_err(|e| RandomError(e.to_string()))
}

/// Makes a key named `name` with `scopes`, created at `now`.
pub fn generate(name: &str, scopes: &[Scope], now: i64) -> Result<NewKey, RandomError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    os_random(&mut id)?;
    os_random(&mut secret)?;
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let record = ApiKey {
        id: id.clone(),
        name: name.to_owned(),
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        created_at: now,
        revoked_at: None,
    };
    Ok(NewKey {
        record,
        secret: format!("{PREFIX}{id}_{secret}"),
    })
}

/// Who is calling: the key that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl KeyInfo {
    /// Whether the key holds `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why a presented key does not authenticate. One message for every case,
/// so that the answer tells a prober nothing about which keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key is not valid (unknown, revoked or malformed)")]
pub struct InvalidKey;

struct Entry {
    info: KeyInfo,
    sha256: [u8; 32],
}

/// The live keys, swapped whole when they change; checking a key takes no
/// lock.
///
/// A ring over a store shared by replicas knows the keys only as of its
/// last confirmation with that store ([`KeyRing::confirm`]); once that is
/// older than its `max_age`, the ring is not [`KeyRing::current`] and no
/// caller may be authenticated by it (a key revoked through another replica
/// could still be in it).
pub struct KeyRing {
    live: ArcSwap<HashMap<String, Entry>>,
    /// The keys could not be read (the data file is damaged): no caller can
    /// be authenticated, and none may be served as if no key existed.
    unreadable: bool,
    /// Some key was ever stored (revoked ones count): the daemon is closed
    /// for good, even once every key is revoked.
    keyed: AtomicBool,
    /// The store revision the keys were read at.
    revision: AtomicU64,
    /// How old the last confirmation may be; `None`: the keys are exact
    /// (one process owns the store).
    max_age: Option<Duration>,
    origin: Instant,
    /// Milliseconds after `origin` of the last confirmation.
    confirmed: AtomicU64,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            live: ArcSwap::default(),
            unreadable: false,
            keyed: AtomicBool::new(false),
            revision: AtomicU64::new(0),
            max_age: None,
            origin: Instant::now(),
            confirmed: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({} live keys)", self.live.load().len())
    }
}

impl KeyRing {
    /// A ring holding the unrevoked keys of `records`.
    pub fn new(records: &[ApiKey]) -> Self {
        let ring = Self::default();
        ring.replace(records);
        ring
    }

    /// A ring for keys that cannot be read: it authenticates nobody, and it
    /// is not empty, so the no-key mode (loopback callers served without a
    /// key) does not apply either.
    pub fn unreadable() -> Self {
        Self {
            unreadable: true,
            ..Self::default()
        }
    }

    /// Whether the keys could not be read (see [`KeyRing::unreadable`]).
    pub fn is_unreadable(&self) -> bool {
        self.unreadable
    }

    /// The same ring, current only while confirmed within `max_age` (a
    /// store shared by replicas); confirmed now, at store `revision`.
    pub fn with_max_age(mut self, max_age: Option<Duration>, revision: u64) -> Self {
        self.max_age = max_age;
        self.revision = AtomicU64::new(revision);
        self.confirm(Instant::now());
        self
    }

    /// Replaces the live keys with the unrevoked keys of `records`, read at
    /// store `revision` by a query sent at `read_at`.
    pub fn replace_at(&self, records: &[ApiKey], revision: u64, read_at: Instant) {
        self.replace(records);
        self.revision.store(revision, Ordering::Release);
        self.confirm(read_at);
    }

    /// The store revision the live keys were read at.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Records that the keys were still those of the store at `at` (its
    /// revision, confirmed then, was the one they were read at).
    pub fn confirm(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis();
        self.confirmed
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::AcqRel);
    }

    /// Whether the keys are known to be the store's as of no longer than
    /// `max_age` ago. A ring that is not current authenticates nobody.
    pub fn current(&self) -> bool {
        match self.max_age {
            None => true,
            Some(max_age) => {
                let at =
                    self.origin + Duration::from_millis(self.confirmed.load(Ordering::Acquire));
                at.elapsed() <= max_age
            }
        }
    }

    /// Replaces the live keys with the unrevoked keys of `records`.
    pub fn replace(&self, records: &[ApiKey]) {
        let mut map = HashMap::with_capacity(records.len());
        for r in records.iter().filter(|r| r.revoked_at.is_none()) {
            let mut sha256 = [0u8; 32];
            // A record whose hash does not decode can match no key: skip it.
            if hex::decode_to_slice(&r.secret_sha256, &mut sha256).is_err() {
                tracing::warn!(key = %r.id, "stored key has a malformed hash; it cannot authenticate");
                continue;
            }
            let scopes = r.scopes.iter().filter_map(|s| s.parse().ok()).collect();
            map.insert(
                r.id.clone(),
                Entry {
                    info: KeyInfo {
                        id: r.id.clone(),
                        name: r.name.clone(),
                        scopes,
                    },
                    sha256,
                },
            );
        }
        if !records.is_empty() {
            self.keyed.store(true, Ordering::Release);
        }
        self.live.store(Arc::new(map));
    }

    /// Whether no key was ever stored (revoked keys count as stored): only
    /// then is the no-key mode open. Once any key existed, every route but
    /// the health checks needs a live one, even after every key is revoked,
    /// so that revoking keys never reopens the daemon.
    pub fn never_keyed(&self) -> bool {
        !self.unreadable && !self.keyed.load(Ordering::Acquire)
    }

    /// How many keys are live.
    pub fn live_count(&self) -> usize {
        self.live.load().len()
    }

    /// The live key with this id, if it is live (not revoked, not
    /// removed): for sessions opened with a key, which end when it does.
    pub fn live(&self, id: &str) -> Option<KeyInfo> {
        self.live.load().get(id).map(|e| e.info.clone())
    }

    /// Checks a presented key.
    pub fn verify(&self, presented: &str) -> Result<KeyInfo, InvalidKey> {
        let rest = presented.strip_prefix(PREFIX).ok_or(InvalidKey)?;
        let (id, secret) = rest.split_once('_').ok_or(InvalidKey)?;
        let live = self.live.load();
        let entry = live.get(id).ok_or(InvalidKey)?;
        let digest = Sha256::digest(secret.as_bytes());
        if bool::from(digest.as_slice().ct_eq(&entry.sha256)) {
            Ok(entry.info.clone())
        } else {
            Err(InvalidKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_verifies_and_nothing_else_does() {
        let k = generate("svc", &[Scope::Decide], 0).expect("random");
        let ring = KeyRing::new(std::slice::from_ref(&k.record));
        let info = ring.verify(&k.secret).expect("valid");
        assert_eq!(info.id, k.record.id);
        assert!(info.allows(Scope::Decide) && !info.allows(Scope::Admin));
        assert!(!k.secret.contains(&k.record.secret_sha256));
        // One changed character of the secret, a wrong id, no prefix.
        let mut wrong = k.secret.clone();
        let last = wrong.pop().expect("non-empty");
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(ring.verify(&wrong), Err(InvalidKey));
        assert_eq!(
            ring.verify(&k.secret.replacen(PREFIX, "", 1)),
            Err(InvalidKey)
        );
        assert_eq!(ring.verify("cdk_0000000000000000_00"), Err(InvalidKey));
        assert_eq!(ring.verify(""), Err(InvalidKey));
        // Revoked keys leave the ring.
        let mut revoked = k.record.clone();
        revoked.revoked_at = Some(1);
        ring.replace(&[revoked]);
        assert_eq!(ring.verify(&k.secret), Err(InvalidKey));
        assert_eq!(ring.live_count(), 0);
        // A ring that has held a key is never the open no-key mode again.
        assert!(!ring.never_keyed());
        assert!(KeyRing::new(&[]).never_keyed());
    }

    #[test]
    fn scopes_parse_from_lists() {
        let s = parse_scopes(&["decide,admin".into(), "decide".into()]).expect("valid");
        assert_eq!(s, vec![Scope::Decide, Scope::Admin]);
        assert!(parse_scopes(&[]).is_err());
        assert!(parse_scopes(&["root".into()])
            .expect_err("unknown scope")
            .contains("`root`"));
    }
}
