//! hookbus-gateway: the HTTP edge of hookbus (SPEC §6 "gateway").
//!
//! - [`webhook`]: `POST /webhooks/github`: verify, validate, deduplicate on
//!   `X-GitHub-Delivery`, enqueue a `github.webhook` message on `normalise`.
//! - [`signature`]: the `X-Hub-Signature-256` HMAC.
//! - [`intake`]: enqueueing exactly once per delivery (Redis script, or in
//!   process for dev mode).
//! - [`api`]: the client API, `POST /api/v1/changes` and
//!   `GET /api/v1/operations/{id}`, behind bearer tokens.
//! - [`operations`]: where that `GET` reads reconcile's operation records
//!   (a trait; the adapter over reconcile's store is behind the `reconcile`
//!   feature).
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`; [`metrics`] the series
//!   (the gateway's own, and every worker process's from its reports).
//! - [`admin`]: `/admin`, the operator dashboard and its JSON, behind HTTP
//!   Basic (or loopback in dev mode) and a same-origin rule for POSTs.
//! - [`rejection`]: every refusal is a JSON `{"error": ...}` and one log line.
//!
//! [`Gateway`] holds what the handlers share and builds the [`axum::Router`];
//! [`serve`] runs it until a [`Shutdown`] and drains in-flight requests.
//! The gateway never answers 2xx for something the store has not
//! acknowledged.

pub mod admin;
pub mod api;
pub mod health;
pub mod intake;
pub mod metrics;
pub mod operations;
pub mod rejection;
pub mod signature;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use hookbus_bus::{Backend, Shutdown};
use hookbus_config::{Secret, Settings, Tokens};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::intake::{Intake, IntakeError, LocalIntake, RedisIntake};
use crate::operations::OperationLookup;

/// Why the gateway could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot set up the redis connection: {0}")]
    Intake(#[from] IntakeError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything the handlers share.
pub struct Gateway {
    backend: Arc<dyn Backend>,
    intake: Arc<dyn Intake>,
    /// Reconcile's operation records, when wired; without them the gateway
    /// knows only which changes it accepted.
    operations: Option<Arc<dyn OperationLookup>>,
    /// Key of the webhook HMAC. Empty means every webhook is refused: the
    /// binary does not start without one, and dev mode generates one.
    secret: Secret,
    /// Bearer tokens of `/api/v1`.
    tokens: Tokens,
    max_body: usize,
    /// Bound on every store call a request waits for; past it, 503.
    timeout: Duration,
    metrics: PrometheusHandle,
    /// Who may use `/admin`, and its CSRF token.
    admin: admin::Admin,
}

impl Gateway {
    /// Over Redis: marks and enqueue in one script on `redis.url`, depths and
    /// dead letters through `backend`.
    pub fn over_redis(backend: Arc<dyn Backend>, settings: &Settings) -> Result<Self, GatewayError> {
        let intake = RedisIntake::open(
            &hookbus_bus::redis::RedisTarget::from_settings(&settings.redis),
            &settings.bus.prefix,
            Duration::from_millis(settings.gateway.delivery_retention_ms),
            settings.gateway.redis_timeout(),
        )?;
        Ok(Self::with_intake(backend, Arc::new(intake), settings))
    }

    /// Over any backend, remembering deliveries in this process (dev mode on
    /// the in-memory bus).
    pub fn in_process(backend: Arc<dyn Backend>, settings: &Settings) -> Self {
        let retention = Duration::from_millis(settings.gateway.delivery_retention_ms);
        let intake = Arc::new(LocalIntake::new(backend.clone(), retention));
        Self::with_intake(backend, intake, settings)
    }

    fn with_intake(backend: Arc<dyn Backend>, intake: Arc<dyn Intake>, settings: &Settings) -> Self {
        Gateway {
            backend,
            intake,
            operations: None,
            secret: settings.github.webhook_secret.clone(),
            tokens: settings.api.tokens.clone(),
            max_body: settings.gateway.max_body_bytes,
            timeout: settings.gateway.redis_timeout(),
            metrics: metrics::handle(),
            admin: admin::Admin::from_settings(settings),
        }
    }

    /// `hookbus dev`: without `admin.password`, `/admin` is open to
    /// requests from loopback (and only those); with one, Basic as usual.
    pub fn dev_mode(mut self) -> Self {
        self.admin = self.admin.in_dev_mode();
        self
    }

    /// Answers `GET /api/v1/operations/{id}` from `operations` (reconcile's
    /// records) first, then from the gateway's own marks.
    pub fn with_operations(mut self, operations: Arc<dyn OperationLookup>) -> Self {
        self.operations = Some(operations);
        self
    }

    /// Every route of the gateway.
    pub fn router(self) -> Router {
        let state = Arc::new(self);
        Router::new()
            .merge(admin::routes(state.clone()))
            .route("/webhooks/github", post(webhook::receive))
            .route("/api/v1/changes", post(api::submit_change))
            .route("/api/v1/operations/{id}", get(api::operation))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/metrics", get(health::metrics))
            .route_layer(axum::middleware::from_fn(metrics::track))
            .with_state(state)
    }

    /// Runs a store call with the gateway's bound: a dead Redis is a quick 503.
    async fn bounded<T, E>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, IntakeError>
    where
        E: Into<IntakeError>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(IntakeError::Timeout(self.timeout)),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then stops
/// accepting and lets in-flight requests finish for at most `grace`. Each
/// request knows its peer address (`ConnectInfo`), which dev mode's admin
/// rule needs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
    grace: Duration,
) -> Result<(), GatewayError> {
    let signal = shutdown.clone();
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move { signal.cancelled().await });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => {
            tracing::info!("gateway stopped: every in-flight request finished");
            Ok(result?)
        }
        Err(_) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; dropping unfinished requests");
            Ok(())
        }
    }
}
