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

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::core::groups::Groups;
use crate::model::{Denial, DenyReason, NodeId};

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

    /// "local" and "peer" share group g; "stranger" is in no group with
    /// "local".
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
            },
        ))
        .unwrap();
        g.apply(ev("peer", 2, GroupEventKind::Join)).unwrap();
        g
    }

    #[test]
    fn default_policy_admits_everyone() {
        let p = AccessPolicy::default();
        assert!(p.allow_remote && !p.group_peers_only);
        assert_eq!(check(&p, &n("local"), &n("x"), &Groups::new()), Ok(()));
        let back: AccessPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(back, p);
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
                what: "group peers only refuses a stranger",
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
        }
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

        proptest! {
            /// A denied node is never admitted; the local node always is.
            #[test]
            fn deny_always_refuses_and_local_always_admitted(
                p in arb_policy(),
                r in 1..NODES.len(),
                share in any::<bool>(),
            ) {
                let g = if share { groups() } else { Groups::new() };
                let requester = n(NODES[r]);
                let mut p = p;
                prop_assert_eq!(check(&p, &n("local"), &n("local"), &g), Ok(()));
                p.deny.insert(requester.clone());
                let d = check(&p, &n("local"), &requester, &g).unwrap_err();
                prop_assert_eq!(d.reason, DenyReason::Forbidden);
            }
        }
    }
}
