//! Reliability as behaviour: real worker processes, real signals, a real
//! redis-server that gets killed and restarted.

use std::collections::HashMap;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::redis::RedisBackend;
use hookbus_bus::{Backend, Envelope, HandlerError, Outbox, Plugin, Receipt, Runner, RunnerOptions, Shutdown};
use hookbus_config::BusSettings;
use hookbus_testkit::{eventually, RedisServer};
use redis::Commands;

const STAGE: &str = env!("CARGO_BIN_EXE_hookbus-test-stage");

fn work(n: u64, sleep_ms: u64) -> Envelope {
    Envelope::with_payload("test.work", &serde_json::json!({ "n": n, "sleep_ms": sleep_ms })).expect("payload")
}

fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::connect(&server.url(), "hookbus", 4, false).expect("pool")
}

/// A worker process, killed if a failing test leaves it running.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `hookbus-test-stage` against `server` with extra environment.
fn stage(server: &RedisServer, args: &[&str], env: &[(&str, &str)]) -> Worker {
    let child = Command::new(STAGE)
        .args(args)
        .env("REDIS_URL", server.url())
        .env("HOOKBUS_BUS__POLL_INTERVAL_MS", "10")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .spawn()
        .expect("start hookbus-test-stage");
    Worker(child)
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let mut status = None;
    let exited = eventually(within, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(exited, "process did not exit within {within:?}");
    status.expect("exit status")
}

fn recorded(server: &RedisServer, list: &str) -> Vec<u64> {
    server.client().lrange(list, 0, -1).expect("lrange")
}

fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(fut)
}

fn in_flight(server: &RedisServer, queue: &str) -> u64 {
    block_on(backend(server).depths(queue)).expect("depths").in_flight
}

#[test]
fn sigterm_requeues_inflight_message_at_head_and_it_is_handled_once_after_restart() {
    let server = RedisServer::start();
    let b = backend(&server);
    // Message 1 takes far longer than the grace period; 2 waits behind it.
    block_on(b.push("work", &[work(1, 60_000), work(2, 0)])).expect("push");
    let mut first = stage(
        &server,
        &["--input", "work", "--record", "done"],
        &[("HOOKBUS_BUS__GRACE_PERIOD_MS", "300"), ("HOOKBUS_BUS__CONCURRENCY", "1"), ("HOOKBUS_BUS__BATCH_SIZE", "1")],
    );
    // 1 is running; 2 may be prefetched (leased, not started).
    assert!(eventually(Duration::from_secs(10), || in_flight(&server, "work") >= 1), "message 1 never started");
    signal(&first, "TERM");
    let status = wait_exit(&mut first, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    assert!(recorded(&server, "done").is_empty(), "the unfinished handler must not have had its effect");

    // Back at the head, attempt count unchanged, nothing left in flight.
    let head = block_on(b.peek("work", 2)).expect("peek");
    let head: Vec<(u64, u32)> = head
        .into_iter()
        .map(|e| e.expect("envelope"))
        .map(|e| (e.payload_as::<serde_json::Value>().expect("json")["n"].as_u64().unwrap_or(0), e.attempts))
        .collect();
    assert_eq!(head, vec![(1, 0), (2, 0)]);
    let depths = block_on(b.depths("work")).expect("depths");
    assert_eq!((depths.in_flight, depths.consumers), (0, 0));

    let mut second = stage(&server, &["--input", "work", "--record", "done", "--max-sleep-ms", "0"], &[]);
    assert!(eventually(Duration::from_secs(10), || recorded(&server, "done").len() == 2));
    signal(&second, "TERM");
    assert_eq!(wait_exit(&mut second, Duration::from_secs(10)).code(), Some(0));
    // Unkeyed messages run concurrently, so their effects may land in either order.
    let mut done = recorded(&server, "done");
    done.sort_unstable();
    assert_eq!(done, vec![1, 2], "each handled exactly once");
}

#[test]
fn sigterm_lets_a_short_handler_finish_within_the_grace_period() {
    let server = RedisServer::start();
    let b = backend(&server);
    block_on(b.push("work", &[work(1, 700)])).expect("push");
    let mut child = stage(
        &server,
        &["--input", "work", "--record", "done", "--started", "started"],
        &[("HOOKBUS_BUS__GRACE_PERIOD_MS", "10000")],
    );
    // Running, not only leased: a message leased but not yet started when
    // the signal comes is rightly put back instead of run.
    assert!(eventually(Duration::from_secs(10), || recorded(&server, "started") == vec![1]), "never started");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).code(), Some(0));
    assert_eq!(recorded(&server, "done"), vec![1]);
    let depths = block_on(b.depths("work")).expect("depths");
    assert_eq!((depths.pending, depths.in_flight), (0, 0), "finished, so acknowledged, not requeued");
}

#[test]
fn sigkill_midmessage_is_recovered_by_another_process_after_the_heartbeat_lapses() {
    let server = RedisServer::start();
    let b = backend(&server);
    block_on(b.push("work", &[work(1, 60_000)])).expect("push");
    let timeout = [("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000")];
    let mut victim = stage(&server, &["--input", "work", "--record", "done", "--started", "started"], &timeout);
    assert!(eventually(Duration::from_secs(10), || recorded(&server, "started") == vec![1]), "never started");
    assert_eq!(in_flight(&server, "work"), 1);
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();
    assert!(recorded(&server, "done").is_empty());

    let mut rescuer = stage(&server, &["--input", "work", "--record", "done", "--max-sleep-ms", "0"], &timeout);
    assert!(
        eventually(Duration::from_secs(15), || recorded(&server, "done") == vec![1]),
        "the killed consumer's message was not recovered"
    );
    let depths = block_on(b.depths("work")).expect("depths");
    assert_eq!((depths.pending, depths.in_flight, depths.consumers), (0, 0, 1), "the dead consumer is forgotten");
    signal(&rescuer, "TERM");
    assert_eq!(wait_exit(&mut rescuer, Duration::from_secs(10)).code(), Some(0));
    assert_eq!(recorded(&server, "done"), vec![1], "handled exactly once");
}

#[test]
fn a_redis_outage_longer_than_the_heartbeat_timeout_reaps_nobody_alive() {
    // Two busy consumers each hold two long messages (one running, one
    // leased behind it: concurrency + batch), a third is idle. Redis
    // is down for 2.5 heartbeat timeouts, so after it is back every
    // consumer's last beat is old. Whoever beats first must not declare the
    // others dead: their messages would be handed out a second time while
    // they are still being handled.
    let mut server = RedisServer::start_durable();
    let b = backend(&server);
    let one_at_a_time = [
        ("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000"),
        ("HOOKBUS_BUS__CONCURRENCY", "1"),
        ("HOOKBUS_BUS__BATCH_SIZE", "1"),
    ];
    // Started a third of a heartbeat interval apart, so that they beat at
    // different moments: whoever beats first after the outage finds the
    // other two lapsed, and at least one of them busy.
    let staggered = |args: &[&str]| {
        let worker = stage(&server, args, &one_at_a_time);
        std::thread::sleep(Duration::from_millis(110));
        worker
    };
    let busy: Vec<Worker> = (0..2).map(|_| staggered(&["--input", "work", "--record", "done"])).collect();
    assert!(eventually(Duration::from_secs(10), || block_on(b.depths("work")).is_ok_and(|d| d.consumers == 2)));
    block_on(b.push("work", &(1..=4).map(|n| work(n, 4_000)).collect::<Vec<_>>())).expect("push");
    assert!(
        eventually(Duration::from_secs(10), || in_flight(&server, "work") == 4),
        "the busy consumers took two each"
    );
    let idle = staggered(&["--input", "work", "--record", "done", "--max-sleep-ms", "0"]);
    assert!(eventually(Duration::from_secs(10), || block_on(b.depths("work")).is_ok_and(|d| d.consumers == 3)));

    server.restart_after(Duration::from_millis(2_500));
    assert!(
        eventually(Duration::from_secs(30), || recorded(&server, "done").len() >= 4),
        "the busy consumers never finished"
    );
    for mut worker in busy.into_iter().chain([idle]) {
        signal(&worker, "TERM");
        assert_eq!(wait_exit(&mut worker, Duration::from_secs(10)).code(), Some(0));
    }
    let mut done = recorded(&server, "done");
    done.sort_unstable();
    assert_eq!(done, vec![1, 2, 3, 4], "each handled once: nobody alive was reaped");
    let depths = block_on(b.depths("work")).expect("depths");
    assert_eq!((depths.pending, depths.in_flight, depths.consumers), (0, 0, 0));
}

#[test]
fn ordering_by_key_holds_across_two_processes_with_four_handlers_each() {
    let server = RedisServer::start();
    let b = backend(&server);
    let (keys, per_key) = (16u64, 25u64);
    let mut messages = Vec::new();
    for seq in 1..=per_key {
        for k in 0..keys {
            let payload = serde_json::json!({ "n": k * 1000 + seq, "seq": seq, "sleep_ms": (seq * 7 + k * 3) % 6 });
            messages.push(Envelope::with_payload("test.work", &payload).expect("payload").keyed(format!("key-{k}")));
        }
    }
    let args = ["--input", "work", "--record", "done", "--order-check"];
    let env = [("HOOKBUS_BUS__CONCURRENCY", "4"), ("HOOKBUS_BUS__BATCH_SIZE", "8")];
    let mut workers = vec![stage(&server, &args, &env), stage(&server, &args, &env)];
    block_on(b.push("work", &messages)).expect("push");
    let total = (keys * per_key) as usize;
    assert!(eventually(Duration::from_secs(60), || recorded(&server, "done").len() >= total), "not all handled");
    for w in &workers {
        signal(w, "TERM");
    }
    for w in &mut workers {
        assert_eq!(wait_exit(w, Duration::from_secs(10)).code(), Some(0));
    }
    let violations: Vec<String> = server.client().lrange("done:violations", 0, -1).expect("violations");
    assert!(violations.is_empty(), "ordering violated: {violations:?}");
    let mut done = recorded(&server, "done");
    done.sort_unstable();
    done.dedup();
    assert_eq!(done.len(), total, "every message handled");
}

/// The final stage of the restart test: counts what it saw.
struct Counter {
    seen: Mutex<HashMap<u64, u32>>,
}

#[async_trait]
impl Plugin for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn input(&self) -> &str {
        "second"
    }
    async fn handle(&self, message: &Envelope, _out: &mut Outbox) -> Result<(), HandlerError> {
        let value: serde_json::Value = message.payload_as()?;
        let n = value["n"].as_u64().ok_or_else(|| HandlerError::permanent("no n"))?;
        *self.seen.lock().expect("lock").entry(n).or_default() += 1;
        Ok(())
    }
}

/// The first stage of the restart test: forwards.
struct Forward;

#[async_trait]
impl Plugin for Forward {
    fn name(&self) -> &str {
        "forward"
    }
    fn input(&self) -> &str {
        "first"
    }
    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        out.emit("second", Envelope::new(message.kind.clone(), message.payload.clone()));
        Ok(())
    }
}

#[test]
fn redis_restart_midflow_loses_nothing_through_two_stages() {
    let mut server = RedisServer::start_durable();
    let total: u64 = 10_000;
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let counter = Arc::new(Counter { seen: Mutex::default() });
    let shutdown = Shutdown::new();
    let bus = BusSettings { poll_interval_ms: 10, backoff_base_ms: 20, backoff_max_ms: 200, ..BusSettings::default() };
    let handles = runtime.block_on(async {
        let b: Arc<dyn Backend> = Arc::new(RedisBackend::connect(&url, "hookbus", 8, false).expect("pool"));
        let producer = b.clone();
        let feed = tokio::spawn(async move {
            for (seq, chunk) in (0..total).collect::<Vec<_>>().chunks(100).enumerate() {
                let mut batch: Vec<Arc<Envelope>> = chunk.iter().map(|&n| Arc::new(work(n, 0))).collect();
                // Pushes retry through the outage like any producer should,
                // under a receipt: a push applied whose reply the restart
                // cut off is not applied again.
                let receipt = Some(Receipt { producer: "feed", seq: seq as u64 + 1 });
                while producer.push_vec("first", &mut batch, receipt).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let first = tokio::spawn(
            Runner::new(b.clone(), Arc::new(Forward), RunnerOptions::from_settings(&bus, "first"))
                .run(shutdown.clone()),
        );
        let second = tokio::spawn(
            Runner::new(b.clone(), counter.clone(), RunnerOptions::from_settings(&bus, "second")).run(shutdown.clone()),
        );
        (feed, first, second)
    });

    // Restart Redis once a good part of the flow is through.
    assert!(eventually(Duration::from_secs(60), || counter.seen.lock().expect("lock").len() as u64 > total / 3));
    server.restart();

    let complete = eventually(Duration::from_secs(120), || counter.seen.lock().expect("lock").len() as u64 == total);
    let (feed, first, second) = handles;
    shutdown.trigger();
    runtime.block_on(async {
        feed.await.expect("feed");
        first.await.expect("first").expect("first stage");
        second.await.expect("second").expect("second stage");
    });
    let seen = counter.seen.lock().expect("lock").clone();
    let missing: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).take(10).collect();
    assert!(complete && missing.is_empty(), "lost messages, e.g. {missing:?}");
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    // Nothing handled twice either: a fetch asked again returns the same
    // leases, a settle repeated finds them settled, and a push of outputs
    // (or of the feed) repeated after an error goes under the same receipt.
    println!("redis restart: {total} messages, {duplicates} delivered twice to the final stage");
    assert_eq!(duplicates, 0, "messages handled twice by the final stage");
    let b = backend(&server);
    for queue in ["first", "second"] {
        let depths = block_on(b.depths(queue)).expect("depths");
        assert_eq!(depths.pending + depths.in_flight + depths.delayed + depths.dead, 0, "{queue}: {depths:?}");
    }
}

fn pending_of(server: &RedisServer, queue: &str) -> usize {
    server.client().llen(format!("hookbus:{{{queue}}}:pending")).expect("llen")
}

/// A consumer frozen (SIGSTOP: a paused VM, a stalled process) for longer
/// than the heartbeat timeout is declared dead, and its message is handled
/// by another; on waking (SIGCONT) it must not finish that message too.
/// Returns when the handler began, with the server and both processes.
fn stall_past_the_heartbeat_timeout(
    handler_ms: u64,
    woken_after: Duration,
) -> (RedisServer, Worker, Worker, std::time::Instant) {
    let server = RedisServer::start();
    block_on(backend(&server).push("work", &[work(1, handler_ms)])).expect("push");
    let timeout = [("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000")];
    let args = ["--input", "work", "--output", "next", "--record", "done", "--started", "started"];
    let stalled = stage(&server, &args, &timeout);
    assert!(eventually(Duration::from_secs(10), || recorded(&server, "started") == vec![1]), "never started");
    let began = std::time::Instant::now();
    signal(&stalled, "STOP");
    let rescuer = stage(&server, &[&args[..], &["--max-sleep-ms", "0"]].concat(), &timeout);
    assert!(
        eventually(Duration::from_secs(15), || recorded(&server, "done") == vec![1]),
        "the stalled consumer's message was not handed on"
    );
    // Its handler records `done` before its settler pushes the output.
    assert!(
        eventually(Duration::from_secs(10), || pending_of(&server, "next") == 1),
        "the rescuer's output: {} on next",
        pending_of(&server, "next")
    );
    std::thread::sleep(woken_after.saturating_sub(began.elapsed()));
    signal(&stalled, "CONT");
    (server, stalled, rescuer, began)
}

/// Both consumers take new work and stop cleanly; every message was
/// handed on once.
fn both_consume_and_stop(server: &RedisServer, mut stalled: Worker, mut rescuer: Worker) {
    block_on(backend(server).push("work", &[work(2, 0), work(3, 0)])).expect("push");
    assert!(
        eventually(Duration::from_secs(10), || {
            let done = recorded(server, "done");
            done.contains(&2) && done.contains(&3)
        }),
        "new work was not handled"
    );
    for worker in [&mut stalled, &mut rescuer] {
        signal(worker, "TERM");
        assert_eq!(wait_exit(worker, Duration::from_secs(10)).code(), Some(0));
    }
    assert_eq!(pending_of(server, "next"), 3, "one output per message");
    assert_eq!(pending_of(server, "work"), 0);
}

#[test]
fn a_consumer_woken_from_a_stall_abandons_the_handler_another_consumer_took_over() {
    // Woken while its handler (8 s) still runs: the next heartbeat finds
    // it declared dead, and the handler is abandoned before its effect.
    let (server, stalled, rescuer, began) = stall_past_the_heartbeat_timeout(8_000, Duration::ZERO);
    // Past the moment the handler would have ended.
    std::thread::sleep(Duration::from_secs(9).saturating_sub(began.elapsed()));
    assert_eq!(recorded(&server, "done"), vec![1], "the woken consumer did not finish it too");
    assert_eq!(pending_of(&server, "next"), 1, "nor push its output");
    both_consume_and_stop(&server, stalled, rescuer);
}

#[test]
fn a_consumer_woken_after_its_handler_would_have_ended_does_not_push_its_output() {
    // Woken after its handler's (1 s) end: the handler finishes at once,
    // its effect made (handlers are idempotent), but the settler, its last
    // heartbeat long past, asks first and drops the output.
    let (server, stalled, rescuer, _) = stall_past_the_heartbeat_timeout(1_000, Duration::from_secs(4));
    assert!(
        eventually(Duration::from_secs(10), || recorded(&server, "done") == vec![1, 1]),
        "the woken handler did not end"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pending_of(&server, "next"), 1, "the woken consumer's output was not pushed");
    assert_eq!(pending_of(&server, "work"), 0, "nor its message put back");
    both_consume_and_stop(&server, stalled, rescuer);
}

#[test]
fn a_redis_restarted_empty_is_not_taken_for_this_consumer_being_declared_dead() {
    // Without AOF a restart loses everything, this consumer's registration
    // and lease too; nobody declared it dead, so the handler that was
    // running (it touches no Redis) ends as usual and its output, by then
    // the only trace of the message, is pushed.
    let mut server = RedisServer::start();
    block_on(backend(&server).push("work", &[work(1, 3_000)])).expect("push");
    let timeout = [("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000")];
    let mut worker = stage(&server, &["--input", "work", "--output", "next"], &timeout);
    assert!(eventually(Duration::from_secs(10), || in_flight(&server, "work") == 1), "never leased");
    server.restart();
    assert!(
        eventually(Duration::from_secs(15), || pending_of(&server, "next") == 1),
        "the running handler's output was dropped"
    );
    signal(&worker, "TERM");
    assert_eq!(wait_exit(&mut worker, Duration::from_secs(10)).code(), Some(0));
}

/// A TCP relay to Redis that can be cut: a network partition of the
/// processes that connect through it, and of nobody else.
struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (cut, open) = (Arc::new(std::sync::atomic::AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (refusing, streams) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else { continue };
                let pair = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
                let (Ok(c1), Ok(s1), Ok(c2), Ok(s2)) = pair else { continue };
                streams.lock().expect("lock").extend([c2, s2]);
                relay_one_way(client, server);
                relay_one_way(s1, c1);
            }
        });
        Relay { port, cut, open }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Drops every connection through it and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn relay_one_way(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn a_consumer_cut_off_from_redis_past_its_timeout_does_not_push_what_was_handed_on() {
    // Cut off alone (its own network), the consumer is declared dead and
    // its message handled by another; its handler (touching no Redis) has
    // ended just after the cut, and the settler keeps trying to push. Once
    // the network is back, the settler finds the note before its next try
    // and pushes nothing.
    let server = RedisServer::start();
    let relay = Relay::start(server.port());
    block_on(backend(&server).push("work", &[work(1, 300)])).expect("push");
    let timeout = ("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000");
    let through_relay = relay.url();
    let args = ["--input", "work", "--output", "next"];
    let cut_off = stage(&server, &args, &[timeout, ("REDIS_URL", through_relay.as_str())]);
    assert!(eventually(Duration::from_secs(10), || in_flight(&server, "work") == 1), "never leased");
    relay.cut();
    let other = stage(&server, &[&args[..], &["--max-sleep-ms", "0"]].concat(), &[timeout]);
    assert!(eventually(Duration::from_secs(15), || pending_of(&server, "next") == 1), "not handed on");
    relay.mend();
    let both = || block_on(backend(&server).depths("work")).is_ok_and(|d| d.consumers == 2);
    assert!(eventually(Duration::from_secs(15), both), "the cut-off consumer did not come back");
    // Its settler retries pushes with a backoff of at most 5 s.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(pending_of(&server, "next"), 1, "the cut-off consumer pushed its output too");
    assert_eq!(pending_of(&server, "work"), 0);
    // Both go on consuming, and stop cleanly.
    block_on(backend(&server).push("work", &[work(2, 0), work(3, 0)])).expect("push");
    assert!(eventually(Duration::from_secs(10), || pending_of(&server, "next") == 3), "new work was not handled");
    for mut worker in [cut_off, other] {
        signal(&worker, "TERM");
        assert_eq!(wait_exit(&mut worker, Duration::from_secs(10)).code(), Some(0));
    }
    assert_eq!((pending_of(&server, "next"), pending_of(&server, "work")), (3, 0), "one output per message");
}
