//! Errors of the bus, and the handler error that decides retry vs dead letter.

use std::time::Duration;

/// A failure talking to the queue store. Always transient from the bus's
/// point of view: callers retry with capped backoff.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis connection settings: {0}")]
    Setup(String),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

/// Why a handler did not finish a message; the variant decides what happens.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (network, lock contention, a busy remote): retried
    /// with backoff until the queue's attempts run out.
    #[error("{0}")]
    Transient(String),
    /// Will never work (malformed payload, refused credentials): dead at once.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: come back after this long (a rate limit said so). The
    /// attempt count does not change.
    #[error("deferred for {0:?}: {1}")]
    Defer(Duration, String),
}

impl HandlerError {
    pub fn transient(reason: impl std::fmt::Display) -> Self {
        HandlerError::Transient(reason.to_string())
    }
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(reason.to_string())
    }
}

impl From<crate::envelope::PayloadError> for HandlerError {
    /// A payload that does not match its kind will not match on a retry either.
    fn from(err: crate::envelope::PayloadError) -> Self {
        HandlerError::Permanent(err.to_string())
    }
}

impl From<BusError> for HandlerError {
    fn from(err: BusError) -> Self {
        HandlerError::Transient(err.to_string())
    }
}
