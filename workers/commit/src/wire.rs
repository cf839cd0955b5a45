//! Wire types: the `sync.apply` payload read from `commit`, and the two
//! payloads written (`sync.outcome` to reconcile, `record.synced` to notify).
//! Documented in `docs/wire-format.md`. Readers ignore unknown fields, so the
//! structs here name only what this stage uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kind of the messages this stage consumes.
pub const APPLY_KIND: &str = "sync.apply";
/// Kind of what it tells reconcile.
pub const OUTCOME_KIND: &str = "sync.outcome";
/// Kind of what it tells notify.
pub const SYNCED_KIND: &str = "record.synced";

/// `sync.apply`: the `sync.operation` payload normalise emitted, forwarded
/// unchanged by reconcile once the operation may run.
#[derive(Debug, Clone, Deserialize)]
pub struct ApplyPayload {
    pub operation: String,
    pub direction: Direction,
    pub key: String,
    /// `owner/name`.
    pub repository: String,
    #[serde(default = "enabled")]
    pub repository_enabled: bool,
    pub kind: ResourceKind,
    pub action: String,
    pub effect: Effect,
    pub updated_at: i64,
    pub actor: Actor,
    pub delivery: Option<String>,
    pub source: String,
    pub number: Option<u64>,
    pub id: Option<u64>,
    /// Inbound: the whole record; written as the file's content.
    #[serde(default)]
    pub record: Option<serde_json::Value>,
    /// Outbound: the fields to set on the current file.
    #[serde(default)]
    pub changes: Option<BTreeMap<String, serde_json::Value>>,
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Issue,
    PullRequest,
    Comment,
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Upsert,
    Remove,
}

/// Who made the change: the commit's author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub login: String,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// Just enough of a payload to report a dead message to reconcile, when the
/// full payload may be what failed to decode.
#[derive(Debug, Deserialize)]
pub struct OperationRef {
    pub operation: String,
}

/// `sync.outcome` on `reconcile`: how an operation ended here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomePayload {
    pub operation: String,
    pub key: String,
    pub outcome: Outcome,
    /// The commit that carries the operation; nil for a no-op.
    pub commit: Option<String>,
    /// The record's file; nil when the operation has none (an outbound create).
    pub path: Option<String>,
    /// SHA-256 (hex) of the file's bytes now in git; nil when there is no file.
    pub content_hash: Option<String>,
    /// Why it was a no-op, or why it errored.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Errored,
}

/// `record.synced` on `notify`: a record now in git (or an outbound change
/// to write back to GitHub).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncedPayload {
    pub operation: String,
    pub key: String,
    pub repository: String,
    pub kind: ResourceKind,
    pub action: String,
    pub direction: Direction,
    pub source: String,
    pub commit: Option<String>,
    pub path: Option<String>,
    /// The file's content now; nil when removed or absent.
    pub record: Option<serde_json::Value>,
    pub actor: Actor,
    pub delivery: Option<String>,
    pub updated_at: i64,
    /// Issue or pull request number (for a comment, the issue it is on).
    pub number: Option<u64>,
    /// Comment or release id.
    pub id: Option<u64>,
    /// Outbound: the client's changes, for the write-back to GitHub.
    pub changes: Option<BTreeMap<String, serde_json::Value>>,
}
