//! Redelivery of failed webhook deliveries, against a local fake of GitHub's
//! webhook-deliveries API (real HTTP, cursor pagination) with the gateway's
//! marks in a real redis-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use hookbus_config::{Secret, Settings};
use hookbus_gateway::redeliver::Redeliverer;
use hookbus_testkit::RedisServer;
use serde_json::{json, Value};

const HOOK: &str = "repos/octo/repo/hooks/1";

/// The hook's attempts, newest first, as GitHub lists them; a redelivery
/// asked for adds a successful attempt, as GitHub's would once the gateway
/// answered it.
#[derive(Default)]
struct Fake {
    attempts: Mutex<Vec<Value>>,
    asked: Mutex<Vec<u64>>,
    base: Mutex<String>,
}

fn ago(seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds);
    at.format(&time::format_description::well_known::Rfc3339).expect("format")
}

fn attempt(id: u64, guid: &str, status_code: u16, seconds_ago: i64) -> Value {
    json!({ "id": id, "guid": guid, "delivered_at": ago(seconds_ago), "redelivery": false,
            "status": if status_code == 0 { "timed out" } else { "failed" }, "status_code": status_code,
            "event": "issues", "action": "opened" })
}

/// Two per page, so that a sweep must follow the cursor.
async fn deliveries(State(fake): State<Arc<Fake>>, Query(query): Query<Vec<(String, String)>>) -> impl IntoResponse {
    let cursor: usize = query.iter().find(|(k, _)| k == "cursor").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let all = fake.attempts.lock().expect("lock").clone();
    let page: Vec<Value> = all.iter().skip(cursor).take(2).cloned().collect();
    let mut headers = HeaderMap::new();
    if cursor + 2 < all.len() {
        let base = fake.base.lock().expect("lock").clone();
        let link = format!("<{base}/{HOOK}/deliveries?per_page=100&cursor={}>; rel=\"next\"", cursor + 2);
        headers.insert("link", link.parse().expect("header"));
    }
    (headers, Json(page))
}

async fn redeliver(State(fake): State<Arc<Fake>>, Path(id): Path<u64>) -> impl IntoResponse {
    fake.asked.lock().expect("lock").push(id);
    let mut attempts = fake.attempts.lock().expect("lock");
    let Some(guid) = attempts.iter().find(|a| a["id"] == id).map(|a| a["guid"].clone()) else {
        return StatusCode::NOT_FOUND;
    };
    let next = attempts.iter().filter_map(|a| a["id"].as_u64()).max().unwrap_or(0) + 1;
    let mut redelivered = attempt(next, guid.as_str().unwrap_or_default(), 202, 0);
    redelivered["redelivery"] = json!(true);
    attempts.insert(0, redelivered);
    StatusCode::ACCEPTED
}

async fn fake_github(attempts: Vec<Value>) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake { attempts: Mutex::new(attempts), ..Fake::default() });
    let app = Router::new()
        .route("/repos/octo/repo/hooks/1/deliveries", get(deliveries))
        .route("/repos/octo/repo/hooks/1/deliveries/{id}/attempts", post(redeliver))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    *fake.base.lock().expect("lock") = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, base)
}

fn settings(redis: &RedisServer, api: &str, interval: Duration) -> Settings {
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(redis.url());
    settings.github.api_url = api.to_string();
    settings.github.token = Secret::new("test-token");
    settings.github.redeliver_hooks = HOOK.to_string();
    settings.github.redeliver_interval_ms = interval.as_millis() as u64;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_that_never_got_through_are_redelivered_once() {
    let redis = RedisServer::start();
    let (fake, api) = fake_github(vec![
        attempt(9, "ok", 202, 10),
        attempt(8, "redis-was-down", 503, 20),
        attempt(7, "stored-but-reply-lost", 0, 30),
        attempt(6, "bad-signature", 401, 40),
        attempt(5, "timed-out", 0, 50),
        attempt(4, "redis-was-down", 503, 60),
        attempt(3, "too-old", 503, 2 * 86_400),
    ])
    .await;
    // The gateway stored this one; only its answer never reached GitHub.
    let mut conn = redis.client();
    let _: () = redis::cmd("SET")
        .arg("hookbus:{normalise}:delivery:stored-but-reply-lost")
        .arg("01a2-message")
        .query(&mut conn)
        .expect("SET");

    let redeliverer = Redeliverer::from_settings(&settings(&redis, &api, Duration::from_millis(300)))
        .expect("set up")
        .expect("hooks");
    let report = redeliverer.sweep().await.expect("sweep");
    assert!(report.ran && report.failed.is_empty(), "{report:?}");
    let mut redelivered = report.redelivered.clone();
    redelivered.sort();
    assert_eq!(redelivered, vec!["redis-was-down", "timed-out"], "{report:?}");
    // The latest attempt of each is the one asked for.
    let mut asked = fake.asked.lock().expect("lock").clone();
    asked.sort_unstable();
    assert_eq!(asked, vec![5, 8]);

    // Within the interval another process (here, the same) does not sweep.
    let again = redeliverer.sweep().await.expect("sweep");
    assert!(!again.ran && again.redelivered.is_empty());

    // Once the interval is over (its lock gone), the redelivered ones have
    // got through: nothing is asked again.
    let _: () = redis::cmd("DEL").arg("hookbus:redeliver:lock").query(&mut conn).expect("DEL");
    let later = redeliverer.sweep().await.expect("sweep");
    assert!(later.ran && later.redelivered.is_empty(), "{later:?}");
    assert_eq!(fake.asked.lock().expect("lock").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_github_will_not_list_is_reported_with_the_call() {
    let redis = RedisServer::start();
    // No route for the deliveries: GitHub's 404 for a hook the token cannot see.
    let app = Router::new().route("/unrelated", get(|| async { "" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let redeliverer =
        Redeliverer::from_settings(&settings(&redis, &api, Duration::from_secs(60))).expect("set up").expect("hooks");
    let report = redeliverer.sweep().await.expect("a sweep, with the hook's failure in it");
    let failed = report.failed.join("\n");
    assert!(failed.contains(&format!("GET /{HOOK}/deliveries")) && failed.contains("404"), "{report:?}");
    assert!(report.redelivered.is_empty());
}
