//! `hookbus-normalise`: runs the normalise plugin over Redis until SIGTERM.
//! Exit codes: 0 after a clean shutdown, 1 when it cannot run, 2 for bad
//! configuration.

use std::process::ExitCode;
use std::sync::Arc;

use hookbus_bus::{run_worker, SetupError};
use hookbus_config::ConfigError;
use hookbus_normalise::{Normalise, RedisRegistry};

#[tokio::main]
async fn main() -> ExitCode {
    run_worker("hookbus-normalise", |settings| {
        let registry = RedisRegistry::from_settings(settings)
            .map_err(|err| ConfigError::invalid("redis.url (REDIS_URL)", err.to_string()))?;
        Ok::<_, SetupError>(Normalise::new(Arc::new(registry), settings.normalise.repositories.clone()))
    })
    .await
}
