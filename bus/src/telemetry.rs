//! Logging setup shared by every binary: human-readable locally, JSON lines
//! on Heroku (`DYNO` set) so that a log drain can index `trace_id`.
//!
//! Lines are formatted where they happen and written by a thread of their
//! own (`log-writer`), which writes whatever has queued up meanwhile in one
//! go. Written from the serving thread, the gateway's line per webhook cost
//! about 5.5 µs on a pipe (a `write` each, and waking the reader), a fifth of
//! all the gateway's work per webhook. Nothing is dropped when lines come
//! faster than they are written: the logging thread waits instead. Lines
//! still queued are written when the [`LogGuard`] is dropped (the binaries
//! hold it for the whole of `main`); a SIGKILL loses the few not yet written.

use std::io::{IsTerminal, Write};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Bytes the writer collects before a `write`, at most; it writes sooner
/// whenever no more lines are waiting.
const WRITE_BUFFER: usize = 64 * 1024;

/// Lines waiting for the writer, at most; past it, logging waits.
const QUEUED_LINES: usize = 64 * 1024;

/// Keeps the log writer running; dropping it writes what is still queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` filters
/// (default `info`).
pub fn init() -> LogGuard {
    init_with(std::io::stderr(), colours())
}

/// As [`init`], writing to `out` (a benchmark gives it a pipe).
pub fn init_with(out: impl Write + Send + 'static, ansi: bool) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(WRITE_BUFFER, out));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let _ = if std::env::var_os("DYNO").is_some() {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
    LogGuard { _writer: guard }
}

/// Colours only for a person at a terminal: a log file, a pipe or a process
/// supervisor gets plain text, not escape codes. `NO_COLOR` turns them off.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
