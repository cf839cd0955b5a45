//! hookbus-bus: the message bus every hookbus worker stands on.
//!
//! - [`envelope`]: the wire format (SPEC §3) and dead letters.
//! - [`backend`]: the [`Backend`] trait, the one seam between the runner and
//!   a queue store, with its two implementations:
//!   [`redis`] (durable, shared by processes) and [`memory`] (one process,
//!   `hookbus dev` and tests).
//! - [`plugin`]: what a worker is: a [`Plugin`] with an input queue and an
//!   [`Outbox`].
//! - [`runner`]: runs a plugin with concurrency, batching, retries, dead
//!   letters, heartbeats and graceful shutdown.
//! - [`shutdown`]: the one cancellation signal (SIGTERM/SIGINT).
//! - [`worker`]: the `main` every worker binary shares.
//!
//! The bus knows nothing of GitHub or git; it moves envelopes.

pub mod backend;
pub mod envelope;
pub mod error;
pub mod memory;
pub mod plugin;
pub mod redis;
pub mod runner;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

use std::sync::Arc;

pub use backend::{
    Backend, ConsumerId, DeadSelector, Delivery, Journal, Lease, MinuteCounts, ProcessReport, QueueDepths, Receipt,
    Settlement,
};
pub use envelope::{DeadContent, DeadLetter, Envelope};
pub use error::{BusError, HandlerError};
pub use memory::MemoryBackend;
pub use plugin::{Outbox, Plugin};
pub use runner::{run, RunReport, Runner, RunnerOptions};
pub use shutdown::Shutdown;
pub use worker::{run_worker, run_worker_with, SetupError};

/// Every program linking the bus (each hookbus binary, its tests and
/// benchmarks) allocates with jemalloc: messages are made on one thread and
/// freed on another, which glibc's malloc handles slowly (measured in
/// docs/performance-notes.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The four pipeline queues, in order (SPEC §3).
pub const QUEUES: [&str; 4] = ["normalise", "reconcile", "commit", "notify"];

/// The backend the settings name: Redis at `redis.url`.
pub fn connect(settings: &hookbus_config::Settings) -> Result<Arc<dyn Backend>, BusError> {
    let backend = redis::RedisBackend::open(
        &redis::RedisTarget::from_settings(&settings.redis),
        &settings.bus.prefix,
        settings.redis.pool_size,
    )?;
    Ok(Arc::new(backend))
}
