//! gateway → normalise → `hookbus:{reconcile}:pending`, over a real
//! redis-server: a signed webhook posted to the real gateway comes out as a
//! decoded `sync.operation`, the normalise plugin run by the real runner.

use std::sync::Arc;
use std::time::Duration;

use hookbus_bus::{Envelope, RunnerOptions, Shutdown};
use hookbus_config::{RepositoryList, Secret, Settings};
use hookbus_gateway::{serve, Gateway};
use hookbus_normalise::record::Record;
use hookbus_normalise::{Normalise, RedisRegistry, RepositoryRegistry, SyncOperationPayload};
use hookbus_testkit::RedisServer;
use redis::Commands;

use crate::support::*;

const SECRET: &str = "pipeline-secret";

fn settings(redis: &RedisServer) -> Settings {
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(redis.url());
    settings.github.webhook_secret = Secret::new(SECRET);
    settings.bus.poll_interval_ms = 10;
    settings
}

async fn post(base: &str, event: &str, delivery: &str, body: Vec<u8>) -> u16 {
    let signature = hookbus_gateway::signature::sign(SECRET.as_bytes(), &body);
    reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("gateway answers")
        .status()
        .as_u16()
}

fn reconcile_pending(redis: &RedisServer) -> Vec<SyncOperationPayload> {
    let raw: Vec<Vec<u8>> = redis.client().lrange("hookbus:{reconcile}:pending", 0, -1).expect("lrange");
    raw.iter()
        .rev()
        .map(|bytes| {
            let envelope = Envelope::decode(bytes).expect("an envelope");
            assert_eq!(envelope.kind, "sync.operation");
            let operation: SyncOperationPayload = envelope.payload_as().expect("sync.operation");
            assert_eq!(envelope.key.as_deref(), Some(operation.key.as_str()));
            operation
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_through_the_gateway_reaches_reconcile_as_a_sync_operation() {
    let redis = RedisServer::start();
    let settings = settings(&redis);
    let backend = hookbus_bus::connect(&settings).expect("bus backend");
    let gateway = Gateway::over_redis(backend.clone(), &settings).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    tokio::spawn(serve(listener, gateway.router(), shutdown.clone(), Duration::from_secs(5)));

    let registry = Arc::new(RedisRegistry::connect(&redis.url(), false, "hookbus").expect("registry"));
    let plugin = Normalise::new(registry.clone(), RepositoryList::default());
    let options = RunnerOptions::from_settings(&settings.bus, "normalise");
    let worker = tokio::spawn(hookbus_bus::run(backend, Arc::new(plugin), options, shutdown.clone()));

    // The installation drops octocat/Hello-World; then a labelled issue in the
    // fixtures' repository, and one in the dropped repository.
    let removed = fixture("installation_repositories", "removed.json");
    assert_eq!(post(&base, "installation_repositories", "d-0", removed).await, 202);
    assert!(
        hookbus_testkit::eventually(Duration::from_secs(10), || {
            let state: Option<String> =
                redis.client().hget("hookbus:repositories", "octocat/hello-world").expect("hget");
            state.is_some_and(|s| s.starts_with("disabled:"))
        }),
        "the installation event disabled the repository in hookbus:repositories"
    );
    assert_eq!(post(&base, "issues", "d-1", fixture("issues", "labeled.json")).await, 202);
    let mut elsewhere = fixture_json("issues", "opened.json");
    elsewhere["repository"]["full_name"] = serde_json::json!("octocat/Hello-World");
    elsewhere["issue"]["number"] = serde_json::json!(5);
    assert_eq!(post(&base, "issues", "d-2", serde_json::to_vec(&elsewhere).expect("json")).await, 202);

    let arrived = hookbus_testkit::eventually(Duration::from_secs(10), || reconcile_pending(&redis).len() == 2);
    assert!(arrived, "two operations on hookbus:{{reconcile}}:pending");
    let operations = reconcile_pending(&redis);
    let labeled = operations.iter().find(|op| op.delivery.as_deref() == Some("d-1")).expect("d-1");
    assert_eq!(labeled.key, "github:codertocat/hello-world:issue:1");
    assert_eq!(labeled.action, "labeled");
    assert!(labeled.repository_enabled);
    let Some(Record::Issue(issue)) = &labeled.record else { panic!("an issue record") };
    assert_eq!(issue.labels, ["bug"]);
    assert_eq!(issue.title, "Spelling error in the README file");
    let disabled = operations.iter().find(|op| op.delivery.as_deref() == Some("d-2")).expect("d-2");
    assert_eq!(disabled.key, "github:octocat/hello-world:issue:5");
    assert!(!disabled.repository_enabled, "emitted, marked for reconcile to set disabled");

    let dead: usize = redis.client().llen("hookbus:{normalise}:dead").expect("llen");
    assert_eq!(dead, 0);
    assert!(registry.is_enabled("codertocat/hello-world").await.expect("redis"));

    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await.expect("worker stops");
}

#[tokio::test]
async fn the_redis_registry_keeps_the_latest_decision_per_repository() {
    let redis = RedisServer::start();
    let registry = RedisRegistry::connect(&redis.url(), false, "hookbus").expect("registry");
    assert!(registry.is_enabled("o/r").await.expect("redis"), "unknown repositories are synced");
    registry.disable(&["O/R".to_string()], 20).await.expect("redis");
    registry.enable(&["o/r".to_string()], 10).await.expect("redis");
    assert!(!registry.is_enabled("o/r").await.expect("redis"), "an older event does not undo a newer one");
    registry.enable(&["o/r".to_string()], 30).await.expect("redis");
    assert!(registry.is_enabled("o/r").await.expect("redis"));
    let value: String = redis.client().hget("hookbus:repositories", "o/r").expect("hget");
    assert_eq!(value, "enabled:30");
}
