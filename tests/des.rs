//! The discrete-event simulator (`lanswarm-des`) on small scenarios: every
//! invariant holds, a seed replays exactly, priorities order the waiting,
//! and a broken scenario file is refused with the key named.
//!
//! These run in CI and take a few seconds in a debug build.

use std::path::{Path, PathBuf};

use lanswarm::sim::des::{self, Options, Report};

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("simulations/scenarios")
        .join(name)
}

fn run(name: &str, seed: Option<u64>) -> Report {
    let sc = des::load(&scenario(name)).unwrap_or_else(|e| panic!("{e}"));
    des::run(
        &sc,
        &Options {
            seed,
            ..Options::default()
        },
    )
}

fn assert_sound(r: &Report) {
    let text = des::report::render(r);
    assert_eq!(r.violations(), 0, "invariant violations:\n{text}");
    let central = r.run("central").expect("a central run");
    assert!(central.utilization_dominant > 0.0, "{text}");
    assert!(r.runs.len() >= 2, "{text}");
    for run in &r.runs {
        assert!(run.granted > 0, "{} granted nothing:\n{text}", run.name);
        assert!(run.invariant_checks > 0, "{} checked nothing", run.name);
        assert!(
            (0.0..=1.0).contains(&run.utilization_dominant),
            "{}: utilization {}",
            run.name,
            run.utilization_dominant
        );
    }
}

#[test]
fn small_swarm_with_loss_crashes_and_preemption_holds_every_invariant() {
    let r = run("ci-small.toml", None);
    assert_sound(&r);
    assert!(r.crashes >= 2, "the planned crashes happen");
    assert!(
        r.runs.iter().any(|run| run.preemptions > 0),
        "preemption is exercised:\n{}",
        des::report::render(&r)
    );
    assert!(
        r.runs.iter().any(|run| run.queued > 0),
        "the owners' queues are exercised"
    );
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let a = serde_json::to_string(&run("ci-small.toml", Some(5))).unwrap();
    let b = serde_json::to_string(&run("ci-small.toml", Some(5))).unwrap();
    assert_eq!(a, b, "same seed, different reports");
    let c = serde_json::to_string(&run("ci-small.toml", Some(6))).unwrap();
    assert_ne!(a, c, "another seed should draw another workload");
}

#[test]
fn backfill_raises_utilization_and_cuts_the_median_wait() {
    // Same seed and workload; only the owners' `backfill` differs.
    let on = run("backfill-on.toml", None);
    let off = run("backfill-off.toml", None);
    assert_sound(&on);
    assert_sound(&off);
    let (ton, toff) = (des::report::render(&on), des::report::render(&off));
    let a = on.run("least-loaded").expect("a least-loaded run");
    let b = off.run("least-loaded").expect("a least-loaded run");
    assert!(
        a.utilization_dominant > b.utilization_dominant,
        "backfill on:\n{ton}\nbackfill off:\n{toff}"
    );
    // Normal priority is the only one in these scenarios.
    assert!(
        a.waits[1].p50_ms < b.waits[1].p50_ms,
        "backfill on:\n{ton}\nbackfill off:\n{toff}"
    );
}

#[test]
fn under_contention_high_priority_waits_no_longer_than_low() {
    let r = run("ci-contention.toml", None);
    assert_sound(&r);
    let text = des::report::render(&r);
    for run in &r.runs {
        let low = &run.waits[0];
        let high = &run.waits[2];
        assert!(low.granted > 0 && high.granted > 0, "{text}");
        assert!(
            high.mean_ms <= low.mean_ms,
            "{}: high waits {:?} ms on average, low {:?}:\n{text}",
            run.name,
            high.mean_ms,
            low.mean_ms
        );
        assert!(
            high.p50_ms <= low.p50_ms,
            "{}: high p50 {:?}, low p50 {:?}:\n{text}",
            run.name,
            high.p50_ms,
            low.p50_ms
        );
    }
}

/// Fair share against FIFO (issue 9): the same workload of two heavy
/// requesters (share 1) and six light ones (share 3), all asking for more
/// than their share; FIFO hands out capacity by demand, fair share by the
/// configured shares.
#[test]
fn fair_share_holds_requesters_near_their_configured_shares() {
    use lanswarm::core::fairshare::QueuePolicy;
    let sc = des::load(&scenario("ci-fairshare.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sc.policy.queue_policy, QueuePolicy::Fifo);
    let fifo = des::run(&sc, &Options::default());
    let mut fair_sc = sc.clone();
    fair_sc.policy.queue_policy = QueuePolicy::FairShare;
    let fair = des::run(&fair_sc, &Options::default());
    assert_sound(&fifo);
    assert_sound(&fair);
    let (tfifo, tfair) = (des::report::render(&fifo), des::report::render(&fair));
    let a = fifo
        .run("least-loaded")
        .and_then(|r| r.fairness.as_ref())
        .expect("per-requester figures");
    let b = fair
        .run("least-loaded")
        .and_then(|r| r.fairness.as_ref())
        .expect("per-requester figures");
    // Heavy requesters have share 1, light ones 3: 1 / (2·1 + 6·3).
    let heavy = b.requesters.iter().find(|r| r.class == "heavy").unwrap();
    assert_eq!(heavy.configured_share, 0.05);
    assert_eq!(b.requesters.len(), 8);
    // FIFO gives the heavy requesters far more than their share...
    assert!(a.max_share_error > 0.08, "FIFO:\n{tfifo}");
    // ...fair share keeps every requester within 4 points of its share
    // (with the shares left out of the owners' policy, every requester
    // would get about 12.5%: 7.5 points off).
    assert!(b.max_share_error < 0.04, "fair share:\n{tfair}");
    assert!(
        b.max_share_error * 3.0 < a.max_share_error,
        "FIFO:\n{tfifo}\nfair share:\n{tfair}"
    );
    // The light requesters wait less under fair share.
    let light = |f: &des::report::Fairness| {
        f.classes
            .iter()
            .find(|c| c.class == "light")
            .and_then(|c| c.wait_p50_ms)
            .expect("light jobs granted")
    };
    assert!(light(b) < light(a), "FIFO:\n{tfifo}\nfair share:\n{tfair}");
    // The same seed replays exactly.
    let again = des::run(&fair_sc, &Options::default());
    assert_eq!(
        serde_json::to_string(&fair).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
}

#[test]
fn a_malformed_scenario_is_refused_naming_the_key() {
    let good = std::fs::read_to_string(scenario("ci-small.toml")).unwrap();
    let cases = [
        ("load = 0.9", "load = -1.0", "workload.load"),
        ("loss = 0.05", "loss = \"lots\"", "network.loss"),
        (
            "cpu_cores = [8, 32]",
            "cpu_cores = [32, 8]",
            "workload.classes[1].cpu_cores",
        ),
        (
            "memory = \"64GiB\"",
            "memory = \"64 parsecs\"",
            "profiles[0].memory",
        ),
        (
            "rtt = \"2ms\"",
            "rtt = \"2ms\"\nrtt_jiter = \"1ms\"",
            "rtt_jiter",
        ),
        ("{ node = 3,", "{ node = 300,", "faults.crashes[0].node"),
        (
            "strategies = [\"least-loaded\"",
            "strategies = [\"fastest\"",
            "strategies[0]",
        ),
    ];
    for (from, to, key) in cases {
        assert!(good.contains(from), "{from}");
        let text = good.replacen(from, to, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &text).unwrap();
        let err = des::load(&path).expect_err(to).to_string();
        assert!(err.contains("broken.toml"), "{err}");
        assert!(err.contains(key), "expected the key {key} in: {err}");
    }
    let err = des::load(Path::new("/nonexistent/scenario.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn every_checked_in_scenario_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            des::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} scenarios in {}", dir.display());
}

/// Elastic sharing (issue 9, forecasting): on owners with a daily peak of
/// their own use, the forecast policy squeezes them less often than the
/// reactive one, neither ever leases more than it lends, and every
/// checked-in elastic scenario is valid.
#[test]
fn forecast_elastic_sharing_avoids_owner_slowdowns() {
    use lanswarm::core::elastic::ElasticMode;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/elastic");
    let sc = des::elastic::load(&dir.join("ci-forecast.toml")).unwrap_or_else(|e| panic!("{e}"));
    let r = des::elastic::run(&sc, None);
    let text = des::elastic::render(&r);
    assert_eq!(r.violations(), 0, "{text}");
    let reactive = r.run(ElasticMode::Reactive).unwrap();
    let forecast = r.run(ElasticMode::Forecast).unwrap();
    assert!(
        reactive.slowdowns > 0,
        "the scenario must squeeze reactive owners:\n{text}"
    );
    assert!(
        forecast.slowdowns * 4 < reactive.slowdowns,
        "forecast should avoid most slowdowns:\n{text}"
    );
    assert!(
        forecast.lent_core_hours > 0.5 * reactive.lent_core_hours,
        "{text}"
    );
    let again = des::elastic::run(&sc, None);
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            des::elastic::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "only {n} scenarios in {}", dir.display());
}
