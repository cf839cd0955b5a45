//! `hookbus-reconcile`: the `reconcile` dyno.

use std::process::ExitCode;

use hookbus_bus::run_worker;
use hookbus_reconcile::Reconcile;

#[tokio::main]
async fn main() -> ExitCode {
    run_worker("hookbus-reconcile", Reconcile::from_settings).await
}
