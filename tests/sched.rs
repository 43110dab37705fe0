//! Scheduling depth with real `lanswarm` processes on the virtual LAN
//! (`tests/common/vlan.rs`): preemption, the owner's wait queue, advance
//! reservations and quotas, each decided by the owner of the resources.
//! They need root for `ip netns`; without it each test says what it would
//! have checked and passes.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::vlan::Lan;

const CONVERGE: Duration = Duration::from_secs(20);

/// Ask host `from` for `cores` on the node with id `on`.
fn ask(lan: &Lan, from: usize, on: &str, cores: u32, extra: Value) -> (u16, Value) {
    let mut body = json!({ "required_resources": { "cpu_cores": cores }, "node_id": on });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    lan.request(from, &body)
}

fn allocation(lan: &Lan, i: usize, id: &str) -> Option<Value> {
    lan.allocations(i)["held"]
        .as_array()?
        .iter()
        .find(|a| a["allocation_id"] == id)
        .cloned()
}

fn granted_ids(lan: &Lan, owner: usize) -> Vec<String> {
    lan.allocations(owner)["granted"]
        .as_array()
        .expect("granted is an array")
        .iter()
        .map(|a| a["allocation_id"].as_str().unwrap().to_owned())
        .collect()
}

fn free_cores(lan: &Lan, i: usize) -> u64 {
    lan.node(i)["resources"]["free"]["cpu_cores"]
        .as_u64()
        .unwrap()
}

fn start3(checks: &str) -> Option<(Lan, [String; 3])> {
    let mut lan = Lan::builder(checks).hosts(3, "").start()?;
    lan.wait_converged(CONVERGE);
    let ids = [lan.id(0), lan.id(1), lan.id(2)];
    Some((lan, ids))
}

#[test]
fn a_high_priority_request_preempts_a_low_priority_lease() {
    let checks = "with preemption on, a high-priority request takes the resources of a \
                  low-priority lease, whose holder sees `preempted`; equal priority never \
                  preempts, and with preemption off nothing is preempted";
    let Some((lan, [a, _, _])) = start3(checks) else {
        return;
    };
    let (status, low) = ask(&lan, 1, &a, 4, json!({ "priority": "low" }));
    assert_eq!(status, 201, "{low}");
    let low_id = low["allocation_id"].as_str().unwrap().to_owned();

    // Preemption is off by default: a high-priority request is refused.
    let (status, e) = ask(&lan, 2, &a, 2, json!({ "priority": "high" }));
    assert_eq!(status, 503, "preemption off: {e}");
    assert_eq!(granted_ids(&lan, 0), vec![low_id.clone()]);

    let (status, p) = lan.api(
        0,
        "PATCH",
        "/api/v1/scheduler",
        Some(&json!({ "preemption": true })),
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["preemption"], true);
    lan.eventually("h2 sees that h0 preempts", CONVERGE, || {
        let v = lan.view_of(2, &a).ok_or("h2 does not know h0")?;
        (v["preemption"] == true)
            .then_some(())
            .ok_or_else(|| format!("{v}"))
    });

    // Equal priority never preempts.
    let (status, e) = ask(&lan, 2, &a, 2, json!({ "priority": "low" }));
    assert_eq!(status, 503, "equal priority: {e}");
    assert_eq!(granted_ids(&lan, 0), vec![low_id.clone()]);

    let t = Instant::now();
    let (status, high) = ask(&lan, 2, &a, 2, json!({ "priority": "high" }));
    assert_eq!(status, 201, "high priority: {high}");
    let high_id = high["allocation_id"].as_str().unwrap().to_owned();
    assert_eq!(granted_ids(&lan, 0), vec![high_id], "the low lease is gone");
    let (v, _) = lan.eventually("the holder sees preempted", CONVERGE, || {
        let v = allocation(&lan, 1, &low_id).ok_or("the allocation vanished")?;
        (v["status"] == "preempted")
            .then_some(v.clone())
            .ok_or_else(|| format!("{v}"))
    });
    println!(
        "preemption: holder told in {} ms: {}",
        t.elapsed().as_millis(),
        v["ended_reason"]
    );
    assert!(
        v["ended_reason"].as_str().unwrap().contains("preempted"),
        "{v}"
    );
}

#[test]
fn a_queued_request_is_granted_when_capacity_frees() {
    let checks = "a request that may wait is queued at the owner with its position, and \
                  granted, in priority order, as soon as a lease is released";
    let Some((lan, [a, _, _])) = start3(checks) else {
        return;
    };
    let (status, first) = ask(&lan, 1, &a, 4, json!({}));
    assert_eq!(status, 201, "{first}");
    let first_id = first["allocation_id"].as_str().unwrap().to_owned();

    // Cannot wait: refused at once.
    let (status, e) = ask(&lan, 2, &a, 2, json!({}));
    assert_eq!(status, 503, "{e}");
    // May wait: queued, normal then high priority; high goes first.
    let (status, normal) = ask(&lan, 2, &a, 2, json!({ "wait_secs": 30 }));
    assert_eq!(status, 202, "{normal}");
    assert_eq!(normal["status"], "queued");
    assert_eq!(normal["queue_position"], 1);
    let (status, high) = ask(
        &lan,
        2,
        &a,
        4,
        json!({ "wait_secs": 30, "priority": "high" }),
    );
    assert_eq!(status, 202, "{high}");
    assert_eq!(
        high["queue_position"], 1,
        "high priority goes ahead: {high}"
    );
    let queue = lan.get(0, "/api/v1/queue");
    let tickets: Vec<&str> = queue
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["ticket"].as_str().unwrap())
        .collect();
    let (normal_id, high_id) = (
        normal["allocation_id"].as_str().unwrap(),
        high["allocation_id"].as_str().unwrap(),
    );
    assert_eq!(tickets, [high_id, normal_id], "grant order: {queue}");
    let contention = lan.get(0, "/api/v1/contention");
    assert_ne!(contention["severity"], "none", "{contention}");

    let (status, _) = lan.release(1, &first_id);
    assert_eq!(status, 200);
    let freed = Instant::now();
    lan.eventually("the high-priority request is granted", CONVERGE, || {
        let v = allocation(&lan, 2, high_id).ok_or("gone")?;
        (v["status"] == "active")
            .then_some(())
            .ok_or_else(|| format!("{v}"))
    });
    println!(
        "queue: granted {} ms after the release",
        freed.elapsed().as_millis()
    );
    // The normal one still waits (4 of 4 cores are taken); once the high
    // one is released, it is granted too.
    let v = allocation(&lan, 2, normal_id).unwrap();
    assert_eq!(v["status"], "queued", "{v}");
    let (status, _) = lan.release(2, high_id);
    assert_eq!(status, 200);
    lan.eventually("the normal request is granted next", CONVERGE, || {
        let v = allocation(&lan, 2, normal_id).ok_or("gone")?;
        (v["status"] == "active")
            .then_some(())
            .ok_or_else(|| format!("{v}"))
    });
    assert_eq!(granted_ids(&lan, 0), vec![normal_id.to_owned()]);
}

#[test]
fn a_reservation_becomes_active_at_its_start_and_ends_at_its_end() {
    let checks = "a reservation booked for a future window keeps its resources from \
                  open-ended leases, becomes an active lease of the reserver at its start, \
                  and is released at its end";
    let Some((lan, [a, b, _])) = start3(checks) else {
        return;
    };
    let (status, r) = lan.api(
        1,
        "POST",
        "/api/v1/reservations",
        Some(&json!({
            "required_resources": { "cpu_cores": 3 },
            "start_in_secs": 4,
            "duration_secs": 4,
            "node_id": a,
        })),
    );
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["status"], "confirmed");
    let id = r["reservation_id"].as_str().unwrap().to_owned();
    let booked = Instant::now();
    let granted = lan.get(0, "/api/v1/reservations")["granted"].clone();
    assert_eq!(granted[0]["reservation_id"], id.as_str(), "{granted}");
    assert_eq!(granted[0]["holder"], b.as_str());

    // An open-ended lease must leave the reserved cores alone.
    let (status, e) = ask(&lan, 2, &a, 2, json!({}));
    assert_eq!(status, 503, "the reserved cores are not lent: {e}");
    let (status, ok) = ask(&lan, 2, &a, 1, json!({}));
    assert_eq!(status, 201, "{ok}");

    let (v, _) = lan.eventually("the reservation becomes an active lease", CONVERGE, || {
        let v = allocation(&lan, 1, &id).ok_or("not held yet")?;
        (v["status"] == "active")
            .then_some(v.clone())
            .ok_or_else(|| format!("{v}"))
    });
    println!(
        "reservation: active {} ms after booking (start was 4 s after)",
        booked.elapsed().as_millis()
    );
    assert_eq!(v["allocated_resources"]["cpu_cores"], 3);
    assert!(granted_ids(&lan, 0).contains(&id));
    assert_eq!(free_cores(&lan, 0), 0, "3 reserved + 1 leased of 4");
    lan.eventually("the reservation ends at its end", CONVERGE, || {
        (!granted_ids(&lan, 0).contains(&id))
            .then_some(())
            .ok_or("still granted".to_owned())
    });
    assert!(
        booked.elapsed() >= Duration::from_secs(7),
        "ended too early"
    );
    assert_eq!(free_cores(&lan, 0), 3);
}

#[test]
fn quotas_refuse_what_exceeds_them_here_and_swarm_wide() {
    let checks = "a per-requester quota at the owner refuses what would exceed it, a cap \
                  below current use is accepted and stops new grants without ending a lease, \
                  and a swarm-wide quota counts what the requester holds on other owners";
    let Some((lan, [a, b, c])) = start3(checks) else {
        return;
    };
    let set = |owner: usize, body: Value| lan.api(owner, "PUT", "/api/v1/quotas", Some(&body));
    let (status, q) = set(
        0,
        json!({ "subject": format!("node:{b}"), "limits": { "cpu_cores": 2 } }),
    );
    assert_eq!(status, 200, "{q}");
    let (status, v) = ask(&lan, 1, &a, 2, json!({}));
    assert_eq!(status, 201, "{v}");
    let (status, e) = ask(&lan, 1, &a, 1, json!({}));
    assert_eq!(status, 409, "over quota: {e}");
    assert_eq!(e["error"]["code"], "quota_exceeded", "{e}");
    // Another requester is not affected.
    let (status, v) = ask(&lan, 2, &a, 1, json!({}));
    assert_eq!(status, 201, "{v}");

    // A cap below what is held now is accepted: the 2 cores stay held,
    // and even one more core is refused.
    let (status, e) = set(
        0,
        json!({ "subject": format!("node:{b}"), "limits": { "cpu_cores": 1 } }),
    );
    assert_eq!(status, 200, "{e}");
    let (status, e) = ask(&lan, 1, &a, 1, json!({}));
    assert_eq!(status, 409, "under a lowered cap: {e}");
    let q = lan.get(0, "/api/v1/quotas");
    assert_eq!(q[0]["usage"]["cpu_cores"], 2, "{q}");

    // Swarm-wide: at most 3 cores for h1 across every owner, as h2 sees it.
    let (status, q) = set(
        2,
        json!({ "subject": format!("node:{b}"), "swarm": true, "limits": { "cpu_cores": 3 } }),
    );
    assert_eq!(status, 200, "{q}");
    // h1 holds 2 on h0; h2 must learn that from h0's announcement.
    lan.eventually("h2 sees what h1 holds on h0", CONVERGE, || {
        let q = lan.get(2, "/api/v1/quotas");
        let used = q
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["scope"] == "swarm")
            .map(|e| e["usage"]["cpu_cores"].clone());
        (used == Some(json!(2)))
            .then_some(())
            .ok_or_else(|| format!("{q}"))
    });
    let (status, e) = ask(&lan, 1, &c, 2, json!({}));
    assert_eq!(status, 409, "2 here + 2 on h0 > 3: {e}");
    assert_eq!(e["error"]["code"], "quota_exceeded", "{e}");
    let (status, v) = ask(&lan, 1, &c, 1, json!({}));
    assert_eq!(status, 201, "1 here + 2 on h0 = 3: {v}");
}

#[test]
fn the_queue_survives_an_owner_restart() {
    let checks = "a request waiting in an owner's queue is still there after the owner \
                  restarts, and is granted when capacity frees";
    let Some((mut lan, [a, _, _])) = start3(checks) else {
        return;
    };
    let (status, first) = ask(&lan, 1, &a, 4, json!({}));
    assert_eq!(status, 201, "{first}");
    let (status, waiting) = ask(&lan, 2, &a, 2, json!({ "wait_secs": 60 }));
    assert_eq!(status, 202, "{waiting}");
    let ticket = waiting["allocation_id"].as_str().unwrap().to_owned();
    lan.restart(0);
    let queue = lan.get(0, "/api/v1/queue");
    assert_eq!(
        queue[0]["ticket"],
        ticket.as_str(),
        "queue after restart: {queue}"
    );
    lan.wait_converged(CONVERGE);
    let (status, _) = lan.release(1, first["allocation_id"].as_str().unwrap());
    assert_eq!(status, 200);
    lan.eventually(
        "the waiting request is granted after the restart",
        CONVERGE,
        || {
            let v = allocation(&lan, 2, &ticket).ok_or("gone")?;
            (v["status"] == "active")
                .then_some(())
                .ok_or_else(|| format!("{v}"))
        },
    );
}
