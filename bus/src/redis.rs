//! The Redis backend: durable queues shared by any number of processes.
//!
//! Every multi-key step is one Lua script (`src/lua/*.lua`, each with a
//! KEYS/ARGV header and the invariant it keeps), so a crash between two
//! commands cannot lose or duplicate a message. All keys of one queue carry
//! the hash tag `{<queue>}` and so live in one Redis Cluster slot. The key
//! layout is documented in `docs/redis-layout.md`.

mod connection;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{AsyncCommands, Script};

pub use connection::{dial_url, pool, PooledConnection, RedisConnection, RedisPool, RedisTarget};

use crate::backend::{
    minute_of, Backend, ConsumerId, DeadSelector, Delivery, HeartbeatReport, Lease, LeaseToken, MinuteCounts,
    ProcessReport, QueueDepths, Settlement, SweepReport, PROCESS_KEEP_MS, THROUGHPUT_MINUTES,
};
use crate::envelope::{now_ms, DeadContent, DeadLetter, Envelope};
use crate::error::BusError;
use crate::memory::{minutes_back, revived, sweepable};

/// How long one Redis call may take before it counts as failed. Generous: a
/// stalled server must not stall a worker forever, but a busy one is fine.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Due retries promoted per fetch, at most.
const PROMOTE_LIMIT: usize = 500;
/// Dead letters read per sweep or operator action, at most.
const DEAD_SCAN_LIMIT: isize = 10_000;
/// A minute's throughput hash lives this long after its last write: the
/// kept window plus a minute.
const THROUGHPUT_TTL_MS: u64 = (THROUGHPUT_MINUTES as u64 + 1) * 60_000;

/// Key names of one queue.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    base: String,
}

impl QueueKeys {
    pub fn new(prefix: &str, queue: &str) -> Self {
        QueueKeys { base: format!("{prefix}:{{{queue}}}") }
    }
    pub fn pending(&self) -> String {
        format!("{}:pending", self.base)
    }
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.base)
    }
    pub fn dead(&self) -> String {
        format!("{}:dead", self.base)
    }
    pub fn consumers(&self) -> String {
        format!("{}:consumers", self.base)
    }
    pub fn in_flight(&self, consumer: &str) -> String {
        format!("{}:inflight:{consumer}", self.base)
    }
    /// Ordering key -> id of the message allowed to run.
    pub fn keys(&self) -> String {
        format!("{}:keys", self.base)
    }
    /// Messages waiting behind the holder of `key`.
    pub fn held(&self, key: &str) -> String {
        format!("{}:held:{key}", self.base)
    }
    pub fn sweep_lock(&self) -> String {
        format!("{}:sweep", self.base)
    }
    /// Settled counts of the minute starting at `minute` (ms).
    pub fn throughput(&self, minute: i64) -> String {
        format!("{}:throughput:{minute}", self.base)
    }
    /// Worker processes reporting on this queue, by last seen.
    pub fn processes(&self) -> String {
        format!("{}:processes", self.base)
    }
    /// One worker process's report.
    pub fn process(&self, process: &str) -> String {
        format!("{}:process:{process}", self.base)
    }
}

/// Longest one call to a Redis store may take (see `CALL_TIMEOUT`); what
/// stores built on [`pool`] outside the bus pass to it.
pub const STORE_CALL_TIMEOUT: Duration = CALL_TIMEOUT;

struct Scripts {
    push: Script,
    fetch: Script,
    admit: Script,
    settle: Script,
    reap: Script,
    depths: Script,
    report: Script,
}

/// Queues in Redis.
pub struct RedisBackend {
    pool: RedisPool,
    prefix: String,
    scripts: Scripts,
}

impl RedisBackend {
    /// A pool of `pool_size` connections to `url` (`redis://` or
    /// `rediss://`; with `tls_insecure` a self-signed certificate is
    /// accepted, as Heroku Redis needs). Connects lazily: a server that is
    /// down now is retried on use.
    pub fn connect(url: &str, prefix: &str, pool_size: usize, tls_insecure: bool) -> Result<Self, BusError> {
        Self::open(&RedisTarget::single(url, tls_insecure), prefix, pool_size)
    }

    /// Queues on `target`, a single server (a pool of `pool_size`
    /// connections) or a Redis Cluster (one connection multiplexed per
    /// master; `pool_size` does not apply). Connects lazily.
    pub fn open(target: &RedisTarget, prefix: &str, pool_size: usize) -> Result<Self, BusError> {
        let pool = pool(target, pool_size, CALL_TIMEOUT)?;
        Ok(RedisBackend {
            pool,
            prefix: prefix.to_string(),
            scripts: Scripts {
                push: Script::new(include_str!("lua/push.lua")),
                fetch: Script::new(include_str!("lua/fetch.lua")),
                admit: Script::new(include_str!("lua/admit.lua")),
                settle: Script::new(include_str!("lua/settle.lua")),
                reap: Script::new(include_str!("lua/reap.lua")),
                depths: Script::new(include_str!("lua/depths.lua")),
                report: Script::new(include_str!("lua/report.lua")),
            },
        })
    }

    pub fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, queue)
    }

    /// `<prefix>:journal:<name>`: a capped list of JSON entries, newest at
    /// the left.
    pub fn journal_key(&self, journal: &str) -> String {
        format!("{}:journal:{journal}", self.prefix)
    }

    async fn conn(&self) -> Result<PooledConnection, BusError> {
        self.pool.get().await
    }

    /// Pushes with optional "only if this dead entry could be removed".
    async fn push_entries(&self, queue: &str, entries: &[(Envelope, Option<Vec<u8>>)]) -> Result<usize, BusError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let keys = self.keys(queue);
        let mut conn = self.conn().await?;
        if entries.iter().all(|(e, dead)| e.key.is_none() && dead.is_none()) {
            // Fast path: one LPUSH keeps the order of the arguments.
            let raws: Vec<Vec<u8>> = entries.iter().map(|(e, _)| e.encode()).collect();
            let _: () = timed(conn.lpush(keys.pending(), raws)).await?;
            return Ok(entries.len());
        }
        let mut call = self.scripts.push.prepare_invoke();
        call.key(keys.pending()).key(keys.keys()).key(keys.dead());
        call.arg(entries.len());
        for (envelope, dead) in entries {
            let key = envelope.key.as_deref().unwrap_or("");
            call.key(if key.is_empty() { keys.pending() } else { keys.held(key) });
            call.arg(key).arg(&envelope.id).arg(envelope.encode()).arg(dead.as_deref().unwrap_or(b""));
        }
        timed(call.invoke_async(&mut conn)).await
    }

    async fn settle_raw(&self, consumer: &ConsumerId, items: Vec<SettleItem>) -> Result<(), BusError> {
        if items.is_empty() {
            return Ok(());
        }
        let keys = self.keys(&consumer.queue);
        let mut call = self.scripts.settle.prepare_invoke();
        call.key(keys.in_flight(&consumer.name))
            .key(keys.pending())
            .key(keys.delayed())
            .key(keys.dead())
            .key(keys.keys())
            .key(keys.throughput(minute_of(now_ms())));
        call.arg(THROUGHPUT_TTL_MS);
        for item in &items {
            call.key(match &item.key {
                Some(key) => keys.held(key),
                None => keys.pending(),
            });
            call.arg(item.token.to_string())
                .arg(item.op)
                .arg(item.key.as_deref().unwrap_or(""))
                .arg(item.id.as_deref().unwrap_or(""))
                .arg(&item.data[..])
                .arg(item.score);
        }
        let mut conn = self.conn().await?;
        let _: i64 = timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn dead_entries(&self, queue: &str) -> Result<Vec<(Vec<u8>, Option<DeadLetter>)>, BusError> {
        let mut conn = self.conn().await?;
        let raws: Vec<Vec<u8>> = timed(conn.lrange(self.keys(queue).dead(), 0, DEAD_SCAN_LIMIT - 1)).await?;
        Ok(raws
            .into_iter()
            .map(|raw| {
                let letter = DeadLetter::decode(&raw).ok();
                (raw, letter)
            })
            .collect())
    }

    async fn redrive(
        &self,
        queue: &str,
        pick: impl Fn(&DeadLetter) -> bool,
        count_redrive: bool,
    ) -> Result<usize, BusError> {
        let mut entries = Vec::new();
        for (raw, letter) in self.dead_entries(queue).await? {
            if let Some(letter) = letter {
                if let DeadContent::Envelope(envelope) = &letter.content {
                    if pick(&letter) {
                        entries.push((revived(envelope, count_redrive), Some(raw)));
                    }
                }
            }
        }
        // Oldest first (the list is newest first), so order among them is kept.
        entries.reverse();
        self.push_entries(queue, &entries).await
    }
}

struct SettleItem {
    token: LeaseToken,
    op: &'static str,
    key: Option<String>,
    id: Option<String>,
    data: Vec<u8>,
    score: i64,
}

/// Reads of a queue's depths before giving up when its consumers or
/// ordering keys change between every two calls (each retry declares what
/// the previous call found, so one quiet moment is enough).
const DEPTHS_ATTEMPTS: usize = 20;

/// What `depths.lua` answered.
enum DepthsReply {
    Counts(QueueDepths),
    /// The declared lists were out of date; these are the current ones.
    Stale {
        consumers: Vec<String>,
        ordering: Vec<String>,
    },
}

fn depths_reply(reply: Vec<redis::Value>) -> Result<DepthsReply, BusError> {
    let bad = || BusError::Protocol(format!("depths.lua answered {} values of the wrong shape", reply.len()));
    let int = |value: &redis::Value| redis::from_redis_value_ref::<u64>(value).map_err(|_| bad());
    match reply.first().map(int).transpose()? {
        Some(1) if reply.len() == 7 => Ok(DepthsReply::Counts(QueueDepths {
            pending: int(&reply[1])?,
            in_flight: int(&reply[2])?,
            delayed: int(&reply[3])?,
            held: int(&reply[4])?,
            dead: int(&reply[5])?,
            consumers: int(&reply[6])?,
        })),
        Some(0) if reply.len() >= 2 => {
            let n = usize::try_from(int(&reply[1])?).map_err(|_| bad())?;
            let names: Vec<String> = reply[2..]
                .iter()
                .map(|value| redis::from_redis_value_ref::<String>(value).map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            if n > names.len() {
                return Err(bad());
            }
            let (consumers, ordering) = names.split_at(n);
            Ok(DepthsReply::Stale { consumers: consumers.to_vec(), ordering: ordering.to_vec() })
        }
        _ => Err(bad()),
    }
}

async fn timed<T>(fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, BusError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(result) => result.map_err(BusError::from),
        Err(_) => Err(BusError::Protocol(format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn push(&self, queue: &str, messages: &[Envelope]) -> Result<(), BusError> {
        let entries: Vec<(Envelope, Option<Vec<u8>>)> = messages.iter().map(|e| (e.clone(), None)).collect();
        self.push_entries(queue, &entries).await.map(drop)
    }

    async fn push_raw(&self, queue: &str, raw: Bytes) -> Result<(), BusError> {
        let mut conn = self.conn().await?;
        timed(conn.lpush(self.keys(queue).pending(), &raw[..])).await
    }

    async fn register(&self, consumer: &ConsumerId) -> Result<(), BusError> {
        let mut conn = self.conn().await?;
        let keys = self.keys(&consumer.queue);
        timed(conn.zadd(keys.consumers(), &consumer.name, now_ms())).await
    }

    async fn fetch(&self, consumer: &ConsumerId, seq: u64, max: usize) -> Result<Vec<Delivery>, BusError> {
        let keys = self.keys(&consumer.queue);
        let mut conn = self.conn().await?;
        let flat: Vec<Vec<u8>> = timed(
            self.scripts
                .fetch
                .key(keys.pending())
                .key(keys.delayed())
                .key(keys.in_flight(&consumer.name))
                .key(keys.consumers())
                .arg(&consumer.name)
                .arg(seq)
                .arg(max)
                .arg(now_ms())
                .arg(PROMOTE_LIMIT)
                .invoke_async(&mut conn),
        )
        .await?;
        drop(conn);

        let mut deliveries = Vec::with_capacity(flat.len() / 2);
        let mut garbage = Vec::new();
        for pair in flat.chunks_exact(2) {
            let Some(token) = std::str::from_utf8(&pair[0]).ok().and_then(|t| t.parse::<LeaseToken>().ok()) else {
                return Err(BusError::Protocol(format!("fetch returned a bad lease token {:?}", pair[0])));
            };
            match Envelope::decode(&pair[1]) {
                Ok(envelope) => deliveries.push(Delivery {
                    lease: Lease {
                        token,
                        id: envelope.key.as_ref().map(|_| envelope.id.clone()),
                        key: envelope.key.clone(),
                    },
                    envelope: Arc::new(envelope),
                }),
                Err(err) => garbage.push(SettleItem {
                    token,
                    op: "dead",
                    key: None,
                    id: None,
                    data: DeadLetter {
                        content: DeadContent::Raw(Bytes::copy_from_slice(&pair[1])),
                        reason: format!("undecodable message: {err}"),
                        dead_at: now_ms(),
                    }
                    .encode(),
                    score: 0,
                }),
            }
        }
        if !garbage.is_empty() {
            tracing::warn!(queue = %consumer.queue, count = garbage.len(), "dead-lettering undecodable messages");
            self.settle_raw(consumer, garbage).await?;
        }

        let keyed: Vec<usize> = (0..deliveries.len()).filter(|&i| deliveries[i].lease.key.is_some()).collect();
        if keyed.is_empty() {
            return Ok(deliveries);
        }
        let mut call = self.scripts.admit.prepare_invoke();
        call.key(keys.in_flight(&consumer.name)).key(keys.keys());
        for &i in &keyed {
            let lease = &deliveries[i].lease;
            let key = lease.key.as_deref().unwrap_or("");
            call.key(keys.held(key));
            call.arg(lease.token.to_string()).arg(key).arg(lease.id.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn().await?;
        let verdicts: Vec<i64> = timed(call.invoke_async(&mut conn)).await?;
        let parked: std::collections::HashSet<usize> = keyed
            .iter()
            .zip(verdicts.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, &v)| v == 0)
            .map(|(&i, _)| i)
            .collect();
        Ok(deliveries.into_iter().enumerate().filter(|(i, _)| !parked.contains(i)).map(|(_, d)| d).collect())
    }

    async fn settle(&self, consumer: &ConsumerId, settlements: &[(Lease, Settlement)]) -> Result<(), BusError> {
        let items = settlements
            .iter()
            .map(|(lease, settlement)| {
                let (op, data, score) = match settlement {
                    Settlement::Ack => ("ack", Vec::new(), 0),
                    Settlement::Retry { envelope, due_ms } => ("retry", envelope.encode(), *due_ms),
                    Settlement::Dead(letter) => ("dead", letter.encode(), 0),
                    Settlement::Requeue => ("requeue", Vec::new(), 0),
                };
                SettleItem { token: lease.token, op, key: lease.key.clone(), id: lease.id.clone(), data, score }
            })
            .collect();
        self.settle_raw(consumer, items).await
    }

    async fn heartbeat(&self, consumer: &ConsumerId, timeout_ms: u64) -> Result<HeartbeatReport, BusError> {
        let keys = self.keys(&consumer.queue);
        let now = now_ms();
        let lapsed_before = now - timeout_ms as i64;
        let mut conn = self.conn().await?;
        let (_, lapsed): ((), Vec<String>) = timed(
            redis::pipe()
                .zadd(keys.consumers(), &consumer.name, now)
                .zrangebyscore(keys.consumers(), "-inf", format!("({lapsed_before}"))
                .query_async(&mut conn),
        )
        .await?;
        let mut report = HeartbeatReport::default();
        for name in lapsed {
            let n: i64 = timed(
                self.scripts
                    .reap
                    .key(keys.consumers())
                    .key(keys.pending())
                    .key(keys.in_flight(&name))
                    .arg(&name)
                    .arg(lapsed_before)
                    .invoke_async(&mut conn),
            )
            .await?;
            if n >= 0 {
                tracing::warn!(queue = %consumer.queue, consumer = %name, requeued = n,
                    "consumer heartbeat lapsed; its in-flight messages are back on pending");
                report.reaped_consumers += 1;
                report.requeued += n as usize;
            }
        }
        Ok(report)
    }

    async fn deregister(&self, consumer: &ConsumerId) -> Result<usize, BusError> {
        let keys = self.keys(&consumer.queue);
        let mut conn = self.conn().await?;
        let n: i64 = timed(
            self.scripts
                .reap
                .key(keys.consumers())
                .key(keys.pending())
                .key(keys.in_flight(&consumer.name))
                .arg(&consumer.name)
                .arg("")
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(n.max(0) as usize)
    }

    async fn wait_for_work(&self, _queue: &str, max_wait: Duration) {
        // Redis lists cannot be blocked on without giving up the atomic
        // lease, so idle consumers poll; the runner grows the wait.
        tokio::time::sleep(max_wait).await;
    }

    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let keys = self.keys(queue);
        let mut conn = self.conn().await?;
        // The script must be told which in-flight hashes and held lists to
        // count (every key a script touches is declared, as Redis Cluster
        // requires); it checks the lists and, when consumers or ordering
        // keys changed since, answers with the current ones to ask again.
        let (mut consumers, mut ordering): (Vec<String>, Vec<String>) =
            timed(redis::pipe().zrange(keys.consumers(), 0, -1).hkeys(keys.keys()).query_async(&mut conn)).await?;
        for _ in 0..DEPTHS_ATTEMPTS {
            let mut call = self.scripts.depths.prepare_invoke();
            call.key(keys.pending()).key(keys.delayed()).key(keys.dead()).key(keys.consumers()).key(keys.keys());
            call.arg(consumers.len());
            for consumer in &consumers {
                call.key(keys.in_flight(consumer)).arg(consumer);
            }
            for key in &ordering {
                call.key(keys.held(key)).arg(key);
            }
            let reply: Vec<redis::Value> = timed(call.invoke_async(&mut conn)).await?;
            match depths_reply(reply)? {
                DepthsReply::Counts(depths) => return Ok(depths),
                DepthsReply::Stale { consumers: now, ordering: keys_now } => {
                    consumers = now;
                    ordering = keys_now;
                }
            }
        }
        Err(BusError::Protocol(format!(
            "the consumers and ordering keys of {queue} changed on each of {DEPTHS_ATTEMPTS} reads; try again"
        )))
    }

    async fn peek(&self, queue: &str, n: usize) -> Result<Vec<Result<Envelope, Bytes>>, BusError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        // The head is the right end: read the last n, oldest first.
        let mut raws: Vec<Vec<u8>> = timed(conn.lrange(self.keys(queue).pending(), -(n as isize), -1)).await?;
        raws.reverse();
        Ok(raws.into_iter().map(|raw| Envelope::decode(&raw).map_err(|_| Bytes::from(raw))).collect())
    }

    async fn dead_list(&self, queue: &str, n: usize) -> Result<Vec<DeadLetter>, BusError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let raws: Vec<Vec<u8>> = timed(conn.lrange(self.keys(queue).dead(), 0, n as isize - 1)).await?;
        Ok(raws
            .into_iter()
            .map(|raw| {
                DeadLetter::decode(&raw).unwrap_or_else(|err| DeadLetter {
                    content: DeadContent::Raw(Bytes::from(raw)),
                    reason: format!("unreadable dead entry: {err}"),
                    dead_at: 0,
                })
            })
            .collect())
    }

    async fn dead_retry(&self, queue: &str, which: &DeadSelector) -> Result<usize, BusError> {
        self.redrive(queue, |letter| which.matches(letter), false).await
    }

    async fn dead_purge(&self, queue: &str, which: &DeadSelector) -> Result<usize, BusError> {
        let dead_key = self.keys(queue).dead();
        let doomed: Vec<Vec<u8>> = self
            .dead_entries(queue)
            .await?
            .into_iter()
            .filter(|(_, letter)| match (which, letter) {
                (DeadSelector::All, _) => true,
                (_, Some(letter)) => which.matches(letter),
                (_, None) => false,
            })
            .map(|(raw, _)| raw)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for raw in &doomed {
            pipe.lrem(&dead_key, 1, &raw[..]);
        }
        let mut conn = self.conn().await?;
        let removed: Vec<i64> = timed(pipe.query_async(&mut conn)).await?;
        Ok(removed.iter().sum::<i64>() as usize)
    }

    async fn sweep_dead(&self, queue: &str, interval_ms: u64, max_redrives: u32) -> Result<SweepReport, BusError> {
        let mut conn = self.conn().await?;
        // One sweep per interval across every process: whoever sets the
        // lock runs it.
        let won: Option<String> = timed(
            redis::cmd("SET")
                .arg(self.keys(queue).sweep_lock())
                .arg(now_ms())
                .arg("NX")
                .arg("PX")
                .arg(interval_ms.max(1))
                .query_async(&mut conn),
        )
        .await?;
        drop(conn);
        if won.is_none() {
            return Ok(SweepReport::default());
        }
        let settled_before = now_ms() - interval_ms as i64;
        let given_up = self
            .dead_entries(queue)
            .await?
            .into_iter()
            .filter_map(|(_, letter)| letter)
            .filter(|letter| !sweepable(letter, max_redrives) && letter.dead_at <= settled_before)
            .collect();
        let redriven = self
            .redrive(queue, |letter| sweepable(letter, max_redrives) && letter.dead_at <= settled_before, true)
            .await?;
        Ok(SweepReport { ran: true, redriven, given_up })
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn().await?;
        let _: String = timed(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }

    async fn throughput(&self, queue: &str, minutes: usize) -> Result<Vec<MinuteCounts>, BusError> {
        let keys = self.keys(queue);
        let minutes: Vec<i64> = minutes_back(minutes).collect();
        // One slot: the pipeline goes to one node on a cluster too.
        let mut pipe = redis::pipe();
        for &minute in &minutes {
            pipe.cmd("HMGET").arg(keys.throughput(minute)).arg("handled").arg("retried").arg("dead");
        }
        let mut conn = self.conn().await?;
        let rows: Vec<(Option<u64>, Option<u64>, Option<u64>)> = timed(pipe.query_async(&mut conn)).await?;
        Ok(minutes
            .into_iter()
            .zip(rows)
            .map(|(minute, (handled, retried, dead))| MinuteCounts {
                minute,
                handled: handled.unwrap_or(0),
                retried: retried.unwrap_or(0),
                dead: dead.unwrap_or(0),
            })
            .collect())
    }

    async fn report_process(&self, report: &ProcessReport) -> Result<(), BusError> {
        let keys = self.keys(&report.queue);
        let mut call = self.scripts.report.prepare_invoke();
        call.key(keys.processes()).key(keys.process(&report.process));
        call.arg(&report.process).arg(report.started_at).arg(report.last_seen).arg(PROCESS_KEEP_MS);
        for (field, value) in report.to_fields() {
            call.arg(field).arg(value);
        }
        let mut conn = self.conn().await?;
        let _: i64 = timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn processes(&self, queue: &str) -> Result<Vec<ProcessReport>, BusError> {
        let keys = self.keys(queue);
        let mut conn = self.conn().await?;
        let names: Vec<String> = timed(conn.zrevrange(keys.processes(), 0, 499)).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.hgetall(keys.process(name));
        }
        let hashes: Vec<Vec<(String, String)>> = timed(pipe.query_async(&mut conn)).await?;
        Ok(hashes
            .iter()
            .filter(|fields| !fields.is_empty())
            .map(|fields| ProcessReport::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            .collect())
    }

    async fn journal_append(&self, journal: &str, entry: &serde_json::Value, keep: usize) -> Result<(), BusError> {
        let key = self.journal_key(journal);
        let text = entry.to_string();
        let mut conn = self.conn().await?;
        // One key, so the transaction is fine on a cluster.
        let () = timed(
            redis::pipe()
                .atomic()
                .lpush(&key, text)
                .ignore()
                .ltrim(&key, 0, keep.max(1) as isize - 1)
                .ignore()
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn journal_recent(&self, journal: &str, n: usize) -> Result<Vec<serde_json::Value>, BusError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let texts: Vec<String> = timed(conn.lrange(self.journal_key(journal), 0, n as isize - 1)).await?;
        Ok(texts.iter().filter_map(|text| serde_json::from_str(text).ok()).collect())
    }
}
