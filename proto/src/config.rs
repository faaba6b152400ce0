//! The gateway's configuration (standalone YAML file; the Kubernetes mode reuses the peer types).
//!
//! Parsing is two steps: serde checks the shape (through `serde_path_to_error`, so a wrong type or
//! an unknown field is reported with its path), then [`GatewayConfig::validate`] checks meaning
//! across fields. Every error names the field, as `peers[0].networks[1].cidr`, and the value.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ipam::{Ipam, IpamState};
use crate::{Cidr, Key};

pub const DEFAULT_INTERFACE: &str = "liqo0";
pub const DEFAULT_LISTEN_PORT: u16 = 51840;
pub const DEFAULT_MTU: u16 = 1420;
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9000;
/// The data-path thread's `SCHED_FIFO` priority: low among real-time threads, below threaded
/// interrupt handlers (50).
pub const DEFAULT_REALTIME_PRIORITY: u8 = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    #[serde(default = "default_interface")]
    pub interface: String,
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    pub private_key_file: PathBuf,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// This cluster's own networks: no peer network may be routed over them.
    #[serde(default)]
    pub local_networks: Vec<Cidr>,
    /// Host addresses (/32, /128) for the TUN device, each inside a local network. ICMP errors
    /// this node sends through the tunnel (fragmentation needed, time exceeded) take them as
    /// source; without one the kernel picks some other address, which the peer drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interface_addresses: Vec<Cidr>,
    /// Where `/metrics` and `/healthz` are served; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<Parsed<SocketAddr>>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Where `remapped: auto` prefixes come from.
    #[serde(default)]
    pub ipam: IpamConfig,
    /// Segmentation offloads (TUN TSO/GRO, UDP GSO/GRO); off forces one packet per syscall.
    #[serde(default = "default_offload")]
    pub offload: bool,
    /// In-tunnel probes of every peer: latency, loss, and silence that makes a peer down.
    #[serde(default)]
    pub probes: ProbeConfig,
    /// The data-path thread's real-time (`SCHED_FIFO`) priority, 1-99; 0 runs it at normal
    /// priority. Under load a packet waits mostly for the gateway's turn on a CPU.
    #[serde(default = "default_realtime_priority")]
    pub realtime_priority: u8,
}

fn default_offload() -> bool {
    true
}

fn default_realtime_priority() -> u8 {
    DEFAULT_REALTIME_PRIORITY
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeConfig {
    /// Milliseconds between two probes of a peer; 0 turns probing off.
    #[serde(default = "default_probe_interval")]
    pub interval_ms: u32,
    /// Unanswered probes in a row that make a peer (one that answers probes) down.
    #[serde(default = "default_probe_misses")]
    pub misses: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval_ms: default_probe_interval(),
            misses: default_probe_misses(),
        }
    }
}

fn default_probe_interval() -> u32 {
    1000
}
fn default_probe_misses() -> u32 {
    5
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConfig {
    #[serde(default = "crate::ipam::default_pools")]
    pub pools: Vec<Cidr>,
    /// Prefixes IPAM never hands out (for instance networks used elsewhere in the data center).
    #[serde(default)]
    pub reserved: Vec<Cidr>,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            pools: crate::ipam::default_pools(),
            reserved: Vec::new(),
        }
    }
}

/// One foreign cluster. Also the spec of a `TunnelEndpoint` in Kubernetes mode (one per foreign
/// cluster): the same type, so both modes accept exactly the same peers.
#[derive(Debug, Clone, Serialize, Deserialize, kube::CustomResource, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "net.liqo.io",
    version = "v1alpha1",
    kind = "TunnelEndpoint",
    namespaced,
    shortname = "tep",
    status = "crate::crd::TunnelEndpointStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterID"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".status.gateway.nodeName"}"#,
    printcolumn = r#"{"name":"Latency","type":"string","jsonPath":".status.latency.average"}"#,
    printcolumn = r#"{"name":"Handshake","type":"date","jsonPath":".status.lastHandshake"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct PeerConfig {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    pub public_key: Key,
    /// Where to reach the peer; a peer without one only answers (and is followed when it roams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Seconds between keepalives; absent or 0 means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
    pub networks: Vec<NetworkConfig>,
}

/// A network the peer exports: `cidr` as the peer numbers it, `remapped` as home pods address it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remapped: Option<Remapped>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remapped {
    /// Let IPAM choose a free prefix of the same length.
    Auto,
    To(Cidr),
}

impl NetworkConfig {
    /// The prefix home pods use for this network, when it is already known (not `auto`).
    pub fn effective_remapped(&self) -> Option<Cidr> {
        match self.remapped {
            None => Some(self.cidr),
            Some(Remapped::To(c)) => Some(c),
            Some(Remapped::Auto) => None,
        }
    }
}

/// `HOST:PORT`, where HOST is an IP address (IPv6 in brackets) or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Addr(SocketAddr),
    Host(String, u16),
}

/// A value kept as text in the file and parsed by `FromStr`, whose errors quote the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<T>(pub T);

/// One problem in a config file, named by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn default_interface() -> String {
    DEFAULT_INTERFACE.to_string()
}
fn default_listen_port() -> u16 {
    DEFAULT_LISTEN_PORT
}
fn default_mtu() -> u16 {
    DEFAULT_MTU
}

impl GatewayConfig {
    /// Parses and validates a YAML document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let config: GatewayConfig = parse_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, names, uniqueness and overlaps across fields.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut err = |path: String, message: String| errs.push(ConfigError { path, message });

        if let Err(m) = check_cluster_id(&self.cluster_id) {
            err("clusterID".into(), m);
        }
        if let Err(m) = check_interface(&self.interface) {
            err("interface".into(), m);
        }
        if self.listen_port == 0 {
            err("listenPort".into(), "0 is not a port (1-65535)".into());
        }
        let interval = self.probes.interval_ms;
        if interval != 0 && !(100..=60_000).contains(&interval) {
            err(
                "probes.intervalMs".into(),
                format!("{interval} is out of range (100-60000, or 0 for off)"),
            );
        }
        if !(1..=100).contains(&self.probes.misses) {
            err(
                "probes.misses".into(),
                format!("{} is out of range (1-100)", self.probes.misses),
            );
        }
        if self.realtime_priority > 99 {
            err(
                "realtimePriority".into(),
                format!(
                    "{} is out of range (1-99, or 0 for normal priority)",
                    self.realtime_priority
                ),
            );
        }
        if !MTU_RANGE.contains(&self.mtu) {
            err(
                "mtu".into(),
                format!(
                    "{} is out of range ({}-{})",
                    self.mtu,
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            );
        }
        if self.private_key_file.as_os_str().is_empty() {
            err("privateKeyFile".into(), "must name a file".into());
        }
        for (i, a) in self.interface_addresses.iter().enumerate() {
            let host = if a.is_ipv4() { 32 } else { 128 };
            if a.prefix_len() != host {
                err(
                    format!("interfaceAddresses[{i}]"),
                    format!("\"{a}\" is not a single address (/{host})"),
                );
            } else if !self.local_networks.iter().any(|l| l.contains(a.addr())) {
                err(
                    format!("interfaceAddresses[{i}]"),
                    format!("\"{a}\" is in no local network: peers would drop what it sends"),
                );
            }
        }

        // Every routed prefix with the path of the field it comes from, to name both sides of a clash.
        let mut routed: Vec<(String, Cidr)> = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let p = format!("peers[{i}]");
            if let Err(m) = check_cluster_id(&peer.cluster_id) {
                err(format!("{p}.clusterID"), m);
            } else if peer.cluster_id == self.cluster_id {
                err(
                    format!("{p}.clusterID"),
                    format!("{:?} is this cluster's own clusterID", peer.cluster_id),
                );
            }
            if let Some(j) = self.peers[..i]
                .iter()
                .position(|q| q.cluster_id == peer.cluster_id)
            {
                err(
                    format!("{p}.clusterID"),
                    format!("{:?} is also peers[{j}].clusterID", peer.cluster_id),
                );
            }
            if let Some(j) = self.peers[..i]
                .iter()
                .position(|q| q.public_key == peer.public_key)
            {
                err(
                    format!("{p}.publicKey"),
                    format!(
                        "{:?} is also peers[{j}].publicKey",
                        peer.public_key.to_base64()
                    ),
                );
            }
            if peer.networks.is_empty() {
                err(
                    format!("{p}.networks"),
                    "a peer needs at least one network".into(),
                );
            }
            for (j, net) in peer.networks.iter().enumerate() {
                let n = format!("{p}.networks[{j}]");
                // One peer's networks are distinct: IPAM's choices are kept per cidr, and the
                // cryptokey check could not tell overlapping ones apart.
                if let Some((k, prev)) = peer.networks[..j]
                    .iter()
                    .enumerate()
                    .find(|(_, o)| o.cidr.overlaps(&net.cidr))
                {
                    err(
                        format!("{n}.cidr"),
                        format!(
                            "\"{}\" overlaps {p}.networks[{k}].cidr (\"{}\")",
                            net.cidr, prev.cidr
                        ),
                    );
                    continue;
                }
                if let Some(Remapped::To(r)) = net.remapped {
                    if r.prefix_len() != net.cidr.prefix_len() || r.is_ipv4() != net.cidr.is_ipv4()
                    {
                        err(
                            format!("{n}.remapped"),
                            format!(
                                "\"{r}\" does not have the prefix length and family of cidr \"{}\"",
                                net.cidr
                            ),
                        );
                        continue;
                    }
                }
                let Some(target) = net.effective_remapped() else {
                    continue;
                };
                let field = if net.remapped.is_some() {
                    format!("{n}.remapped")
                } else {
                    format!("{n}.cidr")
                };
                if let Some((k, local)) = self
                    .local_networks
                    .iter()
                    .enumerate()
                    .find(|(_, l)| l.overlaps(&target))
                {
                    err(
                        field.clone(),
                        format!(
                            "\"{target}\" overlaps localNetworks[{k}] (\"{local}\"); give it a remapped network"
                        ),
                    );
                }
                if let Some((other, prev)) = routed.iter().find(|(_, c)| c.overlaps(&target)) {
                    err(
                        field.clone(),
                        format!("\"{target}\" overlaps {other} (\"{prev}\")"),
                    );
                }
                routed.push((field, target));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

impl GatewayConfig {
    /// The remapped prefix of every peer network (indexed like `peers[i].networks[j]`), with
    /// `auto` resolved by IPAM: a choice recorded in `state` is kept while it is still free, a
    /// new one is the first free prefix. Returns the prefixes and the state to persist.
    pub fn resolve_remapped(
        &self,
        state: &IpamState,
    ) -> Result<(Vec<Vec<Cidr>>, IpamState), ConfigErrors> {
        let mut taken: Vec<Cidr> = self.local_networks.clone();
        taken.extend(&self.ipam.reserved);
        for p in &self.peers {
            taken.extend(
                p.networks
                    .iter()
                    .filter_map(NetworkConfig::effective_remapped),
            );
        }
        let mut ipam = Ipam::new(self.ipam.pools.clone(), taken);
        // First the recorded choices that are still free (so that a new peer listed earlier
        // cannot take them), then new prefixes for the rest.
        let mut out: Vec<Vec<Option<Cidr>>> = self
            .peers
            .iter()
            .map(|p| {
                p.networks
                    .iter()
                    .map(|n| {
                        n.effective_remapped().or_else(|| {
                            let prev = state.get(&p.cluster_id, &n.cidr)?;
                            let fits = prev.prefix_len() == n.cidr.prefix_len()
                                && prev.is_ipv4() == n.cidr.is_ipv4()
                                && ipam.is_free(&prev);
                            fits.then(|| {
                                ipam.take(prev);
                                prev
                            })
                        })
                    })
                    .collect()
            })
            .collect();
        let mut next = IpamState::default();
        let mut errs = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            for (j, n) in p.networks.iter().enumerate() {
                if n.remapped != Some(Remapped::Auto) {
                    continue;
                }
                let slot = &mut out[i][j];
                if slot.is_none() {
                    match ipam.allocate(&n.cidr) {
                        Ok(c) => *slot = Some(c),
                        Err(e) => errs.push(ConfigError {
                            path: format!("peers[{i}].networks[{j}].remapped"),
                            message: format!("\"auto\" for {}: {e}", n.cidr),
                        }),
                    }
                }
                if let Some(c) = *slot {
                    next.set(&p.cluster_id, n.cidr, c);
                }
            }
        }
        let out = out
            .into_iter()
            .zip(&self.peers)
            .map(|(nets, p)| {
                nets.into_iter()
                    .zip(&p.networks)
                    .map(|(r, n)| r.unwrap_or(n.cidr))
                    .collect()
            })
            .collect();
        if errs.is_empty() {
            Ok((out, next))
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// Deserializes YAML, naming the path of the first value that does not fit `T`.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // "?" is serde's "somewhere it cannot name" (a syntax error, a complex key).
        let path = match path.as_str() {
            "." => "(top level)".into(),
            "?" => "(document)".into(),
            _ => path,
        };
        // serde_yaml prefixes its own, coarser path; the precise one is already in `path`.
        let message = e.into_inner().to_string();
        let message = match message.split_once(": ") {
            Some((head, rest)) if path.starts_with(head) => rest.to_string(),
            _ => message,
        };
        ConfigErrors(vec![ConfigError { path, message }])
    })
}

/// A Kubernetes-style name: lowercase letters, digits and '-', 1 to 63, alphanumeric at both ends.
fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a cluster ID (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
        ))
    }
}

fn check_interface(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"
        ))
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Endpoint::Addr(addr));
        }
        let bad = || format!("{s:?} is not HOST:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint::Host(host.to_string(), port))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Remapped {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Remapped::Auto => s.serialize_str("auto"),
            Remapped::To(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Remapped {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" {
            return Ok(Remapped::Auto);
        }
        s.parse().map(Remapped::To).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is neither \"auto\" nor a CIDR: {e}"))
        })
    }
}

impl<T: fmt::Display> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Parsed<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map(Parsed)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn base() -> String {
        format!(
            "clusterID: home\nprivateKeyFile: home.key\nlocalNetworks: [10.244.0.0/16]\npeers:\n  - clusterID: foreign\n    publicKey: {KEY_A}\n    endpoint: 192.0.2.2:51840\n    networks:\n      - cidr: 10.245.0.0/16\n"
        )
    }

    fn first_error(text: &str) -> ConfigError {
        GatewayConfig::from_yaml(text).unwrap_err().0.remove(0)
    }

    #[test]
    fn accepts_a_minimal_file_with_defaults() {
        let c = GatewayConfig::from_yaml(&base()).unwrap();
        assert_eq!(c.interface, "liqo0");
        assert_eq!(c.listen_port, 51840);
        assert_eq!(c.mtu, 1420);
        assert_eq!(
            c.peers[0].endpoint,
            Some(Endpoint::Addr("192.0.2.2:51840".parse().unwrap()))
        );
        assert_eq!(
            c.peers[0].networks[0].effective_remapped(),
            Some("10.245.0.0/16".parse().unwrap())
        );
    }

    #[test]
    fn one_peer_may_not_list_a_network_twice() {
        // Found by liqonet-fuzz: two `auto` networks on one cidr swapped prefixes on restart.
        let text = format!(
            "clusterID: home\nprivateKeyFile: home.key\npeers:\n  - clusterID: foreign\n    publicKey: {KEY_A}\n    networks:\n      - {{cidr: 10.244.0.0/16, remapped: auto}}\n      - {{cidr: 10.244.0.0/16, remapped: auto}}\n"
        );
        let e = first_error(&text);
        assert_eq!(e.path, "peers[0].networks[1].cidr");
        assert!(
            e.message.contains("overlaps peers[0].networks[0].cidr"),
            "{e}"
        );
    }

    #[test]
    fn a_syntax_error_names_the_document_and_its_line() {
        // Found by liqonet-fuzz: such errors were reported at path "?".
        let e = first_error("clusterID: home\nprivateKeyFile: home.key\nmtu 1420\n");
        assert_eq!(e.path, "(document)");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn names_the_field_of_a_bad_cidr() {
        let e = first_error(&base().replace("10.245.0.0/16", "10.0.0.0/33"));
        assert_eq!(e.path, "peers[0].networks[0].cidr");
        assert!(e.message.contains("\"10.0.0.0/33\" is not a CIDR"), "{e}");
    }

    #[test]
    fn names_both_sides_of_an_overlap() {
        let text = base() + &format!(
            "  - clusterID: third\n    publicKey: {KEY_B}\n    networks:\n      - cidr: 10.245.128.0/17\n"
        );
        let e = first_error(&text);
        assert_eq!(e.path, "peers[1].networks[0].cidr");
        assert!(e.message.contains("peers[0].networks[0].cidr"), "{e}");
    }

    #[test]
    fn reports_every_semantic_error() {
        let text = base()
            .replace("clusterID: home", "clusterID: Home")
            .replace(
                "privateKeyFile: home.key",
                "privateKeyFile: home.key\nmtu: 100",
            );
        let errs = GatewayConfig::from_yaml(&text).unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["clusterID", "mtu"]);
    }

    #[test]
    fn the_data_path_priority_defaults_to_real_time_and_refuses_what_linux_has_not() {
        let c = GatewayConfig::from_yaml(&base()).unwrap();
        assert_eq!(c.realtime_priority, DEFAULT_REALTIME_PRIORITY);
        let with = |p: &str| {
            base().replace(
                "privateKeyFile: home.key",
                &format!("privateKeyFile: home.key\nrealtimePriority: {p}"),
            )
        };
        assert_eq!(
            GatewayConfig::from_yaml(&with("0"))
                .unwrap()
                .realtime_priority,
            0
        );
        let e = first_error(&with("100"));
        assert_eq!(e.path, "realtimePriority");
        assert!(e.message.contains("100 is out of range (1-99"), "{e}");
        // Beyond a byte: serde names the field too.
        let e = GatewayConfig::from_yaml(&with("300")).unwrap_err().0;
        assert!(e[0].to_string().contains("realtimePriority"), "{}", e[0]);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../deploy/standalone/gateway.yaml");
        let c = GatewayConfig::from_yaml(text).unwrap();
        assert_eq!(c.peers[0].networks.len(), 2);
        assert_eq!(c.peers[0].persistent_keepalive, Some(25));
    }

    #[test]
    fn auto_networks_are_stable_across_restarts_and_additions() {
        let with_auto = |extra: &str| {
            base().replace(
                "      - cidr: 10.245.0.0/16\n",
                "      - cidr: 10.244.0.0/16\n        remapped: auto\n",
            ) + extra
        };
        let c = GatewayConfig::from_yaml(&with_auto("")).unwrap();
        let (nets, state) = c.resolve_remapped(&IpamState::default()).unwrap();
        assert_eq!(nets[0][0].to_string(), "10.0.0.0/16");

        // A new peer takes the prefix the first one had; the first one keeps its own.
        let second = format!(
            "  - clusterID: third\n    publicKey: {KEY_B}\n    networks:\n      - cidr: 10.244.0.0/16\n        remapped: auto\n"
        );
        let text = with_auto(&second).replace("peers:\n", &format!("peers:\n  - clusterID: zeroth\n    publicKey: {}\n    networks:\n      - cidr: 10.244.0.0/16\n        remapped: auto\n", "QIqyU1mi5R1fROhtl2BcGkKxSXl3D6fJVXEHpD3ZQlg="));
        let c2 = GatewayConfig::from_yaml(&text).unwrap();
        let (nets2, state2) = c2.resolve_remapped(&state).unwrap();
        assert_eq!(
            nets2[1][0].to_string(),
            "10.0.0.0/16",
            "foreign keeps its choice"
        );
        assert_eq!(nets2[0][0].to_string(), "10.1.0.0/16");
        assert_eq!(nets2[2][0].to_string(), "10.2.0.0/16");
        // And a restart with that state changes nothing.
        assert_eq!(c2.resolve_remapped(&state2).unwrap().0, nets2);
    }

    #[test]
    fn a_recorded_choice_that_is_no_longer_free_is_replaced() {
        let text = base().replace(
            "      - cidr: 10.245.0.0/16\n",
            "      - cidr: 10.244.0.0/16\n        remapped: auto\n",
        );
        let c = GatewayConfig::from_yaml(&text).unwrap();
        let mut state = IpamState::default();
        state.set(
            "foreign",
            "10.244.0.0/16".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        let (nets, _) = c.resolve_remapped(&state).unwrap();
        assert_eq!(
            nets[0][0].to_string(),
            "10.0.0.0/16",
            "10.244/16 is a local network"
        );
    }

    #[test]
    fn exhausted_pools_name_the_network() {
        let text = base().replace(
            "      - cidr: 10.245.0.0/16\n",
            "      - cidr: 10.244.0.0/16\n        remapped: auto\n",
        ) + "ipam:\n  pools: [10.250.0.0/16]\n  reserved: [10.250.0.0/17]\n";
        let c = GatewayConfig::from_yaml(&text).unwrap();
        let e = c
            .resolve_remapped(&IpamState::default())
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(e.path, "peers[0].networks[0].remapped");
        assert!(e.message.contains("no free /16"), "{e}");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            "[fd00::2]:51840".parse::<Endpoint>(),
            Ok(Endpoint::Addr("[fd00::2]:51840".parse().unwrap()))
        );
        assert_eq!(
            "gw.example.com:443".parse::<Endpoint>(),
            Ok(Endpoint::Host("gw.example.com".into(), 443))
        );
        assert!("gw.example.com".parse::<Endpoint>().is_err());
        assert!("gw:0".parse::<Endpoint>().is_err());
    }
}
