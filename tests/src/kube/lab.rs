//! The Kubernetes lab on real nodes: per cluster a control plane with kube-scheduler and
//! kube-controller-manager, and nodes that each run containerd, a kubelet and kube-proxy
//! ([`super::node`]). deploy/ is applied with kubectl and the cluster does the rest: the
//! DaemonSets' pods are scheduled, run by containerd from the project's image (built offline and
//! imported into every node), probed by the kubelet; test pods get addresses from the bridge CNI.
//!
//! The lab does only what a cloud and a routed CNI would do around the cluster: it sets each
//! Node's addresses (ExternalIP on gateway nodes) and lifts the cloud provider's
//! `uninitialized` taint, labels the gateway nodes, and routes each node's pod CIDR to it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::controlplane::ControlPlane;
use super::install::{install_with, Installer, GATEWAY_DS, TEST_NAMESPACE};
use super::node::{self, NodeSpec, RealNode};
use crate::lab::{add_ns, join_node_network};
use crate::netns::{self, sh};

pub const CONTROL_PLANE_IP: &str = "172.20.0.2";
const ROUTER_IP: &str = "172.20.0.1";
/// Nodes of every cluster: two gateway nodes and a worker.
const NODES: [(&str, &str, bool); 3] = [
    ("gw1", "172.20.0.11", true),
    ("gw2", "172.20.0.12", true),
    ("w1", "172.20.0.21", false),
];
/// The label that makes a node a gateway node.
pub const GATEWAY_LABEL: &str = "liqonet.liqo.io/gateway";

/// A node of a real cluster, as the lab built it around its kubelet.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub wan_ip: Option<String>,
}

pub struct KubeCluster {
    pub name: String,
    pub cp: ControlPlane,
    pub nodes: Vec<NodeInfo>,
    pub running: Vec<RealNode>,
    pub net_ns: String,
}

impl KubeCluster {
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cp.kubectl(args)
    }

    pub fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut v: Vec<&str> = vec!["get"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&v)?)?)
    }

    pub fn node(&self, name: &str) -> &NodeInfo {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in {}", self.name))
    }

    /// `kubectl rollout status` of DaemonSet `ds` in `liqonet`: until its rollout completes.
    pub fn rollout_status(&self, ds: &str) -> anyhow::Result<String> {
        self.kubectl(&[
            "-n",
            "liqonet",
            "rollout",
            "status",
            &format!("ds/{ds}"),
            "--timeout=180s",
        ])
    }

    /// The items of `kubectl get ARGS`; none when it fails.
    fn items(&self, args: &[&str]) -> Vec<Value> {
        self.get_json(args)
            .ok()
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The nodes whose gateway replica is Ready (the kubelet's /readyz probe).
    pub fn ready_gateways(&self) -> Vec<String> {
        let pods = self.items(&[
            "-n",
            "liqonet",
            "pods",
            "-l",
            "app.kubernetes.io/component=gateway",
        ]);
        pods.iter()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect()
    }

    /// The nodes the gateway Service's ready endpoints name (its EndpointSlices, as kube-proxy
    /// reads them).
    pub fn service_endpoints(&self) -> Vec<String> {
        let slices = self.items(&[
            "-n",
            "liqonet",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=liqonet-gateway",
        ]);
        slices
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != false)
            .filter_map(|e| e["nodeName"].as_str().map(String::from))
            .collect()
    }

    /// The node of the replica the Lease names as its holder.
    pub fn leader(&self) -> Option<String> {
        let lease = self
            .get_json(&["-n", "liqonet", "lease", GATEWAY_DS])
            .ok()?;
        let pod = lease["spec"]["holderIdentity"].as_str()?;
        let pod = self.get_json(&["-n", "liqonet", "pod", pod]).ok()?;
        pod["spec"]["nodeName"].as_str().map(String::from)
    }

    /// The network namespaces of the gateway nodes.
    pub fn gateway_namespaces(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.wan_ip.is_some())
            .map(|n| n.ns.clone())
            .collect()
    }

    /// The liqonet pod of `component` (`gateway`, `route-agent`) on `node`.
    pub fn pod_of(&self, component: &str, node: &str) -> anyhow::Result<String> {
        let pods = self.get_json(&[
            "-n",
            "liqonet",
            "pods",
            "-l",
            &format!("app.kubernetes.io/component={component}"),
        ])?;
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null())
            .and_then(|p| p["metadata"]["name"].as_str())
            .map(String::from)
            .with_context(|| format!("no {component} pod on {}/{node}", self.name))
    }

    /// kubectl with the ServiceAccount token the kubelet projected into liqonet pod `pod` (what
    /// that component may do); the output whether it succeeded or not.
    pub fn kubectl_with_token_of(
        &self,
        pod: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let p = self.get_json(&["-n", "liqonet", "pod", pod])?;
        let uid = p["metadata"]["uid"].as_str().context("pod without a uid")?;
        let node = p["spec"]["nodeName"]
            .as_str()
            .context("pod not scheduled")?;
        let n = self
            .running
            .iter()
            .find(|n| n.spec.name == node)
            .with_context(|| format!("no running node {node}"))?;
        // A tmpfs the kubelet mounted in the node's mount namespace: read from there.
        let token = n.exec(&[
            "sh",
            "-c",
            &format!("cat /var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~projected/*/token"),
        ])?;
        Ok(std::process::Command::new("ip")
            .args(["netns", "exec", &self.cp.ns])
            .arg(self.cp.kubectl_bin())
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", self.cp.server()))
            .arg(format!(
                "--certificate-authority={}",
                self.cp.dir.join("ca.crt").display()
            ))
            .arg(format!("--token={}", token.trim()))
            .args(args)
            .output()?)
    }

    /// The node's running components (containerd, kubelet, kube-proxy and what they run).
    pub fn running(&mut self, name: &str) -> Option<&mut RealNode> {
        self.running.iter_mut().find(|n| n.spec.name == name)
    }
}

pub struct KubeLab {
    pub prefix: String,
    pub dir: PathBuf,
    pub clusters: Vec<KubeCluster>,
    pub wan_ns: String,
    /// The OCI archives every node imports: the project's image, the test image, pause.
    pub images: Vec<PathBuf>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl KubeLab {
    /// Builds clusters `names` on real nodes with liqonet installed from deploy/; on failure
    /// what was built is torn down.
    pub fn start(names: &[&str]) -> anyhow::Result<KubeLab> {
        if netns::run(&["id", "-u"])?.trim() != "0" {
            bail!("the lab needs root (namespaces, cgroups, TUN devices)");
        }
        // What labs of killed processes left: their nodes first (they hold the mounts).
        node::sweep_stale_cgroups();
        netns::sweep_stale();
        super::install::sweep_stale_files();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("lq{}x{n}r-", std::process::id());
        let dir =
            std::env::temp_dir().join(format!("liqonet-nodes-{}", &prefix[..prefix.len() - 1]));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut lab = KubeLab {
            wan_ns: format!("{prefix}wan"),
            prefix,
            dir,
            clusters: Vec::new(),
            images: Vec::new(),
        };
        lab.images = build_images(&lab.dir.join("images"))?;
        add_ns(&lab.wan_ns)?;
        sh(&lab.wan_ns, "ip link add br0 type bridge")?;
        sh(&lab.wan_ns, "ip link set br0 up")?;
        for name in names {
            lab.add_cluster(name)?;
        }
        Ok(lab)
    }

    /// Like [`KubeLab::start`], each cluster installed its own way.
    pub fn start_with(clusters: &[(&str, Installer)]) -> anyhow::Result<KubeLab> {
        let mut lab = Self::start(&[])?;
        for (name, how) in clusters {
            lab.add_cluster_with(name, *how)?;
        }
        Ok(lab)
    }

    pub fn cluster(&self, name: &str) -> &KubeCluster {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in this lab"))
    }

    pub fn cluster_mut(&mut self, name: &str) -> &mut KubeCluster {
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in this lab"))
    }

    /// Adds cluster `name` to a running lab (its own control plane and nodes, liqonet
    /// installed from deploy/ with kubectl), unpeered.
    pub fn add_cluster(&mut self, name: &str) -> anyhow::Result<()> {
        self.add_cluster_with(name, Installer::Kustomize)
    }

    /// Adds cluster `name`, liqonet installed `how`.
    pub fn add_cluster_with(&mut self, name: &str, how: Installer) -> anyhow::Result<()> {
        let (net_ns, cp_ns, nodes) = cluster_network(
            &self.prefix,
            &self.wan_ns,
            self.clusters.len(),
            name,
            &NODES,
            true,
        )?;
        let mut cp = ControlPlane::start(&cp_ns, CONTROL_PLANE_IP, &self.dir.join(name))?;
        cp.start_components()?;
        let mut cluster = KubeCluster {
            name: name.to_string(),
            cp,
            nodes,
            running: Vec::new(),
            net_ns,
        };
        for info in cluster.nodes.clone() {
            let spec = NodeSpec {
                name: info.name.clone(),
                ns: info.ns.clone(),
                ip: info.ip.clone(),
                id: format!("{}{name}-{}", self.prefix, info.name),
                dir: self.dir.join(name).join("nodes").join(&info.name),
            };
            cluster
                .running
                .push(RealNode::start(spec, &cluster.cp, &self.images)?);
        }
        self.clusters.push(cluster);
        let c = self.clusters.last().context("no cluster")?;
        initialize_nodes(c)?;
        install_with(c, &self.dir.join(name), how)?;
        // Installed: every route agent runs and a gateway replica leads (it has made the
        // cluster's keys, which peering reads).
        c.rollout_status("liqonet-route-agent")?;
        if !crate::netns::wait_for(Duration::from_secs(120), || {
            !c.service_endpoints().is_empty()
        }) {
            bail!(
                "no gateway replica of {name} leads the gateway Service:\n{}",
                c.kubectl(&["-n", "liqonet", "logs", "ds/liqonet-gateway", "--tail=30"])
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Peers `a` and `b` with the real CLI, both ways, each as the peering identity.
    pub fn peer(&self, a: &str, b: &str) -> anyhow::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            let info = self.peering_info(y)?;
            self.peer_add(x, &info)?;
        }
        Ok(())
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
        let info = info.to_str().unwrap_or_default();
        self.peering_cli(cluster, &["peer", "add", "--kubernetes", info])?;
        Ok(())
    }

    pub fn peering_cli(&self, cluster: &str, args: &[&str]) -> anyhow::Result<String> {
        let gateway = crate::lab::bin_dir()?.join("liqonet-gateway");
        super::install::peering_cli(&self.cluster(cluster).cp, &gateway, args)
    }

    /// The test pod on `node` of `cluster`: its name and address, once it runs.
    pub fn test_pod(&self, cluster: &str, node: &str) -> anyhow::Result<(String, String)> {
        let c = self.cluster(cluster);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pods = c.get_json(&["-n", TEST_NAMESPACE, "pods"])?;
            let found = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["spec"]["nodeName"] == node && p["status"]["phase"] == "Running");
            if let Some(p) = found {
                if let (Some(name), Some(ip)) = (
                    p["metadata"]["name"].as_str(),
                    p["status"]["podIP"].as_str(),
                ) {
                    return Ok((name.to_string(), ip.to_string()));
                }
            }
            if Instant::now() > deadline {
                bail!("no running test pod on {cluster}/{node}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `kubectl exec` in a test pod of `cluster`.
    pub fn exec(&self, cluster: &str, pod: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut v = vec!["-n", TEST_NAMESPACE, "exec", pod, "--"];
        v.extend_from_slice(args);
        self.cluster(cluster).kubectl(&v)
    }

    /// How `viewer`'s pods address `target`'s pod or Service with address `ip`: the prefix
    /// `viewer`'s gateway chose for the exported network holding `ip` (the TunnelEndpoint's
    /// status), with `ip`'s host bits.
    pub fn remote_ip(&self, viewer: &str, target: &str, ip: &str) -> anyhow::Result<String> {
        let tep = self
            .cluster(viewer)
            .get_json(&["-n", "liqonet", "tep", target])?;
        tep["status"]["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|n| remap(ip, n["cidr"].as_str()?, n["remapped"].as_str()?))
            .with_context(|| {
                format!("TunnelEndpoint {target} in {viewer} has no remapped network for {ip} yet")
            })
    }

    /// The network namespace of a test pod, as a path (`/proc/PID/ns/net` of a process of the
    /// pod, found in its node's cgroup): for probes that need a socket in the pod.
    pub fn pod_netns(&self, cluster: &str, pod: &str) -> anyhow::Result<String> {
        let c = self.cluster(cluster);
        let p = c.get_json(&["-n", TEST_NAMESPACE, "pod", pod])?;
        let uid = p["metadata"]["uid"].as_str().context("pod without a uid")?;
        let node = p["spec"]["nodeName"]
            .as_str()
            .context("pod not scheduled")?;
        let id = &c
            .running
            .iter()
            .find(|n| n.spec.name == node)
            .with_context(|| format!("no running node {node}"))?
            .spec
            .id;
        let marker = format!("pod{uid}");
        let pid = node::cgroup_pids_under(id, &marker)
            .into_iter()
            .next()
            .with_context(|| format!("no process of pod {pod} in {node}'s cgroup"))?;
        Ok(format!("/proc/{pid}/ns/net"))
    }

    /// The process named `comm` (`liqonet-gateway`, `liqonet-route-a`: the kernel keeps 15
    /// bytes) on `node` of `cluster`, in its node's cgroup, if it runs.
    pub fn process_on(&self, cluster: &str, node: &str, comm: &str) -> Option<u32> {
        let c = self.cluster(cluster);
        let id = &c.running.iter().find(|n| n.spec.name == node)?.spec.id;
        node::cgroup_pids(id).into_iter().find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
    }

    /// The gateway process on `node` of `cluster`, if it runs.
    pub fn gateway_pid(&self, cluster: &str, node: &str) -> Option<u32> {
        self.process_on(cluster, node, "liqonet-gateway")
    }

    /// Kills everything `node` runs at once, as a crash would.
    pub fn crash_node(&mut self, cluster: &str, node: &str) -> anyhow::Result<()> {
        let c = self.cluster_mut(cluster);
        let n = c
            .running(node)
            .with_context(|| format!("no running node {node}"))?;
        n.crash();
        Ok(())
    }

    /// Starts a crashed (or stopped) node again: containerd, the kubelet and kube-proxy come
    /// back with the node's state, as after a reboot.
    pub fn restart_node(&mut self, cluster: &str, node: &str) -> anyhow::Result<()> {
        let images = self.images.clone();
        let c = self.cluster_mut(cluster);
        let i = c
            .running
            .iter()
            .position(|n| n.spec.name == node)
            .with_context(|| format!("no node {node}"))?;
        let mut old = c.running.remove(i);
        old.stop();
        let spec = old.spec.clone();
        drop(old);
        let fresh = RealNode::start(spec, &c.cp, &images)?;
        let cidr = c.get_json(&["node", node])?["spec"]["podCIDR"]
            .as_str()
            .map(String::from);
        if let Some(cidr) = cidr {
            fresh.set_pod_cidr(&cidr)?;
        }
        c.running.insert(i, fresh);
        Ok(())
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
            let tep = self.cluster(c).get_json(&["-n", "liqonet", "tep", name]);
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

    /// Every node of `cluster` holds exactly the routes and rules its TunnelEndpoints call for
    /// (see [`super::routes::check`]); waits up to `timeout`, returns how long it took.
    pub fn wait_routes(&self, cluster: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let c = self.cluster(cluster);
        let (gateway, networks) = super::routes::carried(&c.get_json(&["-n", "liqonet", "tep"])?);
        let mut nodes = Vec::new();
        for n in &c.nodes {
            let node = c.get_json(&["node", &n.name])?;
            nodes.push(super::routes::NodeView {
                name: n.name.clone(),
                ns: n.ns.clone(),
                ip: n.ip.clone(),
                pod_cidr: node["spec"]["podCIDR"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        super::routes::wait(cluster, &nodes, gateway.as_deref(), &networks, timeout)
    }

    /// What the whole lab uses at rest over `window`: the share of one CPU, and resident memory
    /// at the end (every node's cgroup, and the control planes' processes).
    pub fn usage(&self, window: Duration) -> (f64, u64) {
        let sample = || {
            let mut cpu = Duration::ZERO;
            let mut rss = 0;
            for c in &self.clusters {
                for n in &c.running {
                    let (t, m) = node::cgroup_usage(&n.spec.id);
                    cpu += t;
                    rss += m;
                }
                for pid in c.cp.pids() {
                    cpu += crate::procfs::cpu_time(pid).unwrap_or_default();
                    rss += crate::procfs::rss(pid).unwrap_or(0);
                }
            }
            (cpu, rss)
        };
        let (before, _) = sample();
        let t0 = Instant::now();
        std::thread::sleep(window);
        let (after, rss) = sample();
        let share = after.saturating_sub(before).as_secs_f64() / t0.elapsed().as_secs_f64();
        (share, rss)
    }

    /// Kills every node and control plane, removes the namespaces and files.
    pub fn teardown(&mut self) {
        for c in &mut self.clusters {
            for n in &mut c.running {
                n.stop();
            }
            c.running.clear();
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

/// A lab cluster's network: its node network (a bridge in `<prefix><name>-net`, with the
/// network's router at .1 when `router`, and a default route to it on every node), the control
/// plane's namespace at 172.20.0.2, and a namespace per node in `nodes` (name, IP, whether a
/// gateway node: those also get a WAN address, 192.168.250.<10(i+1)+n+1>). Returns the node
/// network's and the control plane's namespaces, and the nodes.
pub fn cluster_network(
    prefix: &str,
    wan_ns: &str,
    i: usize,
    name: &str,
    nodes: &[(&str, &str, bool)],
    router: bool,
) -> anyhow::Result<(String, String, Vec<NodeInfo>)> {
    let short = &name[..name.len().min(8)];
    let net_ns = format!("{prefix}{name}-net");
    add_ns(&net_ns)?;
    sh(&net_ns, "ip link add br0 type bridge")?;
    sh(&net_ns, "ip link set br0 up")?;
    if router {
        // The node network's router (it routes nowhere): nodes have a default route, as real
        // ones do; without it a node's own connections to a ClusterIP fail before kube-proxy's
        // DNAT (no route to 10.96.0.1).
        sh(&net_ns, &format!("ip addr add {ROUTER_IP}/24 dev br0"))?;
    }
    let cp_ns = format!("{prefix}{name}-cp");
    add_ns(&cp_ns)?;
    sh(
        &net_ns,
        &format!("ip link add {short}cp type veth peer name eth0 netns {cp_ns}"),
    )?;
    sh(&net_ns, &format!("ip link set {short}cp master br0 up"))?;
    sh(
        &cp_ns,
        &format!("ip addr add {CONTROL_PLANE_IP}/24 dev eth0"),
    )?;
    sh(&cp_ns, "ip link set eth0 up")?;
    let mut infos = Vec::new();
    for (n, (node, ip, gateway)) in nodes.iter().enumerate() {
        let ns = format!("{prefix}{name}-{node}");
        add_ns(&ns)?;
        sh(&ns, "sysctl -qw net.ipv4.ip_forward=1")?;
        join_node_network(&net_ns, "br0", &format!("{short}{node}"), &ns, ip)?;
        if router {
            sh(&ns, &format!("ip route add default via {ROUTER_IP}"))?;
        }
        let wan_ip = if *gateway {
            let wan_ip = format!("192.168.250.{}", 10 * (i + 1) + n + 1);
            let port = format!("{short}{node}w");
            sh(
                wan_ns,
                &format!("ip link add {port} type veth peer name wan0 netns {ns}"),
            )?;
            sh(wan_ns, &format!("ip link set {port} master br0 up"))?;
            sh(&ns, &format!("ip addr add {wan_ip}/24 dev wan0"))?;
            sh(&ns, "ip link set wan0 up")?;
            Some(wan_ip)
        } else {
            None
        };
        infos.push(NodeInfo {
            name: node.to_string(),
            ns,
            ip: ip.to_string(),
            wan_ip,
        });
    }
    Ok((net_ns, cp_ns, infos))
}

/// The project's image from the binaries the lab runs (debug for tests, release for the bench:
/// whatever sits beside the running program), the test image and pause, written afresh at every
/// start so that a stale image is never tested.
fn build_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let bin = crate::lab::bin_dir()?;
    let cp = super::controlplane::binaries()?;
    let mut out = Vec::new();
    for (file, image) in [
        ("liqonet.tar", crate::image::project_image(&bin)?),
        ("liqonet-test.tar", crate::image::test_image()?),
        ("pause.tar", crate::image::pause_image(&cp)?),
    ] {
        let path = dir.join(file);
        image.write(&path)?;
        out.push(path);
    }
    Ok(out)
}

/// What a cloud controller manager and a routed CNI would do once the kubelets have registered:
/// addresses, the `uninitialized` taint, the gateway label, the pod network's config and routes.
fn initialize_nodes(c: &KubeCluster) -> anyhow::Result<()> {
    let mut cidrs = Vec::new();
    for info in &c.nodes {
        let deadline = Instant::now() + Duration::from_secs(90);
        let cidr = loop {
            if let Ok(n) = c.get_json(&["node", &info.name]) {
                if let Some(cidr) = n["spec"]["podCIDR"].as_str() {
                    break cidr.to_string();
                }
            }
            if Instant::now() > deadline {
                let node = c.running.iter().find(|r| r.spec.name == info.name);
                bail!(
                    "node {} of {} did not register with a pod CIDR; kubelet log:\n{}",
                    info.name,
                    c.name,
                    node.map(|n| n.log_tail("kubelet")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let mut addresses = vec![serde_json::json!({"type": "InternalIP", "address": info.ip})];
        if let Some(wan) = &info.wan_ip {
            addresses.push(serde_json::json!({"type": "ExternalIP", "address": wan}));
        }
        addresses.push(serde_json::json!({"type": "Hostname", "address": info.name}));
        c.kubectl(&[
            "patch",
            "node",
            &info.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &serde_json::json!({"status": {"addresses": addresses}}).to_string(),
        ])?;
        let _ = c.kubectl(&[
            "taint",
            "node",
            &info.name,
            "node.cloudprovider.kubernetes.io/uninitialized-",
        ]);
        if info.wan_ip.is_some() {
            c.kubectl(&[
                "label",
                "node",
                &info.name,
                &format!("{GATEWAY_LABEL}=true"),
            ])?;
        }
        if let Some(n) = c.running.iter().find(|r| r.spec.name == info.name) {
            n.set_pod_cidr(&cidr)?;
        }
        cidrs.push((info.clone(), cidr));
    }
    for (a, _) in &cidrs {
        for (b, cidr) in cidrs.iter().filter(|(b, _)| b.name != a.name) {
            sh(&a.ns, &format!("ip route add {cidr} via {}", b.ip))?;
        }
    }
    // The control plane's host routes pods too (in a real cluster it is a node of the routed
    // network): pods that talk to the API server get its answers.
    for (b, cidr) in &cidrs {
        sh(&c.cp.ns, &format!("ip route add {cidr} via {}", b.ip))?;
    }
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "node",
        "--all",
        "--timeout=120s",
    ])
    .with_context(|| {
        let tails: Vec<String> = c
            .running
            .iter()
            .map(|n| format!("{}:\n{}", n.spec.name, n.log_tail("kubelet")))
            .collect();
        format!("nodes of {} not Ready:\n{}", c.name, tails.join("\n"))
    })?;
    Ok(())
}

/// `ip` moved from network `cidr` to `remapped` (same prefix length), host bits kept, with the
/// gateway's own prefix swap; `None` when `ip` is not in `cidr`.
fn remap(ip: &str, cidr: &str, remapped: &str) -> Option<String> {
    let from: liqonet_proto::Cidr = cidr.parse().ok()?;
    let to: liqonet_proto::Cidr = remapped.parse().ok()?;
    from.swap_prefix(ip.parse().ok()?, &to)
        .map(|a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::remap;

    #[test]
    fn an_address_moves_to_the_remapped_network_with_its_host_bits() {
        let r = |ip, cidr, to| remap(ip, cidr, to);
        assert_eq!(
            r("10.244.2.7", "10.244.0.0/16", "10.245.0.0/16").unwrap(),
            "10.245.2.7"
        );
        assert_eq!(
            r("10.99.1.2", "10.96.0.0/12", "10.112.0.0/12").unwrap(),
            "10.115.1.2"
        );
        assert_eq!(r("10.96.0.10", "10.244.0.0/16", "10.245.0.0/16"), None);
        assert_eq!(r("10.0.0.1", "0.0.0.0/0", "0.0.0.0/0").unwrap(), "10.0.0.1");
    }
}
