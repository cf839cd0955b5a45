//! What a running `hookbus dev` tells the other commands started in the same
//! directory, or below it: where its gateway listens and where its queues are.
//!
//! `hookbus dev` writes `.hookbus/dev.json` once it listens and removes it
//! when it stops. Without `REDIS_URL`, the operator commands read the queues
//! of that `hookbus dev`: its Redis when it runs with `--redis`; when it keeps
//! them in memory they cannot, and say where to look instead (rather than
//! showing some other Redis's queues as if they were these). `hookbus send`
//! posts to its gateway. A command looks in its own directory, then in each
//! parent in turn, as git looks for `.git`, and takes the nearest `hookbus
//! dev` still running. A file left by a `hookbus dev` that was killed is
//! ignored: its gateway no longer answers.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hookbus_config::{RedisSettings, Settings};
use serde_json::{json, Value};

/// The file, relative to the directory `hookbus dev` runs in.
pub const DEV_STATE_FILE: &str = ".hookbus/dev.json";

/// How long a check that the gateway still listens may take.
const ALIVE_WITHIN: Duration = Duration::from_millis(300);

/// Where a running `hookbus dev` keeps its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevBus {
    Memory,
    Redis(String),
}

/// A running `hookbus dev`, as its state file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningDev {
    /// Where its gateway listens.
    pub address: SocketAddr,
    pub bus: DevBus,
}

impl RunningDev {
    /// Written by `hookbus dev` once it listens: only its owner may read it
    /// (a `--redis` URL may hold a password).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let (bus, redis_url) = match &self.bus {
            DevBus::Memory => ("memory", None),
            DevBus::Redis(url) => ("redis", Some(url.as_str())),
        };
        let text = json!({ "address": self.address.to_string(), "bus": bus, "redis_url": redis_url }).to_string();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(path)?, text.as_bytes())
    }

    /// The `hookbus dev` the file at `path` describes, if the file is there,
    /// readable, and its gateway still accepts connections.
    pub fn find(path: &Path) -> Option<RunningDev> {
        let text = std::fs::read_to_string(path).ok()?;
        let dev = RunningDev::parse(&text)?;
        TcpStream::connect_timeout(&dev.address, ALIVE_WITHIN).ok()?;
        Some(dev)
    }

    /// The `hookbus dev` running in the current directory, or else in the
    /// nearest of its parents where one runs, with that directory.
    pub fn nearest() -> Option<(RunningDev, PathBuf)> {
        let here = std::env::current_dir().ok()?;
        here.ancestors().find_map(|dir| Some((RunningDev::find(&dir.join(DEV_STATE_FILE))?, dir.to_path_buf())))
    }

    fn parse(text: &str) -> Option<RunningDev> {
        let value: Value = serde_json::from_str(text).ok()?;
        let address = value.get("address")?.as_str()?.parse().ok()?;
        let bus = match value.get("bus")?.as_str()? {
            "memory" => DevBus::Memory,
            "redis" => DevBus::Redis(value.get("redis_url")?.as_str()?.to_string()),
            _ => return None,
        };
        Some(RunningDev { address, bus })
    }
}

/// Whether the configuration names a Redis itself, in the environment or a
/// configuration file (then a running `hookbus dev` does not matter to the
/// operator commands).
pub fn redis_named(settings: &Settings) -> bool {
    ["REDIS_URL", "HOOKBUS_REDIS__URL"].iter().any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
        || settings.redis.url != RedisSettings::default().url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_state_reads_back_and_a_stale_one_is_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("dev.json");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        for bus in [DevBus::Memory, DevBus::Redis("redis://:pw@127.0.0.1:7000".into())] {
            let dev = RunningDev { address, bus };
            dev.write(&path).expect("write");
            assert_eq!(RunningDev::find(&path), Some(dev));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }
        // The gateway is gone: a killed `hookbus dev` left the file behind.
        drop(listener);
        assert_eq!(RunningDev::find(&path), None);
    }

    #[test]
    fn a_redis_named_in_the_configuration_wins_over_a_dev_mode() {
        let mut settings = Settings::default();
        settings.redis.url = hookbus_config::Secret::new("redis://10.0.0.1:6379");
        assert!(redis_named(&settings));
    }

    #[test]
    fn damaged_state_files_are_ignored() {
        for text in ["", "{", r#"{"address":"x","bus":"memory"}"#, r#"{"address":"127.0.0.1:1","bus":"disk"}"#] {
            assert_eq!(RunningDev::parse(text), None, "{text}");
        }
        assert_eq!(RunningDev::parse(r#"{"address":"127.0.0.1:8080","bus":"redis"}"#), None, "redis without its URL");
    }
}
