//! hookbus-gateway: the HTTP edge of hookbus (SPEC §6 "gateway").
//!
//! - [`webhook`]: `POST /webhooks/github`: verify, validate, deduplicate on
//!   `X-GitHub-Delivery`, enqueue a `github.webhook` message on `normalise`.
//! - [`signature`]: the `X-Hub-Signature-256` HMAC; [`json`]: whether a
//!   body is JSON, checked in one pass with its signature.
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
pub mod json;
pub mod metrics;
pub mod operations;
pub mod redeliver;
pub mod rejection;
pub mod signature;
pub mod webhook;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use hookbus_bus::{Backend, Shutdown};
use hookbus_config::{Settings, Tokens};
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
    #[error("{0}")]
    Setup(String),
    #[error("a serving thread panicked")]
    Panicked,
}

/// Everything the handlers share.
pub struct Gateway {
    backend: Arc<dyn Backend>,
    intake: Arc<dyn Intake>,
    /// Reconcile's operation records, when wired; without them the gateway
    /// knows only which changes it accepted.
    operations: Option<Arc<dyn OperationLookup>>,
    /// Keys of the webhook HMAC (and, during a rotation, the previous one).
    /// An empty key refuses every webhook: the binary does not start without
    /// one, and dev mode generates one.
    secrets: signature::WebhookSecrets,
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
        let intake = Arc::new(LocalIntake::new(backend.clone(), retention, settings.gateway.redis_timeout()));
        Self::with_intake(backend, intake, settings)
    }

    fn with_intake(backend: Arc<dyn Backend>, intake: Arc<dyn Intake>, settings: &Settings) -> Self {
        Gateway {
            backend,
            intake,
            operations: None,
            secrets: signature::WebhookSecrets::new(
                settings.github.webhook_secret.clone(),
                settings.github.previous_webhook_secret.clone(),
            ),
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
            .route_layer(metrics::TrackLayer)
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
pub async fn serve<L>(listener: L, router: Router, shutdown: Shutdown, grace: Duration) -> Result<(), GatewayError>
where
    L: Listener<Addr = std::net::SocketAddr>,
{
    let signal = shutdown.clone();
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    // `tap_io` only so that any listener's peer address reaches `ConnectInfo`.
    let listener = listener.tap_io(|_| ());
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

/// Serves on `listener` from `threads` threads, each a single-threaded
/// runtime with its own router from `build` (so its own Redis connections
/// and intake writer), until `shutdown` fires; then as [`serve`], on every
/// thread. Blocks until all have stopped.
///
/// The caller's runtime accepts and hands each connection, round-robin, to
/// one thread, which serves it from start to end. A webhook is then read,
/// verified, written to Redis and answered without crossing threads: in the
/// ingest benchmark that took about a tenth less CPU per webhook than one
/// multi-threaded runtime shared by every connection (docs/performance-notes.md).
///
/// `build` runs on each serving thread, inside its runtime; a thread whose
/// router cannot be built stops them all and is the error returned.
pub async fn serve_on_threads<B>(
    listener: tokio::net::TcpListener,
    threads: usize,
    build: B,
    shutdown: Shutdown,
    grace: Duration,
) -> Result<(), GatewayError>
where
    B: Fn() -> Result<Router, GatewayError> + Send + Sync + 'static,
{
    let local = listener.local_addr()?;
    let build = Arc::new(build);
    let mut handoffs = Vec::new();
    let mut serving = Vec::new();
    for index in 0..threads.max(1) {
        let (handoff, connections) = tokio::sync::mpsc::unbounded_channel();
        let (build, shutdown) = (build.clone(), shutdown.clone());
        let thread = std::thread::Builder::new().name(format!("gateway-{index}")).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let router = match build() {
                    Ok(router) => router,
                    Err(err) => {
                        // The others stop too: half a gateway is not served.
                        shutdown.trigger();
                        return Err(err);
                    }
                };
                serve(Handoff { connections, local }, router, shutdown, grace).await
            })
        })?;
        handoffs.push(handoff);
        serving.push(thread);
    }

    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => match stream.into_std() {
                Ok(stream) => {
                    // A thread that stopped early has dropped its end; the
                    // connection then closes, and the shutdown it triggered
                    // ends this loop.
                    let _ = handoffs[next].send((stream, peer));
                    next = (next + 1) % handoffs.len();
                }
                Err(err) => tracing::warn!(%peer, error = %err, "cannot hand over a connection; closed"),
            },
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::error!(error = %err, "accept failed; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    // No new connections from here on; every thread drains its own.
    drop(listener);
    drop(handoffs);
    let joined = tokio::task::spawn_blocking(move || serving.into_iter().map(std::thread::JoinHandle::join).collect())
        .await
        .unwrap_or_else(|_| Vec::new());
    let mut outcome = Ok(());
    for result in joined {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => outcome = outcome.and(Err(err)),
            Err(_) => outcome = outcome.and(Err(GatewayError::Panicked)),
        }
    }
    outcome
}

/// Errors of one connection, not of the listener (as hyper and axum treat them).
fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(err.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// The connections the accepting runtime hands to one serving thread.
struct Handoff {
    connections: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl Listener for Handoff {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.recv().await {
                // Registered with this thread's runtime here, on this thread.
                Some((stream, peer)) => match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => return (stream, peer),
                    Err(err) => tracing::warn!(%peer, error = %err, "cannot take over a connection; closed"),
                },
                // Accepting has stopped: only the shutdown ends this server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
