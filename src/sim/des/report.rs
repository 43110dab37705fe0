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

/// One requester's share of what was granted, against its configured
/// share, and its waits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequesterShare {
    /// The requester's node id.
    pub requester: String,
    /// Its requester class.
    pub class: String,
    /// Its configured share over the sum of every requester's.
    pub configured_share: f64,
    /// Its part of all granted resource-time on the dominant dimension.
    pub achieved_share: f64,
    /// |achieved − configured|.
    pub share_error: f64,
    /// Its jobs (arrived in the window) that got resources / never did.
    pub granted: usize,
    pub unserved: u64,
    pub wait_p50_ms: Option<u64>,
    pub wait_p99_ms: Option<u64>,
}

/// The same, summed over one requester class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassShare {
    pub class: String,
    pub requesters: usize,
    /// Each requester's configured share (as written in the scenario).
    pub share: u32,
    pub configured_share: f64,
    pub achieved_share: f64,
    pub granted: usize,
    pub unserved: u64,
    pub wait_p50_ms: Option<u64>,
    pub wait_p99_ms: Option<u64>,
    /// The class's waits, sorted, for the plots (not in the JSON).
    #[serde(skip)]
    pub waits: Vec<u64>,
}

/// Achieved against configured shares, for scenarios with
/// `[[requesters]]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fairness {
    /// The dimension shares are measured on: the workload's dominant one
    /// (`cpu`: core-seconds). Each grant counts for its job's duration,
    /// the part inside the measured window.
    pub dimension: Dim,
    /// Largest and mean share error over the requesters.
    pub max_share_error: f64,
    pub mean_share_error: f64,
    pub requesters: Vec<RequesterShare>,
    pub classes: Vec<ClassShare>,
}

fn fairness(
    sc: &super::scenario::Scenario,
    by: &BTreeMap<u32, super::metrics::RequesterUse>,
    dom: Dim,
) -> Option<Fairness> {
    if sc.requesters.is_empty() {
        return None;
    }
    let k = super::metrics::dim_index(dom);
    let nodes: usize = sc.requesters.iter().map(|c| c.count).sum();
    let total_share: f64 = sc
        .requesters
        .iter()
        .map(|c| f64::from(c.share) * c.count as f64)
        .sum();
    let total_time: f64 = by.values().map(|u| u.granted_time[k]).sum();
    let empty = super::metrics::RequesterUse::default();
    let mut requesters = Vec::with_capacity(nodes);
    let mut class_waits: Vec<Vec<u64>> = vec![Vec::new(); sc.requesters.len()];
    for n in 0..nodes {
        let Some(c) = sc.requester_class(n) else {
            continue;
        };
        let class = &sc.requesters[c];
        let u = by.get(&(n as u32)).unwrap_or(&empty);
        let mut w = u.waits.clone();
        w.sort_unstable();
        class_waits[c].extend_from_slice(&w);
        let configured = f64::from(class.share) / total_share.max(1.0);
        let achieved = if total_time > 0.0 {
            u.granted_time[k] / total_time
        } else {
            0.0
        };
        requesters.push(RequesterShare {
            requester: super::workload::node_id(n).0,
            class: class.name.clone(),
            configured_share: round(configured, 4),
            achieved_share: round(achieved, 4),
            share_error: round((achieved - configured).abs(), 4),
            granted: w.len(),
            unserved: u.unserved,
            wait_p50_ms: percentile(&w, 50.0),
            wait_p99_ms: percentile(&w, 99.0),
        });
    }
    let classes = sc
        .requesters
        .iter()
        .zip(class_waits.iter_mut())
        .map(|(c, w)| {
            w.sort_unstable();
            let mine = requesters.iter().filter(|r| r.class == c.name);
            let (conf, ach, unserved) = mine.fold((0.0, 0.0, 0), |(a, b, u), r| {
                (a + r.configured_share, b + r.achieved_share, u + r.unserved)
            });
            ClassShare {
                class: c.name.clone(),
                requesters: c.count,
                share: c.share,
                configured_share: round(conf, 4),
                achieved_share: round(ach, 4),
                granted: w.len(),
                unserved,
                wait_p50_ms: percentile(w, 50.0),
                wait_p99_ms: percentile(w, 99.0),
                waits: std::mem::take(w),
            }
        })
        .collect();
    let errors: Vec<f64> = requesters.iter().map(|r| r.share_error).collect();
    Some(Fairness {
        dimension: dom,
        max_share_error: errors.iter().copied().fold(0.0, f64::max),
        mean_share_error: round(errors.iter().sum::<f64>() / errors.len().max(1) as f64, 4),
        requesters,
        classes,
    })
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
    /// Per job class (`[[workload.classes]]`), in the scenario's order;
    /// `priority` holds the class name.
    pub class_waits: Vec<Waits>,
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
    /// Achieved against configured shares per requester (scenarios with
    /// `[[requesters]]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness: Option<Fairness>,
    /// Wall-clock time of the run (not in the JSON: it differs run to run).
    #[serde(skip)]
    pub wall_ms: u64,
    /// Sorted waits of high and critical jobs, for the CDF plot.
    #[serde(skip)]
    pub high_waits: Vec<u64>,
    /// Sorted waits per job class, as `class_waits`, for the plots.
    #[serde(skip)]
    pub class_wait_samples: Vec<Vec<u64>>,
    /// Capacity held on the dominant dimension over time, from time 0
    /// (warm-up included): (start of the step in s, fraction held).
    #[serde(skip)]
    pub utilization_series: Vec<(f64, f64)>,
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

fn run_report(
    sc: &super::scenario::Scenario,
    r: RunResult,
    dom: Dim,
    capacity: &[f64; 3],
) -> RunReport {
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
        by_requester,
        mut class_waits,
        class_unserved,
        series_step_ms,
        series,
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
    let k = super::metrics::dim_index(dom);
    let step = series_step_ms.max(1) as f64;
    let utilization_series = series
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let frac = if capacity[k] > 0.0 {
                v[k] / (capacity[k] * step)
            } else {
                0.0
            };
            (i as f64 * step / 1000.0, round(frac, 4))
        })
        .collect();
    let class_wait_samples: Vec<Vec<u64>> = (0..sc.workload.classes.len())
        .map(|c| {
            let mut w = class_waits.remove(&(c as u16)).unwrap_or_default();
            w.sort_unstable();
            w
        })
        .collect();
    let class_list = sc
        .workload
        .classes
        .iter()
        .zip(&class_wait_samples)
        .enumerate()
        .map(|(c, (class, w))| {
            let unserved = class_unserved.get(&(c as u16)).copied().unwrap_or(0);
            waits(&class.name, w, unserved)
        })
        .collect();
    RunReport {
        name,
        core,
        utilization_dominant: util.get(dom),
        held_dominant: held.get(dom),
        utilization: util,
        utilization_gap_pct: None,
        waits: list,
        class_waits: class_list,
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
        fairness: fairness(sc, &by_requester, dom),
        wall_ms,
        high_waits: high,
        class_wait_samples,
        utilization_series,
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
        .map(|r| run_report(sc, r, d.dominant, &d.capacity))
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
    if r.runs.iter().any(|run| run.class_waits.len() > 1) {
        render_class_waits(&mut s, r);
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
    for run in &r.runs {
        if let Some(f) = &run.fairness {
            render_fairness(&mut s, &run.name, f);
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

fn render_class_waits(s: &mut String, r: &Report) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "wait per job class, p50 / p99 (granted jobs), and jobs never served:"
    );
    let _ = write!(s, "{:<13}", "run");
    if let Some(first) = r.runs.first() {
        for c in &first.class_waits {
            let _ = write!(s, " {:>17} {:>6}", c.priority, "unsrv");
        }
    }
    let _ = writeln!(s);
    for run in &r.runs {
        let _ = write!(s, "{:<13}", run.name);
        for c in &run.class_waits {
            let cell = format!("{} / {}", ms(c.p50_ms), ms(c.p99_ms));
            let _ = write!(s, " {:>17} {:>6}", cell, c.unserved);
        }
        let _ = writeln!(s);
    }
}

fn render_fairness(s: &mut String, run: &str, f: &Fairness) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{run}: share of granted {}-time, achieved against configured; share error max {:.3}, mean {:.3}",
        f.dimension.name(),
        f.max_share_error,
        f.mean_share_error
    );
    let _ = writeln!(
        s,
        "  {:<10} {:<10} {:>6} {:>8} {:>8} {:>7} {:>7} {:>6} {:>9} {:>9}",
        "requester",
        "class",
        "share",
        "config",
        "achieved",
        "error",
        "served",
        "unsrv",
        "wait p50",
        "wait p99"
    );
    for c in &f.classes {
        let _ = writeln!(
            s,
            "  {:<10} {:<10} {:>6} {:>7.1}% {:>7.1}% {:>7} {:>7} {:>6} {:>9} {:>9}",
            format!("({})", c.requesters),
            c.class,
            c.share,
            c.configured_share * 100.0,
            c.achieved_share * 100.0,
            "",
            c.granted,
            c.unserved,
            ms(c.wait_p50_ms),
            ms(c.wait_p99_ms)
        );
    }
    for q in &f.requesters {
        let _ = writeln!(
            s,
            "  {:<10} {:<10} {:>6} {:>7.1}% {:>7.1}% {:>6.1}% {:>7} {:>6} {:>9} {:>9}",
            q.requester,
            q.class,
            "",
            q.configured_share * 100.0,
            q.achieved_share * 100.0,
            q.share_error * 100.0,
            q.granted,
            q.unserved,
            ms(q.wait_p50_ms),
            ms(q.wait_p99_ms)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, run, Options};

    /// The backfill scenario (two job classes, small and large), shortened.
    fn report() -> super::Report {
        let text = include_str!("../../../simulations/scenarios/backfill-off.toml")
            .replace("duration = \"10m\"", "duration = \"4m\"");
        let sc = parse(&text, "backfill-off.toml", "backfill-off").unwrap();
        run(&sc, &Options::default())
    }

    #[test]
    fn the_waits_per_job_class_add_up_to_the_waits_per_priority() {
        let r = report();
        for run in &r.runs {
            let names: Vec<&str> = run
                .class_waits
                .iter()
                .map(|c| c.priority.as_str())
                .collect();
            assert_eq!(names, ["small", "large"], "{}", run.name);
            let granted: usize = run.class_waits.iter().map(|c| c.granted).sum();
            let unserved: u64 = run.class_waits.iter().map(|c| c.unserved).sum();
            assert_eq!(
                granted,
                run.waits[..4].iter().map(|w| w.granted).sum::<usize>()
            );
            assert_eq!(
                unserved,
                run.waits[..4].iter().map(|w| w.unserved).sum::<u64>()
            );
            assert!(granted > 0, "{}", run.name);
            // The large jobs (12-16 cores) wait for whole nodes: longer
            // than the small ones at the median.
            let (small, large) = (&run.class_waits[0], &run.class_waits[1]);
            assert!(
                large.p50_ms > small.p50_ms,
                "{}: {small:?} {large:?}",
                run.name
            );
            for (c, w) in run.class_waits.iter().zip(&run.class_wait_samples) {
                assert_eq!(c.granted, w.len());
                assert!(w.windows(2).all(|p| p[0] <= p[1]));
            }
        }
    }

    #[test]
    fn the_utilization_series_averages_to_the_utilization_over_the_window() {
        let r = report();
        for run in &r.runs {
            let s = &run.utilization_series;
            assert!(s.len() >= 100, "{}: {} steps", run.name, s.len());
            let step = s[1].0 - s[0].0;
            // The steps inside the measured window (it starts on a step).
            let inside: Vec<f64> = s
                .iter()
                .filter(|(t, _)| *t >= r.warmup_s && *t < r.duration_s)
                .map(|p| p.1)
                .collect();
            assert!((inside.len() as f64 * step - (r.duration_s - r.warmup_s)).abs() < 1e-9);
            let mean = inside.iter().sum::<f64>() / inside.len() as f64;
            // No preemption here: held = useful.
            assert!(
                (mean - run.utilization_dominant).abs() < 1e-3,
                "{}: series mean {mean}, utilization {}",
                run.name,
                run.utilization_dominant
            );
            assert!(s.iter().all(|p| (0.0..=1.0 + 1e-9).contains(&p.1)));
            // It starts empty and fills up during the warm-up.
            assert!(s[0].1 < 0.5 && mean > 0.5, "{}: {:?}", run.name, &s[..3]);
        }
    }
}
