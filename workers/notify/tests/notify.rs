//! notify under the real runner, with real local HTTP servers as
//! subscribers (healthy, slow, always failing), as the alert webhook and as
//! a fake GitHub API; over a real redis-server and over memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use hookbus_bus::redis::RedisBackend;
use hookbus_bus::runner::DeadNotice;
use hookbus_bus::{Backend, Envelope, MemoryBackend, Runner, RunnerOptions, Shutdown};
use hookbus_config::{QueueOverrides, RepositoryList, Secret, Settings, SubscriberSettings, Subscribers};
use hookbus_notify::wire::{delivery_id, WritebackPayload};
use hookbus_notify::writeback::{plan, Method as CallMethod};
use hookbus_notify::Notify;
use hookbus_testkit::{free_port, RedisServer};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

// ---------------------------------------------------------------- fakes

/// One request a fake server received.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// What a fake answers to its n-th request (from 0): status, delay, headers.
type Answer = Arc<dyn Fn(usize, &Received) -> (u16, Duration, Vec<(&'static str, String)>) + Send + Sync>;

/// A local HTTP server that records every request and answers by `answer`.
struct FakeServer {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl FakeServer {
    async fn start(answer: Answer) -> FakeServer {
        let port = free_port();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let state = (seen.clone(), tx, answer);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (seen, tx, answer) = state.clone();
            async move {
                let received = Received { method, path: uri.path().to_string(), headers, body, at: Instant::now() };
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(received.clone());
                    seen.len() - 1
                };
                let _ = tx.send(received.clone());
                let (status, delay, headers) = answer(n, &received);
                tokio::time::sleep(delay).await;
                let mut response: Response = (StatusCode::from_u16(status).unwrap(), "{}").into_response();
                for (name, value) in headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind fake server");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeServer { url: format!("http://127.0.0.1:{port}"), seen, rx }
    }

    fn answering(status: u16) -> Answer {
        Arc::new(move |_, _| (status, Duration::ZERO, vec![]))
    }

    /// The next request, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok().flatten()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn subscriber(name: &str, url: &str, secret: &str, timeout_ms: u64) -> SubscriberSettings {
    SubscriberSettings {
        name: name.into(),
        url: url.into(),
        secret: Secret::new(secret),
        repositories: RepositoryList::default(),
        kinds: Vec::new(),
        timeout_ms,
    }
}

/// Settings with quick retries: `attempts` per notify message, 20-50 ms backoff.
fn settings(attempts: u32, subscribers: Vec<SubscriberSettings>) -> Settings {
    let mut s = Settings::default();
    s.bus.poll_interval_ms = 10;
    s.bus.queues.insert(
        "notify".into(),
        QueueOverrides {
            max_attempts: Some(attempts),
            backoff_base_ms: Some(20),
            backoff_max_ms: Some(50),
            ..QueueOverrides::default()
        },
    );
    s.notify.subscribers = Subscribers::new(subscribers);
    s
}

/// `s` writing back to `github` with `token`.
fn with_github(mut s: Settings, github: &FakeServer, token: &str) -> Settings {
    s.github.api_url = github.url.clone();
    s.github.token = Secret::new(token);
    s
}

fn synced(direction: &str, operation: &str) -> Envelope {
    let payload = json!({
        "operation": operation,
        "key": "github:octo/repo:issue:7",
        "repository": "octo/repo",
        "kind": "issue",
        "action": if direction == "outbound" { "update" } else { "edited" },
        "direction": direction,
        "source": if direction == "outbound" { "client.change" } else { "issues" },
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "path": "repos/octo/repo/issues/7.json",
        "record": { "number": 7, "title": "Crash on start", "state": "open", "labels": ["bug"] },
        "actor": { "login": "octocat", "id": 1, "name": null, "email": null },
        "delivery": if direction == "outbound" { Value::Null } else { json!("d-1") },
        "updated_at": 1_700_000_000_000_i64,
        "number": 7,
        "id": null,
        "changes": if direction == "outbound" {
            json!({ "title": "Crash on start", "state": "closed", "labels": ["bug"], "milestone": 3 })
        } else { Value::Null },
    });
    Envelope::with_payload("record.synced", &payload).expect("payload").keyed("github:octo/repo:issue:7")
}

fn dead_notice(queue: &str, id: &str) -> Envelope {
    let notice = DeadNotice {
        queue: queue.into(),
        id: id.into(),
        kind: "sync.apply".into(),
        trace_id: format!("trace-{id}"),
        reason: "push rejected".into(),
        attempts: 8,
        redrives: 0,
        dead_at: 1,
        given_up: false,
    };
    Envelope::with_payload("bus.dead", &notice).expect("payload")
}

fn verifies(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap_or_default()).is_ok()
}

/// Runs `notify` on `backend` until the returned shutdown is triggered.
fn run(backend: Arc<dyn Backend>, notify: Notify, settings: &Settings) -> Shutdown {
    let shutdown = Shutdown::new();
    let options = RunnerOptions::from_settings(&settings.bus, "notify");
    let runner = Runner::new(backend, Arc::new(notify), options);
    let child = shutdown.child();
    tokio::spawn(async move { runner.run(child).await });
    shutdown
}

/// Polls `check` every 10 ms until it holds or `timeout` passes.
async fn until<F: std::future::Future<Output = bool>>(timeout: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn dead_reasons(backend: &Arc<dyn Backend>) -> Vec<String> {
    backend.dead_list("notify", 100).await.expect("dead list").into_iter().map(|d| d.reason).collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_subscriber_gets_a_signed_event_in_isolation_and_a_failing_one_ends_dead_with_an_alert() {
    let redis = RedisServer::start();
    // Healthy, after one failure: the retry carries the same delivery id.
    let mut healthy =
        FakeServer::start(Arc::new(|n, _| (if n == 0 { 503 } else { 200 }, Duration::ZERO, vec![]))).await;
    let slow = FakeServer::start(Arc::new(|_, _| (200, Duration::from_secs(5), vec![]))).await;
    let failing = FakeServer::start(FakeServer::answering(500)).await;
    let comments_only = FakeServer::start(FakeServer::answering(200)).await;
    let mut alerts = FakeServer::start(FakeServer::answering(200)).await;
    let mut only_comments = subscriber("comments", &comments_only.url, "c", 1_000);
    only_comments.kinds = vec!["comment".into()];
    let mut s = settings(
        3,
        vec![
            subscriber("healthy", &healthy.url, "healthy-secret", 2_000),
            subscriber("slow", &slow.url, "slow-secret", 300),
            subscriber("failing", &failing.url, "failing-secret", 2_000),
            only_comments,
        ],
    );
    s.redis.url = Secret::new(redis.url());
    s.notify.alert_webhook = Secret::new(format!("{}/services/T000/B000/alert-token", alerts.url));
    s.notify.alert_window_ms = 60_000;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe("hookbus:events").await.expect("subscribe");

    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::connect(&redis.url(), "hookbus", 4, false).expect("pool"));
    let notify = Notify::from_settings(&s).expect("notify");
    let shutdown = run(backend.clone(), notify, &s);
    backend.push("notify", &[synced("inbound", "gh-op-1")]).await.expect("push");

    // The event is published on the channel.
    let published = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("published in time")
        .expect("a message");
    let published: Value = serde_json::from_str(&published.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(published["type"], "record.synced");
    assert_eq!(published["resource"], "github:octo/repo:issue:7");

    // The healthy subscriber: a failure, then the same delivery again.
    let first = healthy.next(Duration::from_secs(5)).await.expect("first attempt");
    let second = healthy.next(Duration::from_secs(5)).await.expect("retried");
    let started = Instant::now();
    assert_eq!(first.header("x-hookbus-delivery"), delivery_id("gh-op-1", "healthy"));
    assert_eq!(first.header("x-hookbus-delivery"), second.header("x-hookbus-delivery"));
    assert_eq!(first.body, second.body);
    assert_eq!(second.header("x-hookbus-event"), "record.synced");
    assert_eq!(second.header("content-type"), "application/json");
    assert!(verifies("healthy-secret", &second.body, second.header("x-hookbus-signature-256")));
    assert!(!verifies("slow-secret", &second.body, second.header("x-hookbus-signature-256")));
    let event = second.json();
    assert_eq!(event, published);
    for (field, want) in [
        ("operation", json!("gh-op-1")),
        ("repository", json!("octo/repo")),
        ("kind", json!("issue")),
        ("action", json!("edited")),
        ("direction", json!("inbound")),
        ("commit", json!("0123456789abcdef0123456789abcdef01234567")),
        ("path", json!("repos/octo/repo/issues/7.json")),
        ("delivery", json!("d-1")),
        ("record", json!({ "number": 7, "title": "Crash on start", "state": "open", "labels": ["bug"] })),
    ] {
        assert_eq!(event[field], want, "{field}");
    }
    assert_eq!(event["actor"]["login"], "octocat");
    // Delivered while the slow subscriber is still being retried: nothing
    // of it is dead yet, and it answered none of its requests in time.
    assert!(slow.count() >= 1);
    assert!(!dead_reasons(&backend).await.iter().any(|r| r.contains("subscriber slow")));

    // The failing and the slow subscriber end dead, named in the reason.
    assert!(
        until(Duration::from_secs(10), || async {
            let reasons = dead_reasons(&backend).await;
            reasons.iter().any(|r| r.contains("subscriber failing answered 500"))
                && reasons.iter().any(|r| r.contains("subscriber slow: no answer within 300 ms"))
        })
        .await,
        "dead letters: {:?}",
        dead_reasons(&backend).await
    );
    assert_eq!(failing.count(), 3, "max_attempts deliveries");
    assert!(!dead_reasons(&backend).await.iter().any(|r| r.contains("secret")));
    // The healthy one was not held up by them.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(healthy.count(), 2);
    assert_eq!(comments_only.count(), 0, "filtered out by kind");

    // One alert for the queue; the second dead letter is folded into the window.
    let alert = alerts.next(Duration::from_secs(5)).await.expect("an alert");
    assert_eq!(alert.path, "/services/T000/B000/alert-token");
    let text = alert.json()["text"].as_str().expect("text").to_string();
    assert!(text.contains("went dead on queue `notify`"), "{text}");
    assert!(text.contains("notify.delivery"), "{text}");
    assert!(alerts.next(Duration::from_millis(300)).await.is_none(), "at most one alert per window");
    shutdown.trigger();
}

/// Waits until nothing is pending, in flight or delayed on `notify`.
async fn drained(backend: &Arc<dyn Backend>) -> bool {
    until(Duration::from_secs(10), || async {
        backend.depths("notify").await.is_ok_and(|d| d.pending + d.in_flight + d.delayed + d.held == 0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_comes_twice_is_posted_once_by_whichever_notify_process_gets_it() {
    // Upstream emitted the same `record.synced` twice (outputs go out before
    // the acknowledgement), and two notify processes share the queue.
    let redis = RedisServer::start();
    let mut subscriber_server = FakeServer::start(FakeServer::answering(200)).await;
    let mut s = settings(3, vec![subscriber("once", &subscriber_server.url, "once-secret", 2_000)]);
    s.redis.url = Secret::new(redis.url());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe("hookbus:events").await.expect("subscribe");
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::connect(&redis.url(), "hookbus", 4, false).expect("pool"));
    let first = run(backend.clone(), Notify::from_settings(&s).expect("notify"), &s);
    let second = run(backend.clone(), Notify::from_settings(&s).expect("notify"), &s);

    backend.push("notify", &[synced("inbound", "gh-op-twice")]).await.expect("push");
    let posted = subscriber_server.next(Duration::from_secs(5)).await.expect("delivered");
    backend.push("notify", &[synced("inbound", "gh-op-twice")]).await.expect("push the duplicate");
    let mut events = pubsub.on_message();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("both fanned out").expect("event");
    }
    assert!(drained(&backend).await, "notify never drained");
    assert!(subscriber_server.next(Duration::from_millis(200)).await.is_none(), "posted a second time");
    assert_eq!(subscriber_server.count(), 1);

    // The record an operator can look at: the delivery id, kept a day.
    let mut conn = redis.client();
    let key = format!("hookbus:notify:done:delivery:{}", posted.header("x-hookbus-delivery"));
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("pttl");
    assert!(ttl > 23 * 3_600_000 && ttl <= 24 * 3_600_000, "{key} expires in {ttl} ms");
    first.trigger();
    second.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fold_notices_per_queue_window_and_the_next_alert_reports_the_count() {
    let redis = RedisServer::start();
    let mut alerts = FakeServer::start(FakeServer::answering(200)).await;
    let mut s = settings(3, vec![]);
    s.redis.url = Secret::new(redis.url());
    s.notify.alert_webhook = Secret::new(alerts.url.clone());
    s.notify.alert_window_ms = 500;
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::connect(&redis.url(), "hookbus", 4, false).expect("pool"));
    let shutdown = run(backend.clone(), Notify::from_settings(&s).expect("notify"), &s);
    backend
        .push(
            "notify",
            &[
                dead_notice("commit", "m1"),
                dead_notice("commit", "m2"),
                dead_notice("reconcile", "r1"),
                dead_notice("commit", "m3"),
            ],
        )
        .await
        .expect("push");

    let mut first = Vec::new();
    for _ in 0..2 {
        first.push(alerts.next(Duration::from_secs(5)).await.expect("alert"));
    }
    let texts: Vec<String> = first.iter().map(|a| a.json()["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts.iter().filter(|t| t.contains("queue `commit`")).count(), 1, "{texts:?}");
    assert_eq!(texts.iter().filter(|t| t.contains("queue `reconcile`")).count(), 1, "{texts:?}");
    // The window closes: one more alert carries the two folded notices.
    let folded = alerts.next(Duration::from_secs(5)).await.expect("the folded count");
    let text = folded.json()["text"].as_str().unwrap().to_string();
    let opened = first.iter().map(|a| a.at).min().expect("two alerts");
    assert!(folded.at.duration_since(opened) >= Duration::from_millis(450), "not before the window closed");
    assert!(text.contains("2 more message(s) went dead on queue `commit`"), "{text}");
    assert!(alerts.next(Duration::from_millis(700)).await.is_none(), "nothing left to report");

    // The next window opens with the next notice, counting nothing twice.
    backend.push("notify", &[dead_notice("commit", "m4")]).await.expect("push");
    let text = alerts.next(Duration::from_secs(5)).await.expect("alert").json()["text"].as_str().unwrap().to_string();
    assert!(text.contains("m4") && !text.contains("more folded"), "{text}");
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_the_webhook_refuses_is_retried_with_the_same_text() {
    // Memory backend and memory windows: the dev-mode wiring.
    let mut alerts = FakeServer::start(Arc::new(|n, _| (if n == 0 { 502 } else { 200 }, Duration::ZERO, vec![]))).await;
    let mut s = settings(5, vec![]);
    s.notify.alert_webhook = Secret::new(alerts.url.clone());
    s.notify.alert_window_ms = 60_000;
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let (notify, _events) = Notify::in_memory(&s).expect("notify");
    let shutdown = run(backend.clone(), notify, &s);
    backend.push("notify", &[dead_notice("commit", "m1")]).await.expect("push");
    let refused = alerts.next(Duration::from_secs(5)).await.expect("first try");
    let retried = alerts.next(Duration::from_secs(5)).await.expect("retry");
    assert_eq!(refused.body, retried.body);
    assert!(dead_reasons(&backend).await.is_empty());
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_change_is_written_back_and_a_rate_limit_defers_it_without_spending_an_attempt() {
    // 403 with X-RateLimit-Remaining: 0 first, then success.
    let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 1;
    let mut github = FakeServer::start(Arc::new(move |n, _| match n {
        0 => {
            (403, Duration::ZERO, vec![("x-ratelimit-remaining", "0".into()), ("x-ratelimit-reset", reset.to_string())])
        }
        _ => (200, Duration::ZERO, vec![]),
    }))
    .await;
    // One attempt only: a deferral that counted one would end dead.
    let s = with_github(settings(1, vec![]), &github, "ghp_test_token");
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let (notify, events) = Notify::in_memory(&s).expect("notify");
    let mut events = events.subscribe();
    let shutdown = run(backend.clone(), notify, &s);
    backend.push("notify", &[synced("outbound", "op-client-1")]).await.expect("push");

    let published: Value = serde_json::from_str(&events.recv().await.expect("event")).unwrap();
    assert_eq!(published["direction"], "outbound");
    let limited = github.next(Duration::from_secs(5)).await.expect("first write");
    let written = github.next(Duration::from_secs(5)).await.expect("written after the reset");
    assert_eq!(limited.method, Method::PATCH);
    assert_eq!(written.path, "/repos/octo/repo/issues/7");
    assert!(written.header("authorization").contains("ghp_test_token"));
    assert_eq!(
        written.json(),
        json!({ "title": "Crash on start", "state": "closed", "labels": ["bug"], "milestone": 3 })
    );
    let written_at = SystemTime::now() - written.at.elapsed();
    assert!(written_at >= UNIX_EPOCH + Duration::from_secs(reset), "waited for the reset");
    assert!(written.at.duration_since(limited.at) >= Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
    assert_eq!(github.count(), 2);
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_comes_twice_is_written_back_once() {
    let github = FakeServer::start(FakeServer::answering(200)).await;
    let s = with_github(settings(3, vec![]), &github, "ghp_test_token");
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let (notify, events) = Notify::in_memory(&s).expect("notify");
    let mut events = events.subscribe();
    let shutdown = run(backend.clone(), notify, &s);
    for _ in 0..2 {
        backend.push("notify", &[synced("outbound", "op-client-twice")]).await.expect("push");
    }
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("fanned out").expect("event");
    }
    assert!(drained(&backend).await, "notify never drained");
    assert_eq!(github.count(), 1, "one write for one change");
    assert!(dead_reasons(&backend).await.is_empty());
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_for_a_tag_that_has_one_ends_dead_with_what_github_refused() {
    let port = free_port();
    let refused = r#"{"message":"Validation Failed","errors":[{"resource":"Release","code":"already_exists","field":"tag_name"}]}"#;
    let app = axum::Router::new().route(
        "/repos/octo/repo/releases",
        axum::routing::post(move || async move { (StatusCode::UNPROCESSABLE_ENTITY, refused).into_response() }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind fake GitHub");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut s = settings(3, vec![]);
    s.github.api_url = format!("http://127.0.0.1:{port}");
    s.github.token = Secret::new("ghp_test_token");
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let shutdown = run(backend.clone(), Notify::in_memory(&s).expect("notify").0, &s);
    let change = WritebackPayload {
        operation: "op-release-taken".into(),
        resource: "github:octo/repo:release:v1.0".into(),
        repository: "octo/repo".into(),
        kind: "release".into(),
        action: "create".into(),
        number: None,
        id: None,
        changes: serde_json::from_value(json!({ "tag_name": "v1.0", "name": "One" })).unwrap(),
    };
    let envelope = Envelope::with_payload("github.writeback", &change).expect("payload");
    backend.push("notify", &[envelope]).await.expect("push");

    assert!(until(Duration::from_secs(5), || async { !dead_reasons(&backend).await.is_empty() }).await);
    let reasons = dead_reasons(&backend).await;
    assert!(reasons[0].contains("422") && reasons[0].contains("Release.tag_name already_exists"), "{reasons:?}");
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_ends_the_write_back_dead_naming_the_setting() {
    let github = FakeServer::start(FakeServer::answering(401)).await;
    let s = with_github(settings(5, vec![]), &github, "ghp_bad");
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let shutdown = run(backend.clone(), Notify::in_memory(&s).expect("notify").0, &s);
    backend.push("notify", &[synced("outbound", "op-client-2")]).await.expect("push");
    assert!(until(Duration::from_secs(5), || async { !dead_reasons(&backend).await.is_empty() }).await);
    let reasons = dead_reasons(&backend).await;
    assert!(reasons[0].contains("HOOKBUS_GITHUB__TOKEN") && !reasons[0].contains("ghp_bad"), "{reasons:?}");
    assert_eq!(github.count(), 1, "not retried");
    shutdown.trigger();
}

#[test]
fn write_back_plans_issue_comment_and_release_calls() {
    let change = |kind: &str, action: &str, changes: Value| WritebackPayload {
        operation: "op".into(),
        resource: "github:octo/repo:comment:5".into(),
        repository: "octo/repo".into(),
        kind: kind.into(),
        action: action.into(),
        number: Some(7),
        id: Some(5),
        changes: serde_json::from_value(changes).unwrap(),
    };
    let call = plan(&change("pull_request", "update", json!({ "assignees": ["a"], "head": "x" }))).unwrap();
    assert_eq!((call.method, call.route.as_str()), (CallMethod::Patch, "/repos/octo/repo/issues/7"));
    assert_eq!(call.body, Some(json!({ "assignees": ["a"] })));
    let call = plan(&change("comment", "create", json!({ "body": "hi" }))).unwrap();
    assert_eq!((call.method, call.route.as_str()), (CallMethod::Post, "/repos/octo/repo/issues/7/comments"));
    let call = plan(&change("comment", "update", json!({ "body": "edited" }))).unwrap();
    assert_eq!((call.method, call.route.as_str()), (CallMethod::Patch, "/repos/octo/repo/issues/comments/5"));
    let call = plan(&change("comment", "delete", json!({}))).unwrap();
    assert_eq!(
        (call.method, call.route.as_str(), call.body),
        (CallMethod::Delete, "/repos/octo/repo/issues/comments/5", None)
    );
    assert!(plan(&change("issue", "delete", json!({}))).is_err());
    assert!(plan(&change("issue", "create", json!({ "body": "no title" }))).is_err());
    let call = plan(&change("issue", "update", json!({ "milestone": 3, "locked": true }))).unwrap();
    assert_eq!(call.body, Some(json!({ "milestone": 3 })), "a milestone is written back");

    let release = json!({ "tag_name": "v1.2.0", "name": "1.2", "body": "Notes", "draft": true, "prerelease": false });
    let call = plan(&change("release", "create", release.clone())).unwrap();
    assert_eq!((call.method, call.route.as_str()), (CallMethod::Post, "/repos/octo/repo/releases"));
    assert_eq!(call.body, Some(release));
    let call = plan(&change("release", "update", json!({ "name": "1.2.1", "author": "x" }))).unwrap();
    assert_eq!((call.method, call.route.as_str()), (CallMethod::Patch, "/repos/octo/repo/releases/5"));
    assert_eq!(call.body, Some(json!({ "name": "1.2.1" })));
    let call = plan(&change("release", "delete", json!({}))).unwrap();
    assert_eq!((call.method, call.route.as_str()), (CallMethod::Delete, "/repos/octo/repo/releases/5"));
    assert!(plan(&change("release", "create", json!({ "name": "no tag" }))).is_err());
}

#[test]
fn a_create_is_looked_for_by_its_fields_and_time_and_nothing_else_is_looked_for() {
    use hookbus_notify::writeback::{created_by, lookup};
    let change = |kind: &str, action: &str, changes: Value| WritebackPayload {
        operation: "op".into(),
        resource: "github:octo/repo:issue:7".into(),
        repository: "octo/repo".into(),
        kind: kind.into(),
        action: action.into(),
        number: Some(7),
        id: None,
        changes: serde_json::from_value(changes).unwrap(),
    };
    // 2026-12-01T14:00:00Z
    let since = 1_796_133_600_000;
    let issue = change("issue", "create", json!({ "title": "Crash", "body": "", "labels": ["bug"] }));
    let call = lookup(&issue, since).expect("an issue create is looked for");
    assert_eq!(call.method, CallMethod::Get);
    assert_eq!(
        call.route,
        "/repos/octo/repo/issues?state=all&sort=created&direction=desc&per_page=100&since=2026-12-01T14:00:00Z"
    );
    let made = json!({ "number": 12, "title": "Crash", "body": null, "created_at": "2026-12-01T14:00:03Z" });
    assert!(created_by(&issue, &made, since, None), "same title, empty body kept as null, made after");
    let before = json!({ "number": 11, "title": "Crash", "body": null, "created_at": "2026-12-01T13:59:59Z" });
    assert!(!created_by(&issue, &before, since, None), "made before the first attempt");
    let other = json!({ "number": 13, "title": "Crash!", "body": null, "created_at": "2026-12-01T14:00:03Z" });
    assert!(!created_by(&issue, &other, since, None), "another title");
    let pull = json!({ "number": 14, "title": "Crash", "body": null, "created_at": "2026-12-01T14:00:03Z",
        "pull_request": { "url": "x" } });
    assert!(!created_by(&issue, &pull, since, None), "a pull request");
    assert!(!created_by(&issue, &json!({ "number": 15, "title": "Crash" }), since, None), "no creation time");

    let comment = change("comment", "create", json!({ "body": "LGTM" }));
    assert_eq!(
        lookup(&comment, since).expect("a comment create is looked for").route,
        "/repos/octo/repo/issues/7/comments?per_page=100&since=2026-12-01T14:00:00Z"
    );
    assert!(created_by(
        &comment,
        &json!({ "id": 5, "body": "LGTM", "created_at": "2026-12-01T14:00:00Z" }),
        since,
        None
    ));
    assert!(!created_by(
        &comment,
        &json!({ "id": 6, "body": "LGTM!", "created_at": "2026-12-01T14:00:09Z" }),
        since,
        None
    ));
    let by = |login: &str| json!({ "id": 7, "body": "LGTM", "created_at": "2026-12-01T14:00:01Z", "user": { "login": login } });
    assert!(created_by(&comment, &by("hookbus-bot"), since, Some("hookbus-bot")), "made by this token");
    assert!(!created_by(&comment, &by("mona"), since, Some("hookbus-bot")), "made by someone else");
    assert!(created_by(&comment, &by("mona"), since, None), "the token's login unknown: not compared");
    let release = change("release", "create", json!({ "tag_name": "v2", "name": "Two", "body": null }));
    assert_eq!(
        lookup(&release, since).expect("a release create is looked for").route,
        "/repos/octo/repo/releases?per_page=100"
    );
    // Known by its tag (a release's created_at is its commit's date).
    let made = json!({ "id": 8, "tag_name": "v2", "name": "Two", "body": "", "created_at": "2020-01-01T00:00:00Z" });
    assert!(created_by(&release, &made, since, None));
    let renamed = json!({ "id": 9, "tag_name": "v2", "name": "Deux", "body": null });
    assert!(
        !created_by(&release, &renamed, since, None),
        "the tag's release, but not this change's: POST, and GitHub says why"
    );
    assert!(!created_by(&release, &json!({ "id": 10, "tag_name": "v3", "name": "Two" }), since, None));
    for (kind, action) in [
        ("issue", "update"),
        ("comment", "update"),
        ("comment", "delete"),
        ("pull_request", "update"),
        ("release", "update"),
        ("release", "delete"),
    ] {
        assert!(
            lookup(&change(kind, action, json!({ "body": "x" })), since).is_none(),
            "{kind} {action} is repeatable"
        );
    }
}

#[test]
fn delivery_ids_are_stable_per_operation_and_subscriber() {
    assert_eq!(delivery_id("op-1", "crm"), delivery_id("op-1", "crm"));
    assert_ne!(delivery_id("op-1", "crm"), delivery_id("op-1", "ops"));
    assert_ne!(delivery_id("op-1", "crm"), delivery_id("op-2", "crm"));
    assert_eq!(delivery_id("op-1", "crm").len(), 36);
}

#[test]
fn the_binary_exits_2_naming_a_bad_subscriber_setting_without_its_secret() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus-notify"))
        .env("HOOKBUS_CONFIG", "/dev/null")
        .env("HOOKBUS_NOTIFY__SUBSCRIBERS", r#"[{"url": "crm.example", "secret": "hunter2"}]"#)
        .output()
        .expect("run hookbus-notify");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("notify.subscribers[0].url (HOOKBUS_NOTIFY__SUBSCRIBERS)"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

// ------------------------------------------------- creates done once

/// How a fake GitHub treats the first POST that creates a comment.
#[derive(Clone, Copy, PartialEq)]
enum FirstCreate {
    /// Makes the comment, then answers 502: the answer is lost.
    MadeThenFailed,
    /// Answers 502 without making anything.
    Failed,
    /// Makes the comment and never answers (the process is killed meanwhile).
    MadeThenHung,
    /// Makes the comment and answers 201, as GitHub does.
    Made,
}

/// A fake GitHub that keeps the comments of `octo/repo` issue 7, lists them
/// (`GET`, honouring `since`, `page` and `per_page`) and makes them (`POST`).
struct FakeComments {
    url: String,
    comments: Arc<Mutex<Vec<Value>>>,
    posts: Arc<std::sync::atomic::AtomicUsize>,
    lists: Arc<std::sync::atomic::AtomicUsize>,
    /// The App's installation on octo/repo now.
    installed: Arc<std::sync::atomic::AtomicU64>,
}

const COMMENTS: &str = "/repos/octo/repo/issues/7/comments";

fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A GitHub App's installation, as the fake knows it at first (each one's
/// token is `ghs_installation_<id>`), and the login of its bot.
const INSTALLATION: u64 = 31;
const APP_BOT: &str = "hookbus-test[bot]";

impl FakeComments {
    async fn start(first: FirstCreate, existing: Vec<Value>) -> FakeComments {
        Self::serve(first, existing, false).await
    }

    /// As [`FakeComments::start`], for a GitHub App's installation: the
    /// comments answer only its token (minted at
    /// `/app/installations/<id>/access_tokens` for the App's JWT), and what
    /// it creates is by the App's bot.
    async fn start_for_app(first: FirstCreate, existing: Vec<Value>) -> FakeComments {
        Self::serve(first, existing, true).await
    }

    async fn serve(first: FirstCreate, existing: Vec<Value>, app: bool) -> FakeComments {
        use axum::extract::{Query, State};
        use axum::http::HeaderMap;
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let port = free_port();
        let comments = Arc::new(Mutex::new(existing));
        let (posts, lists) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let installed = Arc::new(std::sync::atomic::AtomicU64::new(INSTALLATION));
        type Shared = (Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>, Arc<AtomicUsize>, FirstCreate, bool);
        let state: Shared = (comments.clone(), posts.clone(), lists.clone(), first, app);
        let refused = {
            let installed = installed.clone();
            move |app: bool, headers: &HeaderMap| {
                let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let id = installed.load(Ordering::SeqCst);
                (app && given != format!("Bearer ghs_installation_{id}")).then(|| {
                    (StatusCode::UNAUTHORIZED, axum::Json(json!({ "message": "Bad credentials" }))).into_response()
                })
            }
        };
        let create_refused = refused.clone();
        let list = move |State((comments, _, lists, _, app)): State<Shared>,
                         headers: HeaderMap,
                         Query(query): Query<HashMap<String, String>>| async move {
            if let Some(refused) = refused(app, &headers) {
                return refused;
            }
            lists.fetch_add(1, Ordering::SeqCst);
            let since = query.get("since").cloned().unwrap_or_default();
            let number = |name: &str, default: usize| query.get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
            let (page, per_page) = (number("page", 1), number("per_page", 30));
            // Oldest first, as GitHub lists an issue's comments.
            let shown: Vec<Value> = comments
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c["updated_at"].as_str().unwrap_or("") >= since.as_str())
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            axum::Json(Value::Array(shown)).into_response()
        };
        let create = move |State((comments, posts, _, first, app)): State<Shared>, headers: HeaderMap, body: Bytes| async move {
            if let Some(refused) = create_refused(app, &headers) {
                return refused;
            }
            let n = posts.fetch_add(1, Ordering::SeqCst);
            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if n == 0 && first == FirstCreate::Failed {
                return (StatusCode::BAD_GATEWAY, "{}").into_response();
            }
            let now = rfc3339(SystemTime::now());
            let comment = {
                let mut comments = comments.lock().unwrap();
                let author = if app { APP_BOT } else { "hookbus-bot" };
                let comment = json!({
                    "id": 9_000 + comments.len(), "body": asked["body"], "created_at": now, "updated_at": now,
                    "user": { "login": author },
                });
                comments.push(comment.clone());
                comment
            };
            match (n, first) {
                (0, FirstCreate::MadeThenFailed) => (StatusCode::BAD_GATEWAY, "{}").into_response(),
                (0, FirstCreate::MadeThenHung) => {
                    tokio::time::sleep(Duration::from_secs(3_600)).await;
                    (StatusCode::CREATED, axum::Json(comment)).into_response()
                }
                _ => (StatusCode::CREATED, axum::Json(comment)).into_response(),
            }
        };
        let jwt = |headers: &HeaderMap| {
            let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
            hookbus_testkit::github_app::check_app_jwt(authorization)
        };
        let (mint_installed, lookup_installed) = (installed.clone(), installed.clone());
        let mint = move |headers: HeaderMap, axum::extract::Path(id): axum::extract::Path<u64>| async move {
            if let Err(reason) = jwt(&headers).and_then(|()| match id == mint_installed.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err(format!("no installation {id}")),
            }) {
                return (StatusCode::UNAUTHORIZED, axum::Json(json!({ "message": reason }))).into_response();
            }
            let expires_at = rfc3339(SystemTime::now() + Duration::from_secs(3_600));
            let token = json!({ "token": format!("ghs_installation_{id}"), "expires_at": expires_at,
                                "permissions": { "issues": "write" }, "repository_selection": "all" });
            (StatusCode::CREATED, axum::Json(token)).into_response()
        };
        let installation = move |headers: HeaderMap| async move {
            match jwt(&headers) {
                Ok(()) => axum::Json(json!({ "id": lookup_installed.load(Ordering::SeqCst) })).into_response(),
                Err(reason) => (StatusCode::UNAUTHORIZED, axum::Json(json!({ "message": reason }))).into_response(),
            }
        };
        let the_app = move |headers: HeaderMap| async move {
            match jwt(&headers) {
                Ok(()) => axum::Json(json!({ "slug": "hookbus-test" })).into_response(),
                Err(reason) => (StatusCode::UNAUTHORIZED, axum::Json(json!({ "message": reason }))).into_response(),
            }
        };
        let app = axum::Router::new()
            .route(COMMENTS, axum::routing::get(list).post(create))
            .route("/user", axum::routing::get(|| async { axum::Json(json!({ "login": "hookbus-bot" })) }))
            .route("/app/installations/{id}/access_tokens", axum::routing::post(mint))
            .route("/app", axum::routing::get(the_app))
            .route("/repos/octo/repo/installation", axum::routing::get(installation))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind fake GitHub");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeComments { url: format!("http://127.0.0.1:{port}"), comments, posts, lists, installed }
    }

    /// The App was uninstalled from octo/repo and installed again: a new
    /// installation, and the old one's tokens refused from now on.
    fn reinstall(&self) {
        self.installed.fetch_add(100, std::sync::atomic::Ordering::SeqCst);
    }

    fn bodies(&self) -> Vec<String> {
        self.comments.lock().unwrap().iter().map(|c| c["body"].as_str().unwrap_or("").to_string()).collect()
    }
    fn posts(&self) -> usize {
        self.posts.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn lists(&self) -> usize {
        self.lists.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A client's new comment on issue 7, as notify writes it back.
fn comment_create(operation: &str, body: &str) -> Envelope {
    let change = WritebackPayload {
        operation: operation.into(),
        resource: "github:octo/repo:issue:7".into(),
        repository: "octo/repo".into(),
        kind: "comment".into(),
        action: "create".into(),
        number: Some(7),
        id: None,
        changes: serde_json::from_value(json!({ "body": body })).unwrap(),
    };
    Envelope::with_payload("github.writeback", &change).expect("payload").keyed("writeback:github:octo/repo:issue:7")
}

fn with_fake_github(mut s: Settings, github: &FakeComments) -> Settings {
    s.github.api_url = github.url.clone();
    s.github.token = Secret::new("ghp_test_token");
    s
}

/// notify in this process over the memory bus, writing back to `github`
/// (three attempts per message).
fn notify_against(github: &FakeComments) -> (Arc<dyn Backend>, Shutdown) {
    notify_with(with_fake_github(settings(3, vec![]), github))
}

fn notify_with(s: Settings) -> (Arc<dyn Backend>, Shutdown) {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let shutdown = run(backend.clone(), Notify::in_memory(&s).expect("notify").0, &s);
    (backend, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_whose_create_answer_was_lost_is_found_on_the_retry_not_made_twice() {
    let github = FakeComments::start(FirstCreate::MadeThenFailed, vec![]).await;
    let (backend, shutdown) = notify_against(&github);
    backend.push("notify", &[comment_create("op-lost-answer", "Fixed in 1.2")]).await.expect("push");

    assert!(until(Duration::from_secs(10), || async { github.lists() >= 1 }).await, "the retry looked first");
    assert!(drained(&backend).await, "notify never drained");
    assert_eq!(github.bodies(), vec!["Fixed in 1.2"], "one comment on GitHub");
    assert_eq!(github.posts(), 1, "the retry did not POST again");
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_busy_issue_the_lost_create_is_found_on_a_later_page_of_the_listing() {
    // 150 comments by others in the window come before ours, oldest first:
    // ours is on the second page.
    let now = rfc3339(SystemTime::now());
    let busy = (0..150)
        .map(|i| {
            json!({ "id": i, "body": format!("+{i}"), "created_at": now, "updated_at": now,
            "user": { "login": "mona" } })
        })
        .collect();
    let github = FakeComments::start(FirstCreate::MadeThenFailed, busy).await;
    let (backend, shutdown) = notify_against(&github);
    backend.push("notify", &[comment_create("op-busy-issue", "Fixed in 1.3")]).await.expect("push");

    assert!(until(Duration::from_secs(10), || async { github.lists() >= 2 }).await, "the retry read both pages");
    assert!(drained(&backend).await, "notify never drained");
    assert_eq!(github.bodies().iter().filter(|b| *b == "Fixed in 1.3").count(), 1, "one comment on GitHub");
    assert_eq!((github.posts(), github.lists()), (1, 2), "no second POST; pages 1 and 2 read");
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_whose_create_failed_is_made_on_the_retry_even_beside_identical_ones_not_its_own() {
    // The same words, an hour ago by anyone, and just now by someone else:
    // neither is this operation's comment.
    let hour_ago = rfc3339(SystemTime::now() - Duration::from_secs(3_600));
    let now = rfc3339(SystemTime::now());
    let older = json!({ "id": 1, "body": "+1", "created_at": hour_ago, "updated_at": now,
        "user": { "login": "hookbus-bot" } });
    let by_mona = json!({ "id": 2, "body": "+1", "created_at": now, "updated_at": now, "user": { "login": "mona" } });
    let github = FakeComments::start(FirstCreate::Failed, vec![older, by_mona]).await;
    let (backend, shutdown) = notify_against(&github);
    backend.push("notify", &[comment_create("op-failed-create", "+1")]).await.expect("push");

    assert!(until(Duration::from_secs(10), || async { github.posts() >= 2 }).await, "created on the retry");
    assert!(drained(&backend).await, "notify never drained");
    assert_eq!(github.bodies(), vec!["+1", "+1", "+1"], "the two others and this operation's");
    assert_eq!((github.posts(), github.lists()), (2, 1));
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_github_apps_installation_the_write_back_uses_its_token_and_knows_its_own_comments_by_its_bot() {
    written_back_as_the_app(INSTALLATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_app_alone_the_write_back_goes_through_the_installation_on_the_repository() {
    written_back_as_the_app(0).await;
}

/// The first create failed without making anything; meanwhile mona wrote
/// the same words. Only a comment by the App's bot is this operation's, so
/// the retry creates it: had the author been unknown (as for a token GitHub
/// will not name), mona's would have passed for it. `installation_id` 0:
/// the App finds its installation on the repository itself.
async fn written_back_as_the_app(installation_id: u64) {
    let now = rfc3339(SystemTime::now());
    let by_mona = json!({ "id": 2, "body": "+1", "created_at": now, "updated_at": now, "user": { "login": "mona" } });
    let github = FakeComments::start_for_app(FirstCreate::Failed, vec![by_mona]).await;
    let mut s = settings(3, vec![]);
    s.github.api_url = github.url.clone();
    s.github.app_id = hookbus_testkit::github_app::APP_ID;
    s.github.app_private_key = Secret::new(hookbus_testkit::github_app::PRIVATE_KEY);
    s.github.installation_id = installation_id;
    let (backend, shutdown) = notify_with(s);
    backend.push("notify", &[comment_create("op-as-the-app", "+1")]).await.expect("push");

    assert!(until(Duration::from_secs(10), || async { github.posts() >= 2 }).await, "created on the retry");
    assert!(drained(&backend).await, "notify never drained");
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
    let comments = github.comments.lock().unwrap().clone();
    let authors: Vec<&str> = comments.iter().filter_map(|c| c["user"]["login"].as_str()).collect();
    assert_eq!(authors, vec!["mona", APP_BOT], "mona's and the App's, once");
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_installed_again_is_written_back_through_its_new_installation_without_a_dead_letter() {
    let github = FakeComments::start_for_app(FirstCreate::Made, vec![]).await;
    let mut s = settings(3, vec![]);
    s.github.api_url = github.url.clone();
    s.github.app_id = hookbus_testkit::github_app::APP_ID;
    s.github.app_private_key = Secret::new(hookbus_testkit::github_app::PRIVATE_KEY);
    let (backend, shutdown) = notify_with(s);
    backend.push("notify", &[comment_create("op-before", "before")]).await.expect("push");
    assert!(until(Duration::from_secs(10), || async { github.posts() == 1 }).await, "written back");
    assert!(drained(&backend).await, "notify never drained");

    // Uninstalled and installed again: the token notify holds (good for
    // most of an hour yet) is refused from now on.
    github.reinstall();
    backend.push("notify", &[comment_create("op-after", "after")]).await.expect("push");
    assert!(until(Duration::from_secs(10), || async { github.posts() == 2 }).await, "written back again");
    assert!(drained(&backend).await, "notify never drained");
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
    assert_eq!(github.bodies(), vec!["before", "after"], "each once");
    shutdown.trigger();
}

/// The `hookbus-notify` binary, killed if a failing test leaves it running.
struct NotifyProcess(std::process::Child);

impl Drop for NotifyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_notify(redis: &RedisServer, github: &FakeComments) -> NotifyProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus-notify"))
        .env("HOOKBUS_CONFIG", "/dev/null")
        .env("REDIS_URL", redis.url())
        .env("HOOKBUS_GITHUB__API_URL", &github.url)
        .env("HOOKBUS_GITHUB__TOKEN", "ghp_test_token")
        .env("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000")
        .env("HOOKBUS_BUS__POLL_INTERVAL_MS", "10")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start hookbus-notify");
    NotifyProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_github_made_the_comment_but_before_notify_recorded_it_does_not_make_it_twice() {
    let redis = RedisServer::start();
    let github = FakeComments::start(FirstCreate::MadeThenHung, vec![]).await;
    let backend: Arc<dyn Backend> =
        Arc::new(RedisBackend::connect(&redis.url(), "hookbus", 2, false).expect("redis backend"));
    backend.push("notify", &[comment_create("op-killed", "Shipped")]).await.expect("push");

    let mut first = start_notify(&redis, &github);
    assert!(until(Duration::from_secs(20), || async { github.posts() == 1 }).await, "the first process POSTed");
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    assert_eq!(github.bodies(), vec!["Shipped"], "GitHub made it; notify never heard");

    let _second = start_notify(&redis, &github);
    assert!(until(Duration::from_secs(20), || async { github.lists() >= 1 }).await, "the restart looked first");
    assert!(drained(&backend).await, "notify never drained");
    assert_eq!(github.bodies(), vec!["Shipped"], "still one comment");
    assert_eq!(github.posts(), 1, "no second POST");
    assert!(dead_reasons(&backend).await.is_empty(), "{:?}", dead_reasons(&backend).await);
}
