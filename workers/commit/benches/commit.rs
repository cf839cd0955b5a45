//! Commit-to-git throughput: 2,000 operations over 200 resources into a
//! local bare remote, as the runner would hand them over (16 handlers at
//! once, one at a time per resource). Prints commits/s and the p50/p99 time
//! from dequeue (the handler starts) to pushed (the handler returns, its
//! commit on the remote). Run: `cargo bench -p hookbus-commit --bench commit`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookbus_bus::{Envelope, Outbox, Plugin};
use hookbus_commit::{CommitPlugin, GitTarget, PushBatching};
use serde_json::json;
use tokio::sync::Semaphore;

const RESOURCES: u64 = 200;
const PER_RESOURCE: u64 = 10;
const CONCURRENCY: usize = 16;

fn op(resource: u64, version: u64) -> Envelope {
    let payload = json!({
        "operation": format!("gh-{resource}-{version}"),
        "direction": "inbound",
        "key": format!("github:octo/repo:issue:{resource}"),
        "repository": "octo/repo",
        "repository_enabled": true,
        "kind": "issue",
        "action": "edited",
        "effect": "upsert",
        "updated_at": 1_763_900_000_000i64 + version as i64 * 1000,
        "actor": {"login": "octocat", "id": 583231, "name": null, "email": null},
        "delivery": format!("d-{resource}-{version}"),
        "source": "issues",
        "number": resource,
        "id": null,
        "content_hash": "x",
        "record": {
            "number": resource, "title": format!("Issue {resource} v{version}"), "state": "open",
            "labels": ["bug"], "assignees": [], "author": "octocat", "body": "x".repeat(400),
            "closed_at": null, "created_at": "2026-11-01T00:00:00Z", "locked": false, "milestone": null,
            "html_url": format!("https://github.com/octo/repo/issues/{resource}"), "state_reason": null,
            "updated_at": "2026-11-23T00:00:00Z"
        },
        "received_at": 0,
    });
    Envelope::with_payload("sync.apply", &payload).expect("encodes").keyed(format!("github:octo/repo:issue:{resource}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // As the binary does, so that the memory figure is the binary's.
    hookbus_commit::objects::one_malloc_arena();
    let window_ms: u64 = std::env::var("PUSH_WINDOW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let remote = tempfile::tempdir().expect("temp dir");
    let workdir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("git")
        .args(["init", "--bare", "--quiet", "--initial-branch=main"])
        .arg(remote.path())
        .status()
        .expect("git");
    assert!(status.success());
    let target = GitTarget {
        remote: remote.path().display().to_string(),
        branch: "main".into(),
        workdir: workdir.path().to_path_buf(),
        login: hookbus_commit::RemoteLogin::Anonymous,
        committer_name: "hookbus".into(),
        committer_email: "hookbus@bench.invalid".into(),
    };
    let plugin = Arc::new(
        CommitPlugin::new(target, PushBatching { window: Duration::from_millis(window_ms), max: 64 }).expect("plugin"),
    );
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let tasks: Vec<_> = (0..RESOURCES)
        .map(|resource| {
            let (plugin, slots) = (Arc::clone(&plugin), Arc::clone(&slots));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for version in 0..PER_RESOURCE {
                    let message = op(resource, version);
                    let _slot = slots.acquire().await.expect("semaphore");
                    let dequeued = Instant::now();
                    let mut out = Outbox::new(&message.trace_id);
                    plugin.handle(&message, &mut out).await.expect("handled");
                    latencies.push(dequeued.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let commits = Command::new("git")
        .arg("--git-dir")
        .arg(remote.path())
        .args(["rev-list", "--count", "main"])
        .output()
        .expect("git rev-list");
    let commits: u64 = String::from_utf8_lossy(&commits.stdout).trim().parse().expect("count");
    assert_eq!(commits, RESOURCES * PER_RESOURCE, "one commit per operation on the remote");
    println!("commit-to-git: {commits} operations over {RESOURCES} resources, {CONCURRENCY} handlers, push window {window_ms} ms");
    println!("  total         {:.2} s", elapsed.as_secs_f64());
    println!("  commits/s     {:.0}", commits as f64 / elapsed.as_secs_f64());
    println!("  pushes        {}", plugin.push_batches());
    println!("  p50 dequeue->pushed  {:.1} ms", percentile(&latencies, 0.50).as_secs_f64() * 1000.0);
    println!("  p99 dequeue->pushed  {:.1} ms", percentile(&latencies, 0.99).as_secs_f64() * 1000.0);
    hookbus_testkit::bench::record(
        "commit",
        serde_json::json!({
            "operations": commits,
            "resources": RESOURCES,
            "handlers": CONCURRENCY,
            "push_window_ms": window_ms,
            "commits_per_s": commits as f64 / elapsed.as_secs_f64(),
            "target_commits_per_s": 200.0,
            "pushes": plugin.push_batches(),
            "p50_ms": percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            "peak_memory_kib": hookbus_testkit::bench::peak_rss_kib(std::process::id()),
        }),
    );
}
