//! `make bench`, end to end: the same two-gateway lab with plain routing, liqonet, today's
//! wireguard-go, Debian's 2022 wireguard-go and boringtun-cli, all up at once and measured in
//! rounds that alternate their order (the machine is noisy: ratios within one run are what
//! count); one table, liqonet's ratio to each, and a JSON file to compare across commits.

use std::time::Duration;

use liqonet_lab::probe::wait_reachable;
use liqonet_lab::{ClusterSpec, GatewayKind, Lab, LabSpec, Underlay};
use serde_json::json;

use crate::measure::{self, Round, Target};
use crate::peers::{self, Subject};
use crate::report::{self, Row};

fn spec(subject: &Subject) -> LabSpec {
    let cluster = |name: &str, cidr: &str| ClusterSpec {
        gateway: subject.kind,
        wireguard_go: subject.wireguard_go.clone(),
        ..ClusterSpec::new(name, cidr).gateway_only()
    };
    let mut clusters = vec![
        cluster("home", "10.244.0.0/16"),
        cluster("foreign", "10.245.0.0/16"),
    ];
    if subject.kind == GatewayKind::Liqonet {
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

/// A started lab and where to measure it.
fn start(subject: &Subject) -> anyhow::Result<(Lab, Target)> {
    eprintln!("== {}: starting its lab", subject.name);
    let lab = Lab::start(&spec(subject))?;
    let from = lab.home().main_pod().ns.clone();
    let dst = lab.ip_of("foreign", "home", false);
    if !wait_reachable(&from, &dst, Duration::from_secs(10)) {
        anyhow::bail!("{dst} is not reachable");
    }
    let process = match subject.kind {
        GatewayKind::Plain => None,
        GatewayKind::Liqonet => Some("gateway"),
        GatewayKind::Relay => Some("relay"),
        GatewayKind::WireguardGo | GatewayKind::BoringtunCli => Some("wireguard"),
    };
    let gateway_pids = match process {
        None => Vec::new(),
        Some(p) => lab
            .clusters
            .iter()
            .filter_map(|c| lab.pid(&format!("{}-{p}", c.spec.name)))
            .collect(),
    };
    let gateway_ns = lab.clusters.iter().map(|c| c.gw_ns().to_string()).collect();
    let tunnels = lab
        .clusters
        .iter()
        .map(|c| c.interface.clone())
        .filter(|i| !i.is_empty())
        .collect();
    let receiver_ns = lab.cluster("foreign").main_pod().ns.clone();
    Ok((
        lab,
        Target {
            from,
            dst,
            gateway_pids,
            gateway_ns,
            tunnels,
            receiver_ns,
        },
    ))
}

struct Live {
    subject: Subject,
    /// Torn down when dropped.
    _lab: Lab,
    target: Target,
    rounds: Vec<Round>,
    failed: Option<String>,
}

/// Measures every implementation; false if one that should have run failed.
pub fn run(secs: u32, runs: usize, out: &str) -> bool {
    // LIQONET_BENCH_ONLY=liqonet (comma-separated names) measures a subset, e.g. under a profiler.
    let only = std::env::var("LIQONET_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    // Table order; a row is filled in from its lab's rounds, or says why there were none.
    let mut rows: Vec<Row> = Vec::new();
    let mut live: Vec<(usize, Live)> = Vec::new();
    let mut ok = true;
    for found in peers::subjects(wanted) {
        match found {
            Err(m) => {
                eprintln!("== {}: NOT MEASURED: {}", m.name, m.reason);
                rows.push(Row::skipped(&m.name, "", m.reason));
            }
            Ok(subject) => match start(&subject) {
                Ok((lab, target)) => {
                    rows.push(Row::default());
                    live.push((
                        rows.len() - 1,
                        Live {
                            subject,
                            _lab: lab,
                            target,
                            rounds: Vec::new(),
                            failed: None,
                        },
                    ));
                }
                Err(e) => {
                    eprintln!("== {}: its lab did not start: {e:#}", subject.name);
                    ok = false;
                    let why = format!("its lab did not start: {e:#}");
                    rows.push(Row::skipped(&subject.name, &subject.version, why));
                }
            },
        }
    }
    for round in 0..runs {
        // Alternate the order, so no implementation always runs first or last.
        let mut order: Vec<usize> = (0..live.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let l = &mut live[i].1;
            if l.failed.is_some() {
                continue;
            }
            match measure::round(&l.target, secs) {
                Ok(r) => {
                    eprintln!(
                        "== round {}/{runs} {}: tcp {:.2} Gbit/s, 4 streams {:.2}, udp {:.2} Gbit/s \
                         through, {:.2} % lost",
                        round + 1,
                        l.subject.name,
                        r.gbps_single,
                        r.gbps_4_streams,
                        r.udp_gbps,
                        r.udp_loss_percent
                    );
                    l.rounds.push(r);
                }
                Err(e) => {
                    eprintln!("== {}: {e:#}", l.subject.name);
                    l.failed = Some(format!("{e:#}"));
                }
            }
        }
    }
    for (at, l) in live {
        let (name, version) = (&l.subject.name, &l.subject.version);
        rows[at] = match l.failed {
            None => Row::from_rounds(name, version, &l.rounds),
            Some(why) => {
                ok = false;
                Row::skipped(name, version, format!("failed: {why}"))
            }
        };
    }
    report::print(&rows, u64::from(secs), runs as u64);
    write(&rows, secs, runs, out);
    ok
}

fn write(rows: &[Row], secs: u32, runs: usize, out: &str) {
    let liqonet = rows
        .iter()
        .find(|r| r.name == "liqonet" && r.skipped.is_none());
    let json = json!({
        "seconds": secs,
        "runs": runs,
        "pings_per_round": measure::PINGS,
        "ping_interval_s": measure::PING_INTERVAL,
        "results": rows.iter().map(|r| r.to_json(liqonet)).collect::<Vec<_>>(),
    });
    if let Some(dir) = std::path::Path::new(out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    match std::fs::write(out, text) {
        Ok(()) => println!("\nwritten to {out}"),
        Err(e) => eprintln!("cannot write {out}: {e}"),
    }
}

/// `liqonet-bench hold NAME`: one implementation's lab, up until stdin closes or a signal, for
/// a profiler or a hand-run tool; says where to measure from and which processes are the gateways.
pub fn hold(name: &str) -> anyhow::Result<()> {
    let subject = peers::subjects(|n| n == name)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no implementation named {name:?}"))?
        .map_err(|m| anyhow::anyhow!("{}: {}", m.name, m.reason))?;
    let (_lab, target) = start(&subject)?;
    println!("from namespace: {}", target.from);
    println!("to address:     {}", target.dst);
    println!("gateway pids:   {:?}", target.gateway_pids);
    println!("(close stdin or press Ctrl-C to tear it down)");
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// `liqonet-bench report`: the table of the last run, from its JSON file.
pub fn report(out: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(out)
        .map_err(|e| anyhow::anyhow!("cannot read {out} (run liqonet-bench first): {e}"))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let rows: Vec<Row> = json["results"]
        .as_array()
        .map(|a| a.iter().filter_map(Row::from_json).collect())
        .unwrap_or_default();
    let secs = json["seconds"].as_u64().unwrap_or(0);
    let runs = json["runs"].as_u64().unwrap_or(0);
    println!("\nend to end ({out}):");
    report::print(&rows, secs, runs);
    Ok(())
}
