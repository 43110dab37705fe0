//! The command line: `lanswarm run` starts a node; every other subcommand
//! talks to a running node over its HTTP API (`--api`, env `LANSWARM_API`)
//! and prints a readable table, or JSON with `--json`.

mod breakers;
mod client;
mod history;
mod keygen;
mod table;
mod tasks;
mod tokens;
mod usage;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::Value;

pub use client::{Client, ClientError};
pub use keygen::KeygenArgs;

use crate::core::access::AccessPolicy;
use crate::core::constraints::Constraints;
use crate::core::contention::ContentionReport;
use crate::core::placement::{Strategy, StrategyConfig};
use crate::core::pools::PoolSelector;
use crate::core::quota::{Burst, Limits};
use crate::core::sched::SchedPolicy;
use crate::handle::{
    AccessChange, Allocation, AllocationRequest, AllocationStatus, Allocations, EventPost,
    EventPosted, GroupInfo, GroupMember, NewGroup, NewPool, NodeInfo, PoolInfo, QueueEntry,
    QuotaChange, QuotaEntry, ReleaseOutcome, ReservationInfo, ReservationRequest, Reservations,
    SchedPolicyChange,
};
use crate::model::{ComputeCapability, Priority, ResourceRequirements};
use crate::units::{format_mb, parse_duration, parse_size_mb};

/// lanswarm: share CPU, memory, disk, GPUs and AI models between the
/// machines of a LAN, peer to peer, with no coordinator.
#[derive(Debug, Parser)]
#[command(name = "lanswarm", version, about, long_about = None)]
pub struct Cli {
    /// The node's HTTP API.
    #[arg(
        long,
        global = true,
        env = "LANSWARM_API",
        default_value = "http://127.0.0.1:7700"
    )]
    pub api: String,
    /// Bearer token for the API (needed when the node sets api.token).
    #[arg(long, global = true, env = "LANSWARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show this node: identity, addresses, lendable and free capacity.
    Status,
    /// List every known node with its free capacity, status and RTT.
    Nodes,
    /// Allocate resources on whichever node the strategy picks.
    Request(RequestArgs),
    /// Release an allocation (one this node holds, or one it granted).
    Release {
        /// The allocation id.
        allocation_id: String,
    },
    /// List allocations this node holds elsewhere and the ones it granted.
    Allocations,
    /// Show or set the balancing strategy.
    Strategy(StrategyArgs),
    /// Write a new private-swarm key (local; talks to no node). Nodes whose
    /// config names it (network.swarm_key) only connect to each other.
    Keygen(KeygenArgs),
    /// Swarm groups: create, join, leave, invite, list, members.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Show or change who may use this node's resources.
    #[command(subcommand)]
    Access(AccessCommand),
    /// Roles: what each admitted peer may do here (allocate, reserve,
    /// run tasks, infer, preempt, ...), by peer id, group, or default.
    #[command(subcommand)]
    Roles(tokens::RolesCommand),
    /// API tokens: create (the secret is printed once), list, revoke.
    /// With --data-dir or --config, works on the data directory directly,
    /// with no node running.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Resource pools: named sets of nodes, by peer id or label.
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// Reserve resources for a future window (an advance reservation).
    Reserve(ReserveArgs),
    /// Allocate several parts over the swarm, all or nothing: each part is
    /// held, then all are confirmed (e.g. 4 GPUs with 16GiB each, anywhere).
    RequestMulti(MultiArgs),
    /// List the multi-node allocations made from this node.
    Multi,
    /// List reservations made here and held here, or cancel one.
    Reservations(ReservationsArgs),
    /// Quotas on what each requester (or group) may hold on this node.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Show or change the scheduling policy: preemption, queue, rate limit.
    #[command(subcommand)]
    Scheduler(SchedulerCommand),
    /// Requests waiting in this node's queue, in grant order.
    Queue,
    /// Contention on this node: queued demand against free capacity.
    Contention,
    /// Circuit breakers on this node's own requests: peers whose
    /// allocations keep failing and are not asked until a cool-down.
    Breakers,
    /// Adaptive throttling: the per-peer admission rate in force here.
    Throttle,
    /// The allocation history (audit log): grants, denials, releases,
    /// expiries, preemptions and policy, group and pool changes, newest
    /// first, e.g. `lanswarm history --since 24h --kind grant,denial`.
    History(history::HistoryArgs),
    /// Usage accounting: resource-seconds (and costs, with prices set) per
    /// requester, group or node, e.g. `lanswarm usage --since 24h --by
    /// group`.
    Usage(usage::UsageArgs),
    /// The resource dimensions that refuse the most requests, on each
    /// node and swarm-wide, over the last hour.
    Bottlenecks,
    /// Tasks: run a template on a lease, list, show, cancel.
    #[command(subcommand)]
    Task(tasks::TaskCommand),
    /// Scatter/gather jobs: run a job file, list, show, cancel.
    #[command(subcommand)]
    Job(tasks::JobCommand),
    /// Ask a model served somewhere in the swarm: `lanswarm infer --model
    /// llama3 "why is the sky blue?"`.
    Infer(tasks::InferArgs),
    /// What this node offers to run: its templates, its model server.
    Offers,
    /// Every model served in the swarm, and where (loaded first).
    Models,
    /// Ask every known node how it is, at once: status, response time,
    /// free capacity, allocations.
    Health,
}

/// Options of `lanswarm run`. Each overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Config file (TOML). Without it, embedded defaults are used.
    #[arg(long, short, env = "LANSWARM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory: the node's key and its lease store.
    #[arg(long, env = "LANSWARM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long, env = "LANSWARM_NAME")]
    pub name: Option<String>,
    /// libp2p listen address; repeat for several.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to dial at start (for networks without multicast); repeat.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Turn mDNS discovery off.
    #[arg(long)]
    pub no_mdns: bool,
    /// HTTP API listen address (default 127.0.0.1:7700).
    #[arg(long, env = "LANSWARM_API_LISTEN", value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Log level or filter (default: info, or log.level in the config).
    #[arg(long, env = "LANSWARM_LOG")]
    pub log: Option<String>,
}

/// Options of `lanswarm request`.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// CPU cores.
    #[arg(long, default_value_t = 0)]
    pub cpu: u32,
    /// Memory, e.g. 4GiB or 512MiB.
    #[arg(long, value_parser = size_arg)]
    pub memory: Option<u64>,
    /// Disk, e.g. 10GiB.
    #[arg(long, value_parser = size_arg)]
    pub disk: Option<u64>,
    /// Number of GPUs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Memory needed on each GPU, e.g. 8GiB. Without it, whole GPUs.
    #[arg(long, value_parser = size_arg)]
    pub gpu_memory: Option<u64>,
    /// A model the node must serve; repeat for alternatives.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A custom resource, NAME=AMOUNT; repeat.
    #[arg(long = "custom", value_parser = custom_arg)]
    pub custom: Vec<(String, u64)>,
    /// Strategy for this request (default: the node's current one).
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Only this node (id or name).
    #[arg(long)]
    pub node: Option<String>,
    /// Only the nodes of this resource pool (by name).
    #[arg(long)]
    pub pool: Option<String>,
    /// Only the members of this swarm group (by id or name).
    #[arg(long)]
    pub group: Option<String>,
    /// Lease term, renewed automatically while this node runs, e.g. 5m.
    #[arg(long, value_parser = duration_arg)]
    pub lease: Option<u64>,
    /// Release automatically after this long, e.g. 2h.
    #[arg(long, value_parser = duration_arg)]
    pub duration: Option<u64>,
    /// Priority: low, normal, high, critical.
    #[arg(long, default_value = "normal", value_parser = priority_arg)]
    pub priority: Priority,
    /// Free-form task type recorded on the lease.
    #[arg(long, default_value = "")]
    pub task_type: String,
    /// When nothing is free now, wait up to this long in an owner's queue,
    /// e.g. 30s (default: do not wait).
    #[arg(long, value_parser = duration_arg)]
    pub wait: Option<u64>,
    /// If the owner goes offline or leaves while this node holds the
    /// allocation, place the same request again on another node.
    #[arg(long)]
    pub replace: bool,
    /// A label the node must carry, KEY=VALUE; repeat.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label_arg)]
    pub labels: Vec<(String, String)>,
    /// The node's CPU architecture, e.g. x86_64 or aarch64.
    #[arg(long)]
    pub arch: Option<String>,
    /// The GPUs' name must contain this (ignoring case), e.g. A100.
    #[arg(long)]
    pub gpu_name: Option<String>,
    /// The GPUs' least CUDA compute capability, e.g. 8.0.
    #[arg(long, value_name = "MAJOR.MINOR", value_parser = cc_arg)]
    pub min_cc: Option<ComputeCapability>,
    /// The node's location zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Draw the lease from this active pooled reservation (its id) instead
    /// of free capacity; `--node` names its owner (not needed for one this
    /// node made).
    #[arg(long, value_name = "RESERVATION_ID", conflicts_with_all = ["pool", "group"])]
    pub reservation: Option<String>,
}

/// Options of `lanswarm reserve`.
#[derive(Debug, Clone, Args)]
pub struct ReserveArgs {
    /// When the window starts: RFC 3339 (2026-12-01T09:00:00Z), `now`, or
    /// from now: `+10m`, `in 10m`, `now+10m`.
    #[arg(long, value_parser = start_arg)]
    pub start: Start,
    /// Length of the window, e.g. 1h.
    #[arg(long, value_parser = duration_arg)]
    pub duration: u64,
    /// CPU cores.
    #[arg(long, default_value_t = 0)]
    pub cpu: u32,
    /// Memory, e.g. 4GiB or 512MiB.
    #[arg(long, value_parser = size_arg)]
    pub memory: Option<u64>,
    /// Disk, e.g. 10GiB.
    #[arg(long, value_parser = size_arg)]
    pub disk: Option<u64>,
    /// Number of GPUs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Memory needed on each GPU, e.g. 8GiB. Without it, whole GPUs.
    #[arg(long, value_parser = size_arg)]
    pub gpu_memory: Option<u64>,
    /// A custom resource, NAME=AMOUNT; repeat.
    #[arg(long = "custom", value_parser = custom_arg)]
    pub custom: Vec<(String, u64)>,
    /// Reserve on this node (id or name); default: the first that can.
    #[arg(long)]
    pub node: Option<String>,
    /// Priority: low, normal, high, critical.
    #[arg(long, default_value = "normal", value_parser = priority_arg)]
    pub priority: Priority,
    /// Free-form task type recorded on the lease.
    #[arg(long, default_value = "")]
    pub task_type: String,
    /// Become active only once this named event is posted (`lanswarm
    /// reservations event NAME`) within the window; unmet otherwise.
    #[arg(long, value_name = "NAME", value_parser = event_arg)]
    pub when_event: Option<String>,
    /// Become active only once this other reservation (on the same owner)
    /// does; the new one is placed on that owner.
    #[arg(
        long = "after",
        value_name = "RESERVATION_ID",
        conflicts_with = "when_event"
    )]
    pub after_reservation: Option<String>,
    /// Share it with this group (id or name; this node must be a member):
    /// its members draw leases from it (`lanswarm request --reservation
    /// ID`) up to its size.
    #[arg(long, value_name = "GROUP")]
    pub share_with: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct MultiArgs {
    /// How many parts (1 to 64).
    #[arg(long)]
    pub parts: u32,
    /// CPU cores per part.
    #[arg(long, default_value_t = 0)]
    pub cpu: u32,
    /// Memory per part, e.g. 4GiB.
    #[arg(long, value_parser = size_arg)]
    pub memory: Option<u64>,
    /// GPUs per part.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Memory needed on each GPU, e.g. 16GiB. Without it, whole GPUs.
    #[arg(long, value_parser = size_arg)]
    pub gpu_memory: Option<u64>,
    /// any, spread (distinct nodes) or pack (fewest nodes).
    #[arg(long, default_value = "any", value_parser = ["any", "spread", "pack"])]
    pub affinity: String,
    /// greedy, balanced or best-fit (bin packing).
    #[arg(long, default_value = "best-fit", value_parser = ["greedy", "balanced", "best-fit"])]
    pub split: String,
    /// Keep what can be had when not every part can.
    #[arg(long)]
    pub allow_partial: bool,
    /// Priority: low, normal, high, critical.
    #[arg(long, default_value = "normal", value_parser = priority_arg)]
    pub priority: Priority,
}

impl MultiArgs {
    fn to_request(&self) -> serde_json::Value {
        serde_json::json!({
            "parts": self.parts,
            "each": {
                "cpu_cores": self.cpu,
                "memory_mb": self.memory.unwrap_or(0),
                "gpu_count": self.gpus,
                "gpu_memory_mb": self.gpu_memory.unwrap_or(0),
            },
            "affinity": self.affinity,
            "strategy": self.split,
            "allow_partial": self.allow_partial,
            "priority": self.priority,
        })
    }
}

fn multi_table(m: &crate::handle::MultiAllocation) -> String {
    let mut s = format!("multi-node allocation {}: {:?}\n", m.id, m.status).to_lowercase();
    for (i, p) in m.parts.iter().enumerate() {
        s.push_str(&format!(
            "  part {i}: {} on {} {}{}\n",
            p.status,
            p.node_name,
            p.allocation_id.as_deref().unwrap_or(""),
            p.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
    }
    s
}

/// When a reservation starts, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this time.
    At(DateTime<Utc>),
    /// This many seconds from now (the node's now).
    In(u64),
}

/// `lanswarm reservations [list | cancel ID | event NAME]`.
#[derive(Debug, Clone, Args)]
pub struct ReservationsArgs {
    #[command(subcommand)]
    pub command: Option<ReservationsCommand>,
}

/// `lanswarm reservations ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReservationsCommand {
    /// List reservations made here and held here (the default).
    List,
    /// Cancel a reservation (or end it, if its window has started).
    Cancel {
        /// The reservation id.
        id: String,
    },
    /// Post a named event: the reservations here waiting on it (any
    /// holder), and this node's own reservations on other owners waiting on
    /// it, become active (at once within their window, else at its start).
    Event {
        /// The event's name: 1 to 64 of A-Z a-z 0-9 . _ : -
        #[arg(value_parser = event_arg)]
        name: String,
    },
}

/// `lanswarm quota ...`. Every change prints the resulting list.
#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCommand {
    /// Every quota with what its subject uses now.
    List,
    /// Set (or replace) a quota. Refused if it is below what the subject
    /// already uses.
    Set(QuotaSetArgs),
    /// Remove a quota.
    Remove {
        /// `default`, `node:<peer id>` (or a bare peer id) or `group:<id or name>`.
        subject: String,
        /// The swarm-wide quota instead of the local one.
        #[arg(long)]
        swarm: bool,
    },
}

/// Options of `lanswarm quota set`. Dimensions not given are unlimited.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("subject").required(true).args(["default", "node", "group"])))]
#[command(group(
    ArgGroup::new("burst")
        .multiple(true)
        .args(["burst_cpu", "burst_memory", "burst_gpus"])
))]
pub struct QuotaSetArgs {
    /// The default quota: every requester without one of its own.
    #[arg(long)]
    pub default: bool,
    /// One requester, by peer id.
    #[arg(long, value_name = "PEER_ID")]
    pub node: Option<String>,
    /// The members of a group together (by id or name).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Place this quota under a group's quota in the quota tree (by id or
    /// name); no cap of it may exceed the parent's. Local quotas only.
    #[arg(long, value_name = "GROUP", conflicts_with = "swarm")]
    pub parent: Option<String>,
    /// Swarm-wide (across every owner, as this node sees it) instead of on
    /// this node.
    #[arg(long)]
    pub swarm: bool,
    /// Most CPU cores.
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Most memory, e.g. 16GiB.
    #[arg(long, value_parser = size_arg)]
    pub memory: Option<u64>,
    /// Most disk, e.g. 100GiB.
    #[arg(long, value_parser = size_arg)]
    pub disk: Option<u64>,
    /// Most GPUs.
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Most GPU memory, over all GPUs, e.g. 24GiB.
    #[arg(long, value_parser = size_arg)]
    pub gpu_memory: Option<u64>,
    /// Most of a custom resource, NAME=AMOUNT; repeat.
    #[arg(long = "custom", value_parser = custom_arg)]
    pub custom: Vec<(String, u64)>,
    /// CPU cores allowed while bursting (needs --burst-for).
    #[arg(long, requires = "burst_for")]
    pub burst_cpu: Option<u32>,
    /// Memory allowed while bursting (needs --burst-for).
    #[arg(long, value_parser = size_arg, requires = "burst_for")]
    pub burst_memory: Option<u64>,
    /// GPUs allowed while bursting (needs --burst-for).
    #[arg(long, requires = "burst_for")]
    pub burst_gpus: Option<u32>,
    /// Longest burst, e.g. 60s (needs a --burst-* cap).
    #[arg(long, value_parser = duration_arg, requires = "burst")]
    pub burst_for: Option<u64>,
}

/// `lanswarm scheduler ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SchedulerCommand {
    /// Show the scheduling policy.
    Show,
    /// Change the scheduling policy (stored; prints the result).
    Set(SchedSetArgs),
}

/// Options of `lanswarm scheduler set`; those not given stay.
#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args([
            "preemption", "max_queue", "max_wait", "rate", "rate_burst", "queue_policy",
            "backfill", "half_life", "shares", "group_shares", "remove_shares",
            "remove_group_shares",
        ])
))]
pub struct SchedSetArgs {
    /// Let higher-priority requests take the resources of lower-priority leases.
    #[arg(long)]
    pub preemption: Option<Switch>,
    /// Most requests waiting at once.
    #[arg(long, value_name = "N")]
    pub max_queue: Option<usize>,
    /// Longest a request may wait, e.g. 1h.
    #[arg(long, value_parser = duration_arg)]
    pub max_wait: Option<u64>,
    /// Allocation requests per second each peer may make.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Requests a peer may make back to back after a quiet spell.
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Order within a priority: fifo, fair-share or weighted.
    #[arg(long, value_name = "POLICY")]
    pub queue_policy: Option<String>,
    /// Grant smaller requests behind a blocked one when that never delays it.
    #[arg(long)]
    pub backfill: Option<Switch>,
    /// Half-life of the use fair share counts, e.g. 1h.
    #[arg(long, value_parser = duration_arg)]
    pub half_life: Option<u64>,
    /// A requester's share, PEER_ID=SHARE (an integer of at least 1); repeat.
    #[arg(long = "share", value_parser = share_arg)]
    pub shares: Vec<(String, i64)>,
    /// A group's share, GROUP_ID=SHARE; repeat.
    #[arg(long = "group-share", value_parser = share_arg)]
    pub group_shares: Vec<(String, i64)>,
    /// Drop a requester's share (back to 1); repeat.
    #[arg(long = "remove-share", value_name = "PEER_ID")]
    pub remove_shares: Vec<String>,
    /// Drop a group's share; repeat.
    #[arg(long = "remove-group-share", value_name = "GROUP_ID")]
    pub remove_group_shares: Vec<String>,
}

/// `ID=SHARE`, the share any integer (the node refuses those below 1 and
/// says why).
fn share_arg(s: &str) -> Result<(String, i64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=SHARE"))?;
    let v = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} in {s:?} is not a whole number"))?;
    Ok((k.trim().to_owned(), v))
}

/// Options of `lanswarm strategy`.
#[derive(Debug, Clone, Args)]
pub struct StrategyArgs {
    /// New strategy; omit to show the current one.
    pub strategy: Option<Strategy>,
    /// A weight for the `weighted` strategy, NODE=WEIGHT (id or name); repeat.
    #[arg(long = "weight", value_parser = custom_arg)]
    pub weights: Vec<(String, u64)>,
}

/// `lanswarm groups ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupsCommand {
    /// Create a group; this node becomes its first member.
    Create {
        /// Group name, 1 to 64 characters.
        name: String,
        /// Most members the group may have (1 to 10000).
        #[arg(long, value_parser = max_members_arg)]
        max_members: u32,
        /// Anyone may join (default: only invited nodes).
        #[arg(long)]
        open: bool,
    },
    /// Join a group, by id or name (a closed group needs an invitation).
    Join {
        /// Group id or name.
        group: String,
    },
    /// Leave a group.
    Leave {
        /// Group id or name.
        group: String,
    },
    /// Invite a node into a group this node is a member of.
    Invite {
        /// Group id or name.
        group: String,
        /// The invited node's peer id.
        peer_id: String,
    },
    /// List every group this node knows.
    List,
    /// List the members of a group.
    Members {
        /// Group id or name.
        group: String,
    },
}

/// `lanswarm access ...`. Every change prints the resulting policy.
#[derive(Debug, Clone, Subcommand)]
pub enum AccessCommand {
    /// Show the access policy.
    Show,
    /// Serve other nodes at all.
    Remote {
        /// `on` or `off`.
        state: Switch,
    },
    /// Serve only nodes that share a group with this one (plus the allow list).
    GroupOnly {
        /// `on` or `off`.
        state: Switch,
    },
    /// Add nodes to the allow list (a non-empty allow list means "only these").
    Allow {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
    /// Remove nodes from the allow list.
    Unallow {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
    /// Add nodes to the deny list (never served).
    Deny {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
    /// Remove nodes from the deny list.
    Undeny {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `lanswarm pools ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum PoolsCommand {
    /// Create (or redefine) a pool: the nodes listed, plus every node whose
    /// labels include all the labels given.
    Create {
        /// Pool name.
        name: String,
        /// A member node, by peer id; repeat.
        #[arg(long = "node", value_name = "PEER_ID")]
        nodes: Vec<String>,
        /// A label the members must carry, KEY=VALUE; repeat.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label_arg)]
        labels: Vec<(String, String)>,
    },
    /// List every pool with its aggregate capacity.
    List,
    /// Show one pool: selector, members and capacity.
    Show {
        /// Pool name.
        name: String,
    },
    /// Delete a pool, swarm-wide.
    Delete {
        /// Pool name.
        name: String,
    },
}

fn max_members_arg(s: &str) -> Result<u32, String> {
    let max = crate::core::groups::MAX_MEMBERS;
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from 1 to {max}")),
    }
}

fn label_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key; write KEY=VALUE"));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size_mb(s).map_err(|e| e.to_string())
}

fn duration_arg(s: &str) -> Result<u64, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err(format!("{s:?} is under one second"));
    }
    Ok(d.as_secs())
}

fn priority_arg(s: &str) -> Result<Priority, String> {
    serde_json::from_value(Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("{s:?} is not one of low, normal, high, critical"))
}

fn cc_arg(s: &str) -> Result<ComputeCapability, String> {
    s.parse()
}

/// An event name, checked as the node checks it.
fn event_arg(s: &str) -> Result<String, String> {
    crate::core::calendar::validate_event_name(s)?;
    Ok(s.to_owned())
}

/// `--start`: RFC 3339, `now`, or a duration from now written `+10m`,
/// `in 10m` or `now+10m`.
fn start_arg(s: &str) -> Result<Start, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(Start::In(0));
    }
    let rel = t
        .strip_prefix('+')
        .or_else(|| t.strip_prefix("in "))
        .or_else(|| t.strip_prefix("now+"))
        .or_else(|| t.strip_prefix("now +"));
    if let Some(rel) = rel {
        let d = parse_duration(rel.trim()).map_err(|e| e.to_string())?;
        // Round up: a window never starts before the time asked for.
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        return Ok(Start::In(secs));
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| Start::At(d.with_timezone(&Utc)))
        .map_err(|_| {
            format!(
                "{s:?} is not a start time: write RFC 3339 (2026-12-01T09:00:00Z), \
                 `now`, or from now: `+10m`, `in 10m`, `now+10m`"
            )
        })
}

fn custom_arg(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=AMOUNT"))?;
    let v = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} in {s:?} is not a whole number"))?;
    Ok((k.trim().to_owned(), v))
}

/// What `--cpu`, `--memory`, ... ask for.
fn requirements(
    cpu: u32,
    memory: Option<u64>,
    disk: Option<u64>,
    gpus: u32,
    gpu_memory: Option<u64>,
    models: &[String],
    custom: &[(String, u64)],
) -> ResourceRequirements {
    ResourceRequirements {
        cpu_cores: cpu,
        memory_mb: memory.unwrap_or(0),
        disk_mb: disk.unwrap_or(0),
        gpu_count: gpus,
        gpu_required: gpus > 0,
        gpu_memory_mb: gpu_memory.unwrap_or(0),
        preferred_models: models.to_vec(),
        custom: custom.iter().cloned().collect(),
    }
}

impl RequestArgs {
    /// The API request these options describe.
    pub fn to_request(&self) -> AllocationRequest {
        AllocationRequest {
            required_resources: requirements(
                self.cpu,
                self.memory,
                self.disk,
                self.gpus,
                self.gpu_memory,
                &self.models,
                &self.custom,
            ),
            task_type: self.task_type.clone(),
            priority: self.priority,
            timeout_secs: self.lease,
            duration_secs: self.duration,
            strategy: self.strategy,
            node_id: self.node.clone(),
            pool: self.pool.clone(),
            group: self.group.clone(),
            wait_secs: self.wait,
            replace: self.replace,
            constraints: Constraints {
                labels: self.labels.iter().cloned().collect(),
                arch: self.arch.clone(),
                gpu_name: self.gpu_name.clone(),
                min_compute_capability: self.min_cc,
                zone: self.zone.clone(),
            },
            reservation: self.reservation.clone(),
            ..Default::default()
        }
    }
}

impl ReserveArgs {
    /// The API request these options describe.
    pub fn to_request(&self) -> ReservationRequest {
        let (start, start_in_secs) = match self.start {
            Start::At(t) => (Some(t), None),
            Start::In(s) => (None, Some(s)),
        };
        ReservationRequest {
            required_resources: requirements(
                self.cpu,
                self.memory,
                self.disk,
                self.gpus,
                self.gpu_memory,
                &[],
                &self.custom,
            ),
            start,
            start_in_secs,
            duration_secs: self.duration,
            node_id: self.node.clone(),
            priority: self.priority,
            task_type: self.task_type.clone(),
            when_event: self.when_event.clone(),
            after_reservation: self.after_reservation.clone(),
            share_with: self.share_with.clone(),
            ..Default::default()
        }
    }
}

impl QuotaSetArgs {
    /// The subject as the API writes it.
    fn subject(&self) -> String {
        match (&self.node, &self.group) {
            (Some(n), _) if n.contains(':') => n.clone(),
            (Some(n), _) => format!("node:{n}"),
            (None, Some(g)) => format!("group:{g}"),
            (None, None) => "default".to_owned(),
        }
    }

    /// The API change these options describe.
    pub fn to_change(&self) -> QuotaChange {
        let burst = self.burst_for.map(|secs| Burst {
            limits: Limits {
                cpu_cores: self.burst_cpu,
                memory_mb: self.burst_memory,
                gpus: self.burst_gpus,
                ..Default::default()
            },
            secs,
        });
        QuotaChange {
            subject: self.subject(),
            swarm: self.swarm,
            parent: self.parent.as_ref().map(|g| {
                if g.contains(':') {
                    g.clone()
                } else {
                    format!("group:{g}")
                }
            }),
            limits: Limits {
                cpu_cores: self.cpu,
                memory_mb: self.memory,
                disk_mb: self.disk,
                gpus: self.gpus,
                gpu_memory_mb: self.gpu_memory,
                custom: self.custom.iter().cloned().collect(),
            },
            burst,
        }
    }
}

impl SchedSetArgs {
    /// The API change these options describe.
    pub fn to_change(&self) -> SchedPolicyChange {
        SchedPolicyChange {
            preemption: self.preemption.map(|s| s == Switch::On),
            max_queue: self.max_queue,
            max_wait_secs: self.max_wait,
            rate_per_sec: self.rate,
            rate_burst: self.rate_burst,
            queue_policy: self.queue_policy.clone(),
            backfill: self.backfill.map(|s| s == Switch::On),
            fair_share_half_life_secs: self.half_life,
            shares: (!self.shares.is_empty()).then(|| self.shares.iter().cloned().collect()),
            group_shares: (!self.group_shares.is_empty())
                .then(|| self.group_shares.iter().cloned().collect()),
            remove_shares: (!self.remove_shares.is_empty()).then(|| self.remove_shares.clone()),
            remove_group_shares: (!self.remove_group_shares.is_empty())
                .then(|| self.remove_group_shares.clone()),
        }
    }
}

/// Run a client subcommand against the API and print the result.
pub async fn run_client(cli: &Cli) -> anyhow::Result<()> {
    let c = Client::new(&cli.api, cli.token.clone());
    let json = cli.json;
    match &cli.command {
        Command::Run(_) => bail!("`run` is not a client command"),
        Command::Keygen(args) => keygen::run(args, json),
        Command::Status => {
            let n: NodeInfo = c.get("/api/v1/node").await?;
            out(json, &n, || table::status(&n))
        }
        Command::Nodes => {
            let ns: Vec<NodeInfo> = c.get("/api/v1/nodes").await?;
            out(json, &ns, || table::nodes(&ns))
        }
        Command::Request(args) => request_client(&c, json, args).await,
        Command::Release { allocation_id } => {
            let r: ReleaseOutcome = c
                .call(
                    Method::DELETE,
                    &format!("/api/v1/allocations/{allocation_id}"),
                    None::<&()>,
                )
                .await?;
            out(json, &r, || {
                if r.owner_confirmed {
                    format!("released {}\n", r.allocation_id)
                } else {
                    format!(
                        "released {} locally; the owner did not confirm, so it will expire at the end of its lease\n",
                        r.allocation_id
                    )
                }
            })
        }
        Command::Allocations => {
            let a: Allocations = c.get("/api/v1/allocations").await?;
            out(json, &a, || table::allocations(&a))
        }
        Command::Strategy(args) => {
            let cfg: StrategyConfig = match args.strategy {
                None => {
                    if !args.weights.is_empty() {
                        bail!("--weight needs a strategy, e.g. `lanswarm strategy weighted --weight gpu-box=3`");
                    }
                    c.get("/api/v1/strategy").await?
                }
                Some(s) => {
                    let weights = args
                        .weights
                        .iter()
                        .map(|(k, v)| {
                            u32::try_from(*v)
                                .map(|v| (k.clone(), v))
                                .with_context(|| format!("weight {v} for {k} is too large"))
                        })
                        .collect::<anyhow::Result<_>>()?;
                    let cfg = StrategyConfig {
                        strategy: s,
                        weights,
                    };
                    c.call(Method::PUT, "/api/v1/strategy", Some(&cfg)).await?
                }
            };
            out(json, &cfg, || {
                let mut s = format!("strategy: {}\n", cfg.strategy);
                for (k, v) in &cfg.weights {
                    s.push_str(&format!("  weight {k} = {v}\n"));
                }
                s
            })
        }
        Command::Groups(cmd) => groups_client(&c, json, cmd).await,
        Command::Access(cmd) => access_client(&c, json, cmd).await,
        Command::Roles(cmd) => tokens::roles_client(&c, json, cmd).await,
        Command::Token(cmd) => tokens::token_client(&c, json, cmd).await,
        Command::Pools(cmd) => pools_client(&c, json, cmd).await,
        Command::Reserve(args) => {
            let r: ReservationInfo = c
                .call(
                    Method::POST,
                    "/api/v1/reservations",
                    Some(&args.to_request()),
                )
                .await
                .map_err(|e| explain_refusals(json, e))?;
            out(json, &r, || table::reservation(&r))
        }
        Command::RequestMulti(args) => {
            let m: crate::handle::MultiAllocation = c
                .call(Method::POST, "/api/v1/multi", Some(&args.to_request()))
                .await
                .map_err(|e| explain_refusals(json, e))?;
            out(json, &m, || multi_table(&m))
        }
        Command::Multi => {
            let ms: Vec<crate::handle::MultiAllocation> = c.get("/api/v1/multi").await?;
            out(json, &ms, || ms.iter().map(multi_table).collect::<String>())
        }
        Command::Reservations(args) => match &args.command {
            None | Some(ReservationsCommand::List) => {
                let rs: Reservations = c.get("/api/v1/reservations").await?;
                out(json, &rs, || table::reservations(&rs))
            }
            Some(ReservationsCommand::Cancel { id }) => {
                let r: ReleaseOutcome = c
                    .call(
                        Method::DELETE,
                        &format!("/api/v1/reservations/{}", seg(id)),
                        None::<&()>,
                    )
                    .await?;
                out(json, &r, || {
                    format!("cancelled reservation {}\n", r.allocation_id)
                })
            }
            Some(ReservationsCommand::Event { name }) => {
                let body = EventPost { name: name.clone() };
                let p: EventPosted = c
                    .call(Method::POST, "/api/v1/reservations/events", Some(&body))
                    .await?;
                out(json, &p, || table::event_posted(&p))
            }
        },
        Command::Quota(cmd) => {
            let qs: Vec<QuotaEntry> = match cmd {
                QuotaCommand::List => c.get("/api/v1/quotas").await?,
                QuotaCommand::Set(args) => {
                    c.call(Method::PUT, "/api/v1/quotas", Some(&args.to_change()))
                        .await?
                }
                QuotaCommand::Remove { subject, swarm } => {
                    c.call(
                        Method::DELETE,
                        &format!("/api/v1/quotas/{}?swarm={swarm}", seg(subject)),
                        None::<&()>,
                    )
                    .await?
                }
            };
            out(json, &qs, || table::quotas(&qs))
        }
        Command::Scheduler(cmd) => {
            let p: SchedPolicy = match cmd {
                SchedulerCommand::Show => c.get("/api/v1/scheduler").await?,
                SchedulerCommand::Set(args) => {
                    c.call(Method::PATCH, "/api/v1/scheduler", Some(&args.to_change()))
                        .await?
                }
            };
            out(json, &p, || table::sched_policy(&p))
        }
        Command::Queue => {
            let q: Vec<QueueEntry> = c.get("/api/v1/queue").await?;
            out(json, &q, || table::queue(&q))
        }
        Command::Contention => {
            let r: ContentionReport = c.get("/api/v1/contention").await?;
            out(json, &r, || table::contention(&r))
        }
        Command::Breakers => breakers::breakers(&c, json).await,
        Command::Throttle => breakers::throttle(&c, json).await,
        Command::History(args) => history::run(&c, json, args).await,
        Command::Usage(args) => usage::run(&c, json, args).await,
        Command::Bottlenecks => usage::bottlenecks(&c, json).await,
        Command::Task(cmd) => tasks::task(&c, json, cmd).await,
        Command::Job(cmd) => tasks::job(&c, json, cmd).await,
        Command::Infer(args) => tasks::infer(&c, json, args).await,
        Command::Offers => tasks::offers(&c, json).await,
        Command::Models => tasks::models(&c, json).await,
        Command::Health => {
            let checks: Vec<crate::handle::HealthCheck> = c
                .call(Method::POST, "/api/v1/health-checks", None::<&()>)
                .await?;
            out(json, &checks, || table::health(&checks))
        }
    }
}

/// How often `request --wait` asks whether a queued request was granted.
const QUEUE_POLL: Duration = Duration::from_millis(250);
/// How long past its wait `request --wait` keeps asking, for the owner to
/// report the time-out itself.
const QUEUE_GRACE: Duration = Duration::from_secs(3);

/// `lanswarm request`: place the request and, if it is queued, follow it
/// until it is granted, or ends, or its wait runs out.
async fn request_client(c: &Client, json: bool, args: &RequestArgs) -> anyhow::Result<()> {
    let req = args.to_request();
    let a: Allocation = c
        .call(Method::POST, "/api/v1/allocations", Some(&req))
        .await
        .map_err(|e| explain_refusals(json, e))?;
    if a.status != AllocationStatus::Queued {
        return settled(json, &a);
    }
    let id = a.allocation_id.clone();
    let mut position = a.queue_position;
    eprintln!(
        "queued at position {} on {}",
        position.map_or("?".to_owned(), |p| p.to_string()),
        a.node_name
    );
    let wait = Duration::from_secs(args.wait.unwrap_or(0));
    let deadline = Instant::now() + wait + QUEUE_GRACE;
    loop {
        tokio::time::sleep(QUEUE_POLL).await;
        match c
            .get::<Allocation>(&format!("/api/v1/allocations/{}", seg(&id)))
            .await
        {
            Ok(now) if now.status != AllocationStatus::Queued => return settled(json, &now),
            Ok(now) => {
                if now.queue_position != position && now.queue_position.is_some() {
                    position = now.queue_position;
                    eprintln!(
                        "now at position {} on {}",
                        position.unwrap_or(0),
                        now.node_name
                    );
                }
            }
            Err(ClientError::Api { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {
                bail!(
                    "queued request {id} on {} is gone: its wait ran out or it was cancelled",
                    a.node_name
                )
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            // Give up the place in the queue, so a late grant is not left
            // held by nobody. Best effort: the owner times it out anyway.
            let _ = c
                .call::<ReleaseOutcome>(
                    Method::DELETE,
                    &format!("/api/v1/allocations/{}", seg(&id)),
                    None::<&()>,
                )
                .await;
            bail!(
                "still queued on {} after {}s; gave up the place in the queue",
                a.node_name,
                wait.as_secs()
            )
        }
    }
}

/// An API error to a request or a reservation, with who refused and why:
/// the error body on stdout with `--json`, else a list on stderr.
fn explain_refusals(json: bool, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Api { body, .. } if json => {
            match serde_json::to_string_pretty(&body) {
                Ok(text) => println!("{text}"),
                Err(e) => return e.into(),
            }
            anyhow::anyhow!("request refused")
        }
        ClientError::Api { ref body, .. } => {
            eprint!("{}", table::refusals(body));
            e.into()
        }
        e => e.into(),
    }
}

/// Print an allocation that is no longer queued; an error unless active.
fn settled(json: bool, a: &Allocation) -> anyhow::Result<()> {
    out(json, a, || table::allocation(a))?;
    let why = a
        .ended_reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match a.status {
        AllocationStatus::Active | AllocationStatus::Queued => Ok(()),
        AllocationStatus::TimedOut => bail!(
            "request {} timed out in {}'s queue{why}",
            a.allocation_id,
            a.node_name
        ),
        AllocationStatus::Preempted => bail!(
            "allocation {} on {} was preempted{why}",
            a.allocation_id,
            a.node_name
        ),
        AllocationStatus::Ended => bail!(
            "allocation {} on {} was ended{why}",
            a.allocation_id,
            a.node_name
        ),
        AllocationStatus::Lost => bail!(
            "allocation {} on {} was lost{why}",
            a.allocation_id,
            a.node_name
        ),
    }
}

/// Percent-encode one URL path segment (a group or pool name may hold
/// spaces, slashes or other reserved characters).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn groups_client(c: &Client, json: bool, cmd: &GroupsCommand) -> anyhow::Result<()> {
    let path = |g: &str, action: &str| format!("/api/v1/groups/{}/{action}", seg(g));
    let g: GroupInfo = match cmd {
        GroupsCommand::List => {
            let gs: Vec<GroupInfo> = c.get("/api/v1/groups").await?;
            return out(json, &gs, || table::groups(&gs));
        }
        GroupsCommand::Members { group } => {
            let ms: Vec<GroupMember> = c.get(&path(group, "members")).await?;
            return out(json, &ms, || table::members(&ms));
        }
        GroupsCommand::Create {
            name,
            max_members,
            open,
        } => {
            let new = NewGroup {
                name: name.clone(),
                max_members: *max_members,
                open: *open,
            };
            c.call(Method::POST, "/api/v1/groups", Some(&new)).await?
        }
        GroupsCommand::Join { group } => {
            c.call(Method::POST, &path(group, "join"), None::<&()>)
                .await?
        }
        GroupsCommand::Leave { group } => {
            c.call(Method::POST, &path(group, "leave"), None::<&()>)
                .await?
        }
        GroupsCommand::Invite { group, peer_id } => {
            let body = serde_json::json!({ "node": peer_id });
            c.call(Method::POST, &path(group, "invite"), Some(&body))
                .await?
        }
    };
    out(json, &g, || table::group(&g))
}

async fn access_client(c: &Client, json: bool, cmd: &AccessCommand) -> anyhow::Result<()> {
    let change = match cmd {
        AccessCommand::Show => None,
        AccessCommand::Remote { state } => Some(AccessChange {
            allow_remote: Some(*state == Switch::On),
            ..Default::default()
        }),
        AccessCommand::GroupOnly { state } => Some(AccessChange {
            group_peers_only: Some(*state == Switch::On),
            ..Default::default()
        }),
        AccessCommand::Allow { peers } => Some(AccessChange {
            allow_add: peers.clone(),
            ..Default::default()
        }),
        AccessCommand::Unallow { peers } => Some(AccessChange {
            allow_remove: peers.clone(),
            ..Default::default()
        }),
        AccessCommand::Deny { peers } => Some(AccessChange {
            deny_add: peers.clone(),
            ..Default::default()
        }),
        AccessCommand::Undeny { peers } => Some(AccessChange {
            deny_remove: peers.clone(),
            ..Default::default()
        }),
    };
    let p: AccessPolicy = match change {
        None => c.get("/api/v1/access").await?,
        Some(ch) => c.call(Method::PATCH, "/api/v1/access", Some(&ch)).await?,
    };
    out(json, &p, || table::access(&p))
}

async fn pools_client(c: &Client, json: bool, cmd: &PoolsCommand) -> anyhow::Result<()> {
    match cmd {
        PoolsCommand::List => {
            let ps: Vec<PoolInfo> = c.get("/api/v1/pools").await?;
            out(json, &ps, || table::pools(&ps))
        }
        PoolsCommand::Show { name } => {
            let p: PoolInfo = c.get(&format!("/api/v1/pools/{}", seg(name))).await?;
            out(json, &p, || table::pool(&p))
        }
        PoolsCommand::Create {
            name,
            nodes,
            labels,
        } => {
            let new = NewPool {
                name: name.clone(),
                selector: PoolSelector {
                    nodes: nodes.iter().map(|n| n.as_str().into()).collect(),
                    labels: labels.iter().cloned().collect(),
                },
            };
            let p: PoolInfo = c.call(Method::POST, "/api/v1/pools", Some(&new)).await?;
            out(json, &p, || table::pool(&p))
        }
        PoolsCommand::Delete { name } => {
            c.call::<()>(
                Method::DELETE,
                &format!("/api/v1/pools/{}", seg(name)),
                None::<&()>,
            )
            .await?;
            out(json, &serde_json::json!({ "deleted": name }), || {
                format!("deleted pool {name}\n")
            })
        }
    }
}

fn out<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

/// `8GiB`-style size for tables.
fn size(mb: u64) -> String {
    format_mb(mb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_absolute_or_from_now() {
        for (text, want) in [
            ("now", Start::In(0)),
            ("+10m", Start::In(600)),
            ("in 10m", Start::In(600)),
            ("now+1h30m", Start::In(5400)),
            (" +1.5s ", Start::In(2)),
        ] {
            assert_eq!(start_arg(text), Ok(want), "{text}");
        }
        let at = start_arg("2026-12-01T10:00:00+01:00").unwrap();
        assert_eq!(
            at,
            Start::At("2026-12-01T09:00:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        for bad in ["yesterday", "+soon", "in", "2026-13-01T00:00:00Z", "-10m"] {
            let e = start_arg(bad).unwrap_err();
            assert!(e.contains(bad.trim_start_matches('+')), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cli_builds_the_api_bodies() {
        let cli = Cli::parse_from([
            "lanswarm",
            "quota",
            "set",
            "--node",
            "12D3KooWabc",
            "--cpu",
            "4",
            "--memory",
            "1GiB",
            "--burst-cpu",
            "6",
            "--burst-for",
            "1m",
        ]);
        let Command::Quota(QuotaCommand::Set(args)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        let c = args.to_change();
        assert_eq!(c.subject, "node:12D3KooWabc");
        assert!(!c.swarm);
        assert_eq!(
            (c.limits.cpu_cores, c.limits.memory_mb),
            (Some(4), Some(1024))
        );
        let b = c.burst.unwrap();
        assert_eq!((b.limits.cpu_cores, b.secs), (Some(6), 60));

        let cli = Cli::parse_from([
            "lanswarm",
            "request",
            "--cpu",
            "1",
            "--wait",
            "30s",
            "--priority",
            "HIGH",
            "--label",
            "rack=r2",
            "--min-cc",
            "8.6",
            "--zone",
            "lab",
        ]);
        let Command::Request(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        let r = args.to_request();
        assert_eq!(r.wait_secs, Some(30));
        assert_eq!(r.priority, Priority::High);
        assert_eq!(r.constraints.labels["rack"], "r2");
        assert_eq!(
            r.constraints.min_compute_capability.unwrap().to_string(),
            "8.6"
        );
        assert_eq!(r.constraints.zone.as_deref(), Some("lab"));

        let cli = Cli::parse_from(["lanswarm", "scheduler", "set", "--preemption", "on"]);
        let Command::Scheduler(SchedulerCommand::Set(args)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            args.to_change(),
            SchedPolicyChange {
                preemption: Some(true),
                ..Default::default()
            }
        );
        for bad in [
            &["lanswarm", "request", "--priority", "urgent"][..],
            &["lanswarm", "quota", "set", "--default", "--node", "x"],
            &["lanswarm", "reserve", "--start", "now"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn conditional_and_pooled_reservations_and_draws_parse() {
        let base = ["lanswarm", "reserve", "--start", "now", "--duration", "2m"];
        let reserve = |extra: &[&str]| {
            let cli = Cli::try_parse_from(base.iter().chain(extra))?;
            let Command::Reserve(args) = cli.command else {
                panic!("{:?}", cli.command)
            };
            Ok::<_, clap::Error>(args.to_request())
        };
        let r = reserve(&["--cpu", "1", "--when-event", "data-ready", "--node", "h0"]).unwrap();
        assert_eq!(r.when_event.as_deref(), Some("data-ready"));
        assert_eq!((r.after_reservation, r.share_with), (None, None));
        assert_eq!(r.start_in_secs, Some(0));
        let r = reserve(&["--cpu", "1", "--after", "r-1", "--share-with", "lab"]).unwrap();
        assert_eq!(r.after_reservation.as_deref(), Some("r-1"));
        assert_eq!(r.share_with.as_deref(), Some("lab"));
        assert_eq!(r.when_event, None);

        // Both conditions at once, or a name the node would refuse: usage
        // errors that name what is wrong.
        let e = reserve(&["--cpu", "1", "--when-event", "x", "--after", "r-1"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
        assert!(e.to_string().contains("--after"), "{e}");
        for bad in ["data ready", "", "é", &"x".repeat(65)] {
            let e = reserve(&["--cpu", "1", "--when-event", bad]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}: {e}"
            );
        }
        assert!(Cli::try_parse_from(["lanswarm", "reservations", "event", "a/b"]).is_err());

        let cli = Cli::parse_from(["lanswarm", "reservations", "event", "job:42.done"]);
        let Command::Reservations(ReservationsArgs {
            command: Some(ReservationsCommand::Event { name }),
        }) = cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(name, "job:42.done");

        let cli = Cli::parse_from([
            "lanswarm",
            "request",
            "--cpu",
            "1",
            "--reservation",
            "r-7",
            "--node",
            "h0",
        ]);
        let Command::Request(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        let a = args.to_request();
        assert_eq!(a.reservation.as_deref(), Some("r-7"));
        assert_eq!(a.node_id.as_deref(), Some("h0"));
        let r = Cli::try_parse_from(["lanswarm", "request", "--reservation", "r", "--pool", "p"]);
        assert!(r.is_err(), "a draw comes from the reservation, not a pool");
        let plain = Cli::parse_from(["lanswarm", "request", "--cpu", "1"]);
        let Command::Request(args) = plain.command else {
            panic!("{:?}", plain.command)
        };
        assert_eq!(args.to_request().reservation, None);
    }

    #[test]
    fn reservation_tables_show_the_condition_the_status_and_the_pool() {
        let info = |extra: Value| -> ReservationInfo {
            let mut v = serde_json::json!({
                "reservation_id": "r-1",
                "node_id": "12D3KooWowner",
                "node_name": "h0",
                "holder": "12D3KooWholder",
                "start": "2026-12-01T09:00:00Z",
                "end": "2026-12-01T10:00:00Z",
                "status": "waiting",
                "priority": "normal",
                "required_resources": { "cpu_cores": 2 },
                "gpus": [],
            });
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            serde_json::from_value(v).unwrap()
        };
        let waiting = info(serde_json::json!({ "when_event": "data-ready" }));
        let unmet = info(serde_json::json!({
            "reservation_id": "r-2",
            "status": "unmet",
            "after_reservation": "r-1",
        }));
        let pooled = info(serde_json::json!({
            "reservation_id": "r-3",
            "status": "active",
            "when_event": "go",
            "condition_met": "2026-12-01T09:12:34Z",
            "shared_with": "grp-lab",
            "left": { "cpu_cores": 1, "memory_mb": 0, "disk_mb": 0, "gpus": [] },
        }));
        let text = table::reservations(&Reservations {
            held: vec![waiting.clone(), unmet.clone()],
            granted: vec![pooled.clone()],
        });
        let line = |id: &str| {
            text.lines()
                .find(|l| l.starts_with(id))
                .unwrap_or_else(|| panic!("{id} in {text}"))
        };
        assert!(
            text.contains("CONDITION") && text.contains("SHARED WITH"),
            "{text}"
        );
        let l = line("r-1");
        assert!(
            l.contains("waiting") && l.contains("event data-ready"),
            "{l}"
        );
        let l = line("r-2");
        assert!(l.contains("unmet") && l.contains("after r-1"), "{l}");
        let l = line("r-3");
        assert!(
            l.contains("active") && l.contains("event go (met 09:12:34)"),
            "{l}"
        );
        assert!(l.contains("grp-lab (1 cores left)"), "{l}");
        // No condition, no pool: dashes, and the held side has no `left`.
        let plain = info(serde_json::json!({ "status": "confirmed" }));
        let one = table::reservation(&plain);
        assert!(one.contains("confirmed  normal    -          -"), "{one}");

        let posted: EventPosted = serde_json::from_value(serde_json::json!({
            "name": "data-ready",
            "met": [{ "reservation_id": "r-1", "node_id": "12D3KooWowner", "node_name": "h0" }],
            "errors": ["h9 (12D3KooWgone): unreachable"],
        }))
        .unwrap();
        let text = table::event_posted(&posted);
        assert!(
            text.contains("event data-ready met 1 reservation(s)"),
            "{text}"
        );
        assert!(text.contains("r-1") && text.contains("h0"), "{text}");
        assert!(
            text.contains("not told: h9 (12D3KooWgone): unreachable"),
            "{text}"
        );
        let none = EventPosted {
            name: "x".into(),
            met: vec![],
            errors: vec![],
        };
        assert_eq!(
            table::event_posted(&none),
            "event x: no reservation was waiting on it\n"
        );
    }
}
