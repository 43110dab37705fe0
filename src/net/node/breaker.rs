//! The loop's side of circuit breakers ([`crate::core::breaker`]) and
//! adaptive throttling ([`crate::core::adaptive`]): which candidates a
//! placement skips, what outcomes feed the breakers, and the rate-limit
//! controller stepped on the maintenance tick. Other handlers call these
//! in one line each.

use super::*;
use crate::core::breaker::{BreakerInfo, Outcome, Permit, State};

/// A peer's breaker as the API shows it: the core's view with the name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerBreaker {
    pub node_name: String,
    #[serde(flatten)]
    pub info: BreakerInfo,
}

/// `GET /api/v1/breakers`: the policy and every tracked peer's breaker.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BreakerReport {
    pub policy: crate::core::breaker::BreakerPolicy,
    pub peers: Vec<PeerBreaker>,
}

impl EventLoop {
    /// Move candidates whose breaker refuses them now to `excluded`.
    pub(super) fn breaker_filter(
        &self,
        candidates: &mut Vec<crate::core::placement::Candidate>,
        excluded: &mut Vec<Excluded>,
        now: u64,
    ) {
        candidates.retain(|c| {
            if c.is_local {
                return true;
            }
            match self.breakers.check(&c.node_id, now) {
                Ok(()) => true,
                Err(r) => {
                    excluded.push(Excluded {
                        node_id: c.node_id.clone(),
                        node_name: c.name.clone(),
                        why: r.reason(now),
                    });
                    false
                }
            }
        });
    }

    /// Let one request go to `node` (never refused for this node itself),
    /// or say why not.
    pub(super) fn breaker_acquire(&mut self, node: &NodeId) -> Result<(), String> {
        if node == &self.local_id {
            return Ok(());
        }
        let now = now_ms();
        match self.breakers.acquire(node, now) {
            Ok(Permit::Normal) => Ok(()),
            Ok(Permit::Trial) => {
                info!(peer = %node, name = %self.name_of(node), "circuit half-open: sending one trial request");
                Ok(())
            }
            Err(r) => Err(r.reason(now)),
        }
    }

    /// An owner's answer to an allocation request (or the failure to get
    /// one) feeds its breaker.
    pub(super) fn breaker_alloc_outcome(
        &mut self,
        node: &NodeId,
        result: &Result<AllocResponse, String>,
    ) {
        let outcome = match result {
            Err(e) => Outcome::Failure(format!("unreachable: {e}")),
            Ok(AllocResponse::Denied(d)) if crate::core::breaker::is_fault(d.reason) => {
                Outcome::Failure(format!("{}: {}", d.reason.code(), d.message))
            }
            Ok(_) => Outcome::Success,
        };
        self.breaker_record(node, outcome);
    }

    /// The task path: `node` answered a task request (accepted or
    /// refused: an answer either way).
    pub(super) fn breaker_task_answered(&mut self, node: &NodeId) {
        self.breaker_record(node, Outcome::Success);
    }

    /// The task path: a task request to `node` got no answer, or `node`
    /// went away while running our tasks.
    pub(super) fn breaker_task_failed(&mut self, node: &NodeId, why: &str) {
        self.breaker_record(node, Outcome::Failure(format!("task: {why}")));
    }

    /// Feed one outcome to `node`'s breaker; log changes of state.
    pub(super) fn breaker_record(&mut self, node: &NodeId, outcome: Outcome) {
        if node == &self.local_id {
            return;
        }
        let now = now_ms();
        let Some(t) = self.breakers.record(node, outcome, now) else {
            return;
        };
        let name = self.name_of(node);
        match t.to {
            crate::core::breaker::State::Open => warn!(
                peer = %node,
                name = %name,
                failures = t.failures,
                retry_in_ms = t.retry_at_ms.unwrap_or(now).saturating_sub(now),
                "circuit open: not asking this peer until its cool-down is over"
            ),
            _ => {
                info!(peer = %node, name = %name, from = %t.from, "circuit closed: the trial succeeded")
            }
        }
    }

    /// `node`'s breaker state for `NodeInfo`, when it is not closed.
    pub(super) fn breaker_state(&self, node: &NodeId, now: u64) -> Option<State> {
        self.breakers
            .info(node, now)
            .map(|i| i.state)
            .filter(|s| *s != State::Closed)
    }

    /// Every tracked breaker, with names, for the API.
    pub(super) fn breaker_report(&self) -> BreakerReport {
        let now = now_ms();
        BreakerReport {
            policy: self.breakers.policy().clone(),
            peers: self
                .breakers
                .snapshot(now)
                .into_iter()
                .map(|info| PeerBreaker {
                    node_name: self.name_of(&info.node_id),
                    info,
                })
                .collect(),
        }
    }

    /// `GET /api/v1/throttle`: the adaptive throttle and the rate in force.
    pub(super) fn throttle_status(&self) -> crate::core::adaptive::AdaptiveStatus {
        let mut st = self.adaptive.status();
        st.effective_per_sec = self.sched.effective_rate().per_sec;
        st
    }

    /// The breaker and throttle gauges, on the metrics refresh.
    pub(super) fn breaker_gauges(&self, now: u64) {
        let m = &self.metrics.m;
        m.throttle_rate.set(self.sched.effective_rate().per_sec);
        m.breakers_open
            .set(self.breakers.open_count(now).try_into().unwrap_or(i64::MAX));
    }

    /// Adaptive throttling: fresh host readings (from telemetry).
    pub(super) fn adaptive_observe(&mut self, cpu_usage_pct: f32, memory_available_mb: u64) {
        let total = self.cfg.machine_memory_mb;
        let mem_pct = if total == 0 {
            0.0
        } else {
            total.saturating_sub(memory_available_mb) as f64 * 100.0 / total as f64
        };
        self.adaptive.observe(f64::from(cpu_usage_pct), mem_pct);
    }

    /// Adaptive throttling: one step on the maintenance tick; a new rate
    /// goes to the scheduler's token buckets.
    pub(super) fn adaptive_step(&mut self, now: u64) {
        let configured = self.sched.policy().rate.per_sec;
        if configured != self.adaptive.configured() {
            self.adaptive.set_configured(configured);
        }
        if let Some(per_sec) = self.adaptive.step(now) {
            info!(
                per_sec,
                configured,
                under_pressure = self.adaptive.under_pressure(),
                "adaptive throttling: per-peer admission rate changed"
            );
        }
        // Also after a policy change, which puts the configured rate back.
        let want = self.adaptive.effective();
        if self.sched.effective_rate().per_sec != want {
            let mut rate = self.sched.policy().rate.clone();
            rate.per_sec = want;
            self.sched.set_effective_rate(rate);
        }
    }
}
