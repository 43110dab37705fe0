//! `Node`: the cloneable async handle to a running node.
//!
//! The HTTP API, the CLI (through the API) and the tests all use it. Each
//! method sends a command to the node's event loop over a bounded channel,
//! with a oneshot for the answer. Nothing else touches the swarm or the core
//! state, so nothing needs a lock. A stopped node answers every call with
//! [`NodeError::Stopped`].
//!
//! The JSON shapes follow seed 004's `NodeInfo`, `ResourceRequest` and
//! `ResourceAllocation`, extended; `docs/api.md` documents every field.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::core::access::AccessPolicy;
use crate::core::calendar::{Condition, Reservation};
use crate::core::constraints::Constraints;
use crate::core::contention::ContentionReport;
use crate::core::placement::{Strategy, StrategyConfig};
use crate::core::pools::{PoolCapacity, PoolSelector};
use crate::core::quota::{Burst, Limits};
use crate::core::sched::SchedPolicy;
use crate::model::{
    AccessHint, Announcement, Capacity, DenyReason, GpuInfo, GpuSlot, Lease, Location, NodeId,
    NodeStatus, Priority, ResourceRequirements, Usage,
};

/// Capacity of the command channel into the event loop.
pub const COMMAND_QUEUE: usize = 1024;

/// A request for resources (seed 004's `ResourceRequest`, extended).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllocationRequest {
    /// The requester's own id for this request; a UUID is made if absent.
    pub request_id: Option<String>,
    /// Accepted for seed compatibility and ignored: the requester is always
    /// the node that asks, identified by its key.
    pub requester_id: Option<String>,
    /// What is needed.
    pub required_resources: ResourceRequirements,
    /// Free-form task type, recorded on the lease.
    pub task_type: String,
    /// Priority of the request.
    pub priority: Priority,
    /// Lease term in seconds: the holder renews about every third of it,
    /// and the owner takes the resources back if it stops. Default from the
    /// config (`leases.default`).
    pub timeout_secs: Option<u64>,
    /// Hold the allocation this long, then release it. Absent: until
    /// released.
    pub duration_secs: Option<u64>,
    /// Strategy for this request only; default is the node's current one.
    pub strategy: Option<Strategy>,
    /// Only consider this node (a node id or a node name).
    pub node_id: Option<String>,
    /// Only consider the nodes of this resource pool (by name).
    pub pool: Option<String>,
    /// Only consider the members of this swarm group (by id or name).
    pub group: Option<String>,
    /// Wait this long in an owner's queue when nothing is free now
    /// (default: do not wait). The answer then says `queued` and the
    /// position; the grant follows when capacity frees.
    pub wait_secs: Option<u64>,
    /// Node capabilities and labels the request needs (seed 001).
    pub constraints: Constraints,
    /// Only nodes that offer this task template (for a task to run on
    /// the lease).
    pub template: Option<String>,
    /// Nodes not to use (ids or names): a task re-placed after its node
    /// was lost, or spread over the swarm.
    pub avoid: Vec<String>,
    /// When the owner goes offline (or leaves) while this node holds the
    /// lease, place the same request again elsewhere. The lost allocation
    /// names its replacement in `replaced_by`.
    pub replace: bool,
    /// Draw the lease from this pooled reservation (its id) instead of the
    /// owner's free capacity: the reservation must be active and shared
    /// with a group this node is in (or made by this node). The owner is
    /// the one that holds the reservation: `node_id` names it, or, for a
    /// reservation this node made, it is known.
    pub reservation: Option<String>,
}

/// What an allocation holds (seed 004's `AllocatedResources`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedResources {
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub gpu_count: u32,
    /// Total GPU memory over all assigned GPUs, MiB.
    pub gpu_memory_mb: u64,
    /// The assigned GPUs: index on the owner and memory taken, MiB.
    pub gpus: Vec<GpuSlot>,
    pub custom: std::collections::BTreeMap<String, u64>,
}

/// State of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStatus {
    /// Granted and not expired.
    Active,
    /// Waiting in the owner's queue (`queue_position`).
    Queued,
    /// Taken back by the owner for a higher-priority request.
    Preempted,
    /// The wait in the owner's queue ran out.
    TimedOut,
    /// Ended by the owner for another reason (see `ended_reason`).
    Ended,
    /// Its owner went offline or left while we held it (or it ran out
    /// before it could be renewed); the owner takes it back when it
    /// expires there.
    Lost,
}

/// One refusal on the way to a grant (late binding) or to a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub node_id: NodeId,
    pub node_name: String,
    pub reason: DenyReason,
    pub message: String,
}

/// A node that was not asked at all, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub node_id: NodeId,
    pub node_name: String,
    pub why: String,
}

/// A lease as the API shows it (seed 004's `ResourceAllocation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub allocation_id: String,
    /// The owner: where the resources are.
    pub node_id: NodeId,
    pub node_name: String,
    /// The node that holds (and renews) the lease.
    pub holder: NodeId,
    pub request_id: String,
    pub allocated_resources: AllocatedResources,
    pub models: Vec<String>,
    pub task_type: String,
    pub priority: Priority,
    pub status: AllocationStatus,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Lease term, seconds (fractions for sub-second test leases).
    pub lease_secs: f64,
    /// When the holder will release it by itself, if ever.
    pub release_at: Option<DateTime<Utc>>,
    /// Nodes asked before this one that refused (empty for a first-try
    /// grant, and for leases listed later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    /// With status `queued`: the 1-based position in the owner's queue,
    /// as the owner last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// For an allocation the owner ended: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<String>,
    /// For a lost allocation requested with `replace`: the allocation that
    /// replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
}

/// Time in ms since the epoch as a UTC timestamp.
pub fn ms_to_utc(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms.min(i64::MAX as u64) as i64)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Allocation {
    /// The API view of a lease.
    pub fn from_lease(lease: &Lease, node_name: &str, release_at_ms: Option<u64>) -> Self {
        Allocation {
            allocation_id: lease.lease_id.0.clone(),
            node_id: lease.node_id.clone(),
            node_name: node_name.to_owned(),
            holder: lease.holder.clone(),
            request_id: lease.request_id.clone(),
            allocated_resources: AllocatedResources {
                cpu_cores: lease.cpu_cores,
                memory_mb: lease.memory_mb,
                disk_mb: lease.disk_mb,
                gpu_count: lease.gpus.len() as u32,
                gpu_memory_mb: lease.gpus.iter().map(|g| g.memory_mb).sum(),
                gpus: lease.gpus.clone(),
                custom: lease.custom.clone(),
            },
            models: lease.models.clone(),
            task_type: lease.task_type.clone(),
            priority: lease.priority,
            status: AllocationStatus::Active,
            created_at: ms_to_utc(lease.created_at_ms),
            expires_at: ms_to_utc(lease.expires_at_ms),
            lease_secs: lease.lease_ms as f64 / 1000.0,
            release_at: release_at_ms.map(ms_to_utc),
            refusals: Vec::new(),
            queue_position: None,
            ended_reason: None,
            replaced_by: None,
        }
    }
}

/// A request that may span nodes: `parts` times `each`, held on the nodes
/// the plan picks, then confirmed all together, or none (seeds 001–003).
/// "4 GPUs with at least 16 GiB each, anywhere" is `parts: 4`, `each:
/// {gpu_count: 1, gpu_memory_mb: 16384}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiAllocationRequest {
    #[serde(default)]
    pub request_id: Option<String>,
    /// How many parts, 1..=64.
    pub parts: u32,
    /// What each part needs.
    pub each: ResourceRequirements,
    /// `any` (default), `spread` (distinct nodes) or `pack` (fewest nodes).
    #[serde(default = "default_affinity")]
    pub affinity: crate::core::multi::Affinity,
    /// `greedy`, `balanced` or `best-fit` (default, bin packing).
    #[serde(default = "default_split")]
    pub strategy: crate::core::multi::SplitStrategy,
    /// Keep what could be had when not every part can (status `partial`).
    #[serde(default)]
    pub allow_partial: bool,
    #[serde(default)]
    pub priority: Priority,
    /// Lease term, seconds, as for a single request.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub task_type: String,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

fn default_affinity() -> crate::core::multi::Affinity {
    crate::core::multi::Affinity::Any
}

fn default_split() -> crate::core::multi::SplitStrategy {
    crate::core::multi::SplitStrategy::BestFit
}

/// One part of a multi-node allocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiPart {
    pub node_id: NodeId,
    pub node_name: String,
    /// `planned`, `held`, `confirmed`, `refused` or `released`.
    pub status: String,
    pub allocation_id: Option<String>,
    /// Why it was refused.
    pub message: Option<String>,
}

/// A multi-node allocation and its lifecycle: `pending`, `confirmed`,
/// `partial`, `failed`, `released` or `expired`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiAllocation {
    pub id: String,
    pub status: crate::core::multi::MultiStatus,
    pub parts: Vec<MultiPart>,
    /// Whether the plan itself could place only some parts.
    pub partial_plan: bool,
}

/// A request to reserve resources for a future window (seed 003).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReservationRequest {
    pub request_id: Option<String>,
    pub required_resources: ResourceRequirements,
    /// When the window starts (RFC 3339). Or use `start_in_secs`.
    pub start: Option<DateTime<Utc>>,
    /// When the window starts, seconds from now.
    pub start_in_secs: Option<u64>,
    /// Length of the window, seconds (> 0).
    pub duration_secs: u64,
    /// Reserve on this node (id or name); default: the first that can.
    pub node_id: Option<String>,
    pub priority: Priority,
    pub task_type: String,
    pub constraints: Constraints,
    /// A conditional reservation: become active only once this named
    /// event is posted (`POST /api/v1/reservations/events`) by this node or
    /// the owner's admin, within the window; unmet at the window's end.
    pub when_event: Option<String>,
    /// A conditional reservation: become active only once this other
    /// reservation (its id, on the same owner) becomes active. The new
    /// reservation is placed on that owner.
    pub after_reservation: Option<String>,
    /// A pooled reservation: this group (id or name; this node must be a
    /// member) shares it, and its members draw leases from it
    /// (`POST /api/v1/allocations` with `reservation`) up to its size.
    pub share_with: Option<String>,
}

/// A named event to post for conditional reservations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventPost {
    /// 1 to 64 characters of `[A-Za-z0-9._:-]`.
    pub name: String,
}

/// One reservation whose condition an event met.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMet {
    pub reservation_id: String,
    pub node_id: NodeId,
    pub node_name: String,
}

/// What posting an event did: the reservations (on this node, for any
/// holder, and on the owners of this node's reservations) whose condition
/// it met, and owners that could not be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPosted {
    pub name: String,
    pub met: Vec<EventMet>,
    /// Owners this node's reservations wait on that did not answer, and why.
    pub errors: Vec<String>,
}

/// A reservation as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationInfo {
    /// Also the lease id once the window starts.
    pub reservation_id: String,
    pub node_id: NodeId,
    pub node_name: String,
    pub holder: NodeId,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `confirmed`, `waiting` (window begun, condition not met yet),
    /// `active`, `released`, `expired`, `unmet` (ended before its
    /// condition held) or `cancelled`.
    pub status: String,
    pub priority: Priority,
    pub required_resources: ResourceRequirements,
    /// GPUs set aside on the owner.
    pub gpus: Vec<GpuSlot>,
    /// The named event it waits on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_event: Option<String>,
    /// The reservation (on the same owner) it waits on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_reservation: Option<String>,
    /// When its condition held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_met: Option<DateTime<Utc>>,
    /// The group it is shared with (a pooled reservation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<String>,
    /// For a pooled reservation, on its owner: what is left to draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Capacity>,
}

impl ReservationInfo {
    pub fn from_reservation(r: &Reservation, node_name: &str, node_id: &NodeId) -> Self {
        ReservationInfo {
            reservation_id: r.id.0.clone(),
            node_id: node_id.clone(),
            node_name: node_name.to_owned(),
            holder: r.holder.clone(),
            start: ms_to_utc(r.start_ms),
            end: ms_to_utc(r.end_ms),
            status: serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            priority: r.priority,
            required_resources: r.req.clone(),
            gpus: r.gpus.clone(),
            when_event: match &r.condition {
                Some(Condition::Event(name)) => Some(name.clone()),
                _ => None,
            },
            after_reservation: match &r.condition {
                Some(Condition::Reservation(id)) => Some(id.0.clone()),
                _ => None,
            },
            condition_met: r.condition_met_ms.map(ms_to_utc),
            shared_with: r.shared_with.as_ref().map(|g| g.0.clone()),
            left: None,
        }
    }
}

/// Reservations this node made elsewhere, and those it holds for others.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reservations {
    pub held: Vec<ReservationInfo>,
    pub granted: Vec<ReservationInfo>,
}

/// One quota and what its subject uses now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaEntry {
    /// `default`, `node:<peer id>` or `group:<group id>`.
    pub subject: String,
    /// `local` (on this node) or `swarm` (across the swarm, as seen here).
    pub scope: String,
    pub limits: Limits,
    pub burst: Option<Burst>,
    /// What the subject uses now (here, or swarm-wide for `swarm`).
    pub usage: Usage,
    /// The parent quota in the quota tree (`group:<id>`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A quota to set (replacing any for the same subject and scope).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaChange {
    /// `default`, `node:<peer id>` (or a bare peer id) or `group:<id or name>`.
    pub subject: String,
    /// Swarm-wide (across every owner, as this node sees it) instead of
    /// on this node.
    pub swarm: bool,
    pub limits: Limits,
    pub burst: Option<Burst>,
    /// The parent in the quota tree: `group:<id or name>` whose local quota
    /// this one sits under (no cap of it may exceed the parent's). Absent:
    /// a root. Local quotas only.
    pub parent: Option<String>,
}

/// A change to the scheduling policy; absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedPolicyChange {
    pub preemption: Option<bool>,
    pub max_queue: Option<usize>,
    pub max_wait_secs: Option<u64>,
    pub rate_per_sec: Option<f64>,
    pub rate_burst: Option<u32>,
    /// Order within a priority: "fifo", "fair-share" or "weighted".
    pub queue_policy: Option<String>,
    /// Shadow-time backfill on or off.
    pub backfill: Option<bool>,
    /// Half-life of the use fair share counts, seconds.
    pub fair_share_half_life_secs: Option<u64>,
    /// Requester shares to set (peer id -> integer >= 1).
    pub shares: Option<std::collections::BTreeMap<String, i64>>,
    /// Group shares to set (group id -> integer >= 1).
    pub group_shares: Option<std::collections::BTreeMap<String, i64>>,
    /// Requester shares to drop (back to the default of 1).
    pub remove_shares: Option<Vec<String>>,
    /// Group shares to drop.
    pub remove_group_shares: Option<Vec<String>>,
}

/// One request waiting in this node's queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub ticket: String,
    pub holder: NodeId,
    pub priority: Priority,
    /// 1-based, in grant order.
    pub position: u32,
    pub required_resources: ResourceRequirements,
    pub queued_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

/// Leases this node holds elsewhere, and leases it granted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Allocations {
    pub held: Vec<Allocation>,
    pub granted: Vec<Allocation>,
}

/// The answer to a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    pub allocation_id: String,
    /// True when the owner confirmed (or is this node). False when the
    /// owner could not be reached: the lease then simply runs out.
    pub owner_confirmed: bool,
}

/// Resources of a node (seed 004's `NodeResources`, extended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    /// What the node lends in total.
    pub lendable: Capacity,
    /// What is free of that.
    pub free: Capacity,
    /// GPUs, as detected or declared.
    pub gpus: Vec<GpuInfo>,
    /// The whole machine, not only the lent part.
    pub machine_cpu_cores: u32,
    pub machine_memory_mb: u64,
    pub cpu_usage_pct: f32,
}

/// A node as seen from here (seed 004's `NodeInfo`, extended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's `PeerId`.
    pub id: NodeId,
    pub name: String,
    /// Whether this is the node answering.
    pub is_local: bool,
    pub version: String,
    /// libp2p multiaddrs the node listens on.
    pub addresses: Vec<String>,
    pub resources: NodeResources,
    pub models: Vec<String>,
    /// Of `models`, those loaded in memory now.
    #[serde(default)]
    pub loaded_models: Vec<String>,
    /// Task templates the node offers.
    #[serde(default)]
    pub templates: Vec<String>,
    pub location: Location,
    pub weight: u32,
    pub allow_remote_access: bool,
    /// Labels from the node's config, matched by pool selectors.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the node announces of its access policy (a hint for
    /// requesters; the owner's check is the one that counts).
    pub access: AccessHint,
    pub active_allocations: u32,
    /// Requests waiting in the node's queue.
    pub queued: u32,
    /// Whether the node lets higher priority preempt lower.
    pub preemption: bool,
    pub status: NodeStatus,
    pub last_seen: DateTime<Utc>,
    /// Smoothed round-trip time, ms (None until measured, or for self).
    pub rtt_ms: Option<f64>,
    /// Sequence number of the announcement this is built from.
    pub seq: u64,
    /// Set (on this node only) when another node was seen using this
    /// node's identity: a copied data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_identity: Option<String>,
    /// Peers this node has penalised for invalid messages (this node only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub penalties: Vec<Penalty>,
    /// The answering node's circuit breaker for this peer, when it is not
    /// closed (`open` or `half_open`; see `GET /api/v1/breakers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<crate::core::breaker::State>,
}

/// A peer that sent invalid messages, and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Penalty {
    pub peer_id: String,
    /// Invalid messages counted.
    pub offences: u32,
    /// Whether the peer is banned (disconnected and refused) right now.
    pub banned: bool,
    /// What the last offence was.
    pub last_offence: String,
}

impl NodeInfo {
    /// The API view of a node's announcement. Fields only the answering
    /// node knows of itself (`duplicate_identity`, `penalties`) start empty.
    pub fn from_announcement(
        ann: &Announcement,
        is_local: bool,
        status: NodeStatus,
        last_seen_ms: u64,
        rtt_ms: Option<f64>,
    ) -> Self {
        NodeInfo {
            id: ann.node_id.clone(),
            name: ann.name.clone(),
            is_local,
            version: ann.version.clone(),
            addresses: ann.addrs.clone(),
            resources: NodeResources {
                lendable: ann.capacity.clone(),
                free: ann.free.clone(),
                gpus: ann.gpus.clone(),
                machine_cpu_cores: ann.machine_cpu_cores,
                machine_memory_mb: ann.machine_memory_mb,
                cpu_usage_pct: ann.cpu_usage_pct,
            },
            models: ann.models.clone(),
            loaded_models: ann.loaded_models.clone(),
            templates: ann.templates.clone(),
            location: ann.location.clone(),
            weight: ann.weight,
            allow_remote_access: ann.access.allow_remote,
            labels: ann.labels.clone(),
            access: ann.access.clone(),
            active_allocations: ann.active_leases,
            queued: ann.queued,
            preemption: ann.preemption,
            status,
            last_seen: ms_to_utc(last_seen_ms),
            rtt_ms,
            seq: ann.seq,
            duplicate_identity: None,
            penalties: Vec::new(),
            circuit: None,
        }
    }
}

/// An error of a call on the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the node is stopped")]
    Stopped,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no node could grant the request ({} refused, {} not eligible)", refusals.len(), excluded.len())]
    NoCapacity {
        refusals: Vec<Refusal>,
        excluded: Vec<Excluded>,
    },
    #[error("unknown allocation {0}")]
    UnknownAllocation(String),
    #[error("denied: {0}")]
    Denied(crate::model::Denial),
    #[error("storage: {0}")]
    Storage(String),
    /// A named thing (group, pool) that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the state does not allow it (a full
    /// group, a group that needs an invitation, an ambiguous name).
    #[error("{0}")]
    Conflict(String),
    /// The owner would not run a task (`reason` is machine-readable:
    /// `no_lease`, `unknown_template`, `bad_params`, `unknown_model`,
    /// `no_model_server`, `busy`, `bad_request`).
    #[error("task refused ({reason}): {message}")]
    TaskRefused { reason: String, message: String },
    /// A peer could not be reached, or did not answer.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// A swarm group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: String,
    pub name: String,
    pub max_members: u32,
    /// Whether anyone may join, or only invited nodes.
    pub open: bool,
    pub created_by: NodeId,
    /// Members, by id.
    pub members: Vec<GroupMember>,
    /// Nodes invited and not yet joined.
    pub invited: Vec<NodeId>,
    /// Whether the answering node is a member.
    pub is_member: bool,
}

/// One member of a group, with its name where this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub id: NodeId,
    pub name: Option<String>,
}

/// What to create a group with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    pub name: String,
    pub max_members: u32,
    /// Anyone may join (default: only invited nodes).
    #[serde(default)]
    pub open: bool,
}

/// A resource pool as this node sees it, with its members and their
/// aggregate capacity (from the latest announcements).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub selector: PoolSelector,
    pub created_by: NodeId,
    /// Known nodes that match the selector, online or not.
    pub members: Vec<GroupMember>,
    /// Totals over the members that are online.
    pub capacity: PoolCapacity,
}

/// What to create a pool with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPool {
    pub name: String,
    #[serde(flatten)]
    pub selector: PoolSelector,
}

/// A change to the access policy: every field is optional, and lists are
/// edited by adding and removing ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessChange {
    pub allow_remote: Option<bool>,
    pub group_peers_only: Option<bool>,
    pub allow_add: Vec<String>,
    pub allow_remove: Vec<String>,
    pub deny_add: Vec<String>,
    pub deny_remove: Vec<String>,
}

/// The roles in force on this node: the policy, and every role (built-in
/// and custom) with its permissions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolesInfo {
    #[serde(flatten)]
    pub policy: crate::core::roles::RolePolicy,
    pub roles: std::collections::BTreeMap<String, crate::core::roles::Permissions>,
}

/// A change to the role assignments (`PATCH /api/v1/roles`). Peers are
/// peer ids; groups are group ids or names. Removals apply first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolesChange {
    pub default_role: Option<String>,
    pub assign_peers: std::collections::BTreeMap<String, String>,
    pub unassign_peers: Vec<String>,
    pub assign_groups: std::collections::BTreeMap<String, String>,
    pub unassign_groups: Vec<String>,
}

/// Commands into the event loop.
pub(crate) enum Command {
    LocalNode(oneshot::Sender<NodeInfo>),
    Nodes(oneshot::Sender<Vec<NodeInfo>>),
    Request(
        Box<AllocationRequest>,
        oneshot::Sender<Result<Allocation, NodeError>>,
    ),
    Release(String, oneshot::Sender<Result<ReleaseOutcome, NodeError>>),
    Allocations(oneshot::Sender<Allocations>),
    GetStrategy(oneshot::Sender<StrategyConfig>),
    SetStrategy(StrategyConfig, oneshot::Sender<()>),
    ListenAddrs(oneshot::Sender<Vec<String>>),
    Dial(String, oneshot::Sender<Result<(), NodeError>>),
    Telemetry(Telemetry),
    Groups(oneshot::Sender<Vec<GroupInfo>>),
    Group(String, oneshot::Sender<Result<GroupInfo, NodeError>>),
    CreateGroup(NewGroup, oneshot::Sender<Result<GroupInfo, NodeError>>),
    JoinGroup(String, oneshot::Sender<Result<GroupInfo, NodeError>>),
    LeaveGroup(String, oneshot::Sender<Result<GroupInfo, NodeError>>),
    InviteToGroup(
        String,
        String,
        oneshot::Sender<Result<GroupInfo, NodeError>>,
    ),
    Access(oneshot::Sender<AccessPolicy>),
    SetAccess(
        AccessChange,
        oneshot::Sender<Result<AccessPolicy, NodeError>>,
    ),
    Roles(oneshot::Sender<RolesInfo>),
    SetRoles(RolesChange, oneshot::Sender<Result<RolesInfo, NodeError>>),
    Pools(oneshot::Sender<Vec<PoolInfo>>),
    Reserve(
        Box<ReservationRequest>,
        oneshot::Sender<Result<ReservationInfo, NodeError>>,
    ),
    Reservations(oneshot::Sender<Reservations>),
    PostEvent(String, oneshot::Sender<Result<EventPosted, NodeError>>),
    Quotas(oneshot::Sender<Vec<QuotaEntry>>),
    SetQuota(
        QuotaChange,
        oneshot::Sender<Result<Vec<QuotaEntry>, NodeError>>,
    ),
    RemoveQuota(
        String,
        bool,
        oneshot::Sender<Result<Vec<QuotaEntry>, NodeError>>,
    ),
    SchedPolicy(oneshot::Sender<SchedPolicy>),
    SetSchedPolicy(
        SchedPolicyChange,
        oneshot::Sender<Result<SchedPolicy, NodeError>>,
    ),
    Queue(oneshot::Sender<Vec<QueueEntry>>),
    RequestMulti(
        Box<MultiAllocationRequest>,
        oneshot::Sender<Result<MultiAllocation, NodeError>>,
    ),
    Multis(oneshot::Sender<Vec<MultiAllocation>>),
    Contention(oneshot::Sender<ContentionReport>),
    /// Circuit breakers on this node's requests, per peer.
    Breakers(oneshot::Sender<crate::net::node::BreakerReport>),
    /// Adaptive throttling: the per-peer admission rate in force.
    Throttle(oneshot::Sender<crate::core::adaptive::AdaptiveStatus>),
    Elastic(oneshot::Sender<ElasticStatus>),
    /// Query the allocation history (audit log).
    History(
        crate::core::history::HistoryQuery,
        oneshot::Sender<Result<Vec<crate::core::history::HistoryEvent>, NodeError>>,
    ),
    /// Usage accounting (resource-seconds, costs).
    Usage(
        crate::core::usage::UsageQuery,
        oneshot::Sender<crate::core::usage::UsageReport>,
    ),
    /// Refusals per dimension, here and swarm-wide.
    Bottlenecks(oneshot::Sender<crate::net::node::BottleneckReport>),
    Pool(String, oneshot::Sender<Result<PoolInfo, NodeError>>),
    RunTask(Box<RunTaskCmd>),
    WatchTask {
        owner: NodeId,
        task_id: String,
        updates: mpsc::UnboundedSender<TaskUpdate>,
    },
    TaskCall(
        NodeId,
        crate::net::protocol::TaskRequest,
        oneshot::Sender<Result<crate::net::protocol::TaskResponse, NodeError>>,
    ),
    Offers(oneshot::Sender<Offers>),
    HealthChecks(oneshot::Sender<Vec<HealthCheck>>),
    Utilization(u64, oneshot::Sender<crate::core::utilization::UtilReport>),
    Discover(oneshot::Sender<crate::net::node::DiscoverReport>),
    CreatePool(NewPool, oneshot::Sender<Result<PoolInfo, NodeError>>),
    DeletePool(String, oneshot::Sender<Result<(), NodeError>>),
}

/// What the node running a task for us says about it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskUpdate {
    /// The next piece of a streamed answer.
    Chunk(String),
    /// The task ended.
    Finished(Box<crate::model::TaskResult>),
    /// The connection to the owner closed; poll it to tell a lost owner
    /// from a reconnect.
    OwnerDisconnected,
}

/// A task this node runs (or ran) for a peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalTask {
    pub task_id: String,
    /// The template, or `infer:MODEL`.
    pub label: String,
    pub allocation_id: String,
    pub requester: NodeId,
    /// `running`, or how it ended.
    pub status: String,
    pub accepted_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
}

/// What this node offers to run: its templates and its model server.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offers {
    pub templates: Vec<crate::core::tasks::Template>,
    /// Models advertised, and the loaded ones among them.
    pub models: Vec<String>,
    pub loaded_models: Vec<String>,
    /// The model server's URL, if one is configured.
    pub model_server: Option<String>,
    /// What the last look at the model server found.
    pub model_status: String,
    /// Tasks running for peers, and recent results.
    pub tasks: Vec<LocalTask>,
}

/// The result of asking one node how it is (seed 004's `HealthCheck`,
/// extended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub node_id: NodeId,
    pub name: String,
    /// When the answer (or the failure) came.
    pub timestamp: DateTime<Utc>,
    /// `online`, `degraded` (answered in 500 ms or more), `left` (said it is
    /// leaving), `suspect` (no answer in time) or `offline` (unreachable).
    pub status: NodeStatus,
    /// What it reported; `None` when it did not answer.
    pub resources: Option<NodeResources>,
    pub active_allocations: u32,
    /// Requests waiting in its queue.
    pub queued: u32,
    /// Tasks it runs for peers.
    pub running_tasks: u32,
    /// Round trip of the check, ms (0 for this node).
    pub response_time_ms: Option<f64>,
    /// How long its process has run, seconds.
    pub uptime_secs: Option<u64>,
    pub version: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// Elastic sharing as it stands (`GET /api/v1/elastic`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElasticStatus {
    /// Whether elastic sharing is on; when off, `current` is the cap.
    pub enabled: bool,
    /// `reactive` or `forecast`.
    pub policy: crate::core::elastic::ElasticMode,
    /// The configured cap: the most this node ever lends.
    pub cap: Capacity,
    /// What it lends now (only cores and memory move).
    pub current: Capacity,
    /// With the forecast policy, once a sample was seen: the highest own
    /// (non-swarm) use expected over the horizon.
    pub forecast: Option<ElasticForecast>,
}

/// The forecast of the machine owner's own use over the horizon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElasticForecast {
    /// Cores.
    pub cpu_cores: f64,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// How far ahead it looks, seconds.
    pub horizon_secs: u64,
}

/// Fresh readings of the host, fed in by the hardware monitor task and
/// carried in the next announcement.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// Host CPU utilization, percent.
    pub cpu_usage_pct: f32,
    /// Current readings of the detected (not synthetic) GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Host memory available, MiB (elastic sharing).
    pub memory_available_mb: u64,
}

/// Run a task on `owner` under `allocation_id`; updates go to `updates`.
#[derive(Debug)]
pub struct RunTaskCmd {
    pub owner: NodeId,
    pub allocation_id: String,
    pub task_id: String,
    pub spec: crate::model::TaskSpec,
    pub updates: mpsc::UnboundedSender<TaskUpdate>,
    pub reply: oneshot::Sender<Result<(), NodeError>>,
}

/// A cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct Node {
    tx: mpsc::Sender<Command>,
    id: NodeId,
    /// The node's Prometheus metrics; the event loop updates them.
    metrics: std::sync::Arc<prometheus_client::registry::Registry>,
}

impl Node {
    pub(crate) fn new(
        tx: mpsc::Sender<Command>,
        id: NodeId,
        metrics: std::sync::Arc<prometheus_client::registry::Registry>,
    ) -> Self {
        Node { tx, id, metrics }
    }

    /// The node's metrics in the OpenMetrics text format
    /// ([`crate::metrics::CONTENT_TYPE`]), for `GET /metrics`. Reads the
    /// registry directly: a scrape never waits on the event loop.
    pub fn metrics_text(&self) -> String {
        crate::metrics::encode(&self.metrics)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// This node, as peers see it.
    pub async fn local_node(&self) -> Result<NodeInfo, NodeError> {
        self.call(Command::LocalNode).await
    }

    /// Every known node, this one first, then by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, NodeError> {
        self.call(Command::Nodes).await
    }

    /// Place a request on whichever node the strategy picks.
    pub async fn request(&self, req: AllocationRequest) -> Result<Allocation, NodeError> {
        self.call(|tx| Command::Request(Box::new(req), tx)).await?
    }

    /// Start `spec` on `owner` under `allocation_id` (a lease this node
    /// holds there) as task `task_id`. `Ok` once the owner accepted it;
    /// the pieces and the result arrive on `updates`.
    pub async fn start_task(
        &self,
        owner: NodeId,
        allocation_id: &str,
        task_id: &str,
        spec: crate::model::TaskSpec,
        updates: mpsc::UnboundedSender<TaskUpdate>,
    ) -> Result<(), NodeError> {
        self.call(|reply| {
            Command::RunTask(Box::new(RunTaskCmd {
                owner,
                allocation_id: allocation_id.to_owned(),
                task_id: task_id.to_owned(),
                spec,
                updates,
                reply,
            }))
        })
        .await?
    }

    /// Watch a task already running on `owner` (after a restart).
    pub async fn watch_task(
        &self,
        owner: NodeId,
        task_id: &str,
        updates: mpsc::UnboundedSender<TaskUpdate>,
    ) -> Result<(), NodeError> {
        self.tx
            .send(Command::WatchTask {
                owner,
                task_id: task_id.to_owned(),
                updates,
            })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Cancel or poll a task on `owner`.
    pub async fn task_call(
        &self,
        owner: NodeId,
        req: crate::net::protocol::TaskRequest,
    ) -> Result<crate::net::protocol::TaskResponse, NodeError> {
        self.call(|tx| Command::TaskCall(owner, req, tx)).await?
    }

    /// Ask every known node how it is, at once (each with a 2 s timeout);
    /// this node first, then by node id.
    pub async fn perform_health_checks(&self) -> Result<Vec<HealthCheck>, NodeError> {
        self.call(Command::HealthChecks).await
    }

    /// Utilization samples and allocation round trips taken after
    /// `after_ms` (ms since the Unix epoch; 0 for all that is kept).
    pub async fn utilization(
        &self,
        after_ms: u64,
    ) -> Result<crate::core::utilization::UtilReport, NodeError> {
        self.call(|tx| Command::Utilization(after_ms, tx)).await
    }

    /// Look for nodes now: dial the bootstrap peers and known unconnected
    /// peers again and sync views with every connected peer.
    pub async fn discover(&self) -> Result<crate::net::node::DiscoverReport, NodeError> {
        self.call(Command::Discover).await
    }

    /// This node's templates, model server and the tasks it runs for peers.
    pub async fn offers(&self) -> Result<Offers, NodeError> {
        self.call(Command::Offers).await
    }

    /// Release an allocation this node holds, or one it granted.
    pub async fn release(&self, allocation_id: &str) -> Result<ReleaseOutcome, NodeError> {
        self.call(|tx| Command::Release(allocation_id.to_owned(), tx))
            .await?
    }

    /// Leases held and granted.
    pub async fn allocations(&self) -> Result<Allocations, NodeError> {
        self.call(Command::Allocations).await
    }

    /// The current balancing strategy.
    pub async fn strategy(&self) -> Result<StrategyConfig, NodeError> {
        self.call(Command::GetStrategy).await
    }

    /// Change the balancing strategy.
    pub async fn set_strategy(&self, cfg: StrategyConfig) -> Result<(), NodeError> {
        self.call(|tx| Command::SetStrategy(cfg, tx)).await
    }

    /// The addresses the swarm listens on (with `/p2p/<id>`).
    pub async fn listen_addrs(&self) -> Result<Vec<String>, NodeError> {
        self.call(Command::ListenAddrs).await
    }

    /// Report fresh hardware readings. Never blocks: if the node is busy,
    /// this reading is skipped and the next one goes in.
    pub fn update_telemetry(&self, t: Telemetry) {
        let _ = self.tx.try_send(Command::Telemetry(t));
    }

    /// Dial a peer by multiaddr.
    pub async fn dial(&self, addr: &str) -> Result<(), NodeError> {
        self.call(|tx| Command::Dial(addr.to_owned(), tx)).await?
    }

    /// Every swarm group this node knows, by id.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, NodeError> {
        self.call(Command::Groups).await
    }

    /// One group, by id or (unique) name, with its members.
    pub async fn group(&self, group: &str) -> Result<GroupInfo, NodeError> {
        self.call(|tx| Command::Group(group.to_owned(), tx)).await?
    }

    /// Create a group; this node becomes its first member.
    pub async fn create_group(&self, new: NewGroup) -> Result<GroupInfo, NodeError> {
        self.call(|tx| Command::CreateGroup(new, tx)).await?
    }

    /// Join a group (by id or name): open groups admit anyone, closed ones
    /// only invited nodes. Joining a group this node is in changes nothing.
    pub async fn join_group(&self, group: &str) -> Result<GroupInfo, NodeError> {
        self.call(|tx| Command::JoinGroup(group.to_owned(), tx))
            .await?
    }

    /// Leave a group. Leaving a group this node is not in changes nothing.
    pub async fn leave_group(&self, group: &str) -> Result<GroupInfo, NodeError> {
        self.call(|tx| Command::LeaveGroup(group.to_owned(), tx))
            .await?
    }

    /// Invite a node (by peer id) into a group this node is a member of.
    pub async fn invite_to_group(&self, group: &str, node: &str) -> Result<GroupInfo, NodeError> {
        self.call(|tx| Command::InviteToGroup(group.to_owned(), node.to_owned(), tx))
            .await?
    }

    /// The access policy in force.
    pub async fn access(&self) -> Result<AccessPolicy, NodeError> {
        self.call(Command::Access).await
    }

    /// Change the access policy. It applies to the next request, and is
    /// stored before this returns.
    pub async fn set_access(&self, change: AccessChange) -> Result<AccessPolicy, NodeError> {
        self.call(|tx| Command::SetAccess(change, tx)).await?
    }

    /// The roles in force: assignments, default, every role.
    pub async fn roles(&self) -> Result<RolesInfo, NodeError> {
        self.call(Command::Roles).await
    }

    /// Change the role assignments. They apply to the next request, and
    /// are stored before this returns; a bad change changes nothing.
    pub async fn set_roles(&self, change: RolesChange) -> Result<RolesInfo, NodeError> {
        self.call(|tx| Command::SetRoles(change, tx)).await?
    }

    /// Every resource pool, by name, with aggregate capacity.
    pub async fn pools(&self) -> Result<Vec<PoolInfo>, NodeError> {
        self.call(Command::Pools).await
    }

    /// One pool by name.
    pub async fn pool(&self, name: &str) -> Result<PoolInfo, NodeError> {
        self.call(|tx| Command::Pool(name.to_owned(), tx)).await?
    }

    /// Create (or redefine) a pool, shared with the swarm.
    pub async fn create_pool(&self, new: NewPool) -> Result<PoolInfo, NodeError> {
        self.call(|tx| Command::CreatePool(new, tx)).await?
    }

    /// Reserve resources for a future window on some node (seed 003).
    pub async fn reserve(&self, req: ReservationRequest) -> Result<ReservationInfo, NodeError> {
        self.call(|tx| Command::Reserve(Box::new(req), tx)).await?
    }

    /// Post a named event for conditional reservations: those on this
    /// node waiting on it (any holder), and this node's own reservations on
    /// other owners waiting on it.
    pub async fn post_event(&self, name: String) -> Result<EventPosted, NodeError> {
        self.call(|tx| Command::PostEvent(name, tx)).await?
    }

    /// Reservations made here and held here. Cancel one with
    /// [`Node::release`] and its id.
    pub async fn reservations(&self) -> Result<Reservations, NodeError> {
        self.call(Command::Reservations).await
    }

    /// Every quota this node enforces, with current usage.
    pub async fn quotas(&self) -> Result<Vec<QuotaEntry>, NodeError> {
        self.call(Command::Quotas).await
    }

    /// Set a quota (stored before this returns). A cap below what the
    /// subject already uses is refused.
    pub async fn set_quota(&self, change: QuotaChange) -> Result<Vec<QuotaEntry>, NodeError> {
        self.call(|tx| Command::SetQuota(change, tx)).await?
    }

    /// Remove a quota.
    pub async fn remove_quota(
        &self,
        subject: &str,
        swarm: bool,
    ) -> Result<Vec<QuotaEntry>, NodeError> {
        self.call(|tx| Command::RemoveQuota(subject.to_owned(), swarm, tx))
            .await?
    }

    /// The scheduling policy (preemption, queue, rate limit).
    pub async fn sched_policy(&self) -> Result<SchedPolicy, NodeError> {
        self.call(Command::SchedPolicy).await
    }

    /// Change the scheduling policy (stored before this returns).
    pub async fn set_sched_policy(
        &self,
        change: SchedPolicyChange,
    ) -> Result<SchedPolicy, NodeError> {
        self.call(|tx| Command::SetSchedPolicy(change, tx)).await?
    }

    /// Allocate parts over several nodes, all or nothing (or what can be
    /// had, with `allow_partial`): hold each part, then confirm them all.
    pub async fn request_multi(
        &self,
        req: MultiAllocationRequest,
    ) -> Result<MultiAllocation, NodeError> {
        self.call(|tx| Command::RequestMulti(Box::new(req), tx))
            .await?
    }

    /// Multi-node allocations made here (recent ones, final ones included).
    pub async fn multis(&self) -> Result<Vec<MultiAllocation>, NodeError> {
        self.call(Command::Multis).await
    }

    /// Requests waiting in this node's queue, in grant order.
    pub async fn queue(&self) -> Result<Vec<QueueEntry>, NodeError> {
        self.call(Command::Queue).await
    }

    /// Contention on this node: queued demand against free capacity.
    pub async fn contention(&self) -> Result<ContentionReport, NodeError> {
        self.call(Command::Contention).await
    }

    /// Circuit breakers on this node's own requests: the policy and every
    /// tracked peer's state.
    pub async fn breakers(&self) -> Result<crate::net::node::BreakerReport, NodeError> {
        self.call(Command::Breakers).await
    }

    /// Adaptive throttling: the per-peer admission rate in force here.
    pub async fn throttle(&self) -> Result<crate::core::adaptive::AdaptiveStatus, NodeError> {
        self.call(Command::Throttle).await
    }

    /// Elastic sharing: what this node lends now against its cap, and the
    /// forecast of its own use when the forecast policy is on.
    pub async fn elastic(&self) -> Result<ElasticStatus, NodeError> {
        self.call(Command::Elastic).await
    }

    /// The allocation history (audit log): records matching `query`,
    /// newest first.
    pub async fn history(
        &self,
        query: crate::core::history::HistoryQuery,
    ) -> Result<Vec<crate::core::history::HistoryEvent>, NodeError> {
        self.call(|tx| Command::History(query, tx)).await?
    }

    /// Usage accounting: resource-seconds (and costs) matching `query`.
    pub async fn usage(
        &self,
        query: crate::core::usage::UsageQuery,
    ) -> Result<crate::core::usage::UsageReport, NodeError> {
        self.call(|tx| Command::Usage(query, tx)).await
    }

    /// The dimensions that refuse the most requests, per node and
    /// swarm-wide.
    pub async fn bottlenecks(&self) -> Result<crate::net::node::BottleneckReport, NodeError> {
        self.call(Command::Bottlenecks).await
    }

    /// Delete a pool, swarm-wide.
    pub async fn delete_pool(&self, name: &str) -> Result<(), NodeError> {
        self.call(|tx| Command::DeletePool(name.to_owned(), tx))
            .await?
    }
}
