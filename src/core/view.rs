//! The requester's peer table: what this node believes about every node it
//! has heard of, built from signed [`Announcement`]s.
//!
//! The view is only ever used to choose *whom to ask* (DESIGN "Principles",
//! 2). It never admits anything: the owner decides on its own ledger, and a
//! refusal because the view was stale is handled by late binding in
//! [`placement`](crate::core::placement). The local node is part of the
//! view, so it can be a candidate for its own requests.
//!
//! Sans-IO: time is the `now_ms` argument, and all state is kept in a
//! `BTreeMap` keyed by [`NodeId`], so every listing is in node-id order and
//! every run replays identically. The network layer verifies signatures
//! before calling [`View::apply`].

use std::collections::BTreeMap;

use crate::core::fit::fit;
use crate::core::health::{HealthConfig, PeerHealth};
use crate::core::placement::Candidate;
use crate::model::{Announcement, Capacity, NodeId, NodeStatus, ResourceRequirements};

/// Smoothing factor of the round-trip-time moving average.
const RTT_ALPHA: f64 = 0.3;

/// How long silence may last before a peer counts as stale, offline, or is
/// forgotten. Silence is measured from the last announcement or
/// [`View::touch`].
#[derive(Clone, Debug, PartialEq)]
pub struct ViewConfig {
    /// For a peer never connected to directly (known from relayed
    /// announcements only): silent longer than this is
    /// [`NodeStatus::Suspect`], not asked.
    pub stale_after_ms: u64,
    /// Silent longer than this: [`NodeStatus::Offline`].
    pub offline_after_ms: u64,
    /// Silent longer than this: dropped by [`View::prune`].
    pub forget_after_ms: u64,
    /// The failure detector for peers we connect to directly.
    pub health: HealthConfig,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            stale_after_ms: 15_000,
            offline_after_ms: 30_000,
            forget_after_ms: 300_000,
            health: HealthConfig::default(),
        }
    }
}

/// What the view holds about one remote peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerEntry {
    /// Its newest announcement.
    pub ann: Announcement,
    /// When we last heard from it (announcement, ping, sync), our clock.
    pub last_seen_ms: u64,
    /// Smoothed round-trip time, if measured.
    pub rtt_ms: Option<f64>,
    /// Whether we hold a connection to it right now.
    pub connected: bool,
    /// Whether we ever held a connection to it. Until then its status
    /// comes from announcement silence (`stale_after_ms`,
    /// `offline_after_ms`); after, from the failure detector.
    pub direct: bool,
    /// The failure detector's observations.
    pub health: PeerHealth,
}

/// What [`View::apply`] did with an announcement.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Applied {
    /// First announcement from this node; stored.
    New,
    /// Newer than what we had; stored.
    Updated,
    /// Sequence number not newer than the stored one; ignored entirely.
    Replay,
    /// Our own announcement echoed back; ignored.
    OwnId,
}

/// The peer table. See the module docs.
#[derive(Clone, Debug)]
pub struct View {
    local: Announcement,
    cfg: ViewConfig,
    peers: BTreeMap<NodeId, PeerEntry>,
    /// The last `seq` of every forgotten peer: an old announcement of it
    /// that a peer still relays must not bring the ghost back; a new
    /// process of it announces a higher `seq`.
    forgotten: BTreeMap<NodeId, u64>,
}

/// Most forgotten peers remembered.
const MAX_FORGOTTEN: usize = 4096;

impl View {
    /// A view holding only the local node.
    pub fn new(local: Announcement, cfg: ViewConfig) -> Self {
        View {
            local,
            cfg,
            peers: BTreeMap::new(),
            forgotten: BTreeMap::new(),
        }
    }

    pub fn local_id(&self) -> &NodeId {
        &self.local.node_id
    }

    pub fn local(&self) -> &Announcement {
        &self.local
    }

    /// Replace the local node's announcement (after its free capacity
    /// changed, say). If its id matches a stored remote peer, that entry is
    /// dropped so the local node is never listed twice.
    pub fn set_local(&mut self, ann: Announcement) {
        self.peers.remove(&ann.node_id);
        self.local = ann;
    }

    pub fn config(&self) -> &ViewConfig {
        &self.cfg
    }

    /// Take in an announcement whose signature the caller has checked.
    ///
    /// Our own id gives [`Applied::OwnId`] and changes nothing. A sequence
    /// number not greater than the stored one gives [`Applied::Replay`] and
    /// changes nothing, not even `last_seen_ms`. Otherwise the announcement
    /// replaces the stored one (keeping the measured rtt and connection
    /// state) and `last_seen_ms` becomes `now_ms` (never moving backwards).
    /// A `leaving` announcement is stored like any other; the peer's status
    /// becomes [`NodeStatus::Offline`].
    pub fn apply(&mut self, ann: Announcement, now_ms: u64) -> Applied {
        if ann.node_id == self.local.node_id {
            return Applied::OwnId;
        }
        if self
            .forgotten
            .get(&ann.node_id)
            .is_some_and(|seq| ann.seq <= *seq)
        {
            return Applied::Replay;
        }
        match self.peers.get_mut(&ann.node_id) {
            Some(entry) if ann.seq <= entry.ann.seq => Applied::Replay,
            Some(entry) => {
                let restarted = ann.instance != entry.ann.instance;
                if ann.leaving {
                    entry.health.goodbye();
                } else if restarted {
                    entry.health.restarted(now_ms);
                } else {
                    entry.health.heard(now_ms);
                }
                entry.health.load(ann.cpu_usage_pct);
                entry.ann = ann;
                entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
                Applied::Updated
            }
            None => {
                let mut health = PeerHealth::new(now_ms);
                if ann.leaving {
                    health.goodbye();
                }
                health.load(ann.cpu_usage_pct);
                self.peers.insert(
                    ann.node_id.clone(),
                    PeerEntry {
                        ann,
                        last_seen_ms: now_ms,
                        rtt_ms: None,
                        connected: false,
                        direct: false,
                        health,
                    },
                );
                Applied::New
            }
        }
    }

    /// We heard from `node` some other way (a ping, a sync). Unknown nodes
    /// are ignored: only an announcement creates an entry.
    pub fn touch(&mut self, node: &NodeId, now_ms: u64) {
        if let Some(e) = self.peers.get_mut(node) {
            e.last_seen_ms = e.last_seen_ms.max(now_ms);
            e.health.heard(now_ms);
        }
    }

    /// A ping to `node` answered in `rtt_ms` at `now_ms`: the smoothed
    /// RTT (see [`View::set_rtt`]) and the failure detector both learn.
    pub fn ping_ok(&mut self, node: &NodeId, rtt_ms: f64, now_ms: u64) {
        self.set_rtt(node, rtt_ms);
        if let Some(e) = self.peers.get_mut(node) {
            e.last_seen_ms = e.last_seen_ms.max(now_ms);
            if let Some(rtt) = e.rtt_ms {
                e.health.ping_ok(rtt, now_ms);
            }
        }
    }

    /// A ping to `node` failed or timed out.
    pub fn ping_failed(&mut self, node: &NodeId) {
        if let Some(e) = self.peers.get_mut(node) {
            e.health.ping_failed();
        }
    }

    /// Dialling `node` failed. With no connection open, it is gone.
    pub fn dial_failed(&mut self, node: &NodeId) {
        if let Some(e) = self.peers.get_mut(node) {
            if !e.connected {
                e.health.dial_failed();
            }
        }
    }

    /// Record a round-trip-time sample: exponentially weighted moving
    /// average with alpha 0.3 (`new = 0.3 * sample + 0.7 * old`); the first
    /// sample is taken as is. Negative or non-finite samples and unknown
    /// nodes are ignored.
    pub fn set_rtt(&mut self, node: &NodeId, rtt_ms: f64) {
        if !rtt_ms.is_finite() || rtt_ms < 0.0 {
            return;
        }
        if let Some(e) = self.peers.get_mut(node) {
            e.rtt_ms = Some(match e.rtt_ms {
                Some(old) => RTT_ALPHA * rtt_ms + (1.0 - RTT_ALPHA) * old,
                None => rtt_ms,
            });
        }
    }

    /// Take the free capacity a node reported in a direct answer (a grant
    /// or a refusal): it is fresher than its last announcement, so late
    /// binding learns from every refusal and the next ranking does not ask
    /// a full node again. The next announcement (with a higher `seq`)
    /// replaces it. Unknown nodes are ignored.
    pub fn observe_free(&mut self, node: &NodeId, free: Capacity, active_leases: u32, now_ms: u64) {
        if let Some(e) = self.peers.get_mut(node) {
            e.ann.free = free;
            e.ann.active_leases = active_leases;
            e.last_seen_ms = e.last_seen_ms.max(now_ms);
        }
    }

    /// Record whether we hold a connection to `node` (unknown nodes ignored).
    pub fn set_connected(&mut self, node: &NodeId, connected: bool) {
        self.connection_changed(node, connected, None);
    }

    /// A first connection to `node` opened (`connected`), or its last one
    /// closed, at `now_ms` (when known). Returns whether the node was
    /// connected before and now is not: the caller should dial it again
    /// at once, to tell a dead process from a dropped connection.
    pub fn connection_changed(
        &mut self,
        node: &NodeId,
        connected: bool,
        now_ms: Option<u64>,
    ) -> bool {
        let Some(e) = self.peers.get_mut(node) else {
            return false;
        };
        let was = e.connected;
        e.connected = connected;
        if connected {
            e.direct = true;
            if !was {
                e.health.connected(now_ms.unwrap_or(e.last_seen_ms));
            }
            false
        } else {
            if was {
                e.health.disconnected();
            }
            was
        }
    }

    /// How `node` looks at `now_ms`: the local node is always online; a
    /// peer that announced `leaving` is offline; a peer silent for more than
    /// `offline_after_ms` is offline, for more than `stale_after_ms` stale;
    /// otherwise online. `None` for a node we do not know.
    pub fn status(&self, node: &NodeId, now_ms: u64) -> Option<NodeStatus> {
        if *node == self.local.node_id {
            return Some(NodeStatus::Online);
        }
        self.peers.get(node).map(|e| self.entry_status(e, now_ms))
    }

    fn entry_status(&self, e: &PeerEntry, now_ms: u64) -> NodeStatus {
        if e.ann.leaving {
            return NodeStatus::Left;
        }
        if e.direct {
            return e.health.status(now_ms, &self.cfg.health);
        }
        let silent = now_ms.saturating_sub(e.last_seen_ms);
        if silent > self.cfg.offline_after_ms {
            NodeStatus::Offline
        } else if silent > self.cfg.stale_after_ms {
            NodeStatus::Suspect
        } else {
            NodeStatus::Online
        }
    }

    /// A remote peer's entry (the local node has none).
    pub fn get(&self, node: &NodeId) -> Option<&PeerEntry> {
        self.peers.get(node)
    }

    /// Remote peers, in node-id order.
    pub fn peers(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    /// Number of remote peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no remote peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The local announcement first, then every remote one in node-id
    /// order: what to send a peer in the sync-on-connect swap.
    pub fn announcements(&self) -> Vec<Announcement> {
        std::iter::once(&self.local)
            .chain(self.peers.values().map(|e| &e.ann))
            .cloned()
            .collect()
    }

    /// Forget peers silent for more than `forget_after_ms`, and peers that
    /// announced `leaving` and have been silent for more than
    /// `offline_after_ms`. Returns the forgotten ids in node-id order.
    pub fn prune(&mut self, now_ms: u64) -> Vec<NodeId> {
        let cfg = &self.cfg;
        let gone: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, e)| {
                let silent = now_ms.saturating_sub(e.last_seen_ms);
                silent > cfg.forget_after_ms
                    || (e.ann.leaving && silent > cfg.offline_after_ms)
                    || (e.direct && e.health.forgettable(now_ms, &cfg.health))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(e) = self.peers.remove(id) {
                if self.forgotten.len() >= MAX_FORGOTTEN {
                    if let Some(k) = self.forgotten.keys().next().cloned() {
                        self.forgotten.remove(&k);
                    }
                }
                self.forgotten.insert(id.clone(), e.ann.seq);
            }
        }
        gone
    }

    /// The nodes that look able to serve `req` at `now_ms`, the local node
    /// included, in node-id order; and every other known node with the
    /// reason it was left out, also in node-id order.
    ///
    /// Checked in this order, the first failure giving the reason:
    /// `"leaving"`; not online (`"offline: silent for N ms"`, `"stale:
    /// silent for N ms"`); the model filter (`"serves none of the preferred models: ..."`, only if
    /// `req.preferred_models` is non-empty); then
    /// [`fit`](crate::core::fit::fit) of `req` against the announced free
    /// and total capacity, whose misfit text is the reason. Access
    /// policies are not this function's business: the node narrows the
    /// result with [`crate::core::access::hint_admits`].
    pub fn candidates(
        &self,
        req: &ResourceRequirements,
        now_ms: u64,
    ) -> (Vec<Candidate>, Vec<(NodeId, String)>) {
        let mut ok = Vec::new();
        let mut excluded = Vec::new();
        let local = (&self.local, None, true);
        let remote = self.peers.values().map(|e| (&e.ann, Some(e), false));
        let mut all: Vec<_> = std::iter::once(local).chain(remote).collect();
        all.sort_by(|a, b| a.0.node_id.cmp(&b.0.node_id));
        for (ann, entry, is_local) in all {
            match self.exclusion(ann, entry, req, now_ms) {
                Some(why) => excluded.push((ann.node_id.clone(), why)),
                None => ok.push(Candidate {
                    node_id: ann.node_id.clone(),
                    name: ann.name.clone(),
                    is_local,
                    capacity: ann.capacity.clone(),
                    free: ann.free.clone(),
                    location: ann.location.clone(),
                    rtt_ms: entry.and_then(|e| e.rtt_ms),
                    weight: ann.weight,
                    cpu_usage_pct: ann.cpu_usage_pct,
                    active_leases: ann.active_leases,
                }),
            }
        }
        (ok, excluded)
    }

    /// Why `ann` is not a candidate for `req`, or `None` if it is.
    /// `entry` is `None` exactly for the local node.
    fn exclusion(
        &self,
        ann: &Announcement,
        entry: Option<&PeerEntry>,
        req: &ResourceRequirements,
        now_ms: u64,
    ) -> Option<String> {
        if ann.leaving {
            return Some("leaving".to_owned());
        }
        if let Some(e) = entry {
            let silent = now_ms.saturating_sub(e.last_seen_ms);
            match self.entry_status(e, now_ms) {
                NodeStatus::Online | NodeStatus::Degraded => {}
                NodeStatus::Suspect => return Some(format!("suspect: silent for {silent} ms")),
                NodeStatus::Offline => return Some(format!("offline: silent for {silent} ms")),
                NodeStatus::Left => return Some("left".to_owned()),
            }
        }
        if !req.preferred_models.is_empty()
            && !req.preferred_models.iter().any(|m| ann.models.contains(m))
        {
            return Some(format!(
                "serves none of the preferred models: {}",
                req.preferred_models.join(", ")
            ));
        }
        fit(&ann.free, &ann.capacity, req).err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capacity, GpuSlot, Location};

    fn ann(id: &str, seq: u64) -> Announcement {
        let cap = Capacity {
            cpu_cores: 8,
            memory_mb: 16_000,
            disk_mb: 100_000,
            gpus: vec![
                GpuSlot {
                    index: 0,
                    memory_mb: 8_000,
                },
                GpuSlot {
                    index: 1,
                    memory_mb: 24_000,
                },
            ],
            ..Default::default()
        };
        Announcement {
            node_id: NodeId::from(id),
            seq,
            issued_at_ms: seq,
            name: format!("host-{id}"),
            version: "0.1.0".into(),
            addrs: vec![],
            api: None,
            capacity: cap.clone(),
            free: cap,
            gpus: vec![],
            machine_cpu_cores: 8,
            machine_memory_mb: 16_000,
            cpu_usage_pct: 10.0,
            models: vec!["llama3".into()],
            location: Location::default(),
            weight: 2,
            active_leases: 1,
            labels: Default::default(),
            access: crate::model::AccessHint {
                allow_remote: true,
                ..Default::default()
            },
            arch: "x86_64".into(),
            usage: vec![],
            queued: 0,
            preemption: false,
            refusals: vec![],
            leaving: false,
            loaded_models: vec![],
            templates: vec![],
            instance: 1,
            started_at_ms: 0,
        }
    }

    fn view() -> View {
        View::new(ann("local", 1), ViewConfig::default())
    }

    fn id(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn a_direct_answer_updates_free_capacity_until_the_next_announcement() {
        let mut v = View::new(ann("local", 1), ViewConfig::default());
        v.apply(ann("b", 1), 1_000);
        let id = NodeId::from("b");
        let mut full = v.get(&id).unwrap().ann.free.clone();
        full.cpu_cores = 0;
        v.observe_free(&id, full.clone(), 7, 2_000);
        assert_eq!(v.get(&id).unwrap().ann.free, full);
        assert_eq!(v.get(&id).unwrap().ann.active_leases, 7);
        assert_eq!(v.get(&id).unwrap().last_seen_ms, 2_000);
        v.apply(ann("b", 2), 3_000);
        assert_ne!(v.get(&id).unwrap().ann.free.cpu_cores, 0);
        v.observe_free(&NodeId::from("nobody"), full, 1, 4_000);
        assert!(v.get(&NodeId::from("nobody")).is_none());
    }

    #[test]
    fn apply_new_update_replay_own() {
        let mut v = view();
        assert_eq!(v.apply(ann("a", 5), 1_000), Applied::New);
        assert_eq!(v.len(), 1);
        assert_eq!(v.apply(ann("local", 99), 1_000), Applied::OwnId);
        assert_eq!(v.len(), 1);
        assert!(v.get(&id("local")).is_none());

        let mut older = ann("a", 5);
        older.name = "evil".into();
        assert_eq!(v.apply(older.clone(), 2_000), Applied::Replay);
        older.seq = 4;
        assert_eq!(v.apply(older, 2_000), Applied::Replay);
        let e = v.get(&id("a")).unwrap();
        assert_eq!(e.ann.name, "host-a");
        assert_eq!(e.last_seen_ms, 1_000, "a replay must not refresh last_seen");

        v.set_rtt(&id("a"), 10.0);
        v.set_connected(&id("a"), true);
        let mut newer = ann("a", 6);
        newer.name = "renamed".into();
        assert_eq!(v.apply(newer, 3_000), Applied::Updated);
        let e = v.get(&id("a")).unwrap();
        assert_eq!(e.ann.name, "renamed");
        assert_eq!(e.last_seen_ms, 3_000);
        assert_eq!(e.rtt_ms, Some(10.0));
        assert!(e.connected);
    }

    #[test]
    fn rtt_is_smoothed() {
        let mut v = view();
        v.apply(ann("a", 1), 0);
        v.set_rtt(&id("a"), 10.0);
        assert_eq!(v.get(&id("a")).unwrap().rtt_ms, Some(10.0));
        v.set_rtt(&id("a"), 20.0);
        let r = v.get(&id("a")).unwrap().rtt_ms.unwrap();
        assert!((r - 13.0).abs() < 1e-9, "{r}");
        v.set_rtt(&id("a"), f64::NAN);
        v.set_rtt(&id("a"), -1.0);
        assert!((v.get(&id("a")).unwrap().rtt_ms.unwrap() - 13.0).abs() < 1e-9);
        v.set_rtt(&id("nobody"), 5.0);
        assert!(v.get(&id("nobody")).is_none());
    }

    #[test]
    fn status_transitions() {
        let mut v = view();
        v.apply(ann("a", 1), 1_000);
        assert_eq!(v.status(&id("a"), 1_000), Some(NodeStatus::Online));
        assert_eq!(v.status(&id("a"), 16_000), Some(NodeStatus::Online));
        assert_eq!(v.status(&id("a"), 16_001), Some(NodeStatus::Suspect));
        assert_eq!(v.status(&id("a"), 31_001), Some(NodeStatus::Offline));
        v.touch(&id("a"), 31_001);
        assert_eq!(v.status(&id("a"), 31_001), Some(NodeStatus::Online));
        // A clock going backwards does not panic and does not rewind.
        v.touch(&id("a"), 10);
        assert_eq!(v.get(&id("a")).unwrap().last_seen_ms, 31_001);
        assert_eq!(v.status(&id("a"), 0), Some(NodeStatus::Online));

        assert_eq!(v.status(&id("local"), u64::MAX), Some(NodeStatus::Online));
        assert_eq!(v.status(&id("nobody"), 0), None);

        let mut bye = ann("a", 2);
        bye.leaving = true;
        assert_eq!(v.apply(bye, 32_000), Applied::Updated);
        assert_eq!(v.status(&id("a"), 32_000), Some(NodeStatus::Left));
    }

    #[test]
    fn directly_connected_peers_use_the_failure_detector() {
        let mut v = view();
        v.apply(ann("a", 1), 0);
        // Known from announcements only: announcement silence decides.
        assert_eq!(v.status(&id("a"), 2_500), Some(NodeStatus::Online));
        assert!(!v.connection_changed(&id("a"), true, Some(3_000)));
        v.ping_ok(&id("a"), 1.0, 3_000);
        assert_eq!(v.status(&id("a"), 4_000), Some(NodeStatus::Online));
        // Pings stop: suspect at 2 s of silence, offline at 3 s.
        assert_eq!(v.status(&id("a"), 5_000), Some(NodeStatus::Suspect));
        assert_eq!(v.status(&id("a"), 6_000), Some(NodeStatus::Offline));
        v.ping_ok(&id("a"), 1.0, 7_000);
        assert_eq!(v.status(&id("a"), 7_000), Some(NodeStatus::Online));
        // The last connection closes: redial; a refused dial is offline.
        assert!(v.connection_changed(&id("a"), false, None));
        assert_eq!(v.status(&id("a"), 7_001), Some(NodeStatus::Suspect));
        v.dial_failed(&id("a"));
        assert_eq!(v.status(&id("a"), 7_002), Some(NodeStatus::Offline));
        let (ok, excluded) = v.candidates(&ResourceRequirements::default(), 7_002);
        assert_eq!(ok.len(), 1, "only the local node");
        assert!(excluded[0].1.starts_with("offline"), "{excluded:?}");
        // Back.
        v.connection_changed(&id("a"), true, Some(8_000));
        assert_eq!(v.status(&id("a"), 8_000), Some(NodeStatus::Online));
        // A slow one (smoothed RTT) is degraded, and still a candidate.
        for t in 0..5 {
            v.ping_ok(&id("a"), 900.0, 8_000 + t * 20);
        }
        assert_eq!(v.status(&id("a"), 8_100), Some(NodeStatus::Degraded));
        let (ok, _) = v.candidates(&ResourceRequirements::default(), 8_100);
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn prune_forgets_silent_and_departed() {
        let mut v = view();
        v.apply(ann("a", 1), 0);
        v.apply(ann("b", 1), 0);
        let mut bye = ann("c", 1);
        bye.leaving = true;
        v.apply(bye, 0);
        assert!(v.prune(30_000).is_empty());
        assert_eq!(v.prune(30_001), vec![id("c")]);
        v.touch(&id("b"), 200_000);
        assert!(v.prune(300_000).is_empty());
        assert_eq!(v.prune(300_001), vec![id("a")]);
        assert_eq!(v.len(), 1);
        assert_eq!(v.peers().next().unwrap().ann.node_id, id("b"));
        // A relayed copy of its last announcement does not bring it back;
        // a newer one (a new process) does.
        assert_eq!(v.apply(ann("a", 1), 300_002), Applied::Replay);
        assert!(v.get(&id("a")).is_none());
        assert_eq!(v.apply(ann("a", 2), 300_003), Applied::New);
    }

    #[test]
    fn announcements_and_peers_are_ordered() {
        let mut v = view();
        v.apply(ann("z", 1), 0);
        v.apply(ann("b", 1), 0);
        let ids: Vec<String> = v.announcements().into_iter().map(|a| a.node_id.0).collect();
        assert_eq!(ids, ["local", "b", "z"]);
        let peers: Vec<&str> = v.peers().map(|e| e.ann.node_id.0.as_str()).collect();
        assert_eq!(peers, ["b", "z"]);
        assert!(!v.is_empty());
        v.set_local(ann("b", 9));
        assert_eq!(v.local_id(), &id("b"));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn candidates_include_local_and_explain_exclusions() {
        let mut v = view();
        v.apply(ann("ok", 1), 100_000);
        v.set_rtt(&id("ok"), 4.0);
        v.apply(ann("stale", 1), 80_000);
        v.apply(ann("gone", 1), 0);
        let mut leaving = ann("leaving", 1);
        leaving.leaving = true;
        v.apply(leaving, 100_000);
        let mut other_model = ann("mistral", 1);
        other_model.models = vec!["mistral".into()];
        v.apply(other_model, 100_000);
        let mut full = ann("full", 1);
        full.free.memory_mb = 100;
        v.apply(full, 100_000);
        // Enough GPU memory in total, but no single GPU has 10 GiB free.
        let mut split = ann("split", 1);
        split.free.gpus = vec![
            GpuSlot {
                index: 0,
                memory_mb: 8_000,
            },
            GpuSlot {
                index: 1,
                memory_mb: 9_000,
            },
        ];
        v.apply(split, 100_000);
        let local = ann("local", 2);
        v.set_local(local);

        let req = ResourceRequirements {
            cpu_cores: 2,
            memory_mb: 1_000,
            gpu_count: 1,
            gpu_memory_mb: 10_000,
            preferred_models: vec!["llama3".into(), "phi".into()],
            ..Default::default()
        };
        let (ok, out) = v.candidates(&req, 100_000);
        let ok_ids: Vec<&str> = ok.iter().map(|c| c.node_id.0.as_str()).collect();
        assert_eq!(ok_ids, ["local", "ok"]);
        assert!(ok[0].is_local && !ok[1].is_local);
        assert_eq!(ok[1].rtt_ms, Some(4.0));
        assert_eq!(ok[1].weight, 2);
        assert_eq!(ok[1].active_leases, 1);
        assert_eq!(ok[1].name, "host-ok");

        let why: BTreeMap<&str, &str> = out
            .iter()
            .map(|(n, w)| (n.0.as_str(), w.as_str()))
            .collect();
        let ids: Vec<&str> = out.iter().map(|(n, _)| n.0.as_str()).collect();
        assert_eq!(
            ids,
            ["full", "gone", "leaving", "mistral", "split", "stale"]
        );
        assert_eq!(why["leaving"], "leaving");
        assert!(why["gone"].starts_with("offline"), "{}", why["gone"]);
        assert!(why["stale"].starts_with("suspect"), "{}", why["stale"]);
        assert!(
            why["mistral"].contains("preferred models"),
            "{}",
            why["mistral"]
        );
        assert!(why["full"].starts_with("memory_mb"), "{}", why["full"]);
        assert!(why["split"].starts_with("gpus"), "{}", why["split"]);
    }

    #[test]
    fn candidates_without_model_preference_and_whole_gpus() {
        let mut v = view();
        let mut busy = ann("busy", 1);
        busy.free.gpus[1].memory_mb = 1_000; // GPU 1 partly used
        busy.models.clear();
        v.apply(busy, 0);
        let mut local = ann("local", 2);
        local.leaving = true;
        v.set_local(local);
        let req = ResourceRequirements {
            gpu_count: 2, // two whole GPUs
            ..Default::default()
        };
        let (ok, out) = v.candidates(&req, 0);
        assert!(ok.is_empty());
        assert_eq!(out[0].0, id("busy"));
        assert!(out[0].1.contains("whole GPU"), "{}", out[0].1);
        assert_eq!(out[1], (id("local"), "leaving".to_owned()));

        let one = ResourceRequirements {
            gpu_required: true,
            ..Default::default()
        };
        let (ok, _) = v.candidates(&one, 0);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].node_id, id("busy"));
    }
}
