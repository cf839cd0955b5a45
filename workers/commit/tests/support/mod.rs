//! Test support for commit-to-git: a bare repository as the remote, read
//! back with the `git` CLI, and operations as normalise writes them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hookbus_bus::{Envelope, Outbox};
use hookbus_commit::wire::{OutcomePayload, SyncedPayload};
use hookbus_commit::{CommitPlugin, GitTarget, PushBatching};
use serde_json::{json, Value};

/// A bare repository in a temp dir, playing the remote.
pub struct BareRemote {
    pub dir: tempfile::TempDir,
}

impl BareRemote {
    pub fn new() -> BareRemote {
        let dir = tempfile::tempdir().expect("temp dir");
        git(dir.path(), &["init", "--bare", "--quiet", "--initial-branch=main"]);
        BareRemote { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Whether `main` exists on the remote.
    pub fn has_branch(&self) -> bool {
        Command::new("git")
            .arg("--git-dir")
            .arg(self.path())
            .args(["rev-parse", "--verify", "--quiet", "refs/heads/main"])
            .output()
            .expect("git rev-parse")
            .status
            .success()
    }

    /// `git log` of `main`, newest first: one entry per commit.
    pub fn log(&self) -> Vec<LoggedCommit> {
        let out = git_out(self.path(), &["log", "--format=%H%x1f%an%x1f%ae%x1f%cn%x1f%ce%x1f%B%x1e", "main"]);
        out.split('\u{1e}')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let f: Vec<&str> = entry.split('\u{1f}').collect();
                LoggedCommit {
                    sha: f[0].into(),
                    author_name: f[1].into(),
                    author_email: f[2].into(),
                    committer_name: f[3].into(),
                    committer_email: f[4].into(),
                    message: f[5].into(),
                }
            })
            .collect()
    }

    /// The file at `path` on `main`, or `None`.
    pub fn file(&self, path: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.path())
            .args(["show", &format!("main:{path}")])
            .output()
            .expect("git show");
        out.status.success().then(|| String::from_utf8(out.stdout).expect("utf-8"))
    }

    /// How many commits on `main` carry `Hookbus-Operation: <operation>`.
    pub fn commits_for(&self, operation: &str) -> usize {
        self.log().iter().filter(|c| c.operation() == Some(operation)).count()
    }
}

#[derive(Debug, Clone)]
pub struct LoggedCommit {
    pub sha: String,
    pub author_name: String,
    pub author_email: String,
    pub committer_name: String,
    pub committer_email: String,
    pub message: String,
}

impl LoggedCommit {
    pub fn subject(&self) -> &str {
        self.message.lines().next().unwrap_or_default()
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.message.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }
    pub fn operation(&self) -> Option<&str> {
        self.trailer("Hookbus-Operation")
    }
}

pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").arg("--git-dir").arg(dir).args(args).status().expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}

pub fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("--git-dir").arg(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

pub fn target(remote: &BareRemote, workdir: &Path) -> GitTarget {
    GitTarget {
        remote: remote.url(),
        branch: "main".into(),
        workdir: workdir.to_path_buf(),
        login: hookbus_commit::RemoteLogin::Anonymous,
        committer_name: "hookbus".into(),
        committer_email: "hookbus@test.invalid".into(),
    }
}

/// A plugin on its own fresh workdir.
pub fn plugin(remote: &BareRemote, workdir: &tempfile::TempDir) -> CommitPlugin {
    plugin_with_window(remote, workdir.path(), Duration::from_millis(5))
}

pub fn plugin_with_window(remote: &BareRemote, workdir: &Path, window: Duration) -> CommitPlugin {
    CommitPlugin::new(target(remote, workdir), PushBatching { window, max: 64 }).expect("plugin")
}

pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// An inbound `issues.<action>` operation for issue `number`, as normalise
/// emits it.
pub fn issue_op(operation: &str, number: u64, title: &str) -> Value {
    json!({
        "operation": operation,
        "direction": "inbound",
        "key": format!("github:octo/repo:issue:{number}"),
        "repository": "octo/repo",
        "repository_enabled": true,
        "kind": "issue",
        "action": "edited",
        "effect": "upsert",
        "updated_at": 1_763_900_000_000i64,
        "updated_at_source": "resource",
        "actor": {"login": "octocat", "id": 583231, "name": null, "email": null},
        "delivery": format!("delivery-{operation}"),
        "source": "issues",
        "number": number,
        "id": 1000 + number,
        "content_hash": "x",
        "record": {
            "number": number, "title": title, "state": "open", "labels": ["bug"], "assignees": [],
            "author": "octocat", "body": "text", "closed_at": null, "created_at": "2026-11-01T00:00:00Z",
            "html_url": format!("https://github.com/octo/repo/issues/{number}"), "locked": false,
            "milestone": null, "state_reason": null, "updated_at": "2026-11-23T00:00:00Z"
        },
        "changes": null,
        "received_at": 1_763_900_000_500i64,
    })
}

pub fn envelope(op: &Value) -> Envelope {
    let key = op["key"].as_str().expect("key").to_string();
    Envelope::with_payload("sync.apply", op).expect("encodes").keyed(key)
}

/// What one handled message emitted.
pub struct Emitted {
    pub outcomes: Vec<OutcomePayload>,
    pub synced: Vec<SyncedPayload>,
}

pub async fn handle(plugin: &CommitPlugin, op: &Value) -> Result<Emitted, hookbus_bus::HandlerError> {
    use hookbus_bus::Plugin;
    let message = envelope(op);
    let mut out = Outbox::new(&message.trace_id);
    plugin.handle(&message, &mut out).await?;
    Ok(split(out))
}

pub fn split(out: Outbox) -> Emitted {
    let mut emitted = Emitted { outcomes: Vec::new(), synced: Vec::new() };
    for (queue, message) in out.into_messages() {
        match (queue.as_str(), message.kind.as_str()) {
            ("reconcile", "sync.outcome") => emitted.outcomes.push(message.payload_as().expect("outcome")),
            ("notify", "record.synced") => emitted.synced.push(message.payload_as().expect("synced")),
            other => panic!("unexpected output {other:?}"),
        }
    }
    emitted
}

pub fn unused_path() -> PathBuf {
    std::env::temp_dir().join(format!("hookbus-no-such-remote-{}", std::process::id()))
}
