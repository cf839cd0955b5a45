//! hookbus-normalise: GitHub webhooks and client changes in, canonical
//! `sync.operation` messages out (SPEC §6 "normalise").
//!
//! - [`actions`]: the (event, action) table: sync, change the synced
//!   repositories, or skip with a named reason.
//! - [`github`]: a webhook body becomes an inbound operation.
//! - [`change`]: a client change becomes an outbound operation.
//! - [`record`]: the canonical records commit-to-git writes, and their hash.
//! - [`registry`]: which repositories installation events left synced.
//! - [`field`]: reading untrusted JSON so faults name their field.
//! - [`wire`]: the payloads read and written.
//!
//! [`Normalise`] is the plugin; the `hookbus-normalise` binary runs it over
//! Redis, `hookbus dev` over the in-memory bus with a [`MemoryRegistry`].
//! The worker keeps no state of its own: everything it decides comes from
//! the message, the registry and the allow-list, so any number of copies
//! may run.

pub mod actions;
pub mod change;
pub mod field;
pub mod github;
pub mod record;
pub mod registry;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use hookbus_bus::{Envelope, HandlerError, Outbox, Plugin};
use hookbus_config::RepositoryList;

pub use registry::{MemoryRegistry, RedisRegistry, RepositoryRegistry};
pub use wire::SyncOperationPayload;

use crate::github::{Inbound, Webhook};
use crate::wire::{ChangePayload, WebhookPayload, CHANGE_KIND, OPERATION_KIND, WEBHOOK_KIND};

/// The queue the plugin reads.
pub const INPUT: &str = "normalise";
/// The queue it writes operations to.
pub const OUTPUT: &str = "reconcile";

/// The normalise stage.
pub struct Normalise {
    /// Installation state; shared by every copy of the worker.
    registry: Arc<dyn RepositoryRegistry>,
    /// `normalise.repositories`: when non-empty, only these sync.
    allowed: RepositoryList,
}

impl Normalise {
    pub fn new(registry: Arc<dyn RepositoryRegistry>, allowed: RepositoryList) -> Self {
        Normalise { registry, allowed }
    }

    async fn webhook(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let payload: WebhookPayload =
            message.payload_as().map_err(|err| HandlerError::permanent(format!("github.webhook payload: {err}")))?;
        let webhook = Webhook {
            event: &payload.event,
            delivery: &payload.delivery,
            received_at: payload.received_at,
            body: &payload.body,
        };
        match github::normalise(&webhook).map_err(HandlerError::permanent)? {
            Inbound::Operation(operation) => self.emit(message, *operation, out).await,
            Inbound::Repositories { enable, disable } => {
                self.registry.enable(&enable, payload.received_at).await.map_err(HandlerError::transient)?;
                self.registry.disable(&disable, payload.received_at).await.map_err(HandlerError::transient)?;
                tracing::info!(
                    trace_id = %message.trace_id,
                    event = %payload.event,
                    enabled = ?enable,
                    disabled = ?disable,
                    "synced repositories changed"
                );
                Ok(())
            }
            Inbound::Skip { action, reason } => {
                let action_label = label(&action);
                metrics::counter!(
                    "hookbus_normalise_skipped_total",
                    "event" => label(&payload.event),
                    "action" => action_label,
                    "reason" => reason.as_str(),
                )
                .increment(1);
                if reason == actions::SkipReason::UnknownAction {
                    tracing::warn!(trace_id = %message.trace_id, event = %payload.event, action = %action,
                        "action not in the normalise table; skipped (add it to docs/pipeline.md)");
                } else {
                    tracing::debug!(trace_id = %message.trace_id, event = %payload.event, action = %action,
                        reason = reason.as_str(), "skipped");
                }
                Ok(())
            }
        }
    }

    async fn change(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let payload: ChangePayload =
            message.payload_as().map_err(|err| HandlerError::permanent(format!("client.change payload: {err}")))?;
        let operation = change::normalise(&payload).map_err(HandlerError::permanent)?;
        self.emit(message, operation, out).await
    }

    /// Marks the operation's repository, then emits it keyed by resource.
    async fn emit(
        &self,
        message: &Envelope,
        mut operation: SyncOperationPayload,
        out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        operation.repository_enabled = self.allowed.allows(&operation.repository)
            && self.registry.is_enabled(&operation.repository).await.map_err(HandlerError::transient)?;
        let direction = match operation.direction {
            wire::Direction::Inbound => "inbound",
            wire::Direction::Outbound => "outbound",
        };
        metrics::counter!("hookbus_normalise_operations_total", "direction" => direction).increment(1);
        tracing::debug!(
            trace_id = %message.trace_id,
            operation = %operation.operation,
            key = %operation.key,
            action = %operation.action,
            repository_enabled = operation.repository_enabled,
            "sync operation"
        );
        out.emit_payload(OUTPUT, OPERATION_KIND, Some(&operation.key), &operation)
            .map_err(|err| HandlerError::permanent(format!("cannot encode sync.operation: {err}")))
    }
}

#[async_trait]
impl Plugin for Normalise {
    fn name(&self) -> &str {
        "normalise"
    }

    fn input(&self) -> &str {
        INPUT
    }

    fn outputs(&self) -> Vec<String> {
        vec![OUTPUT.to_string()]
    }

    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        match message.kind.as_str() {
            WEBHOOK_KIND => self.webhook(message, out).await,
            CHANGE_KIND => self.change(message, out).await,
            other => Err(HandlerError::permanent(format!(
                "normalise reads `{WEBHOOK_KIND}` and `{CHANGE_KIND}` messages, not `{other}`"
            ))),
        }
    }
}

/// A metric label from text a sender chose: bounded in length and alphabet,
/// so a strange payload cannot blow up the series count.
fn label(text: &str) -> String {
    let ok = !text.is_empty()
        && text.len() <= 40
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match (ok, text.is_empty()) {
        (true, _) => text.to_string(),
        (false, true) => "none".to_string(),
        (false, false) => "other".to_string(),
    }
}
