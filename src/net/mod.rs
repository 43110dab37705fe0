//! The libp2p shell around the core.
//!
//! - [`protocol`]: wire messages, codec, limits, protocol names.
//! - [`behaviour`]: the combined libp2p behaviour.
//! - [`node`]: the event loop that owns the swarm and the core state.

pub mod behaviour;
pub mod node;
pub mod protocol;
