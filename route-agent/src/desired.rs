//! The state a node should have, derived from the config alone.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use liqonet_proto::agent::{AgentConfig, Mode};
use liqonet_proto::Cidr;

/// A route in the agent's table: `dst via via [dev <vxlan device>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Cidr,
    pub via: Ipv4Addr,
    /// Through the overlay device (else through whatever link reaches `via`).
    pub overlay: bool,
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

/// The VXLAN device of the overlay between this node and the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u16,
    /// This node's overlay address and the overlay's prefix length.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The node IPs that broadcasts (ARP) are sent to: the peers on the overlay.
    pub remotes: BTreeSet<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub vxlan: Option<Vxlan>,
    pub routes: BTreeSet<Route>,
    pub rules: BTreeSet<Rule>,
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
    match (c.mode, gateway_here) {
        (Mode::Direct, true) => {}
        (Mode::Direct, false) => {
            for &dst in &c.remote_networks {
                d.routes.insert(Route {
                    dst,
                    via: gw.ip.0,
                    overlay: false,
                });
                d.rules.insert(Rule {
                    selector,
                    prefix: dst,
                });
            }
        }
        (Mode::Vxlan, _) => {
            let remotes = if gateway_here {
                c.nodes
                    .iter()
                    .filter(|n| n.name != me.name)
                    .map(|n| n.ip.0)
                    .collect()
            } else {
                BTreeSet::from([gw.ip.0])
            };
            d.vxlan = Some(Vxlan {
                name: c.vxlan.device.clone(),
                vni: c.vxlan.vni,
                port: c.vxlan.port,
                local: me.ip.0,
                mtu: c.vxlan.mtu,
                address: c.overlay_ip(me),
                prefix_len: c.vxlan.overlay_cidr.prefix_len(),
                remotes,
            });
            if gateway_here {
                for n in c.nodes.iter().filter(|n| n.name != me.name) {
                    d.routes.insert(Route {
                        dst: n.pod_cidr,
                        via: c.overlay_ip(n),
                        overlay: true,
                    });
                }
            } else {
                for &dst in &c.remote_networks {
                    d.routes.insert(Route {
                        dst,
                        via: c.overlay_ip(gw),
                        overlay: true,
                    });
                }
            }
            for &prefix in &c.remote_networks {
                d.rules.insert(Rule { selector, prefix });
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node: &str, mode: &str) -> AgentConfig {
        AgentConfig::from_yaml(&format!(
            "nodeName: {node}\nmode: {mode}\ngatewayNode: gw\nremoteNetworks: [10.245.0.0/16, 10.97.0.0/16]\nnodes:\n  - {{name: gw, ip: 172.20.0.10, podCIDR: 10.244.0.0/24}}\n  - {{name: w1, ip: 172.20.0.11, podCIDR: 10.244.1.0/24}}\n  - {{name: w2, ip: 172.21.0.12, podCIDR: 10.244.2.0/24}}\n"
        ))
        .unwrap()
    }

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn direct_worker_routes_to_the_gateway_node_ip() {
        let d = desired(&config("w1", "direct"));
        assert_eq!(d.vxlan, None);
        assert!(!d.forwarding);
        let via: Vec<_> = d.routes.iter().map(|r| (r.dst, r.via, r.overlay)).collect();
        let gw = Ipv4Addr::new(172, 20, 0, 10);
        assert_eq!(
            via,
            [
                (c("10.97.0.0/16"), gw, false),
                (c("10.245.0.0/16"), gw, false)
            ]
        );
        assert!(d.rules.iter().all(|r| r.selector == Selector::To));
        assert_eq!(d.rules.len(), 2);
    }

    #[test]
    fn direct_gateway_node_only_forwards() {
        let d = desired(&config("gw", "direct"));
        assert!(d.forwarding && d.routes.is_empty() && d.rules.is_empty() && d.vxlan.is_none());
    }

    #[test]
    fn vxlan_worker_goes_through_the_gateway_overlay_address() {
        let d = desired(&config("w2", "vxlan"));
        let v = d.vxlan.unwrap();
        assert_eq!(
            (v.local, v.address, v.prefix_len),
            (
                Ipv4Addr::new(172, 21, 0, 12),
                Ipv4Addr::new(10, 85, 0, 12),
                12
            )
        );
        assert_eq!(v.remotes, BTreeSet::from([Ipv4Addr::new(172, 20, 0, 10)]));
        assert!(d
            .routes
            .iter()
            .all(|r| r.via == Ipv4Addr::new(10, 84, 0, 10) && r.overlay));
    }

    #[test]
    fn vxlan_gateway_node_returns_through_the_overlay() {
        let d = desired(&config("gw", "vxlan"));
        assert!(d.forwarding);
        assert_eq!(d.vxlan.unwrap().remotes.len(), 2);
        let routes: Vec<_> = d.routes.iter().map(|r| (r.dst, r.via)).collect();
        assert_eq!(
            routes,
            [
                (c("10.244.1.0/24"), Ipv4Addr::new(10, 84, 0, 11)),
                (c("10.244.2.0/24"), Ipv4Addr::new(10, 85, 0, 12))
            ]
        );
        assert!(d.rules.iter().all(|r| r.selector == Selector::From));
    }
}
