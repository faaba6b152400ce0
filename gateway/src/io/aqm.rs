//! Active queue management: CoDel (RFC 8289) on the two queues a gateway stands in front of.
//!
//! Without it, nothing drops on the tunnel's path (the TUN queue and the socket buffers are
//! large so that bursts of UDP survive the loop being off the CPU), and a TCP stream grows its
//! window until megabytes stand in those queues: every packet behind them, a ping or a request,
//! waits 5–15 ms. CoDel watches how long packets waited; once the shortest wait stayed above
//! `target` for an `interval`, it signals one packet, then more often (interval / √count) until
//! the wait falls under `target` again. The signal is a CE mark on a packet whose sender said it
//! understands ECN, else a drop, and only of TCP: a drop tells TCP to slow down, while a UDP or
//! ICMP packet dropped is just lost (a ping lost under load, a UDP stream with holes).
//!
//! The two queues: pods' packets wait in the TUN's queue (the loop reads them into its own and
//! stamps each read, see `event_loop`), peers' datagrams in the underlay socket's buffer (the
//! kernel stamps each one, `SO_TIMESTAMPNS`).

use std::time::{Duration, Instant};

/// How long a packet may wait before CoDel acts, once it has waited so long for an interval.
/// RFC 8289's 5 ms / 100 ms are for the Internet's RTTs; between clusters a standing queue
/// of a millisecond is already as long as the path.
pub const TARGET: Duration = Duration::from_millis(1);
pub const INTERVAL: Duration = Duration::from_millis(20);

/// CoDel with the gateway's settings.
pub fn codel() -> Codel {
    // TEMP: tuning knobs while measuring.
    let env = |k: &str, d: Duration| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(d, Duration::from_micros)
    };
    Codel::new(
        env("LIQONET_AQM_TARGET_US", TARGET),
        env("LIQONET_AQM_INTERVAL_US", INTERVAL),
    )
}

/// What CoDel did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Congestion Experienced set in its ECN field (the checksum kept right).
    Marked,
    Drop,
}

/// Drops and marks so far, for metrics and `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    pub dropped: u64,
    pub marked: u64,
}

/// One queue's CoDel state.
#[derive(Debug)]
pub struct Codel {
    target: Duration,
    interval: Duration,
    /// When the wait, above `target` since, will have been so for an interval.
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Instant,
    count: u32,
    last_count: u32,
    pub signals: Signals,
}

impl Codel {
    pub fn new(target: Duration, interval: Duration) -> Self {
        Codel {
            target,
            interval,
            first_above: None,
            dropping: false,
            drop_next: Instant::now(),
            count: 0,
            last_count: 0,
            signals: Signals::default(),
        }
    }

    /// A packet leaving the queue after `sojourn`: passed, marked or to be dropped. A packet
    /// that cannot carry the signal (not TCP, not ECN-capable) passes and leaves the signal due
    /// for the next one that can.
    pub fn admit(&mut self, packet: &mut [u8], sojourn: Duration, now: Instant) -> Verdict {
        if !self.due(sojourn, now) {
            return Verdict::Pass;
        }
        let verdict = signal(packet);
        match verdict {
            Verdict::Pass => return Verdict::Pass,
            Verdict::Marked => self.signals.marked += 1,
            Verdict::Drop => self.signals.dropped += 1,
        }
        self.signalled(now);
        verdict
    }

    /// RFC 8289's dequeue, one packet at a time: whether this packet should carry a signal.
    fn due(&mut self, sojourn: Duration, now: Instant) -> bool {
        let ok_to_drop = if sojourn < self.target {
            self.first_above = None;
            false
        } else {
            match self.first_above {
                None => {
                    self.first_above = Some(now + self.interval);
                    false
                }
                Some(at) => now >= at,
            }
        };
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return false;
            }
            return now >= self.drop_next;
        }
        ok_to_drop
    }

    /// The packet `due` chose carried the signal: schedule the next one.
    fn signalled(&mut self, now: Instant) {
        if self.dropping {
            self.count += 1;
            self.drop_next = self.control_law(self.drop_next);
            return;
        }
        self.dropping = true;
        // Dropping again soon after the last episode: start near its rate, not from scratch.
        let delta = self.count.saturating_sub(self.last_count);
        let recent = now.saturating_duration_since(self.drop_next) < self.interval * 16;
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = self.control_law(now);
    }

    fn control_law(&self, t: Instant) -> Instant {
        t + self.interval.div_f64(f64::from(self.count.max(1)).sqrt())
    }
}

const TCP: u8 = 6;

/// Signals congestion on one IP packet: CE if it is ECN-capable, a drop if it is TCP.
fn signal(packet: &mut [u8]) -> Verdict {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ecn = packet[1] & 0b11;
            if ecn != 0 {
                if ecn != 0b11 {
                    // RFC 1624: the checksum follows a 16-bit word that changed.
                    let old = u16::from_be_bytes([packet[0], packet[1]]);
                    packet[1] |= 0b11;
                    let new = u16::from_be_bytes([packet[0], packet[1]]);
                    let sum = u16::from_be_bytes([packet[10], packet[11]]);
                    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(new);
                    acc = (acc & 0xffff) + (acc >> 16);
                    acc = (acc & 0xffff) + (acc >> 16);
                    packet[10..12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
                }
                Verdict::Marked
            } else if packet[9] == TCP {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }
        Some(6) if packet.len() >= 40 => {
            // The traffic class straddles bytes 0 and 1; ECN is its low two bits.
            let ecn = (packet[1] >> 4) & 0b11;
            if ecn != 0 {
                packet[1] |= 0b11 << 4;
                Verdict::Marked
            } else if packet[6] == TCP {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }
        _ => Verdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(1);
    const INTERVAL: Duration = Duration::from_millis(20);

    fn ipv4(proto: u8, ecn: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[1] = ecn;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn ipv6(next: u8, ecn: u8) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[1] = ecn << 4;
        p[6] = next;
        p
    }

    fn checksum(header: &[u8]) -> u16 {
        let mut sum: u32 = header
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Feeds one packet every `gap` for `span`, each having waited `sojourn`; returns the
    /// times (since the start) of the packets signalled.
    fn run(codel: &mut Codel, start: Instant, span: Duration, sojourn: Duration) -> Vec<Duration> {
        let gap = Duration::from_micros(100);
        let mut signalled = Vec::new();
        let mut t = Duration::ZERO;
        while t < span {
            let mut p = ipv4(TCP, 0);
            if codel.admit(&mut p, sojourn, start + t) == Verdict::Drop {
                signalled.push(t);
            }
            t += gap;
        }
        signalled
    }

    #[test]
    fn a_short_wait_is_never_signalled() {
        let mut codel = Codel::new(TARGET, INTERVAL);
        let start = Instant::now();
        assert!(run(&mut codel, start, Duration::from_secs(1), TARGET / 2).is_empty());
        assert_eq!(codel.signals, Signals::default());
    }

    #[test]
    fn a_wait_standing_above_target_for_an_interval_is_signalled_ever_more_often() {
        let mut codel = Codel::new(TARGET, INTERVAL);
        let start = Instant::now();
        let drops = run(&mut codel, start, Duration::from_millis(200), TARGET * 3);
        // Nothing for the first interval: a burst that drains within it is left alone.
        assert!(drops[0] >= INTERVAL, "{drops:?}");
        assert!(drops[0] < INTERVAL + Duration::from_millis(1), "{drops:?}");
        // Then interval/√n apart: the gaps shrink.
        let gaps: Vec<_> = drops.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 5, "{drops:?}");
        assert!(gaps.windows(2).all(|g| g[1] <= g[0]), "{gaps:?}");
        assert!(gaps[0] > INTERVAL / 2 && gaps[0] <= INTERVAL, "{gaps:?}");
        assert_eq!(codel.signals.dropped, drops.len() as u64);
        // The wait falls under target: signals stop at once.
        let later = start + Duration::from_millis(200);
        assert!(run(&mut codel, later, Duration::from_millis(100), TARGET / 2).is_empty());
    }

    #[test]
    fn a_burst_shorter_than_the_interval_is_not_signalled() {
        let mut codel = Codel::new(TARGET, INTERVAL);
        let start = Instant::now();
        let burst = run(&mut codel, start, INTERVAL / 2, TARGET * 10);
        let after = run(&mut codel, start + INTERVAL / 2, INTERVAL * 5, TARGET / 2);
        assert!(burst.is_empty() && after.is_empty());
    }

    #[test]
    fn ecn_capable_packets_are_marked_with_a_valid_checksum_and_others_pass_or_drop() {
        for ecn in [0b01, 0b10, 0b11] {
            let mut p = ipv4(17, ecn);
            assert_eq!(signal(&mut p), Verdict::Marked);
            assert_eq!(p[1] & 0b11, 0b11);
            assert_eq!(checksum(&p[..20]), 0, "the header still sums to zero");
            let mut p = ipv6(17, ecn);
            assert_eq!(signal(&mut p), Verdict::Marked);
            assert_eq!((p[1] >> 4) & 0b11, 0b11);
            assert_eq!(p[0], 0x60, "the version and the rest of the class are kept");
        }
        assert_eq!(signal(&mut ipv4(TCP, 0)), Verdict::Drop);
        assert_eq!(signal(&mut ipv6(TCP, 0)), Verdict::Drop);
        // ICMP (a ping) and UDP are never dropped: losing them signals nothing to anyone.
        for p in [ipv4(1, 0), ipv4(17, 0), ipv6(58, 0), ipv6(17, 0)] {
            let before = p.clone();
            let mut p = p;
            assert_eq!(signal(&mut p), Verdict::Pass);
            assert_eq!(p, before);
        }
        assert_eq!(signal(&mut []), Verdict::Pass);
        assert_eq!(signal(&mut [0x45; 10]), Verdict::Pass);
    }

    #[test]
    fn a_due_signal_waits_for_a_packet_that_can_carry_it() {
        let mut codel = Codel::new(TARGET, INTERVAL);
        let start = Instant::now();
        let mut ping = ipv4(1, 0);
        let mut tcp = ipv4(TCP, 0);
        let sojourn = TARGET * 3;
        assert_eq!(codel.admit(&mut ping, sojourn, start), Verdict::Pass);
        let due = start + INTERVAL;
        assert_eq!(codel.admit(&mut ping, sojourn, due), Verdict::Pass);
        assert_eq!(codel.admit(&mut ping, sojourn, due), Verdict::Pass);
        assert_eq!(codel.signals, Signals::default());
        assert_eq!(codel.admit(&mut tcp, sojourn, due), Verdict::Drop);
        assert_eq!(codel.signals.dropped, 1);
    }
}
