//! Intake: putting an accepted request on `normalise`, exactly once per
//! outside id.
//!
//! GitHub redelivers with the same `X-GitHub-Delivery`, and clients retry.
//! Each accepted request leaves a *mark* (its outside id -> the id of the
//! message it became) written in the same step as the enqueue, so a crash can
//! never leave one without the other. Two implementations:
//!
//! - [`RedisIntake`]: one Lua script (`lua/intake.lua`) over its own
//!   multiplexed connection; marks expire after the configured retention.
//! - [`LocalIntake`]: marks in process memory, messages through any
//!   [`Backend`] (`hookbus dev` over the in-memory bus).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hookbus_bus::redis::QueueKeys;
use hookbus_bus::{Backend, BusError, Envelope};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

/// The queue the gateway feeds.
pub const QUEUE: &str = "normalise";

/// What a request is remembered by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mark {
    /// A webhook's `X-GitHub-Delivery`.
    Delivery(String),
    /// A client change's operation id.
    Change(String),
}

/// What [`Intake::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Stored on `normalise`; the mark now names this message.
    Queued,
    /// Already accepted as message `message_id`; nothing was written.
    Seen { message_id: String },
}

/// Why the store could not be reached or answered oddly. Always answered 503.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Bus(#[from] BusError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from intake script: {0}")]
    Protocol(String),
}

/// Enqueues on `normalise` once per [`Mark`].
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Pushes `envelope` and sets `mark` to its id, unless `mark` already
    /// names a message other than `replacing`. Returns only after the store
    /// acknowledged the write.
    async fn admit(&self, mark: &Mark, envelope: &Envelope, replacing: Option<&str>) -> Result<Admission, IntakeError>;

    /// The message id `mark` names, if it is still remembered.
    async fn lookup(&self, mark: &Mark) -> Result<Option<String>, IntakeError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), IntakeError>;
}

/// Marks and messages in Redis, written by one script.
pub struct RedisIntake {
    conn: ConnectionManager,
    keys: QueueKeys,
    prefix: String,
    retention_ms: u64,
    script: Script,
}

impl RedisIntake {
    /// Connects lazily to `url` (a server that is down now is retried on use,
    /// with every call bounded by `timeout`).
    pub fn connect(
        url: &str,
        tls_insecure: bool,
        prefix: &str,
        retention: Duration,
        timeout: Duration,
    ) -> Result<Self, IntakeError> {
        let url = if tls_insecure && url.starts_with("rediss://") && !url.contains('#') {
            format!("{url}#insecure")
        } else {
            url.to_string()
        };
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisIntake {
            conn,
            keys: QueueKeys::new(prefix, QUEUE),
            prefix: prefix.to_string(),
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            script: Script::new(include_str!("lua/intake.lua")),
        })
    }

    /// The Redis key of a mark; in the `{normalise}` slot, next to `pending`.
    pub fn mark_key(&self, mark: &Mark) -> String {
        mark_key(&self.prefix, mark)
    }
}

/// `<prefix>:{normalise}:delivery:<id>` or `<prefix>:{normalise}:change:<id>`.
pub fn mark_key(prefix: &str, mark: &Mark) -> String {
    match mark {
        Mark::Delivery(id) => format!("{prefix}:{{{QUEUE}}}:delivery:{id}"),
        Mark::Change(id) => format!("{prefix}:{{{QUEUE}}}:change:{id}"),
    }
}

#[async_trait]
impl Intake for RedisIntake {
    async fn admit(&self, mark: &Mark, envelope: &Envelope, replacing: Option<&str>) -> Result<Admission, IntakeError> {
        let mut call = self.script.prepare_invoke();
        call.key(self.keys.pending())
            .key(self.mark_key(mark))
            .arg(envelope.encode())
            .arg(&envelope.id)
            .arg(self.retention_ms)
            .arg(replacing.unwrap_or(""));
        let mut conn = self.conn.clone();
        let (queued, holder): (i64, String) = call.invoke_async(&mut conn).await?;
        match queued {
            1 => Ok(Admission::Queued),
            0 => Ok(Admission::Seen { message_id: holder }),
            other => Err(IntakeError::Protocol(format!("status {other}"))),
        }
    }

    async fn lookup(&self, mark: &Mark) -> Result<Option<String>, IntakeError> {
        let mut conn = self.conn.clone();
        let holder: Option<String> = redis::cmd("GET").arg(self.mark_key(mark)).query_async(&mut conn).await?;
        Ok(holder)
    }

    async fn ping(&self) -> Result<(), IntakeError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// Marks in this process, messages through a [`Backend`]. Atomic within the
/// process (one lock around check, push and mark); for one-process dev mode.
pub struct LocalIntake {
    backend: Arc<dyn Backend>,
    retention: Duration,
    marks: tokio::sync::Mutex<HashMap<Mark, (String, Instant)>>,
    /// Pruning expired marks walks the map; done at most once a minute.
    last_prune: Mutex<Instant>,
}

impl LocalIntake {
    pub fn new(backend: Arc<dyn Backend>, retention: Duration) -> Self {
        LocalIntake {
            backend,
            retention,
            marks: tokio::sync::Mutex::new(HashMap::new()),
            last_prune: Mutex::new(Instant::now()),
        }
    }
}

#[async_trait]
impl Intake for LocalIntake {
    async fn admit(&self, mark: &Mark, envelope: &Envelope, replacing: Option<&str>) -> Result<Admission, IntakeError> {
        let mut marks = self.marks.lock().await;
        let now = Instant::now();
        if let Ok(mut last) = self.last_prune.lock() {
            if now.duration_since(*last) > Duration::from_secs(60) {
                marks.retain(|_, (_, expires)| *expires > now);
                *last = now;
            }
        }
        if let Some((holder, expires)) = marks.get(mark) {
            if *expires > now && Some(holder.as_str()) != replacing {
                return Ok(Admission::Seen { message_id: holder.clone() });
            }
        }
        self.backend.push(QUEUE, std::slice::from_ref(envelope)).await?;
        marks.insert(mark.clone(), (envelope.id.clone(), now + self.retention));
        Ok(Admission::Queued)
    }

    async fn lookup(&self, mark: &Mark) -> Result<Option<String>, IntakeError> {
        let marks = self.marks.lock().await;
        Ok(marks.get(mark).filter(|(_, expires)| *expires > Instant::now()).map(|(holder, _)| holder.clone()))
    }

    async fn ping(&self) -> Result<(), IntakeError> {
        Ok(self.backend.ping().await?)
    }
}
