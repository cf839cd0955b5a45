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

/// CPU time (user + system) a live process has used so far, in seconds.
///
/// Unlike requests/s, CPU time per message barely moves when other work
/// shares the machine's cores, so benchmarks print both.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // state is the first, utime the 12th and stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// CPU time redis-server has used so far (`INFO cpu`), in seconds.
pub fn redis_cpu_seconds(client: &mut redis::Connection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query(client).ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
    };
    Some(field("used_cpu_sys")? + field("used_cpu_user")?)
}
