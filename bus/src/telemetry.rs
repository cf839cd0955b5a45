//! Logging setup shared by every binary: human-readable locally, JSON lines
//! on Heroku (`DYNO` set) so that a log drain can index `trace_id`.
//!
//! Lines are formatted where they happen and written by a thread of their
//! own (`log-writer`). Written from the serving thread, the gateway's line
//! per webhook cost about 5.5 µs on a pipe (a `write` each, and waking the
//! reader), a fifth of all the gateway's work per webhook. The writer lets
//! lines gather for [`GATHER`] after the first one and writes them in one
//! go; a logging thread only appends its line under a lock (through
//! `tracing-appender`'s channel, which woke the writer for nearly every
//! line, the log cost the gateway about 0.5 µs more per webhook). Nothing
//! is dropped when lines come faster than they are written: past
//! [`QUEUED_BYTES`] the logging thread waits. Lines still queued are
//! written when the [`LogGuard`] is dropped (the binaries hold it for the
//! whole of `main`); a SIGKILL loses the last [`GATHER`] of them.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long the writer lets lines gather after the first one before it
/// writes them all: one `write` (and one wake-up of whoever reads the
/// pipe) per batch instead of per line, and no wake-up of the writer for
/// every line either.
const GATHER: Duration = Duration::from_millis(10);

/// Bytes waiting to be written, at most; past it, logging waits.
const QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// Keeps the log writer running; dropping it writes what is still queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    queue: Arc<Queue>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
        self.queue.room.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Formatted lines on their way to the writer thread.
#[derive(Default)]
struct Queue {
    state: Mutex<Lines>,
    /// The writer waits here for a first line.
    wake: Condvar,
    /// Loggers wait here while [`QUEUED_BYTES`] are waiting.
    room: Condvar,
}

#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    /// The writer is waiting on `wake` (so the first line must wake it).
    idle: bool,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A thread that panicked while holding the lock left whole lines
        // behind (the lock is held only to append or take them).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what gathers to `out` until the [`LogGuard`] is dropped.
    fn drain(&self, mut out: impl Write) {
        let mut taken = Vec::new();
        loop {
            let mut lines = self.lock();
            while lines.bytes.is_empty() && !lines.closed {
                lines.idle = true;
                lines = self.wake.wait(lines).unwrap_or_else(PoisonError::into_inner);
            }
            lines.idle = false;
            if lines.bytes.is_empty() {
                return;
            }
            if !lines.closed {
                drop(lines);
                std::thread::sleep(GATHER);
                lines = self.lock();
            }
            std::mem::swap(&mut lines.bytes, &mut taken);
            drop(lines);
            self.room.notify_all();
            // Nowhere else to report a failed write to stderr.
            let _ = out.write_all(&taken).and_then(|()| out.flush());
            taken.clear();
        }
    }
}

/// What the fmt layer writes each formatted line to.
#[derive(Clone)]
struct LineWriter(Arc<Queue>);

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = &'a Queue;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

impl Write for &Queue {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut lines = self.lock();
        while lines.bytes.len() >= QUEUED_BYTES && !lines.closed {
            lines = self.room.wait(lines).unwrap_or_else(PoisonError::into_inner);
        }
        lines.bytes.extend_from_slice(line);
        if lines.idle {
            lines.idle = false;
            self.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` filters
/// (default `info`).
pub fn init() -> LogGuard {
    init_with(std::io::stderr(), colours())
}

/// As [`init`], writing to `out` (a benchmark gives it a pipe).
pub fn init_with(out: impl Write + Send + 'static, ansi: bool) -> LogGuard {
    let (lines, guard) = start(out);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(lines).with_ansi(ansi);
    let _ = if std::env::var_os("DYNO").is_some() {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// The `log-writer` thread, writing to `out` what is written to the
/// [`LineWriter`]. Without a thread (none could be made), lines gather
/// until [`QUEUED_BYTES`] and the guard writes them at the end.
fn start(out: impl Write + Send + 'static) -> (LineWriter, LogGuard) {
    let queue = Arc::new(Queue::default());
    let draining = queue.clone();
    let writer = std::thread::Builder::new().name("log-writer".to_string()).spawn(move || draining.drain(out)).ok();
    (LineWriter(queue.clone()), LogGuard { queue, writer })
}

/// Colours only for a person at a terminal: a log file, a pipe or a process
/// supervisor gets plain text, not escape codes. `NO_COLOR` turns them off.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for stderr that counts its `write` calls.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            seen.0.extend_from_slice(bytes);
            seen.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_whole_in_order_and_in_few_writes() {
        let out = Collected::default();
        let (lines, guard) = start(out.clone());
        let loggers: Vec<_> = (0..4)
            .map(|thread| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000 {
                        let _ = lines.make_writer().write_all(format!("logger {thread} line {n}\n").as_bytes());
                    }
                })
            })
            .collect();
        for logger in loggers {
            logger.join().expect("logger");
        }
        // Whatever is still queued is written when the guard goes.
        drop(guard);
        let (bytes, writes) = out.0.lock().map(|seen| seen.clone()).expect("collected");
        let text = String::from_utf8(bytes).expect("whole lines");
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut words = line.split(' ');
            let thread: usize = words.nth(1).and_then(|w| w.parse().ok()).expect("logger number");
            let n: usize = words.nth(1).and_then(|w| w.parse().ok()).expect("line number");
            assert_eq!(n, next[thread], "logger {thread} out of order");
            next[thread] += 1;
        }
        assert_eq!(next, [20_000; 4]);
        assert!(writes < 80_000 / 100, "{writes} writes for 80,000 lines");
    }
}
