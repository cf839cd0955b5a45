//! Write-back: an outbound change applied to GitHub through octocrab, at
//! `github.api_url`. octocrab's typed calls turn every non-2xx answer into
//! an error without its headers, so the raw calls (`_patch`, `_post`,
//! `_delete`) are used: the status and the rate-limit headers decide
//! between done, retry, defer and dead.

use std::collections::BTreeMap;
use std::time::Duration;

pub use hookbus_github::rate_limit;

use hookbus_bus::HandlerError;
use serde_json::{Map, Value};

use crate::error::NotifyError;
use crate::wire::WritebackPayload;

/// Issue and pull request fields written back, as GitHub names them (the
/// record names are the same).
const ISSUE_FIELDS: [&str; 6] = ["title", "body", "state", "state_reason", "labels", "assignees"];

/// The GitHub API with the configured token.
pub struct GitHub {
    client: octocrab::Octocrab,
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
    Post,
    Patch,
    Delete,
}

impl GitHub {
    pub fn new(api_url: &str, token: &str, timeout: Duration) -> Result<Self, NotifyError> {
        let client = hookbus_github::client(api_url, token, timeout).map_err(|e| NotifyError::Setup(e.to_string()))?;
        Ok(GitHub { client })
    }

    /// Applies one change; the error says whether to retry, defer or give up.
    pub async fn apply(&self, change: &WritebackPayload) -> Result<(), HandlerError> {
        let call = plan(change)?;
        let body = call.body.as_ref();
        let sent = match call.method {
            Method::Post => self.client._post(call.route.as_str(), body).await,
            Method::Patch => self.client._patch(call.route.as_str(), body).await,
            Method::Delete => self.client._delete(call.route.as_str(), None::<&()>).await,
        };
        let what = format!("{:?} {} for operation {}", call.method, call.route, change.operation);
        let response = sent.map_err(|e| HandlerError::Transient(format!("GitHub API {what}: {e}")))?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let limit =
            rate_limit(status, header("retry-after"), header("x-ratelimit-remaining"), header("x-ratelimit-reset"));
        if (200..300).contains(&status) || (status == 404 && call.method == Method::Delete) {
            return Ok(());
        }
        if let Some(wait) = limit {
            return Err(HandlerError::Defer(wait, format!("GitHub rate limit ({status}) on {what}")));
        }
        let message = self.client.body_to_string(response).await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&message)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        Err(match status {
            401 => HandlerError::Permanent(format!(
                "GitHub refused the token (401) on {what}: check HOOKBUS_GITHUB__TOKEN"
            )),
            408 | 500..=599 => HandlerError::Transient(format!("GitHub answered {status} on {what}: {message}")),
            _ => HandlerError::Permanent(format!("GitHub answered {status} on {what}: {message}")),
        })
    }
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
