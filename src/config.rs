//! The node's TOML configuration: what it lends, how it talks to peers,
//! and how it chooses where work goes.
//!
//! Every section is optional, and an empty file is a valid config: each
//! key has a default, listed in `swarm-config/default.toml`. Unknown keys
//! are errors, so a typo (`memroy = ...`) is reported instead of silently
//! ignored. Sizes are written `"12GiB"` and durations `"30s"` (see
//! [`crate::units`]).
//!
//! Loading happens once, at start-up: [`Config::load`] reads the file,
//! [`Config::from_toml_str`] parses it, and [`Config::validate`] checks what
//! the types alone cannot (ranges, lease bounds, that a non-loopback API has
//! a token). Every error names the file, the dotted key and the problem,
//! with a line and column when the key is in the file:
//!
//! ```text
//! swarm-config/bad.toml:7:10: lend.memory: expected "all", a percentage like "75%" or a size like "12GiB", got "lots"
//! ```
//!
//! Precedence is CLI flag > environment (`LANSWARM_*`) > file > default; the
//! binary applies flags and environment on top of the loaded `Config` and
//! validates again.
//!
//! What the machine has and what that means the node lends is worked out by
//! [`crate::hw::lendable`] from this config and the probed hardware.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::de::{DeTable, DeValue};

use crate::core::tasks::TasksConfig;
use crate::hw::models::ModelApi;
use crate::model::{Location, NodeId};
use crate::units::{self, format_mb, parse_size_mb};

/// Names accepted by `strategy.default`. The placement strategies
/// themselves live in [`crate::core`].
pub const STRATEGY_NAMES: &[&str] = &[
    "round-robin",
    "least-loaded",
    "weighted",
    "geographic",
    "random",
    "best-fit",
];

/// Longest node name accepted, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Largest weight accepted in `lend.weight` and `strategy.weights`.
pub const MAX_WEIGHT: u32 = 1000;

/// Port of the HTTP API by default.
pub const DEFAULT_API_PORT: u16 = 7700;

/// The whole configuration of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Human-readable node name shown to peers and in the dashboard, at
    /// most 64 characters. Default: the machine's host name (see
    /// [`Config::node_name`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the node keeps its key, leases and state. `~` is expanded.
    /// Default: `$XDG_DATA_HOME/lanswarm`, else `~/.local/share/lanswarm`,
    /// else `./lanswarm-data` (see [`Config::data_dir`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `[api]`: the local HTTP API.
    pub api: ApiConfig,
    /// `[network]`: libp2p listen addresses, discovery and announcements.
    pub network: NetworkConfig,
    /// `[lend]`: how much of this machine peers may use.
    pub lend: LendConfig,
    /// `[resources]`: overrides of what the machine has, synthetic GPUs and
    /// custom resources.
    pub resources: ResourcesConfig,
    /// `[location]`: where this node is, for the `geographic` strategy.
    pub location: LocationConfig,
    /// `[labels]`: free-form `key = "value"` labels announced to peers and
    /// matched by pool selectors, e.g. `zone = "lab"`, `tier = "gpu"`.
    pub labels: BTreeMap<String, String>,
    /// `[access]`: who may allocate here, beyond `lend.allow_remote`.
    pub access: AccessConfig,
    /// `[roles]`: what each admitted peer may do here (permissions per
    /// action), by peer id, by group, or the default role.
    pub roles: RolesConfig,
    /// `[scheduler]`: preemption, the wait queue, the rate limit and
    /// advance reservations on this node.
    pub scheduler: SchedulerConfig,
    /// `[elastic]`: lend less while the machine's owner is using it.
    pub elastic: ElasticConfig,
    /// `[breaker]`: circuit breakers on this node's own requests.
    pub breaker: BreakerConfig,
    /// `[throttle]`: adaptive throttling of the per-peer rate limit.
    pub throttle: ThrottleConfig,
    /// `[models]`: AI models this node serves, and its local model server.
    pub models: ModelsConfig,
    /// `[tasks]`: the task templates peers may run here, and how tasks are
    /// held to their leases. Default: no templates.
    pub tasks: TasksConfig,
    /// `[leases]`: lease lengths and limits this node grants.
    pub leases: LeasesConfig,
    /// `[strategy]`: how this node chooses peers for its own requests.
    pub strategy: StrategyConfig,
    /// `[history]`: how long the allocation history (audit log) is kept:
    /// `retention` (default `"30d"`, 1m to 3650d) and `max_events`
    /// (default 100000, 1 to 10000000).
    pub history: crate::core::history::HistoryConfig,
    /// `[accounting]`: usage accounting: `retention` of the hourly usage
    /// buckets (default `"90d"`, 1h to 3650d), an optional `currency`
    /// (1 to 16 letters) and `[accounting.price]`: prices per unit and hour
    /// (`cpu_core_hour`, `memory_gib_hour`, `disk_gib_hour`, `gpu_hour`,
    /// `gpu_memory_gib_hour`, `custom = { name = price }`), each 0 to 1e9.
    pub accounting: crate::core::usage::AccountingConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// Where this config came from (a file path, or a label such as
    /// `"<defaults>"`), used to name the source in errors. Not a key of the
    /// file; set by [`Config::load`] and [`Config::from_toml_str`].
    #[serde(skip)]
    pub origin: Option<String>,
}

/// `[api]`: the HTTP API that the CLI and dashboard talk to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the API listens on. Default `127.0.0.1:7700`, reachable only
    /// from this machine. Any non-loopback address requires a token:
    /// `token`, or one made with `lanswarm token create`.
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
    /// Bearer token that API clients must send
    /// (`Authorization: Bearer <token>`), an admin token. Optional on
    /// loopback; elsewhere this or a token made with `lanswarm token
    /// create` is required. Never printed by `Debug`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_API_PORT)),
            token: None,
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[network]`: the peer-to-peer side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// libp2p addresses to listen on. Port 0 picks a free port. Default:
    /// TCP and QUIC on every IPv4 interface.
    #[serde(with = "multiaddr_list")]
    pub listen: Vec<Multiaddr>,
    /// Find peers on the local network with mDNS (multicast). Turn it off
    /// where multicast does not work (VPNs, some Wi-Fi) and use `bootstrap`.
    pub mdns: bool,
    /// Peers to dial at start-up, for networks without multicast. With or
    /// without a trailing `/p2p/<peer id>`.
    #[serde(with = "multiaddr_list")]
    pub bootstrap: Vec<Multiaddr>,
    /// How often the node re-announces its capacity even when nothing
    /// changed (the heartbeat). Default 10s.
    #[serde(with = "units::serde_duration")]
    pub announce_interval: Duration,
    /// The least time between two announcements caused by changes. A lone
    /// change is announced at once (after a 2 ms window that gathers a
    /// burst); under churn a node announces at most this often, which bounds
    /// the work it causes every peer. Default 100ms.
    #[serde(with = "units::serde_duration")]
    pub announce_debounce: Duration,
    /// How long mDNS records live. Short, so a peer that restarts on a new
    /// port is found again within seconds. Default 6s.
    #[serde(with = "units::serde_duration")]
    pub mdns_ttl: Duration,
    /// How long a node that is offline or left (or silent) stays in the
    /// view before it is forgotten, so no ghosts linger. Default 5m; at
    /// least 10s.
    #[serde(with = "units::serde_duration")]
    pub forget_after: Duration,
    /// Ping round-trip time at or above which a connected peer is
    /// `degraded` (still asked, ranked as it is). Default 500ms; 1ms to 1m.
    #[serde(with = "units::serde_duration")]
    pub degraded_rtt: Duration,
    /// Host CPU use, percent, at or above which a peer is `degraded`
    /// (overloaded). Default: none, CPU use alone never degrades a peer (a
    /// busy machine still answers; the RTT says when it stops keeping up).
    /// 1 to 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded_cpu: Option<u8>,
    /// Private swarm: a pre-shared key file (written by `lanswarm keygen`).
    /// With it, every connection is wrapped in libp2p's pnet layer, and a
    /// node without the same key cannot connect at all. pnet does not
    /// cover QUIC, so the node runs TCP only: `listen` then defaults to
    /// TCP alone, and QUIC addresses in `listen` or `bootstrap` are errors.
    /// A relative path is resolved against the config file's directory (or
    /// the data directory when there is no file); `~` is expanded. See
    /// `docs/security.md`. Default: none (an open swarm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_key: Option<PathBuf>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            mdns: true,
            bootstrap: Vec::new(),
            announce_interval: Duration::from_secs(10),
            announce_debounce: Duration::from_millis(100),
            mdns_ttl: Duration::from_secs(6),
            forget_after: Duration::from_secs(300),
            degraded_rtt: Duration::from_millis(500),
            degraded_cpu: None,
            swarm_key: None,
        }
    }
}

impl NetworkConfig {
    /// The default `listen` with a swarm key: TCP only, on every IPv4
    /// interface, since pnet does not cover QUIC.
    pub fn private_default_listen() -> Vec<Multiaddr> {
        vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")]
    }
}

/// `[lend]`: how much of the machine (after `[resources]` overrides) is
/// offered to peers. Requests are admitted against these amounts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LendConfig {
    /// CPU cores to lend: `"auto"` (all but one, at least one), `"all"`, a
    /// percentage like `"50%"`, or a number. Default `"auto"`.
    pub cpu_cores: CpuAmount,
    /// Memory to lend: `"all"`, a percentage of the machine's memory like
    /// `"75%"`, or a size like `"12GiB"`. Default `"75%"`.
    pub memory: Amount,
    /// Disk to lend, from the disk holding `data_dir`: `"all"` or a
    /// percentage of its *free* space at start-up, or a size. Default
    /// `"25%"`.
    pub disk: Amount,
    /// GPUs to lend: `"all"`, `"none"`, or a list of GPU indices like
    /// `[0, 1]`. Default `"all"`.
    pub gpus: GpuSelection,
    /// Memory to lend on each lent GPU: `"all"`, a percentage of its total
    /// like `"90%"`, or a size. Default `"all"`.
    pub gpu_memory: Amount,
    /// Whether peers may allocate here at all. With `false` the node still
    /// joins the swarm and borrows, but lends nothing to others.
    pub allow_remote: bool,
    /// This node's self-declared weight for the `weighted` strategy,
    /// 1..=1000; a bigger machine might say 10, a laptop 1. Peers may
    /// override it in their own `[strategy.weights]`. Default 1.
    pub weight: u32,
}

impl Default for LendConfig {
    fn default() -> Self {
        LendConfig {
            cpu_cores: CpuAmount::Auto,
            memory: Amount::Percent(75.0),
            disk: Amount::Percent(25.0),
            gpus: GpuSelection::All,
            gpu_memory: Amount::All,
            allow_remote: true,
            weight: 1,
        }
    }
}

/// `[resources]`: what the machine has, when it should not be probed
/// (tests, simulations) or when something extra is offered. Every key is
/// optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Number of CPU cores, instead of the probed count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<u32>,
    /// Memory size, instead of the probed total.
    #[serde(
        with = "units::serde_size_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
    /// Free disk space, instead of the probed free space of `data_dir`'s
    /// disk.
    #[serde(
        with = "units::serde_size_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk: Option<u64>,
    /// Whether to look for real GPUs with NVML. Set to `false` to use only
    /// the `[[resources.gpus]]` declared here. Default `true`.
    pub detect_gpus: bool,
    /// Synthetic GPUs, appended after the detected ones (`[[resources.gpus]]`).
    pub gpus: Vec<SyntheticGpu>,
    /// Named countable resources, lent as declared, e.g.
    /// `db-connections = 20`. Names use `a-z`, `0-9`, `_` and `-`.
    pub custom: BTreeMap<String, u64>,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            cpu_cores: None,
            memory: None,
            disk: None,
            detect_gpus: true,
            gpus: Vec::new(),
            custom: BTreeMap::new(),
        }
    }
}

/// A GPU declared in the config rather than detected (`[[resources.gpus]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticGpu {
    /// Display name. Default `"Synthetic GPU"`.
    #[serde(default = "default_synthetic_gpu_name")]
    pub name: String,
    /// Device memory, e.g. `"40GiB"`. Required.
    #[serde(with = "units::serde_size")]
    pub memory: u64,
    /// CUDA compute capability to declare, e.g. `"8.0"`, matched by
    /// requests that need at least some capability.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "compute_capability"
    )]
    pub compute_capability: Option<crate::model::ComputeCapability>,
}

/// `"8.0"` ⇄ [`crate::model::ComputeCapability`].
mod compute_capability {
    use super::*;
    use crate::model::ComputeCapability;

    pub fn serialize<S: Serializer>(
        c: &Option<ComputeCapability>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_str(&c.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ComputeCapability>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(de::Error::custom)
    }
}

fn default_synthetic_gpu_name() -> String {
    "Synthetic GPU".to_owned()
}

/// `[location]`: where the node is, for the `geographic` strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationConfig {
    /// Free-form zone label such as `"office"` or `"rack-2"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Latitude in degrees, -90..=90. Set together with `longitude`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in degrees, -180..=180. Set together with `latitude`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

impl LocationConfig {
    /// The location as announced to peers.
    pub fn to_location(&self) -> Location {
        Location {
            zone: self.zone.clone(),
            latitude: self.latitude,
            longitude: self.longitude,
        }
    }
}

/// `[access]`: this node's access policy at start-up. Changes made at
/// runtime (`lanswarm access ...`) are persisted and kept across restarts
/// until this section itself is edited, which then wins again. The remote
/// toggle is `lend.allow_remote`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Serve only peers that share a swarm group with this node (plus
    /// `allow`).
    pub group_peers_only: bool,
    /// Peer ids always served (unless denied). When non-empty, only these
    /// (and group peers with `group_peers_only`) are served.
    pub allow: Vec<String>,
    /// Peer ids never served.
    pub deny: Vec<String>,
}

/// `[roles]`: which actions admitted peers may take on this node (see
/// [`crate::core::roles`]). Built-in roles: `none`, `viewer`, `user`,
/// `operator`, `admin`. Changes made at runtime (`lanswarm roles ...`) are
/// kept across restarts until this section is edited, which then wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolesConfig {
    /// Role of an admitted peer with no assignment of its own or by group.
    /// Default `operator` (allocate, reserve, run tasks, infer, preempt):
    /// what any admitted peer could do before roles existed.
    pub default: String,
    /// Custom roles: `name = ["view", "allocate", ...]`. Permissions:
    /// view, allocate, reserve, run_task, infer, preempt, administer.
    pub custom: BTreeMap<String, Vec<crate::core::roles::Permission>>,
    /// Roles by peer id: `"12D3KooW..." = "viewer"`. Decides alone for that
    /// peer.
    pub peers: BTreeMap<String, String>,
    /// Roles by group id or group name: `lab = "user"`. A peer in several
    /// gets the union; a peer assignment overrides them.
    pub groups: BTreeMap<String, String>,
}

impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            default: crate::core::roles::DEFAULT_ROLE.to_owned(),
            custom: BTreeMap::new(),
            peers: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }
}

/// Most entries in each access list.
pub const MAX_ACCESS_LIST: usize = 1024;
/// Most labels a node may carry.
pub const MAX_LABELS: usize = 32;

/// `[scheduler]`: how this node schedules what it lends. Changes made at
/// runtime (`lanswarm scheduler set ...`) are kept across restarts until
/// this section is edited, which then wins again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Let higher-priority requests take the resources of strictly
    /// lower-priority leases. Default false.
    pub preemption: bool,
    /// Most requests waiting at once. Default 1024.
    pub max_queue: usize,
    /// Longest a request may wait in the queue. Default 1h.
    #[serde(with = "units::serde_duration")]
    pub max_wait: Duration,
    /// Allocation requests each peer may make per second. Default 50.
    pub rate_per_sec: f64,
    /// Requests a peer may make back to back after a quiet spell. Default 100.
    pub rate_burst: u32,
    /// Most advance reservations held at once. Default 1024.
    pub max_reservations: usize,
    /// Farthest ahead a reservation may start. Default 30d.
    #[serde(with = "units::serde_duration")]
    pub reservation_horizon: Duration,
    /// Order of waiting requests within a priority: "fifo" (default),
    /// "fair-share" or "weighted" (docs/policies.md).
    pub queue_policy: crate::core::fairshare::QueuePolicy,
    /// Grant smaller requests behind a blocked one when that never delays
    /// it (shadow-time backfill). Default true; false is strict order.
    pub backfill: bool,
    /// Half-life of the recent use fair share counts. Default 1h.
    #[serde(with = "units::serde_duration")]
    pub fair_share_half_life: Duration,
    /// Share of each requester (peer id → integer ≥ 1). Default 1.
    pub shares: BTreeMap<String, i64>,
    /// Share of each group (group id → integer ≥ 1). Groups not listed
    /// are not a level of the fair-share order.
    pub group_shares: BTreeMap<String, i64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let p = crate::core::sched::SchedPolicy::default();
        SchedulerConfig {
            preemption: p.preemption,
            max_queue: p.max_queue,
            max_wait: Duration::from_millis(p.max_wait_ms),
            rate_per_sec: p.rate.per_sec,
            rate_burst: p.rate.burst,
            max_reservations: p.max_reservations,
            reservation_horizon: Duration::from_millis(p.reservation_horizon_ms),
            queue_policy: p.queue_policy,
            backfill: p.backfill,
            fair_share_half_life: Duration::from_millis(p.shares.half_life_ms),
            shares: BTreeMap::new(),
            group_shares: BTreeMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// The policy this section asks for.
    pub fn policy(&self) -> crate::core::sched::SchedPolicy {
        crate::core::sched::SchedPolicy {
            preemption: self.preemption,
            max_queue: self.max_queue,
            max_wait_ms: self.max_wait.as_millis() as u64,
            rate: crate::core::throttle::RateLimit {
                per_sec: self.rate_per_sec,
                burst: self.rate_burst,
            },
            max_reservations: self.max_reservations,
            reservation_horizon_ms: self.reservation_horizon.as_millis() as u64,
            queue_policy: self.queue_policy,
            backfill: self.backfill,
            shares: crate::core::fairshare::Shares {
                half_life_ms: self.fair_share_half_life.as_millis() as u64,
                requesters: self
                    .shares
                    .iter()
                    .map(|(k, v)| (NodeId(k.clone()), (*v).clamp(1, i64::from(u32::MAX)) as u32))
                    .collect(),
                groups: self
                    .group_shares
                    .iter()
                    .map(|(k, v)| {
                        (
                            crate::core::groups::GroupId(k.clone()),
                            (*v).clamp(1, i64::from(u32::MAX)) as u32,
                        )
                    })
                    .collect(),
            },
        }
    }
}

/// `[elastic]`: elastic sharing. When enabled, the lendable CPU and memory
/// shrink while the machine's owner uses the machine, and grow back (up to
/// `[lend]`) when it is idle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticConfig {
    /// Default false.
    pub enabled: bool,
    /// Cores always left to the owner beyond their current use. Default 1.
    pub headroom_cores: f64,
    /// Memory always left to the owner beyond their current use. Default 1GiB.
    #[serde(with = "units::serde_size")]
    pub headroom_memory: u64,
    /// How long local use must stay high before lending less. Default 10s.
    #[serde(with = "units::serde_duration")]
    pub shrink_after: Duration,
    /// How long local use must stay low before lending more. Default 1m.
    #[serde(with = "units::serde_duration")]
    pub grow_after: Duration,
    /// Largest growth per step, as a fraction of `[lend]`. Default 0.25.
    pub step_fraction: f64,
    /// End leases (lowest priority, newest first) when shrinking needs it.
    /// Default false: leases are never broken by shrinking.
    pub break_leases: bool,
    /// What the target follows: `"reactive"` (current local use; the
    /// default) or `"forecast"` (the larger of the current use and its
    /// forecast over `horizon`, so lending shrinks ahead of a daily peak).
    pub policy: crate::core::elastic::ElasticMode,
    /// `forecast`: how far ahead to look, at most `period`. Default 15m.
    #[serde(with = "units::serde_duration")]
    pub horizon: Duration,
    /// `forecast`: how far the rate of change is extrapolated, at most
    /// `horizon`; "0s" turns it off. Default 1m.
    #[serde(with = "units::serde_duration")]
    pub trend_horizon: Duration,
    /// `forecast`: the length of the learned usage profile, 1s to 7d.
    /// Default 24h.
    #[serde(with = "units::serde_duration")]
    pub period: Duration,
    /// `forecast`: time-of-day buckets per period, 1 to 10080, each at
    /// least 1s. Default 96 (15 minutes each).
    pub buckets: u32,
    /// `forecast`: smoothing of the level, in (0, 1]. Default 0.3.
    pub level_smoothing: f64,
    /// `forecast`: smoothing of the rate of change, in (0, 1]. Default 0.1.
    pub trend_smoothing: f64,
    /// `forecast`: smoothing of the daily profile, in (0, 1]. Default 0.5.
    pub season_smoothing: f64,
}

impl Default for ElasticConfig {
    fn default() -> Self {
        let p = crate::core::elastic::ElasticPolicy::default();
        ElasticConfig {
            enabled: p.enabled,
            headroom_cores: p.headroom_cores,
            headroom_memory: p.headroom_memory_mb,
            shrink_after: Duration::from_millis(p.shrink_after_ms),
            grow_after: Duration::from_millis(p.grow_after_ms),
            step_fraction: p.step_fraction,
            break_leases: p.break_leases,
            policy: p.mode,
            horizon: Duration::from_millis(p.forecast.horizon_ms),
            trend_horizon: Duration::from_millis(p.forecast.trend_horizon_ms),
            period: Duration::from_millis(p.forecast.period_ms),
            buckets: p.forecast.buckets,
            level_smoothing: p.forecast.level_smoothing,
            trend_smoothing: p.forecast.trend_smoothing,
            season_smoothing: p.forecast.season_smoothing,
        }
    }
}

impl ElasticConfig {
    /// The policy this section asks for.
    pub fn policy(&self) -> crate::core::elastic::ElasticPolicy {
        crate::core::elastic::ElasticPolicy {
            enabled: self.enabled,
            headroom_cores: self.headroom_cores,
            headroom_memory_mb: self.headroom_memory,
            shrink_after_ms: self.shrink_after.as_millis() as u64,
            grow_after_ms: self.grow_after.as_millis() as u64,
            step_fraction: self.step_fraction,
            break_leases: self.break_leases,
            mode: self.policy,
            forecast: self.forecast(),
        }
    }

    /// The forecaster's parameters this section asks for.
    pub fn forecast(&self) -> crate::core::forecast::ForecastPolicy {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        crate::core::forecast::ForecastPolicy {
            horizon_ms: ms(self.horizon),
            trend_horizon_ms: ms(self.trend_horizon),
            period_ms: ms(self.period),
            buckets: self.buckets,
            level_smoothing: self.level_smoothing,
            trend_smoothing: self.trend_smoothing,
            season_smoothing: self.season_smoothing,
        }
    }
}

/// `[breaker]`: circuit breakers on this node's own requests. A peer whose
/// allocations or tasks keep failing (unreachable, timed out, storage
/// errors; not ordinary refusals) is not asked for `cooldown`, then gets
/// one trial request; a success closes the breaker, a failure opens it
/// again for twice as long, up to `max_cooldown`. See
/// [`crate::core::breaker`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Default true.
    pub enabled: bool,
    /// Consecutive failures that open a peer's breaker, 1 to 1000.
    /// Default 3.
    pub failures: u32,
    /// First cool-down after opening, 1ms to 1h. Default 10s.
    #[serde(with = "units::serde_duration")]
    pub cooldown: Duration,
    /// Longest cool-down (back-off cap), from `cooldown` to 1d. Default 5m.
    #[serde(with = "units::serde_duration")]
    pub max_cooldown: Duration,
    /// How long a half-open trial may go unanswered before it counts as
    /// failed, 1ms to 1h. Default 30s.
    #[serde(with = "units::serde_duration")]
    pub trial_timeout: Duration,
    /// Most peers tracked at once, 1 to 100000. Default 1024.
    pub max_peers: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        let p = crate::core::breaker::BreakerPolicy::default();
        BreakerConfig {
            enabled: p.enabled,
            failures: p.failures,
            cooldown: Duration::from_millis(p.cooldown_ms),
            max_cooldown: Duration::from_millis(p.max_cooldown_ms),
            trial_timeout: Duration::from_millis(p.trial_timeout_ms),
            max_peers: p.max_peers,
        }
    }
}

impl BreakerConfig {
    /// The policy this section asks for.
    pub fn policy(&self) -> crate::core::breaker::BreakerPolicy {
        crate::core::breaker::BreakerPolicy {
            enabled: self.enabled,
            failures: self.failures,
            cooldown_ms: self.cooldown.as_millis() as u64,
            max_cooldown_ms: self.max_cooldown.as_millis() as u64,
            trial_timeout_ms: self.trial_timeout.as_millis() as u64,
            max_peers: self.max_peers,
        }
    }
}

/// `[throttle]`: adaptive throttling. When enabled, the per-peer rate
/// limit (`scheduler.rate_per_sec`) is lowered while this host is under
/// pressure (multiplied by `decrease` every `interval`, down to
/// `floor × rate_per_sec`) and raised back by `increase × rate_per_sec`
/// per `interval` once it is not. See [`crate::core::adaptive`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Default false.
    pub adaptive: bool,
    /// Host CPU use (percent) at or above which the host is under
    /// pressure, (0, 100]. Default 90.
    pub cpu_pct: f64,
    /// Host memory use (percent) at or above which the host is under
    /// pressure, (0, 100]. Default 90.
    pub memory_pct: f64,
    /// Factor per step under pressure, (0, 1). Default 0.5.
    pub decrease: f64,
    /// Growth per step without pressure, a fraction of `rate_per_sec`,
    /// (0, 1]. Default 0.1.
    pub increase: f64,
    /// Lowest rate, a fraction of `rate_per_sec`, (0, 1]. Default 0.1.
    pub floor: f64,
    /// Time between steps, 100ms to 1h. Default 1s.
    #[serde(with = "units::serde_duration")]
    pub interval: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        let p = crate::core::adaptive::AdaptivePolicy::default();
        ThrottleConfig {
            adaptive: p.enabled,
            cpu_pct: p.cpu_pct,
            memory_pct: p.memory_pct,
            decrease: p.decrease,
            increase: p.increase,
            floor: p.floor,
            interval: Duration::from_millis(p.interval_ms),
        }
    }
}

impl ThrottleConfig {
    /// The policy this section asks for.
    pub fn policy(&self) -> crate::core::adaptive::AdaptivePolicy {
        crate::core::adaptive::AdaptivePolicy {
            enabled: self.adaptive,
            cpu_pct: self.cpu_pct,
            memory_pct: self.memory_pct,
            decrease: self.decrease,
            increase: self.increase,
            floor: self.floor,
            interval_ms: self.interval.as_millis() as u64,
        }
    }
}

/// `[models]`: AI models this node serves.
///
/// With `server` set, the node asks that model server what it serves
/// (every `refresh`) and advertises those models, narrowed to `served`
/// when `served` is not empty, so an owner can share only some of them;
/// peers' inference calls are forwarded to it. Without `server`, the node
/// advertises `served` as declared, and cannot answer inference calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Model names, e.g. `["llama3", "mistral"]`. Requests that prefer a
    /// model only go to nodes that serve it. With `server`, the models of
    /// the server to share (empty: all of them); without, the models
    /// advertised as they are.
    pub served: Vec<String>,
    /// URL of the local model server, e.g. `"http://127.0.0.1:11434"`
    /// (Ollama) or `"http://127.0.0.1:8000/v1"` (vLLM). Plain `http`: the
    /// server runs on this machine. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The API the server speaks: `"ollama"` (default) or `"openai"`
    /// (OpenAI-compatible: vLLM, llama.cpp server, LM Studio, LocalAI).
    pub api: ModelApi,
    /// How often to ask the server what it serves (and has loaded). At
    /// least 1s. Default 10s.
    #[serde(with = "units::serde_duration")]
    pub refresh: Duration,
    /// Longest an inference call may take (for a streamed answer: the
    /// longest wait for each next piece). Default 5m.
    #[serde(with = "units::serde_duration")]
    pub timeout: Duration,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            served: Vec::new(),
            server: None,
            api: ModelApi::Ollama,
            refresh: Duration::from_secs(10),
            timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// `[leases]`: how long grants last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeasesConfig {
    /// Lease length when a request names none. Default 5m.
    #[serde(with = "units::serde_duration")]
    pub default: Duration,
    /// Shortest lease granted; shorter requests are raised to it. Default 1s.
    #[serde(with = "units::serde_duration")]
    pub min: Duration,
    /// Longest lease granted; longer requests are cut to it. Default 1h.
    #[serde(with = "units::serde_duration")]
    pub max: Duration,
    /// Most leases active at once on this node. Default 10000.
    pub max_leases: u32,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig {
            default: Duration::from_secs(5 * 60),
            min: Duration::from_secs(1),
            max: Duration::from_secs(60 * 60),
            max_leases: 10_000,
        }
    }
}

/// `[strategy]`: how this node ranks peers for its own requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyConfig {
    /// Strategy used when a request names none; one of
    /// [`STRATEGY_NAMES`]. Default `"least-loaded"`.
    pub default: String,
    /// Weights for the `weighted` strategy by peer id or node name,
    /// 0..=1000. They override what peers declare in their own
    /// `lend.weight`; 0 means "never pick this node" under `weighted`.
    pub weights: BTreeMap<String, u32>,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig {
            default: "least-loaded".to_owned(),
            weights: BTreeMap::new(),
        }
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `"info"`, `"debug"`, or per-module directives
    /// like `"info,lanswarm::net=debug"`. Default `"info"`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// Value types

const AMOUNT_EXPECTED: &str =
    "expected \"all\", a percentage like \"75%\" or a size like \"12GiB\"";

/// An amount of memory or disk: everything, a share of the total, or a
/// size in MiB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// All of it (`"all"`).
    All,
    /// A percentage of the total, 0..=100 (`"75%"`).
    Percent(f64),
    /// A size in MiB (`"12GiB"`, or an integer of MiB).
    Absolute(u64),
}

impl Amount {
    /// How much of `total` this amounts to, rounded down. An absolute
    /// amount is returned as is, even above `total`: clamping (and warning
    /// about it) is the caller's business.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            Amount::All => total,
            Amount::Percent(p) => percent_of(total, p),
            Amount::Absolute(mb) => mb,
        }
    }
}

/// `p` percent of `total`, rounded down; `p` is clamped to 0..=100.
fn percent_of(total: u64, p: f64) -> u64 {
    let p = if p.is_finite() {
        p.clamp(0.0, 100.0)
    } else {
        0.0
    };
    // f64 has 53 bits of mantissa: exact for any realistic MiB count.
    ((total as f64) * p / 100.0).floor() as u64
}

/// Parses `"75%"` (and only that shape) into `Some(75.0)`.
fn parse_percent(s: &str) -> Option<f64> {
    let n = s.trim().strip_suffix('%')?.trim();
    if n.is_empty() {
        return None;
    }
    n.parse::<f64>().ok().filter(|p| p.is_finite())
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::All => f.write_str("all"),
            Amount::Percent(p) => write!(f, "{p}%"),
            Amount::Absolute(mb) => f.write_str(&format_mb(*mb)),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&AMOUNT_EXPECTED["expected ".len()..])
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount::Absolute(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                u64::try_from(v)
                    .map(Amount::Absolute)
                    .map_err(|_| E::custom(format!("{AMOUNT_EXPECTED}, got {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(format!("{AMOUNT_EXPECTED}, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                if v.trim().eq_ignore_ascii_case("all") {
                    return Ok(Amount::All);
                }
                if v.trim().ends_with('%') {
                    return parse_percent(v)
                        .map(Amount::Percent)
                        .ok_or_else(|| E::custom(format!("{AMOUNT_EXPECTED}, got {v:?}")));
                }
                parse_size_mb(v)
                    .map(Amount::Absolute)
                    .map_err(|_| E::custom(format!("{AMOUNT_EXPECTED}, got {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

const CPU_EXPECTED: &str =
    "expected \"auto\", \"all\", a percentage like \"50%\" or a number of cores";

/// How many CPU cores to lend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CpuAmount {
    /// All cores but one, and at least one (`"auto"`, the default).
    Auto,
    /// Every core (`"all"`).
    All,
    /// A percentage of the cores, rounded down but at least one when the
    /// percentage is above zero (`"50%"`).
    Percent(f64),
    /// A number of cores (`4`).
    Count(u32),
}

impl CpuAmount {
    /// How many of `cores` this amounts to. A count is returned as is, even
    /// above `cores`: clamping is the caller's business.
    pub fn resolve(self, cores: u32) -> u32 {
        match self {
            CpuAmount::Auto => cores.saturating_sub(1).max(cores.min(1)),
            CpuAmount::All => cores,
            CpuAmount::Percent(p) => {
                let n = percent_of(u64::from(cores), p) as u32;
                if p > 0.0 {
                    n.max(cores.min(1))
                } else {
                    n
                }
            }
            CpuAmount::Count(n) => n,
        }
    }
}

impl fmt::Display for CpuAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAmount::Auto => f.write_str("auto"),
            CpuAmount::All => f.write_str("all"),
            CpuAmount::Percent(p) => write!(f, "{p}%"),
            CpuAmount::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for CpuAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CpuAmount::Count(n) => s.serialize_u32(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for CpuAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CpuAmount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&CPU_EXPECTED["expected ".len()..])
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CpuAmount, E> {
                u32::try_from(v)
                    .map(CpuAmount::Count)
                    .map_err(|_| E::custom(format!("{CPU_EXPECTED}, got {v}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CpuAmount, E> {
                u32::try_from(v)
                    .map(CpuAmount::Count)
                    .map_err(|_| E::custom(format!("{CPU_EXPECTED}, got {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CpuAmount, E> {
                Err(E::custom(format!("{CPU_EXPECTED}, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CpuAmount, E> {
                let t = v.trim();
                if t.eq_ignore_ascii_case("auto") {
                    Ok(CpuAmount::Auto)
                } else if t.eq_ignore_ascii_case("all") {
                    Ok(CpuAmount::All)
                } else if let Some(p) = parse_percent(t) {
                    Ok(CpuAmount::Percent(p))
                } else if let Ok(n) = t.parse::<u32>() {
                    Ok(CpuAmount::Count(n))
                } else {
                    Err(E::custom(format!("{CPU_EXPECTED}, got {v:?}")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

const GPUS_EXPECTED: &str = "expected \"all\", \"none\" or a list of GPU indices like [0, 1]";

/// Which GPUs to lend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU, detected or declared (`"all"`).
    All,
    /// None (`"none"`, or `[]`).
    None,
    /// These GPU indices (`[0, 1]`): NVML indices for detected GPUs, and the
    /// indices after them for synthetic ones.
    Only(Vec<u32>),
}

impl GpuSelection {
    /// Whether the GPU with this index is lent.
    pub fn includes(&self, index: u32) -> bool {
        match self {
            GpuSelection::All => true,
            GpuSelection::None => false,
            GpuSelection::Only(list) => list.contains(&index),
        }
    }
}

impl Serialize for GpuSelection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuSelection::All => s.serialize_str("all"),
            GpuSelection::None => s.serialize_str("none"),
            GpuSelection::Only(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for GpuSelection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GpuSelection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&GPUS_EXPECTED["expected ".len()..])
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GpuSelection, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "all" => Ok(GpuSelection::All),
                    "none" => Ok(GpuSelection::None),
                    _ => Err(E::custom(format!("{GPUS_EXPECTED}, got {v:?}"))),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<GpuSelection, A::Error> {
                let mut list = Vec::new();
                while let Some(i) = seq.next_element::<u32>()? {
                    list.push(i);
                }
                Ok(if list.is_empty() {
                    GpuSelection::None
                } else {
                    GpuSelection::Only(list)
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `SocketAddr` with an error message that shows what was expected. The
/// address is parsed inside the visitor, so the error carries the value's
/// position.
mod socket_addr {
    use std::fmt;
    use std::net::SocketAddr;

    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SocketAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address and port like \"127.0.0.1:7700\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
                v.trim().parse().map_err(|_| {
                    E::custom(format!(
                        "expected an IP address and port like \"127.0.0.1:7700\" or \"[::1]:7700\", got {v:?}"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A list of multiaddrs written as strings. Each element is parsed inside
/// its own visitor, so an error points at the bad element
/// (`network.listen[1]`).
mod multiaddr_list {
    use std::fmt;

    use libp2p::Multiaddr;
    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        let v = Vec::<Addr>::deserialize(d)?;
        Ok(v.into_iter().map(|a| a.0).collect())
    }

    struct Addr(Multiaddr);

    impl<'de> Deserialize<'de> for Addr {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Addr;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a multiaddr like \"/ip4/0.0.0.0/tcp/0\"")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                    v.trim().parse().map(Addr).map_err(|e| {
                        E::custom(format!(
                            "expected a multiaddr like \"/ip4/0.0.0.0/tcp/0\", got {v:?} ({e})"
                        ))
                    })
                }
            }
            d.deserialize_str(V)
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a config could not be loaded. Each variant names the source (file)
/// and, where there is one, the dotted key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, has an unknown key, or a value of the
    /// wrong type or form.
    #[error("{}", located(origin, Some((*line, *column)), key.as_deref(), message))]
    Parse {
        /// The file or other source.
        origin: String,
        /// Dotted key of the offending entry, when known (`lend.memory`).
        key: Option<String>,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The values parsed but are not allowed (out of range, inconsistent).
    #[error("{}", located(origin, *position, Some(key.as_str()), message))]
    Invalid {
        /// The file or other source.
        origin: String,
        /// Dotted key of the offending value (`location.latitude`).
        key: String,
        /// 1-based line and column of the key in the file, when it is there.
        position: Option<(usize, usize)>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

fn located(
    origin: &str,
    position: Option<(usize, usize)>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut s = origin.to_owned();
    if let Some((line, column)) = position {
        s.push_str(&format!(":{line}:{column}"));
    }
    if let Some(key) = key {
        s.push_str(": ");
        s.push_str(key);
    }
    s.push_str(": ");
    s.push_str(message);
    s
}

/// One segment of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A key path like `resources.gpus[1].memory`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn parse(dotted: &str) -> KeyPath {
        // Only used on paths built by `validate`, whose keys are bare.
        let mut segs = Vec::new();
        for part in dotted.split('.') {
            let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                segs.push(Seg::Key(name.to_owned()));
            }
            while let Some((idx, after)) = rest.split_once(']') {
                if let Ok(i) = idx.parse() {
                    segs.push(Seg::Index(i));
                }
                rest = after.strip_prefix('[').unwrap_or(after);
            }
        }
        KeyPath(segs)
    }

    fn child(&self, seg: Seg) -> KeyPath {
        let mut v = self.0.clone();
        v.push(seg);
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..pos].chars().count() + 1)
}

fn span_contains(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && (pos < span.end || span.start == span.end)
}

/// The most specific key whose name or value covers byte offset `pos`.
fn key_at(root: &DeTable<'_>, pos: usize) -> Option<KeyPath> {
    fn walk_value(
        v: &toml::Spanned<DeValue<'_>>,
        path: &KeyPath,
        pos: usize,
        best: &mut Option<(usize, usize, KeyPath)>,
    ) {
        let span = v.span();
        if span_contains(&span, pos) {
            consider(span.len(), path, best);
        }
        match v.get_ref() {
            DeValue::Table(t) => walk_table(t, path, pos, best),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    walk_value(item, &path.child(Seg::Index(i)), pos, best);
                }
            }
            _ => {}
        }
    }
    fn walk_table(
        t: &DeTable<'_>,
        path: &KeyPath,
        pos: usize,
        best: &mut Option<(usize, usize, KeyPath)>,
    ) {
        for (k, v) in t.iter() {
            let p = path.child(Seg::Key(k.get_ref().to_string()));
            if span_contains(&k.span(), pos) {
                consider(k.span().len(), &p, best);
            }
            walk_value(v, &p, pos, best);
        }
    }
    fn consider(len: usize, path: &KeyPath, best: &mut Option<(usize, usize, KeyPath)>) {
        let depth = path.0.len();
        let better = match best {
            None => true,
            Some((l, d, _)) => len < *l || (len == *l && depth > *d),
        };
        if better {
            *best = Some((len, depth, path.clone()));
        }
    }
    let mut best = None;
    walk_table(root, &KeyPath::default(), pos, &mut best);
    best.map(|(_, _, p)| p)
}

/// Byte span of the deepest part of `path` present in the document.
fn span_of(root: &DeTable<'_>, path: &KeyPath) -> Option<Range<usize>> {
    let mut table = root;
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    let mut found = None;
    for seg in &path.0 {
        let value = match (seg, array) {
            (Seg::Key(name), _) => {
                let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
                    return found;
                };
                // A key's own span points at its line even for `[table]`
                // headers, whose value spans can cover the whole section.
                found = Some(k.span());
                v
            }
            (Seg::Index(i), Some(a)) => {
                let Some(v) = a.get(*i) else {
                    return found;
                };
                found = Some(v.span());
                v
            }
            (Seg::Index(_), None) => return found,
        };
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    found
}

fn parse_error(text: &str, origin: &str, e: &toml::de::Error, root: &DeTable<'_>) -> ConfigError {
    let pos = e.span().map_or(0, |s| s.start);
    let (line, column) = line_col(text, pos);
    let key = e
        .span()
        .and_then(|s| key_at(root, s.start))
        .map(|p| p.to_string());
    let message = e.message().trim().replace('\n', "; ");
    ConfigError::Parse {
        origin: origin.to_owned(),
        key,
        line,
        column,
        message,
    }
}

/// A validation problem before it is tied to a source.
#[derive(Debug)]
struct Problem {
    key: KeyPath,
    message: String,
}

fn problem(key: impl Into<KeyPath>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

impl From<&str> for KeyPath {
    fn from(dotted: &str) -> Self {
        KeyPath::parse(dotted)
    }
}

impl From<String> for KeyPath {
    fn from(dotted: String) -> Self {
        KeyPath::parse(&dotted)
    }
}

// ---------------------------------------------------------------------------
// Loading and validation

impl Config {
    /// Loads and validates the config.
    ///
    /// With `Some(path)`, reads that file. With `None`, reads the per-user
    /// file ([`Config::default_path`]) if it exists, and otherwise uses the
    /// defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None => match Self::default_path().filter(|p| p.is_file()) {
                Some(p) => p,
                None => {
                    tracing::debug!("no config file, using defaults");
                    let config = Config {
                        origin: Some("<defaults>".to_owned()),
                        ..Config::default()
                    };
                    config.validate()?;
                    return Ok(config);
                }
            },
        };
        tracing::debug!(path = %path.display(), "loading config");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        if let Some(key) = &config.network.swarm_key {
            config.network.swarm_key = Some(relative_to_file(key, &path));
        }
        Ok(config)
    }

    /// Parses and validates a config from TOML text. `origin` names the
    /// source in errors (usually the file path).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let (partial, _) = DeTable::parse_recoverable(text);
                return Err(parse_error(text, origin, &e, partial.get_ref()));
            }
        };
        let mut config = Config::deserialize(toml::de::Deserializer::from(root.clone()))
            .map_err(|e| parse_error(text, origin, &e, root.get_ref()))?;
        config.origin = Some(origin.to_owned());
        if config.network.swarm_key.is_some() && !has_key(root.get_ref(), &["network", "listen"]) {
            // pnet covers TCP only: the default listen drops QUIC.
            config.network.listen = NetworkConfig::private_default_listen();
        }
        if let Err(p) = config.check() {
            let position = span_of(root.get_ref(), &p.key).map(|s| line_col(text, s.start));
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key: p.key.to_string(),
                position,
                message: p.message,
            });
        }
        Ok(config)
    }

    /// Checks what the types alone cannot: ranges, consistency between keys,
    /// names. [`Config::load`] calls it; call it again after changing a
    /// loaded config (for example with CLI flags).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|p| ConfigError::Invalid {
            origin: self.origin.clone().unwrap_or_else(|| "<config>".to_owned()),
            key: p.key.to_string(),
            position: None,
            message: p.message,
        })
    }

    /// The per-user config file looked for when no path is given:
    /// `$XDG_CONFIG_HOME/lanswarm/config.toml`, else
    /// `~/.config/lanswarm/config.toml`.
    pub fn default_path() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        let base = match xdg {
            Some(p) => p,
            None => PathBuf::from(non_empty(std::env::var_os("HOME"))?).join(".config"),
        };
        Some(base.join("lanswarm").join("config.toml"))
    }

    /// The data directory: `data_dir` with `~` expanded, or the per-user
    /// default `$XDG_DATA_HOME/lanswarm`, else `~/.local/share/lanswarm`,
    /// else (no `HOME`) `./lanswarm-data`.
    pub fn data_dir(&self) -> PathBuf {
        resolve_data_dir(
            self.data_dir.as_deref(),
            std::env::var_os("HOME").as_deref(),
            std::env::var_os("XDG_DATA_HOME").as_deref(),
        )
    }

    /// The swarm key file, if one is configured: `network.swarm_key` with
    /// `~` expanded, and a path still relative (one not loaded from a file
    /// by [`Config::load`], which resolves it against the file's
    /// directory) taken inside [`Config::data_dir`].
    pub fn swarm_key_path(&self) -> Option<PathBuf> {
        let key = self.network.swarm_key.as_deref()?;
        let home = std::env::var_os("HOME");
        Some(resolve_swarm_key(key, &self.data_dir(), home.as_deref()))
    }

    /// The node name: `name`, or else the host name (cut to 64 characters),
    /// or `"lanswarm-node"` if there is none.
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.trim().to_owned();
        }
        let host = crate::hw::probe::hostname();
        let host: String = host.trim().chars().take(MAX_NAME_LEN).collect();
        if host.is_empty() {
            "lanswarm-node".to_owned()
        } else {
            host
        }
    }

    fn check(&self) -> Result<(), Problem> {
        self.check_top()?;
        self.check_api()?;
        self.check_network()?;
        self.check_lend()?;
        self.check_resources()?;
        self.check_location()?;
        self.check_labels()?;
        self.check_access()?;
        self.check_roles()?;
        self.check_scheduler()?;
        self.check_breaker()?;
        self.check_models()?;
        self.check_tasks()?;
        self.check_leases()?;
        self.check_strategy()?;
        self.check_history()?;
        self.check_accounting()?;
        self.check_log()
    }

    fn check_top(&self) -> Result<(), Problem> {
        if let Some(name) = &self.name {
            let trimmed = name.trim();
            if trimmed.is_empty() {
                return Err(problem("name", "must not be empty"));
            }
            let n = trimmed.chars().count();
            if n > MAX_NAME_LEN {
                return Err(problem(
                    "name",
                    format!("must be at most {MAX_NAME_LEN} characters, got {n}"),
                ));
            }
            if trimmed.chars().any(char::is_control) {
                return Err(problem("name", "must not contain control characters"));
            }
        }
        if let Some(dir) = &self.data_dir {
            if dir.as_os_str().is_empty() {
                return Err(problem("data_dir", "must not be empty"));
            }
        }
        Ok(())
    }

    fn check_labels(&self) -> Result<(), Problem> {
        if self.labels.len() > MAX_LABELS {
            return Err(problem(
                "labels",
                format!("at most {MAX_LABELS} labels, got {}", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            let key = format!("labels.{k}");
            if k.is_empty() || k.len() > 64 || k.chars().any(|c| c.is_control() || c == '=') {
                return Err(problem(
                    key,
                    "a label name is 1 to 64 bytes, without control characters or '='",
                ));
            }
            if v.len() > 128 || v.chars().any(char::is_control) {
                return Err(problem(
                    key,
                    "a label value is at most 128 bytes, without control characters",
                ));
            }
        }
        Ok(())
    }

    fn check_scheduler(&self) -> Result<(), Problem> {
        let s = &self.scheduler;
        if s.max_queue == 0 || s.max_queue > 100_000 {
            return Err(problem(
                "scheduler.max_queue",
                "must be between 1 and 100000",
            ));
        }
        if s.max_wait.is_zero() || s.max_wait > Duration::from_secs(7 * 24 * 3600) {
            return Err(problem("scheduler.max_wait", "must be between 1ms and 7d"));
        }
        if !s.rate_per_sec.is_finite() || s.rate_per_sec <= 0.0 || s.rate_per_sec > 1e6 {
            return Err(problem(
                "scheduler.rate_per_sec",
                "must be a number above 0 and at most 1000000",
            ));
        }
        if s.rate_burst == 0 {
            return Err(problem("scheduler.rate_burst", "must be at least 1"));
        }
        if s.max_reservations == 0 || s.max_reservations > 100_000 {
            return Err(problem(
                "scheduler.max_reservations",
                "must be between 1 and 100000",
            ));
        }
        if s.reservation_horizon.is_zero()
            || s.reservation_horizon > Duration::from_secs(366 * 24 * 3600)
        {
            return Err(problem(
                "scheduler.reservation_horizon",
                "must be between 1ms and 366d",
            ));
        }
        let half = s.fair_share_half_life.as_millis();
        if half < u128::from(crate::core::fairshare::MIN_HALF_LIFE_MS)
            || half > u128::from(crate::core::fairshare::MAX_HALF_LIFE_MS)
        {
            return Err(problem(
                "scheduler.fair_share_half_life",
                "must be between 1s and 30d",
            ));
        }
        for (id, share) in &s.shares {
            let key = format!("scheduler.shares.{id}");
            if id.parse::<libp2p::PeerId>().is_err() {
                return Err(problem(key.as_str(), "is not a valid peer id"));
            }
            crate::core::fairshare::check_share(&format!("requester {id}"), *share)
                .map_err(|m| problem(key.as_str(), m))?;
        }
        for (id, share) in &s.group_shares {
            let key = format!("scheduler.group_shares.{id}");
            crate::core::fairshare::check_share(&format!("group {id}"), *share)
                .map_err(|m| problem(key.as_str(), m))?;
        }
        if s.shares.len() > crate::core::fairshare::MAX_SHARES
            || s.group_shares.len() > crate::core::fairshare::MAX_SHARES
        {
            return Err(problem(
                "scheduler.shares",
                "at most 10000 requester and 10000 group shares",
            ));
        }
        let e = &self.elastic;
        if !e.headroom_cores.is_finite() || e.headroom_cores < 0.0 {
            return Err(problem("elastic.headroom_cores", "must be a number ≥ 0"));
        }
        if !e.step_fraction.is_finite() || e.step_fraction <= 0.0 || e.step_fraction > 1.0 {
            return Err(problem("elastic.step_fraction", "must be in (0, 1]"));
        }
        if let Err(f) = e.forecast().validate() {
            // The forecast keys are named as in `[elastic]`.
            return Err(problem(
                format!("elastic.{}", f.field),
                format!("expected {}, got {}", f.expected, f.got),
            ));
        }
        Ok(())
    }

    fn check_breaker(&self) -> Result<(), Problem> {
        let b = &self.breaker;
        if !(1..=1000).contains(&b.failures) {
            return Err(problem(
                "breaker.failures",
                format!("must be between 1 and 1000, got {}", b.failures),
            ));
        }
        if b.cooldown.is_zero() || b.cooldown > Duration::from_secs(3600) {
            return Err(problem("breaker.cooldown", "must be between 1ms and 1h"));
        }
        if b.max_cooldown < b.cooldown || b.max_cooldown > Duration::from_secs(24 * 3600) {
            return Err(problem(
                "breaker.max_cooldown",
                "must be at least breaker.cooldown and at most 1d",
            ));
        }
        if b.trial_timeout.is_zero() || b.trial_timeout > Duration::from_secs(3600) {
            return Err(problem(
                "breaker.trial_timeout",
                "must be between 1ms and 1h",
            ));
        }
        if !(1..=100_000).contains(&b.max_peers) {
            return Err(problem(
                "breaker.max_peers",
                format!("must be between 1 and 100000, got {}", b.max_peers),
            ));
        }
        let t = &self.throttle;
        if let Err(e) = t.policy().validate() {
            return Err(problem(
                format!("throttle.{}", e.field),
                format!("must be {}, got {}", e.expected, e.got),
            ));
        }
        if t.interval < Duration::from_millis(100) || t.interval > Duration::from_secs(3600) {
            return Err(problem("throttle.interval", "must be between 100ms and 1h"));
        }
        Ok(())
    }

    fn check_access(&self) -> Result<(), Problem> {
        for (list, ids) in [("allow", &self.access.allow), ("deny", &self.access.deny)] {
            let key = format!("access.{list}");
            if ids.len() > MAX_ACCESS_LIST {
                return Err(problem(
                    key,
                    format!("at most {MAX_ACCESS_LIST} peer ids, got {}", ids.len()),
                ));
            }
            for id in ids {
                if id.parse::<libp2p::PeerId>().is_err() {
                    return Err(problem(
                        key,
                        format!("{id:?} is not a peer id (see `lanswarm status` on that node)"),
                    ));
                }
            }
        }
        if let Some(id) = self
            .access
            .allow
            .iter()
            .find(|id| self.access.deny.contains(id))
        {
            return Err(problem(
                "access.deny",
                format!("{id} is on both access.allow and access.deny"),
            ));
        }
        Ok(())
    }

    fn check_roles(&self) -> Result<(), Problem> {
        for id in self.roles.peers.keys() {
            if id.parse::<libp2p::PeerId>().is_err() {
                return Err(problem(
                    "roles.peers",
                    format!("{id:?} is not a peer id (see `lanswarm status` on that node)"),
                ));
            }
        }
        self.role_policy()
            .validate()
            .map_err(|e| problem("roles", e))
    }

    /// The role policy this config asks for.
    pub fn role_policy(&self) -> crate::core::roles::RolePolicy {
        crate::core::roles::RolePolicy {
            default_role: self.roles.default.clone(),
            custom: self
                .roles
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
                .collect(),
            peers: self
                .roles
                .peers
                .iter()
                .map(|(k, v)| (NodeId(k.clone()), v.clone()))
                .collect(),
            groups: self.roles.groups.clone(),
        }
    }

    /// The access policy this config asks for.
    pub fn access_policy(&self) -> crate::core::access::AccessPolicy {
        crate::core::access::AccessPolicy {
            allow_remote: self.lend.allow_remote,
            group_peers_only: self.access.group_peers_only,
            allow: self
                .access
                .allow
                .iter()
                .map(|s| NodeId(s.clone()))
                .collect(),
            deny: self.access.deny.iter().map(|s| NodeId(s.clone())).collect(),
        }
    }

    fn check_api(&self) -> Result<(), Problem> {
        match &self.api.token {
            Some(t) if t.is_empty() => Err(problem("api.token", "must not be empty")),
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(problem(
                "api.token",
                "must not contain whitespace or control characters",
            )),
            // A non-loopback api.listen needs a token: this one, or one in
            // the data directory's token file. The daemon checks that at
            // start (`crate::api::tokens::require_token`), since the file
            // is not part of the config.
            Some(_) | None => Ok(()),
        }
    }

    fn check_network(&self) -> Result<(), Problem> {
        let n = &self.network;
        if n.listen.is_empty() {
            return Err(problem(
                "network.listen",
                "needs at least one address, e.g. \"/ip4/0.0.0.0/tcp/0\"",
            ));
        }
        for (i, addr) in n.listen.iter().enumerate() {
            if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(problem(
                    format!("network.listen[{i}]"),
                    format!("a listen address must not name a peer (/p2p/...), got \"{addr}\""),
                ));
            }
        }
        for (i, addr) in n.bootstrap.iter().enumerate() {
            if addr.iter().next().is_none() {
                return Err(problem(
                    format!("network.bootstrap[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if let Some(key) = &n.swarm_key {
            if key.as_os_str().is_empty() {
                return Err(problem("network.swarm_key", "must not be empty"));
            }
            let lists = [("listen", &n.listen), ("bootstrap", &n.bootstrap)];
            for (list, addrs) in lists {
                if let Some((i, addr)) = addrs.iter().enumerate().find(|(_, a)| is_quic(a)) {
                    return Err(problem(
                        format!("network.{list}[{i}]"),
                        format!(
                            "QUIC cannot be used with network.swarm_key (the pre-shared-key layer covers TCP only); remove \"{addr}\" or use a /tcp/ address"
                        ),
                    ));
                }
            }
        }
        if n.announce_interval.is_zero() {
            return Err(problem("network.announce_interval", "must be more than 0s"));
        }
        if n.announce_debounce >= n.announce_interval {
            return Err(problem(
                "network.announce_debounce",
                format!(
                    "must be shorter than network.announce_interval ({}), got {}",
                    units::format_duration(n.announce_interval),
                    units::format_duration(n.announce_debounce)
                ),
            ));
        }
        if n.mdns_ttl.is_zero() {
            return Err(problem("network.mdns_ttl", "must be more than 0s"));
        }
        if n.forget_after < Duration::from_secs(10) {
            return Err(problem(
                "network.forget_after",
                format!(
                    "must be at least 10s, got {}",
                    units::format_duration(n.forget_after)
                ),
            ));
        }
        if n.degraded_rtt < Duration::from_millis(1) || n.degraded_rtt > Duration::from_secs(60) {
            return Err(problem(
                "network.degraded_rtt",
                format!(
                    "must be between 1ms and 1m, got {}",
                    units::format_duration(n.degraded_rtt)
                ),
            ));
        }
        if let Some(c) = n.degraded_cpu {
            if !(1..=100).contains(&c) {
                return Err(problem(
                    "network.degraded_cpu",
                    format!("must be a percentage from 1 to 100, got {c}"),
                ));
            }
        }
        Ok(())
    }

    fn check_lend(&self) -> Result<(), Problem> {
        let l = &self.lend;
        if let CpuAmount::Percent(p) = l.cpu_cores {
            check_percent("lend.cpu_cores", p)?;
        }
        for (key, amount) in [
            ("lend.memory", l.memory),
            ("lend.disk", l.disk),
            ("lend.gpu_memory", l.gpu_memory),
        ] {
            if let Amount::Percent(p) = amount {
                check_percent(key, p)?;
            }
        }
        if let GpuSelection::Only(list) = &l.gpus {
            let mut seen = BTreeSet::new();
            for (i, g) in list.iter().enumerate() {
                if !seen.insert(g) {
                    return Err(problem(
                        format!("lend.gpus[{i}]"),
                        format!("GPU {g} is listed twice"),
                    ));
                }
            }
        }
        if !(1..=MAX_WEIGHT).contains(&l.weight) {
            return Err(problem(
                "lend.weight",
                format!("must be between 1 and {MAX_WEIGHT}, got {}", l.weight),
            ));
        }
        Ok(())
    }

    fn check_resources(&self) -> Result<(), Problem> {
        let r = &self.resources;
        for (i, g) in r.gpus.iter().enumerate() {
            if g.name.trim().is_empty() {
                return Err(problem(
                    format!("resources.gpus[{i}].name"),
                    "must not be empty",
                ));
            }
            if g.memory == 0 {
                return Err(problem(
                    format!("resources.gpus[{i}].memory"),
                    "must be more than 0",
                ));
            }
        }
        for name in r.custom.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(problem(
                    KeyPath::parse("resources.custom").child(Seg::Key(name.clone())),
                    format!(
                        "custom resource names may only use a-z, 0-9, '_' and '-', got {name:?}"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_location(&self) -> Result<(), Problem> {
        let l = &self.location;
        if let Some(zone) = &l.zone {
            if zone.trim().is_empty() {
                return Err(problem("location.zone", "must not be empty"));
            }
        }
        if let Some(lat) = l.latitude {
            if !(-90.0..=90.0).contains(&lat) {
                return Err(problem(
                    "location.latitude",
                    format!("must be between -90 and 90 degrees, got {lat}"),
                ));
            }
        }
        if let Some(lon) = l.longitude {
            if !(-180.0..=180.0).contains(&lon) {
                return Err(problem(
                    "location.longitude",
                    format!("must be between -180 and 180 degrees, got {lon}"),
                ));
            }
        }
        match (l.latitude, l.longitude) {
            (Some(_), None) => Err(problem(
                "location.longitude",
                "must be set together with location.latitude",
            )),
            (None, Some(_)) => Err(problem(
                "location.latitude",
                "must be set together with location.longitude",
            )),
            _ => Ok(()),
        }
    }

    fn check_models(&self) -> Result<(), Problem> {
        let mut seen = BTreeSet::new();
        for (i, m) in self.models.served.iter().enumerate() {
            let key = format!("models.served[{i}]");
            if m.trim().is_empty() {
                return Err(problem(key, "model names must not be empty"));
            }
            if !seen.insert(m.trim()) {
                return Err(problem(key, format!("model {m:?} is listed twice")));
            }
        }
        let m = &self.models;
        if let Some(url) = &m.server {
            check_server_url(url).map_err(|e| problem("models.server", e))?;
        }
        if m.refresh < Duration::from_secs(1) || m.refresh > Duration::from_secs(24 * 3600) {
            return Err(problem(
                "models.refresh",
                format!(
                    "must be between 1s and 1d, got {}",
                    units::format_duration(m.refresh)
                ),
            ));
        }
        if m.timeout.is_zero() || m.timeout > Duration::from_secs(24 * 3600) {
            return Err(problem(
                "models.timeout",
                format!(
                    "must be more than 0s and at most 1d, got {}",
                    units::format_duration(m.timeout)
                ),
            ));
        }
        Ok(())
    }

    fn check_tasks(&self) -> Result<(), Problem> {
        self.tasks
            .check()
            .map_err(|p| problem(format!("tasks.{}", p.key), p.message))
    }

    fn check_leases(&self) -> Result<(), Problem> {
        let l = &self.leases;
        let f = |d: Duration| units::format_duration(d);
        if l.min.is_zero() {
            return Err(problem("leases.min", "must be more than 0s"));
        }
        if l.default < l.min {
            return Err(problem(
                "leases.default",
                format!(
                    "must be at least leases.min ({}), got {}",
                    f(l.min),
                    f(l.default)
                ),
            ));
        }
        if l.default > l.max {
            return Err(problem(
                "leases.default",
                format!(
                    "must be at most leases.max ({}), got {}",
                    f(l.max),
                    f(l.default)
                ),
            ));
        }
        if l.max_leases == 0 {
            return Err(problem("leases.max_leases", "must be more than 0"));
        }
        Ok(())
    }

    fn check_strategy(&self) -> Result<(), Problem> {
        let s = &self.strategy;
        if !STRATEGY_NAMES.contains(&s.default.as_str()) {
            return Err(problem(
                "strategy.default",
                format!(
                    "unknown strategy {:?}; expected one of {}",
                    s.default,
                    STRATEGY_NAMES.join(", ")
                ),
            ));
        }
        for (node, w) in &s.weights {
            let key = KeyPath::parse("strategy.weights").child(Seg::Key(node.clone()));
            if node.trim().is_empty() {
                return Err(problem(key, "node names must not be empty"));
            }
            if *w > MAX_WEIGHT {
                return Err(problem(
                    key,
                    format!("weights must be between 0 and {MAX_WEIGHT}, got {w}"),
                ));
            }
        }
        Ok(())
    }

    fn check_history(&self) -> Result<(), Problem> {
        let h = &self.history;
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3650 * 86_400));
        if h.retention < min || h.retention > max {
            return Err(problem(
                "history.retention",
                format!(
                    "must be between 1m and 3650d, got {}",
                    units::format_duration(h.retention)
                ),
            ));
        }
        if !(1..=10_000_000).contains(&h.max_events) {
            return Err(problem(
                "history.max_events",
                format!("must be between 1 and 10000000, got {}", h.max_events),
            ));
        }
        Ok(())
    }

    fn check_accounting(&self) -> Result<(), Problem> {
        let a = &self.accounting;
        let (min, max) = (
            Duration::from_secs(3600),
            Duration::from_secs(3650 * 86_400),
        );
        if a.retention < min || a.retention > max {
            return Err(problem(
                "accounting.retention",
                format!(
                    "must be between 1h and 3650d, got {}",
                    units::format_duration(a.retention)
                ),
            ));
        }
        if let Some(c) = &a.currency {
            let n = c.chars().count();
            if !(1..=16).contains(&n) || !c.chars().all(|ch| ch.is_alphabetic()) {
                return Err(problem(
                    "accounting.currency",
                    format!("must be 1 to 16 letters, such as \"EUR\", got {c:?}"),
                ));
            }
        }
        if let Some(p) = &a.price {
            if let Err((key, msg)) = p.check() {
                return Err(problem(format!("accounting.price.{key}").as_str(), msg));
            }
        }
        Ok(())
    }

    fn check_log(&self) -> Result<(), Problem> {
        let level = self.log.level.trim();
        if level.is_empty() {
            return Err(problem("log.level", "must not be empty, e.g. \"info\""));
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map(|_| ())
            .map_err(|e| problem("log.level", format!("invalid filter {level:?}: {e}")))
    }
}

/// Checks `models.server`: an `http://` URL with a host, and no query or
/// fragment. `https` is refused because this build has no TLS (the model
/// server runs on this machine).
fn check_server_url(url: &str) -> Result<(), String> {
    const EXAMPLE: &str = "an http:// URL like \"http://127.0.0.1:11434\"";
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("expected {EXAMPLE}, got {url:?} ({e})"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "expected {EXAMPLE}, got {url:?}: lanswarm is built without TLS, and the model server runs on this machine, so use http"
            ))
        }
        _ => return Err(format!("expected {EXAMPLE}, got {url:?}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "expected {EXAMPLE}, got {url:?}, which has no host"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "expected {EXAMPLE}, got {url:?}: no query or fragment"
        ));
    }
    Ok(())
}

/// Whether `addr` goes over QUIC (or UDP), which a private swarm cannot use.
fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::Quic | Protocol::QuicV1 | Protocol::Udp(_)))
}

fn check_percent(key: &str, p: f64) -> Result<(), Problem> {
    if (0.0..=100.0).contains(&p) {
        Ok(())
    } else {
        Err(problem(
            key,
            format!("percentage must be between 0% and 100%, got {p}%"),
        ))
    }
}

fn non_empty(v: Option<std::ffi::OsString>) -> Option<std::ffi::OsString> {
    v.filter(|s| !s.is_empty())
}

/// The data directory from the configured value and the environment.
/// Pure, so it can be tested without touching the process environment.
fn resolve_data_dir(
    configured: Option<&Path>,
    home: Option<&OsStr>,
    xdg: Option<&OsStr>,
) -> PathBuf {
    let home = home.filter(|h| !h.is_empty()).map(Path::new);
    if let Some(dir) = configured {
        return expand_tilde(dir, home);
    }
    if let Some(xdg) = xdg.map(Path::new).filter(|p| p.is_absolute()) {
        return xdg.join("lanswarm");
    }
    match home {
        Some(home) => home.join(".local").join("share").join("lanswarm"),
        None => PathBuf::from("lanswarm-data"),
    }
}

/// The swarm key path from the configured value: `~` expanded, relative
/// paths inside `data_dir`. Pure, for tests.
fn resolve_swarm_key(configured: &Path, data_dir: &Path, home: Option<&OsStr>) -> PathBuf {
    let home = home.filter(|h| !h.is_empty()).map(Path::new);
    let p = expand_tilde(configured, home);
    if p.is_relative() {
        data_dir.join(p)
    } else {
        p
    }
}

/// `p` as written in the config file `file`: a relative path (not starting
/// with `~`) is made absolute against the file's directory.
fn relative_to_file(p: &Path, file: &Path) -> PathBuf {
    if p.is_absolute() || p.starts_with("~") {
        return p.to_owned();
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .join(p)
}

/// Whether the document sets the key at `path` (by table names).
fn has_key(root: &DeTable<'_>, path: &[&str]) -> bool {
    let mut table = root;
    for (i, name) in path.iter().enumerate() {
        let Some((_, v)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            return false;
        };
        if i + 1 == path.len() {
            return true;
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return false,
        }
    }
    false
}

/// Replaces a leading `~` (alone or followed by a separator) with `home`.
fn expand_tilde(p: &Path, home: Option<&Path>) -> PathBuf {
    let Some(home) = home else {
        return p.to_owned();
    };
    match p.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_the_default_config() {
        let c = parse("").unwrap();
        assert_eq!(
            c,
            Config {
                origin: Some("test.toml".to_owned()),
                ..Config::default()
            }
        );
        Config::default().validate().unwrap();
        assert_eq!(c.lend.memory, Amount::Percent(75.0));
        assert_eq!(c.network.mdns_ttl, Duration::from_secs(6));
        assert_eq!(c.network.forget_after, Duration::from_secs(300));
        assert_eq!(c.network.degraded_rtt, Duration::from_millis(500));
        assert_eq!(c.network.degraded_cpu, None);
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:7700");
    }

    #[test]
    fn degraded_thresholds_parse() {
        let c: Config =
            toml::from_str("[network]\ndegraded_rtt = \"250ms\"\ndegraded_cpu = 90").unwrap();
        c.validate().unwrap();
        assert_eq!(c.network.degraded_rtt, Duration::from_millis(250));
        assert_eq!(c.network.degraded_cpu, Some(90));
    }

    #[test]
    fn elastic_forecast_policy_parses_and_bad_values_name_the_key() {
        let d = parse("").unwrap();
        assert_eq!(
            d.elastic.policy().mode,
            crate::core::elastic::ElasticMode::Reactive,
            "reactive by default, so nothing changes on upgrade"
        );
        let c = parse(
            "[elastic]\nenabled = true\npolicy = \"forecast\"\nhorizon = \"30m\"\n\
             trend_horizon = \"0s\"\nperiod = \"12h\"\nbuckets = 48\nlevel_smoothing = 0.5",
        )
        .unwrap();
        let p = c.elastic.policy();
        assert_eq!(p.mode, crate::core::elastic::ElasticMode::Forecast);
        assert_eq!(p.forecast.horizon_ms, 30 * 60_000);
        assert_eq!(p.forecast.trend_horizon_ms, 0);
        assert_eq!(p.forecast.period_ms, 12 * 3_600_000);
        assert_eq!(p.forecast.buckets, 48);
        assert_eq!(p.forecast.level_smoothing, 0.5);
        assert_eq!(p.validate(), Ok(()));
        for (text, key) in [
            ("horizon = \"0s\"", "elastic.horizon"),
            ("horizon = \"30d\"", "elastic.horizon"),
            ("trend_horizon = \"1h\"", "elastic.trend_horizon"),
            ("period = \"8d\"", "elastic.period"),
            ("buckets = 0", "elastic.buckets"),
            ("buckets = 100000", "elastic.buckets"),
            ("level_smoothing = 0", "elastic.level_smoothing"),
            ("trend_smoothing = 1.5", "elastic.trend_smoothing"),
            ("season_smoothing = -0.2", "elastic.season_smoothing"),
        ] {
            let e = err(&format!("[elastic]\npolicy = \"forecast\"\n{text}"));
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = err("[elastic]\npolicy = \"psychic\"");
        assert!(e.contains("policy") && e.contains("psychic"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = Config {
            name: Some("n1".into()),
            ..Config::default()
        };
        c.lend.memory = Amount::Absolute(12 * 1024);
        c.lend.cpu_cores = CpuAmount::Count(3);
        c.lend.gpus = GpuSelection::Only(vec![0, 2]);
        c.resources.gpus.push(SyntheticGpu {
            name: "A100".into(),
            memory: 40 * 1024,
            compute_capability: None,
        });
        c.resources.custom.insert("db-connections".into(), 20);
        c.resources.memory = Some(32 * 1024);
        c.location.latitude = Some(52.52);
        c.location.longitude = Some(13.4);
        c.strategy.weights.insert("peer.with.dots".into(), 3);
        let text = toml::to_string(&c).unwrap();
        let back = parse(&text).unwrap();
        assert_eq!(
            back,
            Config {
                origin: Some("test.toml".into()),
                ..c
            },
            "{text}"
        );
    }

    #[test]
    fn amounts_parse() {
        let c = parse(
            "[lend]\ncpu_cores = \"all\"\nmemory = \"12GiB\"\ndisk = 2048\ngpu_memory = \"90%\"\ngpus = [0, 1]",
        )
        .unwrap();
        assert_eq!(c.lend.cpu_cores, CpuAmount::All);
        assert_eq!(c.lend.memory, Amount::Absolute(12 * 1024));
        assert_eq!(c.lend.disk, Amount::Absolute(2048));
        assert_eq!(c.lend.gpu_memory, Amount::Percent(90.0));
        assert_eq!(c.lend.gpus, GpuSelection::Only(vec![0, 1]));
        let c = parse("[lend]\ncpu_cores = 2\ngpus = \"none\"\nmemory = \"all\"").unwrap();
        assert_eq!(c.lend.cpu_cores, CpuAmount::Count(2));
        assert_eq!(c.lend.gpus, GpuSelection::None);
        assert_eq!(c.lend.memory, Amount::All);
        assert_eq!(
            parse("[lend]\ngpus = []").unwrap().lend.gpus,
            GpuSelection::None
        );
    }

    #[test]
    fn amounts_resolve() {
        assert_eq!(Amount::Percent(75.0).resolve(1000), 750);
        assert_eq!(Amount::Percent(33.3).resolve(10), 3);
        assert_eq!(Amount::All.resolve(7), 7);
        assert_eq!(Amount::Absolute(9).resolve(7), 9);
        assert_eq!(CpuAmount::Auto.resolve(8), 7);
        assert_eq!(CpuAmount::Auto.resolve(1), 1);
        assert_eq!(CpuAmount::Auto.resolve(0), 0);
        assert_eq!(CpuAmount::Percent(10.0).resolve(4), 1);
        assert_eq!(CpuAmount::Percent(0.0).resolve(4), 0);
        assert_eq!(CpuAmount::Percent(50.0).resolve(8), 4);
    }

    #[test]
    fn bad_amount_names_file_key_and_problem() {
        let e = err("name = \"x\"\n\n[lend]\nmemory = \"lots\"\n");
        assert_eq!(
            e,
            "test.toml:4:10: lend.memory: expected \"all\", a percentage like \"75%\" or a size like \"12GiB\", got \"lots\""
        );
        let e = err("[lend]\ncpu_cores = \"many\"");
        assert!(e.contains("lend.cpu_cores: expected \"auto\""), "{e}");
        let e = err("[lend]\ngpus = \"some\"");
        assert!(e.contains("lend.gpus: expected \"all\", \"none\""), "{e}");
        let e = err("[lend]\ngpus = [0, \"x\"]");
        assert!(e.contains("lend.gpus"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_path() {
        let e = err("[lend]\nmemroy = \"1GiB\"\n");
        assert!(
            e.starts_with("test.toml:2:1: lend.memroy: unknown field `memroy`"),
            "{e}"
        );
        let e = err("nmae = \"x\"");
        assert!(e.starts_with("test.toml:1:1: nmae: unknown field"), "{e}");
        let e = err("[[resources.gpus]]\nmemory = \"1GiB\"\n[[resources.gpus]]\nmemory = \"2GiB\"\nbogus = 1\n");
        assert!(
            e.contains(":5:1: resources.gpus[1].bogus: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("[api]\nlisten = \"127.0.0.1:7700\n").unwrap_err();
        match &e {
            ConfigError::Parse { line, .. } => assert_eq!(*line, 2, "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
        let e = err("[lend\n");
        assert!(e.starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = err("[network]\nmdns = \"yes\"");
        assert!(
            e.contains("test.toml:2:8: network.mdns: invalid type"),
            "{e}"
        );
        let e = err("[network]\nlisten = [\"/ip4/0.0.0.0/tcp/0\", \"nonsense\"]");
        assert!(e.contains("network.listen[1]: expected a multiaddr"), "{e}");
        let e = err("[api]\nlisten = \"localhost\"");
        assert!(
            e.contains("api.listen: expected an IP address and port"),
            "{e}"
        );
        let e = err("[leases]\ndefault = \"5 minutes-ish\"");
        assert!(e.contains("leases.default: invalid duration"), "{e}");
        let e = err("[resources]\nmemory = \"32XB\"");
        assert!(e.contains("resources.memory: invalid size \"32XB\""), "{e}");
        let e = err("[[resources.gpus]]\nname = \"x\"");
        assert!(
            e.contains("resources.gpus[0]: missing field `memory`"),
            "{e}"
        );
        let e = err("[[tasks.templates]]\nname = \"x\"\nargv = [\"ls\"]\ncommand = \"ls\"");
        assert!(
            e.contains("test.toml:4:1: tasks.templates[0].command: unknown field `command`"),
            "{e}"
        );
        let e = err("[[tasks.templates]]\nname = \"x\"");
        assert!(
            e.contains("tasks.templates[0]: missing field `argv`"),
            "{e}"
        );
        let e = err("[tasks]\nisolation = \"docker\"");
        assert!(
            e.contains("tasks.isolation: unknown variant `docker`"),
            "{e}"
        );
        let e = err("[[tasks.templates]]\nname = \"x\"\nargv = [\"ls\"]\nmax_output = \"1K\"");
        assert!(
            e.contains("tasks.templates[0].max_output: invalid size"),
            "{e}"
        );
        let e = err("[models]\napi = \"grpc\"");
        assert!(e.contains("models.api: unknown variant `grpc`"), "{e}");
    }

    #[test]
    fn tasks_and_model_server_are_read() {
        let c = parse(
            r#"
[models]
served = ["llama3"]
server = "http://127.0.0.1:11434"
api = "openai"
refresh = "30s"
timeout = "10m"

[tasks]
isolation = "rlimit"
max_running = 4
keep_results = "1h"

[[tasks.templates]]
name = "square"
description = "Squares n"
argv = ["python3", "square.py", "--n={n}"]
env = { PYTHONUNBUFFERED = "1" }
workdir = "/srv/lanswarm"
timeout = "30s"
max_output = "64KiB"
[tasks.templates.params.n]
type = "int"
min = 0
max = 1000000
default = 2
"#,
        )
        .unwrap();
        assert_eq!(c.models.server.as_deref(), Some("http://127.0.0.1:11434"));
        assert_eq!(c.models.api, ModelApi::Openai);
        assert_eq!(c.models.refresh, Duration::from_secs(30));
        assert_eq!(c.models.timeout, Duration::from_secs(600));
        assert_eq!(c.tasks.isolation, crate::core::tasks::TaskIsolation::Rlimit);
        assert_eq!(c.tasks.max_running, 4);
        let t = c.tasks.template("square").unwrap();
        assert_eq!(t.max_output, 64 * 1024);
        assert_eq!(t.timeout, Duration::from_secs(30));
        assert_eq!(t.params["n"].default.as_deref(), Some("2"));
        let argv = t
            .render(&[("n".to_owned(), "12".to_owned())].into_iter().collect())
            .unwrap();
        assert_eq!(argv, ["python3", "square.py", "--n=12"]);
        // Defaults: no server, ollama, 10s, 5m; no templates.
        let d = parse("").unwrap();
        assert_eq!(d.models.server, None);
        assert_eq!(d.models.api, ModelApi::Ollama);
        assert_eq!(d.models.refresh, Duration::from_secs(10));
        assert_eq!(d.models.timeout, Duration::from_secs(300));
        assert!(d.tasks.templates.is_empty());
        assert_eq!(d.tasks.max_running, 16);
        // Round trip, templates included.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c, "{text}");
        // The example workstation's templates render as documented.
        let c = parse(include_str!("../swarm-config/gpu-workstation.toml")).unwrap();
        assert_eq!(c.tasks.template_names(), ["hello", "square", "finetune"]);
        assert_eq!(c.models.server.as_deref(), Some("http://127.0.0.1:11434"));
        let hello = c.tasks.template("hello").unwrap();
        let argv = hello
            .render(
                &[("who".to_owned(), "$(reboot)".to_owned())]
                    .into_iter()
                    .collect(),
            )
            .unwrap();
        assert_eq!(
            argv,
            [
                "sh",
                "-c",
                "echo \"hello, $1 (GPUs: ${CUDA_VISIBLE_DEVICES:-none})\"",
                "sh",
                "$(reboot)"
            ]
        );
        let ft = c.tasks.template("finetune").unwrap();
        let argv = ft
            .render(
                &[("dataset".to_owned(), "dolly".to_owned())]
                    .into_iter()
                    .collect(),
            )
            .unwrap();
        assert_eq!(
            argv[2..],
            [
                "--dataset",
                "dolly",
                "--epochs=1",
                "--lr=0.0002",
                "--fp16=true"
            ]
        );
        // Other URL shapes that are fine.
        for url in [
            "http://gpu-box:8000/v1",
            "http://[::1]:11434/",
            "http://localhost",
        ] {
            parse(&format!("[models]\nserver = \"{url}\"")).unwrap();
        }
    }

    #[test]
    fn validation_errors_name_file_key_and_problem() {
        let cases = [
            ("[location]\nlatitude = 91.0\nlongitude = 0.0", "test.toml:2:1: location.latitude: must be between -90 and 90"),
            ("[location]\nlatitude = 1.0\nlongitude = -181", "location.longitude: must be between -180 and 180"),
            ("[location]\nlatitude = 1.0", "location.longitude: must be set together"),
            ("[lend]\nmemory = \"150%\"", "test.toml:2:1: lend.memory: percentage must be between 0% and 100%, got 150%"),
            ("[lend]\ngpu_memory = \"-5%\"", "lend.gpu_memory: percentage"),
            ("[lend]\ngpus = [1, 1]", "lend.gpus[1]: GPU 1 is listed twice"),
            ("[roles]\ndefault = \"root\"", "roles: the default role: unknown role \"root\""),
            ("[roles.peers]\n\"not-a-peer\" = \"viewer\"", "roles.peers: \"not-a-peer\" is not a peer id"),
            ("[roles.groups]\nlab = \"superuser\"", "roles: group \"lab\": unknown role \"superuser\""),
            ("[roles.custom]\nadmin = [\"view\"]", "built in and cannot be redefined"),
            ("[api]\ntoken = \"\"", "api.token: must not be empty"),
            ("[leases]\nmin = \"0s\"", "leases.min: must be more than 0s"),
            ("[leases]\ndefault = \"2h\"", "leases.default: must be at most leases.max (1h), got 2h"),
            ("[leases]\nmin = \"10m\"", "leases.default: must be at least leases.min (10m), got 5m"),
            ("[leases]\nmax_leases = 0", "leases.max_leases"),
            ("[network]\nlisten = []", "network.listen: needs at least one address"),
            ("name = \"\"", "test.toml:1:1: name: must not be empty"),
            (&format!("name = \"{}\"", "x".repeat(65)), "name: must be at most 64 characters, got 65"),
            ("[models]\nserved = [\"llama3\", \" \"]", "test.toml:2:21: models.served[1]: model names must not be empty"),
            ("[resources.custom]\n\"DB conns\" = 3", "test.toml:2:1: resources.custom.\"DB conns\": custom resource names"),
            ("[strategy]\ndefault = \"fastest\"", "strategy.default: unknown strategy \"fastest\"; expected one of round-robin"),
            ("[strategy.weights]\nnode-a = 1001", "test.toml:2:1: strategy.weights.node-a: weights must be between 0 and 1000, got 1001"),
            ("[log]\nlevel = \"\"", "log.level: must not be empty"),
            ("[history]\nretention = \"30s\"", "test.toml:2:1: history.retention: must be between 1m and 3650d, got 30s"),
            ("[history]\nretention = \"4000d\"", "history.retention: must be between 1m and 3650d"),
            ("[history]\nmax_events = 0", "history.max_events: must be between 1 and 10000000, got 0"),
            ("[network]\nannounce_debounce = \"10s\"", "network.announce_debounce: must be shorter"),
            ("[network]\nforget_after = \"2s\"", "network.forget_after: must be at least 10s, got 2s"),
            ("[network]\ndegraded_rtt = \"0s\"", "network.degraded_rtt: must be between 1ms and 1m, got 0s"),
            ("[network]\ndegraded_cpu = 150", "network.degraded_cpu: must be a percentage from 1 to 100, got 150"),
            ("[network]\ndegraded_cpu = 0", "network.degraded_cpu: must be a percentage from 1 to 100, got 0"),
            ("[network]\nlisten = [\"/ip4/0.0.0.0/tcp/0/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA\"]", "network.listen[0]: a listen address must not name a peer"),
            ("[[resources.gpus]]\nmemory = 0", "resources.gpus[0].memory: must be more than 0"),
            ("[lend]\nweight = 0", "lend.weight: must be between 1 and 1000"),
            ("[models]\nserver = \"ftp://127.0.0.1:11434\"", "test.toml:2:1: models.server: expected an http:// URL like \"http://127.0.0.1:11434\", got \"ftp://127.0.0.1:11434\""),
            ("[models]\nserver = \"localhost:11434\"", "models.server: expected an http:// URL"),
            ("[models]\nserver = \"http://\"", "models.server: expected an http:// URL"),
            ("[models]\nserver = \"https://gpu-box:11434\"", "models.server: expected an http:// URL like \"http://127.0.0.1:11434\", got \"https://gpu-box:11434\": lanswarm is built without TLS"),
            ("[models]\nrefresh = \"500ms\"", "test.toml:2:1: models.refresh: must be between 1s and 1d, got 500ms"),
            ("[models]\ntimeout = \"0s\"", "models.timeout: must be more than 0s"),
            ("[tasks]\nmax_running = 0", "test.toml:2:1: tasks.max_running: must be between 1 and 4096, got 0"),
            ("[tasks]\ncgroup_parent = \"lanswarm.slice\"", "tasks.cgroup_parent: must be an absolute path"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = []", "test.toml:3:1: tasks.templates[0].argv: must name a program"),
            ("[[tasks.templates]]\nname = \"Hello World\"\nargv = [\"echo\"]", "test.toml:2:1: tasks.templates[0].name: \"Hello World\" is not a template name"),
            ("[[tasks.templates]]\nname = \"a\"\nargv = [\"true\"]\n[[tasks.templates]]\nname = \"a\"\nargv = [\"false\"]", "test.toml:5:1: tasks.templates[1].name: template \"a\" is declared twice (also templates[0])"),
            ("[[tasks.templates]]\nname = \"a\"\nargv = [\"true\"]\n[[tasks.templates]]\nname = \"echo\"\nargv = [\"sh\", \"-c\", \"echo {msg}\"]\nparams.msg = {}", "test.toml:6:21: tasks.templates[1].argv[2]: a placeholder inside a shell script would let a parameter run as shell code; pass it as a positional argument instead (argv = [\"sh\", \"-c\", \"echo \\\"$1\\\"\", \"sh\", \"{msg}\"])"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"{prog}\"]\nparams.prog = {}", "tasks.templates[0].argv[0]: the program must be fixed"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"echo\", \"{msg}\"]", "test.toml:3:17: tasks.templates[0].argv[1]: placeholder {msg} names no declared parameter; declare it under [tasks.templates.params.msg] (declared: no parameters)"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"awk\", \"{print $1}\"]", "tasks.templates[0].argv[1]: `{print $1}` is not a placeholder"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"sq\", \"{n}\"]\n[tasks.templates.params.n]\ntype = \"int\"\ndefault = \"ten\"", "test.toml:6:1: tasks.templates[0].params.n.default: expected an integer, got \"ten\""),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"sq\", \"{n}\"]\nparams.n = { type = \"int\", min = 5, max = 1 }", "tasks.templates[0].params.n.max: must be at least min (5), got 1"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"true\"]\nenv = { CUDA_VISIBLE_DEVICES = \"0\" }", "test.toml:4:9: tasks.templates[0].env.CUDA_VISIBLE_DEVICES: is set by the node"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"true\"]\nmax_output = \"8MiB\"", "test.toml:4:1: tasks.templates[0].max_output: must be at most 4MiB (a result must fit one task message), got 8MiB"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"true\"]\ntimeout = \"0s\"", "tasks.templates[0].timeout: must be more than 0s"),
            ("[[tasks.templates]]\nname = \"x\"\nargv = [\"true\"]\nworkdir = \"jobs\"", "tasks.templates[0].workdir: must be an absolute path"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{text}: {e:?}");
            assert!(
                e.to_string().contains(want),
                "{text}:\n got  {e}\n want {want}"
            );
            assert!(e.to_string().starts_with("test.toml"), "{e}");
        }
    }

    #[test]
    fn the_history_section_sets_retention_and_rejects_bad_values() {
        let c = parse("").unwrap();
        assert_eq!(c.history.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.history.max_events, 100_000);
        let c = parse("[history]\nretention = \"7d\"\nmax_events = 500").unwrap();
        assert_eq!(c.history.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.history.max_events, 500);
        for text in [
            "[history]\nretention = \"5 parsecs\"",
            "[history]\nmax_events = -1",
            "[history]\nkeep = 3",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.to_string().contains("history"), "{text}: {e}");
        }
    }

    #[test]
    fn the_accounting_section_sets_prices_and_rejects_bad_values() {
        let c = parse("").unwrap();
        assert_eq!(c.accounting.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.accounting.price, None);
        let c = parse(
            "[accounting]\nretention = \"30d\"\ncurrency = \"EUR\"\n[accounting.price]\n\
             cpu_core_hour = 0.02\nmemory_gib_hour = 0.005\ngpu_hour = 0.5\ncustom = { licenses = 1 }",
        )
        .unwrap();
        assert_eq!(c.accounting.currency.as_deref(), Some("EUR"));
        let p = c.accounting.price.unwrap();
        assert_eq!(p.cpu_core_hour, 0.02);
        assert_eq!(p.gpu_hour, 0.5);
        assert_eq!(p.custom.get("licenses"), Some(&1.0));
        for (text, key) in [
            ("[accounting]\nretention = \"5m\"", "accounting.retention"),
            ("[accounting]\ncurrency = \"\"", "accounting.currency"),
            ("[accounting]\ncurrency = \"€ 1\"", "accounting.currency"),
            (
                "[accounting.price]\ncpu_core_hour = -0.5",
                "accounting.price.cpu_core_hour",
            ),
            (
                "[accounting.price]\ngpu_hour = nan",
                "accounting.price.gpu_hour",
            ),
            (
                "[accounting.price]\ncustom = { x = 1e12 }",
                "accounting.price.custom.x",
            ),
            ("[accounting.price]\ncpu_hour = 1", "accounting"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn validate_uses_the_origin() {
        let mut c = parse("").unwrap();
        c.location.latitude = Some(-100.0);
        c.location.longitude = Some(0.0);
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), Some("location.latitude"));
        assert!(
            e.to_string()
                .starts_with("test.toml: location.latitude: must be"),
            "{e}"
        );
    }

    #[test]
    fn roles_section_parses_into_a_policy() {
        let peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let c = parse(&format!(
            "[roles]\ndefault = \"user\"\n[roles.custom]\nrunner = [\"view\", \"run_task\"]\n\
             [roles.peers]\n\"{peer}\" = \"runner\"\n[roles.groups]\nlab = \"operator\""
        ))
        .unwrap();
        let p = c.role_policy();
        assert_eq!(p.default_role, "user");
        assert_eq!(
            p.peers.get(&NodeId(peer.into())).map(String::as_str),
            Some("runner")
        );
        assert_eq!(p.role("runner").map(|r| r.len()), Some(2));
        assert_eq!(
            Config::default().role_policy(),
            crate::core::roles::RolePolicy::default()
        );
        // An unknown permission is refused by name.
        let e = parse("[roles.custom]\nrunner = [\"fly\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("roles.custom") && e.contains("fly"), "{e}");
    }

    #[test]
    fn non_loopback_api_with_token_is_fine() {
        let c = parse("[api]\nlisten = \"0.0.0.0:7700\"\ntoken = \"s3cret-token\"").unwrap();
        assert!(format!("{c:?}").contains("<redacted>"));
        assert!(!format!("{c:?}").contains("s3cret"));
        parse("[api]\nlisten = \"[::1]:7700\"").unwrap();
    }

    #[test]
    fn bootstrap_with_and_without_peer_id() {
        let c = parse(
            "[network]\nbootstrap = [\"/ip4/10.0.0.2/tcp/4001\", \"/ip4/10.0.0.3/udp/4001/quic-v1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA\"]",
        )
        .unwrap();
        assert_eq!(c.network.bootstrap.len(), 2);
    }

    #[test]
    fn data_dir_resolution() {
        let home = Some(OsStr::new("/home/u"));
        assert_eq!(
            resolve_data_dir(None, home, None),
            PathBuf::from("/home/u/.local/share/lanswarm")
        );
        assert_eq!(
            resolve_data_dir(None, home, Some(OsStr::new("/xdg"))),
            PathBuf::from("/xdg/lanswarm")
        );
        assert_eq!(
            resolve_data_dir(None, home, Some(OsStr::new("relative"))),
            PathBuf::from("/home/u/.local/share/lanswarm")
        );
        assert_eq!(
            resolve_data_dir(None, None, None),
            PathBuf::from("lanswarm-data")
        );
        assert_eq!(
            resolve_data_dir(Some(Path::new("~/swarm")), home, None),
            PathBuf::from("/home/u/swarm")
        );
        assert_eq!(
            resolve_data_dir(Some(Path::new("~")), home, None),
            PathBuf::from("/home/u")
        );
        assert_eq!(
            resolve_data_dir(Some(Path::new("/srv/x")), home, None),
            PathBuf::from("/srv/x")
        );
        assert_eq!(
            resolve_data_dir(Some(Path::new("~other/x")), home, None),
            PathBuf::from("~other/x")
        );
    }

    #[test]
    fn key_paths_display_and_parse() {
        let p = KeyPath(vec![
            Seg::Key("resources".into()),
            Seg::Key("gpus".into()),
            Seg::Index(1),
            Seg::Key("memory".into()),
        ]);
        assert_eq!(p.to_string(), "resources.gpus[1].memory");
        assert_eq!(KeyPath::parse("resources.gpus[1].memory"), p);
        assert_eq!(KeyPath(vec![Seg::Key("a b".into())]).to_string(), "\"a b\"");
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, text.find('=').unwrap()), (1, 3));
        assert_eq!(line_col(text, text.rfind('=').unwrap()), (2, 4));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    // --- network.swarm_key (private swarm) ---

    #[test]
    fn swarm_key_makes_the_default_listen_tcp_only() {
        let open = parse("").unwrap();
        assert!(open.network.listen.iter().any(is_quic), "QUIC by default");
        assert_eq!(open.network.swarm_key, None);

        let private = parse("[network]\nswarm_key = \"/etc/lanswarm/swarm.key\"").unwrap();
        assert_eq!(
            private.network.listen,
            NetworkConfig::private_default_listen()
        );
        assert!(!private.network.listen.iter().any(is_quic));
        assert_eq!(
            private.network.swarm_key.as_deref(),
            Some(Path::new("/etc/lanswarm/swarm.key"))
        );
        // An explicit TCP listen list is kept as written.
        let c = parse(
            "[network]\nswarm_key = \"k\"\nlisten = [\"/ip4/10.0.0.1/tcp/4001\", \"/ip4/127.0.0.1/tcp/0\"]",
        )
        .unwrap();
        assert_eq!(c.network.listen.len(), 2);
        // Dotted keys count as setting the key too.
        let e = err("network.swarm_key = \"k\"\nnetwork.listen = [\"/ip4/0.0.0.0/udp/0/quic-v1\"]");
        assert!(e.contains("network.listen[0]: QUIC cannot be used"), "{e}");
    }

    #[test]
    fn swarm_key_with_quic_is_rejected_with_file_line_and_key() {
        let cases = [
            (
                "[network]\nswarm_key = \"swarm.key\"\nlisten = [\"/ip4/0.0.0.0/tcp/0\", \"/ip4/0.0.0.0/udp/0/quic-v1\"]",
                "test.toml:3:33: network.listen[1]: QUIC cannot be used with network.swarm_key",
            ),
            (
                "[network]\nswarm_key = \"swarm.key\"\nbootstrap = [\"/ip4/10.0.0.3/udp/4001/quic-v1\"]",
                "test.toml:3:14: network.bootstrap[0]: QUIC cannot be used with network.swarm_key",
            ),
            (
                "[network]\nswarm_key = \"\"",
                "test.toml:2:1: network.swarm_key: must not be empty",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{text}: {e:?}");
            assert!(
                e.to_string().starts_with(want),
                "{text}:\n got  {e}\n want {want}"
            );
        }
        let e = err("[network]\nswarm_key = \"k\"\nlisten = [\"/ip4/0.0.0.0/udp/0/quic-v1\"]");
        assert!(e.contains("remove \"/ip4/0.0.0.0/udp/0/quic-v1\""), "{e}");
        // QUIC without a key stays fine.
        parse("[network]\nlisten = [\"/ip4/0.0.0.0/udp/0/quic-v1\"]").unwrap();
    }

    #[test]
    fn swarm_key_added_after_loading_is_checked_by_validate() {
        // As the daemon does with flags: change a loaded config, validate.
        let mut c = parse("[network]\nswarm_key = \"k\"").unwrap();
        c.network
            .listen
            .push("/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap());
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), Some("network.listen[1]"));
        assert!(
            e.to_string()
                .starts_with("test.toml: network.listen[1]: QUIC"),
            "{e}"
        );
    }

    #[test]
    fn swarm_key_round_trips_through_toml() {
        let c = parse("[network]\nswarm_key = \"/k/swarm.key\"").unwrap();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("swarm_key = \"/k/swarm.key\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c);
        assert!(!toml::to_string(&parse("").unwrap())
            .unwrap()
            .contains("swarm_key"));
    }

    #[test]
    fn swarm_key_paths_resolve_like_the_docs_say() {
        let home = Some(OsStr::new("/home/u"));
        let data = Path::new("/var/lib/lanswarm");
        assert_eq!(
            resolve_swarm_key(Path::new("swarm.key"), data, home),
            PathBuf::from("/var/lib/lanswarm/swarm.key")
        );
        assert_eq!(
            resolve_swarm_key(Path::new("~/keys/swarm.key"), data, home),
            PathBuf::from("/home/u/keys/swarm.key")
        );
        assert_eq!(
            resolve_swarm_key(Path::new("/etc/swarm.key"), data, home),
            PathBuf::from("/etc/swarm.key")
        );
        assert_eq!(
            relative_to_file(
                Path::new("keys/swarm.key"),
                Path::new("/etc/lanswarm/node.toml")
            ),
            PathBuf::from("/etc/lanswarm/keys/swarm.key")
        );
        assert_eq!(
            relative_to_file(
                Path::new("~/swarm.key"),
                Path::new("/etc/lanswarm/node.toml")
            ),
            PathBuf::from("~/swarm.key")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative_to_file(Path::new("swarm.key"), Path::new("node.toml")),
            cwd.join("swarm.key")
        );
    }

    #[test]
    fn load_resolves_a_relative_swarm_key_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"/nonexistent/data\"\n[network]\nswarm_key = \"keys/swarm.key\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        let want = dir.path().join("keys").join("swarm.key");
        assert_eq!(c.network.swarm_key.as_deref(), Some(want.as_path()));
        assert_eq!(c.swarm_key_path(), Some(want));
        // Without a file, a relative path lives in the data directory.
        let c = parse("data_dir = \"/srv/ls\"\n[network]\nswarm_key = \"swarm.key\"").unwrap();
        assert_eq!(c.swarm_key_path(), Some(PathBuf::from("/srv/ls/swarm.key")));
        assert_eq!(parse("").unwrap().swarm_key_path(), None);
    }

    #[test]
    fn access_and_labels_are_read_and_checked() {
        let peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let c = parse(&format!(
            "[lend]\nallow_remote = false\n[labels]\ntier = \"gpu\"\n\
             [access]\ngroup_peers_only = true\nallow = [\"{peer}\"]"
        ))
        .unwrap();
        let p = c.access_policy();
        assert!(!p.allow_remote && p.group_peers_only);
        assert_eq!(p.allow.len(), 1);
        assert!(p.deny.is_empty());
        assert_eq!(c.labels["tier"], "gpu");

        let e = err("[access]\nallow = [\"not-a-peer\"]");
        assert!(
            e.contains("access.allow") && e.contains("not a peer id"),
            "{e}"
        );
        let e = err(&format!(
            "[access]\nallow = [\"{peer}\"]\ndeny = [\"{peer}\"]"
        ));
        assert!(e.contains("on both access.allow and access.deny"), "{e}");
        let e = err("[access]\nmystery = 1");
        assert!(e.contains("mystery"), "{e}");
        let e = err("[labels]\n\"\" = \"x\"");
        assert!(e.contains("label name"), "{e}");
        let long = "v".repeat(129);
        let e = err(&format!("[labels]\nk = \"{long}\""));
        assert!(e.contains("labels.k") && e.contains("128"), "{e}");
        let many: String = (0..33).map(|i| format!("k{i} = \"v\"\n")).collect();
        let e = err(&format!("[labels]\n{many}"));
        assert!(e.contains("at most 32 labels"), "{e}");
    }
}
