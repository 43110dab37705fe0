//! Dialling: bootstrap addresses, peers found by mDNS or announcements, and
//! redialling those not connected.

use super::*;

impl EventLoop {
    pub(super) fn dial_addr(&mut self, addr: Multiaddr) {
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

    pub(super) fn connect_if_needed(&mut self, peer: PeerId) {
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

    pub(super) fn redial(&mut self) {
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
            .filter(|p| {
                !matches!(
                    self.view.status(&p.ann.node_id, now),
                    Some(NodeStatus::Offline | NodeStatus::Left)
                )
            })
            .filter_map(|p| peer_id_of(&p.ann.node_id))
            .collect();
        for peer in unconnected {
            self.connect_if_needed(peer);
        }
    }
}
