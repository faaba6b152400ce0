//! One round of the end-to-end bench on one lab: single-stream and 4-stream TCP, the CPU they
//! cost, UDP at 1 Gbit/s offered, and the round-trip time idle and under a single-stream load.

use std::time::Duration;

use anyhow::Context;
use liqonet_lab::netns::ns_output;
use liqonet_lab::probe::{cpu_busy_seconds, iperf3_with, Iperf};

/// Pings per RTT sample, and their interval.
pub const PINGS: u32 = 200;
pub const PING_INTERVAL: &str = "0.01";
/// UDP as the issue of record offers it: a real receive buffer (`-w`), so the loss is the
/// path's and not iperf3's default socket buffer's.
const UDP_1G: [&str; 7] = ["-u", "-b", "1G", "-l", "1300", "-w", "4M"];

/// Where to measure: from a pod to a pod address across the gateways, and the gateways' process
/// IDs (none for plain routing, where the kernel forwards); the namespaces whose kernel counters
/// tell where UDP datagrams were lost.
pub struct Target {
    pub from: String,
    pub dst: String,
    pub gateway_pids: Vec<u32>,
    pub gateway_ns: Vec<String>,
    /// The gateways' tunnel devices (none for plain routing).
    pub tunnels: Vec<String>,
    pub receiver_ns: String,
}

/// Datagrams of a UDP run that the kernel counted as dropped, by place; what iperf3 lost beyond
/// them was lost inside a gateway process (or where no counter looks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UdpLosses {
    /// As iperf3's receiver counted them.
    pub lost: u64,
    /// The gateways' TUN devices: for a userspace gateway, its TUN queue not read in time.
    pub tun_queues: u64,
    /// The gateway nodes' other devices (veths: a full backlog on the far end).
    pub node_devices: u64,
    /// Full UDP receive buffers in the gateway nodes: the underlay sockets.
    pub gateway_sockets: u64,
    /// The receiving pod's full socket buffer: iperf3's server not reading in time.
    pub receiver_socket: u64,
}

impl UdpLosses {
    pub fn add(&mut self, o: &UdpLosses) {
        self.lost += o.lost;
        self.tun_queues += o.tun_queues;
        self.node_devices += o.node_devices;
        self.gateway_sockets += o.gateway_sockets;
        self.receiver_socket += o.receiver_socket;
    }
}

/// The kernel's drop counters that a UDP run can move, read now.
fn kernel_drops(path: &Target) -> anyhow::Result<UdpLosses> {
    let read = |ns: &str, file: &str| -> anyhow::Result<String> {
        let out = ns_output(ns, &["cat", file])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut k = UdpLosses::default();
    for ns in &path.gateway_ns {
        for (device, drops) in device_tx_drops(&read(ns, "/proc/net/dev")?) {
            if path.tunnels.contains(&device) {
                k.tun_queues += drops;
            } else {
                k.node_devices += drops;
            }
        }
        k.gateway_sockets += udp_rcvbuf_errors(&read(ns, "/proc/net/snmp")?);
    }
    k.receiver_socket = udp_rcvbuf_errors(&read(&path.receiver_ns, "/proc/net/snmp")?);
    Ok(k)
}

/// Every device's transmit drops in the text of `/proc/net/dev`, by name.
fn device_tx_drops(dev: &str) -> Vec<(String, u64)> {
    dev.lines()
        .filter_map(|l| l.split_once(':'))
        // Receive: 8 fields; then transmit: bytes packets errs drop.
        .filter_map(|(name, counts)| {
            let drops = counts.split_whitespace().nth(11)?.parse().ok()?;
            Some((name.trim().to_string(), drops))
        })
        .collect()
}

/// `Udp: ... RcvbufErrors` in the text of `/proc/net/snmp` (a header line, then the values).
fn udp_rcvbuf_errors(snmp: &str) -> u64 {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default)]
pub struct Round {
    pub gbps_single: f64,
    pub bytes_single: u64,
    pub retransmits: u64,
    /// Busy CPU seconds during the single-stream run: the whole machine, the gateways' processes.
    pub cpu_machine_s: f64,
    pub cpu_gateways_s: Option<f64>,
    pub gbps_4_streams: f64,
    pub udp_gbps: f64,
    pub udp_loss_percent: f64,
    pub udp_losses: UdpLosses,
    /// Round-trip times in ms; a lost ping is `f64::INFINITY`.
    pub rtt_idle_ms: Vec<f64>,
    pub rtt_load_ms: Vec<f64>,
}

pub fn round(path: &Target, secs: u32) -> anyhow::Result<Round> {
    let (from, dst) = (path.from.as_str(), path.dst.as_str());
    let (machine, gateways) = (cpu_busy_seconds(), gateways_cpu(&path.gateway_pids));
    let single = iperf3(from, dst, secs, &[])?;
    let cpu_machine_s = cpu_busy_seconds() - machine;
    let cpu_gateways_s = gateways
        .zip(gateways_cpu(&path.gateway_pids))
        .map(|(before, after)| after - before);
    let four = iperf3(from, dst, secs, &["-P", "4"])?;
    let before = kernel_drops(path)?;
    let udp = iperf3(from, dst, secs, &UDP_1G)?;
    let after = kernel_drops(path)?;
    let udp_losses = UdpLosses {
        lost: udp.lost_datagrams,
        tun_queues: after.tun_queues.saturating_sub(before.tun_queues),
        node_devices: after.node_devices.saturating_sub(before.node_devices),
        gateway_sockets: after.gateway_sockets.saturating_sub(before.gateway_sockets),
        receiver_socket: after.receiver_socket.saturating_sub(before.receiver_socket),
    };
    let rtt_idle_ms = rtts(from, dst)?;
    let rtt_load_ms = rtts_under_load(from, dst, secs)?;
    Ok(Round {
        gbps_single: single.bits_per_second / 1e9,
        bytes_single: single.bytes,
        retransmits: single.retransmits,
        cpu_machine_s,
        cpu_gateways_s,
        gbps_4_streams: four.bits_per_second / 1e9,
        udp_gbps: udp.bits_per_second / 1e9,
        udp_loss_percent: udp.lost_percent,
        udp_losses,
        rtt_idle_ms,
        rtt_load_ms,
    })
}

/// An iperf3 run, once more after a failure: now and then its server resets the control
/// connection of a test that follows another at once (a lost run is not a slow tunnel).
fn iperf3(from: &str, dst: &str, secs: u32, extra: &[&str]) -> anyhow::Result<Iperf> {
    iperf3_with(from, dst, secs, extra).or_else(|e| {
        eprintln!("   iperf3 {extra:?} failed ({e:#}); once more");
        std::thread::sleep(Duration::from_secs(2));
        iperf3_with(from, dst, secs, extra)
    })
}

/// Pings sent while a single-stream iperf3 runs, after a second for it to reach full speed.
fn rtts_under_load(from: &str, dst: &str, secs: u32) -> anyhow::Result<Vec<f64>> {
    // Long enough to cover the ramp-up and the 2 s of pings.
    let load_secs = secs.max(4);
    std::thread::scope(|s| {
        let load = s.spawn(|| iperf3(from, dst, load_secs, &[]));
        std::thread::sleep(Duration::from_secs(1));
        let pings = rtts(from, dst);
        load.join()
            .map_err(|_| anyhow::anyhow!("the iperf3 load thread panicked"))?
            .context("the load under the pings")?;
        pings
    })
}

/// `PINGS` pings at `PING_INTERVAL`; the round-trip time of each, lost ones as infinite.
fn rtts(from: &str, dst: &str) -> anyhow::Result<Vec<f64>> {
    let count = PINGS.to_string();
    let args = [
        "ping",
        "-n",
        "-c",
        &count,
        "-i",
        PING_INTERVAL,
        "-W",
        "1",
        dst,
    ];
    // ping exits non-zero when a reply is missing: that is a result, read it anyway.
    let out = ns_output(from, &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("icmp_seq=") && !l.contains("DUP!"))
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .take(PINGS as usize)
        .collect();
    if rtts.is_empty() && !text.contains("packets transmitted") {
        anyhow::bail!(
            "ping printed nothing useful: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    rtts.resize(PINGS as usize, f64::INFINITY);
    Ok(rtts)
}

/// The gateways' CPU time so far (user + system, all threads), in seconds; `None` without
/// gateway processes or when one cannot be read (it exited).
fn gateways_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| process_cpu_seconds(pid)).sum()
}

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    liqonet_lab::procfs::cpu_time(pid).map(|t| t.as_secs_f64())
}

/// The `q` quantile (nearest rank) of `values`; infinite values (lost pings) sort last.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drop_counters_are_read_from_proc_text() {
        let dev = "Inter-|   Receive |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    5511      10    0    0    0     0          0         0     5511      10    0    0    0     0       0          0
  wg0x1: 1312800   25246    0    7    0     0          0         0 2243192588  448325    0 55025    0     0       0          0
  wan0@if3: 1  2    0    0    0     0          0         0 3  4    0 5    0     0       0          0
";
        let drops = device_tx_drops(dev);
        let of = |name: &str| drops.iter().find(|(n, _)| n == name).map(|d| d.1);
        assert_eq!(drops.len(), 3);
        assert_eq!(
            (of("wg0x1"), of("wan0@if3"), of("lo")),
            (Some(55025), Some(5), Some(0))
        );
        let snmp = "Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 416995 0 4915 1 4915 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 9 0 0 0 0
";
        assert_eq!(udp_rcvbuf_errors(snmp), 4915);
        assert_eq!(udp_rcvbuf_errors("Ip: a\nIp: 1\n"), 0);
    }

    #[test]
    fn quantiles_count_lost_pings_as_over_any_bound() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        v[0] = f64::INFINITY;
        v[1] = f64::INFINITY;
        assert_eq!(quantile(&v, 0.99), f64::INFINITY);
        assert_eq!(quantile(&v, 0.5), 52.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
