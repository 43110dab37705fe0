//! Swarm groups as an op-based CRDT: a grow-only set of signed events, and
//! membership as a deterministic function of that set.
//!
//! Every node keeps the set of all [`GroupEvent`]s it has seen. Merging two
//! replicas is set union, so it is commutative, associative and idempotent,
//! and any two nodes that have seen the same events compute the same groups,
//! whatever order the events arrived in.
//!
//! Groups are closed by default: a node gets in only when a member invites
//! it. That is what makes "serve only peers that share a group with me"
//! (see [`crate::core::access`]) mean something on a shared LAN, where
//! anyone could otherwise join any group they hear of.
//!
//! # Rules
//!
//! Events are processed in a total order: Lamport `clock`, then `actor`
//! ([`NodeId`]), then kind (`Create` < `Invite` < `Join` < `Leave`, then the
//! kind's fields), then the group id. Each event is judged against the state
//! built by the events before it in that order ("at that point"). For each
//! group:
//!
//! - The group exists from its earliest `Create` in that order. A later
//!   `Create` for the same id is ignored (its name, size and openness never
//!   apply).
//! - `Create` makes its actor the first member, and says whether the group
//!   is `open`. The creator may `Leave` like anyone else; the group keeps
//!   existing with its name, size and openness.
//! - `Invite`, `Join` and `Leave` events ordered before the group's
//!   `Create`, or for a group with no `Create` at all, are ignored.
//! - An `Invite { node }` counts only if its actor is a member at that
//!   point and `node` is not. It records `node` as invited. Otherwise it is
//!   void. An invitation stays until it is used; there is no revocation,
//!   and the inviter leaving does not cancel it.
//! - A `Join` counts only if its actor is not already a member, the group
//!   has fewer than `max_members` members at that point, and the group is
//!   open or the actor is invited at that point. A counted `Join` makes the
//!   actor a member and uses up its invitation, so a node that leaves a
//!   closed group needs a new `Invite` to get back in (the creator too).
//!   A `Join` that does not count is void: the actor is not a member, keeps
//!   any invitation it had, and must join again with a new event (a higher
//!   clock). When two nodes join at the same clock for the last seat, the
//!   smaller [`NodeId`] wins.
//! - A `Leave` removes its actor if it is a member, and does nothing
//!   otherwise.
//! - `Join` and `Leave` only ever concern the actor itself: nobody can add or
//!   remove another node. `Invite` only lets the named node in; it never
//!   makes it a member.
//!
//! Because an invitee makes its `Join` after it has seen the `Invite` (at a
//! clock above it, see below), the `Invite` is always ordered first. A
//! `Join` made at the same clock as the `Invite` is ordered after it only if
//! the inviter's id is the smaller one, so such a `Join` may be void.
//!
//! Invalid events are refused by [`Groups::apply`] and never stored (see
//! [`validate`]): a `Create` with an empty or whitespace-only name, a name
//! longer than [`MAX_NAME_CHARS`] characters, or `max_members` of 0 or above
//! [`MAX_MEMBERS`]; an `Invite` whose node id is empty or longer than
//! [`MAX_NODE_ID_BYTES`] bytes, or that names its own actor.
//!
//! Memory is bounded: a replica holds at most [`MAX_EVENTS`] events, and
//! refuses new ones beyond that ([`GroupError::TooManyEvents`]).
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
/// Longest node id accepted where an event or a policy names another node,
/// in bytes. A libp2p `PeerId` in base58 is about 52.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Most events a replica holds. [`Groups::apply`] and [`Groups::merge`]
/// refuse new events beyond this.
pub const MAX_EVENTS: usize = 100_000;

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

/// What a group event does. The variant order is the tie-break rank in the
/// total order: `Create` < `Invite` < `Join` < `Leave`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupEventKind {
    /// Create the group; the actor becomes its first member. An `open`
    /// group admits anyone's `Join`; a closed one only invited nodes'.
    /// `open` defaults to `false` when absent.
    Create {
        name: String,
        max_members: u32,
        #[serde(default)]
        open: bool,
    },
    /// The actor, a member, invites `node` to join.
    Invite { node: NodeId },
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
    #[error("the invited node id must not be empty")]
    EmptyInvitee,
    #[error("the invited node id is {0} bytes long; at most {MAX_NODE_ID_BYTES} are allowed")]
    InviteeTooLong(usize),
    #[error("a node cannot invite itself")]
    SelfInvite,
    #[error("this node already holds {MAX_EVENTS} group events and accepts no more")]
    TooManyEvents,
}

/// Why [`Groups::resolve`] found no single group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no group has the id or the name {0:?}")]
    Unknown(String),
    #[error(
        "{} groups are named {name:?} (ids: {}); give a group id instead",
        .ids.len(),
        join_ids(.ids)
    )]
    Ambiguous { name: String, ids: Vec<GroupId> },
}

fn join_ids(ids: &[GroupId]) -> String {
    ids.iter()
        .map(|id| id.0.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A group as computed from the events seen so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub id: GroupId,
    pub name: String,
    pub max_members: u32,
    /// Whether anyone may join without an invitation.
    pub open: bool,
    pub created_by: NodeId,
    pub members: BTreeSet<NodeId>,
    /// Nodes invited and not yet joined.
    pub invited: BTreeSet<NodeId>,
}

/// Check an event's own fields. Join and Leave are always well formed.
pub fn validate(ev: &GroupEvent) -> Result<(), GroupError> {
    match &ev.kind {
        GroupEventKind::Create {
            name, max_members, ..
        } => {
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
        GroupEventKind::Invite { node } => {
            if node.0.is_empty() {
                return Err(GroupError::EmptyInvitee);
            }
            if node.0.len() > MAX_NODE_ID_BYTES {
                return Err(GroupError::InviteeTooLong(node.0.len()));
            }
            if *node == ev.actor {
                return Err(GroupError::SelfInvite);
            }
        }
        GroupEventKind::Join | GroupEventKind::Leave => {}
    }
    Ok(())
}

/// The replicated group state: every valid event seen, and the groups they
/// define (kept up to date as the set grows).
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
    /// an invalid event, or a new one when [`MAX_EVENTS`] are already held,
    /// is refused and not stored.
    pub fn apply(&mut self, ev: GroupEvent) -> Result<bool, GroupError> {
        validate(&ev)?;
        if self.events.contains(&ev) {
            return Ok(false);
        }
        if self.events.len() >= MAX_EVENTS {
            return Err(GroupError::TooManyEvents);
        }
        // The usual case, a fresh event ordered after all others, extends
        // the replay by one step; anything else replays from scratch.
        if self.events.last().is_none_or(|last| *last < ev) {
            step(&mut self.views, &ev);
            self.events.insert(ev);
        } else {
            self.events.insert(ev);
            self.recompute();
        }
        Ok(true)
    }

    /// Add every event of `other` (set union). If that would hold more than
    /// [`MAX_EVENTS`], the earliest of `other`'s new events in the total
    /// order are taken until the limit, and the rest are refused with
    /// [`GroupError::TooManyEvents`].
    pub fn merge(&mut self, other: &Groups) -> Result<(), GroupError> {
        let last = self.events.last().cloned();
        let mut incremental = true;
        let mut changed = false;
        let mut result = Ok(());
        // `other.events` is in the total order, so once a new event is past
        // our last one, every later one is too.
        for ev in &other.events {
            if self.events.contains(ev) {
                continue;
            }
            if self.events.len() >= MAX_EVENTS {
                result = Err(GroupError::TooManyEvents);
                break;
            }
            if incremental && last.as_ref().is_none_or(|l| l < ev) {
                step(&mut self.views, ev);
            } else {
                incremental = false;
            }
            self.events.insert(ev.clone());
            changed = true;
        }
        if changed && !incremental {
            self.recompute();
        }
        result
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
        // The total order starts with the clock.
        self.events.last().map_or(0, |e| e.clock)
    }

    /// Every group that exists, sorted by id.
    pub fn groups(&self) -> Vec<GroupView> {
        self.views.values().cloned().collect()
    }

    /// One group, if it exists.
    pub fn get(&self, id: &GroupId) -> Option<GroupView> {
        self.views.get(id).cloned()
    }

    /// The group whose id is `key`, or else the one group named exactly
    /// `key`. Names are not unique: when several groups share the name, the
    /// answer is [`ResolveError::Ambiguous`] with their ids, sorted.
    pub fn resolve(&self, key: &str) -> Result<GroupView, ResolveError> {
        if let Some(g) = self.views.get(&GroupId::from(key)) {
            return Ok(g.clone());
        }
        let mut named = self.views.values().filter(|g| g.name == key);
        match (named.next(), named.next()) {
            (None, _) => Err(ResolveError::Unknown(key.to_owned())),
            (Some(g), None) => Ok(g.clone()),
            (Some(_), Some(_)) => Err(ResolveError::Ambiguous {
                name: key.to_owned(),
                ids: self
                    .views
                    .values()
                    .filter(|g| g.name == key)
                    .map(|g| g.id.clone())
                    .collect(),
            }),
        }
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
        let mut views = BTreeMap::new();
        for ev in &self.events {
            step(&mut views, ev);
        }
        self.views = views;
    }
}

/// Apply one event to the groups built by every event before it in the
/// total order. The module doc's rules, one arm per kind.
fn step(views: &mut BTreeMap<GroupId, GroupView>, ev: &GroupEvent) {
    match &ev.kind {
        GroupEventKind::Create {
            name,
            max_members,
            open,
        } => {
            views.entry(ev.group.clone()).or_insert_with(|| GroupView {
                id: ev.group.clone(),
                name: name.clone(),
                max_members: *max_members,
                open: *open,
                created_by: ev.actor.clone(),
                members: BTreeSet::from([ev.actor.clone()]),
                invited: BTreeSet::new(),
            });
        }
        GroupEventKind::Invite { node } => {
            if let Some(g) = views.get_mut(&ev.group) {
                if g.members.contains(&ev.actor) && !g.members.contains(node) {
                    g.invited.insert(node.clone());
                }
            }
        }
        GroupEventKind::Join => {
            if let Some(g) = views.get_mut(&ev.group) {
                if !g.members.contains(&ev.actor)
                    && g.members.len() < g.max_members as usize
                    && (g.open || g.invited.contains(&ev.actor))
                {
                    g.invited.remove(&ev.actor);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn create_kind(g: &str, max: u32, open: bool) -> GroupEventKind {
        GroupEventKind::Create {
            name: format!("name-{g}"),
            max_members: max,
            open,
        }
    }

    fn ev(g: &str, actor: &str, clock: u64, kind: GroupEventKind) -> GroupEvent {
        GroupEvent {
            group: g.into(),
            actor: actor.into(),
            clock,
            kind,
        }
    }

    /// A closed group.
    fn create(g: &str, actor: &str, clock: u64, max: u32) -> GroupEvent {
        ev(g, actor, clock, create_kind(g, max, false))
    }

    fn create_open(g: &str, actor: &str, clock: u64, max: u32) -> GroupEvent {
        ev(g, actor, clock, create_kind(g, max, true))
    }

    fn invite(g: &str, actor: &str, node: &str, clock: u64) -> GroupEvent {
        ev(
            g,
            actor,
            clock,
            GroupEventKind::Invite { node: node.into() },
        )
    }

    fn join(g: &str, actor: &str, clock: u64) -> GroupEvent {
        ev(g, actor, clock, GroupEventKind::Join)
    }

    fn leave(g: &str, actor: &str, clock: u64) -> GroupEvent {
        ev(g, actor, clock, GroupEventKind::Leave)
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

    fn invited(g: &Groups, id: &str) -> Vec<String> {
        g.get(&id.into())
            .map(|v| v.invited.into_iter().map(|n| n.0).collect())
            .unwrap_or_default()
    }

    #[test]
    fn create_makes_creator_first_member() {
        let g = from(&[create("g", "a", 1, 3)]);
        let v = g.get(&"g".into()).unwrap();
        assert_eq!(v.name, "name-g");
        assert_eq!(v.max_members, 3);
        assert!(!v.open);
        assert_eq!(v.created_by, NodeId::from("a"));
        assert!(v.invited.is_empty());
        assert_eq!(members(&g, "g"), ["a"]);
        assert_eq!(g.clock(), 1);
        assert!(
            from(&[create_open("g", "a", 1, 3)])
                .get(&"g".into())
                .unwrap()
                .open
        );
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
        let mut e = create("g", "a", 1, 3);
        let named = |name: String, max_members| GroupEventKind::Create {
            name,
            max_members,
            open: false,
        };
        let inv = |node: String| GroupEventKind::Invite { node: NodeId(node) };
        for (kind, err) in [
            (named(String::new(), 3), GroupError::EmptyName),
            (named("  ".into(), 3), GroupError::EmptyName),
            (named("x".repeat(65), 3), GroupError::NameTooLong(65)),
            (named("ok".into(), 0), GroupError::BadMaxMembers(0)),
            (
                named("ok".into(), 10_001),
                GroupError::BadMaxMembers(10_001),
            ),
            (inv(String::new()), GroupError::EmptyInvitee),
            (inv("n".repeat(129)), GroupError::InviteeTooLong(129)),
            (inv("a".into()), GroupError::SelfInvite),
        ] {
            e.kind = kind;
            assert_eq!(g.apply(e.clone()), Err(err));
        }
        assert!(g.is_empty());
        assert!(g.groups().is_empty());
        // The limits themselves are accepted.
        e.kind = named("é".repeat(64), 10_000);
        assert_eq!(g.apply(e.clone()), Ok(true));
        e.kind = inv("n".repeat(128));
        assert_eq!(g.apply(e), Ok(true));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            GroupError::InviteeTooLong(200).to_string(),
            "the invited node id is 200 bytes long; at most 128 are allowed"
        );
        assert_eq!(
            GroupError::SelfInvite.to_string(),
            "a node cannot invite itself"
        );
        assert_eq!(
            GroupError::TooManyEvents.to_string(),
            "this node already holds 100000 group events and accepts no more"
        );
    }

    #[test]
    fn open_defaults_to_closed_in_json() {
        let e: GroupEvent = serde_json::from_str(
            r#"{"group":"g","actor":"a","clock":1,
                "kind":{"create":{"name":"lab","max_members":3}}}"#,
        )
        .unwrap();
        assert_eq!(
            e.kind,
            GroupEventKind::Create {
                name: "lab".into(),
                max_members: 3,
                open: false
            }
        );
    }

    #[test]
    fn kinds_rank_create_invite_join_leave() {
        let kinds = [
            create_kind("g", 1, true),
            GroupEventKind::Invite { node: "a".into() },
            GroupEventKind::Join,
            GroupEventKind::Leave,
        ];
        assert!(kinds.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn second_create_is_ignored() {
        let g = from(&[create("g", "b", 2, 5), create_open("g", "a", 3, 1)]);
        let v = g.get(&"g".into()).unwrap();
        assert_eq!(v.created_by, NodeId::from("b"));
        assert_eq!(v.max_members, 5);
        assert!(!v.open);
        // The second creator does not become a member either.
        assert_eq!(members(&g, "g"), ["b"]);
        // Same clock: the smaller actor's Create is the earliest.
        let g = from(&[create("g", "b", 2, 5), create("g", "a", 2, 1)]);
        assert_eq!(g.get(&"g".into()).unwrap().created_by, NodeId::from("a"));
    }

    #[test]
    fn events_before_or_without_create_are_ignored() {
        let g = from(&[join("g", "b", 1), create_open("g", "a", 2, 5)]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert!(!g.is_member(&"g".into(), &"b".into()));
        let g = from(&[join("h", "b", 1), invite("h", "a", "b", 1)]);
        assert!(g.get(&"h".into()).is_none());
        assert!(g.groups().is_empty());
        // Rejoining after the Create counts.
        let g = from(&[
            join("g", "b", 1),
            create_open("g", "a", 2, 5),
            join("g", "b", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
        // An invitation before the Create is void too.
        let g = from(&[
            invite("g", "a", "b", 1),
            create("g", "a", 2, 5),
            join("g", "b", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a"]);
    }

    #[test]
    fn invite_then_join_works() {
        let g = from(&[create("g", "a", 1, 5), invite("g", "a", "b", 2)]);
        assert_eq!(invited(&g, "g"), ["b"]);
        assert_eq!(members(&g, "g"), ["a"]);
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
            // A new member may invite in turn.
            invite("g", "b", "c", 4),
            join("g", "c", 5),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b", "c"]);
        assert!(invited(&g, "g").is_empty());
    }

    #[test]
    fn join_without_invite_to_closed_group_is_void() {
        let mut g = from(&[create("g", "a", 1, 5), join("g", "b", 2)]);
        assert_eq!(members(&g, "g"), ["a"]);
        // An invitation after the Join does not revive it.
        g.apply(invite("g", "a", "b", 3)).unwrap();
        assert_eq!(members(&g, "g"), ["a"]);
        assert_eq!(invited(&g, "g"), ["b"]);
        g.apply(join("g", "b", 4)).unwrap();
        assert_eq!(members(&g, "g"), ["a", "b"]);
        // An invitation for someone else does not let c in.
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "c", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert_eq!(invited(&g, "g"), ["b"]);
    }

    #[test]
    fn join_at_the_invite_clock_depends_on_ids() {
        // Inviter "a" < joiner "b": the Invite is ordered first.
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 2),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
        // Inviter "c" > joiner "b": the Join comes first and is void.
        let g = from(&[
            create("g", "c", 1, 5),
            invite("g", "c", "b", 2),
            join("g", "b", 2),
        ]);
        assert_eq!(members(&g, "g"), ["c"]);
        assert_eq!(invited(&g, "g"), ["b"]);
    }

    #[test]
    fn invite_by_non_member_is_void() {
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "x", "b", 2),
            join("g", "b", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert!(invited(&g, "g").is_empty());
        // A former member can no longer invite.
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
            leave("g", "b", 4),
            invite("g", "b", "c", 5),
            join("g", "c", 6),
        ]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert!(invited(&g, "g").is_empty());
        // Inviting a member is void too.
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
            invite("g", "a", "b", 4),
        ]);
        assert!(invited(&g, "g").is_empty());
    }

    #[test]
    fn invite_is_consumed_on_join() {
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            // Two invitations make one.
            invite("g", "a", "b", 3),
            join("g", "b", 4),
            leave("g", "b", 5),
            join("g", "b", 6),
        ]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert!(invited(&g, "g").is_empty());
        // A new invitation lets it back in, the creator included.
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
            leave("g", "b", 4),
            leave("g", "a", 4),
            join("g", "a", 5),
            invite("g", "b", "a", 6),
        ]);
        assert!(members(&g, "g").is_empty());
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
            leave("g", "a", 4),
            invite("g", "b", "a", 5),
            join("g", "a", 6),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
    }

    #[test]
    fn void_join_keeps_the_invitation() {
        let mut g = from(&[
            create("g", "a", 1, 1),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a"]);
        assert_eq!(invited(&g, "g"), ["b"]);
        g.apply(leave("g", "a", 4)).unwrap();
        g.apply(join("g", "b", 5)).unwrap();
        assert_eq!(members(&g, "g"), ["b"]);
    }

    #[test]
    fn open_group_join_without_invite() {
        let g = from(&[
            create_open("g", "a", 1, 5),
            join("g", "b", 2),
            join("g", "c", 2),
            leave("g", "b", 3),
            join("g", "b", 4),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b", "c"]);
        // An invitation in an open group is used up all the same.
        let g = from(&[
            create_open("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
        ]);
        assert!(invited(&g, "g").is_empty());
    }

    #[test]
    fn join_and_leave() {
        let g = from(&[
            create_open("g", "a", 1, 5),
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
            create_open("g", "a", 1, 2),
            leave("g", "b", 2),
            join("g", "b", 3),
            join("g", "b", 4),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
    }

    #[test]
    fn join_when_full_is_void_and_must_be_repeated() {
        let mut g = from(&[
            create_open("g", "a", 1, 2),
            join("g", "b", 2),
            join("g", "c", 3),
        ]);
        assert_eq!(members(&g, "g"), ["a", "b"]);
        // A seat frees up later; c's old Join does not come back to life.
        g.apply(leave("g", "b", 4)).unwrap();
        assert_eq!(members(&g, "g"), ["a"]);
        g.apply(join("g", "c", 5)).unwrap();
        assert_eq!(members(&g, "g"), ["a", "c"]);
    }

    #[test]
    fn race_for_last_seat_is_won_by_smaller_node_id() {
        let base = [
            create("g", "a", 1, 2),
            invite("g", "a", "node-b", 2),
            invite("g", "a", "node-c", 3),
        ];
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
        // The loser sees that it is not a member, and is still invited.
        assert!(!r2.is_member(&"g".into(), &"node-c".into()));
        assert!(r2.is_member(&"g".into(), &"node-b".into()));
        assert_eq!(invited(&r2, "g"), ["node-c"]);
    }

    #[test]
    fn share_group_and_merge() {
        let mut x = from(&[create_open("g", "a", 1, 5), join("g", "b", 2)]);
        let y = from(&[
            create("h", "c", 1, 5),
            invite("h", "c", "a", 2),
            join("h", "a", 3),
        ]);
        assert!(x.share_group(&"a".into(), &"b".into()));
        assert!(!x.share_group(&"a".into(), &"c".into()));
        assert_eq!(x.merge(&y), Ok(()));
        assert!(x.share_group(&"a".into(), &"c".into()));
        assert!(!x.share_group(&"b".into(), &"c".into()));
        assert_eq!(x.groups().len(), 2);
        assert_eq!(x.clock(), 3);
    }

    #[test]
    fn out_of_order_arrival_replays() {
        // The Invite arrives last but is ordered before the Join.
        let mut g = from(&[create("g", "a", 1, 5), join("g", "b", 3)]);
        assert_eq!(members(&g, "g"), ["a"]);
        g.apply(invite("g", "a", "b", 2)).unwrap();
        assert_eq!(members(&g, "g"), ["a", "b"]);
        // The same through merge.
        let mut m = from(&[create("g", "a", 1, 5), join("g", "b", 3)]);
        m.merge(&from(&[invite("g", "a", "b", 2)])).unwrap();
        assert_eq!(m, g);
    }

    #[test]
    fn resolve_by_id_then_by_name() {
        let g = from(&[
            ev(
                "id-1",
                "a",
                1,
                GroupEventKind::Create {
                    name: "lab".into(),
                    max_members: 5,
                    open: false,
                },
            ),
            ev(
                "id-2",
                "b",
                1,
                GroupEventKind::Create {
                    name: "lab".into(),
                    max_members: 5,
                    open: false,
                },
            ),
            ev(
                "id-3",
                "b",
                1,
                GroupEventKind::Create {
                    name: "ops".into(),
                    max_members: 5,
                    open: false,
                },
            ),
            // A group whose name is another group's id: the id wins.
            ev(
                "id-4",
                "b",
                1,
                GroupEventKind::Create {
                    name: "id-3".into(),
                    max_members: 5,
                    open: false,
                },
            ),
        ]);
        assert_eq!(g.resolve("id-1").unwrap().id, GroupId::from("id-1"));
        assert_eq!(g.resolve("ops").unwrap().id, GroupId::from("id-3"));
        assert_eq!(g.resolve("id-3").unwrap().id, GroupId::from("id-3"));
        assert_eq!(g.resolve("nope"), Err(ResolveError::Unknown("nope".into())));
        let err = g.resolve("lab").unwrap_err();
        assert_eq!(
            err,
            ResolveError::Ambiguous {
                name: "lab".into(),
                ids: vec!["id-1".into(), "id-2".into()],
            }
        );
        assert_eq!(
            err.to_string(),
            r#"2 groups are named "lab" (ids: id-1, id-2); give a group id instead"#
        );
        assert_eq!(
            ResolveError::Unknown("x".into()).to_string(),
            r#"no group has the id or the name "x""#
        );
    }

    #[test]
    fn apply_and_merge_stop_at_max_events() {
        let max = MAX_EVENTS as u64;
        let mut g = Groups::new();
        g.apply(create("g", "a", 1, 5)).unwrap();
        for clock in 2..max {
            g.apply(leave("g", "b", clock)).unwrap();
        }
        // One seat left.
        assert_eq!(g.len(), MAX_EVENTS - 1);
        let short = g.clone();
        g.apply(leave("g", "b", max)).unwrap();
        assert_eq!(g.len(), MAX_EVENTS);
        let extra = leave("g", "b", max + 1);
        assert_eq!(g.apply(extra.clone()), Err(GroupError::TooManyEvents));
        // An event already held is still just a duplicate.
        assert_eq!(g.apply(leave("g", "b", 2)), Ok(false));
        assert_eq!(g.len(), MAX_EVENTS);
        // Merge takes nothing more, and says so.
        let mut full = g.clone();
        assert_eq!(full.merge(&from(&[extra])), Err(GroupError::TooManyEvents));
        assert_eq!(full, g);
        assert_eq!(full.merge(&short), Ok(()));
        // With one seat left, merge takes the earliest new event.
        let mut one_free = short;
        let other = from(&[leave("g", "c", 1), leave("g", "c", max + 5)]);
        assert_eq!(one_free.merge(&other), Err(GroupError::TooManyEvents));
        assert_eq!(one_free.len(), MAX_EVENTS);
        assert!(one_free.events().any(|e| *e == leave("g", "c", 1)));
        assert_eq!(one_free.clock(), max - 1);
    }

    #[test]
    fn events_round_trip_through_json() {
        let g = from(&[
            create("g", "a", 1, 5),
            invite("g", "a", "b", 2),
            join("g", "b", 3),
            leave("g", "b", 4),
            create_open("h", "b", 5, 2),
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
                    1 => (1u32..4, any::<bool>()).prop_map(|(m, open)| Some(GroupEventKind::Create {
                        name: format!("n{m}"),
                        max_members: m,
                        open,
                    })),
                    // `None` stands for an Invite; its node is picked below.
                    3 => Just(None),
                    3 => Just(Some(GroupEventKind::Join)),
                    2 => Just(Some(GroupEventKind::Leave)),
                ],
                1..ACTORS.len(),
            )
                .prop_map(|(g, a, clock, kind, other)| GroupEvent {
                    group: GROUPS[g].into(),
                    actor: ACTORS[a].into(),
                    clock,
                    // Never the actor itself: that would be invalid.
                    kind: kind.unwrap_or_else(|| GroupEventKind::Invite {
                        node: ACTORS[(a + other) % ACTORS.len()].into(),
                    }),
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
            m.merge(b).unwrap();
            m
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any delivery order, with duplicates, gives the same groups,
            /// and the same as replaying the sorted events from scratch.
            #[test]
            fn delivery_order_does_not_matter((evs, delivered) in arb_deliveries()) {
                let a = build(&evs);
                let b = build(&delivered);
                prop_assert_eq!(a.groups(), b.groups());
                prop_assert_eq!(&a, &b);
                let mut c = b.clone();
                c.recompute();
                prop_assert_eq!(&c, &b);
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
                prop_assert_eq!(merged(&a, &b), build(&union));
            }

            /// No group ever has more members than its max_members, at any
            /// point of any delivery order, and no member is also invited.
            #[test]
            fn members_never_exceed_max((_, delivered) in arb_deliveries()) {
                let mut g = Groups::new();
                for e in delivered {
                    g.apply(e).unwrap();
                    for v in g.groups() {
                        prop_assert!(v.members.len() <= v.max_members as usize);
                        prop_assert!(v.members.is_disjoint(&v.invited));
                    }
                }
            }

            /// In any delivery order, every member of a closed group got in
            /// by the group's Create (then it is the creator) or by a
            /// counted Join, and before that Join, and after the node's
            /// previous counted Join, there is an Invite for it by a node
            /// that was a member at that point.
            #[test]
            fn closed_group_members_were_invited((_, delivered) in arb_deliveries()) {
                let fin = build(&delivered);
                let sorted: Vec<GroupEvent> = fin.events().cloned().collect();
                // states[k]: the groups built by the first k events in order.
                let states: Vec<Groups> =
                    (0..=sorted.len()).map(|k| build(&sorted[..k])).collect();
                for v in fin.groups().into_iter().filter(|v| !v.open) {
                    for m in &v.members {
                        let entered: Vec<usize> = (0..sorted.len())
                            .filter(|&k| {
                                !states[k].is_member(&v.id, m)
                                    && states[k + 1].is_member(&v.id, m)
                            })
                            .collect();
                        let last = *entered.last().expect("a member got in somehow");
                        let e = &sorted[last];
                        if matches!(e.kind, GroupEventKind::Create { .. }) {
                            prop_assert_eq!(m, &v.created_by);
                            continue;
                        }
                        prop_assert_eq!(&e.kind, &GroupEventKind::Join);
                        prop_assert_eq!(&e.actor, m);
                        let since = entered.len().checked_sub(2).map_or(0, |i| entered[i] + 1);
                        let invited = (since..last).any(|k| {
                            let i = &sorted[k];
                            i.group == v.id
                                && i.kind == GroupEventKind::Invite { node: m.clone() }
                                && states[k].is_member(&v.id, &i.actor)
                        });
                        prop_assert!(invited, "{m} joined {} uninvited", v.id);
                    }
                }
            }
        }
    }
}
