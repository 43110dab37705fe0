//! The sans-IO core: every decision, as plain synchronous code over
//! explicit inputs. Nothing here reads a clock or the OS RNG, or touches
//! tokio, libp2p, redb or axum; time comes in as `now_ms` and randomness as
//! a seed. The network shell in [`crate::net`] feeds events in and carries
//! the results out.
//!
//! - [`fit`]: whether a request fits in free capacity, and which GPUs.
//! - [`ledger`]: the owner side. Leases, admission, GPU assignment, expiry.
//! - [`view`]: the requester side. The peer table built from announcements.
//! - [`placement`]: strategies that rank candidates, and the late-binding
//!   attempt that walks them.

pub mod fit;
pub mod ledger;
pub mod placement;
pub mod view;
