//! What a worker is: a [`Plugin`] with one input queue, a handler, and the
//! messages it emits through its [`Outbox`].

use std::sync::Arc;

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
///
/// The runner gives each of its workers one outbox for all the messages it
/// handles, so a message that emits to a queue it emitted to before costs no
/// allocation beyond the envelope's own.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Stamped on every emitted message (None only before a runner's
    /// worker first [retraces](Outbox::retrace) it).
    trace_id: Option<String>,
    /// Emitted messages by queue, queues in the order first emitted to; a
    /// queue stays listed (with its buffer) after its messages are taken.
    queues: ByQueue,
    len: usize,
}

/// Messages grouped by the queue they go to. Each envelope is put in its
/// `Arc` once, when emitted: from there to the queue (and, in memory, on
/// to the next stage's handler) it moves as a pointer, where a whole
/// envelope would be copied at every hand-over.
pub(crate) type ByQueue = Vec<(String, Vec<Arc<Envelope>>)>;

/// Room for this many messages per queue when [`Outbox::drain_into`] starts
/// a queue's list (a runner's chunk).
const DRAIN_CAPACITY: usize = 64;

impl Outbox {
    pub fn new(trace_id: &str) -> Self {
        Outbox { trace_id: Some(trace_id.to_string()), ..Outbox::default() }
    }

    /// Makes this outbox stamp `trace_id` on what is emitted from now on,
    /// in the trace buffer it already has: a runner's worker reuses one
    /// outbox for every message it handles.
    pub(crate) fn retrace(&mut self, trace_id: &str) {
        match &mut self.trace_id {
            Some(current) => {
                current.clear();
                current.push_str(trace_id);
            }
            None => self.trace_id = Some(trace_id.to_string()),
        }
    }

    /// Emits `envelope` to `queue`, stamped with the input's trace.
    pub fn emit(&mut self, queue: &str, mut envelope: Envelope) {
        if let Some(trace_id) = &self.trace_id {
            envelope.trace_id.clone_from(trace_id);
        }
        let envelope = Arc::new(envelope);
        match self.queues.iter_mut().find(|(q, _)| q == queue) {
            Some((_, list)) => list.push(envelope),
            None => self.queues.push((queue.to_string(), vec![envelope])),
        }
        self.len += 1;
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
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The messages with their queues, in the order emitted per queue.
    pub fn into_messages(self) -> Vec<(String, Envelope)> {
        let mut out = Vec::with_capacity(self.len);
        for (queue, list) in self.queues {
            out.extend(list.into_iter().map(|envelope| (queue.clone(), Arc::unwrap_or_clone(envelope))));
        }
        out
    }

    /// Forgets the messages emitted so far (the handler failed).
    pub(crate) fn clear(&mut self) {
        for (_, list) in &mut self.queues {
            list.clear();
        }
        self.len = 0;
    }

    /// Moves the messages into `out`, queue by queue.
    pub(crate) fn drain_into(&mut self, out: &mut ByQueue) {
        for (queue, list) in &mut self.queues {
            if list.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(q, _)| q == queue) {
                Some((_, all)) => all.append(list),
                None => {
                    // Sized for a runner's chunk of messages, so it is not
                    // regrown as the chunk fills; the outbox keeps its own
                    // buffer for the next message.
                    let mut all = Vec::with_capacity(list.len().max(DRAIN_CAPACITY));
                    all.append(list);
                    out.push((queue.clone(), all));
                }
            }
        }
        self.len = 0;
    }
}
