//! The private swarm (`network.swarm_key`) with the real binary:
//! `lanswarm keygen` writes a key a node accepts, a bad key stops
//! `lanswarm run` before it touches anything, and on a virtual LAN
//! (`tests/common/vlan.rs`, needs root) nodes with the same key work as
//! usual while nodes with another key or none never see the swarm. The
//! same isolation is also checked with in-process nodes on loopback, which
//! needs no root.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lanswarm::handle::AllocationRequest;
use lanswarm::net::node::{self, NodeConfig, StartError};
use libp2p::pnet::PreSharedKey;
use serde_json::{json, Value};

use common::vlan::Lan;
use common::{clean_env, eventually, http_on, output_within, BIN};

/// Bound on discovery and convergence on the virtual LAN.
const CONVERGE: Duration = Duration::from_secs(30);
/// How long nodes without the key are watched for any sign of the swarm,
/// after the keyed nodes found each other. mDNS queries every 3 s (TTL
/// 6 s), so this spans several discovery rounds and redials.
const WATCH: Duration = Duration::from_secs(10);
/// How long a CLI call or a failing `lanswarm run` may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

fn keygen(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("keygen").args(args);
    clean_env(&mut cmd);
    output_within(&mut cmd, CMD_TIMEOUT).expect("running lanswarm keygen")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The value after `label` on the line that has it.
fn after<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
        .trim()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on a node's API on loopback.
fn get(port: u16, path: &str) -> std::io::Result<(u16, Value)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    http_on(s, &addr.to_string(), "GET", path, None, None)
}

/// A `lanswarm run` killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config in `dir` for a node with its data in `dir/data`, mDNS off and
/// the API on `port`, plus `network` lines.
fn write_config(dir: &Path, port: u16, network: &str) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "private"
data_dir = "{data}"
[api]
listen = "127.0.0.1:{port}"
[network]
mdns = false
{network}
[resources]
cpu_cores = 4
memory = "8GiB"
disk = "10GiB"
detect_gpus = false
"#,
            data = dir.join("data").display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn keygen_writes_a_private_key_that_a_node_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Default place: swarm.key in the data directory (created).
    let out = keygen(&["--data-dir", data.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let path = data.join("swarm.key");
    assert_eq!(
        after(&stdout, "wrote a new swarm key to"),
        format!("{} (mode 0600)", path.display())
    );
    #[cfg(unix)]
    assert_eq!(mode_of(&path), 0o600);
    let key = lanswarm::swarm_key::load(&path).expect("keygen's file loads");
    let fingerprint = lanswarm::swarm_key::fingerprint(&key);
    assert_eq!(after(&stdout, "fingerprint:"), fingerprint);
    let line = format!("swarm_key = \"{}\"", path.display());
    assert_eq!(
        after(&stdout, "swarm_key ="),
        line["swarm_key =".len()..].trim()
    );
    let secret = std::fs::read_to_string(&path).unwrap();
    let hex = secret.lines().nth(2).unwrap();
    assert!(!stdout.contains(hex), "keygen must not print the key");

    // An existing key is never replaced without --force.
    let out = keygen(&["--data-dir", data.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);

    let out = keygen(&["--data-dir", data.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let replaced = lanswarm::swarm_key::load(&path).unwrap();
    assert_ne!(replaced, key);
    #[cfg(unix)]
    assert_eq!(mode_of(&path), 0o600);

    // --out, with --json.
    let other = dir.path().join("other.key");
    let out = keygen(&["--json", "--out", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"], other.display().to_string());
    let other_key = lanswarm::swarm_key::load(&other).unwrap();
    assert_eq!(
        v["fingerprint"],
        lanswarm::swarm_key::fingerprint(&other_key)
    );
    assert_eq!(
        v["config_line"],
        format!("swarm_key = \"{}\"", other.display())
    );

    // A node accepts it: a relative path resolves against the config's
    // directory, the default listen is TCP only, the fingerprint (and never
    // the key) is logged.
    let port = free_port();
    let config = write_config(dir.path(), port, "swarm_key = \"other.key\"");
    let log = dir.path().join("node.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("LANSWARM_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    clean_env(&mut cmd);
    let mut node = Running(cmd.spawn().expect("spawning lanswarm run"));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the node answers /healthz", CMD_TIMEOUT, || {
        if let Ok(Some(status)) = node.0.try_wait() {
            panic!("lanswarm run exited ({status}):\n{}", log_text());
        }
        match get(port, "/healthz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (status, me) = get(port, "/api/v1/node").unwrap();
    assert_eq!(status, 200, "{me}");
    let addrs = me["addresses"].as_array().expect("addresses").clone();
    assert!(!addrs.is_empty(), "{me}");
    assert!(
        addrs.iter().all(|a| {
            let a = a.as_str().unwrap_or_default();
            a.contains("/tcp/") && !a.contains("quic") && !a.contains("/udp/")
        }),
        "a private node listens on TCP only: {addrs:?}"
    );
    let logged = log_text();
    assert!(
        logged.contains("private swarm") && logged.contains(v["fingerprint"].as_str().unwrap()),
        "the fingerprint is logged:\n{logged}"
    );
    let other_hex = std::fs::read_to_string(&other).unwrap();
    assert!(
        !logged.contains(other_hex.lines().nth(2).unwrap()),
        "the key is never logged"
    );
    drop(node);
}

/// Run `lanswarm run` with `config` and expect it to fail at start.
fn run_fails(config: &Path, extra: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config).args(extra);
    clean_env(&mut cmd);
    let out = output_within(&mut cmd, CMD_TIMEOUT).expect("lanswarm run exits");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "lanswarm run should fail:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn a_bad_swarm_key_stops_the_node_with_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let key = dir.path().join("swarm.key");
    let good = lanswarm::swarm_key::generate();
    let good_text = lanswarm::swarm_key::to_file_text(&good);
    let hex = good_text.lines().nth(2).unwrap().to_owned();
    let config = write_config(
        dir.path(),
        port,
        &format!("swarm_key = \"{}\"", key.display()),
    );
    let data = dir.path().join("data");
    let cases: Vec<(String, u32, &str)> = vec![
        (
            "/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n".into(),
            0o600,
            "line 2 must be \"/base16/\"",
        ),
        (
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", &hex[..40]),
            0o600,
            "line 3 must be 64 hexadecimal digits",
        ),
        (
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}zz\n", &hex[..62]),
            0o600,
            "character 63 is not a hexadecimal digit",
        ),
        (
            "hello\n".into(),
            0o600,
            "line 1 must be \"/key/swarm/psk/1.0.0/\"",
        ),
        (good_text.clone(), 0o644, "readable by every user"),
    ];
    for (content, mode, says) in cases {
        std::fs::write(&key, &content).unwrap();
        #[cfg(unix)]
        chmod(&key, mode);
        let _ = mode;
        let stderr = run_fails(&config, &[]);
        eprintln!("{stderr}");
        assert!(
            stderr.contains(&key.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(stderr.contains(says), "says {says:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: network.swarm_key", config.display())),
            "names the config and the key: {stderr}"
        );
        assert!(
            !stderr.contains(&hex[..16]),
            "never prints the key: {stderr}"
        );
        assert!(!data.exists(), "nothing was written to the data directory");
    }

    std::fs::remove_file(&key).unwrap();
    let stderr = run_fails(&config, &[]);
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(stderr.contains("lanswarm keygen"), "{stderr}");
    assert!(!data.exists());

    // A good key with QUIC is a config error, with file, line and key.
    lanswarm::swarm_key::write(&key, &good, false).unwrap();
    let quic = write_config(
        dir.path(),
        port,
        &format!(
            "swarm_key = \"{}\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"]",
            key.display()
        ),
    );
    let stderr = run_fails(&quic, &[]);
    assert!(
        stderr.contains(&format!("{}:9:", quic.display()))
            && stderr.contains("network.listen[1]: QUIC cannot be used with network.swarm_key"),
        "{stderr}"
    );
    // The same through a flag.
    let config = write_config(
        dir.path(),
        port,
        &format!("swarm_key = \"{}\"", key.display()),
    );
    let stderr = run_fails(&config, &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
    assert!(
        stderr.contains("network.listen[0]: QUIC cannot be used"),
        "{stderr}"
    );
    assert!(!data.exists());
}

/// A node started in this process: loopback TCP, no mDNS.
struct InProcess {
    node: lanswarm::Node,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(name: &str, key: Option<PreSharedKey>, bootstrap: &[String]) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let capacity = lanswarm::model::Capacity {
            cpu_cores: 4,
            memory_mb: 4096,
            disk_mb: 1024,
            ..Default::default()
        };
        let mut cfg = NodeConfig::for_test(name, capacity, dir.path().join("state.redb"));
        cfg.swarm_key = key;
        cfg.bootstrap = bootstrap.iter().map(|a| a.parse().unwrap()).collect();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (node, task) = node::start(cfg, shutdown.clone()).await.unwrap();
        InProcess {
            node,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn known(&self) -> usize {
        self.node.nodes().await.map(|n| n.len()).unwrap_or(0)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_only_peers_with_the_key_connect_and_quic_is_refused() {
    let key_a = lanswarm::swarm_key::generate();
    let key_b = lanswarm::swarm_key::generate();
    let a0 = InProcess::start("a0", Some(key_a), &[]).await;
    let addr = tokio::time::timeout(CONVERGE, async {
        loop {
            if let Some(a) = a0.node.listen_addrs().await.unwrap().into_iter().next() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a0 listens");
    assert!(addr.contains("/tcp/"), "{addr}");
    let boot = [addr];
    let a1 = InProcess::start("a1", Some(key_a), &boot).await;
    let b = InProcess::start("b", Some(key_b), &boot).await;
    let open = InProcess::start("open", None, &boot).await;

    tokio::time::timeout(CONVERGE, async {
        while a0.known().await < 2 || a1.known().await < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a0 and a1, with the same key, see each other");
    let req = AllocationRequest {
        required_resources: lanswarm::model::ResourceRequirements {
            cpu_cores: 1,
            ..Default::default()
        },
        node_id: Some(a0.node.id().0.clone()),
        ..Default::default()
    };
    let granted = a1
        .node
        .request(req.clone())
        .await
        .expect("a1 allocates on a0");
    assert_eq!(&granted.node_id, a0.node.id());
    for outsider in [&b, &open] {
        assert!(
            outsider.node.request(req.clone()).await.is_err(),
            "an outsider cannot allocate on a0"
        );
    }
    // Past one bootstrap redial (every 5 s), nobody else is seen.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        assert_eq!(a0.known().await, 2, "a0 sees only a1");
        assert_eq!(a1.known().await, 2, "a1 sees only a0");
        assert_eq!(b.known().await, 1, "a node with another key sees nobody");
        assert_eq!(open.known().await, 1, "a node without a key sees nobody");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in [a0, a1, b, open] {
        n.stop().await;
    }

    // QUIC cannot be used with a key: the node refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test("quic", Default::default(), dir.path().join("state.redb"));
    cfg.swarm_key = Some(key_a);
    cfg.listen
        .push("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    match node::start(cfg, shutdown).await {
        Err(e @ StartError::Listen { .. }) => {
            assert!(e.to_string().contains("TCP only"), "{e}")
        }
        Err(e) => panic!("expected a listen error, got {e}"),
        Ok(_) => panic!("a private node must refuse QUIC"),
    }
}

/// Lines of a node log saying a connection to `peer` was established.
fn connections_to(log: &str, peer: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" connected") && l.contains(&format!("peer={peer}")))
        .count()
}

/// The fingerprint a node logged at start, if any.
fn logged_fingerprint(log: &str) -> Option<String> {
    let at = log.find("fingerprint=")? + "fingerprint=".len();
    Some(
        log[at..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect(),
    )
}

#[test]
fn only_nodes_with_the_same_swarm_key_see_each_other_on_a_lan() {
    let keys = tempfile::tempdir().unwrap();
    let key_a = keys.path().join("a.key");
    let key_b = keys.path().join("b.key");
    lanswarm::swarm_key::write(&key_a, &lanswarm::swarm_key::generate(), false).unwrap();
    lanswarm::swarm_key::write(&key_b, &lanswarm::swarm_key::generate(), false).unwrap();
    let with = |k: &Path| format!("[network]\nswarm_key = \"{}\"", k.display());
    let Some(lan) = Lan::builder(
        "two nodes with swarm key A find each other by mDNS and allocate from each other, \
         while a node with key B and a node with no key never list, reach or get listed by anyone",
    )
    .host(&with(&key_a))
    .host(&with(&key_a))
    .host(&with(&key_b))
    .host("")
    .start() else {
        return;
    };
    let ids: Vec<String> = (0..4).map(|i| lan.id(i)).collect();

    // The pair with key A converges and allocates both ways.
    let (_, took) = lan.eventually("h0 and h1 see each other online", CONVERGE, || {
        for (i, j) in [(0, 1), (1, 0)] {
            let seen = lan
                .view_of(i, &ids[j])
                .ok_or(format!("h{i} does not know h{j}"))?;
            if seen["status"] != "online" {
                return Err(format!("h{i} sees h{j} as {}", seen["status"]));
            }
        }
        Ok(())
    });
    eprintln!("private pair converged in {took:?}");
    let request = |node: &str| {
        json!({
            "required_resources": { "cpu_cores": 1, "memory_mb": 0, "disk_mb": 0 },
            "node_id": node,
        })
    };
    for (i, j) in [(0, 1), (1, 0)] {
        let (status, a) = lan.request(i, &request(lan.name(j)));
        assert_eq!(status, 201, "h{i} allocates on h{j}: {a}");
        assert_eq!(a["node_id"], ids[j].as_str(), "{a}");
    }
    // Nor can the outsiders allocate on the pair.
    for i in [2, 3] {
        let (status, e) = lan.request(i, &request(&ids[0]));
        assert_ne!(status, 201, "h{i} must not reach h0: {e}");
    }

    // For a while, nobody outside the pair is listed anywhere.
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < WATCH {
        for i in 0..4 {
            let listed: Vec<String> = lan
                .nodes(i)
                .iter()
                .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            let want: Vec<&str> = match i {
                0 => vec![&ids[0], &ids[1]],
                1 => vec![&ids[1], &ids[0]],
                _ => vec![&ids[i]],
            };
            assert_eq!(
                listed.len(),
                want.len(),
                "h{i} lists {listed:?} after {:?}; expected only {want:?}",
                start.elapsed()
            );
            for id in want {
                assert!(listed.iter().any(|l| l == id), "h{i} lost {id}: {listed:?}");
            }
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("watched {polls} rounds over {WATCH:?}: the outsiders stayed alone");

    // The logs agree: the pair connected, nobody else ever did.
    let logs: Vec<String> = (0..4).map(|i| lan.log(i)).collect();
    assert!(connections_to(&logs[0], &ids[1]) > 0, "h0 connected to h1");
    for (i, log) in logs.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            let paired = matches!((i, j), (0, 1) | (1, 0));
            if i != j && !paired {
                assert_eq!(
                    connections_to(log, id),
                    0,
                    "h{i} must never connect to h{j}:\n{log}"
                );
            }
        }
    }
    // The outsiders did find the others by mDNS and dialled them, and the
    // transport handshake failed: the key, not a lack of discovery, kept
    // them out.
    for i in [2, 3] {
        assert!(
            logs[i].contains("found by mDNS") && logs[i].contains("outgoing connection failed"),
            "h{i} should have found peers by mDNS and failed to connect:\n{}",
            logs[i]
        );
    }
    // Same key, same fingerprint; another key, another; no key, none.
    let fp: Vec<Option<String>> = logs.iter().map(|l| logged_fingerprint(l)).collect();
    assert!(fp[0].is_some(), "h0 logs its key's fingerprint");
    assert_eq!(fp[0], fp[1]);
    assert!(fp[2].is_some() && fp[2] != fp[0]);
    assert_eq!(fp[3], None);
}
