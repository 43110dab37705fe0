//! Preemption: which leases to end so that a higher-priority request fits.
//!
//! [`choose_victims`] only chooses; it changes nothing. The caller (the
//! owner's scheduler) releases the victims on its [`Ledger`], tells their
//! holders `preempted`, and then allocates the request. Sans-IO and
//! deterministic like the rest of [`crate::core`]: the same ledger and
//! request always give the same victims, in the same order. Nothing in it
//! panics; arithmetic saturates.
//!
//! # What "fits" means here
//!
//! A set of victims *makes room* when, with those leases released, the
//! request fits ([`fit`]) in the ledger's free capacity minus `reserved`
//! (as [`Capacity::minus`] computes it), *and* the ledger's lease count
//! would be below its `max_leases`. The free capacity after releasing them
//! is computed as [`Ledger::free`] would report it: capacity minus the
//! remaining leases' use, saturating, per dimension, per GPU (the victims'
//! GPU memory is added back to the GPUs with the same index) and per
//! custom key, so a capacity that shrank under its leases is accounted
//! exactly. Whether the request itself is valid (empty, a lease id in use)
//! is the ledger's business, not this module's.
//!
//! # Which victims
//!
//! Only leases with a priority *strictly lower* than the request's are
//! candidates; equal or higher priorities are never taken. Among sets that
//! make room the preferred one has, in order:
//!
//! 1. the fewest victims;
//! 2. the lowest priorities: the victims' priorities sorted highest first,
//!    compared lexicographically (so two `normal` leases are preferred to a
//!    `low` and a `high`: the most important lease preempted is as
//!    unimportant as possible);
//! 3. the least resources taken: the sum over victims of their
//!    [`weight`], each dimension's amount as a share of the node's
//!    capacity;
//! 4. the lease ids, sorted, compared lexicographically.
//!
//! Finding the fewest victims exactly is NP-hard in general (it contains
//! set cover), so the search is exact only for small answers:
//!
//! - If the request already fits, the answer is `Some` of no victims.
//! - **One victim**: every candidate is tried; if any single one makes
//!   room, the answer is exactly one victim, the best one by the order
//!   above.
//! - **Two victims**: if there are at most [`PAIR_SEARCH_LIMIT`]
//!   candidates, every pair is tried; if any pair makes room, the answer is
//!   exactly two victims, the best pair by the order above.
//! - **Otherwise, greedy**: candidates sorted by priority ascending, then
//!   weight descending, then lease id, are added until the set makes room;
//!   then, going back from the last added, each victim whose removal still
//!   leaves room is dropped. The result makes room and is *minimal*: no
//!   single victim can be spared. It is not necessarily the fewest.
//! - `None` exactly when releasing every candidate together would not make
//!   room.
//!
//! Cost: O(n) fit checks for singles, O(min(n, 64)²) for pairs and O(n) for
//! the greedy step, each fit check O(dimensions + GPUs² + custom keys).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::core::fit::fit;
use crate::core::ledger::Ledger;
use crate::model::{Capacity, GpuSlot, Lease, LeaseId, Priority, ResourceRequirements};

/// With at most this many candidates, every pair of victims is tried.
pub const PAIR_SEARCH_LIMIT: usize = 64;

/// Parts per million: a whole dimension of the node in [`weight`].
const PPM: u128 = 1_000_000;

/// Leases to preempt so that `req` (at priority `prio`) fits on `ledger`
/// with `reserved` kept out of reach (pass `Capacity::default()` for none),
/// or `None` if even all strictly-lower-priority leases together do not
/// make room. `Some(vec![])` if it fits already. See the module
/// documentation for how the victims are chosen and what is guaranteed.
/// The victims are returned sorted by priority (lowest first), then lease
/// id.
pub fn choose_victims(
    ledger: &Ledger,
    reserved: &Capacity,
    req: &ResourceRequirements,
    prio: Priority,
) -> Option<Vec<LeaseId>> {
    choose_victims_among(ledger, reserved, req, prio, |_| true)
}

/// As [`choose_victims`], considering only the leases for which
/// `eligible` holds (the others are never preempted: the leases that carry
/// out reservations, a promise made before the request came).
pub fn choose_victims_among(
    ledger: &Ledger,
    reserved: &Capacity,
    req: &ResourceRequirements,
    prio: Priority,
    eligible: impl Fn(&Lease) -> bool,
) -> Option<Vec<LeaseId>> {
    let room = Room::new(ledger, reserved, req);
    if room.fits(&[]) {
        return Some(Vec::new());
    }
    let total = ledger.capacity();
    let mut cands: Vec<Candidate> = ledger
        .leases()
        .filter(|l| l.priority < prio && eligible(l))
        .map(|l| Candidate {
            lease: l,
            weight: weight(l, total),
        })
        .collect();
    // By id, so that every search below sees the candidates in one order.
    cands.sort_by(|a, b| a.lease.lease_id.cmp(&b.lease.lease_id));

    // One victim.
    let best = cands
        .iter()
        .filter(|c| room.fits(&[c.lease]))
        .min_by(|a, b| a.key().cmp(&b.key()));
    if let Some(c) = best {
        return Some(vec![c.lease.lease_id.clone()]);
    }

    // Two victims.
    if cands.len() <= PAIR_SEARCH_LIMIT {
        let mut best: Option<(SetKey, [usize; 2])> = None;
        for i in 0..cands.len() {
            for j in i.saturating_add(1)..cands.len() {
                if !room.fits(&[cands[i].lease, cands[j].lease]) {
                    continue;
                }
                let key = set_key(&[&cands[i], &cands[j]]);
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((key, [i, j]));
                }
            }
        }
        if let Some((_, pair)) = best {
            return Some(result(pair.iter().map(|i| &cands[*i])));
        }
    }

    // Greedy, then drop whoever is not needed.
    cands.sort_by(|a, b| {
        (a.lease.priority, Reverse(a.weight), &a.lease.lease_id).cmp(&(
            b.lease.priority,
            Reverse(b.weight),
            &b.lease.lease_id,
        ))
    });
    let mut chosen: Vec<&Lease> = Vec::new();
    let mut enough = false;
    for c in &cands {
        chosen.push(c.lease);
        if room.fits(&chosen) {
            enough = true;
            break;
        }
    }
    if !enough {
        return None;
    }
    let mut i = chosen.len();
    while i > 0 {
        i -= 1;
        let mut without = chosen.clone();
        without.remove(i);
        if room.fits(&without) {
            chosen = without;
        }
    }
    let mut out: Vec<&Lease> = chosen;
    out.sort_by(|a, b| (a.priority, &a.lease_id).cmp(&(b.priority, &b.lease_id)));
    Some(out.into_iter().map(|l| l.lease_id.clone()).collect())
}

/// How much of the node a lease takes, in parts per million of each
/// dimension's capacity, summed over dimensions: cores, memory, disk, each
/// GPU's memory (against that GPU's capacity) and each custom key. An
/// amount in a dimension the node has none of counts as a whole dimension
/// (1 000 000). Used to prefer the victim set that takes the least.
pub fn weight(lease: &Lease, total: &Capacity) -> u128 {
    let mut w = share(u64::from(lease.cpu_cores), u64::from(total.cpu_cores));
    w = w.saturating_add(share(lease.memory_mb, total.memory_mb));
    w = w.saturating_add(share(lease.disk_mb, total.disk_mb));
    for g in &lease.gpus {
        let cap = total
            .gpus
            .iter()
            .find(|t| t.index == g.index)
            .map_or(0, |t| t.memory_mb);
        w = w.saturating_add(share(g.memory_mb, cap));
    }
    for (k, v) in &lease.custom {
        w = w.saturating_add(share(*v, total.custom.get(k).copied().unwrap_or(0)));
    }
    w
}

fn share(amount: u64, total: u64) -> u128 {
    if amount == 0 {
        0
    } else if total == 0 {
        PPM
    } else {
        u128::from(amount).saturating_mul(PPM) / u128::from(total)
    }
}

struct Candidate<'a> {
    lease: &'a Lease,
    weight: u128,
}

impl Candidate<'_> {
    fn key(&self) -> (Priority, u128, &LeaseId) {
        (self.lease.priority, self.weight, &self.lease.lease_id)
    }
}

/// Preference order of a victim set of a given size (smaller is better):
/// the priorities sorted highest first, then total weight, then the sorted
/// ids.
type SetKey = (Vec<Priority>, u128, Vec<LeaseId>);

fn set_key(set: &[&Candidate<'_>]) -> SetKey {
    let mut prios: Vec<Priority> = set.iter().map(|c| c.lease.priority).collect();
    prios.sort_by(|a, b| b.cmp(a));
    let weight = set
        .iter()
        .fold(0u128, |acc, c| acc.saturating_add(c.weight));
    let mut ids: Vec<LeaseId> = set.iter().map(|c| c.lease.lease_id.clone()).collect();
    ids.sort();
    (prios, weight, ids)
}

fn result<'a>(set: impl Iterator<Item = &'a Candidate<'a>>) -> Vec<LeaseId> {
    let mut leases: Vec<&Lease> = set.map(|c| c.lease).collect();
    leases.sort_by(|a, b| (a.priority, &a.lease_id).cmp(&(b.priority, &b.lease_id)));
    leases.into_iter().map(|l| l.lease_id.clone()).collect()
}

/// The ledger's state, for "would it fit with these leases released?".
struct Room<'a> {
    total: &'a Capacity,
    reserved: &'a Capacity,
    req: &'a ResourceRequirements,
    cpu_cores: u32,
    memory_mb: u64,
    disk_mb: u64,
    /// GPU index -> memory used on it.
    gpus: BTreeMap<u32, u64>,
    custom: BTreeMap<String, u64>,
    leases: usize,
    max_leases: usize,
}

impl<'a> Room<'a> {
    fn new(ledger: &'a Ledger, reserved: &'a Capacity, req: &'a ResourceRequirements) -> Self {
        let used = ledger.used();
        let mut gpus: BTreeMap<u32, u64> = BTreeMap::new();
        for g in &used.gpus {
            let e = gpus.entry(g.index).or_insert(0);
            *e = e.saturating_add(g.memory_mb);
        }
        Room {
            total: ledger.capacity(),
            reserved,
            req,
            cpu_cores: used.cpu_cores,
            memory_mb: used.memory_mb,
            disk_mb: used.disk_mb,
            gpus,
            custom: used.custom,
            leases: ledger.len(),
            max_leases: ledger.limits().max_leases,
        }
    }

    /// Does the request fit with `victims` released?
    fn fits(&self, victims: &[&Lease]) -> bool {
        if self.leases.saturating_sub(victims.len()) >= self.max_leases {
            return false;
        }
        let mut cpu = self.cpu_cores;
        let mut mem = self.memory_mb;
        let mut disk = self.disk_mb;
        let mut gpus = self.gpus.clone();
        let mut custom = self.custom.clone();
        for v in victims {
            cpu = cpu.saturating_sub(v.cpu_cores);
            mem = mem.saturating_sub(v.memory_mb);
            disk = disk.saturating_sub(v.disk_mb);
            for g in &v.gpus {
                if let Some(e) = gpus.get_mut(&g.index) {
                    *e = e.saturating_sub(g.memory_mb);
                }
            }
            for (k, amount) in &v.custom {
                if let Some(e) = custom.get_mut(k) {
                    *e = e.saturating_sub(*amount);
                }
            }
        }
        let t = self.total;
        let free = Capacity {
            cpu_cores: t.cpu_cores.saturating_sub(cpu),
            memory_mb: t.memory_mb.saturating_sub(mem),
            disk_mb: t.disk_mb.saturating_sub(disk),
            gpus: t
                .gpus
                .iter()
                .map(|g| GpuSlot {
                    index: g.index,
                    memory_mb: g
                        .memory_mb
                        .saturating_sub(gpus.get(&g.index).copied().unwrap_or(0)),
                })
                .collect(),
            custom: t
                .custom
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(custom.get(k).copied().unwrap_or(0)),
                    )
                })
                .collect(),
        };
        fit(&free.minus(self.reserved), t, self.req).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ledger::{AllocateInput, LeaseLimits};
    use crate::model::NodeId;

    const NOW: u64 = 1_700_000_000_000;

    fn cap() -> Capacity {
        Capacity {
            cpu_cores: 8,
            memory_mb: 16_384,
            disk_mb: 100_000,
            gpus: vec![
                GpuSlot {
                    index: 0,
                    memory_mb: 8_000,
                },
                GpuSlot {
                    index: 1,
                    memory_mb: 8_000,
                },
            ],
            custom: [("api_quota".to_string(), 10)].into_iter().collect(),
        }
    }

    fn input(id: &str, priority: Priority, req: ResourceRequirements) -> AllocateInput {
        AllocateInput {
            lease_id: LeaseId(id.to_string()),
            request_id: format!("req-{id}"),
            holder: NodeId::from("h"),
            req,
            task_type: "test".to_string(),
            priority,
            lease_ms: 60_000,
        }
    }

    fn cpu(n: u32) -> ResourceRequirements {
        ResourceRequirements {
            cpu_cores: n,
            ..Default::default()
        }
    }

    /// A ledger holding these leases, granted in order.
    fn ledger(leases: &[(&str, Priority, ResourceRequirements)]) -> Ledger {
        let mut l = Ledger::new(NodeId::from("owner"), cap(), LeaseLimits::default());
        for (id, p, req) in leases {
            l.allocate(input(id, *p, req.clone()), NOW).unwrap();
        }
        l
    }

    fn victims(v: Option<Vec<LeaseId>>) -> Option<Vec<String>> {
        v.map(|v| v.into_iter().map(|x| x.0).collect())
    }

    fn none() -> Capacity {
        Capacity::default()
    }

    #[test]
    fn nothing_to_preempt_when_it_fits() {
        let l = ledger(&[("a", Priority::Low, cpu(4))]);
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(4), Priority::High)),
            Some(vec![])
        );
    }

    #[test]
    fn one_victim_the_lowest_then_the_smallest() {
        use Priority::*;
        let l = ledger(&[
            ("n", Normal, cpu(3)),
            ("l-big", Low, cpu(3)),
            ("l-small", Low, cpu(2)),
        ]);
        // 0 free; 2 cores needed: any one lease would do.
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(2), High)),
            Some(vec!["l-small".to_string()])
        );
        // 3 cores: only the two 3-core leases will do alone; the low one.
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(3), High)),
            Some(vec!["l-big".to_string()])
        );
    }

    #[test]
    fn equal_or_higher_priority_is_never_taken() {
        use Priority::*;
        let l = ledger(&[("n", Normal, cpu(6)), ("l", Low, cpu(2))]);
        assert_eq!(choose_victims(&l, &none(), &cpu(4), Normal), None);
        assert_eq!(choose_victims(&l, &none(), &cpu(4), Low), None);
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(4), High)),
            Some(vec!["n".to_string()])
        );
        // Low cannot preempt anything, even for what the low lease holds.
        assert_eq!(choose_victims(&l, &none(), &cpu(1), Low), None);
    }

    #[test]
    fn pairs_prefer_the_lower_highest_priority() {
        use Priority::*;
        let l = ledger(&[
            ("h", High, cpu(2)),
            ("l", Low, cpu(2)),
            ("n1", Normal, cpu(2)),
            ("n2", Normal, cpu(2)),
        ]);
        // Two leases needed: {l, n1} (normal, low) beats {n1, n2} (normal,
        // normal), which beats {h, l} (high, low): no high lease ends.
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(4), Critical)),
            Some(vec!["l".to_string(), "n1".to_string()])
        );
        // Without the low one, two normals beat a high and a normal.
        let l = ledger(&[
            ("h", High, cpu(2)),
            ("n1", Normal, cpu(3)),
            ("n2", Normal, cpu(3)),
        ]);
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(6), Critical)),
            Some(vec!["n1".to_string(), "n2".to_string()])
        );
    }

    #[test]
    fn gpus_come_back_by_index() {
        use Priority::*;
        let gpu = |count, mem| ResourceRequirements {
            gpu_count: count,
            gpu_memory_mb: mem,
            ..Default::default()
        };
        let l = ledger(&[
            ("g0", Low, gpu(1, 3_000)),
            ("g1", Normal, gpu(1, 7_000)),
            ("g0b", Low, gpu(1, 2_000)),
        ]);
        // g0 and g0b share GPU 0 (best fit), g1 holds 7000 of GPU 1.
        assert_eq!(l.get(&LeaseId("g0b".into())).unwrap().gpus[0].index, 0);
        // One whole GPU: GPU 0 needs both low leases gone, GPU 1 the normal
        // one: the single victim wins.
        assert_eq!(
            victims(choose_victims(&l, &none(), &gpu(1, 0), High)),
            Some(vec!["g1".to_string()])
        );
        // At normal priority only the low leases are candidates: both.
        assert_eq!(
            victims(choose_victims(&l, &none(), &gpu(1, 0), Normal)),
            Some(vec!["g0".to_string(), "g0b".to_string()])
        );
        // 5500 on one GPU: freeing g0 alone leaves 6000 on GPU 0; freeing
        // g0b alone only 5000.
        assert_eq!(
            victims(choose_victims(&l, &none(), &gpu(1, 5_500), Normal)),
            Some(vec!["g0".to_string()])
        );
    }

    #[test]
    fn reserved_capacity_stays_out_of_reach() {
        use Priority::*;
        let l = ledger(&[("a", Low, cpu(2)), ("b", Low, cpu(2))]);
        let reserved = Capacity {
            cpu_cores: 4,
            ..Default::default()
        };
        // 4 free but reserved: 2 more cores need one victim.
        assert_eq!(
            victims(choose_victims(&l, &reserved, &cpu(2), High)),
            Some(vec!["a".to_string()])
        );
        assert_eq!(choose_victims(&l, &reserved, &cpu(5), High), None);
    }

    #[test]
    fn the_lease_limit_needs_a_victim_too() {
        let limits = LeaseLimits {
            max_leases: 2,
            ..LeaseLimits::default()
        };
        let mut l = Ledger::new(NodeId::from("owner"), cap(), limits);
        l.allocate(input("a", Priority::Low, cpu(1)), NOW).unwrap();
        l.allocate(input("b", Priority::Normal, cpu(1)), NOW)
            .unwrap();
        assert_eq!(
            victims(choose_victims(&l, &none(), &cpu(1), Priority::High)),
            Some(vec!["a".to_string()])
        );
    }

    #[test]
    fn many_candidates_fall_back_to_a_minimal_greedy_set() {
        let mut l = Ledger::new(
            NodeId::from("owner"),
            Capacity {
                cpu_cores: 100,
                ..Default::default()
            },
            LeaseLimits::default(),
        );
        // 100 one-core leases: 70 low, 30 normal.
        for i in 0..100 {
            let p = if i < 70 {
                Priority::Low
            } else {
                Priority::Normal
            };
            l.allocate(input(&format!("x{i:03}"), p, cpu(1)), NOW)
                .unwrap();
        }
        let v = choose_victims(&l, &none(), &cpu(3), Priority::High).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v
            .iter()
            .all(|id| l.get(id).unwrap().priority == Priority::Low));
        let v = choose_victims(&l, &none(), &cpu(75), Priority::High).unwrap();
        assert_eq!(v.len(), 75);
        assert_eq!(choose_victims(&l, &none(), &cpu(101), Priority::High), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_capacity() -> impl Strategy<Value = Capacity> {
            (
                2u32..12,
                0u64..4_096,
                prop::collection::vec(prop_oneof![1 => 0u64..4_000, 3 => 2_000u64..8_000], 0..4),
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u64..10, 0..=2),
            )
                .prop_map(|(cpu_cores, memory_mb, gpus, custom)| Capacity {
                    cpu_cores,
                    memory_mb,
                    disk_mb: 1_000,
                    gpus: gpus
                        .into_iter()
                        .enumerate()
                        .map(|(i, memory_mb)| GpuSlot {
                            index: i as u32 * 2 + 1,
                            memory_mb,
                        })
                        .collect(),
                    custom: custom
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                })
        }

        fn arb_req() -> impl Strategy<Value = ResourceRequirements> {
            let gpu = prop_oneof![
                3 => Just((0u32, false, 0u64)),
                2 => (0u32..3, any::<bool>(), prop_oneof![Just(0u64), 1u64..3_000, 0u64..9_000]),
            ];
            let custom = prop_oneof![
                3 => Just(BTreeMap::new()),
                1 => prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b", "c"]),
                    0u64..6,
                    1..=2,
                ),
            ];
            (0u32..5, prop_oneof![Just(0u64), 0u64..2_000], gpu, custom).prop_map(
                |(cpu_cores, memory_mb, gpu, custom)| ResourceRequirements {
                    cpu_cores,
                    memory_mb,
                    disk_mb: 0,
                    gpu_count: gpu.0,
                    gpu_required: gpu.1,
                    gpu_memory_mb: gpu.2,
                    preferred_models: Vec::new(),
                    custom: custom
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                },
            )
        }

        fn arb_reserved() -> impl Strategy<Value = Capacity> {
            prop_oneof![
                2 => Just(Capacity::default()),
                1 => (0u32..4, 0u64..1_000, prop::option::of(0u64..8_000)).prop_map(
                    |(cpu_cores, memory_mb, gpu)| Capacity {
                        cpu_cores,
                        memory_mb,
                        gpus: gpu
                            .map(|memory_mb| vec![GpuSlot { index: 1, memory_mb }])
                            .unwrap_or_default(),
                        ..Capacity::default()
                    }
                ),
            ]
        }

        fn arb_prio() -> impl Strategy<Value = Priority> {
            prop::sample::select(Priority::ALL.to_vec())
        }

        /// The oracle: release `set` on a clone of the ledger and ask
        /// whether the request fits what is then in reach.
        fn makes_room(
            l: &Ledger,
            reserved: &Capacity,
            req: &ResourceRequirements,
            set: &[&LeaseId],
        ) -> bool {
            let mut c = l.clone();
            for id in set {
                let _ = c.release(id, None);
            }
            c.len() < c.limits().max_leases
                && fit(&c.free().minus(reserved), c.capacity(), req).is_ok()
        }

        /// The set's priorities, highest first.
        fn desc_prios(l: &Ledger, set: &[&LeaseId]) -> Vec<Priority> {
            let mut p: Vec<Priority> = set
                .iter()
                .filter_map(|id| l.get(id))
                .map(|x| x.priority)
                .collect();
            p.sort_by(|a, b| b.cmp(a));
            p
        }

        /// Check every guarantee of [`choose_victims`] on one case.
        fn check(
            l: &Ledger,
            reserved: &Capacity,
            req: &ResourceRequirements,
            prio: Priority,
        ) -> Result<(), TestCaseError> {
            let got = choose_victims(l, reserved, req, prio);
            prop_assert_eq!(&got, &choose_victims(l, reserved, req, prio));
            let cands: Vec<&LeaseId> = l
                .leases()
                .filter(|x| x.priority < prio)
                .map(|x| &x.lease_id)
                .collect();
            let singles: Vec<&LeaseId> = cands
                .iter()
                .copied()
                .filter(|c| makes_room(l, reserved, req, &[c]))
                .collect();
            let mut pairs: Vec<[&LeaseId; 2]> = Vec::new();
            for (i, a) in cands.iter().enumerate() {
                for b in &cands[i + 1..] {
                    if makes_room(l, reserved, req, &[a, b]) {
                        pairs.push([a, b]);
                    }
                }
            }
            let fits_now = makes_room(l, reserved, req, &[]);
            match got {
                None => {
                    // (e) not even every candidate together makes room.
                    prop_assert!(!makes_room(l, reserved, req, &cands));
                    prop_assert!(singles.is_empty() && pairs.is_empty() && !fits_now);
                }
                Some(v) => {
                    let set: Vec<&LeaseId> = v.iter().collect();
                    // Distinct, sorted by (priority, id).
                    let keys: Vec<(Priority, &LeaseId)> = set
                        .iter()
                        .filter_map(|id| l.get(id).map(|x| (x.priority, *id)))
                        .collect();
                    prop_assert_eq!(keys.len(), set.len());
                    prop_assert!(keys.windows(2).all(|k| k[0] < k[1]));
                    // (a) strictly lower priority.
                    for id in &set {
                        prop_assert!(l.get(id).is_some_and(|x| x.priority < prio));
                    }
                    // (b) releasing them makes room (and then the ledger
                    // grants it).
                    prop_assert!(makes_room(l, reserved, req, &set));
                    if !req.is_empty() {
                        let mut c = l.clone();
                        for id in &set {
                            c.release(id, None)
                                .map_err(|d| TestCaseError::fail(d.to_string()))?;
                        }
                        prop_assert!(c
                            .allocate_reserving(input("new", prio, req.clone()), reserved, NOW)
                            .is_ok());
                    }
                    // No victims exactly when it fits already.
                    prop_assert_eq!(set.is_empty(), fits_now);
                    // (c) one victim whenever one suffices, the lowest.
                    if !fits_now && !singles.is_empty() {
                        prop_assert_eq!(set.len(), 1);
                        let best = singles
                            .iter()
                            .filter_map(|id| l.get(id))
                            .map(|x| x.priority)
                            .min();
                        prop_assert_eq!(l.get(set[0]).map(|x| x.priority), best);
                    }
                    // Two whenever two suffice (few candidates here), with
                    // the lowest highest-first priorities.
                    if !fits_now && singles.is_empty() && !pairs.is_empty() {
                        prop_assert_eq!(set.len(), 2);
                        let best = pairs.iter().map(|p| desc_prios(l, p)).min();
                        prop_assert_eq!(Some(desc_prios(l, &set)), best);
                    }
                    if set.len() >= 3 {
                        prop_assert!(singles.is_empty() && pairs.is_empty());
                    }
                    // (d) minimal: no victim can be spared.
                    for skip in 0..set.len() {
                        let fewer: Vec<&LeaseId> = set
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != skip)
                            .map(|(_, id)| *id)
                            .collect();
                        prop_assert!(!makes_room(l, reserved, req, &fewer));
                    }
                }
            }
            Ok(())
        }

        /// A node crowded with small leases, and a request for a good part
        /// of it: the cases where several victims are needed.
        fn arb_crowded() -> impl Strategy<
            Value = (
                Capacity,
                Vec<(ResourceRequirements, Priority)>,
                ResourceRequirements,
            ),
        > {
            let small = (
                0u32..3,
                0u64..800,
                prop_oneof![2 => Just(None), 1 => (0u64..3_000).prop_map(Some)],
                0u64..3,
                prop::sample::select(vec![Priority::Low, Priority::Normal, Priority::High]),
            )
                .prop_map(|(cpu_cores, memory_mb, gpu, a, p)| {
                    let req = ResourceRequirements {
                        cpu_cores,
                        memory_mb,
                        gpu_count: u32::from(gpu.is_some()),
                        gpu_memory_mb: gpu.unwrap_or(0),
                        custom: [("a".to_string(), a)].into_iter().collect(),
                        ..Default::default()
                    };
                    (req, p)
                });
            (
                arb_capacity(),
                prop::collection::vec(small, 4..24),
                (
                    0u64..=3,
                    0u64..=3,
                    0u32..3,
                    prop_oneof![Just(0u64), 500u64..4_000],
                    prop_oneof![Just(0u64), 1u64..6],
                ),
            )
                .prop_map(|(cap, held, (fc, fm, gpus, gmem, a))| {
                    let req = ResourceRequirements {
                        cpu_cores: (u64::from(cap.cpu_cores) * fc / 4) as u32,
                        memory_mb: cap.memory_mb * fm / 4,
                        // Only what the node has at all.
                        gpu_count: gpus.min(cap.gpus.len() as u32),
                        gpu_memory_mb: gmem,
                        custom: cap.custom.keys().map(|k| (k.clone(), a)).take(1).collect(),
                        ..Default::default()
                    };
                    (cap, held, req)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Victims are strictly lower priority, make room, are the
            /// fewest up to two (and then the lowest), are minimal, and
            /// None means even all candidates together do not make room.
            #[test]
            fn victims_are_lower_sufficient_few_and_minimal(
                cap in arb_capacity(),
                max_leases in prop_oneof![1 => 1usize..6, 3 => Just(100usize)],
                held in prop::collection::vec((arb_req(), arb_prio()), 0..12),
                req in arb_req(),
                prio in arb_prio(),
                reserved in arb_reserved(),
            ) {
                let limits = LeaseLimits { max_leases, ..LeaseLimits::default() };
                let mut l = Ledger::new(NodeId::from("owner"), cap, limits);
                for (i, (r, p)) in held.into_iter().enumerate() {
                    let _ = l.allocate(input(&format!("x{i:02}"), p, r), NOW);
                }
                check(&l, &reserved, &req, prio)?;
            }

            /// The same, on a crowded node.
            #[test]
            fn victims_on_a_crowded_node(
                (cap, held, req) in arb_crowded(),
                max_leases in prop_oneof![1 => 4usize..24, 3 => Just(100usize)],
                prio in prop::sample::select(vec![Priority::Normal, Priority::High, Priority::Critical]),
                reserved in arb_reserved(),
            ) {
                let limits = LeaseLimits { max_leases, ..LeaseLimits::default() };
                let mut l = Ledger::new(NodeId::from("owner"), cap, limits);
                for (i, (r, p)) in held.into_iter().enumerate() {
                    let _ = l.allocate(input(&format!("x{i:02}"), p, r), NOW);
                }
                check(&l, &reserved, &req, prio)?;
            }
        }
    }
}
