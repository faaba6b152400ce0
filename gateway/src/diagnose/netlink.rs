//! The kernel's answers diagnose needs, over rtnetlink: the route it picks for an address (as
//! `ip route get`), its verdict on a packet arriving on an interface (reverse-path filter
//! included), the policy rules, and the routes of a table. Calls block.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use liqonet_proto::Cidr;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric};
use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tokio::runtime::Runtime;

pub struct Netlink {
    rt: Runtime,
    handle: Handle,
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<Cidr>,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    /// The route's `mtu` metric, or a path MTU the kernel learned for the destination.
    pub mtu: Option<u32>,
    pub table: u32,
    pub protocol: u8,
}

/// A policy rule (`ip rule`): its priority, table and selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub table: u32,
    pub from: Option<Cidr>,
    pub to: Option<Cidr>,
}

/// Why a lookup failed: the kernel's errno when it gave one.
#[derive(Debug)]
pub struct LookupError {
    pub errno: Option<i32>,
    pub message: String,
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn lookup_error(e: rtnetlink::Error) -> LookupError {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = -m.raw_code();
            LookupError {
                errno: Some(errno),
                message: std::io::Error::from_raw_os_error(errno).to_string(),
            }
        }
        e => LookupError {
            errno: None,
            message: e.to_string(),
        },
    }
}

impl Netlink {
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (conn, handle, _) = rt
            .block_on(async { rtnetlink::new_connection() })
            .map_err(|e| anyhow::anyhow!("cannot open a netlink socket: {e}"))?;
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    /// The route the kernel picks to send to `dst` (`ip route get DST`).
    pub fn route_to(&self, dst: IpAddr) -> Result<Route, LookupError> {
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        self.get(msg)
    }

    /// The kernel's input route for a packet from `src` to `dst` arriving on `iif` (`ip route
    /// get DST from SRC iif DEV`): the reverse-path filter runs, and refuses with EXDEV.
    pub fn route_input(
        &self,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        iif: u32,
    ) -> Result<Route, LookupError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .source_prefix(src, 32)
            .input_interface(iif)
            .build();
        self.get(msg)
    }

    fn get(&self, msg: RouteMessage) -> Result<Route, LookupError> {
        let mut answers: Vec<RouteMessage> = self
            .rt
            .block_on(self.handle.route().get(msg).execute().try_collect())
            .map_err(lookup_error)?;
        answers.pop().map(|m| route(&m)).ok_or(LookupError {
            errno: None,
            message: "no answer from the kernel".into(),
        })
    }

    /// Every policy rule, IPv4 and IPv6.
    pub fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        let mut all: Vec<RuleMessage> = Vec::new();
        for family in [IpVersion::V4, IpVersion::V6] {
            let mut part: Vec<RuleMessage> = self
                .rt
                .block_on(self.handle.rule().get(family).execute().try_collect())
                .map_err(|e| anyhow::anyhow!("cannot list the policy rules: {e}"))?;
            all.append(&mut part);
        }
        Ok(all.iter().map(rule).collect())
    }

    /// The routes of `table`, IPv4 and IPv6.
    pub fn routes(&self, table: u32) -> anyhow::Result<Vec<Route>> {
        let mut out = Vec::new();
        let queries = [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(table)
                .build(),
        ];
        for q in queries {
            // The kernel dumps every table; keep the one asked for.
            let part: Vec<RouteMessage> = self
                .rt
                .block_on(self.handle.route().get(q).execute().try_collect())
                .map_err(|e| anyhow::anyhow!("cannot list the routes of table {table}: {e}"))?;
            out.extend(part.iter().map(route).filter(|r| r.table == table));
        }
        Ok(out)
    }
}

fn route(m: &RouteMessage) -> Route {
    let mut r = Route {
        dst: None,
        oif: None,
        gateway: None,
        mtu: None,
        table: u32::from(m.header.table),
        protocol: m.header.protocol.into(),
    };
    let mut dst = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => r.gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Metrics(ms) => {
                r.mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    r.dst = dst.and_then(|d| Cidr::new(d, m.header.destination_prefix_length).ok());
    r
}

fn rule(m: &RuleMessage) -> Rule {
    let mut r = Rule {
        priority: 0,
        table: u32::from(m.header.table),
        from: None,
        to: None,
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Source(ip) => r.from = Cidr::new(*ip, m.header.src_len).ok(),
            RuleAttribute::Destination(ip) => r.to = Cidr::new(*ip, m.header.dst_len).ok(),
            _ => {}
        }
    }
    r
}

/// The name of interface `index` in this namespace.
pub fn name_of(index: u32) -> Option<String> {
    nix::net::if_::if_indextoname(index)
        .ok()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The index of interface `name` in this namespace.
pub fn index_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// An address inside `cidr` to ask about: its first host (the address itself for a host route).
pub fn sample(cidr: &Cidr) -> IpAddr {
    match cidr.addr() {
        IpAddr::V4(a) if cidr.prefix_len() < 32 => IpAddr::V4(Ipv4Addr::from(u32::from(a) | 1)),
        IpAddr::V6(a) if cidr.prefix_len() < 128 => IpAddr::V6(Ipv6Addr::from(u128::from(a) | 1)),
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_first_hosts() {
        let s = |c: &str| sample(&c.parse().unwrap()).to_string();
        assert_eq!(s("10.245.0.0/16"), "10.245.0.1");
        assert_eq!(s("10.0.0.7/32"), "10.0.0.7");
        assert_eq!(s("fd10:245::/56"), "fd10:245::1");
    }
}
