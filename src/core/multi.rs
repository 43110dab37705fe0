//! Multi-node requests: one request split into identical parts that may
//! land on different nodes ("4 GPUs with ≥ 16 GiB each, anywhere", "3
//! parts of 8 cores on distinct nodes"), and the two-phase reservation
//! that takes them all or none (seeds 001/002's reservation lifecycle,
//! seed 003's greedy, balanced and best-fit splitting).
//!
//! # Planning
//!
//! [`plan`] decides which node takes which part from the candidates'
//! *announced* free capacity (the requester's guess; every owner still
//! decides on its own ledger). Parts placed on one node are accounted
//! cumulatively: each is [`fit`] against what the previous ones left, with
//! the same GPU choice the owner's ledger makes, so a node is never planned
//! more parts than its announced free capacity holds.
//!
//! All parts ask for the same thing, so how many parts a node can take is
//! a number `room(node)` found by that cumulative simulation, independent
//! of the other nodes. Hence the whole fits (with [`Affinity::Any`] or
//! [`Affinity::Pack`]) exactly when `Σ min(room, parts) ≥ parts`, and with
//! [`Affinity::Spread`] exactly when at least `parts` nodes have
//! `room ≥ 1`; every [`SplitStrategy`] finds a plan whenever one exists,
//! and the strategies only differ in *which* plan.
//!
//! # The reservation lifecycle
//!
//! The requester drives a [`MultiReservation`]; the network shell does the
//! IO. First every part is *held* (a lease with a short term), then, once
//! every hold is answered, [`MultiReservation::decide`] says which leases
//! to *confirm* (renew to the full term) and which to release. Every
//! transition is total: a call that does not apply in the current state
//! changes nothing (and returns nothing to do), so replayed or late answers
//! are harmless.
//!
//! ```text
//!                held(i, lease) / refused(i, why), for every part
//!   new ──► Pending ───────────────────────────────────────┐
//!             │  decide():                                 │
//!             │   all held ───────────────► Pending(decided) ──confirmed(i), last one──► Confirmed
//!             │   some held, allow_partial ► Pending(decided) ──confirmed(i), last one──► Partial
//!             │   a refusal, !allow_partial ─────────────────────────────────────────► Failed
//!             │   none held, allow_partial ──────────────────────────────────────────► Failed
//!             │                            Pending(decided) ──confirm_refused(i):
//!             │                                 !allow_partial, or nothing confirmed ─► Failed
//!             │
//!   Pending ──expire(now ≥ hold_deadline_ms)──► Expired   (every held/confirmed lease released)
//!   Pending | Confirmed | Partial ──release_all()──► Released
//! ```
//!
//! `Failed`, `Expired` and `Released` are final. A hold answer that comes
//! when the part no longer waits for one (late, after a failure or expiry)
//! is handed back by [`MultiReservation::held`] so the shell releases it.
//! Every lease accepted by `held` is, from then on, either confirmed or
//! returned exactly once in some release list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::fit::fit;
use crate::core::placement::Candidate;
use crate::model::{Capacity, GpuSlot, LeaseId, NodeId, ResourceRequirements};

/// At most this many parts per request.
pub const MAX_PARTS: u32 = 64;

/// Where the parts may go relative to each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Anywhere; several parts may share a node.
    #[default]
    Any,
    /// Each part on a distinct node.
    Spread,
    /// On as few nodes as possible.
    Pack,
}

/// How the parts are shared out among the nodes that can take them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitStrategy {
    /// The nodes with the most room first (room = how many parts fit,
    /// then `NodeId`), each taking as many parts as fit.
    #[default]
    Greedy,
    /// Evenly: each part goes to the node with the fewest parts so far
    /// (then the most room left, then `NodeId`), which minimizes the most
    /// parts on any one node.
    Balanced,
    /// Bin packing: each part goes to the node with the least room left
    /// after taking it that still fits it (the score of
    /// [`Strategy::BestFit`](crate::core::placement::Strategy::BestFit),
    /// against what earlier parts left; then `NodeId`). Since all parts
    /// are the same size this is first-fit decreasing.
    BestFit,
}

/// A request split into `parts` identical parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiRequest {
    /// How many parts, `1..=`[`MAX_PARTS`].
    pub parts: u32,
    /// What each part needs.
    pub each: ResourceRequirements,
    #[serde(default)]
    pub affinity: Affinity,
    #[serde(default)]
    pub strategy: SplitStrategy,
    /// Accept fewer parts than asked (at least one) rather than none.
    #[serde(default)]
    pub allow_partial: bool,
}

impl MultiRequest {
    /// `parts` within `1..=`[`MAX_PARTS`], and each part asking for
    /// something.
    pub fn validate(&self) -> Result<(), String> {
        if self.parts == 0 || self.parts > MAX_PARTS {
            return Err(format!(
                "parts: {} given, 1..={MAX_PARTS} allowed",
                self.parts
            ));
        }
        if self.each.is_empty() {
            return Err("each: a part must ask for something".to_owned());
        }
        Ok(())
    }

    /// "`n` GPUs with at least `mem_mb` MiB each, anywhere": `n` parts of
    /// one GPU with `mem_mb` free, [`Affinity::Any`], greedy, all or none.
    pub fn gpus(n: u32, mem_mb: u64) -> Self {
        MultiRequest {
            parts: n,
            each: ResourceRequirements {
                gpu_count: 1,
                gpu_memory_mb: mem_mb,
                ..Default::default()
            },
            affinity: Affinity::Any,
            strategy: SplitStrategy::Greedy,
            allow_partial: false,
        }
    }
}

/// Which node takes which part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The node for each part, by part index. As long as the request's
    /// `parts`, or shorter (at least one) if `partial`.
    pub parts: Vec<NodeId>,
    /// Fewer parts than asked for could be placed (only with
    /// `allow_partial`).
    pub partial: bool,
}

impl Plan {
    /// How many parts each node takes.
    pub fn per_node(&self) -> BTreeMap<NodeId, u32> {
        let mut out = BTreeMap::new();
        for n in &self.parts {
            *out.entry(n.clone()).or_insert(0) += 1;
        }
        out
    }
}

/// `free` after a part that was assigned `gpus` takes `req` from it.
fn take(free: &Capacity, req: &ResourceRequirements, gpus: &[GpuSlot]) -> Capacity {
    let mut out = free.clone();
    out.cpu_cores = out.cpu_cores.saturating_sub(req.cpu_cores);
    out.memory_mb = out.memory_mb.saturating_sub(req.memory_mb);
    out.disk_mb = out.disk_mb.saturating_sub(req.disk_mb);
    for (name, want) in &req.custom {
        if let Some(have) = out.custom.get_mut(name) {
            *have = have.saturating_sub(*want);
        }
    }
    for g in gpus {
        if let Some(slot) = out.gpus.iter_mut().find(|s| s.index == g.index) {
            slot.memory_mb = slot.memory_mb.saturating_sub(g.memory_mb);
        }
    }
    out
}

/// The free capacity of `c` after each of up to `limit` successive parts:
/// `out[0]` is the announced free, `out[k]` what is left after `k` parts.
/// `out.len() - 1` parts fit.
fn frees_after(c: &Candidate, req: &ResourceRequirements, limit: u32) -> Vec<Capacity> {
    let mut out = vec![c.free.clone()];
    for _ in 0..limit {
        let Some(cur) = out.last() else { break };
        match fit(cur, &c.capacity, req) {
            Ok(gpus) => {
                let next = take(cur, req, &gpus);
                out.push(next);
            }
            Err(_) => break,
        }
    }
    out
}

/// How much room `free` leaves after one more part (lower = tighter), as
/// [`Strategy::BestFit`](crate::core::placement::Strategy::BestFit)
/// scores it: over the dimensions the part asks for, the sum of
/// `left / capacity`.
fn leftover(total: &Capacity, after: &Capacity, req: &ResourceRequirements) -> f64 {
    let frac = |left: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            left as f64 / cap as f64
        }
    };
    let mut score = 0.0;
    if req.cpu_cores > 0 {
        score += frac(after.cpu_cores.into(), total.cpu_cores.into());
    }
    if req.memory_mb > 0 {
        score += frac(after.memory_mb, total.memory_mb);
    }
    if req.disk_mb > 0 {
        score += frac(after.disk_mb, total.disk_mb);
    }
    if req.gpus_wanted() > 0 {
        score += frac(after.gpu_memory_mb(), total.gpu_memory_mb());
    }
    for (name, _) in req.custom.iter().filter(|(_, w)| **w > 0) {
        let left = after.custom.get(name).copied().unwrap_or(0);
        let cap = total.custom.get(name).copied().unwrap_or(0);
        score += frac(left, cap);
    }
    score
}

/// One node during planning.
struct Slot<'a> {
    cand: &'a Candidate,
    /// Free capacity after 0, 1, ... parts (see [`frees_after`]).
    frees: Vec<Capacity>,
    /// How many parts fit (`frees.len() - 1`).
    room: u32,
    /// How many parts it may take (`room`, or at most 1 with Spread).
    cap: u32,
    /// Parts planned so far.
    taken: u32,
}

/// Plan which node takes which part of `req`, from `candidates`' announced
/// free capacity.
///
/// - Parts on one node are accounted cumulatively (see the module docs):
///   a node never gets more parts than its announced free capacity holds.
/// - [`Affinity::Spread`]: at most one part per node.
/// - [`Affinity::Pack`]: the fewest nodes that can hold every part (the
///   nodes with the most room, ties by `NodeId`), the strategy then
///   sharing the parts out among those nodes only.
/// - [`Affinity::Any`]: the strategy shares the parts out among every
///   candidate.
///
/// The result depends only on the set of candidates, never on their
/// order; every tie is broken by `NodeId` ascending. Candidates are
/// expected to have distinct node ids (as the view produces them); of
/// duplicates only the first is used.
///
/// Whenever an assignment of every part exists, this returns one (for all
/// three strategies). Otherwise it places as many parts as can be placed
/// at all, and returns them as a `partial` plan if `req.allow_partial` and
/// at least one part fits, else `Err` saying how many parts fit where.
pub fn plan(req: &MultiRequest, candidates: &[Candidate]) -> Result<Plan, String> {
    req.validate()?;
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    sorted.dedup_by(|b, a| a.node_id == b.node_id);
    let mut slots: Vec<Slot> = sorted
        .iter()
        .map(|c| {
            let frees = frees_after(c, &req.each, req.parts);
            let room = frees.len().saturating_sub(1) as u32;
            let cap = match req.affinity {
                Affinity::Spread => room.min(1),
                Affinity::Any | Affinity::Pack => room,
            };
            Slot {
                cand: c,
                frees,
                room,
                cap,
                taken: 0,
            }
        })
        .collect();
    if req.affinity == Affinity::Pack {
        // Most room first, ties by id: the shortest prefix whose room
        // covers every part is a smallest set of nodes that does.
        slots.sort_by(|a, b| {
            b.cap
                .cmp(&a.cap)
                .then_with(|| a.cand.node_id.cmp(&b.cand.node_id))
        });
        let mut covered = 0u32;
        let mut keep = 0;
        for s in &slots {
            if covered >= req.parts || s.cap == 0 {
                break;
            }
            covered = covered.saturating_add(s.cap);
            keep += 1;
        }
        slots.truncate(keep);
        slots.sort_by(|a, b| a.cand.node_id.cmp(&b.cand.node_id));
    }
    let mut out: Vec<NodeId> = Vec::new();
    match req.strategy {
        SplitStrategy::Greedy => {
            let mut order: Vec<usize> = (0..slots.len()).collect();
            order.sort_by(|&a, &b| {
                slots[b]
                    .cap
                    .cmp(&slots[a].cap)
                    .then(slots[b].room.cmp(&slots[a].room))
                    .then_with(|| slots[a].cand.node_id.cmp(&slots[b].cand.node_id))
            });
            for i in order {
                let s = &mut slots[i];
                while s.taken < s.cap && (out.len() as u32) < req.parts {
                    s.taken += 1;
                    out.push(s.cand.node_id.clone());
                }
            }
        }
        SplitStrategy::Balanced => {
            while (out.len() as u32) < req.parts {
                // Fewest parts so far, then the most room left, then id
                // (slots are in id order and only a strictly better key
                // replaces the pick).
                let mut pick: Option<(usize, (u32, u32))> = None;
                for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.taken < s.cap) {
                    let key = (s.taken, u32::MAX - (s.room - s.taken));
                    if pick.is_none_or(|(_, k)| key < k) {
                        pick = Some((i, key));
                    }
                }
                let Some((i, _)) = pick else { break };
                slots[i].taken += 1;
                out.push(slots[i].cand.node_id.clone());
            }
        }
        SplitStrategy::BestFit => {
            while (out.len() as u32) < req.parts {
                let mut pick: Option<(usize, f64)> = None;
                for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.taken < s.cap) {
                    let Some(after) = s.frees.get(s.taken as usize + 1) else {
                        continue;
                    };
                    let score = leftover(&s.cand.capacity, after, &req.each);
                    if pick.is_none_or(|(_, best)| score.total_cmp(&best).is_lt()) {
                        pick = Some((i, score));
                    }
                }
                let Some((i, _)) = pick else { break };
                slots[i].taken += 1;
                out.push(slots[i].cand.node_id.clone());
            }
        }
    }
    let placed = out.len() as u32;
    if placed == req.parts {
        return Ok(Plan {
            parts: out,
            partial: false,
        });
    }
    if req.allow_partial && placed > 0 {
        return Ok(Plan {
            parts: out,
            partial: true,
        });
    }
    let usable = slots.iter().filter(|s| s.cap > 0).count();
    Err(match req.affinity {
        _ if sorted.is_empty() => "no candidates".to_owned(),
        Affinity::Spread => format!(
            "{} parts on distinct nodes wanted, only {usable} of {} candidate(s) can take a part",
            req.parts,
            sorted.len()
        ),
        Affinity::Any | Affinity::Pack => {
            let mut why = format!(
                "only {placed} of {} parts fit on {} candidate(s)",
                req.parts,
                sorted.len()
            );
            if let Some(c) = sorted.first() {
                if let Err(misfit) = fit(&c.free, &c.capacity, &req.each) {
                    why.push_str(&format!(" ({}: {misfit})", c.node_id));
                }
            }
            why
        }
    })
}

/// Where a multi-node reservation stands. See the module docs' diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultiStatus {
    /// Holding parts, or confirming them.
    Pending,
    /// Every part confirmed.
    Confirmed,
    /// Some parts confirmed, the rest refused (with `allow_partial`).
    Partial,
    /// Could not be had; every hold was released.
    Failed,
    /// Released by the requester.
    Released,
    /// Still pending at the hold deadline; everything was released.
    Expired,
}

impl MultiStatus {
    /// Whether no further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MultiStatus::Failed | MultiStatus::Released | MultiStatus::Expired
        )
    }
}

/// Where one part stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartStatus {
    /// Hold not answered yet.
    Planned,
    /// Held under this (short) lease.
    Held(LeaseId),
    /// Renewed to the full term.
    Confirmed(LeaseId),
    /// The owner refused the hold (or its confirmation), and why.
    Refused(String),
    /// Its lease was handed back for release (or it never got one and the
    /// reservation ended).
    Released,
}

/// What to do after [`MultiReservation::decide`]. No lease is in both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Renew these to the full term, then report with
    /// [`MultiReservation::confirmed`] or
    /// [`MultiReservation::confirm_refused`].
    pub confirm: Vec<LeaseId>,
    /// Release these.
    pub release: Vec<LeaseId>,
}

/// A multi-node reservation as its requester tracks it. See the module
/// docs for the lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiReservation {
    /// The requester's id for the whole.
    pub id: String,
    pub status: MultiStatus,
    /// Each part's node and state, by part index (the plan's order).
    pub parts: Vec<(NodeId, PartStatus)>,
    pub allow_partial: bool,
    pub created_at_ms: u64,
    /// Still [`MultiStatus::Pending`] at this time: [`Self::expire`] ends it.
    pub hold_deadline_ms: u64,
    /// Whether [`Self::decide`] has chosen what to confirm.
    #[serde(default)]
    pub decided: bool,
    /// Every lease accepted by [`Self::held`], with its part index, kept
    /// after release so the shell can route any returned lease to its node
    /// ([`Self::node_of`]). At most one per part.
    #[serde(default)]
    pub leases: BTreeMap<LeaseId, usize>,
}

impl MultiReservation {
    /// A reservation for `plan`, every part [`PartStatus::Planned`],
    /// [`MultiStatus::Pending`] until `now_ms + hold_ms`. An empty plan
    /// gives a [`MultiStatus::Failed`] reservation.
    pub fn new(
        id: impl Into<String>,
        plan: &Plan,
        allow_partial: bool,
        now_ms: u64,
        hold_ms: u64,
    ) -> Self {
        MultiReservation {
            id: id.into(),
            status: if plan.parts.is_empty() {
                MultiStatus::Failed
            } else {
                MultiStatus::Pending
            },
            parts: plan
                .parts
                .iter()
                .map(|n| (n.clone(), PartStatus::Planned))
                .collect(),
            allow_partial,
            created_at_ms: now_ms,
            hold_deadline_ms: now_ms.saturating_add(hold_ms),
            decided: false,
            leases: BTreeMap::new(),
        }
    }

    /// Whether holds are still being collected.
    fn collecting(&self) -> bool {
        self.status == MultiStatus::Pending && !self.decided
    }

    /// Whether confirmations are being collected.
    fn confirming(&self) -> bool {
        self.status == MultiStatus::Pending && self.decided
    }

    /// The node `lease` was held on, for any lease accepted by
    /// [`Self::held`] (also after it was released).
    pub fn node_of(&self, lease: &LeaseId) -> Option<&NodeId> {
        let part = *self.leases.get(lease)?;
        self.parts.get(part).map(|(n, _)| n)
    }

    /// Every lease currently held or confirmed, by part index.
    pub fn active_leases(&self) -> Vec<LeaseId> {
        self.parts
            .iter()
            .filter_map(|(_, s)| match s {
                PartStatus::Held(l) | PartStatus::Confirmed(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// Part `part`'s owner granted a hold under `lease`.
    ///
    /// Accepted when holds are being collected and the part is
    /// [`PartStatus::Planned`]. A lease already accepted (for any part) is
    /// a no-op returning `None`. Otherwise (late, unknown part, part
    /// already answered) the lease is returned: release it.
    #[must_use = "a returned lease is not tracked and must be released"]
    pub fn held(&mut self, part: usize, lease: LeaseId) -> Option<LeaseId> {
        if self.leases.contains_key(&lease) {
            return None;
        }
        let collecting = self.collecting();
        match self.parts.get_mut(part) {
            Some((_, s)) if collecting && *s == PartStatus::Planned => {
                *s = PartStatus::Held(lease.clone());
                self.leases.insert(lease, part);
                None
            }
            _ => Some(lease),
        }
    }

    /// Part `part`'s owner refused the hold. Applies only while holds are
    /// being collected and the part is [`PartStatus::Planned`].
    pub fn refused(&mut self, part: usize, why: String) {
        let collecting = self.collecting();
        if let Some((_, s)) = self.parts.get_mut(part) {
            if collecting && *s == PartStatus::Planned {
                *s = PartStatus::Refused(why);
            }
        }
    }

    /// Once every hold is answered (no part [`PartStatus::Planned`]),
    /// choose what to confirm and what to release:
    ///
    /// - every part held: confirm all; still `Pending` until confirmed;
    /// - a refusal without `allow_partial`: release every held lease (those
    ///   parts become [`PartStatus::Released`]), status `Failed`;
    /// - a refusal with `allow_partial` and at least one held: confirm the
    ///   held ones; `Partial` once they are confirmed;
    /// - nothing held: `Failed`.
    ///
    /// Before every hold is answered, or a second time, it does nothing
    /// and returns an empty decision.
    pub fn decide(&mut self) -> Decision {
        if !self.collecting() || self.parts.iter().any(|(_, s)| *s == PartStatus::Planned) {
            return Decision::default();
        }
        let held = self.active_leases();
        let refusal = held.len() < self.parts.len();
        if held.is_empty() || (refusal && !self.allow_partial) {
            self.status = MultiStatus::Failed;
            return Decision {
                confirm: Vec::new(),
                release: self.release_parts(),
            };
        }
        self.decided = true;
        Decision {
            confirm: held,
            release: Vec::new(),
        }
    }

    /// Part `part`'s lease was renewed to the full term. When no part is
    /// left waiting for its confirmation the status becomes `Confirmed`
    /// (every part confirmed) or `Partial`. Applies only after
    /// [`Self::decide`] chose to confirm, to a part [`PartStatus::Held`].
    pub fn confirmed(&mut self, part: usize) {
        if !self.confirming() {
            return;
        }
        if let Some((_, s)) = self.parts.get_mut(part) {
            if let PartStatus::Held(l) = s {
                *s = PartStatus::Confirmed(l.clone());
            }
        }
        self.settle();
    }

    /// Part `part`'s confirmation was refused (the owner no longer had the
    /// hold, say). Returns the leases to release: that part's lease, and,
    /// without `allow_partial`, every other held or confirmed lease too
    /// (status `Failed`). With `allow_partial` the part becomes
    /// [`PartStatus::Refused`] and the rest go on; if none ends up
    /// confirmed, the status is `Failed`. Applies only after
    /// [`Self::decide`] chose to confirm, to a part [`PartStatus::Held`].
    pub fn confirm_refused(&mut self, part: usize, why: String) -> Vec<LeaseId> {
        if !self.confirming() {
            return Vec::new();
        }
        let Some((_, s)) = self.parts.get_mut(part) else {
            return Vec::new();
        };
        let PartStatus::Held(lease) = s.clone() else {
            return Vec::new();
        };
        *s = PartStatus::Refused(why);
        let mut out = vec![lease];
        if !self.allow_partial {
            out.extend(self.release_parts());
            self.status = MultiStatus::Failed;
        } else {
            self.settle();
        }
        out
    }

    /// Give everything back: `Released`, returning every held or confirmed
    /// lease. From `Pending`, `Confirmed` or `Partial`; a final status
    /// stays as it is and nothing is returned.
    pub fn release_all(&mut self) -> Vec<LeaseId> {
        if self.status.is_final() {
            return Vec::new();
        }
        self.status = MultiStatus::Released;
        self.release_parts()
    }

    /// If still `Pending` at `now_ms >= hold_deadline_ms`: `Expired`,
    /// returning every held or confirmed lease to release. Otherwise
    /// nothing.
    pub fn expire(&mut self, now_ms: u64) -> Vec<LeaseId> {
        if self.status != MultiStatus::Pending || now_ms < self.hold_deadline_ms {
            return Vec::new();
        }
        self.status = MultiStatus::Expired;
        self.release_parts()
    }

    /// Every part that is not refused becomes `Released`; returns the
    /// leases that were held or confirmed.
    fn release_parts(&mut self) -> Vec<LeaseId> {
        let mut out = Vec::new();
        for (_, s) in &mut self.parts {
            match s {
                PartStatus::Held(l) | PartStatus::Confirmed(l) => {
                    out.push(l.clone());
                    *s = PartStatus::Released;
                }
                PartStatus::Planned => *s = PartStatus::Released,
                PartStatus::Refused(_) | PartStatus::Released => {}
            }
        }
        out
    }

    /// While confirming: once no part is held, settle on `Confirmed`,
    /// `Partial` or (nothing confirmed) `Failed`.
    fn settle(&mut self) {
        if !self.confirming()
            || self
                .parts
                .iter()
                .any(|(_, s)| matches!(s, PartStatus::Held(_)))
        {
            return;
        }
        let confirmed = self
            .parts
            .iter()
            .filter(|(_, s)| matches!(s, PartStatus::Confirmed(_)))
            .count();
        self.status = if confirmed == self.parts.len() {
            MultiStatus::Confirmed
        } else if confirmed > 0 {
            MultiStatus::Partial
        } else {
            MultiStatus::Failed
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Location;
    use proptest::prelude::*;

    fn cand(id: &str, cpu: u32, gpus: &[u64]) -> Candidate {
        let cap = Capacity {
            cpu_cores: cpu,
            memory_mb: 64_000,
            disk_mb: 0,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, m)| GpuSlot {
                    index: i as u32,
                    memory_mb: *m,
                })
                .collect(),
            ..Default::default()
        };
        Candidate {
            node_id: NodeId::from(id),
            name: id.to_owned(),
            is_local: false,
            capacity: cap.clone(),
            free: cap,
            location: Location::default(),
            rtt_ms: None,
            weight: 0,
            cpu_usage_pct: 0.0,
            active_leases: 0,
        }
    }

    fn cpus(parts: u32, each: u32, affinity: Affinity, strategy: SplitStrategy) -> MultiRequest {
        MultiRequest {
            parts,
            each: ResourceRequirements {
                cpu_cores: each,
                ..Default::default()
            },
            affinity,
            strategy,
            allow_partial: false,
        }
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.parts.iter().map(|n| n.0.as_str()).collect()
    }

    fn lease(s: &str) -> LeaseId {
        LeaseId(s.to_owned())
    }

    #[test]
    fn validate_bounds_parts_and_needs_a_non_empty_part() {
        assert!(cpus(1, 1, Affinity::Any, SplitStrategy::Greedy)
            .validate()
            .is_ok());
        assert!(cpus(64, 1, Affinity::Any, SplitStrategy::Greedy)
            .validate()
            .is_ok());
        assert!(cpus(0, 1, Affinity::Any, SplitStrategy::Greedy)
            .validate()
            .is_err());
        assert!(cpus(65, 1, Affinity::Any, SplitStrategy::Greedy)
            .validate()
            .is_err());
        let empty = cpus(2, 0, Affinity::Any, SplitStrategy::Greedy);
        assert_eq!(
            empty.validate(),
            Err("each: a part must ask for something".into())
        );
        assert_eq!(
            plan(&empty, &[cand("a", 8, &[])]),
            Err("each: a part must ask for something".into())
        );
        let g = MultiRequest::gpus(4, 16_384);
        assert_eq!(g.parts, 4);
        assert_eq!(g.each.gpus_wanted(), 1);
        assert_eq!(g.each.gpu_memory_mb, 16_384);
        assert_eq!(g.affinity, Affinity::Any);
        assert!(!g.allow_partial);
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&Affinity::Spread).unwrap(),
            "\"spread\""
        );
        assert_eq!(
            serde_json::to_string(&SplitStrategy::BestFit).unwrap(),
            "\"best-fit\""
        );
        assert_eq!(
            serde_json::to_string(&MultiStatus::Partial).unwrap(),
            "\"partial\""
        );
        let r: MultiRequest =
            serde_json::from_str(r#"{"parts": 3, "each": {"cpu_cores": 8}, "affinity": "spread"}"#)
                .unwrap();
        assert_eq!(r, cpus(3, 8, Affinity::Spread, SplitStrategy::Greedy));
        assert!(
            serde_json::from_str::<MultiRequest>(r#"{"parts": 3, "each": {}, "colour": 1}"#)
                .is_err()
        );
        let mut res = MultiReservation::new(
            "m1",
            &Plan {
                parts: vec!["a".into(), "b".into()],
                partial: false,
            },
            true,
            5,
            10,
        );
        assert_eq!(res.held(0, lease("l0")), None);
        res.refused(1, "busy".into());
        let json = serde_json::to_string(&res).unwrap();
        assert_eq!(
            serde_json::from_str::<MultiReservation>(&json).unwrap(),
            res
        );
        let bytes = postcard::to_stdvec(&res).unwrap();
        assert_eq!(
            postcard::from_bytes::<MultiReservation>(&bytes).unwrap(),
            res
        );
        let r = MultiRequest::gpus(2, 100);
        let bytes = postcard::to_stdvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<MultiRequest>(&bytes).unwrap(), r);
    }

    #[test]
    fn gpus_anywhere_counts_gpus_cumulatively() {
        // "4 GPUs with ≥ 16 GiB each": a has two big GPUs (one 48 GiB GPU
        // holds three 16 GiB parts, but a part per GPU means one part may
        // share a GPU), b one, c a small one that does not count.
        let cs = [
            cand("a", 8, &[48_000, 16_000]),
            cand("b", 8, &[24_000]),
            cand("c", 8, &[8_000]),
        ];
        let req = MultiRequest::gpus(4, 16_000);
        let p = plan(&req, &cs).unwrap();
        assert!(!p.partial);
        // a: 16 GiB GPU once, 48 GiB GPU three times → room 4; greedy fills a.
        assert_eq!(ids(&p), ["a", "a", "a", "a"]);
        let p = plan(
            &MultiRequest {
                strategy: SplitStrategy::Balanced,
                ..req.clone()
            },
            &cs,
        )
        .unwrap();
        assert_eq!(
            p.per_node(),
            BTreeMap::from([("a".into(), 3), ("b".into(), 1)])
        );
        let too_many = MultiRequest::gpus(6, 16_000);
        let err = plan(&too_many, &cs).unwrap_err();
        assert!(
            err.starts_with("only 5 of 6 parts fit on 3 candidate(s)"),
            "{err}"
        );
        let p = plan(
            &MultiRequest {
                allow_partial: true,
                ..too_many
            },
            &cs,
        )
        .unwrap();
        assert!(p.partial);
        assert_eq!(p.parts.len(), 5);
    }

    #[test]
    fn whole_gpu_parts_take_one_gpu_each() {
        let cs = [cand("a", 8, &[8_000, 8_000]), cand("b", 8, &[8_000])];
        let req = MultiRequest::gpus(3, 0);
        let p = plan(&req, &cs).unwrap();
        assert_eq!(ids(&p), ["a", "a", "b"]);
        assert!(plan(&MultiRequest::gpus(4, 0), &cs).is_err());
    }

    #[test]
    fn greedy_fills_the_roomiest_first() {
        let cs = [cand("a", 8, &[]), cand("b", 24, &[]), cand("c", 16, &[])];
        let p = plan(&cpus(5, 8, Affinity::Any, SplitStrategy::Greedy), &cs).unwrap();
        assert_eq!(ids(&p), ["b", "b", "b", "c", "c"]);
    }

    #[test]
    fn balanced_spreads_evenly() {
        let cs = [cand("a", 8, &[]), cand("b", 24, &[]), cand("c", 16, &[])];
        let p = plan(&cpus(5, 8, Affinity::Any, SplitStrategy::Balanced), &cs).unwrap();
        assert_eq!(ids(&p), ["b", "c", "a", "b", "c"]);
        let p = plan(&cpus(6, 8, Affinity::Any, SplitStrategy::Balanced), &cs).unwrap();
        assert_eq!(
            p.per_node(),
            BTreeMap::from([("a".into(), 1), ("b".into(), 3), ("c".into(), 2)])
        );
    }

    #[test]
    fn best_fit_fills_the_tightest_first() {
        let cs = [cand("a", 8, &[]), cand("b", 24, &[]), cand("c", 16, &[])];
        let p = plan(&cpus(3, 8, Affinity::Any, SplitStrategy::BestFit), &cs).unwrap();
        // a is left with 0/8, then c with 8/16 = 0.5, then c with 0.
        assert_eq!(ids(&p), ["a", "c", "c"]);
        // A 20 GiB part goes to the 24 GiB GPU, keeping the 80 GiB one.
        let cs = [cand("big", 8, &[80_000]), cand("small", 8, &[24_000])];
        let p = plan(
            &MultiRequest {
                strategy: SplitStrategy::BestFit,
                ..MultiRequest::gpus(1, 20_000)
            },
            &cs,
        )
        .unwrap();
        assert_eq!(ids(&p), ["small"]);
    }

    #[test]
    fn spread_uses_distinct_nodes() {
        let cs = [cand("a", 32, &[]), cand("b", 8, &[]), cand("c", 16, &[])];
        for s in [
            SplitStrategy::Greedy,
            SplitStrategy::Balanced,
            SplitStrategy::BestFit,
        ] {
            let p = plan(&cpus(3, 8, Affinity::Spread, s), &cs).unwrap();
            assert_eq!(p.per_node().len(), 3, "{s:?}");
        }
        let err = plan(&cpus(4, 8, Affinity::Spread, SplitStrategy::Greedy), &cs).unwrap_err();
        assert_eq!(
            err,
            "4 parts on distinct nodes wanted, only 3 of 3 candidate(s) can take a part"
        );
        let p = plan(&cpus(2, 8, Affinity::Spread, SplitStrategy::Greedy), &cs).unwrap();
        assert_eq!(ids(&p), ["a", "c"]);
        let p = plan(&cpus(2, 8, Affinity::Spread, SplitStrategy::BestFit), &cs).unwrap();
        assert_eq!(ids(&p), ["b", "c"]);
    }

    #[test]
    fn pack_uses_the_fewest_nodes() {
        let cs = [
            cand("a", 8, &[]),
            cand("b", 16, &[]),
            cand("c", 16, &[]),
            cand("d", 32, &[]),
        ];
        for s in [
            SplitStrategy::Greedy,
            SplitStrategy::Balanced,
            SplitStrategy::BestFit,
        ] {
            let p = plan(&cpus(4, 8, Affinity::Pack, s), &cs).unwrap();
            assert_eq!(ids(&p), ["d"; 4], "{s:?}");
            let p = plan(&cpus(6, 8, Affinity::Pack, s), &cs).unwrap();
            assert_eq!(
                p.per_node(),
                BTreeMap::from([("b".into(), 2), ("d".into(), 4)]),
                "{s:?}"
            );
        }
    }

    #[test]
    fn plan_errors_say_why() {
        assert_eq!(
            plan(&cpus(1, 8, Affinity::Any, SplitStrategy::Greedy), &[]),
            Err("no candidates".into())
        );
        let err = plan(
            &cpus(1, 64, Affinity::Any, SplitStrategy::Greedy),
            &[cand("a", 8, &[])],
        )
        .unwrap_err();
        assert_eq!(
            err,
            "only 0 of 1 parts fit on 1 candidate(s) (a: cpu_cores: want 64, free 8)"
        );
        // allow_partial with nothing placed is still an error
        let req = MultiRequest {
            allow_partial: true,
            ..cpus(2, 64, Affinity::Any, SplitStrategy::Greedy)
        };
        assert!(plan(&req, &[cand("a", 8, &[])]).is_err());
    }

    #[test]
    fn duplicate_candidates_count_once() {
        let cs = [cand("a", 8, &[]), cand("a", 8, &[])];
        assert!(plan(&cpus(2, 8, Affinity::Any, SplitStrategy::Greedy), &cs).is_err());
    }

    fn two_parts(allow_partial: bool) -> MultiReservation {
        let p = Plan {
            parts: vec!["a".into(), "b".into()],
            partial: false,
        };
        MultiReservation::new("m", &p, allow_partial, 1_000, 500)
    }

    #[test]
    fn all_held_then_all_confirmed() {
        let mut r = two_parts(false);
        assert_eq!(r.status, MultiStatus::Pending);
        assert_eq!(r.hold_deadline_ms, 1_500);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.decide(), Decision::default(), "part 1 unanswered");
        assert_eq!(r.held(1, lease("l1")), None);
        let d = r.decide();
        assert_eq!(d.confirm, [lease("l0"), lease("l1")]);
        assert!(d.release.is_empty());
        assert_eq!(r.decide(), Decision::default(), "decides once");
        assert_eq!(r.status, MultiStatus::Pending);
        r.confirmed(1);
        assert_eq!(r.status, MultiStatus::Pending);
        r.confirmed(1);
        r.confirmed(7);
        assert_eq!(r.status, MultiStatus::Pending);
        r.confirmed(0);
        assert_eq!(r.status, MultiStatus::Confirmed);
        assert_eq!(
            r.expire(10_000),
            Vec::<LeaseId>::new(),
            "confirmed does not expire"
        );
        assert_eq!(r.node_of(&lease("l1")), Some(&NodeId::from("b")));
        assert_eq!(r.release_all(), [lease("l0"), lease("l1")]);
        assert_eq!(r.status, MultiStatus::Released);
        assert_eq!(r.release_all(), Vec::<LeaseId>::new());
        assert_eq!(r.node_of(&lease("l0")), Some(&NodeId::from("a")));
    }

    #[test]
    fn a_refusal_without_partial_releases_every_hold() {
        let mut r = two_parts(false);
        assert_eq!(r.held(0, lease("l0")), None);
        r.refused(1, "insufficient_capacity".into());
        let d = r.decide();
        assert!(d.confirm.is_empty());
        assert_eq!(d.release, [lease("l0")]);
        assert_eq!(r.status, MultiStatus::Failed);
        assert_eq!(r.parts[0].1, PartStatus::Released);
        assert_eq!(
            r.parts[1].1,
            PartStatus::Refused("insufficient_capacity".into())
        );
        // A late or repeated answer changes nothing.
        assert_eq!(r.held(1, lease("late")), Some(lease("late")));
        assert_eq!(r.release_all(), Vec::<LeaseId>::new());
        assert_eq!(r.status, MultiStatus::Failed);
    }

    #[test]
    fn partial_confirms_what_was_held() {
        let mut r = two_parts(true);
        r.refused(0, "busy".into());
        assert_eq!(r.held(1, lease("l1")), None);
        let d = r.decide();
        assert_eq!(d.confirm, [lease("l1")]);
        assert!(d.release.is_empty());
        assert_eq!(r.status, MultiStatus::Pending);
        r.confirmed(1);
        assert_eq!(r.status, MultiStatus::Partial);
        let mut r = two_parts(true);
        r.refused(0, "busy".into());
        r.refused(1, "busy".into());
        assert_eq!(r.decide(), Decision::default());
        assert_eq!(r.status, MultiStatus::Failed);
    }

    #[test]
    fn a_refused_confirmation() {
        let mut r = two_parts(false);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.held(1, lease("l1")), None);
        r.decide();
        r.confirmed(0);
        assert_eq!(
            r.confirm_refused(1, "unknown_lease".into()),
            [lease("l1"), lease("l0")]
        );
        assert_eq!(r.status, MultiStatus::Failed);
        assert!(r.active_leases().is_empty());

        let mut r = two_parts(true);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.held(1, lease("l1")), None);
        r.decide();
        assert_eq!(r.confirm_refused(1, "unknown_lease".into()), [lease("l1")]);
        assert_eq!(r.status, MultiStatus::Pending);
        assert_eq!(r.confirm_refused(1, "again".into()), Vec::<LeaseId>::new());
        r.confirmed(0);
        assert_eq!(r.status, MultiStatus::Partial);
    }

    #[test]
    fn expiry_releases_holds_and_confirmations() {
        let mut r = two_parts(false);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.expire(1_499), Vec::<LeaseId>::new());
        assert_eq!(r.expire(1_500), [lease("l0")]);
        assert_eq!(r.status, MultiStatus::Expired);
        assert_eq!(r.parts[1].1, PartStatus::Released);
        assert_eq!(r.held(1, lease("l1")), Some(lease("l1")));
        r.refused(1, "x".into());
        assert_eq!(r.decide(), Decision::default());
        assert_eq!(r.expire(2_000), Vec::<LeaseId>::new());

        let mut r = two_parts(false);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.held(1, lease("l1")), None);
        r.decide();
        r.confirmed(0);
        assert_eq!(r.expire(1_500), [lease("l0"), lease("l1")]);
    }

    #[test]
    fn held_is_idempotent_and_hands_back_strays() {
        let mut r = two_parts(false);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.held(0, lease("l0")), None);
        assert_eq!(r.held(0, lease("other")), Some(lease("other")));
        assert_eq!(r.held(9, lease("nowhere")), Some(lease("nowhere")));
        r.refused(0, "ignored".into());
        assert_eq!(r.parts[0].1, PartStatus::Held(lease("l0")));
        let empty = MultiReservation::new("e", &Plan::default(), false, 0, 1);
        assert_eq!(empty.status, MultiStatus::Failed);
    }

    // ---- properties ----

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0u32..20, prop::collection::vec(0u64..4, 0..3)), 0..=5).prop_map(
            |ns| {
                ns.into_iter()
                    .enumerate()
                    .map(|(i, (cpu, gpus))| {
                        let mems: Vec<u64> = gpus.iter().map(|g| g * 8_000).collect();
                        let mut c = cand(&format!("n{i}"), cpu, &mems);
                        // Some capacity already in use.
                        c.free.cpu_cores = cpu - cpu / 3;
                        if let Some(g) = c.free.gpus.first_mut() {
                            g.memory_mb /= 2;
                        }
                        c
                    })
                    .collect()
            },
        )
    }

    fn arb_request() -> impl Strategy<Value = MultiRequest> {
        (
            1u32..=4,
            0u32..6,
            0u32..3,
            prop::sample::select(vec![0u64, 4_000, 8_000]),
            prop::sample::select(vec![Affinity::Any, Affinity::Spread, Affinity::Pack]),
            prop::sample::select(vec![
                SplitStrategy::Greedy,
                SplitStrategy::Balanced,
                SplitStrategy::BestFit,
            ]),
            any::<bool>(),
        )
            .prop_filter_map(
                "empty part",
                |(parts, cpu, gpus, mem, affinity, strategy, allow_partial)| {
                    let each = ResourceRequirements {
                        cpu_cores: cpu,
                        gpu_count: gpus,
                        gpu_memory_mb: if gpus > 0 { mem } else { 0 },
                        ..Default::default()
                    };
                    (!each.is_empty()).then_some(MultiRequest {
                        parts,
                        each,
                        affinity,
                        strategy,
                        allow_partial,
                    })
                },
            )
    }

    /// Whether `n` parts fit on `c` one after the other, by the owner's fit.
    fn n_fit(c: &Candidate, each: &ResourceRequirements, n: u32) -> bool {
        let mut free = c.free.clone();
        for _ in 0..n {
            match fit(&free, &c.capacity, each) {
                Ok(g) => free = take(&free, each, &g),
                Err(_) => return false,
            }
        }
        true
    }

    /// The most parts any assignment places, by brute force over every
    /// assignment of up to `parts` parts to the nodes (or nowhere).
    fn brute_force_max(req: &MultiRequest, cs: &[Candidate]) -> u32 {
        let n = cs.len() + 1; // the last choice is "not placed"
        let mut best = 0;
        let total = (n as u32).pow(req.parts);
        for code in 0..total {
            let mut counts = vec![0u32; cs.len()];
            let mut x = code;
            for _ in 0..req.parts {
                let choice = (x % n as u32) as usize;
                x /= n as u32;
                if choice < cs.len() {
                    counts[choice] += 1;
                }
            }
            let ok = counts.iter().zip(cs).all(|(k, c)| {
                (req.affinity != Affinity::Spread || *k <= 1) && n_fit(c, &req.each, *k)
            });
            if ok {
                best = best.max(counts.iter().sum());
            }
        }
        best
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// (a) No node gets more parts than its announced free capacity
        /// holds, one after the other; Spread never repeats a node.
        /// (b) With any affinity and strategy, the plan places every part
        /// exactly when some assignment does, and otherwise as many as any
        /// assignment can (Pack: with the fewest nodes).
        #[test]
        fn plans_respect_capacity_and_are_complete(req in arb_request(), cs in arb_candidates()) {
            let best = brute_force_max(&req, &cs);
            match plan(&req, &cs) {
                Ok(p) => {
                    prop_assert!(!p.parts.is_empty());
                    prop_assert!(p.parts.len() as u32 <= req.parts);
                    prop_assert_eq!(p.partial, (p.parts.len() as u32) < req.parts);
                    prop_assert!(!p.partial || req.allow_partial);
                    prop_assert_eq!(p.parts.len() as u32, best);
                    for (node, k) in p.per_node() {
                        let c = cs.iter().find(|c| c.node_id == node).unwrap();
                        prop_assert!(n_fit(c, &req.each, k), "{} parts on {}", k, node);
                        if req.affinity == Affinity::Spread {
                            prop_assert_eq!(k, 1);
                        }
                    }
                    if req.affinity == Affinity::Pack && !p.partial {
                        // No smaller node set holds every part.
                        let mut rooms: Vec<u32> = cs.iter().map(|c| (0..=req.parts).rev().find(|k| n_fit(c, &req.each, *k)).unwrap_or(0)).collect();
                        rooms.sort_unstable_by(|a, b| b.cmp(a));
                        let mut sum = 0;
                        let min_nodes = rooms.iter().take_while(|r| { let before = sum; sum += **r; before < req.parts }).count();
                        prop_assert_eq!(p.per_node().len(), min_nodes);
                    }
                    if req.strategy == SplitStrategy::Balanced && req.affinity == Affinity::Any {
                        // Balanced reaches the smallest possible busiest node.
                        let most = p.per_node().values().copied().max().unwrap_or(0);
                        let fits_with = |m: u32| cs.iter().map(|c| (0..=m).rev().find(|k| n_fit(c, &req.each, *k)).unwrap_or(0)).sum::<u32>() >= p.parts.len() as u32;
                        prop_assert!(fits_with(most));
                        prop_assert!(most <= 1 || !fits_with(most - 1));
                    }
                }
                Err(_) => {
                    prop_assert!(best < req.parts);
                    prop_assert!(!req.allow_partial || best == 0);
                }
            }
        }

        /// The plan depends on the set of candidates, not their order.
        #[test]
        fn plans_ignore_candidate_order(req in arb_request(), cs in arb_candidates()) {
            let mut rev = cs.clone();
            rev.reverse();
            prop_assert_eq!(plan(&req, &cs), plan(&req, &rev));
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Held(usize),
        Refused(usize),
        Decide,
        Confirmed(usize),
        ConfirmRefused(usize),
        ReleaseAll,
        Expire(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..5).prop_map(Op::Held),
            2 => (0usize..5).prop_map(Op::Refused),
            2 => Just(Op::Decide),
            3 => (0usize..5).prop_map(Op::Confirmed),
            1 => (0usize..5).prop_map(Op::ConfirmRefused),
            1 => Just(Op::ReleaseAll),
            1 => (0u64..200).prop_map(Op::Expire),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// (c) After `decide` without `allow_partial` and with a refusal,
        /// every held lease is released and none confirmed; no decision
        /// ever lists a lease in both. And over any sequence of calls no
        /// lease is released twice, a released lease is never confirmed
        /// afterwards, and after a final `release_all` every accepted lease
        /// has been released exactly once: nothing leaks.
        #[test]
        fn lifecycle_never_leaks_or_double_releases(
            n in 1usize..5,
            allow_partial in any::<bool>(),
            ops in prop::collection::vec(arb_op(), 0..40),
        ) {
            let plan = Plan { parts: (0..n).map(|i| NodeId(format!("n{i}"))).collect(), partial: false };
            let mut r = MultiReservation::new("m", &plan, allow_partial, 0, 100);
            let mut accepted: Vec<LeaseId> = Vec::new();
            let mut released: Vec<LeaseId> = Vec::new();
            let mut confirm_sent: Vec<LeaseId> = Vec::new();
            let mut next = 0;
            let release = |ls: Vec<LeaseId>, released: &mut Vec<LeaseId>| -> Result<(), TestCaseError> {
                for l in ls {
                    prop_assert!(!released.contains(&l), "{} released twice", l);
                    released.push(l);
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Held(i) => {
                        let l = LeaseId(format!("l{next}"));
                        next += 1;
                        match r.held(i, l.clone()) {
                            None => accepted.push(l),
                            Some(back) => { prop_assert_eq!(&back, &l); release(vec![back], &mut released)?; }
                        }
                    }
                    Op::Refused(i) => r.refused(i, "no".into()),
                    Op::Decide => {
                        let was_collecting = r.status == MultiStatus::Pending && !r.decided;
                        let held_before = r.active_leases();
                        let refusal = r.parts.iter().any(|(_, s)| matches!(s, PartStatus::Refused(_)));
                        let all_answered = r.parts.iter().all(|(_, s)| *s != PartStatus::Planned);
                        let d = r.decide();
                        for l in &d.confirm {
                            prop_assert!(!d.release.contains(l));
                            prop_assert!(!released.contains(l));
                            prop_assert!(held_before.contains(l));
                        }
                        if was_collecting && all_answered && refusal && !allow_partial {
                            prop_assert!(d.confirm.is_empty());
                            prop_assert_eq!(&d.release, &held_before);
                            prop_assert_eq!(r.status, MultiStatus::Failed);
                        }
                        confirm_sent.extend(d.confirm.iter().cloned());
                        release(d.release, &mut released)?;
                    }
                    Op::Confirmed(i) => r.confirmed(i),
                    Op::ConfirmRefused(i) => { let ls = r.confirm_refused(i, "gone".into()); release(ls, &mut released)?; }
                    Op::ReleaseAll => { let ls = r.release_all(); release(ls, &mut released)?; }
                    Op::Expire(t) => { let ls = r.expire(t); release(ls, &mut released)?; }
                }
                // Every active lease was accepted, is not released, and a
                // confirmed one was sent for confirmation.
                for (_, s) in &r.parts {
                    match s {
                        PartStatus::Held(l) => { prop_assert!(accepted.contains(l) && !released.contains(l)); }
                        PartStatus::Confirmed(l) => { prop_assert!(confirm_sent.contains(l) && !released.contains(l)); }
                        _ => {}
                    }
                }
                if r.status.is_final() {
                    prop_assert!(r.active_leases().is_empty());
                }
                if matches!(r.status, MultiStatus::Confirmed) {
                    prop_assert!(r.parts.iter().all(|(_, s)| matches!(s, PartStatus::Confirmed(_))));
                }
                if matches!(r.status, MultiStatus::Partial) {
                    prop_assert!(allow_partial);
                }
            }
            release(r.release_all(), &mut released)?;
            for l in &accepted {
                prop_assert!(released.contains(l), "{} leaked", l);
            }
        }
    }
}
