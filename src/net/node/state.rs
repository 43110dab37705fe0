//! The replicated swarm state (groups and pools) and the access policy.
//!
//! Group and pool changes are [`StateEvent`]s, each signed by the node that
//! makes it. They travel three ways: published on [`STATE_TOPIC`] when
//! made, swapped whole in every sync exchange (on connect, so a new node
//! learns every group at once, and in the periodic anti-entropy round, so a
//! healed partition converges), and stored in redb, so they survive
//! restarts. Every node merges them with the deterministic rules of
//! [`crate::core::groups`] and [`crate::core::pools`], so nodes that have
//! seen the same events agree, whatever order they came in.
//!
//! The access policy is this node's alone: it is stored, applied by the
//! owner to every allocation request against the Noise-authenticated peer
//! id ([`crate::core::access::check`]), and announced as a hint.

use super::*;
use crate::core::access::{self, AccessPolicy};
use crate::core::groups::{GroupEvent, GroupEventKind, GroupId, GroupView};
use crate::core::history::{HistoryKind, Outcome as HistoryOutcome};
use crate::core::pools::{self, PoolEvent, PoolEventKind, PoolView};
use crate::handle::{AccessChange, GroupInfo, GroupMember, NewGroup, NewPool, PoolInfo};
use crate::net::protocol::{SignedEvent, StateEvent, MAX_SYNC_EVENTS};

/// Metadata key of the access policy in force.
const META_POLICY: &str = "access_policy";
/// Metadata key of the config's policy when the stored one was last set,
/// to tell whether the config has been edited since.
const META_POLICY_CONFIG: &str = "access_policy_config";
/// Most allow-list entries carried in the announced hint; a longer list is
/// not announced at all (requesters then try and the owner decides).
const MAX_HINT_ALLOW: usize = 256;

/// The replicated state and its signed events.
#[derive(Default)]
pub(super) struct SwarmState {
    pub groups: Groups,
    pub pools: Pools,
    /// The signed form of every group event, keyed by payload.
    group_signed: BTreeMap<Vec<u8>, SignedEvent>,
    /// The signed form of the one event kept per pool name.
    pool_signed: BTreeMap<String, SignedEvent>,
}

impl SwarmState {
    /// The clock of the next event this node makes: after everything seen.
    fn next_clock(&self) -> u64 {
        self.groups.clock().max(self.pools.clock()) + 1
    }

    /// Every event, signed, for a sync exchange (newest last, bounded).
    pub fn sync_set(&self) -> Vec<SignedEvent> {
        let total = self.group_signed.len() + self.pool_signed.len();
        self.pool_signed
            .values()
            .chain(self.group_signed.values())
            .skip(total.saturating_sub(MAX_SYNC_EVENTS))
            .cloned()
            .collect()
    }
}

/// What applying one signed event did.
enum Merged {
    /// New to us; the batch says what to store.
    New(WriteBatch),
    /// Already known, or superseded by what we hold.
    Known,
}

impl SwarmState {
    /// Verify a signed event, merge it, and say what to store. Errors are
    /// the sender's fault (forged, malformed or invalid events), except
    /// `Full`, which is ours.
    fn merge_signed(&mut self, signed: SignedEvent) -> Result<Merged, MergeError> {
        let ev = signed
            .verify()
            .map_err(|e| MergeError::Bad(e.to_string()))?;
        let stored = postcard::to_stdvec(&signed).map_err(|e| MergeError::Bad(e.to_string()))?;
        match ev {
            StateEvent::Group(g) => {
                if self.group_signed.contains_key(&signed.payload) {
                    return Ok(Merged::Known);
                }
                match self.groups.apply(g) {
                    Ok(true) => {}
                    Ok(false) => return Ok(Merged::Known),
                    Err(crate::core::groups::GroupError::TooManyEvents) => {
                        return Err(MergeError::Full)
                    }
                    Err(e) => return Err(MergeError::Bad(e.to_string())),
                }
                let batch = WriteBatch {
                    put_events: vec![(signed.payload.clone(), stored)],
                    ..Default::default()
                };
                self.group_signed.insert(signed.payload.clone(), signed);
                Ok(Merged::New(batch))
            }
            StateEvent::Pool(p) => {
                let name = p.pool.clone();
                match self.pools.apply(p) {
                    Ok(true) => {}
                    Ok(false) => return Ok(Merged::Known),
                    Err(pools::PoolError::TooManyPools) => return Err(MergeError::Full),
                    Err(e) => return Err(MergeError::Bad(e.to_string())),
                }
                let mut batch = WriteBatch {
                    put_events: vec![(signed.payload.clone(), stored)],
                    ..Default::default()
                };
                if let Some(old) = self.pool_signed.insert(name, signed) {
                    batch.delete_events.push(old.payload);
                }
                Ok(Merged::New(batch))
            }
        }
    }
}

enum MergeError {
    /// The event is forged, malformed or breaks the rules.
    Bad(String),
    /// We hold as many events as we will.
    Full,
}

/// Load the stored events. A record that no longer verifies (a corrupted
/// file) is skipped with a warning; the swarm will send it again.
pub(super) fn restore_state(store: &Store) -> Result<SwarmState, crate::store::StoreError> {
    let mut state = SwarmState::default();
    let mut skipped = 0usize;
    for bytes in store.events()? {
        let Ok(signed) = decode_exact::<SignedEvent>(&bytes) else {
            skipped += 1;
            continue;
        };
        if let Err(MergeError::Bad(_) | MergeError::Full) = state.merge_signed(signed) {
            skipped += 1;
        }
    }
    if skipped > 0 {
        warn!(
            skipped,
            "stored swarm-state events that no longer verify were skipped"
        );
    }
    Ok(state)
}

/// The policy to start with: the stored one, unless the config's policy
/// changed since it was stored (then the config wins, and is stored).
pub(super) fn restore_policy(
    store: &Store,
    from_config: &AccessPolicy,
) -> Result<AccessPolicy, crate::store::StoreError> {
    let seen: Option<AccessPolicy> = store.meta(META_POLICY_CONFIG)?;
    let stored: Option<AccessPolicy> = store.meta(META_POLICY)?;
    match (seen, stored) {
        (Some(seen), Some(stored)) if &seen == from_config => Ok(stored),
        (seen, _) => {
            if seen.is_some() {
                info!("access policy in the config changed; it replaces the stored one");
            }
            store.apply(&policy_batch(from_config, from_config))?;
            Ok(from_config.clone())
        }
    }
}

fn policy_batch(policy: &AccessPolicy, from_config: &AccessPolicy) -> WriteBatch {
    let enc = |p: &AccessPolicy| postcard::to_stdvec(p).unwrap_or_default();
    WriteBatch {
        put_meta: vec![
            (META_POLICY.to_owned(), enc(policy)),
            (META_POLICY_CONFIG.to_owned(), enc(from_config)),
        ],
        ..Default::default()
    }
}

/// A peer id given by a user, checked.
fn parse_node(id: &str) -> Result<NodeId, NodeError> {
    let id = id.trim();
    id.parse::<PeerId>()
        .map(|_| NodeId(id.to_owned()))
        .map_err(|_| NodeError::BadRequest(format!("{id:?} is not a peer id")))
}

impl EventLoop {
    /// The access hint for announcements.
    pub(super) fn access_hint(&self) -> AccessHint {
        let p = &self.policy;
        if p.allow.len() > MAX_HINT_ALLOW {
            // Too long to announce: say only what cannot mislead.
            return AccessHint {
                allow_remote: p.allow_remote,
                group_peers_only: false,
                allow: Vec::new(),
            };
        }
        AccessHint {
            allow_remote: p.allow_remote,
            group_peers_only: p.group_peers_only,
            allow: p.allow.iter().cloned().collect(),
        }
    }

    /// The owner's check of one allocation request.
    pub(super) fn admit(&self, requester: &NodeId) -> Result<(), Denial> {
        access::check(&self.policy, &self.local_id, requester, &self.state.groups)
    }

    /// Merge one signed event from the network (gossip or sync).
    /// `Ok(true)` if it was new.
    pub(super) fn accept_event(&mut self, signed: SignedEvent) -> Result<bool, String> {
        match self.state.merge_signed(signed) {
            Ok(Merged::New(batch)) => {
                self.defer(batch);
                self.sync_group_members();
                Ok(true)
            }
            Ok(Merged::Known) => Ok(false),
            Err(MergeError::Full) => {
                warn!("swarm-state event dropped: this node holds as many as it keeps");
                Ok(false)
            }
            Err(MergeError::Bad(why)) => Err(why),
        }
    }

    /// Add writes to the deferred batch (flushed on the next tick).
    fn defer(&mut self, batch: WriteBatch) {
        let d = &mut self.deferred;
        d.put_events.extend(batch.put_events);
        d.delete_events.extend(batch.delete_events);
        d.put_meta.extend(batch.put_meta);
    }

    /// Apply events from a sync exchange; penalise the sender for bad ones.
    pub(super) fn apply_synced_events(&mut self, from: &PeerId, events: Vec<SignedEvent>) {
        let total = events.len();
        let mut bad = 0usize;
        let mut new = 0usize;
        for signed in events.into_iter().take(MAX_SYNC_EVENTS) {
            match self.accept_event(signed) {
                Ok(true) => new += 1,
                Ok(false) => {}
                Err(why) => {
                    bad += 1;
                    debug!(%from, %why, "invalid state event in sync");
                }
            }
        }
        if new > 0 {
            debug!(%from, new, "state events learnt by sync");
        }
        if bad > 0 || total > MAX_SYNC_EVENTS {
            self.penalise(
                *from,
                format!("{bad} invalid of {total} state events in sync"),
            );
        }
    }

    /// Make, sign, apply, store (durably, before answering) and publish an
    /// event of this node.
    fn publish_event(&mut self, ev: StateEvent) -> Result<(), NodeError> {
        let signed = SignedEvent::sign(&ev, &self.cfg.keypair)
            .map_err(|e| NodeError::Storage(format!("cannot sign: {e}")))?;
        let bytes = postcard::to_stdvec(&signed).map_err(|e| NodeError::Storage(e.to_string()))?;
        let batch = match self.state.merge_signed(signed) {
            Ok(Merged::New(batch)) => {
                self.sync_group_members();
                batch
            }
            Ok(Merged::Known) => return Ok(()),
            Err(MergeError::Full) => {
                return Err(NodeError::Conflict(
                    "this node holds as many swarm-state events as it keeps".into(),
                ))
            }
            Err(MergeError::Bad(why)) => return Err(NodeError::BadRequest(why)),
        };
        // Write what is deferred with it, in order, so an older event
        // written later can never outlive the one that superseded it.
        let mut all = std::mem::take(&mut self.deferred);
        all.put_events.extend(batch.put_events);
        all.delete_events.extend(batch.delete_events);
        if let Err(e) = self.store.apply(&all) {
            error!(error = %e, "cannot store a swarm-state event; will retry");
            self.deferred = all;
            return Err(NodeError::Storage(e.to_string()));
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.state_topic.clone(), bytes)
        {
            Ok(_) => self.note_gossip(STATE_TOPIC, "out"),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!(error = %e, "state event not published; sync will carry it"),
        }
        Ok(())
    }

    fn resolve_group(&self, key: &str) -> Result<GroupView, NodeError> {
        use crate::core::groups::ResolveError;
        self.state.groups.resolve(key).map_err(|e| match e {
            ResolveError::Unknown(_) => NodeError::NotFound(e.to_string()),
            ResolveError::Ambiguous { .. } => NodeError::Conflict(e.to_string()),
        })
    }

    fn member(&self, id: &NodeId) -> GroupMember {
        let name = if id == &self.local_id {
            Some(self.cfg.name.clone())
        } else {
            self.view.get(id).map(|e| e.ann.name.clone())
        };
        GroupMember {
            id: id.clone(),
            name,
        }
    }

    fn group_info(&self, g: &GroupView) -> GroupInfo {
        GroupInfo {
            id: g.id.0.clone(),
            name: g.name.clone(),
            max_members: g.max_members,
            open: g.open,
            created_by: g.created_by.clone(),
            members: g.members.iter().map(|m| self.member(m)).collect(),
            invited: g.invited.iter().cloned().collect(),
            is_member: g.members.contains(&self.local_id),
        }
    }

    fn group_info_of(&self, id: &GroupId) -> Result<GroupInfo, NodeError> {
        self.state
            .groups
            .get(id)
            .map(|g| self.group_info(&g))
            .ok_or_else(|| NodeError::NotFound(format!("no group {id}")))
    }

    fn group_event(&self, group: &GroupId, kind: GroupEventKind) -> StateEvent {
        StateEvent::Group(GroupEvent {
            group: group.clone(),
            actor: self.local_id.clone(),
            clock: self.state.next_clock(),
            kind,
        })
    }

    pub(super) fn create_group(&mut self, new: NewGroup) -> Result<GroupInfo, NodeError> {
        let id = GroupId(uuid::Uuid::new_v4().to_string());
        let ev = self.group_event(
            &id,
            GroupEventKind::Create {
                name: new.name.trim().to_owned(),
                max_members: new.max_members,
                open: new.open,
            },
        );
        self.publish_event(ev)?;
        info!(group = %id, name = %new.name.trim(), "group created");
        self.record_local(
            HistoryKind::GroupChange,
            HistoryOutcome::Created,
            &format!("group {} ({id}) created", new.name.trim()),
        );
        self.group_info_of(&id)
    }

    pub(super) fn join_group(&mut self, key: &str) -> Result<GroupInfo, NodeError> {
        let g = self.resolve_group(key)?;
        if g.members.contains(&self.local_id) {
            return Ok(self.group_info(&g));
        }
        if g.members.len() >= g.max_members as usize {
            return Err(NodeError::Conflict(format!(
                "group {} ({}) is full: {} of {} members",
                g.name,
                g.id,
                g.members.len(),
                g.max_members
            )));
        }
        if !g.open && !g.invited.contains(&self.local_id) {
            return Err(NodeError::Conflict(format!(
                "group {} ({}) is closed: a member must invite this node first \
                 (lanswarm groups invite {} {})",
                g.name, g.id, g.id, self.local_id
            )));
        }
        let ev = self.group_event(&g.id, GroupEventKind::Join);
        self.publish_event(ev)?;
        let info = self.group_info_of(&g.id)?;
        if !info.is_member {
            return Err(NodeError::Conflict(format!(
                "joining group {} did not take effect",
                g.id
            )));
        }
        info!(group = %g.id, "joined group");
        self.record_local(
            HistoryKind::GroupChange,
            HistoryOutcome::Joined,
            &format!("joined group {} ({})", g.name, g.id),
        );
        Ok(info)
    }

    pub(super) fn leave_group(&mut self, key: &str) -> Result<GroupInfo, NodeError> {
        let g = self.resolve_group(key)?;
        if !g.members.contains(&self.local_id) {
            return Ok(self.group_info(&g));
        }
        let ev = self.group_event(&g.id, GroupEventKind::Leave);
        self.publish_event(ev)?;
        info!(group = %g.id, "left group");
        self.record_local(
            HistoryKind::GroupChange,
            HistoryOutcome::Left,
            &format!("left group {} ({})", g.name, g.id),
        );
        self.group_info_of(&g.id)
    }

    pub(super) fn invite_to_group(
        &mut self,
        key: &str,
        node: &str,
    ) -> Result<GroupInfo, NodeError> {
        let node = parse_node(node)?;
        let g = self.resolve_group(key)?;
        if !g.members.contains(&self.local_id) {
            return Err(NodeError::Conflict(format!(
                "only members of group {} can invite, and this node is not one",
                g.id
            )));
        }
        if g.members.contains(&node) || g.invited.contains(&node) {
            return Ok(self.group_info(&g));
        }
        let ev = self.group_event(&g.id, GroupEventKind::Invite { node: node.clone() });
        self.publish_event(ev)?;
        info!(group = %g.id, %node, "invited to group");
        self.record_local(
            HistoryKind::GroupChange,
            HistoryOutcome::Invited,
            &format!("invited {node} to group {} ({})", g.name, g.id),
        );
        self.group_info_of(&g.id)
    }

    pub(super) fn group_infos(&self) -> Vec<GroupInfo> {
        self.state
            .groups
            .groups()
            .iter()
            .map(|g| self.group_info(g))
            .collect()
    }

    pub(super) fn group_by_key(&self, key: &str) -> Result<GroupInfo, NodeError> {
        self.resolve_group(key).map(|g| self.group_info(&g))
    }

    /// Change the policy, store it durably, and announce the new hint.
    pub(super) fn set_access(&mut self, change: AccessChange) -> Result<AccessPolicy, NodeError> {
        let parse_all = |ids: &[String]| -> Result<Vec<NodeId>, NodeError> {
            ids.iter().map(|s| parse_node(s)).collect()
        };
        let mut p = self.policy.clone();
        if let Some(v) = change.allow_remote {
            p.allow_remote = v;
        }
        if let Some(v) = change.group_peers_only {
            p.group_peers_only = v;
        }
        for id in parse_all(&change.allow_remove)? {
            p.allow.remove(&id);
        }
        for id in parse_all(&change.deny_remove)? {
            p.deny.remove(&id);
        }
        for id in parse_all(&change.allow_add)? {
            p.allow.insert(id);
        }
        for id in parse_all(&change.deny_add)? {
            p.deny.insert(id);
        }
        p.validate().map_err(NodeError::BadRequest)?;
        if p == self.policy {
            return Ok(p);
        }
        self.store
            .apply(&policy_batch(&p, &self.cfg.access))
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        info!(
            allow_remote = p.allow_remote,
            group_peers_only = p.group_peers_only,
            allow = p.allow.len(),
            deny = p.deny.len(),
            "access policy changed"
        );
        self.record_local(
            HistoryKind::PolicyChange,
            HistoryOutcome::Changed,
            &history::access_change(&self.policy, &p),
        );
        self.policy = p.clone();
        self.schedule_announce();
        Ok(p)
    }

    fn pool_info(&self, p: &PoolView) -> PoolInfo {
        let now = now_ms();
        let mut members = Vec::new();
        let mut online = Vec::new();
        let local = self.view.local();
        if pools::matches(&p.selector, &self.local_id, &local.labels) {
            members.push(self.member(&self.local_id));
            online.push((&local.capacity, &local.free));
        }
        for e in self.view.peers() {
            if pools::matches(&p.selector, &e.ann.node_id, &e.ann.labels) {
                members.push(self.member(&e.ann.node_id));
                let up = self
                    .view
                    .status(&e.ann.node_id, now)
                    .is_some_and(NodeStatus::usable);
                if up && !e.ann.leaving {
                    online.push((&e.ann.capacity, &e.ann.free));
                }
            }
        }
        for id in &p.selector.nodes {
            if !members.iter().any(|m| &m.id == id) {
                members.push(GroupMember {
                    id: id.clone(),
                    name: None,
                });
            }
        }
        PoolInfo {
            name: p.name.clone(),
            selector: p.selector.clone(),
            created_by: p.created_by.clone(),
            members,
            capacity: pools::aggregate(online),
        }
    }

    pub(super) fn pool_infos(&self) -> Vec<PoolInfo> {
        self.state
            .pools
            .pools()
            .iter()
            .map(|p| self.pool_info(p))
            .collect()
    }

    pub(super) fn pool_by_name(&self, name: &str) -> Result<PoolInfo, NodeError> {
        self.state
            .pools
            .get(name)
            .map(|p| self.pool_info(&p))
            .ok_or_else(|| NodeError::NotFound(format!("no pool named {name:?}")))
    }

    pub(super) fn create_pool(&mut self, new: NewPool) -> Result<PoolInfo, NodeError> {
        for id in &new.selector.nodes {
            parse_node(&id.0)?;
        }
        let ev = PoolEvent {
            pool: new.name.clone(),
            actor: self.local_id.clone(),
            clock: self.state.next_clock(),
            kind: PoolEventKind::Create {
                selector: new.selector,
            },
        };
        pools::validate(&ev).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        self.publish_event(StateEvent::Pool(ev))?;
        info!(pool = %new.name, "pool created");
        self.record_local(
            HistoryKind::PoolChange,
            HistoryOutcome::Created,
            &format!("pool {} created", new.name),
        );
        self.pool_by_name(&new.name)
    }

    pub(super) fn delete_pool(&mut self, name: &str) -> Result<(), NodeError> {
        if self.state.pools.get(name).is_none() {
            return Err(NodeError::NotFound(format!("no pool named {name:?}")));
        }
        let ev = PoolEvent {
            pool: name.to_owned(),
            actor: self.local_id.clone(),
            clock: self.state.next_clock(),
            kind: PoolEventKind::Delete,
        };
        self.publish_event(StateEvent::Pool(ev))?;
        info!(pool = %name, "pool deleted");
        self.record_local(
            HistoryKind::PoolChange,
            HistoryOutcome::Deleted,
            &format!("pool {name} deleted"),
        );
        Ok(())
    }

    /// Whether `ann` is within the request's pool and group, if it names
    /// them (unknown ones count as out of scope).
    pub(super) fn in_scope(&self, req: &AllocationRequest, ann: &Announcement) -> bool {
        if let Some(name) = &req.pool {
            match self.state.pools.get(name) {
                Some(p) if pools::matches(&p.selector, &ann.node_id, &ann.labels) => {}
                _ => return false,
            }
        }
        if let Some(key) = &req.group {
            match self.state.groups.resolve(key) {
                Ok(g) if g.members.contains(&ann.node_id) => {}
                _ => return false,
            }
        }
        true
    }

    /// Narrow a request's candidates to a pool's nodes or a group's
    /// members, noting why others were left out.
    pub(super) fn scope_candidates(
        &self,
        req: &AllocationRequest,
        candidates: &mut Vec<crate::core::placement::Candidate>,
        excluded: &mut Vec<Excluded>,
    ) -> Result<(), NodeError> {
        if let Some(name) = &req.pool {
            let pool = self
                .state
                .pools
                .get(name)
                .ok_or_else(|| NodeError::NotFound(format!("no pool named {name:?}")))?;
            let local_labels = &self.view.local().labels;
            candidates.retain(|c| {
                let labels = if c.is_local {
                    local_labels
                } else {
                    match self.view.get(&c.node_id) {
                        Some(e) => &e.ann.labels,
                        None => return false,
                    }
                };
                let keep = pools::matches(&pool.selector, &c.node_id, labels);
                if !keep {
                    excluded.push(Excluded {
                        node_id: c.node_id.clone(),
                        node_name: c.name.clone(),
                        why: format!("not in pool {name}"),
                    });
                }
                keep
            });
        }
        if let Some(key) = &req.group {
            let g = self.resolve_group(key)?;
            candidates.retain(|c| {
                let keep = g.members.contains(&c.node_id);
                if !keep {
                    excluded.push(Excluded {
                        node_id: c.node_id.clone(),
                        node_name: c.name.clone(),
                        why: format!("not a member of group {} ({})", g.name, g.id),
                    });
                }
                keep
            });
        }
        // Skip owners whose announced policy would refuse us; the owner's
        // own check still decides for the others. A request aimed at one
        // node asks it anyway, to get its own answer.
        if req.node_id.is_some() {
            return Ok(());
        }
        candidates.retain(|c| {
            if c.is_local {
                return true;
            }
            let Some(e) = self.view.get(&c.node_id) else {
                return true;
            };
            let keep = access::hint_admits(
                &e.ann.access,
                &c.node_id,
                &self.local_id,
                &self.state.groups,
            );
            if !keep {
                excluded.push(Excluded {
                    node_id: c.node_id.clone(),
                    node_name: c.name.clone(),
                    why: "its announced access policy does not admit this node".into(),
                });
            }
            keep
        });
        Ok(())
    }
}
