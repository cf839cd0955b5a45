//! Batched pushes: handlers commit locally, then wait here; one push after
//! a short window carries every commit made meanwhile. The window is cut
//! short once the batch is full or no other handler is still committing
//! (nobody left to wait for), and each waiter learns the commit that now carries its
//! operation (re-applying on a moved remote may have rewritten it).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use git2::Oid;
use tokio::sync::{oneshot, Notify};

use crate::error::CommitError;
use crate::workdir::{RemoteLogin, Workdir};

/// The pushed commit carrying a waiter's operation; `None` when, re-applied
/// on the remote's newer tip, the operation changed nothing.
type PushResult = Result<Option<Oid>, CommitError>;

pub struct PushGroup {
    workdir: Arc<Mutex<Workdir>>,
    /// The remote's login: its current password is looked up before each
    /// push.
    login: Arc<RemoteLogin>,
    window: Duration,
    batch_max: usize,
    batch: Mutex<Batch>,
    /// Cuts the window short when the batch is full.
    full: Notify,
    /// Batches flushed so far (for tests and the benchmark).
    flushes: AtomicU64,
    /// Handlers committing right now: while none is, nobody else can join
    /// the batch, so waiting out the window would only add latency.
    committing: AtomicUsize,
}

/// Held while a handler commits; see [`PushGroup::committing`].
pub struct Committing<'a>(&'a PushGroup);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if self.0.committing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake_if_waiting();
        }
    }
}

#[derive(Default)]
struct Batch {
    waiters: Vec<(String, oneshot::Sender<PushResult>)>,
    /// Whether a flush is scheduled for the current waiters.
    scheduled: bool,
}

impl PushGroup {
    pub fn new(workdir: Arc<Mutex<Workdir>>, login: Arc<RemoteLogin>, window: Duration, batch_max: usize) -> Arc<Self> {
        Arc::new(PushGroup {
            workdir,
            login,
            window,
            batch_max,
            batch: Mutex::new(Batch::default()),
            full: Notify::new(),
            flushes: AtomicU64::new(0),
            committing: AtomicUsize::new(0),
        })
    }

    /// Marks a handler as about to commit, so the batch waits for it.
    pub fn committing(&self) -> Committing<'_> {
        self.committing.fetch_add(1, Ordering::AcqRel);
        Committing(self)
    }

    fn wake_if_waiting(&self) {
        let batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        if !batch.waiters.is_empty() {
            self.full.notify_one();
        }
    }

    /// How many batches have been pushed (or found nothing to push).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Waits until the commit carrying `operation` is pushed.
    pub async fn pushed(self: &Arc<Self>, operation: &str) -> PushResult {
        let (tx, rx) = oneshot::channel();
        let schedule = {
            let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            batch.waiters.push((operation.to_string(), tx));
            if batch.waiters.len() >= self.batch_max || self.committing.load(Ordering::Acquire) == 0 {
                self.full.notify_one();
            }
            !std::mem::replace(&mut batch.scheduled, true)
        };
        if schedule {
            tokio::spawn(Arc::clone(self).flush());
        }
        rx.await.unwrap_or_else(|_| {
            Err(CommitError::Batch { permanent: false, reason: "the batch push was abandoned (shutting down)".into() })
        })
    }

    async fn flush(self: Arc<Self>) {
        tokio::select! {
            _ = tokio::time::sleep(self.window) => {}
            _ = self.full.notified() => {}
        }
        let waiters = {
            let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            batch.scheduled = false;
            std::mem::take(&mut batch.waiters)
        };
        let workdir = Arc::clone(&self.workdir);
        let operations: Vec<String> = waiters.iter().map(|(op, _)| op.clone()).collect();
        let started = std::time::Instant::now();
        let password = self.login.current_password().await;
        let outcome = tokio::task::spawn_blocking(move || {
            let mut workdir = workdir.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(password) = password? {
                workdir.set_password(password);
            }
            workdir.push()?;
            Ok::<_, CommitError>(operations.iter().map(|op| workdir.commit_of(op)).collect::<Vec<_>>())
        })
        .await
        .unwrap_or_else(|err| Err(CommitError::Batch { permanent: false, reason: format!("push task failed: {err}") }));
        let outcome = match outcome {
            Err(err) => Err(self.login.after_failure(err).await),
            ok => ok,
        };
        self.flushes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(commits = waiters.len(), elapsed_ms = started.elapsed().as_millis() as u64, "batch pushed");
        match outcome {
            Ok(commits) => {
                for ((_, tx), commit) in waiters.into_iter().zip(commits) {
                    let _ = tx.send(Ok(commit));
                }
            }
            Err(err) => {
                for (_, tx) in waiters {
                    let _ = tx.send(Err(err.shared()));
                }
            }
        }
    }
}
