//! A route agent given many remote networks, as the scale benchmark and the lab test load it:
//! the networks, what a worker's kernel should then hold, and the agent's routes and rules as
//! the kernel of a lab namespace has them, read with netlink dumps. A dump of a thousand routes costs the kernel about a millisecond,
//! so it can be polled every few milliseconds while the agent is timed (running `ip` that
//! often would take a core from the agent).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context};
use liqonet_proto::agent::{AgentConfig, Mode};
use liqonet_proto::Cidr;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::netns::in_netns;

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

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_GETRULE: u16 = 34;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// The kernel's state changed during the dump: it may have missed or repeated entries.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// Route and rule attributes (`RTA_*`, `FRA_*`) that share numbers.
const ATTR_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const FRA_PRIORITY: u16 = 6;
const ATTR_TABLE: u16 = 15;
/// The header of a netlink message, then of a route or rule message (`rtmsg`, `fib_rule_hdr`).
const NLMSG_HDR: usize = 16;
const RT_HDR: usize = 12;

/// The agent's routes (protocol 202 in `table`) and rules (at `priority`, looking up `table`)
/// in one namespace, dumped over a netlink socket opened there.
pub struct AgentState {
    fd: OwnedFd,
    table: u32,
    priority: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl AgentState {
    pub fn open(ns: &str, table: u32, priority: u32) -> anyhow::Result<AgentState> {
        let fd = in_netns(ns, || {
            let fd = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkRoute,
            )?;
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            Ok(fd)
        })
        .with_context(|| format!("netlink socket in {ns}"))?;
        // A dump's answers queue up until read: room for a few thousand routes.
        setsockopt(&fd, sockopt::RcvBuf, &(4 << 20))?;
        Ok(AgentState {
            fd,
            table,
            priority,
            seq: 0,
            buf: vec![0; 1 << 20],
        })
    }

    /// Both families' routes of the agent's.
    pub fn routes(&mut self) -> anyhow::Result<Vec<Route>> {
        let (table, mut routes) = (self.table, Vec::new());
        self.dump(RTM_GETROUTE, RTM_NEWROUTE, |m| {
            if let Some(r) = parse_route(m, table) {
                routes.push(r);
            }
        })?;
        Ok(routes)
    }

    /// The prefixes of the agent's `to PREFIX` rules, both families.
    pub fn rules(&mut self) -> anyhow::Result<Vec<Cidr>> {
        let (table, priority, mut rules) = (self.table, self.priority, Vec::new());
        self.dump(RTM_GETRULE, RTM_NEWRULE, |m| {
            if let Some(r) = parse_rule(m, table, priority) {
                rules.push(r);
            }
        })?;
        Ok(rules)
    }

    /// Dumps every message of type `kind` (both families) into `each`, which sees the bytes
    /// after the netlink header; a dump the kernel says was interrupted is taken again.
    fn dump(&mut self, get: u16, kind: u16, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
        let mut collected: Vec<Vec<u8>> = Vec::new();
        for _ in 0..10 {
            collected.clear();
            if !self.dump_once(get, kind, &mut collected)? {
                collected.iter().for_each(|m| each(m));
                return Ok(());
            }
        }
        bail!("10 dumps in a row were interrupted by changes")
    }

    /// One dump; whether it was interrupted.
    fn dump_once(&mut self, get: u16, kind: u16, out: &mut Vec<Vec<u8>>) -> anyhow::Result<bool> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(NLMSG_HDR + RT_HDR);
        req.extend_from_slice(&((NLMSG_HDR + RT_HDR) as u32).to_ne_bytes());
        req.extend_from_slice(&get.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // Family AF_UNSPEC: every family.
        req.extend_from_slice(&[0; RT_HDR]);
        send(self.fd.as_raw_fd(), &req, MsgFlags::empty())?;
        let mut interrupted = false;
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let b = &self.buf[at..n];
                let len = u32_at(b, 0) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let flags = u16::from_ne_bytes([b[6], b[7]]);
                if len < NLMSG_HDR || len > b.len() {
                    bail!("a malformed netlink message ({len} bytes of {})", b.len());
                }
                let ours = u32_at(b, 8) == self.seq;
                interrupted |= ours && flags & NLM_F_DUMP_INTR != 0;
                match ty {
                    NLMSG_DONE if ours => return Ok(interrupted),
                    NLMSG_ERROR if ours => {
                        let code = b
                            .get(16..20)
                            .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                        bail!(
                            "the dump failed: {}",
                            std::io::Error::from_raw_os_error(-code)
                        );
                    }
                    t if t == kind && ours => out.push(b[NLMSG_HDR..len].to_vec()),
                    _ => {}
                }
                at += align(len);
            }
        }
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
}

/// The attributes after a route or rule header: (type, payload).
fn attributes(m: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = RT_HDR;
    std::iter::from_fn(move || {
        let h = m.get(at..at + 4)?;
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        // The top bits of the type are flags (nested, byte order).
        let ty = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
        let payload = m.get(at + 4..at + len.max(4))?;
        at += align(len.max(4));
        Some((ty, payload))
    })
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (family, b.len()) {
        (2, 4) => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        (10, 16) => <[u8; 16]>::try_from(b).ok().map(|a| IpAddr::V6(a.into())),
        _ => None,
    }
}

fn unspecified(family: u8) -> Option<IpAddr> {
    match family {
        2 => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        10 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    }
}

/// A route of protocol 202 in `table`.
fn parse_route(m: &[u8], table: u32) -> Option<Route> {
    let h = m.get(..RT_HDR)?;
    let (family, dst_len, protocol) = (h[0], h[1], h[5]);
    let mut in_table = u32::from(h[4]);
    let (mut dst, mut via) = (unspecified(family)?, None);
    for (ty, p) in attributes(m) {
        match ty {
            ATTR_DST => dst = ip(family, p)?,
            RTA_GATEWAY => via = ip(family, p),
            ATTR_TABLE => in_table = u32_at(p, 0),
            _ => {}
        }
    }
    (in_table == table && protocol == 202)
        .then(|| Cidr::new(dst, dst_len).ok().map(|d| (d, via)))
        .flatten()
}

/// The prefix of a `to PREFIX` rule at `priority` looking up `table`.
fn parse_rule(m: &[u8], table: u32, priority: u32) -> Option<Cidr> {
    let h = m.get(..RT_HDR)?;
    let (family, dst_len) = (h[0], h[1]);
    let (mut in_table, mut at, mut dst) = (u32::from(h[4]), None, None);
    for (ty, p) in attributes(m) {
        match ty {
            ATTR_DST => dst = ip(family, p),
            FRA_PRIORITY => at = Some(u32_at(p, 0)),
            ATTR_TABLE => in_table = u32_at(p, 0),
            _ => {}
        }
    }
    if in_table != table || at != Some(priority) {
        return None;
    }
    Cidr::new(dst?, dst_len).ok()
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
