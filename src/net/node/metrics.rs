//! Recording [`crate::metrics`] from the event loop: one small method per
//! thing that happens, so the handlers call one line each, and
//! [`EventLoop::refresh_gauges`] for the gauges on the maintenance tick.

use super::*;
use crate::core::calendar::ReservationStatus;
use crate::core::contention::Severity;
use crate::core::sched::Events;
use crate::metrics::{self as m, DimensionLabels, GpuLabels, StatusLabels};
use libp2p::metrics::Recorder;

/// The event loop's metrics, and when the requests in this node's queue
/// joined it (for the queue wait; the scheduler's grant does not say).
pub(super) struct LoopMetrics {
    pub(super) m: crate::metrics::Metrics,
    queued_since: HashMap<LeaseId, u64>,
    /// The GPUs that have per-GPU series.
    gpus: Vec<u32>,
}

impl LoopMetrics {
    pub(super) fn new(m: crate::metrics::Metrics) -> Self {
        LoopMetrics {
            m,
            queued_since: HashMap::new(),
            gpus: Vec::new(),
        }
    }
}

/// Time since `created_ms` (ms since the Unix epoch).
pub(super) fn since_ms(created_ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(created_ms))
}

/// The outcome of a request that ended in `err`, and the deciding reason
/// when it was denied. Denied: an owner (or the requester's view of every
/// node) refused it, or it was malformed. Failed: no owner could be asked
/// or answer (every refusal is `unreachable` or `storage_error`), or the
/// node failed.
pub(super) fn error_outcome(err: &NodeError) -> (&'static str, Option<DenyReason>) {
    match err {
        NodeError::Denied(d) => ("denied", Some(d.reason)),
        NodeError::BadRequest(_) => ("denied", Some(DenyReason::BadRequest)),
        NodeError::NoCapacity { refusals, .. } => {
            let undecided = |r: &Refusal| {
                matches!(r.reason, DenyReason::Unreachable | DenyReason::StorageError)
            };
            if !refusals.is_empty() && refusals.iter().all(undecided) {
                return ("failed", None);
            }
            // No node with room, or some had none: capacity decided it;
            // else the first owner's own answer.
            let reason = if refusals.is_empty()
                || refusals
                    .iter()
                    .any(|r| r.reason == DenyReason::InsufficientCapacity)
            {
                DenyReason::InsufficientCapacity
            } else {
                refusals
                    .iter()
                    .find(|r| !undecided(r))
                    .map_or(DenyReason::InsufficientCapacity, |r| r.reason)
            };
            ("denied", Some(reason))
        }
        _ => ("failed", None),
    }
}

/// MiB as bytes (Prometheus' base unit), saturating.
fn mib_to_bytes(mib: u64) -> i64 {
    i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)
}

fn severity_level(s: Severity) -> i64 {
    match s {
        Severity::None => 0,
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

fn dim(d: &str) -> DimensionLabels {
    DimensionLabels {
        dimension: d.to_owned(),
    }
}

/// A capacity as one number per dimension, in [`m::DIMENSIONS`] order.
/// `gpus` counts GPUs that are entirely free in `free` (or all of them
/// for a total).
fn per_dimension(c: &Capacity, whole_gpus: usize) -> [i64; 5] {
    [
        i64::from(c.cpu_cores),
        c.memory_mb as i64,
        c.disk_mb as i64,
        whole_gpus as i64,
        c.gpu_memory_mb() as i64,
    ]
}

impl EventLoop {
    /// libp2p's swarm metrics (connections, dials, listeners).
    pub(super) fn record_swarm_event(&self, ev: &SwarmEvent<BehaviourEvent>) {
        self.metrics.m.libp2p.record(ev);
    }

    /// libp2p's protocol metrics: gossipsub, identify, ping.
    pub(super) fn record_behaviour_event(&self, ev: &BehaviourEvent) {
        let lp = &self.metrics.m.libp2p;
        match ev {
            BehaviourEvent::Gossipsub(e) => lp.record(e),
            BehaviourEvent::Identify(e) => lp.record(e),
            BehaviourEvent::Ping(e) => lp.record(e),
            _ => {}
        }
    }

    /// Requester side: one of our allocation requests got its final
    /// answer (`granted`, `queued`, `denied` or `failed`) after `latency`.
    /// The one place the requester's latency is observed.
    pub(super) fn note_allocation(&mut self, outcome: &str, latency: Duration) {
        self.util
            .note_latency(now_ms(), latency.as_secs_f64() * 1000.0, outcome);
        let labels = m::outcome(outcome);
        self.metrics.m.allocations.get_or_create(&labels).inc();
        self.metrics
            .m
            .allocation_latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// Requester side: a request made at `created_ms` ended in `err`.
    pub(super) fn note_allocation_error(&mut self, created_ms: u64, err: &NodeError) {
        let (outcome, reason) = error_outcome(err);
        if let Some(r) = reason {
            self.metrics
                .m
                .allocation_denials
                .get_or_create(&m::reason(r))
                .inc();
        }
        self.note_allocation(outcome, since_ms(created_ms));
    }

    /// Owner side: a lease became durable and its holder is told.
    /// `draw` for a lease drawn from a pooled reservation, else `request`.
    pub(super) fn grant_source(&self, lease: &Lease) -> &'static str {
        if self.sched.calendar().drawn_from(&lease.lease_id).is_some() {
            "draw"
        } else {
            "request"
        }
    }

    pub(super) fn note_grant(&mut self, source: &str) {
        self.metrics
            .m
            .grants
            .get_or_create(&m::SourceLabels {
                source: source.to_owned(),
            })
            .inc();
    }

    /// Owner side: we answered a request; denials are counted by reason.
    pub(super) fn note_owner_answer(&mut self, answer: &AllocResponse) {
        if let AllocResponse::Denied(d) = answer {
            self.note_denial(d.reason);
        }
    }

    /// Owner side: we refused a request for `reason`.
    pub(super) fn note_denial(&mut self, reason: DenyReason) {
        self.metrics
            .m
            .denials
            .get_or_create(&m::reason(reason))
            .inc();
    }

    /// Owner side: a request joined our queue (ticket `ticket`) at `now`.
    pub(super) fn note_queued(&mut self, ticket: &LeaseId, now: u64) {
        self.metrics.queued_since.insert(ticket.clone(), now);
    }

    /// Owner side: a lease was released.
    pub(super) fn note_release(&mut self) {
        self.metrics.m.releases.inc();
    }

    /// Owner side: `n` leases were preempted.
    pub(super) fn note_preempted(&mut self, n: usize) {
        self.metrics.m.preemptions.inc_by(n as u64);
    }

    /// Owner side: what the scheduler's timers did (call before the events
    /// are consumed; preemptions are counted by [`Self::note_preempted`]).
    pub(super) fn note_sched_events(&mut self, ev: &Events, now: u64) {
        let mm = &mut self.metrics;
        mm.m.expiries.inc_by(ev.expired.len() as u64);
        let mut wait = |ticket: &LeaseId, since: Option<u64>, at: u64, outcome: &str| {
            let since = mm.queued_since.remove(ticket).or(since);
            if let Some(since) = since {
                let secs = at.saturating_sub(since) as f64 / 1000.0;
                mm.m.queue_wait
                    .get_or_create(&m::outcome(outcome))
                    .observe(secs);
            }
        };
        for l in &ev.granted {
            wait(&l.lease_id, None, l.created_at_ms, "granted");
        }
        for w in &ev.timed_out {
            wait(w.ticket(), Some(w.enqueued_at_ms), now, "timed_out");
        }
        for (w, _) in &ev.failed {
            wait(w.ticket(), Some(w.enqueued_at_ms), now, "failed");
        }
        for (source, n) in [
            ("queue", ev.granted.len()),
            ("reservation", ev.reservations_started.len()),
        ] {
            if n > 0 {
                mm.m.grants
                    .get_or_create(&m::SourceLabels {
                        source: source.to_owned(),
                    })
                    .inc_by(n as u64);
            }
        }
    }

    /// A gossip message published (`out`) or received (`in`) on `topic`.
    pub(super) fn note_gossip(&mut self, topic: &str, direction: &str) {
        self.metrics
            .m
            .gossip_messages
            .get_or_create(&m::GossipLabels {
                topic: topic.to_owned(),
                direction: direction.to_owned(),
            })
            .inc();
    }

    /// A gossip message received on the topic with `hash`.
    pub(super) fn note_gossip_in(&mut self, hash: &gossipsub::TopicHash) {
        let topic = if hash == &self.topic.hash() {
            CAPACITY_TOPIC
        } else if hash == &self.state_topic.hash() {
            STATE_TOPIC
        } else {
            // We subscribe to nothing else; keep the label set closed.
            "other"
        };
        self.note_gossip(topic, "in");
    }

    /// A health probe's round trip: `ping` or `health_check`.
    pub(super) fn note_health_rtt(&mut self, probe: &str, rtt: Duration) {
        self.metrics
            .m
            .health_rtt
            .get_or_create(&m::ProbeLabels {
                probe: probe.to_owned(),
            })
            .observe(rtt.as_secs_f64());
    }

    /// Refresh the gauges: capacity, leases, queue, contention, peers.
    /// Called on the maintenance tick; cheap (one pass over the peers).
    pub(super) fn refresh_gauges(&mut self) {
        let now = now_ms();
        let ledger = self.sched.ledger();
        let total = ledger.capacity().clone();
        let free = ledger.free();
        let active = ledger.len();
        let whole_free =
            free.gpus
                .iter()
                .filter(|f| {
                    total.gpus.iter().any(|t| {
                        t.index == f.index && t.memory_mb > 0 && f.memory_mb >= t.memory_mb
                    })
                })
                .count();
        let lent = per_dimension(&total, total.gpus.len());
        let left = per_dimension(&free, whole_free);
        let indexes: Vec<u32> = total.gpus.iter().map(|g| g.index).collect();
        if indexes != self.metrics.gpus {
            // GPUs come and go only with the capacity (elastic sharing):
            // drop the series of any that left.
            let mm = &self.metrics.m;
            mm.gpu_memory_lent.clear();
            mm.gpu_memory_used.clear();
            mm.gpu_memory_free.clear();
            self.metrics.gpus = indexes;
        }
        let mm = &self.metrics.m;
        for (i, d) in m::DIMENSIONS.iter().enumerate() {
            let l = dim(d);
            mm.capacity_lent.get_or_create(&l).set(lent[i]);
            mm.capacity_free.get_or_create(&l).set(left[i]);
            mm.capacity_used
                .get_or_create(&l)
                .set(lent[i].saturating_sub(left[i]).max(0));
        }
        for t in &total.gpus {
            let f = free
                .gpus
                .iter()
                .find(|f| f.index == t.index)
                .map_or(0, |f| f.memory_mb);
            let l = GpuLabels {
                gpu: t.index.to_string(),
            };
            mm.gpu_memory_lent
                .get_or_create(&l)
                .set(mib_to_bytes(t.memory_mb));
            mm.gpu_memory_free.get_or_create(&l).set(mib_to_bytes(f));
            mm.gpu_memory_used
                .get_or_create(&l)
                .set(mib_to_bytes(t.memory_mb.saturating_sub(f)));
        }
        let mut by_reservation = [0i64; 3];
        for r in self.sched.calendar().iter() {
            let i = match r.status {
                ReservationStatus::Confirmed => 0,
                ReservationStatus::Waiting => 1,
                ReservationStatus::Active => 2,
                _ => continue,
            };
            by_reservation[i] += 1;
        }
        for (i, s) in ["confirmed", "waiting", "active"].iter().enumerate() {
            mm.reservations
                .get_or_create(&StatusLabels {
                    status: (*s).to_owned(),
                })
                .set(by_reservation[i]);
        }
        if let Some(e) = &self.elastic {
            let current = e.current();
            mm.elastic_current
                .get_or_create(&dim("cpu_cores"))
                .set(i64::from(current.cpu_cores));
            mm.elastic_current
                .get_or_create(&dim("memory_mb"))
                .set(i64::try_from(current.memory_mb).unwrap_or(i64::MAX));
            if let Some((cores, mem_mb)) = e.forecast(now) {
                mm.elastic_forecast_cores.set(cores);
                mm.elastic_forecast_memory.set(mib_to_bytes(mem_mb));
            }
        }
        mm.leases.set(active as i64);
        mm.held_leases.set(self.held.len() as i64);
        mm.queue_depth.set(self.sched.queue().len() as i64);
        self.breaker_gauges(now);

        let report = self.contention_report();
        mm.contention_severity.set(severity_level(report.severity));
        for d in &report.dimensions {
            if m::DIMENSIONS.contains(&d.dimension.as_str()) {
                mm.contention_ratio
                    .get_or_create(&dim(&d.dimension))
                    .set(d.ratio);
            }
        }

        let mut by_status = [0i64; 5];
        for p in self.view.peers() {
            if let Some(s) = self.view.status(&p.ann.node_id, now) {
                if let Some(i) = m::STATUSES.iter().position(|x| *x == s) {
                    by_status[i] += 1;
                }
            }
        }
        for (i, s) in m::STATUSES.iter().enumerate() {
            mm.peers
                .get_or_create(&StatusLabels {
                    status: m::status_name(*s).to_owned(),
                })
                .set(by_status[i]);
        }

        // Requests in the queue, with when they joined (those restored
        // after a restart, or queued before this ran); forget the rest.
        let queue = self.sched.queue();
        let mut present = HashSet::with_capacity(queue.len());
        for w in queue.iter() {
            present.insert(w.ticket().clone());
            self.metrics
                .queued_since
                .entry(w.ticket().clone())
                .or_insert(w.enqueued_at_ms);
        }
        self.metrics.queued_since.retain(|t, _| present.contains(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::Refusal;

    fn refusal(reason: DenyReason) -> Refusal {
        Refusal {
            node_id: NodeId("n".into()),
            node_name: "n".into(),
            reason,
            message: String::new(),
        }
    }

    fn no_capacity(reasons: &[DenyReason]) -> NodeError {
        NodeError::NoCapacity {
            refusals: reasons.iter().map(|r| refusal(*r)).collect(),
            excluded: vec![],
        }
    }

    #[test]
    fn outcome_of_errors() {
        let denied = NodeError::Denied(Denial::new(DenyReason::Unsatisfiable, "too big"));
        assert_eq!(
            error_outcome(&denied),
            ("denied", Some(DenyReason::Unsatisfiable))
        );
        // Nobody had room: capacity decided it.
        assert_eq!(
            error_outcome(&no_capacity(&[])),
            ("denied", Some(DenyReason::InsufficientCapacity))
        );
        assert_eq!(
            error_outcome(&no_capacity(&[
                DenyReason::Unreachable,
                DenyReason::InsufficientCapacity
            ])),
            ("denied", Some(DenyReason::InsufficientCapacity))
        );
        assert_eq!(
            error_outcome(&no_capacity(&[
                DenyReason::Unreachable,
                DenyReason::QuotaExceeded
            ])),
            ("denied", Some(DenyReason::QuotaExceeded))
        );
        // No owner decided anything.
        assert_eq!(
            error_outcome(&no_capacity(&[
                DenyReason::Unreachable,
                DenyReason::StorageError
            ])),
            ("failed", None)
        );
        assert_eq!(
            error_outcome(&NodeError::BadRequest("constraints: bad".into())),
            ("denied", Some(DenyReason::BadRequest))
        );
        assert_eq!(error_outcome(&NodeError::Stopped), ("failed", None));
    }
}
