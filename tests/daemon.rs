//! Tests against the real `lanswarm` binary: it is started with a temporary
//! data directory and config, driven through its HTTP API and its CLI, and
//! stopped with SIGTERM. Each node's log goes to a file that is printed
//! when a test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lanswarm");

/// A running `lanswarm run`, killed on drop; its log is printed if the
/// test is failing.
struct Daemon {
    child: Option<Child>,
    api: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    fn start(name: &str, bootstrap: Option<&str>, extra_toml: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                r#"
name = "{name}"
data_dir = "{data}"
[api]
listen = "127.0.0.1:{port}"
[network]
listen = ["/ip4/127.0.0.1/tcp/0"]
mdns = false
bootstrap = [{bootstrap}]
[resources]
cpu_cores = 8
memory = "16GiB"
disk = "100GiB"
detect_gpus = false
[[resources.gpus]]
name = "Synthetic GPU"
memory = "24GiB"
[lend]
cpu_cores = 4
memory = "8GiB"
disk = "10GiB"
{extra_toml}
"#,
                data = dir.path().join("data").display(),
                bootstrap = bootstrap.map(|b| format!("{b:?}")).unwrap_or_default(),
            ),
        )
        .unwrap();
        let log = dir.path().join("node.log");
        let mut d = Daemon {
            child: None,
            api: format!("http://127.0.0.1:{port}"),
            log,
            dir,
        };
        d.spawn(&config);
        d
    }

    fn spawn(&mut self, config: &Path) {
        let logf = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("LANSWARM_LOG", "info,lanswarm=debug")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawning lanswarm");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http("GET", &format!("{}/healthz", self.api), None) {
                if r.0 == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--api", &self.api])
            .args(args)
            .output()
            .unwrap()
    }

    fn get(&self, path: &str) -> (u16, Value) {
        http("GET", &format!("{}{}", self.api, path), None).unwrap()
    }

    fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        http(method, &format!("{}{}", self.api, path), Some(body)).unwrap()
    }

    /// SIGTERM, and wait for a clean exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("no exit after SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of node in {} -----\n{}\n-----",
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}

/// One blocking HTTP exchange with a node's API.
fn http(method: &str, url: &str, body: Option<&str>) -> std::io::Result<(u16, Value)> {
    lanswarm::sim::http::request(method, url, body)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_binary_allocates_through_the_api_and_the_cli_and_stops_on_sigterm() {
    let mut d = Daemon::start("solo", None, "");

    let (s, node) = d.get("/api/v1/node");
    assert_eq!(s, 200);
    assert_eq!(node["name"], "solo");
    assert_eq!(node["resources"]["lendable"]["cpu_cores"], 4);
    assert_eq!(node["resources"]["lendable"]["memory_mb"], 8192);
    assert_eq!(node["resources"]["gpus"][0]["name"], "Synthetic GPU");
    let peer_id = node["id"].as_str().unwrap().to_owned();

    // HTTP API.
    let (s, a) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 2, "memory_mb": 1024, "gpu_required": true, "gpu_memory_mb": 4096}, "timeout_secs": 60}"#,
    );
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["node_id"], peer_id.as_str());
    assert_eq!(a["allocated_resources"]["gpus"][0]["memory_mb"], 4096);
    let api_alloc = a["allocation_id"].as_str().unwrap().to_owned();

    // CLI, table and JSON.
    let out = d.cli(&[
        "request",
        "--cpu",
        "1",
        "--memory",
        "512MiB",
        "--gpus",
        "1",
        "--gpu-memory",
        "8GiB",
        "--strategy",
        "least-loaded",
        "--lease",
        "5m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("solo") && text.contains("512MiB"), "{text}");
    let out = d.cli(&["--json", "allocations"]);
    assert!(out.status.success());
    let all: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(all["held"].as_array().unwrap().len(), 2);
    assert_eq!(all["granted"].as_array().unwrap().len(), 2);
    let out = d.cli(&["nodes"]);
    assert!(stdout(&out).contains("solo *"), "{}", stdout(&out));
    let out = d.cli(&["status"]);
    assert!(stdout(&out).contains(&peer_id));

    // Strategy through the CLI, then the API.
    let out = d.cli(&["strategy", "round-robin"]);
    assert!(out.status.success());
    let (_, s_json) = d.get("/api/v1/strategy");
    assert_eq!(s_json["strategy"], "round-robin");

    // Free capacity reflects both grants.
    let (_, node) = d.get("/api/v1/node");
    assert_eq!(node["resources"]["free"]["cpu_cores"], 1);
    assert_eq!(
        node["resources"]["free"]["gpus"][0]["memory_mb"],
        24 * 1024 - 4096 - 8192
    );

    // Release through the CLI.
    let out = d.cli(&["release", &api_alloc]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, all) = d.get("/api/v1/allocations");
    assert_eq!(all["held"].as_array().unwrap().len(), 1);

    let status = d.terminate();
    assert!(status.success(), "exit {status}:\n{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("node stopped"), "{log}");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let d = Daemon::start("strict", None, "");
    let before = d.get("/api/v1/allocations").1;
    let node_before = d.get("/api/v1/node").1["resources"].clone();

    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/api/v1/allocations",
            "{not json",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"cpu_cores": -1}}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {}}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"cpu_cores": 1}, "timeout_secs": 0}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"cpu_cores": 1}, "bogus_field": 1}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"gpu_count": 100000}}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"cpus": 1}}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"cpu_cores": 64}}"#,
            503,
            "no_capacity",
        ),
        (
            "DELETE",
            "/api/v1/allocations/no-such-id",
            "",
            404,
            "unknown_allocation",
        ),
        (
            "GET",
            "/api/v1/allocations/no-such-id",
            "",
            404,
            "unknown_allocation",
        ),
        (
            "PUT",
            "/api/v1/strategy",
            r#"{"strategy": "fastest"}"#,
            400,
            "bad_request",
        ),
        ("GET", "/api/v1/nope", "", 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (s, v) = d.send(method, path, body);
        assert_eq!(s, *status, "{method} {path} {body}: {v}");
        assert_eq!(v["error"]["code"], *code, "{method} {path} {body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // The 503 explains who refused or was not eligible, and why.
    let (_, v) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 64}}"#,
    );
    let excluded = v["error"]["excluded"].as_array().unwrap();
    assert!(
        excluded[0]["why"].as_str().unwrap().contains("cpu_cores"),
        "{v}"
    );

    assert_eq!(d.get("/api/v1/allocations").1, before, "no state changed");
    assert_eq!(d.get("/api/v1/node").1["resources"], node_before);
    assert_eq!(d.get("/api/v1/strategy").1["strategy"], "least-loaded");

    // The CLI reports the same errors readably and exits non-zero.
    let out = d.cli(&["release", "no-such-id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-id"));
    let out = d.cli(&["request", "--memory", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}

#[test]
fn a_malformed_config_names_the_file_the_key_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[lend]\nmemory = \"lots\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml"), "{err}");
    assert!(err.contains("lend.memory"), "{err}");
    assert!(err.contains("lots"), "{err}");
}

#[test]
fn two_binaries_share_leases_and_the_identity_survives_a_restart() {
    let mut a = Daemon::start("first", None, "");
    let node = a.get("/api/v1/node").1;
    let id = node["id"].as_str().unwrap().to_owned();
    let addr = node["addresses"][0].as_str().unwrap().to_owned();
    let b = Daemon::start("second", Some(&addr), "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while d_nodes(&b) < 2 {
        assert!(
            Instant::now() < deadline,
            "b never saw a:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, alloc) = b.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 3}, "node_id": "first"}"#,
    );
    assert_eq!(s, 201, "{alloc}");
    assert_eq!(alloc["node_name"], "first");
    let granted = a.get("/api/v1/allocations").1["granted"].clone();
    assert_eq!(granted[0]["allocation_id"], alloc["allocation_id"]);
    assert_eq!(granted[0]["holder"], b.get("/api/v1/node").1["id"]);

    assert!(a.terminate().success());
    let config = a.dir.path().join("node.toml");
    a.spawn(&config);
    let node = a.get("/api/v1/node").1;
    assert_eq!(node["id"], id.as_str(), "same PeerId after restart");
    let granted = a.get("/api/v1/allocations").1["granted"].clone();
    assert_eq!(
        granted[0]["allocation_id"], alloc["allocation_id"],
        "lease kept"
    );
    assert_eq!(node["resources"]["free"]["cpu_cores"], 1);
}

fn d_nodes(d: &Daemon) -> usize {
    d.get("/api/v1/nodes").1.as_array().map_or(0, |a| a.len())
}
