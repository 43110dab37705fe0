//! lanswarm: a decentralized, peer-to-peer resource-sharing swarm for local
//! networks.

pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod daemon;
pub mod exec;
pub mod handle;
pub mod hw;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod net;
pub mod sim;
pub mod store;
pub mod swarm_key;
pub mod units;
pub mod work;

pub use handle::{Node, NodeError};
