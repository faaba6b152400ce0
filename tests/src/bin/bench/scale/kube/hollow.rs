//! A hollow node's pod (as kubemark runs them): what a kubelet would do for one DaemonSet pod,
//! done by the bench for nodes that have no kubelet: the container's command,
//! arguments and environment read from the DaemonSet as the API server holds it (ConfigMap
//! `envFrom`, downward-API `fieldRef`s), the ServiceAccount token and CA at the in-cluster paths,
//! `hostPath` volumes at their mount paths, `KUBERNETES_SERVICE_HOST`/`PORT`; the process runs
//! on the node's network (hostNetwork) in a mount namespace of its own.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

/// In-cluster path of the ServiceAccount's token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Facts about the node and pod that the downward API exposes.
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub pod_name: &'a str,
    pub node_name: &'a str,
    pub node_ip: &'a str,
}

/// A container ready to start: everything read from the DaemonSet.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// (host path, mount path)
    pub host_paths: Vec<(String, String)>,
}

/// The DaemonSet's first container, rendered for one pod. `config_maps` resolves `envFrom`.
pub fn render(
    ds: &Value,
    facts: &PodFacts,
    config_map: impl Fn(&str) -> anyhow::Result<BTreeMap<String, String>>,
) -> anyhow::Result<PodSpec> {
    let spec = &ds["spec"]["template"]["spec"];
    let name = ds["metadata"]["name"].as_str().unwrap_or("?");
    let container = &spec["containers"][0];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut command = strings(&container["command"]);
    command.extend(strings(&container["args"]));
    if command.is_empty() {
        bail!("DaemonSet {name}: the container has no command");
    }
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(cm) = from["configMapRef"]["name"].as_str() {
            env.extend(config_map(cm)?);
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().context("env entry without a name")?;
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.namespace" => facts.namespace.to_string(),
                "metadata.name" => facts.pod_name.to_string(),
                "spec.nodeName" => facts.node_name.to_string(),
                // hostNetwork: the pod's IP is the node's.
                "status.hostIP" | "status.podIP" => facts.node_ip.to_string(),
                other => {
                    bail!("DaemonSet {name}: env {key}: fieldRef {other} is not known to the lab")
                }
            }
        } else {
            bail!("DaemonSet {name}: env {key}: only value and fieldRef are known to the lab");
        };
        env.insert(key.to_string(), value);
    }
    let mut host_paths = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(vol), Some(mount)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
            continue;
        };
        let volume = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some(vol))
            .with_context(|| format!("DaemonSet {name}: no volume {vol}"))?;
        let host = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("DaemonSet {name}: volume {vol} is not a hostPath"))?;
        host_paths.push((host.to_string(), mount.to_string()));
    }
    Ok(PodSpec {
        command,
        env,
        host_paths,
    })
}

/// Writes the ServiceAccount volume's files (token, ca.crt, namespace) into `dir`.
pub fn write_service_account(
    dir: &Path,
    token: &str,
    ca: &Path,
    namespace: &str,
) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("token"), token.trim())?;
    fs::copy(ca, dir.join("ca.crt"))?;
    fs::write(dir.join("namespace"), namespace)?;
    Ok(())
}

/// The command that starts `pod` in namespace `ns`: `ip netns exec` gives the process a mount
/// namespace of its own, where a fresh /run (so UAPI sockets and state stay the pod's), the
/// ServiceAccount files and the hostPath volumes are mounted before the container's command is
/// exec'd with exactly its environment. `binaries` holds the product's executables.
pub fn command(
    ns: &str,
    pod: &PodSpec,
    sa_dir: &Path,
    binaries: &Path,
    api: (&str, u16),
) -> anyhow::Result<Command> {
    let exe: PathBuf = binaries.join(&pod.command[0]);
    if !exe.exists() {
        bail!("{} is not built ({})", pod.command[0], exe.display());
    }
    let mut script = String::from(
        "set -e\nmount -t tmpfs -o mode=0755 pod-run /run\nmkdir -p /run/secrets/kubernetes.io/serviceaccount\n",
    );
    script.push_str(&format!(
        "mount --bind -o ro '{}' {SERVICE_ACCOUNT_DIR}\n",
        sa_dir.display()
    ));
    for (host, mount) in &pod.host_paths {
        if host != mount {
            // A mount point the node's root file system lacks (e.g. /host/proc/sys) is made
            // empty, as the container runtime makes it inside the image.
            script.push_str(&format!(
                "mkdir -p '{mount}'\nmount --rbind '{host}' '{mount}'\n"
            ));
        }
    }
    script.push_str("exec \"$@\"\n");
    let mut cmd = Command::new("ip");
    cmd.env_clear()
        .envs(&pod.env)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("KUBERNETES_SERVICE_HOST", api.0)
        .env("KUBERNETES_SERVICE_PORT", api.1.to_string())
        .args(["netns", "exec", ns, "sh", "-c", &script, "pod"])
        .arg(exe)
        .args(&pod.command[1..]);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemonset_renders_with_downward_api_and_config_maps() {
        let ds: Value = serde_json::json!({
            "metadata": {"name": "gw"},
            "spec": {"template": {"spec": {
                "serviceAccountName": "sa",
                "containers": [{
                    "command": ["liqonet-gateway", "run"], "args": ["--kubernetes"],
                    "envFrom": [{"configMapRef": {"name": "cm"}}],
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
                    ],
                    "volumeMounts": [{"name": "t", "mountPath": "/dev/net/tun"}]
                }],
                "volumes": [{"name": "t", "hostPath": {"path": "/dev/net/tun"}}]
            }}}
        });
        let facts = PodFacts {
            namespace: "liqonet",
            pod_name: "gw-n1",
            node_name: "n1",
            node_ip: "172.20.0.11",
        };
        let pod = render(&ds, &facts, |name| {
            assert_eq!(name, "cm");
            Ok([("B".to_string(), "2".to_string())].into())
        })
        .unwrap();
        assert_eq!(pod.command, ["liqonet-gateway", "run", "--kubernetes"]);
        assert_eq!(pod.env["A"], "1");
        assert_eq!(pod.env["B"], "2");
        assert_eq!(pod.env["NODE"], "n1");
        assert_eq!(pod.env["IP"], "172.20.0.11");
        assert_eq!(
            pod.host_paths,
            [("/dev/net/tun".into(), "/dev/net/tun".into())]
        );
    }
}
