//! The whole pipeline on a Redis Cluster (issue 10, item 2): the same
//! `hookbus-gateway`, `hookbus-normalise`, `hookbus-reconcile`,
//! `hookbus-commit` and `hookbus-notify` binaries the single-server tests
//! run, started against a 3-master cluster (`redis-server --cluster-enabled
//! yes`, `redis-cli --cluster create`) with only configuration changed:
//! `REDIS_URL` lists the masters and `HOOKBUS_REDIS__CLUSTER=true`.
//!
//! Real payloads (`fixtures/github/issues/edited.json`, re-titled per
//! update) go through the gateway, some twice; every queue must drain, the
//! newest title of every issue must be on the bare remote with one commit
//! per applied operation, and the subscriber must hear of each once. The
//! keys must sit where the hash tags put them: each queue in one slot, the
//! four queues spread over more than one master.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use hookbus_bus::redis::{RedisBackend, RedisTarget};
use hookbus_bus::Backend;
use hookbus_e2e::{
    bare_remote, build_binaries, git, issue_template, rfc3339, send, subscriber, Deployment, Received, Webhook, QUEUES,
    WORKERS,
};
use hookbus_testkit::{free_port, RedisCluster};
use redis::Commands;

/// The fixture's repository, lowercased as normalise keys it.
const REPOSITORY: &str = "codertocat/hello-world";
const ISSUES: u64 = 4;
const UPDATES_PER_ISSUE: u64 = 3;

/// Keys matching `pattern` on every master: a cluster node's SCAN only sees
/// its own slots.
fn scan_all_masters(cluster: &RedisCluster, pattern: &str) -> Vec<(u16, String)> {
    let mut found = Vec::new();
    for &port in cluster.ports() {
        let mut node = cluster.node(port);
        let keys: Vec<String> =
            node.scan_match::<_, String>(pattern).expect("scan").collect::<Result<_, _>>().expect("scan keys");
        found.extend(keys.into_iter().map(|key| (port, key)));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_runs_unchanged_on_a_three_master_cluster() {
    let bin = tokio::task::spawn_blocking(build_binaries).await.expect("build");
    let cluster_started = Instant::now();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.expect("cluster");
    let cluster_up = cluster_started.elapsed();

    // Each queue's keys share its hash tag, so one slot, so one master; the
    // four queues do not all land on one master.
    let mut masters = HashSet::new();
    for queue in QUEUES {
        let pending = format!("hookbus:{{{queue}}}:pending");
        let slot = cluster.slot_of(&pending);
        for other in
            ["delayed", "dead", "keys", "consumers", "inflight:any:1", "settled:any:1", "fetches:any", "held:any"]
        {
            assert_eq!(cluster.slot_of(&format!("hookbus:{{{queue}}}:{other}")), slot, "{queue}:{other}");
        }
        masters.insert(cluster.port_of(&pending));
    }
    assert!(masters.len() > 1, "the four queues all hash to one master; the test would not exercise the cluster");

    let scratch = tempfile::Builder::new().prefix("hookbus-cluster-").tempdir().expect("scratch dir");
    let remote = scratch.path().join("records.git");
    bare_remote(&remote);
    let received = Received::default();
    let subscriber_port = free_port();
    tokio::spawn(subscriber(subscriber_port, received.clone()));

    // The only difference from a single-server deployment: configuration.
    let mut deployment = Deployment::new(bin, cluster.url(), remote.clone(), scratch.path().to_path_buf(), free_port());
    deployment.subscriber_port = Some(subscriber_port);
    deployment.set("HOOKBUS_REDIS__CLUSTER", "true");
    let mut processes = vec![deployment.spawn("hookbus-gateway", 0)];
    for (slot, name) in WORKERS.iter().enumerate() {
        processes.push(deployment.spawn(name, slot + 1));
    }
    assert!(deployment.await_gateway(Duration::from_secs(20)), "the gateway did not listen");

    // Updates in order per issue, issues interleaved; every third re-sent
    // with the same delivery id, as GitHub redelivers.
    let template = issue_template();
    let base = 1_795_000_000i64;
    let mut hooks = Vec::new();
    let mut newest = HashMap::new();
    for update in 0..UPDATES_PER_ISSUE {
        for issue in 0..ISSUES {
            let number = 2000 + issue;
            let title = format!("cluster issue {number} update {update}");
            let at = rfc3339(base + (issue * 100 + update) as i64);
            hooks.push(Webhook::issue_edited(&template, number, &title, &at));
            newest.insert(number, title);
        }
    }
    let unique = hooks.len();
    let redelivered: Vec<Webhook> = hooks.iter().step_by(3).cloned().collect();
    let client = reqwest::Client::new();
    let retried = AtomicUsize::new(0);
    for hook in hooks.iter().chain(&redelivered) {
        send(&client, &deployment.webhook_url(), hook, &retried).await;
    }

    // Every accepted delivery left its mark on the master of `{normalise}`.
    let normalise_master = cluster.port_of("hookbus:{normalise}:pending");
    let mut node = cluster.node(normalise_master);
    for hook in &hooks {
        let mark: Option<String> = node.get(format!("hookbus:{{normalise}}:delivery:{}", hook.delivery)).expect("GET");
        assert!(mark.is_some(), "no dedupe mark for delivery {} on the normalise master", hook.delivery);
    }

    // Drained, and every issue's newest title on the remote.
    let bus = RedisBackend::open(&RedisTarget::cluster(cluster.urls(), false), "hookbus", 2).expect("bus client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut detail = String::new();
    loop {
        let mut busy = 0;
        let mut dead = 0;
        detail.clear();
        for queue in QUEUES {
            let d = bus.depths(queue).await.expect("depths");
            busy += d.pending + d.in_flight + d.delayed + d.held;
            dead += d.dead;
            detail.push_str(&format!("{queue}: {d:?}; "));
        }
        assert_eq!(dead, 0, "dead letters: {detail}");
        let files_current = newest.iter().all(|(number, title)| {
            let out = git(&remote, &["show", &format!("main:repos/{REPOSITORY}/issues/{number}.json")]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|file| file["title"] == title.as_str())
        });
        if busy == 0 && files_current {
            break;
        }
        assert!(Instant::now() < deadline, "not drained within 60 s: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = cluster_started.elapsed();

    // One operation record per distinct delivery, found by scanning every
    // master; each record in the slot of its resource.
    let records: Vec<serde_json::Value> = scan_all_masters(&cluster, "hookbus:{res:*}:op:*")
        .into_iter()
        .map(|(port, key)| {
            let json: String = cluster.node(port).get(&key).expect("record");
            serde_json::from_str(&json).expect("record JSON")
        })
        .collect();
    assert_eq!(records.len(), unique, "operation records vs distinct deliveries");
    let committed: HashSet<String> = records
        .iter()
        .filter(|r| r["state"] == "completed" && r["commit"].is_string())
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(committed.len() >= ISSUES as usize, "at least the newest update of each issue commits: {committed:?}");

    // Exactly one commit per committed operation.
    let log = String::from_utf8(git(&remote, &["log", "--format=%B%n--end--", "main"]).stdout).expect("utf-8 log");
    let mut trailers: HashMap<String, usize> = HashMap::new();
    for message in log.split("--end--").filter(|m| !m.trim().is_empty()) {
        let op = message.lines().find_map(|line| line.strip_prefix("Hookbus-Operation: "));
        let op = op.unwrap_or_else(|| panic!("commit without a Hookbus-Operation trailer:\n{message}"));
        *trailers.entry(op.trim().to_string()).or_default() += 1;
    }
    assert!(trailers.values().all(|&n| n == 1), "operations committed more than once: {trailers:?}");
    assert_eq!(trailers.keys().cloned().collect::<HashSet<_>>(), committed, "commits vs completed operations");

    // The subscriber heard of every committed operation, once.
    let notified_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let notified: HashSet<String> =
            received.lock().expect("lock").values().map(|(operation, _)| operation.clone()).collect();
        if notified == committed {
            break;
        }
        assert!(Instant::now() < notified_deadline, "notified {notified:?}, committed {committed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = received.lock().expect("lock");
    assert!(received.values().all(|(_, n)| *n == 1), "an event was delivered twice: {received:?}");
    assert_eq!(received.len(), committed.len(), "one delivery id per committed operation");

    drop(processes);
    eprintln!(
        "cluster e2e: cluster up in {:.1} s; {} webhooks ({unique} distinct) drained {:.1} s after the cluster started; \
         {} commits; queues on masters {masters:?}",
        cluster_up.as_secs_f64(),
        hooks.len() + redelivered.len(),
        drained.as_secs_f64(),
        committed.len(),
    );
}
