//! `hookbus dev`: everything in one process.
//!
//! The gateway and every worker plugin run here, over the in-memory bus
//! (or `--redis <url>`) — the same plugin code the worker binaries run. A
//! webhook secret and an API token are made up on first start and kept in
//! `./.hookbus/`, so `hookbus send` in the same directory (or below) signs correctly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use hookbus_bus::{Backend, Journal, MemoryBackend, Plugin, RunnerOptions, Shutdown};
use hookbus_commit::{CommitPlugin, COMMITS_JOURNAL, COMMITS_KEPT};
use hookbus_config::{exit_on_error, Secret, Settings, Tokens};
use hookbus_gateway::operations::StoreLookup;
use hookbus_gateway::{serve, Gateway};
use hookbus_normalise::{MemoryRegistry, Normalise, RedisRegistry, RepositoryRegistry};
use hookbus_notify::Notify;
use hookbus_reconcile::store::MemoryStore;
use hookbus_reconcile::{tie_breaker, Reconcile};

use crate::running::{DevBus, RunningDev, DEV_STATE_FILE};
use crate::send::DEV_SECRET_FILE;

const DEV_DIR: &str = ".hookbus";
const DEV_TOKEN_FILE: &str = ".hookbus/api-token";
/// The bare repository records are pushed to when `HOOKBUS_GIT__REMOTE` is not set.
const DEV_RECORDS: &str = ".hookbus/records.git";

/// The worker plugins built so far, wired as their binaries wire them —
/// over Redis with `--redis`, otherwise with in-memory state.
fn plugins(
    settings: &Settings,
    backend: &Arc<dyn Backend>,
    operations: Option<Arc<MemoryStore>>,
) -> Result<Vec<Arc<dyn Plugin>>, String> {
    let over_redis = operations.is_none();
    let registry: Arc<dyn RepositoryRegistry> = if over_redis {
        Arc::new(RedisRegistry::from_settings(settings).map_err(|e| e.to_string())?)
    } else {
        Arc::new(MemoryRegistry::new())
    };
    let normalise = Normalise::new(registry, settings.normalise.repositories.clone());
    let reconcile = match operations {
        None => Reconcile::from_settings(settings).map_err(|e| e.to_string())?,
        Some(store) => Reconcile::new(store, tie_breaker(settings).map_err(|e| e.to_string())?),
    };
    let commit = CommitPlugin::from_settings(settings).map_err(|e| e.to_string())?.with_journal(Journal::new(
        backend.clone(),
        COMMITS_JOURNAL,
        COMMITS_KEPT,
    ));
    let notify = if over_redis {
        Notify::from_settings(settings).map_err(|e| e.to_string())?
    } else {
        Notify::in_memory(settings).map_err(|e| e.to_string())?.0
    };
    Ok(vec![Arc::new(normalise), Arc::new(reconcile), Arc::new(commit), Arc::new(notify)])
}

/// Without `HOOKBUS_GIT__REMOTE`, records go to a bare repository under
/// `.hookbus/`, created on first start.
fn local_records_remote(settings: &mut Settings) -> Result<Option<PathBuf>, String> {
    if !settings.git.remote.trim().is_empty() {
        return Ok(None);
    }
    let path = std::path::absolute(DEV_RECORDS).map_err(|e| format!("{DEV_RECORDS}: {e}"))?;
    if !path.exists() {
        // HEAD names the branch hookbus commits to, so a plain `git log` shows it.
        let mut options = git2::RepositoryInitOptions::new();
        options.bare(true).initial_head(&settings.git.branch);
        git2::Repository::init_opts(&path, &options).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    settings.git.remote = path.to_string_lossy().into_owned();
    Ok(Some(path))
}

pub async fn run(redis: Option<String>, port: Option<u16>) -> ExitCode {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    if let Some(url) = &redis {
        vars.push(("REDIS_URL".into(), url.clone()));
    }
    if let Some(port) = port {
        vars.push(("PORT".into(), port.to_string()));
    }
    let mut settings = exit_on_error(Settings::load_from(&vars, None));
    let _logs = hookbus_bus::telemetry::init();

    if let Err(err) = std::fs::create_dir_all(DEV_DIR) {
        eprintln!("hookbus: cannot create {DEV_DIR}/: {err}");
        return ExitCode::FAILURE;
    }
    if settings.github.webhook_secret.is_empty() {
        match remembered(DEV_SECRET_FILE) {
            Ok(secret) => settings.github.webhook_secret = Secret::new(secret),
            Err(err) => {
                eprintln!("hookbus: cannot keep the dev secret in {DEV_SECRET_FILE}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let token = if settings.api.tokens.is_empty() {
        match remembered(DEV_TOKEN_FILE) {
            Ok(token) => {
                settings.api.tokens = Tokens::new([token.clone()]);
                Some(token)
            }
            Err(err) => {
                eprintln!("hookbus: cannot keep the dev API token in {DEV_TOKEN_FILE}: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    let records = match local_records_remote(&mut settings) {
        Ok(records) => records,
        Err(err) => {
            eprintln!("hookbus: {err}");
            return ExitCode::FAILURE;
        }
    };

    let backend: Arc<dyn Backend> = match &redis {
        None => Arc::new(MemoryBackend::new()),
        Some(_) => match hookbus_bus::connect(&settings) {
            Ok(backend) => backend,
            Err(err) => {
                eprintln!("hookbus: cannot use Redis: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    if let Err(err) = backend.ping().await {
        eprintln!("hookbus: cannot reach Redis at {}: {err}", crate::operator::redacted(settings.redis.url.expose()));
        return ExitCode::FAILURE;
    }
    // Reconcile's records, shared with the gateway's operations endpoint.
    let operations = redis.is_none().then(|| Arc::new(MemoryStore::default()));
    let gateway = match (&redis, &operations) {
        (None, Some(store)) => {
            Gateway::in_process(backend.clone(), &settings).with_operations(Arc::new(StoreLookup(store.clone())))
        }
        _ => match (Gateway::over_redis(backend.clone(), &settings), StoreLookup::over_redis(&settings)) {
            (Ok(gateway), Ok(lookup)) => gateway.with_operations(Arc::new(lookup)),
            (Err(err), _) => {
                eprintln!("hookbus: {err}");
                return ExitCode::FAILURE;
            }
            (_, Err(err)) => {
                eprintln!("hookbus: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let address = SocketAddr::from(([127, 0, 0, 1], settings.gateway.port));
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("hookbus: cannot listen on {address}: {err} (choose another with --port)");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            eprintln!("hookbus: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };

    let plugins = match plugins(&settings, &backend, operations) {
        Ok(plugins) => plugins,
        Err(err) => {
            eprintln!("hookbus: cannot set up the workers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut runners = Vec::new();
    for plugin in &plugins {
        let options = RunnerOptions::from_settings(&settings.bus, plugin.input());
        runners.push(tokio::spawn(hookbus_bus::run(backend.clone(), plugin.clone(), options, shutdown.clone())));
    }

    let bus = match &redis {
        None => "in memory (nothing survives a restart)".to_string(),
        Some(url) => format!("Redis at {}", crate::operator::redacted(url)),
    };
    let stages: Vec<&str> = plugins.iter().map(|p| p.name()).collect();
    println!("hookbus dev — bus {bus}");
    println!("  webhooks   POST http://{address}/webhooks/github");
    println!(
        "  secret     {}   (sign with it; `hookbus send` reads {DEV_SECRET_FILE})",
        settings.github.webhook_secret.expose()
    );
    println!("  client API POST http://{address}/api/v1/changes");
    if let Some(token) = &token {
        println!("  API token  {token}   (Authorization: Bearer …; kept in {DEV_TOKEN_FILE})");
    }
    println!("  health     http://{address}/healthz   metrics http://{address}/metrics");
    match settings.admin.password() {
        Some(_) => println!("  admin      http://{address}/admin   (user admin, HOOKBUS_ADMIN__PASSWORD)"),
        None => println!("  admin      http://{address}/admin   (open from this machine only; set HOOKBUS_ADMIN__PASSWORD to require one)"),
    }
    match &records {
        Some(path) => println!(
            "  records    {} (branch {}; see them: git --git-dir {} log --stat)",
            path.display(),
            settings.git.branch,
            path.display()
        ),
        None => println!("  records    pushed to {} (branch {})", settings.git.remote, settings.git.branch),
    }
    if stages.is_empty() {
        println!("  workers    none");
    } else {
        println!("  workers    {}", stages.join(", "));
    }
    println!("Ctrl-C stops it cleanly.");

    // For `hookbus queues`, `send`, … started in this directory or below.
    let state = Path::new(DEV_STATE_FILE);
    let running = RunningDev {
        address: listener.local_addr().unwrap_or(address),
        bus: match &redis {
            None => DevBus::Memory,
            Some(url) => DevBus::Redis(url.clone()),
        },
    };
    if let Err(err) = running.write(state) {
        tracing::warn!(error = %err, "cannot write {DEV_STATE_FILE}; other hookbus commands will not find this one");
    }

    let grace = settings.gateway.grace_period();
    let served = serve(listener, gateway.dev_mode().router(), shutdown.clone(), grace).await;
    let _ = std::fs::remove_file(state);
    shutdown.trigger();
    for runner in runners {
        let _ = runner.await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookbus: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The value kept in `path`, made up (random hex) on first use.
fn remembered(path: &str) -> std::io::Result<String> {
    if let Ok(value) = std::fs::read_to_string(path) {
        let value = value.trim().to_string();
        if !value.is_empty() {
            return Ok(value);
        }
    }
    let bytes: [u8; 16] = rand::random();
    let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(Path::new(path), &value)?;
    Ok(value)
}
