//! `hookbus-commit`: runs the commit-to-git plugin over Redis until SIGTERM.
//! Exit codes: 0 after a clean shutdown, 1 when it cannot run, 2 for bad
//! configuration (including a remote that cannot be used).

use std::process::ExitCode;

use hookbus_bus::{run_worker_with, Journal, SetupError};
use hookbus_commit::{CommitPlugin, COMMITS_JOURNAL, COMMITS_KEPT};

#[tokio::main]
async fn main() -> ExitCode {
    hookbus_commit::objects::one_malloc_arena();
    run_worker_with("hookbus-commit", |settings, backend| {
        let plugin = CommitPlugin::from_settings(settings).map_err(|err| match err.is_permanent() {
            true => SetupError::Unusable(err.to_string()),
            false => SetupError::failed(err),
        })?;
        // Pushed commits, for the admin page (the gateway has no clone).
        Ok(plugin.with_journal(Journal::new(backend.clone(), COMMITS_JOURNAL, COMMITS_KEPT)))
    })
    .await
}
