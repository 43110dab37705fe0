//! Access policy: whether this node serves a given requester.
//!
//! The owner evaluates [`check`] on every allocation request, with the
//! requester's [`NodeId`] as authenticated by the transport (never an
//! address or a self-declared name).
//!
//! # Precedence
//!
//! The first rule that matches decides:
//!
//! 1. The local node itself is always admitted.
//! 2. A requester on the deny list is refused.
//! 3. If remote access is off (`allow_remote == false`), everyone else is
//!    refused.
//! 4. A requester on the allow list is admitted, even without a shared group.
//! 5. If `group_peers_only`, a requester that shares a group with the local
//!    node is admitted, and any other is refused.
//! 6. A non-empty allow list means "only these": a requester not on it is
//!    refused.
//! 7. Otherwise the requester is admitted.
//!
//! So with a non-empty allow list and `group_peers_only`, the node serves
//! the allow list plus its group peers. Every refusal is
//! [`DenyReason::Forbidden`] with a message naming the rule.
//!
//! "Shares a group" is [`Groups::share_group`] over the owner's group
//! state. Groups are closed unless created open (see
//! [`crate::core::groups`]), so on a shared LAN `group_peers_only` admits
//! only nodes that a member let in.
//!
//! # Limits
//!
//! [`AccessPolicy::validate`] accepts at most [`MAX_POLICY_NODES`] entries
//! in each list, node ids of 1 to [`MAX_NODE_ID_BYTES`] bytes, and no node
//! on both lists (the deny list would win, so such an entry is a mistake).
//!
//! # Hints
//!
//! An owner gossips an [`AccessHint`] made by [`AccessPolicy::hint`]:
//! `allow_remote`, `group_peers_only` and the allow list. A requester runs
//! [`hint_admits`] on it to skip owners that would refuse it. It is rules
//! 1 and 3 to 7 above; rule 2 cannot be predicted, because the deny list is
//! never gossiped: announcing it would tell a denied node that it is
//! denied, and publish the owner's list to everyone. So a hint can only err
//! towards asking: with the same group state, whenever [`check`] admits,
//! [`hint_admits`] does too, and it refuses exactly the requesters that
//! [`check`] would refuse for a reason other than the deny list. (A
//! requester whose group state lags the owner's may judge group peers
//! differently until the events reach it.) The hint decides nothing: the
//! owner's own [`check`] is the only one that counts.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::core::groups::{Groups, MAX_NODE_ID_BYTES};
pub use crate::model::AccessHint;
use crate::model::{Denial, DenyReason, NodeId};

/// Most entries in each of the allow and deny lists.
pub const MAX_POLICY_NODES: usize = 1024;

/// A node's access policy for its own resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessPolicy {
    /// Serve other nodes at all (seed 004's remote-access toggle).
    pub allow_remote: bool,
    /// Serve only nodes that share a group with this one (plus the allow
    /// list).
    pub group_peers_only: bool,
    /// Nodes always served (unless denied or remote access is off). When
    /// non-empty, only these (and, with `group_peers_only`, group peers)
    /// are served.
    pub allow: BTreeSet<NodeId>,
    /// Nodes never served.
    pub deny: BTreeSet<NodeId>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allow_remote: true,
            group_peers_only: false,
            allow: BTreeSet::new(),
            deny: BTreeSet::new(),
        }
    }
}

impl AccessPolicy {
    /// Check the lists: at most [`MAX_POLICY_NODES`] entries each, node ids
    /// of 1 to [`MAX_NODE_ID_BYTES`] bytes, and no node on both. The error
    /// says what is wrong, for the config file or the API caller.
    pub fn validate(&self) -> Result<(), String> {
        for (what, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_POLICY_NODES {
                return Err(format!(
                    "the {what} list has {} entries; at most {MAX_POLICY_NODES} are allowed",
                    list.len()
                ));
            }
            for id in list {
                if id.0.is_empty() {
                    return Err(format!("the {what} list has an empty node id"));
                }
                if id.0.len() > MAX_NODE_ID_BYTES {
                    let start: String = id.0.chars().take(16).collect();
                    return Err(format!(
                        "the {what} list has a node id of {} bytes ({start}...); at most \
                         {MAX_NODE_ID_BYTES} are allowed",
                        id.0.len()
                    ));
                }
            }
        }
        if let Some(id) = self.allow.intersection(&self.deny).next() {
            return Err(format!(
                "{id} is on both the allow list and the deny list; remove it from one"
            ));
        }
        Ok(())
    }

    /// What to gossip about this policy: everything but the deny list (see
    /// the module doc for why).
    pub fn hint(&self) -> AccessHint {
        AccessHint {
            allow_remote: self.allow_remote,
            group_peers_only: self.group_peers_only,
            allow: self.allow.iter().cloned().collect(),
        }
    }
}

/// Predict whether `owner`, announcing `hint`, would serve `requester`,
/// given the group state in `groups`: [`check`] without the deny list.
/// Use it to skip owners, never to admit anyone.
pub fn hint_admits(hint: &AccessHint, owner: &NodeId, requester: &NodeId, groups: &Groups) -> bool {
    if requester == owner {
        return true;
    }
    if !hint.allow_remote {
        return false;
    }
    if hint.allow.contains(requester) {
        return true;
    }
    if hint.group_peers_only {
        return groups.share_group(owner, requester);
    }
    hint.allow.is_empty()
}

/// Decide whether `local` serves `requester` under `policy`, given the
/// group state in `groups`. See the module doc for the precedence.
pub fn check(
    policy: &AccessPolicy,
    local: &NodeId,
    requester: &NodeId,
    groups: &Groups,
) -> Result<(), Denial> {
    let forbid = |msg: String| Err(Denial::new(DenyReason::Forbidden, msg));
    if requester == local {
        return Ok(());
    }
    if policy.deny.contains(requester) {
        return forbid(format!("{requester} is on this node's deny list"));
    }
    if !policy.allow_remote {
        return forbid("remote access is disabled on this node".to_owned());
    }
    if policy.allow.contains(requester) {
        return Ok(());
    }
    if policy.group_peers_only {
        if groups.share_group(local, requester) {
            return Ok(());
        }
        return if policy.allow.is_empty() {
            forbid(format!(
                "this node serves only peers that share a group with it, and {requester} shares none"
            ))
        } else {
            forbid(format!(
                "{requester} is not on this node's allow list and shares no group with it"
            ))
        };
    }
    if !policy.allow.is_empty() {
        return forbid(format!("{requester} is not on this node's allow list"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::groups::{GroupEvent, GroupEventKind};

    fn n(s: &str) -> NodeId {
        s.into()
    }

    fn set(xs: &[&str]) -> BTreeSet<NodeId> {
        xs.iter().map(|x| n(x)).collect()
    }

    /// "local" and "peer" share the closed group g ("local" invited
    /// "peer"); "stranger" is in no group with "local".
    fn groups() -> Groups {
        let mut g = Groups::new();
        let ev = |actor: &str, clock, kind| GroupEvent {
            group: "g".into(),
            actor: n(actor),
            clock,
            kind,
        };
        g.apply(ev(
            "local",
            1,
            GroupEventKind::Create {
                name: "lab".into(),
                max_members: 10,
                open: false,
            },
        ))
        .unwrap();
        g.apply(ev("local", 2, GroupEventKind::Invite { node: n("peer") }))
            .unwrap();
        g.apply(ev("peer", 3, GroupEventKind::Join)).unwrap();
        // Joining uninvited is void.
        g.apply(ev("stranger", 3, GroupEventKind::Join)).unwrap();
        g
    }

    #[test]
    fn default_policy_admits_everyone() {
        let p = AccessPolicy::default();
        assert!(p.allow_remote && !p.group_peers_only);
        assert_eq!(check(&p, &n("local"), &n("x"), &Groups::new()), Ok(()));
        let back: AccessPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(back, p);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn precedence_table() {
        struct Case {
            what: &'static str,
            remote: bool,
            groups_only: bool,
            allow: &'static [&'static str],
            deny: &'static [&'static str],
            requester: &'static str,
            refused_with: Option<&'static str>,
        }
        let cases = [
            Case {
                what: "local node, everything closed",
                remote: false,
                groups_only: true,
                allow: &["other"],
                deny: &["local"],
                requester: "local",
                refused_with: None,
            },
            Case {
                what: "deny beats allow",
                remote: true,
                groups_only: false,
                allow: &["peer"],
                deny: &["peer"],
                requester: "peer",
                refused_with: Some("deny list"),
            },
            Case {
                what: "deny beats shared group",
                remote: true,
                groups_only: true,
                allow: &[],
                deny: &["peer"],
                requester: "peer",
                refused_with: Some("deny list"),
            },
            Case {
                what: "remote off beats allow",
                remote: false,
                groups_only: false,
                allow: &["peer"],
                deny: &[],
                requester: "peer",
                refused_with: Some("remote access is disabled"),
            },
            Case {
                what: "remote off refuses group peers",
                remote: false,
                groups_only: true,
                allow: &[],
                deny: &[],
                requester: "peer",
                refused_with: Some("remote access is disabled"),
            },
            Case {
                what: "allow list admits without a shared group",
                remote: true,
                groups_only: true,
                allow: &["stranger"],
                deny: &[],
                requester: "stranger",
                refused_with: None,
            },
            Case {
                what: "group peers only admits a group peer",
                remote: true,
                groups_only: true,
                allow: &[],
                deny: &[],
                requester: "peer",
                refused_with: None,
            },
            Case {
                what: "group peers only refuses a stranger (its uninvited join is void)",
                remote: true,
                groups_only: true,
                allow: &[],
                deny: &[],
                requester: "stranger",
                refused_with: Some("share a group"),
            },
            Case {
                what: "allow list plus group peers admits a group peer",
                remote: true,
                groups_only: true,
                allow: &["other"],
                deny: &[],
                requester: "peer",
                refused_with: None,
            },
            Case {
                what: "allow list plus group peers refuses a stranger",
                remote: true,
                groups_only: true,
                allow: &["other"],
                deny: &[],
                requester: "stranger",
                refused_with: Some("not on this node's allow list and shares no group"),
            },
            Case {
                what: "non-empty allow list means only these",
                remote: true,
                groups_only: false,
                allow: &["other"],
                deny: &[],
                requester: "peer",
                refused_with: Some("not on this node's allow list"),
            },
            Case {
                what: "allow list admits its member",
                remote: true,
                groups_only: false,
                allow: &["other"],
                deny: &[],
                requester: "other",
                refused_with: None,
            },
            Case {
                what: "deny list refuses only its members",
                remote: true,
                groups_only: false,
                allow: &[],
                deny: &["other"],
                requester: "stranger",
                refused_with: None,
            },
        ];
        let g = groups();
        for c in cases {
            let p = AccessPolicy {
                allow_remote: c.remote,
                group_peers_only: c.groups_only,
                allow: set(c.allow),
                deny: set(c.deny),
            };
            let got = check(&p, &n("local"), &n(c.requester), &g);
            match c.refused_with {
                None => assert_eq!(got, Ok(()), "{}", c.what),
                Some(text) => {
                    let d = got.expect_err(c.what);
                    assert_eq!(d.reason, DenyReason::Forbidden, "{}", c.what);
                    assert!(d.message.contains(text), "{}: {}", c.what, d.message);
                }
            }
            // The hint agrees wherever the deny list is not what refuses.
            if c.refused_with != Some("deny list") {
                let predicted = hint_admits(&p.hint(), &n("local"), &n(c.requester), &g);
                assert_eq!(predicted, c.refused_with.is_none(), "hint: {}", c.what);
            }
        }
    }

    #[test]
    fn validate_checks_the_lists() {
        let ids =
            |k: usize| -> BTreeSet<NodeId> { (0..k).map(|i| NodeId(format!("n{i}"))).collect() };
        let ok = AccessPolicy {
            allow: ids(MAX_POLICY_NODES),
            deny: set(&["x", &"d".repeat(MAX_NODE_ID_BYTES)]),
            ..AccessPolicy::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                AccessPolicy {
                    allow: ids(MAX_POLICY_NODES + 1),
                    ..AccessPolicy::default()
                },
                "the allow list has 1025 entries; at most 1024 are allowed",
            ),
            (
                AccessPolicy {
                    deny: ids(MAX_POLICY_NODES + 1),
                    ..AccessPolicy::default()
                },
                "the deny list has 1025 entries; at most 1024 are allowed",
            ),
            (
                AccessPolicy {
                    deny: set(&[""]),
                    ..AccessPolicy::default()
                },
                "the deny list has an empty node id",
            ),
            (
                AccessPolicy {
                    allow: set(&[&"a".repeat(129)]),
                    ..AccessPolicy::default()
                },
                "the allow list has a node id of 129 bytes (aaaaaaaaaaaaaaaa...); at most 128 are allowed",
            ),
            (
                AccessPolicy {
                    allow: set(&["a", "b"]),
                    deny: set(&["b", "c"]),
                    ..AccessPolicy::default()
                },
                "b is on both the allow list and the deny list; remove it from one",
            ),
        ];
        for (p, msg) in cases {
            assert_eq!(p.validate(), Err(msg.to_owned()));
        }
    }

    #[test]
    fn hint_leaves_out_the_deny_list() {
        let p = AccessPolicy {
            allow_remote: true,
            group_peers_only: true,
            allow: set(&["b", "a"]),
            deny: set(&["c"]),
        };
        let h = p.hint();
        assert_eq!(
            h,
            AccessHint {
                allow_remote: true,
                group_peers_only: true,
                allow: vec![n("a"), n("b")],
            }
        );
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("deny") && !json.contains("\"c\""), "{json}");
        assert_eq!(serde_json::from_str::<AccessHint>(&json).unwrap(), h);
        // A denied node is predicted to be admitted: only the owner knows.
        let open = AccessPolicy {
            deny: set(&["c"]),
            ..AccessPolicy::default()
        };
        assert!(hint_admits(
            &open.hint(),
            &n("local"),
            &n("c"),
            &Groups::new()
        ));
        assert!(check(&open, &n("local"), &n("c"), &Groups::new()).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NODES: [&str; 4] = ["local", "peer", "stranger", "other"];

        fn arb_set() -> impl Strategy<Value = BTreeSet<NodeId>> {
            prop::collection::btree_set((0..NODES.len()).prop_map(|i| n(NODES[i])), 0..4)
        }

        fn arb_policy() -> impl Strategy<Value = AccessPolicy> {
            (any::<bool>(), any::<bool>(), arb_set(), arb_set()).prop_map(
                |(allow_remote, group_peers_only, allow, deny)| AccessPolicy {
                    allow_remote,
                    group_peers_only,
                    allow,
                    deny,
                },
            )
        }

        /// Two groups with arbitrary members among NODES: each non-empty
        /// member set is created (open) by its first node, and the rest
        /// join.
        fn arb_groups() -> impl Strategy<Value = Groups> {
            prop::collection::vec(prop::collection::btree_set(0..NODES.len(), 0..4), 2).prop_map(
                |sets| {
                    let mut g = Groups::new();
                    for (gi, members) in sets.iter().enumerate() {
                        let group = crate::core::groups::GroupId(format!("g{gi}"));
                        for (k, &m) in members.iter().enumerate() {
                            let kind = if k == 0 {
                                GroupEventKind::Create {
                                    name: group.0.clone(),
                                    max_members: 10,
                                    open: true,
                                }
                            } else {
                                GroupEventKind::Join
                            };
                            let clock = if k == 0 { 1 } else { 2 };
                            g.apply(GroupEvent {
                                group: group.clone(),
                                actor: n(NODES[m]),
                                clock,
                                kind,
                            })
                            .unwrap();
                        }
                    }
                    g
                },
            )
        }

        /// A requester other than "local".
        fn arb_remote() -> impl Strategy<Value = NodeId> {
            (1..NODES.len()).prop_map(|i| n(NODES[i]))
        }

        fn admitted(p: &AccessPolicy, r: &NodeId, g: &Groups) -> bool {
            check(p, &n("local"), r, g).is_ok()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// (a) The local node is always admitted.
            #[test]
            fn local_always_admitted(p in arb_policy(), g in arb_groups()) {
                prop_assert_eq!(check(&p, &n("local"), &n("local"), &g), Ok(()));
            }

            /// (b) A denied requester is never admitted, whatever else is set.
            #[test]
            fn denied_never_admitted(p in arb_policy(), r in arb_remote(), g in arb_groups()) {
                let mut p = p;
                p.deny.insert(r.clone());
                let d = check(&p, &n("local"), &r, &g).unwrap_err();
                prop_assert_eq!(d.reason, DenyReason::Forbidden);
            }

            /// (c) With remote access off, no other node is admitted.
            #[test]
            fn remote_off_admits_no_other(p in arb_policy(), r in arb_remote(), g in arb_groups()) {
                let mut p = p;
                p.allow_remote = false;
                prop_assert!(!admitted(&p, &r, &g));
            }

            /// (d) Admitted under group_peers_only without being on the
            /// allow list means sharing a group.
            #[test]
            fn group_peers_only_means_a_shared_group(
                p in arb_policy(),
                r in arb_remote(),
                g in arb_groups(),
            ) {
                if p.group_peers_only && !p.allow.contains(&r) && admitted(&p, &r, &g) {
                    prop_assert!(g.share_group(&n("local"), &r));
                }
            }

            /// (e) Admission is monotone in the lists: adding the requester
            /// to the allow list never turns an admit into a refusal, and
            /// adding it to the deny list always refuses.
            #[test]
            fn admission_is_monotone(p in arb_policy(), r in arb_remote(), g in arb_groups()) {
                let mut allowed = p.clone();
                allowed.allow.insert(r.clone());
                if admitted(&p, &r, &g) {
                    prop_assert!(admitted(&allowed, &r, &g));
                }
                let mut denied = p.clone();
                denied.deny.insert(r.clone());
                prop_assert!(!admitted(&denied, &r, &g));
            }

            /// The hint never makes a requester skip an owner that would
            /// admit it, and is exact when the deny list is not involved.
            #[test]
            fn hint_never_skips_wrongly(
                p in arb_policy(),
                r in (0..NODES.len()).prop_map(|i| n(NODES[i])),
                g in arb_groups(),
            ) {
                let predicted = hint_admits(&p.hint(), &n("local"), &r, &g);
                if admitted(&p, &r, &g) {
                    prop_assert!(predicted);
                }
                let mut undenied = p.clone();
                undenied.deny.remove(&r);
                prop_assert_eq!(predicted, admitted(&undenied, &r, &g));
            }
        }
    }
}
