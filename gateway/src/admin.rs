//! `/admin`: the operator dashboard (SPEC §8).
//!
//! One self-contained page (`admin.html`: inline CSS and vanilla JS, system
//! fonts, no CDN) that polls JSON under `/admin/api/`:
//!
//! - `GET  /admin/api/overview` — every queue's depths and per-minute
//!   throughput, every worker process (alive, stopped or lost, with its
//!   counters and last-seen time), recent commits;
//! - `GET  /admin/api/dead` — dead letters of every queue, decoded;
//! - `GET  /admin/api/operations?q=` — operation records with their audit
//!   trail, found by resource key, operation id or delivery id;
//! - `POST /admin/api/dead/{queue}/retry`, `/delete` — `{"id": …}` or
//!   `{"all": true}`.
//!
//! Access ([`AdminAccess`]): with `admin.password` set, HTTP Basic (user
//! `admin`) on every route; without it `/admin` does not exist (404) —
//! except in `hookbus dev`, for requests from loopback to a loopback host
//! name. Every request that is not a GET must come from the page itself:
//! its `Origin` (or, failing that, `Referer`) must be this gateway, and it
//! must carry the page's CSRF token in `X-Hookbus-Csrf`; otherwise 403 with
//! a JSON reason. Nothing here reads settings or secrets, and payload fields
//! whose names say they hold one are masked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use hookbus_bus::envelope::now_ms;
use hookbus_bus::{DeadSelector, QUEUES};
use hookbus_config::{Secret, Settings};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::intake::Mark;
use crate::rejection::Rejection;
use crate::Gateway;

/// The page, with `{{nonce}}` and `{{csrf}}` filled in per response.
const PAGE: &str = include_str!("admin.html");
/// The user name HTTP Basic expects.
pub const USER: &str = "admin";
/// The header carrying the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-hookbus-csrf";
/// The journal the commit stage records pushed commits in.
pub const COMMITS_JOURNAL: &str = "commits";
/// Minutes of throughput shown per queue.
const THROUGHPUT_MINUTES: usize = 30;
/// Dead letters shown per queue.
const DEAD_SHOWN: usize = 25;
/// Commits shown.
const COMMITS_SHOWN: usize = 30;
/// A dead letter whose JSON is larger than this is shown without its payload.
const LARGEST_SHOWN_LETTER: usize = 256 * 1024;

/// Who may use `/admin`.
#[derive(Clone)]
pub enum AdminAccess {
    /// No password configured: `/admin` answers 404.
    Off,
    /// HTTP Basic, user [`USER`], this password.
    Password(Secret),
    /// `hookbus dev` without a password: open to loopback peers only.
    Loopback,
}

/// The access rule and the CSRF token of the page.
#[derive(Clone)]
pub struct Admin {
    access: AdminAccess,
    /// `X-Hookbus-Csrf` value the page is given and every POST must carry:
    /// an HMAC of the password (the same on every web dyno, so a POST may
    /// land on another one), or of random bytes in dev mode.
    csrf: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match self.access {
            AdminAccess::Off => "off",
            AdminAccess::Password(_) => "password",
            AdminAccess::Loopback => "loopback",
        };
        f.debug_struct("Admin").field("access", &access).finish_non_exhaustive()
    }
}

impl Admin {
    /// As the settings say: a password enables it; otherwise off.
    pub fn from_settings(settings: &Settings) -> Self {
        match settings.admin.password() {
            Some(password) => Admin {
                csrf: csrf_token(password.expose().as_bytes()),
                access: AdminAccess::Password(password.clone()),
            },
            None => Admin { access: AdminAccess::Off, csrf: String::new() },
        }
    }

    /// Dev mode: without a password, open to loopback.
    pub fn in_dev_mode(self) -> Self {
        match self.access {
            AdminAccess::Off => {
                let key: [u8; 32] = rand::random();
                Admin { access: AdminAccess::Loopback, csrf: csrf_token(&key) }
            }
            _ => self,
        }
    }

    pub fn access(&self) -> &AdminAccess {
        &self.access
    }
}

fn csrf_token(key: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(b"hookbus admin csrf v1");
    hex::encode(mac.finalize().into_bytes())
}

/// The `/admin` routes, guarded.
pub fn routes(state: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/dead", get(dead_letters))
        .route("/admin/api/operations", get(operations))
        .route("/admin/api/dead/{queue}/retry", post(retry))
        .route("/admin/api/dead/{queue}/delete", post(delete))
        .route_layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Authentication, then the same-origin rule for anything but GET/HEAD.
async fn guard(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let admin = &gateway.admin;
    match &admin.access {
        AdminAccess::Off => return StatusCode::NOT_FOUND.into_response(),
        AdminAccess::Loopback => {
            let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
            let from_loopback = peer.is_some_and(|peer| peer.ip().is_loopback());
            // A loopback host name too: a DNS-rebinding page naming its own
            // host cannot reach the dev dashboard.
            if !from_loopback || !loopback_host(request.headers()) {
                return StatusCode::NOT_FOUND.into_response();
            }
        }
        AdminAccess::Password(password) => {
            if !basic_auth_matches(request.headers(), password) {
                tracing::warn!(path = %request.uri().path(), "admin: credentials missing or wrong");
                let mut response =
                    Rejection::unauthorized("admin credentials required (HTTP Basic, user admin)").into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"hookbus admin\", charset=\"UTF-8\""),
                );
                return response;
            }
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if let Err(reason) = same_origin(request.headers()) {
            tracing::warn!(path = %request.uri().path(), reason, "admin: cross-origin request refused");
            return Rejection::new(StatusCode::FORBIDDEN, reason).into_response();
        }
        let token = request.headers().get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
        if admin.csrf.is_empty() || !bool::from(token.ct_eq(admin.csrf.as_bytes())) {
            tracing::warn!(path = %request.uri().path(), "admin: CSRF token missing or wrong");
            return Rejection::new(StatusCode::FORBIDDEN, "CSRF token missing or wrong: reload the admin page")
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn basic_auth_matches(headers: &HeaderMap, password: &Secret) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else { return false };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else { return false };
    let (user, given) = (&decoded[..colon], &decoded[colon + 1..]);
    // Both compared in full, in constant time, whatever the first says.
    let user_ok = user.ct_eq(USER.as_bytes());
    let password_ok = given.ct_eq(password.expose().as_bytes());
    bool::from(user_ok & password_ok)
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The request's `Origin` (or `Referer`, when a browser sent no Origin)
/// must name this gateway: scheme from `X-Forwarded-Proto` (Heroku's router
/// sets it) or `http`, and the `Host` header.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).ok_or("no Host header")?;
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .map(|p| p.split(',').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "http".into());
    let ours = format!("{scheme}://{host}");
    if let Some(origin) = headers.get(header::ORIGIN) {
        return match origin.to_str() {
            Ok(origin) if origin.eq_ignore_ascii_case(&ours) => Ok(()),
            _ => Err("cross-origin request refused: Origin is not this gateway"),
        };
    }
    let referer = headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .ok_or("cross-origin request refused: neither Origin nor Referer says where it came from")?;
    let rest = referer.get(ours.len()..).unwrap_or("x");
    let same = referer.get(..ours.len()).is_some_and(|start| start.eq_ignore_ascii_case(&ours))
        && (rest.is_empty() || rest.starts_with('/'));
    if same {
        Ok(())
    } else {
        Err("cross-origin request refused: Referer is not this gateway")
    }
}

/// `GET /admin`: the page.
async fn page(State(gateway): State<Arc<Gateway>>) -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let html = PAGE.replace("{{nonce}}", &nonce).replace("{{csrf}}", &gateway.admin.csrf);
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %err, "admin: {what} unavailable");
    Rejection::unavailable(format!("{what} unavailable: {err}")).into_response()
}

/// `GET /admin/api/overview`: queues with throughput, processes, commits.
async fn overview(State(gateway): State<Arc<Gateway>>) -> Response {
    let now = now_ms();
    let mut queues = Vec::new();
    let mut processes = Vec::new();
    for queue in QUEUES {
        let depths = match gateway.bounded(gateway.backend.depths(queue)).await {
            Ok(depths) => depths,
            Err(err) => return unavailable("queue depths", err),
        };
        let minutes = match gateway.bounded(gateway.backend.throughput(queue, THROUGHPUT_MINUTES)).await {
            Ok(minutes) => minutes,
            Err(err) => return unavailable("throughput", err),
        };
        queues.push(json!({ "queue": queue, "depths": depths, "throughput": minutes }));
        match gateway.bounded(gateway.backend.processes(queue)).await {
            Ok(reports) => processes.extend(reports.into_iter().map(|report| process_json(&report, now))),
            Err(err) => return unavailable("worker processes", err),
        }
    }
    let commits = match gateway.bounded(gateway.backend.journal_recent(COMMITS_JOURNAL, COMMITS_SHOWN)).await {
        Ok(commits) => commits,
        Err(err) => return unavailable("recent commits", err),
    };
    // Not worth failing the page for: without an answer, no warning.
    let risks = gateway.bounded(gateway.backend.durability_risks()).await.unwrap_or_default();
    Json(json!({ "now": now, "queues": queues, "processes": processes, "commits": commits, "risks": risks }))
        .into_response()
}

/// One worker process as the page shows it: its report, whether it is
/// alive / stopped / lost, and its mean handler latency.
pub fn process_json(report: &hookbus_bus::ProcessReport, now: i64) -> Value {
    let state = if report.stopped {
        "stopped"
    } else if report.alive(now) {
        "alive"
    } else {
        "lost"
    };
    let mean_ms = match report.latency_count {
        0 => None,
        n => Some(report.latency_sum_micros as f64 / n as f64 / 1_000.0),
    };
    let mut value = serde_json::to_value(report).unwrap_or(Value::Null);
    value["state"] = json!(state);
    value["latency_mean_ms"] = json!(mean_ms);
    value["latency_max_ms"] = json!(report.latency_max_micros as f64 / 1_000.0);
    value
}

#[derive(Deserialize)]
struct DeadQuery {
    limit: Option<usize>,
}

/// `GET /admin/api/dead`: the newest dead letters of every queue, decoded.
async fn dead_letters(State(gateway): State<Arc<Gateway>>, Query(query): Query<DeadQuery>) -> Response {
    let limit = query.limit.unwrap_or(DEAD_SHOWN).clamp(1, 500);
    let mut queues = Vec::new();
    for queue in QUEUES {
        let letters = match gateway.bounded(gateway.backend.dead_list(queue, limit)).await {
            Ok(letters) => letters,
            Err(err) => return unavailable("dead letters", err),
        };
        let letters: Vec<Value> = letters.iter().map(|letter| shown_letter(letter.to_json(), &letter.id())).collect();
        queues.push(json!({ "queue": queue, "letters": letters }));
    }
    Json(json!({ "queues": queues })).into_response()
}

/// A dead letter as the page shows it: the CLI's decoding, a webhook body
/// parsed as the JSON it is, secrets masked, huge payloads left out.
fn shown_letter(mut letter: Value, id: &str) -> Value {
    letter["id"] = json!(id);
    if let Some(body) = letter.pointer_mut("/payload/body") {
        if let Some(parsed) = body.as_str().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
            *body = parsed;
        }
    }
    mask_secrets(&mut letter);
    let size = letter.to_string().len();
    if size > LARGEST_SHOWN_LETTER {
        letter["payload"] = json!(format!("<{size} bytes: too large to show here; use `hookbus peek <queue> --dead`>"));
    }
    letter
}

/// Masks the values of fields whose names say they hold a secret.
pub fn mask_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                let lower = name.to_ascii_lowercase();
                let secret = ["secret", "password", "token", "authorization", "credential", "private_key"]
                    .iter()
                    .any(|word| lower.contains(word));
                if secret && !field.is_null() {
                    *field = json!("***");
                } else {
                    mask_secrets(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// `GET /admin/api/operations?q=`: `q` is tried as an operation id, a
/// resource key, then a delivery id. The answer says which it matched and
/// lists the records (newest first) with their history.
async fn operations(State(gateway): State<Arc<Gateway>>, Query(query): Query<SearchQuery>) -> Response {
    let q = query.q.trim();
    if q.is_empty() || q.len() > 512 {
        return Rejection::bad_request("q: give a resource key, an operation id or a delivery id (up to 512 bytes)")
            .into_response();
    }
    let Some(lookup) = &gateway.operations else {
        return Rejection::unavailable("operation records are not wired into this gateway").into_response();
    };
    let bounded = |what: &'static str| move |err: String| unavailable(what, err);
    let timeout = gateway.timeout;
    let within = |fut| async move {
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    };

    // An operation id: show its resource's whole trail, the match marked.
    match within(lookup.operation(q)).await {
        Ok(Some(record)) => {
            let key = record.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let trail = match within_list(timeout, lookup.of_resource(&key)).await {
                Ok(trail) if !trail.is_empty() => trail,
                Ok(_) => vec![record],
                Err(err) => return bounded("operation records")(err),
            };
            return found("operation", Some(key), None, trail);
        }
        Ok(None) => {}
        Err(err) => return bounded("operation records")(err),
    }
    match within_list(timeout, lookup.of_resource(q)).await {
        Ok(trail) if !trail.is_empty() => return found("resource", Some(q.to_string()), None, trail),
        Ok(_) => {}
        Err(err) => return bounded("operation records")(err),
    }
    let records = match within_list(timeout, lookup.of_delivery(q)).await {
        Ok(records) => records,
        Err(err) => return bounded("operation records")(err),
    };
    let message = match gateway.bounded(gateway.intake.lookup(&Mark::Delivery(q.to_string()))).await {
        Ok(message) => message,
        Err(err) => return unavailable("delivery marks", err),
    };
    if records.is_empty() && message.is_none() {
        return found("nothing", None, None, Vec::new());
    }
    // The delivery's message id is also its trace id: what to grep the logs for.
    let delivery = json!({ "delivery": q, "message_id": message, "trace_id": message });
    found("delivery", None, Some(delivery), records)
}

async fn within_list(
    timeout: std::time::Duration,
    fut: impl std::future::Future<Output = Result<Vec<Value>, String>>,
) -> Result<Vec<Value>, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn found(matched: &str, resource: Option<String>, delivery: Option<Value>, mut records: Vec<Value>) -> Response {
    records.iter_mut().for_each(mask_secrets);
    Json(json!({ "matched": matched, "resource": resource, "delivery": delivery, "operations": records }))
        .into_response()
}

/// What a retry or delete applies to.
#[derive(Deserialize)]
struct DeadAction {
    id: Option<String>,
    #[serde(default)]
    all: bool,
}

impl DeadAction {
    fn selector(&self) -> Result<DeadSelector, Rejection> {
        match (&self.id, self.all) {
            (Some(id), false) if !id.is_empty() => Ok(DeadSelector::Id(id.clone())),
            (None, true) => Ok(DeadSelector::All),
            _ => Err(Rejection::bad_request("give either {\"id\": \"<dead letter id>\"} or {\"all\": true}")),
        }
    }
}

fn known_queue(queue: &str) -> Result<&'static str, Rejection> {
    QUEUES
        .iter()
        .find(|q| **q == queue)
        .copied()
        .ok_or_else(|| Rejection::new(StatusCode::NOT_FOUND, format!("no queue named {queue:?}")))
}

async fn read_action(body: Body) -> Result<DeadAction, Rejection> {
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|err| Rejection::bad_request(format!("could not read the body: {err}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| Rejection::bad_request(format!("body is not the expected JSON: {err}")))
}

/// `POST /admin/api/dead/{queue}/retry`: back to `pending`, attempts reset.
async fn retry(State(gateway): State<Arc<Gateway>>, Path(queue): Path<String>, body: Body) -> Response {
    dead_action(gateway, queue, body, true).await
}

/// `POST /admin/api/dead/{queue}/delete`.
async fn delete(State(gateway): State<Arc<Gateway>>, Path(queue): Path<String>, body: Body) -> Response {
    dead_action(gateway, queue, body, false).await
}

async fn dead_action(gateway: Arc<Gateway>, queue: String, body: Body, retry: bool) -> Response {
    let prepared = async {
        let queue = known_queue(&queue)?;
        let selector = read_action(body).await?.selector()?;
        Ok::<_, Rejection>((queue, selector))
    };
    let (queue, selector) = match prepared.await {
        Ok(prepared) => prepared,
        Err(rejection) => return rejection.into_response(),
    };
    let which = match &selector {
        DeadSelector::All => "all".to_string(),
        DeadSelector::Id(id) => id.clone(),
    };
    // The trace ids of what is acted on, so the log line about each message
    // carries its trace_id like every other.
    let traces: Vec<String> = match gateway.bounded(gateway.backend.dead_list(queue, 1_000)).await {
        Ok(letters) => letters
            .iter()
            .filter(|letter| selector.matches(letter))
            .filter_map(|letter| match &letter.content {
                hookbus_bus::DeadContent::Envelope(envelope) => Some(envelope.trace_id.clone()),
                hookbus_bus::DeadContent::Raw(_) => None,
            })
            .collect(),
        Err(err) => return unavailable("dead letters", err),
    };
    let done = if retry {
        gateway.bounded(gateway.backend.dead_retry(queue, &selector)).await
    } else {
        gateway.bounded(gateway.backend.dead_purge(queue, &selector)).await
    };
    match done {
        Ok(count) => {
            let action = if retry { "retried" } else { "deleted" };
            match traces.as_slice() {
                [trace_id] => {
                    tracing::info!(queue, dead_letter = %which, %trace_id, count, "admin: dead letter {action}")
                }
                _ => tracing::info!(queue, dead_letter = %which, trace_ids = %traces.join(","), count,
                    "admin: dead letters {action}"),
            }
            Json(json!({ "queue": queue, action: count })).into_response()
        }
        Err(err) => unavailable("dead letters", err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn basic_auth_needs_user_admin_and_the_exact_password() {
        let password = Secret::new("correct horse battery");
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        let ok = headers(&[("authorization", &basic("admin:correct horse battery"))]);
        assert!(basic_auth_matches(&ok, &password));
        for wrong in ["admin:correct horse", "root:correct horse battery", "admin", "admin:correct horse battery "] {
            assert!(!basic_auth_matches(&headers(&[("authorization", &basic(wrong))]), &password), "{wrong}");
        }
        assert!(!basic_auth_matches(&headers(&[("authorization", "Bearer x")]), &password));
        assert!(!basic_auth_matches(&headers(&[("authorization", "Basic !!!")]), &password));
        assert!(!basic_auth_matches(&HeaderMap::new(), &password));
    }

    #[test]
    fn same_origin_is_strict_about_scheme_host_and_port() {
        let host = ("host", "hookbus.example:8443");
        assert!(same_origin(&headers(&[host, ("origin", "http://hookbus.example:8443")])).is_ok());
        assert!(same_origin(&headers(&[host, ("origin", "https://hookbus.example:8443")])).is_err());
        assert!(same_origin(&headers(&[
            host,
            ("x-forwarded-proto", "https"),
            ("origin", "https://hookbus.example:8443")
        ]))
        .is_ok());
        assert!(same_origin(&headers(&[host, ("origin", "http://hookbus.example")])).is_err());
        assert!(same_origin(&headers(&[host, ("origin", "null")])).is_err());
        assert!(same_origin(&headers(&[host, ("referer", "http://hookbus.example:8443/admin")])).is_ok());
        assert!(same_origin(&headers(&[host, ("referer", "http://hookbus.example:8443.evil.test/")])).is_err());
        assert!(same_origin(&headers(&[host])).is_err(), "no Origin and no Referer");
    }

    #[test]
    fn loopback_hosts_are_names_of_this_machine_only() {
        for host in ["localhost:8080", "127.0.0.1:9", "[::1]:80", "LOCALHOST"] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.test:8080", "10.0.0.1", "localhost.evil.test"] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
    }

    #[test]
    fn secrets_in_payloads_are_masked() {
        let mut value = json!({"a": {"webhook_secret": "x", "Token": 5, "list": [{"password": "p"}]}, "title": "t"});
        mask_secrets(&mut value);
        assert_eq!(
            value,
            json!({"a": {"webhook_secret": "***", "Token": "***", "list": [{"password": "***"}]}, "title": "t"})
        );
    }
}
