//! hookbus-commit: commit-to-git (SPEC §6 "commit"). Each `sync.apply`
//! operation becomes its record's file in a git repository, one commit per
//! operation authored by whoever made the change, pushed to the configured
//! remote.
//!
//! - [`wire`]: the payloads read (`sync.apply`) and written (`sync.outcome`
//!   to reconcile, `record.synced` to notify).
//! - [`record_file`]: paths, canonical bytes, commit messages and authors —
//!   pure functions.
//! - [`workdir`]: the worker's clone: commit, push, re-apply on a moved
//!   remote, find an operation again by its `Hookbus-Operation` trailer.
//! - [`objects`]: new git objects in memory until the push, then one pack
//!   per push, and few packs in all.
//! - [`push`]: batches the pushes of concurrent handlers.
//! - [`error`]: what failed, and whether a retry can help.
//!
//! [`CommitPlugin`] is the plugin; the `hookbus-commit` binary runs it over
//! Redis, `hookbus dev` over the in-memory bus. Each pushed commit is also
//! recorded (sha, resource, author, subject, time) in the bus's `commits`
//! journal ([`CommitPlugin::with_journal`]) for the admin page, since the
//! gateway has no clone. Invariant: an operation's
//! outcome is emitted only once its commit is on the remote, and the trailer
//! makes a redelivered operation find its commit instead of making another.
//! Each running worker needs its own workdir; any number may push to one
//! remote.

pub mod contents;
pub mod error;
pub mod objects;
pub mod push;
pub mod record_file;
pub mod wire;
pub mod workdir;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::{Envelope, HandlerError, Journal, Outbox, Plugin};
use hookbus_config::{GitMode, Settings};

pub use contents::{ContentsApi, ContentsTarget};
pub use error::CommitError;
pub use workdir::{GitTarget, RemoteLogin};

use crate::push::PushGroup;
use crate::wire::{
    ApplyPayload, Direction, OperationRef, Outcome, OutcomePayload, SyncedPayload, APPLY_KIND, OUTCOME_KIND,
    SYNCED_KIND,
};
use crate::workdir::{Applied, Workdir};

/// The queue the plugin reads.
pub const INPUT: &str = "commit";
/// Where outcomes go.
pub const RECONCILE: &str = "reconcile";
/// Where synced records go.
pub const NOTIFY: &str = "notify";
/// The journal pushed commits are recorded in (the admin page reads it).
pub const COMMITS_JOURNAL: &str = "commits";
/// Commits kept in that journal.
pub const COMMITS_KEPT: usize = 200;
/// How many of the newest journal entries are checked so that a commit
/// found again on redelivery is not recorded twice.
const JOURNAL_DEDUPE_WINDOW: usize = 50;

/// How pushes are batched.
#[derive(Debug, Clone, Copy)]
pub struct PushBatching {
    /// How long a commit waits for others to share its push.
    pub window: Duration,
    /// A batch this large is pushed at once.
    pub max: usize,
}

/// Git mode's workdir, its batch pusher, and the remote's login.
type GitParts = (Arc<Mutex<Workdir>>, Arc<PushGroup>, Arc<RemoteLogin>);

/// The commit-to-git stage.
pub struct CommitPlugin {
    git: Option<GitParts>,
    contents: Option<ContentsApi>,
    /// Where pushed commits are recorded for people, if anywhere.
    journal: Option<Journal>,
}

impl CommitPlugin {
    pub fn new(target: GitTarget, batching: PushBatching) -> Result<Self, CommitError> {
        let login = Arc::new(target.login.clone());
        let workdir = Arc::new(Mutex::new(Workdir::open(target)?));
        let group = PushGroup::new(Arc::clone(&workdir), Arc::clone(&login), batching.window, batching.max.max(1));
        Ok(CommitPlugin { git: Some((workdir, group, login)), contents: None, journal: None })
    }

    /// Contents-API mode: one GitHub contents-API request per record.
    pub fn contents_api(target: ContentsTarget) -> Result<Self, CommitError> {
        Ok(CommitPlugin { git: None, contents: Some(ContentsApi::new(target)?), journal: None })
    }

    /// Records every pushed commit in `journal` (see [`COMMITS_JOURNAL`]).
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Adds one pushed commit to the journal. The commit is on the remote
    /// already; a journal that cannot be written only leaves the admin
    /// page's list short, so it is logged, not retried.
    async fn record_commit(&self, op: &ApplyPayload, synced: &Synced) {
        let (Some(journal), Some(sha)) = (&self.journal, &synced.commit) else { return };
        // A redelivered operation finds its commit again (by its trailer):
        // recorded once. (A crash after the push but before this line is
        // healed by that same redelivery.)
        if let Ok(recent) = journal.recent(JOURNAL_DEDUPE_WINDOW).await {
            if recent.iter().any(|entry| entry["sha"].as_str() == Some(sha.as_str())) {
                return;
            }
        }
        let content: Option<serde_json::Value> = synced.content.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let message = record_file::message(op, content.as_ref());
        let (author, author_email) = record_file::author(op);
        let entry = serde_json::json!({
            "sha": sha,
            "resource": op.key,
            "path": synced.path,
            "operation": op.operation,
            "delivery": op.delivery,
            "author": author,
            "author_email": author_email,
            "login": op.actor.login,
            "message": message.lines().next().unwrap_or_default(),
            "at": hookbus_bus::envelope::now_ms(),
        });
        if let Err(err) = journal.append(&entry).await {
            tracing::warn!(operation = %op.operation, commit = %sha, error = %err, "cannot record the commit for the admin page");
        }
    }

    /// The plugin the settings describe (`git.*`, and `github.token` or the
    /// App's installation).
    pub fn from_settings(settings: &Settings) -> Result<Self, CommitError> {
        let git = &settings.git;
        let credentials = hookbus_github::Credentials::from_settings(&settings.github)
            .map_err(|e| CommitError::Config(e.to_string()))?;
        if git.mode == GitMode::ContentsApi {
            let Some(credentials) = credentials else {
                return Err(CommitError::Config(
                    "github.token (HOOKBUS_GITHUB__TOKEN), or a GitHub App (HOOKBUS_GITHUB__APP_ID and \
                     HOOKBUS_GITHUB__APP_PRIVATE_KEY), is required when git.mode is contents_api"
                        .into(),
                ));
            };
            return Self::contents_api(ContentsTarget {
                api_url: settings.github.api_url.clone(),
                credentials,
                repository: git.contents_repository.trim().to_string(),
                branch: git.branch.clone(),
                committer_name: git.committer_name.clone(),
                committer_email: git.committer_email.clone(),
            });
        }
        let remote = git.require_remote().map_err(|e| CommitError::Config(e.to_string()))?;
        let target = GitTarget {
            remote: remote.to_string(),
            branch: git.branch.clone(),
            workdir: git.workdir.clone(),
            login: RemoteLogin::from_credentials(&settings.github.api_url, credentials, remote)?,
            committer_name: git.committer_name.clone(),
            committer_email: git.committer_email.clone(),
        };
        Self::new(target, PushBatching { window: git.push_window(), max: git.push_batch_max })
    }

    /// How many batch pushes have run.
    pub fn push_batches(&self) -> u64 {
        self.git.as_ref().map_or(0, |(_, group, _)| group.flushes())
    }

    /// Runs `f` on the workdir on a blocking thread (git2 blocks, and the
    /// repository is used by one thread at a time); with `remote`, when `f`
    /// may contact the remote, with its current password.
    async fn with_workdir<T: Send + 'static>(
        workdir: &Arc<Mutex<Workdir>>,
        remote: Option<&RemoteLogin>,
        f: impl FnOnce(&mut Workdir) -> Result<T, CommitError> + Send + 'static,
    ) -> Result<T, CommitError> {
        let workdir = Arc::clone(workdir);
        let password = match remote {
            Some(login) => login.current_password().await?,
            None => None,
        };
        let outcome = tokio::task::spawn_blocking(move || {
            let mut workdir = workdir.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(password) = password {
                workdir.set_password(password);
            }
            f(&mut workdir)
        })
        .await
        .unwrap_or_else(|err| Err(CommitError::Batch { permanent: false, reason: format!("git task failed: {err}") }));
        match (outcome, remote) {
            (Err(err), Some(login)) => Err(login.after_failure(err).await),
            (outcome, _) => outcome,
        }
    }

    async fn apply(&self, op: ApplyPayload, out: &mut Outbox) -> Result<(), HandlerError> {
        let result = match (&self.git, &self.contents) {
            (Some((workdir, group, login)), _) => Self::apply_git(workdir, group, login, &op).await?,
            (None, Some(contents)) => contents.apply(&op).await?,
            (None, None) => return Err(HandlerError::permanent("commit has no target")),
        };
        tracing::info!(
            operation = %op.operation,
            key = %op.key,
            commit = result.commit.as_deref().unwrap_or("none"),
            "operation synced"
        );
        self.record_commit(&op, &result).await;
        emit(&op, &result, out).map_err(HandlerError::from)
    }

    async fn apply_git(
        workdir: &Arc<Mutex<Workdir>>,
        group: &Arc<PushGroup>,
        login: &RemoteLogin,
        op: &ApplyPayload,
    ) -> Result<Synced, CommitError> {
        let operation = op.clone();
        let committing = group.committing();
        let applied = Self::with_workdir(workdir, Some(login), move |workdir| workdir.apply(&operation)).await;
        drop(committing);
        let applied = applied?;
        let result = match applied {
            Applied::Skipped { path, reason } => Synced::skipped(path, reason, false),
            Applied::Superseded { path, reason } => Synced::skipped(Some(path), reason, true),
            Applied::Unchanged { path, content } => Synced {
                commit: None,
                path: Some(path),
                content,
                reason: Some("unchanged: no commit".into()),
                superseded: false,
            },
            Applied::Committed { path } => {
                let commit = group.pushed(&op.operation).await?;
                let read_path = path.clone();
                let content = match commit {
                    Some(commit) => {
                        Self::with_workdir(workdir, None, move |w| Ok(w.file_at(commit, &read_path))).await?
                    }
                    None => None,
                };
                let reason = commit.is_none().then(|| "unchanged on the remote's newer tip: no commit".to_string());
                Synced { commit: commit.map(|c| c.to_string()), path: Some(path), content, reason, superseded: false }
            }
        };
        Ok(result)
    }
}

/// Where an operation ended up in git.
pub(crate) struct Synced {
    pub(crate) commit: Option<String>,
    pub(crate) path: Option<String>,
    /// The file's bytes in git now; `None` when there is no file.
    pub(crate) content: Option<Vec<u8>>,
    pub(crate) reason: Option<String>,
    /// The file holds newer data than the operation: a client's change is
    /// not written back either.
    pub(crate) superseded: bool,
}

impl Synced {
    /// No commit and no file content, and why.
    pub(crate) fn skipped(path: Option<String>, reason: String, superseded: bool) -> Self {
        Synced { commit: None, path, content: None, reason: Some(reason), superseded }
    }
}

fn emit(op: &ApplyPayload, synced: &Synced, out: &mut Outbox) -> Result<(), CommitError> {
    let encode = |err: hookbus_bus::envelope::PayloadError| CommitError::payload(op, err.to_string());
    let outcome = OutcomePayload {
        operation: op.operation.clone(),
        key: op.key.clone(),
        outcome: Outcome::Completed,
        commit: synced.commit.clone(),
        path: synced.path.clone(),
        content_hash: synced.content.as_deref().map(record_file::content_hash),
        reason: synced.reason.clone(),
    };
    out.emit_payload(RECONCILE, OUTCOME_KIND, Some(&op.key), &outcome).map_err(encode)?;
    if synced.commit.is_some() || (op.direction == Direction::Outbound && !synced.superseded) {
        let payload = SyncedPayload {
            operation: op.operation.clone(),
            key: op.key.clone(),
            repository: op.repository.clone(),
            kind: op.kind,
            action: op.action.clone(),
            direction: op.direction,
            source: op.source.clone(),
            commit: synced.commit.clone(),
            path: synced.path.clone(),
            record: synced.content.as_deref().and_then(|b| serde_json::from_slice(b).ok()),
            actor: op.actor.clone(),
            delivery: op.delivery.clone(),
            updated_at: op.updated_at,
            number: op.number,
            id: op.id,
            changes: op.changes.clone(),
        };
        out.emit_payload(NOTIFY, SYNCED_KIND, Some(&op.key), &payload).map_err(encode)?;
    }
    Ok(())
}

#[async_trait]
impl Plugin for CommitPlugin {
    fn name(&self) -> &str {
        "commit"
    }

    fn input(&self) -> &str {
        INPUT
    }

    fn outputs(&self) -> Vec<String> {
        vec![RECONCILE.into(), NOTIFY.into()]
    }

    async fn handle(&self, message: &Envelope, out: &mut Outbox) -> Result<(), HandlerError> {
        if message.kind != APPLY_KIND {
            return Err(HandlerError::permanent(format!("commit reads {APPLY_KIND}, not {}", message.kind)));
        }
        let op: ApplyPayload =
            message.payload_as().map_err(|err| HandlerError::permanent(format!("{APPLY_KIND} payload: {err}")))?;
        if !op.repository_enabled {
            let synced = Synced::skipped(None, format!("repository {} is not synced", op.repository), false);
            return emit(&op, &synced, out).map_err(HandlerError::from);
        }
        self.apply(op, out).await.inspect_err(|err| {
            tracing::warn!(trace_id = %message.trace_id, error = %err, "commit failed");
        })
    }

    fn on_dead(&self, message: &Envelope, reason: &str, out: &mut Outbox) {
        let Ok(op) = message.payload_as::<OperationRef>() else { return };
        let key = message.key.clone().unwrap_or_default();
        let outcome = OutcomePayload {
            operation: op.operation,
            key: key.clone(),
            outcome: Outcome::Errored,
            commit: None,
            path: None,
            content_hash: None,
            reason: Some(reason.to_string()),
        };
        if let Err(err) = out.emit_payload(RECONCILE, OUTCOME_KIND, Some(&key), &outcome) {
            tracing::error!(error = %err, "cannot report a dead operation to reconcile");
        }
    }
}
