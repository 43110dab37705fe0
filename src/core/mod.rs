//! The sans-IO core: every decision, as plain synchronous code over
//! explicit inputs. Nothing here reads a clock or the OS RNG, or touches
//! tokio, libp2p, redb or axum; time comes in as `now_ms` and randomness as
//! a seed. The network shell in [`crate::net`] feeds events in and carries
//! the results out.
//!
//! - [`access`]: the access policy, and whether it admits a requester.
//! - [`roles`]: permissions per action, roles that bundle them, and which
//!   role a requester has (by peer id, by group, or the default).
//! - [`fit`]: whether a request fits in free capacity, and which GPUs.
//! - [`groups`]: swarm groups, merged as a CRDT of create, invite, join
//!   and leave events.
//! - [`pools`]: resource pools, named node sets merged as a last-writer-wins
//!   CRDT, and their aggregate capacity.
//! - [`ledger`]: the owner side. Leases, admission, GPU assignment, expiry.
//! - [`queue`]: the owner side. The wait queue: priority then FIFO order,
//!   deadlines, and drains by conservative backfill.
//! - [`preempt`]: the owner side. Which strictly lower-priority leases to
//!   end so that a request fits: fewest, then lowest, then smallest.
//! - [`elastic`]: the owner side. Elastic sharing: lendable CPU and memory
//!   shrink as the owner's own use rises and grow back when idle, with
//!   hysteresis, never under existing leases unless the owner says so.
//! - [`forecast`]: the owner side. Forecasts of the owner's own use (level,
//!   trend and a daily profile), so elastic sharing can shrink ahead of a
//!   predictable peak.
//! - [`throttle`]: the owner side. Per-peer token-bucket rate limits,
//!   bounded in memory.
//! - [`adaptive`]: the owner side. Adaptive throttling: the rate limit
//!   falls while the host is under pressure and recovers after (AIMD).
//! - [`contention`]: the owner side. Queued demand against free capacity,
//!   classified per dimension, with suggested resolutions.
//! - [`calendar`]: the owner side. Advance reservations of future windows,
//!   and how much of the node they keep out of reach of new leases.
//! - [`quota`]: the owner side. Quotas per requester, per group, default
//!   and swarm-wide, with timed burst allowances.
//! - [`view`]: the requester side. The peer table built from announcements.
//! - [`breaker`]: the requester side. Circuit breakers: peers whose
//!   allocations or tasks keep failing are not asked until a cool-down
//!   and one successful trial.
//! - [`placement`]: strategies that rank candidates, and the late-binding
//!   attempt that walks them.
//! - [`constraints`]: placement constraints (labels, zone, arch, GPU name
//!   and compute capability), and whether any node could ever serve.
//! - [`sched`]: the owner-side scheduler that composes the ledger, queue,
//!   calendar, quotas, rate limit and preemption.
//! - [`multi`]: requests split over several nodes, their plan, and the
//!   hold-then-confirm reservation lifecycle.
//! - [`history`]: the allocation history and audit log: its records, the
//!   query over them, and the retention rule.
//! - [`usage`]: usage accounting (resource-seconds per requester, group
//!   and node, in hourly buckets, with prices).
//! - [`bottleneck`]: which dimension refuses the most requests.

pub mod access;
pub mod adaptive;
pub mod bottleneck;
pub mod breaker;
pub mod calendar;
pub mod constraints;
pub mod contention;
pub mod elastic;
pub mod fairshare;
pub mod fit;
pub mod forecast;
pub mod groups;
pub mod health;
pub mod history;
pub mod ledger;
pub mod multi;
pub mod placement;
pub mod pools;
pub mod preempt;
pub mod queue;
pub mod quota;
pub mod roles;
pub mod sched;
pub mod tasks;
pub mod throttle;
pub mod usage;
pub mod utilization;
pub mod view;
