//! Reconcile as a plugin: on the bus, with a commit stage answering, over
//! memory and over a real redis-server, and with a fake GitHub API for ties.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::redis::RedisBackend;
use hookbus_bus::{Backend, Envelope, HandlerError, Outbox, Plugin, Runner, RunnerOptions, Shutdown};
use hookbus_config::BusSettings;
use hookbus_reconcile::book::{OperationRecord, OperationState};
use hookbus_reconcile::store::{MemoryStore, OperationStore, RedisStore};
use hookbus_reconcile::tiebreak::{GitHubTieBreaker, LaterArrivalWins, TieBreaker};
use hookbus_reconcile::wire::{Outcome, OutcomeKind, SyncOperation};
use hookbus_reconcile::Reconcile;
use hookbus_testkit::{free_port, RedisServer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn key(resource: u32) -> String {
    format!("github:octo/repo:issue:{resource}")
}

fn operation(resource: u32, id: &str, updated_at: i64, title: &str) -> Envelope {
    let payload = serde_json::json!({
        "operation": id,
        "direction": "inbound",
        "key": key(resource),
        "repository": "octo/repo",
        "repository_enabled": true,
        "kind": "issue",
        "action": "edited",
        "effect": "upsert",
        "updated_at": updated_at,
        "updated_at_source": "resource",
        "actor": { "login": "octocat", "id": 1, "name": null, "email": null },
        "delivery": format!("d-{id}"),
        "source": "issues",
        "number": resource,
        "id": null,
        "content_hash": format!("hash-{title}"),
        "record": { "number": resource, "title": title, "body": "b", "state": "open" },
        "changes": null,
        "received_at": 1,
    });
    Envelope::with_payload("sync.operation", &payload).expect("payload").keyed(key(resource))
}

fn outcome(resource: u32, id: &str) -> Envelope {
    let outcome = Outcome {
        operation: id.into(),
        key: key(resource),
        outcome: OutcomeKind::Completed,
        commit: Some(format!("sha-{id}")),
        path: None,
        content_hash: None,
        reason: None,
    };
    Envelope::with_payload("sync.outcome", &outcome).expect("payload").keyed(key(resource))
}

/// Commit's outcome for an operation whose message went dead.
fn errored(resource: u32, id: &str, reason: &str) -> Envelope {
    let outcome = Outcome {
        operation: id.into(),
        key: key(resource),
        outcome: OutcomeKind::Errored,
        commit: None,
        path: None,
        content_hash: None,
        reason: Some(reason.into()),
    };
    Envelope::with_payload("sync.outcome", &outcome).expect("payload").keyed(key(resource))
}

fn plugin(store: Arc<dyn OperationStore>) -> Reconcile {
    Reconcile::new(store, Arc::new(LaterArrivalWins))
}

/// Handles one message as the runner would; returns what it emitted.
async fn handle(reconcile: &Reconcile, message: Envelope) -> Vec<(String, Envelope)> {
    let mut out = Outbox::new(&message.trace_id);
    reconcile.handle(&message, &mut out).await.expect("handled");
    out.into_messages()
}

fn released(emitted: &[(String, Envelope)]) -> Vec<String> {
    emitted
        .iter()
        .map(|(queue, e)| {
            assert_eq!(queue, "commit");
            assert_eq!(e.kind, "sync.apply");
            e.payload_as::<SyncOperation>().expect("operation").operation
        })
        .collect()
}

async fn state(store: &dyn OperationStore, id: &str) -> OperationState {
    store.operation(id).await.expect("store").map(|r| r.state).expect("recorded")
}

#[tokio::test]
async fn two_resources_each_release_their_next_operation_independently() {
    let store: Arc<dyn OperationStore> = Arc::new(MemoryStore::default());
    let reconcile = plugin(store.clone());
    assert_eq!(released(&handle(&reconcile, operation(1, "a1", 100, "a1")).await), vec!["a1"]);
    assert_eq!(released(&handle(&reconcile, operation(2, "b1", 100, "b1")).await), vec!["b1"]);
    assert!(released(&handle(&reconcile, operation(1, "a2", 200, "a2")).await).is_empty());
    assert!(released(&handle(&reconcile, operation(2, "b2", 200, "b2")).await).is_empty());
    for (id, want) in [("a1", "processing"), ("a2", "queued"), ("b1", "processing"), ("b2", "queued")] {
        assert_eq!(state(&*store, id).await.as_str(), want, "{id}");
    }
    // a1 completes: a2 is released while b1 is still processing.
    assert_eq!(released(&handle(&reconcile, outcome(1, "a1")).await), vec!["a2"]);
    assert_eq!(state(&*store, "a1").await, OperationState::Completed);
    assert_eq!(state(&*store, "b1").await, OperationState::Processing);
    assert_eq!(state(&*store, "b2").await, OperationState::Queued);
    // b1 completes: b2 is released.
    assert_eq!(released(&handle(&reconcile, outcome(2, "b1")).await), vec!["b2"]);
    assert_eq!(released(&handle(&reconcile, outcome(1, "a2")).await), Vec::<String>::new());
    let history: Vec<String> = store
        .operations(&key(1))
        .await
        .expect("list")
        .iter()
        .map(|r| format!("{}:{}", r.id, r.state.as_str()))
        .collect();
    assert_eq!(history, vec!["a2:completed", "a1:completed"]);
}

#[tokio::test]
async fn an_outcome_for_a_dead_commit_ends_the_operation_errored_with_its_reason() {
    let store: Arc<dyn OperationStore> = Arc::new(MemoryStore::default());
    let reconcile = plugin(store.clone());
    handle(&reconcile, operation(1, "a1", 100, "a1")).await;
    handle(&reconcile, errored(1, "a1", "gave up after 8 attempts: remote busy")).await;
    let record = store.operation("a1").await.expect("store").expect("a1");
    assert_eq!(record.state, OperationState::Errored);
    assert_eq!(record.reason.as_deref(), Some("gave up after 8 attempts: remote busy"));
}

#[tokio::test]
async fn an_errored_operation_whose_dead_letter_was_retried_is_recorded_completed_and_older_ones_drop_for_it() {
    let redis = RedisServer::start();
    let stores: [Arc<dyn OperationStore>; 2] = [
        Arc::new(MemoryStore::default()),
        Arc::new(RedisStore::connect(&redis.url(), false, "hookbus", Duration::from_secs(3_600)).expect("redis store")),
    ];
    for store in stores {
        let reconcile = plugin(store.clone());
        handle(&reconcile, operation(1, "a1", 100, "a1")).await;
        handle(&reconcile, errored(1, "a1", "gave up after 8 attempts: remote down")).await;
        assert_eq!(state(&*store, "a1").await, OperationState::Errored);

        // The remote is back; an operator retries commit's dead letter and
        // it goes through.
        assert!(released(&handle(&reconcile, outcome(1, "a1")).await).is_empty());
        let record = store.operation("a1").await.expect("store").expect("a1");
        assert_eq!(record.state, OperationState::Completed);
        assert_eq!(record.commit.as_deref(), Some("sha-a1"));
        let last = record.history.last().expect("history");
        assert!(last.note.contains("dead letter was retried") && last.note.contains("sha-a1"), "{}", last.note);
        // An older update arriving now is dropped for it.
        handle(&reconcile, operation(1, "a0", 50, "a0")).await;
        let older = store.operation("a0").await.expect("store").expect("a0");
        assert_eq!((older.state, older.dropped_for.as_deref()), (OperationState::Dropped, Some("a1")));
        // The same outcome again changes nothing more.
        handle(&reconcile, outcome(1, "a1")).await;
        let again = store.operation("a1").await.expect("store").expect("a1");
        assert_eq!(again.history.len(), record.history.len());
    }
}

#[tokio::test]
async fn a_message_of_another_kind_is_a_dead_letter_naming_it() {
    let reconcile = plugin(Arc::new(MemoryStore::default()));
    let odd = Envelope::with_payload("github.webhook", &serde_json::json!({})).expect("payload");
    let err = reconcile.handle(&odd, &mut Outbox::new("t")).await.expect_err("refused");
    assert!(matches!(err, HandlerError::Permanent(ref reason) if reason.contains("github.webhook")), "{err}");
}

/// A fake GitHub API answering one issue with the given title.
async fn fake_github(title: &'static str) -> String {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/repos/octo/repo/issues/1",
        get(move || async move {
            axum::Json(serde_json::json!({ "number": 1, "title": title, "body": "b", "state": "open" }))
        }),
    );
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_same_second_tie_is_settled_by_what_github_says_now() {
    for (github_has, winner, loser_state) in
        [("second", "t2", OperationState::Queued), ("first", "t1", OperationState::Dropped)]
    {
        let ties: Arc<dyn TieBreaker> = Arc::new(
            GitHubTieBreaker::new(
                &fake_github(github_has).await,
                &hookbus_github::Credentials::Token("test-token".into()),
            )
            .expect("client"),
        );
        let store: Arc<dyn OperationStore> = Arc::new(MemoryStore::default());
        let reconcile = Reconcile::new(store.clone(), ties);
        handle(&reconcile, operation(1, "t1", 1_000, "first")).await;
        // Same second, different content.
        handle(&reconcile, operation(1, "t2", 1_000, "second")).await;
        let t2 = store.operation("t2").await.expect("store").expect("t2");
        assert_eq!(t2.state, loser_state, "GitHub has {github_has}: {winner} wins");
        if loser_state == OperationState::Dropped {
            assert_eq!(t2.dropped_for.as_deref(), Some("t1"));
        }
    }
}

/// The commit stage, played: applies one operation per resource at a time
/// (and says so if it ever sees two), remembers the newest applied, answers
/// with an outcome.
#[derive(Default)]
struct FakeCommit {
    running: Mutex<HashSet<String>>,
    violations: Mutex<Vec<String>>,
    applied: Mutex<HashMap<String, (i64, String)>>,
}

#[async_trait]
impl Plugin for FakeCommit {
    fn name(&self) -> &str {
        "fake-commit"
    }
    fn input(&self) -> &str {
        "commit"
    }
    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let op: SyncOperation = message.payload_as()?;
        if !self.running.lock().expect("lock").insert(op.key.clone()) {
            self.violations.lock().expect("lock").push(format!("{} twice at once", op.key));
        }
        let pause = rand::rng().random_range(0..3);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        self.applied.lock().expect("lock").insert(op.key.clone(), (op.updated_at, op.operation.clone()));
        self.running.lock().expect("lock").remove(&op.key);
        let outcome = Outcome {
            operation: op.operation,
            key: op.key.clone(),
            outcome: OutcomeKind::Completed,
            commit: None,
            path: None,
            content_hash: None,
            reason: None,
        };
        out.emit("reconcile", Envelope::with_payload("sync.outcome", &outcome)?.keyed(op.key));
        Ok(())
    }
}

fn options(queue: &str, concurrency: usize) -> RunnerOptions {
    let bus = BusSettings { concurrency, batch_size: 16, poll_interval_ms: 5, ..BusSettings::default() };
    RunnerOptions::from_settings(&bus, queue)
}

/// A `hookbus-reconcile` process, killed if a failing test leaves it running.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Random arrival orders, duplicates and delays of N updates to M
/// resources, through two `hookbus-reconcile` processes with three handlers
/// each, over one Redis; commit is played in this process.
#[test]
fn newest_update_of_every_resource_is_applied_whatever_the_interleaving_over_redis() {
    let server = RedisServer::start();
    let (resources, updates) = (8u32, 6i64);
    for seed in [7u64, 42] {
        let prefix = format!("p{seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut messages = Vec::new();
        for r in 0..resources {
            for u in 0..updates {
                let id = format!("s{seed}-r{r}-u{u}");
                messages.push(operation(r, &id, 1_000 + u * 1_000, &id));
                if rng.random_bool(0.3) {
                    messages.push(operation(r, &id, 1_000 + u * 1_000, &id)); // redelivered webhook
                }
            }
        }
        messages.shuffle(&mut rng);

        let url = server.url();
        let mut processes: Vec<Process> = (0..2)
            .map(|_| {
                Process(
                    std::process::Command::new(env!("CARGO_BIN_EXE_hookbus-reconcile"))
                        .env("REDIS_URL", &url)
                        .env("HOOKBUS_BUS__PREFIX", &prefix)
                        .env("HOOKBUS_BUS__CONCURRENCY", "3")
                        .env("HOOKBUS_BUS__BATCH_SIZE", "4")
                        .env("HOOKBUS_BUS__POLL_INTERVAL_MS", "5")
                        .env("RUST_LOG", "warn")
                        .spawn()
                        .expect("start hookbus-reconcile"),
                )
            })
            .collect();
        let fake = Arc::new(FakeCommit::default());
        let stop = Shutdown::new();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let store = RedisStore::connect(&url, false, &prefix, Duration::from_secs(3_600)).expect("store");
        rt.block_on(async {
            let backend: Arc<dyn Backend> = Arc::new(RedisBackend::connect(&url, &prefix, 4, false).expect("pool"));
            let commit =
                tokio::spawn(Runner::new(backend.clone(), fake.clone(), options("commit", 4)).run(stop.clone()));
            for chunk in messages.chunks(5) {
                backend.push("reconcile", chunk).await.expect("push");
                let pause = rand::rng().random_range(0..4);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            // Done when every operation of every resource is final.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let mut open = 0;
                let mut seen = 0;
                for r in 0..resources {
                    let records: Vec<OperationRecord> = store.operations(&key(r)).await.expect("list");
                    seen += records.len();
                    open += records.iter().filter(|rec| !rec.state.is_final()).count();
                }
                if open == 0 && seen == (resources as usize) * (updates as usize) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "not settled: {open} open, {seen} recorded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.trigger();
            let _ = commit.await;
            // Both processes took part.
            let depths = backend.depths("reconcile").await.expect("depths");
            assert_eq!(depths.consumers, 2, "two reconcile processes consuming");
        });
        for p in &processes {
            let _ = std::process::Command::new("kill").arg(p.0.id().to_string()).status();
        }
        for p in &mut processes {
            let status = p.0.wait().expect("wait");
            assert!(status.success(), "hookbus-reconcile exits 0 on SIGTERM: {status}");
        }
        let violations = fake.violations.lock().expect("lock").clone();
        assert!(violations.is_empty(), "seed {seed}: {violations:?}");
        let applied = fake.applied.lock().expect("lock").clone();
        for r in 0..resources {
            let newest = 1_000 + (updates - 1) * 1_000;
            assert_eq!(
                applied.get(&key(r)).map(|a| a.0),
                Some(newest),
                "seed {seed}: resource {r} ended on an older update"
            );
        }
    }
}

#[tokio::test]
async fn memory_and_redis_stores_keep_the_same_records() {
    let server = RedisServer::start();
    let stores: Vec<Arc<dyn OperationStore>> = vec![
        Arc::new(MemoryStore::default()),
        Arc::new(RedisStore::connect(&server.url(), false, "hookbus", Duration::from_secs(600)).expect("store")),
    ];
    let mut seen = Vec::new();
    for store in stores {
        let reconcile = plugin(store.clone());
        handle(&reconcile, operation(1, "m1", 100, "one")).await;
        handle(&reconcile, operation(1, "m2", 50, "old")).await;
        let states: Vec<(String, &str)> =
            store.operations(&key(1)).await.expect("list").iter().map(|r| (r.id.clone(), r.state.as_str())).collect();
        let mut states = states;
        states.sort();
        seen.push(states);
        // Found by the delivery that caused it too (the admin page's search).
        let by_delivery: Vec<String> =
            store.operations_of_delivery("d-m2").await.expect("by delivery").iter().map(|r| r.id.clone()).collect();
        assert_eq!(by_delivery, ["m2"]);
        assert!(store.operations_of_delivery("d-unknown").await.expect("none").is_empty());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], vec![("m1".to_string(), "processing"), ("m2".to_string(), "dropped")]);
}

#[tokio::test]
async fn a_webhook_redelivered_long_after_keeps_its_recorded_outcome() {
    // The book remembers only recent ids; the records remember the rest.
    let store: Arc<dyn OperationStore> = Arc::new(MemoryStore::default());
    let reconcile = plugin(store.clone());
    for n in 0..100 {
        let id = format!("op{n}");
        handle(&reconcile, operation(1, &id, 1_000 + n, &id)).await;
        handle(&reconcile, outcome(1, &id)).await;
    }
    assert_eq!(state(&*store, "op0").await, OperationState::Completed);
    let emitted = handle(&reconcile, operation(1, "op0", 1_000, "op0")).await;
    assert!(emitted.is_empty(), "nothing is processing, nothing to send");
    assert_eq!(state(&*store, "op0").await, OperationState::Completed, "not re-recorded as dropped");
}
