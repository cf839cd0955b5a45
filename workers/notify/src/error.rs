//! Errors of notify's own plumbing (setup, Redis). Whether a message is
//! retried or dead is decided where each handler builds its
//! [`hookbus_bus::HandlerError`], by the kind of failure.

use hookbus_bus::HandlerError;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting is wrong (exit 2).
    #[error("{0}")]
    Config(#[from] hookbus_config::ConfigError),
    #[error("notify setup: {0}")]
    Setup(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<NotifyError> for HandlerError {
    fn from(err: NotifyError) -> Self {
        match err {
            // An event that cannot be encoded will not encode on a retry.
            NotifyError::Encode(_) | NotifyError::Setup(_) | NotifyError::Config(_) => {
                HandlerError::Permanent(err.to_string())
            }
            NotifyError::Redis(_) => HandlerError::Transient(err.to_string()),
        }
    }
}
