//! The requester side: ranking candidates and walking them (late binding)
//! until one grants.

use super::*;
use crate::core::history::{HistoryKind, Outcome as HistoryOutcome, Role as HistoryRole};

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
        if req.reservation.is_some() {
            return self.on_draw_request(req, lease_ms, release_at_ms, reply);
        }
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
        self.task_filters(&req, &mut candidates, &mut excluded);
        self.breaker_filter(&mut candidates, &mut excluded, now);
        if let Err(e) = self.scope_candidates(&req, &mut candidates, &mut excluded) {
            self.note_allocation_error(now, &e);
            self.record_request_failed(&req, &e);
            let _ = reply.send(Err(e));
            return;
        }
        if let Err(e) = self.apply_constraints(&req, &mut candidates, &mut excluded, now) {
            self.note_allocation_error(now, &e);
            self.record_request_failed(&req, &e);
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
        let mut ranked = ranked;
        self.loaded_first(&req, &mut ranked);
        // Full nodes only: a node already on the list is asked there,
        // without preemption.
        let last_resort: Vec<NodeId> = self
            .preemption_candidates(&req)
            .into_iter()
            .filter(|n| !ranked.contains(n))
            .collect();
        ranked.extend(last_resort.iter().cloned());
        debug!(strategy = %strategy.strategy, candidates = ranked.len(), "placing request");
        let placement = Placement {
            attempt: Attempt::new(ranked, self.cfg.max_tries),
            request_id: req
                .request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            wait_ms: req.wait_secs.unwrap_or(0).saturating_mul(1000),
            created_ms: now,
            queue_tried: false,
            preempt_at: last_resort.into_iter().collect(),
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

    /// A request to draw from a pooled reservation: ask its owner only.
    fn on_draw_request(
        &mut self,
        mut req: AllocationRequest,
        lease_ms: u64,
        release_at_ms: Option<u64>,
        reply: oneshot::Sender<Result<Allocation, NodeError>>,
    ) {
        let now = now_ms();
        let rid = LeaseId(
            req.reservation
                .clone()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        );
        if rid.0.is_empty() || rid.0.len() > 128 {
            let _ = reply.send(Err(NodeError::BadRequest(
                "reservation: give the id of a pooled reservation (at most 128 bytes)".into(),
            )));
            return;
        }
        let known = if let Some(h) = self.held_reservations.get(&rid) {
            Some(h.owner.clone())
        } else if self.sched.calendar().get(&rid).is_some() {
            Some(self.local_id.clone())
        } else {
            None
        };
        let named = req.node_id.as_deref().map(|n| self.resolve_node(n));
        let node = match (known, named) {
            (Some(k), Some(Some(n))) if k != n => {
                let _ = reply.send(Err(NodeError::BadRequest(format!(
                    "reservation {rid} is on {}, not on {}",
                    self.name_of(&k),
                    self.name_of(&n)
                ))));
                return;
            }
            (Some(k), _) => k,
            (None, Some(Some(n))) => n,
            (None, Some(None)) => {
                let _ = reply.send(Err(NodeError::NotFound(format!(
                    "no known node {}",
                    req.node_id.clone().unwrap_or_default()
                ))));
                return;
            }
            (None, None) => {
                let _ = reply.send(Err(NodeError::BadRequest(format!(
                    "reservation {rid} was not made here: name its owner with node_id"
                ))));
                return;
            }
        };
        // Aimed at its owner: a refusal comes back as the owner's own.
        req.node_id = Some(node.0.clone());
        let placement = Placement {
            attempt: Attempt::new(vec![node], 1),
            request_id: req
                .request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            wait_ms: 0,
            created_ms: now,
            queue_tried: true,
            preempt_at: Default::default(),
            req,
            lease_ms,
            release_at_ms,
            excluded: Vec::new(),
            reply,
        };
        let id = self.next_placement;
        self.next_placement += 1;
        self.drive(id, placement);
    }

    /// Keep the nodes a task can run on: those offering the template, and
    /// none the request avoids.
    fn task_filters(
        &self,
        req: &AllocationRequest,
        candidates: &mut Vec<crate::core::placement::Candidate>,
        excluded: &mut Vec<Excluded>,
    ) {
        candidates.retain(|c| {
            let why = if req.avoid.iter().any(|a| a == &c.node_id.0 || a == &c.name) {
                Some("avoided by the request".to_owned())
            } else if let Some(t) = &req.template {
                let offers = if c.is_local {
                    self.tasks_offer(t)
                } else {
                    self.view
                        .get(&c.node_id)
                        .is_some_and(|e| e.ann.templates.contains(t))
                };
                (!offers).then(|| format!("offers no task template {t:?}"))
            } else {
                None
            };
            if let Some(why) = why {
                excluded.push(Excluded {
                    node_id: c.node_id.clone(),
                    node_name: c.name.clone(),
                    why,
                });
                return false;
            }
            true
        });
    }

    /// Among ranked nodes, those with a preferred model already loaded
    /// come first (the strategy's order kept within each part).
    fn loaded_first(&self, req: &AllocationRequest, ranked: &mut [NodeId]) {
        let wanted = &req.required_resources.preferred_models;
        if wanted.is_empty() {
            return;
        }
        let loaded = |n: &NodeId| {
            let list = if n == &self.local_id {
                self.tasks_loaded()
            } else {
                match self.view.get(n) {
                    Some(e) => e.ann.loaded_models.clone(),
                    None => return false,
                }
            };
            wanted.iter().any(|m| list.contains(m))
        };
        ranked.sort_by_key(|n| !loaded(n));
    }

    /// Ask the next candidate. Local candidates are answered inline.
    pub(super) fn drive(&mut self, id: u64, mut p: Placement) {
        {
            let Some(node) = p.attempt.next() else {
                if p.wait_ms > 0 && !p.queue_tried {
                    p.queue_tried = true;
                    if let Some(node) = self.queue_target(&p) {
                        return self.ask(id, p, node, true);
                    }
                }
                let original: Option<Denial> = match p.attempt.refusals() {
                    [(_, d)] => Some(d.clone()),
                    _ => None,
                };
                let refusals = self.refusals(p.attempt);
                // A request aimed at one node gets that owner's own answer
                // when waiting elsewhere would not help (forbidden, quota,
                // busy, bad request).
                if let (Some(_), [only]) = (&p.req.node_id, refusals.as_slice()) {
                    if matches!(
                        only.reason,
                        DenyReason::Forbidden
                            | DenyReason::QuotaExceeded
                            | DenyReason::UnknownLease
                            | DenyReason::Busy
                            | DenyReason::Unsatisfiable
                            | DenyReason::BadRequest
                    ) {
                        let mut denial = original
                            .unwrap_or_else(|| Denial::new(only.reason, only.message.clone()));
                        denial.message = format!("{} refused: {}", only.node_name, only.message);
                        let err = NodeError::Denied(denial);
                        self.note_allocation_error(p.created_ms, &err);
                        self.record_request_failed(&p.req, &err);
                        let _ = p.reply.send(Err(err));
                        return;
                    }
                }
                let err = NodeError::NoCapacity {
                    refusals,
                    excluded: p.excluded,
                };
                self.note_allocation_error(p.created_ms, &err);
                self.record_request_failed(&p.req, &err);
                let _ = p.reply.send(Err(err));
                return;
            };
            self.ask(id, p, node, false)
        }
    }

    /// Ask `node` for the placement's request: inline for ourselves,
    /// over `/lanswarm/alloc/2` otherwise. With `queue`, the owner may
    /// queue it for the placement's wait.
    fn ask(&mut self, id: u64, mut p: Placement, node: NodeId, queue: bool) {
        let wait_ms = if queue { p.wait_ms } else { 0 };
        // Preemption as a last resort (full nodes asked after every node
        // with room, and the queueing pass), except that critical requests
        // may preempt from their first ask and high ones from their second:
        // their wait matters more than the odd needless preemption.
        let prio = p.req.priority;
        let preempt = queue
            || p.preempt_at.contains(&node)
            || prio == crate::model::Priority::Critical
            || (prio == crate::model::Priority::High && p.attempt.tried() >= 2);
        let duration_ms = p.release_at_ms.map(|at| at.saturating_sub(p.created_ms));
        if let Some(reservation) = &p.req.reservation {
            let draw = sched::DrawArgs {
                reservation: LeaseId(reservation.trim().to_owned()),
                request_id: p.request_id.clone(),
                req: p.req.required_resources.clone(),
                task_type: p.req.task_type.clone(),
                lease_ms: p.lease_ms,
                duration_ms,
            };
            return self.ask_draw(id, p, node, draw);
        }
        if node == self.local_id {
            let me = self.local_id.clone();
            let answer = self.decide_allocate(
                me,
                sched::AllocateArgs {
                    request_id: p.request_id.clone(),
                    req: p.req.required_resources.clone(),
                    task_type: p.req.task_type.clone(),
                    priority: p.req.priority,
                    lease_ms: p.lease_ms,
                    wait_ms,
                    duration_ms,
                    preempt,
                    constraints: p.req.constraints.clone(),
                },
            );
            match answer {
                sched::OwnerAnswer::Granted(lease) => match self.commit_local_grant(lease) {
                    Ok(lease) => return self.finish_placement(p, lease),
                    Err(d) => p.attempt.refused(node, d),
                },
                sched::OwnerAnswer::Now(AllocResponse::Queued { ticket, position }) => {
                    return self.on_queued(p, node, ticket, position);
                }
                sched::OwnerAnswer::Now(AllocResponse::Denied(d)) => {
                    self.note_denial(d.reason);
                    p.attempt.refused(node, d)
                }
                sched::OwnerAnswer::Now(other) => p.attempt.refused(
                    node,
                    Denial::new(
                        DenyReason::BadRequest,
                        format!("unexpected answer {other:?}"),
                    ),
                ),
            }
            return self.drive(id, p);
        }
        if let Err(why) = self.breaker_acquire(&node) {
            let node_name = self.name_of(&node);
            p.excluded.push(Excluded {
                node_id: node,
                node_name,
                why,
            });
            return self.drive(id, p);
        }
        let Some(peer) = peer_id_of(&node) else {
            p.attempt
                .refused(node, Denial::new(DenyReason::Unreachable, "not a peer id"));
            return self.drive(id, p);
        };
        let rid = self.swarm.behaviour_mut().alloc.send_request(
            &peer,
            Frame::Valid(AllocRequest::Allocate {
                request_id: p.request_id.clone(),
                req: p.req.required_resources.clone(),
                task_type: p.req.task_type.clone(),
                priority: p.req.priority,
                lease_ms: p.lease_ms,
                wait_ms,
                duration_ms,
                preempt,
                constraints: p.req.constraints.clone(),
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
    }

    /// Ask `node` for a draw from one of its pooled reservations.
    fn ask_draw(&mut self, id: u64, mut p: Placement, node: NodeId, a: sched::DrawArgs) {
        if node == self.local_id {
            let me = self.local_id.clone();
            match self.decide_draw(me, a) {
                sched::OwnerAnswer::Granted(lease) => match self.commit_local_grant(lease) {
                    Ok(lease) => return self.finish_placement(p, lease),
                    Err(d) => p.attempt.refused(node, d),
                },
                sched::OwnerAnswer::Now(AllocResponse::Denied(d)) => p.attempt.refused(node, d),
                sched::OwnerAnswer::Now(other) => p.attempt.refused(
                    node,
                    Denial::new(
                        DenyReason::BadRequest,
                        format!("unexpected answer {other:?}"),
                    ),
                ),
            }
            return self.drive(id, p);
        }
        let Some(peer) = peer_id_of(&node) else {
            p.attempt
                .refused(node, Denial::new(DenyReason::Unreachable, "not a peer id"));
            return self.drive(id, p);
        };
        let rid = self.swarm.behaviour_mut().alloc.send_request(
            &peer,
            Frame::Valid(AllocRequest::Draw {
                reservation: a.reservation,
                request_id: a.request_id,
                req: a.req,
                task_type: a.task_type,
                lease_ms: a.lease_ms,
                duration_ms: a.duration_ms,
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
    }

    /// The owner to queue a waiting request at, once no one could grant
    /// it at once: among the nodes that could ever hold it, the one with
    /// the shortest announced queue, then the most free.
    fn queue_target(&self, p: &Placement) -> Option<NodeId> {
        let refused_otherwise: std::collections::BTreeSet<&NodeId> = p
            .attempt
            .refusals()
            .iter()
            .filter(|(_, d)| {
                !matches!(
                    d.reason,
                    DenyReason::InsufficientCapacity | DenyReason::Busy
                )
            })
            .map(|(n, _)| n)
            .collect();
        self.eligible_by_total(&p.req)
            .into_iter()
            .filter(|a| !refused_otherwise.contains(&a.node_id))
            .min_by_key(|a| {
                (
                    a.queued,
                    std::cmp::Reverse(a.free.cpu_cores),
                    a.node_id.clone(),
                )
            })
            .map(|a| a.node_id.clone())
    }

    /// Nodes that could ever serve `req` (by total capacity, not what is
    /// free), online, within its scope, constraints and the owners'
    /// announced access policy.
    pub(super) fn eligible_by_total(&self, req: &AllocationRequest) -> Vec<&Announcement> {
        let now = now_ms();
        let local = self.view.local();
        let anns = std::iter::once((local, true)).chain(
            self.view
                .peers()
                .filter(|e| {
                    self.view
                        .status(&e.ann.node_id, now)
                        .is_some_and(NodeStatus::usable)
                })
                .map(|e| (&e.ann, false)),
        );
        anns.filter(|(ann, is_local)| {
            !ann.leaving
                && req
                    .node_id
                    .as_ref()
                    .is_none_or(|t| &ann.node_id.0 == t || &ann.name == t)
                && crate::core::fit::fit(&ann.capacity, &ann.capacity, &req.required_resources)
                    .is_ok()
                && crate::core::constraints::check(&req.constraints, &req.required_resources, ann)
                    .is_ok()
                && (*is_local
                    || crate::core::access::hint_admits(
                        &ann.access,
                        &ann.node_id,
                        &self.local_id,
                        &self.state.groups,
                    ))
                && self.in_scope(req, ann)
        })
        .map(|(ann, _)| ann)
        .collect()
    }

    /// Full nodes worth asking anyway because they may preempt for this
    /// request: they announce preemption and could hold it in total. Asked
    /// after every node with room.
    fn preemption_candidates(&self, req: &AllocationRequest) -> Vec<NodeId> {
        if req.priority == crate::model::Priority::Low {
            return Vec::new();
        }
        let mut out: Vec<&Announcement> = self
            .eligible_by_total(req)
            .into_iter()
            .filter(|a| a.preemption)
            .collect();
        out.sort_by_key(|a| (a.active_leases, a.node_id.clone()));
        out.into_iter().map(|a| a.node_id.clone()).collect()
    }

    /// Write a grant to ourselves durably before anyone hears of it. On a
    /// storage error the grant is undone.
    pub(super) fn commit_local_grant(&mut self, lease: Lease) -> Result<Lease, Denial> {
        let mut batch = std::mem::take(&mut self.deferred);
        batch.put_granted.push(lease.clone());
        batch.history.push(self.granted_record(&lease, ""));
        if let Err(e) = self.store.apply(&batch) {
            error!(error = %e, "cannot write lease; refusing the grant");
            self.note_denial(DenyReason::StorageError);
            let _ = self.sched.release(&lease.lease_id, None, now_ms());
            batch.put_granted.pop();
            batch.history.pop();
            self.deferred = batch;
            return Err(Denial::new(DenyReason::StorageError, e.to_string()));
        }
        log_grant(&lease);
        self.note_grant(self.grant_source(&lease));
        self.schedule_announce();
        Ok(lease)
    }

    /// Keep the candidates that meet the request's constraints; refuse the
    /// request outright if no known node could ever serve it.
    pub(super) fn apply_constraints(
        &self,
        req: &AllocationRequest,
        candidates: &mut Vec<crate::core::placement::Candidate>,
        excluded: &mut Vec<Excluded>,
        now: u64,
    ) -> Result<(), NodeError> {
        use crate::core::constraints;
        req.constraints
            .validate()
            .map_err(|e| NodeError::BadRequest(format!("constraints: {e}")))?;
        let local = self.view.local();
        let known: Vec<&Announcement> = std::iter::once(local)
            .chain(
                self.view
                    .peers()
                    .filter(|e| {
                        !matches!(
                            self.view.status(&e.ann.node_id, now),
                            Some(NodeStatus::Offline | NodeStatus::Left)
                        )
                    })
                    .map(|e| &e.ann),
            )
            .collect();
        if let Some(why) = constraints::never_satisfiable(
            &req.constraints,
            &req.required_resources,
            known.iter().copied(),
        ) {
            return Err(NodeError::Denied(Denial::new(
                DenyReason::Unsatisfiable,
                format!("no known node could ever serve this request: {why}"),
            )));
        }
        if req.constraints.is_empty() {
            return Ok(());
        }
        candidates.retain(|c| {
            let Some(ann) = known.iter().find(|a| a.node_id == c.node_id) else {
                return false;
            };
            match constraints::check(&req.constraints, &req.required_resources, ann) {
                Ok(()) => true,
                Err(why) => {
                    excluded.push(Excluded {
                        node_id: c.node_id.clone(),
                        node_name: c.name.clone(),
                        why,
                    });
                    false
                }
            }
        });
        Ok(())
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
        if p.req.replace && lease.node_id != self.local_id {
            self.replace_on_loss
                .insert(lease.lease_id.clone(), p.req.clone());
        }
        info!(lease = %lease.lease_id, owner = %owner_name, "allocation placed");
        self.record_lease(
            HistoryKind::Grant,
            HistoryRole::Requester,
            HistoryOutcome::Granted,
            &lease,
            None,
            &format!("granted by {owner_name}"),
        );
        self.note_allocation("granted", metrics::since_ms(p.created_ms));
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

    /// The node a user names (its id or its name): this node, or a peer
    /// in the view.
    pub(super) fn resolve_node(&self, target: &str) -> Option<NodeId> {
        if target == self.local_id.0 || target == self.cfg.name {
            return Some(self.local_id.clone());
        }
        self.view
            .peers()
            .find(|p| p.ann.node_id.0 == target || p.ann.name == target)
            .map(|p| p.ann.node_id.clone())
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
