//! The one trait both queue backends implement, and the types that cross it.
//!
//! The runner speaks only to [`Backend`]; plugins never see it. A backend
//! owns the queue semantics that must hold across processes (leases, key
//! locks, delays, dead letters, consumer liveness); the runner owns the
//! policy (how many attempts, which backoff, what goes dead).

use std::sync::Arc;

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
/// (from 1): over Redis, the fetch's in-flight list and the position in it;
/// sorting by it gives fetch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken {
    pub seq: u64,
    pub n: u32,
}

/// A fetched message. The envelope is shared: the in-memory backend keeps
/// the same one in its in-flight table, to put back if the consumer dies,
/// without copying it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub lease: Lease,
    pub envelope: Arc<Envelope>,
}

/// What to do with a leased message.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Done: forget it and release its key.
    Ack,
    /// Try again at `due_ms` with this (updated) envelope; the key stays held.
    /// Boxed, as is a dead letter: settlements are moved around in batches
    /// for every message, and nearly all are a bare `Ack`.
    Retry { envelope: Box<Envelope>, due_ms: i64 },
    /// Give up: store the dead letter and release the key.
    Dead(Box<DeadLetter>),
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
    /// This consumer had been declared dead by another (its heartbeat
    /// lapsed while it stalled) and what it held was put back on
    /// `pending`. It is registered again by this beat. (Not set merely
    /// because the consumer is unknown, as after Redis restarted empty.)
    pub lapsed: bool,
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

/// Messages one queue settled in one minute: its throughput.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCounts {
    /// Start of the minute, ms since epoch.
    pub minute: i64,
    /// Acknowledged (handled successfully).
    pub handled: u64,
    /// Failed and scheduled for a retry (deferrals included).
    pub retried: u64,
    /// Dead-lettered (failed for good, or undecodable).
    pub dead: u64,
}

/// Throughput is kept for this many minutes.
pub const THROUGHPUT_MINUTES: usize = 60;

/// The start of the minute holding `ms`.
pub fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// Upper bounds (µs) of the handler-latency histogram buckets a worker
/// process reports; a last, unbounded bucket follows them.
pub const LATENCY_BOUNDS_MICROS: [u64; 8] = [1_000, 5_000, 25_000, 100_000, 500_000, 2_500_000, 10_000_000, 60_000_000];

/// What one worker process reports about one queue it consumes, with its
/// heartbeat: the admin page and `/metrics` list every process from these,
/// including ones that stopped or died (kept for [`PROCESS_KEEP_MS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessReport {
    /// The process: `DYNO` on Heroku (`commit.1`), else `<host>:<pid>`.
    pub process: String,
    pub queue: String,
    /// The plugin's name.
    pub plugin: String,
    /// When this run of the process started (ms): a restarted dyno's newer
    /// run replaces the older one's report, never the other way round.
    pub started_at: i64,
    /// When it last reported (ms).
    pub last_seen: i64,
    /// How often it reports (ms), so a reader can tell a lapsed one.
    pub interval_ms: u64,
    /// It said goodbye (clean shutdown); a dead one just stops reporting.
    pub stopped: bool,
    pub handled: u64,
    pub retried: u64,
    pub dead: u64,
    /// Handler runs timed, and their total and longest time (µs).
    pub latency_count: u64,
    pub latency_sum_micros: u64,
    pub latency_max_micros: u64,
    /// Handler runs per latency bucket ([`LATENCY_BOUNDS_MICROS`], then the
    /// unbounded one); not cumulative.
    pub latency_buckets: Vec<u64>,
}

/// Reports of processes that stopped reporting are kept this long (24 h).
pub const PROCESS_KEEP_MS: u64 = 24 * 3_600_000;

impl ProcessReport {
    /// Reporting within three intervals, and not stopped.
    pub fn alive(&self, now_ms: i64) -> bool {
        !self.stopped && now_ms - self.last_seen <= 3 * self.interval_ms.max(1_000) as i64
    }

    /// The report as flat field/value pairs (a Redis hash).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let buckets: Vec<String> = self.latency_buckets.iter().map(u64::to_string).collect();
        vec![
            ("process", self.process.clone()),
            ("queue", self.queue.clone()),
            ("plugin", self.plugin.clone()),
            ("started_at", self.started_at.to_string()),
            ("last_seen", self.last_seen.to_string()),
            ("interval_ms", self.interval_ms.to_string()),
            ("stopped", u8::from(self.stopped).to_string()),
            ("handled", self.handled.to_string()),
            ("retried", self.retried.to_string()),
            ("dead", self.dead.to_string()),
            ("latency_count", self.latency_count.to_string()),
            ("latency_sum_us", self.latency_sum_micros.to_string()),
            ("latency_max_us", self.latency_max_micros.to_string()),
            ("latency_buckets", buckets.join(",")),
        ]
    }

    /// Reads what [`ProcessReport::to_fields`] wrote; fields it does not
    /// know or cannot read are left at zero (rolling deploys).
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut report = ProcessReport::default();
        for (name, value) in fields {
            let int = || value.parse::<i64>().unwrap_or(0);
            let count = || value.parse::<u64>().unwrap_or(0);
            match name {
                "process" => report.process = value.to_string(),
                "queue" => report.queue = value.to_string(),
                "plugin" => report.plugin = value.to_string(),
                "started_at" => report.started_at = int(),
                "last_seen" => report.last_seen = int(),
                "interval_ms" => report.interval_ms = count(),
                "stopped" => report.stopped = value == "1",
                "handled" => report.handled = count(),
                "retried" => report.retried = count(),
                "dead" => report.dead = count(),
                "latency_count" => report.latency_count = count(),
                "latency_sum_us" => report.latency_sum_micros = count(),
                "latency_max_us" => report.latency_max_micros = count(),
                "latency_buckets" => {
                    report.latency_buckets =
                        value.split(',').filter(|v| !v.is_empty()).map(|v| v.parse().unwrap_or(0)).collect()
                }
                _ => {}
            }
        }
        report
    }
}

/// What names this process in [`ProcessReport`]s: `DYNO` on Heroku, else
/// `<host>:<pid>`.
pub fn process_name() -> String {
    match std::env::var("DYNO") {
        Ok(dyno) if !dyno.is_empty() => dyno,
        _ => {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            format!("{host}:{}", std::process::id())
        }
    }
}

/// Names one push of one producer, so that the push can be repeated safely:
/// of two pushes to one queue under the same receipt, the second enqueues
/// nothing. `producer` is unique to one producer (the runner uses its
/// consumer's name); `seq` grows with each of its pushes, and a push whose
/// `seq` is not above the last one recorded for (queue, producer) counts as
/// done. A producer's record lives a day after its last push
/// ([`RECEIPTS_KEEP_MS`]).
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub producer: &'a str,
    pub seq: u64,
}

/// How long a producer's receipt is kept after its last push.
pub const RECEIPTS_KEEP_MS: u64 = 24 * 3_600_000;

/// A queue store. The Redis backend is durable and shared by processes; the
/// in-memory one lives in one process. Both keep the same semantics, and one
/// behaviour suite (`tests/behaviour.rs`) runs against both.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Enqueues messages at the tail of `queue`, in order. Keyed messages
    /// take their key's lock or wait behind its holder.
    async fn push(&self, queue: &str, messages: &[Envelope]) -> Result<(), BusError>;

    /// Like [`Backend::push`], but takes the messages out of `messages`
    /// (the in-memory backend stores these very `Arc`s). On error the
    /// vector is left as it was, so the caller can retry. With a
    /// [`Receipt`], repeating the push (after an error whose push may have
    /// been applied, its reply lost) enqueues nothing a second time.
    async fn push_vec(
        &self,
        queue: &str,
        messages: &mut Vec<Arc<Envelope>>,
        receipt: Option<Receipt<'_>>,
    ) -> Result<(), BusError>;

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

    /// Refreshes this consumer's heartbeat and, with `reap_after_ms`, puts
    /// back the in-flight messages of consumers whose heartbeat is older
    /// than that. `None` only beats: the runner passes it until its own
    /// heartbeats have gone through for a whole timeout, so that after an
    /// outage nobody is judged dead before they could beat again.
    async fn heartbeat(&self, consumer: &ConsumerId, reap_after_ms: Option<u64>) -> Result<HeartbeatReport, BusError>;

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

    /// What `queue` settled per minute over the last `minutes` minutes
    /// (at most [`THROUGHPUT_MINUTES`]), oldest first, the current minute
    /// last; minutes without traffic are zeros. Counted by `settle`.
    async fn throughput(&self, queue: &str, minutes: usize) -> Result<Vec<MinuteCounts>, BusError>;

    /// Stores a worker process's report (its counters and heartbeat), unless
    /// a newer run of the same process already reports (`started_at`).
    /// Reports not refreshed for [`PROCESS_KEEP_MS`] are forgotten.
    async fn report_process(&self, report: &ProcessReport) -> Result<(), BusError>;

    /// The reports of every process that consumed `queue` within
    /// [`PROCESS_KEEP_MS`], alive or not, most recently seen first.
    async fn processes(&self, queue: &str) -> Result<Vec<ProcessReport>, BusError>;

    /// Adds a JSON entry at the head of the capped journal `journal`
    /// (keeping the newest `keep`): a record for people, such as the commits
    /// the commit stage pushed. Not a queue: nobody consumes it.
    async fn journal_append(&self, journal: &str, entry: &serde_json::Value, keep: usize) -> Result<(), BusError>;

    /// The newest `n` entries of `journal`, newest first.
    async fn journal_recent(&self, journal: &str, n: usize) -> Result<Vec<serde_json::Value>, BusError>;

    /// What in the store's own settings can lose messages it acknowledged,
    /// one sentence each for an operator; empty when nothing can. Redis:
    /// no append-only file, or an eviction policy other than `noeviction`.
    async fn durability_risks(&self) -> Result<Vec<String>, BusError> {
        Ok(Vec::new())
    }
}

/// How every warning about [`Backend::durability_risks`] begins, in logs
/// and in the operator commands alike.
pub const DURABILITY_WARNING: &str = "redis can lose acknowledged messages";

/// Logs, once the store first answers, what in its settings can lose
/// acknowledged messages (see [`Backend::durability_risks`]): every process
/// says it at start, where an operator reading a deploy's logs sees it.
/// Retries every 5 s while the store cannot be reached, until `shutdown`.
pub async fn warn_of_durability_risks(backend: std::sync::Arc<dyn Backend>, shutdown: crate::Shutdown) {
    loop {
        match backend.durability_risks().await {
            Ok(risks) => {
                for risk in risks {
                    tracing::warn!("{DURABILITY_WARNING}: {risk}");
                }
                return;
            }
            Err(_) => {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// A handle on one capped journal of a [`Backend`], for plugins that keep a
/// record for people (the commit stage's pushed commits). It can append and
/// read, nothing else, so a plugin holding one still cannot touch queues.
#[derive(Clone)]
pub struct Journal {
    backend: std::sync::Arc<dyn Backend>,
    name: String,
    keep: usize,
}

impl Journal {
    pub fn new(backend: std::sync::Arc<dyn Backend>, name: impl Into<String>, keep: usize) -> Self {
        Journal { backend, name: name.into(), keep: keep.max(1) }
    }

    pub async fn append(&self, entry: &serde_json::Value) -> Result<(), BusError> {
        self.backend.journal_append(&self.name, entry, self.keep).await
    }

    pub async fn recent(&self, n: usize) -> Result<Vec<serde_json::Value>, BusError> {
        self.backend.journal_recent(&self.name, n).await
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("name", &self.name).field("keep", &self.keep).finish()
    }
}
