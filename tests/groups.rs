//! Swarm groups, access control and resource pools with real `lanswarm`
//! processes on the virtual LAN (`tests/common/vlan.rs`): the owner's
//! policy against Noise-authenticated peer ids, group state gossiped,
//! synced and merged with no coordinator, partitions healed, pools placed
//! on. They need root for `ip netns`; without it each test says what it
//! would have checked and passes. What is measured is printed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::vlan::Lan;

/// Bound on discovery and convergence here; typical figures are far below.
const CONVERGE: Duration = Duration::from_secs(20);

/// Every group host `i` knows: id → sorted member ids.
fn membership(lan: &Lan, i: usize) -> BTreeMap<String, BTreeSet<String>> {
    lan.get(i, "/api/v1/groups")
        .as_array()
        .expect("groups is an array")
        .iter()
        .map(|g| {
            let members = g["members"]
                .as_array()
                .expect("members is an array")
                .iter()
                .map(|m| m["id"].as_str().expect("member id").to_owned())
                .collect();
            (g["id"].as_str().expect("group id").to_owned(), members)
        })
        .collect()
}

fn ids(xs: &[&str]) -> BTreeSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Wait until every host in `hosts` reports `want` as its groups.
fn wait_membership(
    lan: &Lan,
    hosts: &[usize],
    want: &BTreeMap<String, BTreeSet<String>>,
    what: &str,
) -> Duration {
    lan.eventually(what, CONVERGE, || {
        for &i in hosts {
            let got = membership(lan, i);
            if &got != want {
                return Err(format!("h{i} has {got:?}, want {want:?}"));
            }
        }
        Ok(())
    })
    .1
}

/// Wait for the three hosts to converge, make an open group on h0, have h1
/// and h2 join it, and wait until all three agree. Gives the group id and
/// the three node ids.
fn three_in_one_open_group(lan: &mut Lan, name: &str) -> (String, [String; 3]) {
    lan.wait_converged(CONVERGE);
    let nodes = [lan.id(0), lan.id(1), lan.id(2)];
    let g = create_group(lan, 0, name, 10, true);
    for i in [1, 2] {
        lan.eventually("joining the open group", CONVERGE, || {
            match group_action(lan, i, &g, "join", None) {
                (200, _) => Ok(()),
                (s, v) => Err(format!("h{i}: {s} {v}")),
            }
        });
    }
    let all = BTreeMap::from([(g.clone(), nodes.iter().map(String::clone).collect())]);
    wait_membership(lan, &[0, 1, 2], &all, "all three in the group");
    (g, nodes)
}

fn create_group(lan: &Lan, i: usize, name: &str, max: u32, open: bool) -> String {
    let (status, g) = lan.api(
        i,
        "POST",
        "/api/v1/groups",
        Some(&json!({ "name": name, "max_members": max, "open": open })),
    );
    assert_eq!(status, 201, "creating group {name} on h{i}: {g}");
    assert_eq!(g["is_member"], true, "the creator is a member: {g}");
    g["id"].as_str().expect("group id").to_owned()
}

/// `POST /api/v1/groups/<g>/<action>` on host `i`.
fn group_action(lan: &Lan, i: usize, g: &str, action: &str, body: Option<&Value>) -> (u16, Value) {
    lan.api(i, "POST", &format!("/api/v1/groups/{g}/{action}"), body)
}

fn patch_access(lan: &Lan, i: usize, change: Value) -> Value {
    let (status, p) = lan.api(i, "PATCH", "/api/v1/access", Some(&change));
    assert_eq!(status, 200, "PATCH access {change} on h{i}: {p}");
    p
}

fn ask(lan: &Lan, from: usize, on: &str) -> (u16, Value) {
    lan.request(
        from,
        &json!({ "required_resources": { "cpu_cores": 1 }, "node_id": on }),
    )
}

fn granted_to(lan: &Lan, owner: usize) -> Vec<String> {
    lan.allocations(owner)["granted"]
        .as_array()
        .expect("granted is an array")
        .iter()
        .map(|a| a["holder"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn owner_policy_group_only_allow_deny_and_remote_toggle() {
    let checks = "a closed group admits only invited nodes; with group_peers_only the owner \
                  serves a member and refuses an outsider with forbidden; allow and deny lists \
                  work; turning remote access off refuses the very next request; the policy \
                  survives a restart";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (a, b, c) = (lan.id(0), lan.id(1), lan.id(2));

    let g = create_group(&lan, 0, "lab", 5, false);
    lan.eventually("h1 and h2 see the group", CONVERGE, || {
        for i in [1, 2] {
            if lan.api(i, "GET", &format!("/api/v1/groups/{g}"), None).0 != 200 {
                return Err(format!("h{i} does not know group {g} yet"));
            }
        }
        Ok(())
    });
    // Closed: no invitation, no membership.
    let (status, e) = group_action(&lan, 2, &g, "join", None);
    assert_eq!(status, 409, "joining a closed group uninvited: {e}");
    assert_eq!(e["error"]["code"], "conflict");

    let (status, inv) = group_action(&lan, 0, &g, "invite", Some(&json!({ "node": b })));
    assert_eq!(status, 200, "invite: {inv}");
    lan.eventually(
        "h1 joins once it has seen the invitation",
        CONVERGE,
        || match group_action(&lan, 1, &g, "join", None) {
            (200, v) if v["is_member"] == true => Ok(()),
            (s, v) => Err(format!("{s} {v}")),
        },
    );
    let want = BTreeMap::from([(g.clone(), ids(&[&a, &b]))]);
    let took = wait_membership(
        &lan,
        &[0, 1, 2],
        &want,
        "every host sees h0 and h1 in the group",
    );
    println!(
        "membership converged on 3 hosts {} ms after the join",
        took.as_millis()
    );

    let p = patch_access(&lan, 0, json!({ "group_peers_only": true }));
    assert_eq!(p["group_peers_only"], true);

    // The member is served; the outsider is refused by the owner itself.
    let (status, alloc) = ask(&lan, 1, &a);
    assert_eq!(status, 201, "member asks the owner: {alloc}");
    let (status, e) = ask(&lan, 2, &a);
    assert_eq!(status, 403, "outsider asks the owner: {e}");
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("group"),
        "the refusal says why: {e}"
    );
    // Untargeted, the outsider's placement skips the owner (its announced
    // hint) and lands elsewhere.
    lan.eventually("h2 sees h0's group-only hint", CONVERGE, || {
        let v = lan.view_of(2, &a).ok_or("h2 does not know h0")?;
        (v["access"]["group_peers_only"] == true)
            .then_some(())
            .ok_or_else(|| format!("{}", v["access"]))
    });
    for _ in 0..3 {
        let (status, v) = lan.request(2, &json!({ "required_resources": { "cpu_cores": 1 } }));
        assert_eq!(status, 201, "{v}");
        assert_ne!(
            v["node_id"],
            a.as_str(),
            "placed on a node that refuses it: {v}"
        );
    }
    assert_eq!(
        granted_to(&lan, 0),
        vec![b.clone()],
        "only the member holds a lease on h0"
    );

    // Allow list: the outsider is served although it shares no group.
    patch_access(&lan, 0, json!({ "allow_add": [c] }));
    let (status, v) = ask(&lan, 2, &a);
    assert_eq!(status, 201, "allowed outsider: {v}");

    // Deny list beats group membership; a node on both lists is refused
    // as bad input and nothing changes.
    patch_access(&lan, 0, json!({ "deny_add": [b] }));
    let (status, e) = ask(&lan, 1, &a);
    assert_eq!(
        (status, &e["error"]["code"]),
        (403, &json!("forbidden")),
        "{e}"
    );
    let before = lan.get(0, "/api/v1/access");
    let (status, e) = lan.api(
        0,
        "PATCH",
        "/api/v1/access",
        Some(&json!({ "allow_add": [b] })),
    );
    assert_eq!(status, 400, "a node on both lists: {e}");
    assert_eq!(
        lan.get(0, "/api/v1/access"),
        before,
        "a refused change changes nothing"
    );

    // Remote access off: the very next request is refused.
    let leases_before = granted_to(&lan, 0).len();
    patch_access(&lan, 0, json!({ "allow_remote": false }));
    let (status, e) = ask(&lan, 2, &a);
    assert_eq!(
        (status, &e["error"]["code"]),
        (403, &json!("forbidden")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("remote access"),
        "{e}"
    );
    assert_eq!(
        granted_to(&lan, 0).len(),
        leases_before,
        "nothing allocated"
    );
    // The owner itself is not remote.
    let (status, v) = ask(&lan, 0, &a);
    assert_eq!(status, 201, "the owner serves itself: {v}");

    // The policy and the group survive a restart.
    let policy = lan.get(0, "/api/v1/access");
    lan.restart(0);
    assert_eq!(lan.get(0, "/api/v1/access"), policy, "policy after restart");
    assert_eq!(membership(&lan, 0), want, "groups after restart");
}

#[test]
fn groups_converge_after_a_partition_heals() {
    let checks = "with one host cut off, membership changes on both sides of the partition; \
                  once the link is back every host converges to the same groups (time measured)";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    let (g, [a, _, c]) = three_in_one_open_group(&mut lan, "shared");

    lan.link_down(2);
    // Side {h0, h1}: h1 leaves and h0 creates a second group.
    let (status, v) = group_action(&lan, 1, &g, "leave", None);
    assert_eq!((status, &v["is_member"]), (200, &json!(false)), "{v}");
    let h = create_group(&lan, 0, "west", 4, true);
    // Side {h2}: h2 leaves too, and creates its own group.
    let (status, v) = group_action(&lan, 2, &g, "leave", None);
    assert_eq!((status, &v["is_member"]), (200, &json!(false)), "{v}");
    let k = create_group(&lan, 2, "east", 4, true);
    // While cut off, h2 has not seen the other side's changes.
    assert!(
        !membership(&lan, 2).contains_key(&h),
        "h2 cannot know h0's new group yet"
    );
    std::thread::sleep(Duration::from_secs(3));

    lan.link_up(2);
    let healed = Instant::now();
    let want = BTreeMap::from([(g.clone(), ids(&[&a])), (h, ids(&[&a])), (k, ids(&[&c]))]);
    wait_membership(
        &lan,
        &[0, 1, 2],
        &want,
        "every host converges after the heal",
    );
    println!(
        "partition heal: all 3 hosts agreed on group membership {} ms after the link came back",
        healed.elapsed().as_millis()
    );
}

#[test]
fn a_new_node_learns_groups_and_pools_on_connect_and_they_survive_restarts() {
    let checks = "a node started after groups and pools were made learns them as soon as it \
                  connects (sync on connect, time measured), and a restarted node keeps them";
    let Some(mut lan) = Lan::builder(checks)
        .hosts(2, "[labels]\ntier = \"gpu\"")
        .host("[labels]\ntier = \"cpu\"")
        .build()
    else {
        return;
    };
    lan.start(0);
    lan.start(1);
    lan.wait_converged(CONVERGE);
    let (a, b) = (lan.id(0), lan.id(1));
    let g = create_group(&lan, 0, "early", 3, false);
    group_action(&lan, 0, &g, "invite", Some(&json!({ "node": b })));
    lan.eventually("h1 joins", CONVERGE, || {
        match group_action(&lan, 1, &g, "join", None) {
            (200, _) => Ok(()),
            (s, v) => Err(format!("{s} {v}")),
        }
    });
    let (status, pool) = lan.api(
        0,
        "POST",
        "/api/v1/pools",
        Some(&json!({ "name": "gpus", "labels": { "tier": "gpu" } })),
    );
    assert_eq!(status, 201, "{pool}");
    let want = BTreeMap::from([(g.clone(), ids(&[&a, &b]))]);
    wait_membership(&lan, &[0, 1], &want, "h0 and h1 agree");

    lan.start(2);
    let (_, first_peer) = lan.eventually("h2 discovers a peer", CONVERGE, || {
        (lan.nodes(2).len() > 1)
            .then_some(())
            .ok_or("alone".to_owned())
    });
    let t = Instant::now();
    wait_membership(&lan, &[2], &want, "h2 learns the group");
    lan.eventually("h2 learns the pool", CONVERGE, || {
        match lan.api(2, "GET", "/api/v1/pools/gpus", None) {
            (200, p) => Ok(p),
            (s, v) => Err(format!("{s} {v}")),
        }
    });
    let learnt = t.elapsed();
    println!(
        "new node: first peer after {} ms, groups and pools known {} ms after that",
        first_peer.as_millis(),
        learnt.as_millis()
    );
    assert!(
        learnt < Duration::from_secs(3),
        "groups must come with the connection, not with the next anti-entropy round \
         (took {} ms)",
        learnt.as_millis()
    );

    // A clean restart and a crash both keep groups and pools.
    lan.restart(1);
    lan.kill9(2);
    lan.start(2);
    for i in [1, 2] {
        assert_eq!(membership(&lan, i), want, "h{i} after restart");
        let (status, p) = lan.api(i, "GET", "/api/v1/pools/gpus", None);
        assert_eq!(status, 200, "pool on h{i} after restart: {p}");
    }
}

#[test]
fn pool_and_group_requests_place_only_on_their_nodes() {
    let checks = "a pool made on one node is seen by all with aggregate capacity, requests \
                  naming it land only on its nodes, requests naming a group land only on \
                  members, unknown pools and groups are refused, and a delete spreads";
    let gpu_host = "[labels]\ntier = \"gpu\"\n[[resources.gpus]]\nname = \"Synthetic GPU\"\nmemory = \"24GiB\"";
    let Some(mut lan) = Lan::builder(checks)
        .hosts(2, gpu_host)
        .host("[labels]\ntier = \"cpu\"")
        .start()
    else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (a, b) = (lan.id(0), lan.id(1));
    // Made on the node outside the pool, explicit id plus label.
    let (status, pool) = lan.api(
        2,
        "POST",
        "/api/v1/pools",
        Some(&json!({ "name": "gpus", "labels": { "tier": "gpu" } })),
    );
    assert_eq!(status, 201, "{pool}");
    let (p, _) = lan.eventually(
        "every host sees the pool with both members",
        CONVERGE,
        || {
            let mut last = Value::Null;
            for i in 0..3 {
                let (s, p) = lan.api(i, "GET", "/api/v1/pools/gpus", None);
                if s != 200 || p["capacity"]["nodes"] != 2 {
                    return Err(format!("h{i}: {s} {p}"));
                }
                last = p;
            }
            Ok(last)
        },
    );
    let members: BTreeSet<String> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, ids(&[&a, &b]));
    assert_eq!(
        p["capacity"]["cpu_cores_total"], 8,
        "two nodes lending 4 cores: {p}"
    );
    assert_eq!(p["capacity"]["memory_mb_total"], 2 * 8 * 1024, "{p}");
    // Seed 004's GPU pooling: the pool's GPUs, whole and free, summed.
    assert_eq!(p["capacity"]["gpus_total"], 2, "{p}");
    assert_eq!(p["capacity"]["gpu_memory_mb_total"], 2 * 24 * 1024, "{p}");
    let (status, v) = lan.request(
        2,
        &json!({ "required_resources": { "gpu_count": 1 }, "pool": "gpus" }),
    );
    assert_eq!(status, 201, "a whole GPU from the pool: {v}");
    lan.eventually("the pool shows one GPU taken", CONVERGE, || {
        let c = &lan.get(2, "/api/v1/pools/gpus")["capacity"];
        (c["gpus_free"] == 1 && c["gpu_memory_mb_free"] == 24 * 1024)
            .then_some(())
            .ok_or_else(|| format!("{c}"))
    });
    let (status, _) = lan.release(2, v["allocation_id"].as_str().unwrap());
    assert_eq!(status, 200);

    let mut on = BTreeSet::new();
    for _ in 0..4 {
        let (status, v) = lan.request(
            2,
            &json!({ "required_resources": { "cpu_cores": 1 }, "pool": "gpus" }),
        );
        assert_eq!(status, 201, "{v}");
        on.insert(v["node_id"].as_str().unwrap().to_owned());
    }
    assert!(
        on.is_subset(&ids(&[&a, &b])),
        "placed outside the pool: {on:?}"
    );
    lan.eventually("pool free capacity reflects the leases", CONVERGE, || {
        let p = lan.get(2, "/api/v1/pools/gpus");
        (p["capacity"]["cpu_cores_free"] == 4)
            .then_some(())
            .ok_or_else(|| format!("{}", p["capacity"]))
    });

    let g = create_group(&lan, 1, "solo", 2, true);
    lan.eventually("h2 sees the group", CONVERGE, || {
        match lan.api(2, "GET", &format!("/api/v1/groups/{g}"), None).0 {
            200 => Ok(()),
            s => Err(s.to_string()),
        }
    });
    let (status, v) = lan.request(
        2,
        &json!({ "required_resources": { "cpu_cores": 1 }, "group": g }),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["node_id"], b.as_str(), "the group's only member: {v}");

    for body in [
        json!({ "required_resources": { "cpu_cores": 1 }, "pool": "nope" }),
        json!({ "required_resources": { "cpu_cores": 1 }, "group": "nope" }),
    ] {
        let held = lan.allocations(2)["held"].as_array().unwrap().len();
        let (status, e) = lan.request(2, &body);
        assert_eq!(status, 404, "{body}: {e}");
        assert_eq!(lan.allocations(2)["held"].as_array().unwrap().len(), held);
    }

    let (status, _) = lan.api(0, "DELETE", "/api/v1/pools/gpus", None);
    assert_eq!(status, 204);
    lan.eventually("the delete reaches every host", CONVERGE, || {
        for i in 0..3 {
            let (s, _) = lan.api(i, "GET", "/api/v1/pools/gpus", None);
            if s != 404 {
                return Err(format!("h{i} still has the pool"));
            }
        }
        Ok(())
    });
}

#[test]
fn two_nodes_racing_for_the_last_seat_end_with_one_member() {
    let checks = "two nodes join a group with one seat left at the same moment; every host \
                  ends with the same members, at most max_members, and the loser sees that \
                  it is not a member";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (a, b, c) = (lan.id(0), lan.id(1), lan.id(2));
    let g = create_group(&lan, 0, "pair", 2, true);
    lan.eventually("h1 and h2 see the group", CONVERGE, || {
        for i in [1, 2] {
            if lan.api(i, "GET", &format!("/api/v1/groups/{g}"), None).0 != 200 {
                return Err(format!("h{i}"));
            }
        }
        Ok(())
    });
    let barrier = Barrier::new(2);
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = [1, 2]
            .into_iter()
            .map(|i| {
                let (lan, barrier, g) = (&lan, &barrier, &g);
                s.spawn(move || {
                    barrier.wait();
                    group_action(lan, i, g, "join", None)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!(
        "racing joins answered: {:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let (final_members, _) = lan.eventually("every host agrees on two members", CONVERGE, || {
        let m0 = membership(&lan, 0);
        for i in [1, 2] {
            if membership(&lan, i) != m0 {
                return Err(format!("h{i} disagrees with h0"));
            }
        }
        let members = m0.get(&g).cloned().unwrap_or_default();
        (members.len() == 2)
            .then_some(members)
            .ok_or_else(|| format!("{m0:?}"))
    });
    assert!(final_members.contains(&a));
    let winner = if final_members.contains(&b) { 1 } else { 2 };
    let loser = 3 - winner;
    assert!(final_members.contains([&b, &c][winner - 1]));
    let v = lan.get(loser, &format!("/api/v1/groups/{g}"));
    assert_eq!(v["is_member"], false, "the loser knows it lost: {v}");
    let v = lan.get(winner, &format!("/api/v1/groups/{g}"));
    assert_eq!(v["is_member"], true, "{v}");
}

#[test]
fn groups_converge_after_a_long_partition_that_outlives_the_connections() {
    let checks = "with one host cut off long enough for its peers to mark it offline, \
                  membership changes on both sides still converge once the link is back \
                  (time measured, reconnection included)";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    let (g, [a, _, c]) = three_in_one_open_group(&mut lan, "long");

    lan.link_down(2);
    let cut = Instant::now();
    lan.eventually("h0 marks h2 offline", Duration::from_secs(40), || {
        let v = lan.view_of(0, &c).ok_or("h0 forgot h2")?;
        (v["status"] == "offline")
            .then_some(())
            .ok_or_else(|| format!("h2 is {}", v["status"]))
    });
    let (status, _) = group_action(&lan, 1, &g, "leave", None);
    assert_eq!(status, 200);
    let (status, _) = group_action(&lan, 2, &g, "leave", None);
    assert_eq!(status, 200);
    let k = create_group(&lan, 2, "island", 3, false);
    // Long enough for the ping protocol to drop the connections.
    std::thread::sleep(Duration::from_secs(25).saturating_sub(cut.elapsed()));

    lan.link_up(2);
    let healed = Instant::now();
    let want = BTreeMap::from([(g.clone(), ids(&[&a])), (k, ids(&[&c]))]);
    wait_membership(
        &lan,
        &[0, 1, 2],
        &want,
        "every host converges after the heal",
    );
    println!(
        "long partition ({} s): all 3 hosts agreed on group membership {} ms after the link \
         came back",
        healed.duration_since(cut).as_secs(),
        healed.elapsed().as_millis()
    );
}
