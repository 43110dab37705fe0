//! Commands from the `Node` handle.

use super::*;

impl EventLoop {
    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::LocalNode(reply) => {
                let _ = reply.send(self.local_info());
            }
            Command::Nodes(reply) => {
                let now = now_ms();
                let mut out = vec![self.local_info()];
                out.extend(self.view.peers().map(|p| {
                    let status = self
                        .view
                        .status(&p.ann.node_id, now)
                        .unwrap_or(NodeStatus::Offline);
                    let mut info = NodeInfo::from_announcement(
                        &p.ann,
                        false,
                        status,
                        p.last_seen_ms,
                        p.rtt_ms,
                    );
                    info.circuit = self.breaker_state(&p.ann.node_id, now);
                    info
                }));
                let _ = reply.send(out);
            }
            Command::Request(req, reply) => self.on_request(*req, reply),
            Command::Release(id, reply) => {
                let lease_id = LeaseId(id.clone());
                if self.held.contains_key(&lease_id) {
                    self.release_held(&lease_id, Some(reply));
                } else {
                    // Ours elsewhere: a waiting ticket or a reservation.
                    let ours = self.cancel_ticket(&lease_id).is_some()
                        || self.cancel_held_reservation(&lease_id).is_some();
                    // Or granted here: the local admin may end any.
                    let here = !ours && matches!(self.owner_release(&lease_id, None), Ok(true));
                    if ours || here {
                        if here {
                            info!(lease = %lease_id, "lease, ticket or reservation ended by local release");
                        }
                        let _ = reply.send(Ok(ReleaseOutcome {
                            allocation_id: id,
                            owner_confirmed: true,
                        }));
                    } else {
                        let _ = reply.send(Err(NodeError::UnknownAllocation(id)));
                    }
                }
            }
            Command::Allocations(reply) => {
                let held = self
                    .held
                    .values()
                    .map(|h| {
                        Allocation::from_lease(&h.rec.lease, &h.rec.owner_name, h.rec.release_at_ms)
                    })
                    .chain(self.ticket_allocations())
                    .collect();
                let granted = self
                    .sched
                    .ledger()
                    .leases()
                    .map(|l| Allocation::from_lease(l, &self.cfg.name, None))
                    .collect();
                let _ = reply.send(Allocations { held, granted });
            }
            Command::GetStrategy(reply) => {
                let _ = reply.send(self.strategy.clone());
            }
            Command::SetStrategy(s, reply) => {
                info!(strategy = %s.strategy, "balancing strategy changed");
                self.record_local(
                    crate::core::history::HistoryKind::PolicyChange,
                    crate::core::history::Outcome::Changed,
                    &format!("balancing strategy set to {}", s.strategy),
                );
                self.strategy = s;
                let _ = reply.send(());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs());
            }
            Command::Telemetry(t) => {
                self.cpu_usage_pct = t.cpu_usage_pct;
                self.adaptive_observe(t.cpu_usage_pct, t.memory_available_mb);
                // No swarm work runs as processes yet (tasks come later),
                // so all host use is the owner's own.
                self.on_local_load(crate::core::elastic::LocalLoad {
                    cpu_busy_cores: f64::from(t.cpu_usage_pct) / 100.0
                        * f64::from(self.cfg.machine_cpu_cores),
                    memory_used_mb: self
                        .cfg
                        .machine_memory_mb
                        .saturating_sub(t.memory_available_mb),
                });
                for g in t.gpus {
                    if let Some(slot) = self
                        .cfg
                        .gpus
                        .iter_mut()
                        .find(|x| !x.synthetic && x.index == g.index)
                    {
                        *slot = g;
                    }
                }
            }
            Command::Groups(reply) => {
                let _ = reply.send(self.group_infos());
            }
            Command::Group(key, reply) => {
                let _ = reply.send(self.group_by_key(&key));
            }
            Command::CreateGroup(new, reply) => {
                let _ = reply.send(self.create_group(new));
            }
            Command::JoinGroup(key, reply) => {
                let _ = reply.send(self.join_group(&key));
            }
            Command::LeaveGroup(key, reply) => {
                let _ = reply.send(self.leave_group(&key));
            }
            Command::InviteToGroup(key, node, reply) => {
                let _ = reply.send(self.invite_to_group(&key, &node));
            }
            Command::Access(reply) => {
                let _ = reply.send(self.policy.clone());
            }
            Command::SetAccess(change, reply) => {
                let _ = reply.send(self.set_access(change));
            }
            Command::Roles(reply) => {
                let _ = reply.send(self.roles_info());
            }
            Command::SetRoles(change, reply) => {
                let _ = reply.send(self.set_roles(change));
            }
            Command::Pools(reply) => {
                let _ = reply.send(self.pool_infos());
            }
            Command::Pool(name, reply) => {
                let _ = reply.send(self.pool_by_name(&name));
            }
            Command::CreatePool(new, reply) => {
                let _ = reply.send(self.create_pool(new));
            }
            Command::DeletePool(name, reply) => {
                let _ = reply.send(self.delete_pool(&name));
            }
            Command::Reserve(req, reply) => self.on_reserve(*req, reply),
            Command::PostEvent(name, reply) => self.on_post_event(name, reply),
            Command::Reservations(reply) => {
                let _ = reply.send(self.reservations_view());
            }
            Command::Quotas(reply) => {
                let _ = reply.send(self.quota_entries());
            }
            Command::SetQuota(change, reply) => {
                let _ = reply.send(self.set_quota(change));
            }
            Command::RemoveQuota(subject, swarm, reply) => {
                let _ = reply.send(self.remove_quota(&subject, swarm));
            }
            Command::SchedPolicy(reply) => {
                let _ = reply.send(self.sched.policy().clone());
            }
            Command::SetSchedPolicy(change, reply) => {
                let _ = reply.send(self.set_sched_policy(change));
            }
            Command::RequestMulti(req, reply) => self.on_request_multi(*req, reply),
            Command::Multis(reply) => {
                let _ = reply.send(self.multi_views());
            }
            Command::Queue(reply) => {
                let _ = reply.send(self.queue_entries());
            }
            Command::RunTask(cmd) => {
                let c = *cmd;
                self.start_remote_task(
                    c.owner,
                    c.allocation_id,
                    c.task_id,
                    c.spec,
                    c.updates,
                    c.reply,
                )
            }
            Command::WatchTask {
                owner,
                task_id,
                updates,
            } => self.watch_task(owner, task_id, updates),
            Command::TaskCall(owner, req, reply) => self.task_call(owner, req, reply),
            Command::HealthChecks(reply) => self.perform_health_checks(reply),
            Command::Utilization(after_ms, reply) => {
                let _ = reply.send(self.utilization(after_ms));
            }
            Command::Discover(reply) => {
                let _ = reply.send(self.discover_now());
            }
            Command::Offers(reply) => {
                let _ = reply.send(self.offers());
            }
            Command::Contention(reply) => {
                let _ = reply.send(self.contention_report());
            }
            Command::Breakers(reply) => {
                let _ = reply.send(self.breaker_report());
            }
            Command::Throttle(reply) => {
                let _ = reply.send(self.throttle_status());
            }
            Command::Elastic(reply) => {
                let _ = reply.send(self.elastic_status());
            }
            Command::History(q, reply) => self.query_history(q, reply),
            Command::Usage(q, reply) => {
                let _ = reply.send(self.usage_report(&q));
            }
            Command::Bottlenecks(reply) => {
                let _ = reply.send(self.bottleneck_report());
            }
            Command::Dial(addr, reply) => {
                let r = match addr.parse::<Multiaddr>() {
                    Ok(a) => self
                        .swarm
                        .dial(a)
                        .map_err(|e| NodeError::BadRequest(e.to_string())),
                    Err(e) => Err(NodeError::BadRequest(format!("bad multiaddr {addr}: {e}"))),
                };
                let _ = reply.send(r);
            }
        }
    }

    pub(super) fn local_info(&self) -> NodeInfo {
        let now = now_ms();
        let mut info = NodeInfo::from_announcement(
            &self.describe(now, false),
            true,
            NodeStatus::Online,
            now,
            None,
        );
        info.duplicate_identity = self.duplicate_identity.clone();
        info.penalties = self
            .offenders
            .iter()
            .map(|(p, o)| Penalty {
                peer_id: p.to_base58(),
                offences: o.offences,
                banned: o.banned_until_ms.is_some(),
                last_offence: o.last_offence.clone(),
            })
            .collect();
        info
    }

    /// Our listen addresses, each with `/p2p/<our peer id>`.
    pub(super) fn listen_addrs(&self) -> Vec<String> {
        let peer = *self.swarm.local_peer_id();
        self.swarm
            .listeners()
            .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a).to_string())
            .collect()
    }
}
