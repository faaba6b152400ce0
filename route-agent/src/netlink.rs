//! The kernel side: dump and change routes, rules, the VXLAN device, its address and FDB.
//! Everything the agent reads back is filtered to what it owns (its table and protocol, its
//! rule priority and table, its device), so it never touches anything else.
//!
//! Routes and rules are written in batches: many requests in one datagram, which the kernel
//! handles one after the other, acknowledging each (a thousand routes cost a few dozen round
//! trips rather than a thousand).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, SocketAddr};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::desired::{FdbEntry, Mac, Neighbour, Route, Rule, Selector, Vxlan};
use crate::kernel::{Installed, Kernel, VxlanLink, GUARD_METRIC, MAIN_TABLE};
use crate::{sysctl, ROUTE_PROTOCOL};
use liqonet_proto::Cidr;

/// Requests per datagram. The kernel queues the acknowledgements of a whole datagram on the
/// socket before the agent reads any: 64 (under a kilobyte each, with the request echoed when it
/// failed) fit the default receive buffer (208 KiB) with room to spare, where an overflow would
/// drop some.
const BATCH: usize = 64;
/// A datagram's acknowledgements come within microseconds; past this the kernel is not answering.
const BATCH_ANSWER: Duration = Duration::from_secs(10);

/// Netlink sockets and the small runtime that drives them; calls block.
pub struct Netlink {
    rt: Runtime,
    handle: Handle,
    /// For batches: its connection hands every acknowledgement back, so that each request of
    /// a datagram gets its own result.
    batches: ConnectionHandle<RouteNetlinkMessage>,
}

impl Netlink {
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (conn, handle, _) = rt.block_on(async { rtnetlink::new_connection() })?;
        rt.spawn(conn);
        let (mut conn, batches, _) = rt.block_on(async {
            rtnetlink::proto::new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE)
        })?;
        conn.set_forward_ack(true);
        rt.spawn(conn);
        Ok(Netlink {
            rt,
            handle,
            batches,
        })
    }

    /// Sends `requests` (acknowledged: `NLM_F_ACK` is added) [`BATCH`] to a datagram, each
    /// datagram once the previous one is answered; one result per request, in order.
    fn batch(&self, requests: Vec<RouteNetlinkMessage>, flags: u16) -> Vec<anyhow::Result<()>> {
        let mut results = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let datagram: Vec<NetlinkMessage<RouteNetlinkMessage>> = requests
                .by_ref()
                .take(BATCH)
                .map(|m| {
                    let mut m = NetlinkMessage::from(m);
                    m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
                    m
                })
                .collect();
            let n = datagram.len();
            match self.rt.block_on(self.send(datagram)) {
                Ok(answers) => results.extend(acknowledged(n, answers)),
                Err(e) => {
                    let e = format!("{e:#}");
                    results.extend((0..n).map(|_| Err(anyhow!("{e}"))));
                }
            }
        }
        results
    }

    /// The request for rule `r` (rtnetlink's builder, then the agent's protocol).
    fn rule_message(&self, r: &Rule, priority: u32, table: u32) -> RuleMessage {
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
        msg
    }

    /// One datagram, and every answer to it.
    async fn send(
        &self,
        datagram: Vec<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> anyhow::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let answers = self
            .batches
            .request_batch(datagram, SocketAddr::new(0, 0))
            .map_err(|e| anyhow!("{e}"))?;
        tokio::time::timeout(BATCH_ANSWER, answers.collect())
            .await
            .map_err(|_| anyhow!("the kernel did not answer within {BATCH_ANSWER:?}"))
    }
}

/// The result of each of `n` requests sent in one datagram, from the answers to it. The
/// kernel handles a datagram's requests in order, and answers each one, in order, with an
/// acknowledgement or an error; answers that are not exactly that (lost, say) leave no request's
/// result known.
fn acknowledged(
    n: usize,
    answers: Vec<NetlinkMessage<RouteNetlinkMessage>>,
) -> Vec<anyhow::Result<()>> {
    let acks: Vec<(u32, Option<String>)> = answers
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::Error(e) => Some((
                m.header.sequence_number,
                e.code.is_some().then(|| e.to_string()),
            )),
            _ => None,
        })
        .collect();
    let in_order = acks.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1));
    if acks.len() != n || !in_order {
        let e = format!(
            "the kernel's answers to a batch of {n} are not one acknowledgement each, in order ({} answers)",
            acks.len()
        );
        return (0..n).map(|_| Err(anyhow!("{e}"))).collect();
    }
    acks.into_iter()
        .map(|(_, error)| match error {
            None => Ok(()),
            Some(e) => Err(anyhow!("{e}")),
        })
        .collect()
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
    fn add_routes(
        &self,
        routes: &[Route],
        table: u32,
        overlay_index: Option<u32>,
    ) -> Vec<anyhow::Result<()>> {
        let messages: Vec<anyhow::Result<RouteMessage>> = routes
            .iter()
            .map(|r| route_message(r, table, overlay_index.filter(|_| r.overlay)))
            .collect();
        // What cannot even be written is its own result; the rest goes to the kernel.
        let valid: Vec<RouteNetlinkMessage> = messages
            .iter()
            .filter_map(|m| m.as_ref().ok().cloned().map(RouteNetlinkMessage::NewRoute))
            .collect();
        let mut sent = self.batch(valid, NLM_F_REPLACE | NLM_F_CREATE).into_iter();
        messages
            .into_iter()
            .map(|m| match m {
                Ok(_) => sent
                    .next()
                    .unwrap_or_else(|| Err(anyhow!("the kernel gave no result"))),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn del_routes(&self, routes: Vec<RouteMessage>) -> Vec<anyhow::Result<()>> {
        let requests = routes
            .into_iter()
            .map(RouteNetlinkMessage::DelRoute)
            .collect();
        self.batch(requests, 0)
    }

    fn guards(&self) -> anyhow::Result<Vec<(RouteMessage, Cidr)>> {
        Ok(self
            .routes(MAIN_TABLE)?
            .into_iter()
            .filter(|(m, _)| is_guard(m))
            .map(|(m, r)| (m, r.dst))
            .collect())
    }

    /// `ip route replace blackhole DST metric 4294967295 proto 202` (main table).
    fn add_guards(&self, dsts: &[Cidr]) -> Vec<anyhow::Result<()>> {
        let requests = dsts
            .iter()
            .map(|&dst| RouteNetlinkMessage::NewRoute(guard_message(dst)))
            .collect();
        self.batch(requests, NLM_F_REPLACE | NLM_F_CREATE)
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

    fn add_rules(&self, rules: &[Rule], priority: u32, table: u32) -> Vec<anyhow::Result<()>> {
        let requests = rules
            .iter()
            .map(|r| RouteNetlinkMessage::NewRule(self.rule_message(r, priority, table)))
            .collect();
        self.batch(requests, NLM_F_EXCL | NLM_F_CREATE)
    }

    fn del_rules(&self, rules: Vec<RuleMessage>) -> Vec<anyhow::Result<()>> {
        let requests = rules
            .into_iter()
            .map(RouteNetlinkMessage::DelRule)
            .collect();
        self.batch(requests, 0)
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
            mac: None,
            up: m
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Address(mac) => link.mac = <Mac>::try_from(mac.as_slice()).ok(),
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

    /// No learning: the FDB is the agent's. The MAC is the node's overlay MAC, which the other
    /// nodes' agents know without asking.
    fn create_vxlan(&self, v: &Vxlan) -> anyhow::Result<u32> {
        let msg = LinkVxlan::new(&v.name, v.vni)
            .address(v.mac.to_vec())
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

    fn fdb(&self, index: u32) -> anyhow::Result<Vec<FdbEntry>> {
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
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let mac = lladdr(m)?;
                // The device's own addresses are listed too, without a remote.
                let dst = m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    // In a bridge-family message the parser cannot tell the address family.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                })?;
                Some(FdbEntry { mac, dst })
            })
            .collect())
    }

    /// `bridge fdb append MAC dev DEVICE dst IP`: the all-zero MAC lists a node broadcasts go to
    /// (several such entries need APPEND, where rtnetlink's add sends EXCL).
    fn add_fdb(&self, index: u32, e: &FdbEntry) -> anyhow::Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_entry(index, e)));
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

    fn del_fdb(&self, index: u32, e: &FdbEntry) -> anyhow::Result<()> {
        Ok(self
            .rt
            .block_on(self.handle.neighbours().del(fdb_entry(index, e)).execute())?)
    }

    fn neighbours(&self, index: u32) -> anyhow::Result<Vec<Neighbour>> {
        let mut found = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let all: Vec<NeighbourMessage> = self.rt.block_on(
                self.handle
                    .neighbours()
                    .get()
                    .set_address_family(family)
                    .execute()
                    .try_collect(),
            )?;
            found.extend(
                all.iter()
                    .filter(|m| {
                        m.header.ifindex == index && m.header.state == NeighbourState::Permanent
                    })
                    .filter_map(|m| {
                        let ip = m.attributes.iter().find_map(|a| match a {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                                Some(IpAddr::V4(*ip))
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                                Some(IpAddr::V6(*ip))
                            }
                            _ => None,
                        })?;
                        let mac = lladdr(m)?;
                        Some(Neighbour { ip, mac })
                    }),
            );
        }
        Ok(found)
    }

    /// `ip neigh replace IP lladdr MAC dev DEVICE nud permanent`.
    fn set_neighbour(&self, index: u32, n: &Neighbour) -> anyhow::Result<()> {
        Ok(self.rt.block_on(
            self.handle
                .neighbours()
                .add(index, n.ip)
                .link_layer_address(&n.mac)
                .replace()
                .execute(),
        )?)
    }

    fn del_neighbour(&self, index: u32, n: &Neighbour) -> anyhow::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = index;
        let dst = match n.ip {
            IpAddr::V4(ip) => {
                m.header.family = AddressFamily::Inet;
                NeighbourAddress::Inet(ip)
            }
            IpAddr::V6(ip) => {
                m.header.family = AddressFamily::Inet6;
                NeighbourAddress::Inet6(ip)
            }
        };
        m.attributes.push(NeighbourAttribute::Destination(dst));
        Ok(self
            .rt
            .block_on(self.handle.neighbours().del(m).execute())?)
    }

    fn sysctl(&self, key: &str) -> anyhow::Result<String> {
        sysctl::read(key)
    }

    fn set_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sysctl::write(key, value)
    }
}

/// The request for `r` in `table`, through `oif` if given.
fn route_message(r: &Route, table: u32, oif: Option<u32>) -> anyhow::Result<RouteMessage> {
    let len = r.dst.prefix_len();
    match (r.dst.addr(), r.via) {
        (IpAddr::V4(dst), IpAddr::V4(via)) => Ok(owned_route(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst, len)
                .gateway(via),
            table,
            oif,
        )),
        (IpAddr::V6(dst), IpAddr::V6(via)) => Ok(owned_route(
            RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst, len)
                .gateway(via),
            table,
            oif,
        )),
        _ => Err(anyhow!("mixed address families")),
    }
}

/// A guard: `blackhole DST metric GUARD_METRIC proto 202` in the main table.
fn guard_message(dst: Cidr) -> RouteMessage {
    let len = dst.prefix_len();
    match dst.addr() {
        IpAddr::V4(a) => guard(RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, len)),
        IpAddr::V6(a) => guard(RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, len)),
    }
}

/// What makes a route to a destination of either family a guard.
fn guard<T>(b: RouteMessageBuilder<T>) -> RouteMessage {
    b.table_id(MAIN_TABLE)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .scope(RouteScope::Universe)
        .kind(RouteType::BlackHole)
        .priority(GUARD_METRIC)
        .build()
}

/// One of the agent's guards: a blackhole of its protocol at the guard metric.
pub(crate) fn is_guard(m: &RouteMessage) -> bool {
    m.header.kind == RouteType::BlackHole
        && m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
        && m.attributes
            .contains(&RouteAttribute::Priority(GUARD_METRIC))
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

/// A neighbour's (or FDB entry's) MAC address, if it has one of six bytes.
fn lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Mac::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn fdb_entry(index: u32, e: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            e.dst,
        )));
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
    let (mut via, mut oif, mut metric) = (None, None, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = IpAddr::V4(*d),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = IpAddr::V6(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => via = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let dst = Cidr::new(dst, m.header.destination_prefix_length).ok()?;
    // The metric the kernel gives a route written without one, as the agent writes them.
    let default_metric = if dst.is_ipv4() {
        0
    } else {
        IPV6_DEFAULT_METRIC
    };
    Some(Installed {
        dst,
        via,
        oif,
        replaceable: m.header.tos == 0 && metric == default_metric,
    })
}

/// The kernel's metric of an IPv6 route added without one (`IP6_RT_PRIO_USER`).
const IPV6_DEFAULT_METRIC: u32 = 1024;

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

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;
    use std::process::Command;

    use rtnetlink::packet_core::{ErrorMessage, NetlinkHeader};

    use super::*;

    fn answer(seq: u32, code: i32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(code);
        NetlinkMessage::new(header, NetlinkPayload::Error(e))
    }

    #[test]
    fn each_request_of_a_datagram_gets_its_own_answer() {
        let results = acknowledged(3, vec![answer(7, 0), answer(8, -101), answer(9, 0)]);
        let shown: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(()) => "ok".into(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(shown, ["ok", "Network is unreachable (os error 101)", "ok"]);
        // Wrapping sequence numbers are still in order.
        assert!(acknowledged(2, vec![answer(u32::MAX, 0), answer(0, 0)])
            .iter()
            .all(Result::is_ok));
    }

    #[test]
    fn answers_that_are_not_one_each_in_order_leave_every_result_failed() {
        for answers in [
            vec![answer(1, 0), answer(2, 0)],
            vec![answer(1, 0), answer(3, 0), answer(2, 0)],
        ] {
            let results = acknowledged(3, answers);
            assert_eq!(results.len(), 3);
            assert!(results.iter().all(Result::is_err));
        }
    }

    /// Set in the run of [`batches_against_the_kernel`] inside its own network namespace.
    const INSIDE: &str = "LIQONET_TEST_IN_NETNS";

    /// The real kernel, in a network namespace of the test's own (root only; skipped
    /// otherwise): this test binary runs the test again under `unshare -n`.
    #[test]
    fn batches_against_the_kernel() {
        if std::env::var_os(INSIDE).is_some() {
            in_namespace();
            return;
        }
        let name = "netlink::tests::batches_against_the_kernel";
        let exe = std::env::current_exe().expect("the test binary");
        let out = Command::new("unshare")
            .arg("-n")
            .arg(exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(INSIDE, "1")
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("Operation not permitted") => {
                eprintln!("skipped: a network namespace needs root");
            }
            Ok(out) => panic!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("skipped: no unshare ({e})"),
        }
    }

    fn sh(line: &str) {
        let args: Vec<&str> = line.split_whitespace().collect();
        let status = Command::new(args[0]).args(&args[1..]).status();
        assert!(status.is_ok_and(|s| s.success()), "{line}");
    }

    fn route(dst: &str, via: &str) -> Route {
        Route {
            dst: dst.parse().expect("a CIDR"),
            via: via.parse().expect("an IP"),
            overlay: false,
        }
    }

    fn errors(results: &[anyhow::Result<()>]) -> Vec<(usize, String)> {
        results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e.to_string())))
            .collect()
    }

    const TABLE: u32 = 2741;

    fn in_namespace() {
        sh("ip link set lo up");
        sh("ip link add eth0 type veth peer name peer0");
        sh("ip link set peer0 up");
        sh("ip link set eth0 up");
        sh("ip addr add 192.0.2.1/24 dev eth0");
        sh("ip -6 addr add 2001:db8::1/64 dev eth0 nodad");
        let nl = Netlink::new().expect("netlink");

        // Three datagrams; one route of the first and one of the second have a next hop no
        // link reaches: those two fail, every other one is installed.
        let mut routes: Vec<Route> = (0..150)
            .map(|i| route(&format!("10.1.{i}.0/24"), "192.0.2.10"))
            .collect();
        routes[5].via = "198.51.100.1".parse().expect("an IP");
        routes[70].via = "198.51.100.1".parse().expect("an IP");
        routes.push(route("2001:db8:1::/48", "2001:db8::10"));
        let results = nl.add_routes(&routes, TABLE, None);
        let refused: Vec<usize> = errors(&results).iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, [5, 70], "{:?}", errors(&results));
        assert!(
            errors(&results)[0].1.contains("os error 101"),
            "{:?}",
            errors(&results)
        );
        let installed = nl.routes(TABLE).expect("a dump");
        assert_eq!(installed.len(), 149);
        // As written, with the kernel's default metric (0 for IPv4, 1024 for IPv6).
        assert!(installed.iter().all(|(_, r)| r.replaceable));

        // Re-pointed: replaced in place, none added beside.
        for r in &mut routes {
            r.via = if r.dst.is_ipv4() {
                "192.0.2.20"
            } else {
                "2001:db8::20"
            }
            .parse()
            .expect("an IP");
        }
        let results = nl.add_routes(&routes, TABLE, None);
        assert!(results.iter().all(Result::is_ok), "{:?}", errors(&results));
        let installed = nl.routes(TABLE).expect("a dump");
        assert_eq!(installed.len(), 151);
        let twenty = |r: &Installed| {
            r.via
                .is_some_and(|v| v.to_string().ends_with("::20") || v.to_string().ends_with(".20"))
        };
        assert!(installed.iter().all(|(_, r)| twenty(r)));

        // A route of another metric is not of the agent's form.
        sh("ip route add 10.9.0.0/24 via 192.0.2.10 table 2741 proto 202 metric 5");
        let other: Vec<bool> = nl
            .routes(TABLE)
            .expect("a dump")
            .iter()
            .filter(|(_, r)| r.dst.to_string() == "10.9.0.0/24")
            .map(|(_, r)| r.replaceable)
            .collect();
        assert_eq!(other, [false]);

        // Rules: a duplicate in the middle of a batch is refused alone.
        let rule = |p: &str| Rule {
            selector: Selector::To,
            prefix: p.parse().expect("a CIDR"),
        };
        let rules = [
            rule("10.1.0.0/16"),
            rule("10.1.0.0/16"),
            rule("2001:db8:1::/48"),
        ];
        let results = nl.add_rules(&rules, TABLE, TABLE);
        let refused = errors(&results);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, 1);
        assert!(refused[0].1.contains("os error 17"), "{refused:?}");
        let found = nl.rules(TABLE, TABLE).expect("a dump");
        assert_eq!(found.len(), 2);

        // Deletions: everything, and once more what is gone already (refused, alone).
        let refs: Vec<RuleMessage> = found.into_iter().map(|(m, _)| m).collect();
        let mut twice = refs.clone();
        twice.push(refs[0].clone());
        let refused: Vec<usize> = errors(&nl.del_rules(twice))
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(refused, [2]);
        let refs: Vec<RouteMessage> = nl
            .routes(TABLE)
            .expect("a dump")
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert!(nl.del_routes(refs).iter().all(Result::is_ok));
        assert!(nl.routes(TABLE).expect("a dump").is_empty());
        assert!(nl.rules(TABLE, TABLE).expect("a dump").is_empty());
    }
}
