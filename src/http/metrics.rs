//! Prometheus metrics: the recorder (one per process, as the `metrics`
//! facade has one global recorder) and the rendering of `/metrics`.
//!
//! The counters and histograms are recorded where things happen, through the
//! `metrics` facade (so that `pdp`, `accounts`, `policy` and `store` know
//! nothing of Prometheus); the gauges that describe the serving state
//! (policy generation and count, live keys, decision-log drops, whether the
//! store takes writes) are read when `/metrics` is rendered, so they are
//! never stale.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds: from 10 µs (a memoised decision) to 5 s.
const BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process's recorder, installed on first use. `None` if another
/// recorder was installed first (an embedding program's), in which case
/// cedard's metrics go there and `/metrics` is not served.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("cannot install the metrics recorder: {e}");
                    None
                }
            }
        })
        .clone()
}

/// How often the recorder's histograms are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorded latencies into their buckets every few seconds. The
/// exporter keeps every histogram sample until a scrape or an upkeep takes
/// it: without this, a daemon nobody scrapes would grow by two samples per
/// request for ever.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let h = handle.clone();
        let _ = tokio::task::spawn_blocking(move || h.run_upkeep()).await;
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "cedard_decisions_total",
        "Decisions answered, by endpoint and decision"
    );
    describe_counter!(
        "cedard_decision_failures_total",
        "Calls that got no decision (bad input, store unavailable), by endpoint and reason"
    );
    describe_histogram!(
        "cedard_decision_duration_seconds",
        Unit::Seconds,
        "Time to answer one decision call, by endpoint"
    );
    describe_counter!(
        "cedard_evaluation_errors_total",
        "Policies that failed to evaluate during decisions"
    );
    describe_counter!(
        "cedard_policy_reloads_total",
        "Policy reload attempts, by outcome"
    );
    describe_gauge!(
        "cedard_policy_generation",
        "Generation of the serving policy set"
    );
    describe_gauge!("cedard_policies", "Policies in the serving set");
    describe_counter!(
        "cedard_store_writes_total",
        "Store writes, by operation and outcome"
    );
    describe_histogram!(
        "cedard_store_write_duration_seconds",
        Unit::Seconds,
        "Durable store write latency, by operation"
    );
    describe_counter!(
        "cedard_store_write_outages_total",
        "Write outages of the store: times writes stopped committing (an I/O failure such as a full disk)"
    );
    // Shown from the start, at zero, rather than from the first outage.
    metrics::counter!("cedard_store_write_outages_total").increment(0);
    describe_gauge!(
        "cedard_store_writable",
        "1 while the store commits writes, 0 during a write outage"
    );
    describe_counter!(
        "cedard_invites_total",
        "Invite events: created, accepted, revoked, expired, refused"
    );
    describe_counter!(
        "cedard_http_requests_total",
        "HTTP requests, by route, method and status"
    );
    describe_histogram!(
        "cedard_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route"
    );
    describe_counter!(
        crate::audit::DROPPED_METRIC,
        "Decision-log entries dropped because the sink was full or failing"
    );
    describe_counter!(
        "cedard_auth_failures_total",
        "Requests refused for their key, by reason"
    );
    describe_counter!(
        "cedard_overload_rejections_total",
        "Requests refused at the concurrency cap"
    );
    describe_counter!(
        "cedard_request_timeouts_total",
        "Requests cut off at the time limit"
    );
    describe_gauge!("cedard_keys", "Live (unrevoked) caller keys");
    describe_gauge!(
        "cedard_build_info",
        "Build information; the value is always 1"
    );
    metrics::gauge!("cedard_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// `/metrics`: the serving state's gauges, then everything recorded.
pub fn render(handle: &PrometheusHandle, state: &AppState) -> String {
    let snapshot = state.pdp.live().snapshot();
    metrics::gauge!("cedard_policy_generation").set(snapshot.revision.generation as f64);
    metrics::gauge!("cedard_policies").set(snapshot.meta.len() as f64);
    metrics::gauge!("cedard_keys").set(state.keys.live_count() as f64);
    let writable = state.pdp.store().write_outage().is_none();
    metrics::gauge!("cedard_store_writable").set(if writable { 1.0 } else { 0.0 });
    handle.render()
}
