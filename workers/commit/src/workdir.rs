//! The worker's own clone (a bare repository at `git.workdir`) and what is
//! done to it: commit an operation, push, and re-apply unpushed commits on
//! top of a remote that moved.
//!
//! Files are never written to a working tree: each commit's tree is built in
//! memory from its parent's. New objects stay in memory, and the local
//! branch with them, until the next push writes them as one pack and then
//! moves the branch ref (see [`crate::objects`]). A SIGKILL at any point
//! therefore leaves the branch on disk at a commit whose objects are all
//! there; what was only in memory was never pushed, so its messages were
//! not acknowledged and come again. A commit that is on disk but was not
//! pushed is found again by its `Hookbus-Operation` trailer when the
//! message is redelivered, and pushed then.
//!
//! Not `Sync` (git2's `Repository` is not): the plugin keeps it behind one
//! mutex and uses it from blocking threads.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use git2::build::TreeUpdateBuilder;
use git2::{Cred, CredentialType, FetchOptions, FileMode, Oid, PushOptions, RemoteCallbacks, Repository};

use crate::error::CommitError;
use crate::objects;
use crate::record_file::{self, Desired};
use crate::wire::ApplyPayload;

/// How many commits back a redelivered operation is looked for.
const SCAN_DEPTH: usize = 500;
/// Pushes rejected in a row (the remote keeps moving) before giving up for
/// this attempt; the bus retries later.
const PUSH_TRIES: u32 = 5;
/// The remote's name in the workdir.
const REMOTE: &str = "origin";
/// A ref lock in a local remote older than this was left by a killed
/// pusher: a ref update holds it for microseconds.
const ABANDONED_LOCK_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where and as whom to commit.
#[derive(Debug, Clone)]
pub struct GitTarget {
    /// A local path, `file://` or `https://` URL.
    pub remote: String,
    pub branch: String,
    pub workdir: PathBuf,
    /// Who to say we are to an `https://` remote.
    pub login: RemoteLogin,
    pub committer_name: String,
    pub committer_email: String,
}

/// What an `https://` remote is told when it asks who we are: a token as
/// the password of `x-access-token` (GitHub accepts one for any user).
#[derive(Clone, Default)]
pub enum RemoteLogin {
    /// Nothing: a local remote, or one that asks nobody.
    #[default]
    Anonymous,
    /// `github.token`.
    Token(String),
    /// A GitHub App's installation (fixed, or the one on `repository`):
    /// its current token, looked up before each time the remote may be
    /// contacted (octocrab keeps it until half a minute before its hour is
    /// up, then mints the next).
    Installation { github: Box<hookbus_github::Github>, repository: String },
}

impl std::fmt::Debug for RemoteLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteLogin::Anonymous => "Anonymous",
            RemoteLogin::Token(_) => "Token(***)",
            RemoteLogin::Installation { .. } => "Installation",
        })
    }
}

impl RemoteLogin {
    /// The login for `credentials` (none: anonymous) at `remote`, an
    /// `https://<host>/<owner>/<repo>[.git]` URL (or a local one, which
    /// asks nobody).
    pub fn from_credentials(
        api_url: &str,
        credentials: Option<hookbus_github::Credentials>,
        remote: &str,
    ) -> Result<Self, CommitError> {
        Ok(match credentials {
            None => RemoteLogin::Anonymous,
            Some(hookbus_github::Credentials::Token(token)) => RemoteLogin::Token(token),
            Some(credentials) => {
                let github = hookbus_github::Github::new(api_url, credentials, std::time::Duration::from_secs(30))
                    .map_err(|e| CommitError::Config(e.to_string()))?;
                RemoteLogin::Installation { github: Box::new(github), repository: repository_of(remote) }
            }
        })
    }

    /// The password to use from now on, when it is one that changes (an
    /// installation's); `None` keeps the one the workdir has.
    pub async fn current_password(&self) -> Result<Option<String>, CommitError> {
        match self {
            RemoteLogin::Installation { github, repository } => match github.git_password(repository).await {
                Ok(password) => Ok(Some(password)),
                Err(err) => {
                    // The installation may be gone (the App installed
                    // again): the next try looks it up afresh.
                    let forgotten = github.forget_installation(&format!("/repos/{repository}")).await;
                    let mut reason = format!("cannot get a token for the App's installation: {err}");
                    if forgotten {
                        reason.push_str("; the next try starts with a new token for the App's installation");
                    }
                    Err(CommitError::Batch { permanent: err.is_permanent() && !forgotten, reason })
                }
            },
            _ => Ok(None),
        }
    }

    /// `err` as the caller should see it: when the remote refused an App
    /// installation's token, that installation is forgotten
    /// (`Github::forget_installation`: the App may have been installed
    /// again, and the old installation's tokens stop working) and the
    /// failure is one to try again, with the token minted then.
    pub async fn after_failure(&self, err: CommitError) -> CommitError {
        let RemoteLogin::Installation { github, repository } = self else { return err };
        let refused = matches!(err, CommitError::AuthRefused { .. });
        if refused && github.forget_installation(&format!("/repos/{repository}")).await {
            return CommitError::Batch {
                permanent: false,
                reason: format!("{err}; the next try starts with a new token for the App's installation"),
            };
        }
        err
    }

    /// The settings to check when the remote refuses us.
    fn settings(&self) -> &'static str {
        match self {
            RemoteLogin::Installation { github, .. } => github.credentials().settings(),
            _ => "HOOKBUS_GITHUB__TOKEN",
        }
    }
}

/// `owner/repo` of an `https://<host>/<owner>/<repo>[.git]` remote (its last
/// two path segments).
fn repository_of(remote: &str) -> String {
    let path = remote.split_once("://").map_or(remote, |(_, rest)| rest);
    let mut segments: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(2).collect();
    segments.reverse();
    segments.join("/").trim_end_matches(".git").to_string()
}

impl GitTarget {
    /// The remote's directory, when it is on this machine.
    fn local_path(&self) -> Option<PathBuf> {
        if let Some(rest) = self.remote.strip_prefix("file://") {
            return Some(PathBuf::from(rest));
        }
        (!self.remote.contains("://")).then(|| PathBuf::from(&self.remote))
    }
}

/// What applying one operation did to the local branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// No file to write, and why.
    Skipped { path: Option<String>, reason: String },
    /// The file holds newer data than the operation, and why.
    Superseded { path: String, reason: String },
    /// The file already has these bytes (`None`: already absent).
    Unchanged { path: String, content: Option<Vec<u8>> },
    /// A commit on the local branch carries the operation (made now, or
    /// before a crash); it is pushed with the next batch.
    Committed { path: String },
}

/// What one write made of a parent commit.
enum Write {
    Skipped(String),
    Superseded(String),
    Unchanged(Option<Vec<u8>>),
    Committed(Oid),
}

pub struct Workdir {
    repo: Repository,
    target: GitTarget,
    branch_ref: String,
    tracking_ref: String,
    /// The local branch's tip. Ahead of `branch_ref` on disk until the
    /// next push writes the new objects out ([`Workdir::persist`]).
    tip: Option<Oid>,
    /// The tip `branch_ref` names on disk.
    on_disk: Option<Oid>,
    /// A merge of packs running beside the workdir, if any.
    merging: Option<std::thread::JoinHandle<Result<Option<objects::Merged>, git2::Error>>>,
    /// Operation -> commit, for the recent history of the local branch.
    committed: HashMap<String, Oid>,
    /// Commits this process made that the remote does not have yet, with
    /// their operations: re-applied with the same logic when a push is
    /// rejected. Commits left by an earlier process are replayed from
    /// their own diffs instead.
    pending: HashMap<Oid, ApplyPayload>,
    /// Whether the remote has been read since the workdir was opened.
    synced: bool,
    /// The password for an `https://` remote, if it asks: the token, or the
    /// installation's token last looked up ([`Workdir::set_password`]).
    password: Option<String>,
}

impl Workdir {
    /// Opens the workdir, creating it (and the remote's entry) when missing.
    /// Does not contact the remote; the first [`Workdir::apply`] does.
    pub fn open(target: GitTarget) -> Result<Self, CommitError> {
        if let Some(path) = target.local_path() {
            if !path.exists() {
                return Err(CommitError::RemoteMissing { remote: target.remote.clone() });
            }
        }
        let workdir_error =
            |reason: String| CommitError::Workdir { path: target.workdir.display().to_string(), reason };
        std::fs::create_dir_all(&target.workdir).map_err(|e| workdir_error(e.to_string()))?;
        // A workdir belongs to one process; a lock file left there is from a
        // process that was killed mid-update and would block every update.
        remove_stale_locks(&target.workdir).map_err(|e| workdir_error(format!("removing stale locks: {e}")))?;
        // Likewise the temporary files of a pack whose writing or merge a
        // kill cut short: never read, never removed by anyone else.
        objects::remove_unfinished_packs(&target.workdir)
            .map_err(|e| workdir_error(format!("removing unfinished packs: {e}")))?;
        let repo = match Repository::open_bare(&target.workdir) {
            Ok(repo) => repo,
            Err(err) if err.code() == git2::ErrorCode::NotFound => {
                Repository::init_bare(&target.workdir).map_err(|e| workdir_error(e.message().to_string()))?
            }
            Err(err) => return Err(workdir_error(err.message().to_string())),
        };
        objects::keep_new_objects_in_memory(&repo).map_err(|e| workdir_error(e.message().to_string()))?;
        match repo.find_remote(REMOTE) {
            Ok(remote) if remote.url() == Some(target.remote.as_str()) => {}
            Ok(_) => repo.remote_set_url(REMOTE, &target.remote).map_err(CommitError::git("set remote url"))?,
            Err(_) => {
                repo.remote(REMOTE, &target.remote).map_err(CommitError::git("add remote"))?;
            }
        }
        let branch_ref = format!("refs/heads/{}", target.branch);
        let tracking_ref = format!("refs/remotes/{REMOTE}/{}", target.branch);
        let tip = repo.refname_to_id(&branch_ref).ok();
        let password = match &target.login {
            RemoteLogin::Token(token) => Some(token.clone()),
            _ => None,
        };
        let mut workdir = Workdir {
            repo,
            password,
            target,
            branch_ref,
            tracking_ref,
            tip,
            on_disk: tip,
            merging: None,
            committed: HashMap::new(),
            pending: HashMap::new(),
            synced: false,
        };
        workdir.committed = workdir.scan(workdir.local_tip());
        Ok(workdir)
    }

    /// Replaces the password (the installation's current token) before the
    /// remote is contacted again.
    pub fn set_password(&mut self, password: String) {
        self.password = Some(password);
    }

    /// Commits `op` on the local branch unless it is already there or
    /// changes nothing.
    pub fn apply(&mut self, op: &ApplyPayload) -> Result<Applied, CommitError> {
        if !self.synced {
            let tip = self.fetch()?;
            self.rebase_onto(tip)?;
            self.synced = true;
        }
        let Some(path) = record_file::path_for(op)? else {
            return Ok(Applied::Skipped {
                path: None,
                reason: "created on GitHub; the file arrives with GitHub's webhook".into(),
            });
        };
        if self.committed.contains_key(&op.operation) {
            return Ok(Applied::Committed { path });
        }
        // An outbound change edits the current file, and "unchanged" is only
        // true of the newest file: both must not be judged on a stale clone.
        let mut refreshed = false;
        if op.direction == crate::wire::Direction::Outbound {
            self.refresh_if_moved()?;
            refreshed = true;
        }
        loop {
            match self.write(self.local_tip(), op, &path)? {
                Write::Skipped(reason) => return Ok(Applied::Skipped { path: Some(path), reason }),
                Write::Superseded(reason) => return Ok(Applied::Superseded { path, reason }),
                Write::Unchanged(content) if refreshed => return Ok(Applied::Unchanged { path, content }),
                Write::Unchanged(content) => {
                    if !self.refresh_if_moved()? {
                        return Ok(Applied::Unchanged { path, content });
                    }
                    refreshed = true;
                    if self.committed.contains_key(&op.operation) {
                        return Ok(Applied::Committed { path });
                    }
                }
                Write::Committed(oid) => {
                    self.set_branch(oid);
                    self.committed.insert(op.operation.clone(), oid);
                    self.pending.insert(oid, op.clone());
                    return Ok(Applied::Committed { path });
                }
            }
        }
    }

    /// The commit on the local branch that carries `operation`.
    pub fn commit_of(&self, operation: &str) -> Option<Oid> {
        self.committed.get(operation).copied()
    }

    /// The file's bytes in `commit`'s tree.
    pub fn file_at(&self, commit: Oid, path: &str) -> Option<Vec<u8>> {
        let tree = self.repo.find_commit(commit).ok()?.tree().ok()?;
        read_file(&self.repo, &tree, path)
    }

    /// Pushes the local branch; a rejection (the remote moved) is resolved
    /// by fetching and re-applying the unpushed commits, never by force.
    pub fn push(&mut self) -> Result<(), CommitError> {
        for tries in 0..PUSH_TRIES {
            if tries > 0 {
                // Workers re-applying in lockstep would collide again: wait
                // a little, at random, growing with each rejection.
                std::thread::sleep(push_backoff(tries));
            }
            let Some(local) = self.local_tip() else { return Ok(()) };
            if self.tracking_tip() == Some(local) {
                return Ok(());
            }
            self.persist()?;
            if self.push_once()? {
                self.repo
                    .reference(&self.tracking_ref, local, true, "hookbus: pushed")
                    .map_err(CommitError::git("update tracking ref"))?;
                self.pending.clear();
                return Ok(());
            }
            tracing::info!(remote = %self.target.remote, "push rejected: the remote moved; re-applying on its tip");
            let tip = self.fetch()?;
            self.rebase_onto(tip)?;
        }
        Err(CommitError::StillRejected { remote: self.target.remote.clone(), tries: PUSH_TRIES })
    }

    fn local_tip(&self) -> Option<Oid> {
        self.tip
    }

    fn tracking_tip(&self) -> Option<Oid> {
        self.repo.refname_to_id(&self.tracking_ref).ok()
    }

    /// Moves the local branch (in memory; on disk at the next push).
    fn set_branch(&mut self, oid: Oid) {
        self.tip = Some(oid);
    }

    /// Writes what the branch gained since it was last on disk as one pack,
    /// then moves the branch ref on disk, then starts over with an empty
    /// memory (by reopening the repository). Keeps the packs few.
    fn persist(&mut self) -> Result<(), CommitError> {
        let Some(tip) = self.tip else { return Ok(()) };
        if self.on_disk == Some(tip) {
            return Ok(());
        }
        let known: Vec<Oid> = self.on_disk.into_iter().chain(self.tracking_tip()).collect();
        if !known.contains(&tip) {
            objects::write_pack(&self.repo, tip, &known).map_err(CommitError::git("write pack"))?;
        }
        self.repo
            .reference(&self.branch_ref, tip, true, "hookbus: commit")
            .map_err(CommitError::git("update branch"))?;
        self.on_disk = Some(tip);
        // Nothing reads through the old handle from here to the reopening:
        // the packs a finished merge replaced can go.
        self.finish_merge();
        let reopen = |e: git2::Error| CommitError::Workdir {
            path: self.target.workdir.display().to_string(),
            reason: format!("reopening: {}", e.message()),
        };
        let repo = Repository::open_bare(&self.target.workdir).map_err(reopen)?;
        objects::keep_new_objects_in_memory(&repo).map_err(reopen)?;
        self.repo = repo;
        if self.merging.is_none() && objects::too_many_packs(&self.target.workdir) {
            let path = self.target.workdir.clone();
            self.merging = Some(std::thread::spawn(move || objects::merge_packs(&path)));
        }
        Ok(())
    }

    /// Removes the packs a finished background merge replaced.
    fn finish_merge(&mut self) {
        if !self.merging.as_ref().is_some_and(|merge| merge.is_finished()) {
            return;
        }
        let Some(merge) = self.merging.take() else { return };
        match merge.join() {
            Ok(Ok(Some(merged))) => {
                let count = merged.count();
                match merged.remove() {
                    Ok(()) => tracing::debug!(packs = count, "merged packs of the workdir"),
                    Err(err) => tracing::warn!(error = %err, "could not remove packs after merging them"),
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "merging the workdir's packs failed; will try again"),
            Err(_) => tracing::warn!("merging the workdir's packs panicked; will try again"),
        }
    }

    /// Writes `op`'s file on top of `parent` (a new commit, not yet on any branch).
    fn write(&self, parent: Option<Oid>, op: &ApplyPayload, path: &str) -> Result<Write, CommitError> {
        let base = self.tree_of(parent)?;
        let current = read_file(&self.repo, &base, path);
        let mut update = TreeUpdateBuilder::new();
        let content = match record_file::desired(op, path, current.as_deref())? {
            Desired::Skip(reason) => return Ok(Write::Skipped(reason)),
            Desired::Superseded(reason) => return Ok(Write::Superseded(reason)),
            Desired::Delete if current.is_none() => return Ok(Write::Unchanged(None)),
            Desired::Write(bytes) if current.as_deref() == Some(bytes.as_slice()) => {
                return Ok(Write::Unchanged(Some(bytes)))
            }
            Desired::Delete => {
                update.remove(path);
                None
            }
            Desired::Write(bytes) => {
                let blob = self.repo.blob(&bytes).map_err(CommitError::git("write blob"))?;
                update.upsert(path, blob, FileMode::Blob);
                Some(bytes)
            }
        };
        let tree = update.create_updated(&self.repo, &base).map_err(CommitError::git("build tree"))?;
        let content: Option<serde_json::Value> = content.and_then(|b| serde_json::from_slice(&b).ok());
        let message = record_file::message(op, content.as_ref());
        let (name, email) = record_file::author(op);
        let when = git2::Time::new(op.updated_at.div_euclid(1000), 0);
        let author = git2::Signature::new(&name, &email, &when).map_err(CommitError::git("author signature"))?;
        self.commit(parent, tree, &author, &message).map(Write::Committed)
    }

    fn commit(
        &self,
        parent: Option<Oid>,
        tree: Oid,
        author: &git2::Signature,
        message: &str,
    ) -> Result<Oid, CommitError> {
        let committer = git2::Signature::now(&self.target.committer_name, &self.target.committer_email)
            .map_err(CommitError::git("committer signature"))?;
        let tree = self.repo.find_tree(tree).map_err(CommitError::git("find tree"))?;
        let parent = parent.map(|p| self.repo.find_commit(p)).transpose().map_err(CommitError::git("find parent"))?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo.commit(None, author, &committer, message, &tree, &parents).map_err(CommitError::git("commit"))
    }

    fn tree_of(&self, commit: Option<Oid>) -> Result<git2::Tree<'_>, CommitError> {
        match commit {
            Some(oid) => self.repo.find_commit(oid).and_then(|c| c.tree()).map_err(CommitError::git("read tree")),
            None => {
                let empty =
                    self.repo.treebuilder(None).and_then(|b| b.write()).map_err(CommitError::git("empty tree"))?;
                self.repo.find_tree(empty).map_err(CommitError::git("empty tree"))
            }
        }
    }

    /// Operation -> commit for the last [`SCAN_DEPTH`] commits from `tip`.
    fn scan(&self, tip: Option<Oid>) -> HashMap<String, Oid> {
        let mut found = HashMap::new();
        let Some(tip) = tip else { return found };
        let Ok(mut walk) = self.repo.revwalk() else { return found };
        if walk.push(tip).is_err() {
            return found;
        }
        for oid in walk.take(SCAN_DEPTH).flatten() {
            if let Ok(commit) = self.repo.find_commit(oid) {
                if let Some(op) = commit.message().and_then(record_file::operation_of) {
                    found.entry(op.to_string()).or_insert(oid);
                }
            }
        }
        found
    }

    /// Fetches the branch into the tracking ref; its tip (`None`: the
    /// remote has no such branch yet). Not `ls-remote` first: git2's
    /// listing of an empty remote is unsound.
    fn fetch(&mut self) -> Result<Option<Oid>, CommitError> {
        let mut remote = self.repo.find_remote(REMOTE).map_err(CommitError::git("find remote"))?;
        let auth = Auth::new(self.password.as_deref());
        let mut options = FetchOptions::new();
        options.remote_callbacks(auth.callbacks());
        let refspec = format!("+{}:{}", self.branch_ref, self.tracking_ref);
        remote.fetch(&[refspec], Some(&mut options), None).map_err(|e| self.classify("fetch", e, &auth))?;
        Ok(self.tracking_tip())
    }

    /// Fetches and re-applies when the remote moved since last read.
    fn refresh_if_moved(&mut self) -> Result<bool, CommitError> {
        let known = self.tracking_tip();
        let tip = self.fetch()?;
        if tip == known {
            return Ok(false);
        }
        self.rebase_onto(tip)?;
        Ok(true)
    }

    /// Puts the local branch's unpushed commits on top of `base` (the
    /// remote's tip): operations already on `base` are skipped, this
    /// process's operations are re-applied with their own logic, and commits
    /// left by an earlier process are replayed from their diffs.
    fn rebase_onto(&mut self, base: Option<Oid>) -> Result<(), CommitError> {
        let Some(base) = base else { return Ok(()) };
        let Some(local) = self.local_tip() else {
            self.set_branch(base);
            self.committed = self.scan(Some(base));
            return Ok(());
        };
        if local == base || self.repo.graph_descendant_of(local, base).unwrap_or(false) {
            return Ok(());
        }
        if self.repo.graph_descendant_of(base, local).unwrap_or(false) {
            self.set_branch(base);
            self.committed = self.scan(Some(base));
            self.pending.clear();
            return Ok(());
        }
        let mut walk = self.repo.revwalk().map_err(CommitError::git("revwalk"))?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE).map_err(CommitError::git("revwalk"))?;
        walk.push(local).map_err(CommitError::git("revwalk"))?;
        walk.hide(base).map_err(CommitError::git("revwalk"))?;
        let unpushed: Vec<Oid> = walk.collect::<Result<_, _>>().map_err(CommitError::git("revwalk"))?;
        let on_base: HashSet<String> = self.scan(Some(base)).into_keys().collect();
        let mut pending = std::mem::take(&mut self.pending);
        let mut tip = base;
        let mut still_pending = HashMap::new();
        for oid in unpushed {
            let commit = self.repo.find_commit(oid).map_err(CommitError::git("read commit"))?;
            if commit.message().and_then(record_file::operation_of).is_some_and(|op| on_base.contains(op)) {
                continue;
            }
            if let Some(op) = pending.remove(&oid) {
                let Some(path) = record_file::path_for(&op)? else { continue };
                if let Write::Committed(new) = self.write(Some(tip), &op, &path)? {
                    tip = new;
                    still_pending.insert(new, op);
                }
            } else if let Some(new) = self.replay(tip, &commit)? {
                tip = new;
            }
        }
        self.set_branch(tip);
        self.pending = still_pending;
        self.committed = self.scan(Some(tip));
        Ok(())
    }

    /// Applies `commit`'s own changes (against its parent) on top of `onto`,
    /// keeping its author and message; `None` when they change nothing there.
    fn replay(&self, onto: Oid, commit: &git2::Commit<'_>) -> Result<Option<Oid>, CommitError> {
        let tree = commit.tree().map_err(CommitError::git("read tree"))?;
        let parent_tree = match commit.parent(0) {
            Ok(parent) => Some(parent.tree().map_err(CommitError::git("read tree"))?),
            Err(_) => None,
        };
        let diff =
            self.repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None).map_err(CommitError::git("diff"))?;
        let base = self.tree_of(Some(onto))?;
        let mut update = TreeUpdateBuilder::new();
        for delta in diff.deltas() {
            match delta.status() {
                git2::Delta::Deleted => {
                    if let Some(path) = delta.old_file().path() {
                        if base.get_path(path).is_ok() {
                            update.remove(path);
                        }
                    }
                }
                _ => {
                    if let Some(path) = delta.new_file().path() {
                        update.upsert(path, delta.new_file().id(), FileMode::Blob);
                    }
                }
            }
        }
        let new_tree = update.create_updated(&self.repo, &base).map_err(CommitError::git("build tree"))?;
        if new_tree == base.id() {
            return Ok(None);
        }
        let message = commit.message().unwrap_or_default();
        self.commit(Some(onto), new_tree, &commit.author(), message).map(Some)
    }

    /// Pushes the local branch once: `Ok(false)` when the remote moved
    /// since we last fetched (re-apply and try again).
    fn push_once(&self) -> Result<bool, CommitError> {
        match self.local_remote() {
            Some(remote) => self.push_to_local(&remote),
            None => self.push_refspec(&format!("{0}:{0}", self.branch_ref)),
        }
    }

    /// The remote, when it is a repository on this machine's filesystem.
    fn local_remote(&self) -> Option<Repository> {
        Repository::open_bare(self.target.local_path()?).ok()
    }

    /// A push into a repository on this machine. libgit2's local transport
    /// moves the branch without comparing it, under its lock, with what the
    /// pusher last saw: two commit workers pushing at once can both
    /// "succeed" and the first commit is silently overwritten (the chaos
    /// test caught one). So the objects go up under a ref of this push's
    /// own, and the branch moves by compare-and-swap under git's ref lock —
    /// what `git receive-pack` does on a real server such as GitHub's.
    fn push_to_local(&self, remote: &Repository) -> Result<bool, CommitError> {
        let Some(local) = self.local_tip() else { return Ok(true) };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let staging = format!("refs/hookbus/push/{}-{nanos}", std::process::id());
        if !self.push_refspec(&format!("+{}:{staging}", self.branch_ref))? {
            return Ok(false);
        }
        let moved = match self.tracking_tip() {
            Some(seen) => remote.reference_matching(&self.branch_ref, local, true, seen, "hookbus: push"),
            None => remote.reference(&self.branch_ref, local, false, "hookbus: push"),
        };
        if let Ok(mut staged) = remote.find_reference(&staging) {
            let _ = staged.delete();
        }
        match moved {
            Ok(_) => Ok(true),
            Err(err) if matches!(err.code(), git2::ErrorCode::Modified | git2::ErrorCode::Exists) => Ok(false),
            Err(err) if err.code() == git2::ErrorCode::Locked => {
                self.clear_abandoned_ref_lock(remote);
                Ok(false)
            }
            Err(err) => Err(CommitError::Git { action: "push", source: err }),
        }
    }

    /// A ref lock in the remote older than any ref update takes was left by
    /// a pusher killed mid-update; without removing it no push succeeds again.
    fn clear_abandoned_ref_lock(&self, remote: &Repository) {
        let lock = remote.path().join(format!("{}.lock", self.branch_ref));
        let age = std::fs::metadata(&lock).and_then(|m| m.modified()).ok().and_then(|at| at.elapsed().ok());
        if age.is_some_and(|age| age > ABANDONED_LOCK_AGE) {
            tracing::warn!(lock = %lock.display(), "removing a ref lock in the remote left by a killed pusher");
            let _ = std::fs::remove_file(&lock);
        }
    }

    fn push_refspec(&self, refspec: &str) -> Result<bool, CommitError> {
        let mut remote = self.repo.find_remote(REMOTE).map_err(CommitError::git("find remote"))?;
        let auth = Auth::new(self.password.as_deref());
        let rejected: RefCell<Option<String>> = RefCell::new(None);
        let result = {
            let mut callbacks = auth.callbacks();
            callbacks.push_update_reference(|_, status| {
                if let Some(status) = status {
                    *rejected.borrow_mut() = Some(status.to_string());
                }
                Ok(())
            });
            let mut options = PushOptions::new();
            options.remote_callbacks(callbacks);
            remote.push(&[refspec], Some(&mut options))
        };
        match result {
            Ok(()) => Ok(rejected.into_inner().is_none()),
            Err(err) if err.code() == git2::ErrorCode::NotFastForward => Ok(false),
            Err(err) => Err(self.classify("push", err, &auth)),
        }
    }

    /// Decides what a git failure means, by its code and what was attempted.
    fn classify(&self, action: &'static str, err: git2::Error, auth: &Auth) -> CommitError {
        let remote = self.target.remote.clone();
        if err.code() == git2::ErrorCode::Auth || auth.refused() {
            return CommitError::AuthRefused { remote, check: self.target.login.settings() };
        }
        if self.target.local_path().is_some_and(|p| !p.exists()) {
            return CommitError::RemoteMissing { remote };
        }
        // libgit2 reports HTTP statuses only in its message.
        if err.class() == git2::ErrorClass::Http && err.message().contains("404") {
            return CommitError::RemoteMissing { remote };
        }
        CommitError::Git { action, source: err }
    }
}

/// Credentials for one remote operation: the token once, then refusal (so
/// a wrong token fails instead of being offered forever).
struct Auth<'a> {
    token: Option<&'a str>,
    asked: Cell<u32>,
}

impl<'a> Auth<'a> {
    fn new(token: Option<&'a str>) -> Self {
        Auth { token, asked: Cell::new(0) }
    }

    /// Whether the remote asked again after the token was given, or asked
    /// when there was none.
    fn refused(&self) -> bool {
        self.asked.get() > u32::from(self.token.is_some())
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |_url, _user, allowed| {
            self.asked.set(self.asked.get() + 1);
            match self.token {
                Some(token) if self.asked.get() == 1 && allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                    Cred::userpass_plaintext("x-access-token", token)
                }
                _ => Err(git2::Error::from_str("authentication refused")),
            }
        });
        callbacks
    }
}

/// Up to 5 ms × 2^(tries−1), at random (from the clock's nanoseconds: no
/// need for a generator to spread a few workers apart).
fn push_backoff(tries: u32) -> std::time::Duration {
    let ceiling_us = 5_000u64 << tries.saturating_sub(1).min(6);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_micros(u64::from(nanos) % ceiling_us)
}

fn read_file(repo: &Repository, tree: &git2::Tree<'_>, path: &str) -> Option<Vec<u8>> {
    let entry = tree.get_path(Path::new(path)).ok()?;
    let blob = entry.to_object(repo).ok()?.peel_to_blob().ok()?;
    Some(blob.content().to_vec())
}

fn remove_stale_locks(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "objects" {
                remove_stale_locks(&path)?;
            }
        } else if path.extension().is_some_and(|e| e == "lock") {
            tracing::warn!(path = %path.display(), "removing a lock file left by a killed process");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
