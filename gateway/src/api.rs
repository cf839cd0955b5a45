//! The client API: `POST /api/v1/changes` and `GET /api/v1/operations/{id}`,
//! behind bearer tokens (`HOOKBUS_API__TOKENS`). The change schema is in
//! `docs/api.md`; [`validate`] is its executable form.
//!
//! An accepted change becomes a `client.change` message on `normalise`
//! (payload `{operation, received_at, change}`) whose id is the operation id
//! the client polls. `GET /api/v1/operations/{id}` answers reconcile's record
//! of it (see [`crate::operations`]), or `accepted` while the change is
//! queued but not yet reconciled.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookbus_bus::envelope::now_ms;
use hookbus_bus::Envelope;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::intake::{Admission, Mark};
use crate::rejection::Rejection;
use crate::Gateway;

/// The message kind of a client change.
pub const KIND: &str = "client.change";

/// Largest change body accepted.
const MAX_CHANGE_BYTES: usize = 1024 * 1024;

/// The `client.change` payload.
#[derive(Debug, Serialize)]
pub struct ChangePayload<'a> {
    /// The operation id the client was given (the message id).
    pub operation: &'a str,
    pub received_at: i64,
    /// The validated request body.
    pub change: &'a Value,
}

/// `POST /api/v1/changes`.
pub async fn submit_change(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    match queue_change(&gateway, &headers, body).await {
        Ok(response) => response,
        Err(rejection) => refuse("change refused", rejection),
    }
}

async fn queue_change(gateway: &Gateway, headers: &HeaderMap, body: Body) -> Result<Response, Rejection> {
    let token = authorize(gateway, headers)?;
    let key = idempotency_key(headers)?;
    let raw = match Limited::new(body, MAX_CHANGE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than {MAX_CHANGE_BYTES} bytes"),
            ))
        }
        Err(err) => return Err(Rejection::bad_request(format!("could not read the body: {err}"))),
    };
    let change: Value =
        serde_json::from_slice(&raw).map_err(|err| Rejection::bad_request(format!("body is not JSON: {err}")))?;
    validate(&change)?;

    let mut envelope = Envelope::new(KIND, bytes::Bytes::new());
    if let Some(key) = key {
        // The same key (from the same token) is the same operation, so its
        // mark makes a retry a duplicate instead of a second change.
        envelope.id = keyed_operation(token, key);
        envelope.trace_id = envelope.id.clone();
    }
    let payload = ChangePayload { operation: &envelope.id, received_at: now_ms(), change: &change };
    envelope.payload = hookbus_bus::envelope::encode_payload(&payload)
        .map_err(|err| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode message: {err}")))?;
    let operation = envelope.id.clone();
    let admission = gateway.intake.admit(&Mark::Change(operation.clone()), &envelope, None).await.map_err(|err| {
        // A stalled or cut-off Redis may still run the write it had;
        // the id lets the client look before it sends the change again.
        let retry = match key {
            Some(_) => "send it again with the same Idempotency-Key",
            None => "send an Idempotency-Key to make a retry safe",
        };
        Rejection::unavailable(format!(
            "queue unavailable, not accepted (if the store ran the write after all, it is operation {operation}: \
                 GET /api/v1/operations/{operation}; {retry}): {err}"
        ))
    })?;
    let duplicate = match admission {
        Admission::Queued => false,
        // A retry with the same key: the first one is the operation.
        Admission::Seen { .. } if key.is_some() => true,
        // Operation ids are fresh UUIDs: a clash means the store is confused.
        Admission::Seen { .. } => return Err(Rejection::unavailable("operation id already in use; retry")),
    };
    let result = if duplicate { "duplicate" } else { "queued" };
    tracing::info!(trace_id = %operation, operation = %operation, result, "client change {result}");
    let mut body = serde_json::json!({
        "operation": operation,
        "state": "queued",
        "status_url": format!("/api/v1/operations/{operation}"),
    });
    if duplicate {
        body["duplicate"] = Value::Bool(true);
    }
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /api/v1/operations/{id}`: reconcile's record of the operation when
/// it has one; `{"id", "state": "accepted"}` for a change the gateway
/// accepted that reconcile has not recorded yet; 404 otherwise.
pub async fn operation(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let answer = async {
        authorize(&gateway, &headers)?;
        let well_formed =
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !well_formed {
            return Err(Rejection::new(StatusCode::NOT_FOUND, "no such operation"));
        }
        if let Some(operations) = &gateway.operations {
            let record = match tokio::time::timeout(gateway.timeout, operations.operation(&id)).await {
                Ok(Ok(record)) => record,
                Ok(Err(err)) => return Err(Rejection::unavailable(format!("operation records unavailable: {err}"))),
                Err(_) => {
                    return Err(Rejection::unavailable(format!(
                        "operation records unavailable: no answer within {:?}",
                        gateway.timeout
                    )))
                }
            };
            if let Some(record) = record {
                return Ok(Json(record).into_response());
            }
        }
        let accepted = gateway
            .bounded(gateway.intake.lookup(&Mark::Change(id.clone())))
            .await
            .map_err(|err| Rejection::unavailable(format!("store unavailable: {err}")))?;
        match accepted {
            // Queued on `normalise`, not yet reconciled.
            Some(_) => Ok(Json(serde_json::json!({ "id": id, "state": "accepted" })).into_response()),
            None => Err(Rejection::new(StatusCode::NOT_FOUND, "no such operation")),
        }
    };
    match answer.await {
        Ok(response) => response,
        Err(rejection) => refuse("operation lookup refused", rejection),
    }
}

fn refuse(what: &'static str, rejection: Rejection) -> Response {
    tracing::warn!(status = rejection.status.as_u16(), reason = %rejection.reason, "{what}");
    let mut response = rejection.clone().into_response();
    if rejection.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Accepts `Authorization: Bearer <token>` for any configured token,
/// comparing every one in constant time; returns the token presented.
fn authorize<'h>(gateway: &Gateway, headers: &'h HeaderMap) -> Result<&'h str, Rejection> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Rejection::unauthorized("missing bearer token"))?;
    let matched = gateway
        .tokens
        .iter()
        .fold(subtle::Choice::from(0), |acc, token| acc | token.expose().as_bytes().ct_eq(presented.as_bytes()));
    if bool::from(matched) {
        Ok(presented)
    } else {
        Err(Rejection::unauthorized("bearer token not accepted"))
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::bad_request(
            "Idempotency-Key: 1 to 255 visible ASCII characters (letters, digits, punctuation; no spaces)",
        ));
    }
    Ok(value.to_str().ok())
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The operation id of a change sent with `key` under `token`: a UUID
/// (version 8) made from SHA-256 over both, so the same key gives the same
/// operation, and two clients' keys never meet.
fn keyed_operation(token: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"hookbus change\0")
        .chain_update(token.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

const RESOURCES: [&str; 3] = ["issue", "comment", "release"];
const ACTIONS: [&str; 3] = ["create", "update", "delete"];

/// The type a field of `fields` must have.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    NonEmptyText,
    TextOrNull,
    State,
    TextList,
    IntOrNull,
    Bool,
}

fn record_fields(resource: &str) -> &'static [(&'static str, Kind)] {
    match resource {
        "issue" => &[
            ("title", Kind::NonEmptyText),
            ("body", Kind::TextOrNull),
            ("state", Kind::State),
            ("labels", Kind::TextList),
            ("assignees", Kind::TextList),
            ("milestone", Kind::IntOrNull),
        ],
        "comment" => &[("body", Kind::Text)],
        _ => &[
            ("tag_name", Kind::NonEmptyText),
            ("name", Kind::TextOrNull),
            ("body", Kind::TextOrNull),
            ("draft", Kind::Bool),
            ("prerelease", Kind::Bool),
        ],
    }
}

/// The field a `create` cannot do without.
fn required_on_create(resource: &str) -> &'static str {
    match resource {
        "issue" => "title",
        "comment" => "body",
        _ => "tag_name",
    }
}

/// Checks a change against the schema of `docs/api.md`; the first fault is
/// answered 422 naming its field.
pub fn validate(change: &Value) -> Result<(), Rejection> {
    let root = change.as_object().ok_or_else(|| Rejection::invalid_field("(body)", "must be a JSON object"))?;
    const TOP: [&str; 7] = ["repository", "resource", "action", "number", "id", "fields", "actor"];
    if let Some(unknown) = root.keys().find(|k| !TOP.contains(&k.as_str())) {
        return Err(Rejection::invalid_field(unknown.as_str(), "unknown field"));
    }
    let repository = text(root, "repository")?.ok_or_else(|| Rejection::invalid_field("repository", "is required"))?;
    let valid_part = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    match repository.split_once('/') {
        Some((owner, name)) if valid_part(owner) && valid_part(name) => {}
        _ => return Err(Rejection::invalid_field("repository", "must be \"owner/name\"")),
    }
    let resource = one_of(root, "resource", &RESOURCES)?;
    let action = one_of(root, "action", &ACTIONS)?;
    let number = positive(root, "number")?;
    let id = positive(root, "id")?;
    match (resource, action) {
        ("issue", "create") if number.is_some() => {
            return Err(Rejection::invalid_field("number", "must be absent when creating an issue"))
        }
        ("issue", "update" | "delete") if number.is_none() => {
            return Err(Rejection::invalid_field("number", "is required to change an existing issue"))
        }
        ("comment", "create") if number.is_none() => {
            return Err(Rejection::invalid_field("number", "is required: the issue to comment on"))
        }
        ("comment" | "release", "update" | "delete") if id.is_none() => {
            return Err(Rejection::invalid_field("id", format!("is required to change an existing {resource}")))
        }
        ("issue", _) if id.is_some() => return Err(Rejection::invalid_field("id", "issues are addressed by number")),
        ("release", _) if number.is_some() => {
            return Err(Rejection::invalid_field("number", "releases are addressed by id"))
        }
        _ => {}
    }
    validate_fields(root.get("fields"), resource, action)?;
    validate_actor(root.get("actor"))
}

fn validate_fields(fields: Option<&Value>, resource: &str, action: &str) -> Result<(), Rejection> {
    let fields = match (fields, action) {
        (None | Some(Value::Null), "delete") => return Ok(()),
        (Some(_), "delete") => return Err(Rejection::invalid_field("fields", "must be absent when deleting")),
        (None | Some(Value::Null), _) => return Err(Rejection::invalid_field("fields", "is required")),
        (Some(Value::Object(map)), _) => map,
        (Some(_), _) => return Err(Rejection::invalid_field("fields", "must be an object")),
    };
    if fields.is_empty() {
        return Err(Rejection::invalid_field("fields", "must change at least one field"));
    }
    let known = record_fields(resource);
    for (name, value) in fields {
        let path = format!("fields.{name}");
        let kind = known
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| Rejection::invalid_field(path.clone(), format!("is not a field of a {resource}")))?;
        let ok = match kind {
            Kind::Text => value.is_string(),
            Kind::NonEmptyText => value.as_str().is_some_and(|s| !s.trim().is_empty()),
            Kind::TextOrNull => value.is_string() || value.is_null(),
            Kind::State => matches!(value.as_str(), Some("open" | "closed")),
            Kind::TextList => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
            Kind::IntOrNull => value.is_null() || value.as_u64().is_some_and(|n| n > 0),
            Kind::Bool => value.is_boolean(),
        };
        if !ok {
            let expected = match kind {
                Kind::Text => "must be a string",
                Kind::NonEmptyText => "must be a non-empty string",
                Kind::TextOrNull => "must be a string or null",
                Kind::State => "must be \"open\" or \"closed\"",
                Kind::TextList => "must be a list of strings",
                Kind::IntOrNull => "must be a positive integer or null",
                Kind::Bool => "must be true or false",
            };
            return Err(Rejection::invalid_field(path, expected));
        }
    }
    let required = required_on_create(resource);
    if action == "create" && !fields.contains_key(required) {
        return Err(Rejection::invalid_field(
            format!("fields.{required}"),
            format!("is required to create a {resource}"),
        ));
    }
    Ok(())
}

fn validate_actor(actor: Option<&Value>) -> Result<(), Rejection> {
    let actor = match actor {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => return Err(Rejection::invalid_field("actor", "is required")),
        Some(_) => return Err(Rejection::invalid_field("actor", "must be an object")),
    };
    if let Some(unknown) = actor.keys().find(|k| !["login", "name", "email"].contains(&k.as_str())) {
        return Err(Rejection::invalid_field(format!("actor.{unknown}"), "unknown field"));
    }
    match text(actor, "login").map_err(|_| Rejection::invalid_field("actor.login", "must be a string"))? {
        Some(login) if !login.trim().is_empty() => {}
        _ => return Err(Rejection::invalid_field("actor.login", "is required")),
    }
    for optional in ["name", "email"] {
        match actor.get(optional) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(Rejection::invalid_field(format!("actor.{optional}"), "must be a string or null")),
        }
    }
    if let Some(Value::String(email)) = actor.get("email") {
        if !email.contains('@') {
            return Err(Rejection::invalid_field("actor.email", "must be an email address"));
        }
    }
    Ok(())
}

fn text<'v>(map: &'v Map<String, Value>, name: &str) -> Result<Option<&'v str>, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::invalid_field(name, "must be a string")),
    }
}

fn one_of(map: &Map<String, Value>, name: &str, allowed: &[&'static str]) -> Result<&'static str, Rejection> {
    let value = text(map, name)?.ok_or_else(|| Rejection::invalid_field(name, "is required"))?;
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .ok_or_else(|| Rejection::invalid_field(name, format!("must be one of {}", allowed.join(", "))))
}

fn positive(map: &Map<String, Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| Rejection::invalid_field(name, "must be a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_at_fault(change: Value) -> Option<String> {
        validate(&change).err().and_then(|r| r.field)
    }

    fn actor() -> Value {
        serde_json::json!({ "login": "octocat", "name": "The Octocat", "email": "octocat@example.com" })
    }

    #[test]
    fn well_formed_changes_pass() {
        let changes = [
            serde_json::json!({ "repository": "o/r", "resource": "issue", "action": "create",
                "fields": { "title": "Hi", "labels": ["bug"] }, "actor": actor() }),
            serde_json::json!({ "repository": "o/r", "resource": "issue", "action": "update", "number": 3,
                "fields": { "state": "closed", "milestone": null }, "actor": actor() }),
            serde_json::json!({ "repository": "o/r", "resource": "comment", "action": "create", "number": 3,
                "fields": { "body": "thanks" }, "actor": { "login": "octocat" } }),
            serde_json::json!({ "repository": "o/r", "resource": "release", "action": "delete", "id": 9,
                "actor": actor() }),
        ];
        for change in changes {
            assert!(validate(&change).is_ok(), "{change}");
        }
    }

    #[test]
    fn each_fault_names_its_field() {
        let base = || {
            serde_json::json!({ "repository": "o/r", "resource": "issue", "action": "update", "number": 3,
            "fields": { "title": "x" }, "actor": actor() })
        };
        type Breakage = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Breakage)> = vec![
            ("repository", Box::new(|c| c["repository"] = "no-slash".into())),
            ("resource", Box::new(|c| c["resource"] = "wiki".into())),
            ("action", Box::new(|c| c["action"] = "upsert".into())),
            ("number", Box::new(|c| c["number"] = (-1).into())),
            ("fields.title", Box::new(|c| c["fields"]["title"] = "".into())),
            ("fields.colour", Box::new(|c| c["fields"]["colour"] = "red".into())),
            ("fields.state", Box::new(|c| c["fields"]["state"] = "merged".into())),
            ("actor.login", Box::new(|c| c["actor"]["login"] = Value::Null)),
            ("actor.email", Box::new(|c| c["actor"]["email"] = "nobody".into())),
            ("extra", Box::new(|c| c["extra"] = true.into())),
        ];
        for (field, break_it) in cases {
            let mut change = base();
            break_it(&mut change);
            assert_eq!(field_at_fault(change).as_deref(), Some(field));
        }
    }
}
