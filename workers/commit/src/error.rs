//! Why an operation could not be committed or pushed, and whether trying
//! again can help (the variant decides, never the message text).

use hookbus_bus::HandlerError;

use crate::wire::ApplyPayload;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The worker is misconfigured: fixing the setting is the only cure.
    #[error("{0}")]
    Config(String),
    /// The payload cannot be applied as it is.
    #[error("operation {operation}: {reason}")]
    Payload { operation: String, reason: String },
    /// A file in the repository is not what hookbus writes.
    #[error("{0}")]
    Record(String),
    #[error(
        "push to {remote} refused: authentication failed — check {check} (it needs write access to the repository)"
    )]
    AuthRefused { remote: String, check: &'static str },
    #[error("remote {remote} does not exist — check HOOKBUS_GIT__REMOTE")]
    RemoteMissing { remote: String },
    #[error("push to {remote} rejected: the branch moved again after each of {tries} re-applications")]
    StillRejected { remote: String, tries: u32 },
    /// The workdir cannot be used (created, opened, unlocked).
    #[error("workdir {path}: {reason} — check HOOKBUS_GIT__WORKDIR")]
    Workdir { path: String, reason: String },
    /// Anything else git reported: network, a busy remote, lock contention.
    #[error("git {action}: {source}")]
    Git {
        action: &'static str,
        #[source]
        source: git2::Error,
    },
    /// The batch push this operation waited on failed.
    #[error("{reason}")]
    Batch { permanent: bool, reason: String },
}

impl CommitError {
    pub fn payload(op: &ApplyPayload, reason: impl Into<String>) -> Self {
        CommitError::Payload { operation: op.operation.clone(), reason: reason.into() }
    }

    pub fn git(action: &'static str) -> impl FnOnce(git2::Error) -> CommitError {
        move |source| CommitError::Git { action, source }
    }

    /// Whether retrying can never help.
    pub fn is_permanent(&self) -> bool {
        match self {
            CommitError::Config(_)
            | CommitError::Payload { .. }
            | CommitError::Record(_)
            | CommitError::AuthRefused { .. }
            | CommitError::RemoteMissing { .. }
            | CommitError::Workdir { .. } => true,
            CommitError::StillRejected { .. } | CommitError::Git { .. } => false,
            CommitError::Batch { permanent, .. } => *permanent,
        }
    }

    /// The same failure, for another waiter of a batch.
    pub fn shared(&self) -> CommitError {
        CommitError::Batch { permanent: self.is_permanent(), reason: self.to_string() }
    }
}

impl From<CommitError> for HandlerError {
    fn from(err: CommitError) -> Self {
        if err.is_permanent() {
            HandlerError::Permanent(err.to_string())
        } else {
            HandlerError::Transient(err.to_string())
        }
    }
}
