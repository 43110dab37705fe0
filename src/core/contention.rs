//! Contention: detect it, classify it, and say what could resolve it (the
//! seeds' contention handling).
//!
//! An owner whose queue holds requests it cannot grant yet calls
//! [`assess`] with what the queue asks for in total and what it has. The
//! [`ContentionReport`] it gets back is plain data for the API, the
//! announcement and the logs: a [`Severity`] per resource dimension and
//! overall, and the [`Resolution`]s worth trying. `assess` is a pure
//! function: no clock, no state, no panics, and the same inputs always give
//! the same report.
//!
//! # Dimensions
//!
//! One [`DimensionContention`] per dimension, in this order: `cpu_cores`,
//! `memory_mb`, `disk_mb`, `gpus`, `gpu_memory_mb`, then every custom
//! resource named in the demand or the capacity, sorted by name. For `gpus`
//! the demand counts whole devices (whole or shared GPUs count 1 each, as
//! in [`Usage::gpus`]), `free` is the number of GPUs with any free memory
//! and `capacity` the number of lent GPUs. Requests whose GPUs cannot be
//! placed for want of an *entirely* free GPU show up as `Low` there (room
//! exists, but fragmented) and in `gpu_memory_mb`.
//!
//! # Severity, per dimension
//!
//! With `shortfall = demand − free` (0 when demand fits) and
//! `utilization = (capacity − free) / capacity`, checked in this order:
//!
//! | severity   | when |
//! |------------|------|
//! | `None`     | nothing is queued, or the queue wants none of this dimension |
//! | `Low`      | `demand ≤ free`: the queue waits only on ordering or fragmentation |
//! | `Critical` | `demand > capacity`: even an idle node could not hold it all |
//! | `High`     | `shortfall > capacity / 2`, or `utilization ≥ 90%` |
//! | `Medium`   | otherwise: a modest shortfall on a node with room to turn over |
//!
//! The comparisons are exact integer arithmetic, so the boundaries are
//! exactly as written (`shortfall = capacity / 2` is `Medium`,
//! `utilization = 90%` is `High`). The report's severity is the worst over
//! the dimensions, but at least `Low` whenever something is queued.
//!
//! # Suggestions
//!
//! Nothing is suggested when nothing is queued. Otherwise, in this order:
//!
//! - [`Resolution::Wait`]: always; leases end and free capacity.
//! - [`Resolution::Priority`]: the queued requests have mixed priorities,
//!   so serving them in priority order matters.
//! - [`Resolution::Preempt`]: the caller says preemption is enabled and
//!   lower-priority leases hold what higher-priority waiting requests need.
//! - [`Resolution::Redistribute`]: the caller knows peers with enough free
//!   capacity to serve the queued work.
//! - [`Resolution::Scale`]: elastic sharing is on and the lendable capacity
//!   is below its configured cap ([`crate::core::elastic`]), so it may grow.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Capacity, Usage};

/// How contended a resource is, from `None` to `Critical`; ordered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Nothing is waiting for this resource.
    #[default]
    None,
    /// Requests wait although the resource is free (ordering, fragmentation).
    Low,
    /// A modest shortfall that ending leases should soon cover.
    Medium,
    /// A large shortfall, or the resource is nearly all leased.
    High,
    /// More is waiting than this node lends in total.
    Critical,
}

impl Severity {
    /// The snake_case name used in JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A way to relieve contention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Wait for leases to end.
    Wait,
    /// Serve the queue in priority order.
    Priority,
    /// Take capacity back from lower-priority leases.
    Preempt,
    /// Send requests to peers with room.
    Redistribute,
    /// Grow the elastic lendable capacity back towards its cap.
    Scale,
}

impl Resolution {
    /// The snake_case name used in JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Wait => "wait",
            Resolution::Priority => "priority",
            Resolution::Preempt => "preempt",
            Resolution::Redistribute => "redistribute",
            Resolution::Scale => "scale",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Contention in one resource dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DimensionContention {
    /// `cpu_cores`, `memory_mb`, `disk_mb`, `gpus`, `gpu_memory_mb`, or a
    /// custom resource's name.
    pub dimension: String,
    /// What the queued requests ask for in total.
    pub demand: u64,
    /// What is free now.
    pub free: u64,
    /// What the node lends in total.
    pub capacity: u64,
    /// `demand / max(free, 1)`: how many times over what is free the queue
    /// asks; at most 1 when it fits. Always finite (so it survives JSON).
    pub ratio: f64,
    /// See the module documentation for the thresholds.
    pub severity: Severity,
}

/// The outcome of [`assess`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentionReport {
    /// The worst severity over the dimensions (at least `Low` when
    /// something is queued).
    pub severity: Severity,
    /// Every dimension, in the order the module documentation gives.
    pub dimensions: Vec<DimensionContention>,
    /// Number of queued requests.
    pub queued: u32,
    /// What could help, in the order of [`Resolution`]; empty when nothing
    /// is queued.
    pub suggestions: Vec<Resolution>,
}

/// Severity of one dimension, by the table in the module documentation.
fn classify(demand: u64, free: u64, capacity: u64) -> Severity {
    if demand == 0 {
        return Severity::None;
    }
    if demand <= free {
        return Severity::Low;
    }
    if demand > capacity {
        return Severity::Critical;
    }
    // free < demand ≤ capacity; u128 so nothing overflows.
    let shortfall = u128::from(demand - free);
    let capacity = u128::from(capacity);
    let used = capacity - u128::from(free);
    let big_shortfall = 2 * shortfall > capacity;
    let nearly_full = 10 * used >= 9 * capacity;
    if big_shortfall || nearly_full {
        Severity::High
    } else {
        Severity::Medium
    }
}

/// Classify contention on this node and suggest resolutions.
///
/// - `demand`: what the `queued` requests ask for in total.
/// - `free`, `capacity`: what is free now and what the node lends in total
///   (as [`crate::core::ledger::Ledger::free`] and `capacity` report them).
/// - `mixed_priorities`: the queued requests do not all share one priority.
/// - `preemptible`: preemption is enabled, and lower-priority leases hold
///   what higher-priority waiting requests need.
/// - `peers_with_room`: how many other nodes have enough free capacity to
///   serve queued work.
/// - `can_scale`: elastic sharing is enabled and the lendable capacity is
///   below its configured cap.
///
/// See the module documentation for the thresholds and suggestions.
#[allow(clippy::too_many_arguments)]
pub fn assess(
    demand: &Usage,
    queued: u32,
    free: &Capacity,
    capacity: &Capacity,
    mixed_priorities: bool,
    preemptible: bool,
    peers_with_room: u32,
    can_scale: bool,
) -> ContentionReport {
    let count = |c: &Capacity| c.gpus.iter().filter(|g| g.memory_mb > 0).count() as u64;
    let mut rows: Vec<(String, u64, u64, u64)> = vec![
        (
            "cpu_cores".into(),
            u64::from(demand.cpu_cores),
            u64::from(free.cpu_cores),
            u64::from(capacity.cpu_cores),
        ),
        (
            "memory_mb".into(),
            demand.memory_mb,
            free.memory_mb,
            capacity.memory_mb,
        ),
        (
            "disk_mb".into(),
            demand.disk_mb,
            free.disk_mb,
            capacity.disk_mb,
        ),
        (
            "gpus".into(),
            u64::from(demand.gpus),
            count(free),
            capacity.gpus.len() as u64,
        ),
        (
            "gpu_memory_mb".into(),
            demand.gpu_memory_mb,
            free.gpu_memory_mb(),
            capacity.gpu_memory_mb(),
        ),
    ];
    let names: BTreeSet<&String> = demand.custom.keys().chain(capacity.custom.keys()).collect();
    for name in names {
        let get = |m: &std::collections::BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
        rows.push((
            name.clone(),
            get(&demand.custom),
            get(&free.custom),
            get(&capacity.custom),
        ));
    }

    let dimensions: Vec<DimensionContention> = rows
        .into_iter()
        .map(|(dimension, d, f, c)| {
            // Whatever the caller passed, free never counts above capacity.
            let f = f.min(c);
            let severity = if queued == 0 {
                Severity::None
            } else {
                classify(d, f, c)
            };
            DimensionContention {
                dimension,
                demand: d,
                free: f,
                capacity: c,
                ratio: d as f64 / f.max(1) as f64,
                severity,
            }
        })
        .collect();

    let mut severity = dimensions
        .iter()
        .map(|d| d.severity)
        .max()
        .unwrap_or(Severity::None);
    let mut suggestions = Vec::new();
    if queued > 0 {
        severity = severity.max(Severity::Low);
        suggestions.push(Resolution::Wait);
        if mixed_priorities {
            suggestions.push(Resolution::Priority);
        }
        if preemptible {
            suggestions.push(Resolution::Preempt);
        }
        if peers_with_room > 0 {
            suggestions.push(Resolution::Redistribute);
        }
        if can_scale {
            suggestions.push(Resolution::Scale);
        }
    }
    ContentionReport {
        severity,
        dimensions,
        queued,
        suggestions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GpuSlot;
    use std::collections::BTreeMap;

    /// Only `cpu` cores.
    fn cap(cpu: u32) -> Capacity {
        Capacity {
            cpu_cores: cpu,
            ..Capacity::default()
        }
    }

    fn cpu_demand(cpu: u32) -> Usage {
        Usage {
            cpu_cores: cpu,
            ..Usage::default()
        }
    }

    /// Severity of the cpu_cores dimension with 100 cores.
    fn cpu(demand: u32, free: u32) -> Severity {
        let r = assess(
            &cpu_demand(demand),
            1,
            &cap(free),
            &cap(100),
            false,
            false,
            0,
            false,
        );
        assert_eq!(r.dimensions[0].dimension, "cpu_cores");
        r.dimensions[0].severity
    }

    fn plain(demand: &Usage, queued: u32) -> ContentionReport {
        assess(demand, queued, &cap(50), &cap(100), false, false, 0, false)
    }

    #[test]
    fn none_when_nothing_is_queued() {
        let r = plain(&cpu_demand(500), 0);
        assert_eq!(r.severity, Severity::None);
        assert!(r.dimensions.iter().all(|d| d.severity == Severity::None));
        assert!(r.suggestions.is_empty());
        let r = assess(&cpu_demand(500), 0, &cap(0), &cap(100), true, true, 5, true);
        assert!(r.suggestions.is_empty());
        // Something queued, but wanting no cpu: None there, Low overall.
        let r = plain(&Usage::default(), 2);
        assert_eq!(r.dimensions[0].severity, Severity::None);
        assert_eq!(r.severity, Severity::Low);
        assert_eq!(r.queued, 2);
    }

    #[test]
    fn low_boundary() {
        assert_eq!(cpu(50, 50), Severity::Low);
        assert_eq!(cpu(1, 1), Severity::Low);
        assert_eq!(cpu(51, 50), Severity::Medium);
    }

    #[test]
    fn medium_high_boundary_on_shortfall() {
        // free 40 (60% used): shortfall 50 is half the capacity.
        assert_eq!(cpu(90, 40), Severity::Medium);
        assert_eq!(cpu(91, 40), Severity::High);
        // Odd capacity: 2 × shortfall > capacity decides.
        let at = |d, f| {
            assess(
                &cpu_demand(d),
                1,
                &cap(f),
                &cap(101),
                false,
                false,
                0,
                false,
            )
            .dimensions[0]
                .severity
        };
        assert_eq!(at(100, 50), Severity::Medium); // shortfall 50: 100 ≤ 101
        assert_eq!(at(101, 50), Severity::High); // shortfall 51: 102 > 101
    }

    #[test]
    fn medium_high_boundary_on_utilization() {
        // 89% used, shortfall 1: Medium. 90% used: High.
        assert_eq!(cpu(12, 11), Severity::Medium);
        assert_eq!(cpu(11, 10), Severity::High);
        assert_eq!(cpu(1, 0), Severity::High);
    }

    #[test]
    fn critical_boundary() {
        assert_eq!(cpu(100, 99), Severity::Medium);
        assert_eq!(cpu(100, 0), Severity::High);
        assert_eq!(cpu(101, 0), Severity::Critical);
        assert_eq!(cpu(101, 100), Severity::Critical);
        // Nothing lent at all: anything asked is critical.
        let r = assess(&cpu_demand(1), 1, &cap(0), &cap(0), false, false, 0, false);
        assert_eq!(r.severity, Severity::Critical);
    }

    #[test]
    fn ratio_is_finite_and_free_is_capped() {
        let r = assess(&cpu_demand(8), 1, &cap(0), &cap(4), false, false, 0, false);
        assert_eq!(r.dimensions[0].ratio, 8.0);
        let r = assess(
            &cpu_demand(8),
            1,
            &cap(16),
            &cap(32),
            false,
            false,
            0,
            false,
        );
        assert_eq!(r.dimensions[0].ratio, 0.5);
        let r = assess(&cpu_demand(8), 1, &cap(50), &cap(4), false, false, 0, false);
        assert_eq!(r.dimensions[0].free, 4);
        assert_eq!(r.dimensions[0].severity, Severity::Critical);
    }

    #[test]
    fn all_dimensions_in_order_with_gpus_and_custom() {
        let gpu = |index, memory_mb| GpuSlot { index, memory_mb };
        let capacity = Capacity {
            cpu_cores: 8,
            memory_mb: 1000,
            disk_mb: 1000,
            gpus: vec![gpu(0, 80), gpu(1, 80)],
            custom: BTreeMap::from([("db".to_string(), 10)]),
        };
        let free = Capacity {
            cpu_cores: 8,
            memory_mb: 1000,
            disk_mb: 1000,
            // GPU 0 partly used, GPU 1 fully used.
            gpus: vec![gpu(0, 30), gpu(1, 0)],
            custom: BTreeMap::from([("db".to_string(), 10)]),
        };
        let demand = Usage {
            gpus: 1,
            gpu_memory_mb: 40,
            custom: BTreeMap::from([("api".to_string(), 1)]),
            ..Usage::default()
        };
        let r = assess(&demand, 1, &free, &capacity, false, false, 0, false);
        let names: Vec<_> = r.dimensions.iter().map(|d| d.dimension.as_str()).collect();
        assert_eq!(
            names,
            [
                "cpu_cores",
                "memory_mb",
                "disk_mb",
                "gpus",
                "gpu_memory_mb",
                "api",
                "db"
            ]
        );
        let sev: Vec<_> = r.dimensions.iter().map(|d| d.severity).collect();
        use Severity::*;
        // gpus: 1 wanted, 1 with room (fragmentation: Low). gpu memory: 40
        // of 30 free, 130 of 160 used (81%), shortfall 10: Medium.
        // api: not lent at all: Critical.
        assert_eq!(sev, [None, None, None, Low, Medium, Critical, None]);
        assert_eq!(r.dimensions[3].free, 1);
        assert_eq!(r.dimensions[3].capacity, 2);
        assert_eq!(r.severity, Critical);
    }

    #[test]
    fn suggestions_each() {
        let d = cpu_demand(80);
        let s = |mixed, pre, peers, scale| {
            assess(&d, 3, &cap(50), &cap(100), mixed, pre, peers, scale).suggestions
        };
        use Resolution::*;
        assert_eq!(s(false, false, 0, false), vec![Wait]);
        assert_eq!(s(true, false, 0, false), vec![Wait, Priority]);
        assert_eq!(s(false, true, 0, false), vec![Wait, Preempt]);
        assert_eq!(s(false, false, 1, false), vec![Wait, Redistribute]);
        assert_eq!(s(false, false, 0, true), vec![Wait, Scale]);
        assert_eq!(
            s(true, true, 7, true),
            vec![Wait, Priority, Preempt, Redistribute, Scale]
        );
    }

    #[test]
    fn severity_order_and_names() {
        use Severity::*;
        assert!(None < Low && Low < Medium && Medium < High && High < Critical);
        assert_eq!(serde_json::to_string(&Critical).unwrap(), "\"critical\"");
        assert_eq!(
            serde_json::to_string(&Resolution::Redistribute).unwrap(),
            "\"redistribute\""
        );
        assert_eq!(Medium.to_string(), "medium");
        assert_eq!(Resolution::Scale.to_string(), "scale");
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = assess(
            &cpu_demand(80),
            3,
            &cap(50),
            &cap(100),
            true,
            false,
            2,
            true,
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"severity\":\"medium\""), "{json}");
        let back: ContentionReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Severity never decreases as demand grows, with free and
            /// capacity fixed.
            #[test]
            fn monotone_in_demand(d in 0u64..10_000, extra in 0u64..10_000, f in 0u64..10_000, c in 0u64..10_000) {
                let f = f.min(c);
                prop_assert!(classify(d, f, c) <= classify(d + extra, f, c));
            }

            /// Severity never increases as free capacity grows.
            #[test]
            fn antitone_in_free(d in 0u64..10_000, f in 0u64..10_000, more in 0u64..10_000, c in 0u64..10_000) {
                let f1 = f.min(c);
                let f2 = (f + more).min(c);
                prop_assert!(classify(d, f1, c) >= classify(d, f2, c));
            }

            /// The report's severity is the worst dimension (at least Low
            /// when queued), and Wait is suggested exactly when queued.
            #[test]
            fn report_is_consistent(
                cpu in 0u32..64, mem in 0u64..4_096, fcpu in 0u32..64, fmem in 0u64..4_096,
                ccpu in 0u32..64, cmem in 0u64..4_096, queued in 0u32..4,
                mixed in any::<bool>(), pre in any::<bool>(), peers in 0u32..3, scale in any::<bool>(),
            ) {
                let demand = Usage { cpu_cores: cpu, memory_mb: mem, ..Usage::default() };
                let free = Capacity { cpu_cores: fcpu, memory_mb: fmem, ..Capacity::default() };
                let capacity = Capacity { cpu_cores: ccpu, memory_mb: cmem, ..Capacity::default() };
                let r = assess(&demand, queued, &free, &capacity, mixed, pre, peers, scale);
                let worst = r.dimensions.iter().map(|d| d.severity).max().unwrap();
                if queued == 0 {
                    prop_assert_eq!(r.severity, Severity::None);
                    prop_assert!(r.suggestions.is_empty());
                } else {
                    prop_assert_eq!(r.severity, worst.max(Severity::Low));
                    prop_assert_eq!(r.suggestions.first(), Some(&Resolution::Wait));
                }
                for d in &r.dimensions {
                    prop_assert!(d.ratio.is_finite() && d.ratio >= 0.0);
                    prop_assert!(d.free <= d.capacity);
                }
                let mut sorted = r.suggestions.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(sorted, r.suggestions);
            }
        }
    }
}
