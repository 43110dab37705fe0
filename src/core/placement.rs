//! Placement: rank the feasible candidates by a strategy, then walk the
//! ranking with late binding.
//!
//! The requester's [`View`](crate::core::view::View) yields the nodes that
//! look feasible ([`Candidate`]s). A [`Placer`] orders *all* of them, best
//! first, according to a [`Strategy`] (seed 004's "Load Balancing
//! Strategies": round-robin, least-loaded, weighted, geographic, random,
//! plus best-fit bin packing). An [`Attempt`] then hands out the ranked nodes
//! one at a time: the requester asks the first; if that owner refuses
//! (usually because our view of it was stale) it asks the next, up to a
//! bound, and keeps every refusal so the final error says why each candidate
//! said no.
//!
//! Sans-IO and deterministic: no clock, no OS randomness. The only
//! randomness is the `seed` passed to [`Placer::rank`], expanded with a
//! SplitMix64 generator defined here (so a recorded seed replays the same
//! order on any build). Every tie is broken by [`NodeId`] ascending, and the
//! input order of the candidates never matters.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::core::fit::fit;
use crate::model::{Capacity, Denial, Location, NodeId, ResourceRequirements};

/// How to order the candidates for a request.
///
/// Whatever the strategy, [`Placer::rank`] returns every candidate (except
/// weight-0 ones under [`Strategy::Weighted`]), best first, and every tie is
/// broken by [`NodeId`] ascending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Take turns. The candidates are sorted by `NodeId` and rotated so the
    /// first is the smallest `NodeId` strictly greater than the node ranked
    /// first by the previous round-robin call of this [`Placer`] (wrapping
    /// around to the smallest; the smallest on the first call). The placer
    /// remembers the node ranked first on every call. With a stable set of
    /// `n` candidates, each is first exactly once in every `n` calls.
    #[serde(alias = "round_robin", alias = "RoundRobin")]
    RoundRobin,
    /// Emptiest first: ascending [`load`] (the highest utilization over
    /// cpu, memory, GPU memory and disk), then ascending `active_leases`,
    /// then `NodeId`.
    #[default]
    #[serde(alias = "least_loaded", alias = "LeastLoaded")]
    LeastLoaded,
    /// Smooth weighted round-robin (nginx's algorithm). Each candidate's
    /// weight is [`effective_weight`]: the requester's configured weight
    /// for its node id, else for its name, else its announced weight if
    /// non-zero, else 1. Weight 0 drops the candidate from the ranking.
    /// Each call adds every weight to that node's current weight, picks
    /// the highest current weight (ties by `NodeId`) as first and subtracts
    /// the total weight from it. The current weights live in the
    /// [`Placer`] and restart from zero whenever the set of (node, weight)
    /// pairs changes. The rest follow by weight descending, then `NodeId`.
    /// With a stable set of total weight `W`, node `i` is first exactly
    /// `w_i` times in every `W` consecutive calls.
    #[serde(alias = "Weighted")]
    Weighted,
    /// Nearest to the request's origin first. Sorted by the key
    /// `(distance_km, zone_rank, rtt_ms, node_id)`, ascending, where
    /// - `distance_km` is the haversine great-circle distance (earth
    ///   radius 6371.0088 km) if both the origin and the candidate have
    ///   valid coordinates, `0` for the local node, and `+inf` otherwise;
    /// - `zone_rank` is `0` for the local node or a candidate whose zone
    ///   equals the origin's (both set), else `1`;
    /// - `rtt_ms` is the measured round-trip time, `0` for the local node,
    ///   `+inf` when unknown.
    ///
    /// So nodes with known coordinates come first by distance, then the
    /// rest with same-zone nodes first, each group by measured latency.
    #[serde(alias = "Geographic")]
    Geographic,
    /// A uniform shuffle (Fisher–Yates) of the candidates sorted by
    /// `NodeId`, driven by the `seed` passed to [`Placer::rank`]. The same
    /// seed and the same candidates give the same order.
    #[serde(alias = "Random")]
    Random,
    /// Bin packing: tightest fit first. The score is the sum, over the
    /// dimensions the request asks for (cpu, memory, disk, GPU memory, each
    /// custom resource), of `(free - taken) / capacity` on that dimension,
    /// where `taken` for GPUs is the memory of the GPUs that
    /// [`fit`](crate::core::fit::fit) would assign. Ascending score, then
    /// `NodeId`; candidates that do not fit come last, by `NodeId`.
    #[serde(alias = "best_fit", alias = "BestFit")]
    BestFit,
}

impl Strategy {
    /// Every strategy, in declaration order.
    pub const ALL: &'static [Strategy] = &[
        Strategy::RoundRobin,
        Strategy::LeastLoaded,
        Strategy::Weighted,
        Strategy::Geographic,
        Strategy::Random,
        Strategy::BestFit,
    ];

    /// The kebab-case name used in config, on the wire and in the API.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastLoaded => "least-loaded",
            Strategy::Weighted => "weighted",
            Strategy::Geographic => "geographic",
            Strategy::Random => "random",
            Strategy::BestFit => "best-fit",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that is not one of [`Strategy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {given:?}; valid: round-robin, least-loaded, weighted, geographic, random, best-fit")]
pub struct UnknownStrategy {
    /// What was given.
    pub given: String,
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    /// Accepts kebab-case (`least-loaded`), snake_case (`least_loaded`) and,
    /// ignoring case, seed 004's names (`LeastLoaded`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |t: &str| -> String {
            t.chars()
                .filter(|c| *c != '-' && *c != '_')
                .flat_map(char::to_lowercase)
                .collect()
        };
        let want = norm(s.trim());
        Strategy::ALL
            .iter()
            .copied()
            .find(|st| norm(st.name()) == want)
            .ok_or_else(|| UnknownStrategy {
                given: s.to_owned(),
            })
    }
}

/// The requester's placement settings (seed 004's `LoadBalancingStrategy
/// { strategy_type, weights }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StrategyConfig {
    /// The strategy (`strategy_type` is accepted as an alias).
    #[serde(alias = "strategy_type")]
    pub strategy: Strategy,
    /// Weights for [`Strategy::Weighted`], keyed by node id or node name.
    /// These override the weights nodes announce; 0 excludes a node.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
}

/// A node that looks able to serve a request, as the requester sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node_id: NodeId,
    pub name: String,
    /// Whether this is the requester's own node.
    pub is_local: bool,
    /// What the node lends in total.
    pub capacity: Capacity,
    /// What it announced as free.
    pub free: Capacity,
    pub location: Location,
    /// Smoothed measured round-trip time, if any.
    pub rtt_ms: Option<f64>,
    /// The node's announced weight (0 = not set).
    pub weight: u32,
    /// Host CPU utilization, percent (informational).
    pub cpu_usage_pct: f32,
    /// Leases the node has granted.
    pub active_leases: u32,
}

/// A candidate's utilization in `[0, 1]`: the highest `used / capacity`
/// over cpu cores, memory, GPU memory (all GPUs together) and disk, where
/// `used = capacity - free` (never below 0). Dimensions with zero capacity
/// are ignored; with none left the load is 0.
pub fn load(c: &Candidate) -> f64 {
    let dims = [
        (c.capacity.cpu_cores as u64, c.free.cpu_cores as u64),
        (c.capacity.memory_mb, c.free.memory_mb),
        (c.capacity.gpu_memory_mb(), c.free.gpu_memory_mb()),
        (c.capacity.disk_mb, c.free.disk_mb),
    ];
    dims.iter()
        .filter(|(cap, _)| *cap > 0)
        .map(|(cap, free)| cap.saturating_sub(*free) as f64 / *cap as f64)
        .fold(0.0, f64::max)
}

/// The weight [`Strategy::Weighted`] uses for `c`: `cfg.weights[node_id]`,
/// else `cfg.weights[name]`, else the announced weight if non-zero, else 1.
/// 0 (only possible from the config) means "never pick".
pub fn effective_weight(c: &Candidate, cfg: &StrategyConfig) -> u32 {
    cfg.weights
        .get(&c.node_id.0)
        .or_else(|| cfg.weights.get(&c.name))
        .copied()
        .unwrap_or(if c.weight > 0 { c.weight } else { 1 })
}

/// The great-circle distance between two `(lat, lon)` points in degrees, km.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let dlat = lat2 - lat1;
    let dlon = lon2 - lon1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Ranks candidates. Holds the state that makes round-robin and weighted
/// round-robin take turns across requests.
#[derive(Clone, Debug, Default)]
pub struct Placer {
    /// The node ranked first by the last round-robin call.
    rr_last: Option<NodeId>,
    /// The (node, weight) set the smooth weighted round-robin state is for.
    swrr_weights: BTreeMap<NodeId, u32>,
    /// Current weights of smooth weighted round-robin.
    swrr_current: BTreeMap<NodeId, i64>,
}

impl Placer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every candidate, in the order to ask them (first = best), according
    /// to `cfg.strategy` (see each [`Strategy`] variant). Weighted drops
    /// weight-0 candidates; no other strategy drops any. Candidates are
    /// expected to have distinct node ids, as the view produces them.
    pub fn rank(
        &mut self,
        candidates: &[Candidate],
        cfg: &StrategyConfig,
        req: &ResourceRequirements,
        origin: &Location,
        seed: u64,
    ) -> Vec<NodeId> {
        let mut sorted: Vec<&Candidate> = candidates.iter().collect();
        sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        match cfg.strategy {
            Strategy::RoundRobin => self.round_robin(&sorted),
            Strategy::LeastLoaded => {
                let mut keyed: Vec<(f64, &Candidate)> =
                    sorted.into_iter().map(|c| (load(c), c)).collect();
                keyed.sort_by(|(la, a), (lb, b)| {
                    la.total_cmp(lb)
                        .then(a.active_leases.cmp(&b.active_leases))
                        .then_with(|| a.node_id.cmp(&b.node_id))
                });
                ids(keyed.into_iter().map(|(_, c)| c))
            }
            Strategy::Weighted => self.weighted(&sorted, cfg),
            Strategy::Geographic => {
                let mut keyed: Vec<(GeoKey, &Candidate)> = sorted
                    .into_iter()
                    .map(|c| (geo_key(c, origin), c))
                    .collect();
                keyed
                    .sort_by(|(ka, a), (kb, b)| ka.cmp(kb).then_with(|| a.node_id.cmp(&b.node_id)));
                ids(keyed.into_iter().map(|(_, c)| c))
            }
            Strategy::Random => {
                let mut rng = SplitMix64(seed);
                for i in (1..sorted.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    sorted.swap(i, j);
                }
                ids(sorted)
            }
            Strategy::BestFit => {
                let mut keyed: Vec<(f64, &Candidate)> = sorted
                    .into_iter()
                    .map(|c| (fit_score(c, req).unwrap_or(f64::INFINITY), c))
                    .collect();
                keyed.sort_by(|(sa, a), (sb, b)| {
                    sa.total_cmp(sb).then_with(|| a.node_id.cmp(&b.node_id))
                });
                ids(keyed.into_iter().map(|(_, c)| c))
            }
        }
    }

    fn round_robin(&mut self, sorted: &[&Candidate]) -> Vec<NodeId> {
        if sorted.is_empty() {
            return Vec::new();
        }
        let start = match &self.rr_last {
            Some(last) => sorted.iter().position(|c| c.node_id > *last).unwrap_or(0),
            None => 0,
        };
        let out: Vec<NodeId> = sorted[start..]
            .iter()
            .chain(&sorted[..start])
            .map(|c| c.node_id.clone())
            .collect();
        self.rr_last = out.first().cloned();
        out
    }

    fn weighted(&mut self, sorted: &[&Candidate], cfg: &StrategyConfig) -> Vec<NodeId> {
        let weights: BTreeMap<NodeId, u32> = sorted
            .iter()
            .map(|c| (c.node_id.clone(), effective_weight(c, cfg)))
            .filter(|(_, w)| *w > 0)
            .collect();
        if weights.is_empty() {
            return Vec::new();
        }
        if weights != self.swrr_weights {
            self.swrr_current = weights.keys().map(|id| (id.clone(), 0)).collect();
            self.swrr_weights = weights.clone();
        }
        let total: i64 = weights.values().map(|w| i64::from(*w)).sum();
        let mut best: Option<(&NodeId, i64)> = None;
        for (id, w) in &weights {
            let cur = self.swrr_current.entry(id.clone()).or_insert(0);
            *cur += i64::from(*w);
            // Ascending NodeId iteration + strict `>` keeps the smallest id on ties.
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((id, *cur));
            }
        }
        let first = best
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| unreachable!());
        if let Some(cur) = self.swrr_current.get_mut(&first) {
            *cur -= total;
        }
        let mut rest: Vec<(&NodeId, u32)> = weights
            .iter()
            .filter(|(id, _)| **id != first)
            .map(|(id, w)| (id, *w))
            .collect();
        rest.sort_by(|(ia, wa), (ib, wb)| wb.cmp(wa).then_with(|| ia.cmp(ib)));
        std::iter::once(first)
            .chain(rest.into_iter().map(|(id, _)| id.clone()))
            .collect()
    }
}

fn ids<'a>(it: impl IntoIterator<Item = &'a Candidate>) -> Vec<NodeId> {
    it.into_iter().map(|c| c.node_id.clone()).collect()
}

/// `(distance_km, zone_rank, rtt_ms)` of [`Strategy::Geographic`]; the
/// caller appends the node id. Compared with `f64::total_cmp`, and every
/// float in it is finite or `+inf` (never NaN).
#[derive(Clone, Copy, Debug, PartialEq)]
struct GeoKey(f64, u8, f64);

impl Eq for GeoKey {}

impl PartialOrd for GeoKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GeoKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .total_cmp(&other.0)
            .then(self.1.cmp(&other.1))
            .then(self.2.total_cmp(&other.2))
    }
}

fn valid_coords(loc: &Location) -> Option<(f64, f64)> {
    let (lat, lon) = loc.coords()?;
    (lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0)
        .then_some((lat, lon))
}

fn geo_key(c: &Candidate, origin: &Location) -> GeoKey {
    if c.is_local {
        return GeoKey(0.0, 0, 0.0);
    }
    let distance = match (valid_coords(origin), valid_coords(&c.location)) {
        (Some(a), Some(b)) => haversine_km(a, b),
        _ => f64::INFINITY,
    };
    let same_zone = matches!((&origin.zone, &c.location.zone), (Some(a), Some(b)) if a == b);
    let rtt = c
        .rtt_ms
        .filter(|r| r.is_finite() && *r >= 0.0)
        .unwrap_or(f64::INFINITY);
    GeoKey(
        if distance.is_nan() {
            f64::INFINITY
        } else {
            distance
        },
        if same_zone { 0 } else { 1 },
        rtt,
    )
}

/// Best-fit score of `c` for `req` (lower = tighter), or `None` if the
/// request does not fit in what `c` announced as free.
fn fit_score(c: &Candidate, req: &ResourceRequirements) -> Option<f64> {
    let gpus = fit(&c.free, &c.capacity, req).ok()?;
    let frac = |free: u64, taken: u64, cap: u64| -> f64 {
        if cap == 0 {
            0.0
        } else {
            free.saturating_sub(taken) as f64 / cap as f64
        }
    };
    let mut score = 0.0;
    if req.cpu_cores > 0 {
        score += frac(
            c.free.cpu_cores.into(),
            req.cpu_cores.into(),
            c.capacity.cpu_cores.into(),
        );
    }
    if req.memory_mb > 0 {
        score += frac(c.free.memory_mb, req.memory_mb, c.capacity.memory_mb);
    }
    if req.disk_mb > 0 {
        score += frac(c.free.disk_mb, req.disk_mb, c.capacity.disk_mb);
    }
    if req.gpus_wanted() > 0 {
        let taken: u64 = gpus.iter().map(|g| g.memory_mb).sum();
        score += frac(c.free.gpu_memory_mb(), taken, c.capacity.gpu_memory_mb());
    }
    for (name, want) in req.custom.iter().filter(|(_, w)| **w > 0) {
        let free = c.free.custom.get(name).copied().unwrap_or(0);
        let cap = c.capacity.custom.get(name).copied().unwrap_or(0);
        score += frac(free, *want, cap);
    }
    Some(score)
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, and fixed here so a
/// recorded seed replays the same shuffle on any build.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection, so without modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Late binding over a ranked list: hands out the nodes to ask, one at a
/// time, at most `max_tries` of them, and collects why each refused.
#[derive(Clone, Debug)]
pub struct Attempt {
    ranked: Vec<NodeId>,
    next: usize,
    max_tries: usize,
    refusals: Vec<(NodeId, Denial)>,
}

impl Attempt {
    /// Walk `ranked` in order, asking at most `max_tries` nodes (0 asks
    /// none). A node listed twice is asked once.
    pub fn new(ranked: Vec<NodeId>, max_tries: usize) -> Self {
        let mut seen = std::collections::BTreeSet::new();
        let ranked = ranked
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        Attempt {
            ranked,
            next: 0,
            max_tries,
            refusals: Vec::new(),
        }
    }

    /// The next node to ask, or `None` once the list is exhausted or
    /// `max_tries` nodes have been handed out.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<NodeId> {
        if self.next >= self.max_tries {
            return None;
        }
        let id = self.ranked.get(self.next)?.clone();
        self.next += 1;
        Some(id)
    }

    /// Record that `node` refused, and why.
    pub fn refused(&mut self, node: NodeId, denial: Denial) {
        self.refusals.push((node, denial));
    }

    /// How many nodes have been handed out so far.
    pub fn tried(&self) -> usize {
        self.next
    }

    /// The refusals so far, in the order they were recorded.
    pub fn refusals(&self) -> &[(NodeId, Denial)] {
        &self.refusals
    }

    pub fn into_refusals(self) -> Vec<(NodeId, Denial)> {
        self.refusals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DenyReason, GpuSlot};
    use proptest::prelude::{any, prop_assert_eq, proptest, ProptestConfig};
    use proptest::strategy::Strategy as PStrategy;

    fn cand(id: &str) -> Candidate {
        Candidate {
            node_id: NodeId::from(id),
            name: format!("name-{id}"),
            is_local: false,
            capacity: Capacity {
                cpu_cores: 8,
                memory_mb: 8_000,
                disk_mb: 100_000,
                ..Default::default()
            },
            free: Capacity {
                cpu_cores: 8,
                memory_mb: 8_000,
                disk_mb: 100_000,
                ..Default::default()
            },
            location: Location::default(),
            rtt_ms: None,
            weight: 0,
            cpu_usage_pct: 0.0,
            active_leases: 0,
        }
    }

    fn cfg(strategy: Strategy) -> StrategyConfig {
        StrategyConfig {
            strategy,
            weights: BTreeMap::new(),
        }
    }

    fn rank(p: &mut Placer, cs: &[Candidate], c: &StrategyConfig) -> Vec<NodeId> {
        p.rank(
            cs,
            c,
            &ResourceRequirements::default(),
            &Location::default(),
            0,
        )
    }

    fn names(v: &[NodeId]) -> Vec<&str> {
        v.iter().map(|n| n.0.as_str()).collect()
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.to_string().parse::<Strategy>().unwrap(), *s);
            let snake = s.to_string().replace('-', "_");
            assert_eq!(snake.parse::<Strategy>().unwrap(), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), *s);
            let json_snake = format!("\"{snake}\"");
            assert_eq!(serde_json::from_str::<Strategy>(&json_snake).unwrap(), *s);
        }
        assert_eq!(
            "LeastLoaded".parse::<Strategy>().unwrap(),
            Strategy::LeastLoaded
        );
        let err = "fastest".parse::<Strategy>().unwrap_err().to_string();
        for s in Strategy::ALL {
            assert!(err.contains(s.name()), "{err}");
        }
        assert_eq!(Strategy::default(), Strategy::LeastLoaded);
    }

    #[test]
    fn strategy_config_accepts_seed_004_shape() {
        let c: StrategyConfig =
            serde_json::from_str(r#"{"strategy_type":"weighted","weights":{"a":3}}"#).unwrap();
        assert_eq!(c.strategy, Strategy::Weighted);
        assert_eq!(c.weights.get("a"), Some(&3));
        let c: StrategyConfig = serde_json::from_str(r#"{"strategy":"best-fit"}"#).unwrap();
        assert_eq!(c.strategy, Strategy::BestFit);
        assert!(c.weights.is_empty());
        let c: StrategyConfig = serde_json::from_str(r#"{"strategy_type":"RoundRobin"}"#).unwrap();
        assert_eq!(c.strategy, Strategy::RoundRobin);
    }

    #[test]
    fn load_is_the_busiest_dimension() {
        let mut c = cand("a");
        assert_eq!(load(&c), 0.0);
        c.free.cpu_cores = 6; // 25 %
        c.free.memory_mb = 2_000; // 75 %
        assert!((load(&c) - 0.75).abs() < 1e-12);
        c.capacity.gpus = vec![GpuSlot {
            index: 0,
            memory_mb: 10_000,
        }];
        c.free.gpus = vec![GpuSlot {
            index: 0,
            memory_mb: 1_000,
        }]; // 90 %
        assert!((load(&c) - 0.9).abs() < 1e-12);
        let empty = Candidate {
            capacity: Capacity::default(),
            free: Capacity::default(),
            ..cand("z")
        };
        assert_eq!(load(&empty), 0.0);
        // free above capacity never gives a negative load
        c.free.disk_mb = 200_000;
        assert!(load(&c) >= 0.0 && load(&c) <= 1.0);
    }

    #[test]
    fn round_robin_rotates_after_previous_first() {
        let cs = vec![cand("c"), cand("a"), cand("b")];
        let mut p = Placer::new();
        let c = cfg(Strategy::RoundRobin);
        assert_eq!(names(&rank(&mut p, &cs, &c)), ["a", "b", "c"]);
        assert_eq!(names(&rank(&mut p, &cs, &c)), ["b", "c", "a"]);
        assert_eq!(names(&rank(&mut p, &cs, &c)), ["c", "a", "b"]);
        assert_eq!(names(&rank(&mut p, &cs, &c)), ["a", "b", "c"]);
        // The previous first ("a") vanished: start after it anyway.
        let cs2 = vec![cand("c"), cand("b")];
        assert_eq!(names(&rank(&mut p, &cs2, &c)), ["b", "c"]);
    }

    #[test]
    fn round_robin_is_fair() {
        let cs: Vec<Candidate> = ["n1", "n2", "n3", "n4", "n5"].map(cand).to_vec();
        let mut p = Placer::new();
        let c = cfg(Strategy::RoundRobin);
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for _ in 0..5 * 20 {
            *count.entry(rank(&mut p, &cs, &c)[0].clone()).or_default() += 1;
        }
        assert_eq!(count.len(), 5);
        assert!(count.values().all(|n| *n == 20), "{count:?}");
    }

    #[test]
    fn least_loaded_orders_by_load_then_leases_then_id() {
        let mut busy = cand("a");
        busy.free.memory_mb = 1_000;
        let mut idle_many = cand("b");
        idle_many.active_leases = 3;
        let idle_few_z = cand("z");
        let idle_few_y = cand("y");
        let cs = vec![busy, idle_many, idle_few_z, idle_few_y];
        let got = rank(&mut Placer::new(), &cs, &cfg(Strategy::LeastLoaded));
        assert_eq!(names(&got), ["y", "z", "b", "a"]);
    }

    #[test]
    fn weighted_uses_config_then_name_then_announced_then_one() {
        let mut a = cand("a");
        a.weight = 7;
        let mut b = cand("b");
        b.weight = 7;
        let c = cand("c");
        let d = cand("d");
        let mut conf = cfg(Strategy::Weighted);
        conf.weights.insert("a".into(), 2);
        conf.weights.insert("name-a".into(), 9); // id wins over name
        conf.weights.insert("name-c".into(), 4);
        conf.weights.insert("d".into(), 0);
        assert_eq!(effective_weight(&a, &conf), 2);
        assert_eq!(effective_weight(&b, &conf), 7);
        assert_eq!(effective_weight(&c, &conf), 4);
        assert_eq!(effective_weight(&d, &conf), 0);
        assert_eq!(effective_weight(&cand("e"), &conf), 1);
        let got = rank(&mut Placer::new(), &[a, b, c, d], &conf);
        // First = SWRR pick (b has the highest weight), rest by weight desc.
        assert_eq!(names(&got), ["b", "c", "a"]);
    }

    #[test]
    fn weighted_is_smooth_and_exact() {
        let cs = vec![cand("a"), cand("b"), cand("c")];
        let mut conf = cfg(Strategy::Weighted);
        conf.weights.insert("a".into(), 5);
        conf.weights.insert("b".into(), 1);
        conf.weights.insert("c".into(), 1);
        let mut p = Placer::new();
        let firsts: Vec<String> = (0..7)
            .map(|_| rank(&mut p, &cs, &conf)[0].0.clone())
            .collect();
        // nginx's documented sequence for {a:5, b:1, c:1}.
        assert_eq!(firsts, ["a", "a", "b", "a", "c", "a", "a"]);

        let mut conf = cfg(Strategy::Weighted);
        let ws = [("n1", 3u32), ("n2", 1), ("n3", 4), ("n4", 2)];
        for (n, w) in ws {
            conf.weights.insert(n.into(), w);
        }
        let cs: Vec<Candidate> = ws.iter().map(|(n, _)| cand(n)).collect();
        let mut p = Placer::new();
        let total: u32 = ws.iter().map(|(_, w)| w).sum();
        for _round in 0..3 {
            let mut count: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..total {
                *count
                    .entry(rank(&mut p, &cs, &conf)[0].0.clone())
                    .or_default() += 1;
            }
            for (n, w) in ws {
                assert_eq!(count.get(n).copied().unwrap_or(0), w, "{count:?}");
            }
        }
    }

    #[test]
    fn weighted_ties_break_by_id() {
        let cs = vec![cand("b"), cand("a")];
        let mut p = Placer::new();
        let c = cfg(Strategy::Weighted);
        assert_eq!(names(&rank(&mut p, &cs, &c)), ["a", "b"]);
        assert_eq!(names(&rank(&mut p, &cs, &c)), ["b", "a"]);
    }

    #[test]
    fn geographic_by_coordinates() {
        let origin = Location {
            zone: None,
            latitude: Some(52.52),
            longitude: Some(13.405), // Berlin
        };
        let at = |id: &str, lat: f64, lon: f64| Candidate {
            location: Location {
                zone: None,
                latitude: Some(lat),
                longitude: Some(lon),
            },
            ..cand(id)
        };
        let cs = vec![
            at("paris", 48.8566, 2.3522),
            at("munich", 48.1351, 11.582),
            at("nyc", 40.7128, -74.006),
            cand("nowhere"),
        ];
        let got = Placer::new().rank(
            &cs,
            &cfg(Strategy::Geographic),
            &ResourceRequirements::default(),
            &origin,
            0,
        );
        assert_eq!(names(&got), ["munich", "paris", "nyc", "nowhere"]);
        let d = haversine_km((52.52, 13.405), (48.8566, 2.3522));
        assert!((d - 878.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn geographic_by_zone_then_rtt_with_local_first() {
        let origin = Location {
            zone: Some("office".into()),
            ..Default::default()
        };
        let zoned = |id: &str, zone: Option<&str>, rtt: Option<f64>| Candidate {
            location: Location {
                zone: zone.map(str::to_owned),
                ..Default::default()
            },
            rtt_ms: rtt,
            ..cand(id)
        };
        let mut local = zoned("m-local", Some("lab"), None);
        local.is_local = true;
        let cs = vec![
            zoned("a", Some("lab"), Some(1.0)),
            zoned("b", Some("office"), None),
            zoned("c", Some("office"), Some(9.0)),
            zoned("d", None, Some(2.0)),
            zoned("e", None, None),
            local,
        ];
        let got = Placer::new().rank(
            &cs,
            &cfg(Strategy::Geographic),
            &ResourceRequirements::default(),
            &origin,
            0,
        );
        assert_eq!(names(&got), ["m-local", "c", "b", "a", "d", "e"]);
    }

    #[test]
    fn random_is_reproducible_and_seed_dependent() {
        let cs: Vec<Candidate> = (0..12).map(|i| cand(&format!("n{i:02}"))).collect();
        let c = cfg(Strategy::Random);
        let req = ResourceRequirements::default();
        let o = Location::default();
        let a = Placer::new().rank(&cs, &c, &req, &o, 42);
        let mut rev = cs.clone();
        rev.reverse();
        let b = Placer::new().rank(&rev, &c, &req, &o, 42);
        assert_eq!(a, b);
        let orders: std::collections::BTreeSet<Vec<NodeId>> = (0..20u64)
            .map(|s| Placer::new().rank(&cs, &c, &req, &o, s))
            .collect();
        assert!(orders.len() > 15, "{}", orders.len());
        // Roughly uniform first pick over many seeds.
        let mut first: BTreeMap<NodeId, u32> = BTreeMap::new();
        for s in 0..12_000u64 {
            *first
                .entry(Placer::new().rank(&cs, &c, &req, &o, s)[0].clone())
                .or_default() += 1;
        }
        assert_eq!(first.len(), 12);
        assert!(first.values().all(|n| (800..1200).contains(n)), "{first:?}");
    }

    #[test]
    fn best_fit_packs_tightest() {
        let req = ResourceRequirements {
            cpu_cores: 2,
            memory_mb: 2_000,
            ..Default::default()
        };
        let mut roomy = cand("a");
        roomy.free.cpu_cores = 8;
        let mut tight = cand("b");
        tight.free.cpu_cores = 2;
        tight.free.memory_mb = 2_000;
        let mut tight_twin = cand("c");
        tight_twin.free = tight.free.clone();
        let mut too_small = cand("0");
        too_small.free.cpu_cores = 1;
        let mut mid = cand("d");
        mid.free.cpu_cores = 4;
        mid.free.memory_mb = 3_000;
        let cs = vec![roomy, tight_twin, too_small, mid, tight];
        let got = Placer::new().rank(&cs, &cfg(Strategy::BestFit), &req, &Location::default(), 0);
        assert_eq!(names(&got), ["b", "c", "d", "a", "0"]);
    }

    #[test]
    fn best_fit_counts_gpu_memory() {
        let req = ResourceRequirements {
            gpu_count: 1,
            gpu_memory_mb: 6_000,
            ..Default::default()
        };
        let gpu = |id: &str, mems: &[u64]| {
            let mut c = cand(id);
            c.capacity.gpus = mems
                .iter()
                .enumerate()
                .map(|(i, m)| GpuSlot {
                    index: i as u32,
                    memory_mb: *m,
                })
                .collect();
            c.free.gpus = c.capacity.gpus.clone();
            c
        };
        let cs = vec![
            gpu("big", &[80_000]),
            gpu("small", &[8_000]),
            gpu("none", &[]),
        ];
        let got = Placer::new().rank(&cs, &cfg(Strategy::BestFit), &req, &Location::default(), 0);
        assert_eq!(names(&got), ["small", "big", "none"]);
    }

    #[test]
    fn attempt_walks_in_order_and_stops_at_max_tries() {
        let ids: Vec<NodeId> = ["a", "b", "c", "d"].map(NodeId::from).to_vec();
        let mut at = Attempt::new(ids.clone(), 3);
        let d = |m: &str| Denial::new(DenyReason::InsufficientCapacity, m);
        assert_eq!(at.next(), Some(ids[0].clone()));
        at.refused(ids[0].clone(), d("full"));
        assert_eq!(at.next(), Some(ids[1].clone()));
        at.refused(ids[1].clone(), d("stale view"));
        assert_eq!(at.next(), Some(ids[2].clone()));
        assert_eq!(at.next(), None);
        assert_eq!(at.next(), None);
        assert_eq!(at.tried(), 3);
        assert_eq!(at.refusals().len(), 2);
        assert_eq!(at.refusals()[1].1.message, "stale view");
        let all = at.into_refusals();
        assert_eq!(all[0].0, ids[0]);

        let mut short = Attempt::new(vec![ids[0].clone(), ids[0].clone()], 10);
        assert_eq!(short.next(), Some(ids[0].clone()));
        assert_eq!(short.next(), None);
        assert_eq!(Attempt::new(ids, 0).next(), None);
    }

    fn arb_candidate() -> impl PStrategy<Value = Candidate> {
        (
            0u32..16,
            0u32..16,
            0u64..10_000,
            0u64..10_000,
            proptest::option::of(0.0f64..200.0),
            0u32..4,
            0u32..5,
            proptest::option::of((-90.0f64..90.0, -180.0f64..180.0)),
            proptest::option::of(0u8..3),
            any::<bool>(),
        )
            .prop_map(
                |(
                    cap_cpu,
                    free_cpu,
                    cap_mem,
                    free_mem,
                    rtt,
                    weight,
                    leases,
                    coords,
                    zone,
                    local,
                )| {
                    Candidate {
                        node_id: NodeId::from("x"),
                        name: String::new(),
                        is_local: local,
                        capacity: Capacity {
                            cpu_cores: cap_cpu,
                            memory_mb: cap_mem,
                            gpus: vec![GpuSlot {
                                index: 0,
                                memory_mb: 8_000,
                            }],
                            ..Default::default()
                        },
                        free: Capacity {
                            cpu_cores: free_cpu,
                            memory_mb: free_mem,
                            gpus: vec![GpuSlot {
                                index: 0,
                                memory_mb: free_mem,
                            }],
                            ..Default::default()
                        },
                        location: Location {
                            zone: zone.map(|z| format!("z{z}")),
                            latitude: coords.map(|c| c.0),
                            longitude: coords.map(|c| c.1),
                        },
                        rtt_ms: rtt,
                        weight,
                        cpu_usage_pct: 0.0,
                        active_leases: leases,
                    }
                },
            )
    }

    fn arb_candidates() -> impl PStrategy<Value = Vec<Candidate>> {
        proptest::collection::vec(arb_candidate(), 0..12).prop_map(|mut v| {
            for (i, c) in v.iter_mut().enumerate() {
                // Distinct ids, deliberately not in input order.
                c.node_id = NodeId(format!("p{:02}", (i * 7) % 97));
                c.name = format!("host{i}");
            }
            v
        })
    }

    fn arb_setup(
    ) -> impl PStrategy<Value = (Vec<Candidate>, StrategyConfig, ResourceRequirements, u64)> {
        (
            arb_candidates(),
            proptest::sample::select(Strategy::ALL.to_vec()),
            proptest::collection::btree_map("(p0[0-9]|host[0-9])", 0u32..4, 0..4),
            0u32..4,
            0u64..6_000,
            0u32..2,
            any::<u64>(),
        )
            .prop_map(|(cs, strategy, weights, cpu, mem, gpus, seed)| {
                let req = ResourceRequirements {
                    cpu_cores: cpu,
                    memory_mb: mem,
                    gpu_count: gpus,
                    gpu_memory_mb: mem / 2,
                    ..Default::default()
                };
                (cs, StrategyConfig { strategy, weights }, req, seed)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn rank_is_a_permutation((cs, conf, req, seed) in arb_setup(), calls in 1usize..4) {
            let origin = Location { zone: Some("z1".into()), latitude: Some(10.0), longitude: Some(20.0) };
            let mut p = Placer::new();
            for _ in 0..calls {
                let mut got = p.rank(&cs, &conf, &req, &origin, seed);
                let mut want: Vec<NodeId> = cs
                    .iter()
                    .filter(|c| conf.strategy != Strategy::Weighted || effective_weight(c, &conf) > 0)
                    .map(|c| c.node_id.clone())
                    .collect();
                got.sort();
                want.sort();
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn rank_is_deterministic((cs, conf, req, seed) in arb_setup(), calls in 1usize..4) {
            let origin = Location { zone: Some("z1".into()), latitude: Some(10.0), longitude: Some(20.0) };
            let mut p1 = Placer::new();
            let mut p2 = Placer::new();
            let mut shuffled = cs.clone();
            shuffled.reverse();
            for _ in 0..calls {
                let a = p1.rank(&cs, &conf, &req, &origin, seed);
                let b = p2.rank(&shuffled, &conf, &req, &origin, seed);
                prop_assert_eq!(a, b);
            }
        }
    }
}
