//! The gateway over real HTTP against a real redis-server: what is accepted
//! lands on `hookbus:{normalise}:pending` byte for byte; what is refused
//! leaves nothing behind.

mod support;

use std::time::{Duration, Instant};

use hookbus_bus::{ConsumerId, DeadContent, DeadLetter, Settlement};
use hookbus_config::Secret;
use hookbus_gateway::signature::sign;
use hookbus_reconcile::book::Book;
use hookbus_reconcile::store::{OperationStore, RedisStore};
use hookbus_reconcile::wire::{Direction, SyncOperation};
use hookbus_testkit::RedisServer;
use reqwest::StatusCode;
use support::*;

// ---- accepted ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_lands_on_normalise_pending_byte_for_byte() {
    let gw = TestGateway::start().await;
    let fixtures = fixtures();
    assert!(fixtures.len() >= 90, "fixtures/github is incomplete: {}", fixtures.len());
    let mut sent = std::collections::HashMap::new();
    for (event, name, body) in &fixtures {
        let id = delivery();
        let response = gw.webhook(event, &id, body.clone()).send().await.expect("request");
        let expected = if event == "ping" { StatusCode::OK } else { StatusCode::ACCEPTED };
        assert_eq!(response.status(), expected, "{event}/{name}");
        let answer = json(response).await;
        assert_eq!(answer["delivery"], id.as_str(), "{event}/{name}");
        sent.insert(id, (event.clone(), name.clone(), body.clone(), answer["id"].as_str().map(str::to_owned)));
    }
    let pending = gw.pending();
    assert_eq!(pending.len(), fixtures.len());
    for envelope in pending {
        let webhook = webhook_payload(&envelope);
        let (event, name, body, id) = sent.get(&webhook.delivery).expect("a delivery that was sent");
        assert_eq!(&webhook.event, event);
        assert!(webhook.body == *body, "{event}/{name}: body changed on the way");
        assert_eq!(id.as_deref(), Some(envelope.id.as_str()), "the answer names the message");
        assert_eq!(envelope.trace_id, envelope.id, "the webhook starts the trace");
        assert_eq!(envelope.key, None);
        assert_eq!(envelope.attempts, 0);
        assert!(webhook.received_at > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_encoded_webhook_is_stored_as_its_decoded_payload_json() {
    let gw = TestGateway::start().await;
    let json_body = fixture("issues", "opened.json");
    let text = String::from_utf8(json_body.clone()).expect("utf-8");
    let form: String = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &text).finish();
    let response = gw
        .webhook_as("issues", &delivery(), form, "application/x-www-form-urlencoded", SECRET.as_bytes())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pending = gw.pending();
    assert_eq!(pending.len(), 1);
    assert!(webhook_payload(&pending[0]).body == json_body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_200_and_queued_like_any_event() {
    let gw = TestGateway::start().await;
    let id = delivery();
    let response = gw.webhook("ping", &id, fixture("ping", "ping.json")).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let pending = gw.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(webhook_payload(&pending[0]).event, "ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_hookbus_does_not_sync_is_still_queued() {
    let gw = TestGateway::start().await;
    let response = gw.webhook("star", &delivery(), r#"{"action":"created"}"#).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(gw.pending_len(), 1);
}

// ---- deduplication -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_is_answered_duplicate_and_not_stored_again() {
    let gw = TestGateway::start().await;
    let id = delivery();
    let body = fixture("issues", "labeled.json");
    let first = json(gw.webhook("issues", &id, body.clone()).send().await.expect("first")).await;
    let again = gw.webhook("issues", &id, body).send().await.expect("again");
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again = json(again).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(gw.pending_len(), 1);
    let mark = format!("hookbus:{{normalise}}:delivery:{id}");
    assert_eq!(gw.get(&mark).as_deref(), first["id"].as_str());
    let mut conn = gw.redis.client();
    let ttl: i64 = redis::cmd("PTTL").arg(&mark).query(&mut conn).expect("PTTL");
    assert!(ttl > 6 * 24 * 3_600_000, "the mark expires after the retention, got {ttl} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_delivery_store_one_message() {
    let gw = TestGateway::start().await;
    let id = delivery();
    let body = fixture("issue_comment", "created.json");
    let sends = (0..16).map(|_| gw.webhook("issue_comment", &id, body.clone()).send());
    let answers = futures_join_all(sends).await;
    assert!(answers.iter().all(|r| r.as_ref().is_ok_and(|r| r.status() == StatusCode::ACCEPTED)));
    assert_eq!(gw.pending_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_message_ended_dead_is_accepted_again() {
    let gw = TestGateway::start().await;
    let id = delivery();
    let body = fixture("issues", "edited.json");
    let first = json(gw.webhook("issues", &id, body.clone()).send().await.expect("first")).await;

    // A normalise consumer takes the message and gives up on it.
    let backend = hookbus_bus::connect(&gw.settings).expect("backend");
    let consumer = ConsumerId::new("normalise");
    backend.register(&consumer).await.expect("register");
    let deliveries = backend.fetch(&consumer, 1, 10).await.expect("fetch");
    assert_eq!(deliveries.len(), 1);
    let taken = deliveries.into_iter().next().expect("one");
    let dead = DeadLetter {
        content: DeadContent::Envelope(hookbus_bus::Envelope::clone(&taken.envelope)),
        reason: "test: malformed".into(),
        dead_at: 1,
    };
    backend.settle(&consumer, &[(taken.lease, Settlement::Dead(Box::new(dead)))]).await.expect("settle");
    assert_eq!(gw.pending_len(), 0);

    let again = gw.webhook("issues", &id, body.clone()).send().await.expect("redelivery");
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again = json(again).await;
    assert_eq!(again.get("duplicate"), None, "{again}");
    assert_ne!(again["id"], first["id"]);
    let pending = gw.pending();
    assert_eq!(pending.len(), 1);
    assert!(webhook_payload(&pending[0]).body == body);

    // Once requeued, a further copy is a plain duplicate again.
    let third = json(gw.webhook("issues", &id, body).send().await.expect("third")).await;
    assert_eq!(third["duplicate"], true);
    assert_eq!(gw.pending_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_one_message_per_delivery_and_answers_each_request_its_own_result() {
    use hookbus_gateway::intake::{Admission, Intake, Mark, RedisIntake};
    let redis = RedisServer::start();
    let intake = std::sync::Arc::new(
        RedisIntake::connect(&redis.url(), false, "hookbus", Duration::from_secs(60), Duration::from_secs(5))
            .expect("intake"),
    );
    // 40 requests at once, 8 deliveries 5 times each, interleaved: they are
    // cut into a few batches, copies of one delivery inside the same batch.
    let requests: Vec<_> = (0..40)
        .map(|n| {
            let intake = intake.clone();
            tokio::spawn(async move {
                let payload = serde_json::json!({ "event": "issues", "body": "x".repeat(6_000) });
                let envelope = hookbus_bus::Envelope::with_payload("github.webhook", &payload).expect("envelope");
                let mark = Mark::Delivery(format!("delivery-{}", n % 8));
                let admission = intake.admit(&mark, &envelope, None).await.expect("admit");
                (n % 8, envelope.id, admission)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("task"));
    }
    let queued: std::collections::HashMap<usize, String> = answers
        .iter()
        .filter(|(_, _, admission)| *admission == Admission::Queued)
        .map(|(delivery, id, _)| (*delivery, id.clone()))
        .collect();
    assert_eq!(queued.len(), 8, "one message per delivery");
    assert_eq!(answers.iter().filter(|(_, _, a)| *a == Admission::Queued).count(), 8);
    for (delivery, _, admission) in &answers {
        if let Admission::Seen { message_id } = admission {
            assert_eq!(Some(message_id), queued.get(delivery), "a copy names the message its delivery became");
        }
    }
    let mut conn = redis.client();
    let raws: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(PENDING).arg(0).arg(-1).query(&mut conn).expect("LRANGE");
    let mut stored: Vec<String> =
        raws.iter().map(|raw| hookbus_bus::Envelope::decode(raw).expect("only envelopes on pending").id).collect();
    let mut expected: Vec<String> = queued.into_values().collect();
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected, "exactly the queued messages, nothing taken back left behind");
}

// ---- refused: nothing stored ----------------------------------------------

async fn assert_refused(gw: &TestGateway, response: reqwest::Response, status: StatusCode, reason_has: &str) {
    assert_eq!(response.status(), status);
    let body = json(response).await;
    let reason = body["error"].as_str().expect("an error reason");
    assert!(reason.contains(reason_has), "{reason}");
    assert!(!reason.contains(SECRET));
    gw.assert_nothing_stored();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_event_header_is_400_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let body = fixture("issues", "opened.json");
    let response = gw
        .http
        .post(gw.url("/webhooks/github"))
        .header("x-github-delivery", delivery())
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "X-GitHub-Event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_delivery_header_is_400_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let body = fixture("issues", "opened.json");
    let response = gw
        .http
        .post(gw.url("/webhooks/github"))
        .header("x-github-event", "issues")
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "X-GitHub-Delivery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_signature_is_401_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let response = gw
        .http
        .post(gw.url("/webhooks/github"))
        .header("x-github-event", "issues")
        .header("x-github-delivery", delivery())
        .body(fixture("issues", "opened.json"))
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_is_401_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let response = gw
        .webhook_as("issues", &delivery(), fixture("issues", "opened.json"), "application/json", b"not the secret")
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::UNAUTHORIZED, "does not match").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_neither_signed_nor_json_is_401_not_400() {
    // The signature and the JSON grammar are checked in one pass; whoever
    // sent an unsigned body learns only that it is unsigned, wherever its
    // JSON breaks off, and whether or not a previous secret is configured.
    let gw = TestGateway::start_on(RedisServer::start(), |settings| {
        settings.github.previous_webhook_secret = Secret::new("the previous secret");
    })
    .await;
    let whole = fixture("issues", "opened.json");
    for broken in [b"Hello, World!".to_vec(), whole[..whole.len() / 2].to_vec(), whole[..70].to_vec()] {
        let response = gw
            .webhook_as("issues", &delivery(), broken, "application/json", b"not the secret")
            .send()
            .await
            .expect("request");
        assert_refused(&gw, response, StatusCode::UNAUTHORIZED, "does not match").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_secret_rotation_webhooks_signed_with_either_secret_are_stored() {
    // The operator set the new secret and kept the old one as previous;
    // GitHub signs with the old one until its settings are saved.
    let gw = TestGateway::start_on(RedisServer::start(), |settings| {
        settings.github.webhook_secret = Secret::new("the new secret");
        settings.github.previous_webhook_secret = Secret::new(SECRET);
    })
    .await;
    let body = fixture("issues", "opened.json");
    let (old, new) = (delivery(), delivery());
    for (id, secret) in [(&old, SECRET.as_bytes()), (&new, b"the new secret".as_slice())] {
        let response =
            gw.webhook_as("issues", id, body.clone(), "application/json", secret).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "signed with {}", String::from_utf8_lossy(secret));
    }
    let stored: Vec<String> = gw.pending().iter().map(|e| webhook_payload(e).delivery).collect();
    assert_eq!(stored, vec![old, new]);
    // Any third secret is still refused, and stores nothing more.
    let response =
        gw.webhook_as("issues", &delivery(), body, "application/json", b"neither").send().await.expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(gw.pending_len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_is_not_json_is_400_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let response = gw.webhook("issues", &delivery(), "Hello, World!").send().await.expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "not JSON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_json_body_with_bytes_that_are_not_utf8_is_400_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    // Well-formed JSON but for one byte inside a string, which no UTF-8
    // text holds.
    let body = b"{\"action\":\"opened\",\"title\":\"caf\xe9\"}".to_vec();
    let response = gw.webhook("issues", &delivery(), body).send().await.expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "not UTF-8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_payload_whose_bytes_are_not_utf8_is_400_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    // `%E9` alone decodes to a byte that no UTF-8 text holds; decoding it
    // lossily would queue a body GitHub never sent.
    let form = "payload=%7B%22title%22%3A%22caf%E9%22%7D";
    let response = gw
        .webhook_as("issues", &delivery(), form, "application/x-www-form-urlencoded", SECRET.as_bytes())
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "not UTF-8").await;
}

/// A JSON array of real payloads, over 2 MiB: a body the gateway checks on
/// its blocking pool rather than on the serving thread.
fn a_large_json_body() -> Vec<u8> {
    let one = fixture("issues", "opened.json");
    let mut body = b"[".to_vec();
    while body.len() < 2 * 1024 * 1024 {
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(&one);
    }
    body.push(b']');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_over_a_mebibyte_is_checked_off_the_serving_thread_and_stored_byte_identical() {
    let gw = TestGateway::start().await;
    let body = a_large_json_body();
    let response = gw.webhook("issues", &delivery(), body.clone()).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pending = gw.pending();
    assert_eq!(pending.len(), 1);
    assert!(webhook_payload(&pending[0]).body == body, "body changed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_over_a_mebibyte_with_a_wrong_signature_or_broken_json_is_refused_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let body = a_large_json_body();
    let response = gw
        .webhook_as("issues", &delivery(), body.clone(), "application/json", b"not the secret")
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::UNAUTHORIZED, "does not match").await;
    let cut = body[..body.len() - 1].to_vec();
    let response = gw.webhook("issues", &delivery(), cut).send().await.expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "not JSON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_post_without_payload_is_400_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let response = gw
        .webhook_as("issues", &delivery(), "other=1", "application/x-www-form-urlencoded", SECRET.as_bytes())
        .send()
        .await
        .expect("request");
    assert_refused(&gw, response, StatusCode::BAD_REQUEST, "payload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_25_mib_is_413_before_it_is_read_and_nothing_is_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start().await;
    // Only the head is sent: the gateway must answer from Content-Length
    // alone. (A client that writes the whole body first may see its write
    // fail with a broken pipe, since the gateway does not read what it
    // refuses.)
    let address = gw.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         x-github-event: issues\r\nx-github-delivery: {}\r\nx-hub-signature-256: sha256={}\r\n\
         content-length: {}\r\n\r\n{{",
        delivery(),
        "0".repeat(64),
        25 * 1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            answer.extend_from_slice(&chunk[..n]);
            if n == 0 || answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer before the body was sent");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than"), "{answer}");
    gw.assert_nothing_stored();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_exactly_25_mib_is_accepted() {
    let gw = TestGateway::start().await;
    let mut body = vec![b' '; 25 * 1024 * 1024];
    body[0] = b'{';
    body[25 * 1024 * 1024 - 1] = b'}';
    let response = gw.webhook("issues", &delivery(), body).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(gw.pending_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_quickly_and_leaves_nothing_half_written() {
    let mut gw = TestGateway::start_on(RedisServer::start_durable(), |_| {}).await;
    let id = delivery();
    let body = fixture("release", "published.json");
    gw.redis.kill();
    let started = Instant::now();
    let response = gw.webhook("release", &id, body.clone()).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(json(response).await["error"].is_string());

    gw.redis.restart();
    gw.assert_nothing_stored();
    // The refused delivery is not remembered: GitHub's retry gets through.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = gw.webhook("release", &id, body.clone()).send().await.expect("retry");
        if response.status() == StatusCode::ACCEPTED {
            assert_eq!(json(response).await.get("duplicate"), None);
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not reconnect: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.pending_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_redis_refuses_leaves_no_mark_behind() {
    // `pending` holding the wrong type makes the transaction's LPUSH fail
    // inside EXEC, which still runs the rest: no mark may be set for it.
    let gw = TestGateway::start().await;
    let mut conn = gw.redis.client();
    let _: () = redis::cmd("SET").arg(PENDING).arg("not a list").query(&mut conn).expect("SET");
    let id = delivery();
    let body = fixture("issues", "opened.json");
    let sends = (0..8).map(|_| gw.webhook("issues", &delivery(), body.clone()).send());
    let refused = futures_join_all(sends.chain([gw.webhook("issues", &id, body.clone()).send()])).await;
    for response in refused {
        assert_eq!(response.expect("request").status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(gw.keys(), vec![PENDING.to_string()], "a mark outlived its failed push");

    let _: () = redis::cmd("DEL").arg(PENDING).query(&mut conn).expect("DEL");
    let response = gw.webhook("issues", &id, body).send().await.expect("again");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(json(response).await.get("duplicate"), None);
    assert_eq!(gw.pending_len(), 1);
}

// ---- the intake's own Redis connection ------------------------------------

/// Sends `kill -<signal>` to a test redis-server.
fn signal(redis: &RedisServer, signal: &str) {
    let pid = redis.pid().expect("redis-server is running");
    let sent = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(sent.is_ok_and(|status| status.success()), "kill -{signal} {pid}");
}

/// A gateway over a redis-server that asks for the password `s3cret`,
/// dialled with the URL `url` makes of the port; with that URL, and a
/// connection that logged in before the password was set.
async fn behind_a_password(url: impl Fn(u16) -> String) -> (TestGateway, String, redis::Connection) {
    let redis = RedisServer::start();
    let mut admin = redis.client();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("s3cret").query(&mut admin).expect("password");
    let url = url(redis.port());
    let gw = TestGateway::start_on(redis, |settings| settings.redis.url = Secret::new(url.clone())).await;
    (gw, url, admin)
}

/// One webhook, sent twice: accepted, then answered as a duplicate.
async fn accepted_then_duplicate(gw: &TestGateway) {
    let id = delivery();
    let body = fixture("issues", "opened.json");
    let response = gw.webhook("issues", &id, body.clone()).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let again = gw.webhook("issues", &id, body).send().await.expect("again");
    assert_eq!(json(again).await["duplicate"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_and_database_of_the_redis_url_are_used() {
    let (gw, url, _) = behind_a_password(|port| format!("redis://:s3cret@127.0.0.1:{port}/5")).await;
    accepted_then_duplicate(&gw).await;

    let mut conn = redis::Client::open(url).and_then(|client| client.get_connection()).expect("connect");
    let stored: usize = redis::cmd("LLEN").arg(PENDING).query(&mut conn).expect("LLEN");
    assert_eq!(stored, 1, "db 5 holds the webhook");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut conn).expect("SELECT");
    let elsewhere: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
    assert!(elsewhere.is_empty(), "db 0 got {elsewhere:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_503_and_says_so() {
    let (gw, _, mut admin) = behind_a_password(|port| format!("redis://:wrong@127.0.0.1:{port}")).await;
    let response = gw.webhook("issues", &delivery(), fixture("issues", "opened.json")).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error = json(response).await["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("redis refused the login"), "{error}");
    assert!(!error.contains("wrong"), "the password leaked: {error}");
    let stored: usize = redis::cmd("LLEN").arg(PENDING).query(&mut admin).expect("LLEN");
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_503_within_the_timeout_and_the_retry_is_stored_once() {
    let gw = TestGateway::start().await;
    let body = fixture("release", "published.json");
    let before = gw.webhook("release", &delivery(), body.clone()).send().await.expect("request");
    assert_eq!(before.status(), StatusCode::ACCEPTED);

    // Frozen with the connection open: the transaction is written, and no
    // answer comes. Once Redis runs again it may still execute it.
    signal(&gw.redis, "STOP");
    let id = delivery();
    let started = Instant::now();
    let response = gw.webhook("release", &id, body.clone()).send().await.expect("request");
    let waited = started.elapsed();
    signal(&gw.redis, "CONT");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited < Duration::from_secs(3), "took {waited:?}");
    // It does not claim that nothing was stored: that is not known.
    let error = json(response).await["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("a retry is answered as a duplicate"), "{error}");

    // GitHub's retry: stored now, or found stored by the stalled write.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = gw.webhook("release", &id, body.clone()).send().await.expect("retry");
        if response.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not recover: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.pending_len(), 2, "the first webhook and the retried one, once each");
}

/// The bound is kept by the intake writer, not by a timer per request: a
/// webhook that waited in its queue behind stalled transactions is still
/// answered within the timeout of its own arrival, not of its batch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_queued_behind_a_stalled_redis_are_each_503_within_the_timeout() {
    let gw = std::sync::Arc::new(TestGateway::start().await);
    let timeout = Duration::from_millis(1_000);
    let body = fixture("release", "published.json");
    signal(&gw.redis, "STOP");
    let send = |gw: std::sync::Arc<TestGateway>, body: Vec<u8>| {
        tokio::spawn(async move {
            let started = Instant::now();
            let response = gw.webhook("release", &delivery(), body).send().await.expect("request");
            (response.status(), started.elapsed())
        })
    };
    // Spaced out, so that each is a transaction of its own and the writer's
    // in-flight transactions are all taken; then more, which wait in its
    // queue until the first of those fails.
    let mut requests = Vec::new();
    for _ in 0..6 {
        requests.push(send(gw.clone(), body.clone()));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    tokio::time::sleep(timeout / 2).await;
    for _ in 0..12 {
        requests.push(send(gw.clone(), body.clone()));
    }
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("task"));
    }
    signal(&gw.redis, "CONT");
    for (status, waited) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{answers:?}");
        assert!(*waited < timeout + Duration::from_millis(400), "answered after {waited:?}: {answers:?}");
    }
    // And the gateway takes webhooks again once Redis does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.webhook("release", &delivery(), body.clone()).send().await.expect("request").status()
        != StatusCode::ACCEPTED
    {
        assert!(Instant::now() < deadline, "gateway did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_while_idle_the_next_webhook_is_accepted_at_once() {
    let mut gw = TestGateway::start().await;
    let body = fixture("issues", "opened.json");
    let before = gw.webhook("issues", &delivery(), body.clone()).send().await.expect("request");
    assert_eq!(before.status(), StatusCode::ACCEPTED);
    // Its connection closed under it: the first webhook after must not be
    // the one that finds out.
    gw.redis.restart();
    let after = gw.webhook("issues", &delivery(), body).send().await.expect("request");
    assert_eq!(after.status(), StatusCode::ACCEPTED);
    assert_eq!(gw.pending_len(), 1, "the restarted server kept nothing, and now holds the new webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_self_signed_certificate_is_accepted_when_configured() {
    let gw = TestGateway::start_on(RedisServer::start_tls(), |settings| settings.redis.tls_insecure = true).await;
    accepted_then_duplicate(&gw).await;
    assert_eq!(gw.pending_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_an_unknown_certificate_is_refused_unless_configured() {
    let gw = TestGateway::start_on(RedisServer::start_tls(), |settings| settings.redis.tls_insecure = false).await;
    let response = gw.webhook("issues", &delivery(), fixture("issues", "opened.json")).send().await.expect("request");
    assert_refused(&gw, response, StatusCode::SERVICE_UNAVAILABLE, "certificate").await;
}

// ---- client API -----------------------------------------------------------

fn a_change() -> serde_json::Value {
    serde_json::json!({
        "repository": "octo-org/hello-world",
        "resource": "issue",
        "action": "update",
        "number": 42,
        "fields": { "title": "Renamed", "labels": ["bug"] },
        "actor": { "login": "octocat", "name": "The Octocat", "email": "octocat@example.com" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_a_valid_bearer_token_is_401_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let url = gw.url("/api/v1/changes");
    let none = gw.http.post(&url).json(&a_change()).send().await.expect("request");
    assert_refused(&gw, none, StatusCode::UNAUTHORIZED, "missing bearer token").await;
    let wrong = gw.http.post(&url).bearer_auth("nope").json(&a_change()).send().await.expect("request");
    assert_eq!(wrong.headers().get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    assert_refused(&gw, wrong, StatusCode::UNAUTHORIZED, "not accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_change_is_queued_and_its_operation_can_be_read() {
    let gw = TestGateway::start().await;
    let response =
        gw.http.post(gw.url("/api/v1/changes")).bearer_auth(TOKEN).json(&a_change()).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer = json(response).await;
    let operation = answer["operation"].as_str().expect("an operation id").to_string();
    assert_eq!(answer["state"], "queued");

    let pending = gw.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].kind, "client.change");
    assert_eq!(pending[0].id, operation);
    let payload: serde_json::Value = pending[0].payload_as().expect("payload");
    assert_eq!(payload["operation"], operation.as_str());
    assert_eq!(payload["change"], a_change());

    let status = gw
        .http
        .get(gw.url(&format!("/api/v1/operations/{operation}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(status.status(), StatusCode::OK);
    let status = json(status).await;
    assert_eq!(status["id"], operation.as_str());
    assert_eq!(status["state"], "accepted", "queued on normalise, not yet reconciled: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_is_422_naming_the_field_and_nothing_is_stored() {
    let gw = TestGateway::start().await;
    let mut change = a_change();
    change["fields"]["state"] = "merged".into();
    let response =
        gw.http.post(gw.url("/api/v1/changes")).bearer_auth(TOKEN).json(&change).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(response).await;
    assert_eq!(body["field"], "fields.state");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("fields.state")));
    gw.assert_nothing_stored();

    let not_json = gw.http.post(gw.url("/api/v1/changes")).bearer_auth(TOKEN).body("{").send().await.expect("request");
    assert_refused(&gw, not_json, StatusCode::BAD_REQUEST, "not JSON").await;
}

/// `POST /api/v1/changes` of [`a_change`] with `token` and, if given, an `Idempotency-Key`.
fn post_change(gw: &TestGateway, token: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let request = gw.http.post(gw.url("/api/v1/changes")).bearer_auth(token).json(&a_change());
    match key {
        Some(key) => request.header("idempotency-key", key),
        None => request,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_again_with_its_idempotency_key_is_one_operation() {
    const OTHER_TOKEN: &str = "another-client-token-0123";
    let gw = TestGateway::start_on(RedisServer::start(), |settings| {
        settings.api.tokens = hookbus_config::Tokens::new([TOKEN, OTHER_TOKEN]);
    })
    .await;
    let first = post_change(&gw, TOKEN, Some("change-7")).send().await.expect("request");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first = json(first).await;
    assert_eq!(first.get("duplicate"), None);
    let again = json(post_change(&gw, TOKEN, Some("change-7")).send().await.expect("again")).await;
    assert_eq!(again["operation"], first["operation"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(gw.pending_len(), 1, "one operation for one key");

    // Another key, another client's same key, and no key: new operations.
    for (token, key) in [(TOKEN, Some("change-8")), (OTHER_TOKEN, Some("change-7")), (TOKEN, None), (TOKEN, None)] {
        let response = json(post_change(&gw, token, key).send().await.expect("request")).await;
        assert_ne!(response["operation"], first["operation"]);
        assert_eq!(response.get("duplicate"), None, "{token} {key:?}");
    }
    assert_eq!(gw.pending_len(), 5);

    for bad in ["", "has space", &"k".repeat(256)] {
        let response = post_change(&gw, TOKEN, Some(bad)).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(json(response).await["error"].as_str().is_some_and(|e| e.contains("Idempotency-Key")));
    }
    assert_eq!(gw.pending_len(), 5, "a refused key stores nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_refused_by_a_stalled_redis_and_sent_again_with_its_key_is_stored_once() {
    let gw = TestGateway::start().await;
    let warm = post_change(&gw, TOKEN, None).send().await.expect("request");
    assert_eq!(warm.status(), StatusCode::ACCEPTED);
    signal(&gw.redis, "STOP");
    let refused = post_change(&gw, TOKEN, Some("order-1234")).send().await.expect("request");
    signal(&gw.redis, "CONT");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error = json(refused).await["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("same Idempotency-Key"), "{error}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let operation = loop {
        let response = post_change(&gw, TOKEN, Some("order-1234")).send().await.expect("retry");
        if response.status() == StatusCode::ACCEPTED {
            break json(response).await["operation"].as_str().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "gateway did not recover: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains(&operation), "the 503 named the operation the retry became: {error}");
    assert_eq!(gw.pending_len(), 2, "the warm-up change and this one, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_operation_is_404() {
    let gw = TestGateway::start().await;
    for id in ["0192f3c4-0000-7000-8000-000000000000", "not..an..id"] {
        let response =
            gw.http.get(gw.url(&format!("/api/v1/operations/{id}"))).bearer_auth(TOKEN).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(json(response).await["error"].is_string());
    }
    let anonymous = gw.http.get(gw.url("/api/v1/operations/x")).send().await.expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

// ---- operation records (reconcile's) ----------------------------------------

const RESOURCE: &str = "github:octo-org/hello-world:issue:42";

/// A `sync.operation` on [`RESOURCE`] as normalise would send it.
fn sync_operation(id: &str, direction: Direction, updated_at: i64, content: &str) -> SyncOperation {
    SyncOperation {
        operation: id.into(),
        direction,
        key: RESOURCE.into(),
        repository: "octo-org/hello-world".into(),
        repository_enabled: true,
        kind: "issue".into(),
        action: "edited".into(),
        effect: Some("upsert".into()),
        updated_at,
        content_hash: content.into(),
        delivery: None,
        source: "issues".into(),
        number: Some(42),
        id: None,
        record: Some(serde_json::json!({ "title": content })),
        changes: None,
    }
}

/// Applies `operations` in turn to the resource's book and saves each change
/// through reconcile's own Redis store, as the reconcile worker does.
async fn reconcile(gw: &TestGateway, operations: &[SyncOperation]) {
    let store = RedisStore::connect(&gw.redis.url(), false, "hookbus", Duration::from_secs(3_600)).expect("store");
    let mut book = Book::default();
    for (n, op) in operations.iter().enumerate() {
        let change = book.apply_operation(op, b"payload", None, 1_000 + n as i64);
        assert!(store.save(RESOURCE, &book, &change.records).await.expect("save"), "book saved");
        book.version += 1;
    }
}

async fn get_operation(gw: &TestGateway, id: &str) -> reqwest::Response {
    gw.http.get(gw.url(&format!("/api/v1/operations/{id}"))).bearer_auth(TOKEN).send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciled_operation_is_answered_with_its_state_and_history() {
    let gw = TestGateway::start().await;
    let first = sync_operation("gh-0001", Direction::Inbound, 10, "first");
    let older = sync_operation("gh-0002", Direction::Inbound, 20, "second");
    let newest = sync_operation("gh-0003", Direction::Inbound, 30, "third");
    reconcile(&gw, &[first, older, newest]).await;

    let processing = get_operation(&gw, "gh-0001").await;
    assert_eq!(processing.status(), StatusCode::OK);
    let processing = json(processing).await;
    assert_eq!(processing["id"], "gh-0001");
    assert_eq!(processing["state"], "processing");
    assert_eq!(processing["direction"], "inbound");
    assert_eq!(processing["key"], RESOURCE);
    assert_eq!(processing["updated_at"], 10);

    let canceled = get_operation(&gw, "gh-0002").await;
    assert_eq!(canceled.status(), StatusCode::OK);
    let canceled = json(canceled).await;
    assert_eq!(canceled["state"], "canceled", "{canceled}");
    assert_eq!(canceled["canceled_by"], "gh-0003");
    let history: Vec<&str> = canceled["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|step| step["state"].as_str().expect("a state"))
        .collect();
    assert_eq!(history, ["queued", "canceled"]);
    assert!(canceled["history"][1]["note"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(canceled["history"][1]["at"].is_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_change_reads_accepted_until_reconcile_records_it() {
    let gw = TestGateway::start().await;
    let response =
        gw.http.post(gw.url("/api/v1/changes")).bearer_auth(TOKEN).json(&a_change()).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let operation = json(response).await["operation"].as_str().expect("an operation id").to_string();

    let before = get_operation(&gw, &operation).await;
    assert_eq!(before.status(), StatusCode::OK);
    assert_eq!(json(before).await, serde_json::json!({ "id": operation, "state": "accepted" }));

    let mut change = sync_operation(&operation, Direction::Outbound, 50, "renamed");
    change.source = "client.change".into();
    reconcile(&gw, &[change]).await;
    let after = json(get_operation(&gw, &operation).await).await;
    assert_eq!(after["state"], "processing", "{after}");
    assert_eq!(after["direction"], "outbound");
    assert_eq!(after["history"][0]["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_records_unreachable_is_503_quickly() {
    let mut gw = TestGateway::start().await;
    gw.redis.kill();
    let started = Instant::now();
    let response = get_operation(&gw, "gh-0001").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(json(response).await["error"].as_str().is_some_and(|e| e.contains("unavailable")));
}

// ---- health and metrics ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_and_readyz_follows_redis() {
    let mut gw = TestGateway::start().await;
    let (http, base) = (gw.http.clone(), gw.base.clone());
    let get = |path: &str| http.get(format!("{base}{path}")).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), StatusCode::OK);
    assert_eq!(get("/readyz").await.expect("readyz").status(), StatusCode::OK);
    gw.redis.kill();
    let started = Instant::now();
    let down = get("/readyz").await.expect("readyz");
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(json(down).await["error"].as_str().is_some_and(|e| e.contains("redis")));
    assert_eq!(get("/healthz").await.expect("healthz").status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_webhooks_and_show_queue_depths_and_latency() {
    let gw = TestGateway::start().await;
    gw.webhook("issues", &delivery(), fixture("issues", "opened.json")).send().await.expect("request");
    gw.webhook("issues", &delivery(), "not json").send().await.expect("request");
    // A made-up method is answered (405) and counted, under `other`.
    let odd = reqwest::Method::from_bytes(b"SPRINKLE").expect("method token");
    let refused = gw.http.request(odd, gw.url("/webhooks/github")).send().await.expect("request");
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = gw.http.get(gw.url("/metrics")).send().await.expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().is_ok_and(|t| t.starts_with("text/plain")));
    let text = response.text().await.expect("text");
    for expected in [
        r#"hookbus_webhooks_total{event="issues",result="accepted"}"#,
        r#"hookbus_webhooks_total{event="issues",result="bad_request"}"#,
        r#"hookbus_queue_depth{queue="normalise",state="pending"}"#,
        r#"hookbus_queue_depth{queue="notify",state="dead"}"#,
        r#"hookbus_http_request_duration_seconds_bucket{method="POST",route="/webhooks/github",status="202",le="0.01"}"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(!text.contains("SPRINKLE"), "a client's made-up method became a label:\n{text}");
    assert!(text.contains(r#"method="other",route="/webhooks/github",status="405""#), "405 not counted:\n{text}");
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

// ---- the binary -------------------------------------------------------------

fn gateway_command(port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus-gateway"));
    let dir = std::env::temp_dir();
    cmd.current_dir(dir)
        .env_clear()
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[test]
fn the_binary_refuses_to_start_without_a_webhook_secret() {
    let output = gateway_command(hookbus_testkit::free_port()).output().expect("run hookbus-gateway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HOOKBUS_GITHUB__WEBHOOK_SECRET"), "{stderr}");
}

#[test]
fn the_binary_refuses_to_start_with_an_app_key_that_cannot_sign() {
    // Redeliveries for the App's own webhook, with its public key pasted
    // where the private one belongs: exit 2 at start, not a 401 a minute on.
    let redis = RedisServer::start();
    let output = gateway_command(hookbus_testkit::free_port())
        .env("REDIS_URL", redis.url())
        .env("HOOKBUS_GITHUB__WEBHOOK_SECRET", SECRET)
        .env("HOOKBUS_GITHUB__REDELIVER_HOOKS", "app/hook")
        .env("HOOKBUS_GITHUB__APP_ID", hookbus_testkit::github_app::APP_ID.to_string())
        .env("HOOKBUS_GITHUB__APP_PRIVATE_KEY", hookbus_testkit::github_app::PUBLIC_KEY)
        .output()
        .expect("run hookbus-gateway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HOOKBUS_GITHUB__APP_PRIVATE_KEY") && !stderr.contains("MII"), "{stderr}");
}

#[test]
fn sigterm_lets_an_in_flight_webhook_finish_then_exits_0() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let port = hookbus_testkit::free_port();
    let mut child = gateway_command(port)
        .env("REDIS_URL", redis.url())
        .env("HOOKBUS_GITHUB__WEBHOOK_SECRET", SECRET)
        .spawn()
        .expect("start hookbus-gateway");
    let address = format!("127.0.0.1:{port}");
    let up = hookbus_testkit::eventually(Duration::from_secs(10), || std::net::TcpStream::connect(&address).is_ok());
    assert!(up, "gateway did not listen");

    // Headers and half the body now, the rest after SIGTERM.
    let body = fixture("issues", "opened.json");
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let request = format!(
        "POST /webhooks/github HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         x-github-event: issues\r\nx-github-delivery: {}\r\nx-hub-signature-256: {}\r\ncontent-length: {}\r\n\
         x-request-id: router-req-7f3a\r\n\r\n",
        delivery(),
        sign(SECRET.as_bytes(), &body),
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("headers");
    stream.write_all(head).expect("first half");
    stream.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(300));

    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let refused =
        hookbus_testkit::eventually(Duration::from_secs(5), || std::net::TcpStream::connect(&address).is_err());
    assert!(refused, "still accepting connections after SIGTERM");

    stream.write_all(tail).expect("second half");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "gateway did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut conn = redis.client();
    let stored: usize = redis::cmd("LLEN").arg(PENDING).query(&mut conn).expect("LLEN");
    assert_eq!(stored, 1);

    // Its log went to a pipe, as under a process supervisor: plain lines.
    let mut logs = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut logs).expect("read the log");
    assert!(logs.contains("webhook accepted") && logs.contains("gateway stopped"), "{logs}");
    // The router's request id leads from its log line to the gateway's.
    let accepted = logs.lines().find(|line| line.contains("webhook accepted")).unwrap_or_default();
    assert!(accepted.contains("router-req-7f3a"), "{accepted}");
    assert!(!logs.contains('\u{1b}'), "terminal colour codes in a log that is no terminal: {logs}");
    // This test's Redis keeps no append-only file: the gateway said so at start.
    assert!(logs.contains("redis can lose acknowledged messages") && logs.contains("appendonly yes"), "{logs}");
}
