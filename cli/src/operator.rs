//! Operator commands over `REDIS_URL`: what `redis-cli` would show, decoded.

use std::process::ExitCode;
use std::sync::Arc;

use hookbus_bus::backend::DeadSelector;
use hookbus_bus::{Backend, DeadContent, DeadLetter, Envelope, QUEUES};
use hookbus_config::{exit_on_error, Secret, Settings};
use hookbus_gateway::redeliver::{RedeliverError, Redeliverer};
use hookbus_reconcile::store::{OperationStore, RedisStore};
use serde_json::{json, Value};

use crate::running::{self, DevBus, RunningDev};

/// `println!` for output that may go into a pipe: a reader that stops early
/// (`hookbus queues | head -2`) ends the command quietly, as with any Unix
/// tool, instead of a panic about a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            output_failed(&err)
        }
    }};
}

fn output_failed(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("hookbus: cannot write the output: {err}");
    std::process::exit(1);
}

/// Connects to the configured Redis and checks it answers; on failure says
/// where it tried (without the password) and exits 1.
async fn connect() -> Result<Arc<dyn Backend>, ExitCode> {
    let settings = operator_settings()?;
    let url = redacted(settings.redis.url.expose());
    let backend = match hookbus_bus::connect(&settings) {
        Ok(backend) => backend,
        Err(err) => {
            eprintln!("hookbus: cannot use Redis at {url}: {err}");
            return Err(ExitCode::FAILURE);
        }
    };
    if let Err(err) = backend.ping().await {
        eprintln!("hookbus: cannot reach Redis at {url} (set REDIS_URL): {err}");
        return Err(ExitCode::FAILURE);
    }
    Ok(backend)
}

/// The settings of the operator commands: the configuration's, or, when it
/// names no Redis, the Redis of a `hookbus dev` running in this directory
/// (or the nearest parent where one runs).
/// One that keeps its queues in memory is out of reach: said, exit 1.
fn operator_settings() -> Result<Settings, ExitCode> {
    let mut settings = exit_on_error(Settings::load());
    if running::redis_named(&settings) {
        return Ok(settings);
    }
    match RunningDev::nearest() {
        Some((RunningDev { bus: DevBus::Redis(url), .. }, _)) => settings.redis.url = Secret::new(url),
        Some((RunningDev { bus: DevBus::Memory, address }, dir)) => {
            eprintln!(
                "hookbus: the `hookbus dev` running in {} keeps its queues in memory, where this command cannot \
                 read them: see them on http://{address}/admin or /metrics. Start it with --redis <url> to use \
                 `hookbus queues`, `peek`, `dead` and `ops` on them, or set REDIS_URL to read another Redis.",
                dir.display()
            );
            return Err(ExitCode::FAILURE);
        }
        None => {}
    }
    Ok(settings)
}

/// `redis://user:secret@host:6379/0` -> `redis://host:6379/0`.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn known_queue(queue: &str) -> Result<(), ExitCode> {
    if QUEUES.contains(&queue) {
        Ok(())
    } else {
        eprintln!("hookbus: unknown queue `{queue}`; the queues are {}", QUEUES.join(", "));
        Err(ExitCode::from(2))
    }
}

pub async fn queues() -> ExitCode {
    let backend = match connect().await {
        Ok(b) => b,
        Err(code) => return code,
    };
    out!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "queue",
        "pending",
        "in-flight",
        "delayed",
        "held",
        "dead",
        "consumers"
    );
    for queue in QUEUES {
        match backend.depths(queue).await {
            Ok(d) => out!(
                "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                queue,
                d.pending,
                d.in_flight,
                d.delayed,
                d.held,
                d.dead,
                d.consumers
            ),
            Err(err) => {
                eprintln!("hookbus: reading {queue}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    // On stderr: the table stays the same for scripts reading it.
    for risk in backend.durability_risks().await.unwrap_or_default() {
        eprintln!("warning: {}: {risk}", hookbus_bus::backend::DURABILITY_WARNING);
    }
    ExitCode::SUCCESS
}

pub async fn peek(queue: &str, n: usize, dead: bool) -> ExitCode {
    if let Err(code) = known_queue(queue) {
        return code;
    }
    let backend = match connect().await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let shown: Result<Vec<Value>, _> = if dead {
        backend.dead_list(queue, n).await.map(|letters| letters.iter().map(dead_json).collect())
    } else {
        backend.peek(queue, n).await.map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Ok(envelope) => envelope_json(envelope),
                    Err(raw) => json!({ "undecodable": String::from_utf8_lossy(raw) }),
                })
                .collect()
        })
    };
    match shown {
        Ok(values) => {
            // Said on stderr: a script reading stdout sees nothing to decode,
            // a person sees that the queue was read and is empty.
            if values.is_empty() {
                match dead {
                    true => eprintln!("hookbus: {queue} has no dead letters"),
                    false => eprintln!("hookbus: {queue} has no pending messages"),
                }
            }
            for value in values {
                out!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hookbus: reading {queue}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The decoding the admin page shows too (`Envelope::to_json`).
pub fn envelope_json(e: &Envelope) -> Value {
    e.to_json()
}

/// The decoding the admin page shows too (`DeadLetter::to_json`).
pub fn dead_json(letter: &DeadLetter) -> Value {
    letter.to_json()
}

/// `hookbus ops <resource>`: reconcile's records of one resource.
pub async fn ops(resource: &str) -> ExitCode {
    let settings = match operator_settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let url = redacted(settings.redis.url.expose());
    let store = match RedisStore::from_settings(&settings) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("hookbus: cannot use Redis at {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let records = match store.operations(resource).await {
        Ok(records) => records,
        Err(err) => {
            eprintln!("hookbus: cannot read operations from Redis at {url} (set REDIS_URL): {err}");
            return ExitCode::FAILURE;
        }
    };
    if records.is_empty() {
        out!("no operations recorded for {resource} (within the retention)");
        return ExitCode::SUCCESS;
    }
    for record in &records {
        let related = [
            record.canceled_by.as_ref().map(|id| format!("canceled_by={id}")),
            record.dropped_for.as_ref().map(|id| format!("dropped_for={id}")),
            record.duplicate_of.as_ref().map(|id| format!("duplicate_of={id}")),
            record.commit.as_ref().map(|sha| format!("commit={sha}")),
            record.reason.as_ref().map(|why| format!("reason={why:?}")),
        ];
        let related: Vec<String> = related.into_iter().flatten().collect();
        out!(
            "{}  {:<10} {:<8} {} updated_at={} {}",
            record.id,
            record.state.as_str(),
            format!("{:?}", record.direction).to_lowercase(),
            record.action,
            utc(record.updated_at),
            related.join(" ")
        );
        for step in &record.history {
            out!("    {}  {:<10} {}", utc(step.at), step.state.as_str(), step.note);
        }
    }
    ExitCode::SUCCESS
}

/// Ms since the epoch as an RFC 3339 UTC time, to the millisecond
/// (`2026-12-02T02:12:50.511Z`); the number itself when it is out of range.
fn utc(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `hookbus redeliver [hook…] [--dry-run]`: one redelivery sweep now, over
/// the given hooks or the configured ones; exit 1 if a hook could not be
/// swept, 2 for a malformed hook or missing or unusable credentials.
pub async fn redeliver(hooks: Vec<String>, dry_run: bool, pages: usize) -> ExitCode {
    let mut settings = match operator_settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if !hooks.is_empty() {
        settings.github.redeliver_hooks = hooks.join(",");
    }
    let hooks = exit_on_error(settings.github.redeliver_hooks());
    if hooks.is_empty() {
        eprintln!(
            "hookbus: no webhook to look at: name them (repos/<owner>/<repo>/hooks/<id>, orgs/<org>/hooks/<id>, \
             app/hook) or set HOOKBUS_GITHUB__REDELIVER_HOOKS"
        );
        return ExitCode::from(2);
    }
    let redeliverer = match Redeliverer::for_hooks(&settings, hooks) {
        Ok(redeliverer) => redeliverer,
        Err(err @ RedeliverError::Config(_)) => {
            eprintln!("hookbus: {err}");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("hookbus: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = redeliverer.sweep_now(dry_run, pages).await;
    let verb = if dry_run { "would ask for" } else { "asked for" };
    for delivery in &report.redelivered {
        out!("{verb} {delivery}");
    }
    out!(
        "{} failed deliveries {verb} again; {} left alone (stored after all, refused on purpose, or out of attempts)",
        report.redelivered.len(),
        report.skipped
    );
    for failure in &report.failed {
        eprintln!("hookbus: {failure}");
    }
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn selector(id: Option<String>) -> DeadSelector {
    id.map(DeadSelector::Id).unwrap_or(DeadSelector::All)
}

pub async fn dead_retry(queue: &str, id: Option<String>) -> ExitCode {
    if let Err(code) = known_queue(queue) {
        return code;
    }
    let backend = match connect().await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let which = selector(id);
    match backend.dead_retry(queue, &which).await {
        Ok(n) => {
            out!("{n} dead letter(s) of {queue} back on pending");
            // Bytes that never were a message cannot be handled again: say
            // so, rather than leave an operator wondering why they stay.
            let left = backend.dead_list(queue, usize::MAX).await.unwrap_or_default();
            let raw = left.iter().filter(|l| matches!(l.content, DeadContent::Raw(_)) && which.matches(l)).count();
            if raw > 0 {
                out!(
                    "{raw} dead letter(s) of {queue} stay dead: they are not messages (`raw` bytes), so there is \
                     nothing to handle again; `hookbus peek {queue} --dead` shows them, `hookbus dead purge {queue} \
                     --id <id>` deletes one"
                );
            } else if n == 0 {
                if let DeadSelector::Id(id) = &which {
                    out!("no dead letter of {queue} has the id {id}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hookbus: retrying dead letters of {queue}: {err}");
            ExitCode::FAILURE
        }
    }
}

pub async fn dead_purge(queue: &str, id: Option<String>) -> ExitCode {
    if let Err(code) = known_queue(queue) {
        return code;
    }
    let backend = match connect().await {
        Ok(b) => b,
        Err(code) => return code,
    };
    match backend.dead_purge(queue, &selector(id)).await {
        Ok(n) => {
            out!("{n} dead letter(s) of {queue} deleted");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hookbus: purging dead letters of {queue}: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_not_shown() {
        assert_eq!(redacted("redis://h:secret@db.example:6380/0"), "redis://db.example:6380/0");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
