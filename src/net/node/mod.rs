//! The event loop: one task owns the `Swarm` and the core state (ledger,
//! view, placer) and turns libp2p events, timer ticks and handle commands
//! into calls on the core, then carries the results out. No locks: nothing
//! else touches this state.
//!
//! This file holds the settings, `start`, the loop itself and shutdown. The
//! loop's handlers live beside it, one concern each: [`gossip`]
//! (announcements, sync, penalties), [`connect`] (dialling), [`events`]
//! (swarm events), [`owner`] (granting, group commit), [`requester`]
//! (placement, late binding), [`holder`] (renewals, releases, maintenance)
//! and [`commands`] (the handle's commands).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use libp2p::{
    gossipsub, identify,
    identity::Keypair,
    mdns,
    multiaddr::Protocol,
    noise, ping,
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::{dial_opts::DialOpts, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::behaviour::{Behaviour, BehaviourConfig, BehaviourEvent};
use super::protocol::{
    decode_exact, node_id_of, peer_id_of, AllocReply, AllocRequest, AllocResponse, Frame,
    SignedAnnouncement, SignedEvent, SyncRequest, SyncResponse, CAPACITY_TOPIC,
    MAX_SYNC_ANNOUNCEMENTS, STATE_TOPIC,
};
use crate::core::access::AccessPolicy;
use crate::core::elastic::{Elastic, ElasticPolicy};
use crate::core::groups::Groups;
use crate::core::ledger::{AllocateInput, LeaseLimits};
use crate::core::placement::{Attempt, Placer, StrategyConfig};
use crate::core::pools::Pools;
use crate::core::sched::{SchedPolicy, Scheduler};
use crate::core::view::{Applied, View, ViewConfig};
use crate::handle::{
    Allocation, AllocationRequest, Allocations, Command, Excluded, Node, NodeError, NodeInfo,
    Penalty, Refusal, ReleaseOutcome, COMMAND_QUEUE,
};
use crate::model::{
    AccessHint, Announcement, Capacity, Denial, DenyReason, GpuInfo, Lease, LeaseId, Location,
    NodeId, NodeStatus,
};
use crate::store::{HeldRecord, Store, WriteBatch};

mod breaker;
mod commands;
mod connect;
mod events;
mod forecast;
mod gossip;
mod health;
mod history;
mod holder;
mod metrics;
mod multi;
mod owner;
mod requester;
mod roles;
mod sched;
mod state;
mod tasks;
mod usage;
mod util;

pub use breaker::{BreakerReport, PeerBreaker};
pub use tasks::{ModelServerSettings, TaskSettings};
pub use usage::{BottleneckReport, NodeBottleneck};
pub use util::DiscoverReport;

/// How often leases are expired, renewed and peers pruned.
const MAINTENANCE_TICK: Duration = Duration::from_millis(250);
/// How often unconnected bootstrap peers are dialled again.
const REDIAL_INTERVAL: Duration = Duration::from_secs(5);
/// Most peers the view holds; announcements from further new nodes are
/// ignored, so a flood of fresh keys cannot exhaust memory.
const MAX_PEERS: usize = 4096;
/// Offences after which a peer is banned.
pub const BAN_AFTER_OFFENCES: u32 = 5;
/// How long a ban lasts.
const BAN_MS: u64 = 10 * 60 * 1000;
/// Most offenders remembered.
const MAX_OFFENDERS: usize = 1024;
/// How long a change waits for others to join its announcement.
const ANNOUNCE_COALESCE: Duration = Duration::from_millis(2);
/// Most swarm events handled before pending grants are written.
const MAX_EVENT_BATCH: usize = 64;
/// How long a connection with no open streams stays up.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a held lease's owner may stay offline before the lease is
/// reported lost (sooner if the lease runs out first).
const LOST_AFTER_OFFLINE_MS: u64 = 5_000;
/// How long shutdown waits for peers to confirm releases.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Everything a node is started with. Built from the TOML config by
/// [`crate::daemon`], or directly by tests.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub keypair: Keypair,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub mdns_ttl: Duration,
    pub announce_interval: Duration,
    pub announce_debounce: Duration,
    /// How long an offline, departed or silent peer stays in the view.
    pub forget_after: Duration,
    /// Ping RTT at or above which a peer is degraded.
    pub degraded_rtt: Duration,
    /// Host CPU use (percent) at or above which a peer is degraded.
    pub degraded_cpu_pct: Option<f32>,
    pub capacity: Capacity,
    pub gpus: Vec<GpuInfo>,
    pub machine_cpu_cores: u32,
    pub machine_memory_mb: u64,
    pub models: Vec<String>,
    pub location: Location,
    pub weight: u32,
    /// Labels announced to peers (pool selectors match them).
    pub labels: BTreeMap<String, String>,
    /// The access policy from the config. The stored policy (changed at
    /// runtime) wins until this one changes; see [`crate::config::AccessConfig`].
    pub access: AccessPolicy,
    /// The roles from the config (`[roles]`); like `access`, the stored
    /// roles (changed at runtime) win until this changes.
    pub roles: crate::core::roles::RolePolicy,
    /// Scheduling policy: preemption, queue, rate limit, reservations.
    pub sched: SchedPolicy,
    /// Elastic sharing of the lendable capacity.
    pub elastic: ElasticPolicy,
    /// Circuit breakers on this node's own requests.
    pub breaker: crate::core::breaker::BreakerPolicy,
    /// Adaptive throttling of the per-peer rate limit.
    pub adaptive: crate::core::adaptive::AdaptivePolicy,
    pub limits: LeaseLimits,
    pub default_lease: Duration,
    pub strategy: StrategyConfig,
    pub store_path: PathBuf,
    pub api_addr: Option<String>,
    /// Most candidates asked for one request (late binding).
    pub max_tries: usize,
    /// Private swarm: with a key, every connection goes through libp2p's
    /// pnet layer and only nodes with the same key can connect. TCP only
    /// (pnet does not cover QUIC). Never logged; its fingerprint is.
    pub swarm_key: Option<libp2p::pnet::PreSharedKey>,
    /// Task templates and the model server: what peers may run here.
    pub tasks: TaskSettings,
    /// Retention of the allocation history (audit log).
    pub history: crate::core::history::HistoryConfig,
    /// Usage accounting: retention and prices (`[accounting]`).
    pub accounting: crate::core::usage::AccountingConfig,
}

impl NodeConfig {
    /// A config for tests and tools: loopback TCP on a free port, no mDNS.
    pub fn for_test(name: &str, capacity: Capacity, store_path: PathBuf) -> Self {
        NodeConfig {
            name: name.to_owned(),
            keypair: Keypair::generate_ed25519(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
            bootstrap: vec![],
            mdns: false,
            mdns_ttl: Duration::from_secs(6),
            announce_interval: Duration::from_secs(2),
            announce_debounce: Duration::from_millis(20),
            forget_after: Duration::from_secs(300),
            degraded_rtt: Duration::from_millis(500),
            degraded_cpu_pct: None,
            capacity,
            gpus: vec![],
            machine_cpu_cores: 8,
            machine_memory_mb: 16 * 1024,
            models: vec![],
            location: Location::default(),
            weight: 1,
            labels: BTreeMap::new(),
            access: AccessPolicy::default(),
            roles: Default::default(),
            sched: SchedPolicy::default(),
            elastic: ElasticPolicy::default(),
            breaker: Default::default(),
            adaptive: Default::default(),
            limits: LeaseLimits::default(),
            default_lease: Duration::from_secs(30),
            strategy: StrategyConfig::default(),
            store_path,
            api_addr: None,
            max_tries: 8,
            swarm_key: None,
            tasks: TaskSettings::default(),
            history: Default::default(),
            accounting: Default::default(),
        }
    }
}

/// An error starting a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("building the transport: {0}")]
    Transport(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Milliseconds since the Unix epoch, from the system clock. The only
/// clock read of the node; the core gets time from here.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Start a node. It runs until `shutdown` is cancelled; join the returned
/// task to wait for a clean exit (leaving announced, store flushed).
pub async fn start(
    cfg: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(Node, tokio::task::JoinHandle<()>), StartError> {
    let store = Store::open(&cfg.store_path)?;
    let bcfg = BehaviourConfig {
        mdns: cfg.mdns,
        mdns_ttl: cfg.mdns_ttl,
        // Pings every 500 ms feed the failure detector (suspect after 2 s
        // of silence, offline after 3 s); a ping not answered within 1.5 s
        // counts as failed.
        ping_interval: Duration::from_millis(500),
    };
    let mut swarm = build_swarm(&cfg, &bcfg)?;
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    }
    let topic = gossipsub::IdentTopic::new(CAPACITY_TOPIC);
    let state_topic = gossipsub::IdentTopic::new(STATE_TOPIC);
    for t in [&topic, &state_topic] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| StartError::Transport(format!("subscribing: {e}")))?;
    }

    let local_id = node_id_of(swarm.local_peer_id());
    let now = now_ms();
    // Tasks of an earlier run of this node that outlived it (killed
    // outright, no cgroup): nothing can claim their results; stop them.
    let (key, value) = crate::exec::orphans::marker(&local_id.0);
    let orphans = crate::exec::orphans::kill_marked(std::path::Path::new("/proc"), &key, &value);
    if !orphans.is_empty() {
        warn!(count = orphans.len(), pids = ?orphans, "killed processes left by tasks of an earlier run");
    }
    let mut sched = Scheduler::new(
        local_id.clone(),
        cfg.capacity.clone(),
        cfg.limits.clone(),
        cfg.sched.clone(),
    );
    let ledger = sched.ledger_mut();
    let stored = store.granted()?;
    let n_stored = stored.len();
    let dropped = ledger.restore(stored, now);
    if !dropped.is_empty() {
        store.apply(&WriteBatch {
            delete_granted: dropped.iter().map(|l| l.lease_id.clone()).collect(),
            history: dropped
                .iter()
                .map(|l| history::expired_while_down(l, now))
                .collect(),
            ..Default::default()
        })?;
    }
    let requester = sched::restore(&store, &mut sched, &cfg.sched, now)?;
    let swarm_state = state::restore_state(&store)?;
    let policy = state::restore_policy(&store, &cfg.access)?;
    let roles = roles::restore_roles(&store, &cfg.roles)?;
    let held: BTreeMap<LeaseId, Held> = store
        .held()?
        .into_iter()
        .map(|rec| {
            (
                rec.lease.lease_id.clone(),
                Held {
                    renew_at_ms: now,
                    rec,
                    renewing: false,
                },
            )
        })
        .collect();
    info!(
        node = %local_id,
        name = %cfg.name,
        restored = n_stored - dropped.len(),
        dropped = dropped.len(),
        held = held.len(),
        groups = swarm_state.groups.groups().len(),
        pools = swarm_state.pools.pools().len(),
        "node starting"
    );

    let announce_ms = cfg.announce_interval.as_millis() as u64;
    let view_cfg = ViewConfig {
        stale_after_ms: announce_ms * 2 + 1_000,
        offline_after_ms: announce_ms * 4 + 2_000,
        forget_after_ms: (cfg.forget_after.as_millis() as u64).max(announce_ms * 4 + 2_000),
        health: crate::core::health::HealthConfig {
            forget_after_ms: cfg.forget_after.as_millis() as u64,
            degraded_rtt_ms: cfg.degraded_rtt.as_secs_f64() * 1000.0,
            degraded_cpu_pct: cfg.degraded_cpu_pct,
            ..Default::default()
        },
    };
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (metrics, registry) = crate::metrics::Metrics::new();
    let (replaced_tx, replaced_rx) = mpsc::unbounded_channel();
    let mut el = EventLoop {
        view: View::new(placeholder_announcement(&local_id), view_cfg),
        swarm,
        topic,
        state_topic,
        state: swarm_state,
        policy,
        roles,
        rx,
        sched,
        tickets: requester.tickets,
        ended: std::collections::VecDeque::new(),
        held_reservations: requester.reservations,
        reserving: HashMap::new(),
        posting: HashMap::new(),
        multis: BTreeMap::new(),
        tasks: tasks::Tasks::new(cfg.tasks.clone(), cfg.models.clone()),
        util: Default::default(),
        metrics: metrics::LoopMetrics::new(metrics),
        health_rounds: HashMap::new(),
        health_asks: HashMap::new(),
        next_health_round: 0,
        shutting_down: false,
        replace_on_loss: HashMap::new(),
        owner_down_since: HashMap::new(),
        replaced_tx,
        replaced_rx,
        elastic: cfg.elastic.enabled.then(|| {
            let mut e = Elastic::new(
                cfg.elastic.clone(),
                cfg.capacity.clone(),
                cfg.machine_cpu_cores,
                cfg.machine_memory_mb,
            );
            forecast::restore(&store, &mut e);
            e
        }),
        placer: Placer::new(),
        strategy: cfg.strategy.clone(),
        history: history::Recorder::start(&store, &cfg.history, now),
        accounting: usage::Accounting::start(&store, &cfg.accounting, now),
        store: std::sync::Arc::new(store),
        held,
        signed: BTreeMap::new(),
        pending: HashMap::new(),
        placements: HashMap::new(),
        next_placement: 0,
        seq: 0,
        announce_at: None,
        last_announce: None,
        local_id: local_id.clone(),
        duplicate_identity: None,
        seed_counter: now,
        dialing: HashSet::new(),
        mdns_peers: HashSet::new(),
        other_instances: BTreeMap::new(),
        resync_turn: 0,
        offenders: HashMap::new(),
        unanswered: Vec::new(),
        deferred: WriteBatch::default(),
        cpu_usage_pct: 0.0,
        breakers: crate::core::breaker::Breakers::new(cfg.breaker.clone()),
        adaptive: crate::core::adaptive::Adaptive::new(
            cfg.adaptive.clone(),
            cfg.sched.rate.per_sec,
        ),
        instance: rand::random(),
        started_at_ms: now,
        cfg,
    };
    el.sync_group_members();
    el.tasks.spawn_discovery(shutdown.child_token());
    el.announce(false);
    let span = tracing::info_span!("node", id = %short(&local_id));
    let task = tokio::spawn(tracing::Instrument::instrument(el.run(shutdown), span));
    Ok((Node::new(tx, local_id, registry), task))
}

/// Build the swarm: TCP (Noise, Yamux) and QUIC, or, with a swarm key,
/// TCP with the pnet handshake under Noise and no QUIC at all.
fn build_swarm(cfg: &NodeConfig, bcfg: &BehaviourConfig) -> Result<Swarm<Behaviour>, StartError> {
    let transport_err = |e: &dyn std::fmt::Display| StartError::Transport(e.to_string());
    let builder = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone()).with_tokio();
    let Some(psk) = cfg.swarm_key else {
        return Ok(builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport_err(&e))?
            .with_quic()
            .with_behaviour(|key| Behaviour::new(key, bcfg))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build());
    };
    if let Some(addr) = cfg.listen.iter().find(|a| {
        a.iter()
            .any(|p| matches!(p, Protocol::Quic | Protocol::QuicV1 | Protocol::Udp(_)))
    }) {
        return Err(StartError::Listen {
            addr: addr.to_string(),
            reason: "a private swarm (swarm key) runs over TCP only; pnet does not cover QUIC"
                .to_owned(),
        });
    }
    info!(
        fingerprint = %psk.fingerprint(),
        "private swarm: only nodes with this swarm key can connect (TCP only)"
    );
    Ok(builder
        .with_other_transport(|key| {
            use libp2p::core::{upgrade::Version, Transport};
            let noise = noise::Config::new(key)?;
            let pnet = libp2p::pnet::PnetConfig::new(psk);
            Ok::<_, super::behaviour::BoxError>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| pnet.handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default()),
            )
        })
        .map_err(|e| transport_err(&e))?
        .with_behaviour(|key| Behaviour::new(key, bcfg))
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build())
}

fn short(id: &NodeId) -> &str {
    let s = id.0.as_str();
    &s[s.len().saturating_sub(8)..]
}

fn placeholder_announcement(id: &NodeId) -> Announcement {
    Announcement::placeholder(id.clone())
}

/// A peer that sent invalid messages.
struct Offender {
    offences: u32,
    last_ms: u64,
    banned_until_ms: Option<u64>,
    last_offence: String,
}

/// A lease this node holds, with its renewal schedule.
struct Held {
    rec: HeldRecord,
    renew_at_ms: u64,
    renewing: bool,
}

/// A request being placed: the late-binding walk over ranked candidates.
struct Placement {
    attempt: Attempt,
    req: AllocationRequest,
    request_id: String,
    lease_ms: u64,
    release_at_ms: Option<u64>,
    /// How long the request may wait in an owner's queue, ms.
    wait_ms: u64,
    /// When the request was made, ms.
    created_ms: u64,
    /// Whether the queueing pass (asking one owner to queue it) was made.
    queue_tried: bool,
    /// Full nodes asked as a last resort, which may preempt for it.
    preempt_at: std::collections::BTreeSet<NodeId>,
    excluded: Vec<Excluded>,
    reply: oneshot::Sender<Result<Allocation, NodeError>>,
}

/// What an outbound allocation request is for.
enum Pending {
    Place {
        placement: u64,
        node: NodeId,
    },
    Renew {
        lease_id: LeaseId,
    },
    Release {
        lease_id: LeaseId,
        reply: Option<oneshot::Sender<Result<ReleaseOutcome, NodeError>>>,
    },
    /// A notice to a holder; the answer does not matter.
    Notice,
    /// Holding one part of a multi-node request.
    MultiHold {
        multi: String,
        part: usize,
        node: NodeId,
    },
    /// Confirming one part of a multi-node request.
    MultiConfirm {
        multi: String,
        part: usize,
    },
    /// Booking a reservation on `node`.
    Reserve {
        reserving: u64,
        node: NodeId,
    },
    /// Telling `node` of an event we posted.
    PostEvent {
        post: u64,
        node: NodeId,
    },
}

struct EventLoop {
    cfg: NodeConfig,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    state_topic: gossipsub::IdentTopic,
    /// Groups and pools, replicated by signed events.
    state: state::SwarmState,
    /// This node's access policy, applied to every allocation request.
    policy: AccessPolicy,
    /// What each admitted peer may do here (see [`crate::core::roles`]).
    roles: crate::core::roles::RolePolicy,
    rx: mpsc::Receiver<Command>,
    /// The owner side: leases, queue, reservations, quotas, preemption.
    sched: Scheduler,
    /// Requests of ours waiting in an owner's queue, by ticket.
    tickets: BTreeMap<LeaseId, sched::Ticket>,
    /// Our allocations that owners ended (preempted, timed out), recent
    /// first, for the API.
    ended: std::collections::VecDeque<Allocation>,
    /// Reservations we made on owners.
    held_reservations: BTreeMap<LeaseId, sched::HeldReservation>,
    /// Reservations being placed (late binding over candidates).
    reserving: HashMap<u64, sched::Reserving>,
    /// Events posted here, waiting for the owners told of them.
    posting: HashMap<u64, sched::Posting>,
    /// Elastic sharing, when enabled.
    elastic: Option<Elastic>,
    /// Multi-node requests, by id.
    multis: BTreeMap<String, multi::Multi>,
    /// Tasks we run for peers, and ours running on peers.
    tasks: tasks::Tasks,
    /// Utilization samples and allocation round trips, for the dashboard.
    util: crate::core::utilization::UtilHistory,
    /// Prometheus metrics (`GET /metrics`).
    metrics: metrics::LoopMetrics,
    /// Health-check rounds waiting for answers, and their asks.
    health_rounds: HashMap<u64, health::HealthRound>,
    health_asks: HashMap<OutboundRequestId, health::HealthAsk>,
    next_health_round: u64,
    /// Set once shutdown began (health checks answer `leaving`).
    shutting_down: bool,
    /// Held leases requested with `replace`: the request to place again if
    /// their owner is lost (memory only).
    replace_on_loss: HashMap<LeaseId, AllocationRequest>,
    /// Owners of held leases seen offline or departed, and since when.
    owner_down_since: HashMap<NodeId, u64>,
    /// Replacements placed for lost leases report back here.
    replaced_tx: mpsc::UnboundedSender<(LeaseId, Result<Allocation, String>)>,
    replaced_rx: mpsc::UnboundedReceiver<(LeaseId, Result<Allocation, String>)>,
    view: View,
    placer: Placer,
    strategy: StrategyConfig,
    /// The allocation history's recorder (pruning, bounds).
    history: history::Recorder,
    /// Usage accounting and refusal counts per dimension.
    accounting: usage::Accounting,
    /// Shared with blocking tasks that only read (history queries), so a
    /// long scan never holds up the event loop.
    store: std::sync::Arc<Store>,
    held: BTreeMap<LeaseId, Held>,
    /// The latest signed announcement of every node we know, ourselves
    /// included, for the sync-on-connect swap.
    signed: BTreeMap<NodeId, SignedAnnouncement>,
    pending: HashMap<OutboundRequestId, Pending>,
    placements: HashMap<u64, Placement>,
    next_placement: u64,
    seq: u64,
    announce_at: Option<Instant>,
    last_announce: Option<Instant>,
    local_id: NodeId,
    duplicate_identity: Option<String>,
    seed_counter: u64,
    dialing: HashSet<PeerId>,
    /// Peers mDNS has found whose records have not expired.
    mdns_peers: HashSet<PeerId>,
    /// Signed announcements of other live instances of a node id (copied
    /// data directories), with when they were seen.
    other_instances: BTreeMap<NodeId, (SignedAnnouncement, u64)>,
    resync_turn: usize,
    offenders: HashMap<PeerId, Offender>,
    /// Grants and renewals admitted but not yet durable, with where to
    /// answer them (group commit).
    unanswered: Vec<(AllocResponse, ResponseChannel<AllocReply>)>,
    /// Writes that can wait for the next grant or maintenance tick.
    deferred: WriteBatch,
    cpu_usage_pct: f32,
    /// Circuit breakers on our own requests, per peer.
    breakers: crate::core::breaker::Breakers,
    /// Adaptive throttling of the rate limit peers get here.
    adaptive: crate::core::adaptive::Adaptive,
    /// Random per process, to tell a copy of this node from this node.
    instance: u64,
    started_at_ms: u64,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl EventLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        for addr in self.cfg.bootstrap.clone() {
            self.dial_addr(addr);
        }
        let mut heartbeat = tokio::time::interval(self.cfg.announce_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(MAINTENANCE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync =
            tokio::time::interval((self.cfg.announce_interval * 3).max(Duration::from_secs(2)));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = self.swarm.select_next_some() => {
                    self.on_swarm_event(ev);
                    // Group commit: take what else is ready right now, so
                    // one transaction covers every grant among it.
                    for _ in 0..MAX_EVENT_BATCH {
                        match self.swarm.next().now_or_never() {
                            Some(Some(ev)) => self.on_swarm_event(ev),
                            _ => break,
                        }
                    }
                    self.flush_grants();
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = sleep_opt(self.announce_at) => {
                    self.announce_at = None;
                    self.announce(false);
                }
                _ = heartbeat.tick() => self.announce(false),
                _ = tick.tick() => {
                    self.maintain();
                    self.sample_utilization();
                }
                Some(ev) = self.tasks.next_event() => self.on_runner_event(ev),
                Some((lost, result)) = self.replaced_rx.recv() => self.on_replaced(lost, result),
                _ = redial.tick() => self.redial(),
                _ = resync.tick() => self.resync(),
            }
        }
        self.shutdown().await;
    }

    /// Leave in order: release what we hold, tell peers we are leaving,
    /// give the swarm a moment to flush, then drop everything.
    async fn shutdown(&mut self) {
        info!("shutting down: stopping tasks, releasing held leases, announcing departure");
        self.shutting_down = true;
        self.stop_all_tasks();
        let ids: Vec<LeaseId> = self.held.keys().cloned().collect();
        for id in ids {
            self.release_held(&id, None);
        }
        self.announce(true);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            let releasing = self
                .pending
                .values()
                .any(|p| matches!(p, Pending::Release { .. }));
            if !releasing && Instant::now() + Duration::from_millis(200) >= deadline {
                break;
            }
            tokio::select! {
                ev = self.swarm.select_next_some() => {
                    self.on_swarm_event(ev);
                    self.flush_grants();
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_millis(200)), if !releasing => break,
            }
        }
        self.flush_grants();
        self.flush_deferred();
        self.account(now_ms());
        self.flush_usage();
        info!("node stopped");
    }
}

/// Log a grant, once it is durable.
fn log_grant(lease: &Lease) {
    info!(
        lease = %lease.lease_id,
        holder = %lease.holder,
        cores = lease.cpu_cores,
        memory_mb = lease.memory_mb,
        gpus = lease.gpus.len(),
        "lease granted"
    );
}

/// When to renew: a third of the way through the lease term.
fn renew_time(lease: &Lease) -> u64 {
    lease
        .expires_at_ms
        .saturating_sub(lease.lease_ms.saturating_mul(2) / 3)
}

/// Bounds on a request, checked before anything is asked of anyone.
fn validate_request(req: &AllocationRequest) -> Result<(), String> {
    let r = &req.required_resources;
    if r.gpus_wanted() > 64 {
        return Err(format!("gpu_count {} is more than 64", r.gpu_count));
    }
    if r.preferred_models.len() > 32
        || r.preferred_models
            .iter()
            .any(|m| m.is_empty() || m.len() > 128)
    {
        return Err("preferred_models: at most 32 non-empty names of at most 128 bytes".into());
    }
    if r.custom.len() > 64 || r.custom.keys().any(|k| k.is_empty() || k.len() > 64) {
        return Err("custom: at most 64 resources with names of 1 to 64 bytes".into());
    }
    if req
        .request_id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > 128)
    {
        return Err("request_id: 1 to 128 bytes".into());
    }
    if req.avoid.len() > 1024 || req.avoid.iter().any(|a| a.len() > 128) {
        return Err("avoid: at most 1024 node ids or names".into());
    }
    if req
        .template
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 64)
    {
        return Err("template: 1 to 64 bytes".into());
    }
    if req.task_type.len() > 128 {
        return Err("task_type: at most 128 bytes".into());
    }
    if req.timeout_secs.is_some_and(|s| s > 365 * 24 * 3600) {
        return Err("timeout_secs: at most one year".into());
    }
    if req.duration_secs.is_some_and(|s| s > 10 * 365 * 24 * 3600) {
        return Err("duration_secs: at most ten years".into());
    }
    Ok(())
}
