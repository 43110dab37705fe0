//! Swarm and behaviour events, narrowed to what the node acts on (exo's
//! `filter_swarm_event` shape), and the sync protocol's events.

use super::*;

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.record_swarm_event(&ev);
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
                let now = now_ms();
                self.view.connection_changed(&id, true, Some(now));
                self.view.touch(&id, now);
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, "connected");
                    if endpoint.is_dialer() {
                        let req = SyncRequest {
                            announcements: self.sync_set(),
                            events: self.state.sync_set(),
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
                let id = node_id_of(&peer_id);
                // Dial again at once: a dead process refuses (offline in a
                // round trip), a live one answers (online again).
                if self.view.connection_changed(&id, false, None) {
                    self.connect_if_needed(peer_id);
                }
                self.owner_disconnected(&id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(peer) = peer_id {
                    self.dialing.remove(&peer);
                    if !self.swarm.is_connected(&peer) {
                        self.view.dial_failed(&node_id_of(&peer));
                    }
                }
                debug!(?peer_id, error = %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    pub(super) fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        self.record_behaviour_event(&ev);
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
                self.note_gossip_in(&message.topic);
                let verdict = if message.topic == self.state_topic.hash() {
                    match decode_exact::<SignedEvent>(&message.data) {
                        Err(e) => Err(format!("not a signed state event: {e}")),
                        Ok(signed) => self.accept_event(signed),
                    }
                } else {
                    match decode_exact::<SignedAnnouncement>(&message.data) {
                        Err(e) => Err(format!("not a signed announcement: {e}")),
                        Ok(signed) => match message.source {
                            None => Err("unsigned gossip message".to_owned()),
                            Some(src) => self
                                .accept_announcement(signed, Some(&src))
                                .map(|a| matches!(a, Applied::New | Applied::Updated)),
                        },
                    }
                };
                let acceptance = match verdict {
                    Ok(true) => gossipsub::MessageAcceptance::Accept,
                    Ok(false) => gossipsub::MessageAcceptance::Ignore,
                    Err(why) => {
                        self.penalise(propagation_source, format!("invalid gossip: {why}"));
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
            BehaviourEvent::Task(ev) => self.on_task_event(ev),
            BehaviourEvent::Health(ev) => self.on_health_event(ev),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                let id = node_id_of(&peer);
                match result {
                    Ok(rtt) => {
                        self.note_health_rtt("ping", rtt);
                        self.view.ping_ok(&id, rtt.as_secs_f64() * 1000.0, now_ms())
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "ping failed");
                        self.view.ping_failed(&id);
                    }
                }
            }
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        ev: request_response::Event<Frame<SyncRequest>, SyncResponse>,
    ) {
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
                self.apply_synced_events(&peer, request.events);
                let resp = SyncResponse {
                    announcements: self.sync_set(),
                    events: self.state.sync_set(),
                };
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, resp);
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            } => {
                self.apply_synced(&peer, response.announcements);
                self.apply_synced_events(&peer, response.events);
            }
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

    pub(super) fn apply_synced(&mut self, from: &PeerId, anns: Vec<SignedAnnouncement>) {
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
}
