//! Recording the allocation history: the helpers the other handlers call
//! (one line each) where a grant, denial, release, expiry, preemption, loss
//! or local change happens, the query, and pruning.
//!
//! Records go into the deferred [`WriteBatch`], so they are written with
//! the next transaction: a grant's record commits with the grant itself
//! ([`EventLoop::granted_record`] goes into the group-commit batch), and
//! the rest within one maintenance tick. A query flushes first, so it sees
//! everything recorded so far.
//!
//! Bounded: at most [`MAX_PENDING`] records wait for the store, rate-limit
//! (`busy`) denials of one requester are recorded at most once a second
//! (the next record counts the ones left out), and the store keeps at most
//! `max_events` ([`crate::core::history::HistoryConfig`]), pruned once a
//! minute and sooner after a burst.

use super::*;
use crate::core::calendar::Reservation;
use crate::core::history::{
    HistoryConfig, HistoryEvent, HistoryKind, HistoryQuery, Outcome, ResourceSummary, Role,
};
use crate::core::queue::Waiting;
use crate::model::{Priority, ResourceRequirements};

/// Most records waiting for the store (it only fills while writes fail).
const MAX_PENDING: usize = 10_000;
/// How often the stored history is pruned.
const PRUNE_EVERY_MS: u64 = 60_000;
/// `busy` denials of one requester are recorded at most this often.
const BUSY_EVERY_MS: u64 = 1_000;
/// Most requesters whose `busy` denials are being thinned.
const MAX_BUSY_TRACKED: usize = 1024;

/// The recorder's own state.
pub(super) struct Recorder {
    cfg: HistoryConfig,
    next_prune_ms: u64,
    /// Records made since the last prune.
    since_prune: usize,
    /// Per requester: when its last `busy` denial was recorded, and how
    /// many were left out since.
    busy: HashMap<NodeId, (u64, u64)>,
    /// Records dropped because the store could not keep up.
    dropped: u64,
}

impl Recorder {
    /// Prune what the retention rule says (at start) and set up.
    pub(super) fn start(store: &Store, cfg: &HistoryConfig, now: u64) -> Recorder {
        match store.prune_history(now, cfg) {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "allocation history pruned"),
            Err(e) => warn!(error = %e, "cannot prune the allocation history"),
        }
        Recorder {
            cfg: cfg.clone(),
            next_prune_ms: now.saturating_add(PRUNE_EVERY_MS),
            since_prune: 0,
            busy: HashMap::new(),
            dropped: 0,
        }
    }

    /// Whether a prune is due: a minute passed, or a tenth of
    /// `max_events` (at least 1000) was recorded since the last one.
    fn prune_due(&self, now: u64) -> bool {
        now >= self.next_prune_ms || self.since_prune >= (self.cfg.max_events / 10).max(1000)
    }
}

/// What an allocation or reservation request asks for, as the owner reads
/// it off the wire (none for the other requests).
pub(super) fn asked(request: &AllocRequest) -> Option<(ResourceSummary, HistoryKind)> {
    match request {
        AllocRequest::Allocate { req, priority, .. } => Some((
            ResourceSummary::of_request(req, *priority),
            HistoryKind::Denial,
        )),
        AllocRequest::Draw { req, .. } => Some((
            ResourceSummary::of_request(req, crate::model::Priority::default()),
            HistoryKind::Denial,
        )),
        AllocRequest::Reserve { req, priority, .. } => Some((
            ResourceSummary::of_request(req, *priority),
            HistoryKind::Reservation,
        )),
        _ => None,
    }
}

/// Who asks for a reservation, and what.
pub(super) fn asked_reservation(
    r: &Reservation,
) -> (NodeId, Option<(ResourceSummary, HistoryKind)>) {
    (
        r.holder.clone(),
        Some((
            ResourceSummary::of_request(&r.req, r.priority),
            HistoryKind::Reservation,
        )),
    )
}

/// The text of an access-policy change: what differs.
pub(super) fn access_change(old: &AccessPolicy, new: &AccessPolicy) -> String {
    let on_off = |b: bool| if b { "on" } else { "off" };
    let mut parts = Vec::new();
    if old.allow_remote != new.allow_remote {
        parts.push(format!("remote access {}", on_off(new.allow_remote)));
    }
    if old.group_peers_only != new.group_peers_only {
        parts.push(format!("group peers only {}", on_off(new.group_peers_only)));
    }
    for (list, a, b) in [
        ("allow", &old.allow, &new.allow),
        ("deny", &old.deny, &new.deny),
    ] {
        let added: Vec<&str> = b.difference(a).map(|n| n.0.as_str()).collect();
        let removed: Vec<&str> = a.difference(b).map(|n| n.0.as_str()).collect();
        if !added.is_empty() {
            parts.push(format!("{list} + {}", added.join(" ")));
        }
        if !removed.is_empty() {
            parts.push(format!("{list} - {}", removed.join(" ")));
        }
    }
    format!("access policy changed: {}", parts.join("; "))
}

/// The text of a quota change.
pub(super) fn quota_set(
    subject: &crate::core::quota::Subject,
    c: &crate::handle::QuotaChange,
) -> String {
    let l = &c.limits;
    let mut caps = Vec::new();
    if let Some(v) = l.cpu_cores {
        caps.push(format!("{v} cores"));
    }
    if let Some(v) = l.memory_mb {
        caps.push(format!("{} memory", crate::units::format_mb(v)));
    }
    if let Some(v) = l.disk_mb {
        caps.push(format!("{} disk", crate::units::format_mb(v)));
    }
    if let Some(v) = l.gpus {
        caps.push(format!("{v} GPUs"));
    }
    if let Some(v) = l.gpu_memory_mb {
        caps.push(format!("{} GPU memory", crate::units::format_mb(v)));
    }
    for (k, v) in &l.custom {
        caps.push(format!("{v} {k}"));
    }
    if caps.is_empty() {
        caps.push("no caps".to_owned());
    }
    format!(
        "{} quota for {subject} set: {}{}",
        if c.swarm { "swarm-wide" } else { "local" },
        caps.join(", "),
        if c.burst.is_some() {
            ", with a burst allowance"
        } else {
            ""
        }
    )
}

/// The text of a scheduling-policy change.
pub(super) fn sched_policy_set(p: &SchedPolicy) -> String {
    format!(
        "scheduling policy set: preemption {}, max_queue {}, max_wait {}s, rate {}/s (burst {})",
        if p.preemption { "on" } else { "off" },
        p.max_queue,
        p.max_wait_ms / 1000,
        p.rate.per_sec,
        p.rate.burst
    )
}

/// The owner's record of a lease that ran out while the node was down
/// (found at start).
pub(super) fn expired_while_down(lease: &Lease, now: u64) -> HistoryEvent {
    HistoryEvent::lease(
        now,
        HistoryKind::Expiry,
        Role::Owner,
        Outcome::Expired,
        lease,
        Some("not_renewed"),
        &format!(
            "{} of …{} ran out while this node was down",
            ResourceSummary::of_lease(lease).short(),
            short(&lease.holder)
        ),
    )
}

/// The reason code of a held lease's loss, from its description.
pub(super) fn lost_reason(why: &str) -> &'static str {
    if why.contains(" went offline;") {
        "owner_offline"
    } else if why.contains(" left;") {
        "owner_left"
    } else {
        "not_renewed"
    }
}

impl EventLoop {
    /// Add a record to the next write.
    pub(super) fn record(&mut self, mut ev: HistoryEvent) {
        if ev.at_ms == 0 {
            ev.at_ms = now_ms();
        }
        let pending = &mut self.deferred.history;
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
            self.history.dropped += 1;
            if self.history.dropped.is_power_of_two() {
                warn!(
                    dropped = self.history.dropped,
                    "the store is not keeping up; oldest unwritten history records dropped"
                );
            }
        }
        pending.push(ev);
        self.history.since_prune += 1;
    }

    /// A peer's name where known, else its short id.
    fn who(&self, id: &NodeId) -> String {
        let name = self.name_of(id);
        if name.is_empty() {
            format!("…{}", short(id))
        } else {
            name
        }
    }

    /// The owner's record of a grant, for the batch that makes it durable.
    pub(super) fn granted_record(&self, lease: &Lease, how: &str) -> HistoryEvent {
        let s = ResourceSummary::of_lease(lease);
        HistoryEvent::lease(
            now_ms(),
            HistoryKind::Grant,
            Role::Owner,
            Outcome::Granted,
            lease,
            None,
            &format!("granted {} to {}{how}", s.short(), self.who(&lease.holder)),
        )
    }

    /// The owner's record of a reservation whose window began.
    pub(super) fn started_record(&self, lease: &Lease) -> HistoryEvent {
        HistoryEvent::lease(
            now_ms(),
            HistoryKind::Reservation,
            Role::Owner,
            Outcome::Started,
            lease,
            None,
            &format!("reservation of {} began", self.who(&lease.holder)),
        )
    }

    /// Owner side: a request refused (`kind` is `denial`, or `reservation`
    /// for a reservation request).
    pub(super) fn record_refusal(
        &mut self,
        holder: &NodeId,
        asked: Option<(ResourceSummary, HistoryKind)>,
        denial: &Denial,
    ) {
        let Some((resources, kind)) = asked else {
            return;
        };
        let now = now_ms();
        let mut note = String::new();
        if denial.reason == DenyReason::Busy {
            let busy = &mut self.history.busy;
            if busy.len() >= MAX_BUSY_TRACKED && !busy.contains_key(holder) {
                busy.retain(|_, (at, _)| now.saturating_sub(*at) < BUSY_EVERY_MS);
                if busy.len() >= MAX_BUSY_TRACKED {
                    return;
                }
            }
            let entry = busy.entry(holder.clone()).or_insert((0, 0));
            if entry.0 != 0 && now.saturating_sub(entry.0) < BUSY_EVERY_MS {
                entry.1 += 1;
                return;
            }
            if entry.1 > 0 {
                note = format!(" ({} more busy refusals not recorded)", entry.1);
            }
            *entry = (now, 0);
        }
        let what = if kind == HistoryKind::Reservation {
            "a reservation of "
        } else {
            ""
        };
        let detail = format!(
            "refused {what}{} for {}: {}{note}",
            resources.short(),
            self.who(holder),
            denial.message
        );
        self.record(HistoryEvent::new(
            now,
            kind,
            Role::Owner,
            Outcome::Denied,
            Some(holder.clone()),
            Some(self.local_id.clone()),
            None,
            Some(resources),
            Some(denial.reason.code()),
            &detail,
        ));
    }

    /// Owner side: what `decide_allocate` answered at once (a denial, or
    /// queued); grants are recorded when they are durable.
    pub(super) fn record_owner_answer(
        &mut self,
        holder: &NodeId,
        req: &ResourceRequirements,
        priority: Priority,
        answer: &AllocResponse,
    ) {
        let resources = ResourceSummary::of_request(req, priority);
        match answer {
            AllocResponse::Denied(d) => {
                self.record_refusal(holder, Some((resources, HistoryKind::Denial)), d)
            }
            AllocResponse::Queued { ticket, position } => {
                let detail = format!(
                    "queued {} for {} at position {position}",
                    resources.short(),
                    self.who(holder)
                );
                self.record(HistoryEvent::new(
                    now_ms(),
                    HistoryKind::Queued,
                    Role::Owner,
                    Outcome::Queued,
                    Some(holder.clone()),
                    Some(self.local_id.clone()),
                    Some(ticket.clone()),
                    Some(resources),
                    None,
                    &detail,
                ))
            }
            _ => {}
        }
    }

    /// A lease event from `role`'s side. From the requester's side, leases
    /// on this node itself are left out: the owner's record tells it.
    pub(super) fn record_lease(
        &mut self,
        kind: HistoryKind,
        role: Role,
        outcome: Outcome,
        lease: &Lease,
        reason: Option<&str>,
        detail: &str,
    ) {
        if role == Role::Requester && lease.node_id == self.local_id {
            return;
        }
        self.record(HistoryEvent::lease(
            now_ms(),
            kind,
            role,
            outcome,
            lease,
            reason,
            detail,
        ));
    }

    /// Owner side: a lease given back, by its holder or the local admin.
    pub(super) fn record_owner_release(&mut self, lease: &Lease, by: Option<&NodeId>) {
        let by = match by {
            Some(h) if h == &lease.holder => format!("by its holder {}", self.who(h)),
            Some(h) => format!("by {}", self.who(h)),
            None => "by the local admin".to_owned(),
        };
        let detail = format!(
            "{} of {} released {by}",
            ResourceSummary::of_lease(lease).short(),
            self.who(&lease.holder)
        );
        self.record_lease(
            HistoryKind::Release,
            Role::Owner,
            Outcome::Released,
            lease,
            None,
            &detail,
        );
    }

    /// Owner side: a lease that ran out.
    pub(super) fn record_expired(&mut self, lease: &Lease) {
        let detail = format!(
            "{} of {} expired (not renewed); resources taken back",
            ResourceSummary::of_lease(lease).short(),
            self.who(&lease.holder)
        );
        self.record_lease(
            HistoryKind::Expiry,
            Role::Owner,
            Outcome::Expired,
            lease,
            Some("not_renewed"),
            &detail,
        );
    }

    /// Owner side: a lease ended to make room (`reason`:
    /// `higher_priority` or `elastic`).
    pub(super) fn record_preempted(&mut self, lease: &Lease, reason: &str) {
        let why = if reason == "elastic" {
            "the machine's owner needs the resources back"
        } else {
            "a higher-priority request"
        };
        let detail = format!(
            "{} of {} preempted for {why}",
            ResourceSummary::of_lease(lease).short(),
            self.who(&lease.holder)
        );
        self.record_lease(
            HistoryKind::Preemption,
            Role::Owner,
            Outcome::Preempted,
            lease,
            Some(reason),
            &detail,
        );
    }

    /// Owner side: a waiting request withdrawn, timed out or refused for good.
    pub(super) fn record_waiting(
        &mut self,
        w: &Waiting,
        outcome: Outcome,
        denial: Option<&Denial>,
    ) {
        let i = &w.input;
        let resources = ResourceSummary::of_request(&i.req, i.priority);
        let (kind, detail) = match outcome {
            Outcome::Cancelled => (
                HistoryKind::Release,
                format!("waiting request of {} withdrawn", self.who(&i.holder)),
            ),
            Outcome::TimedOut => (
                HistoryKind::Denial,
                format!(
                    "waiting request of {} for {} timed out in the queue",
                    self.who(&i.holder),
                    resources.short()
                ),
            ),
            _ => (
                HistoryKind::Denial,
                format!(
                    "waiting request of {} refused: {}",
                    self.who(&i.holder),
                    denial.map(|d| d.message.as_str()).unwrap_or_default()
                ),
            ),
        };
        let reason = match outcome {
            Outcome::TimedOut => Some(DenyReason::QueueTimeout.code()),
            _ => denial.map(|d| d.reason.code()),
        };
        self.record(HistoryEvent::new(
            now_ms(),
            kind,
            Role::Owner,
            outcome,
            Some(i.holder.clone()),
            Some(self.local_id.clone()),
            Some(i.lease_id.clone()),
            Some(resources),
            reason,
            &detail,
        ));
    }

    /// A reservation booked, cancelled or ended, from `role`'s side, on
    /// `owner`'s resources.
    pub(super) fn record_reservation(
        &mut self,
        role: Role,
        outcome: Outcome,
        r: &Reservation,
        owner: &NodeId,
    ) {
        if role == Role::Requester && owner == &self.local_id {
            return;
        }
        let resources = ResourceSummary::of_request(&r.req, r.priority);
        let what = match (outcome, &r.condition) {
            (Outcome::Ended, _) => format!("ended ({})", r.status),
            (Outcome::Changed, Some(c)) => format!("condition met ({c})"),
            _ => outcome.name().to_owned(),
        };
        let mut detail = format!(
            "reservation of {} on {} for {} from {} to {} {what}",
            resources.short(),
            self.who(owner),
            self.who(&r.holder),
            crate::core::history::rfc3339(r.start_ms),
            crate::core::history::rfc3339(r.end_ms),
        );
        if let Some(g) = &r.shared_with {
            detail.push_str(&format!(", shared with group {}", g.0));
        }
        self.record(HistoryEvent::new(
            now_ms(),
            HistoryKind::Reservation,
            role,
            outcome,
            Some(r.holder.clone()),
            Some(owner.clone()),
            Some(r.id.clone()),
            Some(resources),
            None,
            &detail,
        ));
    }

    /// Owner side: a reservation booked, cancelled or ended here.
    pub(super) fn record_owner_reservation(&mut self, outcome: Outcome, r: &Reservation) {
        let me = self.local_id.clone();
        self.record_reservation(Role::Owner, outcome, r, &me);
    }

    /// Requester side: our request was queued at `owner` (remote owners
    /// only; the owner's record covers this node).
    pub(super) fn record_queued_at(&mut self, owner: &NodeId, ticket: &LeaseId, t: &sched::Ticket) {
        if owner == &self.local_id {
            return;
        }
        let resources = ResourceSummary::of_request(&t.req, t.priority);
        let detail = format!(
            "{} queued at {} at position {}",
            resources.short(),
            self.who(owner),
            t.position
        );
        self.record(HistoryEvent::new(
            now_ms(),
            HistoryKind::Queued,
            Role::Requester,
            Outcome::Queued,
            Some(self.local_id.clone()),
            Some(owner.clone()),
            Some(ticket.clone()),
            Some(resources),
            None,
            &detail,
        ));
    }

    /// Requester side: a waiting request of ours that ended without a
    /// grant (withdrawn, timed out, refused).
    pub(super) fn record_ticket_end(
        &mut self,
        ticket: &LeaseId,
        t: &sched::Ticket,
        outcome: Outcome,
        reason: Option<&str>,
        why: &str,
    ) {
        if t.owner == self.local_id {
            return;
        }
        let kind = match outcome {
            Outcome::Cancelled => HistoryKind::Release,
            _ => HistoryKind::Denial,
        };
        let resources = ResourceSummary::of_request(&t.req, t.priority);
        let detail = format!(
            "waiting request for {} at {} {}: {why}",
            resources.short(),
            self.who(&t.owner),
            outcome.name()
        );
        self.record(HistoryEvent::new(
            now_ms(),
            kind,
            Role::Requester,
            outcome,
            Some(self.local_id.clone()),
            Some(t.owner.clone()),
            Some(ticket.clone()),
            Some(resources),
            reason,
            &detail,
        ));
    }

    /// Requester side: a lease we hold ends here: released by us
    /// (`release`) or lost (`lost`, with the reason code).
    pub(super) fn record_held_end(
        &mut self,
        lease_id: &LeaseId,
        kind: HistoryKind,
        reason: Option<&str>,
        why: &str,
    ) {
        let Some(h) = self.held.get(lease_id) else {
            return;
        };
        let lease = h.rec.lease.clone();
        let outcome = match kind {
            HistoryKind::Release => Outcome::Released,
            _ => Outcome::Lost,
        };
        let detail = format!(
            "{} on {} {}: {why}",
            ResourceSummary::of_lease(&lease).short(),
            h.rec.owner_name,
            outcome.name()
        );
        self.record_lease(kind, Role::Requester, outcome, &lease, reason, &detail);
    }

    /// Requester side: an owner ended a lease we hold (preempted, or
    /// ended for another reason).
    pub(super) fn record_ended_by_owner(&mut self, lease_id: &LeaseId, denial: &Denial) {
        let Some(h) = self.held.get(lease_id) else {
            return;
        };
        let lease = h.rec.lease.clone();
        let (kind, outcome) = match denial.reason {
            DenyReason::Preempted => (HistoryKind::Preemption, Outcome::Preempted),
            _ => (HistoryKind::Lost, Outcome::Lost),
        };
        let detail = format!("{} ended our lease: {}", h.rec.owner_name, denial.message);
        self.record_lease(
            kind,
            Role::Requester,
            outcome,
            &lease,
            Some(denial.reason.code()),
            &detail,
        );
    }

    /// Requester side: an owner ended a waiting request of ours.
    pub(super) fn record_ticket_denied(&mut self, ticket: &LeaseId, t: &sched::Ticket, d: &Denial) {
        let outcome = match d.reason {
            DenyReason::QueueTimeout => Outcome::TimedOut,
            _ => Outcome::Denied,
        };
        self.record_ticket_end(ticket, t, outcome, Some(d.reason.code()), &d.message);
    }

    /// Requester side: a request of ours that no node granted.
    pub(super) fn record_request_failed(&mut self, req: &AllocationRequest, err: &NodeError) {
        let resources = ResourceSummary::of_request(&req.required_resources, req.priority);
        let (reason, node, why) = match err {
            NodeError::Denied(d) => (d.reason.code().to_owned(), None, d.message.clone()),
            NodeError::NoCapacity { refusals, excluded } => {
                let reason = match refusals.as_slice() {
                    [first, rest @ ..] if rest.iter().all(|r| r.reason == first.reason) => {
                        first.reason.code().to_owned()
                    }
                    _ => "no_capacity".to_owned(),
                };
                let node = match refusals.as_slice() {
                    [only] => Some(only.node_id.clone()),
                    _ => None,
                };
                let why = format!(
                    "{} refused, {} not eligible",
                    refusals.len(),
                    excluded.len()
                );
                (reason, node, why)
            }
            _ => return,
        };
        let node = node.or_else(|| self.resolve_node(req.node_id.as_deref()?));
        let detail = format!("request for {} failed: {why}", resources.short());
        self.record(HistoryEvent::new(
            now_ms(),
            HistoryKind::Denial,
            Role::Requester,
            Outcome::Denied,
            Some(self.local_id.clone()),
            node,
            None,
            Some(resources),
            Some(&reason),
            &detail,
        ));
    }

    /// A change on this node: policy, strategy, quotas, groups, pools.
    pub(super) fn record_local(&mut self, kind: HistoryKind, outcome: Outcome, detail: &str) {
        let mut ev = HistoryEvent::local(now_ms(), kind, outcome, detail);
        ev.node = Some(self.local_id.clone());
        self.record(ev);
    }

    /// Answer a history query: write what is pending, then read.
    /// Answer a history query: what is written so far (the deferred batch
    /// first), read on a blocking task with its own read transaction, so
    /// a scan of a long history does not hold up the event loop.
    pub(super) fn query_history(
        &mut self,
        q: HistoryQuery,
        reply: oneshot::Sender<Result<Vec<HistoryEvent>, NodeError>>,
    ) {
        self.flush_deferred();
        let store = std::sync::Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let out = store
                .history(&q)
                .map_err(|e| NodeError::Storage(e.to_string()));
            let _ = reply.send(out);
        });
    }

    /// From the maintenance tick: prune the stored history when due.
    pub(super) fn maintain_history(&mut self, now: u64) {
        if !self.history.prune_due(now) {
            return;
        }
        self.flush_deferred();
        self.history.next_prune_ms = now.saturating_add(PRUNE_EVERY_MS);
        self.history.since_prune = 0;
        self.history
            .busy
            .retain(|_, (at, _)| now.saturating_sub(*at) < BUSY_EVERY_MS);
        match self.store.prune_history(now, &self.history.cfg) {
            Ok(0) => {}
            Ok(n) => debug!(pruned = n, "allocation history pruned"),
            Err(e) => warn!(error = %e, "cannot prune the allocation history"),
        }
    }
}
