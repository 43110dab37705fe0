//! Failure detection with real `lanswarm` processes on the virtual LAN
//! (`tests/common/vlan.rs`): how fast the other nodes see a node die, drop
//! off the network, come back and leave. Each test prints the measured
//! times and asserts them within generous bounds (the targets are 1 s for
//! a dead process, 2 s to suspect and 3 s to give up on a silent one).
//! They need root for `ip netns`; without it each test says what it would
//! have checked and passes.

mod common;

use std::time::{Duration, Instant};

use common::vlan::{Lan, Signal};

const CONVERGE: Duration = Duration::from_secs(20);

/// Wait until every host in `watchers` sees host `target` with `status`;
/// returns how long that took, measured from `since`.
fn until_seen(
    lan: &Lan,
    watchers: &[usize],
    target: &str,
    status: &str,
    since: Instant,
) -> Duration {
    lan.eventually(
        &format!("{watchers:?} see {target} {status}"),
        CONVERGE,
        || {
            for &i in watchers {
                let seen = lan.view_of(i, target).map(|v| v["status"].clone());
                match seen {
                    Some(s) if s == status => {}
                    other => return Err(format!("h{i} sees {other:?}")),
                }
            }
            Ok(())
        },
    );
    since.elapsed()
}

#[test]
fn a_killed_node_is_offline_everywhere_within_a_second() {
    let checks = "after kill -9 of a node, every other node marks it offline (target 1 s), \
                  and it is online again as soon as it restarts";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let victim = lan.id(2);
    let t0 = Instant::now();
    lan.kill9(2);
    let took = until_seen(&lan, &[0, 1], &victim, "offline", t0);
    eprintln!("measured: killed node offline on every peer after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let t0 = Instant::now();
    lan.start(2);
    let took = until_seen(&lan, &[0, 1], &victim, "online", t0);
    eprintln!("measured: restarted node online again after {took:?} (start included)");
}

#[test]
fn a_node_cut_off_is_suspect_then_offline_then_online_again() {
    let checks = "a node whose link goes down is suspect (target 2 s), then offline (target \
                  3 s) on every other node, and online again when the link returns";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let victim = lan.id(2);
    let t0 = Instant::now();
    lan.link_down(2);
    let suspect = lan
        .eventually("h0 and h1 stop seeing h2 online", CONVERGE, || {
            for i in [0, 1] {
                let s = lan.view_of(i, &victim).map(|v| v["status"].clone());
                if s.as_ref().is_some_and(|s| s == "online") {
                    return Err(format!("h{i}: still online"));
                }
            }
            Ok(())
        })
        .1;
    let offline = until_seen(&lan, &[0, 1], &victim, "offline", t0);
    eprintln!("measured: cut-off node suspect after {suspect:?}, offline after {offline:?}");
    assert!(suspect < Duration::from_secs(5), "{suspect:?}");
    assert!(offline < Duration::from_secs(7), "{offline:?}");
    let t0 = Instant::now();
    lan.link_up(2);
    let back = until_seen(&lan, &[0, 1], &victim, "online", t0);
    eprintln!("measured: online again {back:?} after the link returned");
    assert!(back < Duration::from_secs(15), "{back:?}");
}

#[test]
fn a_node_that_leaves_is_left() {
    let checks = "a node stopped with SIGTERM says goodbye and is `left` on every other node";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let leaver = lan.id(1);
    let t0 = Instant::now();
    lan.signal(1, Signal::Term);
    let took = until_seen(&lan, &[0, 2], &leaver, "left", t0);
    eprintln!("measured: departed node left on every peer after {took:?}");
}

fn held(lan: &Lan, i: usize, id: &str) -> Option<serde_json::Value> {
    lan.allocations(i)["held"]
        .as_array()?
        .iter()
        .find(|a| a["allocation_id"] == id)
        .cloned()
}

#[test]
fn a_lost_owner_loses_its_leases_and_replace_places_them_again() {
    let checks = "when an owner dies, its holder reports the lease `lost`; a request made with \
                  `replace` is placed again on another node";
    let Some(mut lan) = Lan::builder(checks).hosts(3, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let owner = lan.id(2);
    let ask = |replace: bool| {
        let (code, a) = lan.request(
            0,
            &serde_json::json!({
                "required_resources": {"cpu_cores": 1},
                "node_id": owner,
                "replace": replace,
            }),
        );
        assert_eq!(code, 201, "{a}");
        a["allocation_id"].as_str().unwrap().to_owned()
    };
    let replaced = ask(true);
    let plain = ask(false);
    let t0 = Instant::now();
    lan.kill9(2);
    let (a, _) = lan.eventually("h0 reports both lost", CONVERGE, || {
        let a = held(&lan, 0, &replaced).ok_or("gone")?;
        let b = held(&lan, 0, &plain).ok_or("gone")?;
        if a["status"] == "lost" && b["status"] == "lost" && a["replaced_by"].is_string() {
            Ok(a)
        } else {
            Err(format!(
                "{} {} {}",
                a["status"], b["status"], a["replaced_by"]
            ))
        }
    });
    eprintln!(
        "measured: leases reported lost and replaced {:?} after the owner was killed",
        t0.elapsed()
    );
    assert!(
        a["ended_reason"].as_str().unwrap().contains("went offline"),
        "{a}"
    );
    let new = a["replaced_by"].as_str().unwrap();
    let n = held(&lan, 0, new).expect("the replacement is held");
    assert_eq!(n["status"], "active", "{n}");
    assert_ne!(n["node_id"], owner.as_str(), "placed elsewhere: {n}");
    let b = held(&lan, 0, &plain).unwrap();
    assert!(b.get("replaced_by").is_none(), "{b}");
}

#[test]
fn an_owner_keeps_a_lost_holders_lease_until_it_expires() {
    let checks = "when a holder dies, the owner keeps its lease until the lease term runs out, \
                  then takes the resources back";
    let Some(mut lan) = Lan::builder(checks).hosts(2, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (code, a) = lan.request(
        0,
        &serde_json::json!({
            "required_resources": {"cpu_cores": 1},
            "node_id": lan.id(1),
            "timeout_secs": 4,
        }),
    );
    assert_eq!(code, 201, "{a}");
    let id = a["allocation_id"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    lan.kill9(0);
    let granted = |lan: &Lan| {
        lan.allocations(1)["granted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["allocation_id"] == id.as_str())
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(granted(&lan), "kept while its term runs");
    lan.eventually("the owner takes it back", CONVERGE, || {
        if granted(&lan) {
            Err("still granted".to_owned())
        } else {
            Ok(())
        }
    });
    let took = t0.elapsed();
    eprintln!(
        "measured: the owner took the lease back {took:?} after its holder was killed (4 s term)"
    );
    assert!(
        took >= Duration::from_secs(2),
        "not before the term: {took:?}"
    );
}

#[test]
fn an_offline_node_is_forgotten_after_forget_after() {
    let checks = "a node that died is removed from every other node's view after \
                  network.forget_after (10 s here), so no ghost lingers";
    let Some(mut lan) = Lan::builder(checks)
        .hosts(3, "[network]\nforget_after = \"10s\"")
        .start()
    else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let ghost = lan.id(2);
    let t0 = Instant::now();
    lan.kill9(2);
    until_seen(&lan, &[0, 1], &ghost, "offline", t0);
    lan.eventually("h0 and h1 forget h2", Duration::from_secs(30), || {
        for i in [0, 1] {
            if lan.view_of(i, &ghost).is_some() {
                return Err(format!("h{i} still lists h2"));
            }
        }
        Ok(())
    });
    let took = t0.elapsed();
    eprintln!("measured: dead node forgotten by every peer {took:?} after the kill");
    assert!(
        took >= Duration::from_secs(9),
        "not before forget_after: {took:?}"
    );
}
