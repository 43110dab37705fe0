//! The nodes of a simulation: N real `lanswarm run` processes, each with
//! its own data directory, config and log, reached through their HTTP
//! APIs.
//!
//! - Loopback: every node on `127.0.0.1` with mDNS off and its API on a
//!   free port. Node 0 starts first; the others get its address (from its
//!   `/api/v1/node`) as their only bootstrap peer.
//! - Netns (root): one host namespace per node on a private bridge
//!   (`lanswarm::sim::netns`), mDNS on, no bootstrap peers, every API on
//!   its namespace's `127.0.0.1:7700`.
//!
//! The declared hardware comes from [`PROFILES`], so a run does not depend
//! on the machine it runs on. Node processes get their own process group
//! (a Ctrl-C in the terminal reaches only the simulator, which stops them
//! in order) and die with the simulator if it is killed
//! (`PR_SET_PDEATHSIG`). [`Cluster`]'s `Drop` stops the nodes, deletes the
//! namespaces and removes the run directory, on every path out of `main`.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lanswarm::handle::NodeInfo;
use lanswarm::model::Capacity;
use lanswarm::sim::{http, netns};
use serde_json::Value;

/// API port of every node inside its own namespace (netns mode).
const NETNS_API_PORT: u16 = 7700;
/// Prefix of the namespaces of this tool: `lsws<pid>n<k>-...`.
const NETNS_PREFIX: &str = "lsws";
/// Run directories are `<temp>/lanswarm-sim-<pid>-<ms since epoch>`.
const RUN_DIR_PREFIX: &str = "lanswarm-sim-";
/// Marks a run directory kept on purpose (`--keep`, or a failed run).
const KEPT_MARK: &str = "KEPT";
/// How long a node may take to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting to a node's API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one HTTP exchange. An allocation walks at most 8 candidates,
/// each with a 5 s request timeout, so keep this above 40 s.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// How the nodes are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// 127.0.0.1, mDNS off, bootstrap from node 0 (no privileges needed).
    Loopback,
    /// A virtual LAN of network namespaces, mDNS on, no bootstrap (root).
    Netns,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Loopback => "loopback",
            Mode::Netns => "netns",
        })
    }
}

/// A kind of machine: what it declares and lends. Node `i` is
/// `PROFILES[i % PROFILES.len()]`.
pub struct Profile {
    pub name: &'static str,
    /// `[resources]`, `[lend]`, `[location]` and `[models]` of its config.
    toml: &'static str,
}

/// The machines of a simulated office: a GPU workstation, a big server
/// without GPUs, a laptop lending little, and a small GPU box. They differ
/// in every dimension, in weight and in place, so every strategy has
/// something to choose between, and the laptop fills up quickly.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "workstation",
        toml: r#"
[resources]
cpu_cores = 16
memory = "64GiB"
disk = "1TiB"
detect_gpus = false
[[resources.gpus]]
name = "Synthetic A100"
memory = "40GiB"
[[resources.gpus]]
name = "Synthetic T4"
memory = "16GiB"
[resources.custom]
db-connections = 8
[lend]
cpu_cores = 12
memory = "48GiB"
disk = "200GiB"
weight = 3
[location]
zone = "office"
latitude = 52.52
longitude = 13.40
[models]
served = ["llama3", "mistral"]
"#,
    },
    Profile {
        name: "server",
        toml: r#"
[resources]
cpu_cores = 32
memory = "128GiB"
disk = "2TiB"
detect_gpus = false
[resources.custom]
db-connections = 20
[lend]
cpu_cores = 24
memory = "96GiB"
disk = "500GiB"
weight = 5
[location]
zone = "datacenter"
latitude = 52.39
longitude = 13.06
"#,
    },
    Profile {
        name: "laptop",
        toml: r#"
[resources]
cpu_cores = 8
memory = "16GiB"
disk = "500GiB"
detect_gpus = false
[lend]
cpu_cores = 2
memory = "4GiB"
disk = "20GiB"
weight = 1
[location]
zone = "office"
latitude = 52.23
longitude = 21.01
"#,
    },
    Profile {
        name: "gpu-box",
        toml: r#"
[resources]
cpu_cores = 8
memory = "32GiB"
disk = "500GiB"
detect_gpus = false
[[resources.gpus]]
name = "Synthetic RTX 4090"
memory = "24GiB"
[resources.custom]
licenses = 2
[lend]
cpu_cores = 6
memory = "24GiB"
disk = "100GiB"
weight = 2
[location]
zone = "lab"
latitude = 48.14
longitude = 11.58
[models]
served = ["llama3"]
"#,
    },
];

/// Where a node's API is.
#[derive(Clone, Debug)]
enum Reach {
    /// `127.0.0.1:<port>` in our own namespace.
    Loopback(u16),
    /// `127.0.0.1:7700` inside this network namespace.
    Netns(String),
}

/// One node process.
pub struct SimNode {
    /// Its name, `n<i>`.
    pub name: String,
    /// Its profile's name.
    pub profile: &'static str,
    /// Its `PeerId`, once it answered.
    pub id: String,
    /// What it lends, from its own `/api/v1/node`.
    pub lendable: Capacity,
    reach: Reach,
    dir: PathBuf,
    child: Option<Child>,
}

impl SimNode {
    /// Open a connection to the node's API.
    fn connect(&self) -> io::Result<TcpStream> {
        match &self.reach {
            Reach::Loopback(port) => TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                CONNECT_TIMEOUT,
            ),
            Reach::Netns(ns) => netns::connect_in(
                ns,
                SocketAddr::from((Ipv4Addr::LOCALHOST, NETNS_API_PORT)),
                CONNECT_TIMEOUT,
            ),
        }
    }

    /// One HTTP call on the node's API, each read and write bounded by
    /// `timeout`. The duration is that of the exchange on the open
    /// connection (request written to answer read), not of opening it.
    pub fn call_timed(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> io::Result<(u16, Value, Duration)> {
        let s = self.connect()?;
        let t = Instant::now();
        let (status, v) = http::exchange(s, "127.0.0.1", method, path, body, None, timeout)?;
        Ok((status, v, t.elapsed()))
    }

    /// One HTTP call on the node's API, bounded by [`HTTP_TIMEOUT`].
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, Value)> {
        self.call_timed(method, path, body, HTTP_TIMEOUT)
            .map(|(s, v, _)| (s, v))
    }

    /// `GET path`, expecting 200.
    pub fn get(&self, path: &str) -> Result<Value, String> {
        match self.call("GET", path, None) {
            Ok((200, v)) => Ok(v),
            Ok((s, v)) => Err(format!("GET {path} on {}: {s} {v}", self.name)),
            Err(e) => Err(format!("GET {path} on {}: {e}", self.name)),
        }
    }

    /// The node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Whether the process runs; `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => None,
            Some(Ok(Some(st))) => Some(st),
            Some(Err(_)) | None => Some(ExitStatus::default()),
        }
    }
}

/// What to start.
pub struct ClusterOpts {
    pub mode: Mode,
    pub nodes: usize,
    pub bin: PathBuf,
    pub keep: bool,
    /// Log filter of the nodes.
    pub log: String,
}

/// The running nodes, the run directory and, in netns mode, the LAN.
pub struct Cluster {
    pub mode: Mode,
    pub nodes: Vec<SimNode>,
    /// Holds `n<i>/{node.toml,node.log,data}`.
    pub dir: PathBuf,
    keep: bool,
    net: Option<netns::VirtualLan>,
}

impl Cluster {
    /// Create the run directory (and the LAN), start every node and wait
    /// until each answers `/healthz` and reports its id and capacity.
    /// `stop` aborts the wait (Ctrl-C).
    pub fn start(opts: &ClusterOpts, stop: &AtomicBool) -> anyhow::Result<Cluster> {
        if !opts.bin.is_file() {
            bail!(
                "no lanswarm binary at {} (build it with `cargo build`, or pass --bin)",
                opts.bin.display()
            );
        }
        if opts.mode == Mode::Netns {
            if let Some(why) = netns::missing_privileges() {
                bail!("--mode netns needs root and iproute2 for network namespaces: {why}");
            }
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        sweep_dead_run_dirs();
        let dir =
            std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the run directory {}", dir.display()))?;
        let mut cluster = Cluster {
            mode: opts.mode,
            nodes: Vec::new(),
            dir,
            keep: opts.keep,
            net: None,
        };
        match opts.mode {
            Mode::Loopback => cluster.start_loopback(opts, stop)?,
            Mode::Netns => cluster.start_netns(opts, stop)?,
        }
        for i in 0..cluster.nodes.len() {
            let info: NodeInfo = serde_json::from_value(
                cluster.nodes[i]
                    .get("/api/v1/node")
                    .map_err(anyhow::Error::msg)?,
            )
            .context("parsing /api/v1/node")?;
            let n = &mut cluster.nodes[i];
            n.id = info.id.0;
            n.lendable = info.resources.lendable;
        }
        Ok(cluster)
    }

    fn start_loopback(&mut self, opts: &ClusterOpts, stop: &AtomicBool) -> anyhow::Result<()> {
        // Take every port at once, so no two nodes get the same one.
        let listeners: Vec<TcpListener> = (0..opts.nodes)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<io::Result<_>>()
            .context("finding free ports for the APIs")?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<_>>()?;
        drop(listeners);
        for (i, port) in ports.into_iter().enumerate() {
            self.add_node(i, Reach::Loopback(port));
        }
        self.spawn(0, opts, &[])?;
        self.wait_ready(0, stop)?;
        let addrs: NodeInfo = serde_json::from_value(
            self.nodes[0]
                .get("/api/v1/node")
                .map_err(anyhow::Error::msg)?,
        )?;
        let boot = addrs
            .addresses
            .iter()
            .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            .cloned()
            .with_context(|| {
                format!(
                    "n0 listens on no 127.0.0.1 TCP address: {:?}",
                    addrs.addresses
                )
            })?;
        for i in 1..opts.nodes {
            self.spawn(i, opts, std::slice::from_ref(&boot))?;
        }
        for i in 1..opts.nodes {
            self.wait_ready(i, stop)?;
        }
        Ok(())
    }

    fn start_netns(&mut self, opts: &ClusterOpts, stop: &AtomicBool) -> anyhow::Result<()> {
        for ns in netns::sweep_stale(NETNS_PREFIX) {
            eprintln!("lanswarm-sim: removed namespace {ns}, left behind by a dead run");
        }
        let tag = netns::unique_tag(NETNS_PREFIX);
        let mut net = netns::VirtualLan::new(&tag, [10, 78, 0]).map_err(anyhow::Error::msg)?;
        let added = (0..opts.nodes).try_for_each(|_| net.add_host().map(drop));
        let hosts: Vec<String> = (0..net.len()).map(|i| net.host_ns(i).to_owned()).collect();
        // From here on, `teardown` deletes the namespaces.
        self.net = Some(net);
        added.map_err(anyhow::Error::msg)?;
        for (i, ns) in hosts.into_iter().enumerate() {
            self.add_node(i, Reach::Netns(ns));
        }
        for i in 0..opts.nodes {
            self.spawn(i, opts, &[])?;
        }
        for i in 0..opts.nodes {
            self.wait_ready(i, stop)?;
        }
        Ok(())
    }

    fn add_node(&mut self, i: usize, reach: Reach) {
        self.nodes.push(SimNode {
            name: format!("n{i}"),
            profile: PROFILES[i % PROFILES.len()].name,
            id: String::new(),
            lendable: Capacity::default(),
            reach,
            dir: self.dir.join(format!("n{i}")),
            child: None,
        });
    }

    /// The config of node `i`.
    fn config(&self, i: usize, opts: &ClusterOpts, bootstrap: &[String]) -> String {
        let n = &self.nodes[i];
        let (api, listen, mdns) = match &n.reach {
            Reach::Loopback(port) => (format!("127.0.0.1:{port}"), "/ip4/127.0.0.1/tcp/0", false),
            Reach::Netns(_) => (
                format!("127.0.0.1:{NETNS_API_PORT}"),
                "/ip4/0.0.0.0/tcp/0",
                true,
            ),
        };
        let bootstrap: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
        format!(
            r#"# node {i} of a lanswarm-sim run ({mode}), profile {profile}
name = "{name}"
data_dir = "{data}"
[api]
listen = "{api}"
[network]
listen = ["{listen}"]
mdns = {mdns}
bootstrap = [{bootstrap}]
announce_interval = "1s"
[leases]
min = "1s"
default = "30s"
[log]
level = "{log}"
{profile_toml}"#,
            mode = self.mode,
            profile = n.profile,
            name = n.name,
            data = n.dir.join("data").display(),
            bootstrap = bootstrap.join(", "),
            log = opts.log,
            profile_toml = PROFILES[i % PROFILES.len()].toml,
        )
    }

    fn spawn(&mut self, i: usize, opts: &ClusterOpts, bootstrap: &[String]) -> anyhow::Result<()> {
        let config = self.config(i, opts, bootstrap);
        let n = &mut self.nodes[i];
        std::fs::create_dir_all(&n.dir)?;
        let config_path = n.dir.join("node.toml");
        std::fs::write(&config_path, config)?;
        let log = File::create(n.log_path())?;
        let mut cmd = match &n.reach {
            Reach::Loopback(_) => Command::new(&opts.bin),
            Reach::Netns(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&opts.bin);
                c
            }
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LANSWARM_") {
                cmd.env_remove(k);
            }
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} for {}", opts.bin.display(), n.name))?;
        n.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize, stop: &AtomicBool) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let n = &mut self.nodes[i];
            if let Ok((200, _)) = n.call("GET", "/healthz", None) {
                return Ok(());
            }
            if let Some(st) = n.exited() {
                bail!(
                    "{} exited at start ({st}); its log:\n{}",
                    n.name,
                    tail(&n.log_path(), 40)
                );
            }
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "{} did not answer /healthz within {START_TIMEOUT:?}; its log:\n{}",
                    n.name,
                    tail(&n.log_path(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until every node sees every node online, with its full
    /// lendable capacity free. Returns how long that took.
    pub fn wait_converged(&self, timeout: Duration, stop: &AtomicBool) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let why = match self.converged() {
                Ok(()) => return Ok(start.elapsed()),
                Err(why) => why,
            };
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            if start.elapsed() > timeout {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn converged(&self) -> Result<(), String> {
        for viewer in &self.nodes {
            let view: Vec<NodeInfo> = serde_json::from_value(viewer.get("/api/v1/nodes")?)
                .map_err(|e| format!("/api/v1/nodes of {}: {e}", viewer.name))?;
            for n in &self.nodes {
                let Some(seen) = view.iter().find(|v| v.id.0 == n.id) else {
                    return Err(format!("{} does not know {}", viewer.name, n.name));
                };
                if !seen.status.usable() {
                    return Err(format!(
                        "{} sees {} as {:?}",
                        viewer.name, n.name, seen.status
                    ));
                }
                if seen.resources.free != n.lendable {
                    return Err(format!(
                        "{} does not see all of {} free yet",
                        viewer.name, n.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Stop every node: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    /// Idempotent.
    pub fn stop_nodes(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = &n.child {
                let _ = netns::signal(c.id(), 15);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for n in &mut self.nodes {
            let Some(mut c) = n.child.take() else {
                continue;
            };
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        eprintln!("lanswarm-sim: {} ignored SIGTERM; killing it", n.name);
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Stop the nodes, delete the namespaces, and remove the run directory
    /// unless it is to be kept. Idempotent; `Drop` calls it too.
    pub fn teardown(&mut self) {
        self.stop_nodes();
        if let Some(mut net) = self.net.take() {
            for e in net.destroy() {
                eprintln!("lanswarm-sim: teardown: {e}");
            }
        }
        if self.keep {
            let _ = std::fs::write(self.dir.join(KEPT_MARK), "kept on purpose\n");
            return;
        }
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("lanswarm-sim: removing {}: {e}", self.dir.display());
            }
        }
    }

    /// Keep the run directory (node configs, logs, data) after teardown.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Remove the run directories of earlier runs that were killed before
/// they could clean up (their pid is gone and they were not kept on
/// purpose).
fn sweep_dead_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(RUN_DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = e.path();
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && !path.join(KEPT_MARK).exists()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Make the child get SIGTERM when the simulator dies, even by SIGKILL,
/// so no node outlives it (Linux `PR_SET_PDEATHSIG`; it survives the exec
/// of `ip netns exec`).
fn die_with_parent(cmd: &mut Command) {
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGTERM: std::ffi::c_ulong = 15;
    extern "C" {
        fn prctl(option: i32, ...) -> i32;
    }
    // SAFETY: the closure runs in the child between fork and exec and
    // only makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
