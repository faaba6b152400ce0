//! `make bench`, end to end: the same two-gateway lab with plain routing, liqonet, wireguard-go
//! and boringtun-cli, measured in one run; one table, liqonet's ratio to each, and a JSON file
//! to compare across commits. Ratios matter more than absolute figures: machines drift.
//! `liqonet-bench failover [--rounds N]` times gateway failovers on the Kubernetes lab instead;
//! `liqonet-bench flood` measures a tunnel under a handshake flood; `liqonet-bench scale` what
//! one gateway and its route agents sustain as peers, networks and nodes grow.

use std::process::ExitCode;
use std::time::Duration;

use liqonet_lab::probe::{cpu_busy_seconds, iperf3_with, ping, wait_reachable};
use liqonet_lab::{ClusterSpec, GatewayKind, Lab, LabSpec, Underlay};

#[derive(Debug, Default, Clone)]
struct Row {
    name: String,
    /// Median of the single-stream TCP runs.
    tcp_gbps: f64,
    tcp_runs: Vec<f64>,
    retransmits: u64,
    cpu_s_per_gb: f64,
    tcp4_gbps: f64,
    reverse_gbps: f64,
    udp_gbps: f64,
    udp_loss: f64,
    rtt_ms: f64,
}

fn spec(kind: GatewayKind) -> LabSpec {
    let cluster = |name: &str, cidr: &str| ClusterSpec {
        gateway: kind,
        ..ClusterSpec::new(name, cidr).gateway_only()
    };
    let mut clusters = vec![
        cluster("home", "10.244.0.0/16"),
        cluster("foreign", "10.245.0.0/16"),
    ];
    if kind == GatewayKind::Liqonet {
        // liqonet is measured with what it is for: both clusters on one CIDR, remapped.
        clusters[1].pod_cidr = "10.244.0.0/16".into();
        clusters[0].alias = Some("10.246.0.0/16".into());
        clusters[1].alias = Some("10.245.0.0/16".into());
    }
    LabSpec {
        clusters,
        underlay: Underlay::V4,
    }
}

fn measure(name: &str, kind: GatewayKind, secs: u32, runs: usize) -> anyhow::Result<Row> {
    eprintln!("== {name}");
    let lab = Lab::start(&spec(kind))?;
    let from = lab.home().main_pod().ns.clone();
    let dst = lab.ip_of("foreign", "home", false);
    if !wait_reachable(&from, &dst, Duration::from_secs(10)) {
        anyhow::bail!("{name}: {dst} is not reachable");
    }
    let mut row = Row {
        name: name.into(),
        ..Row::default()
    };
    let (mut cpu, mut bytes) = (0.0, 0u64);
    let mut results = Vec::new();
    for _ in 0..runs {
        let before = cpu_busy_seconds();
        let r = iperf3_with(&from, &dst, secs, &[])?;
        cpu += cpu_busy_seconds() - before;
        bytes += r.bytes;
        eprintln!(
            "   tcp {:.2} Gbit/s, {} retransmits",
            r.bits_per_second / 1e9,
            r.retransmits
        );
        results.push(r);
    }
    results.sort_by(|a, b| a.bits_per_second.total_cmp(&b.bits_per_second));
    let median = results[results.len() / 2];
    row.tcp_runs = results.iter().map(|r| r.bits_per_second / 1e9).collect();
    row.tcp_gbps = median.bits_per_second / 1e9;
    row.retransmits = median.retransmits;
    row.cpu_s_per_gb = cpu / (bytes as f64 / 1e9).max(1e-9);
    row.tcp4_gbps = iperf3_with(&from, &dst, secs, &["-P", "4"])?.bits_per_second / 1e9;
    row.reverse_gbps = iperf3_with(&from, &dst, secs, &["-R"])?.bits_per_second / 1e9;
    let udp = iperf3_with(&from, &dst, secs, &["-u", "-b", "1G", "-l", "1300"])?;
    row.udp_gbps = udp.bits_per_second / 1e9;
    row.udp_loss = udp.lost_percent;
    row.rtt_ms = ping(&from, &dst, 20)?.rtt_avg_ms.unwrap_or(f64::NAN);
    Ok(row)
}

mod failover;
mod flood;
mod scale;

fn main() -> ExitCode {
    liqonet_lab::teardown_on_signal();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("failover") {
        let rounds = match args.iter().position(|a| a == "--rounds") {
            Some(i) => match args.get(i + 1).and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => n,
                _ => {
                    eprintln!("--rounds needs a positive number");
                    return ExitCode::from(2);
                }
            },
            None => 5,
        };
        return match failover::run(rounds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("failover bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("scale") {
        return match scale::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("scale bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let secs: u32 = std::env::var("LIQONET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runs: usize = std::env::var("LIQONET_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if args.first().map(String::as_str) == Some("flood") {
        return match flood::run(secs, runs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flood bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let out = std::env::var("LIQONET_BENCH_OUT").unwrap_or_else(|_| "target/bench/e2e.json".into());
    let configs = [
        ("plain routing", GatewayKind::Plain),
        ("liqonet", GatewayKind::Liqonet),
        ("wireguard-go", GatewayKind::WireguardGo),
        ("boringtun-cli", GatewayKind::BoringtunCli),
    ];
    // LIQONET_BENCH_ONLY=liqonet (comma-separated names) measures a subset, e.g. under a profiler.
    let only = std::env::var("LIQONET_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let mut rows = Vec::new();
    for (name, kind) in configs.into_iter().filter(|(n, _)| wanted(n)) {
        match measure(name, kind, secs, runs) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("{name}: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let liqonet = rows
        .iter()
        .find(|r| r.name == "liqonet")
        .map_or(0.0, |r| r.tcp_gbps);
    println!("\nSingle-stream TCP is the median of {runs} runs of {secs} s; the other columns are one run each.");
    println!(
        "{:<14} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
        "",
        "TCP Gb/s",
        "retrans",
        "CPU s/GB",
        "4×TCP",
        "reverse",
        "UDP Gb/s",
        "loss %",
        "RTT ms",
        "liqonet×"
    );
    for r in &rows {
        println!(
            "{:<14} {:>9.2} {:>8} {:>8.2} {:>9.2} {:>9.2} {:>10.2} {:>8.2} {:>9.3} {:>9.2}",
            r.name,
            r.tcp_gbps,
            r.retransmits,
            r.cpu_s_per_gb,
            r.tcp4_gbps,
            r.reverse_gbps,
            r.udp_gbps,
            r.udp_loss,
            r.rtt_ms,
            liqonet / r.tcp_gbps.max(1e-9)
        );
    }
    let json = serde_json::json!({
        "seconds": secs,
        "runs": runs,
        "results": rows.iter().map(|r| serde_json::json!({
            "name": r.name, "tcp_gbps": r.tcp_gbps, "tcp_runs_gbps": r.tcp_runs, "retransmits": r.retransmits,
            "cpu_seconds_per_gb": r.cpu_s_per_gb, "tcp4_gbps": r.tcp4_gbps, "reverse_gbps": r.reverse_gbps,
            "udp_gbps": r.udp_gbps, "udp_loss_percent": r.udp_loss, "rtt_ms": r.rtt_ms,
            "liqonet_ratio": liqonet / r.tcp_gbps.max(1e-9),
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &out,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nwritten to {out}"),
        Err(e) => eprintln!("cannot write {out}: {e}"),
    }
    ExitCode::SUCCESS
}
