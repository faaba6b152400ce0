//! The tools run from pods (ping, curl, iperf3) and what their output says.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns::{ns_output, ns_run, wait_for};

#[derive(Debug, Clone, Copy)]
pub struct Ping {
    pub sent: u32,
    pub received: u32,
    pub rtt_avg_ms: Option<f64>,
}

impl Ping {
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * f64::from(self.sent - self.received) / f64::from(self.sent)
        }
    }
}

/// `ping -c count` from namespace `ns`; a ping that gets no answer is a result, not an error.
pub fn ping(ns: &str, dst: &str, count: u32) -> anyhow::Result<Ping> {
    ping_with(ns, dst, count, &[])
}

pub fn ping_with(ns: &str, dst: &str, count: u32, extra: &[&str]) -> anyhow::Result<Ping> {
    let count_s = count.to_string();
    let mut args = vec!["ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", "1"];
    args.extend_from_slice(extra);
    args.push(dst);
    let out = ns_output(ns, &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| {
        format!(
            "unexpected ping output: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn parse_ping(text: &str) -> Option<Ping> {
    let stats = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = stats.split(',').map(|f| {
        f.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    });
    let sent = nums.next()??;
    let received = nums.next()??;
    let rtt_avg_ms = text
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok());
    Some(Ping {
        sent,
        received,
        rtt_avg_ms,
    })
}

/// Pings until one answer comes back (the first packets wait for a handshake).
pub fn wait_reachable(ns: &str, dst: &str, timeout: Duration) -> bool {
    wait_for(timeout, || ping(ns, dst, 1).is_ok_and(|p| p.received == 1))
}

/// The body of `url`, fetched with curl from namespace `ns`.
pub fn curl(ns: &str, url: &str) -> anyhow::Result<String> {
    ns_run(ns, &["curl", "-sS", "--max-time", "10", url])
}

#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    pub bits_per_second: f64,
    pub bytes: u64,
    pub retransmits: u64,
    /// UDP runs: datagrams lost, in percent, and in number.
    pub lost_percent: f64,
    pub lost_datagrams: u64,
}

/// A TCP iperf3 run of `seconds` from namespace `ns` to the server at `dst`.
pub fn iperf3(ns: &str, dst: &str, seconds: u32) -> anyhow::Result<Iperf> {
    iperf3_with(ns, dst, seconds, &[])
}

/// An iperf3 run with extra options (`-P 4`, `-R`, `-u -b 1G`...); figures as received.
pub fn iperf3_with(ns: &str, dst: &str, seconds: u32, extra: &[&str]) -> anyhow::Result<Iperf> {
    let secs = seconds.to_string();
    let mut args = vec!["iperf3", "-c", dst, "-t", &secs, "-J"];
    args.extend_from_slice(extra);
    let out = ns_output(ns, &args)?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    if let Some(e) = json.get("error") {
        bail!("iperf3: {e}");
    }
    let end = &json["end"];
    if extra.contains(&"-u") {
        let sum = &end["sum"];
        return Ok(Iperf {
            bits_per_second: sum["bits_per_second"]
                .as_f64()
                .context("no bits_per_second")?
                * (1.0 - sum["lost_percent"].as_f64().unwrap_or(0.0) / 100.0),
            bytes: sum["bytes"].as_u64().unwrap_or(0),
            retransmits: 0,
            lost_percent: sum["lost_percent"].as_f64().unwrap_or(100.0),
            lost_datagrams: sum["lost_packets"].as_u64().unwrap_or(0),
        });
    }
    let received = &end["sum_received"];
    Ok(Iperf {
        bits_per_second: received["bits_per_second"]
            .as_f64()
            .context("no bits_per_second")?,
        bytes: received["bytes"].as_u64().unwrap_or(0),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        lost_percent: 0.0,
        lost_datagrams: 0,
    })
}

/// Busy CPU time of the whole machine so far, in seconds (`/proc/stat`: all but idle and iowait).
pub fn cpu_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: f64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// The public key of a private key, computed by the gateway binary (`pubkey`).
pub fn pubkey(gateway: &Path, private: &str) -> anyhow::Result<String> {
    pipe(&[gateway.to_str().unwrap_or_default(), "pubkey"], private)
}

/// Runs a command with `input` on stdin; returns trimmed stdout.
pub fn pipe(args: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {:?}", args[0]))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A counter of `/proc/net/snmp` in namespace `ns`, e.g. `snmp(ns, "Udp", "InDatagrams")`;
/// IPv6 ones (`"Icmp6"`, `"Ip6"`, `"Udp6"`) come from `/proc/net/snmp6`.
pub fn snmp(ns: &str, group: &str, field: &str) -> anyhow::Result<u64> {
    if group.ends_with('6') {
        let text = ns_run(ns, &["cat", "/proc/net/snmp6"])?;
        let name = format!("{group}{field}");
        let value = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&name)
                    .filter(|v| v.starts_with(char::is_whitespace))
            })
            .with_context(|| format!("no {name}"))?;
        return Ok(value.trim().parse()?);
    }
    let text = ns_run(ns, &["cat", "/proc/net/snmp"])?;
    let prefix = format!("{group}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = rows.next().zip(rows.next()).context("no such group")?;
    let col = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("no {group} {field}"))?;
    let value = values.split_whitespace().nth(col).context("short row")?;
    Ok(value.parse()?)
}

/// The value of a Prometheus sample, e.g. `liqonet_dropped_packets_total{reason="no_route"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summaries() {
        let ok = "--- 10.245.0.10 ping statistics ---\n5 packets transmitted, 5 received, 0% packet loss, time 801ms\nrtt min/avg/max/mdev = 0.211/0.302/0.480/0.090 ms\n";
        let p = parse_ping(ok).unwrap();
        assert_eq!((p.sent, p.received), (5, 5));
        assert_eq!(p.rtt_avg_ms, Some(0.302));
        let lost = "3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        let p = parse_ping(lost).unwrap();
        assert_eq!((p.received, p.rtt_avg_ms), (0, None));
        assert_eq!(p.loss_percent(), 100.0);
    }

    #[test]
    fn reads_prometheus_samples() {
        let text = "liqonet_peer_up{peer=\"foreign\"} 1\nliqonet_dropped_packets_total{reason=\"no_route\"} 7\n";
        assert_eq!(
            metric(text, "liqonet_dropped_packets_total{reason=\"no_route\"}"),
            Some(7.0)
        );
        assert_eq!(metric(text, "liqonet_peer_up{peer=\"home\"}"), None);
    }
}
