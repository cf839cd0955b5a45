//! Wire types: what notify reads (`record.synced`, `bus.dead`), the messages
//! it sends itself on `notify` (`notify.delivery`, `github.writeback`,
//! `notify.alert_flush`), and the event subscribers receive. Documented in
//! `docs/wire-format.md` and `docs/events.md`; readers ignore unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// commit-to-git's message: a record now in git, or an outbound change.
pub const SYNCED_KIND: &str = "record.synced";
/// One event for one subscriber.
pub const DELIVERY_KIND: &str = "notify.delivery";
/// One outbound change to write back to GitHub.
pub const WRITEBACK_KIND: &str = "github.writeback";
/// Reports the dead-letter notices folded during an alert window once it closes.
pub const ALERT_FLUSH_KIND: &str = "notify.alert_flush";

/// `record.synced` (docs/wire-format.md), as far as notify reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Synced {
    pub operation: String,
    pub key: String,
    pub repository: String,
    pub kind: String,
    pub action: String,
    pub direction: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub record: Option<Value>,
    #[serde(default)]
    pub actor: Option<Actor>,
    #[serde(default)]
    pub delivery: Option<String>,
    #[serde(default)]
    pub updated_at: Option<i64>,
    #[serde(default)]
    pub number: Option<u64>,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub changes: Option<BTreeMap<String, Value>>,
}

impl Synced {
    pub fn is_outbound(&self) -> bool {
        self.direction == "outbound"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub login: String,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// The JSON event POSTed to subscribers and published on `<prefix>:events`
/// (docs/events.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `record.synced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The operation id (`Hookbus-Operation` trailer of the commit).
    pub operation: String,
    /// Resource key, e.g. `github:octo/repo:issue:12`.
    pub resource: String,
    pub repository: String,
    pub kind: String,
    pub action: String,
    pub direction: String,
    pub source: Option<String>,
    pub commit: Option<String>,
    pub path: Option<String>,
    pub record: Option<Value>,
    pub actor: Option<Actor>,
    /// GitHub's `X-GitHub-Delivery`; null for outbound changes.
    pub delivery: Option<String>,
    /// Ms since epoch.
    pub updated_at: Option<i64>,
    pub number: Option<u64>,
    pub id: Option<u64>,
    /// Outbound: the client's changes, by record field name.
    pub changes: Option<BTreeMap<String, Value>>,
}

impl From<&Synced> for Event {
    fn from(s: &Synced) -> Self {
        Event {
            event_type: SYNCED_KIND.into(),
            operation: s.operation.clone(),
            resource: s.key.clone(),
            repository: s.repository.clone(),
            kind: s.kind.clone(),
            action: s.action.clone(),
            direction: s.direction.clone(),
            source: s.source.clone(),
            commit: s.commit.clone(),
            path: s.path.clone(),
            record: s.record.clone(),
            actor: s.actor.clone(),
            delivery: s.delivery.clone(),
            updated_at: s.updated_at,
            number: s.number,
            id: s.id,
            changes: s.changes.clone(),
        }
    }
}

/// `notify.delivery`: one event for one subscriber. Carries the exact body,
/// so every retry sends (and signs) the same bytes, and the subscriber's
/// name, never its secret (which stays in configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryPayload {
    /// `notify.subscribers[].name`.
    pub subscriber: String,
    /// `X-Hookbus-Delivery`: derived from (operation, subscriber), so the
    /// same across retries and redeliveries.
    pub delivery: String,
    /// `X-Hookbus-Event`.
    pub event: String,
    pub operation: String,
    pub resource: String,
    /// The JSON event, as sent.
    pub body: String,
}

/// The `X-Hookbus-Delivery` id of `operation` for `subscriber`: a UUID-shaped
/// digest, stable however often the operation is handled.
pub fn delivery_id(operation: &str, subscriber: &str) -> String {
    let digest = Sha256::digest(format!("{operation}\n{subscriber}").as_bytes());
    let h = hex::encode(&digest[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `github.writeback`: an outbound change to apply on GitHub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WritebackPayload {
    pub operation: String,
    pub resource: String,
    /// `owner/name`.
    pub repository: String,
    /// `issue`, `pull_request`, `comment` or `release`.
    pub kind: String,
    /// The client's action: `create`, `update` or `delete`.
    pub action: String,
    /// Issue or pull request number (for a comment: the issue it is on).
    pub number: Option<u64>,
    /// Comment or release id.
    pub id: Option<u64>,
    /// Record field names to values.
    #[serde(default)]
    pub changes: BTreeMap<String, Value>,
}

/// `notify.alert_flush`: once `queue`'s alert window closes, report what
/// was folded into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertFlushPayload {
    pub queue: String,
}
