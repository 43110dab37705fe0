//! Announcements: building, signing and publishing our own; verifying and
//! applying others'; sync and anti-entropy; copied-identity detection;
//! penalties for invalid messages.

use super::*;
use crate::model::{HolderUsage, Usage};

impl EventLoop {
    /// Announce a change soon: after a short window that gathers a burst
    /// into one announcement, and no sooner than `announce_debounce` after
    /// the previous one. A lone change goes out at once; under churn a node
    /// announces at most once per `announce_debounce`, which bounds the
    /// signature checks every peer must do.
    pub(super) fn schedule_announce(&mut self) {
        if self.announce_at.is_none() {
            let now = Instant::now();
            let earliest = self
                .last_announce
                .map_or(now, |t| t + self.cfg.announce_debounce);
            self.announce_at = Some((now + ANNOUNCE_COALESCE).max(earliest));
        }
    }

    /// The next announcement: a fresh sequence number and this instant.
    pub(super) fn build_announcement(&mut self, leaving: bool) -> Announcement {
        let now = now_ms();
        self.seq = (self.seq + 1).max(now);
        self.describe(now, leaving)
    }

    /// This node as an announcement says it, right now, under the current
    /// sequence number. The one place that turns our state into what peers
    /// and the API see.
    pub(super) fn describe(&self, now: u64, leaving: bool) -> Announcement {
        let mut addrs = self.listen_addrs();
        addrs.truncate(16);
        Announcement {
            node_id: self.local_id.clone(),
            seq: self.seq,
            issued_at_ms: now,
            name: self.cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            addrs,
            api: self.cfg.api_addr.clone(),
            capacity: self.sched.ledger().capacity().clone(),
            free: self.sched.ledger().free(),
            gpus: self.cfg.gpus.clone(),
            machine_cpu_cores: self.cfg.machine_cpu_cores,
            machine_memory_mb: self.cfg.machine_memory_mb,
            cpu_usage_pct: self.cpu_usage_pct,
            models: self.tasks.advertised_models(),
            loaded_models: self.tasks.loaded_models(),
            templates: self.tasks.template_names(),
            location: self.cfg.location.clone(),
            weight: self.cfg.weight,
            active_leases: self.sched.ledger().len() as u32,
            labels: self.cfg.labels.clone(),
            access: self.access_hint(),
            arch: std::env::consts::ARCH.to_owned(),
            usage: self.holder_usage(),
            queued: self.sched.queue().len() as u32,
            preemption: self.sched.policy().preemption,
            refusals: self.accounting.announced_refusals(now),
            leaving,
            instance: self.instance,
            started_at_ms: self.started_at_ms,
        }
    }

    pub(super) fn announce(&mut self, leaving: bool) {
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
        let (seq, free) = (ann.seq, ann.free.clone());
        self.view.set_local(ann);
        self.signed.insert(self.local_id.clone(), signed);
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => {
                self.note_gossip(CAPACITY_TOPIC, "out");
                debug!(
                    seq,
                    free_cores = free.cpu_cores,
                    free_mem_mb = free.memory_mb,
                    leaving,
                    "capacity announced"
                )
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!(error = %e, "announcement not published"),
        }
    }

    /// Verify and apply an announcement from the network. Returns whether
    /// it was valid (invalid ones penalise whoever sent them).
    pub(super) fn accept_announcement(
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
    pub(super) fn note_other_instance(&mut self, ann: &Announcement) {
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
    pub(super) fn sync_set(&self) -> Vec<SignedAnnouncement> {
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
    pub(super) fn resync(&mut self) {
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
            events: self.state.sync_set(),
        };
        self.swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, Frame::Valid(req));
    }

    pub(super) fn report_duplicate(&mut self, ann: &Announcement) {
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
    pub(super) fn penalise(&mut self, peer: PeerId, why: String) {
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

    pub(super) fn lift_bans(&mut self, now: u64) {
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
}

/// Most requesters whose usage an announcement carries.
const MAX_ANNOUNCED_USAGE: usize = 128;

impl EventLoop {
    /// What each requester holds here, largest first, for swarm-wide
    /// quotas (bounded; the smallest holders are left out).
    pub(super) fn holder_usage(&self) -> Vec<HolderUsage> {
        let mut by: BTreeMap<NodeId, Usage> = BTreeMap::new();
        for l in self.sched.ledger().leases() {
            by.entry(l.holder.clone())
                .or_default()
                .add(&Usage::of_lease(l));
        }
        let mut out: Vec<HolderUsage> = by
            .into_iter()
            .map(|(holder, usage)| HolderUsage { holder, usage })
            .collect();
        out.sort_by(|a, b| {
            (b.usage.cpu_cores, b.usage.memory_mb, b.usage.gpus)
                .cmp(&(a.usage.cpu_cores, a.usage.memory_mb, a.usage.gpus))
                .then_with(|| a.holder.cmp(&b.holder))
        });
        out.truncate(MAX_ANNOUNCED_USAGE);
        // Custom resources stay out, to keep announcements small: swarm-wide
        // quotas cap the standard dimensions.
        for h in &mut out {
            h.usage.custom.clear();
        }
        out
    }
}
