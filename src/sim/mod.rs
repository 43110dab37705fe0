//! Plumbing for driving real `lanswarm` processes from outside them: the
//! multi-process simulator (`src/bin/lanswarm-sim.rs`) and the virtual-LAN
//! tests (`tests/common/vlan.rs`) share it.
//!
//! - [`netns`]: a private LAN of Linux network namespaces joined by a
//!   bridge, torn down on drop, and TCP connections opened inside one of
//!   its hosts (root only).
//! - [`http`]: one blocking HTTP/1.1 exchange with a node's JSON API, with
//!   no runtime and no extra dependency, so a caller can open the socket
//!   wherever it needs to (for example inside a namespace).
//! - [`des`]: the discrete-event simulator (`src/bin/lanswarm-des.rs`),
//!   which drives the real sans-IO core of thousands of nodes in one
//!   process, with no sockets at all.
//!
//! Nothing in the node itself uses this module.

pub mod des;
pub mod fake_ollama;
pub mod http;
pub mod netns;
