//! The sans-IO core: every decision, as plain synchronous code over
//! explicit inputs. Nothing here reads a clock or the OS RNG, or touches
//! tokio, libp2p, redb or axum; time comes in as `now_ms` and randomness as
//! a seed. The network shell in [`crate::net`] feeds events in and carries
//! the results out.
//!
//! - [`access`]: the access policy, and whether it admits a requester.
//! - [`fit`]: whether a request fits in free capacity, and which GPUs.
//! - [`groups`]: swarm groups, merged as a CRDT of create, invite, join
//!   and leave events.
//! - [`pools`]: resource pools, named node sets merged as a last-writer-wins
//!   CRDT, and their aggregate capacity.
//! - [`ledger`]: the owner side. Leases, admission, GPU assignment, expiry.
//! - [`view`]: the requester side. The peer table built from announcements.
//! - [`placement`]: strategies that rank candidates, and the late-binding
//!   attempt that walks them.

pub mod access;
pub mod fit;
pub mod groups;
pub mod ledger;
pub mod placement;
pub mod pools;
pub mod view;
