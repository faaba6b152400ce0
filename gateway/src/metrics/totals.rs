//! Counters that never go back. The data path's own counts start from zero whenever an engine,
//! an event loop or a peer is made afresh (a new leader's data plane, a re-keyed peer); the
//! totals here absorb each sample the loop publishes and carry the earlier counts on, so the
//! exposed counters only grow for as long as the process runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::engine::{Counters, DropReason, PeerStats, HANDSHAKE_TYPES, RTT_BUCKETS};

/// One counter: what earlier instances counted, plus what the current one has.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Monotonic {
    base: u64,
    last: u64,
}

impl Monotonic {
    /// `raw` is the current instance's count; `fresh` says the instance is not the one last
    /// seen. A count that went down is a new instance too.
    pub fn observe(&mut self, raw: u64, fresh: bool) {
        if fresh || raw < self.last {
            self.base += self.last;
        }
        self.last = raw;
    }

    pub fn get(&self) -> u64 {
        self.base + self.last
    }
}

/// What the event loop counted itself, outside the engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopCounters {
    /// Which loop: a new data plane runs a new one.
    pub instance: u64,
    pub tun_read_dropped: u64,
    pub underlay_send_errors: u64,
    pub tun_write_errors: u64,
    /// The kernel's drops on the TUN's full queue, since the device was made with the loop.
    pub tun_queue_dropped: u64,
    /// The kernel's drops on the underlay sockets' full receive buffers, since they were bound.
    pub socket_buffer_dropped: u64,
    /// The loop thread's real-time priority while busy; 0 when it always runs at normal.
    pub realtime_priority: u8,
}

/// One publication of the data path's raw counts.
pub struct Sample<'a> {
    pub engine: u64,
    pub counters: &'a Counters,
    pub under_load: bool,
    pub io: LoopCounters,
    pub peers: &'a [PeerStats],
    /// The wall clock when the sample was taken: session ages become handshake times.
    pub at: SystemTime,
}

#[derive(Debug, Default, Clone)]
pub struct PeerTotals {
    incarnation: u64,
    pub up: bool,
    pub rx_bytes: Monotonic,
    pub tx_bytes: Monotonic,
    pub probes_sent: Monotonic,
    pub probes_lost: Monotonic,
    /// Per bucket (the last is +Inf), as [`RTT_BUCKETS`] bounds them.
    pub rtt_buckets: [Monotonic; RTT_BUCKETS.len() + 1],
    rtt_sum_base: f64,
    rtt_sum_last: f64,
    /// Unix time of the last completed handshake, while a session lasts.
    pub last_handshake: Option<f64>,
    pub rtt_last: Option<f64>,
    pub rtt_average: Option<f64>,
}

impl PeerTotals {
    pub fn rtt_sum(&self) -> f64 {
        self.rtt_sum_base + self.rtt_sum_last
    }

    fn absorb(&mut self, p: &PeerStats, at: SystemTime) {
        let fresh = p.incarnation != self.incarnation;
        self.incarnation = p.incarnation;
        self.up = p.up;
        self.rx_bytes.observe(p.rx_bytes, fresh);
        self.tx_bytes.observe(p.tx_bytes, fresh);
        self.probes_sent.observe(p.latency.sent, fresh);
        self.probes_lost.observe(p.latency.lost, fresh);
        for (total, &raw) in self.rtt_buckets.iter_mut().zip(&p.rtt_histogram.counts) {
            total.observe(raw, fresh);
        }
        if fresh {
            self.rtt_sum_base += self.rtt_sum_last;
        }
        self.rtt_sum_last = p.rtt_histogram.sum_seconds;
        self.last_handshake = p
            .last_handshake_age
            .and_then(|age| at.checked_sub(age))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        self.rtt_last = p.latency.last.map(secs);
        self.rtt_average = p.latency.average.map(secs);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Everything `/metrics` shows, accumulated over the process's data planes.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    engine: u64,
    pub drops: [Monotonic; DropReason::ALL.len()],
    pub handshakes_sent: [Monotonic; HANDSHAKE_TYPES.len()],
    pub cookies_received: Monotonic,
    pub queued_for_handshake: Monotonic,
    pub under_load: bool,
    io: u64,
    pub tun_read_dropped: Monotonic,
    pub underlay_send_errors: Monotonic,
    pub tun_write_errors: Monotonic,
    pub tun_queue_dropped: Monotonic,
    pub socket_buffer_dropped: Monotonic,
    /// By peer name. A peer stays while data planes come and go, and leaves when a running
    /// data plane no longer has it.
    pub peers: BTreeMap<String, PeerTotals>,
    /// A data plane has published at least once.
    pub started: bool,
    /// The data-path thread's real-time priority while busy; 0 when it always runs at normal.
    pub realtime_priority: u8,
}

impl Totals {
    pub fn absorb(&mut self, s: &Sample<'_>) {
        let fresh = s.engine != self.engine;
        self.engine = s.engine;
        for (total, reason) in self.drops.iter_mut().zip(DropReason::ALL) {
            total.observe(s.counters.get(reason), fresh);
        }
        for (total, kind) in self.handshakes_sent.iter_mut().zip(HANDSHAKE_TYPES) {
            total.observe(s.counters.handshakes_sent(kind), fresh);
        }
        self.cookies_received
            .observe(s.counters.cookies_received(), fresh);
        self.queued_for_handshake
            .observe(s.counters.queued(), fresh);
        self.under_load = s.under_load;
        let fresh = s.io.instance != self.io;
        self.io = s.io.instance;
        self.tun_read_dropped.observe(s.io.tun_read_dropped, fresh);
        self.underlay_send_errors
            .observe(s.io.underlay_send_errors, fresh);
        self.tun_write_errors.observe(s.io.tun_write_errors, fresh);
        self.tun_queue_dropped
            .observe(s.io.tun_queue_dropped, fresh);
        self.socket_buffer_dropped
            .observe(s.io.socket_buffer_dropped, fresh);
        self.realtime_priority = s.io.realtime_priority;
        // This runs on the data-path thread once a second: no search per peer, and a name is
        // copied only when a peer is new.
        let present: BTreeSet<&str> = s.peers.iter().map(|p| p.name.as_str()).collect();
        self.peers.retain(|name, _| present.contains(name.as_str()));
        for p in s.peers {
            match self.peers.get_mut(&p.name) {
                Some(t) => t.absorb(p, s.at),
                None => {
                    let mut t = PeerTotals::default();
                    t.absorb(p, s.at);
                    self.peers.insert(p.name.clone(), t);
                }
            }
        }
        self.started = true;
    }

    /// The data plane stopped (this replica lost the lead): nothing is up here any more, but
    /// the counts stay for the next one to add to.
    pub fn stopped(&mut self) {
        self.under_load = false;
        self.realtime_priority = 0;
        for p in self.peers.values_mut() {
            p.up = false;
            p.last_handshake = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Latency, RttHistogram};
    use liqonet_proto::Key;

    fn peer(name: &str, incarnation: u64, rx: u64) -> PeerStats {
        PeerStats {
            name: name.into(),
            public_key: Key([1; 32]),
            persistent_keepalive: None,
            networks: Vec::new(),
            last_handshake_age: Some(Duration::from_secs(5)),
            endpoint: None,
            rx_bytes: rx,
            tx_bytes: rx / 2,
            up: true,
            latency: Latency::default(),
            rtt_histogram: RttHistogram::default(),
            incarnation,
        }
    }

    fn sample<'a>(engine: u64, counters: &'a Counters, peers: &'a [PeerStats]) -> Sample<'a> {
        Sample {
            engine,
            counters,
            under_load: false,
            io: LoopCounters {
                instance: engine,
                ..LoopCounters::default()
            },
            peers,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        }
    }

    #[test]
    fn counts_carry_on_across_new_engines_and_re_keyed_peers() {
        let mut t = Totals::default();
        let mut c = Counters::default();
        c.count(DropReason::NoRoute);
        c.count(DropReason::NoRoute);
        t.absorb(&sample(1, &c, &[peer("a", 10, 1000)]));
        assert_eq!(t.drops[DropReason::NoRoute as usize].get(), 2);
        assert_eq!(t.peers["a"].rx_bytes.get(), 1000);
        assert_eq!(t.peers["a"].last_handshake, Some(995.0));
        // A new leader's data plane: a new engine whose counts start again, a peer renewed.
        t.stopped();
        assert!(!t.peers["a"].up);
        let mut c = Counters::default();
        c.count(DropReason::NoRoute);
        t.absorb(&sample(2, &c, &[peer("a", 11, 1500)]));
        assert_eq!(t.drops[DropReason::NoRoute as usize].get(), 3);
        // 1500 > 1000, yet a new incarnation: added, not taken as growth from 1000.
        assert_eq!(t.peers["a"].rx_bytes.get(), 2500);
        t.absorb(&sample(2, &c, &[peer("a", 11, 1600)]));
        assert_eq!(t.peers["a"].rx_bytes.get(), 2600);
        // A peer removed from a running data plane leaves the totals.
        t.absorb(&sample(2, &c, &[]));
        assert!(t.peers.is_empty());
    }

    #[test]
    fn a_count_that_goes_down_is_a_restart() {
        let mut m = Monotonic::default();
        m.observe(10, false);
        m.observe(4, false);
        assert_eq!(m.get(), 14);
        m.observe(6, false);
        assert_eq!(m.get(), 16);
    }
}
