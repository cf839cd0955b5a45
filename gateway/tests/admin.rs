//! `/admin` over real HTTP against a real redis-server: who gets in, what is
//! refused from another origin, what `/metrics` shows of the worker fleet —
//! and, in headless Chromium, an operator retrying a dead letter from the
//! page and seeing it handled by a real worker stage.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fantoccini::{ClientBuilder, Locator};
use hookbus_bus::backend::Settlement;
use hookbus_bus::envelope::now_ms;
use hookbus_bus::{
    Backend, ConsumerId, DeadContent, DeadLetter, Envelope, HandlerError, Outbox, Plugin, ProcessReport, Runner,
    RunnerOptions, Shutdown,
};
use hookbus_config::{Secret, Settings};
use hookbus_gateway::operations::StoreLookup;
use hookbus_gateway::signature::sign;
use hookbus_gateway::{serve, Gateway};
use hookbus_testkit::{ChromeDriver, RedisServer};
use reqwest::StatusCode;
use serde_json::Value;

const PASSWORD: &str = "operator-password-0123";

/// A gateway as the `web` dyno wires it (or as `hookbus dev` does, with
/// `dev`), over its own redis-server, serving on 127.0.0.1.
struct Admin {
    _redis: RedisServer,
    base: String,
    port: u16,
    backend: Arc<dyn Backend>,
    settings: Settings,
    http: reqwest::Client,
    shutdown: Shutdown,
}

impl Admin {
    async fn start(password: Option<&str>, dev: bool) -> Admin {
        let redis = RedisServer::start();
        let mut settings = Settings::default();
        settings.redis.url = Secret::new(redis.url());
        settings.github.webhook_secret = Secret::new(support::SECRET);
        settings.gateway.redis_timeout_ms = 2_000;
        settings.bus.heartbeat_timeout_ms = 3_000;
        settings.bus.poll_interval_ms = 20;
        // Dead letters here are the test's own; no bus.dead notices on notify.
        settings.bus.alert_queue = String::new();
        if let Some(password) = password {
            settings.admin.password = Secret::new(password);
        }
        let backend = hookbus_bus::connect(&settings).expect("bus backend");
        let operations = StoreLookup::over_redis(&settings).expect("operation records");
        let mut gateway =
            Gateway::over_redis(backend.clone(), &settings).expect("gateway").with_operations(Arc::new(operations));
        if dev {
            gateway = gateway.dev_mode();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shutdown = Shutdown::new();
        tokio::spawn(serve(listener, gateway.router(), shutdown.clone(), Duration::from_secs(2)));
        Admin {
            _redis: redis,
            base: format!("http://127.0.0.1:{port}"),
            port,
            backend,
            settings,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).basic_auth("admin", Some(PASSWORD))
    }

    /// The CSRF token the page hands out.
    async fn csrf(&self) -> String {
        let page = self.get("/admin").send().await.expect("page").text().await.expect("html");
        let start = page.find("name=\"hookbus-csrf\" content=\"").expect("csrf meta tag") + 29;
        page[start..].split('"').next().expect("token").to_string()
    }

    async fn dead_count(&self, queue: &str) -> u64 {
        self.backend.depths(queue).await.expect("depths").dead
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Puts one message on `queue` and dead-letters it as a worker would.
async fn dead_letter(backend: &dyn Backend, queue: &str, reason: &str) -> String {
    let envelope =
        Envelope::with_payload("test.note", &serde_json::json!({ "note": "hello", "api_token": "t0ps3cret" }))
            .expect("payload");
    let id = envelope.id.clone();
    backend.push(queue, &[envelope]).await.expect("push");
    let consumer = ConsumerId::new(queue);
    let got = backend.fetch(&consumer, 1, 10).await.expect("fetch");
    let settle: Vec<_> = got
        .into_iter()
        .map(|d| {
            let letter = DeadLetter {
                content: DeadContent::Envelope(std::sync::Arc::unwrap_or_clone(d.envelope)),
                reason: reason.to_string(),
                dead_at: now_ms(),
            };
            (d.lease, Settlement::Dead(Box::new(letter)))
        })
        .collect();
    backend.settle(&consumer, &settle).await.expect("settle");
    backend.deregister(&consumer).await.expect("deregister");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_admin_does_not_exist() {
    let admin = Admin::start(None, false).await;
    for path in ["/admin", "/admin/api/overview", "/admin/api/dead"] {
        let response = admin.http.get(admin.url(path)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let post = admin
        .http
        .post(admin.url("/admin/api/dead/commit/retry"))
        .header("origin", &admin.base)
        .json(&serde_json::json!({ "all": true }))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), StatusCode::NOT_FOUND);
    // Not even from loopback: that is for dev mode only.
    assert_eq!(admin.http.get(admin.url("/healthz")).send().await.expect("healthz").status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_asks_for_basic_credentials_and_never_shows_secrets() {
    let admin = Admin::start(Some(PASSWORD), false).await;
    let anonymous = admin.http.get(admin.url("/admin")).send().await.expect("get");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    for (user, password) in [("admin", "wrong-password-0000"), ("root", PASSWORD), ("admin", "")] {
        let response = admin
            .http
            .get(admin.url("/admin/api/overview"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{user}:{password}");
        assert!(response.headers().contains_key("www-authenticate"));
    }

    let page = admin.get("/admin").send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.contains("hookbus admin"));
    let without_svg_namespace = html.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !without_svg_namespace.contains("https://") && !without_svg_namespace.contains("http://"),
        "no CDN, no external font"
    );
    for secret in [PASSWORD, support::SECRET, admin.settings.redis.url.expose()] {
        assert!(!html.contains(secret), "the page shows no setting");
    }

    let id = dead_letter(&*admin.backend, "commit", "refused by the remote").await;
    let overview: Value = admin.get("/admin/api/overview").send().await.expect("overview").json().await.expect("json");
    let queues: Vec<&str> =
        overview["queues"].as_array().expect("queues").iter().filter_map(|q| q["queue"].as_str()).collect();
    assert_eq!(queues, ["normalise", "reconcile", "commit", "notify"]);
    assert_eq!(overview["queues"][2]["depths"]["dead"], 1);
    assert_eq!(overview["queues"][2]["throughput"].as_array().map(Vec::len), Some(30));
    // This test's Redis keeps no append-only file: the page says so.
    let risks = overview["risks"].as_array().expect("risks");
    assert!(risks.len() == 1 && risks[0].as_str().is_some_and(|r| r.contains("appendonly yes")), "{risks:?}");
    let dead: Value = admin.get("/admin/api/dead").send().await.expect("dead").json().await.expect("json");
    let letter = &dead["queues"][2]["letters"][0];
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["dead_reason"], "refused by the remote");
    assert_eq!(letter["payload"]["note"], "hello", "decoded payload");
    assert_eq!(letter["payload"]["api_token"], "***", "secret-looking fields are masked");
    assert!(!dead.to_string().contains("t0ps3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_from_another_origin_or_without_the_token_are_refused() {
    let admin = Admin::start(Some(PASSWORD), false).await;
    let id = dead_letter(&*admin.backend, "notify", "subscriber answered 410").await;
    let csrf = admin.csrf().await;
    let retry = |origin: Option<&str>, referer: Option<&str>, token: Option<&str>| {
        let mut request = admin
            .http
            .post(admin.url("/admin/api/dead/notify/retry"))
            .basic_auth("admin", Some(PASSWORD))
            .json(&serde_json::json!({ "id": id }));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(referer) = referer {
            request = request.header("referer", referer);
        }
        if let Some(token) = token {
            request = request.header("x-hookbus-csrf", token);
        }
        request.send()
    };

    let other_port = format!("http://127.0.0.1:{}", admin.port + 1);
    let refused = [
        (Some("http://evil.example"), None, Some(csrf.as_str())),
        (Some(other_port.as_str()), None, Some(csrf.as_str())),
        (None, Some("http://evil.example/admin"), Some(csrf.as_str())),
        (None, None, Some(csrf.as_str())),
        (Some(admin.base.as_str()), None, None),
        (Some(admin.base.as_str()), None, Some("0000")),
    ];
    for (origin, referer, token) in refused {
        let response = retry(origin, referer, token).await.expect("post");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "origin {origin:?} referer {referer:?} token {token:?}");
        let body: Value = response.json().await.expect("json reason");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert_eq!(admin.dead_count("notify").await, 1, "the dead letter is still there");
    }

    let accepted = retry(Some(admin.base.as_str()), None, Some(csrf.as_str())).await.expect("post");
    assert_eq!(accepted.status(), StatusCode::OK);
    let body: Value = accepted.json().await.expect("json");
    assert_eq!(body["retried"], 1);
    assert_eq!(admin.dead_count("notify").await, 0);
    assert_eq!(admin.backend.depths("notify").await.expect("depths").pending, 1);

    // Same page, Referer instead of Origin (older browsers), then delete.
    dead_letter(&*admin.backend, "notify", "again").await;
    let deleted = admin
        .http
        .post(admin.url("/admin/api/dead/notify/delete"))
        .basic_auth("admin", Some(PASSWORD))
        .header("referer", admin.url("/admin"))
        .header("x-hookbus-csrf", &csrf)
        .json(&serde_json::json!({ "all": true }))
        .send()
        .await
        .expect("post");
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(admin.dead_count("notify").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_opens_admin_to_loopback_only() {
    let admin = Admin::start(None, true).await;
    let page = admin.http.get(admin.url("/admin")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK, "open from 127.0.0.1 without credentials");
    // A page on another host name (DNS rebinding) does not get in.
    let rebound = admin.http.get(admin.url("/admin")).header("host", "evil.example").send().await.expect("get");
    assert_eq!(rebound.status(), StatusCode::NOT_FOUND);
    // State changes still need the page's token and origin.
    let refused = admin
        .http
        .post(admin.url("/admin/api/dead/commit/retry"))
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({ "all": true }))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // With a password, dev mode asks for it like any gateway.
    let guarded = Admin::start(Some(PASSWORD), true).await;
    let anonymous = guarded.http.get(guarded.url("/admin")).send().await.expect("get");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_admin_show_every_worker_process_including_dead_ones() {
    let admin = Admin::start(Some(PASSWORD), false).await;
    let now = now_ms();
    let report = |process: &str, last_seen: i64, handled: u64| ProcessReport {
        process: process.into(),
        queue: "commit".into(),
        plugin: "commit".into(),
        started_at: now - 600_000,
        last_seen,
        interval_ms: 5_000,
        handled,
        retried: 2,
        dead: 1,
        latency_count: handled + 3,
        latency_sum_micros: 40_000,
        latency_max_micros: 30_000,
        latency_buckets: vec![0, 1, handled + 2, 0, 0, 0, 0, 0, 0],
        ..ProcessReport::default()
    };
    admin.backend.report_process(&report("commit.1", now, 7)).await.expect("report");
    admin.backend.report_process(&report("commit.2", now - 3_600_000, 4)).await.expect("report");

    let text = admin.http.get(admin.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for line in [
        r#"hookbus_worker_handled_total{dyno="commit.1",queue="commit"} 7"#,
        r#"hookbus_worker_handled_total{dyno="commit.2",queue="commit"} 4"#,
        r#"hookbus_worker_retried_total{dyno="commit.1",queue="commit"} 2"#,
        r#"hookbus_worker_dead_lettered_total{dyno="commit.2",queue="commit"} 1"#,
        r#"hookbus_worker_handler_seconds_bucket{dyno="commit.1",queue="commit",le="0.025"} 10"#,
        r#"hookbus_worker_handler_seconds_count{dyno="commit.1",queue="commit"} 10"#,
        r#"hookbus_worker_up{dyno="commit.1",queue="commit"} 1"#,
        r#"hookbus_worker_up{dyno="commit.2",queue="commit"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }

    let overview: Value = admin.get("/admin/api/overview").send().await.expect("overview").json().await.expect("json");
    let states: HashSet<(String, String)> = overview["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| (p["process"].as_str().unwrap_or("").to_string(), p["state"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(states, HashSet::from([("commit.1".into(), "alive".into()), ("commit.2".into(), "lost".into())]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_found_by_delivery_id() {
    let admin = Admin::start(Some(PASSWORD), false).await;
    let body = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let accepted = admin
        .http
        .post(admin.url("/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "issues")
        .header("x-github-delivery", "d-admin-search-1")
        .header("x-hub-signature-256", sign(support::SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let found: Value =
        admin.get("/admin/api/operations?q=d-admin-search-1").send().await.expect("search").json().await.expect("json");
    assert_eq!(found["matched"], "delivery", "{found}");
    assert!(found["delivery"]["trace_id"].as_str().is_some_and(|t| !t.is_empty()), "{found}");
    let nothing: Value = admin
        .get("/admin/api/operations?q=nobody-knows-this")
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert_eq!(nothing["matched"], "nothing");
}

/// A worker stage whose handler refuses everything until it is "fixed".
struct Mendable {
    broken: AtomicBool,
    handled: Mutex<Vec<String>>,
}

#[async_trait]
impl Plugin for Mendable {
    fn name(&self) -> &str {
        "mendable"
    }
    fn input(&self) -> &str {
        "notify"
    }
    async fn handle(&self, message: &Envelope, _out: &mut Outbox) -> Result<(), HandlerError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent("subscriber answered 410 Gone"));
        }
        self.handled.lock().expect("lock").push(message.id.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_operator_retries_a_dead_letter_and_sees_it_handled() {
    // Fails (never skips) with the install command when chromium is missing.
    let driver = ChromeDriver::start();
    let admin = Admin::start(Some(PASSWORD), false).await;

    // A real worker stage over the same Redis: it dead-letters the message.
    let plugin = Arc::new(Mendable { broken: AtomicBool::new(true), handled: Mutex::default() });
    let options = RunnerOptions::from_settings(&admin.settings.bus, "notify");
    let stop = Shutdown::new();
    let runner = tokio::spawn(Runner::new(admin.backend.clone(), plugin.clone(), options).run(stop.clone()));
    let message = Envelope::with_payload("test.note", &serde_json::json!({ "note": "retry me" })).expect("payload");
    let id = message.id.clone();
    admin.backend.push("notify", &[message]).await.expect("push");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while admin.dead_count("notify").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the message never went dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fix is deployed.
    plugin.broken.store(false, Ordering::SeqCst);

    // chromedriver is on loopback: plain HTTP, no TLS stack needed.
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(driver.capabilities());
    let browser = builder.connect(&driver.url()).await.expect("a headless chromium session");
    let checked = async {
        browser.goto(&format!("http://admin:{PASSWORD}@127.0.0.1:{}/admin", admin.port)).await?;
        let letter = format!(".letter[data-queue=\"notify\"][data-id=\"{id}\"]");
        let shown = browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(&letter)).await?;
        let text = shown.text().await?;
        assert!(text.contains("subscriber answered 410 Gone"), "the reason is shown: {text}");
        // Rendered with the same overview: this Redis keeps no append-only file.
        let risks = browser.find(Locator::Id("redis-risks")).await?.text().await?;
        assert!(risks.contains("can lose acknowledged messages") && risks.contains("appendonly yes"), "{risks}");
        shown.find(Locator::Css("button.retry")).await?.click().await?;
        // The page refreshes by itself: the dead letter disappears...
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Id("no-dead")).await?;
        let flash = browser.find(Locator::Id("dead-flash")).await?.text().await?;
        assert!(flash.contains("Retried 1"), "{flash}");
        // ...and the worker's row shows it handled.
        let row = "#process-rows tr[data-queue=\"notify\"]";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let cells = browser.find(Locator::Css(row)).await?.text().await.unwrap_or_default();
            if cells.contains("alive") && cells.split_whitespace().any(|c| c == "1") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the process row never showed one handled: {cells}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    if checked.is_err() {
        // What the page showed, to tell a refused fetch from a slow one.
        let status = match browser.find(Locator::Id("status")).await {
            Ok(status) => status.text().await.unwrap_or_default(),
            Err(err) => format!("no status element: {err}"),
        };
        let url = browser.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        let flash = match browser.find(Locator::Id("dead-flash")).await {
            Ok(flash) => flash.text().await.unwrap_or_default(),
            Err(err) => format!("no flash element: {err}"),
        };
        let listed = match browser.find(Locator::Id("dead-list")).await {
            Ok(list) => list.text().await.unwrap_or_default(),
            Err(err) => format!("no dead list: {err}"),
        };
        eprintln!("admin page at {url}: status {status:?}, dead letters {flash:?}: {listed:?}");
        eprintln!("notify queue: {:?}", admin.backend.depths("notify").await);
    }
    let _ = browser.close().await;
    checked.expect("the admin page in chromium");

    assert_eq!(*plugin.handled.lock().expect("lock"), vec![id.clone()], "handled once, after the retry");
    assert_eq!(admin.dead_count("notify").await, 0);
    stop.trigger();
    let report = runner.await.expect("runner task").expect("runner");
    assert_eq!((report.handled, report.dead), (1, 1));
}
