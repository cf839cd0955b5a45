//! The `hookbus` command as an operator and a new user run it: real
//! processes, a real redis-server, real HTTP.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use hookbus_bus::redis::RedisBackend;
use hookbus_bus::{Backend, Envelope};
use hookbus_testkit::{eventually, free_port, workspace_root, RedisServer};

const HOOKBUS: &str = env!("CARGO_BIN_EXE_hookbus");

fn hookbus(server: &RedisServer, args: &[&str]) -> Output {
    Command::new(HOOKBUS).args(args).env("REDIS_URL", server.url()).output().expect("run hookbus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(fut)
}

fn webhook_envelope(body: &str) -> Envelope {
    #[derive(serde::Serialize)]
    struct Webhook<'a> {
        event: &'a str,
        delivery: &'a str,
        received_at: i64,
        #[serde(with = "serde_bytes")]
        body: &'a [u8],
    }
    let payload = Webhook { event: "issues", delivery: "d-1", received_at: 1, body: body.as_bytes() };
    Envelope::with_payload("github.webhook", &payload).expect("payload")
}

#[test]
fn queues_prints_every_queue_with_its_depths() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    block_on(backend.push("commit", &[webhook_envelope("{}"), webhook_envelope("{}")])).expect("push");
    let out = hookbus(&server, &["queues"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let commit = text.lines().find(|l| l.starts_with("commit")).expect("a commit row");
    let columns: Vec<&str> = commit.split_whitespace().collect();
    assert_eq!(columns, vec!["commit", "2", "0", "0", "0", "0", "0"], "{text}");
    for queue in ["normalise", "reconcile", "notify"] {
        assert!(text.lines().any(|l| l.starts_with(queue)), "{queue} missing in\n{text}");
    }
    // This test server keeps no append-only file: said, on stderr.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("can lose acknowledged messages") && said.contains("appendonly yes"), "{said}");
}

#[test]
fn peek_decodes_envelopes_and_shows_utf8_bodies_as_text() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    block_on(backend.push("normalise", &[webhook_envelope(r#"{"action":"opened"}"#)])).expect("push");
    let out = hookbus(&server, &["peek", "normalise", "-n", "5"]);
    assert!(out.status.success(), "{out:?}");
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    assert_eq!(value["kind"], "github.webhook");
    assert_eq!(value["payload"]["body"], r#"{"action":"opened"}"#);
    assert_eq!(value["payload"]["event"], "issues");

    // An empty queue: nothing on stdout for a script to misread, and a
    // sentence on stderr for the person who asked.
    for (args, said) in [
        (&["peek", "reconcile"][..], "reconcile has no pending messages"),
        (&["dead", "list", "reconcile"][..], "reconcile has no dead letters"),
    ] {
        let out = hookbus(&server, args);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(said), "{args:?}: {out:?}");
    }
}

#[test]
fn dead_letters_are_listed_retried_and_purged() {
    let server = RedisServer::start();
    let mut redis = server.client();
    // Garbage as a foreign producer would push it: it dies on the first fetch.
    let _: () =
        redis::cmd("LPUSH").arg("hookbus:{notify}:pending").arg("not an envelope").query(&mut redis).expect("lpush");
    let backend = RedisBackend::connect(&server.url(), "hookbus", 2, false).expect("pool");
    let consumer = hookbus_bus::ConsumerId::new("notify");
    assert!(block_on(backend.fetch(&consumer, 1, 10)).expect("fetch").is_empty());

    let listed = hookbus(&server, &["dead", "list", "notify"]);
    assert!(listed.status.success());
    let letter: serde_json::Value = serde_json::from_str(&stdout(&listed)).expect("json");
    assert_eq!(letter["raw"], "not an envelope");
    assert!(letter["dead_reason"].as_str().unwrap_or("").starts_with("undecodable message"), "{letter}");

    // Raw bytes can never be handled, so retry leaves them; purge removes them.
    let retried = hookbus(&server, &["dead", "retry", "notify"]);
    assert!(stdout(&retried).starts_with("0 dead letter(s)"), "{}", stdout(&retried));
    // ... and says why, with what to do instead.
    assert!(stdout(&retried).contains("1 dead letter(s) of notify stay dead: they are not messages"), "{retried:?}");
    let id = letter["id"].as_str().expect("id").to_string();
    let unknown = hookbus(&server, &["dead", "retry", "notify", "--id", "no-such-letter"]);
    assert!(stdout(&unknown).contains("no dead letter of notify has the id no-such-letter"), "{unknown:?}");
    let purged = hookbus(&server, &["dead", "purge", "notify", "--id", &id]);
    assert!(stdout(&purged).starts_with("1 dead letter(s) of notify deleted"), "{}", stdout(&purged));
    assert_eq!(block_on(backend.depths("notify")).expect("depths").dead, 0);
}

/// GitHub's deliveries API for hook 1 of octo/repo, one page: `down` failed
/// with a 503, `ok` got through. Returns the API's URL and the attempt ids
/// whose redelivery was asked for.
fn fake_deliveries_api() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    use axum::routing::{get, post};
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = asked.clone();
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("now");
    let attempts = serde_json::json!([
        { "id": 12, "guid": "ok", "delivered_at": now, "status_code": 202, "event": "issues" },
        { "id": 11, "guid": "down", "delivered_at": now, "status_code": 503, "event": "issues" },
    ]);
    let app = axum::Router::new()
        .route("/repos/octo/repo/hooks/1/deliveries", get(move || async move { axum::Json(attempts) }))
        .route(
            "/repos/octo/repo/hooks/1/deliveries/{id}/attempts",
            post(move |axum::extract::Path(id): axum::extract::Path<u64>| async move {
                record.lock().expect("lock").push(id);
                axum::http::StatusCode::ACCEPTED
            }),
        );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("address"));
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        })
    });
    (api, asked)
}

#[test]
fn redeliver_lists_then_asks_github_again_for_failed_deliveries() {
    let server = RedisServer::start();
    let (api, asked) = fake_deliveries_api();
    let run = |more: &[&str]| {
        Command::new(HOOKBUS)
            .args(["redeliver", "repos/octo/repo/hooks/1"])
            .args(more)
            .env("REDIS_URL", server.url())
            .env("HOOKBUS_GITHUB__TOKEN", "test-token")
            .env("HOOKBUS_GITHUB__API_URL", &api)
            .output()
            .expect("run hookbus redeliver")
    };
    let looked = run(&["--dry-run"]);
    assert!(looked.status.success(), "{looked:?}");
    assert!(stdout(&looked).contains("would ask for down\n"), "{looked:?}");
    assert!(asked.lock().expect("lock").is_empty(), "a dry run asked GitHub");

    let done = run(&[]);
    assert!(done.status.success(), "{done:?}");
    assert!(stdout(&done).contains("asked for down\n"), "{done:?}");
    assert_eq!(*asked.lock().expect("lock"), vec![11], "the latest failed attempt of `down`, once");

    // The App's own webhook is asked about as the App: without its id, exit 2 naming it.
    let no_app = run(&["app/hook"]);
    assert_eq!(no_app.status.code(), Some(2), "{no_app:?}");
    assert!(String::from_utf8_lossy(&no_app.stderr).contains("HOOKBUS_GITHUB__APP_ID"), "{no_app:?}");

    let no_pages = run(&["--pages", "0"]);
    assert_eq!(no_pages.status.code(), Some(2), "{no_pages:?}");

    let malformed = run(&["repos/octo"]);
    assert_eq!(malformed.status.code(), Some(2), "{malformed:?}");
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("HOOKBUS_GITHUB__REDELIVER_HOOKS"), "{malformed:?}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `hookbus queues | head -1`, with head gone before the first line.
    let server = RedisServer::start();
    let mut child = Command::new(HOOKBUS)
        .arg("queues")
        .env("REDIS_URL", server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hookbus");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{out:?}");
}

#[test]
fn unreachable_redis_is_a_clear_error_and_exit_code_1() {
    let out = Command::new(HOOKBUS)
        .arg("queues")
        .env("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach Redis") && err.contains("REDIS_URL"), "{err}");
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let out = Command::new(HOOKBUS).arg("queues").env("HOOKBUS_BUS__PREFIX", "has space").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOOKBUS_BUS__PREFIX"));
}

/// `hookbus dev`, killed on drop.
struct Dev(Child);

impl Dev {
    /// `hookbus dev --port <port> <more>` in `dir`, with a secret of its own.
    fn start(dir: &std::path::Path, port: &str, more: &[&str]) -> Dev {
        Dev(Command::new(HOOKBUS)
            .args(["dev", "--port", port])
            .args(more)
            .current_dir(dir)
            .env_remove("HOOKBUS_GITHUB__WEBHOOK_SECRET")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start hookbus dev"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_mode_turns_a_sent_sample_into_a_commit_by_its_author_once_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().to_string();
    let mut dev = Dev::start(dir.path(), &port, &[]);
    let url = format!("http://127.0.0.1:{port}/webhooks/github");
    let sample = workspace_root().join("fixtures/github/issues/opened.json");
    let mut sent = None;
    // `send` finds the secret dev mode wrote to .hookbus/secret in the same directory.
    assert!(eventually(Duration::from_secs(20), || {
        let out = Command::new(HOOKBUS)
            .args(["send", &sample.to_string_lossy(), "--event", "issues", "--url", &url])
            .current_dir(dir.path())
            .env_remove("HOOKBUS_GITHUB__WEBHOOK_SECRET")
            .output()
            .expect("run send");
        let ok = out.status.success();
        sent = Some(out);
        ok
    }));
    let sent = sent.expect("send output");
    assert!(stdout(&sent).contains("202 Accepted"), "{}", stdout(&sent));

    // The webhook went through normalise, reconcile and commit-to-git: the
    // record is a commit in the local repository, authored by the sender.
    let records = dir.path().join(".hookbus/records.git");
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("--git-dir").arg(&records).args(args).output().expect("git");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        eventually(Duration::from_secs(30), || !git(&["log", "--format=%H"]).trim().is_empty()),
        "no commit reached {}",
        records.display()
    );
    let log = git(&["log", "-1", "--format=%an <%ae>%n%s%n%b", "main"]);
    assert!(log.starts_with("Codertocat <21031067+Codertocat@users.noreply.github.com>"), "{log}");
    assert!(log.contains("Hookbus-Operation: ") && log.contains("Hookbus-Delivery: "), "{log}");
    let file = git(&["show", "main:repos/codertocat/hello-world/issues/1.json"]);
    let record: serde_json::Value = serde_json::from_str(&file).expect("the record file is JSON");
    assert_eq!(record["title"], "Spelling error in the README file");
    assert!(file.ends_with("}\n"), "pretty JSON with a trailing newline");

    // A client's change: accepted, reconciled, committed as the client's
    // actor, and its state readable through the operations endpoint.
    let token = std::fs::read_to_string(dir.path().join(".hookbus/api-token")).expect("dev API token");
    let base = format!("http://127.0.0.1:{port}");
    let change = serde_json::json!({
        "repository": "codertocat/hello-world", "resource": "issue", "action": "update", "number": 1,
        "fields": { "title": "Renamed by a client" },
        "actor": { "login": "alice", "name": "Alice", "email": "alice@example.com" },
    });
    let client = reqwest::blocking::Client::new();
    let accepted: serde_json::Value = client
        .post(format!("{base}/api/v1/changes"))
        .bearer_auth(token.trim())
        .json(&change)
        .send()
        .and_then(|r| r.json())
        .expect("change accepted");
    let operation = accepted["operation"].as_str().expect("operation id").to_string();
    let mut last = serde_json::Value::Null;
    let completed = eventually(Duration::from_secs(30), || {
        last = client
            .get(format!("{base}/api/v1/operations/{operation}"))
            .bearer_auth(token.trim())
            .send()
            .and_then(|r| r.json())
            .unwrap_or(serde_json::Value::Null);
        last["state"] == "completed"
    });
    assert!(completed, "operation never completed: {last}");
    let states: Vec<&str> =
        last["history"].as_array().expect("history").iter().filter_map(|t| t["state"].as_str()).collect();
    assert_eq!(states, vec!["queued", "processing", "completed"], "{last}");
    let log = git(&["log", "-1", "--format=%an <%ae>"]);
    assert_eq!(log.trim(), "Alice <alice@example.com>");
    let file = git(&["show", "main:repos/codertocat/hello-world/issues/1.json"]);
    assert!(file.contains("Renamed by a client"), "{file}");

    // The same delivery again is recognised and not stored twice.
    let text = stdout(&sent);
    let delivery = text.split("delivery=").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("delivery id");
    // Without --url, `send` posts to the dev mode running in its directory.
    let again = Command::new(HOOKBUS)
        .args(["send", &sample.to_string_lossy(), "--event", "issues", "--delivery", delivery])
        .current_dir(dir.path())
        .env_remove("HOOKBUS_GITHUB__WEBHOOK_SECRET")
        .env_remove("PORT")
        .env_remove("HOOKBUS_GATEWAY__PORT")
        .output()
        .expect("run send again");
    assert!(stdout(&again).contains(r#""duplicate":true"#), "{again:?}");

    // Its queues are in memory: the operator commands say where to look
    // instead of showing some other Redis's queues.
    let queues = Command::new(HOOKBUS)
        .arg("queues")
        .current_dir(dir.path())
        .env_remove("REDIS_URL")
        .env_remove("HOOKBUS_REDIS__URL")
        .output()
        .expect("run queues");
    assert_eq!(queues.status.code(), Some(1), "{queues:?}");
    let said = String::from_utf8_lossy(&queues.stderr);
    assert!(said.contains("keeps its queues in memory") && said.contains(&format!("{base}/admin")), "{said}");

    let status = Command::new("kill").args(["-INT", &dev.0.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let mut exit = None;
    assert!(eventually(Duration::from_secs(20), || {
        exit = dev.0.try_wait().expect("try_wait");
        exit.is_some()
    }));
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
    assert!(!dir.path().join(".hookbus/dev.json").exists(), "a stopped dev mode leaves its state file");
}

#[test]
fn commands_below_a_running_dev_mode_use_its_redis_gateway_and_secret() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().to_string();
    let _dev = Dev::start(dir.path(), &port, &["--redis", &server.url()]);
    // Run from two levels down, as from a project's payloads folder: found
    // as git finds `.git`.
    let below = dir.path().join("payloads/issues");
    std::fs::create_dir_all(&below).expect("subdirectory");
    let in_dir = |args: &[&str]| {
        Command::new(HOOKBUS)
            .args(args)
            .current_dir(&below)
            .env_remove("REDIS_URL")
            .env_remove("HOOKBUS_REDIS__URL")
            .env_remove("PORT")
            .env_remove("HOOKBUS_GATEWAY__PORT")
            .env_remove("HOOKBUS_GITHUB__WEBHOOK_SECRET")
            .output()
            .expect("run hookbus")
    };
    let sample = workspace_root().join("fixtures/github/issues/opened.json");
    let sample = sample.to_string_lossy();
    assert!(eventually(Duration::from_secs(20), || in_dir(&["send", &sample, "--event", "issues"]).status.success()));
    // Its four stages consume from this Redis: `queues` shows them.
    let mut text = String::new();
    let seen = eventually(Duration::from_secs(10), || {
        text = stdout(&in_dir(&["queues"]));
        let row = text.lines().find(|l| l.starts_with("normalise")).unwrap_or_default();
        row.split_whitespace().last() == Some("1")
    });
    assert!(seen, "no normalise consumer in\n{text}");
    let mut trail = String::new();
    let completed = eventually(Duration::from_secs(20), || {
        trail = stdout(&in_dir(&["ops", "github:codertocat/hello-world:issue:1"]));
        trail.contains("completed")
    });
    assert!(completed, "{trail}");
}

#[test]
fn ops_prints_a_resource_history_with_its_audit_trail() {
    use hookbus_bus::{Outbox, Plugin};
    let server = RedisServer::start();
    let key = "github:octo/repo:issue:7";
    let operation = |id: &str, updated_at: i64| {
        let payload = serde_json::json!({
            "operation": id, "direction": "inbound", "key": key, "repository": "octo/repo",
            "repository_enabled": true, "kind": "issue", "action": "edited", "effect": "upsert",
            "updated_at": updated_at, "content_hash": format!("h-{id}"), "source": "issues",
            "number": 7, "record": { "title": id },
        });
        Envelope::with_payload("sync.operation", &payload).expect("payload").keyed(key)
    };
    block_on(async {
        let store =
            hookbus_reconcile::store::RedisStore::connect(&server.url(), false, "hookbus", Duration::from_secs(600))
                .expect("store");
        let reconcile = hookbus_reconcile::Reconcile::new(
            std::sync::Arc::new(store),
            std::sync::Arc::new(hookbus_reconcile::tiebreak::LaterArrivalWins),
        );
        for message in [operation("new", 200), operation("old", 100)] {
            reconcile.handle(&message, &mut Outbox::new("t")).await.expect("handled");
        }
    });
    let out = hookbus(&server, &["ops", key]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("old  dropped") && text.contains("dropped_for=new"), "{text}");
    assert!(text.contains("new  processing"), "{text}");
    assert!(text.contains("released to commit"), "audit trail lines: {text}");
    // Times as an operator reads them: updated_at 200 ms after the epoch.
    assert!(text.contains("updated_at=1970-01-01T00:00:00.200Z"), "{text}");
    let trail = text.lines().find(|line| line.contains("released to commit")).unwrap_or_default();
    let at = trail.split_whitespace().next().unwrap_or_default();
    let parsed = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339);
    assert!(parsed.is_ok_and(|at| at.year() >= 2026), "audit trail times: {text}");
}
