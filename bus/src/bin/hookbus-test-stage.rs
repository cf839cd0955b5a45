//! `hookbus-test-stage`: a configurable no-op stage, for the bus's process
//! tests and benchmark — not something to deploy.
//!
//! ```text
//! hookbus-test-stage --input Q [--output Q2] [--record LIST] [--started LIST]
//!                    [--order-check] [--max-sleep-ms N]
//! ```
//!
//! Each message's payload may carry `n` (a number), `sleep_ms` (how long the
//! handler takes, capped by `--max-sleep-ms`) and, for `--order-check`, `seq`.
//! `--record LIST` RPUSHes `n` onto a Redis list once the handler's work is
//! done — the stage's observable effect, which tests count. `--started LIST`
//! RPUSHes `n` as the handler begins, so a test can signal a process while
//! a handler is surely running (leased is not yet started). `--order-check`
//! records violations of per-key ordering on `<LIST>:violations`.
//! Configuration comes from the environment like every hookbus binary.

use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::{Envelope, HandlerError, Outbox, Plugin};
use hookbus_config::ConfigError;
use redis::AsyncCommands;

#[derive(serde::Deserialize)]
struct Work {
    #[serde(default)]
    n: u64,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    seq: u64,
}

struct Stage {
    input: String,
    output: Option<String>,
    record: Option<String>,
    started: Option<String>,
    order_check: bool,
    max_sleep: Duration,
    redis: Option<hookbus_bus::redis::RedisConnection>,
}

#[async_trait]
impl Plugin for Stage {
    fn name(&self) -> &str {
        "test-stage"
    }

    fn input(&self) -> &str {
        &self.input
    }

    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let work: Work = message.payload_as()?;
        let key = message.key.clone().unwrap_or_default();
        let mut conn = self.redis.clone();
        if let (Some(conn), Some(list)) = (conn.as_mut(), &self.started) {
            let _: () = conn.rpush(list, work.n).await.map_err(HandlerError::transient)?;
        }
        if let (true, Some(conn), Some(list)) = (self.order_check, conn.as_mut(), &self.record) {
            let running: i64 = conn.incr(format!("{list}:running:{key}"), 1).await.map_err(HandlerError::transient)?;
            let last: Option<u64> = conn
                .set_options(format!("{list}:last:{key}"), work.seq, redis::SetOptions::default().get(true))
                .await
                .map_err(HandlerError::transient)?;
            if running != 1 {
                let _: () = conn
                    .rpush(format!("{list}:violations"), format!("{key}: {running} at once"))
                    .await
                    .map_err(HandlerError::transient)?;
            }
            if last.is_some_and(|last| last >= work.seq) {
                let _: () = conn
                    .rpush(format!("{list}:violations"), format!("{key}: seq {} after {:?}", work.seq, last))
                    .await
                    .map_err(HandlerError::transient)?;
            }
        }
        let sleep = Duration::from_millis(work.sleep_ms).min(self.max_sleep);
        if !sleep.is_zero() {
            tokio::time::sleep(sleep).await;
        }
        if let Some(conn) = conn.as_mut() {
            if let Some(list) = &self.record {
                if self.order_check {
                    let _: i64 =
                        conn.decr(format!("{list}:running:{key}"), 1).await.map_err(HandlerError::transient)?;
                }
                let _: () = conn.rpush(list, work.n).await.map_err(HandlerError::transient)?;
            }
        }
        if let Some(output) = &self.output {
            let mut next = Envelope::new(message.kind.clone(), message.payload.clone());
            next.key.clone_from(&message.key);
            out.emit(output, next);
        }
        Ok(())
    }
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    hookbus_bus::run_worker("hookbus-test-stage", |settings| {
        let input = arg_value(&args, "--input").ok_or_else(|| ConfigError::invalid("--input", "is required"))?;
        let max_sleep_ms = arg_value(&args, "--max-sleep-ms")
            .map(|v| v.parse::<u64>().map_err(|e| ConfigError::invalid("--max-sleep-ms", e.to_string())))
            .transpose()?;
        let record = arg_value(&args, "--record");
        let started = arg_value(&args, "--started");
        let redis = if record.is_some() || started.is_some() {
            // Connects lazily: the effect list survives a Redis restart.
            let target = hookbus_bus::redis::RedisTarget::from_settings(&settings.redis);
            Some(
                hookbus_bus::redis::RedisConnection::open(&target, Duration::from_secs(10))
                    .map_err(|e| ConfigError::invalid("redis.url (REDIS_URL)", e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Stage {
            output: arg_value(&args, "--output"),
            order_check: args.iter().any(|a| a == "--order-check"),
            max_sleep: Duration::from_millis(max_sleep_ms.unwrap_or(u64::MAX)),
            record,
            started,
            redis,
            input,
        })
    })
    .await
}
