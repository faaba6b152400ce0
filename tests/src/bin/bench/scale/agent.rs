//! `liqonet-bench scale agent`: the real route agent (the build's binary) on a node namespace
//! of its own, given 1 000 remote networks (100 peers × 10, a tenth of them IPv6), in `vxlan`
//! and `direct` mode. Timed until the kernel holds exactly what the configuration wants, read
//! with netlink dumps every few milliseconds (the kernel is the ground truth, not the agent's
//! report): from its start, from a SIGHUP with networks swapped, and from a SIGHUP moving the
//! gateway node (every route re-pointed). Beside each, the agent's CPU time until it is idle
//! again (the pass its own changes set off included).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use liqonet_lab::agent_scale::{expected, many_networks, AgentState, Route};
use liqonet_lab::lab::add_ns;
use liqonet_lab::netns::{self, sh};
use liqonet_lab::procfs::sched_time;
use liqonet_lab::{Lab, LabSpec, Underlay};
use liqonet_proto::Cidr;

use super::Figure;

const PEERS: u16 = 100;
const PER_PEER: u16 = 10;
/// Networks swapped by the reload: the first peers' out, as many new peers' in.
const SWAPPED_PEERS: u16 = 10;
const TABLE: u32 = 2741;
/// The target for each figure.
const TARGET: Duration = Duration::from_secs(1);
/// Past this, the run is broken rather than slow.
const GIVE_UP: Duration = Duration::from_secs(60);
/// This node, w1, and the two nodes the gateway is on in turn.
const NODES: &str = "nodes:
  - {name: gw, ip: 172.20.0.10, podCIDR: 10.244.0.0/24, ip6: 'fd00:172:20::10'}
  - {name: w1, ip: 172.20.0.11, podCIDR: 10.244.1.0/24, ip6: 'fd00:172:20::11'}
  - {name: w2, ip: 172.20.0.12, podCIDR: 10.244.2.0/24, ip6: 'fd00:172:20::12'}
";

pub fn run() -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for mode in ["vxlan", "direct"] {
        figures.extend(measure(mode).with_context(|| format!("{mode} mode"))?);
    }
    Ok(figures)
}

/// The agent's configuration on w1.
fn config(mode: &str, gateway: &str, nets: &[Cidr]) -> String {
    let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
    // A periodic pass would only add noise to the timings.
    format!(
        "nodeName: w1\nmode: {mode}\ngatewayNode: {gateway}\nreconcileSeconds: 3600\nremoteNetworks: [{}]\n{NODES}",
        nets.join(", ")
    )
}

/// One episode: the time until the kernel held what was wanted, the agent's CPU time until it
/// was idle again, and the most networks wanted before and after that were seen without a route
/// meanwhile (their traffic would have followed the main table: a route replaced in place
/// leaves none).
struct Episode {
    took: Duration,
    cpu: Duration,
    unrouted: usize,
}

impl Episode {
    fn figure(&self, what: &str) -> Figure {
        Figure::new(
            what,
            format!(
                "{} ms, {} ms CPU",
                self.took.as_millis(),
                self.cpu.as_millis()
            ),
            "< 1 s",
            self.took < TARGET,
        )
    }
}

/// The agent on its node, and the kernel's view of its state there.
struct Bench {
    lab: Lab,
    state: AgentState,
    path: PathBuf,
    pid: u32,
}

const AGENT: &str = "agent";

impl Bench {
    fn start(mode: &str, text: &str) -> anyhow::Result<(Bench, Episode)> {
        // A lab without clusters: its namespace prefix, process and teardown handling.
        let mut lab = Lab::start(&LabSpec {
            clusters: Vec::new(),
            underlay: Underlay::V4,
        })?;
        let ns = format!("{}w1", lab.prefix);
        add_ns(&ns)?;
        // The node network, as far as the routes care: on-link next hops of both families.
        // (a veth pair: the lab's kernels may lack the dummy driver)
        sh(&ns, "ip link add eth0 type veth peer name peer0")?;
        sh(&ns, "ip link set peer0 up")?;
        sh(&ns, "ip addr add 172.20.0.11/24 dev eth0")?;
        sh(&ns, "ip addr add fd00:172:20::11/64 dev eth0 nodad")?;
        sh(&ns, "ip link set eth0 up")?;
        let state = AgentState::open(&ns, TABLE, TABLE)?;
        let path = lab.dir.join(format!("agent-{mode}.yaml"));
        fs::write(&path, text)?;
        let bin = lab.bin("liqonet-route-agent");
        let args = [
            bin.to_str().unwrap_or_default(),
            "run",
            "--config",
            path.to_str().unwrap_or_default(),
        ];
        let start = Instant::now();
        lab.spawn(AGENT, &ns, &args, &[("RUST_LOG", "info")])?;
        let mut bench = Bench {
            lab,
            state,
            path,
            pid: 0,
        };
        let (took, unrouted) = bench.until_in_place(text, &BTreeSet::new(), start)?;
        // `ip netns exec` has become the agent by now: it is the namespace's one process.
        bench.pid = netns::run(&["ip", "netns", "pids", &ns])?
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .context("the agent is not running")?;
        let cpu = bench.idle(Duration::ZERO);
        Ok((
            bench,
            Episode {
                took,
                cpu,
                unrouted,
            },
        ))
    }

    /// Writes `new` over `old` as the configuration and SIGHUPs the agent.
    fn change(&mut self, old: &str, new: &str) -> anyhow::Result<Episode> {
        let before = expected(old)?.1;
        let kept: BTreeSet<Cidr> = expected(new)?.1.intersection(&before).copied().collect();
        let (start, cpu_before) = (Instant::now(), sched_time(self.pid));
        fs::write(&self.path, new)?;
        self.lab.signal(AGENT, "HUP")?;
        let (took, unrouted) = self.until_in_place(new, &kept, start)?;
        Ok(Episode {
            took,
            cpu: self.idle(cpu_before),
            unrouted,
        })
    }

    /// Polls the kernel until it holds exactly what `text` wants: how long that took from
    /// `start`, and the most networks of `kept` seen without a route meanwhile.
    fn until_in_place(
        &mut self,
        text: &str,
        kept: &BTreeSet<Cidr>,
        start: Instant,
    ) -> anyhow::Result<(Duration, usize)> {
        let (routes, rules) = expected(text)?;
        let mut unrouted = 0;
        loop {
            let got: BTreeSet<Route> = self.state.routes()?.into_iter().collect();
            let routed: BTreeSet<Cidr> = got.iter().map(|(dst, _)| *dst).collect();
            unrouted = unrouted.max(kept.difference(&routed).count());
            // Routes carry nothing without their rules: both count.
            if got == routes && self.state.rules()?.into_iter().collect::<BTreeSet<_>>() == rules {
                return Ok((start.elapsed(), unrouted));
            }
            if start.elapsed() > GIVE_UP {
                let wrong = routes.symmetric_difference(&got).count();
                bail!(
                    "not in place after {GIVE_UP:?}: {wrong} routes differ; agent log:\n{}",
                    self.lab.log(AGENT)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the agent has used no CPU for 300 ms (the notifications of its own changes
    /// handled); the CPU time it used since `before`.
    fn idle(&self, before: Duration) -> Duration {
        let mut last = sched_time(self.pid);
        let quiet = Instant::now() + Duration::from_secs(10);
        while Instant::now() < quiet {
            std::thread::sleep(Duration::from_millis(300));
            let now = sched_time(self.pid);
            if now == last {
                break;
            }
            last = now;
        }
        last.saturating_sub(before)
    }

    /// SIGTERM: how long until the agent has removed everything and exited.
    fn stop(mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let status = self.lab.stop(AGENT)?;
        let took = start.elapsed();
        if !status.success() {
            bail!("the agent exited with {status}:\n{}", self.lab.log(AGENT));
        }
        let left = self.state.routes()?.len() + self.state.rules()?.len();
        if left > 0 {
            bail!("{left} routes and rules left after SIGTERM");
        }
        Ok(took)
    }
}

fn measure(mode: &str) -> anyhow::Result<Vec<Figure>> {
    let nets = many_networks(PEERS, PER_PEER);
    let first = config(mode, "gw", &nets);
    let (mut bench, started) = Bench::start(mode, &first)?;
    let n = nets.len();
    eprintln!(
        "{mode}: {n} networks in place {:?} after start",
        started.took
    );

    // Out: the first peers' networks; in: as many new peers'.
    let swapped = usize::from(SWAPPED_PEERS * PER_PEER);
    let mut changed: Vec<Cidr> = nets[swapped..].to_vec();
    let newcomers = many_networks(PEERS + SWAPPED_PEERS, PER_PEER);
    changed.extend_from_slice(&newcomers[n..]);
    let second = config(mode, "gw", &changed);
    let reloaded = bench.change(&first, &second)?;
    eprintln!(
        "{mode}: {swapped} out, {swapped} in {:?} after SIGHUP ({} others without a route meanwhile)",
        reloaded.took, reloaded.unrouted
    );

    let moved = bench.change(&second, &config(mode, "w2", &changed))?;
    eprintln!(
        "{mode}: {n} re-pointed {:?} after SIGHUP ({} without a route meanwhile)",
        moved.took, moved.unrouted
    );
    let stopped = bench.stop()?;
    eprintln!("{mode}: everything removed, agent exited {stopped:?} after SIGTERM");

    Ok(vec![
        started.figure(&format!(
            "agent {mode}: {n} networks, start to all in place"
        )),
        reloaded.figure(&format!(
            "agent {mode}: {swapped} out, {swapped} in (SIGHUP)"
        )),
        moved.figure(&format!("agent {mode}: gateway node moved, {n} re-pointed")),
        Figure::new(
            &format!("agent {mode}: networks without a route while re-pointing"),
            format!("{} of {n}", moved.unrouted),
            "0",
            moved.unrouted == 0,
        ),
        Figure::new(
            &format!("agent {mode}: SIGTERM until all removed and exited"),
            format!("{} ms", stopped.as_millis()),
            "-",
            true,
        ),
    ])
}
