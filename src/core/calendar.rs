//! The owner side: advance reservations.
//!
//! An owner keeps a [`Calendar`] of [`Reservation`]s: resources of *this*
//! node promised to a holder for a future window `[start_ms, end_ms)`
//! (start included, end excluded). The calendar decides every booking in
//! one synchronous step, as the [`crate::core::ledger::Ledger`] decides
//! every lease, so the reservations alive at any instant never add up to
//! more than the node's capacity, in any dimension or on any GPU.
//!
//! It is sans-IO (STYLE.md, "The core is a state machine with no IO"): no
//! clock, no RNG. Time comes in as `now_ms` (milliseconds since the Unix
//! epoch), ids come in from the caller, every map is a `BTreeMap`, and ties
//! are broken by reservation id, so the same inputs always give the same
//! outputs. Arithmetic saturates (sums are kept in `u128` while sweeping,
//! and reported saturated to `u64`/`u32`); no input makes it panic.
//!
//! # Life of a reservation
//!
//! ```text
//!   book ──► Confirmed ──start_due──► Active ──end_due──► Expired
//!               │  │ └────────end_due (window over, never started)──► Expired
//!               │  └─start_due, condition unmet──► Waiting ──condition holds──► Active
//!               │                                   └──end_due──► Unmet
//!               └─cancel──► Cancelled       Active ──cancel──► Released
//! ```
//!
//! *Live* means `Confirmed`, `Waiting` or `Active`: only live reservations
//! hold capacity. `Released`, `Expired`, `Unmet` and `Cancelled` are
//! *finished*: kept for [`Calendar::get`] until [`Calendar::prune`] forgets
//! them (or a booking needs their slot, see [`Calendar::book`]).
//!
//! # Conditional reservations
//!
//! A reservation may carry a [`Condition`]: a named event
//! ([`Calendar::post_event`], by its holder or this node's admin, after the
//! booking), or another reservation of this calendar becoming active. It
//! holds its capacity over its whole window as any reservation does, so that
//! the capacity is there when the condition holds; it becomes `Active` at
//! the first [`Calendar::start_due`] when both its window has begun and its
//! condition has held. Until then, within its window, it is `Waiting`. One
//! whose window ends first is `Unmet`, and so is every reservation waiting
//! on one that finished without becoming active (it never can now). Chains
//! cannot loop: a reservation can only wait on one booked before it.
//!
//! # Pooled reservations
//!
//! A reservation `shared_with` a group makes no lease when it becomes
//! active. Its holder and the group's members draw leases from it instead
//! ([`Calendar::plan_draw`], [`Calendar::record_draw`]), each within what is
//! left of it, on its GPUs. What is left is counted by
//! [`Calendar::peak_pending`], so other leases keep clear of it, and a
//! drawn lease counts once (as the reservation) in a booking.
//!
//! The network shell drives it with timers, as it drives the ledger:
//!
//! 1. Schedule a timer for [`Calendar::next_event`].
//! 2. When it fires, call [`Calendar::end_due`] *first* and end the leases
//!    of the returned reservations (their id is the lease id), then call
//!    [`Calendar::start_due`] and create one lease per returned reservation
//!    with [`Reservation::lease`]: id = reservation id, holder = reserver,
//!    the GPUs assigned at booking, expiring at `end_ms`. Ending before
//!    starting matters when one window ends exactly where another one on
//!    the same resources starts. [`crate::core::ledger::Ledger::restore`]
//!    installs a lease exactly as given (same GPUs) when it fits.
//! 3. Persist [`Calendar::snapshot`] after every change, and hand it to
//!    [`Calendar::restore`] after a restart.
//!
//! # How leases and reservations share the node
//!
//! Bookings see leases: [`Calendar::book`] takes the current leases with
//! the time each may run until (`until_ms`: the lease's hard end, or
//! `u64::MAX` for a lease that may be renewed forever) and counts a lease at
//! every instant before its `until_ms`. Leases see bookings: a new lease
//! that may run until `until_ms` must fit in *free now − reserved*, where
//! *reserved* is [`Calendar::peak_pending`]`(now_ms, until_ms)` (pass it to
//! `Ledger::allocate_reserving`). `peak_pending` counts only `Confirmed`
//! reservations, because an `Active` one already holds its lease and so is
//! already out of *free now*; [`Calendar::peak_reserved`] counts both and
//! would count an active reservation twice. A lease whose id is the id of a
//! live reservation is that reservation's lease: a booking counts it once,
//! as the reservation, and as the lease only for the part of its `until_ms`
//! past the reservation's end.
//!
//! With both rules kept, at every instant from now on the leases still
//! present plus the `Confirmed` reservations overlapping that instant fit
//! in the capacity (the property test `calendar_never_overbooks` checks
//! exactly this), so a reservation is never left without room when its
//! window starts.
//!
//! # What a booking holds
//!
//! A reservation holds, over its whole window, the scalar dimensions of its
//! `req` (`cpu_cores`, `memory_mb`, `disk_mb`, the `custom` amounts), and on
//! each GPU in [`Reservation::gpus`] the memory recorded there (a whole-GPU
//! request records the GPU's entire memory). GPUs are chosen at booking by
//! [`crate::core::fit::fit`] (best fit, ties by index) against, per GPU,
//! the capacity minus the *peak* over the window of what overlapping
//! reservations and lasting leases hold on that GPU, so two reservations
//! that overlap in time never share more of a GPU than it has.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::fit::fit;
use crate::core::groups::GroupId;
use crate::model::{
    Capacity, Denial, DenyReason, GpuSlot, Lease, LeaseId, NodeId, Priority, ResourceRequirements,
};

/// Longest window a reservation may cover: 7 days, in ms.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

/// A sensible horizon for [`Calendar::new`]: 30 days, in ms.
pub const DEFAULT_HORIZON_MS: u64 = 30 * 24 * 60 * 60 * 1_000;

/// A sensible bound for [`Calendar::new`].
pub const DEFAULT_MAX_RESERVATIONS: usize = 1_024;

/// Where a reservation is in its life. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Booked; its window has not started yet (or `start_due` has not run).
    Confirmed,
    /// Its window has started and its lease exists.
    Active,
    /// Given back by the holder or the admin while active.
    Released,
    /// Its window ended (whether or not it ever started).
    Expired,
    /// Called off by the holder or the admin before it started.
    Cancelled,
    /// Its window began but its [`Condition`] has not held yet: it still
    /// holds its capacity, and becomes `Active` when the condition holds.
    Waiting,
    /// Its window ended, or its condition could no longer hold (the
    /// reservation it waited on finished without becoming active), before
    /// its condition held. It never became active.
    Unmet,
}

impl ReservationStatus {
    /// `Confirmed`, `Waiting` or `Active`: the reservation holds capacity.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ReservationStatus::Confirmed | ReservationStatus::Waiting | ReservationStatus::Active
        )
    }

    /// `Confirmed` or `Waiting`: live, and not yet active (no lease exists
    /// for it; its capacity is held by the calendar).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            ReservationStatus::Confirmed | ReservationStatus::Waiting
        )
    }

    /// The snake_case name used in JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Active => "active",
            ReservationStatus::Released => "released",
            ReservationStatus::Expired => "expired",
            ReservationStatus::Cancelled => "cancelled",
            ReservationStatus::Waiting => "waiting",
            ReservationStatus::Unmet => "unmet",
        }
    }
}

impl std::fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest event name a [`Condition::Event`] may wait on, characters.
pub const MAX_EVENT_NAME: usize = 64;

/// What a conditional reservation waits for before it becomes active.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Condition {
    /// A named event, posted after the booking by the reservation's holder
    /// or by this node's admin ([`Calendar::post_event`]).
    Event(String),
    /// Another reservation on this node becoming active.
    Reservation(LeaseId),
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Event(name) => write!(f, "event {name}"),
            Condition::Reservation(id) => write!(f, "reservation {id} active"),
        }
    }
}

/// Check an event name: 1 to [`MAX_EVENT_NAME`] characters out of
/// `[A-Za-z0-9._:-]`.
pub fn validate_event_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an event name cannot be empty".into());
    }
    if name.chars().count() > MAX_EVENT_NAME {
        return Err(format!(
            "event name is longer than {MAX_EVENT_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "event name {name:?} has {c:?}; use letters, digits and . _ : -"
        ));
    }
    Ok(())
}

/// Resources of this node reserved for `holder` over `[start_ms, end_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The reservation's id, chosen by the caller (a UUID v4); also the id
    /// of the lease created when the window starts.
    pub id: LeaseId,
    /// Who reserved, and will hold the lease.
    pub holder: NodeId,
    /// What is reserved.
    pub req: ResourceRequirements,
    /// Priority of the request (carried into the lease).
    pub priority: Priority,
    /// Free-form task type (carried into the lease).
    pub task_type: String,
    /// Start of the window, ms since the epoch (included).
    pub start_ms: u64,
    /// End of the window, ms since the epoch (excluded).
    pub end_ms: u64,
    /// GPUs assigned at booking: index and the memory held on each, MiB.
    /// Ignored on input to [`Calendar::book`].
    pub gpus: Vec<GpuSlot>,
    /// Where it is in its life. Ignored on input to [`Calendar::book`].
    pub status: ReservationStatus,
    /// When it was booked. Set by [`Calendar::book`].
    pub created_at_ms: u64,
    /// A conditional reservation becomes active only once this holds (and
    /// its window has begun); `None`: at the start of its window.
    pub condition: Option<Condition>,
    /// When the condition held; `None` while it has not (or there is
    /// none). Set by the calendar; ignored on input to [`Calendar::book`].
    pub condition_met_ms: Option<u64>,
    /// A pooled reservation: the holder and the members of this group draw
    /// leases from it ([`Calendar::plan_draw`]) up to its size, instead of
    /// the holder getting one lease for all of it.
    pub shared_with: Option<GroupId>,
}

impl Reservation {
    /// What the reservation holds while live, as a [`Capacity`]: the
    /// scalar dimensions of `req`, its non-zero custom amounts, and the
    /// assigned [`Reservation::gpus`].
    pub fn holds(&self) -> Capacity {
        Capacity {
            cpu_cores: self.req.cpu_cores,
            memory_mb: self.req.memory_mb,
            disk_mb: self.req.disk_mb,
            gpus: self.gpus.clone(),
            custom: self
                .req
                .custom
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// The lease that carries out this reservation on `node_id`, created at
    /// `now_ms`: id and request id = the reservation id, the reserver as
    /// holder, exactly the reserved resources and GPUs, expiring at
    /// `end_ms` (`lease_ms` is what is left of the window, at least 1).
    pub fn lease(&self, node_id: &NodeId, now_ms: u64) -> Lease {
        let held = self.holds();
        Lease {
            lease_id: self.id.clone(),
            request_id: self.id.0.clone(),
            node_id: node_id.clone(),
            holder: self.holder.clone(),
            cpu_cores: held.cpu_cores,
            memory_mb: held.memory_mb,
            disk_mb: held.disk_mb,
            gpus: held.gpus,
            custom: held.custom,
            models: self.req.preferred_models.clone(),
            task_type: self.task_type.clone(),
            priority: self.priority,
            created_at_ms: now_ms,
            expires_at_ms: self.end_ms,
            lease_ms: self.end_ms.saturating_sub(now_ms).max(1),
        }
    }

    fn is_live(&self) -> bool {
        self.status.is_live()
    }

    /// Whether it may become active: it has no condition, or it held.
    pub fn condition_holds(&self) -> bool {
        self.condition.is_none() || self.condition_met_ms.is_some()
    }

    /// Still live and its condition never held.
    fn unmet(&self) -> bool {
        self.status.is_pending() && !self.condition_holds()
    }

    /// Live, unmet, and waiting on reservation `x` becoming active.
    fn waits_on(&self, x: &LeaseId) -> bool {
        self.unmet() && matches!(&self.condition, Some(Condition::Reservation(id)) if id == x)
    }
}

/// A lease drawn from a pooled reservation: which, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draw {
    /// The drawn lease's id.
    pub lease: LeaseId,
    /// The pooled reservation it was drawn from.
    pub reservation: LeaseId,
    /// What the lease holds (its GPUs among the reservation's).
    pub holds: Capacity,
}

/// What a lease holds, as a [`Capacity`].
fn lease_holds(lease: &Lease) -> Capacity {
    Capacity {
        cpu_cores: lease.cpu_cores,
        memory_mb: lease.memory_mb,
        disk_mb: lease.disk_mb,
        gpus: lease.gpus.clone(),
        custom: lease.custom.clone(),
    }
}

/// Whether `a` fits within `b`: every scalar dimension, the memory on each
/// GPU of `a` (which `b` must list), and each custom amount of `a`.
fn fits_within(a: &Capacity, b: &Capacity) -> bool {
    a.cpu_cores <= b.cpu_cores
        && a.memory_mb <= b.memory_mb
        && a.disk_mb <= b.disk_mb
        && a.gpus.iter().all(|g| {
            b.gpus
                .iter()
                .any(|h| h.index == g.index && g.memory_mb <= h.memory_mb)
        })
        && a.custom
            .iter()
            .all(|(k, v)| *v <= b.custom.get(k).copied().unwrap_or(0))
}

/// Sort GPUs by index and keep only the first of any repeated index (as
/// the ledger does), so a GPU is never counted twice.
fn normalize(mut capacity: Capacity) -> Capacity {
    capacity.gpus.sort_by_key(|g| g.index);
    capacity.gpus.dedup_by_key(|g| g.index);
    capacity
}

fn sat64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// A sum of holdings, exact (`u128`) so that adding and then subtracting
/// the same amounts while sweeping always comes back to where it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Load {
    cpu_cores: u128,
    memory_mb: u128,
    disk_mb: u128,
    /// GPU index -> memory held on it, MiB.
    gpus: BTreeMap<u32, u128>,
    /// Custom key -> amount held.
    custom: BTreeMap<String, u128>,
}

impl Load {
    fn add(&mut self, c: &Capacity) {
        self.cpu_cores = self.cpu_cores.saturating_add(u128::from(c.cpu_cores));
        self.memory_mb = self.memory_mb.saturating_add(u128::from(c.memory_mb));
        self.disk_mb = self.disk_mb.saturating_add(u128::from(c.disk_mb));
        for g in c.gpus.iter().filter(|g| g.memory_mb > 0) {
            let e = self.gpus.entry(g.index).or_insert(0);
            *e = e.saturating_add(u128::from(g.memory_mb));
        }
        for (k, v) in c.custom.iter().filter(|(_, v)| **v > 0) {
            match self.custom.get_mut(k) {
                Some(e) => *e = e.saturating_add(u128::from(*v)),
                None => {
                    self.custom.insert(k.clone(), u128::from(*v));
                }
            }
        }
    }

    fn sub(&mut self, c: &Capacity) {
        self.cpu_cores = self.cpu_cores.saturating_sub(u128::from(c.cpu_cores));
        self.memory_mb = self.memory_mb.saturating_sub(u128::from(c.memory_mb));
        self.disk_mb = self.disk_mb.saturating_sub(u128::from(c.disk_mb));
        for g in &c.gpus {
            if let Some(e) = self.gpus.get_mut(&g.index) {
                *e = e.saturating_sub(u128::from(g.memory_mb));
            }
        }
        for (k, v) in &c.custom {
            if let Some(e) = self.custom.get_mut(k) {
                *e = e.saturating_sub(u128::from(*v));
            }
        }
    }

    /// Raise every entry of `self` to at least the same entry of `other`.
    fn raise_to(&mut self, other: &Load) {
        self.cpu_cores = self.cpu_cores.max(other.cpu_cores);
        self.memory_mb = self.memory_mb.max(other.memory_mb);
        self.disk_mb = self.disk_mb.max(other.disk_mb);
        for (i, v) in &other.gpus {
            let e = self.gpus.entry(*i).or_insert(0);
            *e = (*e).max(*v);
        }
        for (k, v) in &other.custom {
            match self.custom.get_mut(k) {
                Some(e) => *e = (*e).max(*v),
                None => {
                    self.custom.insert(k.clone(), *v);
                }
            }
        }
    }

    /// As a [`Capacity`], saturated; only GPUs and keys above zero listed.
    fn to_capacity(&self) -> Capacity {
        Capacity {
            cpu_cores: u32::try_from(self.cpu_cores).unwrap_or(u32::MAX),
            memory_mb: sat64(self.memory_mb),
            disk_mb: sat64(self.disk_mb),
            gpus: self
                .gpus
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(index, v)| GpuSlot {
                    index: *index,
                    memory_mb: sat64(*v),
                })
                .collect(),
            custom: self
                .custom
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.clone(), sat64(*v)))
                .collect(),
        }
    }

    /// `capacity` minus this load, per dimension, per GPU of `capacity`
    /// (by index) and per custom key of `capacity`, saturating at zero.
    fn left_in(&self, capacity: &Capacity) -> Capacity {
        let left = |have: u64, used: u128| sat64(u128::from(have).saturating_sub(used));
        Capacity {
            cpu_cores: u32::try_from(u128::from(capacity.cpu_cores).saturating_sub(self.cpu_cores))
                .unwrap_or(0),
            memory_mb: left(capacity.memory_mb, self.memory_mb),
            disk_mb: left(capacity.disk_mb, self.disk_mb),
            gpus: capacity
                .gpus
                .iter()
                .map(|g| GpuSlot {
                    index: g.index,
                    memory_mb: left(g.memory_mb, self.gpus.get(&g.index).copied().unwrap_or(0)),
                })
                .collect(),
            custom: capacity
                .custom
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        left(*v, self.custom.get(k).copied().unwrap_or(0)),
                    )
                })
                .collect(),
        }
    }
}

/// Something that holds `holds` over `[from, to)`.
struct Span {
    from: u64,
    to: u64,
    holds: Capacity,
}

/// The peak over `[from, to)` of the sum of the spans overlapping each
/// instant, per dimension, per GPU and per custom key (each maximised on
/// its own). A sweep: the sum only changes where a span starts or ends.
fn peak(spans: &[Span], from: u64, to: u64) -> Load {
    let mut peak = Load::default();
    if from >= to {
        return peak;
    }
    let mut current = Load::default();
    // Time -> (spans starting, spans ending) at that time, inside (from, to).
    let mut events: BTreeMap<u64, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, s) in spans.iter().enumerate() {
        if s.from >= s.to || s.from >= to || s.to <= from {
            continue;
        }
        if s.from <= from {
            current.add(&s.holds);
        } else {
            events.entry(s.from).or_default().0.push(i);
        }
        if s.to < to {
            events.entry(s.to).or_default().1.push(i);
        }
    }
    peak.raise_to(&current);
    for (starting, ending) in events.values() {
        for s in ending.iter().filter_map(|i| spans.get(*i)) {
            current.sub(&s.holds);
        }
        for s in starting.iter().filter_map(|i| spans.get(*i)) {
            current.add(&s.holds);
        }
        peak.raise_to(&current);
    }
    peak
}

/// The owner's calendar of advance reservations. See the module
/// documentation.
#[derive(Clone, Debug)]
pub struct Calendar {
    max_reservations: usize,
    horizon_ms: u64,
    /// Every reservation kept, live or finished, by id.
    entries: BTreeMap<LeaseId, Reservation>,
    /// (`start_ms`, id) of every `Confirmed` reservation.
    pending: BTreeSet<(u64, LeaseId)>,
    /// (`end_ms`, id) of every live reservation.
    live_by_end: BTreeSet<(u64, LeaseId)>,
    /// Leases drawn from pooled reservations, by lease id.
    draws: BTreeMap<LeaseId, Draw>,
    /// Reservations made `Unmet` by a cancellation (their condition can no
    /// longer hold), reported by the next [`Calendar::end_due`].
    fallout: Vec<Reservation>,
}

impl Calendar {
    /// An empty calendar that keeps at most `max_reservations` entries
    /// (live and finished together) and accepts windows starting at most
    /// `horizon_ms` after the time of booking.
    pub fn new(max_reservations: usize, horizon_ms: u64) -> Self {
        Calendar {
            max_reservations,
            horizon_ms,
            entries: BTreeMap::new(),
            pending: BTreeSet::new(),
            live_by_end: BTreeSet::new(),
            draws: BTreeMap::new(),
            fallout: Vec::new(),
        }
    }

    /// The bound on entries given to [`Calendar::new`].
    pub fn max_reservations(&self) -> usize {
        self.max_reservations
    }

    /// The farthest start from now that a booking may ask for, ms.
    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms
    }

    /// Number of entries kept, live and finished.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of live (`Confirmed` or `Active`) reservations.
    pub fn live_len(&self) -> usize {
        self.live_by_end.len()
    }

    /// Book `r` on a node lending `capacity`, whose current leases are
    /// `leases`, each with the time it may run until (its hard end, or
    /// `u64::MAX`). `r.status`, `r.gpus` and `r.created_at_ms` are ignored.
    ///
    /// Refusals change nothing. In order:
    ///
    /// - `BadRequest` if `r.req` asks for nothing; if `r.id` is the id of a
    ///   reservation kept here (live or finished) or of a lease in
    ///   `leases`; if `start_ms < now_ms` ("starts in the past"); if
    ///   `end_ms <= start_ms` (an empty or negative window); if the window
    ///   is longer than [`MAX_WINDOW_MS`]; if `start_ms > now_ms +
    ///   horizon_ms`.
    /// - `Unsatisfiable` if `max_reservations` is 0 (this node takes no
    ///   reservations).
    /// - `Busy` if `max_reservations` reservations are live; `retry_after_ms`
    ///   is the time until the first of them ends (at least 1).
    /// - `InsufficientCapacity` if at some instant `t` of the window, `req`
    ///   plus the live reservations overlapping `t` plus the leases with
    ///   `until_ms > t` does not fit in `capacity`, or if no GPUs can be
    ///   assigned (see the module documentation). The message names the
    ///   first dimension that does not fit.
    ///
    /// Otherwise the reservation is stored `Confirmed`, with the assigned
    /// GPUs and `created_at_ms = now_ms`, and returned. If the calendar
    /// already holds `max_reservations` entries, the finished one that
    /// ended first (ties by id) is forgotten to make room.
    pub fn book(
        &mut self,
        r: Reservation,
        capacity: &Capacity,
        leases: &[(Lease, u64)],
        now_ms: u64,
    ) -> Result<Reservation, Denial> {
        let mut r = r;
        self.validate(&r, leases, now_ms)?;
        if self.max_reservations == 0 {
            return Err(Denial::new(
                DenyReason::Unsatisfiable,
                format!(
                    "reservation {}: this node takes no reservations (max_reservations 0)",
                    r.id
                ),
            ));
        }
        if self.live_len() >= self.max_reservations {
            let retry = self
                .live_by_end
                .first()
                .map_or(1, |(end, _)| end.saturating_sub(now_ms).max(1));
            return Err(Denial::busy(
                format!(
                    "reservation {}: {} reservations are live, the limit (max_reservations {})",
                    r.id,
                    self.live_len(),
                    self.max_reservations
                ),
                retry,
            ));
        }
        let capacity = normalize(capacity.clone());
        let room = self.available(&capacity, leases, r.start_ms, r.end_ms);
        let gpus = fit(&room, &capacity, &r.req).map_err(|misfit| {
            Denial::new(
                DenyReason::InsufficientCapacity,
                format!(
                    "reservation {} over [{}, {}) ms does not fit: {misfit}",
                    r.id, r.start_ms, r.end_ms
                ),
            )
        })?;
        r.gpus = gpus;
        r.status = ReservationStatus::Confirmed;
        r.created_at_ms = now_ms;
        // Waiting on a reservation that is already active: it holds now.
        r.condition_met_ms = match &r.condition {
            Some(Condition::Reservation(x))
                if self
                    .entries
                    .get(x)
                    .is_some_and(|x| x.status == ReservationStatus::Active) =>
            {
                Some(now_ms)
            }
            _ => None,
        };
        self.make_room();
        self.insert(r.clone());
        Ok(r)
    }

    /// What a booking over `[from_ms, to_ms)` could still get on a node
    /// lending `capacity` with `leases` (as for [`Calendar::book`]): per
    /// dimension, per GPU of `capacity` and per custom key of `capacity`,
    /// the capacity minus the peak over the window of what the live
    /// reservations and the lasting leases hold together (GPUs normalized as
    /// in the ledger: sorted by index, the first of a repeated index kept).
    /// Equal to that capacity for an empty window. Past its request checks,
    /// [`Calendar::book`] admits a request exactly when
    /// [`crate::core::fit::fit`] accepts it against this, on the GPUs `fit`
    /// chooses.
    pub fn available(
        &self,
        capacity: &Capacity,
        leases: &[(Lease, u64)],
        from_ms: u64,
        to_ms: u64,
    ) -> Capacity {
        let mut spans: Vec<Span> = self
            .entries
            .values()
            .filter(|r| r.is_live())
            .map(|r| Span {
                from: r.start_ms,
                to: r.end_ms,
                holds: r.holds(),
            })
            .collect();
        for (lease, until) in leases {
            // A live reservation's own lease counts as the reservation; only
            // what runs past the window counts as a lease.
            // Likewise a lease drawn from a live pooled reservation.
            let of = self.entries.get(&lease.lease_id).or_else(|| {
                self.draws
                    .get(&lease.lease_id)
                    .and_then(|d| self.entries.get(&d.reservation))
            });
            let from = match of {
                Some(r) if r.is_live() => r.end_ms,
                _ => 0,
            };
            spans.push(Span {
                from,
                to: *until,
                holds: lease_holds(lease),
            });
        }
        peak(&spans, from_ms, to_ms).left_in(&normalize(capacity.clone()))
    }

    /// Peak of what live (`Confirmed` and `Active`) reservations hold at
    /// any instant of `[from_ms, to_ms)`: each scalar dimension is the
    /// largest sum over time, each GPU index (in `gpus`, memory MiB) and
    /// each custom key likewise, each on its own. Only GPUs and keys held
    /// are listed. Zero for an empty window.
    ///
    /// For admitting a lease use [`Calendar::peak_pending`]: an active
    /// reservation's lease is already out of the ledger's free capacity.
    pub fn peak_reserved(&self, from_ms: u64, to_ms: u64) -> Capacity {
        self.peak_of(|r| r.is_live(), from_ms, to_ms)
    }

    /// What the ledger does not see yet, at its peak over `[from_ms,
    /// to_ms)`: `Confirmed` and `Waiting` reservations (their leases do not
    /// exist yet) in full, and active pooled reservations for what is left
    /// to draw from them. A new lease that may run until `until_ms` must fit
    /// in the ledger's free capacity minus `peak_pending(now_ms, until_ms)`.
    pub fn peak_pending(&self, from_ms: u64, to_ms: u64) -> Capacity {
        // What is drawn from each pool, in one pass over the draws.
        let mut drawn: BTreeMap<&LeaseId, Load> = BTreeMap::new();
        for d in self.draws.values() {
            drawn.entry(&d.reservation).or_default().add(&d.holds);
        }
        let spans: Vec<Span> = self
            .entries
            .values()
            .filter_map(|r| {
                let holds = match r.status {
                    s if s.is_pending() => r.holds(),
                    ReservationStatus::Active if r.shared_with.is_some() => drawn
                        .get(&r.id)
                        .cloned()
                        .unwrap_or_default()
                        .left_in(&normalize(r.holds())),
                    _ => return None,
                };
                Some(Span {
                    from: r.start_ms,
                    to: r.end_ms,
                    holds,
                })
            })
            .collect();
        peak(&spans, from_ms, to_ms).to_capacity()
    }

    fn peak_of(&self, keep: impl Fn(&Reservation) -> bool, from_ms: u64, to_ms: u64) -> Capacity {
        let spans: Vec<Span> = self
            .entries
            .values()
            .filter(|r| keep(r))
            .map(|r| Span {
                from: r.start_ms,
                to: r.end_ms,
                holds: r.holds(),
            })
            .collect();
        peak(&spans, from_ms, to_ms).to_capacity()
    }

    /// Start what is due: every `Confirmed` reservation with `start_ms <=
    /// now_ms < end_ms` whose condition holds (or that has none) becomes
    /// `Active`, and is returned; one whose condition has not held becomes
    /// `Waiting` (it keeps its capacity, and is started by the call after
    /// its condition holds). A reservation becoming active meets the
    /// condition of every reservation waiting on it; those whose window has
    /// begun start in the same call. Returned in order of start (ties by
    /// id). The caller creates their leases ([`Reservation::lease`]), except
    /// for pooled ones, from which leases are drawn. A `Confirmed`
    /// reservation whose window is already over is never started;
    /// [`Calendar::end_due`] ends it. Each reservation is returned by
    /// `start_due` at most once.
    pub fn start_due(&mut self, now_ms: u64) -> Vec<Reservation> {
        let due: Vec<LeaseId> = self
            .pending
            .iter()
            .take_while(|(start, _)| *start <= now_ms)
            .filter(|(_, id)| self.entries.get(id).is_some_and(|r| r.end_ms > now_ms))
            .map(|(_, id)| id.clone())
            .collect();
        let mut started = Vec::new();
        let mut work = Vec::new();
        for id in &due {
            let holds = self
                .entries
                .get(id)
                .is_some_and(Reservation::condition_holds);
            if !holds {
                self.set_status(id, ReservationStatus::Waiting);
            } else if let Some(r) = self.set_status(id, ReservationStatus::Active) {
                work.push(r.id.clone());
                started.push(r);
            }
        }
        // Reservations waiting on one that just became active.
        while let Some(x) = work.pop() {
            let deps: Vec<LeaseId> = self
                .entries
                .values()
                .filter(|r| r.waits_on(&x))
                .map(|r| r.id.clone())
                .collect();
            for id in deps {
                let Some(r) = self.entries.get_mut(&id) else {
                    continue;
                };
                r.condition_met_ms = Some(now_ms);
                if r.status == ReservationStatus::Waiting && r.end_ms > now_ms {
                    if let Some(r) = self.set_status(&id, ReservationStatus::Active) {
                        work.push(id);
                        started.push(r);
                    }
                }
            }
        }
        started.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
        started
    }

    /// End what is due: every live reservation with `end_ms <= now_ms`
    /// finishes and is returned, in order of end (ties by id): `Expired`
    /// (an `Active` one whose window ran out, or a `Confirmed` one that
    /// never started, e.g. because the node was down for the whole window),
    /// or `Unmet` if its condition never held. A reservation that finishes
    /// without having become active makes every reservation still waiting
    /// on it `Unmet` too (returned after it), and so do cancellations since
    /// the last call. The caller ends the leases of the ones that were
    /// `Active` (and, for a pooled one, the leases drawn from it).
    pub fn end_due(&mut self, now_ms: u64) -> Vec<Reservation> {
        let due: Vec<LeaseId> = self
            .live_by_end
            .iter()
            .take_while(|(end, _)| *end <= now_ms)
            .map(|(_, id)| id.clone())
            .collect();
        let mut out = std::mem::take(&mut self.fallout);
        for id in &due {
            let unmet = self.entries.get(id).is_some_and(Reservation::unmet);
            let to = if unmet {
                ReservationStatus::Unmet
            } else {
                ReservationStatus::Expired
            };
            if let Some(r) = self.set_status(id, to) {
                out.push(r);
            }
        }
        let more = self.cascade_unmet(&due);
        out.extend(more);
        out
    }

    /// Make `Unmet` every live reservation still waiting on one of
    /// `finished` (which never became active, or they would have held),
    /// and, in turn, those waiting on them. Returns them.
    fn cascade_unmet(&mut self, finished: &[LeaseId]) -> Vec<Reservation> {
        let mut out = Vec::new();
        let mut work: Vec<LeaseId> = finished.to_vec();
        while let Some(x) = work.pop() {
            let deps: Vec<LeaseId> = self
                .entries
                .values()
                .filter(|r| r.waits_on(&x))
                .map(|r| r.id.clone())
                .collect();
            for id in deps {
                if let Some(r) = self.set_status(&id, ReservationStatus::Unmet) {
                    work.push(id);
                    out.push(r);
                }
            }
        }
        out
    }

    /// Post the event `name` from `from` (a peer, or `None` for this node's
    /// admin): every live reservation waiting on that event whose holder is
    /// `from` (any holder, for the admin) and whose condition has not held
    /// yet holds now. One whose window has begun is due at once
    /// ([`Calendar::next_event`] is `now_ms` or earlier): the next
    /// [`Calendar::start_due`] starts it. Events are not stored: one posted
    /// before a reservation was booked does not count for it. Returns the
    /// ids of the reservations whose condition held, in id order (empty if
    /// none waited on it).
    pub fn post_event(&mut self, name: &str, from: Option<&NodeId>, now_ms: u64) -> Vec<LeaseId> {
        let ids: Vec<LeaseId> = self
            .entries
            .values()
            .filter(|r| {
                r.unmet()
                    && matches!(&r.condition, Some(Condition::Event(n)) if n == name)
                    && from.is_none_or(|f| *f == r.holder)
            })
            .map(|r| r.id.clone())
            .collect();
        for id in &ids {
            let Some(r) = self.entries.get_mut(id) else {
                continue;
            };
            r.condition_met_ms = Some(now_ms);
            if r.status == ReservationStatus::Waiting {
                // Due again: start_due starts it.
                self.set_status(id, ReservationStatus::Confirmed);
            }
        }
        ids
    }

    /// What is left to draw from the active pooled reservation `id`: what
    /// it holds minus what the leases drawn from it hold. `None` if `id` is
    /// not a live pooled reservation.
    pub fn pool_left(&self, id: &LeaseId) -> Option<Capacity> {
        self.entries
            .get(id)
            .filter(|r| r.is_live() && r.shared_with.is_some())
            .map(|r| self.left_in_pool(r))
    }

    fn left_in_pool(&self, r: &Reservation) -> Capacity {
        let mut drawn = Load::default();
        for d in self.draws.values().filter(|d| d.reservation == r.id) {
            drawn.add(&d.holds);
        }
        drawn.left_in(&normalize(r.holds()))
    }

    /// Check that `drawer` may draw `req` from the pooled reservation `id`
    /// at `now_ms`, and choose the GPUs the lease would hold, among the
    /// reservation's (best fit, ties by index). `member` says whether
    /// `drawer` is in the group the reservation is shared with (the caller
    /// knows the groups). Returns the reservation and the GPUs. Changes
    /// nothing; record the lease with [`Calendar::record_draw`].
    ///
    /// Refusals: `UnknownLease` if no live reservation has this id;
    /// `BadRequest` if it is not pooled, or `req` asks for nothing;
    /// `Forbidden` if `drawer` is neither its holder nor a member; `Busy`
    /// if it is not active yet (before its window, `retry_after_ms` is the
    /// time to its start; waiting on its condition, 1 s);
    /// `InsufficientCapacity` if `req` does not fit what is left of it.
    pub fn plan_draw(
        &self,
        id: &LeaseId,
        drawer: &NodeId,
        member: bool,
        req: &ResourceRequirements,
        now_ms: u64,
    ) -> Result<(Reservation, Vec<GpuSlot>), Denial> {
        let r = match self.entries.get(id) {
            Some(r) if r.is_live() => r,
            Some(r) => {
                return Err(Denial::new(
                    DenyReason::UnknownLease,
                    format!("reservation {id} is already {}", r.status),
                ))
            }
            None => {
                return Err(Denial::new(
                    DenyReason::UnknownLease,
                    format!("no reservation {id}"),
                ))
            }
        };
        let Some(group) = &r.shared_with else {
            return Err(Denial::new(
                DenyReason::BadRequest,
                format!("reservation {id} is not shared: its holder gets its lease when it starts"),
            ));
        };
        if *drawer != r.holder && !member {
            return Err(Denial::new(
                DenyReason::Forbidden,
                format!(
                    "reservation {id} is shared with group {}, and {drawer} is not a member",
                    group.0
                ),
            ));
        }
        if req.is_empty() {
            return Err(Denial::new(
                DenyReason::BadRequest,
                "a draw must ask for some resources",
            ));
        }
        match r.status {
            ReservationStatus::Active => {}
            ReservationStatus::Waiting => {
                let cond = r
                    .condition
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                return Err(Denial::busy(
                    format!("reservation {id} is waiting for its condition ({cond})"),
                    1_000,
                ));
            }
            _ => {
                return Err(Denial::busy(
                    format!("reservation {id} starts at {} ms", r.start_ms),
                    r.start_ms.saturating_sub(now_ms).max(1),
                ))
            }
        }
        let holds = normalize(r.holds());
        let left = self.left_in_pool(r);
        let gpus = fit(&left, &holds, req).map_err(|misfit| {
            Denial::new(
                DenyReason::InsufficientCapacity,
                format!("what is left of reservation {id} does not fit the draw: {misfit}"),
            )
        })?;
        Ok((r.clone(), gpus))
    }

    /// Record `lease` as drawn from the pooled reservation `reservation`.
    pub fn record_draw(&mut self, reservation: &LeaseId, lease: &Lease) {
        self.draws.insert(
            lease.lease_id.clone(),
            Draw {
                lease: lease.lease_id.clone(),
                reservation: reservation.clone(),
                holds: lease_holds(lease),
            },
        );
    }

    /// Forget a drawn lease (released or expired). Returns the reservation
    /// it was drawn from, `None` if it was not a drawn lease.
    pub fn undraw(&mut self, lease: &LeaseId) -> Option<LeaseId> {
        self.draws.remove(lease).map(|d| d.reservation)
    }

    /// The leases drawn from `reservation`, by id.
    pub fn draws_of(&self, reservation: &LeaseId) -> Vec<LeaseId> {
        self.draws
            .values()
            .filter(|d| d.reservation == *reservation)
            .map(|d| d.lease.clone())
            .collect()
    }

    /// The reservation `lease` was drawn from, if it was.
    pub fn drawn_from(&self, lease: &LeaseId) -> Option<&LeaseId> {
        self.draws.get(lease).map(|d| &d.reservation)
    }

    /// Every draw, by lease id: what to persist.
    pub fn draws(&self) -> Vec<Draw> {
        self.draws.values().cloned().collect()
    }

    /// Take back draws read from the store, after [`Calendar::restore`]:
    /// only those drawn from a live pooled reservation kept here, and only
    /// while what they hold together fits in it. Returns the refused ones.
    pub fn restore_draws(&mut self, draws: Vec<Draw>) -> Vec<Draw> {
        let mut refused = Vec::new();
        for d in draws {
            let fits = self
                .entries
                .get(&d.reservation)
                .filter(|r| r.is_live() && r.shared_with.is_some())
                .is_some_and(|r| {
                    let left = self.left_in_pool(r);
                    fits_within(&d.holds, &left)
                });
            if fits && !self.draws.contains_key(&d.lease) {
                self.draws.insert(d.lease.clone(), d);
            } else {
                refused.push(d);
            }
        }
        refused
    }

    /// When something is next due: the earliest `start_ms` of a `Confirmed`
    /// reservation or `end_ms` of a live one. May be in the past (if
    /// [`Calendar::start_due`] or [`Calendar::end_due`] has not been called
    /// since); `None` when nothing is live.
    pub fn next_event(&self) -> Option<u64> {
        if !self.fallout.is_empty() {
            return Some(0);
        }
        let start = self.pending.first().map(|(t, _)| *t);
        let end = self.live_by_end.first().map(|(t, _)| *t);
        match (start, end) {
            (Some(s), Some(e)) => Some(s.min(e)),
            (s, e) => s.or(e),
        }
    }

    /// Call off a reservation: a `Confirmed` one becomes `Cancelled`, an
    /// `Active` one `Released` (the caller then ends its lease). `holder` is
    /// the peer asking, or `None` for the local admin, who may cancel any.
    ///
    /// `UnknownLease` if no reservation has this id or it is already
    /// finished; `NotHolder` if `holder` is not its holder. Returns the
    /// reservation with its new status.
    pub fn cancel(&mut self, id: &LeaseId, holder: Option<&NodeId>) -> Result<Reservation, Denial> {
        let Some(r) = self.entries.get(id) else {
            return Err(Denial::new(
                DenyReason::UnknownLease,
                format!("no reservation {id}"),
            ));
        };
        if !r.is_live() {
            return Err(Denial::new(
                DenyReason::UnknownLease,
                format!("reservation {id} is already {}", r.status),
            ));
        }
        if let Some(h) = holder {
            if r.holder != *h {
                return Err(Denial::new(
                    DenyReason::NotHolder,
                    format!("reservation {id} is held by {}, not {h}", r.holder),
                ));
            }
        }
        let to = if r.status == ReservationStatus::Active {
            ReservationStatus::Released
        } else {
            ReservationStatus::Cancelled
        };
        let r = self
            .set_status(id, to)
            .ok_or_else(|| Denial::new(DenyReason::UnknownLease, format!("no reservation {id}")))?;
        let fallout = self.cascade_unmet(std::slice::from_ref(id));
        self.fallout.extend(fallout);
        Ok(r)
    }

    /// The reservation with this id, live or finished (until pruned).
    pub fn get(&self, id: &LeaseId) -> Option<&Reservation> {
        self.entries.get(id)
    }

    /// Every entry kept, live and finished, by id, without copying.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.entries.values()
    }

    /// The live reservations, in order of start (ties by id).
    pub fn list(&self) -> Vec<Reservation> {
        let mut live: Vec<Reservation> = self
            .entries
            .values()
            .filter(|r| r.is_live())
            .cloned()
            .collect();
        live.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
        live
    }

    /// Forget every finished reservation with `end_ms + keep_ms <= now_ms`
    /// (saturating): it ended at least `keep_ms` ago. Live ones stay.
    pub fn prune(&mut self, now_ms: u64, keep_ms: u64) {
        self.entries
            .retain(|_, r| r.is_live() || r.end_ms.saturating_add(keep_ms) > now_ms);
    }

    /// Every entry kept, live and finished, by id: what to persist.
    pub fn snapshot(&self) -> Vec<Reservation> {
        self.entries.values().cloned().collect()
    }

    /// Take back entries read from the store after a restart, exactly as
    /// stored (same status, window and GPUs; no transition is made: call
    /// [`Calendar::end_due`] and [`Calendar::start_due`] next). Capacity is
    /// not checked again: the stored set was admitted by
    /// [`Calendar::book`]; if the node now lends less, cancel what no
    /// longer fits.
    ///
    /// Entries are taken in this order: live ones whose window is not over
    /// at `now_ms`, then live ones whose window is over, each by start (ties
    /// by id), then finished ones, most recently ended first (ties by id).
    /// An entry whose id is already kept is skipped (and not returned: the
    /// calendar keeps its own copy). One is refused if its window is empty
    /// (`end_ms <= start_ms`), or if it would go beyond `max_reservations`
    /// (a live one may push out a finished one, as in [`Calendar::book`]).
    /// Returns the refused entries, so the caller can delete them from the
    /// store.
    pub fn restore(&mut self, rs: Vec<Reservation>, now_ms: u64) -> Vec<Reservation> {
        let mut rs = rs;
        rs.sort_by(|a, b| {
            let key = |r: &Reservation| match (r.is_live(), r.end_ms > now_ms) {
                (true, true) => (0u8, r.start_ms),
                (true, false) => (1, r.start_ms),
                (false, _) => (2, u64::MAX - r.end_ms),
            };
            (key(a), &a.id).cmp(&(key(b), &b.id))
        });
        let mut refused = Vec::new();
        for r in rs {
            if self.entries.contains_key(&r.id) {
                continue;
            }
            let admissible = r.end_ms > r.start_ms
                && if r.is_live() {
                    self.live_len() < self.max_reservations && self.make_room()
                } else {
                    self.entries.len() < self.max_reservations
                };
            if admissible {
                self.insert(r);
            } else {
                refused.push(r);
            }
        }
        refused
    }

    /// The checks that need no capacity. See [`Calendar::book`].
    fn validate(
        &self,
        r: &Reservation,
        leases: &[(Lease, u64)],
        now_ms: u64,
    ) -> Result<(), Denial> {
        let bad = |msg: String| Err(Denial::new(DenyReason::BadRequest, msg));
        let id = &r.id;
        if r.req.is_empty() {
            return bad(format!("reservation {id} asks for no resources"));
        }
        if self.entries.contains_key(id) || leases.iter().any(|(l, _)| l.lease_id == *id) {
            return bad(format!("reservation id {id} is already in use"));
        }
        if r.start_ms < now_ms {
            return bad(format!(
                "reservation {id} starts in the past ({} ms < now {now_ms} ms)",
                r.start_ms
            ));
        }
        if r.end_ms <= r.start_ms {
            return bad(format!(
                "reservation {id} has an empty window: end {} ms <= start {} ms",
                r.end_ms, r.start_ms
            ));
        }
        match &r.condition {
            Some(Condition::Event(name)) => {
                if let Err(e) = validate_event_name(name) {
                    return bad(format!("reservation {id}: {e}"));
                }
            }
            Some(Condition::Reservation(x)) if x == id => {
                return bad(format!("reservation {id} cannot wait on itself"));
            }
            Some(Condition::Reservation(x)) => match self.entries.get(x) {
                None => {
                    return bad(format!(
                        "reservation {id} waits on reservation {x}, which this node does not hold"
                    ))
                }
                Some(o) if !o.is_live() => {
                    return bad(format!(
                        "reservation {id} waits on reservation {x}, which is already {}: it could never hold",
                        o.status
                    ))
                }
                Some(_) => {}
            },
            None => {}
        }
        if r.shared_with.as_ref().is_some_and(|g| g.0.is_empty()) {
            return bad(format!(
                "reservation {id} is shared with a group with no name"
            ));
        }
        if r.end_ms - r.start_ms > MAX_WINDOW_MS {
            return bad(format!(
                "reservation {id} covers {} ms, longer than the {MAX_WINDOW_MS} ms allowed",
                r.end_ms - r.start_ms
            ));
        }
        let horizon = now_ms.saturating_add(self.horizon_ms);
        if r.start_ms > horizon {
            return bad(format!(
                "reservation {id} starts at {} ms, beyond the horizon ({} ms from now)",
                r.start_ms, self.horizon_ms
            ));
        }
        Ok(())
    }

    /// Make sure one more entry fits in `max_reservations`, forgetting the
    /// finished entry that ended first (ties by id) if needed. False if
    /// every entry is live.
    fn make_room(&mut self) -> bool {
        if self.entries.len() < self.max_reservations {
            return true;
        }
        let oldest = self
            .entries
            .values()
            .filter(|r| !r.is_live())
            .min_by(|a, b| (a.end_ms, &a.id).cmp(&(b.end_ms, &b.id)))
            .map(|r| r.id.clone());
        match oldest {
            Some(id) => {
                self.entries.remove(&id);
                self.entries.len() < self.max_reservations
            }
            None => false,
        }
    }

    fn insert(&mut self, r: Reservation) {
        if r.status == ReservationStatus::Confirmed {
            self.pending.insert((r.start_ms, r.id.clone()));
        }
        if r.is_live() {
            self.live_by_end.insert((r.end_ms, r.id.clone()));
        }
        self.entries.insert(r.id.clone(), r);
    }

    /// Move a reservation to `to`, keeping the indexes in step. Returns the
    /// updated reservation.
    fn set_status(&mut self, id: &LeaseId, to: ReservationStatus) -> Option<Reservation> {
        let r = self.entries.get_mut(id)?;
        if r.status == ReservationStatus::Confirmed {
            self.pending.remove(&(r.start_ms, id.clone()));
        }
        if r.status.is_live() {
            self.live_by_end.remove(&(r.end_ms, id.clone()));
        }
        r.status = to;
        if to == ReservationStatus::Confirmed {
            self.pending.insert((r.start_ms, id.clone()));
        }
        if to.is_live() {
            self.live_by_end.insert((r.end_ms, id.clone()));
        }
        Some(r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;

    fn id(s: &str) -> LeaseId {
        LeaseId(s.to_string())
    }

    fn gpus(mem: &[u64]) -> Vec<GpuSlot> {
        mem.iter()
            .enumerate()
            .map(|(i, m)| GpuSlot {
                index: i as u32,
                memory_mb: *m,
            })
            .collect()
    }

    fn cap() -> Capacity {
        Capacity {
            cpu_cores: 8,
            memory_mb: 16_384,
            disk_mb: 100_000,
            gpus: gpus(&[8_000, 8_000]),
            custom: [("api_quota".to_string(), 10)].into_iter().collect(),
        }
    }

    fn cal() -> Calendar {
        Calendar::new(16, DEFAULT_HORIZON_MS)
    }

    fn cpu(n: u32) -> ResourceRequirements {
        ResourceRequirements {
            cpu_cores: n,
            ..Default::default()
        }
    }

    fn gpu_mem(count: u32, mem: u64) -> ResourceRequirements {
        ResourceRequirements {
            gpu_count: count,
            gpu_memory_mb: mem,
            ..Default::default()
        }
    }

    fn res(
        rid: &str,
        holder: &str,
        req: ResourceRequirements,
        start_ms: u64,
        end_ms: u64,
    ) -> Reservation {
        Reservation {
            id: id(rid),
            holder: NodeId::from(holder),
            req,
            priority: Priority::Normal,
            task_type: "train".to_string(),
            start_ms,
            end_ms,
            // Ignored by `book`.
            gpus: gpus(&[1]),
            status: ReservationStatus::Expired,
            created_at_ms: 7,
            condition: None,
            condition_met_ms: None,
            shared_with: None,
        }
    }

    /// A lease of `cores` cores (and `gpu` = (index, memory)) for tests.
    fn lease(lid: &str, cores: u32, gpu: Option<(u32, u64)>) -> Lease {
        Lease {
            lease_id: id(lid),
            request_id: format!("req-{lid}"),
            node_id: NodeId::from("owner"),
            holder: NodeId::from("h"),
            cpu_cores: cores,
            memory_mb: 0,
            disk_mb: 0,
            gpus: gpu
                .map(|(index, memory_mb)| vec![GpuSlot { index, memory_mb }])
                .unwrap_or_default(),
            custom: BTreeMap::new(),
            models: Vec::new(),
            task_type: String::new(),
            priority: Priority::Normal,
            created_at_ms: NOW,
            expires_at_ms: NOW + MIN,
            lease_ms: MIN,
        }
    }

    fn reason(r: Result<Reservation, Denial>) -> DenyReason {
        r.unwrap_err().reason
    }

    #[test]
    fn book_confirms_and_records_gpus_and_time() {
        let mut c = cal();
        let req = ResourceRequirements {
            cpu_cores: 2,
            memory_mb: 1_024,
            gpu_count: 1,
            gpu_memory_mb: 6_000,
            custom: [("api_quota".to_string(), 3), ("zero".to_string(), 0)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let got = c
            .book(
                res("a", "h", req, NOW + HOUR, NOW + 2 * HOUR),
                &cap(),
                &[],
                NOW,
            )
            .unwrap();
        assert_eq!(got.status, ReservationStatus::Confirmed);
        assert_eq!(got.created_at_ms, NOW);
        assert_eq!(
            got.gpus,
            vec![GpuSlot {
                index: 0,
                memory_mb: 6_000
            }]
        );
        assert_eq!(c.get(&id("a")), Some(&got));
        assert_eq!(c.list(), vec![got.clone()]);
        assert_eq!(c.live_len(), 1);
        assert_eq!(c.next_event(), Some(NOW + HOUR));
        // What it holds: zero custom amounts are left out.
        let held = got.holds();
        assert_eq!(held.cpu_cores, 2);
        assert_eq!(held.memory_mb, 1_024);
        assert_eq!(
            held.custom,
            [("api_quota".to_string(), 3)].into_iter().collect()
        );
    }

    #[test]
    fn a_start_in_the_past_is_refused() {
        let mut c = cal();
        let d = c
            .book(res("a", "h", cpu(1), NOW - 1, NOW + HOUR), &cap(), &[], NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("starts in the past"), "{}", d.message);
        // Starting right now is fine.
        c.book(res("b", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
    }

    #[test]
    fn an_empty_or_negative_window_is_refused() {
        let mut c = cal();
        for (start, end) in [(NOW + HOUR, NOW + HOUR), (NOW + HOUR, NOW + 1)] {
            let d = c
                .book(res("a", "h", cpu(1), start, end), &cap(), &[], NOW)
                .unwrap_err();
            assert_eq!(d.reason, DenyReason::BadRequest);
            assert!(d.message.contains("empty window"), "{}", d.message);
        }
        assert!(c.is_empty());
        // One millisecond is a window.
        c.book(res("a", "h", cpu(1), NOW, NOW + 1), &cap(), &[], NOW)
            .unwrap();
    }

    #[test]
    fn beyond_the_horizon_or_too_long_is_refused() {
        let mut c = Calendar::new(16, DAY);
        let d = c
            .book(
                res("a", "h", cpu(1), NOW + DAY + 1, NOW + DAY + 2),
                &cap(),
                &[],
                NOW,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("horizon"), "{}", d.message);
        let d = c
            .book(
                res("a", "h", cpu(1), NOW, NOW + MAX_WINDOW_MS + 1),
                &cap(),
                &[],
                NOW,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("longer"), "{}", d.message);
        assert!(c.is_empty());
        // Exactly at both limits is fine.
        c.book(
            res("a", "h", cpu(1), NOW + DAY, NOW + DAY + MAX_WINDOW_MS),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
    }

    const DAY: u64 = 24 * HOUR;

    #[test]
    fn an_empty_request_or_a_used_id_is_refused() {
        let mut c = cal();
        let d = c
            .book(
                res("a", "h", ResourceRequirements::default(), NOW, NOW + HOUR),
                &cap(),
                &[],
                NOW,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        assert!(d.message.contains("no resources"), "{}", d.message);
        c.book(res("a", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        let before = c.snapshot();
        assert_eq!(
            reason(c.book(res("a", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)),
            DenyReason::BadRequest
        );
        // Still refused once finished (until pruned).
        c.cancel(&id("a"), None).unwrap();
        assert_eq!(
            reason(c.book(res("a", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)),
            DenyReason::BadRequest
        );
        // The id of a current lease is taken too.
        let l = lease("b", 1, None);
        assert_eq!(
            reason(c.book(
                res("b", "h", cpu(1), NOW, NOW + HOUR),
                &cap(),
                &[(l, NOW + MIN)],
                NOW
            )),
            DenyReason::BadRequest
        );
        assert_eq!(c.snapshot().len(), before.len());
    }

    #[test]
    fn an_overlap_that_does_not_fit_is_refused_and_changes_nothing() {
        let mut c = cal();
        c.book(
            res("a", "h", cpu(6), NOW + HOUR, NOW + 3 * HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        let before = c.snapshot();
        // Overlaps only the last millisecond of "a".
        let d = c
            .book(
                res("b", "h", cpu(3), NOW + 3 * HOUR - 1, NOW + 4 * HOUR),
                &cap(),
                &[],
                NOW,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("cpu_cores"), "{}", d.message);
        assert_eq!(c.snapshot(), before);
        // Custom resources the node does not lend never fit.
        let mut other = cpu(0);
        other.custom.insert("db_conn".into(), 1);
        assert_eq!(
            reason(c.book(res("c", "h", other, NOW, NOW + HOUR), &cap(), &[], NOW)),
            DenyReason::InsufficientCapacity
        );
        assert_eq!(c.snapshot(), before);
    }

    #[test]
    fn an_overlap_that_fits_and_back_to_back_windows_are_accepted() {
        let mut c = cal();
        c.book(
            res("a", "h", cpu(6), NOW + HOUR, NOW + 3 * HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        // 6 + 2 = 8: fits exactly.
        c.book(
            res("b", "h", cpu(2), NOW + 2 * HOUR, NOW + 4 * HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        // The end is excluded: "c" starts as "a" ends (b's 2 + 6 = 8).
        c.book(
            res("c", "h", cpu(6), NOW + 3 * HOUR, NOW + 5 * HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        // And before "a" starts, the whole node is free.
        c.book(res("d", "h", cpu(8), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        // Sums over time, not over every reservation ever: at no instant do
        // more than 8 cores add up, although a + b + c + d = 22.
        assert_eq!(c.peak_reserved(NOW, NOW + 5 * HOUR).cpu_cores, 8);
        assert_eq!(c.peak_reserved(NOW + 2 * HOUR, NOW + 3 * HOUR).cpu_cores, 8);
        assert_eq!(c.peak_reserved(NOW + 4 * HOUR, NOW + 5 * HOUR).cpu_cores, 6);
        assert_eq!(
            c.peak_reserved(NOW + 5 * HOUR, NOW + 6 * HOUR),
            Capacity::default()
        );
        assert_eq!(
            c.peak_reserved(NOW + 2 * HOUR, NOW + 2 * HOUR),
            Capacity::default()
        );
    }

    #[test]
    fn lasting_leases_count_and_expiring_ones_do_not() {
        let mut c = cal();
        let window = (NOW + HOUR, NOW + 2 * HOUR);
        // Gone before the window starts: does not count.
        let short = (lease("s", 8, None), NOW + HOUR);
        c.book(
            res("a", "h", cpu(8), window.0, window.1),
            &cap(),
            &[short],
            NOW,
        )
        .unwrap();
        // Open-ended: counts over every window.
        let mut c = cal();
        let open = (lease("o", 4, None), u64::MAX);
        let d = c
            .book(
                res("a", "h", cpu(5), NOW + 20 * DAY, NOW + 21 * DAY),
                &cap(),
                std::slice::from_ref(&open),
                NOW,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        c.book(
            res("a", "h", cpu(4), NOW + 20 * DAY, NOW + 21 * DAY),
            &cap(),
            &[open],
            NOW,
        )
        .unwrap();
        // Ending inside the window: counts.
        let mut c = cal();
        let mid = (lease("m", 4, None), NOW + HOUR + 1);
        assert_eq!(
            reason(c.book(
                res("a", "h", cpu(5), window.0, window.1),
                &cap(),
                &[mid],
                NOW
            )),
            DenyReason::InsufficientCapacity
        );
    }

    #[test]
    fn an_active_reservations_own_lease_is_counted_once() {
        let node = NodeId::from("owner");
        let mut c = cal();
        c.book(res("a", "h", cpu(6), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        let started = c.start_due(NOW);
        assert_eq!(started.len(), 1);
        let own = started[0].lease(&node, NOW);
        assert_eq!(own.expires_at_ms, NOW + HOUR);
        // 6 (a, active, with its lease) + 2 fits; 6 + 6 + 2 would not.
        c.book(
            res("b", "h", cpu(2), NOW, NOW + HOUR),
            &cap(),
            &[(own.clone(), NOW + HOUR)],
            NOW,
        )
        .unwrap();
        // If the lease was renewed past the window, the part past it counts.
        assert_eq!(
            reason(c.book(
                res("c", "h", cpu(3), NOW + HOUR, NOW + 2 * HOUR),
                &cap(),
                &[(own.clone(), NOW + HOUR + 1)],
                NOW
            )),
            DenyReason::InsufficientCapacity
        );
        // For new leases only the confirmed ones are held back: "a" already
        // holds its lease.
        assert_eq!(c.peak_pending(NOW, NOW + HOUR).cpu_cores, 2);
        assert_eq!(c.peak_reserved(NOW, NOW + HOUR).cpu_cores, 8);
    }

    #[test]
    fn gpu_assignment_avoids_reserved_gpus() {
        let mut c = cal();
        let w = (NOW + HOUR, NOW + 2 * HOUR);
        let a = c
            .book(res("a", "h", gpu_mem(1, 0), w.0, w.1), &cap(), &[], NOW)
            .unwrap();
        // A whole GPU records all its memory.
        assert_eq!(
            a.gpus,
            vec![GpuSlot {
                index: 0,
                memory_mb: 8_000
            }]
        );
        // Overlapping: gets the other GPU.
        let b = c
            .book(
                res("b", "h", gpu_mem(1, 1_000), w.0 + 1, w.1 + 1),
                &cap(),
                &[],
                NOW,
            )
            .unwrap();
        assert_eq!(b.gpus[0].index, 1);
        // Overlapping both: GPU 1 still has 7 000 MiB over the window.
        let d = c
            .book(res("c", "h", gpu_mem(1, 7_001), w.0, w.1), &cap(), &[], NOW)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(d.message.contains("gpus"), "{}", d.message);
        let cc = c
            .book(res("c", "h", gpu_mem(1, 7_000), w.0, w.1), &cap(), &[], NOW)
            .unwrap();
        assert_eq!(cc.gpus[0].index, 1);
        // No whole GPU while "a" holds GPU 0 and "b" part of GPU 1.
        assert_eq!(
            reason(c.book(res("d", "h", gpu_mem(1, 0), w.1 - 1, w.1), &cap(), &[], NOW)),
            DenyReason::InsufficientCapacity
        );
        // At "a"'s end (excluded) GPU 0 is whole again; GPU 1 is still
        // partly held by "b" for one more millisecond.
        let d = c
            .book(res("d", "h", gpu_mem(1, 0), w.1, w.1 + 1), &cap(), &[], NOW)
            .unwrap();
        assert_eq!(d.gpus[0].index, 0);
        // After "b" ends both are free again.
        let e = c
            .book(
                res("e", "h", gpu_mem(2, 0), w.1 + 1, w.1 + HOUR),
                &cap(),
                &[],
                NOW,
            )
            .unwrap();
        assert_eq!(e.gpus, gpus(&[8_000, 8_000]));
        // A lease on GPU 0 that outlasts the window steers the booking away.
        let l = (lease("l", 0, Some((0, 100))), u64::MAX);
        let f = c
            .book(
                res("f", "h", gpu_mem(1, 0), w.1 + 2 * HOUR, w.1 + 3 * HOUR),
                &cap(),
                &[l],
                NOW,
            )
            .unwrap();
        assert_eq!(f.gpus[0].index, 1);
        // Per-GPU peaks.
        let p = c.peak_reserved(w.0, w.1 + 1);
        assert_eq!(
            p.gpus,
            vec![
                GpuSlot {
                    index: 0,
                    memory_mb: 8_000
                },
                GpuSlot {
                    index: 1,
                    memory_mb: 8_000
                }
            ]
        );
    }

    #[test]
    fn available_is_what_fit_sees() {
        let mut c = cal();
        c.book(
            res("a", "h", gpu_mem(1, 3_000), NOW, NOW + HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        let l = (lease("l", 3, Some((1, 500))), NOW + 30 * MIN);
        let got = c.available(&cap(), std::slice::from_ref(&l), NOW, NOW + HOUR);
        assert_eq!(got.cpu_cores, 5);
        assert_eq!(got.gpus, gpus(&[5_000, 7_500]));
        assert_eq!(got.custom, cap().custom);
        assert_eq!(c.available(&cap(), &[l], NOW + HOUR, NOW + 2 * HOUR), cap());
    }

    #[test]
    fn busy_when_full_and_finished_entries_make_room() {
        let mut c = Calendar::new(2, DEFAULT_HORIZON_MS);
        c.book(res("a", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        c.book(res("b", "h", cpu(1), NOW, NOW + 2 * HOUR), &cap(), &[], NOW)
            .unwrap();
        let d = c
            .book(
                res("c", "h", cpu(1), NOW + 10, NOW + HOUR),
                &cap(),
                &[],
                NOW + 10,
            )
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::Busy);
        assert_eq!(d.retry_after_ms, Some(HOUR - 10));
        // One finishes: still kept, but a booking may push it out.
        c.cancel(&id("a"), None).unwrap();
        assert_eq!(c.len(), 2);
        c.book(res("c", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.get(&id("a")).is_none());
        // No reservations at all.
        let mut none = Calendar::new(0, DEFAULT_HORIZON_MS);
        assert_eq!(
            reason(none.book(res("a", "h", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)),
            DenyReason::Unsatisfiable
        );
    }

    #[test]
    fn cancel_and_release_check_the_holder() {
        let mut c = cal();
        c.book(
            res("a", "alice", cpu(1), NOW + HOUR, NOW + 2 * HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        c.book(res("b", "alice", cpu(1), NOW, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        let d = c.cancel(&id("a"), Some(&NodeId::from("bob"))).unwrap_err();
        assert_eq!(d.reason, DenyReason::NotHolder);
        assert_eq!(
            c.get(&id("a")).unwrap().status,
            ReservationStatus::Confirmed
        );
        assert_eq!(
            c.cancel(&id("nope"), None).unwrap_err().reason,
            DenyReason::UnknownLease
        );
        // Before start: cancelled, by the holder.
        let a = c.cancel(&id("a"), Some(&NodeId::from("alice"))).unwrap();
        assert_eq!(a.status, ReservationStatus::Cancelled);
        assert_eq!(
            c.cancel(&id("a"), None).unwrap_err().reason,
            DenyReason::UnknownLease
        );
        // While active: released, by the admin.
        c.start_due(NOW);
        let b = c.cancel(&id("b"), None).unwrap();
        assert_eq!(b.status, ReservationStatus::Released);
        assert!(c.list().is_empty());
        assert_eq!(c.next_event(), None);
        assert_eq!(c.peak_reserved(0, u64::MAX), Capacity::default());
        // Both kept until pruned.
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn transitions_happen_at_the_boundaries() {
        let mut c = cal();
        c.book(res("a", "h", cpu(1), NOW + 10, NOW + 20), &cap(), &[], NOW)
            .unwrap();
        c.book(res("b", "h", cpu(1), NOW + 10, NOW + 30), &cap(), &[], NOW)
            .unwrap();
        assert_eq!(c.next_event(), Some(NOW + 10));
        assert!(c.start_due(NOW + 9).is_empty());
        assert!(c.end_due(NOW + 9).is_empty());
        let s = c.start_due(NOW + 10);
        assert_eq!(
            s.iter().map(|r| r.id.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(s.iter().all(|r| r.status == ReservationStatus::Active));
        assert!(c.start_due(NOW + 15).is_empty(), "each starts once");
        assert_eq!(c.next_event(), Some(NOW + 20));
        assert!(c.end_due(NOW + 19).is_empty());
        let e = c.end_due(NOW + 20);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].id, id("a"));
        assert_eq!(e[0].status, ReservationStatus::Expired);
        assert_eq!(c.next_event(), Some(NOW + 30));
        assert_eq!(c.end_due(NOW + 1_000).len(), 1);
        assert_eq!(c.next_event(), None);
    }

    #[test]
    fn a_window_missed_entirely_expires_without_starting() {
        let mut c = cal();
        c.book(res("a", "h", cpu(1), NOW + 10, NOW + 20), &cap(), &[], NOW)
            .unwrap();
        // The node was down from before the start until after the end.
        assert_eq!(c.next_event(), Some(NOW + 10));
        assert!(c.start_due(NOW + 25).is_empty());
        let e = c.end_due(NOW + 25);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].status, ReservationStatus::Expired);
        assert!(c.start_due(NOW + 25).is_empty());
        assert_eq!(c.next_event(), None);
    }

    #[test]
    fn prune_forgets_old_finished_entries_only() {
        let mut c = cal();
        c.book(res("a", "h", cpu(1), NOW, NOW + 10), &cap(), &[], NOW)
            .unwrap();
        c.book(res("b", "h", cpu(1), NOW, NOW + 100), &cap(), &[], NOW)
            .unwrap();
        c.book(res("live", "h", cpu(1), NOW, NOW + 10), &cap(), &[], NOW)
            .unwrap();
        c.cancel(&id("a"), None).unwrap();
        c.cancel(&id("b"), None).unwrap();
        c.prune(NOW + 14, 5);
        assert_eq!(c.len(), 3);
        c.prune(NOW + 15, 5);
        assert!(c.get(&id("a")).is_none());
        assert!(c.get(&id("b")).is_some());
        // A live one stays even long after its end (end_due not yet run).
        c.prune(u64::MAX, u64::MAX);
        assert!(c.get(&id("live")).is_some());
        c.prune(u64::MAX, 0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn snapshot_and_restore_round_trip() {
        let mut c = cal();
        c.book(
            res("a", "h", gpu_mem(1, 0), NOW + 10, NOW + 20),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        c.book(res("b", "h", cpu(1), NOW, NOW + 20), &cap(), &[], NOW)
            .unwrap();
        c.book(res("x", "h", cpu(1), NOW, NOW + 5), &cap(), &[], NOW)
            .unwrap();
        c.start_due(NOW);
        c.cancel(&id("x"), None).unwrap();
        let snap = c.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains("\"status\":\"active\""), "{json}");
        assert!(json.contains("\"status\":\"released\""), "{json}");
        let bytes = postcard::to_stdvec(&snap).unwrap();
        let back: Vec<Reservation> = postcard::from_bytes(&bytes).unwrap();
        let mut fresh = cal();
        assert!(fresh.restore(back.clone(), NOW + 1).is_empty());
        assert_eq!(fresh.snapshot(), snap);
        assert_eq!(fresh.list(), c.list());
        assert_eq!(fresh.next_event(), c.next_event());
        assert_eq!(
            fresh.peak_reserved(0, u64::MAX),
            c.peak_reserved(0, u64::MAX)
        );
        // Restoring again skips what is there and refuses nothing.
        assert!(fresh.restore(back, NOW + 1).is_empty());
        assert_eq!(fresh.snapshot(), snap);
    }

    #[test]
    fn restore_is_bounded_and_refuses_empty_windows() {
        let mut c = cal();
        for (i, start) in [30u64, 10, 20].into_iter().enumerate() {
            c.book(
                res(&format!("r{i}"), "h", cpu(1), NOW + start, NOW + 40),
                &cap(),
                &[],
                NOW,
            )
            .unwrap();
        }
        c.book(res("done", "h", cpu(1), NOW, NOW + 5), &cap(), &[], NOW)
            .unwrap();
        c.cancel(&id("done"), None).unwrap();
        let mut stored = c.snapshot();
        let mut broken = stored[0].clone();
        broken.id = id("broken");
        broken.end_ms = broken.start_ms;
        stored.push(broken);

        let mut small = Calendar::new(2, DEFAULT_HORIZON_MS);
        let refused = small.restore(stored, NOW);
        let list = small.list();
        let kept: Vec<&str> = list.iter().map(|r| r.id.0.as_str()).collect();
        // Live ones first, earliest start first.
        assert_eq!(kept, ["r1", "r2"]);
        let mut refused: Vec<&str> = refused.iter().map(|r| r.id.0.as_str()).collect();
        refused.sort();
        assert_eq!(refused, ["broken", "done", "r0"]);
    }

    #[test]
    fn a_reservations_lease_goes_into_the_ledger_as_booked() {
        use crate::core::ledger::{LeaseLimits, Ledger};
        let node = NodeId::from("owner");
        let mut c = cal();
        let mut req = gpu_mem(1, 2_000);
        req.cpu_cores = 2;
        req.preferred_models = vec!["llama3".into()];
        c.book(res("a", "h", req, NOW + 10, NOW + HOUR), &cap(), &[], NOW)
            .unwrap();
        let started = c.start_due(NOW + 10);
        let lease = started[0].lease(&node, NOW + 10);
        assert_eq!(lease.lease_id, id("a"));
        assert_eq!(lease.holder, NodeId::from("h"));
        assert_eq!(lease.gpus, started[0].gpus);
        assert_eq!(lease.models, vec!["llama3".to_string()]);
        assert_eq!(lease.expires_at_ms, NOW + HOUR);
        assert_eq!(lease.lease_ms, HOUR - 10);
        let mut ledger = Ledger::new(node, cap(), LeaseLimits::default());
        assert!(ledger.restore(vec![lease.clone()], NOW + 10).is_empty());
        assert_eq!(ledger.get(&id("a")), Some(&lease));
    }

    fn when(mut r: Reservation, c: Condition) -> Reservation {
        r.condition = Some(c);
        r
    }

    fn pooled(mut r: Reservation, group: &str) -> Reservation {
        r.shared_with = Some(GroupId(group.to_string()));
        r
    }

    fn status(c: &Calendar, rid: &str) -> ReservationStatus {
        c.get(&id(rid)).map(|r| r.status).expect("kept")
    }

    fn ids(rs: &[Reservation]) -> Vec<&str> {
        rs.iter().map(|r| r.id.0.as_str()).collect()
    }

    #[test]
    fn a_waiting_reservation_holds_its_capacity_until_its_event() {
        let mut c = cal();
        let r = when(
            res("r", "h", cpu(6), NOW + MIN, NOW + HOUR),
            Condition::Event("go".into()),
        );
        c.book(r, &cap(), &[], NOW).unwrap();
        assert!(c.start_due(NOW + MIN).is_empty());
        assert_eq!(status(&c, "r"), ReservationStatus::Waiting);
        // Still held: a lease may not take its cores, nor a booking.
        assert_eq!(c.peak_pending(NOW + MIN, NOW + 2 * MIN).cpu_cores, 6);
        let other = res("o", "h2", cpu(4), NOW + 2 * MIN, NOW + 3 * MIN);
        assert_eq!(
            reason(c.book(other, &cap(), &[], NOW + MIN)),
            DenyReason::InsufficientCapacity
        );
        // Nothing is due while it waits (no busy timer).
        assert_eq!(c.next_event(), Some(NOW + HOUR));
        // Another holder's event does not count; its holder's does.
        assert!(c
            .post_event("go", Some(&NodeId::from("h2")), NOW + 2 * MIN)
            .is_empty());
        assert!(c
            .post_event("stop", Some(&NodeId::from("h")), NOW + 2 * MIN)
            .is_empty());
        assert_eq!(
            c.post_event("go", Some(&NodeId::from("h")), NOW + 2 * MIN),
            vec![id("r")]
        );
        assert!(c.next_event().is_some_and(|t| t <= NOW + 2 * MIN));
        let started = c.start_due(NOW + 2 * MIN);
        assert_eq!(ids(&started), vec!["r"]);
        assert_eq!(started[0].condition_met_ms, Some(NOW + 2 * MIN));
        assert_eq!(status(&c, "r"), ReservationStatus::Active);
        // Posting again changes nothing.
        assert!(c.post_event("go", None, NOW + 3 * MIN).is_empty());
    }

    #[test]
    fn an_event_posted_before_the_window_starts_it_on_time() {
        let mut c = cal();
        let r = when(
            res("r", "h", cpu(1), NOW + MIN, NOW + HOUR),
            Condition::Event("go".into()),
        );
        // Posted before the booking: does not count.
        assert!(c.post_event("go", None, NOW).is_empty());
        c.book(r, &cap(), &[], NOW).unwrap();
        assert_eq!(c.post_event("go", None, NOW + 1), vec![id("r")]);
        assert_eq!(status(&c, "r"), ReservationStatus::Confirmed);
        assert!(c.start_due(NOW + MIN - 1).is_empty());
        assert_eq!(ids(&c.start_due(NOW + MIN)), vec!["r"]);
    }

    #[test]
    fn a_reservation_waiting_on_another_starts_with_it() {
        let mut c = cal();
        c.book(
            res("a", "h", cpu(2), NOW + MIN, NOW + HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        let b = when(
            res("b", "h", cpu(2), NOW, NOW + HOUR),
            Condition::Reservation(id("a")),
        );
        let c2 = when(
            res("c", "h", cpu(2), NOW, NOW + HOUR),
            Condition::Reservation(id("b")),
        );
        c.book(b, &cap(), &[], NOW).unwrap();
        c.book(c2, &cap(), &[], NOW).unwrap();
        assert!(c.start_due(NOW).is_empty());
        assert_eq!(status(&c, "b"), ReservationStatus::Waiting);
        // a starts, b was waiting on it, c on b: all three in one call.
        let started = c.start_due(NOW + MIN);
        assert_eq!(ids(&started), vec!["b", "c", "a"]);
        // Waiting on one already active: holds at booking.
        let d = when(
            res("d", "h", cpu(1), NOW + 2 * MIN, NOW + HOUR),
            Condition::Reservation(id("a")),
        );
        let d = c.book(d, &cap(), &[], NOW + MIN).unwrap();
        assert_eq!(d.condition_met_ms, Some(NOW + MIN));
    }

    #[test]
    fn unmet_at_the_end_and_so_is_everything_waiting_on_it() {
        let mut c = cal();
        let a = when(
            res("a", "h", cpu(1), NOW, NOW + MIN),
            Condition::Event("go".into()),
        );
        let b = when(
            res("b", "h", cpu(1), NOW, NOW + HOUR),
            Condition::Reservation(id("a")),
        );
        let plain = res("p", "h", cpu(1), NOW + 2 * MIN, NOW + 3 * MIN);
        c.book(a, &cap(), &[], NOW).unwrap();
        c.book(b, &cap(), &[], NOW).unwrap();
        c.book(plain, &cap(), &[], NOW).unwrap();
        assert!(c.start_due(NOW).is_empty());
        let ended = c.end_due(NOW + MIN);
        assert_eq!(ids(&ended), vec!["a", "b"]);
        assert_eq!(status(&c, "a"), ReservationStatus::Unmet);
        assert_eq!(status(&c, "b"), ReservationStatus::Unmet);
        assert_eq!(c.peak_pending(NOW + MIN, NOW + HOUR).cpu_cores, 1);
        // A plain reservation that never started still expires.
        let ended = c.end_due(NOW + 3 * MIN);
        assert_eq!(ids(&ended), vec!["p"]);
        assert_eq!(status(&c, "p"), ReservationStatus::Expired);
    }

    #[test]
    fn cancelling_makes_what_waits_on_it_unmet_at_the_next_end_due() {
        let mut c = cal();
        c.book(
            res("a", "h", cpu(1), NOW + MIN, NOW + HOUR),
            &cap(),
            &[],
            NOW,
        )
        .unwrap();
        let b = when(
            res("b", "h", cpu(1), NOW + MIN, NOW + HOUR),
            Condition::Reservation(id("a")),
        );
        c.book(b, &cap(), &[], NOW).unwrap();
        c.cancel(&id("a"), None).unwrap();
        assert_eq!(status(&c, "b"), ReservationStatus::Unmet);
        assert_eq!(c.next_event(), Some(0));
        assert_eq!(ids(&c.end_due(NOW)), vec!["b"]);
        assert_eq!(c.next_event(), None);
    }

    #[test]
    fn bad_conditions_are_refused_and_change_nothing() {
        let mut c = cal();
        c.book(res("done", "h", cpu(1), NOW, NOW + MIN), &cap(), &[], NOW)
            .unwrap();
        c.cancel(&id("done"), None).unwrap();
        let before = c.snapshot();
        for (r, why) in [
            (
                when(
                    res("r", "h", cpu(1), NOW, NOW + MIN),
                    Condition::Event(String::new()),
                ),
                "empty",
            ),
            (
                when(
                    res("r", "h", cpu(1), NOW, NOW + MIN),
                    Condition::Event("a b".into()),
                ),
                "has",
            ),
            (
                when(
                    res("r", "h", cpu(1), NOW, NOW + MIN),
                    Condition::Event("x".repeat(65)),
                ),
                "longer",
            ),
            (
                when(
                    res("r", "h", cpu(1), NOW, NOW + MIN),
                    Condition::Reservation(id("r")),
                ),
                "itself",
            ),
            (
                when(
                    res("r", "h", cpu(1), NOW, NOW + MIN),
                    Condition::Reservation(id("nope")),
                ),
                "does not hold",
            ),
            (
                when(
                    res("r", "h", cpu(1), NOW, NOW + MIN),
                    Condition::Reservation(id("done")),
                ),
                "never hold",
            ),
            (pooled(res("r", "h", cpu(1), NOW, NOW + MIN), ""), "no name"),
        ] {
            let d = c.book(r, &cap(), &[], NOW).unwrap_err();
            assert_eq!(d.reason, DenyReason::BadRequest, "{d}");
            assert!(d.message.contains(why), "{d}");
        }
        assert_eq!(c.snapshot(), before);
        assert!(validate_event_name("data-ready.v2:ok_1").is_ok());
    }

    #[test]
    fn a_pooled_reservation_lends_up_to_its_size_to_its_group() {
        let mut c = cal();
        let mut req = cpu(4);
        req.gpu_count = 1;
        req.gpu_memory_mb = 6_000;
        let r = pooled(res("p", "h", req, NOW + MIN, NOW + HOUR), "lab");
        c.book(r, &cap(), &[], NOW).unwrap();
        let h = NodeId::from("h");
        let m = NodeId::from("m");
        let mut two = cpu(2);
        two.gpu_count = 1;
        two.gpu_memory_mb = 4_000;
        // Not yet.
        let d = c.plan_draw(&id("p"), &m, true, &two, NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::Busy);
        assert_eq!(d.retry_after_ms, Some(MIN));
        assert_eq!(ids(&c.start_due(NOW + MIN)), vec!["p"]);
        // Outsiders may not draw; the holder and members may.
        let d = c
            .plan_draw(&id("p"), &NodeId::from("x"), false, &two, NOW + MIN)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::Forbidden);
        let (_, gpus) = c.plan_draw(&id("p"), &m, true, &two, NOW + MIN).unwrap();
        assert_eq!(gpus.len(), 1);
        let l1 = Lease {
            gpus: gpus.clone(),
            ..lease("d1", 2, None)
        };
        c.record_draw(&id("p"), &l1);
        let left = c.pool_left(&id("p")).unwrap();
        assert_eq!(left.cpu_cores, 2);
        assert_eq!(
            left.gpus,
            vec![GpuSlot {
                index: gpus[0].index,
                memory_mb: 2_000
            }]
        );
        // What is left is kept from other leases.
        assert_eq!(c.peak_pending(NOW + MIN, NOW + HOUR).cpu_cores, 2);
        // More GPU memory than is left: refused; the cores alone fit.
        let d = c
            .plan_draw(&id("p"), &h, false, &two, NOW + MIN)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientCapacity);
        assert!(c.plan_draw(&id("p"), &h, false, &cpu(2), NOW + MIN).is_ok());
        assert_eq!(
            c.plan_draw(&id("p"), &h, false, &cpu(3), NOW + MIN)
                .unwrap_err()
                .reason,
            DenyReason::InsufficientCapacity
        );
        // A draw counts once for a booking over its window.
        let room = c.available(&cap(), &[(l1.clone(), NOW + HOUR)], NOW + MIN, NOW + HOUR);
        assert_eq!(room.cpu_cores, 4);
        // Given back: all of it again.
        assert_eq!(c.undraw(&id("d1")), Some(id("p")));
        assert_eq!(c.pool_left(&id("p")).unwrap().cpu_cores, 4);
        // Not pooled: no draws.
        c.book(
            res("q", "h", cpu(1), NOW + MIN, NOW + HOUR),
            &cap(),
            &[],
            NOW + MIN,
        )
        .unwrap();
        let d = c
            .plan_draw(&id("q"), &h, false, &cpu(1), NOW + MIN)
            .unwrap_err();
        assert_eq!(d.reason, DenyReason::BadRequest);
        // Draws survive a restart only within their reservation.
        c.record_draw(&id("p"), &l1);
        let draws = c.draws();
        let mut fresh = cal();
        assert!(fresh.restore(c.snapshot(), NOW + MIN).is_empty());
        assert!(fresh.restore_draws(draws.clone()).is_empty());
        assert_eq!(fresh.pool_left(&id("p")), c.pool_left(&id("p")));
        let mut too_much = draws[0].clone();
        too_much.lease = id("d2");
        too_much.holds.cpu_cores = 3;
        assert_eq!(fresh.restore_draws(vec![too_much]).len(), 1);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut c = Calendar::new(4, u64::MAX);
        let huge = Capacity {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
            disk_mb: u64::MAX,
            gpus: vec![GpuSlot {
                index: u32::MAX,
                memory_mb: u64::MAX,
            }],
            custom: [("x".to_string(), u64::MAX)].into_iter().collect(),
        };
        let all = ResourceRequirements {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
            disk_mb: u64::MAX,
            gpu_count: 1,
            gpu_memory_mb: u64::MAX,
            custom: [("x".to_string(), u64::MAX)].into_iter().collect(),
            ..Default::default()
        };
        let start = u64::MAX - 10;
        c.book(
            res("a", "h", all.clone(), start, u64::MAX),
            &huge,
            &[],
            start,
        )
        .unwrap();
        assert_eq!(
            reason(c.book(
                res("b", "h", all.clone(), start, u64::MAX),
                &huge,
                &[],
                start
            )),
            DenyReason::InsufficientCapacity
        );
        // Restored entries beyond capacity saturate the sums instead of
        // overflowing.
        let mut twice = c.get(&id("a")).unwrap().clone();
        twice.id = id("twice");
        twice.gpus.push(twice.gpus[0].clone());
        assert!(c.restore(vec![twice], start).is_empty());
        let p = c.peak_reserved(0, u64::MAX);
        assert_eq!(p.cpu_cores, u32::MAX);
        assert_eq!(p.memory_mb, u64::MAX);
        assert_eq!(p.gpus[0].memory_mb, u64::MAX);
        assert_eq!(c.available(&huge, &[], start, u64::MAX).memory_mb, 0);
        let mut lease = c.get(&id("a")).unwrap().lease(&NodeId::from("n"), u64::MAX);
        assert_eq!(lease.lease_ms, 1);
        lease.lease_id = id("l");
        assert_eq!(
            reason(c.book(res("c", "h", cpu(1), 0, 1), &huge, &[(lease, u64::MAX)], 0)),
            DenyReason::InsufficientCapacity
        );
        assert_eq!(c.start_due(u64::MAX).len(), 0);
        assert_eq!(c.end_due(u64::MAX).len(), 2);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use std::collections::BTreeSet;

        const HOLDERS: [&str; 3] = ["h0", "h1", "h2"];
        /// Time grid: every start, end and step is a multiple of it, so
        /// boundaries often coincide with each other and with `now`.
        const STEP: u64 = 500;
        const MAX: usize = 6;
        const HORIZON: u64 = 30 * STEP;

        /// Sums keyed by dimension ("cpu", "mem", "disk", "gpu/<index>",
        /// "custom/<key>"), computed here without the sweep.
        type Sum = BTreeMap<String, u128>;

        fn add(sum: &mut Sum, c: &Capacity) {
            let mut put = |k: String, v: u64| *sum.entry(k).or_insert(0) += u128::from(v);
            put("cpu".into(), u64::from(c.cpu_cores));
            put("mem".into(), c.memory_mb);
            put("disk".into(), c.disk_mb);
            for g in &c.gpus {
                put(format!("gpu/{}", g.index), g.memory_mb);
            }
            for (k, v) in &c.custom {
                put(format!("custom/{k}"), *v);
            }
        }

        fn of(c: &Capacity) -> Sum {
            let mut s = Sum::new();
            add(&mut s, c);
            s
        }

        fn raise(peak: &mut Sum, s: &Sum) {
            for (k, v) in s {
                let e = peak.entry(k.clone()).or_insert(0);
                *e = (*e).max(*v);
            }
        }

        /// Every dimension of `s` within `cap` (absent in `cap` means 0).
        fn within(cap: &Capacity, s: &Sum, what: &str) -> Result<(), TestCaseError> {
            let c = of(cap);
            for (k, v) in s {
                let have = c.get(k).copied().unwrap_or(0);
                prop_assert!(*v <= have, "{what}: {k} {v} > {have}");
            }
            Ok(())
        }

        /// `cap` minus `s`, saturating, shaped like `cap`.
        fn minus(cap: &Capacity, s: &Sum) -> Capacity {
            let get = |k: String| s.get(&k).copied().unwrap_or(0);
            let left = |have: u64, k: String| {
                u64::try_from(u128::from(have).saturating_sub(get(k))).unwrap()
            };
            Capacity {
                cpu_cores: left(u64::from(cap.cpu_cores), "cpu".into()) as u32,
                memory_mb: left(cap.memory_mb, "mem".into()),
                disk_mb: left(cap.disk_mb, "disk".into()),
                gpus: cap
                    .gpus
                    .iter()
                    .map(|g| GpuSlot {
                        index: g.index,
                        memory_mb: left(g.memory_mb, format!("gpu/{}", g.index)),
                    })
                    .collect(),
                custom: cap
                    .custom
                    .iter()
                    .map(|(k, v)| (k.clone(), left(*v, format!("custom/{k}"))))
                    .collect(),
            }
        }

        fn overlaps(r: &Reservation, t: u64) -> bool {
            r.start_ms <= t && t < r.end_ms
        }

        /// Brute force: what live reservations (only `Confirmed` ones if
        /// `pending_only`) hold at `t`.
        fn reserved_at(model: &BTreeMap<LeaseId, Reservation>, t: u64, pending_only: bool) -> Sum {
            let mut s = Sum::new();
            for r in model.values() {
                let counted = if pending_only {
                    r.status == ReservationStatus::Confirmed
                } else {
                    r.is_live()
                };
                if counted && overlaps(r, t) {
                    add(&mut s, &r.holds());
                }
            }
            s
        }

        /// Brute force of what `book` counts at `t`: live reservations, and
        /// leases still there (a live reservation's own lease only past its
        /// window).
        fn booked_at(
            model: &BTreeMap<LeaseId, Reservation>,
            leases: &[(Lease, u64)],
            t: u64,
        ) -> Sum {
            let mut s = reserved_at(model, t, false);
            for (l, until) in leases {
                let from = match model.get(&l.lease_id) {
                    Some(r) if r.is_live() => r.end_ms,
                    _ => 0,
                };
                if from <= t && t < *until {
                    add(&mut s, &lease_holds(l));
                }
            }
            s
        }

        /// Every instant where some sum may change, plus `extra`.
        fn instants(
            model: &BTreeMap<LeaseId, Reservation>,
            leases: &[(Lease, u64)],
            extra: &[u64],
        ) -> BTreeSet<u64> {
            let mut ts: BTreeSet<u64> = extra.iter().copied().collect();
            for r in model.values() {
                ts.insert(r.start_ms);
                ts.insert(r.end_ms);
            }
            for (_, until) in leases {
                ts.insert(*until);
            }
            ts
        }

        fn arb_capacity() -> impl Strategy<Value = Capacity> {
            (
                0u32..6,
                prop_oneof![Just(0u64), 1_000u64..4_000],
                prop::collection::vec(prop_oneof![1 => Just(0u64), 4 => 2_000u64..8_000], 0..4),
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u64..5, 0..=2),
            )
                .prop_map(|(cpu_cores, memory_mb, gpus, custom)| Capacity {
                    cpu_cores,
                    memory_mb,
                    disk_mb: 1_000,
                    // Indices that are not positions, to catch mix-ups.
                    gpus: gpus
                        .into_iter()
                        .enumerate()
                        .map(|(i, memory_mb)| GpuSlot {
                            index: i as u32 * 2 + 1,
                            memory_mb,
                        })
                        .collect(),
                    custom: custom
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                })
        }

        fn arb_req() -> impl Strategy<Value = ResourceRequirements> {
            let gpu = prop_oneof![
                3 => Just((0u32, false, 0u64)),
                3 => (0u32..3, any::<bool>(), prop_oneof![Just(0u64), 500u64..5_000]),
            ];
            let custom = prop_oneof![
                3 => Just(BTreeMap::new()),
                // "c" is never lent.
                1 => prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b", "c"]), 0u64..4, 1..=2),
            ];
            (
                0u32..4,
                prop_oneof![Just(0u64), 0u64..2_000],
                0u64..400,
                gpu,
                custom,
            )
                .prop_map(|(cpu_cores, memory_mb, disk_mb, gpu, custom)| {
                    ResourceRequirements {
                        cpu_cores,
                        memory_mb,
                        disk_mb,
                        gpu_count: gpu.0,
                        gpu_required: gpu.1,
                        gpu_memory_mb: gpu.2,
                        preferred_models: Vec::new(),
                        custom: custom
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    }
                })
        }

        #[derive(Clone, Debug)]
        enum Op {
            /// Book over [now + start, now + start + len) steps (start may be
            /// in the past, len may be 0), with a fresh or reused id.
            Book {
                req: ResourceRequirements,
                holder: usize,
                start: i64,
                len: u64,
                reuse: Option<Index>,
            },
            /// Cancel any id ever used (or a never-used one), as a holder
            /// or the admin.
            Cancel {
                pick: Option<Index>,
                holder: Option<usize>,
            },
            /// A plain lease until now + len steps (None: open-ended),
            /// admitted the way the caller must: free now − peak_pending.
            Lease {
                req: ResourceRequirements,
                len: Option<u64>,
            },
            /// Release a plain lease early.
            EndLease(Index),
            Advance(u64),
            /// end_due, then start_due, at now.
            Due,
            /// Jump to next_event (if ahead), then end_due and start_due.
            Next,
            Restart,
            Prune(u64),
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (arb_req(), 0..3usize, -2i64..32, prop_oneof![1 => Just(0u64), 9 => 1u64..16],
                      prop::option::weighted(0.1, any::<Index>()))
                    .prop_map(|(req, holder, start, len, reuse)| {
                        Op::Book { req, holder, start, len, reuse }
                    }),
                2 => (prop::option::weighted(0.9, any::<Index>()), prop::option::of(0..3usize))
                    .prop_map(|(pick, holder)| Op::Cancel { pick, holder }),
                3 => (arb_req(), prop::option::weighted(0.7, 1u64..20))
                    .prop_map(|(req, len)| Op::Lease { req, len }),
                1 => any::<Index>().prop_map(Op::EndLease),
                3 => (0u64..6).prop_map(Op::Advance),
                3 => Just(Op::Due),
                2 => Just(Op::Next),
                1 => Just(Op::Restart),
                1 => (0u64..10).prop_map(Op::Prune),
            ]
        }

        struct World {
            cap: Capacity,
            cal: Calendar,
            /// What the calendar should hold: every entry, by id.
            model: BTreeMap<LeaseId, Reservation>,
            /// The node's leases, with the time each may run until.
            leases: Vec<(Lease, u64)>,
            ids: Vec<LeaseId>,
            started: BTreeSet<LeaseId>,
            now: u64,
            next: u64,
        }

        impl World {
            fn expected_book(&self, r: &Reservation) -> Result<Vec<GpuSlot>, DenyReason> {
                let now = self.now;
                let used = self.model.contains_key(&r.id)
                    || self.leases.iter().any(|(l, _)| l.lease_id == r.id);
                if r.req.is_empty()
                    || used
                    || r.start_ms < now
                    || r.end_ms <= r.start_ms
                    || r.end_ms - r.start_ms > MAX_WINDOW_MS
                    || r.start_ms > now + HORIZON
                {
                    return Err(DenyReason::BadRequest);
                }
                if self.model.values().filter(|r| r.is_live()).count() >= MAX {
                    return Err(DenyReason::Busy);
                }
                let mut peak = Sum::new();
                for t in instants(&self.model, &self.leases, &[r.start_ms]) {
                    if r.start_ms <= t && t < r.end_ms {
                        raise(&mut peak, &booked_at(&self.model, &self.leases, t));
                    }
                }
                fit(&minus(&self.cap, &peak), &self.cap, &r.req)
                    .map_err(|_| DenyReason::InsufficientCapacity)
            }

            /// Everything that must hold after every step.
            fn check(&self) -> Result<(), TestCaseError> {
                prop_assert_eq!(
                    self.cal.snapshot(),
                    self.model.values().cloned().collect::<Vec<_>>()
                );
                prop_assert!(self.cal.len() <= MAX);
                let mut live: Vec<Reservation> = self
                    .model
                    .values()
                    .filter(|r| r.is_live())
                    .cloned()
                    .collect();
                live.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
                prop_assert_eq!(self.cal.list(), live.clone());
                let next = live
                    .iter()
                    .filter(|r| r.status == ReservationStatus::Confirmed)
                    .map(|r| r.start_ms)
                    .chain(live.iter().map(|r| r.end_ms))
                    .min();
                prop_assert_eq!(self.cal.next_event(), next);
                let ts = instants(&self.model, &self.leases, &[self.now]);
                for t in &ts {
                    // (a) live reservations alone never exceed the capacity,
                    // in any dimension or on any GPU, at any instant.
                    within(&self.cap, &reserved_at(&self.model, *t, false), "reserved")?;
                    // And from now on, leases still there plus the
                    // reservations still waiting for theirs fit too: no
                    // reservation is left without room.
                    if *t >= self.now {
                        let mut s = reserved_at(&self.model, *t, true);
                        for (l, until) in &self.leases {
                            if *t < *until {
                                add(&mut s, &lease_holds(l));
                            }
                        }
                        within(&self.cap, &s, "leases + pending")?;
                    }
                }
                // (d) for the window from now, on the side.
                let to = self.now + 12 * STEP;
                let mut peak = Sum::new();
                let mut pending = Sum::new();
                for t in ts
                    .iter()
                    .filter(|t| **t >= self.now && **t < to)
                    .chain([&self.now])
                {
                    raise(&mut peak, &reserved_at(&self.model, *t, false));
                    raise(&mut pending, &reserved_at(&self.model, *t, true));
                }
                peak.retain(|_, v| *v > 0);
                pending.retain(|_, v| *v > 0);
                prop_assert_eq!(peak_nonzero(&self.cal.peak_reserved(self.now, to)), peak);
                prop_assert_eq!(peak_nonzero(&self.cal.peak_pending(self.now, to)), pending);
                Ok(())
            }

            fn due(&mut self) -> Result<(), TestCaseError> {
                let now = self.now;
                // (c) exactly the live ones whose end has come end, in order.
                let mut want_end: Vec<Reservation> = self
                    .model
                    .values()
                    .filter(|r| r.is_live() && r.end_ms <= now)
                    .cloned()
                    .collect();
                want_end.sort_by(|a, b| (a.end_ms, &a.id).cmp(&(b.end_ms, &b.id)));
                for r in &mut want_end {
                    r.status = ReservationStatus::Expired;
                    self.model.insert(r.id.clone(), r.clone());
                }
                let ended = self.cal.end_due(now);
                prop_assert_eq!(&ended, &want_end);
                for r in &ended {
                    self.leases.retain(|(l, _)| l.lease_id != r.id);
                }
                // ... and exactly the confirmed ones whose start has come
                // (and whose end has not) start, in order, once.
                let mut want_start: Vec<Reservation> = self
                    .model
                    .values()
                    .filter(|r| r.status == ReservationStatus::Confirmed && r.start_ms <= now)
                    .cloned()
                    .collect();
                want_start.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
                for r in &mut want_start {
                    prop_assert!(r.end_ms > now);
                    r.status = ReservationStatus::Active;
                    self.model.insert(r.id.clone(), r.clone());
                }
                let started = self.cal.start_due(now);
                prop_assert_eq!(&started, &want_start);
                for r in &started {
                    prop_assert!(self.started.insert(r.id.clone()), "{} started twice", r.id);
                    let lease = r.lease(&NodeId::from("owner"), now);
                    self.leases.push((lease, r.end_ms));
                }
                Ok(())
            }

            fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
                match op {
                    Op::Book {
                        req,
                        holder,
                        start,
                        len,
                        reuse,
                    } => {
                        let rid = match reuse {
                            Some(ix) if !self.ids.is_empty() => {
                                self.ids[ix.index(self.ids.len())].clone()
                            }
                            _ => {
                                self.next += 1;
                                let rid = LeaseId(format!("R{}", self.next));
                                self.ids.push(rid.clone());
                                rid
                            }
                        };
                        let start_ms = (self.now as i64 + start * STEP as i64) as u64;
                        let r = res(
                            &rid.0,
                            HOLDERS[holder],
                            req,
                            start_ms,
                            start_ms + len * STEP,
                        );
                        let expected = self.expected_book(&r);
                        let before = self.cal.snapshot();
                        let before_next = self.cal.next_event();
                        let got = self.cal.book(r.clone(), &self.cap, &self.leases, self.now);
                        match (got, expected) {
                            (Ok(b), Ok(gpus)) => {
                                prop_assert_eq!(&b.gpus, &gpus);
                                prop_assert_eq!(b.status, ReservationStatus::Confirmed);
                                prop_assert_eq!(b.created_at_ms, self.now);
                                prop_assert_eq!(b.gpus.len() as u32, r.req.gpus_wanted());
                                let expect = Reservation {
                                    gpus,
                                    status: ReservationStatus::Confirmed,
                                    created_at_ms: self.now,
                                    ..r
                                };
                                prop_assert_eq!(&b, &expect);
                                if self.model.len() >= MAX {
                                    let oldest = self
                                        .model
                                        .values()
                                        .filter(|r| !r.is_live())
                                        .min_by(|a, b| (a.end_ms, &a.id).cmp(&(b.end_ms, &b.id)))
                                        .map(|r| r.id.clone())
                                        .unwrap();
                                    self.model.remove(&oldest);
                                }
                                // A new reservation (its id may have been
                                // used by one pruned since).
                                self.started.remove(&b.id);
                                self.model.insert(b.id.clone(), b);
                            }
                            (Err(d), Err(reason)) => {
                                prop_assert_eq!(d.reason, reason, "{}", d.message);
                                // (b) a refusal changes nothing.
                                prop_assert_eq!(self.cal.snapshot(), before);
                                prop_assert_eq!(self.cal.next_event(), before_next);
                            }
                            (got, expected) => {
                                return Err(TestCaseError::fail(format!(
                                    "book {r:?}: got {got:?}, expected {expected:?}"
                                )))
                            }
                        }
                    }
                    Op::Cancel { pick, holder } => {
                        let rid = match pick {
                            Some(ix) if !self.ids.is_empty() => {
                                self.ids[ix.index(self.ids.len())].clone()
                            }
                            _ => LeaseId("never".into()),
                        };
                        let holder = holder.map(|h| NodeId::from(HOLDERS[h]));
                        let got = self.cal.cancel(&rid, holder.as_ref());
                        match self.model.get(&rid).cloned() {
                            None => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::UnknownLease)
                            }
                            Some(r) if !r.is_live() => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::UnknownLease)
                            }
                            Some(r) if holder.as_ref().is_some_and(|h| *h != r.holder) => {
                                prop_assert_eq!(got.unwrap_err().reason, DenyReason::NotHolder)
                            }
                            Some(mut r) => {
                                r.status = if r.status == ReservationStatus::Active {
                                    ReservationStatus::Released
                                } else {
                                    ReservationStatus::Cancelled
                                };
                                prop_assert_eq!(got, Ok(r.clone()));
                                self.leases.retain(|(l, _)| l.lease_id != r.id);
                                self.model.insert(rid, r);
                            }
                        }
                    }
                    Op::Lease { req, len } => {
                        let now = self.now;
                        let until = len.map_or(u64::MAX, |l| now + l * STEP);
                        let mut held = Sum::new();
                        for (l, u) in &self.leases {
                            if *u > now {
                                add(&mut held, &lease_holds(l));
                            }
                        }
                        let free = minus(&self.cap, &held);
                        let room = minus(&free, &of(&self.cal.peak_pending(now, until)));
                        if let (false, Ok(gpus)) = (req.is_empty(), fit(&room, &self.cap, &req)) {
                            self.next += 1;
                            let mut l = lease(&format!("L{}", self.next), req.cpu_cores, None);
                            l.memory_mb = req.memory_mb;
                            l.disk_mb = req.disk_mb;
                            l.gpus = gpus;
                            l.custom = req.custom.into_iter().filter(|(_, v)| *v > 0).collect();
                            self.leases.push((l, until));
                        }
                    }
                    Op::EndLease(ix) => {
                        let plain: Vec<usize> = (0..self.leases.len())
                            .filter(|i| self.leases[*i].0.lease_id.0.starts_with('L'))
                            .collect();
                        if !plain.is_empty() {
                            self.leases.remove(plain[ix.index(plain.len())]);
                        }
                    }
                    Op::Advance(steps) => {
                        self.now += steps * STEP;
                        let now = self.now;
                        // Leases run out at their hard end.
                        self.leases.retain(|(_, until)| *until > now);
                    }
                    Op::Due => self.due()?,
                    Op::Next => {
                        let before: Vec<Reservation> = self.cal.list();
                        let Some(at) = self.cal.next_event() else {
                            return Ok(());
                        };
                        self.now = self.now.max(at);
                        let now = self.now;
                        self.leases.retain(|(_, until)| *until > now);
                        self.due()?;
                        // Something happens at the next event.
                        prop_assert_ne!(self.cal.list(), before);
                    }
                    Op::Restart => {
                        let stored = self.cal.snapshot();
                        let bytes = postcard::to_stdvec(&stored).unwrap();
                        let decoded: Vec<Reservation> = postcard::from_bytes(&bytes).unwrap();
                        prop_assert_eq!(&decoded, &stored);
                        let mut fresh = Calendar::new(MAX, HORIZON);
                        let refused = fresh.restore(decoded, self.now);
                        prop_assert!(refused.is_empty());
                        self.cal = fresh;
                    }
                    Op::Prune(keep) => {
                        let (now, keep) = (self.now, keep * STEP);
                        self.cal.prune(now, keep);
                        self.model
                            .retain(|_, r| r.is_live() || r.end_ms + keep > now);
                    }
                }
                self.check()
            }
        }

        /// `c` as a [`Sum`] with zero entries left out.
        fn peak_nonzero(c: &Capacity) -> Sum {
            let mut s = of(c);
            s.retain(|_, v| *v > 0);
            s
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Random bookings, cancels, leases admitted against
            /// `peak_pending`, time steps, due transitions, restarts and
            /// prunes: (a) live reservations never exceed the capacity at
            /// any instant, in any dimension or on any GPU, and leases plus
            /// pending reservations fit from now on; (b) every booking is
            /// decided as a brute-force sweep decides it, and a refusal
            /// changes nothing; (c) start_due and end_due move exactly the
            /// reservations whose boundary has come, each started once;
            /// the calendar always matches a plain model of it.
            #[test]
            fn calendar_never_overbooks(
                cap in arb_capacity(),
                ops in prop::collection::vec(arb_op(), 1..120),
            ) {
                let mut w = World {
                    cap,
                    cal: Calendar::new(MAX, HORIZON),
                    model: BTreeMap::new(),
                    leases: Vec::new(),
                    ids: Vec::new(),
                    started: BTreeSet::new(),
                    now: NOW,
                    next: 0,
                };
                for op in ops {
                    w.step(op)?;
                }
            }

            /// (d) peak_reserved(from, to) is at least the usage at every
            /// instant of [from, to), and equal to the largest, per
            /// dimension, per GPU and per custom key.
            #[test]
            fn peak_reserved_is_the_max_over_the_window(
                books in prop::collection::vec(
                    (arb_req(), 0u64..40, 1u64..20, any::<bool>()), 0..24),
                from in 0u64..60,
                len in 0u64..40,
                probes in prop::collection::vec(0u64..40, 0..8),
            ) {
                let big = Capacity {
                    cpu_cores: 12,
                    memory_mb: 6_000,
                    disk_mb: 2_000,
                    gpus: vec![
                        GpuSlot { index: 1, memory_mb: 8_000 },
                        GpuSlot { index: 4, memory_mb: 4_000 },
                    ],
                    custom: [("a".to_string(), 6)].into_iter().collect(),
                };
                let mut c = Calendar::new(64, HORIZON * 4);
                for (i, (req, start, len, cancel)) in books.into_iter().enumerate() {
                    let start = NOW + start * STEP;
                    let rid = format!("r{i}");
                    let r = res(&rid, "h", req, start, start + len * STEP);
                    if c.book(r, &big, &[], NOW).is_ok() && cancel {
                        c.cancel(&id(&rid), None).unwrap();
                    }
                }
                let model: BTreeMap<LeaseId, Reservation> =
                    c.snapshot().into_iter().map(|r| (r.id.clone(), r)).collect();
                let (from, to) = (NOW + from * STEP, NOW + (from + len) * STEP);
                let got = peak_nonzero(&c.peak_reserved(from, to));
                let mut want = Sum::new();
                for t in instants(&model, &[], &[from]) {
                    if from <= t && t < to {
                        let at = reserved_at(&model, t, false);
                        within(&big, &at, "reserved")?;
                        raise(&mut want, &at);
                    }
                }
                want.retain(|_, v| *v > 0);
                prop_assert_eq!(&got, &want);
                // At least the usage at arbitrary instants of the window.
                for p in probes {
                    let t = from + p * (STEP / 4);
                    if t < to {
                        for (k, v) in reserved_at(&model, t, false) {
                            prop_assert!(v <= got.get(&k).copied().unwrap_or(0), "{k} at {t}");
                        }
                    }
                }
            }
        }
    }
}
