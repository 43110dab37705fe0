//! Forecasting the owner's own use of the machine, for elastic sharing.
//!
//! Reactive elastic sharing ([`crate::core::elastic`]) shrinks what a node
//! lends only after local use has risen. Leases granted just before a
//! predictable peak (the owner's nightly build, the 9 o'clock start) then
//! still hold their cores while the owner needs them. A [`Forecaster`]
//! predicts one series of local use (CPU cores, or memory in MiB) over a
//! look-ahead horizon, so that the elastic target can use
//! `max(current use, forecast)` and shrink *before* the peak.
//!
//! # The model
//!
//! Two parts, each a form of exponential smoothing:
//!
//! - **Level and trend** (Holt's linear method, on irregular sample times).
//!   For a sample `x` after `dt` ms:
//!   `level' = α·x + (1 − α)·(level + trend·dt)` and
//!   `trend' = β·(level' − level)/dt + (1 − β)·trend`. The trend (rate of
//!   change, per ms) is bounded to `±upper` per minute. It is extrapolated
//!   only over `trend_horizon_ms`, a short reach: rate of change is noisy,
//!   and a long extrapolation of noise would shrink for nothing.
//! - **A daily profile.** The period (`period_ms`, a day by default) is cut
//!   into `buckets` time-of-day buckets. The samples of one bucket are
//!   averaged; when time leaves the bucket, that mean is folded into the
//!   bucket's profile value with factor γ (the first time it is taken as
//!   is). A bucket is *learned* once it has been folded once.
//!
//! The forecast at `now` over the horizon `H` is
//!
//! ```text
//! max( level, level + trend·min(H, trend_horizon),
//!      profile[b] for every learned bucket b that [now, now + H] touches )
//! ```
//!
//! clamped to `[0, upper]`. It is deliberately on the owner's side: it
//! predicts the highest use the horizon is expected to bring, not the mean.
//! Before any sample it is 0 (nothing is known; the caller still uses the
//! current value).
//!
//! # Restarts
//!
//! [`Forecaster::profile`] is the part worth keeping across restarts (it
//! takes a period to learn); the level and trend relearn in a few
//! samples. [`Forecaster::restore_profile`] takes a stored profile back
//! only if it was learned with the same bucket length and count, and
//! sanitises every value.
//!
//! # Inputs and bounds
//!
//! Sans-IO: time comes in as `now_ms`. Memory is bounded: one `f64` per
//! bucket, at most [`MAX_BUCKETS`]. No input panics: a NaN sample is
//! ignored, samples are clamped to `[0, upper]` (so ±∞ become 0 or
//! `upper`), a sample older than the last one is ignored, and invalid
//! parameters are read as documented on [`ForecastPolicy::validate`]. The
//! same samples always give the same forecasts.

use serde::{Deserialize, Serialize};

/// Most time-of-day buckets in one period: one a minute over a week.
pub const MAX_BUCKETS: u32 = 10_080;
/// Longest period: 7 days.
pub const MAX_PERIOD_MS: u64 = 7 * 24 * 3_600_000;
/// Shortest bucket: 1 s.
pub const MIN_BUCKET_MS: u64 = 1_000;

/// The forecaster's parameters. Every field has a default, so an empty
/// table is valid; check it with [`ForecastPolicy::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastPolicy {
    /// How far ahead to look, ms: the forecast is the highest use expected
    /// in `[now, now + horizon_ms]`. At most `period_ms`. Default 15 min.
    pub horizon_ms: u64,
    /// How far ahead the trend (rate of change) is extrapolated, ms. At
    /// most `horizon_ms`; 0 turns the trend off. Default 1 min.
    pub trend_horizon_ms: u64,
    /// The length of the repeating profile, ms. Default 24 h.
    pub period_ms: u64,
    /// Time-of-day buckets per period, 1..=[`MAX_BUCKETS`], each at least
    /// [`MIN_BUCKET_MS`] long. Default 96 (15 min each over a day).
    pub buckets: u32,
    /// α: how fast the level follows samples, in (0, 1]. Default 0.3.
    pub level_smoothing: f64,
    /// β: how fast the trend follows the level's changes, in (0, 1].
    /// Default 0.1.
    pub trend_smoothing: f64,
    /// γ: how fast a bucket's profile follows a new period's mean, in
    /// (0, 1]. Default 0.5.
    pub season_smoothing: f64,
}

impl Default for ForecastPolicy {
    fn default() -> Self {
        ForecastPolicy {
            horizon_ms: 15 * 60_000,
            trend_horizon_ms: 60_000,
            period_ms: 24 * 3_600_000,
            buckets: 96,
            level_smoothing: 0.3,
            trend_smoothing: 0.1,
            season_smoothing: 0.5,
        }
    }
}

/// A field of [`ForecastPolicy`] with a value it cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: expected {expected}, got {got}")]
pub struct InvalidForecastPolicy {
    /// The field's name, e.g. `level_smoothing`.
    pub field: &'static str,
    /// What it must be.
    pub expected: &'static str,
    /// What it was.
    pub got: String,
}

fn smoothing_ok(v: f64) -> bool {
    v.is_finite() && v > 0.0 && v <= 1.0
}

/// A smoothing factor as used: itself when valid, else 1 (follow the
/// latest value).
fn smoothing(v: f64) -> f64 {
    if smoothing_ok(v) {
        v
    } else {
        1.0
    }
}

impl ForecastPolicy {
    /// Check every field: `period_ms` in 1 s..=7 d; `buckets` in
    /// 1..=[`MAX_BUCKETS`] with buckets of at least 1 s; `horizon_ms` in
    /// 1..=`period_ms`; `trend_horizon_ms` at most `horizon_ms`; each
    /// smoothing factor finite and in (0, 1].
    ///
    /// A [`Forecaster`] never panics on an invalid policy: it clamps the
    /// period, buckets and horizons into those ranges, and reads an
    /// invalid smoothing factor as 1.
    pub fn validate(&self) -> Result<(), InvalidForecastPolicy> {
        let err = |field, expected, got: String| {
            Err(InvalidForecastPolicy {
                field,
                expected,
                got,
            })
        };
        if !(MIN_BUCKET_MS..=MAX_PERIOD_MS).contains(&self.period_ms) {
            return err(
                "period",
                "a period between 1s and 7d",
                format!("{}ms", self.period_ms),
            );
        }
        if !(1..=MAX_BUCKETS).contains(&self.buckets)
            || self.period_ms / u64::from(self.buckets) < MIN_BUCKET_MS
        {
            return err(
                "buckets",
                "1 to 10080 buckets, each at least 1s of the period",
                self.buckets.to_string(),
            );
        }
        if self.horizon_ms == 0 || self.horizon_ms > self.period_ms {
            return err(
                "horizon",
                "more than 0 and at most the period",
                format!("{}ms", self.horizon_ms),
            );
        }
        if self.trend_horizon_ms > self.horizon_ms {
            return err(
                "trend_horizon",
                "at most the horizon",
                format!("{}ms", self.trend_horizon_ms),
            );
        }
        for (field, v) in [
            ("level_smoothing", self.level_smoothing),
            ("trend_smoothing", self.trend_smoothing),
            ("season_smoothing", self.season_smoothing),
        ] {
            if !smoothing_ok(v) {
                return err(
                    field,
                    "a factor greater than 0 and at most 1",
                    v.to_string(),
                );
            }
        }
        Ok(())
    }
}

/// A learned time-of-day profile, as stored across restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The bucket length it was learned with, ms.
    pub bucket_ms: u64,
    /// One value per bucket; `None` where not learned.
    pub values: Vec<Option<f64>>,
}

/// The samples of the current bucket, not yet folded into the profile.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pending {
    /// Absolute bucket number: `now_ms / bucket_ms`.
    abs: u64,
    sum: f64,
    count: u32,
}

/// Forecasts one series of local use. See the module documentation.
#[derive(Clone, Debug)]
pub struct Forecaster {
    upper: f64,
    alpha: f64,
    beta: f64,
    gamma: f64,
    bucket_ms: u64,
    horizon_ms: u64,
    trend_horizon_ms: u64,
    /// `None` until the first sample.
    level: Option<f64>,
    /// Per ms.
    trend: f64,
    last_ms: u64,
    /// One entry per bucket; `None` until learned.
    profile: Vec<Option<f64>>,
    pending: Option<Pending>,
    /// How many times a bucket was folded into the profile.
    folds: u64,
}

impl Forecaster {
    /// A forecaster for a series that lies in `[0, upper]` (a NaN or
    /// negative `upper` reads as 0).
    pub fn new(policy: &ForecastPolicy, upper: f64) -> Self {
        let upper = if upper.is_nan() { 0.0 } else { upper.max(0.0) };
        let period = policy.period_ms.clamp(MIN_BUCKET_MS, MAX_PERIOD_MS);
        let buckets = policy
            .buckets
            .clamp(1, MAX_BUCKETS)
            .min(u32::try_from(period / MIN_BUCKET_MS).unwrap_or(MAX_BUCKETS))
            .max(1);
        let bucket_ms = (period / u64::from(buckets)).max(1);
        let horizon_ms = policy.horizon_ms.clamp(1, period);
        Forecaster {
            upper,
            alpha: smoothing(policy.level_smoothing),
            beta: smoothing(policy.trend_smoothing),
            gamma: smoothing(policy.season_smoothing),
            bucket_ms,
            horizon_ms,
            trend_horizon_ms: policy.trend_horizon_ms.min(horizon_ms),
            level: None,
            trend: 0.0,
            last_ms: 0,
            profile: vec![None; buckets as usize],
            pending: None,
            folds: 0,
        }
    }

    /// The learned profile, to store.
    pub fn profile(&self) -> Profile {
        Profile {
            bucket_ms: self.bucket_ms,
            values: self.profile.clone(),
        }
    }

    /// How many times the profile has changed (a bucket was folded in).
    pub fn profile_changes(&self) -> u64 {
        self.folds
    }

    /// Take back a stored profile. Returns false, and changes nothing,
    /// when it was learned with another bucket length or count (the
    /// period or `buckets` changed). Values that are not finite are read
    /// as not learned; the others are clamped to `[0, upper]`.
    pub fn restore_profile(&mut self, stored: &Profile) -> bool {
        if stored.bucket_ms != self.bucket_ms || stored.values.len() != self.profile.len() {
            return false;
        }
        let upper = self.upper;
        for (slot, v) in self.profile.iter_mut().zip(&stored.values) {
            *slot = v.filter(|v| v.is_finite()).map(|v| v.clamp(0.0, upper));
        }
        true
    }

    /// The largest value a forecast can take.
    pub fn upper(&self) -> f64 {
        self.upper
    }

    /// The smoothed level, once a sample has been seen.
    pub fn level(&self) -> Option<f64> {
        self.level
    }

    /// The smoothed rate of change, per second.
    pub fn trend_per_s(&self) -> f64 {
        self.trend * 1_000.0
    }

    /// How many time-of-day buckets have been learned.
    pub fn learned_buckets(&self) -> usize {
        self.profile.iter().filter(|p| p.is_some()).count()
    }

    fn index(&self, abs: u64) -> usize {
        // profile.len() ≥ 1, and the remainder is below it.
        (abs % self.profile.len() as u64) as usize
    }

    fn clamp(&self, v: f64) -> f64 {
        if v.is_nan() {
            self.upper
        } else {
            v.clamp(0.0, self.upper)
        }
    }

    /// Fold the pending bucket's mean into the profile.
    fn fold(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if p.count == 0 {
            return;
        }
        let mean = self.clamp(p.sum / f64::from(p.count));
        let i = self.index(p.abs);
        let g = self.gamma;
        let slot = &mut self.profile[i];
        *slot = Some(match *slot {
            Some(old) => g * mean + (1.0 - g) * old,
            None => mean,
        });
        self.folds = self.folds.saturating_add(1);
    }

    /// Feed one sample `value` taken at `now_ms`. NaN samples, and samples
    /// older than the last one fed, are ignored.
    pub fn observe(&mut self, value: f64, now_ms: u64) {
        if value.is_nan() {
            return;
        }
        let x = value.clamp(0.0, self.upper);
        let abs = now_ms / self.bucket_ms;
        let Some(level) = self.level else {
            self.level = Some(x);
            self.last_ms = now_ms;
            self.pending = Some(Pending {
                abs,
                sum: x,
                count: 1,
            });
            return;
        };
        if now_ms < self.last_ms {
            return;
        }
        let dt = (now_ms - self.last_ms) as f64;
        let predicted = self.clamp(level + self.trend * dt);
        let new_level = self.clamp(self.alpha * x + (1.0 - self.alpha) * predicted);
        if dt > 0.0 {
            // At most `upper` per minute either way.
            let bound = self.upper / 60_000.0;
            let t = self.beta * (new_level - level) / dt + (1.0 - self.beta) * self.trend;
            self.trend = if t.is_finite() {
                t.clamp(-bound, bound)
            } else {
                0.0
            };
        }
        self.level = Some(new_level);
        self.last_ms = now_ms;
        match &mut self.pending {
            Some(p) if p.abs == abs => {
                if p.count < u32::MAX {
                    p.sum += x;
                    p.count += 1;
                }
            }
            _ => {
                self.fold();
                self.pending = Some(Pending {
                    abs,
                    sum: x,
                    count: 1,
                });
            }
        }
    }

    /// The highest use expected in `[now_ms, now_ms + horizon]`, in
    /// `[0, upper]`; 0 before the first sample.
    pub fn forecast(&self, now_ms: u64) -> f64 {
        let Some(level) = self.level else {
            return 0.0;
        };
        let reach = self.trend_horizon_ms as f64;
        let mut best = level.max(level + self.trend * reach);
        let first = now_ms / self.bucket_ms;
        let last = now_ms.saturating_add(self.horizon_ms) / self.bucket_ms;
        // Touch each bucket at most once: the horizon is at most a period.
        let n = (last - first).min(self.profile.len() as u64 - 1);
        for abs in first..=first.saturating_add(n) {
            if let Some(v) = self.profile[self.index(abs)] {
                best = best.max(v);
            }
        }
        self.clamp(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    fn policy() -> ForecastPolicy {
        ForecastPolicy::default()
    }

    /// A day with 1 core of use, and 7 cores from 09:00 to 11:00.
    fn daily(t: u64) -> f64 {
        let tod = t % DAY;
        if (9 * HOUR..11 * HOUR).contains(&tod) {
            7.0
        } else {
            1.0
        }
    }

    #[test]
    fn the_defaults_are_valid_and_bad_values_name_the_field() {
        assert_eq!(policy().validate(), Ok(()));
        let field = |p: ForecastPolicy| p.validate().unwrap_err().field;
        assert_eq!(
            field(ForecastPolicy {
                horizon_ms: 0,
                ..policy()
            }),
            "horizon"
        );
        assert_eq!(
            field(ForecastPolicy {
                horizon_ms: 2 * DAY,
                ..policy()
            }),
            "horizon"
        );
        assert_eq!(
            field(ForecastPolicy {
                trend_horizon_ms: 16 * MIN,
                ..policy()
            }),
            "trend_horizon"
        );
        assert_eq!(
            field(ForecastPolicy {
                period_ms: 8 * DAY,
                ..policy()
            }),
            "period"
        );
        assert_eq!(
            field(ForecastPolicy {
                buckets: 0,
                ..policy()
            }),
            "buckets"
        );
        assert_eq!(
            field(ForecastPolicy {
                period_ms: 10_000,
                horizon_ms: 10_000,
                trend_horizon_ms: 0,
                buckets: 20,
                ..policy()
            }),
            "buckets"
        );
        for bad in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                field(ForecastPolicy {
                    level_smoothing: bad,
                    ..policy()
                }),
                "level_smoothing"
            );
            assert_eq!(
                field(ForecastPolicy {
                    trend_smoothing: bad,
                    ..policy()
                }),
                "trend_smoothing"
            );
            assert_eq!(
                field(ForecastPolicy {
                    season_smoothing: bad,
                    ..policy()
                }),
                "season_smoothing"
            );
        }
    }

    #[test]
    fn nothing_is_forecast_before_the_first_sample() {
        let f = Forecaster::new(&policy(), 16.0);
        assert_eq!(f.forecast(0), 0.0);
        assert_eq!(f.forecast(u64::MAX), 0.0);
    }

    #[test]
    fn a_constant_load_is_forecast_as_itself() {
        let mut f = Forecaster::new(&policy(), 16.0);
        for i in 0..10_000u64 {
            f.observe(5.0, i * 10_000);
        }
        let got = f.forecast(10_000 * 10_000);
        assert!((got - 5.0).abs() < 1e-9, "{got}");
        assert!(f.trend_per_s().abs() < 1e-9);
    }

    #[test]
    fn a_daily_peak_is_forecast_ahead_after_a_day_of_training() {
        let mut f = Forecaster::new(&policy(), 16.0);
        let step = 10_000;
        // Two days of samples every 10 s.
        let mut t = 0;
        while t < 2 * DAY {
            f.observe(daily(t), t);
            t += step;
        }
        assert_eq!(f.learned_buckets(), 96);
        // Day 3, 08:50: still quiet, but the peak is 10 minutes away.
        let mut t = 2 * DAY;
        while t < 2 * DAY + 8 * HOUR + 50 * MIN {
            f.observe(daily(t), t);
            t += step;
        }
        assert_eq!(f.level().map(|l| l.round()), Some(1.0));
        let got = f.forecast(t);
        assert!((got - 7.0).abs() < 1e-6, "forecast {got} at 08:50");
        // At 08:30 the peak is beyond the 15-minute horizon.
        let early = 2 * DAY + 8 * HOUR + 30 * MIN;
        let mut g = Forecaster::new(&policy(), 16.0);
        let mut t = 0;
        while t <= early {
            g.observe(daily(t), t);
            t += step;
        }
        assert!(
            (g.forecast(early) - 1.0).abs() < 1e-6,
            "{}",
            g.forecast(early)
        );
    }

    #[test]
    fn without_training_only_the_current_level_and_trend_count() {
        let mut f = Forecaster::new(&policy(), 16.0);
        // A ramp of 1 core per minute, sampled every second.
        for s in 0..300u64 {
            f.observe(s as f64 / 60.0, s * 1_000);
        }
        let level = f.level().unwrap();
        let got = f.forecast(299_000);
        // Rising: the trend adds up to a minute's worth ahead of the level.
        assert!(got > level, "{got} vs level {level}");
        assert!(got <= level + 1.0 + 1e-9, "{got} vs level {level}");
        // Falling: the forecast is the level.
        let mut f = Forecaster::new(&policy(), 16.0);
        for s in 0..300u64 {
            f.observe(10.0 - s as f64 / 60.0, s * 1_000);
        }
        assert_eq!(f.forecast(299_000), f.level().unwrap());
    }

    #[test]
    fn a_stored_profile_is_taken_back_only_with_the_same_buckets() {
        let mut f = Forecaster::new(&policy(), 16.0);
        let mut t = 0;
        while t < DAY + HOUR {
            f.observe(daily(t), t);
            t += 10_000;
        }
        assert!(f.profile_changes() >= 96);
        let stored = f.profile();
        // A restart: a fresh forecaster knows the peak once it has a
        // sample, without a day of training.
        let mut g = Forecaster::new(&policy(), 16.0);
        assert!(g.restore_profile(&stored));
        let at = 2 * DAY + 8 * HOUR + 50 * MIN;
        g.observe(1.0, at);
        assert!((g.forecast(at) - 7.0).abs() < 1e-6, "{}", g.forecast(at));
        // Other buckets: refused, nothing changes.
        let mut h = Forecaster::new(
            &ForecastPolicy {
                buckets: 48,
                ..policy()
            },
            16.0,
        );
        assert!(!h.restore_profile(&stored));
        assert_eq!(h.learned_buckets(), 0);
        // Hostile values are sanitised.
        let mut bad = stored.clone();
        bad.values[0] = Some(f64::NAN);
        bad.values[1] = Some(1e300);
        bad.values[2] = Some(-4.0);
        let mut k = Forecaster::new(&policy(), 16.0);
        assert!(k.restore_profile(&bad));
        assert_eq!(k.profile().values[0], None);
        assert_eq!(k.profile().values[1], Some(16.0));
        assert_eq!(k.profile().values[2], Some(0.0));
    }

    #[test]
    fn hostile_samples_do_not_panic_or_escape_the_bounds() {
        let bad = ForecastPolicy {
            horizon_ms: 0,
            trend_horizon_ms: u64::MAX,
            period_ms: 0,
            buckets: 0,
            level_smoothing: f64::NAN,
            trend_smoothing: -1.0,
            season_smoothing: f64::INFINITY,
        };
        for p in [policy(), bad] {
            for upper in [0.0, 16.0, f64::NAN, -3.0, f64::INFINITY, 1e300] {
                let mut f = Forecaster::new(&p, upper);
                for (i, v) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0, 1e300, 3.0]
                    .into_iter()
                    .enumerate()
                {
                    for t in [i as u64 * 1_000, 0, u64::MAX - 1, u64::MAX] {
                        f.observe(v, t);
                        let got = f.forecast(t);
                        assert!(!got.is_nan(), "NaN forecast");
                        assert!((0.0..=f.upper()).contains(&got), "{got}");
                    }
                }
            }
        }
        // A NaN sample is ignored; ±∞ clamp to the bounds.
        let mut f = Forecaster::new(&policy(), 8.0);
        f.observe(f64::NAN, 0);
        assert_eq!(f.level(), None);
        f.observe(f64::INFINITY, 0);
        assert_eq!(f.level(), Some(8.0));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_policy() -> impl Strategy<Value = ForecastPolicy> {
            (
                1u32..60,
                1u64..100,
                0.05f64..=1.0,
                0.05f64..=1.0,
                0.05f64..=1.0,
            )
                .prop_map(|(buckets, horizon_buckets, a, b, g)| {
                    let period_ms = u64::from(buckets) * 60_000;
                    let horizon_ms = (horizon_buckets * 60_000).min(period_ms);
                    ForecastPolicy {
                        horizon_ms,
                        trend_horizon_ms: horizon_ms / 2,
                        period_ms,
                        buckets,
                        level_smoothing: a,
                        trend_smoothing: b,
                        season_smoothing: g,
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Every forecast lies in [0, upper], whatever the samples.
            #[test]
            fn forecasts_stay_within_the_machine(
                p in arb_policy(),
                upper in 0.0f64..1e6,
                samples in prop::collection::vec(
                    (prop_oneof![-1e9f64..1e9, Just(f64::NAN), Just(f64::INFINITY)], 0u64..600_000),
                    1..200,
                ),
            ) {
                prop_assert_eq!(p.validate(), Ok(()));
                let mut f = Forecaster::new(&p, upper);
                let mut now = 0u64;
                for (v, dt) in samples {
                    now += dt;
                    f.observe(v, now);
                    let got = f.forecast(now);
                    prop_assert!((0.0..=upper).contains(&got), "{} outside [0, {}]", got, upper);
                }
            }

            /// A constant load, after any history, is forecast as the
            /// constant once a full period has passed.
            #[test]
            fn constant_load_converges_to_the_constant(
                p in arb_policy(),
                history in prop::collection::vec((0.0f64..16.0, 1u64..120_000), 0..50),
                c in 0.0f64..16.0,
                dt in 10_000u64..60_000,
            ) {
                let mut f = Forecaster::new(&p, 16.0);
                let mut now = 0u64;
                for (v, h) in history {
                    now += h;
                    f.observe(v, now);
                }
                // Enough periods for every bucket's profile to come within
                // 1e-3 of c (γ ≥ 0.05), and the level too.
                let until = now + 200 * p.period_ms.max(dt);
                while now < until {
                    now += dt;
                    f.observe(c, now);
                }
                let got = f.forecast(now);
                prop_assert!((got - c).abs() < 1e-2, "forecast {} for constant {}", got, c);
            }

            /// The forecast never falls below the smoothed level.
            #[test]
            fn the_forecast_is_at_least_the_level(
                p in arb_policy(),
                samples in prop::collection::vec((0.0f64..16.0, 0u64..600_000), 1..100),
            ) {
                let mut f = Forecaster::new(&p, 16.0);
                let mut now = 0u64;
                for (v, dt) in samples {
                    now += dt;
                    f.observe(v, now);
                    prop_assert!(f.forecast(now) >= f.level().unwrap_or(0.0));
                }
            }
        }
    }
}
