//! Test support for the gateway suite: a real gateway on a free loopback
//! port over a real redis-server (operation records read from reconcile's
//! store in that Redis, as the binary wires it), a signing HTTP client, and
//! readers of what landed in Redis.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hookbus_bus::{Envelope, Shutdown};
use hookbus_config::{Secret, Settings, Tokens};
use hookbus_gateway::operations::StoreLookup;
use hookbus_gateway::signature::sign;
use hookbus_gateway::{serve, Gateway};
use hookbus_testkit::RedisServer;

pub const SECRET: &str = "It's a Secret to Everybody";
pub const TOKEN: &str = "test-token-0123456789";
pub const PENDING: &str = "hookbus:{normalise}:pending";

/// The `github.webhook` payload as a reader sees it.
#[derive(Debug, serde::Deserialize)]
pub struct Webhook {
    pub event: String,
    pub delivery: String,
    pub received_at: i64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A gateway serving on 127.0.0.1 over its own redis-server.
pub struct TestGateway {
    pub redis: RedisServer,
    pub base: String,
    pub settings: Settings,
    pub http: reqwest::Client,
    shutdown: Shutdown,
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::start_on(RedisServer::start(), |_| {}).await
    }

    pub async fn start_on(redis: RedisServer, tweak: impl FnOnce(&mut Settings)) -> TestGateway {
        let mut settings = Settings::default();
        settings.redis.url = Secret::new(redis.url());
        settings.github.webhook_secret = Secret::new(SECRET);
        settings.api.tokens = Tokens::new([TOKEN]);
        settings.gateway.redis_timeout_ms = 1_000;
        tweak(&mut settings);
        let backend = hookbus_bus::connect(&settings).expect("bus backend");
        let operations = StoreLookup::over_redis(&settings).expect("operation records");
        let gateway = Gateway::over_redis(backend, &settings).expect("gateway").with_operations(Arc::new(operations));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = Shutdown::new();
        tokio::spawn(serve(listener, gateway.router(), shutdown.clone(), Duration::from_secs(5)));
        TestGateway { redis, base, settings, http: reqwest::Client::new(), shutdown }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A webhook as GitHub sends it: JSON, signed, both headers set.
    pub fn webhook(&self, event: &str, delivery: &str, body: impl Into<Vec<u8>>) -> reqwest::RequestBuilder {
        self.webhook_as(event, delivery, body, "application/json", SECRET.as_bytes())
    }

    /// A webhook with the given content type, signed with `secret`.
    pub fn webhook_as(
        &self,
        event: &str,
        delivery: &str,
        body: impl Into<Vec<u8>>,
        content_type: &str,
        secret: &[u8],
    ) -> reqwest::RequestBuilder {
        let body = body.into();
        self.http
            .post(self.url("/webhooks/github"))
            .header("content-type", content_type)
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(secret, &body))
            .body(body)
    }

    /// Messages on `normalise` pending, oldest first.
    pub fn pending(&self) -> Vec<Envelope> {
        let mut conn = self.redis.client();
        let raws: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(PENDING).arg(0).arg(-1).query(&mut conn).expect("LRANGE");
        raws.iter().rev().map(|raw| Envelope::decode(raw).expect("an envelope")).collect()
    }

    pub fn pending_len(&self) -> usize {
        let mut conn = self.redis.client();
        redis::cmd("LLEN").arg(PENDING).query(&mut conn).expect("LLEN")
    }

    /// Every key in Redis; empty means nothing at all was written.
    pub fn keys(&self) -> Vec<String> {
        let mut conn = self.redis.client();
        redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS")
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let mut conn = self.redis.client();
        redis::cmd("GET").arg(key).query(&mut conn).expect("GET")
    }

    /// Asserts that a refused request left no trace: no message, no mark.
    pub fn assert_nothing_stored(&self) {
        assert_eq!(self.pending_len(), 0, "a message was stored");
        assert_eq!(self.keys(), Vec::<String>::new(), "a key was written");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Decodes a `github.webhook` envelope's payload.
pub fn webhook_payload(envelope: &Envelope) -> Webhook {
    assert_eq!(envelope.kind, "github.webhook");
    envelope.payload_as::<Webhook>().expect("github.webhook payload")
}

/// A fresh delivery id, as GitHub's GUIDs.
pub fn delivery() -> String {
    hookbus_bus::envelope::new_id()
}

/// `fixtures/github` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/github")
}

/// Every vendored fixture: (event, file name, bytes).
pub fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures_dir()).expect("fixtures/github") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let event = dir.file_name().and_then(|n| n.to_str()).expect("event name").to_string();
        for file in std::fs::read_dir(&dir).expect("event dir") {
            let file = file.expect("entry").path();
            let name = file.file_name().and_then(|n| n.to_str()).expect("file name").to_string();
            out.push((event.clone(), name, std::fs::read(&file).expect("fixture")));
        }
    }
    out.sort();
    out
}

pub fn fixture(event: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(event).join(name)).expect("fixture")
}

/// The JSON body of a response.
pub async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("a JSON body")
}
