//! Webhook-to-pushed-commit latency at a steady rate, through the real
//! binaries as an operator runs them: `hookbus-gateway` and one process of
//! each worker (one small dyno per stage) against a local `redis-server`,
//! with production defaults for every setting, committing into a bare git
//! remote.
//!
//! `LATENCY_RATE` webhooks/s (default 100) for `LATENCY_SECONDS` (default
//! 30), `issues.edited` built from a real payload, spread over
//! `LATENCY_RESOURCES` issues (default 200), each an update that must become
//! one commit. A webhook's latency runs from just before its POST to the
//! moment its commit (found by its `Hookbus-Delivery` trailer) is on the
//! remote's branch; the remote is watched every 2 ms. Also prints the peak
//! memory of every process and of redis-server.
//!
//! The remote is repacked geometrically every `LATENCY_REPACK_SECS`
//! (default 2; 0 never), as GitHub maintains its repositories: otherwise
//! every push leaves a pack there that nothing merges, about a thousand in
//! a run, and each later push walks them all.
//!
//! `cargo bench -p hookbus-e2e --bench latency`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hookbus_e2e::{
    bare_remote, build_bench_binaries, git, issue_template, rfc3339, send, Deployment, Webhook, WORKERS,
};
use hookbus_reconcile::store::{OperationStore, RedisStore};
use hookbus_testkit::{free_port, RedisServer};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The branch's head on the remote, read as git would (loose ref, then
/// packed refs); `None` before the first push.
fn head(remote: &Path) -> Option<String> {
    if let Ok(sha) = std::fs::read_to_string(remote.join("refs/heads/main")) {
        return Some(sha.trim().to_string());
    }
    let packed = std::fs::read_to_string(remote.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| line.strip_suffix(" refs/heads/main")).map(str::to_string)
}

/// Repacks `remote` geometrically every `every` until `stop`; returns how
/// many repacks went through. A failed one is only reported: the next one
/// catches up.
fn maintain(remote: PathBuf, every: Duration, stop: Arc<AtomicBool>) -> usize {
    let mut repacked = 0;
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let out = git(&remote, &["repack", "--geometric=2", "-d", "-q"]);
        match out.status.success() {
            true => repacked += 1,
            false => eprintln!("repacking the remote failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        }
        next = Instant::now() + every;
    }
    repacked
}

/// Watches the remote until `stop`: every delivery whose commit appeared,
/// with when it was first seen there.
fn watch(remote: PathBuf, stop: Arc<AtomicBool>) -> HashMap<String, Instant> {
    let mut pushed = HashMap::new();
    let mut last: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let now = head(&remote);
        if now.is_some() && now != last {
            let seen = Instant::now();
            let new = now.clone().unwrap_or_default();
            let range = match &last {
                Some(old) => format!("{old}..{new}"),
                None => new.clone(),
            };
            let out = git(&remote, &["log", "--format=%(trailers:key=Hookbus-Delivery,valueonly)", &range]);
            for delivery in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()) {
                pushed.entry(delivery.to_string()).or_insert(seen);
            }
            last = now;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    pushed
}

/// Settings that reach the benchmark's redis-server, for reading what the
/// processes left there.
fn settings_for(url: &str) -> hookbus_config::Settings {
    let mut settings = hookbus_config::Settings::default();
    settings.redis.url = hookbus_config::Secret::new(url);
    settings
}

/// Every queue's depths and its first dead letters' reasons: what an
/// operator would look at when webhooks did not arrive.
async fn where_messages_are(url: &str) -> String {
    let backend = match hookbus_bus::connect(&settings_for(url)) {
        Ok(backend) => backend,
        Err(err) => return format!("cannot read the queues: {err}"),
    };
    let mut out = String::from("queues when the wait ended:\n");
    for queue in hookbus_bus::QUEUES {
        match backend.depths(queue).await {
            Ok(d) => out.push_str(&format!(
                "  {queue:<10} pending {} in flight {} delayed {} held {} dead {} consumers {}\n",
                d.pending, d.in_flight, d.delayed, d.held, d.dead, d.consumers
            )),
            Err(err) => out.push_str(&format!("  {queue:<10} unreadable: {err}\n")),
        }
        for letter in backend.dead_list(queue, 3).await.unwrap_or_default() {
            out.push_str(&format!("    dead: {}\n", letter.reason));
        }
    }
    out
}

/// Seconds of sending per line of the latency-over-the-run figures.
const WINDOW_SECS: u64 = 5;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = env_number("LATENCY_RATE", 100).max(1);
    let seconds = env_number("LATENCY_SECONDS", 30).max(1);
    let resources = env_number("LATENCY_RESOURCES", 200).max(1);
    let total = rate * seconds;
    println!(
        "webhook -> pushed commit: {rate} webhooks/s for {seconds} s over {resources} issues; gateway + one process per stage, production defaults"
    );

    let bin = tokio::task::spawn_blocking(build_bench_binaries).await.expect("build");
    let redis = RedisServer::start();
    let scratch = tempfile::Builder::new().prefix("hookbus-latency-").tempdir().expect("scratch dir");
    let remote = scratch.path().join("records.git");
    bare_remote(&remote);
    let mut deployment = Deployment::new(bin, redis.url(), remote.clone(), scratch.path().to_path_buf(), free_port());
    // Production defaults, but for the branch the remote has.
    deployment.env = vec![("HOOKBUS_GIT__BRANCH".into(), "main".into()), ("RUST_LOG".into(), "warn".into())];
    let mut procs = vec![deployment.spawn("hookbus-gateway", 0)];
    for (slot, name) in WORKERS.iter().enumerate() {
        procs.push(deployment.spawn(name, slot + 1));
    }
    assert!(deployment.await_gateway(Duration::from_secs(20)), "the gateway never listened:\n{}", deployment.logs());

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (remote, stop) = (remote.clone(), stop.clone());
        std::thread::spawn(move || watch(remote, stop))
    };
    let repack_every = env_number("LATENCY_REPACK_SECS", 2);
    let maintenance = (repack_every > 0).then(|| {
        let (remote, stop) = (remote.clone(), stop.clone());
        std::thread::spawn(move || maintain(remote, Duration::from_secs(repack_every), stop))
    });

    let template = issue_template();
    let base = 1_795_000_000i64;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
    let url = deployment.webhook_url();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let retried = Arc::new(AtomicUsize::new(0));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut posts = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        // Every update is newer than the last one of its issue: each must
        // become a commit.
        let number = 1 + n % resources;
        let hook = Webhook::issue_edited(&template, number, &format!("latency update {n}"), &rfc3339(base + n as i64));
        let (client, url, sent_at, retried) = (client.clone(), url.clone(), sent_at.clone(), retried.clone());
        posts.push(tokio::spawn(async move {
            sent_at.lock().expect("lock").insert(hook.delivery.clone(), Instant::now());
            send(&client, &url, &hook, &retried).await;
        }));
    }
    for post in posts {
        post.await.expect("post");
    }
    let sending = started.elapsed();

    // Every webhook's commit on the remote, or a minute's grace.
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = total as usize;
    loop {
        let on_remote = git(&remote, &["rev-list", "--count", "main"]);
        let count: usize = String::from_utf8_lossy(&on_remote.stdout).trim().parse().unwrap_or(0);
        if count >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more look by the watcher at the final head.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let drained = started.elapsed();
    let memory: Vec<(String, u64)> =
        procs.iter().map(|p| (p.name.to_string(), p.peak_rss_kib().unwrap_or(0))).collect();
    let redis_peak: u64 = {
        let mut conn = redis.client();
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).expect("INFO memory");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory_peak:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    stop.store(true, Ordering::SeqCst);
    let pushed = watcher.join().expect("watcher");
    match maintenance.map(|thread| thread.join().expect("maintenance")) {
        Some(repacked) => println!("  remote repacked {repacked} times (every {repack_every} s)"),
        None => println!("  remote never repacked"),
    }
    if pushed.len() < total as usize {
        // Where the missing ones are, while the processes still run, and
        // what the processes said about it (warnings and errors only).
        eprintln!("{}", where_messages_are(&redis.url()).await);
        for section in deployment.logs().split("\n== ") {
            let lines: Vec<&str> = section.lines().collect();
            eprintln!("{}", lines.first().copied().unwrap_or(""));
            for line in &lines[lines.len().saturating_sub(30).max(1)..] {
                eprintln!("  {line}");
            }
        }
    }
    for mut proc in procs {
        proc.signal("TERM");
        let _ = proc.wait_exit(Duration::from_secs(10));
    }

    // Every post has ended: the map is ours alone from here.
    let sent_at = std::mem::take(&mut *sent_at.lock().expect("lock"));
    // Also by when they were sent: a backlog building up shows as windows
    // growing slower one after another; stalls as a few slow windows.
    let mut latencies = Vec::with_capacity(sent_at.len());
    let mut by_window: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (delivery, sent) in &sent_at {
        if let Some(at) = pushed.get(delivery) {
            let ms = at.duration_since(*sent).as_secs_f64() * 1000.0;
            latencies.push(ms);
            by_window.entry(sent.duration_since(started).as_secs() / WINDOW_SECS).or_default().push(ms);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let missing = expected - latencies.len();
    // A webhook without a commit is either superseded, as the spec wants
    // (reconcile cancels a queued operation when a newer one of its issue
    // arrives, and drops one older than what is applied: that happens once
    // the pipeline falls more than one update interval behind), or lost.
    let fates = {
        let store = RedisStore::from_settings(&settings_for(&redis.url())).expect("reconcile's store");
        // Many lookups at once over the store's one multiplexed connection,
        // not one round trip after another.
        let found: Vec<String> =
            futures::stream::iter(sent_at.keys().filter(|delivery| !pushed.contains_key(*delivery)))
                .map(|delivery| fate(&store, delivery))
                .buffer_unordered(64)
                .collect()
                .await;
        let mut fates: std::collections::BTreeMap<String, usize> = Default::default();
        for state in found {
            *fates.entry(state).or_default() += 1;
        }
        fates
    };
    let superseded = fates.get("canceled").copied().unwrap_or(0) + fates.get("dropped").copied().unwrap_or(0);
    let lost = missing - superseded;
    let (p50, p90, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "  sent          {total} webhooks in {:.1} s ({:.1}/s), {} re-sent",
        sending.as_secs_f64(),
        total as f64 / sending.as_secs_f64(),
        retried.load(Ordering::SeqCst)
    );
    println!(
        "  committed     {} of {expected} within {:.1} s of the first send",
        latencies.len(),
        drained.as_secs_f64()
    );
    if missing > 0 {
        let list: Vec<String> = fates.iter().map(|(state, n)| format!("{n} {state}")).collect();
        println!(
            "  not committed {missing}: {} ({superseded} superseded by a newer update of their issue: the pipeline \
             fell behind)",
            list.join(", ")
        );
    }
    println!("  latency       p50 {p50:.0} ms, p90 {p90:.0} ms, p99 {p99:.0} ms, max {max:.0} ms");
    for (window, mut values) in by_window {
        values.sort_by(f64::total_cmp);
        println!(
            "    sent {:>3}-{:<3} s: p50 {:>5.0} ms, p90 {:>5.0} ms, max {:>5.0} ms",
            window * WINDOW_SECS,
            (window + 1) * WINDOW_SECS,
            percentile(&values, 0.50),
            percentile(&values, 0.90),
            values.last().copied().unwrap_or(f64::NAN)
        );
    }
    for (name, kib) in &memory {
        println!("  peak memory   {name:<18} {:>6.1} MiB", *kib as f64 / 1024.0);
    }
    println!("  peak memory   {:<18} {:>6.1} MiB (used_memory_peak)", "redis-server", redis_peak as f64 / 1024.0);
    let memory: serde_json::Map<String, serde_json::Value> =
        memory.into_iter().map(|(name, kib)| (name, kib.into())).collect();
    hookbus_testkit::bench::record(
        "webhook-to-commit",
        serde_json::json!({
            "rate": rate,
            "seconds": seconds,
            "resources": resources,
            "sent": total,
            "committed": latencies.len(),
            "missing": missing,
            "superseded": superseded,
            "lost": lost,
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "max_ms": max,
            "peak_memory_kib": memory,
            "redis_peak_memory_kib": redis_peak,
        }),
    );
    assert_eq!(lost, 0, "{lost} webhooks neither became a commit on the remote nor were superseded: {fates:?}");
}

/// What became of a delivery that has no commit on the remote: the state of
/// the operation it caused in reconcile's records (`canceled`, `dropped`,
/// `completed`, ...), or `no operation record` when it never reached
/// reconcile.
async fn fate(store: &RedisStore, delivery: &str) -> String {
    match store.operations_of_delivery(delivery).await {
        Ok(records) => records.first().map_or("no operation record", |record| record.state.as_str()).to_string(),
        Err(err) => format!("unreadable: {err}"),
    }
}
