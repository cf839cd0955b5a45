//! `hookbus-commit`: runs the commit-to-git plugin over Redis until SIGTERM.
//! Exit codes: 0 after a clean shutdown, 1 when it cannot run, 2 for bad
//! configuration.

use std::sync::Arc;

use hookbus_bus::{RunnerOptions, Shutdown};
use hookbus_commit::{CommitPlugin, INPUT};
use hookbus_config::{exit_on_error, Settings};

#[tokio::main]
async fn main() {
    let settings = exit_on_error(Settings::load());
    hookbus_bus::telemetry::init();
    let plugin = match CommitPlugin::from_settings(&settings) {
        Ok(plugin) => plugin,
        Err(err) => {
            eprintln!("hookbus-commit: {err}");
            std::process::exit(if err.is_permanent() { 2 } else { 1 });
        }
    };
    let backend = match hookbus_bus::connect(&settings) {
        Ok(backend) => backend,
        Err(err) => {
            eprintln!("hookbus-commit: {err}");
            std::process::exit(2);
        }
    };
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            eprintln!("hookbus-commit: cannot install signal handlers: {err}");
            std::process::exit(1);
        }
    };
    let options = RunnerOptions::from_settings(&settings.bus, INPUT);
    match hookbus_bus::run(backend, Arc::new(plugin), options, shutdown).await {
        Ok(_) => std::process::exit(0),
        Err(err) => {
            eprintln!("hookbus-commit: {err}");
            std::process::exit(1);
        }
    }
}
