//! Roles on the node: the role policy in force, stored like the access
//! policy (the config's wins again once it is edited), changed at runtime
//! through the API, and checked by the owner against the authenticated
//! peer id of every request ([`crate::core::roles`]).

use super::*;
use crate::core::history::{HistoryKind, Outcome as HistoryOutcome};
use crate::core::roles::{self, Permission, RolePolicy};
use crate::handle::{RolesChange, RolesInfo};

/// Metadata key of the role policy in force.
const META_ROLES: &str = "role_policy_v1";
/// Metadata key of the config's role policy when the stored one was last
/// set, to tell whether the config has been edited since.
const META_ROLES_CONFIG: &str = "role_policy_config_v1";

/// The roles to start with: the stored ones, unless the config's changed
/// since they were stored (then the config wins, and is stored).
pub(super) fn restore_roles(
    store: &Store,
    from_config: &RolePolicy,
) -> Result<RolePolicy, crate::store::StoreError> {
    let seen: Option<RolePolicy> = store.meta(META_ROLES_CONFIG)?;
    let stored: Option<RolePolicy> = store.meta(META_ROLES)?;
    match (seen, stored) {
        (Some(seen), Some(stored)) if &seen == from_config && stored.validate().is_ok() => {
            Ok(stored)
        }
        (seen, _) => {
            if seen.is_some() {
                info!("roles in the config changed; they replace the stored ones");
            }
            store.apply(&roles_batch(from_config, from_config))?;
            Ok(from_config.clone())
        }
    }
}

fn roles_batch(policy: &RolePolicy, from_config: &RolePolicy) -> WriteBatch {
    let enc = |p: &RolePolicy| postcard::to_stdvec(p).unwrap_or_default();
    WriteBatch {
        put_meta: vec![
            (META_ROLES.to_owned(), enc(policy)),
            (META_ROLES_CONFIG.to_owned(), enc(from_config)),
        ],
        ..Default::default()
    }
}

/// A peer id given by a user, checked.
fn parse_peer(id: &str) -> Result<NodeId, NodeError> {
    let id = id.trim();
    id.parse::<PeerId>()
        .map(|_| NodeId(id.to_owned()))
        .map_err(|_| NodeError::BadRequest(format!("{id:?} is not a peer id")))
}

/// `policy` with `change` applied, validated; the policy is untouched on
/// error.
fn apply_change(policy: &RolePolicy, change: RolesChange) -> Result<RolePolicy, NodeError> {
    let mut p = policy.clone();
    if let Some(d) = change.default_role {
        p.default_role = d.trim().to_owned();
    }
    for id in &change.unassign_peers {
        p.peers.remove(&parse_peer(id)?);
    }
    for g in &change.unassign_groups {
        p.groups.remove(g.trim());
    }
    for (id, role) in change.assign_peers {
        p.peers.insert(parse_peer(&id)?, role.trim().to_owned());
    }
    for (g, role) in change.assign_groups {
        p.groups.insert(g.trim().to_owned(), role.trim().to_owned());
    }
    p.validate().map_err(NodeError::BadRequest)?;
    Ok(p)
}

impl EventLoop {
    pub(super) fn roles_info(&self) -> RolesInfo {
        RolesInfo {
            policy: self.roles.clone(),
            roles: self.roles.roles(),
        }
    }

    /// Change the role assignments, store them durably, and record it.
    pub(super) fn set_roles(&mut self, change: RolesChange) -> Result<RolesInfo, NodeError> {
        let p = apply_change(&self.roles, change)?;
        if p == self.roles {
            return Ok(self.roles_info());
        }
        self.store
            .apply(&roles_batch(&p, &self.cfg.roles))
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        info!(
            default = %p.default_role,
            peers = p.peers.len(),
            groups = p.groups.len(),
            "roles changed"
        );
        self.record_local(
            HistoryKind::PolicyChange,
            HistoryOutcome::Changed,
            &format!(
                "roles: default {}, {} peer and {} group assignments",
                p.default_role,
                p.peers.len(),
                p.groups.len()
            ),
        );
        self.roles = p;
        Ok(self.roles_info())
    }

    /// Whether `requester` may take the action `perm` here.
    pub(super) fn permit(&self, requester: &NodeId, perm: Permission) -> Result<(), Denial> {
        roles::check(
            &self.roles,
            &self.local_id,
            requester,
            &self.state.groups,
            perm,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn changes_apply_and_bad_ones_change_nothing() {
        let p = RolePolicy::default();
        let mut c = RolesChange::default();
        c.assign_peers.insert(PEER.into(), "viewer".into());
        c.assign_groups.insert("lab".into(), "user".into());
        let q = apply_change(&p, c).unwrap();
        assert_eq!(q.peers.get(&NodeId(PEER.into())).unwrap(), "viewer");
        assert_eq!(q.groups.get("lab").unwrap(), "user");

        let mut bad = RolesChange::default();
        bad.assign_peers.insert(PEER.into(), "root".into());
        let e = apply_change(&q, bad).unwrap_err().to_string();
        assert!(e.contains("unknown role \"root\""), "{e}");

        let mut bad = RolesChange::default();
        bad.assign_peers.insert("nobody".into(), "user".into());
        let e = apply_change(&q, bad).unwrap_err().to_string();
        assert!(e.contains("not a peer id"), "{e}");

        let bad = RolesChange {
            default_role: Some("superuser".into()),
            ..Default::default()
        };
        assert!(apply_change(&q, bad).is_err());

        let undo = RolesChange {
            unassign_peers: vec![PEER.into()],
            unassign_groups: vec!["lab".into()],
            ..Default::default()
        };
        assert_eq!(apply_change(&q, undo).unwrap(), p);
    }
}
