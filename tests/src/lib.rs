//! The lab: clusters made of network namespaces, joined by a WAN bridge, with real gateways
//! (liqonet or wireguard-go) and real tools (ping, curl, iperf3). Used by the demo and the tests.
//!
//! Every namespace carries a per-lab prefix (`lq<pid>x<n>-`), so labs run side by side. A lab is
//! torn down when dropped (also while a failing test unwinds); labs left by killed processes are
//! swept when the next lab starts.

pub mod lab;
pub mod netns;
pub mod probe;

pub use lab::{Cluster, ClusterSpec, GatewayKind, Lab, LabSpec, Underlay};
