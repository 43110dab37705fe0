//! The gossip model: one shared board of what every owner announced, with
//! history, instead of one 10,000-entry view per node.
//!
//! Each owner publishes a [`Snapshot`] of its free capacity when it changes
//! (at most once per debounce interval) and on every heartbeat. Requester
//! `r` sees owner `x` as of the newest snapshot that has reached it: one
//! published at `t0` reaches `r` at `t0 + delay(x, r, seq)`, the delay being
//! uniform in the configured mean ± jitter, unless it is lost on the way
//! (probability `loss`). A lost snapshot leaves `r` with the one before it
//! until a later one (the next change or heartbeat) gets through. Delays and
//! losses are hashes of (seed, x, r, seq), so they are fixed per message,
//! whatever order the events run in, and cost no memory per pair of nodes.
//!
//! The first snapshot (at start) reaches everybody at once, as the sync on
//! connect does. History older than the longest delay plus a few heartbeats
//! is dropped; if every newer snapshot to `r` was lost, `r` sees the oldest
//! one kept.

use std::collections::VecDeque;

use crate::model::Capacity;

use super::events::{hash, unit};
use super::scenario::Network;

/// Keep at most this many snapshots per owner.
const MAX_HISTORY: usize = 64;

/// One announcement of an owner.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at_ms: u64,
    pub seq: u64,
    pub free: Capacity,
    pub active_leases: u32,
    pub queued: u32,
}

/// Every owner's announcements; see the module docs.
pub struct Board {
    hist: Vec<VecDeque<Snapshot>>,
    seq: Vec<u64>,
    seed: u64,
    delay_lo: u64,
    delay_span: u64,
    loss: f64,
    horizon_ms: u64,
}

impl Board {
    pub fn new(owners: usize, net: &Network, seed: u64) -> Self {
        let delay_lo = net.gossip_delay_ms - net.gossip_jitter_ms;
        let delay_span = 2 * net.gossip_jitter_ms + 1;
        Board {
            hist: vec![VecDeque::new(); owners],
            seq: vec![0; owners],
            seed,
            delay_lo,
            delay_span,
            loss: net.loss,
            horizon_ms: delay_lo + delay_span + 3 * net.heartbeat_ms,
        }
    }

    /// Owner `x` announces `free` at `now_ms`.
    pub fn publish(
        &mut self,
        x: usize,
        now_ms: u64,
        free: Capacity,
        active_leases: u32,
        queued: u32,
    ) {
        let seq = self.seq[x];
        self.seq[x] += 1;
        let h = &mut self.hist[x];
        h.push_back(Snapshot {
            at_ms: now_ms,
            seq,
            free,
            active_leases,
            queued,
        });
        while h.len() > 1
            && (h.len() > MAX_HISTORY
                || h.front()
                    .is_some_and(|s| s.at_ms + self.horizon_ms < now_ms))
        {
            h.pop_front();
        }
    }

    /// The newest announcement of `x`.
    pub fn latest(&self, x: usize) -> Option<&Snapshot> {
        self.hist[x].back()
    }

    /// Announcements of `x` so far.
    pub fn published(&self, x: usize) -> u64 {
        self.seq[x]
    }

    /// The delay of announcement `seq` of `x` to `r`, ms.
    pub fn delay(&self, x: usize, r: usize, seq: u64) -> u64 {
        if seq == 0 {
            return 0;
        }
        self.delay_lo + hash(&[self.seed, 1, x as u64, r as u64, seq]) % self.delay_span
    }

    /// Whether announcement `seq` of `x` never reaches `r`.
    pub fn lost(&self, x: usize, r: usize, seq: u64) -> bool {
        seq != 0
            && self.loss > 0.0
            && unit(hash(&[self.seed, 2, x as u64, r as u64, seq])) < self.loss
    }

    /// What requester `r` knows of owner `x` at `now_ms`.
    pub fn view(&self, x: usize, r: usize, now_ms: u64) -> Option<&Snapshot> {
        let h = &self.hist[x];
        for s in h.iter().rev() {
            if s.at_ms + self.delay(x, r, s.seq) <= now_ms && !self.lost(x, r, s.seq) {
                return Some(s);
            }
        }
        // Every kept snapshot is in flight or lost: the oldest kept stands
        // in for the last one that got through, once it could have arrived.
        h.front()
            .filter(|s| s.at_ms + self.delay(x, r, s.seq) <= now_ms)
    }
}
