//! liqonet's route agent: on every node, routes the remote (remapped) networks towards the
//! gateway node, in its own routing table selected by its own rules, and keeps them reconciled.
//!
//! - [`desired`]: what a node needs, computed from the config alone (no I/O).
//! - [`kernel`]: what reconciliation reads and changes in the kernel, as a trait.
//! - [`netlink`]: the real kernel: routes, rules, VXLAN device and FDB over rtnetlink.
//! - [`sysctl`]: forwarding and reverse-path filtering settings.
//! - [`reconcile`]: the difference between desired and installed, applied idempotently.
//! - [`monitor`]: the kernel's notifications of changes to the agent's state.
//! - [`metrics`]: what each pass leaves, as Prometheus families and a report, served over HTTP.
//! - [`status`]: that report, and the `status` command that reads it.
//! - [`signals`]: SIGTERM stops, SIGHUP reloads.
//! - [`agent_loop`]: when to reconcile, whatever the configuration comes from.
//! - [`kubernetes`]: the configuration derived from TunnelEndpoints and Nodes.

pub mod agent_loop;
pub mod desired;
#[cfg(test)]
mod fake_kernel;
pub mod kernel;
pub mod kubernetes;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod reconcile;
pub mod signals;
pub mod status;
pub mod sysctl;

/// Route protocol number that marks the agent's routes and rules (`ip route show proto 202`).
pub const ROUTE_PROTOCOL: u8 = 202;
