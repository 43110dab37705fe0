//! The owner's queue policies (fair share, weighted, backfill) and the
//! quota tree, through the real binary's API, CLI and config: good input
//! takes effect, bad input gets a clear error and changes nothing.

mod common;

use std::process::Command;

use serde_json::{json, Value};

use common::daemon::Daemon;
use common::BIN;

/// Send each body and expect a 400 `bad_request` whose message contains
/// the given text.
fn expect_400(d: &Daemon, method: &str, path: &str, cases: &[(String, &str)]) {
    for (body, says) in cases {
        let (s, v) = d.send(method, path, body);
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{body}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(says), "{body}: expected {says:?} in {m:?}");
    }
}

#[test]
fn queue_policies_and_shares_are_set_at_runtime_and_bad_shares_change_nothing() {
    let d = Daemon::start("fair");
    let me = d.id();
    let (s, p) = d.get("/api/v1/scheduler");
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["queue_policy"], "fifo", "{p}");
    assert_eq!(p["backfill"], true, "{p}");

    let body = json!({
        "queue_policy": "fair-share",
        "backfill": false,
        "fair_share_half_life_secs": 600,
        "shares": { me.clone(): 3 },
        "group_shares": { "lab": 2 },
    });
    let (s, p) = d.send("PATCH", "/api/v1/scheduler", &body.to_string());
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["queue_policy"], "fair-share", "{p}");
    assert_eq!(p["backfill"], false, "{p}");
    assert_eq!(p["shares"]["half_life_ms"], 600_000, "{p}");
    assert_eq!(p["shares"]["requesters"][&me], 3, "{p}");
    assert_eq!(p["shares"]["groups"]["lab"], 2, "{p}");
    assert_eq!(d.get("/api/v1/scheduler").1, p);

    let bad = [
        (json!({ "shares": { me.clone(): 0 } }), "at least 1"),
        (json!({ "shares": { me.clone(): -2 } }), "-2"),
        (json!({ "group_shares": { "lab": 0 } }), "group lab"),
        (
            json!({ "shares": { "not-a-peer": 1 } }),
            "not a valid peer id",
        ),
        (json!({ "queue_policy": "lottery" }), "fair-share"),
        (
            json!({ "fair_share_half_life_secs": 0 }),
            "fair_share_half_life",
        ),
        // A good change next to a bad one is not applied either.
        (
            json!({ "backfill": true, "shares": { me.clone(): 0 } }),
            "at least 1",
        ),
    ]
    .map(|(b, says)| (b.to_string(), says));
    expect_400(&d, "PATCH", "/api/v1/scheduler", &bad);
    assert_eq!(d.get("/api/v1/scheduler").1, p, "policy unchanged");

    // The CLI takes the same options.
    let out = d.cli(&[
        "scheduler",
        "set",
        "--queue-policy",
        "weighted",
        "--backfill",
        "on",
        "--remove-share",
        &me,
    ]);
    assert!(out.status.success(), "{out:?}");
    let (_, p) = d.get("/api/v1/scheduler");
    assert_eq!(p["queue_policy"], "weighted", "{p}");
    assert_eq!(p["backfill"], true, "{p}");
    assert!(p["shares"]["requesters"].get(&me).is_none(), "{p}");
    let out = d.cli(&["scheduler", "set", "--share", &format!("{me}=0")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
    assert_eq!(d.get("/api/v1/scheduler").1, p, "policy unchanged");
}

#[test]
fn the_quota_tree_refuses_children_over_parents_and_cycles_and_changes_nothing() {
    let d = Daemon::start("tree");
    let me = d.id();
    let mut gids = Vec::new();
    for name in ["lab", "team"] {
        let (s, g) = d.send(
            "POST",
            "/api/v1/groups",
            &json!({ "name": name, "max_members": 8 }).to_string(),
        );
        assert_eq!(s, 201, "{g}");
        gids.push(g["id"].as_str().unwrap().to_owned());
    }
    let put = |subject: String, cores: u32, parent: Option<String>| {
        let mut b = json!({ "subject": subject, "limits": { "cpu_cores": cores } });
        if let Some(p) = parent {
            b["parent"] = Value::String(p);
        }
        d.send("PUT", "/api/v1/quotas", &b.to_string())
    };
    let lab = format!("group:{}", gids[0]);
    let team = format!("group:{}", gids[1]);
    let node = format!("node:{me}");
    assert_eq!(put(lab.clone(), 4, None).0, 200);
    let (s, v) = put(team.clone(), 3, Some(lab.clone()));
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(node.clone(), 2, Some(team.clone()));
    assert_eq!(s, 200, "{v}");
    let entry = |qs: &Value, subject: &str| {
        qs.as_array()
            .unwrap()
            .iter()
            .find(|e| e["subject"] == subject)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(entry(&v, &node)["parent"], team.as_str(), "{v}");
    assert_eq!(entry(&v, &team)["parent"], lab.as_str(), "{v}");
    let before = d.get("/api/v1/quotas").1;

    let bad = [
        // A child over its parent.
        (
            json!({ "subject": node, "limits": { "cpu_cores": 5 }, "parent": team }),
            "over the cap of 3",
        ),
        // A parent lowered under its child.
        (
            json!({ "subject": team, "limits": { "cpu_cores": 1 }, "parent": lab }),
            "under the cap of 2",
        ),
        // lab under team, which is under lab.
        (
            json!({ "subject": lab, "limits": { "cpu_cores": 4 }, "parent": team }),
            "cycle",
        ),
        // A parent that is not a group.
        (
            json!({ "subject": team, "limits": { "cpu_cores": 3 }, "parent": node }),
            "must be a group",
        ),
        // Swarm-wide quotas have no tree.
        (
            json!({ "subject": node, "swarm": true, "limits": { "cpu_cores": 1 }, "parent": team }),
            "no parent",
        ),
    ]
    .map(|(b, says)| (b.to_string(), says));
    expect_400(&d, "PUT", "/api/v1/quotas", &bad);
    assert_eq!(d.get("/api/v1/quotas").1, before, "quotas unchanged");

    // The effective cap is the lowest on the path: the node caps only
    // memory, and still gets no more than team's 3 cores.
    let body = json!({ "subject": node, "limits": { "memory_mb": 100_000 }, "parent": team });
    assert_eq!(d.send("PUT", "/api/v1/quotas", &body.to_string()).0, 200);
    let (s, v) = d.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 4}}"#,
    );
    assert_eq!(s, 503, "{v}");
    let r = &v["error"]["refusals"][0];
    assert_eq!(r["reason"], "quota_exceeded", "{v}");
    let m = r["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("quota of requester") && m.contains("cap of 3"),
        "{m}"
    );

    // The tree survives a restart.
    let mut d = d;
    assert!(d.terminate().success());
    d.start_again();
    let after = d.get("/api/v1/quotas").1;
    assert_eq!(entry(&after, &node)["parent"], team.as_str(), "{after}");
}

#[test]
fn bad_shares_in_the_config_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fair.toml");
    for (toml, key) in [
        (
            "[scheduler]\nqueue_policy = \"fair-share\"\n[scheduler.group_shares]\nlab = 0\n",
            "scheduler.group_shares.lab",
        ),
        (
            "[scheduler]\nfair_share_half_life = \"10ms\"\n",
            "scheduler.fair_share_half_life",
        ),
        ("[scheduler]\nqueue_policy = \"lottery\"\n", "queue_policy"),
    ] {
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("fair.toml") && err.contains(key),
            "{toml}: {err}"
        );
    }
}
