//! One way to reach Redis, a single server or a Redis Cluster.
//!
//! Every hookbus crate that talks to Redis goes through here, so switching a
//! deployment to a cluster is configuration only (`redis.cluster`, seed
//! nodes in `redis.url`):
//!
//! - [`RedisTarget`]: where Redis is, as the settings name it.
//! - [`RedisConnection`]: one multiplexed, reconnecting connection (a
//!   `ConnectionManager` to a server, or a cluster connection that routes
//!   each command to the master owning its slot and follows `MOVED`/`ASK`).
//!   Clone it freely; it implements [`ConnectionLike`], so commands,
//!   pipelines and scripts run on it unchanged.
//! - [`RedisPool`]: what the bus backend and the operation store draw
//!   connections from: a deadpool of connections to one server (several
//!   sockets, no head-of-line blocking behind a slow script), or the cluster
//!   connection, which already keeps one multiplexed socket per master.
//!
//! What stays correct in a cluster is decided by the key layout, not here:
//! a script or transaction may only touch keys of one hash slot, and a
//! pipeline is sent to one node (redis-rs refuses one that spans slots).
//! `docs/redis-layout.md` ("Redis Cluster") lists every multi-key step.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use crate::error::BusError;

/// `url` as the redis crate should dial it: on `rediss://` with
/// `tls_insecure`, a self-signed certificate (Heroku Redis) is accepted.
pub fn dial_url(url: &str, tls_insecure: bool) -> String {
    if tls_insecure && url.starts_with("rediss://") && !url.contains('#') {
        format!("{url}#insecure")
    } else {
        url.to_string()
    }
}

/// Where Redis is: one server, or the seed nodes of a Redis Cluster (any
/// reachable master is enough; the others are discovered from it).
#[derive(Clone)]
pub struct RedisTarget {
    /// URLs as dialled (TLS leniency applied). Secret: may hold a password.
    nodes: Vec<String>,
    cluster: bool,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URLs: they carry the password.
        f.debug_struct("RedisTarget").field("nodes", &self.nodes.len()).field("cluster", &self.cluster).finish()
    }
}

impl RedisTarget {
    /// One server at `url` (`redis://` or `rediss://`).
    pub fn single(url: &str, tls_insecure: bool) -> Self {
        RedisTarget { nodes: vec![dial_url(url, tls_insecure)], cluster: false }
    }

    /// A Redis Cluster reached through `seeds`.
    pub fn cluster<S: AsRef<str>>(seeds: impl IntoIterator<Item = S>, tls_insecure: bool) -> Self {
        RedisTarget {
            nodes: seeds.into_iter().map(|url| dial_url(url.as_ref(), tls_insecure)).collect(),
            cluster: true,
        }
    }

    /// As the settings name it: `redis.url`, `redis.cluster`, `redis.tls_insecure`.
    pub fn from_settings(redis: &hookbus_config::RedisSettings) -> Self {
        if redis.cluster {
            Self::cluster(redis.nodes(), redis.tls_insecure)
        } else {
            Self::single(redis.url.expose(), redis.tls_insecure)
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The one server's URL as dialled (a secret: it may hold a password);
    /// `None` for a cluster.
    pub fn single_url(&self) -> Option<&str> {
        match self.nodes.as_slice() {
            [url] if !self.cluster => Some(url),
            _ => None,
        }
    }

    fn cluster_client(&self, timeout: Duration) -> Result<ClusterClient, redis::RedisError> {
        // The overall bound covers the client's own retries (a node that
        // is down, MOVED/ASK while slots move), so a call never outlasts
        // `timeout` and the caller's retry policy decides what happens next.
        ClusterClient::builder(self.nodes.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .overall_response_timeout(Some(timeout))
            .build()
    }
}

/// A multiplexed, reconnecting connection to a [`RedisTarget`]. Cheap to
/// clone; clones share the socket(s).
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, so a process starts while the
/// cluster is down and connects once it answers (as `ConnectionManager`
/// does for one server). A failed attempt is retried by the next call.
struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn.get_or_try_init(|| self.client.get_async_connection()).await.cloned()
    }
}

impl RedisConnection {
    /// Connects lazily: nothing is dialled until the first command, and a
    /// server (or cluster) that is down then is retried on later calls. Every
    /// call is bounded by `timeout`.
    pub fn open(target: &RedisTarget, timeout: Duration) -> Result<Self, BusError> {
        let inner = if target.cluster {
            let client = target.cluster_client(timeout).map_err(setup_error)?;
            Inner::Cluster(Arc::new(LazyCluster { client, conn: OnceCell::new() }))
        } else {
            let client = redis::Client::open(target.nodes[0].as_str()).map_err(setup_error)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            Inner::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(setup_error)?)
        };
        Ok(RedisConnection { inner })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }
}

/// Names the setting, never the URL (it carries the password).
fn setup_error(err: redis::RedisError) -> BusError {
    BusError::Setup(format!("redis.url (REDIS_URL): {err}"))
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(conn) => conn.req_packed_command(cmd),
            Inner::Cluster(lazy) => Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(lazy) => {
                Box::pin(async move { lazy.get().await?.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(conn) => conn.get_db(),
            Inner::Cluster(_) => 0,
        }
    }
}

/// Where the bus backend and the operation store take connections from.
#[derive(Clone)]
pub enum RedisPool {
    /// One server: `size` connections, made lazily, with bounded waits.
    Single(Pool),
    /// A cluster: one shared connection, multiplexed per master.
    Cluster(RedisConnection),
}

/// A connection taken from a [`RedisPool`]; back in the pool when dropped.
pub enum PooledConnection {
    Single(deadpool_redis::Connection),
    Cluster(RedisConnection),
}

/// A pool of `size` connections to `target`, connecting lazily (a server
/// that is down now is retried on use), with bounded waits so a dead server
/// fails calls instead of hanging them. Every hookbus store that keeps its
/// own keys in Redis uses this.
pub fn pool(target: &RedisTarget, size: usize, call_timeout: Duration) -> Result<RedisPool, BusError> {
    if target.cluster {
        return Ok(RedisPool::Cluster(RedisConnection::open(target, call_timeout)?));
    }
    let mut config = Config::from_url(target.nodes[0].clone());
    config.pool = Some(PoolConfig {
        max_size: size,
        timeouts: Timeouts {
            wait: Some(call_timeout),
            create: Some(Duration::from_secs(3)),
            recycle: Some(Duration::from_secs(3)),
        },
        ..PoolConfig::default()
    });
    Ok(RedisPool::Single(config.create_pool(Some(Runtime::Tokio1)).map_err(|err| BusError::Setup(err.to_string()))?))
}

impl RedisPool {
    pub async fn get(&self) -> Result<PooledConnection, BusError> {
        match self {
            RedisPool::Single(pool) => {
                pool.get().await.map(PooledConnection::Single).map_err(|err| BusError::Pool(err.to_string()))
            }
            RedisPool::Cluster(conn) => Ok(PooledConnection::Cluster(conn.clone())),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisPool::Cluster(_))
    }
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            PooledConnection::Single(conn) => conn.req_packed_command(cmd),
            PooledConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            PooledConnection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            PooledConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PooledConnection::Single(conn) => conn.get_db(),
            PooledConnection::Cluster(conn) => conn.get_db(),
        }
    }
}
