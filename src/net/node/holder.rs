//! The holder side: renewing held leases, releasing them, and the periodic
//! maintenance tick.

use super::*;

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
        if self.held.remove(lease_id).is_some() {
            self.deferred.delete_held.push(lease_id.clone());
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
        self.drop_held(lease_id);
        self.release_on(&owner, lease_id, reply);
    }

    /// Give back a lease, ticket or reservation of ours on `owner`: inline
    /// when we are the owner, else over `/lanswarm/alloc/1`. `reply`, if
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
        self.sched_tick(now);
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
            warn!(lease = %id, "lease expired before it could be renewed; dropping it");
            self.drop_held(&id);
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
    }
}
