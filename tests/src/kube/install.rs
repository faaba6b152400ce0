//! Installing liqonet into a lab cluster as a user does: deploy/ applied with kubectl (an
//! overlay setting the cluster ID), the peering identity that runs the peering CLI, and the test
//! pods.

use std::fs;
use std::path::{Path, PathBuf};

use super::controlplane::ControlPlane;
use super::lab::KubeCluster;

/// The namespace deploy/ installs into.
pub const NAMESPACE: &str = "liqonet";
pub const GATEWAY_DS: &str = "liqonet-gateway";
pub const AGENT_DS: &str = "liqonet-route-agent";
/// Every cluster numbers its pods from this CIDR.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// How a lab cluster gets liqonet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installer {
    /// `kubectl apply -k` of an overlay of deploy/.
    Kustomize,
    /// `helm install` of deploy/helm/liqonet, after labelling the namespace as NOTES.txt says.
    Helm,
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    deploy_dir().join("helm/liqonet")
}

/// liqonet installed on `c` with `how`, then the peering identity and the test pods.
pub fn install_with(c: &KubeCluster, dir: &Path, how: Installer) -> anyhow::Result<()> {
    match how {
        Installer::Kustomize => install(c, dir)?,
        Installer::Helm => {
            c.kubectl(&["create", "namespace", NAMESPACE])?;
            c.kubectl(&[
                "label",
                "namespace",
                NAMESPACE,
                "pod-security.kubernetes.io/enforce=privileged",
            ])?;
            let chart = fs::canonicalize(chart_dir())?;
            c.cp.helm(&[
                "install",
                "liqonet",
                chart.to_str().unwrap_or_default(),
                "--namespace",
                NAMESPACE,
                "--set",
                &format!("clusterID={}", c.name),
            ])?;
        }
    }
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/tunnelendpoints.net.liqo.io",
        "--timeout=60s",
    ])?;
    peering_identity(&c.cp)?;
    let pods = dir.join("test-pods.yaml");
    fs::write(&pods, test_pods(&c.name))?;
    c.kubectl(&["apply", "-f", pods.to_str().unwrap_or_default()])?;
    Ok(())
}

/// deploy/ with this cluster's settings, applied with kubectl as a user installs liqonet: an
/// overlay of deploy/ that sets the cluster ID in the ConfigMap (the user's edit of
/// base/config.yaml), so that the pods start with it.
fn install(c: &KubeCluster, dir: &Path) -> anyhow::Result<()> {
    let overlay = dir.join("install");
    fs::create_dir_all(&overlay)?;
    let deploy = fs::canonicalize(deploy_dir())?;
    fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\npatches:\n  - target: {{kind: ConfigMap, name: {GATEWAY_DS}}}\n    patch: |\n      - op: replace\n        path: /data/LIQONET_CLUSTER_ID\n        value: {}\n",
            relative(&overlay, &deploy).display(),
            c.name
        ),
    )?;
    c.kubectl(&["apply", "-k", overlay.to_str().unwrap_or_default()])?;
    Ok(())
}

/// The namespace of the test pods.
pub const TEST_NAMESPACE: &str = "liqonet-test";

/// A test pod on every node (a DaemonSet in `liqonet-test`, from the test image), serving
/// `hello from CLUSTER NODE pod IP` over HTTP on port 80 and iperf3; and the ClusterIP Service
/// `test` in front of them (port 80), which peers reach through the exported service CIDR.
fn test_pods(cluster: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {TEST_NAMESPACE}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: test
  namespace: {TEST_NAMESPACE}
spec:
  selector:
    matchLabels: {{app: test}}
  template:
    metadata:
      labels: {{app: test}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: test
          image: {image}:{version}
          imagePullPolicy: IfNotPresent
          command:
            - sh
            - -c
            - mkdir -p /tmp/www && echo "hello from {cluster} $NODE pod $POD_IP" > /tmp/www/index.html && httpd -p 80 -h /tmp/www && exec iperf3 -s
          env:
            - name: NODE
              valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
            - name: POD_IP
              valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: test
  namespace: {TEST_NAMESPACE}
spec:
  selector: {{app: test}}
  ports:
    - {{name: http, port: 80, protocol: TCP}}
"#,
        image = crate::image::TEST_REPOSITORY,
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// `to` as a path relative to `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    rel
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
    crate::netns::stdout_of(&format!("liqonet-gateway {}", args.join(" ")), out)
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
