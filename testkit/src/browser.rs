//! A headless Chromium for browser tests: `chromedriver` (Debian package
//! `chromium-driver`) on a free loopback port, driving `chromium` with the
//! flags a container needs. Missing binaries fail the test with the command
//! that installs them — a browser test never passes silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to tell a person whose machine has no Chromium.
pub const BROWSER_HINT: &str =
    "chromium and chromedriver are needed for the browser tests: install them with `apt-get install chromium chromium-driver`";

/// A chromedriver owned by one test. Killed when dropped.
pub struct ChromeDriver {
    port: u16,
    chromium: PathBuf,
    child: Child,
}

/// The first of `candidates` that exists, else one found on `PATH`.
fn find(candidates: &[&str], name: &str) -> Option<PathBuf> {
    candidates.iter().map(Path::new).find(|p| p.is_file()).map(Path::to_path_buf).or_else(|| {
        std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
    })
}

impl ChromeDriver {
    /// Starts chromedriver and waits until it answers. Panics with
    /// [`BROWSER_HINT`] when chromium or chromedriver is not installed.
    pub fn start() -> ChromeDriver {
        let driver = find(&["/usr/bin/chromedriver"], "chromedriver").unwrap_or_else(|| panic!("{BROWSER_HINT}"));
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"], "chromium")
            .unwrap_or_else(|| panic!("{BROWSER_HINT}"));
        let port = crate::free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}. {BROWSER_HINT}", driver.display()));
        let mut me = ChromeDriver { port, chromium, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("chromedriver exited at start ({status}). {BROWSER_HINT}");
            }
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// The WebDriver URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Session capabilities: headless Chromium that runs as root in a
    /// container without a GPU or a big /dev/shm.
    pub fn capabilities(&self) -> serde_json::Map<String, serde_json::Value> {
        let options = serde_json::json!({
            "binary": self.chromium.to_string_lossy(),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1000",
            ],
        });
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert("goog:chromeOptions".into(), options);
        caps
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
