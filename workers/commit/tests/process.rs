//! The `hookbus-commit` binary over a real redis-server, SIGKILLed while it
//! commits and pushes: after a restart every operation is on the remote
//! exactly once (checked by its `Hookbus-Operation` trailer).

mod support;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::Duration;

use hookbus_bus::redis::RedisBackend;
use hookbus_bus::Backend;
use hookbus_testkit::{eventually, RedisServer};
use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_hookbus-commit");

/// The worker process, killed if a failing test leaves it running.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(server: &RedisServer, remote: &BareRemote, workdir: &std::path::Path) -> Worker {
    let child = Command::new(BINARY)
        .env("REDIS_URL", server.url())
        .env("HOOKBUS_GIT__REMOTE", remote.url())
        .env("HOOKBUS_GIT__WORKDIR", workdir)
        .env("HOOKBUS_GIT__PUSH_WINDOW_MS", "20")
        .env("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000")
        .env("HOOKBUS_BUS__POLL_INTERVAL_MS", "10")
        .env("HOOKBUS_BUS__CONCURRENCY", "8")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start hookbus-commit");
    Worker(child)
}

fn operations_on_remote(remote: &BareRemote) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    if !remote.has_branch() {
        return seen;
    }
    for commit in remote.log() {
        *seen.entry(commit.operation().unwrap_or_default().to_string()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_committing_loses_nothing_and_duplicates_nothing() {
    let server = RedisServer::start();
    let remote = BareRemote::new();
    let wd = workdir();
    let backend = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    let total = 300u64;
    let messages: Vec<_> =
        (0..total).map(|i| envelope(&issue_op(&format!("gh-{i}"), i % 30, &format!("version {i}")))).collect();
    backend.push("commit", &messages).await.expect("enqueued");

    let mut worker = start(&server, &remote, wd.path());
    assert!(
        eventually(Duration::from_secs(30), || operations_on_remote(&remote).len() >= 40),
        "the worker made progress"
    );
    worker.0.kill().expect("SIGKILL");
    worker.0.wait().expect("reaped");
    let before_restart = operations_on_remote(&remote).len();
    assert!((before_restart as u64) < total, "killed mid-way ({before_restart} pushed)");

    let _restarted = start(&server, &remote, wd.path());
    assert!(
        eventually(Duration::from_secs(60), || operations_on_remote(&remote).len() as u64 == total),
        "every operation reached the remote: {} of {total}",
        operations_on_remote(&remote).len()
    );
    let seen = operations_on_remote(&remote);
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "committed twice: {duplicated:?}");
    assert_eq!(remote.log().len() as u64, total);
}
