//! The owner side of a simulated node, behind one small trait so the
//! simulator can drive whichever real core decides grants.
//!
//! [`OwnerCore`] is the shape of the owner-side scheduler (submit, release,
//! tick, next wakeup, the ledger). [`SchedOwner`] is the real one,
//! [`Scheduler`]: queue, preemption, quotas, rate limit. [`LedgerOwner`]
//! is [`Ledger`] alone: every request is decided at once, nothing is
//! queued and nothing is preempted, so requesters retry on their own; it is
//! kept to show what the queue and preemption buy.

use crate::core::ledger::{AllocateInput, LeaseLimits, Ledger};
use crate::core::sched::{Outcome, SchedPolicy, Scheduler, Submit};
use crate::model::{Capacity, Denial, DenyReason, Lease, LeaseId, NodeId, Usage};

use super::scenario::Policy;

/// One request as it reaches an owner.
#[derive(Clone, Debug)]
pub struct Ask {
    pub input: AllocateInput,
    /// How long the request may wait in the owner's queue; 0 means "answer
    /// now: grant or deny".
    pub wait_ms: u64,
    /// Whether the requester lets the owner preempt (its last resort).
    pub preempt: bool,
}

/// The owner's answer to an [`Ask`].
#[derive(Clone, Debug)]
pub enum Answer {
    /// Granted now, possibly by taking these lower-priority leases back.
    Granted {
        lease: Lease,
        preempted: Vec<Lease>,
    },
    /// Waiting in the owner's queue.
    Queued,
    Denied(Denial),
}

/// What happened when the owner's time moved on.
#[derive(Clone, Debug, Default)]
pub struct Woken {
    /// Leases that ran out.
    pub expired: Vec<Lease>,
    /// Queued requests granted.
    pub granted: Vec<Lease>,
    /// Queued requests that ended without a grant (their wait ran out, or
    /// the ledger refused them for good): their `request_id`s.
    pub timed_out: Vec<String>,
    /// Leases taken back for a queued request granted in the same step.
    pub preempted: Vec<Lease>,
}

/// The owner-side core of one simulated node.
pub trait OwnerCore: Sized {
    /// Shown in reports: which core decided.
    const NAME: &'static str;
    /// Whether requests can wait in the owner's queue.
    const QUEUES: bool;
    /// Whether the queue survives a crash (it is in the owner's store).
    const DURABLE_QUEUE: bool;

    /// A fresh owner.
    fn new(node_id: NodeId, capacity: Capacity, policy: &Policy) -> Self;

    /// This owner after a crash and restart at `now_ms`: what it keeps in
    /// its store (its leases, and its queue if durable) comes back. Returns
    /// the leases it refused to take back (they ran out meanwhile).
    fn restart(&self, policy: &Policy, now_ms: u64) -> (Self, Vec<Lease>);

    /// Whether the request with this ticket (lease id) is still waiting.
    fn is_waiting(&self, ticket: &LeaseId) -> bool;

    fn submit(&mut self, ask: Ask, now_ms: u64) -> Answer;

    /// Release a lease held by `holder`. `None` if it was not there.
    fn release(&mut self, id: &LeaseId, holder: &NodeId, now_ms: u64) -> Option<Lease>;

    fn tick(&mut self, now_ms: u64) -> Woken;

    /// When [`OwnerCore::tick`] must be called next.
    fn next_wakeup(&self) -> Option<u64>;

    fn ledger(&self) -> &Ledger;

    /// Requests waiting in the queue.
    fn queued(&self) -> usize;
}

/// Lease limits for simulated owners: any job length, and no cap on the
/// number of leases that capacity would not impose anyway.
pub fn sim_limits() -> LeaseLimits {
    LeaseLimits {
        min_lease_ms: 1,
        max_lease_ms: u64::MAX / 4,
        max_leases: 1_000_000,
    }
}

/// [`OwnerCore`] over [`Ledger`] alone: no queue, no preemption.
#[derive(Clone, Debug)]
pub struct LedgerOwner {
    ledger: Ledger,
}

impl OwnerCore for LedgerOwner {
    const NAME: &'static str = "core::ledger::Ledger alone (no queue, no preemption)";
    const QUEUES: bool = false;
    const DURABLE_QUEUE: bool = false;

    fn new(node_id: NodeId, capacity: Capacity, _policy: &Policy) -> Self {
        LedgerOwner {
            ledger: Ledger::new(node_id, capacity, sim_limits()),
        }
    }

    fn restart(&self, policy: &Policy, now_ms: u64) -> (Self, Vec<Lease>) {
        let l = &self.ledger;
        let mut o = Self::new(l.node_id().clone(), l.capacity().clone(), policy);
        let refused = o.ledger.restore(l.leases().cloned().collect(), now_ms);
        (o, refused)
    }

    fn is_waiting(&self, _ticket: &LeaseId) -> bool {
        false
    }

    fn submit(&mut self, ask: Ask, now_ms: u64) -> Answer {
        match self.ledger.allocate(ask.input, now_ms) {
            Ok(lease) => Answer::Granted {
                lease,
                preempted: Vec::new(),
            },
            Err(d) => Answer::Denied(d),
        }
    }

    fn release(&mut self, id: &LeaseId, holder: &NodeId, _now_ms: u64) -> Option<Lease> {
        self.ledger.release(id, Some(holder)).ok().flatten()
    }

    fn tick(&mut self, now_ms: u64) -> Woken {
        Woken {
            expired: self.ledger.expire(now_ms),
            ..Woken::default()
        }
    }

    fn next_wakeup(&self) -> Option<u64> {
        self.ledger.next_expiry()
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn queued(&self) -> usize {
        0
    }
}

/// [`OwnerCore`] over the real owner-side [`Scheduler`].
#[derive(Debug)]
pub struct SchedOwner {
    sched: Scheduler,
}

/// The scheduler policy a scenario's policy stands for: its preemption
/// switch, queue length, queue policy and shares, the rest as the node's
/// defaults (the per-peer rate limit included).
pub fn sched_policy(p: &Policy) -> SchedPolicy {
    SchedPolicy {
        preemption: p.preemption,
        max_queue: p.max_queue,
        backfill: p.backfill,
        queue_policy: p.queue_policy,
        shares: p.shares.clone(),
        ..SchedPolicy::default()
    }
}

impl OwnerCore for SchedOwner {
    const NAME: &'static str = "core::sched::Scheduler (queue, preemption)";
    const QUEUES: bool = true;
    const DURABLE_QUEUE: bool = true;

    fn new(node_id: NodeId, capacity: Capacity, policy: &Policy) -> Self {
        SchedOwner {
            sched: Scheduler::new(node_id, capacity, sim_limits(), sched_policy(policy)),
        }
    }

    fn restart(&self, policy: &Policy, now_ms: u64) -> (Self, Vec<Lease>) {
        // What the node keeps in its store: the leases, then the
        // scheduler's snapshot (queue, reservations, quotas), restored in
        // that order as the node does at start.
        let l = self.sched.ledger();
        let mut o = Self::new(l.node_id().clone(), l.capacity().clone(), policy);
        let refused = o
            .sched
            .ledger_mut()
            .restore(l.leases().cloned().collect(), now_ms);
        o.sched.restore(self.sched.snapshot(), now_ms);
        (o, refused)
    }

    fn is_waiting(&self, ticket: &LeaseId) -> bool {
        self.sched.queue().get(ticket).is_some()
    }

    fn submit(&mut self, ask: Ask, now_ms: u64) -> Answer {
        let s = Submit {
            input: ask.input,
            wait_ms: ask.wait_ms,
            until_ms: None,
            groups: Vec::new(),
            preempt: ask.preempt,
            gpus_allowed: None,
        };
        match self.sched.submit(s, &Usage::default(), now_ms) {
            Outcome::Granted { lease, preempted } => Answer::Granted { lease, preempted },
            Outcome::Queued { .. } => Answer::Queued,
            Outcome::Denied(d) => Answer::Denied(d),
        }
    }

    fn release(&mut self, id: &LeaseId, holder: &NodeId, now_ms: u64) -> Option<Lease> {
        self.sched.release(id, Some(holder), now_ms).ok().flatten()
    }

    fn tick(&mut self, now_ms: u64) -> Woken {
        let ev = self.sched.tick(now_ms);
        Woken {
            expired: ev.expired,
            granted: ev.granted,
            timed_out: ev
                .timed_out
                .into_iter()
                .chain(ev.failed.into_iter().map(|(w, _)| w))
                .map(|w| w.input.request_id)
                .collect(),
            preempted: ev.preempted,
        }
    }

    fn next_wakeup(&self) -> Option<u64> {
        self.sched.next_wakeup()
    }

    fn ledger(&self) -> &Ledger {
        self.sched.ledger()
    }

    fn queued(&self) -> usize {
        self.sched.queue().len()
    }
}

/// A denial for an owner that did not answer.
pub fn unreachable(owner: &NodeId) -> Denial {
    Denial::new(
        DenyReason::Unreachable,
        format!("{owner} did not answer (down)"),
    )
}
