//! The state a node should have, derived from the config alone.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use liqonet_proto::agent::{AgentConfig, Mode, NodeConfig};
use liqonet_proto::Cidr;

/// A route in the agent's table: `dst via via [dev <vxlan device>]` (IPv4 or IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Cidr,
    pub via: IpAddr,
    /// Through the overlay device (else through whatever link reaches `via`).
    pub overlay: bool,
}

/// As `ip route` writes it: `10.245.0.0/16 via 10.84.0.10 (overlay)`.
impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.dst, self.via)?;
        if self.overlay {
            write!(f, " (overlay)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    /// `ip rule add to PREFIX lookup TABLE`
    To,
    /// `ip rule add from PREFIX lookup TABLE`
    From,
}

/// A rule sending traffic to (or from) a prefix to the agent's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub selector: Selector,
    pub prefix: Cidr,
}

/// As `ip rule` writes it: `to 10.245.0.0/16`.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let selector = match self.selector {
            Selector::To => "to",
            Selector::From => "from",
        };
        write!(f, "{selector} {}", self.prefix)
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// The all-zero MAC: an FDB entry with it lists a node that broadcasts are sent to.
pub const FLOOD: Mac = [0; 6];

/// `aa:bb:cc:dd:ee:ff`, as `ip` and `bridge` write it.
pub struct MacDisplay<'a>(pub &'a Mac);

impl std::fmt::Display for MacDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An FDB entry of the overlay device: frames to `mac` are sent to the node `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// As `bridge fdb` writes it: `02:4c:ac:14:00:0a dst 172.20.0.10`.
impl std::fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} dst {}", MacDisplay(&self.mac), self.dst)
    }
}

/// A permanent ARP (IPv4) or NDP (IPv6) entry of the overlay device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Mac,
}

/// As `ip neigh` writes it: `10.84.0.10 lladdr 02:4c:ac:14:00:0a`.
impl std::fmt::Display for Neighbour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} lladdr {}", self.ip, MacDisplay(&self.mac))
    }
}

/// The VXLAN device of the overlay between this node and the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u16,
    /// This node's overlay MAC ([`AgentConfig::overlay_mac`]).
    pub mac: Mac,
    /// This node's overlay addresses (IPv4 and IPv6) with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// For each node this one talks to over the overlay: its MAC to its node IP, and an all-zero
    /// entry to it (broadcasts still reach it, should an ARP be needed after all).
    pub fdb: BTreeSet<FdbEntry>,
    /// Each such node's overlay addresses to its MAC: no ARP or neighbour discovery, so the
    /// first packet to a node whose device was made an instant ago is not held for the
    /// kernel's one-second ARP retry.
    pub neighbours: BTreeSet<Neighbour>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub vxlan: Option<Vxlan>,
    pub routes: BTreeSet<Route>,
    pub rules: BTreeSet<Rule>,
    /// Remote networks blackholed in the main table at the lowest preference: wherever no route
    /// of liqonet's carries one (the gateway's into its TUN, the agent's table), its traffic is
    /// dropped, never sent in clear by the node's default route. That happens on a gateway node
    /// between a handover's steps, and on any node while its agent is not running.
    pub guards: BTreeSet<Cidr>,
    /// The gateway node forwards between the overlay or node network and the TUN.
    pub forwarding: bool,
}

/// What this node needs:
/// - a worker routes every remote network to the gateway node (its IP in `direct` mode, its
///   overlay address in `vxlan` mode), selected by `to REMOTE` rules;
/// - the gateway node forwards; in `vxlan` mode it also terminates the overlay and sends return
///   traffic (`from REMOTE` rules) to each other node's pods through the overlay.
pub fn desired(c: &AgentConfig) -> Desired {
    let (Some(me), Some(gw)) = (c.node(&c.node_name), c.node(&c.gateway_node)) else {
        return Desired::default(); // Validation rules this out.
    };
    let gateway_here = c.is_gateway_node();
    let mut d = Desired {
        forwarding: gateway_here,
        ..Desired::default()
    };
    let selector = if gateway_here {
        Selector::From
    } else {
        Selector::To
    };
    let overlay = c.mode == Mode::Vxlan;
    // The next hop towards `node` for a prefix of `dst`'s family.
    let via = |node: &NodeConfig, dst: &Cidr| -> Option<IpAddr> {
        match (overlay, dst.is_ipv4()) {
            (true, true) => Some(IpAddr::V4(c.overlay_ip(node))),
            (true, false) => Some(IpAddr::V6(c.overlay_ip6(node))),
            (false, true) => Some(IpAddr::V4(node.ip.0)),
            (false, false) => node.ip6.map(|ip| IpAddr::V6(ip.0)),
        }
    };
    if overlay {
        // The gateway node talks to every other node, a worker only to the gateway node.
        let peers: Vec<&NodeConfig> = if gateway_here {
            c.nodes.iter().filter(|n| n.name != me.name).collect()
        } else {
            vec![gw]
        };
        let mut fdb = BTreeSet::new();
        let mut neighbours = BTreeSet::new();
        for n in peers {
            let mac = c.overlay_mac(n);
            fdb.insert(FdbEntry { mac, dst: n.ip.0 });
            fdb.insert(FdbEntry {
                mac: FLOOD,
                dst: n.ip.0,
            });
            for ip in [IpAddr::V4(c.overlay_ip(n)), IpAddr::V6(c.overlay_ip6(n))] {
                neighbours.insert(Neighbour { ip, mac });
            }
        }
        let v6 = c.overlay_ip6(me);
        d.vxlan = Some(Vxlan {
            name: c.vxlan.device.clone(),
            vni: c.vxlan.vni,
            port: c.vxlan.port,
            local: me.ip.0,
            mtu: c.vxlan.mtu,
            mac: c.overlay_mac(me),
            addresses: vec![
                (
                    IpAddr::V4(c.overlay_ip(me)),
                    c.vxlan.overlay_cidr.prefix_len(),
                ),
                (IpAddr::V6(v6), c.vxlan.overlay_cidr6.prefix_len()),
            ],
            fdb,
            neighbours,
        });
    }
    match (overlay, gateway_here) {
        // Direct mode: the gateway node's own routes (the TUN's) do it all.
        (false, true) => {}
        (true, true) => {
            for n in c.nodes.iter().filter(|n| n.name != me.name) {
                for dst in std::iter::once(n.pod_cidr).chain(n.pod_cidr6) {
                    if let Some(via) = via(n, &dst) {
                        d.routes.insert(Route { dst, via, overlay });
                    }
                }
            }
        }
        (_, false) => {
            for &dst in &c.remote_networks {
                if let Some(via) = via(gw, &dst) {
                    d.routes.insert(Route { dst, via, overlay });
                }
            }
        }
    }
    if overlay || !gateway_here {
        for &prefix in &c.remote_networks {
            d.rules.insert(Rule { selector, prefix });
        }
    }
    d.guards = c.remote_networks.iter().copied().collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node: &str, mode: &str) -> AgentConfig {
        AgentConfig::from_yaml(&format!(
            "nodeName: {node}\nmode: {mode}\ngatewayNode: gw\nremoteNetworks: [10.245.0.0/16, 10.97.0.0/16, fd10:245::/56]\nnodes:\n  - {{name: gw, ip: 172.20.0.10, podCIDR: 10.244.0.0/24, ip6: 'fd00:172:20::10', podCIDR6: 'fd10:244::/64'}}\n  - {{name: w1, ip: 172.20.0.11, podCIDR: 10.244.1.0/24, podCIDR6: 'fd10:244:0:1::/64'}}\n  - {{name: w2, ip: 172.21.0.12, podCIDR: 10.244.2.0/24}}\n"
        ))
        .unwrap()
    }

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn direct_worker_routes_to_the_gateway_node_ip() {
        let d = desired(&config("w1", "direct"));
        assert_eq!(d.vxlan, None);
        assert!(!d.forwarding);
        let via: Vec<_> = d.routes.iter().map(|r| (r.dst, r.via, r.overlay)).collect();
        let gw = ip("172.20.0.10");
        assert_eq!(
            via,
            [
                (c("10.97.0.0/16"), gw, false),
                (c("10.245.0.0/16"), gw, false),
                (c("fd10:245::/56"), ip("fd00:172:20::10"), false)
            ]
        );
        assert!(d.rules.iter().all(|r| r.selector == Selector::To));
        assert_eq!(d.rules.len(), 3);
    }

    #[test]
    fn direct_gateway_node_only_forwards() {
        let d = desired(&config("gw", "direct"));
        assert!(d.forwarding && d.routes.is_empty() && d.rules.is_empty() && d.vxlan.is_none());
    }

    #[test]
    fn vxlan_worker_goes_through_the_gateway_overlay_addresses() {
        let d = desired(&config("w2", "vxlan"));
        let v = d.vxlan.unwrap();
        assert_eq!(v.local, Ipv4Addr::new(172, 21, 0, 12));
        assert_eq!(
            v.addresses,
            [(ip("10.85.0.12"), 12), (ip("fdff:2741::ac15:c"), 96)]
        );
        assert_eq!(v.mac, [0x02, 0x4c, 172, 21, 0, 12]);
        let gw = Ipv4Addr::new(172, 20, 0, 10);
        let gw_mac = [0x02, 0x4c, 172, 20, 0, 10];
        assert_eq!(
            v.fdb,
            BTreeSet::from([
                FdbEntry {
                    mac: FLOOD,
                    dst: gw
                },
                FdbEntry {
                    mac: gw_mac,
                    dst: gw
                }
            ])
        );
        let neighbours: Vec<String> = v.neighbours.iter().map(ToString::to_string).collect();
        assert_eq!(
            neighbours,
            [
                "10.84.0.10 lladdr 02:4c:ac:14:00:0a",
                "fdff:2741::ac14:a lladdr 02:4c:ac:14:00:0a"
            ]
        );
        let via: Vec<_> = d.routes.iter().map(|r| r.via).collect();
        assert_eq!(
            via,
            [ip("10.84.0.10"), ip("10.84.0.10"), ip("fdff:2741::ac14:a")]
        );
        assert!(d.routes.iter().all(|r| r.overlay));
    }

    #[test]
    fn vxlan_gateway_node_returns_through_the_overlay() {
        let d = desired(&config("gw", "vxlan"));
        assert!(d.forwarding);
        let v = d.vxlan.unwrap();
        assert_eq!((v.fdb.len(), v.neighbours.len()), (4, 4));
        let routes: Vec<_> = d.routes.iter().map(|r| (r.dst, r.via)).collect();
        assert_eq!(
            routes,
            [
                (c("10.244.1.0/24"), ip("10.84.0.11")),
                (c("10.244.2.0/24"), ip("10.85.0.12")),
                (c("fd10:244:0:1::/64"), ip("fdff:2741::ac14:b")),
            ]
        );
        assert!(d.rules.iter().all(|r| r.selector == Selector::From));
    }
}
