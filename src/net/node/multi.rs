//! Multi-node requests on the requester: plan the parts over the swarm
//! ([`crate::core::multi::plan`]), hold each part with a short lease,
//! then confirm them all by renewing to the full term, or release every
//! hold if the whole cannot be had. The lifecycle (`pending`, `confirmed`,
//! `partial`, `failed`, `released`, `expired`) is the core's
//! [`MultiReservation`].

use super::*;
use crate::core::multi::{self, MultiRequest, MultiReservation, MultiStatus, PartStatus};
use crate::handle::{MultiAllocation, MultiAllocationRequest, MultiPart};

/// How long a hold lasts before it is confirmed (or runs out by itself).
const HOLD_MS: u64 = 15_000;
/// Multi-node allocations remembered for the API.
const MAX_MULTIS: usize = 256;

/// One multi-node request in flight or done.
pub(super) struct Multi {
    pub res: MultiReservation,
    pub lease_ms: u64,
    /// Leases held or confirmed, by part.
    pub leases: BTreeMap<usize, Lease>,
    /// Answers still awaited in the current phase.
    pub outstanding: usize,
    pub partial_plan: bool,
    pub reply: Option<oneshot::Sender<Result<MultiAllocation, NodeError>>>,
}

impl EventLoop {
    pub(super) fn on_request_multi(
        &mut self,
        r: MultiAllocationRequest,
        reply: oneshot::Sender<Result<MultiAllocation, NodeError>>,
    ) {
        let now = now_ms();
        let mreq = MultiRequest {
            parts: r.parts,
            each: r.each.clone(),
            affinity: r.affinity,
            strategy: r.strategy,
            allow_partial: r.allow_partial,
        };
        if let Err(e) = mreq.validate() {
            let _ = reply.send(Err(NodeError::BadRequest(e)));
            return;
        }
        let lease_ms = match r.timeout_secs {
            Some(0) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "timeout_secs must be > 0".into(),
                )));
                return;
            }
            Some(s) => s.saturating_mul(1000),
            None => self.cfg.default_lease.as_millis() as u64,
        };
        // The same narrowing as a single request: scope, policy hints,
        // constraints.
        let as_single = AllocationRequest {
            required_resources: r.each.clone(),
            constraints: r.constraints.clone(),
            pool: r.pool.clone(),
            group: r.group.clone(),
            priority: r.priority,
            ..Default::default()
        };
        let (mut candidates, excluded) = self.view.candidates(&r.each, now);
        let mut excluded: Vec<Excluded> = excluded
            .into_iter()
            .map(|(id, why)| Excluded {
                node_name: self.name_of(&id),
                node_id: id,
                why,
            })
            .collect();
        if let Err(e) = self.scope_candidates(&as_single, &mut candidates, &mut excluded) {
            let _ = reply.send(Err(e));
            return;
        }
        if let Err(e) = self.apply_constraints(&as_single, &mut candidates, &mut excluded, now) {
            let _ = reply.send(Err(e));
            return;
        }
        let plan = match multi::plan(&mreq, &candidates) {
            Ok(p) => p,
            Err(why) => {
                let _ = reply.send(Err(NodeError::NoCapacity {
                    refusals: vec![Refusal {
                        node_id: self.local_id.clone(),
                        node_name: self.cfg.name.clone(),
                        reason: DenyReason::InsufficientCapacity,
                        message: format!("no plan places every part: {why}"),
                    }],
                    excluded,
                }));
                return;
            }
        };
        let id = r
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if self.multis.contains_key(&id) {
            let _ = reply.send(Err(NodeError::BadRequest(format!(
                "request_id {id} is already in use"
            ))));
            return;
        }
        let res = MultiReservation::new(id.clone(), &plan, r.allow_partial, now, HOLD_MS);
        info!(multi = %id, parts = plan.parts.len(), partial = plan.partial, "multi-node request: holding parts");
        let nodes = plan.parts.clone();
        self.multis.insert(
            id.clone(),
            Multi {
                res,
                lease_ms,
                leases: BTreeMap::new(),
                outstanding: nodes.len(),
                partial_plan: plan.partial,
                reply: Some(reply),
            },
        );
        for (part, node) in nodes.into_iter().enumerate() {
            let args = sched::AllocateArgs {
                request_id: format!("{id}/{part}"),
                req: r.each.clone(),
                task_type: r.task_type.clone(),
                priority: r.priority,
                lease_ms: HOLD_MS,
                wait_ms: 0,
                duration_ms: None,
                preempt: false,
                constraints: r.constraints.clone(),
            };
            if node == self.local_id {
                let me = self.local_id.clone();
                let answer = match self.decide_allocate(me, args) {
                    sched::OwnerAnswer::Granted(lease) => match self.commit_local_grant(lease) {
                        Ok(l) => Ok(AllocResponse::Granted(l)),
                        Err(d) => Ok(AllocResponse::Denied(d)),
                    },
                    sched::OwnerAnswer::Now(a) => Ok(a),
                };
                self.on_multi_hold(&id, part, node, answer);
                continue;
            }
            // A peer whose breaker is open is not asked (as for leases).
            if let Err(why) = self.breaker_acquire(&node) {
                self.on_multi_hold(&id, part, node, Err(why));
                continue;
            }
            let Some(peer) = peer_id_of(&node) else {
                self.on_multi_hold(&id, part, node, Err("not a peer id".into()));
                continue;
            };
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Allocate {
                    request_id: args.request_id,
                    req: args.req,
                    task_type: args.task_type,
                    priority: args.priority,
                    lease_ms: HOLD_MS,
                    wait_ms: 0,
                    duration_ms: None,
                    preempt: false,
                    constraints: args.constraints,
                }),
            );
            self.pending.insert(
                rid,
                Pending::MultiHold {
                    multi: id.clone(),
                    part,
                    node,
                },
            );
        }
    }

    /// A hold was answered.
    pub(super) fn on_multi_hold(
        &mut self,
        id: &str,
        part: usize,
        node: NodeId,
        result: Result<AllocResponse, String>,
    ) {
        let me = self.local_id.clone();
        let Some(m) = self.multis.get_mut(id) else {
            return;
        };
        m.outstanding = m.outstanding.saturating_sub(1);
        match result {
            Ok(AllocResponse::Granted(lease))
                if lease.node_id == node && lease.holder == me && !lease.lease_id.0.is_empty() =>
            {
                if let Some(late) = m.res.held(part, lease.lease_id.clone()) {
                    self.release_on(&node, &late, None);
                } else {
                    m.leases.insert(part, lease);
                }
            }
            Ok(AllocResponse::Denied(d)) => m.res.refused(part, d.to_string()),
            Ok(AllocResponse::Granted(lease)) => {
                // Not a lease for us: give it back and count a refusal.
                m.res.refused(
                    part,
                    "the owner answered with a lease that is not ours".into(),
                );
                let lid = lease.lease_id.clone();
                self.release_on(&node, &lid, None);
            }
            Ok(other) => m.res.refused(part, format!("unexpected answer {other:?}")),
            Err(e) => m.res.refused(part, format!("unreachable: {e}")),
        }
        let Some(m) = self.multis.get_mut(id) else {
            return;
        };
        if m.outstanding > 0 {
            return;
        }
        let decision = m.res.decide();
        let to_release: Vec<(NodeId, LeaseId)> = decision
            .release
            .iter()
            .filter_map(|l| m.res.node_of(l).cloned().map(|n| (n, l.clone())))
            .collect();
        let to_confirm: Vec<(usize, NodeId, LeaseId)> = decision
            .confirm
            .iter()
            .filter_map(|l| {
                let part = *m.res.leases.get(l)?;
                Some((part, m.res.node_of(l)?.clone(), l.clone()))
            })
            .collect();
        m.outstanding = to_confirm.len();
        let lease_ms = m.lease_ms;
        for (node, lease) in to_release {
            self.release_on(&node, &lease, None);
        }
        if to_confirm.is_empty() {
            return self.finish_multi(id);
        }
        for (part, node, lease) in to_confirm {
            if node == self.local_id {
                let result = match self.sched.renew(&lease, &me, lease_ms, now_ms()) {
                    Ok(l) => Ok(AllocResponse::Renewed(l)),
                    Err(d) => Ok(AllocResponse::Denied(d)),
                };
                self.on_multi_confirm(id, part, result);
                continue;
            }
            let Some(peer) = peer_id_of(&node) else {
                self.on_multi_confirm(id, part, Err("not a peer id".into()));
                continue;
            };
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Renew {
                    lease_id: lease,
                    lease_ms,
                }),
            );
            self.pending.insert(
                rid,
                Pending::MultiConfirm {
                    multi: id.to_owned(),
                    part,
                },
            );
        }
    }

    /// A confirmation (renewal to the full term) was answered.
    pub(super) fn on_multi_confirm(
        &mut self,
        id: &str,
        part: usize,
        result: Result<AllocResponse, String>,
    ) {
        let Some(m) = self.multis.get_mut(id) else {
            return;
        };
        m.outstanding = m.outstanding.saturating_sub(1);
        let release = match result {
            Ok(AllocResponse::Renewed(l))
                if m.leases.get(&part).map(|x| &x.lease_id) == Some(&l.lease_id) =>
            {
                m.leases.insert(part, l);
                m.res.confirmed(part);
                Vec::new()
            }
            Ok(AllocResponse::Denied(d)) => m.res.confirm_refused(part, d.to_string()),
            other => m.res.confirm_refused(part, format!("{other:?}")),
        };
        let release: Vec<(NodeId, LeaseId)> = release
            .into_iter()
            .filter_map(|l| m.res.node_of(&l).cloned().map(|n| (n, l)))
            .collect();
        let done = m.outstanding == 0;
        for (node, lease) in release {
            self.release_on(&node, &lease, None);
        }
        if done {
            self.finish_multi(id);
        }
    }

    /// Every answer is in: hold the confirmed leases (renewed like any
    /// other) and answer the caller.
    fn finish_multi(&mut self, id: &str) {
        let Some(m) = self.multis.get_mut(id) else {
            return;
        };
        let confirmed: Vec<Lease> = m
            .res
            .parts
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| matches!(s, PartStatus::Confirmed(_)))
            .filter_map(|(i, _)| m.leases.get(&i).cloned())
            .collect();
        // A plan that placed only some parts is partial, however well
        // those went.
        if m.partial_plan && m.res.status == MultiStatus::Confirmed {
            m.res.status = MultiStatus::Partial;
        }
        let reply = m.reply.take();
        let status = m.res.status;
        for lease in confirmed {
            let owner_name = self.name_of(&lease.node_id);
            self.hold(lease, owner_name, None);
        }
        let view = self.multi_view(id);
        info!(multi = %id, status = ?status, "multi-node request settled");
        if let (Some(reply), Some(view)) = (reply, view) {
            let answer = match status {
                MultiStatus::Confirmed | MultiStatus::Partial => Ok(view),
                _ => Err(NodeError::NoCapacity {
                    refusals: view
                        .parts
                        .iter()
                        .filter(|p| p.status == "refused")
                        .map(|p| Refusal {
                            node_id: p.node_id.clone(),
                            node_name: p.node_name.clone(),
                            reason: DenyReason::InsufficientCapacity,
                            message: p.message.clone().unwrap_or_default(),
                        })
                        .collect(),
                    excluded: Vec::new(),
                }),
            };
            let _ = reply.send(answer);
        }
        if self.multis.len() > MAX_MULTIS {
            let oldest = self
                .multis
                .iter()
                .filter(|(_, m)| m.reply.is_none())
                .min_by_key(|(_, m)| m.res.created_at_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.multis.remove(&k);
            }
        }
        self.persist_requester();
    }

    /// Holds that were never confirmed by their deadline: release them.
    pub(super) fn expire_multis(&mut self, now: u64) {
        let mut to_release = Vec::new();
        let mut settled = Vec::new();
        for (id, m) in self.multis.iter_mut() {
            if m.res.status == MultiStatus::Pending && m.res.hold_deadline_ms <= now {
                for l in m.res.expire(now) {
                    if let Some(n) = m.res.node_of(&l) {
                        to_release.push((n.clone(), l));
                    }
                }
                if m.reply.is_some() {
                    settled.push(id.clone());
                }
            }
        }
        for (n, l) in to_release {
            self.release_on(&n, &l, None);
        }
        for id in settled {
            self.finish_multi(&id);
        }
    }

    /// The API view of one multi-node allocation.
    pub(super) fn multi_view(&self, id: &str) -> Option<MultiAllocation> {
        let m = self.multis.get(id)?;
        Some(MultiAllocation {
            id: m.res.id.clone(),
            status: m.res.status,
            partial_plan: m.partial_plan,
            parts: m
                .res
                .parts
                .iter()
                .map(|(node, s)| {
                    let (status, allocation_id, message) = match s {
                        PartStatus::Planned => ("planned", None, None),
                        PartStatus::Held(l) => ("held", Some(l.0.clone()), None),
                        PartStatus::Confirmed(l) => ("confirmed", Some(l.0.clone()), None),
                        PartStatus::Refused(why) => ("refused", None, Some(why.clone())),
                        PartStatus::Released => ("released", None, None),
                    };
                    MultiPart {
                        node_id: node.clone(),
                        node_name: self.name_of(node),
                        status: status.to_owned(),
                        allocation_id,
                        message,
                    }
                })
                .collect(),
        })
    }

    pub(super) fn multi_views(&self) -> Vec<MultiAllocation> {
        let mut out: Vec<MultiAllocation> = self
            .multis
            .keys()
            .filter_map(|k| self.multi_view(k))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}
