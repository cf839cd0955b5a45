//! Benchmarks' figures in machine-readable form, for the performance report.
//!
//! Every benchmark prints its figures for a person. When
//! `BENCH_REPORT_FILE` names a file (not `HOOKBUS_*`: hookbus's own binaries
//! refuse settings they do not know, and benchmarks start them), it also appends them there as one
//! JSON object per line (`{"bench": "<name>", ...figures}`), which
//! `cargo run -p hookbus-e2e --bin perf-report` turns into
//! docs/performance.md.

use std::io::Write;

/// The variable naming the file figures are appended to.
pub const REPORT_VAR: &str = "BENCH_REPORT_FILE";

/// Appends `figures` (a JSON object) for `bench` to the report file, if one
/// is named. A report that cannot be written fails the benchmark: a silently
/// missing figure would make the report lie.
pub fn record(bench: &str, figures: serde_json::Value) {
    let Some(path) = std::env::var_os(REPORT_VAR) else { return };
    let mut line = serde_json::json!({ "bench": bench });
    if let (Some(line), serde_json::Value::Object(figures)) = (line.as_object_mut(), figures) {
        line.extend(figures);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|err| panic!("{REPORT_VAR}={}: {err}", path.to_string_lossy()));
    writeln!(file, "{line}").unwrap_or_else(|err| panic!("{REPORT_VAR}={}: {err}", path.to_string_lossy()));
}

/// Peak resident memory (`VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
