//! One gateway with many peers, in the lab (release build): two live foreign clusters, and
//! peers whose endpoint (a WAN host that drops everything) never answers. The single stream to
//! a live peer with 100 peers against 2; the resident memory each idle peer costs; the CPU the
//! gateway spends with no traffic at all (timers, handshake attempts, keepalives, probes).
//! The engine's per-packet cost with 100 peers and 1 000 networks is in `make bench`'s
//! criterion benchmarks (benches/engine.rs).

use std::time::{Duration, Instant};

use anyhow::Context;
use liqonet_lab::lab::ClusterSpec;
use liqonet_lab::netns::sh;
use liqonet_lab::probe::{iperf3, wait_reachable};
use liqonet_lab::{Lab, LabSpec};

use super::Figure;

/// Where idle peers' endpoints point: a WAN host that drops every datagram.
const VOID: u8 = 99;
const IDLE_SECONDS: u64 = 20;

pub fn run() -> anyhow::Result<Vec<Figure>> {
    let spec = LabSpec {
        clusters: vec![
            ClusterSpec::new("home", "10.244.0.0/16").gateway_only(),
            ClusterSpec::new("foreign", "10.245.0.0/16").gateway_only(),
            ClusterSpec::new("third", "10.246.0.0/16").gateway_only(),
        ],
        ..LabSpec::distinct_cidrs()
    };
    let mut lab = Lab::start(&spec)?;
    let void = lab.add_wan_host("void", VOID)?;
    sh(&void, "nft add table inet void")?;
    liqonet_lab::netns::ns_run(
        &void,
        &[
            "nft",
            "add chain inet void input { type filter hook input priority 0 ; policy drop ; }",
        ],
    )?;
    let (from, dst) = (
        lab.home().main_pod().ns.clone(),
        lab.cluster("foreign").main_pod().ip.clone(),
    );
    if !wait_reachable(&from, &dst, Duration::from_secs(10)) {
        anyhow::bail!("{dst} is not reachable");
    }
    let live = lab.liqonet_config(0);

    let base = measure(&mut lab, &live, 0, &from, &dst)?;
    let hundred = measure(&mut lab, &with_idle(&live, 98), 98, &from, &dst)?;
    let thousand = measure(&mut lab, &with_idle(&live, 998), 998, &from, &dst)?;
    for m in [&base, &hundred, &thousand] {
        println!(
            "  {:>4} peers: single stream {:.2} Gbit/s, RSS {} KiB, idle CPU {:.3} % of a core",
            m.peers,
            m.gbps,
            m.rss_kib,
            m.idle_cpu * 100.0
        );
    }
    let kept = hundred.gbps / base.gbps;
    let per_peer = (thousand.rss_kib as f64 - base.rss_kib as f64) / 996.0;
    Ok(vec![
        Figure::new(
            "single stream to a live peer, 100 peers against 2",
            format!("{:.0} %", kept * 100.0),
            ">= 95 %",
            kept >= 0.95,
        ),
        Figure::new(
            "resident memory per idle peer (1 000 peers against 2)",
            format!("{per_peer:.1} KiB"),
            "< 64 KiB",
            per_peer < 64.0,
        ),
        Figure::new(
            "CPU with no traffic, 100 peers (timers, handshakes, probes)",
            format!("{:.3} % of a core", hundred.idle_cpu * 100.0),
            "< 1 %",
            hundred.idle_cpu < 0.01,
        ),
    ])
}

struct Measured {
    peers: usize,
    gbps: f64,
    rss_kib: u64,
    /// Share of one core over [`IDLE_SECONDS`] without traffic.
    idle_cpu: f64,
}

/// Restarts home's gateway with `config` (2 live peers and `idle` more) and measures it.
fn measure(
    lab: &mut Lab,
    config: &str,
    idle: usize,
    from: &str,
    dst: &str,
) -> anyhow::Result<Measured> {
    lab.restart_gateway_with("home", config)?;
    if !wait_reachable(from, dst, Duration::from_secs(10)) {
        anyhow::bail!("{dst} is not reachable with {idle} idle peers");
    }
    let pid = lab.pid("home-gateway").context("no home gateway")?;
    // Idle first, right after the start: when handshake attempts to the idle peers run.
    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let idle_cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let rss_kib = rss_kib(pid)?;
    let mut rates = Vec::new();
    for _ in 0..3 {
        rates.push(iperf3(from, dst, 5)?.bits_per_second / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    Ok(Measured {
        peers: 2 + idle,
        gbps: rates[1],
        rss_kib,
        idle_cpu,
    })
}

/// `config` with `n` more peers, one network each (10.100.0.0/24 onwards), whose endpoints
/// never answer.
fn with_idle(config: &str, n: usize) -> String {
    let mut y = config.to_string();
    for i in 0..n {
        // Distinct keys: any 32 bytes, base64 (the engine clamps them).
        let mut key = [0x11u8; 32];
        key[..2].copy_from_slice(&(i as u16).to_be_bytes());
        y += &format!(
            "  - clusterID: idle{i}\n    publicKey: {}\n    endpoint: \"192.168.250.{VOID}:{}\"\n    networks:\n      - cidr: 10.{}.{}.0/24\n",
            liqonet_proto::Key(key).to_base64(),
            20_000 + i,
            100 + i / 256,
            i % 256
        );
    }
    y
}

/// User and system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let t = liqonet_lab::procfs::cpu_time(pid).context("no /proc stat")?;
    Ok(t.as_secs_f64())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(liqonet_lab::procfs::rss(pid).context("no VmRSS")? / 1024)
}
