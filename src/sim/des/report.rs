//! The report of one scenario: a table per run (every strategy and the
//! centralized baseline, with the gaps to the baseline), as text and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::Priority;

use super::metrics::{percentile, Metrics};
use super::workload::{Dim, Drawn};
use super::RunResult;

/// Utilization target: within this many percent of the baseline.
pub const TARGET_UTIL_GAP_PCT: f64 = 5.0;
/// Wait target: high-priority p99 at most this many times the baseline's.
pub const TARGET_HIGH_P99_RATIO: f64 = 2.0;

/// A value per [`Dim`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PerDim {
    pub cpu: f64,
    pub memory: f64,
    pub gpu_memory: f64,
}

impl PerDim {
    fn from(v: [f64; 3]) -> Self {
        PerDim {
            cpu: round(v[0], 4),
            memory: round(v[1], 4),
            gpu_memory: round(v[2], 4),
        }
    }

    pub fn get(&self, d: Dim) -> f64 {
        match d {
            Dim::Cpu => self.cpu,
            Dim::Memory => self.memory,
            Dim::GpuMemory => self.gpu_memory,
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Wait times of one priority class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waits {
    /// `low`, `normal`, `high`, `critical`, or `high+critical`.
    pub priority: String,
    /// Jobs that arrived in the measured window and got resources.
    pub granted: usize,
    /// Jobs that arrived in the window and never got resources.
    pub unserved: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub mean_ms: Option<f64>,
}

fn waits(name: &str, sorted: &[u64], unserved: u64) -> Waits {
    Waits {
        priority: name.to_owned(),
        granted: sorted.len(),
        unserved,
        p50_ms: percentile(sorted, 50.0),
        p99_ms: percentile(sorted, 99.0),
        max_ms: sorted.last().copied(),
        mean_ms: (!sorted.is_empty())
            .then(|| round(sorted.iter().sum::<u64>() as f64 / sorted.len() as f64, 1)),
    }
}

/// One run: a strategy, or the centralized baseline.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The strategy, or `central`.
    pub name: String,
    /// What decided the grants.
    pub core: String,
    /// Time-averaged used / capacity over the measured window, counting
    /// only useful work: what a lease held before it was preempted is
    /// left out (the preempted job starts again from scratch).
    pub utilization: PerDim,
    /// Useful utilization of the dominant dimension: the figure compared.
    pub utilization_dominant: f64,
    /// Everything held, preempted work included, on the dominant dimension.
    pub held_dominant: f64,
    /// How far below the baseline's dominant utilization, in percent of it
    /// (positive = lower than the baseline).
    pub utilization_gap_pct: Option<f64>,
    /// Per priority, then `high+critical` together.
    pub waits: Vec<Waits>,
    /// p99 wait of high and critical jobs over the baseline's.
    pub high_p99_ratio: Option<f64>,
    /// Whether this run meets both targets (`None` for the baseline).
    pub meets_targets: Option<bool>,
    pub granted: u64,
    pub completed: u64,
    pub preemptions: u64,
    /// Jobs lost with their requester's crash.
    pub lost: u64,
    /// Requests sent to owners (placement asks).
    pub asks: u64,
    /// Requests that waited in an owner's queue.
    pub queued: u64,
    /// Owner refusals by reason.
    pub denials: BTreeMap<String, u64>,
    /// Jobs never served, by why.
    pub unserved: BTreeMap<String, u64>,
    pub invariant_checks: u64,
    pub invariant_violations: u64,
    pub violation_examples: Vec<String>,
    pub events: u64,
    /// Wall-clock time of the run (not in the JSON: it differs run to run).
    #[serde(skip)]
    pub wall_ms: u64,
    /// Sorted waits of high and critical jobs, for the CDF plot.
    #[serde(skip)]
    pub high_waits: Vec<u64>,
}

/// The whole report of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub nodes: usize,
    pub jobs: usize,
    pub crashes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Offered load per dimension, from the drawn jobs.
    pub offered_load: PerDim,
    pub dominant: Dim,
    pub preemption: bool,
    /// What decided grants at the owners in the decentralized runs.
    pub owner_core: String,
    pub targets: Targets,
    /// The baseline's high+critical p99 the ratios are taken against: its
    /// own, or one round trip if that is less.
    pub baseline_high_p99_ms: Option<u64>,
    /// The baseline first, then the strategies.
    pub runs: Vec<RunReport>,
}

/// The targets every strategy is judged against.
#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    pub utilization_gap_pct: f64,
    pub high_p99_ratio: f64,
}

impl Report {
    /// Total invariant violations over every run.
    pub fn violations(&self) -> u64 {
        self.runs.iter().map(|r| r.invariant_violations).sum()
    }

    /// The run named `name`.
    pub fn run(&self, name: &str) -> Option<&RunReport> {
        self.runs.iter().find(|r| r.name == name)
    }
}

fn run_report(r: RunResult, dom: Dim) -> RunReport {
    let RunResult {
        name,
        core,
        metrics,
        checker,
        utilization,
        useful,
        wall_ms,
    } = r;
    let Metrics {
        waits: mut w,
        unserved,
        lost,
        granted,
        completed,
        preemptions,
        denials,
        asks,
        queued,
        unserved_why,
        events,
        ..
    } = metrics;
    for v in &mut w {
        v.sort_unstable();
    }
    let mut high: Vec<u64> = w[2].iter().chain(&w[3]).copied().collect();
    high.sort_unstable();
    let mut list: Vec<Waits> = Priority::ALL
        .iter()
        .map(|p| waits(p.name(), &w[*p as usize], unserved[*p as usize]))
        .collect();
    list.push(waits("high+critical", &high, unserved[2] + unserved[3]));
    let util = PerDim::from(useful);
    let held = PerDim::from(utilization);
    RunReport {
        name,
        core,
        utilization_dominant: util.get(dom),
        held_dominant: held.get(dom),
        utilization: util,
        utilization_gap_pct: None,
        waits: list,
        high_p99_ratio: None,
        meets_targets: None,
        granted,
        completed,
        preemptions,
        lost,
        asks,
        queued,
        denials,
        unserved: unserved_why,
        invariant_checks: checker.checks,
        invariant_violations: checker.violations,
        violation_examples: checker.examples,
        events,
        wall_ms,
        high_waits: high,
    }
}

/// Assemble the report; `results[0]` is the baseline when `has_central`.
pub fn build(
    sc: &super::scenario::Scenario,
    d: &Drawn,
    owner_core: &str,
    results: Vec<RunResult>,
) -> Report {
    let mut runs: Vec<RunReport> = results
        .into_iter()
        .map(|r| run_report(r, d.dominant))
        .collect();
    let base = runs
        .iter()
        .find(|r| r.name == "central")
        .map(|c| (c.utilization_dominant, c.waits[4].p99_ms));
    // No decentralized scheme grants faster than one ask: where the
    // baseline's p99 is below a round trip, compare with one round trip.
    let floor = sc.network.rtt_ms.max(1);
    let base = base.map(|(u, p)| (u, p.map(|p| p.max(floor))));
    if let Some((bu, bp99)) = base {
        for r in runs.iter_mut().filter(|r| r.name != "central") {
            r.utilization_gap_pct =
                (bu > 0.0).then(|| round((bu - r.utilization_dominant) / bu * 100.0, 2));
            r.high_p99_ratio = match (r.waits[4].p99_ms, bp99) {
                (Some(a), Some(b)) if b > 0 => Some(round(a as f64 / b as f64, 2)),
                _ => None,
            };
            let util_ok = r
                .utilization_gap_pct
                .is_none_or(|g| g <= TARGET_UTIL_GAP_PCT);
            let wait_ok = match (r.waits[4].p99_ms, bp99) {
                (Some(a), Some(b)) => a as f64 <= TARGET_HIGH_P99_RATIO * b as f64,
                (None, _) => true,
                (Some(_), None) => false,
            };
            r.meets_targets = Some(util_ok && wait_ok);
        }
    }
    Report {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        seed: sc.seed,
        nodes: d.nodes.len(),
        jobs: d.jobs.len(),
        crashes: d.crashes.len(),
        duration_s: sc.duration_ms as f64 / 1000.0,
        warmup_s: sc.warmup_ms as f64 / 1000.0,
        offered_load: PerDim::from(d.offered),
        dominant: d.dominant,
        preemption: sc.policy.preemption,
        owner_core: owner_core.to_owned(),
        baseline_high_p99_ms: base.and_then(|(_, p)| p),
        targets: Targets {
            utilization_gap_pct: TARGET_UTIL_GAP_PCT,
            high_p99_ratio: TARGET_HIGH_P99_RATIO,
        },
        runs,
    }
}

fn ms(v: Option<u64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v >= 10_000 => format!("{:.0}s", v as f64 / 1000.0),
        Some(v) if v >= 1_000 => format!("{:.1}s", v as f64 / 1000.0),
        Some(v) => format!("{v}ms"),
    }
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scenario {}: {} nodes, {} jobs over {}s (first {}s not measured), seed {}, {} crashes, preemption {}",
        r.scenario,
        r.nodes,
        r.jobs,
        r.duration_s,
        r.warmup_s,
        r.seed,
        r.crashes,
        if r.preemption { "on" } else { "off" }
    );
    if !r.description.is_empty() {
        let _ = writeln!(s, "  {}", r.description.trim());
    }
    let _ = writeln!(
        s,
        "offered load: cpu {:.2}, memory {:.2}, gpu memory {:.2} (dominant: {}); owners: {}",
        r.offered_load.cpu,
        r.offered_load.memory,
        r.offered_load.gpu_memory,
        r.dominant.name(),
        r.owner_core
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<13} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9} {:>8} {:>7} {:>6} {:>7} {:>8} {:>6} {:>8}",
        "run", "util", "gap", "held", "cpu", "mem", "gpu", "hi p50", "hi p99", "hi×ctr", "served", "unsrv", "preempt", "asks/job", "viol", "wall"
    );
    for run in &r.runs {
        let served = run.waits[..4].iter().map(|w| w.granted).sum::<usize>();
        let unserved = run.waits[..4].iter().map(|w| w.unserved).sum::<u64>();
        let jobs = (served as u64 + unserved).max(1);
        let _ = writeln!(
            s,
            "{:<13} {:>6.1}% {:>7} {:>5.1}% {:>5.1}% {:>5.1}% {:>5.1}% {:>9} {:>9} {:>8} {:>7} {:>6} {:>7} {:>8.2} {:>6} {:>7.1}s",
            run.name,
            run.utilization_dominant * 100.0,
            run.utilization_gap_pct
                .map_or("-".to_owned(), |g| format!("{g:+.1}%")),
            run.held_dominant * 100.0,
            run.utilization.cpu * 100.0,
            run.utilization.memory * 100.0,
            run.utilization.gpu_memory * 100.0,
            ms(run.waits[4].p50_ms),
            ms(run.waits[4].p99_ms),
            run.high_p99_ratio
                .map_or("-".to_owned(), |x| format!("{x:.2}×")),
            served,
            unserved,
            run.preemptions,
            run.asks as f64 / jobs as f64,
            run.invariant_violations,
            run.wall_ms as f64 / 1000.0,
        );
    }
    let _ = writeln!(
        s,
        "util: useful utilization of the dominant dimension (held minus work lost to preemption); gap: below central, % of it; hi: high+critical waits"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "wait, submission to grant, p50 / p99 (granted jobs):");
    let _ = writeln!(
        s,
        "{:<13} {:>17} {:>17} {:>17} {:>17}",
        "run", "low", "normal", "high", "critical"
    );
    for run in &r.runs {
        let cell = |w: &Waits| format!("{} / {}", ms(w.p50_ms), ms(w.p99_ms));
        let _ = writeln!(
            s,
            "{:<13} {:>17} {:>17} {:>17} {:>17}",
            run.name,
            cell(&run.waits[0]),
            cell(&run.waits[1]),
            cell(&run.waits[2]),
            cell(&run.waits[3])
        );
    }
    let _ = writeln!(s);
    for run in &r.runs {
        let d: Vec<String> = run
            .denials
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let u: Vec<String> = run
            .unserved
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "{:<13} refusals: {}; unserved: {}; lost with requester: {}; queued: {}; {} invariant checks",
            run.name,
            if d.is_empty() { "none".to_owned() } else { d.join(", ") },
            if u.is_empty() { "none".to_owned() } else { u.join(", ") },
            run.lost,
            run.queued,
            run.invariant_checks
        );
        for v in &run.violation_examples {
            let _ = writeln!(s, "  VIOLATION {v}");
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "targets: utilization within {}% of central, high+critical p99 wait at most {}× central ({}, floored at one round trip)",
        r.targets.utilization_gap_pct, r.targets.high_p99_ratio, ms(r.baseline_high_p99_ms)
    );
    for run in r.runs.iter().filter(|r| r.meets_targets.is_some()) {
        let _ = writeln!(
            s,
            "  {:<13} {}",
            run.name,
            if run.meets_targets == Some(true) {
                "meets both"
            } else {
                "MISSES"
            }
        );
    }
    let v = r.violations();
    let _ = writeln!(
        s,
        "invariants: {}",
        if v == 0 {
            "ok, 0 violations".to_owned()
        } else {
            format!("FAILED, {v} violations")
        }
    );
    s
}
