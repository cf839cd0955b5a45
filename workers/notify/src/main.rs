//! `hookbus-notify`: the `notify` dyno.

use std::process::ExitCode;

use hookbus_bus::{run_worker, SetupError};
use hookbus_notify::{Notify, NotifyError};

#[tokio::main]
async fn main() -> ExitCode {
    run_worker("hookbus-notify", |settings| {
        if settings.notify.subscribers.is_empty() {
            tracing::info!("no subscribers configured (notify.subscribers): events go to the events channel only");
        }
        Notify::from_settings(settings).map_err(|err| match err {
            NotifyError::Config(err) => SetupError::Config(err),
            err => SetupError::failed(err),
        })
    })
    .await
}
