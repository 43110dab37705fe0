//! Adaptive throttling, on the owner side (seed 003's "adaptive throttling:
//! dynamic adjustment based on system health"): the per-peer admission
//! rate of [`crate::core::throttle`] is lowered while the owner's host is
//! under pressure and raised back to the configured rate when it is not.
//!
//! # The controller (AIMD)
//!
//! The shell feeds host readings in with [`Adaptive::observe`] and calls
//! [`Adaptive::step`] on its maintenance tick. The host is *under pressure*
//! when its CPU use (percent of the machine) is at or above `cpu_pct`, or
//! its memory use (percent of the machine) at or above `memory_pct`. At most
//! once per `interval_ms`:
//!
//! - under pressure, the effective rate is multiplied by `decrease` (e.g.
//!   0.5), but never goes below `floor × configured`;
//! - otherwise it grows by `increase × configured` (e.g. a tenth), up to the
//!   configured rate.
//!
//! So the rate always stays within `[floor × configured, configured]`, falls
//! geometrically under sustained pressure and climbs back linearly once it
//! lifts. Only the refill rate changes: the burst stays as configured.
//! Readings that are not finite are ignored; with no reading yet there is
//! no pressure.
//!
//! Sans-IO: time comes in as `now_ms`; a clock that steps back does not
//! step the controller.

use serde::{Deserialize, Serialize};

/// How the controller behaves. From `[throttle]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptivePolicy {
    /// Default false: the rate stays as configured.
    pub enabled: bool,
    /// CPU use (percent) at or above which the host is under pressure.
    pub cpu_pct: f64,
    /// Memory use (percent) at or above which the host is under pressure.
    pub memory_pct: f64,
    /// Factor applied to the rate per step under pressure, in (0, 1).
    pub decrease: f64,
    /// Growth per step without pressure, as a fraction of the configured
    /// rate, in (0, 1].
    pub increase: f64,
    /// Lowest rate, as a fraction of the configured rate, in (0, 1].
    pub floor: f64,
    /// Time between steps, ms.
    pub interval_ms: u64,
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        AdaptivePolicy {
            enabled: false,
            cpu_pct: 90.0,
            memory_pct: 90.0,
            decrease: 0.5,
            increase: 0.1,
            floor: 0.1,
            interval_ms: 1_000,
        }
    }
}

/// A field of [`AdaptivePolicy`] with a value it cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: expected {expected}, got {got}")]
pub struct InvalidAdaptive {
    pub field: &'static str,
    pub expected: &'static str,
    pub got: String,
}

impl AdaptivePolicy {
    /// Every field within its range. [`Adaptive`] clamps anything else.
    pub fn validate(&self) -> Result<(), InvalidAdaptive> {
        let bad = |field, expected, got: f64| {
            Err(InvalidAdaptive {
                field,
                expected,
                got: got.to_string(),
            })
        };
        for (field, v) in [("cpu_pct", self.cpu_pct), ("memory_pct", self.memory_pct)] {
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                return bad(field, "a percentage above 0 and at most 100", v);
            }
        }
        if !(self.decrease.is_finite() && self.decrease > 0.0 && self.decrease < 1.0) {
            return bad("decrease", "a factor above 0 and below 1", self.decrease);
        }
        if !(self.increase.is_finite() && self.increase > 0.0 && self.increase <= 1.0) {
            return bad(
                "increase",
                "a fraction above 0 and at most 1",
                self.increase,
            );
        }
        if !(self.floor.is_finite() && self.floor > 0.0 && self.floor <= 1.0) {
            return bad("floor", "a fraction above 0 and at most 1", self.floor);
        }
        if self.interval_ms == 0 {
            return Err(InvalidAdaptive {
                field: "interval",
                expected: "a duration above 0",
                got: "0s".into(),
            });
        }
        Ok(())
    }
}

/// The controller's view, for the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveStatus {
    pub enabled: bool,
    /// The configured per-peer rate, requests a second.
    pub configured_per_sec: f64,
    /// The rate in force now.
    pub effective_per_sec: f64,
    /// Whether the last readings showed pressure.
    pub under_pressure: bool,
    /// The last readings, percent.
    pub cpu_pct: Option<f64>,
    pub memory_pct: Option<f64>,
}

/// The AIMD controller. See the module documentation.
#[derive(Clone, Debug)]
pub struct Adaptive {
    policy: AdaptivePolicy,
    configured: f64,
    effective: f64,
    cpu_pct: Option<f64>,
    memory_pct: Option<f64>,
    last_step_ms: Option<u64>,
}

/// `v` clamped into `[lo, hi]`, NaN read as `lo`.
fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    if v.is_nan() {
        lo
    } else {
        v.max(lo).min(hi)
    }
}

impl Adaptive {
    /// At the configured rate `configured` (requests a second per peer).
    pub fn new(policy: AdaptivePolicy, configured: f64) -> Self {
        let configured = if configured.is_finite() && configured > 0.0 {
            configured
        } else {
            0.0
        };
        Adaptive {
            policy,
            configured,
            effective: configured,
            cpu_pct: None,
            memory_pct: None,
            last_step_ms: None,
        }
    }

    fn floor(&self) -> f64 {
        self.configured * clamp(self.policy.floor, 0.0, 1.0)
    }

    /// The rate in force.
    pub fn effective(&self) -> f64 {
        self.effective
    }

    /// The configured rate.
    pub fn configured(&self) -> f64 {
        self.configured
    }

    /// The configured rate changed (policy change): start again from it.
    pub fn set_configured(&mut self, configured: f64) {
        *self = Adaptive::new(self.policy.clone(), configured);
    }

    /// The latest host readings, percent of the machine.
    pub fn observe(&mut self, cpu_pct: f64, memory_pct: f64) {
        if cpu_pct.is_finite() {
            self.cpu_pct = Some(cpu_pct);
        }
        if memory_pct.is_finite() {
            self.memory_pct = Some(memory_pct);
        }
    }

    /// Whether the last readings show pressure.
    pub fn under_pressure(&self) -> bool {
        self.cpu_pct.is_some_and(|c| c >= self.policy.cpu_pct)
            || self.memory_pct.is_some_and(|m| m >= self.policy.memory_pct)
    }

    /// One step, at most once per `interval_ms`. Returns the new rate when
    /// it changed.
    pub fn step(&mut self, now_ms: u64) -> Option<f64> {
        if !self.policy.enabled {
            return None;
        }
        if let Some(last) = self.last_step_ms {
            if now_ms < last.saturating_add(self.policy.interval_ms.max(1)) {
                return None;
            }
        }
        self.last_step_ms = Some(now_ms);
        let before = self.effective;
        let (floor, top) = (self.floor(), self.configured);
        self.effective = if self.under_pressure() {
            clamp(
                self.effective * clamp(self.policy.decrease, 0.0, 1.0),
                floor,
                top,
            )
        } else {
            clamp(
                self.effective + top * clamp(self.policy.increase, 0.0, 1.0),
                floor,
                top,
            )
        };
        (self.effective != before).then_some(self.effective)
    }

    /// For the API.
    pub fn status(&self) -> AdaptiveStatus {
        AdaptiveStatus {
            enabled: self.policy.enabled,
            configured_per_sec: self.configured,
            effective_per_sec: self.effective,
            under_pressure: self.under_pressure(),
            cpu_pct: self.cpu_pct,
            memory_pct: self.memory_pct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> AdaptivePolicy {
        AdaptivePolicy {
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_validate_and_bad_values_name_the_field() {
        assert_eq!(AdaptivePolicy::default().validate(), Ok(()));
        let f = |p: AdaptivePolicy| p.validate().unwrap_err().field;
        assert_eq!(
            f(AdaptivePolicy {
                decrease: 1.0,
                ..on()
            }),
            "decrease"
        );
        assert_eq!(f(AdaptivePolicy { floor: 0.0, ..on() }), "floor");
        assert_eq!(
            f(AdaptivePolicy {
                cpu_pct: f64::NAN,
                ..on()
            }),
            "cpu_pct"
        );
        assert_eq!(
            f(AdaptivePolicy {
                interval_ms: 0,
                ..on()
            }),
            "interval"
        );
    }

    #[test]
    fn halves_under_pressure_and_recovers_linearly() {
        let mut a = Adaptive::new(on(), 50.0);
        assert_eq!(a.step(0), None, "no readings: no pressure, already at top");
        a.observe(95.0, 10.0);
        assert_eq!(a.step(500), None, "within the interval");
        assert_eq!(a.step(1_000), Some(25.0));
        assert_eq!(a.step(2_000), Some(12.5));
        assert_eq!(a.step(3_000), Some(6.25));
        assert_eq!(a.step(4_000), Some(5.0), "floor is 10 %");
        assert_eq!(a.step(5_000), None);
        assert!(a.status().under_pressure);
        a.observe(20.0, 10.0);
        assert_eq!(a.step(6_000), Some(10.0));
        assert_eq!(a.step(7_000), Some(15.0));
        for t in 8..20 {
            a.step(t * 1_000);
        }
        assert_eq!(a.effective(), 50.0);
        // Memory pressure counts too.
        a.observe(20.0, 91.0);
        assert_eq!(a.step(30_000), Some(25.0));
    }

    #[test]
    fn disabled_never_moves() {
        let mut a = Adaptive::new(AdaptivePolicy::default(), 50.0);
        a.observe(100.0, 100.0);
        assert_eq!(a.step(10_000), None);
        assert_eq!(a.effective(), 50.0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Within [floor, configured] whatever the readings; never
            /// rises under pressure, never falls without it.
            #[test]
            fn bounded_and_monotone(
                configured in 0.1f64..1_000.0,
                decrease in 0.05f64..0.95,
                increase in 0.01f64..1.0,
                floor in 0.01f64..1.0,
                readings in proptest::collection::vec((0f64..120.0, 0f64..120.0, 0u64..3_000), 0..100),
            ) {
                let mut a = Adaptive::new(AdaptivePolicy { enabled: true, decrease, increase, floor, ..Default::default() }, configured);
                let mut now = 0;
                for (cpu, mem, dt) in readings {
                    now += dt;
                    a.observe(cpu, mem);
                    let before = a.effective();
                    a.step(now);
                    let r = a.effective();
                    prop_assert!(r >= configured * floor - 1e-9 && r <= configured + 1e-9, "{r}");
                    if a.under_pressure() {
                        prop_assert!(r <= before);
                    } else {
                        prop_assert!(r >= before);
                    }
                }
            }

            /// Sustained pressure reaches the floor; then relief reaches
            /// the configured rate again.
            #[test]
            fn falls_then_recovers(configured in 1.0f64..1_000.0, floor in 0.01f64..1.0) {
                let mut a = Adaptive::new(AdaptivePolicy { enabled: true, floor, ..Default::default() }, configured);
                a.observe(99.0, 0.0);
                for t in 0..100 {
                    a.step(t * 1_000);
                }
                prop_assert!((a.effective() - configured * floor).abs() < 1e-9);
                a.observe(0.0, 0.0);
                for t in 100..200 {
                    a.step(t * 1_000);
                }
                prop_assert_eq!(a.effective(), configured);
            }
        }
    }
}
