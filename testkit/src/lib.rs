//! Test support shared by every crate's tests: real `redis-server` processes
//! on free loopback ports, so tests run in parallel, can kill and restart
//! their server, and never touch one somebody else started; and a headless
//! Chromium behind `chromedriver` for the admin page's browser test; and a
//! GitHub App's test key pair ([`github_app`]).

pub mod bench;
mod browser;
mod cluster;
pub mod github_app;

pub use browser::{ChromeDriver, BROWSER_HINT};
pub use cluster::RedisCluster;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to tell a person whose machine has no redis-server.
pub const INSTALL_HINT: &str =
    "redis-server is not on PATH; the tests need a real one: install it with `apt-get install redis-server`";

/// A redis-server owned by one test. Killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    /// Serving TLS only, with a self-signed certificate for `localhost`.
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a throwaway server (no persistence).
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server with `appendonly yes` and `appendfsync always`, so a
    /// restart keeps every acknowledged write.
    pub fn start_durable() -> RedisServer {
        Self::start_with(true)
    }

    /// Starts a throwaway server that speaks TLS only (as Heroku Redis
    /// does), with a self-signed certificate made by `openssl`: dial it
    /// with `redis.tls_insecure`.
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(made.is_ok_and(|status| status.success()), "openssl could not make a test certificate");
        RedisServer { port: 0, dir, aof: false, tls: true, child: None }.on_a_free_port()
    }

    fn start_with(aof: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        RedisServer { port: 0, dir, aof, tls: false, child: None }.on_a_free_port()
    }

    /// Starts it on a port free a moment ago. Tests run in parallel, and
    /// another process may take that port first (an outgoing connection,
    /// another test's server); the server then cannot listen and exits, and
    /// it starts again on another port.
    fn on_a_free_port(mut self) -> RedisServer {
        for _ in 0..5 {
            self.port = free_port();
            if self.try_spawn() {
                return self;
            }
        }
        panic!("redis-server could not listen on any of 5 free ports");
    }

    /// Starts redis-server on `self.port`; whether it came up there.
    fn try_spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        if self.tls {
            let file = |name: &str| self.dir.path().join(name);
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(file("cert.pem"))
                .arg("--tls-key-file")
                .arg(file("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(file("cert.pem"));
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--protected-mode")
            .arg("no")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(err) => panic!("cannot start redis-server: {err}"),
        };
        self.child = Some(child);
        self.wait_until_up()
    }

    /// Whether the server came up; `false` when it exited first (its port
    /// was taken). Only this server counts: one of another test that holds
    /// the port answers with another directory.
    fn wait_until_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let dir = self.dir.path().canonicalize().unwrap_or_else(|_| self.dir.path().to_path_buf());
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().is_ok_and(|status| status.is_some()) {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(mut conn) = redis::Client::open(self.dial()).and_then(|c| c.get_connection()) {
                let ours: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut conn);
                let ours = ours.is_ok_and(|answer| answer.get(1).is_some_and(|d| std::path::Path::new(d) == dir));
                // With AOF, the server answers LOADING until the file is read.
                if ours && redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return true;
                }
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// [`RedisServer::url`], accepting the self-signed certificate of a TLS server.
    fn dial(&self) -> String {
        if self.tls {
            format!("{}/#insecure", self.url())
        } else {
            self.url()
        }
    }

    /// The server's process id (to stop and continue it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A blocking connection for test assertions.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.dial()).and_then(|c| c.get_connection()).expect("connect to the test redis-server")
    }

    /// Kills the server (SIGKILL: no chance to save) and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (with AOF, the data
    /// comes back).
    pub fn restart(&mut self) {
        self.restart_after(Duration::ZERO);
    }

    /// Kills it, keeps it down for `down`, and starts it again: an outage
    /// longer than a heartbeat timeout.
    pub fn restart_after(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        assert!(self.try_spawn(), "redis-server could not listen on port {} again", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// Polls `check` every 10 ms until it returns true or `timeout` passes.
/// Returns whether it became true. For waiting on another process's effect,
/// where no event can be awaited directly.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The workspace's root directory (for fixtures).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}
