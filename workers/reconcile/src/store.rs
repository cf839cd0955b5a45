//! Where reconcile keeps books and operation records: Redis for the
//! workers, memory for `hookbus dev` and tests — one trait, same behaviour.
//!
//! Redis keys (`docs/redis-layout.md`, "Reconcile keys"): per resource, under
//! the hash tag `{res:<resource key>}` so a book and its records share a
//! slot — `book` (hash: version, MessagePack data), `ops` (sorted set of
//! operation ids by arrival), `op:<id>` (JSON record, expires after the
//! retention); and `<prefix>:op:<id>` → resource key, to find an operation
//! by id alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hookbus_bus::redis::{PooledConnection, RedisPool, RedisTarget};
use redis::{AsyncCommands, Script};

use crate::book::{Book, OperationRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("stored book of {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// The book of `key` (empty, version 0, if there is none).
    async fn load(&self, key: &str) -> Result<Book, StoreError>;
    /// Saves `book` (whose `version` is what was loaded) and `records`,
    /// unless the book was saved by someone else meanwhile: then `false`.
    async fn save(&self, key: &str, book: &Book, records: &[OperationRecord]) -> Result<bool, StoreError>;
    /// One operation by id.
    async fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError>;
    /// The operations of one resource still within the retention, newest first.
    async fn operations(&self, key: &str) -> Result<Vec<OperationRecord>, StoreError>;
    /// The operations one webhook delivery (`X-GitHub-Delivery`) caused,
    /// still within the retention, newest first.
    async fn operations_of_delivery(&self, delivery: &str) -> Result<Vec<OperationRecord>, StoreError>;
}

/// In one process.
#[derive(Default)]
pub struct MemoryStore {
    books: Mutex<HashMap<String, Book>>,
    records: Mutex<HashMap<String, OperationRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl OperationStore for MemoryStore {
    async fn load(&self, key: &str) -> Result<Book, StoreError> {
        Ok(lock(&self.books).get(key).cloned().unwrap_or_default())
    }

    async fn save(&self, key: &str, book: &Book, records: &[OperationRecord]) -> Result<bool, StoreError> {
        let mut books = lock(&self.books);
        let current = books.get(key).map(|b| b.version).unwrap_or(0);
        if current != book.version {
            return Ok(false);
        }
        let mut saved = book.clone();
        saved.version += 1;
        books.insert(key.to_string(), saved);
        let mut all = lock(&self.records);
        for record in records {
            all.insert(record.id.clone(), record.clone());
        }
        Ok(true)
    }

    async fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError> {
        Ok(lock(&self.records).get(id).cloned())
    }

    async fn operations(&self, key: &str) -> Result<Vec<OperationRecord>, StoreError> {
        let mut found: Vec<OperationRecord> = lock(&self.records).values().filter(|r| r.key == key).cloned().collect();
        found.sort_by(|a, b| b.arrived_at.cmp(&a.arrived_at).then_with(|| b.id.cmp(&a.id)));
        Ok(found)
    }

    async fn operations_of_delivery(&self, delivery: &str) -> Result<Vec<OperationRecord>, StoreError> {
        let mut found: Vec<OperationRecord> =
            lock(&self.records).values().filter(|r| r.delivery.as_deref() == Some(delivery)).cloned().collect();
        found.sort_by(|a, b| b.arrived_at.cmp(&a.arrived_at).then_with(|| b.id.cmp(&a.id)));
        Ok(found)
    }
}

/// In Redis, shared by every reconcile process (and read by the gateway).
pub struct RedisStore {
    pool: RedisPool,
    prefix: String,
    retention: Duration,
    save: Script,
}

impl RedisStore {
    /// On the server at `url`.
    pub fn connect(url: &str, tls_insecure: bool, prefix: &str, retention: Duration) -> Result<Self, StoreError> {
        Self::open(&RedisTarget::single(url, tls_insecure), prefix, retention)
    }

    /// On `target`, one server or a Redis Cluster.
    pub fn open(target: &RedisTarget, prefix: &str, retention: Duration) -> Result<Self, StoreError> {
        let pool = hookbus_bus::redis::pool(target, 8, hookbus_bus::redis::STORE_CALL_TIMEOUT)
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(RedisStore { pool, prefix: prefix.to_string(), retention, save: Script::new(include_str!("lua/save.lua")) })
    }

    /// As every hookbus process wires it: `redis.*`, `bus.prefix`,
    /// `reconcile.retention_ms`.
    pub fn from_settings(settings: &hookbus_config::Settings) -> Result<Self, StoreError> {
        Self::open(
            &RedisTarget::from_settings(&settings.redis),
            &settings.bus.prefix,
            Duration::from_millis(settings.reconcile.retention_ms),
        )
    }

    fn base(&self, key: &str) -> String {
        format!("{}:{{res:{key}}}", self.prefix)
    }

    fn index(&self, id: &str) -> String {
        format!("{}:op:{id}", self.prefix)
    }

    /// `<prefix>:ops-of-delivery:<delivery>`: the operations one webhook
    /// delivery caused (a set), so the admin page finds them by delivery id.
    fn delivery_index(&self, delivery: &str) -> String {
        format!("{}:ops-of-delivery:{delivery}", self.prefix)
    }

    /// Adds "`delivery` caused operation `id`" to `pipe` (one key).
    fn index_delivery(&self, pipe: &mut redis::Pipeline, delivery: &str, id: &str, retention_ms: u64) {
        let index = self.delivery_index(delivery);
        pipe.sadd(&index, id).ignore().pexpire(&index, retention_ms as i64).ignore();
    }

    async fn conn(&self) -> Result<PooledConnection, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Pool(e.to_string()))
    }
}

#[async_trait]
impl OperationStore for RedisStore {
    async fn load(&self, key: &str) -> Result<Book, StoreError> {
        let mut conn = self.conn().await?;
        let (version, data): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(format!("{}:book", self.base(key)))
            .arg("version")
            .arg("data")
            .query_async(&mut conn)
            .await?;
        let Some(data) = data else { return Ok(Book::default()) };
        let mut book: Book = rmp_serde::from_slice(&data)
            .map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })?;
        book.version = version.unwrap_or(0);
        Ok(book)
    }

    async fn save(&self, key: &str, book: &Book, records: &[OperationRecord]) -> Result<bool, StoreError> {
        let base = self.base(key);
        let retention_ms = self.retention.as_millis() as u64;
        let mut conn = self.conn().await?;
        // The by-id index lives outside the resource's slot (one key per
        // operation id, so each in a slot of its own on a cluster): written
        // first, so a saved record is always findable; an index entry without
        // a record (the save below lost a race, or the process died between
        // the two) just answers "not found", and the retry writes it again.
        // The by-delivery index (`ops-of-delivery:<delivery>`, for the admin
        // page's search) is written the same way, in the same round trip.
        // One pipeline on a single server; on a cluster a pipeline must stay
        // in one slot, so one SET per record (and one SADD + PEXPIRE of one
        // key per delivery).
        if self.pool.is_cluster() {
            for record in records {
                let () = redis::cmd("SET")
                    .arg(self.index(&record.id))
                    .arg(key)
                    .arg("PX")
                    .arg(retention_ms)
                    .query_async(&mut conn)
                    .await?;
                if let Some(delivery) = &record.delivery {
                    let mut pipe = redis::pipe();
                    self.index_delivery(&mut pipe, delivery, &record.id, retention_ms);
                    let () = pipe.query_async(&mut conn).await?;
                }
            }
        } else if !records.is_empty() {
            let mut pipe = redis::pipe();
            for record in records {
                pipe.cmd("SET").arg(self.index(&record.id)).arg(key).arg("PX").arg(retention_ms).ignore();
                if let Some(delivery) = &record.delivery {
                    self.index_delivery(&mut pipe, delivery, &record.id, retention_ms);
                }
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        let data = rmp_serde::to_vec_named(book)
            .map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })?;
        let mut call = self.save.prepare_invoke();
        call.key(format!("{base}:book")).key(format!("{base}:ops"));
        call.arg(book.version).arg(data).arg(hookbus_bus::envelope::now_ms()).arg(retention_ms);
        for record in records {
            call.key(format!("{base}:op:{}", record.id));
            let json = serde_json::to_string(record)
                .map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })?;
            call.arg(record.arrived_at).arg(json);
        }
        let saved: i64 = call.invoke_async(&mut conn).await?;
        Ok(saved == 1)
    }

    async fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let key: Option<String> = conn.get(self.index(id)).await?;
        let Some(key) = key else { return Ok(None) };
        let json: Option<String> = conn.get(format!("{}:op:{id}", self.base(&key))).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn operations(&self, key: &str) -> Result<Vec<OperationRecord>, StoreError> {
        let base = self.base(key);
        let mut conn = self.conn().await?;
        let ids: Vec<String> = conn.zrevrange(format!("{base}:ops"), 0, 499).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{base}:op:{id}")).collect();
        let jsons: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(jsons.into_iter().flatten().filter_map(|j| serde_json::from_str(&j).ok()).collect())
    }

    async fn operations_of_delivery(&self, delivery: &str) -> Result<Vec<OperationRecord>, StoreError> {
        let ids: Vec<String> = {
            let mut conn = self.conn().await?;
            conn.smembers(self.delivery_index(delivery)).await?
        };
        let mut found = Vec::new();
        for id in ids.iter().take(500) {
            if let Some(record) = self.operation(id).await? {
                found.push(record);
            }
        }
        found.sort_by(|a, b| b.arrived_at.cmp(&a.arrived_at).then_with(|| b.id.cmp(&a.id)));
        Ok(found)
    }
}
