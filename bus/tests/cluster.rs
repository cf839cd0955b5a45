//! The bus on a Redis Cluster when a master goes away: a running worker
//! (the real `Runner`) and a producer ride out a SIGKILL and restart of the
//! master that serves their queues, with one connection made before the
//! outage, and nothing acknowledged is lost.
//!
//! The behaviour suite (`tests/behaviour.rs`, `on_cluster`) covers a
//! healthy cluster; this covers the connection's recovery.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::redis::{RedisBackend, RedisTarget};
use hookbus_bus::{Backend, Envelope, HandlerError, Outbox, Plugin, Runner, RunnerOptions, Shutdown};
use hookbus_config::BusSettings;
use hookbus_testkit::RedisCluster;

/// Passes `n` on from `work` to `done`.
struct Relay;

#[async_trait]
impl Plugin for Relay {
    fn name(&self) -> &str {
        "relay"
    }
    fn input(&self) -> &str {
        "work"
    }
    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        out.emit_payload("done", "test.n", None, &message.payload_as::<serde_json::Value>()?)?;
        Ok(())
    }
}

fn msg(n: u32) -> Envelope {
    Envelope::with_payload("test.n", &serde_json::json!({ "n": n })).expect("payload")
}

/// Pushes `n`, retrying while the cluster is unavailable (as the gateway's
/// client, GitHub, redelivers). Returns how long it took: the cluster client
/// itself retries a node it cannot reach, so an outage shows as a slow
/// push (or, past the bus's call timeout, a failed one).
async fn push_until_stored(backend: &dyn Backend, n: u32) -> Duration {
    let started = tokio::time::Instant::now();
    while let Err(err) = backend.push("work", &[msg(n)]).await {
        assert!(started.elapsed() < Duration::from_secs(30), "push {n} still failing after 30 s: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_a_master_restart_and_loses_nothing() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start_durable).await.expect("cluster");
    let target = RedisTarget::cluster(cluster.urls(), false);
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::open(&target, "hookbus", 4).expect("backend"));

    let bus = BusSettings {
        backoff_base_ms: 10,
        backoff_max_ms: 200,
        concurrency: 2,
        batch_size: 8,
        poll_interval_ms: 5,
        heartbeat_timeout_ms: 5_000,
        ..BusSettings::default()
    };
    let shutdown = Shutdown::new();
    let runner = Runner::new(backend.clone(), Arc::new(Relay), RunnerOptions::from_settings(&bus, "work"));
    let worker = tokio::spawn(runner.run(shutdown.clone()));

    for n in 0..50 {
        push_until_stored(&*backend, n).await;
    }
    // The master of `{work}` dies with messages pending, in flight or done.
    let port = cluster.port_of("hookbus:{work}:pending");
    cluster.kill_node(port);
    let producer = {
        let backend = backend.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for n in 50..100 {
                slowest = slowest.max(push_until_stored(&*backend, n).await);
            }
            slowest
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_node(port);
        cluster
    })
    .await
    .expect("restart");
    let slowest_push = producer.await.expect("producer");
    assert!(slowest_push >= Duration::from_millis(300), "the outage was never seen (slowest push {slowest_push:?})");

    // Everything reaches `done`: the worker reconnected on its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let work = backend.depths("work").await;
        let done = backend.depths("done").await;
        if let (Ok(work), Ok(done)) = (&work, &done) {
            if work.pending + work.in_flight + work.delayed == 0 && done.pending >= 100 {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "not drained after the restart: {work:?} {done:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await.expect("the worker stops");

    // Each of the 100 is there (at least once: a settle whose reply the
    // outage cut off is redelivered, by design).
    let done = backend.peek("done", 1_000).await.expect("peek done");
    let seen: HashSet<u64> = done
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .filter_map(|e| e.payload_as::<serde_json::Value>().ok())
        .filter_map(|p| p["n"].as_u64())
        .collect();
    let missing: Vec<u64> = (0..100).filter(|n| !seen.contains(n)).collect();
    assert!(missing.is_empty(), "lost across the restart: {missing:?}");
    assert_eq!(backend.depths("work").await.expect("depths").dead, 0);
    drop(cluster);
}
