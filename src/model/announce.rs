//! What a node tells the swarm about itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Capacity, GpuInfo, HolderUsage, NodeId};

/// What a node says of its access policy, so that requesters can skip
/// owners that would refuse them. Only a hint: the owner's own check is
/// the only one that counts. The deny list is never announced (it would
/// tell a denied node that it is denied, and publish the owner's list).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessHint {
    /// Whether remote peers may allocate here at all.
    pub allow_remote: bool,
    /// Whether only peers that share a group with the owner are served
    /// (plus the allow list).
    pub group_peers_only: bool,
    /// The allow list. When non-empty, only these (plus group peers with
    /// `group_peers_only`) are served.
    pub allow: Vec<NodeId>,
}

/// Where a node is. Used by the `geographic` strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// A free-form zone label, e.g. "office" or "rack-2". Nodes in the same
    /// zone as the requester count as nearest when no coordinates are known.
    pub zone: Option<String>,
    /// Latitude in degrees, -90..=90.
    pub latitude: Option<f64>,
    /// Longitude in degrees, -180..=180.
    pub longitude: Option<f64>,
}

impl Location {
    /// Both coordinates, if set.
    pub fn coords(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }
}

/// A node's view of itself, gossiped on `lanswarm/capacity/2` and swapped
/// on connect. The network layer signs and verifies it; the core only sees
/// announcements whose signature and origin have been checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The announcing node. Must match the signing key.
    pub node_id: NodeId,
    /// Strictly increasing per node, across restarts (the announcer uses
    /// `max(previous + 1, now_ms)`). Older or equal sequence numbers are
    /// replays and are ignored.
    pub seq: u64,
    /// When it was issued, ms since the epoch (the announcer's clock).
    pub issued_at_ms: u64,
    /// Random number drawn when the process started. Two live processes
    /// announcing the same `node_id` with different instances share one
    /// key: a copied data directory.
    pub instance: u64,
    /// When this process started, ms since the epoch.
    pub started_at_ms: u64,
    /// Human-readable node name.
    pub name: String,
    /// Software version.
    pub version: String,
    /// Addresses the node listens on (multiaddrs, text form).
    pub addrs: Vec<String>,
    /// HTTP API address, if the node wants to share it.
    pub api: Option<String>,
    /// What the node lends in total.
    pub capacity: Capacity,
    /// What is free of that right now.
    pub free: Capacity,
    /// GPUs as detected (name, total and free memory, utilization).
    pub gpus: Vec<GpuInfo>,
    /// Total cores/memory of the machine (not only the lendable part).
    pub machine_cpu_cores: u32,
    pub machine_memory_mb: u64,
    /// Host CPU utilization, percent.
    pub cpu_usage_pct: f32,
    /// AI models this node serves (from its model server, or declared).
    pub models: Vec<String>,
    /// Of those, the ones loaded in memory right now (Ollama `/api/ps`):
    /// requests for them go here first.
    pub loaded_models: Vec<String>,
    /// Names of the task templates this node offers.
    pub templates: Vec<String>,
    /// Where the node is.
    pub location: Location,
    /// Self-declared weight for the `weighted` strategy (requesters may
    /// override it in their own config).
    pub weight: u32,
    /// Number of active leases granted by this node.
    pub active_leases: u32,
    /// Free-form `key = value` labels from the owner's config, matched by
    /// pool selectors (and, later, placement constraints).
    pub labels: BTreeMap<String, String>,
    /// The owner's access policy, as far as requesters need it.
    pub access: AccessHint,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// What each requester holds here (largest first, at most 256), for
    /// swarm-wide quotas.
    pub usage: Vec<HolderUsage>,
    /// Requests waiting in this owner's queue.
    pub queued: u32,
    /// Whether this owner lets higher-priority requests preempt
    /// lower-priority leases (so a full node is still worth asking).
    pub preemption: bool,
    /// Requests this owner refused for capacity in the last hour, per
    /// dimension that did not fit (most first, at most 8), for the
    /// swarm-wide bottleneck ([`crate::core::bottleneck`]).
    #[serde(default)]
    pub refusals: Vec<crate::core::bottleneck::DimCount>,
    /// Set in the last announcement a node sends when it shuts down.
    pub leaving: bool,
}

impl Announcement {
    /// An empty announcement of `node_id` (sequence 0, nothing lent): what
    /// a node holds for itself before its first real one, and a base for
    /// tests.
    pub fn placeholder(node_id: NodeId) -> Self {
        Announcement {
            node_id,
            seq: 0,
            issued_at_ms: 0,
            name: String::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            addrs: vec![],
            api: None,
            capacity: Capacity::default(),
            free: Capacity::default(),
            gpus: vec![],
            machine_cpu_cores: 0,
            machine_memory_mb: 0,
            cpu_usage_pct: 0.0,
            models: vec![],
            location: Location::default(),
            weight: 1,
            active_leases: 0,
            labels: BTreeMap::new(),
            access: AccessHint::default(),
            arch: String::new(),
            usage: Vec::new(),
            queued: 0,
            preemption: false,
            refusals: Vec::new(),
            leaving: false,
            loaded_models: vec![],
            templates: vec![],
            instance: 0,
            started_at_ms: 0,
        }
    }
}

/// How a node looks from here, in order of how bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heard from recently.
    Online,
    /// Reachable but slow (ping RTT); still asked for leases.
    Degraded,
    /// Missed pings or announcements, or its connection closed and it is
    /// being dialled again; not asked for new leases.
    Suspect,
    /// Gone: dialling it failed after its connection closed, or silent for
    /// too long.
    Offline,
    /// Said goodbye.
    Left,
}

impl NodeStatus {
    /// Whether new requests may be sent there.
    pub fn usable(self) -> bool {
        matches!(self, NodeStatus::Online | NodeStatus::Degraded)
    }
}
