//! Wire types: the payloads the normaliser reads and the one it writes.
//! Documented in `docs/wire-format.md`; internal types convert at this edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::actions::Effect;
use crate::record::Record;

/// Kind of the gateway's webhook message.
pub const WEBHOOK_KIND: &str = "github.webhook";
/// Kind of the gateway's client-change message.
pub const CHANGE_KIND: &str = "client.change";
/// Kind of what the normaliser emits.
pub const OPERATION_KIND: &str = "sync.operation";

/// `github.webhook` (SPEC §3).
#[derive(Debug, Deserialize)]
pub struct WebhookPayload {
    pub event: String,
    pub delivery: String,
    /// When the gateway accepted it, ms.
    pub received_at: i64,
    /// The request body as received. Accepts MessagePack bin or str, so a
    /// producer in a language without a bin type can write one.
    pub body: serde_bytes::ByteBuf,
}

/// `client.change`: written by the gateway's `/api/v1/changes`.
#[derive(Debug, Deserialize)]
pub struct ChangePayload {
    /// The operation id the client was given.
    pub operation: String,
    /// When hookbus accepted the change, ms.
    pub received_at: i64,
    /// The request body (docs/api.md), JSON carried as a MessagePack map.
    pub change: serde_json::Value,
}

/// `sync.operation`, the normaliser's output on `reconcile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncOperationPayload {
    /// Operation id. Inbound: `gh-` and 32 hex digits derived from the
    /// delivery and the resource key, so a redelivered webhook has the same
    /// id. Outbound: the id the client was given.
    pub operation: String,
    pub direction: Direction,
    /// Resource key, also the envelope's `key`.
    pub key: String,
    /// `owner/name`, lowercase.
    pub repository: String,
    /// False when the repository is not synced: reconcile records the
    /// operation as `disabled` and applies nothing.
    pub repository_enabled: bool,
    pub kind: ResourceKind,
    /// GitHub's action (`edited`, `closed`, ...) or the client's (`create`,
    /// `update`, `delete`).
    pub action: String,
    pub effect: Effect,
    /// Ms since epoch; what reconcile orders by.
    pub updated_at: i64,
    /// Where `updated_at` came from.
    pub updated_at_source: TimeSource,
    pub actor: Actor,
    /// `X-GitHub-Delivery`; nil for outbound.
    pub delivery: Option<String>,
    /// `github.webhook` event name, or `client.change`.
    pub source: String,
    /// Issue or pull request number (for a comment: the issue it is on).
    pub number: Option<u64>,
    /// Comment or release id.
    pub id: Option<u64>,
    /// SHA-256 (hex) of the record's file bytes (inbound) or of the changes
    /// in the same canonical form (outbound).
    pub content_hash: String,
    /// Inbound: the whole record as GitHub sent it.
    pub record: Option<Record>,
    /// Outbound: the fields the client changes, under the record's names.
    pub changes: Option<BTreeMap<String, serde_json::Value>>,
    /// When the gateway accepted the webhook or change, ms.
    pub received_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From GitHub to git.
    Inbound,
    /// From a client, to be written back to GitHub.
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
pub enum TimeSource {
    /// The resource's own `updated_at`.
    Resource,
    /// The payload has no `updated_at` (releases): the gateway's receipt time.
    Received,
    /// Outbound: when hookbus accepted the client's change.
    Accepted,
}

/// Who made the change; commit-to-git authors the commit as them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub login: String,
    /// GitHub user id; nil for client changes.
    pub id: Option<u64>,
    pub name: Option<String>,
    pub email: Option<String>,
}
