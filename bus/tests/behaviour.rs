//! One behaviour suite, run against every backend: whatever a plugin can
//! observe must be the same in memory, over one Redis server and over a
//! 3-master Redis Cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hookbus_bus::backend::{DeadSelector, Receipt, Settlement};
use hookbus_bus::redis::{RedisBackend, RedisTarget};
use hookbus_bus::{
    Backend, ConsumerId, DeadContent, DeadLetter, Envelope, HandlerError, MemoryBackend, Outbox, Plugin, ProcessReport,
    Runner, RunnerOptions, Shutdown,
};
use hookbus_config::BusSettings;
use hookbus_testkit::{RedisCluster, RedisServer};

/// A backend and whatever must live as long as it (the redis-server).
struct Fixture {
    backend: Arc<dyn Backend>,
    _server: Option<RedisServer>,
    _cluster: Option<Arc<RedisCluster>>,
}

fn memory() -> Fixture {
    Fixture { backend: Arc::new(MemoryBackend::new()), _server: None, _cluster: None }
}

fn redis() -> Fixture {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url(), "hookbus", 4, false).expect("pool");
    Fixture { backend: Arc::new(backend), _server: Some(server), _cluster: None }
}

/// The Redis backend on a cluster shared with the other cluster cases
/// running now; a prefix of its own keeps this case's keys apart.
fn cluster() -> Fixture {
    let cluster = RedisCluster::shared();
    let prefix = format!("case{}", uuid::Uuid::new_v4().simple());
    let backend = RedisBackend::open(&RedisTarget::cluster(cluster.urls(), false), &prefix, 4).expect("cluster");
    Fixture { backend: Arc::new(backend), _server: None, _cluster: Some(cluster) }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::memory()).await })*
        }
        mod on_redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::redis()).await })*
        }
        mod on_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::cluster()).await })*
        }
    };
}

both_backends!(
    fetch_is_fifo_in_batches,
    a_push_repeated_under_its_receipt_enqueues_once,
    depths_count_every_consumer_and_every_held_key,
    depths_stay_readable_while_consumers_and_keys_change,
    ack_removes_the_message_for_good,
    a_repeated_fetch_returns_the_same_leases,
    a_repeated_fetch_that_leased_nothing_leases_now,
    a_burst_after_an_idle_spell_is_fetched_in_order,
    same_key_runs_one_at_a_time_in_enqueue_order,
    dead_letter_releases_the_key_to_the_next_message,
    retried_message_holds_back_its_key,
    lapsed_consumer_messages_return_to_the_head_in_order,
    a_beat_that_does_not_judge_reaps_nobody,
    late_settle_of_a_reaped_lease_does_nothing,
    deregister_puts_unfinished_back_at_the_head_unchanged,
    garbage_is_dead_lettered_and_the_rest_flows,
    runner_retries_with_backoff_then_dead_letters,
    runner_permanent_error_goes_dead_at_once,
    runner_defer_keeps_the_attempt_count,
    runner_copies_trace_id_and_emits_only_on_success,
    runner_survives_a_panicking_handler,
    runner_on_dead_emits_last_words_with_the_dead_letter,
    dead_letters_can_be_listed_retried_and_purged,
    sweep_redrives_until_the_limit_then_gives_up,
    settled_messages_are_counted_in_the_current_minute,
    process_reports_are_kept_and_a_newer_run_wins,
    journal_keeps_the_newest_entries_newest_first,
    runner_publishes_its_counters_and_says_goodbye,
);

fn msg(n: u32) -> Envelope {
    Envelope::with_payload("test.n", &serde_json::json!({ "n": n })).expect("payload")
}

fn keyed(n: u32, key: &str) -> Envelope {
    msg(n).keyed(key)
}

fn n_of(envelope: &Envelope) -> u32 {
    #[derive(serde::Deserialize)]
    struct P {
        n: u32,
    }
    envelope.payload_as::<P>().expect("test payload").n
}

fn consumer(queue: &str) -> ConsumerId {
    ConsumerId::new(queue)
}

async fn fetch_ns(backend: &dyn Backend, c: &ConsumerId, seq: u64, max: usize) -> Vec<u32> {
    backend.fetch(c, seq, max).await.expect("fetch").iter().map(|d| n_of(&d.envelope)).collect()
}

async fn fetch_is_fifo_in_batches(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &(1..=5).map(msg).collect::<Vec<_>>()).await.expect("push");
    b.push("q", &[msg(6)]).await.expect("push one");
    let c = consumer("q");
    assert_eq!(fetch_ns(b, &c, 1, 4).await, vec![1, 2, 3, 4]);
    assert_eq!(fetch_ns(b, &c, 2, 4).await, vec![5, 6]);
    assert_eq!(fetch_ns(b, &c, 3, 4).await, Vec::<u32>::new());
    let depths = b.depths("q").await.expect("depths");
    assert_eq!((depths.pending, depths.in_flight), (0, 6));
}

async fn depths_count_every_consumer_and_every_held_key(f: Fixture) {
    let b = &*f.backend;
    let messages = [keyed(1, "a"), keyed(2, "a"), keyed(3, "a"), keyed(4, "b"), keyed(5, "b"), msg(6), msg(7)];
    b.push("q", &messages).await.expect("push");
    let (one, two) = (consumer("q"), consumer("q"));
    assert_eq!(fetch_ns(b, &one, 1, 2).await, vec![1, 4]);
    assert_eq!(fetch_ns(b, &two, 1, 1).await, vec![6]);
    let depths = b.depths("q").await.expect("depths");
    assert_eq!(
        (depths.pending, depths.in_flight, depths.held, depths.consumers),
        (1, 3, 3, 2),
        "7 and, behind 1 and 4, 2, 3 and 5: {depths:?}"
    );
}

async fn depths_stay_readable_while_consumers_and_keys_change(f: Fixture) {
    // New consumers and ordering keys come and go between the moment the
    // Redis backend lists them and the moment it counts: it must ask again,
    // not fail or miscount.
    let backend = f.backend.clone();
    let churn = tokio::spawn(async move {
        for round in 0..60u32 {
            let c = consumer("q");
            let key = format!("k{round}");
            backend.push("q", &[keyed(round, &key), keyed(round + 1000, &key)]).await.expect("push");
            let got = backend.fetch(&c, 1, 10).await.expect("fetch");
            let acks: Vec<_> = got.iter().map(|d| (d.lease.clone(), Settlement::Ack)).collect();
            backend.settle(&c, &acks).await.expect("settle");
            backend.deregister(&c).await.expect("deregister");
        }
    });
    while !churn.is_finished() {
        let depths = f.backend.depths("q").await.expect("depths while things change");
        assert!(depths.in_flight <= 4 && depths.held <= 2, "{depths:?}");
    }
    churn.await.expect("churn");
    // Each round's second message waited behind the first and was released
    // to pending by its ack (the next round's fetch took it); the last one
    // is still there. Nothing is in flight or held, no consumer is left.
    let depths = f.backend.depths("q").await.expect("depths");
    assert_eq!((depths.pending, depths.in_flight, depths.held, depths.consumers), (1, 0, 0, 0), "{depths:?}");
}

async fn ack_removes_the_message_for_good(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[msg(1), msg(2)]).await.expect("push");
    let c = consumer("q");
    let got = b.fetch(&c, 1, 10).await.expect("fetch");
    let acks: Vec<_> = got.iter().map(|d| (d.lease.clone(), Settlement::Ack)).collect();
    b.settle(&c, &acks).await.expect("settle");
    let depths = b.depths("q").await.expect("depths");
    assert_eq!(depths.pending + depths.in_flight + depths.delayed + depths.dead, 0);
    // Gone even when the consumer disappears.
    assert_eq!(b.deregister(&c).await.expect("deregister"), 0);
    assert_eq!(b.depths("q").await.expect("depths").pending, 0);
}

async fn a_repeated_fetch_returns_the_same_leases(f: Fixture) {
    // The reply to a fetch can be lost (connection dropped after the script
    // ran); fetching again with the same sequence must not strand messages.
    let b = &*f.backend;
    b.push("q", &[msg(1), msg(2), msg(3)]).await.expect("push");
    let c = consumer("q");
    let first = b.fetch(&c, 7, 2).await.expect("fetch");
    let again = b.fetch(&c, 7, 2).await.expect("fetch again");
    assert_eq!(first.iter().map(|d| &d.lease).collect::<Vec<_>>(), again.iter().map(|d| &d.lease).collect::<Vec<_>>());
    assert_eq!(fetch_ns(b, &c, 8, 5).await, vec![3]);
}

async fn a_repeated_fetch_that_leased_nothing_leases_now(f: Fixture) {
    // A fetch asked for again after it failed before leasing anything (or
    // found the queue empty) must take what is there now.
    let b = &*f.backend;
    let c = consumer("q");
    assert_eq!(fetch_ns(b, &c, 4, 10).await, Vec::<u32>::new());
    b.push("q", &[msg(1), msg(2)]).await.expect("push");
    assert_eq!(fetch_ns(b, &c, 4, 10).await, vec![1, 2]);
    let depths = b.depths("q").await.expect("depths");
    assert_eq!((depths.pending, depths.in_flight), (0, 2), "{depths:?}");
    // And a later fetch does not see them again.
    assert_eq!(fetch_ns(b, &c, 5, 10).await, Vec::<u32>::new());
}

async fn a_burst_after_an_idle_spell_is_fetched_in_order(f: Fixture) {
    // A fetch may take fewer than it has room for (over Redis it sizes
    // itself by what the last fetch found), never more, and never skips.
    let b = &*f.backend;
    let c = consumer("q");
    assert_eq!(fetch_ns(b, &c, 1, 10).await, Vec::<u32>::new());
    b.push("q", &(1..=25).map(msg).collect::<Vec<_>>()).await.expect("push");
    let mut got = Vec::new();
    for seq in 2..20 {
        let batch = fetch_ns(b, &c, seq, 10).await;
        assert!(!batch.is_empty() && batch.len() <= 10, "fetch {seq} took {batch:?}");
        got.extend(batch);
        if got.len() >= 25 {
            break;
        }
    }
    assert_eq!(got, (1..=25).collect::<Vec<_>>());
    let depths = b.depths("q").await.expect("depths");
    assert_eq!((depths.pending, depths.in_flight), (0, 25), "{depths:?}");
    // Put back across several fetches, the oldest at the head.
    assert_eq!(b.deregister(&c).await.expect("deregister"), 25);
    assert_eq!(fetch_ns(b, &consumer("q"), 1, 100).await, (1..=25).collect::<Vec<_>>());
}

async fn same_key_runs_one_at_a_time_in_enqueue_order(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[keyed(1, "a"), keyed(2, "a"), keyed(3, "b"), keyed(4, "a"), msg(5)]).await.expect("push");
    let (c1, c2) = (consumer("q"), consumer("q"));
    // Only the first of each key is runnable.
    assert_eq!(fetch_ns(b, &c1, 1, 10).await, vec![1, 3, 5]);
    assert_eq!(fetch_ns(b, &c2, 1, 10).await, Vec::<u32>::new());
    assert_eq!(b.depths("q").await.expect("depths").held, 2);
    // Finishing 1 releases 2 (and only 2), to any consumer.
    let first = b.fetch(&c1, 1, 10).await.expect("same fetch");
    let lease1 = first.iter().find(|d| n_of(&d.envelope) == 1).expect("1").lease.clone();
    b.settle(&c1, &[(lease1, Settlement::Ack)]).await.expect("ack 1");
    let got = b.fetch(&c2, 2, 10).await.expect("fetch");
    assert_eq!(got.iter().map(|d| n_of(&d.envelope)).collect::<Vec<_>>(), vec![2]);
    b.settle(&c2, &[(got[0].lease.clone(), Settlement::Ack)]).await.expect("ack 2");
    assert_eq!(fetch_ns(b, &c2, 3, 10).await, vec![4]);
}

async fn dead_letter_releases_the_key_to_the_next_message(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[keyed(1, "k"), keyed(2, "k")]).await.expect("push");
    let c = consumer("q");
    let got = b.fetch(&c, 1, 10).await.expect("fetch");
    assert_eq!(got.len(), 1);
    let letter = DeadLetter {
        content: DeadContent::Envelope(Envelope::clone(&got[0].envelope)),
        reason: "broken".into(),
        dead_at: 1,
    };
    b.settle(&c, &[(got[0].lease.clone(), Settlement::Dead(Box::new(letter)))]).await.expect("dead");
    assert_eq!(fetch_ns(b, &c, 2, 10).await, vec![2]);
    assert_eq!(b.depths("q").await.expect("depths").dead, 1);
}

async fn retried_message_holds_back_its_key(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[keyed(1, "k"), keyed(2, "k"), keyed(3, "other")]).await.expect("push");
    let c = consumer("q");
    let got = b.fetch(&c, 1, 10).await.expect("fetch");
    let one = got.iter().find(|d| n_of(&d.envelope) == 1).expect("1");
    let mut retry = Envelope::clone(&one.envelope);
    retry.attempts += 1;
    let due = hookbus_bus::envelope::now_ms() + 150;
    b.settle(&c, &[(one.lease.clone(), Settlement::Retry { envelope: Box::new(retry), due_ms: due })])
        .await
        .expect("retry");
    // While 1 waits for its retry, 2 must not run.
    assert_eq!(fetch_ns(b, &c, 2, 10).await, Vec::<u32>::new());
    assert_eq!(b.depths("q").await.expect("depths").delayed, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = b.fetch(&c, 3, 10).await.expect("fetch after due");
    assert_eq!(again.iter().map(|d| (n_of(&d.envelope), d.envelope.attempts)).collect::<Vec<_>>(), vec![(1, 1)]);
    b.settle(&c, &[(again[0].lease.clone(), Settlement::Ack)]).await.expect("ack");
    assert_eq!(fetch_ns(b, &c, 4, 10).await, vec![2]);
}

async fn a_push_repeated_under_its_receipt_enqueues_once(f: Fixture) {
    // A producer that retries a push whose reply it never got repeats it
    // under the same receipt; the repeat must not enqueue again, plain or
    // keyed (the keyed path would even let two copies hold one key).
    let b = &*f.backend;
    let receipt = |producer, seq| Some(Receipt { producer, seq });
    let shared = |messages: Vec<Envelope>| messages.into_iter().map(Arc::new).collect::<Vec<_>>();
    for _ in 0..2 {
        let mut batch = shared(vec![msg(1), msg(2)]);
        b.push_vec("q", &mut batch, receipt("p", 1)).await.expect("push");
        assert!(batch.is_empty(), "taken, whether pushed or found pushed");
    }
    for _ in 0..2 {
        b.push_vec("q", &mut shared(vec![keyed(3, "k"), msg(4)]), receipt("p", 2)).await.expect("keyed push");
    }
    // An older receipt counts as done; another producer's seq 1 is its own.
    b.push_vec("q", &mut shared(vec![msg(9)]), receipt("p", 1)).await.expect("stale push");
    b.push_vec("q", &mut shared(vec![msg(5)]), receipt("other", 1)).await.expect("other producer");
    b.push_vec("q", &mut shared(vec![msg(6)]), None).await.expect("no receipt");
    b.push_vec("q", &mut shared(vec![msg(6)]), None).await.expect("no receipt, again");
    let c = consumer("q");
    let got = b.fetch(&c, 1, 20).await.expect("fetch");
    let ns: Vec<u32> = got.iter().map(|d| n_of(&d.envelope)).collect();
    assert_eq!(ns, vec![1, 2, 3, 4, 5, 6, 6]);
    let acks: Vec<_> = got.iter().map(|d| (d.lease.clone(), Settlement::Ack)).collect();
    b.settle(&c, &acks).await.expect("ack");
    let depths = b.depths("q").await.expect("depths");
    assert_eq!((depths.pending, depths.in_flight, depths.held), (0, 0, 0), "no second copy behind key k");
}

async fn lapsed_consumer_messages_return_to_the_head_in_order(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &(1..=4).map(msg).collect::<Vec<_>>()).await.expect("push");
    let dying = consumer("q");
    b.register(&dying).await.expect("register");
    assert_eq!(fetch_ns(b, &dying, 1, 2).await, vec![1, 2]);
    assert_eq!(fetch_ns(b, &dying, 2, 1).await, vec![3]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let live = consumer("q");
    let report = b.heartbeat(&live, Some(1_000)).await.expect("heartbeat");
    assert_eq!((report.reaped_consumers, report.requeued), (1, 3));
    assert_eq!(fetch_ns(b, &live, 1, 10).await, vec![1, 2, 3, 4]);
}

async fn a_beat_that_does_not_judge_reaps_nobody(f: Fixture) {
    // What a consumer sends until its own beats have gone through for a
    // whole timeout (after it starts, or after Redis was away).
    let b = &*f.backend;
    b.push("q", &[msg(1)]).await.expect("push");
    let quiet = consumer("q");
    b.register(&quiet).await.expect("register");
    assert_eq!(fetch_ns(b, &quiet, 1, 10).await, vec![1]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let back = consumer("q");
    let report = b.heartbeat(&back, None).await.expect("beat");
    assert_eq!((report.reaped_consumers, report.requeued), (0, 0));
    let depths = b.depths("q").await.expect("depths");
    assert_eq!((depths.in_flight, depths.consumers), (1, 2), "still the quiet consumer's, and both listed");
    let report = b.heartbeat(&back, Some(1_000)).await.expect("judge");
    assert_eq!((report.reaped_consumers, report.requeued), (1, 1));
}

async fn late_settle_of_a_reaped_lease_does_nothing(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[keyed(1, "k"), keyed(2, "k")]).await.expect("push");
    let slow = consumer("q");
    let got = b.fetch(&slow, 1, 10).await.expect("fetch");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let live = consumer("q");
    b.heartbeat(&live, Some(1_000)).await.expect("reap");
    // The slow consumer wakes up and acks: the message was already put back,
    // so this must neither drop it nor release its key.
    b.settle(&slow, &[(got[0].lease.clone(), Settlement::Ack)]).await.expect("late ack");
    assert_eq!(fetch_ns(b, &live, 1, 10).await, vec![1]);
}

async fn deregister_puts_unfinished_back_at_the_head_unchanged(f: Fixture) {
    let b = &*f.backend;
    let mut first = msg(1);
    first.attempts = 3;
    b.push("q", &[first, msg(2), msg(3), msg(4)]).await.expect("push");
    let c = consumer("q");
    let got = b.fetch(&c, 1, 3).await.expect("fetch");
    b.settle(&c, &[(got[1].lease.clone(), Settlement::Ack)]).await.expect("ack 2");
    assert_eq!(b.deregister(&c).await.expect("deregister"), 2);
    let next = consumer("q");
    let again = b.fetch(&next, 1, 10).await.expect("fetch");
    assert_eq!(
        again.iter().map(|d| (n_of(&d.envelope), d.envelope.attempts)).collect::<Vec<_>>(),
        vec![(1, 3), (3, 0), (4, 0)]
    );
}

async fn garbage_is_dead_lettered_and_the_rest_flows(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[msg(1)]).await.expect("push");
    b.push_raw("q", Bytes::from_static(b"this is not msgpack")).await.expect("raw");
    b.push_raw("q", Bytes::from_static(&[0x81, 0xa1, b'v', 0x01])).await.expect("map without fields");
    b.push("q", &[msg(2)]).await.expect("push");
    let c = consumer("q");
    assert_eq!(fetch_ns(b, &c, 1, 10).await, vec![1, 2]);
    let dead = b.dead_list("q", 10).await.expect("dead");
    assert_eq!(dead.len(), 2);
    for letter in &dead {
        assert!(matches!(letter.content, DeadContent::Raw(_)));
        assert!(letter.reason.starts_with("undecodable message"), "{}", letter.reason);
        assert!(letter.dead_at > 0);
    }
    assert!(dead.iter().any(|l| l.reason.contains("`id` is missing")), "{dead:?}");
}

/// A plugin whose behaviour each test scripts.
struct Scripted {
    input: &'static str,
    seen: Mutex<Vec<(u32, u32)>>,
    act: Box<dyn Fn(u32, u32) -> Result<(), HandlerError> + Send + Sync>,
    emit_to: Option<&'static str>,
}

#[async_trait]
impl Plugin for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn input(&self) -> &str {
        self.input
    }
    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let n = n_of(message);
        self.seen.lock().expect("lock").push((n, message.attempts));
        if let Some(queue) = self.emit_to {
            out.emit_payload(queue, "test.n", None, &serde_json::json!({ "n": n * 10 }))?;
        }
        (self.act)(n, message.attempts)
    }

    fn on_dead(&self, message: &Envelope, reason: &str, out: &mut Outbox) {
        let n = n_of(message);
        let _ = out.emit_payload("graveyard", "test.dead", None, &serde_json::json!({ "n": n, "why": reason }));
    }
}

fn scripted(act: impl Fn(u32, u32) -> Result<(), HandlerError> + Send + Sync + 'static) -> Arc<Scripted> {
    Arc::new(Scripted { input: "q", seen: Mutex::default(), act: Box::new(act), emit_to: None })
}

fn fast_options() -> RunnerOptions {
    let bus = BusSettings {
        backoff_base_ms: 10,
        backoff_max_ms: 40,
        max_attempts: 3,
        concurrency: 2,
        batch_size: 8,
        poll_interval_ms: 5,
        grace_period_ms: 2_000,
        ..BusSettings::default()
    };
    RunnerOptions::from_settings(&bus, "q")
}

/// Runs `plugin` until `done` holds for the backend (checked every 5 ms,
/// 10 s at most), then shuts it down.
async fn run_until(
    backend: &Arc<dyn Backend>,
    plugin: Arc<dyn Plugin>,
    done: impl Fn(&hookbus_bus::QueueDepths) -> bool,
) -> hookbus_bus::RunReport {
    let shutdown = Shutdown::new();
    let runner = Runner::new(backend.clone(), plugin, fast_options());
    let task = tokio::spawn(runner.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let depths = backend.depths("q").await.expect("depths");
        if done(&depths) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached: {depths:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.trigger();
    task.await.expect("runner task").expect("runner")
}

async fn runner_retries_with_backoff_then_dead_letters(f: Fixture) {
    // Message 1 always fails; message 2 fails once, then works.
    let plugin = scripted(|n, attempts| match (n, attempts) {
        (1, _) | (2, 0) => Err(HandlerError::transient("remote busy")),
        _ => Ok(()),
    });
    f.backend.push("q", &[msg(1), msg(2)]).await.expect("push");
    let report =
        run_until(&f.backend, plugin.clone(), |d| d.dead == 1 && d.pending + d.delayed + d.in_flight == 0).await;
    assert_eq!((report.handled, report.dead), (1, 1));
    let mut seen = plugin.seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(seen, vec![(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]);
    let dead = f.backend.dead_list("q", 10).await.expect("dead");
    assert_eq!(dead[0].reason, "gave up after 3 attempts: remote busy");
    match &dead[0].content {
        DeadContent::Envelope(e) => assert_eq!((n_of(e), e.attempts), (1, 3)),
        other => panic!("expected an envelope, got {other:?}"),
    }
}

async fn runner_permanent_error_goes_dead_at_once(f: Fixture) {
    let plugin = scripted(|_, _| Err(HandlerError::permanent("field `title` is missing")));
    f.backend.push("q", &[msg(1)]).await.expect("push");
    run_until(&f.backend, plugin.clone(), |d| d.dead == 1).await;
    assert_eq!(plugin.seen.lock().expect("lock").len(), 1);
    let dead = f.backend.dead_list("q", 1).await.expect("dead");
    assert_eq!(dead[0].reason, "field `title` is missing");
    // The alert queue is told, with what an alert needs.
    let notices = f.backend.peek("notify", 10).await.expect("peek");
    assert_eq!(notices.len(), 1);
    let notice = notices.into_iter().next().and_then(Result::ok).expect("envelope");
    assert_eq!(notice.kind, "bus.dead");
    let body: hookbus_bus::runner::DeadNotice = notice.payload_as().expect("notice");
    assert_eq!((body.queue.as_str(), body.reason.as_str(), body.given_up), ("q", "field `title` is missing", false));
}

async fn runner_defer_keeps_the_attempt_count(f: Fixture) {
    let deferring = Arc::new(Scripted {
        input: "q",
        seen: Mutex::default(),
        act: Box::new({
            let count = std::sync::atomic::AtomicU32::new(0);
            move |_, _| {
                if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                    Err(HandlerError::Defer(Duration::from_millis(20), "rate limited".into()))
                } else {
                    Ok(())
                }
            }
        }),
        emit_to: None,
    });
    f.backend.push("q", &[msg(1)]).await.expect("push");
    let report = run_until(&f.backend, deferring.clone(), |d| d.pending + d.delayed + d.in_flight == 0).await;
    assert_eq!(report.handled, 1);
    assert_eq!(*deferring.seen.lock().expect("lock"), vec![(1, 0), (1, 0), (1, 0)]);
}

async fn runner_copies_trace_id_and_emits_only_on_success(f: Fixture) {
    let plugin = Arc::new(Scripted {
        input: "q",
        seen: Mutex::default(),
        act: Box::new(|n, attempts| if n == 2 && attempts == 0 { Err(HandlerError::transient("x")) } else { Ok(()) }),
        emit_to: Some("next"),
    });
    let one = msg(1).traced("trace-one");
    let two = msg(2).traced("trace-two");
    f.backend.push("q", &[one, two]).await.expect("push");
    run_until(&f.backend, plugin, |d| d.pending + d.delayed + d.in_flight == 0).await;
    let out = f.backend.peek("next", 10).await.expect("peek");
    let mut got: Vec<(u32, String)> =
        out.into_iter().map(|e| e.expect("envelope")).map(|e| (n_of(&e), e.trace_id)).collect();
    got.sort();
    // Message 2 failed once: its output from that attempt was not emitted.
    assert_eq!(got, vec![(10, "trace-one".to_string()), (20, "trace-two".to_string())]);
}

async fn runner_survives_a_panicking_handler(f: Fixture) {
    let plugin = scripted(|n, _| if n == 1 { panic!("bug in handler") } else { Ok(()) });
    f.backend.push("q", &[msg(1), msg(2)]).await.expect("push");
    let report = run_until(&f.backend, plugin, |d| d.dead == 1 && d.pending + d.delayed + d.in_flight == 0).await;
    assert_eq!(report.handled, 1);
    let dead = f.backend.dead_list("q", 1).await.expect("dead");
    assert!(dead[0].reason.contains("handler panicked: bug in handler"), "{}", dead[0].reason);
}

async fn kill_all(b: &dyn Backend, ns: &[u32]) {
    let c = consumer("q");
    let got = b.fetch(&c, 1, 100).await.expect("fetch");
    let settle: Vec<_> = got
        .iter()
        .filter(|d| ns.contains(&n_of(&d.envelope)))
        .map(|d| {
            let letter = DeadLetter {
                content: DeadContent::Envelope(Envelope::clone(&d.envelope)),
                reason: format!("n={}", n_of(&d.envelope)),
                dead_at: 1,
            };
            (d.lease.clone(), Settlement::Dead(Box::new(letter)))
        })
        .collect();
    b.settle(&c, &settle).await.expect("settle");
    b.deregister(&c).await.expect("deregister");
}

async fn dead_letters_can_be_listed_retried_and_purged(f: Fixture) {
    let b = &*f.backend;
    let messages: Vec<Envelope> = (1..=4).map(msg).collect();
    let id3 = messages[2].id.clone();
    b.push("q", &messages).await.expect("push");
    kill_all(b, &[1, 2, 3, 4]).await;
    let listed: Vec<String> = b.dead_list("q", 10).await.expect("list").iter().map(|l| l.reason.clone()).collect();
    assert_eq!(listed, vec!["n=4", "n=3", "n=2", "n=1"], "newest first");
    assert_eq!(b.dead_retry("q", &DeadSelector::Id(id3)).await.expect("retry one"), 1);
    let c = consumer("q");
    let back = b.fetch(&c, 1, 10).await.expect("fetch");
    assert_eq!(back.iter().map(|d| (n_of(&d.envelope), d.envelope.attempts)).collect::<Vec<_>>(), vec![(3, 0)]);
    assert_eq!(b.dead_purge("q", &DeadSelector::All).await.expect("purge"), 3);
    assert_eq!(b.depths("q").await.expect("depths").dead, 0);
}

async fn sweep_redrives_until_the_limit_then_gives_up(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &[msg(1)]).await.expect("push");
    for round in 1..=3 {
        kill_all(b, &[1]).await;
        let report = b.sweep_dead("q", 1, 2).await.expect("sweep");
        assert!(report.ran);
        if round <= 2 {
            assert_eq!((report.redriven, report.given_up.len()), (1, 0), "round {round}");
            let seen = b.peek("q", 1).await.expect("peek");
            assert_eq!(seen[0].as_ref().expect("envelope").redrives, round);
        } else {
            assert_eq!((report.redriven, report.given_up.len()), (0, 1), "round {round}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Only one sweep per interval, across all processes.
    let first = b.sweep_dead("q", 60_000, 2).await.expect("sweep");
    let second = b.sweep_dead("q", 60_000, 2).await.expect("sweep");
    assert!(first.ran && !second.ran);
}

async fn runner_on_dead_emits_last_words_with_the_dead_letter(f: Fixture) {
    let plugin = scripted(|n, _| if n == 1 { Err(HandlerError::permanent("no such repository")) } else { Ok(()) });
    f.backend.push("q", &[msg(1).traced("trace-dead"), msg(2)]).await.expect("push");
    run_until(&f.backend, plugin, |d| d.dead == 1 && d.pending + d.delayed + d.in_flight == 0).await;
    let words = f.backend.peek("graveyard", 10).await.expect("peek");
    assert_eq!(words.len(), 1, "only the dead message speaks");
    let words = words.into_iter().next().and_then(Result::ok).expect("envelope");
    assert_eq!(words.trace_id, "trace-dead");
    let body: serde_json::Value = words.payload_as().expect("json");
    assert_eq!(body, serde_json::json!({ "n": 1, "why": "no such repository" }));
}

async fn settled_messages_are_counted_in_the_current_minute(f: Fixture) {
    let b = &*f.backend;
    b.push("q", &(1..=4).map(msg).collect::<Vec<_>>()).await.expect("push");
    let c = consumer("q");
    let got = b.fetch(&c, 1, 10).await.expect("fetch");
    let settle: Vec<_> = got
        .iter()
        .map(|d| {
            let settlement = match n_of(&d.envelope) {
                1 | 2 => Settlement::Ack,
                3 => Settlement::Retry { envelope: Box::new(Envelope::clone(&d.envelope)), due_ms: i64::MAX / 2 },
                _ => Settlement::Dead(Box::new(DeadLetter {
                    content: DeadContent::Envelope(Envelope::clone(&d.envelope)),
                    reason: "no".into(),
                    dead_at: 1,
                })),
            };
            (d.lease.clone(), settlement)
        })
        .collect();
    b.settle(&c, &settle).await.expect("settle");
    // Settling the same leases again is a no-op, and counts nothing.
    b.settle(&c, &settle).await.expect("settle again");
    let minutes = b.throughput("q", 5).await.expect("throughput");
    assert_eq!(minutes.len(), 5);
    assert!(minutes.windows(2).all(|w| w[1].minute - w[0].minute == 60_000), "{minutes:?}");
    let now = minutes.last().expect("current minute");
    // The minute may have turned between settle and read.
    let total: (u64, u64, u64) =
        minutes.iter().fold((0, 0, 0), |(h, r, d), m| (h + m.handled, r + m.retried, d + m.dead));
    assert_eq!(total, (2, 1, 1), "{now:?}");
    assert!(b.throughput("other", 3).await.expect("empty").iter().all(|m| m.handled == 0));
}

async fn process_reports_are_kept_and_a_newer_run_wins(f: Fixture) {
    let b = &*f.backend;
    let now = hookbus_bus::envelope::now_ms();
    let report = |started_at: i64, handled: u64| ProcessReport {
        process: "commit.1".into(),
        queue: "q".into(),
        plugin: "scripted".into(),
        started_at,
        last_seen: now,
        interval_ms: 5_000,
        handled,
        latency_buckets: vec![1, 2, 0],
        ..ProcessReport::default()
    };
    b.report_process(&report(now - 10, 5)).await.expect("report");
    b.report_process(&report(now, 1)).await.expect("newer run");
    b.report_process(&report(now - 10, 7)).await.expect("old run, late");
    let mut other = report(now, 3);
    other.process = "commit.2".into();
    other.last_seen = now - 60_000;
    b.report_process(&other).await.expect("another dyno");
    let listed = b.processes("q").await.expect("processes");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0], report(now, 1), "the newer run's report, most recently seen first");
    assert_eq!(listed[1].process, "commit.2");
    assert!(listed[0].alive(now) && !listed[1].alive(now), "commit.2 stopped reporting a minute ago");
    assert!(b.processes("nobody").await.expect("none").is_empty());
}

async fn journal_keeps_the_newest_entries_newest_first(f: Fixture) {
    let b = &*f.backend;
    for n in 1..=5 {
        b.journal_append("commits", &serde_json::json!({ "n": n }), 3).await.expect("append");
    }
    let recent = b.journal_recent("commits", 10).await.expect("recent");
    assert_eq!(recent, vec![serde_json::json!({"n": 5}), serde_json::json!({"n": 4}), serde_json::json!({"n": 3})]);
    assert_eq!(b.journal_recent("commits", 1).await.expect("one").len(), 1);
    assert!(b.journal_recent("other", 10).await.expect("none").is_empty());
}

async fn runner_publishes_its_counters_and_says_goodbye(f: Fixture) {
    let plugin = scripted(|n, _| if n == 2 { Err(HandlerError::permanent("bad")) } else { Ok(()) });
    f.backend.push("q", &[msg(1), msg(2), msg(3)]).await.expect("push");
    run_until(&f.backend, plugin, |d| d.dead == 1 && d.pending + d.in_flight == 0).await;
    let listed = f.backend.processes("q").await.expect("processes");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let report = &listed[0];
    assert_eq!((report.handled, report.retried, report.dead), (2, 0, 1));
    assert_eq!((report.queue.as_str(), report.plugin.as_str()), ("q", "scripted"));
    assert!(report.stopped, "a clean shutdown is reported");
    assert_eq!(report.latency_count, 3);
    assert_eq!(report.latency_buckets.iter().sum::<u64>(), 3);
    assert!(!report.alive(hookbus_bus::envelope::now_ms()));
    let minutes = f.backend.throughput("q", 2).await.expect("throughput");
    assert_eq!(minutes.iter().map(|m| (m.handled, m.dead)).fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1)), (2, 1));
}

/// A rolling upgrade: a worker of a hookbus before per-fetch lists kept its
/// leases in one hash per consumer (`inflight:<consumer>`, field
/// `<seq>:<n>`). If it dies, a new worker's heartbeat must put them back,
/// in fetch order, as the old reaper did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_dead_worker_of_the_previous_layout_go_back_in_order() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    let mut raw = server.client();
    let old = "old-host:7:0000beef";
    let _: () = redis::cmd("ZADD").arg("hookbus:{q}:consumers").arg(1).arg(old).query(&mut raw).expect("zadd");
    let mut hset = redis::cmd("HSET");
    hset.arg(format!("hookbus:{{q}}:inflight:{old}"));
    // Out of order on purpose, and seq 10 after seq 9 (not as text).
    for (token, n) in [("10:1", 3u32), ("9:2", 2), ("9:1", 1), ("10:2", 4)] {
        hset.arg(token).arg(msg(n).encode());
    }
    let _: () = hset.query(&mut raw).expect("hset");

    let report = backend.heartbeat(&consumer("q"), Some(1_000)).await.expect("heartbeat");
    assert_eq!((report.reaped_consumers, report.requeued), (1, 4));
    assert_eq!(fetch_ns(&backend, &consumer("q"), 1, 10).await, vec![1, 2, 3, 4]);
    let left: bool = redis::cmd("EXISTS").arg(format!("hookbus:{{q}}:inflight:{old}")).query(&mut raw).expect("exists");
    assert!(!left, "the old in-flight hash is gone");
}

/// A stalled consumer learns it was declared dead from the reaper's note,
/// which its heartbeat or fetch reads. On waking, such a call can run in
/// Redis while its reply is lost to this process (its timer ran out during
/// the stall, the connection dropped): the note must still be there for the
/// next call, or the consumer pushes the outputs of a message already
/// handed on. A second backend stands for the lost reply: Redis ran the
/// calls, the consumer's own backend never heard of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_does_not_lose_the_note_that_a_consumer_was_declared_dead() {
    let server = RedisServer::start();
    let own = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    let lost = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    own.push("q", &[msg(1), msg(2)]).await.expect("push");
    let stalled = consumer("q");
    own.register(&stalled).await.expect("register");
    assert_eq!(fetch_ns(&own, &stalled, 1, 1).await, vec![1]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let report = own.heartbeat(&consumer("q"), Some(1_000)).await.expect("reap");
    assert_eq!((report.reaped_consumers, report.requeued), (1, 1));

    // Waking: a fetch and a beat run, their replies lost.
    lost.fetch(&stalled, 2, 1).await.expect("fetch whose reply is lost");
    lost.heartbeat(&stalled, None).await.expect("beat whose reply is lost");
    let report = own.heartbeat(&stalled, None).await.expect("beat");
    assert!(report.lapsed, "the consumer was not told it had been declared dead");
    // Told once: later beats find the same note and report nothing new.
    assert!(!own.heartbeat(&stalled, None).await.expect("beat").lapsed);
    assert!(!own.heartbeat(&stalled, Some(1_000)).await.expect("judging beat").lapsed);

    // A fetch that hears the note tells the next beat, once.
    let other = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    let second = consumer("q");
    other.register(&second).await.expect("register");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    own.heartbeat(&stalled, Some(1_000)).await.expect("reap the second");
    other.fetch(&second, 1, 1).await.expect("fetch");
    assert!(other.heartbeat(&second, None).await.expect("beat").lapsed);
    assert!(!other.heartbeat(&second, None).await.expect("beat").lapsed);
}

/// The Redis settings that can lose what the bus acknowledged are named,
/// read from `INFO` (managed services refuse `CONFIG`): no append-only
/// file, an eviction policy. A durable `noeviction` server names nothing,
/// and a cluster answers for its nodes as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_settings_that_can_lose_acknowledged_messages_are_named() {
    let plain = RedisServer::start();
    let backend = RedisBackend::connect(&plain.url(), "hookbus", 2, false).expect("pool");
    let risks = backend.durability_risks().await.expect("INFO");
    assert_eq!(risks.len(), 1, "{risks:?}");
    assert!(risks[0].contains("appendonly yes"), "{risks:?}");

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut plain.client())
        .expect("CONFIG SET");
    let risks = backend.durability_risks().await.expect("INFO");
    assert_eq!(risks.len(), 2, "{risks:?}");
    assert!(risks[1].contains("allkeys-lru") && risks[1].contains("noeviction"), "{risks:?}");

    let durable = RedisServer::start_durable();
    let backend = RedisBackend::connect(&durable.url(), "hookbus", 2, false).expect("pool");
    assert_eq!(backend.durability_risks().await.expect("INFO"), Vec::<String>::new());

    let cluster = RedisCluster::shared();
    let backend =
        RedisBackend::open(&RedisTarget::cluster(cluster.urls(), false), "risks", 2).expect("cluster backend");
    let risks = backend.durability_risks().await.expect("INFO on a cluster");
    assert_eq!(risks.len(), 1, "one sentence for the three nodes without AOF: {risks:?}");
    assert!(risks[0].contains("appendonly yes"), "{risks:?}");

    // The in-memory bus claims nothing of the kind.
    assert!(MemoryBackend::new().durability_risks().await.expect("memory").is_empty());
}
