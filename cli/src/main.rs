//! `hookbus`: the operator's command and the one-process dev mode.
//!
//! - `hookbus dev` — the gateway and every worker plugin built so far in one
//!   process over the in-memory bus (or `--redis <url>`).
//! - `hookbus queues | peek | dead | ops | redeliver` — look at and act on the queues in
//!   `REDIS_URL`, as an operator would with `redis-cli`, but decoded.
//!   Without `REDIS_URL`, those of a `hookbus dev --redis` running in the
//!   same directory or above it (see `running.rs`).
//! - `hookbus send` — post a correctly signed webhook to a gateway (by
//!   default the `hookbus dev` running in the same directory or above).
//!
//! Exit codes: 0 done, 1 failed (Redis unreachable, request refused), 2 bad
//! configuration or usage.

mod dev;
mod operator;
mod running;
mod send;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hookbus", version, about = "GitHub webhooks to git commits over durable Redis queues")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and the workers in one process (no Redis needed).
    Dev {
        /// Use this Redis instead of the in-memory bus.
        #[arg(long)]
        redis: Option<String>,
        /// Port for the gateway (default: PORT or 8080).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Depths of every queue: pending, in-flight, delayed, held, dead.
    Queues,
    /// Show the next messages of a queue (or its dead letters), decoded.
    Peek {
        queue: String,
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        /// Show dead letters instead of pending messages.
        #[arg(long)]
        dead: bool,
    },
    /// The operations of one resource (e.g. `github:octo/repo:issue:12`)
    /// with their audit trail, newest first.
    Ops { resource: String },
    /// Ask GitHub to send again the webhook deliveries that failed (timed
    /// out or 5xx, never a 2xx, not stored since), as the gateway does every
    /// `github.redeliver_interval_ms`; now, and for the given hooks.
    Redeliver {
        /// `repos/<owner>/<repo>/hooks/<id>`, `orgs/<org>/hooks/<id>` or
        /// `app/hook`, a GitHub App's own webhook (default:
        /// HOOKBUS_GITHUB__REDELIVER_HOOKS).
        hooks: Vec<String>,
        /// Only list what would be asked for.
        #[arg(long)]
        dry_run: bool,
        /// Pages of 100 attempts to read per hook, newest first (each a
        /// request against the credentials' hourly limit).
        #[arg(long, default_value_t = hookbus_gateway::redeliver::MAX_PAGES as u64, value_parser = clap::value_parser!(u64).range(1..=1000))]
        pages: u64,
    },
    /// List, retry or purge dead letters.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Post a signed webhook to a gateway, with a fresh delivery id.
    Send {
        /// The JSON payload to send.
        payload: PathBuf,
        /// The X-GitHub-Event, e.g. `issues`.
        #[arg(long)]
        event: String,
        /// Webhook URL (default: the `hookbus dev` running in this directory
        /// or a parent, else http://127.0.0.1:<PORT or 8080>/webhooks/github).
        #[arg(long)]
        url: Option<String>,
        /// Secret to sign with (default: HOOKBUS_GITHUB__WEBHOOK_SECRET, or the
        /// one `hookbus dev` wrote to .hookbus/secret).
        #[arg(long)]
        secret: Option<String>,
        /// Delivery id to send (default: a fresh one). Reuse one to see
        /// the gateway's deduplication.
        #[arg(long)]
        delivery: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeadAction {
    /// Dead letters, newest first.
    List {
        queue: String,
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
    },
    /// Send dead letters back to pending with their attempts reset.
    Retry {
        queue: String,
        /// Only this one (a message id, or `raw-…` for undecodable bytes).
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete dead letters.
    Purge {
        queue: String,
        /// Only this one.
        #[arg(long)]
        id: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev { redis, port } => dev::run(redis, port).await,
        Command::Queues => operator::queues().await,
        Command::Peek { queue, n, dead } => operator::peek(&queue, n, dead).await,
        Command::Ops { resource } => operator::ops(&resource).await,
        Command::Redeliver { hooks, dry_run, pages } => {
            operator::redeliver(hooks, dry_run, usize::try_from(pages).unwrap_or(usize::MAX)).await
        }
        Command::Dead { action } => match action {
            DeadAction::List { queue, n } => operator::peek(&queue, n, true).await,
            DeadAction::Retry { queue, id } => operator::dead_retry(&queue, id).await,
            DeadAction::Purge { queue, id } => operator::dead_purge(&queue, id).await,
        },
        Command::Send { payload, event, url, secret, delivery } => {
            send::run(&payload, &event, url, secret, delivery).await
        }
    }
}
