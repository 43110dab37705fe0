//! Quotas: caps on what requesters may hold, decided by each owner for its
//! own resources (seed 003: caps per dimension, with an optional burst
//! allowance for a limited time).
//!
//! An owner keeps one [`QuotaBook`]. The network shell asks
//! [`QuotaBook::check`] before it lets the [`crate::core::ledger::Ledger`]
//! grant a lease, and calls [`QuotaBook::observe`] after every change to a
//! requester's holdings (grant, release, expiry), so that burst windows are
//! timed. Like the rest of [`crate::core`] it is sans-IO: time comes in as
//! `now_ms`, every map is a `BTreeMap`, arithmetic saturates, and no input
//! makes it panic.
//!
//! # Subjects and which quotas apply
//!
//! A [`Subject`] is what a quota caps: one requester
//! ([`Subject::Requester`]), the members of a group together
//! ([`Subject::Group`]), or any requester without a quota of its own
//! ([`Subject::Default`]). There are two kinds of quota:
//!
//! - **Local** quotas ([`Quota`]) cap what is held *on this owner*. For a
//!   request by requester `r`, the requester's own quota applies if it has
//!   one, and otherwise the default quota (if set). It caps `r`'s own usage
//!   here; the default caps each requester separately, never their sum. In
//!   addition, the quota of every group `r` is in applies, capping the sum
//!   of the group members' usage here. All applicable quotas must hold.
//! - **Swarm-wide** quotas ([`Limits`], no burst) cap what `r` holds on the
//!   whole swarm: the owner adds `r`'s usage on every other owner, as last
//!   announced by gossip, to `r`'s exact usage here. `r`'s own swarm-wide
//!   quota applies if it has one, and otherwise the default. A group cannot
//!   have a swarm-wide quota (group membership as each owner sees it may
//!   differ, and nobody announces group sums).
//!
//! # Dimensions
//!
//! A [`Limits`] caps any of `cpu_cores`, `memory_mb`, `disk_mb`, `gpus`
//! (count), `gpu_memory_mb` (summed over GPUs) and named custom resources
//! (`custom.<name>`), matching the fields of [`Usage`]. A dimension that is
//! `None` (or a custom name that is absent) is unlimited.
//!
//! # The admission rule ([`QuotaBook::check`])
//!
//! Only the dimensions the grant adds to (non-zero in `add`) are checked:
//! a subject that is already over a cap in one dimension (because its burst
//! ran out, because a group gained members, or because of the swarm-wide
//! overshoot below) may still take grants that add nothing in that
//! dimension. In a checked dimension, with `would = used + add`:
//!
//! - `would <= base` is admitted;
//! - otherwise, if the quota has a burst with a cap in this dimension,
//!   `would <= burst` is admitted **while the burst window is open**: the
//!   subject has never been seen over its base (`observe` has not recorded
//!   it), or it was first seen over `since` and `now_ms - since < secs *
//!   1000`;
//! - anything else is refused with [`DenyReason::QuotaExceeded`], naming
//!   the quota's subject, the dimension, the would-be usage and the cap (and
//!   the burst allowance, when one ran out).
//!
//! Checks run in a fixed order: the requester's local quota, its groups'
//! quotas (by group id), then the swarm-wide quota; the first breach is
//! reported. `check` changes nothing.
//!
//! # Burst
//!
//! A [`Burst`] lets a subject go above its base caps, up to the burst caps,
//! for at most `secs` continuous seconds (1 s to one day). The burst window
//! is per subject (a requester under the default quota has its own), not
//! per dimension: it opens when [`QuotaBook::observe`] first sees the
//! subject over its base in any dimension, and closes `secs` later. When
//! `observe` sees the subject back within its base, the window is reset, so
//! a later burst gets a full window again (there is no cool-down). A burst
//! that runs out takes nothing back: it only stops new grants above the
//! base, and the subject's usage comes down as its leases are released or
//! expire (bounded by the ledger's maximum lease length).
//!
//! A dimension the burst does not cap gets no extra allowance (its base cap
//! holds), so a burst that names only `memory_mb` never makes CPU
//! unlimited. A burst cap below the base cap, or a burst cap in a dimension
//! whose base is unlimited, is refused as a mistake.
//!
//! # Setting and removing
//!
//! [`QuotaBook::set`] and [`QuotaBook::set_swarm`] validate first and
//! change nothing on error ([`DenyReason::BadRequest`]) for malformed
//! input (see the constants below). A quota **below current use is
//! accepted**: it takes no lease back, and since the admission rule checks
//! every dimension a grant adds to, it stops new grants in the dimensions
//! over the cap until use comes back under it. The caller passes the
//! subject's usage now (for [`Subject::Default`], per dimension, the
//! largest usage of any requester without its own quota), which keeps or
//! clears its burst timer. After a `set`, the caller should
//! [`observe`](QuotaBook::observe) the subject (`set` has no clock): until
//! then a subject already over the new base is treated as not yet
//! bursting.
//!
//! # The quota tree
//!
//! Local quotas form a tree: swarm (the root: no parent) → group →
//! requester, or group → group. [`QuotaBook::set_with_parent`] places a
//! quota under a group's quota. A child can never exceed its parent: a
//! child whose base or burst cap in some dimension is above its parent's
//! (burst or base) cap, a parent lowered under one of its children's caps,
//! a link that would close a cycle, a parent with no quota or that is not
//! a group, and a parent for `default` are refused, changing nothing.
//! Removing a quota makes its children roots. What is enforced for a
//! subject ([`QuotaBook::effective`], used by [`QuotaBook::check`]) is,
//! per dimension, the lowest cap on its path to the root, so a child that
//! leaves a dimension unlimited still gets no more than its ancestors
//! allow. Group quotas also keep capping their members' sum, as above.
//!
//! Removing a quota drops the burst timers that it alone was timing.
//!
//! # Swarm-wide overshoot
//!
//! Each owner checks the swarm-wide cap against its own view, and nobody
//! coordinates, so concurrent grants on several owners can together pass
//! the cap. The bound, per dimension, for one requester with cap `C`:
//!
//! *Model.* Owner `i` grants only if `V_i + u_i + a <= C`, where `u_i` is
//! the requester's exact usage at `i`, `a` the grant, and `V_i` the sum of
//! the other owners' last announcements. Assume that every owner's
//! announcement reaches every other owner within a gossip delay `D` and
//! carries the announcer's actual usage at the time it was made, and that
//! all owners use the same cap.
//!
//! *Claim.* Let `s` be the time of the latest grant that added to the
//! dimension, made by owner `k`, and `W_j` what owner `j` holds at `s`
//! beyond what `k` last heard from it (what `j` granted within the `D`
//! before `s`, net of releases). Then at any later time the total is at most
//! `C + sum over j != k of W_j`.
//!
//! *Proof.* After `s` no grant adds to the dimension, so each `u_j` only
//! falls. At `s`, `k` heard `a_j` from each `j`, made at some time in
//! `[s - D, s]`, so `u_j(s) <= a_j + W_j`. `k`'s check gives `u_k(s) <= C -
//! sum a_j`. Adding up: `total <= C - sum a_j + sum (a_j + W_j)`.
//!
//! So with `n` owners granting to the requester within one gossip delay,
//! the overshoot is at most `(n - 1) * W`, where `W` is the most one owner
//! grants the requester within one gossip delay: the largest single lease
//! `g` if an owner grants a requester at most one lease per gossip delay,
//! `m * g` if it may grant `m`. Since each owner counts its own usage
//! exactly, `W <= C` always, so the overshoot never passes `(n - 1) * C`
//! (`n * C` in total) even if gossip stops entirely. The bound is tight:
//! if every owner last heard a total of `U` and each grants `C - U` at the
//! same moment, the total is `C + (n - 1) * (C - U)`.
//! [`overshoot_bound`] computes `(n - 1) * W`.
//!
//! The assumptions fail, and the view under-counts beyond the bound, when
//! an announcement leaves the requester out (announcements carry at most
//! the 256 largest holders), when an owner's announcements stop reaching
//! this one (a partition, or an owner dropped from the view), or when
//! owners configure different caps. Stale announcements of *releases* only
//! make a view over-count, which is conservative.
//!
//! # Bounds
//!
//! At most [`MAX_QUOTAS`] quotas of each kind, [`MAX_CUSTOM_LIMITS`]
//! custom caps per [`Limits`] with names of 1 to [`MAX_CUSTOM_NAME_BYTES`]
//! bytes, subject ids of 1 to [`MAX_NODE_ID_BYTES`] bytes, and bursts of 1
//! to [`MAX_BURST_SECS`] seconds. Burst timers exist only for subjects
//! over their base, which hold leases here, so they are bounded by the
//! ledger's lease count.
//!
//! # Persistence
//!
//! [`QuotaBook::snapshot`] and [`QuotaBook::restore`] convert to and from a
//! [`QuotaSnapshot`], which serializes with serde (JSON for the API,
//! postcard for the store) and includes the burst timers, so a restart does
//! not hand out fresh burst windows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::groups::{GroupId, MAX_NODE_ID_BYTES};
use crate::model::{Denial, DenyReason, NodeId, Usage};

/// Longest burst, seconds (one day).
pub const MAX_BURST_SECS: u64 = 86_400;
/// Most quotas of each kind (local and swarm-wide) in a book.
pub const MAX_QUOTAS: usize = 10_000;
/// Most custom resources one [`Limits`] may cap.
pub const MAX_CUSTOM_LIMITS: usize = 64;
/// Longest custom resource name in a [`Limits`], bytes.
pub const MAX_CUSTOM_NAME_BYTES: usize = 64;

/// Caps per dimension. `None`, or a custom name that is absent, means
/// unlimited; the default caps nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// CPU cores.
    pub cpu_cores: Option<u32>,
    /// Memory, MiB.
    pub memory_mb: Option<u64>,
    /// Disk, MiB.
    pub disk_mb: Option<u64>,
    /// Number of GPUs (whole or shared).
    pub gpus: Option<u32>,
    /// GPU memory over all GPUs, MiB.
    pub gpu_memory_mb: Option<u64>,
    /// Named custom resources and their caps.
    pub custom: BTreeMap<String, u64>,
}

/// A burst allowance: the subject may hold up to `limits` (each at least
/// the base cap) for at most `secs` continuous seconds. A dimension that
/// `limits` leaves unlimited gets no burst: its base cap holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Caps while bursting.
    #[serde(default)]
    pub limits: Limits,
    /// Longest burst, seconds (1 to [`MAX_BURST_SECS`]).
    pub secs: u64,
}

/// A local quota: base caps and an optional burst allowance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Caps that hold except while bursting.
    pub limits: Limits,
    /// Optional burst allowance above `limits`.
    pub burst: Option<Burst>,
}

/// What a quota caps. Written `default`, `node:<id>` or `group:<id>` in
/// text, JSON and postcard alike.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// Every requester without a quota of its own, each on its own.
    Default,
    /// One requester.
    Requester(NodeId),
    /// The members of a group, together (local quotas only).
    Group(GroupId),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Default => f.write_str("default"),
            Subject::Requester(n) => write!(f, "node:{n}"),
            Subject::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl FromStr for Subject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "default" {
            return Ok(Subject::Default);
        }
        let bad = || {
            format!("{s:?} is not a quota subject: expected \"default\", \"node:<id>\" or \"group:<id>\"")
        };
        let (kind, id) = t.split_once(':').ok_or_else(bad)?;
        if id.is_empty() {
            return Err(format!("{s:?} names no id after {kind:?}"));
        }
        match kind {
            "node" => Ok(Subject::Requester(NodeId::from(id))),
            "group" => Ok(Subject::Group(GroupId::from(id))),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A [`QuotaBook`] as plain data, for the store and the API. Maps are
/// keyed by the subject's text form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSnapshot {
    /// Local quotas.
    pub local: BTreeMap<Subject, Quota>,
    /// Swarm-wide quotas (no groups).
    pub swarm: BTreeMap<Subject, Limits>,
    /// Burst timers: when each subject was first seen over its base, ms.
    pub over_since: BTreeMap<Subject, u64>,
}

/// One dimension of [`Usage`] and [`Limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim<'a> {
    Cpu,
    Memory,
    Disk,
    Gpus,
    GpuMemory,
    Custom(&'a str),
}

impl fmt::Display for Dim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Cpu => f.write_str("cpu_cores"),
            Dim::Memory => f.write_str("memory_mb"),
            Dim::Disk => f.write_str("disk_mb"),
            Dim::Gpus => f.write_str("gpus"),
            Dim::GpuMemory => f.write_str("gpu_memory_mb"),
            Dim::Custom(k) => write!(f, "custom.{k}"),
        }
    }
}

impl Dim<'_> {
    /// The amount of this dimension in `u`.
    fn of(self, u: &Usage) -> u64 {
        match self {
            Dim::Cpu => u64::from(u.cpu_cores),
            Dim::Memory => u.memory_mb,
            Dim::Disk => u.disk_mb,
            Dim::Gpus => u64::from(u.gpus),
            Dim::GpuMemory => u.gpu_memory_mb,
            Dim::Custom(k) => u.custom.get(k).copied().unwrap_or(0),
        }
    }
}

/// A dimension over its cap: which, by how much, and the cap.
struct Over<'a> {
    dim: Dim<'a>,
    used: u64,
    cap: u64,
}

impl Limits {
    /// The cap in one dimension, if any.
    fn cap(&self, dim: Dim<'_>) -> Option<u64> {
        match dim {
            Dim::Cpu => self.cpu_cores.map(u64::from),
            Dim::Memory => self.memory_mb,
            Dim::Disk => self.disk_mb,
            Dim::Gpus => self.gpus.map(u64::from),
            Dim::GpuMemory => self.gpu_memory_mb,
            Dim::Custom(k) => self.custom.get(k).copied(),
        }
    }

    /// Every capped dimension and its cap, in a fixed order: the five
    /// named dimensions, then custom resources by name.
    fn caps(&self) -> impl Iterator<Item = (Dim<'_>, u64)> + '_ {
        [
            (Dim::Cpu, self.cpu_cores.map(u64::from)),
            (Dim::Memory, self.memory_mb),
            (Dim::Disk, self.disk_mb),
            (Dim::Gpus, self.gpus.map(u64::from)),
            (Dim::GpuMemory, self.gpu_memory_mb),
        ]
        .into_iter()
        .filter_map(|(d, c)| c.map(|c| (d, c)))
        .chain(self.custom.iter().map(|(k, v)| (Dim::Custom(k), *v)))
    }

    /// The first capped dimension (in [`Limits::caps`] order) that `usage`
    /// is above.
    fn first_over(&self, usage: &Usage) -> Option<Over<'_>> {
        self.caps().find_map(|(dim, cap)| {
            let used = dim.of(usage);
            (used > cap).then_some(Over { dim, used, cap })
        })
    }

    /// Whether nothing is capped.
    pub fn is_unlimited(&self) -> bool {
        self.caps().next().is_none()
    }

    /// The first dimension `usage` is above its cap in, for people, e.g.
    /// "cpu_cores: 6 is over the cap of 4". `None` if `usage` is within
    /// every cap (usage equal to a cap is within it). Dimensions are
    /// checked in the order `cpu_cores`, `memory_mb`, `disk_mb`, `gpus`,
    /// `gpu_memory_mb`, then custom resources by name.
    pub fn exceeded_by(&self, usage: &Usage) -> Option<String> {
        self.first_over(usage)
            .map(|o| format!("{}: {} is over the cap of {}", o.dim, o.used, o.cap))
    }
}

/// `a + b`, saturating.
fn plus(a: &Usage, b: &Usage) -> Usage {
    let mut s = a.clone();
    s.add(b);
    s
}

fn bad(message: String) -> Denial {
    Denial::new(DenyReason::BadRequest, message)
}

/// The subject of a quota is well-formed.
fn validate_subject(subject: &Subject) -> Result<(), Denial> {
    let (what, id) = match subject {
        Subject::Default => return Ok(()),
        Subject::Requester(n) => ("node id", n.0.as_str()),
        Subject::Group(g) => ("group id", g.0.as_str()),
    };
    if id.trim().is_empty() {
        return Err(bad(format!("a quota subject's {what} must not be empty")));
    }
    if id.len() > MAX_NODE_ID_BYTES {
        return Err(bad(format!(
            "a quota subject's {what} is {} bytes long, more than the {MAX_NODE_ID_BYTES} allowed",
            id.len()
        )));
    }
    Ok(())
}

/// `limits` (called `what` in messages) is well-formed.
fn validate_limits(limits: &Limits, what: &str) -> Result<(), Denial> {
    if limits.custom.len() > MAX_CUSTOM_LIMITS {
        return Err(bad(format!(
            "{what} cap {} custom resources, more than the {MAX_CUSTOM_LIMITS} allowed",
            limits.custom.len()
        )));
    }
    for name in limits.custom.keys() {
        if name.trim().is_empty() {
            return Err(bad(format!(
                "{what} cap a custom resource with an empty name"
            )));
        }
        if name.len() > MAX_CUSTOM_NAME_BYTES {
            return Err(bad(format!(
                "{what} cap custom resource {name:?}, whose name is longer than {MAX_CUSTOM_NAME_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// `quota` is well-formed, burst included. Current use is not considered.
fn validate_quota(quota: &Quota) -> Result<(), Denial> {
    validate_limits(&quota.limits, "the base limits")?;
    let Some(burst) = &quota.burst else {
        return Ok(());
    };
    validate_limits(&burst.limits, "the burst limits")?;
    if burst.secs == 0 {
        return Err(bad("a burst must last at least 1 s (secs is 0)".into()));
    }
    if burst.secs > MAX_BURST_SECS {
        return Err(bad(format!(
            "a burst of {} s is longer than one day ({MAX_BURST_SECS} s)",
            burst.secs
        )));
    }
    for (dim, cap) in burst.limits.caps() {
        match quota.limits.cap(dim) {
            None => {
                return Err(bad(format!(
                    "the burst cap of {cap} for {dim} is below the base, which is unlimited; \
                     cap {dim} in the base limits too, or leave it out of the burst"
                )))
            }
            Some(base) if cap < base => {
                return Err(bad(format!(
                    "the burst cap of {cap} for {dim} is below the base cap of {base}"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Why a dimension breaches a quota in [`QuotaBook::check`].
enum Breach {
    /// Over the base cap, and no burst in this dimension.
    OverCap,
    /// Over the burst cap.
    OverBurstCap { burst: u64 },
    /// Within the burst cap, but the burst window has closed.
    BurstUsedUp {
        burst: u64,
        secs: u64,
        since_ms: u64,
    },
}

/// The burst window of a subject first seen over its base at `since`.
fn window_open(since: Option<u64>, secs: u64, now_ms: u64) -> bool {
    match since {
        None => true,
        Some(since) => now_ms.saturating_sub(since) < secs.saturating_mul(1000),
    }
}

/// Check `would` against `quota` in each dimension `add` adds to; `since`
/// is the subject's burst timer.
fn breach<'q>(
    quota: &'q Quota,
    add: &Usage,
    would: &Usage,
    since: Option<u64>,
    now_ms: u64,
) -> Option<(Over<'q>, Breach)> {
    quota.limits.caps().find_map(|(dim, cap)| {
        if dim.of(add) == 0 {
            return None;
        }
        let used = dim.of(would);
        if used <= cap {
            return None;
        }
        let over = Over { dim, used, cap };
        let burst = quota
            .burst
            .as_ref()
            .and_then(|b| b.limits.cap(dim).filter(|c| *c > cap).map(|c| (c, b.secs)));
        match burst {
            None => Some((over, Breach::OverCap)),
            Some((burst, _)) if used > burst => Some((over, Breach::OverBurstCap { burst })),
            Some((_, secs)) if window_open(since, secs, now_ms) => None,
            Some((burst, secs)) => Some((
                over,
                Breach::BurstUsedUp {
                    burst,
                    secs,
                    // The window is closed only if a timer is set.
                    since_ms: since.unwrap_or(0),
                },
            )),
        }
    })
}

/// The quotas an owner enforces on its resources. See the module
/// documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaBook {
    local: BTreeMap<Subject, Quota>,
    swarm: BTreeMap<Subject, Limits>,
    /// The quota tree: each local quota's parent (a group's), if it has
    /// one. Roots (no entry) sit under the whole swarm's capacity.
    parents: BTreeMap<Subject, Subject>,
    /// Burst timers, keyed by `Requester` or `Group` (never `Default`: a
    /// requester under the default quota has a timer of its own).
    over_since: BTreeMap<Subject, u64>,
}

impl QuotaBook {
    /// A book with no quotas: everything is admitted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the book has no quota of either kind.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.swarm.is_empty()
    }

    /// Set or replace the local quota of `subject`. `current` is the
    /// subject's usage on this owner now (for [`Subject::Default`], the
    /// largest usage, per dimension, of any requester without its own
    /// quota).
    ///
    /// `BadRequest`, changing nothing, if the subject's id is empty or
    /// longer than [`MAX_NODE_ID_BYTES`]; if either limits cap more than
    /// [`MAX_CUSTOM_LIMITS`] custom resources or one with an empty or
    /// too-long name; if the burst lasts 0 s or more than a day, caps a
    /// dimension below its base cap, or caps one whose base is unlimited;
    /// if the book already holds [`MAX_QUOTAS`] local quotas and this
    /// would be a new one; or if it breaks the quota tree (over its parent,
    /// or under one of its children; see "The quota tree"). The subject's
    /// parent link, if any, is kept. A quota below `current` is accepted.
    ///
    /// On success the subject's burst timer is kept if `current` is still
    /// over the new base, and cleared otherwise; call
    /// [`QuotaBook::observe`] next to start it if it is not running.
    pub fn set(&mut self, subject: Subject, quota: Quota, current: &Usage) -> Result<(), Denial> {
        validate_subject(&subject)?;
        validate_quota(&quota)?;
        if self.local.len() >= MAX_QUOTAS && !self.local.contains_key(&subject) {
            return Err(bad(format!(
                "this owner already has {MAX_QUOTAS} local quotas, the most it keeps; \
                 remove one first"
            )));
        }
        let mut next = self.local.clone();
        next.insert(subject.clone(), quota.clone());
        check_tree(&next, &self.parents, &subject)?;
        if quota.limits.first_over(current).is_none() {
            self.over_since.remove(&subject);
        }
        self.local.insert(subject, quota);
        Ok(())
    }

    /// Remove the local quota of `subject`. Returns whether there was one.
    /// Burst timers that no quota times any more are dropped (a
    /// requester's, unless the default quota now applies to it).
    pub fn remove(&mut self, subject: &Subject) -> bool {
        if self.local.remove(subject).is_none() {
            return false;
        }
        // Its children become roots; it leaves its own parent.
        self.parents.retain(|c, p| p != subject && c != subject);
        match subject {
            Subject::Default => {
                let local = &self.local;
                self.over_since.retain(|s, _| local.contains_key(s));
            }
            Subject::Requester(_) if self.local.contains_key(&Subject::Default) => {}
            _ => {
                self.over_since.remove(subject);
            }
        }
        true
    }

    /// [`QuotaBook::set`], placing the quota in the tree under `parent` (a
    /// group with a local quota here), or at a root with `None`. Beyond
    /// what `set` refuses, `BadRequest`, changing nothing, if the parent
    /// is not a group, has no quota here, or is the subject; if the link
    /// would close a cycle; if the subject is `default`; or if any cap of
    /// the subject (base or burst) is above its parent's (burst or base),
    /// or below one of its own children's.
    pub fn set_with_parent(
        &mut self,
        subject: Subject,
        quota: Quota,
        parent: Option<Subject>,
        current: &Usage,
    ) -> Result<(), Denial> {
        let mut parents = self.parents.clone();
        match &parent {
            Some(p) => {
                validate_subject(p)?;
                if subject == Subject::Default {
                    return Err(bad(
                        "the default quota applies to each requester on its own and \
                         cannot have a parent"
                            .to_string(),
                    ));
                }
                if !matches!(p, Subject::Group(_)) {
                    return Err(bad(format!(
                        "the parent of a quota must be a group's quota, not {p}"
                    )));
                }
                if *p == subject {
                    return Err(bad(format!("{subject} cannot be its own parent")));
                }
                if !self.local.contains_key(p) {
                    return Err(bad(format!(
                        "{p} has no quota here; set the parent's quota first"
                    )));
                }
                parents.insert(subject.clone(), p.clone());
            }
            None => {
                parents.remove(&subject);
            }
        }
        let mut next = self.clone();
        next.parents = parents;
        next.set(subject, quota, current)?;
        *self = next;
        Ok(())
    }

    /// The parent of `subject`'s quota in the tree, if it has one.
    pub fn parent(&self, subject: &Subject) -> Option<&Subject> {
        self.parents.get(subject)
    }

    /// Every parent link (child, parent), for persistence.
    pub fn parents(&self) -> Vec<(Subject, Subject)> {
        self.parents
            .iter()
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect()
    }

    /// Put back parent links read from the store, after
    /// [`QuotaBook::restore`]. A link whose child or parent has no quota,
    /// that would close a cycle, or whose child is over its parent is
    /// dropped. Returns the links dropped.
    pub fn restore_parents(&mut self, links: Vec<(Subject, Subject)>) -> Vec<(Subject, Subject)> {
        let mut dropped = Vec::new();
        for (c, p) in links {
            let Some(q) = self.local.get(&c).cloned() else {
                dropped.push((c, p));
                continue;
            };
            if self
                .set_with_parent(c.clone(), q, Some(p.clone()), &Usage::default())
                .is_err()
            {
                dropped.push((c, p));
            }
        }
        dropped
    }

    /// The quota of `subject` as enforced: its base and burst caps, each
    /// cut to the lowest cap of the same dimension along its path to the
    /// root (a child never exceeds its parent). `None` if it has no local
    /// quota.
    pub fn effective(&self, subject: &Subject) -> Option<Quota> {
        let own = self.local.get(subject)?;
        let mut q = own.clone();
        let mut at = subject;
        let mut seen = BTreeSet::new();
        while let Some(p) = self.parents.get(at) {
            if !seen.insert(p) {
                break;
            }
            let Some(pq) = self.local.get(p) else {
                break;
            };
            q.limits = min_limits(&q.limits, &pq.limits);
            if let Some(b) = &mut q.burst {
                let parent_ceiling = match &pq.burst {
                    Some(pb) => ceiling(&pq.limits, &pb.limits),
                    None => pq.limits.clone(),
                };
                b.limits = min_limits(&b.limits, &parent_ceiling);
            }
            at = p;
        }
        Some(q)
    }

    /// Set or replace the swarm-wide quota of `subject` (a requester, or
    /// the default). `current_swarm` is the subject's usage on the whole
    /// swarm now, as this owner knows it (for [`Subject::Default`], the
    /// largest, per dimension, of any requester without its own).
    ///
    /// `BadRequest`, changing nothing, for a [`Subject::Group`] or for the
    /// malformed input [`QuotaBook::set`] refuses. A cap below
    /// `current_swarm` is accepted (it stops new grants only).
    pub fn set_swarm(
        &mut self,
        subject: Subject,
        limits: Limits,
        current_swarm: &Usage,
    ) -> Result<(), Denial> {
        if let Subject::Group(g) = &subject {
            return Err(bad(format!(
                "swarm-wide quotas are per requester or default; group {g} cannot have one \
                 (give the group a local quota instead)"
            )));
        }
        validate_subject(&subject)?;
        validate_limits(&limits, "the swarm-wide limits")?;
        if self.swarm.len() >= MAX_QUOTAS && !self.swarm.contains_key(&subject) {
            return Err(bad(format!(
                "this owner already has {MAX_QUOTAS} swarm-wide quotas, the most it keeps; \
                 remove one first"
            )));
        }
        // A cap below current use is accepted: it stops new grants in that
        // dimension and breaks no lease.
        let _ = current_swarm;
        self.swarm.insert(subject, limits);
        Ok(())
    }

    /// Remove the swarm-wide quota of `subject`. Returns whether there was
    /// one.
    pub fn remove_swarm(&mut self, subject: &Subject) -> bool {
        self.swarm.remove(subject).is_some()
    }

    /// Every local quota, then every swarm-wide quota, each in subject
    /// order (`default`, then requesters, then groups, each by id).
    #[allow(clippy::type_complexity)] // a plain pair of lists reads best here
    pub fn list(&self) -> (Vec<(Subject, Quota)>, Vec<(Subject, Limits)>) {
        (
            self.local
                .iter()
                .map(|(s, q)| (s.clone(), q.clone()))
                .collect(),
            self.swarm
                .iter()
                .map(|(s, l)| (s.clone(), l.clone()))
                .collect(),
        )
    }

    /// The local quota of exactly `subject`, if set.
    pub fn get(&self, subject: &Subject) -> Option<&Quota> {
        self.local.get(subject)
    }

    /// The swarm-wide quota of exactly `subject`, if set.
    pub fn get_swarm(&self, subject: &Subject) -> Option<&Limits> {
        self.swarm.get(subject)
    }

    /// The local quota that applies to `requester` itself (not its groups'),
    /// and whose it is: its own, else the default.
    pub fn quota_for(&self, requester: &NodeId) -> Option<(Subject, &Quota)> {
        let own = Subject::Requester(requester.clone());
        match self.local.get(&own) {
            Some(q) => Some((own, q)),
            None => self
                .local
                .get(&Subject::Default)
                .map(|q| (Subject::Default, q)),
        }
    }

    /// The swarm-wide quota that applies to `requester`, and whose it is:
    /// its own, else the default.
    pub fn swarm_limits_for(&self, requester: &NodeId) -> Option<(Subject, &Limits)> {
        let own = Subject::Requester(requester.clone());
        match self.swarm.get(&own) {
            Some(l) => Some((own, l)),
            None => self
                .swarm
                .get(&Subject::Default)
                .map(|l| (Subject::Default, l)),
        }
    }

    /// When `subject` (a requester or a group) was first seen over its
    /// base, if it still is as far as [`QuotaBook::observe`] knows.
    pub fn over_since(&self, subject: &Subject) -> Option<u64> {
        self.over_since.get(subject).copied()
    }

    /// Decide whether granting `add` (the prospective lease's usage, GPUs
    /// already assigned) to `requester` keeps every applicable quota; see
    /// the module documentation for the rule.
    ///
    /// `usage_here` gives the current usage on this owner of
    /// `Subject::Requester(requester)` or of a `Subject::Group` (the sum
    /// over its members); it is called only for subjects with an applicable
    /// quota. `groups` are the groups `requester` is in (repeats and groups
    /// without a quota are ignored). `swarm_usage` is the requester's usage
    /// on every *other* owner, as last announced (this owner's own usage
    /// comes from `usage_here`, so it must not be included).
    ///
    /// `Err` with [`DenyReason::QuotaExceeded`] naming the quota's subject,
    /// the dimension, the would-be usage and the cap. Changes nothing.
    pub fn check(
        &self,
        requester: &NodeId,
        groups: &[GroupId],
        add: &Usage,
        usage_here: impl Fn(&Subject) -> Usage,
        swarm_usage: &Usage,
        now_ms: u64,
    ) -> Result<(), Denial> {
        let me = Subject::Requester(requester.clone());
        let mut here: Option<Usage> = None;
        let mut here_of_me = || here.get_or_insert_with(|| usage_here(&me)).clone();

        if let Some((applied, quota)) = self.quota_for(requester) {
            let quota = &self.effective(&applied).unwrap_or_else(|| quota.clone());
            let would = plus(&here_of_me(), add);
            let since = self.over_since(&Subject::Requester(requester.clone()));
            if let Some((o, b)) = breach(quota, add, &would, since, now_ms) {
                let scope = match applied {
                    Subject::Default => {
                        format!("default quota here (applied to requester {requester})")
                    }
                    _ => format!("quota of requester {requester} here"),
                };
                return Err(exceeded(&scope, &o, &b, now_ms));
            }
        }

        let groups: BTreeSet<&GroupId> = groups.iter().collect();
        for g in groups {
            let subject = Subject::Group(g.clone());
            let Some(quota) = self.effective(&subject) else {
                continue;
            };
            let quota = &quota;
            let would = plus(&usage_here(&subject), add);
            if let Some((o, b)) = breach(quota, add, &would, self.over_since(&subject), now_ms) {
                let scope = format!("quota of group {g} here (requester {requester} is a member)");
                return Err(exceeded(&scope, &o, &b, now_ms));
            }
        }

        if let Some((applied, limits)) = self.swarm_limits_for(requester) {
            let mine = here_of_me();
            let would = plus(&plus(swarm_usage, &mine), add);
            let over = limits.caps().find_map(|(dim, cap)| {
                let used = dim.of(&would);
                (dim.of(add) > 0 && used > cap).then_some(Over { dim, used, cap })
            });
            if let Some(o) = over {
                let scope = match applied {
                    Subject::Default => {
                        format!("default swarm-wide quota (applied to requester {requester})")
                    }
                    _ => format!("swarm-wide quota of requester {requester}"),
                };
                return Err(Denial::new(
                    DenyReason::QuotaExceeded,
                    format!(
                        "{scope}: this grant would bring {} to {} across the swarm \
                         ({} here, {} elsewhere as last announced, {} in this grant), \
                         over the cap of {}",
                        o.dim,
                        o.used,
                        o.dim.of(&mine),
                        o.dim.of(swarm_usage),
                        o.dim.of(add),
                        o.cap
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Record `subject`'s usage on this owner after a change (grant,
    /// release, expiry), for burst timing: the subject's timer starts at
    /// `now_ms` when its usage is first seen above its base caps in any
    /// dimension, keeps running while it stays above, and is cleared when
    /// its usage is back within them or no local quota applies to it.
    ///
    /// For a requester the applicable quota is its own, else the default;
    /// for a group, its own. [`Subject::Default`] is not a holder, so
    /// observing it does nothing: observe each requester instead.
    pub fn observe(&mut self, subject: &Subject, usage: &Usage, now_ms: u64) {
        let quota = match subject {
            Subject::Default => return,
            Subject::Requester(r) => self.quota_for(r).map(|(_, q)| q),
            Subject::Group(_) => self.local.get(subject),
        };
        let over = quota.is_some_and(|q| q.limits.first_over(usage).is_some());
        if over {
            self.over_since.entry(subject.clone()).or_insert(now_ms);
        } else {
            self.over_since.remove(subject);
        }
    }

    /// The book as plain data, burst timers included.
    pub fn snapshot(&self) -> QuotaSnapshot {
        QuotaSnapshot {
            local: self.local.clone(),
            swarm: self.swarm.clone(),
            over_since: self.over_since.clone(),
        }
    }

    /// A book from a snapshot. Entries that [`QuotaBook::set`] or
    /// [`QuotaBook::set_swarm`] would refuse as malformed (current use
    /// aside), entries beyond [`MAX_QUOTAS`], and burst timers of subjects
    /// that no quota applies to are dropped, so a damaged or hand-edited
    /// snapshot gives a valid book. A snapshot of a book round-trips
    /// exactly.
    pub fn restore(s: QuotaSnapshot) -> Self {
        let local: BTreeMap<Subject, Quota> = s
            .local
            .into_iter()
            .filter(|(sub, q)| validate_subject(sub).is_ok() && validate_quota(q).is_ok())
            .take(MAX_QUOTAS)
            .collect();
        let swarm: BTreeMap<Subject, Limits> = s
            .swarm
            .into_iter()
            .filter(|(sub, l)| {
                !matches!(sub, Subject::Group(_))
                    && validate_subject(sub).is_ok()
                    && validate_limits(l, "").is_ok()
            })
            .take(MAX_QUOTAS)
            .collect();
        let has_default = local.contains_key(&Subject::Default);
        let over_since = s
            .over_since
            .into_iter()
            .filter(|(sub, _)| match sub {
                Subject::Default => false,
                Subject::Requester(_) => has_default || local.contains_key(sub),
                Subject::Group(_) => local.contains_key(sub),
            })
            .collect();
        QuotaBook {
            local,
            swarm,
            parents: BTreeMap::new(),
            over_since,
        }
    }
}

/// The lower cap of each dimension (a dimension either leaves unlimited
/// takes the other's cap).
fn min_limits(a: &Limits, b: &Limits) -> Limits {
    fn lo<T: Ord + Copy>(x: Option<T>, y: Option<T>) -> Option<T> {
        match (x, y) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) => x,
            (None, y) => y,
        }
    }
    let mut custom = a.custom.clone();
    for (k, v) in &b.custom {
        let e = custom.entry(k.clone()).or_insert(*v);
        *e = (*e).min(*v);
    }
    Limits {
        cpu_cores: lo(a.cpu_cores, b.cpu_cores),
        memory_mb: lo(a.memory_mb, b.memory_mb),
        disk_mb: lo(a.disk_mb, b.disk_mb),
        gpus: lo(a.gpus, b.gpus),
        gpu_memory_mb: lo(a.gpu_memory_mb, b.gpu_memory_mb),
        custom,
    }
}

/// The first cap of `child` above the same cap of `parent`: (dimension,
/// child's cap, parent's cap).
fn over_parent(child: &Limits, parent: &Limits) -> Option<(String, u64, u64)> {
    child.caps().find_map(|(dim, c)| {
        parent
            .cap(dim)
            .and_then(|p| (c > p).then(|| (dim.to_string(), c, p)))
    })
}

/// What a quota allows at most: its burst caps where it has them, else its
/// base caps.
fn ceiling_of(q: &Quota) -> Limits {
    match &q.burst {
        Some(b) => ceiling(&q.limits, &b.limits),
        None => q.limits.clone(),
    }
}

/// Check the tree around `subject` in `local` with links `parents`: its
/// parent exists, no cycle through it, it is not over its parent, and no
/// child of it is over it.
fn check_tree(
    local: &BTreeMap<Subject, Quota>,
    parents: &BTreeMap<Subject, Subject>,
    subject: &Subject,
) -> Result<(), Denial> {
    let Some(q) = local.get(subject) else {
        return Ok(());
    };
    if let Some(p) = parents.get(subject) {
        let mut at = p;
        let mut steps = 0usize;
        loop {
            if at == subject {
                return Err(bad(format!(
                    "placing {subject} under {p} would make a cycle in the quota tree"
                )));
            }
            steps += 1;
            match parents.get(at) {
                Some(next) if steps <= parents.len() => at = next,
                _ => break,
            }
        }
        let Some(pq) = local.get(p) else {
            return Err(bad(format!(
                "{p} has no quota here; set the parent's quota first"
            )));
        };
        let parent_ceiling = ceiling_of(pq);
        if let Some((dim, c, pc)) = over_parent(&q.limits, &pq.limits)
            .or_else(|| over_parent(&ceiling_of(q), &parent_ceiling))
        {
            return Err(bad(format!(
                "{subject} would cap {dim} at {c}, over the cap of {pc} of its parent {p}: \
                 a child quota can never exceed its parent"
            )));
        }
    }
    for (child, _) in parents.iter().filter(|(_, p)| *p == subject) {
        let Some(cq) = local.get(child) else {
            continue;
        };
        if let Some((dim, c, pc)) = over_parent(&cq.limits, &q.limits)
            .or_else(|| over_parent(&ceiling_of(cq), &ceiling_of(q)))
        {
            return Err(bad(format!(
                "{subject} would cap {dim} at {pc}, under the cap of {c} of its child {child}: \
                 lower or remove the child's quota first"
            )));
        }
    }
    Ok(())
}

/// Per dimension, the burst cap where `burst` has one, else the base cap.
/// (A valid burst caps only dimensions the base caps.)
fn ceiling(base: &Limits, burst: &Limits) -> Limits {
    Limits {
        cpu_cores: burst.cpu_cores.or(base.cpu_cores),
        memory_mb: burst.memory_mb.or(base.memory_mb),
        disk_mb: burst.disk_mb.or(base.disk_mb),
        gpus: burst.gpus.or(base.gpus),
        gpu_memory_mb: burst.gpu_memory_mb.or(base.gpu_memory_mb),
        custom: base
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), burst.custom.get(k).copied().unwrap_or(*v)))
            .collect(),
    }
}

/// The `QuotaExceeded` denial for a local quota breach.
fn exceeded(scope: &str, o: &Over<'_>, b: &Breach, now_ms: u64) -> Denial {
    let head = format!("{scope}: this grant would bring {} to {}", o.dim, o.used);
    let message = match b {
        Breach::OverCap => format!("{head}, over the cap of {}", o.cap),
        Breach::OverBurstCap { burst } => {
            format!("{head}, over the burst cap of {burst} (base cap {})", o.cap)
        }
        Breach::BurstUsedUp {
            burst,
            secs,
            since_ms,
        } => format!(
            "{head}, over the cap of {}; the burst allowance (up to {burst} for {secs} s) \
             is used up: over the base since {since_ms} ms, {} s ago",
            o.cap,
            now_ms.saturating_sub(*since_ms) / 1000
        ),
    };
    Denial::new(DenyReason::QuotaExceeded, message)
}

/// The most the swarm-wide total of one requester can pass its cap, per
/// dimension, when `owners_granting_concurrently` owners (`n`) grant to it
/// within one gossip delay and `largest_grant` (`W`) is the most any one of
/// them grants it within one gossip delay: `(n - 1) * W`, saturating (zero
/// for `n <= 1`). `W` is the largest lease if an owner grants a requester
/// at most one lease per gossip delay; it never needs to exceed the cap
/// itself. See the module documentation for the derivation and its
/// assumptions.
pub fn overshoot_bound(owners_granting_concurrently: u32, largest_grant: &Usage) -> Usage {
    let k = owners_granting_concurrently.saturating_sub(1);
    let k64 = u64::from(k);
    Usage {
        cpu_cores: largest_grant.cpu_cores.saturating_mul(k),
        memory_mb: largest_grant.memory_mb.saturating_mul(k64),
        disk_mb: largest_grant.disk_mb.saturating_mul(k64),
        gpus: largest_grant.gpus.saturating_mul(k),
        gpu_memory_mb: largest_grant.gpu_memory_mb.saturating_mul(k64),
        custom: largest_grant
            .custom
            .iter()
            .map(|(name, v)| (name.clone(), v.saturating_mul(k64)))
            .filter(|(_, v)| *v > 0)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn req(s: &str) -> Subject {
        Subject::Requester(n(s))
    }

    fn grp(s: &str) -> Subject {
        Subject::Group(GroupId::from(s))
    }

    fn cores(c: u32) -> Usage {
        Usage {
            cpu_cores: c,
            ..Usage::default()
        }
    }

    fn cap_cores(c: u32) -> Limits {
        Limits {
            cpu_cores: Some(c),
            ..Limits::default()
        }
    }

    fn quota(c: u32) -> Quota {
        Quota {
            limits: cap_cores(c),
            burst: None,
        }
    }

    fn bursty(base: u32, burst: u32, secs: u64) -> Quota {
        Quota {
            limits: cap_cores(base),
            burst: Some(Burst {
                limits: cap_cores(burst),
                secs,
            }),
        }
    }

    /// `check` for requester `r` in `groups`, with usage here from `here`
    /// (missing subjects use nothing).
    fn check(
        book: &QuotaBook,
        r: &str,
        groups: &[&str],
        add: &Usage,
        here: &[(Subject, Usage)],
        swarm: &Usage,
        now: u64,
    ) -> Result<(), Denial> {
        let groups: Vec<GroupId> = groups.iter().map(|g| GroupId::from(*g)).collect();
        let here: BTreeMap<Subject, Usage> = here.iter().cloned().collect();
        book.check(
            &n(r),
            &groups,
            add,
            |s| here.get(s).cloned().unwrap_or_default(),
            swarm,
            now,
        )
    }

    fn msg(r: Result<(), Denial>, reason: DenyReason) -> String {
        let d = r.unwrap_err();
        assert_eq!(d.reason, reason, "{}", d.message);
        d.message
    }

    // ----- Limits -----

    #[test]
    fn exceeded_by_names_the_first_dimension_over() {
        let all = Limits {
            cpu_cores: Some(4),
            memory_mb: Some(100),
            disk_mb: Some(200),
            gpus: Some(1),
            gpu_memory_mb: Some(300),
            custom: [("api".to_string(), 5)].into_iter().collect(),
        };
        assert_eq!(all.exceeded_by(&Usage::default()), None);
        let at_caps = Usage {
            cpu_cores: 4,
            memory_mb: 100,
            disk_mb: 200,
            gpus: 1,
            gpu_memory_mb: 300,
            custom: [("api".to_string(), 5), ("other".to_string(), 99)]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            all.exceeded_by(&at_caps),
            None,
            "equal to a cap is within it"
        );
        let over = |f: &dyn Fn(&mut Usage)| {
            let mut u = at_caps.clone();
            f(&mut u);
            all.exceeded_by(&u).unwrap()
        };
        assert_eq!(
            over(&|u| u.cpu_cores = 6),
            "cpu_cores: 6 is over the cap of 4"
        );
        assert_eq!(
            over(&|u| u.memory_mb = 101),
            "memory_mb: 101 is over the cap of 100"
        );
        assert_eq!(
            over(&|u| u.disk_mb = 201),
            "disk_mb: 201 is over the cap of 200"
        );
        assert_eq!(over(&|u| u.gpus = 2), "gpus: 2 is over the cap of 1");
        assert_eq!(
            over(&|u| u.gpu_memory_mb = 301),
            "gpu_memory_mb: 301 is over the cap of 300"
        );
        assert_eq!(
            over(&|u| {
                u.custom.insert("api".into(), 6);
            }),
            "custom.api: 6 is over the cap of 5"
        );
        // The first in order wins.
        assert_eq!(
            over(&|u| {
                u.disk_mb = 999;
                u.cpu_cores = 5;
            }),
            "cpu_cores: 5 is over the cap of 4"
        );
    }

    #[test]
    fn unlimited_limits_cap_nothing() {
        let l = Limits::default();
        assert!(l.is_unlimited());
        let huge = Usage {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
            custom: [("x".to_string(), u64::MAX)].into_iter().collect(),
            ..Usage::default()
        };
        assert_eq!(l.exceeded_by(&huge), None);
        assert!(!cap_cores(0).is_unlimited());
    }

    #[test]
    fn limits_json_defaults_and_rejects_unknown_fields() {
        let l: Limits = serde_json::from_str(r#"{"cpu_cores": 4}"#).unwrap();
        assert_eq!(l, cap_cores(4));
        let l: Limits = serde_json::from_str("{}").unwrap();
        assert!(l.is_unlimited());
        assert!(serde_json::from_str::<Limits>(r#"{"cpus": 4}"#).is_err());
        let q: Quota = serde_json::from_str(
            r#"{"limits": {"cpu_cores": 4}, "burst": {"limits": {"cpu_cores": 8}, "secs": 60}}"#,
        )
        .unwrap();
        assert_eq!(q, bursty(4, 8, 60));
        assert!(serde_json::from_str::<Quota>(r#"{"limit": {}}"#).is_err());
        assert!(
            serde_json::from_str::<Burst>(r#"{"limits": {}}"#).is_err(),
            "secs is required"
        );
    }

    // ----- Subject -----

    #[test]
    fn subject_text_round_trips() {
        for (s, text) in [
            (Subject::Default, "default"),
            (req("12D3Koo"), "node:12D3Koo"),
            (grp("b1f0-uuid"), "group:b1f0-uuid"),
            (req("a:b"), "node:a:b"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(text.parse::<Subject>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Subject>(&json).unwrap(), s);
            let bytes = postcard::to_allocvec(&s).unwrap();
            assert_eq!(postcard::from_bytes::<Subject>(&bytes).unwrap(), s);
        }
        assert_eq!(" default ".parse::<Subject>().unwrap(), Subject::Default);
    }

    #[test]
    fn subject_parse_errors_say_what_is_expected() {
        let e = "everyone".parse::<Subject>().unwrap_err();
        assert_eq!(
            e,
            "\"everyone\" is not a quota subject: expected \"default\", \"node:<id>\" or \"group:<id>\""
        );
        let e = "user:x".parse::<Subject>().unwrap_err();
        assert!(e.contains("is not a quota subject"), "{e}");
        let e = "node:".parse::<Subject>().unwrap_err();
        assert_eq!(e, "\"node:\" names no id after \"node\"");
        assert!(serde_json::from_str::<Subject>("\"group:\"").is_err());
    }

    #[test]
    fn subjects_order_default_then_requesters_then_groups() {
        let mut v = vec![grp("a"), req("b"), Subject::Default, req("a")];
        v.sort();
        assert_eq!(v, vec![Subject::Default, req("a"), req("b"), grp("a")]);
    }

    // ----- set / set_swarm validation -----

    #[test]
    fn a_cap_below_current_use_is_accepted_and_stops_new_grants_only() {
        let mut b = QuotaBook::new();
        b.set(req("X"), quota(4), &cores(6)).unwrap();
        assert_eq!(b.get(&req("X")), Some(&quota(4)));
        // X holds 6: one more core is refused, memory still admitted.
        let here = |_: &Subject| cores(6);
        let d = b
            .check(
                &NodeId::from("X"),
                &[],
                &cores(1),
                here,
                &Usage::default(),
                0,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::QuotaExceeded);
        let mem = Usage {
            memory_mb: 10,
            ..Usage::default()
        };
        assert!(b
            .check(&NodeId::from("X"), &[], &mem, here, &Usage::default(), 0)
            .is_ok());
        b.set(grp("G"), quota(2), &cores(3)).unwrap();
        b.set(Subject::Default, quota(0), &cores(1)).unwrap();
        b.set_swarm(req("X"), cap_cores(4), &cores(6)).unwrap();
    }

    // ----- the quota tree -----

    fn tree() -> QuotaBook {
        let mut b = QuotaBook::new();
        b.set(grp("lab"), quota(8), &cores(0)).unwrap();
        b.set_with_parent(grp("team"), quota(6), Some(grp("lab")), &cores(0))
            .unwrap();
        b.set_with_parent(req("X"), quota(4), Some(grp("team")), &cores(0))
            .unwrap();
        b
    }

    #[test]
    fn a_child_over_its_parent_a_cycle_or_a_missing_parent_is_refused_and_changes_nothing() {
        let mut b = tree();
        let before = b.clone();
        let d = b
            .set_with_parent(req("Y"), quota(7), Some(grp("team")), &cores(0))
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(
            d.message
                .contains("over the cap of 6 of its parent group:team"),
            "{}",
            d.message
        );
        // Lowering a parent under its child's cap.
        let d = b.set(grp("team"), quota(3), &cores(0)).unwrap_err();
        assert!(
            d.message.contains("under the cap of 4 of its child node:X"),
            "{}",
            d.message
        );
        // lab -> team -> lab.
        let d = b
            .set_with_parent(grp("lab"), quota(8), Some(grp("team")), &cores(0))
            .unwrap_err();
        assert!(d.message.contains("cycle"), "{}", d.message);
        let d = b
            .set_with_parent(req("Y"), quota(1), Some(grp("nobody")), &cores(0))
            .unwrap_err();
        assert!(d.message.contains("has no quota here"), "{}", d.message);
        let d = b
            .set_with_parent(req("Y"), quota(1), Some(req("X")), &cores(0))
            .unwrap_err();
        assert!(d.message.contains("must be a group"), "{}", d.message);
        let d = b
            .set_with_parent(Subject::Default, quota(1), Some(grp("lab")), &cores(0))
            .unwrap_err();
        assert!(d.message.contains("cannot have a parent"), "{}", d.message);
        let d = b
            .set_with_parent(grp("lab"), quota(8), Some(grp("lab")), &cores(0))
            .unwrap_err();
        assert!(d.message.contains("its own parent"), "{}", d.message);
        assert_eq!(b, before);
    }

    #[test]
    fn the_effective_cap_is_the_lowest_along_the_path() {
        let mut b = tree();
        // X caps only memory itself; its cores come from team (6).
        let mem_only = Quota {
            limits: Limits {
                memory_mb: Some(100),
                ..Limits::default()
            },
            burst: None,
        };
        b.set_with_parent(req("X"), mem_only, Some(grp("team")), &cores(0))
            .unwrap();
        let e = b.effective(&req("X")).unwrap();
        assert_eq!(e.limits.cpu_cores, Some(6));
        assert_eq!(e.limits.memory_mb, Some(100));
        let here = |_: &Subject| cores(5);
        assert!(b
            .check(
                &NodeId::from("X"),
                &[],
                &cores(1),
                here,
                &Usage::default(),
                0
            )
            .is_ok());
        let d = b
            .check(
                &NodeId::from("X"),
                &[],
                &cores(2),
                here,
                &Usage::default(),
                0,
            )
            .unwrap_err();
        assert!(d.message.contains("cpu_cores"), "{}", d.message);
        // Removing team makes X a root.
        assert!(b.remove(&grp("team")));
        assert_eq!(b.parent(&req("X")), None);
        assert_eq!(b.effective(&req("X")).unwrap().limits.cpu_cores, None);
        // Links survive a restore through `parents`/`restore_parents`.
        let b = tree();
        let mut r = QuotaBook::restore(b.snapshot());
        assert!(r.restore_parents(b.parents()).is_empty());
        assert_eq!(r, b);
    }

    #[test]
    fn set_refuses_a_bad_burst() {
        let mut b = QuotaBook::new();
        let d = b.set(req("X"), bursty(4, 3, 60), &cores(0)).unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert_eq!(
            d.message,
            "the burst cap of 3 for cpu_cores is below the base cap of 4"
        );
        let d = b.set(req("X"), bursty(4, 8, 0), &cores(0)).unwrap_err();
        assert_eq!(d.message, "a burst must last at least 1 s (secs is 0)");
        let d = b
            .set(req("X"), bursty(4, 8, MAX_BURST_SECS + 1), &cores(0))
            .unwrap_err();
        assert_eq!(
            d.message,
            "a burst of 86401 s is longer than one day (86400 s)"
        );
        b.set(req("X"), bursty(4, 8, MAX_BURST_SECS), &cores(0))
            .unwrap();
        b.set(req("Z"), bursty(4, 4, 1), &cores(0)).unwrap();

        let q = Quota {
            limits: Limits::default(),
            burst: Some(Burst {
                limits: Limits {
                    custom: [("api".to_string(), 9)].into_iter().collect(),
                    ..Limits::default()
                },
                secs: 5,
            }),
        };
        let d = b.set(req("Y"), q, &cores(0)).unwrap_err();
        assert_eq!(
            d.message,
            "the burst cap of 9 for custom.api is below the base, which is unlimited; \
             cap custom.api in the base limits too, or leave it out of the burst"
        );
        assert_eq!(b.get(&req("Y")), None);
    }

    #[test]
    fn set_refuses_malformed_subjects_and_limits() {
        let mut b = QuotaBook::new();
        let d = b.set(req(""), quota(1), &cores(0)).unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert_eq!(d.message, "a quota subject's node id must not be empty");
        let d = b.set(grp(" "), quota(1), &cores(0)).unwrap_err();
        assert_eq!(d.message, "a quota subject's group id must not be empty");
        let long = "x".repeat(MAX_NODE_ID_BYTES + 1);
        let d = b.set(req(&long), quota(1), &cores(0)).unwrap_err();
        assert_eq!(
            d.message,
            "a quota subject's node id is 129 bytes long, more than the 128 allowed"
        );

        let with_custom = |keys: Vec<String>| Quota {
            limits: Limits {
                custom: keys.into_iter().map(|k| (k, 1)).collect(),
                ..Limits::default()
            },
            burst: None,
        };
        let d = b
            .set(req("X"), with_custom(vec![String::new()]), &cores(0))
            .unwrap_err();
        assert_eq!(
            d.message,
            "the base limits cap a custom resource with an empty name"
        );
        let d = b
            .set(req("X"), with_custom(vec!["k".repeat(65)]), &cores(0))
            .unwrap_err();
        assert!(
            d.message
                .starts_with("the base limits cap custom resource \"kkk")
                && d.message.ends_with("whose name is longer than 64 bytes"),
            "{}",
            d.message
        );
        let many: Vec<String> = (0..=MAX_CUSTOM_LIMITS).map(|i| format!("r{i}")).collect();
        let d = b.set(req("X"), with_custom(many), &cores(0)).unwrap_err();
        assert_eq!(
            d.message,
            "the base limits cap 65 custom resources, more than the 64 allowed"
        );
        let bad_burst = Quota {
            limits: Limits::default(),
            burst: Some(Burst {
                limits: with_custom(vec![String::new()]).limits,
                secs: 1,
            }),
        };
        let d = b.set(req("X"), bad_burst, &cores(0)).unwrap_err();
        assert_eq!(
            d.message,
            "the burst limits cap a custom resource with an empty name"
        );
        assert!(b.is_empty());
    }

    #[test]
    fn set_stops_at_max_quotas_but_replaces() {
        let mut b = QuotaBook::new();
        for i in 0..MAX_QUOTAS {
            b.set(req(&format!("n{i}")), quota(1), &cores(0)).unwrap();
        }
        let d = b.set(req("one-more"), quota(1), &cores(0)).unwrap_err();
        assert_eq!(
            d.message,
            "this owner already has 10000 local quotas, the most it keeps; remove one first"
        );
        b.set(req("n0"), quota(2), &cores(0)).unwrap();
        for i in 0..MAX_QUOTAS {
            b.set_swarm(req(&format!("n{i}")), cap_cores(1), &cores(0))
                .unwrap();
        }
        let d = b
            .set_swarm(req("one-more"), cap_cores(1), &cores(0))
            .unwrap_err();
        assert_eq!(
            d.message,
            "this owner already has 10000 swarm-wide quotas, the most it keeps; remove one first"
        );
        b.set_swarm(req("n0"), cap_cores(2), &cores(0)).unwrap();
    }

    #[test]
    fn set_swarm_refuses_groups_and_malformed_limits() {
        let mut b = QuotaBook::new();
        let d = b.set_swarm(grp("G"), cap_cores(4), &cores(0)).unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert_eq!(
            d.message,
            "swarm-wide quotas are per requester or default; group G cannot have one \
             (give the group a local quota instead)"
        );
        let d = b.set_swarm(req(""), cap_cores(4), &cores(0)).unwrap_err();
        assert_eq!(d.message, "a quota subject's node id must not be empty");
        let empty_key = Limits {
            custom: [(String::new(), 1)].into_iter().collect(),
            ..Limits::default()
        };
        let d = b.set_swarm(req("X"), empty_key, &cores(0)).unwrap_err();
        assert_eq!(
            d.message,
            "the swarm-wide limits cap a custom resource with an empty name"
        );
        assert!(b.is_empty());
        b.set_swarm(req("X"), cap_cores(6), &cores(6)).unwrap();
        assert_eq!(b.get_swarm(&req("X")), Some(&cap_cores(6)));
    }

    #[test]
    fn list_remove_and_remove_swarm() {
        let mut b = QuotaBook::new();
        b.set(grp("G"), quota(3), &cores(0)).unwrap();
        b.set(req("B"), quota(2), &cores(0)).unwrap();
        b.set(Subject::Default, quota(1), &cores(0)).unwrap();
        b.set(req("B"), quota(5), &cores(0)).unwrap();
        b.set_swarm(req("A"), cap_cores(9), &cores(0)).unwrap();
        let (local, swarm) = b.list();
        assert_eq!(
            local,
            vec![
                (Subject::Default, quota(1)),
                (req("B"), quota(5)),
                (grp("G"), quota(3))
            ]
        );
        assert_eq!(swarm, vec![(req("A"), cap_cores(9))]);
        assert!(b.remove(&req("B")));
        assert!(!b.remove(&req("B")));
        assert!(!b.remove_swarm(&req("B")));
        assert!(b.remove_swarm(&req("A")));
        assert!(!b.remove_swarm(&req("A")));
        assert_eq!(b.list().1, vec![]);
    }

    // ----- check -----

    #[test]
    fn no_quota_admits_anything() {
        let b = QuotaBook::new();
        let huge = Usage {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
            ..Usage::default()
        };
        check(
            &b,
            "r",
            &["g"],
            &huge,
            &[(req("r"), huge.clone())],
            &huge,
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn own_quota_caps_usage_here() {
        let mut b = QuotaBook::new();
        b.set(req("r"), quota(4), &cores(0)).unwrap();
        let here = [(req("r"), cores(3))];
        check(&b, "r", &[], &cores(1), &here, &Usage::default(), NOW).unwrap();
        let m = msg(
            check(&b, "r", &[], &cores(2), &here, &Usage::default(), NOW),
            DenyReason::QuotaExceeded,
        );
        assert_eq!(
            m,
            "quota of requester r here: this grant would bring cpu_cores to 5, over the cap of 4"
        );
        // Others are not capped by r's quota.
        check(&b, "s", &[], &cores(100), &here, &Usage::default(), NOW).unwrap();
    }

    #[test]
    fn own_quota_overrides_the_default() {
        let mut b = QuotaBook::new();
        b.set(Subject::Default, quota(2), &cores(0)).unwrap();
        b.set(req("big"), quota(10), &cores(0)).unwrap();
        check(&b, "big", &[], &cores(8), &[], &Usage::default(), NOW).unwrap();
        let m = msg(
            check(&b, "small", &[], &cores(3), &[], &Usage::default(), NOW),
            DenyReason::QuotaExceeded,
        );
        assert_eq!(
            m,
            "default quota here (applied to requester small): this grant would bring \
             cpu_cores to 3, over the cap of 2"
        );
        // The default caps each requester on its own, not their sum.
        let here = [(req("a"), cores(2)), (req("b"), cores(0))];
        check(&b, "b", &[], &cores(2), &here, &Usage::default(), NOW).unwrap();
        assert_eq!(
            b.quota_for(&n("small")),
            Some((Subject::Default, &quota(2)))
        );
        assert_eq!(b.quota_for(&n("big")), Some((req("big"), &quota(10))));
    }

    #[test]
    fn group_quotas_cap_the_members_sum() {
        let mut b = QuotaBook::new();
        b.set(grp("g1"), quota(5), &cores(0)).unwrap();
        b.set(grp("g2"), quota(100), &cores(0)).unwrap();
        let here = [(grp("g1"), cores(4)), (grp("g2"), cores(4))];
        check(
            &b,
            "r",
            &["g2", "g1"],
            &cores(1),
            &here,
            &Usage::default(),
            NOW,
        )
        .unwrap();
        let m = msg(
            check(
                &b,
                "r",
                &["g2", "g1", "g1"],
                &cores(2),
                &here,
                &Usage::default(),
                NOW,
            ),
            DenyReason::QuotaExceeded,
        );
        assert_eq!(
            m,
            "quota of group g1 here (requester r is a member): this grant would bring \
             cpu_cores to 6, over the cap of 5"
        );
        // Only the groups the requester is in apply; groups without a quota
        // are ignored.
        check(
            &b,
            "r",
            &["g2", "g3"],
            &cores(2),
            &here,
            &Usage::default(),
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn requester_quota_is_checked_before_groups() {
        let mut b = QuotaBook::new();
        b.set(req("r"), quota(1), &cores(0)).unwrap();
        b.set(grp("g"), quota(1), &cores(0)).unwrap();
        let m = msg(
            check(&b, "r", &["g"], &cores(2), &[], &Usage::default(), NOW),
            DenyReason::QuotaExceeded,
        );
        assert!(m.starts_with("quota of requester r here"), "{m}");
    }

    #[test]
    fn only_dimensions_the_grant_adds_to_are_checked() {
        let mut b = QuotaBook::new();
        let q = Quota {
            limits: Limits {
                cpu_cores: Some(4),
                memory_mb: Some(1000),
                ..Limits::default()
            },
            burst: None,
        };
        b.set(req("r"), q, &cores(0)).unwrap();
        // Already over in cpu (e.g. a burst that ran out under an older
        // quota); memory is still grantable, cpu is not.
        let here = [(req("r"), cores(6))];
        let mem = Usage {
            memory_mb: 1000,
            ..Usage::default()
        };
        check(&b, "r", &[], &mem, &here, &Usage::default(), NOW).unwrap();
        let m = msg(
            check(&b, "r", &[], &cores(1), &here, &Usage::default(), NOW),
            DenyReason::QuotaExceeded,
        );
        assert!(m.contains("cpu_cores to 7, over the cap of 4"), "{m}");
        let mem = Usage {
            memory_mb: 1001,
            ..Usage::default()
        };
        let m = msg(
            check(&b, "r", &[], &mem, &here, &Usage::default(), NOW),
            DenyReason::QuotaExceeded,
        );
        assert!(
            m.ends_with("memory_mb to 1001, over the cap of 1000"),
            "{m}"
        );
        // Nothing asked, nothing checked.
        check(
            &b,
            "r",
            &[],
            &Usage::default(),
            &here,
            &Usage::default(),
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn every_dimension_is_capped() {
        let mut b = QuotaBook::new();
        let limits = Limits {
            cpu_cores: Some(1),
            memory_mb: Some(1),
            disk_mb: Some(1),
            gpus: Some(1),
            gpu_memory_mb: Some(1),
            custom: [("api".to_string(), 1)].into_iter().collect(),
        };
        b.set(
            req("r"),
            Quota {
                limits,
                burst: None,
            },
            &cores(0),
        )
        .unwrap();
        let cases: [(&str, Usage); 6] = [
            ("cpu_cores", cores(2)),
            (
                "memory_mb",
                Usage {
                    memory_mb: 2,
                    ..Usage::default()
                },
            ),
            (
                "disk_mb",
                Usage {
                    disk_mb: 2,
                    ..Usage::default()
                },
            ),
            (
                "gpus",
                Usage {
                    gpus: 2,
                    ..Usage::default()
                },
            ),
            (
                "gpu_memory_mb",
                Usage {
                    gpu_memory_mb: 2,
                    ..Usage::default()
                },
            ),
            (
                "custom.api",
                Usage {
                    custom: [("api".to_string(), 2)].into_iter().collect(),
                    ..Usage::default()
                },
            ),
        ];
        for (dim, add) in cases {
            let m = msg(
                check(&b, "r", &[], &add, &[], &Usage::default(), NOW),
                DenyReason::QuotaExceeded,
            );
            assert!(
                m.ends_with(&format!("{dim} to 2, over the cap of 1")),
                "{m}"
            );
        }
        // A custom resource the quota does not name is unlimited.
        let other = Usage {
            custom: [("other".to_string(), 1_000)].into_iter().collect(),
            ..Usage::default()
        };
        check(&b, "r", &[], &other, &[], &Usage::default(), NOW).unwrap();
    }

    #[test]
    fn burst_is_allowed_until_its_window_closes() {
        let mut b = QuotaBook::new();
        b.set(req("r"), bursty(4, 8, 60), &cores(0)).unwrap();
        let none = Usage::default();
        // Never seen over the base: the window is open.
        check(&b, "r", &[], &cores(8), &[], &none, NOW).unwrap();
        let m = msg(
            check(&b, "r", &[], &cores(9), &[], &none, NOW),
            DenyReason::QuotaExceeded,
        );
        assert_eq!(
            m,
            "quota of requester r here: this grant would bring cpu_cores to 9, \
             over the burst cap of 8 (base cap 4)"
        );
        // Granted 6 at NOW: over the base from then on.
        b.observe(&req("r"), &cores(6), NOW);
        assert_eq!(b.over_since(&req("r")), Some(NOW));
        let here = [(req("r"), cores(6))];
        check(&b, "r", &[], &cores(2), &here, &none, NOW + 59_999).unwrap();
        let m = msg(
            check(&b, "r", &[], &cores(1), &here, &none, NOW + 60_000),
            DenyReason::QuotaExceeded,
        );
        assert_eq!(
            m,
            "quota of requester r here: this grant would bring cpu_cores to 7, over the cap of 4; \
             the burst allowance (up to 8 for 60 s) is used up: over the base since 1000000 ms, \
             60 s ago"
        );
        // Within the base is always fine, even after the window.
        check(
            &b,
            "r",
            &[],
            &cores(1),
            &[(req("r"), cores(3))],
            &none,
            NOW + 600_000,
        )
        .unwrap();
        // A clock that goes backwards keeps the window open.
        check(&b, "r", &[], &cores(1), &here, &none, NOW - 5).unwrap();
    }

    #[test]
    fn observe_keeps_the_first_time_and_resets_when_back_within_base() {
        let mut b = QuotaBook::new();
        b.set(req("r"), bursty(4, 8, 60), &cores(0)).unwrap();
        b.observe(&req("r"), &cores(4), NOW);
        assert_eq!(b.over_since(&req("r")), None, "at the cap is within it");
        b.observe(&req("r"), &cores(5), NOW);
        b.observe(&req("r"), &cores(7), NOW + 10_000);
        assert_eq!(b.over_since(&req("r")), Some(NOW), "the first time is kept");
        b.observe(&req("r"), &cores(4), NOW + 20_000);
        assert_eq!(b.over_since(&req("r")), None);
        // A new burst gets a full window.
        b.observe(&req("r"), &cores(5), NOW + 30_000);
        assert_eq!(b.over_since(&req("r")), Some(NOW + 30_000));
        // Subjects without an applicable quota, and the default itself,
        // have no timer.
        b.observe(&req("s"), &cores(100), NOW);
        b.observe(&grp("g"), &cores(100), NOW);
        b.observe(&Subject::Default, &cores(100), NOW);
        assert_eq!(b.snapshot().over_since.len(), 1);
    }

    #[test]
    fn default_and_group_quotas_have_their_own_burst_timers() {
        let mut b = QuotaBook::new();
        b.set(Subject::Default, bursty(2, 4, 10), &cores(0))
            .unwrap();
        b.set(grp("g"), bursty(10, 20, 10), &cores(0)).unwrap();
        b.observe(&req("a"), &cores(3), NOW);
        b.observe(&grp("g"), &cores(11), NOW);
        assert_eq!(b.over_since(&req("a")), Some(NOW));
        assert_eq!(b.over_since(&req("b")), None);
        let later = NOW + 10_000;
        let here = [
            (req("a"), cores(3)),
            (req("b"), cores(0)),
            (grp("g"), cores(11)),
        ];
        let none = Usage::default();
        // a's burst ran out; b's has not started.
        let m = msg(
            check(&b, "a", &[], &cores(1), &here, &none, later),
            DenyReason::QuotaExceeded,
        );
        assert!(
            m.starts_with("default quota here (applied to requester a)"),
            "{m}"
        );
        assert!(m.contains("is used up"), "{m}");
        check(&b, "b", &[], &cores(3), &here, &none, later).unwrap();
        // g's burst ran out too.
        let m = msg(
            check(&b, "b", &["g"], &cores(1), &here, &none, later),
            DenyReason::QuotaExceeded,
        );
        assert!(
            m.starts_with("quota of group g here (requester b is a member)"),
            "{m}"
        );
        assert!(m.contains("cpu_cores to 12, over the cap of 10; the burst allowance (up to 20 for 10 s) is used up"), "{m}");
    }

    #[test]
    fn set_and_remove_tidy_burst_timers() {
        let mut b = QuotaBook::new();
        b.set(req("r"), bursty(4, 8, 60), &cores(0)).unwrap();
        b.set(grp("g"), bursty(4, 8, 60), &cores(0)).unwrap();
        b.observe(&req("r"), &cores(6), NOW);
        b.observe(&grp("g"), &cores(6), NOW);
        // Still over the new base: the timer keeps running.
        b.set(req("r"), bursty(5, 8, 60), &cores(6)).unwrap();
        assert_eq!(b.over_since(&req("r")), Some(NOW));
        // Within the new base: cleared.
        b.set(req("r"), bursty(6, 8, 60), &cores(6)).unwrap();
        assert_eq!(b.over_since(&req("r")), None);
        b.observe(&req("r"), &cores(7), NOW);
        // Removing a group quota drops its timer.
        assert!(b.remove(&grp("g")));
        assert_eq!(b.over_since(&grp("g")), None);
        // Removing r's own quota keeps its timer only while a default applies.
        b.set(Subject::Default, bursty(1, 8, 60), &cores(7))
            .unwrap();
        assert!(b.remove(&req("r")));
        assert_eq!(b.over_since(&req("r")), Some(NOW));
        b.set(req("r"), bursty(4, 8, 60), &cores(7)).unwrap();
        assert!(b.remove(&Subject::Default));
        assert_eq!(b.over_since(&req("r")), Some(NOW), "r has its own quota");
        assert!(b.remove(&req("r")));
        assert_eq!(b.over_since(&req("r")), None);
        assert!(b.is_empty());
    }

    #[test]
    fn swarm_quota_counts_here_elsewhere_and_the_grant() {
        let mut b = QuotaBook::new();
        b.set_swarm(req("r"), cap_cores(10), &cores(0)).unwrap();
        b.set_swarm(Subject::Default, cap_cores(2), &cores(0))
            .unwrap();
        let here = [(req("r"), cores(3)), (req("s"), cores(1))];
        check(&b, "r", &[], &cores(2), &here, &cores(5), NOW).unwrap();
        let m = msg(
            check(&b, "r", &[], &cores(3), &here, &cores(5), NOW),
            DenyReason::QuotaExceeded,
        );
        assert_eq!(
            m,
            "swarm-wide quota of requester r: this grant would bring cpu_cores to 11 across \
             the swarm (3 here, 5 elsewhere as last announced, 3 in this grant), over the cap of 10"
        );
        let m = msg(
            check(&b, "s", &[], &cores(1), &here, &cores(1), NOW),
            DenyReason::QuotaExceeded,
        );
        assert!(
            m.starts_with("default swarm-wide quota (applied to requester s): this grant would bring cpu_cores to 3"),
            "{m}"
        );
        assert_eq!(
            b.swarm_limits_for(&n("s")),
            Some((Subject::Default, &cap_cores(2)))
        );
        // Dimensions the grant does not add to are not checked.
        let mem = Usage {
            memory_mb: 10,
            ..Usage::default()
        };
        check(&b, "s", &[], &mem, &here, &cores(100), NOW).unwrap();
        // A local quota is checked first.
        b.set(req("r"), quota(3), &cores(3)).unwrap();
        let m = msg(
            check(&b, "r", &[], &cores(3), &here, &cores(5), NOW),
            DenyReason::QuotaExceeded,
        );
        assert!(m.starts_with("quota of requester r here"), "{m}");
    }

    #[test]
    fn check_does_not_ask_for_usage_it_does_not_need() {
        let mut b = QuotaBook::new();
        b.set(grp("g"), quota(5), &cores(0)).unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        b.check(
            &n("r"),
            &[GroupId::from("g"), GroupId::from("h")],
            &cores(1),
            |s| {
                asked.borrow_mut().push(s.clone());
                Usage::default()
            },
            &Usage::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(asked.into_inner(), vec![grp("g")]);
    }

    #[test]
    fn check_saturates_instead_of_overflowing() {
        let mut b = QuotaBook::new();
        b.set(req("r"), quota(u32::MAX - 1), &cores(0)).unwrap();
        b.set_swarm(req("r"), cap_cores(u32::MAX - 1), &cores(0))
            .unwrap();
        let here = [(req("r"), cores(u32::MAX))];
        let m = msg(
            check(
                &b,
                "r",
                &[],
                &cores(u32::MAX),
                &here,
                &cores(u32::MAX),
                u64::MAX,
            ),
            DenyReason::QuotaExceeded,
        );
        assert!(m.contains(&format!("to {}", u32::MAX)), "{m}");
        // A burst of a day at the end of time does not overflow either.
        b.set(req("s"), bursty(1, 2, MAX_BURST_SECS), &cores(0))
            .unwrap();
        b.observe(&req("s"), &cores(2), u64::MAX - 1);
        check(
            &b,
            "s",
            &[],
            &cores(1),
            &[(req("s"), cores(1))],
            &Usage::default(),
            u64::MAX,
        )
        .unwrap();
    }

    // ----- snapshot -----

    fn sample_book() -> QuotaBook {
        let mut b = QuotaBook::new();
        b.set(Subject::Default, bursty(2, 4, 30), &cores(0))
            .unwrap();
        b.set(req("r"), bursty(4, 8, 60), &cores(0)).unwrap();
        b.set(grp("g"), quota(10), &cores(0)).unwrap();
        b.set_swarm(req("r"), cap_cores(16), &cores(0)).unwrap();
        b.set_swarm(Subject::Default, Limits::default(), &cores(0))
            .unwrap();
        b.observe(&req("r"), &cores(5), NOW);
        b.observe(&req("a"), &cores(3), NOW + 1);
        b
    }

    #[test]
    fn snapshot_round_trips_through_json_and_postcard() {
        let b = sample_book();
        let s = b.snapshot();
        assert_eq!(s.over_since.len(), 2);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"node:r\""), "{json}");
        let back: QuotaSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(QuotaBook::restore(back), b);
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: QuotaSnapshot = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(QuotaBook::restore(back), b);
        assert_eq!(
            QuotaBook::restore(QuotaSnapshot::default()),
            QuotaBook::new()
        );
    }

    #[test]
    fn restore_drops_what_set_would_refuse() {
        let mut s = sample_book().snapshot();
        s.local.insert(req(""), quota(1));
        s.local.insert(req("bad-burst"), bursty(4, 2, 60));
        s.swarm.insert(grp("g"), cap_cores(1));
        s.over_since.insert(Subject::Default, 1);
        s.over_since.insert(grp("no-quota"), 1);
        let b = QuotaBook::restore(s);
        assert_eq!(b, sample_book());
        // A requester's timer needs its own quota or a default.
        let mut s = QuotaSnapshot::default();
        s.over_since.insert(req("x"), 1);
        assert_eq!(QuotaBook::restore(s), QuotaBook::new());
    }

    // ----- overshoot -----

    #[test]
    fn overshoot_bound_is_n_minus_one_times_the_grant() {
        let g = Usage {
            cpu_cores: 4,
            memory_mb: 1024,
            disk_mb: 10,
            gpus: 1,
            gpu_memory_mb: 80,
            custom: [("api".to_string(), 3)].into_iter().collect(),
        };
        assert!(overshoot_bound(0, &g).is_zero());
        assert!(overshoot_bound(1, &g).is_zero());
        let b = overshoot_bound(3, &g);
        assert_eq!(
            b,
            Usage {
                cpu_cores: 8,
                memory_mb: 2048,
                disk_mb: 20,
                gpus: 2,
                gpu_memory_mb: 160,
                custom: [("api".to_string(), 6)].into_iter().collect(),
            }
        );
        let big = overshoot_bound(
            u32::MAX,
            &Usage {
                cpu_cores: u32::MAX,
                memory_mb: u64::MAX,
                ..Usage::default()
            },
        );
        assert_eq!(big.cpu_cores, u32::MAX);
        assert_eq!(big.memory_mb, u64::MAX);
    }

    #[test]
    fn overshoot_bound_is_reached() {
        // Three owners have all heard the requester holds 2 of its cap of 4
        // (1 at a, 1 at b, 0 at c), and each grants 2 at once.
        let mut b = QuotaBook::new();
        b.set_swarm(req("r"), cap_cores(4), &cores(2)).unwrap();
        let held = [1u32, 1, 0];
        let mut total = 2;
        for (i, mine) in held.iter().enumerate() {
            let elsewhere: u32 = held
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, h)| h)
                .sum();
            check(
                &b,
                "r",
                &[],
                &cores(2),
                &[(req("r"), cores(*mine))],
                &cores(elsewhere),
                NOW,
            )
            .unwrap();
            total += 2;
        }
        assert_eq!(total, 4 + overshoot_bound(3, &cores(2)).cpu_cores);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const REQUESTERS: [&str; 3] = ["r0", "r1", "r2"];
        const GROUPS: [&str; 2] = ["g0", "g1"];

        fn arb_usage() -> impl Strategy<Value = Usage> {
            (
                0u32..10,
                0u64..10,
                0u64..10,
                0u32..4,
                0u64..10,
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u64..10, 0..=2),
            )
                .prop_map(
                    |(cpu_cores, memory_mb, disk_mb, gpus, gpu_memory_mb, custom)| Usage {
                        cpu_cores,
                        memory_mb,
                        disk_mb,
                        gpus,
                        gpu_memory_mb,
                        custom: custom
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    },
                )
        }

        fn arb_limits() -> impl Strategy<Value = Limits> {
            (
                prop::option::of(0u32..12),
                prop::option::of(0u64..12),
                prop::option::of(0u64..12),
                prop::option::of(0u32..5),
                prop::option::of(0u64..12),
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u64..12, 0..=2),
            )
                .prop_map(
                    |(cpu_cores, memory_mb, disk_mb, gpus, gpu_memory_mb, custom)| Limits {
                        cpu_cores,
                        memory_mb,
                        disk_mb,
                        gpus,
                        gpu_memory_mb,
                        custom: custom
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    },
                )
        }

        /// A valid quota: burst caps only where the base caps, each at
        /// least the base.
        fn arb_quota() -> impl Strategy<Value = Quota> {
            (
                arb_limits(),
                prop::option::of((prop::collection::vec(prop::option::of(0u64..6), 7), 1u64..5)),
            )
                .prop_map(|(limits, burst)| {
                    let burst = burst.map(|(extra, secs)| {
                        let up32 =
                            |b: Option<u32>, e: Option<u64>| b.zip(e).map(|(b, e)| b + e as u32);
                        let up = |b: Option<u64>, e: Option<u64>| b.zip(e).map(|(b, e)| b + e);
                        Burst {
                            limits: Limits {
                                cpu_cores: up32(limits.cpu_cores, extra[0]),
                                memory_mb: up(limits.memory_mb, extra[1]),
                                disk_mb: up(limits.disk_mb, extra[2]),
                                gpus: up32(limits.gpus, extra[3]),
                                gpu_memory_mb: up(limits.gpu_memory_mb, extra[4]),
                                custom: limits
                                    .custom
                                    .iter()
                                    .filter_map(|(k, v)| {
                                        let e = if k == "a" { extra[5] } else { extra[6] };
                                        e.map(|e| (k.clone(), v + e))
                                    })
                                    .collect(),
                            },
                            secs,
                        }
                    });
                    Quota { limits, burst }
                })
        }

        /// Any quota, valid or not.
        fn arb_any_quota() -> impl Strategy<Value = Quota> {
            prop_oneof![
                3 => arb_quota(),
                1 => (arb_limits(), arb_limits(), prop_oneof![Just(0u64), 1u64..5, Just(MAX_BURST_SECS + 1)])
                    .prop_map(|(limits, bl, secs)| Quota { limits, burst: Some(Burst { limits: bl, secs }) }),
            ]
        }

        fn arb_subject() -> impl Strategy<Value = Subject> {
            prop_oneof![
                Just(Subject::Default),
                prop::sample::select(REQUESTERS.to_vec()).prop_map(req),
                prop::sample::select(GROUPS.to_vec()).prop_map(grp),
            ]
        }

        /// Quotas, set through `set` with no current use, then burst timers
        /// made by `observe`.
        #[derive(Clone, Debug)]
        struct Setup {
            local: Vec<(Subject, Quota)>,
            swarm: Vec<(Subject, Limits)>,
            observed: Vec<(Subject, Usage, u64)>,
        }

        fn arb_setup() -> impl Strategy<Value = Setup> {
            (
                prop::collection::vec((arb_subject(), arb_quota()), 0..6),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just(Subject::Default),
                            prop::sample::select(REQUESTERS.to_vec()).prop_map(req)
                        ],
                        arb_limits(),
                    ),
                    0..3,
                ),
                prop::collection::vec((arb_subject(), arb_usage(), 0u64..20_000), 0..8),
            )
                .prop_map(|(local, swarm, observed)| Setup {
                    local,
                    swarm,
                    observed,
                })
        }

        fn build(s: &Setup) -> QuotaBook {
            let mut b = QuotaBook::new();
            for (sub, q) in &s.local {
                b.set(sub.clone(), q.clone(), &Usage::default()).unwrap();
            }
            for (sub, l) in &s.swarm {
                b.set_swarm(sub.clone(), l.clone(), &Usage::default())
                    .unwrap();
            }
            for (sub, u, t) in &s.observed {
                b.observe(sub, u, *t);
            }
            b
        }

        /// The most `dim` may reach under `quota` for a subject whose timer
        /// is `since`, by the documented rule, written out independently.
        fn allowed(quota: &Quota, dim: Dim<'_>, since: Option<u64>, now: u64) -> Option<u64> {
            let base = quota.limits.cap(dim)?;
            let Some(burst) = &quota.burst else {
                return Some(base);
            };
            let open = match since {
                None => true,
                Some(t) => now < t || now - t < burst.secs * 1000,
            };
            match burst.limits.cap(dim) {
                Some(c) if open => Some(c.max(base)),
                _ => Some(base),
            }
        }

        fn dims(add: &Usage) -> Vec<Dim<'_>> {
            let mut v = vec![Dim::Cpu, Dim::Memory, Dim::Disk, Dim::Gpus, Dim::GpuMemory];
            v.extend(add.custom.keys().map(|k| Dim::Custom(k)));
            v
        }

        /// Whether the grant keeps every quota, by the rule.
        #[allow(clippy::too_many_arguments)]
        fn oracle(
            b: &QuotaBook,
            r: &str,
            groups: &[&str],
            add: &Usage,
            here: &BTreeMap<Subject, Usage>,
            swarm: &Usage,
            now: u64,
        ) -> bool {
            let get = |s: &Subject| here.get(s).cloned().unwrap_or_default();
            let mut applicable: Vec<(Subject, Quota)> = Vec::new();
            let own = b.get(&req(r)).or_else(|| b.get(&Subject::Default));
            if let Some(q) = own {
                applicable.push((req(r), q.clone()));
            }
            for g in groups {
                if let Some(q) = b.get(&grp(g)) {
                    applicable.push((grp(g), q.clone()));
                }
            }
            for (sub, q) in &applicable {
                let would = plus(&get(sub), add);
                for d in dims(add) {
                    if d.of(add) == 0 {
                        continue;
                    }
                    if let Some(max) = allowed(q, d, b.over_since(sub), now) {
                        if d.of(&would) > max {
                            return false;
                        }
                    }
                }
            }
            let sw = b
                .get_swarm(&req(r))
                .or_else(|| b.get_swarm(&Subject::Default));
            if let Some(l) = sw {
                let would = plus(&plus(swarm, &get(&req(r))), add);
                for d in dims(add) {
                    if d.of(add) > 0 && l.cap(d).is_some_and(|c| d.of(&would) > c) {
                        return false;
                    }
                }
            }
            true
        }

        fn arb_here() -> impl Strategy<Value = BTreeMap<Subject, Usage>> {
            prop::collection::btree_map(arb_subject(), arb_usage(), 0..6)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// (a) `check` admits exactly the grants that keep every
            /// applicable cap: the burst cap while the window is open, the
            /// base cap otherwise, and the swarm-wide cap.
            #[test]
            fn check_never_admits_beyond_the_caps(
                setup in arb_setup(),
                r in prop::sample::select(REQUESTERS.to_vec()),
                groups in prop::collection::vec(prop::sample::select(GROUPS.to_vec()), 0..3),
                add in arb_usage(),
                here in arb_here(),
                swarm in arb_usage(),
                now in 0u64..30_000,
            ) {
                let b = build(&setup);
                let before = b.clone();
                let got = check(&b, r, &groups, &add, &here.clone().into_iter().collect::<Vec<_>>(), &swarm, now);
                prop_assert_eq!(&b, &before, "check changed the book");
                let want = oracle(&b, r, &groups, &add, &here, &swarm, now);
                prop_assert_eq!(got.is_ok(), want, "{:?}", got);
                if let Err(d) = got {
                    prop_assert_eq!(d.reason, DenyReason::QuotaExceeded);
                }
            }

            /// (b) With no quotas at all, every grant is admitted.
            #[test]
            fn no_quotas_admit_everything(
                r in prop::sample::select(REQUESTERS.to_vec()),
                groups in prop::collection::vec(prop::sample::select(GROUPS.to_vec()), 0..3),
                add in arb_usage(),
                here in arb_here(),
                swarm in arb_usage(),
                observed in prop::collection::vec((arb_subject(), arb_usage(), any::<u64>()), 0..4),
                now in any::<u64>(),
            ) {
                let mut b = QuotaBook::new();
                for (s, u, t) in &observed {
                    b.observe(s, u, *t);
                }
                prop_assert!(b.snapshot().over_since.is_empty());
                let here: Vec<_> = here.into_iter().collect();
                prop_assert!(check(&b, r, &groups, &add, &here, &swarm, now).is_ok());
            }

            /// (c) `set` refuses exactly the malformed quotas (and, on a
            /// book without a tree, nothing else: a cap below current use
            /// is accepted), and then changes nothing. `set_swarm`
            /// likewise, and refuses groups.
            #[test]
            fn set_refuses_exactly_the_malformed_quotas(
                setup in arb_setup(),
                subject in arb_subject(),
                q in arb_any_quota(),
                l in arb_limits(),
                current in arb_usage(),
            ) {
                let mut b = build(&setup);
                let before = b.clone();
                let valid = validate_quota(&q).is_ok();
                let ceiling = match &q.burst {
                    Some(burst) => ceiling(&q.limits, &burst.limits),
                    None => q.limits.clone(),
                };
                let _ = ceiling;
                let over = false;
                match b.set(subject.clone(), q.clone(), &current) {
                    Ok(()) => {
                        prop_assert!(valid && !over);
                        prop_assert_eq!(b.get(&subject), Some(&q));
                    }
                    Err(d) => {
                        prop_assert!(!valid || over);
                        prop_assert_eq!(d.reason, DenyReason::BadRequest);
                        prop_assert_eq!(&b, &before);
                    }
                }
                let before = b.clone();
                let over = false;
                let group = matches!(subject, Subject::Group(_));
                match b.set_swarm(subject.clone(), l.clone(), &current) {
                    Ok(()) => {
                        prop_assert!(!group && !over);
                        prop_assert_eq!(b.get_swarm(&subject), Some(&l));
                    }
                    Err(d) => {
                        prop_assert!(group || over);
                        prop_assert_eq!(d.reason, DenyReason::BadRequest);
                        prop_assert_eq!(&b, &before);
                    }
                }
            }

            /// (e) The quota tree: after any sequence of placements,
            /// changes and removals (refused or not), every link joins two
            /// quotas that exist, there is no cycle, no child caps any
            /// dimension (base or burst) above its parent, and the
            /// effective caps of a child are never above its parent's
            /// effective caps.
            #[test]
            fn no_child_quota_ever_exceeds_its_parent(
                ops in prop::collection::vec(
                    (0usize..6, prop::option::of(0u32..10), prop::option::of(0usize..4), any::<bool>()),
                    1..40,
                ),
            ) {
                let subjects = [grp("a"), grp("b"), grp("c"), grp("d"), req("X"), req("Y")];
                let mut b = QuotaBook::new();
                for (who, cap, parent, remove) in ops {
                    let s = subjects[who].clone();
                    if remove {
                        b.remove(&s);
                    } else {
                        let q = Quota {
                            limits: Limits { cpu_cores: cap, ..Limits::default() },
                            burst: None,
                        };
                        let before = b.clone();
                        if b.set_with_parent(s, q, parent.map(|i| subjects[i].clone()), &cores(0)).is_err() {
                            prop_assert_eq!(&b, &before);
                        }
                    }
                    for (c, p) in b.parents() {
                        let cq = b.get(&c).cloned();
                        let pq = b.get(&p).cloned();
                        prop_assert!(cq.is_some() && pq.is_some(), "dangling link {c} -> {p}");
                        let (cq, pq) = (cq.unwrap_or_default(), pq.unwrap_or_default());
                        prop_assert!(over_parent(&cq.limits, &pq.limits).is_none(), "{c} over {p}");
                        let mut at = p.clone();
                        for _ in 0..=subjects.len() {
                            prop_assert!(at != c, "cycle through {c}");
                            match b.parent(&at) {
                                Some(n) => at = n.clone(),
                                None => break,
                            }
                        }
                        let ce = b.effective(&c).unwrap_or_default();
                        let pe = b.effective(&p).unwrap_or_default();
                        prop_assert!(over_parent(&ce.limits, &pe.limits).is_none());
                        if let Some(pc) = pe.limits.cpu_cores {
                            prop_assert!(ce.limits.cpu_cores.is_some_and(|x| x <= pc));
                        }
                    }
                }
            }

            /// (d) Snapshot and restore round-trip, also through JSON and
            /// postcard, after any mix of sets, removals and observations.
            #[test]
            fn snapshot_restore_round_trips(
                setup in arb_setup(),
                removed in prop::collection::vec(arb_subject(), 0..3),
            ) {
                let mut b = build(&setup);
                for s in &removed {
                    b.remove(s);
                    b.remove_swarm(s);
                }
                let s = b.snapshot();
                prop_assert_eq!(&QuotaBook::restore(s.clone()), &b);
                let json = serde_json::to_string(&s).unwrap();
                let back: QuotaSnapshot = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(&QuotaBook::restore(back), &b);
                let bytes = postcard::to_allocvec(&s).unwrap();
                let back: QuotaSnapshot = postcard::from_bytes(&bytes).unwrap();
                prop_assert_eq!(&QuotaBook::restore(back), &b);
            }

            /// One requester, grants and releases over time with `observe`
            /// after each: usage is above the base only within `secs` of
            /// when it last went above it, never above the burst cap, and
            /// never grows while above the base once the window has closed.
            #[test]
            fn bursts_last_at_most_secs(
                base in 0u32..6,
                extra in 0u32..6,
                secs in 1u64..5,
                steps in prop::collection::vec((any::<bool>(), 1u32..4, 0u64..3_000), 1..60),
            ) {
                let mut b = QuotaBook::new();
                b.set(req("r"), bursty(base, base + extra, secs), &cores(0)).unwrap();
                let mut held: Vec<u32> = Vec::new();
                let mut now = 0u64;
                let mut went_over: Option<u64> = None;
                for (grant, amount, dt) in steps {
                    now += dt;
                    let used: u32 = held.iter().sum();
                    if grant {
                        let here = [(req("r"), cores(used))];
                        if check(&b, "r", &[], &cores(amount), &here, &Usage::default(), now).is_ok() {
                            let after = used + amount;
                            prop_assert!(after <= base + extra);
                            if after > base {
                                let since = went_over.unwrap_or(now);
                                prop_assert!(now - since < secs * 1000,
                                    "grew to {} at {} ms, over the base since {} ms", after, now, since);
                            }
                            held.push(amount);
                        }
                    } else if !held.is_empty() {
                        held.remove(0);
                    }
                    let used: u32 = held.iter().sum();
                    if used > base {
                        went_over.get_or_insert(now);
                    } else {
                        went_over = None;
                    }
                    b.observe(&req("r"), &cores(used), now);
                    prop_assert_eq!(b.over_since(&req("r")), went_over);
                }
            }

            /// `n` owners with a swarm-wide cap, each checking against the
            /// others' usage as announced at the start of each gossip round
            /// and granting at most one lease of at most `g` per round, never
            /// take the total beyond `cap + overshoot_bound(n, g)`; with any
            /// number of grants per round, never beyond `n * cap`.
            #[test]
            fn swarm_overshoot_stays_within_the_bound(
                n in 1usize..5,
                cap in 0u32..20,
                g in 1u32..6,
                one_per_round in any::<bool>(),
                rounds in prop::collection::vec(
                    prop::collection::vec((0usize..5, 1u32..6, any::<bool>()), 0..12), 1..8),
            ) {
                let mut b = QuotaBook::new();
                b.set_swarm(req("r"), cap_cores(cap), &cores(0)).unwrap();
                let mut held = vec![0u32; n];
                for round in rounds {
                    let announced = held.clone();
                    let mut granted = vec![false; n];
                    for (who, amount, release) in round {
                        let i = who % n;
                        if release {
                            held[i] = held[i].saturating_sub(amount);
                            continue;
                        }
                        let amount = amount.min(g);
                        if one_per_round && granted[i] {
                            continue;
                        }
                        let elsewhere: u32 = announced.iter().enumerate()
                            .filter(|(j, _)| *j != i).map(|(_, h)| h).sum();
                        let here = [(req("r"), cores(held[i]))];
                        if check(&b, "r", &[], &cores(amount), &here, &cores(elsewhere), 0).is_ok() {
                            held[i] += amount;
                            granted[i] = true;
                        }
                        let total: u32 = held.iter().sum();
                        let n32 = n as u32;
                        prop_assert!(total <= n32 * cap);
                        if one_per_round {
                            prop_assert!(total <= cap + overshoot_bound(n32, &cores(g)).cpu_cores,
                                "total {} with cap {}, {} owners, grants of at most {}", total, cap, n, g);
                        }
                    }
                }
            }
        }
    }
}
