//! The virtual LAN: real `lanswarm run` processes on separate "hosts" that
//! are Linux network namespaces joined by a bridge, so mDNS multicast stays
//! inside namespaces the test created and never touches the machine's own
//! network (see "The test LAN" in the design notes).
//!
//! ```text
//!   netns <tag>-lan:   br0 (bridge, multicast snooping off)
//!                       |  p0    |  p1    |  p2 ...
//!   netns <tag>-h0:   eth0 10.77.K.1/24, lo
//!   netns <tag>-h1:   eth0 10.77.K.2/24, lo
//!   ...
//! ```
//!
//! The shape follows garage's `tests/common/garage.rs`: a [`Lan`] owns the
//! namespaces, a temporary directory with one data directory, config and
//! log per host, and the node processes. Each node is started as
//! `ip netns exec <ns> lanswarm run --config <file>` (iproute2 execs the
//! binary, so the child's pid is the node's), with mDNS on, no bootstrap
//! peers, TCP on port 0 and its HTTP API on `127.0.0.1:7700` inside its own
//! namespace.
//!
//! The test process stays in the root namespace, which has no route into
//! the LAN. It reaches a node's API in two ways:
//! - [`Lan::api`]: raw HTTP over a TCP socket created by a short-lived
//!   thread that first joins the host's network namespace with `setns(2)`.
//!   A socket belongs to the namespace it was created in, so the exchange
//!   itself then runs on the calling thread. No extra dependency and no
//!   process per call, which matters for the storm test.
//! - [`Lan::cli`]: the real CLI, `ip netns exec <ns> lanswarm --api
//!   http://127.0.0.1:7700 ...`.
//!
//! Names are unique per run and per LAN (`lswt<pid>n<counter>`), every
//! LAN gets its own /24, and the network-facing interface names are fixed
//! because each lives in its own namespace. Everything is torn down in
//! `Drop`, on success and on panic: node processes are killed, any process
//! left in one of our namespaces is killed, and the namespaces are deleted
//! (which deletes their veths). Namespaces left behind by an earlier run
//! that was itself killed (its pid is gone) are swept when the first LAN of
//! a run is built. When a test panics, every node's log is printed.
//!
//! The namespace plumbing (bridge, veths, `setns`, teardown, sweeping) is
//! `lanswarm::sim::netns`, shared with the `lanswarm-sim` simulator; this
//! file adds the nodes, their configs and logs, and the faults.
//!
//! Without root (or without `ip`), [`LanBuilder::build`] prints
//! `SKIPPED (needs root for network namespaces): would have checked ...`
//! and returns `None`; with `CI=true` (set by `.ci/run`, which runs as
//! root) it fails the test instead.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use lanswarm::sim::netns::{self, connect_in, missing_privileges, sweep_stale, VirtualLan};
use serde_json::Value;

use super::{clean_env, eventually, http_on, output_within, BIN};

/// Port of every node's HTTP API, on loopback inside its namespace.
pub const API_PORT: u16 = 7700;
/// Prefix of every namespace these tests create.
const PREFIX: &str = "lswt";
/// How long a node may take to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Log filter of the nodes: enough to follow discovery, grants and expiry.
const LOG_LEVEL: &str = "info,lanswarm=debug";

/// Counter that makes each LAN of this process unique.
static NEXT_LAN: AtomicUsize = AtomicUsize::new(0);
/// Sweep of namespaces left behind by dead test runs, once per process.
static SWEEP: Once = Once::new();

/// A signal to send to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: a crash. The node gets no chance to say goodbye.
    Kill,
    /// SIGTERM: a clean shutdown (releases held leases, announces leaving).
    Term,
    /// SIGINT: as from Ctrl-C; also a clean shutdown.
    Int,
    /// SIGSTOP: freeze the process (it stays connected but silent).
    Stop,
    /// SIGCONT: resume a stopped process.
    Cont,
}

impl Signal {
    fn number(self) -> i32 {
        match self {
            Signal::Kill => 9,
            Signal::Term => 15,
            Signal::Int => 2,
            Signal::Stop => 19,
            Signal::Cont => 18,
        }
    }

    /// Whether the node is expected to exit on this signal.
    fn ends_it(self) -> bool {
        matches!(self, Signal::Kill | Signal::Term | Signal::Int)
    }
}

/// Say on stderr that a test is skipped, and what it would have checked.
/// Written to the process's stderr directly rather than with `eprintln!`,
/// which the test harness captures and hides for passing tests.
fn skipped(why: &str, checks: &str) {
    // CI runs as root: a virtual LAN it cannot make is a failure there,
    // never a silent pass.
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but no virtual LAN ({why}): cannot check {checks}");
    }
    let line = format!(
        "SKIPPED (needs root for network namespaces; {why}): would have checked {checks}\n"
    );
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Merge `over` into `base`: tables recursively, anything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Copy a directory tree.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Builds a [`Lan`]: one `host` call per host, each with its own extra
/// config.
pub struct LanBuilder {
    checks: String,
    /// Each host's extra config; `None` for a host that runs no node.
    hosts: Vec<Option<String>>,
}

impl LanBuilder {
    /// Add a host whose config is the default test config (see
    /// [`Lan::config_of`]) with `extra_toml` merged over it, table by
    /// table, so `"[lend]\nweight = 3"` changes only `lend.weight`.
    pub fn host(mut self, extra_toml: &str) -> Self {
        self.hosts.push(Some(extra_toml.to_owned()));
        self
    }

    /// Add a host that runs no node: a namespace with an address on the
    /// LAN, for clients the test runs there itself (see
    /// [`lanswarm::sim::netns::enter`]). [`Lan::start_all`] skips it and
    /// [`Lan::start`] refuses it.
    pub fn bare_host(mut self) -> Self {
        self.hosts.push(None);
        self
    }

    /// Add `n` hosts with the same extra config.
    pub fn hosts(mut self, n: usize, extra_toml: &str) -> Self {
        for _ in 0..n {
            self.hosts.push(Some(extra_toml.to_owned()));
        }
        self
    }

    /// Build the network and write every host's config, without starting
    /// any node. `None` (after printing why) where this cannot run.
    pub fn build(self) -> Option<Lan> {
        if let Some(why) = missing_privileges() {
            skipped(&why, &self.checks);
            return None;
        }
        SWEEP.call_once(|| {
            for ns in sweep_stale(PREFIX) {
                eprintln!("vlan: removed namespace {ns}, left behind by a dead test run");
            }
        });
        let k = NEXT_LAN.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}n{k}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()
            .expect("creating the LAN's temporary directory");
        let net = match VirtualLan::new(&tag, [10, 77, (k % 256) as u8]) {
            Ok(net) => net,
            Err(e) if e.contains("Operation not permitted") || e.contains("Permission denied") => {
                skipped(&e, &self.checks);
                return None;
            }
            Err(e) => panic!("building the virtual LAN: {e}"),
        };
        let mut lan = Lan {
            net,
            hosts: Vec::new(),
            dir,
        };
        for (i, extra) in self.hosts.into_iter().enumerate() {
            if let Err(e) = lan.add_host(i, extra) {
                panic!("adding host {i} to the virtual LAN: {e}");
            }
        }
        Some(lan)
    }

    /// [`build`](Self::build), then start every node and wait for their
    /// APIs.
    pub fn start(self) -> Option<Lan> {
        let mut lan = self.build()?;
        lan.start_all();
        Some(lan)
    }
}

/// One host of the LAN: a namespace, a directory and maybe a running node.
struct Host {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    extra_toml: String,
    /// Whether this host runs a node (false for a [`LanBuilder::bare_host`]).
    node: bool,
    child: Option<Child>,
    runs: u32,
}

/// A virtual LAN of network namespaces with a `lanswarm` node per host.
/// Hosts are numbered from 0 and named `h0`, `h1`, ...
pub struct Lan {
    /// The namespaces, deleted when this is dropped (after `Drop for Lan`
    /// has stopped the nodes).
    net: VirtualLan,
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
}

impl Lan {
    /// Start describing a LAN. `checks` says what the test checks; it is
    /// printed when the test has to be skipped.
    pub fn builder(checks: &str) -> LanBuilder {
        LanBuilder {
            checks: checks.to_owned(),
            hosts: Vec::new(),
        }
    }

    fn add_host(&mut self, i: usize, extra_toml: Option<String>) -> Result<(), String> {
        let k = self.net.add_host()?;
        assert_eq!(k, i, "hosts are added in order");
        let (ns, host_ip) = (self.net.host_ns(i).to_owned(), self.net.host_ip(i));
        let dir = self.dir.path().join(format!("h{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        self.hosts.push(Host {
            name: format!("h{i}"),
            ns,
            ip: host_ip,
            dir,
            node: extra_toml.is_some(),
            extra_toml: extra_toml.unwrap_or_default(),
            child: None,
            runs: 0,
        });
        Ok(())
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The node name of host `i` (`h<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    /// Host `i`'s address on the LAN.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].ip
    }

    /// Host `i`'s network namespace.
    pub fn netns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }

    /// Host `i`'s data directory (key and lease store).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.join("data")
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.join("node.toml")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.join("node.log")
    }

    /// The config host `i` runs with: mDNS on, no bootstrap peers, TCP on
    /// port 0 on every interface, API on `127.0.0.1:7700`, a 1 s
    /// heartbeat, a declared machine of 8 cores / 16 GiB / 100 GiB (no GPU
    /// probing) lending 4 cores, 8 GiB and 10 GiB, leases from 1 s, then
    /// the host's extra TOML merged over that.
    pub fn config_of(&self, i: usize) -> String {
        let h = &self.hosts[i];
        let base = format!(
            r#"
name = "{name}"
data_dir = "{data}"
[api]
listen = "127.0.0.1:{API_PORT}"
[network]
listen = ["/ip4/0.0.0.0/tcp/0"]
mdns = true
bootstrap = []
announce_interval = "1s"
[resources]
cpu_cores = 8
memory = "16GiB"
disk = "100GiB"
detect_gpus = false
[lend]
cpu_cores = 4
memory = "8GiB"
disk = "10GiB"
[leases]
min = "1s"
default = "30s"
[log]
level = "{LOG_LEVEL}"
"#,
            name = h.name,
            data = self.data_dir(i).display(),
        );
        let mut table: toml::Table = toml::from_str(&base).expect("base config is TOML");
        let extra: toml::Table = toml::from_str(&h.extra_toml)
            .unwrap_or_else(|e| panic!("extra config of {}: {e}\n{}", h.name, h.extra_toml));
        merge(&mut table, extra);
        toml::to_string(&table).expect("config serialises")
    }

    /// Replace host `i`'s extra config; it takes effect at its next
    /// (re)start.
    pub fn set_config(&mut self, i: usize, extra_toml: &str) {
        self.hosts[i].extra_toml = extra_toml.to_owned();
    }

    /// Copy host `from`'s data directory (identity key included) over host
    /// `to`'s, as a user copying a machine's state would. Neither node
    /// should be running.
    pub fn copy_data_dir(&self, from: usize, to: usize) {
        assert!(
            self.hosts[from].child.is_none() && self.hosts[to].child.is_none(),
            "stop both nodes before copying a data directory"
        );
        let _ = std::fs::remove_dir_all(self.data_dir(to));
        copy_tree(&self.data_dir(from), &self.data_dir(to))
            .unwrap_or_else(|e| panic!("copying h{from}'s data directory to h{to}: {e}"));
    }

    /// Spawn host `i`'s node without waiting for it.
    fn spawn(&mut self, i: usize) {
        assert!(self.hosts[i].node, "h{i} is a bare host: it runs no node");
        assert!(self.hosts[i].child.is_none(), "h{i} is already running");
        let config = self.config_of(i);
        std::fs::write(self.config_path(i), &config).expect("writing the node config");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("opening the node log");
        let h = &self.hosts[i];
        writeln!(
            log,
            "===== run {} of {} (netns {}, {}) =====",
            h.runs + 1,
            h.name,
            h.ns,
            h.ip
        )
        .expect("writing the node log");
        let err = log.try_clone().expect("cloning the log handle");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, BIN, "run", "--config"])
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        clean_env(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the node of {}: {e}", h.name));
        let h = &mut self.hosts[i];
        h.child = Some(child);
        h.runs += 1;
    }

    /// Wait until host `i`'s node answers `/healthz`.
    fn wait_ready(&mut self, i: usize) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = self.try_api(i, "GET", "/healthz", None) {
                return;
            }
            let h = &mut self.hosts[i];
            if let Some(child) = h.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    h.child = None;
                    panic!("the node of {} exited at start ({status})", h.name);
                }
            } else {
                panic!("the node of {} is not running", h.name);
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "the node of {} did not answer /healthz within {START_TIMEOUT:?}",
                    h.name
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Start host `i`'s node and wait for its API.
    pub fn start(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// Start every host's node that is not running (all at once), and wait
    /// for their APIs. Bare hosts are skipped.
    pub fn start_all(&mut self) {
        let idle: Vec<usize> = (0..self.len())
            .filter(|i| self.hosts[*i].node && self.hosts[*i].child.is_none())
            .collect();
        for &i in &idle {
            self.spawn(i);
        }
        for &i in &idle {
            self.wait_ready(i);
        }
    }

    /// Whether host `i`'s node process is running (reaps it if it exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        let h = &mut self.hosts[i];
        match h.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                h.child = None;
                false
            }
            None => false,
        }
    }

    /// Send `sig` to host `i`'s node. For SIGKILL, SIGTERM and SIGINT,
    /// wait for it to exit and return how it exited (after
    /// [`EXIT_TIMEOUT`] it is killed and the test fails).
    pub fn signal(&mut self, i: usize, sig: Signal) -> Option<ExitStatus> {
        let h = &mut self.hosts[i];
        let child = h
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", h.name));
        if let Err(e) = netns::signal(child.id(), sig.number()) {
            panic!("kill {sig:?} {}: {e}", h.name);
        }
        if !sig.ends_it() {
            return None;
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the node") {
                h.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                h.child = None;
                panic!("{} did not exit within {EXIT_TIMEOUT:?} of {sig:?}", h.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` host `i`'s node (a crash) and reap it.
    pub fn kill9(&mut self, i: usize) {
        self.signal(i, Signal::Kill);
    }

    /// Restart host `i`'s node with the same data directory and config
    /// (stopping it with SIGTERM first if it runs), and wait for its API.
    pub fn restart(&mut self, i: usize) {
        if self.is_running(i) {
            self.signal(i, Signal::Term);
        }
        self.start(i);
    }

    /// Take host `i`'s link to the bridge down: it is cut off from the LAN
    /// but keeps running.
    pub fn link_down(&self, i: usize) {
        self.net.link_down(i).unwrap();
    }

    /// Bring host `i`'s link back up.
    pub fn link_up(&self, i: usize) {
        self.net.link_up(i).unwrap();
    }

    /// Everything host `i`'s node has logged, over all its runs.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// One HTTP request to host `i`'s API, from inside its namespace.
    pub fn try_api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> io::Result<(u16, Value)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, API_PORT));
        let stream = connect_in(&self.hosts[i].ns, addr, Duration::from_secs(5))?;
        let body = body.map(|b| b.to_string());
        http_on(
            stream,
            &addr.to_string(),
            method,
            path,
            body.as_deref(),
            None,
        )
    }

    /// [`try_api`](Self::try_api), failing the test if the node cannot be
    /// reached.
    pub fn api(&self, i: usize, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_api(i, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.hosts[i].name))
    }

    /// `GET path` on host `i`, expecting 200.
    pub fn get(&self, i: usize, path: &str) -> Value {
        let (status, v) = self.api(i, "GET", path, None);
        assert_eq!(status, 200, "GET {path} on {}: {v}", self.hosts[i].name);
        v
    }

    /// `POST /api/v1/allocations` on host `i`.
    pub fn request(&self, i: usize, body: &Value) -> (u16, Value) {
        self.api(i, "POST", "/api/v1/allocations", Some(body))
    }

    /// `DELETE /api/v1/allocations/<id>` on host `i`.
    pub fn release(&self, i: usize, allocation_id: &str) -> (u16, Value) {
        self.api(
            i,
            "DELETE",
            &format!("/api/v1/allocations/{allocation_id}"),
            None,
        )
    }

    /// Host `i`'s `/api/v1/node`.
    pub fn node(&self, i: usize) -> Value {
        self.get(i, "/api/v1/node")
    }

    /// Host `i`'s `PeerId`.
    pub fn id(&self, i: usize) -> String {
        self.node(i)["id"]
            .as_str()
            .expect("node id is a string")
            .to_owned()
    }

    /// Host `i`'s `/api/v1/nodes`: itself first, then its view of the rest.
    pub fn nodes(&self, i: usize) -> Vec<Value> {
        self.get(i, "/api/v1/nodes")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Host `i`'s view of the node with id `id`, if it knows it.
    pub fn view_of(&self, i: usize, id: &str) -> Option<Value> {
        self.nodes(i).into_iter().find(|n| n["id"] == id)
    }

    /// Host `i`'s `/api/v1/allocations` (`held` and `granted`).
    pub fn allocations(&self, i: usize) -> Value {
        self.get(i, "/api/v1/allocations")
    }

    /// Run the CLI in host `i` against its node: `lanswarm --api
    /// http://127.0.0.1:7700 <args>`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let h = &self.hosts[i];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, BIN, "--api"])
            .arg(format!("http://127.0.0.1:{API_PORT}"))
            .args(args);
        clean_env(&mut cmd);
        output_within(&mut cmd, CLI_TIMEOUT)
            .unwrap_or_else(|e| panic!("lanswarm {} in {}: {e}", args.join(" "), h.name))
    }

    /// Start `program` with `args` in host `i`'s namespace (a helper the
    /// test needs there, such as the Ollama stand-in), with its output in
    /// `<name>.log` beside the node's. Killed when the LAN is dropped, with
    /// every other process left in its namespaces.
    pub fn spawn_in(&self, i: usize, name: &str, program: &str, args: &[&str]) -> Child {
        let h = &self.hosts[i];
        let log = std::fs::File::create(h.dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("creating {name}.log: {e}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        clean_env(&mut cmd);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {}: {e}", h.name))
    }

    /// Run the CLI with `--json` in host `i`: `Ok(stdout as JSON)` when it
    /// succeeds, `Err(stdout as JSON, or Null)` with the exit code and
    /// stderr logged when it fails.
    pub fn cli_json(&self, i: usize, args: &[&str]) -> Result<Value, Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(i, &all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        if out.status.success() {
            assert!(
                !v.is_null(),
                "lanswarm {} in {} printed no JSON: {stdout}\n{}",
                all.join(" "),
                self.hosts[i].name,
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(v)
        } else {
            Err(v)
        }
    }

    /// Poll until `check` is `Ok`; see [`eventually`].
    pub fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Result<T, String>,
    ) -> (T, Duration) {
        eventually(what, timeout, check)
    }

    /// Wait until every running host sees every other running host online
    /// (and nothing else). Returns how long that took.
    pub fn wait_converged(&mut self, timeout: Duration) -> Duration {
        let running: Vec<usize> = (0..self.len()).filter(|i| self.is_running(*i)).collect();
        let ids: BTreeMap<usize, String> = running.iter().map(|&i| (i, self.id(i))).collect();
        self.eventually("every host sees every other online", timeout, || {
            for &i in &running {
                let view = self.nodes(i);
                for (&j, id) in &ids {
                    let Some(n) = view.iter().find(|n| n["id"] == id.as_str()) else {
                        return Err(format!("h{i} does not know h{j}"));
                    };
                    if n["status"] != "online" {
                        return Err(format!("h{i} sees h{j} as {}", n["status"]));
                    }
                }
            }
            Ok(())
        })
        .1
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if panicking {
            for (i, h) in self.hosts.iter().enumerate().filter(|(_, h)| h.node) {
                let config = std::fs::read_to_string(self.config_path(i)).unwrap_or_default();
                eprintln!(
                    "----- {} (netns {}, {}), config:\n{}----- log of {}:\n{}----- end of {} -----",
                    h.name,
                    h.ns,
                    h.ip,
                    config,
                    h.name,
                    self.log(i),
                    h.name
                );
            }
        }
        // `self.net` deletes the namespaces when it is dropped, next.
    }
}
