//! `hookbus-reconcile`: the `reconcile` dyno.

use std::process::ExitCode;

use hookbus_bus::{run_worker, SetupError};
use hookbus_reconcile::Reconcile;

#[tokio::main]
async fn main() -> ExitCode {
    run_worker("hookbus-reconcile", |settings| Reconcile::from_settings(settings).map_err(SetupError::failed)).await
}
