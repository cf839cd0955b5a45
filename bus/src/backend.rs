//! The one trait both queue backends implement, and the types that cross it.
//!
//! The runner speaks only to [`Backend`]; plugins never see it. A backend
//! owns the queue semantics that must hold across processes (leases, key
//! locks, delays, dead letters, consumer liveness); the runner owns the
//! policy (how many attempts, which backoff, what goes dead).

use async_trait::async_trait;
use bytes::Bytes;

use crate::envelope::{DeadLetter, Envelope};
use crate::error::BusError;

/// One registered consumer of one queue.
#[derive(Debug, Clone)]
pub struct ConsumerId {
    pub queue: String,
    /// Unique across processes: `<host>:<pid>:<random>`.
    pub name: String,
}

impl ConsumerId {
    pub fn new(queue: &str) -> Self {
        let host = std::env::var("DYNO").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "local".into());
        let tag: u32 = rand::random();
        ConsumerId { queue: queue.to_string(), name: format!("{host}:{}:{tag:08x}", std::process::id()) }
    }
}

/// A claim on one fetched message: it stays in-flight under its consumer
/// until settled, and returns to `pending` if the consumer dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The entry's place in the consumer's in-flight set.
    pub token: LeaseToken,
    /// Message id of a keyed message: key locks are held by id.
    pub id: Option<String>,
    /// Ordering key, when the message has one.
    pub key: Option<String>,
}

/// Which fetch (the consumer's sequence number) and which message in it
/// (from 1). Its text form `<seq>:<n>` names the in-flight entry in Redis;
/// sorting by it gives fetch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken {
    pub seq: u64,
    pub n: u32,
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.n)
    }
}

impl std::str::FromStr for LeaseToken {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (seq, n) = s.split_once(':').ok_or(())?;
        Ok(LeaseToken { seq: seq.parse().map_err(|_| ())?, n: n.parse().map_err(|_| ())? })
    }
}

/// A fetched message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub lease: Lease,
    pub envelope: Envelope,
}

/// What to do with a leased message.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Done: forget it and release its key.
    Ack,
    /// Try again at `due_ms` with this (updated) envelope; the key stays held.
    Retry { envelope: Envelope, due_ms: i64 },
    /// Give up: store the dead letter and release the key.
    Dead(DeadLetter),
    /// Put it back at the head of `pending`, unchanged (shutdown).
    Requeue,
}

/// Counts of one queue, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepths {
    /// Waiting to be fetched.
    pub pending: u64,
    /// Leased by a consumer, being handled.
    pub in_flight: u64,
    /// Waiting for a retry.
    pub delayed: u64,
    /// Held back behind an earlier message with the same key.
    pub held: u64,
    /// Given up on.
    pub dead: u64,
    /// Live consumers (heartbeat within the timeout).
    pub consumers: u64,
}

/// What one heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// Consumers found dead whose in-flight messages were put back.
    pub reaped_consumers: usize,
    /// Messages put back from them.
    pub requeued: usize,
}

/// Which dead letters an operator action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelector {
    All,
    Id(String),
}

impl DeadSelector {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            DeadSelector::All => true,
            DeadSelector::Id(id) => &letter.id() == id,
        }
    }
}

/// What one dead-letter sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    /// Whether this process ran it (only one per interval across all processes).
    pub ran: bool,
    /// Messages sent back to `pending`.
    pub redriven: usize,
    /// Dead letters left dead because they were re-driven `max_redrives` times already.
    pub given_up: Vec<DeadLetter>,
}

/// A queue store. The Redis backend is durable and shared by processes; the
/// in-memory one lives in one process. Both keep the same semantics, and one
/// behaviour suite (`tests/behaviour.rs`) runs against both.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Enqueues messages at the tail of `queue`, in order. Keyed messages
    /// take their key's lock or wait behind its holder.
    async fn push(&self, queue: &str, messages: &[Envelope]) -> Result<(), BusError>;

    /// Like [`Backend::push`], but may take the messages out of `messages`
    /// (the in-memory backend stores them without copying). On error the
    /// vector is left as it was, so the caller can retry.
    async fn push_vec(&self, queue: &str, messages: &mut Vec<Envelope>) -> Result<(), BusError> {
        self.push(queue, messages).await?;
        messages.clear();
        Ok(())
    }

    /// Puts bytes on `pending` as a foreign producer's `LPUSH` would; used to
    /// prove the bus copes with anything found there.
    async fn push_raw(&self, queue: &str, raw: Bytes) -> Result<(), BusError>;

    /// Registers a consumer (its first heartbeat).
    async fn register(&self, consumer: &ConsumerId) -> Result<(), BusError>;

    /// Leases up to `max` messages, promoting due retries first. `seq` names
    /// the fetch: calling again with the same `seq` after a lost reply returns
    /// the same leases instead of taking more. Undecodable bytes found on the
    /// queue are dead-lettered here and never returned.
    async fn fetch(&self, consumer: &ConsumerId, seq: u64, max: usize) -> Result<Vec<Delivery>, BusError>;

    /// Settles leases. Settling a lease that is no longer held (its consumer
    /// was declared dead and the message put back) does nothing.
    async fn settle(&self, consumer: &ConsumerId, settlements: &[(Lease, Settlement)]) -> Result<(), BusError>;

    /// Refreshes this consumer's heartbeat and puts back the in-flight
    /// messages of consumers whose heartbeat is older than `timeout_ms`.
    async fn heartbeat(&self, consumer: &ConsumerId, timeout_ms: u64) -> Result<HeartbeatReport, BusError>;

    /// Removes the consumer, putting whatever it still holds back at the head
    /// of `pending` in fetch order, attempts unchanged. Returns how many.
    async fn deregister(&self, consumer: &ConsumerId) -> Result<usize, BusError>;

    /// Waits until `queue` may have work, or `max_wait` passes.
    async fn wait_for_work(&self, queue: &str, max_wait: std::time::Duration);

    /// Counts for operators.
    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError>;

    /// The next `n` pending messages, oldest first, without leasing them.
    /// Entries that do not decode are returned as errors with their bytes.
    async fn peek(&self, queue: &str, n: usize) -> Result<Vec<Result<Envelope, Bytes>>, BusError>;

    /// Dead letters, newest first (at most `n`).
    async fn dead_list(&self, queue: &str, n: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Sends matching dead letters back to `pending` with attempts reset.
    /// An operator's decision: it does not count towards `max_redrives`.
    async fn dead_retry(&self, queue: &str, which: &DeadSelector) -> Result<usize, BusError>;

    /// Deletes matching dead letters.
    async fn dead_purge(&self, queue: &str, which: &DeadSelector) -> Result<usize, BusError>;

    /// The periodic re-drive: at most once per `interval_ms` across all
    /// processes, letters dead for at least `interval_ms` and re-driven fewer
    /// than `max_redrives` times go back to `pending`; those re-driven
    /// `max_redrives` times are reported as given up.
    async fn sweep_dead(&self, queue: &str, interval_ms: u64, max_redrives: u32) -> Result<SweepReport, BusError>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), BusError>;
}
