//! A real lab node: a network, mount and UTS namespace running its own containerd (with runc and
//! the CNI plugins), kubelet and kube-proxy, all built from the lab's pinned Go modules.
//!
//! The node's mount namespace has its own `/run`, `/var/lib` (kubelet, containerd and CNI state,
//! on disk in the lab directory) and `/var/log`, so hostPaths such as `/var/run/wireguard` never
//! alias between nodes. The kubelet writes a few host-wide sysctls; files holding the values it
//! wants are bound over them in the node's namespace, so the host's stay as they are. Everything
//! the node runs (containerd, its shims, the pods' containers, the kubelet, kube-proxy) lives in
//! the node's cgroup, in every cgroup v1 hierarchy, and is killed by it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::controlplane::ControlPlane;
use crate::netns::wait_for;

/// The v1 hierarchies a node's cgroup is made in (the kubelet with the cgroupfs driver needs
/// its root in each).
const HIERARCHIES: [&str; 9] = [
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
];
/// Where the lab's node cgroups live in each hierarchy.
pub const CGROUP_PARENT: &str = "liqonet-lab";

/// The sysctls the kubelet sets on its host, with the values it wants.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// What a node is.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Its network namespace (made by the lab, with the node's addresses).
    pub ns: String,
    pub ip: String,
    /// The lab's unique name for this node (the cgroup's name).
    pub id: String,
    /// Its directory in the lab: configs, credentials, state, logs.
    pub dir: PathBuf,
}

/// A running node.
pub struct RealNode {
    pub spec: NodeSpec,
    child: Option<Child>,
}

impl RealNode {
    /// Starts containerd, imports `images` (OCI archives) into it, then starts the kubelet and
    /// kube-proxy against `cp`.
    pub fn start(spec: NodeSpec, cp: &ControlPlane, images: &[PathBuf]) -> anyhow::Result<Self> {
        let bin = super::controlplane::binaries()?;
        for d in [
            "kubelet",
            "containerd",
            "pods",
            "cni",
            "sysctl/vm",
            "sysctl/kernel/keys",
        ] {
            fs::create_dir_all(spec.dir.join(d))?;
        }
        for (key, value) in KUBELET_SYSCTLS {
            fs::write(spec.dir.join("sysctl").join(key), format!("{value}\n"))?;
        }
        cp.node_credentials(&spec.name, &spec.ip, &spec.dir)?;
        fs::write(
            spec.dir.join("containerd.toml"),
            containerd_config(&bin, &spec),
        )?;
        fs::write(spec.dir.join("kubelet.yaml"), kubelet_config(&spec, cp))?;
        fs::write(spec.dir.join("kube-proxy.yaml"), kube_proxy_config(&spec))?;
        fs::write(spec.dir.join("node.sh"), node_script(&bin, &spec, images))?;
        let cgroup = make_cgroup(&spec.id)?;
        let log = fs::File::create(spec.dir.join("node.log"))?;
        // The node's own mount and UTS namespaces, in its network namespace. `ip netns exec`
        // would remount /sys and hide the cgroup tree.
        let child = Command::new("unshare")
            .args(["--mount", "--uts", "--propagation", "slave", "--"])
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", spec.ns))
            .args(["--", "bash"])
            .arg(spec.dir.join("node.sh"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the node")?;
        let node = RealNode {
            spec,
            child: Some(child),
        };
        cgroup_enter(&cgroup, node.pid())?;
        let ready = node.spec.dir.join("started");
        if !wait_for(Duration::from_secs(120), || ready.exists()) {
            bail!(
                "node {} did not start; its log:\n{}",
                node.spec.name,
                node.log_tail("node")
            );
        }
        Ok(node)
    }

    /// Runs `args` on the node (its network, mount and UTS namespaces), as a shell on the node
    /// would: `wg show`, `ip route`, the node's own files under /run.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let pid = self.pid().to_string();
        let mut v = vec!["nsenter", "-t", &pid, "-m", "-n", "-u", "--"];
        v.extend_from_slice(args);
        crate::netns::run(&v)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Writes the pod network's CNI config (the bridge with host-local addresses from the node's
    /// pod CIDR); containerd picks it up, and the node becomes Ready.
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> anyhow::Result<()> {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "lab",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        let tmp = self.spec.dir.join("cni/.10-lab.conflist");
        fs::write(&tmp, serde_json::to_vec_pretty(&conf)?)?;
        fs::rename(&tmp, self.spec.dir.join("cni/10-lab.conflist"))?;
        Ok(())
    }

    /// The last lines of the node's `what` log (node, containerd, kubelet, kube-proxy).
    pub fn log_tail(&self, what: &str) -> String {
        let text =
            fs::read_to_string(self.spec.dir.join(format!("{what}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills everything the node runs at once, as a crash would: containerd, its shims, every
    /// container, the kubelet and kube-proxy.
    pub fn crash(&mut self) {
        kill_cgroup(&self.spec.id);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node and removes its cgroup.
    pub fn stop(&mut self) {
        self.crash();
        remove_cgroup(&self.spec.id);
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Versions of the node components, one per line (`kubelet v1.36.3`, …).
pub fn versions() -> anyhow::Result<String> {
    let bin = super::controlplane::binaries()?;
    let first = |args: &[&str]| -> String {
        Command::new(bin.join(args[0]))
            .args(&args[1..])
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_else(|e| format!("{}: {e}", args[0]))
    };
    Ok([
        first(&["kubelet", "--version"]),
        first(&["kube-proxy", "--version"]),
        first(&["kube-scheduler", "--version"]),
        first(&["kube-controller-manager", "--version"]),
        first(&["containerd", "--version"]),
        first(&["runc", "--version"]),
        first(&["cni/bridge", "--version"]),
    ]
    .join("\n"))
}

fn containerd_config(bin: &Path, spec: &NodeSpec) -> String {
    let pause = fs::read_to_string(bin.join("pause/tag")).unwrap_or_default();
    format!(
        r#"version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:{pause}"

[plugins."io.containerd.cri.v1.runtime"]
  # root here may not lower oom_score_adj (no CAP_SYS_RESOURCE): containers get at least
  # containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni}"]
    conf_dir = "{conf}"
"#,
        pause = pause.trim(),
        runc = bin.join("runc").display(),
        cni = bin.join("cni").display(),
        conf = spec.dir.join("cni").display(),
    )
}

fn kubelet_config(spec: &NodeSpec, cp: &ControlPlane) -> String {
    let d = |f: &str| spec.dir.join(f).display().to_string();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host has cgroup v1 (hybrid) and no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_PARENT}/{id}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: {crt}
tlsPrivateKeyFile: {key}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
clusterDomain: cluster.local
failSwapOn: false
# Images are imported, never pulled: none may ever be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
serializeImagePulls: false
"#,
        id = spec.id,
        ip = spec.ip,
        crt = d("kubelet.crt"),
        key = d("kubelet.key"),
        ca = cp.dir.join("ca.crt").display(),
    )
}

fn kube_proxy_config(spec: &NodeSpec) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: {name}
clusterCIDR: 10.244.0.0/16
clientConnection:
  kubeconfig: {kubeconfig}
# Node ports on the node network and on the WAN (a gateway node's ExternalIP).
nodePortAddresses: ["172.20.0.0/24", "192.168.250.0/24"]
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Conntrack's sysctls are read-only in a network namespace: leave them.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        name = spec.name,
        kubeconfig = spec.dir.join("kube-proxy.kubeconfig").display(),
    )
}

/// The script the node runs in its own namespaces: private directories, then containerd, the
/// images, the kubelet and kube-proxy; it ends when any of them does. The kubelet's container
/// statistics are gathered every 30 s instead of 10 s: six idle kubelets on two cores otherwise
/// take a tenth of a CPU between them, and nothing in the lab reads those statistics.
fn node_script(bin: &Path, spec: &NodeSpec, images: &[PathBuf]) -> String {
    let dir = spec.dir.display();
    let b = bin.display();
    let mut sysctls = String::new();
    for (key, _) in KUBELET_SYSCTLS {
        sysctls += &format!("mount --bind {dir}/sysctl/{key} /proc/sys/{key}\n");
    }
    let mut imports = String::new();
    for image in images {
        imports += &format!(
            "{b}/ctr --address /run/containerd/containerd.sock -n k8s.io images import --no-unpack=false {} >/dev/null\n",
            image.display()
        );
    }
    format!(
        r#"set -euo pipefail
export PATH={b}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
hostname {name}
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /var/lib
mkdir -p /var/lib/kubelet /var/lib/containerd /var/lib/cni
mount --bind {dir}/kubelet /var/lib/kubelet
mount --bind {dir}/containerd /var/lib/containerd
mount -t tmpfs -o mode=755 tmpfs /var/log
mkdir -p /var/log/pods /var/log/containers
mount --bind {dir}/pods /var/log/pods
{sysctls}
containerd --config {dir}/containerd.toml > {dir}/containerd.log 2>&1 &
for _ in $(seq 300); do [[ -S /run/containerd/containerd.sock ]] && break; sleep 0.1; done
{imports}
kubelet --config {dir}/kubelet.yaml --kubeconfig {dir}/kubelet.kubeconfig \
  --hostname-override {name} --node-ip {ip} --cloud-provider external --v 1 \
  --housekeeping-interval 30s \
  > {dir}/kubelet.log 2>&1 &
kube-proxy --config {dir}/kube-proxy.yaml --v 1 > {dir}/kube-proxy.log 2>&1 &
touch {dir}/started
wait -n
echo "a node component ended: $(jobs -l)"
"#,
        name = spec.name,
        ip = spec.ip,
    )
}

fn cgroup_dir(hierarchy: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(hierarchy)
        .join(CGROUP_PARENT)
        .join(id)
}

/// The node's cgroup in every hierarchy; cpuset's need cpus and mems before anything joins.
fn make_cgroup(id: &str) -> anyhow::Result<String> {
    for h in HIERARCHIES {
        let dir = cgroup_dir(h, id);
        fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        if h == "cpuset" {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let root = fs::read_to_string(Path::new("/sys/fs/cgroup/cpuset").join(f))?;
                for d in [dir.parent().unwrap_or(&dir), &dir] {
                    if fs::read_to_string(d.join(f))?.trim().is_empty() {
                        fs::write(d.join(f), root.trim())?;
                    }
                }
            }
        }
    }
    Ok(id.to_string())
}

fn cgroup_enter(id: &str, pid: u32) -> anyhow::Result<()> {
    for h in HIERARCHIES {
        fs::write(cgroup_dir(h, id).join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("cannot move the node into its {h} cgroup"))?;
    }
    Ok(())
}

/// A cgroup directory and every one below it, parents first.
fn walk(root: PathBuf) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(dir);
    }
    dirs
}

fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Every process in the node's cgroup and below it (the pods' cgroups), from the freezer's view.
pub fn cgroup_pids(id: &str) -> Vec<u32> {
    walk(cgroup_dir("freezer", id))
        .iter()
        .flat_map(|d| procs(d))
        .collect()
}

/// The processes of the node's cgroups whose path contains `marker` (`pod<uid>`: a pod's).
pub fn cgroup_pids_under(id: &str, marker: &str) -> Vec<u32> {
    walk(cgroup_dir("freezer", id))
        .iter()
        .filter(|d| d.to_string_lossy().contains(marker))
        .flat_map(|d| procs(d))
        .collect()
}

/// CPU time used so far by everything the node runs (cpuacct), and its resident memory
/// (memory.stat's total_rss: anonymous memory, without the page cache).
pub fn cgroup_usage(id: &str) -> (Duration, u64) {
    let cpu = fs::read_to_string(cgroup_dir("cpuacct", id).join("cpuacct.usage"))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos);
    let rss = fs::read_to_string(cgroup_dir("memory", id).join("memory.stat"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("total_rss ")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}

/// Freezes the node's cgroup (nothing forks away), kills every process in it, thaws it.
fn kill_cgroup(id: &str) {
    let freezer = cgroup_dir("freezer", id).join("freezer.state");
    let _ = fs::write(&freezer, "FROZEN");
    for _ in 0..50 {
        let pids = cgroup_pids(id);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = fs::write(&freezer, "THAWED");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the node's cgroups, deepest first, in every hierarchy: the v1 ones the node was
/// put in, and the v2 one (`unified`, on a hybrid host) where the kubelet and runc make the
/// pods' cgroups as well.
fn remove_cgroup(id: &str) {
    for h in HIERARCHIES.iter().chain(&["unified"]) {
        for dir in walk(cgroup_dir(h, id)).iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Removes node cgroups whose lab is gone (a killed test process): `<prefix>…` names carry the
/// lab's pid as `lq<pid>x`.
pub fn sweep_stale_cgroups() {
    let entries = ["freezer", "unified"]
        .iter()
        .filter_map(|h| fs::read_dir(Path::new("/sys/fs/cgroup").join(h).join(CGROUP_PARENT)).ok())
        .flatten();
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let pid = id
            .strip_prefix("lq")
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            kill_cgroup(&id);
            remove_cgroup(&id);
        }
    }
}
