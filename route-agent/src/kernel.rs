//! What reconciliation needs from the kernel, as a trait: [`crate::netlink::Netlink`] is the
//! real one; tests use an in-memory fake, so reconciliation is tested without root. Routes and
//! rules are written in batches (a thousand remote networks are a thousand of each), with one
//! result per item, so that one refused item is reported and the others still written.

use std::net::{IpAddr, Ipv4Addr};

use liqonet_proto::Cidr;

use crate::desired::{FdbEntry, Mac, Neighbour, Route, Rule, Vxlan};

/// The main table's number.
pub const MAIN_TABLE: u32 = 254;

/// A guard's metric: the lowest preference there is, so that any other route to its network
/// (the gateway's TUN route, above all) is taken first.
pub const GUARD_METRIC: u32 = u32::MAX;

/// A route of the agent's as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub dst: Cidr,
    pub via: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Of the form the agent writes (no TOS, the kernel's default metric): writing the route to
    /// its destination replaces this one in place (the kernel replaces the route of the same
    /// destination, TOS and metric).
    pub replaceable: bool,
}

impl Installed {
    /// The route this one implements (the overlay device being `overlay_index`), if it has a
    /// next hop.
    pub fn as_route(&self, overlay_index: Option<u32>) -> Option<Route> {
        let overlay = self.oif.is_some() && self.oif == overlay_index;
        Some(Route {
            dst: self.dst,
            via: self.via?,
            overlay,
        })
    }
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        Ok(())
    }
}

/// The VXLAN parameters of an existing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanLink {
    pub index: u32,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub up: bool,
}

/// Reads and changes of the kernel state the agent owns. Reads return only what carries the
/// agent's marks; every call blocks until the kernel has answered. A batch call returns one
/// result per item, in order, and attempts every item whatever the others' results.
pub trait Kernel {
    /// What deleting an installed route needs (the dumped message, for netlink).
    type RouteRef;
    /// What deleting an installed rule needs.
    type RuleRef;

    /// The agent's routes (both families) in `table`.
    fn routes(&self, table: u32) -> anyhow::Result<Vec<(Self::RouteRef, Installed)>>;
    /// Adds each of `routes` to `table`, or replaces the [`Installed::replaceable`] route to its
    /// destination; an overlay route goes through the device `overlay_index`.
    fn add_routes(
        &self,
        routes: &[Route],
        table: u32,
        overlay_index: Option<u32>,
    ) -> Vec<anyhow::Result<()>>;
    fn del_routes(&self, routes: Vec<Self::RouteRef>) -> Vec<anyhow::Result<()>>;

    /// The agent's guards ([`crate::desired::Desired::guards`]): blackhole routes of its own in
    /// the main table at [`GUARD_METRIC`] (both families). Deleted with [`Kernel::del_routes`].
    fn guards(&self) -> anyhow::Result<Vec<(Self::RouteRef, Cidr)>>;
    fn add_guards(&self, dsts: &[Cidr]) -> Vec<anyhow::Result<()>>;

    /// The agent's rules (both families) at `priority` looking up `table`.
    fn rules(&self, priority: u32, table: u32) -> anyhow::Result<Vec<(Self::RuleRef, Rule)>>;
    fn add_rules(&self, rules: &[Rule], priority: u32, table: u32) -> Vec<anyhow::Result<()>>;
    fn del_rules(&self, rules: Vec<Self::RuleRef>) -> Vec<anyhow::Result<()>>;

    /// The device called `name`, if it exists, with its VXLAN parameters (if it is one).
    fn vxlan_link(&self, name: &str) -> anyhow::Result<Option<VxlanLink>>;
    /// Creates the overlay device, up; returns its index.
    fn create_vxlan(&self, v: &Vxlan) -> anyhow::Result<u32>;
    fn set_mtu_up(&self, index: u32, mtu: u16) -> anyhow::Result<()>;
    fn del_link(&self, index: u32) -> anyhow::Result<()>;

    /// Addresses of device `index` (both families).
    fn addresses(&self, index: u32) -> anyhow::Result<Vec<(IpAddr, u8)>>;
    fn add_address(&self, index: u32, ip: IpAddr, len: u8) -> anyhow::Result<()>;

    /// The permanent FDB entries of device `index` that have a remote node IP.
    fn fdb(&self, index: u32) -> anyhow::Result<Vec<FdbEntry>>;
    fn add_fdb(&self, index: u32, e: &FdbEntry) -> anyhow::Result<()>;
    fn del_fdb(&self, index: u32, e: &FdbEntry) -> anyhow::Result<()>;

    /// The permanent ARP and NDP entries of device `index`.
    fn neighbours(&self, index: u32) -> anyhow::Result<Vec<Neighbour>>;
    /// Adds `n`, or replaces the entry of its IP (a learnt one, or one with another MAC).
    fn set_neighbour(&self, index: u32, n: &Neighbour) -> anyhow::Result<()>;
    fn del_neighbour(&self, index: u32, n: &Neighbour) -> anyhow::Result<()>;

    /// A sysctl's value (`key` as a path under /proc/sys: `net/ipv4/ip_forward`).
    fn sysctl(&self, key: &str) -> anyhow::Result<String>;
    fn set_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()>;
}
