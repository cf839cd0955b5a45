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

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
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
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(lines).with_ansi(ansi).with_timer(Clock);
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

/// Each line's time, as tracing-subscriber's default timer writes it (RFC
/// 3339, UTC, microseconds: `2026-12-02T19:00:00.123456Z`), with the part
/// up to the second worked out once a second per thread. The default timer
/// formats all seven numbers through `core::fmt` for every line: over a
/// quarter of what the gateway's line per webhook cost.
struct Clock;

thread_local! {
    /// The second last formatted on this thread, and its text up to the dot.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

impl FormatTime for Clock {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = now.as_secs();
        let prefix = match SECOND.get() {
            (cached, prefix) if cached == second => prefix,
            _ => {
                let prefix = second_text(second);
                SECOND.set((second, prefix));
                prefix
            }
        };
        let mut text = [0u8; 27];
        text[..20].copy_from_slice(&prefix);
        let mut micros = now.subsec_micros();
        for at in (20..26).rev() {
            text[at] = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        text[26] = b'Z';
        // Only ASCII digits and punctuation were written.
        w.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for a second since the epoch (years past 9999
/// are not expected of a clock that is running). Once a second: plain
/// `format!` will do.
fn second_text(second: u64) -> [u8; 20] {
    let when = i64::try_from(second)
        .ok()
        .and_then(|second| time::OffsetDateTime::from_unix_timestamp(second).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        when.year().clamp(0, 9999),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second()
    );
    let mut prefix = [0u8; 20];
    // Twenty bytes whatever the second, the year being clamped to four digits.
    prefix.copy_from_slice(&text.as_bytes()[..20]);
    prefix
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
    fn times_read_as_the_default_timer_writes_them() {
        // From `date -u -d @<second> +%Y-%m-%dT%H:%M:%S.`
        for (second, expected) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_399, "2000-02-28T23:59:59."),
            (951_868_800, "2000-03-01T00:00:00."),
            (1_709_164_800, "2024-02-29T00:00:00."),
            (1_798_761_599, "2026-12-31T23:59:59."),
            (4_107_542_400, "2100-03-01T00:00:00."),
        ] {
            assert_eq!(std::str::from_utf8(&second_text(second)), Ok(expected), "second {second}");
        }
        let format = |timer: &dyn FormatTime| {
            let mut text = String::new();
            timer.format_time(&mut Writer::new(&mut text)).expect("formatted");
            text
        };
        let before = format(&Clock);
        let default = format(&tracing_subscriber::fmt::time::SystemTime);
        let after = format(&Clock);
        assert_eq!(before.len(), default.len(), "{before} against {default}");
        assert_eq!(&before[19..20], ".", "{before}");
        // The default's second is one of the two read around it.
        assert!(default[..19] == before[..19] || default[..19] == after[..19], "{before} {default} {after}");
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
