//! liqonet's route agent: on every node, routes the remote (remapped) networks towards the
//! gateway node, in its own routing table selected by its own rules, and keeps them reconciled.
//!
//! - [`desired`]: what a node needs, computed from the config alone (no I/O).
//! - [`netlink`]: reading and changing the kernel's routes, rules, VXLAN device and FDB.
//! - [`reconcile`]: the difference between the two, applied idempotently.
//! - [`agent_loop`]: when to reconcile, whatever the configuration comes from.
//! - [`kubernetes`]: the configuration derived from TunnelEndpoints and Nodes.

pub mod agent_loop;
pub mod desired;
pub mod kubernetes;
pub mod netlink;
pub mod reconcile;

/// Route protocol number that marks the agent's routes and rules (`ip route show proto 202`).
pub const ROUTE_PROTOCOL: u8 = 202;
