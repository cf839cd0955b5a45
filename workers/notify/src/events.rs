//! The events channel: every event is also published on `<prefix>:events`
//! (Redis pub/sub, at most once: for live listeners, not a durable feed).

use async_trait::async_trait;
use hookbus_bus::redis::RedisConnection;
use tokio::sync::broadcast;

use crate::error::NotifyError;

#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes one event (JSON text).
    async fn publish(&self, event: &str) -> Result<(), NotifyError>;
}

/// `PUBLISH <prefix>:events <json>`.
pub struct RedisEvents {
    conn: RedisConnection,
    channel: String,
}

impl RedisEvents {
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        RedisEvents { conn, channel: channel(prefix) }
    }
}

/// The channel name for a key prefix.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:events")
}

#[async_trait]
impl EventPublisher for RedisEvents {
    async fn publish(&self, event: &str) -> Result<(), NotifyError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("PUBLISH").arg(&self.channel).arg(event).query_async(&mut conn).await?;
        Ok(())
    }
}

/// In one process (`hookbus dev` over memory): listeners call
/// [`BroadcastEvents::subscribe`].
pub struct BroadcastEvents {
    tx: broadcast::Sender<String>,
}

impl BroadcastEvents {
    pub fn new(capacity: usize) -> Self {
        BroadcastEvents { tx: broadcast::channel(capacity.max(1)).0 }
    }
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl EventPublisher for BroadcastEvents {
    async fn publish(&self, event: &str) -> Result<(), NotifyError> {
        // No listener is not an error: pub/sub drops what nobody hears.
        let _ = self.tx.send(event.to_string());
        Ok(())
    }
}
