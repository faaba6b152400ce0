//! Measuring an outage: a pod pings another every 10 ms (`ping -D`, which stamps each reply);
//! the outage is the longest gap between replies, counted from the start and to the end too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

pub struct Pinger {
    child: Child,
    out: PathBuf,
    started: f64,
    pub label: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Gaps {
    /// The longest time without a reply.
    pub longest: Duration,
    pub sent: u64,
    pub received: u64,
    /// The highest sequence number answered.
    pub last_answered: u64,
}

impl Gaps {
    /// Echoes that went unanswered while later ones were answered (the last few, still in
    /// flight when ping stopped, are not losses; a silence at the end shows in `longest`).
    pub fn lost(&self) -> u64 {
        self.last_answered.saturating_sub(self.received)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Pinger {
    /// Starts pinging `dst` from namespace `ns` every 10 ms; output goes to `dir`.
    pub fn start(ns: &str, dst: &str, dir: &Path, label: &str) -> anyhow::Result<Pinger> {
        let out = dir.join(format!("ping-{label}.txt"));
        let file = fs::File::create(&out)?;
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.01", "-W", "1", dst,
            ])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ping")?;
        Ok(Pinger {
            child,
            out,
            started: unix_now(),
            label: label.to_string(),
        })
    }

    /// Stops pinging and measures.
    pub fn stop(mut self) -> anyhow::Result<Gaps> {
        let ended = unix_now();
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out)?;
        Ok(gaps(&text, self.started, ended))
    }
}

/// The longest gap between replies in `ping -D` output, from `start` to `end` (Unix seconds).
pub fn gaps(text: &str, start: f64, end: f64) -> Gaps {
    let mut last = start;
    let mut longest = 0.0f64;
    let mut received = 0;
    let mut max_seq = 0u64;
    for line in text.lines() {
        if !line.contains("bytes from") {
            continue;
        }
        let Some(stamp) = line
            .strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        if let Some(seq) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u64>().ok())
        {
            max_seq = max_seq.max(seq);
        }
        received += 1;
        longest = longest.max(stamp - last);
        last = stamp;
    }
    longest = longest.max(end - last);
    // The summary line says how many were sent.
    let sent = text
        .lines()
        .find_map(|l| {
            l.split(" packets transmitted")
                .next()
                .filter(|_| l.contains(" packets transmitted"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(max_seq);
    Gaps {
        longest: Duration::from_secs_f64(longest.max(0.0)),
        sent,
        received,
        last_answered: max_seq,
    }
}

/// Counts, every 100 ms, how many of the gateway nodes have the tunnel device: how many
/// replicas forward.
pub struct TunWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<usize>>,
}

impl TunWatch {
    pub fn start(gateway_namespaces: Vec<String>, device: &str) -> TunWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let device = device.to_string();
        let thread = std::thread::spawn(move || {
            let mut counts = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let n = gateway_namespaces
                    .iter()
                    .filter(|ns| {
                        crate::netns::ns_output(ns, &["ip", "link", "show", &device])
                            .is_ok_and(|o| o.status.success())
                    })
                    .count();
                counts.push(n);
                std::thread::sleep(Duration::from_millis(100));
            }
            counts
        });
        TunWatch { stop, thread }
    }

    /// Every sample's count of forwarding replicas.
    pub fn stop(self) -> Vec<usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_the_edges_too() {
        let text = "PING 10.0.3.10 (10.0.3.10) 56(84) bytes of data.\n\
            [100.010] 64 bytes from 10.0.3.10: icmp_seq=1 ttl=61 time=0.3 ms\n\
            [100.020] 64 bytes from 10.0.3.10: icmp_seq=2 ttl=61 time=0.3 ms\n\
            [101.520] 64 bytes from 10.0.3.10: icmp_seq=152 ttl=61 time=0.3 ms\n\
            \n--- 10.0.3.10 ping statistics ---\n\
            160 packets transmitted, 3 received, 98% packet loss, time 1600ms\n";
        let g = gaps(text, 100.0, 101.6);
        assert!((g.longest.as_secs_f64() - 1.5).abs() < 1e-6, "{g:?}");
        assert_eq!((g.sent, g.received, g.lost()), (160, 3, 149));
        // Nothing answered at all: the whole run is the gap.
        let g = gaps("", 5.0, 7.0);
        assert!((g.longest.as_secs_f64() - 2.0).abs() < 1e-6);
    }
}
