//! Gateway ingestion benchmark: sustained signed webhooks (a real ~6 KiB
//! payload, a fresh delivery id per request) over N keep-alive connections
//! against a local redis-server, and in the same run a bare axum handler
//! that answers 200 doing nothing, as the ceiling of this machine.
//!
//! `cargo bench -p hookbus-gateway --bench ingest`
//! Tunables: `INGEST_SECS` (default 10 per target), `INGEST_ROUNDS`
//! (default 5), `INGEST_CONNECTIONS` (default 64), `INGEST_DRAIN` (default
//! 1), `INGEST_LOG` (default 1), `INGEST_THREADS` (the gateway's serving
//! threads; default as `gateway.threads`). All traffic stays on 127.0.0.1.
//!
//! The two targets take turns, `INGEST_ROUNDS` times each, so that a change
//! in what else the machine is doing lands on both alike (this machine's
//! speed drifts by tens of percent within a minute).
//!
//! Sustained means drained: in a deployment normalise takes messages off
//! `pending` as they come, and Redis reuses their memory. A run that only
//! fills `pending` (1.5 GB in 10 s) measures Redis growing its memory
//! instead — page faults were a fifth of redis-server's time. So a drain
//! thread counts and deletes what is on `pending` every 100 ms (one
//! `MULTI LLEN DEL EXEC`: nothing is deleted uncounted), standing in for
//! the normalise dyno, which runs elsewhere; its Redis work is in
//! redis-server's figure. `INGEST_DRAIN=0` keeps everything instead.
//!
//! The gateway logs as `hookbus-gateway` does, a line per webhook through
//! the same writer (`hookbus_bus::telemetry`), into a pipe that a thread
//! reads and throws away, standing for the platform's log router; the
//! gateway's CPU includes its `log-writer` thread. `INGEST_LOG=0` measures
//! without logs, as the benchmark did before the seventeenth session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use hookbus_bus::Shutdown;
use hookbus_config::{Secret, Settings};
use hookbus_gateway::signature::sign;
use hookbus_gateway::{serve, serve_on_threads, Gateway};
use hookbus_testkit::RedisServer;

const SECRET: &str = "benchmark-secret";

struct Figures {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[rank] as f64 / 1000.0
    }
    fn print(&self, name: &str) {
        println!(
            "{name:<28} {:>10.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} ok, {} failed, {:.1} s)",
            self.rate(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64()
        );
        println!(
            "{:<28} p90 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; p99 / p50 {:.2}",
            "",
            self.percentile_ms(0.90),
            self.percentile_ms(0.999),
            self.percentile_ms(1.0),
            self.percentile_ms(0.99) / self.percentile_ms(0.50)
        );
    }
}

/// CPU time (user + system) so far of this process's threads whose name
/// starts with `name`: what the server side cost, whatever else the machine
/// was doing.
fn thread_cpu(name: &str) -> Duration {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(name) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is the 3rd, utime the 14th, stime the 15th.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        for index in [11, 12] {
            ticks += fields.get(index).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_secs_f64(ticks as f64 / ticks_per_second)
}

/// CPU time redis-server has used so far (`INFO cpu`).
fn redis_cpu(conn: &mut redis::Connection) -> Duration {
    let info: String = redis::cmd("INFO").arg("cpu").query(conn).unwrap_or_default();
    let seconds: f64 = info
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| *name == "used_cpu_sys" || *name == "used_cpu_user")
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum();
    Duration::from_secs_f64(seconds)
}

/// Installs hookbus's logging, writing into a pipe that a thread
/// (`log-reader`) empties; returns the guard and that thread, which ends
/// with the number of bytes it read once the guard is dropped.
fn log_to_pipe() -> (hookbus_bus::telemetry::LogGuard, std::thread::JoinHandle<u64>) {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let reading = std::thread::Builder::new()
        .name("log-reader".into())
        .spawn(move || {
            let mut sink = std::io::sink();
            std::io::copy(&mut reader, &mut sink).unwrap_or(0)
        })
        .expect("log reader");
    (hookbus_bus::telemetry::init_with(writer, false), reading)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Drives `url` from `connections` tasks for `duration` after a short warm-up.
async fn drive(url: String, body: Arc<Vec<u8>>, signature: String, connections: usize, duration: Duration) -> Figures {
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (url, body, signature) = (url.clone(), body.clone(), signature.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
                let (mut ok, mut failed, mut latencies) = (0usize, 0usize, Vec::with_capacity(1 << 16));
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "installation")
                        .header("x-github-delivery", hookbus_bus::envelope::new_id())
                        .header("x-hub-signature-256", &signature)
                        .body(body.as_ref().clone())
                        .send()
                        .await;
                    let good = match sent {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.bytes().await;
                            status.is_success()
                        }
                        Err(_) => false,
                    };
                    if now >= measure_from {
                        if good {
                            ok += 1;
                            latencies.push(now.elapsed().as_micros() as u64);
                        } else {
                            failed += 1;
                        }
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    let mut figures = Figures { ok: 0, failed: 0, elapsed: duration, latencies_us: Vec::new() };
    for task in tasks {
        let (ok, failed, latencies) = task.await.expect("client task");
        figures.ok += ok;
        figures.failed += failed;
        figures.latencies_us.extend(latencies);
    }
    figures.latencies_us.sort_unstable();
    figures
}

/// Serves `router` on a loopback port from its own runtime (the server's
/// two workers compete with the client's for the machine, as in production
/// they would compete with nothing: the ratio is what matters).
fn spawn_server(router: Router, shutdown: Shutdown) -> (String, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bare-server")
            .enable_all()
            .build()
            .expect("rt");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("address")).expect("send address");
            let _ = serve(listener, router, shutdown, Duration::from_secs(5)).await;
        });
    });
    let address = rx.recv().expect("server address");
    (format!("http://{address}"), thread)
}

/// Counts and deletes what is on `pending` every 100 ms until `stop`: the
/// normalise dyno of a deployment, as far as Redis's memory is concerned.
/// Returns how many messages it took off.
fn drain(url: String, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client.get_connection().expect("drain connection");
        let mut drained = 0u64;
        loop {
            let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
            let (count,): (u64,) = redis::pipe()
                .atomic()
                .cmd("LLEN")
                .arg(PENDING)
                .cmd("DEL")
                .arg(PENDING)
                .ignore()
                .query(&mut conn)
                .expect("drain");
            drained += count;
            if stopping {
                return drained;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

const PENDING: &str = "hookbus:{normalise}:pending";

/// One target's totals over its rounds.
#[derive(Default)]
struct Totals {
    figures: Option<Figures>,
    client_cpu: Duration,
    server_cpu: Duration,
    redis_cpu: Duration,
}

impl Totals {
    fn add(&mut self, figures: Figures) {
        match &mut self.figures {
            None => self.figures = Some(figures),
            Some(all) => {
                all.ok += figures.ok;
                all.failed += figures.failed;
                all.elapsed += figures.elapsed;
                all.latencies_us.extend(figures.latencies_us);
            }
        }
    }

    fn figures(mut self) -> (Figures, Duration, Duration, Duration) {
        let mut figures = self.figures.take().unwrap_or(Figures {
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
        });
        figures.latencies_us.sort_unstable();
        (figures, self.client_cpu, self.server_cpu, self.redis_cpu)
    }
}

fn main() {
    let logging = env_number("INGEST_LOG", 1) != 0;
    let (logs, log_reader) = match logging {
        true => {
            let (logs, reader) = log_to_pipe();
            (Some(logs), Some(reader))
        }
        false => (None, None),
    };
    let seconds = env_number("INGEST_SECS", 10);
    let rounds = env_number("INGEST_ROUNDS", 5).max(1);
    let connections = env_number("INGEST_CONNECTIONS", 64) as usize;
    let draining = env_number("INGEST_DRAIN", 1) != 0;
    let round = Duration::from_secs_f64(seconds as f64 / rounds as f64);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/github/installation/suspend.json");
    let body = Arc::new(std::fs::read(&fixture).expect("fixture"));
    let signature = sign(SECRET.as_bytes(), &body);
    let body_len = body.len();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("rt");

    println!(
        "gateway ingest benchmark: {} byte payload (installation/suspend), {connections} connections, {seconds} s per \
         target in {rounds} alternating rounds, pending {}",
        body.len(),
        if draining { "drained every 100 ms" } else { "kept" }
    );

    // Bare axum: the ceiling.
    let bare_shutdown = Shutdown::new();
    let bare = Router::new().route("/webhooks/github", post(|| async { StatusCode::OK }));
    let (bare_base, bare_server) = spawn_server(bare, bare_shutdown.clone());

    // The gateway over a local redis-server.
    let redis = RedisServer::start();
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(redis.url());
    settings.github.webhook_secret = Secret::new(SECRET);
    let shutdown = Shutdown::new();
    // Served as `hookbus-gateway` serves: connections accepted on one
    // thread and handed to `gateway.threads` (one per CPU, at most 4) serving threads,
    // `gateway-0`, `gateway-1`, ..., each with a gateway of its own.
    let (base, server) = {
        let settings = settings.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("gateway-accept".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    tx.send(listener.local_addr().expect("address")).expect("send address");
                    let threads = match env_number("INGEST_THREADS", 0) {
                        0 => settings.gateway.serving_threads(),
                        n => n as usize,
                    };
                    let build = move || {
                        let backend = hookbus_bus::connect(&settings).expect("backend");
                        Ok(Gateway::over_redis(backend, &settings)?.router())
                    };
                    let _ = serve_on_threads(listener, threads, build, shutdown, Duration::from_secs(5)).await;
                });
            })
            .expect("gateway thread");
        (format!("http://{}", rx.recv().expect("address")), thread)
    };
    let mut conn = redis.client();
    let stop_drain = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = draining.then(|| drain(redis.url(), stop_drain.clone()));

    let (mut bare_totals, mut gateway_totals) = (Totals::default(), Totals::default());
    for _ in 0..rounds {
        for (target, url, totals) in
            [("bare-server", &bare_base, &mut bare_totals), ("gateway-", &base, &mut gateway_totals)]
        {
            // The log writer works for the gateway only: the bare handler logs nothing.
            let server_cpu = || thread_cpu(target) + thread_cpu("log-writer");
            let (client_before, server_before, redis_before) =
                (thread_cpu("load-client"), server_cpu(), redis_cpu(&mut conn));
            let figures = client_rt.block_on(drive(
                format!("{url}/webhooks/github"),
                body.clone(),
                signature.clone(),
                connections,
                round,
            ));
            totals.client_cpu += thread_cpu("load-client") - client_before;
            totals.server_cpu += server_cpu() - server_before;
            totals.redis_cpu += redis_cpu(&mut conn).saturating_sub(redis_before);
            totals.add(figures);
        }
    }
    // Only the gateway logs, so all of the writer's time is the gateway runs'
    // (read now: the thread ends with the log guard).
    let log_writer_cpu = thread_cpu("log-writer");
    bare_shutdown.trigger();
    shutdown.trigger();
    let _ = bare_server.join();
    let _ = server.join();
    stop_drain.store(true, std::sync::atomic::Ordering::Relaxed);
    let drained = drainer.map(|thread| thread.join().expect("drain thread")).unwrap_or(0);

    let (bare_figures, bare_client_cpu, bare_server_cpu, _) = bare_totals.figures();
    let (gateway_figures, gateway_client_cpu, server_cpu, redis_used) = gateway_totals.figures();
    bare_figures.print("bare axum (200, no work)");
    // The CPU times include each round's 0.5 s warm-up, whose requests are
    // not counted: estimate them at the measured rate.
    let warmup_share = 1.0 + 0.5 / round.as_secs_f64();
    let bare_answered = bare_figures.ok as f64 * warmup_share;
    let per_bare = |cpu: Duration| cpu.as_secs_f64() * 1e6 / bare_answered.max(1.0);
    println!(
        "cpu per request, bare run: load client {:.1} us, bare server {:.1} us",
        per_bare(bare_client_cpu),
        per_bare(bare_server_cpu)
    );
    gateway_figures.print("gateway (signed, to redis)");

    let left: u64 = redis::cmd("LLEN").arg(PENDING).query(&mut conn).expect("LLEN");
    let stored = drained + left;
    println!("messages that reached {PENDING}: {stored} ({drained} drained, {left} left)");
    drop(logs);
    match log_reader.map(|reader| reader.join().unwrap_or(0)) {
        Some(bytes) => println!(
            "gateway log (as deployed, into a pipe): {bytes} bytes, {:.0} per accepted webhook",
            bytes as f64 / stored.max(1) as f64
        ),
        None => println!("gateway log: off (INGEST_LOG=0)"),
    }
    // Warm-up included on both sides of the division: every stored message.
    let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / stored.max(1) as f64;
    println!(
        "cpu per accepted webhook: gateway threads {:.1} us (of it log-writer {:.1} us), redis-server {:.1} us, load client {:.1} us",
        per_request(server_cpu),
        per_request(log_writer_cpu),
        per_request(redis_used),
        per_request(gateway_client_cpu)
    );
    // In a closed loop every connection has one request out at a time, so
    // the mean latency is connections / rate (Little's law) whatever the
    // server does with it; the tail is that mean times the machine's spread
    // (p99 / p50 above, alike for both targets when both saturate the CPUs).
    println!(
        "closed loop: {connections} connections / rate = {:.2} ms (bare), {:.2} ms (gateway)",
        1000.0 * connections as f64 / bare_figures.rate(),
        1000.0 * connections as f64 / gateway_figures.rate()
    );
    println!(
        "gateway / bare: {:.0}% of the bare handler's requests/s (target >= 50%), gateway p99 {:.2} ms (target < 10 ms)",
        100.0 * gateway_figures.rate() / bare_figures.rate(),
        gateway_figures.percentile_ms(0.99)
    );
    hookbus_testkit::bench::record(
        "gateway-ingest",
        serde_json::json!({
            "payload_bytes": body_len,
            "connections": connections,
            "seconds": seconds,
            "rounds": rounds,
            "pending_drained": draining,
            "gateway_logs": logging,
            "bare_requests_per_s": bare_figures.rate(),
            "gateway_requests_per_s": gateway_figures.rate(),
            "ratio": gateway_figures.rate() / bare_figures.rate(),
            "target_ratio": 0.5,
            "p50_ms": gateway_figures.percentile_ms(0.50),
            "p90_ms": gateway_figures.percentile_ms(0.90),
            "p99_ms": gateway_figures.percentile_ms(0.99),
            "p999_ms": gateway_figures.percentile_ms(0.999),
            "max_ms": gateway_figures.percentile_ms(1.0),
            "bare_p50_ms": bare_figures.percentile_ms(0.50),
            "bare_p99_ms": bare_figures.percentile_ms(0.99),
            "target_p99_ms": 10.0,
            "stored": stored,
            "gateway_cpu_us_per_webhook": per_request(server_cpu),
            "redis_cpu_us_per_webhook": per_request(redis_used),
            "peak_memory_kib": hookbus_testkit::bench::peak_rss_kib(std::process::id()),
        }),
    );
}
