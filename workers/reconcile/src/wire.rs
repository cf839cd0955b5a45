//! Wire types reconcile reads and writes. Readers take only the fields they
//! need and ignore the rest (rolling deploys); internal types are in
//! `book.rs`.

use serde::{Deserialize, Serialize};

/// Kind of normalise's operations, on `reconcile`.
pub const OPERATION_KIND: &str = "sync.operation";
/// Kind of commit's outcomes, on `reconcile`.
pub const OUTCOME_KIND: &str = "sync.outcome";
/// Kind of what reconcile sends to `commit`: the operation, unchanged.
pub const APPLY_KIND: &str = "sync.apply";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The fields of a `sync.operation` (docs/wire-format.md) reconcile decides on.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncOperation {
    pub operation: String,
    pub direction: Direction,
    pub key: String,
    pub repository: String,
    pub repository_enabled: bool,
    pub kind: String,
    pub action: String,
    /// `upsert` or `remove`.
    #[serde(default)]
    pub effect: Option<String>,
    pub updated_at: i64,
    pub content_hash: String,
    #[serde(default)]
    pub delivery: Option<String>,
    pub source: String,
    #[serde(default)]
    pub number: Option<u64>,
    #[serde(default)]
    pub id: Option<u64>,
    /// Inbound: the canonical record (JSON object).
    #[serde(default)]
    pub record: Option<serde_json::Value>,
    /// Outbound: the changed fields.
    #[serde(default)]
    pub changes: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Completed,
    Errored,
}

/// `sync.outcome`: what commit did with an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub operation: String,
    pub key: String,
    pub outcome: OutcomeKind,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub content_hash: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}
