//! The owner side: the lease ledger.
//!
//! Each node is the only authority over its own resources (DESIGN.md,
//! principle 1). The [`Ledger`] is where that authority lives: it holds the
//! node's lendable [`Capacity`] and every active [`Lease`] granted against
//! it, and it decides every grant in one synchronous step, so the active
//! leases can never add up to more than the capacity (invariant I1) without
//! any coordination with other nodes.
//!
//! It is sans-IO (STYLE.md, "The core is a state machine with no IO"): no
//! clock, no RNG, no tokio, libp2p or redb. Time comes in as `now_ms`
//! (milliseconds since the Unix epoch), lease ids come in from the caller,
//! and every map is a `BTreeMap`, so the same inputs always give the same
//! outputs. The network shell feeds requests in, writes granted leases to
//! the store *before* answering (invariant I2), schedules a timer for
//! [`Ledger::next_expiry`] and calls [`Ledger::expire`] when it fires. After
//! a restart it hands the stored leases to [`Ledger::restore`].
//!
//! Admission uses [`crate::core::fit::fit`], the same function the
//! requester's view uses to guess whom to ask, so both sides agree on what
//! "fits" means. Totals of what the active leases use are cached and kept up
//! to date incrementally, so [`Ledger::free`] costs O(dimensions + GPUs +
//! custom keys), not O(leases).
//!
//! Arithmetic saturates everywhere; no input makes the ledger panic.
//!
//! Capacity may shrink under existing leases ([`Ledger::set_capacity`]):
//! those leases stay until they are released or expire, [`Ledger::free`]
//! reports zero (never underflows) in the dimensions that are over, and new
//! grants must fit in what the new capacity leaves.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::fit::fit;
use crate::model::{
    Capacity, Denial, DenyReason, GpuSlot, Lease, LeaseId, NodeId, Priority, ResourceRequirements,
};

/// Bounds on lease length and on the number of active leases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseLimits {
    /// Shortest lease granted, ms. Shorter requests are raised to it.
    pub min_lease_ms: u64,
    /// Longest lease granted, ms. Longer requests are cut to it.
    pub max_lease_ms: u64,
    /// Most leases active at once on this node.
    pub max_leases: usize,
}

impl Default for LeaseLimits {
    fn default() -> Self {
        LeaseLimits {
            min_lease_ms: 1_000,
            max_lease_ms: 3_600_000,
            max_leases: 10_000,
        }
    }
}

impl LeaseLimits {
    /// The lease length actually granted for a requested `lease_ms`: raised
    /// to `min_lease_ms`, then cut to `max_lease_ms`, and never below 1 ms
    /// (so even misconfigured limits never grant an already-expired lease).
    pub fn clamp_lease_ms(&self, lease_ms: u64) -> u64 {
        lease_ms
            .max(self.min_lease_ms)
            .min(self.max_lease_ms)
            .max(1)
    }
}

/// One request for a lease, as the network shell hands it to
/// [`Ledger::allocate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateInput {
    /// Id for the new lease, chosen by the caller (a UUID v4).
    pub lease_id: LeaseId,
    /// The requester's own id for the request.
    pub request_id: String,
    /// Who asks, and will renew.
    pub holder: NodeId,
    /// What is asked for.
    pub req: ResourceRequirements,
    /// Free-form task type.
    pub task_type: String,
    /// Priority of the request.
    pub priority: Priority,
    /// Lease length asked for, ms (clamped to [`LeaseLimits`]).
    pub lease_ms: u64,
}

/// What the active leases use, summed. Entries that drop to zero are
/// removed, so the maps stay as small as what is actually in use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Used {
    cpu_cores: u32,
    memory_mb: u64,
    disk_mb: u64,
    /// GPU index -> memory used on it, MiB.
    gpus: BTreeMap<u32, u64>,
    /// Custom key -> amount used.
    custom: BTreeMap<String, u64>,
}

impl Used {
    fn add(&mut self, lease: &Lease) {
        self.cpu_cores = self.cpu_cores.saturating_add(lease.cpu_cores);
        self.memory_mb = self.memory_mb.saturating_add(lease.memory_mb);
        self.disk_mb = self.disk_mb.saturating_add(lease.disk_mb);
        for g in &lease.gpus {
            if g.memory_mb > 0 {
                let e = self.gpus.entry(g.index).or_insert(0);
                *e = e.saturating_add(g.memory_mb);
            }
        }
        for (k, v) in &lease.custom {
            if *v > 0 {
                match self.custom.get_mut(k) {
                    Some(e) => *e = e.saturating_add(*v),
                    None => {
                        self.custom.insert(k.clone(), *v);
                    }
                }
            }
        }
    }

    fn sub(&mut self, lease: &Lease) {
        self.cpu_cores = self.cpu_cores.saturating_sub(lease.cpu_cores);
        self.memory_mb = self.memory_mb.saturating_sub(lease.memory_mb);
        self.disk_mb = self.disk_mb.saturating_sub(lease.disk_mb);
        for g in &lease.gpus {
            if let Some(e) = self.gpus.get_mut(&g.index) {
                *e = e.saturating_sub(g.memory_mb);
                if *e == 0 {
                    self.gpus.remove(&g.index);
                }
            }
        }
        for (k, v) in &lease.custom {
            if let Some(e) = self.custom.get_mut(k) {
                *e = e.saturating_sub(*v);
                if *e == 0 {
                    self.custom.remove(k);
                }
            }
        }
    }
}

/// The owner's lease ledger. See the module documentation.
#[derive(Clone, Debug)]
pub struct Ledger {
    node_id: NodeId,
    capacity: Capacity,
    limits: LeaseLimits,
    leases: BTreeMap<LeaseId, Lease>,
    /// (`expires_at_ms`, lease id) of every active lease, for
    /// [`Ledger::expire`] and [`Ledger::next_expiry`].
    by_expiry: BTreeSet<(u64, LeaseId)>,
    used: Used,
}

/// Sort GPUs by index and keep only the first of any repeated index, so a
/// GPU can never be counted (and leased) twice.
fn normalize(mut capacity: Capacity) -> Capacity {
    capacity.gpus.sort_by_key(|g| g.index);
    capacity.gpus.dedup_by_key(|g| g.index);
    capacity
}

impl Ledger {
    /// An empty ledger for `node_id`, lending `capacity`.
    ///
    /// GPUs are sorted by index; if an index is repeated, only its first
    /// entry counts.
    pub fn new(node_id: NodeId, capacity: Capacity, limits: LeaseLimits) -> Self {
        Ledger {
            node_id,
            capacity: normalize(capacity),
            limits,
            leases: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            used: Used::default(),
        }
    }

    /// The owner: the node whose resources this ledger lends.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// What this node lends in total.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Lease length and count limits.
    pub fn limits(&self) -> &LeaseLimits {
        &self.limits
    }

    /// Capacity minus what the active leases use: per dimension, per GPU
    /// (matched by index) and per custom key. Saturates at zero, which
    /// happens only after [`Ledger::set_capacity`] shrank the capacity
    /// under existing leases. Leases past their expiry that have not been
    /// [`Ledger::expire`]d yet still count.
    pub fn free(&self) -> Capacity {
        let cap = &self.capacity;
        let used = &self.used;
        Capacity {
            cpu_cores: cap.cpu_cores.saturating_sub(used.cpu_cores),
            memory_mb: cap.memory_mb.saturating_sub(used.memory_mb),
            disk_mb: cap.disk_mb.saturating_sub(used.disk_mb),
            gpus: cap
                .gpus
                .iter()
                .map(|g| GpuSlot {
                    index: g.index,
                    memory_mb: g
                        .memory_mb
                        .saturating_sub(used.gpus.get(&g.index).copied().unwrap_or(0)),
                })
                .collect(),
            custom: cap
                .custom
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(used.custom.get(k).copied().unwrap_or(0)),
                    )
                })
                .collect(),
        }
    }

    /// What the active leases use in total: per dimension, per GPU index
    /// and per custom key (only GPUs and keys in use are listed).
    pub fn used(&self) -> Capacity {
        Capacity {
            cpu_cores: self.used.cpu_cores,
            memory_mb: self.used.memory_mb,
            disk_mb: self.used.disk_mb,
            gpus: self
                .used
                .gpus
                .iter()
                .map(|(index, memory_mb)| GpuSlot {
                    index: *index,
                    memory_mb: *memory_mb,
                })
                .collect(),
            custom: self.used.custom.clone(),
        }
    }

    /// Would `req` fit in what is free right now? Returns the GPUs that
    /// would be assigned. Changes nothing. This is only the capacity part of
    /// [`Ledger::allocate`]; the request checks (empty request, lease count)
    /// are not made.
    pub fn check(&self, req: &ResourceRequirements) -> Result<Vec<GpuSlot>, Denial> {
        fit(&self.free(), &self.capacity, req).map_err(|misfit| {
            Denial::new(
                DenyReason::InsufficientCapacity,
                format!("does not fit on {}: {misfit}", self.node_id),
            )
        })
    }

    /// Decide a request, in one step. In order:
    ///
    /// - `BadRequest` if the request asks for nothing, if `lease_ms` is 0,
    ///   or if a lease with this id already exists;
    /// - `InsufficientCapacity` if the node already holds `max_leases`
    ///   leases;
    /// - `InsufficientCapacity` if any dimension does not fit in what is
    ///   free (a custom resource the node does not lend never fits).
    ///
    /// Otherwise the lease is granted for `lease_ms` clamped to the
    /// [`LeaseLimits`] (the lease records the length actually granted), on
    /// the GPUs that [`fit`] chose, and returned.
    pub fn allocate(&mut self, input: AllocateInput, now_ms: u64) -> Result<Lease, Denial> {
        self.allocate_reserving(input, &Capacity::default(), now_ms)
    }

    /// [`Ledger::allocate`], keeping `reserved` out of reach: the request
    /// must fit in what is free minus `reserved` (the owner's advance
    /// reservations, or what waiting requests are owed).
    pub fn allocate_reserving(
        &mut self,
        input: AllocateInput,
        reserved: &Capacity,
        now_ms: u64,
    ) -> Result<Lease, Denial> {
        if input.req.is_empty() {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!(
                    "request {} for lease {} asks for no resources",
                    input.request_id, input.lease_id
                ),
            ));
        }
        if input.lease_ms == 0 {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!(
                    "request {} for lease {} asks for a lease of 0 ms",
                    input.request_id, input.lease_id
                ),
            ));
        }
        if self.leases.contains_key(&input.lease_id) {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!(
                    "lease id {} is already in use on {}",
                    input.lease_id, self.node_id
                ),
            ));
        }
        if self.leases.len() >= self.limits.max_leases {
            return Err(Denial::new(
                DenyReason::InsufficientCapacity,
                format!(
                    "{} already holds {} active leases, its limit (max_leases {})",
                    self.node_id,
                    self.leases.len(),
                    self.limits.max_leases
                ),
            ));
        }
        let gpus =
            fit(&self.free().minus(reserved), &self.capacity, &input.req).map_err(|misfit| {
                Denial::new(
                    DenyReason::InsufficientCapacity,
                    format!("does not fit on {}: {misfit}", self.node_id),
                )
            })?;
        let lease_ms = self.limits.clamp_lease_ms(input.lease_ms);
        let AllocateInput {
            lease_id,
            request_id,
            holder,
            req,
            task_type,
            priority,
            lease_ms: _,
        } = input;
        let lease = Lease {
            lease_id,
            request_id,
            node_id: self.node_id.clone(),
            holder,
            cpu_cores: req.cpu_cores,
            memory_mb: req.memory_mb,
            disk_mb: req.disk_mb,
            gpus,
            custom: req.custom.into_iter().filter(|(_, v)| *v > 0).collect(),
            models: req.preferred_models,
            task_type,
            priority,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(lease_ms),
            lease_ms,
        };
        self.insert(lease.clone());
        Ok(lease)
    }

    /// Extend a lease: it now runs out `lease_ms` (clamped to the
    /// [`LeaseLimits`]) after `now_ms`. A `lease_ms` of 0 means "the same
    /// length as before" (the lease's own `lease_ms`).
    ///
    /// `UnknownLease` if there is no such lease, or it has already run out
    /// (`expires_at_ms <= now_ms`; it is then removed, as
    /// [`Ledger::expire`] would). `NotHolder` if `holder` is not the lease's
    /// holder. Returns the updated lease.
    pub fn renew(
        &mut self,
        lease_id: &LeaseId,
        holder: &NodeId,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Lease, Denial> {
        let Some(lease) = self.leases.get_mut(lease_id) else {
            return Err(Denial::new(
                DenyReason::UnknownLease,
                format!("no lease {lease_id} on {}", self.node_id),
            ));
        };
        if lease.expires_at_ms <= now_ms {
            let expired_at = lease.expires_at_ms;
            self.remove(lease_id);
            return Err(Denial::new(
                DenyReason::UnknownLease,
                format!(
                    "lease {lease_id} on {} ran out at {expired_at} ms, \
                     before the renewal at {now_ms} ms",
                    self.node_id
                ),
            ));
        }
        if lease.holder != *holder {
            return Err(Denial::new(
                DenyReason::NotHolder,
                format!(
                    "lease {lease_id} on {} is held by {}, not {holder}",
                    self.node_id, lease.holder
                ),
            ));
        }
        let asked = if lease_ms == 0 {
            lease.lease_ms
        } else {
            lease_ms
        };
        let granted = self.limits.clamp_lease_ms(asked);
        let old_expiry = lease.expires_at_ms;
        // Only the expiry changes, so the cached totals stay as they are.
        lease.expires_at_ms = now_ms.saturating_add(granted);
        lease.lease_ms = granted;
        let updated = lease.clone();
        self.by_expiry.remove(&(old_expiry, lease_id.clone()));
        self.by_expiry
            .insert((updated.expires_at_ms, lease_id.clone()));
        Ok(updated)
    }

    /// Make a lease run out no later than `at_ms` (a hard end: a fixed
    /// duration, or a reservation's window). Returns the updated lease.
    pub fn cap_expiry(&mut self, lease_id: &LeaseId, at_ms: u64) -> Option<Lease> {
        let lease = self.leases.get_mut(lease_id)?;
        if lease.expires_at_ms > at_ms {
            let old = lease.expires_at_ms;
            lease.expires_at_ms = at_ms;
            let updated = lease.clone();
            self.by_expiry.remove(&(old, lease_id.clone()));
            self.by_expiry.insert((at_ms, lease_id.clone()));
            return Some(updated);
        }
        Some(lease.clone())
    }

    /// Give a lease back. Idempotent: an unknown id is `Ok(None)`.
    /// `holder` is the peer asking, or `None` for the local admin, who may
    /// release any lease. A peer that is not the holder gets `NotHolder`.
    /// Returns the removed lease.
    pub fn release(
        &mut self,
        lease_id: &LeaseId,
        holder: Option<&NodeId>,
    ) -> Result<Option<Lease>, Denial> {
        let Some(lease) = self.leases.get(lease_id) else {
            return Ok(None);
        };
        if let Some(h) = holder {
            if lease.holder != *h {
                return Err(Denial::new(
                    DenyReason::NotHolder,
                    format!(
                        "lease {lease_id} on {} is held by {}, not {h}",
                        self.node_id, lease.holder
                    ),
                ));
            }
        }
        Ok(self.remove(lease_id))
    }

    /// Remove and return every lease with `expires_at_ms <= now_ms`, in
    /// order of expiry (ties by lease id).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Lease> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.by_expiry.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, id)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(lease) = self.leases.remove(&id) {
                self.used.sub(&lease);
                out.push(lease);
            }
        }
        out
    }

    /// When the next lease runs out, if any: the time to call
    /// [`Ledger::expire`] at.
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// Re-admit leases read back from the store after a restart.
    ///
    /// They are taken oldest first (by `created_at_ms`, then id), each
    /// exactly as stored (same GPUs, same expiry). A lease is refused if it
    /// has run out (`expires_at_ms <= now_ms`), belongs to another node, or
    /// no longer fits (the capacity shrank, a GPU or custom key is gone, or
    /// `max_leases` is reached). Returns the refused leases, so the caller
    /// can delete them from the store. A lease whose id is already in the
    /// ledger is skipped and *not* returned: the ledger keeps its own copy,
    /// and deleting that id from the store would lose it.
    pub fn restore(&mut self, mut leases: Vec<Lease>, now_ms: u64) -> Vec<Lease> {
        leases.sort_by(|a, b| (a.created_at_ms, &a.lease_id).cmp(&(b.created_at_ms, &b.lease_id)));
        let mut refused = Vec::new();
        for lease in leases {
            if self.leases.contains_key(&lease.lease_id) {
                continue;
            }
            let admissible = lease.expires_at_ms > now_ms
                && lease.node_id == self.node_id
                && self.leases.len() < self.limits.max_leases
                && self.fits_exactly(&lease);
            if admissible {
                self.insert(lease);
            } else {
                refused.push(lease);
            }
        }
        refused
    }

    /// Change what this node lends. Existing leases stay until released or
    /// expired, even if they no longer fit; [`Ledger::free`] then reports
    /// zero where they are over, and new grants must fit in what the new
    /// capacity leaves. GPUs are normalized as in [`Ledger::new`].
    pub fn set_capacity(&mut self, capacity: Capacity) {
        self.capacity = normalize(capacity);
    }

    /// The active lease with this id.
    pub fn get(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases.get(id)
    }

    /// Every active lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Number of active leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no active leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether a stored lease, exactly as it is (same GPUs), fits in what is
    /// free now.
    fn fits_exactly(&self, lease: &Lease) -> bool {
        let free = self.free();
        if lease.cpu_cores > free.cpu_cores
            || lease.memory_mb > free.memory_mb
            || lease.disk_mb > free.disk_mb
        {
            return false;
        }
        let custom_fits = lease
            .custom
            .iter()
            .all(|(k, v)| *v <= free.custom.get(k).copied().unwrap_or(0));
        if !custom_fits {
            return false;
        }
        // Sum per index, in case a stored lease names a GPU twice; a sum
        // that overflows certainly does not fit.
        let mut per_gpu: BTreeMap<u32, u64> = BTreeMap::new();
        for g in &lease.gpus {
            let e = per_gpu.entry(g.index).or_insert(0);
            match e.checked_add(g.memory_mb) {
                Some(sum) => *e = sum,
                None => return false,
            }
        }
        per_gpu.iter().all(|(index, want)| {
            free.gpus
                .iter()
                .find(|f| f.index == *index)
                .is_some_and(|f| *want <= f.memory_mb)
        })
    }

    fn insert(&mut self, lease: Lease) {
        self.used.add(&lease);
        self.by_expiry
            .insert((lease.expires_at_ms, lease.lease_id.clone()));
        self.leases.insert(lease.lease_id.clone(), lease);
    }

    fn remove(&mut self, lease_id: &LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(lease_id)?;
        self.by_expiry
            .remove(&(lease.expires_at_ms, lease_id.clone()));
        self.used.sub(&lease);
        Some(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn node() -> NodeId {
        NodeId::from("owner")
    }

    fn gpus(mem: &[u64]) -> Vec<GpuSlot> {
        mem.iter()
            .enumerate()
            .map(|(i, m)| GpuSlot {
                index: i as u32,
                memory_mb: *m,
            })
            .collect()
    }

    fn cap() -> Capacity {
        Capacity {
            cpu_cores: 8,
            memory_mb: 16_384,
            disk_mb: 100_000,
            gpus: gpus(&[8_000, 8_000]),
            custom: [("api_quota".to_string(), 10)].into_iter().collect(),
        }
    }

    fn ledger() -> Ledger {
        Ledger::new(node(), cap(), LeaseLimits::default())
    }

    fn input(id: &str, holder: &str, req: ResourceRequirements) -> AllocateInput {
        AllocateInput {
            lease_id: LeaseId(id.to_string()),
            request_id: format!("req-{id}"),
            holder: NodeId::from(holder),
            req,
            task_type: "test".to_string(),
            priority: Priority::Normal,
            lease_ms: 60_000,
        }
    }

    fn cpu(n: u32) -> ResourceRequirements {
        ResourceRequirements {
            cpu_cores: n,
            ..Default::default()
        }
    }

    fn gpu_mem(count: u32, mem: u64) -> ResourceRequirements {
        ResourceRequirements {
            gpu_count: count,
            gpu_memory_mb: mem,
            ..Default::default()
        }
    }

    fn id(s: &str) -> LeaseId {
        LeaseId(s.to_string())
    }

    #[test]
    fn allocate_takes_capacity_and_release_gives_it_back() {
        let mut l = ledger();
        let req = ResourceRequirements {
            cpu_cores: 3,
            memory_mb: 4_096,
            disk_mb: 1_000,
            preferred_models: vec!["llama3".into()],
            ..Default::default()
        };
        let lease = l.allocate(input("a", "h", req), NOW).unwrap();
        assert_eq!(lease.node_id, node());
        assert_eq!(lease.holder, NodeId::from("h"));
        assert_eq!(lease.request_id, "req-a");
        assert_eq!(lease.created_at_ms, NOW);
        assert_eq!(lease.expires_at_ms, NOW + 60_000);
        assert_eq!(lease.lease_ms, 60_000);
        assert_eq!(lease.models, vec!["llama3".to_string()]);
        assert_eq!(lease.task_type, "test");
        let free = l.free();
        assert_eq!(free.cpu_cores, 5);
        assert_eq!(free.memory_mb, 16_384 - 4_096);
        assert_eq!(free.disk_mb, 100_000 - 1_000);
        assert_eq!(l.used().cpu_cores, 3);
        assert_eq!(l.len(), 1);
        assert_eq!(l.get(&id("a")), Some(&lease));

        let released = l.release(&id("a"), Some(&NodeId::from("h"))).unwrap();
        assert_eq!(released, Some(lease));
        assert_eq!(l.free(), cap());
        assert_eq!(l.used(), Capacity::default());
        assert!(l.is_empty());
        assert_eq!(l.next_expiry(), None);
    }

    #[test]
    fn each_dimension_is_checked_and_named() {
        let mut l = ledger();
        for (req, dim) in [
            (cpu(9), "cpu_cores"),
            (
                ResourceRequirements {
                    memory_mb: 16_385,
                    ..Default::default()
                },
                "memory_mb",
            ),
            (
                ResourceRequirements {
                    disk_mb: 100_001,
                    ..Default::default()
                },
                "disk_mb",
            ),
        ] {
            let d = l.allocate(input("x", "h", req), NOW).unwrap_err();
            assert_eq!(d.reason, DenyReason::InsufficientCapacity);
            assert!(d.message.contains(dim), "{}", d.message);
        }
        assert!(l.is_empty());
        l.allocate(input("a", "h", cpu(8)), NOW).unwrap();
        let d = l.allocate(input("b", "h", cpu(1)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(
            d.message.contains("cpu_cores: want 1, free 0"),
            "{}",
            d.message
        );
    }

    #[test]
    fn per_gpu_memory_is_tracked_by_index() {
        let mut l = ledger();
        let a = l.allocate(input("a", "h", gpu_mem(1, 6_000)), NOW).unwrap();
        let b = l.allocate(input("b", "h", gpu_mem(1, 6_000)), NOW).unwrap();
        assert_eq!(a.gpus.len(), 1);
        assert_eq!(b.gpus.len(), 1);
        assert_ne!(a.gpus[0].index, b.gpus[0].index);
        assert_eq!(a.gpus[0].memory_mb, 6_000);
        // 2 000 MiB left on each GPU: 12 000 in total, but not on one GPU.
        let d = l
            .allocate(input("c", "h", gpu_mem(1, 6_000)), NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("gpus"), "{}", d.message);
        let c = l.allocate(input("c", "h", gpu_mem(2, 2_000)), NOW).unwrap();
        assert_eq!(c.gpus, gpus(&[2_000, 2_000]));
        assert_eq!(l.free().gpus, gpus(&[0, 0]));
        assert_eq!(l.used().gpus, gpus(&[8_000, 8_000]));
        l.release(&id("a"), None).unwrap();
        let free = l.free();
        let i = a.gpus[0].index as usize;
        assert_eq!(free.gpus[i].memory_mb, 6_000);
        assert_eq!(free.gpus[1 - i].memory_mb, 0);
    }

    #[test]
    fn gpu_count_beyond_the_node_is_denied() {
        let mut l = ledger();
        let d = l
            .allocate(input("a", "h", gpu_mem(3, 1_000)), NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
    }

    #[test]
    fn whole_gpus_need_an_entirely_free_gpu_and_take_all_of_it() {
        let mut l = Ledger::new(
            node(),
            Capacity {
                gpus: gpus(&[8_000, 24_000]),
                ..Default::default()
            },
            LeaseLimits::default(),
        );
        let part = l.allocate(input("p", "h", gpu_mem(1, 1_000)), NOW).unwrap();
        // Best fit: the smaller GPU.
        assert_eq!(
            part.gpus,
            vec![GpuSlot {
                index: 0,
                memory_mb: 1_000
            }]
        );
        let whole = ResourceRequirements {
            gpu_required: true,
            ..Default::default()
        };
        let w = l.allocate(input("w", "h", whole.clone()), NOW).unwrap();
        assert_eq!(
            w.gpus,
            vec![GpuSlot {
                index: 1,
                memory_mb: 24_000
            }]
        );
        // GPU 0 is partly used, GPU 1 wholly: no whole GPU left, and none
        // of GPU 1's memory either.
        let d = l
            .allocate(input("w2", "h", whole.clone()), NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("whole"), "{}", d.message);
        assert_eq!(l.free().gpus, gpus(&[7_000, 0]));
        l.release(&id("p"), None).unwrap();
        let w2 = l.allocate(input("w2", "h", whole), NOW).unwrap();
        assert_eq!(
            w2.gpus,
            vec![GpuSlot {
                index: 0,
                memory_mb: 8_000
            }]
        );
    }

    #[test]
    fn custom_resources_are_counted_and_unknown_ones_never_fit() {
        let mut l = ledger();
        let quota = |n: u64| ResourceRequirements {
            custom: [("api_quota".to_string(), n)].into_iter().collect(),
            ..Default::default()
        };
        let a = l.allocate(input("a", "h", quota(7)), NOW).unwrap();
        assert_eq!(a.custom.get("api_quota"), Some(&7));
        assert_eq!(l.free().custom.get("api_quota"), Some(&3));
        let d = l.allocate(input("b", "h", quota(4)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("custom.api_quota"), "{}", d.message);
        l.allocate(input("b", "h", quota(3)), NOW).unwrap();

        let unknown = ResourceRequirements {
            cpu_cores: 1,
            custom: [("db_conns".to_string(), 1)].into_iter().collect(),
            ..Default::default()
        };
        let d = l.allocate(input("c", "h", unknown), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("custom.db_conns"), "{}", d.message);

        // A zero amount of something unknown asks for nothing of it.
        let zero = ResourceRequirements {
            cpu_cores: 1,
            custom: [("db_conns".to_string(), 0)].into_iter().collect(),
            ..Default::default()
        };
        let z = l.allocate(input("z", "h", zero), NOW).unwrap();
        assert!(z.custom.is_empty());
    }

    #[test]
    fn bad_requests_are_denied_in_order() {
        let mut l = ledger();
        let d = l
            .allocate(input("a", "h", ResourceRequirements::default()), NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("no resources"), "{}", d.message);

        let mut zero_ms = input("a", "h", cpu(1));
        zero_ms.lease_ms = 0;
        let d = l.allocate(zero_ms, NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("0 ms"), "{}", d.message);

        l.allocate(input("a", "h", cpu(1)), NOW).unwrap();
        let d = l.allocate(input("a", "h2", cpu(1)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("already in use"), "{}", d.message);
        // A duplicate id is a bad request even when it would not fit.
        let d = l.allocate(input("a", "h2", cpu(100)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert_eq!(l.len(), 1);
        assert_eq!(l.get(&id("a")).unwrap().holder, NodeId::from("h"));
    }

    #[test]
    fn max_leases_is_enforced() {
        let mut l = Ledger::new(
            node(),
            cap(),
            LeaseLimits {
                max_leases: 2,
                ..Default::default()
            },
        );
        l.allocate(input("a", "h", cpu(1)), NOW).unwrap();
        l.allocate(input("b", "h", cpu(1)), NOW).unwrap();
        let d = l.allocate(input("c", "h", cpu(1)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("max_leases 2"), "{}", d.message);
        l.release(&id("a"), None).unwrap();
        l.allocate(input("c", "h", cpu(1)), NOW).unwrap();
    }

    #[test]
    fn lease_length_is_clamped() {
        let mut l = ledger();
        let mut short = input("s", "h", cpu(1));
        short.lease_ms = 10;
        let s = l.allocate(short, NOW).unwrap();
        assert_eq!(s.lease_ms, 1_000);
        assert_eq!(s.expires_at_ms, NOW + 1_000);
        let mut long = input("l", "h", cpu(1));
        long.lease_ms = u64::MAX;
        let g = l.allocate(long, NOW).unwrap();
        assert_eq!(g.lease_ms, 3_600_000);
        assert_eq!(g.expires_at_ms, NOW + 3_600_000);

        let limits = LeaseLimits {
            min_lease_ms: 10,
            max_lease_ms: 0,
            max_leases: 1,
        };
        assert_eq!(limits.clamp_lease_ms(5), 1, "never grants 0 ms");
    }

    #[test]
    fn release_is_idempotent_and_checks_the_holder() {
        let mut l = ledger();
        l.allocate(input("a", "alice", cpu(2)), NOW).unwrap();
        assert_eq!(
            l.release(&id("nope"), Some(&NodeId::from("alice"))),
            Ok(None)
        );
        let d = l
            .release(&id("a"), Some(&NodeId::from("mallory")))
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::NotHolder);
        assert!(d.message.contains("alice") && d.message.contains("mallory"));
        assert_eq!(l.len(), 1);
        assert!(l
            .release(&id("a"), Some(&NodeId::from("alice")))
            .unwrap()
            .is_some());
        assert_eq!(l.release(&id("a"), Some(&NodeId::from("alice"))), Ok(None));
        assert_eq!(l.release(&id("a"), None), Ok(None));
        assert_eq!(l.free(), cap());
    }

    #[test]
    fn the_local_admin_may_release_any_lease() {
        let mut l = ledger();
        l.allocate(input("a", "alice", cpu(2)), NOW).unwrap();
        assert!(l.release(&id("a"), None).unwrap().is_some());
        assert!(l.is_empty());
    }

    #[test]
    fn renew_extends_and_checks_the_holder() {
        let mut l = ledger();
        l.allocate(input("a", "alice", cpu(2)), NOW).unwrap();
        let r = l
            .renew(&id("a"), &NodeId::from("alice"), 120_000, NOW + 30_000)
            .unwrap();
        assert_eq!(r.expires_at_ms, NOW + 150_000);
        assert_eq!(r.lease_ms, 120_000);
        assert_eq!(r.created_at_ms, NOW);
        assert_eq!(l.get(&id("a")), Some(&r));
        assert_eq!(l.next_expiry(), Some(NOW + 150_000));
        // Clamped like a grant.
        let r = l
            .renew(&id("a"), &NodeId::from("alice"), 1, NOW + 40_000)
            .unwrap();
        assert_eq!(r.expires_at_ms, NOW + 41_000);
        // 0 reuses the lease's own length.
        let r = l
            .renew(&id("a"), &NodeId::from("alice"), 0, NOW + 40_500)
            .unwrap();
        assert_eq!(r.expires_at_ms, NOW + 41_500);

        let d = l
            .renew(&id("a"), &NodeId::from("mallory"), 60_000, NOW + 41_000)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::NotHolder);
        assert_eq!(l.get(&id("a")).unwrap().expires_at_ms, NOW + 41_500);

        let d = l
            .renew(&id("zz"), &NodeId::from("alice"), 60_000, NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::UnknownLease);
        // Used totals are untouched by renewals.
        assert_eq!(l.used().cpu_cores, 2);
    }

    #[test]
    fn renew_after_expiry_is_unknown_and_frees_the_lease() {
        let mut l = ledger();
        l.allocate(input("a", "alice", cpu(8)), NOW).unwrap();
        let d = l
            .renew(&id("a"), &NodeId::from("alice"), 60_000, NOW + 60_000)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::UnknownLease);
        assert!(d.message.contains("ran out"), "{}", d.message);
        assert!(l.get(&id("a")).is_none());
        assert_eq!(l.free(), cap());
        assert_eq!(l.next_expiry(), None);
        // Even a non-holder trying to renew an expired lease sees it gone.
        l.allocate(input("b", "alice", cpu(1)), NOW).unwrap();
        let d = l
            .renew(&id("b"), &NodeId::from("bob"), 60_000, NOW + 70_000)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::UnknownLease);
        assert!(l.is_empty());
    }

    #[test]
    fn expire_removes_exactly_the_leases_that_ran_out() {
        let mut l = ledger();
        for (name, ms) in [("a", 5_000), ("b", 2_000), ("c", 2_000), ("d", 9_000)] {
            let mut i = input(name, "h", cpu(1));
            i.lease_ms = ms;
            l.allocate(i, NOW).unwrap();
        }
        assert_eq!(l.next_expiry(), Some(NOW + 2_000));
        assert!(l.expire(NOW + 1_999).is_empty());
        let gone: Vec<_> = l
            .expire(NOW + 2_000)
            .into_iter()
            .map(|x| x.lease_id.0)
            .collect();
        assert_eq!(gone, vec!["b", "c"]);
        assert_eq!(l.next_expiry(), Some(NOW + 5_000));
        assert_eq!(l.used().cpu_cores, 2);
        let gone: Vec<_> = l
            .expire(u64::MAX)
            .into_iter()
            .map(|x| x.lease_id.0)
            .collect();
        assert_eq!(gone, vec!["a", "d"]);
        assert!(l.is_empty());
        assert_eq!(l.free(), cap());
    }

    #[test]
    fn check_changes_nothing() {
        let l = ledger();
        assert_eq!(
            l.check(&gpu_mem(1, 8_000)),
            Ok(vec![GpuSlot {
                index: 0,
                memory_mb: 8_000
            }])
        );
        assert_eq!(
            l.check(&cpu(9)).unwrap_err().reason,
            DenyReason::InsufficientCapacity
        );
        assert!(l.is_empty());
        assert_eq!(l.free(), cap());
    }

    #[test]
    fn restore_readmits_what_fits_and_refuses_the_rest() {
        let mut old = ledger();
        let mut short = input("short", "h", cpu(1));
        short.lease_ms = 1_000;
        old.allocate(short, NOW).unwrap();
        old.allocate(input("big", "h", cpu(5)), NOW + 1).unwrap();
        old.allocate(input("small", "h", cpu(2)), NOW).unwrap();
        old.allocate(input("gpu", "h", gpu_mem(1, 8_000)), NOW)
            .unwrap();
        let mut foreign = old.get(&id("small")).unwrap().clone();
        foreign.lease_id = id("foreign");
        foreign.node_id = NodeId::from("someone-else");
        let mut stored: Vec<Lease> = old.leases().cloned().collect();
        stored.push(foreign);
        let bytes = postcard::to_stdvec(&stored).unwrap();
        let stored: Vec<Lease> = postcard::from_bytes(&bytes).unwrap();

        // The node restarts with fewer cores and one GPU less.
        let mut smaller = cap();
        smaller.cpu_cores = 6;
        smaller.gpus.truncate(1);
        let mut l = Ledger::new(node(), smaller.clone(), LeaseLimits::default());
        let refused = l.restore(stored, NOW + 5_000);
        let mut refused: Vec<_> = refused.into_iter().map(|x| x.lease_id.0).collect();
        refused.sort();
        // "short" ran out; "big" came after "small" (older first) and no
        // longer fits; "foreign" is not ours. "gpu" was on GPU 0, which is
        // still there.
        assert_eq!(refused, vec!["big", "foreign", "short"]);
        let kept: Vec<_> = l.leases().map(|x| x.lease_id.0.clone()).collect();
        assert_eq!(kept, vec!["gpu", "small"]);
        assert_eq!(l.get(&id("small")), old.get(&id("small")));
        assert_eq!(l.free().cpu_cores, 4);
        assert_eq!(l.free().gpus, gpus(&[0]));
    }

    #[test]
    fn restore_refuses_leases_on_a_gpu_that_is_gone_or_too_small() {
        let mut old = Ledger::new(
            node(),
            Capacity {
                gpus: gpus(&[8_000, 8_000]),
                ..Default::default()
            },
            LeaseLimits::default(),
        );
        let a = old
            .allocate(input("a", "h", gpu_mem(1, 8_000)), NOW)
            .unwrap();
        let b = old
            .allocate(input("b", "h", gpu_mem(1, 8_000)), NOW)
            .unwrap();
        assert_eq!((a.gpus[0].index, b.gpus[0].index), (0, 1));
        let mut l = Ledger::new(
            node(),
            Capacity {
                gpus: vec![GpuSlot {
                    index: 1,
                    memory_mb: 4_000,
                }],
                ..Default::default()
            },
            LeaseLimits::default(),
        );
        let refused = l.restore(vec![a.clone(), b.clone()], NOW);
        assert_eq!(refused, vec![a, b]);
        assert!(l.is_empty());
    }

    #[test]
    fn restore_skips_ids_it_already_has_and_respects_max_leases() {
        let mut l = Ledger::new(
            node(),
            cap(),
            LeaseLimits {
                max_leases: 2,
                ..Default::default()
            },
        );
        let a = l.allocate(input("a", "h", cpu(1)), NOW).unwrap();
        let mut other = Ledger::new(node(), cap(), LeaseLimits::default());
        let a2 = other.allocate(input("a", "h2", cpu(1)), NOW).unwrap();
        let b = other.allocate(input("b", "h", cpu(1)), NOW).unwrap();
        let c = other.allocate(input("c", "h", cpu(1)), NOW).unwrap();
        let refused = l.restore(vec![a2, b, c.clone()], NOW);
        assert_eq!(refused, vec![c]);
        assert_eq!(l.get(&id("a")), Some(&a));
        assert_eq!(l.len(), 2);
        assert_eq!(l.used().cpu_cores, 2);
    }

    #[test]
    fn set_capacity_shrink_keeps_leases_and_blocks_new_ones() {
        let mut l = ledger();
        l.allocate(input("a", "h", cpu(6)), NOW).unwrap();
        l.allocate(input("g", "h", gpu_mem(1, 8_000)), NOW).unwrap();
        let mut smaller = cap();
        smaller.cpu_cores = 4;
        smaller.gpus = gpus(&[8_000]);
        l.set_capacity(smaller.clone());
        assert_eq!(l.capacity(), &smaller);
        assert_eq!(l.len(), 2);
        let free = l.free();
        assert_eq!(free.cpu_cores, 0, "saturates, never underflows");
        assert_eq!(free.gpus, gpus(&[0]));
        assert_eq!(l.used().cpu_cores, 6);
        let d = l.allocate(input("b", "h", cpu(1)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        let d = l.allocate(input("b", "h", gpu_mem(1, 1)), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        // Other dimensions are still lendable.
        l.allocate(
            input(
                "m",
                "h",
                ResourceRequirements {
                    memory_mb: 1_024,
                    ..Default::default()
                },
            ),
            NOW,
        )
        .unwrap();
        l.release(&id("a"), None).unwrap();
        assert_eq!(l.free().cpu_cores, 4);
        l.allocate(input("b", "h", cpu(4)), NOW).unwrap();
        assert_eq!(l.free().cpu_cores, 0);
        assert_eq!(l.used().cpu_cores, 4);
    }

    #[test]
    fn repeated_gpu_indices_count_once() {
        let mut l = Ledger::new(
            node(),
            Capacity {
                gpus: vec![
                    GpuSlot {
                        index: 3,
                        memory_mb: 8_000,
                    },
                    GpuSlot {
                        index: 3,
                        memory_mb: 8_000,
                    },
                ],
                ..Default::default()
            },
            LeaseLimits::default(),
        );
        assert_eq!(l.capacity().gpus.len(), 1);
        let d = l
            .allocate(input("a", "h", gpu_mem(2, 1_000)), NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
    }

    #[test]
    fn extreme_values_never_panic() {
        let huge = Capacity {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
            disk_mb: u64::MAX,
            gpus: vec![GpuSlot {
                index: u32::MAX,
                memory_mb: u64::MAX,
            }],
            custom: [("x".to_string(), u64::MAX)].into_iter().collect(),
        };
        let limits = LeaseLimits {
            min_lease_ms: u64::MAX,
            max_lease_ms: u64::MAX,
            max_leases: usize::MAX,
        };
        let mut l = Ledger::new(node(), huge.clone(), limits);
        let all = ResourceRequirements {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
            disk_mb: u64::MAX,
            gpu_count: 1,
            gpu_memory_mb: u64::MAX,
            custom: [("x".to_string(), u64::MAX)].into_iter().collect(),
            ..Default::default()
        };
        let mut i = input("a", "h", all.clone());
        i.lease_ms = u64::MAX;
        let a = l.allocate(i, u64::MAX - 1).unwrap();
        assert_eq!(a.expires_at_ms, u64::MAX);
        assert_eq!(l.free().memory_mb, 0);
        assert_eq!(
            l.allocate(input("b", "h", all.clone()), u64::MAX)
                .unwrap_err()
                .reason,
            DenyReason::InsufficientCapacity
        );
        l.renew(&id("a"), &NodeId::from("h"), u64::MAX, u64::MAX - 2)
            .unwrap();
        let mut gpu_many = all.clone();
        gpu_many.gpu_count = u32::MAX;
        assert!(l.check(&gpu_many).is_err());
        assert_eq!(l.expire(u64::MAX).len(), 1);
        assert_eq!(l.free(), huge);
        // Restoring a lease that claims more than there is.
        let mut bogus = a.clone();
        bogus.gpus.push(bogus.gpus[0].clone());
        let refused = l.restore(vec![bogus], 0);
        assert_eq!(refused.len(), 1);
        assert!(l.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        const HOLDERS: [&str; 3] = ["h0", "h1", "h2"];

        fn limits() -> LeaseLimits {
            LeaseLimits {
                min_lease_ms: 1_000,
                max_lease_ms: 15_000,
                max_leases: 6,
            }
        }

        fn arb_capacity() -> impl Strategy<Value = Capacity> {
            // Mostly roomy enough for several requests at once, sometimes
            // tiny or empty.
            (
                prop_oneof![1 => 0u32..16, 3 => 4u32..16],
                prop_oneof![1 => 0u64..4_096, 3 => 1_024u64..4_096],
                prop_oneof![1 => 0u64..4_096, 3 => 1_024u64..4_096],
                prop::collection::vec(prop_oneof![1 => 0u64..16_000, 3 => 4_000u64..16_000], 0..4),
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u64..10, 0..=2),
            )
                .prop_map(|(cpu_cores, memory_mb, disk_mb, gpus, custom)| Capacity {
                    cpu_cores,
                    memory_mb,
                    disk_mb,
                    // Indices that are not positions, to catch mix-ups.
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
            // (gpu_count, gpu_required, gpu_memory_mb): mostly no GPU.
            let gpu = prop_oneof![
                5 => Just((0u32, false, 0u64)),
                2 => (0u32..3, any::<bool>(), prop_oneof![Just(0u64), 1u64..2_000, 0u64..9_000]),
            ];
            let custom = prop_oneof![
                3 => Just(BTreeMap::new()),
                2 => prop::collection::btree_map(
                    // "c" is never lent.
                    prop::sample::select(vec!["a", "b", "c"]),
                    0u64..6,
                    1..=2,
                ),
            ];
            (
                prop_oneof![0u32..2, 0u32..5],
                // Mostly small, so that many leases can be active at once
                // (and `max_leases` is reached), sometimes large.
                prop_oneof![Just(0u64), 1u64..200, 0u64..1_500],
                prop_oneof![Just(0u64), 1u64..200, 0u64..1_500],
                gpu,
                custom,
            )
                .prop_map(|(cpu_cores, memory_mb, disk_mb, gpu, custom)| {
                    ResourceRequirements {
                        cpu_cores,
                        memory_mb,
                        disk_mb,
                        gpu_count: gpu.0,
                        gpu_required: gpu.1,
                        gpu_memory_mb: gpu.2,
                        preferred_models: Vec::new(),
                        custom: custom
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    }
                })
        }

        #[derive(Clone, Debug)]
        enum Op {
            Allocate {
                req: ResourceRequirements,
                holder: usize,
                lease_ms: u64,
                /// Reuse an id issued before (maybe still active) or not.
                reuse: Option<Index>,
            },
            /// Renew an active lease (`active`) or any id ever issued.
            Renew {
                pick: Index,
                active: bool,
                holder: usize,
                lease_ms: u64,
            },
            /// Release an active lease (`active`), any id ever issued, or
            /// (`pick` None) an id never issued.
            Release {
                pick: Option<Index>,
                active: bool,
                holder: Option<usize>,
            },
            Advance(u64),
            Expire,
            Restart {
                foreign: bool,
            },
            /// Set the capacity to the initial one with each dimension scaled
            /// by factor/2 (0, ½, 1, 1½ or 2): it shrinks and grows.
            Resize {
                factors: [u64; 4],
                drop_gpu: bool,
                drop_custom: bool,
            },
        }

        /// Lease lengths and time steps on a coarse grid, so expiries often
        /// land exactly on `now`.
        fn arb_ms(steps: u64) -> impl Strategy<Value = u64> {
            (0..steps).prop_map(|x| x * 500)
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            let allocate = (
                arb_req(),
                0..3usize,
                prop_oneof![1 => Just(0u64), 9 => arb_ms(40)],
                prop::option::weighted(0.1, any::<Index>()),
            )
                .prop_map(|(req, holder, lease_ms, reuse)| Op::Allocate {
                    req,
                    holder,
                    lease_ms,
                    reuse,
                });
            let renew = (
                any::<Index>(),
                prop::bool::weighted(0.8),
                0..3usize,
                arb_ms(40),
            )
                .prop_map(|(pick, active, holder, lease_ms)| Op::Renew {
                    pick,
                    active,
                    holder,
                    lease_ms,
                });
            let release = (
                prop::option::weighted(0.9, any::<Index>()),
                prop::bool::weighted(0.8),
                prop::option::of(0..3usize),
            )
                .prop_map(|(pick, active, holder)| Op::Release {
                    pick,
                    active,
                    holder,
                });
            let resize = (
                [0u64..=4, 0u64..=4, 0u64..=4, 0u64..=4],
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(factors, drop_gpu, drop_custom)| Op::Resize {
                    factors,
                    drop_gpu,
                    drop_custom,
                });
            prop_oneof![
                8 => allocate,
                3 => renew,
                3 => release,
                3 => arb_ms(8).prop_map(Op::Advance),
                2 => Just(Op::Expire),
                1 => any::<bool>().prop_map(|foreign| Op::Restart { foreign }),
                1 => resize,
            ]
        }

        /// What a set of leases uses, recomputed from scratch, in u128 so
        /// the sums themselves cannot overflow.
        #[derive(Debug, Default)]
        struct Sums {
            cpu: u128,
            mem: u128,
            disk: u128,
            gpus: BTreeMap<u32, u128>,
            custom: BTreeMap<String, u128>,
        }

        fn sums<'a>(leases: impl Iterator<Item = &'a Lease>) -> Sums {
            let mut s = Sums::default();
            for l in leases {
                s.cpu += l.cpu_cores as u128;
                s.mem += l.memory_mb as u128;
                s.disk += l.disk_mb as u128;
                for g in &l.gpus {
                    *s.gpus.entry(g.index).or_default() += g.memory_mb as u128;
                }
                for (k, v) in &l.custom {
                    *s.custom.entry(k.clone()).or_default() += *v as u128;
                }
            }
            s
        }

        fn sub(cap: u64, used: u128) -> u64 {
            (cap as u128).saturating_sub(used) as u64
        }

        /// Capacity minus the sums, as `free()` should report it.
        fn expected_free(cap: &Capacity, s: &Sums) -> Capacity {
            Capacity {
                cpu_cores: sub(cap.cpu_cores as u64, s.cpu) as u32,
                memory_mb: sub(cap.memory_mb, s.mem),
                disk_mb: sub(cap.disk_mb, s.disk),
                gpus: cap
                    .gpus
                    .iter()
                    .map(|g| GpuSlot {
                        index: g.index,
                        memory_mb: sub(g.memory_mb, s.gpus.get(&g.index).copied().unwrap_or(0)),
                    })
                    .collect(),
                custom: cap
                    .custom
                    .iter()
                    .map(|(k, v)| (k.clone(), sub(*v, s.custom.get(k).copied().unwrap_or(0))))
                    .collect(),
            }
        }

        /// I1: the active leases fit in `cap`, in every dimension, on every
        /// GPU and for every custom key.
        fn assert_within(cap: &Capacity, s: &Sums) -> Result<(), TestCaseError> {
            prop_assert!(
                s.cpu <= cap.cpu_cores as u128,
                "cpu {} > {}",
                s.cpu,
                cap.cpu_cores
            );
            prop_assert!(s.mem <= cap.memory_mb as u128);
            prop_assert!(s.disk <= cap.disk_mb as u128);
            for (index, used) in &s.gpus {
                let have = cap
                    .gpus
                    .iter()
                    .find(|g| g.index == *index)
                    .map(|g| g.memory_mb);
                prop_assert!(
                    *used == 0 || have.is_some_and(|h| *used <= h as u128),
                    "gpu {index}: {used} used of {have:?}"
                );
            }
            for (k, used) in &s.custom {
                let have = cap.custom.get(k).copied().unwrap_or(0);
                prop_assert!(*used <= have as u128, "custom.{k}: {used} of {have}");
            }
            Ok(())
        }

        /// After a grant, every dimension the new lease takes from is within
        /// capacity, whatever happened to capacity before.
        fn assert_grant_within(
            cap: &Capacity,
            s: &Sums,
            lease: &Lease,
        ) -> Result<(), TestCaseError> {
            if lease.cpu_cores > 0 {
                prop_assert!(s.cpu <= cap.cpu_cores as u128);
            }
            if lease.memory_mb > 0 {
                prop_assert!(s.mem <= cap.memory_mb as u128);
            }
            if lease.disk_mb > 0 {
                prop_assert!(s.disk <= cap.disk_mb as u128);
            }
            for g in &lease.gpus {
                let have = cap
                    .gpus
                    .iter()
                    .find(|c| c.index == g.index)
                    .map(|c| c.memory_mb);
                prop_assert!(have.is_some(), "granted GPU {} that is not lent", g.index);
                prop_assert!(s.gpus[&g.index] <= have.unwrap_or(0) as u128);
            }
            for k in lease.custom.keys() {
                prop_assert!(s.custom[k] <= cap.custom.get(k).copied().unwrap_or(0) as u128);
            }
            Ok(())
        }

        /// The ledger matches the model, and its cached totals match a
        /// recomputation from scratch.
        fn assert_consistent(
            l: &Ledger,
            model: &BTreeMap<LeaseId, Lease>,
        ) -> Result<(), TestCaseError> {
            let got: Vec<&Lease> = l.leases().collect();
            let want: Vec<&Lease> = model.values().collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(l.len(), model.len());
            prop_assert_eq!(l.is_empty(), model.is_empty());
            prop_assert_eq!(
                l.next_expiry(),
                model.values().map(|x| x.expires_at_ms).min()
            );
            let s = sums(model.values());
            prop_assert_eq!(l.free(), expected_free(l.capacity(), &s));
            let used = l.used();
            prop_assert_eq!(used.cpu_cores as u128, s.cpu);
            prop_assert_eq!(used.memory_mb as u128, s.mem);
            prop_assert_eq!(used.disk_mb as u128, s.disk);
            let used_gpus: BTreeMap<u32, u128> = used
                .gpus
                .iter()
                .map(|g| (g.index, g.memory_mb as u128))
                .collect();
            let want_gpus: BTreeMap<u32, u128> = s
                .gpus
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (*k, *v))
                .collect();
            prop_assert_eq!(used_gpus, want_gpus);
            let used_custom: BTreeMap<String, u128> = used
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), *v as u128))
                .collect();
            let want_custom: BTreeMap<String, u128> = s
                .custom
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            prop_assert_eq!(used_custom, want_custom);
            Ok(())
        }

        fn resize(
            cap: &Capacity,
            factors: [u64; 4],
            drop_gpu: bool,
            drop_custom: bool,
        ) -> Capacity {
            let scale = |v: u64, f: u64| v.saturating_mul(f) / 2;
            let mut c = Capacity {
                cpu_cores: scale(cap.cpu_cores as u64, factors[0]) as u32,
                memory_mb: scale(cap.memory_mb, factors[1]),
                disk_mb: cap.disk_mb,
                gpus: cap
                    .gpus
                    .iter()
                    .map(|g| GpuSlot {
                        index: g.index,
                        memory_mb: scale(g.memory_mb, factors[2]),
                    })
                    .collect(),
                custom: cap
                    .custom
                    .iter()
                    .map(|(k, v)| (k.clone(), scale(*v, factors[3])))
                    .collect(),
            };
            c.disk_mb = scale(c.disk_mb, factors[1]);
            if drop_gpu {
                c.gpus.pop();
            }
            if drop_custom {
                c.custom.pop_first();
            }
            c
        }

        /// An active lease's id (if `active` and there is one), else any id
        /// ever issued.
        fn pick_id(
            ids: &[LeaseId],
            model: &BTreeMap<LeaseId, Lease>,
            pick: Index,
            active: bool,
        ) -> Option<LeaseId> {
            if active && !model.is_empty() {
                model.keys().nth(pick.index(model.len())).cloned()
            } else if !ids.is_empty() {
                Some(ids[pick.index(ids.len())].clone())
            } else {
                None
            }
        }

        fn run(cap0: Capacity, ops: Vec<Op>) -> Result<(), TestCaseError> {
            let me = NodeId::from("owner");
            let limits = limits();
            let mut l = Ledger::new(me.clone(), cap0.clone(), limits.clone());
            let mut model: BTreeMap<LeaseId, Lease> = BTreeMap::new();
            let mut ids: Vec<LeaseId> = Vec::new();
            let mut next_id = 0u64;
            let mut now = NOW;
            // True while leases may exceed capacity because it shrank under
            // them; a restart re-admits only what fits and clears it.
            let mut maybe_over = false;

            for op in ops {
                match op {
                    Op::Allocate {
                        req,
                        holder,
                        lease_ms,
                        reuse,
                    } => {
                        let lease_id = match reuse {
                            Some(ix) if !ids.is_empty() => ids[ix.index(ids.len())].clone(),
                            _ => {
                                next_id += 1;
                                let id = LeaseId(format!("L{next_id}"));
                                ids.push(id.clone());
                                id
                            }
                        };
                        let cap = l.capacity().clone();
                        let free = expected_free(&cap, &sums(model.values()));
                        let expected =
                            if req.is_empty() || lease_ms == 0 || model.contains_key(&lease_id) {
                                Err(DenyReason::BadRequest)
                            } else if model.len() >= limits.max_leases {
                                Err(DenyReason::InsufficientCapacity)
                            } else {
                                fit(&free, &cap, &req).map_err(|_| DenyReason::InsufficientCapacity)
                            };
                        let got = l.allocate(
                            AllocateInput {
                                lease_id: lease_id.clone(),
                                request_id: format!("r-{}", lease_id),
                                holder: NodeId::from(HOLDERS[holder]),
                                req: req.clone(),
                                task_type: String::new(),
                                priority: Priority::Normal,
                                lease_ms,
                            },
                            now,
                        );
                        match (got, expected) {
                            (Ok(lease), Ok(gpus)) => {
                                prop_assert_eq!(&lease.gpus, &gpus);
                                prop_assert_eq!(&lease.lease_id, &lease_id);
                                prop_assert_eq!(&lease.node_id, &me);
                                prop_assert_eq!(lease.cpu_cores, req.cpu_cores);
                                prop_assert_eq!(lease.memory_mb, req.memory_mb);
                                prop_assert_eq!(lease.disk_mb, req.disk_mb);
                                let custom: BTreeMap<String, u64> = req
                                    .custom
                                    .iter()
                                    .filter(|(_, v)| **v > 0)
                                    .map(|(k, v)| (k.clone(), *v))
                                    .collect();
                                prop_assert_eq!(&lease.custom, &custom);
                                prop_assert_eq!(&lease.holder, &NodeId::from(HOLDERS[holder]));
                                prop_assert_eq!(lease.created_at_ms, now);
                                prop_assert_eq!(lease.lease_ms, limits.clamp_lease_ms(lease_ms));
                                prop_assert_eq!(lease.expires_at_ms, now + lease.lease_ms);
                                prop_assert_eq!(lease.gpus.len() as u32, req.gpus_wanted());
                                model.insert(lease_id, lease.clone());
                                assert_grant_within(&cap, &sums(model.values()), &lease)?;
                            }
                            (Err(d), Err(reason)) => prop_assert_eq!(d.reason, reason),
                            (got, expected) => {
                                return Err(TestCaseError::fail(format!(
                                    "allocate {req:?}: got {got:?}, expected {expected:?}"
                                )))
                            }
                        }
                    }
                    Op::Renew {
                        pick,
                        active,
                        holder,
                        lease_ms,
                    } => {
                        let Some(id) = pick_id(&ids, &model, pick, active) else {
                            continue;
                        };
                        let holder = NodeId::from(HOLDERS[holder]);
                        let got = l.renew(&id, &holder, lease_ms, now);
                        match model.get(&id).cloned() {
                            None => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::UnknownLease)
                            }
                            Some(m) if m.expires_at_ms <= now => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::UnknownLease);
                                model.remove(&id);
                            }
                            Some(m) if m.holder != holder => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::NotHolder)
                            }
                            Some(mut m) => {
                                let asked = if lease_ms == 0 { m.lease_ms } else { lease_ms };
                                m.lease_ms = limits.clamp_lease_ms(asked);
                                m.expires_at_ms = now + m.lease_ms;
                                prop_assert_eq!(got, Ok(m.clone()));
                                model.insert(id, m);
                            }
                        }
                    }
                    Op::Release {
                        pick,
                        active,
                        holder,
                    } => {
                        let id = pick
                            .and_then(|ix| pick_id(&ids, &model, ix, active))
                            .unwrap_or_else(|| LeaseId("never-issued".into()));
                        let holder = holder.map(|h| NodeId::from(HOLDERS[h]));
                        let got = l.release(&id, holder.as_ref());
                        match model.get(&id) {
                            None => prop_assert_eq!(got, Ok(None)),
                            Some(m) if holder.as_ref().is_some_and(|h| *h != m.holder) => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::NotHolder)
                            }
                            Some(_) => {
                                let m = model.remove(&id);
                                prop_assert_eq!(got, Ok(m));
                            }
                        }
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Expire => {
                        let got = l.expire(now);
                        let mut want: Vec<Lease> = model
                            .values()
                            .filter(|x| x.expires_at_ms <= now)
                            .cloned()
                            .collect();
                        want.sort_by(|a, b| {
                            (a.expires_at_ms, &a.lease_id).cmp(&(b.expires_at_ms, &b.lease_id))
                        });
                        for x in &want {
                            model.remove(&x.lease_id);
                        }
                        prop_assert_eq!(got, want);
                    }
                    Op::Restart { foreign } => {
                        let mut stored: Vec<Lease> = l.leases().cloned().collect();
                        if foreign {
                            stored.push(Lease {
                                lease_id: LeaseId("foreign".into()),
                                request_id: "r".into(),
                                node_id: NodeId::from("someone-else"),
                                holder: NodeId::from("h0"),
                                cpu_cores: 0,
                                memory_mb: 0,
                                disk_mb: 0,
                                gpus: Vec::new(),
                                custom: BTreeMap::new(),
                                models: Vec::new(),
                                task_type: String::new(),
                                priority: Priority::Low,
                                created_at_ms: now,
                                expires_at_ms: now + 1_000,
                                lease_ms: 1_000,
                            });
                        }
                        let bytes = postcard::to_stdvec(&stored).unwrap();
                        let decoded: Vec<Lease> = postcard::from_bytes(&bytes).unwrap();
                        prop_assert_eq!(&decoded, &stored);

                        let mut fresh =
                            Ledger::new(me.clone(), l.capacity().clone(), limits.clone());
                        let refused = fresh.restore(decoded, now);
                        let mut accounted: Vec<LeaseId> = fresh
                            .leases()
                            .chain(refused.iter())
                            .map(|x| x.lease_id.clone())
                            .collect();
                        accounted.sort();
                        let mut all: Vec<LeaseId> =
                            stored.iter().map(|x| x.lease_id.clone()).collect();
                        all.sort();
                        prop_assert_eq!(accounted, all, "every stored lease kept or refused");
                        for kept in fresh.leases() {
                            prop_assert!(kept.expires_at_ms > now);
                            prop_assert_eq!(&kept.node_id, &me);
                            prop_assert_eq!(Some(kept), model.get(&kept.lease_id));
                        }
                        for r in &refused {
                            let expired = r.expires_at_ms <= now;
                            let alien = r.node_id != me;
                            // Without a shrink everything unexpired fits, so
                            // a restart must keep it.
                            prop_assert!(
                                expired || alien || maybe_over,
                                "restart lost {:?}",
                                r.lease_id
                            );
                        }
                        if foreign {
                            prop_assert!(fresh.get(&LeaseId("foreign".into())).is_none());
                        }
                        // Restored leases fit the capacity again.
                        assert_within(fresh.capacity(), &sums(fresh.leases()))?;
                        model = fresh
                            .leases()
                            .map(|x| (x.lease_id.clone(), x.clone()))
                            .collect();
                        l = fresh;
                        maybe_over = false;
                    }
                    Op::Resize {
                        factors,
                        drop_gpu,
                        drop_custom,
                    } => {
                        let c = resize(&cap0, factors, drop_gpu, drop_custom);
                        l.set_capacity(c.clone());
                        prop_assert_eq!(l.capacity(), &c);
                        maybe_over = true;
                    }
                }
                assert_consistent(&l, &model)?;
                if !maybe_over {
                    assert_within(l.capacity(), &sums(model.values()))?;
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Random requests, renewals, releases, expiries, restarts and
            /// capacity changes never over-commit, and the cached totals
            /// always match a recomputation.
            #[test]
            fn ledger_never_overcommits(
                cap in arb_capacity(),
                ops in prop::collection::vec(arb_op(), 1..200),
            ) {
                run(cap, ops)?;
            }

            /// After capacity shrinks under existing leases, no new grant
            /// takes from a dimension that is over, and once enough is
            /// released every new grant fits in the new capacity.
            #[test]
            fn shrink_never_admits_beyond_the_new_capacity(
                cap in arb_capacity(),
                before in prop::collection::vec(arb_req(), 0..12),
                factors in [0u64..=2, 0u64..=2, 0u64..=2, 0u64..=2],
                drop_gpu in any::<bool>(),
                after in prop::collection::vec(arb_req(), 0..12),
            ) {
                let me = NodeId::from("owner");
                let mut l = Ledger::new(me, cap.clone(), limits());
                for (i, req) in before.into_iter().enumerate() {
                    let _ = l.allocate(input(&format!("b{i}"), "h0", req), NOW);
                }
                let old: BTreeMap<LeaseId, Lease> =
                    l.leases().map(|x| (x.lease_id.clone(), x.clone())).collect();
                let small = resize(&cap, factors, drop_gpu, false);
                l.set_capacity(small.clone());
                // Existing leases stay.
                prop_assert_eq!(l.leases().cloned().collect::<Vec<_>>(),
                                old.values().cloned().collect::<Vec<_>>());
                for (i, req) in after.into_iter().enumerate() {
                    if let Ok(lease) = l.allocate(input(&format!("a{i}"), "h1", req), NOW) {
                        let s = sums(l.leases());
                        assert_grant_within(&small, &s, &lease)?;
                    }
                    // Drain the old leases one by one as we go.
                    if let Some(id) = old.keys().nth(i) {
                        l.release(id, None).unwrap();
                    }
                }
                for id in old.keys() {
                    l.release(id, None).unwrap();
                }
                // Only post-shrink grants are left: they fit the new capacity.
                assert_within(&small, &sums(l.leases()))?;
                let s = sums(l.leases());
                prop_assert_eq!(l.free(), expected_free(&small, &s));
            }
        }
    }
}
