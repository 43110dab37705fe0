//! Elastic sharing in the simulator: reactive against forecast.
//!
//! Owners whose own (non-swarm) CPU use has a predictable daily peak lend
//! cores to a steady stream of swarm jobs. Each owner runs the real
//! [`Elastic`] core, once with [`ElasticMode::Reactive`] and once with
//! [`ElasticMode::Forecast`], on the *same* local-use traces and the same
//! jobs, and the run counts how often the owner's own work was squeezed.
//!
//! # The model
//!
//! - Time advances in ticks of `sample` (the node's local-load sampling).
//! - **Local use** of owner `i` at time `t` is
//!   `base_i + (peak_i − base_i)·shape(t) + noise`, clamped to the
//!   machine. `shape` is 0 outside the daily peak, ramps linearly up over
//!   `ramp`, stays 1 for `peak_length` and ramps down over `ramp`. The
//!   peak starts at `peak_at_i` into each day, moved by a per-day jitter
//!   uniform in `±jitter`; the noise is uniform in `±noise` per sample.
//!   `base_i`, `peak_i` and `peak_at_i` are drawn per owner from their
//!   ranges. Every value is a hash of the seed, owner and tick, so both
//!   policies see the same trace.
//! - **Swarm jobs** arrive as a Poisson stream sized so that their demand
//!   is `load` × all lendable cores; each needs `cores` for `duration`
//!   (uniform in the ranges). A job asks the owners in a drawn order
//!   starting at a random one, and is granted by the first whose current
//!   elastic capacity has room (`used + cores ≤ current`); if none has,
//!   it is refused (no queue). A granted job holds its cores until it ends
//!   (or, with `break_leases`, until the owner ends its lease).
//! - Each tick, per owner: jobs that ended leave; the owner's [`Elastic`]
//!   observes the local use with what leases hold; with `break_leases` the
//!   leases [`Elastic::leases_to_break`] names end; then the tick is
//!   measured; then the jobs arriving during the tick are placed.
//!
//! # What is counted (after `train_days`)
//!
//! - A **slowdown** is one owner-sample where the owner's own use plus
//!   the cores swarm leases hold exceeds the machine's cores: the owner's
//!   own work is squeezed. Also reported: squeezed core-hours (the excess
//!   over the machine, integrated) and leases ended early by the owner.
//! - The swarm's cost: core-hours lent (held by leases), and jobs refused.
//! - Invariant violations: a lease count above the elastic capacity
//!   (without `break_leases`) or a capacity above the cap. Must be 0.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::scenario::ScenarioError;
use crate::config::ElasticConfig;
use crate::core::elastic::{Elastic, ElasticMode, ElasticPolicy, LocalLoad};
use crate::model::{Capacity, Lease, LeaseId, NodeId, Priority};
use crate::units::parse_duration;

const HOUR_MS: f64 = 3_600_000.0;
/// Most simulated owner-ticks a scenario may ask for (owners × ticks).
const MAX_OWNER_TICKS: u64 = 200_000_000;
/// Most swarm jobs a scenario may draw (expected).
const MAX_JOBS: f64 = 10_000_000.0;

/// A validated elastic scenario. Times are ms.
#[derive(Clone, Debug, PartialEq)]
pub struct ElasticScenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    /// The length of a "day": the period of the local-use profile and of
    /// the forecaster.
    pub day_ms: u64,
    pub days: u64,
    /// Days not measured, while the forecaster learns.
    pub train_days: u64,
    pub sample_ms: u64,
    pub owners: u32,
    pub cpu_cores: u32,
    /// `[lend]` cap of each owner, cores.
    pub lend_cores: u32,
    pub local: LocalModel,
    pub swarm: SwarmModel,
    /// The owners' elastic policy; the mode is set per run.
    pub policy: ElasticPolicy,
}

/// The owners' own use. Ranges are drawn once per owner.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalModel {
    pub base: (f64, f64),
    pub peak: (f64, f64),
    pub peak_at_ms: (u64, u64),
    pub peak_length_ms: u64,
    pub ramp_ms: u64,
    pub noise: f64,
    pub jitter_ms: u64,
}

/// The swarm's jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmModel {
    pub load: f64,
    pub cores: (u32, u32),
    pub duration_ms: (u64, u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    description: String,
    seed: Option<u64>,
    day: Option<String>,
    days: Option<u64>,
    train_days: Option<u64>,
    sample: Option<String>,
    owners: Option<u32>,
    cpu_cores: Option<u32>,
    lend_cores: Option<u32>,
    local: RawLocal,
    swarm: RawSwarm,
    elastic: ElasticConfig,
}

/// One value or `[min, max]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Range<T> {
    One(T),
    Two([T; 2]),
}

impl<T: Clone> Range<T> {
    fn pair(&self) -> (T, T) {
        match self {
            Range::One(v) => (v.clone(), v.clone()),
            Range::Two([a, b]) => (a.clone(), b.clone()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLocal {
    base: Option<Range<f64>>,
    peak: Option<Range<f64>>,
    peak_at: Option<Range<String>>,
    peak_length: Option<String>,
    ramp: Option<String>,
    noise: Option<f64>,
    jitter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSwarm {
    load: Option<f64>,
    cores: Option<Range<u32>>,
    duration: Option<Range<String>>,
}

type Problem = (String, String);

fn problem(key: &str, msg: impl Into<String>) -> Problem {
    (key.to_owned(), msg.into())
}

fn ms(s: &str, key: &str) -> Result<u64, Problem> {
    let d = parse_duration(s).map_err(|e| problem(key, e.to_string()))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn opt_ms(s: &Option<String>, default: u64, key: &str) -> Result<u64, Problem> {
    s.as_deref().map_or(Ok(default), |s| ms(s, key))
}

fn ordered<T: PartialOrd + Copy>(r: (T, T), key: &str) -> Result<(T, T), Problem> {
    if r.0 > r.1 {
        return Err(problem(key, "the range's minimum is above its maximum"));
    }
    Ok(r)
}

/// Read and validate an elastic scenario file.
pub fn load(path: &Path) -> Result<ElasticScenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "elastic".to_owned());
    parse(&text, &path.display().to_string(), &stem)
}

/// Parse and validate elastic scenario text; errors name `file` and the
/// dotted key.
pub fn parse(text: &str, file: &str, default_name: &str) -> Result<ElasticScenario, ScenarioError> {
    let invalid = |(key, problem): Problem| ScenarioError::Invalid {
        file: file.to_owned(),
        key,
        line: None,
        problem,
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| invalid(problem("(file)", e.message().replace('\n', " "))))?;
    let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        invalid((key, e.into_inner().message().replace('\n', " ")))
    })?;
    raw.validate(default_name).map_err(invalid)
}

impl Raw {
    fn validate(self, default_name: &str) -> Result<ElasticScenario, Problem> {
        let day_ms = opt_ms(&self.day, 24 * 3_600_000, "day")?;
        if !(60_000..=7 * 24 * 3_600_000).contains(&day_ms) {
            return Err(problem("day", "must be between 1m and 7d"));
        }
        let days = self.days.unwrap_or(7);
        let train_days = self.train_days.unwrap_or(2);
        if days == 0 || train_days >= days {
            return Err(problem(
                "train_days",
                "must be fewer than days (and days more than 0)",
            ));
        }
        let sample_ms = opt_ms(&self.sample, 10_000, "sample")?;
        if sample_ms == 0 || sample_ms > day_ms / 10 {
            return Err(problem(
                "sample",
                "must be more than 0s and at most a tenth of a day",
            ));
        }
        let owners = self.owners.unwrap_or(20);
        if owners == 0 {
            return Err(problem("owners", "must be more than 0"));
        }
        let ticks = days.saturating_mul(day_ms) / sample_ms;
        if ticks.saturating_mul(u64::from(owners)) > MAX_OWNER_TICKS {
            return Err(problem(
                "owners",
                format!("owners × days / sample is above {MAX_OWNER_TICKS} owner-samples"),
            ));
        }
        let cpu_cores = self.cpu_cores.unwrap_or(16);
        let lend_cores = self.lend_cores.unwrap_or(12);
        if cpu_cores == 0 || lend_cores == 0 || lend_cores > cpu_cores {
            return Err(problem(
                "lend_cores",
                "cpu_cores and lend_cores must be more than 0, lend_cores at most cpu_cores",
            ));
        }

        let l = &self.local;
        let base = ordered(
            l.base.as_ref().map_or((1.0, 1.0), Range::pair),
            "local.base",
        )?;
        let peak = ordered(
            l.peak.as_ref().map_or((8.0, 8.0), Range::pair),
            "local.peak",
        )?;
        for (key, (lo, hi)) in [("local.base", base), ("local.peak", peak)] {
            if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && hi <= f64::from(cpu_cores)) {
                return Err(problem(key, "must be cores in [0, cpu_cores]"));
            }
        }
        let peak_at_ms = match &l.peak_at {
            None => (day_ms * 3 / 8, day_ms * 3 / 8),
            Some(r) => {
                let (a, b) = r.pair();
                ordered(
                    (ms(&a, "local.peak_at")?, ms(&b, "local.peak_at")?),
                    "local.peak_at",
                )?
            }
        };
        if peak_at_ms.1 >= day_ms {
            return Err(problem("local.peak_at", "must be within the day"));
        }
        let local = LocalModel {
            base,
            peak,
            peak_at_ms,
            peak_length_ms: opt_ms(&l.peak_length, day_ms / 12, "local.peak_length")?,
            ramp_ms: opt_ms(&l.ramp, day_ms / 288, "local.ramp")?,
            noise: l.noise.unwrap_or(0.5),
            jitter_ms: opt_ms(&l.jitter, 0, "local.jitter")?,
        };
        if !(local.noise.is_finite() && local.noise >= 0.0) {
            return Err(problem("local.noise", "must be cores, 0 or more"));
        }
        if local.peak_length_ms == 0 || local.peak_length_ms >= day_ms {
            return Err(problem(
                "local.peak_length",
                "must be more than 0s and shorter than a day",
            ));
        }
        if local.jitter_ms >= day_ms / 2 {
            return Err(problem("local.jitter", "must be shorter than half a day"));
        }

        let s = &self.swarm;
        let load = s.load.unwrap_or(0.9);
        if !(load.is_finite() && load > 0.0 && load <= 2.0) {
            return Err(problem("swarm.load", "must be in (0, 2]"));
        }
        let cores = ordered(s.cores.as_ref().map_or((1, 4), Range::pair), "swarm.cores")?;
        if cores.0 == 0 || cores.1 > lend_cores {
            return Err(problem(
                "swarm.cores",
                "must be 1 or more, at most lend_cores",
            ));
        }
        let duration_ms = match &s.duration {
            None => (day_ms / 288, day_ms / 24),
            Some(r) => {
                let (a, b) = r.pair();
                ordered(
                    (ms(&a, "swarm.duration")?, ms(&b, "swarm.duration")?),
                    "swarm.duration",
                )?
            }
        };
        if duration_ms.0 == 0 {
            return Err(problem("swarm.duration", "must be more than 0s"));
        }
        let mean_cores = f64::from(cores.0 + cores.1) / 2.0;
        let mean_ms = (duration_ms.0 as f64 + duration_ms.1 as f64) / 2.0;
        let expected_jobs =
            load * f64::from(owners) * f64::from(lend_cores) * (days * day_ms) as f64
                / (mean_cores * mean_ms);
        if expected_jobs > MAX_JOBS {
            return Err(problem(
                "swarm.duration",
                format!("about {expected_jobs:.0} jobs: at most {MAX_JOBS} (longer jobs, or fewer owners or days)"),
            ));
        }

        let mut policy = self.elastic.policy();
        policy.enabled = true;
        // The forecaster's period is the scenario's day.
        policy.forecast.period_ms = day_ms;
        policy.validate().map_err(|e| {
            let key = e.field.strip_prefix("forecast.").unwrap_or(e.field);
            problem(
                &format!("elastic.{key}"),
                format!("expected {}, got {}", e.expected, e.got),
            )
        })?;

        Ok(ElasticScenario {
            name: self.name.unwrap_or_else(|| default_name.to_owned()),
            description: self.description,
            seed: self.seed.unwrap_or(1),
            day_ms,
            days,
            train_days,
            sample_ms,
            owners,
            cpu_cores,
            lend_cores,
            local,
            swarm: SwarmModel {
                load,
                cores,
                duration_ms,
            },
            policy,
        })
    }
}

/// splitmix64: the hash every per-sample draw comes from.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) from a hash of the parts.
fn unit(parts: &[u64]) -> f64 {
    let h = parts.iter().fold(0u64, |h, p| mix(h ^ mix(*p)));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One owner's drawn parameters.
#[derive(Clone, Debug)]
struct OwnerSpec {
    base: f64,
    peak: f64,
    peak_at_ms: u64,
}

/// One swarm job.
#[derive(Clone, Debug)]
struct Job {
    arrival_ms: u64,
    cores: u32,
    duration_ms: u64,
    /// The first owner it asks.
    first: u32,
}

/// Everything both runs share: owners and jobs.
#[derive(Clone, Debug)]
struct Drawn {
    owners: Vec<OwnerSpec>,
    jobs: Vec<Job>,
}

fn draw(sc: &ElasticScenario) -> Drawn {
    let mut rng = StdRng::seed_from_u64(sc.seed);
    let between = |(lo, hi): (f64, f64), rng: &mut StdRng| {
        if hi > lo {
            rng.random_range(lo..=hi)
        } else {
            lo
        }
    };
    let owners = (0..sc.owners)
        .map(|_| {
            let base = between(sc.local.base, &mut rng);
            let peak = between(sc.local.peak, &mut rng).max(base);
            let (a, b) = sc.local.peak_at_ms;
            let peak_at_ms = if b > a { rng.random_range(a..=b) } else { a };
            OwnerSpec {
                base,
                peak,
                peak_at_ms,
            }
        })
        .collect();
    let sw = &sc.swarm;
    let mean_cores = f64::from(sw.cores.0 + sw.cores.1) / 2.0;
    let mean_ms = (sw.duration_ms.0 as f64 + sw.duration_ms.1 as f64) / 2.0;
    let lendable = f64::from(sc.owners) * f64::from(sc.lend_cores);
    // Jobs per ms.
    let rate = sw.load * lendable / (mean_cores * mean_ms.max(1.0));
    let end = sc.days.saturating_mul(sc.day_ms);
    let mut jobs = Vec::new();
    let mut t = 0.0f64;
    loop {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        t += -u.ln() / rate;
        if t.is_nan() || t >= end as f64 {
            break;
        }
        let cores = rng.random_range(sw.cores.0..=sw.cores.1);
        let duration_ms = rng.random_range(sw.duration_ms.0..=sw.duration_ms.1);
        let first = rng.random_range(0..sc.owners);
        jobs.push(Job {
            arrival_ms: t as u64,
            cores,
            duration_ms,
            first,
        });
    }
    Drawn { owners, jobs }
}

/// Owner `i`'s own use at `t`, in cores.
fn local_use(sc: &ElasticScenario, i: usize, o: &OwnerSpec, t: u64) -> f64 {
    let l = &sc.local;
    let day = t / sc.day_ms;
    let tod = t % sc.day_ms;
    let jitter = if l.jitter_ms == 0 {
        0.0
    } else {
        (unit(&[sc.seed, 1, i as u64, day]) * 2.0 - 1.0) * l.jitter_ms as f64
    };
    let start = o.peak_at_ms as f64 + jitter;
    let x = tod as f64 - start;
    let ramp = l.ramp_ms as f64;
    let len = l.peak_length_ms as f64;
    let shape = if x < -ramp || x > len + ramp {
        0.0
    } else if x < 0.0 {
        1.0 + x / ramp.max(1.0)
    } else if x <= len {
        1.0
    } else {
        1.0 - (x - len) / ramp.max(1.0)
    };
    let noise = (unit(&[sc.seed, 2, i as u64, t]) * 2.0 - 1.0) * l.noise;
    (o.base + (o.peak - o.base) * shape + noise).clamp(0.0, f64::from(sc.cpu_cores))
}

/// What one run (one policy) measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PolicyRun {
    /// `reactive` or `forecast`.
    pub policy: String,
    /// Owner-samples measured.
    pub samples: u64,
    /// Owner-samples where the owner's own use plus leases exceeded the
    /// machine.
    pub slowdowns: u64,
    /// `slowdowns / samples`.
    pub slowdown_share: f64,
    /// The excess over the machine, integrated, core-hours.
    pub squeezed_core_hours: f64,
    /// Slowdowns by hour of the day (24 buckets of the scenario's day).
    pub slowdowns_by_hour: Vec<u64>,
    /// Core-hours held by swarm leases.
    pub lent_core_hours: f64,
    /// Average share of the lendable cap that was offered (elastic
    /// capacity / cap).
    pub offered_share: f64,
    pub jobs_granted: u64,
    pub jobs_refused: u64,
    /// Leases the owner ended early (only with `break_leases`).
    pub leases_broken: u64,
    /// Lease use above the elastic capacity (without `break_leases`) or
    /// capacity above the cap. Must be 0.
    pub violations: u64,
}

/// Reactive against forecast on one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ElasticReport {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub owners: u32,
    pub days: u64,
    pub train_days: u64,
    pub jobs: usize,
    pub runs: Vec<PolicyRun>,
    /// Slowdowns the forecast avoided: reactive − forecast.
    pub slowdowns_avoided: i64,
    /// The same as a share of the reactive slowdowns.
    pub slowdowns_avoided_share: f64,
    /// Lent core-hours the forecast gave up, as a share of reactive's.
    pub lent_cost_share: f64,
}

impl ElasticReport {
    /// Invariant violations over all runs.
    pub fn violations(&self) -> u64 {
        self.runs.iter().map(|r| r.violations).sum()
    }

    /// The run of one policy.
    pub fn run(&self, mode: ElasticMode) -> Option<&PolicyRun> {
        self.runs.iter().find(|r| r.policy == mode.name())
    }
}

struct Held {
    id: u64,
    start_ms: u64,
    end_ms: u64,
    cores: u32,
}

fn as_lease(h: &Held) -> Lease {
    Lease {
        lease_id: LeaseId(format!("j{:012}", h.id)),
        request_id: String::new(),
        node_id: NodeId(String::new()),
        holder: NodeId(String::new()),
        cpu_cores: h.cores,
        memory_mb: 0,
        disk_mb: 0,
        gpus: Vec::new(),
        custom: Default::default(),
        models: Vec::new(),
        task_type: String::new(),
        priority: Priority::Normal,
        created_at_ms: h.start_ms,
        expires_at_ms: h.end_ms,
        lease_ms: h.end_ms.saturating_sub(h.start_ms),
    }
}

fn simulate(sc: &ElasticScenario, drawn: &Drawn, mode: ElasticMode) -> PolicyRun {
    let policy = ElasticPolicy {
        mode,
        ..sc.policy.clone()
    };
    let cap = Capacity {
        cpu_cores: sc.lend_cores,
        ..Capacity::default()
    };
    let n = drawn.owners.len();
    let mut elastic: Vec<Elastic> = (0..n)
        .map(|_| Elastic::new(policy.clone(), cap.clone(), sc.cpu_cores, 0))
        .collect();
    let mut held: Vec<Vec<Held>> = (0..n).map(|_| Vec::new()).collect();
    let mut used: Vec<u32> = vec![0; n];
    let mut run = PolicyRun {
        policy: mode.name().to_owned(),
        slowdowns_by_hour: vec![0; 24],
        ..PolicyRun::default()
    };
    let measure_from = sc.train_days.saturating_mul(sc.day_ms);
    let end = sc.days.saturating_mul(sc.day_ms);
    let dt_h = sc.sample_ms as f64 / HOUR_MS;
    let machine = f64::from(sc.cpu_cores);
    let mut offered = 0.0f64;
    let mut next_job = 0usize;
    let mut t = 0u64;
    while t < end {
        let measured = t >= measure_from;
        for i in 0..n {
            held[i].retain(|h| h.end_ms > t);
            used[i] = held[i].iter().map(|h| h.cores).sum();
            let local = local_use(sc, i, &drawn.owners[i], t);
            let u = Capacity {
                cpu_cores: used[i],
                ..Capacity::default()
            };
            let load = LocalLoad {
                cpu_busy_cores: local,
                memory_used_mb: 0,
            };
            if elastic[i].observe(&load, &u, t).is_some() && policy.break_leases {
                let leases: Vec<Lease> = held[i].iter().map(as_lease).collect();
                let gone = elastic[i].leases_to_break(&leases);
                if !gone.is_empty() {
                    held[i].retain(|h| !gone.contains(&as_lease(h).lease_id));
                    used[i] = held[i].iter().map(|h| h.cores).sum();
                    if measured {
                        run.leases_broken += gone.len() as u64;
                    }
                }
            }
            let current = elastic[i].current().cpu_cores;
            if current > sc.lend_cores || used[i] > current {
                run.violations += 1;
            }
            if measured {
                run.samples += 1;
                let total = local + f64::from(used[i]);
                if total > machine + 1e-9 {
                    run.slowdowns += 1;
                    let hour = (t % sc.day_ms) * 24 / sc.day_ms;
                    run.slowdowns_by_hour[hour as usize] += 1;
                    run.squeezed_core_hours += (total - machine) * dt_h;
                }
                run.lent_core_hours += f64::from(used[i]) * dt_h;
                offered += f64::from(current) / f64::from(sc.lend_cores);
            }
        }
        // Jobs arriving during this tick.
        let tick_end = t.saturating_add(sc.sample_ms);
        while let Some(job) = drawn.jobs.get(next_job) {
            if job.arrival_ms >= tick_end {
                break;
            }
            let id = next_job as u64;
            next_job += 1;
            let mut placed = false;
            for k in 0..n {
                let i = (job.first as usize + k) % n;
                let current = elastic[i].current().cpu_cores;
                if used[i].saturating_add(job.cores) <= current {
                    used[i] += job.cores;
                    held[i].push(Held {
                        id,
                        start_ms: t,
                        end_ms: t.saturating_add(job.duration_ms),
                        cores: job.cores,
                    });
                    placed = true;
                    break;
                }
            }
            if job.arrival_ms >= measure_from {
                if placed {
                    run.jobs_granted += 1;
                } else {
                    run.jobs_refused += 1;
                }
            }
        }
        t = tick_end;
    }
    if run.samples > 0 {
        run.slowdown_share = run.slowdowns as f64 / run.samples as f64;
        run.offered_share = offered / run.samples as f64;
    }
    run
}

/// Run the scenario under both policies (each on its own thread), with
/// `seed` instead of the scenario's if given.
pub fn run(sc: &ElasticScenario, seed: Option<u64>) -> ElasticReport {
    let mut sc = sc.clone();
    if let Some(s) = seed {
        sc.seed = s;
    }
    let drawn = draw(&sc);
    let (reactive, forecast) = std::thread::scope(|s| {
        let f = s.spawn(|| simulate(&sc, &drawn, ElasticMode::Forecast));
        let r = simulate(&sc, &drawn, ElasticMode::Reactive);
        // A panicking run is a bug; report it as an empty run with a
        // violation rather than tearing the report down.
        let f = f.join().unwrap_or_else(|_| PolicyRun {
            policy: ElasticMode::Forecast.name().to_owned(),
            violations: 1,
            ..PolicyRun::default()
        });
        (r, f)
    });
    let avoided = reactive.slowdowns as i64 - forecast.slowdowns as i64;
    let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    ElasticReport {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        seed: sc.seed,
        owners: sc.owners,
        days: sc.days,
        train_days: sc.train_days,
        jobs: drawn.jobs.len(),
        slowdowns_avoided: avoided,
        slowdowns_avoided_share: share(avoided as f64, reactive.slowdowns as f64),
        lent_cost_share: share(
            reactive.lent_core_hours - forecast.lent_core_hours,
            reactive.lent_core_hours,
        ),
        runs: vec![reactive, forecast],
    }
}

/// The report as text.
pub fn render(r: &ElasticReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "elastic sharing: {} (seed {}): {} owners, {} days ({} training, not measured), {} swarm jobs",
        r.scenario, r.seed, r.owners, r.days, r.train_days, r.jobs
    );
    if !r.description.is_empty() {
        let _ = writeln!(s, "{}", r.description);
    }
    let _ = writeln!(
        s,
        "\n  policy     slowdowns  share    squeezed   lent       offered  granted  refused  broken  violations"
    );
    let _ = writeln!(
        s,
        "                                   core-h     core-h     of cap"
    );
    for p in &r.runs {
        let _ = writeln!(
            s,
            "  {:<9} {:>10}  {:>5.2}%  {:>9.1}  {:>9.1}  {:>6.1}%  {:>7}  {:>7}  {:>6}  {:>10}",
            p.policy,
            p.slowdowns,
            100.0 * p.slowdown_share,
            p.squeezed_core_hours,
            p.lent_core_hours,
            100.0 * p.offered_share,
            p.jobs_granted,
            p.jobs_refused,
            p.leases_broken,
            p.violations
        );
    }
    let _ = writeln!(
        s,
        "\nforecast avoided {} of the reactive policy's slowdowns ({:.1}%), for {:.1}% fewer core-hours lent",
        r.slowdowns_avoided,
        100.0 * r.slowdowns_avoided_share,
        100.0 * r.lent_cost_share
    );
    let _ = writeln!(s, "\nslowdowns by hour of the day");
    for p in &r.runs {
        let hours: Vec<String> = p
            .slowdowns_by_hour
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(h, n)| format!("{h:02}h {n}"))
            .collect();
        let _ = writeln!(s, "  {:<9} {}", p.policy, hours.join(", "));
    }
    let _ = writeln!(
        s,
        "\ninvariants: {}",
        if r.violations() == 0 {
            "ok (leases never above the elastic capacity, capacity never above the cap)".to_owned()
        } else {
            format!("FAILED ({} violations)", r.violations())
        }
    );
    s
}

/// PNG plot of a report (feature `plots`): slowdowns by hour of the day,
/// reactive against forecast. Writes `elastic-<scenario>-slowdowns.png`
/// into `dir` and returns its path.
#[cfg(feature = "plots")]
pub fn plot(r: &ElasticReport, dir: &Path) -> Result<std::path::PathBuf, String> {
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};
    const FONT: &[u8] = include_bytes!("../../../simulations/fonts/DejaVuSans.ttf");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "bad font".to_owned())?;
    let path = dir.join(format!("elastic-{}-slowdowns.png", r.scenario));
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(&path, (960, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = r
            .runs
            .iter()
            .flat_map(|p| p.slowdowns_by_hour.iter().copied())
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: owner slowdowns by hour of the day ({} owners, {} measured days)",
                    r.scenario,
                    r.owners,
                    r.days - r.train_days
                ),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..24.0, 0.0..max * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("hour of the (scenario's) day")
            .y_desc("owner-samples squeezed")
            .x_labels(13)
            .x_label_formatter(&|v| format!("{v:.0}h"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        let colours = [RGBColor(214, 39, 40), RGBColor(31, 119, 180)];
        for (i, p) in r.runs.iter().enumerate() {
            let c = colours[i % colours.len()];
            let (off, w) = (0.1 + 0.4 * i as f64, 0.4);
            chart
                .draw_series(p.slowdowns_by_hour.iter().enumerate().map(|(h, n)| {
                    let x = h as f64 + off;
                    Rectangle::new([(x, 0.0), (x + w, *n as f64)], c.filled())
                }))?
                .label(format!(
                    "{}: {} slowdowns, {:.0} core-h lent",
                    p.policy, p.slowdowns, p.lent_core_hours
                ))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
seed = 3
day = "1h"
days = 4
train_days = 1
sample = "10s"
owners = 6

[local]
base = [0.5, 1.5]
peak = [8, 10]
peak_at = ["20m", "30m"]
peak_length = "10m"
ramp = "1m"
noise = 0.5

[swarm]
load = 0.9
cores = [1, 4]
duration = ["1m", "6m"]

[elastic]
shrink_after = "20s"
grow_after = "1m"
horizon = "8m"
trend_horizon = "0s"
buckets = 60
"#;

    #[test]
    fn the_forecast_avoids_slowdowns_and_nothing_overcommits() {
        let sc = parse(SMALL, "small.toml", "small").unwrap();
        let r = run(&sc, None);
        assert_eq!(r.violations(), 0, "{}", render(&r));
        let re = r.run(ElasticMode::Reactive).unwrap();
        let fo = r.run(ElasticMode::Forecast).unwrap();
        assert!(re.slowdowns > 0, "{}", render(&r));
        assert!(fo.slowdowns < re.slowdowns, "{}", render(&r));
        assert!(fo.lent_core_hours > 0.0);
        assert_eq!(re.samples, fo.samples);
        assert_eq!(re.samples, 6 * 3 * 360);
    }

    #[test]
    fn same_seed_same_report_and_bad_keys_are_named() {
        let sc = parse(SMALL, "small.toml", "small").unwrap();
        let a = serde_json::to_string(&run(&sc, None)).unwrap();
        let b = serde_json::to_string(&run(&sc, None)).unwrap();
        assert_eq!(a, b);
        let c = serde_json::to_string(&run(&sc, Some(4))).unwrap();
        assert_ne!(a, c);
        for (from, to, key) in [
            ("owners = 6", "owners = 0", "owners"),
            ("load = 0.9", "load = 3.0", "swarm.load"),
            ("peak = [8, 10]", "peak = [10, 8]", "local.peak"),
            ("horizon = \"8m\"", "horizon = \"0s\"", "elastic.horizon"),
            ("buckets = 60", "buckets = 0", "elastic.buckets"),
            ("noise = 0.5", "nois = 0.5", "local.nois"),
            ("day = \"1h\"", "day = \"soon\"", "day"),
        ] {
            let bad = SMALL.replace(from, to);
            let e = parse(&bad, "x.toml", "x").unwrap_err();
            assert_eq!(e.key(), Some(key), "{to}: {e}");
            assert!(e.to_string().starts_with("x.toml"), "{e}");
        }
    }
}
