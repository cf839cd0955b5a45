//! End-to-end support for hookbus: the real binaries run as separate
//! processes against a real `redis-server`, a bare git remote and a local
//! subscriber, as an operator would run them.
//!
//! - [`build_binaries`]: the workspace's `hookbus-*` binaries, built once in
//!   the caller's profile (an integration test or bench only gets
//!   `CARGO_BIN_EXE_*` for its own package).
//! - [`Deployment`]: what every process of a run shares (binaries, Redis, the
//!   remote, ports, logs) and [`Deployment::spawn`] to start one of them.
//! - [`Proc`]: one running binary — signals, exit, peak memory.
//! - [`Webhook`], [`signature`], [`send`]: webhooks as GitHub sends them,
//!   re-sent until the gateway acknowledges them as GitHub's redelivery would.
//! - [`subscriber`]: the local subscriber notify delivers to, counting what
//!   it acknowledged by delivery id.
//!
//! Users: `tests/chaos.rs` (the chaos test), `benches/latency.rs`
//! (webhook-to-pushed-commit latency) and `src/bin/perf-report.rs` (the one
//! command behind docs/performance.md).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use hookbus_testkit::workspace_root;
use sha2::Sha256;

/// The worker binaries, in pipeline order.
pub const WORKERS: [&str; 4] = ["hookbus-normalise", "hookbus-reconcile", "hookbus-commit", "hookbus-notify"];
/// Their input queues, in the same order.
pub const QUEUES: [&str; 4] = ["normalise", "reconcile", "commit", "notify"];
/// The webhook secret every spawned gateway is given.
pub const SECRET: &str = "e2e-webhook-secret";
/// The name of the local subscriber in `HOOKBUS_NOTIFY__SUBSCRIBERS`.
pub const SUBSCRIBER: &str = "e2e";

/// `target/<profile>/`, where cargo puts the workspace's binaries.
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own executable path");
    // target/<profile>/deps/<test>-<hash> for tests and benches.
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/").to_path_buf()
}

/// Builds every binary of the workspace once per process, in the caller's
/// profile (`dev` or `release`, told by where the caller runs from) and
/// target directory, and returns where they are.
pub fn build_binaries() -> PathBuf {
    let dir = binaries_dir();
    let profile = if dir.file_name().is_some_and(|name| name == "release") { "release" } else { "dev" };
    build_binaries_in(profile)
}

/// [`build_binaries`] for a benchmark: the `bench` profile `cargo bench`
/// builds the benchmark itself with, so the workspace is not compiled a
/// second time under `release`.
pub fn build_bench_binaries() -> PathBuf {
    build_binaries_in("bench")
}

fn build_binaries_in(profile: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let dir = binaries_dir();
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--quiet", "--profile", profile]).current_dir(workspace_root());
        // Same target directory as the caller, wherever CARGO_TARGET_DIR put it.
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins --profile {profile} failed");
    });
    dir
}

/// One running binary; SIGKILLed if it is dropped while it runs.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (a name such as `TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {} ({})", self.child.id(), self.name);
    }

    /// Waits for the exit; SIGKILLs after `within`. Returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory so far (`VmHWM`), in KiB; `None` once it exited.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        hookbus_testkit::bench::peak_rss_kib(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every process of a run shares: where the binaries, Redis, the
/// remote and the logs are, and the settings each process starts with.
pub struct Deployment {
    pub bin: PathBuf,
    pub redis_url: String,
    pub remote: PathBuf,
    /// Logs (`<binary>.<slot>.<n>.log`) and the commit workers' workdirs.
    pub scratch: PathBuf,
    pub gateway_port: u16,
    /// Where notify delivers `record.synced`; `None` means no subscriber.
    pub subscriber_port: Option<u16>,
    /// Settings on top of [`Deployment::defaults`]; a later entry wins.
    pub env: Vec<(String, String)>,
    started: usize,
}

impl Deployment {
    pub fn new(bin: PathBuf, redis_url: String, remote: PathBuf, scratch: PathBuf, gateway_port: u16) -> Self {
        Deployment {
            bin,
            redis_url,
            remote,
            scratch,
            gateway_port,
            subscriber_port: None,
            env: Self::defaults(),
            started: 0,
        }
    }

    /// Settings tuned for tests: fast heartbeats, short backoff and grace.
    pub fn defaults() -> Vec<(String, String)> {
        [
            ("HOOKBUS_GATEWAY__REDIS_TIMEOUT_MS", "500"),
            ("HOOKBUS_BUS__HEARTBEAT_TIMEOUT_MS", "1000"),
            ("HOOKBUS_BUS__GRACE_PERIOD_MS", "2000"),
            ("HOOKBUS_BUS__POLL_INTERVAL_MS", "10"),
            ("HOOKBUS_BUS__BACKOFF_BASE_MS", "50"),
            ("HOOKBUS_BUS__BACKOFF_MAX_MS", "2000"),
            ("HOOKBUS_BUS__CONCURRENCY", "8"),
            ("HOOKBUS_BUS__BATCH_SIZE", "8"),
            ("HOOKBUS_REDIS__POOL_SIZE", "8"),
            ("HOOKBUS_GIT__BRANCH", "main"),
            ("HOOKBUS_GIT__PUSH_WINDOW_MS", "20"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Sets (or overrides) one setting of every process started from now on.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.env.push((name.to_string(), value.into()));
    }

    /// Starts `name`; `slot` picks the git workdir of a commit worker (a
    /// replacement reuses its predecessor's clone, as a restarted dyno would).
    /// Its stderr goes to a log file in `scratch`.
    pub fn spawn(&mut self, name: &'static str, slot: usize) -> Proc {
        self.started += 1;
        let log = self.scratch.join(format!("{name}.{slot}.{}.log", self.started));
        let log = File::create(&log).expect("log file");
        let subscribers = match self.subscriber_port {
            Some(port) => serde_json::json!([{
                "name": SUBSCRIBER,
                "url": format!("http://127.0.0.1:{port}/hook"),
                "secret": "subscriber-secret",
                "timeout_ms": 5000,
            }]),
            None => serde_json::json!([]),
        };
        let mut cmd = Command::new(self.bin.join(name));
        cmd.env("REDIS_URL", &self.redis_url)
            .env("PORT", self.gateway_port.to_string())
            .env("HOOKBUS_GITHUB__WEBHOOK_SECRET", SECRET)
            .env("HOOKBUS_GIT__REMOTE", &self.remote)
            .env("HOOKBUS_GIT__WORKDIR", self.scratch.join(format!("commit-workdir-{slot}")))
            .env("HOOKBUS_NOTIFY__SUBSCRIBERS", subscribers.to_string());
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap_or_else(|err| panic!("start {name}: {err}"));
        Proc { name, child }
    }

    /// Every process log so far, each under its file name: what to print
    /// when a run fails.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.scratch)
            .map(|dir| {
                dir.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|path| format!("== {} ==\n{}", path.display(), std::fs::read_to_string(path).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `http://127.0.0.1:<port>/webhooks/github`.
    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/github", self.gateway_port)
    }

    /// Waits until the gateway accepts connections.
    pub fn await_gateway(&self, within: Duration) -> bool {
        hookbus_testkit::eventually(within, || std::net::TcpStream::connect(("127.0.0.1", self.gateway_port)).is_ok())
    }
}

/// A new bare repository at `path`, the remote of the commit workers.
pub fn bare_remote(path: &Path) {
    let init = Command::new("git").args(["init", "--bare", "--quiet"]).arg(path).status().expect("git init");
    assert!(init.success(), "git init --bare {}", path.display());
}

/// Runs git against a bare repository.
pub fn git(remote: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git").arg("--git-dir").arg(remote).args(args).output().expect("run git")
}

/// The real payload every generated `issues` webhook starts from.
pub fn issue_template() -> serde_json::Value {
    let path = workspace_root().join("fixtures/github/issues/edited.json");
    serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("fixture JSON")
}

/// One webhook as GitHub would send it.
#[derive(Clone)]
pub struct Webhook {
    pub event: &'static str,
    pub delivery: String,
    pub body: Vec<u8>,
}

impl Webhook {
    /// An `issues.edited` webhook of issue `number` with `title` at
    /// `updated_at` (RFC 3339), built from [`issue_template`].
    pub fn issue_edited(template: &serde_json::Value, number: u64, title: &str, updated_at: &str) -> Webhook {
        let mut payload = template.clone();
        payload["action"] = "edited".into();
        payload["issue"]["number"] = number.into();
        payload["issue"]["title"] = title.into();
        payload["issue"]["updated_at"] = updated_at.into();
        payload["issue"]["html_url"] = format!("https://github.com/Codertocat/Hello-World/issues/{number}").into();
        Webhook {
            event: "issues",
            delivery: uuid::Uuid::new_v4().to_string(),
            body: serde_json::to_vec(&payload).expect("json"),
        }
    }
}

/// `X-Hub-Signature-256` of `body` under [`SECRET`].
pub fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs until the gateway answers 202, as GitHub's redelivery would: 503
/// and refused connections are what a Redis restart or a restarting gateway
/// look like from outside; each retry is counted in `retried`. Any other
/// answer is a failure of the test.
pub async fn send(client: &reqwest::Client, url: &str, hook: &Webhook, retried: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", hook.event)
            .header("X-GitHub-Delivery", &hook.delivery)
            .header("X-Hub-Signature-256", signature(&hook.body))
            .body(hook.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => return,
            Ok(resp) if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => "503".to_string(),
            Ok(resp) => panic!(
                "webhook {} answered {}: {}",
                hook.delivery,
                resp.status(),
                resp.text().await.unwrap_or_default()
            ),
            // Refused, reset or cut short (a gateway killed mid-request):
            // whether it was stored is unknown, so re-send; the gateway
            // deduplicates on the delivery id.
            Err(err) => err.to_string(),
        };
        assert!(Instant::now() < deadline, "webhook {} never got a 202 within 60 s: {failure}", hook.delivery);
        retried.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds since the epoch to RFC 3339 (UTC, whole seconds).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// What the local subscriber acknowledged: `X-Hookbus-Delivery` →
/// (operation, times answered 200).
pub type Received = Arc<Mutex<HashMap<String, (String, usize)>>>;

/// Serves notify's subscriber at `http://127.0.0.1:<port>/hook` until the
/// test ends: every `record.synced` event is counted in `received` by its
/// delivery id and answered 200; anything else is a 400.
pub async fn subscriber(port: u16, received: Received) {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                if event["type"] != "record.synced" {
                    return axum::http::StatusCode::BAD_REQUEST;
                }
                let delivery =
                    headers.get("x-hookbus-delivery").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let operation = event["operation"].as_str().unwrap_or_default().to_string();
                received.lock().expect("lock").entry(delivery).or_insert((operation, 0)).1 += 1;
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind subscriber");
    axum::serve(listener, app).await.expect("subscriber server");
}
