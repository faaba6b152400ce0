//! Kubernetes mode (`liqonet-route-agent run --kubernetes`, a DaemonSet): the configuration the
//! standalone file would hold is derived from the cluster. TunnelEndpoints give the remote
//! (remapped) networks and the active gateway node (their status, written by the leader);
//! Nodes give every node's address and pod CIDRs (for the overlay's return routes). When the
//! gateway moves, every node is re-pointed by the write that hands the gateway's Lease over (it
//! names the new holder's node), a status write later at the latest.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;

use clap::Args;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use liqonet_proto::agent::{
    AgentConfig, Mode, NodeConfig, VxlanConfig, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, DEFAULT_VNI,
    DEFAULT_VXLAN_DEVICE, DEFAULT_VXLAN_MTU, DEFAULT_VXLAN_PORT,
};
use liqonet_proto::config::Parsed;
use liqonet_proto::crd::{Phase, TunnelEndpoint, LEASE_NODE_ANNOTATION};
use liqonet_proto::Cidr;

use crate::agent_loop::{Source, Update};
use crate::metrics::DEFAULT_PORT;

#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// This node (downward API `spec.nodeName`).
    #[arg(long, env = "LIQONET_NODE_NAME")]
    pub node_name: Option<String>,
    /// Namespace of the TunnelEndpoints (the gateway's).
    #[arg(long, env = "LIQONET_NAMESPACE", default_value = "liqonet")]
    pub namespace: String,
    /// The gateways' Lease in that namespace: its holder names the gateway node.
    #[arg(long, env = "LIQONET_LEASE", default_value = "liqonet-gateway")]
    pub lease: String,
    /// `vxlan` (works across subnets) or `direct` (nodes share a link).
    #[arg(long, env = "LIQONET_AGENT_MODE", default_value = "vxlan", value_parser = parse_mode)]
    pub mode: Mode,
    #[arg(long, env = "LIQONET_TABLE", default_value_t = DEFAULT_TABLE)]
    pub table: u32,
    #[arg(long, env = "LIQONET_RULE_PRIORITY", default_value_t = DEFAULT_RULE_PRIORITY)]
    pub rule_priority: u32,
    #[arg(long, env = "LIQONET_VXLAN_DEVICE", default_value = DEFAULT_VXLAN_DEVICE)]
    pub vxlan_device: String,
    #[arg(long, env = "LIQONET_VXLAN_VNI", default_value_t = DEFAULT_VNI)]
    pub vxlan_vni: u32,
    #[arg(long, env = "LIQONET_VXLAN_PORT", default_value_t = DEFAULT_VXLAN_PORT)]
    pub vxlan_port: u16,
    #[arg(long, env = "LIQONET_VXLAN_MTU", default_value_t = DEFAULT_VXLAN_MTU)]
    pub vxlan_mtu: u16,
    #[arg(long, env = "LIQONET_OVERLAY_CIDR")]
    pub overlay_cidr: Option<Cidr>,
    #[arg(long, env = "LIQONET_OVERLAY_CIDR6")]
    pub overlay_cidr6: Option<Cidr>,
    #[arg(long, env = "LIQONET_RECONCILE_SECONDS", default_value_t = 10)]
    pub reconcile_seconds: u32,
    /// Where /metrics, /healthz and /status are served (host network: every node's address).
    #[arg(long, env = "LIQONET_METRICS_ADDRESS", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub metrics_address: SocketAddr,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "vxlan" => Ok(Mode::Vxlan),
        "direct" => Ok(Mode::Direct),
        _ => Err(format!("{s:?} is not a mode (vxlan or direct)")),
    }
}

/// The node the Lease's holder runs on (`None` for a released Lease, or a holder that does not
/// say: an older gateway).
pub fn leader_node(lease: &Lease) -> Option<&str> {
    let held = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_some_and(|h| !h.is_empty());
    let node = lease
        .metadata
        .annotations
        .as_ref()?
        .get(LEASE_NODE_ANNOTATION)?;
    (held && !node.is_empty()).then_some(node.as_str())
}

/// The gateway node and the networks it carries. The Lease's holder is the gateway from the
/// write that made it the holder; it carries every endpoint that has networks. Without one, the
/// node most endpoints name (they agree except for a moment after a failover, while the new
/// leader rewrites them; ties go to the first name), and the networks of those.
fn gateway_and_networks(
    endpoints: &[Arc<TunnelEndpoint>],
    leader: Option<&str>,
) -> Option<(String, Vec<Cidr>)> {
    let carried: Vec<(&str, &[liqonet_proto::crd::NetworkStatus])> = endpoints
        .iter()
        .filter(|t| t.meta().deletion_timestamp.is_none())
        .filter_map(|t| {
            let s = t.status.as_ref()?;
            let usable = matches!(s.phase, Some(Phase::Connected | Phase::Connecting));
            let gw = s.gateway.as_ref()?;
            usable.then_some((gw.node_name.as_str(), s.networks.as_slice()))
        })
        .collect();
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for (gw, _) in &carried {
        *votes.entry(gw).or_default() += 1;
    }
    let voted = votes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?
        .0;
    let gateway = leader.unwrap_or(voted).to_string();
    let mut networks: Vec<Cidr> = carried
        .iter()
        .filter(|(gw, _)| leader.is_some() || *gw == gateway)
        .flat_map(|(_, nets)| nets.iter().map(|n| n.remapped))
        .collect();
    networks.sort();
    networks.dedup();
    Some((gateway, networks))
}

/// A Node as the agent needs it: its InternalIPs and pod CIDRs. `None` (with why) for a node
/// that cannot take part yet (no IPv4 address or no pod CIDR).
fn node_config(node: &Node) -> Result<NodeConfig, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let internal: Vec<IpAddr> = addrs
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let spec = node.spec.clone().unwrap_or_default();
    let cidrs: Vec<Cidr> = spec
        .pod_cidrs
        .unwrap_or_default()
        .into_iter()
        .chain(spec.pod_cidr)
        .filter_map(|c| c.parse().ok())
        .collect();
    let ip = internal.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let ip6 = internal.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(Parsed(*v6)),
        IpAddr::V4(_) => None,
    });
    let pod_cidr = cidrs.iter().find(|c| c.is_ipv4()).copied();
    let pod_cidr6 = cidrs.iter().find(|c| !c.is_ipv4()).copied();
    match (ip, pod_cidr) {
        (Some(ip), Some(pod_cidr)) => Ok(NodeConfig {
            name,
            ip: Parsed(ip),
            pod_cidr,
            ip6,
            pod_cidr6,
        }),
        (None, _) => Err(format!("node {name:?} has no IPv4 InternalIP")),
        (_, None) => Err(format!("node {name:?} has no IPv4 pod CIDR")),
    }
}

/// The configuration the cluster's state amounts to for `node_name` (`None`: no gateway is
/// carrying any network, so nothing to route). Errors are for the log; the previous
/// configuration stays.
pub fn config_from(
    args: &KubeArgs,
    node_name: &str,
    endpoints: &[Arc<TunnelEndpoint>],
    nodes: &[Arc<Node>],
    leader: Option<&str>,
) -> Result<Option<AgentConfig>, String> {
    let Some((gateway_node, remote_networks)) = gateway_and_networks(endpoints, leader) else {
        return Ok(None);
    };
    let mut configs = Vec::new();
    let mut skipped = Vec::new();
    for n in nodes {
        match node_config(n) {
            Ok(c) => configs.push(c),
            Err(e) => skipped.push(e),
        }
    }
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    let defaults = VxlanConfig::default();
    let config = AgentConfig {
        node_name: node_name.to_string(),
        mode: args.mode,
        gateway_node,
        remote_networks,
        nodes: configs,
        table: args.table,
        rule_priority: args.rule_priority,
        vxlan: VxlanConfig {
            device: args.vxlan_device.clone(),
            vni: args.vxlan_vni,
            port: args.vxlan_port,
            mtu: args.vxlan_mtu,
            overlay_cidr: args.overlay_cidr.unwrap_or(defaults.overlay_cidr),
            overlay_cidr6: args.overlay_cidr6.unwrap_or(defaults.overlay_cidr6),
        },
        reconcile_seconds: args.reconcile_seconds,
        // Kubernetes mode serves at --metrics-address, bound at start.
        metrics_address: None,
    };
    match config.validate() {
        Ok(()) => Ok(Some(config)),
        Err(e) if skipped.is_empty() => Err(format!("the cluster's state is not routable:\n{e}")),
        Err(e) => Err(format!(
            "the cluster's state is not routable:\n{e}\n(skipped: {})",
            skipped.join("; ")
        )),
    }
}

/// Updates from the watchers: the configuration, each time it changes.
pub struct KubeSource {
    rx: mpsc::Receiver<Update>,
}

impl Source for KubeSource {
    fn poll(&mut self) -> Option<Update> {
        // Only the newest matters.
        self.rx.try_iter().last()
    }
}

fn any_event<K>(
    s: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<(), watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    s.map(|e| e.map(|_| ()))
}

/// Retries of a failed watch: 250 ms doubling up to 2 s (kube's default grows to 30 s, which
/// after an API outage would leave the routes stale for that long once the API is back).
fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let b = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(250))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(b),
        std::time::Duration::from_secs(60),
    )
}

/// Watches TunnelEndpoints and Nodes and sends the configuration whenever it changes, writing
/// a byte to `wake` so the agent loop reconciles at once.
pub async fn watch(
    client: kube::Client,
    args: KubeArgs,
    node_name: String,
    tx: mpsc::Sender<Update>,
    wake: UnixStream,
) {
    let (endpoints, ep_writer) = reflector::store::<TunnelEndpoint>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let ep_events = reflector::reflector(
        ep_writer,
        watcher(
            Api::<TunnelEndpoint>::namespaced(client.clone(), &args.namespace),
            watcher::Config::default(),
        )
        .backoff(watch_backoff()),
    );
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .backoff(watch_backoff()),
    );
    // By name: RBAC grants this one Lease only.
    let lease_events = reflector::reflector(
        lease_writer,
        watcher(
            Api::<Lease>::namespaced(client.clone(), &args.namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", args.lease)),
        )
        .backoff(watch_backoff()),
    );
    // The leader renews the Lease several times a second: only a change of the node it names
    // is an event here (errors go through, to be logged).
    let lease_changes = {
        let leases = leases.clone();
        let mut named: Option<Option<String>> = None;
        any_event(lease_events).filter(move |e| {
            let now = leases
                .state()
                .iter()
                .find_map(|l| leader_node(l).map(str::to_string));
            let changed = e.is_err() || named.as_ref() != Some(&now);
            named = Some(now);
            futures::future::ready(changed)
        })
    };
    let events = futures::stream::select(
        futures::stream::select(any_event(ep_events), any_event(node_events)),
        lease_changes,
    );
    let mut events = std::pin::pin!(events);
    let mut last: Option<Update> = None;
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!("watch: {e}");
            continue;
        }
        // A burst (a relist, a rollout, node churn) is applied at once: take every event that
        // is already there, then compute one configuration from the stores.
        while let Some(Some(more)) = events.next().now_or_never() {
            if let Err(e) = more {
                tracing::warn!("watch: {e}");
            }
        }
        let ready = |ready: Option<Result<(), _>>| matches!(ready, Some(Ok(())));
        if !(ready(endpoints.wait_until_ready().now_or_never())
            && ready(nodes.wait_until_ready().now_or_never()))
        {
            continue;
        }
        // The Lease only speeds a move up: until it is read (or where it cannot be), the
        // endpoints' status names the gateway.
        let update = from_stores(&args, &node_name, &endpoints, &nodes, &leases);
        // Unrelated changes (a node's heartbeat) amount to the same update: nothing to send.
        if last.as_ref() == Some(&update) {
            continue;
        }
        last = Some(update.clone());
        if tx.send(update).is_err() {
            return;
        }
        let _ = (&wake).write_all(&[1]);
    }
}

fn from_stores(
    args: &KubeArgs,
    node_name: &str,
    endpoints: &Store<TunnelEndpoint>,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
) -> Update {
    let leases = leases.state();
    let leader = leases.iter().find_map(|l| leader_node(l));
    match config_from(args, node_name, &endpoints.state(), &nodes.state(), leader) {
        Ok(c) => Update::Config(c),
        Err(e) => Update::Invalid(e),
    }
}

/// The watchers on their own thread and runtime (the agent loop's netlink calls block).
pub fn spawn(args: KubeArgs, node_name: String) -> anyhow::Result<(KubeSource, UnixStream)> {
    let (tx, rx) = mpsc::channel();
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    // The agent loop drains it without blocking.
    wake_rx.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt.block_on(kube::Client::try_default()).map_err(|e| {
        anyhow::anyhow!("no Kubernetes API configuration (in-cluster or kubeconfig): {e}")
    })?;
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || rt.block_on(watch(client, args, node_name, tx, wake_tx)))?;
    Ok((KubeSource { rx }, wake_rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: KubeArgs,
    }

    fn args(extra: &[&str]) -> KubeArgs {
        let mut argv = vec!["agent"];
        argv.extend(extra);
        Wrapper::parse_from(argv).args
    }

    fn node(name: &str, ip: &str, cidrs: &[&str]) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
            }))
            .unwrap(),
        )
    }

    fn endpoint(
        name: &str,
        gateway: Option<&str>,
        phase: &str,
        remapped: &str,
    ) -> Arc<TunnelEndpoint> {
        let mut v = serde_json::json!({
            "apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpoint",
            "metadata": {"name": name, "namespace": "liqonet"},
            "spec": {"clusterID": name, "publicKey": liqonet_proto::Key([1; 32]).to_base64(),
                     "networks": [{"cidr": "10.244.0.0/16", "remapped": "auto"}]},
        });
        if let Some(gw) = gateway {
            v["status"] = serde_json::json!({"phase": phase, "networks": [{"cidr": "10.244.0.0/16", "remapped": remapped}],
                "gateway": {"nodeName": gw, "nodeIP": "172.20.0.1"}});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn nodes() -> Vec<Arc<Node>> {
        vec![
            node("gw", "172.20.0.1", &["10.244.1.0/24", "fd10:244:0:1::/64"]),
            node("w1", "172.20.0.2", &["10.244.2.0/24"]),
            node("w2", "172.20.0.3", &["10.244.3.0/24"]),
        ]
    }

    fn routes(c: &AgentConfig) -> Vec<String> {
        let mut r: Vec<String> = desired(c)
            .routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.via))
            .collect();
        r.sort();
        r
    }

    #[test]
    fn metrics_are_served_on_every_address_beside_the_gateways_port() {
        assert_eq!(args(&[]).metrics_address.to_string(), "0.0.0.0:9742");
        let a = args(&["--metrics-address", "127.0.0.1:9000"]);
        assert_eq!(a.metrics_address.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn endpoints_and_nodes_become_the_agent_config() {
        let a = args(&[]);
        let eps = [endpoint("foreign", Some("gw"), "Connected", "10.0.0.0/16")];
        let c = config_from(&a, "w1", &eps, &nodes(), None)
            .unwrap()
            .unwrap();
        assert_eq!(c.gateway_node, "gw");
        assert_eq!(c.remote_networks, ["10.0.0.0/16".parse().unwrap()]);
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(
            c.nodes[0].pod_cidr6,
            Some("fd10:244:0:1::/64".parse().unwrap())
        );
        let r = routes(&c);
        assert!(r.iter().any(|r| r.contains("10.0.0.0/16")), "{r:?}");
        // The gateway node routes return traffic to every other node's pods over the overlay.
        let on_gw = config_from(&a, "gw", &eps, &nodes(), None)
            .unwrap()
            .unwrap();
        let r = routes(&on_gw);
        assert!(r.iter().any(|r| r.contains("10.244.2.0/24")), "{r:?}");
        assert!(r.iter().any(|r| r.contains("10.244.3.0/24")), "{r:?}");
    }

    #[test]
    fn the_routes_follow_the_gateway_when_it_moves() {
        let a = args(&["--mode", "direct"]);
        let before = [endpoint("foreign", Some("gw"), "Connected", "10.0.0.0/16")];
        let after = [endpoint("foreign", Some("w2"), "Connecting", "10.0.0.0/16")];
        let c1 = config_from(&a, "w1", &before, &nodes(), None)
            .unwrap()
            .unwrap();
        let c2 = config_from(&a, "w1", &after, &nodes(), None)
            .unwrap()
            .unwrap();
        assert_eq!(c2.gateway_node, "w2");
        let (r1, r2) = (routes(&c1), routes(&c2));
        assert!(r1.iter().any(|r| r.contains("172.20.0.1")), "{r1:?}");
        assert!(r2.iter().any(|r| r.contains("172.20.0.3")), "{r2:?}");
        assert_ne!(r1, r2);
    }

    #[test]
    fn nothing_is_routed_without_a_carrying_gateway() {
        let a = args(&[]);
        assert!(config_from(&a, "w1", &[], &nodes(), None)
            .unwrap()
            .is_none());
        let pending = [endpoint("foreign", None, "", "")];
        assert!(config_from(&a, "w1", &pending, &nodes(), None)
            .unwrap()
            .is_none());
        let broken = [endpoint("foreign", Some("gw"), "Error", "10.0.0.0/16")];
        assert!(config_from(&a, "w1", &broken, &nodes(), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn during_a_failover_the_majority_gateway_wins_and_networks_are_its() {
        let a = args(&[]);
        let eps = [
            endpoint("b", Some("w2"), "Connected", "10.1.0.0/16"),
            endpoint("c", Some("w2"), "Connected", "10.2.0.0/16"),
            endpoint("d", Some("gw"), "Connected", "10.3.0.0/16"),
        ];
        let c = config_from(&a, "w1", &eps, &nodes(), None)
            .unwrap()
            .unwrap();
        assert_eq!(c.gateway_node, "w2");
        assert_eq!(c.remote_networks.len(), 2);
    }

    fn lease(holder: &str, node: Option<&str>) -> Lease {
        let mut v = serde_json::json!({
            "metadata": {"name": "liqonet-gateway"},
            "spec": {"holderIdentity": holder},
        });
        if let Some(n) = node {
            v["metadata"]["annotations"] = serde_json::json!({ LEASE_NODE_ANNOTATION: n });
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_leases_holder_is_the_gateway_before_any_status_says_so() {
        let a = args(&[]);
        assert_eq!(a.lease, "liqonet-gateway");
        // The old leader's status (on gw) still stands, one endpoint not carried yet; w2's
        // replica holds the Lease: every carried network goes to w2.
        let eps = [
            endpoint("b", Some("gw"), "Connected", "10.1.0.0/16"),
            endpoint("c", Some("w2"), "Connecting", "10.2.0.0/16"),
        ];
        let held = lease("liqonet-gateway-x", Some("w2"));
        let c = config_from(&a, "w1", &eps, &nodes(), leader_node(&held))
            .unwrap()
            .unwrap();
        assert_eq!(c.gateway_node, "w2");
        assert_eq!(c.remote_networks.len(), 2);
        assert!(
            routes(&c).iter().all(|r| r.ends_with("via 10.84.0.3")),
            "{:?}",
            routes(&c)
        );
        // Released, or held by a gateway that does not name its node: the status decides.
        for l in [lease("", Some("w2")), lease("liqonet-gateway-x", None)] {
            assert_eq!(leader_node(&l), None);
        }
        // No endpoint carried: nothing to route, whoever leads.
        let c = config_from(&a, "w1", &[], &nodes(), Some("w2")).unwrap();
        assert!(c.is_none());
    }

    #[test]
    fn a_node_not_ready_is_skipped_and_an_unknown_self_reported() {
        let a = args(&[]);
        let eps = [endpoint("foreign", Some("gw"), "Connected", "10.0.0.0/16")];
        let mut ns = nodes();
        ns.push(Arc::new(
            serde_json::from_value(serde_json::json!({"metadata": {"name": "new"}})).unwrap(),
        ));
        assert_eq!(
            config_from(&a, "w1", &eps, &ns, None)
                .unwrap()
                .unwrap()
                .nodes
                .len(),
            3
        );
        let e = config_from(&a, "new", &eps, &ns, None).unwrap_err();
        assert!(
            e.contains("nodeName") && e.contains("new") && e.contains("no IPv4 InternalIP"),
            "{e}"
        );
    }
}
