//! Scenario files: what swarm to simulate, under which workload, network,
//! faults and policy.
//!
//! A scenario is a TOML file (`simulations/scenarios/*.toml`). Every
//! section is optional and has defaults, except the node profiles. Sizes are
//! written like `"64GiB"` (a bare number is MiB) and durations like `"30s"`
//! or `"250ms"` (a bare number is seconds), as in the node's own config
//! ([`crate::units`]). Ranges are either one value or `[min, max]`.
//!
//! Loading is two steps: serde reads the raw file (unknown keys and wrong
//! types are errors, with the key path from `serde_path_to_error`), then
//! [`RawScenario::validate`] turns it into a [`Scenario`] and checks every
//! value. Every error names the file, the dotted key and the problem.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::placement::Strategy;
use crate::model::Priority;
use crate::units::{parse_duration, parse_size_mb};

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}: cannot read scenario file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown, missing, of the wrong
    /// type or out of range.
    #[error("{file}{}: {key}: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file (or other source).
        file: String,
        /// The dotted key, e.g. `workload.classes[1].cpu_cores`; `(file)`
        /// when the error is not about one key.
        key: String,
        /// The 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
}

impl ScenarioError {
    /// The dotted key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ScenarioError::Read { .. } => None,
            ScenarioError::Invalid { key, .. } => Some(key),
        }
    }
}

/// A validated scenario. Times are ms, sizes MiB.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Seed of the workload, the faults and the network jitter.
    pub seed: u64,
    /// Jobs arrive during `[0, duration_ms)`.
    pub duration_ms: u64,
    /// Metrics ignore `[0, warmup_ms)`.
    pub warmup_ms: u64,
    /// Strategies to run, each on the same workload.
    pub strategies: Vec<Strategy>,
    /// Node profiles; node `i` takes the profiles in order.
    pub profiles: Vec<Profile>,
    pub workload: Workload,
    pub network: Network,
    pub faults: Faults,
    pub policy: Policy,
    /// Requester classes; empty means every node submits jobs equally and
    /// every share is 1.
    pub requesters: Vec<RequesterClass>,
}

impl Scenario {
    /// Total number of nodes.
    pub fn node_count(&self) -> usize {
        self.profiles.iter().map(|p| p.count).sum()
    }

    /// The requester class of node `node` (classes take the first nodes,
    /// in order), if it is a configured requester.
    pub fn requester_class(&self, node: usize) -> Option<usize> {
        let mut from = 0;
        for (i, c) in self.requesters.iter().enumerate() {
            if node < from + c.count {
                return Some(i);
            }
            from += c.count;
        }
        None
    }
}

/// A kind of requester: `count` nodes (the first nodes not taken by an
/// earlier class) that submit jobs, with a configured share at every
/// owner and a demand (relative job-arrival rate, per requester).
#[derive(Clone, Debug, PartialEq)]
pub struct RequesterClass {
    pub name: String,
    pub count: usize,
    /// The share each of these requesters has at every owner.
    pub share: u32,
    /// Relative rate of jobs each of these requesters submits.
    pub demand: f64,
}

/// A kind of node, and how many of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub count: usize,
    pub cpu_cores: u32,
    pub memory_mb: u64,
    /// Memory of each GPU, MiB.
    pub gpus: Vec<u64>,
    /// Announced weight, for the `weighted` strategy.
    pub weight: u32,
}

/// The jobs: how many (from the offered load), how big, how long, how
/// urgent.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Offered load on the dominant dimension: sum(demand × duration) /
    /// (capacity × time).
    pub load: f64,
    /// How long a job may wait for resources before it gives up.
    pub wait_ms: u64,
    /// Extra lease time beyond the job's duration; the lease runs out then if
    /// the holder never releases it (it crashed).
    pub lease_grace_ms: u64,
    /// Share of each priority, indexed like [`Priority::ALL`].
    pub priorities: [f64; 4],
    pub classes: Vec<JobClass>,
}

/// One kind of job. Every size is drawn uniformly from its range.
#[derive(Clone, Debug, PartialEq)]
pub struct JobClass {
    pub name: String,
    /// Relative share of the jobs.
    pub share: f64,
    pub cpu_cores: (u32, u32),
    pub memory_mb: (u64, u64),
    pub gpus: (u32, u32),
    /// Memory per GPU; 0 means whole GPUs.
    pub gpu_memory_mb: (u64, u64),
    pub duration_ms: (u64, u64),
    /// Draw durations log-uniformly (many short, few long) instead of
    /// uniformly.
    pub log_uniform: bool,
}

/// The modelled network.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Mean one-way delay of a capacity announcement (gossip), ms.
    pub gossip_delay_ms: u64,
    /// Announcement delays are uniform in mean ± jitter.
    pub gossip_jitter_ms: u64,
    /// Probability that one announcement never reaches one requester.
    pub loss: f64,
    /// Round trip of one request-response exchange, ms.
    pub rtt_ms: u64,
    /// Round trips are uniform in rtt ± jitter.
    pub rtt_jitter_ms: u64,
    /// An owner announces at least this often (the heartbeat).
    pub heartbeat_ms: u64,
    /// At most one change announcement per owner per this long.
    pub debounce_ms: u64,
    /// A requester does not ask an owner it has not heard from for this long.
    pub stale_after_ms: u64,
    /// How long a requester waits for an owner that does not answer.
    pub ask_timeout_ms: u64,
    /// How long a requester takes to notice that the owner its job is queued
    /// at has crashed (the connection's ping timeout).
    pub failure_detect_ms: u64,
}

/// Node crashes and restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Random crashes, per node per hour.
    pub crash_rate_per_hour: f64,
    /// How long a crashed node stays down.
    pub restart_delay_ms: u64,
    /// Crashes at given times, in addition to the random ones.
    pub crashes: Vec<Crash>,
}

/// One planned crash.
#[derive(Clone, Debug, PartialEq)]
pub struct Crash {
    pub node: usize,
    pub at_ms: u64,
    pub down_ms: u64,
}

/// The owners' and requesters' policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Whether owners may preempt lower-priority leases.
    pub preemption: bool,
    /// Most requests waiting in one owner's queue.
    pub max_queue: usize,
    /// Most owners a requester asks per placement round.
    pub max_tries: usize,
    /// Rank at most this many candidates per request (a random subset of the
    /// feasible ones); 0 ranks them all, as the real node does.
    pub max_candidates: usize,
    /// Without a queue at the owners: how long a requester waits before it
    /// tries again after every owner refused.
    pub retry_ms: u64,
    /// Owners backfill behind a blocked request (shadow-time checked).
    pub backfill: bool,
    /// Owners' order within a priority (`fifo`, `fair-share`, `weighted`).
    pub queue_policy: crate::core::fairshare::QueuePolicy,
    /// The owners' shares per requester (from `[[requesters]]`) and the
    /// half-life of recorded use (`fair_share_half_life`).
    pub shares: crate::core::fairshare::Shares,
}

// ---------------------------------------------------------------------------
// Raw file

/// A scalar as written: a number or a string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

/// One value or `[min, max]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum RawRange {
    One(Scalar),
    Many(Vec<Scalar>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawScenario {
    /// Short name; defaults to the file name.
    name: Option<String>,
    description: String,
    seed: Option<u64>,
    duration: Option<Scalar>,
    warmup: Option<Scalar>,
    strategies: Option<Vec<String>>,
    profiles: Vec<RawProfile>,
    workload: RawWorkload,
    network: RawNetwork,
    faults: RawFaults,
    policy: RawPolicy,
    requesters: Vec<RawRequester>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRequester {
    name: Option<String>,
    count: Option<i64>,
    share: Option<i64>,
    demand: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawProfile {
    name: Option<String>,
    count: Option<i64>,
    cpu_cores: Option<i64>,
    memory: Option<Scalar>,
    gpus: Vec<Scalar>,
    weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWorkload {
    load: Option<f64>,
    wait: Option<Scalar>,
    lease_grace: Option<Scalar>,
    priorities: Option<RawPriorities>,
    classes: Vec<RawClass>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPriorities {
    low: f64,
    normal: f64,
    high: f64,
    critical: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawClass {
    name: Option<String>,
    share: Option<f64>,
    cpu_cores: Option<RawRange>,
    memory: Option<RawRange>,
    gpus: Option<RawRange>,
    gpu_memory: Option<RawRange>,
    duration: Option<RawRange>,
    duration_dist: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNetwork {
    gossip_delay: Option<Scalar>,
    gossip_jitter: Option<Scalar>,
    loss: Option<f64>,
    rtt: Option<Scalar>,
    rtt_jitter: Option<Scalar>,
    heartbeat: Option<Scalar>,
    debounce: Option<Scalar>,
    stale_after: Option<Scalar>,
    ask_timeout: Option<Scalar>,
    failure_detect: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFaults {
    crash_rate: Option<f64>,
    restart_delay: Option<Scalar>,
    crashes: Vec<RawCrash>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCrash {
    node: Option<i64>,
    at: Option<Scalar>,
    down: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPolicy {
    preemption: Option<bool>,
    max_queue: Option<i64>,
    max_tries: Option<i64>,
    max_candidates: Option<i64>,
    retry: Option<Scalar>,
    backfill: Option<bool>,
    queue_policy: Option<String>,
    fair_share_half_life: Option<Scalar>,
}

// ---------------------------------------------------------------------------
// Loading

/// Read and validate a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".to_owned());
    parse(&text, &path.display().to_string(), &stem)
}

/// Parse and validate scenario text. `file` names the source in errors;
/// `default_name` is the scenario's name when the file gives none.
pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
    let invalid = |key: String, line: Option<usize>, problem: String| ScenarioError::Invalid {
        file: file.to_owned(),
        key,
        line,
        problem,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        invalid("(file)".to_owned(), line, one_line(e.message()))
    })?;
    let raw: RawScenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        let line = inner.span().map(|s| line_of(text, s.start));
        let key = if key == "." || key.is_empty() {
            "(file)".to_owned()
        } else {
            key
        };
        invalid(key, line, one_line(inner.message()))
    })?;
    raw.validate(default_name).map_err(|(key, problem)| {
        let line = line_of_key(text, &key);
        invalid(key, line, problem)
    })
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', "; ")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where `key` (`network.loss`, `workload.classes[1].cpu_cores`,
/// `faults.crashes[0].node`) is set, as a best guess for an error message:
/// the section's header (the n-th `[[...]]` for an index), then the first
/// line in it that sets the last key. `None` when not found, e.g. for an
/// inline table.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (section, field) = match key.rsplit_once('.') {
        Some((sec, f)) => (Some(sec), f),
        None => (None, key),
    };
    let field = field.split('[').next()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    if let Some(sec) = section {
        let (name, index) = match sec.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()?),
            None => (sec, 0),
        };
        let headers = [format!("[[{name}]]"), format!("[{name}]")];
        from = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| headers.iter().any(|h| l.trim() == h))
            .nth(index)?
            .0
            + 1;
    }
    lines[from..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['))
        .position(|l| {
            l.trim_start()
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| from + i + 1)
}

type Problem = (String, String);

fn problem(key: impl Into<String>, msg: impl Into<String>) -> Problem {
    (key.into(), msg.into())
}

fn parse_ms(s: &Scalar, key: &str) -> Result<u64, Problem> {
    match s {
        Scalar::Int(n) if *n >= 0 => Ok(*n as u64 * 1000),
        Scalar::Float(f) if *f >= 0.0 && f.is_finite() => Ok((*f * 1000.0).round() as u64),
        Scalar::Str(t) => parse_duration(t)
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
            .map_err(|e| problem(key, e.to_string())),
        _ => Err(problem(
            key,
            "expected a duration like \"30s\" or \"250ms\" (a bare number is seconds)",
        )),
    }
}

fn size_mb(s: &Scalar, key: &str) -> Result<u64, Problem> {
    match s {
        Scalar::Int(n) if *n >= 0 => Ok(*n as u64),
        Scalar::Str(t) => parse_size_mb(t).map_err(|e| problem(key, e.to_string())),
        _ => Err(problem(
            key,
            "expected a size like \"8GiB\" or \"512MiB\" (a bare number is MiB)",
        )),
    }
}

fn count(s: &Scalar, key: &str) -> Result<u64, Problem> {
    match s {
        Scalar::Int(n) if *n >= 0 => Ok(*n as u64),
        _ => Err(problem(key, "expected a whole number, 0 or more")),
    }
}

/// A `[min, max]` range (or one value), each end converted by `conv`.
fn range<T: PartialOrd + Copy>(
    r: &RawRange,
    key: &str,
    conv: impl Fn(&Scalar, &str) -> Result<T, Problem>,
) -> Result<(T, T), Problem> {
    let (lo, hi) = match r {
        RawRange::One(s) => {
            let v = conv(s, key)?;
            (v, v)
        }
        RawRange::Many(v) if v.len() == 2 => (conv(&v[0], key)?, conv(&v[1], key)?),
        RawRange::Many(v) => {
            return Err(problem(
                key,
                format!(
                    "expected one value or a [min, max] pair, got {} values",
                    v.len()
                ),
            ))
        }
    };
    if lo > hi {
        return Err(problem(key, "the range's minimum is above its maximum"));
    }
    Ok((lo, hi))
}

fn positive(v: Option<i64>, default: i64, key: &str) -> Result<u64, Problem> {
    let v = v.unwrap_or(default);
    if v <= 0 {
        return Err(problem(key, format!("must be more than 0, got {v}")));
    }
    Ok(v as u64)
}

fn opt_duration(v: &Option<Scalar>, default_ms: u64, key: &str) -> Result<u64, Problem> {
    v.as_ref().map_or(Ok(default_ms), |s| parse_ms(s, key))
}

impl RawScenario {
    fn validate(self, default_name: &str) -> Result<Scenario, Problem> {
        let duration_ms = opt_duration(&self.duration, 600_000, "duration")?;
        if duration_ms < 1_000 {
            return Err(problem("duration", "must be at least 1s"));
        }
        let warmup_ms = opt_duration(&self.warmup, duration_ms / 10, "warmup")?;
        if warmup_ms >= duration_ms {
            return Err(problem("warmup", "must be shorter than duration"));
        }
        let strategies = match self.strategies {
            None => Strategy::ALL.to_vec(),
            Some(names) => {
                if names.is_empty() {
                    return Err(problem("strategies", "must name at least one strategy"));
                }
                let mut out = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    let s: Strategy =
                        n.parse()
                            .map_err(|e: crate::core::placement::UnknownStrategy| {
                                problem(format!("strategies[{i}]"), e.to_string())
                            })?;
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
                out
            }
        };
        if self.profiles.is_empty() {
            return Err(problem(
                "profiles",
                "missing: give at least one [[profiles]] with count, cpu_cores and memory",
            ));
        }
        let mut profiles = Vec::new();
        for (i, p) in self.profiles.iter().enumerate() {
            let k = |f: &str| format!("profiles[{i}].{f}");
            let count = positive(p.count, 0, &k("count"))? as usize;
            let cpu_cores = p
                .cpu_cores
                .ok_or_else(|| problem(k("cpu_cores"), "missing"))?;
            if !(0..=u32::MAX as i64).contains(&cpu_cores) {
                return Err(problem(k("cpu_cores"), "must be 0 or more"));
            }
            let memory_mb = size_mb(
                p.memory
                    .as_ref()
                    .ok_or_else(|| problem(k("memory"), "missing"))?,
                &k("memory"),
            )?;
            let gpus = p
                .gpus
                .iter()
                .enumerate()
                .map(|(g, s)| {
                    let m = size_mb(s, &format!("profiles[{i}].gpus[{g}]"))?;
                    if m == 0 {
                        return Err(problem(
                            format!("profiles[{i}].gpus[{g}]"),
                            "a GPU needs some memory",
                        ));
                    }
                    Ok(m)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let weight = p.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                return Err(problem(k("weight"), "must be in 0..=1000000"));
            }
            profiles.push(Profile {
                name: p.name.clone().unwrap_or_else(|| format!("profile{i}")),
                count,
                cpu_cores: cpu_cores as u32,
                memory_mb,
                gpus,
                weight: weight as u32,
            });
        }
        let nodes: usize = profiles.iter().map(|p| p.count).sum();
        if nodes > 100_000 {
            return Err(problem("profiles", "at most 100000 nodes in all"));
        }

        let w = &self.workload;
        let load = w.load.unwrap_or(0.7);
        if !(load > 0.0 && load <= 2.0) {
            return Err(problem("workload.load", "must be in (0, 2]"));
        }
        let wait_ms = opt_duration(&w.wait, 300_000, "workload.wait")?;
        let lease_grace_ms = opt_duration(&w.lease_grace, 30_000, "workload.lease_grace")?;
        let priorities = match &w.priorities {
            None => [0.3, 0.5, 0.15, 0.05],
            Some(p) => [p.low, p.normal, p.high, p.critical],
        };
        if priorities.iter().any(|p| !(p.is_finite() && *p >= 0.0))
            || priorities.iter().sum::<f64>() <= 0.0
        {
            return Err(problem(
                "workload.priorities",
                "shares must be 0 or more, and not all 0",
            ));
        }
        if w.classes.is_empty() {
            return Err(problem(
                "workload.classes",
                "missing: give at least one [[workload.classes]]",
            ));
        }
        let mut classes = Vec::new();
        for (i, c) in w.classes.iter().enumerate() {
            let k = |f: &str| format!("workload.classes[{i}].{f}");
            let share = c.share.unwrap_or(1.0);
            if !(share.is_finite() && share > 0.0) {
                return Err(problem(k("share"), "must be more than 0"));
            }
            let cpu_cores = match &c.cpu_cores {
                Some(r) => range(r, &k("cpu_cores"), count)?,
                None => (0, 0),
            };
            let memory_mb = match &c.memory {
                Some(r) => range(r, &k("memory"), size_mb)?,
                None => (0, 0),
            };
            let gpus = match &c.gpus {
                Some(r) => range(r, &k("gpus"), count)?,
                None => (0, 0),
            };
            let gpu_memory_mb = match &c.gpu_memory {
                Some(r) => range(r, &k("gpu_memory"), size_mb)?,
                None => (0, 0),
            };
            let duration_ms = range(
                c.duration
                    .as_ref()
                    .ok_or_else(|| problem(k("duration"), "missing"))?,
                &k("duration"),
                parse_ms,
            )?;
            if duration_ms.0 == 0 {
                return Err(problem(k("duration"), "must be more than 0s"));
            }
            if cpu_cores.0 == 0 && memory_mb.0 == 0 && gpus.0 == 0 {
                return Err(problem(
                    k("cpu_cores"),
                    "every job must ask for something: cpu_cores, memory or gpus above 0",
                ));
            }
            let log_uniform = match c.duration_dist.as_deref() {
                None | Some("uniform") => false,
                Some("log-uniform") => true,
                Some(other) => {
                    return Err(problem(
                        k("duration_dist"),
                        format!("unknown {other:?}: expected \"uniform\" or \"log-uniform\""),
                    ))
                }
            };
            let cpu_cores = (
                u32::try_from(cpu_cores.0).unwrap_or(u32::MAX),
                u32::try_from(cpu_cores.1).unwrap_or(u32::MAX),
            );
            let gpus = (
                u32::try_from(gpus.0).unwrap_or(u32::MAX),
                u32::try_from(gpus.1).unwrap_or(u32::MAX),
            );
            // Some profile must be able to hold the largest job of the class.
            let fits_somewhere = profiles.iter().any(|p| {
                p.cpu_cores >= cpu_cores.1
                    && p.memory_mb >= memory_mb.1
                    && p.gpus.len() as u64 >= u64::from(gpus.1)
                    && (gpus.1 == 0
                        || p.gpus.iter().filter(|g| **g >= gpu_memory_mb.1).count() as u64
                            >= u64::from(gpus.1))
            });
            if !fits_somewhere {
                return Err(problem(
                    k("cpu_cores"),
                    "the largest job of this class fits on no node profile",
                ));
            }
            classes.push(JobClass {
                name: c.name.clone().unwrap_or_else(|| format!("class{i}")),
                share,
                cpu_cores,
                memory_mb,
                gpus,
                gpu_memory_mb,
                duration_ms,
                log_uniform,
            });
        }

        let n = &self.network;
        let loss = n.loss.unwrap_or(0.0);
        if !(0.0..1.0).contains(&loss) {
            return Err(problem("network.loss", "must be in [0, 1)"));
        }
        let network = Network {
            gossip_delay_ms: opt_duration(&n.gossip_delay, 50, "network.gossip_delay")?,
            gossip_jitter_ms: opt_duration(&n.gossip_jitter, 25, "network.gossip_jitter")?,
            loss,
            rtt_ms: opt_duration(&n.rtt, 2, "network.rtt")?,
            rtt_jitter_ms: opt_duration(&n.rtt_jitter, 1, "network.rtt_jitter")?,
            heartbeat_ms: opt_duration(&n.heartbeat, 10_000, "network.heartbeat")?,
            debounce_ms: opt_duration(&n.debounce, 100, "network.debounce")?,
            stale_after_ms: opt_duration(&n.stale_after, 15_000, "network.stale_after")?,
            ask_timeout_ms: opt_duration(&n.ask_timeout, 1_000, "network.ask_timeout")?,
            failure_detect_ms: opt_duration(&n.failure_detect, 10_000, "network.failure_detect")?,
        };
        if network.gossip_jitter_ms > network.gossip_delay_ms {
            return Err(problem(
                "network.gossip_jitter",
                "must not exceed network.gossip_delay (delays are mean ± jitter)",
            ));
        }
        if network.rtt_jitter_ms > network.rtt_ms {
            return Err(problem(
                "network.rtt_jitter",
                "must not exceed network.rtt (round trips are mean ± jitter)",
            ));
        }
        if network.heartbeat_ms == 0 {
            return Err(problem("network.heartbeat", "must be more than 0s"));
        }
        if network.debounce_ms >= network.heartbeat_ms {
            return Err(problem(
                "network.debounce",
                "must be shorter than network.heartbeat",
            ));
        }
        if network.stale_after_ms <= network.heartbeat_ms {
            return Err(problem(
                "network.stale_after",
                "must be longer than network.heartbeat, or every owner looks stale",
            ));
        }
        if network.ask_timeout_ms == 0 {
            return Err(problem("network.ask_timeout", "must be more than 0s"));
        }

        let f = &self.faults;
        let crash_rate_per_hour = f.crash_rate.unwrap_or(0.0);
        if !(crash_rate_per_hour.is_finite() && crash_rate_per_hour >= 0.0) {
            return Err(problem("faults.crash_rate", "must be 0 or more"));
        }
        let restart_delay_ms = opt_duration(&f.restart_delay, 30_000, "faults.restart_delay")?;
        if restart_delay_ms == 0 {
            return Err(problem("faults.restart_delay", "must be more than 0s"));
        }
        let mut crashes = Vec::new();
        for (i, c) in f.crashes.iter().enumerate() {
            let k = |f: &str| format!("faults.crashes[{i}].{f}");
            let node = c.node.ok_or_else(|| problem(k("node"), "missing"))?;
            if node < 0 || node as usize >= nodes {
                return Err(problem(
                    k("node"),
                    format!("must be a node index in 0..{nodes}, got {node}"),
                ));
            }
            let at_ms = parse_ms(
                c.at.as_ref().ok_or_else(|| problem(k("at"), "missing"))?,
                &k("at"),
            )?;
            let down_ms = opt_duration(&c.down, restart_delay_ms, &k("down"))?;
            if down_ms == 0 {
                return Err(problem(k("down"), "must be more than 0s"));
            }
            crashes.push(Crash {
                node: node as usize,
                at_ms,
                down_ms,
            });
        }

        let p = &self.policy;
        let mut policy = Policy {
            preemption: p.preemption.unwrap_or(false),
            max_queue: positive(p.max_queue, 64, "policy.max_queue")? as usize,
            max_tries: positive(p.max_tries, 8, "policy.max_tries")? as usize,
            max_candidates: match p.max_candidates {
                None => 0,
                Some(v) if v >= 0 => v as usize,
                Some(_) => return Err(problem("policy.max_candidates", "must be 0 or more")),
            },
            retry_ms: opt_duration(&p.retry, 1_000, "policy.retry")?,
            backfill: p.backfill.unwrap_or(true),
            queue_policy: match &p.queue_policy {
                None => crate::core::fairshare::QueuePolicy::Fifo,
                Some(v) => v
                    .parse()
                    .map_err(|m: String| problem("policy.queue_policy", m.as_str()))?,
            },
            shares: crate::core::fairshare::Shares::default(),
        };
        if policy.retry_ms == 0 {
            return Err(problem("policy.retry", "must be more than 0s"));
        }

        let mut requesters = Vec::new();
        let mut shares = crate::core::fairshare::Shares {
            half_life_ms: opt_duration(
                &p.fair_share_half_life,
                crate::core::fairshare::DEFAULT_HALF_LIFE_MS,
                "policy.fair_share_half_life",
            )?,
            ..Default::default()
        };
        for (i, r) in self.requesters.iter().enumerate() {
            let k = |f: &str| format!("requesters[{i}].{f}");
            let count = positive(r.count, 0, &k("count"))? as usize;
            let share = crate::core::fairshare::check_share(
                "each requester of this class",
                r.share.unwrap_or(1),
            )
            .map_err(|m| problem(k("share"), m))?;
            let demand = r.demand.unwrap_or(1.0);
            if !(demand.is_finite() && demand > 0.0) {
                return Err(problem(k("demand"), "must be more than 0"));
            }
            let from: usize = requesters.iter().map(|c: &RequesterClass| c.count).sum();
            if from + count > nodes {
                return Err(problem(
                    k("count"),
                    format!(
                        "requesters take the first nodes: {} in all, but there are {nodes} nodes",
                        from + count
                    ),
                ));
            }
            for n in from..from + count {
                shares.requesters.insert(super::workload::node_id(n), share);
            }
            requesters.push(RequesterClass {
                name: r.name.clone().unwrap_or_else(|| format!("requesters{i}")),
                count,
                share,
                demand,
            });
        }
        shares
            .validate()
            .map_err(|m| problem("policy.fair_share_half_life", m))?;
        policy.shares = shares;

        Ok(Scenario {
            name: self.name.unwrap_or_else(|| default_name.to_owned()),
            description: self.description,
            seed: self.seed.unwrap_or(1),
            duration_ms,
            warmup_ms,
            strategies,
            profiles,
            workload: Workload {
                load,
                wait_ms,
                lease_grace_ms,
                priorities,
                classes,
            },
            network,
            faults: Faults {
                crash_rate_per_hour,
                restart_delay_ms,
                crashes,
            },
            policy,
            requesters,
        })
    }
}

/// The priority at `index` of [`Priority::ALL`].
pub fn priority_at(index: usize) -> Priority {
    Priority::ALL[index.min(3)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[profiles]]
count = 4
cpu_cores = 8
memory = "16GiB"

[[workload.classes]]
cpu_cores = [1, 4]
memory = ["1GiB", "4GiB"]
duration = ["10s", "1m"]
"#;

    #[test]
    fn a_minimal_scenario_parses_with_defaults() {
        let s = parse(MIN, "min.toml", "min").unwrap();
        assert_eq!(s.name, "min");
        assert_eq!(s.node_count(), 4);
        assert_eq!(s.strategies.len(), Strategy::ALL.len());
        assert_eq!(s.workload.classes[0].memory_mb, (1024, 4096));
        assert_eq!(s.workload.classes[0].duration_ms, (10_000, 60_000));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let bad = MIN.replace("cpu_cores = [1, 4]", "cpu_cores = [4, 1]");
        let e = parse(&bad, "x.toml", "x").unwrap_err();
        assert_eq!(e.key(), Some("workload.classes[0].cpu_cores"), "{e}");
        assert!(e.to_string().starts_with("x.toml:8: "), "{e}");

        let bad = format!("{MIN}\n[network]\nlos = 0.1\n");
        let e = parse(&bad, "x.toml", "x").unwrap_err();
        assert!(e.to_string().contains("los"), "{e}");

        let bad = format!("{MIN}\n[network]\nloss = 1.5\n");
        let e = parse(&bad, "x.toml", "x").unwrap_err();
        assert_eq!(e.key(), Some("network.loss"), "{e}");

        let bad = MIN.replace("memory = \"16GiB\"", "memory = \"16 lightyears\"");
        let e = parse(&bad, "x.toml", "x").unwrap_err();
        assert_eq!(e.key(), Some("profiles[0].memory"), "{e}");
    }

    #[test]
    fn requester_classes_take_the_first_nodes_and_give_their_shares() {
        let text = format!(
            "{MIN}\n[[requesters]]\nname = \"heavy\"\ncount = 1\nshare = 3\ndemand = 4.0\n\n\
             [[requesters]]\ncount = 2\n\n[policy]\nqueue_policy = \"fair-share\"\n\
             fair_share_half_life = \"2m\"\n"
        );
        let s = parse(&text, "r.toml", "r").unwrap();
        assert_eq!(s.requesters.len(), 2);
        assert_eq!(s.requesters[1].share, 1);
        assert_eq!(s.requester_class(0), Some(0));
        assert_eq!(s.requester_class(2), Some(1));
        assert_eq!(s.requester_class(3), None);
        let shares = &s.policy.shares;
        assert_eq!(shares.half_life_ms, 120_000);
        assert_eq!(shares.of_requester(&super::super::workload::node_id(0)), 3);
        assert_eq!(shares.of_requester(&super::super::workload::node_id(1)), 1);
        assert_eq!(shares.requesters.len(), 3);
        // Only requesters submit jobs, the heavy one about 4 / 6 of them.
        let d = super::super::workload::draw(&s);
        assert!(!d.jobs.is_empty());
        assert!(d.jobs.iter().all(|j| j.origin < 3));
        let heavy = d.jobs.iter().filter(|j| j.origin == 0).count() as f64;
        let frac = heavy / d.jobs.len() as f64;
        assert!((0.55..0.78).contains(&frac), "heavy submitted {frac}");

        let too_many = text.replace("count = 2\n", "count = 4\n");
        let e = parse(&too_many, "r.toml", "r").unwrap_err();
        assert_eq!(e.key(), Some("requesters[1].count"), "{e}");
        let zero = text.replace("share = 3", "share = 0");
        let e = parse(&zero, "r.toml", "r").unwrap_err();
        assert_eq!(e.key(), Some("requesters[0].share"), "{e}");
        let neg = text.replace("demand = 4.0", "demand = -1.0");
        let e = parse(&neg, "r.toml", "r").unwrap_err();
        assert_eq!(e.key(), Some("requesters[0].demand"), "{e}");
        let half = text.replace("\"2m\"", "\"10ms\"");
        let e = parse(&half, "r.toml", "r").unwrap_err();
        assert_eq!(e.key(), Some("policy.fair_share_half_life"), "{e}");
    }
}
