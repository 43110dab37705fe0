//! Real `lanswarm` processes on a virtual LAN of network namespaces
//! (`tests/common/vlan.rs`): each host finds the others by mDNS alone, with
//! no bootstrap peers, and the tests crash, restart and flood them. They
//! need root for `ip netns`; without it each test says what it would have
//! checked and passes. See `docs/testing.md`.

mod common;

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use common::vlan::Lan;

/// Bound on discovery and convergence in these tests. What is measured is
/// printed; typical figures are far below this.
const CONVERGE: Duration = Duration::from_secs(20);

/// One allocation request, sent either through the HTTP API or the CLI.
#[derive(Clone, Debug, Default)]
struct Req {
    cpu: u32,
    memory_mb: u64,
    disk_mb: u64,
    custom: Option<(&'static str, u64)>,
    strategy: Option<&'static str>,
    node: Option<String>,
    lease_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Api,
    Cli,
}

impl Req {
    fn cpu(cpu: u32) -> Self {
        Req {
            cpu,
            ..Default::default()
        }
    }

    fn json(&self) -> Value {
        let mut r =
            json!({ "cpu_cores": self.cpu, "memory_mb": self.memory_mb, "disk_mb": self.disk_mb });
        if let Some((k, v)) = self.custom {
            r["custom"] = json!({ k: v });
        }
        let mut body = json!({ "required_resources": r });
        if let Some(s) = self.strategy {
            body["strategy"] = json!(s);
        }
        if let Some(n) = &self.node {
            body["node_id"] = json!(n);
        }
        if let Some(l) = self.lease_secs {
            body["timeout_secs"] = json!(l);
        }
        body
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec!["request".to_owned(), "--cpu".into(), self.cpu.to_string()];
        if self.memory_mb > 0 {
            a.extend(["--memory".into(), format!("{}MiB", self.memory_mb)]);
        }
        if self.disk_mb > 0 {
            a.extend(["--disk".into(), format!("{}MiB", self.disk_mb)]);
        }
        if let Some((k, v)) = self.custom {
            a.extend(["--custom".into(), format!("{k}={v}")]);
        }
        if let Some(s) = self.strategy {
            a.extend(["--strategy".into(), s.into()]);
        }
        if let Some(n) = &self.node {
            a.extend(["--node".into(), n.clone()]);
        }
        if let Some(l) = self.lease_secs {
            a.extend(["--lease".into(), format!("{l}s")]);
        }
        a
    }

    /// Place this request from host `i`: `Ok(allocation)` or
    /// `Err(error body)`.
    fn send(&self, lan: &Lan, i: usize, via: Via) -> Result<Value, Value> {
        match via {
            Via::Api => {
                let (status, v) = lan.request(i, &self.json());
                if status == 201 {
                    Ok(v)
                } else {
                    Err(v)
                }
            }
            Via::Cli => {
                let args = self.args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                lan.cli_json(i, &args)
            }
        }
    }
}

fn free(n: &Value) -> &Value {
    &n["resources"]["free"]
}

fn lendable(n: &Value) -> &Value {
    &n["resources"]["lendable"]
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

fn ids_of(allocs: &Value) -> BTreeSet<String> {
    allocs
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["allocation_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Sum of cpu cores, memory and disk over a list of allocations.
fn sums(allocs: &Value) -> (u64, u64, u64) {
    allocs.as_array().unwrap().iter().fold((0, 0, 0), |s, a| {
        let r = &a["allocated_resources"];
        (
            s.0 + r["cpu_cores"].as_u64().unwrap(),
            s.1 + r["memory_mb"].as_u64().unwrap(),
            s.2 + r["disk_mb"].as_u64().unwrap(),
        )
    })
}

/// Wait until host `viewer` sees each of `owners` with exactly the free
/// capacity the owner itself reports: every grant and release has been
/// announced and heard.
fn wait_view_synced(lan: &Lan, viewer: usize, owners: &[usize]) -> Duration {
    lan.eventually(
        &format!("h{viewer} has heard the owners' latest capacity"),
        CONVERGE,
        || {
            for &o in owners {
                let own = lan.node(o);
                let seen = lan
                    .view_of(viewer, own["id"].as_str().unwrap())
                    .ok_or(format!("h{viewer} does not know h{o}"))?;
                if free(&seen) != free(&own) || seen["status"] != "online" {
                    return Err(format!(
                        "h{viewer} sees h{o} {} with free {}, h{o} says {}",
                        seen["status"],
                        free(&seen),
                        free(&own)
                    ));
                }
            }
            Ok(())
        },
    )
    .1
}

/// Release everything host `i` holds, and check each owner confirmed.
fn release_all(lan: &Lan, i: usize) {
    let held = lan.allocations(i)["held"].clone();
    for a in held.as_array().unwrap() {
        let id = a["allocation_id"].as_str().unwrap();
        let (status, r) = lan.release(i, id);
        assert_eq!(status, 200, "release {id}: {r}");
        assert_eq!(r["owner_confirmed"], true, "release {id}: {r}");
    }
}

/// The allocation is listed by its owner (host `owner`), held by `holder`.
fn assert_granted_by(lan: &Lan, owner: usize, a: &Value, holder: &str) {
    let id = a["allocation_id"].as_str().unwrap();
    let (status, g) = lan.api(owner, "GET", &format!("/api/v1/allocations/{id}"), None);
    assert_eq!(status, 200, "h{owner} does not list {id}: {g}");
    assert_eq!(g["holder"], holder, "{g}");
}

#[test]
fn three_hosts_find_each_other_by_mdns_with_full_capacity() {
    let Some(mut lan) = Lan::builder(
        "3 hosts in network namespaces find each other by mDNS alone (no bootstrap peers) \
         and see each other's full capacity within seconds",
    )
    // One host also listens on QUIC, as the default config does.
    .host("[network]\nlisten = [\"/ip4/0.0.0.0/tcp/0\", \"/ip4/0.0.0.0/udp/0/quic-v1\"]")
    .hosts(2, "")
    .build() else {
        return;
    };
    let spawned = Instant::now();
    lan.start_all();
    let apis_up = spawned.elapsed();
    let ids: Vec<String> = (0..3).map(|i| lan.id(i)).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "{ids:?}");

    let (_, took) = lan.eventually(
        "every host sees all 3 online with their full capacity",
        CONVERGE,
        || {
            for i in 0..3 {
                let view = lan.nodes(i);
                if view.len() != 3 {
                    return Err(format!("h{i} knows {} nodes", view.len()));
                }
                for (j, id) in ids.iter().enumerate() {
                    let n = view
                        .iter()
                        .find(|n| n["id"] == id.as_str())
                        .ok_or(format!("h{i} does not know h{j}"))?;
                    if n["status"] != "online" || n["name"] != lan.name(j) {
                        return Err(format!("h{i} sees h{j} as {} {}", n["name"], n["status"]));
                    }
                    if lendable(n)["cpu_cores"] != 4
                        || lendable(n)["memory_mb"] != 8192
                        || free(n) != lendable(n)
                    {
                        return Err(format!("h{i} sees h{j} with {}", n["resources"]));
                    }
                }
            }
            Ok(())
        },
    );
    eprintln!(
        "discovery: 3 hosts saw each other with full capacity {took:?} after their APIs \
         answered ({:?} after spawning)",
        apis_up + took
    );
    assert!(took < Duration::from_secs(10), "discovery took {took:?}");
    for i in 0..3 {
        let log = lan.log(i);
        assert!(
            log.contains("found by mDNS"),
            "h{i} found no peer by mDNS:\n{log}"
        );
    }
}

#[test]
fn each_strategy_places_where_it_says_through_the_cli_and_the_api() {
    // h0 asks and lends nothing, so every request goes to another host.
    // Berlin, Paris, Warsaw and Potsdam give the geographic order
    // h3 (27 km) < h2 (517 km) < h1 (878 km). h1 declares weight 3, h0's
    // CLI sets h3's weight to 0. Only h1 and h2 have "tokens".
    let Some(mut lan) = Lan::builder(
        "requests from one host through the CLI and the HTTP API land on the hosts that \
         round-robin, least-loaded, weighted, geographic and random choose",
    )
    .host("[lend]\ncpu_cores = 0\nmemory = 0\ndisk = 0\n[location]\nlatitude = 52.52\nlongitude = 13.405")
    .host("[lend]\nweight = 3\n[location]\nlatitude = 48.8566\nlongitude = 2.3522\n[resources.custom]\ntokens = 100")
    .host("[location]\nlatitude = 52.2297\nlongitude = 21.0122\n[resources.custom]\ntokens = 100")
    .host("[location]\nlatitude = 52.3906\nlongitude = 13.0645")
    .start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let me = lan.id(0);
    let ids: Vec<String> = (0..4).map(|i| lan.id(i)).collect();
    let host_of = |a: &Value| -> usize {
        ids.iter()
            .position(|id| a["node_id"] == id.as_str())
            .unwrap_or_else(|| panic!("allocation on an unknown node: {a}"))
    };
    let owners = [1, 2, 3];
    let lan = &lan;
    // Place `req` from h0, through the API or the CLI in turn, wait until
    // h0 has heard the owner's new capacity, and return the owner.
    let mut turn = 0usize;
    let mut place = |req: &Req| -> usize {
        let via = if turn.is_multiple_of(2) {
            Via::Cli
        } else {
            Via::Api
        };
        turn += 1;
        let a = req
            .send(lan, 0, via)
            .unwrap_or_else(|e| panic!("{req:?} via {via:?} refused: {e}"));
        let owner = host_of(&a);
        assert_eq!(a["node_name"], lan.name(owner), "{a}");
        assert_eq!(a["holder"], me.as_str(), "{a}");
        assert_granted_by(lan, owner, &a, &me);
        wait_view_synced(lan, 0, &owners);
        owner
    };
    let reset = || {
        release_all(lan, 0);
        for o in owners {
            assert_eq!(
                lan.allocations(o)["granted"],
                json!([]),
                "h{o} still grants"
            );
        }
        wait_view_synced(lan, 0, &owners);
    };

    // round-robin: by NodeId, starting at the smallest, each owner once.
    let mut by_id = owners.to_vec();
    by_id.sort_by_key(|&o| ids[o].clone());
    let rr = Req {
        cpu: 1,
        memory_mb: 256,
        strategy: Some("round-robin"),
        ..Default::default()
    };
    let got: Vec<usize> = (0..4).map(|_| place(&rr)).collect();
    let want = vec![by_id[0], by_id[1], by_id[2], by_id[0]];
    assert_eq!(got, want, "round-robin in NodeId order");
    eprintln!("round-robin: {got:?}");
    reset();

    // least-loaded: with h1 at 3/4 cores and h2 at 2/4, h3 (empty) comes
    // first, twice; then h2 and h3 tie at 2/4 and h2 has fewer leases.
    for (node, cpu) in [("h1", 3), ("h2", 2)] {
        let pin = Req {
            node: Some(node.into()),
            ..Req::cpu(cpu)
        };
        pin.send(lan, 0, Via::Api).expect("preload");
    }
    wait_view_synced(lan, 0, &owners);
    let ll = Req {
        strategy: Some("least-loaded"),
        ..Req::cpu(1)
    };
    let got: Vec<usize> = (0..3).map(|_| place(&ll)).collect();
    assert_eq!(got, [3, 3, 2], "least-loaded");
    eprintln!("least-loaded: {got:?}");
    reset();

    // weighted, set as the node's strategy through the CLI: weights
    // h1 = 3 (declared by h1), h2 = 1 (default), h3 = 0 (set here), so in
    // 4 requests h1 gets 3, h2 1, h3 none; h1 is first.
    let s = lan
        .cli_json(0, &["strategy", "weighted", "--weight", "h3=0"])
        .expect("set strategy");
    assert_eq!(s["strategy"], "weighted", "{s}");
    assert_eq!(lan.get(0, "/api/v1/strategy")["weights"]["h3"], 0);
    let got: Vec<usize> = (0..4).map(|_| place(&Req::cpu(1))).collect();
    assert_eq!(got[0], 1, "weighted picks the heaviest first: {got:?}");
    let count = |o: usize| got.iter().filter(|x| **x == o).count();
    assert_eq!(
        (count(1), count(2), count(3)),
        (3, 1, 0),
        "weighted: {got:?}"
    );
    eprintln!("weighted: {got:?}");
    let s = lan
        .cli_json(0, &["strategy", "least-loaded"])
        .expect("set strategy");
    assert_eq!(s["strategy"], "least-loaded", "{s}");
    reset();

    // geographic: nearest first; once Potsdam is full, Warsaw, not Paris.
    let geo = |cpu| Req {
        strategy: Some("geographic"),
        ..Req::cpu(cpu)
    };
    let got = vec![place(&geo(4)), place(&geo(1)), place(&geo(1))];
    assert_eq!(got, [3, 2, 2], "geographic");
    eprintln!("geographic: {got:?}");
    reset();

    // random: only feasible nodes (h1 and h2 have tokens), and more than
    // one of them over 16 requests (all on one: p = 2^-15).
    let rnd = Req {
        custom: Some(("tokens", 1)),
        strategy: Some("random"),
        ..Default::default()
    };
    let got: Vec<usize> = (0..16).map(|_| place(&rnd)).collect();
    assert!(got.iter().all(|o| [1, 2].contains(o)), "random: {got:?}");
    assert!(got.contains(&1) && got.contains(&2), "random: {got:?}");
    eprintln!("random: {got:?}");
    reset();
}

#[test]
fn a_crashed_requester_s_lease_is_taken_back_and_announced() {
    let Some(mut lan) = Lan::builder(
        "after `kill -9` of a requester, the owner takes its lease back once the lease \
         runs out, and a third host hears the freed capacity",
    )
    .hosts(3, "")
    .start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let owner = lan.id(1);
    let a = Req {
        cpu: 2,
        memory_mb: 1024,
        node: Some("h1".into()),
        lease_secs: Some(2),
        ..Default::default()
    }
    .send(&lan, 0, Via::Cli)
    .expect("request");
    assert_eq!(a["node_name"], "h1", "{a}");
    assert_eq!(a["lease_secs"], 2.0, "{a}");
    let id = a["allocation_id"].as_str().unwrap().to_owned();
    let first_expiry = time(&a["expires_at"]);
    lan.eventually("h2 hears h1's grant", CONVERGE, || {
        let seen = lan.view_of(2, &owner).ok_or("h2 lost h1")?;
        (free(&seen)["cpu_cores"] == 2)
            .then_some(())
            .ok_or(format!("h2 sees h1 free {}", free(&seen)))
    });

    // While the holder runs, it renews: the lease outlives its 2 s term.
    std::thread::sleep(Duration::from_secs(3));
    let g = lan.get(1, &format!("/api/v1/allocations/{id}"));
    assert!(time(&g["expires_at"]) > first_expiry, "not renewed: {g}");

    lan.kill9(0);
    let killed = Utc::now();
    let mut last_expiry = time(&g["expires_at"]);
    let (_, took) = lan.eventually("h1 takes the lease back", CONVERGE, || {
        let granted = lan.allocations(1)["granted"].clone();
        match granted.as_array().unwrap().first() {
            Some(l) => {
                last_expiry = last_expiry.max(time(&l["expires_at"]));
                Err(format!("still granted, expires {}", l["expires_at"]))
            }
            None => Ok(()),
        }
    });
    let taken_back = Utc::now();
    assert!(
        taken_back >= last_expiry,
        "taken back at {taken_back} before the lease ran out at {last_expiry}"
    );
    assert!(
        took < Duration::from_secs(2 + 3),
        "taken back {took:?} after the crash, lease term 2 s"
    );
    let log = lan.log(1);
    assert!(
        log.contains("lease expired; resources taken back"),
        "no expiry in h1's log:\n{log}"
    );
    assert_eq!(free(&lan.node(1)), lendable(&lan.node(1)));
    let (_, heard) = lan.eventually("h2 hears h1's freed capacity", CONVERGE, || {
        let seen = lan.view_of(2, &owner).ok_or("h2 lost h1")?;
        (free(&seen) == lendable(&seen))
            .then_some(())
            .ok_or(format!("h2 sees h1 free {}", free(&seen)))
    });
    eprintln!(
        "requester crash: lease (2 s term) taken back {took:?} after kill -9 \
         ({} ms after the crash by the owner's clock), freed capacity heard by the third \
         host {heard:?} later",
        (taken_back - killed).num_milliseconds()
    );
}

#[test]
fn a_crashed_owner_restarts_with_its_leases_and_identity_and_renewals_go_on() {
    const TERM: u64 = 5;
    let Some(mut lan) = Lan::builder(
        "after `kill -9` of an owner and a restart, every lease it granted is still there, \
         its PeerId is the same, and its holders' renewals keep the leases alive well past \
         their term",
    )
    .hosts(3, "")
    .start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let owner = lan.id(0);
    let a1 = Req {
        cpu: 1,
        memory_mb: 512,
        node: Some("h0".into()),
        lease_secs: Some(TERM),
        ..Default::default()
    }
    .send(&lan, 1, Via::Api)
    .expect("request from h1");
    let a2 = Req {
        cpu: 2,
        node: Some("h0".into()),
        lease_secs: Some(TERM),
        ..Default::default()
    }
    .send(&lan, 2, Via::Cli)
    .expect("request from h2");
    let want: BTreeSet<String> = [&a1, &a2]
        .iter()
        .map(|a| a["allocation_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_of(&lan.allocations(0)["granted"]), want);

    lan.kill9(0);
    let crashed = Instant::now();
    let crashed_at = Utc::now();
    lan.start(0);
    eprintln!(
        "owner crash: restarted and serving {:?} after kill -9",
        crashed.elapsed()
    );
    assert_eq!(lan.id(0), owner, "the PeerId survives the restart");
    let granted = lan.allocations(0)["granted"].clone();
    assert_eq!(ids_of(&granted), want, "every lease survives: {granted}");
    for a in granted.as_array().unwrap() {
        let orig = if a["allocation_id"] == a1["allocation_id"] {
            &a1
        } else {
            &a2
        };
        assert_eq!(a["holder"], orig["holder"], "{a}");
        assert_eq!(a["allocated_resources"], orig["allocated_resources"], "{a}");
    }
    assert_eq!(free(&lan.node(0))["cpu_cores"], 4 - 3);
    let log = lan.log(0);
    assert!(log.contains("restored=2"), "h0's log:\n{log}");

    // The holders keep renewing through the new process: two and a half
    // terms after the crash both leases are still alive everywhere.
    let until = crashed + Duration::from_secs(TERM * 5 / 2);
    while Instant::now() < until {
        let granted = ids_of(&lan.allocations(0)["granted"]);
        assert_eq!(granted, want, "h0 lost a lease");
        for h in [1, 2] {
            assert_eq!(
                lan.allocations(h)["held"].as_array().unwrap().len(),
                1,
                "h{h} lost its lease"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for a in lan.allocations(0)["granted"].as_array().unwrap() {
        let expires = time(&a["expires_at"]);
        assert!(
            expires > crashed_at + chrono::Duration::seconds(2 * TERM as i64),
            "not renewed since the restart: {a}"
        );
    }
    for h in [1, 2] {
        let log = lan.log(h);
        assert!(
            !log.contains("lease lost") && !log.contains("lease expired before"),
            "h{h} lost its lease:\n{log}"
        );
    }
}

#[test]
fn a_storm_never_overcommits_every_refusal_has_a_reason_and_late_binding_finds_room() {
    // h0 is the owner under pressure. It announces with a 500 ms debounce,
    // so during a burst the requesters' views of it are stale: the case
    // that the owner's one-step admission and late binding exist for.
    // h1 and h2 request and lend nothing; they prefer h0 by weight. h3 has
    // room for everything.
    const REQUESTER: &str = "[lend]\ncpu_cores = 0\nmemory = 0\ndisk = 0\n[strategy]\ndefault = \"weighted\"\n[strategy.weights]\nh0 = 1000\nh3 = 1";
    let Some(mut lan) = Lan::builder(
        "80 concurrent requests from two hosts against a third never over-commit it in \
         any dimension, every refused request says why, and late binding places what the \
         owner refuses on another host with room",
    )
    .host("[lend]\ncpu_cores = 6\nmemory = \"6GiB\"\ndisk = \"10GiB\"\n[network]\nannounce_debounce = \"500ms\"")
    .hosts(2, REQUESTER)
    .host("[resources]\ncpu_cores = 64\nmemory = \"64GiB\"\n[lend]\ncpu_cores = 40\nmemory = \"32GiB\"\ndisk = \"10GiB\"")
    .start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let ids: Vec<String> = (0..4).map(|i| lan.id(i)).collect();
    let lan = &lan;

    // Part 1: pinned to h0, two request shapes so that cores, memory and
    // disk each run out. 40 concurrent API calls from h1, 40 CLI calls
    // from h2 on 10 threads.
    let shape = |k: usize| -> Req {
        let r = if k.is_multiple_of(2) {
            Req {
                cpu: 1,
                memory_mb: 256,
                disk_mb: 512,
                ..Default::default()
            }
        } else {
            Req {
                memory_mb: 1024,
                disk_mb: 1024,
                ..Default::default()
            }
        };
        Req {
            node: Some("h0".into()),
            lease_secs: Some(120),
            ..r
        }
    };
    let started = Instant::now();
    let barrier = Barrier::new(40 + 10);
    let barrier = &barrier;
    let results: Vec<Result<Value, Value>> = std::thread::scope(|s| {
        let mut threads = Vec::new();
        for k in 0..40 {
            threads.push(s.spawn(move || {
                barrier.wait();
                vec![shape(k).send(lan, 1, Via::Api)]
            }));
        }
        for t in 0..10 {
            threads.push(s.spawn(move || {
                barrier.wait();
                (0..4)
                    .map(|k| shape(t * 4 + k).send(lan, 2, Via::Cli))
                    .collect()
            }));
        }
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("request thread"))
            .collect()
    });
    let storm = started.elapsed();
    assert_eq!(results.len(), 80);
    let (mut by_owner, mut excluded_only) = (0, 0);
    let mut granted_ids = BTreeSet::new();
    for r in &results {
        match r {
            Ok(a) => {
                assert_eq!(a["node_id"], ids[0].as_str(), "{a}");
                granted_ids.insert(a["allocation_id"].as_str().unwrap().to_owned());
            }
            Err(e) => {
                let e = &e["error"];
                assert_eq!(e["code"], "no_capacity", "{e}");
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                let refusals = e["refusals"].as_array().expect("refusals listed");
                let excluded = e["excluded"].as_array().expect("excluded listed");
                for f in refusals {
                    assert!(f["reason"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                    assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                }
                for x in excluded {
                    assert!(x["why"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                }
                if refusals.iter().any(|f| {
                    f["node_id"] == ids[0].as_str() && f["reason"] == "insufficient_capacity"
                }) {
                    by_owner += 1;
                } else {
                    let why = excluded
                        .iter()
                        .find(|x| x["node_id"] == ids[0].as_str())
                        .unwrap_or_else(|| panic!("h0 neither refused nor excluded: {e}"));
                    assert!(
                        !why["why"]
                            .as_str()
                            .unwrap()
                            .contains("not the requested node"),
                        "{e}"
                    );
                    excluded_only += 1;
                }
            }
        }
    }
    let granted = lan.allocations(0)["granted"].clone();
    assert_eq!(ids_of(&granted), granted_ids, "owner and requesters agree");
    let node = lan.node(0);
    let (cpu, mem, disk) = sums(&granted);
    let cap = lendable(&node);
    assert!(
        cpu <= cap["cpu_cores"].as_u64().unwrap(),
        "cores over-committed: {cpu}"
    );
    assert!(
        mem <= cap["memory_mb"].as_u64().unwrap(),
        "memory over-committed: {mem}"
    );
    assert!(
        disk <= cap["disk_mb"].as_u64().unwrap(),
        "disk over-committed: {disk}"
    );
    assert_eq!(
        free(&node)["cpu_cores"].as_u64().unwrap(),
        cap["cpu_cores"].as_u64().unwrap() - cpu
    );
    assert_eq!(
        free(&node)["memory_mb"].as_u64().unwrap(),
        cap["memory_mb"].as_u64().unwrap() - mem
    );
    assert_eq!(
        free(&node)["disk_mb"].as_u64().unwrap(),
        cap["disk_mb"].as_u64().unwrap() - disk
    );
    let held: BTreeSet<String> = [1, 2]
        .iter()
        .flat_map(|&h| ids_of(&lan.allocations(h)["held"]))
        .collect();
    assert_eq!(held, granted_ids, "holders hold exactly what was granted");
    assert!(!granted_ids.is_empty() && by_owner + excluded_only > 0);
    eprintln!(
        "storm (pinned): 80 requests in {storm:?}: {} granted (cores {cpu}/{}, memory \
         {mem}/{} MiB, disk {disk}/{} MiB), {by_owner} refused by the owner, \
         {excluded_only} not sent because the view already showed it full",
        granted_ids.len(),
        cap["cpu_cores"],
        cap["memory_mb"],
        cap["disk_mb"],
    );

    release_all(lan, 1);
    release_all(lan, 2);
    assert_eq!(lan.allocations(0)["granted"], json!([]));
    wait_view_synced(lan, 1, &[0, 3]);
    wait_view_synced(lan, 2, &[0, 3]);

    // Part 2: unpinned. Both requesters prefer h0 (weight 1000 to 1), whose
    // capacity they see as free; h0 admits 6 and refuses the rest, which
    // late binding places on h3.
    let req = Req {
        cpu: 1,
        memory_mb: 128,
        lease_secs: Some(120),
        ..Default::default()
    };
    let barrier = Barrier::new(40);
    let barrier = &barrier;
    let req = &req;
    let results: Vec<(usize, Value)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..40)
            .map(|k| {
                s.spawn(move || {
                    let from = 1 + k % 2;
                    barrier.wait();
                    let a = req
                        .send(lan, from, Via::Api)
                        .unwrap_or_else(|e| panic!("h{from}: refused although h3 has room: {e}"));
                    (from, a)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("request thread"))
            .collect()
    });
    let ids = &ids;
    let on = |o: usize| {
        results
            .iter()
            .filter(move |(_, a)| a["node_id"] == ids[o].as_str())
    };
    let late: Vec<&Value> = on(3)
        .filter(|(_, a)| {
            a["refusals"].as_array().is_some_and(|r| {
                r.iter().any(|f| {
                    f["node_id"] == ids[0].as_str() && f["reason"] == "insufficient_capacity"
                })
            })
        })
        .map(|(_, a)| a)
        .collect();
    let (on0, on3) = (on(0).count(), on(3).count());
    assert_eq!(on0 + on3, 40);
    let g0 = lan.allocations(0)["granted"].clone();
    let g3 = lan.allocations(3)["granted"].clone();
    assert_eq!(g0.as_array().unwrap().len(), on0);
    assert_eq!(g3.as_array().unwrap().len(), on3);
    assert!(sums(&g0).0 <= 6, "h0 over-committed: {}", sums(&g0).0);
    assert!(
        !late.is_empty(),
        "no request refused by h0 was placed on h3 ({on0} on h0, {on3} on h3)"
    );
    eprintln!(
        "storm (late binding): 40 unpinned requests: {on0} on h0 (lends 6 cores), {on3} on \
         h3, {} of them after h0 refused",
        late.len()
    );
}

#[test]
fn a_copied_data_directory_is_reported_by_both_nodes() {
    let Some(mut lan) = Lan::builder(
        "two nodes started from copies of one data directory (same key) are detected, and \
         both say DUPLICATE IDENTITY in their logs and in /api/v1/node",
    )
    .hosts(3, "")
    .build() else {
        return;
    };
    lan.start(0);
    let id = lan.id(0);
    lan.signal(0, common::vlan::Signal::Term);
    lan.copy_data_dir(0, 1);
    lan.start_all();
    assert_eq!(lan.id(1), id, "h1 runs with h0's key");
    let (_, took) = lan.eventually(
        "h0 and h1 both report the duplicate identity",
        CONVERGE,
        || {
            for i in [0, 1] {
                let n = lan.node(i);
                if !n["duplicate_identity"].is_string() {
                    return Err(format!("h{i} does not report it: {n}"));
                }
                if !lan.log(i).contains("DUPLICATE IDENTITY") {
                    return Err(format!("h{i} does not log it"));
                }
            }
            Ok(())
        },
    );
    eprintln!("duplicate identity: reported by both copies {took:?} after they started");
    assert!(lan.node(2)["duplicate_identity"].is_null());
}

#[test]
fn a_node_restarted_on_a_new_port_is_found_again_within_seconds() {
    let Some(mut lan) = Lan::builder(
        "a node that crashes and comes back on a new TCP port is seen online again and \
         granting within seconds (short mDNS TTL)",
    )
    .hosts(3, "")
    .start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let id = lan.id(2);
    // The TCP port of a node's LAN address, once it has announced one.
    let port_of = |n: &Value| -> Option<String> {
        n["addresses"]
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.contains("/ip4/10."))
            .and_then(|a| a.split("/tcp/").nth(1))
            .and_then(|p| p.split('/').next())
            .map(str::to_owned)
    };
    let own_port = |lan: &Lan| {
        lan.eventually("h2 announces its LAN address", CONVERGE, || {
            port_of(&lan.node(2)).ok_or("no LAN address yet".to_owned())
        })
        .0
    };
    let old_port = own_port(&lan);
    lan.kill9(2);
    lan.eventually("h0 notices h2 is gone", CONVERGE, || {
        let seen = lan.view_of(0, &id).ok_or("forgotten")?;
        (seen["status"] != "online")
            .then_some(())
            .ok_or(format!("still {}", seen["status"]))
    });
    lan.start(2);
    let restarted = Instant::now();
    let new_port = own_port(&lan);
    let (_, seen_after) =
        lan.eventually("h0 and h1 see h2 online on its new port", CONVERGE, || {
            for i in [0, 1] {
                let seen = lan.view_of(i, &id).ok_or(format!("h{i} forgot h2"))?;
                let port = port_of(&seen);
                if seen["status"] != "online" || port.as_ref() != Some(&new_port) {
                    return Err(format!("h{i} sees h2 {} on {port:?}", seen["status"]));
                }
            }
            Ok(())
        });
    let a = Req {
        node: Some("h2".into()),
        ..Req::cpu(1)
    }
    .send(&lan, 0, Via::Api)
    .expect("allocation on the restarted node");
    assert_eq!(a["node_id"], id.as_str());
    let granted_after = restarted.elapsed();
    eprintln!(
        "restart on a new port (tcp {old_port} -> {new_port}): seen online again {seen_after:?} \
         after it served its API, first grant {granted_after:?} after"
    );
    assert!(seen_after < Duration::from_secs(10), "took {seen_after:?}");
}

#[test]
fn a_host_cut_off_by_its_link_goes_stale_and_comes_back_when_the_link_returns() {
    let Some(mut lan) = Lan::builder(
        "a host whose link goes down is seen as not online by the others, and online with \
         its capacity again soon after the link comes back",
    )
    .hosts(3, "")
    .start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let id = lan.id(2);
    lan.link_down(2);
    let (_, gone) = lan.eventually("h0 and h1 stop seeing h2 online", CONVERGE, || {
        for i in [0, 1] {
            let seen = lan.view_of(i, &id).ok_or(format!("h{i} forgot h2"))?;
            if seen["status"] == "online" {
                return Err(format!("h{i} still sees h2 online"));
            }
        }
        Ok(())
    });
    // While cut off, h2 cannot be allocated on.
    let e = Req {
        node: Some("h2".into()),
        ..Req::cpu(1)
    }
    .send(&lan, 0, Via::Api)
    .expect_err("h2 is cut off");
    assert_eq!(e["error"]["code"], "no_capacity", "{e}");
    lan.link_up(2);
    let back = lan.wait_converged(CONVERGE);
    let a = Req {
        node: Some("h2".into()),
        ..Req::cpu(1)
    }
    .send(&lan, 0, Via::Api)
    .expect("allocation on h2 once its link is back");
    assert_eq!(a["node_id"], id.as_str());
    eprintln!("partition: h2 seen as not online {gone:?} after its link went down, online again {back:?} after it came back");
}
