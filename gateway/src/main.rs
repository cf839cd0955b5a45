//! `hookbus-gateway`: the `web` dyno. Loads the configuration (exit 2 on a
//! bad or missing setting), connects to Redis and serves the gateway on
//! `0.0.0.0:$PORT` until SIGTERM/SIGINT, then drains in-flight requests.
//! Operation states come from the records reconcile keeps in the same Redis.
//!
//! The main thread accepts connections and hands them out to
//! `gateway.threads` serving threads (one per CPU by default), each with a
//! gateway of its own ([`serve_on_threads`]).

use std::process::ExitCode;
use std::sync::Arc;

use hookbus_bus::Shutdown;
use hookbus_gateway::operations::StoreLookup;
use hookbus_gateway::{serve_on_threads, Gateway, GatewayError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let settings = hookbus_config::exit_on_error(hookbus_config::Settings::load());
    // Outside dev mode an unsigned gateway would accept anyone's events.
    hookbus_config::exit_on_error(settings.github.require_webhook_secret());
    let _logs = hookbus_bus::telemetry::init();

    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let address = std::net::SocketAddr::from(([0, 0, 0, 0], settings.gateway.port));
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%address, error = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    // GitHub does not retry a failed delivery; with hooks named, we ask it to.
    match hookbus_gateway::redeliver::Redeliverer::from_settings(&settings) {
        Ok(Some(redeliverer)) => {
            tokio::spawn(redeliverer.run(shutdown.clone()));
        }
        Ok(None) => {}
        Err(err @ hookbus_gateway::redeliver::RedeliverError::Config(_)) => {
            eprintln!("hookbus: {err}");
            return ExitCode::from(2);
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot set up redeliveries");
            return ExitCode::FAILURE;
        }
    }
    match hookbus_bus::connect(&settings) {
        Ok(backend) => {
            tokio::spawn(hookbus_bus::backend::warn_of_durability_risks(backend, shutdown.clone()));
        }
        Err(err) => tracing::warn!(error = %err, "cannot check how redis keeps what it acknowledged"),
    }
    let threads = settings.gateway.serving_threads();
    let grace = settings.gateway.grace_period();
    tracing::info!(%address, threads, "gateway listening");
    let build = move || {
        let backend = hookbus_bus::connect(&settings)
            .map_err(|err| GatewayError::Setup(format!("cannot set up the redis connection: {err}")))?;
        let operations = StoreLookup::over_redis(&settings).map_err(|err| {
            GatewayError::Setup(format!("cannot set up the redis connection for operation records: {err}"))
        })?;
        Ok(Gateway::over_redis(backend, &settings)?.with_operations(Arc::new(operations)).router())
    };
    match serve_on_threads(listener, threads, build, shutdown, grace).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gateway stopped with an error");
            ExitCode::FAILURE
        }
    }
}
