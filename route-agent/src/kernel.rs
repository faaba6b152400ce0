//! What reconciliation needs from the kernel, as a trait: [`crate::netlink::Netlink`] is the
//! real one; tests use an in-memory fake, so reconciliation is tested without root.

use std::net::{IpAddr, Ipv4Addr};

use liqonet_proto::Cidr;

use crate::desired::{Route, Rule, Vxlan};

/// A route of the agent's as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub dst: Cidr,
    pub via: Option<IpAddr>,
    pub oif: Option<u32>,
}

impl Installed {
    /// Does this installed route implement `r` (the overlay device being `overlay_index`)?
    pub fn is(&self, r: &Route, overlay_index: Option<u32>) -> bool {
        let on_overlay = self.oif.is_some() && self.oif == overlay_index;
        self.dst == r.dst && self.via == Some(r.via) && on_overlay == r.overlay
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
    pub up: bool,
}

/// Reads and changes of the kernel state the agent owns. Reads return only what carries the
/// agent's marks; every call blocks until the kernel has answered.
pub trait Kernel {
    /// What deleting an installed route needs (the dumped message, for netlink).
    type RouteRef;
    /// What deleting an installed rule needs.
    type RuleRef;

    /// The agent's routes (both families) in `table`.
    fn routes(&self, table: u32) -> anyhow::Result<Vec<(Self::RouteRef, Installed)>>;
    /// Adds or replaces `r` in `table`, through the overlay device `overlay_index` if given.
    fn add_route(&self, r: &Route, table: u32, overlay_index: Option<u32>) -> anyhow::Result<()>;
    fn del_route(&self, r: Self::RouteRef) -> anyhow::Result<()>;

    /// The agent's rules (both families) at `priority` looking up `table`.
    fn rules(&self, priority: u32, table: u32) -> anyhow::Result<Vec<(Self::RuleRef, Rule)>>;
    fn add_rule(&self, r: &Rule, priority: u32, table: u32) -> anyhow::Result<()>;
    fn del_rule(&self, r: Self::RuleRef) -> anyhow::Result<()>;

    /// The device called `name`, if it exists, with its VXLAN parameters (if it is one).
    fn vxlan_link(&self, name: &str) -> anyhow::Result<Option<VxlanLink>>;
    /// Creates the overlay device, up; returns its index.
    fn create_vxlan(&self, v: &Vxlan) -> anyhow::Result<u32>;
    fn set_mtu_up(&self, index: u32, mtu: u16) -> anyhow::Result<()>;
    fn del_link(&self, index: u32) -> anyhow::Result<()>;

    /// Addresses of device `index` (both families).
    fn addresses(&self, index: u32) -> anyhow::Result<Vec<(IpAddr, u8)>>;
    fn add_address(&self, index: u32, ip: IpAddr, len: u8) -> anyhow::Result<()>;

    /// The overlay's flood list: node IPs of the all-zero-MAC FDB entries of device `index`.
    fn fdb(&self, index: u32) -> anyhow::Result<Vec<Ipv4Addr>>;
    fn add_fdb(&self, index: u32, dst: Ipv4Addr) -> anyhow::Result<()>;
    fn del_fdb(&self, index: u32, dst: Ipv4Addr) -> anyhow::Result<()>;

    /// A sysctl's value (`key` as a path under /proc/sys: `net/ipv4/ip_forward`).
    fn sysctl(&self, key: &str) -> anyhow::Result<String>;
    fn set_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()>;
}
