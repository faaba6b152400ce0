//! An established tunnel measured before and during a handshake flood at home's gateway, with
//! foreign's gateway restarted in the middle of it: the hardening test (debug build) and
//! `liqonet-bench flood` (release) both run this.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::attack::{stranger_initiation, Flood};
use crate::netns::wait_for;
use crate::outage::Gaps;
use crate::probe::{iperf3, metric, ping, snmp};
use crate::Lab;

pub struct FloodReport {
    /// Initiations per second the flood sent.
    pub rate: f64,
    pub sent: u64,
    /// Single-stream TCP home → foreign, medians of the runs, bits per second.
    pub before_bps: f64,
    pub during_bps: f64,
    /// 10 ms pings both ways while the stream ran under the flood.
    pub pings: Vec<(String, Gaps)>,
    /// From foreign's restart (during the flood) to the first ping through.
    pub back_after: Option<Duration>,
    /// What home's gateway counted.
    pub rate_limited: f64,
    pub cookie_replies: f64,
    pub unknown_peer: f64,
    /// Datagrams the kernel dropped on home's full socket buffer.
    pub overflowed: u64,
}

impl FloodReport {
    pub fn throughput_kept(&self) -> f64 {
        self.during_bps / self.before_bps.max(1.0)
    }

    /// Echoes lost of those sent, both ways together.
    pub fn ping_loss(&self) -> f64 {
        let lost: u64 = self.pings.iter().map(|(_, g)| g.lost()).sum();
        let sent: u64 = self.pings.iter().map(|(_, g)| g.sent).sum();
        lost as f64 / sent.max(1) as f64
    }

    pub fn print(&self) {
        println!(
            "flood of {:.0} valid-MAC1 initiations/s from one source: single stream {:.2} → {:.2} Gbit/s ({:.0} % kept); ping loss {:.2} %; foreign restarted in it back after {}",
            self.rate,
            self.before_bps / 1e9,
            self.during_bps / 1e9,
            self.throughput_kept() * 100.0,
            self.ping_loss() * 100.0,
            self.back_after.map_or("never".to_string(), |d| format!("{d:.2?}")),
        );
        println!(
            "  home counted: {:.0} rate-limited, {:.0} cookie replies sent, {:.0} unknown peer; {} lost on a full socket buffer",
            self.rate_limited, self.cookie_replies, self.unknown_peer, self.overflowed
        );
        for (label, g) in &self.pings {
            println!("  pings {label}: {g:?}");
        }
    }
}

fn median_bps(ns: &str, dst: &str, secs: u32, runs: usize) -> anyhow::Result<f64> {
    let mut v = (0..runs)
        .map(|_| iperf3(ns, dst, secs).map(|r| r.bits_per_second))
        .collect::<anyhow::Result<Vec<_>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Floods home's gateway from a WAN host at `rate` initiations a second; `runs` iperf3 runs of
/// `secs` before and during; then restarts foreign's gateway while the flood goes on.
pub fn measure(lab: &mut Lab, rate: u32, secs: u32, runs: usize) -> anyhow::Result<FloodReport> {
    let evil = lab.add_wan_host("evil", 66)?;
    let (home, foreign) = (lab.cluster("home").clone(), lab.cluster("foreign").clone());
    let (from, dst) = (home.main_pod().ns.clone(), foreign.main_pod().ip.clone());
    let before_bps = median_bps(&from, &dst, secs, runs)?;
    let overflows = || snmp(home.gw_ns(), "Udp", "RcvbufErrors").unwrap_or(0);
    let overflowed_before = overflows();
    let to: SocketAddr = home.endpoint().parse()?;
    let init = stranger_initiation(&home.public_key)?;
    let flood = Flood::start(&evil, "192.168.250.66:5555".parse()?, to, &init, rate)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let probes = lab.pingers()?;
    let during_bps = median_bps(&from, &dst, secs, runs)?;
    let pings = probes
        .into_iter()
        .map(|p| {
            let label = p.label.clone();
            p.stop().map(|g| (label, g))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let restarted = Instant::now();
    let config = lab.liqonet_config(1);
    lab.restart_gateway_with("foreign", &config)?;
    let back = wait_for(Duration::from_secs(10), || {
        ping(&from, &dst, 1).is_ok_and(|p| p.received == 1)
    });
    let back_after = back.then(|| restarted.elapsed());
    let sent = flood.stop();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let m = lab.metrics("home")?;
    let sample = |s: &str| metric(&m, s).unwrap_or(0.0);
    Ok(FloodReport {
        rate: sent as f64 / elapsed.as_secs_f64(),
        sent,
        before_bps,
        during_bps,
        pings,
        back_after,
        rate_limited: sample("liqonet_dropped_packets_total{reason=\"handshake_rate_limited\"}"),
        cookie_replies: sample("liqonet_handshake_messages_sent_total{type=\"cookie_reply\"}"),
        unknown_peer: sample("liqonet_dropped_packets_total{reason=\"unknown_peer\"}"),
        overflowed: overflows().saturating_sub(overflowed_before),
    })
}
