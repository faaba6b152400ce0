//! Building, driving and tearing down the Kubernetes lab.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::controlplane::{ControlPlane, API_PORT};
use super::nodeport::{GatewayNode, NodePort};
use super::pods::{self, PodFacts};
use super::real::CONTROL_PLANE_IP;
use super::routes;
use crate::lab::{add_ns, build_pod, Pod};
use crate::netns::{self, run, sh, wait_for};

/// The namespace deploy/ installs into.
pub const NAMESPACE: &str = "liqonet";
pub const GATEWAY_DS: &str = "liqonet-gateway";
pub const AGENT_DS: &str = "liqonet-route-agent";
/// Every cluster numbers its pods from this CIDR.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// Nodes of every lab cluster: two gateway nodes, two workers.
const NODES: [(&str, &str, bool); 4] = [
    ("gw1", "172.20.0.11", true),
    ("gw2", "172.20.0.12", true),
    ("w1", "172.20.0.21", false),
    ("w2", "172.20.0.22", false),
];

#[derive(Debug, Clone)]
pub struct KubeNode {
    pub name: String,
    pub ns: String,
    pub ip: String,
    /// Gateway nodes: the WAN address (the Node's ExternalIP).
    pub wan_ip: Option<String>,
    pub pod_cidr: String,
    pub pod: Pod,
}

impl KubeNode {
    pub fn is_gateway(&self) -> bool {
        self.wan_ip.is_some()
    }
}

pub struct KubeCluster {
    pub name: String,
    pub cp: ControlPlane,
    pub nodes: Vec<KubeNode>,
    pub net_ns: String,
    nodeport: Option<NodePort>,
}

impl KubeCluster {
    pub fn node(&self, name: &str) -> &KubeNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in cluster {}", self.name))
    }

    pub fn gateway_nodes(&self) -> impl Iterator<Item = &KubeNode> {
        self.nodes.iter().filter(|n| n.is_gateway())
    }

    /// kubectl as the lab admin.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cp.kubectl(args)
    }

    /// `kubectl -n liqonet get KIND NAME -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut v = vec!["-n", NAMESPACE, "get"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&v)?)?)
    }

    /// The node the Lease names as holder (`liqonet-gateway-<node>`), if any.
    pub fn lease_holder(&self) -> Option<String> {
        let lease = self.get_json(&["lease", GATEWAY_DS]).ok()?;
        let holder = lease["spec"]["holderIdentity"].as_str()?;
        holder
            .strip_prefix(&format!("{GATEWAY_DS}-"))
            .map(String::from)
    }

    /// The node whose replica the node port leads to now (it carries the tunnel).
    pub fn ready_gateway(&self) -> Option<String> {
        let np = self.nodeport.as_ref()?;
        let ip = np.active.lock().ok()?.clone()?;
        self.nodes
            .iter()
            .find(|n| n.ip == ip)
            .map(|n| n.name.clone())
    }
}

struct PodProc {
    cluster: String,
    node: String,
    ds: String,
    child: Child,
}

pub struct KubeLab {
    pub prefix: String,
    pub dir: PathBuf,
    pub clusters: Vec<KubeCluster>,
    pub wan_ns: String,
    bin_dir: PathBuf,
    procs: Vec<PodProc>,
    /// The rendered DaemonSets' pods, by cluster and DaemonSet (the spec, the health port).
    pod_specs: BTreeMap<(String, String), pods::PodSpec>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

impl KubeLab {
    /// Builds clusters `names` (each with its control plane, installed from deploy/, its
    /// gateway replicas and route agents running) and peers the first with every other one
    /// through the peering CLI. On failure what was built is torn down.
    pub fn start(names: &[&str]) -> anyhow::Result<KubeLab> {
        let lab = Self::start_unpeered(names)?;
        for other in names.iter().skip(1) {
            lab.peer(names[0], other)?;
        }
        Ok(lab)
    }

    /// Builds clusters `names` as [`KubeLab::start`] does, without peering them.
    pub fn start_unpeered(names: &[&str]) -> anyhow::Result<KubeLab> {
        if run(&["id", "-u"])?.trim() != "0" {
            bail!("the lab needs root (network namespaces, TUN devices)");
        }
        netns::sweep_stale();
        sweep_stale_files();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("lq{}x{n}k-", std::process::id());
        let dir =
            std::env::temp_dir().join(format!("liqonet-kube-{}", &prefix[..prefix.len() - 1]));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let wan_ns = format!("{prefix}wan");
        let mut lab = KubeLab {
            prefix,
            dir,
            clusters: Vec::new(),
            wan_ns,
            bin_dir: crate::lab::bin_dir()?,
            procs: Vec::new(),
            pod_specs: BTreeMap::new(),
        };
        add_ns(&lab.wan_ns)?;
        sh(&lab.wan_ns, "ip link add br0 type bridge")?;
        sh(&lab.wan_ns, "ip link set br0 up")?;
        for name in names {
            lab.add_cluster(name)?;
        }
        Ok(lab)
    }

    pub fn cluster(&self, name: &str) -> &KubeCluster {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in this lab"))
    }

    fn cluster_mut(&mut self, name: &str) -> &mut KubeCluster {
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in this lab"))
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Builds cluster `name`'s namespaces and control plane, installs deploy/, registers its
    /// nodes and starts its pods.
    pub fn add_cluster(&mut self, name: &str) -> anyhow::Result<()> {
        let (net_ns, cp_ns, infos) = super::real::cluster_network(
            &self.prefix,
            &self.wan_ns,
            self.clusters.len(),
            name,
            &NODES,
            false,
        )?;
        let mut nodes = Vec::new();
        for (n, info) in infos.into_iter().enumerate() {
            let base = format!("10.244.{}", n + 1);
            let pod = build_pod(&info.ns, &format!("{}-pod", info.ns), &base, None)?;
            nodes.push(KubeNode {
                name: info.name,
                ns: info.ns,
                ip: info.ip,
                wan_ip: info.wan_ip,
                pod_cidr: format!("{base}.0/24"),
                pod,
            });
        }
        // Static "CNI" routes between the nodes' pod subnets.
        for a in &nodes {
            for b in nodes.iter().filter(|b| b.name != a.name) {
                sh(&a.ns, &format!("ip route add {} via {}", b.pod_cidr, b.ip))?;
            }
        }
        let cp = ControlPlane::start(&cp_ns, CONTROL_PLANE_IP, &self.dir.join(name))?;
        self.clusters.push(KubeCluster {
            name: name.to_string(),
            cp,
            nodes,
            net_ns,
            nodeport: None,
        });
        self.install(name)?;
        self.start_pod_services(name)?;
        Ok(())
    }

    /// `kubectl apply -k deploy/`, this cluster's settings in the ConfigMap, the Node objects,
    /// the peering identity; then the DaemonSets' pods and the node port.
    fn install(&mut self, name: &str) -> anyhow::Result<()> {
        let deploy = deploy_dir();
        let c = self.cluster(name);
        c.kubectl(&["apply", "-k", deploy.to_str().unwrap_or_default()])?;
        c.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/tunnelendpoints.net.liqo.io",
            "--timeout=60s",
        ])?;
        let settings = serde_json::json!({"data": {
            "LIQONET_CLUSTER_ID": name,
            "LIQONET_LOCAL_NETWORKS": format!("{POD_CIDR},10.96.0.0/12"),
        }});
        c.kubectl(&[
            "-n",
            NAMESPACE,
            "patch",
            "configmap",
            GATEWAY_DS,
            "--type=merge",
            "-p",
            &settings.to_string(),
        ])?;
        for node in &c.nodes {
            register_node(c, node)?;
        }
        peering_identity(&c.cp)?;
        for ds in [AGENT_DS, GATEWAY_DS] {
            for node in self.cluster(name).nodes.clone() {
                if self.schedules(name, ds, &node)? {
                    self.start_pod(name, &node.name, ds)?;
                }
            }
        }
        self.wire_nodeport(name)?;
        Ok(())
    }

    /// Whether DaemonSet `ds` has a pod on `node` (its nodeSelector against the node's labels).
    fn schedules(&self, cluster: &str, ds: &str, node: &KubeNode) -> anyhow::Result<bool> {
        let c = self.cluster(cluster);
        let ds = c.get_json(&["daemonset", ds])?;
        let n: Value =
            serde_json::from_str(&c.kubectl(&["get", "node", &node.name, "-o", "json"])?)?;
        let selector = ds["spec"]["template"]["spec"]["nodeSelector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        Ok(selector
            .iter()
            .all(|(k, v)| n["metadata"]["labels"][k] == *v))
    }

    /// The pod name of DaemonSet `ds` on `node` (stable across restarts, as a container
    /// restart keeps its pod).
    pub fn pod_name(ds: &str, node: &str) -> String {
        format!("{ds}-{node}")
    }

    /// Starts DaemonSet `ds`'s pod on `node` as the kubelet would.
    pub fn start_pod(&mut self, cluster: &str, node: &str, ds: &str) -> anyhow::Result<()> {
        let c = self.cluster(cluster);
        let n = c.node(node).clone();
        let key = (cluster.to_string(), ds.to_string());
        let pod_name = Self::pod_name(ds, node);
        let facts = PodFacts {
            namespace: NAMESPACE,
            pod_name: &pod_name,
            node_name: node,
            node_ip: &n.ip,
        };
        let daemonset = c.get_json(&["daemonset", ds])?;
        let spec = pods::render(&daemonset, &facts, |cm| {
            let v = c.get_json(&["configmap", cm])?;
            Ok(v["data"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default())
        })?;
        let token = c.kubectl(&[
            "-n",
            NAMESPACE,
            "create",
            "token",
            &spec.service_account,
            "--duration=48h",
        ])?;
        let pod_dir = self.dir.join(cluster).join("pods").join(&pod_name);
        pods::write_service_account(
            &pod_dir.join("serviceaccount"),
            &token,
            &c.cp.dir.join("ca.crt"),
            NAMESPACE,
        )?;
        let mut cmd = pods::command(
            &n.ns,
            &spec,
            &pod_dir.join("serviceaccount"),
            &self.bin_dir,
            (&c.cp.ip, API_PORT),
        )?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(cluster, node, ds))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {pod_name} in {cluster}"))?;
        self.pod_specs.insert(key, spec);
        self.procs.push(PodProc {
            cluster: cluster.to_string(),
            node: node.to_string(),
            ds: ds.to_string(),
            child,
        });
        Ok(())
    }

    fn log_path(&self, cluster: &str, node: &str, ds: &str) -> PathBuf {
        self.dir
            .join(cluster)
            .join(format!("{}.log", Self::pod_name(ds, node)))
    }

    /// What DaemonSet `ds`'s pod on `node` logged (all its runs).
    pub fn log(&self, cluster: &str, node: &str, ds: &str) -> String {
        fs::read_to_string(self.log_path(cluster, node, ds)).unwrap_or_default()
    }

    /// Sends `sig` to the pod's process; for KILL and TERM waits until it has exited.
    pub fn signal_pod(
        &mut self,
        cluster: &str,
        node: &str,
        ds: &str,
        sig: &str,
    ) -> anyhow::Result<()> {
        let pos = self
            .procs
            .iter()
            .position(|p| p.cluster == cluster && p.node == node && p.ds == ds)
            .with_context(|| format!("no pod {ds} on {cluster}/{node}"))?;
        run(&[
            "kill",
            &format!("-{sig}"),
            &self.procs[pos].child.id().to_string(),
        ])?;
        if sig == "KILL" || sig == "TERM" {
            let mut p = self.procs.remove(pos);
            if !wait_for(Duration::from_secs(15), || {
                matches!(p.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = p.child.kill();
                let _ = p.child.wait();
                bail!("{ds} on {cluster}/{node} did not exit within 15 s of SIG{sig}");
            }
        }
        Ok(())
    }

    /// kubectl with DaemonSet `ds`'s ServiceAccount token from its pod on `node` (what that
    /// component may do); the output whether it succeeded or not.
    pub fn kubectl_as_pod(
        &self,
        cluster: &str,
        node: &str,
        ds: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let c = self.cluster(cluster);
        let sa = self
            .dir
            .join(cluster)
            .join("pods")
            .join(Self::pod_name(ds, node))
            .join("serviceaccount");
        let token = fs::read_to_string(sa.join("token"))?;
        Ok(std::process::Command::new("ip")
            .args(["netns", "exec", &c.cp.ns])
            .arg(c.cp.kubectl_bin())
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", c.cp.server()))
            .arg(format!(
                "--certificate-authority={}",
                sa.join("ca.crt").display()
            ))
            .arg(format!("--token={}", token.trim()))
            .args(args)
            .output()?)
    }

    /// Wires the gateway Service's node port (read from the Service) on the gateway nodes.
    fn wire_nodeport(&mut self, cluster: &str) -> anyhow::Result<()> {
        let c = self.cluster(cluster);
        let svc = c.get_json(&["service", GATEWAY_DS])?;
        let port = &svc["spec"]["ports"][0];
        let node_port = port["nodePort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("the gateway Service has no node port")?;
        let target = port["targetPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("the gateway Service's targetPort is not a number")?;
        let ds = c.get_json(&["daemonset", GATEWAY_DS])?;
        let health = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "health")
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .context("the gateway DaemonSet has no health port")?;
        let nodes = c
            .gateway_nodes()
            .map(|n| GatewayNode {
                ns: n.ns.clone(),
                ip: n.ip.clone(),
            })
            .collect();
        let np = NodePort::start(&c.cp.ns, nodes, node_port, target, health)?;
        self.cluster_mut(cluster).nodeport = Some(np);
        Ok(())
    }

    /// Peers `a` and `b` with the real CLI, both ways, each run as the peering identity:
    /// `peering-info --kubernetes` on one, `peer add --kubernetes` on the other.
    pub fn peer(&self, a: &str, b: &str) -> anyhow::Result<()> {
        self.peer_one_way(b, a)?;
        self.peer_one_way(a, b)
    }

    /// `a` adds `b` as a peer (`b`'s peering-info, `peer add` on `a`).
    pub fn peer_one_way(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let info = self.peering_info(b)?;
        self.peer_add(a, &info)
    }

    /// `peering-info --kubernetes` on `cluster`, into a file.
    pub fn peering_info(&self, cluster: &str) -> anyhow::Result<PathBuf> {
        let info = self.peering_cli(cluster, &["peering-info", "--kubernetes"])?;
        let file = self.dir.join(format!("{cluster}.peering.yaml"));
        fs::write(&file, info)?;
        Ok(file)
    }

    /// `peer add --kubernetes INFO` on `cluster`: its TunnelEndpoint for the cluster `info`
    /// describes.
    pub fn peer_add(&self, cluster: &str, info: &Path) -> anyhow::Result<()> {
        self.peering_cli(
            cluster,
            &[
                "peer",
                "add",
                "--kubernetes",
                info.to_str().unwrap_or_default(),
            ],
        )?;
        Ok(())
    }

    /// `liqonet-gateway ARGS` on cluster `c` as the peering identity.
    pub fn peering_cli(&self, cluster: &str, args: &[&str]) -> anyhow::Result<String> {
        peering_cli(
            &self.cluster(cluster).cp,
            &self.bin("liqonet-gateway"),
            args,
        )
    }

    /// Each pod's services: an HTTP server on port 80 saying who it is, and an iperf3 server.
    fn start_pod_services(&mut self, cluster: &str) -> anyhow::Result<()> {
        for node in self.cluster(cluster).nodes.clone() {
            let www = self.dir.join(cluster).join(format!("{}-www", node.name));
            fs::create_dir_all(&www)?;
            fs::write(
                www.join("index.html"),
                format!("hello from {cluster} {} pod {}\n", node.name, node.pod.ip),
            )?;
            let www = www.to_string_lossy().into_owned();
            let http = [
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                "0.0.0.0",
                "--directory",
                &www,
            ];
            self.spawn_service(cluster, &node.name, "http", &node.pod.ns, &http)?;
            self.spawn_service(
                cluster,
                &node.name,
                "iperf3",
                &node.pod.ns,
                &["iperf3", "-s"],
            )?;
        }
        for node in &self.cluster(cluster).nodes {
            let url = format!("http://{}/", node.pod.ip);
            if !wait_for(Duration::from_secs(10), || {
                netns::ns_run(&node.pod.ns, &["curl", "-sf", &url]).is_ok()
            }) {
                bail!("the HTTP server of {cluster} {} did not start", node.name);
            }
        }
        Ok(())
    }

    fn spawn_service(
        &mut self,
        cluster: &str,
        node: &str,
        what: &str,
        ns: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join(cluster).join(format!("{node}-{what}.log")))?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {what} in {cluster}/{node}"))?;
        self.procs.push(PodProc {
            cluster: cluster.to_string(),
            node: node.to_string(),
            ds: what.to_string(),
            child,
        });
        Ok(())
    }

    /// How `viewer`'s pods address `target`'s pod CIDR: the `remapped` the viewer's gateway
    /// chose (from the TunnelEndpoint's status).
    pub fn alias(&self, viewer: &str, target: &str) -> anyhow::Result<String> {
        let tep = self.cluster(viewer).get_json(&["tep", target])?;
        tep["status"]["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["cidr"] == POD_CIDR)
            .and_then(|n| n["remapped"].as_str())
            .map(String::from)
            .with_context(|| {
                format!("TunnelEndpoint {target} in {viewer} has no remapped pod CIDR yet")
            })
    }

    /// The address by which `viewer`'s pods reach the pod on `target`'s node `node`.
    pub fn remote_pod_ip(&self, viewer: &str, target: &str, node: &str) -> anyhow::Result<String> {
        let alias = self.alias(viewer, target)?;
        let pod_ip = &self.cluster(target).node(node).pod.ip;
        // Both /16s: keep the pod's host bits.
        let prefix: Vec<&str> = alias.split(['.', '/']).take(2).collect();
        let host: Vec<&str> = pod_ip.split('.').skip(2).collect();
        Ok(format!("{}.{}", prefix.join("."), host.join(".")))
    }

    /// Waits until `c`'s TunnelEndpoint `name` has `phase`.
    pub fn wait_phase(
        &self,
        c: &str,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let tep = self.cluster(c).get_json(&["tep", name]);
            if let Ok(t) = &tep {
                if t["status"]["phase"] == phase {
                    return Ok(t.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "TunnelEndpoint {name} in {c} not {phase} after {timeout:?}: {}",
                    tep.map(|t| t["status"].to_string())
                        .unwrap_or_else(|e| e.to_string())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn route_nodes(&self, cluster: &str) -> Vec<routes::NodeView> {
        self.cluster(cluster)
            .nodes
            .iter()
            .map(|n| routes::NodeView {
                name: n.name.clone(),
                ns: n.ns.clone(),
                ip: n.ip.clone(),
                pod_cidr: n.pod_cidr.clone(),
            })
            .collect()
    }

    /// The gateway node and remapped networks `cluster` carries (see [`routes::carried`]).
    pub fn carried(&self, cluster: &str) -> anyhow::Result<(Option<String>, Vec<String>)> {
        Ok(routes::carried(&self.cluster(cluster).get_json(&["tep"])?))
    }

    /// Every node of `cluster` holds exactly what `gateway` carrying `networks` needs (see
    /// [`routes::check`]).
    pub fn check_routes(
        &self,
        cluster: &str,
        gateway: Option<&str>,
        networks: &[String],
    ) -> Result<(), String> {
        routes::check(cluster, &self.route_nodes(cluster), gateway, networks)
    }

    /// Waits until [`Self::check_routes`] holds; returns how long that took.
    pub fn wait_routes(
        &self,
        cluster: &str,
        gateway: Option<&str>,
        networks: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        routes::wait(
            cluster,
            &self.route_nodes(cluster),
            gateway,
            networks,
            timeout,
        )
    }

    /// Kills every pod process, the control planes, and removes the namespaces and files.
    pub fn teardown(&mut self) {
        for p in &mut self.procs {
            let _ = netns::output(&["kill", "-CONT", &p.child.id().to_string()]);
            let _ = netns::output(&["kill", "-TERM", &p.child.id().to_string()]);
        }
        for p in &mut self.procs {
            if !wait_for(Duration::from_secs(5), || {
                matches!(p.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        self.procs.clear();
        for c in &mut self.clusters {
            c.nodeport = None;
            c.cp.stop();
        }
        netns::remove_prefixed(&self.prefix);
        if std::env::var_os("LIQONET_LAB_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whoever peers clusters gets only the peering role (deploy/rbac.yaml): a client certificate
/// for `liqonet-lab-peering`, its kubeconfig (`peering.kubeconfig`) and the role bindings.
pub fn peering_identity(cp: &ControlPlane) -> anyhow::Result<()> {
    cp.make_client_cert("liqonet-lab-peering", &[])?;
    cp.write_kubeconfig("liqonet-lab-peering", &cp.server(), "peering")?;
    cp.kubectl(&[
        "-n",
        NAMESPACE,
        "create",
        "rolebinding",
        "lab-peering",
        "--role=liqonet-peering",
        "--user=liqonet-lab-peering",
    ])?;
    cp.kubectl(&[
        "create",
        "clusterrolebinding",
        "lab-peering",
        "--clusterrole=liqonet-peering",
        "--user=liqonet-lab-peering",
    ])?;
    Ok(())
}

/// `GATEWAY ARGS` (the liqonet-gateway binary) against the control plane `cp` as the peering
/// identity, as a user runs the peering commands.
pub fn peering_cli(cp: &ControlPlane, gateway: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cp.ns])
        .arg(gateway)
        .args(args)
        .env("KUBECONFIG", cp.dir.join("peering.kubeconfig"))
        .output()?;
    if !out.status.success() {
        bail!(
            "liqonet-gateway {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes what labs whose process is gone (killed without teardown) left outside their
/// namespaces: etcd data on tmpfs and the lab directory (`liqonet-kube-lq<pid>x…`, and
/// `liqonet-nodes-lq<pid>x…` for labs on real nodes).
pub fn sweep_stale_files() {
    let dead = |rest: &str| {
        let pid = rest.split('x').next().unwrap_or_default();
        pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    for (dir, prefix) in [
        (PathBuf::from("/dev/shm"), "liqonet-etcd-liqonet-kube-lq"),
        (PathBuf::from("/dev/shm"), "liqonet-etcd-liqonet-nodes-lq"),
        (std::env::temp_dir(), "liqonet-nodes-lq"),
        (std::env::temp_dir(), "liqonet-kube-lq"),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(prefix).is_some_and(dead) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The Node object for a lab node: labels, pod CIDR, and (status) its addresses and Ready.
fn register_node(c: &KubeCluster, node: &KubeNode) -> anyhow::Result<()> {
    let mut labels =
        serde_json::json!({"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"});
    if node.is_gateway() {
        labels["liqonet.liqo.io/gateway"] = "true".into();
    }
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    });
    c.cp.kubectl_input(
        &c.cp.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&manifest.to_string()),
    )?;
    let mut addresses = vec![serde_json::json!({"type": "InternalIP", "address": node.ip})];
    if let Some(wan) = &node.wan_ip {
        addresses.push(serde_json::json!({"type": "ExternalIP", "address": wan}));
    }
    let now = run(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])?
        .trim()
        .to_string();
    let status = serde_json::json!({"status": {
        "addresses": addresses,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "lab node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }});
    c.kubectl(&[
        "patch",
        "node",
        &node.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    Ok(())
}
