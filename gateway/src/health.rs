//! `GET /healthz` (the process answers), `GET /readyz` (Redis answers too)
//! and `GET /metrics` (Prometheus text, queue depths and worker processes'
//! reports read at each scrape).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookbus_bus::QUEUES;

use crate::rejection::Rejection;
use crate::{metrics, Gateway};

/// Alive: answers as long as the process serves HTTP.
pub async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Ready: the bus and the intake connection both answer within the bound.
pub async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let checked = async {
        gateway.bounded(gateway.backend.ping()).await?;
        gateway.bounded(gateway.intake.ping()).await
    };
    match checked.await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "not ready: redis unreachable");
            Rejection::unavailable(format!("redis unreachable: {err}")).into_response()
        }
    }
}

/// Prometheus text. Queue depths are refreshed first; when Redis is down the
/// last values stay and the scrape still answers.
pub async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    for queue in QUEUES {
        match gateway.bounded(gateway.backend.depths(queue)).await {
            Ok(d) => {
                for (state, value) in [
                    ("pending", d.pending),
                    ("in_flight", d.in_flight),
                    ("delayed", d.delayed),
                    ("held", d.held),
                    ("dead", d.dead),
                    ("consumers", d.consumers),
                ] {
                    metrics::queue_depth(queue, state, value);
                }
            }
            Err(err) => {
                tracing::warn!(queue, error = %err, "queue depths unavailable for /metrics");
                break;
            }
        }
    }
    let mut text = gateway.metrics.render();
    let mut reports = Vec::new();
    for queue in QUEUES {
        match gateway.bounded(gateway.backend.processes(queue)).await {
            Ok(found) => reports.extend(found),
            Err(err) => {
                tracing::warn!(queue, error = %err, "worker reports unavailable for /metrics");
                break;
            }
        }
    }
    if !reports.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&metrics::worker_series(&reports, hookbus_bus::envelope::now_ms()));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
