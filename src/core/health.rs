//! Failure detection: how a peer looks from here, as a small state machine
//! fed by what the node observes (sans-IO; time passed in).
//!
//! Statuses, in the order they are checked:
//!
//! - `left`: it said goodbye (its last announcement was marked leaving).
//!   It stays `left` until it is heard from again as a new process.
//! - `offline`: confirmed gone, or silent for `offline_after_ms`. Confirmed
//!   gone means its last connection closed and dialling it again failed
//!   (a dead process on a live host refuses the connection at once, so
//!   this takes a round trip, not a timeout).
//! - `suspect`: no connection to it, or silent for `suspect_after_ms`
//!   (missed pings and announcements), or pings failing.
//! - `degraded`: reachable but slow or overloaded: ping RTT at least
//!   `degraded_rtt_ms`, or (when configured) host CPU at least
//!   `degraded_cpu_pct`. Still asked for leases.
//! - `online`: otherwise.
//!
//! Hearing from a peer again (any message, a ping answer, a new
//! connection) clears `suspect` and `offline` at once; a new process of a
//! peer that had `left` clears that too. The node calls [`PeerHealth::status`]
//! whenever it needs the status; nothing here schedules anything.
//!
//! The view ([`crate::core::view`]) keeps one per peer it has been
//! connected to; a peer known only from relayed announcements is judged by
//! announcement silence instead.

use serde::{Deserialize, Serialize};

use crate::model::NodeStatus;

/// Thresholds of the failure detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// Silence after which a peer is suspect, ms.
    pub suspect_after_ms: u64,
    /// Silence after which a peer is offline, ms.
    pub offline_after_ms: u64,
    /// Ping RTT at or above which a peer is degraded, ms.
    pub degraded_rtt_ms: f64,
    /// Host CPU use at or above which a peer is degraded, percent; `None`
    /// (the default): CPU use alone never makes a peer degraded (a busy
    /// machine still answers; the RTT says when it stops keeping up).
    pub degraded_cpu_pct: Option<f32>,
    /// How long an offline or departed peer stays in the view, ms.
    pub forget_after_ms: u64,
}

impl Default for HealthConfig {
    /// Suspect after 2 s, offline after 3 s of silence (with pings every
    /// 500 ms), degraded at 500 ms RTT, forgotten 5 minutes after it went
    /// offline or left.
    fn default() -> Self {
        HealthConfig {
            suspect_after_ms: 2_000,
            offline_after_ms: 3_000,
            degraded_rtt_ms: 500.0,
            degraded_cpu_pct: None,
            forget_after_ms: 300_000,
        }
    }
}

/// What the node has observed of one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerHealth {
    /// When we last heard from it: a message, a ping answer, a connection.
    last_heard_ms: u64,
    /// Open connections to it.
    connections: u32,
    /// Its last connection closed and a dial since then failed.
    unreachable: bool,
    /// Pings failed since it was last heard from.
    ping_failures: u32,
    /// It said goodbye.
    left: bool,
    /// Latest ping RTT and host CPU use it announced.
    rtt_ms: Option<f64>,
    cpu_pct: f32,
}

impl PeerHealth {
    /// A peer first heard from at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        PeerHealth {
            last_heard_ms: now_ms,
            connections: 0,
            unreachable: false,
            ping_failures: 0,
            left: false,
            rtt_ms: None,
            cpu_pct: 0.0,
        }
    }

    /// Any message from it (announcement, sync, request, answer).
    pub fn heard(&mut self, now_ms: u64) {
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        self.unreachable = false;
        self.ping_failures = 0;
    }

    /// A new process of the peer announced itself (after it had left).
    pub fn restarted(&mut self, now_ms: u64) {
        self.left = false;
        self.heard(now_ms);
    }

    /// A ping answered in `rtt_ms`.
    pub fn ping_ok(&mut self, rtt_ms: f64, now_ms: u64) {
        if rtt_ms.is_finite() && rtt_ms >= 0.0 {
            self.rtt_ms = Some(rtt_ms);
        }
        self.heard(now_ms);
    }

    /// A ping failed or timed out.
    pub fn ping_failed(&mut self) {
        self.ping_failures = self.ping_failures.saturating_add(1);
    }

    /// Its announced host CPU use, percent.
    pub fn load(&mut self, cpu_pct: f32) {
        if cpu_pct.is_finite() {
            self.cpu_pct = cpu_pct;
        }
    }

    /// A connection to it opened.
    pub fn connected(&mut self, now_ms: u64) {
        self.connections = self.connections.saturating_add(1);
        self.heard(now_ms);
    }

    /// A connection to it closed. When it was the last one, the node
    /// should dial it again at once: [`PeerHealth::dial_failed`] or
    /// [`PeerHealth::connected`] settles it.
    pub fn disconnected(&mut self) -> bool {
        self.connections = self.connections.saturating_sub(1);
        self.connections == 0
    }

    /// Dialling it failed while no connection was open: it is gone.
    pub fn dial_failed(&mut self) {
        if self.connections == 0 {
            self.unreachable = true;
        }
    }

    /// It said goodbye.
    pub fn goodbye(&mut self) {
        self.left = true;
    }

    /// Its status at `now_ms`, per the rules in the module docs.
    pub fn status(&self, now_ms: u64, cfg: &HealthConfig) -> NodeStatus {
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        if self.left {
            NodeStatus::Left
        } else if self.unreachable || silent >= cfg.offline_after_ms {
            NodeStatus::Offline
        } else if self.connections == 0 || silent >= cfg.suspect_after_ms || self.ping_failures > 0
        {
            NodeStatus::Suspect
        } else if self.rtt_ms.is_some_and(|r| r >= cfg.degraded_rtt_ms)
            || cfg.degraded_cpu_pct.is_some_and(|c| self.cpu_pct >= c)
        {
            NodeStatus::Degraded
        } else {
            NodeStatus::Online
        }
    }

    /// Whether the peer should be dropped from the view at `now_ms`.
    pub fn forgettable(&self, now_ms: u64, cfg: &HealthConfig) -> bool {
        matches!(
            self.status(now_ms, cfg),
            NodeStatus::Offline | NodeStatus::Left
        ) && now_ms.saturating_sub(self.last_heard_ms) >= cfg.forget_after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> HealthConfig {
        HealthConfig::default()
    }

    fn connected_at(t: u64) -> PeerHealth {
        let mut h = PeerHealth::new(t);
        h.connected(t);
        h
    }

    #[test]
    fn a_connected_peer_heard_recently_is_online() {
        let h = connected_at(1_000);
        assert_eq!(h.status(1_500, &cfg()), NodeStatus::Online);
    }

    #[test]
    fn a_dead_process_is_offline_as_soon_as_the_redial_fails() {
        let mut h = connected_at(1_000);
        assert!(h.disconnected(), "the last connection: redial");
        assert_eq!(h.status(1_001, &cfg()), NodeStatus::Suspect);
        h.dial_failed();
        assert_eq!(h.status(1_002, &cfg()), NodeStatus::Offline);
        // It comes back: online at once.
        h.connected(5_000);
        assert_eq!(h.status(5_000, &cfg()), NodeStatus::Online);
    }

    #[test]
    fn a_redial_that_connects_keeps_it_online() {
        let mut h = connected_at(1_000);
        h.connected(1_000);
        assert!(!h.disconnected(), "one connection is left");
        assert_eq!(h.status(1_100, &cfg()), NodeStatus::Online);
        assert!(h.disconnected());
        h.connected(1_050);
        assert_eq!(h.status(1_100, &cfg()), NodeStatus::Online);
    }

    #[test]
    fn a_silent_peer_is_suspect_at_2s_and_offline_at_3s() {
        let mut h = connected_at(10_000);
        h.ping_ok(1.0, 10_000);
        assert_eq!(h.status(11_999, &cfg()), NodeStatus::Online);
        h.ping_failed();
        assert_eq!(h.status(11_999, &cfg()), NodeStatus::Suspect);
        assert_eq!(h.status(12_000, &cfg()), NodeStatus::Suspect);
        assert_eq!(h.status(12_999, &cfg()), NodeStatus::Suspect);
        assert_eq!(h.status(13_000, &cfg()), NodeStatus::Offline);
        // Heard again (the link is back): online at once.
        h.ping_ok(2.0, 20_000);
        assert_eq!(h.status(20_000, &cfg()), NodeStatus::Online);
    }

    #[test]
    fn slow_or_busy_is_degraded() {
        let mut h = connected_at(0);
        h.ping_ok(600.0, 0);
        assert_eq!(h.status(10, &cfg()), NodeStatus::Degraded);
        h.ping_ok(5.0, 20);
        assert_eq!(h.status(30, &cfg()), NodeStatus::Online);
        h.load(99.0);
        assert_eq!(
            h.status(30, &cfg()),
            NodeStatus::Online,
            "CPU alone: off by default"
        );
        let busy = HealthConfig {
            degraded_cpu_pct: Some(95.0),
            ..cfg()
        };
        assert_eq!(h.status(30, &busy), NodeStatus::Degraded);
        assert!(NodeStatus::Degraded.usable());
        assert!(!NodeStatus::Suspect.usable());
    }

    #[test]
    fn goodbye_is_left_until_a_new_process_appears() {
        let mut h = connected_at(0);
        h.goodbye();
        assert_eq!(h.status(1, &cfg()), NodeStatus::Left);
        h.heard(2);
        assert_eq!(h.status(3, &cfg()), NodeStatus::Left, "a late message");
        h.restarted(4);
        h.connected(4);
        assert_eq!(h.status(5, &cfg()), NodeStatus::Online);
    }

    #[test]
    fn offline_and_departed_peers_are_forgotten_after_a_while() {
        let mut h = connected_at(0);
        h.goodbye();
        assert!(!h.forgettable(1_000, &cfg()));
        assert!(h.forgettable(300_000, &cfg()));
        let mut g = connected_at(0);
        g.disconnected();
        assert!(!g.forgettable(299_999, &cfg()));
        assert!(g.forgettable(300_000, &cfg()));
        g.connected(300_001);
        assert!(!g.forgettable(300_002, &cfg()));
    }

    #[derive(Clone, Debug)]
    enum Ev {
        Heard(u64),
        PingOk(u64, u16),
        PingFailed,
        Connected(u64),
        Disconnected,
        DialFailed,
        Goodbye,
        Restarted(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0..10_000u64).prop_map(Ev::Heard),
            (0..10_000u64, 0..1_000u16).prop_map(|(t, r)| Ev::PingOk(t, r)),
            Just(Ev::PingFailed),
            (0..10_000u64).prop_map(Ev::Connected),
            Just(Ev::Disconnected),
            Just(Ev::DialFailed),
            Just(Ev::Goodbye),
            (0..10_000u64).prop_map(Ev::Restarted),
        ]
    }

    proptest! {
        /// Whatever happened before: after a goodbye the peer is `left`
        /// until it restarts; a peer silent past `offline_after_ms` is
        /// never usable; one just connected and heard (not departed) is
        /// online or degraded; the status only gets worse as silence grows.
        #[test]
        fn the_detector_keeps_its_promises(evs in proptest::collection::vec(ev(), 0..40), wait in 0..10_000u64) {
            let c = cfg();
            let mut h = PeerHealth::new(0);
            let mut now = 0u64;
            for e in evs {
                match e {
                    Ev::Heard(d) => { now += d; h.heard(now) }
                    Ev::PingOk(d, r) => { now += d; h.ping_ok(f64::from(r), now) }
                    Ev::PingFailed => h.ping_failed(),
                    Ev::Connected(d) => { now += d; h.connected(now) }
                    Ev::Disconnected => { h.disconnected(); }
                    Ev::DialFailed => h.dial_failed(),
                    Ev::Goodbye => h.goodbye(),
                    Ev::Restarted(d) => { now += d; h.restarted(now) }
                }
            }
            let s = h.status(now, &c);
            let later = h.status(now + wait, &c);
            prop_assert!(later >= s, "{s:?} then {later:?}");
            if h.left {
                prop_assert_eq!(s, NodeStatus::Left);
            }
            if now + wait >= h.last_heard_ms + c.offline_after_ms {
                prop_assert!(!later.usable());
            }
            let mut fresh = h.clone();
            fresh.connected(now);
            let st = fresh.status(now, &c);
            if !fresh.left {
                prop_assert!(st.usable(), "{st:?}");
            }
        }
    }
}
