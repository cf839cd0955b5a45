//! `hookbus-notify`: the `notify` dyno. Configuration (exit 2 on a bad
//! setting), Redis, signals, then the notify plugin under the runner.

use std::process::ExitCode;
use std::sync::Arc;

use hookbus_bus::{RunnerOptions, Shutdown};
use hookbus_config::{exit_on_error, Settings};
use hookbus_notify::{Notify, QUEUE};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = exit_on_error(Settings::load());
    hookbus_bus::telemetry::init();
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let (backend, plugin) = match (hookbus_bus::connect(&settings), Notify::from_settings(&settings)) {
        (Ok(backend), Ok(plugin)) => (backend, plugin),
        (Err(err), _) => {
            tracing::error!(error = %err, "cannot set up the redis connection");
            return ExitCode::FAILURE;
        }
        (_, Err(err)) => {
            tracing::error!(error = %err, "cannot set up notify");
            return ExitCode::FAILURE;
        }
    };
    if settings.notify.subscribers.is_empty() {
        tracing::info!("no subscribers configured (notify.subscribers): events go to the events channel only");
    }
    let options = RunnerOptions::from_settings(&settings.bus, QUEUE);
    match hookbus_bus::run(backend, Arc::new(plugin), options, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "notify stopped");
            ExitCode::FAILURE
        }
    }
}
