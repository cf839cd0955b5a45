//! Prometheus metrics, rendered on `GET /metrics` (no listener of its own).
//!
//! - `hookbus_webhooks_total{event, result}`: every webhook answered. `event`
//!   is the `X-GitHub-Event` only once the signature verified (GitHub's own
//!   small set of names), `unverified` before, so that strangers cannot grow
//!   the label set.
//! - `hookbus_queue_depth{queue, state}`: read from the bus at each scrape.
//! - `hookbus_http_request_duration_seconds{method, route, status}`: a
//!   histogram of every request's latency.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const WEBHOOKS: &str = "hookbus_webhooks_total";
pub const QUEUE_DEPTH: &str = "hookbus_queue_depth";
pub const REQUEST_DURATION: &str = "hookbus_http_request_duration_seconds";

/// Latency buckets, seconds: fine below 10 ms, where an accepted webhook
/// should be.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide recorder. The `metrics` facade has one global recorder,
/// so every gateway in a process (tests start many) shares it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics shows only queue depths");
            }
            let upkeep = handle.clone();
            // Histograms accumulate until drained; a scrape drains them too,
            // but nobody may scrape for a long time.
            let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "metrics upkeep thread did not start");
            }
            handle
        })
        .clone()
}

/// Counts one answered webhook.
pub fn webhook(event: &str, result: &'static str) {
    metrics::counter!(WEBHOOKS, "event" => event.to_string(), "result" => result).increment(1);
}

/// Sets one queue-depth gauge.
pub fn queue_depth(queue: &'static str, state: &'static str, value: u64) {
    metrics::gauge!(QUEUE_DEPTH, "queue" => queue, "state" => state).set(value as f64);
}

/// Middleware: times every request under its route pattern (never the raw
/// path, whose ids would grow the label set).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics::histogram!(
        REQUEST_DURATION,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
