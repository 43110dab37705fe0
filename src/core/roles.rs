//! Roles: what an admitted peer may do on this node, action by action.
//!
//! The access policy ([`crate::core::access`]) decides whether this node
//! serves a requester at all. Roles then decide *which actions* it may
//! take. Both run on the owner, against the requester's [`NodeId`] as
//! authenticated by the transport (Noise), never a field of the message.
//!
//! # Permissions and roles
//!
//! A [`Permission`] is one action: `view`, `allocate`, `reserve`,
//! `run_task`, `infer`, `preempt`, `administer`. A role bundles some. The
//! built-in roles are:
//!
//! | role | permissions |
//! |---|---|
//! | `none` | nothing |
//! | `viewer` | view |
//! | `user` | view, allocate, reserve, run_task, infer |
//! | `operator` | user + preempt |
//! | `admin` | all seven |
//!
//! Custom roles are defined in the config (`[roles.custom]`) as lists of
//! permissions; their names must not clash with a built-in one.
//!
//! # Which role a requester has
//!
//! The first rule that applies decides:
//!
//! 1. The local node itself has every permission.
//! 2. A role assigned to the requester's peer id decides alone (so one
//!    member of a group can be given less, or more, than its group).
//! 3. Otherwise, if the requester is a member of groups that have roles
//!    (by group id or by name), it gets the union of their permissions.
//! 4. Otherwise it has the default role, `operator` unless configured:
//!    exactly what any admitted peer could do before roles existed
//!    (allocate, reserve, run tasks, infer, and preempt when preemption is
//!    on), so nothing changes on upgrade.
//!
//! A refusal is [`DenyReason::Forbidden`] with a message that names the
//! missing permission and the role that lacks it.
//!
//! # Limits
//!
//! [`RolePolicy::validate`] accepts at most [`MAX_CUSTOM_ROLES`] custom
//! roles and [`MAX_ASSIGNMENTS`] assignments of each kind, role names of 1
//! to [`MAX_ROLE_NAME`] characters (`a-z`, `0-9`, `-`, `_`), and refuses
//! every assignment to a role that does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::core::groups::{Groups, MAX_NODE_ID_BYTES};
use crate::model::{Denial, DenyReason, NodeId};

/// Most custom roles.
pub const MAX_CUSTOM_ROLES: usize = 64;
/// Most peer assignments, and most group assignments.
pub const MAX_ASSIGNMENTS: usize = 1024;
/// Longest role name.
pub const MAX_ROLE_NAME: usize = 32;
/// Longest group key (id or name) in an assignment.
pub const MAX_GROUP_KEY: usize = 128;
/// The default role of an admitted peer with no assignment.
pub const DEFAULT_ROLE: &str = "operator";

/// One action a peer may be allowed to take on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read this node's state (reserved for peer-facing reads; see
    /// `docs/security.md`).
    View,
    /// Be granted leases (single and multi-node allocations).
    Allocate,
    /// Book advance reservations.
    Reserve,
    /// Run declared task templates on one's leases.
    RunTask,
    /// Run inference on this node's model server.
    Infer,
    /// Have lower-priority leases preempted for one's requests.
    Preempt,
    /// Administer this node (local API administration maps to it).
    Administer,
}

impl Permission {
    /// Every permission, in order.
    pub const ALL: [Permission; 7] = [
        Permission::View,
        Permission::Allocate,
        Permission::Reserve,
        Permission::RunTask,
        Permission::Infer,
        Permission::Preempt,
        Permission::Administer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::Allocate => "allocate",
            Permission::Reserve => "reserve",
            Permission::RunTask => "run_task",
            Permission::Infer => "infer",
            Permission::Preempt => "preempt",
            Permission::Administer => "administer",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown permission {s:?}; expected one of: {}",
                    Permission::ALL.map(Permission::as_str).join(", ")
                )
            })
    }
}

/// A set of permissions.
pub type Permissions = BTreeSet<Permission>;

/// The built-in roles and their permissions, in order of increasing power.
pub fn builtin(name: &str) -> Option<Permissions> {
    use Permission::*;
    let user = [View, Allocate, Reserve, RunTask, Infer];
    let perms: &[Permission] = match name {
        "none" => &[],
        "viewer" => &[View],
        "user" => &user,
        "operator" => &[View, Allocate, Reserve, RunTask, Infer, Preempt],
        "admin" => &Permission::ALL,
        _ => return None,
    };
    Some(perms.iter().copied().collect())
}

/// Names of the built-in roles.
pub const BUILTIN_ROLES: [&str; 5] = ["none", "viewer", "user", "operator", "admin"];

/// An owner's roles: custom roles, assignments, and the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolePolicy {
    /// The role of an admitted peer with no assignment of its own or by
    /// group.
    pub default_role: String,
    /// Custom roles: name to permissions.
    pub custom: BTreeMap<String, Permissions>,
    /// Roles by peer id. Decides alone for that peer.
    pub peers: BTreeMap<NodeId, String>,
    /// Roles by group id or group name. A peer in several gets the union.
    pub groups: BTreeMap<String, String>,
}

impl Default for RolePolicy {
    fn default() -> Self {
        RolePolicy {
            default_role: DEFAULT_ROLE.to_owned(),
            custom: BTreeMap::new(),
            peers: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }
}

/// Where a requester's permissions came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The local node: everything.
    Local,
    /// Its own assignment, to this role.
    Peer(String),
    /// The roles of these groups (key, role), unioned.
    Groups(Vec<(String, String)>),
    /// The default role.
    Default(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local => f.write_str("the local node"),
            Source::Peer(r) => write!(f, "role {r:?} (assigned to this peer)"),
            Source::Groups(gs) => {
                let list: Vec<String> = gs
                    .iter()
                    .map(|(g, r)| format!("{r:?} via group {g}"))
                    .collect();
                write!(f, "roles {}", list.join(", "))
            }
            Source::Default(r) => write!(f, "role {r:?} (this node's default)"),
        }
    }
}

/// Whether `name` is a well-formed role name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROLE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl RolePolicy {
    /// The permissions of role `name`, built-in or custom.
    pub fn role(&self, name: &str) -> Option<Permissions> {
        builtin(name).or_else(|| self.custom.get(name).cloned())
    }

    /// Every role, built-in first, with its permissions.
    pub fn roles(&self) -> BTreeMap<String, Permissions> {
        BUILTIN_ROLES
            .iter()
            .filter_map(|n| builtin(n).map(|p| ((*n).to_owned(), p)))
            .chain(self.custom.iter().map(|(n, p)| (n.clone(), p.clone())))
            .collect()
    }

    /// Check names, sizes and that every assignment names a role that
    /// exists. The error says what is wrong, for the config or the API.
    pub fn validate(&self) -> Result<(), String> {
        if self.custom.len() > MAX_CUSTOM_ROLES {
            return Err(format!(
                "{} custom roles; at most {MAX_CUSTOM_ROLES} are allowed",
                self.custom.len()
            ));
        }
        for name in self.custom.keys() {
            if !valid_name(name) {
                return Err(format!(
                    "role name {name:?}: use 1 to {MAX_ROLE_NAME} of a-z, 0-9, - and _"
                ));
            }
            if builtin(name).is_some() {
                return Err(format!(
                    "role {name:?} is built in and cannot be redefined; pick another name"
                ));
            }
        }
        let known = |role: &str, what: &str| -> Result<(), String> {
            if self.role(role).is_some() {
                return Ok(());
            }
            let mut names: Vec<String> = BUILTIN_ROLES.iter().map(|s| (*s).to_owned()).collect();
            names.extend(self.custom.keys().cloned());
            Err(format!(
                "{what}: unknown role {role:?}; known roles: {}",
                names.join(", ")
            ))
        };
        known(&self.default_role, "the default role")?;
        if self.peers.len() > MAX_ASSIGNMENTS || self.groups.len() > MAX_ASSIGNMENTS {
            return Err(format!(
                "at most {MAX_ASSIGNMENTS} peer and {MAX_ASSIGNMENTS} group assignments are allowed"
            ));
        }
        for (peer, role) in &self.peers {
            if peer.0.is_empty() || peer.0.len() > MAX_NODE_ID_BYTES {
                return Err(format!(
                    "a peer assignment has a node id of {} bytes; expected 1 to {MAX_NODE_ID_BYTES}",
                    peer.0.len()
                ));
            }
            known(role, &format!("peer {peer}"))?;
        }
        for (group, role) in &self.groups {
            if group.trim().is_empty() || group.len() > MAX_GROUP_KEY {
                return Err(format!(
                    "a group assignment has a group key of {} bytes; expected 1 to {MAX_GROUP_KEY}",
                    group.len()
                ));
            }
            known(role, &format!("group {group:?}"))?;
        }
        Ok(())
    }

    /// The permissions of `requester`, a member of the groups `member_of`
    /// (each as `(id, name)`), and where they came from. See the module
    /// doc for the rules. An assignment to a role that does not exist
    /// (impossible after [`RolePolicy::validate`]) grants nothing.
    pub fn permissions(
        &self,
        local: &NodeId,
        requester: &NodeId,
        member_of: &[(&str, &str)],
    ) -> (Permissions, Source) {
        if requester == local {
            return (Permission::ALL.into_iter().collect(), Source::Local);
        }
        if let Some(role) = self.peers.get(requester) {
            return (
                self.role(role).unwrap_or_default(),
                Source::Peer(role.clone()),
            );
        }
        let mut perms = Permissions::new();
        let mut via = Vec::new();
        for (key, role) in &self.groups {
            if member_of.iter().any(|(id, name)| key == id || key == name) {
                perms.extend(self.role(role).unwrap_or_default());
                via.push((key.clone(), role.clone()));
            }
        }
        if !via.is_empty() {
            return (perms, Source::Groups(via));
        }
        (
            self.role(&self.default_role).unwrap_or_default(),
            Source::Default(self.default_role.clone()),
        )
    }

    /// Whether `requester` may take the action `perm`: `Ok`, or a
    /// [`DenyReason::Forbidden`] naming the missing permission.
    pub fn check(
        &self,
        local: &NodeId,
        requester: &NodeId,
        member_of: &[(&str, &str)],
        perm: Permission,
    ) -> Result<(), Denial> {
        let (perms, source) = self.permissions(local, requester, member_of);
        if perms.contains(&perm) {
            return Ok(());
        }
        Err(Denial::new(
            DenyReason::Forbidden,
            format!("{requester} lacks the `{perm}` permission here: it has {source}"),
        ))
    }
}

/// The groups of `requester` in `groups`, as `(id, name)`.
pub fn member_of(groups: &Groups, requester: &NodeId) -> Vec<(String, String)> {
    groups
        .groups()
        .into_iter()
        .filter(|g| g.members.contains(requester))
        .map(|g| (g.id.0, g.name))
        .collect()
}

/// [`RolePolicy::check`] with the requester's groups taken from `groups`.
pub fn check(
    policy: &RolePolicy,
    local: &NodeId,
    requester: &NodeId,
    groups: &Groups,
    perm: Permission,
) -> Result<(), Denial> {
    if requester == local {
        return Ok(());
    }
    let of = member_of(groups, requester);
    let of: Vec<(&str, &str)> = of.iter().map(|(i, n)| (i.as_str(), n.as_str())).collect();
    policy.check(local, requester, &of, perm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    fn n(s: &str) -> NodeId {
        s.into()
    }

    fn perms(ps: &[Permission]) -> Permissions {
        ps.iter().copied().collect()
    }

    #[test]
    fn default_is_as_open_as_before() {
        let p = RolePolicy::default();
        p.validate().unwrap();
        let (got, source) = p.permissions(&n("local"), &n("peer"), &[]);
        assert_eq!(
            got,
            perms(&[View, Allocate, Reserve, RunTask, Infer, Preempt])
        );
        assert_eq!(source, Source::Default("operator".into()));
        assert!(!got.contains(&Administer));
    }

    #[test]
    fn builtin_roles_nest() {
        let viewer = builtin("viewer").unwrap();
        let user = builtin("user").unwrap();
        let operator = builtin("operator").unwrap();
        let admin = builtin("admin").unwrap();
        assert!(builtin("none").unwrap().is_empty());
        assert!(viewer.is_subset(&user) && user.is_subset(&operator));
        assert!(operator.is_subset(&admin));
        assert_eq!(user, perms(&[View, Allocate, Reserve, RunTask, Infer]));
        assert_eq!(admin.len(), 7);
        assert!(builtin("root").is_none());
    }

    #[test]
    fn local_node_has_everything() {
        let p = RolePolicy {
            default_role: "none".into(),
            ..Default::default()
        };
        for perm in Permission::ALL {
            assert_eq!(p.check(&n("local"), &n("local"), &[], perm), Ok(()));
        }
    }

    #[test]
    fn peer_assignment_beats_groups_and_default() {
        let mut p = RolePolicy::default();
        p.peers.insert(n("peer"), "viewer".into());
        p.groups.insert("lab".into(), "admin".into());
        let (got, source) = p.permissions(&n("local"), &n("peer"), &[("g1", "lab")]);
        assert_eq!(got, perms(&[View]));
        assert_eq!(source, Source::Peer("viewer".into()));
    }

    #[test]
    fn groups_by_id_or_name_union_and_replace_the_default() {
        let mut p = RolePolicy::default();
        p.custom.insert("runner".into(), perms(&[RunTask]));
        p.groups.insert("g1".into(), "viewer".into());
        p.groups.insert("gpu".into(), "runner".into());
        p.validate().unwrap();
        // "g1" by id, "gpu" by name.
        let (got, _) = p.permissions(&n("local"), &n("peer"), &[("g1", "lab"), ("g2", "gpu")]);
        assert_eq!(got, perms(&[View, RunTask]));
        // A group role replaces the default: viewer alone cannot allocate.
        let d = p
            .check(&n("local"), &n("peer"), &[("g1", "lab")], Allocate)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::Forbidden);
        assert!(d.message.contains("`allocate`"), "{}", d.message);
        assert!(d.message.contains("group g1"), "{}", d.message);
        // Not in any assigned group: the default.
        assert_eq!(
            p.check(&n("local"), &n("peer"), &[("g3", "other")], Preempt),
            Ok(())
        );
    }

    #[test]
    fn refusal_names_the_permission_and_role() {
        let mut p = RolePolicy::default();
        p.peers.insert(n("peer"), "viewer".into());
        let d = p.check(&n("local"), &n("peer"), &[], Allocate).unwrap_err();
        assert_eq!(d.reason, DenyReason::Forbidden);
        assert!(d.message.contains("`allocate`"), "{}", d.message);
        assert!(d.message.contains("\"viewer\""), "{}", d.message);
    }

    #[test]
    fn validate_refuses_bad_policies() {
        let cases: Vec<(RolePolicy, &str)> = vec![
            (
                RolePolicy {
                    default_role: "root".into(),
                    ..Default::default()
                },
                "the default role: unknown role \"root\"",
            ),
            (
                {
                    let mut p = RolePolicy::default();
                    p.peers.insert(n("peer"), "superuser".into());
                    p
                },
                "peer peer: unknown role \"superuser\"",
            ),
            (
                {
                    let mut p = RolePolicy::default();
                    p.groups.insert("lab".into(), "nobody".into());
                    p
                },
                "group \"lab\": unknown role \"nobody\"",
            ),
            (
                {
                    let mut p = RolePolicy::default();
                    p.custom.insert("admin".into(), Permissions::new());
                    p
                },
                "built in and cannot be redefined",
            ),
            (
                {
                    let mut p = RolePolicy::default();
                    p.custom.insert("Bad Name".into(), Permissions::new());
                    p
                },
                "role name \"Bad Name\"",
            ),
            (
                {
                    let mut p = RolePolicy::default();
                    p.groups.insert(" ".into(), "user".into());
                    p
                },
                "group key",
            ),
        ];
        for (p, want) in cases {
            let e = p.validate().unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        let e = "fly".parse::<Permission>().unwrap_err();
        assert!(e.contains("run_task"), "{e}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NODES: [&str; 4] = ["local", "a", "b", "c"];
        const GROUPS: [(&str, &str); 3] = [("g1", "lab"), ("g2", "gpu"), ("g3", "ops")];
        const ROLE_NAMES: [&str; 7] = ["none", "viewer", "user", "operator", "admin", "c1", "c2"];

        fn arb_perms() -> impl Strategy<Value = Permissions> {
            proptest::collection::btree_set(
                proptest::sample::select(Permission::ALL.to_vec()),
                0..7,
            )
        }

        fn arb_role() -> impl Strategy<Value = String> {
            proptest::sample::select(ROLE_NAMES.to_vec()).prop_map(str::to_owned)
        }

        fn arb_policy() -> impl Strategy<Value = RolePolicy> {
            (
                arb_role(),
                arb_perms(),
                arb_perms(),
                proptest::collection::btree_map(
                    (1..NODES.len()).prop_map(|i| n(NODES[i])),
                    arb_role(),
                    0..3,
                ),
                proptest::collection::btree_map(
                    proptest::sample::select(vec!["g1", "lab", "g2", "gpu", "g3", "ops"])
                        .prop_map(str::to_owned),
                    arb_role(),
                    0..4,
                ),
            )
                .prop_map(|(default_role, c1, c2, peers, groups)| RolePolicy {
                    default_role,
                    custom: [("c1".to_owned(), c1), ("c2".to_owned(), c2)]
                        .into_iter()
                        .collect(),
                    peers,
                    groups,
                })
        }

        fn arb_member_of() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
            proptest::sample::subsequence(GROUPS.to_vec(), 0..=GROUPS.len())
        }

        fn arb_remote() -> impl Strategy<Value = NodeId> {
            (1..NODES.len()).prop_map(|i| n(NODES[i]))
        }

        /// The roles that apply to `r` by the documented rules, computed
        /// independently of `permissions`.
        fn applicable(p: &RolePolicy, r: &NodeId, of: &[(&str, &str)]) -> Vec<String> {
            if let Some(role) = p.peers.get(r) {
                return vec![role.clone()];
            }
            let via: Vec<String> = p
                .groups
                .iter()
                .filter(|(k, _)| of.iter().any(|(id, name)| *k == id || *k == name))
                .map(|(_, role)| role.clone())
                .collect();
            if via.is_empty() {
                vec![p.default_role.clone()]
            } else {
                via
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Generated policies are valid (so the properties below are
            /// about policies a node would accept).
            #[test]
            fn generated_policies_validate(p in arb_policy()) {
                prop_assert_eq!(p.validate(), Ok(()));
            }

            /// A role without a permission never gets that action: if no
            /// role that applies to the requester has `perm`, the check
            /// refuses with `forbidden` and a message naming `perm`.
            #[test]
            fn role_without_permission_never_gets_the_action(
                p in arb_policy(),
                r in arb_remote(),
                of in arb_member_of(),
                perm in proptest::sample::select(Permission::ALL.to_vec()),
            ) {
                let roles = applicable(&p, &r, &of);
                let any_has = roles.iter().any(|role| p.role(role).unwrap_or_default().contains(&perm));
                let got = p.check(&n("local"), &r, &of, perm);
                if any_has {
                    prop_assert_eq!(got, Ok(()));
                } else {
                    let d = got.unwrap_err();
                    prop_assert_eq!(d.reason, DenyReason::Forbidden);
                    let needle = format!("`{perm}`");
                    prop_assert!(d.message.contains(&needle));
                }
            }

            /// Peer and group assignments combine as documented: a peer
            /// assignment alone decides; else the union of the requester's
            /// group roles; else the default.
            #[test]
            fn assignments_combine_as_documented(
                p in arb_policy(),
                r in arb_remote(),
                of in arb_member_of(),
            ) {
                let (got, _) = p.permissions(&n("local"), &r, &of);
                let want: Permissions = applicable(&p, &r, &of)
                    .iter()
                    .flat_map(|role| p.role(role).unwrap_or_default())
                    .collect();
                prop_assert_eq!(&got, &want);
                // With a peer assignment, groups change nothing; once the
                // requester is in an assigned group, joining one more never
                // takes a permission away. (Joining the first assigned group
                // may: its role replaces the default.)
                for g in GROUPS {
                    if of.contains(&g) {
                        continue;
                    }
                    let mut more = of.clone();
                    more.push(g);
                    let (bigger, _) = p.permissions(&n("local"), &r, &more);
                    if p.peers.contains_key(&r) {
                        prop_assert_eq!(&bigger, &got);
                    } else if p
                        .groups
                        .keys()
                        .any(|k| of.iter().any(|(i, nm)| k == i || k == nm))
                    {
                        prop_assert!(got.is_subset(&bigger));
                    }
                }
            }

            /// The local node is never refused anything.
            #[test]
            fn local_never_refused(
                p in arb_policy(),
                of in arb_member_of(),
                perm in proptest::sample::select(Permission::ALL.to_vec()),
            ) {
                prop_assert_eq!(p.check(&n("local"), &n("local"), &of, perm), Ok(()));
            }
        }
    }
}
