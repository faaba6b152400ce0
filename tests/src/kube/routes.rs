//! What the route agents must have installed on every node of a lab cluster, and what they
//! have: the routes in the agent's table (2741) and its rules (priority 2741), as `ip` prints
//! them. Exact: nothing stale, nothing duplicated.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use crate::netns::ns_output;

/// A node as the checks need it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub ip: String,
    pub pod_cidr: String,
}

/// The routes in the agent's table and the agent's rules in `ns`, as `ip` prints them.
pub fn agent_state(ns: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let routes = ns_output(ns, &["ip", "route", "show", "table", "2741"])?;
    let rules = ns_output(ns, &["ip", "rule", "show", "priority", "2741"])?;
    let lines = |o: std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    Ok((lines(routes), lines(rules)))
}

/// What `node` must hold when `gateway` carries `networks` (the remapped prefixes). Workers (and
/// the idle gateway node) route the networks to the gateway's overlay address; the gateway node
/// sends return traffic to every other node's pods through the overlay.
pub fn expected(
    nodes: &[NodeView],
    node: &str,
    gateway: Option<&str>,
    networks: &[String],
) -> (Vec<String>, Vec<String>) {
    let Some(gw) = gateway else {
        return (Vec::new(), Vec::new());
    };
    let (mut routes, mut rules): (Vec<String>, Vec<String>) = if node == gw {
        (
            nodes
                .iter()
                .filter(|n| n.name != gw)
                .map(|n| format!("{} via {} dev liqo.vxlan", n.pod_cidr, overlay_ip(&n.ip)))
                .collect(),
            networks
                .iter()
                .map(|r| format!("from {r} lookup 2741"))
                .collect(),
        )
    } else {
        let via = nodes
            .iter()
            .find(|n| n.name == gw)
            .map(|n| overlay_ip(&n.ip))
            .unwrap_or_default();
        (
            networks
                .iter()
                .map(|r| format!("{r} via {via} dev liqo.vxlan"))
                .collect(),
            networks
                .iter()
                .map(|r| format!("from all to {r} lookup 2741"))
                .collect(),
        )
    };
    routes.sort();
    rules.sort();
    (routes, rules)
}

/// What `ns` holds, normalised like [`expected`].
fn actual(ns: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (routes, rules) = agent_state(ns)?;
    let clean = |l: &String| {
        l.trim_start_matches("2741:")
            .trim()
            .trim_end_matches("proto 202")
            .trim()
            .to_string()
    };
    let mut routes: Vec<String> = routes.iter().map(clean).collect();
    let mut rules: Vec<String> = rules.iter().map(clean).collect();
    routes.sort();
    rules.sort();
    Ok((routes, rules))
}

/// The gateway node and remapped networks a cluster carries, from its TunnelEndpoints' status
/// (`kubectl get tep -o json`; the Connected and Connecting ones).
pub fn carried(list: &Value) -> (Option<String>, Vec<String>) {
    let mut gateway = None;
    let mut networks = Vec::new();
    for t in list["items"].as_array().into_iter().flatten() {
        let phase = t["status"]["phase"].as_str().unwrap_or_default();
        if !(phase == "Connected" || phase == "Connecting")
            || !t["metadata"]["deletionTimestamp"].is_null()
        {
            continue;
        }
        gateway = t["status"]["gateway"]["nodeName"]
            .as_str()
            .map(String::from);
        for n in t["status"]["networks"].as_array().into_iter().flatten() {
            if let Some(r) = n["remapped"].as_str() {
                networks.push(r.to_string());
            }
        }
    }
    (gateway, networks)
}

/// Every node holds exactly what `gateway` carrying `networks` needs. The error lists each node
/// of `cluster` that differs.
pub fn check(
    cluster: &str,
    nodes: &[NodeView],
    gateway: Option<&str>,
    networks: &[String],
) -> Result<(), String> {
    let mut bad = Vec::new();
    for n in nodes {
        let want = expected(nodes, &n.name, gateway, networks);
        match actual(&n.ns) {
            Ok(have) if have == want => {}
            Ok(have) => bad.push(format!(
                "{cluster}/{}: have {have:?}, want {want:?}",
                n.name
            )),
            Err(e) => bad.push(format!("{cluster}/{}: {e}", n.name)),
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

/// Waits until [`check`] holds; returns how long that took.
pub fn wait(
    cluster: &str,
    nodes: &[NodeView],
    gateway: Option<&str>,
    networks: &[String],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        match check(cluster, nodes, gateway, networks) {
            Ok(()) => return Ok(t0.elapsed()),
            Err(e) if t0.elapsed() > timeout => {
                bail!("routes not as desired after {timeout:?}:\n{e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A node's overlay address: the agent's default overlay CIDR 10.80.0.0/12 plus the host bits
/// of its node IP (172.20.0.11 → 10.84.0.11).
pub fn overlay_ip(node_ip: &str) -> String {
    let o: Vec<u8> = node_ip.split('.').filter_map(|x| x.parse().ok()).collect();
    match o.as_slice() {
        [_, b, c, d] => format!("10.{}.{c}.{d}", 80 + (b & 15)),
        _ => String::new(),
    }
}
