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
}

impl Denial {
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
        }
    }
}
