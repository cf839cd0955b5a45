//! What the tests share: fixtures, envelopes built like the gateway's, and
//! running the plugin on one message.

use std::path::PathBuf;
use std::sync::Arc;

use hookbus_bus::{Envelope, HandlerError, Outbox, Plugin};
use hookbus_config::RepositoryList;
use hookbus_gateway::webhook::WebhookPayload;
use hookbus_normalise::{MemoryRegistry, Normalise, RepositoryRegistry, SyncOperationPayload};

pub const RECEIVED_AT: i64 = 1_700_000_000_000;
pub const SYNCED_EVENTS: [&str; 4] = ["issues", "issue_comment", "pull_request", "release"];

pub fn fixtures_dir() -> PathBuf {
    hookbus_testkit::workspace_root().join("fixtures/github")
}

/// `(file name, bytes)` of every fixture of `event`, sorted.
pub fn fixtures(event: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir().join(event);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, std::fs::read(&p).expect("fixture"))
        })
        .collect()
}

pub fn fixture(event: &str, file: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(event).join(file)).expect("fixture")
}

pub fn fixture_json(event: &str, file: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(event, file)).expect("fixture is JSON")
}

/// A `github.webhook` message exactly as the gateway writes it.
pub fn webhook(event: &str, delivery: &str, body: &[u8]) -> Envelope {
    let payload = WebhookPayload { event, delivery, received_at: RECEIVED_AT, body };
    Envelope::with_payload("github.webhook", &payload).expect("encodes")
}

pub fn plugin() -> (Normalise, Arc<MemoryRegistry>) {
    let registry = Arc::new(MemoryRegistry::new());
    let dyn_registry: Arc<dyn RepositoryRegistry> = registry.clone();
    (Normalise::new(dyn_registry, RepositoryList::default()), registry)
}

/// Handles one message; returns the decoded operations it emitted, after
/// checking each went to `reconcile` as a `sync.operation` keyed by resource.
pub async fn handle(plugin: &Normalise, message: &Envelope) -> Result<Vec<SyncOperationPayload>, HandlerError> {
    let mut out = Outbox::new(&message.trace_id);
    plugin.handle(message, &mut out).await?;
    Ok(out
        .into_messages()
        .into_iter()
        .map(|(queue, envelope)| {
            assert_eq!(queue, "reconcile");
            assert_eq!(envelope.kind, "sync.operation");
            assert_eq!(envelope.trace_id, message.trace_id, "the trace is carried");
            let operation: SyncOperationPayload = envelope.payload_as().expect("sync.operation decodes");
            assert_eq!(envelope.key.as_deref(), Some(operation.key.as_str()), "envelope key is the resource key");
            operation
        })
        .collect())
}

/// Handles a webhook that must yield exactly one operation.
pub async fn one_operation(plugin: &Normalise, event: &str, body: &[u8]) -> SyncOperationPayload {
    let mut operations = handle(plugin, &webhook(event, "delivery-1", body)).await.expect("handled");
    assert_eq!(operations.len(), 1, "{event}: one operation");
    operations.remove(0)
}
