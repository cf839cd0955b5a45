//! The in-memory backend: the Redis backend's semantics inside one process.
//!
//! Used by `hookbus dev` and by tests that do not need durability. Every rule
//! of the Redis scripts has its twin here (leases by fetch sequence, key locks
//! handed on at settle time, delayed retries promoted on fetch, consumers
//! reaped when their heartbeat lapses); `tests/behaviour.rs` holds both to the
//! same suite. Nothing survives the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::backend::{
    minute_of, Backend, ConsumerId, DeadSelector, Delivery, HeartbeatReport, Lease, LeaseToken, MinuteCounts,
    ProcessReport, QueueDepths, Receipt, Settlement, SweepReport, PROCESS_KEEP_MS, THROUGHPUT_MINUTES,
};
use crate::envelope::{now_ms, DeadContent, DeadLetter, Envelope};
use crate::error::BusError;

/// Queues in this process's memory.
#[derive(Default)]
pub struct MemoryBackend {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Capped journals, newest first.
    journals: Mutex<HashMap<String, VecDeque<serde_json::Value>>>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    work: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Front is the head: the next message to fetch. Shared, so leasing one
    /// costs no copy (and moving one around moves a pointer).
    pending: VecDeque<Arc<Envelope>>,
    /// Keyed by (due ms, insertion number) so equal due times keep order.
    delayed: BTreeMap<(i64, u64), Envelope>,
    delayed_seq: u64,
    /// Front is the newest.
    dead: VecDeque<DeadLetter>,
    consumers: HashMap<String, ConsumerState>,
    /// Key -> id of the message allowed to run for it.
    key_holders: HashMap<String, String>,
    /// Key -> messages waiting behind the holder, oldest first.
    held: HashMap<String, VecDeque<Arc<Envelope>>>,
    /// No sweep before this time (ms): the Redis twin's `sweep` lock.
    sweep_locked_until: i64,
    /// Settled messages per minute (start ms), the last hour.
    throughput: BTreeMap<i64, MinuteCounts>,
    /// Worker processes' reports by process name.
    processes: HashMap<String, ProcessReport>,
    /// Producer -> seq of its last receipted push (see [`Receipt`]).
    receipts: HashMap<String, u64>,
}

#[derive(Default)]
struct ConsumerState {
    last_seen_ms: i64,
    /// Leased messages by fetch sequence number, each fetch's in fetch order
    /// (lease `n` at index `n - 1`); a settled one leaves `None` behind, and
    /// the fetch goes once all of its messages are settled. One entry per
    /// batch rather than per message: a lease costs a slot, not a tree node.
    in_flight: BTreeMap<u64, Fetched>,
}

struct Fetched {
    leased: Vec<Option<Arc<Envelope>>>,
    /// How many of `leased` are still `Some`.
    open: usize,
}

impl ConsumerState {
    fn in_flight_len(&self) -> usize {
        self.in_flight.values().map(|f| f.open).sum()
    }

    /// Takes the leased message back, if it is still this consumer's.
    fn take(&mut self, token: LeaseToken) -> Option<Arc<Envelope>> {
        let fetched = self.in_flight.get_mut(&token.seq)?;
        let slot = fetched.leased.get_mut((token.n as usize).checked_sub(1)?)?;
        let envelope = slot.take()?;
        fetched.open -= 1;
        if fetched.open == 0 {
            self.in_flight.remove(&token.seq);
        }
        Some(envelope)
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        let mut queues = lock(&self.queues);
        if let Some(queue) = queues.get(name) {
            return queue.clone();
        }
        queues.entry(name.to_string()).or_default().clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state half-updated in a
    // way later callers could not cope with; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QueueState {
    /// Enqueues at the tail, taking the key's lock or waiting behind it.
    fn admit(&mut self, envelope: Arc<Envelope>) {
        match &envelope.key {
            None => self.pending.push_back(envelope),
            Some(key) => match self.key_holders.get(key) {
                Some(holder) if holder != &envelope.id => self.held.entry(key.clone()).or_default().push_back(envelope),
                _ => {
                    self.key_holders.insert(key.clone(), envelope.id.clone());
                    self.pending.push_back(envelope);
                }
            },
        }
    }

    /// Hands the key to the next waiting message, if `id` holds it.
    fn release(&mut self, key: &str, id: &str) {
        if self.key_holders.get(key).map(String::as_str) != Some(id) {
            return;
        }
        let next = self.held.get_mut(key).and_then(VecDeque::pop_front);
        match next {
            Some(next) => {
                self.key_holders.insert(key.to_string(), next.id.clone());
                self.pending.push_back(next);
            }
            None => {
                self.key_holders.remove(key);
            }
        }
        if self.held.get(key).is_some_and(VecDeque::is_empty) {
            self.held.remove(key);
        }
    }

    /// Moves due retries to the head, earliest due first.
    fn promote_due(&mut self, now: i64) {
        let mut due = Vec::new();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        for envelope in due.into_iter().rev() {
            self.pending.push_front(Arc::new(envelope));
        }
    }

    /// Counts settled messages in the current minute; forgets minutes older
    /// than the kept window.
    fn count(&mut self, handled: u64, retried: u64, dead: u64) {
        if handled + retried + dead == 0 {
            return;
        }
        let minute = minute_of(now_ms());
        let counts = self.throughput.entry(minute).or_insert_with(|| MinuteCounts { minute, ..Default::default() });
        counts.handled += handled;
        counts.retried += retried;
        counts.dead += dead;
        let oldest = minute - THROUGHPUT_MINUTES as i64 * 60_000;
        while self.throughput.first_key_value().is_some_and(|(m, _)| *m <= oldest) {
            self.throughput.pop_first();
        }
    }

    /// Puts a consumer's leases back at the head, in fetch order.
    fn requeue_all(&mut self, consumer: &str) -> usize {
        let Some(state) = self.consumers.remove(consumer) else { return 0 };
        let leased: Vec<Arc<Envelope>> = state.in_flight.into_values().flat_map(|f| f.leased).flatten().collect();
        let n = leased.len();
        for envelope in leased.into_iter().rev() {
            self.pending.push_front(envelope);
        }
        n
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn push(&self, queue: &str, messages: &[Envelope]) -> Result<(), BusError> {
        let q = self.queue(queue);
        {
            let mut state = lock(&q.state);
            for envelope in messages {
                state.admit(Arc::new(envelope.clone()));
            }
        }
        q.work.notify_waiters();
        Ok(())
    }

    async fn push_vec(
        &self,
        queue: &str,
        messages: &mut Vec<Arc<Envelope>>,
        receipt: Option<Receipt<'_>>,
    ) -> Result<(), BusError> {
        let q = self.queue(queue);
        {
            let mut state = lock(&q.state);
            if let Some(receipt) = receipt {
                // Looked up by `&str`: the producer's name is copied once, on
                // its first push, not on every push.
                match state.receipts.get_mut(receipt.producer) {
                    Some(last) if *last >= receipt.seq => {
                        messages.clear();
                        return Ok(());
                    }
                    Some(last) => *last = receipt.seq,
                    None => {
                        state.receipts.insert(receipt.producer.to_string(), receipt.seq);
                    }
                }
            }
            for envelope in messages.drain(..) {
                state.admit(envelope);
            }
        }
        q.work.notify_waiters();
        Ok(())
    }

    async fn push_raw(&self, queue: &str, raw: Bytes) -> Result<(), BusError> {
        // Nothing but envelopes can live in memory: what does not decode is
        // dead-lettered on arrival, as the Redis backend does on fetch.
        let q = self.queue(queue);
        let mut state = lock(&q.state);
        match Envelope::decode(&raw) {
            Ok(envelope) => state.admit(Arc::new(envelope)),
            Err(err) => {
                state.dead.push_front(DeadLetter {
                    content: DeadContent::Raw(raw),
                    reason: format!("undecodable message: {err}"),
                    dead_at: now_ms(),
                });
                state.count(0, 0, 1);
            }
        }
        drop(state);
        q.work.notify_waiters();
        Ok(())
    }

    async fn register(&self, consumer: &ConsumerId) -> Result<(), BusError> {
        let q = self.queue(&consumer.queue);
        let mut state = lock(&q.state);
        state.consumers.entry(consumer.name.clone()).or_default().last_seen_ms = now_ms();
        Ok(())
    }

    async fn fetch(&self, consumer: &ConsumerId, seq: u64, max: usize) -> Result<Vec<Delivery>, BusError> {
        let q = self.queue(&consumer.queue);
        let mut state = lock(&q.state);
        let now = now_ms();
        state.promote_due(now);
        let state = &mut *state;
        if !state.consumers.contains_key(&consumer.name) {
            state.consumers.insert(consumer.name.clone(), ConsumerState::default());
        }
        let Some(me) = state.consumers.get_mut(&consumer.name) else { return Ok(Vec::new()) };
        me.last_seen_ms = now;
        if let Some(fetched) = me.in_flight.get(&seq) {
            // The same fetch again (the caller did not get our answer): the
            // same leases.
            return Ok(fetched
                .leased
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().map(|e| delivery(LeaseToken { seq, n: i as u32 + 1 }, e.clone())))
                .collect());
        }
        let take = max.min(state.pending.len());
        if take == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(take);
        let mut leased = Vec::with_capacity(take);
        for (n, envelope) in state.pending.drain(..take).enumerate() {
            out.push(delivery(LeaseToken { seq, n: n as u32 + 1 }, envelope.clone()));
            leased.push(Some(envelope));
        }
        me.in_flight.insert(seq, Fetched { leased, open: take });
        // A keyed message that did not take its lock at push time (it cannot
        // happen here, but the Redis twin must cope with foreign producers)
        // would be parked; in memory every push went through `admit`.
        Ok(out)
    }

    async fn settle(&self, consumer: &ConsumerId, settlements: &[(Lease, Settlement)]) -> Result<(), BusError> {
        let q = self.queue(&consumer.queue);
        let mut state = lock(&q.state);
        let pending_before = state.pending.len();
        let (mut handled, mut retried, mut dead) = (0, 0, 0);
        // No longer ours when we were taken for dead: all were put back.
        let Some(me) = state.consumers.get_mut(&consumer.name) else { return Ok(()) };
        let taken: Vec<Option<Arc<Envelope>>> = settlements.iter().map(|(lease, _)| me.take(lease.token)).collect();
        for ((_, settlement), held) in settlements.iter().zip(taken) {
            let Some(held) = held else {
                continue; // no longer ours: it was put back when we looked dead
            };
            let release = |state: &mut QueueState| {
                if let Some(key) = &held.key {
                    state.release(key, &held.id);
                }
            };
            match settlement {
                Settlement::Ack => {
                    handled += 1;
                    release(&mut state)
                }
                Settlement::Retry { envelope, due_ms } => {
                    retried += 1;
                    let n = state.delayed_seq;
                    state.delayed_seq += 1;
                    state.delayed.insert((*due_ms, n), Envelope::clone(envelope));
                }
                Settlement::Dead(letter) => {
                    dead += 1;
                    state.dead.push_front(DeadLetter::clone(letter));
                    release(&mut state);
                }
                Settlement::Requeue => state.pending.push_front(held),
            }
        }
        // Only a key handed on or a message put back makes new work; a retry
        // is found by the fetchers' own polling when it falls due.
        let woke = state.pending.len() > pending_before;
        state.count(handled, retried, dead);
        drop(state);
        if woke {
            q.work.notify_waiters();
        }
        Ok(())
    }

    async fn heartbeat(&self, consumer: &ConsumerId, reap_after_ms: Option<u64>) -> Result<HeartbeatReport, BusError> {
        let q = self.queue(&consumer.queue);
        let mut state = lock(&q.state);
        let now = now_ms();
        // Nothing here is lost to a restart: a registered consumer that is
        // unknown now was declared dead.
        let lapsed = !state.consumers.contains_key(&consumer.name);
        state.consumers.entry(consumer.name.clone()).or_default().last_seen_ms = now;
        let Some(timeout_ms) = reap_after_ms else {
            return Ok(HeartbeatReport { lapsed, ..HeartbeatReport::default() });
        };
        let reaped: Vec<String> = state
            .consumers
            .iter()
            .filter(|(_, c)| now - c.last_seen_ms > timeout_ms as i64)
            .map(|(name, _)| name.clone())
            .collect();
        let mut report = HeartbeatReport { lapsed, ..HeartbeatReport::default() };
        for name in reaped {
            report.reaped_consumers += 1;
            report.requeued += state.requeue_all(&name);
        }
        drop(state);
        if report.requeued > 0 {
            q.work.notify_waiters();
        }
        Ok(report)
    }

    async fn deregister(&self, consumer: &ConsumerId) -> Result<usize, BusError> {
        let q = self.queue(&consumer.queue);
        let n = lock(&q.state).requeue_all(&consumer.name);
        if n > 0 {
            q.work.notify_waiters();
        }
        Ok(n)
    }

    async fn wait_for_work(&self, queue: &str, max_wait: Duration) {
        let q = self.queue(queue);
        let notified = q.work.notified();
        let _ = tokio::time::timeout(max_wait, notified).await;
    }

    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let q = self.queue(queue);
        let state = lock(&q.state);
        Ok(QueueDepths {
            pending: state.pending.len() as u64,
            in_flight: state.consumers.values().map(|c| c.in_flight_len() as u64).sum(),
            delayed: state.delayed.len() as u64,
            held: state.held.values().map(|h| h.len() as u64).sum(),
            dead: state.dead.len() as u64,
            consumers: state.consumers.len() as u64,
        })
    }

    async fn peek(&self, queue: &str, n: usize) -> Result<Vec<Result<Envelope, Bytes>>, BusError> {
        let q = self.queue(queue);
        let state = lock(&q.state);
        Ok(state.pending.iter().take(n).map(|e| Ok(Envelope::clone(e))).collect())
    }

    async fn dead_list(&self, queue: &str, n: usize) -> Result<Vec<DeadLetter>, BusError> {
        let q = self.queue(queue);
        let state = lock(&q.state);
        Ok(state.dead.iter().take(n).cloned().collect())
    }

    async fn dead_retry(&self, queue: &str, which: &DeadSelector) -> Result<usize, BusError> {
        let q = self.queue(queue);
        let mut state = lock(&q.state);
        let n = redrive(&mut state, |letter| which.matches(letter), false);
        drop(state);
        q.work.notify_waiters();
        Ok(n)
    }

    async fn dead_purge(&self, queue: &str, which: &DeadSelector) -> Result<usize, BusError> {
        let q = self.queue(queue);
        let mut state = lock(&q.state);
        let before = state.dead.len();
        state.dead.retain(|letter| !which.matches(letter));
        Ok(before - state.dead.len())
    }

    async fn sweep_dead(&self, queue: &str, interval_ms: u64, max_redrives: u32) -> Result<SweepReport, BusError> {
        let q = self.queue(queue);
        let mut state = lock(&q.state);
        let now = now_ms();
        if now < state.sweep_locked_until {
            return Ok(SweepReport::default());
        }
        state.sweep_locked_until = now + interval_ms.max(1) as i64;
        let settled_before = now - interval_ms as i64;
        let given_up = state
            .dead
            .iter()
            .filter(|letter| !sweepable(letter, max_redrives) && letter.dead_at <= settled_before)
            .cloned()
            .collect();
        let redriven =
            redrive(&mut state, |letter| sweepable(letter, max_redrives) && letter.dead_at <= settled_before, true);
        drop(state);
        q.work.notify_waiters();
        Ok(SweepReport { ran: true, redriven, given_up })
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn throughput(&self, queue: &str, minutes: usize) -> Result<Vec<MinuteCounts>, BusError> {
        let q = self.queue(queue);
        let state = lock(&q.state);
        Ok(minutes_back(minutes)
            .map(|minute| {
                state.throughput.get(&minute).cloned().unwrap_or(MinuteCounts { minute, ..Default::default() })
            })
            .collect())
    }

    async fn report_process(&self, report: &ProcessReport) -> Result<(), BusError> {
        let q = self.queue(&report.queue);
        let mut state = lock(&q.state);
        let newer_run = state.processes.get(&report.process).is_some_and(|r| r.started_at > report.started_at);
        if !newer_run {
            state.processes.insert(report.process.clone(), report.clone());
        }
        let forget_before = now_ms() - PROCESS_KEEP_MS as i64;
        state.processes.retain(|_, r| r.last_seen >= forget_before);
        Ok(())
    }

    async fn processes(&self, queue: &str) -> Result<Vec<ProcessReport>, BusError> {
        let q = self.queue(queue);
        let state = lock(&q.state);
        let forget_before = now_ms() - PROCESS_KEEP_MS as i64;
        let mut found: Vec<ProcessReport> =
            state.processes.values().filter(|r| r.last_seen >= forget_before).cloned().collect();
        found.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.process.cmp(&b.process)));
        Ok(found)
    }

    async fn journal_append(&self, journal: &str, entry: &serde_json::Value, keep: usize) -> Result<(), BusError> {
        let mut journals = lock(&self.journals);
        let entries = journals.entry(journal.to_string()).or_default();
        entries.push_front(entry.clone());
        entries.truncate(keep.max(1));
        Ok(())
    }

    async fn journal_recent(&self, journal: &str, n: usize) -> Result<Vec<serde_json::Value>, BusError> {
        let journals = lock(&self.journals);
        Ok(journals.get(journal).map(|entries| entries.iter().take(n).cloned().collect()).unwrap_or_default())
    }
}

/// The starts of the last `minutes` minutes (at most the kept window),
/// oldest first, ending with the current one.
pub(crate) fn minutes_back(minutes: usize) -> impl Iterator<Item = i64> {
    let now = minute_of(now_ms());
    let n = minutes.clamp(1, THROUGHPUT_MINUTES) as i64;
    (0..n).rev().map(move |back| now - back * 60_000)
}

fn delivery(token: LeaseToken, envelope: Arc<Envelope>) -> Delivery {
    let id = envelope.key.as_ref().map(|_| envelope.id.clone());
    Delivery { lease: Lease { token, id, key: envelope.key.clone() }, envelope }
}

/// Whether the sweep may re-drive this letter.
pub(crate) fn sweepable(letter: &DeadLetter, max_redrives: u32) -> bool {
    matches!(&letter.content, DeadContent::Envelope(e) if e.redrives < max_redrives)
}

/// The envelope a re-driven letter goes back as: a fresh start on attempts.
pub(crate) fn revived(envelope: &Envelope, count_redrive: bool) -> Envelope {
    let mut revived = envelope.clone();
    revived.attempts = 0;
    if count_redrive {
        revived.redrives += 1;
    }
    revived
}

fn redrive(state: &mut QueueState, pick: impl Fn(&DeadLetter) -> bool, count_redrive: bool) -> usize {
    let (chosen, kept): (Vec<DeadLetter>, Vec<DeadLetter>) = state.dead.drain(..).partition(|l| pick(l));
    state.dead = kept.into();
    let mut n = 0;
    // Oldest first, so re-driven messages keep their relative order.
    for letter in chosen.into_iter().rev() {
        match &letter.content {
            DeadContent::Envelope(envelope) => {
                state.admit(Arc::new(revived(envelope, count_redrive)));
                n += 1;
            }
            DeadContent::Raw(_) => state.dead.push_front(letter), // bytes can never be handled
        }
    }
    n
}
