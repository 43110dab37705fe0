//! The owner-side scheduler: one node's authority over its own resources,
//! with the whole allocation model of seeds 001–003 and no coordinator.
//!
//! A [`Scheduler`] composes the owner's [`Ledger`] (active leases) with
//! its wait queue ([`WaitQueue`]), advance-reservation calendar
//! ([`Calendar`]), quotas ([`QuotaBook`]), per-peer rate limit
//! ([`Throttle`]) and preemption ([`crate::core::preempt::choose_victims`]). It is sans-IO like
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
//!    joins the queue and the queue is drained at once, in the order of the
//!    policy's `queue_policy` ([`crate::core::fairshare`]) and with shadow
//!    backfill (or none, with `backfill` off; see [`crate::core::queue`]),
//!    so a newcomer never delays a waiting request of equal or higher
//!    priority ahead of it: it may only take what that request is not
//!    owed, or what it gives back (by its lease length) before that
//!    request is due.
//! 5. With preemption enabled in the policy, and allowed by the requester
//!    (`Submit::preempt`, its last resort): if strictly lower-priority
//!    leases can make room, the fewest and lowest are ended (`preempted`)
//!    and the request is granted. Equal or higher priority is never taken,
//!    nor the lease of a reservation (an active one's, or one drawn from a
//!    pooled one): a reservation is a promise made before the request.
//! 6. Queued, at a 1-based position, if the request may wait
//!    (`wait_ms > 0`); `busy` if the queue is full.
//! 7. Otherwise `insufficient_capacity`, with the misfit.
//!
//! A queued request is granted by a later [`Scheduler::tick`] as capacity
//! frees, in priority order and within a priority by the queue policy
//! (FIFO by default), or times out (`queue_timeout`) when its wait runs
//! out. Every grant is charged to its holder's fair-share use (by its
//! length; a renewal by its extension, an early release gives back the
//! rest).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::calendar::{Calendar, Reservation};
use crate::core::fairshare::{FairShare, QueuePolicy, Shares};
use crate::core::fit::fit;
use crate::core::groups::GroupId;
use crate::core::ledger::{AllocateInput, LeaseLimits, Ledger};
use crate::core::preempt::choose_victims_among;
use crate::core::queue::{Backfill, Order, WaitQueue, Waiting};
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
    /// Order within a priority: `fifo` (default), `fair-share` or
    /// `weighted` (see [`crate::core::fairshare`]).
    pub queue_policy: QueuePolicy,
    /// Grant requests behind a blocked one when that never delays it (see
    /// [`crate::core::queue`], shadow backfill). On by default.
    pub backfill: bool,
    /// Shares and half-life for `fair-share` and `weighted`.
    pub shares: Shares,
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
            queue_policy: QueuePolicy::Fifo,
            backfill: true,
            shares: Shares::default(),
        }
    }
}

/// The queue policy's ranks as they stand, without changing anything:
/// for showing the queue in the order the next drain would take it.
struct PolicyRanks<'a> {
    fair: &'a FairShare,
    policy: QueuePolicy,
    shares: &'a Shares,
    waiting: &'a BTreeMap<LeaseId, WaitMeta>,
}

impl Order for PolicyRanks<'_> {
    fn rank(&self, w: &Waiting) -> u64 {
        let groups = self
            .waiting
            .get(w.ticket())
            .map_or(&[][..], |m| m.groups.as_slice());
        self.fair
            .rank(self.policy, &w.input.holder, groups, self.shares)
    }

    fn granted(&mut self, _: &Lease) {}

    fn is_dynamic(&self) -> bool {
        false
    }
}

/// The within-priority order of a drain, by the node's queue policy.
struct PolicyOrder<'a> {
    fair: &'a mut FairShare,
    policy: QueuePolicy,
    shares: &'a Shares,
    waiting: &'a BTreeMap<LeaseId, WaitMeta>,
    capacity: &'a Capacity,
}

impl Order for PolicyOrder<'_> {
    fn rank(&self, w: &Waiting) -> u64 {
        let groups = self
            .waiting
            .get(w.ticket())
            .map_or(&[][..], |m| m.groups.as_slice());
        self.fair
            .rank(self.policy, &w.input.holder, groups, self.shares)
    }

    fn granted(&mut self, lease: &Lease) {
        self.fair.granted(lease, self.capacity);
    }

    fn is_dynamic(&self) -> bool {
        self.policy != QueuePolicy::Fifo
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
    /// Whether the requester lets this owner preempt for it. Requesters
    /// ask owners with room first and allow preemption only as a last
    /// resort, so a stale view never costs a needless preemption.
    pub preempt: bool,
    /// The GPUs the request may use (a GPU constraint on a node with GPUs
    /// of several kinds), when not all of them.
    pub gpus_allowed: Option<BTreeSet<u32>>,
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
    /// Pooled reservations whose window began and whose condition held:
    /// members may draw leases from them now (no lease was created).
    pub pools_opened: Vec<Reservation>,
    /// Leases drawn from a pooled reservation that was cancelled or could
    /// not go on, ended with it (holders must be told).
    pub draws_ended: Vec<Lease>,
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
        self.pools_opened.extend(other.pools_opened);
        self.draws_ended.extend(other.draws_ended);
    }
}

/// What a waiting request brings besides its [`AllocateInput`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitMeta {
    /// The lease's hard end, as a duration from its grant (not from the
    /// request: time spent waiting does not count).
    pub duration_ms: Option<u64>,
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
    /// Leases drawn from pooled reservations.
    pub draws: Vec<crate::core::calendar::Draw>,
    /// Fair share's memory of past use, so a restart does not forgive it.
    pub fair: crate::core::fairshare::FairShareSnapshot,
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
    /// Recent use per requester, for the fair-share and weighted orders.
    fair: FairShare,
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
            fair: FairShare::new(),
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

    /// Change only the rate limit in force, not the policy (adaptive
    /// throttling). The next [`Scheduler::set_policy`] puts the policy's
    /// rate back.
    pub fn set_effective_rate(&mut self, limit: RateLimit) {
        self.throttle.set_limit(limit);
    }

    /// The rate limit in force (the policy's, unless adaptive throttling
    /// lowered it).
    pub fn effective_rate(&self) -> &RateLimit {
        self.throttle.limit()
    }

    /// Tell the scheduler who is in the groups that matter for quotas.
    pub fn set_group_members(&mut self, members: BTreeMap<GroupId, BTreeSet<NodeId>>) {
        self.group_members = members;
    }

    /// The waiting requests in the order the next drain would consider
    /// them: by priority, then by the queue policy (under `fair-share` and
    /// `weighted`, by use as of the last drain), then by arrival. Backfill
    /// may still grant a later one first, when it fits where an earlier one
    /// does not.
    pub fn queue_in_order(&self) -> Vec<&Waiting> {
        let ranks = PolicyRanks {
            fair: &self.fair,
            policy: self.policy.queue_policy,
            shares: &self.policy.shares,
            waiting: &self.waiting,
        };
        self.queue.in_order(&ranks)
    }

    /// Where `ticket` stands in [`Scheduler::queue_in_order`], 1-based.
    pub fn queue_position(&self, ticket: &LeaseId) -> Option<usize> {
        self.queue_in_order()
            .iter()
            .position(|w| w.ticket() == ticket)
            .map(|i| i + 1)
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
            if self.covers(subject, &l.holder) {
                u.add(&Usage::of_lease(l));
            }
        }
        u
    }

    /// What a request must keep clear of: the reservations over its
    /// lifetime, and every GPU it is not allowed to use.
    fn reserved_for(&self, s: &Submit, now_ms: u64) -> Capacity {
        let mut r = self.reserved_until(now_ms, s.until_ms);
        if let Some(allowed) = &s.gpus_allowed {
            r.gpus.extend(
                self.ledger
                    .capacity()
                    .gpus
                    .iter()
                    .filter(|g| !allowed.contains(&g.index))
                    .cloned(),
            );
        }
        r
    }

    /// Whether `holder`'s usage counts toward `subject` (the default quota
    /// is computed per requester elsewhere).
    fn covers(&self, subject: &Subject, holder: &NodeId) -> bool {
        match subject {
            Subject::Default => false,
            Subject::Requester(n) => holder == n,
            Subject::Group(g) => self
                .group_members
                .get(g)
                .is_some_and(|m| m.contains(holder)),
        }
    }

    /// What the reservations of `subject` that have not started yet will
    /// hold.
    fn pending_reserved_by(&self, subject: &Subject) -> Usage {
        let mut u = Usage::default();
        for r in self.calendar.list() {
            if self.covers(subject, &r.holder) && r.status.is_pending() {
                u.add(&Usage::of_lease(
                    &r.lease(self.ledger.node_id(), r.start_ms),
                ));
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
        if s.input.lease_ms == 0 {
            return Outcome::Denied(Denial::new(
                DenyReason::BadRequest,
                "the request asks for a lease of 0 ms",
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
        let reserved = self.reserved_for(&s, now_ms);
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
        if let Err(d) = self.check_quota(
            &s.input.holder,
            &s.groups,
            &s.input.req,
            swarm_usage,
            now_ms,
        ) {
            return Outcome::Denied(d);
        }

        // Through the queue, so a newcomer never overtakes a waiting
        // request that is owed the capacity.
        let wait_ms = s.wait_ms.min(self.policy.max_wait_ms);
        let ticket = s.input.lease_id.clone();
        let meta = WaitMeta {
            duration_ms: s.until_ms.map(|u| u.saturating_sub(now_ms)),
            groups: s.groups.clone(),
        };
        // A request held to some GPUs (a GPU constraint on a node with GPUs
        // of several kinds) goes around the queue, whose drain knows no
        // such limits: it is granted only when nothing waits, and never
        // queued.
        let restricted = s.gpus_allowed.is_some();
        let wait_ms = if restricted { 0 } else { wait_ms };
        let queue_was_empty = self.queue.is_empty();
        if queue_was_empty {
            let reserved = self.reserved_for(&s, now_ms);
            if let Ok(lease) = self
                .ledger
                .allocate_reserving(s.input.clone(), &reserved, now_ms)
            {
                return Outcome::Granted {
                    lease: self.admitted(lease, s.until_ms, &s.groups, now_ms),
                    preempted: Vec::new(),
                };
            }
        } else if !restricted {
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

        // Never preempt ahead of a waiting request of equal or higher
        // priority: it is owed the capacity first.
        let owed_first = self
            .queue
            .iter()
            .any(|w| w.input.priority >= s.input.priority);
        if self.policy.preemption && s.preempt && !owed_first {
            let reserved = self.reserved_for(&s, now_ms);
            // An empty victim list means it fits in what is free but is
            // held back by what waiting requests are owed: no preemption
            // then, or it would overtake them.
            // The leases of reservations (an active one's, or drawn from a
            // pooled one) are a promise made earlier: never preempted.
            let calendar = &self.calendar;
            let eligible = |l: &Lease| {
                !calendar
                    .get(&l.lease_id)
                    .is_some_and(|r| r.status.is_live())
                    && calendar.drawn_from(&l.lease_id).is_none()
            };
            if let Some(victims) = choose_victims_among(
                &self.ledger,
                &reserved,
                &s.input.req,
                s.input.priority,
                eligible,
            )
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
        let reserved = self.reserved_for(&s, now_ms);
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

    fn check_quota(
        &self,
        holder: &NodeId,
        groups: &[GroupId],
        req: &crate::model::ResourceRequirements,
        swarm_usage: &Usage,
        now_ms: u64,
    ) -> Result<(), Denial> {
        // The usage the lease would have: its GPUs as they would be
        // assigned on an empty node (the count and memory, not which).
        let gpus = fit(self.ledger.capacity(), self.ledger.capacity(), req).unwrap_or_default();
        let mut add = Usage {
            cpu_cores: req.cpu_cores,
            memory_mb: req.memory_mb,
            disk_mb: req.disk_mb,
            gpus: gpus.len() as u32,
            gpu_memory_mb: gpus.iter().map(|g| g.memory_mb).sum(),
            custom: req.custom.clone(),
        };
        // The holder's reservations still to start count as held: they
        // will be its leases.
        add.add(&self.pending_reserved_by(&Subject::Requester(holder.clone())));
        self.quotas.check(
            holder,
            groups,
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
        // Fair share: charge the lease by the time it was granted for.
        let ms = lease.expires_at_ms.saturating_sub(now_ms) as f64;
        let capacity = self.ledger.capacity().clone();
        self.fair
            .charge(&lease, ms, &capacity, now_ms, &self.policy.shares);
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
        let before = self.ledger.get(lease_id).map(|l| l.expires_at_ms);
        let lease = self.ledger.renew(lease_id, holder, lease_ms, now_ms)?;
        let lease = match self.until.get(lease_id) {
            Some(&at) => self.ledger.cap_expiry(lease_id, at).unwrap_or(lease),
            None => lease,
        };
        // Fair share: charge the extension (or give back a shortening).
        let old = before.unwrap_or(lease.expires_at_ms);
        let ms = lease.expires_at_ms as f64 - old as f64;
        let capacity = self.ledger.capacity().clone();
        self.fair
            .charge(&lease, ms, &capacity, now_ms, &self.policy.shares);
        Ok(lease)
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
            // Fair share: give back what was charged and not used.
            let unused = l.expires_at_ms.saturating_sub(now_ms) as f64;
            let capacity = self.ledger.capacity().clone();
            self.fair
                .charge(l, -unused, &capacity, now_ms, &self.policy.shares);
            self.until.remove(lease_id);
            self.calendar.undraw(lease_id);
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

    /// Book an advance reservation (see [`Calendar::book`]). Quotas apply
    /// as for a lease: what the holder holds now, plus its reservations
    /// still to start, plus this one, must stay within them.
    pub fn reserve(
        &mut self,
        r: Reservation,
        groups: &[GroupId],
        swarm_usage: &Usage,
        now_ms: u64,
    ) -> Result<Reservation, Denial> {
        self.check_quota(&r.holder, groups, &r.req, swarm_usage, now_ms)?;
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
        let ended = self.end_draws(id);
        self.pending.draws_ended.extend(ended);
        Ok(r)
    }

    /// End every lease drawn from the pooled reservation `id`.
    fn end_draws(&mut self, id: &LeaseId) -> Vec<Lease> {
        let mut ended = Vec::new();
        for lease_id in self.calendar.draws_of(id) {
            self.calendar.undraw(&lease_id);
            if let Ok(Some(l)) = self.ledger.release(&lease_id, None) {
                self.until.remove(&lease_id);
                ended.push(l);
            }
        }
        ended
    }

    /// Post a named event (see [`Calendar::post_event`]): `from` is the
    /// peer posting it, `None` this node's admin. Returns the reservations
    /// whose condition held; call [`Scheduler::tick`] next to start those
    /// whose window has begun.
    pub fn post_event(&mut self, name: &str, from: Option<&NodeId>, now_ms: u64) -> Vec<LeaseId> {
        self.calendar.post_event(name, from, now_ms)
    }

    /// Draw a lease from the active pooled reservation `reservation` for
    /// `input.holder` (see [`Calendar::plan_draw`] for the refusals):
    /// `groups` are the drawer's groups. The lease holds exactly the
    /// request, on GPUs of the reservation, with the reservation's
    /// priority, and ends with the reservation at the latest (its renewals
    /// are capped there, or at `until_ms` if earlier). No quota is checked: the reservation's capacity
    /// was admitted when it was booked.
    pub fn draw(
        &mut self,
        reservation: &LeaseId,
        input: AllocateInput,
        groups: &[GroupId],
        until_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Lease, Denial> {
        let member = self
            .calendar
            .get(reservation)
            .and_then(|r| r.shared_with.as_ref())
            .is_some_and(|g| groups.contains(g));
        let (r, gpus) =
            self.calendar
                .plan_draw(reservation, &input.holder, member, &input.req, now_ms)?;
        if self.ledger.get(&input.lease_id).is_some()
            || self.calendar.get(&input.lease_id).is_some()
        {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!("lease id {} is already in use", input.lease_id),
            ));
        }
        let lease_ms = input.lease_ms.max(1);
        let expires = now_ms.saturating_add(lease_ms).min(r.end_ms);
        let lease = Lease {
            lease_id: input.lease_id.clone(),
            request_id: input.request_id.clone(),
            node_id: self.ledger.node_id().clone(),
            holder: input.holder.clone(),
            cpu_cores: input.req.cpu_cores,
            memory_mb: input.req.memory_mb,
            disk_mb: input.req.disk_mb,
            gpus,
            custom: input
                .req
                .custom
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            models: input.req.preferred_models.clone(),
            task_type: input.task_type.clone(),
            priority: r.priority,
            created_at_ms: now_ms,
            expires_at_ms: expires,
            lease_ms,
        };
        if !self.ledger.restore(vec![lease.clone()], now_ms).is_empty() {
            // Cannot happen while the calendar's rules hold: what is left
            // of the reservation is kept free in the ledger.
            return Err(Denial::new(
                DenyReason::InsufficientCapacity,
                format!("the node cannot hold the draw from reservation {reservation}"),
            ));
        }
        self.calendar.record_draw(reservation, &lease);
        let until = until_ms.map_or(r.end_ms, |u| u.min(r.end_ms));
        Ok(self.admitted(lease, Some(until), groups, now_ms))
    }

    /// Set a quota here (see [`QuotaBook::set`]).
    pub fn set_quota(
        &mut self,
        subject: Subject,
        quota: crate::core::quota::Quota,
    ) -> Result<(), Denial> {
        // Current use includes reservations still to start: they will be
        // leases of the subject.
        let mut current = self.usage_of(&subject);
        current.add(&self.pending_reserved_by(&subject));
        self.quotas.set(subject, quota, &current)
    }

    /// [`Scheduler::set_quota`], placing the quota in the quota tree under
    /// `parent` (or at a root): see [`QuotaBook::set_with_parent`].
    pub fn set_quota_in_tree(
        &mut self,
        subject: Subject,
        quota: crate::core::quota::Quota,
        parent: Option<Subject>,
    ) -> Result<(), Denial> {
        let mut current = self.usage_of(&subject);
        current.add(&self.pending_reserved_by(&subject));
        self.quotas
            .set_with_parent(subject, quota, parent, &current)
    }

    /// Put back the quota tree's links after [`Scheduler::restore`]; returns
    /// those dropped (see [`QuotaBook::restore_parents`]).
    pub fn restore_quota_parents(
        &mut self,
        links: Vec<(Subject, Subject)>,
    ) -> Vec<(Subject, Subject)> {
        self.quotas.restore_parents(links)
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
            self.calendar.undraw(&l.lease_id);
            ev.expired.push(l);
        }
        for r in self.calendar.end_due(now_ms) {
            if let Ok(Some(l)) = self.ledger.release(&r.id, None) {
                self.until.remove(&r.id);
                ev.expired.push(l);
            }
            // Drawn leases end with the window (their expiry is capped
            // there, so normally they are gone already).
            let ended = self.end_draws(&r.id);
            ev.expired.extend(ended);
            ev.reservations_ended.push(r);
        }
        for r in self.calendar.start_due(now_ms) {
            if r.shared_with.is_some() {
                // Pooled: leases are drawn from it, none is made now.
                ev.pools_opened.push(r);
                continue;
            }
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
        let capacity = self.ledger.capacity().clone();
        let shares = &self.policy.shares;
        self.fair
            .advance(now_ms, self.ledger.leases(), &capacity, shares);
        for (ticket, meta) in &self.waiting {
            if let Some(w) = self.queue.get(ticket) {
                self.fair.note_groups(&w.input.holder, &meta.groups, shares);
            }
        }
        let backfill = if self.policy.backfill {
            Backfill::Shadow
        } else {
            Backfill::Off
        };
        let mut order = PolicyOrder {
            fair: &mut self.fair,
            policy: self.policy.queue_policy,
            shares,
            waiting: &self.waiting,
            capacity: &capacity,
        };
        let (granted, failed) =
            self.queue
                .drain_with(&mut self.ledger, &reserved, now_ms, backfill, &mut order);
        for lease in granted {
            let meta = self.waiting.remove(&lease.lease_id).unwrap_or(WaitMeta {
                duration_ms: None,
                groups: Vec::new(),
            });
            // Quotas were checked when the request arrived; what the holder
            // holds may have grown since (or a quota been set). Check again
            // with this lease taken out, and undo the grant if it no longer
            // fits them.
            let _ = self.ledger.release(&lease.lease_id, None);
            let req = crate::model::ResourceRequirements {
                cpu_cores: lease.cpu_cores,
                memory_mb: lease.memory_mb,
                disk_mb: lease.disk_mb,
                gpu_count: lease.gpus.len() as u32,
                gpu_memory_mb: lease.gpus.first().map_or(0, |g| g.memory_mb),
                custom: lease.custom.clone(),
                ..Default::default()
            };
            let quota =
                self.check_quota(&lease.holder, &meta.groups, &req, &Usage::default(), now_ms);
            match quota {
                Ok(()) if self.ledger.restore(vec![lease.clone()], now_ms).is_empty() => {
                    let until = meta.duration_ms.map(|d| now_ms.saturating_add(d));
                    let lease = self.admitted(lease, until, &meta.groups, now_ms);
                    ev.granted.push(lease);
                }
                outcome => {
                    let denial = outcome.err().unwrap_or_else(|| {
                        Denial::new(DenyReason::InsufficientCapacity, "no longer fits")
                    });
                    let w = Waiting {
                        input: AllocateInput {
                            lease_id: lease.lease_id.clone(),
                            request_id: lease.request_id.clone(),
                            holder: lease.holder.clone(),
                            req,
                            task_type: lease.task_type.clone(),
                            priority: lease.priority,
                            lease_ms: lease.lease_ms,
                        },
                        enqueued_at_ms: lease.created_at_ms,
                        deadline_ms: now_ms,
                        seq: 0,
                    };
                    ev.failed.push((w, denial));
                }
            }
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
                            duration_ms: None,
                            groups: Vec::new(),
                        });
                    (w, meta)
                })
                .collect(),
            reservations: self.calendar.snapshot(),
            quotas: self.quotas.snapshot(),
            until: self.until.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            draws: self.calendar.draws(),
            fair: self.fair.snapshot(),
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
        let draws = snap
            .draws
            .into_iter()
            .filter(|d| self.ledger.get(&d.lease).is_some())
            .collect();
        self.calendar.restore_draws(draws);
        self.fair = FairShare::restore(snap.fair);
        self.quotas = QuotaBook::restore(snap.quotas);
        self.until = snap
            .until
            .into_iter()
            .filter(|(id, _)| self.ledger.get(id).is_some())
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::calendar::{Condition, ReservationStatus};
    use crate::core::quota::{Limits, Quota};
    use crate::model::{GpuSlot, Priority, ResourceRequirements};
    use proptest::prelude::*;

    const OWNER: &str = "owner";
    const HOLDERS: [&str; 3] = ["a", "b", "c"];

    fn capacity() -> Capacity {
        Capacity {
            cpu_cores: 8,
            memory_mb: 16_000,
            disk_mb: 0,
            gpus: vec![
                GpuSlot {
                    index: 0,
                    memory_mb: 16_000,
                },
                GpuSlot {
                    index: 1,
                    memory_mb: 24_000,
                },
            ],
            custom: Default::default(),
        }
    }

    fn new_sched(preemption: bool) -> Scheduler {
        Scheduler::new(
            OWNER.into(),
            capacity(),
            LeaseLimits::default(),
            SchedPolicy {
                preemption,
                max_queue: 6,
                rate: RateLimit {
                    per_sec: 1e6,
                    burst: 1_000_000,
                },
                ..SchedPolicy::default()
            },
        )
    }

    fn req(cores: u32, gpus: u32) -> ResourceRequirements {
        ResourceRequirements {
            cpu_cores: cores,
            memory_mb: u64::from(cores) * 1_000,
            gpu_count: gpus,
            gpu_memory_mb: if gpus > 0 { 8_000 } else { 0 },
            ..Default::default()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Submit {
            holder: usize,
            cores: u32,
            gpus: u32,
            prio: Priority,
            wait: bool,
            until: Option<u64>,
        },
        Release(usize),
        Cancel(usize),
        Advance(u64),
        Quota {
            holder: usize,
            cores: Option<u32>,
        },
        Reserve {
            holder: usize,
            cores: u32,
            gpus: u32,
            start_in: u64,
            len: u64,
            /// 0: no condition, 1: wait for event "go", 2: wait for the
            /// last reservation booked.
            cond: u8,
            pooled: bool,
        },
        /// Post event "go": from a holder, or the admin (`None`).
        PostEvent(Option<usize>),
        /// Draw from the n-th reservation booked.
        Draw {
            holder: usize,
            reservation: usize,
            cores: u32,
            gpus: u32,
        },
        Preemption(bool),
        Policy {
            order: usize,
            backfill: bool,
            share_a: u32,
        },
        Restart,
    }

    fn prio() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::Low),
            Just(Priority::Normal),
            Just(Priority::High),
            Just(Priority::Critical),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 0..5u32, 0..2u32, prio(), any::<bool>(), prop::option::of(1..5_000u64))
                .prop_map(|(holder, cores, gpus, prio, wait, until)| Op::Submit {
                    holder, cores, gpus, prio, wait, until
                }),
            2 => (0..16usize).prop_map(Op::Release),
            1 => (0..16usize).prop_map(Op::Cancel),
            3 => (0..3_000u64).prop_map(Op::Advance),
            1 => (0..3usize, prop::option::of(0..9u32))
                .prop_map(|(holder, cores)| Op::Quota { holder, cores }),
            2 => (0..3usize, 1..5u32, 0..2u32, 0..4_000u64, 1..4_000u64, 0..3u8, any::<bool>())
                .prop_map(|(holder, cores, gpus, start_in, len, cond, pooled)| Op::Reserve {
                    holder, cores, gpus, start_in, len, cond, pooled
                }),
            1 => prop::option::of(0..3usize).prop_map(Op::PostEvent),
            2 => (0..3usize, 0..8usize, 0..3u32, 0..2u32)
                .prop_map(|(holder, reservation, cores, gpus)| Op::Draw {
                    holder, reservation, cores, gpus
                }),
            1 => any::<bool>().prop_map(Op::Preemption),
            1 => (0..3usize, any::<bool>(), 1..5u32)
                .prop_map(|(order, backfill, share_a)| Op::Policy { order, backfill, share_a }),
            1 => Just(Op::Restart),
        ]
    }

    /// Nothing over capacity, per dimension and per GPU.
    fn no_overcommit(s: &Scheduler) -> Result<(), String> {
        let used = s.ledger().used();
        let cap = s.ledger().capacity();
        if used.cpu_cores > cap.cpu_cores || used.memory_mb > cap.memory_mb {
            return Err(format!("over-commit: {used:?} of {cap:?}"));
        }
        for g in &used.gpus {
            let total = cap
                .gpus
                .iter()
                .find(|c| c.index == g.index)
                .map_or(0, |c| c.memory_mb);
            if g.memory_mb > total {
                return Err(format!("GPU {} over-committed: {used:?}", g.index));
            }
        }
        Ok(())
    }

    /// No pooled reservation lends more than it holds, and every draw is
    /// a lease of the ledger.
    fn no_overdraw(s: &Scheduler) -> Result<(), String> {
        let mut per: BTreeMap<LeaseId, (u32, BTreeMap<u32, u64>)> = BTreeMap::new();
        for d in s.calendar().draws() {
            if s.ledger().get(&d.lease).is_none() {
                return Err(format!("draw {} is not a lease", d.lease));
            }
            let e = per.entry(d.reservation.clone()).or_default();
            e.0 += d.holds.cpu_cores;
            for g in &d.holds.gpus {
                *e.1.entry(g.index).or_default() += g.memory_mb;
            }
        }
        for (rid, (cores, gpus)) in per {
            let Some(r) = s.calendar().get(&rid) else {
                return Err(format!("draws from unknown reservation {rid}"));
            };
            if r.status != ReservationStatus::Active || cores > r.req.cpu_cores {
                return Err(format!(
                    "reservation {rid} ({}) lends {cores} cores of {}",
                    r.status, r.req.cpu_cores
                ));
            }
            for (i, m) in gpus {
                let held = r
                    .gpus
                    .iter()
                    .find(|g| g.index == i)
                    .map_or(0, |g| g.memory_mb);
                if m > held {
                    return Err(format!(
                        "reservation {rid} lends {m} MiB of GPU {i}, holds {held}"
                    ));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any mix of grants, queueing, preemption, reservations, quota
        /// changes, queue policies (fifo, fair share, weighted; backfill on
        /// and off; shares) and restarts: never an over-commit, never a
        /// preemption of equal or higher priority, never a quota passed, and
        /// a booked reservation always starts.
        #[test]
        fn the_scheduler_keeps_every_invariant(ops in prop::collection::vec(op(), 1..60)) {
            let mut now = 1_000_000u64;
            let mut s = new_sched(false);
            let mut ids: Vec<LeaseId> = Vec::new();
            let mut next = 0u64;
            let mut caps: BTreeMap<usize, u32> = BTreeMap::new();
            let mut booked: BTreeSet<LeaseId> = BTreeSet::new();
            let mut reserved: Vec<LeaseId> = Vec::new();
            for op in ops {
                let held_before: BTreeSet<LeaseId> =
                    s.ledger().leases().map(|l| l.lease_id.clone()).collect();
                match op {
                    Op::Submit { holder, cores, gpus, prio, wait, until } => {
                        next += 1;
                        let id = LeaseId(format!("l{next}"));
                        ids.push(id.clone());
                        let out = s.submit(
                            Submit {
                                input: AllocateInput {
                                    lease_id: id,
                                    request_id: format!("r{next}"),
                                    holder: HOLDERS[holder].into(),
                                    req: req(cores, gpus),
                                    task_type: String::new(),
                                    priority: prio,
                                    lease_ms: 60_000,
                                },
                                wait_ms: if wait { 2_000 } else { 0 },
                                until_ms: until.map(|u| now + u),
                                groups: Vec::new(),
                                preempt: true,
                                gpus_allowed: None,
                            },
                            &Usage::default(),
                            now,
                        );
                        if let Outcome::Granted { lease, preempted } = &out {
                            for v in preempted {
                                prop_assert!(
                                    v.priority < lease.priority,
                                    "preempted {:?} for {:?}", v.priority, lease.priority
                                );
                            }
                        }
                    }
                    Op::Release(i) => {
                        if let Some(id) = ids.get(i) {
                            let _ = s.release(id, None, now);
                        }
                    }
                    Op::Cancel(i) => {
                        if let Some(id) = ids.get(i) {
                            s.cancel_wait(id, None);
                        }
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Quota { holder, cores } => {
                        let subject = Subject::Requester(HOLDERS[holder].into());
                        match cores {
                            Some(c) => {
                                let q = Quota {
                                    limits: Limits { cpu_cores: Some(c), ..Default::default() },
                                    burst: None,
                                };
                                if s.set_quota(subject, q).is_ok() {
                                    caps.insert(holder, c);
                                }
                            }
                            None => {
                                s.remove_quota(&subject);
                                caps.remove(&holder);
                            }
                        }
                    }
                    Op::Reserve { holder, cores, gpus, start_in, len, cond, pooled } => {
                        next += 1;
                        let condition = match (cond, reserved.last()) {
                            (1, _) => Some(Condition::Event("go".into())),
                            (2, Some(x)) => Some(Condition::Reservation(x.clone())),
                            _ => None,
                        };
                        let r = Reservation {
                            id: LeaseId(format!("r{next}")),
                            holder: HOLDERS[holder].into(),
                            req: req(cores, gpus),
                            priority: Priority::Normal,
                            task_type: String::new(),
                            start_ms: now + start_in,
                            end_ms: now + start_in + len,
                            gpus: Vec::new(),
                            status: ReservationStatus::Confirmed,
                            created_at_ms: now,
                            condition,
                            condition_met_ms: None,
                            shared_with: pooled.then(|| GroupId("g".into())),
                        };
                        if let Ok(r) = s.reserve(r, &[], &Usage::default(), now) {
                            booked.insert(r.id.clone());
                            reserved.push(r.id.clone());
                            ids.push(r.id);
                        }
                    }
                    Op::PostEvent(from) => {
                        let from: Option<NodeId> = from.map(|h| HOLDERS[h].into());
                        s.post_event("go", from.as_ref(), now);
                    }
                    Op::Draw { holder, reservation, cores, gpus } => {
                        if let Some(rid) = reserved.get(reservation) {
                            next += 1;
                            let id = LeaseId(format!("d{next}"));
                            // Holder 2 is in the group "g".
                            let groups = if holder == 2 { vec![GroupId("g".into())] } else { Vec::new() };
                            let input = AllocateInput {
                                lease_id: id.clone(),
                                request_id: format!("r{next}"),
                                holder: HOLDERS[holder].into(),
                                req: req(cores, gpus),
                                task_type: String::new(),
                                priority: Priority::Normal,
                                lease_ms: 60_000,
                            };
                            match s.draw(rid, input, &groups, None, now) {
                                Ok(l) => {
                                    prop_assert!(l.expires_at_ms <= s.calendar().get(rid).map_or(0, |r| r.end_ms));
                                    ids.push(id);
                                }
                                Err(d) => prop_assert!(
                                    !d.message.contains("cannot hold"),
                                    "what is left of a pooled reservation was not free: {d}"
                                ),
                            }
                        }
                    }
                    Op::Preemption(on) => {
                        let mut p = s.policy().clone();
                        p.preemption = on;
                        s.set_policy(p);
                    }
                    Op::Policy { order, backfill, share_a } => {
                        let mut p = s.policy().clone();
                        p.queue_policy =
                            [QueuePolicy::Fifo, QueuePolicy::FairShare, QueuePolicy::Weighted][order];
                        p.backfill = backfill;
                        p.shares.requesters.insert(HOLDERS[0].into(), share_a);
                        s.set_policy(p);
                    }
                    Op::Restart => {
                        let leases: Vec<Lease> = s.ledger().leases().cloned().collect();
                        let snap = s.snapshot();
                        let policy = s.policy().clone();
                        let mut fresh = Scheduler::new(OWNER.into(), capacity(), LeaseLimits::default(), policy);
                        let refused = fresh.ledger_mut().restore(leases, now);
                        prop_assert!(refused.iter().all(|l| l.expires_at_ms <= now), "a live lease was lost: {refused:?}");
                        fresh.restore(snap, now);
                        s = fresh;
                    }
                }
                let ev = s.tick(now);
                for r in &ev.reservations_ended {
                    prop_assert!(
                        r.status != ReservationStatus::Cancelled || !booked.contains(&r.id),
                        "a booked reservation could not start: {r:?}"
                    );
                }
                for l in &ev.preempted {
                    prop_assert!(l.priority < Priority::Critical);
                }
                no_overcommit(&s).map_err(TestCaseError::fail)?;
                no_overdraw(&s).map_err(TestCaseError::fail)?;
                // A cap may be set below current use (it breaks no lease),
                // but a holder over its cap gets no new grant, other than
                // a reservation booked before (a promise already made) or
                // a draw from one (quota-checked when it was booked).
                for (h, cap) in &caps {
                    let holder: NodeId = HOLDERS[*h].into();
                    let used = s.usage_of(&Subject::Requester(holder.clone()));
                    if used.cpu_cores > *cap {
                        let fresh: Vec<&LeaseId> = s
                            .ledger()
                            .leases()
                            .filter(|l| l.holder == holder && l.cpu_cores > 0)
                            .map(|l| &l.lease_id)
                            .filter(|id| !held_before.contains(*id) && !booked.contains(*id))
                            .filter(|id| s.calendar().drawn_from(id).is_none())
                            .collect();
                        prop_assert!(
                            fresh.is_empty(),
                            "{} holds {} cores, cap {cap}, and was granted {fresh:?}",
                            HOLDERS[*h], used.cpu_cores
                        );
                    }
                }
            }
        }
    }

    fn submit_by(holder: &str, id: &str, cores: u32, wait: u64, lease_ms: u64) -> Submit {
        Submit {
            input: AllocateInput {
                lease_id: LeaseId(id.into()),
                request_id: id.into(),
                holder: holder.into(),
                req: req(cores, 0),
                task_type: String::new(),
                priority: Priority::Normal,
                lease_ms,
            },
            wait_ms: wait,
            until_ms: None,
            groups: Vec::new(),
            preempt: false,
            gpus_allowed: None,
        }
    }

    #[test]
    fn queue_positions_follow_the_queue_policy() {
        let now = 1_000_000u64;
        let mut s = new_sched(false);
        let mut p = s.policy().clone();
        p.queue_policy = QueuePolicy::FairShare;
        s.set_policy(p);
        // "a" holds the whole node; then "a" and "b" wait, "a" first.
        assert!(matches!(
            s.submit(submit_by("a", "held", 8, 0, 60_000), &Usage::default(), now),
            Outcome::Granted { .. }
        ));
        for (holder, id) in [("a", "wa"), ("b", "wb")] {
            assert!(matches!(
                s.submit(
                    submit_by(holder, id, 2, 30_000, 10_000),
                    &Usage::default(),
                    now + 1
                ),
                Outcome::Queued { .. }
            ));
        }
        s.tick(now + 2);
        let order: Vec<&str> = s
            .queue_in_order()
            .iter()
            .map(|w| w.ticket().0.as_str())
            .collect();
        // Under fair share "b", who used nothing, goes ahead of "a".
        assert_eq!(order, vec!["wb", "wa"]);
        assert_eq!(s.queue_position(&LeaseId("wb".into())), Some(1));
        assert_eq!(s.queue_position(&LeaseId("wa".into())), Some(2));
        // Under FIFO, arrival order.
        let mut p = s.policy().clone();
        p.queue_policy = QueuePolicy::Fifo;
        s.set_policy(p);
        assert_eq!(s.queue_position(&LeaseId("wa".into())), Some(1));
    }

    #[test]
    fn draws_from_a_pooled_reservation_are_leases_that_end_with_it() {
        let now = 1_000_000u64;
        let mut s = new_sched(false);
        let r = Reservation {
            id: LeaseId("pool".into()),
            holder: "a".into(),
            req: req(6, 0),
            priority: Priority::High,
            task_type: String::new(),
            start_ms: now,
            end_ms: now + 60_000,
            gpus: Vec::new(),
            status: ReservationStatus::Confirmed,
            created_at_ms: now,
            condition: Some(Condition::Event("go".into())),
            condition_met_ms: None,
            shared_with: Some(GroupId("lab".into())),
        };
        s.reserve(r, &[], &Usage::default(), now).unwrap();
        assert!(s.tick(now).pools_opened.is_empty());
        assert_eq!(
            s.post_event("go", Some(&"a".into()), now + 1),
            vec![LeaseId("pool".into())]
        );
        let ev = s.tick(now + 1);
        assert_eq!(ev.pools_opened.len(), 1);
        // No lease for the whole: the six cores stay out of others' reach.
        assert!(s.ledger().is_empty());
        assert!(matches!(
            s.submit(
                submit_by("c", "l1", 3, 0, 10_000),
                &Usage::default(),
                now + 1
            ),
            Outcome::Denied(_)
        ));
        let lab = [GroupId("lab".into())];
        let draw = |id: &str, holder: &str, cores: u32| AllocateInput {
            lease_id: LeaseId(id.into()),
            request_id: id.into(),
            holder: holder.into(),
            req: req(cores, 0),
            task_type: String::new(),
            priority: Priority::Low,
            lease_ms: 120_000,
        };
        let l = s
            .draw(
                &LeaseId("pool".into()),
                draw("d1", "b", 4),
                &lab,
                None,
                now + 2,
            )
            .unwrap();
        // The reservation's priority, and its end.
        assert_eq!(l.priority, Priority::High);
        assert_eq!(l.expires_at_ms, now + 60_000);
        let d = s
            .draw(
                &LeaseId("pool".into()),
                draw("d2", "c", 1),
                &[],
                None,
                now + 2,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::Forbidden);
        let d = s
            .draw(
                &LeaseId("pool".into()),
                draw("d2", "a", 3),
                &[],
                None,
                now + 2,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        s.draw(
            &LeaseId("pool".into()),
            draw("d2", "a", 2),
            &[],
            Some(now + 5_000),
            now + 2,
        )
        .unwrap();
        assert_eq!(s.until(&LeaseId("d2".into())), Some(now + 5_000));
        // Renewals stop at the reservation's end.
        let l = s
            .renew(&LeaseId("d1".into()), &"b".into(), 600_000, now + 3)
            .unwrap();
        assert_eq!(l.expires_at_ms, now + 60_000);
        // Released: back to the pool, not to everyone.
        s.release(&LeaseId("d2".into()), None, now + 4).unwrap();
        assert!(matches!(
            s.submit(
                submit_by("c", "l2", 3, 0, 10_000),
                &Usage::default(),
                now + 4
            ),
            Outcome::Denied(_)
        ));
        // Cancelled: the draws end with it, and the cores are free again.
        s.cancel_reservation(&LeaseId("pool".into()), None).unwrap();
        let ev = s.tick(now + 5);
        assert_eq!(ev.draws_ended.len(), 1);
        assert_eq!(ev.draws_ended[0].lease_id, LeaseId("d1".into()));
        assert!(s.ledger().is_empty());
        assert!(matches!(
            s.submit(
                submit_by("c", "l3", 8, 0, 10_000),
                &Usage::default(),
                now + 5
            ),
            Outcome::Granted { .. }
        ));
    }

    #[test]
    fn without_backfill_a_short_newcomer_waits_behind_a_blocked_request() {
        let mut s = new_sched(false);
        let mut p = s.policy().clone();
        p.backfill = false;
        s.set_policy(p);
        let u = Usage::default();
        let now = 1_000;
        assert!(matches!(
            s.submit(submit_by("a", "big", 6, 0, 60_000), &u, now),
            Outcome::Granted { .. }
        ));
        assert_eq!(
            s.submit(submit_by("a", "waiter", 4, 10_000, 60_000), &u, now),
            Outcome::Queued { position: 1 }
        );
        assert!(matches!(
            s.submit(submit_by("b", "short", 2, 0, 1_000), &u, now),
            Outcome::Denied(_)
        ));
    }

    #[test]
    fn fair_share_serves_the_requester_that_used_less_first() {
        for (policy, first) in [(QueuePolicy::Fifo, "a2"), (QueuePolicy::FairShare, "b1")] {
            let mut s = new_sched(false);
            let mut p = s.policy().clone();
            p.queue_policy = policy;
            s.set_policy(p);
            let u = Usage::default();
            let now = 1_000;
            // a has used the whole node for a minute; it then waits first.
            assert!(matches!(
                s.submit(submit_by("a", "a1", 8, 0, 60_000), &u, now),
                Outcome::Granted { .. }
            ));
            let later = now + 50_000;
            assert!(matches!(
                s.submit(submit_by("a", "a2", 8, 60_000, 60_000), &u, later),
                Outcome::Queued { .. }
            ));
            assert!(matches!(
                s.submit(submit_by("b", "b1", 8, 60_000, 60_000), &u, later + 1),
                Outcome::Queued { .. }
            ));
            s.release(&LeaseId("a1".into()), None, later + 2).unwrap();
            let ev = s.tick(later + 2);
            let got: Vec<&str> = ev.granted.iter().map(|l| l.lease_id.0.as_str()).collect();
            assert_eq!(got, [first], "{policy:?}");
        }
    }

    #[test]
    fn a_newcomer_never_overtakes_a_waiting_request_of_equal_priority() {
        let mut s = new_sched(true);
        let sub = |id: &str, cores: u32, wait: u64, lease_ms: u64| Submit {
            input: AllocateInput {
                lease_id: LeaseId(id.into()),
                request_id: id.into(),
                holder: "a".into(),
                req: req(cores, 0),
                task_type: String::new(),
                priority: Priority::Normal,
                lease_ms,
            },
            wait_ms: wait,
            until_ms: None,
            groups: Vec::new(),
            preempt: true,
            gpus_allowed: None,
        };
        let now = 1_000;
        assert!(matches!(
            s.submit(sub("big", 6, 0, 60_000), &Usage::default(), now),
            Outcome::Granted { .. }
        ));
        // 4 cores wanted, 2 free: waits.
        assert_eq!(
            s.submit(sub("waiter", 4, 10_000, 60_000), &Usage::default(), now),
            Outcome::Queued { position: 1 }
        );
        // 2 cores would fit, but they are owed to the waiter, due when
        // "big" ends in 60 s: a newcomer that would outlive that is refused.
        assert!(matches!(
            s.submit(sub("newcomer", 2, 0, 120_000), &Usage::default(), now),
            Outcome::Denied(_)
        ));
        // One that ends by then delays nobody: backfilled.
        assert!(matches!(
            s.submit(sub("short", 2, 0, 30_000), &Usage::default(), now),
            Outcome::Granted { .. }
        ));
        s.release(&LeaseId("short".into()), None, now).unwrap();
        s.release(&LeaseId("big".into()), None, now).unwrap();
        let ev = s.tick(now);
        assert_eq!(ev.granted.len(), 1);
        assert_eq!(ev.granted[0].lease_id, LeaseId("waiter".into()));
    }
}
