//! The owner side of `/lanswarm/alloc/2`: admitting, renewing and releasing
//! leases on the ledger, group commit, deferred writes, and the answers to
//! our own outbound requests.

use super::*;
use crate::core::roles::Permission;

impl EventLoop {
    pub(super) fn on_alloc_event(
        &mut self,
        ev: request_response::Event<Frame<AllocRequest>, AllocReply>,
    ) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                Frame::Valid(r) => self.on_alloc_request(peer, r, channel),
                Frame::Invalid(why) => self.penalise(peer, format!("bad allocation frame: {why}")),
            },
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let now = now_ms();
                self.view.observe_free(
                    &node_id_of(&peer),
                    response.free,
                    response.active_leases,
                    now,
                );
                self.on_alloc_response(request_id, Ok(response.answer));
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.on_alloc_response(request_id, Err(error.to_string())),
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.penalise(peer, format!("bad allocation frame: {e}")),
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "allocation request failed")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Owner side: answer a peer's request, in one step on this loop.
    pub(super) fn on_alloc_request(
        &mut self,
        peer: PeerId,
        request: AllocRequest,
        channel: ResponseChannel<AllocReply>,
    ) {
        let holder = node_id_of(&peer);
        let now = now_ms();
        let asked = history::asked(&request);
        let response = match request {
            AllocRequest::Allocate {
                request_id,
                req,
                task_type,
                priority,
                lease_ms,
                wait_ms,
                duration_ms,
                preempt,
                constraints,
            } => {
                if let Err(denial) = self
                    .admit(&holder)
                    .and_then(|()| self.permit(&holder, Permission::Allocate))
                {
                    debug!(%holder, reason = %denial.message, "request refused by access policy or role");
                    self.record_refusal(&holder, asked, &denial);
                    AllocResponse::Denied(denial)
                } else if request_id.len() > 128 || task_type.len() > 128 {
                    let denial = Denial::new(
                        DenyReason::BadRequest,
                        "request_id and task_type are limited to 128 bytes",
                    );
                    self.record_refusal(&holder, asked, &denial);
                    AllocResponse::Denied(denial)
                } else {
                    // A role without `preempt` is served as if it had not
                    // asked to preempt, and a refusal says so.
                    let no_preempt = if preempt {
                        self.permit(&holder, Permission::Preempt).err()
                    } else {
                        None
                    };
                    let args = sched::AllocateArgs {
                        request_id,
                        req,
                        task_type,
                        priority,
                        lease_ms,
                        wait_ms,
                        duration_ms,
                        preempt: preempt && no_preempt.is_none(),
                        constraints,
                    };
                    match self.decide_allocate(holder, args) {
                        // Answered by `flush_grants`, once it is durable.
                        sched::OwnerAnswer::Granted(lease) => {
                            return self
                                .unanswered
                                .push((AllocResponse::Granted(lease), channel))
                        }
                        sched::OwnerAnswer::Now(AllocResponse::Denied(mut d)) => {
                            if let Some(why) = no_preempt {
                                d.message = format!(
                                    "{}; preemption was not tried: {}",
                                    d.message, why.message
                                );
                            }
                            AllocResponse::Denied(d)
                        }
                        sched::OwnerAnswer::Now(answer) => answer,
                    }
                }
            }
            AllocRequest::Renew { lease_id, lease_ms } => {
                // Roles are checked again at each renewal: a holder whose
                // role lost both `allocate` and `reserve` keeps its lease
                // only until its term ends.
                let allowed = self
                    .permit(&holder, Permission::Allocate)
                    .or_else(|_| self.permit(&holder, Permission::Reserve));
                match allowed.and_then(|()| self.sched.renew(&lease_id, &holder, lease_ms, now)) {
                    Ok(lease) => {
                        return self
                            .unanswered
                            .push((AllocResponse::Renewed(lease), channel))
                    }
                    Err(d) => AllocResponse::Denied(d),
                }
            }
            AllocRequest::Release { lease_id } => {
                match self.owner_release(&lease_id, Some(&holder)) {
                    Ok(existed) => AllocResponse::Released { lease_id, existed },
                    Err(d) => AllocResponse::Denied(d),
                }
            }
            AllocRequest::Reserve {
                request_id,
                req,
                task_type,
                priority,
                start_ms,
                end_ms,
                condition,
                shared_with,
            } => {
                let args = sched::ReserveArgs {
                    req,
                    task_type,
                    priority,
                    start_ms,
                    end_ms,
                    condition,
                    shared_with,
                };
                if let Err(denial) = self
                    .admit(&holder)
                    .and_then(|()| self.permit(&holder, Permission::Reserve))
                {
                    self.record_refusal(&holder, asked, &denial);
                    AllocResponse::Denied(denial)
                } else if request_id.len() > 128 || args.task_type.len() > 128 {
                    let denial = Denial::new(
                        DenyReason::BadRequest,
                        "request_id and task_type are limited to 128 bytes",
                    );
                    self.record_refusal(&holder, asked, &denial);
                    AllocResponse::Denied(denial)
                } else {
                    self.decide_reserve(holder, args)
                }
            }
            AllocRequest::Draw {
                reservation,
                request_id,
                req,
                task_type,
                lease_ms,
                duration_ms,
            } => {
                if let Err(denial) = self
                    .admit(&holder)
                    .and_then(|()| self.permit(&holder, Permission::Allocate))
                {
                    self.record_refusal(&holder, asked, &denial);
                    AllocResponse::Denied(denial)
                } else if request_id.len() > 128
                    || task_type.len() > 128
                    || reservation.0.len() > 128
                {
                    let denial = Denial::new(
                        DenyReason::BadRequest,
                        "request_id, task_type and the reservation id are limited to 128 bytes",
                    );
                    self.record_refusal(&holder, asked, &denial);
                    AllocResponse::Denied(denial)
                } else {
                    let args = sched::DrawArgs {
                        reservation,
                        request_id,
                        req,
                        task_type,
                        lease_ms,
                        duration_ms,
                    };
                    match self.decide_draw(holder, args) {
                        sched::OwnerAnswer::Granted(lease) => {
                            return self
                                .unanswered
                                .push((AllocResponse::Granted(lease), channel))
                        }
                        sched::OwnerAnswer::Now(answer) => answer,
                    }
                }
            }
            AllocRequest::PostEvent { name } => {
                if let Err(denial) = self
                    .admit(&holder)
                    .and_then(|()| self.permit(&holder, Permission::Reserve))
                {
                    AllocResponse::Denied(denial)
                } else if let Err(why) = crate::core::calendar::validate_event_name(&name) {
                    AllocResponse::Denied(Denial::new(DenyReason::BadRequest, why))
                } else {
                    let met = self.owner_post_event(&name, Some(&holder));
                    AllocResponse::EventPosted { met }
                }
            }
            AllocRequest::Notice(notice) => {
                self.on_notice(&holder, notice);
                AllocResponse::Ack
            }
        };
        if let AllocResponse::Denied(d) = &response {
            debug!(%peer, reason = %d.reason, message = %d.message, "request denied");
        }
        self.reply(channel, response);
    }

    /// Answer an allocation request, with our free capacity right after it.
    pub(super) fn reply(&mut self, channel: ResponseChannel<AllocReply>, answer: AllocResponse) {
        self.note_owner_answer(&answer);
        let reply = AllocReply {
            answer,
            free: self.sched.ledger().free(),
            active_leases: self.sched.ledger().len() as u32,
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .alloc
            .send_response(channel, reply);
    }

    /// Group commit: write every grant and renewal admitted since the last
    /// flush (and the deferred writes) in one transaction, then answer
    /// them. Nothing is answered before it is durable (invariant I2).
    pub(super) fn flush_grants(&mut self) {
        if self.unanswered.is_empty() {
            return;
        }
        let answers = std::mem::take(&mut self.unanswered);
        let mut batch = std::mem::take(&mut self.deferred);
        let deferred_grants = batch.put_granted.len();
        let deferred_history = batch.history.len();
        for (resp, _) in &answers {
            if let AllocResponse::Granted(l) | AllocResponse::Renewed(l) = resp {
                batch.put_granted.push(l.clone());
            }
            if let AllocResponse::Granted(l) = resp {
                batch.history.push(self.granted_record(l, ""));
            }
        }
        let result = self.store.apply(&batch);
        if let Err(e) = &result {
            error!(error = %e, "cannot write leases; refusing the grants");
            batch.put_granted.truncate(deferred_grants);
            batch.history.truncate(deferred_history);
            self.deferred = batch;
        }
        for (resp, channel) in answers {
            let resp = match (&result, resp) {
                (Ok(()), AllocResponse::Granted(l)) => {
                    log_grant(&l);
                    self.note_grant(self.grant_source(&l));
                    self.schedule_announce();
                    AllocResponse::Granted(l)
                }
                (Ok(()), resp) => resp,
                (Err(e), resp) => {
                    if let AllocResponse::Granted(l) = resp {
                        let _ = self.sched.release(&l.lease_id, None, now_ms());
                    }
                    AllocResponse::Denied(Denial::new(DenyReason::StorageError, e.to_string()))
                }
            };
            self.reply(channel, resp);
        }
    }

    /// Write what could wait (releases, expiries, the holder's records).
    pub(super) fn flush_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        if let Err(e) = self.store.apply(&self.deferred) {
            error!(error = %e, "cannot write to the store; will retry");
            return;
        }
        self.deferred = WriteBatch::default();
    }

    pub(super) fn forget_granted(&mut self, leases: &[Lease]) {
        if leases.is_empty() {
            return;
        }
        self.deferred
            .delete_granted
            .extend(leases.iter().map(|l| l.lease_id.clone()));
        self.schedule_announce();
    }

    pub(super) fn on_alloc_response(
        &mut self,
        id: OutboundRequestId,
        result: Result<AllocResponse, String>,
    ) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match pending {
            Pending::Place { placement, node } => {
                self.breaker_alloc_outcome(&node, &result);
                let Some(mut p) = self.placements.remove(&placement) else {
                    return;
                };
                match result {
                    Ok(AllocResponse::Granted(lease)) => {
                        let expected = &node;
                        if &lease.node_id != expected
                            || lease.holder != self.local_id
                            || lease.lease_id.0.is_empty()
                        {
                            p.attempt.refused(
                                node.clone(),
                                Denial::new(
                                    DenyReason::BadRequest,
                                    "owner answered with a lease that is not ours",
                                ),
                            );
                        } else {
                            self.finish_placement(p, lease);
                            return;
                        }
                    }
                    Ok(AllocResponse::Denied(d)) => p.attempt.refused(node, d),
                    Ok(AllocResponse::Queued { ticket, position }) if !ticket.0.is_empty() => {
                        return self.on_queued(p, node, ticket, position);
                    }
                    Ok(other) => p.attempt.refused(
                        node,
                        Denial::new(
                            DenyReason::BadRequest,
                            format!("unexpected answer {other:?}"),
                        ),
                    ),
                    Err(e) => p
                        .attempt
                        .refused(node, Denial::new(DenyReason::Unreachable, e)),
                }
                self.drive(placement, p);
            }
            Pending::Renew { lease_id } => self.on_renewed(&lease_id, result),
            Pending::Notice => {
                if let Err(e) = result {
                    debug!(error = %e, "notice not delivered; the holder learns at its next renewal");
                }
            }
            Pending::Reserve { reserving, node } => {
                self.on_reserve_response(reserving, node, result)
            }
            Pending::PostEvent { post, node } => self.on_post_event_response(post, node, result),
            Pending::MultiHold { multi, part, node } => {
                self.breaker_alloc_outcome(&node, &result);
                self.on_multi_hold(&multi, part, node, result)
            }
            Pending::MultiConfirm { multi, part } => self.on_multi_confirm(&multi, part, result),
            Pending::Release { lease_id, reply } => {
                let confirmed = matches!(result, Ok(AllocResponse::Released { .. }));
                if let Err(e) = &result {
                    warn!(lease = %lease_id, error = %e, "owner did not confirm release; the lease will expire");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(ReleaseOutcome {
                        allocation_id: lease_id.0,
                        owner_confirmed: confirmed,
                    }));
                }
            }
        }
    }
}
