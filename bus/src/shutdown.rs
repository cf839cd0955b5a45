//! Shutdown: one token that SIGTERM/SIGINT (or a test, or dev mode) cancels.
//!
//! Every long-running loop selects on [`Shutdown::cancelled`]; the runner then
//! drains within the grace period (see `runner.rs`).

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

/// A shutdown signal that can be cloned and awaited anywhere.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown that SIGTERM or SIGINT triggers. Must be called inside a
    /// tokio runtime. Fails only if signal handlers cannot be installed.
    pub fn on_signals() -> std::io::Result<Self> {
        let shutdown = Shutdown::new();
        let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            if let Some(signal) = signals.next().await {
                let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
                tracing::info!(signal = name, "shutting down: no new messages, finishing in-flight ones");
                trigger.trigger();
            }
        });
        Ok(shutdown)
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// A shutdown that fires when this one does, and can also fire alone.
    pub fn child(&self) -> Shutdown {
        Shutdown { token: self.token.child_token() }
    }
}
