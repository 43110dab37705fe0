//! Swarm groups as an op-based CRDT: a grow-only set of signed events, and
//! membership as a deterministic function of that set.
//!
//! Every node keeps the set of all [`GroupEvent`]s it has seen. Merging two
//! replicas is set union, so it is commutative, associative and idempotent,
//! and any two nodes that have seen the same events compute the same groups,
//! whatever order the events arrived in.
//!
//! # Rules
//!
//! Events are processed in a total order: Lamport `clock`, then `actor`
//! ([`NodeId`]), then kind (`Create` < `Join` < `Leave`, then the kind's
//! fields), then the group id. For each group:
//!
//! - The group exists from its earliest `Create` in that order. A later
//!   `Create` for the same id is ignored (its name and size never apply).
//! - `Create` makes its actor the first member. The creator may `Leave` like
//!   anyone else; the group keeps existing with its name and size.
//! - `Join` and `Leave` events ordered before the group's `Create`, or for a
//!   group with no `Create` at all, are ignored.
//! - A `Join` counts only if its actor is not already a member and the group
//!   has fewer than `max_members` members at that point in the order.
//!   Otherwise the `Join` is void: the actor is not a member and must join
//!   again with a new event (a higher clock). When two nodes join at the same
//!   clock for the last seat, the smaller [`NodeId`] wins.
//! - A `Leave` removes its actor if it is a member, and does nothing
//!   otherwise.
//! - `Join` and `Leave` only ever concern the actor itself: nobody can add or
//!   remove another node.
//!
//! Invalid events (empty or whitespace-only name, name longer than
//! [`MAX_NAME_CHARS`] characters, `max_members` of 0 or above
//! [`MAX_MEMBERS`]) are refused by [`Groups::apply`] and never stored.
//!
//! The caller makes each new event with clock [`Groups::clock`]` + 1`, signs
//! it and gossips it; authentication of the actor happens outside the core.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

/// Longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Largest `max_members` a group may have.
pub const MAX_MEMBERS: u32 = 10_000;

/// A group identifier: UUID text made by the node that creates the group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for GroupId {
    fn from(s: &str) -> Self {
        GroupId(s.to_owned())
    }
}

/// What a group event does. The variant order is the tie-break rank.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupEventKind {
    /// Create the group; the actor becomes its first member.
    Create { name: String, max_members: u32 },
    /// The actor joins the group.
    Join,
    /// The actor leaves the group.
    Leave,
}

/// One operation on one group, by one node, at one Lamport time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupEvent {
    pub group: GroupId,
    pub actor: NodeId,
    /// Lamport clock of the actor when it made the event.
    pub clock: u64,
    pub kind: GroupEventKind,
}

impl GroupEvent {
    fn key(&self) -> (u64, &NodeId, &GroupEventKind, &GroupId) {
        (self.clock, &self.actor, &self.kind, &self.group)
    }
}

/// The total order events are processed in: clock, actor, kind, group.
impl Ord for GroupEvent {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for GroupEvent {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group name must not be empty")]
    EmptyName,
    #[error("group name is {0} characters long; at most {MAX_NAME_CHARS} are allowed")]
    NameTooLong(usize),
    #[error("max_members is {0}; it must be between 1 and {MAX_MEMBERS}")]
    BadMaxMembers(u32),
}

/// A group as computed from the events seen so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub id: GroupId,
    pub name: String,
    pub max_members: u32,
    pub created_by: NodeId,
    pub members: BTreeSet<NodeId>,
}

/// Check an event's own fields. Join and Leave are always well formed.
pub fn validate(ev: &GroupEvent) -> Result<(), GroupError> {
    if let GroupEventKind::Create { name, max_members } = &ev.kind {
        if name.trim().is_empty() {
            return Err(GroupError::EmptyName);
        }
        let len = name.chars().count();
        if len > MAX_NAME_CHARS {
            return Err(GroupError::NameTooLong(len));
        }
        if *max_members == 0 || *max_members > MAX_MEMBERS {
            return Err(GroupError::BadMaxMembers(*max_members));
        }
    }
    Ok(())
}

/// The replicated group state: every valid event seen, and the groups they
/// define (recomputed whenever the set grows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    events: BTreeSet<GroupEvent>,
    views: BTreeMap<GroupId, GroupView>,
}

impl Groups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one event. `Ok(true)` if it was new, `Ok(false)` if already seen;
    /// an invalid event is refused and not stored.
    pub fn apply(&mut self, ev: GroupEvent) -> Result<bool, GroupError> {
        validate(&ev)?;
        let new = self.events.insert(ev);
        if new {
            self.recompute();
        }
        Ok(new)
    }

    /// Add every event of `other` (set union).
    pub fn merge(&mut self, other: &Groups) {
        let before = self.events.len();
        self.events.extend(other.events.iter().cloned());
        if self.events.len() != before {
            self.recompute();
        }
    }

    /// Every event seen, in the total order (for sync and persistence).
    pub fn events(&self) -> impl Iterator<Item = &GroupEvent> {
        self.events.iter()
    }

    /// The number of events seen.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event has been seen.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The highest clock seen (0 if none). A new event gets `clock() + 1`.
    pub fn clock(&self) -> u64 {
        self.events.iter().map(|e| e.clock).max().unwrap_or(0)
    }

    /// Every group that exists, sorted by id.
    pub fn groups(&self) -> Vec<GroupView> {
        self.views.values().cloned().collect()
    }

    /// One group, if it exists.
    pub fn get(&self, id: &GroupId) -> Option<GroupView> {
        self.views.get(id).cloned()
    }

    /// Whether `node` is a member of group `id`.
    pub fn is_member(&self, id: &GroupId, node: &NodeId) -> bool {
        self.views.get(id).is_some_and(|g| g.members.contains(node))
    }

    /// Whether `a` and `b` are both members of at least one group.
    pub fn share_group(&self, a: &NodeId, b: &NodeId) -> bool {
        self.views
            .values()
            .any(|g| g.members.contains(a) && g.members.contains(b))
    }

    /// Replay every event in the total order. The global order restricted to
    /// one group is that group's order, so one pass serves all groups.
    fn recompute(&mut self) {
        let mut views: BTreeMap<GroupId, GroupView> = BTreeMap::new();
        for ev in &self.events {
            match &ev.kind {
                GroupEventKind::Create { name, max_members } => {
                    views.entry(ev.group.clone()).or_insert_with(|| GroupView {
                        id: ev.group.clone(),
                        name: name.clone(),
                        max_members: *max_members,
                        created_by: ev.actor.clone(),
                        members: BTreeSet::from([ev.actor.clone()]),
                    });
                }
                GroupEventKind::Join => {
                    if let Some(g) = views.get_mut(&ev.group) {
                        if !g.members.contains(&ev.actor)
                            && g.members.len() < g.max_members as usize
                        {
                            g.members.insert(ev.actor.clone());
                        }
                    }
                }
                GroupEventKind::Leave => {
                    if let Some(g) = views.get_mut(&ev.group) {
                        g.members.remove(&ev.actor);
                    }
                }
            }
        }
        self.views = views;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(g: &str, actor: &str, clock: u64, max: u32) -> GroupEvent {
        GroupEvent {
            group: g.into(),
            actor: actor.into(),
            clock,
            kind: GroupEventKind::Create {
                name: format!("name-{g}"),
                max_members: max,
            },
        }
    }

    fn join(g: &str, actor: &str, clock: u64) -> GroupEvent {
        GroupEvent {
            group: g.into(),
            actor: actor.into(),
            clock,
            kind: GroupEventKind::Join,
        }
    }

    fn leave(g: &str, actor: &str, clock: u64) -> GroupEvent {
        GroupEvent {
            group: g.into(),
            actor: actor.into(),
            clock,
            kind: GroupEventKind::Leave,
        }
    }

    fn from(evs: &[GroupEvent]) -> Groups {
        let mut g = Groups::new();
        for e in evs {
            g.apply(e.clone()).unwrap();
        }
        g
    }

    fn members(g: &Groups, id: &str) -> Vec<String> {
        g.get(&id.into())
            .map(|v| v.members.into_iter().map(|n| n.0).collect())
            .unwrap_or_default()
    }

    #[test]
    fn create_makes_creator_first_member() {
        let g = from(&[create("g", "a", 1, 3)]);
        let v = g.get(&"g".into()).unwrap();
        assert_eq!(v.name, "name-g");
        assert_eq!(v.max_members, 3);
        assert_eq!(v.created_by, NodeId::from("a"));
        assert_eq!(members(&g, "g"), ["a"]);
        assert_eq!(g.clock(), 1);
    }

    #[test]
    fn duplicate_is_reported_and_harmless() {
        let mut g = Groups::new();
        assert_eq!(g.apply(create("g", "a", 1, 3)), Ok(true));
        assert_eq!(g.apply(create("g", "a", 1, 3)), Ok(false));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn invalid_events_are_refused_and_not_stored() {
        let mut g = Groups::new();
        let mut ev = create("g", "a", 1, 3);
        for (kind, err) in [
            (
                GroupEventKind::Create {
                    name: String::new(),
                    max_members: 3,
                },
                GroupError::EmptyName,
            ),
            (
                GroupEventKind::Create {
                    name: "  ".into(),
                    max_members: 3,
                },
                GroupError::EmptyName,
            ),
            (
                GroupEventKind::Create {
                    name: "x".repeat(65),
                    max_members: 3,
                },
                GroupError::NameTooLong(65),
            ),
            (
                GroupEventKind::Create {
                    name: "ok".into(),
                    max_members: 0,
                },
                GroupError::BadMaxMembers(0),
            ),
            (
                GroupEventKind::Create {
                    name: "ok".into(),
                    max_members: 10_001,
                },
                GroupError::BadMaxMembers(10_001),
            ),
        ] {
            ev.kind = kind;
            assert_eq!(g.apply(ev.clone()), Err(err));
        }
        assert!(g.is_empty());
        assert!(g.groups().is_empty());
        // The limits themselves are accepted.
        ev.kind = GroupEventKind::Create {
            name: "é".repeat(64),
            max_members: 10_000,
        };
        assert_eq!(g.apply(ev), Ok(true));
    }

    #[test]
    fn second_create_is_ignored() {
        let g = from(&[create("g", "b", 2, 5), create("g", "a", 3, 1)]);
        let v = g.get(&"g".into()).unwrap();
        assert_eq!(v.created_by, NodeId::from("b"));
        assert_eq!(v.max_members, 5);
        // The second creator does not become a member either.
        assert_eq!(members(&g, "g"), ["b"]);
        // Same clock: the smaller actor's Create is the earliest.
        let g = from(&[create("g", "b", 2, 5), create("g", "a", 2, 1)]);
        assert_eq!(g.get(&"g".into()).unwrap().created_by, NodeId::from("a"));
    }

    #[test]
    fn events_before_or_without_create_are_ignored() {
        let g = from(&[join("g", "b", 1), create("g", "a", 2, 5)]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert!(!g.is_member(&"g".into(), &"b".into()));
        let g = from(&[join("h", "b", 1)]);
        assert!(g.get(&"h".into()).is_none());
        assert!(g.groups().is_empty());
        // Rejoining after the Create counts.
        let g = from(&[join("g", "b", 1), create("g", "a", 2, 5), join("g", "b", 3)]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
    }

    #[test]
    fn join_and_leave() {
        let g = from(&[
            create("g", "a", 1, 5),
            join("g", "b", 2),
            join("g", "c", 2),
            leave("g", "b", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a", "c"]);
        // The creator can leave; the group stays.
        let g = from(&[create("g", "a", 1, 5), leave("g", "a", 2)]);
        assert!(g.get(&"g".into()).unwrap().members.is_empty());
        // Leaving when not a member does nothing; joining twice is one seat.
        let g = from(&[
            create("g", "a", 1, 2),
            leave("g", "b", 2),
            join("g", "b", 3),
            join("g", "b", 4),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
    }

    #[test]
    fn join_when_full_is_void_and_must_be_repeated() {
        let mut g = from(&[create("g", "a", 1, 2), join("g", "b", 2), join("g", "c", 3)]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
        // A seat frees up later; c's old Join does not come back to life.
        g.apply(leave("g", "b", 4)).unwrap();
        assert_eq!(members(&g, "g"), ["a"]);
        g.apply(join("g", "c", 5)).unwrap();
        assert_eq!(members(&g, "g"), ["a", "c"]);
    }

    #[test]
    fn race_for_last_seat_is_won_by_smaller_node_id() {
        let base = [create("g", "a", 1, 2)];
        let jb = join("g", "node-b", 5);
        let jc = join("g", "node-c", 5);
        // Two replicas receive the concurrent joins in opposite orders.
        let mut r1 = from(&base);
        r1.apply(jc.clone()).unwrap();
        r1.apply(jb.clone()).unwrap();
        let mut r2 = from(&base);
        r2.apply(jb).unwrap();
        r2.apply(jc).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(members(&r1, "g"), ["a", "node-b"]);
        // The loser sees that it is not a member.
        assert!(!r2.is_member(&"g".into(), &"node-c".into()));
        assert!(r2.is_member(&"g".into(), &"node-b".into()));
    }

    #[test]
    fn share_group_and_merge() {
        let mut x = from(&[create("g", "a", 1, 5), join("g", "b", 2)]);
        let y = from(&[create("h", "c", 1, 5), join("h", "a", 3)]);
        assert!(x.share_group(&"a".into(), &"b".into()));
        assert!(!x.share_group(&"a".into(), &"c".into()));
        x.merge(&y);
        assert!(x.share_group(&"a".into(), &"c".into()));
        assert!(!x.share_group(&"b".into(), &"c".into()));
        assert_eq!(x.groups().len(), 2);
        assert_eq!(x.clock(), 3);
    }

    #[test]
    fn events_round_trip_through_json() {
        let g = from(&[
            create("g", "a", 1, 5),
            join("g", "b", 2),
            leave("g", "b", 3),
        ]);
        let json = serde_json::to_string(&g.events().collect::<Vec<_>>()).unwrap();
        let back: Vec<GroupEvent> = serde_json::from_str(&json).unwrap();
        assert_eq!(from(&back), g);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
        const ACTORS: [&str; 4] = ["n0", "n1", "n2", "n3"];

        fn arb_event() -> impl Strategy<Value = GroupEvent> {
            (
                0..GROUPS.len(),
                0..ACTORS.len(),
                0u64..8,
                prop_oneof![
                    1 => (1u32..4).prop_map(|m| GroupEventKind::Create {
                        name: format!("n{m}"),
                        max_members: m,
                    }),
                    3 => Just(GroupEventKind::Join),
                    2 => Just(GroupEventKind::Leave),
                ],
            )
                .prop_map(|(g, a, clock, kind)| GroupEvent {
                    group: GROUPS[g].into(),
                    actor: ACTORS[a].into(),
                    clock,
                    kind,
                })
        }

        fn arb_events() -> impl Strategy<Value = Vec<GroupEvent>> {
            prop::collection::vec(arb_event(), 0..40)
        }

        /// The events in a shuffled delivery order, with some delivered twice.
        fn arb_deliveries() -> impl Strategy<Value = (Vec<GroupEvent>, Vec<GroupEvent>)> {
            arb_events().prop_flat_map(|evs| {
                let n = evs.len();
                (Just(evs.clone()), prop::collection::vec(0..n.max(1), 0..10)).prop_flat_map(
                    |(evs, dups)| {
                        let mut all = evs.clone();
                        if !evs.is_empty() {
                            all.extend(dups.iter().map(|&i| evs[i].clone()));
                        }
                        (Just(evs), Just(all).prop_shuffle())
                    },
                )
            })
        }

        fn build(evs: &[GroupEvent]) -> Groups {
            let mut g = Groups::new();
            for e in evs {
                g.apply(e.clone()).unwrap();
            }
            g
        }

        fn merged(a: &Groups, b: &Groups) -> Groups {
            let mut m = a.clone();
            m.merge(b);
            m
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any delivery order, with duplicates, gives the same groups.
            #[test]
            fn delivery_order_does_not_matter((evs, delivered) in arb_deliveries()) {
                let a = build(&evs);
                let b = build(&delivered);
                prop_assert_eq!(a.groups(), b.groups());
                prop_assert_eq!(&a, &b);
            }

            /// Merge is commutative, associative and idempotent, and equals
            /// applying the union of the events.
            #[test]
            fn merge_is_a_semilattice(x in arb_events(), y in arb_events(), z in arb_events()) {
                let (a, b, c) = (build(&x), build(&y), build(&z));
                prop_assert_eq!(merged(&a, &b), merged(&b, &a));
                prop_assert_eq!(
                    merged(&merged(&a, &b), &c),
                    merged(&a, &merged(&b, &c))
                );
                prop_assert_eq!(merged(&a, &a), a.clone());
                let union: Vec<GroupEvent> = x.iter().chain(&y).cloned().collect();
                prop_assert_eq!(merged(&a, &b).groups(), build(&union).groups());
            }

            /// No group ever has more members than its max_members, at any
            /// point of any delivery order.
            #[test]
            fn members_never_exceed_max((_, delivered) in arb_deliveries()) {
                let mut g = Groups::new();
                for e in delivered {
                    g.apply(e).unwrap();
                    for v in g.groups() {
                        prop_assert!(v.members.len() <= v.max_members as usize);
                    }
                }
            }
        }
    }
}
