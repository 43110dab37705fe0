//! Tests against the real `lanswarm` binary: it is started with a temporary
//! data directory and config, driven through its HTTP API and its CLI, and
//! stopped with SIGTERM. Each node's log goes to a file that is printed
//! when a test fails.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::daemon::Daemon;
use common::BIN;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_binary_allocates_through_the_api_and_the_cli_and_stops_on_sigterm() {
    let mut d = Daemon::start("solo");

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
    let d = Daemon::start("strict");
    let before = d.get("/api/v1/allocations").1;
    // What the node lends and has free; `cpu_usage_pct` is the host's own
    // reading (every 5 s) and moves by itself, so it is left out.
    let resources = |d: &Daemon| {
        let mut r = d.get("/api/v1/node").1["resources"].clone();
        if let Some(o) = r.as_object_mut() {
            o.remove("cpu_usage_pct");
        }
        r
    };
    let node_before = resources(&d);

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
            422,
            "unsatisfiable",
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
    // More than any node has in total is refused at once, not left to
    // wait, and the answer names what does not fit.
    let (_, v) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 64}}"#,
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cpu_cores") && message.contains("64"),
        "{v}"
    );

    assert_eq!(d.get("/api/v1/allocations").1, before, "no state changed");
    assert_eq!(resources(&d), node_before);
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
    let mut a = Daemon::start("first");
    let node = a.get("/api/v1/node").1;
    let id = node["id"].as_str().unwrap().to_owned();
    let addr = node["addresses"][0].as_str().unwrap().to_owned();
    let b = Daemon::builder("second").bootstrap(&addr).start();
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
    a.start_again();
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

/// A valid peer id of no running node.
fn stranger_id() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// Send each case and check its status and error code.
fn expect_errors(d: &Daemon, cases: &[(&str, String, String, u16, &str)]) {
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
}

#[test]
fn groups_access_and_pools_through_the_api_validate_input_and_change_nothing_on_error() {
    let d = Daemon::builder("hub")
        .toml("[labels]\ntier = \"gpu\"\n")
        .start();
    let me = d.get("/api/v1/node").1["id"].as_str().unwrap().to_owned();
    let other = stranger_id();
    let long = "x".repeat(65);

    // Groups.
    assert_eq!(d.get("/api/v1/groups"), (200, serde_json::json!([])));
    let (s, g) = d.send(
        "POST",
        "/api/v1/groups",
        r#"{"name": "lab", "max_members": 3}"#,
    );
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["name"], "lab");
    assert_eq!(g["max_members"], 3);
    assert_eq!(g["open"], false);
    assert_eq!(g["is_member"], true);
    assert_eq!(g["created_by"], me.as_str());
    assert_eq!(g["members"][0]["id"], me.as_str());
    assert_eq!(g["members"][0]["name"], "hub");
    let gid = g["id"].as_str().unwrap().to_owned();
    let (s, list) = d.get("/api/v1/groups");
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0], g);
    assert_eq!(d.get(&format!("/api/v1/groups/{gid}")), (200, g.clone()));
    assert_eq!(d.get("/api/v1/groups/lab"), (200, g.clone()));
    let (s, members) = d.get("/api/v1/groups/lab/members");
    assert_eq!(s, 200);
    assert_eq!(members, g["members"]);
    // Joining a group this node is in changes nothing.
    assert_eq!(
        d.send("POST", &format!("/api/v1/groups/{gid}/join"), ""),
        (200, g.clone())
    );

    let groups_before = d.get("/api/v1/groups").1;
    let post = |path: &str, body: &str| ("POST", path.to_owned(), body.to_owned());
    let bad_groups: Vec<(&str, String, String, u16, &str)> = [
        (
            post("/api/v1/groups", r#"{"name": "", "max_members": 3}"#),
            400,
            "bad_request",
        ),
        (
            post("/api/v1/groups", r#"{"name": "   ", "max_members": 3}"#),
            400,
            "bad_request",
        ),
        (
            post(
                "/api/v1/groups",
                &format!(r#"{{"name": "{long}", "max_members": 3}}"#),
            ),
            400,
            "bad_request",
        ),
        (
            post("/api/v1/groups", r#"{"name": "z", "max_members": 0}"#),
            400,
            "bad_request",
        ),
        (
            post("/api/v1/groups", r#"{"name": "z", "max_members": -1}"#),
            400,
            "bad_request",
        ),
        (
            post("/api/v1/groups", r#"{"name": "z"}"#),
            400,
            "bad_request",
        ),
        (
            post(
                "/api/v1/groups",
                r#"{"name": "z", "max_members": 3, "public": true}"#,
            ),
            400,
            "bad_request",
        ),
        (post("/api/v1/groups", "{not json"), 400, "bad_request"),
        (
            post("/api/v1/groups/no-such-group/join", ""),
            404,
            "not_found",
        ),
        (
            post("/api/v1/groups/no-such-group/leave", ""),
            404,
            "not_found",
        ),
        (
            post(
                "/api/v1/groups/no-such-group/invite",
                &format!(r#"{{"node": "{other}"}}"#),
            ),
            404,
            "not_found",
        ),
        (
            ("GET", "/api/v1/groups/no-such-group".into(), String::new()),
            404,
            "not_found",
        ),
        (
            (
                "GET",
                "/api/v1/groups/no-such-group/members".into(),
                String::new(),
            ),
            404,
            "not_found",
        ),
        (
            post(
                &format!("/api/v1/groups/{gid}/invite"),
                r#"{"node": "not-a-peer-id"}"#,
            ),
            400,
            "bad_request",
        ),
        (
            post(
                &format!("/api/v1/groups/{gid}/invite"),
                &format!(r#"{{"node": "{other}", "role": "admin"}}"#),
            ),
            400,
            "bad_request",
        ),
        (
            post(&format!("/api/v1/groups/{gid}/invite"), "{}"),
            400,
            "bad_request",
        ),
    ]
    .into_iter()
    .map(|((m, p, b), s, c)| (m, p, b, s, c))
    .collect();
    expect_errors(&d, &bad_groups);
    assert_eq!(d.get("/api/v1/groups").1, groups_before, "no group changed");

    // A good invitation is recorded.
    let (s, g2) = d.send(
        "POST",
        "/api/v1/groups/lab/invite",
        &format!(r#"{{"node": "{other}"}}"#),
    );
    assert_eq!(s, 200, "{g2}");
    assert_eq!(g2["invited"], serde_json::json!([other]));

    // Access policy.
    let (s, policy) = d.get("/api/v1/access");
    assert_eq!(s, 200);
    assert_eq!(
        policy,
        serde_json::json!({"allow_remote": true, "group_peers_only": false, "allow": [], "deny": []})
    );
    let (s, p) = d.send("PATCH", "/api/v1/access", r#"{"allow_remote": false}"#);
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["allow_remote"], false);
    assert_eq!(d.get("/api/v1/access"), (200, p.clone()));
    let (s, p) = d.send(
        "PATCH",
        "/api/v1/access",
        &format!(r#"{{"allow_add": ["{other}"], "group_peers_only": true}}"#),
    );
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["allow"], serde_json::json!([other]));
    assert_eq!(p["group_peers_only"], true);
    let policy_before = d.get("/api/v1/access").1;
    let patch = |body: String| ("PATCH", "/api/v1/access".to_owned(), body);
    let bad_access: Vec<(&str, String, String, u16, &str)> = [
        (
            patch(r#"{"allow_add": ["not-a-peer-id"]}"#.into()),
            400,
            "bad_request",
        ),
        (
            patch(r#"{"deny_remove": ["nope"]}"#.into()),
            400,
            "bad_request",
        ),
        // The same peer on both lists.
        (
            patch(format!(r#"{{"deny_add": ["{other}"]}}"#)),
            400,
            "bad_request",
        ),
        // A good change with a bad one in the same body: all or nothing.
        (
            patch(r#"{"allow_remote": true, "allow_add": ["bad id"]}"#.into()),
            400,
            "bad_request",
        ),
        (
            patch(r#"{"allow_remote": "yes"}"#.into()),
            400,
            "bad_request",
        ),
        (patch(r#"{"remote": false}"#.into()), 400, "bad_request"),
        (patch("[]".into()), 400, "bad_request"),
    ]
    .into_iter()
    .map(|((m, p, b), s, c)| (m, p, b, s, c))
    .collect();
    expect_errors(&d, &bad_access);
    assert_eq!(d.get("/api/v1/access").1, policy_before, "policy unchanged");
    let (s, p) = d.send(
        "PATCH",
        "/api/v1/access",
        &format!(
            r#"{{"allow_remote": true, "group_peers_only": false, "allow_remove": ["{other}"], "deny_add": ["{other}"]}}"#
        ),
    );
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["allow"], serde_json::json!([]));
    assert_eq!(p["deny"], serde_json::json!([other]));

    // Pools.
    assert_eq!(d.get("/api/v1/pools"), (200, serde_json::json!([])));
    let (s, mine) = d.send(
        "POST",
        "/api/v1/pools",
        &format!(r#"{{"name": "mine", "nodes": ["{me}"]}}"#),
    );
    assert_eq!(s, 201, "{mine}");
    assert_eq!(mine["name"], "mine");
    assert_eq!(mine["created_by"], me.as_str());
    assert_eq!(mine["members"][0]["id"], me.as_str());
    let cap = &mine["capacity"];
    assert_eq!(cap["nodes"], 1, "{mine}");
    assert_eq!(cap["cpu_cores_total"], 4, "{mine}");
    assert_eq!(cap["cpu_cores_free"], 4, "{mine}");
    assert_eq!(cap["memory_mb_total"], 8192, "{mine}");
    assert_eq!(cap["gpus_total"], 1, "{mine}");
    let (s, list) = d.get("/api/v1/pools");
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["capacity"]["nodes"], 1);
    assert_eq!(list[0]["capacity"]["cpu_cores_total"], 4);

    let (s, gpu) = d.send(
        "POST",
        "/api/v1/pools",
        r#"{"name": "gpu", "labels": {"tier": "gpu"}}"#,
    );
    assert_eq!(s, 201, "{gpu}");
    assert_eq!(gpu["selector"]["labels"]["tier"], "gpu");
    assert_eq!(gpu["capacity"]["nodes"], 1, "the node has tier=gpu: {gpu}");
    let (s, none) = d.send(
        "POST",
        "/api/v1/pools",
        r#"{"name": "cpu", "labels": {"tier": "cpu"}}"#,
    );
    assert_eq!(s, 201, "{none}");
    assert_eq!(none["capacity"]["nodes"], 0, "{none}");
    assert_eq!(d.get("/api/v1/pools/gpu"), (200, gpu.clone()));
    let (s, v) = d.send("DELETE", "/api/v1/pools/cpu", "");
    assert_eq!(s, 204, "{v}");
    assert_eq!(v, Value::Null, "204 has no body");
    assert_eq!(d.get("/api/v1/pools/cpu").0, 404);

    // A request scoped to a pool or a group lands on its nodes; an
    // unknown pool or group is a 404.
    for scope in [r#""pool": "mine""#, r#""group": "lab""#] {
        let (s, a) = d.send(
            "POST",
            "/api/v1/allocations",
            &format!(r#"{{"required_resources": {{"cpu_cores": 1}}, {scope}}}"#),
        );
        assert_eq!(s, 201, "{scope}: {a}");
        assert_eq!(a["node_id"], me.as_str());
        let id = a["allocation_id"].as_str().unwrap();
        assert_eq!(
            d.send("DELETE", &format!("/api/v1/allocations/{id}"), "").0,
            200
        );
    }

    let pools_before = d.get("/api/v1/pools").1;
    let allocs_before = d.get("/api/v1/allocations").1;
    let pool = |body: String| ("POST", "/api/v1/pools".to_owned(), body);
    let bad_pools: Vec<(&str, String, String, u16, &str)> = [
        (
            pool(format!(r#"{{"name": "", "nodes": ["{me}"]}}"#)),
            400,
            "bad_request",
        ),
        (
            pool(format!(r#"{{"name": "has space", "nodes": ["{me}"]}}"#)),
            400,
            "bad_request",
        ),
        (
            pool(format!(r#"{{"name": "{long}", "nodes": ["{me}"]}}"#)),
            400,
            "bad_request",
        ),
        (pool(r#"{"name": "empty"}"#.into()), 400, "bad_request"),
        (
            pool(r#"{"name": "empty", "nodes": [], "labels": {}}"#.into()),
            400,
            "bad_request",
        ),
        (
            pool(r#"{"name": "bad", "nodes": ["not-a-peer-id"]}"#.into()),
            400,
            "bad_request",
        ),
        (
            pool(format!(
                r#"{{"name": "extra", "nodes": ["{me}"], "colour": "red"}}"#
            )),
            400,
            "bad_request",
        ),
        (pool(r#"{"nodes": ["x"]}"#.into()), 400, "bad_request"),
        (pool("{not json".into()), 400, "bad_request"),
        (
            ("DELETE", "/api/v1/pools/nope".into(), String::new()),
            404,
            "not_found",
        ),
        (
            ("GET", "/api/v1/pools/nope".into(), String::new()),
            404,
            "not_found",
        ),
        (
            (
                "POST",
                "/api/v1/allocations".into(),
                r#"{"required_resources": {"cpu_cores": 1}, "pool": "nope"}"#.into(),
            ),
            404,
            "not_found",
        ),
        (
            (
                "POST",
                "/api/v1/allocations".into(),
                r#"{"required_resources": {"cpu_cores": 1}, "group": "nope"}"#.into(),
            ),
            404,
            "not_found",
        ),
    ]
    .into_iter()
    .map(|((m, p, b), s, c)| (m, p, b, s, c))
    .collect();
    expect_errors(&d, &bad_pools);
    assert_eq!(d.get("/api/v1/pools").1, pools_before, "no pool changed");
    assert_eq!(d.get("/api/v1/allocations").1, allocs_before);
    assert_eq!(d.get("/api/v1/groups").1.as_array().unwrap().len(), 1);
}

#[test]
fn the_cli_manages_groups_access_and_pools() {
    let d = Daemon::builder("cli").toml("[labels]\na = \"b\"\n").start();
    let ok = |args: &[&str]| {
        let out = d.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    let text = ok(&["groups", "create", "lab", "--max-members", "4", "--open"]);
    assert!(
        text.contains("lab") && text.contains("anyone may join"),
        "{text}"
    );
    let groups: Value = serde_json::from_str(&ok(&["groups", "list", "--json"])).unwrap();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["name"], "lab");
    assert_eq!(groups[0]["open"], true);
    let text = ok(&["groups", "list"]);
    assert!(text.contains("lab") && text.contains("1/4"), "{text}");
    let text = ok(&["groups", "members", "lab"]);
    assert!(text.contains("cli"), "{text}");

    let text = ok(&["access", "remote", "off"]);
    assert!(text.contains("remote access     off"), "{text}");
    let p: Value = serde_json::from_str(&ok(&["access", "show", "--json"])).unwrap();
    assert_eq!(p["allow_remote"], false, "{p}");
    let peer = stranger_id();
    let text = ok(&["access", "allow", &peer]);
    assert!(text.contains(&peer), "{text}");
    let p: Value = serde_json::from_str(&ok(&["--json", "access", "unallow", &peer])).unwrap();
    assert_eq!(p["allow"], serde_json::json!([]));

    let text = ok(&["pools", "create", "x", "--label", "a=b"]);
    assert!(text.contains("pool      x"), "{text}");
    let text = ok(&["pools", "list"]);
    assert!(text.contains("GPU MEMORY"), "{text}");
    let row = text.lines().find(|l| l.starts_with("x ")).expect(&text);
    assert!(row.contains("4/4") && row.contains("a=b"), "{text}");
    let text = ok(&["pools", "show", "x"]);
    assert!(
        text.contains("cli (") && text.contains("4/4 cores"),
        "{text}"
    );

    // Client-side bad input: a usage error (exit 2), nothing sent.
    let pools_before = d.get("/api/v1/pools").1;
    let groups_before = d.get("/api/v1/groups").1;
    for args in [
        &["pools", "create", "y", "--label", "nokey"][..],
        &["pools", "create", "y", "--label", "=v"],
        &["groups", "create", "z", "--max-members", "lots"],
        &["groups", "create", "z", "--max-members", "0"],
        &["groups", "create", "z", "--max-members", "10001"],
        &["groups", "create", "z"],
        &["access", "remote", "maybe"],
        &["access", "allow"],
    ] {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Usage") || err.contains("error:"), "{err}");
    }
    let out = d.cli(&["pools", "create", "y", "--label", "nokey"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nokey"));
    assert_eq!(d.get("/api/v1/pools").1, pools_before);
    assert_eq!(d.get("/api/v1/groups").1, groups_before);

    // Server errors: the message, and a non-zero exit.
    for (args, code) in [
        (&["groups", "join", "nope"][..], "not_found"),
        (&["groups", "invite", "lab", "not-a-peer"], "bad_request"),
        (&["access", "deny", "bad-id"], "bad_request"),
        (
            &["pools", "create", "has space", "--label", "a=b"],
            "bad_request",
        ),
        (&["pools", "show", "nope"], "not_found"),
        (&["pools", "delete", "nope"], "not_found"),
        (&["request", "--cpu", "1", "--pool", "nope"], "not_found"),
    ] {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") && err.contains(code),
            "{args:?}: {err}"
        );
    }
    assert_eq!(d.get("/api/v1/pools").1, pools_before);
    assert_eq!(d.get("/api/v1/groups").1, groups_before);

    // Scoped requests through the CLI.
    let out = d.cli(&[
        "--json", "request", "--cpu", "1", "--pool", "x", "--group", "lab",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = ok(&["pools", "delete", "x"]);
    assert!(text.contains("deleted pool x"), "{text}");
    assert_eq!(d.get("/api/v1/pools").1, serde_json::json!([]));
}

#[test]
fn groups_pools_and_access_survive_a_restart() {
    let mut d = Daemon::start("keeper");
    let me = d.get("/api/v1/node").1["id"].as_str().unwrap().to_owned();
    let (s, g) = d.send(
        "POST",
        "/api/v1/groups",
        r#"{"name": "lab", "max_members": 2}"#,
    );
    assert_eq!(s, 201, "{g}");
    let (s, p) = d.send(
        "POST",
        "/api/v1/pools",
        &format!(r#"{{"name": "mine", "nodes": ["{me}"]}}"#),
    );
    assert_eq!(s, 201, "{p}");
    let other = stranger_id();
    let (s, policy) = d.send(
        "PATCH",
        "/api/v1/access",
        &format!(r#"{{"allow_remote": false, "deny_add": ["{other}"]}}"#),
    );
    assert_eq!(s, 200, "{policy}");
    let groups = d.get("/api/v1/groups").1;
    let pools = d.get("/api/v1/pools").1;

    assert!(d.terminate().success(), "{}", d.log_text());
    d.start_again();
    assert_eq!(d.get("/api/v1/node").1["id"], me.as_str());
    assert_eq!(d.get("/api/v1/groups").1, groups, "groups kept");
    assert_eq!(d.get("/api/v1/access").1, policy, "policy kept");
    let after = d.get("/api/v1/pools").1;
    assert_eq!(after[0]["name"], "mine", "{after}");
    assert_eq!(after[0]["selector"], pools[0]["selector"]);
    assert_eq!(after[0]["capacity"]["nodes"], 1, "{after}");
}

/// Poll `check` every 100 ms until it gives `Some`, or fail after `secs`.
fn wait_for<T>(secs: u64, what: &str, d: &Daemon, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The reservation with this id in a `Reservations` list (`held` or
/// `granted`).
fn reservation_in<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|r| r["reservation_id"] == id)
}

#[test]
fn reservations_quotas_the_scheduler_and_the_queue_through_the_api() {
    let d = Daemon::start("sched");
    let me = d.get("/api/v1/node").1["id"].as_str().unwrap().to_owned();
    let allocs_before = d.get("/api/v1/allocations").1;

    // (1) An unknown priority is a 400 that names the valid ones; nothing
    // is allocated or booked.
    for (path, body) in [
        (
            "/api/v1/allocations",
            r#"{"required_resources": {"cpu_cores": 1}, "priority": "urgent"}"#,
        ),
        (
            "/api/v1/reservations",
            r#"{"required_resources": {"cpu_cores": 1}, "start_in_secs": 60, "duration_secs": 60, "priority": "urgent"}"#,
        ),
    ] {
        let (s, v) = d.send("POST", path, body);
        assert_eq!(s, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("urgent") && m.contains("critical"), "{m}");
    }
    assert_eq!(d.get("/api/v1/allocations").1, allocs_before);

    // (2) Reservations: bad windows are 400 and book nothing.
    let cases: Vec<(&str, String, String, u16, &str)> = [
        r#"{"required_resources": {"cpu_cores": 1}, "start": "2020-01-01T00:00:00Z", "duration_secs": 60}"#,
        r#"{"required_resources": {"cpu_cores": 1}, "start_in_secs": 10, "duration_secs": 0}"#,
        r#"{"required_resources": {"cpu_cores": 1}, "start_in_secs": 10, "duration_secs": -5}"#,
        r#"{"required_resources": {"cpu_cores": 1}, "duration_secs": 60}"#,
        r#"{"required_resources": {}, "start_in_secs": 10, "duration_secs": 60}"#,
    ]
    .into_iter()
    .map(|b| ("POST", "/api/v1/reservations".into(), b.into(), 400, "bad_request"))
    .collect();
    expect_errors(&d, &cases);
    let empty = serde_json::json!({ "held": [], "granted": [] });
    assert_eq!(d.get("/api/v1/reservations").1, empty);
    expect_errors(
        &d,
        &[(
            "DELETE",
            "/api/v1/reservations/no-such-id".into(),
            String::new(),
            404,
            "unknown_allocation",
        )],
    );

    // A valid one: 1 core, starting in 2 s, for 2 s.
    let (s, r) = d.send(
        "POST",
        "/api/v1/reservations",
        r#"{"required_resources": {"cpu_cores": 1}, "start_in_secs": 2, "duration_secs": 2, "priority": "high"}"#,
    );
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["status"], "confirmed", "{r}");
    assert_eq!(r["node_id"], me.as_str());
    assert_eq!(r["priority"], "high");
    let rid = r["reservation_id"].as_str().unwrap().to_owned();
    let rs = d.get("/api/v1/reservations").1;
    assert_eq!(
        reservation_in(&rs["held"], &rid).unwrap()["status"],
        "confirmed",
        "{rs}"
    );
    assert_eq!(
        reservation_in(&rs["granted"], &rid).unwrap()["status"],
        "confirmed",
        "{rs}"
    );
    // It starts: active on both sides, and held as an allocation with its id.
    wait_for(6, "the reservation to start", &d, || {
        let rs = d.get("/api/v1/reservations").1;
        let held = reservation_in(&rs["held"], &rid)?["status"] == "active";
        let granted = reservation_in(&rs["granted"], &rid)?["status"] == "active";
        (held && granted).then_some(())
    });
    let a = d.get(&format!("/api/v1/allocations/{rid}")).1;
    assert_eq!(a["status"], "active", "{a}");
    assert_eq!(a["allocated_resources"]["cpu_cores"], 1, "{a}");
    let all = d.get("/api/v1/allocations").1;
    assert!(
        all["held"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["allocation_id"] == rid.as_str()),
        "{all}"
    );
    // It ends: no longer active, and the owner took the core back.
    wait_for(8, "the reservation to end", &d, || {
        let rs = d.get("/api/v1/reservations").1;
        let granted = reservation_in(&rs["granted"], &rid).map(|r| r["status"].clone());
        let held = reservation_in(&rs["held"], &rid).map(|r| r["status"].clone());
        let still = |s: &Option<Value>| s.as_ref().is_some_and(|s| s == "active");
        let leased = d.get("/api/v1/allocations").1["granted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["allocation_id"] == rid.as_str());
        (!still(&granted) && !still(&held) && !leased).then_some(())
    });
    assert_eq!(d.get("/api/v1/node").1["resources"]["free"]["cpu_cores"], 4);

    // (3) Quotas.
    assert_eq!(d.get("/api/v1/quotas").1, serde_json::json!([]));
    let subject = format!("node:{me}");
    let (s, qs) = d.send(
        "PUT",
        "/api/v1/quotas",
        &format!(r#"{{"subject": "{subject}", "limits": {{"cpu_cores": 8}}}}"#),
    );
    assert_eq!(s, 200, "{qs}");
    assert_eq!(qs.as_array().unwrap().len(), 1, "{qs}");
    assert_eq!(qs[0]["subject"], subject.as_str());
    assert_eq!(qs[0]["scope"], "local");
    assert_eq!(qs[0]["limits"]["cpu_cores"], 8);
    let (s, three) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 3}}"#,
    );
    assert_eq!(s, 201, "{three}");
    let three = three["allocation_id"].as_str().unwrap().to_owned();
    let quotas_before = d.get("/api/v1/quotas").1;
    assert_eq!(quotas_before[0]["usage"]["cpu_cores"], 3, "{quotas_before}");
    // A cap below current use is accepted: the 3-core lease stays, and
    // new grants of cores are refused until use is back under the cap.
    let (s, v) = d.send(
        "PUT",
        "/api/v1/quotas",
        &format!(r#"{{"subject": "{subject}", "limits": {{"cpu_cores": 2}}}}"#),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1}}"#,
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["refusals"][0]["reason"], "quota_exceeded", "{v}");
    assert_eq!(d.get("/api/v1/quotas").1[0]["usage"]["cpu_cores"], 3);
    let (s, v) = d.send(
        "PUT",
        "/api/v1/quotas",
        &format!(r#"{{"subject": "{subject}", "limits": {{"cpu_cores": 8}}}}"#),
    );
    assert_eq!(s, 200, "{v}");
    let bad_quotas: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "PUT",
            "/api/v1/quotas".into(),
            r#"{"subject": "nobody", "limits": {"cpu_cores": 1}}"#.into(),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/api/v1/quotas".into(),
            r#"{"subject": "default", "limits": {"cpus": 1}}"#.into(),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/api/v1/quotas".into(),
            r#"{"subject": "group:nope", "limits": {"cpu_cores": 1}}"#.into(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("/api/v1/quotas/{subject}?swarm=maybe"),
            String::new(),
            400,
            "bad_request",
        ),
        (
            "DELETE",
            format!("/api/v1/quotas/{subject}?swarm=true"),
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/quotas/default".into(),
            String::new(),
            404,
            "not_found",
        ),
    ];
    expect_errors(&d, &bad_quotas);
    assert_eq!(d.get("/api/v1/quotas").1, quotas_before, "quotas unchanged");
    let (s, qs) = d.send(
        "DELETE",
        &format!("/api/v1/quotas/{subject}?swarm=false"),
        "",
    );
    assert_eq!((s, qs), (200, serde_json::json!([])));

    // (4) The scheduling policy.
    let (s, p) = d.get("/api/v1/scheduler");
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["preemption"], false, "{p}");
    let (s, p) = d.send("PATCH", "/api/v1/scheduler", r#"{"preemption": true}"#);
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["preemption"], true, "{p}");
    assert_eq!(d.get("/api/v1/scheduler").1, p);
    let bad_policy: Vec<(&str, String, String, u16, &str)> = [
        r#"{"preemption": "maybe"}"#,
        r#"{"max_queue": 0}"#,
        r#"{"rate_per_sec": -1}"#,
        r#"{"bogus": 1}"#,
    ]
    .into_iter()
    .map(|b| {
        (
            "PATCH",
            "/api/v1/scheduler".into(),
            b.into(),
            400,
            "bad_request",
        )
    })
    .collect();
    expect_errors(&d, &bad_policy);
    assert_eq!(d.get("/api/v1/scheduler").1, p, "policy unchanged");
    let (s, p) = d.send("PATCH", "/api/v1/scheduler", r#"{"preemption": false}"#);
    assert_eq!((s, &p["preemption"]), (200, &Value::Bool(false)), "{p}");

    // (5) The queue: fill the node (3 + 1 cores), then wait for 2.
    let (s, one) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1}}"#,
    );
    assert_eq!(s, 201, "{one}");
    assert_eq!(d.get("/api/v1/queue").1, serde_json::json!([]));
    assert_eq!(d.get("/api/v1/contention").1["severity"], "none");
    let (s, q) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 2}, "wait_secs": 20}"#,
    );
    assert_eq!(s, 202, "{q}");
    assert_eq!(q["status"], "queued", "{q}");
    assert_eq!(q["queue_position"], 1, "{q}");
    assert_eq!(q["node_id"], me.as_str());
    let qid = q["allocation_id"].as_str().unwrap().to_owned();
    let queue = d.get("/api/v1/queue").1;
    assert_eq!(queue.as_array().unwrap().len(), 1, "{queue}");
    assert_eq!(queue[0]["ticket"], qid.as_str(), "{queue}");
    assert_eq!(queue[0]["position"], 1);
    assert_eq!(queue[0]["holder"], me.as_str());
    assert_eq!(queue[0]["required_resources"]["cpu_cores"], 2);
    assert_eq!(
        d.get(&format!("/api/v1/allocations/{qid}")).1["status"],
        "queued"
    );
    // (6) Contention while it waits.
    let c = d.get("/api/v1/contention").1;
    assert_ne!(c["severity"], "none", "{c}");
    assert_eq!(c["queued"], 1, "{c}");
    assert!(!c["suggestions"].as_array().unwrap().is_empty(), "{c}");
    // Full, and not willing to wait: refused at once.
    let (s, v) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1}}"#,
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_capacity", "{v}");
    // A release lets the queued request in.
    let (s, v) = d.send("DELETE", &format!("/api/v1/allocations/{three}"), "");
    assert_eq!(s, 200, "{v}");
    wait_for(5, "the queued request to be granted", &d, || {
        let a = d.get(&format!("/api/v1/allocations/{qid}")).1;
        (a["status"] == "active").then_some(())
    });
    let a = d.get(&format!("/api/v1/allocations/{qid}")).1;
    assert_eq!(a["allocated_resources"]["cpu_cores"], 2, "{a}");
    assert!(a.get("queue_position").is_none(), "{a}");
    assert_eq!(d.get("/api/v1/queue").1, serde_json::json!([]));
    assert_eq!(d.get("/api/v1/contention").1["severity"], "none");
    assert_eq!(d.get("/api/v1/node").1["resources"]["free"]["cpu_cores"], 1);
}

#[test]
fn the_cli_waits_in_the_queue_reserves_and_manages_quotas_and_the_scheduler() {
    let d = Daemon::start("sched-cli");
    let me = d.get("/api/v1/node").1["id"].as_str().unwrap().to_owned();
    let ok = |args: &[&str]| {
        let out = d.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };

    // Fill the node, then wait in the queue; another thread releases.
    let (s, full) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 4}}"#,
    );
    assert_eq!(s, 201, "{full}");
    let full = full["allocation_id"].as_str().unwrap().to_owned();
    let api = d.api().to_owned();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        lanswarm::sim::http::request("DELETE", &format!("{api}/api/v1/allocations/{full}"), None)
            .unwrap()
    });
    let out = d.cli(&[
        "request",
        "--cpu",
        "2",
        "--wait",
        "10s",
        "--priority",
        "high",
    ]);
    let (s, _) = releaser.join().unwrap();
    assert_eq!(s, 200);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(err.contains("queued at position 1 on sched-cli"), "{err}");
    let text = stdout(&out);
    assert!(
        text.contains("ALLOCATION") && text.contains("sched-cli"),
        "{text}"
    );
    assert!(!text.contains("status: queued"), "{text}");

    // A bad priority is a usage error: exit 2, nothing sent.
    let before = d.get("/api/v1/allocations").1;
    let out = d.cli(&["request", "--cpu", "1", "--priority", "urgent"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("urgent"));
    for args in [
        &[
            "reserve",
            "--start",
            "yesterday",
            "--duration",
            "1h",
            "--cpu",
            "1",
        ][..],
        &["reserve", "--start", "+1m", "--cpu", "1"],
        &["quota", "set", "--cpu", "1"],
        &["quota", "set", "--default", "--burst-cpu", "2"],
        &["scheduler", "set"],
        &["scheduler", "set", "--preemption", "maybe"],
        &["request", "--cpu", "1", "--min-cc", "eight"],
    ] {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    assert_eq!(d.get("/api/v1/allocations").1, before);

    // Reserve a core from 1 s on, for 2 s.
    let text = ok(&[
        "reserve",
        "--start",
        "+1s",
        "--duration",
        "2s",
        "--cpu",
        "1",
    ]);
    assert!(
        text.contains("RESERVATION") && text.contains("confirmed"),
        "{text}"
    );
    let rs: Value = serde_json::from_str(&ok(&["reservations", "--json"])).unwrap();
    assert_eq!(rs["held"].as_array().unwrap().len(), 1, "{rs}");
    let text = ok(&["reservations"]);
    assert!(text.contains("HELD") && text.contains("GRANTED"), "{text}");
    // And cancel another one.
    let r: Value = serde_json::from_str(&ok(&[
        "--json",
        "reserve",
        "--start",
        "in 1h",
        "--duration",
        "10m",
        "--cpu",
        "1",
    ]))
    .unwrap();
    let rid = r["reservation_id"].as_str().unwrap();
    let text = ok(&["reservations", "cancel", rid]);
    assert!(text.contains(rid), "{text}");
    let rs = d.get("/api/v1/reservations").1;
    assert!(
        reservation_in(&rs["held"], rid).is_none(),
        "cancelled reservation still held: {rs}"
    );

    // Quotas: 3 cores held (2 from the queue + 1); a cap of 1 is
    // accepted (it stops new grants), a parent that does not exist is not.
    let (s, v) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1}}"#,
    );
    assert_eq!(s, 201, "{v}");
    let out = d.cli(&[
        "quota", "set", "--node", &me, "--cpu", "1", "--parent", "nope",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(d.get("/api/v1/quotas").1, serde_json::json!([]));
    let text = ok(&["quota", "set", "--node", &me, "--cpu", "1"]);
    assert!(text.contains("3/1"), "{text}");
    let text = ok(&[
        "quota",
        "set",
        "--node",
        &me,
        "--cpu",
        "6",
        "--memory",
        "4GiB",
        "--burst-cpu",
        "8",
        "--burst-for",
        "1m",
    ]);
    assert!(
        text.contains(&format!("node:{me}")) && text.contains("3/6"),
        "{text}"
    );
    assert!(text.contains("8 cores for 1m"), "{text}");
    let qs: Value = serde_json::from_str(&ok(&["quota", "list", "--json"])).unwrap();
    assert_eq!(qs[0]["limits"]["memory_mb"], 4096, "{qs}");
    assert_eq!(qs[0]["burst"]["secs"], 60, "{qs}");
    let text = ok(&["quota", "set", "--default", "--swarm", "--gpus", "1"]);
    assert!(text.contains("swarm"), "{text}");
    ok(&["quota", "remove", "default", "--swarm"]);
    let qs: Value = serde_json::from_str(&ok(&["--json", "quota", "remove", &me])).unwrap();
    assert_eq!(qs, serde_json::json!([]));
    let out = d.cli(&["quota", "remove", &me]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // The scheduler.
    let text = ok(&[
        "scheduler",
        "set",
        "--preemption",
        "on",
        "--max-wait",
        "30m",
    ]);
    assert!(text.contains("preemption           on"), "{text}");
    let p: Value = serde_json::from_str(&ok(&["scheduler", "show", "--json"])).unwrap();
    assert_eq!(p["preemption"], true, "{p}");
    assert_eq!(p["max_wait_ms"], 30 * 60 * 1000, "{p}");
    let out = d.cli(&["scheduler", "set", "--max-queue", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Queue and contention, empty.
    let text = ok(&["queue"]);
    assert!(text.contains("nothing waiting"), "{text}");
    let text = ok(&["contention"]);
    assert!(text.starts_with("contention  none"), "{text}");
}

#[test]
fn quotas_reservations_and_the_scheduling_policy_survive_a_restart() {
    let mut d = Daemon::start("sched-keeper");
    let me = d.get("/api/v1/node").1["id"].as_str().unwrap().to_owned();
    let (s, qs) = d.send(
        "PUT",
        "/api/v1/quotas",
        &format!(
            r#"{{"subject": "node:{me}", "limits": {{"cpu_cores": 3, "memory_mb": 2048}}, "burst": {{"limits": {{"cpu_cores": 4}}, "secs": 30}}}}"#
        ),
    );
    assert_eq!(s, 200, "{qs}");
    let (s, r) = d.send(
        "POST",
        "/api/v1/reservations",
        r#"{"required_resources": {"cpu_cores": 2}, "start_in_secs": 3600, "duration_secs": 600}"#,
    );
    assert_eq!(s, 201, "{r}");
    let (s, p) = d.send(
        "PATCH",
        "/api/v1/scheduler",
        r#"{"preemption": true, "max_queue": 7, "rate_per_sec": 5, "rate_burst": 9}"#,
    );
    assert_eq!(s, 200, "{p}");
    let quotas = d.get("/api/v1/quotas").1;
    let reservations = d.get("/api/v1/reservations").1;
    assert_eq!(reservations["held"].as_array().unwrap().len(), 1);
    assert_eq!(reservations["granted"].as_array().unwrap().len(), 1);

    assert!(d.terminate().success(), "{}", d.log_text());
    d.start_again();
    assert_eq!(d.get("/api/v1/node").1["id"], me.as_str());
    assert_eq!(d.get("/api/v1/quotas").1, quotas, "quotas kept");
    assert_eq!(d.get("/api/v1/scheduler").1, p, "policy kept");
    let after = d.get("/api/v1/reservations").1;
    assert_eq!(after, reservations, "reservations kept");
    assert_eq!(after["granted"][0]["status"], "confirmed");
}

#[test]
fn task_and_job_input_is_checked_and_changes_nothing() {
    let templates = r#"
[[tasks.templates]]
name = "square"
argv = ["sh", "-c", "echo $(( $1 * $1 ))", "sh", "{n}"]
[tasks.templates.params.n]
type = "int"
"#;
    let d = Daemon::builder("tasker").toml(templates).start();
    let s = |v: &str| v.to_owned();
    expect_errors(
        &d,
        &[
            (
                "POST",
                s("/api/v1/tasks"),
                s("{not json"),
                400,
                "bad_request",
            ),
            ("POST", s("/api/v1/tasks"), s("{}"), 400, "bad_request"),
            (
                "POST",
                s("/api/v1/tasks"),
                s(r#"{"template": "square", "model": "llama3"}"#),
                400,
                "bad_request",
            ),
            (
                "POST",
                s("/api/v1/tasks"),
                s(r#"{"template": "square", "params": {"n": [1, 2]}}"#),
                400,
                "bad_request",
            ),
            (
                "POST",
                s("/api/v1/tasks"),
                s(r#"{"template": "square", "params": {"n": "x"}}"#),
                400,
                "task_refused",
            ),
            (
                "POST",
                s("/api/v1/tasks"),
                s(r#"{"model": "llama3", "prompt": "hi", "options": [1]}"#),
                400,
                "bad_request",
            ),
            (
                "POST",
                s("/api/v1/tasks?wait=maybe"),
                s(r#"{"template": "square", "params": {"n": 2}}"#),
                400,
                "bad_request",
            ),
            (
                "POST",
                s("/api/v1/tasks"),
                s(r#"{"template": "square", "params": {"n": 2}, "allocation_id": "nope"}"#),
                404,
                "unknown_allocation",
            ),
            ("GET", s("/api/v1/tasks/nope"), s(""), 404, "not_found"),
            ("DELETE", s("/api/v1/tasks/nope"), s(""), 404, "not_found"),
            (
                "POST",
                s("/api/v1/jobs"),
                s(r#"{"subtasks": []}"#),
                400,
                "bad_request",
            ),
            (
                "POST",
                s("/api/v1/jobs"),
                s(r#"{"subtasks": [{"template": "square", "model": "x"}]}"#),
                400,
                "bad_request",
            ),
            (
                "POST",
                s("/api/v1/jobs"),
                s(r#"{"max_attempts": 0, "subtasks": [{"template": "square"}]}"#),
                400,
                "bad_request",
            ),
            ("GET", s("/api/v1/jobs/nope"), s(""), 404, "not_found"),
            ("DELETE", s("/api/v1/jobs/nope"), s(""), 404, "not_found"),
        ],
    );
    // Only the refused task left a record (status error), no job was made,
    // and no lease is held or granted.
    let tasks = d.get("/api/v1/tasks").1;
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(tasks.iter().all(|t| t["status"] == "error"), "{tasks:?}");
    assert_eq!(d.get("/api/v1/jobs").1, serde_json::json!([]));
    let allocs = d.get("/api/v1/allocations").1;
    assert_eq!(allocs["held"], serde_json::json!([]), "{allocs}");
    assert_eq!(allocs["granted"], serde_json::json!([]), "{allocs}");
    // And it still runs tasks: the node is healthy.
    let (code, rec) = d.send(
        "POST",
        "/api/v1/tasks",
        r#"{"template": "square", "params": {"n": 7}}"#,
    );
    assert_eq!(code, 200, "{rec}");
    assert_eq!(rec["result"]["stdout"], "49\n");
    // The CLI: a bad job file names the file and the problem.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        "[[subtasks]]\ntemplate = \"square\"\nmemory = \"lots\"\n",
    )
    .unwrap();
    let out = d.cli(&["job", "run", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.toml") && err.contains("memory"), "{err}");
}

#[test]
fn health_checks_through_the_api_and_the_cli() {
    let d = Daemon::start("healthy");
    let (code, v) = d.send("POST", "/api/v1/health-checks", "");
    assert_eq!(code, 200, "{v}");
    let checks = v.as_array().unwrap();
    assert_eq!(checks.len(), 1, "{v}");
    assert_eq!(checks[0]["name"], "healthy");
    assert_eq!(checks[0]["status"], "online");
    assert_eq!(checks[0]["response_time_ms"], 0.0);
    assert!(checks[0]["resources"]["free"]["cpu_cores"].is_number());
    let out = d.cli(&["health"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("healthy") && text.contains("online"),
        "{text}"
    );
}

#[test]
fn elastic_status_shows_the_cap_what_is_lent_and_the_forecast() {
    // Off: what is lent is the cap, no forecast.
    let off = Daemon::start("elastic-off");
    let (status, e) = off.get("/api/v1/elastic");
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["enabled"], false, "{e}");
    assert_eq!(e["policy"], "reactive", "{e}");
    assert_eq!(e["cap"]["cpu_cores"], 4, "{e}");
    assert_eq!(e["current"], e["cap"], "{e}");
    assert!(e["forecast"].is_null(), "{e}");
    drop(off);

    // On, with the forecast policy: once the hardware monitor's first
    // sample is in, a forecast of the machine's own use within [0, 8] cores.
    let on = Daemon::builder("elastic-on")
        .toml("[elastic]\nenabled = true\npolicy = \"forecast\"\nhorizon = \"10m\"")
        .start();
    let e = wait_for(30, "a forecast of local use", &on, || {
        let (status, e) = on.get("/api/v1/elastic");
        assert_eq!(status, 200, "{e}");
        (!e["forecast"].is_null()).then_some(e)
    });
    assert_eq!(e["enabled"], true, "{e}");
    assert_eq!(e["policy"], "forecast", "{e}");
    assert_eq!(e["cap"]["cpu_cores"], 4, "{e}");
    let lent = e["current"]["cpu_cores"].as_u64().expect("current cores");
    assert!(lent <= 4, "never above the cap: {e}");
    let f = &e["forecast"];
    let cores = f["cpu_cores"].as_f64().expect("forecast cores");
    assert!((0.0..=8.0).contains(&cores), "{e}");
    assert!(
        f["memory_mb"].as_u64().expect("forecast memory") <= 16 * 1024,
        "{e}"
    );
    assert_eq!(f["horizon_secs"], 600, "{e}");
}
