//! Measuring an outage: a prober in a pod sends an ICMP echo every 10 ms, whatever happens (ping
//! itself slows down when its echoes go unanswered, which would stretch a gap), and stamps each
//! reply; the outage is the longest gap between replies, counted from the start and to the end.

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

const INTERVAL: Duration = Duration::from_millis(10);

pub struct Pinger {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<()>>,
    replies: Arc<Mutex<Vec<(u64, Instant)>>>,
    started: Instant,
    interval: Duration,
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
    /// Every silence added up: the gaps between replies longer than three intervals (an outage
    /// made of several gaps, as a rollout's, counts them all).
    pub silent: Duration,
}

impl Gaps {
    /// Echoes that went unanswered while later ones were answered (the last few, still in
    /// flight when the prober stopped, are not losses; a silence at the end shows in `longest`).
    pub fn lost(&self) -> u64 {
        self.last_answered.saturating_sub(self.received)
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"liqonet!");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The echo reply's sequence number, if `packet` (IPv4 header first) is a reply to `id`.
fn reply_seq(packet: &[u8], id: u16) -> Option<u16> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..ihl + 8)?;
    (icmp[0] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == id)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

impl Pinger {
    /// Starts probing `dst` (IPv4) from network namespace `ns` every 10 ms.
    pub fn start(ns: &str, dst: &str, label: &str) -> anyhow::Result<Pinger> {
        Self::start_every(ns, dst, label, INTERVAL)
    }

    /// Starts probing `dst` (IPv4) from network namespace `ns` every `interval`.
    pub fn start_every(
        ns: &str,
        dst: &str,
        label: &str,
        interval: Duration,
    ) -> anyhow::Result<Pinger> {
        let dst: Ipv4Addr = dst
            .parse()
            .with_context(|| format!("{dst} is not an IPv4 address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let id = (std::process::id() as u16) ^ (label.len() as u16).rotate_left(8);
        // The socket is made inside the pod's namespace, on a thread that enters it.
        let socket = crate::netns::in_netns(ns, || {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?;
        let rx = socket.try_clone()?;
        // Echoes sent so far: a reply's 16-bit sequence number is unwrapped against it.
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (flag, got, count) = (stop.clone(), replies.clone(), sent.clone());
        let receiver = std::thread::spawn(move || {
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    // SAFETY: recv initialised the first n bytes.
                    let bytes: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if let Some(seq) = reply_seq(&bytes, id) {
                        let n = count.load(Ordering::Relaxed);
                        let behind = u64::from((n as u16).wrapping_sub(seq));
                        got.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((n.saturating_sub(behind), Instant::now()));
                    }
                }
            }
        });
        let flag = stop.clone();
        let to = SocketAddr::V4(SocketAddrV4::new(dst, 0)).into();
        let sender = std::thread::spawn(move || {
            let mut n: u64 = 0;
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                sent.store(n, Ordering::Relaxed);
                // Unreachable destinations are answered with errors: the echo still counts.
                let _ = socket.send_to(&echo(id, n as u16), &to);
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            n
        });
        Ok(Pinger {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            replies,
            started: Instant::now(),
            interval,
            label: label.to_string(),
        })
    }

    /// When the first reply came, if one has.
    /// When the first probe was sent.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn first_reply(&self) -> Option<Instant> {
        let replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        replies.iter().map(|(_, at)| *at).min()
    }

    /// Stops probing and measures.
    pub fn stop(mut self) -> anyhow::Result<Gaps> {
        let ended = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.take().map_or(0, |t| t.join().unwrap_or(0));
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
        let replies = self
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(gaps(&replies, self.started, ended, sent, self.interval))
    }
}

/// The longest gap between `replies` (sequence, time), from `start` to `end`.
pub fn gaps(
    replies: &[(u64, Instant)],
    start: Instant,
    end: Instant,
    sent: u64,
    interval: Duration,
) -> Gaps {
    let mut last = start;
    let mut longest = Duration::ZERO;
    let mut silent = Duration::ZERO;
    let mut gap = |d: Duration| {
        longest = longest.max(d);
        if d > interval * 3 {
            silent += d;
        }
    };
    for (_, at) in replies {
        gap(at.saturating_duration_since(last));
        last = last.max(*at);
    }
    gap(end.saturating_duration_since(last));
    Gaps {
        longest,
        sent,
        received: replies.len() as u64,
        last_answered: replies.iter().map(|(s, _)| *s).max().unwrap_or(0),
        silent,
    }
}

/// Counts, every 100 ms, how many of the gateway nodes have the tunnel device up: how many
/// replicas forward (a replica handing over sets its device down before it lets the Lease go,
/// and removes it after).
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
                            .is_ok_and(|o| o.status.success() && link_up(&o.stdout))
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

/// Whether `ip link show` says the device is up (`UP` among its flags, `<…,UP,…>`).
fn link_up(show: &[u8]) -> bool {
    let text = String::from_utf8_lossy(show);
    text.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_counts_while_its_up_flag_is_set() {
        assert!(link_up(
            b"7: liqo0: <POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP> mtu 1420 qdisc"
        ));
        assert!(!link_up(
            b"7: liqo0: <POINTOPOINT,MULTICAST,NOARP> mtu 1420 qdisc noop"
        ));
        assert!(!link_up(
            b"7: liqo0: <NO-CARRIER,POINTOPOINT,UPPER> mtu 1420"
        ));
    }

    #[test]
    fn the_longest_gap_counts_the_edges_too() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ten = Duration::from_millis(10);
        let replies = [(1, at(10)), (2, at(20)), (152, at(1520)), (160, at(1600))];
        let g = gaps(&replies, t0, at(1700), 170, ten);
        assert_eq!(g.longest, Duration::from_millis(1500));
        assert_eq!((g.sent, g.received, g.lost()), (170, 4, 156));
        // Every silence over three intervals adds up: 1500 + 80 + the 100 at the end.
        assert_eq!(g.silent, Duration::from_millis(1680));
        // Nothing answered at all: the whole run is the gap.
        assert_eq!(
            gaps(&[], t0, at(2000), 200, ten).longest,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn echoes_carry_a_valid_checksum_and_replies_are_matched() {
        let p = echo(0x1234, 7);
        assert_eq!(checksum(&p), 0);
        let mut reply = vec![0x45u8; 20];
        reply.extend_from_slice(&p);
        reply[20] = 0;
        assert_eq!(reply_seq(&reply, 0x1234), Some(7));
        assert_eq!(reply_seq(&reply, 0x4321), None);
    }
}
