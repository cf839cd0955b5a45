//! `hookbus-normalise`: runs the normalise plugin over Redis until SIGTERM.
//! Exit codes: 0 after a clean shutdown, 1 when it cannot run, 2 for bad
//! configuration.

use std::sync::Arc;

use hookbus_bus::{RunnerOptions, Shutdown};
use hookbus_config::{exit_on_error, ConfigError, Settings};
use hookbus_normalise::{Normalise, RedisRegistry, INPUT};

#[tokio::main]
async fn main() {
    let settings = exit_on_error(Settings::load());
    hookbus_bus::telemetry::init();
    let registry = exit_on_error(
        RedisRegistry::connect(settings.redis.url.expose(), settings.redis.tls_insecure, &settings.bus.prefix)
            .map_err(|err| ConfigError::invalid("redis.url (REDIS_URL)", err.to_string())),
    );
    let backend = match hookbus_bus::connect(&settings) {
        Ok(backend) => backend,
        Err(err) => {
            eprintln!("hookbus-normalise: {err}");
            std::process::exit(2);
        }
    };
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            eprintln!("hookbus-normalise: cannot install signal handlers: {err}");
            std::process::exit(1);
        }
    };
    let plugin = Normalise::new(Arc::new(registry), settings.normalise.repositories.clone());
    let options = RunnerOptions::from_settings(&settings.bus, INPUT);
    match hookbus_bus::run(backend, Arc::new(plugin), options, shutdown).await {
        Ok(_) => std::process::exit(0),
        Err(err) => {
            eprintln!("hookbus-normalise: {err}");
            std::process::exit(1);
        }
    }
}
