//! A route agent given many remote networks, as the scale benchmark and the lab test load it:
//! the networks, what a worker's kernel should then hold, and the agent's routes and rules as
//! the kernel of a lab namespace has them ([`crate::rtnl`] dumps, cheap enough to poll every
//! few milliseconds while the agent is timed).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Context};
use liqonet_proto::agent::{AgentConfig, Mode};
use liqonet_proto::Cidr;

use crate::rtnl;

/// `peers` × `per_peer` networks, each peer's last one IPv6 and the others IPv4 /24s: peer p's
/// are `10.(100+p).k.0/24` and `fd20:p::/56`. Clear of the lab's pod CIDRs, aliases and overlay.
pub fn many_networks(peers: u16, per_peer: u16) -> Vec<Cidr> {
    assert!(
        peers <= 150 && (1..=256).contains(&per_peer),
        "at most 150 peers of 256 networks"
    );
    let mut nets = Vec::with_capacity(usize::from(peers) * usize::from(per_peer));
    for p in 0..peers {
        for k in 0..per_peer - 1 {
            let ip = Ipv4Addr::new(10, (100 + p) as u8, k as u8, 0);
            nets.push(Cidr::new(IpAddr::V4(ip), 24).expect("a /24"));
        }
        let ip = Ipv6Addr::new(0xfd20, p, 0, 0, 0, 0, 0, 0);
        nets.push(Cidr::new(IpAddr::V6(ip), 56).expect("a /56"));
    }
    nets
}

/// A route of the agent's as dumped: its destination and next hop.
pub type Route = (Cidr, Option<IpAddr>);

/// What the kernel of a worker node should hold for the agent configuration `text`: a route
/// to each remote network through the gateway node (its overlay address in `vxlan` mode, its
/// node address in `direct` mode), and a `to` rule for each.
pub fn expected(text: &str) -> anyhow::Result<(BTreeSet<Route>, BTreeSet<Cidr>)> {
    let c = AgentConfig::from_yaml(text).map_err(|e| anyhow!("{e}"))?;
    if c.is_gateway_node() {
        bail!("{} is the gateway node, not a worker", c.node_name);
    }
    let gw = c.node(&c.gateway_node).context("no gateway node")?;
    let mut routes = BTreeSet::new();
    for &dst in &c.remote_networks {
        let via = match (c.mode, dst.is_ipv4()) {
            (Mode::Vxlan, true) => IpAddr::V4(c.overlay_ip(gw)),
            (Mode::Vxlan, false) => IpAddr::V6(c.overlay_ip6(gw)),
            (Mode::Direct, true) => IpAddr::V4(gw.ip.0),
            (Mode::Direct, false) => IpAddr::V6(gw.ip6.context("no gateway ip6")?.0),
        };
        routes.insert((dst, Some(via)));
    }
    Ok((routes, c.remote_networks.iter().copied().collect()))
}

/// The agent's routes (protocol 202 in `table`) and rules (at `priority`, looking up `table`)
/// in one namespace, dumped over a netlink socket opened there.
pub struct AgentState {
    socket: rtnl::Socket,
    table: u32,
    priority: u32,
}

impl AgentState {
    pub fn open(ns: &str, table: u32, priority: u32) -> anyhow::Result<AgentState> {
        Ok(AgentState {
            socket: rtnl::Socket::open(ns, 0)?,
            table,
            priority,
        })
    }

    /// Both families' routes of the agent's.
    pub fn routes(&mut self) -> anyhow::Result<Vec<Route>> {
        let table = self.table;
        let dump = self
            .socket
            .dump(rtnl::RTM_GETROUTE, rtnl::RTM_NEWROUTE, rtnl::AF_UNSPEC)?;
        Ok(dump.iter().filter_map(|m| route_of(m, table)).collect())
    }

    /// The prefixes of the agent's `to PREFIX` rules, both families.
    pub fn rules(&mut self) -> anyhow::Result<Vec<Cidr>> {
        let (table, priority) = (self.table, self.priority);
        let dump = self
            .socket
            .dump(rtnl::RTM_GETRULE, rtnl::RTM_NEWRULE, rtnl::AF_UNSPEC)?;
        Ok(dump
            .iter()
            .filter_map(|m| rule_of(m, table, priority))
            .collect())
    }
}

/// A route of protocol 202 in `table`.
fn route_of(m: &rtnl::Message, table: u32) -> Option<Route> {
    if m.table() != table || m.protocol() != 202 {
        return None;
    }
    let dst = m.ip_attr(rtnl::ATTR_DST).or_else(|| m.unspecified())?;
    Cidr::new(dst, m.dst_len())
        .ok()
        .map(|d| (d, m.ip_attr(rtnl::RTA_GATEWAY)))
}

/// The prefix of a `to PREFIX` rule at `priority` looking up `table`.
fn rule_of(m: &rtnl::Message, table: u32, priority: u32) -> Option<Cidr> {
    if m.table() != table || m.u32_attr(rtnl::FRA_PRIORITY) != Some(priority) {
        return None;
    }
    Cidr::new(m.ip_attr(rtnl::ATTR_DST)?, m.dst_len()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_networks_are_distinct_a_tenth_ipv6() {
        let nets = many_networks(100, 10);
        assert_eq!(nets.len(), 1000);
        assert_eq!(nets.iter().filter(|n| !n.is_ipv4()).count(), 100);
        let distinct: BTreeSet<&Cidr> = nets.iter().collect();
        assert_eq!(distinct.len(), 1000);
        assert_eq!(nets[0].to_string(), "10.100.0.0/24");
        assert_eq!(nets[999].to_string(), "fd20:63::/56");
    }

    #[test]
    fn a_worker_routes_through_the_gateway_node_of_its_mode() {
        let config = |mode: &str| {
            format!(
                "nodeName: w1\nmode: {mode}\ngatewayNode: gw\nremoteNetworks: [10.245.0.0/16, 'fd10:245::/56']\nnodes:\n  - {{name: gw, ip: 172.20.0.10, podCIDR: 10.244.0.0/24, ip6: 'fd00:172:20::10'}}\n  - {{name: w1, ip: 172.20.0.11, podCIDR: 10.244.1.0/24}}\n"
            )
        };
        let via = |mode: &str| -> Vec<String> {
            let (routes, rules) = expected(&config(mode)).expect("a worker's config");
            assert_eq!(rules.len(), 2);
            routes
                .iter()
                .map(|(dst, via)| format!("{dst} via {}", via.expect("a next hop")))
                .collect()
        };
        assert_eq!(
            via("vxlan"),
            [
                "10.245.0.0/16 via 10.84.0.10",
                "fd10:245::/56 via fdff:2741::ac14:a"
            ]
        );
        assert_eq!(
            via("direct"),
            [
                "10.245.0.0/16 via 172.20.0.10",
                "fd10:245::/56 via fd00:172:20::10"
            ]
        );
        assert!(expected(&config("vxlan").replace("nodeName: w1", "nodeName: gw")).is_err());
    }
}
