//! What kube-proxy does for the gateway Service in the lab: its node port on every gateway node
//! leads to the replica that carries the tunnel (the leader, whose `/healthz` says
//! `ready: true`), wherever it runs, as the leader's EndpointSlice makes kube-proxy do with the
//! default external traffic policy: DNAT to the leader, masquerade when it is on another node.
//! It is probed every 250 ms; on every change the node port's conntrack entries are flushed, as
//! kube-proxy does for UDP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{ns_output, output};

/// A gateway node: its namespace and node IP.
#[derive(Debug, Clone)]
pub struct GatewayNode {
    pub ns: String,
    pub ip: String,
}

pub struct NodePort {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The node IP the port leads to now.
    pub active: Arc<Mutex<Option<String>>>,
}

/// Whether the replica at `addr` carries the tunnel: its `/healthz` answers 200 within 300 ms
/// and says `ready: true` (every healthy replica answers `/readyz`; the leader writes the
/// Service's EndpointSlice, which this stand-in does not read).
pub fn carries_tunnel(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(300)));
    if write!(s, "GET /healthz HTTP/1.0\r\nHost: lab\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = s.take(4096).read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    text.starts_with("HTTP/1.")
        && text.get(9..12) == Some("200")
        && text.contains("\nready: true\n")
}

fn rules(node: &GatewayNode, active: Option<&str>, node_port: u16, target: u16) -> String {
    let table = "table ip liqonet_lab_nodeport";
    let mut text = format!("{table} {{}}\ndelete {table}\n{table} {{\n");
    text.push_str("  chain pre { type nat hook prerouting priority dstnat; policy accept;\n");
    match active {
        Some(ip) if ip == node.ip => {
            text.push_str(&format!(
                "    udp dport {node_port} redirect to :{target}\n"
            ));
        }
        Some(ip) => {
            text.push_str(&format!(
                "    udp dport {node_port} dnat to {ip}:{target}\n"
            ));
        }
        None => {}
    }
    text.push_str(
        "  }\n  chain post { type nat hook postrouting priority srcnat; policy accept;\n",
    );
    if let Some(ip) = active.filter(|ip| *ip != node.ip) {
        text.push_str(&format!(
            "    ip daddr {ip} udp dport {target} ct status dnat masquerade\n"
        ));
    }
    text.push_str("  }\n}\n");
    text
}

fn apply(nodes: &[GatewayNode], active: Option<&str>, node_port: u16, target: u16) {
    use std::process::{Command, Stdio};
    for n in nodes {
        let text = rules(n, active, node_port, target);
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(text.as_bytes());
            }
            match child.wait_with_output() {
                Ok(o) if !o.status.success() => eprintln!(
                    "nodeport: nft in {}: {}",
                    n.ns,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                _ => {}
            }
        }
        for dir in ["--orig-port-dst", "--reply-port-src"] {
            let port = if dir == "--orig-port-dst" {
                node_port
            } else {
                target
            };
            let _ = ns_output(
                &n.ns,
                &["conntrack", "-D", "-p", "udp", dir, &port.to_string()],
            );
        }
    }
}

impl NodePort {
    /// Starts wiring `node_port` to `target` on the ready replica among `nodes`, probing their
    /// health port from inside `probe_ns` (a namespace on the node network).
    pub fn start(
        probe_ns: &str,
        nodes: Vec<GatewayNode>,
        node_port: u16,
        target: u16,
        health_port: u16,
    ) -> anyhow::Result<NodePort> {
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(Mutex::new(None));
        apply(&nodes, None, node_port, target);
        let netns = std::fs::File::open(format!("/run/netns/{probe_ns}"))?;
        let probe_ns = probe_ns.to_string();
        let (flag, shown) = (stop.clone(), active.clone());
        let thread = std::thread::Builder::new()
            .name("lab-nodeport".into())
            .spawn(move || {
                // This thread only probes; it lives in the node network's namespace.
                if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    eprintln!("nodeport: cannot enter {probe_ns}: {e}");
                    return;
                }
                let mut current: Option<String> = None;
                while !flag.load(Ordering::Relaxed) {
                    let now = nodes
                        .iter()
                        .find(|n| {
                            n.ip.parse()
                                .is_ok_and(|ip| carries_tunnel(SocketAddr::new(ip, health_port)))
                        })
                        .map(|n| n.ip.clone());
                    if now != current {
                        apply(&nodes, now.as_deref(), node_port, target);
                        *shown.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
                        current = now;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })?;
        Ok(NodePort {
            stop,
            thread: Some(thread),
            active,
        })
    }
}

impl Drop for NodePort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the `conntrack` tool is there (deps.sh installs it).
pub fn have_conntrack() -> bool {
    output(&["conntrack", "--version"]).is_ok_and(|o| o.status.success())
}
