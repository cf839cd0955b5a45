//! The `hookbus` operator commands against a 3-master Redis Cluster: the
//! same binary, pointed at the cluster by `REDIS_URL` (the masters) and
//! `HOOKBUS_REDIS__CLUSTER=true`.

use std::process::{Command, Output};

use hookbus_bus::redis::{RedisBackend, RedisTarget};
use hookbus_bus::{Backend, Envelope};
use hookbus_testkit::RedisCluster;

const HOOKBUS: &str = env!("CARGO_BIN_EXE_hookbus");

fn hookbus(cluster: &RedisCluster, args: &[&str]) -> Output {
    Command::new(HOOKBUS)
        .args(args)
        .env("REDIS_URL", cluster.url())
        .env("HOOKBUS_REDIS__CLUSTER", "true")
        .output()
        .expect("run hookbus")
}

fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(fut)
}

#[test]
fn queues_and_peek_work_on_a_cluster() {
    let cluster = RedisCluster::shared();
    let messages = |n: usize| -> Vec<Envelope> {
        (0..n).map(|i| Envelope::with_payload("test.n", &serde_json::json!({ "n": i })).expect("payload")).collect()
    };
    block_on(async {
        let backend = RedisBackend::open(&RedisTarget::cluster(cluster.urls(), false), "hookbus", 2).expect("cluster");
        backend.push("commit", &messages(2)).await.expect("push commit");
        backend.push("notify", &messages(3)).await.expect("push notify");
    });

    let out = hookbus(&cluster, &["queues"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |queue: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(queue)).unwrap_or_else(|| panic!("no {queue} row in\n{text}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("commit"), ["commit", "2", "0", "0", "0", "0", "0"], "{text}");
    assert_eq!(row("notify"), ["notify", "3", "0", "0", "0", "0", "0"], "{text}");
    assert_eq!(row("normalise")[1], "0", "{text}");

    let out = hookbus(&cluster, &["peek", "notify", "-n", "5"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("test.n").count(), 3, "{out:?}");
}

#[test]
fn several_redis_urls_without_cluster_mode_exit_2_naming_the_setting() {
    let out = Command::new(HOOKBUS)
        .arg("queues")
        .env("REDIS_URL", "redis://127.0.0.1:1,redis://127.0.0.1:2")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.url") && err.contains("HOOKBUS_REDIS__CLUSTER"), "{err}");

    let out = Command::new(HOOKBUS)
        .arg("queues")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("HOOKBUS_REDIS__CLUSTER", "sometimes")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.cluster"), "{out:?}");
}
