//! `hookbus send`: post a payload file to a gateway the way GitHub would —
//! signed, with a fresh delivery id — for trying hookbus out locally.

use std::path::Path;
use std::process::ExitCode;

use hookbus_config::{exit_on_error, Settings};

use crate::running::RunningDev;

/// Where `hookbus dev` leaves the secret it generated.
pub const DEV_SECRET_FILE: &str = ".hookbus/secret";

/// The secret `hookbus dev` generated: the one of the running `dev_dir`, or
/// else the nearest one in this directory or a parent.
fn dev_secret(dev_dir: Option<&Path>) -> Option<String> {
    let read = |dir: &Path| std::fs::read_to_string(dir.join(DEV_SECRET_FILE)).ok().map(|s| s.trim().to_string());
    match dev_dir {
        Some(dir) => read(dir),
        None => std::env::current_dir().ok()?.ancestors().find_map(read),
    }
}

pub async fn run(
    payload: &Path,
    event: &str,
    url: Option<String>,
    secret: Option<String>,
    delivery: Option<String>,
) -> ExitCode {
    let settings = exit_on_error(Settings::load());
    let body = match std::fs::read(payload) {
        Ok(body) => body,
        Err(err) => {
            eprintln!("hookbus: cannot read {}: {err}", payload.display());
            return ExitCode::from(2);
        }
    };
    // A `hookbus dev` running here or above: its secret, and its gateway
    // unless a URL or a port is named.
    let dev = RunningDev::nearest();
    let secret = secret
        .or_else(|| Some(settings.github.webhook_secret.expose().to_string()).filter(|s| !s.is_empty()))
        .or_else(|| dev_secret(dev.as_ref().map(|(_, dir)| dir.as_path())));
    let Some(secret) = secret else {
        eprintln!(
            "hookbus: no secret to sign with: pass --secret, set HOOKBUS_GITHUB__WEBHOOK_SECRET, \
             or run `hookbus dev` in this directory first"
        );
        return ExitCode::from(2);
    };
    let url = url.unwrap_or_else(|| {
        let named = ["PORT", "HOOKBUS_GATEWAY__PORT"].iter().any(|name| std::env::var_os(name).is_some());
        match dev.filter(|_| !named) {
            Some((dev, _)) => format!("http://{}/webhooks/github", dev.address),
            None => format!("http://127.0.0.1:{}/webhooks/github", settings.gateway.port),
        }
    });
    let delivery = delivery.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let signature = hookbus_gateway::signature::sign(secret.as_bytes(), &body);

    let client = reqwest::Client::new();
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/hookbus-send")
        .header("x-github-event", event)
        .header("x-github-delivery", &delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            println!("{} {status} delivery={delivery} {text}", event);
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("hookbus: cannot post to {url}: {err}");
            ExitCode::FAILURE
        }
    }
}
