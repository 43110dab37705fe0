//! Plain data shared by every layer: node identities, resources, requests,
//! leases and the announcements nodes gossip.
//!
//! Nothing here does IO or reads a clock. Times are milliseconds since the
//! Unix epoch (`*_ms: u64`), passed in by the caller, so the sans-IO core in
//! [`crate::core`] stays deterministic. Memory and disk sizes are in MiB and,
//! following seed 004's field names, are called `*_mb`.

mod announce;
mod resources;
mod task;

pub use announce::{AccessHint, Announcement, Location, NodeStatus};
pub use resources::{
    Capacity, ComputeCapability, Denial, DenyReason, FreeCapacity, GpuInfo, GpuSlot, HolderUsage,
    Lease, LeaseId, NodeId, Priority, ResourceRequirements, Usage,
};
pub use task::{ChatMessage, InferenceCall, InferenceRequest, TaskOutcome, TaskResult, TaskSpec};
