//! One delivery to one subscriber: a signed POST of the event's exact bytes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use hookbus_bus::HandlerError;
use hookbus_config::SubscriberSettings;
use sha2::Sha256;

use crate::wire::DeliveryPayload;

/// A subscriber's `Retry-After` is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// `sha256=<hex>`: HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; the error cannot happen.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs the event. 2xx is done; a timeout, a network error, 408, 429 and
/// 5xx are retried (429 after its `Retry-After`); any other answer will
/// not change on a retry and is dead at once.
pub async fn deliver(
    http: &reqwest::Client,
    subscriber: &SubscriberSettings,
    delivery: &DeliveryPayload,
) -> Result<(), HandlerError> {
    let name = &subscriber.name;
    let sent = http
        .post(&subscriber.url)
        .timeout(subscriber.timeout())
        .header("content-type", "application/json")
        .header("X-Hookbus-Event", &delivery.event)
        .header("X-Hookbus-Delivery", &delivery.delivery)
        .header("X-Hookbus-Signature-256", signature(subscriber.secret.expose(), delivery.body.as_bytes()))
        .body(delivery.body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) if err.is_timeout() => {
            return Err(HandlerError::Transient(format!(
                "subscriber {name}: no answer within {} ms",
                subscriber.timeout_ms
            )))
        }
        Err(err) => return Err(HandlerError::Transient(format!("subscriber {name}: {}", err.without_url()))),
    };
    let status = response.status().as_u16();
    let what = format!("subscriber {name} answered {status} to delivery {}", delivery.delivery);
    match status {
        200..=299 => {
            tracing::debug!(subscriber = %name, delivery = %delivery.delivery, "delivered");
            Ok(())
        }
        429 => {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
            Err(match wait {
                Some(wait) => HandlerError::Defer(wait, what),
                None => HandlerError::Transient(what),
            })
        }
        408 | 500..=599 => Err(HandlerError::Transient(what)),
        // Redirects are followed by the client; what is left is a refusal.
        _ => Err(HandlerError::Permanent(what)),
    }
}
