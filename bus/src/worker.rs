//! The `main` every worker binary shares: configuration (exit 2 naming a bad
//! setting), logging, signals, Redis, then one plugin under the runner until
//! SIGTERM/SIGINT (exit 0 after draining).

use std::fmt::Display;
use std::process::ExitCode;
use std::sync::Arc;

use hookbus_config::{ConfigError, Settings};

use crate::plugin::Plugin;
use crate::runner::RunnerOptions;
use crate::shutdown::Shutdown;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is wrong: exit code 2.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// What the settings point at is unusable (a git remote that does not
    /// exist, say): exit code 2, the message says which setting.
    #[error("{0}")]
    Unusable(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl SetupError {
    pub fn failed(err: impl Display) -> Self {
        SetupError::Failed(err.to_string())
    }
}

/// Runs the worker `binary`: `build` makes its plugin from the settings.
pub async fn run_worker<P: Plugin>(binary: &str, build: impl FnOnce(&Settings) -> Result<P, SetupError>) -> ExitCode {
    run_worker_with(binary, |settings, _| build(settings)).await
}

/// Like [`run_worker`], for a plugin that also needs the backend it runs
/// on — only to hand a narrow view of it (a [`crate::Journal`]) to the
/// plugin, never the queues.
pub async fn run_worker_with<P: Plugin>(
    binary: &str,
    build: impl FnOnce(&Settings, &Arc<dyn crate::Backend>) -> Result<P, SetupError>,
) -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => return fail(binary, SetupError::Config(err)),
    };
    let _logs = crate::telemetry::init();
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => return fail(binary, SetupError::failed(format!("cannot install signal handlers: {err}"))),
    };
    let backend = match crate::connect(&settings) {
        Ok(backend) => backend,
        Err(err) => return fail(binary, SetupError::failed(err)),
    };
    let plugin = match build(&settings, &backend) {
        Ok(plugin) => plugin,
        Err(err) => return fail(binary, err),
    };
    tokio::spawn(crate::backend::warn_of_durability_risks(backend.clone(), shutdown.clone()));
    let options = RunnerOptions::from_settings(&settings.bus, plugin.input());
    match crate::run(backend, Arc::new(plugin), options, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => fail(binary, SetupError::failed(err)),
    }
}

fn fail(binary: &str, err: SetupError) -> ExitCode {
    eprintln!("{binary}: {err}");
    match err {
        SetupError::Config(_) | SetupError::Unusable(_) => ExitCode::from(2),
        SetupError::Failed(_) => ExitCode::FAILURE,
    }
}
