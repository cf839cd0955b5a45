//! Alert windows: at most one alert per queue per window, and a count of
//! the dead-letter notices folded into the next one, so a burst of dead
//! letters costs one message in the operators' channel and no notice is
//! lost. [`RedisAlertWindow`] is shared by every notify process;
//! [`MemoryAlertWindow`] serves one process (`hookbus dev`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hookbus_bus::redis::RedisConnection;

use crate::error::NotifyError;

/// What a notice, or a flush, found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// This call opened the window: post now, reporting `folded` earlier
    /// notices with it.
    Opened { folded: u64 },
    /// The window is open for `reopens_in` more; `folded` notices wait
    /// (for a notice: including itself).
    Open { folded: u64, reopens_in: Duration },
    /// Nothing to report (a flush found no folded notice).
    Idle,
}

#[async_trait]
pub trait AlertWindow: Send + Sync + 'static {
    /// A notice about `queue`: opens its window, or folds the notice.
    async fn notice(&self, queue: &str, window: Duration) -> Result<Window, NotifyError>;
    /// Opens the window to report folded notices, if there are any and the
    /// window is closed.
    async fn flush(&self, queue: &str, window: Duration) -> Result<Window, NotifyError>;
    /// The alert that opened the window reported `folded` notices.
    async fn posted(&self, queue: &str, folded: u64) -> Result<(), NotifyError>;
    /// The alert could not be posted: close the window so the retry can
    /// open it again (the folded count is untouched).
    async fn failed(&self, queue: &str) -> Result<(), NotifyError>;
}

/// In Redis: `<prefix>:{notify}:alert:<queue>:window` and `...:folded`
/// (docs/redis-layout.md, "Notify keys"), changed atomically by
/// `lua/alert_window.lua`.
pub struct RedisAlertWindow {
    conn: RedisConnection,
    prefix: String,
    script: redis::Script,
}

impl RedisAlertWindow {
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        RedisAlertWindow {
            conn,
            prefix: prefix.to_string(),
            script: redis::Script::new(include_str!("lua/alert_window.lua")),
        }
    }

    fn keys(&self, queue: &str) -> (String, String) {
        let base = format!("{}:{{notify}}:alert:{queue}", self.prefix);
        (format!("{base}:window"), format!("{base}:folded"))
    }

    async fn call(&self, queue: &str, mode: &str, arg: u64) -> Result<Window, NotifyError> {
        let (window, folded) = self.keys(queue);
        let mut conn = self.conn.clone();
        let (state, count, ttl): (i64, i64, i64) =
            self.script.key(window).key(folded).arg(mode).arg(arg).invoke_async(&mut conn).await?;
        let folded = u64::try_from(count).unwrap_or(0);
        Ok(match state {
            1 => Window::Opened { folded },
            0 => Window::Open { folded, reopens_in: Duration::from_millis(u64::try_from(ttl).unwrap_or(1)) },
            _ => Window::Idle,
        })
    }
}

fn millis(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl AlertWindow for RedisAlertWindow {
    async fn notice(&self, queue: &str, window: Duration) -> Result<Window, NotifyError> {
        self.call(queue, "notice", millis(window)).await
    }
    async fn flush(&self, queue: &str, window: Duration) -> Result<Window, NotifyError> {
        self.call(queue, "flush", millis(window)).await
    }
    async fn posted(&self, queue: &str, folded: u64) -> Result<(), NotifyError> {
        if folded > 0 {
            self.call(queue, "posted", folded).await?;
        }
        Ok(())
    }
    async fn failed(&self, queue: &str) -> Result<(), NotifyError> {
        let (window, _) = self.keys(queue);
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL").arg(window).query_async(&mut conn).await?;
        Ok(())
    }
}

/// One process's windows (`hookbus dev`, tests).
#[derive(Default)]
pub struct MemoryAlertWindow {
    queues: Mutex<HashMap<String, QueueWindow>>,
}

#[derive(Default)]
struct QueueWindow {
    open_until: Option<Instant>,
    folded: u64,
}

impl MemoryAlertWindow {
    fn with<T>(&self, queue: &str, f: impl FnOnce(&mut QueueWindow, Instant) -> T) -> T {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        f(queues.entry(queue.to_string()).or_default(), Instant::now())
    }

    fn open_or(&self, queue: &str, window: Duration, fold: bool, flush: bool) -> Window {
        self.with(queue, |w, now| {
            if flush && w.folded == 0 {
                return Window::Idle;
            }
            match w.open_until.filter(|until| *until > now) {
                None => {
                    w.open_until = Some(now + window);
                    Window::Opened { folded: w.folded }
                }
                Some(until) => {
                    if fold {
                        w.folded += 1;
                    }
                    Window::Open { folded: w.folded, reopens_in: until - now }
                }
            }
        })
    }
}

#[async_trait]
impl AlertWindow for MemoryAlertWindow {
    async fn notice(&self, queue: &str, window: Duration) -> Result<Window, NotifyError> {
        Ok(self.open_or(queue, window, true, false))
    }
    async fn flush(&self, queue: &str, window: Duration) -> Result<Window, NotifyError> {
        Ok(self.open_or(queue, window, false, true))
    }
    async fn posted(&self, queue: &str, folded: u64) -> Result<(), NotifyError> {
        self.with(queue, |w, _| w.folded = w.folded.saturating_sub(folded));
        Ok(())
    }
    async fn failed(&self, queue: &str) -> Result<(), NotifyError> {
        self.with(queue, |w, _| w.open_until = None);
        Ok(())
    }
}
