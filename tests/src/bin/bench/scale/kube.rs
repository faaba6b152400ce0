//! `scale kube`: 50 lab nodes, each running the route agent in Kubernetes mode against one real
//! API server (kube-apiserver and etcd of the Kubernetes lab). Each round writes a
//! TunnelEndpoint's status as the gateway leader does (a new remote network, or the gateway
//! moving to another node) and times it until every node's kernel holds exactly the routes and
//! rules that status calls for. Beside it, what the agents' watches cost: open watches, requests,
//! bytes on the API server's link, watch events, CPU time.
//!
//! `LIQONET_SCALE_NODES` (default 50) and `LIQONET_SCALE_ROUNDS` (default 10) change the size.

mod api;
mod fleet;
mod hollow;
mod rtnl;
mod traffic;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Context;
use liqonet_lab::kube::controlplane::versions;
use liqonet_lab::kube::install::{NAMESPACE, POD_CIDR};
use serde_json::{json, Value};

use self::fleet::{node_status, Fleet, TEP};
use self::rtnl::State;
use self::traffic::{rss_kib, Snapshot};
use super::Figure;

/// The agent's table, and its rules' priority (the defaults).
const TABLE: u32 = 2741;
const TARGET: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(120);
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// Between rounds: the last round's stragglers (a node's periodic pass) are over.
const SETTLE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(20);
const HEARTBEATS: usize = 20;

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// What the TunnelEndpoint's status says: the gateway node (an index into the fleet's nodes)
/// and the remapped networks it carries.
#[derive(Clone)]
struct Carried {
    gateway: usize,
    networks: Vec<String>,
}

impl Carried {
    fn status(&self, fleet: &Fleet) -> Value {
        let gw = &fleet.nodes[self.gateway];
        let networks: Vec<Value> = self
            .networks
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // The first is the foreign pod CIDR; the others stand for further exported ones.
                let cidr = if i == 0 {
                    POD_CIDR.to_string()
                } else {
                    r.replacen("10.", "192.", 1)
                };
                json!({"cidr": cidr, "remapped": r})
            })
            .collect();
        json!({"status": {"phase": "Connected", "gateway": {"nodeName": gw.name, "nodeIP": gw.ip},
            "networks": networks}})
    }

    /// What node `i` must hold: on the gateway node, return routes to every other node's pods
    /// and `from` rules; elsewhere the networks via the gateway's overlay address and `to` rules.
    fn expected(&self, fleet: &Fleet, i: usize) -> State {
        let mut s = State::default();
        if i == self.gateway {
            for (_, n) in fleet.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                s.routes
                    .insert(format!("{} via {}", n.pod_cidr, n.overlay_ip()));
            }
            s.rules
                .extend(self.networks.iter().map(|r| format!("from {r}")));
        } else {
            let via = fleet.nodes[self.gateway].overlay_ip();
            s.routes
                .extend(self.networks.iter().map(|r| format!("{r} via {via}")));
            s.rules
                .extend(self.networks.iter().map(|r| format!("to {r}")));
        }
        s
    }

    fn all_expected(&self, fleet: &Fleet) -> Vec<(String, State)> {
        (0..fleet.nodes.len())
            .map(|i| (fleet.nodes[i].name.clone(), self.expected(fleet, i)))
            .collect()
    }
}

/// Per node (name and wanted state), how long after `act` (the write, run once every node's
/// watcher is waiting) its kernel first held that state.
fn converge(
    nodes: &mut [rtnl::Node],
    wants: &[(String, State)],
    timeout: Duration,
    act: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    for n in nodes.iter_mut() {
        n.drain();
    }
    let ready = Barrier::new(nodes.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter_mut()
            .zip(wants)
            .map(|(n, (_, want))| {
                let ready = &ready;
                s.spawn(move || {
                    ready.wait();
                    n.wait_for(TABLE, want, timeout)
                })
            })
            .collect();
        ready.wait();
        let t0 = Instant::now();
        act()?;
        let mut took = Vec::new();
        let mut late = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(at)) => took.push(at.saturating_duration_since(t0)),
                Ok(Err(e)) => late.push(format!("{}: {e:#}", wants[i].0)),
                Err(_) => late.push(format!("{}: the watcher panicked", wants[i].0)),
            }
        }
        if !late.is_empty() {
            anyhow::bail!("nodes that did not converge:\n{}", late.join("\n"));
        }
        Ok(took)
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn kib(bytes: f64) -> String {
    if bytes < 1024.0 {
        format!("{bytes:.0} B")
    } else if bytes >= 10.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

fn info(what: &str, value: String) -> Figure {
    Figure::new(what, value, "-", true)
}

/// One kind of TunnelEndpoint change, timed over its rounds.
struct Kind {
    name: &'static str,
    took: Vec<Duration>,
}

pub fn run() -> anyhow::Result<Vec<Figure>> {
    let n = env_or("LIQONET_SCALE_NODES", 50);
    let rounds = env_or("LIQONET_SCALE_ROUNDS", 10);
    println!("control plane: {}", versions()?);
    let mut fleet = Fleet::start(n)?;
    let mut watchers = fleet
        .nodes
        .iter()
        .map(|node| rtnl::Node::open(&node.ns))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut carried = Carried {
        gateway: 0,
        networks: vec!["10.245.0.0/16".into()],
    };
    let teps = format!("/apis/net.liqo.io/v1alpha1/namespaces/{NAMESPACE}/tunnelendpoints");
    fleet.create(
        &teps,
        &json!({"apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpoint",
            "metadata": {"name": TEP, "namespace": NAMESPACE},
            "spec": {"clusterID": TEP, "publicKey": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                "networks": [{"cidr": POD_CIDR, "remapped": "auto"}]}}),
    )?;
    let status_path = format!("{teps}/{TEP}/status");
    fleet.patch(&status_path, &carried.status(&fleet))?;
    println!(
        "{n} nodes registered; TunnelEndpoint {TEP} carried by {}",
        fleet.nodes[0].name
    );

    // Start: every agent lists and watches, then routes its node.
    let before_start = Snapshot::take(&fleet)?;
    let wants = carried.all_expected(&fleet);
    let pods = fleet.agent_pods()?;
    let start = converge(&mut watchers, &wants, START_TIMEOUT, || {
        fleet.start_agents(pods)
    })
    .map_err(|e| {
        let dead = fleet.dead_agents();
        e.context(format!("agents that exited: {dead:?}"))
    })?;
    let start_all = start.iter().max().copied().unwrap_or_default();
    println!(
        "start: {n} agents started and every node routed in {}",
        ms(start_all)
    );
    // Until every agent's watches are open (the initial lists are done once routes are in).
    std::thread::sleep(SETTLE);
    let started = Snapshot::take(&fleet)?;

    // Idle: the watches open, nothing changing.
    std::thread::sleep(IDLE);
    let idle = Snapshot::take(&fleet)?;
    let idle_secs = idle.at.duration_since(started.at).as_secs_f64();

    // Rounds: alternately a new remote network and the gateway moving between the first two nodes.
    let mut kinds = [
        Kind {
            name: "a new remote network",
            took: Vec::new(),
        },
        Kind {
            name: "the gateway node moves",
            took: Vec::new(),
        },
    ];
    let mut writes = Vec::new();
    let before_rounds = Snapshot::take(&fleet)?;
    for r in 0..rounds {
        let k = r % 2;
        if k == 0 {
            carried.networks.push(format!("10.{}.0.0/16", 100 + r / 2));
        } else {
            carried.gateway = 1 - carried.gateway;
        }
        let status = carried.status(&fleet).to_string();
        let mut write = Duration::ZERO;
        let wants = carried.all_expected(&fleet);
        let mut conn = api::Conn::open(fleet.cp()?)?;
        let took = converge(&mut watchers, &wants, ROUND_TIMEOUT, || {
            write = conn.patch(&status_path, &status)?.1;
            Ok(())
        })
        .with_context(|| format!("round {} ({})", r + 1, kinds[k].name))?;
        let all = took.iter().max().copied().unwrap_or_default();
        println!(
            "  round {:>2}: {:<24} all {n} nodes in {:>7} (first {:>6}, median {:>6}; the API's answer after {})",
            r + 1,
            kinds[k].name,
            ms(all),
            ms(took.iter().min().copied().unwrap_or_default()),
            ms(median(&took)),
            ms(write)
        );
        kinds[k].took.push(all);
        writes.push(write);
        std::thread::sleep(SETTLE);
    }
    let after_rounds = Snapshot::take(&fleet)?;

    // Node heartbeats: each status write reaches every agent's Node watch.
    for h in 0..HEARTBEATS {
        let node = &fleet.nodes[h % n];
        let status = node_status(node, &format!("heartbeat {h}"))?;
        fleet.patch(&format!("/api/v1/nodes/{}/status", node.name), &status)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(SETTLE);
    let after_heartbeats = Snapshot::take(&fleet)?;
    let dead = fleet.dead_agents();
    if !dead.is_empty() {
        anyhow::bail!("agents exited during the bench: {dead:?}");
    }
    let rss: Vec<u64> = fleet.agent_pids().into_iter().filter_map(rss_kib).collect();

    // Figures.
    let mut figures = Vec::new();
    for k in &kinds {
        if k.took.is_empty() {
            continue;
        }
        let max = k.took.iter().max().copied().unwrap_or_default();
        let med = median(&k.took);
        figures.push(Figure::new(
            &format!(
                "{}: all {n} nodes routed, median of {}",
                k.name,
                k.took.len()
            ),
            ms(med),
            "< 1 s",
            med < TARGET,
        ));
        figures.push(Figure::new(
            &format!("{}: all {n} nodes routed, max", k.name),
            ms(max),
            "< 1 s",
            max < TARGET,
        ));
    }
    figures.push(info(
        &format!("start: {n} agents list, watch and route their nodes"),
        ms(start_all),
    ));
    let (teps_open, nodes_open) = (idle.watching("tunnelendpoints"), idle.watching("nodes"));
    let (teps_base, nodes_base) = (
        before_start.watching("tunnelendpoints"),
        before_start.watching("nodes"),
    );
    let (tw, nw) = (teps_open - teps_base, nodes_open - nodes_base);
    println!(
        "open watches before the agents: {teps_base:.0} on TunnelEndpoints, {nodes_base:.0} on Nodes"
    );
    figures.push(Figure::new(
        "watches the agents hold (TunnelEndpoints + Nodes)",
        format!("{tw:.0} + {nw:.0}"),
        &format!("{n} + {n}"),
        tw == n as f64 && nw == n as f64,
    ));
    let start_lists = started.requests_since(&before_start, &["LIST", "GET"]);
    figures.push(info(
        "start: LIST/GET requests (TunnelEndpoints, Nodes)",
        format!("{start_lists:.0}"),
    ));
    figures.push(info(
        "start: bytes API server → agents",
        kib(started.tx.saturating_sub(before_start.tx) as f64),
    ));
    let changes = rounds as f64;
    let again = after_rounds.requests_since(&before_rounds, &["LIST", "GET", "WATCH"]);
    figures.push(Figure::new(
        "requests per TEP change besides the watch streams",
        format!("{:.1}", again / changes),
        "0",
        again == 0.0,
    ));
    let idle_tx = idle.tx.saturating_sub(started.tx) as f64 / idle_secs;
    figures.push(info(
        "idle: bytes API server → agents, per second",
        kib(idle_tx),
    ));
    let window = after_rounds
        .at
        .duration_since(before_rounds.at)
        .as_secs_f64();
    let rounds_tx = after_rounds.tx.saturating_sub(before_rounds.tx) as f64 - idle_tx * window;
    let rounds_rx = after_rounds.rx.saturating_sub(before_rounds.rx) as f64;
    figures.push(info(
        &format!("bytes API server → agents per TEP change (all {n})"),
        kib(rounds_tx / changes),
    ));
    figures.push(info(
        "bytes agents → API server per TEP change (acks, incl. idle)",
        kib(rounds_rx / changes),
    ));
    let events = (after_rounds.watch_events - before_rounds.watch_events) / changes;
    let event_bytes = (after_rounds.watch_event_bytes - before_rounds.watch_event_bytes) / changes;
    figures.push(info(
        "watch events per TEP change (their JSON bytes)",
        format!("{events:.0} ({})", kib(event_bytes)),
    ));
    let hb_window = after_heartbeats
        .at
        .duration_since(after_rounds.at)
        .as_secs_f64();
    let hb_tx = after_heartbeats.tx.saturating_sub(after_rounds.tx) as f64 - idle_tx * hb_window;
    let hb_events = (after_heartbeats.watch_events - after_rounds.watch_events) / HEARTBEATS as f64;
    figures.push(info(
        "bytes API server → agents per Node status write",
        format!("{} ({hb_events:.0} events)", kib(hb_tx / HEARTBEATS as f64)),
    ));
    let cpu_ms = |ns: u64| ns as f64 / 1e6;
    let idle_cpu = cpu_ms(idle.agents_cpu.saturating_sub(started.agents_cpu)) / idle_secs;
    figures.push(info(
        &format!("idle: agents' CPU (all {n}), per second"),
        format!("{idle_cpu:.1} ms"),
    ));
    let round_cpu = (cpu_ms(
        after_rounds
            .agents_cpu
            .saturating_sub(before_rounds.agents_cpu),
    ) - idle_cpu * window)
        / changes;
    figures.push(info(
        &format!("agents' CPU per TEP change (all {n})"),
        format!("{round_cpu:.1} ms"),
    ));
    let hb_cpu = (cpu_ms(
        after_heartbeats
            .agents_cpu
            .saturating_sub(after_rounds.agents_cpu),
    ) - idle_cpu * hb_window)
        / HEARTBEATS as f64;
    figures.push(info(
        &format!("agents' CPU per Node status write (all {n})"),
        format!("{hb_cpu:.1} ms"),
    ));
    figures.push(info(
        &format!("agents' CPU, whole run (all {n})"),
        format!("{:.2} s", cpu_ms(after_heartbeats.agents_cpu) / 1000.0),
    ));
    let per_change = |f: fn(&Snapshot) -> u64| {
        cpu_ms(f(&after_rounds).saturating_sub(f(&before_rounds))) / changes
    };
    figures.push(info(
        "kube-apiserver + etcd CPU per TEP change (incl. idle)",
        format!(
            "{:.0} + {:.0} ms",
            per_change(|s| s.apiserver_cpu),
            per_change(|s| s.etcd_cpu)
        ),
    ));
    if let Some(max) = rss.iter().max() {
        figures.push(info(
            "agent memory (RSS, largest of all)",
            format!("{:.1} MiB", *max as f64 / 1024.0),
        ));
    }
    let wmax = writes.iter().max().copied().unwrap_or_default();
    println!(
        "the API server answered the status writes after: median {}, max {}",
        ms(median(&writes)),
        ms(wmax)
    );
    Ok(figures)
}
