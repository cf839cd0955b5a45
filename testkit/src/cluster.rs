//! A throwaway 3-master Redis Cluster: three `redis-server --cluster-enabled
//! yes` processes joined by `redis-cli --cluster create`, every slot
//! assigned, killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::INSTALL_HINT;

/// Masters in the test cluster: the smallest real cluster.
const MASTERS: usize = 3;
/// A node's cluster bus listens on its port plus this.
const BUS_PORT_OFFSET: u16 = 10_000;

/// A Redis Cluster owned by one test.
pub struct RedisCluster {
    ports: Vec<u16>,
    /// One per port, in the same order; `None` while a node is down.
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
    /// AOF with `appendfsync always`: a restarted node keeps every
    /// acknowledged write (and its slots, from its nodes file).
    durable: bool,
}

impl RedisCluster {
    /// Starts three masters, creates the cluster over them (no replicas) and
    /// returns once every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        Self::start_with(false)
    }

    /// Starts one whose masters keep an AOF (`appendfsync always`), so
    /// [`RedisCluster::restart_node`] loses nothing that was acknowledged.
    pub fn start_durable() -> RedisCluster {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let ports = cluster_ports(MASTERS);
        let mut cluster = RedisCluster { ports: ports.clone(), children: Vec::new(), dir, durable };
        for &port in &ports {
            let child = cluster.spawn_node(port);
            cluster.children.push(Some(child));
        }
        for &port in &ports {
            cluster.wait_for(port, "to answer PING", |conn| redis::cmd("PING").query::<String>(conn).is_ok());
        }
        let nodes: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let created = match created {
            Ok(output) => output,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli is not on PATH; install it with `apt-get install redis-tools` (it comes with redis-server)")
            }
            Err(err) => panic!("cannot run redis-cli --cluster create: {err}"),
        };
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_until_ok();
        cluster
    }

    fn spawn_node(&self, port: u16) -> Child {
        let node_dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            .arg("--cluster-config-file")
            .arg(node_dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&node_dir)
            .args(["--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        match cmd.spawn() {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(err) => panic!("cannot start redis-server: {err}"),
        }
    }

    /// Waits until every node reports `cluster_state:ok` and knows the
    /// others.
    pub fn wait_until_ok(&self) {
        for &port in &self.ports {
            self.wait_for(port, "to report cluster_state:ok", |conn| {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(conn).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains(&format!("cluster_known_nodes:{MASTERS}"))
            });
        }
    }

    /// SIGKILLs the master on `port` (no chance to save) and waits for it
    /// to die; its slots are unserved until [`RedisCluster::start_node`].
    pub fn kill_node(&mut self, port: u16) {
        let index = self.index_of(port);
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the master on `port` again with its nodes file (same id, same
    /// slots) and, when durable, its AOF; returns once the cluster is ok.
    pub fn start_node(&mut self, port: u16) {
        let index = self.index_of(port);
        assert!(self.children[index].is_none(), "node {port} is running");
        self.children[index] = Some(self.spawn_node(port));
        self.wait_until_ok();
    }

    fn index_of(&self, port: u16) -> usize {
        self.ports.iter().position(|&p| p == port).unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// One cluster shared by the tests of this process that run at the same
    /// time (a cluster is three servers; one per test would crowd a small CI
    /// machine). Tests keep apart by key prefix. Killed when the last user
    /// drops it; the next caller then starts a fresh one.
    pub fn shared() -> Arc<RedisCluster> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(RedisCluster::start());
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    fn wait_for(&self, port: u16, what: &str, mut ready: impl FnMut(&mut redis::Connection) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("redis://127.0.0.1:{port}");
        loop {
            if let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                if ready(&mut conn) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cluster node on port {port} did not come {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The masters' client ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Seed URLs, one per master, comma-separated: what `REDIS_URL` holds
    /// with `HOOKBUS_REDIS__CLUSTER=true`.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect()
    }

    /// A blocking cluster connection for test assertions (follows `MOVED`).
    pub fn client(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .and_then(|client| client.get_connection())
            .expect("connect to the test cluster")
    }

    /// A blocking connection to one master (for `CLUSTER` commands and
    /// checking where a key lives).
    pub fn node(&self, port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection())
            .expect("connect to a cluster node")
    }

    /// The master that serves `key`'s slot: the only one that answers a
    /// command on it instead of redirecting (`MOVED`).
    pub fn port_of(&self, key: &str) -> u16 {
        for &port in &self.ports {
            if redis::cmd("EXISTS").arg(key).query::<i64>(&mut self.node(port)).is_ok() {
                return port;
            }
        }
        panic!("no master serves the slot of {key}")
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> i64 {
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut self.node(self.ports[0])).expect("CLUSTER KEYSLOT")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` ports that are free now, each with its cluster bus port (+10000) free
/// and below 65536.
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    let mut held = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("local addr").port();
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else { continue };
        let Ok(bus_listener) = TcpListener::bind(("127.0.0.1", bus)) else { continue };
        if ports.iter().any(|&p| p == port || p + BUS_PORT_OFFSET == port || p == bus) {
            continue;
        }
        ports.push(port);
        // Held until all are chosen, so the next pick cannot land on them.
        held.push((listener, bus_listener));
    }
    ports
}
