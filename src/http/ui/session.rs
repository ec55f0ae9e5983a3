//! The console's sessions: a browser's hold on an admin key, kept in
//! memory by the SHA-256 of a 256-bit id from the OS, with a CSRF token
//! each, for [`SESSION_LIFETIME`]. The daemon's state holds the
//! [`Console`]; this module knows nothing of the pages or the daemon's
//! state (see `super` for the security model).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// How long a console session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The most sessions kept at once.
const MAX_SESSIONS: usize = 1024;

/// The most sessions one key holds at once; signing in past it ends that
/// key's oldest, so that one key signing in over and over ends only its
/// own sessions.
pub const MAX_SESSIONS_PER_KEY: usize = 16;

/// The session cookie's name.
pub const COOKIE: &str = "cedard_session";

/// The console's state: its sessions and what it needs to know of the
/// daemon's configuration.
#[derive(Debug)]
pub struct Console {
    /// Sessions by the SHA-256 of their id. A `std` mutex: held for a map
    /// operation, never across an `.await`.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Whether the daemon serves TLS (the cookie is then `Secure`).
    secure: bool,
    /// The daemon's decision log, replayed by the Impact page.
    pub(crate) decision_log: Option<PathBuf>,
    /// The folder under which the Impact page may read a candidate folder
    /// (`--candidates-root`); `None`: no folder on the server is read.
    pub(crate) candidates_root: Option<PathBuf>,
    /// How the Impact page's proof and the Policies page's health are
    /// proved.
    pub(crate) prover: crate::prove::Prover,
}

#[derive(Debug, Clone)]
pub(super) struct Session {
    /// The key the session was opened with.
    pub(super) key_id: String,
    /// The CSRF token of its forms (hex).
    pub(super) csrf: String,
    /// When it ends.
    expires: Instant,
    /// When it began, to end the oldest first.
    opened: Instant,
}

impl Console {
    /// The console of a daemon serving TLS or not, with its decision log
    /// (a file; not stdout).
    pub fn new(secure: bool, decision_log: Option<PathBuf>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            secure,
            decision_log: decision_log.filter(|p| p.as_os_str() != "-"),
            candidates_root: None,
            prover: crate::prove::Prover::default(),
        }
    }

    /// The same console, proving with `prover`.
    pub fn with_prover(mut self, prover: crate::prove::Prover) -> Self {
        self.prover = prover;
        self
    }

    /// The same console, reading candidate folders under `root` only.
    pub fn with_candidates_root(mut self, root: Option<PathBuf>) -> Self {
        self.candidates_root = root;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // Every operation replaces whole entries: a poisoned map is intact.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `key_id`: returns the session id (the cookie's
    /// value).
    pub(super) fn open(&self, key_id: &str) -> Result<String, crate::keys::RandomError> {
        let mut id = [0u8; 32];
        let mut csrf = [0u8; 32];
        crate::keys::os_random(&mut id)?;
        crate::keys::os_random(&mut csrf)?;
        let id = hex::encode(id);
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > now);
        let mine = sessions.values().filter(|s| s.key_id == key_id).count();
        // Past a cap, a session of the key holding the most (this one's, at
        // its own cap) ends: the oldest of them.
        let evict = if mine >= MAX_SESSIONS_PER_KEY {
            Some(key_id.to_owned())
        } else if sessions.len() >= MAX_SESSIONS {
            let mut held: HashMap<&str, usize> = HashMap::new();
            for s in sessions.values() {
                *held.entry(s.key_id.as_str()).or_default() += 1;
            }
            held.into_iter()
                .max_by_key(|&(key, n)| (n, std::cmp::Reverse(key)))
                .map(|(key, _)| key.to_owned())
        } else {
            None
        };
        if let Some(busiest) = evict {
            if let Some(oldest) = sessions
                .iter()
                .filter(|(_, s)| s.key_id == busiest)
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            digest(&id),
            Session {
                key_id: key_id.to_owned(),
                csrf: hex::encode(csrf),
                expires: now + SESSION_LIFETIME,
                opened: now,
            },
        );
        Ok(id)
    }

    pub(super) fn find(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut sessions = self.lock();
        let session = sessions.get(&key)?.clone();
        if session.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        Some(session)
    }

    pub(super) fn close(&self, id: &str) {
        self.lock().remove(&digest(id));
    }

    pub(super) fn cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text = format!(
            "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={max_age}{secure}"
        );
        // Hex and fixed words: always a valid header value.
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The session cookie of a request, if any.
pub(super) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}
