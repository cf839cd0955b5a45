//! Write-back: an outbound change applied to GitHub through octocrab, at
//! `github.api_url`. octocrab's typed calls turn every non-2xx answer into
//! an error without its headers, so the raw calls (`_get`, `_patch`,
//! `_post`, `_delete`) are used: the status and the rate-limit headers
//! decide between done, retry, defer and dead.

use std::collections::BTreeMap;
use std::time::Duration;

pub use hookbus_github::rate_limit;

use hookbus_bus::HandlerError;
use serde_json::{Map, Value};

use crate::error::NotifyError;
use crate::wire::WritebackPayload;

/// Issue and pull request fields written back, as GitHub names them (the
/// record names are the same).
const ISSUE_FIELDS: [&str; 7] = ["title", "body", "state", "state_reason", "labels", "assignees", "milestone"];
/// Release fields written back (GitHub's names, the record's too).
const RELEASE_FIELDS: [&str; 5] = ["tag_name", "name", "body", "draft", "prerelease"];

/// The GitHub API with the configured credentials.
pub struct GitHub {
    github: hookbus_github::Github,
    /// The login the credentials act as, once known: the token's user, or
    /// the App's bot; `None` inside when GitHub will not say.
    login: tokio::sync::OnceCell<Option<String>>,
}

/// One request to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    pub route: String,
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl GitHub {
    pub fn new(
        api_url: &str,
        credentials: hookbus_github::Credentials,
        timeout: Duration,
    ) -> Result<Self, NotifyError> {
        let github = hookbus_github::Github::new(api_url, credentials, timeout)
            .map_err(|e| NotifyError::Setup(e.to_string()))?;
        Ok(GitHub { github, login: tokio::sync::OnceCell::new() })
    }

    /// Applies one change; the error says whether to retry, defer or give up.
    pub async fn apply(&self, change: &WritebackPayload) -> Result<(), HandlerError> {
        let call = plan(change)?;
        self.send(&call, &change.operation).await.map(drop)
    }

    /// For a change that creates (an issue, a comment, a release): the
    /// resource an earlier attempt, begun at `began_ms`, already created, if
    /// GitHub shows one (its number or id); [`created_by`] says what counts.
    /// `None` for changes that do not create.
    pub async fn find_created(&self, change: &WritebackPayload, began_ms: i64) -> Result<Option<u64>, HandlerError> {
        let since = began_ms.saturating_sub(CLOCK_SLACK_MS);
        let Some(first) = lookup(change, since) else { return Ok(None) };
        let author = self.own_login().await;
        for page in 1..=LOOKUP_PAGES {
            let call = Call { route: format!("{}&page={page}", first.route), ..first.clone() };
            let listed = self.send(&call, &change.operation).await?;
            let items = listed.as_array().map(Vec::as_slice).unwrap_or_default();
            if let Some(item) = items.iter().find(|item| created_by(change, item, since, author.as_deref())) {
                return Ok(item["number"].as_u64().or(item["id"].as_u64()));
            }
            if items.len() < PER_PAGE || listed_past(change, items, since) {
                return Ok(None);
            }
        }
        // Over a thousand candidates within seconds of the first attempt:
        // not seen in practice; making it (maybe twice) beats never making it.
        tracing::warn!(
            operation = %change.operation,
            pages = LOOKUP_PAGES,
            "looked through {LOOKUP_PAGES} pages for an earlier attempt's {} without reaching the end; creating it",
            change.kind
        );
        Ok(None)
    }

    /// The login the credentials act as, asked once: a token's user
    /// (`GET /user`; a token GitHub will not tell it to has none to
    /// compare), or an installation's App bot, `<slug>[bot]` (`GET /app`, as
    /// the App). A failure that may pass (network, 5xx) is not remembered.
    async fn own_login(&self) -> Option<String> {
        let asked = self.login.get_or_try_init(|| self.github.acting_login()).await;
        asked.ok().cloned().flatten()
    }

    /// Sends one request: a 2xx answer's JSON body (`Null` when empty), or
    /// the error that says whether to retry, defer or give up.
    async fn send(&self, call: &Call, operation: &str) -> Result<Value, HandlerError> {
        let body = call.body.as_ref();
        let what = format!("{:?} {} for operation {operation}", call.method, call.route);
        let client = self.github.for_route(&call.route).await.map_err(|e| match e.is_permanent() {
            true => HandlerError::Permanent(format!("GitHub API {what}: {e}")),
            false => HandlerError::Transient(format!("GitHub API {what}: {e}")),
        })?;
        let sent = match call.method {
            Method::Get => client._get(call.route.as_str()).await,
            Method::Post => client._post(call.route.as_str(), body).await,
            Method::Patch => client._patch(call.route.as_str(), body).await,
            Method::Delete => client._delete(call.route.as_str(), None::<&()>).await,
        };
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                // Perhaps no token could be minted: an installation that
                // is gone is looked up again on the next try.
                self.github.forget_installation(&call.route).await;
                return Err(HandlerError::Transient(format!("GitHub API {what}: {err}")));
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let limit =
            rate_limit(status, header("retry-after"), header("x-ratelimit-remaining"), header("x-ratelimit-reset"));
        if status == 404 && call.method == Method::Delete {
            return Ok(Value::Null);
        }
        let text = client.body_to_string(response).await;
        if (200..300).contains(&status) {
            let text =
                text.map_err(|e| HandlerError::Transient(format!("GitHub API {what}: reading the answer: {e}")))?;
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        if let Some(wait) = limit {
            return Err(HandlerError::Defer(wait, format!("GitHub rate limit ({status}) on {what}")));
        }
        let message = hookbus_github::error_message(&text.unwrap_or_default());
        if status == 401 && self.github.forget_installation(&call.route).await {
            return Err(HandlerError::Transient(format!(
                "GitHub refused the App installation's token (401) on {what}: the next try starts with a new one"
            )));
        }
        Err(match status {
            401 => HandlerError::Permanent(format!(
                "GitHub refused the credentials (401) on {what}: check {}",
                self.github.credentials().settings()
            )),
            408 | 500..=599 => HandlerError::Transient(format!("GitHub answered {status} on {what}: {message}")),
            _ => HandlerError::Permanent(format!("GitHub answered {status} on {what}: {message}")),
        })
    }
}

/// How far before an earlier attempt's beginning a created resource may be
/// dated and still be that attempt's: our clock against GitHub's.
pub const CLOCK_SLACK_MS: i64 = 10_000;

/// Items per page of a [`lookup`] listing (GitHub's most).
const PER_PAGE: usize = 100;
/// Pages of a [`lookup`] listing looked through at most.
const LOOKUP_PAGES: u32 = 10;

/// Whether a listing's page ends past where `change`'s resource could be:
/// issues come newest first, so once one was made before `since_ms` every
/// later page is older still. Comments come oldest first and releases by
/// their commit's date, so only the listing's end tells.
fn listed_past(change: &WritebackPayload, items: &[Value], since_ms: i64) -> bool {
    change.kind == "issue" && items.last().and_then(created_ms).is_some_and(|at| at < since_ms)
}

/// When GitHub says `item` was made, ms since the epoch.
fn created_ms(item: &Value) -> Option<i64> {
    item["created_at"]
        .as_str()
        .and_then(|at| time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok())
        .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

/// Whether `change` creates a resource (a second POST would make a second
/// one, or for a release fail: a tag has one release).
pub fn creates(change: &WritebackPayload) -> bool {
    change.action == "create" && matches!(change.kind.as_str(), "issue" | "comment" | "release")
}

/// The first page of the listing in which a resource `change` creates would
/// show, from `since_ms` where GitHub can filter by time; `None` when
/// `change` creates nothing. Later pages add `&page=N`.
pub fn lookup(change: &WritebackPayload, since_ms: i64) -> Option<Call> {
    if !creates(change) {
        return None;
    }
    let repo = &change.repository;
    let since = iso8601(since_ms);
    let route = match change.kind.as_str() {
        "issue" => {
            format!("/repos/{repo}/issues?state=all&sort=created&direction=desc&per_page={PER_PAGE}&since={since}")
        }
        // Newest first; drafts show to a token that may push.
        "release" => format!("/repos/{repo}/releases?per_page={PER_PAGE}"),
        _ => format!("/repos/{repo}/issues/{}/comments?per_page={PER_PAGE}&since={since}", change.number?),
    };
    Some(Call { method: Method::Get, route, body: None })
}

/// Whether `item` (from the [`lookup`] listing) is the resource `change`
/// creates: with the fields it gives (title and body; body; tag, name and
/// body), by `author` when the token's login is known, and, for issues and
/// comments, made at or after `since_ms`. An issue listing also holds pull
/// requests, which an issue create never made. A release's `created_at` is
/// its commit's date, not when it was made, so a release is known by its
/// tag instead: a tag has one release.
pub fn created_by(change: &WritebackPayload, item: &Value, since_ms: i64, author: Option<&str>) -> bool {
    let made_by = item.pointer("/user/login").or_else(|| item.pointer("/author/login")).and_then(Value::as_str);
    if author.is_some_and(|ours| made_by.is_some_and(|theirs| !theirs.eq_ignore_ascii_case(ours))) {
        return false;
    }
    // GitHub keeps an absent or empty text as null.
    let text = |value: Option<&Value>| value.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let same = |field: &str| text(change.changes.get(field)) == text(item.get(field));
    if change.kind == "release" {
        return text(change.changes.get("tag_name")).is_some() && same("tag_name") && same("name") && same("body");
    }
    if created_ms(item).is_none_or(|at| at < since_ms) || item.get("pull_request").is_some() {
        return false;
    }
    match change.kind.as_str() {
        "issue" => same("body") && change.changes.get("title").and_then(Value::as_str) == item["title"].as_str(),
        _ => same("body"),
    }
}

/// `ms` since the epoch as GitHub's ISO 8601 (`2026-12-01T14:30:00Z`).
fn iso8601(ms: i64) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1_000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.format(&format).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// The request a change needs, or why it cannot be written back.
pub fn plan(change: &WritebackPayload) -> Result<Call, HandlerError> {
    let repo = &change.repository;
    let refuse = |why: &str| {
        HandlerError::Permanent(format!(
            "cannot write back {} {} of operation {}: {why}",
            change.kind, change.action, change.operation
        ))
    };
    let number = || change.number.ok_or_else(|| refuse("no issue number"));
    let id = || change.id.ok_or_else(|| refuse("no comment id"));
    let release_id = || change.id.ok_or_else(|| refuse("no release id"));
    let call = |method, route: String, body: Option<Value>| Ok(Call { method, route, body });
    match (change.kind.as_str(), change.action.as_str()) {
        ("issue" | "pull_request", "update") => call(
            Method::Patch,
            format!("/repos/{repo}/issues/{}", number()?),
            Some(pick(&change.changes, &ISSUE_FIELDS)),
        ),
        ("issue", "create") => {
            if !change.changes.get("title").is_some_and(Value::is_string) {
                return Err(refuse("a new issue needs a title"));
            }
            call(Method::Post, format!("/repos/{repo}/issues"), Some(pick(&change.changes, &ISSUE_FIELDS)))
        }
        ("comment", "create") => {
            let body = pick(&change.changes, &["body"]);
            call(Method::Post, format!("/repos/{repo}/issues/{}/comments", number()?), Some(body))
        }
        ("comment", "update") => call(
            Method::Patch,
            format!("/repos/{repo}/issues/comments/{}", id()?),
            Some(pick(&change.changes, &["body"])),
        ),
        ("comment", "delete") => call(Method::Delete, format!("/repos/{repo}/issues/comments/{}", id()?), None),
        ("release", "create") => {
            if change.changes.get("tag_name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(refuse("a new release needs a tag_name"));
            }
            call(Method::Post, format!("/repos/{repo}/releases"), Some(pick(&change.changes, &RELEASE_FIELDS)))
        }
        ("release", "update") => call(
            Method::Patch,
            format!("/repos/{repo}/releases/{}", release_id()?),
            Some(pick(&change.changes, &RELEASE_FIELDS)),
        ),
        ("release", "delete") => call(Method::Delete, format!("/repos/{repo}/releases/{}", release_id()?), None),
        ("issue" | "pull_request", "delete") => Err(refuse("GitHub's API cannot delete issues or pull requests")),
        _ => Err(refuse("not supported")),
    }
}

/// The fields of `changes` GitHub accepts for this resource.
fn pick(changes: &BTreeMap<String, Value>, fields: &[&str]) -> Value {
    let body: Map<String, Value> = changes
        .iter()
        .filter(|(name, _)| fields.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(body)
}
