//! Usage accounting and bottlenecks with real `lanswarm` processes on
//! loopback (mDNS off): two nodes, the second (the asker) bootstrapped to
//! the first (the owner, with prices set).
//!
//! - Leases held for a measured time are charged in resource-seconds on
//!   the owner (per requester, per group) and on the asker (per node),
//!   within the tolerance of one maintenance tick (250 ms; the bound used
//!   is 0.5 s), priced at the owner's prices, through the API and the CLI.
//! - The owner restarts: what was charged is still there, and the time
//!   it was down is not charged for a lease that survived the restart.
//! - Requests refused for memory make `memory_mb` the bottleneck, with
//!   the count, on the owner and swarm-wide on the asker.
//! - Malformed queries are 400s with code `bad_query` naming the
//!   parameter.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::daemon::{Daemon, DaemonBuilder};
use common::eventually;

/// Slack for the maintenance tick that notices a lease is gone.
const TICK_SLACK_S: f64 = 0.5;

fn node(name: &str) -> DaemonBuilder {
    Daemon::builder(name)
        .without_gpu()
        .network(r#"announce_interval = "1s""#)
}

fn pair(owner: DaemonBuilder) -> (Daemon, Daemon) {
    let owner = owner.start();
    let a = owner.id();
    let addr = owner.get("/api/v1/node").1["addresses"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let asker = node("asker").bootstrap(&addr).start();
    eventually("the asker sees the owner", Duration::from_secs(20), || {
        let n = asker.get("/api/v1/nodes").1;
        let seen = n
            .as_array()
            .is_some_and(|ns| ns.iter().any(|x| x["id"] == a.as_str()));
        if seen {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    (owner, asker)
}

fn allocate(d: &Daemon, body: &str) -> String {
    let (s, a) = d.send("POST", "/api/v1/allocations", body);
    assert_eq!(s, 201, "{body}: {a}");
    a["allocation_id"].as_str().unwrap().to_owned()
}

fn release(d: &Daemon, id: &str) {
    let (s, r) = d.send("DELETE", &format!("/api/v1/allocations/{id}"), "");
    assert_eq!(s, 200, "{r}");
}

fn usage(d: &Daemon, query: &str) -> Value {
    let (s, v) = d.get(&format!("/api/v1/usage{query}"));
    assert_eq!(s, 200, "usage{query}: {v}");
    v
}

/// The row of `key`, or a failure showing the report.
fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["key"] == key))
        .unwrap_or_else(|| panic!("no row {key} in {report}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn usage_is_charged_priced_grouped_and_survives_an_owner_restart() {
    let (mut owner, asker) = pair(node("owner").toml(
        "[accounting]\ncurrency = \"EUR\"\n[accounting.price]\ncpu_core_hour = 3.6\nmemory_gib_hour = 1.8\n",
    ));
    let b = asker.id();
    let a = owner.id();

    // 2 cores and 1 GiB, held for at least 3 s.
    let before = Instant::now();
    let l1 = allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 2, "memory_mb": 1024}, "node_id": "owner"}"#,
    );
    std::thread::sleep(Duration::from_secs(3));
    release(&asker, &l1);
    let held_max = before.elapsed().as_secs_f64() + TICK_SLACK_S;
    // The release is noticed on the next tick.
    std::thread::sleep(Duration::from_millis(600));

    let r = usage(&owner, "");
    assert_eq!(r["by"], "requester", "{r}");
    let mine = row(&r, &b);
    let cpu_s = f(&mine["seconds"]["cpu_core_seconds"]);
    assert!(
        (2.0 * 3.0..=2.0 * held_max).contains(&cpu_s),
        "2 cores for 3 to {held_max:.2} s, charged {cpu_s} core-s: {r}"
    );
    // Same lease, same time: memory is exactly 512 times the cores.
    assert_eq!(
        mine["raw"]["memory_mb_ms"].as_u64().unwrap(),
        512 * mine["raw"]["cpu_core_ms"].as_u64().unwrap(),
        "{r}"
    );
    let mem_s = f(&mine["seconds"]["memory_mib_seconds"]);
    let want_cost = cpu_s / 3600.0 * 3.6 + mem_s / 1024.0 / 3600.0 * 1.8;
    assert!((f(&mine["cost"]) - want_cost).abs() < 1e-9, "{r}");
    assert!((f(&r["lent_cost"]) - want_cost).abs() < 1e-9, "{r}");
    assert_eq!(r["currency"], "EUR", "{r}");

    // The asker's own view, per owner node: the same lease, no price.
    let used = usage(&asker, "?by=node&since=1h");
    let on_owner = row(&used, &a);
    let used_cpu = f(&on_owner["seconds"]["cpu_core_seconds"]);
    assert!(
        (2.0 * 3.0..=2.0 * held_max).contains(&used_cpu),
        "asker side: {used_cpu} core-s: {used}"
    );
    assert!(on_owner["cost"].is_null(), "{used}");

    // Per group: the asker is in no group, then joins "lab".
    let g = usage(&owner, "?by=group");
    assert_eq!(
        f(&row(&g, "(no group)")["seconds"]["cpu_core_seconds"]),
        cpu_s
    );
    let (s, grp) = owner.send(
        "POST",
        "/api/v1/groups",
        r#"{"name": "lab", "max_members": 4, "open": true}"#,
    );
    assert_eq!(s, 201, "{grp}");
    let gid = grp["id"].as_str().unwrap().to_owned();
    eventually("the asker joins lab", Duration::from_secs(20), || {
        let (s, v) = asker.send("POST", &format!("/api/v1/groups/{gid}/join"), "");
        if s == 200 || s == 201 {
            Ok(())
        } else {
            Err(format!("{s} {v}"))
        }
    });
    eventually(
        "the owner sees the asker in lab",
        Duration::from_secs(20),
        || {
            let g = usage(&owner, "?by=group");
            match g["rows"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["key"] == "lab"))
            {
                Some(r) if f(&r["seconds"]["cpu_core_seconds"]) == cpu_s => Ok(()),
                _ => Err(g.to_string()),
            }
        },
    );

    // The CLI: JSON as the API gives it, and a table.
    let out = owner.cli(&["--json", "usage", "--since", "24h"]);
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).expect("JSON from the CLI");
    assert_eq!(f(&row(&cli, &b)["seconds"]["cpu_core_seconds"]), cpu_s);
    let out = owner.cli(&["usage", "--by", "group"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("lab"), "{text}");
    let out = owner.cli(&["usage", "--by", "colour"]);
    assert!(!out.status.success(), "a bad --by is refused");

    // A lease that lives through an owner restart: the time the owner is
    // down is not charged; what was charged before is kept.
    let _l2 = allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 1}, "node_id": "owner"}"#,
    );
    std::thread::sleep(Duration::from_secs(1));
    let v_before = f(&row(&usage(&owner, ""), &b)["seconds"]["cpu_core_seconds"]);
    let t_before = Instant::now();
    owner.terminate();
    let down = Duration::from_secs(2);
    std::thread::sleep(down);
    owner.start_again();
    std::thread::sleep(Duration::from_secs(2));
    let after = usage(&owner, "");
    let v_after = f(&row(&after, &b)["seconds"]["cpu_core_seconds"]);
    let wall = t_before.elapsed().as_secs_f64();
    let delta = v_after - v_before;
    assert!(
        delta >= 1.5 && delta <= wall - down.as_secs_f64() + TICK_SLACK_S,
        "1 core over {wall:.2} s, {} s of it down: charged {delta} core-s more: {after}",
        down.as_secs()
    );
}

#[test]
fn the_dimension_that_refuses_most_is_the_bottleneck() {
    let (owner, asker) = pair(node("owner").toml("[scheduler]\npreemption = true\n"));
    // Hold 6 of the 8 GiB and 1 of the 4 cores.
    allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 1, "memory_mb": 6144}, "node_id": "owner"}"#,
    );
    let refuse = |body: &str| {
        let (s, e) = asker.send("POST", "/api/v1/allocations", body);
        assert_eq!(s, 503, "{body}: {e}");
    };
    for _ in 0..3 {
        refuse(r#"{"required_resources": {"memory_mb": 4096}, "node_id": "owner"}"#);
    }
    refuse(r#"{"required_resources": {"cpu_cores": 4}, "node_id": "owner"}"#);

    let (s, r) = owner.get("/api/v1/bottlenecks");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["bottleneck"], "memory_mb", "{r}");
    assert_eq!(r["local_refused"], 4, "{r}");
    assert_eq!(r["window_secs"], 3600, "{r}");
    let dims = &r["nodes"][0]["dimensions"];
    assert_eq!(dims[0]["dimension"], "memory_mb", "{r}");
    assert_eq!(dims[0]["count"], 3, "{r}");
    assert_eq!(dims[1]["dimension"], "cpu_cores", "{r}");
    assert_eq!(dims[1]["count"], 1, "{r}");

    // Swarm-wide on the asker, from the owner's announcement.
    let owner_id = owner.id();
    eventually(
        "the asker sees the owner's bottleneck",
        Duration::from_secs(20),
        || {
            let r = asker.get("/api/v1/bottlenecks").1;
            let node_ok = r["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["node_id"] == owner_id.as_str() && n["bottleneck"] == "memory_mb")
            });
            if node_ok && r["bottleneck"] == "memory_mb" && r["swarm"][0]["count"] == 3 {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );
    let out = asker.cli(&["bottlenecks"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("bottleneck") && text.contains("memory_mb (3 refusals)"),
        "{text}"
    );
}

#[test]
fn malformed_usage_queries_are_400() {
    let d = node("solo").start();
    for (q, param) in [
        ("?by=colour", "by"),
        ("?since=yesterday", "since"),
        ("?since=1h&since=2h", "since"),
        ("?limit=5", "limit"),
        ("?since=1h&until=2h", "until"),
    ] {
        let (s, e) = d.get(&format!("/api/v1/usage{q}"));
        assert_eq!(s, 400, "{q}: {e}");
        assert_eq!(e["error"]["code"], "bad_query", "{q}: {e}");
        assert_eq!(e["error"]["param"], param, "{q}: {e}");
    }
    let (s, r) = d.get("/api/v1/usage?since=24h&by=node");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["rows"], serde_json::json!([]), "{r}");
}
