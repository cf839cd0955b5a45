//! The runner: drives one [`Plugin`] over one queue.
//!
//! Four kinds of task cooperate:
//!
//! - the **fetcher** leases batches, never more than there are free slots
//!   (`concurrency + batch_size` messages leased at once), onto a shared
//!   work queue;
//! - `concurrency` **workers** take messages off the work queue one at a
//!   time and run the handler inside a span carrying the message's
//!   `trace_id`; each hands its results to the settler in chunks (when the
//!   work queue runs dry, or every couple of milliseconds), so a burst costs
//!   a few channel operations per batch rather than per message;
//! - the **settler** batches results: it enqueues the outputs of finished
//!   messages first, then acknowledges them in one call — so a crash in
//!   between duplicates outputs (at-least-once) and never loses them;
//! - the **heartbeat** keeps this consumer alive, reaps dead ones, and runs
//!   the dead-letter sweep.
//!
//! A consumer that stalls (a frozen process, a VM paused) for longer than
//! the heartbeat timeout is declared dead by the others, and what it held
//! goes back to `pending` for someone else. When it wakes it must not
//! finish that work too: its [`Liveness`] notices (its next heartbeat finds
//! the note the reaper left; the settler asks before pushing outputs whenever the
//! last beat is older than half the timeout), handlers still running are
//! abandoned, and everything leased before is settled as `Requeue` with its
//! outputs dropped — a no-op for a lease that was put back, and back to
//! `pending` for one that was not. Effects a handler had already made
//! before it was abandoned stay made; handlers are idempotent.
//!
//! On shutdown the fetcher stops, workers finish what they started within
//! the grace period, and whatever is still leased goes back to the head of
//! `pending` with its attempt count unchanged.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use hookbus_config::{BusSettings, QueueSettings};
use rand::Rng;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backend::{
    process_name, Backend, ConsumerId, Delivery, Lease, ProcessReport, Receipt, Settlement, LATENCY_BOUNDS_MICROS,
};
use crate::envelope::{now_ms, DeadContent, DeadLetter, Envelope};
use crate::error::{BusError, HandlerError};
use crate::plugin::{ByQueue, Outbox, Plugin};
use crate::shutdown::Shutdown;

/// How a runner behaves; built from [`BusSettings`] for one queue.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub queue: QueueSettings,
    pub heartbeat_timeout: Duration,
    pub grace_period: Duration,
    /// Longest idle wait between polls of an empty queue.
    pub poll_interval: Duration,
    pub dead_sweep_interval: Duration,
    pub dead_max_redrives: u32,
    /// Where `bus.dead` notices go (None: nowhere).
    pub alert_queue: Option<String>,
}

impl RunnerOptions {
    pub fn from_settings(bus: &BusSettings, queue: &str) -> Self {
        RunnerOptions {
            queue: bus.queue(queue),
            heartbeat_timeout: bus.heartbeat_timeout(),
            grace_period: bus.grace_period(),
            poll_interval: Duration::from_millis(bus.poll_interval_ms),
            dead_sweep_interval: Duration::from_millis(bus.dead_sweep_interval_ms),
            dead_max_redrives: bus.dead_max_redrives,
            alert_queue: Some(bus.alert_queue.clone()).filter(|q| !q.is_empty()),
        }
    }
}

/// Counters of one runner, readable while it runs; published with the
/// heartbeat as this process's [`ProcessReport`].
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub handled: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    /// Total handler time, microseconds (divide by `handled + retried + dead`).
    pub handler_micros: AtomicU64,
    /// Longest handler run, microseconds.
    pub handler_max_micros: AtomicU64,
    /// Handler runs per latency bucket ([`LATENCY_BOUNDS_MICROS`], then one
    /// unbounded), so `/metrics` can show a histogram per process.
    pub latency_buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
}

impl RunnerStats {
    /// This runner's counters as a report (identity and times filled in by
    /// the caller).
    pub fn report(&self) -> ProcessReport {
        let buckets: Vec<u64> = self.latency_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        ProcessReport {
            handled: self.handled.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            latency_count: buckets.iter().sum(),
            latency_sum_micros: self.handler_micros.load(Ordering::Relaxed),
            latency_max_micros: self.handler_max_micros.load(Ordering::Relaxed),
            latency_buckets: buckets,
            ..ProcessReport::default()
        }
    }
}

/// One worker's counts since it last handed results over, added to the
/// shared [`RunnerStats`] once per chunk: the shared counters are written by
/// every worker on every core, and one write per message would have them
/// bounce between cores.
#[derive(Default)]
struct Tally {
    handled: u64,
    retried: u64,
    dead: u64,
    micros: u64,
    max_micros: u64,
    buckets: [u64; LATENCY_BOUNDS_MICROS.len() + 1],
}

impl Tally {
    fn record_latency(&mut self, micros: u64) {
        self.micros += micros;
        self.max_micros = self.max_micros.max(micros);
        let bucket =
            LATENCY_BOUNDS_MICROS.iter().position(|&bound| micros <= bound).unwrap_or(LATENCY_BOUNDS_MICROS.len());
        self.buckets[bucket] += 1;
    }

    fn flush(&mut self, stats: &RunnerStats) {
        let tally = std::mem::take(self);
        if tally.handled + tally.retried + tally.dead == 0 {
            return;
        }
        stats.handled.fetch_add(tally.handled, Ordering::Relaxed);
        stats.retried.fetch_add(tally.retried, Ordering::Relaxed);
        stats.dead.fetch_add(tally.dead, Ordering::Relaxed);
        stats.handler_micros.fetch_add(tally.micros, Ordering::Relaxed);
        stats.handler_max_micros.fetch_max(tally.max_micros, Ordering::Relaxed);
        for (shared, n) in stats.latency_buckets.iter().zip(tally.buckets) {
            if n > 0 {
                shared.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// How often a runner publishes its [`ProcessReport`] at most (and at least
/// once per heartbeat).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Who this runner is, for its reports.
#[derive(Clone)]
struct Reporter {
    process: String,
    queue: String,
    plugin: String,
    started_at: i64,
    interval: Duration,
    stats: Arc<RunnerStats>,
}

impl Reporter {
    fn report(&self, stopped: bool) -> ProcessReport {
        ProcessReport {
            process: self.process.clone(),
            queue: self.queue.clone(),
            plugin: self.plugin.clone(),
            started_at: self.started_at,
            last_seen: now_ms(),
            interval_ms: self.interval.as_millis() as u64,
            stopped,
            ..self.stats.report()
        }
    }
}

/// What a runner did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub handled: u64,
    pub retried: u64,
    pub dead: u64,
    /// Messages put back on `pending` at shutdown.
    pub requeued: usize,
}

/// Runs `plugin` until `shutdown` fires, then drains. Returns an error only
/// if the consumer could never be registered before shutdown.
pub async fn run(
    backend: Arc<dyn Backend>,
    plugin: Arc<dyn Plugin>,
    options: RunnerOptions,
    shutdown: Shutdown,
) -> Result<RunReport, BusError> {
    Runner::new(backend, plugin, options).run(shutdown).await
}

/// A plugin bound to a backend, with its counters.
pub struct Runner {
    backend: Arc<dyn Backend>,
    plugin: Arc<dyn Plugin>,
    options: RunnerOptions,
    stats: Arc<RunnerStats>,
}

/// What a worker hands the settler at once: how its finished messages are
/// to be settled, and everything they emitted, by queue; all leased in one
/// [`Liveness`] epoch.
struct Chunk {
    epoch: u64,
    settled: Vec<(Lease, Settlement)>,
    outputs: ByQueue,
}

impl Chunk {
    fn new(epoch: u64) -> Self {
        Chunk { epoch, settled: Vec::with_capacity(CHUNK), outputs: Vec::new() }
    }
}

/// Whether this consumer may still be holding what it leased. The epoch
/// counts the times it found itself declared dead; a lease belongs to the
/// epoch it was fetched in, and one of an earlier epoch is only ever
/// requeued (see the module's documentation).
struct Liveness {
    epoch: AtomicU64,
    /// One per worker (uncontended), fired when the epoch moves on: running
    /// handlers of the old one stop.
    watchers: Mutex<Vec<Arc<Notify>>>,
    /// When a heartbeat last went through, ms after `since`.
    last_beat_ms: AtomicU64,
    since: Instant,
    /// Past this age of the last beat, the consumer may have been declared
    /// dead: half the heartbeat timeout (others judge by their own clocks).
    doubt_after: Duration,
    /// One beat or fetch at a time, and what a beat found taken in before
    /// the next: of two at once only the first could take the reaper's
    /// note (a fetch takes it too, and tells the next beat).
    beating: tokio::sync::Mutex<()>,
}

impl Liveness {
    fn new(heartbeat_timeout: Duration) -> Self {
        Liveness {
            epoch: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            last_beat_ms: AtomicU64::new(0),
            since: Instant::now(),
            doubt_after: heartbeat_timeout / 2,
            beating: tokio::sync::Mutex::new(()),
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A worker's own notice that the epoch moved on.
    fn watch(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.watchers.lock().unwrap_or_else(|p| p.into_inner()).push(notify.clone());
        notify
    }

    /// A heartbeat sent at `at` went through.
    fn beat(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.since).as_millis() as u64;
        self.last_beat_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Whether the last beat is old enough that this consumer may have been
    /// declared dead meanwhile.
    fn in_doubt(&self) -> bool {
        let last = self.since + Duration::from_millis(self.last_beat_ms.load(Ordering::Acquire));
        last.elapsed() >= self.doubt_after
    }

    /// Beats (judging others with `reap_after_ms`) and takes in what the
    /// beat found.
    async fn beat_now(
        &self,
        backend: &dyn Backend,
        consumer: &ConsumerId,
        reap_after_ms: Option<u64>,
    ) -> Result<crate::backend::HeartbeatReport, BusError> {
        let _one = self.beating.lock().await;
        let at = Instant::now();
        let report = backend.heartbeat(consumer, reap_after_ms).await?;
        self.heard(&report, &consumer.queue, at);
        Ok(report)
    }

    /// What a heartbeat found: when this consumer had been declared dead,
    /// everything leased so far belongs to an epoch that is over.
    fn heard(&self, report: &crate::backend::HeartbeatReport, queue: &str, beat_at: Instant) {
        self.beat(beat_at);
        if report.lapsed {
            let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            for watcher in self.watchers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                watcher.notify_waiters();
            }
            tracing::warn!(%queue, epoch,
                "this consumer was declared dead (no heartbeat for the timeout: the process stalled?); what it held \
                 went back to pending for another consumer, so its running handlers are abandoned and their results \
                 dropped");
        }
    }
}

/// Leased messages waiting for a worker, each with its [`Liveness`] epoch.
#[derive(Default)]
struct WorkQueue {
    items: Mutex<VecDeque<(u64, Delivery)>>,
    ready: Notify,
    /// The fetcher has stopped: no more items will come.
    closed: AtomicBool,
    /// Shutdown fired: start nothing new. Workers look at this before every
    /// message; a plain flag, where asking the shutdown token takes a lock.
    stopping: AtomicBool,
}

impl WorkQueue {
    fn pop(&self) -> Option<(u64, Delivery)> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn is_empty(&self) -> bool {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    fn extend(&self, epoch: u64, deliveries: Vec<Delivery>, wake: usize) {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).extend(deliveries.into_iter().map(|d| (epoch, d)));
        for _ in 0..wake {
            self.ready.notify_one();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// A worker hands its results over at least this often while busy...
const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// ...and in chunks of at most this many, allocated once at this size.
const CHUNK: usize = 64;

impl Runner {
    pub fn new(backend: Arc<dyn Backend>, plugin: Arc<dyn Plugin>, options: RunnerOptions) -> Self {
        Runner { backend, plugin, options, stats: Arc::default() }
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<RunReport, BusError> {
        let queue = self.plugin.input().to_string();
        let consumer = ConsumerId::new(&queue);
        let mut backoff = Backoff::new();
        loop {
            match self.backend.register(&consumer).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(%queue, error = %err, "cannot register consumer; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(err),
                        _ = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
        tracing::info!(%queue, consumer = %consumer.name, plugin = self.plugin.name(), "consuming");

        let q = &self.options.queue;
        let slots = Arc::new(Semaphore::new(q.concurrency + q.batch_size));
        let work = Arc::new(WorkQueue::default());
        let liveness = Arc::new(Liveness::new(self.options.heartbeat_timeout));
        liveness.beat(Instant::now()); // registered just now
        let (done_tx, done_rx) = mpsc::channel::<Chunk>(q.concurrency * 2);
        // Fires after the grace period: whatever is still running is abandoned.
        let hard_stop = Shutdown::new();

        let stop_watch = tokio::spawn({
            let (work, shutdown) = (work.clone(), shutdown.clone());
            async move {
                shutdown.cancelled().await;
                work.stop();
            }
        });
        let mut workers = JoinSet::new();
        for _ in 0..q.concurrency {
            workers.spawn(worker(
                self.plugin.clone(),
                q.clone(),
                self.options.alert_queue.clone(),
                work.clone(),
                liveness.clone(),
                done_tx.clone(),
                self.stats.clone(),
            ));
        }
        drop(done_tx);
        let settler = tokio::spawn(settler(
            self.backend.clone(),
            consumer.clone(),
            done_rx,
            slots.clone(),
            liveness.clone(),
            hard_stop.clone(),
        ));
        let heartbeat_stop = Shutdown::new();
        let every = (self.options.heartbeat_timeout / 3).max(Duration::from_millis(100));
        let reporter = Reporter {
            process: process_name(),
            queue: queue.clone(),
            plugin: self.plugin.name().to_string(),
            started_at: now_ms(),
            interval: every.min(REPORT_EVERY),
            stats: self.stats.clone(),
        };
        let heartbeat = tokio::spawn(heartbeat(
            self.backend.clone(),
            consumer.clone(),
            self.options.clone(),
            reporter.clone(),
            liveness.clone(),
            heartbeat_stop.clone(),
        ));

        fetcher(&*self.backend, &consumer, &self.options, slots, &work, &liveness, &shutdown).await;
        work.stop();
        work.close();
        stop_watch.abort();

        // Drain: workers finish what they started (unstarted messages are
        // left leased), within the grace period.
        let deadline = tokio::time::Instant::now() + self.options.grace_period;
        let drained =
            tokio::time::timeout_at(deadline, async { while workers.join_next().await.is_some() {} }).await.is_ok();
        if !drained {
            tracing::warn!(%queue, "grace period over; abandoning unfinished handlers");
            workers.abort_all();
            while workers.join_next().await.is_some() {}
        }
        // The settler ends when the workers' senders are gone; give it until
        // the deadline to get the last acknowledgements through.
        let settler_abort = settler.abort_handle();
        if tokio::time::timeout_at(deadline + Duration::from_millis(500), settler).await.is_err() {
            hard_stop.trigger();
            settler_abort.abort();
        }
        heartbeat_stop.trigger();
        let _ = heartbeat.await;

        let mut requeued = 0;
        let mut backoff = Backoff::new();
        for _ in 0..5 {
            match self.backend.deregister(&consumer).await {
                Ok(n) => {
                    requeued = n;
                    break;
                }
                Err(err) => {
                    // Left in-flight, they return when our heartbeat lapses.
                    tracing::warn!(%queue, error = %err, "cannot put unfinished messages back yet");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
        // Goodbye: the admin page shows it stopped, not lost.
        if let Err(err) = self.backend.report_process(&reporter.report(true)).await {
            tracing::warn!(%queue, error = %err, "cannot publish the final process report");
        }
        let report = RunReport {
            handled: self.stats.handled.load(Ordering::Relaxed),
            retried: self.stats.retried.load(Ordering::Relaxed),
            dead: self.stats.dead.load(Ordering::Relaxed),
            requeued,
        };
        tracing::info!(%queue, handled = report.handled, retried = report.retried, dead = report.dead,
            requeued = report.requeued, "stopped");
        Ok(report)
    }
}

async fn fetcher(
    backend: &dyn Backend,
    consumer: &ConsumerId,
    options: &RunnerOptions,
    slots: Arc<Semaphore>,
    work: &WorkQueue,
    liveness: &Liveness,
    shutdown: &Shutdown,
) {
    let batch = options.queue.batch_size;
    let mut seq: u64 = 0;
    let mut idle = Duration::from_millis(1);
    let mut errors = Backoff::new();
    'fetching: while !shutdown.is_triggered() {
        let mut permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let extra = slots.available_permits().min(batch - 1) as u32;
        if let Ok(more) = slots.clone().try_acquire_many_owned(extra) {
            permit.merge(more);
        }
        seq += 1;
        // Read before the fetch: leases that arrive after this consumer
        // was found declared dead may predate that, and are requeued.
        let epoch = liveness.epoch();
        let deliveries = loop {
            // Not while a heartbeat is out: a fetch registers the consumer
            // too, and reports to the next beat whether it had lapsed.
            let fetched = {
                let _one = liveness.beating.lock().await;
                backend.fetch(consumer, seq, permit.num_permits()).await
            };
            match fetched {
                Ok(deliveries) => {
                    errors.reset();
                    break deliveries;
                }
                Err(err) => {
                    tracing::warn!(queue = %consumer.queue, error = %err, "fetch failed; retrying");
                    tokio::select! {
                        // What that fetch may have leased stays ours and goes
                        // back to pending when we deregister.
                        _ = shutdown.cancelled() => break 'fetching,
                        _ = tokio::time::sleep(errors.next()) => {}
                    }
                }
            }
        };
        if deliveries.is_empty() {
            drop(permit);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = backend.wait_for_work(&consumer.queue, idle) => {}
            }
            idle = (idle * 2).min(options.poll_interval);
            continue;
        }
        idle = Duration::from_millis(1);
        // One slot per leased message, given back by the settler.
        if let Some(used) = permit.split(deliveries.len()) {
            used.forget();
        }
        drop(permit);
        let wake = deliveries.len().min(options.queue.concurrency);
        work.extend(epoch, deliveries, wake);
    }
}

async fn worker(
    plugin: Arc<dyn Plugin>,
    queue: QueueSettings,
    alert_queue: Option<String>,
    work: Arc<WorkQueue>,
    liveness: Arc<Liveness>,
    done: mpsc::Sender<Chunk>,
    stats: Arc<RunnerStats>,
) {
    let mut chunk = Chunk::new(liveness.epoch());
    let lapses = liveness.watch();
    let mut outbox = Outbox::default();
    let mut tally = Tally::default();
    // One clock read per message, for its latency and as the next one's
    // start. quanta reads the TSC: the system clock (vDSO) was 7 % of a
    // stage's CPU in the in-memory pipeline benchmark, quanta about half.
    let mut since = quanta::Instant::now();
    let mut clock = quanta::Instant::now();
    loop {
        // After shutdown, messages not yet started stay leased and go back
        // to the head when the runner deregisters.
        let next = if work.stopping() { None } else { work.pop() };
        if let Some((epoch, delivery)) = next {
            // A chunk holds one epoch's results.
            if epoch != chunk.epoch && !chunk.settled.is_empty() {
                tally.flush(&stats);
                if done.send(std::mem::replace(&mut chunk, Chunk::new(epoch))).await.is_err() {
                    return;
                }
            }
            chunk.epoch = epoch;
            if chunk.settled.is_empty() {
                since = clock;
            }
            let Delivery { lease, envelope } = delivery;
            // Created before the epoch is read: a lapse in between is seen.
            let lapsed = lapses.notified();
            let ended = if epoch == liveness.epoch() {
                let handled = handle(
                    &*plugin,
                    &queue,
                    alert_queue.as_deref(),
                    &envelope,
                    &mut outbox,
                    &mut chunk.outputs,
                    &mut tally,
                    clock,
                );
                // The handler first: most finish on their first poll, and
                // the notice then costs nothing (it registers only when
                // polled). One that ends as the notice comes is kept; the
                // settler drops its outputs.
                tokio::select! {
                    biased;
                    (settlement, ended) = handled => {
                        chunk.settled.push((lease, settlement));
                        ended
                    }
                    () = lapsed => {
                        // Leased before this consumer was declared dead:
                        // someone else has it now.
                        outbox.clear();
                        abandon(&mut chunk, lease, &envelope);
                        quanta::Instant::now()
                    }
                }
            } else {
                abandon(&mut chunk, lease, &envelope);
                clock
            };
            clock = ended;
            if chunk.settled.len() >= CHUNK || ended.duration_since(since) >= FLUSH_EVERY {
                tally.flush(&stats);
                if done.send(std::mem::replace(&mut chunk, Chunk::new(liveness.epoch()))).await.is_err() {
                    return;
                }
            }
            continue;
        }
        tally.flush(&stats);
        if !chunk.settled.is_empty()
            && done.send(std::mem::replace(&mut chunk, Chunk::new(liveness.epoch()))).await.is_err()
        {
            return;
        }
        // Register for a wake-up before looking again, so an item pushed or
        // a stop in between is not missed.
        let ready = work.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if work.stopping() || work.closed.load(Ordering::Acquire) {
            return;
        }
        if !work.is_empty() {
            continue;
        }
        ready.await;
        clock = quanta::Instant::now();
    }
}

/// A message leased before this consumer was declared dead: not handled
/// (any more); settled as `Requeue`, which does nothing when its lease was
/// put back, as it normally was.
fn abandon(chunk: &mut Chunk, lease: Lease, envelope: &Envelope) {
    tracing::warn!(id = %envelope.id, trace_id = %envelope.trace_id,
        "abandoned: leased before this consumer was declared dead; another consumer handles it");
    chunk.settled.push((lease, Settlement::Requeue));
}

/// Runs the handler on one message (starting at `started`), adds what it
/// emitted to `outputs`, and returns how to settle it and when it ended, so
/// the caller needs no clock read of its own. `outbox` is the worker's,
/// empty.
#[allow(clippy::too_many_arguments)]
async fn handle(
    plugin: &dyn Plugin,
    queue: &QueueSettings,
    alert_queue: Option<&str>,
    envelope: &Arc<Envelope>,
    outbox: &mut Outbox,
    outputs: &mut ByQueue,
    tally: &mut Tally,
    started: quanta::Instant,
) -> (Settlement, quanta::Instant) {
    let span = tracing::info_span!(
        "message",
        queue = plugin.input(),
        id = %envelope.id,
        kind = %envelope.kind,
        trace_id = %envelope.trace_id,
        attempt = envelope.attempts + 1,
    );
    outbox.retrace(&envelope.trace_id);
    let result =
        AssertUnwindSafe(plugin.handle(envelope, outbox)).catch_unwind().instrument(span.clone()).await.unwrap_or_else(
            |panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(HandlerError::Transient(format!("handler panicked: {what}")))
            },
        );
    let ended = quanta::Instant::now();
    tally.record_latency(ended.duration_since(started).as_micros() as u64);
    let _entered = span.enter();
    let settlement = match result {
        Ok(()) => {
            tally.handled += 1;
            let emitted = outbox.len();
            outbox.drain_into(outputs);
            // One line per message per stage, inside the span (trace_id):
            // what lets one webhook be followed across dynos.
            tracing::info!(elapsed_ms = ended.duration_since(started).as_millis() as u64, outputs = emitted, "handled");
            Settlement::Ack
        }
        Err(err) => {
            outbox.clear();
            let settlement = failure(queue, Envelope::clone(envelope), err);
            match &settlement {
                Settlement::Dead(letter) => {
                    tally.dead += 1;
                    if let DeadContent::Envelope(envelope) = &letter.content {
                        // Tell whoever waits on this message that it gave up;
                        // stored with the dead letter, before the ack.
                        let mut last_words = Outbox::new(&envelope.trace_id);
                        plugin.on_dead(envelope, &letter.reason, &mut last_words);
                        if let Some(alerts) = alert_queue {
                            if let Some(notice) = dead_notice(plugin.input(), letter, false) {
                                last_words.emit(alerts, notice);
                            }
                        }
                        last_words.drain_into(outputs);
                    }
                }
                _ => {
                    tally.retried += 1;
                }
            }
            settlement
        }
    };
    (settlement, ended)
}

/// Decides what a failed message becomes.
fn failure(queue: &QueueSettings, mut envelope: Envelope, err: HandlerError) -> Settlement {
    match err {
        HandlerError::Permanent(reason) => {
            tracing::error!(reason = %reason, "dead-lettered: permanent failure");
            dead(envelope, reason)
        }
        HandlerError::Defer(delay, reason) => {
            tracing::info!(delay_ms = delay.as_millis() as u64, reason = %reason, "deferred");
            Settlement::Retry { due_ms: now_ms() + delay.as_millis() as i64, envelope: Box::new(envelope) }
        }
        HandlerError::Transient(reason) => {
            envelope.attempts += 1;
            if envelope.attempts >= queue.max_attempts {
                let reason = format!("gave up after {} attempts: {reason}", envelope.attempts);
                tracing::error!(reason = %reason, "dead-lettered");
                return dead(envelope, reason);
            }
            let delay = retry_delay(queue, envelope.attempts);
            tracing::warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "failed; will retry");
            Settlement::Retry { due_ms: now_ms() + delay.as_millis() as i64, envelope: Box::new(envelope) }
        }
    }
}

fn dead(envelope: Envelope, reason: String) -> Settlement {
    Settlement::Dead(Box::new(DeadLetter { content: DeadContent::Envelope(envelope), reason, dead_at: now_ms() }))
}

/// Kind of the notice sent to the alert queue about a dead message.
pub const DEAD_NOTICE_KIND: &str = "bus.dead";

/// The `bus.dead` payload (docs/wire-format.md).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeadNotice {
    pub queue: String,
    pub id: String,
    pub kind: String,
    pub trace_id: String,
    pub reason: String,
    pub attempts: u32,
    pub redrives: u32,
    pub dead_at: i64,
    /// True when the sweep gave up re-driving it (it stays dead).
    pub given_up: bool,
}

/// The notice about `letter` dying on `queue`. None for a notice itself
/// (an alert that cannot be delivered must not alert about itself forever).
pub fn dead_notice(queue: &str, letter: &DeadLetter, given_up: bool) -> Option<Envelope> {
    let DeadContent::Envelope(envelope) = &letter.content else {
        let notice = DeadNotice {
            queue: queue.to_string(),
            id: letter.id(),
            kind: "(undecodable)".into(),
            trace_id: String::new(),
            reason: letter.reason.clone(),
            attempts: 0,
            redrives: 0,
            dead_at: letter.dead_at,
            given_up,
        };
        return Envelope::with_payload(DEAD_NOTICE_KIND, &notice).ok();
    };
    if envelope.kind == DEAD_NOTICE_KIND {
        return None;
    }
    let notice = DeadNotice {
        queue: queue.to_string(),
        id: envelope.id.clone(),
        kind: envelope.kind.to_string(),
        trace_id: envelope.trace_id.clone(),
        reason: letter.reason.clone(),
        attempts: envelope.attempts,
        redrives: envelope.redrives,
        dead_at: letter.dead_at,
        given_up,
    };
    Envelope::with_payload(DEAD_NOTICE_KIND, &notice).ok().map(|e| e.traced(envelope.trace_id.clone()))
}

/// Exponential backoff with "equal jitter": half the step fixed, half random,
/// so retries of a burst spread out but never come back instantly.
pub fn retry_delay(queue: &QueueSettings, failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(32);
    let step = queue.backoff_base_ms.saturating_mul(1u64 << exp).min(queue.backoff_max_ms);
    let half = step / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=half))
}

async fn settler(
    backend: Arc<dyn Backend>,
    consumer: ConsumerId,
    mut done: mpsc::Receiver<Chunk>,
    slots: Arc<Semaphore>,
    liveness: Arc<Liveness>,
    hard_stop: Shutdown,
) {
    let mut chunks = Vec::new();
    // Each push of outputs goes under a receipt of its own, and a retry
    // under the same one: a push applied whose reply was lost (a dropped
    // connection, a Redis restart) is not applied twice.
    let mut pushes: u64 = 0;
    while done.recv_many(&mut chunks, 64).await > 0 {
        // Outputs go out only while this consumer still holds what made
        // them: after a stall, ask before pushing.
        if liveness.in_doubt() {
            if let Err(err) = liveness.beat_now(&*backend, &consumer, None).await {
                // Unknown (Redis unreachable from here): the push below
                // fails too, and asks again before each retry.
                tracing::debug!(queue = %consumer.queue, error = %err, "liveness check failed");
            }
        }
        let epoch = liveness.epoch();
        for chunk in chunks.iter_mut().filter(|chunk| chunk.epoch < epoch) {
            chunk.outputs.clear();
            for (_, settlement) in &mut chunk.settled {
                *settlement = Settlement::Requeue;
            }
        }
        let n: usize = chunks.iter().map(|c| c.settled.len()).sum();
        // Each queue's outputs in one vector, sized up front: envelopes are
        // big enough that growing it as we go would copy them twice more.
        let mut sizes: Vec<(&str, usize)> = Vec::new();
        for (queue, list) in chunks.iter().flat_map(|c| &c.outputs) {
            match sizes.iter_mut().find(|(q, _)| q == queue) {
                Some((_, size)) => *size += list.len(),
                None => sizes.push((queue, list.len())),
            }
        }
        let sizes: Vec<usize> = sizes.into_iter().map(|(_, size)| size).collect();
        let mut outputs: ByQueue = Vec::with_capacity(sizes.len());
        let mut settlements = Vec::with_capacity(n);
        let batch_epoch = chunks.iter().map(|chunk| chunk.epoch).min().unwrap_or(epoch);
        for chunk in chunks.drain(..) {
            settlements.extend(chunk.settled);
            for (queue, mut list) in chunk.outputs {
                match outputs.iter_mut().find(|(q, _)| *q == queue) {
                    Some((_, all)) => all.append(&mut list),
                    None => {
                        // Queues come first-seen in the same order as sized.
                        let size = sizes.get(outputs.len()).copied().unwrap_or(0);
                        list.reserve_exact(size.saturating_sub(list.len()));
                        outputs.push((queue, list));
                    }
                }
            }
        }
        'pushing: for (queue, envelopes) in &mut outputs {
            // A failed push leaves the vector whole for the next try.
            let mut backoff = Backoff::new();
            pushes += 1;
            let receipt = Receipt { producer: &consumer.name, seq: pushes };
            while let Err(err) = backend.push_vec(queue, envelopes, Some(receipt)).await {
                tracing::warn!(error = %err, %queue, "enqueue outputs failed; retrying");
                tokio::select! {
                    _ = hard_stop.cancelled() => return, // left leased: redelivered after restart
                    _ = tokio::time::sleep(backoff.next()) => {}
                }
                // Cut off from Redis for long (this process alone, say),
                // this consumer may have been declared dead meanwhile.
                if liveness.in_doubt() {
                    let _ = liveness.beat_now(&*backend, &consumer, None).await;
                }
                if liveness.epoch() > batch_epoch {
                    tracing::warn!(%queue, "outputs not pushed: this consumer was declared dead while it retried");
                    for (_, settlement) in &mut settlements {
                        *settlement = Settlement::Requeue;
                    }
                    break 'pushing;
                }
            }
        }
        if !retry_until(&hard_stop, "acknowledge", || backend.settle(&consumer, &settlements)).await {
            return;
        }
        slots.add_permits(n);
    }
}

/// Retries `op` with capped backoff until it succeeds (true) or `stop` fires (false).
async fn retry_until<F, Fut>(stop: &Shutdown, what: &str, mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BusError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match op().await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(error = %err, "{what} failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(backoff.next()) => {}
                }
            }
        }
    }
}

async fn heartbeat(
    backend: Arc<dyn Backend>,
    consumer: ConsumerId,
    options: RunnerOptions,
    reporter: Reporter,
    liveness: Arc<Liveness>,
    stop: Shutdown,
) {
    let every = (options.heartbeat_timeout / 3).max(Duration::from_millis(100));
    let timeout_ms = options.heartbeat_timeout.as_millis() as u64;
    let sweep_every = options.dead_sweep_interval.min(Duration::from_secs(60));
    let mut last_sweep: Option<Instant> = None;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports = tokio::time::interval(reporter.interval);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this consumer's heartbeats have gone through without a
    // failure. Others are judged only once that is a whole timeout: after a
    // Redis restart or outage every consumer's last beat is old, and the
    // first one back must not declare the others dead (and hand their
    // in-flight messages out a second time) before they could beat again.
    // A new process waits one timeout too: it cannot tell whether Redis
    // just came back.
    let mut beating_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            _ = reports.tick() => {
                // Counters for the admin page and /metrics; a failure only
                // makes this process look quiet for a while.
                if let Err(err) = backend.report_process(&reporter.report(false)).await {
                    tracing::debug!(queue = %consumer.queue, error = %err, "process report failed");
                }
                continue;
            }
        }
        let judge = beating_since.is_some_and(|since| since.elapsed() >= options.heartbeat_timeout);
        let beat_at = Instant::now();
        match liveness.beat_now(&*backend, &consumer, judge.then_some(timeout_ms)).await {
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(queue = %consumer.queue, error = %err, "heartbeat failed");
                beating_since = None;
                continue;
            }
        }
        beating_since.get_or_insert(beat_at);
        if last_sweep.is_none_or(|at| at.elapsed() >= sweep_every) {
            last_sweep = Some(Instant::now());
            let interval = options.dead_sweep_interval.as_millis() as u64;
            match backend.sweep_dead(&consumer.queue, interval, options.dead_max_redrives).await {
                Ok(report) if report.ran => {
                    if report.redriven > 0 {
                        // Each re-driven message logs its own lines (with its
                        // trace_id) when it is handled again.
                        tracing::info!(queue = %consumer.queue, redriven = report.redriven, "dead letters re-driven");
                    }
                    for letter in &report.given_up {
                        let trace_id = match &letter.content {
                            DeadContent::Envelope(envelope) => envelope.trace_id.as_str(),
                            DeadContent::Raw(_) => "",
                        };
                        tracing::error!(queue = %consumer.queue, id = %letter.id(), trace_id, reason = %letter.reason,
                            "dead letter re-driven {} times; it stays dead", options.dead_max_redrives);
                    }
                    let notices: Vec<Envelope> = match &options.alert_queue {
                        Some(_) => {
                            report.given_up.iter().filter_map(|l| dead_notice(&consumer.queue, l, true)).collect()
                        }
                        None => Vec::new(),
                    };
                    if let (Some(alerts), false) = (&options.alert_queue, notices.is_empty()) {
                        if let Err(err) = backend.push(alerts, &notices).await {
                            tracing::warn!(queue = %consumer.queue, error = %err, "cannot send dead-letter alerts");
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(queue = %consumer.queue, error = %err, "dead-letter sweep failed"),
            }
        }
    }
}

/// Capped exponential backoff for reconnecting: 50 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: Duration::from_millis(50) }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueSettings {
        BusSettings::default().queue("q")
    }

    #[test]
    fn retry_delay_grows_exponentially_with_jitter_and_is_capped() {
        let q = queue();
        for _ in 0..50 {
            let first = retry_delay(&q, 1).as_millis() as u64;
            assert!((500..=1_000).contains(&first), "{first}");
            let fourth = retry_delay(&q, 4).as_millis() as u64;
            assert!((4_000..=8_000).contains(&fourth), "{fourth}");
            let late = retry_delay(&q, 30).as_millis() as u64;
            assert!((300_000..=600_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn transient_failures_go_dead_on_the_last_attempt() {
        let q = queue();
        let mut envelope = Envelope::new("k", crate::envelope::encode_payload(&serde_json::json!({})).expect("map"));
        envelope.attempts = q.max_attempts - 2;
        match failure(&q, envelope.clone(), HandlerError::transient("x")) {
            Settlement::Retry { envelope, .. } => assert_eq!(envelope.attempts, q.max_attempts - 1),
            other => panic!("expected retry, got {other:?}"),
        }
        envelope.attempts = q.max_attempts - 1;
        match failure(&q, envelope, HandlerError::transient("x")) {
            Settlement::Dead(letter) => {
                assert!(letter.reason.starts_with("gave up after 8 attempts"), "{}", letter.reason)
            }
            other => panic!("expected dead, got {other:?}"),
        }
    }
}
