//! Inbound: a GitHub webhook body becomes a [`SyncOperationPayload`], a
//! change to the synced repositories, or a skip (see [`crate::actions`]).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::actions::{decide, is_handled_event, Decision, Effect, RepositoryChange, SkipReason};
use crate::field::{Field, Malformed};
use crate::record::{self, CommentRecord, GitRef, IssueRecord, Milestone, PullRequestRecord, Record, ReleaseRecord};
use crate::wire::{Actor, Direction, ResourceKind, SyncOperationPayload, TimeSource};

/// One webhook as the gateway delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    pub event: &'a str,
    pub delivery: &'a str,
    pub received_at: i64,
    pub body: &'a [u8],
}

/// What a webhook comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// One operation for `reconcile`. `repository_enabled` is still to be
    /// decided by the caller (it needs the registry).
    Operation(Box<SyncOperationPayload>),
    /// Installation event: enable and disable these repositories.
    Repositories { enable: Vec<String>, disable: Vec<String> },
    /// Nothing to do; `action` is empty when the body was not read.
    Skip { action: String, reason: SkipReason },
}

/// Why a webhook could not be normalised: the text names the event, the
/// action and the field, and becomes the dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("{event}: body is not JSON: {reason}")]
    NotJson { event: String, reason: String },
    #[error("{event}: body must be a JSON object")]
    NotAnObject { event: String },
    #[error("{event}.{action}: {fault}")]
    Field { event: String, action: String, fault: Malformed },
}

/// Normalises one webhook.
pub fn normalise(webhook: &Webhook<'_>) -> Result<Inbound, InboundError> {
    let event = webhook.event;
    if !is_handled_event(event) {
        return Ok(Inbound::Skip { action: String::new(), reason: SkipReason::EventNotSynced });
    }
    let body: Value = serde_json::from_slice(webhook.body)
        .map_err(|err| InboundError::NotJson { event: event.to_string(), reason: err.to_string() })?;
    if !body.is_object() {
        return Err(InboundError::NotAnObject { event: event.to_string() });
    }
    let root = Field::root(&body);
    let fault = |action: &str| {
        let (event, action) = (event.to_string(), action.to_string());
        move |fault: Malformed| InboundError::Field { event, action, fault }
    };
    let action = root.get("action").and_then(|a| a.str()).map_err(fault("(no action)"))?;
    match decide(event, action) {
        Decision::Skip(reason) => Ok(Inbound::Skip { action: action.to_string(), reason }),
        Decision::Repositories(change) => repositories(&root, change).map_err(fault(action)),
        Decision::Sync(effect) => {
            operation(webhook, &root, action, effect).map(Inbound::Operation).map_err(fault(action))
        }
    }
}

fn repositories(root: &Field<'_>, change: RepositoryChange) -> Result<Inbound, Malformed> {
    let names = |list: &str| -> Result<Vec<String>, Malformed> {
        root.get(list)?.items()?.iter().map(|repo| Ok(repo.get("full_name")?.str()?.to_lowercase())).collect()
    };
    Ok(match change {
        RepositoryChange::Enable => Inbound::Repositories { enable: names("repositories")?, disable: Vec::new() },
        RepositoryChange::Disable => Inbound::Repositories { enable: Vec::new(), disable: names("repositories")? },
        RepositoryChange::AddRemove => {
            Inbound::Repositories { enable: names("repositories_added")?, disable: names("repositories_removed")? }
        }
    })
}

fn operation(
    webhook: &Webhook<'_>,
    root: &Field<'_>,
    action: &str,
    effect: Effect,
) -> Result<Box<SyncOperationPayload>, Malformed> {
    let repository = root.get("repository")?.get("full_name")?;
    let repository = repository_name(&repository)?;
    let (kind, record, updated_at) = match webhook.event {
        "issues" => {
            let issue = root.get("issue")?;
            // An issue that is a pull request's conversation carries
            // `pull_request`; it is still the issue's record.
            (ResourceKind::Issue, Record::Issue(issue_record(&issue)?), issue.get("updated_at")?)
        }
        "pull_request" => {
            let pr = root.get("pull_request")?;
            (ResourceKind::PullRequest, Record::PullRequest(pull_request_record(&pr)?), pr.get("updated_at")?)
        }
        "issue_comment" => {
            let comment = root.get("comment")?;
            let issue_number = root.get("issue")?.get("number")?.u64()?;
            (
                ResourceKind::Comment,
                Record::Comment(comment_record(&comment, issue_number)?),
                comment.get("updated_at")?,
            )
        }
        _ => {
            let release = root.get("release")?;
            (ResourceKind::Release, Record::Release(release_record(&release)?), release.get("updated_at")?)
        }
    };
    let (number, id) = match &record {
        Record::Issue(r) => (Some(r.number), None),
        Record::PullRequest(r) => (Some(r.number), None),
        Record::Comment(r) => (Some(r.issue_number), Some(r.id)),
        Record::Release(r) => (None, Some(r.id)),
    };
    let key = match (number, id) {
        (_, Some(id)) if kind == ResourceKind::Comment => format!("github:{repository}:comment:{id}"),
        (_, Some(id)) => format!("github:{repository}:release:{id}"),
        (Some(number), None) => format!("github:{repository}:issue:{number}"),
        (None, None) => return Err(root.problem("names no resource")),
    };
    let (updated_at, updated_at_source) = match updated_at.opt_timestamp_ms()? {
        Some(ms) => (ms, TimeSource::Resource),
        None => (webhook.received_at, TimeSource::Received),
    };
    Ok(Box::new(SyncOperationPayload {
        operation: inbound_operation_id(webhook.delivery, &key),
        direction: Direction::Inbound,
        repository,
        repository_enabled: true,
        kind,
        action: action.to_string(),
        effect,
        updated_at,
        updated_at_source,
        actor: actor(&root.get("sender")?)?,
        delivery: Some(webhook.delivery.to_string()),
        source: webhook.event.to_string(),
        number,
        id,
        content_hash: record::content_hash(&record),
        record: Some(record),
        changes: None,
        received_at: webhook.received_at,
        key,
    }))
}

/// `gh-` and the first 32 hex digits of SHA-256(delivery, NUL, key): the same
/// for a redelivery of the same webhook, different for every resource.
pub fn inbound_operation_id(delivery: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(delivery.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    let digest = hex::encode(hasher.finalize());
    format!("gh-{}", &digest[..32])
}

/// `owner/name`, lowercase, checked to be one.
fn repository_name(field: &Field<'_>) -> Result<String, Malformed> {
    let name = field.str()?;
    let valid_part = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    match name.split_once('/') {
        Some((owner, repo)) if valid_part(owner) && valid_part(repo) => Ok(name.to_lowercase()),
        _ => Err(field.problem(format!("must be \"owner/name\", found {name:?}"))),
    }
}

fn actor(sender: &Field<'_>) -> Result<Actor, Malformed> {
    Ok(Actor {
        login: sender.get("login")?.str()?.to_string(),
        id: sender.get("id")?.opt_u64()?,
        name: sender.get("name")?.opt_str()?.map(str::to_owned),
        email: sender.get("email")?.opt_str()?.map(str::to_owned),
    })
}

fn login(user: &Field<'_>) -> Result<String, Malformed> {
    Ok(user.get("login")?.str()?.to_string())
}

fn text(field: &Field<'_>, name: &str) -> Result<String, Malformed> {
    Ok(field.get(name)?.str()?.to_string())
}

fn opt_text(field: &Field<'_>, name: &str) -> Result<Option<String>, Malformed> {
    Ok(field.get(name)?.opt_str()?.map(str::to_owned))
}

/// The fields issues and pull requests share.
struct Conversation {
    assignees: Vec<String>,
    author: String,
    body: Option<String>,
    closed_at: Option<String>,
    created_at: String,
    html_url: String,
    labels: Vec<String>,
    locked: bool,
    milestone: Option<Milestone>,
    number: u64,
    state: String,
    state_reason: Option<String>,
    title: String,
    updated_at: String,
}

fn conversation(item: &Field<'_>) -> Result<Conversation, Malformed> {
    let mut labels =
        item.get("labels")?.items()?.iter().map(|label| text(label, "name")).collect::<Result<Vec<_>, _>>()?;
    labels.sort();
    labels.dedup();
    let mut assignees = item.get("assignees")?.items()?.iter().map(login).collect::<Result<Vec<_>, _>>()?;
    // Old payloads carry only the single `assignee`.
    let single = item.get("assignee")?;
    if assignees.is_empty() && single.is_present() {
        assignees.push(login(&single)?);
    }
    assignees.sort();
    assignees.dedup();
    let milestone = item.get("milestone")?;
    let milestone = match milestone.is_present() {
        true => Some(Milestone { number: milestone.get("number")?.u64()?, title: text(&milestone, "title")? }),
        false => None,
    };
    let updated = item.get("updated_at")?;
    updated.opt_timestamp_ms()?;
    Ok(Conversation {
        assignees,
        author: login(&item.get("user")?)?,
        body: opt_text(item, "body")?,
        closed_at: opt_text(item, "closed_at")?,
        created_at: text(item, "created_at")?,
        html_url: text(item, "html_url")?,
        labels,
        locked: item.get("locked")?.opt_bool()?.unwrap_or(false),
        milestone,
        number: item.get("number")?.u64()?,
        state: text(item, "state")?,
        state_reason: opt_text(item, "state_reason")?,
        title: text(item, "title")?,
        updated_at: updated.str()?.to_string(),
    })
}

fn issue_record(issue: &Field<'_>) -> Result<IssueRecord, Malformed> {
    let c = conversation(issue)?;
    Ok(IssueRecord {
        assignees: c.assignees,
        author: c.author,
        body: c.body,
        closed_at: c.closed_at,
        created_at: c.created_at,
        html_url: c.html_url,
        labels: c.labels,
        locked: c.locked,
        milestone: c.milestone,
        number: c.number,
        state: c.state,
        state_reason: c.state_reason,
        title: c.title,
        updated_at: c.updated_at,
    })
}

fn git_ref(field: &Field<'_>) -> Result<GitRef, Malformed> {
    Ok(GitRef { name: text(field, "ref")?, sha: text(field, "sha")? })
}

fn pull_request_record(pr: &Field<'_>) -> Result<PullRequestRecord, Malformed> {
    let c = conversation(pr)?;
    Ok(PullRequestRecord {
        assignees: c.assignees,
        author: c.author,
        base: git_ref(&pr.get("base")?)?,
        body: c.body,
        closed_at: c.closed_at,
        created_at: c.created_at,
        draft: pr.get("draft")?.opt_bool()?.unwrap_or(false),
        head: git_ref(&pr.get("head")?)?,
        html_url: c.html_url,
        labels: c.labels,
        locked: c.locked,
        merged: pr.get("merged")?.opt_bool()?.unwrap_or(false),
        merged_at: opt_text(pr, "merged_at")?,
        milestone: c.milestone,
        number: c.number,
        state: c.state,
        state_reason: c.state_reason,
        title: c.title,
        updated_at: c.updated_at,
    })
}

fn comment_record(comment: &Field<'_>, issue_number: u64) -> Result<CommentRecord, Malformed> {
    let updated = comment.get("updated_at")?;
    updated.opt_timestamp_ms()?;
    Ok(CommentRecord {
        author: login(&comment.get("user")?)?,
        body: text(comment, "body")?,
        created_at: text(comment, "created_at")?,
        html_url: text(comment, "html_url")?,
        id: comment.get("id")?.u64()?,
        issue_number,
        updated_at: updated.str()?.to_string(),
    })
}

fn release_record(release: &Field<'_>) -> Result<ReleaseRecord, Malformed> {
    Ok(ReleaseRecord {
        author: login(&release.get("author")?)?,
        body: opt_text(release, "body")?,
        draft: release.get("draft")?.bool()?,
        html_url: text(release, "html_url")?,
        id: release.get("id")?.u64()?,
        name: opt_text(release, "name")?,
        prerelease: release.get("prerelease")?.bool()?,
        published_at: opt_text(release, "published_at")?,
        tag: text(release, "tag_name")?,
    })
}
