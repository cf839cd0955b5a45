//! Bus pipeline benchmark: four no-op stages, ~1 KiB messages.
//!
//! ```text
//! cargo bench -p hookbus-bus --bench pipeline            # 100,000 messages
//! BENCH_MESSAGES=20000 cargo bench -p hookbus-bus --bench pipeline
//! BENCH_ONLY=memory cargo bench -p hookbus-bus --bench pipeline   # skip Redis
//! BENCH_WARMUP=0 cargo bench -p hookbus-bus --bench pipeline      # from cold
//! ```
//!
//! Over Redis, stages 1-3 are `hookbus-test-stage` processes and stage 4 runs
//! in this process, which also produces and measures — one process per
//! stage, against a redis-server started here. In memory, all four stages
//! run in this process. For each it prints:
//!
//! - end-to-end throughput: every message pushed at once, time until the
//!   last one leaves stage 4; after an untimed warm-up of a fifth as many,
//!   five rounds (`BENCH_ROUNDS`), the median round's figure;
//! - latency p50/p99 from first enqueue to leaving stage 4, at a paced rate;
//! - peak resident memory of each process.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use hookbus_bus::redis::RedisBackend;
use hookbus_bus::{Backend, Envelope, HandlerError, MemoryBackend, Outbox, Plugin, Runner, RunnerOptions, Shutdown};
use hookbus_config::BusSettings;
use hookbus_testkit::RedisServer;

const STAGES: [&str; 4] = ["s1", "s2", "s3", "s4"];

#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    n: u64,
    /// When the message entered stage 1, µs since the epoch.
    t0_us: u64,
    #[serde(with = "serde_bytes")]
    pad: Vec<u8>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn message(n: u64) -> Envelope {
    let body = Body { n, t0_us: now_us(), pad: vec![b'x'; 1000] };
    Envelope::with_payload("bench.noop", &body).expect("payload")
}

/// Stages 1-3 in memory: forward the payload unchanged.
struct Forward {
    input: &'static str,
    output: &'static str,
}

#[async_trait]
impl Plugin for Forward {
    fn name(&self) -> &str {
        "forward"
    }
    fn input(&self) -> &str {
        self.input
    }
    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        out.emit(self.output, Envelope::new(message.kind.clone(), message.payload.clone()));
        Ok(())
    }
}

/// Stage 4: counts and records latency.
#[derive(Default)]
struct Sink {
    done: AtomicU64,
    /// When `done` reached this count, the throughput run's end is taken:
    /// exact, where the waiting loop would add up to one poll interval.
    target: AtomicU64,
    finished: Mutex<Option<Instant>>,
    latencies_us: Mutex<Vec<u64>>,
    measure: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Plugin for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    fn input(&self) -> &str {
        "s4"
    }
    async fn handle(&self, message: &Envelope, _out: &mut Outbox) -> Result<(), HandlerError> {
        if self.measure.load(Ordering::Relaxed) {
            let body: Body = message.payload_as()?;
            let latency = now_us().saturating_sub(body.t0_us);
            self.latencies_us.lock().expect("lock").push(latency);
        }
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.target.load(Ordering::Relaxed) {
            *self.finished.lock().expect("lock") = Some(Instant::now());
        }
        Ok(())
    }
}

fn settings() -> BusSettings {
    // BENCH_CONCURRENCY: handlers per stage (default 32, as a stage whose
    // handlers wait on I/O would run).
    let concurrency = std::env::var("BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    BusSettings { batch_size: 500, concurrency, poll_interval_ms: 5, ..BusSettings::default() }
}

async fn wait_done(sink: &Sink, target: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while sink.done.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

struct Figures {
    /// Of the median round, and the slowest and fastest.
    throughput: f64,
    throughput_min: f64,
    throughput_max: f64,
    rounds: usize,
    /// CPU time of every process involved (stages, producer, redis-server)
    /// per message, during the throughput run: what the figure costs, which
    /// other load on the machine barely changes.
    cpu_us_per_msg: f64,
    /// Of which redis-server's.
    redis_cpu_us_per_msg: f64,
    p50_ms: f64,
    p99_ms: f64,
    paced_rate: u64,
}

/// `cpu` tells the CPU seconds used so far by the bus's processes and by
/// redis-server.
async fn measure(
    backend: Arc<dyn Backend>,
    sink: Arc<Sink>,
    total: u64,
    paced_rate: u64,
    cpu: impl Fn() -> (f64, f64),
) -> Figures {
    // Warm-up, untimed: a fifth of the load goes through first, so the
    // figure is the pipeline's steady state rather than the first moments
    // of a fresh process (allocator arenas and queue buffers growing, page
    // faults on memory touched for the first time), which a 0.1 s run would
    // otherwise be much of. BENCH_WARMUP=0 measures from cold.
    let warmup: u64 = std::env::var("BENCH_WARMUP").ok().and_then(|v| v.parse().ok()).unwrap_or(total / 5);
    let payload = message(0).payload;
    let batches_of = |n: u64| -> Vec<Vec<Arc<Envelope>>> {
        (0..n)
            .collect::<Vec<_>>()
            .chunks(1_000)
            .map(|chunk| {
                chunk.iter().map(|_| Arc::new(Envelope::new("bench.noop", Bytes::copy_from_slice(&payload)))).collect()
            })
            .collect()
    };
    if warmup > 0 {
        let before = sink.done.load(Ordering::Relaxed);
        for batch in &mut batches_of(warmup) {
            backend.push_vec("s1", batch, None).await.expect("push");
        }
        assert!(wait_done(&sink, before + warmup, Duration::from_secs(600)).await, "warm-up did not drain");
    }

    // Throughput: everything at once, in rounds of `total` messages; the
    // figures are the median round's (throughput and CPU per message each
    // their own median), the range printed beside them. One round in
    // memory lasts about 0.1 s, and on a shared 2-core host a single
    // round's figure swings by a quarter from one run to the next.
    // The messages exist before the clock starts (making them is the
    // producer's work, not the bus's), each with its own copy of the
    // payload as distinct messages have: one buffer shared by every message
    // would have all cores fight over its reference count, which no real
    // load does.
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    let mut runs: Vec<(f64, f64, f64)> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut batches = batches_of(total);
        *sink.finished.lock().expect("lock") = None;
        let before = sink.done.load(Ordering::Relaxed);
        sink.target.store(before + total, Ordering::Relaxed);
        let cpu_before = cpu();
        let start = Instant::now();
        for batch in &mut batches {
            backend.push_vec("s1", batch, None).await.expect("push");
        }
        assert!(wait_done(&sink, before + total, Duration::from_secs(600)).await, "pipeline did not drain");
        let end = sink.finished.lock().expect("lock").unwrap_or_else(Instant::now);
        let throughput = total as f64 / end.duration_since(start).as_secs_f64();
        let cpu_after = cpu();
        let per_msg = |secs: f64| secs * 1e6 / total as f64;
        let redis = per_msg(cpu_after.1 - cpu_before.1);
        runs.push((throughput, per_msg(cpu_after.0 - cpu_before.0) + redis, redis));
    }
    let median = |pick: fn(&(f64, f64, f64)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[0], values[values.len() - 1])
    };
    let (throughput, throughput_min, throughput_max) = median(|r| r.0);
    let (cpu_us_per_msg, _, _) = median(|r| r.1);
    let (redis_cpu_us_per_msg, _, _) = median(|r| r.2);

    // Latency: a steady rate, in 10 ms ticks.
    sink.measure.store(true, Ordering::Relaxed);
    let paced_total = paced_rate * 5;
    let per_tick = (paced_rate / 100).max(1);
    let before = sink.done.load(Ordering::Relaxed);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < paced_total {
        ticker.tick().await;
        let batch: Vec<Envelope> = (sent..sent + per_tick).map(message).collect();
        backend.push("s1", &batch).await.expect("push");
        sent += per_tick;
    }
    assert!(wait_done(&sink, before + sent, Duration::from_secs(120)).await, "paced run did not drain");
    let mut lat = sink.latencies_us.lock().expect("lock").clone();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0) as f64 / 1000.0;
    Figures {
        throughput,
        throughput_min,
        throughput_max,
        rounds,
        cpu_us_per_msg,
        redis_cpu_us_per_msg,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        paced_rate,
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    hookbus_testkit::bench::peak_rss_kib(pid).unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    hookbus_testkit::bench::cpu_seconds(pid).unwrap_or(0.0)
}

/// Prints the figures, and records them for the performance report.
fn print(bench: &str, label: &str, f: &Figures, target: f64, memory: &str) {
    hookbus_testkit::bench::record(
        bench,
        serde_json::json!({
            "label": label,
            "messages_per_s": f.throughput,
            "messages_per_s_min": f.throughput_min,
            "messages_per_s_max": f.throughput_max,
            "rounds": f.rounds,
            "cpu_us_per_message": f.cpu_us_per_msg,
            "redis_cpu_us_per_message": f.redis_cpu_us_per_msg,
            "target_messages_per_s": target,
            "paced_rate": f.paced_rate,
            "p50_ms": f.p50_ms,
            "p99_ms": f.p99_ms,
            "peak_memory": memory,
        }),
    );
    println!("{label}");
    println!(
        "  end-to-end throughput : {:>10.0} msgs/s   (target >= {target:.0}; median of {} rounds, {:.0} to {:.0})",
        f.throughput, f.rounds, f.throughput_min, f.throughput_max
    );
    println!(
        "  CPU per message       : {:>10.2} µs (all processes, all stages; redis-server {:.2} µs)",
        f.cpu_us_per_msg, f.redis_cpu_us_per_msg
    );
    println!("  latency at {:>6} msgs/s: p50 {:.2} ms, p99 {:.2} ms", f.paced_rate, f.p50_ms, f.p99_ms);
    println!("  peak memory           : {memory}");
}

fn main() {
    let total: u64 = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let paced: u64 = std::env::var("BENCH_PACED_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    println!("bus pipeline: 4 no-op stages, {total} messages of ~1 KiB, {} cores", num_cpus());

    // In memory.
    let figures = runtime.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let sink = Arc::new(Sink::default());
        let shutdown = Shutdown::new();
        let bus = settings();
        let mut tasks = Vec::new();
        for w in STAGES.windows(2) {
            let plugin = Arc::new(Forward { input: w[0], output: w[1] });
            let runner = Runner::new(backend.clone(), plugin, RunnerOptions::from_settings(&bus, w[0]));
            tasks.push(tokio::spawn(runner.run(shutdown.clone())));
        }
        let runner = Runner::new(backend.clone(), sink.clone(), RunnerOptions::from_settings(&bus, "s4"));
        tasks.push(tokio::spawn(runner.run(shutdown.clone())));
        let figures = measure(backend, sink, total, paced, || (cpu_seconds(std::process::id()), 0.0)).await;
        shutdown.trigger();
        for t in tasks {
            let _ = t.await;
        }
        figures
    });
    print(
        "pipeline-memory",
        "in memory (one process)",
        &figures,
        1_000_000.0,
        &format!("{} MiB", peak_rss_kib(std::process::id()) / 1024),
    );

    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "memory") {
        return;
    }

    // Over Redis.
    let server = RedisServer::start();
    let stage_bin = env!("CARGO_BIN_EXE_hookbus-test-stage");
    let bus = settings();
    let mut children: Vec<Child> = STAGES
        .windows(2)
        .map(|w| {
            Command::new(stage_bin)
                .args(["--input", w[0], "--output", w[1]])
                .env("REDIS_URL", server.url())
                .env("HOOKBUS_BUS__BATCH_SIZE", bus.batch_size.to_string())
                .env("HOOKBUS_BUS__CONCURRENCY", bus.concurrency.to_string())
                .env("HOOKBUS_BUS__POLL_INTERVAL_MS", bus.poll_interval_ms.to_string())
                .env("RUST_LOG", "warn")
                .spawn()
                .expect("start stage process")
        })
        .collect();
    let figures = runtime.block_on(async {
        let backend: Arc<dyn Backend> =
            Arc::new(RedisBackend::connect(&server.url(), "hookbus", 8, false).expect("pool"));
        let sink = Arc::new(Sink::default());
        let shutdown = Shutdown::new();
        let runner = Runner::new(backend.clone(), sink.clone(), RunnerOptions::from_settings(&bus, "s4"));
        let task = tokio::spawn(runner.run(shutdown.clone()));
        let pids: Vec<u32> = children.iter().map(Child::id).chain([std::process::id()]).collect();
        let redis_info = Mutex::new(server.client());
        let cpu = || {
            let redis = redis_info.lock().map(|mut c| hookbus_testkit::bench::redis_cpu_seconds(&mut c).unwrap_or(0.0));
            (pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>(), redis.unwrap_or(0.0))
        };
        let figures = measure(backend, sink, total, paced, cpu).await;
        shutdown.trigger();
        let _ = task.await;
        if let Ok(mut c) = redis_info.lock() {
            print_commandstats(&mut c);
        }
        figures
    });
    let memory: Vec<String> = children
        .iter()
        .zip(["s1", "s2", "s3"])
        .map(|(c, s)| format!("{s} {} MiB", peak_rss_kib(c.id()) / 1024))
        .chain(std::iter::once(format!("s4+producer {} MiB", peak_rss_kib(std::process::id()) / 1024)))
        .collect();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    print(
        "pipeline-redis",
        "redis (one process per stage, local redis-server)",
        &figures,
        32_000.0,
        &memory.join(", "),
    );
}

/// What redis-server did for the whole run, busiest commands first: calls
/// and time per call, which says how well the bus batches.
fn print_commandstats(client: &mut redis::Connection) {
    let Ok(info) = redis::cmd("INFO").arg("commandstats").query::<String>(client) else { return };
    let mut rows: Vec<(String, u64, f64)> = info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| stats.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='));
            Some((name.to_string(), field("calls")?.parse().ok()?, field("usec")?.parse().ok()?))
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("  redis-server commands (whole run): ");
    for (name, calls, usec) in rows.iter().take(8) {
        println!("    {name:<12} {calls:>9} calls {:>9.1} ms {:>8.1} µs/call", usec / 1000.0, usec / *calls as f64);
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
