//! `perf-report`: the one command behind docs/performance.md.
//!
//! ```sh
//! cargo run -p hookbus-e2e --bin perf-report
//! cargo run -p hookbus-e2e --bin perf-report -- --only pipeline,latency --out /tmp/perf.md
//! ```
//!
//! The report itself needs no optimisation (it only runs `cargo bench`,
//! which builds every benchmark optimised), hence no `--release` above.
//!
//! Runs every benchmark of the workspace in turn (`cargo bench`, so each
//! prints its figures as usual) with `BENCH_REPORT_FILE` naming a
//! scratch file, reads the figures they record there
//! ([`hookbus_testkit::bench`]) and writes the report: the machine, each
//! figure next to its target, then each benchmark's details and the command
//! that runs it alone. Analysis and history are kept by hand in
//! docs/performance-notes.md, which the report links to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use hookbus_testkit::workspace_root;
use serde_json::Value;

/// One benchmark the report runs.
struct Bench {
    /// Name for `--only`.
    name: &'static str,
    /// `cargo bench` arguments.
    args: &'static [&'static str],
    /// What it measures, for the report.
    about: &'static str,
}

const BENCHES: [Bench; 4] = [
    Bench {
        name: "pipeline",
        args: &["-p", "hookbus-bus", "--bench", "pipeline"],
        about: "Four no-op stages, 100,000 messages of about 1 KiB, in memory (one process) and over a local \
                redis-server (one process per stage). Throughput: everything pushed at once, until the last \
                message leaves stage 4; after an untimed warm-up of 20,000 messages, five such rounds, the \
                figure being the median round's (min and max beside it). Latency: push to leaving stage 4 at \
                10,000 msgs/s paced in 10 ms ticks.",
    },
    Bench {
        name: "gateway",
        args: &["-p", "hookbus-gateway", "--bench", "ingest"],
        about: "Signed webhooks (a real 5,971-byte payload, a fresh delivery id per request) on 64 keep-alive \
                connections into the gateway over a local redis-server, and the same load against a bare axum \
                handler answering 200; the two take turns in 5 rounds of 2 s each, so that the machine's drift \
                lands on both. Pending is counted and emptied every 100 ms, as normalise would. The gateway \
                logs as deployed, a line per webhook into a pipe (its log-writer thread counted in its CPU). \
                The load generator shares the 2 cores.",
    },
    Bench {
        name: "commit",
        args: &["-p", "hookbus-commit", "--bench", "commit"],
        about: "2,000 sync.apply operations over 200 issues into a local bare remote, 16 handlers, one at a \
                time per resource; latency from dequeue to the commit being on the remote.",
    },
    Bench {
        name: "latency",
        args: &["-p", "hookbus-e2e", "--bench", "latency"],
        about: "The real binaries as an operator runs them — hookbus-gateway and one process per worker \
                stage, production defaults — against a local redis-server and a bare git remote: \
                issues.edited webhooks at a steady rate (default 100/s for 30 s over 200 issues), each an update that must become one \
                commit. Latency from just before the POST to the commit (found by its Hookbus-Delivery \
                trailer) being on the remote's branch. Peak memory (VmHWM) of every process.",
    },
];

/// A small dyno (Heroku standard-1X) has 512 MiB.
const DYNO_MEMORY_KIB: u64 = 512 * 1024;

fn usage() -> ExitCode {
    eprintln!("usage: perf-report [--only pipeline,gateway,commit,latency] [--out docs/performance.md]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut only: Option<Vec<String>> = None;
    let mut out = workspace_root().join("docs/performance.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--only", Some(list)) => only = Some(list.split(',').map(str::to_string).collect()),
            ("--out", Some(path)) => out = PathBuf::from(path),
            _ => return usage(),
        }
    }
    if let Some(unknown) = only.iter().flatten().find(|name| BENCHES.iter().all(|b| b.name != name.as_str())) {
        eprintln!("perf-report: --only: no benchmark named {unknown:?}");
        return usage();
    }

    let scratch = match tempfile::NamedTempFile::new() {
        Ok(file) => file,
        Err(err) => {
            eprintln!("perf-report: cannot create a scratch file: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Before the benchmarks, while nothing else of ours runs.
    let calibration = redis_calibration();
    eprintln!("perf-report: this machine's redis-benchmark: {calibration}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut runs = Vec::new();
    for bench in BENCHES.iter().filter(|b| only.as_ref().is_none_or(|o| o.iter().any(|n| n == b.name))) {
        let load = load_average();
        eprintln!("perf-report: cargo bench {} (load average {load})", bench.args.join(" "));
        let status = Command::new(&cargo)
            .arg("bench")
            .args(bench.args)
            .current_dir(workspace_root())
            .env(hookbus_testkit::bench::REPORT_VAR, scratch.path())
            .status();
        match status {
            Ok(status) if status.success() => runs.push((bench, load)),
            Ok(status) => {
                eprintln!("perf-report: cargo bench {} failed ({status}); no report written", bench.args.join(" "));
                return ExitCode::FAILURE;
            }
            Err(err) => {
                eprintln!("perf-report: cannot run cargo: {err}");
                return ExitCode::FAILURE;
            }
        }
    }

    let figures = match std::fs::read_to_string(scratch.path()) {
        Ok(text) => text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).collect::<Vec<_>>(),
        Err(err) => {
            eprintln!("perf-report: cannot read the figures: {err}");
            return ExitCode::FAILURE;
        }
    };
    let by_bench: BTreeMap<String, Value> =
        figures.into_iter().filter_map(|f| Some((f.get("bench")?.as_str()?.to_string(), f.clone()))).collect();
    let report = render(&runs, &by_bench, &calibration);
    if let Err(err) = std::fs::write(&out, report) {
        eprintln!("perf-report: cannot write {}: {err}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("perf-report: wrote {}", out.display());
    ExitCode::SUCCESS
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not found".into())
}

fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(|v| v.trim().to_string()))
        .and_then(|v| v.split_whitespace().next().and_then(|kib| kib.parse::<u64>().ok()))
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    vec![
        ("CPU", format!("{cores} × {model}")),
        ("memory", memory),
        ("kernel", kernel),
        ("redis-server", command_line("redis-server", &["--version"])),
        ("rustc", command_line("rustc", &["--version"])),
        ("git", command_line("git", &["--version"])),
        ("build", "release (`cargo bench`)".into()),
    ]
}

/// How fast this machine is right now, in a unit the issues' targets were
/// set in: `redis-benchmark` SET and GET (50 clients, no pipelining) against
/// a redis-server of our own. Shared machines vary by tens of percent
/// between hours; this line lets a reader scale every other figure.
fn redis_calibration() -> String {
    let server = hookbus_testkit::RedisServer::start();
    let port = server.port().to_string();
    let out = Command::new("redis-benchmark").args(["-q", "-p", &port, "-n", "100000", "-t", "set,get"]).output();
    let Ok(out) = out else { return "redis-benchmark not found".into() };
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let rate = |command: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(command))
            .find_map(|rest| rest.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
    };
    match (rate("SET:"), rate("GET:")) {
        (Some(set), Some(get)) => format!(
            "SET {} req/s, GET {} req/s (50 clients, no pipelining; the issues' reference machine: about 98,000)",
            thousands(set),
            thousands(get)
        ),
        _ => "redis-benchmark printed no figures".into(),
    }
}

fn num(value: &Value, field: &str) -> Option<f64> {
    value.get(field).and_then(Value::as_f64)
}

/// 12345.6 → "12,346".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "—",
    }
}

fn render(runs: &[(&Bench, String)], figures: &BTreeMap<String, Value>, calibration: &str) -> String {
    let mut doc = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| hookbus_e2e::rfc3339(d.as_secs() as i64))
        .unwrap_or_default();
    let _ = writeln!(doc, "# Performance\n");
    let _ = writeln!(
        doc,
        "Generated by `cargo run -p hookbus-e2e --bin perf-report` at {now}; rerun it rather than \
         editing this file. Every figure comes from a benchmark that prints it; none is asserted by a timed \
         test. Why each figure is what it is, what was tried, and earlier runs: \
         [performance-notes.md](performance-notes.md).\n"
    );
    let _ = writeln!(doc, "## Machine\n\n| | |\n| --- | --- |");
    for (what, value) in machine() {
        let _ = writeln!(doc, "| {what} | {value} |");
    }
    let _ = writeln!(doc, "| redis-benchmark against a fresh redis-server, before the benchmarks | {calibration} |");
    let loads: Vec<String> = runs.iter().map(|(b, load)| format!("{} {load}", b.name)).collect();
    let _ = writeln!(doc, "| load average (1 min) when each benchmark started | {} |\n", loads.join(", "));
    let _ = writeln!(
        doc,
        "The benchmarks share the machine's cores with their own load generators, redis-server and the \
         processes under test; figures swing by tens of percent with anything else running.\n"
    );

    let _ = writeln!(doc, "## Figures and targets\n\n| figure | measured | target | |\n| --- | --- | --- | --- |");
    for (bench, place) in [("pipeline-redis", "over Redis"), ("pipeline-memory", "in memory")] {
        let Some(f) = figures.get(bench) else { continue };
        let rate = num(f, "messages_per_s").unwrap_or(0.0);
        let target = num(f, "target_messages_per_s").unwrap_or(f64::INFINITY);
        let _ = writeln!(
            doc,
            "| bus pipeline {place}, 4 stages, end to end | {} msgs/s | ≥ {} msgs/s | {} |",
            thousands(rate),
            thousands(target),
            verdict(Some(rate >= target))
        );
        // Over Redis the latency is the polling's; in memory it says little.
        if bench == "pipeline-redis" {
            let _ = writeln!(
                doc,
                "| bus pipeline over Redis, latency at {} msgs/s | p50 {:.1} ms, p99 {:.1} ms | — | — |",
                thousands(num(f, "paced_rate").unwrap_or(0.0)),
                num(f, "p50_ms").unwrap_or(f64::NAN),
                num(f, "p99_ms").unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(f) = figures.get("gateway-ingest") {
        let ratio = num(f, "ratio").unwrap_or(0.0);
        let p99 = num(f, "p99_ms").unwrap_or(f64::NAN);
        let _ = writeln!(
            doc,
            "| gateway requests/s, as a share of a bare axum handler's | {:.0} % ({} vs {} req/s) | ≥ 50 % | {} |",
            ratio * 100.0,
            thousands(num(f, "gateway_requests_per_s").unwrap_or(0.0)),
            thousands(num(f, "bare_requests_per_s").unwrap_or(0.0)),
            verdict(Some(ratio >= 0.5))
        );
        let _ = writeln!(
            doc,
            "| gateway latency, 64 connections | p50 {:.2} ms, p99 {p99:.2} ms (the bare handler's in the same run: p50 {:.2} ms, p99 {:.2} ms) | p99 < 10 ms | {} |",
            num(f, "p50_ms").unwrap_or(f64::NAN),
            num(f, "bare_p50_ms").unwrap_or(f64::NAN),
            num(f, "bare_p99_ms").unwrap_or(f64::NAN),
            verdict(Some(p99 < 10.0))
        );
    }
    if let Some(f) = figures.get("commit") {
        let rate = num(f, "commits_per_s").unwrap_or(0.0);
        let _ = writeln!(
            doc,
            "| commit-to-git | {} commits/s | ≥ 200 commits/s | {} |",
            thousands(rate),
            verdict(Some(rate >= 200.0))
        );
        let _ = writeln!(
            doc,
            "| commit-to-git, dequeue → pushed | p50 {:.0} ms, p99 {:.0} ms | — | — |",
            num(f, "p50_ms").unwrap_or(f64::NAN),
            num(f, "p99_ms").unwrap_or(f64::NAN)
        );
    }
    if let Some(f) = figures.get("webhook-to-commit") {
        let p99 = num(f, "p99_ms").unwrap_or(f64::NAN);
        let missing = num(f, "missing").unwrap_or(1.0);
        // Superseded: canceled or dropped by reconcile because a newer update
        // of the same issue came while they waited (the pipeline fell behind).
        let superseded = num(f, "superseded").unwrap_or(0.0);
        let fates = if missing > 0.0 {
            format!(
                " ({} superseded by newer updates, {} lost)",
                thousands(superseded),
                thousands(num(f, "lost").unwrap_or(missing - superseded))
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            doc,
            "| webhook → pushed commit at a steady {} webhooks/s | p50 {:.0} ms, p90 {:.0} ms, p99 {p99:.0} ms; {} of {} committed{fates} | keeps up, every webhook committed; p99 < 1 s (our own target) | {} |",
            num(f, "rate").unwrap_or(0.0),
            num(f, "p50_ms").unwrap_or(f64::NAN),
            num(f, "p90_ms").unwrap_or(f64::NAN),
            thousands(num(f, "committed").unwrap_or(0.0)),
            thousands(num(f, "sent").unwrap_or(0.0)),
            verdict(Some(missing == 0.0 && p99 < 1000.0))
        );
        if let Some(memory) = f.get("peak_memory_kib").and_then(Value::as_object) {
            let peak = memory.values().filter_map(Value::as_u64).max().unwrap_or(0);
            let list: Vec<String> =
                memory.iter().map(|(name, kib)| format!("{name} {}", mib(kib.as_u64().unwrap_or(0)))).collect();
            let _ = writeln!(
                doc,
                "| peak memory per process (VmHWM) in that run | {}; redis-server {} | fits a 512 MiB dyno (standard-1X) | {} |",
                list.join(", "),
                mib(num(f, "redis_peak_memory_kib").unwrap_or(0.0) as u64),
                verdict(Some(peak > 0 && peak < DYNO_MEMORY_KIB))
            );
        }
    }
    let _ = writeln!(doc);

    let _ = writeln!(doc, "## The benchmarks\n");
    for (bench, _) in runs {
        let _ = writeln!(
            doc,
            "### {}\n\n```sh\ncargo bench {}\n```\n\n{}\n",
            bench.name,
            bench.args.join(" "),
            bench.about
        );
        let _ = writeln!(doc, "| figure | value |\n| --- | --- |");
        let names: &[&str] = match bench.name {
            "pipeline" => &["pipeline-memory", "pipeline-redis"],
            "gateway" => &["gateway-ingest"],
            "commit" => &["commit"],
            _ => &["webhook-to-commit"],
        };
        for name in names {
            let Some(Value::Object(fields)) = figures.get(*name) else { continue };
            for (field, value) in fields.iter().filter(|(k, _)| k.as_str() != "bench") {
                let _ = writeln!(doc, "| {name}: {field} | {} |", show(value));
            }
        }
        let _ = writeln!(doc);
    }
    doc
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn show(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() != 0.0 && x.abs() < 100.0 => format!("{x:.2}"),
            Some(x) => thousands(x),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k} {}", show(v))).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}
