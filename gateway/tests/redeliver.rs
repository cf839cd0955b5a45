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
use hookbus_config::{Secret, Settings, APP_HOOK};
use hookbus_gateway::redeliver::{RedeliverError, Redeliverer, SweepReport};
use hookbus_testkit::{github_app, RedisServer};
use serde_json::{json, Value};

const HOOK: &str = "repos/octo/repo/hooks/1";

/// The hook's attempts, newest first, as GitHub lists them; a redelivery
/// asked for adds a successful attempt, as GitHub's would once the gateway
/// answered it.
#[derive(Default)]
struct Fake {
    /// The hook's API path: `repos/…/hooks/<id>`, or `app/hook`, whose
    /// endpoints answer only the App itself (a JWT it signed).
    hook: String,
    attempts: Mutex<Vec<Value>>,
    asked: Mutex<Vec<u64>>,
    /// Deliveries whose redeliveries fail too (503).
    keeps_failing: Mutex<Vec<String>>,
    /// Pages listed so far.
    pages: std::sync::atomic::AtomicUsize,
    base: Mutex<String>,
}

/// GitHub's answer to an App endpoint called without the App's JWT.
fn refused_unless_the_app(fake: &Fake, headers: &HeaderMap) -> Option<axum::response::Response> {
    if fake.hook != APP_HOOK {
        return None;
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let reason = github_app::check_app_jwt(authorization).err()?;
    let body = json!({ "message": format!("A JSON web token could not be decoded ({reason})") });
    Some((StatusCode::UNAUTHORIZED, Json(body)).into_response())
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

/// Two per page, so that a sweep must follow the cursor. The cursor names
/// the attempt a page starts at, as GitHub's does: new attempts (at the
/// head) do not move the pages after it.
async fn deliveries(
    State(fake): State<Arc<Fake>>,
    request_headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    if let Some(refused) = refused_unless_the_app(&fake, &request_headers) {
        return refused;
    }
    fake.pages.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let cursor: u64 = query.iter().find(|(k, _)| k == "cursor").and_then(|(_, v)| v.parse().ok()).unwrap_or(u64::MAX);
    let all = fake.attempts.lock().expect("lock").clone();
    let from = all.iter().position(|a| a["id"].as_u64().is_some_and(|id| id <= cursor)).unwrap_or(all.len());
    let page: Vec<Value> = all.iter().skip(from).take(2).cloned().collect();
    let mut headers = HeaderMap::new();
    if let Some(next) = all.get(from + 2).and_then(|a| a["id"].as_u64()) {
        let base = fake.base.lock().expect("lock").clone();
        let link = format!("<{base}/{}/deliveries?per_page=100&cursor={next}>; rel=\"next\"", fake.hook);
        headers.insert("link", link.parse().expect("header"));
    }
    (headers, Json(page)).into_response()
}

async fn redeliver(State(fake): State<Arc<Fake>>, headers: HeaderMap, Path(id): Path<u64>) -> axum::response::Response {
    if let Some(refused) = refused_unless_the_app(&fake, &headers) {
        return refused;
    }
    fake.asked.lock().expect("lock").push(id);
    let mut attempts = fake.attempts.lock().expect("lock");
    let Some(guid) = attempts.iter().find(|a| a["id"] == id).map(|a| a["guid"].clone()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let next = attempts.iter().filter_map(|a| a["id"].as_u64()).max().unwrap_or(0) + 1;
    let guid = guid.as_str().unwrap_or_default();
    let status = match fake.keeps_failing.lock().expect("lock").iter().any(|g| g == guid) {
        true => 503,
        false => 202,
    };
    let mut redelivered = attempt(next, guid, status, 0);
    redelivered["redelivery"] = json!(true);
    attempts.insert(0, redelivered);
    StatusCode::ACCEPTED.into_response()
}

async fn fake_github(attempts: Vec<Value>) -> (Arc<Fake>, String) {
    fake_github_for(HOOK, attempts).await
}

async fn fake_github_for(hook: &str, attempts: Vec<Value>) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake { hook: hook.to_string(), attempts: Mutex::new(attempts), ..Fake::default() });
    let app = Router::new()
        .route(&format!("/{hook}/deliveries"), get(deliveries))
        .route(&format!("/{hook}/deliveries/{{id}}/attempts"), post(redeliver))
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

/// Settings for sweeping the App's own webhook: its id and key, no token.
fn app_settings(redis: &RedisServer, api: &str, app_id: u64) -> Settings {
    let mut settings = settings(redis, api, Duration::from_secs(60));
    settings.github.token = Secret::default();
    settings.github.redeliver_hooks = APP_HOOK.to_string();
    settings.github.app_id = app_id;
    settings.github.app_private_key = Secret::new(github_app::PRIVATE_KEY);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_apps_own_webhook_is_swept_signed_in_as_the_app() {
    let redis = RedisServer::start();
    let (fake, api) = fake_github_for(
        APP_HOOK,
        vec![
            attempt(23, "ok", 202, 10),
            attempt(22, "redis-was-down", 503, 20),
            attempt(21, "timed-out", 0, 30),
            attempt(20, "bad-signature", 401, 40),
        ],
    )
    .await;
    let redeliverer =
        Redeliverer::from_settings(&app_settings(&redis, &api, github_app::APP_ID)).expect("set up").expect("hooks");
    let report = redeliverer.sweep().await.expect("sweep");
    assert!(report.ran && report.failed.is_empty(), "every call carried the App's JWT: {report:?}");
    let mut redelivered = report.redelivered.clone();
    redelivered.sort();
    assert_eq!(redelivered, vec!["redis-was-down", "timed-out"], "{report:?}");
    let mut asked = fake.asked.lock().expect("lock").clone();
    asked.sort_unstable();
    assert_eq!(asked, vec![21, 22]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_github_refuses_is_reported_with_the_call_and_nothing_is_asked() {
    let redis = RedisServer::start();
    let (fake, api) = fake_github_for(APP_HOOK, vec![attempt(5, "redis-was-down", 503, 20)]).await;
    // The key signs, but for another App than the one GitHub knows it by.
    let redeliverer = Redeliverer::from_settings(&app_settings(&redis, &api, github_app::APP_ID + 1))
        .expect("set up")
        .expect("hooks");
    let report = redeliverer.sweep().await.expect("a sweep, with the hook's failure in it");
    let failed = report.failed.join("\n");
    assert!(failed.contains("GET /app/hook/deliveries") && failed.contains("401"), "{report:?}");
    assert!(failed.contains("JSON web token"), "GitHub's reason is kept: {report:?}");
    assert!(report.redelivered.is_empty() && fake.asked.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn an_app_key_that_cannot_sign_is_bad_configuration_naming_the_setting() {
    let redis = RedisServer::start();
    let mut settings = app_settings(&redis, "http://127.0.0.1:9", github_app::APP_ID);
    settings.github.app_private_key = Secret::new(github_app::PUBLIC_KEY);
    let err = match Redeliverer::from_settings(&settings) {
        Err(err @ RedeliverError::Config(_)) => err.to_string(),
        Err(other) => panic!("not a configuration error: {other}"),
        Ok(_) => panic!("a public key was taken for the App's private key"),
    };
    assert!(err.contains("github.app_private_key (HOOKBUS_GITHUB__APP_PRIVATE_KEY)"), "{err}");
    assert!(!err.contains("MII"), "the key is not shown: {err}");
}

/// Sweeps (ending the interval's lock before each) until one asks for
/// nothing and leaves nothing unread, at most `limit`; the reports.
async fn sweep_until_quiet(redeliverer: &Redeliverer, redis: &RedisServer, limit: usize) -> Vec<SweepReport> {
    let mut conn = redis.client();
    let mut reports = Vec::new();
    for _ in 0..limit {
        let _: () = redis::cmd("DEL").arg("hookbus:redeliver:lock").query(&mut conn).expect("DEL");
        let report = redeliverer.sweep().await.expect("sweep");
        assert!(report.ran && report.failed.is_empty(), "{report:?}");
        let resume: Option<String> =
            redis::cmd("GET").arg(format!("hookbus:{{redeliver}}:resume:{HOOK}")).query(&mut conn).expect("GET");
        let quiet = report.redelivered.is_empty() && resume.is_none();
        reports.push(report);
        if quiet {
            break;
        }
    }
    reports
}

/// 30 failed deliveries, two to a page: 15 pages, more than one sweep's
/// MAX_PAGES (the gateway was down while GitHub kept failing).
async fn after_an_outage(redis: &RedisServer) -> (Arc<Fake>, Redeliverer) {
    let failed: Vec<Value> = (1..=30u64).rev().map(|id| attempt(id, &format!("down-{id}"), 503, 60)).collect();
    let (fake, api) = fake_github(failed).await;
    let redeliverer =
        Redeliverer::from_settings(&settings(redis, &api, Duration::from_secs(60))).expect("set up").expect("hooks");
    (fake, redeliverer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_more_failures_than_a_sweep_reads_the_next_sweeps_read_on_until_each_was_asked_for_once() {
    let redis = RedisServer::start();
    let (fake, redeliverer) = after_an_outage(&redis).await;

    let reports = sweep_until_quiet(&redeliverer, &redis, 6).await;
    assert!(reports.len() >= 3, "read on over more than one sweep: {reports:?}");
    assert_eq!(reports[0].redelivered.len(), 2 * hookbus_gateway::redeliver::MAX_PAGES, "the newest pages first");
    let mut asked = fake.asked.lock().expect("lock").clone();
    asked.sort_unstable();
    assert_eq!(asked, (1..=30).collect::<Vec<u64>>(), "every failed delivery, once");

    // Caught up, a sweep reads what is new: one page.
    let before = fake.pages.load(std::sync::atomic::Ordering::SeqCst);
    let quiet = sweep_until_quiet(&redeliverer, &redis, 1).await;
    assert!(quiet[0].redelivered.is_empty());
    assert_eq!(fake.pages.load(std::sync::atomic::Ordering::SeqCst) - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_redeliveries_keep_failing_is_asked_for_until_it_has_had_its_attempts() {
    let redis = RedisServer::start();
    let (fake, api) = fake_github(vec![attempt(1, "still-down", 503, 60)]).await;
    fake.keeps_failing.lock().expect("lock").push("still-down".into());
    let redeliverer =
        Redeliverer::from_settings(&settings(&redis, &api, Duration::from_secs(60))).expect("set up").expect("hooks");

    // Each sweep sees only the newest (failed) attempt; the count of what
    // was asked for stops it at MAX_ATTEMPTS in all.
    let reports = sweep_until_quiet(&redeliverer, &redis, 2 * hookbus_gateway::redeliver::MAX_ATTEMPTS).await;
    assert_eq!(fake.asked.lock().expect("lock").len(), hookbus_gateway::redeliver::MAX_ATTEMPTS - 1, "{reports:?}");
    let last = reports.last().expect("a sweep");
    assert!(last.redelivered.is_empty() && last.skipped == 1, "left to a person: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_read_deeper_than_a_sweep_in_one_run() {
    // `hookbus redeliver --pages 15` after the outage above: all 30 at once.
    let redis = RedisServer::start();
    let (fake, redeliverer) = after_an_outage(&redis).await;
    let looked = redeliverer.sweep_now(true, 15).await;
    assert_eq!(looked.redelivered.len(), 30, "{looked:?}");
    assert!(fake.asked.lock().expect("lock").is_empty(), "a dry run asks nothing");
    let default = redeliverer.sweep_now(true, hookbus_gateway::redeliver::MAX_PAGES).await;
    assert_eq!(default.redelivered.len(), 20, "the newest 10 pages by default");
}
