//! The end-to-end bench's figures per implementation: from its rounds, to and from
//! `target/bench/e2e.json`, and as the printed table with liqonet's ratio to each peer.

use serde_json::{json, Value};

use crate::measure::{quantile, Round, UdpLosses, PINGS};

#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub version: String,
    /// Why it was not measured (not built, not installed, failed).
    pub skipped: Option<String>,
    /// Single-stream TCP: the median round, and every round.
    pub gbps_single: f64,
    pub gbps_single_runs: Vec<f64>,
    pub retransmits: u64,
    pub gbps_4_streams: f64,
    pub cpu_s_per_gb_machine: f64,
    /// `None` for plain routing: the kernel forwards, there is no gateway process.
    pub cpu_s_per_gb_gateways: Option<f64>,
    /// RTT of every round's pings together; a lost ping makes a quantile it reaches infinite.
    pub rtt_idle_median_ms: f64,
    pub rtt_idle_p99_ms: f64,
    pub rtt_idle_lost: usize,
    pub rtt_load_median_ms: f64,
    pub rtt_load_p99_ms: f64,
    pub rtt_load_lost: usize,
    pub udp_1g_gbps: f64,
    pub udp_1g_loss_percent: f64,
    /// Every round's UDP losses together, by where the kernel counted them.
    pub udp_1g_losses: UdpLosses,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Row {
    pub fn skipped(name: &str, version: &str, reason: String) -> Row {
        Row {
            name: name.into(),
            version: version.into(),
            skipped: Some(reason),
            ..Row::default()
        }
    }

    pub fn from_rounds(name: &str, version: &str, rounds: &[Round]) -> Row {
        let gb = rounds.iter().map(|r| r.bytes_single as f64).sum::<f64>() / 1e9;
        let per_gb = |s: f64| s / gb.max(1e-9);
        let mut by_speed: Vec<&Round> = rounds.iter().collect();
        by_speed.sort_by(|a, b| a.gbps_single.total_cmp(&b.gbps_single));
        let idle: Vec<f64> = rounds.iter().flat_map(|r| r.rtt_idle_ms.clone()).collect();
        let load: Vec<f64> = rounds.iter().flat_map(|r| r.rtt_load_ms.clone()).collect();
        let lost = |v: &[f64]| v.iter().filter(|x| x.is_infinite()).count();
        Row {
            name: name.into(),
            version: version.into(),
            skipped: None,
            gbps_single: median(rounds.iter().map(|r| r.gbps_single).collect()),
            gbps_single_runs: rounds.iter().map(|r| r.gbps_single).collect(),
            retransmits: by_speed
                .get(by_speed.len() / 2)
                .map_or(0, |r| r.retransmits),
            gbps_4_streams: median(rounds.iter().map(|r| r.gbps_4_streams).collect()),
            cpu_s_per_gb_machine: per_gb(rounds.iter().map(|r| r.cpu_machine_s).sum()),
            cpu_s_per_gb_gateways: rounds
                .iter()
                .map(|r| r.cpu_gateways_s)
                .sum::<Option<f64>>()
                .map(per_gb),
            rtt_idle_median_ms: quantile(&idle, 0.5),
            rtt_idle_p99_ms: quantile(&idle, 0.99),
            rtt_idle_lost: lost(&idle),
            rtt_load_median_ms: quantile(&load, 0.5),
            rtt_load_p99_ms: quantile(&load, 0.99),
            rtt_load_lost: lost(&load),
            udp_1g_gbps: median(rounds.iter().map(|r| r.udp_gbps).collect()),
            udp_1g_loss_percent: median(rounds.iter().map(|r| r.udp_loss_percent).collect()),
            udp_1g_losses: rounds.iter().fold(UdpLosses::default(), |mut t, r| {
                t.add(&r.udp_losses);
                t
            }),
        }
    }

    /// liqonet against this row: throughput and CPU as ratios, latency and loss as differences.
    fn against(&self, liqonet: &Row) -> Comparison {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Comparison {
            single: ratio(liqonet.gbps_single, self.gbps_single),
            four_streams: ratio(liqonet.gbps_4_streams, self.gbps_4_streams),
            cpu_gateways: match (liqonet.cpu_s_per_gb_gateways, self.cpu_s_per_gb_gateways) {
                (Some(l), Some(p)) => ratio(l, p),
                _ => f64::NAN,
            },
            cpu_machine: ratio(liqonet.cpu_s_per_gb_machine, self.cpu_s_per_gb_machine),
            rtt_idle_median_ms: liqonet.rtt_idle_median_ms - self.rtt_idle_median_ms,
            rtt_load_p99_ms: liqonet.rtt_load_p99_ms - self.rtt_load_p99_ms,
            udp_loss_pp: liqonet.udp_1g_loss_percent - self.udp_1g_loss_percent,
        }
    }

    pub fn to_json(&self, liqonet: Option<&Row>) -> Value {
        if let Some(reason) = &self.skipped {
            return json!({ "name": self.name, "version": self.version, "skipped": reason });
        }
        let mut v = json!({
            "name": self.name,
            "version": self.version,
            "gbps_single": self.gbps_single,
            "gbps_single_runs": self.gbps_single_runs,
            "retransmits_single": self.retransmits,
            "gbps_4_streams": self.gbps_4_streams,
            "cpu_s_per_gb_machine": self.cpu_s_per_gb_machine,
            "cpu_s_per_gb_gateways": self.cpu_s_per_gb_gateways,
            // Infinite (a lost ping reached the quantile) becomes null in JSON.
            "rtt_idle_median_ms": self.rtt_idle_median_ms,
            "rtt_idle_p99_ms": self.rtt_idle_p99_ms,
            "rtt_idle_lost_pings": self.rtt_idle_lost,
            "rtt_load_median_ms": self.rtt_load_median_ms,
            "rtt_load_p99_ms": self.rtt_load_p99_ms,
            "rtt_load_lost_pings": self.rtt_load_lost,
            "udp_1g_gbps": self.udp_1g_gbps,
            "udp_1g_loss_percent": self.udp_1g_loss_percent,
            "udp_1g_lost_datagrams": self.udp_1g_losses.lost,
            "udp_1g_dropped_gateway_tun_queues": self.udp_1g_losses.tun_queues,
            "udp_1g_dropped_gateway_node_devices": self.udp_1g_losses.node_devices,
            "udp_1g_dropped_gateway_socket_buffers": self.udp_1g_losses.gateway_sockets,
            "udp_1g_dropped_receiver_socket_buffer": self.udp_1g_losses.receiver_socket,
        });
        // liqonet's own row has no ratios to itself.
        let liqonet = liqonet.filter(|l| l.name != self.name);
        if let (Some(l), Some(obj)) = (liqonet, v.as_object_mut()) {
            let c = self.against(l);
            for (key, value) in [
                ("liqonet_ratio_single", c.single),
                ("liqonet_ratio_4_streams", c.four_streams),
                ("liqonet_ratio_cpu_gateways", c.cpu_gateways),
                ("liqonet_ratio_cpu_machine", c.cpu_machine),
                ("liqonet_minus_rtt_idle_median_ms", c.rtt_idle_median_ms),
                ("liqonet_minus_rtt_load_p99_ms", c.rtt_load_p99_ms),
                ("liqonet_minus_udp_1g_loss_pp", c.udp_loss_pp),
            ] {
                obj.insert(key.into(), json!(value));
            }
        }
        v
    }

    /// A row as `to_json` wrote it (for `liqonet-bench report`).
    pub fn from_json(v: &Value) -> Option<Row> {
        let name = v["name"].as_str()?.to_string();
        let version = v["version"].as_str().unwrap_or_default().to_string();
        if let Some(reason) = v["skipped"].as_str() {
            return Some(Row::skipped(&name, &version, reason.into()));
        }
        let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        // Only an infinite quantile is written as null.
        let rtt = |k: &str| v[k].as_f64().unwrap_or(f64::INFINITY);
        let count = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
        Some(Row {
            name,
            version,
            skipped: None,
            gbps_single: num("gbps_single"),
            gbps_single_runs: v["gbps_single_runs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
            retransmits: v["retransmits_single"].as_u64().unwrap_or(0),
            gbps_4_streams: num("gbps_4_streams"),
            cpu_s_per_gb_machine: num("cpu_s_per_gb_machine"),
            cpu_s_per_gb_gateways: v["cpu_s_per_gb_gateways"].as_f64(),
            rtt_idle_median_ms: rtt("rtt_idle_median_ms"),
            rtt_idle_p99_ms: rtt("rtt_idle_p99_ms"),
            rtt_idle_lost: count("rtt_idle_lost_pings"),
            rtt_load_median_ms: rtt("rtt_load_median_ms"),
            rtt_load_p99_ms: rtt("rtt_load_p99_ms"),
            rtt_load_lost: count("rtt_load_lost_pings"),
            udp_1g_gbps: num("udp_1g_gbps"),
            udp_1g_loss_percent: num("udp_1g_loss_percent"),
            udp_1g_losses: UdpLosses {
                lost: v["udp_1g_lost_datagrams"].as_u64().unwrap_or(0),
                tun_queues: v["udp_1g_dropped_gateway_tun_queues"].as_u64().unwrap_or(0),
                node_devices: v["udp_1g_dropped_gateway_node_devices"]
                    .as_u64()
                    .unwrap_or(0),
                gateway_sockets: v["udp_1g_dropped_gateway_socket_buffers"]
                    .as_u64()
                    .unwrap_or(0),
                receiver_socket: v["udp_1g_dropped_receiver_socket_buffer"]
                    .as_u64()
                    .unwrap_or(0),
            },
        })
    }
}

struct Comparison {
    single: f64,
    four_streams: f64,
    cpu_gateways: f64,
    cpu_machine: f64,
    rtt_idle_median_ms: f64,
    rtt_load_p99_ms: f64,
    udp_loss_pp: f64,
}

/// A figure for the table: `–` when there is none, `lost` for an infinite RTT quantile.
fn fig(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.is_infinite() {
        "lost".into()
    } else {
        format!("{v:.decimals$}")
    }
}

pub fn print(rows: &[Row], secs: u64, runs: u64) {
    let w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(8);
    println!(
        "\n{runs} rounds of {secs} s, the implementations in alternating order.\n\
         TCP and UDP: median of the rounds. CPU: busy seconds per GB moved during the single-stream\n\
         runs. RTT: {PINGS} pings at 10 ms a round, all rounds together, a lost ping counting as over\n\
         any bound; under load: during a single-stream run. UDP: 1 Gbit/s offered, -l 1300 -w 4M;\n\
         what got through (a sender short of CPU offers less) and the share of what was sent lost."
    );
    println!(
        "{:w$}  {:>8} {:>8} {:>8} {:>9} {:>9} {:>15} {:>15} {:>13}",
        "",
        "TCP Gb/s",
        "4×TCP",
        "retrans",
        "CPU s/GB",
        "CPU s/GB",
        "RTT idle ms",
        "RTT load ms",
        "UDP 1G"
    );
    println!(
        "{:w$}  {:>8} {:>8} {:>8} {:>9} {:>9} {:>15} {:>15} {:>13}",
        "", "", "", "", "machine", "gateways", "median / p99", "median / p99", "Gb/s / loss %"
    );
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        println!(
            "{:w$}  {:>8} {:>8} {:>8} {:>9} {:>9} {:>15} {:>15} {:>13}",
            r.name,
            fig(r.gbps_single, 2),
            fig(r.gbps_4_streams, 2),
            r.retransmits,
            fig(r.cpu_s_per_gb_machine, 2),
            fig(r.cpu_s_per_gb_gateways.unwrap_or(f64::NAN), 2),
            format!(
                "{} / {}",
                fig(r.rtt_idle_median_ms, 3),
                fig(r.rtt_idle_p99_ms, 3)
            ),
            format!(
                "{} / {}",
                fig(r.rtt_load_median_ms, 3),
                fig(r.rtt_load_p99_ms, 3)
            ),
            format!(
                "{} / {}",
                fig(r.udp_1g_gbps, 2),
                fig(r.udp_1g_loss_percent, 2)
            ),
        );
    }
    println!(
        "\nUDP 1G: datagrams lost (all rounds), and where the kernel counted drops in the gateway\n\
         nodes (the tunnel's TUN device, other devices, UDP socket buffers) and at the receiving\n\
         pod's socket; the rest, where no counter looks (e.g. inside a gateway)."
    );
    println!(
        "{:w$}  {:>9} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "", "lost", "gw TUN", "gw devices", "gw sockets", "receiver", "rest"
    );
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        let l = &r.udp_1g_losses;
        let counted = l.tun_queues + l.node_devices + l.gateway_sockets + l.receiver_socket;
        println!(
            "{:w$}  {:>9} {:>11} {:>11} {:>11} {:>11} {:>9}",
            r.name,
            l.lost,
            l.tun_queues,
            l.node_devices,
            l.gateway_sockets,
            l.receiver_socket,
            l.lost.saturating_sub(counted)
        );
    }
    if let Some(liqonet) = rows
        .iter()
        .find(|r| r.name == "liqonet" && r.skipped.is_none())
    {
        println!("\nliqonet against each (×: liqonet / it; Δ: liqonet − it):");
        println!(
            "{:w$}  {:>9} {:>11} {:>11} {:>11} {:>13} {:>13} {:>10}",
            "",
            "TCP ×",
            "4×TCP ×",
            "CPU gw ×",
            "CPU mach ×",
            "RTT idle Δms",
            "p99 load Δms",
            "UDP Δpp"
        );
        for r in rows
            .iter()
            .filter(|r| r.skipped.is_none() && r.name != "liqonet")
        {
            let c = r.against(liqonet);
            println!(
                "{:w$}  {:>9} {:>11} {:>11} {:>11} {:>13} {:>13} {:>10}",
                r.name,
                fig(c.single, 2),
                fig(c.four_streams, 2),
                fig(c.cpu_gateways, 2),
                fig(c.cpu_machine, 2),
                fig(c.rtt_idle_median_ms, 3),
                fig(c.rtt_load_p99_ms, 3),
                fig(c.udp_loss_pp, 2),
            );
        }
    }
    println!("\nversions:");
    for r in rows {
        match &r.skipped {
            None => println!("  {:w$}  {}", r.name, r.version),
            Some(why) => println!("  {:w$}  NOT MEASURED: {why}", r.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(gbps: f64, rtt: f64) -> Round {
        Round {
            gbps_single: gbps,
            bytes_single: 1_000_000_000,
            cpu_machine_s: 2.0,
            cpu_gateways_s: Some(1.0),
            gbps_4_streams: gbps,
            rtt_idle_ms: vec![rtt; PINGS as usize],
            rtt_load_ms: vec![rtt; PINGS as usize],
            ..Round::default()
        }
    }

    #[test]
    fn rows_survive_the_json_file() {
        let mut rounds = vec![round(3.0, 0.3), round(5.0, 0.3), round(4.0, 0.3)];
        // Seven lost pings of 600 reach the p99 (the 594th) but not the median.
        rounds[0].rtt_load_ms[..7].fill(f64::INFINITY);
        let row = Row::from_rounds("liqonet", "0.1.0", &rounds);
        assert_eq!(row.gbps_single, 4.0);
        assert_eq!(row.cpu_s_per_gb_machine, 2.0);
        assert_eq!(row.cpu_s_per_gb_gateways, Some(1.0));
        assert_eq!(row.rtt_load_lost, 7);
        assert!(row.rtt_load_p99_ms.is_infinite());
        let back = Row::from_json(&row.to_json(Some(&row))).expect("a row");
        assert_eq!(back.gbps_single_runs, vec![3.0, 5.0, 4.0]);
        assert!(back.rtt_load_p99_ms.is_infinite());
        assert_eq!(back.rtt_idle_p99_ms, 0.3);
        let skipped = Row::skipped("wireguard-go-x", "", "not built".into());
        let back = Row::from_json(&skipped.to_json(None)).expect("a row");
        assert_eq!(back.skipped.as_deref(), Some("not built"));
    }
}
