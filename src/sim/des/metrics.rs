//! What a run measures, and the invariants it checks after every event.
//!
//! [`Metrics`] integrates the capacity in use over time and collects wait
//! times, refusals and preemptions. [`Checker`] holds the invariants:
//!
//! 1. no owner ever has leases adding up to more than its capacity, in any
//!    dimension or on any GPU (recomputed from the leases, not from the
//!    ledger's cached totals);
//! 2. a preemption never takes a lease of equal or higher priority than the
//!    request it makes room for;
//! 3. a lease id is never granted twice, and a job never holds two leases;
//! 4. a queued job is never granted at an owner while an earlier job of
//!    higher or equal priority waiting there is owed the capacity. The
//!    owner's queue ([`crate::core::queue`]) backfills conservatively: a
//!    later request may pass a blocked one only with capacity the blocked
//!    one is not waiting for, and the first in line is granted whenever it
//!    fits. So the check, after every owner step, is that the first
//!    request in grant order still waiting there does not fit in what is
//!    free (checked by the decentralized run, which knows the queues).
//!    Under the `fair-share` and `weighted` queue policies the order within
//!    a priority follows the owner's record of use, which the run does not
//!    see; there the check is that not every waiting request of the
//!    highest waiting priority fits (one of them is first in line).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::core::ledger::Ledger;
use crate::model::{Capacity, Lease, LeaseId, Priority};

use super::workload::{Dim, Job};

/// Keep at most this many violation messages (the count is exact).
const MAX_EXAMPLES: usize = 20;

/// Invariant checks; see the module docs.
#[derive(Debug, Default)]
pub struct Checker {
    pub violations: u64,
    pub examples: Vec<String>,
    /// Every lease id ever granted.
    granted_ever: HashSet<LeaseId>,
    /// Job -> the lease it holds now.
    active_by_job: HashMap<u32, LeaseId>,
    /// Lease -> the job holding it.
    job_by_lease: HashMap<LeaseId, u32>,
    /// Checks made.
    pub checks: u64,
}

impl Checker {
    /// Record a violation found elsewhere.
    pub fn record(&mut self, now_ms: u64, msg: String) {
        self.violation(now_ms, msg);
    }

    fn violation(&mut self, now_ms: u64, msg: String) {
        self.violations += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(format!("t={now_ms}ms: {msg}"));
        }
    }

    /// Invariant 1 for one owner.
    pub fn check_owner(&mut self, ledger: &Ledger, now_ms: u64) {
        self.checks += 1;
        let cap = ledger.capacity();
        let mut cpu: u64 = 0;
        let mut mem: u64 = 0;
        let mut disk: u64 = 0;
        let mut gpu: BTreeMap<u32, u64> = BTreeMap::new();
        for l in ledger.leases() {
            cpu += u64::from(l.cpu_cores);
            mem += l.memory_mb;
            disk += l.disk_mb;
            for g in &l.gpus {
                *gpu.entry(g.index).or_insert(0) += g.memory_mb;
            }
        }
        let node = ledger.node_id().clone();
        if cpu > u64::from(cap.cpu_cores) {
            self.violation(
                now_ms,
                format!("{node} over-committed cpu: {cpu} > {}", cap.cpu_cores),
            );
        }
        if mem > cap.memory_mb {
            self.violation(
                now_ms,
                format!("{node} over-committed memory: {mem} > {}", cap.memory_mb),
            );
        }
        if disk > cap.disk_mb {
            self.violation(
                now_ms,
                format!("{node} over-committed disk: {disk} > {}", cap.disk_mb),
            );
        }
        for (index, used) in gpu {
            let total = cap
                .gpus
                .iter()
                .find(|g| g.index == index)
                .map_or(0, |g| g.memory_mb);
            if used > total {
                self.violation(
                    now_ms,
                    format!("{node} over-committed GPU {index}: {used} > {total} MiB"),
                );
            }
        }
    }

    /// Invariant 3 at a grant of `lease` to `job`.
    pub fn on_grant(&mut self, job: u32, lease: &Lease, now_ms: u64) {
        self.checks += 1;
        if !self.granted_ever.insert(lease.lease_id.clone()) {
            self.violation(now_ms, format!("lease {} granted twice", lease.lease_id));
        }
        if let Some(other) = self.active_by_job.get(&job) {
            if *other != lease.lease_id {
                let other = other.clone();
                self.violation(
                    now_ms,
                    format!("job {job} holds two leases: {other} and {}", lease.lease_id),
                );
            }
        }
        self.active_by_job.insert(job, lease.lease_id.clone());
        self.job_by_lease.insert(lease.lease_id.clone(), job);
    }

    /// A lease is gone (released, expired, preempted, refused at restart).
    pub fn on_end(&mut self, lease: &LeaseId) {
        if let Some(job) = self.job_by_lease.remove(lease) {
            if self.active_by_job.get(&job) == Some(lease) {
                self.active_by_job.remove(&job);
            }
        }
    }

    /// Invariant 2: `victim` was taken back for a request of priority `by`.
    pub fn on_preempt(&mut self, victim: &Lease, by: Priority, now_ms: u64) {
        self.checks += 1;
        if victim.priority >= by {
            self.violation(
                now_ms,
                format!(
                    "lease {} ({}) preempted for a {by} request",
                    victim.lease_id, victim.priority
                ),
            );
        }
        self.on_end(&victim.lease_id);
    }
}

/// Counters and time integrals of one run.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Measured window: `[from_ms, to_ms)`.
    pub from_ms: u64,
    pub to_ms: u64,
    /// Capacity in use now, per [`Dim`].
    used: [f64; 3],
    last_ms: u64,
    /// ∫ used dt over the window, per [`Dim`].
    integral: [f64; 3],
    /// The part of `integral` spent on work that preemption threw away (a
    /// preempted job starts again from scratch).
    wasted: [f64; 3],
    /// Wait (submission to grant) of each granted job that arrived in the
    /// window, per priority index.
    pub waits: [Vec<u64>; 4],
    /// Jobs that arrived in the window and never got resources, per
    /// priority index.
    pub unserved: [u64; 4],
    /// Jobs whose requester crashed before they ran.
    pub lost: u64,
    pub granted: u64,
    pub completed: u64,
    pub preemptions: u64,
    /// Owner refusals, by reason code.
    pub denials: BTreeMap<String, u64>,
    /// Requests sent to owners.
    pub asks: u64,
    /// Requests that waited in an owner's queue.
    pub queued: u64,
    /// Why jobs were never served, by reason.
    pub unserved_why: BTreeMap<String, u64>,
    pub events: u64,
    /// Per requester (node index): what it was granted and how long it
    /// waited, for jobs that arrived in the window.
    pub by_requester: BTreeMap<u32, RequesterUse>,
    /// Waits of granted jobs that arrived in the window, per job class
    /// (index into the scenario's `[[workload.classes]]`).
    pub class_waits: BTreeMap<u16, Vec<u64>>,
    /// Jobs that arrived in the window and were never served, per job class.
    pub class_unserved: BTreeMap<u16, u64>,
    /// Width of one step of `series`, ms.
    pub series_step_ms: u64,
    /// ∫ used dt over each step `[i × step, (i + 1) × step)` from time 0
    /// (warm-up included) to the end of the window, per [`Dim`].
    pub series: Vec<[f64; 3]>,
}

/// What one requester got in the measured window.
#[derive(Clone, Debug, Default)]
pub struct RequesterUse {
    /// Granted resource-time per [`Dim`] (each grant counted for its job's
    /// duration), the part inside the window.
    pub granted_time: [f64; 3],
    /// Waits of its granted jobs that arrived in the window.
    pub waits: Vec<u64>,
    /// Its jobs that arrived in the window and never got resources.
    pub unserved: u64,
}

impl Metrics {
    pub fn new(from_ms: u64, to_ms: u64) -> Self {
        // About 120 steps, in whole seconds.
        let step = to_ms.div_ceil(120 * 1000).max(1) * 1000;
        Metrics {
            from_ms,
            to_ms,
            series_step_ms: step,
            series: vec![[0.0; 3]; to_ms.div_ceil(step) as usize],
            ..Default::default()
        }
    }

    fn advance(&mut self, now_ms: u64) {
        let a = self.last_ms.max(self.from_ms);
        let b = now_ms.min(self.to_ms);
        if b > a {
            let dt = (b - a) as f64;
            for k in 0..3 {
                self.integral[k] += self.used[k] * dt;
            }
        }
        let mut t = self.last_ms;
        while t < b && self.series_step_ms > 0 {
            let i = t / self.series_step_ms;
            let end = ((i + 1) * self.series_step_ms).min(b);
            if let Some(cell) = self.series.get_mut(i as usize) {
                for (c, u) in cell.iter_mut().zip(self.used) {
                    *c += u * (end - t) as f64;
                }
            }
            t = end;
        }
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Capacity in use changed by `delta` at `now_ms`.
    pub fn used_delta(&mut self, now_ms: u64, delta: [f64; 3]) {
        self.advance(now_ms);
        for (u, d) in self.used.iter_mut().zip(delta) {
            *u += d;
        }
    }

    /// A lease that held `usage` since `since_ms` was preempted at
    /// `now_ms`: its work so far is lost.
    pub fn wasted(&mut self, now_ms: u64, since_ms: u64, usage: [f64; 3]) {
        let a = since_ms.max(self.from_ms);
        let b = now_ms.min(self.to_ms);
        if b > a {
            let dt = (b - a) as f64;
            for (w, u) in self.wasted.iter_mut().zip(usage) {
                *w += u * dt;
            }
        }
    }

    /// Time-averaged utilization per [`Dim`] over the window: everything
    /// held, and the useful part (without work preemption threw away).
    pub fn utilization(&mut self, capacity: &[f64; 3]) -> ([f64; 3], [f64; 3]) {
        self.advance(self.to_ms);
        let span = self.to_ms.saturating_sub(self.from_ms).max(1) as f64;
        let share = |v: [f64; 3]| {
            [0, 1, 2].map(|k| {
                if capacity[k] > 0.0 {
                    v[k] / (capacity[k] * span)
                } else {
                    0.0
                }
            })
        };
        let useful = [0, 1, 2].map(|k| self.integral[k] - self.wasted[k]);
        (share(self.integral), share(useful))
    }

    fn in_window(&self, arrival_ms: u64) -> bool {
        arrival_ms >= self.from_ms && arrival_ms < self.to_ms
    }

    /// `job` was granted for the first time at `now_ms`: its wait (by
    /// priority and job class) and its requester's share of the time.
    pub fn record_first_grant(&mut self, job: &Job, now_ms: u64) {
        let wait = now_ms.saturating_sub(job.arrival_ms);
        self.record_wait(job.arrival_ms, job.priority, job.class, wait);
        self.record_requester_grant(
            job.origin,
            job.arrival_ms,
            now_ms,
            job.duration_ms,
            req_usage(&job.req),
        );
    }

    /// `job` was never served, because of `why`.
    pub fn record_unserved(&mut self, job: &Job, why: &str) {
        if self.in_window(job.arrival_ms) {
            self.unserved[job.priority as usize] += 1;
            *self.class_unserved.entry(job.class).or_insert(0) += 1;
            *self.unserved_why.entry(why.to_owned()).or_insert(0) += 1;
        }
    }

    /// A job of job class `class` that arrived at `arrival_ms` waited
    /// `wait_ms` for its grant.
    fn record_wait(&mut self, arrival_ms: u64, prio: Priority, class: u16, wait_ms: u64) {
        if self.in_window(arrival_ms) {
            self.waits[prio as usize].push(wait_ms);
            self.class_waits.entry(class).or_default().push(wait_ms);
        }
    }

    /// Job of `requester` that arrived at `arrival_ms` granted at `now_ms`
    /// for `duration_ms`, holding `usage` (per [`Dim`]).
    fn record_requester_grant(
        &mut self,
        requester: u32,
        arrival_ms: u64,
        now_ms: u64,
        duration_ms: u64,
        usage: [f64; 3],
    ) {
        let a = now_ms.max(self.from_ms);
        let b = now_ms.saturating_add(duration_ms).min(self.to_ms);
        let in_window = self.in_window(arrival_ms);
        if b <= a && !in_window {
            return;
        }
        let u = self.by_requester.entry(requester).or_default();
        if b > a {
            let dt = (b - a) as f64;
            for (t, x) in u.granted_time.iter_mut().zip(usage) {
                *t += x * dt;
            }
        }
        if in_window {
            u.waits.push(now_ms.saturating_sub(arrival_ms));
        }
    }

    /// A job of `requester` that arrived at `arrival_ms` was never served.
    pub fn record_requester_unserved(&mut self, requester: u32, arrival_ms: u64) {
        if self.in_window(arrival_ms) {
            self.by_requester.entry(requester).or_default().unserved += 1;
        }
    }

    pub fn record_denial(&mut self, code: &str) {
        *self.denials.entry(code.to_owned()).or_insert(0) += 1;
    }
}

/// What a lease uses, per [`Dim`].
pub fn lease_usage(l: &Lease) -> [f64; 3] {
    [
        f64::from(l.cpu_cores),
        l.memory_mb as f64,
        l.gpus.iter().map(|g| g.memory_mb as f64).sum(),
    ]
}

/// What a job asks for, per [`Dim`] (GPU memory only where it names an
/// amount per GPU).
pub fn req_usage(r: &crate::model::ResourceRequirements) -> [f64; 3] {
    [
        f64::from(r.cpu_cores),
        r.memory_mb as f64,
        f64::from(r.gpus_wanted()) * r.gpu_memory_mb as f64,
    ]
}

/// What a lease or a ledger uses, per [`Dim`].
pub fn used_of(c: &Capacity) -> [f64; 3] {
    [
        f64::from(c.cpu_cores),
        c.memory_mb as f64,
        c.gpus.iter().map(|g| g.memory_mb as f64).sum(),
    ]
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The index of `d` in per-dimension arrays.
pub fn dim_index(d: Dim) -> usize {
    match d {
        Dim::Cpu => 0,
        Dim::Memory => 1,
        Dim::GpuMemory => 2,
    }
}
