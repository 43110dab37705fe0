//! `/lanswarm/health/1`: answering health checks, and asking every known
//! node at once (`perform_health_checks`, seed 004).

use super::*;
use crate::handle::{HealthCheck, NodeResources};
use crate::net::protocol::{HealthReply, HealthRequest};

/// A round of health checks waiting for its answers.
pub(super) struct HealthRound {
    reply: oneshot::Sender<Vec<HealthCheck>>,
    results: Vec<HealthCheck>,
    waiting: usize,
}

/// An outbound health check: its round, whom it asked, and when.
pub(super) struct HealthAsk {
    round: u64,
    node: NodeId,
    sent: Instant,
}

/// At or above this response time a node is reported `degraded`, ms.
const DEGRADED_RESPONSE_MS: f64 = 500.0;

impl EventLoop {
    /// This node's answer to a health check.
    fn health_reply(&self, sent_at_ms: u64) -> HealthReply {
        let ledger = self.sched.ledger();
        HealthReply {
            sent_at_ms,
            now_ms: now_ms(),
            name: self.cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: self.started_at_ms,
            capacity: ledger.capacity().clone(),
            free: ledger.free(),
            gpus: self.cfg.gpus.clone(),
            machine_cpu_cores: self.cfg.machine_cpu_cores,
            machine_memory_mb: self.cfg.machine_memory_mb,
            cpu_usage_pct: self.cpu_usage_pct,
            active_allocations: ledger.len() as u32,
            queued: self.sched.queue().len() as u32,
            running_tasks: self.running_task_count() as u32,
            leaving: self.shutting_down,
        }
    }

    fn check_of(&self, node: &NodeId, r: &HealthReply, rtt_ms: f64) -> HealthCheck {
        let status = if r.leaving {
            NodeStatus::Left
        } else if rtt_ms >= DEGRADED_RESPONSE_MS {
            NodeStatus::Degraded
        } else {
            NodeStatus::Online
        };
        HealthCheck {
            node_id: node.clone(),
            name: r.name.clone(),
            timestamp: crate::handle::ms_to_utc(now_ms()),
            status,
            resources: Some(NodeResources {
                lendable: r.capacity.clone(),
                free: r.free.clone(),
                gpus: r.gpus.clone(),
                machine_cpu_cores: r.machine_cpu_cores,
                machine_memory_mb: r.machine_memory_mb,
                cpu_usage_pct: r.cpu_usage_pct,
            }),
            active_allocations: r.active_allocations,
            queued: r.queued,
            running_tasks: r.running_tasks,
            response_time_ms: Some(rtt_ms),
            uptime_secs: Some(r.now_ms.saturating_sub(r.started_at_ms) / 1000),
            version: Some(r.version.clone()),
            error: None,
        }
    }

    /// Handle command: ask every known node (not departed) and this one.
    pub(super) fn perform_health_checks(&mut self, reply: oneshot::Sender<Vec<HealthCheck>>) {
        let now = now_ms();
        let me = self.local_id.clone();
        let local = self.check_of(&me, &self.health_reply(now), 0.0);
        let targets: Vec<NodeId> = self
            .view
            .peers()
            .filter(|p| !p.ann.leaving)
            .map(|p| p.ann.node_id.clone())
            .collect();
        let round = self.next_health_round;
        self.next_health_round += 1;
        let mut r = HealthRound {
            reply,
            results: vec![local],
            waiting: 0,
        };
        for node in targets {
            let Some(peer) = peer_id_of(&node) else {
                continue;
            };
            let rid = self
                .swarm
                .behaviour_mut()
                .health
                .send_request(&peer, Frame::Valid(HealthRequest { sent_at_ms: now }));
            self.health_asks.insert(
                rid,
                HealthAsk {
                    round,
                    node,
                    sent: Instant::now(),
                },
            );
            r.waiting += 1;
        }
        if r.waiting == 0 {
            let _ = r.reply.send(r.results);
            return;
        }
        self.health_rounds.insert(round, r);
    }

    /// One answer (or failure) of a round; the round answers when all are in.
    fn health_result(&mut self, round: u64, check: HealthCheck) {
        let Some(r) = self.health_rounds.get_mut(&round) else {
            return;
        };
        r.results.push(check);
        r.waiting = r.waiting.saturating_sub(1);
        if r.waiting == 0 {
            if let Some(mut r) = self.health_rounds.remove(&round) {
                r.results[1..].sort_by(|a, b| a.node_id.cmp(&b.node_id));
                let _ = r.reply.send(r.results);
            }
        }
    }

    pub(super) fn on_health_event(
        &mut self,
        ev: request_response::Event<Frame<HealthRequest>, HealthReply>,
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
                Frame::Valid(req) => {
                    self.view.touch(&node_id_of(&peer), now_ms());
                    let answer = self.health_reply(req.sent_at_ms);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .health
                        .send_response(channel, answer);
                }
                Frame::Invalid(why) => self.penalise(peer, format!("bad health frame: {why}")),
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
                let Some(ask) = self.health_asks.remove(&request_id) else {
                    return;
                };
                self.note_health_rtt("health_check", ask.sent.elapsed());
                let rtt = ask.sent.elapsed().as_secs_f64() * 1000.0;
                self.view.touch(&node_id_of(&peer), now_ms());
                let check = self.check_of(&ask.node, &response, rtt);
                self.health_result(ask.round, check);
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                let Some(ask) = self.health_asks.remove(&request_id) else {
                    return;
                };
                let status = match error {
                    request_response::OutboundFailure::Timeout => NodeStatus::Suspect,
                    _ => NodeStatus::Offline,
                };
                let check = HealthCheck {
                    name: self.name_of(&ask.node),
                    node_id: ask.node,
                    timestamp: crate::handle::ms_to_utc(now_ms()),
                    status,
                    resources: None,
                    active_allocations: 0,
                    queued: 0,
                    running_tasks: 0,
                    response_time_ms: None,
                    uptime_secs: None,
                    version: None,
                    error: Some(error.to_string()),
                };
                self.health_result(ask.round, check);
            }
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.penalise(peer, format!("bad health frame: {e}")),
            request_response::Event::InboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => {}
        }
    }
}
