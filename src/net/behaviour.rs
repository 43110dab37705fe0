//! The libp2p behaviour: mDNS, gossipsub, the allocation, sync, task and
//! health request-response protocols, identify and ping, combined with
//! `#[derive(NetworkBehaviour)]`.

use std::time::Duration;

use libp2p::{
    allow_block_list, gossipsub, identify, identity::Keypair, mdns, ping, request_response,
    swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour,
};

use super::protocol::{
    AllocCodec, HealthCodec, SyncCodec, TaskCodec, ALLOC_PROTOCOL, HEALTH_PROTOCOL,
    MAX_ALLOC_MESSAGE, MAX_ANNOUNCEMENT, MAX_HEALTH_MESSAGE, MAX_SYNC_MESSAGE, MAX_TASK_MESSAGE,
    SYNC_PROTOCOL, TASK_PROTOCOL,
};

/// The error type libp2p's builder takes from a behaviour constructor.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an allocation or sync request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a task message may take (results carry outputs of megabytes).
pub const TASK_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a health check waits for its answer.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most concurrent inbound/outbound streams per connection, per protocol.
pub const MAX_CONCURRENT_STREAMS: usize = 256;

/// Every protocol a lanswarm node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Peers banned for misbehaving: their connections are closed and
    /// refused until the ban ends.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub gossipsub: gossipsub::Behaviour,
    pub alloc: request_response::Behaviour<AllocCodec>,
    pub sync: request_response::Behaviour<SyncCodec>,
    pub task: request_response::Behaviour<TaskCodec>,
    pub health: request_response::Behaviour<HealthCodec>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Settings the behaviour is built from.
#[derive(Clone, Debug)]
pub struct BehaviourConfig {
    pub mdns: bool,
    pub mdns_ttl: Duration,
    pub ping_interval: Duration,
}

impl Behaviour {
    /// Build the behaviour for `key`.
    pub fn new(key: &Keypair, cfg: &BehaviourConfig) -> Result<Self, BoxError> {
        let peer_id = key.public().to_peer_id();
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(700))
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_ANNOUNCEMENT + 1024)
            // A LAN is small: keep the mesh small so every node is reached
            // in one or two hops, and flood our own messages.
            .mesh_n_low(2)
            .mesh_n(4)
            .mesh_n_high(8)
            .mesh_outbound_min(1)
            .flood_publish(true)
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_cfg,
        )
        .map_err(|e| format!("gossipsub: {e}"))?;
        // Score peers so that a rejected (invalid) message penalises its
        // sender; below the graylist threshold it is ignored altogether.
        let topic = gossipsub::IdentTopic::new(super::protocol::CAPACITY_TOPIC);
        let mut params = gossipsub::PeerScoreParams {
            // Many nodes may share one address (several nodes on one
            // machine, tests, NAT); identity is the key, not the IP.
            ip_colocation_factor_weight: 0.0,
            ..Default::default()
        };
        params.topics.insert(
            topic.hash(),
            gossipsub::TopicScoreParams {
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.9,
                ..Default::default()
            },
        );
        let thresholds = gossipsub::PeerScoreThresholds {
            gossip_threshold: -50.0,
            publish_threshold: -100.0,
            graylist_threshold: -200.0,
            ..Default::default()
        };
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|e| format!("gossipsub scoring: {e}"))?;

        let rr_cfg = request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        let alloc = request_response::Behaviour::with_codec(
            AllocCodec::new(MAX_ALLOC_MESSAGE, MAX_ALLOC_MESSAGE),
            [(ALLOC_PROTOCOL, request_response::ProtocolSupport::Full)],
            rr_cfg.clone(),
        );
        let sync = request_response::Behaviour::with_codec(
            SyncCodec::new(MAX_SYNC_MESSAGE, MAX_SYNC_MESSAGE),
            [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
            rr_cfg.clone(),
        );
        // Results can be megabytes; give them longer than a grant.
        let task = request_response::Behaviour::with_codec(
            TaskCodec::new(MAX_TASK_MESSAGE, MAX_TASK_MESSAGE),
            [(TASK_PROTOCOL, request_response::ProtocolSupport::Full)],
            rr_cfg.clone().with_request_timeout(TASK_REQUEST_TIMEOUT),
        );
        let health = request_response::Behaviour::with_codec(
            HealthCodec::new(64, MAX_HEALTH_MESSAGE),
            [(HEALTH_PROTOCOL, request_response::ProtocolSupport::Full)],
            rr_cfg.with_request_timeout(HEALTH_CHECK_TIMEOUT),
        );
        let identify = identify::Behaviour::new(
            identify::Config::new("/lanswarm/id/1".into(), key.public())
                .with_agent_version(format!("lanswarm/{}", env!("CARGO_PKG_VERSION"))),
        );
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(cfg.ping_interval)
                .with_timeout((cfg.ping_interval * 3).max(Duration::from_millis(1500))),
        );
        let mdns = if cfg.mdns {
            let mcfg = mdns::Config {
                ttl: cfg.mdns_ttl,
                query_interval: (cfg.mdns_ttl / 2).max(Duration::from_secs(1)),
                enable_ipv6: false,
            };
            Some(mdns::tokio::Behaviour::new(mcfg, peer_id).map_err(|e| format!("mdns: {e}"))?)
        } else {
            None
        };
        Ok(Behaviour {
            blocked: Default::default(),
            gossipsub,
            alloc,
            sync,
            task,
            health,
            identify,
            ping,
            mdns: mdns.into(),
        })
    }
}
