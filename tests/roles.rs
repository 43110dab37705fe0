//! Roles and API tokens with real processes on the virtual LAN (network
//! namespaces; needs root, skipped with a message otherwise).
//!
//! - Roles: an owner whose default role lacks `allocate` refuses a peer
//!   with `forbidden` naming the permission; a role given to the peer at
//!   runtime (stored, kept over a restart) or to a group it is in lets it
//!   allocate; a role with `allocate` but not `run_task` cannot run a task
//!   on its own lease; unknown roles and bad peer ids are refused and
//!   change nothing. A peer without `preempt` does not preempt (and is
//!   told why); with it, it does. A peer whose role loses `allocate` and
//!   `reserve` keeps its lease only to the end of its term.
//! - Tokens: a node refuses to start with its API on a non-loopback
//!   address and no token; with a token made offline by `lanswarm token
//!   create --data-dir`, it starts, and from another host on the LAN a
//!   request without a token is 401, a read-only token may read but not
//!   write (403), an admin token may write; malformed, unknown and revoked
//!   tokens are 401, and bad token requests change nothing.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::vlan::{Lan, API_PORT};
use common::{clean_env, http_on, output_within, BIN};

const CONVERGE: Duration = Duration::from_secs(20);

/// Ask `from` for one core on the node `on` only.
fn ask(lan: &Lan, from: usize, on: &str) -> (u16, Value) {
    lan.request(
        from,
        &json!({ "required_resources": { "cpu_cores": 1 }, "node_id": on }),
    )
}

fn patch_roles(lan: &Lan, i: usize, change: Value) -> (u16, Value) {
    lan.api(i, "PATCH", "/api/v1/roles", Some(&change))
}

fn message(e: &Value) -> &str {
    e["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn a_peer_whose_role_lacks_allocate_is_refused_with_forbidden() {
    let checks = "an owner whose default role is viewer refuses a peer's allocation with \
                  forbidden naming `allocate`; assigning the peer `user` at runtime lets it \
                  allocate (and survives a restart); a role given to a group lets its member \
                  allocate; unknown roles and bad peer ids are refused and change nothing";
    let owner_cfg = r#"
[roles]
default = "viewer"
[roles.custom]
booker = ["view", "reserve"]
allocator = ["allocate"]
[[tasks.templates]]
name = "hello"
argv = ["echo", "hello"]
"#;
    let Some(mut lan) = Lan::builder(checks).host(owner_cfg).hosts(2, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (a, b, c) = (lan.id(0), lan.id(1), lan.id(2));

    // The default role (viewer) lacks allocate: refused by the owner.
    let (status, e) = ask(&lan, 1, &a);
    assert_eq!(status, 403, "h1 asks h0: {e}");
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    assert!(
        message(&e).contains("`allocate`"),
        "names the permission: {e}"
    );
    assert!(message(&e).contains("viewer"), "names the role: {e}");
    assert!(lan.allocations(0)["granted"]
        .as_array()
        .is_some_and(Vec::is_empty));

    // Bad changes: a clear 400 each, and the roles stay as they were.
    let before = lan.get(0, "/api/v1/roles");
    assert_eq!(before["default_role"], "viewer");
    assert!(before["roles"]["booker"].is_array(), "{before}");
    for (change, want) in [
        (
            json!({ "assign_peers": { &b: "superuser" } }),
            "unknown role \"superuser\"",
        ),
        (
            json!({ "assign_peers": { "not-a-peer": "user" } }),
            "is not a peer id",
        ),
        (json!({ "default_role": "root" }), "unknown role \"root\""),
        (
            json!({ "assign_groups": { "lab": "nobody" } }),
            "unknown role \"nobody\"",
        ),
        (json!({ "grant": "everything" }), "unknown field"),
    ] {
        let (status, e) = patch_roles(&lan, 0, change.clone());
        assert_eq!(status, 400, "{change}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{e}");
        assert!(message(&e).contains(want), "{change}: {e}");
    }
    assert_eq!(lan.get(0, "/api/v1/roles"), before);

    // Give h1 `user`: it may allocate now; h2 still may not.
    let (status, r) = patch_roles(&lan, 0, json!({ "assign_peers": { &b: "user" } }));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["peers"][&b], "user", "{r}");
    let (status, alloc) = ask(&lan, 1, &a);
    assert_eq!(status, 201, "h1 with role user asks h0: {alloc}");
    assert_eq!(alloc["node_id"], a.as_str());

    // run_task is checked on its own: with a role that may allocate but
    // not run tasks, h1's task on its lease is refused; with `user` it runs.
    let task = json!({ "template": "hello", "allocation_id": alloc["allocation_id"] });
    let (status, r) = patch_roles(&lan, 0, json!({ "assign_peers": { &b: "allocator" } }));
    assert_eq!(status, 200, "{r}");
    let (status, e) = lan.api(1, "POST", "/api/v1/tasks", Some(&task));
    assert_eq!(status, 403, "{e}");
    assert_eq!(e["error"]["code"], "task_refused", "{e}");
    assert_eq!(e["error"]["reason"], "forbidden", "{e}");
    assert!(message(&e).contains("`run_task`"), "{e}");
    let (status, r) = patch_roles(&lan, 0, json!({ "assign_peers": { &b: "user" } }));
    assert_eq!(status, 200, "{r}");
    let (status, rec) = lan.api(1, "POST", "/api/v1/tasks", Some(&task));
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let (status, e) = ask(&lan, 2, &a);
    assert_eq!(status, 403, "h2 still has the default role: {e}");

    // A custom role with reserve but not allocate, given to h2 by the CLI.
    let out = lan.cli(0, &["roles", "assign", "booker", "--peer", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, e) = ask(&lan, 2, &a);
    assert_eq!(status, 403, "booker cannot allocate: {e}");
    assert!(message(&e).contains("\"booker\""), "{e}");

    // Roles by group: h2 joins h0's group "lab", which gets `user`; h2's
    // own assignment still decides until it is removed.
    let (status, g) = lan.api(
        0,
        "POST",
        "/api/v1/groups",
        Some(&json!({ "name": "lab", "max_members": 5, "open": true })),
    );
    assert_eq!(status, 201, "{g}");
    let gid = g["id"].as_str().expect("group id").to_owned();
    lan.eventually("h2 joins the group", CONVERGE, || {
        match lan.api(2, "POST", &format!("/api/v1/groups/{gid}/join"), None) {
            (200, v) if v["is_member"] == true => Ok(()),
            (s, v) => Err(format!("{s} {v}")),
        }
    });
    lan.eventually("h0 sees h2 in the group", CONVERGE, || {
        let g = lan.get(0, &format!("/api/v1/groups/{gid}"));
        let members = g["members"].to_string();
        members.contains(&c).then_some(()).ok_or(members)
    });
    let out = lan.cli(0, &["roles", "assign", "user", "--group", "lab"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, e) = ask(&lan, 2, &a);
    assert_eq!(
        status, 403,
        "the peer assignment decides over the group's: {e}"
    );
    let out = lan.cli(0, &["roles", "unassign", "--peer", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, alloc) = ask(&lan, 2, &a);
    assert_eq!(
        status, 201,
        "h2 allocates through its group's role: {alloc}"
    );

    // Stored: after a restart h0 still has the runtime assignments.
    lan.restart(0);
    let r = lan.get(0, "/api/v1/roles");
    assert_eq!(r["peers"][&b], "user", "{r}");
    assert_eq!(r["groups"]["lab"], "user", "{r}");
    assert_eq!(r["default_role"], "viewer", "{r}");
}

#[test]
fn preempting_needs_the_preempt_permission() {
    let checks = "with preemption on and default role user, a peer's high-priority request \
                  does not preempt and its refusal says preemption was not tried for lack of \
                  `preempt`; with role operator the same request preempts the low lease";
    let owner_cfg = "[scheduler]\npreemption = true\n[roles]\ndefault = \"user\"";
    let Some(mut lan) = Lan::builder(checks).host(owner_cfg).hosts(2, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (a, c) = (lan.id(0), lan.id(2));
    lan.eventually("h2 sees that h0 preempts", CONVERGE, || {
        let v = lan.view_of(2, &a).ok_or("h2 does not know h0")?;
        (v["preemption"] == true)
            .then_some(())
            .ok_or_else(|| format!("{v}"))
    });
    let want = |cores: u32, priority: &str| json!({ "required_resources": { "cpu_cores": cores }, "node_id": &a, "priority": priority });
    let (status, low) = lan.request(1, &want(4, "low"));
    assert_eq!(status, 201, "{low}");
    let granted = |lan: &Lan| -> Vec<String> {
        lan.allocations(0)["granted"]
            .as_array()
            .expect("granted is an array")
            .iter()
            .map(|l| l["allocation_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let before = granted(&lan);
    assert_eq!(before.len(), 1);
    // A requester tries preemption only on an owner it sees full: wait
    // until h2 has h0's announcement of the low lease.
    lan.eventually("h2 sees h0 full", CONVERGE, || {
        let v = lan.view_of(2, &a).ok_or("h2 does not know h0")?;
        (v["resources"]["free"]["cpu_cores"] == 0)
            .then_some(())
            .ok_or_else(|| format!("{}", v["resources"]["free"]))
    });

    let (status, e) = lan.request(2, &want(2, "high"));
    assert_eq!(status, 503, "a user cannot preempt: {e}");
    let text = e.to_string();
    assert!(
        text.contains("preemption was not tried") && text.contains("`preempt`"),
        "the refusal says why: {e}"
    );
    assert_eq!(granted(&lan), before, "nothing was preempted");

    let (status, r) = patch_roles(&lan, 0, json!({ "assign_peers": { &c: "operator" } }));
    assert_eq!(status, 200, "{r}");
    let (status, high) = lan.request(2, &want(2, "high"));
    assert_eq!(status, 201, "an operator preempts: {high}");
    assert_eq!(
        granted(&lan),
        vec![high["allocation_id"].as_str().unwrap().to_owned()]
    );
}

/// One request to `ip:7700` from inside the namespace `ns`.
fn call(
    ns: &str,
    ip: std::net::Ipv4Addr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let addr = SocketAddr::from((ip, API_PORT));
    let s = lanswarm::sim::netns::connect_in(ns, addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr} from {ns}: {e}"));
    let body = body.map(Value::to_string);
    http_on(s, &addr.to_string(), method, path, body.as_deref(), token)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// `lanswarm --json token <args> --data-dir <dir>` with no node involved.
fn token_offline(args: &[&str], dir: &std::path::Path) -> (bool, Value, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--json")
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(dir);
    clean_env(&mut cmd);
    let out = output_within(&mut cmd, Duration::from_secs(30)).expect("running lanswarm token");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_api_on_a_non_loopback_address_needs_tokens() {
    let checks = "a node with its API on 0.0.0.0 and no token refuses to start and says why; \
                  with a token made offline it starts; from another host, no token is 401, \
                  a read-only token may GET (and /metrics) but a write is 403, an admin token \
                  may write and manage tokens; malformed, unknown and revoked tokens are 401; \
                  bad token requests change nothing; /healthz stays open";
    let Some(mut lan) = Lan::builder(checks)
        .host("[api]\nlisten = \"0.0.0.0:7700\"")
        .bare_host()
        .build()
    else {
        return;
    };
    let data = lan.data_dir(0);

    // No token at all: the node refuses to start, and says why.
    let cfg_path = data.with_file_name("refused.toml");
    std::fs::write(&cfg_path, lan.config_of(0)).expect("writing the config");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lan.netns(0), BIN, "run", "--config"])
        .arg(&cfg_path);
    clean_env(&mut cmd);
    let out = output_within(&mut cmd, Duration::from_secs(60)).expect("running lanswarm run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a token: {stderr}");
    assert!(
        stderr.contains("a token is required because api.listen (0.0.0.0:7700) is not a loopback")
            && stderr.contains("lanswarm token create"),
        "says why and what to do: {stderr}"
    );

    // The first token, made offline, before the node is reachable.
    let (ok, made, err) = token_offline(&["create", "--role", "admin", "--name", "first"], &data);
    assert!(ok, "{err}");
    let admin = made["secret"].as_str().expect("secret").to_owned();
    assert_eq!(made["token"]["role"], "admin");
    let stored = std::fs::read_to_string(data.join("api-tokens.json")).expect("token file");
    assert!(!stored.contains(&admin), "the secret is stored hashed");

    lan.start(0);
    let (ns, ip) = (lan.netns(1).to_owned(), lan.ip(0));
    let get = |path: &str, token: Option<&str>| call(&ns, ip, "GET", path, None, token);

    // No token: 401; /healthz stays open.
    let (status, e) = get("/api/v1/node", None);
    assert_eq!(status, 401, "{e}");
    assert_eq!(e["error"]["code"], "unauthorized");
    assert_eq!(get("/healthz", None).0, 200);
    assert_eq!(get("/metrics", None).0, 401);
    // Unknown and malformed tokens: 401.
    for bad in ["lsw_0000", "not a token", &"x".repeat(5000)] {
        let (status, e) = get("/api/v1/node", Some(bad));
        assert_eq!(status, 401, "{bad:?}: {e}");
    }

    // Admin: reads, writes, makes a read-only token.
    let (status, node) = get("/api/v1/node", Some(&admin));
    assert_eq!(status, 200, "{node}");
    let (status, made) = call(
        &ns,
        ip,
        "POST",
        "/api/v1/tokens",
        Some(&json!({ "role": "read-only", "name": "dash" })),
        Some(&admin),
    );
    assert_eq!(status, 201, "{made}");
    let ro = made["secret"].as_str().expect("secret").to_owned();

    // Bad token requests: clear errors, nothing changes.
    for (body, code) in [
        (json!({ "role": "root" }), 400),
        (json!({ "role": "admin", "name": "dash" }), 409),
        (json!({ "role": "admin", "name": "has space" }), 400),
        (json!({ "role": "admin", "extra": 1 }), 400),
    ] {
        let (status, e) = call(&ns, ip, "POST", "/api/v1/tokens", Some(&body), Some(&admin));
        assert_eq!(status, code, "{body}: {e}");
    }
    let (status, e) = call(&ns, ip, "DELETE", "/api/v1/tokens/nope", None, Some(&admin));
    assert_eq!(status, 404, "{e}");
    let (_, list) = get("/api/v1/tokens", Some(&admin));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert!(
        !list.to_string().contains("sha256"),
        "no hashes listed: {list}"
    );

    // Read-only: GETs (and /metrics) yes, writes and token management no.
    assert_eq!(get("/api/v1/nodes", Some(&ro)).0, 200);
    assert_eq!(get("/metrics", Some(&ro)).0, 200);
    assert_eq!(get("/api/v1/tokens", Some(&ro)).0, 403);
    let want = json!({ "required_resources": { "cpu_cores": 1 } });
    let (status, e) = call(
        &ns,
        ip,
        "POST",
        "/api/v1/allocations",
        Some(&want),
        Some(&ro),
    );
    assert_eq!(status, 403, "{e}");
    assert_eq!(e["error"]["code"], "forbidden");
    let (status, e) = call(
        &ns,
        ip,
        "PATCH",
        "/api/v1/roles",
        Some(&json!({ "default_role": "none" })),
        Some(&ro),
    );
    assert_eq!(status, 403, "{e}");
    assert_eq!(
        get("/api/v1/roles", Some(&admin)).1["default_role"],
        "operator"
    );
    let (_, allocs) = get("/api/v1/allocations", Some(&admin));
    assert!(
        allocs["granted"].as_array().is_some_and(Vec::is_empty),
        "{allocs}"
    );

    // Admin writes.
    let (status, alloc) = call(
        &ns,
        ip,
        "POST",
        "/api/v1/allocations",
        Some(&want),
        Some(&admin),
    );
    assert_eq!(status, 201, "{alloc}");

    // Revoked offline while the node runs: 401 at once.
    let (ok, _, err) = token_offline(&["revoke", "dash"], &data);
    assert!(ok, "{err}");
    let (status, e) = get("/api/v1/nodes", Some(&ro));
    assert_eq!(status, 401, "a revoked token: {e}");
    // Revoked through the API: the admin token itself.
    let (status, gone) = call(
        &ns,
        ip,
        "DELETE",
        "/api/v1/tokens/first",
        None,
        Some(&admin),
    );
    assert_eq!(status, 200, "{gone}");
    assert_eq!(get("/api/v1/node", Some(&admin)).0, 401);
    let (ok, list, _) = token_offline(&["list"], &data);
    assert!(ok && list.as_array().is_some_and(Vec::is_empty), "{list}");
}

#[test]
fn a_role_taken_away_ends_a_lease_at_its_term() {
    let checks = "roles are checked again at renewal: a peer whose role loses allocate and \
                  reserve keeps its lease only to the end of its term, and the owner takes the \
                  capacity back; its reservation is ended when it would start";
    let Some(mut lan) = Lan::builder(checks).hosts(2, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let a = lan.id(0);
    let b = lan.id(1);
    // A 3 s term, renewed by the holder about every second.
    let (status, alloc) = lan.request(
        1,
        &json!({ "required_resources": { "cpu_cores": 1 }, "node_id": a, "timeout_secs": 3 }),
    );
    assert_eq!(status, 201, "{alloc}");
    let id = alloc["allocation_id"]
        .as_str()
        .expect("allocation id")
        .to_owned();
    // And a reservation that starts in 8 s.
    let (status, resv) = lan.api(
        1,
        "POST",
        "/api/v1/reservations",
        Some(&json!({
            "required_resources": { "cpu_cores": 1 },
            "node_id": a,
            "start_in_secs": 8,
            "duration_secs": 60
        })),
    );
    assert_eq!(status, 201, "{resv}");
    let rid = resv["reservation_id"]
        .as_str()
        .expect("reservation id")
        .to_owned();
    let granted = |lan: &Lan| lan.allocations(0)["granted"].to_string();
    // Renewed past its first term while the role allows it.
    std::thread::sleep(Duration::from_secs(4));
    assert!(granted(&lan).contains(&id), "renewed: {}", granted(&lan));
    let (status, r) = patch_roles(&lan, 0, json!({ "assign_peers": { &b: "viewer" } }));
    assert_eq!(status, 200, "{r}");
    let taken = std::time::Instant::now();
    lan.eventually("the owner takes the lease back", CONVERGE, || {
        let g = granted(&lan);
        (!g.contains(&id)).then_some(()).ok_or(g)
    });
    // Without the check at renewal it would be renewed for ever (and
    // this wait would run out).
    let after = taken.elapsed();
    println!("role taken away: lease gone {} ms later", after.as_millis());
    // The reservation, booked while the role allowed it, is ended
    // (released) when it would start, and the holder is told; it never
    // holds a lease for it.
    lan.eventually("the holder sees its reservation ended", CONVERGE, || {
        let held = lan.get(1, "/api/v1/reservations")["held"].clone();
        let r = held
            .as_array()
            .and_then(|h| h.iter().find(|r| r["reservation_id"] == rid.as_str()))
            .cloned()
            .ok_or_else(|| format!("not listed: {held}"))?;
        (r["status"] == "released")
            .then_some(())
            .ok_or_else(|| format!("{r}"))
    });
    assert!(!granted(&lan).contains(&rid), "{}", granted(&lan));
    let held = lan.allocations(1)["held"].to_string();
    assert!(!held.contains(&rid), "{held}");
}
