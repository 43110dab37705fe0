//! Scheduling depth on the node: the owner side of queueing, preemption,
//! quotas and advance reservations (decided by [`Scheduler`] in the core),
//! the notices an owner sends holders, and the requester side of queued
//! requests and reservations. Everything here is persisted: the owner's
//! queue, calendar and quotas (`sched_v1`), its policy (`sched_policy_v1`),
//! and the requester's tickets and reservations (`requester_v1`).

use serde::{Deserialize, Serialize};

use super::*;
use crate::core::calendar::{validate_event_name, Condition, Reservation, ReservationStatus};
use crate::core::contention::{self, ContentionReport};
use crate::core::groups::GroupId;
use crate::core::history::{HistoryKind, Outcome as HistoryOutcome, Role as HistoryRole};
use crate::core::quota::{Quota, Subject};
use crate::core::roles::Permission;
use crate::core::sched::{Events, Outcome, SchedSnapshot, Submit};
use crate::handle::{
    ms_to_utc, AllocationStatus, EventMet, EventPosted, QueueEntry, QuotaChange, QuotaEntry,
    ReservationInfo, ReservationRequest, Reservations, SchedPolicyChange,
};
use crate::model::{Priority, ResourceRequirements, Usage};
use crate::net::protocol::Notice;

/// The owner's queue, calendar (with conditions, pools and draws) and
/// quotas. Builds before conditional reservations wrote
/// [`legacy::META_SCHED_V1`], read once after an upgrade.
const META_SCHED: &str = "sched_v2";
/// The quota tree's links (child, parent), beside the scheduler state.
const META_QUOTA_TREE: &str = "quota_tree_v1";
const META_POLICY: &str = "sched_policy_v1";
const META_POLICY_CONFIG: &str = "sched_policy_config_v1";
/// The requester's tickets and reservations (was
/// [`legacy::META_REQUESTER_V1`]).
const META_REQUESTER: &str = "requester_v2";
/// Ended allocations kept for the API.
const MAX_ENDED: usize = 256;
/// Longest reservation window, ms.
const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// One of our requests waiting in an owner's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Ticket {
    pub owner: NodeId,
    pub owner_name: String,
    pub request_id: String,
    pub req: ResourceRequirements,
    pub priority: Priority,
    pub task_type: String,
    pub position: u32,
    pub queued_at_ms: u64,
    pub deadline_ms: u64,
    pub lease_ms: u64,
    /// Release this long after the grant (the request's duration).
    pub duration_ms: Option<u64>,
}

/// A reservation we made on an owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HeldReservation {
    pub owner: NodeId,
    pub owner_name: String,
    pub reservation: Reservation,
}

/// A reservation being placed: candidates asked one at a time.
pub(super) struct Reserving {
    pub attempt: Attempt,
    pub req: ReservationRequest,
    pub request_id: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub condition: Option<Condition>,
    pub shared_with: Option<GroupId>,
    pub reply: oneshot::Sender<Result<ReservationInfo, NodeError>>,
}

/// An event posted here, waiting for the owners told of it.
pub(super) struct Posting {
    pub waiting: usize,
    pub posted: EventPosted,
    pub reply: oneshot::Sender<Result<EventPosted, NodeError>>,
}

/// The requester's persisted state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct RequesterState {
    pub tickets: BTreeMap<LeaseId, Ticket>,
    pub reservations: BTreeMap<LeaseId, HeldReservation>,
}

/// Restore the owner's queue, calendar, quotas and policy, and the
/// requester's tickets and reservations. The leases must already be in the
/// scheduler's ledger.
pub(super) fn restore(
    store: &Store,
    sched: &mut Scheduler,
    from_config: &SchedPolicy,
    now: u64,
) -> Result<RequesterState, crate::store::StoreError> {
    // A policy stored by an older version (fewer fields) does not decode:
    // the config's policy then applies, as on a first start.
    let seen: Option<SchedPolicy> = store.meta(META_POLICY_CONFIG).unwrap_or(None);
    let stored: Option<SchedPolicy> = store.meta(META_POLICY).unwrap_or(None);
    match (seen, stored) {
        (Some(seen), Some(stored)) if &seen == from_config => sched.set_policy(stored),
        _ => store.apply(&policy_batch(from_config, from_config))?,
    }
    let snap = match store.meta::<SchedSnapshot>(META_SCHED)? {
        Some(snap) => Some(snap),
        None => store
            .meta::<legacy::SchedSnapshotV1>(legacy::META_SCHED_V1)?
            .map(SchedSnapshot::from),
    };
    if let Some(snap) = snap {
        sched.restore(snap, now);
    }
    if let Ok(Some(links)) = store.meta::<Vec<(Subject, Subject)>>(META_QUOTA_TREE) {
        for (child, parent) in sched.restore_quota_parents(links) {
            warn!(%child, %parent, "a stored quota-tree link no longer holds; dropped");
        }
    }
    match store.meta(META_REQUESTER)? {
        Some(st) => Ok(st),
        None => Ok(store
            .meta::<legacy::RequesterStateV1>(legacy::META_REQUESTER_V1)?
            .map(RequesterState::from)
            .unwrap_or_default()),
    }
}

/// The formats of the scheduler's and the requester's state written by
/// builds before conditional and pooled reservations, read once after an
/// upgrade (the next write uses the new keys). postcard is not
/// self-describing, so the old shapes are kept exactly as they were.
mod legacy {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{HeldReservation, RequesterState, Ticket};
    use crate::core::calendar::{Reservation, ReservationStatus};
    use crate::core::queue::Waiting;
    use crate::core::sched::{SchedSnapshot, WaitMeta};
    use crate::model::{GpuSlot, LeaseId, NodeId, Priority, ResourceRequirements};

    pub(super) const META_SCHED_V1: &str = "sched_v1";
    pub(super) const META_REQUESTER_V1: &str = "requester_v1";

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub(super) struct ReservationV1 {
        pub id: LeaseId,
        pub holder: NodeId,
        pub req: ResourceRequirements,
        pub priority: Priority,
        pub task_type: String,
        pub start_ms: u64,
        pub end_ms: u64,
        pub gpus: Vec<GpuSlot>,
        /// The old five statuses keep their places in the enum.
        pub status: ReservationStatus,
        pub created_at_ms: u64,
    }

    impl From<ReservationV1> for Reservation {
        fn from(r: ReservationV1) -> Self {
            Reservation {
                id: r.id,
                holder: r.holder,
                req: r.req,
                priority: r.priority,
                task_type: r.task_type,
                start_ms: r.start_ms,
                end_ms: r.end_ms,
                gpus: r.gpus,
                status: r.status,
                created_at_ms: r.created_at_ms,
                condition: None,
                condition_met_ms: None,
                shared_with: None,
            }
        }
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub(super) struct SchedSnapshotV1 {
        pub waiting: Vec<(Waiting, WaitMeta)>,
        pub reservations: Vec<ReservationV1>,
        pub quotas: crate::core::quota::QuotaSnapshot,
        pub until: Vec<(LeaseId, u64)>,
    }

    impl From<SchedSnapshotV1> for SchedSnapshot {
        fn from(s: SchedSnapshotV1) -> Self {
            SchedSnapshot {
                waiting: s.waiting,
                reservations: s.reservations.into_iter().map(Reservation::from).collect(),
                quotas: s.quotas,
                until: s.until,
                draws: Vec::new(),
                fair: Default::default(),
            }
        }
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub(super) struct HeldReservationV1 {
        pub owner: NodeId,
        pub owner_name: String,
        pub reservation: ReservationV1,
    }

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    pub(super) struct RequesterStateV1 {
        pub tickets: BTreeMap<LeaseId, Ticket>,
        pub reservations: BTreeMap<LeaseId, HeldReservationV1>,
    }

    impl From<RequesterStateV1> for RequesterState {
        fn from(s: RequesterStateV1) -> Self {
            RequesterState {
                tickets: s.tickets,
                reservations: s
                    .reservations
                    .into_iter()
                    .map(|(id, h)| {
                        (
                            id,
                            HeldReservation {
                                owner: h.owner,
                                owner_name: h.owner_name,
                                reservation: h.reservation.into(),
                            },
                        )
                    })
                    .collect(),
            }
        }
    }
}

fn policy_batch(policy: &SchedPolicy, from_config: &SchedPolicy) -> WriteBatch {
    let enc = |p: &SchedPolicy| postcard::to_stdvec(p).unwrap_or_default();
    WriteBatch {
        put_meta: vec![
            (META_POLICY.to_owned(), enc(policy)),
            (META_POLICY_CONFIG.to_owned(), enc(from_config)),
        ],
        ..Default::default()
    }
}

/// An allocation request as the owner reads it off the wire.
pub(super) struct AllocateArgs {
    pub request_id: String,
    pub req: ResourceRequirements,
    pub task_type: String,
    pub priority: Priority,
    pub lease_ms: u64,
    pub wait_ms: u64,
    pub duration_ms: Option<u64>,
    pub preempt: bool,
    pub constraints: crate::core::constraints::Constraints,
}

/// A reservation request as the owner reads it off the wire.
pub(super) struct ReserveArgs {
    pub req: ResourceRequirements,
    pub task_type: String,
    pub priority: Priority,
    pub start_ms: u64,
    pub end_ms: u64,
    pub condition: Option<Condition>,
    pub shared_with: Option<GroupId>,
}

/// A draw from a pooled reservation as the owner reads it off the wire.
pub(super) struct DrawArgs {
    pub reservation: LeaseId,
    pub request_id: String,
    pub req: ResourceRequirements,
    pub task_type: String,
    pub lease_ms: u64,
    pub duration_ms: Option<u64>,
}

/// What the owner answers at once.
pub(super) enum OwnerAnswer {
    /// Granted: answer after the grant is durable (group commit).
    Granted(Lease),
    /// Anything else: answer now.
    Now(AllocResponse),
}

impl EventLoop {
    /// The groups `holder` is a member of, as this node sees them.
    fn groups_of(&self, holder: &NodeId) -> Vec<GroupId> {
        self.state
            .groups
            .groups()
            .into_iter()
            .filter(|g| g.members.contains(holder))
            .map(|g| g.id)
            .collect()
    }

    /// Tell the scheduler who is in which group (for group quotas). Called
    /// when the group state changes, not on every request.
    pub(super) fn sync_group_members(&mut self) {
        let members = self
            .state
            .groups
            .groups()
            .into_iter()
            .map(|g| (g.id, g.members))
            .collect();
        self.sched.set_group_members(members);
    }

    /// What `holder` holds on every other owner, as last announced, if a
    /// swarm-wide cap applies to it (else nothing is summed: this runs on
    /// every request).
    fn swarm_usage_if_capped(&self, holder: &NodeId) -> Usage {
        if self.sched.quotas().swarm_limits_for(holder).is_none() {
            return Usage::default();
        }
        self.swarm_usage_of(holder)
    }

    /// What `holder` holds on every other owner, as they last announced.
    fn swarm_usage_of(&self, holder: &NodeId) -> Usage {
        let mut u = Usage::default();
        for p in self.view.peers() {
            if let Some(h) = p.ann.usage.iter().find(|h| &h.holder == holder) {
                u.add(&h.usage);
            }
        }
        u
    }

    /// Owner side: decide an allocation request from `holder` (a peer, or
    /// this node).
    pub(super) fn decide_allocate(&mut self, holder: NodeId, a: AllocateArgs) -> OwnerAnswer {
        let now = now_ms();
        // The owner's own view of itself is the truth for constraints.
        if !a.constraints.is_empty() {
            if let Err(why) =
                crate::core::constraints::check(&a.constraints, &a.req, self.view.local())
            {
                let answer = AllocResponse::Denied(Denial::new(
                    DenyReason::Unsatisfiable,
                    format!(
                        "{} does not meet the request's constraints: {why}",
                        self.cfg.name
                    ),
                ));
                self.record_owner_answer(&holder, &a.req, a.priority, &answer);
                return OwnerAnswer::Now(answer);
            }
        }
        let gpus_allowed = (a.constraints.constrains_gpus() && a.req.gpus_wanted() > 0)
            .then(|| {
                crate::core::constraints::usable_gpus(&a.constraints, &self.cfg.gpus)
                    .into_iter()
                    .collect::<std::collections::BTreeSet<u32>>()
            })
            .filter(|allowed| {
                self.sched
                    .ledger()
                    .capacity()
                    .gpus
                    .iter()
                    .any(|g| !allowed.contains(&g.index))
            });
        let submit = Submit {
            input: AllocateInput {
                lease_id: LeaseId(uuid::Uuid::new_v4().to_string()),
                request_id: a.request_id,
                holder: holder.clone(),
                req: a.req,
                task_type: a.task_type,
                priority: a.priority,
                lease_ms: a.lease_ms,
            },
            wait_ms: a.wait_ms,
            until_ms: a.duration_ms.map(|d| now.saturating_add(d)),
            groups: self.groups_of(&holder),
            preempt: a.preempt,
            gpus_allowed,
        };
        let swarm = self.swarm_usage_if_capped(&holder);
        let req = submit.input.req.clone();
        let priority = submit.input.priority;
        let ticket = submit.input.lease_id.clone();
        let outcome = self.sched.submit(submit, &swarm, now);
        let answer = match outcome {
            Outcome::Granted { lease, preempted } => {
                self.on_preempted(preempted);
                OwnerAnswer::Granted(lease)
            }
            Outcome::Queued { position } => {
                // Where it stands in the order the queue policy grants in.
                let position = self.sched.queue_position(&ticket).unwrap_or(position);
                info!(%holder, ticket = %ticket, position, "request queued");
                self.note_queued(&ticket, now);
                self.persist_sched();
                OwnerAnswer::Now(AllocResponse::Queued {
                    ticket,
                    position: position as u32,
                })
            }
            Outcome::Denied(mut d) => {
                self.note_refusal(&req, &d, now);
                if d.reason == DenyReason::InsufficientCapacity {
                    d.hints = self.hints_for(&req, &holder);
                }
                OwnerAnswer::Now(AllocResponse::Denied(d))
            }
        };
        if let OwnerAnswer::Now(resp) = &answer {
            self.record_owner_answer(&holder, &req, priority, resp);
        }
        self.sched_tick(now);
        answer
    }

    /// Peers that, by our view, could serve `req` now: the "redistribute"
    /// answer to contention.
    fn hints_for(&self, req: &ResourceRequirements, holder: &NodeId) -> Vec<NodeId> {
        let now = now_ms();
        let (candidates, _) = self.view.candidates(req, now);
        candidates
            .into_iter()
            .filter(|c| !c.is_local && &c.node_id != holder)
            .map(|c| c.node_id)
            .take(3)
            .collect()
    }

    /// Leases we ended for higher priority: forget them, tell the holders.
    fn on_preempted(&mut self, preempted: Vec<Lease>) {
        if preempted.is_empty() {
            return;
        }
        self.note_preempted(preempted.len());
        self.forget_granted(&preempted);
        for l in preempted {
            info!(lease = %l.lease_id, holder = %l.holder, priority = %l.priority, "lease preempted");
            self.record_preempted(&l, "higher_priority");
            let denial = Denial::new(
                DenyReason::Preempted,
                format!(
                    "lease {} on {} was preempted for a higher-priority request",
                    l.lease_id, self.cfg.name
                ),
            );
            self.notify(
                &l.holder,
                Notice::Ended {
                    lease_id: l.lease_id.clone(),
                    denial,
                },
            );
        }
    }

    /// Run the scheduler's timers and carry out what happened.
    pub(super) fn sched_tick(&mut self, now: u64) {
        let mut ev: Events = self.sched.tick(now);
        if ev.is_empty() {
            return;
        }
        self.recheck_reservation_roles(&mut ev);
        self.note_sched_events(&ev, now);
        for l in &ev.expired {
            info!(lease = %l.lease_id, holder = %l.holder, "lease expired; resources taken back");
            self.record_expired(l);
        }
        self.forget_granted(&ev.expired);
        self.on_preempted(ev.preempted);
        // Grants from the queue and reservation starts: durable first,
        // then the holders hear of them.
        let new: Vec<Lease> = ev
            .granted
            .iter()
            .chain(ev.reservations_started.iter())
            .cloned()
            .collect();
        if !new.is_empty() {
            let mut batch = std::mem::take(&mut self.deferred);
            batch.put_granted.extend(new.iter().cloned());
            batch.history.extend(
                ev.granted
                    .iter()
                    .map(|l| self.granted_record(l, " from the queue")),
            );
            batch.history.extend(
                ev.reservations_started
                    .iter()
                    .map(|l| self.started_record(l)),
            );
            if let Err(e) = self.store.apply(&batch) {
                // Keep them (in memory they are granted) and retry the
                // write; holders are told now, as the lease exists.
                error!(error = %e, "cannot write leases granted from the queue; will retry");
                self.deferred = batch;
            }
            self.schedule_announce();
        }
        for l in ev.granted {
            log_grant(&l);
            let holder = l.holder.clone();
            self.notify(&holder, Notice::Granted(l));
        }
        for l in ev.reservations_started {
            info!(reservation = %l.lease_id, holder = %l.holder, "reservation started");
            let holder = l.holder.clone();
            // A conditional one: the holder also learns when its condition
            // held (it may have been another reservation's start here).
            let conditional = self
                .sched
                .calendar()
                .get(&l.lease_id)
                .filter(|r| r.condition.is_some())
                .cloned();
            self.notify(&holder, Notice::ReservationStarted(l));
            if let Some(r) = conditional {
                self.notify(&holder, Notice::Reservation(r));
            }
        }
        for r in &ev.reservations_ended {
            info!(reservation = %r.id, status = %r.status, "reservation ended");
            self.record_owner_reservation(HistoryOutcome::Ended, r);
            self.notify(&r.holder, Notice::Reservation(r.clone()));
        }
        for r in ev.pools_opened {
            info!(reservation = %r.id, holder = %r.holder, "pooled reservation open for draws");
            self.record_owner_reservation(HistoryOutcome::Started, &r);
            let holder = r.holder.clone();
            self.notify(&holder, Notice::Reservation(r));
        }
        for l in ev.draws_ended {
            self.record_expired(&l);
            let denial = Denial::new(
                DenyReason::UnknownLease,
                format!(
                    "lease {} ended with the pooled reservation it was drawn from",
                    l.lease_id
                ),
            );
            self.forget_granted(std::slice::from_ref(&l));
            let holder = l.holder.clone();
            self.notify(
                &holder,
                Notice::Ended {
                    lease_id: l.lease_id,
                    denial,
                },
            );
        }
        for w in ev.timed_out {
            self.record_waiting(&w, HistoryOutcome::TimedOut, None);
            let holder = w.input.holder.clone();
            let denial = Denial::new(
                DenyReason::QueueTimeout,
                format!("waited on {} until the wait ran out", self.cfg.name),
            );
            self.note_refusal(&w.input.req, &denial, now);
            self.notify(
                &holder,
                Notice::Ended {
                    lease_id: w.input.lease_id,
                    denial,
                },
            );
        }
        for (w, denial) in ev.failed {
            self.record_waiting(&w, HistoryOutcome::Denied, Some(&denial));
            let holder = w.input.holder.clone();
            self.notify(
                &holder,
                Notice::Ended {
                    lease_id: w.input.lease_id,
                    denial,
                },
            );
        }
        self.persist_sched();
    }

    /// A reservation starting (or a pool opening) for a holder whose role
    /// no longer has `reserve` (changed since the booking) is cancelled
    /// instead: roles are checked when the resources are handed over, not
    /// only when they were promised.
    fn recheck_reservation_roles(&mut self, ev: &mut Events) {
        let refused: Vec<(LeaseId, NodeId, Denial)> = ev
            .reservations_started
            .iter()
            .map(|l| (l.lease_id.clone(), l.holder.clone()))
            .chain(
                ev.pools_opened
                    .iter()
                    .map(|r| (r.id.clone(), r.holder.clone())),
            )
            .filter_map(|(id, holder)| {
                self.permit(&holder, Permission::Reserve)
                    .err()
                    .map(|d| (id, holder, d))
            })
            .collect();
        for (id, holder, denial) in refused {
            warn!(reservation = %id, %holder, reason = %denial.message, "reservation cancelled at its start: the holder's role no longer allows reserve");
            ev.reservations_started.retain(|l| l.lease_id != id);
            ev.pools_opened.retain(|r| r.id != id);
            if let Ok(r) = self.sched.cancel_reservation(&id, None) {
                self.record_owner_reservation(HistoryOutcome::Cancelled, &r);
                self.notify(&holder, Notice::Reservation(r));
            }
        }
    }

    /// Write the owner's queue, calendar and quotas (with the next batch).
    pub(super) fn persist_sched(&mut self) {
        match postcard::to_stdvec(&self.sched.snapshot()) {
            Ok(bytes) => self.deferred.put_meta.push((META_SCHED.to_owned(), bytes)),
            Err(e) => error!(error = %e, "cannot encode the scheduler state"),
        }
        match postcard::to_stdvec(&self.sched.quotas().parents()) {
            Ok(bytes) => self
                .deferred
                .put_meta
                .push((META_QUOTA_TREE.to_owned(), bytes)),
            Err(e) => error!(error = %e, "cannot encode the quota tree"),
        }
    }

    /// Write the owner's state now, durably (before answering).
    fn persist_sched_now(&mut self) -> Result<(), NodeError> {
        self.persist_sched();
        let batch = std::mem::take(&mut self.deferred);
        self.store.apply(&batch).map_err(|e| {
            self.deferred = batch;
            NodeError::Storage(e.to_string())
        })
    }

    /// Write the requester's tickets and reservations (with the next batch).
    pub(super) fn persist_requester(&mut self) {
        let st = RequesterState {
            tickets: self.tickets.clone(),
            reservations: self.held_reservations.clone(),
        };
        match postcard::to_stdvec(&st) {
            Ok(bytes) => self
                .deferred
                .put_meta
                .push((META_REQUESTER.to_owned(), bytes)),
            Err(e) => error!(error = %e, "cannot encode the requester state"),
        }
    }

    /// Tell a holder about one of its leases or tickets.
    fn notify(&mut self, holder: &NodeId, notice: Notice) {
        if holder == &self.local_id {
            let me = self.local_id.clone();
            self.on_notice(&me, notice);
            return;
        }
        let Some(peer) = peer_id_of(holder) else {
            return;
        };
        let rid = self
            .swarm
            .behaviour_mut()
            .alloc
            .send_request(&peer, Frame::Valid(AllocRequest::Notice(notice)));
        self.pending.insert(rid, Pending::Notice);
    }

    /// Holder side: an owner tells us about one of our leases or tickets.
    /// Only the owner of that lease or ticket is listened to.
    pub(super) fn on_notice(&mut self, from: &NodeId, notice: Notice) {
        match notice {
            Notice::Granted(lease) => {
                let Some(t) = self.tickets.get(&lease.lease_id) else {
                    debug!(lease = %lease.lease_id, "grant for a ticket we do not have");
                    return;
                };
                if &t.owner != from || lease.holder != self.local_id || &lease.node_id != from {
                    warn!(%from, lease = %lease.lease_id, "grant notice from a node that does not own the ticket; ignored");
                    return;
                }
                let t = self.tickets.remove(&lease.lease_id).expect("checked above");
                info!(lease = %lease.lease_id, owner = %t.owner_name, "queued request granted");
                self.record_lease(
                    HistoryKind::Grant,
                    HistoryRole::Requester,
                    HistoryOutcome::Granted,
                    &lease,
                    None,
                    &format!("queued request granted by {}", t.owner_name),
                );
                let release_at_ms = t.duration_ms.map(|d| now_ms().saturating_add(d));
                self.hold(lease, t.owner_name, release_at_ms);
                self.persist_requester();
            }
            Notice::ReservationStarted(lease) => {
                let Some(r) = self.held_reservations.get(&lease.lease_id) else {
                    return;
                };
                if &r.owner != from || lease.holder != self.local_id {
                    return;
                }
                let owner_name = r.owner_name.clone();
                if let Some(r) = self.held_reservations.get_mut(&lease.lease_id) {
                    r.reservation.status = ReservationStatus::Active;
                }
                info!(reservation = %lease.lease_id, owner = %owner_name, "reservation active");
                self.record_lease(
                    HistoryKind::Reservation,
                    HistoryRole::Requester,
                    HistoryOutcome::Started,
                    &lease,
                    None,
                    &format!("reservation on {owner_name} began"),
                );
                self.hold(lease, owner_name, None);
                self.persist_requester();
            }
            Notice::Reservation(r) => {
                let Some(h) = self.held_reservations.get_mut(&r.id) else {
                    return;
                };
                if &h.owner != from || r.holder != self.local_id {
                    return;
                }
                info!(reservation = %r.id, status = %r.status, "reservation changed on its owner");
                h.reservation.status = r.status;
                h.reservation.condition_met_ms = r.condition_met_ms;
                self.persist_requester();
            }
            Notice::Ended { lease_id, denial } => {
                if let Some(h) = self.held.get(&lease_id) {
                    if &h.rec.lease.node_id != from {
                        return;
                    }
                    let mut a = Allocation::from_lease(
                        &h.rec.lease,
                        &h.rec.owner_name,
                        h.rec.release_at_ms,
                    );
                    a.status = match denial.reason {
                        DenyReason::Preempted => AllocationStatus::Preempted,
                        _ => AllocationStatus::Ended,
                    };
                    a.ended_reason = Some(denial.to_string());
                    warn!(lease = %lease_id, reason = %denial.reason, "the owner ended our lease");
                    self.record_ended_by_owner(&lease_id, &denial);
                    self.drop_held(&lease_id);
                    self.remember_ended(a);
                } else if let Some(t) = self.tickets.get(&lease_id) {
                    if &t.owner != from {
                        return;
                    }
                    let t = self.tickets.remove(&lease_id).expect("checked above");
                    let mut a = ticket_allocation(&lease_id, &t, &self.local_id);
                    a.status = match denial.reason {
                        DenyReason::QueueTimeout => AllocationStatus::TimedOut,
                        _ => AllocationStatus::Ended,
                    };
                    a.queue_position = None;
                    a.ended_reason = Some(denial.to_string());
                    info!(ticket = %lease_id, reason = %denial.reason, "queued request ended");
                    self.record_ticket_denied(&lease_id, &t, &denial);
                    self.remember_ended(a);
                    self.persist_requester();
                }
            }
        }
    }

    pub(super) fn remember_ended_allocation(&mut self, a: Allocation) {
        self.remember_ended(a);
    }

    fn remember_ended(&mut self, a: Allocation) {
        self.ended.retain(|e| e.allocation_id != a.allocation_id);
        self.ended.push_front(a);
        self.ended.truncate(MAX_ENDED);
    }

    /// Start holding (renewing) a lease granted to us.
    pub(super) fn hold(&mut self, lease: Lease, owner_name: String, release_at_ms: Option<u64>) {
        let rec = HeldRecord {
            lease: lease.clone(),
            owner_name,
            release_at_ms,
        };
        self.deferred.put_held.push(rec.clone());
        let renew_at_ms = renew_time(&lease);
        self.held.insert(
            lease.lease_id.clone(),
            Held {
                rec,
                renew_at_ms,
                renewing: false,
            },
        );
    }

    /// Requester side: the owner queued our request.
    pub(super) fn on_queued(&mut self, p: Placement, node: NodeId, ticket: LeaseId, position: u32) {
        let now = now_ms();
        let t = Ticket {
            owner_name: self.name_of(&node),
            owner: node,
            request_id: p.request_id.clone(),
            req: p.req.required_resources.clone(),
            priority: p.req.priority,
            task_type: p.req.task_type.clone(),
            position,
            queued_at_ms: now,
            deadline_ms: now.saturating_add(p.wait_ms),
            lease_ms: p.lease_ms,
            duration_ms: p.release_at_ms.map(|at| at.saturating_sub(p.created_ms)),
        };
        let mut a = ticket_allocation(&ticket, &t, &self.local_id);
        a.refusals = self.refusals(p.attempt);
        info!(ticket = %ticket, owner = %t.owner_name, position, "request queued at the owner");
        self.record_queued_at(&t.owner, &ticket, &t);
        self.tickets.insert(ticket, t);
        self.persist_requester();
        self.note_allocation("queued", metrics::since_ms(p.created_ms));
        let _ = p.reply.send(Ok(a));
    }

    /// Our waiting tickets and recently ended allocations, for the API.
    pub(super) fn ticket_allocations(&self) -> Vec<Allocation> {
        self.tickets
            .iter()
            .map(|(id, t)| ticket_allocation(id, t, &self.local_id))
            .chain(self.ended.iter().cloned())
            .collect()
    }

    /// Drop tickets whose wait is over (the owner says so too, unless it
    /// is gone).
    pub(super) fn prune_tickets(&mut self, now: u64) {
        let gone: Vec<LeaseId> = self
            .tickets
            .iter()
            .filter(|(_, t)| t.deadline_ms.saturating_add(5_000) <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(t) = self.tickets.remove(&id) {
                let mut a = ticket_allocation(&id, &t, &self.local_id);
                a.status = AllocationStatus::TimedOut;
                a.queue_position = None;
                a.ended_reason = Some("the wait ran out".into());
                self.record_ticket_end(
                    &id,
                    &t,
                    HistoryOutcome::TimedOut,
                    Some("queue_timeout"),
                    "the wait ran out",
                );
                self.remember_ended(a);
            }
        }
        let before = self.held_reservations.len();
        self.held_reservations
            .retain(|_, r| r.reservation.end_ms.saturating_add(600_000) > now);
        if before != self.held_reservations.len() {
            self.persist_requester();
        }
    }

    /// Stop waiting: tell the owner, forget the ticket.
    pub(super) fn cancel_ticket(&mut self, id: &LeaseId) -> Option<NodeId> {
        let t = self.tickets.remove(id)?;
        self.record_ticket_end(
            id,
            &t,
            HistoryOutcome::Cancelled,
            None,
            "withdrawn by this node",
        );
        self.persist_requester();
        self.release_on(&t.owner, id, None);
        Some(t.owner)
    }

    /// Owner side: a peer (or we) asks to release a lease, a ticket or a
    /// reservation. `holder` None is the local admin.
    pub(super) fn owner_release(
        &mut self,
        lease_id: &LeaseId,
        holder: Option<&NodeId>,
    ) -> Result<bool, Denial> {
        let now = now_ms();
        let existed = match self.sched.release(lease_id, holder, now)? {
            Some(lease) => {
                self.note_release();
                self.record_owner_release(&lease, holder);
                // The lease of an active reservation: the reservation ended
                // with it, and its holder keeps the new status.
                if let Some(r) = self.sched.calendar().get(lease_id).cloned() {
                    if r.holder == lease.holder && !r.status.is_live() {
                        self.record_owner_reservation(HistoryOutcome::Ended, &r);
                        let holder = r.holder.clone();
                        self.notify(&holder, Notice::Reservation(r));
                    }
                }
                self.forget_granted(&[lease]);
                true
            }
            None => {
                if let Some(w) = self.sched.cancel_wait(lease_id, holder) {
                    self.record_waiting(&w, HistoryOutcome::Cancelled, None);
                    true
                } else if let Ok(r) = self.sched.cancel_reservation(lease_id, holder) {
                    self.record_owner_reservation(HistoryOutcome::Cancelled, &r);
                    true
                } else {
                    false
                }
            }
        };
        if existed {
            self.persist_sched();
        }
        self.sched_tick(now);
        Ok(existed)
    }

    /// Owner side: book a reservation for `holder`.
    pub(super) fn decide_reserve(&mut self, holder: NodeId, a: ReserveArgs) -> AllocResponse {
        let now = now_ms();
        let ReserveArgs {
            req,
            task_type,
            priority,
            start_ms,
            end_ms,
            condition,
            shared_with,
        } = a;
        match &condition {
            Some(Condition::Event(name)) => {
                if let Err(why) = validate_event_name(name) {
                    return AllocResponse::Denied(Denial::new(DenyReason::BadRequest, why));
                }
            }
            Some(Condition::Reservation(id)) if id.0.len() > 128 => {
                return AllocResponse::Denied(Denial::new(
                    DenyReason::BadRequest,
                    "a reservation id is at most 128 bytes",
                ));
            }
            _ => {}
        }
        if shared_with.as_ref().is_some_and(|g| g.0.len() > 128) {
            return AllocResponse::Denied(Denial::new(
                DenyReason::BadRequest,
                "a group id is at most 128 bytes",
            ));
        }
        if let Some(g) = &shared_with {
            if !self.groups_of(&holder).contains(g) {
                return AllocResponse::Denied(Denial::new(
                    DenyReason::Forbidden,
                    format!(
                        "{} can share a reservation only with a group it is a member of, and {} \
                         does not see it in group {}",
                        holder, self.cfg.name, g.0
                    ),
                ));
            }
        }
        if end_ms > start_ms && end_ms - start_ms > MAX_WINDOW_MS {
            return AllocResponse::Denied(Denial::new(
                DenyReason::BadRequest,
                "a reservation window is at most 7 days",
            ));
        }
        // A start a moment ago (the request's travel, small clock skew)
        // means now.
        let start_ms = if start_ms < now && now - start_ms <= 5_000 {
            now
        } else {
            start_ms
        };
        let r = Reservation {
            id: LeaseId(uuid::Uuid::new_v4().to_string()),
            holder,
            req,
            priority,
            task_type,
            start_ms,
            end_ms,
            gpus: Vec::new(),
            status: ReservationStatus::Confirmed,
            created_at_ms: now,
            condition,
            condition_met_ms: None,
            shared_with,
        };
        let groups = self.groups_of(&r.holder);
        let swarm = self.swarm_usage_if_capped(&r.holder);
        let (who, asked) = history::asked_reservation(&r);
        match self.sched.reserve(r, &groups, &swarm, now) {
            Ok(r) => match self.persist_sched_now() {
                Ok(()) => {
                    info!(reservation = %r.id, holder = %r.holder, start_ms, end_ms, "reservation booked");
                    self.record_owner_reservation(HistoryOutcome::Booked, &r);
                    AllocResponse::Reserved(r)
                }
                Err(e) => {
                    let _ = self.sched.cancel_reservation(&r.id, None);
                    AllocResponse::Denied(Denial::new(DenyReason::StorageError, e.to_string()))
                }
            },
            Err(d) => {
                self.record_refusal(&who, asked, &d);
                AllocResponse::Denied(d)
            }
        }
    }

    /// Owner side: draw a lease from a pooled reservation for `holder`.
    pub(super) fn decide_draw(&mut self, holder: NodeId, a: DrawArgs) -> OwnerAnswer {
        let now = now_ms();
        let groups = self.groups_of(&holder);
        let input = AllocateInput {
            lease_id: LeaseId(uuid::Uuid::new_v4().to_string()),
            request_id: a.request_id,
            holder: holder.clone(),
            req: a.req,
            task_type: a.task_type,
            priority: Priority::default(),
            lease_ms: a.lease_ms,
        };
        let req = input.req.clone();
        let until = a.duration_ms.map(|d| now.saturating_add(d));
        match self.sched.draw(&a.reservation, input, &groups, until, now) {
            Ok(lease) => {
                info!(%holder, lease = %lease.lease_id, reservation = %a.reservation, "lease drawn from a pooled reservation");
                self.persist_sched();
                OwnerAnswer::Granted(lease)
            }
            Err(d) => {
                let answer = AllocResponse::Denied(d);
                self.record_owner_answer(&holder, &req, Priority::default(), &answer);
                OwnerAnswer::Now(answer)
            }
        }
    }

    /// Owner side: `from` (a peer, or `None` for this node's admin) posts
    /// the event `name`. Returns the reservations whose condition it met.
    pub(super) fn owner_post_event(&mut self, name: &str, from: Option<&NodeId>) -> Vec<LeaseId> {
        let now = now_ms();
        let met = self.sched.post_event(name, from, now);
        if met.is_empty() {
            return met;
        }
        for id in &met {
            if let Some(r) = self.sched.calendar().get(id).cloned() {
                info!(reservation = %id, event = name, "reservation's condition met");
                self.record_owner_reservation(HistoryOutcome::Changed, &r);
            }
        }
        self.persist_sched();
        self.sched_tick(now);
        self.flush_deferred();
        met
    }

    /// Post an event from this node's API: for the reservations held here
    /// (as their owner's admin), and for ours on other owners.
    pub(super) fn on_post_event(
        &mut self,
        name: String,
        reply: oneshot::Sender<Result<EventPosted, NodeError>>,
    ) {
        if let Err(why) = validate_event_name(&name) {
            let _ = reply.send(Err(NodeError::BadRequest(why)));
            return;
        }
        let me = self.local_id.clone();
        let met_here = self.owner_post_event(&name, None);
        // Our own reservations on this node: our copy learns it at once.
        let now = now_ms();
        for id in &met_here {
            if let Some(h) = self.held_reservations.get_mut(id) {
                if h.owner == me && h.reservation.condition_met_ms.is_none() {
                    h.reservation.condition_met_ms = Some(now);
                }
            }
        }
        let mut posted = EventPosted {
            name: name.clone(),
            met: met_here
                .into_iter()
                .map(|id| EventMet {
                    reservation_id: id.0,
                    node_id: me.clone(),
                    node_name: self.cfg.name.clone(),
                })
                .collect(),
            errors: Vec::new(),
        };
        // Our reservations elsewhere that wait on it, by owner.
        let owners: std::collections::BTreeSet<NodeId> = self
            .held_reservations
            .values()
            .filter(|h| {
                h.owner != me
                    && h.reservation.status.is_live()
                    && !h.reservation.condition_holds()
                    && matches!(&h.reservation.condition, Some(Condition::Event(n)) if *n == name)
            })
            .map(|h| h.owner.clone())
            .collect();
        let id = self.next_placement;
        self.next_placement += 1;
        let mut waiting = 0;
        for owner in owners {
            let Some(peer) = peer_id_of(&owner) else {
                continue;
            };
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::PostEvent { name: name.clone() }),
            );
            self.pending.insert(
                rid,
                Pending::PostEvent {
                    post: id,
                    node: owner,
                },
            );
            waiting += 1;
        }
        if waiting == 0 {
            let _ = reply.send(Ok(posted));
            return;
        }
        posted
            .met
            .sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
        self.posting.insert(
            id,
            Posting {
                waiting,
                posted,
                reply,
            },
        );
    }

    /// An owner answered an event we posted.
    pub(super) fn on_post_event_response(
        &mut self,
        id: u64,
        node: NodeId,
        result: Result<AllocResponse, String>,
    ) {
        let Some(mut p) = self.posting.remove(&id) else {
            return;
        };
        let node_name = self.name_of(&node);
        match result {
            Ok(AllocResponse::EventPosted { met }) => {
                let now = now_ms();
                for rid in met {
                    if let Some(h) = self.held_reservations.get_mut(&rid) {
                        if h.owner == node {
                            h.reservation.condition_met_ms = Some(now);
                            p.posted.met.push(EventMet {
                                reservation_id: rid.0,
                                node_id: node.clone(),
                                node_name: node_name.clone(),
                            });
                        }
                    }
                }
                self.persist_requester();
            }
            Ok(AllocResponse::Denied(d)) => p.posted.errors.push(format!("{node_name}: {d}")),
            Ok(other) => p
                .posted
                .errors
                .push(format!("{node_name}: unexpected answer {other:?}")),
            Err(e) => p.posted.errors.push(format!("{node_name}: {e}")),
        }
        p.waiting -= 1;
        if p.waiting == 0 {
            let _ = p.reply.send(Ok(p.posted));
        } else {
            self.posting.insert(id, p);
        }
    }

    /// Requester side: place a reservation on the first candidate that
    /// books it.
    pub(super) fn on_reserve(
        &mut self,
        req: ReservationRequest,
        reply: oneshot::Sender<Result<ReservationInfo, NodeError>>,
    ) {
        let now = now_ms();
        let start_ms = match (req.start, req.start_in_secs) {
            (Some(_), Some(_)) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "give start or start_in_secs, not both".into(),
                )));
                return;
            }
            (Some(t), None) => t.timestamp_millis().max(0) as u64,
            (None, Some(s)) => now.saturating_add(s.saturating_mul(1000)),
            (None, None) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "a reservation needs start (RFC 3339) or start_in_secs".into(),
                )));
                return;
            }
        };
        if start_ms + 1_000 < now {
            let _ = reply.send(Err(NodeError::BadRequest(format!(
                "the reservation would start at {}, which is in the past",
                ms_to_utc(start_ms)
            ))));
            return;
        }
        if req.duration_secs == 0 {
            let _ = reply.send(Err(NodeError::BadRequest(
                "duration_secs must be > 0: a window has a positive length".into(),
            )));
            return;
        }
        if req.duration_secs > MAX_WINDOW_MS / 1000 {
            let _ = reply.send(Err(NodeError::BadRequest(
                "a reservation window is at most 7 days".into(),
            )));
            return;
        }
        if req.required_resources.is_empty() {
            let _ = reply.send(Err(NodeError::BadRequest(
                "required_resources asks for nothing".into(),
            )));
            return;
        }
        let end_ms = start_ms.saturating_add(req.duration_secs * 1000);
        let (condition, owner) = match self.reservation_condition(&req) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let shared_with = match &req.share_with {
            None => None,
            Some(g) => match self.state.groups.resolve(g) {
                Err(e) => {
                    let _ = reply.send(Err(NodeError::NotFound(e.to_string())));
                    return;
                }
                Ok(g) if !self.groups_of(&self.local_id).contains(&g.id) => {
                    let _ = reply.send(Err(NodeError::BadRequest(format!(
                        "this node is not a member of group {}: a reservation can be shared only \
                         with a group of one's own",
                        g.name
                    ))));
                    return;
                }
                Ok(g) => Some(g.id),
            },
        };
        // Rank by total capacity: what is free now says little about a
        // window in the future. The same owners as a request that may wait.
        let as_request = AllocationRequest {
            required_resources: req.required_resources.clone(),
            constraints: req.constraints.clone(),
            node_id: owner.map(|o| o.0).or_else(|| req.node_id.clone()),
            priority: req.priority,
            ..Default::default()
        };
        let candidates: Vec<NodeId> = self
            .eligible_by_total(&as_request)
            .into_iter()
            .map(|a| a.node_id.clone())
            .collect();
        if candidates.is_empty() {
            let _ = reply.send(Err(NodeError::Denied(Denial::new(
                DenyReason::Unsatisfiable,
                "no known node that would serve this one has that much in total (or meets the constraints)",
            ))));
            return;
        }
        let r = Reserving {
            attempt: Attempt::new(candidates, self.cfg.max_tries),
            request_id: req
                .request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            req,
            start_ms,
            end_ms,
            condition,
            shared_with,
            reply,
        };
        let id = self.next_placement;
        self.next_placement += 1;
        self.drive_reserve(id, r);
    }

    /// The condition a reservation request asks for, and for a condition
    /// on another reservation, the owner the new one must go to (the same).
    fn reservation_condition(
        &self,
        req: &ReservationRequest,
    ) -> Result<(Option<Condition>, Option<NodeId>), NodeError> {
        match (&req.when_event, &req.after_reservation) {
            (Some(_), Some(_)) => Err(NodeError::BadRequest(
                "give when_event or after_reservation, not both".into(),
            )),
            (Some(name), None) => validate_event_name(name)
                .map(|()| (Some(Condition::Event(name.clone())), None))
                .map_err(|why| NodeError::BadRequest(format!("when_event: {why}"))),
            (None, Some(id)) => {
                let id = LeaseId(id.trim().to_owned());
                let owner = if let Some(h) = self.held_reservations.get(&id) {
                    h.owner.clone()
                } else if self.sched.calendar().get(&id).is_some() {
                    self.local_id.clone()
                } else {
                    return Err(NodeError::NotFound(format!(
                        "after_reservation: no reservation {id} made here or held here (a \
                         reservation can wait only on one on the same owner)"
                    )));
                };
                if let Some(n) = &req.node_id {
                    if *n != owner.0 && *n != self.name_of(&owner) {
                        return Err(NodeError::BadRequest(format!(
                            "after_reservation: reservation {id} is on {}, not on {n}; a \
                             conditional reservation goes to the same owner",
                            self.name_of(&owner)
                        )));
                    }
                }
                Ok((Some(Condition::Reservation(id)), Some(owner)))
            }
            (None, None) => Ok((None, None)),
        }
    }

    fn drive_reserve(&mut self, id: u64, mut r: Reserving) {
        loop {
            let Some(node) = r.attempt.next() else {
                let refusals = self.refusals(r.attempt);
                let _ = r.reply.send(Err(NodeError::NoCapacity {
                    refusals,
                    excluded: Vec::new(),
                }));
                return;
            };
            if node == self.local_id {
                let answer = self.decide_reserve(
                    self.local_id.clone(),
                    ReserveArgs {
                        req: r.req.required_resources.clone(),
                        task_type: r.req.task_type.clone(),
                        priority: r.req.priority,
                        start_ms: r.start_ms,
                        end_ms: r.end_ms,
                        condition: r.condition.clone(),
                        shared_with: r.shared_with.clone(),
                    },
                );
                match answer {
                    AllocResponse::Reserved(res) => return self.finish_reserve(r, node, res),
                    AllocResponse::Denied(d) => r.attempt.refused(node, d),
                    _ => {}
                }
                continue;
            }
            // A peer whose breaker is open is not asked (as for leases).
            if let Err(why) = self.breaker_acquire(&node) {
                r.attempt
                    .refused(node, Denial::new(DenyReason::Unreachable, why));
                continue;
            }
            let Some(peer) = peer_id_of(&node) else {
                continue;
            };
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Reserve {
                    request_id: r.request_id.clone(),
                    req: r.req.required_resources.clone(),
                    task_type: r.req.task_type.clone(),
                    priority: r.req.priority,
                    start_ms: r.start_ms,
                    end_ms: r.end_ms,
                    condition: r.condition.clone(),
                    shared_with: r.shared_with.clone(),
                }),
            );
            self.pending.insert(
                rid,
                Pending::Reserve {
                    reserving: id,
                    node,
                },
            );
            self.reserving.insert(id, r);
            return;
        }
    }

    pub(super) fn on_reserve_response(
        &mut self,
        id: u64,
        node: NodeId,
        result: Result<AllocResponse, String>,
    ) {
        self.breaker_alloc_outcome(&node, &result);
        let Some(mut r) = self.reserving.remove(&id) else {
            return;
        };
        match result {
            Ok(AllocResponse::Reserved(res)) if res.holder == self.local_id => {
                return self.finish_reserve(r, node, res)
            }
            Ok(AllocResponse::Denied(d)) => r.attempt.refused(node, d),
            Ok(other) => r.attempt.refused(
                node,
                Denial::new(
                    DenyReason::BadRequest,
                    format!("unexpected answer {other:?}"),
                ),
            ),
            Err(e) => r
                .attempt
                .refused(node, Denial::new(DenyReason::Unreachable, e)),
        }
        self.drive_reserve(id, r);
    }

    fn finish_reserve(&mut self, r: Reserving, node: NodeId, res: Reservation) {
        let owner_name = self.name_of(&node);
        let info = ReservationInfo::from_reservation(&res, &owner_name, &node);
        self.record_reservation(HistoryRole::Requester, HistoryOutcome::Booked, &res, &node);
        self.held_reservations.insert(
            res.id.clone(),
            HeldReservation {
                owner: node,
                owner_name,
                reservation: res,
            },
        );
        self.persist_requester();
        self.flush_deferred();
        let _ = r.reply.send(Ok(info));
    }

    /// Reservations made here, and those held here for others.
    pub(super) fn reservations_view(&self) -> Reservations {
        let held = self
            .held_reservations
            .values()
            .map(|h| {
                let mut r = h.reservation.clone();
                // Our copy learns of the start from the owner's notice; the
                // end, and a wait for a condition, we can tell ourselves.
                let now = now_ms();
                if r.end_ms <= now && r.status.is_live() {
                    r.status = if r.status.is_pending() && !r.condition_holds() {
                        ReservationStatus::Unmet
                    } else {
                        ReservationStatus::Expired
                    };
                } else if r.status == ReservationStatus::Confirmed
                    && r.start_ms <= now
                    && !r.condition_holds()
                {
                    r.status = ReservationStatus::Waiting;
                }
                ReservationInfo::from_reservation(&r, &h.owner_name, &h.owner)
            })
            .collect();
        // Live ones, then finished ones until 10 minutes after their
        // window's end, as the holder's side keeps its own: those whose
        // window is over, and those that ended unmet before it was (the
        // reservation they waited on never became active).
        let now = now_ms();
        let calendar = self.sched.calendar();
        let mut finished: Vec<&Reservation> = calendar
            .iter()
            .filter(|r| {
                !r.status.is_live()
                    && (r.end_ms <= now || r.status == ReservationStatus::Unmet)
                    && r.end_ms.saturating_add(600_000) > now
            })
            .collect();
        finished.sort_by(|a, b| (b.end_ms, &b.id).cmp(&(a.end_ms, &a.id)));
        let granted = calendar
            .list()
            .iter()
            .chain(finished.iter().copied())
            .map(|r| {
                let mut info = ReservationInfo::from_reservation(r, &self.cfg.name, &self.local_id);
                info.left = self.sched.calendar().pool_left(&r.id);
                info
            })
            .collect();
        Reservations { held, granted }
    }

    /// Cancel a reservation we made (before or during its window).
    pub(super) fn cancel_held_reservation(&mut self, id: &LeaseId) -> Option<NodeId> {
        let h = self.held_reservations.remove(id)?;
        self.record_reservation(
            HistoryRole::Requester,
            HistoryOutcome::Cancelled,
            &h.reservation,
            &h.owner,
        );
        self.persist_requester();
        self.release_on(&h.owner, id, None);
        Some(h.owner)
    }

    /// Parse a quota subject: `default`, `node:<id>` or a bare peer id,
    /// `group:<id or name>`.
    fn parse_subject(&self, s: &str) -> Result<Subject, NodeError> {
        let s = s.trim();
        if s == "default" {
            return Ok(Subject::Default);
        }
        if let Some(g) = s.strip_prefix("group:") {
            let g = self
                .state
                .groups
                .resolve(g)
                .map_err(|e| NodeError::NotFound(e.to_string()))?;
            return Ok(Subject::Group(g.id));
        }
        let id = s.strip_prefix("node:").unwrap_or(s);
        id.parse::<PeerId>()
            .map(|_| Subject::Requester(NodeId(id.to_owned())))
            .map_err(|_| {
                NodeError::BadRequest(format!(
                    "{s:?} is not a quota subject: use default, node:<peer id> or group:<group>"
                ))
            })
    }

    /// Every quota with current usage.
    pub(super) fn quota_entries(&self) -> Vec<QuotaEntry> {
        let (local, swarm) = self.sched.quotas().list();
        let mut out: Vec<QuotaEntry> = local
            .into_iter()
            .map(|(subject, q)| QuotaEntry {
                usage: self.sched.usage_of(&subject),
                subject: subject.to_string(),
                scope: "local".into(),
                parent: self.sched.quotas().parent(&subject).map(|p| p.to_string()),
                limits: q.limits,
                burst: q.burst,
            })
            .collect();
        out.extend(swarm.into_iter().map(|(subject, limits)| {
            let usage = match &subject {
                Subject::Requester(n) => {
                    let mut u = self.swarm_usage_of(n);
                    u.add(&self.sched.usage_of(&subject));
                    u
                }
                _ => Usage::default(),
            };
            QuotaEntry {
                subject: subject.to_string(),
                scope: "swarm".into(),
                limits,
                burst: None,
                usage,
                parent: None,
            }
        }));
        out
    }

    pub(super) fn set_quota(&mut self, c: QuotaChange) -> Result<Vec<QuotaEntry>, NodeError> {
        let subject = self.parse_subject(&c.subject)?;
        let change = history::quota_set(&subject, &c);
        let result = if c.swarm {
            if c.burst.is_some() {
                return Err(NodeError::BadRequest(
                    "swarm-wide quotas have no burst allowance".into(),
                ));
            }
            if c.parent.is_some() {
                return Err(NodeError::BadRequest(
                    "swarm-wide quotas have no parent; only local quotas form a tree".into(),
                ));
            }
            let mut current = match &subject {
                Subject::Requester(n) => self.swarm_usage_of(n),
                _ => Usage::default(),
            };
            current.add(&self.sched.usage_of(&subject));
            self.sched
                .set_swarm_quota(subject.clone(), c.limits, &current)
        } else {
            let parent = match &c.parent {
                Some(p) => Some(self.parse_subject(p)?),
                None => None,
            };
            self.sched.set_quota_in_tree(
                subject.clone(),
                Quota {
                    limits: c.limits,
                    burst: c.burst,
                },
                parent,
            )
        };
        result.map_err(|d| match d.reason {
            DenyReason::BadRequest => NodeError::BadRequest(d.message),
            _ => NodeError::Denied(d),
        })?;
        self.persist_sched_now()?;
        info!(subject = %subject, swarm = c.swarm, "quota set");
        self.record_local(HistoryKind::PolicyChange, HistoryOutcome::Changed, &change);
        Ok(self.quota_entries())
    }

    pub(super) fn remove_quota(
        &mut self,
        subject: &str,
        swarm: bool,
    ) -> Result<Vec<QuotaEntry>, NodeError> {
        let subject = self.parse_subject(subject)?;
        let removed = if swarm {
            self.sched.remove_swarm_quota(&subject)
        } else {
            self.sched.remove_quota(&subject)
        };
        if !removed {
            return Err(NodeError::NotFound(format!(
                "no {} quota for {subject}",
                if swarm { "swarm-wide" } else { "local" }
            )));
        }
        self.persist_sched_now()?;
        let scope = if swarm { "swarm-wide" } else { "local" };
        self.record_local(
            HistoryKind::PolicyChange,
            HistoryOutcome::Changed,
            &format!("{scope} quota for {subject} removed"),
        );
        Ok(self.quota_entries())
    }

    pub(super) fn set_sched_policy(
        &mut self,
        c: SchedPolicyChange,
    ) -> Result<SchedPolicy, NodeError> {
        let mut p = self.sched.policy().clone();
        if let Some(v) = c.preemption {
            p.preemption = v;
        }
        if let Some(v) = c.max_queue {
            if v == 0 || v > 100_000 {
                return Err(NodeError::BadRequest(
                    "max_queue must be between 1 and 100000".into(),
                ));
            }
            p.max_queue = v;
        }
        if let Some(v) = c.max_wait_secs {
            if v == 0 || v > 7 * 24 * 3600 {
                return Err(NodeError::BadRequest(
                    "max_wait_secs must be between 1 and 604800 (7 days)".into(),
                ));
            }
            p.max_wait_ms = v * 1000;
        }
        if let Some(v) = c.rate_per_sec {
            if !v.is_finite() || v <= 0.0 || v > 1_000_000.0 {
                return Err(NodeError::BadRequest(
                    "rate_per_sec must be a number above 0 and at most 1000000".into(),
                ));
            }
            p.rate.per_sec = v;
        }
        if let Some(v) = c.rate_burst {
            if v == 0 {
                return Err(NodeError::BadRequest(
                    "rate_burst must be at least 1".into(),
                ));
            }
            p.rate.burst = v;
        }
        apply_queue_policy_change(&mut p, &c).map_err(NodeError::BadRequest)?;
        self.store
            .apply(&policy_batch(&p, &self.cfg.sched))
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        info!(
            preemption = p.preemption,
            max_queue = p.max_queue,
            "scheduling policy changed"
        );
        self.record_local(
            HistoryKind::PolicyChange,
            HistoryOutcome::Changed,
            &history::sched_policy_set(&p),
        );
        self.sched.set_policy(p.clone());
        self.schedule_announce();
        Ok(p)
    }

    pub(super) fn queue_entries(&self) -> Vec<QueueEntry> {
        self.sched
            .queue_in_order()
            .into_iter()
            .enumerate()
            .map(|(i, w)| QueueEntry {
                ticket: w.input.lease_id.0.clone(),
                holder: w.input.holder.clone(),
                priority: w.input.priority,
                position: i as u32 + 1,
                required_resources: w.input.req.clone(),
                queued_at: ms_to_utc(w.enqueued_at_ms),
                deadline: ms_to_utc(w.deadline_ms),
            })
            .collect()
    }

    pub(super) fn contention_report(&self) -> ContentionReport {
        let q = self.sched.queue();
        let mixed = {
            let prios: std::collections::BTreeSet<Priority> =
                q.iter().map(|w| w.input.priority).collect();
            prios.len() > 1
        };
        let preemptible = self.sched.policy().preemption && {
            let top = q.iter().map(|w| w.input.priority).max();
            top.is_some_and(|top| self.sched.ledger().leases().any(|l| l.priority < top))
        };
        let demand = q.demand();
        let now = now_ms();
        let peers_with_room = q
            .iter()
            .next()
            .map(|w| {
                self.view
                    .candidates(&w.input.req, now)
                    .0
                    .iter()
                    .filter(|c| !c.is_local)
                    .count() as u32
            })
            .unwrap_or(0);
        let can_scale = self
            .elastic
            .as_ref()
            .is_some_and(|e| e.current() != &self.cfg.capacity);
        contention::assess(
            &demand,
            q.len() as u32,
            &self.sched.ledger().free(),
            self.sched.ledger().capacity(),
            mixed,
            preemptible,
            peers_with_room,
            can_scale,
        )
    }

    /// Elastic sharing: a fresh reading of local (non-swarm) load.
    pub(super) fn on_local_load(&mut self, load: crate::core::elastic::LocalLoad) {
        let Some(el) = self.elastic.as_mut() else {
            return;
        };
        let used = self.sched.ledger().used();
        let now = now_ms();
        let changed = el.observe(&load, &used, now);
        self.persist_forecast();
        let Some(el) = self.elastic.as_mut() else {
            return;
        };
        if let Some(cap) = changed {
            info!(
                cores = cap.cpu_cores,
                memory_mb = cap.memory_mb,
                "elastic sharing: lendable capacity changed"
            );
            let to_break =
                el.leases_to_break(&self.sched.ledger().leases().cloned().collect::<Vec<_>>());
            self.sched.ledger_mut().set_capacity(cap);
            for id in to_break {
                if let Ok(Some(l)) = self.sched.release(&id, None, now) {
                    let denial = Denial::new(
                        DenyReason::Preempted,
                        "the machine's owner needs the resources back (elastic sharing)",
                    );
                    self.record_preempted(&l, "elastic");
                    self.note_preempted(1);
                    self.forget_granted(std::slice::from_ref(&l));
                    self.notify(
                        &l.holder,
                        Notice::Ended {
                            lease_id: l.lease_id.clone(),
                            denial,
                        },
                    );
                }
            }
            self.schedule_announce();
            self.sched_tick(now);
        }
    }
}

/// A waiting ticket as the API shows it: an allocation with status
/// `queued` and its position.
fn ticket_allocation(id: &LeaseId, t: &Ticket, holder: &NodeId) -> Allocation {
    let lease = Lease {
        lease_id: id.clone(),
        request_id: t.request_id.clone(),
        node_id: t.owner.clone(),
        holder: holder.clone(),
        cpu_cores: t.req.cpu_cores,
        memory_mb: t.req.memory_mb,
        disk_mb: t.req.disk_mb,
        gpus: Vec::new(),
        custom: t.req.custom.clone(),
        models: t.req.preferred_models.clone(),
        task_type: t.task_type.clone(),
        priority: t.priority,
        created_at_ms: t.queued_at_ms,
        expires_at_ms: t.deadline_ms,
        lease_ms: t.lease_ms,
    };
    let mut a = Allocation::from_lease(&lease, &t.owner_name, None);
    a.status = AllocationStatus::Queued;
    a.queue_position = Some(t.position);
    a
}

/// Apply the queue-policy part of a policy change (queue order, backfill,
/// shares) to `p`; on any bad value, an error naming it, and `p` is left
/// as it was.
fn apply_queue_policy_change(p: &mut SchedPolicy, c: &SchedPolicyChange) -> Result<(), String> {
    use crate::core::fairshare::{check_share, QueuePolicy};
    use crate::core::groups::GroupId;
    let mut n = p.clone();
    if let Some(v) = &c.queue_policy {
        n.queue_policy = v.parse::<QueuePolicy>()?;
    }
    if let Some(v) = c.backfill {
        n.backfill = v;
    }
    if let Some(v) = c.fair_share_half_life_secs {
        n.shares.half_life_ms = v.saturating_mul(1000);
    }
    for id in c.remove_shares.iter().flatten() {
        n.shares.requesters.remove(&NodeId(id.clone()));
    }
    for id in c.remove_group_shares.iter().flatten() {
        n.shares.groups.remove(&GroupId(id.clone()));
    }
    for (id, share) in c.shares.iter().flatten() {
        if id.parse::<libp2p::PeerId>().is_err() {
            return Err(format!("shares: {id:?} is not a valid peer id"));
        }
        let s = check_share(&format!("requester {id}"), *share)?;
        n.shares.requesters.insert(NodeId(id.clone()), s);
    }
    for (id, share) in c.group_shares.iter().flatten() {
        if id.is_empty() || id.len() > 128 {
            return Err(format!("group_shares: {id:?} is not a group id"));
        }
        let s = check_share(&format!("group {id}"), *share)?;
        n.shares.groups.insert(GroupId(id.clone()), s);
    }
    n.shares.validate()?;
    *p = n;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::legacy::{HeldReservationV1, RequesterStateV1, ReservationV1, SchedSnapshotV1};
    use super::*;
    use crate::core::ledger::LeaseLimits;

    fn reservation_v1(id: &str, start_ms: u64) -> ReservationV1 {
        ReservationV1 {
            id: LeaseId(id.into()),
            holder: NodeId::from("holder"),
            req: ResourceRequirements {
                cpu_cores: 2,
                ..Default::default()
            },
            priority: Priority::High,
            task_type: "train".into(),
            start_ms,
            end_ms: start_ms + 60_000,
            gpus: Vec::new(),
            status: ReservationStatus::Confirmed,
            created_at_ms: start_ms - 1,
        }
    }

    /// A node upgraded from a build before conditional reservations keeps
    /// its calendar and its own reservations (stored under the old keys, in
    /// the old shape).
    #[test]
    fn state_written_by_the_previous_format_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let now = 1_700_000_000_000u64;
        let snap = SchedSnapshotV1 {
            waiting: Vec::new(),
            reservations: vec![reservation_v1("r1", now + 1_000)],
            quotas: Default::default(),
            until: Vec::new(),
        };
        let mut held = RequesterStateV1::default();
        held.reservations.insert(
            LeaseId("r2".into()),
            HeldReservationV1 {
                owner: NodeId::from("owner"),
                owner_name: "owner".into(),
                reservation: reservation_v1("r2", now + 2_000),
            },
        );
        store
            .apply(&WriteBatch {
                put_meta: vec![
                    (
                        legacy::META_SCHED_V1.to_owned(),
                        postcard::to_stdvec(&snap).unwrap(),
                    ),
                    (
                        legacy::META_REQUESTER_V1.to_owned(),
                        postcard::to_stdvec(&held).unwrap(),
                    ),
                ],
                ..Default::default()
            })
            .unwrap();
        let capacity = crate::model::Capacity {
            cpu_cores: 8,
            ..Default::default()
        };
        let policy = SchedPolicy::default();
        let mut sched = Scheduler::new(
            NodeId::from("me"),
            capacity,
            LeaseLimits::default(),
            policy.clone(),
        );
        let st = restore(&store, &mut sched, &policy, now).unwrap();
        let r = sched.calendar().get(&LeaseId("r1".into())).unwrap();
        assert_eq!(r.status, ReservationStatus::Confirmed);
        assert_eq!((r.start_ms, r.req.cpu_cores), (now + 1_000, 2));
        assert_eq!((r.condition.clone(), r.shared_with.clone()), (None, None));
        let h = &st.reservations[&LeaseId("r2".into())];
        assert_eq!(h.owner, NodeId::from("owner"));
        assert_eq!(h.reservation.start_ms, now + 2_000);
        // A new-format snapshot, once written, is what is read.
        let bytes = postcard::to_stdvec(&sched.snapshot()).unwrap();
        store
            .apply(&WriteBatch {
                put_meta: vec![(META_SCHED.to_owned(), bytes)],
                ..Default::default()
            })
            .unwrap();
        let mut again = Scheduler::new(
            NodeId::from("me"),
            crate::model::Capacity {
                cpu_cores: 8,
                ..Default::default()
            },
            LeaseLimits::default(),
            policy.clone(),
        );
        restore(&store, &mut again, &policy, now).unwrap();
        assert_eq!(again.calendar().snapshot(), sched.calendar().snapshot());
    }
}
