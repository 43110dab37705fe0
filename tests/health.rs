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
