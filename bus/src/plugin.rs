//! What a worker is: a [`Plugin`] with one input queue, a handler, and the
//! messages it emits through its [`Outbox`].

use async_trait::async_trait;
use serde::Serialize;

use crate::envelope::{Envelope, PayloadError};
use crate::error::HandlerError;

/// One stage of the pipeline. The runner calls [`Plugin::handle`] once per
/// message, possibly concurrently; a plugin cannot tell which backend it
/// runs on.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Name for logs and metrics.
    fn name(&self) -> &str;

    /// The queue it consumes.
    fn input(&self) -> &str;

    /// The queues it may emit to (for wiring and documentation).
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Handles one message. What it put in `out` is enqueued only if it
    /// returns `Ok`, before the message is acknowledged.
    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError>;

    /// Called when a message goes dead (permanent failure, or its attempts
    /// ran out), with the dead letter's reason. What it puts in `out` is
    /// enqueued together with the dead letter — so a stage that someone
    /// waits on (reconcile waits on commit) can report the failure.
    fn on_dead(&self, message: &Envelope, reason: &str, out: &mut Outbox) {
        let _ = (message, reason, out);
    }
}

/// Messages a handler emits. Each carries the input's `trace_id`.
#[derive(Debug, Default)]
pub struct Outbox {
    trace_id: String,
    messages: Vec<(String, Envelope)>,
}

impl Outbox {
    pub fn new(trace_id: &str) -> Self {
        Outbox { trace_id: trace_id.to_string(), messages: Vec::new() }
    }

    /// Emits `envelope` to `queue`, stamped with the input's trace.
    pub fn emit(&mut self, queue: &str, mut envelope: Envelope) {
        envelope.trace_id.clone_from(&self.trace_id);
        self.messages.push((queue.to_string(), envelope));
    }

    /// Emits a new message of `kind` with `payload`, optionally keyed.
    pub fn emit_payload<T: Serialize>(
        &mut self,
        queue: &str,
        kind: &str,
        key: Option<&str>,
        payload: &T,
    ) -> Result<(), PayloadError> {
        let mut envelope = Envelope::with_payload(kind, payload)?;
        envelope.key = key.map(str::to_owned);
        self.emit(queue, envelope);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn into_messages(self) -> Vec<(String, Envelope)> {
        self.messages
    }
}
