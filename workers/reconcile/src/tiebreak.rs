//! Settling same-second ties by asking GitHub what the resource looks like
//! now (SPEC §6: GitHub timestamps have one-second granularity).

use async_trait::async_trait;
use serde_json::Value;

use crate::book::TieVerdict;
use crate::wire::{Direction, SyncOperation};

#[async_trait]
pub trait TieBreaker: Send + Sync + 'static {
    /// Who wins between `op` and a known operation with the same
    /// `updated_at` and other content.
    async fn settle(&self, op: &SyncOperation) -> Result<TieVerdict, TieError>;
}

#[derive(Debug, thiserror::Error)]
pub enum TieError {
    #[error("GitHub API: {0}")]
    Api(String),
}

/// No credentials: the later arrival — the operation being decided — wins.
pub struct LaterArrivalWins;

#[async_trait]
impl TieBreaker for LaterArrivalWins {
    async fn settle(&self, _op: &SyncOperation) -> Result<TieVerdict, TieError> {
        Ok(TieVerdict::NewWins)
    }
}

/// Asks the GitHub API (octocrab, `github.api_url`).
pub struct GitHubTieBreaker {
    github: hookbus_github::Github,
}

impl GitHubTieBreaker {
    pub fn new(api_url: &str, credentials: &hookbus_github::Credentials) -> Result<Self, TieError> {
        let github = hookbus_github::Github::new(api_url, credentials.clone(), std::time::Duration::from_secs(10))
            .map_err(|e| TieError::Api(e.to_string()))?;
        Ok(GitHubTieBreaker { github })
    }
}

/// The API route of the resource, and the record fields compared with
/// GitHub's (record name, API name).
fn route(op: &SyncOperation) -> Option<(String, &'static [(&'static str, &'static str)])> {
    const ISSUE: &[(&str, &str)] = &[("title", "title"), ("body", "body"), ("state", "state")];
    const COMMENT: &[(&str, &str)] = &[("body", "body")];
    const RELEASE: &[(&str, &str)] =
        &[("name", "name"), ("body", "body"), ("tag", "tag_name"), ("draft", "draft"), ("prerelease", "prerelease")];
    let repo = &op.repository;
    match op.kind.as_str() {
        "issue" | "pull_request" => Some((format!("/repos/{repo}/issues/{}", op.number?), ISSUE)),
        "comment" => Some((format!("/repos/{repo}/issues/comments/{}", op.id?), COMMENT)),
        "release" => Some((format!("/repos/{repo}/releases/{}", op.id?), RELEASE)),
        _ => None,
    }
}

#[async_trait]
impl TieBreaker for GitHubTieBreaker {
    async fn settle(&self, op: &SyncOperation) -> Result<TieVerdict, TieError> {
        // An outbound change has no record to compare: it arrived later.
        let (Direction::Inbound, Some(record)) = (op.direction, op.record.as_ref()) else {
            return Ok(TieVerdict::NewWins);
        };
        let Some((route, fields)) = route(op) else { return Ok(TieVerdict::NewWins) };
        let client = self.github.for_route(&route).await.map_err(|e| TieError::Api(e.to_string()))?;
        let now: Value = match client.get(route.as_str(), None::<&()>).await {
            Ok(now) => now,
            Err(err) => {
                // A refused or unminted token: the next try starts afresh.
                self.github.forget_installation(&route).await;
                return Err(TieError::Api(err.to_string()));
            }
        };
        let agrees = fields.iter().all(|(ours, theirs)| {
            record.get(*ours).unwrap_or(&Value::Null) == now.get(*theirs).unwrap_or(&Value::Null)
        });
        Ok(if agrees { TieVerdict::NewWins } else { TieVerdict::KnownWins })
    }
}
