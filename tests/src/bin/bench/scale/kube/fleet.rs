//! Many lab nodes on one real control plane: a namespace per node, each with a veth to one
//! bridge (all an agent needs: the API server and its own routing tables), a Node object each,
//! and the route-agent DaemonSet's pod on every node, run as a plain process ([`super::hollow`]:
//! no machine here runs 50 kubelets), rendered from the DaemonSet the API server holds, in-cluster configuration, the agent's own
//! ServiceAccount under RBAC. No gateway runs: the bench writes the TunnelEndpoint's status as
//! the gateway leader would. Everything is torn down on drop.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::hollow::{self as pods, PodFacts};
use anyhow::{bail, Context};
use liqonet_lab::kube::controlplane::{ControlPlane, API_PORT};
use liqonet_lab::kube::install::{deploy_dir, AGENT_DS, NAMESPACE};
use liqonet_lab::lab::{add_ns, bin_dir, join_node_network};
use liqonet_lab::netns::{self, run, sh, wait_for};
use serde_json::{json, Value};

const CONTROL_PLANE_IP: &str = "172.20.0.2";
/// The TunnelEndpoint the bench drives.
pub const TEP: &str = "foreign";

pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub pod_cidr: String,
}

impl Node {
    /// Its overlay address: the agent's default overlay CIDR 10.80.0.0/12 plus the node IP's
    /// low 20 bits (172.20.0.101 → 10.84.0.101).
    pub fn overlay_ip(&self) -> String {
        let o: Vec<u8> = self.ip.split('.').filter_map(|x| x.parse().ok()).collect();
        match o.as_slice() {
            [_, b, c, d] => format!("10.{}.{c}.{d}", 80 + (b & 15)),
            _ => String::new(),
        }
    }
}

pub struct Fleet {
    prefix: String,
    dir: PathBuf,
    pub cp: Option<ControlPlane>,
    pub nodes: Vec<Node>,
    agents: Vec<Child>,
}

impl Fleet {
    /// `n` nodes (n01…, 172.20.0.101…, pod CIDRs 10.244.1.0/24…) registered on a fresh control
    /// plane with deploy/ installed; no agents yet.
    pub fn start(n: usize) -> anyhow::Result<Fleet> {
        if run(&["id", "-u"])?.trim() != "0" {
            bail!("the lab needs root (network namespaces)");
        }
        if !(1..=150).contains(&n) {
            bail!("1 to 150 nodes fit the lab's node network, not {n}");
        }
        netns::sweep_stale();
        // The `liqonet-kube-lq<pid>x…` name lets the Kubernetes lab sweep it if this dies.
        let prefix = format!("lq{}x0s-", std::process::id());
        let dir =
            std::env::temp_dir().join(format!("liqonet-kube-{}", &prefix[..prefix.len() - 1]));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut fleet = Fleet {
            prefix,
            dir,
            cp: None,
            nodes: Vec::new(),
            agents: Vec::new(),
        };
        fleet.build(n)?;
        Ok(fleet)
    }

    pub fn cp(&self) -> anyhow::Result<&ControlPlane> {
        self.cp.as_ref().context("the control plane is not running")
    }

    fn build(&mut self, n: usize) -> anyhow::Result<()> {
        let net = format!("{}net", self.prefix);
        add_ns(&net)?;
        sh(&net, "ip link add br0 type bridge")?;
        sh(&net, "ip link set br0 up")?;
        let cp_ns = format!("{}cp", self.prefix);
        add_ns(&cp_ns)?;
        sh(
            &net,
            &format!("ip link add cp type veth peer name eth0 netns {cp_ns}"),
        )?;
        sh(&net, "ip link set cp master br0 up")?;
        sh(
            &cp_ns,
            &format!("ip addr add {CONTROL_PLANE_IP}/24 dev eth0"),
        )?;
        sh(&cp_ns, "ip link set eth0 up")?;
        for i in 1..=n {
            let node = Node {
                name: format!("n{i:02}"),
                ns: format!("{}n{i:02}", self.prefix),
                ip: format!("172.20.0.{}", 100 + i),
                pod_cidr: format!("10.244.{i}.0/24"),
            };
            add_ns(&node.ns)?;
            join_node_network(&net, "br0", &node.name, &node.ns, &node.ip)?;
            self.nodes.push(node);
        }
        self.cp = Some(ControlPlane::start(
            &cp_ns,
            CONTROL_PLANE_IP,
            &self.dir.join("scale"),
        )?);
        let cp = self.cp()?;
        cp.kubectl(&["apply", "-k", deploy_dir().to_str().unwrap_or_default()])?;
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/tunnelendpoints.net.liqo.io",
            "--timeout=60s",
        ])?;
        self.register_nodes()
    }

    /// The Node objects (one apply), then each one's status: address and Ready, as a kubelet
    /// reports them.
    fn register_nodes(&self) -> anyhow::Result<()> {
        let cp = self.cp()?;
        let items: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux"}},
                    "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]}})
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        cp.kubectl_input(
            &cp.kubeconfig(),
            &["apply", "-f", "-"],
            Some(&list.to_string()),
        )?;
        for n in &self.nodes {
            let status = node_status(n, "lab node")?;
            self.patch(&format!("/api/v1/nodes/{}/status", n.name), &status)?;
        }
        Ok(())
    }

    /// A merge patch through the API as the lab admin (curl in the control plane's namespace:
    /// a few milliseconds, where kubectl would add its own start and discovery to every write).
    pub fn patch(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        self.request("PATCH", "application/merge-patch+json", path, body)
    }

    /// Creates an object (POST to `path`, the collection).
    pub fn create(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        self.request("POST", "application/json", path, body)
    }

    fn request(&self, method: &str, ctype: &str, path: &str, body: &Value) -> anyhow::Result<()> {
        let cp = self.cp()?;
        let f = |name: &str| cp.dir.join(name).to_string_lossy().into_owned();
        let out = Command::new("ip")
            .args(["netns", "exec", &cp.ns, "curl", "-sS", "--fail-with-body"])
            .args(["--cacert", &f("ca.crt"), "--cert", &f("admin.crt")])
            .args(["--key", &f("admin.key"), "-X", method])
            .args(["-H", &format!("Content-Type: {ctype}"), "--data-binary"])
            .arg(body.to_string())
            .arg(format!("{}{path}", cp.server()))
            .output()
            .context("cannot run curl")?;
        if !out.status.success() {
            bail!(
                "{method} {path}: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    /// The route-agent DaemonSet's pod for every node, ready to start: (pod name, command).
    pub fn agent_pods(&self) -> anyhow::Result<Vec<(String, Command)>> {
        let cp = self.cp()?;
        let get = |args: &[&str]| -> anyhow::Result<Value> {
            let mut v = vec!["-n", NAMESPACE, "get"];
            v.extend_from_slice(args);
            v.extend_from_slice(&["-o", "json"]);
            Ok(serde_json::from_str(&cp.kubectl(&v)?)?)
        };
        let ds = get(&["daemonset", AGENT_DS])?;
        let sa_name = ds["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .context("the route-agent DaemonSet names no ServiceAccount")?;
        // One token for all: the kubelet would mint one per pod, the API server sees the same
        // identity either way.
        let token = cp.kubectl(&[
            "-n",
            NAMESPACE,
            "create",
            "token",
            sa_name,
            "--duration=48h",
        ])?;
        let sa = self.dir.join("serviceaccount");
        pods::write_service_account(&sa, &token, &cp.dir.join("ca.crt"), NAMESPACE)?;
        let bins = bin_dir()?;
        let config_map = |name: &str| -> anyhow::Result<BTreeMap<String, String>> {
            let v = get(&["configmap", name])?;
            Ok(v["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect())
        };
        let mut out = Vec::new();
        for n in &self.nodes {
            let pod_name = format!("{AGENT_DS}-{}", n.name);
            let facts = PodFacts {
                namespace: NAMESPACE,
                pod_name: &pod_name,
                node_name: &n.name,
                node_ip: &n.ip,
            };
            let spec = pods::render(&ds, &facts, config_map)?;
            let cmd = pods::command(&n.ns, &spec, &sa, &bins, (&cp.ip, API_PORT))?;
            out.push((pod_name, cmd));
        }
        Ok(out)
    }

    /// Starts the pods [`Self::agent_pods`] made, each logging to a file of its own.
    pub fn start_agents(&mut self, pods: Vec<(String, Command)>) -> anyhow::Result<()> {
        for (pod_name, mut cmd) in pods {
            let log = fs::File::create(self.dir.join(format!("{pod_name}.log")))?;
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {pod_name}"))?;
            self.agents.push(child);
        }
        Ok(())
    }

    /// The agents' process ids (`ip netns exec` and the pod's shell exec the agent itself).
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().map(Child::id).collect()
    }

    /// Agents that exited, with the end of their log.
    pub fn dead_agents(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for (i, a) in self.agents.iter_mut().enumerate() {
            if let Ok(Some(status)) = a.try_wait() {
                let name = self.nodes.get(i).map_or("?", |n| n.name.as_str());
                let log = fs::read_to_string(self.dir.join(format!("{AGENT_DS}-{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                dead.push(format!("{name} ({status}): {}", tail.join(" | ")));
            }
        }
        dead
    }

    /// Process ids in the control plane's namespace named `comm` (kube-apiserver, etcd).
    pub fn control_plane_pid(&self, comm: &str) -> Option<u32> {
        let cp = self.cp.as_ref()?;
        run(&["ip", "netns", "pids", &cp.ns])
            .ok()?
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm))
    }

    /// Bytes the control plane's link sent and received (every byte between the API server and
    /// the agents crosses it; the bench's own requests stay on the namespace's loopback).
    pub fn link_bytes(&self) -> anyhow::Result<(u64, u64)> {
        let cp = self.cp()?;
        let out = run(&["ip", "-n", &cp.ns, "-s", "-j", "link", "show", "eth0"])?;
        let v: Value = serde_json::from_str(&out)?;
        let stats = &v[0]["stats64"];
        match (stats["tx"]["bytes"].as_u64(), stats["rx"]["bytes"].as_u64()) {
            (Some(tx), Some(rx)) => Ok((tx, rx)),
            _ => bail!("no byte counters for eth0 in {}", cp.ns),
        }
    }

    fn teardown(&mut self) {
        for a in &self.agents {
            let _ = netns::output(&["kill", "-TERM", &a.id().to_string()]);
        }
        for a in &mut self.agents {
            if !wait_for(Duration::from_secs(5), || {
                matches!(a.try_wait(), Ok(Some(_)))
            }) {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        self.agents.clear();
        if let Some(mut cp) = self.cp.take() {
            cp.stop();
        }
        netns::remove_prefixed(&self.prefix);
        if std::env::var_os("LIQONET_LAB_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A node's status as its kubelet reports it: the InternalIP and Ready, heartbeat now (a
/// different `message` makes a write within the same second a change too).
pub fn node_status(n: &Node, message: &str) -> anyhow::Result<Value> {
    let now = run(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])?
        .trim()
        .to_string();
    Ok(json!({"status": {
        "addresses": [{"type": "InternalIP", "address": n.ip}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }}))
}
