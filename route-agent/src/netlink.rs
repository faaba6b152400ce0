//! The kernel side: dump and change routes, rules, the VXLAN device, its address and FDB.
//! Everything the agent reads back is filtered to what it owns (its table and protocol, its
//! rule priority and table, its device), so it never touches anything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::desired::{Route, Rule, Selector, Vxlan};
use crate::kernel::{Installed, Kernel, VxlanLink};
use crate::{sysctl, ROUTE_PROTOCOL};
use liqonet_proto::Cidr;

/// A netlink socket and the small runtime that drives it; calls block.
pub struct Netlink {
    rt: Runtime,
    handle: Handle,
}

impl Netlink {
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (conn, handle, _) = rt.block_on(async { rtnetlink::new_connection() })?;
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }
}

// Errors say why; the caller says what it was doing.
impl Kernel for Netlink {
    type RouteRef = RouteMessage;
    type RuleRef = RuleMessage;

    fn routes(&self, table: u32) -> anyhow::Result<Vec<(RouteMessage, Installed)>> {
        let queries = [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(table)
                .build(),
        ];
        let mut all: Vec<RouteMessage> = Vec::new();
        for q in queries {
            let mut part: Vec<RouteMessage> = self
                .rt
                .block_on(self.handle.route().get(q).execute().try_collect())?;
            all.append(&mut part);
        }
        Ok(all
            .into_iter()
            .filter(|m| {
                route_table(m) == table && m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
            })
            .filter_map(|m| parse_route(&m).map(|r| (m, r)))
            .collect())
    }

    /// Replaces rather than adds, so a changed next hop is fixed in place.
    fn add_route(&self, r: &Route, table: u32, overlay_index: Option<u32>) -> anyhow::Result<()> {
        let len = r.dst.prefix_len();
        let msg = match (r.dst.addr(), r.via) {
            (IpAddr::V4(dst), IpAddr::V4(via)) => owned_route(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst, len)
                    .gateway(via),
                table,
                overlay_index,
            ),
            (IpAddr::V6(dst), IpAddr::V6(via)) => owned_route(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(dst, len)
                    .gateway(via),
                table,
                overlay_index,
            ),
            _ => return Err(anyhow!("mixed address families")),
        };
        Ok(self
            .rt
            .block_on(self.handle.route().add(msg).replace().execute())?)
    }

    fn del_route(&self, m: RouteMessage) -> anyhow::Result<()> {
        Ok(self.rt.block_on(self.handle.route().del(m).execute())?)
    }

    fn rules(&self, priority: u32, table: u32) -> anyhow::Result<Vec<(RuleMessage, Rule)>> {
        let mut all: Vec<RuleMessage> = Vec::new();
        for family in [IpVersion::V4, IpVersion::V6] {
            let mut part: Vec<RuleMessage> = self
                .rt
                .block_on(self.handle.rule().get(family).execute().try_collect())?;
            all.append(&mut part);
        }
        Ok(all
            .into_iter()
            .filter(|m| {
                m.attributes.contains(&RuleAttribute::Priority(priority)) && rule_table(m) == table
            })
            .filter_map(|m| parse_rule(&m).map(|r| (m, r)))
            .collect())
    }

    fn add_rule(&self, r: &Rule, priority: u32, table: u32) -> anyhow::Result<()> {
        let base = self
            .handle
            .rule()
            .add()
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable);
        let len = r.prefix.prefix_len();
        let mut msg = match (r.prefix.addr(), r.selector) {
            (IpAddr::V4(a), Selector::To) => {
                base.v4().destination_prefix(a, len).message_mut().clone()
            }
            (IpAddr::V4(a), Selector::From) => {
                base.v4().source_prefix(a, len).message_mut().clone()
            }
            (IpAddr::V6(a), Selector::To) => {
                base.v6().destination_prefix(a, len).message_mut().clone()
            }
            (IpAddr::V6(a), Selector::From) => {
                base.v6().source_prefix(a, len).message_mut().clone()
            }
        };
        msg.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Other(
                ROUTE_PROTOCOL,
            )));
        let mut req = self.handle.rule().add();
        *req.message_mut() = msg;
        Ok(self.rt.block_on(req.execute())?)
    }

    fn del_rule(&self, m: RuleMessage) -> anyhow::Result<()> {
        Ok(self.rt.block_on(self.handle.rule().del(m).execute())?)
    }

    fn vxlan_link(&self, name: &str) -> anyhow::Result<Option<VxlanLink>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let found = self.rt.block_on(s.next());
        let m: LinkMessage = match found {
            None => return Ok(None),
            Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code() == -19 => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => m,
        };
        let mut link = VxlanLink {
            index: m.header.index,
            vni: None,
            port: None,
            local: None,
            mtu: None,
            up: m
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(v)) = info {
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => link.vni = Some(*id),
                                    InfoVxlan::Port(p) => link.port = Some(*p),
                                    InfoVxlan::Local(l) => link.local = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(link))
    }

    /// No learning: the FDB is the agent's.
    fn create_vxlan(&self, v: &Vxlan) -> anyhow::Result<u32> {
        let msg = LinkVxlan::new(&v.name, v.vni)
            .port(v.port)
            .local(v.local)
            .learning(false)
            .mtu(u32::from(v.mtu))
            .up()
            .build();
        self.rt.block_on(self.handle.link().add(msg).execute())?;
        self.vxlan_link(&v.name)?
            .map(|l| l.index)
            .context("it vanished after its creation")
    }

    fn set_mtu_up(&self, index: u32, mtu: u16) -> anyhow::Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .mtu(u32::from(mtu))
            .up()
            .build();
        Ok(self.rt.block_on(self.handle.link().set(msg).execute())?)
    }

    fn del_link(&self, index: u32) -> anyhow::Result<()> {
        Ok(self.rt.block_on(self.handle.link().del(index).execute())?)
    }

    fn addresses(&self, index: u32) -> anyhow::Result<Vec<(IpAddr, u8)>> {
        let req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let all: Vec<_> = self.rt.block_on(req.try_collect())?;
        Ok(all
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                // IPv4 reports the interface's own address as Local, IPv6 as Address.
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip @ IpAddr::V4(_)) => Some((*ip, m.header.prefix_len)),
                    AddressAttribute::Address(ip @ IpAddr::V6(_)) => {
                        Some((*ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// An IPv6 address skips duplicate address detection: the overlay's addresses are derived
    /// from node IPs and usable at once.
    fn add_address(&self, index: u32, ip: IpAddr, len: u8) -> anyhow::Result<()> {
        let mut req = self.handle.address().add(index, ip, len);
        if ip.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        Ok(self.rt.block_on(req.execute())?)
    }

    fn fdb(&self, index: u32) -> anyhow::Result<Vec<Ipv4Addr>> {
        let all: Vec<NeighbourMessage> = self.rt.block_on(
            self.handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect(),
        )?;
        Ok(all
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| {
                m.attributes
                    .contains(&NeighbourAttribute::LinkLayerAddress(vec![0; 6]))
            })
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    // In a bridge-family message the parser cannot tell the address family.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// `bridge fdb append 00:00:00:00:00:00 dev DEVICE dst IP`: ARP and broadcasts reach that node.
    fn add_fdb(&self, index: u32, dst: Ipv4Addr) -> anyhow::Result<()> {
        let mut req =
            NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_entry(index, dst)));
        // Several all-zero entries (one per remote node) need APPEND; rtnetlink's add sends EXCL.
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut handle = self.handle.clone();
        self.rt.block_on(async {
            let mut resp = handle.request(req)?;
            while let Some(m) = resp.next().await {
                if let NetlinkPayload::Error(e) = m.payload {
                    if e.code.is_some() {
                        return Err(anyhow!("{e}"));
                    }
                }
            }
            Ok(())
        })
    }

    fn del_fdb(&self, index: u32, dst: Ipv4Addr) -> anyhow::Result<()> {
        Ok(self.rt.block_on(
            self.handle
                .neighbours()
                .del(fdb_entry(index, dst))
                .execute(),
        )?)
    }

    fn sysctl(&self, key: &str) -> anyhow::Result<String> {
        sysctl::read(key)
    }

    fn set_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sysctl::write(key, value)
    }
}

/// A route of either family in the agent's table, with its protocol, through `oif` if given.
fn owned_route<T>(b: RouteMessageBuilder<T>, table: u32, oif: Option<u32>) -> RouteMessage {
    let b = b
        .table_id(table)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    match oif {
        Some(i) => b.output_interface(i).build(),
        None => b.build(),
    }
}

fn fdb_entry(index: u32, dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m
}

pub(crate) fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn parse_route(m: &RouteMessage) -> Option<Installed> {
    let mut dst = match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let (mut via, mut oif) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = IpAddr::V4(*d),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = IpAddr::V6(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => via = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = Cidr::new(dst, m.header.destination_prefix_length).ok()?;
    Some(Installed { dst, via, oif })
}

pub(crate) fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn parse_rule(m: &RuleMessage) -> Option<Rule> {
    let find = |want_src: bool| {
        m.attributes.iter().find_map(|a| match (a, want_src) {
            (RuleAttribute::Source(ip), true) | (RuleAttribute::Destination(ip), false) => {
                Some(*ip)
            }
            _ => None,
        })
    };
    match (find(false), find(true)) {
        (Some(d), None) => Some(Rule {
            selector: Selector::To,
            prefix: Cidr::new(d, m.header.dst_len).ok()?,
        }),
        (None, Some(s)) => Some(Rule {
            selector: Selector::From,
            prefix: Cidr::new(s, m.header.src_len).ok()?,
        }),
        // Not a shape the agent creates: leave it to whoever did.
        _ => None,
    }
}
