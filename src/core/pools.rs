//! Resource pools: named sets of nodes, created on one node and shared
//! through gossip, as a state-based CRDT.
//!
//! A pool lets a requester say "place this on the GPU boxes" instead of
//! naming nodes: a request scoped to a pool only considers the nodes that
//! the pool's [`PoolSelector`] matches, and the API sums their capacity with
//! [`aggregate`].
//!
//! # Membership
//!
//! A node is in a pool if the selector lists its [`NodeId`] in `nodes`, or
//! if the selector's `labels` are non-empty and the node carries every one
//! of them with the same value (the labels a node announces from its
//! config). A selector with neither nodes nor labels is invalid, so a pool
//! never matches everyone by accident. See [`matches()`].
//!
//! # Rules
//!
//! Events are ordered totally by Lamport `clock`, then `actor`, then kind
//! (`Create` < `Delete`, then the selector), then the pool name. The state
//! is, per pool name, a last-writer-wins register that holds the greatest
//! event seen for that name in that order, and nothing else:
//!
//! - A pool exists while its register holds a `Create`; the pool's selector,
//!   creator (the `Create`'s actor) and clock are that event's. A later
//!   `Create` for a live name replaces its selector.
//! - A `Delete` is kept as a tombstone, so that an older `Create` arriving
//!   late cannot bring the pool back. A `Create` ordered after the `Delete`
//!   (a higher clock, in practice) re-creates the pool.
//! - At the same clock and actor, `Delete` wins over `Create`. Between two
//!   actors at the same clock, the greater [`NodeId`] wins.
//!
//! Merging two replicas keeps, per name, the greater of the two events, so
//! merge is commutative, associative and idempotent, and any delivery order
//! gives the same state.
//!
//! # Limits
//!
//! Memory is bounded by the number of names: one event per name, at most
//! [`MAX_POOLS`] names (tombstones count). [`Pools::apply`] refuses an event
//! for a new name beyond that with [`PoolError::TooManyPools`]; events for
//! names already held are still taken, so existing pools keep converging.
//! (Which new names a full replica refused depends on arrival order; the
//! limit is far above what a LAN needs.) [`validate`] refuses, and `apply`
//! never stores: a name that is empty, longer than [`MAX_POOL_NAME`]
//! characters, or has a character outside `[A-Za-z0-9._-]`; a `Create`
//! whose selector is empty, lists more than [`MAX_SELECTOR_NODES`] nodes or
//! a node id that is empty or longer than [`MAX_NODE_ID_BYTES`] bytes, or
//! has more than [`MAX_SELECTOR_LABELS`] labels, a label key that is empty
//! or longer than [`MAX_LABEL_KEY_BYTES`] bytes, or a value longer than
//! [`MAX_LABEL_VALUE_BYTES`] bytes.
//!
//! Like group events, the caller makes each new event with a clock above
//! every clock it has seen ([`Pools::clock`]` + 1`), signs it and gossips
//! it; authentication of the actor happens outside the core. Any node may
//! create, change or delete any pool: a pool is a shared label for a set of
//! nodes, not a grant of access (that is [`crate::core::access`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::groups::MAX_NODE_ID_BYTES;
use crate::model::{Capacity, NodeId};

/// Longest pool name, in characters (all ASCII, so also bytes).
pub const MAX_POOL_NAME: usize = 64;
/// Most pool names a replica holds, tombstones included.
pub const MAX_POOLS: usize = 1024;
/// Most node ids a selector may list.
pub const MAX_SELECTOR_NODES: usize = 1024;
/// Most labels a selector may require.
pub const MAX_SELECTOR_LABELS: usize = 32;
/// Longest label key in a selector, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 64;
/// Longest label value in a selector, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;

/// Which nodes belong to a pool. See the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSelector {
    /// Nodes in the pool whatever their labels.
    pub nodes: BTreeSet<NodeId>,
    /// When non-empty, every node that carries all these labels with these
    /// values is in the pool too.
    pub labels: BTreeMap<String, String>,
}

/// What a pool event does. The variant order is the tie-break rank:
/// `Create` < `Delete`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolEventKind {
    /// Create the pool, or replace its selector.
    Create { selector: PoolSelector },
    /// Delete the pool (kept as a tombstone).
    Delete,
}

/// One operation on one pool, by one node, at one Lamport time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolEvent {
    pub pool: String,
    pub actor: NodeId,
    /// Lamport clock of the actor when it made the event.
    pub clock: u64,
    pub kind: PoolEventKind,
}

impl PoolEvent {
    fn key(&self) -> (u64, &NodeId, &PoolEventKind, &str) {
        (self.clock, &self.actor, &self.kind, &self.pool)
    }
}

/// The total order: clock, actor, kind, pool name.
impl Ord for PoolEvent {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for PoolEvent {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a pool event was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool name must not be empty")]
    EmptyName,
    #[error("pool name is {0} characters long; at most {MAX_POOL_NAME} are allowed")]
    NameTooLong(usize),
    #[error(
        "pool name contains {0:?}; only letters A-Z and a-z, digits, '.', '_' and '-' are allowed"
    )]
    BadNameChar(char),
    #[error("a pool selector must list at least one node or one label")]
    EmptySelector,
    #[error("the pool selector lists {0} nodes; at most {MAX_SELECTOR_NODES} are allowed")]
    TooManyNodes(usize),
    #[error(
        "a node id in the pool selector is {0} bytes long; it must be 1 to {MAX_NODE_ID_BYTES}"
    )]
    BadNode(usize),
    #[error("the pool selector has {0} labels; at most {MAX_SELECTOR_LABELS} are allowed")]
    TooManyLabels(usize),
    #[error("bad label in the pool selector: {0}")]
    BadLabel(String),
    #[error("this node already holds {MAX_POOLS} pool names and accepts no new ones")]
    TooManyPools,
}

/// Check a pool name: 1 to [`MAX_POOL_NAME`] characters of `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<(), PoolError> {
    if name.is_empty() {
        return Err(PoolError::EmptyName);
    }
    let len = name.chars().count();
    if len > MAX_POOL_NAME {
        return Err(PoolError::NameTooLong(len));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(PoolError::BadNameChar(c));
    }
    Ok(())
}

/// Check an event's own fields: the name, and a `Create`'s selector.
pub fn validate(ev: &PoolEvent) -> Result<(), PoolError> {
    validate_name(&ev.pool)?;
    let PoolEventKind::Create { selector } = &ev.kind else {
        return Ok(());
    };
    let PoolSelector { nodes, labels } = selector;
    if nodes.is_empty() && labels.is_empty() {
        return Err(PoolError::EmptySelector);
    }
    if nodes.len() > MAX_SELECTOR_NODES {
        return Err(PoolError::TooManyNodes(nodes.len()));
    }
    if let Some(n) = nodes
        .iter()
        .find(|n| n.0.is_empty() || n.0.len() > MAX_NODE_ID_BYTES)
    {
        return Err(PoolError::BadNode(n.0.len()));
    }
    if labels.len() > MAX_SELECTOR_LABELS {
        return Err(PoolError::TooManyLabels(labels.len()));
    }
    for (key, value) in labels {
        if key.is_empty() {
            return Err(PoolError::BadLabel("a label key is empty".into()));
        }
        if key.len() > MAX_LABEL_KEY_BYTES {
            let start: String = key.chars().take(16).collect();
            return Err(PoolError::BadLabel(format!(
                "the key {start:?}... is {} bytes long; at most {MAX_LABEL_KEY_BYTES} are allowed",
                key.len()
            )));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(PoolError::BadLabel(format!(
                "the value of {key:?} is {} bytes long; at most {MAX_LABEL_VALUE_BYTES} are allowed",
                value.len()
            )));
        }
    }
    Ok(())
}

/// Whether a node with id `node` and labels `labels` is in a pool with
/// selector `sel`: listed by id, or carrying every selector label (when
/// there are any) with the same value.
pub fn matches(sel: &PoolSelector, node: &NodeId, labels: &BTreeMap<String, String>) -> bool {
    sel.nodes.contains(node)
        || (!sel.labels.is_empty() && sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A live pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub selector: PoolSelector,
    /// The actor of the `Create` in force (the last one to set the
    /// selector).
    pub created_by: NodeId,
    /// The clock of that `Create`.
    pub clock: u64,
}

/// The replicated pool state: per name, the greatest event seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pools {
    events: BTreeMap<String, PoolEvent>,
}

impl Pools {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offer one event. `Ok(true)` if it is now the one kept for its name
    /// (the state changed), `Ok(false)` if the event kept is the same or
    /// greater. An invalid event, or one for a new name when [`MAX_POOLS`]
    /// names are held, is refused and not stored.
    pub fn apply(&mut self, ev: PoolEvent) -> Result<bool, PoolError> {
        validate(&ev)?;
        if let Some(kept) = self.events.get_mut(&ev.pool) {
            if ev > *kept {
                *kept = ev;
                return Ok(true);
            }
            return Ok(false);
        }
        if self.events.len() >= MAX_POOLS {
            return Err(PoolError::TooManyPools);
        }
        self.events.insert(ev.pool.clone(), ev);
        Ok(true)
    }

    /// Take, per name, the greater of this replica's and `other`'s event.
    /// New names beyond [`MAX_POOLS`] are refused with
    /// [`PoolError::TooManyPools`]; every other name is merged all the same.
    pub fn merge(&mut self, other: &Pools) -> Result<(), PoolError> {
        let mut result = Ok(());
        for ev in other.events.values() {
            if self.events.get(&ev.pool).is_some_and(|kept| kept >= ev) {
                continue;
            }
            if let Err(e) = self.apply(ev.clone()) {
                result = Err(e);
            }
        }
        result
    }

    /// The events kept, one per name, sorted by name (for sync and
    /// persistence). Tombstones included.
    pub fn events(&self) -> impl Iterator<Item = &PoolEvent> {
        self.events.values()
    }

    /// The number of names held, tombstones included.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event has been kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The highest clock seen (0 if none). Every event not kept lost to one
    /// with the same name and a clock at least as high, so this is the
    /// highest clock of any event accepted.
    pub fn clock(&self) -> u64 {
        self.events.values().map(|e| e.clock).max().unwrap_or(0)
    }

    /// Every live pool, sorted by name.
    pub fn pools(&self) -> Vec<PoolView> {
        self.events.values().filter_map(view).collect()
    }

    /// One live pool, if it exists.
    pub fn get(&self, name: &str) -> Option<PoolView> {
        self.events.get(name).and_then(view)
    }
}

fn view(ev: &PoolEvent) -> Option<PoolView> {
    match &ev.kind {
        PoolEventKind::Create { selector } => Some(PoolView {
            name: ev.pool.clone(),
            selector: selector.clone(),
            created_by: ev.actor.clone(),
            clock: ev.clock,
        }),
        PoolEventKind::Delete => None,
    }
}

/// The summed capacity of a pool's members (MiB for memory and disk).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolCapacity {
    /// Members counted.
    pub nodes: u32,
    pub cpu_cores_total: u32,
    pub cpu_cores_free: u32,
    pub memory_mb_total: u64,
    pub memory_mb_free: u64,
    pub disk_mb_total: u64,
    pub disk_mb_free: u64,
    pub gpus_total: u32,
    /// GPUs with all their memory free.
    pub gpus_free: u32,
    pub gpu_memory_mb_total: u64,
    pub gpu_memory_mb_free: u64,
}

/// Sum the capacity of pool members, each given as (total, free). A GPU
/// counts as free when the free capacity has a slot with the same index
/// and the same memory as the total slot. Sums saturate instead of
/// overflowing.
pub fn aggregate<'a>(
    members: impl IntoIterator<Item = (&'a Capacity, &'a Capacity)>,
) -> PoolCapacity {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let gpu_memory = |c: &Capacity| {
        c.gpus
            .iter()
            .fold(0u64, |sum, g| sum.saturating_add(g.memory_mb))
    };
    let mut p = PoolCapacity::default();
    for (total, free) in members {
        let whole_free = total
            .gpus
            .iter()
            .filter(|t| {
                free.gpus
                    .iter()
                    .any(|f| f.index == t.index && f.memory_mb == t.memory_mb)
            })
            .count();
        p.nodes = p.nodes.saturating_add(1);
        p.cpu_cores_total = p.cpu_cores_total.saturating_add(total.cpu_cores);
        p.cpu_cores_free = p.cpu_cores_free.saturating_add(free.cpu_cores);
        p.memory_mb_total = p.memory_mb_total.saturating_add(total.memory_mb);
        p.memory_mb_free = p.memory_mb_free.saturating_add(free.memory_mb);
        p.disk_mb_total = p.disk_mb_total.saturating_add(total.disk_mb);
        p.disk_mb_free = p.disk_mb_free.saturating_add(free.disk_mb);
        p.gpus_total = p.gpus_total.saturating_add(count(total.gpus.len()));
        p.gpus_free = p.gpus_free.saturating_add(count(whole_free));
        p.gpu_memory_mb_total = p.gpu_memory_mb_total.saturating_add(gpu_memory(total));
        p.gpu_memory_mb_free = p.gpu_memory_mb_free.saturating_add(gpu_memory(free));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GpuSlot;

    fn n(s: &str) -> NodeId {
        s.into()
    }

    fn sel_nodes(ns: &[&str]) -> PoolSelector {
        PoolSelector {
            nodes: ns.iter().map(|s| n(s)).collect(),
            labels: BTreeMap::new(),
        }
    }

    fn sel_labels(ls: &[(&str, &str)]) -> PoolSelector {
        PoolSelector {
            nodes: BTreeSet::new(),
            labels: labels(ls),
        }
    }

    fn labels(ls: &[(&str, &str)]) -> BTreeMap<String, String> {
        ls.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn create(pool: &str, actor: &str, clock: u64, selector: PoolSelector) -> PoolEvent {
        PoolEvent {
            pool: pool.into(),
            actor: n(actor),
            clock,
            kind: PoolEventKind::Create { selector },
        }
    }

    fn delete(pool: &str, actor: &str, clock: u64) -> PoolEvent {
        PoolEvent {
            pool: pool.into(),
            actor: n(actor),
            clock,
            kind: PoolEventKind::Delete,
        }
    }

    fn names(p: &Pools) -> Vec<String> {
        p.pools().into_iter().map(|v| v.name).collect()
    }

    #[test]
    fn names_follow_the_rules() {
        for ok in ["a", "gpu-boxes", "lab_2.east", "A9", &"x".repeat(64)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(PoolError::EmptyName));
        assert_eq!(
            validate_name(&"x".repeat(65)),
            Err(PoolError::NameTooLong(65))
        );
        assert_eq!(
            validate_name(&"é".repeat(65)),
            Err(PoolError::NameTooLong(65))
        );
        for (bad, c) in [
            ("gpu boxes", ' '),
            ("a/b", '/'),
            ("é", 'é'),
            ("x:y", ':'),
            ("tab\t", '\t'),
        ] {
            assert_eq!(validate_name(bad), Err(PoolError::BadNameChar(c)), "{bad}");
        }
    }

    #[test]
    fn selectors_follow_the_rules() {
        let ev = |selector| create("p", "a", 1, selector);
        assert_eq!(validate(&ev(sel_nodes(&["n1"]))), Ok(()));
        assert_eq!(validate(&ev(sel_labels(&[("gpu", "")]))), Ok(()));
        assert_eq!(
            validate(&ev(PoolSelector::default())),
            Err(PoolError::EmptySelector)
        );
        let many: Vec<String> = (0..=MAX_SELECTOR_NODES).map(|i| format!("n{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(validate(&ev(sel_nodes(&many[1..]))), Ok(()));
        assert_eq!(
            validate(&ev(sel_nodes(&many))),
            Err(PoolError::TooManyNodes(1025))
        );
        assert_eq!(validate(&ev(sel_nodes(&[""]))), Err(PoolError::BadNode(0)));
        let long = "n".repeat(MAX_NODE_ID_BYTES + 1);
        assert_eq!(
            validate(&ev(sel_nodes(&[&long]))),
            Err(PoolError::BadNode(129))
        );
        assert_eq!(validate(&ev(sel_nodes(&[&long[1..]]))), Ok(()));
        let keys: Vec<(String, String)> = (0..=MAX_SELECTOR_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let ls = |k: usize| PoolSelector {
            nodes: BTreeSet::new(),
            labels: keys[..k].iter().cloned().collect(),
        };
        assert_eq!(validate(&ev(ls(32))), Ok(()));
        assert_eq!(validate(&ev(ls(33))), Err(PoolError::TooManyLabels(33)));
        assert_eq!(
            validate(&ev(sel_labels(&[("", "v")]))),
            Err(PoolError::BadLabel("a label key is empty".into()))
        );
        let key = "k".repeat(65);
        assert_eq!(
            validate(&ev(sel_labels(&[(&key, "v")]))),
            Err(PoolError::BadLabel(
                r#"the key "kkkkkkkkkkkkkkkk"... is 65 bytes long; at most 64 are allowed"#.into()
            ))
        );
        assert_eq!(validate(&ev(sel_labels(&[(&key[1..], "v")]))), Ok(()));
        let value = "v".repeat(129);
        assert_eq!(
            validate(&ev(sel_labels(&[("zone", &value)]))),
            Err(PoolError::BadLabel(
                r#"the value of "zone" is 129 bytes long; at most 128 are allowed"#.into()
            ))
        );
        assert_eq!(validate(&ev(sel_labels(&[("zone", &value[1..])]))), Ok(()));
        // A Delete has no selector; only its name is checked.
        assert_eq!(validate(&delete("p", "a", 1)), Ok(()));
        assert_eq!(validate(&delete("", "a", 1)), Err(PoolError::EmptyName));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            PoolError::BadNameChar(' ').to_string(),
            "pool name contains ' '; only letters A-Z and a-z, digits, '.', '_' and '-' are allowed"
        );
        assert_eq!(
            PoolError::EmptySelector.to_string(),
            "a pool selector must list at least one node or one label"
        );
        assert_eq!(
            PoolError::TooManyPools.to_string(),
            "this node already holds 1024 pool names and accepts no new ones"
        );
        assert_eq!(
            PoolError::NameTooLong(70).to_string(),
            "pool name is 70 characters long; at most 64 are allowed"
        );
    }

    #[test]
    fn invalid_events_are_refused_and_not_stored() {
        let mut p = Pools::new();
        assert_eq!(
            p.apply(create("bad name", "a", 1, sel_nodes(&["a"]))),
            Err(PoolError::BadNameChar(' '))
        );
        assert_eq!(
            p.apply(create("p", "a", 1, PoolSelector::default())),
            Err(PoolError::EmptySelector)
        );
        assert!(p.is_empty());
        assert_eq!(p.clock(), 0);
    }

    #[test]
    fn membership_by_node_or_by_every_label() {
        let zone = labels(&[("zone", "lab"), ("gpu", "h100")]);
        // Listed by id, whatever the labels.
        assert!(matches(&sel_nodes(&["a"]), &n("a"), &BTreeMap::new()));
        assert!(!matches(&sel_nodes(&["a"]), &n("b"), &zone));
        // Every label, with the same value.
        let s = sel_labels(&[("zone", "lab"), ("gpu", "h100")]);
        assert!(matches(&s, &n("b"), &zone));
        assert!(matches(&sel_labels(&[("zone", "lab")]), &n("b"), &zone));
        assert!(!matches(&s, &n("b"), &labels(&[("zone", "lab")])));
        assert!(!matches(
            &s,
            &n("b"),
            &labels(&[("zone", "lab"), ("gpu", "a100")])
        ));
        // Either way.
        let both = PoolSelector {
            nodes: [n("a")].into(),
            labels: labels(&[("zone", "lab")]),
        };
        assert!(matches(&both, &n("a"), &BTreeMap::new()));
        assert!(matches(&both, &n("b"), &zone));
        assert!(!matches(&both, &n("c"), &labels(&[("zone", "office")])));
        // No labels in the selector never matches by labels.
        assert!(!matches(&PoolSelector::default(), &n("a"), &zone));
    }

    #[test]
    fn create_then_view() {
        let mut p = Pools::new();
        assert_eq!(p.apply(create("gpus", "a", 3, sel_nodes(&["x"]))), Ok(true));
        assert_eq!(p.apply(create("cpus", "b", 2, sel_nodes(&["y"]))), Ok(true));
        assert_eq!(names(&p), ["cpus", "gpus"]);
        assert_eq!(
            p.get("gpus"),
            Some(PoolView {
                name: "gpus".into(),
                selector: sel_nodes(&["x"]),
                created_by: n("a"),
                clock: 3,
            })
        );
        assert_eq!(p.get("nope"), None);
        assert_eq!(p.len(), 2);
        assert_eq!(p.clock(), 3);
        // The same event again changes nothing.
        assert_eq!(
            p.apply(create("gpus", "a", 3, sel_nodes(&["x"]))),
            Ok(false)
        );
    }

    #[test]
    fn last_writer_wins_per_name() {
        let mut p = Pools::new();
        p.apply(create("p", "a", 1, sel_nodes(&["x"]))).unwrap();
        // A later Create replaces the selector and the creator.
        assert_eq!(p.apply(create("p", "b", 2, sel_nodes(&["y"]))), Ok(true));
        let v = p.get("p").unwrap();
        assert_eq!(
            (v.selector, v.created_by, v.clock),
            (sel_nodes(&["y"]), n("b"), 2)
        );
        // An older one arriving late is ignored.
        assert_eq!(p.apply(create("p", "c", 1, sel_nodes(&["z"]))), Ok(false));
        assert_eq!(p.get("p").unwrap().selector, sel_nodes(&["y"]));
        // Same clock: the greater actor wins.
        assert_eq!(p.apply(create("p", "c", 2, sel_nodes(&["z"]))), Ok(true));
        assert_eq!(p.apply(create("p", "a", 2, sel_nodes(&["w"]))), Ok(false));
        assert_eq!(p.get("p").unwrap().created_by, n("c"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn delete_keeps_a_tombstone() {
        let mut p = Pools::new();
        p.apply(create("p", "a", 1, sel_nodes(&["x"]))).unwrap();
        assert_eq!(p.apply(delete("p", "b", 2)), Ok(true));
        assert_eq!(p.get("p"), None);
        assert!(p.pools().is_empty());
        // The tombstone is held, and stops an old Create from reviving it.
        assert_eq!(p.len(), 1);
        assert_eq!(p.events().next(), Some(&delete("p", "b", 2)));
        assert_eq!(p.apply(create("p", "a", 1, sel_nodes(&["x"]))), Ok(false));
        assert_eq!(p.get("p"), None);
        // Same clock and actor: Delete beats Create.
        assert_eq!(p.apply(create("p", "b", 2, sel_nodes(&["x"]))), Ok(false));
        assert_eq!(p.get("p"), None);
        // A higher clock re-creates it.
        assert_eq!(p.apply(create("p", "a", 3, sel_nodes(&["y"]))), Ok(true));
        assert_eq!(p.get("p").unwrap().selector, sel_nodes(&["y"]));
        // A Delete for a name never created is a tombstone all the same.
        assert_eq!(p.apply(delete("q", "a", 1)), Ok(true));
        assert_eq!(p.apply(create("q", "a", 1, sel_nodes(&["y"]))), Ok(false));
        assert_eq!(names(&p), ["p"]);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn apply_and_merge_stop_at_max_pools() {
        let mut p = Pools::new();
        for i in 0..MAX_POOLS {
            // Half of them tombstones: they count too.
            let ev = if i % 2 == 0 {
                create(&format!("p{i}"), "a", 1, sel_nodes(&["x"]))
            } else {
                delete(&format!("p{i}"), "a", 1)
            };
            assert_eq!(p.apply(ev), Ok(true));
        }
        assert_eq!(p.len(), MAX_POOLS);
        assert_eq!(
            p.apply(create("one-more", "a", 2, sel_nodes(&["x"]))),
            Err(PoolError::TooManyPools)
        );
        assert_eq!(p.get("one-more"), None);
        // Names already held are still updated.
        assert_eq!(p.apply(delete("p0", "a", 2)), Ok(true));
        assert_eq!(p.apply(create("p1", "a", 2, sel_nodes(&["x"]))), Ok(true));
        assert_eq!(p.len(), MAX_POOLS);
        // Merge updates held names, refuses new ones, and says so.
        let mut other = Pools::new();
        other
            .apply(create("p2", "b", 5, sel_nodes(&["y"])))
            .unwrap();
        other
            .apply(create("zz", "b", 5, sel_nodes(&["y"])))
            .unwrap();
        assert_eq!(p.merge(&other), Err(PoolError::TooManyPools));
        assert_eq!(p.get("p2").unwrap().created_by, n("b"));
        assert_eq!(p.get("zz"), None);
        assert_eq!(p.len(), MAX_POOLS);
    }

    #[test]
    fn merge_takes_the_greater_event_per_name() {
        let mut x = Pools::new();
        x.apply(create("p", "a", 1, sel_nodes(&["x"]))).unwrap();
        x.apply(create("q", "a", 4, sel_nodes(&["x"]))).unwrap();
        let mut y = Pools::new();
        y.apply(delete("p", "b", 2)).unwrap();
        y.apply(create("q", "b", 3, sel_nodes(&["y"]))).unwrap();
        y.apply(create("r", "b", 3, sel_labels(&[("zone", "lab")])))
            .unwrap();
        assert_eq!(x.merge(&y), Ok(()));
        assert_eq!(names(&x), ["q", "r"]);
        assert_eq!(x.get("q").unwrap().created_by, n("a"));
        assert_eq!(x.clock(), 4);
        assert_eq!(x.len(), 3);
    }

    #[test]
    fn events_round_trip_through_json() {
        let mut p = Pools::new();
        p.apply(create(
            "p",
            "a",
            1,
            PoolSelector {
                nodes: [n("x")].into(),
                labels: labels(&[("zone", "lab")]),
            },
        ))
        .unwrap();
        p.apply(delete("q", "a", 2)).unwrap();
        let json = serde_json::to_string(&p.events().collect::<Vec<_>>()).unwrap();
        let back: Vec<PoolEvent> = serde_json::from_str(&json).unwrap();
        let mut q = Pools::new();
        for e in back {
            q.apply(e).unwrap();
        }
        assert_eq!(q, p);
    }

    #[test]
    fn selector_json_defaults_and_rejects_unknown_fields() {
        let s: PoolSelector = serde_json::from_str(r#"{"labels":{"zone":"lab"}}"#).unwrap();
        assert_eq!(s, sel_labels(&[("zone", "lab")]));
        let s: PoolSelector = serde_json::from_str(r#"{"nodes":["a"]}"#).unwrap();
        assert_eq!(s, sel_nodes(&["a"]));
        let err = serde_json::from_str::<PoolSelector>(r#"{"node":["a"]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    fn cap(cpu: u32, mem: u64, disk: u64, gpus: &[(u32, u64)]) -> Capacity {
        Capacity {
            cpu_cores: cpu,
            memory_mb: mem,
            disk_mb: disk,
            gpus: gpus
                .iter()
                .map(|&(index, memory_mb)| GpuSlot { index, memory_mb })
                .collect(),
            custom: BTreeMap::new(),
        }
    }

    #[test]
    fn aggregate_sums_members() {
        assert_eq!(aggregate([]), PoolCapacity::default());
        let t1 = cap(8, 32_000, 500, &[(0, 80_000), (1, 80_000), (2, 40_000)]);
        // GPU 0 wholly free, GPU 1 partly used, GPU 2 fully used (absent).
        let f1 = cap(6, 20_000, 400, &[(0, 80_000), (1, 30_000)]);
        let t2 = cap(4, 16_000, 100, &[(0, 24_000)]);
        // Same memory as node 1's GPU 0 but the wrong index: not free.
        let f2 = cap(4, 16_000, 100, &[(1, 24_000)]);
        let got = aggregate([(&t1, &f1), (&t2, &f2)]);
        assert_eq!(
            got,
            PoolCapacity {
                nodes: 2,
                cpu_cores_total: 12,
                cpu_cores_free: 10,
                memory_mb_total: 48_000,
                memory_mb_free: 36_000,
                disk_mb_total: 600,
                disk_mb_free: 500,
                gpus_total: 4,
                gpus_free: 1,
                gpu_memory_mb_total: 224_000,
                gpu_memory_mb_free: 134_000,
            }
        );
    }

    #[test]
    fn aggregate_saturates() {
        let big = cap(
            u32::MAX,
            u64::MAX,
            u64::MAX,
            &[(0, u64::MAX), (1, u64::MAX)],
        );
        let got = aggregate([(&big, &big), (&big, &big)]);
        assert_eq!(got.nodes, 2);
        assert_eq!(got.cpu_cores_total, u32::MAX);
        assert_eq!(got.memory_mb_free, u64::MAX);
        assert_eq!(got.disk_mb_total, u64::MAX);
        assert_eq!(got.gpus_total, 4);
        assert_eq!(got.gpus_free, 4);
        assert_eq!(got.gpu_memory_mb_total, u64::MAX);
        assert_eq!(got.gpu_memory_mb_free, u64::MAX);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 3] = ["p0", "p1", "p2"];
        const ACTORS: [&str; 3] = ["n0", "n1", "n2"];
        const LABELS: [(&str, &str); 3] = [("zone", "lab"), ("zone", "office"), ("gpu", "yes")];

        fn arb_selector() -> impl Strategy<Value = PoolSelector> {
            (
                prop::collection::btree_set(0..ACTORS.len(), 0..3),
                prop::collection::vec(0..LABELS.len(), 0..3),
            )
                .prop_map(|(ns, ls)| {
                    let mut s = PoolSelector {
                        nodes: ns.into_iter().map(|i| n(ACTORS[i])).collect(),
                        labels: ls
                            .into_iter()
                            .map(|i| (LABELS[i].0.to_owned(), LABELS[i].1.to_owned()))
                            .collect(),
                    };
                    if s.nodes.is_empty() && s.labels.is_empty() {
                        s.nodes.insert(n(ACTORS[0]));
                    }
                    s
                })
        }

        fn arb_event() -> impl Strategy<Value = PoolEvent> {
            (
                0..NAMES.len(),
                0..ACTORS.len(),
                0u64..6,
                prop_oneof![
                    2 => arb_selector().prop_map(|selector| PoolEventKind::Create { selector }),
                    1 => Just(PoolEventKind::Delete),
                ],
            )
                .prop_map(|(p, a, clock, kind)| PoolEvent {
                    pool: NAMES[p].into(),
                    actor: n(ACTORS[a]),
                    clock,
                    kind,
                })
        }

        fn arb_events() -> impl Strategy<Value = Vec<PoolEvent>> {
            prop::collection::vec(arb_event(), 0..30)
        }

        /// The events in a shuffled delivery order, with some delivered twice.
        fn arb_deliveries() -> impl Strategy<Value = (Vec<PoolEvent>, Vec<PoolEvent>)> {
            (
                arb_events(),
                prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            )
                .prop_flat_map(|(evs, dups)| {
                    let mut all = evs.clone();
                    if !evs.is_empty() {
                        all.extend(dups.iter().map(|i| evs[i.index(evs.len())].clone()));
                    }
                    (Just(evs), Just(all).prop_shuffle())
                })
        }

        fn build(evs: &[PoolEvent]) -> Pools {
            let mut p = Pools::new();
            for e in evs {
                p.apply(e.clone()).unwrap();
            }
            p
        }

        fn merged(a: &Pools, b: &Pools) -> Pools {
            let mut m = a.clone();
            m.merge(b).unwrap();
            m
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any delivery order, with duplicates, gives the same state.
            #[test]
            fn delivery_order_does_not_matter((evs, delivered) in arb_deliveries()) {
                let a = build(&evs);
                let b = build(&delivered);
                prop_assert_eq!(a.pools(), b.pools());
                prop_assert_eq!(a, b);
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
                let union: Vec<PoolEvent> = x.iter().chain(&y).cloned().collect();
                prop_assert_eq!(merged(&a, &b), build(&union));
            }

            /// The state holds one event per name: the greatest applied.
            #[test]
            fn one_event_per_name((_, delivered) in arb_deliveries()) {
                let mut p = Pools::new();
                let mut seen: Vec<PoolEvent> = Vec::new();
                for e in delivered {
                    p.apply(e.clone()).unwrap();
                    seen.push(e);
                    let held: Vec<&PoolEvent> = p.events().collect();
                    let mut names: Vec<&str> = held.iter().map(|e| e.pool.as_str()).collect();
                    names.dedup();
                    prop_assert_eq!(names.len(), held.len());
                    for h in held {
                        let max = seen.iter().filter(|s| s.pool == h.pool).max();
                        prop_assert_eq!(Some(h), max);
                    }
                    let live = seen.iter().map(|e| e.clock).max().unwrap_or(0);
                    prop_assert_eq!(p.clock(), live);
                }
            }

            /// After any history, a Delete with a higher clock removes the
            /// pool, and a Create with a clock higher still revives it,
            /// whichever of the two arrives first.
            #[test]
            fn delete_then_recreate_revives(
                evs in arb_events(),
                name in 0..NAMES.len(),
                actors in (0..ACTORS.len(), 0..ACTORS.len()),
                sel in arb_selector(),
                create_first in any::<bool>(),
            ) {
                let mut p = build(&evs);
                let c = p.clock();
                let name = NAMES[name];
                let del = delete(name, ACTORS[actors.0], c + 1);
                let re = create(name, ACTORS[actors.1], c + 2, sel.clone());
                let mut q = p.clone();
                p.apply(del.clone()).unwrap();
                prop_assert_eq!(p.get(name), None);
                p.apply(re.clone()).unwrap();
                let (a, b) = if create_first { (re, del) } else { (del, re) };
                q.apply(a).unwrap();
                q.apply(b).unwrap();
                prop_assert_eq!(&p, &q);
                let v = p.get(name).expect("re-created");
                prop_assert_eq!(v.selector, sel);
                prop_assert_eq!(v.clock, c + 2);
            }
        }
    }
}
