//! The holder side: renewing held leases, releasing them, and the periodic
//! maintenance tick.

use super::*;
use crate::core::history::HistoryKind;

impl EventLoop {
    pub(super) fn on_renewed(&mut self, lease_id: &LeaseId, result: Result<AllocResponse, String>) {
        let Some(h) = self.held.get_mut(lease_id) else {
            return;
        };
        h.renewing = false;
        match result {
            Ok(AllocResponse::Renewed(lease)) if lease.lease_id == *lease_id => {
                h.rec.lease.expires_at_ms = lease.expires_at_ms;
                h.renew_at_ms = renew_time(&lease);
                let rec = h.rec.clone();
                self.deferred.put_held.push(rec);
            }
            Ok(AllocResponse::Denied(d))
                if matches!(d.reason, DenyReason::UnknownLease | DenyReason::NotHolder) =>
            {
                warn!(lease = %lease_id, reason = %d.reason, "lease lost: the owner no longer has it");
                self.record_held_end(
                    lease_id,
                    HistoryKind::Lost,
                    Some(d.reason.code()),
                    "the owner no longer has it",
                );
                self.drop_held(lease_id);
            }
            other => {
                // Retry soon; the lease is lost only once it has expired.
                debug!(lease = %lease_id, ?other, "renewal failed; retrying");
                h.renew_at_ms = now_ms() + 1_000;
            }
        }
    }

    pub(super) fn drop_held(&mut self, lease_id: &LeaseId) {
        self.replace_on_loss.remove(lease_id);
        if self.held.remove(lease_id).is_some() {
            self.deferred.delete_held.push(lease_id.clone());
        }
    }

    /// A lease we hold is lost: its owner went offline or left, or it ran
    /// out before it could be renewed. Reported `lost`; placed again
    /// elsewhere if it was requested with `replace`.
    fn lose_held(&mut self, lease_id: &LeaseId, why: String) {
        let Some(h) = self.held.get(lease_id) else {
            return;
        };
        let owner = h.rec.lease.node_id.clone();
        let mut a = Allocation::from_lease(&h.rec.lease, &h.rec.owner_name, h.rec.release_at_ms);
        a.status = crate::handle::AllocationStatus::Lost;
        a.ended_reason = Some(why.clone());
        warn!(lease = %lease_id, owner = %h.rec.owner_name, %why, "allocation lost");
        self.record_held_end(
            lease_id,
            HistoryKind::Lost,
            Some(history::lost_reason(&why)),
            &why,
        );
        let replace = self.replace_on_loss.remove(lease_id);
        self.drop_held(lease_id);
        self.remember_ended_allocation(a);
        if let Some(mut req) = replace {
            req.avoid.push(owner.0.clone());
            req.request_id = None;
            if req.node_id.as_deref() == Some(owner.0.as_str()) {
                req.node_id = None;
            }
            let (tx, rx) = oneshot::channel::<Result<Allocation, NodeError>>();
            let back = self.replaced_tx.clone();
            let lost = lease_id.clone();
            tokio::spawn(async move {
                let result = match rx.await {
                    Ok(Ok(a)) => Ok(a),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the node stopped".to_owned()),
                };
                let _ = back.send((lost, result));
            });
            self.on_request(req, tx);
        }
    }

    /// A replacement for lost lease `lost` was placed (or not).
    pub(super) fn on_replaced(&mut self, lost: LeaseId, result: Result<Allocation, String>) {
        let note = match &result {
            Ok(a) => {
                info!(lost = %lost, replacement = %a.allocation_id, owner = %a.node_name, "lost allocation replaced");
                None
            }
            Err(e) => {
                warn!(lost = %lost, error = %e, "lost allocation could not be replaced");
                Some(format!("; not replaced: {e}"))
            }
        };
        if let Some(a) = self.ended.iter_mut().find(|a| a.allocation_id == lost.0) {
            match result {
                Ok(r) => a.replaced_by = Some(r.allocation_id),
                Err(_) => {
                    if let (Some(reason), Some(n)) = (a.ended_reason.as_mut(), note) {
                        reason.push_str(&n);
                    }
                }
            }
        }
    }

    /// Release a lease we hold: locally if we own it too, else ask the owner.
    pub(super) fn release_held(
        &mut self,
        lease_id: &LeaseId,
        reply: Option<oneshot::Sender<Result<ReleaseOutcome, NodeError>>>,
    ) {
        let Some(h) = self.held.get(lease_id) else {
            return;
        };
        let owner = h.rec.lease.node_id.clone();
        self.record_held_end(
            lease_id,
            HistoryKind::Release,
            None,
            "released by this node",
        );
        self.drop_held(lease_id);
        self.release_on(&owner, lease_id, reply);
    }

    /// Give back a lease, ticket or reservation of ours on `owner`: inline
    /// when we are the owner, else over `/lanswarm/alloc/2`. `reply`, if
    /// any, hears whether the owner confirmed.
    pub(super) fn release_on(
        &mut self,
        owner: &NodeId,
        lease_id: &LeaseId,
        reply: Option<oneshot::Sender<Result<ReleaseOutcome, NodeError>>>,
    ) {
        let answer = |reply: Option<oneshot::Sender<_>>, confirmed| {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(ReleaseOutcome {
                    allocation_id: lease_id.0.clone(),
                    owner_confirmed: confirmed,
                }));
            }
        };
        if owner == &self.local_id {
            let me = self.local_id.clone();
            let _ = self.owner_release(lease_id, Some(&me));
            return answer(reply, true);
        }
        let Some(peer) = peer_id_of(owner) else {
            return answer(reply, false);
        };
        let rid = self.swarm.behaviour_mut().alloc.send_request(
            &peer,
            Frame::Valid(AllocRequest::Release {
                lease_id: lease_id.clone(),
            }),
        );
        self.pending.insert(
            rid,
            Pending::Release {
                lease_id: lease_id.clone(),
                reply,
            },
        );
    }

    /// Periodic work: expire granted leases, renew held ones, release held
    /// ones whose duration is over, prune silent peers.
    pub(super) fn maintain(&mut self) {
        let now = now_ms();
        self.flush_deferred();
        self.maintain_history(now);
        self.account(now);
        self.sched_tick(now);
        self.adaptive_step(now);
        self.maintain_tasks(now);
        self.prune_tickets(now);
        self.expire_multis(now);
        let due: Vec<LeaseId> = self
            .held
            .iter()
            .filter(|(_, h)| h.rec.release_at_ms.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            info!(lease = %id, "allocation duration over; releasing");
            self.release_held(&id, None);
        }
        let lost: Vec<LeaseId> = self
            .held
            .iter()
            .filter(|(_, h)| h.rec.lease.expires_at_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            self.lose_held(
                &id,
                "the lease ran out before it could be renewed".to_owned(),
            );
        }
        // Leases on owners the failure detector gave up on: lost once the
        // owner stayed offline (or away after a goodbye) for
        // LOST_AFTER_OFFLINE_MS. Its leases are durable, so an owner that
        // restarts sooner keeps them, and the renewals go on.
        let mut down: BTreeMap<NodeId, (NodeStatus, u64)> = BTreeMap::new();
        for h in self.held.values() {
            let owner = &h.rec.lease.node_id;
            if owner == &self.local_id || down.contains_key(owner) {
                continue;
            }
            if let Some(st @ (NodeStatus::Offline | NodeStatus::Left)) =
                self.view.status(owner, now)
            {
                let since = *self.owner_down_since.entry(owner.clone()).or_insert(now);
                down.insert(owner.clone(), (st, since));
            }
        }
        self.owner_down_since.retain(|n, _| down.contains_key(n));
        let gone: Vec<(LeaseId, String)> = self
            .held
            .iter()
            .filter_map(|(id, h)| {
                let (status, since) = down.get(&h.rec.lease.node_id)?;
                if now.saturating_sub(*since) < LOST_AFTER_OFFLINE_MS {
                    return None;
                }
                let word = match status {
                    NodeStatus::Left => "left",
                    _ => "went offline",
                };
                Some((
                    id.clone(),
                    format!(
                        "its owner {} {word}; the owner takes the lease back when it expires there",
                        h.rec.owner_name
                    ),
                ))
            })
            .collect();
        for (id, why) in gone {
            self.lose_held(&id, why);
        }
        let to_renew: Vec<(LeaseId, NodeId, u64)> = self
            .held
            .iter()
            .filter(|(_, h)| !h.renewing && h.renew_at_ms <= now)
            .map(|(id, h)| {
                (
                    id.clone(),
                    h.rec.lease.node_id.clone(),
                    h.rec.lease.lease_ms,
                )
            })
            .collect();
        for (id, owner, lease_ms) in to_renew {
            if owner == self.local_id {
                let me = self.local_id.clone();
                let result = match self.sched.renew(&id, &me, lease_ms, now) {
                    Ok(l) => {
                        self.deferred.put_granted.push(l.clone());
                        AllocResponse::Renewed(l)
                    }
                    Err(d) => AllocResponse::Denied(d),
                };
                self.on_renewed(&id, Ok(result));
                continue;
            }
            let Some(peer) = peer_id_of(&owner) else {
                continue;
            };
            if let Some(h) = self.held.get_mut(&id) {
                h.renewing = true;
            }
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Renew {
                    lease_id: id.clone(),
                    lease_ms,
                }),
            );
            self.pending.insert(rid, Pending::Renew { lease_id: id });
        }
        self.lift_bans(now);
        let fresh = self.view.config().offline_after_ms;
        self.other_instances
            .retain(|_, (_, at)| now.saturating_sub(*at) < fresh);
        for id in self.view.prune(now) {
            self.signed.remove(&id);
            debug!(peer = %id, "forgot silent peer");
        }
        self.refresh_gauges();
    }
}
