//! The event loop: one task owns the `Swarm` and the core state (ledger,
//! view, placer) and turns libp2p events, timer ticks and handle commands
//! into calls on the core, then carries the results out. No locks: nothing
//! else touches this state.

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
    SignedAnnouncement, SyncRequest, SyncResponse, CAPACITY_TOPIC, MAX_SYNC_ANNOUNCEMENTS,
};
use crate::core::ledger::{AllocateInput, LeaseLimits, Ledger};
use crate::core::placement::{Attempt, Placer, StrategyConfig};
use crate::core::view::{Applied, View, ViewConfig};
use crate::handle::{
    Allocation, AllocationRequest, Allocations, Command, Excluded, Node, NodeError, NodeInfo,
    NodeResources, Penalty, Refusal, ReleaseOutcome, COMMAND_QUEUE,
};
use crate::model::{
    Announcement, Capacity, Denial, DenyReason, GpuInfo, Lease, LeaseId, Location, NodeId,
    NodeStatus,
};
use crate::store::{HeldRecord, Store, WriteBatch};

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
    pub capacity: Capacity,
    pub gpus: Vec<GpuInfo>,
    pub machine_cpu_cores: u32,
    pub machine_memory_mb: u64,
    pub models: Vec<String>,
    pub location: Location,
    pub weight: u32,
    pub allow_remote: bool,
    pub limits: LeaseLimits,
    pub default_lease: Duration,
    pub strategy: StrategyConfig,
    pub store_path: PathBuf,
    pub api_addr: Option<String>,
    /// Most candidates asked for one request (late binding).
    pub max_tries: usize,
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
            capacity,
            gpus: vec![],
            machine_cpu_cores: 8,
            machine_memory_mb: 16 * 1024,
            models: vec![],
            location: Location::default(),
            weight: 1,
            allow_remote: true,
            limits: LeaseLimits::default(),
            default_lease: Duration::from_secs(30),
            strategy: StrategyConfig::default(),
            store_path,
            api_addr: None,
            max_tries: 8,
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
        ping_interval: Duration::from_secs(5),
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| Behaviour::new(key, &bcfg))
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    }
    let topic = gossipsub::IdentTopic::new(CAPACITY_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| StartError::Transport(format!("subscribing: {e}")))?;

    let local_id = node_id_of(swarm.local_peer_id());
    let now = now_ms();
    let mut ledger = Ledger::new(local_id.clone(), cfg.capacity.clone(), cfg.limits.clone());
    let stored = store.granted()?;
    let n_stored = stored.len();
    let dropped = ledger.restore(stored, now);
    if !dropped.is_empty() {
        store.apply(&WriteBatch {
            delete_granted: dropped.iter().map(|l| l.lease_id.clone()).collect(),
            ..Default::default()
        })?;
    }
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
        "node starting"
    );

    let announce_ms = cfg.announce_interval.as_millis() as u64;
    let view_cfg = ViewConfig {
        stale_after_ms: announce_ms * 2 + 1_000,
        offline_after_ms: announce_ms * 4 + 2_000,
        forget_after_ms: (announce_ms * 30).max(300_000),
    };
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let mut el = EventLoop {
        local_ann: placeholder_announcement(&local_id),
        view: View::new(placeholder_announcement(&local_id), view_cfg),
        swarm,
        topic,
        rx,
        ledger,
        placer: Placer::new(),
        strategy: cfg.strategy.clone(),
        store,
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
        instance: rand::random(),
        started_at_ms: now,
        cfg,
    };
    el.announce(false);
    let span = tracing::info_span!("node", id = %short(&local_id));
    let task = tokio::spawn(tracing::Instrument::instrument(el.run(shutdown), span));
    Ok((Node::new(tx, local_id), task))
}

fn short(id: &NodeId) -> &str {
    let s = id.0.as_str();
    &s[s.len().saturating_sub(8)..]
}

fn placeholder_announcement(id: &NodeId) -> Announcement {
    Announcement {
        node_id: id.clone(),
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
        allow_remote: false,
        leaving: false,
        instance: 0,
        started_at_ms: 0,
    }
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
}

struct EventLoop {
    cfg: NodeConfig,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    rx: mpsc::Receiver<Command>,
    ledger: Ledger,
    view: View,
    placer: Placer,
    strategy: StrategyConfig,
    store: Store,
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
    local_ann: Announcement,
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
                _ = tick.tick() => self.maintain(),
                _ = redial.tick() => self.redial(),
                _ = resync.tick() => self.resync(),
            }
        }
        self.shutdown().await;
    }

    /// Leave in order: release what we hold, tell peers we are leaving,
    /// give the swarm a moment to flush, then drop everything.
    async fn shutdown(&mut self) {
        info!("shutting down: releasing held leases and announcing departure");
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
        info!("node stopped");
    }

    // ----- announcements -------------------------------------------------

    /// Announce a change soon: after a short window that gathers a burst
    /// into one announcement, and no sooner than `announce_debounce` after
    /// the previous one. A lone change goes out at once; under churn a node
    /// announces at most once per `announce_debounce`, which bounds the
    /// signature checks every peer must do.
    fn schedule_announce(&mut self) {
        if self.announce_at.is_none() {
            let now = Instant::now();
            let earliest = self
                .last_announce
                .map_or(now, |t| t + self.cfg.announce_debounce);
            self.announce_at = Some((now + ANNOUNCE_COALESCE).max(earliest));
        }
    }

    fn build_announcement(&mut self, leaving: bool) -> Announcement {
        let now = now_ms();
        self.seq = (self.seq + 1).max(now);
        let peer = *self.swarm.local_peer_id();
        let addrs = self
            .swarm
            .listeners()
            .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a).to_string())
            .take(16)
            .collect();
        Announcement {
            node_id: self.local_id.clone(),
            seq: self.seq,
            issued_at_ms: now,
            name: self.cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            addrs,
            api: self.cfg.api_addr.clone(),
            capacity: self.ledger.capacity().clone(),
            free: self.ledger.free(),
            gpus: self.cfg.gpus.clone(),
            machine_cpu_cores: self.cfg.machine_cpu_cores,
            machine_memory_mb: self.cfg.machine_memory_mb,
            cpu_usage_pct: self.cpu_usage_pct,
            models: self.cfg.models.clone(),
            location: self.cfg.location.clone(),
            weight: self.cfg.weight,
            active_leases: self.ledger.len() as u32,
            allow_remote: self.cfg.allow_remote,
            leaving,
            instance: self.instance,
            started_at_ms: self.started_at_ms,
        }
    }

    fn announce(&mut self, leaving: bool) {
        self.announce_at = None;
        self.last_announce = Some(Instant::now());
        let ann = self.build_announcement(leaving);
        let signed = match SignedAnnouncement::sign(&ann, &self.cfg.keypair) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot sign announcement");
                return;
            }
        };
        let bytes = match postcard::to_stdvec(&signed) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "cannot encode announcement");
                return;
            }
        };
        self.view.set_local(ann.clone());
        self.local_ann = ann;
        self.signed.insert(self.local_id.clone(), signed);
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => debug!(
                seq = self.local_ann.seq,
                free_cores = self.local_ann.free.cpu_cores,
                free_mem_mb = self.local_ann.free.memory_mb,
                leaving,
                "capacity announced"
            ),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!(error = %e, "announcement not published"),
        }
    }

    /// Verify and apply an announcement from the network. Returns whether
    /// it was valid (invalid ones penalise whoever sent them).
    fn accept_announcement(
        &mut self,
        signed: SignedAnnouncement,
        from: Option<&PeerId>,
    ) -> Result<Applied, String> {
        let ann = signed.verify().map_err(|e| e.to_string())?;
        if let Some(from) = from {
            if ann.node_id != node_id_of(from) {
                return Err(format!(
                    "announcement for {} published by {}",
                    ann.node_id, from
                ));
            }
        }
        let id = ann.node_id.clone();
        let addrs: Vec<Multiaddr> = ann.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        if id != self.local_id && self.view.get(&id).is_none() && self.view.len() >= MAX_PEERS {
            return Ok(Applied::Replay);
        }
        if id != self.local_id {
            self.note_other_instance(&ann);
        }
        let applied = if id == self.local_id {
            // Our own announcement echoed back is fine, and so is one from
            // our previous run. A live announcement from another process
            // with our key is a copied data directory.
            if ann.instance != self.instance
                && !ann.leaving
                && ann.issued_at_ms >= self.started_at_ms
            {
                self.report_duplicate(&ann);
            }
            Applied::OwnId
        } else {
            self.view.apply(ann, now_ms())
        };
        if matches!(applied, Applied::New | Applied::Updated) {
            self.signed.insert(id.clone(), signed);
            if let Some(peer) = peer_id_of(&id) {
                if applied == Applied::New {
                    // The connection may have come up before we knew the node.
                    self.view.set_connected(&id, self.swarm.is_connected(&peer));
                }
                for a in addrs {
                    self.swarm.add_peer_address(peer, a);
                }
                self.connect_if_needed(peer);
            }
        }
        Ok(applied)
    }

    /// A third node's part in spotting a copied data directory: two live
    /// processes announcing one identity. Keep the signed announcement of
    /// the instance about to be replaced, so that sync hands it to both
    /// copies, which then see each other (they never connect directly:
    /// mDNS ignores records with one's own peer id, and a third node holds
    /// their two connections as one peer).
    fn note_other_instance(&mut self, ann: &Announcement) {
        let now = now_ms();
        let Some(e) = self.view.get(&ann.node_id) else {
            return;
        };
        let live = now.saturating_sub(e.last_seen_ms) < self.view.config().stale_after_ms;
        if e.ann.instance == ann.instance || e.ann.leaving || ann.leaving || !live {
            return;
        }
        if ann.seq <= e.ann.seq {
            // Older than what we hold, yet another instance: keep this one
            // as the other instance directly.
            return;
        }
        if let Some(old) = self.signed.get(&ann.node_id).cloned() {
            if !self.other_instances.contains_key(&ann.node_id) {
                warn!(
                    node = %ann.node_id,
                    names = ?[&e.ann.name, &ann.name],
                    "two live processes announce the same identity (a copied data directory?)"
                );
            }
            self.other_instances.insert(ann.node_id.clone(), (old, now));
        }
    }

    /// Everything we know, for a sync exchange: every node's latest signed
    /// announcement, plus other live instances of a duplicated identity.
    fn sync_set(&self) -> Vec<SignedAnnouncement> {
        let now = now_ms();
        let fresh = self.view.config().offline_after_ms;
        self.signed
            .values()
            .cloned()
            .chain(
                self.other_instances
                    .values()
                    .filter(|(_, at)| now.saturating_sub(*at) < fresh)
                    .map(|(s, _)| s.clone()),
            )
            .collect()
    }

    /// Anti-entropy: swap full state with one connected peer, in turn.
    /// Repairs lost gossip, and lets copies of one identity find out.
    fn resync(&mut self) {
        let peers: Vec<PeerId> = self
            .view
            .peers()
            .filter_map(|p| peer_id_of(&p.ann.node_id))
            .filter(|p| self.swarm.is_connected(p))
            .collect();
        if peers.is_empty() {
            return;
        }
        self.resync_turn = self.resync_turn.wrapping_add(1);
        let peer = peers[self.resync_turn % peers.len()];
        let req = SyncRequest {
            announcements: self.sync_set(),
        };
        self.swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, Frame::Valid(req));
    }

    fn report_duplicate(&mut self, ann: &Announcement) {
        let msg = format!(
            "another node (name {:?}, addresses {:?}) is using this node's identity {}: \
             its data directory was probably copied; give each node its own data directory",
            ann.name, ann.addrs, self.local_id
        );
        if self.duplicate_identity.as_deref() != Some(msg.as_str()) {
            error!("DUPLICATE IDENTITY: {msg}");
            self.duplicate_identity = Some(msg);
        }
    }

    /// Count an offence against a peer; ban it after
    /// [`BAN_AFTER_OFFENCES`]. Gossipsub's peer score penalises invalid
    /// gossip on its own as well.
    fn penalise(&mut self, peer: PeerId, why: String) {
        let now = now_ms();
        if !self.offenders.contains_key(&peer) && self.offenders.len() >= MAX_OFFENDERS {
            if let Some(oldest) = self
                .offenders
                .iter()
                .filter(|(_, o)| o.banned_until_ms.is_none())
                .min_by_key(|(_, o)| o.last_ms)
                .map(|(p, _)| *p)
            {
                self.offenders.remove(&oldest);
            }
        }
        let o = self.offenders.entry(peer).or_insert(Offender {
            offences: 0,
            last_ms: now,
            banned_until_ms: None,
            last_offence: String::new(),
        });
        o.offences = o.offences.saturating_add(1);
        o.last_ms = now;
        o.last_offence = why.clone();
        warn!(%peer, offences = o.offences, %why, "peer penalised");
        if o.offences >= BAN_AFTER_OFFENCES && o.banned_until_ms.is_none() {
            o.banned_until_ms = Some(now + BAN_MS);
            warn!(%peer, "peer banned for {} s", BAN_MS / 1000);
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    fn lift_bans(&mut self, now: u64) {
        let done: Vec<PeerId> = self
            .offenders
            .iter()
            .filter(|(_, o)| o.banned_until_ms.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            self.offenders.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
            info!(peer = %p, "ban lifted");
        }
    }

    // ----- connections ---------------------------------------------------

    fn dial_addr(&mut self, addr: Multiaddr) {
        let peer = addr.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        });
        if let Some(peer) = peer {
            if self.swarm.is_connected(&peer) || peer == *self.swarm.local_peer_id() {
                return;
            }
        }
        let opts = DialOpts::unknown_peer_id()
            .address(addr.clone())
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%addr, error = %e, "dial failed");
        }
    }

    fn connect_if_needed(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || !self.dialing.insert(peer)
        {
            return;
        }
        // A fresh port for every dial: reusing the listen port lets two
        // peers that find each other at the same instant merge their dials
        // into one TCP simultaneous open, whose handshake then fails.
        if let Err(e) = self
            .swarm
            .dial(DialOpts::peer_id(peer).allocate_new_port().build())
        {
            debug!(%peer, error = %e, "dial failed");
            self.dialing.remove(&peer);
        }
    }

    fn redial(&mut self) {
        for addr in self.cfg.bootstrap.clone() {
            self.dial_addr(addr);
        }
        // Peers mDNS reported are not reported again while their record
        // lives; a dial that failed (a simultaneous open, a peer still
        // starting) is retried here.
        let found: Vec<PeerId> = self.mdns_peers.iter().copied().collect();
        for peer in found {
            self.connect_if_needed(peer);
        }
        let now = now_ms();
        let unconnected: Vec<PeerId> = self
            .view
            .peers()
            .filter(|p| !p.connected && !p.ann.leaving)
            .filter(|p| self.view.status(&p.ann.node_id, now) != Some(NodeStatus::Offline))
            .filter_map(|p| peer_id_of(&p.ann.node_id))
            .collect();
        for peer in unconnected {
            self.connect_if_needed(peer);
        }
    }

    // ----- swarm events --------------------------------------------------

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                // Announce the address at once: peers that connect and sync
                // now must learn where to reach us.
                self.announce(false);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.dialing.remove(&peer_id);
                let id = node_id_of(&peer_id);
                self.view.set_connected(&id, true);
                self.view.touch(&id, now_ms());
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, "connected");
                    if endpoint.is_dialer() {
                        let req = SyncRequest {
                            announcements: self.sync_set(),
                        };
                        self.swarm
                            .behaviour_mut()
                            .sync
                            .send_request(&peer_id, Frame::Valid(req));
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                debug!(peer = %peer_id, "disconnected");
                self.view.set_connected(&node_id_of(&peer_id), false);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(peer) = peer_id {
                    self.dialing.remove(&peer);
                }
                debug!(?peer_id, error = %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut peers = HashSet::new();
                for (peer, addr) in found {
                    self.swarm.add_peer_address(peer, addr);
                    peers.insert(peer);
                }
                self.mdns_peers.extend(peers.iter().copied());
                for peer in peers {
                    debug!(%peer, "found by mDNS");
                    self.connect_if_needed(peer);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, _) in gone {
                    self.mdns_peers.remove(&peer);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = match decode_exact::<SignedAnnouncement>(&message.data) {
                    Err(e) => Err(format!("not a signed announcement: {e}")),
                    Ok(signed) => match message.source {
                        None => Err("unsigned gossip message".to_owned()),
                        Some(src) => self.accept_announcement(signed, Some(&src)),
                    },
                };
                let acceptance = match verdict {
                    Ok(Applied::New | Applied::Updated) => gossipsub::MessageAcceptance::Accept,
                    Ok(_) => gossipsub::MessageAcceptance::Ignore,
                    Err(why) => {
                        self.penalise(propagation_source, format!("invalid announcement: {why}"));
                        gossipsub::MessageAcceptance::Reject
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Alloc(ev) => self.on_alloc_event(ev),
            BehaviourEvent::Sync(ev) => self.on_sync_event(ev),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                if let Ok(rtt) = result {
                    let id = node_id_of(&peer);
                    self.view.set_rtt(&id, rtt.as_secs_f64() * 1000.0);
                    self.view.touch(&id, now_ms());
                }
            }
        }
    }

    fn on_sync_event(&mut self, ev: request_response::Event<Frame<SyncRequest>, SyncResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let request = match request {
                    Frame::Valid(r) => r,
                    // Dropping the channel closes the stream unanswered.
                    Frame::Invalid(why) => {
                        return self.penalise(peer, format!("bad sync frame: {why}"))
                    }
                };
                self.apply_synced(&peer, request.announcements);
                let resp = SyncResponse {
                    announcements: self.sync_set(),
                };
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, resp);
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            } => self.apply_synced(&peer, response.announcements),
            request_response::Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "sync failed")
            }
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.penalise(peer, format!("bad sync frame: {e}")),
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "sync request failed")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn apply_synced(&mut self, from: &PeerId, anns: Vec<SignedAnnouncement>) {
        self.view.touch(&node_id_of(from), now_ms());
        let total = anns.len();
        let mut bad = 0usize;
        for signed in anns.into_iter().take(MAX_SYNC_ANNOUNCEMENTS) {
            if let Err(why) = self.accept_announcement(signed, None) {
                bad += 1;
                debug!(%from, %why, "invalid announcement in sync");
            }
        }
        if bad > 0 || total > MAX_SYNC_ANNOUNCEMENTS {
            self.penalise(
                *from,
                format!("{bad} invalid of {total} announcements in sync"),
            );
        }
    }

    // ----- allocation protocol -------------------------------------------

    fn on_alloc_event(&mut self, ev: request_response::Event<Frame<AllocRequest>, AllocReply>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                Frame::Valid(r) => self.on_alloc_request(peer, r, channel),
                Frame::Invalid(why) => self.penalise(peer, format!("bad allocation frame: {why}")),
            },
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let now = now_ms();
                self.view.observe_free(
                    &node_id_of(&peer),
                    response.free,
                    response.active_leases,
                    now,
                );
                self.on_alloc_response(request_id, Ok(response.answer));
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.on_alloc_response(request_id, Err(error.to_string())),
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.penalise(peer, format!("bad allocation frame: {e}")),
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "allocation request failed")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Owner side: answer a peer's request, in one step on this loop.
    fn on_alloc_request(
        &mut self,
        peer: PeerId,
        request: AllocRequest,
        channel: ResponseChannel<AllocReply>,
    ) {
        let holder = node_id_of(&peer);
        let now = now_ms();
        let response = match request {
            AllocRequest::Allocate {
                request_id,
                req,
                task_type,
                priority,
                lease_ms,
            } => {
                if !self.cfg.allow_remote {
                    AllocResponse::Denied(Denial::new(
                        DenyReason::Forbidden,
                        "this node does not lend to remote peers (lend.allow_remote = false)",
                    ))
                } else if request_id.len() > 128 || task_type.len() > 128 {
                    AllocResponse::Denied(Denial::new(
                        DenyReason::BadRequest,
                        "request_id and task_type are limited to 128 bytes",
                    ))
                } else {
                    let input = AllocateInput {
                        lease_id: LeaseId(uuid::Uuid::new_v4().to_string()),
                        request_id,
                        holder,
                        req,
                        task_type,
                        priority,
                        lease_ms,
                    };
                    match self.ledger.allocate(input, now) {
                        // Answered by `flush_grants`, once it is durable.
                        Ok(lease) => {
                            return self
                                .unanswered
                                .push((AllocResponse::Granted(lease), channel))
                        }
                        Err(d) => AllocResponse::Denied(d),
                    }
                }
            }
            AllocRequest::Renew { lease_id, lease_ms } => {
                match self.ledger.renew(&lease_id, &holder, lease_ms, now) {
                    Ok(lease) => {
                        return self
                            .unanswered
                            .push((AllocResponse::Renewed(lease), channel))
                    }
                    Err(d) => AllocResponse::Denied(d),
                }
            }
            AllocRequest::Release { lease_id } => {
                match self.ledger.release(&lease_id, Some(&holder)) {
                    Ok(Some(lease)) => {
                        self.forget_granted(&[lease]);
                        AllocResponse::Released {
                            lease_id,
                            existed: true,
                        }
                    }
                    Ok(None) => AllocResponse::Released {
                        lease_id,
                        existed: false,
                    },
                    Err(d) => AllocResponse::Denied(d),
                }
            }
        };
        if let AllocResponse::Denied(d) = &response {
            debug!(%peer, reason = %d.reason, message = %d.message, "request denied");
        }
        self.reply(channel, response);
    }

    /// Answer an allocation request, with our free capacity right after it.
    fn reply(&mut self, channel: ResponseChannel<AllocReply>, answer: AllocResponse) {
        let reply = AllocReply {
            answer,
            free: self.ledger.free(),
            active_leases: self.ledger.len() as u32,
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .alloc
            .send_response(channel, reply);
    }

    /// Admit a local request and write it durably before anyone hears of
    /// it. On a storage error the grant is undone.
    fn grant(&mut self, input: AllocateInput, now: u64) -> Result<Lease, Denial> {
        let lease = self.ledger.allocate(input, now)?;
        let mut batch = std::mem::take(&mut self.deferred);
        batch.put_granted.push(lease.clone());
        if let Err(e) = self.store.apply(&batch) {
            error!(error = %e, "cannot write lease; refusing the grant");
            let _ = self.ledger.release(&lease.lease_id, None);
            batch.put_granted.pop();
            self.deferred = batch;
            return Err(Denial::new(DenyReason::StorageError, e.to_string()));
        }
        log_grant(&lease);
        self.schedule_announce();
        Ok(lease)
    }

    /// Group commit: write every grant and renewal admitted since the last
    /// flush (and the deferred writes) in one transaction, then answer
    /// them. Nothing is answered before it is durable (invariant I2).
    fn flush_grants(&mut self) {
        if self.unanswered.is_empty() {
            return;
        }
        let answers = std::mem::take(&mut self.unanswered);
        let mut batch = std::mem::take(&mut self.deferred);
        let deferred_grants = batch.put_granted.len();
        for (resp, _) in &answers {
            if let AllocResponse::Granted(l) | AllocResponse::Renewed(l) = resp {
                batch.put_granted.push(l.clone());
            }
        }
        let result = self.store.apply(&batch);
        if let Err(e) = &result {
            error!(error = %e, "cannot write leases; refusing the grants");
            batch.put_granted.truncate(deferred_grants);
            self.deferred = batch;
        }
        for (resp, channel) in answers {
            let resp = match (&result, resp) {
                (Ok(()), AllocResponse::Granted(l)) => {
                    log_grant(&l);
                    self.schedule_announce();
                    AllocResponse::Granted(l)
                }
                (Ok(()), resp) => resp,
                (Err(e), resp) => {
                    if let AllocResponse::Granted(l) = resp {
                        let _ = self.ledger.release(&l.lease_id, None);
                    }
                    AllocResponse::Denied(Denial::new(DenyReason::StorageError, e.to_string()))
                }
            };
            self.reply(channel, resp);
        }
    }

    /// Write what could wait (releases, expiries, the holder's records).
    fn flush_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        if let Err(e) = self.store.apply(&self.deferred) {
            error!(error = %e, "cannot write to the store; will retry");
            return;
        }
        self.deferred = WriteBatch::default();
    }

    fn forget_granted(&mut self, leases: &[Lease]) {
        if leases.is_empty() {
            return;
        }
        self.deferred
            .delete_granted
            .extend(leases.iter().map(|l| l.lease_id.clone()));
        self.schedule_announce();
    }

    fn on_alloc_response(&mut self, id: OutboundRequestId, result: Result<AllocResponse, String>) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match pending {
            Pending::Place { placement, node } => {
                let Some(mut p) = self.placements.remove(&placement) else {
                    return;
                };
                match result {
                    Ok(AllocResponse::Granted(lease)) => {
                        let expected = &node;
                        if &lease.node_id != expected
                            || lease.holder != self.local_id
                            || lease.lease_id.0.is_empty()
                        {
                            p.attempt.refused(
                                node.clone(),
                                Denial::new(
                                    DenyReason::BadRequest,
                                    "owner answered with a lease that is not ours",
                                ),
                            );
                        } else {
                            self.finish_placement(p, lease);
                            return;
                        }
                    }
                    Ok(AllocResponse::Denied(d)) => p.attempt.refused(node, d),
                    Ok(other) => p.attempt.refused(
                        node,
                        Denial::new(
                            DenyReason::BadRequest,
                            format!("unexpected answer {other:?}"),
                        ),
                    ),
                    Err(e) => p
                        .attempt
                        .refused(node, Denial::new(DenyReason::Unreachable, e)),
                }
                self.drive(placement, p);
            }
            Pending::Renew { lease_id } => self.on_renewed(&lease_id, result),
            Pending::Release { lease_id, reply } => {
                let confirmed = matches!(result, Ok(AllocResponse::Released { .. }));
                if let Err(e) = &result {
                    warn!(lease = %lease_id, error = %e, "owner did not confirm release; the lease will expire");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(ReleaseOutcome {
                        allocation_id: lease_id.0,
                        owner_confirmed: confirmed,
                    }));
                }
            }
        }
    }

    // ----- requester side: placement ---------------------------------------

    fn on_request(
        &mut self,
        req: AllocationRequest,
        reply: oneshot::Sender<Result<Allocation, NodeError>>,
    ) {
        let now = now_ms();
        if req.required_resources.is_empty() {
            let _ = reply.send(Err(NodeError::BadRequest(
                "required_resources asks for nothing; set at least one of cpu_cores, memory_mb, \
                 disk_mb, gpu_count, custom"
                    .into(),
            )));
            return;
        }
        if let Err(why) = validate_request(&req) {
            let _ = reply.send(Err(NodeError::BadRequest(why)));
            return;
        }
        let lease_ms = match req.timeout_secs {
            Some(0) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "timeout_secs must be > 0".into(),
                )));
                return;
            }
            Some(s) => s.saturating_mul(1000),
            None => self.cfg.default_lease.as_millis() as u64,
        };
        let release_at_ms = match req.duration_secs {
            Some(0) => {
                let _ = reply.send(Err(NodeError::BadRequest(
                    "duration_secs must be > 0".into(),
                )));
                return;
            }
            Some(s) => Some(now.saturating_add(s.saturating_mul(1000))),
            None => None,
        };
        let (mut candidates, excluded) = self.view.candidates(&req.required_resources, now);
        let mut excluded: Vec<Excluded> = excluded
            .into_iter()
            .map(|(id, why)| Excluded {
                node_name: self.name_of(&id),
                node_id: id,
                why,
            })
            .collect();
        if let Some(target) = &req.node_id {
            candidates.retain(|c| {
                let keep = &c.node_id.0 == target || &c.name == target;
                if !keep {
                    excluded.push(Excluded {
                        node_id: c.node_id.clone(),
                        node_name: c.name.clone(),
                        why: format!("not the requested node {target}"),
                    });
                }
                keep
            });
        }
        let mut strategy = self.strategy.clone();
        if let Some(s) = req.strategy {
            strategy.strategy = s;
        }
        self.seed_counter = self.seed_counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let seed = self.seed_counter ^ rand::random::<u64>();
        let ranked = self.placer.rank(
            &candidates,
            &strategy,
            &req.required_resources,
            &self.cfg.location,
            seed,
        );
        debug!(strategy = %strategy.strategy, candidates = ranked.len(), "placing request");
        let placement = Placement {
            attempt: Attempt::new(ranked, self.cfg.max_tries),
            request_id: req
                .request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            req,
            lease_ms,
            release_at_ms,
            excluded,
            reply,
        };
        let id = self.next_placement;
        self.next_placement += 1;
        self.drive(id, placement);
    }

    /// Ask the next candidate. Local candidates are answered inline.
    fn drive(&mut self, id: u64, mut p: Placement) {
        loop {
            let Some(node) = p.attempt.next() else {
                let refusals = self.refusals(p.attempt);
                let _ = p.reply.send(Err(NodeError::NoCapacity {
                    refusals,
                    excluded: p.excluded,
                }));
                return;
            };
            if node == self.local_id {
                let input = AllocateInput {
                    lease_id: LeaseId(uuid::Uuid::new_v4().to_string()),
                    request_id: p.request_id.clone(),
                    holder: self.local_id.clone(),
                    req: p.req.required_resources.clone(),
                    task_type: p.req.task_type.clone(),
                    priority: p.req.priority,
                    lease_ms: p.lease_ms,
                };
                match self.grant(input, now_ms()) {
                    Ok(lease) => return self.finish_placement(p, lease),
                    Err(d) => p.attempt.refused(node, d),
                }
                continue;
            }
            let Some(peer) = peer_id_of(&node) else {
                p.attempt
                    .refused(node, Denial::new(DenyReason::Unreachable, "not a peer id"));
                continue;
            };
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Allocate {
                    request_id: p.request_id.clone(),
                    req: p.req.required_resources.clone(),
                    task_type: p.req.task_type.clone(),
                    priority: p.req.priority,
                    lease_ms: p.lease_ms,
                }),
            );
            self.pending.insert(
                rid,
                Pending::Place {
                    placement: id,
                    node,
                },
            );
            self.placements.insert(id, p);
            return;
        }
    }

    fn finish_placement(&mut self, p: Placement, lease: Lease) {
        let owner_name = self.name_of(&lease.node_id);
        let rec = HeldRecord {
            lease: lease.clone(),
            owner_name: owner_name.clone(),
            release_at_ms: p.release_at_ms,
        };
        self.deferred.put_held.push(rec.clone());
        let renew_at_ms = renew_time(&lease);
        self.held.insert(
            lease.lease_id.clone(),
            Held {
                rec,
                renew_at_ms,
                renewing: false,
            },
        );
        let mut alloc = Allocation::from_lease(&lease, &owner_name, p.release_at_ms);
        alloc.refusals = self.refusals(p.attempt);
        info!(lease = %lease.lease_id, owner = %owner_name, "allocation placed");
        if p.reply.send(Ok(alloc)).is_err() {
            // Whoever asked is gone (an HTTP client that timed out): nobody
            // knows this lease's id, so give it back rather than hold it.
            warn!(lease = %lease.lease_id, "the requester went away before the grant arrived; releasing it");
            self.release_held(&lease.lease_id, None);
        }
    }

    /// The refusals of an attempt, with node names, for the API.
    fn refusals(&self, attempt: Attempt) -> Vec<Refusal> {
        attempt
            .into_refusals()
            .into_iter()
            .map(|(n, d)| Refusal {
                node_name: self.name_of(&n),
                node_id: n,
                reason: d.reason,
                message: d.message,
            })
            .collect()
    }

    fn name_of(&self, id: &NodeId) -> String {
        if id == &self.local_id {
            return self.cfg.name.clone();
        }
        self.view
            .get(id)
            .map(|e| e.ann.name.clone())
            .unwrap_or_default()
    }

    // ----- holder side: renewals and releases ------------------------------

    fn on_renewed(&mut self, lease_id: &LeaseId, result: Result<AllocResponse, String>) {
        let Some(h) = self.held.get_mut(lease_id) else {
            return;
        };
        h.renewing = false;
        match result {
            Ok(AllocResponse::Renewed(lease)) if lease.lease_id == *lease_id => {
                h.rec.lease.expires_at_ms = lease.expires_at_ms;
                h.renew_at_ms = renew_time(&lease);
                let rec = h.rec.clone();
                self.deferred.put_held.push(rec);
            }
            Ok(AllocResponse::Denied(d))
                if matches!(d.reason, DenyReason::UnknownLease | DenyReason::NotHolder) =>
            {
                warn!(lease = %lease_id, reason = %d.reason, "lease lost: the owner no longer has it");
                self.drop_held(lease_id);
            }
            other => {
                // Retry soon; the lease is lost only once it has expired.
                debug!(lease = %lease_id, ?other, "renewal failed; retrying");
                h.renew_at_ms = now_ms() + 1_000;
            }
        }
    }

    fn drop_held(&mut self, lease_id: &LeaseId) {
        if self.held.remove(lease_id).is_some() {
            self.deferred.delete_held.push(lease_id.clone());
        }
    }

    /// Release a lease we hold: locally if we own it too, else ask the owner.
    fn release_held(
        &mut self,
        lease_id: &LeaseId,
        reply: Option<oneshot::Sender<Result<ReleaseOutcome, NodeError>>>,
    ) {
        let Some(h) = self.held.get(lease_id) else {
            return;
        };
        let owner = h.rec.lease.node_id.clone();
        self.drop_held(lease_id);
        if owner == self.local_id {
            if let Ok(Some(lease)) = self.ledger.release(lease_id, Some(&self.local_id.clone())) {
                self.forget_granted(&[lease]);
            }
            if let Some(reply) = reply {
                let _ = reply.send(Ok(ReleaseOutcome {
                    allocation_id: lease_id.0.clone(),
                    owner_confirmed: true,
                }));
            }
            return;
        }
        match peer_id_of(&owner) {
            Some(peer) => {
                let rid = self.swarm.behaviour_mut().alloc.send_request(
                    &peer,
                    Frame::Valid(AllocRequest::Release {
                        lease_id: lease_id.clone(),
                    }),
                );
                self.pending.insert(
                    rid,
                    Pending::Release {
                        lease_id: lease_id.clone(),
                        reply,
                    },
                );
            }
            None => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(ReleaseOutcome {
                        allocation_id: lease_id.0.clone(),
                        owner_confirmed: false,
                    }));
                }
            }
        }
    }

    /// Periodic work: expire granted leases, renew held ones, release held
    /// ones whose duration is over, prune silent peers.
    fn maintain(&mut self) {
        let now = now_ms();
        self.flush_deferred();
        let expired = self.ledger.expire(now);
        if !expired.is_empty() {
            for l in &expired {
                info!(lease = %l.lease_id, holder = %l.holder, "lease expired; resources taken back");
            }
            self.forget_granted(&expired);
        }
        let due: Vec<LeaseId> = self
            .held
            .iter()
            .filter(|(_, h)| h.rec.release_at_ms.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            info!(lease = %id, "allocation duration over; releasing");
            self.release_held(&id, None);
        }
        let lost: Vec<LeaseId> = self
            .held
            .iter()
            .filter(|(_, h)| h.rec.lease.expires_at_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            warn!(lease = %id, "lease expired before it could be renewed; dropping it");
            self.drop_held(&id);
        }
        let to_renew: Vec<(LeaseId, NodeId, u64)> = self
            .held
            .iter()
            .filter(|(_, h)| !h.renewing && h.renew_at_ms <= now)
            .map(|(id, h)| {
                (
                    id.clone(),
                    h.rec.lease.node_id.clone(),
                    h.rec.lease.lease_ms,
                )
            })
            .collect();
        for (id, owner, lease_ms) in to_renew {
            if owner == self.local_id {
                let result = match self
                    .ledger
                    .renew(&id, &self.local_id.clone(), lease_ms, now)
                {
                    Ok(l) => {
                        self.deferred.put_granted.push(l.clone());
                        AllocResponse::Renewed(l)
                    }
                    Err(d) => AllocResponse::Denied(d),
                };
                self.on_renewed(&id, Ok(result));
                continue;
            }
            let Some(peer) = peer_id_of(&owner) else {
                continue;
            };
            if let Some(h) = self.held.get_mut(&id) {
                h.renewing = true;
            }
            let rid = self.swarm.behaviour_mut().alloc.send_request(
                &peer,
                Frame::Valid(AllocRequest::Renew {
                    lease_id: id.clone(),
                    lease_ms,
                }),
            );
            self.pending.insert(rid, Pending::Renew { lease_id: id });
        }
        self.lift_bans(now);
        let fresh = self.view.config().offline_after_ms;
        self.other_instances
            .retain(|_, (_, at)| now.saturating_sub(*at) < fresh);
        for id in self.view.prune(now) {
            self.signed.remove(&id);
            debug!(peer = %id, "forgot silent peer");
        }
    }

    // ----- commands ------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::LocalNode(reply) => {
                let _ = reply.send(self.local_info());
            }
            Command::Nodes(reply) => {
                let now = now_ms();
                let mut out = vec![self.local_info()];
                out.extend(self.view.peers().map(|p| {
                    NodeInfo {
                        id: p.ann.node_id.clone(),
                        name: p.ann.name.clone(),
                        is_local: false,
                        version: p.ann.version.clone(),
                        addresses: p.ann.addrs.clone(),
                        resources: NodeResources {
                            lendable: p.ann.capacity.clone(),
                            free: p.ann.free.clone(),
                            gpus: p.ann.gpus.clone(),
                            machine_cpu_cores: p.ann.machine_cpu_cores,
                            machine_memory_mb: p.ann.machine_memory_mb,
                            cpu_usage_pct: p.ann.cpu_usage_pct,
                        },
                        models: p.ann.models.clone(),
                        location: p.ann.location.clone(),
                        weight: p.ann.weight,
                        allow_remote_access: p.ann.allow_remote,
                        active_allocations: p.ann.active_leases,
                        status: self
                            .view
                            .status(&p.ann.node_id, now)
                            .unwrap_or(NodeStatus::Offline),
                        last_seen: crate::handle::ms_to_utc(p.last_seen_ms),
                        rtt_ms: p.rtt_ms,
                        seq: p.ann.seq,
                        duplicate_identity: None,
                        penalties: Vec::new(),
                    }
                }));
                let _ = reply.send(out);
            }
            Command::Request(req, reply) => self.on_request(*req, reply),
            Command::Release(id, reply) => {
                let lease_id = LeaseId(id.clone());
                if self.held.contains_key(&lease_id) {
                    self.release_held(&lease_id, Some(reply));
                } else {
                    match self.ledger.release(&lease_id, None) {
                        Ok(Some(lease)) => {
                            info!(lease = %lease.lease_id, holder = %lease.holder, "lease revoked by local release");
                            self.forget_granted(&[lease]);
                            let _ = reply.send(Ok(ReleaseOutcome {
                                allocation_id: id,
                                owner_confirmed: true,
                            }));
                        }
                        _ => {
                            let _ = reply.send(Err(NodeError::UnknownAllocation(id)));
                        }
                    }
                }
            }
            Command::Allocations(reply) => {
                let held = self
                    .held
                    .values()
                    .map(|h| {
                        Allocation::from_lease(&h.rec.lease, &h.rec.owner_name, h.rec.release_at_ms)
                    })
                    .collect();
                let granted = self
                    .ledger
                    .leases()
                    .map(|l| Allocation::from_lease(l, &self.cfg.name, None))
                    .collect();
                let _ = reply.send(Allocations { held, granted });
            }
            Command::GetStrategy(reply) => {
                let _ = reply.send(self.strategy.clone());
            }
            Command::SetStrategy(s, reply) => {
                info!(strategy = %s.strategy, "balancing strategy changed");
                self.strategy = s;
                let _ = reply.send(());
            }
            Command::ListenAddrs(reply) => {
                let peer = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a).to_string())
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Telemetry(t) => {
                self.cpu_usage_pct = t.cpu_usage_pct;
                for g in t.gpus {
                    if let Some(slot) = self
                        .cfg
                        .gpus
                        .iter_mut()
                        .find(|x| !x.synthetic && x.index == g.index)
                    {
                        *slot = g;
                    }
                }
            }
            Command::Dial(addr, reply) => {
                let r = match addr.parse::<Multiaddr>() {
                    Ok(a) => self
                        .swarm
                        .dial(a)
                        .map_err(|e| NodeError::BadRequest(e.to_string())),
                    Err(e) => Err(NodeError::BadRequest(format!("bad multiaddr {addr}: {e}"))),
                };
                let _ = reply.send(r);
            }
        }
    }

    fn local_info(&self) -> NodeInfo {
        let a = &self.local_ann;
        NodeInfo {
            id: self.local_id.clone(),
            name: self.cfg.name.clone(),
            is_local: true,
            version: a.version.clone(),
            addresses: a.addrs.clone(),
            resources: NodeResources {
                lendable: self.ledger.capacity().clone(),
                free: self.ledger.free(),
                gpus: self.cfg.gpus.clone(),
                machine_cpu_cores: self.cfg.machine_cpu_cores,
                machine_memory_mb: self.cfg.machine_memory_mb,
                cpu_usage_pct: self.cpu_usage_pct,
            },
            models: self.cfg.models.clone(),
            location: self.cfg.location.clone(),
            weight: self.cfg.weight,
            allow_remote_access: self.cfg.allow_remote,
            active_allocations: self.ledger.len() as u32,
            status: NodeStatus::Online,
            last_seen: crate::handle::ms_to_utc(now_ms()),
            rtt_ms: None,
            seq: a.seq,
            duplicate_identity: self.duplicate_identity.clone(),
            penalties: self
                .offenders
                .iter()
                .map(|(p, o)| Penalty {
                    peer_id: p.to_base58(),
                    offences: o.offences,
                    banned: o.banned_until_ms.is_some(),
                    last_offence: o.last_offence.clone(),
                })
                .collect(),
        }
    }
}

/// When to renew: a third of the way through the lease term.
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
