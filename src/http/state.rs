//! The state every handler shares.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accounts::Accounts;
use crate::keys::KeyRing;
use crate::pdp::Pdp;

/// The limits a request is held to (each a flag of `cedard serve`).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// The most requests one batch may hold; more is a 400, so that one call
    /// cannot monopolise the evaluator.
    pub batch_limit: usize,
    /// The largest request body, in bytes (413 above it).
    pub max_body: usize,
    /// The most requests handled at once; more are refused at once with a
    /// 503 and `Retry-After` rather than queued without bound.
    pub max_concurrent: usize,
    /// How long one request may take before it is answered with a 503.
    pub request_timeout: Duration,
    /// How long a client may take to send a body, which is read whole
    /// before the request takes a place under `max_concurrent` (a 408
    /// after it): a slow sender holds no place.
    pub body_timeout: Duration,
    /// Bodies larger than this are parsed off the async workers, so that a
    /// large entity set cannot delay `/healthz` and small decisions.
    pub blocking_threshold: usize,
    /// The hosts cedard answers to.
    pub hosts: AllowedHosts,
    /// `--insecure-no-auth`: with no keys, answer callers off loopback too.
    pub insecure_no_auth: bool,
    /// `--actor`: whether `X-Actor` may name the acting user.
    pub actor: crate::config::ActorMode,
    /// What each caller holds of `max_concurrent`.
    pub shares: Arc<Shares>,
}

/// How many requests each caller (a key, or a peer address when no key is
/// in use) has in progress, so that no one caller holds every place under
/// `max_concurrent`: each holds at most [`Shares::most`] of them.
#[derive(Debug, Default)]
pub struct Shares {
    held: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// A caller's place, given back on drop.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    caller: String,
}

impl Shares {
    /// The most places one caller holds: three quarters of
    /// `max_concurrent` (at least one), so that a quarter is always left to
    /// the others.
    pub fn most(max_concurrent: usize) -> usize {
        (max_concurrent - max_concurrent / 4).max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        // Counts only: a poisoned map is intact.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `caller`, unless it holds `most` already.
    pub fn take(self: &Arc<Self>, caller: &str, most: usize) -> Option<Share> {
        let mut held = self.lock();
        let n = held.entry(caller.to_owned()).or_default();
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            caller: caller.to_owned(),
        })
    }

    /// How many places `caller` holds.
    pub fn held(&self, caller: &str) -> usize {
        self.lock().get(caller).copied().unwrap_or(0)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        if let Some(n) = held.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            batch_limit: 1000,
            max_body: 1024 * 1024,
            max_concurrent: 256,
            request_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(5),
            blocking_threshold: 16 * 1024,
            hosts: AllowedHosts::default(),
            insecure_no_auth: false,
            actor: crate::config::ActorMode::HeaderOrToken,
            shares: Arc::default(),
        }
    }
}

/// Shared state of every handler: one `Arc`, so that the copies the router
/// makes of every layer for every request (each guard holds the state)
/// cost one atomic increment and decrement each, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state holding `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every handler shares (through [`AppState`]).
pub struct Shared {
    /// The decision pipeline (and through it the live policies and store).
    pub pdp: Arc<Pdp>,
    /// The management operations.
    pub accounts: Arc<Accounts>,
    /// The live caller keys.
    pub keys: Arc<KeyRing>,
    /// The request limits.
    pub limits: Arc<HttpLimits>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The web console's sessions and settings.
    pub console: Arc<super::ui::session::Console>,
    /// Verifies user and service tokens against the live set's issuers.
    pub identity: Arc<crate::identity::Identity>,
}

/// The hosts cedard answers to.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    /// Host names (no port) accepted besides IP literals and `localhost`.
    pub names: Vec<String>,
    /// `--allowed-host '*'`: any host (logged loudly at start).
    pub any: bool,
}

impl AllowedHosts {
    /// Whether `host` (a `Host` header: a name or IP, with an optional port)
    /// is served. IP literals are always accepted: DNS rebinding needs a
    /// name.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        // Compared without allocating: this runs on every request.
        let name = strip_port(host).trim_end_matches('.');
        if name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:8180`
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_holds_at_most_its_share_and_gives_places_back() {
        assert_eq!(Shares::most(32), 24);
        assert_eq!(Shares::most(4), 3);
        assert_eq!(Shares::most(1), 1);
        let shares = Arc::new(Shares::default());
        let held: Vec<Share> = (0..3)
            .map(|_| shares.take("key a", 3).expect("within the share"))
            .collect();
        assert!(shares.take("key a", 3).is_none(), "past the share");
        let other = shares.take("key b", 3).expect("another caller");
        assert_eq!(shares.held("key a"), 3);
        drop(held);
        assert_eq!(shares.held("key a"), 0, "places are given back");
        assert!(shares.take("key a", 3).is_some());
        drop(other);
        assert_eq!(shares.held("key b"), 0);
    }
}
