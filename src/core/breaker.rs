//! Circuit breakers, on the requester side (seed 003's "circuit breakers:
//! prevent cascade failures"): a requester stops asking a peer whose
//! allocations or tasks keep failing, tries it again once after a
//! cool-down, and trusts it again when that trial succeeds.
//!
//! # States
//!
//! Each peer's breaker is one of:
//!
//! - **closed**: the peer is asked as usual. Every *fault* (see below)
//!   adds one to its count of consecutive faults; every answer that is not
//!   a fault sets the count back to 0. At `failures` consecutive faults the
//!   breaker **opens**.
//! - **open**: the peer is not asked until `retry_at_ms`. The cool-down is
//!   `cooldown_ms × 2^(opens − 1)`, capped at `max_cooldown_ms`, where
//!   `opens` counts the opens since the peer last closed (exponential
//!   back-off on a peer that keeps failing its trials).
//! - **half-open**: the cool-down is over. Exactly one request at a time
//!   (the trial) may go to the peer; every other is refused as if open. A
//!   trial that succeeds closes the breaker (faults and back-off reset); one
//!   that fails opens it again with the next, longer cool-down. A trial
//!   with no outcome after `trial_timeout_ms` counts as failed, so a lost
//!   answer cannot wedge the breaker half-open.
//!
//! Consecutive faults, not a rate over a window: a LAN peer either answers
//! or it does not, and a count needs no clock to age it. Outcomes that
//! arrive while a breaker is open (answers to requests sent before it
//! opened) change nothing.
//!
//! # What is a fault
//!
//! Only what is the owner's fault: it could not be reached or did not
//! answer in time (`unreachable`, which covers timeouts and dropped
//! connections), or it could not write the lease (`storage_error`); on the
//! task path, a run request it did not answer, and a running task lost
//! because its owner disconnected. Refusals that are answers
//! (`insufficient_capacity`, `quota_exceeded`, `forbidden`, `busy`,
//! `unsatisfiable`, ...) are not faults: they show the peer is working,
//! and count as successes here. [`is_fault`] is the list.
//!
//! # Memory
//!
//! At most `max_peers` breakers are held (0 reads as 1). A peer with no
//! breaker is closed with no faults, so a success for an unknown peer
//! stores nothing. When a new peer needs one and the table is full, the
//! closed breaker idle longest is evicted (ties: smallest node id), else the
//! breaker idle longest of any state: eviction only ever forgets, so it can
//! only let a peer be asked sooner.
//!
//! Sans-IO: time comes in as `now_ms`, maps are `BTreeMap`s, arithmetic
//! saturates, and no input panics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{DenyReason, NodeId};

/// How breakers behave. From `[breaker]` in the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Whether breakers are used at all. When off, every peer is asked.
    pub enabled: bool,
    /// Consecutive faults that open a breaker (0 reads as 1).
    pub failures: u32,
    /// First cool-down after opening, ms.
    pub cooldown_ms: u64,
    /// Longest cool-down, ms (the back-off stops here).
    pub max_cooldown_ms: u64,
    /// How long a half-open trial may go without an outcome, ms.
    pub trial_timeout_ms: u64,
    /// Most peers tracked at once (0 reads as 1).
    pub max_peers: usize,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            enabled: true,
            failures: 3,
            cooldown_ms: 10_000,
            max_cooldown_ms: 300_000,
            trial_timeout_ms: 30_000,
            max_peers: 1024,
        }
    }
}

/// Whether a denial from an owner is the owner's fault. See the module
/// documentation.
pub fn is_fault(reason: DenyReason) -> bool {
    matches!(reason, DenyReason::Unreachable | DenyReason::StorageError)
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The snake_case name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of a request to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered (a grant, or a refusal that is not a fault).
    Success,
    /// A fault, with what happened (shown in the API).
    Failure(String),
}

/// Whether a request may go to a peer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Closed (or breakers off): ask as usual.
    Normal,
    /// Half-open: this request is the one trial.
    Trial,
}

/// A peer that may not be asked now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub state: State,
    /// When it may be tried (for half-open: when the trial in flight times
    /// out at the latest).
    pub retry_at_ms: u64,
}

impl Refused {
    /// Why, for a placement's `excluded` list.
    pub fn reason(&self, now_ms: u64) -> String {
        match self.state {
            State::HalfOpen => format!(
                "circuit half-open: a trial request is in flight (at most {} ms more)",
                self.retry_at_ms.saturating_sub(now_ms)
            ),
            _ => format!(
                "circuit open until {} ({} ms from now) after repeated failures",
                self.retry_at_ms,
                self.retry_at_ms.saturating_sub(now_ms)
            ),
        }
    }
}

/// A change of state, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub peer: NodeId,
    pub from: State,
    pub to: State,
    /// Consecutive faults at the change.
    pub failures: u32,
    /// For an open: when the peer may be tried again.
    pub retry_at_ms: Option<u64>,
}

/// One peer's breaker, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerInfo {
    pub node_id: NodeId,
    /// `closed`, `open` or `half_open` as of the time asked (an open
    /// breaker whose cool-down is over reads `half_open`).
    pub state: State,
    /// Consecutive faults.
    pub failures: u32,
    /// Opens since the peer last closed (the back-off step).
    pub opens: u32,
    /// When it last opened, ms since the epoch.
    pub opened_at_ms: Option<u64>,
    /// When it may be tried again, ms since the epoch (open only).
    pub retry_at_ms: Option<u64>,
    /// Whether a half-open trial is in flight.
    pub trial_in_flight: bool,
    /// The last fault seen.
    pub last_failure: Option<String>,
    /// Total faults and successes seen (since tracked).
    pub total_failures: u64,
    pub total_successes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    state: State,
    failures: u32,
    opens: u32,
    opened_at_ms: Option<u64>,
    retry_at_ms: u64,
    /// Half-open: when the trial in flight was let through.
    trial_since_ms: Option<u64>,
    last_ms: u64,
    last_failure: Option<String>,
    total_failures: u64,
    total_successes: u64,
}

impl Entry {
    fn new(now_ms: u64) -> Self {
        Entry {
            state: State::Closed,
            failures: 0,
            opens: 0,
            opened_at_ms: None,
            retry_at_ms: 0,
            trial_since_ms: None,
            last_ms: now_ms,
            last_failure: None,
            total_failures: 0,
            total_successes: 0,
        }
    }
}

/// Every peer's breaker. See the module documentation.
#[derive(Clone, Debug)]
pub struct Breakers {
    policy: BreakerPolicy,
    peers: BTreeMap<NodeId, Entry>,
}

impl Breakers {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breakers {
            policy,
            peers: BTreeMap::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Breakers held (at most `max_peers`).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn threshold(&self) -> u32 {
        self.policy.failures.max(1)
    }

    /// The cool-down after the `opens`-th open in a row (≥ 1).
    fn cooldown(&self, opens: u32) -> u64 {
        let shift = opens.saturating_sub(1).min(63);
        let factor = 1u64 << shift;
        self.policy
            .cooldown_ms
            .saturating_mul(factor)
            .min(self.policy.max_cooldown_ms.max(self.policy.cooldown_ms))
    }

    /// Whether `peer` may be asked now, without taking the trial: for
    /// filtering candidates. [`Breakers::acquire`] is what lets a request
    /// through.
    pub fn check(&self, peer: &NodeId, now_ms: u64) -> Result<(), Refused> {
        if !self.policy.enabled {
            return Ok(());
        }
        let Some(e) = self.peers.get(peer) else {
            return Ok(());
        };
        match e.state {
            State::Closed => Ok(()),
            State::Open if now_ms >= e.retry_at_ms => Ok(()),
            State::Open => Err(Refused {
                state: State::Open,
                retry_at_ms: e.retry_at_ms,
            }),
            State::HalfOpen => match e.trial_since_ms {
                None => Ok(()),
                Some(t) => {
                    let timeout_at = t.saturating_add(self.policy.trial_timeout_ms);
                    if now_ms >= timeout_at {
                        Ok(())
                    } else {
                        Err(Refused {
                            state: State::HalfOpen,
                            retry_at_ms: timeout_at,
                        })
                    }
                }
            },
        }
    }

    /// Let one request go to `peer`, or refuse. An open breaker whose
    /// cool-down is over turns half-open and lets this request through as
    /// its trial; a trial that timed out counts as failed first.
    pub fn acquire(&mut self, peer: &NodeId, now_ms: u64) -> Result<Permit, Refused> {
        if !self.policy.enabled {
            return Ok(Permit::Normal);
        }
        self.expire_trial(peer, now_ms);
        let Some(state) = self.peers.get(peer).map(|e| e.state) else {
            return Ok(Permit::Normal);
        };
        if state == State::Closed {
            return Ok(Permit::Normal);
        }
        self.check(peer, now_ms)?;
        if let Some(e) = self.peers.get_mut(peer) {
            e.state = State::HalfOpen;
            e.trial_since_ms = Some(now_ms);
            e.last_ms = e.last_ms.max(now_ms);
        }
        Ok(Permit::Trial)
    }

    /// A half-open trial with no outcome for `trial_timeout_ms` failed.
    fn expire_trial(&mut self, peer: &NodeId, now_ms: u64) {
        let timeout = self.policy.trial_timeout_ms;
        let expired = self.peers.get(peer).is_some_and(|e| {
            e.state == State::HalfOpen
                && e.trial_since_ms
                    .is_some_and(|t| now_ms >= t.saturating_add(timeout))
        });
        if expired {
            self.record(
                peer,
                Outcome::Failure("the half-open trial had no answer in time".into()),
                now_ms,
            );
        }
    }

    /// What became of a request to `peer`. Returns the change of state,
    /// if any.
    pub fn record(&mut self, peer: &NodeId, outcome: Outcome, now_ms: u64) -> Option<Transition> {
        if !self.policy.enabled {
            return None;
        }
        if !self.peers.contains_key(peer) {
            if outcome == Outcome::Success {
                return None;
            }
            if self.peers.len() >= self.policy.max_peers.max(1) {
                self.evict();
            }
            self.peers.insert(peer.clone(), Entry::new(now_ms));
        }
        let threshold = self.threshold();
        let e = self.peers.get(peer)?;
        let from = e.state;
        let next_opens = e.opens.saturating_add(1);
        let cooldown = self.cooldown(next_opens);
        let e = self.peers.get_mut(peer)?;
        e.last_ms = e.last_ms.max(now_ms);
        match outcome {
            Outcome::Success => {
                e.total_successes = e.total_successes.saturating_add(1);
                match e.state {
                    // Late answers to requests sent before it opened.
                    State::Open => None,
                    State::Closed | State::HalfOpen => {
                        e.state = State::Closed;
                        e.failures = 0;
                        e.opens = 0;
                        e.trial_since_ms = None;
                        (from != State::Closed).then(|| Transition {
                            peer: peer.clone(),
                            from,
                            to: State::Closed,
                            failures: 0,
                            retry_at_ms: None,
                        })
                    }
                }
            }
            Outcome::Failure(why) => {
                e.total_failures = e.total_failures.saturating_add(1);
                e.last_failure = Some(why);
                match e.state {
                    State::Open => None,
                    State::Closed | State::HalfOpen => {
                        e.failures = e.failures.saturating_add(1);
                        if e.state == State::HalfOpen || e.failures >= threshold {
                            e.state = State::Open;
                            e.opens = next_opens;
                            e.opened_at_ms = Some(now_ms);
                            e.retry_at_ms = now_ms.saturating_add(cooldown);
                            e.trial_since_ms = None;
                            Some(Transition {
                                peer: peer.clone(),
                                from,
                                to: State::Open,
                                failures: e.failures,
                                retry_at_ms: Some(e.retry_at_ms),
                            })
                        } else {
                            None
                        }
                    }
                }
            }
        }
    }

    /// Drop a breaker to make room: the closed one idle longest, else the
    /// one idle longest.
    fn evict(&mut self) {
        let pick = |closed_only: bool| {
            self.peers
                .iter()
                .filter(|(_, e)| !closed_only || e.state == State::Closed)
                .min_by_key(|(id, e)| (e.last_ms, (*id).clone()))
                .map(|(id, _)| id.clone())
        };
        if let Some(id) = pick(true).or_else(|| pick(false)) {
            self.peers.remove(&id);
        }
    }

    /// `peer`'s breaker as of `now_ms`, if it has one.
    pub fn info(&self, peer: &NodeId, now_ms: u64) -> Option<BreakerInfo> {
        let e = self.peers.get(peer)?;
        let state = match e.state {
            State::Open if now_ms >= e.retry_at_ms => State::HalfOpen,
            s => s,
        };
        Some(BreakerInfo {
            node_id: peer.clone(),
            state,
            failures: e.failures,
            opens: e.opens,
            opened_at_ms: e.opened_at_ms,
            retry_at_ms: (e.state == State::Open).then_some(e.retry_at_ms),
            trial_in_flight: e.state == State::HalfOpen && e.trial_since_ms.is_some(),
            last_failure: e.last_failure.clone(),
            total_failures: e.total_failures,
            total_successes: e.total_successes,
        })
    }

    /// Every breaker held, by node id.
    pub fn snapshot(&self, now_ms: u64) -> Vec<BreakerInfo> {
        self.peers
            .keys()
            .filter_map(|id| self.info(id, now_ms))
            .collect()
    }

    /// Peers whose breaker is not closed as of `now_ms` (for metrics).
    pub fn open_count(&self, now_ms: u64) -> usize {
        self.peers
            .keys()
            .filter(|id| {
                self.info(id, now_ms)
                    .is_some_and(|i| i.state != State::Closed)
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn policy(failures: u32, cooldown_ms: u64) -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            failures,
            cooldown_ms,
            max_cooldown_ms: cooldown_ms * 4,
            trial_timeout_ms: 5_000,
            max_peers: 16,
        }
    }

    fn fail(b: &mut Breakers, p: &str, now: u64) -> Option<Transition> {
        b.record(&n(p), Outcome::Failure("unreachable".into()), now)
    }

    #[test]
    fn faults_are_owner_faults_only() {
        assert!(is_fault(DenyReason::Unreachable));
        assert!(is_fault(DenyReason::StorageError));
        for r in [
            DenyReason::InsufficientCapacity,
            DenyReason::QuotaExceeded,
            DenyReason::Forbidden,
            DenyReason::Busy,
            DenyReason::Unsatisfiable,
            DenyReason::BadRequest,
            DenyReason::ShuttingDown,
        ] {
            assert!(!is_fault(r), "{r:?}");
        }
    }

    #[test]
    fn opens_at_threshold_then_half_open_then_closes() {
        let mut b = Breakers::new(policy(3, 1_000));
        assert_eq!(fail(&mut b, "a", 0), None);
        assert_eq!(fail(&mut b, "a", 10), None);
        assert_eq!(b.acquire(&n("a"), 20), Ok(Permit::Normal));
        let t = fail(&mut b, "a", 30).expect("opens at the third fault");
        assert_eq!((t.from, t.to, t.failures), (State::Closed, State::Open, 3));
        assert_eq!(t.retry_at_ms, Some(1_030));
        let r = b.acquire(&n("a"), 500).unwrap_err();
        assert_eq!((r.state, r.retry_at_ms), (State::Open, 1_030));
        assert!(
            r.reason(500).contains("circuit open until 1030"),
            "{}",
            r.reason(500)
        );
        assert!(b.check(&n("a"), 1_029).is_err());
        // Other peers are not affected.
        assert_eq!(b.acquire(&n("b"), 500), Ok(Permit::Normal));
        // Cool-down over: one trial, and only one.
        assert_eq!(b.info(&n("a"), 1_030).unwrap().state, State::HalfOpen);
        assert_eq!(b.acquire(&n("a"), 1_030), Ok(Permit::Trial));
        let r = b.acquire(&n("a"), 1_031).unwrap_err();
        assert_eq!(r.state, State::HalfOpen);
        assert!(b.info(&n("a"), 1_031).unwrap().trial_in_flight);
        let t = b.record(&n("a"), Outcome::Success, 1_100).unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        let i = b.info(&n("a"), 1_100).unwrap();
        assert_eq!((i.state, i.failures, i.opens), (State::Closed, 0, 0));
        assert_eq!(b.acquire(&n("a"), 1_101), Ok(Permit::Normal));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breakers::new(policy(3, 1_000));
        fail(&mut b, "a", 0);
        fail(&mut b, "a", 1);
        b.record(&n("a"), Outcome::Success, 2);
        fail(&mut b, "a", 3);
        assert_eq!(fail(&mut b, "a", 4), None);
        assert!(fail(&mut b, "a", 5).is_some());
    }

    #[test]
    fn failed_trials_back_off_up_to_the_max() {
        let mut b = Breakers::new(policy(1, 1_000));
        let mut now = 0;
        let mut cooldowns = vec![];
        for _ in 0..5 {
            let t = if now == 0 {
                fail(&mut b, "a", now).unwrap()
            } else {
                assert_eq!(b.acquire(&n("a"), now), Ok(Permit::Trial));
                fail(&mut b, "a", now).unwrap()
            };
            let at = t.retry_at_ms.unwrap();
            cooldowns.push(at - now);
            now = at;
        }
        assert_eq!(cooldowns, vec![1_000, 2_000, 4_000, 4_000, 4_000]);
        assert_eq!(b.info(&n("a"), 0).unwrap().opens, 5);
    }

    #[test]
    fn a_silent_trial_times_out_as_failed() {
        let mut b = Breakers::new(policy(1, 1_000));
        fail(&mut b, "a", 0);
        assert_eq!(b.acquire(&n("a"), 1_000), Ok(Permit::Trial));
        assert!(b.acquire(&n("a"), 5_999).is_err());
        // The trial let through at 1000 times out at 6000: it failed, and
        // the breaker is open again for the doubled cool-down.
        let r = b.acquire(&n("a"), 6_000).unwrap_err();
        assert_eq!((r.state, r.retry_at_ms), (State::Open, 8_000));
    }

    #[test]
    fn late_outcomes_while_open_change_nothing() {
        let mut b = Breakers::new(policy(1, 1_000));
        fail(&mut b, "a", 0);
        assert_eq!(b.record(&n("a"), Outcome::Success, 10), None);
        assert_eq!(fail(&mut b, "a", 20), None);
        let i = b.info(&n("a"), 30).unwrap();
        assert_eq!((i.state, i.retry_at_ms), (State::Open, Some(1_000)));
    }

    #[test]
    fn disabled_lets_everything_through() {
        let mut b = Breakers::new(BreakerPolicy {
            enabled: false,
            ..policy(1, 1_000)
        });
        for t in 0..10 {
            assert_eq!(fail(&mut b, "a", t), None);
        }
        assert_eq!(b.acquire(&n("a"), 10), Ok(Permit::Normal));
        assert!(b.is_empty());
    }

    #[test]
    fn successes_of_unknown_peers_store_nothing() {
        let mut b = Breakers::new(policy(3, 1_000));
        b.record(&n("a"), Outcome::Success, 0);
        assert!(b.is_empty());
    }

    #[test]
    fn eviction_prefers_closed_breakers() {
        let mut b = Breakers::new(BreakerPolicy {
            max_peers: 2,
            ..policy(1, 1_000)
        });
        fail(&mut b, "open", 0);
        b.record(&n("open"), Outcome::Success, 1); // late: still open
        fail(&mut b, "x", 5);
        // x is open too; both open: the one idle longest goes.
        fail(&mut b, "y", 10);
        assert_eq!(b.len(), 2);
        assert!(b.info(&n("open"), 10).is_none());
        // Close x with a trial; a new peer then evicts x, not y.
        assert_eq!(b.acquire(&n("x"), 1_005), Ok(Permit::Trial));
        b.record(&n("x"), Outcome::Success, 1_006);
        fail(&mut b, "z", 1_007);
        assert!(b.info(&n("x"), 1_007).is_none());
        assert!(b.info(&n("y"), 1_007).is_some());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Acquire(u8),
            Fail(u8),
            Succeed(u8),
            Wait(u16),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..6).prop_map(Op::Acquire),
                (0u8..6).prop_map(Op::Fail),
                (0u8..6).prop_map(Op::Succeed),
                (0u16..3_000).prop_map(Op::Wait),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Against a model of the documented rules: opens exactly at
            /// the threshold, at most one trial while half-open, closes on
            /// success, and memory stays bounded.
            #[test]
            fn follows_the_rules(
                failures in 1u32..5,
                max_peers in 1usize..5,
                ops in proptest::collection::vec(op(), 0..200),
            ) {
                let mut b = Breakers::new(BreakerPolicy {
                    enabled: true,
                    failures,
                    cooldown_ms: 1_000,
                    max_cooldown_ms: 8_000,
                    trial_timeout_ms: 2_500,
                    max_peers,
                });
                let mut now = 0u64;
                // Trials let through and not yet answered, per peer.
                let mut trials: BTreeMap<NodeId, u64> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Wait(ms) => now += u64::from(ms),
                        Op::Acquire(p) => {
                            let p = n(&p.to_string());
                            if b.info(&p, now).is_none_or(|i| !i.trial_in_flight) {
                                trials.remove(&p);
                            }
                            let in_flight = trials.get(&p).copied();
                            match b.acquire(&p, now) {
                                Ok(Permit::Trial) => {
                                    // Only once the last trial timed out.
                                    prop_assert!(in_flight.is_none(), "a second trial let through");
                                    trials.insert(p.clone(), now);
                                    prop_assert_eq!(b.info(&p, now).unwrap().state, State::HalfOpen);
                                }
                                Ok(Permit::Normal) => {
                                    prop_assert!(in_flight.is_none());
                                    let st = b.info(&p, now).map(|i| i.state);
                                    prop_assert!(st.is_none() || st == Some(State::Closed));
                                }
                                Err(r) => {
                                    prop_assert!(r.retry_at_ms > now);
                                    prop_assert!(b.check(&p, now).is_err());
                                }
                            }
                        }
                        Op::Fail(p) => {
                            let p = n(&p.to_string());
                            let before = b.info(&p, now);
                            let t = fail(&mut b, &p.0, now);
                            trials.remove(&p);
                            match before.clone().map(|i| (i.state, i.failures, i.trial_in_flight, i.retry_at_ms)) {
                                None | Some((State::Closed, _, _, _)) => {
                                    let had = before_failures(&before);
                                    if had + 1 >= failures {
                                        let t = t.expect("opens at the threshold");
                                        prop_assert_eq!(t.to, State::Open);
                                        prop_assert_eq!(t.failures, failures);
                                    } else {
                                        prop_assert!(t.is_none(), "opened early");
                                        prop_assert_eq!(b.info(&p, now).unwrap().failures, had + 1);
                                    }
                                }
                                Some((State::HalfOpen, _, _, retry)) if retry.is_none() => {
                                    // A real half-open (trial taken or not).
                                    prop_assert_eq!(t.map(|t| t.to), Some(State::Open));
                                }
                                Some(_) => {
                                    // Open, cool-down over or not: nothing.
                                    prop_assert!(t.is_none());
                                }
                            }
                        }
                        Op::Succeed(p) => {
                            let p = n(&p.to_string());
                            let before = b.info(&p, now);
                            b.record(&p, Outcome::Success, now);
                            trials.remove(&p);
                            if let Some(i) = before {
                                if i.retry_at_ms.is_none() {
                                    // Closed or half-open: closes.
                                    let a = b.info(&p, now).unwrap();
                                    prop_assert_eq!((a.state, a.failures), (State::Closed, 0));
                                }
                            }
                        }
                    }
                    prop_assert!(b.len() <= max_peers);
                }
            }
        }

        fn before_failures(i: &Option<BreakerInfo>) -> u32 {
            i.as_ref().map(|i| i.failures).unwrap_or(0)
        }
    }
}
