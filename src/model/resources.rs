//! Resources, requirements, leases and denials.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity: the base58 text of its libp2p `PeerId`.
///
/// The core never parses it; it only compares and orders it, so every tie
/// broken "by node id" is deterministic and replayable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}

/// A lease identifier (a UUID v4 in text form).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub String);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One GPU as a node sees it (from NVML, or declared synthetically).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Index of the GPU on its node (NVML index, or position in the config).
    pub index: u32,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Total device memory, MiB.
    pub memory_total_mb: u64,
    /// Device memory free right now according to the driver, MiB.
    pub memory_free_mb: u64,
    /// GPU utilization in percent, 0..=100.
    pub utilization_pct: u8,
    /// Whether this GPU is declared in the config rather than detected.
    pub synthetic: bool,
    /// CUDA compute capability (NVML, or declared), e.g. 8.0 for an A100.
    #[serde(default)]
    pub compute_capability: Option<ComputeCapability>,
}

/// A CUDA compute capability, `major.minor`, ordered as versions are.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ComputeCapability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a compute capability like \"8.0\" or \"9.0\"");
        let (major, minor) = s.trim().split_once('.').unwrap_or((s.trim(), "0"));
        Ok(ComputeCapability {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

/// A GPU's lendable memory, as held in a [`Capacity`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuSlot {
    /// Index of the GPU on its node.
    pub index: u32,
    /// Lendable (or free) memory on this GPU, MiB.
    pub memory_mb: u64,
}

/// An amount of every resource dimension a node can lend.
///
/// Used both for what a node lends in total and for what is free.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
    /// Per-GPU memory, one entry per lendable GPU, sorted by index.
    pub gpus: Vec<GpuSlot>,
    /// Named countable resources declared by the owner (seed 003's API rate
    /// quotas, database connections, cache storage, ...).
    #[serde(default)]
    pub custom: BTreeMap<String, u64>,
}

/// Free capacity has the same shape as total capacity.
pub type FreeCapacity = Capacity;

impl Capacity {
    /// Total GPU memory over all GPUs, MiB.
    pub fn gpu_memory_mb(&self) -> u64 {
        self.gpus.iter().map(|g| g.memory_mb).sum()
    }

    /// `self − other`, saturating at zero: per dimension, per GPU (matched
    /// by index; GPUs only in `other` are ignored) and per custom key.
    pub fn minus(&self, other: &Capacity) -> Capacity {
        Capacity {
            cpu_cores: self.cpu_cores.saturating_sub(other.cpu_cores),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            disk_mb: self.disk_mb.saturating_sub(other.disk_mb),
            gpus: self
                .gpus
                .iter()
                .map(|g| GpuSlot {
                    index: g.index,
                    memory_mb: g.memory_mb.saturating_sub(
                        other
                            .gpus
                            .iter()
                            .filter(|o| o.index == g.index)
                            .map(|o| o.memory_mb)
                            .sum(),
                    ),
                })
                .collect(),
            custom: self
                .custom
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(*other.custom.get(k).unwrap_or(&0)),
                    )
                })
                .collect(),
        }
    }
}

/// What a requester asks for. Field names follow seed 004's
/// `ResourceRequirements`; every field defaults to "none of it".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceRequirements {
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
    /// Number of GPUs. Seed 004's `gpu_required: true` means at least one.
    pub gpu_count: u32,
    /// Seed 004 compatibility: `true` with `gpu_count == 0` asks for one GPU.
    pub gpu_required: bool,
    /// Memory needed on *each* GPU, MiB. Zero means whole GPUs: every
    /// assigned GPU must be entirely free, and the lease takes all of it.
    pub gpu_memory_mb: u64,
    /// Models the work needs. A node qualifies only if it serves at least
    /// one of them. Empty means any node.
    pub preferred_models: Vec<String>,
    /// Named custom resources and the amount of each.
    pub custom: BTreeMap<String, u64>,
}

impl ResourceRequirements {
    /// Number of GPUs asked for, counting `gpu_required`.
    pub fn gpus_wanted(&self) -> u32 {
        if self.gpu_count == 0 && (self.gpu_required || self.gpu_memory_mb > 0) {
            1
        } else {
            self.gpu_count
        }
    }

    /// Whether the request asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.cpu_cores == 0
            && self.memory_mb == 0
            && self.disk_mb == 0
            && self.gpus_wanted() == 0
            && self.custom.values().all(|v| *v == 0)
    }
}

/// Priority of a request (seed 004's `Priority`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// The lowercase name used in JSON, the CLI and logs.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown priority {s:?}: expected one of low, normal, high, critical")
            })
    }
}

/// A granted lease: capacity on `node_id` held by `holder` until
/// `expires_at_ms`, unless renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's id (seed 004's `allocation_id`).
    pub lease_id: LeaseId,
    /// The requester's own id for the request (seed 004's `request_id`).
    pub request_id: String,
    /// The owner: the node whose resources are leased.
    pub node_id: NodeId,
    /// The holder: the node that asked and renews.
    pub holder: NodeId,
    /// Cores leased.
    pub cpu_cores: u32,
    /// Memory leased, MiB.
    pub memory_mb: u64,
    /// Disk leased, MiB.
    pub disk_mb: u64,
    /// GPUs leased: index and the memory taken on each, MiB.
    pub gpus: Vec<GpuSlot>,
    /// Custom resources leased.
    pub custom: BTreeMap<String, u64>,
    /// Models requested (informational for the owner).
    pub models: Vec<String>,
    /// Free-form task type (seed 004's `task_type`).
    pub task_type: String,
    /// Priority the request was made with.
    pub priority: Priority,
    /// When the lease was granted.
    pub created_at_ms: u64,
    /// When the lease runs out unless renewed.
    pub expires_at_ms: u64,
    /// The lease length used for renewals, ms.
    pub lease_ms: u64,
}

/// Why an owner refused a request. Machine-readable; the text in
/// [`Denial::message`] is for humans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// Some dimension does not fit in what is free.
    InsufficientCapacity,
    /// The owner's policy does not permit this requester.
    Forbidden,
    /// No such lease (unknown, already released or expired).
    UnknownLease,
    /// The lease exists but belongs to someone else.
    NotHolder,
    /// The request is malformed or asks for something impossible.
    BadRequest,
    /// The node serves none of the requested models.
    ModelUnavailable,
    /// The owner is shutting down.
    ShuttingDown,
    /// The owner could not be reached or did not answer in time.
    Unreachable,
    /// The owner could not write the lease durably.
    StorageError,
    /// The owner is too busy (its queue is full, or this peer asks too
    /// often); `retry_after_ms` says when to try again.
    Busy,
    /// Granting would exceed a quota of the requester or its group.
    QuotaExceeded,
    /// No node could ever satisfy the request (a constraint, or more than
    /// the node has in total); waiting would not help.
    Unsatisfiable,
    /// The lease was taken back for a higher-priority request.
    Preempted,
    /// The request waited in the owner's queue until its wait ran out.
    QueueTimeout,
}

impl DenyReason {
    /// The snake_case code used on the wire, in the API and in logs.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::InsufficientCapacity => "insufficient_capacity",
            DenyReason::Forbidden => "forbidden",
            DenyReason::UnknownLease => "unknown_lease",
            DenyReason::NotHolder => "not_holder",
            DenyReason::BadRequest => "bad_request",
            DenyReason::ModelUnavailable => "model_unavailable",
            DenyReason::ShuttingDown => "shutting_down",
            DenyReason::Unreachable => "unreachable",
            DenyReason::StorageError => "storage_error",
            DenyReason::Busy => "busy",
            DenyReason::QuotaExceeded => "quota_exceeded",
            DenyReason::Unsatisfiable => "unsatisfiable",
            DenyReason::Preempted => "preempted",
            DenyReason::QueueTimeout => "queue_timeout",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal with its reason and a human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Denial {
    pub reason: DenyReason,
    pub message: String,
    /// With `busy`: when to ask again, ms from now.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Other nodes that, as far as the refusing owner knows, could serve
    /// the request (the "redistribute" answer to contention).
    #[serde(default)]
    pub hints: Vec<NodeId>,
}

impl Denial {
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
            retry_after_ms: None,
            hints: Vec::new(),
        }
    }

    /// A `busy` refusal: try again after `retry_after_ms`.
    pub fn busy(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Denial {
            retry_after_ms: Some(retry_after_ms),
            ..Denial::new(DenyReason::Busy, message)
        }
    }
}

/// How much of each dimension something uses (a lease, a requester's
/// leases, a request once its GPUs are known). Quotas cap it, and nodes
/// gossip it per requester for swarm-wide quotas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// Number of GPUs held (whole or shared).
    pub gpus: u32,
    /// GPU memory held, MiB, over all GPUs.
    pub gpu_memory_mb: u64,
    pub custom: BTreeMap<String, u64>,
}

impl Usage {
    /// What one lease uses.
    pub fn of_lease(l: &Lease) -> Self {
        Usage {
            cpu_cores: l.cpu_cores,
            memory_mb: l.memory_mb,
            disk_mb: l.disk_mb,
            gpus: l.gpus.len() as u32,
            gpu_memory_mb: l.gpus.iter().map(|g| g.memory_mb).sum(),
            custom: l.custom.clone(),
        }
    }

    /// Add `other` (saturating).
    pub fn add(&mut self, other: &Usage) {
        self.cpu_cores = self.cpu_cores.saturating_add(other.cpu_cores);
        self.memory_mb = self.memory_mb.saturating_add(other.memory_mb);
        self.disk_mb = self.disk_mb.saturating_add(other.disk_mb);
        self.gpus = self.gpus.saturating_add(other.gpus);
        self.gpu_memory_mb = self.gpu_memory_mb.saturating_add(other.gpu_memory_mb);
        for (k, v) in &other.custom {
            let e = self.custom.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtract `other` (saturating at zero).
    pub fn sub(&mut self, other: &Usage) {
        self.cpu_cores = self.cpu_cores.saturating_sub(other.cpu_cores);
        self.memory_mb = self.memory_mb.saturating_sub(other.memory_mb);
        self.disk_mb = self.disk_mb.saturating_sub(other.disk_mb);
        self.gpus = self.gpus.saturating_sub(other.gpus);
        self.gpu_memory_mb = self.gpu_memory_mb.saturating_sub(other.gpu_memory_mb);
        for (k, v) in &other.custom {
            if let Some(e) = self.custom.get_mut(k) {
                *e = e.saturating_sub(*v);
            }
        }
        self.custom.retain(|_, v| *v > 0);
    }

    /// Whether nothing is used.
    pub fn is_zero(&self) -> bool {
        self == &Usage::default()
    }
}

/// One requester's usage at the announcing owner, gossiped for
/// swarm-wide quotas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderUsage {
    pub holder: NodeId,
    pub usage: Usage,
}
