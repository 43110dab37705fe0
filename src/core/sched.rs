//! The owner-side scheduler: one node's authority over its own resources,
//! with the whole allocation model of seeds 001–003 and no coordinator.
//!
//! A [`Scheduler`] composes the owner's [`Ledger`] (active leases) with
//! its wait queue ([`WaitQueue`]), advance-reservation calendar
//! ([`Calendar`]), quotas ([`QuotaBook`]), per-peer rate limit
//! ([`Throttle`]) and preemption ([`choose_victims`]). It is sans-IO like
//! every core module: time comes in as `now_ms`, ids from the caller, and
//! the same inputs give the same outputs. The network shell calls
//! [`Scheduler::submit`] for each allocation request, [`Scheduler::tick`]
//! at [`Scheduler::next_wakeup`] and after every release, and carries the
//! resulting [`Events`] out (notifying holders, writing the store).
//!
//! # Deciding a request ([`Scheduler::submit`])
//!
//! In order, the first that applies decides:
//!
//! 1. `busy` (with `retry_after_ms`) if the requester exceeds the per-peer
//!    rate limit. The local node itself is never throttled.
//! 2. `bad_request` for a hard end (`until_ms`) that is already past.
//! 3. `quota_exceeded` if the grant would take the requester, or a group it
//!    is in, over a quota here, or over a swarm-wide quota as seen from
//!    here (see [`crate::core::quota`]).
//! 4. Granted if it fits in what is free, minus the peak of the advance
//!    reservations over the lease's lifetime (an open-ended lease must leave
//!    room for every future reservation), **and** no waiting request of equal
//!    or higher priority ahead of it is owed those resources: a new request
//!    joins the queue and the queue is drained at once with the queue's
//!    conservative backfill, so a newcomer never overtakes a waiting request
//!    of equal or higher priority that the capacity it takes would serve.
//! 5. With preemption enabled in the policy: if strictly lower-priority
//!    leases can make room, the fewest and lowest are ended (`preempted`)
//!    and the request is granted. Equal or higher priority is never taken.
//! 6. Queued, at a 1-based position, if the request may wait
//!    (`wait_ms > 0`); `busy` if the queue is full.
//! 7. Otherwise `insufficient_capacity`, with the misfit.
//!
//! A queued request is granted by a later [`Scheduler::tick`] as capacity
//! frees, in priority order and FIFO within a priority, or times out
//! (`queue_timeout`) when its wait runs out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::calendar::{Calendar, Reservation};
use crate::core::fit::fit;
use crate::core::groups::GroupId;
use crate::core::ledger::{AllocateInput, LeaseLimits, Ledger};
use crate::core::preempt::choose_victims;
use crate::core::queue::{WaitQueue, Waiting};
use crate::core::quota::{QuotaBook, Subject};
use crate::core::throttle::{RateLimit, Throttle};
use crate::model::{Capacity, Denial, DenyReason, Lease, LeaseId, NodeId, Usage};

/// Most peers whose request rate is tracked at once.
const MAX_THROTTLED_PEERS: usize = 4096;

/// The owner's scheduling policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedPolicy {
    /// Let higher-priority requests take the resources of strictly
    /// lower-priority leases. Off by default.
    pub preemption: bool,
    /// Most requests waiting at once; more get `busy`.
    pub max_queue: usize,
    /// Longest a request may wait, ms (longer waits are cut to it).
    pub max_wait_ms: u64,
    /// Per-peer allocation request rate.
    pub rate: RateLimit,
    /// Most advance reservations held at once.
    pub max_reservations: usize,
    /// Farthest a reservation may start from now, ms.
    pub reservation_horizon_ms: u64,
}

impl Default for SchedPolicy {
    fn default() -> Self {
        SchedPolicy {
            preemption: false,
            max_queue: 1024,
            max_wait_ms: 3_600_000,
            rate: RateLimit::default(),
            max_reservations: 1024,
            reservation_horizon_ms: 30 * 24 * 3_600_000,
        }
    }
}

/// One allocation request, as the owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    /// The request; `input.lease_id` is the lease's id if granted, and the
    /// ticket while it waits.
    pub input: AllocateInput,
    /// How long the requester will wait for capacity, ms (0: not at all).
    pub wait_ms: u64,
    /// A hard end: the lease ends then at the latest, renewals or not.
    pub until_ms: Option<u64>,
    /// The groups the requester is a member of (for group quotas).
    pub groups: Vec<GroupId>,
}

/// What [`Scheduler::submit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Granted now; `preempted` are the leases ended to make room.
    Granted {
        lease: Lease,
        preempted: Vec<Lease>,
    },
    /// Waiting, at this 1-based position in grant order.
    Queued {
        position: usize,
    },
    Denied(Denial),
}

/// What happened on the way: everything the shell must carry out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Leases that ran out (term not renewed, or hard end reached).
    pub expired: Vec<Lease>,
    /// Waiting requests granted (holders must be told).
    pub granted: Vec<Lease>,
    /// Waiting requests whose wait ran out (holders must be told).
    pub timed_out: Vec<Waiting>,
    /// Waiting requests the ledger refused for good, with why.
    pub failed: Vec<(Waiting, Denial)>,
    /// Reservations whose window began: now active leases.
    pub reservations_started: Vec<Lease>,
    /// Reservations that ended (their leases are gone) or could not start.
    pub reservations_ended: Vec<Reservation>,
    /// Leases ended to make room for higher priority (holders must be told).
    pub preempted: Vec<Lease>,
}

impl Events {
    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self == &Events::default()
    }

    fn extend(&mut self, other: Events) {
        self.expired.extend(other.expired);
        self.granted.extend(other.granted);
        self.timed_out.extend(other.timed_out);
        self.failed.extend(other.failed);
        self.reservations_started.extend(other.reservations_started);
        self.reservations_ended.extend(other.reservations_ended);
        self.preempted.extend(other.preempted);
    }
}

/// What a waiting request brings besides its [`AllocateInput`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitMeta {
    pub until_ms: Option<u64>,
    pub groups: Vec<GroupId>,
}

/// Everything to persist, so a restart keeps queues, quotas and
/// reservations (leases are stored one by one by the shell).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SchedSnapshot {
    pub waiting: Vec<(Waiting, WaitMeta)>,
    pub reservations: Vec<Reservation>,
    pub quotas: crate::core::quota::QuotaSnapshot,
    pub until: Vec<(LeaseId, u64)>,
}

/// The owner-side scheduler. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    ledger: Ledger,
    queue: WaitQueue,
    calendar: Calendar,
    quotas: QuotaBook,
    throttle: Throttle,
    policy: SchedPolicy,
    /// Hard ends of leases that have one.
    until: BTreeMap<LeaseId, u64>,
    /// What each waiting request brings besides its input.
    waiting: BTreeMap<LeaseId, WaitMeta>,
    /// Members of the groups that have a quota here, as the shell last
    /// said (for group usage).
    group_members: BTreeMap<GroupId, BTreeSet<NodeId>>,
    /// Events produced by `submit` (grants of others, preemptions), handed
    /// out by the next `tick`.
    pending: Events,
}

impl Scheduler {
    pub fn new(
        node_id: NodeId,
        capacity: Capacity,
        limits: LeaseLimits,
        policy: SchedPolicy,
    ) -> Self {
        Scheduler {
            ledger: Ledger::new(node_id, capacity, limits),
            queue: WaitQueue::new(policy.max_queue),
            calendar: Calendar::new(policy.max_reservations, policy.reservation_horizon_ms),
            quotas: QuotaBook::new(),
            throttle: Throttle::new(policy.rate.clone(), MAX_THROTTLED_PEERS),
            policy,
            until: BTreeMap::new(),
            waiting: BTreeMap::new(),
            group_members: BTreeMap::new(),
            pending: Events::default(),
        }
    }

    /// The active leases.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Direct access to the ledger, for restoring leases after a restart
    /// and for changing the lendable capacity.
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// The waiting requests.
    pub fn queue(&self) -> &WaitQueue {
        &self.queue
    }

    /// The advance reservations.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// The quotas.
    pub fn quotas(&self) -> &QuotaBook {
        &self.quotas
    }

    /// The policy in force.
    pub fn policy(&self) -> &SchedPolicy {
        &self.policy
    }

    /// Change the policy. The queue bound applies to new requests.
    pub fn set_policy(&mut self, policy: SchedPolicy) {
        self.throttle.set_limit(policy.rate.clone());
        self.policy = policy;
    }

    /// Tell the scheduler who is in the groups that matter for quotas.
    pub fn set_group_members(&mut self, members: BTreeMap<GroupId, BTreeSet<NodeId>>) {
        self.group_members = members;
    }

    /// A lease's hard end, if it has one.
    pub fn until(&self, id: &LeaseId) -> Option<u64> {
        self.until.get(id).copied()
    }

    /// What `subject` holds here now. For [`Subject::Default`]: the most,
    /// per dimension, that any requester without a quota of its own holds.
    pub fn usage_of(&self, subject: &Subject) -> Usage {
        if let Subject::Default = subject {
            let mut per: BTreeMap<&NodeId, Usage> = BTreeMap::new();
            for l in self.ledger.leases() {
                if self
                    .quotas
                    .get(&Subject::Requester(l.holder.clone()))
                    .is_none()
                {
                    per.entry(&l.holder).or_default().add(&Usage::of_lease(l));
                }
            }
            let mut max = Usage::default();
            for u in per.values() {
                max.cpu_cores = max.cpu_cores.max(u.cpu_cores);
                max.memory_mb = max.memory_mb.max(u.memory_mb);
                max.disk_mb = max.disk_mb.max(u.disk_mb);
                max.gpus = max.gpus.max(u.gpus);
                max.gpu_memory_mb = max.gpu_memory_mb.max(u.gpu_memory_mb);
                for (k, v) in &u.custom {
                    let e = max.custom.entry(k.clone()).or_insert(0);
                    *e = (*e).max(*v);
                }
            }
            return max;
        }
        let mut u = Usage::default();
        for l in self.ledger.leases() {
            let counts = match subject {
                Subject::Default => false,
                Subject::Requester(n) => &l.holder == n,
                Subject::Group(g) => self
                    .group_members
                    .get(g)
                    .is_some_and(|m| m.contains(&l.holder)),
            };
            if counts {
                u.add(&Usage::of_lease(l));
            }
        }
        u
    }

    /// Capacity the advance reservations hold at their peak between now and
    /// `until_ms`, kept out of reach of a lease that may last that long.
    fn reserved_until(&self, now_ms: u64, until_ms: Option<u64>) -> Capacity {
        // Only reservations still to start: active ones already hold their
        // lease in the ledger.
        self.calendar
            .peak_pending(now_ms, until_ms.unwrap_or(u64::MAX))
    }

    /// Decide one request. See the module documentation for the order.
    /// `swarm_usage` is what the requester holds on every other owner, as
    /// last announced (for swarm-wide quotas).
    pub fn submit(&mut self, s: Submit, swarm_usage: &Usage, now_ms: u64) -> Outcome {
        let holder = s.input.holder.clone();
        if holder != *self.ledger.node_id() {
            if let Err(d) = self.throttle.admit(&holder, now_ms) {
                return Outcome::Denied(d);
            }
        }
        if let Some(until) = s.until_ms {
            if until <= now_ms {
                return Outcome::Denied(Denial::new(
                    DenyReason::BadRequest,
                    format!("the lease would end at {until} ms, which is already past"),
                ));
            }
        }
        if s.input.req.is_empty() {
            return Outcome::Denied(Denial::new(
                DenyReason::BadRequest,
                "the request asks for no resources",
            ));
        }
        if self.ledger.get(&s.input.lease_id).is_some()
            || self.queue.get(&s.input.lease_id).is_some()
        {
            return Outcome::Denied(Denial::new(
                DenyReason::BadRequest,
                format!("lease id {} is already in use", s.input.lease_id),
            ));
        }
        let reserved = self.reserved_until(now_ms, s.until_ms);
        // Never fits here, whatever frees up: say so rather than wait.
        let room = self.ledger.capacity().minus(&reserved);
        if let Err(misfit) = fit(&room, self.ledger.capacity(), &s.input.req) {
            return Outcome::Denied(Denial::new(
                DenyReason::InsufficientCapacity,
                format!(
                    "more than {} lends in total (or keeps for reservations): {misfit}",
                    self.ledger.node_id()
                ),
            ));
        }
        if let Err(d) = self.check_quota(&s, swarm_usage, now_ms) {
            return Outcome::Denied(d);
        }

        // Through the queue, so a newcomer never overtakes a waiting
        // request that is owed the capacity.
        let wait_ms = s.wait_ms.min(self.policy.max_wait_ms);
        let ticket = s.input.lease_id.clone();
        let meta = WaitMeta {
            until_ms: s.until_ms,
            groups: s.groups.clone(),
        };
        let queue_was_empty = self.queue.is_empty();
        if queue_was_empty {
            let reserved = self.reserved_until(now_ms, s.until_ms);
            if let Ok(lease) = self
                .ledger
                .allocate_reserving(s.input.clone(), &reserved, now_ms)
            {
                return Outcome::Granted {
                    lease: self.admitted(lease, s.until_ms, &s.groups, now_ms),
                    preempted: Vec::new(),
                };
            }
        } else {
            // A deadline of at least one instant, so the entry survives
            // the drain below even when the request cannot wait.
            if let Err(d) = self.queue.push(s.input.clone(), now_ms, wait_ms.max(1)) {
                return Outcome::Denied(d);
            }
            self.waiting.insert(ticket.clone(), meta.clone());
            let drained = self.drain(now_ms);
            if let Some(pos) = drained.granted.iter().position(|l| l.lease_id == ticket) {
                let mut drained = drained;
                let lease = drained.granted.remove(pos);
                self.pending.extend(drained);
                return Outcome::Granted {
                    lease,
                    preempted: Vec::new(),
                };
            }
            self.pending.extend(drained);
            // Not granted: take it out again; it is queued below if it
            // may wait, or preempts, or is refused.
            self.queue.remove(&ticket);
            self.waiting.remove(&ticket);
        }

        if self.policy.preemption {
            let reserved = self.reserved_until(now_ms, s.until_ms);
            // An empty victim list means it fits in what is free but is
            // held back by what waiting requests are owed: no preemption
            // then, or it would overtake them.
            if let Some(victims) =
                choose_victims(&self.ledger, &reserved, &s.input.req, s.input.priority)
                    .filter(|v| !v.is_empty())
            {
                let mut preempted = Vec::new();
                for id in &victims {
                    if let Ok(Some(l)) = self.ledger.release(id, None) {
                        self.until.remove(id);
                        preempted.push(l);
                    }
                }
                match self
                    .ledger
                    .allocate_reserving(s.input.clone(), &reserved, now_ms)
                {
                    Ok(lease) => {
                        for l in &preempted {
                            self.observe_holder(&l.holder, now_ms);
                        }
                        return Outcome::Granted {
                            lease: self.admitted(lease, s.until_ms, &s.groups, now_ms),
                            preempted,
                        };
                    }
                    Err(_) => {
                        // Cannot happen if choose_victims is right; put the
                        // victims back rather than lose them.
                        let restored = self.ledger.restore(preempted.clone(), now_ms);
                        debug_assert!(restored.is_empty());
                    }
                }
            }
        }

        if wait_ms > 0 {
            return match self.queue.push(s.input, now_ms, wait_ms) {
                Ok(position) => {
                    self.waiting.insert(ticket, meta);
                    Outcome::Queued { position }
                }
                Err(d) => Outcome::Denied(d),
            };
        }
        let reserved = self.reserved_until(now_ms, s.until_ms);
        let why = match fit(
            &self.ledger.free().minus(&reserved),
            self.ledger.capacity(),
            &s.input.req,
        ) {
            Err(misfit) => format!("does not fit on {}: {misfit}", self.ledger.node_id()),
            Ok(_) => format!(
                "{} requests of equal or higher priority wait on {} for this capacity",
                self.queue.len(),
                self.ledger.node_id()
            ),
        };
        Outcome::Denied(Denial::new(DenyReason::InsufficientCapacity, why))
    }

    fn check_quota(&self, s: &Submit, swarm_usage: &Usage, now_ms: u64) -> Result<(), Denial> {
        // The usage the lease would have: its GPUs as they would be
        // assigned on an empty node (the count and memory, not which).
        let gpus =
            fit(self.ledger.capacity(), self.ledger.capacity(), &s.input.req).unwrap_or_default();
        let add = Usage {
            cpu_cores: s.input.req.cpu_cores,
            memory_mb: s.input.req.memory_mb,
            disk_mb: s.input.req.disk_mb,
            gpus: gpus.len() as u32,
            gpu_memory_mb: gpus.iter().map(|g| g.memory_mb).sum(),
            custom: s.input.req.custom.clone(),
        };
        self.quotas.check(
            &s.input.holder,
            &s.groups,
            &add,
            |subject| self.usage_of(subject),
            swarm_usage,
            now_ms,
        )
    }

    /// Book-keeping for a lease just granted.
    fn admitted(
        &mut self,
        lease: Lease,
        until_ms: Option<u64>,
        groups: &[GroupId],
        now_ms: u64,
    ) -> Lease {
        let lease = match until_ms {
            Some(at) => {
                self.until.insert(lease.lease_id.clone(), at);
                self.ledger.cap_expiry(&lease.lease_id, at).unwrap_or(lease)
            }
            None => lease,
        };
        self.observe_holder(&lease.holder, now_ms);
        for g in groups {
            let subject = Subject::Group(g.clone());
            let usage = self.usage_of(&subject);
            self.quotas.observe(&subject, &usage, now_ms);
        }
        lease
    }

    /// Keep the quota book's burst timing up to date for one holder.
    fn observe_holder(&mut self, holder: &NodeId, now_ms: u64) {
        let subject = Subject::Requester(holder.clone());
        let usage = self.usage_of(&subject);
        self.quotas.observe(&subject, &usage, now_ms);
    }

    /// Renew a lease (see [`Ledger::renew`]); a hard end still applies.
    pub fn renew(
        &mut self,
        lease_id: &LeaseId,
        holder: &NodeId,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Lease, Denial> {
        let lease = self.ledger.renew(lease_id, holder, lease_ms, now_ms)?;
        Ok(match self.until.get(lease_id) {
            Some(&at) => self.ledger.cap_expiry(lease_id, at).unwrap_or(lease),
            None => lease,
        })
    }

    /// Give a lease back (see [`Ledger::release`]). Call [`Scheduler::tick`]
    /// afterwards: the freed capacity may serve waiting requests.
    pub fn release(
        &mut self,
        lease_id: &LeaseId,
        holder: Option<&NodeId>,
        now_ms: u64,
    ) -> Result<Option<Lease>, Denial> {
        let out = self.ledger.release(lease_id, holder)?;
        if let Some(l) = &out {
            self.until.remove(lease_id);
            self.observe_holder(&l.holder, now_ms);
            if let Some(r) = self.calendar.get(lease_id) {
                if r.holder == l.holder {
                    let _ = self.calendar.cancel(lease_id, None);
                }
            }
        }
        Ok(out)
    }

    /// Stop waiting: the requester gave up. `None` if no such ticket (or it
    /// belongs to another requester).
    pub fn cancel_wait(&mut self, ticket: &LeaseId, holder: Option<&NodeId>) -> Option<Waiting> {
        let w = self.queue.get(ticket)?;
        if holder.is_some_and(|h| *h != w.input.holder) {
            return None;
        }
        self.waiting.remove(ticket);
        self.queue.remove(ticket)
    }

    /// Book an advance reservation (see [`Calendar::book`]).
    pub fn reserve(&mut self, r: Reservation, now_ms: u64) -> Result<Reservation, Denial> {
        let leases: Vec<(Lease, u64)> = self
            .ledger
            .leases()
            .map(|l| {
                (
                    l.clone(),
                    self.until.get(&l.lease_id).copied().unwrap_or(u64::MAX),
                )
            })
            .collect();
        self.calendar
            .book(r, self.ledger.capacity(), &leases, now_ms)
    }

    /// Cancel a reservation before it starts, or end it while it runs.
    pub fn cancel_reservation(
        &mut self,
        id: &LeaseId,
        holder: Option<&NodeId>,
    ) -> Result<Reservation, Denial> {
        let r = self.calendar.cancel(id, holder)?;
        if self.ledger.release(id, None).ok().flatten().is_some() {
            self.until.remove(id);
        }
        Ok(r)
    }

    /// Set a quota here (see [`QuotaBook::set`]).
    pub fn set_quota(
        &mut self,
        subject: Subject,
        quota: crate::core::quota::Quota,
    ) -> Result<(), Denial> {
        let current = self.usage_of(&subject);
        self.quotas.set(subject, quota, &current)
    }

    /// Remove a quota here.
    pub fn remove_quota(&mut self, subject: &Subject) -> bool {
        self.quotas.remove(subject)
    }

    /// Set a swarm-wide cap (see [`QuotaBook::set_swarm`]); `swarm_current`
    /// is what the subject holds across the swarm as seen from here.
    pub fn set_swarm_quota(
        &mut self,
        subject: Subject,
        limits: crate::core::quota::Limits,
        swarm_current: &Usage,
    ) -> Result<(), Denial> {
        self.quotas.set_swarm(subject, limits, swarm_current)
    }

    /// Remove a swarm-wide cap.
    pub fn remove_swarm_quota(&mut self, subject: &Subject) -> bool {
        self.quotas.remove_swarm(subject)
    }

    /// Everything due by `now_ms`: expiries and hard ends, reservation
    /// windows ending and starting, waits running out, then grants to
    /// waiting requests as capacity allows. Plus what `submit` produced.
    pub fn tick(&mut self, now_ms: u64) -> Events {
        let mut ev = std::mem::take(&mut self.pending);
        for l in self.ledger.expire(now_ms) {
            self.until.remove(&l.lease_id);
            ev.expired.push(l);
        }
        for r in self.calendar.end_due(now_ms) {
            if let Ok(Some(l)) = self.ledger.release(&r.id, None) {
                self.until.remove(&r.id);
                ev.expired.push(l);
            }
            ev.reservations_ended.push(r);
        }
        for r in self.calendar.start_due(now_ms) {
            // Exactly as booked: the GPUs set aside, until the window's end.
            let lease = r.lease(self.ledger.node_id(), now_ms);
            if self.ledger.restore(vec![lease.clone()], now_ms).is_empty() {
                let lease = self.admitted(lease, Some(r.end_ms), &[], now_ms);
                ev.reservations_started.push(lease);
            } else {
                // The capacity shrank under it (elastic sharing): the
                // reservation cannot start.
                if let Ok(r) = self.calendar.cancel(&r.id, None) {
                    ev.reservations_ended.push(r);
                }
            }
        }
        for w in self.queue.expire(now_ms) {
            self.waiting.remove(&w.input.lease_id);
            ev.timed_out.push(w);
        }
        let drained = self.drain(now_ms);
        ev.extend(drained);
        for l in &ev.expired {
            let h = l.holder.clone();
            self.observe_holder(&h, now_ms);
        }
        ev
    }

    /// Grant what the queue can have now.
    fn drain(&mut self, now_ms: u64) -> Events {
        let mut ev = Events::default();
        if self.queue.is_empty() {
            return ev;
        }
        let reserved = self.reserved_until(now_ms, None);
        let (granted, failed) = self.queue.drain(&mut self.ledger, &reserved, now_ms);
        for lease in granted {
            let meta = self.waiting.remove(&lease.lease_id).unwrap_or(WaitMeta {
                until_ms: None,
                groups: Vec::new(),
            });
            let lease = self.admitted(lease, meta.until_ms, &meta.groups, now_ms);
            ev.granted.push(lease);
        }
        for (w, d) in failed {
            self.waiting.remove(&w.input.lease_id);
            ev.failed.push((w, d));
        }
        ev
    }

    /// When [`Scheduler::tick`] has something to do next.
    pub fn next_wakeup(&self) -> Option<u64> {
        [
            self.ledger.next_expiry(),
            self.queue.next_deadline(),
            self.calendar.next_event(),
            (!self.pending.is_empty()).then_some(0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What to persist (leases are stored by the shell).
    pub fn snapshot(&self) -> SchedSnapshot {
        SchedSnapshot {
            waiting: self
                .queue
                .entries()
                .into_iter()
                .map(|w| {
                    let meta = self
                        .waiting
                        .get(&w.input.lease_id)
                        .cloned()
                        .unwrap_or(WaitMeta {
                            until_ms: None,
                            groups: Vec::new(),
                        });
                    (w, meta)
                })
                .collect(),
            reservations: self.calendar.snapshot(),
            quotas: self.quotas.snapshot(),
            until: self.until.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Restore what [`Scheduler::snapshot`] saved, after the leases have
    /// been restored into the ledger.
    pub fn restore(&mut self, snap: SchedSnapshot, now_ms: u64) {
        let (waiting, metas): (Vec<Waiting>, Vec<(LeaseId, WaitMeta)>) = snap
            .waiting
            .into_iter()
            .map(|(w, m)| {
                let id = w.input.lease_id.clone();
                (w, (id, m))
            })
            .unzip();
        self.queue.restore(waiting, now_ms);
        self.waiting = metas
            .into_iter()
            .filter(|(id, _)| self.queue.get(id).is_some())
            .collect();
        self.calendar.restore(snap.reservations, now_ms);
        self.quotas = QuotaBook::restore(snap.quotas);
        self.until = snap
            .until
            .into_iter()
            .filter(|(id, _)| self.ledger.get(id).is_some())
            .collect();
    }
}
