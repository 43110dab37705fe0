//! A deterministic, seeded, discrete-event simulator of a whole swarm in
//! one process (`lanswarm-des`).
//!
//! It drives the real sans-IO core, the owners' grant decisions and the
//! requesters' [`Placer`](crate::core::placement::Placer), with modelled
//! gossip delay, message loss, round trips, node crashes and restarts, and
//! compares every placement strategy with a centralized, omniscient best-fit
//! scheduler run on the same jobs and the same crashes.
//!
//! - [`scenario`]: scenario files (TOML) and their validation.
//! - [`workload`]: the nodes, jobs and crashes drawn from the seed.
//! - [`events`]: the event queue, ordered by `(time_ms, seq)`, and the
//!   hashes the network model draws from.
//! - [`gossip`]: the shared board of announcements that stands in for every
//!   node's view.
//! - [`owner`]: the owner-side core behind one trait.
//! - [`swarm`]: the decentralized run.
//! - [`central`]: the centralized baseline.
//! - [`elastic`]: elastic sharing, reactive against forecast, on owners
//!   with a daily peak of their own use (its own scenario files).
//! - [`metrics`]: utilization, waits, refusals, and the invariant checks.
//! - [`report`]: the text and JSON report.
//! - `plots` (feature `plots`): PNG plots of a report.
//!
//! The same scenario and seed always give the same report: every map the
//! runs iterate is ordered, every random draw comes from the seed, and the
//! network's per-message delays and losses are hashes of the seed and the
//! message. `docs/scheduling.md` has the model, the figures and how to
//! reproduce them.

pub mod central;
pub mod elastic;
pub mod events;
pub mod gossip;
pub mod metrics;
pub mod owner;
#[cfg(feature = "plots")]
pub mod plots;
pub mod report;
pub mod scenario;
pub mod swarm;
pub mod workload;

use crate::core::placement::Strategy;

pub use report::Report;
pub use scenario::{load, parse, Scenario, ScenarioError};

/// The owner-side core the decentralized runs use. Switch it here.
pub type Core = owner::SchedOwner;

/// What one run produced.
#[derive(Debug)]
pub struct RunResult {
    /// The strategy, or `central`.
    pub name: String,
    /// What decided grants.
    pub core: String,
    pub metrics: metrics::Metrics,
    pub checker: metrics::Checker,
    /// Time-averaged share of capacity held, per dimension.
    pub utilization: [f64; 3],
    /// The same without work that preemption threw away.
    pub useful: [f64; 3],
    pub wall_ms: u64,
}

/// How to run a scenario.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Run these strategies instead of the scenario's.
    pub strategies: Option<Vec<Strategy>>,
    /// Use this seed instead of the scenario's.
    pub seed: Option<u64>,
    /// Runs at once (each run is single-threaded); 0 = one per CPU.
    pub threads: usize,
}

enum Job {
    Central,
    Swarm(Strategy),
}

/// Run the baseline and every strategy of `sc` on one drawn workload.
pub fn run(sc: &Scenario, opts: &Options) -> Report {
    let mut sc = sc.clone();
    if let Some(seed) = opts.seed {
        sc.seed = seed;
    }
    if let Some(st) = &opts.strategies {
        sc.strategies = st.clone();
    }
    let drawn = workload::draw(&sc);
    let mut work = vec![Job::Central];
    work.extend(sc.strategies.iter().map(|s| Job::Swarm(*s)));
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(work.len())
    .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<RunResult>>> =
        work.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = work.get(i) else { break };
                let result = match job {
                    Job::Central => central::run(&sc, &drawn),
                    Job::Swarm(s) => swarm::run::<Core>(&sc, &drawn, *s),
                };
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(result);
                }
            });
        }
    });
    let results: Vec<RunResult> = slots
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect();
    report::build(&sc, &drawn, <Core as owner::OwnerCore>::NAME, results)
}
