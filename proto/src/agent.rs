//! The route agent's configuration (standalone YAML file).
//!
//! One file describes the node the agent runs on, every node of the cluster (address and pod
//! CIDR), which of them is the gateway node, and the remote (remapped) networks to route there.
//! Moving the gateway is changing `gatewayNode` everywhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors, Parsed};
use crate::Cidr;

pub const DEFAULT_TABLE: u32 = 2741;
pub const DEFAULT_RULE_PRIORITY: u32 = 2741;
pub const DEFAULT_VXLAN_DEVICE: &str = "liqo.vxlan";
pub const DEFAULT_VNI: u32 = 2741;
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// A 1500-byte underlay minus the VXLAN encapsulation (outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14).
pub const DEFAULT_VXLAN_MTU: u16 = 1450;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Next hop = the gateway node's IP: the nodes must share a link.
    Direct,
    /// A VXLAN overlay to the gateway node: works across subnets and where the network drops
    /// packets whose addresses are not the nodes'.
    Vxlan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub node_name: String,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    pub gateway_node: String,
    /// The remote networks as this cluster's pods address them (the gateway's `remapped`).
    #[serde(default)]
    pub remote_networks: Vec<Cidr>,
    pub nodes: Vec<NodeConfig>,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    #[serde(default)]
    pub vxlan: VxlanConfig,
    /// Seconds between periodic reconciliations (a config change is picked up within a second).
    #[serde(default = "default_reconcile_seconds")]
    pub reconcile_seconds: u32,
    /// Where `/metrics`, `/healthz` and `/status` (read by `liqonet-route-agent status`) are
    /// served; off when absent. Read at start only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<Parsed<SocketAddr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub ip: Parsed<Ipv4Addr>,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Cidr,
    /// The node's IPv6 address: the next hop for IPv6 remote networks in `direct` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Parsed<Ipv6Addr>>,
    /// The node's IPv6 pod subnet, for the overlay's return routes to dual-stack pods.
    #[serde(default, rename = "podCIDR6", skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanConfig {
    #[serde(default = "default_vxlan_device")]
    pub device: String,
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    #[serde(default = "default_vxlan_mtu")]
    pub mtu: u16,
    /// Each node's overlay address is this prefix with the host bits of its node IP.
    /// Spelt `overlayCIDR` like `podCIDR`; `overlayCidr` (what earlier versions accepted) still parses.
    #[serde(
        default = "default_overlay_cidr",
        rename = "overlayCIDR",
        alias = "overlayCidr"
    )]
    pub overlay_cidr: Cidr,
    /// Each node's IPv6 overlay address is this prefix with the host bits of its (IPv4) node IP.
    #[serde(default = "default_overlay_cidr6", rename = "overlayCIDR6")]
    pub overlay_cidr6: Cidr,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            device: default_vxlan_device(),
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            mtu: DEFAULT_VXLAN_MTU,
            overlay_cidr: default_overlay_cidr(),
            overlay_cidr6: default_overlay_cidr6(),
        }
    }
}

fn default_mode() -> Mode {
    Mode::Vxlan
}
fn default_table() -> u32 {
    DEFAULT_TABLE
}
fn default_rule_priority() -> u32 {
    DEFAULT_RULE_PRIORITY
}
fn default_reconcile_seconds() -> u32 {
    10
}
fn default_vxlan_device() -> String {
    DEFAULT_VXLAN_DEVICE.into()
}
fn default_vni() -> u32 {
    DEFAULT_VNI
}
fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}
fn default_vxlan_mtu() -> u16 {
    DEFAULT_VXLAN_MTU
}
fn default_overlay_cidr6() -> Cidr {
    Cidr::new(
        IpAddr::V6(Ipv6Addr::new(0xfdff, 0x2741, 0, 0, 0, 0, 0, 0)),
        96,
    )
    .expect("a valid prefix")
}

fn default_overlay_cidr() -> Cidr {
    Cidr::new(IpAddr::V4(Ipv4Addr::new(10, 80, 0, 0)), 12).expect("a valid prefix")
}

impl AgentConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let config: AgentConfig = crate::config::parse_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn is_gateway_node(&self) -> bool {
        self.node_name == self.gateway_node
    }

    /// A node's MAC address on the VXLAN overlay: locally administered (02), then 4c, then its
    /// IPv4 address. Every agent computes every node's, so the overlay needs no ARP or neighbour
    /// discovery (an ARP sent before the other node's device exists would be lost and retried
    /// only a second later).
    pub fn overlay_mac(&self, node: &NodeConfig) -> [u8; 6] {
        let [a, b, c, d] = node.ip.0.octets();
        [0x02, 0x4c, a, b, c, d]
    }

    /// A node's IPv6 address on the VXLAN overlay.
    pub fn overlay_ip6(&self, node: &NodeConfig) -> Ipv6Addr {
        let o = &self.vxlan.overlay_cidr6;
        let host_bits = (128 - u32::from(o.prefix_len())).min(32);
        let host_mask = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
        let net = match o.addr() {
            IpAddr::V6(a) => u128::from(a),
            IpAddr::V4(_) => 0,
        };
        Ipv6Addr::from(net | u128::from(u32::from(node.ip.0) & host_mask))
    }

    /// A node's address on the VXLAN overlay.
    pub fn overlay_ip(&self, node: &NodeConfig) -> Ipv4Addr {
        let o = &self.vxlan.overlay_cidr;
        // Saturating: an IPv6 prefix here is a validation error, not a panic.
        let host_bits = 32u32.saturating_sub(u32::from(o.prefix_len()));
        let host_mask = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
        let net = match o.addr() {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(_) => 0,
        };
        Ipv4Addr::from(net | (u32::from(node.ip.0) & host_mask))
    }

    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut err = |path: String, message: String| errs.push(ConfigError { path, message });
        if self.node(&self.node_name).is_none() {
            err(
                "nodeName".into(),
                format!("{:?} is not one of nodes[].name", self.node_name),
            );
        }
        if self.node(&self.gateway_node).is_none() {
            err(
                "gatewayNode".into(),
                format!("{:?} is not one of nodes[].name", self.gateway_node),
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(j) = self.nodes[..i].iter().position(|m| m.name == n.name) {
                err(
                    format!("nodes[{i}].name"),
                    format!("{:?} is also nodes[{j}].name", n.name),
                );
            }
            if let Some(j) = self.nodes[..i].iter().position(|m| m.ip == n.ip) {
                err(
                    format!("nodes[{i}].ip"),
                    format!("{} is also nodes[{j}].ip", n.ip.0),
                );
            }
            // Two nodes' pods in one subnet: the gateway node's return routes would collide.
            type PodSubnet = fn(&NodeConfig) -> Option<Cidr>;
            let pod_subnets: [(&str, PodSubnet); 2] = [
                ("podCIDR", |m| Some(m.pod_cidr)),
                ("podCIDR6", |m| m.pod_cidr6),
            ];
            for (field, of) in pod_subnets {
                let Some(mine) = of(n) else { continue };
                let clash = self.nodes[..i]
                    .iter()
                    .enumerate()
                    .find_map(|(j, m)| of(m).filter(|o| o.overlaps(&mine)).map(|o| (j, m, o)));
                if let Some((j, m, other)) = clash {
                    let how = if other == mine { "is also" } else { "overlaps" };
                    err(
                        format!("nodes[{i}].{field}"),
                        format!(
                            "\"{mine}\" (node {:?}) {how} nodes[{j}].{field} \"{other}\" (node {:?}); every node needs its own pod subnet",
                            n.name, m.name
                        ),
                    );
                }
            }
            if !n.pod_cidr.is_ipv4() {
                err(
                    format!("nodes[{i}].podCIDR"),
                    format!("\"{}\": IPv4 only", n.pod_cidr),
                );
            }
            if self.mode == Mode::Vxlan && self.vxlan.overlay_cidr.is_ipv4() {
                let ip = self.overlay_ip(n);
                if let Some(j) = self.nodes[..i]
                    .iter()
                    .position(|m| self.overlay_ip(m) == ip)
                {
                    err(
                        format!("nodes[{i}].ip"),
                        format!(
                            "its overlay address {ip} (vxlan.overlayCIDR with its host bits) is also nodes[{j}]'s; choose a shorter vxlan.overlayCIDR"
                        ),
                    );
                }
            }
        }
        for (i, r) in self.remote_networks.iter().enumerate() {
            let gateway_ip6 = self.node(&self.gateway_node).and_then(|g| g.ip6);
            if !r.is_ipv4() && self.mode == Mode::Direct && gateway_ip6.is_none() {
                err(
                    format!("remoteNetworks[{i}]"),
                    format!("\"{r}\": IPv6 in direct mode needs the gateway node's ip6"),
                );
            }
            let pods = |n: &&NodeConfig| {
                n.pod_cidr.overlaps(r) || n.pod_cidr6.is_some_and(|p| p.overlaps(r))
            };
            if let Some(n) = self.nodes.iter().find(pods) {
                err(
                    format!("remoteNetworks[{i}]"),
                    format!(
                        "\"{r}\" overlaps the pod CIDR of node {:?} (\"{}\")",
                        n.name, n.pod_cidr
                    ),
                );
            }
        }
        // Table 0 is unspecified, 253-255 are the kernel's default, main and local tables.
        if matches!(self.table, 0 | 253..=255) {
            err(
                "table".into(),
                format!("{} is a reserved routing table", self.table),
            );
        }
        // Priority 0 is the local table's rule, 32766 and 32767 main's and default's.
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            err(
                "rulePriority".into(),
                format!(
                    "{} must be between 1 and 32765 (before the main table's rule)",
                    self.rule_priority
                ),
            );
        }
        let v = &self.vxlan;
        if v.vni == 0 || v.vni >= 1 << 24 {
            err(
                "vxlan.vni".into(),
                format!("{} is not a VNI (1-16777215)", v.vni),
            );
        }
        if v.port == 0 {
            err("vxlan.port".into(), "0 is not a port (1-65535)".into());
        }
        if !(576..=9000).contains(&v.mtu) {
            err(
                "vxlan.mtu".into(),
                format!("{} is out of range (576-9000)", v.mtu),
            );
        }
        if v.device.is_empty() || v.device.len() > 15 || v.device.contains(['/', ':', ' ']) {
            err(
                "vxlan.device".into(),
                format!("{:?} is not an interface name (1-15 characters)", v.device),
            );
        }
        if v.overlay_cidr6.is_ipv4() || v.overlay_cidr6.prefix_len() < 96 {
            err(
                "vxlan.overlayCIDR6".into(),
                format!("\"{}\": an IPv6 prefix of /96 or longer", v.overlay_cidr6),
            );
        }
        if !v.overlay_cidr.is_ipv4() {
            err(
                "vxlan.overlayCIDR".into(),
                format!("\"{}\": IPv4 only", v.overlay_cidr),
            );
        }
        if self.reconcile_seconds == 0 {
            err("reconcileSeconds".into(), "must be at least 1".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "nodeName: w1\ngatewayNode: gw\nremoteNetworks: [10.245.0.0/16]\nnodes:\n  - {name: gw, ip: 172.20.0.10, podCIDR: 10.244.0.0/24}\n  - {name: w1, ip: 172.20.0.11, podCIDR: 10.244.1.0/24}\n";

    fn first_error(text: &str) -> ConfigError {
        AgentConfig::from_yaml(text).unwrap_err().0.remove(0)
    }

    #[test]
    fn defaults_and_overlay_addresses() {
        let c = AgentConfig::from_yaml(BASE).unwrap();
        assert_eq!(c.mode, Mode::Vxlan);
        assert_eq!(
            (c.table, c.rule_priority, c.vxlan.vni, c.vxlan.mtu),
            (2741, 2741, 2741, 1450)
        );
        assert!(!c.is_gateway_node());
        let gw = c.node("gw").unwrap();
        assert_eq!(c.overlay_ip(gw), Ipv4Addr::new(10, 84, 0, 10));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = AgentConfig::from_yaml(include_str!("../../deploy/standalone/route-agent.yaml"))
            .unwrap();
        assert_eq!(c.nodes.len(), 3);
    }

    /// The documented route agent example, verbatim: the first YAML block of the "Route agent"
    /// section of docs/configuration.md (read from there so the two cannot drift apart).
    fn readme_example() -> &'static str {
        let readme = include_str!("../../docs/configuration.md");
        let (_, section) = readme
            .split_once("\n## Route agent\n")
            .expect("docs/configuration.md has a \"## Route agent\" section");
        let (_, block) = section
            .split_once("```yaml\n")
            .expect("the section has a YAML example");
        block.split_once("```").expect("the example ends").0
    }

    #[test]
    fn the_readme_example_is_valid() {
        let c = AgentConfig::from_yaml(readme_example()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.vxlan.overlay_cidr,
            "10.80.0.0/12".parse::<Cidr>().unwrap()
        );
        assert_eq!(c.nodes.len(), 2);
    }

    #[test]
    fn the_metrics_address_is_optional_and_must_be_an_address() {
        assert_eq!(AgentConfig::from_yaml(BASE).unwrap().metrics_address, None);
        let c = AgentConfig::from_yaml(&format!("{BASE}metricsAddress: 127.0.0.1:9742\n")).unwrap();
        assert_eq!(
            c.metrics_address.map(|a| a.0),
            Some(SocketAddr::from(([127, 0, 0, 1], 9742)))
        );
        assert_eq!(
            first_error(&format!("{BASE}metricsAddress: localhost\n")).path,
            "metricsAddress"
        );
    }

    #[test]
    fn overlay_cidr_is_spelt_as_documented_and_the_old_spelling_still_parses() {
        for key in ["overlayCIDR", "overlayCidr"] {
            let c = AgentConfig::from_yaml(&format!("{BASE}vxlan: {{{key}: 10.64.0.0/12}}\n"))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(
                c.vxlan.overlay_cidr,
                "10.64.0.0/12".parse::<Cidr>().unwrap()
            );
        }
        // Errors name the field as it is written.
        let e = first_error(&format!("{BASE}vxlan: {{overlayCIDR: fd00::/64}}\n"));
        assert_eq!(e.path, "vxlan.overlayCIDR");
    }

    #[test]
    fn nodes_cannot_share_a_pod_cidr() {
        let text = format!("{BASE}  - {{name: w2, ip: 172.20.0.12, podCIDR: 10.244.1.0/24}}\n");
        let e = first_error(&text);
        assert_eq!(e.path, "nodes[2].podCIDR");
        assert!(
            e.message.contains("\"10.244.1.0/24\"")
                && e.message.contains("\"w1\"")
                && e.message.contains("\"w2\"")
                && e.message.contains("nodes[1].podCIDR"),
            "{e}"
        );
        // Overlapping is as bad as equal: return routes would collide.
        let e = first_error(&format!(
            "{BASE}  - {{name: w2, ip: 172.20.0.12, podCIDR: 10.244.0.0/16}}\n"
        ));
        assert_eq!(e.path, "nodes[2].podCIDR");
        assert!(e.message.contains("overlaps"), "{e}");
        // The same for IPv6 pod subnets.
        let text = BASE
            .replace(
                "podCIDR: 10.244.0.0/24",
                "podCIDR: 10.244.0.0/24, podCIDR6: 'fd10:244::/64'",
            )
            .replace(
                "podCIDR: 10.244.1.0/24",
                "podCIDR: 10.244.1.0/24, podCIDR6: 'fd10:244::/64'",
            );
        assert_eq!(first_error(&text).path, "nodes[1].podCIDR6");
    }

    #[test]
    fn errors_name_their_fields() {
        assert_eq!(
            first_error(&BASE.replace("gatewayNode: gw", "gatewayNode: gx")).path,
            "gatewayNode"
        );
        assert_eq!(
            first_error(&BASE.replace("nodeName: w1", "nodeName: w9")).path,
            "nodeName"
        );
        assert_eq!(
            first_error(&BASE.replace("172.20.0.11", "172.20.0.10")).path,
            "nodes[1].ip"
        );
        assert_eq!(
            first_error(&BASE.replace("10.245.0.0/16", "10.244.0.0/16")).path,
            "remoteNetworks[0]"
        );
        assert_eq!(first_error(&format!("{BASE}table: 254\n")).path, "table");
        assert_eq!(
            first_error(&format!("{BASE}rulePriority: 32766\n")).path,
            "rulePriority"
        );
        assert_eq!(
            first_error(&format!("{BASE}vxlan: {{vni: 0}}\n")).path,
            "vxlan.vni"
        );
        assert_eq!(first_error(&format!("{BASE}mode: bgp\n")).path, "mode");
        let e = first_error(&BASE.replace("172.20.0.11", "172.36.0.10"));
        assert_eq!(e.path, "nodes[1].ip");
        assert!(e.message.contains("overlay address 10.84.0.10"), "{e}");
    }
}
