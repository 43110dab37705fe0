//! The requester side: ranking candidates and walking them (late binding)
//! until one grants.

use super::*;

impl EventLoop {
    pub(super) fn on_request(
        &mut self,
        req: AllocationRequest,
        reply: oneshot::Sender<Result<Allocation, NodeError>>,
    ) {
        let now = now_ms();
        if req.required_resources.is_empty() {
            let _ = reply.send(Err(NodeError::BadRequest(
                "required_resources asks for nothing; set at least one of cpu_cores, memory_mb, \
                 disk_mb, gpu_count, custom"
                    .into(),
            )));
            return;
        }
        if let Err(why) = validate_request(&req) {
            let _ = reply.send(Err(NodeError::BadRequest(why)));
            return;
        }
        let lease_ms = match req.timeout_secs {
            Some(0) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "timeout_secs must be > 0".into(),
                )));
                return;
            }
            Some(s) => s.saturating_mul(1000),
            None => self.cfg.default_lease.as_millis() as u64,
        };
        let release_at_ms = match req.duration_secs {
            Some(0) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "duration_secs must be > 0".into(),
                )));
                return;
            }
            Some(s) => Some(now.saturating_add(s.saturating_mul(1000))),
            None => None,
        };
        let (mut candidates, excluded) = self.view.candidates(&req.required_resources, now);
        let mut excluded: Vec<Excluded> = excluded
            .into_iter()
            .map(|(id, why)| Excluded {
                node_name: self.name_of(&id),
                node_id: id,
                why,
            })
            .collect();
        if let Some(target) = &req.node_id {
            candidates.retain(|c| {
                let keep = &c.node_id.0 == target || &c.name == target;
                if !keep {
                    excluded.push(Excluded {
                        node_id: c.node_id.clone(),
                        node_name: c.name.clone(),
                        why: format!("not the requested node {target}"),
                    });
                }
                keep
            });
        }
        if let Err(e) = self.scope_candidates(&req, &mut candidates, &mut excluded) {
            let _ = reply.send(Err(e));
            return;
        }
        let mut strategy = self.strategy.clone();
        if let Some(s) = req.strategy {
            strategy.strategy = s;
        }
        self.seed_counter = self.seed_counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let seed = self.seed_counter ^ rand::random::<u64>();
        let ranked = self.placer.rank(
            &candidates,
            &strategy,
            &req.required_resources,
            &self.cfg.location,
            seed,
        );
        debug!(strategy = %strategy.strategy, candidates = ranked.len(), "placing request");
        let placement = Placement {
            attempt: Attempt::new(ranked, self.cfg.max_tries),
            request_id: req
                .request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            req,
            lease_ms,
            release_at_ms,
            excluded,
            reply,
        };
        let id = self.next_placement;
        self.next_placement += 1;
        self.drive(id, placement);
    }

    /// Ask the next candidate. Local candidates are answered inline.
    pub(super) fn drive(&mut self, id: u64, mut p: Placement) {
        loop {
            let Some(node) = p.attempt.next() else {
                let refusals = self.refusals(p.attempt);
                // A request aimed at one node that its policy refused gets
                // the owner's own answer: forbidden.
                if let (Some(_), [only]) = (&p.req.node_id, refusals.as_slice()) {
                    if only.reason == DenyReason::Forbidden {
                        let denial = Denial::new(
                            DenyReason::Forbidden,
                            format!("{} refused: {}", only.node_name, only.message),
                        );
                        let _ = p.reply.send(Err(NodeError::Denied(denial)));
                        return;
                    }
                }
                let _ = p.reply.send(Err(NodeError::NoCapacity {
                    refusals,
                    excluded: p.excluded,
                }));
                return;
            };
            if node == self.local_id {
                let input = AllocateInput {
                    lease_id: LeaseId(uuid::Uuid::new_v4().to_string()),
                    request_id: p.request_id.clone(),
                    holder: self.local_id.clone(),
                    req: p.req.required_resources.clone(),
                    task_type: p.req.task_type.clone(),
                    priority: p.req.priority,
                    lease_ms: p.lease_ms,
                };
                match self.grant(input, now_ms()) {
                    Ok(lease) => return self.finish_placement(p, lease),
                    Err(d) => p.attempt.refused(node, d),
                }
                continue;
            }
            let Some(peer) = peer_id_of(&node) else {
                p.attempt
                    .refused(node, Denial::new(DenyReason::Unreachable, "not a peer id"));
                continue;
            };
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Allocate {
                    request_id: p.request_id.clone(),
                    req: p.req.required_resources.clone(),
                    task_type: p.req.task_type.clone(),
                    priority: p.req.priority,
                    lease_ms: p.lease_ms,
                }),
            );
            self.pending.insert(
                rid,
                Pending::Place {
                    placement: id,
                    node,
                },
            );
            self.placements.insert(id, p);
            return;
        }
    }

    pub(super) fn finish_placement(&mut self, p: Placement, lease: Lease) {
        let owner_name = self.name_of(&lease.node_id);
        let rec = HeldRecord {
            lease: lease.clone(),
            owner_name: owner_name.clone(),
            release_at_ms: p.release_at_ms,
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
        let mut alloc = Allocation::from_lease(&lease, &owner_name, p.release_at_ms);
        alloc.refusals = self.refusals(p.attempt);
        info!(lease = %lease.lease_id, owner = %owner_name, "allocation placed");
        if p.reply.send(Ok(alloc)).is_err() {
            // Whoever asked is gone (an HTTP client that timed out): nobody
            // knows this lease's id, so give it back rather than hold it.
            warn!(lease = %lease.lease_id, "the requester went away before the grant arrived; releasing it");
            self.release_held(&lease.lease_id, None);
        }
    }

    /// The refusals of an attempt, with node names, for the API.
    pub(super) fn refusals(&self, attempt: Attempt) -> Vec<Refusal> {
        attempt
            .into_refusals()
            .into_iter()
            .map(|(n, d)| Refusal {
                node_name: self.name_of(&n),
                node_id: n,
                reason: d.reason,
                message: d.message,
            })
            .collect()
    }

    pub(super) fn name_of(&self, id: &NodeId) -> String {
        if id == &self.local_id {
            return self.cfg.name.clone();
        }
        self.view
            .get(id)
            .map(|e| e.ann.name.clone())
            .unwrap_or_default()
    }
}
