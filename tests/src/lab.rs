//! Building and tearing down the lab.
//!
//! ```text
//!            cluster "home"                                   cluster "foreign"
//!  w1-pod   w2-pod    gw-pod                           gw-pod    w1-pod   w2-pod
//!    |        |         |                                 |        |        |
//!   w1       w2        gw ── TUN ══ WAN bridge ══ TUN ── gw       w1       w2
//!    └────────┴─────────┘ node network                    └────────┴────────┘
//! ```
//! Each node is a namespace with a pod namespace on a veth and its own pod subnet (node n:
//! `<pod /16>.n.0/24`); nodes share a node network (172.20.0.0/24), or, in the routed variant,
//! the workers sit on 172.21.0.0/24 behind a router that drops packets whose source is not a node
//! address (as clouds do). Static "CNI" routes join the pod subnets of nodes on one link. The
//! gateway runs on the gateway node, a route agent on every node, `rp_filter=1` everywhere.
//! Cluster 0 is home; it peers with every other cluster (a star). Clusters may number their
//! pods from the same CIDRs; each is then known to its peers by an alias.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use liqonet_proto::agent::Mode;
use liqonet_proto::ipam::IpamState;
use liqonet_proto::Cidr;

use crate::netns::{self, ns_run, run, sh, wait_for};

pub const LISTEN_PORT: u16 = 51840;
pub const MTU: u16 = 1420;
pub const METRICS_PORT: u16 = 9586;
/// Size of `big.bin`, served by every pod (for MTU and MSS tests).
pub const BIG_FILE: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    Liqonet,
    /// wireguard-go, configured with `wg`: Debian's on the PATH (the interoperability tests), or
    /// the binary `ClusterSpec::wireguard_go` names (the bench's current release).
    WireguardGo,
    /// boringtun-cli (crates.io), configured with `wg`: a peer to measure against.
    BoringtunCli,
    /// No tunnel: the gateway nodes route the peers' pod CIDRs to each other over the WAN
    /// (the baseline of the benchmarks; IPv4 underlay, distinct pod CIDRs).
    Plain,
    /// The bench's I/O floor: `liqonet-relay` (benches/), the gateway's event loop and devices
    /// with no crypto; two clusters, distinct pod CIDRs.
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    V4,
    V6,
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    /// The pod CIDR, a /16 (`10.244.0.0/16`); the gateway node's pod subnet is its first /24.
    pub pod_cidr: String,
    /// An IPv6 pod CIDR, a /56 ending in `::` (`fd10:244::/56`), for dual-stack pods; node n
    /// gets the /64 `fd10:244:0:n::/64`.
    pub pod_cidr6: Option<String>,
    /// How peers address this cluster's pods (`remapped` in their configs, "auto" lets their
    /// IPAM choose); `None` when they use the pod CIDR as it is.
    pub alias: Option<String>,
    pub alias6: Option<String>,
    pub gateway: GatewayKind,
    /// The wireguard-go binary a `WireguardGo` gateway runs; `None`: `wireguard-go` on the PATH.
    pub wireguard_go: Option<PathBuf>,
    /// Whether the other side is told this cluster's endpoint (if not, it only answers).
    pub endpoint_known: bool,
    /// Worker nodes besides the gateway node.
    pub workers: usize,
    /// How the route agents route to the gateway node (`None`: no agents).
    pub agents: Option<Mode>,
    /// Workers on another subnet than the gateway node, behind an anti-spoofing router.
    pub routed: bool,
    /// More networks this cluster exports (e.g. its service CIDR): (cidr, alias at its peers).
    pub exports: Vec<(String, String)>,
}

impl ClusterSpec {
    pub fn new(name: &str, pod_cidr: &str) -> Self {
        ClusterSpec {
            name: name.into(),
            pod_cidr: pod_cidr.into(),
            pod_cidr6: None,
            alias: None,
            alias6: None,
            gateway: GatewayKind::Liqonet,
            wireguard_go: None,
            endpoint_known: true,
            workers: 2,
            agents: Some(Mode::Vxlan),
            routed: false,
            exports: Vec::new(),
        }
    }

    /// Only the gateway node and its pod: no workers, no route agents (quicker to build).
    pub fn gateway_only(mut self) -> Self {
        self.workers = 0;
        self.agents = None;
        self
    }

    pub fn agents(mut self, mode: Mode) -> Self {
        self.agents = Some(mode);
        self
    }

    /// Workers behind a router on their own subnet.
    pub fn routed(mut self) -> Self {
        self.routed = true;
        self
    }

    /// Also exports `cidr`, known to peers as `alias`.
    pub fn exports(mut self, cidr: &str, alias: &str) -> Self {
        self.exports.push((cidr.into(), alias.into()));
        self
    }

    /// Dual-stack pods on `pod_cidr6`.
    pub fn dual_stack(mut self, pod_cidr6: &str) -> Self {
        self.pod_cidr6 = Some(pod_cidr6.into());
        self
    }

    /// Peers reach this cluster's pods as `alias` (and `alias6` for IPv6).
    pub fn aliased(mut self, alias: &str, alias6: Option<&str>) -> Self {
        self.alias = Some(alias.into());
        self.alias6 = alias6.map(Into::into);
        self
    }
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub clusters: Vec<ClusterSpec>,
    pub underlay: Underlay,
}

impl Default for LabSpec {
    /// Home and one foreign cluster, both liqonet, IPv4 underlay, each with a gateway node and
    /// two workers (VXLAN route agents), both numbering their pods from the same CIDRs: home
    /// reaches foreign as 10.245.0.0/16 (fd10:245::/56), foreign reaches home as 10.246.0.0/16
    /// (fd10:246::/56).
    fn default() -> Self {
        LabSpec {
            clusters: vec![
                ClusterSpec::new("home", "10.244.0.0/16")
                    .dual_stack("fd10:244::/56")
                    .aliased("10.246.0.0/16", Some("fd10:246::/56")),
                ClusterSpec::new("foreign", "10.244.0.0/16")
                    .dual_stack("fd10:244::/56")
                    .aliased("10.245.0.0/16", Some("fd10:245::/56")),
            ],
            underlay: Underlay::V4,
        }
    }
}

impl LabSpec {
    /// Home and foreign on different pod CIDRs, nothing remapped (as stock WireGuard needs),
    /// gateway nodes only.
    pub fn distinct_cidrs() -> Self {
        LabSpec {
            clusters: vec![
                ClusterSpec::new("home", "10.244.0.0/16").gateway_only(),
                ClusterSpec::new("foreign", "10.245.0.0/16").gateway_only(),
            ],
            underlay: Underlay::V4,
        }
    }
}

/// A pod: its namespace and addresses.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub ip: String,
    pub ip6: Option<String>,
}

/// A node: its namespace, node IP, pod subnet and pod.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub pod_cidr: String,
    /// In dual-stack clusters on a flat node network: the node's IPv6 address and pod /64.
    pub ip6: Option<String>,
    pub pod_cidr6: Option<String>,
    pub pod: Pod,
}

/// A cluster as built: its nodes (the gateway node first) and keys.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<Node>,
    pub wan_ip: String,
    pub private_key: String,
    pub public_key: String,
    /// The tunnel interface in the gateway namespace.
    pub interface: String,
}

impl Cluster {
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in {}", self.spec.name))
    }

    /// The gateway node's namespace.
    pub fn gw_ns(&self) -> &str {
        &self.nodes[0].ns
    }

    /// The pod tests use: on the first worker, or on the gateway node.
    pub fn main_pod(&self) -> &Pod {
        &self.nodes[if self.nodes.len() > 1 { 1 } else { 0 }].pod
    }

    /// The pod on the gateway node (IPv6 reaches only these: the route agent is IPv4-only).
    pub fn gw_pod(&self) -> &Pod {
        &self.nodes[0].pod
    }

    pub fn endpoint(&self) -> String {
        if self.wan_ip.contains(':') {
            format!("[{}]:{LISTEN_PORT}", self.wan_ip)
        } else {
            format!("{}:{LISTEN_PORT}", self.wan_ip)
        }
    }
}

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub clusters: Vec<Cluster>,
    pub underlay: Underlay,
    procs: Vec<(String, Child)>,
    bin_dir: PathBuf,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds and starts a lab; on any failure what was built is torn down.
    pub fn start(spec: &LabSpec) -> anyhow::Result<Lab> {
        check_root()?;
        realtime_priority_setting()?;
        netns::sweep_stale();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("lq{}x{n}-", std::process::id());
        let dir = std::env::temp_dir().join(format!("liqonet-lab-{}", &prefix[..prefix.len() - 1]));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            prefix,
            dir,
            clusters: Vec::new(),
            underlay: spec.underlay,
            procs: Vec::new(),
            bin_dir: bin_dir()?,
        };
        lab.build(spec)?;
        Ok(lab)
    }

    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.spec.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in this lab"))
    }

    pub fn home(&self) -> &Cluster {
        &self.clusters[0]
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A tool installed for the benchmarks: `$TOOL` (upper case, `-` as `_`), then
    /// `target/tools/bin/` (where `make bench` installs them), then the PATH.
    pub fn tool(&self, name: &str) -> anyhow::Result<PathBuf> {
        if let Some(p) = std::env::var_os(name.to_uppercase().replace('-', "_")) {
            return Ok(PathBuf::from(p));
        }
        let local = self.bin_dir.join("../tools/bin").join(name);
        if local.exists() {
            return Ok(local);
        }
        let which = run(&["sh", "-c", &format!("command -v {name}")]).unwrap_or_default();
        if which.trim().is_empty() {
            bail!("{name} is not installed (make bench installs it into target/tools)");
        }
        Ok(PathBuf::from(which.trim()))
    }

    fn build(&mut self, spec: &LabSpec) -> anyhow::Result<()> {
        let wan = format!("{}wan", self.prefix);
        add_ns(&wan)?;
        sh(&wan, "ip link add br0 type bridge")?;
        sh(&wan, "ip link set br0 up")?;
        for (i, cs) in spec.clusters.iter().enumerate() {
            let c = self.build_cluster(i, cs, &wan)?;
            self.clusters.push(c);
        }
        for i in 0..self.clusters.len() {
            self.start_gateway(i)?;
        }
        for i in 0..self.clusters.len() {
            self.start_agents(i)?;
        }
        let big: Vec<u8> = (0..BIG_FILE).map(|i| (i % 251) as u8).collect();
        fs::write(self.dir.join("big.bin"), big)?;
        for i in 0..self.clusters.len() {
            self.start_pod_services(i)?;
        }
        Ok(())
    }

    fn build_cluster(&mut self, i: usize, cs: &ClusterSpec, wan: &str) -> anyhow::Result<Cluster> {
        let base = pod_base(&cs.pod_cidr)?;
        let net = format!("{}{}-net", self.prefix, cs.name);
        add_ns(&net)?;
        sh(&net, "ip link add br0 type bridge")?;
        sh(&net, "ip link set br0 up")?;
        if cs.routed {
            // The router between the gateway node's subnet (br0) and the workers' (br1).
            sh(&net, "ip link add br1 type bridge")?;
            sh(&net, "ip link set br1 up")?;
            sh(&net, "ip addr add 172.20.0.1/24 dev br0")?;
            sh(&net, "ip addr add 172.21.0.1/24 dev br1")?;
            sh(&net, "sysctl -qw net.ipv4.ip_forward=1")?;
            // Like a cloud network: forward only packets whose source is a node address.
            sh(&net, "nft add table ip antispoof")?;
            sh(&net, "nft add chain ip antispoof forward { type filter hook forward priority 0 ; policy drop ; }")?;
            sh(
                &net,
                "nft add rule ip antispoof forward ip saddr { 172.20.0.0/24, 172.21.0.0/24 } accept",
            )?;
        }

        let mut nodes = Vec::new();
        for n in 0..=cs.workers {
            let name = if n == 0 {
                "gw".to_string()
            } else {
                format!("w{n}")
            };
            let ns = format!("{}{}-{name}", self.prefix, cs.name);
            let subnet = if cs.routed && n > 0 { 21 } else { 20 };
            let ip = format!("172.{subnet}.0.{}", 10 + n);
            add_ns(&ns)?;
            sh(
                &ns,
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
            )?;
            let bridge = if subnet == 21 { "br1" } else { "br0" };
            let port = format!("{}{n}", short(&cs.name));
            join_node_network(&net, bridge, &port, &ns, &ip)?;
            if cs.routed {
                sh(&ns, &format!("ip route add default via 172.{subnet}.0.1"))?;
            }
            let pod_cidr6 = cs
                .pod_cidr6
                .as_deref()
                .map(|c6| node_subnet6(c6, n))
                .transpose()?;
            let ip6 = match (&pod_cidr6, cs.routed) {
                (Some(_), false) => {
                    let ip6 = format!("fd00:172:20::{}", 10 + n);
                    sh(&ns, &format!("ip addr add {ip6}/64 dev eth0 nodad"))?;
                    Some(ip6)
                }
                _ => None,
            };
            let pod = build_pod(
                &ns,
                &format!("{ns}-pod"),
                &format!("{base}.{n}"),
                pod_cidr6.as_deref(),
            )?;
            nodes.push(Node {
                name,
                ns,
                ip,
                pod_cidr: format!("{base}.{n}.0/24"),
                ip6,
                pod_cidr6,
                pod,
            });
        }
        // Static "CNI" routes between the pod subnets of nodes that share a link.
        for a in &nodes {
            for b in nodes.iter().filter(|b| b.name != a.name) {
                let same_link = !cs.routed || (a.name == "gw") == (b.name == "gw");
                if same_link {
                    sh(&a.ns, &format!("ip route add {} via {}", b.pod_cidr, b.ip))?;
                    if let (Some(cidr6), Some(ip6)) = (&b.pod_cidr6, &b.ip6) {
                        sh(&a.ns, &format!("ip -6 route add {cidr6} via {ip6}"))?;
                    }
                }
            }
        }

        // WAN link: gateway node <-> bridge.
        let gw = nodes[0].ns.clone();
        let (wan_addr, nodad) = match self.underlay {
            Underlay::V4 => (format!("192.168.250.{}/24", 10 + i), ""),
            Underlay::V6 => (format!("fd00:250::{}/64", 10 + i), "nodad"),
        };
        let port = format!("{}-wan", short(&cs.name));
        sh(
            wan,
            &format!("ip link add {port} type veth peer name wan0 netns {gw}"),
        )?;
        sh(wan, &format!("ip link set {port} master br0 up"))?;
        sh(&gw, &format!("ip addr add {wan_addr} dev wan0 {nodad}"))?;
        sh(&gw, "ip link set wan0 up")?;

        let gateway = self.bin("liqonet-gateway");
        let private_key = run(&[gateway.to_str().unwrap_or_default(), "genkey"])?
            .trim()
            .to_string();
        let public_key = crate::probe::pubkey(&gateway, &private_key)?;
        let interface = match cs.gateway {
            // Every userspace WireGuard's control socket path is global
            // (/var/run/wireguard/NAME.sock), liqonet's too: names unique across labs.
            GatewayKind::Liqonet
            | GatewayKind::WireguardGo
            | GatewayKind::BoringtunCli
            | GatewayKind::Relay => {
                format!("wg{}c{i}", &self.prefix[2..self.prefix.len() - 1])
            }
            GatewayKind::Plain => String::new(),
        };
        Ok(Cluster {
            spec: cs.clone(),
            nodes,
            wan_ip: wan_addr.split('/').next().unwrap_or_default().to_string(),
            private_key,
            public_key,
            interface,
        })
    }

    /// The clusters cluster `i` peers with: home peers with all, the others with home only.
    fn peers_of(&self, i: usize) -> Vec<usize> {
        if i == 0 {
            (1..self.clusters.len()).collect()
        } else {
            vec![0]
        }
    }

    fn start_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let c = self.clusters[i].clone();
        let key_file = self.dir.join(format!("{}.key", c.spec.name));
        fs::write(&key_file, format!("{}\n", c.private_key))?;
        match c.spec.gateway {
            GatewayKind::Liqonet => self.run_liqonet(&c.spec.name, &self.liqonet_config(i)),
            GatewayKind::WireguardGo | GatewayKind::BoringtunCli => {
                self.start_wireguard_go(i, &key_file)
            }
            GatewayKind::Relay => self.start_relay(i),
            GatewayKind::Plain => {
                for j in self.peers_of(i) {
                    let p = &self.clusters[j];
                    sh(
                        c.gw_ns(),
                        &format!("ip route add {} via {}", p.spec.pod_cidr, p.wan_ip),
                    )?;
                }
                Ok(())
            }
        }
    }

    /// 10 ms probers both ways between the main pods of home and foreign, labelled by direction.
    pub fn pingers(&self) -> anyhow::Result<[crate::outage::Pinger; 2]> {
        use crate::outage::Pinger;
        let (home, foreign) = (self.cluster("home"), self.cluster("foreign"));
        Ok([
            Pinger::start(
                &home.main_pod().ns,
                &foreign.main_pod().ip,
                "home → foreign",
            )?,
            Pinger::start(
                &foreign.main_pod().ns,
                &home.main_pod().ip,
                "foreign → home",
            )?,
        ])
    }

    /// A host on the WAN outside every cluster (an attacker, say) at 192.168.250.`octet`: its
    /// namespace, which goes with the lab.
    pub fn add_wan_host(&mut self, name: &str, octet: u8) -> anyhow::Result<String> {
        let (wan, ns) = (
            format!("{}wan", self.prefix),
            format!("{}{name}", self.prefix),
        );
        add_ns(&ns)?;
        let port = format!("{}-wan", short(name));
        sh(
            &wan,
            &format!("ip link add {port} type veth peer name wan0 netns {ns}"),
        )?;
        sh(&wan, &format!("ip link set {port} master br0 up"))?;
        sh(&ns, &format!("ip addr add 192.168.250.{octet}/24 dev wan0"))?;
        sh(&ns, "ip link set wan0 up")?;
        Ok(ns)
    }

    /// Sends `sig` (`"KILL"`, `"TERM"`) to a process the lab started and waits for it to end.
    pub fn kill(&mut self, name: &str, sig: &str) -> anyhow::Result<ExitStatus> {
        let pos = self
            .procs
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process {name}"))?;
        let (_, mut child) = self.procs.remove(pos);
        run(&["kill", &format!("-{sig}"), &child.id().to_string()])?;
        for _ in 0..100 {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        bail!("{name} did not exit within 5 s of SIG{sig}")
    }

    /// Starts cluster `name`'s gateway, whatever its kind, as the lab first started it (for a
    /// liqonet gateway: with `liqonet_config`).
    pub fn start_gateway_of(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.index_of(name);
        self.start_gateway(i)
    }

    /// Stops cluster `name`'s gateway (SIGTERM), whatever its kind, and waits for its tunnel
    /// device and control socket to go.
    pub fn stop_gateway_of(&mut self, name: &str) -> anyhow::Result<()> {
        let c = self.cluster(name).clone();
        let process = match c.spec.gateway {
            GatewayKind::Liqonet => format!("{name}-gateway"),
            GatewayKind::WireguardGo | GatewayKind::BoringtunCli => format!("{name}-wireguard"),
            GatewayKind::Relay => format!("{name}-relay"),
            GatewayKind::Plain => bail!("cluster {name} runs no gateway process"),
        };
        self.stop(&process)?;
        let sock = format!("/var/run/wireguard/{}.sock", c.interface);
        let gone = wait_for(Duration::from_secs(5), || {
            !Path::new(&sock).exists()
                && ns_run(c.gw_ns(), &["ip", "link", "show", &c.interface]).is_err()
        });
        if !gone {
            // A userspace WireGuard may leave its socket behind; the next start must not
            // mistake it for its own.
            let _ = fs::remove_file(&sock);
        }
        Ok(())
    }

    fn index_of(&self, name: &str) -> usize {
        self.clusters
            .iter()
            .position(|c| c.spec.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in this lab"))
    }

    /// Writes `config` as cluster `name`'s gateway config and starts its liqonet gateway.
    pub fn run_liqonet(&mut self, name: &str, config: &str) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{name}.yaml"));
        fs::write(&path, config)?;
        let bin = self.bin("liqonet-gateway");
        let ns = self.cluster(name).gw_ns().to_string();
        let log = format!("{name}-gateway");
        let args = [
            bin.to_str().unwrap_or_default(),
            "run",
            "--config",
            path.to_str().unwrap_or_default(),
        ];
        self.spawn(
            &log,
            &ns,
            &args,
            &[("RUST_LOG", "info,liqonet_gateway=debug")],
        )?;
        if !wait_for(Duration::from_secs(10), || self.metrics(name).is_ok()) {
            bail!(
                "the gateway of {name} did not come up; log:\n{}",
                self.log(&log)
            );
        }
        Ok(())
    }

    /// Restarts cluster `name`'s liqonet gateway with another config.
    pub fn restart_gateway_with(&mut self, name: &str, config: &str) -> anyhow::Result<()> {
        let status = self.stop(&format!("{name}-gateway"))?;
        if !status.success() {
            bail!("{name}'s gateway exited with {status}");
        }
        self.run_liqonet(name, config)
    }

    /// The standalone config of cluster `i`'s liqonet gateway.
    pub fn liqonet_config(&self, i: usize) -> String {
        let c = &self.clusters[i];
        let local: Vec<&str> = [Some(c.spec.pod_cidr.as_str()), c.spec.pod_cidr6.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let mut y = format!(
            "clusterID: {name}\ninterface: {}\nlistenPort: {LISTEN_PORT}\nprivateKeyFile: {name}.key\nmtu: {MTU}\nlocalNetworks: [{}]\nmetricsAddress: 127.0.0.1:{METRICS_PORT}\npeers:\n",
            c.interface,
            local.join(", "),
            name = c.spec.name,
        );
        // The TUN takes the gateway node's pod-side addresses, so that the ICMP errors the node
        // sends through the tunnel have a source the peer accepts.
        let base = pod_base(&c.spec.pod_cidr).unwrap_or_default();
        let mut addrs = vec![format!("{base}.0.1/32")];
        if let Some(subnet6) = &c.nodes[0].pod_cidr6 {
            addrs.push(format!("{}::1/128", subnet6.trim_end_matches("::/64")));
        }
        y = y.replace(
            "peers:\n",
            &format!("interfaceAddresses: [{}]\npeers:\n", addrs.join(", ")),
        );
        if !offload_enabled() {
            y = y.replace("peers:\n", "offload: false\npeers:\n");
        }
        if let Some(p) = realtime_priority() {
            y = y.replace("peers:\n", &format!("realtimePriority: {p}\npeers:\n"));
        }
        for j in self.peers_of(i) {
            let p = &self.clusters[j];
            y += &format!(
                "  - clusterID: {}\n    publicKey: {}\n",
                p.spec.name, p.public_key
            );
            if p.spec.endpoint_known {
                y += &format!("    endpoint: \"{}\"\n", p.endpoint());
            }
            y += "    networks:\n";
            let nets = [
                (Some(&p.spec.pod_cidr), &p.spec.alias),
                (p.spec.pod_cidr6.as_ref(), &p.spec.alias6),
            ];
            for (cidr, alias) in nets {
                let Some(cidr) = cidr else { continue };
                y += &format!("      - cidr: {cidr}\n");
                if let Some(a) = alias {
                    y += &format!("        remapped: {a}\n");
                }
            }
            for (cidr, alias) in &p.spec.exports {
                y += &format!("      - cidr: {cidr}\n        remapped: {alias}\n");
            }
        }
        y
    }

    /// The address by which pods of cluster `viewer` reach the main pod of cluster `target`.
    pub fn ip_of(&self, target: &str, viewer: &str, v6: bool) -> String {
        self.addr_of(target, self.cluster(target).main_pod(), viewer, v6)
    }

    /// The pod `ip_of` points at.
    pub fn pod_of(&self, target: &str) -> &Pod {
        self.cluster(target).main_pod()
    }

    /// The address by which pods of cluster `viewer` reach `pod` of cluster `target`: its own
    /// within one cluster, else moved into the prefix the viewer knows the target's pods by.
    pub fn addr_of(&self, target: &str, pod: &Pod, viewer: &str, v6: bool) -> String {
        let own = if v6 {
            pod.ip6
                .clone()
                .unwrap_or_else(|| panic!("{} has no IPv6", pod.ns))
        } else {
            pod.ip.clone()
        };
        if target == viewer {
            return own;
        }
        let t = self.cluster(target);
        let cidr = if v6 {
            t.spec.pod_cidr6.clone().unwrap_or_default()
        } else {
            t.spec.pod_cidr.clone()
        };
        let cidr: Cidr = cidr.parse().expect("a lab CIDR");
        let remapped = self.remapped(target, viewer, cidr);
        let own = own.parse().expect("a pod address");
        cidr.swap_prefix(own, &remapped)
            .expect("the pod is in its CIDR")
            .to_string()
    }

    /// The prefix by which cluster `viewer` knows `cidr` of cluster `target` (an `auto` one is
    /// read from the viewer's IPAM state).
    pub fn remapped(&self, target: &str, viewer: &str, cidr: Cidr) -> Cidr {
        let t = self.cluster(target);
        let cidr_s = cidr.to_string();
        let alias = if cidr_s == t.spec.pod_cidr {
            t.spec.alias.clone()
        } else if Some(&cidr_s) == t.spec.pod_cidr6.as_ref() {
            t.spec.alias6.clone()
        } else {
            t.spec
                .exports
                .iter()
                .find(|(c, _)| *c == cidr_s)
                .map(|(_, a)| a.clone())
        };
        match alias.as_deref() {
            None => cidr,
            Some("auto") => {
                let path = self.dir.join(format!("{viewer}.ipam.yaml"));
                let text =
                    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let state: IpamState = serde_yaml::from_str(&text).expect("an IPAM state file");
                state
                    .get(target, &cidr)
                    .unwrap_or_else(|| panic!("{viewer} chose no prefix for {target}"))
            }
            Some(a) => a.parse().expect("a lab CIDR"),
        }
    }

    /// The IPv4 networks cluster `viewer`'s route agents send to its gateway node: every network
    /// its peers export, as the viewer knows them.
    pub fn remote_networks(&self, i: usize) -> Vec<Cidr> {
        let viewer = &self.clusters[i].spec.name;
        let mut nets = Vec::new();
        for j in self.peers_of(i) {
            let p = &self.clusters[j].spec;
            let exported = std::iter::once(p.pod_cidr.clone())
                .chain(p.pod_cidr6.clone())
                .chain(p.exports.iter().map(|(c, _)| c.clone()));
            for cidr in exported {
                let cidr: Cidr = cidr.parse().expect("a lab CIDR");
                nets.push(self.remapped(&p.name, viewer, cidr));
            }
        }
        nets
    }

    /// The route agent config of node `n` of cluster `i`, the gateway being on `gateway_node`.
    pub fn agent_config(&self, i: usize, n: usize, gateway_node: &str) -> String {
        let c = &self.clusters[i];
        let mode = match c.spec.agents {
            Some(Mode::Direct) => "direct",
            _ => "vxlan",
        };
        let remote: Vec<String> = self
            .remote_networks(i)
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut y = format!(
            "nodeName: {}\nmode: {mode}\ngatewayNode: {gateway_node}\nremoteNetworks: [{}]\nnodes:\n",
            c.nodes[n].name,
            remote.join(", ")
        );
        for node in &c.nodes {
            y += &format!(
                "  - {{name: {}, ip: {}, podCIDR: {}",
                node.name, node.ip, node.pod_cidr
            );
            if let Some(ip6) = &node.ip6 {
                y += &format!(", ip6: '{ip6}'");
            }
            if let Some(c6) = &node.pod_cidr6 {
                y += &format!(", podCIDR6: '{c6}'");
            }
            y += "}\n";
        }
        y
    }

    fn start_agents(&mut self, i: usize) -> anyhow::Result<()> {
        if self.clusters[i].spec.agents.is_none() {
            return Ok(());
        }
        for n in 0..self.clusters[i].nodes.len() {
            let config = self.agent_config(i, n, "gw");
            self.start_agent(i, n, &config, &[])?;
        }
        Ok(())
    }

    /// The log name of node `n`'s route agent in cluster `i`.
    pub fn agent_log(&self, i: usize, n: usize) -> String {
        format!(
            "{}-{}-agent",
            self.clusters[i].spec.name, self.clusters[i].nodes[n].name
        )
    }

    /// The path of node `n`'s route agent config in cluster `i`.
    pub fn agent_config_path(&self, i: usize, n: usize) -> PathBuf {
        self.dir.join(format!("{}.yaml", self.agent_log(i, n)))
    }

    /// Writes node `n`'s agent config and starts the agent; waits until it is in sync.
    pub fn start_agent(
        &mut self,
        i: usize,
        n: usize,
        config: &str,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let path = self.agent_config_path(i, n);
        fs::write(&path, config)?;
        let log = self.agent_log(i, n);
        let bin = self.bin("liqonet-route-agent");
        let ns = self.clusters[i].nodes[n].ns.clone();
        let mut args = vec![
            bin.to_str().unwrap_or_default(),
            "run",
            "--config",
            path.to_str().unwrap_or_default(),
        ];
        args.extend_from_slice(extra);
        // (spawn starts the log afresh)
        self.spawn(&log, &ns, &args, &[("RUST_LOG", "info")])?;
        if !wait_for(Duration::from_secs(10), || {
            self.log(&log).contains("in sync")
        }) {
            bail!(
                "route agent {log} did not get in sync; log:\n{}",
                self.log(&log)
            );
        }
        Ok(())
    }

    /// `liqonet-relay` to the one peer this cluster has, and routes to its pod CIDR.
    fn start_relay(&mut self, i: usize) -> anyhow::Result<()> {
        let c = self.clusters[i].clone();
        let [j] = self.peers_of(i)[..] else {
            bail!("the relay carries one peer: the lab must have two clusters");
        };
        let peer = self.clusters[j].clone();
        let bin = self.bin("liqonet-relay");
        if !bin.exists() {
            bail!(
                "{} is not built (cargo build --release -p liqonet-benches --bin liqonet-relay)",
                bin.display()
            );
        }
        let (ifname, log) = (c.interface.clone(), format!("{}-relay", c.spec.name));
        let (port, mtu, endpoint) = (LISTEN_PORT.to_string(), MTU.to_string(), peer.endpoint());
        let args = [
            bin.to_str().unwrap_or_default(),
            "--interface",
            &ifname,
            "--listen-port",
            &port,
            "--peer",
            &endpoint,
            "--mtu",
            &mtu,
        ];
        self.spawn(&log, c.gw_ns(), &args, &[])?;
        if !wait_for(Duration::from_secs(10), || {
            self.log(&log).contains("relay up")
        }) {
            bail!("liqonet-relay did not start; log:\n{}", self.log(&log));
        }
        sh(
            c.gw_ns(),
            &format!("ip route add {} dev {ifname}", peer.spec.pod_cidr),
        )?;
        Ok(())
    }

    fn start_wireguard_go(&mut self, i: usize, key_file: &Path) -> anyhow::Result<()> {
        let c = self.clusters[i].clone();
        let ifname = c.interface.clone();
        let log = format!("{}-wireguard", c.spec.name);
        if c.spec.gateway == GatewayKind::BoringtunCli {
            let bin = self.tool("boringtun-cli")?;
            let out = self.dir.join(format!("{log}.out"));
            let out = out.to_str().unwrap_or_default();
            let args = [
                bin.to_str().unwrap_or_default(),
                "-f",
                "--disable-drop-privileges",
                "-l",
                out,
                &ifname,
            ];
            self.spawn(&log, c.gw_ns(), &args, &[])?;
        } else {
            let bin = c
                .spec
                .wireguard_go
                .as_deref()
                .and_then(Path::to_str)
                .unwrap_or("wireguard-go");
            self.spawn(
                &log,
                c.gw_ns(),
                &[bin, "-f", &ifname],
                &[("LOG_LEVEL", "verbose")],
            )?;
        }
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        if !wait_for(Duration::from_secs(10), || Path::new(&sock).exists()) {
            bail!("wireguard-go did not start; log:\n{}", self.log(&log));
        }
        let mut wg = format!(
            "wg set {ifname} listen-port {LISTEN_PORT} private-key {}",
            key_file.display()
        );
        for j in self.peers_of(i) {
            let p = &self.clusters[j];
            wg += &format!(" peer {} allowed-ips {}", p.public_key, p.spec.pod_cidr);
            if p.spec.endpoint_known {
                wg += &format!(" endpoint {}", p.endpoint());
            }
        }
        sh(c.gw_ns(), &wg)?;
        sh(c.gw_ns(), &format!("ip link set {ifname} mtu {MTU} up"))?;
        for j in self.peers_of(i) {
            let cidr = self.clusters[j].spec.pod_cidr.clone();
            sh(c.gw_ns(), &format!("ip route add {cidr} dev {ifname}"))?;
        }
        Ok(())
    }

    /// In every pod: an HTTP server (its page names the cluster and pod; `big.bin` is large) and
    /// an iperf3 server.
    fn start_pod_services(&mut self, i: usize) -> anyhow::Result<()> {
        let c = self.clusters[i].clone();
        for node in &c.nodes {
            let pod = &node.pod;
            let www = self.dir.join(format!("{}-{}-www", c.spec.name, node.name));
            fs::create_dir_all(&www)?;
            fs::write(
                www.join("index.html"),
                format!("hello from {} pod {}\n", c.spec.name, pod.ip),
            )?;
            std::os::unix::fs::symlink(self.dir.join("big.bin"), www.join("big.bin"))?;
            let www = www.to_str().unwrap_or_default().to_string();
            // Bound to "::", the server takes IPv4 too, and logs each client address it saw.
            let http = [
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                "::",
                "--directory",
                &www,
            ];
            self.spawn(
                &format!("{}-{}-http", c.spec.name, node.name),
                &pod.ns,
                &http,
                &[],
            )?;
            self.spawn(
                &format!("{}-{}-iperf3", c.spec.name, node.name),
                &pod.ns,
                &["iperf3", "-s"],
                &[],
            )?;
        }
        for node in &c.nodes {
            let url = format!("http://{}/", node.pod.ip);
            if !wait_for(Duration::from_secs(10), || {
                ns_run(&node.pod.ns, &["curl", "-sf", &url]).is_ok()
            }) {
                bail!(
                    "the HTTP server of {} {} did not start",
                    c.spec.name,
                    node.name
                );
            }
        }
        Ok(())
    }

    /// The log of the HTTP server in `cluster`'s pod on `node`.
    pub fn http_log(&self, cluster: &str, node: &str) -> String {
        self.log(&format!("{cluster}-{node}-http"))
    }

    /// Starts a process inside `ns`, logging to `<dir>/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Sends signal `sig` (`"HUP"`, ...) to a process the lab started.
    pub fn signal(&self, name: &str, sig: &str) -> anyhow::Result<()> {
        let (_, child) = self
            .procs
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no process {name}"))?;
        run(&["kill", &format!("-{sig}"), &child.id().to_string()])?;
        Ok(())
    }

    /// The process ID of a process the lab started (`ip netns exec` becomes the program).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Sends SIGTERM to a process the lab started and waits for it to exit.
    pub fn stop(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        self.kill(name, "TERM")
    }

    /// The gateway's Prometheus metrics (liqonet gateways only).
    pub fn metrics(&self, cluster: &str) -> anyhow::Result<String> {
        let c = self.cluster(cluster);
        ns_run(
            c.gw_ns(),
            &[
                "curl",
                "-sf",
                &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
            ],
        )
    }

    /// Every namespace of this lab that currently exists.
    pub fn namespaces(&self) -> Vec<String> {
        netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect()
    }

    /// Kills the lab's processes, deletes its namespaces and its directory.
    pub fn teardown(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = netns::output(&["kill", "-TERM", &child.id().to_string()]);
        }
        for (_, child) in &mut self.procs {
            let stopped = wait_for(Duration::from_secs(3), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.procs.clear();
        netns::remove_prefixed(&self.prefix);
        for c in self.clusters.iter().filter(|c| !c.interface.is_empty()) {
            let _ = fs::remove_file(format!("/var/run/wireguard/{}.sock", c.interface));
        }
        if std::env::var_os("LIQONET_LAB_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether the lab's liqonet gateways use segmentation offloads: yes, unless
/// `LIQONET_LAB_OFFLOAD=0` forces them off (`make test` runs the lab tests both ways).
pub fn offload_enabled() -> bool {
    std::env::var("LIQONET_LAB_OFFLOAD").map_or(true, |v| v != "0")
}

/// The lab's liqonet gateways' `realtimePriority`, when `LIQONET_LAB_REALTIME_PRIORITY` sets one
/// (0: normal priority throughout), for A/B runs; otherwise the gateway's default. A lab does
/// not start with a value that is not a priority.
pub fn realtime_priority() -> Option<u8> {
    realtime_priority_setting().ok().flatten()
}

fn realtime_priority_setting() -> anyhow::Result<Option<u8>> {
    match std::env::var("LIQONET_LAB_REALTIME_PRIORITY") {
        Err(_) => Ok(None),
        Ok(v) => match v.parse::<u8>() {
            Ok(p) if p <= 99 => Ok(Some(p)),
            _ => bail!("LIQONET_LAB_REALTIME_PRIORITY={v:?}: not a priority (0-99)"),
        },
    }
}

fn check_root() -> anyhow::Result<()> {
    if run(&["id", "-u"])?.trim() != "0" {
        bail!("the lab needs root (network namespaces, TUN devices)");
    }
    Ok(())
}

/// Node namespace `ns` on the node network: `rp_filter=1`, and `eth0` with `ip`/24 on a veth
/// whose other end, `port`, is in `bridge` of namespace `net`.
pub fn join_node_network(
    net: &str,
    bridge: &str,
    port: &str,
    ns: &str,
    ip: &str,
) -> anyhow::Result<()> {
    sh(
        ns,
        "sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1",
    )?;
    sh(
        net,
        &format!("ip link add {port} type veth peer name eth0 netns {ns}"),
    )?;
    sh(net, &format!("ip link set {port} master {bridge} up"))?;
    sh(ns, &format!("ip addr add {ip}/24 dev eth0"))?;
    sh(ns, "ip link set eth0 up")?;
    Ok(())
}

pub fn add_ns(name: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "add", name])?;
    sh(name, "ip link set lo up")?;
    Ok(())
}

/// A pod on node `node_ns` at `<base>.10` in the node's subnet `<base>.0/24`, and at `::10`
/// in the node's IPv6 /64 when the cluster is dual-stack.
pub fn build_pod(
    node_ns: &str,
    ns: &str,
    base: &str,
    subnet6: Option<&str>,
) -> anyhow::Result<Pod> {
    add_ns(ns)?;
    let (node_ip, pod_ip) = (format!("{base}.1"), format!("{base}.10"));
    sh(
        node_ns,
        &format!("ip link add pod0 type veth peer name eth0 netns {ns}"),
    )?;
    sh(node_ns, &format!("ip addr add {node_ip}/24 dev pod0"))?;
    sh(node_ns, "ip link set pod0 up")?;
    sh(ns, &format!("ip addr add {pod_ip}/24 dev eth0"))?;
    sh(ns, "ip link set eth0 up")?;
    sh(ns, &format!("ip route add default via {node_ip}"))?;
    let ip6 = match subnet6 {
        Some(subnet6) => {
            let base6 = subnet6.trim_end_matches("::/64");
            sh(
                node_ns,
                &format!("ip addr add {base6}::1/64 dev pod0 nodad"),
            )?;
            sh(ns, &format!("ip addr add {base6}::10/64 dev eth0 nodad"))?;
            sh(ns, &format!("ip -6 route add default via {base6}::1"))?;
            Some(format!("{base6}::10"))
        }
        None => None,
    };
    Ok(Pod {
        ns: ns.to_string(),
        ip: pod_ip,
        ip6,
    })
}

/// Node `n`'s IPv6 pod subnet in a cluster /56: `fd10:244::/56`, 1 → `fd10:244:0:1::/64`.
fn node_subnet6(cidr6: &str, n: usize) -> anyhow::Result<String> {
    let base = cidr6
        .strip_suffix("::/56")
        .with_context(|| format!("lab IPv6 pod CIDRs are /56s ending in ::, not {cidr6:?}"))?;
    Ok(format!("{base}:0:{n:x}::/64"))
}

/// `10.244.0.0/16` → `10.244`.
fn pod_base(cidr: &str) -> anyhow::Result<String> {
    let octets: Vec<&str> = cidr.split(['.', '/']).collect();
    if octets.len() != 5 || octets[4] != "16" {
        bail!("lab pod CIDRs are IPv4 /16s, not {cidr:?}");
    }
    Ok(format!("{}.{}", octets[0], octets[1]))
}

/// Interface names are at most 15 bytes; cluster names are cut to fit `NAME-wan`.
fn short(name: &str) -> &str {
    &name[..name.len().min(10)]
}

/// Where the liqonet binaries are: `LIQONET_BIN_DIR`, or the cargo target dir of this executable.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LIQONET_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable without a directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    if !dir.join("liqonet-gateway").exists() {
        bail!(
            "liqonet-gateway is not in {}; run `cargo build --bins` first or set LIQONET_BIN_DIR",
            dir.display()
        );
    }
    Ok(dir)
}
