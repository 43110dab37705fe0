//! The swarm and the workload a scenario describes, drawn once from its
//! seed: the nodes, every job (arrival, requester, size, duration,
//! priority) and every crash. Every strategy and the centralized baseline
//! run on this same draw.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::scenario::{priority_at, Crash, JobClass, Scenario};
use crate::model::{Capacity, GpuSlot, NodeId, Priority, ResourceRequirements};

/// Nodes per zone (rack): the geographic strategy prefers the requester's
/// own zone, and round trips inside a zone are half as long.
pub const NODES_PER_ZONE: usize = 40;

/// A resource dimension that utilization is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    Cpu,
    Memory,
    GpuMemory,
}

impl Dim {
    pub const ALL: [Dim; 3] = [Dim::Cpu, Dim::Memory, Dim::GpuMemory];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Cpu => "cpu",
            Dim::Memory => "memory",
            Dim::GpuMemory => "gpu_memory",
        }
    }
}

/// One simulated node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// `n00000`, `n00001`, ...: ordering by id is ordering by index, so
    /// every tie broken by node id is reproducible.
    pub id: NodeId,
    pub profile: usize,
    pub capacity: Capacity,
    pub weight: u32,
    pub zone: u32,
}

/// One job.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: u32,
    pub arrival_ms: u64,
    /// The node it is submitted to (its requester).
    pub origin: u32,
    pub class: u16,
    pub priority: Priority,
    pub req: ResourceRequirements,
    pub duration_ms: u64,
    /// How long it may wait for resources.
    pub wait_ms: u64,
}

/// Everything drawn from the seed.
#[derive(Clone, Debug)]
pub struct Drawn {
    pub nodes: Vec<NodeSpec>,
    pub jobs: Vec<Job>,
    /// Crashes, by time.
    pub crashes: Vec<Crash>,
    /// Total lendable capacity per [`Dim`].
    pub capacity: [f64; 3],
    /// Offered load per [`Dim`], from the drawn jobs:
    /// sum(demand × duration) / (capacity × duration of the arrivals).
    pub offered: [f64; 3],
    /// The dimension with the highest offered load.
    pub dominant: Dim,
}

/// The node id of node `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId(format!("n{i:05}"))
}

/// Node index back from a node id made by [`node_id`].
pub fn node_index(id: &NodeId) -> Option<usize> {
    id.0.strip_prefix('n')?.parse().ok()
}

/// Build the nodes, in profile order.
pub fn nodes(s: &Scenario) -> Vec<NodeSpec> {
    let mut out = Vec::with_capacity(s.node_count());
    for (pi, p) in s.profiles.iter().enumerate() {
        for _ in 0..p.count {
            let i = out.len();
            out.push(NodeSpec {
                id: node_id(i),
                profile: pi,
                capacity: Capacity {
                    cpu_cores: p.cpu_cores,
                    memory_mb: p.memory_mb,
                    disk_mb: 0,
                    gpus: p
                        .gpus
                        .iter()
                        .enumerate()
                        .map(|(g, m)| GpuSlot {
                            index: g as u32,
                            memory_mb: *m,
                        })
                        .collect(),
                    custom: Default::default(),
                },
                weight: p.weight,
                zone: (i / NODES_PER_ZONE) as u32,
            });
        }
    }
    out
}

fn uniform_u64(rng: &mut StdRng, (lo, hi): (u64, u64)) -> u64 {
    if lo >= hi {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

fn draw_job_shape(rng: &mut StdRng, c: &JobClass) -> (ResourceRequirements, u64) {
    let cpu = uniform_u64(rng, (u64::from(c.cpu_cores.0), u64::from(c.cpu_cores.1))) as u32;
    let mem = uniform_u64(rng, c.memory_mb);
    let gpus = uniform_u64(rng, (u64::from(c.gpus.0), u64::from(c.gpus.1))) as u32;
    let gpu_mem = if gpus > 0 {
        uniform_u64(rng, c.gpu_memory_mb)
    } else {
        0
    };
    let dur = if c.log_uniform && c.duration_ms.0 < c.duration_ms.1 {
        let (lo, hi) = (c.duration_ms.0 as f64, c.duration_ms.1 as f64);
        let x: f64 = rng.random();
        (lo.ln() + x * (hi.ln() - lo.ln())).exp().round() as u64
    } else {
        uniform_u64(rng, c.duration_ms)
    };
    let mut req = ResourceRequirements {
        cpu_cores: cpu,
        memory_mb: mem,
        gpu_count: gpus,
        gpu_memory_mb: gpu_mem,
        ..Default::default()
    };
    if req.is_empty() {
        // A class whose range starts at 0 in every dimension: ask for a core.
        req.cpu_cores = 1;
    }
    (req, dur.max(1))
}

fn pick_weighted(rng: &mut StdRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Demand × duration of one job per [`Dim`] (GPU memory of whole-GPU
/// requests counted at `whole_gpu_mb`).
fn demand(req: &ResourceRequirements, dur: u64, whole_gpu_mb: f64) -> [f64; 3] {
    let g = f64::from(req.gpus_wanted());
    let gm = if req.gpu_memory_mb == 0 {
        whole_gpu_mb
    } else {
        req.gpu_memory_mb as f64
    };
    let d = dur as f64;
    [
        f64::from(req.cpu_cores) * d,
        req.memory_mb as f64 * d,
        g * gm * d,
    ]
}

/// Draw everything: nodes, jobs calibrated to the offered load, crashes.
pub fn draw(s: &Scenario) -> Drawn {
    let nodes = nodes(s);
    let mut capacity = [0.0f64; 3];
    let mut gpu_count = 0usize;
    for n in &nodes {
        capacity[0] += f64::from(n.capacity.cpu_cores);
        capacity[1] += n.capacity.memory_mb as f64;
        capacity[2] += n.capacity.gpu_memory_mb() as f64;
        gpu_count += n.capacity.gpus.len();
    }
    let whole_gpu_mb = if gpu_count > 0 {
        capacity[2] / gpu_count as f64
    } else {
        0.0
    };
    let shares: Vec<f64> = s.workload.classes.iter().map(|c| c.share).collect();
    let demands: Vec<f64> = s
        .requesters
        .iter()
        .map(|r| r.demand * r.count as f64)
        .collect();

    // Calibrate the arrival rate on a separate stream, so the job list does
    // not depend on the sample size.
    let mut cal = StdRng::seed_from_u64(s.seed ^ 0xCA11_B0A7);
    let mut mean = [0.0f64; 3];
    const SAMPLES: usize = 20_000;
    for _ in 0..SAMPLES {
        let c = pick_weighted(&mut cal, &shares);
        let (req, dur) = draw_job_shape(&mut cal, &s.workload.classes[c]);
        let d = demand(&req, dur, whole_gpu_mb);
        for k in 0..3 {
            mean[k] += d[k] / SAMPLES as f64;
        }
    }
    let ratio: Vec<f64> = (0..3)
        .map(|k| {
            if capacity[k] > 0.0 {
                mean[k] / capacity[k]
            } else {
                0.0
            }
        })
        .collect();
    let dom = (0..3)
        .max_by(|a, b| ratio[*a].total_cmp(&ratio[*b]))
        .unwrap_or(0);
    // Jobs per ms so that the dominant dimension sees `load`.
    let rate = if ratio[dom] > 0.0 {
        s.workload.load / ratio[dom]
    } else {
        0.0
    };

    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut jobs = Vec::new();
    let mut t = 0.0f64;
    let mut sum = [0.0f64; 3];
    loop {
        let u: f64 = rng.random();
        t += -(1.0 - u).ln() / rate;
        if !t.is_finite() || t >= s.duration_ms as f64 {
            break;
        }
        let c = pick_weighted(&mut rng, &shares);
        let (req, duration_ms) = draw_job_shape(&mut rng, &s.workload.classes[c]);
        let priority = priority_at(pick_weighted(&mut rng, &s.workload.priorities));
        let origin = if s.requesters.is_empty() {
            rng.random_range(0..nodes.len()) as u32
        } else {
            // A requester class by its total demand, then one of its nodes.
            let c = pick_weighted(&mut rng, &demands);
            let from: usize = s.requesters[..c].iter().map(|r| r.count).sum();
            (from + rng.random_range(0..s.requesters[c].count)) as u32
        };
        let d = demand(&req, duration_ms, whole_gpu_mb);
        for k in 0..3 {
            sum[k] += d[k];
        }
        jobs.push(Job {
            id: jobs.len() as u32,
            arrival_ms: t as u64,
            origin,
            class: c as u16,
            priority,
            req,
            duration_ms,
            wait_ms: s.workload.wait_ms,
        });
    }
    let span = s.duration_ms as f64;
    let offered = [0, 1, 2].map(|k| {
        if capacity[k] > 0.0 {
            sum[k] / (capacity[k] * span)
        } else {
            0.0
        }
    });

    let mut crashes = s.faults.crashes.clone();
    if s.faults.crash_rate_per_hour > 0.0 && !nodes.is_empty() {
        let mut frng = StdRng::seed_from_u64(s.seed ^ 0xFA17_5EED);
        let per_ms = s.faults.crash_rate_per_hour * nodes.len() as f64 / 3_600_000.0;
        let mut t = 0.0f64;
        loop {
            let u: f64 = frng.random();
            t += -(1.0 - u).ln() / per_ms;
            if t >= s.duration_ms as f64 {
                break;
            }
            crashes.push(Crash {
                node: frng.random_range(0..nodes.len()),
                at_ms: t as u64,
                down_ms: s.faults.restart_delay_ms,
            });
        }
    }
    crashes.sort_by_key(|c| (c.at_ms, c.node));

    Drawn {
        nodes,
        jobs,
        crashes,
        capacity,
        offered,
        dominant: Dim::ALL[dom],
    }
}
