//! Bottleneck identification: which resource dimension refuses the most
//! requests.
//!
//! When an owner refuses a request for capacity (it does not fit, it
//! waited in the queue until its wait ran out, preemption could not make
//! room), [`short_dimensions`] names every dimension that did not fit,
//! and [`Refusals`] counts them per dimension over a sliding window of
//! [`WINDOW_MS`] (per-minute slots, bounded). Each node announces its
//! counts ([`Refusals::top`], at most [`MAX_ANNOUNCED`] dimensions), and
//! [`swarm_wide`] sums what a node sees from everyone.
//!
//! Dimension names: `cpu_cores`, `memory_mb`, `disk_mb`, `gpus`,
//! `custom.<name>` (a resource the owner declares; [`UNDECLARED`] for any
//! other name a requester makes up), and [`OTHER`] when every dimension fits the free
//! capacity (the room is kept for reservations or for requests ahead in
//! the queue).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fit::assign_gpus;
use crate::model::{Capacity, ResourceRequirements};

/// The window counts cover, ms.
pub const WINDOW_MS: u64 = 3_600_000;
/// Width of one slot of the window, ms.
pub const SLOT_MS: u64 = 60_000;
/// Most distinct dimensions counted per slot; further ones count as
/// [`OTHER`].
pub const MAX_DIMS: usize = 32;
/// Most dimensions a node announces.
pub const MAX_ANNOUNCED: usize = 8;
/// Longest dimension name accepted (from peers too).
pub const MAX_DIM_LEN: usize = 72;
/// The dimension named when every dimension fits what is free.
pub const OTHER: &str = "other";
/// The dimension named for a custom resource the owner does not declare.
pub const UNDECLARED: &str = "custom.undeclared";

/// Every dimension of `req` that does not fit in `free` (with `total`
/// for the whole-GPU rule), in a fixed order. Never empty: [`OTHER`] when
/// everything fits.
pub fn short_dimensions(
    free: &Capacity,
    total: &Capacity,
    req: &ResourceRequirements,
) -> Vec<String> {
    let mut out = Vec::new();
    if req.cpu_cores > free.cpu_cores {
        out.push("cpu_cores".to_owned());
    }
    if req.memory_mb > free.memory_mb {
        out.push("memory_mb".to_owned());
    }
    if req.disk_mb > free.disk_mb {
        out.push("disk_mb".to_owned());
    }
    if assign_gpus(
        &free.gpus,
        &total.gpus,
        req.gpus_wanted(),
        req.gpu_memory_mb,
    )
    .is_none()
    {
        out.push("gpus".to_owned());
    }
    for (name, want) in &req.custom {
        if *want > free.custom.get(name).copied().unwrap_or(0) {
            // Names come from requesters: only the owner's own (declared)
            // resources are named, so the set of dimensions stays bounded.
            if total.custom.contains_key(name) {
                out.push(dim_name(&format!("custom.{name}")));
            } else {
                out.push(UNDECLARED.to_owned());
            }
        }
    }
    if out.is_empty() {
        out.push(OTHER.to_owned());
    }
    out
}

fn dim_name(s: &str) -> String {
    if s.len() <= MAX_DIM_LEN {
        return s.to_owned();
    }
    let mut end = MAX_DIM_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// One dimension and how many refusals it caused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimCount {
    pub dimension: String,
    pub count: u64,
}

/// Refusals per dimension over the last [`WINDOW_MS`].
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    /// Per slot start: refusals per dimension, and refused requests.
    slots: BTreeMap<u64, (BTreeMap<String, u64>, u64)>,
}

impl Refusals {
    /// Count one refused request whose short dimensions are `dims`.
    pub fn record(&mut self, now_ms: u64, dims: &[String]) {
        self.prune(now_ms);
        let slot = now_ms - now_ms % SLOT_MS;
        let (map, requests) = self.slots.entry(slot).or_default();
        *requests = requests.saturating_add(1);
        for d in dims {
            let d = dim_name(d);
            let key = if map.contains_key(&d) || map.len() < MAX_DIMS {
                d
            } else {
                OTHER.to_owned()
            };
            let e = map.entry(key).or_insert(0);
            *e = e.saturating_add(1);
        }
    }

    fn prune(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(WINDOW_MS);
        self.slots
            .retain(|s, _| s.saturating_add(SLOT_MS) > oldest && *s <= now_ms);
    }

    fn live(&self, now_ms: u64) -> impl Iterator<Item = &(BTreeMap<String, u64>, u64)> {
        let oldest = now_ms.saturating_sub(WINDOW_MS);
        self.slots
            .iter()
            .filter(move |(s, _)| s.saturating_add(SLOT_MS) > oldest && **s <= now_ms)
            .map(|(_, v)| v)
    }

    /// Refusals per dimension in the window, ranked.
    pub fn ranked(&self, now_ms: u64) -> Vec<DimCount> {
        let mut sum: BTreeMap<String, u64> = BTreeMap::new();
        for (m, _) in self.live(now_ms) {
            for (d, c) in m {
                let e = sum.entry(d.clone()).or_insert(0);
                *e = e.saturating_add(*c);
            }
        }
        rank(sum)
    }

    /// Refused requests in the window.
    pub fn requests(&self, now_ms: u64) -> u64 {
        self.live(now_ms)
            .fold(0u64, |a, (_, n)| a.saturating_add(*n))
    }

    /// What a node announces: its top [`MAX_ANNOUNCED`] dimensions.
    pub fn top(&self, now_ms: u64) -> Vec<DimCount> {
        let mut r = self.ranked(now_ms);
        r.truncate(MAX_ANNOUNCED);
        r
    }
}

/// Sort by count (most first), then by name.
pub fn rank(counts: BTreeMap<String, u64>) -> Vec<DimCount> {
    let mut v: Vec<DimCount> = counts
        .into_iter()
        .map(|(dimension, count)| DimCount { dimension, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.dimension.cmp(&b.dimension)));
    v
}

/// Sum the announced counts of every node (each list as announced,
/// untrusted: entries past [`MAX_ANNOUNCED`] and over-long names are
/// ignored), ranked.
pub fn swarm_wide<'a>(per_node: impl IntoIterator<Item = &'a [DimCount]>) -> Vec<DimCount> {
    let mut sum: BTreeMap<String, u64> = BTreeMap::new();
    for list in per_node {
        for dc in list.iter().take(MAX_ANNOUNCED) {
            if dc.dimension.is_empty() || dc.dimension.len() > MAX_DIM_LEN {
                continue;
            }
            let e = sum.entry(dc.dimension.clone()).or_insert(0);
            *e = e.saturating_add(dc.count);
        }
    }
    rank(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GpuSlot;
    use proptest::prelude::*;

    fn cap(cores: u32, mem: u64) -> Capacity {
        Capacity {
            cpu_cores: cores,
            memory_mb: mem,
            disk_mb: 1000,
            gpus: vec![GpuSlot {
                index: 0,
                memory_mb: 8000,
            }],
            custom: BTreeMap::from([("licenses".to_owned(), 2)]),
        }
    }

    #[test]
    fn names_every_short_dimension() {
        let total = cap(8, 4096);
        let free = cap(2, 1024);
        let req = ResourceRequirements {
            cpu_cores: 4,
            memory_mb: 2048,
            ..Default::default()
        };
        assert_eq!(
            short_dimensions(&free, &total, &req),
            vec!["cpu_cores", "memory_mb"]
        );
        let req = ResourceRequirements {
            gpu_count: 2,
            custom: BTreeMap::from([("licenses".to_owned(), 3), ("zz".to_owned(), 1)]),
            ..Default::default()
        };
        assert_eq!(
            short_dimensions(&free, &total, &req),
            vec!["gpus", "custom.licenses", UNDECLARED]
        );
        let fits = ResourceRequirements {
            cpu_cores: 1,
            ..Default::default()
        };
        assert_eq!(short_dimensions(&free, &total, &fits), vec![OTHER]);
    }

    #[test]
    fn counts_slide_out_of_the_window() {
        let mut r = Refusals::default();
        let t = 1_700_000_000_000;
        r.record(t, &["memory_mb".to_owned()]);
        r.record(t + 1_000, &["memory_mb".to_owned(), "cpu_cores".to_owned()]);
        r.record(t + 2_000, &["cpu_cores".to_owned()]);
        r.record(t + 3_000, &["memory_mb".to_owned()]);
        let ranked = r.ranked(t + 3_000);
        assert_eq!(ranked[0].dimension, "memory_mb");
        assert_eq!(ranked[0].count, 3);
        assert_eq!(ranked[1].count, 2);
        assert_eq!(r.requests(t + 3_000), 4);
        assert!(r.ranked(t + WINDOW_MS + SLOT_MS + 3_000).is_empty());
    }

    #[test]
    fn swarm_wide_sums_and_ignores_junk() {
        let a = vec![DimCount {
            dimension: "gpus".into(),
            count: 5,
        }];
        let b = vec![
            DimCount {
                dimension: "gpus".into(),
                count: 1,
            },
            DimCount {
                dimension: "x".repeat(500),
                count: u64::MAX,
            },
            DimCount {
                dimension: "memory_mb".into(),
                count: u64::MAX,
            },
        ];
        let s = swarm_wide([a.as_slice(), b.as_slice()]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].dimension, "memory_mb");
        assert_eq!(s[1].count, 6);
    }

    proptest! {
        /// Counts never exceed what was recorded, dimensions per slot stay
        /// bounded, and a window's ranking is sorted.
        #[test]
        fn bounded_and_ranked(
            events in proptest::collection::vec((0u64..2 * WINDOW_MS, proptest::collection::vec(0u8..60, 1..4)), 0..200),
        ) {
            let mut events = events;
            events.sort_by_key(|e| e.0);
            let mut r = Refusals::default();
            let base = 1_700_000_000_000u64;
            let mut recorded = 0u64;
            for (dt, dims) in &events {
                let dims: Vec<String> = dims.iter().map(|d| format!("custom.r{d}")).collect();
                r.record(base + dt, &dims);
                recorded += dims.len() as u64;
            }
            let now = base + events.last().map_or(0, |e| e.0);
            let ranked = r.ranked(now);
            let sum: u64 = ranked.iter().map(|d| d.count).sum();
            prop_assert!(sum <= recorded);
            prop_assert!(r.slots.len() as u64 <= WINDOW_MS / SLOT_MS + 1);
            for (m, _) in r.slots.values() {
                prop_assert!(m.len() <= MAX_DIMS + 1);
            }
            for w in ranked.windows(2) {
                prop_assert!(w[0].count >= w[1].count);
            }
            prop_assert!(r.top(now).len() <= MAX_ANNOUNCED);
        }

        /// Any request against any capacity names at least one dimension,
        /// and never one that fits when it names a real dimension.
        #[test]
        fn short_dimensions_are_really_short(
            cores in 0u32..16, mem in 0u64..10_000, fcores in 0u32..16, fmem in 0u64..10_000,
        ) {
            let total = cap(16, 10_000);
            let mut free = cap(fcores, fmem);
            free.custom.clear();
            let req = ResourceRequirements { cpu_cores: cores, memory_mb: mem, ..Default::default() };
            let dims = short_dimensions(&free, &total, &req);
            prop_assert!(!dims.is_empty());
            prop_assert_eq!(dims.contains(&"cpu_cores".to_owned()), cores > fcores);
            prop_assert_eq!(dims.contains(&"memory_mb".to_owned()), mem > fmem);
        }
    }
}
