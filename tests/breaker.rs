//! Circuit breakers and adaptive throttling (issue 9), end to end:
//!
//! - on a virtual LAN of real processes (`tests/common/vlan.rs`, needs
//!   root), a requester's breaker opens against a peer frozen with SIGSTOP
//!   (its connection stays up, its answers stop, requests time out), keeps
//!   it out of placements while open even after it is back, and closes after
//!   one successful trial once the cool-down is over;
//! - a real daemon on loopback shows `GET /api/v1/breakers`,
//!   `GET /api/v1/throttle`, `lanswarm breakers` and `lanswarm throttle`,
//!   and refuses a bad `[breaker]` or `[throttle]` section with the key
//!   named;
//! - an in-process node lowers its per-peer admission rate under host
//!   pressure and brings it back once the pressure is gone.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::daemon::Daemon;
use common::vlan::{Lan, Signal};

const CONVERGE: Duration = Duration::from_secs(20);

/// The breaker of `peer` in host `i`'s `GET /api/v1/breakers`.
fn breaker_of(lan: &Lan, i: usize, peer: &str) -> Option<Value> {
    let r = lan.get(i, "/api/v1/breakers");
    r["peers"]
        .as_array()?
        .iter()
        .find(|b| b["node_id"] == peer)
        .cloned()
}

/// One CPU core on `node`, for a short lease.
fn on(node: &str) -> Value {
    json!({
        "required_resources": { "cpu_cores": 1, "memory_mb": 64 },
        "node_id": node,
        "timeout_secs": 30,
    })
}

fn wait_online(lan: &Lan, viewer: usize, id: &str) -> Duration {
    let (_, took) = lan.eventually(
        &format!("h{viewer} sees {id} online"),
        CONVERGE,
        || match lan.view_of(viewer, id) {
            Some(n) if n["status"] == "online" => Ok(()),
            Some(n) => Err(format!("status {}", n["status"])),
            None => Err("unknown".into()),
        },
    );
    took
}

#[test]
fn a_circuit_breaker_opens_against_a_frozen_peer_and_closes_after_it_recovers() {
    let Some(mut lan) = Lan::builder(
        "a requester's circuit breaker opens after 3 timed-out requests to a peer frozen \
         with SIGSTOP, keeps it out of placements (excluded as `circuit open`) after it \
         resumes, and closes after one successful trial once the cool-down is over",
    )
    .host("[breaker]\nfailures = 3\ncooldown = \"12s\"\nmax_cooldown = \"60s\"\n")
    .host("")
    .build() else {
        return;
    };
    lan.start_all();
    let b = lan.id(1);
    wait_online(&lan, 0, &b);

    // Healthy: a grant from h1 leaves no breaker behind.
    let (status, a) = lan.request(0, &on(&b));
    assert_eq!(status, 201, "{a}");
    let (status, _) = lan.release(0, a["allocation_id"].as_str().unwrap());
    assert_eq!(status, 200);
    assert!(breaker_of(&lan, 0, &b).is_none());

    // Freeze h1, and ask it three times at once, before h0's failure
    // detector sees it as suspect (2 s): each request times out (5 s).
    lan.signal(1, Signal::Stop);
    let frozen = Instant::now();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| lan.request(0, &on(&b))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let timed_out = frozen.elapsed();
    for (status, v) in &answers {
        assert_eq!(*status, 503, "{v}");
        assert!(v.to_string().contains("unreachable"), "{v}");
    }
    let br = breaker_of(&lan, 0, &b).expect("h0 tracks h1's breaker");
    assert_eq!(br["state"], "open", "{br}");
    assert_eq!(br["failures"], 3, "{br}");
    assert_eq!(br["opens"], 1, "{br}");
    let retry_at = br["retry_at_ms"].as_u64().unwrap();
    let opened_at = br["opened_at_ms"].as_u64().unwrap();
    assert_eq!(retry_at - opened_at, 12_000, "{br}");
    eprintln!("breaker: opened after 3 failures, {timed_out:?} after SIGSTOP ({br})");

    // h1 resumes and is back online in h0's view, but its breaker stays
    // open until the cool-down is over: a request aimed at it is not sent.
    lan.signal(1, Signal::Cont);
    let back = wait_online(&lan, 0, &b);
    let (status, v) = lan.request(0, &on(&b));
    let text = v.to_string();
    assert_eq!(status, 503, "{v}");
    assert!(text.contains("circuit open until"), "{v}");
    let seen = lan.view_of(0, &b).expect("h0 knows h1");
    assert_eq!(seen["circuit"], "open", "{seen}");
    eprintln!(
        "breaker: h1 online again {back:?} after SIGCONT; still excluded {:?} after SIGSTOP",
        frozen.elapsed()
    );
    let out = lan.cli(0, &["breakers"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(table.contains("open") && table.contains("h1"), "{table}");

    // Cool-down over: half-open, and the next request is the trial.
    let (_, waited) = lan.eventually("h1's breaker is half-open", CONVERGE, || {
        let br = breaker_of(&lan, 0, &b).ok_or("no breaker")?;
        (br["state"] == "half_open")
            .then_some(())
            .ok_or(format!("{br}"))
    });
    let half_open_at = frozen.elapsed();
    let (status, a) = lan.request(0, &on(&b));
    assert_eq!(status, 201, "the trial is granted: {a}");
    let br = breaker_of(&lan, 0, &b).unwrap();
    assert_eq!(br["state"], "closed", "{br}");
    assert_eq!(br["failures"], 0, "{br}");
    let seen = lan.view_of(0, &b).expect("h0 knows h1");
    assert!(seen.get("circuit").is_none(), "{seen}");
    let log = lan.log(0);
    assert!(log.contains("circuit open"), "{log}");
    assert!(log.contains("circuit half-open"), "{log}");
    assert!(log.contains("circuit closed"), "{log}");
    eprintln!(
        "breaker: half-open {half_open_at:?} after SIGSTOP (waited {waited:?}), closed by \
         the trial at {:?}",
        frozen.elapsed()
    );
}

#[test]
fn breakers_and_throttle_are_shown_by_the_api_and_the_cli() {
    let d = Daemon::builder("brk")
        .toml(
            "[breaker]\nfailures = 2\ncooldown = \"5s\"\n\
             [throttle]\nadaptive = true\nfloor = 0.2\n",
        )
        .start();
    let (status, r) = d.get("/api/v1/breakers");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["policy"]["enabled"], true, "{r}");
    assert_eq!(r["policy"]["failures"], 2, "{r}");
    assert_eq!(r["policy"]["cooldown_ms"], 5_000, "{r}");
    assert_eq!(r["peers"], json!([]), "{r}");
    let (status, t) = d.get("/api/v1/throttle");
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["enabled"], true, "{t}");
    assert_eq!(t["configured_per_sec"], 50.0, "{t}");
    let eff = t["effective_per_sec"].as_f64().unwrap();
    assert!((10.0..=50.0).contains(&eff), "{t}");

    let out = d.cli(&["breakers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("circuit breakers on"), "{text}");
    assert!(text.contains("2 consecutive failure(s)"), "{text}");
    assert!(text.contains("no peer has failed"), "{text}");
    let out = d.cli(&["--json", "breakers"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from --json breakers");
    assert_eq!(v["policy"]["failures"], 2, "{v}");
    let out = d.cli(&["throttle"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("adaptive throttling on"), "{text}");
    assert!(text.contains("configured 50.00/s"), "{text}");
}

#[test]
fn a_bad_breaker_or_throttle_section_is_refused_with_the_key_named() {
    let cases = [
        ("[breaker]\nfailures = 0\n", "breaker.failures"),
        ("[breaker]\ncooldown = \"0s\"\n", "breaker.cooldown"),
        (
            "[breaker]\ncooldown = \"1m\"\nmax_cooldown = \"10s\"\n",
            "breaker.max_cooldown",
        ),
        ("[breaker]\nfailures = \"three\"\n", "breaker.failures"),
        ("[breaker]\nfailure = 3\n", "failure"),
        ("[throttle]\ndecrease = 1.5\n", "throttle.decrease"),
        ("[throttle]\nfloor = 0.0\n", "throttle.floor"),
        ("[throttle]\ninterval = \"1ms\"\n", "throttle.interval"),
    ];
    for (toml, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).unwrap();
        let err = lanswarm::config::Config::load(Some(&path))
            .expect_err(&format!("{toml:?} must be refused"));
        let text = err.to_string();
        assert!(text.contains(key), "{toml:?}: {text}");
        assert!(text.contains("node.toml"), "{toml:?}: {text}");
    }
    // The daemon refuses to start on one, saying which key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[network]\nmdns = false\n[breaker]\nfailures = 0\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lanswarm"));
    common::clean_env(&mut cmd);
    let out = common::output_within(
        cmd.args(["run", "--config"]).arg(&path),
        Duration::from_secs(20),
    )
    .expect("lanswarm run ends");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("breaker.failures"), "{err}");
    assert!(err.contains("between 1 and 1000"), "{err}");
}

#[tokio::test]
async fn the_admission_rate_falls_under_host_pressure_and_recovers() {
    use lanswarm::handle::Telemetry;
    use lanswarm::model::Capacity;
    use lanswarm::net::node::{self, NodeConfig};

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test(
        "adaptive",
        Capacity {
            cpu_cores: 4,
            memory_mb: 4096,
            ..Default::default()
        },
        dir.path().join("state.redb"),
    );
    cfg.adaptive = lanswarm::core::adaptive::AdaptivePolicy {
        enabled: true,
        interval_ms: 100,
        ..Default::default()
    };
    let configured = cfg.sched.rate.per_sec;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (n, task) = node::start(cfg, shutdown.clone()).await.unwrap();
    let rate = |want: f64| {
        let n = n.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let t = n.throttle().await.unwrap();
                    if (t.effective_per_sec - want).abs() < 1e-6 {
                        return t;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the rate never reached {want}"))
        }
    };
    let telemetry = |cpu: f32| Telemetry {
        cpu_usage_pct: cpu,
        gpus: vec![],
        memory_available_mb: 8 * 1024,
    };
    assert_eq!(n.throttle().await.unwrap().effective_per_sec, configured);
    let start = Instant::now();
    n.update_telemetry(telemetry(97.0));
    let t = rate(configured * 0.1).await;
    assert!(t.under_pressure, "{t:?}");
    let fell = start.elapsed();
    let start = Instant::now();
    n.update_telemetry(telemetry(5.0));
    let t = rate(configured).await;
    assert!(!t.under_pressure, "{t:?}");
    eprintln!(
        "adaptive: {configured}/s fell to the floor in {fell:?} under pressure and \
         recovered in {:?}",
        start.elapsed()
    );
    shutdown.cancel();
    let _ = task.await;
}
