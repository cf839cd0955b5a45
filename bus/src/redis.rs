//! The Redis backend: durable queues shared by any number of processes.
//!
//! Every multi-key step is one Lua script (`src/lua/*.lua`, each with a
//! KEYS/ARGV header and the invariant it keeps), so a crash between two
//! commands cannot lose or duplicate a message. All keys of one queue carry
//! the hash tag `{<queue>}` and so live in one Redis Cluster slot. The key
//! layout is documented in `docs/redis-layout.md`.

mod connection;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{AsyncCommands, Script};

pub use connection::{dial_url, pool, PooledConnection, RedisConnection, RedisPool, RedisTarget};

use crate::backend::{
    minute_of, Backend, ConsumerId, DeadSelector, Delivery, HeartbeatReport, Lease, LeaseToken, MinuteCounts,
    ProcessReport, QueueDepths, Receipt, Settlement, SweepReport, PROCESS_KEEP_MS, RECEIPTS_KEEP_MS,
    THROUGHPUT_MINUTES,
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
    /// Left by whoever declared `consumer` dead (its heartbeat lapsed), for
    /// it to find if it wakes: a string, the lapse's cut-off (ms), for a day.
    pub fn reaped(&self, consumer: &str) -> String {
        format!("{}:reaped:{consumer}", self.base)
    }
    /// The consumer's open fetches: a hash, fetch number -> leases in it
    /// not settled yet.
    pub fn fetches(&self, consumer: &str) -> String {
        format!("{}:fetches:{consumer}", self.base)
    }
    /// What one fetch leased, in fetch order (lease `n` at index `n - 1`).
    pub fn in_flight(&self, consumer: &str, fetch: u64) -> String {
        format!("{}:inflight:{consumer}:{fetch}", self.base)
    }
    /// What a consumer of a hookbus before per-fetch lists leased (a hash,
    /// `<seq>:<n>` -> bytes): put back by the reaper, so that a rolling
    /// upgrade strands nothing an old worker held.
    pub fn legacy_in_flight(&self, consumer: &str) -> String {
        format!("{}:inflight:{consumer}", self.base)
    }
    /// Bitmap of one fetch's settled leases (bit `n - 1` for lease `n`).
    pub fn settled(&self, consumer: &str, fetch: u64) -> String {
        format!("{}:settled:{consumer}:{fetch}", self.base)
    }
    /// Ordering key -> id of the message allowed to run.
    pub fn keys(&self) -> String {
        format!("{}:keys", self.base)
    }
    /// Messages waiting behind the holder of `key`.
    pub fn held(&self, key: &str) -> String {
        format!("{}:held:{key}", self.base)
    }
    /// The seq of `producer`'s last receipted push (`receipt.lua`).
    pub fn receipt(&self, producer: &str) -> String {
        format!("{}:receipt:{producer}", self.base)
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
    admit: Script,
    settle: Script,
    reap: Script,
    depths: Script,
    report: Script,
}

/// The two scripts of a fetch's transaction. They go by `EVAL`, not
/// `EVALSHA`: a `NOSCRIPT` inside `EXEC` would fail that one command and let
/// the others run. Both are short, so hashing their text costs little.
fn promote_script() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| lua_text(include_str!("lua/promote.lua")))
}

fn close_script() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| lua_text(include_str!("lua/close.lua")))
}

/// The receipt check of a plain push's transaction; `EVAL` for the same
/// reason as above.
fn receipt_script() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| lua_text(include_str!("lua/receipt.lua")))
}

/// A script's text without its whole-line comments, for sending with
/// `EVAL`: Redis takes the SHA1 of the whole text on every call.
pub fn lua_text(source: &str) -> String {
    source.lines().filter(|line| !line.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n")
}

/// Queues in Redis.
pub struct RedisBackend {
    pool: RedisPool,
    prefix: String,
    scripts: Scripts,
    /// Per consumer, what its fetches found.
    fetched: Mutex<HashMap<String, Fetched>>,
}

/// What a consumer's fetches found so far.
#[derive(Default)]
struct Fetched {
    /// The highest fetch number asked for: a fetch asked for again (its
    /// reply was lost) first looks at what it leased.
    last: u64,
    /// How many messages the next fetch expects to find: what the last one
    /// took plus what it left on `pending`. A fetch sends one `LMOVE` per
    /// message it may take, and most of those would come back empty if it
    /// always sent as many as it has room for. None before the first.
    expect: Option<usize>,
    /// A fetch found a new note from another consumer that declared this
    /// one dead (`reaped:<consumer>`); the next heartbeat reports it.
    lapsed: bool,
    /// The last such note taken in (its value, the reaper's cut-off). Notes
    /// are read, never deleted by their consumer: a call that Redis ran but
    /// whose reply was lost (timed out on waking from a stall, a dropped
    /// connection) would otherwise have taken the note with it, and the
    /// consumer would push the outputs of what was handed on.
    note: Option<Vec<u8>>,
}

/// Messages a fetch tries to take at least, however quiet the queue was.
const FETCH_FLOOR: usize = 4;

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
                admit: Script::new(include_str!("lua/admit.lua")),
                settle: Script::new(include_str!("lua/settle.lua")),
                reap: Script::new(include_str!("lua/reap.lua")),
                depths: Script::new(include_str!("lua/depths.lua")),
                report: Script::new(include_str!("lua/report.lua")),
            },
            fetched: Mutex::new(HashMap::new()),
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

    /// Pushes with optional "only if this dead entry could be removed", and
    /// an optional receipt (see [`Receipt`]).
    async fn push_entries(
        &self,
        queue: &str,
        entries: &[(&Envelope, Option<Vec<u8>>)],
        receipt: Option<Receipt<'_>>,
    ) -> Result<usize, BusError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let keys = self.keys(queue);
        let mut conn = self.conn().await?;
        if entries.iter().all(|(e, dead)| e.key.is_none() && dead.is_none()) {
            // Fast path: one LPUSH keeps the order of the arguments. Each
            // envelope is encoded straight into the command, sized up front:
            // a buffer per envelope, copied into a command grown as it went,
            // was a tenth of a stage's time.
            let pending = keys.pending();
            let sizes = entries.iter().map(|(e, _)| e.encoded_len());
            let mut cmd = redis::Cmd::with_capacity(entries.len() + 2, pending.len() + 5 + sizes.sum::<usize>());
            cmd.arg("LPUSH").arg(&pending);
            for (envelope, _) in entries {
                envelope.encode_to(&mut redis::RedisWrite::writer_for_next_arg(&mut cmd));
            }
            let Some(receipt) = receipt else {
                let _: () = timed(cmd.query_async(&mut conn)).await?;
                return Ok(entries.len());
            };
            // With a receipt: the push and its receipt in one transaction,
            // the envelopes outside Lua (receipt.lua).
            let mut tx = redis::pipe();
            tx.atomic().add_command(cmd).ignore();
            tx.cmd("EVAL")
                .arg(receipt_script())
                .arg(2)
                .arg(&pending)
                .arg(keys.receipt(receipt.producer))
                .arg(receipt.seq)
                .arg(entries.len())
                .arg(RECEIPTS_KEEP_MS);
            let (new,): (i64,) = timed(tx.query_async(&mut conn)).await?;
            return Ok(if new == 1 { entries.len() } else { 0 });
        }
        let mut call = self.scripts.push.prepare_invoke();
        call.key(keys.pending()).key(keys.keys()).key(keys.dead());
        call.arg(entries.len());
        for (envelope, dead) in entries {
            let key = envelope.key.as_deref().unwrap_or("");
            call.key(if key.is_empty() { keys.pending() } else { keys.held(key) });
            call.arg(key).arg(&envelope.id).arg(envelope.encode()).arg(dead.as_deref().unwrap_or(b""));
        }
        if let Some(receipt) = receipt {
            call.key(keys.receipt(receipt.producer)).arg(receipt.seq).arg(RECEIPTS_KEEP_MS);
        }
        timed(call.invoke_async(&mut conn)).await
    }

    async fn settle_raw(&self, consumer: &ConsumerId, items: Vec<SettleItem>) -> Result<(), BusError> {
        if items.is_empty() {
            return Ok(());
        }
        let keys = self.keys(&consumer.queue);
        let name = &consumer.name;
        // The fetches the leases belong to, in order of first mention, with
        // their plain acks (unkeyed messages) as bare positions; every
        // other settlement goes in full.
        let mut fetches: Vec<(u64, Vec<u32>)> = Vec::new();
        let mut others: Vec<(usize, u32, &SettleItem)> = Vec::new();
        for item in &items {
            let fetch = item.token.seq;
            let j = match fetches.iter().position(|(f, _)| *f == fetch) {
                Some(j) => j,
                None => {
                    fetches.push((fetch, Vec::new()));
                    fetches.len() - 1
                }
            };
            // Leases go by bit offset (position - 1); tokens start at 1.
            let Some(offset) = item.token.n.checked_sub(1) else { continue };
            if item.op == "ack" && item.key.is_none() {
                fetches[j].1.push(offset);
            } else {
                others.push((j + 1, offset, item));
            }
        }
        let mut call = self.scripts.settle.prepare_invoke();
        call.key(keys.fetches(name))
            .key(keys.pending())
            .key(keys.delayed())
            .key(keys.dead())
            .key(keys.keys())
            .key(keys.throughput(minute_of(now_ms())));
        call.arg(THROUGHPUT_TTL_MS).arg(fetches.len());
        for (fetch, acks) in &fetches {
            call.key(keys.in_flight(name, *fetch)).key(keys.settled(name, *fetch));
            call.arg(*fetch).arg(acks.len()).arg(acks);
        }
        for (j, offset, item) in others {
            call.key(match &item.key {
                Some(key) => keys.held(key),
                None => keys.pending(),
            });
            call.arg(j)
                .arg(offset)
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

    /// Leases up to `max` messages under fetch number `fetch`: one
    /// transaction (see `promote.lua`), so the messages never pass through
    /// Lua. Also answers how many messages it left on `pending`.
    async fn lease(
        &self,
        consumer: &ConsumerId,
        fetch: u64,
        max: usize,
    ) -> Result<(Vec<(u32, Vec<u8>)>, usize), BusError> {
        let keys = self.keys(&consumer.queue);
        let (pending, list) = (keys.pending(), keys.in_flight(&consumer.name, fetch));
        let mut tx = redis::pipe();
        tx.atomic();
        // Registered (again, when another consumer declared this one dead:
        // the note it left is read here, and the next heartbeat told).
        tx.get(keys.reaped(&consumer.name));
        tx.zadd(keys.consumers(), &consumer.name, now_ms()).ignore();
        tx.hset_nx(keys.fetches(&consumer.name), fetch, 0).ignore();
        tx.cmd("EVAL")
            .arg(promote_script())
            .arg(2)
            .arg(&pending)
            .arg(keys.delayed())
            .arg(now_ms())
            .arg(PROMOTE_LIMIT)
            .ignore();
        for _ in 0..max {
            tx.cmd("LMOVE").arg(&pending).arg(&list).arg("RIGHT").arg("RIGHT");
        }
        tx.cmd("EVAL")
            .arg(close_script())
            .arg(3)
            .arg(keys.fetches(&consumer.name))
            .arg(&list)
            .arg(keys.settled(&consumer.name, fetch))
            .arg(fetch)
            .ignore();
        tx.llen(&pending);
        let mut conn = self.conn().await?;
        let mut replies: Vec<redis::Value> = timed(tx.query_async(&mut conn)).await?;
        let bad = |what: &str| BusError::Protocol(format!("a fetch's transaction answered {what}"));
        let left: usize = match replies.pop() {
            Some(value) => redis::from_redis_value(value).map_err(|_| bad("a bad length of pending"))?,
            None => return Err(bad("nothing")),
        };
        if replies.is_empty() {
            return Err(bad("no registration"));
        }
        let note: Option<Vec<u8>> =
            redis::from_redis_value(replies.remove(0)).map_err(|_| bad("a bad note of this consumer's death"))?;
        if self.new_note(consumer, note) {
            self.fetched
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(consumer.name.clone())
                .or_default()
                .lapsed = true;
        }
        let mut leased = Vec::with_capacity(replies.len());
        for (n, value) in (1..).zip(replies) {
            match redis::from_redis_value::<Option<Vec<u8>>>(value).map_err(|_| bad("a bad LMOVE reply"))? {
                Some(raw) => leased.push((n, raw)),
                None => break,
            }
        }
        Ok((leased, left))
    }

    /// Whether `note`, the value of `reaped:<consumer>` just read, is one
    /// this consumer has not taken in yet (and takes it in).
    fn new_note(&self, consumer: &ConsumerId, note: Option<Vec<u8>>) -> bool {
        let Some(note) = note else { return false };
        let mut fetched = self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = fetched.entry(consumer.name.clone()).or_default();
        if state.note.as_ref() == Some(&note) {
            return false;
        }
        state.note = Some(note);
        true
    }

    /// Whether a fetch found `consumer` declared dead since the last time
    /// this was asked.
    fn fetch_found_lapsed(&self, consumer: &ConsumerId) -> bool {
        let mut fetched = self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        fetched.get_mut(&consumer.name).is_some_and(|state| std::mem::take(&mut state.lapsed))
    }

    /// What fetch number `fetch` leased and is not settled yet: the answer
    /// to a fetch asked for again.
    async fn leased(&self, consumer: &ConsumerId, fetch: u64) -> Result<Vec<(u32, Vec<u8>)>, BusError> {
        let keys = self.keys(&consumer.queue);
        let mut conn = self.conn().await?;
        let (raws, settled): (Vec<Vec<u8>>, Option<Vec<u8>>) = timed(
            redis::pipe()
                .lrange(keys.in_flight(&consumer.name, fetch), 0, -1)
                .get(keys.settled(&consumer.name, fetch))
                .query_async(&mut conn),
        )
        .await?;
        let settled = settled.unwrap_or_default();
        let is_settled = |n: u32| {
            let bit = (n - 1) as usize;
            settled.get(bit / 8).is_some_and(|byte| byte & (0x80 >> (bit % 8)) != 0)
        };
        Ok((1..).zip(raws).filter(|(n, _)| !is_settled(*n)).collect())
    }

    /// Puts back what `name` has in flight and forgets it (see `reap.lua`);
    /// with `lapsed_before`, only if its heartbeat is older. `None` when the
    /// consumer is alive.
    async fn reap(&self, queue: &str, name: &str, lapsed_before: Option<i64>) -> Result<Option<usize>, BusError> {
        let keys = self.keys(queue);
        let mut conn = self.conn().await?;
        for _ in 0..DEPTHS_ATTEMPTS {
            let fetches: Vec<u64> = timed(conn.hkeys(keys.fetches(name))).await?;
            let mut call = self.scripts.reap.prepare_invoke();
            call.key(keys.consumers()).key(keys.pending()).key(keys.fetches(name)).key(keys.legacy_in_flight(name));
            call.arg(name).arg(lapsed_before.map(|ms| ms.to_string()).unwrap_or_default());
            for &fetch in &fetches {
                call.key(keys.in_flight(name, fetch)).key(keys.settled(name, fetch)).arg(fetch);
            }
            call.key(keys.reaped(name));
            let n: i64 = timed(call.invoke_async(&mut conn)).await?;
            match n {
                -1 => return Ok(None),
                -2 => continue,
                n => return Ok(Some(n.max(0) as usize)),
            }
        }
        Err(BusError::Protocol(format!(
            "the open fetches of {name} on {queue} changed on each of {DEPTHS_ATTEMPTS} reads; try again"
        )))
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
        let entries: Vec<(&Envelope, Option<Vec<u8>>)> = entries.iter_mut().map(|(e, raw)| (&*e, raw.take())).collect();
        self.push_entries(queue, &entries, None).await
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

/// Reads of a queue's depths (or of a consumer's open fetches, to reap
/// them) before giving up when what the script must be told changes
/// between every two calls (a depths retry declares what the previous call
/// found, so one quiet moment is enough).
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

/// Every text in an `INFO` reply: one string from a server, one per node
/// (as a map) from a cluster.
fn info_text(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => {
            out.push_str(&String::from_utf8_lossy(bytes));
            out.push('\n');
        }
        redis::Value::VerbatimString { text, .. } | redis::Value::SimpleString(text) => {
            out.push_str(text);
            out.push('\n');
        }
        redis::Value::Map(entries) => entries.iter().for_each(|(_, value)| info_text(value, out)),
        redis::Value::Array(values) => values.iter().for_each(|value| info_text(value, out)),
        _ => {}
    }
}

/// What in `INFO persistence memory` output (of one or more servers) can
/// lose acknowledged messages.
fn durability_risks(info: &str) -> Vec<String> {
    let fields = || info.lines().filter_map(|line| line.trim().split_once(':'));
    let mut risks = Vec::new();
    if fields().any(|(name, value)| name == "aof_enabled" && value == "0") {
        risks.push(
            "it keeps no append-only file (appendonly no), so a restart loses what was written since its last \
             snapshot, webhooks already answered 202 among them; turn on appendonly yes, or where the service \
             cannot, have a replica take over instead of an empty restart (docs/operations.md)"
                .to_string(),
        );
    }
    let mut policies: Vec<&str> = fields()
        .filter(|(name, value)| *name == "maxmemory_policy" && *value != "noeviction")
        .map(|(_, value)| value)
        .collect();
    policies.sort_unstable();
    policies.dedup();
    for policy in policies {
        risks.push(format!(
            "its maxmemory-policy is {policy}, so when full it deletes keys, queued messages among them; set it to \
             noeviction (docs/operations.md, \"When Redis is full\")"
        ));
    }
    risks
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
        let entries: Vec<(&Envelope, Option<Vec<u8>>)> = messages.iter().map(|e| (e, None)).collect();
        self.push_entries(queue, &entries, None).await.map(drop)
    }

    async fn push_vec(
        &self,
        queue: &str,
        messages: &mut Vec<Arc<Envelope>>,
        receipt: Option<Receipt<'_>>,
    ) -> Result<(), BusError> {
        let entries: Vec<(&Envelope, Option<Vec<u8>>)> = messages.iter().map(|e| (&**e, None)).collect();
        self.push_entries(queue, &entries, receipt).await?;
        messages.clear();
        Ok(())
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
        let (asked_before, expect) = {
            let mut fetched = self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let state = fetched.entry(consumer.name.clone()).or_default();
            let before = seq <= state.last;
            state.last = state.last.max(seq);
            (before, state.expect)
        };
        // Asked for again: its reply was lost, or it failed before leasing.
        // Should a lost transaction still run after this, what it leases
        // stays in this fetch's list, counted as in flight, and goes back
        // to pending when the consumer stops or its heartbeat lapses.
        let mut leased = if asked_before { self.leased(consumer, seq).await? } else { Vec::new() };
        if leased.is_empty() {
            let take = expect.map_or(max, |expect| max.min(expect.max(FETCH_FLOOR)));
            let left;
            (leased, left) = self.lease(consumer, seq, take).await?;
            let mut fetched = self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            fetched.entry(consumer.name.clone()).or_default().expect = Some(leased.len() + left);
        }

        let mut deliveries = Vec::with_capacity(leased.len());
        let mut garbage = Vec::new();
        for (n, raw) in leased {
            let token = LeaseToken { seq, n };
            match Envelope::decode(&raw) {
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
                        content: DeadContent::Raw(Bytes::from(raw)),
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
        call.key(keys.fetches(&consumer.name)).key(keys.keys());
        for &i in &keyed {
            let lease = &deliveries[i].lease;
            let key = lease.key.as_deref().unwrap_or("");
            call.key(keys.in_flight(&consumer.name, seq)).key(keys.settled(&consumer.name, seq)).key(keys.held(key));
            call.arg(seq).arg(lease.token.n).arg(key).arg(lease.id.as_deref().unwrap_or(""));
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

    async fn heartbeat(&self, consumer: &ConsumerId, reap_after_ms: Option<u64>) -> Result<HeartbeatReport, BusError> {
        let keys = self.keys(&consumer.queue);
        let mut conn = self.conn().await?;
        // The time is read once a connection is at hand: waiting for one
        // must not make the beat look older than it is.
        let now = now_ms();
        // Another consumer that declared this one dead left a note.
        let mut beat = redis::pipe();
        beat.get(keys.reaped(&consumer.name)).zadd(keys.consumers(), &consumer.name, now).ignore();
        let Some(timeout_ms) = reap_after_ms else {
            let (note,): (Option<Vec<u8>>,) = timed(beat.query_async(&mut conn)).await?;
            // `|`, not `||`: a fetch's finding is reported once, so it is
            // always taken.
            let lapsed = self.new_note(consumer, note) | self.fetch_found_lapsed(consumer);
            return Ok(HeartbeatReport { lapsed, ..HeartbeatReport::default() });
        };
        let lapsed_before = now - timeout_ms as i64;
        let (note, lapsed): (Option<Vec<u8>>, Vec<String>) =
            timed(beat.zrangebyscore(keys.consumers(), "-inf", format!("({lapsed_before}")).query_async(&mut conn))
                .await?;
        drop(conn);
        let mut report = HeartbeatReport {
            lapsed: self.new_note(consumer, note) | self.fetch_found_lapsed(consumer),
            ..HeartbeatReport::default()
        };
        for name in lapsed {
            if let Some(n) = self.reap(&consumer.queue, &name, Some(lapsed_before)).await? {
                tracing::warn!(queue = %consumer.queue, consumer = %name, requeued = n,
                    "consumer heartbeat lapsed; its in-flight messages are back on pending");
                report.reaped_consumers += 1;
                report.requeued += n;
            }
        }
        Ok(report)
    }

    async fn deregister(&self, consumer: &ConsumerId) -> Result<usize, BusError> {
        self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&consumer.name);
        Ok(self.reap(&consumer.queue, &consumer.name, None).await?.unwrap_or(0))
    }

    async fn wait_for_work(&self, _queue: &str, max_wait: Duration) {
        // Redis lists cannot be blocked on without giving up the atomic
        // lease, so idle consumers poll; the runner grows the wait.
        tokio::time::sleep(max_wait).await;
    }

    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let keys = self.keys(queue);
        let mut conn = self.conn().await?;
        // The script must be told which consumers' open fetches and held lists to
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
                call.key(keys.fetches(consumer)).arg(consumer);
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
        let mut raws: Vec<Vec<u8>> =
            timed(conn.lrange(self.keys(queue).pending(), -isize::try_from(n).unwrap_or(isize::MAX), -1)).await?;
        raws.reverse();
        Ok(raws.into_iter().map(|raw| Envelope::decode(&raw).map_err(|_| Bytes::from(raw))).collect())
    }

    async fn dead_list(&self, queue: &str, n: usize) -> Result<Vec<DeadLetter>, BusError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        // `usize::MAX` means all of them (not `-2`, which would miss the last).
        let last = isize::try_from(n).unwrap_or(isize::MAX) - 1;
        let raws: Vec<Vec<u8>> = timed(conn.lrange(self.keys(queue).dead(), 0, last)).await?;
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

    async fn durability_risks(&self) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn().await?;
        // `INFO`, not `CONFIG GET`: Heroku Redis and other managed services
        // refuse CONFIG. Two sections in one call (Redis 7). A cluster
        // answers for each of its nodes.
        let info: redis::Value =
            timed(redis::cmd("INFO").arg("persistence").arg("memory").query_async(&mut conn)).await?;
        let mut text = String::new();
        info_text(&info, &mut text);
        Ok(durability_risks(&text))
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
