//! The effects notify already had: a subscriber delivery its subscriber
//! answered 2xx to, a change written back to GitHub.
//!
//! The bus delivers at least once (SPEC §4): a message comes again when its
//! acknowledgement was cut off, and upstream stages may emit the same
//! `record.synced` twice (outputs are enqueued before the acknowledgement).
//! Before POSTing or writing back, notify looks its effect up here and skips
//! what was done, so a subscriber gets one POST per change and GitHub one
//! write, whichever path the duplicate took. The only window left is a crash
//! between the effect and its record, where the subscriber still has the
//! stable `X-Hookbus-Delivery` to deduplicate on.
//!
//! A write-back that *creates* (an issue, a comment, a release) is the one
//! effect GitHub cannot repeat harmlessly: a second POST makes a second
//! issue (or, for a release, fails: its tag has one). So
//! before such a POST notify also records when it [began](EffectLog::begin)
//! it. A message that finds an earlier beginning but no record may have
//! created the resource already (the answer was lost, or the process died
//! before recording), and looks for it on GitHub before creating it again
//! ([`crate::writeback::GitHub::find_created`]).
//!
//! Effects are remembered for [`REMEMBER_FOR`]: redeliveries come within
//! seconds to minutes; an operator retrying an old dead letter of an earlier
//! stage a day later sends its effects again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hookbus_bus::redis::RedisConnection;

use crate::error::NotifyError;

/// How long an effect is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 3_600);

/// The effect of a delivery to a subscriber.
pub fn delivery(delivery_id: &str) -> String {
    format!("delivery:{delivery_id}")
}

/// The effect of an operation's write-back to GitHub.
pub fn writeback(operation: &str) -> String {
    format!("writeback:{operation}")
}

#[async_trait]
pub trait EffectLog: Send + Sync + 'static {
    /// Whether `effect` was recorded (within [`REMEMBER_FOR`]).
    async fn done(&self, effect: &str) -> Result<bool, NotifyError>;
    /// Records that `effect` happened.
    async fn record(&self, effect: &str) -> Result<(), NotifyError>;
    /// Records that an attempt at `effect` begins at `now_ms` (ms since the
    /// epoch), unless one began before; returns when the first one began.
    async fn begin(&self, effect: &str, now_ms: i64) -> Result<Option<i64>, NotifyError>;
}

/// In Redis: `<prefix>:notify:done:<effect>`, one key per effect with an
/// expiry (docs/redis-layout.md, "Notify keys"). No hash tag: on a cluster
/// the keys spread over every slot.
pub struct RedisEffectLog {
    conn: RedisConnection,
    prefix: String,
}

impl RedisEffectLog {
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        RedisEffectLog { conn, prefix: prefix.to_string() }
    }

    fn key(&self, effect: &str) -> String {
        format!("{}:notify:done:{effect}", self.prefix)
    }

    fn began_key(&self, effect: &str) -> String {
        format!("{}:notify:began:{effect}", self.prefix)
    }
}

fn remember_for_ms() -> u64 {
    u64::try_from(REMEMBER_FOR.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl EffectLog for RedisEffectLog {
    async fn done(&self, effect: &str) -> Result<bool, NotifyError> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("EXISTS").arg(self.key(effect)).query_async(&mut conn).await?;
        Ok(n > 0)
    }

    async fn record(&self, effect: &str) -> Result<(), NotifyError> {
        let mut conn = self.conn.clone();
        let () = redis::cmd("SET")
            .arg(self.key(effect))
            .arg(1)
            .arg("PX")
            .arg(remember_for_ms())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn begin(&self, effect: &str, now_ms: i64) -> Result<Option<i64>, NotifyError> {
        let mut conn = self.conn.clone();
        // Set if absent, else read: the first beginning is kept.
        let earlier: Option<String> = redis::cmd("SET")
            .arg(self.began_key(effect))
            .arg(now_ms)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(remember_for_ms())
            .query_async(&mut conn)
            .await?;
        // Unreadable (written by hand?) counts as "began at some time": the
        // lookup then searches from the start of the remembered period.
        let window = i64::try_from(REMEMBER_FOR.as_millis()).unwrap_or(i64::MAX);
        Ok(earlier.map(|v| v.parse().unwrap_or(now_ms.saturating_sub(window))))
    }
}

/// One process's effects (`hookbus dev`, tests): forgotten after
/// [`REMEMBER_FOR`], pruned as the map grows.
pub struct MemoryEffectLog {
    remember_for: Duration,
    seen: Mutex<Seen>,
}

struct Seen {
    at: HashMap<String, Instant>,
    /// Beginnings: when (ms since the epoch) and when to forget them.
    began: HashMap<String, (i64, Instant)>,
    prune_at: usize,
}

const FIRST_PRUNE: usize = 1_024;

impl Default for MemoryEffectLog {
    fn default() -> Self {
        Self::remembering_for(REMEMBER_FOR)
    }
}

impl MemoryEffectLog {
    pub fn remembering_for(remember_for: Duration) -> Self {
        MemoryEffectLog {
            remember_for,
            seen: Mutex::new(Seen { at: HashMap::new(), began: HashMap::new(), prune_at: FIRST_PRUNE }),
        }
    }

    /// How many effects are held (expired ones until the next prune).
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl EffectLog for MemoryEffectLog {
    async fn done(&self, effect: &str) -> Result<bool, NotifyError> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok(seen.at.get(effect).is_some_and(|at| at.elapsed() < self.remember_for))
    }

    async fn record(&self, effect: &str) -> Result<(), NotifyError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.at.insert(effect.to_string(), Instant::now());
        if seen.at.len() >= seen.prune_at {
            let remember_for = self.remember_for;
            seen.at.retain(|_, at| at.elapsed() < remember_for);
            seen.began.retain(|_, (_, at)| at.elapsed() < remember_for);
            // Pruning again only once the live set doubled keeps it
            // amortised constant per record.
            seen.prune_at = (seen.at.len() * 2).max(FIRST_PRUNE);
        }
        Ok(())
    }

    async fn begin(&self, effect: &str, now_ms: i64) -> Result<Option<i64>, NotifyError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((earlier, at)) = seen.began.get(effect) {
            if at.elapsed() < self.remember_for {
                return Ok(Some(*earlier));
            }
        }
        seen.began.insert(effect.to_string(), (now_ms, Instant::now()));
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_log_forgets_expired_effects_when_it_grows() {
        let log = MemoryEffectLog::remembering_for(Duration::from_millis(20));
        log.record(&delivery("d-1")).await.expect("record");
        assert!(log.done(&delivery("d-1")).await.expect("done"));
        assert!(!log.done(&writeback("d-1")).await.expect("done"), "kinds of effect are apart");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!log.done(&delivery("d-1")).await.expect("done"), "expired");
        for n in 0..FIRST_PRUNE {
            log.record(&delivery(&n.to_string())).await.expect("record");
        }
        assert_eq!(log.len(), FIRST_PRUNE, "d-1 was pruned when the map reached the threshold");
    }
}
