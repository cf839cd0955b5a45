//! `hookbus-gateway`: the `web` dyno. Loads the configuration (exit 2 on a
//! bad or missing setting), connects to Redis and serves the gateway on
//! `0.0.0.0:$PORT` until SIGTERM/SIGINT, then drains in-flight requests.
//! Operation states come from the records reconcile keeps in the same Redis.

use std::process::ExitCode;
use std::sync::Arc;

use hookbus_bus::Shutdown;
use hookbus_gateway::operations::StoreLookup;
use hookbus_gateway::{serve, Gateway};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = hookbus_config::exit_on_error(hookbus_config::Settings::load());
    // Outside dev mode an unsigned gateway would accept anyone's events.
    hookbus_config::exit_on_error(settings.github.require_webhook_secret());
    hookbus_bus::telemetry::init();

    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let backend = match hookbus_bus::connect(&settings) {
        Ok(backend) => backend,
        Err(err) => {
            tracing::error!(error = %err, "cannot set up the redis connection");
            return ExitCode::FAILURE;
        }
    };
    let operations = match StoreLookup::over_redis(&settings) {
        Ok(operations) => operations,
        Err(err) => {
            tracing::error!(error = %err, "cannot set up the redis connection for operation records");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::over_redis(backend, &settings) {
        Ok(gateway) => gateway.with_operations(Arc::new(operations)),
        Err(err) => {
            tracing::error!(error = %err, "cannot set up the gateway");
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
    tracing::info!(%address, "gateway listening");
    match serve(listener, gateway.router(), shutdown, settings.gateway.grace_period()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gateway stopped with an error");
            ExitCode::FAILURE
        }
    }
}
