//! Which repositories are synced, as installation events say.
//!
//! The registry remembers the latest enable/disable per repository; a
//! repository it has never heard of is synced. Rationale (docs/pipeline.md,
//! "Synced repositories"): hookbus also runs as a plain repository webhook,
//! where GitHub never sends installation events, and webhooks only arrive
//! for repositories someone connected. The configured allow-list
//! (`normalise.repositories`) narrows the set further; that check is the
//! plugin's, not the registry's.
//!
//! Names are compared lowercase: GitHub treats `Octo/Repo` and `octo/repo`
//! as the same repository.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::redis::{RedisConnection, RedisTarget};

/// The registry's store could not be reached or answered nonsense. Transient:
/// the message is retried.
#[derive(Debug, thiserror::Error)]
#[error("repository registry: {0}")]
pub struct RegistryError(String);

/// The synced-repository set.
#[async_trait]
pub trait RepositoryRegistry: Send + Sync + 'static {
    /// Marks `repositories` ("owner/name") synced, as of `at` (ms). An entry
    /// written by a later event is kept.
    async fn enable(&self, repositories: &[String], at: i64) -> Result<(), RegistryError>;
    /// Marks `repositories` not synced, as of `at` (ms).
    async fn disable(&self, repositories: &[String], at: i64) -> Result<(), RegistryError>;
    /// Whether installation events leave `repository` synced (true when none
    /// ever named it).
    async fn is_enabled(&self, repository: &str) -> Result<bool, RegistryError>;
}

/// An entry as stored: the state and when it was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    enabled: bool,
    at: i64,
}

/// In one process: `hookbus dev` and tests.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    entries: Mutex<HashMap<String, Entry>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&self, repositories: &[String], enabled: bool, at: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for repository in repositories {
            let entry = entries.entry(repository.to_lowercase()).or_insert(Entry { enabled, at: i64::MIN });
            if at >= entry.at {
                *entry = Entry { enabled, at };
            }
        }
    }
}

#[async_trait]
impl RepositoryRegistry for MemoryRegistry {
    async fn enable(&self, repositories: &[String], at: i64) -> Result<(), RegistryError> {
        self.set(repositories, true, at);
        Ok(())
    }

    async fn disable(&self, repositories: &[String], at: i64) -> Result<(), RegistryError> {
        self.set(repositories, false, at);
        Ok(())
    }

    async fn is_enabled(&self, repository: &str) -> Result<bool, RegistryError> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(!matches!(entries.get(&repository.to_lowercase()), Some(Entry { enabled: false, .. })))
    }
}

/// In Redis: the hash `<prefix>:repositories`, field `owner/name`, value
/// `enabled:<ms>` or `disabled:<ms>` (docs/redis-layout.md, "Normalise keys").
pub struct RedisRegistry {
    conn: RedisConnection,
    key: String,
    script: redis::Script,
}

impl RedisRegistry {
    /// Connects lazily to the server at `url` (the first command dials; a
    /// Redis that is down makes handlers retry, not the process exit).
    pub fn connect(url: &str, tls_insecure: bool, prefix: &str) -> Result<Self, RegistryError> {
        Self::open(&RedisTarget::single(url, tls_insecure), prefix)
    }

    /// As the settings name it: `redis.*` and `bus.prefix`.
    pub fn from_settings(settings: &hookbus_config::Settings) -> Result<Self, RegistryError> {
        Self::open(&RedisTarget::from_settings(&settings.redis), &settings.bus.prefix)
    }

    /// Connects lazily to `target`, one server or a Redis Cluster (the
    /// registry is one hash, so its script runs on the master owning it).
    pub fn open(target: &RedisTarget, prefix: &str) -> Result<Self, RegistryError> {
        let conn =
            RedisConnection::open(target, Duration::from_secs(2)).map_err(|err| RegistryError(err.to_string()))?;
        Ok(RedisRegistry {
            conn,
            key: format!("{prefix}:repositories"),
            script: redis::Script::new(include_str!("lua/repositories.lua")),
        })
    }

    async fn set(&self, repositories: &[String], state: &str, at: i64) -> Result<(), RegistryError> {
        if repositories.is_empty() {
            return Ok(());
        }
        let mut invocation = self.script.key(&self.key);
        invocation.arg(state).arg(at);
        for repository in repositories {
            invocation.arg(repository.to_lowercase());
        }
        let mut conn = self.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await.map_err(|err| RegistryError(format!("redis: {err}")))?;
        Ok(())
    }
}

#[async_trait]
impl RepositoryRegistry for RedisRegistry {
    async fn enable(&self, repositories: &[String], at: i64) -> Result<(), RegistryError> {
        self.set(repositories, "enabled", at).await
    }

    async fn disable(&self, repositories: &[String], at: i64) -> Result<(), RegistryError> {
        self.set(repositories, "disabled", at).await
    }

    async fn is_enabled(&self, repository: &str) -> Result<bool, RegistryError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("HGET")
            .arg(&self.key)
            .arg(repository.to_lowercase())
            .query_async(&mut conn)
            .await
            .map_err(|err| RegistryError(format!("redis: {err}")))?;
        match value.as_deref().map(|v| v.split_once(':').map(|(state, _)| state)) {
            None => Ok(true),
            Some(Some("enabled")) => Ok(true),
            Some(Some("disabled")) => Ok(false),
            Some(_) => Err(RegistryError(format!(
                "entry for {repository} in {} is not `enabled:<ms>` or `disabled:<ms>`",
                self.key
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_repository_is_synced_until_an_installation_event_disables_it() {
        let registry = MemoryRegistry::new();
        assert!(registry.is_enabled("octo/repo").await.expect("memory"));
        registry.disable(&["Octo/Repo".into()], 10).await.expect("memory");
        assert!(!registry.is_enabled("octo/repo").await.expect("memory"));
        registry.enable(&["octo/repo".into()], 20).await.expect("memory");
        assert!(registry.is_enabled("OCTO/REPO").await.expect("memory"));
    }

    #[tokio::test]
    async fn an_older_installation_event_does_not_undo_a_newer_one() {
        let registry = MemoryRegistry::new();
        registry.disable(&["o/r".into()], 20).await.expect("memory");
        registry.enable(&["o/r".into()], 10).await.expect("memory");
        assert!(!registry.is_enabled("o/r").await.expect("memory"));
    }
}
