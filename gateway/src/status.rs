//! `liqonet-gateway status`: what the running gateway on this node says about each peer — phase,
//! endpoint, networks, handshake, latency, loss, traffic — and its drops by reason.
//!
//! The gateway answers `get=liqonet` on its WireGuard userspace API socket with this report as
//! JSON (`wg` never sends that verb), built from the snapshot the event loop publishes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::snapshot::Published;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    /// The data-path thread's real-time priority while busy; 0 when always at normal.
    #[serde(default)]
    pub realtime_priority: u8,
    pub peers: Vec<PeerReport>,
    /// Packets dropped since the start, by reason.
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    pub name: String,
    /// "up" or "down".
    pub phase: String,
    pub endpoint: Option<String>,
    /// `cidr → remapped` (as the peer numbers it → as home pods address it).
    pub networks: Vec<String>,
    pub handshake_age_seconds: Option<u64>,
    pub latency_last_ms: Option<f64>,
    pub latency_average_ms: Option<f64>,
    pub loss_percent: f64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The report for the gateway whose state `published` is.
pub fn report(
    interface: &str,
    private_key: &liqonet_proto::Key,
    listen_port: u16,
    published: &Published,
) -> Report {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    Report {
        interface: interface.to_string(),
        public_key: keys::public_of(private_key).to_base64(),
        listen_port,
        realtime_priority: published.totals.realtime_priority,
        peers: published
            .peers
            .iter()
            .map(|p| PeerReport {
                name: p.name.clone(),
                phase: if p.up { "up" } else { "down" }.into(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                networks: p
                    .networks
                    .iter()
                    .map(|n| format!("{} → {}", n.cidr, n.remapped))
                    .collect(),
                handshake_age_seconds: p.last_handshake_age.map(|a| a.as_secs()),
                latency_last_ms: ms(p.latency.last),
                latency_average_ms: ms(p.latency.average),
                loss_percent: p.latency.loss * 100.0,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect(),
        drops: published
            .drops
            .iter()
            .map(|(reason, n)| (reason.to_string(), *n))
            .collect(),
    }
}

/// Asks the gateway serving `interface` (its socket in `dir`) for its report.
pub fn fetch(dir: &Path, interface: &str) -> anyhow::Result<Report> {
    let path = dir.join(format!("{interface}.sock"));
    let mut s = UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no gateway answers on {} ({e}); is it running with interface {interface:?}?",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"get=liqonet\n\n")?;
    let mut text = String::new();
    s.take(16 << 20).read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the gateway's answer: {e}"))
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The report as a person reads it.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "interface {}  public key {}  port {}",
        r.interface, r.public_key, r.listen_port
    );
    let _ = match r.realtime_priority {
        0 => writeln!(out, "data path  normal priority"),
        p => writeln!(out, "data path  real-time priority {p} while busy"),
    };
    for p in &r.peers {
        let _ = writeln!(out, "\npeer {}: {}", p.name, p.phase);
        let _ = writeln!(
            out,
            "  endpoint   {}",
            p.endpoint.as_deref().unwrap_or("(none yet)")
        );
        for n in &p.networks {
            let _ = writeln!(out, "  network    {n}");
        }
        let _ = writeln!(
            out,
            "  handshake  {}",
            p.handshake_age_seconds
                .map_or("none".to_string(), |s| format!("{s} s ago"))
        );
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3} ms"));
        let _ = writeln!(
            out,
            "  latency    last {}, average {}, loss {:.1} %",
            show(p.latency_last_ms),
            show(p.latency_average_ms),
            p.loss_percent
        );
        let _ = writeln!(
            out,
            "  traffic    {} received, {} sent",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        );
    }
    let dropped: Vec<String> = r
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\ndrops      {}",
        if dropped.is_empty() {
            "none".to_string()
        } else {
            dropped.join(", ")
        }
    );
    out
}

/// Every peer up (the exit status of `status`: usable as a check).
pub fn all_up(r: &Report) -> bool {
    r.peers.iter().all(|p| p.phase == "up")
}
