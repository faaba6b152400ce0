//! In-tunnel health: every peer is probed through its session once a [`Probing::interval`], and a
//! liqonet peer answers; the round trips give latency and loss, and a peer that leaves
//! [`Probing::misses`] probes in a row unanswered is down even while WireGuard keeps a session.
//!
//! A probe is an IPv4 packet between two link-local addresses with protocol 253 (reserved for
//! experiments, RFC 3692). It never reaches a TUN: the engine answers it. A stock WireGuard peer
//! drops it (its source is outside the allowed IPs), so a peer that has never answered is judged
//! by its session alone: only a peer known to answer can be declared down by silence.

use std::time::Duration;

use crate::wire::checksum;

pub const PROBE_LEN: usize = 44;
const PROTOCOL: u8 = 253;
const MAGIC: &[u8; 8] = b"LQNPROBE";
const REQUEST: u8 = 1;
const REPLY: u8 = 2;
const SRC: [u8; 4] = [169, 254, 248, 1];
const DST: [u8; 4] = [169, 254, 248, 2];
/// Probes the statistics look back over.
pub const WINDOW: usize = 60;

/// When and how hard peers are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probing {
    /// Off: peers are judged by their sessions alone.
    pub enabled: bool,
    pub interval: Duration,
    /// Unanswered probes in a row that make a peer down.
    pub misses: u32,
}

impl Default for Probing {
    fn default() -> Self {
        Probing::from(liqonet_proto::config::ProbeConfig::default())
    }
}

impl From<liqonet_proto::config::ProbeConfig> for Probing {
    fn from(c: liqonet_proto::config::ProbeConfig) -> Self {
        Probing {
            enabled: c.interval_ms > 0,
            interval: Duration::from_millis(u64::from(c.interval_ms)),
            misses: c.misses,
        }
    }
}

/// A probe packet: `kind`, its sequence number and the sender's clock when it left.
pub fn write(buf: &mut [u8; PROBE_LEN], kind: u8, seq: u32, sent_nanos: u64) {
    buf.fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(PROBE_LEN as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = PROTOCOL;
    buf[12..16].copy_from_slice(&SRC);
    buf[16..20].copy_from_slice(&DST);
    let c = checksum::finish(checksum::sum(&buf[..20], 0));
    checksum::write(buf, 10, c);
    buf[20..28].copy_from_slice(MAGIC);
    buf[28] = kind;
    buf[32..36].copy_from_slice(&seq.to_be_bytes());
    buf[36..44].copy_from_slice(&sent_nanos.to_be_bytes());
}

pub fn request(buf: &mut [u8; PROBE_LEN], seq: u32, sent_nanos: u64) {
    write(buf, REQUEST, seq, sent_nanos);
}

/// What a decrypted packet is, as far as probing goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    NotAProbe,
    /// Answer it with the same sequence and time.
    Request {
        seq: u32,
        sent_nanos: u64,
    },
    Reply {
        seq: u32,
        sent_nanos: u64,
    },
}

pub fn parse(packet: &[u8]) -> Parsed {
    if packet.len() != PROBE_LEN
        || packet[9] != PROTOCOL
        || packet[12..16] != SRC
        || packet[16..20] != DST
        || &packet[20..28] != MAGIC
    {
        return Parsed::NotAProbe;
    }
    let seq = u32::from_be_bytes([packet[32], packet[33], packet[34], packet[35]]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&packet[36..44]);
    let sent_nanos = u64::from_be_bytes(t);
    match packet[28] {
        REQUEST => Parsed::Request { seq, sent_nanos },
        REPLY => Parsed::Reply { seq, sent_nanos },
        _ => Parsed::NotAProbe,
    }
}

pub fn reply(buf: &mut [u8; PROBE_LEN], seq: u32, sent_nanos: u64) {
    write(buf, REPLY, seq, sent_nanos);
}

/// Latency and loss over the last [`WINDOW`] probes, as Submariner reports a connection's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub last: Option<Duration>,
    pub min: Option<Duration>,
    pub average: Option<Duration>,
    pub max: Option<Duration>,
    pub std_dev: Option<Duration>,
    /// Probes unanswered of those sent in the window, 0.0 to 1.0.
    pub loss: f64,
    pub sent: u64,
    pub lost: u64,
}

/// Upper bounds of the round-trip histogram's buckets, in seconds (then +Inf): from a LAN's
/// tenth of a millisecond to a second across continents.
pub const RTT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every answered probe's round trip since the peer was added: per-bucket counts (the last is
/// +Inf) and their sum, as a Prometheus histogram wants them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttHistogram {
    pub counts: [u64; RTT_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

impl RttHistogram {
    pub fn observe(&mut self, rtt: Duration) {
        let s = rtt.as_secs_f64();
        let i = RTT_BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(RTT_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_seconds += s;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One peer's probes. Fixed-size: nothing is allocated as probes come and go.
#[derive(Debug, Clone)]
pub struct Health {
    next_seq: u32,
    /// The probe in flight: its sequence number.
    outstanding: Option<u32>,
    /// Unanswered in a row.
    misses: u32,
    /// The peer has answered a probe once: it is a liqonet peer, and silence means trouble.
    answers: bool,
    /// Round trips in microseconds, `None` for a lost probe; a ring.
    window: [Option<u32>; WINDOW],
    filled: usize,
    pos: usize,
    sent: u64,
    lost: u64,
    histogram: RttHistogram,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            next_seq: 0,
            outstanding: None,
            misses: 0,
            answers: false,
            window: [None; WINDOW],
            filled: 0,
            pos: 0,
            sent: 0,
            lost: 0,
            histogram: RttHistogram::default(),
        }
    }
}

impl Health {
    /// A new round: the probe in flight, if any, is lost; returns the next sequence number.
    pub fn next_probe(&mut self) -> u32 {
        if self.outstanding.take().is_some() {
            self.misses += 1;
            self.lost += 1;
            self.record(None);
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        self.outstanding = Some(self.next_seq);
        self.sent += 1;
        self.next_seq
    }

    /// A round in which no probe could be sent (no session): it counts as lost.
    pub fn skipped(&mut self) {
        if self.outstanding.take().is_some() {
            self.lost += 1;
            self.record(None);
        }
        self.misses += 1;
    }

    /// A reply arrived with `seq` after `rtt`; stale or unknown replies change nothing.
    pub fn answered(&mut self, seq: u32, rtt: Duration) -> bool {
        if self.outstanding != Some(seq) {
            return false;
        }
        self.outstanding = None;
        self.misses = 0;
        self.answers = true;
        self.histogram.observe(rtt);
        self.record(Some(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX)));
        true
    }

    fn record(&mut self, rtt: Option<u32>) {
        self.window[self.pos] = rtt;
        self.pos = (self.pos + 1) % WINDOW;
        self.filled = (self.filled + 1).min(WINDOW);
    }

    /// Silent for `misses` probes in a row, and known to answer.
    pub fn silent(&self, misses: u32) -> bool {
        self.answers && self.misses >= misses
    }

    pub fn misses(&self) -> u32 {
        self.misses
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn histogram(&self) -> &RttHistogram {
        &self.histogram
    }

    pub fn latency(&self) -> Latency {
        let recent = (0..self.filled).map(|i| self.window[(self.pos + WINDOW - 1 - i) % WINDOW]);
        let mut l = Latency {
            sent: self.sent,
            lost: self.lost,
            ..Latency::default()
        };
        let (mut n, mut sum, mut sq, mut lost) = (0u64, 0f64, 0f64, 0u64);
        for r in recent {
            let Some(us) = r else {
                lost += 1;
                continue;
            };
            let d = Duration::from_micros(u64::from(us));
            // Newest first: the first answer met is the last round trip.
            l.last = l.last.or(Some(d));
            l.min = Some(l.min.map_or(d, |m| m.min(d)));
            l.max = Some(l.max.map_or(d, |m| m.max(d)));
            n += 1;
            sum += f64::from(us);
            sq += f64::from(us) * f64::from(us);
        }
        if n > 0 {
            let mean = sum / n as f64;
            l.average = Some(Duration::from_secs_f64(mean / 1e6));
            let var = (sq / n as f64 - mean * mean).max(0.0);
            l.std_dev = Some(Duration::from_secs_f64(var.sqrt() / 1e6));
        }
        if self.filled > 0 {
            l.loss = lost as f64 / self.filled as f64;
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_round_trips_through_its_parser() {
        let mut b = [0u8; PROBE_LEN];
        request(&mut b, 7, 123_456);
        assert_eq!(
            parse(&b),
            Parsed::Request {
                seq: 7,
                sent_nanos: 123_456
            }
        );
        assert_eq!(checksum::fold(checksum::sum(&b[..20], 0)), 0xffff);
        reply(&mut b, 7, 123_456);
        assert!(matches!(parse(&b), Parsed::Reply { seq: 7, .. }));
        b[21] ^= 1;
        assert_eq!(parse(&b), Parsed::NotAProbe);
        assert_eq!(parse(&b[..40]), Parsed::NotAProbe);
    }

    #[test]
    fn latency_and_loss_over_the_window_and_silence_only_for_a_peer_that_answers() {
        let mut h = Health::default();
        // A stock peer never answers: never "silent".
        for _ in 0..10 {
            h.next_probe();
        }
        assert!(!h.silent(5));
        let mut h = Health::default();
        for ms in [10u64, 20, 30] {
            let seq = h.next_probe();
            assert!(h.answered(seq, Duration::from_millis(ms)));
        }
        let seq = h.next_probe();
        assert!(
            !h.answered(seq + 1, Duration::from_millis(1)),
            "unknown seq"
        );
        h.next_probe(); // the previous one is lost
        let l = h.latency();
        assert_eq!(l.last, Some(Duration::from_millis(30)));
        assert_eq!(l.min, Some(Duration::from_millis(10)));
        assert_eq!(l.max, Some(Duration::from_millis(30)));
        assert_eq!(l.average, Some(Duration::from_millis(20)));
        let sd = l.std_dev.unwrap().as_secs_f64() * 1000.0;
        assert!((sd - 8.165).abs() < 0.01, "{sd}");
        assert_eq!((l.sent, l.lost), (5, 1));
        assert!((l.loss - 0.25).abs() < 1e-9);
        // 10 ms falls in the 10 ms bucket (le is inclusive), 20 and 30 ms in the 25 and 50 ms ones.
        let hist = h.histogram();
        assert_eq!(hist.count(), 3);
        assert_eq!(hist.counts[6..9], [1, 1, 1]);
        assert!((hist.sum_seconds - 0.06).abs() < 1e-9);
        for _ in 0..4 {
            h.next_probe();
        }
        assert!(h.silent(5));
        let seq = h.next_probe();
        h.answered(seq, Duration::from_millis(5));
        assert!(!h.silent(5));
    }
}
