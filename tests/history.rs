//! The allocation history (audit log) with real `lanswarm` processes on
//! loopback (mDNS off): two nodes, the second bootstrapped to the first.
//! Grants, a release, denials (too many cores, the access policy), a
//! preemption, an expiry, an access-policy change and a group are recorded
//! on the owner and on the requester, queried through the API and the
//! CLI with every filter, and still there after the owner restarts.
//! Malformed queries are 400s with a JSON error.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::daemon::{Daemon, DaemonBuilder};
use common::eventually;

/// A node as these tests run it: no GPU, announcing every second.
fn node(name: &str) -> DaemonBuilder {
    Daemon::builder(name)
        .without_gpu()
        .network(r#"announce_interval = "1s""#)
}

impl Daemon {
    /// The history records for `query` (the part after `?`).
    fn history(&self, query: &str) -> Vec<Value> {
        let (s, v) = self.get(&format!("/api/v1/history?{query}"));
        assert_eq!(s, 200, "history?{query}: {v}");
        v.as_array().expect("an array of records").clone()
    }
}

/// Records of one kind (and, if given, one outcome).
fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn ids(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

/// The one record about `lease` of `kind`, or a failure listing them all.
fn find<'a>(records: &'a [Value], kind: &str, lease: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == kind && r["lease_id"] == lease)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} record of {lease} expected in {}",
        serde_json::to_string_pretty(records).unwrap()
    );
    found[0]
}

fn allocate(d: &Daemon, body: &str) -> String {
    let (s, a) = d.send("POST", "/api/v1/allocations", body);
    assert_eq!(s, 201, "{body}: {a}");
    a["allocation_id"].as_str().unwrap().to_owned()
}

/// Ask for an allocation that must be refused with `status`.
fn refused(d: &Daemon, body: &str, status: u16) {
    let (s, e) = d.send("POST", "/api/v1/allocations", body);
    assert_eq!(s, status, "{body}: {e}");
}

/// Change the access policy (a `PATCH /api/v1/access` body).
fn change_access(d: &Daemon, body: &str) {
    let (s, p) = d.send("PATCH", "/api/v1/access", body);
    assert_eq!(s, 200, "{body}: {p}");
}

#[test]
fn history_records_who_what_and_why_on_both_sides_and_survives_a_restart() {
    let mut owner = node("owner")
        .toml("[scheduler]\npreemption = true\n")
        .start();
    let a = owner.id();
    let addr = owner.get("/api/v1/node").1["addresses"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let mut asker = node("asker").bootstrap(&addr).start();
    let b = asker.id();
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

    // A grant and its release.
    let l1 = allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 1}, "node_id": "owner"}"#,
    );
    let (s, r) = asker.send("DELETE", &format!("/api/v1/allocations/{l1}"), "");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["owner_confirmed"], true, "{r}");
    // A lease of normal priority, then too many cores for what is left:
    // the owner is asked (it may preempt) and refuses.
    let l2 = allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 2}, "node_id": "owner"}"#,
    );
    refused(
        &asker,
        r#"{"required_resources": {"cpu_cores": 3}, "node_id": "owner"}"#,
        503,
    );
    // The owner denies the asker by policy, and is asked anyway.
    change_access(&owner, &format!(r#"{{"deny_add": ["{b}"]}}"#));
    refused(
        &asker,
        r#"{"required_resources": {"cpu_cores": 1}, "node_id": "owner"}"#,
        403,
    );
    change_access(&owner, &format!(r#"{{"deny_remove": ["{b}"]}}"#));
    let (s, g) = owner.send(
        "POST",
        "/api/v1/groups",
        r#"{"name": "lab", "max_members": 4}"#,
    );
    assert_eq!(s, 201, "{g}");
    // High priority takes the normal lease's cores.
    let l3 = allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 3}, "node_id": "owner", "priority": "high"}"#,
    );
    // A short lease whose holder will die.
    let l4 = allocate(
        &asker,
        r#"{"required_resources": {"cpu_cores": 1}, "node_id": "owner", "timeout_secs": 2}"#,
    );

    // --- The owner's side.
    let all = owner.history("since=10m");
    let grant = find(&all, "grant", &l1);
    assert_eq!(grant["role"], "owner");
    assert_eq!(grant["outcome"], "granted");
    assert_eq!(grant["requester"], b.as_str());
    assert_eq!(grant["node"], a.as_str());
    assert_eq!(grant["resources"]["cpu_cores"], 1);
    assert_eq!(grant["resources"]["priority"], "normal");
    assert!(grant["at"].as_str().unwrap().ends_with('Z'), "{grant}");
    let release = find(&all, "release", &l1);
    assert_eq!(release["outcome"], "released");
    assert_eq!(release["requester"], b.as_str());
    assert!(release["id"].as_u64() > grant["id"].as_u64());
    let denials = of_kind(&all, "denial");
    let reasons: Vec<&str> = denials
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        vec!["forbidden", "insufficient_capacity"],
        "newest first: {denials:?}"
    );
    for d in &denials {
        assert_eq!(d["role"], "owner");
        assert_eq!(d["outcome"], "denied");
        assert_eq!(d["requester"], b.as_str());
        assert_eq!(d["node"], a.as_str());
    }
    assert_eq!(denials[1]["resources"]["cpu_cores"], 3);
    let pre = find(&all, "preemption", &l2);
    assert_eq!(pre["outcome"], "preempted");
    assert_eq!(pre["reason"], "higher_priority");
    assert_eq!(pre["requester"], b.as_str());
    assert_eq!(find(&all, "grant", &l3)["resources"]["priority"], "high");
    let policy = of_kind(&all, "policy_change");
    assert_eq!(policy.len(), 2, "{policy:?}");
    assert_eq!(policy[0]["role"], "local");
    assert_eq!(policy[0]["outcome"], "changed");
    assert!(
        policy[1]["detail"].as_str().unwrap().contains(&b),
        "{}",
        policy[1]
    );
    let groups = of_kind(&all, "group_change");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["outcome"], "created");
    assert!(groups[0]["detail"].as_str().unwrap().contains("lab"));
    let all_ids = ids(&all);
    assert!(
        all_ids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {all_ids:?}"
    );

    // Filters.
    let d = owner.history("kind=denial");
    assert_eq!(
        ids(&d),
        ids(&denials.into_iter().cloned().collect::<Vec<_>>())
    );
    let grants = owner.history(&format!("requester={b}&kind=grant"));
    let leases: Vec<&str> = grants
        .iter()
        .map(|g| g["lease_id"].as_str().unwrap())
        .collect();
    assert_eq!(leases, vec![l4.as_str(), &l3, &l2, &l1]);
    assert!(owner
        .history(&format!("requester={a}&kind=grant"))
        .is_empty());
    let two = owner.history(&format!("node={a}&limit=2"));
    assert_eq!(ids(&two), all_ids[..2].to_vec(), "the newest two");
    let several = owner.history("kind=release,preemption");
    assert_eq!(several.len(), 2, "{several:?}");
    assert!(owner.history("since=2999-01-01T00:00:00Z").is_empty());
    assert!(owner.history("until=1000").is_empty());
    let at = grant["at_ms"].as_u64().unwrap();
    let window = owner.history(&format!("since={at}&until={at}&kind=grant"));
    assert!(
        window.iter().any(|g| g["lease_id"] == l1.as_str()),
        "{window:?}"
    );

    // --- The requester's side.
    let mine = asker.history("");
    let g = find(&mine, "grant", &l1);
    assert_eq!(g["role"], "requester");
    assert_eq!(g["requester"], b.as_str());
    assert_eq!(g["node"], a.as_str());
    assert!(g["detail"].as_str().unwrap().contains("owner"), "{g}");
    assert_eq!(find(&mine, "release", &l1)["role"], "requester");
    let pre = find(&mine, "preemption", &l2);
    assert_eq!(pre["role"], "requester");
    assert_eq!(pre["reason"], "preempted");
    let denied: Vec<&str> = of_kind(&mine, "denial")
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(denied, vec!["forbidden", "insufficient_capacity"]);
    for d in of_kind(&mine, "denial") {
        assert_eq!(d["role"], "requester");
        assert_eq!(d["node"], a.as_str(), "{d}");
    }
    assert_eq!(
        asker.history(&format!("node={a}&kind=grant")).len(),
        4,
        "grants by the owner, seen by the requester"
    );

    // --- An expiry: the holder dies without releasing.
    asker.kill();
    let (expiry, took) = eventually(
        "the owner expires the short lease",
        Duration::from_secs(20),
        || {
            owner
                .history("kind=expiry")
                .into_iter()
                .find(|e| e["lease_id"] == l4.as_str())
                .ok_or_else(|| "no expiry yet".to_owned())
        },
    );
    println!(
        "expiry recorded {} ms after the holder was killed",
        took.as_millis()
    );
    assert_eq!(expiry["outcome"], "expired");
    assert_eq!(expiry["requester"], b.as_str());
    assert_eq!(expiry["reason"], "not_renewed");

    // --- The CLI: JSON, a table, and a bad --since.
    let out = owner.cli(&["history", "--json", "--kind", "grant", "--requester", &b]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
    let out = owner.cli(&[
        "history", "--kind", "denial", "--since", "1h", "--limit", "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    for word in [
        "KIND",
        "REASON",
        "denial",
        "forbidden",
        "insufficient_capacity",
    ] {
        assert!(table.contains(word), "{word} in\n{table}");
    }
    assert_eq!(
        table.lines().count(),
        3,
        "a header and two denials:\n{table}"
    );
    let out = owner.cli(&["history", "--since", "abc"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--since") && err.contains("abc"), "{err}");

    // --- Durable: the same records after a restart, and ids go on.
    let before = owner.history("limit=10000");
    assert!(owner.terminate().success(), "{}", owner.log_text());
    owner.start_again();
    let after = owner.history("limit=10000");
    assert_eq!(ids(&after[after.len() - before.len()..]), ids(&before));
    assert_eq!(
        after[after.len() - before.len()..],
        before[..],
        "records kept as they were"
    );
    let (s, _) = owner.send("PUT", "/api/v1/strategy", r#"{"strategy": "random"}"#);
    assert_eq!(s, 200);
    let newest = &owner.history("kind=policy_change&limit=1")[0];
    assert!(
        newest["detail"].as_str().unwrap().contains("random"),
        "{newest}"
    );
    assert!(newest["id"].as_u64().unwrap() > before[0]["id"].as_u64().unwrap());
}

#[test]
fn malformed_history_queries_are_400s_naming_the_parameter() {
    let d = node("strict").start();
    let cases = [
        ("since=abc", "since"),
        ("since=-5m", "since"),
        ("since=5parsecs", "since"),
        ("until=2026-13-45T00:00:00Z", "until"),
        ("since=1h&until=2h", "until"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("limit=10001", "limit"),
        ("kind=bogus", "kind"),
        ("kind=grant,", "kind"),
        ("requester=nobody", "requester"),
        ("node=12D3KooW", "node"),
        ("limit=5&limit=6", "limit"),
        ("foo=bar", "foo"),
    ];
    for (query, param) in cases {
        let (s, v) = d.get(&format!("/api/v1/history?{query}"));
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["error"]["code"], "bad_query", "{query}: {v}");
        assert_eq!(v["error"]["param"], param, "{query}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(param), "{query}: {msg}");
    }
    // A well-formed query on a fresh node: its own changes only.
    let (s, v) = d.get("/api/v1/history?since=24h&kind=grant&limit=5");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, serde_json::json!([]));
}
