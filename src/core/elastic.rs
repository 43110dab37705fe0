//! Elastic sharing: the machine's owner keeps priority on their own machine.
//!
//! `[lend]` fixes a *cap*: the most this node ever lends
//! ([`crate::hw::lendable`]). With elastic sharing on, the capacity
//! actually lent ([`Elastic::current`]) follows the owner's own, non-swarm
//! use of the machine: it shrinks when local use rises and grows back to the
//! cap when the machine is idle. This is seed 001's dynamic scaling, seen
//! from one LAN node. The caller hands each new value to
//! [`crate::core::ledger::Ledger::set_capacity`] and re-announces.
//!
//! Sans-IO (STYLE.md): the network shell samples the machine (host CPU and
//! memory use, *minus* what swarm leases use) and feeds [`LocalLoad`]s in
//! with `now_ms`. Nothing here reads a clock or the OS; the same samples
//! always give the same answers, and no input panics (arithmetic saturates,
//! NaN and negative loads are sanitised as documented on [`LocalLoad`]).
//!
//! # The target
//!
//! Only CPU cores and memory are elastic; disk, GPUs and custom resources
//! stay at the cap. For each elastic dimension, per sample:
//!
//! ```text
//! target  = min(cap, machine − local use − headroom)      (≥ 0; cores rounded down)
//! floor   = min(used, cap)   unless policy.break_leases, then 0
//! desired = max(target, floor)
//! ```
//!
//! # Forecast policy
//!
//! With `mode = Forecast`, each elastic dimension also has a
//! [`Forecaster`] (level, trend and a daily profile, see
//! [`crate::core::forecast`]) fed with every sample, and `local use` in the
//! target above becomes
//!
//! ```text
//! max(current local use, forecast of local use over the horizon)
//! ```
//!
//! so the capacity shrinks *ahead* of a peak the forecaster has learned,
//! and new leases that would still run at the peak are not granted. It
//! never shrinks under leases either (same floor), and it is never above
//! the cap: the forecast only lowers the target. With `break_leases`, a
//! forecast still ends no lease: the capacity goes under the leases only
//! as far as the *current* use needs (floor `min(used, reactive target)`),
//! so leases are ended at the peak, never ahead of it. The default mode,
//! `Reactive`, is the target above, unchanged.
//!
//! # Hysteresis
//!
//! Each dimension moves on its own, and only after the pressure has lasted:
//!
//! - **Shrink**: every sample in a row has had `desired < current`, and the
//!   first of them is at least `shrink_after_ms` old. The dimension then
//!   shrinks to the *largest* `desired` seen in that run, the level local
//!   use has stayed above the whole time, so a single spike at the end of
//!   the run does not count.
//! - **Grow**: every sample in a row has had `desired > current`, and the
//!   first of them is at least `grow_after_ms` old. The dimension then grows
//!   to the *smallest* `desired` seen in the run, but by at most one step:
//!   `ceil(step_fraction × cap)`, at least 1 (1 core, 1 MiB).
//! - A sample with `desired == current`, or pressure the other way, ends the
//!   run. After a move the run restarts at that sample, so each further move
//!   again waits a full `shrink_after_ms` / `grow_after_ms`.
//!
//! So a load that flips faster than those windows changes nothing, and a
//! constant load converges (one shrink, or a few grow steps) and then
//! stays put.
//!
//! # Leases
//!
//! Shrinking never goes below what leases hold (`floor`), so a lease is
//! never broken by shrinking. If `used` is ever found above `current` (a
//! restored lease, say) the dimension is raised to `floor` at once, without
//! waiting. Only with `break_leases = true` may the capacity shrink under
//! the leases; [`Elastic::leases_to_break`] then names the leases to end,
//! lowest priority first, newest first within a priority.
//!
//! With `enabled = false`, [`Elastic::observe`] ignores every sample and the
//! capacity stays at the cap.

use serde::{Deserialize, Serialize};

use crate::core::forecast::{ForecastPolicy, Forecaster, InvalidForecastPolicy, Profile};
use crate::model::{Capacity, Lease, LeaseId};

/// The learned profiles of the forecast policy, as stored across
/// restarts (see [`Elastic::take_changed_profiles`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastProfiles {
    /// CPU cores.
    pub cpu: Profile,
    /// Memory, MiB.
    pub memory: Profile,
}

/// What the elastic target follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElasticMode {
    /// The current local use only (the default).
    #[default]
    Reactive,
    /// The larger of the current local use and its forecast over
    /// [`ForecastPolicy::horizon_ms`].
    Forecast,
}

impl ElasticMode {
    /// The name used in config and reports.
    pub fn name(self) -> &'static str {
        match self {
            ElasticMode::Reactive => "reactive",
            ElasticMode::Forecast => "forecast",
        }
    }
}

/// The owner's elastic-sharing policy. Every field has a default, so an
/// empty table is valid; check it with [`ElasticPolicy::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticPolicy {
    /// Whether lendable capacity follows local use. Default `false`: lend
    /// the configured cap, whatever the owner does.
    pub enabled: bool,
    /// CPU cores always left to the owner beyond their current use.
    /// Default 1.0.
    pub headroom_cores: f64,
    /// Memory always left to the owner beyond their current use, MiB.
    /// Default 1024.
    pub headroom_memory_mb: u64,
    /// How long local use must stay above the current level before the
    /// capacity shrinks, ms. Default 10 000.
    pub shrink_after_ms: u64,
    /// How long local use must stay below the current level before the
    /// capacity grows (each step), ms. Default 60 000.
    pub grow_after_ms: u64,
    /// Largest growth per step, as a fraction of the cap, in (0, 1].
    /// Default 0.25.
    pub step_fraction: f64,
    /// Whether shrinking may go below what leases use (the owner then ends
    /// leases, see [`Elastic::leases_to_break`]). Default `false`: leases
    /// are never broken by shrinking.
    pub break_leases: bool,
    /// What the target follows. Default [`ElasticMode::Reactive`].
    pub mode: ElasticMode,
    /// The forecaster's parameters, used with [`ElasticMode::Forecast`].
    pub forecast: ForecastPolicy,
}

impl Default for ElasticPolicy {
    fn default() -> Self {
        ElasticPolicy {
            enabled: false,
            headroom_cores: 1.0,
            headroom_memory_mb: 1024,
            shrink_after_ms: 10_000,
            grow_after_ms: 60_000,
            step_fraction: 0.25,
            break_leases: false,
            mode: ElasticMode::Reactive,
            forecast: ForecastPolicy::default(),
        }
    }
}

/// A field of [`ElasticPolicy`] with a value it cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: expected {expected}, got {got}")]
pub struct InvalidElasticPolicy {
    /// The field's name, e.g. `step_fraction`, or `forecast.horizon`.
    pub field: &'static str,
    /// What it must be.
    pub expected: &'static str,
    /// What it was.
    pub got: String,
}

impl ElasticPolicy {
    /// Check the fields that can be out of range: `headroom_cores` must be
    /// finite and ≥ 0, `step_fraction` finite and in (0, 1], and the
    /// forecast parameters ([`ForecastPolicy::validate`]; checked whatever
    /// the mode, so switching modes never meets a bad value).
    ///
    /// [`Elastic`] never panics on an invalid policy; it reads a NaN or
    /// negative `headroom_cores` as 0, and an invalid `step_fraction` as 1.
    pub fn validate(&self) -> Result<(), InvalidElasticPolicy> {
        if !(self.headroom_cores.is_finite() && self.headroom_cores >= 0.0) {
            return Err(InvalidElasticPolicy {
                field: "headroom_cores",
                expected: "a finite number of cores, 0 or more",
                got: self.headroom_cores.to_string(),
            });
        }
        if !(self.step_fraction.is_finite()
            && self.step_fraction > 0.0
            && self.step_fraction <= 1.0)
        {
            return Err(InvalidElasticPolicy {
                field: "step_fraction",
                expected: "a fraction greater than 0 and at most 1",
                got: self.step_fraction.to_string(),
            });
        }
        self.forecast
            .validate()
            .map_err(|e: InvalidForecastPolicy| InvalidElasticPolicy {
                field: match e.field {
                    "horizon" => "forecast.horizon",
                    "trend_horizon" => "forecast.trend_horizon",
                    "period" => "forecast.period",
                    "buckets" => "forecast.buckets",
                    "level_smoothing" => "forecast.level_smoothing",
                    "trend_smoothing" => "forecast.trend_smoothing",
                    "season_smoothing" => "forecast.season_smoothing",
                    other => other,
                },
                expected: e.expected,
                got: e.got,
            })
    }

    /// `step_fraction` as used: itself when valid, else 1.
    fn step(&self) -> f64 {
        if self.step_fraction.is_finite() && self.step_fraction > 0.0 {
            self.step_fraction.min(1.0)
        } else {
            1.0
        }
    }

    /// `headroom_cores` as used: NaN and negatives read as 0.
    fn headroom(&self) -> f64 {
        if self.headroom_cores.is_nan() {
            0.0
        } else {
            self.headroom_cores.max(0.0)
        }
    }
}

/// One sample of the owner's own use of the machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalLoad {
    /// Host CPU use, in cores, with swarm work excluded by the caller.
    /// Negative reads as 0; NaN reads as "every core busy" (an unknown load
    /// is treated as the worst case, in the owner's favour).
    pub cpu_busy_cores: f64,
    /// Host memory used outside swarm leases, MiB.
    pub memory_used_mb: u64,
}

/// A run of samples that all pushed the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// `now_ms` of the run's first sample.
    since_ms: u64,
    /// Shrink runs: the largest `desired` seen. Grow runs: the smallest.
    bound: u64,
}

/// Hysteresis state of one elastic dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Dim {
    shrink: Option<Run>,
    grow: Option<Run>,
}

impl Dim {
    /// One sample for this dimension: returns the new level (possibly
    /// `cur` unchanged). `cap ≥ desired ≥ floor` and `cap ≥ floor`.
    fn step(
        &mut self,
        policy: &ElasticPolicy,
        cur: u64,
        cap: u64,
        desired: u64,
        floor: u64,
        now_ms: u64,
    ) -> u64 {
        if cur < floor {
            // Leases hold more than is lent: follow them at once.
            *self = Dim::default();
            return floor;
        }
        if cur > cap {
            *self = Dim::default();
            return cap;
        }
        if desired < cur {
            self.grow = None;
            let run = self.shrink.get_or_insert(Run {
                since_ms: now_ms,
                bound: desired,
            });
            run.bound = run.bound.max(desired);
            if now_ms.saturating_sub(run.since_ms) < policy.shrink_after_ms {
                return cur;
            }
            let new = run.bound;
            self.shrink = (desired < new).then_some(Run {
                since_ms: now_ms,
                bound: desired,
            });
            new
        } else if desired > cur {
            self.shrink = None;
            let run = self.grow.get_or_insert(Run {
                since_ms: now_ms,
                bound: desired,
            });
            run.bound = run.bound.min(desired);
            if now_ms.saturating_sub(run.since_ms) < policy.grow_after_ms {
                return cur;
            }
            let new = run.bound.min(cur.saturating_add(step_units(policy, cap)));
            self.grow = (desired > new).then_some(Run {
                since_ms: now_ms,
                bound: desired,
            });
            new
        } else {
            *self = Dim::default();
            cur
        }
    }
}

/// The largest growth per step, in units: `ceil(step_fraction × cap)`,
/// at least 1.
fn step_units(policy: &ElasticPolicy, cap: u64) -> u64 {
    // Saturating float-to-int cast; cap ≤ u64::MAX so no NaN arises.
    ((cap as f64 * policy.step()).ceil() as u64).max(1)
}

/// Elastic lendable capacity. See the module documentation.
#[derive(Clone, Debug)]
pub struct Elastic {
    policy: ElasticPolicy,
    cap: Capacity,
    machine_cores: u32,
    machine_memory_mb: u64,
    current: Capacity,
    cpu: Dim,
    memory: Dim,
    /// CPU cores and memory (MiB) forecasters, with `ElasticMode::Forecast`.
    forecast: Option<(Forecaster, Forecaster)>,
    /// Profile changes already handed out by `take_changed_profiles`.
    profiles_taken: u64,
}

impl Elastic {
    /// Start lending `cap` (the configured lendable capacity, from
    /// [`crate::hw::lendable`]) on a machine with `machine_cores` cores and
    /// `machine_memory_mb` MiB. The capacity starts at the cap; the first
    /// shrink needs `shrink_after_ms` of samples like any other.
    pub fn new(
        policy: ElasticPolicy,
        cap: Capacity,
        machine_cores: u32,
        machine_memory_mb: u64,
    ) -> Self {
        let forecast = (policy.mode == ElasticMode::Forecast).then(|| {
            (
                Forecaster::new(&policy.forecast, f64::from(machine_cores)),
                Forecaster::new(&policy.forecast, machine_memory_mb as f64),
            )
        });
        Elastic {
            forecast,
            profiles_taken: 0,
            policy,
            current: cap.clone(),
            cap,
            machine_cores,
            machine_memory_mb,
            cpu: Dim::default(),
            memory: Dim::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &ElasticPolicy {
        &self.policy
    }

    /// The configured cap: the most this node ever lends.
    pub fn cap(&self) -> &Capacity {
        &self.cap
    }

    /// What this node lends now. Equal to the cap in every dimension but
    /// `cpu_cores` and `memory_mb`, which are never above it.
    pub fn current(&self) -> &Capacity {
        &self.current
    }

    /// With [`ElasticMode::Forecast`], once a sample has been seen: the
    /// forecast of local use over the horizon, `(cores, MiB)`.
    pub fn forecast(&self, now_ms: u64) -> Option<(f64, u64)> {
        let (cpu, mem) = self.forecast.as_ref()?;
        cpu.level()?;
        // In [0, machine memory], so the saturating cast loses nothing.
        Some((cpu.forecast(now_ms), mem.forecast(now_ms).ceil() as u64))
    }

    /// `target` for one sample, per elastic dimension: what local use
    /// (or, with the forecast policy, its forecast when higher) leaves,
    /// capped (see the module documentation). `(cores, MiB)`.
    /// With [`ElasticMode::Forecast`]: the learned profiles, when they
    /// changed since the last call (about once per profile bucket), to be
    /// stored so that a restart does not lose a period of learning.
    pub fn take_changed_profiles(&mut self) -> Option<ForecastProfiles> {
        let (cpu, mem) = self.forecast.as_ref()?;
        let changes = cpu.profile_changes().saturating_add(mem.profile_changes());
        if changes == self.profiles_taken {
            return None;
        }
        self.profiles_taken = changes;
        Some(ForecastProfiles {
            cpu: cpu.profile(),
            memory: mem.profile(),
        })
    }

    /// Take back stored profiles. False, and nothing changes, without the
    /// forecast policy or when they were learned with another period or
    /// bucket count ([`Forecaster::restore_profile`]).
    pub fn restore_profiles(&mut self, stored: &ForecastProfiles) -> bool {
        let Some((cpu, mem)) = self.forecast.as_mut() else {
            return false;
        };
        let (mut c, mut m) = (cpu.clone(), mem.clone());
        if !(c.restore_profile(&stored.cpu) && m.restore_profile(&stored.memory)) {
            return false;
        }
        *cpu = c;
        *mem = m;
        true
    }

    /// `ahead` is [`Elastic::forecast`]; `None` gives the reactive target.
    fn target(&self, load: &LocalLoad, ahead: Option<(f64, u64)>) -> (u64, u64) {
        let mut busy = if load.cpu_busy_cores.is_nan() {
            f64::INFINITY
        } else {
            load.cpu_busy_cores.max(0.0)
        };
        let mut memory_used_mb = load.memory_used_mb;
        if let Some((cpu, mem)) = ahead {
            busy = busy.max(cpu);
            memory_used_mb = memory_used_mb.max(mem);
        }
        // Finite minus non-negative (possibly infinite) values: never NaN.
        // The cast saturates, so −∞ and negatives become 0.
        let cores = (f64::from(self.machine_cores) - busy - self.policy.headroom()).floor() as u64;
        let memory = self
            .machine_memory_mb
            .saturating_sub(memory_used_mb)
            .saturating_sub(self.policy.headroom_memory_mb);
        (
            cores.min(u64::from(self.cap.cpu_cores)),
            memory.min(self.cap.memory_mb),
        )
    }

    /// Feed one sample of local use, with what leases hold now (`used`, as
    /// [`crate::core::ledger::Ledger::used`] reports it; only `cpu_cores`
    /// and `memory_mb` are read) and the time.
    ///
    /// Returns `Some(new lendable capacity)` when it changed, else `None`.
    /// Always: `current ≤ cap`; unless `break_leases`, `current ≥
    /// min(used, cap)`; and disk, GPUs and custom resources equal the cap.
    /// With the policy disabled, always `None`.
    pub fn observe(&mut self, load: &LocalLoad, used: &Capacity, now_ms: u64) -> Option<Capacity> {
        if !self.policy.enabled {
            return None;
        }
        if let Some((cpu, mem)) = self.forecast.as_mut() {
            // NaN reads as every core busy, as in the target.
            let busy = if load.cpu_busy_cores.is_nan() {
                f64::INFINITY
            } else {
                load.cpu_busy_cores
            };
            cpu.observe(busy, now_ms);
            mem.observe(load.memory_used_mb as f64, now_ms);
        }
        let ahead = self.forecast(now_ms);
        let (target_cpu, target_mem) = self.target(load, ahead);
        let cap_cpu = u64::from(self.cap.cpu_cores);
        let cap_mem = self.cap.memory_mb;
        let (floor_cpu, floor_mem) = if self.policy.break_leases && ahead.is_some() {
            // A forecast never ends a lease: only what local use needs
            // now (the reactive target) may go under the leases.
            let (now_cpu, now_mem) = self.target(load, None);
            (
                u64::from(used.cpu_cores).min(now_cpu),
                used.memory_mb.min(now_mem),
            )
        } else if self.policy.break_leases {
            (0, 0)
        } else {
            (
                u64::from(used.cpu_cores).min(cap_cpu),
                used.memory_mb.min(cap_mem),
            )
        };
        let cpu = self.cpu.step(
            &self.policy,
            u64::from(self.current.cpu_cores),
            cap_cpu,
            target_cpu.max(floor_cpu),
            floor_cpu,
            now_ms,
        );
        let memory = self.memory.step(
            &self.policy,
            self.current.memory_mb,
            cap_mem,
            target_mem.max(floor_mem),
            floor_mem,
            now_ms,
        );
        // cpu ≤ cap_cpu, which came from a u32.
        let cpu = u32::try_from(cpu).unwrap_or(self.cap.cpu_cores);
        if cpu == self.current.cpu_cores && memory == self.current.memory_mb {
            return None;
        }
        self.current.cpu_cores = cpu;
        self.current.memory_mb = memory;
        Some(self.current.clone())
    }

    /// The leases to end so that what the rest use fits in
    /// [`Elastic::current`] (CPU cores and memory). Empty unless the policy
    /// is enabled with `break_leases`, and empty when the leases already
    /// fit.
    ///
    /// Leases are sacrificed lowest priority first, then newest first
    /// (largest `created_at_ms`), then by lease id, largest first; a lease is
    /// taken only if it holds some of a dimension that is still over, and
    /// taking stops as soon as both fit. The result is in sacrifice order.
    pub fn leases_to_break(&self, leases: &[Lease]) -> Vec<LeaseId> {
        if !(self.policy.enabled && self.policy.break_leases) {
            return Vec::new();
        }
        let mut cpu: u64 = leases
            .iter()
            .fold(0u64, |a, l| a.saturating_add(u64::from(l.cpu_cores)));
        let mut memory: u64 = leases
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.memory_mb));
        let limit_cpu = u64::from(self.current.cpu_cores);
        let limit_mem = self.current.memory_mb;
        let mut order: Vec<&Lease> = leases.iter().collect();
        order.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then(b.created_at_ms.cmp(&a.created_at_ms))
                .then(b.lease_id.cmp(&a.lease_id))
        });
        let mut out = Vec::new();
        for lease in order {
            let over_cpu = cpu > limit_cpu;
            let over_mem = memory > limit_mem;
            if !over_cpu && !over_mem {
                break;
            }
            if (over_cpu && lease.cpu_cores > 0) || (over_mem && lease.memory_mb > 0) {
                cpu = cpu.saturating_sub(u64::from(lease.cpu_cores));
                memory = memory.saturating_sub(lease.memory_mb);
                out.push(lease.lease_id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuSlot, NodeId, Priority};
    use std::collections::BTreeMap;

    const GIB: u64 = 1024;

    /// 16 cores and 32 GiB; lends up to 12 cores and 24 GiB, plus a GPU,
    /// disk and a custom resource that never move.
    fn cap() -> Capacity {
        Capacity {
            cpu_cores: 12,
            memory_mb: 24 * GIB,
            disk_mb: 100 * GIB,
            gpus: vec![GpuSlot {
                index: 0,
                memory_mb: 80 * GIB,
            }],
            custom: BTreeMap::from([("db".to_string(), 5)]),
        }
    }

    fn policy() -> ElasticPolicy {
        ElasticPolicy {
            enabled: true,
            ..ElasticPolicy::default()
        }
    }

    fn elastic(policy: ElasticPolicy) -> Elastic {
        Elastic::new(policy, cap(), 16, 32 * GIB)
    }

    fn load(cpu: f64, mem_gib: u64) -> LocalLoad {
        LocalLoad {
            cpu_busy_cores: cpu,
            memory_used_mb: mem_gib * GIB,
        }
    }

    fn used(cpu: u32, mem_gib: u64) -> Capacity {
        Capacity {
            cpu_cores: cpu,
            memory_mb: mem_gib * GIB,
            ..Capacity::default()
        }
    }

    fn level(e: &Elastic) -> (u32, u64) {
        (e.current().cpu_cores, e.current().memory_mb / GIB)
    }

    fn lease(id: &str, priority: Priority, created: u64, cpu: u32, mem_gib: u64) -> Lease {
        Lease {
            lease_id: LeaseId(id.into()),
            request_id: id.into(),
            node_id: NodeId::from("owner"),
            holder: NodeId::from("h"),
            cpu_cores: cpu,
            memory_mb: mem_gib * GIB,
            disk_mb: 0,
            gpus: Vec::new(),
            custom: BTreeMap::new(),
            models: Vec::new(),
            task_type: String::new(),
            priority,
            created_at_ms: created,
            expires_at_ms: created + 60_000,
            lease_ms: 60_000,
        }
    }

    #[test]
    fn defaults_and_serde() {
        let p: ElasticPolicy = toml::from_str("").unwrap();
        assert_eq!(p, ElasticPolicy::default());
        assert!(!p.enabled && !p.break_leases);
        assert_eq!(p.validate(), Ok(()));
        let p: ElasticPolicy = toml::from_str("enabled = true\nstep_fraction = 0.5").unwrap();
        assert!(p.enabled);
        assert_eq!(p.step_fraction, 0.5);
        assert!(toml::from_str::<ElasticPolicy>("grow_after = 5").is_err());
        let json = serde_json::to_string(&load(1.5, 2)).unwrap();
        assert_eq!(
            serde_json::from_str::<LocalLoad>(&json).unwrap(),
            load(1.5, 2)
        );
    }

    #[test]
    fn validate_names_the_field() {
        let bad = |f: fn(&mut ElasticPolicy)| {
            let mut p = ElasticPolicy::default();
            f(&mut p);
            p.validate().unwrap_err().field
        };
        assert_eq!(bad(|p| p.headroom_cores = -1.0), "headroom_cores");
        assert_eq!(bad(|p| p.headroom_cores = f64::NAN), "headroom_cores");
        assert_eq!(bad(|p| p.step_fraction = 0.0), "step_fraction");
        assert_eq!(bad(|p| p.step_fraction = 1.5), "step_fraction");
        assert_eq!(bad(|p| p.step_fraction = f64::INFINITY), "step_fraction");
        let e = ElasticPolicy {
            step_fraction: 2.0,
            ..ElasticPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "step_fraction: expected a fraction greater than 0 and at most 1, got 2"
        );
    }

    #[test]
    fn disabled_never_changes() {
        let mut e = elastic(ElasticPolicy::default());
        for t in 0..100 {
            assert_eq!(e.observe(&load(16.0, 32), &used(0, 0), t * 10_000), None);
        }
        assert_eq!(e.current(), &cap());
        assert!(e
            .leases_to_break(&[lease("a", Priority::Low, 0, 1, 1)])
            .is_empty());
    }

    #[test]
    fn idle_machine_stays_at_cap() {
        let mut e = elastic(policy());
        for t in 0..10 {
            assert_eq!(e.observe(&load(0.0, 0), &used(0, 0), t * 60_000), None);
        }
        assert_eq!(e.current(), &cap());
    }

    #[test]
    fn shrinks_only_after_shrink_after_ms() {
        let mut e = elastic(policy());
        // 16 − 9.5 − 1 = 5.5 → 5 cores; 32 − 20 − 1 = 11 GiB.
        let busy = load(9.5, 20);
        assert_eq!(e.observe(&busy, &used(0, 0), 1_000), None);
        assert_eq!(e.observe(&busy, &used(0, 0), 10_999), None);
        let got = e.observe(&busy, &used(0, 0), 11_000).unwrap();
        assert_eq!((got.cpu_cores, got.memory_mb), (5, 11 * GIB));
        assert_eq!(&got, e.current());
        // Everything but CPU and memory stays at the cap.
        assert_eq!(got.disk_mb, cap().disk_mb);
        assert_eq!(got.gpus, cap().gpus);
        assert_eq!(got.custom, cap().custom);
        // Converged.
        assert_eq!(e.observe(&busy, &used(0, 0), 100_000), None);
    }

    #[test]
    fn shrinks_to_the_level_held_the_whole_run() {
        let mut e = elastic(policy());
        e.observe(&load(10.0, 0), &used(0, 0), 0); // 5 cores
        e.observe(&load(6.0, 0), &used(0, 0), 5_000); // 9 cores
                                                      // A spike at the end of the run counts no more than the rest.
        let got = e.observe(&load(15.0, 0), &used(0, 0), 10_000).unwrap();
        assert_eq!(got.cpu_cores, 9);
        assert_eq!(got.memory_mb, 24 * GIB, "memory had no pressure");
        // The spike then starts a run of its own.
        assert_eq!(e.observe(&load(15.0, 0), &used(0, 0), 19_999), None);
        assert_eq!(
            e.observe(&load(15.0, 0), &used(0, 0), 20_000)
                .unwrap()
                .cpu_cores,
            0
        );
    }

    #[test]
    fn a_short_spike_changes_nothing() {
        let mut e = elastic(policy());
        e.observe(&load(15.0, 30), &used(0, 0), 0);
        e.observe(&load(15.0, 30), &used(0, 0), 9_000);
        assert_eq!(e.observe(&load(0.0, 0), &used(0, 0), 9_500), None);
        assert_eq!(e.observe(&load(15.0, 30), &used(0, 0), 10_000), None);
        assert_eq!(e.observe(&load(15.0, 30), &used(0, 0), 19_000), None);
        assert_eq!(e.current(), &cap());
    }

    #[test]
    fn grows_back_in_steps_after_grow_after_ms() {
        let mut e = elastic(policy());
        e.observe(&load(16.0, 32), &used(0, 0), 0);
        assert_eq!(
            e.observe(&load(16.0, 32), &used(0, 0), 10_000)
                .map(|c| (c.cpu_cores, c.memory_mb)),
            Some((0, 0))
        );
        // Idle from t = 20 s. Steps: ceil(0.25 × 12) = 3 cores,
        // 0.25 × 24 GiB = 6 GiB, each after 60 s of idleness.
        let idle = load(0.0, 0);
        assert_eq!(e.observe(&idle, &used(0, 0), 20_000), None);
        assert_eq!(e.observe(&idle, &used(0, 0), 79_999), None);
        e.observe(&idle, &used(0, 0), 80_000).unwrap();
        assert_eq!(level(&e), (3, 6));
        assert_eq!(e.observe(&idle, &used(0, 0), 139_999), None);
        e.observe(&idle, &used(0, 0), 140_000).unwrap();
        assert_eq!(level(&e), (6, 12));
        e.observe(&idle, &used(0, 0), 200_000).unwrap();
        e.observe(&idle, &used(0, 0), 260_000).unwrap();
        assert_eq!(e.current(), &cap());
        assert_eq!(e.observe(&idle, &used(0, 0), 1_000_000), None);
    }

    #[test]
    fn growth_stops_at_what_local_use_allows() {
        let mut e = elastic(policy());
        e.observe(&load(16.0, 32), &used(0, 0), 0);
        e.observe(&load(16.0, 32), &used(0, 0), 10_000).unwrap();
        // 16 − 11 − 1 = 4 cores, less than a step of 3 twice.
        let some = load(11.0, 31);
        e.observe(&some, &used(0, 0), 20_000);
        e.observe(&some, &used(0, 0), 80_000).unwrap();
        assert_eq!(level(&e), (3, 0));
        e.observe(&some, &used(0, 0), 140_000).unwrap();
        assert_eq!(level(&e), (4, 0));
        assert_eq!(e.observe(&some, &used(0, 0), 1_000_000), None);
    }

    #[test]
    fn grows_only_as_far_as_the_whole_run_allowed() {
        let p = ElasticPolicy {
            step_fraction: 1.0,
            ..policy()
        };
        let mut e = elastic(p);
        e.observe(&load(16.0, 0), &used(0, 0), 0);
        e.observe(&load(16.0, 0), &used(0, 0), 10_000).unwrap();
        e.observe(&load(10.0, 0), &used(0, 0), 20_000); // 5 cores
        e.observe(&load(0.0, 0), &used(0, 0), 50_000); // 12 cores
        e.observe(&load(0.0, 0), &used(0, 0), 80_000).unwrap();
        assert_eq!(level(&e).0, 5);
    }

    #[test]
    fn never_shrinks_under_leases() {
        let mut e = elastic(policy());
        let busy = load(16.0, 32);
        e.observe(&busy, &used(4, 8), 0);
        e.observe(&busy, &used(4, 8), 10_000).unwrap();
        assert_eq!(level(&e), (4, 8));
        // Leases end: the shrink resumes after another full window.
        assert_eq!(e.observe(&busy, &used(1, 2), 10_001), None);
        assert_eq!(e.observe(&busy, &used(1, 2), 20_000), None);
        e.observe(&busy, &used(1, 2), 20_001).unwrap();
        assert_eq!(level(&e), (1, 2));
    }

    #[test]
    fn leases_above_current_raise_it_at_once() {
        let mut e = elastic(policy());
        let busy = load(16.0, 32);
        e.observe(&busy, &used(0, 0), 0);
        e.observe(&busy, &used(0, 0), 10_000).unwrap();
        assert_eq!(level(&e), (0, 0));
        let got = e.observe(&busy, &used(3, 30), 10_001).unwrap();
        // Memory at most the cap even if leases hold more.
        assert_eq!((got.cpu_cores, got.memory_mb), (3, 24 * GIB));
    }

    #[test]
    fn break_leases_shrinks_under_them_and_names_victims() {
        let p = ElasticPolicy {
            break_leases: true,
            ..policy()
        };
        let mut e = elastic(p);
        let leases = [
            lease("old-low", Priority::Low, 100, 2, 2),
            lease("new-low", Priority::Low, 200, 2, 2),
            lease("high", Priority::High, 300, 4, 4),
            lease("normal", Priority::Normal, 400, 2, 0),
        ];
        assert!(e.leases_to_break(&leases).is_empty(), "fits at the cap");
        // 16 − 9 − 1 = 6 cores, 32 − 23 − 1 = 8 GiB, while leases hold 10 and 8.
        let busy = load(9.0, 23);
        e.observe(&busy, &used(10, 8), 0);
        e.observe(&busy, &used(10, 8), 10_000).unwrap();
        assert_eq!(level(&e), (6, 8));
        // Over by 4 cores: the two low ones, newest first.
        assert_eq!(
            e.leases_to_break(&leases),
            vec![LeaseId("new-low".into()), LeaseId("old-low".into())]
        );
        // A lease that holds nothing of what is over is not taken.
        let leases = [
            lease("mem-only", Priority::Low, 500, 0, 1),
            lease("cpu", Priority::Normal, 100, 6, 0),
            lease("cpu2", Priority::High, 100, 3, 0),
        ];
        assert_eq!(e.leases_to_break(&leases), vec![LeaseId("cpu".into())]);
    }

    /// An hour-long "day" of 1-minute buckets, 5 minutes ahead.
    fn forecast_policy() -> ElasticPolicy {
        ElasticPolicy {
            mode: ElasticMode::Forecast,
            forecast: ForecastPolicy {
                horizon_ms: 5 * 60_000,
                trend_horizon_ms: 0,
                period_ms: 3_600_000,
                buckets: 60,
                ..ForecastPolicy::default()
            },
            ..policy()
        }
    }

    /// 1 core busy, but 8 from minute 30 to 40 of every hour; 2 GiB.
    fn hourly(t: u64) -> LocalLoad {
        let minute = (t % 3_600_000) / 60_000;
        load(if (30..40).contains(&minute) { 8.0 } else { 1.0 }, 2)
    }

    /// Feed `hourly` every 5 s over `[from, to)` with the given leases.
    fn feed(e: &mut Elastic, from: u64, to: u64, u: &Capacity) {
        let mut t = from;
        while t < to {
            e.observe(&hourly(t), u, t);
            t += 5_000;
        }
    }

    #[test]
    fn forecast_shrinks_ahead_of_a_learned_peak_and_reactive_does_not() {
        assert_eq!(forecast_policy().validate(), Ok(()));
        let mut fore = elastic(forecast_policy());
        let mut reac = elastic(policy());
        // One hour of training, then up to 3 minutes before the next peak.
        let until = 3_600_000 + 27 * 60_000;
        feed(&mut fore, 0, until, &used(0, 0));
        feed(&mut reac, 0, until, &used(0, 0));
        // 16 − 8 − 1 = 7 cores, ahead of time; memory is not affected.
        assert_eq!(level(&fore), (7, 24));
        assert_eq!(level(&reac), (12, 24));
        let (cpu, mem) = fore.forecast(until).unwrap();
        assert!((cpu - 8.0).abs() < 1e-6, "{cpu}");
        assert_eq!(mem, 2 * GIB);
        // Both lend 7 once the peak is on; forecast gets there first.
        feed(&mut reac, until, until + 5 * 60_000, &used(0, 0));
        assert_eq!(level(&reac), (7, 24));
    }

    #[test]
    fn forecast_never_shrinks_under_leases_nor_grows_over_the_cap() {
        let mut e = elastic(forecast_policy());
        feed(&mut e, 0, 3_600_000 + 28 * 60_000, &used(10, 20));
        assert_eq!(level(&e), (10, 24));
        let mut e = elastic(forecast_policy());
        feed(&mut e, 0, 3_600_000 + 28 * 60_000, &used(0, 0));
        // Idle for hours afterwards: back to the cap, not above.
        let idle = load(0.0, 0);
        let mut t = 3_600_000 + 28 * 60_000;
        while t < 6 * 3_600_000 {
            e.observe(&idle, &used(0, 0), t);
            t += 5_000;
        }
        assert_eq!(e.current(), &cap());
        assert_eq!(elastic(policy()).forecast(0), None, "reactive has none");
        assert_eq!(
            elastic(forecast_policy()).forecast(0),
            None,
            "no sample yet"
        );
    }

    #[test]
    fn a_forecast_ends_no_lease_ahead_of_the_peak() {
        let p = ElasticPolicy {
            break_leases: true,
            ..forecast_policy()
        };
        let mut e = elastic(p);
        let until = 3_600_000 + 27 * 60_000;
        feed(&mut e, 0, until, &used(0, 0));
        assert_eq!(level(&e), (7, 24));
        // 10 cores leased (they raise the capacity at once, see
        // leases_above_current_raise_it_at_once): none is ended while
        // the owner is still quiet.
        feed(&mut e, until, until + 60_000, &used(10, 0));
        assert_eq!(level(&e), (10, 24));
        let leases = [
            lease("a", Priority::Low, 1, 5, 0),
            lease("b", Priority::Low, 2, 5, 0),
        ];
        assert!(e.leases_to_break(&leases).is_empty());
        // At the peak, local use needs them: down to 16 − 8 − 1 = 7.
        feed(&mut e, until + 3 * 60_000, until + 5 * 60_000, &used(10, 0));
        assert_eq!(level(&e), (7, 24));
        assert_eq!(e.leases_to_break(&leases), vec![LeaseId("b".into())]);
    }

    #[test]
    fn learned_profiles_survive_a_restart() {
        let mut e = elastic(forecast_policy());
        assert_eq!(e.take_changed_profiles(), None, "nothing learned yet");
        feed(&mut e, 0, 3_600_000 + 10 * 60_000, &used(0, 0));
        let stored = e.take_changed_profiles().unwrap();
        assert_eq!(e.take_changed_profiles(), None, "handed out once");
        // A restarted node, 3 minutes before the peak: one sample and it
        // shrinks (after shrink_after), without an hour of training.
        let mut fresh = elastic(forecast_policy());
        assert!(fresh.restore_profiles(&stored));
        let t = 2 * 3_600_000 + 27 * 60_000;
        fresh.observe(&hourly(t), &used(0, 0), t);
        fresh.observe(&hourly(t), &used(0, 0), t + 10_000);
        assert_eq!(level(&fresh), (7, 24));
        // Not for the reactive policy, nor for other buckets.
        assert!(!elastic(policy()).restore_profiles(&stored));
        let other = ElasticPolicy {
            forecast: ForecastPolicy {
                buckets: 30,
                ..forecast_policy().forecast
            },
            ..forecast_policy()
        };
        assert!(!elastic(other).restore_profiles(&stored));
        assert_eq!(elastic(policy()).take_changed_profiles(), None);
    }

    #[test]
    fn invalid_forecast_parameters_name_their_key() {
        let field = |f: ForecastPolicy| {
            ElasticPolicy {
                forecast: f,
                ..policy()
            }
            .validate()
            .unwrap_err()
            .field
        };
        let d = ForecastPolicy::default;
        assert_eq!(
            field(ForecastPolicy {
                horizon_ms: 0,
                ..d()
            }),
            "forecast.horizon"
        );
        assert_eq!(
            field(ForecastPolicy {
                level_smoothing: 2.0,
                ..d()
            }),
            "forecast.level_smoothing"
        );
        assert_eq!(
            field(ForecastPolicy {
                season_smoothing: 0.0,
                ..d()
            }),
            "forecast.season_smoothing"
        );
        assert_eq!(
            field(ForecastPolicy {
                buckets: 100_000,
                ..d()
            }),
            "forecast.buckets"
        );
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let p = ElasticPolicy {
            headroom_cores: f64::NAN,
            step_fraction: f64::NAN,
            shrink_after_ms: 0,
            grow_after_ms: 0,
            ..policy()
        };
        let mut e = Elastic::new(p, cap(), 0, 0);
        for (i, cpu) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0, 1e300]
            .into_iter()
            .enumerate()
        {
            e.observe(
                &LocalLoad {
                    cpu_busy_cores: cpu,
                    memory_used_mb: u64::MAX,
                },
                &used(u32::MAX, u64::MAX / GIB),
                i as u64,
            );
            assert!(e.current().cpu_cores <= cap().cpu_cores);
        }
        // NaN load counts as fully busy; −∞ as idle.
        let mut e = Elastic::new(
            ElasticPolicy {
                shrink_after_ms: 0,
                grow_after_ms: 0,
                step_fraction: -1.0,
                ..policy()
            },
            cap(),
            16,
            32 * GIB,
        );
        e.observe(
            &LocalLoad {
                cpu_busy_cores: f64::NAN,
                memory_used_mb: 0,
            },
            &used(0, 0),
            0,
        )
        .unwrap();
        assert_eq!(e.current().cpu_cores, 0);
        e.observe(
            &LocalLoad {
                cpu_busy_cores: f64::NEG_INFINITY,
                memory_used_mb: 0,
            },
            &used(0, 0),
            1,
        )
        .unwrap();
        assert_eq!(
            e.current().cpu_cores,
            12,
            "invalid step_fraction grows in one step"
        );
        // Time going backwards only delays.
        let mut e = elastic(policy());
        e.observe(&load(16.0, 32), &used(0, 0), 50_000);
        assert_eq!(e.observe(&load(16.0, 32), &used(0, 0), 0), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_policy() -> impl Strategy<Value = ElasticPolicy> {
            (
                0u64..3,
                0u64..4_096,
                0u64..20_000,
                0u64..60_000,
                prop_oneof![Just(0.25), Just(1.0), 0.01f64..1.0],
                any::<bool>(),
            )
                .prop_map(|(h, hm, shrink, grow, step, brk)| ElasticPolicy {
                    enabled: true,
                    headroom_cores: h as f64,
                    headroom_memory_mb: hm,
                    shrink_after_ms: shrink,
                    grow_after_ms: grow,
                    step_fraction: step,
                    break_leases: brk,
                    ..ElasticPolicy::default()
                })
        }

        /// A short "day" (10 min in 20 buckets, 2 min ahead), so that
        /// the profile matters within a test's samples.
        fn arb_mode() -> impl Strategy<Value = (ElasticMode, ForecastPolicy)> {
            (any::<bool>(), 0.05f64..=1.0, 0.05f64..=1.0).prop_map(|(f, a, g)| {
                (
                    if f {
                        ElasticMode::Forecast
                    } else {
                        ElasticMode::Reactive
                    },
                    ForecastPolicy {
                        horizon_ms: 120_000,
                        trend_horizon_ms: 30_000,
                        period_ms: 600_000,
                        buckets: 20,
                        level_smoothing: a,
                        trend_smoothing: 0.1,
                        season_smoothing: g,
                    },
                )
            })
        }

        fn arb_load() -> impl Strategy<Value = LocalLoad> {
            (0.0f64..20.0, 0u64..40 * GIB).prop_map(|(c, m)| LocalLoad {
                cpu_busy_cores: c,
                memory_used_mb: m,
            })
        }

        fn arb_used() -> impl Strategy<Value = Capacity> {
            (0u32..16, 0u64..30 * GIB).prop_map(|(c, m)| Capacity {
                cpu_cores: c,
                memory_mb: m,
                ..Capacity::default()
            })
        }

        /// What a constant load and constant leases converge to.
        fn settled(e: &Elastic, l: &LocalLoad, u: &Capacity) -> (u32, u64) {
            let (t_cpu, t_mem) = e.target(l, None);
            let c = &e.cap;
            if e.policy.break_leases {
                (t_cpu as u32, t_mem)
            } else {
                (
                    (t_cpu as u32).max(u.cpu_cores.min(c.cpu_cores)),
                    t_mem.max(u.memory_mb.min(c.memory_mb)),
                )
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Never above the cap, never under the leases (without
            /// break_leases), non-elastic dimensions fixed, and `Some`
            /// exactly when the capacity changed.
            #[test]
            fn bounds_hold(
                p in arb_policy(),
                (mode, forecast) in arb_mode(),
                steps in prop::collection::vec((arb_load(), arb_used(), 0u64..30_000), 1..80),
            ) {
                let p = ElasticPolicy { mode, forecast, ..p };
                prop_assert_eq!(p.validate(), Ok(()));
                let mut e = elastic(p.clone());
                let mut now = 0u64;
                for (l, u, dt) in steps {
                    now += dt;
                    let before = e.current().clone();
                    let got = e.observe(&l, &u, now);
                    let cur = e.current().clone();
                    prop_assert_eq!(got.is_some(), before != cur);
                    if let Some(g) = got {
                        prop_assert_eq!(&g, &cur);
                    }
                    prop_assert!(cur.cpu_cores <= cap().cpu_cores);
                    prop_assert!(cur.memory_mb <= cap().memory_mb);
                    prop_assert_eq!(cur.disk_mb, cap().disk_mb);
                    prop_assert_eq!(&cur.gpus, &cap().gpus);
                    prop_assert_eq!(&cur.custom, &cap().custom);
                    if !p.break_leases {
                        prop_assert!(cur.cpu_cores >= u.cpu_cores.min(cap().cpu_cores));
                        prop_assert!(cur.memory_mb >= u.memory_mb.min(cap().memory_mb));
                    }
                }
            }

            /// From any history, a constant load with constant leases
            /// converges to `max(target, floor)` and then stops changing.
            #[test]
            fn constant_load_converges(
                p in arb_policy(),
                history in prop::collection::vec((arb_load(), arb_used(), 0u64..30_000), 0..20),
                l in arb_load(),
                u in arb_used(),
                dt in 500u64..20_000,
            ) {
                let mut e = elastic(p.clone());
                let mut now = 0u64;
                for (hl, hu, hdt) in history {
                    now += hdt;
                    e.observe(&hl, &hu, now);
                }
                // A step is at least 1% of the cap: 100 steps reach anywhere.
                let horizon = now + 101 * (p.shrink_after_ms + p.grow_after_ms + dt);
                while now <= horizon {
                    now += dt;
                    e.observe(&l, &u, now);
                }
                prop_assert_eq!(level_raw(&e), settled(&e, &l, &u));
                for _ in 0..50 {
                    now += dt;
                    prop_assert_eq!(e.observe(&l, &u, now), None);
                }
            }

            /// A load that flips between any level and idleness faster than
            /// the windows changes nothing.
            #[test]
            fn fast_oscillation_changes_nothing(
                a in arb_load(),
                // Idle enough to leave the whole cap: ≤ 16 − 1 − 12 cores,
                // ≤ 32 − 1 − 24 GiB.
                b in (0.0f64..=3.0, 0u64..=7 * GIB).prop_map(|(c, m)| LocalLoad {
                    cpu_busy_cores: c,
                    memory_used_mb: m,
                }),
                window in 1_000u64..60_000,
                phases in prop::collection::vec((1usize..5, 1u64..1_000), 1..40),
                brk in any::<bool>(),
            ) {
                let p = ElasticPolicy {
                    shrink_after_ms: window,
                    grow_after_ms: window,
                    break_leases: brk,
                    ..policy()
                };
                let mut e = elastic(p);
                let mut now = 0u64;
                for (i, (samples, gap)) in phases.into_iter().enumerate() {
                    // Each phase's samples span less than the window.
                    let gap = gap.min((window - 1) / samples as u64).max(1);
                    let l = if i % 2 == 0 { &a } else { &b };
                    for _ in 0..samples {
                        prop_assert_eq!(e.observe(l, &used(0, 0), now), None);
                        now += gap;
                    }
                    now -= gap;
                    now += 1;
                }
            }

            /// After ending the named leases, the rest fit in `current`.
            #[test]
            fn broken_leases_make_the_rest_fit(
                l in arb_load(),
                leases in prop::collection::vec((0usize..4, 0u64..1_000, 0u32..6, 0u64..8 * GIB), 0..10),
            ) {
                let p = ElasticPolicy { break_leases: true, shrink_after_ms: 0, ..policy() };
                let mut e = elastic(p);
                e.observe(&l, &used(0, 0), 0);
                let leases: Vec<Lease> = leases
                    .into_iter()
                    .enumerate()
                    .map(|(i, (pr, t, c, m))| {
                        let mut x = lease(&format!("l{i}"), Priority::ALL[pr], t, c, 0);
                        x.memory_mb = m;
                        x
                    })
                    .collect();
                let gone = e.leases_to_break(&leases);
                let rest: Vec<&Lease> = leases.iter().filter(|x| !gone.contains(&x.lease_id)).collect();
                let cpu: u64 = rest.iter().map(|x| u64::from(x.cpu_cores)).sum();
                let mem: u64 = rest.iter().map(|x| x.memory_mb).sum();
                prop_assert!(cpu <= u64::from(e.current().cpu_cores));
                prop_assert!(mem <= e.current().memory_mb);
                // Every victim held something, and none is named twice.
                let mut uniq = gone.clone();
                uniq.sort();
                uniq.dedup();
                prop_assert_eq!(uniq.len(), gone.len());
                for id in &gone {
                    let x = leases.iter().find(|x| &x.lease_id == id).unwrap();
                    prop_assert!(x.cpu_cores > 0 || x.memory_mb > 0);
                }
                // Without break_leases, nothing is ever named.
                let keep = Elastic::new(policy(), cap(), 16, 32 * GIB);
                prop_assert!(keep.leases_to_break(&leases).is_empty());
            }
        }

        fn level_raw(e: &Elastic) -> (u32, u64) {
            (e.current().cpu_cores, e.current().memory_mb)
        }
    }
}
