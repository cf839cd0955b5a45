//! Prometheus metrics, rendered on `GET /metrics` (no listener of its own).
//!
//! - `hookbus_webhooks_total{event, result}`: every webhook answered. `event`
//!   is the `X-GitHub-Event` only once the signature verified (GitHub's own
//!   small set of names), `unverified` before, so that strangers cannot grow
//!   the label set.
//! - `hookbus_queue_depth{queue, state}`: read from the bus at each scrape.
//! - `hookbus_http_request_duration_seconds{method, route, status}`: a
//!   histogram of every request's latency (a method outside the standard
//!   ones is `other`).
//! - `hookbus_worker_*{dyno, queue}`: every worker process's counters as it
//!   last reported them into Redis (handled, retried, dead-lettered, a
//!   handler-latency histogram, last seen, up), read at each scrape
//!   ([`worker_series`]), so one scrape of the `web` dyno covers the fleet —
//!   including processes that died, until their report is 24 h old.
//! - `hookbus_redeliveries_total{result}`: failed webhook deliveries the
//!   gateway asked GitHub to send again (`asked`), or gave up on after
//!   [`crate::redeliver::MAX_ATTEMPTS`] (`gave_up`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_layer::Layer;
use tower_service::Service;

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

/// Handles by one label value, then by the others.
type Handles<K, H> = RefCell<HashMap<String, HashMap<K, H>>>;

thread_local! {
    /// This thread's handles of `hookbus_webhooks_total`, by event, then
    /// result: registered once each, then counted without building a key.
    static WEBHOOK_COUNTERS: Handles<&'static str, Counter> = RefCell::default();
    /// This thread's handles of the request-duration histogram, by route,
    /// then (method, status).
    static DURATIONS: Handles<(&'static str, u16), Histogram> = RefCell::default();
}

pub const REDELIVERIES: &str = "hookbus_redeliveries_total";

/// Counts one redelivery asked of GitHub, or one given up.
pub fn redelivery(result: &'static str) {
    metrics::counter!(REDELIVERIES, "result" => result).increment(1);
}

/// Counts one answered webhook.
pub fn webhook(event: &str, result: &'static str) {
    WEBHOOK_COUNTERS.with_borrow_mut(|counters| {
        if let Some(counter) = counters.get(event).and_then(|by_result| by_result.get(result)) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(WEBHOOKS, "event" => event.to_string(), "result" => result);
        counter.increment(1);
        counters.entry(event.to_string()).or_default().insert(result, counter);
    });
}

/// Records one request's duration under its route pattern, method and status.
fn request_duration(route: &str, method: &'static str, status: u16, seconds: f64) {
    DURATIONS.with_borrow_mut(|durations| {
        if let Some(histogram) = durations.get(route).and_then(|by_answer| by_answer.get(&(method, status))) {
            histogram.record(seconds);
            return;
        }
        let histogram = metrics::histogram!(
            REQUEST_DURATION,
            "method" => method,
            "route" => route.to_string(),
            "status" => status.to_string()
        );
        histogram.record(seconds);
        durations.entry(route.to_string()).or_default().insert((method, status), histogram);
    });
}

/// Sets one queue-depth gauge.
pub fn queue_depth(queue: &'static str, state: &'static str, value: u64) {
    metrics::gauge!(QUEUE_DEPTH, "queue" => queue, "state" => state).set(value as f64);
}

/// The worker processes' series, in Prometheus text format.
pub fn worker_series(reports: &[hookbus_bus::ProcessReport], now_ms: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let labels = |r: &hookbus_bus::ProcessReport| {
        format!("dyno=\"{}\",queue=\"{}\"", label_value(&r.process), label_value(&r.queue))
    };
    type Count = fn(&hookbus_bus::ProcessReport) -> u64;
    let counters: [(&str, &str, Count); 3] = [
        ("hookbus_worker_handled_total", "Messages a worker process handled successfully.", |r| r.handled),
        ("hookbus_worker_retried_total", "Messages a worker process failed and scheduled for a retry.", |r| r.retried),
        ("hookbus_worker_dead_lettered_total", "Messages a worker process dead-lettered.", |r| r.dead),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for r in reports {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), value(r));
        }
    }
    let name = "hookbus_worker_handler_seconds";
    let _ = writeln!(out, "# HELP {name} Handler run time per message, per worker process.\n# TYPE {name} histogram");
    for r in reports {
        let mut cumulative = 0;
        for (i, bound) in hookbus_bus::backend::LATENCY_BOUNDS_MICROS.iter().enumerate() {
            cumulative += r.latency_buckets.get(i).copied().unwrap_or(0);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{},le=\"{le}\"}} {cumulative}", labels(r));
        }
        let _ = writeln!(out, "{name}_bucket{{{},le=\"+Inf\"}} {}", labels(r), r.latency_count);
        let _ = writeln!(out, "{name}_sum{{{}}} {}", labels(r), r.latency_sum_micros as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{}}} {}", labels(r), r.latency_count);
    }
    let name = "hookbus_worker_last_seen_seconds";
    let _ = writeln!(out, "# HELP {name} When a worker process last reported (Unix time).\n# TYPE {name} gauge");
    for r in reports {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(r), r.last_seen as f64 / 1e3);
    }
    let name = "hookbus_worker_up";
    let _ = writeln!(
        out,
        "# HELP {name} 1 while a worker process reports, 0 once it stopped or went silent.\n# TYPE {name} gauge"
    );
    for r in reports {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(r), u8::from(r.alive(now_ms)));
    }
    out
}

/// A label value with Prometheus's escapes.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `method` label: the standard methods by name, anything else (HTTP
/// lets a client send any token as a method) as `other`, so that strangers
/// cannot grow the label set. Static, so no allocation per request either.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware: times every request under its route pattern (never the raw
/// path, whose ids would grow the label set) and a bounded method label.
///
/// A plain tower layer rather than `axum::middleware::from_fn`, which boxes
/// the inner service and the future of every request: in the ingest
/// benchmark that cost about 0.8 µs per webhook, 3-4 % of the gateway's CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service [`TrackLayer`] wraps a route in.
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        Tracked { inner: self.inner.call(request), started, route, method }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way; its duration is recorded once ready.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: &'static str,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            request_duration(route, this.method, response.status().as_u16(), this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}
