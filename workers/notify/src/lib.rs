//! hookbus-notify: the last stage (SPEC §6 "notify").
//!
//! One plugin on the `notify` queue handles five kinds of message:
//!
//! - `record.synced` (from commit-to-git): the event is published on
//!   `<prefix>:events` ([`events`]) and fanned out: one `notify.delivery`
//!   per matching subscriber, keyed `subscriber:<name>:<resource key>`, and
//!   for an outbound change one `github.writeback`, keyed
//!   `writeback:<resource key>`. Each is its own message with its own
//!   retries and dead letter, so a slow or failing subscriber (or a rate
//!   limited GitHub) delays nobody else, while one subscriber still gets
//!   one resource's events in order.
//! - `notify.delivery`: one signed POST ([`subscriber`]).
//! - `github.writeback`: one change applied to GitHub ([`writeback`]).
//!
//!   Both look their effect up in the [`effects`] log first and record it
//!   once it happened, so a message that comes twice (at-least-once
//!   delivery) POSTs or writes once.
//! - `bus.dead` (from the runner of any queue): an alert to the alert
//!   webhook, at most one per queue per window ([`alert`]); notices inside
//!   a window are counted and reported by the next alert, or by a
//!   `notify.alert_flush` that waits for the window to close.
//! - `notify.alert_flush`: see above.
//!
//! Wire types are in [`wire`]; the event schema is `docs/events.md`.

pub mod alert;
pub mod effects;
pub mod error;
pub mod events;
pub mod subscriber;
pub mod wire;
pub mod writeback;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::redis::{RedisConnection, RedisTarget};
use hookbus_bus::runner::{DeadNotice, DEAD_NOTICE_KIND};
use hookbus_bus::{Envelope, HandlerError, Outbox, Plugin};
use hookbus_config::{Secret, Settings, Subscribers};

use crate::alert::{AlertWindow, MemoryAlertWindow, RedisAlertWindow, Window};
use crate::effects::{EffectLog, MemoryEffectLog, RedisEffectLog};
pub use crate::error::NotifyError;
use crate::events::{BroadcastEvents, EventPublisher, RedisEvents};
use crate::wire::{
    AlertFlushPayload, DeliveryPayload, Event, Synced, WritebackPayload, ALERT_FLUSH_KIND, DELIVERY_KIND, SYNCED_KIND,
    WRITEBACK_KIND,
};
use crate::writeback::GitHub;

/// The queue notify consumes, and emits its own messages to.
pub const QUEUE: &str = "notify";

/// How long the alert webhook and GitHub get to answer.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// The notify plugin.
pub struct Notify {
    subscribers: Subscribers,
    http: reqwest::Client,
    events: Arc<dyn EventPublisher>,
    alerts: Arc<dyn AlertWindow>,
    effects: Arc<dyn EffectLog>,
    alert_webhook: Option<Secret>,
    alert_window: Duration,
    /// None without credentials (`github.token` or the App's
    /// installation): write-backs go dead saying so.
    github: Option<GitHub>,
}

impl Notify {
    /// Over Redis: events on `<prefix>:events`, alert windows and the
    /// effects log in Redis, shared by every notify process. Connects lazily.
    pub fn from_settings(settings: &Settings) -> Result<Self, NotifyError> {
        let conn = redis_connection(settings)?;
        let prefix = &settings.bus.prefix;
        Self::new(
            settings,
            Arc::new(RedisEvents::new(conn.clone(), prefix)),
            Arc::new(RedisAlertWindow::new(conn.clone(), prefix)),
            Arc::new(RedisEffectLog::new(conn, prefix)),
        )
    }

    /// In one process (`hookbus dev` over the memory bus): events go to the
    /// returned broadcast, alert windows and the effects log live in memory.
    pub fn in_memory(settings: &Settings) -> Result<(Self, Arc<BroadcastEvents>), NotifyError> {
        let events = Arc::new(BroadcastEvents::new(1024));
        let notify = Self::new(
            settings,
            events.clone(),
            Arc::new(MemoryAlertWindow::default()),
            Arc::new(MemoryEffectLog::default()),
        )?;
        Ok((notify, events))
    }

    /// With explicit parts.
    pub fn new(
        settings: &Settings,
        events: Arc<dyn EventPublisher>,
        alerts: Arc<dyn AlertWindow>,
        effects: Arc<dyn EffectLog>,
    ) -> Result<Self, NotifyError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("hookbus-notify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Setup(format!("HTTP client: {e}")))?;
        let github = match hookbus_github::Credentials::from_settings(&settings.github)? {
            None => None,
            Some(credentials) => Some(GitHub::new(&settings.github.api_url, credentials, REMOTE_TIMEOUT)?),
        };
        Ok(Notify {
            subscribers: settings.notify.subscribers.clone(),
            http,
            events,
            alerts,
            effects,
            alert_webhook: settings.notify.alert_webhook().cloned(),
            alert_window: settings.notify.alert_window(),
            github,
        })
    }

    async fn fan_out(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let synced: Synced = message.payload_as()?;
        let event = Event::from(&synced);
        let body = serde_json::to_string(&event).map_err(NotifyError::from)?;
        self.events.publish(&body).await?;
        for subscriber in self.subscribers.iter().filter(|s| s.wants(&synced.repository, &synced.kind)) {
            let delivery = DeliveryPayload {
                subscriber: subscriber.name.clone(),
                delivery: wire::delivery_id(&synced.operation, &subscriber.name),
                event: SYNCED_KIND.into(),
                operation: synced.operation.clone(),
                resource: synced.key.clone(),
                body: body.clone(),
            };
            let key = format!("subscriber:{}:{}", subscriber.name, synced.key);
            out.emit_payload(QUEUE, DELIVERY_KIND, Some(&key), &delivery)?;
        }
        if synced.is_outbound() {
            let change = WritebackPayload {
                operation: synced.operation.clone(),
                resource: synced.key.clone(),
                repository: synced.repository.clone(),
                kind: synced.kind.clone(),
                action: synced.action.clone(),
                number: synced.number,
                id: synced.id,
                changes: synced.changes.clone().unwrap_or_default(),
            };
            out.emit_payload(QUEUE, WRITEBACK_KIND, Some(&format!("writeback:{}", synced.key)), &change)?;
        }
        Ok(())
    }

    async fn deliver(&self, message: &Envelope) -> Result<(), HandlerError> {
        let delivery: DeliveryPayload = message.payload_as()?;
        self.once(&effects::delivery(&delivery.delivery), async {
            let subscriber = self.subscribers.get(&delivery.subscriber).ok_or_else(|| {
                HandlerError::Permanent(format!(
                    "subscriber {} is no longer configured (notify.subscribers)",
                    delivery.subscriber
                ))
            })?;
            subscriber::deliver(&self.http, subscriber, &delivery).await
        })
        .await
    }

    async fn write_back(&self, message: &Envelope) -> Result<(), HandlerError> {
        let change: WritebackPayload = message.payload_as()?;
        self.once(&effects::writeback(&change.operation), async {
            let Some(github) = &self.github else {
                return Err(HandlerError::Permanent(format!(
                    "cannot write back operation {}: no GitHub credentials, set HOOKBUS_GITHUB__TOKEN (or a GitHub \
                     App: HOOKBUS_GITHUB__APP_ID and HOOKBUS_GITHUB__APP_PRIVATE_KEY)",
                    change.operation
                )));
            };
            if writeback::creates(&change) {
                let effect = effects::writeback(&change.operation);
                if let Some(began) = self.effects.begin(&effect, hookbus_bus::envelope::now_ms()).await? {
                    // An earlier attempt may have created it: its answer was
                    // lost, or its process died before recording.
                    if let Some(made) = github.find_created(&change, began).await? {
                        tracing::info!(
                            operation = %change.operation, resource = %change.resource, created = made,
                            "an earlier attempt already created it on GitHub; not created twice"
                        );
                        return Ok(());
                    }
                }
            }
            github.apply(&change).await?;
            tracing::info!(operation = %change.operation, resource = %change.resource, "written back to GitHub");
            Ok(())
        })
        .await
    }

    /// Runs `act` unless `effect` is in the effects log, and records it once
    /// `act` succeeded. A failure to record is logged, not returned: retrying
    /// the message would repeat the effect for certain, while a missing
    /// record repeats it only if the message comes again.
    async fn once(
        &self,
        effect: &str,
        act: impl std::future::Future<Output = Result<(), HandlerError>>,
    ) -> Result<(), HandlerError> {
        if self.effects.done(effect).await? {
            tracing::info!(effect, "already done (the message came again); not done twice");
            return Ok(());
        }
        act.await?;
        if let Err(err) = self.effects.record(effect).await {
            tracing::warn!(effect, error = %err, "cannot record the effect; a redelivery would repeat it");
        }
        Ok(())
    }

    async fn dead_notice(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        let notice: DeadNotice = message.payload_as()?;
        tracing::warn!(
            queue = %notice.queue, id = %notice.id, kind = %notice.kind, reason = %notice.reason,
            given_up = notice.given_up, "message dead"
        );
        let Some(webhook) = &self.alert_webhook else { return Ok(()) };
        match self.alerts.notice(&notice.queue, self.alert_window).await? {
            Window::Opened { folded } => {
                self.post_alert(webhook, &notice.queue, &notice_text(&notice, folded), folded).await
            }
            Window::Open { folded, reopens_in } => {
                // The first notice folded into this window makes sure it is
                // reported once the window closes, even if no other comes.
                if folded == 1 {
                    let flush = AlertFlushPayload { queue: notice.queue.clone() };
                    out.emit_payload(QUEUE, ALERT_FLUSH_KIND, None, &flush)?;
                }
                tracing::debug!(queue = %notice.queue, folded, ?reopens_in, "alert folded");
                Ok(())
            }
            Window::Idle => Ok(()),
        }
    }

    async fn flush_alerts(&self, message: &Envelope) -> Result<(), HandlerError> {
        let flush: AlertFlushPayload = message.payload_as()?;
        let Some(webhook) = &self.alert_webhook else { return Ok(()) };
        match self.alerts.flush(&flush.queue, self.alert_window).await? {
            Window::Opened { folded } => {
                let text = format!(
                    "hookbus: {folded} more message(s) went dead on queue `{}` (folded since the last alert); \
                     `hookbus dead list {}` shows them",
                    flush.queue, flush.queue
                );
                self.post_alert(webhook, &flush.queue, &text, folded).await
            }
            Window::Open { reopens_in, .. } => {
                Err(HandlerError::Defer(reopens_in, format!("alert window of queue {} still open", flush.queue)))
            }
            Window::Idle => Ok(()),
        }
    }

    /// Posts `text`; on success the `folded` notices it reported are
    /// subtracted, on failure the window is closed again for the retry.
    async fn post_alert(&self, webhook: &Secret, queue: &str, text: &str, folded: u64) -> Result<(), HandlerError> {
        let sent = self
            .http
            .post(webhook.expose())
            .timeout(REMOTE_TIMEOUT)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("alert webhook answered {}", response.status().as_u16())),
            // Without the URL: it carries the webhook's credential.
            Err(err) => Some(format!("alert webhook: {}", err.without_url())),
        };
        match failure {
            None => {
                self.alerts.posted(queue, folded).await?;
                tracing::info!(queue, folded, "alert posted");
                Ok(())
            }
            Some(reason) => {
                self.alerts.failed(queue).await?;
                Err(HandlerError::Transient(reason))
            }
        }
    }
}

fn notice_text(notice: &DeadNotice, folded: u64) -> String {
    let what = if notice.given_up {
        format!(
            "the dead-letter sweep gave up on message {} ({}) on queue `{}` after {} re-drives; it stays dead",
            notice.id, notice.kind, notice.queue, notice.redrives
        )
    } else {
        format!(
            "message {} ({}) went dead on queue `{}` after {} attempt(s)",
            notice.id, notice.kind, notice.queue, notice.attempts
        )
    };
    let more = match folded {
        0 => String::new(),
        n => format!(" (+{n} more folded since the last alert on this queue)"),
    };
    format!("hookbus: {what}: {}{more}; trace {}", notice.reason, notice.trace_id)
}

/// One server or a Redis Cluster, as `redis.*` says. The errors name the
/// setting, not the URL: it carries the password.
fn redis_connection(settings: &Settings) -> Result<RedisConnection, NotifyError> {
    RedisConnection::open(&RedisTarget::from_settings(&settings.redis), Duration::from_secs(2))
        .map_err(|e| NotifyError::Setup(e.to_string()))
}

#[async_trait]
impl Plugin for Notify {
    fn name(&self) -> &str {
        "notify"
    }

    fn input(&self) -> &str {
        QUEUE
    }

    fn outputs(&self) -> Vec<String> {
        vec![QUEUE.into()]
    }

    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        match message.kind.as_str() {
            SYNCED_KIND => self.fan_out(message, out).await,
            DELIVERY_KIND => self.deliver(message).await,
            WRITEBACK_KIND => self.write_back(message).await,
            DEAD_NOTICE_KIND => self.dead_notice(message, out).await,
            ALERT_FLUSH_KIND => self.flush_alerts(message).await,
            other => Err(HandlerError::Permanent(format!("notify does not handle messages of kind {other:?}"))),
        }
    }
}
