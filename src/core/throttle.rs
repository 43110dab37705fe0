//! Per-peer rate limiting: a token bucket per requesting node (seed 003's
//! throttling), so one chatty or misbehaving peer cannot monopolise the
//! owner's admission path.
//!
//! The owner's request handler calls [`Throttle::admit`] for each incoming
//! request before it reaches the ledger; a refusal is a typed
//! [`Denial`] with reason `busy` and `retry_after_ms`, never a string.
//!
//! # The bucket
//!
//! Each peer has a bucket of at most `burst` tokens (a `burst` of 0 reads as
//! 1), refilled continuously at `per_sec` tokens a second. A peer seen for
//! the first time starts with a full bucket. Each admission takes one token.
//!
//! Tokens are counted in integer nano-tokens and the refill rate is rounded
//! *down* once, to whole nano-tokens per millisecond, so there is no
//! floating-point drift: over any window of `T` ms a peer is admitted at most
//! `max(burst, 1) + per_sec × T / 1000` times while its bucket is held. A
//! refused peer that waits the `retry_after_ms` it was told (≥ 1) and asks
//! again is admitted, provided nobody else spent its token in between and
//! [`Throttle::set_limit`] did not slow the rate. A `per_sec` that rounds to
//! zero (≤ 10⁻⁶/s, 0, negative or NaN) never refills; its refusals carry
//! `retry_after_ms = u64::MAX`.
//!
//! # Memory
//!
//! At most `max_peers` buckets (a `max_peers` of 0 reads as 1) are held.
//! When a new peer arrives and the table is full, the *fullest* bucket is
//! evicted (ties: the longest idle, then the smallest node id). A full
//! bucket carries no state, since a returning peer would start full anyway,
//! so eviction only ever loosens the limit when more than `max_peers` peers
//! are all mid-burst at once.
//!
//! Sans-IO: time comes in as `now_ms`; a clock that steps back is treated
//! as not having moved. Every map is a `BTreeMap`, so behaviour is
//! deterministic, and no input panics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Denial, NodeId};

/// Nano-tokens per token.
const UNIT: u64 = 1_000_000_000;

/// How fast each peer may make requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate: tokens added per second. Default 50.
    pub per_sec: f64,
    /// Bucket size: requests admitted back to back after a quiet spell.
    /// Default 100.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_sec: 50.0,
            burst: 100,
        }
    }
}

/// A field of [`RateLimit`] with a value it cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: expected {expected}, got {got}")]
pub struct InvalidRateLimit {
    /// The field's name, e.g. `per_sec`.
    pub field: &'static str,
    /// What it must be.
    pub expected: &'static str,
    /// What it was.
    pub got: String,
}

impl RateLimit {
    /// `per_sec` must be finite and positive, `burst` at least 1.
    /// [`Throttle`] accepts anything, as the module documentation says.
    pub fn validate(&self) -> Result<(), InvalidRateLimit> {
        if !(self.per_sec.is_finite() && self.per_sec > 0.0) {
            return Err(InvalidRateLimit {
                field: "per_sec",
                expected: "a finite rate above 0",
                got: self.per_sec.to_string(),
            });
        }
        if self.burst == 0 {
            return Err(InvalidRateLimit {
                field: "burst",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        Ok(())
    }

    /// Refill rate in nano-tokens per ms, rounded down.
    fn rate(&self) -> u64 {
        if self.per_sec.is_nan() || self.per_sec <= 0.0 {
            0
        } else {
            // per_sec tokens/s = per_sec × 10⁶ nano-tokens/ms. The cast
            // saturates (∞ → u64::MAX).
            (self.per_sec * (UNIT / 1_000) as f64).floor() as u64
        }
    }

    /// Bucket size in nano-tokens. `burst ≤ u32::MAX`, so no overflow.
    fn capacity(&self) -> u64 {
        u64::from(self.burst.max(1)) * UNIT
    }
}

/// One peer's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    /// Nano-tokens, as of `at_ms`.
    tokens: u64,
    /// When `tokens` was last brought up to date.
    at_ms: u64,
}

/// Per-peer token buckets. See the module documentation.
#[derive(Clone, Debug)]
pub struct Throttle {
    limit: RateLimit,
    rate: u64,
    capacity: u64,
    max_peers: usize,
    buckets: BTreeMap<NodeId, Bucket>,
}

impl Throttle {
    /// No buckets yet; each peer's appears on its first request.
    pub fn new(limit: RateLimit, max_peers: usize) -> Self {
        Throttle {
            rate: limit.rate(),
            capacity: limit.capacity(),
            limit,
            max_peers: max_peers.max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Number of buckets held (at most `max_peers`).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Change the limit. Buckets are kept, cut to the new `burst`; time
    /// since each bucket's last request refills at the new rate.
    pub fn set_limit(&mut self, limit: RateLimit) {
        self.rate = limit.rate();
        self.capacity = limit.capacity();
        self.limit = limit;
        let cap = self.capacity;
        for b in self.buckets.values_mut() {
            b.tokens = b.tokens.min(cap);
        }
    }

    /// Tokens in `b` at `now_ms` (never moving its clock back).
    fn refilled(&self, b: Bucket, now_ms: u64) -> Bucket {
        let elapsed = now_ms.saturating_sub(b.at_ms);
        let added = u128::from(elapsed) * u128::from(self.rate);
        let tokens = (u128::from(b.tokens) + added).min(u128::from(self.capacity));
        Bucket {
            // ≤ capacity, which is a u64.
            tokens: u64::try_from(tokens).unwrap_or(self.capacity),
            at_ms: b.at_ms.max(now_ms),
        }
    }

    /// Take one token for `peer`.
    ///
    /// `Err(Denial::busy(..))` when its bucket is empty, with
    /// `retry_after_ms` the time until one token is back (≥ 1; `u64::MAX`
    /// when the rate is zero). A refused request takes nothing.
    pub fn admit(&mut self, peer: &NodeId, now_ms: u64) -> Result<(), Denial> {
        let bucket = match self.buckets.get(peer) {
            Some(b) => self.refilled(*b, now_ms),
            None => {
                if self.buckets.len() >= self.max_peers {
                    self.evict(now_ms);
                }
                Bucket {
                    tokens: self.capacity,
                    at_ms: now_ms,
                }
            }
        };
        let (bucket, result) = if bucket.tokens >= UNIT {
            (
                Bucket {
                    tokens: bucket.tokens - UNIT,
                    ..bucket
                },
                Ok(()),
            )
        } else {
            let missing = UNIT - bucket.tokens;
            let retry_after_ms = if self.rate == 0 {
                u64::MAX
            } else {
                missing.div_ceil(self.rate).max(1)
            };
            let message = format!(
                "{peer} is over its rate limit ({} requests/s, burst {}); retry in {retry_after_ms} ms",
                self.limit.per_sec,
                self.limit.burst.max(1)
            );
            (bucket, Err(Denial::busy(message, retry_after_ms)))
        };
        self.buckets.insert(peer.clone(), bucket);
        result
    }

    /// Drop the fullest bucket (ties: least recently updated, then smallest
    /// node id).
    fn evict(&mut self, now_ms: u64) {
        let victim = self
            .buckets
            .iter()
            .map(|(id, b)| (self.refilled(*b, now_ms).tokens, b.at_ms, id))
            .max_by(|(ta, at_a, ida), (tb, at_b, idb)| {
                ta.cmp(tb).then(at_b.cmp(at_a)).then(idb.cmp(ida))
            })
            .map(|(_, _, id)| id.clone());
        if let Some(id) = victim {
            self.buckets.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DenyReason;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn limit(per_sec: f64, burst: u32) -> RateLimit {
        RateLimit { per_sec, burst }
    }

    #[test]
    fn defaults_and_serde() {
        let l: RateLimit = toml::from_str("").unwrap();
        assert_eq!(l, RateLimit::default());
        assert_eq!((l.per_sec, l.burst), (50.0, 100));
        assert_eq!(l.validate(), Ok(()));
        assert!(toml::from_str::<RateLimit>("rate = 1").is_err());
        let l: RateLimit = serde_json::from_str(r#"{"per_sec":2.5,"burst":3}"#).unwrap();
        assert_eq!(l, limit(2.5, 3));
        assert_eq!(limit(0.0, 1).validate().unwrap_err().field, "per_sec");
        assert_eq!(limit(f64::NAN, 1).validate().unwrap_err().field, "per_sec");
        assert_eq!(limit(1.0, 0).validate().unwrap_err().field, "burst");
    }

    #[test]
    fn burst_then_rate() {
        let mut t = Throttle::new(limit(10.0, 3), 16);
        for _ in 0..3 {
            t.admit(&n("a"), 1_000).unwrap();
        }
        let d = t.admit(&n("a"), 1_000).unwrap_err();
        assert_eq!(d.reason, DenyReason::Busy);
        assert_eq!(d.retry_after_ms, Some(100));
        assert!(d.message.contains("rate limit"), "{}", d.message);
        // Other peers have their own buckets.
        t.admit(&n("b"), 1_000).unwrap();
        // Partial refill: 60 ms of 100 leaves 40 to wait.
        assert_eq!(
            t.admit(&n("a"), 1_060).unwrap_err().retry_after_ms,
            Some(40)
        );
        t.admit(&n("a"), 1_100).unwrap();
        assert!(t.admit(&n("a"), 1_100).is_err());
        // A long quiet spell refills only up to the burst.
        for _ in 0..3 {
            t.admit(&n("a"), 100_000).unwrap();
        }
        assert!(t.admit(&n("a"), 100_000).is_err());
    }

    #[test]
    fn retry_after_is_at_least_one_ms() {
        let mut t = Throttle::new(limit(1_000_000.0, 1), 4);
        t.admit(&n("a"), 0).unwrap();
        assert_eq!(t.admit(&n("a"), 0).unwrap_err().retry_after_ms, Some(1));
        t.admit(&n("a"), 1).unwrap();
    }

    #[test]
    fn zero_rate_and_burst() {
        let mut t = Throttle::new(limit(0.0, 0), 4);
        t.admit(&n("a"), 0).unwrap();
        let d = t.admit(&n("a"), u64::MAX).unwrap_err();
        assert_eq!(d.retry_after_ms, Some(u64::MAX));
        let mut t = Throttle::new(limit(f64::NAN, 1), 4);
        t.admit(&n("a"), 0).unwrap();
        assert!(t.admit(&n("a"), 1 << 40).is_err());
        // Infinite rate: always a full bucket again.
        let mut t = Throttle::new(limit(f64::INFINITY, 1), 4);
        for now in 0..10 {
            t.admit(&n("a"), now).unwrap();
        }
    }

    #[test]
    fn clock_stepping_back_does_not_refill() {
        let mut t = Throttle::new(limit(1.0, 1), 4);
        t.admit(&n("a"), 10_000).unwrap();
        assert_eq!(
            t.admit(&n("a"), 5_000).unwrap_err().retry_after_ms,
            Some(1_000)
        );
        assert!(t.admit(&n("a"), 10_999).is_err());
        t.admit(&n("a"), 11_000).unwrap();
    }

    #[test]
    fn bounded_and_evicts_the_fullest() {
        let mut t = Throttle::new(limit(1.0, 2), 2);
        t.admit(&n("a"), 0).unwrap();
        t.admit(&n("a"), 0).unwrap(); // a: empty
        t.admit(&n("b"), 0).unwrap(); // b: 1 left
        t.admit(&n("c"), 0).unwrap(); // evicts b, the fullest
        assert_eq!(t.len(), 2);
        assert!(t.admit(&n("a"), 0).is_err(), "a's bucket was kept");
        // b comes back with a fresh bucket, evicting c (1 left, same as
        // nothing else: a is empty).
        t.admit(&n("b"), 0).unwrap();
        t.admit(&n("b"), 0).unwrap();
        assert_eq!(t.len(), 2);
        // Zero max_peers still holds one.
        let mut t = Throttle::new(limit(1.0, 1), 0);
        t.admit(&n("a"), 0).unwrap();
        t.admit(&n("b"), 0).unwrap();
        assert_eq!(t.len(), 1);
        assert!(!t.is_empty());
    }

    #[test]
    fn eviction_ties_go_to_the_longest_idle() {
        let mut t = Throttle::new(limit(0.0, 1), 2);
        t.admit(&n("b"), 0).unwrap();
        t.admit(&n("a"), 5).unwrap();
        // Both empty forever; b is older.
        t.admit(&n("c"), 10).unwrap();
        assert!(t.admit(&n("a"), 10).is_err(), "a kept");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn set_limit_cuts_buckets_to_the_new_burst() {
        let mut t = Throttle::new(limit(1.0, 10), 4);
        t.admit(&n("a"), 0).unwrap(); // 9 left
        t.set_limit(limit(1.0, 2));
        assert_eq!(t.limit(), &limit(1.0, 2));
        t.admit(&n("a"), 0).unwrap();
        t.admit(&n("a"), 0).unwrap();
        assert!(t.admit(&n("a"), 0).is_err());
        t.set_limit(limit(1_000.0, 2));
        t.admit(&n("a"), 1).unwrap();
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const PEERS: [&str; 3] = ["p0", "p1", "p2"];

        fn arb_limit() -> impl Strategy<Value = RateLimit> {
            (
                prop_oneof![Just(50.0), Just(1.0), 0.001f64..2_000.0],
                0u32..20,
            )
                .prop_map(|(per_sec, burst)| RateLimit { per_sec, burst })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Over every window [s, e] of admissions of one peer, at most
            /// `max(burst, 1) + per_sec × (e − s) / 1000` are admitted,
            /// however many peers share the table (enough room for all).
            #[test]
            fn rate_is_bounded(
                l in arb_limit(),
                reqs in prop::collection::vec((0usize..PEERS.len(), 0u64..200), 1..300),
            ) {
                let mut t = Throttle::new(l.clone(), PEERS.len());
                let mut now = 0u64;
                let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); PEERS.len()];
                for (p, dt) in reqs {
                    now += dt;
                    if t.admit(&n(PEERS[p]), now).is_ok() {
                        admitted[p].push(now);
                    }
                }
                let burst = f64::from(l.burst.max(1));
                for times in &admitted {
                    for i in 0..times.len() {
                        for j in i..times.len() {
                            let count = (j - i + 1) as f64;
                            let span = (times[j] - times[i]) as f64;
                            prop_assert!(
                                count <= burst + l.per_sec * span / 1000.0 + 1e-9,
                                "{count} admissions in {span} ms under {l:?}"
                            );
                        }
                    }
                }
            }

            /// A refused peer that waits `retry_after_ms` is admitted, even
            /// with other peers evicting buckets in a small table.
            #[test]
            fn waiting_retry_after_is_enough(
                l in arb_limit(),
                max_peers in 1usize..4,
                reqs in prop::collection::vec((0usize..PEERS.len(), 0u64..100), 1..200),
            ) {
                let mut t = Throttle::new(l, max_peers);
                let mut now = 0u64;
                for (p, dt) in reqs {
                    now += dt;
                    if let Err(d) = t.admit(&n(PEERS[p]), now) {
                        prop_assert_eq!(d.reason, DenyReason::Busy);
                        let wait = d.retry_after_ms.unwrap();
                        prop_assert!(wait >= 1);
                        prop_assert!(t.admit(&n(PEERS[p]), now + wait).is_ok());
                        now += wait;
                    }
                    prop_assert!(t.len() <= max_peers);
                }
            }

            /// Memory stays bounded however many peers arrive.
            #[test]
            fn table_is_bounded(
                max_peers in 0usize..8,
                ids in prop::collection::vec(0u32..64, 1..200),
            ) {
                let mut t = Throttle::new(RateLimit::default(), max_peers);
                for (now, id) in ids.into_iter().enumerate() {
                    let _ = t.admit(&NodeId(format!("n{id}")), now as u64);
                    prop_assert!(t.len() <= max_peers.max(1));
                }
            }
        }
    }
}
