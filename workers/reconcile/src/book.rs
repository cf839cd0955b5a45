//! The book of one resource and the rules that change it.
//!
//! Everything here is pure: [`Book::apply_operation`] and
//! [`Book::apply_outcome`] take the current book and a message and return
//! what changes (records to write, messages to send). The plugin loads the
//! book, applies, and saves it in one optimistic transaction; the bus's
//! per-key ordering already makes reconcile handle one message per resource
//! at a time, the version check covers the rare overlap after a consumer was
//! declared dead.
//!
//! The rules (SPEC §6 "reconcile"):
//! - an operation older than what is applied, or than a newer known one, is
//!   `dropped` (`dropped_for`);
//! - one equal in `updated_at` and content to a known one is `duplicate`
//!   (`duplicate_of`); so is the echo of an outbound change coming back as a
//!   webhook;
//! - a newer one cancels older `queued` ones (`canceled_by`);
//! - at most one is `processing`; when it finishes the oldest queued one is
//!   released;
//! - a tie (same `updated_at`, different content) goes to what GitHub says
//!   now when a token is configured, otherwise to the later arrival.

use serde::{Deserialize, Serialize};

use crate::wire::{Direction, Outcome, OutcomeKind, SyncOperation};

/// States of an operation (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Queued,
    Processing,
    Completed,
    Errored,
    Canceled,
    Dropped,
    Duplicate,
    Disabled,
}

impl OperationState {
    pub fn is_final(self) -> bool {
        !matches!(self, OperationState::Queued | OperationState::Processing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Queued => "queued",
            OperationState::Processing => "processing",
            OperationState::Completed => "completed",
            OperationState::Errored => "errored",
            OperationState::Canceled => "canceled",
            OperationState::Dropped => "dropped",
            OperationState::Duplicate => "duplicate",
            OperationState::Disabled => "disabled",
        }
    }
}

/// One state change, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: OperationState,
    /// ms since epoch.
    pub at: i64,
    /// Why, in words ("newer operation gh-… arrived").
    pub note: String,
}

/// What reconcile keeps about one operation (the audit trail of SPEC §6).
/// Stored as JSON, so `redis-cli GET` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub id: String,
    /// Resource key.
    pub key: String,
    pub direction: Direction,
    pub action: String,
    pub source: String,
    pub delivery: Option<String>,
    pub updated_at: i64,
    pub content_hash: String,
    pub state: OperationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canceled_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// The commit that applied it, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Why it errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When reconcile first saw it (ms); also orders arrivals for ties.
    pub arrived_at: i64,
    pub history: Vec<Transition>,
}

impl OperationRecord {
    fn new(op: &SyncOperation, now: i64) -> Self {
        OperationRecord {
            id: op.operation.clone(),
            key: op.key.clone(),
            direction: op.direction,
            action: op.action.clone(),
            source: op.source.clone(),
            delivery: op.delivery.clone(),
            updated_at: op.updated_at,
            content_hash: op.content_hash.clone(),
            state: OperationState::Queued,
            canceled_by: None,
            dropped_for: None,
            duplicate_of: None,
            commit: None,
            reason: None,
            arrived_at: now,
            history: Vec::new(),
        }
    }

    fn enter(&mut self, state: OperationState, at: i64, note: impl Into<String>) {
        self.state = state;
        self.history.push(Transition { state, at, note: note.into() });
    }
}

/// What the resource's file last became, and by which operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub operation: String,
    pub updated_at: i64,
    pub content_hash: String,
    pub direction: Direction,
    /// For an outbound operation: the fields it changed, so that its echo
    /// (GitHub's webhook about our own write-back) is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<serde_json::Map<String, serde_json::Value>>,
    /// The echo of this outbound operation was already seen.
    #[serde(default)]
    pub echoed: bool,
}

impl Applied {
    /// `record`'s operation as the applied one; an outbound operation with
    /// the fields it changed, and how new its echo was if one came.
    fn by(
        record: &OperationRecord,
        changes: Option<serde_json::Map<String, serde_json::Value>>,
        echo_updated_at: Option<i64>,
    ) -> Self {
        Applied {
            operation: record.id.clone(),
            updated_at: record.updated_at.max(echo_updated_at.unwrap_or(i64::MIN)),
            content_hash: record.content_hash.clone(),
            direction: record.direction,
            changes,
            echoed: echo_updated_at.is_some(),
        }
    }
}

/// An operation waiting or running, with the message to send to commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Live {
    pub record: OperationRecord,
    /// The `sync.operation` payload, forwarded to commit unchanged.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<serde_json::Map<String, serde_json::Value>>,
    /// For an outbound operation: the `updated_at` of its echo, once seen
    /// while it was still processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_updated_at: Option<i64>,
}

/// Everything reconcile knows about one resource that decides what happens next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    /// Bumped on every save; the optimistic-concurrency check.
    pub version: u64,
    pub applied: Option<Applied>,
    /// The operation commit is working on (at most one).
    pub processing: Option<Live>,
    /// Operations waiting for `processing` to finish, oldest `updated_at` first.
    pub queued: Vec<Live>,
    /// Recently finished operation ids (bounded), so a redelivered message
    /// is recognised without reading records.
    pub finished: Vec<String>,
}

/// How many finished ids a book remembers.
const FINISHED_KEPT: usize = 64;

/// The result of applying a message.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    /// Records to write (new or changed).
    pub records: Vec<OperationRecord>,
    /// Operations released to commit: (key, payload).
    pub release: Vec<Live>,
}

/// How a tie (same `updated_at`, different content) was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TieVerdict {
    /// The new operation has what GitHub has now (or, without a token, it
    /// arrived later): it wins.
    NewWins,
    /// The known operation has what GitHub has now: the new one is dropped.
    KnownWins,
}

/// A tie that needs settling before the operation can be decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Tie {
    pub known: String,
}

impl Book {
    /// The known operation (applied, processing or queued) an operation with
    /// this `updated_at` and different content ties with, if any.
    pub fn tie_for(&self, op: &SyncOperation) -> Option<Tie> {
        if self.knows(&op.operation) {
            return None;
        }
        let live = self
            .processing
            .iter()
            .chain(self.queued.iter())
            .map(|l| (&l.record.id, l.record.updated_at, &l.record.content_hash));
        let applied = self.applied.iter().map(|a| (&a.operation, a.updated_at, &a.content_hash));
        live.chain(applied)
            .find(|(_, at, hash)| *at == op.updated_at && **hash != op.content_hash)
            .map(|(id, _, _)| Tie { known: id.clone() })
    }

    /// Whether this book still remembers operation `id` (live, or among the
    /// recently finished). Older ones are found through the store's records.
    pub fn knows(&self, id: &str) -> bool {
        self.finished.iter().any(|f| f == id)
            || self.processing.as_ref().is_some_and(|l| l.record.id == id)
            || self.queued.iter().any(|l| l.record.id == id)
    }

    fn finish(&mut self, id: &str) {
        self.finished.push(id.to_string());
        if self.finished.len() > FINISHED_KEPT {
            let excess = self.finished.len() - FINISHED_KEPT;
            self.finished.drain(..excess);
        }
    }

    /// For a redelivered operation the book no longer remembers (its record
    /// says it was seen): change nothing, re-send what is processing.
    pub fn resend(&self) -> Change {
        Change { records: Vec::new(), release: self.processing.iter().cloned().collect() }
    }

    /// Applies a `sync.operation`. `tie` is how a tie found by
    /// [`Book::tie_for`] was settled (ignored when there is none).
    pub fn apply_operation(&mut self, op: &SyncOperation, payload: &[u8], tie: Option<TieVerdict>, now: i64) -> Change {
        let mut change = Change::default();
        if self.knows(&op.operation) {
            // A redelivery: what it caused is recorded. Re-send what is
            // processing, in case the first delivery died before sending it
            // (commit is idempotent per operation).
            change.release.extend(self.processing.clone());
            return change;
        }
        let mut record = OperationRecord::new(op, now);
        record.enter(OperationState::Queued, now, format!("from {}", op.source));

        let finish = |book: &mut Book, change: &mut Change, mut record: OperationRecord, state, note: String| {
            record.enter(state, now, note);
            book.finish(&record.id);
            change.records.push(record);
        };

        if !op.repository_enabled {
            let note = format!("repository {} is not synced", op.repository);
            finish(self, &mut change, record, OperationState::Disabled, note);
            return change;
        }

        // Same time, same content: something we already have.
        let same = self
            .processing
            .iter()
            .chain(self.queued.iter())
            .map(|l| (&l.record.id, l.record.updated_at, &l.record.content_hash))
            .chain(self.applied.iter().map(|a| (&a.operation, a.updated_at, &a.content_hash)))
            .find(|(_, at, hash)| *at == op.updated_at && **hash == op.content_hash)
            .map(|(id, _, _)| id.clone());
        if let Some(of) = same {
            record.duplicate_of = Some(of.clone());
            finish(self, &mut change, record, OperationState::Duplicate, format!("same time and content as {of}"));
            return change;
        }

        // Our own outbound change, coming back from GitHub as a webhook.
        if let Some(outbound) = self.echo_source(op) {
            record.duplicate_of = Some(outbound.clone());
            if let Some(applied) = self.applied.as_mut().filter(|a| a.operation == outbound) {
                applied.echoed = true;
                applied.updated_at = applied.updated_at.max(op.updated_at);
            }
            if let Some(live) = self.processing.as_mut().filter(|l| l.record.id == outbound) {
                live.echo_updated_at = Some(op.updated_at);
            }
            finish(self, &mut change, record, OperationState::Duplicate, format!("echo of outbound {outbound}"));
            return change;
        }

        // Older than what is applied, or than a newer known operation.
        let newer_known = self
            .applied
            .iter()
            .map(|a| (&a.operation, a.updated_at))
            .chain(self.processing.iter().chain(self.queued.iter()).map(|l| (&l.record.id, l.record.updated_at)))
            .filter(|(_, at)| *at > op.updated_at)
            .max_by_key(|(_, at)| *at)
            .map(|(id, _)| id.clone());
        if let Some(newer) = newer_known {
            record.dropped_for = Some(newer.clone());
            finish(self, &mut change, record, OperationState::Dropped, format!("older than {newer}"));
            return change;
        }

        // A tie that GitHub (or arrival order) gave to the known operation.
        if let (Some(Tie { known }), Some(TieVerdict::KnownWins)) = (self.tie_for(op), tie) {
            record.dropped_for = Some(known.clone());
            finish(
                self,
                &mut change,
                record,
                OperationState::Dropped,
                format!("same time as {known}; GitHub has {known}'s content"),
            );
            return change;
        }

        // It wins: older (or tied) queued operations give way.
        let (canceled, kept): (Vec<Live>, Vec<Live>) =
            std::mem::take(&mut self.queued).into_iter().partition(|l| l.record.updated_at <= op.updated_at);
        self.queued = kept;
        for live in canceled {
            let mut old = live.record;
            old.canceled_by = Some(op.operation.clone());
            finish(self, &mut change, old, OperationState::Canceled, format!("newer operation {}", op.operation));
        }

        let live = Live { record, payload: payload.to_vec(), changes: op.changes.clone(), echo_updated_at: None };
        if self.processing.is_none() {
            let live = self.start(live, now);
            change.records.push(live.record.clone());
            change.release.push(live);
        } else {
            change.records.push(live.record.clone());
            let at = self.queued.partition_point(|q| q.record.updated_at <= live.record.updated_at);
            self.queued.insert(at, live);
        }
        change
    }

    fn start(&mut self, mut live: Live, now: i64) -> Live {
        live.record.enter(OperationState::Processing, now, "released to commit");
        self.processing = Some(live.clone());
        live
    }

    /// The outbound operation `op` is the echo of: the last applied
    /// operation was outbound, not echoed yet, and every field it changed
    /// has the same value in `op`'s record.
    fn echo_source(&self, op: &SyncOperation) -> Option<String> {
        if op.direction != Direction::Inbound {
            return None;
        }
        let record = op.record.as_ref()?.as_object()?;
        let candidates = self
            .processing
            .iter()
            .filter(|l| l.record.direction == Direction::Outbound)
            .map(|l| (&l.record.id, l.changes.as_ref(), l.record.updated_at, l.echo_updated_at.is_some()))
            .chain(
                self.applied
                    .iter()
                    .filter(|a| a.direction == Direction::Outbound)
                    .map(|a| (&a.operation, a.changes.as_ref(), a.updated_at, a.echoed)),
            );
        for (id, changes, _, echoed) in candidates {
            let Some(changes) = changes.filter(|c| !c.is_empty()) else { continue };
            if echoed {
                continue;
            }
            if changes.iter().all(|(field, value)| record.get(field).is_some_and(|have| same_value(have, value))) {
                return Some(id.clone());
            }
        }
        None
    }

    /// Applies commit's outcome for the processing operation and releases
    /// the next one.
    pub fn apply_outcome(&mut self, outcome: &Outcome, now: i64) -> Change {
        let mut change = Change::default();
        if self.processing.as_ref().is_none_or(|l| l.record.id != outcome.operation) {
            // Not the one processing: a redelivered outcome (already
            // applied — and what it released may never have reached commit,
            // if we died between saving and sending) or one for an operation
            // this book no longer holds. Re-send what is processing.
            change.release.extend(self.processing.clone());
            return change;
        }
        let Some(live) = self.processing.take() else { return change };
        let mut record = live.record;
        match outcome.outcome {
            OutcomeKind::Completed => {
                record.commit.clone_from(&outcome.commit);
                let note = match &outcome.commit {
                    Some(sha) => format!("committed {sha}"),
                    None => "no change to the file".to_string(),
                };
                record.enter(OperationState::Completed, now, note);
                self.applied = Some(Applied::by(&record, live.changes.clone(), live.echo_updated_at));
            }
            OutcomeKind::Errored => {
                record.reason.clone_from(&outcome.reason);
                let note = outcome.reason.clone().unwrap_or_else(|| "commit gave up".into());
                record.enter(OperationState::Errored, now, note);
            }
        }
        self.finish(&record.id);
        change.records.push(record);

        // Release the next one, oldest first; anything that became stale
        // while it waited is dropped.
        while !self.queued.is_empty() {
            let next = self.queued.remove(0);
            let stale =
                self.applied.as_ref().filter(|a| a.updated_at > next.record.updated_at).map(|a| a.operation.clone());
            if let Some(newer) = stale {
                let mut old = next.record;
                old.dropped_for = Some(newer.clone());
                old.enter(OperationState::Dropped, now, format!("older than {newer}"));
                self.finish(&old.id);
                change.records.push(old);
                continue;
            }
            let live = self.start(next, now);
            change.records.push(live.record.clone());
            change.release.push(live);
            break;
        }
        change
    }

    /// Commit's `Completed` for an operation that had ended `errored`: its
    /// dead letter was retried (by an operator, or the bus's re-drive
    /// sweep) and went through. `record` is the operation's stored record;
    /// the amended one is returned to be saved, and when a commit was made
    /// and the operation is the newest to reach the file, it becomes the
    /// applied one, so that older operations arriving later are dropped.
    /// `None` when there is nothing to amend (not errored, not this
    /// operation, not completed).
    pub fn complete_errored(
        &mut self,
        mut record: OperationRecord,
        outcome: &Outcome,
        now: i64,
    ) -> Option<OperationRecord> {
        if record.state != OperationState::Errored
            || record.id != outcome.operation
            || outcome.outcome != OutcomeKind::Completed
        {
            return None;
        }
        record.commit.clone_from(&outcome.commit);
        let what = match (&outcome.commit, &outcome.reason) {
            (Some(sha), _) => format!("committed {sha}"),
            (None, Some(reason)) => format!("no commit: {reason}"),
            (None, None) => "no change to the file".to_string(),
        };
        record.enter(OperationState::Completed, now, format!("completed after its dead letter was retried: {what}"));
        if outcome.commit.is_some() && self.applied.as_ref().is_none_or(|a| a.updated_at <= record.updated_at) {
            self.applied = Some(Applied::by(&record, None, None));
        }
        Some(record)
    }
}

/// Equality for echo detection: lists compare as sets (GitHub and clients
/// order labels differently).
fn same_value(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (have.as_array(), want.as_array()) {
        (Some(a), Some(b)) => {
            let mut a: Vec<String> = a.iter().map(|v| v.to_string()).collect();
            let mut b: Vec<String> = b.iter().map(|v| v.to_string()).collect();
            a.sort();
            b.sort();
            a == b
        }
        _ => have == want,
    }
}
