//! Utilization sampling for the dashboard's charts, and "discover now".

use super::*;
use crate::core::utilization::{UtilReport, UtilSample};

/// What a discovery round started (`POST /api/v1/discover`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiscoverReport {
    /// Bootstrap addresses dialled again.
    pub bootstrap_dialed: usize,
    /// Connected peers asked to sync their view with ours now.
    pub synced_with: usize,
    /// Nodes in the view before the round (this one excluded); the round's
    /// results arrive over the next moments, as peers answer.
    pub known: usize,
    /// Whether mDNS discovery runs on this node (it runs continuously).
    pub mdns: bool,
}

impl EventLoop {
    /// Take a utilization sample if one is due (called on the maintenance
    /// tick).
    pub(super) fn sample_utilization(&mut self) {
        let now = now_ms();
        if !self.util.due(now) {
            return;
        }
        let own = self.describe(now, false);
        let peers: Vec<(&Announcement, NodeStatus)> = self
            .view
            .peers()
            .map(|p| {
                let status = self
                    .view
                    .status(&p.ann.node_id, now)
                    .unwrap_or(NodeStatus::Offline);
                (&p.ann, status)
            })
            .collect();
        let sample = UtilSample::take(now, &own, peers);
        self.util.push(sample);
    }

    /// The utilization history after `after_ms`.
    pub(super) fn utilization(&self, after_ms: u64) -> UtilReport {
        self.util.since(after_ms)
    }

    /// Dial the bootstrap peers and every known unconnected peer again, and
    /// ask every connected peer to sync views now.
    pub(super) fn discover_now(&mut self) -> DiscoverReport {
        let known = self.view.len();
        self.redial();
        let peers: Vec<PeerId> = self
            .view
            .peers()
            .filter_map(|p| peer_id_of(&p.ann.node_id))
            .filter(|p| self.swarm.is_connected(p))
            .collect();
        for peer in &peers {
            let req = SyncRequest {
                announcements: self.sync_set(),
                events: self.state.sync_set(),
            };
            self.swarm
                .behaviour_mut()
                .sync
                .send_request(peer, Frame::Valid(req));
        }
        DiscoverReport {
            bootstrap_dialed: self.cfg.bootstrap.len(),
            synced_with: peers.len(),
            known,
            mdns: self.cfg.mdns,
        }
    }
}

impl EventLoop {
    /// Elastic sharing as it stands: cap, what is lent now, and the
    /// forecast of the owner's own use when the forecast policy is on.
    pub(super) fn elastic_status(&self) -> crate::handle::ElasticStatus {
        match &self.elastic {
            None => crate::handle::ElasticStatus {
                enabled: false,
                policy: self.cfg.elastic.mode,
                cap: self.cfg.capacity.clone(),
                current: self.cfg.capacity.clone(),
                forecast: None,
            },
            Some(e) => crate::handle::ElasticStatus {
                enabled: true,
                policy: e.policy().mode,
                cap: e.cap().clone(),
                current: e.current().clone(),
                forecast: e.forecast(now_ms()).map(|(cpu_cores, memory_mb)| {
                    crate::handle::ElasticForecast {
                        cpu_cores,
                        memory_mb,
                        horizon_secs: e.policy().forecast.horizon_ms / 1000,
                    }
                }),
            },
        }
    }
}
