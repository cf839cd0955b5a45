//! hookbus reconcile: the timestamp-based concurrency control between
//! normalise and commit-to-git.
//!
//! - `book.rs` — one resource's book and the rules (pure, unit-tested);
//! - `store.rs` — where books and operation records live (Redis, memory);
//! - `tiebreak.rs` — same-second ties settled by the GitHub API;
//! - `wire.rs` — the payloads read and written.
//!
//! Messages on `reconcile` are keyed by resource, so the bus hands this
//! plugin one message per resource at a time, across every process; it
//! loads the resource's book, applies the message, and saves book and
//! records in one script (retrying on a version conflict), then releases
//! operations to `commit`. Commit answers with `sync.outcome` on
//! `reconcile`, which finishes the operation and releases the next.

pub mod book;
pub mod store;
pub mod tiebreak;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use hookbus_bus::envelope::now_ms;
use hookbus_bus::{Envelope, HandlerError, Outbox, Plugin, SetupError};
use hookbus_config::{ConfigError, Settings};

use crate::book::{Book, Change, OperationState};
use crate::store::{OperationStore, RedisStore};
use crate::tiebreak::{GitHubTieBreaker, LaterArrivalWins, TieBreaker};
use crate::wire::{Outcome, OutcomeKind, SyncOperation, APPLY_KIND, OPERATION_KIND, OUTCOME_KIND};

/// The queue reconcile consumes.
pub const QUEUE: &str = "reconcile";
/// Where released operations go.
pub const COMMIT_QUEUE: &str = "commit";
/// Saves retried on a version conflict before giving the message back.
const SAVE_TRIES: usize = 8;

/// The reconcile plugin.
pub struct Reconcile {
    store: Arc<dyn OperationStore>,
    ties: Arc<dyn TieBreaker>,
}

impl Reconcile {
    pub fn new(store: Arc<dyn OperationStore>, ties: Arc<dyn TieBreaker>) -> Self {
        Reconcile { store, ties }
    }

    /// As the `hookbus-reconcile` binary wires it: records in Redis, ties
    /// to GitHub when credentials are configured.
    pub fn from_settings(settings: &Settings) -> Result<Self, SetupError> {
        let store = RedisStore::from_settings(settings).map_err(SetupError::failed)?;
        Ok(Self::new(Arc::new(store), tie_breaker(settings)?))
    }

    pub fn store(&self) -> Arc<dyn OperationStore> {
        self.store.clone()
    }

    async fn on_operation(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let op: SyncOperation = message.payload_as()?;
        for _ in 0..SAVE_TRIES {
            let mut book = self.store.load(&op.key).await.map_err(HandlerError::transient)?;
            if !book.knows(&op.operation)
                && self.store.operation(&op.operation).await.map_err(HandlerError::transient)?.is_some()
            {
                // Seen long ago (the book keeps only recent ids): a redelivery.
                let change = book.resend();
                if self.commit_change(&op.key, &book, change, out).await? {
                    return Ok(());
                }
                continue;
            }
            let tie = match book.tie_for(&op) {
                Some(tie) => {
                    let verdict = self.ties.settle(&op).await.map_err(HandlerError::transient)?;
                    tracing::info!(operation = %op.operation, known = %tie.known, ?verdict, "same-second tie settled");
                    Some(verdict)
                }
                None => None,
            };
            let change = book.apply_operation(&op, &message.payload, tie, now_ms());
            if self.commit_change(&op.key, &book, change, out).await? {
                return Ok(());
            }
        }
        Err(HandlerError::transient(format!("book of {} kept changing under us", op.key)))
    }

    async fn on_outcome(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let outcome: Outcome = message.payload_as()?;
        for _ in 0..SAVE_TRIES {
            let mut book = self.store.load(&outcome.key).await.map_err(HandlerError::transient)?;
            let now = now_ms();
            let mut change = book.apply_outcome(&outcome, now);
            if change.records.is_empty() && outcome.outcome == OutcomeKind::Completed {
                // Not the processing one: perhaps an errored operation whose
                // dead letter was retried and went through.
                let stored = self.store.operation(&outcome.operation).await.map_err(HandlerError::transient)?;
                if let Some(amended) = stored.and_then(|record| book.complete_errored(record, &outcome, now)) {
                    change.records.push(amended);
                }
            }
            if self.commit_change(&outcome.key, &book, change, out).await? {
                return Ok(());
            }
        }
        Err(HandlerError::transient(format!("book of {} kept changing under us", outcome.key)))
    }

    /// Saves the book and records; on success emits the released
    /// operations. False when the book changed meanwhile.
    async fn commit_change(
        &self,
        key: &str,
        book: &Book,
        change: Change,
        out: &mut Outbox,
    ) -> Result<bool, HandlerError> {
        if !change.records.is_empty() {
            let saved = self.store.save(key, book, &change.records).await.map_err(HandlerError::transient)?;
            if !saved {
                return Ok(false);
            }
        }
        for record in &change.records {
            metrics::counter!("hookbus_reconcile_operations_total", "state" => record.state.as_str()).increment(1);
            match record.state {
                OperationState::Errored => {
                    tracing::warn!(operation = %record.id, key, reason = ?record.reason, "operation errored")
                }
                state => tracing::info!(operation = %record.id, key, state = state.as_str(),
                    note = record.history.last().map(|t| t.note.as_str()).unwrap_or(""), "operation"),
            }
        }
        for live in change.release {
            out.emit(COMMIT_QUEUE, Envelope::new(APPLY_KIND, live.payload.into()).keyed(key));
        }
        Ok(true)
    }
}

/// GitHub when credentials are configured (a token or the App's
/// installation), otherwise the later arrival wins.
/// An App key that cannot sign is bad configuration.
pub fn tie_breaker(settings: &Settings) -> Result<Arc<dyn TieBreaker>, ConfigError> {
    let Some(credentials) = hookbus_github::Credentials::from_settings(&settings.github)? else {
        return Ok(Arc::new(LaterArrivalWins));
    };
    Ok(match GitHubTieBreaker::new(&settings.github.api_url, &credentials) {
        Ok(github) => Arc::new(github),
        Err(err) => {
            tracing::warn!(error = %err, "cannot use the GitHub API for ties; the later arrival wins");
            Arc::new(LaterArrivalWins)
        }
    })
}

#[async_trait]
impl Plugin for Reconcile {
    fn name(&self) -> &str {
        "reconcile"
    }

    fn input(&self) -> &str {
        QUEUE
    }

    fn outputs(&self) -> Vec<String> {
        vec![COMMIT_QUEUE.to_string()]
    }

    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        match message.kind.as_str() {
            OPERATION_KIND => self.on_operation(message, out).await,
            OUTCOME_KIND => self.on_outcome(message, out).await,
            other => Err(HandlerError::permanent(format!(
                "reconcile handles {OPERATION_KIND} and {OUTCOME_KIND}, not {other}"
            ))),
        }
    }
}
