//! Utilization history: what this node lends and has free, and what the
//! swarm as seen from here lends and has free, sampled at a fixed interval
//! into a bounded ring, plus the latest allocation round trips. The
//! dashboard draws its charts from it; nothing here is durable (a restart
//! starts a fresh history).
//!
//! Sans-IO: the event loop decides when to sample (`due`) and hands in
//! what it sees; this module only keeps and slices the series.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::pools::{aggregate, PoolCapacity};
use crate::model::{Announcement, NodeStatus};

/// How often a sample is taken, by default.
pub const DEFAULT_EVERY_MS: u64 = 2_000;
/// How many samples are kept by default: one hour at the default interval.
pub const DEFAULT_SAMPLES: usize = 1_800;
/// How many allocation round trips are kept.
pub const LATENCY_POINTS: usize = 512;

/// One sample of this node and of the swarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UtilSample {
    /// When it was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// What this node lends (`*_total`) and has free now.
    pub local: PoolCapacity,
    /// Host CPU use of this machine, percent.
    pub local_cpu_usage_pct: f32,
    /// Leases this node has granted that are active.
    pub local_active_leases: u32,
    /// Requests waiting in this node's queue.
    pub local_queued: u32,
    /// The usable nodes of the view, this one included, summed from their
    /// latest announcements.
    pub swarm: PoolCapacity,
    /// Mean host CPU use over those nodes, percent.
    pub swarm_cpu_usage_pct: f32,
    /// Active leases over those nodes.
    pub swarm_active_leases: u32,
    /// Every node in the view (this one included) by status.
    pub nodes: BTreeMap<NodeStatus, u32>,
}

impl UtilSample {
    /// Build a sample from this node's own announcement and its peers'
    /// latest announcements with their statuses. Only usable peers
    /// (`online`, `degraded`) count towards the swarm's capacity.
    pub fn take<'a>(
        at_ms: u64,
        own: &Announcement,
        peers: impl IntoIterator<Item = (&'a Announcement, NodeStatus)>,
    ) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(NodeStatus::Online, 1);
        let mut usable: Vec<&Announcement> = vec![own];
        for (a, status) in peers {
            *nodes.entry(status).or_insert(0u32) += 1;
            if status.usable() {
                usable.push(a);
            }
        }
        let swarm = aggregate(usable.iter().map(|a| (&a.capacity, &a.free)));
        let cpu: f32 = usable
            .iter()
            .map(|a| a.cpu_usage_pct.clamp(0.0, 100.0))
            .sum();
        UtilSample {
            at_ms,
            local: aggregate([(&own.capacity, &own.free)]),
            local_cpu_usage_pct: own.cpu_usage_pct,
            local_active_leases: own.active_leases,
            local_queued: own.queued,
            swarm_cpu_usage_pct: cpu / usable.len() as f32,
            swarm_active_leases: usable
                .iter()
                .fold(0u32, |n, a| n.saturating_add(a.active_leases)),
            swarm,
            nodes,
        }
    }
}

/// One allocation this node asked for: how long the answer took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// When the answer came, ms since the Unix epoch.
    pub at_ms: u64,
    /// Request to answer, milliseconds.
    pub ms: f64,
    /// `granted`, `queued`, `denied` or `failed`.
    pub outcome: String,
}

/// What `GET /api/v1/utilization` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UtilReport {
    /// The sampling interval, ms.
    pub every_ms: u64,
    /// Samples, oldest first.
    pub samples: Vec<UtilSample>,
    /// Allocation round trips, oldest first.
    pub latency: Vec<LatencyPoint>,
}

/// The bounded series.
#[derive(Debug)]
pub struct UtilHistory {
    every_ms: u64,
    cap: usize,
    last_ms: Option<u64>,
    samples: VecDeque<UtilSample>,
    latency: VecDeque<LatencyPoint>,
}

impl Default for UtilHistory {
    fn default() -> Self {
        Self::new(DEFAULT_EVERY_MS, DEFAULT_SAMPLES)
    }
}

impl UtilHistory {
    /// A history sampled every `every_ms` (at least 100 ms) keeping the
    /// last `cap` samples (at least 1).
    pub fn new(every_ms: u64, cap: usize) -> Self {
        UtilHistory {
            every_ms: every_ms.max(100),
            cap: cap.max(1),
            last_ms: None,
            samples: VecDeque::new(),
            latency: VecDeque::new(),
        }
    }

    /// Whether a sample is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.last_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.every_ms || now_ms < last)
    }

    /// Keep a sample, dropping the oldest beyond the bound.
    pub fn push(&mut self, sample: UtilSample) {
        self.last_ms = Some(sample.at_ms);
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Keep an allocation round trip.
    pub fn note_latency(&mut self, at_ms: u64, ms: f64, outcome: &str) {
        if self.latency.len() == LATENCY_POINTS {
            self.latency.pop_front();
        }
        self.latency.push_back(LatencyPoint {
            at_ms,
            ms,
            outcome: outcome.to_owned(),
        });
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<&UtilSample> {
        self.samples.back()
    }

    /// Everything taken strictly after `after_ms` (0: everything).
    pub fn since(&self, after_ms: u64) -> UtilReport {
        UtilReport {
            every_ms: self.every_ms,
            samples: self
                .samples
                .iter()
                .filter(|s| s.at_ms > after_ms)
                .cloned()
                .collect(),
            latency: self
                .latency
                .iter()
                .filter(|p| p.at_ms > after_ms)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capacity, GpuSlot, NodeId};

    fn ann(id: &str, cores: u32, free_cores: u32, gpu_free: u64) -> Announcement {
        let mut a = Announcement::placeholder(NodeId(id.into()));
        a.capacity = Capacity {
            cpu_cores: cores,
            memory_mb: 1024,
            gpus: vec![GpuSlot {
                index: 0,
                memory_mb: 8192,
            }],
            ..Default::default()
        };
        a.free = Capacity {
            cpu_cores: free_cores,
            memory_mb: 512,
            gpus: vec![GpuSlot {
                index: 0,
                memory_mb: gpu_free,
            }],
            ..Default::default()
        };
        a.active_leases = 1;
        a.cpu_usage_pct = 40.0;
        a
    }

    #[test]
    fn a_sample_sums_usable_nodes_only() {
        let own = ann("a", 8, 6, 8192);
        let b = ann("b", 4, 0, 0);
        let c = ann("c", 16, 16, 8192);
        let s = UtilSample::take(
            1_000,
            &own,
            [(&b, NodeStatus::Degraded), (&c, NodeStatus::Offline)],
        );
        assert_eq!(s.local.cpu_cores_total, 8);
        assert_eq!(s.local.cpu_cores_free, 6);
        assert_eq!(s.local.gpus_free, 1);
        // The offline node's capacity is not counted.
        assert_eq!(s.swarm.nodes, 2);
        assert_eq!(s.swarm.cpu_cores_total, 12);
        assert_eq!(s.swarm.cpu_cores_free, 6);
        assert_eq!(s.swarm.gpus_total, 2);
        assert_eq!(s.swarm.gpus_free, 1);
        assert_eq!(s.swarm.gpu_memory_mb_free, 8192);
        assert_eq!(s.swarm_active_leases, 2);
        assert_eq!(s.nodes[&NodeStatus::Online], 1);
        assert_eq!(s.nodes[&NodeStatus::Degraded], 1);
        assert_eq!(s.nodes[&NodeStatus::Offline], 1);
    }

    #[test]
    fn samples_are_taken_at_the_interval_and_bounded() {
        let own = ann("a", 8, 6, 8192);
        let mut h = UtilHistory::new(1_000, 3);
        let mut taken = Vec::new();
        for now in (0..10_000).step_by(250) {
            if h.due(now) {
                h.push(UtilSample::take(now, &own, []));
                taken.push(now);
            }
        }
        assert_eq!(taken, (0..10).map(|s| s * 1_000).collect::<Vec<_>>());
        let r = h.since(0);
        // Only the last three are kept; `since` is strict.
        assert_eq!(
            r.samples.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            vec![7_000, 8_000, 9_000]
        );
        assert_eq!(h.latest().map(|s| s.at_ms), Some(9_000));
        assert_eq!(h.since(8_000).samples.len(), 1);
        // A clock that went back does not stop sampling.
        assert!(h.due(5_000));
    }

    #[test]
    fn latency_points_are_bounded() {
        let mut h = UtilHistory::default();
        for i in 0..(LATENCY_POINTS as u64 + 10) {
            h.note_latency(i + 1, i as f64, "granted");
        }
        let r = h.since(0);
        assert_eq!(r.latency.len(), LATENCY_POINTS);
        assert_eq!(r.latency[0].at_ms, 11);
        assert_eq!(h.since(LATENCY_POINTS as u64 + 5).latency.len(), 5);
    }
}
