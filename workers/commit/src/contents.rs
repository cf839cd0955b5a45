//! Contents-API mode (`git.mode = "contents_api"`): for a worker that cannot
//! have a clone, each operation is one GitHub contents-API request on
//! `git.contents_repository` — GET the file, then PUT or DELETE it with the
//! actor as author, the blob sha as the precondition. The path, bytes,
//! message and author are those of git mode ([`record_file`]).
//!
//! Idempotent: a file that already holds the target bytes (or a deletion of
//! an absent file) is a no-op, so a redelivered operation does not commit
//! twice. A conflict (409, or 422 "does not match": the file changed between
//! GET and write) is read again and retried a few times.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hookbus_bus::HandlerError;
use hookbus_github::{error_message, rate_limit};
use serde_json::{json, Value};

use crate::record_file::{self, Desired};
use crate::wire::ApplyPayload;
use crate::Synced;

/// How many times a conflicting write is read again and retried.
pub const CONFLICT_RETRIES: u32 = 4;
/// Where contents-API mode writes.
#[derive(Debug, Clone)]
pub struct ContentsTarget {
    /// `github.api_url`.
    pub api_url: String,
    pub credentials: hookbus_github::Credentials,
    /// `owner/name`.
    pub repository: String,
    pub branch: String,
    pub committer_name: String,
    pub committer_email: String,
}

/// The GitHub contents API for one repository and branch.
pub struct ContentsApi {
    github: hookbus_github::Github,
    target: ContentsTarget,
}

/// A raw octocrab answer read whole: its status, the rate-limit wait it asks
/// for (if any) and its body. (A macro: the response type is octocrab's.)
macro_rules! read_answer {
    ($client:expr, $response:expr, $what:expr) => {{
        let response = $response;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let limit =
            rate_limit(status, header("retry-after"), header("x-ratelimit-remaining"), header("x-ratelimit-reset"));
        let body = $client.body_to_string(response).await.map_err(|e| network($what, e))?;
        Answer { status, limit, body }
    }};
}

struct Answer {
    status: u16,
    limit: Option<Duration>,
    body: String,
}

/// The file as GitHub has it now.
struct Current {
    sha: String,
    bytes: Vec<u8>,
}

enum Written {
    Done(Option<String>),
    Conflict,
}

impl ContentsApi {
    pub fn new(target: ContentsTarget) -> Result<Self, crate::CommitError> {
        let github = hookbus_github::Github::new(&target.api_url, target.credentials.clone(), Duration::from_secs(30))
            .map_err(|e| crate::CommitError::Config(e.to_string()))?;
        Ok(ContentsApi { github, target })
    }

    /// Applies one operation: where it ended up, or why not.
    pub(crate) async fn apply(&self, op: &ApplyPayload) -> Result<Synced, HandlerError> {
        let Some(path) = record_file::path_for(op)? else {
            return Ok(Synced::skipped(
                None,
                "created on GitHub; the file arrives with GitHub's webhook".into(),
                false,
            ));
        };
        for _ in 0..=CONFLICT_RETRIES {
            let current = self.get(&path).await?;
            let desired = record_file::desired(op, &path, current.as_ref().map(|c| c.bytes.as_slice()))?;
            let unchanged = |content: Option<Vec<u8>>| Synced {
                commit: None,
                path: Some(path.clone()),
                content,
                reason: Some("unchanged: no commit".into()),
                superseded: false,
            };
            let (written, content) = match desired {
                Desired::Skip(reason) => return Ok(Synced::skipped(Some(path), reason, false)),
                Desired::Superseded(reason) => return Ok(Synced::skipped(Some(path), reason, true)),
                Desired::Delete => {
                    let Some(current) = current else { return Ok(unchanged(None)) };
                    (self.write(op, &path, None, Some(&current.sha)).await?, None)
                }
                Desired::Write(bytes) => {
                    if current.as_ref().is_some_and(|c| c.bytes == bytes) {
                        return Ok(unchanged(Some(bytes)));
                    }
                    let sha = current.as_ref().map(|c| c.sha.as_str());
                    (self.write(op, &path, Some(&bytes), sha).await?, Some(bytes))
                }
            };
            match written {
                Written::Done(commit) => {
                    return Ok(Synced { commit, path: Some(path), content, reason: None, superseded: false })
                }
                Written::Conflict => {
                    tracing::info!(operation = %op.operation, path = %path, "file changed between read and write; reading again");
                }
            }
        }
        Err(HandlerError::Transient(format!(
            "{path} in {} changed between read and write on each of {} tries",
            self.target.repository,
            CONFLICT_RETRIES + 1
        )))
    }

    fn route(&self, path: &str) -> String {
        format!("/repos/{}/contents/{path}", self.target.repository)
    }

    /// The client for the repository (its App installation's, when signed
    /// in as the App).
    async fn client(&self, what: &str) -> Result<std::sync::Arc<octocrab::Octocrab>, HandlerError> {
        let route = self.route("");
        self.github.for_route(&route).await.map_err(|e| match e.is_permanent() {
            true => HandlerError::Permanent(format!("{what}: {e}")),
            false => HandlerError::Transient(format!("{what}: {e}")),
        })
    }

    async fn get(&self, path: &str) -> Result<Option<Current>, HandlerError> {
        let route = format!("{}?ref={}", self.route(path), encode(&self.target.branch));
        let what = format!("GET {route}");
        let client = self.client(&what).await?;
        let response = match client._get(route.as_str()).await {
            Ok(response) => response,
            Err(err) => return Err(self.not_sent(&what, &route, err).await),
        };
        let answer = read_answer!(client, response, &what);
        if answer.status == 404 {
            return Ok(None);
        }
        let body = self.check(answer, &what, &route).await?;
        let file: Value = serde_json::from_str(&body)
            .map_err(|e| HandlerError::Transient(format!("{what}: the answer is not JSON: {e}")))?;
        let (Some(sha), Some(content)) =
            (file.get("sha").and_then(Value::as_str), file.get("content").and_then(Value::as_str))
        else {
            return Err(HandlerError::Permanent(format!(
                "{what}: not a file with content (a directory, or over 1 MB?)"
            )));
        };
        // Between 1 and 100 MB GitHub answers the metadata with an empty
        // content and encoding "none": read as empty, the file would be
        // overwritten unseen.
        if let Some(encoding) = file.get("encoding").and_then(Value::as_str).filter(|e| *e != "base64") {
            return Err(HandlerError::Permanent(format!(
                "{what}: GitHub sends this file's content as {encoding:?}, not base64 (over 1 MB?); not overwriting a \
                 file hookbus cannot read"
            )));
        }
        let compact: String = content.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = STANDARD
            .decode(compact)
            .map_err(|e| HandlerError::Permanent(format!("{what}: content is not base64: {e}")))?;
        Ok(Some(Current { sha: sha.to_string(), bytes }))
    }

    /// PUTs `bytes` (or DELETEs when `None`) with `sha` as the precondition.
    async fn write(
        &self,
        op: &ApplyPayload,
        path: &str,
        bytes: Option<&[u8]>,
        sha: Option<&str>,
    ) -> Result<Written, HandlerError> {
        let content: Option<Value> = bytes.and_then(|b| serde_json::from_slice(b).ok());
        let (name, email) = record_file::author(op);
        let mut body = json!({
            "message": record_file::message(op, content.as_ref()),
            "branch": self.target.branch,
            "author": {"name": name, "email": email},
            "committer": {"name": self.target.committer_name, "email": self.target.committer_email},
        });
        if let Some(sha) = sha {
            body["sha"] = json!(sha);
        }
        let route = self.route(path);
        let client = self.client(&format!("write {route}")).await?;
        let (what, sent) = match bytes {
            Some(bytes) => {
                body["content"] = json!(STANDARD.encode(bytes));
                (format!("PUT {route}"), client._put(route.as_str(), Some(&body)).await)
            }
            None => (format!("DELETE {route}"), client._delete(route.as_str(), Some(&body)).await),
        };
        let response = match sent {
            Ok(response) => response,
            Err(err) => return Err(self.not_sent(&what, &route, err).await),
        };
        let answer = read_answer!(client, response, &what);
        if answer.status == 409 {
            return Ok(Written::Conflict);
        }
        if answer.status == 422 {
            let message = error_message(&answer.body);
            if message.contains("does not match") {
                return Ok(Written::Conflict);
            }
            return Err(HandlerError::Permanent(format!("GitHub answered 422 on {what}: {message}")));
        }
        let body = self.check(answer, &what, &route).await?;
        let commit = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/commit/sha").and_then(Value::as_str).map(str::to_owned));
        if commit.is_none() {
            return Err(HandlerError::Transient(format!("{what}: the answer names no commit")));
        }
        Ok(Written::Done(commit))
    }

    /// A request that got no answer: perhaps no token could be minted, so
    /// an installation that is gone is looked up again on the next try.
    async fn not_sent(&self, what: &str, route: &str, err: octocrab::Error) -> HandlerError {
        self.github.forget_installation(route).await;
        network(what, err)
    }

    /// The body of a 2xx answer, or the error its status means.
    async fn check(&self, answer: Answer, what: &str, route: &str) -> Result<String, HandlerError> {
        let Answer { status, limit, body } = answer;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if let Some(wait) = limit {
            return Err(HandlerError::Defer(wait, format!("GitHub rate limit ({status}) on {what}")));
        }
        let message = error_message(&body);
        if status == 401 && self.github.forget_installation(route).await {
            return Err(HandlerError::Transient(format!(
                "GitHub refused the App installation's token (401) on {what}: the next try starts with a new one"
            )));
        }
        Err(match status {
            401 | 403 => HandlerError::Permanent(format!(
                "GitHub refused the credentials ({status}) on {what}: {message} — check {} (it needs contents write access to {})",
                self.target.credentials.settings(),
                self.target.repository
            )),
            408 | 500..=599 => HandlerError::Transient(format!("GitHub answered {status} on {what}: {message}")),
            _ => HandlerError::Permanent(format!("GitHub answered {status} on {what}: {message}")),
        })
    }
}

fn network(what: &str, err: octocrab::Error) -> HandlerError {
    HandlerError::Transient(format!("GitHub API {what}: {err}"))
}

/// Percent-encodes a query value (the branch).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
