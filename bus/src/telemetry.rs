//! Logging setup shared by every binary: human-readable locally, JSON lines
//! on Heroku (`DYNO` set) so that a log drain can index `trace_id`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours());
    let _ = if std::env::var_os("DYNO").is_some() {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
}

/// Colours only for a person at a terminal: a log file, a pipe or a process
/// supervisor gets plain text, not escape codes. `NO_COLOR` turns them off.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
