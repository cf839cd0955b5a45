//! The chaos test of the whole pipeline (issue 10): the real binaries as
//! separate processes — `hookbus-gateway` and two each of
//! `hookbus-normalise`, `hookbus-reconcile`, `hookbus-commit` and
//! `hookbus-notify` — against a real `redis-server` with AOF, a bare git
//! remote and a local subscriber. Webhooks built from a real payload
//! (`fixtures/github/issues/edited.json`) arrive out of order, duplicated and
//! in same-second bursts while workers and the gateway are SIGKILLed and
//! SIGTERMed at random and Redis is restarted once; senders re-send what
//! got no 202, as GitHub redelivers. Then every queue must drain and the outcome
//! must be exactly what the SPEC promises (see the assertions at the end of
//! [`chaos_pipeline_converges_under_kills_and_a_redis_restart`]).
//!
//! Binaries: [`hookbus_e2e::build_binaries`] builds the workspace's
//! `hookbus-*` binaries once, in the test's own profile.
//!
//! Size: `CHAOS_WEBHOOKS` (default 400) and `CHAOS_RESOURCES` (default 20);
//! `CHAOS_SEND_SECONDS` (default 20) is how long sending takes; `CHAOS_SEED`
//! replays a run. The full size is documented in
//! docs/testing.md:
//! `CHAOS_WEBHOOKS=2000 CHAOS_RESOURCES=50 cargo test -p hookbus-e2e --release -- --nocapture chaos`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hookbus_bus::redis::RedisBackend;
use hookbus_bus::Backend;
use hookbus_e2e::{
    bare_remote, build_binaries, git, issue_template, rfc3339, send, subscriber, Deployment, Proc, Received, Webhook,
    QUEUES, WORKERS,
};
use hookbus_testkit::{free_port, RedisServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Commands;

/// The fixture's repository, lowercased as normalise keys it.
const REPOSITORY: &str = "codertocat/hello-world";
/// Issue numbers of the test's resources start here.
const FIRST_ISSUE: u64 = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One update of one resource; `updated_at` in whole seconds.
#[derive(Clone)]
struct Update {
    number: u64,
    title: String,
    updated_at: String,
    updated_at_s: i64,
}

/// The updates of every resource: increasing `updated_at`, about one in five
/// in the same second as the one before (a tie with a different title), the
/// newest of each resource alone in its second so the expected file is
/// unambiguous.
fn updates(rng: &mut StdRng, resources: usize, per_resource: usize) -> Vec<Vec<Update>> {
    let base = 1_795_000_000i64; // 2026-11-18
    (0..resources)
        .map(|r| {
            let number = FIRST_ISSUE + r as u64;
            let mut second = base + r as i64 * 10_000;
            (0..per_resource)
                .map(|u| {
                    let last = u + 1 == per_resource;
                    if u > 0 && (last || !rng.random_bool(0.2)) {
                        second += rng.random_range(1..=3);
                    }
                    Update {
                        number,
                        title: format!("chaos issue {number} update {u}"),
                        updated_at: rfc3339(second),
                        updated_at_s: second,
                    }
                })
                .collect()
        })
        .collect()
}

fn webhook(template: &serde_json::Value, update: &Update) -> Webhook {
    Webhook::issue_edited(template, update.number, &update.title, &update.updated_at)
}

/// What the chaos thread did.
#[derive(Default, Debug)]
struct Chaos {
    sigkills: usize,
    sigterms: usize,
    notify_sigkills: usize,
    /// Kills (either signal) of the gateway.
    gateway_kills: usize,
    redis_restarts: usize,
    /// SIGTERMed workers that did not exit 0 within the grace period.
    unclean_exits: Vec<String>,
}

/// Kills a random worker every 0.2–1 s and starts its replacement, restarts
/// Redis once half the webhooks are in, until `stop`.
fn chaos(
    mut cluster: Deployment,
    mut workers: Vec<Proc>,
    mut redis: RedisServer,
    seed: u64,
    sent: Arc<AtomicUsize>,
    total: usize,
    stop: Arc<AtomicBool>,
) -> (Deployment, Vec<Proc>, RedisServer, Chaos) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC4A05);
    let mut done = Chaos::default();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1000)));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if done.redis_restarts == 0 && sent.load(Ordering::SeqCst) >= total / 2 {
            redis.restart();
            done.redis_restarts += 1;
            continue;
        }
        // Every fifth kill is the gateway's (last in `workers`), so each run
        // kills it a few times; the rest are chosen at random.
        let kills = done.sigkills + done.sigterms;
        let slot = if kills % 5 == 4 { workers.len() - 1 } else { rng.random_range(0..workers.len()) };
        let name = workers[slot].name;
        if name == "hookbus-gateway" {
            done.gateway_kills += 1;
        }
        if rng.random_bool(0.5) {
            workers[slot].child.kill().expect("SIGKILL");
            let _ = workers[slot].child.wait();
            done.sigkills += 1;
            if name == "hookbus-notify" {
                done.notify_sigkills += 1;
            }
        } else {
            workers[slot].signal("TERM");
            done.sigterms += 1;
            let code = workers[slot].wait_exit(Duration::from_secs(10));
            if code != Some(0) {
                done.unclean_exits.push(format!("{name} exited {code:?} after SIGTERM"));
            }
        }
        // Same slot, same git workdir: the replacement inherits what its
        // predecessor left behind (an unpushed commit, a stale lock).
        workers[slot] = cluster.spawn(name, slot);
    }
    (cluster, workers, redis, done)
}

/// Every queue's depths, summed over what is still to do.
async fn outstanding(backend: &RedisBackend) -> Result<(u64, u64, String), String> {
    let mut busy = 0;
    let mut dead = 0;
    let mut detail = String::new();
    for queue in QUEUES {
        let d = backend.depths(queue).await.map_err(|e| e.to_string())?;
        busy += d.pending + d.in_flight + d.delayed + d.held;
        dead += d.dead;
        detail.push_str(&format!(
            "{queue}: pending {} in_flight {} delayed {} held {} dead {}; ",
            d.pending, d.in_flight, d.delayed, d.held, d.dead
        ));
    }
    Ok((busy, dead, detail))
}

/// Every reconcile operation record, by id.
fn operation_records(conn: &mut redis::Connection) -> HashMap<String, serde_json::Value> {
    let keys: Vec<String> = conn
        .scan_match::<_, String>("hookbus:{res:*}:op:*")
        .expect("scan")
        .collect::<Result<_, _>>()
        .expect("scan keys");
    keys.into_iter()
        .map(|key| {
            let json: String = conn.get(&key).expect("get record");
            let record: serde_json::Value = serde_json::from_str(&json).expect("record is JSON");
            (record["id"].as_str().expect("record id").to_string(), record)
        })
        .collect()
}

/// Reconcile's book of a resource (MessagePack), as text.
fn book(conn: &mut redis::Connection, key: &str) -> String {
    let data: Option<Vec<u8>> = conn.hget(format!("hookbus:{{res:{key}}}:book"), "data").unwrap_or_default();
    match data.map(|bytes| rmpv::decode::read_value(&mut bytes.as_slice())) {
        Some(Ok(value)) => value.to_string(),
        Some(Err(err)) => format!("undecodable: {err}"),
        None => "none".to_string(),
    }
}

/// The dead letters of every queue, as readable lines.
fn dead_letters(conn: &mut redis::Connection) -> Vec<String> {
    let mut out = Vec::new();
    for queue in QUEUES {
        let entries: Vec<Vec<u8>> = conn.lrange(format!("hookbus:{{{queue}}}:dead"), 0, -1).expect("lrange dead");
        for bytes in entries {
            let value = rmpv::decode::read_value(&mut bytes.as_slice()).ok();
            let field = |name: &str| {
                value
                    .as_ref()
                    .and_then(|v| v.as_map())
                    .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)))
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            out.push(format!("{queue}: kind {} key {} reason {}", field("kind"), field("key"), field("dead_reason")));
        }
    }
    out
}

/// (start, end) in ms of every `processing` stint in a record's history.
fn processing_intervals(record: &serde_json::Value) -> Vec<(i64, i64)> {
    let history = record["history"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (i, entry) in history.iter().enumerate() {
        if entry["state"] == "processing" {
            let start = entry["at"].as_i64().unwrap_or_default();
            let end = history.get(i + 1).and_then(|next| next["at"].as_i64()).unwrap_or(i64::MAX);
            out.push((start, end));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_pipeline_converges_under_kills_and_a_redis_restart() {
    let started = Instant::now();
    let total = env_usize("CHAOS_WEBHOOKS", 400).max(20);
    let resources = env_usize("CHAOS_RESOURCES", 20).clamp(1, total / 2);
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("chaos: {total} webhooks, {resources} resources, CHAOS_SEED={seed}");

    let bin = tokio::task::spawn_blocking(build_binaries).await.expect("build");
    let redis = RedisServer::start_durable();
    // Kept when the test fails: each process's stderr is a log file there.
    let scratch = tempfile::Builder::new().prefix("hookbus-chaos-").tempdir().expect("scratch dir").keep();
    eprintln!("chaos: process logs and the remote in {} (removed when the test passes)", scratch.display());
    let remote = scratch.join("records.git");
    bare_remote(&remote);

    let received = Received::default();
    let subscriber_port = free_port();
    tokio::spawn(subscriber(subscriber_port, received.clone()));

    let mut cluster = Deployment::new(bin, redis.url(), remote.clone(), scratch.clone(), free_port());
    cluster.subscriber_port = Some(subscriber_port);
    let mut workers = Vec::new();
    for name in WORKERS {
        for _ in 0..2 {
            // A worker's slot is its position in `workers`; commit workers
            // use it to pick their git workdir.
            let position = workers.len();
            workers.push(cluster.spawn(name, position));
        }
    }
    // The gateway is killed and restarted like any worker: senders see
    // refused or cut connections and re-send, as GitHub redelivers.
    let position = workers.len();
    workers.push(cluster.spawn("hookbus-gateway", position));

    // The webhooks: unique updates, out of order, then ~10% re-sent (same
    // delivery id) anywhere.
    let template = issue_template();
    // Every resource gets all its updates (cutting one short could make its
    // newest update a tie).
    let per_resource = (total * 10 / 11 / resources).max(1);
    let all_updates = updates(&mut rng, resources, per_resource);
    // Out of order, but not hopelessly: each update is sent at its position
    // in the resource's history plus a random slip of up to 6 places, and
    // the resources are interleaved, so some arrive late (dropped) and some
    // early enough to queue behind or cancel one another.
    let mut order: Vec<(f64, Webhook)> = all_updates
        .iter()
        .flat_map(|history| history.iter().enumerate())
        .map(|(position, update)| (position as f64 + rng.random_range(0.0..6.0), webhook(&template, update)))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut hooks: Vec<Webhook> = order.into_iter().map(|(_, hook)| hook).collect();
    let unique = hooks.len();
    // Delivery id -> (issue number, title), to explain a wrong file.
    let sent_as: HashMap<String, (u64, String)> = hooks
        .iter()
        .map(|hook| {
            let body: serde_json::Value = serde_json::from_slice(&hook.body).expect("own JSON");
            let number = body["issue"]["number"].as_u64().expect("issue number");
            (hook.delivery.clone(), (number, body["issue"]["title"].as_str().unwrap_or_default().to_string()))
        })
        .collect();
    let duplicates = total.saturating_sub(unique);
    for _ in 0..duplicates {
        let original = hooks[rng.random_range(0..unique)].clone();
        let at = rng.random_range(0..=hooks.len());
        hooks.insert(at, original);
    }
    let newest: BTreeMap<u64, Update> = all_updates.iter().flatten().fold(BTreeMap::new(), |mut newest, update| {
        let keep = newest.get(&update.number).is_none_or(|seen: &Update| seen.updated_at_s < update.updated_at_s);
        if keep {
            newest.insert(update.number, update.clone());
        }
        newest
    });

    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let url = cluster.webhook_url();
    assert!(cluster.await_gateway(Duration::from_secs(20)), "the gateway never listened on {}", cluster.gateway_port);

    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos_thread = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || chaos(cluster, workers, redis, seed, sent, total, stop))
    };

    // Paced over `CHAOS_SEND_SECONDS` so the chaos hits a busy pipeline, in
    // bursts of 1–16 webhooks sent at the same instant (same-second
    // updates of one resource arrive together).
    let send_for = Duration::from_secs(env_usize("CHAOS_SEND_SECONDS", 20) as u64);
    let mut schedule = Vec::with_capacity(hooks.len());
    while schedule.len() < hooks.len() {
        let burst = rng.random_range(1..=16).min(hooks.len() - schedule.len());
        let at = send_for.mul_f64(schedule.len() as f64 / hooks.len() as f64);
        schedule.extend(std::iter::repeat_n(at, burst));
    }
    let retried = AtomicUsize::new(0);
    let send_start = tokio::time::Instant::now();
    futures::stream::iter(hooks.iter().zip(schedule))
        .for_each_concurrent(32, |(hook, at)| {
            let (client, url, sent, retried) = (&client, &url, &sent, &retried);
            async move {
                tokio::time::sleep_until(send_start + at).await;
                send(client, url, hook, retried).await;
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
    let sent_at = send_start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (_cluster, workers, redis, chaos) = chaos_thread.join().expect("chaos thread");
    assert!(chaos.unclean_exits.is_empty(), "SIGTERM must exit 0 within the grace period: {:?}", chaos.unclean_exits);

    // Drained: nothing pending, in flight, delayed or held on any queue, and
    // every operation in a final state — stable over two looks 300 ms apart.
    let backend = RedisBackend::connect(&redis.url(), "hookbus", 2, false).expect("bus client");
    let mut conn = redis.client();
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_looks = 0;
    let mut queues_empty_since: Option<Instant> = None;
    let mut last = String::new();
    while quiet_looks < 2 {
        assert!(Instant::now() < drain_deadline, "queues never drained within 120 s: {last}");
        // Empty queues cannot finish an operation any more: it is stuck.
        if queues_empty_since.is_some_and(|since| since.elapsed() > Duration::from_secs(15)) {
            panic!("every queue is empty but operations stay unfinished (reconcile lost track of them): {last}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (busy, _dead, detail) = match outstanding(&backend).await {
            Ok(depths) => depths,
            Err(err) => {
                last = err;
                continue;
            }
        };
        let unfinished: Vec<String> = operation_records(&mut conn)
            .values()
            .filter(|r| r["state"] == "queued" || r["state"] == "processing")
            .map(|r| format!("\n{r}\nits book: {}", book(&mut conn, r["key"].as_str().unwrap_or_default())))
            .collect();
        last = format!("{detail}operations not final: {}{}", unfinished.len(), unfinished.concat());
        let unfinished = unfinished.len();
        queues_empty_since = if busy == 0 { queues_empty_since.or(Some(Instant::now())) } else { None };
        quiet_looks = if busy == 0 && unfinished == 0 { quiet_looks + 1 } else { 0 };
    }
    let drained_at = send_start.elapsed();

    // Nothing is dead.
    let dead = dead_letters(&mut conn);
    assert!(dead.is_empty(), "{} dead letters:\n{}", dead.len(), dead.join("\n"));

    // Nothing lost: one operation record per distinct delivery.
    let records = operation_records(&mut conn);
    assert_eq!(records.len(), unique, "operation records vs distinct webhooks accepted (202)");
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for record in records.values() {
        *states.entry(record["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    let errored: Vec<_> = records.values().filter(|r| r["state"] == "errored").collect();
    assert!(errored.is_empty(), "errored operations: {errored:#?}");

    // Every file equals the newest update of its resource.
    let mut wrong_files = Vec::new();
    for (number, update) in &newest {
        let path = format!("main:repos/{REPOSITORY}/issues/{number}.json");
        let out = git(&remote, &["show", &path]);
        let file: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if file["title"] != update.title.as_str() || file["updated_at"] != update.updated_at.as_str() {
            // Every operation of that issue, oldest update first, with its
            // audit trail: what reconcile decided and why.
            let mut trail: Vec<(i64, String)> = records
                .values()
                .filter_map(|r| {
                    let (of, title) = sent_as.get(r["delivery"].as_str()?)?;
                    (of == number).then(|| {
                        let notes: Vec<String> = r["history"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|h| format!("{}@{} {}", h["state"], h["at"], h["note"]))
                            .collect();
                        let line = format!(
                            "  {title:?} {} updated_at {} arrived {} commit {}: {}",
                            r["id"],
                            r["updated_at"],
                            r["arrived_at"],
                            r["commit"],
                            notes.join(" -> ")
                        );
                        (r["updated_at"].as_i64().unwrap_or_default(), line)
                    })
                })
                .collect();
            trail.sort();
            let key = trail.first().and_then(|_| {
                records.values().find_map(|r| {
                    let (of, _) = sent_as.get(r["delivery"].as_str()?)?;
                    (of == number).then(|| r["key"].as_str().unwrap_or_default().to_string())
                })
            });
            let book = key.map(|key| book(&mut conn, &key)).unwrap_or_default();
            wrong_files.push(format!(
                "#{number}: file has {:?} @ {:?}, newest update is {:?} @ {}; its operations:\n{}\n  book: {book}",
                file["title"],
                file["updated_at"],
                update.title,
                update.updated_at,
                trail.into_iter().map(|(_, line)| line).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(
        wrong_files.is_empty(),
        "{} files differ from their newest update:\n{}",
        wrong_files.len(),
        wrong_files.join("\n")
    );

    // Exactly one commit per applied operation (by its trailer), and no
    // commit without one.
    let log = String::from_utf8(git(&remote, &["log", "--format=%H%n%B%n--end--", "main"]).stdout).expect("utf-8 log");
    let mut commits = 0;
    let mut trailers: HashMap<String, usize> = HashMap::new();
    for message in log.split("--end--").filter(|m| !m.trim().is_empty()) {
        commits += 1;
        let op = message.lines().find_map(|line| line.strip_prefix("Hookbus-Operation: "));
        let op = op.unwrap_or_else(|| panic!("commit without a Hookbus-Operation trailer:\n{message}"));
        *trailers.entry(op.trim().to_string()).or_default() += 1;
    }
    let twice: Vec<_> = trailers.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "operations committed more than once: {twice:?}");
    let committed: HashSet<String> = records
        .values()
        .filter(|r| r["state"] == "completed" && r["commit"].is_string())
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let on_remote: HashSet<String> = trailers.keys().cloned().collect();
    let missing: Vec<_> = committed.difference(&on_remote).collect();
    let unrecorded: Vec<_> = on_remote.difference(&committed).collect();
    assert!(missing.is_empty(), "completed operations whose commit is not on the remote: {missing:?}");
    assert!(unrecorded.is_empty(), "commits of operations reconcile does not record as completed: {unrecorded:?}");

    // No resource ever had two operations processing at once.
    let mut by_resource: HashMap<String, Vec<(i64, i64, String)>> = HashMap::new();
    for record in records.values() {
        for (start, end) in processing_intervals(record) {
            let id = record["id"].as_str().unwrap_or_default().to_string();
            by_resource
                .entry(record["key"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push((start, end, id));
        }
    }
    let mut overlaps = Vec::new();
    for (key, mut stints) in by_resource {
        stints.sort();
        for pair in stints.windows(2) {
            if pair[1].0 < pair[0].1 {
                overlaps.push(format!(
                    "{key}: {} processing {}..{} overlaps {} from {}",
                    pair[0].2, pair[0].0, pair[0].1, pair[1].2, pair[1].0
                ));
            }
        }
    }
    assert!(overlaps.is_empty(), "two operations processing at once:\n{}", overlaps.join("\n"));

    // The subscriber received each event once by delivery id: one delivery
    // id per committed operation, each for that operation. A notify process
    // SIGKILLed after the POST but before its ack redelivers (at least once,
    // same id): counted, and only allowed when a notify was SIGKILLed.
    let received = received.lock().expect("lock");
    let mut notified: HashMap<String, usize> = HashMap::new();
    for (operation, _) in received.values() {
        *notified.entry(operation.clone()).or_default() += 1;
    }
    let several_ids: Vec<_> = notified.iter().filter(|(_, n)| **n > 1).collect();
    assert!(several_ids.is_empty(), "operations notified under several delivery ids: {several_ids:?}");
    let notified: HashSet<String> = notified.into_keys().collect();
    let not_notified: Vec<_> = committed.difference(&notified).collect();
    let extra: Vec<_> = notified.difference(&committed).collect();
    assert!(not_notified.is_empty(), "committed operations the subscriber never received: {not_notified:?}");
    assert!(extra.is_empty(), "events for operations that made no commit: {extra:?}");
    // notify records each delivery after the 2xx and skips a recorded one,
    // so only a notify killed between the two can send it again.
    let redelivered: usize = received.values().map(|(_, n)| n - 1).sum();
    let twice: Vec<&String> = received.values().filter(|(_, n)| *n > 1).map(|(operation, _)| operation).collect();
    assert!(
        redelivered == 0 || chaos.notify_sigkills > 0,
        "{redelivered} events acknowledged twice although no notify process was SIGKILLed: operations {twice:?} \
         (process logs in {})",
        scratch.display()
    );

    drop(workers);
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!(
        "chaos summary: seed {seed}; sent {total} webhooks ({unique} distinct, {duplicates} duplicates) to {resources} \
         resources in {:.1} s ({} POSTs retried after a 503 or refused connection); drained {:.1} s after the first send; total {:.1} s; chaos {:?}; operations by state {states:?}; commits {commits}; \
         subscriber events {} (redelivered after a SIGKILL: {redelivered})",
        sent_at.as_secs_f64(),
        retried.load(Ordering::SeqCst),
        drained_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        chaos,
        received.len(),
    );
}
