//! `POST /webhooks/github` (SPEC §6).
//!
//! Order of checks, cheapest and least trusting first: the two GitHub
//! headers (400), the size (413, before reading more than the limit), the
//! signature over the raw bytes (401), the content type (415) and JSON
//! (400). The signature and the JSON grammar are checked in one pass over
//! the body ([`crate::json`]); a body that fails both is refused as
//! unsigned. Only then is anything written: one script call that enqueues the
//! `github.webhook` message and marks the delivery as seen (see
//! [`crate::intake`]). The answer is 202 (200 for `ping`) after Redis
//! acknowledged, 503 when it could not be reached, never 2xx otherwise.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hookbus_bus::envelope::{encode_payload_sized, now_ms};
use hookbus_bus::{DeadContent, Envelope, QUEUES};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use crate::intake::{Admission, Mark};
use crate::json::{self, JsonError};
use crate::rejection::Rejection;
use crate::signature::{SignatureError, SignedWith, WebhookSecrets};
use crate::{metrics, Gateway};

/// The message kind the gateway writes for `normalise`.
pub const KIND: &str = "github.webhook";

/// The id Heroku's router (and most proxies) give a request, logged so that
/// a router line (`request_id=…`, with its status and timing) leads to the
/// gateway's line. A header value that reads as text holds only visible
/// ASCII: it is logged as it is.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

// GitHub's headers, as names made once: looked up by a `&str`, a header
// name is checked and lowercased again on every request.
const EVENT: HeaderName = HeaderName::from_static("x-github-event");
const DELIVERY: HeaderName = HeaderName::from_static("x-github-delivery");
const SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");

/// Dead letters searched per queue when a known delivery comes again.
const DEAD_SCAN: usize = 1_000;

/// The `github.webhook` payload (SPEC §3). Borrowed: a 25 MiB body is not
/// copied to be encoded.
#[derive(Debug, Serialize)]
pub struct WebhookPayload<'a> {
    pub event: &'a str,
    pub delivery: &'a str,
    /// When the gateway accepted it, ms since epoch.
    pub received_at: i64,
    /// The request body exactly as received (for form posts, the decoded
    /// `payload` field), already verified.
    #[serde(with = "serde_bytes")]
    pub body: &'a [u8],
}

/// Headers as GitHub sends them, checked.
struct Delivery {
    event: String,
    id: String,
}

/// The handler: every outcome is counted and answered as JSON. Takes the
/// request whole, so that its headers are read where they are, not copied.
pub async fn receive(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let mut verified = false;
    match accept(&gateway, headers, body, &mut verified).await {
        Ok(response) => response,
        Err(rejection) => {
            // Signed by GitHub, its event name may become a label; before, not.
            let event = match verified {
                true => header_text(headers, &EVENT).unwrap_or(""),
                false => "unverified",
            };
            metrics::webhook(event, rejection.result_label());
            tracing::warn!(
                status = rejection.status.as_u16(),
                reason = %rejection.reason,
                event = %event,
                delivery = %printable(header_text(headers, &DELIVERY).unwrap_or("")),
                request_id = header_text(headers, &REQUEST_ID).unwrap_or(""),
                "webhook refused"
            );
            rejection.into_response()
        }
    }
}

/// Checks, stores and answers one webhook; sets `verified` once the
/// signature held.
async fn accept(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
    verified: &mut bool,
) -> Result<Response, Rejection> {
    let delivery = github_headers(headers)?;
    let raw = read_limited(body, headers, gateway.max_body).await?;
    let signature = headers.get(&SIGNATURE).map(|v| v.as_bytes());
    let content_type = header_text(headers, &header::CONTENT_TYPE);
    let checked = if raw.len() <= OFFLOAD_BYTES {
        check(&gateway.secrets, signature, content_type, raw)
    } else {
        let (secrets, signature, content_type) =
            (gateway.secrets.clone(), signature.map(<[u8]>::to_vec), content_type.map(str::to_owned));
        tokio::task::spawn_blocking(move || check(&secrets, signature.as_deref(), content_type.as_deref(), raw))
            .await
            .map_err(|err| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, format!("body check failed: {err}")))?
    };
    // The signature held unless it is what was refused.
    *verified = !matches!(&checked, Err(rejection) if rejection.status == StatusCode::UNAUTHORIZED);
    let (json, signed_with) = checked?;
    if signed_with == SignedWith::Previous {
        tracing::warn!(
            delivery = %delivery.id,
            event = %delivery.event,
            "webhook signed with the previous secret (HOOKBUS_GITHUB__PREVIOUS_WEBHOOK_SECRET): accepted; \
             save the new secret in the GitHub webhook's settings to finish the rotation"
        );
    }

    let payload = WebhookPayload { event: &delivery.event, delivery: &delivery.id, received_at: now_ms(), body: &json };
    // A fresh envelope's trace id is its own id: the webhook starts the trace.
    // Sized for the body plus the other fields, so the body is copied once.
    let encoded = encode_payload_sized(&payload, json.len() + delivery.event.len() + delivery.id.len() + 64)
        .map_err(|err| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode message: {err}")))?;
    let envelope = Envelope::new(KIND, encoded);
    let mark = Mark::Delivery(delivery.id.clone());

    // The intake keeps the gateway's bound itself (no timer per webhook).
    let admission = gateway.intake.admit(&mark, &envelope, None).await.map_err(|err| Rejection::not_stored(&err))?;
    let (status, body, result) = match admission {
        Admission::Queued => (accepted_status(&delivery), accepted_body(&envelope, &delivery), "accepted"),
        Admission::Seen { message_id } => match ended_dead(gateway, &message_id).await? {
            false => (accepted_status(&delivery), Answer::duplicate(message_id, &delivery), "duplicate"),
            true => {
                let again = gateway
                    .intake
                    .admit(&mark, &envelope, Some(&message_id))
                    .await
                    .map_err(|err| Rejection::not_stored(&err))?;
                match again {
                    Admission::Queued => {
                        (accepted_status(&delivery), accepted_body(&envelope, &delivery), "redelivered")
                    }
                    // Another copy of this redelivery won the race.
                    Admission::Seen { message_id } => {
                        (accepted_status(&delivery), Answer::duplicate(message_id, &delivery), "duplicate")
                    }
                }
            }
        },
    };
    metrics::webhook(&delivery.event, result);
    tracing::info!(
        trace_id = %envelope.trace_id,
        delivery = %delivery.id,
        event = %delivery.event,
        result,
        bytes = json.len(),
        request_id = header_text(headers, &REQUEST_ID).unwrap_or(""),
        "webhook {result}"
    );
    Ok((status, Json(body)).into_response())
}

fn accepted_status(delivery: &Delivery) -> StatusCode {
    if delivery.event == "ping" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}

/// The body of a 2xx answer: `{"id", "delivery"}`, plus `"duplicate": true`
/// when the delivery was already accepted as message `id`.
#[derive(Debug, Serialize)]
struct Answer {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    id: String,
    delivery: String,
}

impl Answer {
    fn duplicate(message_id: String, delivery: &Delivery) -> Self {
        Answer { duplicate: true, id: message_id, delivery: delivery.id.clone() }
    }
}

fn accepted_body(envelope: &Envelope, delivery: &Delivery) -> Answer {
    Answer { duplicate: false, id: envelope.id.clone(), delivery: delivery.id.clone() }
}

/// Whether the message a delivery became (or any message it caused: they
/// share its trace id) lies among the dead letters of a pipeline queue.
async fn ended_dead(gateway: &Gateway, trace_id: &str) -> Result<bool, Rejection> {
    for queue in QUEUES {
        let letters = gateway
            .bounded(gateway.backend.dead_list(queue, DEAD_SCAN))
            .await
            .map_err(|err| Rejection::not_stored(&err))?;
        let found = letters.iter().any(|letter| match &letter.content {
            DeadContent::Envelope(envelope) => envelope.trace_id == trace_id,
            DeadContent::Raw(_) => false,
        });
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

fn github_headers(headers: &HeaderMap) -> Result<Delivery, Rejection> {
    let event = header_text(headers, &EVENT)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Rejection::bad_request("missing X-GitHub-Event header"))?;
    if event.len() > 64 || !event.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
        return Err(Rejection::bad_request("X-GitHub-Event is not an event name"));
    }
    let id = header_text(headers, &DELIVERY)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Rejection::bad_request("missing X-GitHub-Delivery header"))?;
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(Rejection::bad_request("X-GitHub-Delivery is not a delivery id"));
    }
    Ok(Delivery { event: event.to_string(), id: id.to_string() })
}

fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A header value fit for one log line.
fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(128).collect()
}

fn too_large(limit: usize) -> Rejection {
    Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body is larger than {limit} bytes"))
}

/// Reads at most `limit` bytes; a larger body is refused without reading on.
async fn read_limited(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Rejection> {
    let declared = header_text(headers, &header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Err(err) => Err(Rejection::bad_request(format!("could not read the body: {err}"))),
    }
}

/// Bodies larger than this are verified and validated on the runtime's
/// blocking pool. HMAC and JSON validation take about a millisecond per MiB;
/// done on the serving thread, a 25 MiB body would hold up every other
/// connection of that thread for tens of milliseconds.
const OFFLOAD_BYTES: usize = 1024 * 1024;

/// The signature over `raw` (401, and only then), then its JSON document
/// (415, 400).
fn check(
    secrets: &WebhookSecrets,
    signature: Option<&[u8]>,
    content_type: Option<&str>,
    raw: Bytes,
) -> Result<(Bytes, SignedWith), Rejection> {
    let unauthorized = |err: SignatureError| Rejection::unauthorized(err.to_string());
    let mut verification = secrets.begin(signature).map_err(unauthorized)?;
    match Media::of(content_type) {
        Media::Json => {
            // One pass: the JSON check feeds the HMAC as it goes (json.rs).
            let grammar = json::validate(&raw, |piece| verification.update(piece));
            let signed_with = verification.finish(&raw).map_err(unauthorized)?;
            json_text(&raw, grammar)?;
            Ok((raw, signed_with))
        }
        Media::Form => {
            verification.update(&raw);
            let signed_with = verification.finish(&raw).map_err(unauthorized)?;
            let payload = form_payload(&raw)
                .map(Bytes::from)
                .ok_or_else(|| Rejection::bad_request("form body has no payload field"))?;
            json_text(&payload, json::validate(&payload, |_| {}))?;
            Ok((payload, signed_with))
        }
        Media::Other => {
            verification.update(&raw);
            verification.finish(&raw).map_err(unauthorized)?;
            Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content type must be application/json or application/x-www-form-urlencoded",
            ))
        }
    }
}

/// What a webhook's `Content-Type` says its body is.
enum Media {
    /// `application/json`, or no type at all.
    Json,
    /// `application/x-www-form-urlencoded`: the JSON is its `payload` field.
    Form,
    Other,
}

impl Media {
    fn of(content_type: Option<&str>) -> Media {
        let mime = content_type.unwrap_or("").split(';').next().unwrap_or("").trim();
        if mime.is_empty() || mime.eq_ignore_ascii_case("application/json") {
            Media::Json
        } else if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Media::Form
        } else {
            Media::Other
        }
    }
}

/// Whether `text` is a JSON document, given its grammar's verdict. JSON text
/// is UTF-8 (RFC 8259 §8.1), which the grammar check does not look at (a
/// tenth of a µs for 6 KiB).
fn json_text(text: &[u8], grammar: Result<(), JsonError>) -> Result<(), Rejection> {
    std::str::from_utf8(text).map_err(|err| Rejection::bad_request(format!("body is not JSON: not UTF-8 ({err})")))?;
    grammar.map_err(|err| Rejection::bad_request(format!("body is not JSON: {err}")))
}

/// The `payload` field of a form body, decoded to its exact bytes.
/// (`form_urlencoded::parse` would replace bytes that are not UTF-8 with
/// U+FFFD: a changed body, accepted without a word.)
fn form_payload(raw: &[u8]) -> Option<Vec<u8>> {
    let decode = |part: &[u8]| -> Vec<u8> {
        let spaced: Vec<u8> = part.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        percent_encoding::percent_decode(&spaced).collect()
    };
    raw.split(|&b| b == b'&').find_map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        (decode(name) == b"payload").then(|| decode(value))
    })
}
