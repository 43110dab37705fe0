//! A real `lanswarm run` on loopback for the integration tests: a
//! temporary data directory and TOML config (mDNS off, the API on a free
//! port of 127.0.0.1), driven through its HTTP API and its CLI, stopped
//! with SIGTERM or killed. Its log goes to a file that is printed when a
//! test fails.
//!
//! ```ignore
//! let a = Daemon::start("first");
//! let b = Daemon::builder("second").bootstrap(&addr).token("t").start();
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{clean_env, http_on, output_within, BIN};

/// How long a node may take to answer `/healthz` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// How to configure a [`Daemon`]; [`DaemonBuilder::start`] starts it.
///
/// By default the node has 8 cores, 16 GiB, 100 GiB of disk and one
/// synthetic 24 GiB GPU, lends 4 cores, 8 GiB and 10 GiB, has no bootstrap
/// peer and no API token, and logs at `info,lanswarm=debug`.
#[must_use]
pub struct DaemonBuilder {
    name: String,
    bootstrap: Option<String>,
    token: Option<String>,
    gpu: bool,
    network: String,
    toml: String,
    log_filter: String,
}

impl DaemonBuilder {
    /// Bootstrap to this multiaddr.
    pub fn bootstrap(mut self, addr: &str) -> Self {
        self.bootstrap = Some(addr.to_owned());
        self
    }

    /// Require this bearer token on the API (`api.token`); the helpers
    /// and [`Daemon::cli`] send it.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// No synthetic GPU.
    pub fn without_gpu(mut self) -> Self {
        self.gpu = false;
        self
    }

    /// Lines added to the `[network]` section.
    pub fn network(mut self, lines: &str) -> Self {
        self.network.push_str(lines);
        self.network.push('\n');
        self
    }

    /// TOML appended to the end of the config (after `[lend]`).
    pub fn toml(mut self, extra: &str) -> Self {
        self.toml.push_str(extra);
        self.toml.push('\n');
        self
    }

    /// The node's `LANSWARM_LOG` filter.
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_owned();
        self
    }

    /// Write the config and start the node; returns once it answers
    /// `/healthz`.
    pub fn start(self) -> Daemon {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let token_line = self
            .token
            .as_ref()
            .map(|t| format!("token = {t:?}\n"))
            .unwrap_or_default();
        let gpu = if self.gpu {
            "[[resources.gpus]]\nname = \"Synthetic GPU\"\nmemory = \"24GiB\"\n"
        } else {
            ""
        };
        let config = format!(
            r#"
name = "{name}"
data_dir = "{data}"
[api]
listen = "127.0.0.1:{port}"
{token_line}[network]
listen = ["/ip4/127.0.0.1/tcp/0"]
mdns = false
bootstrap = [{bootstrap}]
{network}[resources]
cpu_cores = 8
memory = "16GiB"
disk = "100GiB"
detect_gpus = false
{gpu}[lend]
cpu_cores = 4
memory = "8GiB"
disk = "10GiB"
{extra}"#,
            name = self.name,
            data = dir.path().join("data").display(),
            bootstrap = self.bootstrap.map(|b| format!("{b:?}")).unwrap_or_default(),
            network = self.network,
            extra = self.toml,
        );
        std::fs::write(dir.path().join("node.toml"), config).expect("writing the config");
        let mut d = Daemon {
            child: None,
            name: self.name,
            addr: format!("127.0.0.1:{port}"),
            api: format!("http://127.0.0.1:{port}"),
            token: self.token,
            log: dir.path().join("node.log"),
            log_filter: self.log_filter,
            dir,
        };
        d.spawn();
        d
    }
}

/// A running `lanswarm run`, killed on drop; its log is printed if the
/// test is failing.
pub struct Daemon {
    child: Option<Child>,
    name: String,
    addr: String,
    api: String,
    token: Option<String>,
    log: PathBuf,
    log_filter: String,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// A node with the default config (see [`DaemonBuilder`]).
    pub fn builder(name: &str) -> DaemonBuilder {
        DaemonBuilder {
            name: name.to_owned(),
            bootstrap: None,
            token: None,
            gpu: true,
            network: String::new(),
            toml: String::new(),
            log_filter: "info,lanswarm=debug".to_owned(),
        }
    }

    /// Start a node with the default config.
    pub fn start(name: &str) -> Daemon {
        Daemon::builder(name).start()
    }

    /// Start `lanswarm run` on this node's config and wait for `/healthz`.
    fn spawn(&mut self) {
        let logf = std::fs::File::create(&self.log).expect("creating the log");
        let child = clean_env(&mut Command::new(BIN))
            .args(["run", "--config"])
            .arg(self.dir.path().join("node.toml"))
            .env("LANSWARM_LOG", &self.log_filter)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawning lanswarm");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, _)) = self.request("GET", "/healthz", None) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("lanswarm exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the stopped node again, with the same config and data
    /// directory (so the same identity and store).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.spawn();
    }

    /// The API's base URL, `http://127.0.0.1:PORT`.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// The API's socket address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The API token the node requires, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Everything the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One exchange with the API (with the node's token, if any).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<(u16, Value)> {
        let s = TcpStream::connect(&self.addr)?;
        http_on(s, &self.addr, method, path, body, self.token())
    }

    /// `GET path`: the status and the body as JSON.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `method path` with a JSON body: the status and the answer as JSON.
    pub fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.request(method, path, Some(body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The node's PeerId.
    pub fn id(&self) -> String {
        self.get("/api/v1/node").1["id"]
            .as_str()
            .expect("node id")
            .to_owned()
    }

    /// Run the CLI against this node (and its token), bounded in time.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        clean_env(&mut cmd).args(["--api", &self.api]).args(args);
        if let Some(t) = &self.token {
            cmd.env("LANSWARM_TOKEN", t);
        }
        output_within(&mut cmd, CLI_TIMEOUT).expect("running the CLI")
    }

    /// SIGTERM, and wait for the node to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running node");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(ok.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for lanswarm") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit after SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no release, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- log of node {} in {} -----\n{}\n-----",
                self.name,
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}
