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
    /// Bodies larger than this are parsed off the async workers, so that a
    /// large entity set cannot delay `/healthz` and small decisions.
    pub blocking_threshold: usize,
    /// The hosts cedard answers to.
    pub hosts: AllowedHosts,
    /// `--insecure-no-auth`: with no keys, answer callers off loopback too.
    pub insecure_no_auth: bool,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            batch_limit: 1000,
            max_body: 1024 * 1024,
            max_concurrent: 256,
            request_timeout: Duration::from_secs(10),
            blocking_threshold: 16 * 1024,
            hosts: AllowedHosts::default(),
            insecure_no_auth: false,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
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
