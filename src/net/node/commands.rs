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
                    NodeInfo {
                        id: p.ann.node_id.clone(),
                        name: p.ann.name.clone(),
                        is_local: false,
                        version: p.ann.version.clone(),
                        addresses: p.ann.addrs.clone(),
                        resources: NodeResources {
                            lendable: p.ann.capacity.clone(),
                            free: p.ann.free.clone(),
                            gpus: p.ann.gpus.clone(),
                            machine_cpu_cores: p.ann.machine_cpu_cores,
                            machine_memory_mb: p.ann.machine_memory_mb,
                            cpu_usage_pct: p.ann.cpu_usage_pct,
                        },
                        models: p.ann.models.clone(),
                        location: p.ann.location.clone(),
                        weight: p.ann.weight,
                        allow_remote_access: p.ann.allow_remote,
                        active_allocations: p.ann.active_leases,
                        status: self
                            .view
                            .status(&p.ann.node_id, now)
                            .unwrap_or(NodeStatus::Offline),
                        last_seen: crate::handle::ms_to_utc(p.last_seen_ms),
                        rtt_ms: p.rtt_ms,
                        seq: p.ann.seq,
                        duplicate_identity: None,
                        penalties: Vec::new(),
                    }
                }));
                let _ = reply.send(out);
            }
            Command::Request(req, reply) => self.on_request(*req, reply),
            Command::Release(id, reply) => {
                let lease_id = LeaseId(id.clone());
                if self.held.contains_key(&lease_id) {
                    self.release_held(&lease_id, Some(reply));
                } else {
                    match self.ledger.release(&lease_id, None) {
                        Ok(Some(lease)) => {
                            info!(lease = %lease.lease_id, holder = %lease.holder, "lease revoked by local release");
                            self.forget_granted(&[lease]);
                            let _ = reply.send(Ok(ReleaseOutcome {
                                allocation_id: id,
                                owner_confirmed: true,
                            }));
                        }
                        _ => {
                            let _ = reply.send(Err(NodeError::UnknownAllocation(id)));
                        }
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
                    .collect();
                let granted = self
                    .ledger
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
                self.strategy = s;
                let _ = reply.send(());
            }
            Command::ListenAddrs(reply) => {
                let peer = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a).to_string())
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Telemetry(t) => {
                self.cpu_usage_pct = t.cpu_usage_pct;
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
        let a = &self.local_ann;
        NodeInfo {
            id: self.local_id.clone(),
            name: self.cfg.name.clone(),
            is_local: true,
            version: a.version.clone(),
            addresses: a.addrs.clone(),
            resources: NodeResources {
                lendable: self.ledger.capacity().clone(),
                free: self.ledger.free(),
                gpus: self.cfg.gpus.clone(),
                machine_cpu_cores: self.cfg.machine_cpu_cores,
                machine_memory_mb: self.cfg.machine_memory_mb,
                cpu_usage_pct: self.cpu_usage_pct,
            },
            models: self.cfg.models.clone(),
            location: self.cfg.location.clone(),
            weight: self.cfg.weight,
            allow_remote_access: self.cfg.allow_remote,
            active_allocations: self.ledger.len() as u32,
            status: NodeStatus::Online,
            last_seen: crate::handle::ms_to_utc(now_ms()),
            rtt_ms: None,
            seq: a.seq,
            duplicate_identity: self.duplicate_identity.clone(),
            penalties: self
                .offenders
                .iter()
                .map(|(p, o)| Penalty {
                    peer_id: p.to_base58(),
                    offences: o.offences,
                    banned: o.banned_until_ms.is_some(),
                    last_offence: o.last_offence.clone(),
                })
                .collect(),
        }
    }
}
