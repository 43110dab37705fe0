//! Conditional and pooled reservations (issue 9) with real `lanswarm`
//! processes:
//!
//! - on the virtual LAN (`tests/common/vlan.rs`, needs root), a reservation
//!   waiting on a named event holds its capacity as `waiting` with no lease
//!   until its holder posts the event, then becomes the holder's active
//!   lease; bad event names are refused and change nothing; an event posted
//!   on the owner (its admin) meets the reservations there whatever their
//!   holder, through the CLI;
//! - on the virtual LAN, a reservation shared with a group lends leases to
//!   the group's members (and its holder) up to its size, refuses more once
//!   it is used up while the owner still has free cores of its own, takes a
//!   released draw back, and refuses a node outside the group;
//! - a real daemon on loopback: a conditional reservation whose event never
//!   comes ends `unmet` with its window, and one waiting on it ends `unmet`
//!   with it; conflicting or bad conditions are refused and book nothing.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::daemon::Daemon;
use common::vlan::Lan;

const CONVERGE: Duration = Duration::from_secs(20);

/// The reservation `id` in host `i`'s `GET /api/v1/reservations`, on its
/// `side` (`held` or `granted`).
fn reservation(lan: &Lan, i: usize, side: &str, id: &str) -> Option<Value> {
    lan.get(i, "/api/v1/reservations")[side]
        .as_array()?
        .iter()
        .find(|r| r["reservation_id"] == id)
        .cloned()
}

/// The allocation ids on host `i`'s `side` (`held` or `granted`).
fn allocation_ids(lan: &Lan, i: usize, side: &str) -> Vec<String> {
    lan.allocations(i)[side]
        .as_array()
        .expect("allocations are an array")
        .iter()
        .filter_map(|a| a["allocation_id"].as_str().map(str::to_owned))
        .collect()
}

/// Wait until the reservation `id` has `status` on host `i`'s `side`.
fn wait_status(lan: &Lan, i: usize, side: &str, id: &str, status: &str) -> Value {
    lan.eventually(
        &format!("reservation {id} {status} in h{i}'s {side}"),
        CONVERGE,
        || {
            let r = reservation(lan, i, side, id).ok_or("not listed")?;
            (r["status"] == status)
                .then(|| r.clone())
                .ok_or_else(|| format!("{r}"))
        },
    )
    .0
}

fn post_event(lan: &Lan, i: usize, body: &Value) -> (u16, Value) {
    lan.api(i, "POST", "/api/v1/reservations/events", Some(body))
}

#[test]
fn a_conditional_reservation_activates_when_its_event_is_posted() {
    let checks = "a reservation booked on another node with when_event stays `waiting` with \
                  no lease (its core held) until its holder posts the event, which meets it \
                  and makes it the holder's active lease; bad event names are refused and \
                  change nothing; an event posted on the owner through the CLI meets a \
                  reservation there whatever its holder";
    let Some(mut lan) = Lan::builder(checks).hosts(2, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let (a, b) = (lan.id(0), lan.id(1));

    let (status, r) = lan.api(
        1,
        "POST",
        "/api/v1/reservations",
        Some(&json!({
            "required_resources": { "cpu_cores": 1 },
            "start_in_secs": 0,
            "duration_secs": 120,
            "node_id": a,
            "when_event": "data-ready",
        })),
    );
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["node_id"], a.as_str(), "{r}");
    assert_eq!(r["when_event"], "data-ready", "{r}");
    assert!(r.get("condition_met").is_none(), "{r}");
    let id = r["reservation_id"]
        .as_str()
        .expect("reservation_id")
        .to_owned();

    // Its window has begun, its event has not come: waiting on the owner,
    // no lease on either side, and its core is kept from other leases.
    let w = wait_status(&lan, 0, "granted", &id, "waiting");
    assert_eq!(w["holder"], b.as_str(), "{w}");
    assert_eq!(w["when_event"], "data-ready", "{w}");
    assert!(w.get("condition_met").is_none(), "{w}");
    assert!(reservation(&lan, 1, "held", &id).is_some());
    assert!(!allocation_ids(&lan, 0, "granted").contains(&id));
    assert!(!allocation_ids(&lan, 1, "held").contains(&id));
    let (status, e) = lan.request(
        1,
        &json!({ "required_resources": { "cpu_cores": 4 }, "node_id": a }),
    );
    assert_ne!(
        status, 201,
        "4 cores with 1 of 4 held by the reservation: {e}"
    );

    // Bad names: 400, nothing met, still waiting. Another event: met
    // nothing.
    for body in [
        json!({ "name": "data ready" }),
        json!({ "name": "" }),
        json!({ "name": "x".repeat(65) }),
        json!({ "name": "data-ready/1" }),
        json!({ "nom": "data-ready" }),
    ] {
        let (status, e) = post_event(&lan, 1, &body);
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{body}: {e}");
    }
    let (status, p) = post_event(&lan, 1, &json!({ "name": "other-event" }));
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["met"], json!([]), "{p}");
    let still = reservation(&lan, 0, "granted", &id).expect("still granted");
    assert_eq!(still["status"], "waiting", "{still}");
    assert!(!allocation_ids(&lan, 1, "held").contains(&id));

    // The holder posts it: the owner is told, the reservation is met and
    // becomes B's active lease, under the reservation's id.
    let posted = Instant::now();
    let (status, p) = post_event(&lan, 1, &json!({ "name": "data-ready" }));
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["name"], "data-ready", "{p}");
    assert_eq!(p["errors"], json!([]), "{p}");
    let met = p["met"].as_array().expect("met is an array");
    assert_eq!(met.len(), 1, "{p}");
    assert_eq!(met[0]["reservation_id"], id.as_str(), "{p}");
    assert_eq!(met[0]["node_id"], a.as_str(), "{p}");
    assert_eq!(met[0]["node_name"], "h0", "{p}");
    let on_a = wait_status(&lan, 0, "granted", &id, "active");
    assert!(on_a["condition_met"].is_string(), "{on_a}");
    let (lease, _) = lan.eventually("B holds the reservation's lease", CONVERGE, || {
        let held = lan.allocations(1)["held"].clone();
        held.as_array()
            .and_then(|h| h.iter().find(|x| x["allocation_id"] == id.as_str()))
            .filter(|x| x["status"] == "active")
            .cloned()
            .ok_or_else(|| format!("{held}"))
    });
    println!(
        "conditional: B holds the lease {} ms after posting the event",
        posted.elapsed().as_millis()
    );
    assert_eq!(lease["node_id"], a.as_str(), "{lease}");
    assert_eq!(lease["allocated_resources"]["cpu_cores"], 1, "{lease}");
    assert!(allocation_ids(&lan, 0, "granted").contains(&id));
    wait_status(&lan, 1, "held", &id, "active");
    let out = lan.cli(1, &["reservations"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = text
        .lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap_or_else(|| panic!("{id} in {text}"));
    assert!(
        row.contains("active") && row.contains("event data-ready (met "),
        "{text}"
    );

    // Through the CLI: B books another, waiting on `go`; A's admin posts
    // `go` on A, which meets it although B holds it.
    let out = lan.cli(
        1,
        &[
            "--json",
            "reserve",
            "--start",
            "now",
            "--duration",
            "2m",
            "--cpu",
            "1",
            "--node",
            &a,
            "--when-event",
            "go",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON from reserve");
    let id2 = r["reservation_id"]
        .as_str()
        .expect("reservation_id")
        .to_owned();
    wait_status(&lan, 0, "granted", &id2, "waiting");
    let out = lan.cli(0, &["reservations", "event", "no spaces"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = lan.cli(0, &["--json", "reservations", "event", "go"]);
    assert!(out.status.success(), "{out:?}");
    let p: Value = serde_json::from_slice(&out.stdout).expect("JSON from event");
    assert_eq!(p["met"][0]["reservation_id"], id2.as_str(), "{p}");
    assert_eq!(p["met"].as_array().map(Vec::len), Some(1), "{p}");
    wait_status(&lan, 0, "granted", &id2, "active");
    lan.eventually("B holds the second lease", CONVERGE, || {
        allocation_ids(&lan, 1, "held")
            .contains(&id2)
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    // B did not post `go` itself: its copy learns from A when it held.
    let held = wait_status(&lan, 1, "held", &id2, "active");
    let met = held["condition_met"].clone();
    lan.eventually("B's copy has condition_met", CONVERGE, || {
        let h = reservation(&lan, 1, "held", &id2).ok_or("not listed")?;
        h["condition_met"]
            .is_string()
            .then_some(())
            .ok_or_else(|| format!("{h} (first seen {met})"))
    });
    assert!(lan.is_running(0) && lan.is_running(1));
}

/// Make group `name` on host `by` (open), have each of `joiners` join it,
/// and wait until every host in `knowers` lists it with all of them.
fn group_of(lan: &Lan, by: usize, name: &str, joiners: &[usize], knowers: &[usize]) -> String {
    let (status, g) = lan.api(
        by,
        "POST",
        "/api/v1/groups",
        Some(&json!({ "name": name, "max_members": 10, "open": true })),
    );
    assert_eq!(status, 201, "creating group {name} on h{by}: {g}");
    let g = g["id"].as_str().expect("group id").to_owned();
    for &i in joiners {
        lan.eventually(&format!("h{i} joins {name}"), CONVERGE, || {
            match lan.api(i, "POST", &format!("/api/v1/groups/{g}/join"), None) {
                (200, _) => Ok(()),
                (s, v) => Err(format!("{s} {v}")),
            }
        });
    }
    let mut want: Vec<String> = std::iter::once(by)
        .chain(joiners.iter().copied())
        .map(|i| lan.id(i))
        .collect();
    want.sort();
    for &i in knowers {
        lan.eventually(&format!("h{i} knows {name}'s members"), CONVERGE, || {
            let v = lan.get(i, &format!("/api/v1/groups/{g}"));
            let mut got: Vec<String> = v["members"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            (got == want).then_some(()).ok_or(format!("{v}"))
        });
    }
    g
}

/// Draw `cores` from reservation `id` on owner `a`, from host `i`.
fn draw(lan: &Lan, i: usize, id: &str, a: &str, cores: u32) -> (u16, Value) {
    lan.request(
        i,
        &json!({
            "required_resources": { "cpu_cores": cores },
            "reservation": id,
            "node_id": a,
        }),
    )
}

#[test]
fn a_pooled_reservation_lends_to_group_members_up_to_its_size() {
    let checks = "a reservation of 2 cores shared with a group lends a member and the holder \
                  1 core each, refuses a third core (the pool is used up) while the owner \
                  still lends its own free cores, takes a released draw back, and refuses a \
                  node outside the group";
    let Some(mut lan) = Lan::builder(checks).hosts(4, "").start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let a = lan.id(0);
    // h1 (B) makes the group, h2 (C) joins; h3 (D) stays out.
    let g = group_of(&lan, 1, "pool-lab", &[2], &[0, 1, 2]);

    let (status, r) = lan.api(
        1,
        "POST",
        "/api/v1/reservations",
        Some(&json!({
            "required_resources": { "cpu_cores": 2 },
            "start_in_secs": 0,
            "duration_secs": 120,
            "node_id": a,
            "share_with": "pool-lab",
        })),
    );
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["shared_with"], g.as_str(), "by name, shown by id: {r}");
    let id = r["reservation_id"]
        .as_str()
        .expect("reservation_id")
        .to_owned();
    let on_a = wait_status(&lan, 0, "granted", &id, "active");
    assert_eq!(on_a["shared_with"], g.as_str(), "{on_a}");
    assert_eq!(on_a["left"]["cpu_cores"], 2, "{on_a}");
    // Nobody got one lease for all of it, and its 2 cores are kept from
    // ordinary leases: of A's 4, 3 cannot be had.
    assert!(!allocation_ids(&lan, 0, "granted").contains(&id));
    let (status, e) = lan.request(
        3,
        &json!({ "required_resources": { "cpu_cores": 3 }, "node_id": a }),
    );
    assert_ne!(status, 201, "3 cores with 2 of 4 in the pool: {e}");

    // C (a member) draws 1 core; B (the holder) 1 more, naming no owner.
    let (status, x) = draw(&lan, 2, &id, &a, 1);
    assert_eq!(status, 201, "C draws: {x}");
    assert_eq!(x["node_id"], a.as_str(), "{x}");
    assert_eq!(x["allocated_resources"]["cpu_cores"], 1, "{x}");
    let cx = x["allocation_id"]
        .as_str()
        .expect("allocation_id")
        .to_owned();
    assert_ne!(cx, id);
    let (status, y) = lan.request(
        1,
        &json!({ "required_resources": { "cpu_cores": 1 }, "reservation": id }),
    );
    assert_eq!(status, 201, "B draws: {y}");
    let by = y["allocation_id"]
        .as_str()
        .expect("allocation_id")
        .to_owned();
    let r = reservation(&lan, 0, "granted", &id).expect("still granted");
    assert_eq!(r["left"]["cpu_cores"], 0, "{r}");
    let granted = allocation_ids(&lan, 0, "granted");
    assert!(
        granted.contains(&cx) && granted.contains(&by),
        "{granted:?}"
    );
    assert!(allocation_ids(&lan, 2, "held").contains(&cx));

    // The pool is used up: C's next core is refused, though A still lends
    // its own 2 free cores, which C may have as an ordinary lease.
    let (status, e) = draw(&lan, 2, &id, &a, 1);
    assert_eq!(status, 503, "{e}");
    assert_eq!(e["error"]["code"], "no_capacity", "{e}");
    assert!(
        e.to_string().contains("insufficient_capacity"),
        "refused for capacity: {e}"
    );
    let (status, own) = lan.request(
        2,
        &json!({ "required_resources": { "cpu_cores": 2 }, "node_id": a }),
    );
    assert_eq!(status, 201, "A's own free cores: {own}");

    // B releases its draw: the core goes back to the pool.
    let (status, r) = lan.release(1, &by);
    assert_eq!(status, 200, "{r}");
    lan.eventually("B's draw goes back to the pool", CONVERGE, || {
        let r = reservation(&lan, 0, "granted", &id).ok_or("gone")?;
        (r["left"]["cpu_cores"] == 1)
            .then_some(())
            .ok_or(format!("{r}"))
    });

    // D is not in the group: forbidden, and it takes nothing.
    let (status, e) = draw(&lan, 3, &id, &a, 1);
    assert_eq!(status, 403, "D is outside the group: {e}");
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    let r = reservation(&lan, 0, "granted", &id).expect("still granted");
    assert_eq!(r["left"]["cpu_cores"], 1, "D's refusal took nothing: {r}");

    // C draws the core B gave back.
    let (status, z) = draw(&lan, 2, &id, &a, 1);
    assert_eq!(status, 201, "C draws again: {z}");
    let r = reservation(&lan, 0, "granted", &id).expect("still granted");
    assert_eq!(r["left"]["cpu_cores"], 0, "{r}");
}

#[test]
fn an_unmet_conditional_reservation_expires_unmet() {
    let d = Daemon::start("resv-unmet");
    let reserve = |body: Value| d.send("POST", "/api/v1/reservations", &body.to_string());
    let reservations = || d.get("/api/v1/reservations").1;
    let find = |rs: &Value, side: &str, id: &str| -> Option<Value> {
        rs[side]
            .as_array()?
            .iter()
            .find(|r| r["reservation_id"] == id)
            .cloned()
    };
    let base = |extra: Value| {
        let mut v = json!({
            "required_resources": { "cpu_cores": 1 },
            "start_in_secs": 0,
            "duration_secs": 3,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };

    // Refused and nothing booked: both conditions, a bad event name.
    for extra in [
        json!({ "when_event": "a", "after_reservation": "b" }),
        json!({ "when_event": "not an event" }),
        json!({ "when_event": "" }),
    ] {
        let (status, e) = reserve(base(extra.clone()));
        assert_eq!(status, 400, "{extra}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{extra}: {e}");
    }
    assert_eq!(reservations(), json!({ "held": [], "granted": [] }));

    // R1 waits 3 s for an event that never comes; R2 waits on R1.
    let (status, r1) = reserve(base(json!({ "when_event": "never-posted" })));
    assert_eq!(status, 201, "{r1}");
    let r1 = r1["reservation_id"].as_str().unwrap().to_owned();
    let (status, r2) = reserve(base(json!({
        "duration_secs": 60,
        "after_reservation": r1,
    })));
    assert_eq!(status, 201, "{r2}");
    assert_eq!(r2["after_reservation"], r1.as_str(), "{r2}");
    let r2 = r2["reservation_id"].as_str().unwrap().to_owned();
    let booked = Instant::now();

    // The owner's side (`granted`) shows R1 waiting in its window; the
    // holder's side (`held`) shows both unmet once R1's window is over, R2
    // long before its own end (60 s), as the owner tells it.
    let deadline = booked + Duration::from_secs(15);
    let mut seen_waiting = false;
    loop {
        let rs = reservations();
        let owner = find(&rs, "granted", &r1).map(|r| r["status"].clone());
        seen_waiting |= owner.as_ref().is_some_and(|s| s == "waiting");
        let s1 = find(&rs, "held", &r1).map(|r| r["status"].clone());
        let s2 = find(&rs, "held", &r2).map(|r| r["status"].clone());
        let held = d.get("/api/v1/allocations").1["held"].clone();
        assert!(
            held.as_array().is_some_and(|h| h
                .iter()
                .all(|a| a["allocation_id"] != r1.as_str() && a["allocation_id"] != r2.as_str())),
            "an unmet reservation never becomes a lease: {held}"
        );
        if s1.as_ref().is_some_and(|s| s == "unmet") && s2.as_ref().is_some_and(|s| s == "unmet") {
            break;
        }
        assert!(Instant::now() < deadline, "not unmet in time: {rs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = booked.elapsed();
    assert!(
        seen_waiting,
        "R1 was waiting on its owner within its window"
    );
    assert!(
        ended >= Duration::from_secs(2),
        "unmet only at the window's end, not {ended:?} after booking"
    );
    let rs = reservations();
    for id in [&r1, &r2] {
        let held = find(&rs, "held", id).expect("still listed as held");
        assert_eq!(held["status"], "unmet", "{rs}");
        assert!(held.get("condition_met").is_none(), "{held}");
        // The owner lists it too, unmet, for a while after.
        let g = find(&rs, "granted", id).expect("still listed as granted");
        assert_eq!(g["status"], "unmet", "{rs}");
    }
    assert!(
        d.log_text()
            .contains(&format!("reservation={r2} status=unmet")),
        "the owner ended R2 unmet itself"
    );
    // The cores went back.
    assert_eq!(d.get("/api/v1/node").1["resources"]["free"]["cpu_cores"], 4);
    println!("unmet: both unmet {} ms after booking", ended.as_millis());
}
