//! The owner's wait queue: requests that do not fit now and may wait.
//!
//! A request that asked to wait (`wait_ms > 0`) and does not fit when it
//! arrives is [`WaitQueue::push`]ed here, under its lease id (the
//! *ticket*). The owner calls [`WaitQueue::drain`] whenever capacity may
//! have freed (a release, an expiry, a capacity change, a new arrival) and
//! [`WaitQueue::expire`] at [`WaitQueue::next_deadline`]. Like the rest of
//! [`crate::core`] it is sans-IO: time comes in as `now_ms`, every map is a
//! `BTreeMap`, and the same inputs give the same outputs. Nothing in it
//! panics, and all arithmetic saturates.
//!
//! # Order
//!
//! Entries are kept in *grant order*: priority descending (`critical`
//! first), then FIFO by `seq`, a counter the queue assigns at
//! [`WaitQueue::push`]. Positions ([`WaitQueue::position`], the `Ok` of
//! [`WaitQueue::push`]) are 1-based in that order. The queue holds at most
//! `max_len` entries; a push into a full queue is refused `busy`.
//!
//! # Draining: conservative backfill
//!
//! [`WaitQueue::drain`] walks the queue once, in grant order, keeping a
//! *keep-out* amount: `reserved` (the owner's advance reservations) plus
//! what is *earmarked* for the blocked entries met so far. For each entry,
//! the first rule that applies decides:
//!
//! 1. Its deadline has passed (`deadline_ms <= now_ms`): it is removed and
//!    returned as failed, `queue_timeout`, never granted. (Calling
//!    [`WaitQueue::expire`] first removes these before the drain.)
//! 2. The ledger would refuse it for a reason other than capacity (its
//!    ticket is already an active lease, it asks for nothing, or
//!    `lease_ms` is 0): it is offered to the ledger, which refuses it, and
//!    it is removed and returned as failed with the ledger's denial.
//! 3. It would not fit even on the empty node (against the ledger's total
//!    capacity): it is skipped, neither granted nor earmarked, and waits
//!    for the capacity to grow or its deadline. Holding capacity for it
//!    would block everything behind it for nothing.
//! 4. It fits in `ledger free − keep-out` (per dimension, per GPU, per
//!    custom key, as [`Capacity::minus`] computes it): it is granted by
//!    [`Ledger::allocate_reserving`] with the keep-out, so the GPUs it gets
//!    are also outside the keep-out, and removed. If the ledger refuses it
//!    `insufficient_capacity` anyway (only its `max_leases` can do that
//!    here), it is blocked (rule 5); any other refusal removes it as failed.
//! 5. Otherwise it is *blocked*: it stays, and its demand is earmarked:
//!    its cores, memory, disk and custom amounts are added to the keep-out
//!    whatever is left; its GPU part only if it alone would fit in the GPUs
//!    left in reach, and then exactly the GPUs (and memory on each) that
//!    [`assign_gpus`] would give it there.
//!
//! What this guarantees, for one drain (the proptests check each):
//!
//! - **No over-commit**: every grant goes through the ledger, inside what is
//!   free minus `reserved`.
//! - **Priority order**: grants come out in grant order.
//! - **Backfill never delays an earlier entry**: what happens to an entry
//!   depends only on the ledger and `reserved` at the start of the drain
//!   and on the entries ahead of it (what they were granted and what they
//!   earmarked), never on those behind it. So if entry A is still waiting
//!   after a drain in which an entry B behind it was granted, the same
//!   drain with B and everything else behind A absent would not have
//!   granted A either; and B was granted from capacity outside A's
//!   earmark.
//! - **Work conservation at the head**: an entry with no blocked entry
//!   ahead of it (everything ahead was granted, failed or skipped under
//!   rule 3) is granted if it fits in what is free minus `reserved` at its
//!   turn and the ledger's lease count allows.
//!
//! A drain is one pass, not a fixpoint: the GPUs earmarked for a blocked
//! entry are chosen best-fit at its turn, so after the grants behind it
//! the next drain may earmark different GPUs for it and grant an entry
//! that this one could not. Iterating to a fixpoint would give up the
//! prefix property above, so the owner simply drains again at the next
//! event.
//!
//! Backfill is conservative in the scheduling sense: a later, smaller
//! request may be granted ahead of a blocked one, but only from capacity
//! the blocked ones ahead of it are not waiting for. Earmarks are only a
//! walk-local budget: nothing is held between drains, so capacity freed
//! between two drains goes to whoever is first in line at the next one.
//!
//! # Within-priority order and backfill modes ([`WaitQueue::drain_with`])
//!
//! [`WaitQueue::drain`] is the walk above in arrival order.
//! [`WaitQueue::drain_with`] takes an [`Order`] (within one priority,
//! lower rank first, then arrival; re-ranked after every grant, so fair
//! share moves on from a requester as soon as it is served; see
//! [`crate::core::fairshare`]) and a [`Backfill`] mode:
//!
//! - [`Backfill::Off`]: once an entry is blocked (rule 5), nothing behind
//!   it is granted in that drain (entries that fail rules 1 and 2 still
//!   fail). Strict order.
//! - [`Backfill::Conservative`]: rules 1 to 5 exactly.
//! - [`Backfill::Shadow`] (what the scheduler uses when `backfill` is on):
//!   the first blocked entry H gets a *shadow time* S
//!   ([`shadow_time`]): the earliest instant at which, if no new lease
//!   were granted and every active lease ended when it is due, H would fit
//!   in what is free minus `reserved` (and under the lease count). Then,
//!   for each entry B behind H:
//!   - if B fits outside the keep-out (rule 4), it is granted only if its
//!     lease ends by S, or if granting it leaves H's shadow time at S or
//!     earlier; otherwise it is blocked (it earmarks into the keep-out,
//!     but not into H's: it cannot start before H anyway);
//!   - if not, but it fits in what is free minus `reserved` and minus the
//!     earmarks of the *other* blocked entries, and its lease (as the
//!     ledger will clamp it) ends by S, it is granted from H's earmark
//!     (EASY backfill): it is gone by the time H is due.
//!
//!   So **backfill never delays the head**: after the drain, H's shadow
//!   time is no later than after the same drain with everything behind H
//!   absent (the proptest `backfill_never_delays_the_head` checks this on
//!   random ledgers, queues and reservations). If H never fits by lease
//!   ends alone (S is `None`: it waits for `reserved` or the capacity to
//!   change), only rule 4 applies behind it. The guarantee is by
//!   *declared* lease ends: a backfilled lease that is renewed past S, or
//!   a new advance reservation, can still push H back, as either can
//!   without backfill. Conservative backfill alone has a gap this closes:
//!   a head whose GPUs are not all free earmarks no GPU, so a long lease
//!   behind it could take the GPU it will need.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::fit::{assign_gpus, fit};
use crate::core::ledger::{AllocateInput, Ledger};
use crate::model::{
    Capacity, Denial, DenyReason, GpuSlot, Lease, LeaseId, Priority, ResourceRequirements, Usage,
};

/// Shortest `retry_after_ms` a `busy` refusal from a full queue suggests.
pub const MIN_RETRY_AFTER_MS: u64 = 100;
/// Longest `retry_after_ms` a `busy` refusal from a full queue suggests.
pub const MAX_RETRY_AFTER_MS: u64 = 30_000;

/// One request waiting at the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The request as it will be handed to the ledger. `input.lease_id` is
    /// the ticket: the id the lease will have, and the key in the queue.
    pub input: AllocateInput,
    /// When it joined the queue.
    pub enqueued_at_ms: u64,
    /// When its wait runs out: [`WaitQueue::expire`] removes it at or after
    /// this instant, and it is never granted at or after it.
    pub deadline_ms: u64,
    /// Arrival order, assigned by the queue: FIFO among equal priorities.
    /// Only its order relative to other entries means anything; the queue
    /// may renumber entries (keeping their order) in [`WaitQueue::restore`]
    /// or when the counter runs out.
    pub seq: u64,
}

impl Waiting {
    /// The ticket: the lease id the grant will carry.
    pub fn ticket(&self) -> &LeaseId {
        &self.input.lease_id
    }

    fn key(&self) -> Key {
        (Reverse(self.input.priority), self.seq)
    }
}

/// Grant order: priority descending, then `seq` ascending.
type Key = (Reverse<Priority>, u64);

/// The owner's wait queue. See the module documentation.
#[derive(Clone, Debug)]
pub struct WaitQueue {
    max_len: usize,
    /// Every entry, in grant order.
    entries: BTreeMap<Key, Waiting>,
    /// Ticket -> key in `entries`.
    tickets: BTreeMap<LeaseId, Key>,
    /// (deadline, key) of every entry, for `expire` and `next_deadline`.
    deadlines: BTreeSet<(u64, Key)>,
    /// The `seq` the next push gets.
    next_seq: u64,
}

impl WaitQueue {
    /// An empty queue holding at most `max_len` entries (0: it refuses every
    /// push `busy`).
    pub fn new(max_len: usize) -> Self {
        WaitQueue {
            max_len,
            entries: BTreeMap::new(),
            tickets: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_seq: 0,
        }
    }

    /// Most entries held at once.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Enqueue `input` to wait up to `wait_ms` from `now_ms` (deadline
    /// `now_ms + wait_ms`, saturating). In order, the first that applies:
    ///
    /// - `bad_request` if the ticket (`input.lease_id`) is already queued,
    ///   if `wait_ms` is 0 (a request that may not wait does not queue), if
    ///   the request asks for no resources, or if `lease_ms` is 0 (the last
    ///   two the ledger would refuse anyway);
    /// - `busy` if the queue holds `max_len` entries, with `retry_after_ms`
    ///   the time until the earliest deadline in the queue (when a slot
    ///   frees at the latest, unless drained sooner), clamped to
    ///   [`MIN_RETRY_AFTER_MS`]..=[`MAX_RETRY_AFTER_MS`]
    ///   ([`MAX_RETRY_AFTER_MS`] when the queue is empty because `max_len`
    ///   is 0).
    ///
    /// Otherwise returns the entry's 1-based position in grant order. Does
    /// not check capacity: the caller queues only what does not fit now
    /// (and should refuse what could never fit), then drains.
    pub fn push(
        &mut self,
        input: AllocateInput,
        now_ms: u64,
        wait_ms: u64,
    ) -> Result<usize, Denial> {
        if self.tickets.contains_key(&input.lease_id) {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!("ticket {} is already waiting", input.lease_id),
            ));
        }
        if wait_ms == 0 {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!(
                    "request {} for lease {} may not wait (wait_ms 0), so it is not queued",
                    input.request_id, input.lease_id
                ),
            ));
        }
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
        if self.entries.len() >= self.max_len {
            let retry = self
                .next_deadline()
                .map_or(MAX_RETRY_AFTER_MS, |d| d.saturating_sub(now_ms))
                .clamp(MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS);
            return Err(Denial::busy(
                format!(
                    "the wait queue is full ({} of {} waiting)",
                    self.entries.len(),
                    self.max_len
                ),
                retry,
            ));
        }
        let seq = self.alloc_seq();
        let w = Waiting {
            input,
            enqueued_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(wait_ms),
            seq,
        };
        let key = w.key();
        self.insert(w);
        Ok(self.rank(&key))
    }

    /// The ticket's 1-based position in grant order, if it is waiting.
    /// O(queue length).
    pub fn position(&self, ticket: &LeaseId) -> Option<usize> {
        self.tickets.get(ticket).map(|key| self.rank(key))
    }

    /// The waiting entry with this ticket.
    pub fn get(&self, ticket: &LeaseId) -> Option<&Waiting> {
        self.tickets.get(ticket).and_then(|k| self.entries.get(k))
    }

    /// Take an entry out (the requester cancelled, or the caller decided it
    /// elsewhere). `None` if the ticket is not waiting.
    pub fn remove(&mut self, ticket: &LeaseId) -> Option<Waiting> {
        let key = *self.tickets.get(ticket)?;
        self.take(&key)
    }

    /// Remove and return every entry whose wait has run out
    /// (`deadline_ms <= now_ms`), by deadline, ties in grant order.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Waiting> {
        let mut out = Vec::new();
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            match self.take(&key) {
                Some(w) => out.push(w),
                // Cannot happen (the indexes agree); drop the stray index
                // entry rather than loop.
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
        out
    }

    /// The earliest deadline in the queue: when to call
    /// [`WaitQueue::expire`] next.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Grant what can be granted now on `ledger`, with `reserved` kept out
    /// of reach (pass `Capacity::default()` for none), by conservative
    /// backfill in FIFO order: see the module documentation for the exact
    /// rules and guarantees. Returns the granted leases in grant order, and
    /// the entries removed as failed with why (`queue_timeout` for a
    /// deadline already past, or the ledger's own denial). The same as
    /// [`WaitQueue::drain_with`] with [`Backfill::Conservative`] and
    /// [`Fifo`].
    pub fn drain(
        &mut self,
        ledger: &mut Ledger,
        reserved: &Capacity,
        now_ms: u64,
    ) -> (Vec<Lease>, Vec<(Waiting, Denial)>) {
        self.drain_with(ledger, reserved, now_ms, Backfill::Conservative, &mut Fifo)
    }

    /// [`WaitQueue::drain`] with a backfill rule and a within-priority
    /// order: entries are walked by priority, then by `order`'s rank (lower
    /// first, re-ranked after every grant), then by arrival. See "Backfill
    /// modes" in the module documentation.
    pub fn drain_with(
        &mut self,
        ledger: &mut Ledger,
        reserved: &Capacity,
        now_ms: u64,
        backfill: Backfill,
        order: &mut dyn Order,
    ) -> (Vec<Lease>, Vec<(Waiting, Denial)>) {
        let mut granted = Vec::new();
        let mut failed = Vec::new();
        if self.entries.is_empty() {
            return (granted, failed);
        }
        let total = ledger.capacity().clone();
        // `reserved` plus the earmarks of the blocked entries met so far.
        let mut keep_out = reserved.clone();
        // The same without the first blocked entry's earmark, and that
        // entry's shadow time (shadow mode only).
        let mut keep_out_rest = reserved.clone();
        let mut head: Option<(Option<u64>, ResourceRequirements)> = None;
        let mut pending = self.ranked(order, self.entries.keys().copied().collect());
        let mut i = 0;
        while i < pending.len() {
            let key = pending[i].2;
            i += 1;
            let Some(w) = self.entries.get(&key) else {
                continue;
            };
            if w.deadline_ms <= now_ms {
                if let Some(w) = self.take(&key) {
                    let d = Denial::new(
                        DenyReason::QueueTimeout,
                        format!(
                            "request {} for lease {} waited from {} ms until its deadline \
                             {} ms without being granted",
                            w.input.request_id, w.input.lease_id, w.enqueued_at_ms, w.deadline_ms
                        ),
                    );
                    failed.push((w, d));
                }
                continue;
            }
            let req = &w.input.req;
            // The ledger's own request checks, which come before capacity:
            // let it refuse those in its own words.
            let refusable =
                req.is_empty() || w.input.lease_ms == 0 || ledger.get(&w.input.lease_id).is_some();
            if !refusable && fit(&total, &total, req).is_err() {
                // Rule 3: larger than the whole node; skip, earmark nothing.
                continue;
            }
            if !refusable && backfill == Backfill::Off && head.is_some() {
                // No backfill: nothing passes a blocked entry.
                continue;
            }
            let budget = ledger.free().minus(&keep_out);
            let mut outcome = None;
            if refusable || fit(&budget, &total, req).is_ok() {
                outcome = Some(ledger.allocate_reserving(w.input.clone(), &keep_out, now_ms));
            } else if let (Backfill::Shadow, Some((Some(shadow), _))) = (backfill, &head) {
                let shadow = *shadow;
                // EASY: it may use the first blocked entry's earmark if,
                // by its lease length, it ends before that entry is due.
                let ends = now_ms.saturating_add(ledger.limits().clamp_lease_ms(w.input.lease_ms));
                if ends <= shadow && fit(&ledger.free().minus(&keep_out_rest), &total, req).is_ok()
                {
                    outcome =
                        Some(ledger.allocate_reserving(w.input.clone(), &keep_out_rest, now_ms));
                }
            }
            match outcome {
                Some(Ok(lease)) => {
                    // Shadow mode: a grant behind the first blocked entry
                    // that outlives its shadow time must not push it back.
                    if let (Backfill::Shadow, Some((Some(shadow), head_req))) = (backfill, &head) {
                        if lease.expires_at_ms > *shadow {
                            let later = shadow_time(ledger, reserved, &total, head_req, now_ms);
                            if later.is_none_or(|t| t > *shadow) {
                                // It waits for the head: it cannot start
                                // before the head is due, so what ends
                                // before then may still use its earmark.
                                let _ = ledger.release(&lease.lease_id, None);
                                earmark(&mut keep_out, &budget, &total, req);
                                continue;
                            }
                        }
                    }
                    self.take(&key);
                    order.granted(&lease);
                    granted.push(lease);
                    if order.is_dynamic() {
                        let rest: Vec<Key> = pending[i..].iter().map(|p| p.2).collect();
                        pending.truncate(i);
                        pending.extend(self.ranked(order, rest));
                    }
                    continue;
                }
                Some(Err(d)) if d.reason != DenyReason::InsufficientCapacity => {
                    if let Some(w) = self.take(&key) {
                        failed.push((w, d));
                    }
                    continue;
                }
                // The lease count is at its limit, or it does not fit: blocked.
                _ => {}
            }
            if head.is_none() {
                let shadow = match backfill {
                    Backfill::Shadow => shadow_time(ledger, reserved, &total, req, now_ms),
                    _ => None,
                };
                head = Some((shadow, req.clone()));
                earmark(&mut keep_out, &budget, &total, req);
            } else {
                earmark(&mut keep_out, &budget, &total, req);
                earmark(&mut keep_out_rest, &budget, &total, req);
            }
        }
        (granted, failed)
    }

    /// `keys` in drain order under `order`.
    fn ranked(&self, order: &dyn Order, keys: Vec<Key>) -> Vec<(Reverse<Priority>, u64, Key)> {
        let mut v: Vec<(Reverse<Priority>, u64, Key)> = keys
            .into_iter()
            .filter_map(|k| self.entries.get(&k).map(|w| (k.0, order.rank(w), k)))
            .collect();
        v.sort();
        v
    }

    /// Summed demand of everything waiting, for contention detection: GPUs
    /// counted by [`ResourceRequirements::gpus_wanted`], GPU memory as
    /// `gpus_wanted × gpu_memory_mb` (whole-GPU requests count 0 memory,
    /// since how much they take depends on which GPUs they get). Custom
    /// keys with a zero amount are left out. Saturates.
    pub fn demand(&self) -> Usage {
        let mut total = Usage::default();
        for w in self.entries.values() {
            total.add(&request_usage(&w.input.req));
        }
        total
    }

    /// Number of entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry in the order a drain under `order` considers them: by
    /// priority, then rank, then arrival.
    pub fn in_order(&self, order: &dyn Order) -> Vec<&Waiting> {
        self.ranked(order, self.entries.keys().copied().collect())
            .into_iter()
            .filter_map(|(_, _, k)| self.entries.get(&k))
            .collect()
    }

    /// Every entry, by priority then arrival (the order of a `fifo` drain).
    pub fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.entries.values()
    }

    /// Every entry, in grant order, for persistence.
    pub fn entries(&self) -> Vec<Waiting> {
        self.entries.values().cloned().collect()
    }

    /// Put back entries read from the store after a restart, next to any
    /// already waiting. Entries whose deadline has passed
    /// (`deadline_ms <= now_ms`) are refused. An entry whose ticket is
    /// already waiting (or that repeats an earlier one in `entries`, by
    /// `seq`) is skipped and *not* returned: the queue keeps its copy. The
    /// relative `seq` order of all entries is kept; if two entries share a
    /// `seq`, all are renumbered 0, 1, 2, … in (`seq`, ticket) order. If the
    /// result exceeds `max_len`, the entries last in grant order are
    /// refused until it fits. Returns the refused entries, so the caller
    /// can tell their requesters and delete them from the store.
    pub fn restore(&mut self, entries: Vec<Waiting>, now_ms: u64) -> Vec<Waiting> {
        let mut refused = Vec::new();
        let mut all: Vec<Waiting> = std::mem::take(&mut self.entries).into_values().collect();
        self.tickets.clear();
        self.deadlines.clear();
        let mut seen: BTreeSet<LeaseId> = all.iter().map(|w| w.ticket().clone()).collect();
        let mut incoming = entries;
        incoming.sort_by(|a, b| (a.seq, a.ticket()).cmp(&(b.seq, b.ticket())));
        for w in incoming {
            if seen.contains(w.ticket()) {
                continue;
            }
            if w.deadline_ms <= now_ms {
                refused.push(w);
                continue;
            }
            seen.insert(w.ticket().clone());
            all.push(w);
        }
        all.sort_by(|a, b| (a.seq, a.ticket()).cmp(&(b.seq, b.ticket())));
        let repeated = all.windows(2).any(|p| p[0].seq == p[1].seq);
        if repeated {
            for (i, w) in all.iter_mut().enumerate() {
                w.seq = i as u64;
            }
            self.next_seq = all.len() as u64;
        } else if let Some(last) = all.last() {
            self.next_seq = self.next_seq.max(last.seq.saturating_add(1));
        }
        for w in all {
            self.insert(w);
        }
        while self.entries.len() > self.max_len {
            let Some(key) = self.entries.keys().next_back().copied() else {
                break;
            };
            if let Some(w) = self.take(&key) {
                refused.push(w);
            }
        }
        refused
    }

    /// 1-based rank of `key` in grant order.
    fn rank(&self, key: &Key) -> usize {
        self.entries.range(..*key).count().saturating_add(1)
    }

    /// The next `seq`. If the counter has run out (after about 2^64 pushes,
    /// or a restored `seq` near `u64::MAX`), renumber every entry from 0 in
    /// the same order first, so keys never collide.
    fn alloc_seq(&mut self) -> u64 {
        if self.next_seq == u64::MAX {
            let mut all: Vec<Waiting> = std::mem::take(&mut self.entries).into_values().collect();
            self.tickets.clear();
            self.deadlines.clear();
            all.sort_by_key(|w| w.seq);
            for (i, mut w) in all.into_iter().enumerate() {
                w.seq = i as u64;
                self.insert(w);
            }
            self.next_seq = self.entries.len() as u64;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    fn insert(&mut self, w: Waiting) {
        let key = w.key();
        self.tickets.insert(w.ticket().clone(), key);
        self.deadlines.insert((w.deadline_ms, key));
        self.entries.insert(key, w);
    }

    fn take(&mut self, key: &Key) -> Option<Waiting> {
        let w = self.entries.remove(key)?;
        self.tickets.remove(w.ticket());
        self.deadlines.remove(&(w.deadline_ms, *key));
        Some(w)
    }
}

/// What a drain does with entries behind a blocked one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backfill {
    /// Nothing behind a blocked entry (of any priority) is granted: strict
    /// order.
    Off,
    /// Conservative backfill, rules 1 to 5 of the module documentation.
    Conservative,
    /// Conservative backfill checked against the first blocked entry's
    /// shadow time, plus EASY backfill into its earmark: see "Backfill
    /// modes" in the module documentation.
    Shadow,
}

/// The order of entries of equal priority in a drain.
pub trait Order {
    /// Lower goes first; equal ranks go by arrival.
    fn rank(&self, w: &Waiting) -> u64;
    /// `lease` was just granted from the queue.
    fn granted(&mut self, lease: &Lease);
    /// Whether ranks change after a grant (re-rank what is left).
    fn is_dynamic(&self) -> bool;
}

/// Arrival order: every rank is 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fifo;

impl Order for Fifo {
    fn rank(&self, _: &Waiting) -> u64 {
        0
    }
    fn granted(&mut self, _: &Lease) {}
    fn is_dynamic(&self) -> bool {
        false
    }
}

/// The earliest time, at or after `now_ms`, at which `req` fits in what is
/// free minus `reserved` on `ledger` (and under its lease count) if no new
/// lease is granted and every lease ends when it is due: the *shadow time*
/// of EASY backfill. `None` if it never does (it needs capacity that only
/// `reserved` or a capacity change can give back).
pub fn shadow_time(
    ledger: &Ledger,
    reserved: &Capacity,
    total: &Capacity,
    req: &ResourceRequirements,
    now_ms: u64,
) -> Option<u64> {
    let fits = |l: &Ledger| {
        l.len() < l.limits().max_leases && fit(&l.free().minus(reserved), total, req).is_ok()
    };
    if fits(ledger) {
        return Some(now_ms);
    }
    let mut sim = ledger.clone();
    while let Some(t) = sim.next_expiry() {
        sim.expire(t);
        if fits(&sim) {
            return Some(t.max(now_ms));
        }
    }
    None
}

/// What a request would use, as [`WaitQueue::demand`] counts it.
fn request_usage(req: &ResourceRequirements) -> Usage {
    let gpus = req.gpus_wanted();
    Usage {
        cpu_cores: req.cpu_cores,
        memory_mb: req.memory_mb,
        disk_mb: req.disk_mb,
        gpus,
        gpu_memory_mb: u64::from(gpus).saturating_mul(req.gpu_memory_mb),
        custom: req
            .custom
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    }
}

/// Add a blocked request's demand to `keep_out` (rule 4 of the module
/// documentation). `budget` is what is in reach at its turn.
fn earmark(
    keep_out: &mut Capacity,
    budget: &Capacity,
    total: &Capacity,
    req: &ResourceRequirements,
) {
    keep_out.cpu_cores = keep_out.cpu_cores.saturating_add(req.cpu_cores);
    keep_out.memory_mb = keep_out.memory_mb.saturating_add(req.memory_mb);
    keep_out.disk_mb = keep_out.disk_mb.saturating_add(req.disk_mb);
    for (k, v) in &req.custom {
        if *v > 0 {
            let e = keep_out.custom.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }
    if let Some(slots) = assign_gpus(
        &budget.gpus,
        &total.gpus,
        req.gpus_wanted(),
        req.gpu_memory_mb,
    ) {
        add_gpus(&mut keep_out.gpus, &slots);
    }
}

/// Add per-GPU memory, matched by index (saturating), keeping `into`
/// sorted by index.
fn add_gpus(into: &mut Vec<GpuSlot>, slots: &[GpuSlot]) {
    for s in slots {
        match into.iter_mut().find(|g| g.index == s.index) {
            Some(g) => g.memory_mb = g.memory_mb.saturating_add(s.memory_mb),
            None => into.push(s.clone()),
        }
    }
    into.sort_by_key(|g| g.index);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ledger::LeaseLimits;
    use crate::model::NodeId;

    const NOW: u64 = 1_700_000_000_000;

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
        Ledger::new(NodeId::from("owner"), cap(), LeaseLimits::default())
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

    fn gpu(count: u32, mem: u64, cores: u32) -> ResourceRequirements {
        ResourceRequirements {
            cpu_cores: cores,
            gpu_count: count,
            gpu_memory_mb: mem,
            ..Default::default()
        }
    }

    fn id(s: &str) -> LeaseId {
        LeaseId(s.to_string())
    }

    fn ids<'a>(it: impl IntoIterator<Item = &'a Waiting>) -> Vec<&'a str> {
        it.into_iter().map(|w| w.ticket().0.as_str()).collect()
    }

    fn lease_ids(ls: &[Lease]) -> Vec<&str> {
        ls.iter().map(|l| l.lease_id.0.as_str()).collect()
    }

    fn with_len(mut i: AllocateInput, lease_ms: u64) -> AllocateInput {
        i.lease_ms = lease_ms;
        i
    }

    #[test]
    fn shadow_backfill_fills_the_heads_earmark_only_with_what_ends_before_it_is_due() {
        let now = NOW;
        for mode in [Backfill::Off, Backfill::Conservative, Backfill::Shadow] {
            let mut l = ledger();
            // 6 of 8 cores held for 10 s: the head (4 cores) is due then.
            l.allocate(with_len(input("x", Priority::Normal, cpu(6)), 10_000), now)
                .unwrap();
            let mut q = WaitQueue::new(10);
            q.push(input("head", Priority::Normal, cpu(4)), now, 60_000)
                .unwrap();
            q.push(
                with_len(input("short", Priority::Normal, cpu(2)), 5_000),
                now,
                60_000,
            )
            .unwrap();
            q.push(
                with_len(input("long", Priority::Normal, cpu(2)), 60_000),
                now,
                60_000,
            )
            .unwrap();
            let (granted, failed) =
                q.drain_with(&mut l, &Capacity::default(), now, mode, &mut Fifo);
            assert!(failed.is_empty());
            let want: Vec<&str> = match mode {
                // The 2 free cores are the head's earmark: conservative
                // backfill leaves them; shadow backfill lends them to what
                // ends (5 s) before the head is due (10 s).
                Backfill::Off | Backfill::Conservative => vec![],
                Backfill::Shadow => vec!["short"],
            };
            assert_eq!(lease_ids(&granted), want, "{mode:?}");
            assert_eq!(
                shadow_time(&l, &Capacity::default(), &cap(), &cpu(4), now),
                Some(now + 10_000),
                "{mode:?}: the head is still due when it was"
            );
        }
    }

    #[test]
    fn without_backfill_nothing_passes_a_blocked_entry() {
        let now = NOW;
        let mut l = ledger();
        l.allocate(input("x", Priority::Normal, cpu(6)), now)
            .unwrap();
        let mut q = WaitQueue::new(10);
        q.push(input("head", Priority::High, cpu(4)), now, 60_000)
            .unwrap();
        q.push(input("small", Priority::Normal, cpu(1)), now, 60_000)
            .unwrap();
        let (g, _) = q.drain_with(&mut l, &Capacity::default(), now, Backfill::Off, &mut Fifo);
        assert!(g.is_empty());
        assert_eq!(ids(q.iter()), ["head", "small"]);
        // A request needing only memory (the head needs none) passes a
        // blocked head under backfill, never without.
        let mem = ResourceRequirements {
            memory_mb: 100,
            ..Default::default()
        };
        for (mode, passes) in [(Backfill::Off, false), (Backfill::Shadow, true)] {
            let mut l = ledger();
            l.allocate(input("x", Priority::Normal, cpu(6)), now)
                .unwrap();
            let mut q = WaitQueue::new(10);
            q.push(input("head", Priority::High, cpu(4)), now, 60_000)
                .unwrap();
            q.push(input("mem", Priority::Normal, mem.clone()), now, 60_000)
                .unwrap();
            let (g, _) = q.drain_with(&mut l, &Capacity::default(), now, mode, &mut Fifo);
            assert_eq!(
                lease_ids(&g),
                if passes { vec!["mem"] } else { vec![] },
                "{mode:?}"
            );
        }
    }

    #[test]
    fn shadow_backfill_keeps_a_gpu_the_head_will_need_from_a_long_lease() {
        let now = NOW;
        let mut l = ledger();
        // One GPU busy for 10 s; the head wants both GPUs whole.
        l.allocate(
            with_len(input("x", Priority::Normal, gpu(1, 0, 0)), 10_000),
            now,
        )
        .unwrap();
        let mut q = WaitQueue::new(10);
        q.push(input("head", Priority::Normal, gpu(2, 0, 0)), now, 60_000)
            .unwrap();
        q.push(
            with_len(input("long", Priority::Normal, gpu(1, 0, 0)), 60_000),
            now,
            60_000,
        )
        .unwrap();
        let (mut lc, mut qc) = (l.clone(), q.clone());
        // Conservative backfill earmarks no GPU for a head whose GPUs are
        // not all free, so it lends the other for a minute: the head waits 60 s.
        let (g, _) = qc.drain_with(
            &mut lc,
            &Capacity::default(),
            now,
            Backfill::Conservative,
            &mut Fifo,
        );
        assert_eq!(lease_ids(&g), ["long"]);
        assert_eq!(
            shadow_time(&lc, &Capacity::default(), &cap(), &gpu(2, 0, 0), now),
            Some(now + 60_000)
        );
        // Shadow backfill refuses that, and still lends it to a lease
        // that ends before the busy GPU frees.
        q.push(
            with_len(input("short", Priority::Normal, gpu(1, 0, 0)), 5_000),
            now,
            60_000,
        )
        .unwrap();
        let (g, _) = q.drain_with(
            &mut l,
            &Capacity::default(),
            now,
            Backfill::Shadow,
            &mut Fifo,
        );
        assert_eq!(lease_ids(&g), ["short"]);
        assert_eq!(ids(q.iter()), ["head", "long"]);
        assert_eq!(
            shadow_time(&l, &Capacity::default(), &cap(), &gpu(2, 0, 0), now),
            Some(now + 10_000)
        );
    }

    /// Ranks by holder; counts grants.
    struct ByHolder(BTreeMap<String, u64>);

    impl Order for ByHolder {
        fn rank(&self, w: &Waiting) -> u64 {
            self.0.get(&w.input.holder.0).copied().unwrap_or(0)
        }
        fn granted(&mut self, lease: &Lease) {
            *self.0.entry(lease.holder.0.clone()).or_insert(0) += 10;
        }
        fn is_dynamic(&self) -> bool {
            true
        }
    }

    #[test]
    fn the_order_decides_within_a_priority_and_re_ranks_after_each_grant() {
        let now = NOW;
        let mut l = ledger();
        let mut q = WaitQueue::new(10);
        let by = |id: &str, holder: &str, p: Priority| {
            let mut i = input(id, p, cpu(1));
            i.holder = NodeId::from(holder);
            i
        };
        q.push(by("a1", "a", Priority::Normal), now, 60_000)
            .unwrap();
        q.push(by("a2", "a", Priority::Normal), now, 60_000)
            .unwrap();
        q.push(by("b1", "b", Priority::Normal), now, 60_000)
            .unwrap();
        q.push(by("c1", "c", Priority::Low), now, 60_000).unwrap();
        q.push(by("b2", "b", Priority::Normal), now, 60_000)
            .unwrap();
        // a has used more (rank 5) than b (0): b goes first; after one
        // grant b ranks 10, so a (5) takes the next; then a is at 15.
        let mut order = ByHolder([("a".to_string(), 5)].into_iter().collect());
        let (g, _) = q.drain_with(
            &mut l,
            &Capacity::default(),
            now,
            Backfill::Shadow,
            &mut order,
        );
        assert_eq!(lease_ids(&g), ["b1", "a1", "b2", "a2", "c1"]);
    }

    #[test]
    fn order_is_priority_then_fifo() {
        let mut q = WaitQueue::new(10);
        assert_eq!(
            q.push(input("n1", Priority::Normal, cpu(1)), NOW, 1_000),
            Ok(1)
        );
        assert_eq!(
            q.push(input("l1", Priority::Low, cpu(1)), NOW, 1_000),
            Ok(2)
        );
        assert_eq!(
            q.push(input("n2", Priority::Normal, cpu(1)), NOW, 1_000),
            Ok(2)
        );
        assert_eq!(
            q.push(input("c1", Priority::Critical, cpu(1)), NOW, 1_000),
            Ok(1)
        );
        assert_eq!(
            q.push(input("h1", Priority::High, cpu(1)), NOW, 1_000),
            Ok(2)
        );
        assert_eq!(ids(q.iter()), ["c1", "h1", "n1", "n2", "l1"]);
        assert_eq!(q.position(&id("n2")), Some(4));
        assert_eq!(q.position(&id("nope")), None);
        assert_eq!(q.len(), 5);
        let w = q.get(&id("n1")).unwrap();
        assert_eq!(w.enqueued_at_ms, NOW);
        assert_eq!(w.deadline_ms, NOW + 1_000);
        assert_eq!(q.remove(&id("h1")).unwrap().ticket(), &id("h1"));
        assert_eq!(q.remove(&id("h1")), None);
        assert_eq!(q.position(&id("n2")), Some(3));
        assert_eq!(ids(&q.entries()), ["c1", "n1", "n2", "l1"]);
    }

    #[test]
    fn push_refuses_duplicates_bad_requests_and_overflow() {
        let mut q = WaitQueue::new(2);
        q.push(input("a", Priority::Normal, cpu(1)), NOW, 5_000)
            .unwrap();
        let bad = |r: Result<usize, Denial>| r.unwrap_err().reason;
        assert_eq!(
            bad(q.push(input("a", Priority::High, cpu(1)), NOW, 5_000)),
            DenyReason::BadRequest
        );
        assert_eq!(
            bad(q.push(input("b", Priority::Normal, cpu(1)), NOW, 0)),
            DenyReason::BadRequest
        );
        assert_eq!(
            bad(q.push(input("b", Priority::Normal, cpu(0)), NOW, 10)),
            DenyReason::BadRequest
        );
        let mut zero = input("b", Priority::Normal, cpu(1));
        zero.lease_ms = 0;
        assert_eq!(bad(q.push(zero, NOW, 10)), DenyReason::BadRequest);
        q.push(input("b", Priority::Normal, cpu(1)), NOW, 200_000)
            .unwrap();
        // Full: retry when the earliest deadline passes (5 s away).
        let d = q
            .push(input("c", Priority::Critical, cpu(1)), NOW, 10)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::Busy);
        assert_eq!(d.retry_after_ms, Some(5_000));
        // Clamped to at least 100 ms and at most 30 s.
        let d = q
            .push(input("c", Priority::Critical, cpu(1)), NOW + 4_990, 10)
            .unwrap_err();
        assert_eq!(d.retry_after_ms, Some(MIN_RETRY_AFTER_MS));
        let mut q = WaitQueue::new(1);
        q.push(input("a", Priority::Normal, cpu(1)), NOW, 600_000)
            .unwrap();
        let d = q
            .push(input("c", Priority::Normal, cpu(1)), NOW, 10)
            .unwrap_err();
        assert_eq!(d.retry_after_ms, Some(MAX_RETRY_AFTER_MS));
        let d = WaitQueue::new(0)
            .push(input("c", Priority::Normal, cpu(1)), NOW, 10)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::Busy);
        assert_eq!(d.retry_after_ms, Some(MAX_RETRY_AFTER_MS));
    }

    #[test]
    fn expire_takes_exactly_what_ran_out() {
        let mut q = WaitQueue::new(10);
        q.push(input("a", Priority::Low, cpu(1)), NOW, 3_000)
            .unwrap();
        q.push(input("b", Priority::High, cpu(1)), NOW, 1_000)
            .unwrap();
        q.push(input("c", Priority::Normal, cpu(1)), NOW, 1_000)
            .unwrap();
        q.push(input("d", Priority::Normal, cpu(1)), NOW, u64::MAX)
            .unwrap();
        assert_eq!(q.next_deadline(), Some(NOW + 1_000));
        assert!(q.expire(NOW + 999).is_empty());
        // Deadline ties come out in grant order.
        assert_eq!(ids(&q.expire(NOW + 1_000)), ["b", "c"]);
        assert_eq!(q.next_deadline(), Some(NOW + 3_000));
        assert_eq!(ids(&q.expire(NOW + 10_000)), ["a"]);
        assert_eq!(q.next_deadline(), Some(u64::MAX));
        assert_eq!(ids(&q.expire(u64::MAX)), ["d"]);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn drain_grants_in_order_and_backfills_around_a_blocked_head() {
        let mut l = ledger();
        l.allocate(input("busy", Priority::Normal, cpu(5)), NOW)
            .unwrap();
        let mut q = WaitQueue::new(10);
        // 3 cores free.
        q.push(input("big", Priority::High, cpu(4)), NOW, 60_000)
            .unwrap();
        q.push(input("small1", Priority::Normal, cpu(1)), NOW, 60_000)
            .unwrap();
        q.push(input("small2", Priority::Normal, cpu(1)), NOW, 60_000)
            .unwrap();
        // The head is blocked and holds its 4 cores, though only 3 are
        // free: nothing behind it may take CPU.
        let (granted, failed) = q.drain(&mut l, &Capacity::default(), NOW);
        assert!(granted.is_empty() && failed.is_empty());
        assert_eq!(q.len(), 3);

        // Memory-only requests do not touch what the head waits for.
        let mem = ResourceRequirements {
            memory_mb: 1_024,
            ..Default::default()
        };
        q.push(input("mem", Priority::Low, mem), NOW, 60_000)
            .unwrap();
        let (granted, _) = q.drain(&mut l, &Capacity::default(), NOW);
        assert_eq!(lease_ids(&granted), ["mem"]);

        // Once the big one fits it goes first, then the small ones in FIFO
        // order as long as they fit.
        l.release(&id("busy"), None).unwrap();
        let (granted, failed) = q.drain(&mut l, &Capacity::default(), NOW + 1);
        assert_eq!(lease_ids(&granted), ["big", "small1", "small2"]);
        assert!(failed.is_empty());
        assert!(q.is_empty());
        assert_eq!(granted[0].priority, Priority::High);
        assert_eq!(granted[0].created_at_ms, NOW + 1);
        assert_eq!(l.free().cpu_cores, 2);
    }

    #[test]
    fn backfill_never_takes_the_gpus_earmarked_for_a_blocked_entry() {
        let mut l = ledger();
        // "busy" sits on GPU 0 (best fit, tie by index): GPU 0 has 7000
        // free, GPU 1 8000; 2 cores free.
        l.allocate(input("busy", Priority::Normal, gpu(1, 1_000, 6)), NOW)
            .unwrap();
        let mut q = WaitQueue::new(10);
        // Blocked on CPU; its GPU part fits best on GPU 0 (least free).
        q.push(input("a", Priority::High, gpu(1, 6_000, 4)), NOW, 60_000)
            .unwrap();
        // On its own the ledger would put this on GPU 0 too (best fit), which
        // would leave "a" without a GPU; it must go to GPU 1.
        q.push(input("b", Priority::Normal, gpu(1, 5_000, 0)), NOW, 60_000)
            .unwrap();
        assert_eq!(
            l.check(&q.get(&id("b")).unwrap().input.req).unwrap()[0].index,
            0
        );
        let (granted, _) = q.drain(&mut l, &Capacity::default(), NOW);
        assert_eq!(lease_ids(&granted), ["b"]);
        assert_eq!(
            granted[0].gpus,
            vec![GpuSlot {
                index: 1,
                memory_mb: 5_000
            }]
        );
        // Once the cores are back, "a" gets GPU 0.
        l.release(&id("busy"), None).unwrap();
        let (granted, _) = q.drain(&mut l, &Capacity::default(), NOW);
        assert_eq!(lease_ids(&granted), ["a"]);
        assert_eq!(granted[0].gpus[0].index, 0);
    }

    #[test]
    fn a_blocked_whole_gpu_request_holds_its_whole_gpu() {
        let mut l = ledger();
        l.allocate(input("busy", Priority::Normal, gpu(1, 1_000, 7)), NOW)
            .unwrap();
        let mut q = WaitQueue::new(10);
        // "busy" is on GPU 0 (best fit, tie by index). This one wants GPU 1
        // whole and 2 cores (1 free).
        q.push(input("whole", Priority::High, gpu(1, 0, 2)), NOW, 60_000)
            .unwrap();
        q.push(input("x", Priority::Low, gpu(1, 7_500, 0)), NOW, 60_000)
            .unwrap();
        q.push(input("y", Priority::Low, gpu(1, 7_000, 0)), NOW, 60_000)
            .unwrap();
        let (granted, _) = q.drain(&mut l, &Capacity::default(), NOW);
        // "x" would need GPU 1; "y" fits on GPU 0.
        assert_eq!(lease_ids(&granted), ["y"]);
        assert_eq!(granted[0].gpus[0].index, 0);
        assert_eq!(ids(q.iter()), ["whole", "x"]);
    }

    #[test]
    fn reserved_capacity_is_kept_out_of_reach() {
        let mut l = ledger();
        let mut q = WaitQueue::new(10);
        q.push(input("a", Priority::Normal, cpu(3)), NOW, 60_000)
            .unwrap();
        q.push(input("b", Priority::Normal, gpu(1, 0, 0)), NOW, 60_000)
            .unwrap();
        q.push(input("c", Priority::Normal, cpu(2)), NOW, 60_000)
            .unwrap();
        let reserved = Capacity {
            cpu_cores: 6,
            gpus: vec![GpuSlot {
                index: 0,
                memory_mb: 1,
            }],
            ..Default::default()
        };
        let (granted, _) = q.drain(&mut l, &reserved, NOW);
        // "a" needs 3 of the 2 cores in reach and holds them; "b" gets the
        // one GPU with nothing reserved on it, whole.
        assert_eq!(lease_ids(&granted), ["b"]);
        assert_eq!(
            granted[0].gpus,
            vec![GpuSlot {
                index: 1,
                memory_mb: 8_000
            }]
        );
        assert_eq!(l.free().cpu_cores, 8);
    }

    #[test]
    fn refusals_other_than_capacity_fail_and_timeouts_are_never_granted() {
        let mut l = ledger();
        l.allocate(input("taken", Priority::Normal, cpu(1)), NOW)
            .unwrap();
        let mut q = WaitQueue::new(10);
        q.push(input("taken", Priority::High, cpu(1)), NOW, 60_000)
            .unwrap();
        q.push(input("late", Priority::Normal, cpu(1)), NOW, 10)
            .unwrap();
        q.push(input("ok", Priority::Low, cpu(1)), NOW, 60_000)
            .unwrap();
        let (granted, failed) = q.drain(&mut l, &Capacity::default(), NOW + 10);
        assert_eq!(lease_ids(&granted), ["ok"]);
        let reasons: Vec<(&str, DenyReason)> = failed
            .iter()
            .map(|(w, d)| (w.ticket().0.as_str(), d.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("taken", DenyReason::BadRequest),
                ("late", DenyReason::QueueTimeout)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_request_larger_than_the_node_blocks_nothing() {
        let mut l = ledger();
        let mut q = WaitQueue::new(10);
        q.push(input("huge", Priority::Critical, cpu(9)), NOW, 60_000)
            .unwrap();
        q.push(input("small", Priority::Low, cpu(8)), NOW, 60_000)
            .unwrap();
        let (granted, failed) = q.drain(&mut l, &Capacity::default(), NOW);
        assert_eq!(lease_ids(&granted), ["small"]);
        assert!(failed.is_empty());
        assert_eq!(ids(q.iter()), ["huge"]);
    }

    #[test]
    fn the_lease_limit_blocks_like_capacity() {
        let limits = LeaseLimits {
            max_leases: 1,
            ..LeaseLimits::default()
        };
        let mut l = Ledger::new(NodeId::from("owner"), cap(), limits);
        l.allocate(input("one", Priority::Normal, cpu(1)), NOW)
            .unwrap();
        let mut q = WaitQueue::new(10);
        q.push(input("a", Priority::Normal, cpu(1)), NOW, 60_000)
            .unwrap();
        let (granted, failed) = q.drain(&mut l, &Capacity::default(), NOW);
        assert!(granted.is_empty() && failed.is_empty());
        l.release(&id("one"), None).unwrap();
        let (granted, _) = q.drain(&mut l, &Capacity::default(), NOW);
        assert_eq!(lease_ids(&granted), ["a"]);
    }

    #[test]
    fn demand_sums_what_waits() {
        let mut q = WaitQueue::new(10);
        assert!(q.demand().is_zero());
        let mut custom = gpu(2, 3_000, 1);
        custom.custom.insert("api_quota".into(), 4);
        custom.custom.insert("zero".into(), 0);
        custom.memory_mb = 100;
        q.push(input("a", Priority::Normal, custom), NOW, 10)
            .unwrap();
        q.push(input("b", Priority::Normal, gpu(1, 0, 2)), NOW, 10)
            .unwrap();
        let d = q.demand();
        assert_eq!(d.cpu_cores, 3);
        assert_eq!(d.memory_mb, 100);
        assert_eq!(d.gpus, 3);
        assert_eq!(d.gpu_memory_mb, 6_000);
        assert_eq!(
            d.custom,
            [("api_quota".to_string(), 4)].into_iter().collect()
        );
    }

    #[test]
    fn restore_keeps_order_and_drops_what_ran_out_or_overflows() {
        let mut q = WaitQueue::new(10);
        for (t, p, wait) in [
            ("a", Priority::Normal, 1_000),
            ("b", Priority::High, 5_000),
            ("c", Priority::Normal, 5_000),
            ("d", Priority::Low, 5_000),
        ] {
            q.push(input(t, p, cpu(1)), NOW, wait).unwrap();
        }
        let bytes = postcard::to_stdvec(&q.entries()).unwrap();
        let stored: Vec<Waiting> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(stored, q.entries());

        let mut fresh = WaitQueue::new(2);
        let refused = fresh.restore(stored.clone(), NOW + 1_000);
        // "a" ran out; "d" is last in grant order and does not fit in 2.
        assert_eq!(ids(&refused), ["a", "d"]);
        assert_eq!(ids(fresh.iter()), ["b", "c"]);
        // Restoring again keeps what is there and refuses the same.
        assert_eq!(ids(&fresh.restore(stored, NOW + 1_000)), ["a", "d"]);
        assert_eq!(ids(fresh.iter()), ["b", "c"]);
        // New arrivals come after the restored ones.
        fresh.remove(&id("c"));
        fresh
            .push(input("e", Priority::High, cpu(1)), NOW + 1_000, 10)
            .unwrap();
        assert_eq!(ids(fresh.iter()), ["b", "e"]);
    }

    #[test]
    fn restore_renumbers_repeated_seqs_and_the_counter_never_collides() {
        let w = |t: &str, p, seq| Waiting {
            input: input(t, p, cpu(1)),
            enqueued_at_ms: NOW,
            deadline_ms: NOW + 10,
            seq,
        };
        let mut q = WaitQueue::new(10);
        let refused = q.restore(
            vec![
                w("x", Priority::Normal, 7),
                w("y", Priority::Normal, 3),
                w("z", Priority::Normal, 3),
                w("x", Priority::High, 1),
            ],
            NOW,
        );
        assert!(refused.is_empty());
        // "x" at seq 1 came first; the later "x" is a repeat, skipped.
        assert_eq!(ids(q.iter()), ["x", "y", "z"]);
        let seqs: Vec<u64> = q.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);

        let mut q = WaitQueue::new(10);
        q.restore(
            vec![
                w("a", Priority::Normal, u64::MAX - 1),
                w("b", Priority::Normal, 5),
            ],
            NOW,
        );
        q.push(input("c", Priority::Normal, cpu(1)), NOW, 10)
            .unwrap();
        q.push(input("d", Priority::Normal, cpu(1)), NOW, 10)
            .unwrap();
        assert_eq!(ids(q.iter()), ["b", "a", "c", "d"]);
        assert_eq!(q.len(), 4);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn arb_capacity() -> impl Strategy<Value = Capacity> {
            (
                prop_oneof![1 => 0u32..4, 3 => 2u32..12],
                0u64..4_096,
                prop::collection::vec(prop_oneof![1 => 0u64..4_000, 3 => 2_000u64..8_000], 0..4),
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u64..10, 0..=2),
            )
                .prop_map(|(cpu_cores, memory_mb, gpus, custom)| Capacity {
                    cpu_cores,
                    memory_mb,
                    disk_mb: 1_000,
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
            (
                prop_oneof![0u32..3, 0u32..8],
                prop_oneof![Just(0u64), 0u64..2_000],
                gpu,
                custom,
            )
                .prop_map(|(cpu_cores, memory_mb, gpu, custom)| ResourceRequirements {
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
                })
        }

        fn arb_reserved() -> impl Strategy<Value = Capacity> {
            prop_oneof![
                2 => Just(Capacity::default()),
                1 => (0u32..4, 0u64..1_000, prop::option::of(0u64..8_000), 0u64..3).prop_map(
                    |(cpu_cores, memory_mb, gpu, a)| Capacity {
                        cpu_cores,
                        memory_mb,
                        disk_mb: 0,
                        gpus: gpu
                            .map(|memory_mb| vec![GpuSlot { index: 1, memory_mb }])
                            .unwrap_or_default(),
                        custom: [("a".to_string(), a)].into_iter().collect(),
                    }
                ),
            ]
        }

        #[derive(Clone, Debug)]
        enum Op {
            Push {
                req: ResourceRequirements,
                prio: Priority,
                wait_ms: u64,
                /// Reuse a ticket that is waiting, or an active lease's id.
                reuse: Option<(bool, Index)>,
            },
            Drain(Capacity),
            /// A lease granted directly on the ledger (a walk-in request),
            /// so the queue meets capacity it does not control.
            Occupy(ResourceRequirements),
            Release(Index),
            Cancel(Index),
            Advance(u64),
            Expire,
            Restart,
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            let push = (
                arb_req(),
                prop::sample::select(Priority::ALL.to_vec()),
                prop_oneof![1 => Just(0u64), 9 => (1u64..8).prop_map(|x| x * 500)],
                prop::option::weighted(0.1, (any::<bool>(), any::<Index>())),
            )
                .prop_map(|(req, prio, wait_ms, reuse)| Op::Push {
                    req,
                    prio,
                    wait_ms,
                    reuse,
                });
            prop_oneof![
                6 => push,
                4 => arb_reserved().prop_map(Op::Drain),
                2 => arb_req().prop_map(Op::Occupy),
                3 => any::<Index>().prop_map(Op::Release),
                1 => any::<Index>().prop_map(Op::Cancel),
                2 => (0u64..6).prop_map(|x| Op::Advance(x * 250)),
                1 => Just(Op::Expire),
                1 => Just(Op::Restart),
            ]
        }

        /// No over-commit: the ledger's leases fit its capacity, per
        /// dimension, per GPU and per custom key (summed in u128).
        fn assert_within(l: &Ledger) -> Result<(), TestCaseError> {
            let cap = l.capacity();
            let mut cpu = 0u128;
            let mut mem = 0u128;
            let mut per_gpu: BTreeMap<u32, u128> = BTreeMap::new();
            let mut custom: BTreeMap<String, u128> = BTreeMap::new();
            for x in l.leases() {
                cpu += u128::from(x.cpu_cores);
                mem += u128::from(x.memory_mb);
                for g in &x.gpus {
                    *per_gpu.entry(g.index).or_default() += u128::from(g.memory_mb);
                }
                for (k, v) in &x.custom {
                    *custom.entry(k.clone()).or_default() += u128::from(*v);
                }
            }
            prop_assert!(cpu <= u128::from(cap.cpu_cores));
            prop_assert!(mem <= u128::from(cap.memory_mb));
            for (i, used) in per_gpu {
                let have = cap
                    .gpus
                    .iter()
                    .find(|g| g.index == i)
                    .map_or(0, |g| g.memory_mb);
                prop_assert!(used <= u128::from(have), "gpu {i}: {used} of {have}");
            }
            for (k, used) in custom {
                let have = cap.custom.get(&k).copied().unwrap_or(0);
                prop_assert!(used <= u128::from(have), "custom.{k}: {used} of {have}");
            }
            Ok(())
        }

        /// `leases` fit in `room`, per dimension, per GPU and per key.
        fn assert_taken_within(room: &Capacity, leases: &[Lease]) -> Result<(), TestCaseError> {
            let mut cpu = 0u128;
            let mut mem = 0u128;
            let mut per_gpu: BTreeMap<u32, u128> = BTreeMap::new();
            let mut custom: BTreeMap<String, u128> = BTreeMap::new();
            for x in leases {
                cpu += u128::from(x.cpu_cores);
                mem += u128::from(x.memory_mb);
                for g in &x.gpus {
                    *per_gpu.entry(g.index).or_default() += u128::from(g.memory_mb);
                }
                for (k, v) in &x.custom {
                    *custom.entry(k.clone()).or_default() += u128::from(*v);
                }
            }
            prop_assert!(
                cpu <= u128::from(room.cpu_cores),
                "cpu {cpu} of {}",
                room.cpu_cores
            );
            prop_assert!(mem <= u128::from(room.memory_mb));
            for (i, used) in per_gpu {
                let have = room
                    .gpus
                    .iter()
                    .find(|g| g.index == i)
                    .map_or(0, |g| g.memory_mb);
                prop_assert!(
                    used <= u128::from(have),
                    "gpu {i}: {used} of {have} in reach"
                );
            }
            for (k, used) in custom {
                let have = room.custom.get(&k).copied().unwrap_or(0);
                prop_assert!(used <= u128::from(have));
            }
            Ok(())
        }

        /// The queue's own bookkeeping agrees with itself.
        fn assert_queue(q: &WaitQueue) -> Result<(), TestCaseError> {
            prop_assert!(q.len() <= q.max_len());
            prop_assert_eq!(q.is_empty(), q.iter().next().is_none());
            let all: Vec<&Waiting> = q.iter().collect();
            prop_assert_eq!(all.len(), q.len());
            for (i, w) in all.iter().enumerate() {
                prop_assert_eq!(q.position(w.ticket()), Some(i + 1));
                prop_assert_eq!(q.get(w.ticket()), Some(*w));
                if i > 0 {
                    let p = all[i - 1];
                    // Priority descending, FIFO within a priority.
                    prop_assert!(
                        (Reverse(p.input.priority), p.seq) < (Reverse(w.input.priority), w.seq)
                    );
                }
            }
            prop_assert_eq!(q.next_deadline(), all.iter().map(|w| w.deadline_ms).min());
            let mut demand = Usage::default();
            for w in &all {
                demand.add(&request_usage(&w.input.req));
            }
            prop_assert_eq!(q.demand(), demand);
            Ok(())
        }

        /// One drain, checked against properties (b), (c) and (d) and the
        /// bookkeeping of what came out.
        fn checked_drain(
            q: &mut WaitQueue,
            l: &mut Ledger,
            reserved: &Capacity,
            now: u64,
        ) -> Result<(), TestCaseError> {
            let before_q = q.clone();
            let before_l = l.clone();
            let before: Vec<Waiting> = q.entries();
            let pos = |t: &LeaseId| before.iter().position(|w| w.ticket() == t);
            let (granted, failed) = q.drain(l, reserved, now);

            // Every entry is granted, failed or still waiting, once, and the
            // waiting ones keep their order.
            let granted_ids: BTreeSet<LeaseId> =
                granted.iter().map(|x| x.lease_id.clone()).collect();
            let failed_ids: BTreeSet<LeaseId> =
                failed.iter().map(|(w, _)| w.ticket().clone()).collect();
            let left: Vec<LeaseId> = q.iter().map(|w| w.ticket().clone()).collect();
            prop_assert_eq!(granted_ids.len(), granted.len());
            let expected_left: Vec<LeaseId> = before
                .iter()
                .map(|w| w.ticket().clone())
                .filter(|t| !granted_ids.contains(t) && !failed_ids.contains(t))
                .collect();
            prop_assert_eq!(&left, &expected_left);
            prop_assert_eq!(granted.len() + failed.len() + left.len(), before.len());

            // (b) grants come out in queue order.
            let order: Vec<Option<usize>> = granted.iter().map(|x| pos(&x.lease_id)).collect();
            prop_assert!(order.iter().all(Option::is_some));
            prop_assert!(order.windows(2).all(|p| p[0] < p[1]), "{order:?}");
            for lease in &granted {
                let w = &before[pos(&lease.lease_id).unwrap_or(0)];
                prop_assert!(w.deadline_ms > now, "granted after its deadline");
                prop_assert_eq!(lease.priority, w.input.priority);
                prop_assert_eq!(lease.created_at_ms, now);
                prop_assert_eq!(l.get(&lease.lease_id), Some(lease));
            }
            for (w, d) in &failed {
                if w.deadline_ms <= now {
                    prop_assert_eq!(d.reason, DenyReason::QueueTimeout);
                } else {
                    prop_assert_eq!(d.reason, DenyReason::BadRequest);
                    prop_assert!(before_l.get(w.ticket()).is_some());
                }
            }
            prop_assert!(q.iter().all(|w| w.deadline_ms > now));

            // (a) no over-commit, and nothing taken from `reserved`.
            assert_within(l)?;
            assert_taken_within(&before_l.free().minus(reserved), &granted)?;

            // (c) an entry still waiting was decided by what is ahead of it
            // alone: the same drain without everything behind it grants and
            // fails exactly the same entries ahead of it, and not it.
            for a in q.iter() {
                let Some(ia) = pos(a.ticket()) else {
                    return Err(TestCaseError::fail("waiting entry was not queued"));
                };
                if !granted.iter().any(|x| pos(&x.lease_id) > Some(ia)) {
                    continue;
                }
                let mut q2 = before_q.clone();
                for w in &before[ia + 1..] {
                    q2.remove(w.ticket());
                }
                let mut l2 = before_l.clone();
                let (g2, f2) = q2.drain(&mut l2, reserved, now);
                let ahead_g: Vec<&Lease> = granted
                    .iter()
                    .filter(|x| pos(&x.lease_id) < Some(ia))
                    .collect();
                prop_assert_eq!(g2.iter().collect::<Vec<_>>(), ahead_g);
                let ahead_f: Vec<&(Waiting, Denial)> = failed
                    .iter()
                    .filter(|(w, _)| pos(w.ticket()) < Some(ia))
                    .collect();
                prop_assert_eq!(f2.iter().collect::<Vec<_>>(), ahead_f);
                prop_assert!(
                    q2.get(a.ticket()).is_some(),
                    "backfill delayed {}",
                    a.ticket()
                );
            }

            // Walk the queue as it was, with the ledger as each entry found
            // it (the grants ahead of it applied), for (c) and (d).
            let total = before_l.capacity().clone();
            let end_room = l.free().minus(reserved);
            let mut at_turn = before_l.clone();
            let mut blocked = 0usize;
            // Scalar demand of the blocked entries so far, in u128.
            let mut owed: BTreeMap<&str, u128> = BTreeMap::new();
            // GPU memory owed to the blocked entries so far.
            let mut owed_gpus: Vec<GpuSlot> = Vec::new();
            for (i, w) in before.iter().enumerate() {
                let t = w.ticket();
                if let Some(lease) = granted.iter().find(|x| &x.lease_id == t) {
                    prop_assert!(at_turn.restore(vec![lease.clone()], now).is_empty());
                    continue;
                }
                if failed_ids.contains(t) || fit(&total, &total, &w.input.req).is_err() {
                    // Failed, or larger than the node: skipped, owed nothing.
                    continue;
                }
                let room = at_turn.free().minus(reserved);
                // (d) with nothing blocked ahead, a waiting entry did not fit.
                if blocked == 0 {
                    let fits = fit(&room, &total, &w.input.req).is_ok()
                        && at_turn.len() < at_turn.limits().max_leases;
                    prop_assert!(!fits, "{} fitted with nothing blocked ahead", t);
                }
                // More generally, a waiting entry did not fit in what was in
                // reach at its turn minus what the waiting entries ahead of it
                // are owed (so the backfill is not more conservative than it
                // says).
                let clamp = |key: &str| {
                    owed.get(key)
                        .copied()
                        .unwrap_or(0)
                        .min(u128::from(u64::MAX)) as u64
                };
                let owed_ahead = Capacity {
                    cpu_cores: u32::try_from(clamp("cpu")).unwrap_or(u32::MAX),
                    memory_mb: clamp("mem"),
                    disk_mb: 0,
                    gpus: owed_gpus.clone(),
                    custom: total.custom.keys().map(|k| (k.clone(), clamp(k))).collect(),
                };
                let fits = fit(&room.minus(&owed_ahead), &total, &w.input.req).is_ok()
                    && at_turn.len() < at_turn.limits().max_leases;
                prop_assert!(!fits, "{} fitted in what the entries ahead left", t);
                blocked += 1;
                // (c) backfill takes nothing an earlier waiting entry is owed:
                // per scalar dimension, what was granted behind this entry
                // fits in what was in reach at its turn minus the demand of
                // every waiting entry up to it...
                let req = &w.input.req;
                *owed.entry("cpu").or_default() += u128::from(req.cpu_cores);
                *owed.entry("mem").or_default() += u128::from(req.memory_mb);
                for (k, v) in &req.custom {
                    *owed.entry(k.as_str()).or_default() += u128::from(*v);
                }
                let behind: Vec<&Lease> = granted
                    .iter()
                    .filter(|x| pos(&x.lease_id) > Some(i))
                    .collect();
                let taken = |f: &dyn Fn(&Lease) -> u64| -> u128 {
                    behind.iter().map(|x| u128::from(f(x))).sum()
                };
                let left = |have: u64, key: &str| {
                    u128::from(have).saturating_sub(owed.get(key).copied().unwrap_or(0))
                };
                prop_assert!(
                    taken(&|x| u64::from(x.cpu_cores)) <= left(u64::from(room.cpu_cores), "cpu")
                );
                prop_assert!(taken(&|x| x.memory_mb) <= left(room.memory_mb, "mem"));
                for (k, have) in &room.custom {
                    let got = taken(&|x| x.custom.get(k).copied().unwrap_or(0));
                    prop_assert!(got <= left(*have, k), "custom.{k} taken behind {t}");
                }
                // ... and on every GPU, what each waiting entry was owed at its
                // turn (the GPUs it would have been given there, after those
                // owed to the entries ahead) is still in reach after the drain.
                let gpu_room = room.minus(&Capacity {
                    gpus: owed_gpus.clone(),
                    ..Capacity::default()
                });
                if let Some(slots) = assign_gpus(
                    &gpu_room.gpus,
                    &total.gpus,
                    req.gpus_wanted(),
                    req.gpu_memory_mb,
                ) {
                    owed_gpus.extend(slots);
                }
            }
            for g in &end_room.gpus {
                let owed: u128 = owed_gpus
                    .iter()
                    .filter(|o| o.index == g.index)
                    .map(|o| u128::from(o.memory_mb))
                    .sum();
                prop_assert!(
                    owed <= u128::from(g.memory_mb),
                    "backfill took GPU {} memory owed to a waiting entry",
                    g.index
                );
            }
            Ok(())
        }

        fn run(
            cap: Capacity,
            max_len: usize,
            max_leases: usize,
            ops: Vec<Op>,
        ) -> Result<(), TestCaseError> {
            let limits = LeaseLimits {
                max_leases,
                ..LeaseLimits::default()
            };
            let mut l = Ledger::new(NodeId::from("owner"), cap, limits);
            let mut q = WaitQueue::new(max_len);
            let mut now = NOW;
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push {
                        req,
                        prio,
                        wait_ms,
                        reuse,
                    } => {
                        let ticket = match reuse {
                            Some((true, ix)) if !q.is_empty() => {
                                q.entries()[ix.index(q.len())].ticket().clone()
                            }
                            Some((false, ix)) if !l.is_empty() => {
                                let ls: Vec<&Lease> = l.leases().collect();
                                ls[ix.index(ls.len())].lease_id.clone()
                            }
                            _ => {
                                next += 1;
                                LeaseId(format!("t{next}"))
                            }
                        };
                        let mut inp = input(&ticket.0, prio, req.clone());
                        inp.lease_ms = 10_000;
                        let len = q.len();
                        let dup = q.get(&ticket).is_some();
                        let got = q.push(inp.clone(), now, wait_ms);
                        if dup || wait_ms == 0 || req.is_empty() {
                            prop_assert_eq!(got.unwrap_err().reason, DenyReason::BadRequest);
                            prop_assert_eq!(q.len(), len);
                        } else if len >= max_len {
                            let d = got.unwrap_err();
                            prop_assert_eq!(d.reason, DenyReason::Busy);
                            let r = d.retry_after_ms.unwrap_or(0);
                            prop_assert!((MIN_RETRY_AFTER_MS..=MAX_RETRY_AFTER_MS).contains(&r));
                        } else {
                            let p = got.map_err(|d| TestCaseError::fail(d.to_string()))?;
                            prop_assert_eq!(q.position(&ticket), Some(p));
                            prop_assert_eq!(q.len(), len + 1);
                            let w = q.get(&ticket).cloned().unwrap_or_else(|| unreachable!());
                            prop_assert_eq!(&w.input, &inp);
                            prop_assert_eq!(w.deadline_ms, now + wait_ms);
                        }
                    }
                    Op::Drain(reserved) => checked_drain(&mut q, &mut l, &reserved, now)?,
                    Op::Occupy(req) => {
                        next += 1;
                        let mut inp = input(&format!("t{next}"), Priority::Normal, req);
                        inp.lease_ms = 10_000;
                        let _ = l.allocate(inp, now);
                    }
                    Op::Release(ix) => {
                        let ls: Vec<LeaseId> = l.leases().map(|x| x.lease_id.clone()).collect();
                        if !ls.is_empty() {
                            l.release(&ls[ix.index(ls.len())], None)
                                .map_err(|d| TestCaseError::fail(d.to_string()))?;
                        }
                    }
                    Op::Cancel(ix) => {
                        if !q.is_empty() {
                            let t = q.entries()[ix.index(q.len())].ticket().clone();
                            let w = q.remove(&t);
                            prop_assert_eq!(w.map(|w| w.input.lease_id), Some(t.clone()));
                            prop_assert!(q.get(&t).is_none());
                        }
                    }
                    Op::Advance(ms) => {
                        now += ms;
                        l.expire(now);
                    }
                    Op::Expire => {
                        // (e) exactly the entries past their deadline.
                        let before = q.entries();
                        let got = q.expire(now);
                        let mut want: Vec<Waiting> = before
                            .iter()
                            .filter(|w| w.deadline_ms <= now)
                            .cloned()
                            .collect();
                        want.sort_by_key(|w| w.deadline_ms);
                        prop_assert_eq!(got, want);
                        prop_assert!(q.iter().all(|w| w.deadline_ms > now));
                        let kept: Vec<Waiting> =
                            before.into_iter().filter(|w| w.deadline_ms > now).collect();
                        prop_assert_eq!(q.entries(), kept);
                    }
                    Op::Restart => {
                        let before = q.entries();
                        let bytes = postcard::to_stdvec(&before)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let stored: Vec<Waiting> = postcard::from_bytes(&bytes)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(&stored, &before);
                        let mut fresh = WaitQueue::new(max_len);
                        let refused = fresh.restore(stored, now);
                        let (kept, gone): (Vec<Waiting>, Vec<Waiting>) =
                            before.into_iter().partition(|w| w.deadline_ms > now);
                        prop_assert_eq!(fresh.entries(), kept);
                        let mut refused = refused;
                        refused.sort_by_key(|w| w.seq);
                        let mut gone = gone;
                        gone.sort_by_key(|w| w.seq);
                        prop_assert_eq!(refused, gone);
                        q = fresh;
                    }
                }
                assert_queue(&q)?;
                assert_within(&l)?;
            }
            Ok(())
        }

        /// Node capacity, held leases (request, length), waiting entries
        /// (request, length, priority), and `reserved`.
        type Busy = (
            Capacity,
            Vec<(ResourceRequirements, u64)>,
            Vec<(ResourceRequirements, u64, Priority)>,
            Capacity,
        );

        /// A ledger with leases of random sizes and lengths, and a queue.
        fn arb_busy() -> impl Strategy<Value = Busy> {
            let prio = prop_oneof![
                Just(Priority::Low),
                Just(Priority::Normal),
                Just(Priority::High)
            ];
            (
                arb_capacity(),
                prop::collection::vec((arb_req(), 1_000u64..60_000), 0..8),
                prop::collection::vec((arb_req(), 1_000u64..60_000, prio), 1..10),
                arb_reserved(),
            )
        }

        /// Shadow times compare as `None` = never.
        fn later(a: Option<u64>, b: Option<u64>) -> bool {
            match (a, b) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(x), Some(y)) => x > y,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Backfill never delays the head: after a shadow-mode drain,
            /// the first entry still waiting (that could fit the node at
            /// all) is due no later, by the leases' ends, than after the
            /// same drain with every entry behind it absent. Without
            /// backfill nothing behind it is granted at all. Neither
            /// over-commits nor takes from `reserved`.
            #[test]
            fn backfill_never_delays_the_head((cap, held, waiting, reserved) in arb_busy()) {
                let mut l = Ledger::new(NodeId::from("owner"), cap.clone(), LeaseLimits::default());
                for (i, (req, len)) in held.into_iter().enumerate() {
                    let mut inp = input(&format!("held{i}"), Priority::Normal, req);
                    inp.lease_ms = len;
                    let _ = l.allocate(inp, NOW);
                }
                let mut q = WaitQueue::new(64);
                for (i, (req, len, prio)) in waiting.into_iter().enumerate() {
                    let mut inp = input(&format!("w{i}"), prio, req);
                    inp.lease_ms = len;
                    let _ = q.push(inp, NOW, 120_000);
                }
                for mode in [Backfill::Shadow, Backfill::Off] {
                    let (mut q1, mut l1) = (q.clone(), l.clone());
                    let free_before = l1.free().minus(&reserved);
                    let before = q1.entries();
                    let (granted, _) = q1.drain_with(&mut l1, &reserved, NOW, mode, &mut Fifo);
                    assert_within(&l1)?;
                    assert_taken_within(&free_before, &granted)?;
                    let Some(head) = q1
                        .iter()
                        .find(|w| fit(&cap, &cap, &w.input.req).is_ok())
                        .cloned()
                    else {
                        continue;
                    };
                    let pos = before.iter().position(|w| w.ticket() == head.ticket()).unwrap_or(0);
                    let (mut q2, mut l2) = (q.clone(), l.clone());
                    for w in &before[pos + 1..] {
                        q2.remove(w.ticket());
                    }
                    let (granted2, _) = q2.drain_with(&mut l2, &reserved, NOW, mode, &mut Fifo);
                    let s1 = shadow_time(&l1, &reserved, &cap, &head.input.req, NOW);
                    let s2 = shadow_time(&l2, &reserved, &cap, &head.input.req, NOW);
                    prop_assert!(!later(s1, s2), "{mode:?}: head due {s1:?} with backfill, {s2:?} without");
                    if mode == Backfill::Off {
                        prop_assert_eq!(granted.len(), granted2.len(), "granted past a blocked entry");
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Random pushes, drains (with and without reservations),
            /// releases, cancels, expiries and restarts: no over-commit,
            /// grants in queue order, backfill never delays an entry ahead,
            /// an unblocked entry that fits is granted, expire takes exactly
            /// what ran out, and the queue never exceeds its bound.
            #[test]
            fn queue_properties_hold(
                cap in arb_capacity(),
                max_len in 0usize..8,
                max_leases in prop_oneof![1 => 1usize..4, 3 => Just(100usize)],
                ops in prop::collection::vec(arb_op(), 1..80),
            ) {
                run(cap, max_len, max_leases, ops)?;
            }
        }
    }
}
