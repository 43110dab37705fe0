//! The workload: a seeded list of requests, the worker threads that send
//! them, and the sampler that checks, while they run, that no owner ever
//! grants more than it lends.
//!
//! The list is drawn up front from `StdRng::seed_from_u64(seed)`, so the
//! same seed and node count always give the same requests, in the same
//! order, from the same requesters, with the same strategies ([`digest`]
//! fingerprints it). Which worker sends which request, and so what each
//! one finds free, depends on timing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lanswarm::core::placement::Strategy;
use lanswarm::handle::{Allocation, AllocationRequest, Allocations};
use lanswarm::model::{Capacity, ResourceRequirements};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::cluster::{SimNode, PROFILES};

/// Lease term of every request. Holds are far shorter; the holder would
/// renew at a third of it.
const LEASE_SECS: u64 = 30;
/// At most this many examples of errors and violations are kept.
const MAX_EXAMPLES: usize = 10;

/// One request of the workload.
#[derive(Clone, Debug)]
pub struct Job {
    /// Index of the node that is asked (and holds the grant).
    pub requester: usize,
    pub strategy: Strategy,
    /// The `POST /api/v1/allocations` body.
    pub body: String,
}

/// Pick from `choices` with the given relative weights.
fn pick<T: Copy>(rng: &mut StdRng, choices: &[(T, u32)]) -> T {
    let total: u32 = choices.iter().map(|c| c.1).sum();
    let mut r = rng.random_range(0..total);
    for &(v, w) in choices {
        if r < w {
            return v;
        }
        r -= w;
    }
    choices[choices.len() - 1].0
}

const GIB: u64 = 1024;

/// Draw `count` requests for `nodes` nodes from `seed`.
///
/// Sizes range from a slice of the laptop to more than any node lends (32
/// cores, 64 GiB on a node with less free), so some requests are always
/// refused and others only when the swarm is busy. About 15 % want GPUs
/// (whole, or a share of each), 10 % a custom resource, 7 % a model
/// (`phi3`, which nobody serves, among them), 5 % are pinned to one node.
/// The strategy is uniform over all six.
pub fn generate(seed: u64, count: usize, nodes: usize) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|k| {
            let requester = rng.random_range(0..nodes);
            let strategy = Strategy::ALL[rng.random_range(0..Strategy::ALL.len())];
            let mut r = ResourceRequirements {
                cpu_cores: pick(
                    &mut rng,
                    &[
                        (0, 20),
                        (1, 25),
                        (2, 20),
                        (4, 15),
                        (8, 10),
                        (16, 7),
                        (32, 3),
                    ],
                ),
                memory_mb: pick(
                    &mut rng,
                    &[
                        (0, 15),
                        (512, 15),
                        (GIB, 15),
                        (2 * GIB, 15),
                        (4 * GIB, 12),
                        (8 * GIB, 10),
                        (16 * GIB, 8),
                        (32 * GIB, 7),
                        (64 * GIB, 3),
                    ],
                ),
                ..Default::default()
            };
            if rng.random_bool(0.3) {
                r.disk_mb = pick(
                    &mut rng,
                    &[(GIB, 30), (10 * GIB, 30), (50 * GIB, 25), (150 * GIB, 15)],
                );
            }
            if rng.random_bool(0.15) {
                r.gpu_count = pick(&mut rng, &[(1, 85), (2, 15)]);
                r.gpu_memory_mb = pick(
                    &mut rng,
                    &[
                        (0, 30),
                        (4 * GIB, 25),
                        (8 * GIB, 20),
                        (16 * GIB, 15),
                        (24 * GIB, 10),
                    ],
                );
            }
            if rng.random_bool(0.10) {
                let (name, max) = pick(
                    &mut rng,
                    &[(("db-connections", 8), 75), (("licenses", 2), 25)],
                );
                r.custom.insert(name.to_owned(), rng.random_range(1..=max));
            }
            let model = pick(
                &mut rng,
                &[(None, 93), (Some("llama3"), 5), (Some("phi3"), 2)],
            );
            if let Some(m) = model {
                r.preferred_models.push(m.to_owned());
            }
            if r.is_empty() {
                r.cpu_cores = 1;
            }
            let node_id = rng
                .random_bool(0.05)
                .then(|| format!("n{}", rng.random_range(0..nodes)));
            let req = AllocationRequest {
                request_id: Some(format!("sim-{seed}-{k}")),
                required_resources: r,
                task_type: "lanswarm-sim".to_owned(),
                timeout_secs: Some(LEASE_SECS),
                strategy: Some(strategy),
                node_id,
                ..Default::default()
            };
            Job {
                requester,
                strategy,
                body: serde_json::to_string(&req).expect("a request serialises"),
            }
        })
        .collect()
}

/// A 64-bit FNV-1a fingerprint of the workload (requesters, strategies,
/// bodies), printed so two runs can be seen to send the same requests.
pub fn digest(jobs: &[Job]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for j in jobs {
        for b in format!("{}|{}|{}\n", j.requester, j.strategy, j.body).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// What the workers saw. Each worker fills its own; they are merged.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// From the first request sent to the last answered (set by the
    /// caller, over all workers).
    pub elapsed: Duration,
    pub sent: u64,
    pub grants: u64,
    /// Grants that came after at least one refusal (late binding).
    pub late_bound: u64,
    /// Reasons of the refusals that late binding got past.
    pub late_refusals: BTreeMap<String, u64>,
    /// Grants whose owner is not the requester.
    pub remote_grants: u64,
    /// Top-level error codes of refused requests (`no_capacity`, ...).
    pub denial_codes: BTreeMap<String, u64>,
    /// In `no_capacity` answers: the reason of every refusal.
    pub refusal_reasons: BTreeMap<String, u64>,
    /// In `no_capacity` answers: why each other node was not asked.
    pub excluded_reasons: BTreeMap<String, u64>,
    /// Grants by owner name.
    pub placement: BTreeMap<String, u64>,
    /// (grants, denials) by strategy.
    pub by_strategy: BTreeMap<String, (u64, u64)>,
    /// `POST` round trips of grants and denials, ms.
    pub grant_ms: Vec<f64>,
    pub denial_ms: Vec<f64>,
    /// `DELETE` round trips, ms.
    pub release_ms: Vec<f64>,
    pub releases: u64,
    /// Releases the owner did not confirm.
    pub releases_unconfirmed: u64,
    /// Unexpected answers and transport errors, by kind.
    pub errors: BTreeMap<String, u64>,
    pub error_examples: Vec<String>,
}

impl Tally {
    fn error(&mut self, kind: String, example: String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.error_examples.len() < MAX_EXAMPLES {
            self.error_examples.push(example);
        }
    }

    /// Add another worker's tally to this one.
    pub fn merge(&mut self, o: Tally) {
        fn add(a: &mut BTreeMap<String, u64>, b: BTreeMap<String, u64>) {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
        }
        self.sent += o.sent;
        self.grants += o.grants;
        self.late_bound += o.late_bound;
        add(&mut self.late_refusals, o.late_refusals);
        self.remote_grants += o.remote_grants;
        add(&mut self.denial_codes, o.denial_codes);
        add(&mut self.refusal_reasons, o.refusal_reasons);
        add(&mut self.excluded_reasons, o.excluded_reasons);
        add(&mut self.placement, o.placement);
        for (k, (g, d)) in o.by_strategy {
            let e = self.by_strategy.entry(k).or_default();
            e.0 += g;
            e.1 += d;
        }
        self.grant_ms.extend(o.grant_ms);
        self.denial_ms.extend(o.denial_ms);
        self.release_ms.extend(o.release_ms);
        self.releases += o.releases;
        self.releases_unconfirmed += o.releases_unconfirmed;
        add(&mut self.errors, o.errors);
        for e in o.error_examples {
            if self.error_examples.len() < MAX_EXAMPLES {
                self.error_examples.push(e);
            }
        }
    }
}

/// The kind of an exclusion, without its numbers: `cpu_cores: want 64,
/// free 7` is `cpu_cores`, `suspect: silent for 3100 ms` is `suspect`,
/// `not the requested node n3` is `not the requested node`.
pub fn exclusion_kind(why: &str) -> String {
    if why.starts_with("not the requested node") {
        return "not the requested node".to_owned();
    }
    why.split(':').next().unwrap_or(why).trim().to_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Send jobs until they run out or `stop` is set: take the next job,
/// `POST` it to its requester, and on a grant hold it `hold`, then
/// `DELETE` it on the requester (which releases it at the owner).
pub fn worker(
    nodes: &[SimNode],
    jobs: &[Job],
    next: &AtomicUsize,
    hold: Duration,
    post_timeout: Duration,
    stop: &AtomicBool,
) -> Tally {
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(k) else {
            break;
        };
        let node = &nodes[job.requester];
        t.sent += 1;
        let strat = job.strategy.name().to_owned();
        match node.call_timed("POST", "/api/v1/allocations", Some(&job.body), post_timeout) {
            Ok((201, v, d)) => {
                let a: Allocation = match serde_json::from_value(v.clone()) {
                    Ok(a) => a,
                    Err(e) => {
                        t.error("unparsable grant".into(), format!("job {k}: {e}: {v}"));
                        continue;
                    }
                };
                t.grants += 1;
                t.grant_ms.push(ms(d));
                t.by_strategy.entry(strat).or_default().0 += 1;
                *t.placement.entry(a.node_name.clone()).or_default() += 1;
                if a.node_id.0 != node.id {
                    t.remote_grants += 1;
                }
                if !a.refusals.is_empty() {
                    t.late_bound += 1;
                    for r in &a.refusals {
                        *t.late_refusals
                            .entry(r.reason.code().to_owned())
                            .or_default() += 1;
                    }
                }
                std::thread::sleep(hold);
                release(node, &a.allocation_id, &mut t);
            }
            Ok((status, v, d)) => {
                let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
                if status == 422 && code == "unsatisfiable" {
                    // Bigger than any node: refused at once, as it should.
                    t.denial_ms.push(ms(d));
                    t.by_strategy.entry(strat).or_default().1 += 1;
                    *t.denial_codes.entry(code).or_default() += 1;
                } else if status == 503 && code == "no_capacity" {
                    t.denial_ms.push(ms(d));
                    t.by_strategy.entry(strat).or_default().1 += 1;
                    *t.denial_codes.entry(code).or_default() += 1;
                    for r in v["error"]["refusals"].as_array().into_iter().flatten() {
                        let reason = r["reason"].as_str().unwrap_or("?").to_owned();
                        *t.refusal_reasons.entry(reason).or_default() += 1;
                    }
                    for x in v["error"]["excluded"].as_array().into_iter().flatten() {
                        let kind = exclusion_kind(x["why"].as_str().unwrap_or("?"));
                        *t.excluded_reasons.entry(kind).or_default() += 1;
                    }
                } else {
                    // Anything else is not a capacity answer: a bad request
                    // (a simulator bug) or a node in trouble.
                    *t.denial_codes
                        .entry(format!("{status} {code}"))
                        .or_default() += 1;
                    t.error(
                        format!("POST answered {status} {code}"),
                        format!("job {k} on {}: {status} {v}", node.name),
                    );
                }
            }
            Err(e) => t.error(
                "POST transport error".into(),
                format!("job {k} on {}: {e}", node.name),
            ),
        }
    }
    t
}

fn release(node: &SimNode, id: &str, t: &mut Tally) {
    let path = format!("/api/v1/allocations/{id}");
    match node.call_timed("DELETE", &path, None, crate::cluster::HTTP_TIMEOUT) {
        Ok((200, v, d)) => {
            t.releases += 1;
            t.release_ms.push(ms(d));
            if v["owner_confirmed"] != Value::Bool(true) {
                t.releases_unconfirmed += 1;
            }
        }
        Ok((s, v, _)) => t.error(
            format!("DELETE answered {s}"),
            format!("release {id} on {}: {s} {v}", node.name),
        ),
        Err(e) => t.error(
            "DELETE transport error".into(),
            format!("release {id} on {}: {e}", node.name),
        ),
    }
}

/// The most of one node's lendable capacity seen granted at once.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// By GPU index.
    pub gpu_memory_mb: BTreeMap<u32, u64>,
    pub custom: BTreeMap<String, u64>,
    pub leases: usize,
}

impl Usage {
    fn of(granted: &[Allocation]) -> Usage {
        let mut u = Usage {
            leases: granted.len(),
            ..Default::default()
        };
        for a in granted {
            let r = &a.allocated_resources;
            u.cpu_cores += r.cpu_cores;
            u.memory_mb += r.memory_mb;
            u.disk_mb += r.disk_mb;
            for g in &r.gpus {
                *u.gpu_memory_mb.entry(g.index).or_default() += g.memory_mb;
            }
            for (k, v) in &r.custom {
                *u.custom.entry(k.clone()).or_default() += v;
            }
        }
        u
    }

    /// Every dimension in which this exceeds `lendable`, described.
    fn excess(&self, lendable: &Capacity) -> Vec<String> {
        let mut out = Vec::new();
        if self.cpu_cores > lendable.cpu_cores {
            out.push(format!(
                "cpu_cores {} > {}",
                self.cpu_cores, lendable.cpu_cores
            ));
        }
        if self.memory_mb > lendable.memory_mb {
            out.push(format!(
                "memory_mb {} > {}",
                self.memory_mb, lendable.memory_mb
            ));
        }
        if self.disk_mb > lendable.disk_mb {
            out.push(format!("disk_mb {} > {}", self.disk_mb, lendable.disk_mb));
        }
        for (idx, used) in &self.gpu_memory_mb {
            let cap = lendable
                .gpus
                .iter()
                .find(|g| g.index == *idx)
                .map_or(0, |g| g.memory_mb);
            if *used > cap {
                out.push(format!("gpu {idx} memory_mb {used} > {cap}"));
            }
        }
        for (k, used) in &self.custom {
            let cap = lendable.custom.get(k).copied().unwrap_or(0);
            if *used > cap {
                out.push(format!("custom.{k} {used} > {cap}"));
            }
        }
        out
    }

    fn max_with(&mut self, o: &Usage) {
        self.cpu_cores = self.cpu_cores.max(o.cpu_cores);
        self.memory_mb = self.memory_mb.max(o.memory_mb);
        self.disk_mb = self.disk_mb.max(o.disk_mb);
        for (k, v) in &o.gpu_memory_mb {
            let e = self.gpu_memory_mb.entry(*k).or_default();
            *e = (*e).max(*v);
        }
        for (k, v) in &o.custom {
            let e = self.custom.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
        self.leases = self.leases.max(o.leases);
    }
}

/// What the sampler found.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Sweeps over all nodes.
    pub sweeps: u64,
    /// Owner ledgers read.
    pub reads: u64,
    pub failed_reads: u64,
    pub violations: u64,
    pub violation_examples: Vec<String>,
    /// The most granted at once, per node.
    pub peak: Vec<Usage>,
}

/// Until `done` is set, read every node's granted leases (one
/// `GET /api/v1/allocations` is one consistent snapshot of that owner's
/// ledger) and check that in no dimension and on no GPU they add up to
/// more than the node lends. Sleeps `every` between sweeps.
pub fn sampler(nodes: &[SimNode], every: Duration, done: &AtomicBool) -> Samples {
    let mut s = Samples {
        peak: vec![Usage::default(); nodes.len()],
        ..Default::default()
    };
    loop {
        // Check `done` before the sweep, so a sweep always follows the
        // last request.
        let last = done.load(Ordering::Relaxed);
        for (i, n) in nodes.iter().enumerate() {
            let allocs: Allocations = match n
                .get("/api/v1/allocations")
                .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            {
                Ok(a) => a,
                Err(_) => {
                    s.failed_reads += 1;
                    continue;
                }
            };
            s.reads += 1;
            let u = Usage::of(&allocs.granted);
            let excess = u.excess(&n.lendable);
            if !excess.is_empty() {
                s.violations += 1;
                if s.violation_examples.len() < MAX_EXAMPLES {
                    s.violation_examples.push(format!(
                        "{} granted more than it lends: {}",
                        n.name,
                        excess.join(", ")
                    ));
                }
            }
            s.peak[i].max_with(&u);
        }
        s.sweeps += 1;
        if last {
            return s;
        }
        let pause = Instant::now();
        while pause.elapsed() < every && !done.load(Ordering::Relaxed) {
            std::thread::sleep(every.min(Duration::from_millis(5)));
        }
    }
}

/// Wait until no node holds or has granted any lease. Returns how long
/// that took, or what is left after `timeout`.
pub fn wait_drained(nodes: &[SimNode], timeout: Duration) -> Result<Duration, Vec<String>> {
    let start = Instant::now();
    loop {
        let mut left = Vec::new();
        for n in nodes {
            match n
                .get("/api/v1/allocations")
                .and_then(|v| serde_json::from_value::<Allocations>(v).map_err(|e| e.to_string()))
            {
                Ok(a) => {
                    for g in &a.granted {
                        left.push(format!(
                            "{} still grants {} (holder {}, request {})",
                            n.name, g.allocation_id, g.holder, g.request_id
                        ));
                    }
                    for h in &a.held {
                        left.push(format!(
                            "{} still holds {} on {} (request {})",
                            n.name, h.allocation_id, h.node_name, h.request_id
                        ));
                    }
                }
                Err(e) => left.push(e),
            }
        }
        if left.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until every node sees every node (itself included) with all of
/// its lendable capacity free again: the releases have been announced
/// everywhere. Returns how long that took, or what differs.
pub fn wait_views_settled(nodes: &[SimNode], timeout: Duration) -> Result<Duration, Vec<String>> {
    let start = Instant::now();
    loop {
        let mut off = Vec::new();
        for viewer in nodes {
            let view: Vec<lanswarm::handle::NodeInfo> = match viewer
                .get("/api/v1/nodes")
                .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            {
                Ok(v) => v,
                Err(e) => {
                    off.push(e);
                    continue;
                }
            };
            for n in nodes {
                match view.iter().find(|v| v.id.0 == n.id) {
                    None => off.push(format!("{} no longer knows {}", viewer.name, n.name)),
                    Some(v) if v.resources.free != n.lendable => off.push(format!(
                        "{} sees {} with {} cores, {} MiB free of {}, {} (seq {})",
                        viewer.name,
                        n.name,
                        v.resources.free.cpu_cores,
                        v.resources.free.memory_mb,
                        n.lendable.cpu_cores,
                        n.lendable.memory_mb,
                        v.seq
                    )),
                    Some(_) => {}
                }
            }
        }
        if off.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(off);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every penalty a node has given a peer (`/api/v1/node` `penalties`).
/// All the peers of a simulation are honest nodes, so each one is a false
/// positive of the node's defences.
pub fn penalties(nodes: &[SimNode]) -> Vec<String> {
    let name_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| id.to_owned(), |n| n.name.clone())
    };
    let mut out = Vec::new();
    for n in nodes {
        let info: lanswarm::handle::NodeInfo = match n
            .get("/api/v1/node")
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        {
            Ok(i) => i,
            Err(e) => {
                out.push(e);
                continue;
            }
        };
        for p in info.penalties {
            out.push(format!(
                "{} penalised {} ({} offences{}; last: {})",
                n.name,
                name_of(&p.peer_id),
                p.offences,
                if p.banned { ", banned" } else { "" },
                p.last_offence
            ));
        }
    }
    out
}

/// The profile names, for the dry-run summary.
pub fn profile_of(i: usize) -> &'static str {
    PROFILES[i % PROFILES.len()].name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let a = generate(7, 200, 5);
        let b = generate(7, 200, 5);
        let c = generate(8, 200, 5);
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
        for j in &a {
            let r: AllocationRequest = serde_json::from_str(&j.body).unwrap();
            assert!(!r.required_resources.is_empty());
            assert!(j.requester < 5);
        }
    }

    #[test]
    fn exclusions_are_grouped_without_their_numbers() {
        assert_eq!(exclusion_kind("cpu_cores: want 64, free 7"), "cpu_cores");
        assert_eq!(exclusion_kind("suspect: silent for 3100 ms"), "suspect");
        assert_eq!(
            exclusion_kind("not the requested node n3"),
            "not the requested node"
        );
        assert_eq!(exclusion_kind("remote access off"), "remote access off");
    }
}
