//! Datagrams from the underlay into an engine with a remapping peer, while that peer (a real
//! engine) keeps a session up. Inputs are sequences of operations: WireGuard messages built field
//! by field (hostile indices, counters and lengths), valid-MAC1 initiations from keys nobody
//! knows (built by boringtun), real data messages from the peer engine or the bare quiet peer
//! carrying hostile inner packets, replays and bit flips of them from other addresses, and GRO
//! runs: one buffer of several datagrams split by a segment size as the event loop splits it.
//!
//! Checks: no panic; every datagram is accounted for — it produced output (a datagram or a TUN
//! write), or exactly one counted drop, or was a keepalive or a cookie reply the engine counts;
//! what reaches the TUN parses and comes from the sending peer's networks, remapped; and no
//! datagram from an address other than a peer's own ever moves that peer's endpoint.

use std::net::{IpAddr, SocketAddr};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use liqonet_gateway::engine::{probe, DropReason, PeerStats, MAX_PACKET};
use liqonet_gateway::wire::IpPacket;

use crate::codec::{Reader, Writer};
use crate::driver::{pct, thousands};
use crate::engines::{
    self, attacker, cookies_received, key, public, total_drops, Pair, FOREIGN, HOME, HOME_KEY,
    PENDING, QUIET,
};
use crate::packets::{self, Shape};
use crate::rng::Rng;
use crate::targets::Target;

const REBUILD_EVERY: u64 = 20_000;
/// Valid-MAC1 initiations kept ready (building one costs two Diffie-Hellmans).
const INITIATIONS: usize = 8;
/// Recently accepted real datagrams, for replays.
const REPLAYS: usize = 16;

mod op {
    pub const FORGED: u8 = 0;
    pub const THROUGH_PEER: u8 = 1;
    pub const RAW_PEER: u8 = 2;
    pub const VALID_INIT: u8 = 3;
    pub const GRO: u8 = 4;
    pub const EMPTY: u8 = 5;
    pub const HUGE: u8 = 6;
    pub const TICK: u8 = 7;
    pub const REPLAY: u8 = 8;
    pub const COUNT: u8 = 9;
}

/// A datagram's origin, for the endpoint and accounting checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The peer itself, at its address: first delivery of what it sent.
    Peer,
    /// Anyone else.
    Attacker,
}

#[derive(Default)]
struct Stats {
    ops: [u64; op::COUNT as usize],
    datagrams: u64,
    answered: u64,
    dropped: u64,
    keepalives: u64,
    probe_replies: u64,
    cookies_in: u64,
    to_tun: u64,
    cookies_out: u64,
    drops: [u64; DropReason::ALL.len()],
}

pub struct EngineFromNetwork {
    pair: Pair,
    since_rebuild: u64,
    initiations: Vec<Vec<u8>>,
    /// Receiver index and counter of the latest real data message foreign sent home.
    live_index: u32,
    live_counter: u64,
    accepted: Vec<Vec<u8>>,
    cookies_seen: u64,
    peers: Vec<PeerStats>,
    stats: Stats,
}

impl EngineFromNetwork {
    pub fn new() -> Self {
        // Initiations to home from keys it does not know: valid MAC1, so they pass admission
        // (below the load) and cost home a Diffie-Hellman before it finds the key unknown.
        let home_public = PublicKey::from(public(&key(HOME_KEY)).0);
        let mut buf = vec![0u8; 256];
        let initiations = (0..INITIATIONS)
            .map(|i| {
                let mut t = Tunn::new(
                    StaticSecret::from(key(100 + i as u8).0),
                    home_public,
                    None,
                    None,
                    i as u32,
                    None,
                );
                match t.format_handshake_initiation(&mut buf, false) {
                    TunnResult::WriteToNetwork(d) => d.to_vec(),
                    _ => panic!("boringtun formats no initiation"),
                }
            })
            .collect();
        EngineFromNetwork {
            pair: Pair::new(),
            since_rebuild: 0,
            initiations,
            live_index: 0,
            live_counter: 0,
            accepted: Vec::new(),
            cookies_seen: 0,
            peers: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Hands one datagram to home and checks what became of it; carries home's answers on.
    fn deliver(&mut self, src: SocketAddr, d: &[u8], from: Origin) -> Result<(), String> {
        let pair = &mut self.pair;
        let before: Vec<u64> = DropReason::ALL
            .iter()
            .map(|&r| pair.home.counters().get(r))
            .collect();
        let drops = total_drops(&pair.home);
        pair.home.from_network(src, d, &mut pair.home_out);
        let dropped = total_drops(&pair.home) - drops;
        for (i, r) in DropReason::ALL.iter().enumerate() {
            self.stats.drops[i] += pair.home.counters().get(*r) - before[i];
        }
        let net = std::mem::take(&mut pair.home_out.net);
        let tun = std::mem::take(&mut pair.home_out.tun);
        self.stats.datagrams += 1;
        match (dropped, net.len() + tun.len()) {
            (1, 0) => self.stats.dropped += 1,
            (0, n) if n > 0 => {
                self.stats.answered += 1;
                // A ring of what home accepted from foreign, for replays from elsewhere.
                if from == Origin::Peer && src == FOREIGN {
                    if self.accepted.len() < REPLAYS {
                        self.accepted.push(d.to_vec());
                    } else {
                        let i = (self.stats.answered as usize) % REPLAYS;
                        self.accepted[i] = d.to_vec();
                    }
                }
            }
            (0, 0) => {
                let cookies = cookies_received(&pair.home);
                if d.first() == Some(&3) && cookies == self.cookies_seen + 1 {
                    self.cookies_seen = cookies;
                    self.stats.cookies_in += 1;
                } else if from == Origin::Peer && d.len() == 32 && d[0] == 4 {
                    self.stats.keepalives += 1;
                } else if from == Origin::Peer && d.len() == 32 + probe::PROBE_LEN && d[0] == 4 {
                    // An in-tunnel probe's reply: the engine's prober takes it (stale ones too).
                    self.stats.probe_replies += 1;
                } else {
                    return Err(format!(
                        "a {}-byte datagram (type {:?}) from {src} vanished: no output, no drop counted",
                        d.len(),
                        d.first()
                    ));
                }
            }
            (d, n) => return Err(format!("one datagram gave {n} outputs and {d} drops")),
        }
        self.check_endpoints()?;
        for p in &tun {
            self.stats.to_tun += 1;
            check_tun_packet(p, src)?;
        }
        for (dst, d) in net {
            match dst {
                FOREIGN => {
                    self.pair
                        .foreign
                        .from_network(HOME, &d, &mut self.pair.foreign_out);
                    self.pair.foreign_out.tun.clear();
                    let back = std::mem::take(&mut self.pair.foreign_out.net);
                    for (_, b) in back {
                        self.deliver(FOREIGN, &b, Origin::Peer)?;
                    }
                }
                QUIET => {
                    for b in self.pair.to_raw(&d) {
                        self.deliver(QUIET, &b, Origin::Peer)?;
                    }
                }
                other if other == src => self.stats.cookies_out += u64::from(d.first() == Some(&3)),
                // Handshake retries to the peer that never answers.
                PENDING => {}
                other => {
                    return Err(format!(
                        "home sent a datagram to {other}, which nobody asked for"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Foreign's endpoint is its own address; quiet's the one it called from; silent has none.
    fn check_endpoints(&mut self) -> Result<(), String> {
        self.pair.home.peer_stats(&mut self.peers);
        for p in &self.peers {
            let expect = match p.name.as_str() {
                "foreign" => Some(FOREIGN),
                "quiet" => Some(QUIET),
                "pending" => Some(PENDING),
                _ => None,
            };
            if p.endpoint != expect {
                return Err(format!(
                    "peer {}'s endpoint moved to {:?} (expected {expect:?})",
                    p.name, p.endpoint
                ));
            }
        }
        Ok(())
    }

    /// Sends `inner` through the peer engine; home gets what it encrypts, from its address.
    fn through_peer(&mut self, inner: &[u8]) -> Vec<Vec<u8>> {
        let mut packet = inner.to_vec();
        self.pair
            .foreign
            .from_tun(&mut packet, &mut self.pair.foreign_out);
        let out: Vec<Vec<u8>> = std::mem::take(&mut self.pair.foreign_out.net)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        if let Some(d) = out.iter().rev().find(|d| d.len() >= 16 && d[0] == 4) {
            self.live_index = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            self.live_counter = u64::from_le_bytes(d[8..16].try_into().expect("8 bytes"));
        }
        out
    }

    /// Encrypts any bytes at all under the quiet peer's session.
    fn through_raw(&mut self, inner: &[u8]) -> Option<Vec<u8>> {
        match self.pair.raw.encapsulate(inner, &mut self.pair.scratch) {
            TunnResult::WriteToNetwork(d) => Some(d.to_vec()),
            _ => None,
        }
    }

    /// Delivers real datagrams from their sender, then (as flagged) a replay and a copy with one
    /// bit flipped, both from an attacker.
    fn real_then_copies(
        &mut self,
        datagrams: Vec<Vec<u8>>,
        from: SocketAddr,
        flags: u8,
        pos: u16,
    ) -> Result<(), String> {
        for d in datagrams {
            self.deliver(from, &d, Origin::Peer)?;
            if flags & 1 != 0 {
                self.deliver(attacker(flags >> 2), &d, Origin::Attacker)?;
            }
            if flags & 2 != 0 && !d.is_empty() {
                let mut m = d.clone();
                let i = usize::from(pos) % m.len();
                m[i] ^= 1 << (pos >> 13);
                self.deliver(attacker(flags >> 3), &m, Origin::Attacker)?;
            }
        }
        Ok(())
    }

    fn op(&mut self, r: &mut Reader) -> Option<Result<(), String>> {
        let kind = r.u8()?;
        self.stats.ops[usize::from(kind % op::COUNT)] += 1;
        Some(match kind % op::COUNT {
            op::FORGED => {
                let src = attacker(r.u8()?);
                let live = r.u8()?;
                let mut d = r.bytes()?.to_vec();
                self.patch_live(&mut d, live);
                self.deliver(src, &d, Origin::Attacker)
            }
            op::THROUGH_PEER => {
                let (flags, pos, inner) = (r.u8()?, r.u16()?, r.bytes()?);
                let out = self.through_peer(inner);
                self.real_then_copies(out, FOREIGN, flags, pos)
            }
            op::RAW_PEER => {
                let (flags, pos, inner) = (r.u8()?, r.u16()?, r.bytes()?);
                let out = self.through_raw(inner).into_iter().collect();
                self.real_then_copies(out, QUIET, flags, pos)
            }
            op::VALID_INIT => {
                let (src, which, mutate, pos) = (r.u8()?, r.u8()?, r.u8()?, r.u16()?);
                let mut d = self.initiations[usize::from(which) % INITIATIONS].clone();
                let i = match mutate % 3 {
                    0 => None,
                    // In MAC2: MAC1 still holds.
                    1 => Some(132 + usize::from(pos) % 16),
                    _ => Some(usize::from(pos) % d.len()),
                };
                if let Some(i) = i {
                    d[i] ^= 1 << (pos % 8);
                }
                self.deliver(attacker(src), &d, Origin::Attacker)
            }
            op::GRO => self.gro(r)?,
            op::EMPTY => {
                let src = r.u8()?;
                self.deliver(attacker(src), &[], Origin::Attacker)
            }
            op::HUGE => {
                let src = r.u8()?;
                let n = (r.u32()? as usize).min(MAX_PACKET + 4096);
                let d = vec![4u8; n];
                self.deliver(attacker(src), &d, Origin::Attacker)
            }
            op::TICK => {
                self.pair.home.tick(&mut self.pair.home_out);
                // Whatever the timers sent is carried on by the next delivery's pump.
                self.pair.home_out.net.retain(|(dst, _)| *dst == FOREIGN);
                let out = std::mem::take(&mut self.pair.home_out.net);
                for (_, d) in out {
                    self.pair
                        .foreign
                        .from_network(HOME, &d, &mut self.pair.foreign_out);
                }
                self.pair.foreign_out.tun.clear();
                let back = std::mem::take(&mut self.pair.foreign_out.net);
                back.into_iter()
                    .try_for_each(|(_, b)| self.deliver(FOREIGN, &b, Origin::Peer))
            }
            op::REPLAY => {
                let (src, which) = (r.u8()?, r.u8()?);
                if self.accepted.is_empty() {
                    return Some(Ok(()));
                }
                let d = self.accepted[usize::from(which) % self.accepted.len()].clone();
                self.deliver(attacker(src), &d, Origin::Attacker)
            }
            _ => unreachable!(),
        })
    }

    /// A GRO run: the datagrams laid end to end (each cut or padded to the segment size but the
    /// last, when honest; the segment being the first datagram's size, as the kernel coalesces,
    /// when aligned), then split with `chunks(segment)` as the event loop splits them.
    fn gro(&mut self, r: &mut Reader) -> Option<Result<(), String>> {
        let (src, segment, honest, parts) = (r.u8()?, r.u16()?, r.u8()?, r.u8()?);
        let mut segment = usize::from(segment).max(1);
        let aligned = honest & 2 != 0;
        let mut buf = Vec::new();
        let mut real = false;
        for i in 0..parts {
            let kind = r.u8()?;
            let bytes = r.bytes()?;
            let mut d = match kind % 3 {
                0 => bytes.to_vec(),
                1 => {
                    real = true;
                    self.through_peer(bytes).pop().unwrap_or_default()
                }
                _ => {
                    let mut d = bytes.to_vec();
                    self.patch_live(&mut d, 1);
                    d
                }
            };
            if aligned && i == 0 && !d.is_empty() {
                segment = d.len();
            }
            if honest % 2 == 0 && i + 1 < parts {
                d.resize(segment, 0);
            }
            buf.extend_from_slice(&d);
        }
        // Fresh datagrams of the peer's own come from its address; anything else from anyone.
        let (from, who) = if real {
            (FOREIGN, Origin::Peer)
        } else {
            (attacker(src), Origin::Attacker)
        };
        for chunk in buf.chunks(segment) {
            if let Err(e) = self.deliver(from, chunk, who) {
                return Some(Err(format!("GRO run (segment {segment}): {e}")));
            }
        }
        Some(Ok(()))
    }

    /// Puts the live session's receiver index (and a counter near the live one) into a forged
    /// message, so that it reaches the session instead of an unknown index.
    fn patch_live(&self, d: &mut [u8], live: u8) {
        if live % 2 == 0 || d.len() < 8 {
            return;
        }
        let at = if d[0] == 2 { 8 } else { 4 };
        if d.len() >= at + 4 {
            d[at..at + 4].copy_from_slice(&self.live_index.to_le_bytes());
        }
        if d[0] == 4 && d.len() >= 16 {
            let counter = match live >> 1 & 3 {
                0 => self.live_counter,
                1 => self.live_counter + 1,
                2 => self.live_counter.saturating_sub(2000),
                _ => self.live_counter + 1_000_000,
            };
            d[8..16].copy_from_slice(&counter.to_le_bytes());
        }
    }
}

/// A packet home writes to its TUN parses, and its source is a remapped address of the peer that
/// sent it.
fn check_tun_packet(p: &[u8], from: SocketAddr) -> Result<(), String> {
    let v = IpPacket::new_checked(p)
        .map_err(|e| format!("home wrote a packet that does not parse: {e:?}"))?;
    let src = v.src_addr();
    let ok = match from {
        FOREIGN => packets::networks().iter().any(|n| n.remapped.contains(src)),
        QUIET => engines::quiet_networks()
            .iter()
            .any(|n| n.remapped.contains(src)),
        _ => false,
    };
    if !ok {
        return Err(format!("home wrote a packet from {src} received from {from}, not a remapped address of that peer"));
    }
    Ok(())
}

/// A WireGuard message built field by field: a type (right or not), reserved bytes, indices and
/// counters at the edges, a length exact, short or long.
fn forged(rng: &mut Rng, out: &mut Vec<u8>) {
    let kind: u8 = match rng.below(20) {
        0..=3 => 1,
        4..=7 => 2,
        8..=10 => 3,
        11..=17 => 4,
        _ => {
            let any = rng.u8();
            *rng.pick(&[0u8, 5, 255, any])
        }
    };
    let exact = match kind {
        1 => 148,
        2 => 92,
        3 => 64,
        _ => 32 + *rng.pick(&[0usize, 16, 20, 40, 60, 1280, 1420]),
    };
    let len = match rng.below(10) {
        0..=5 => exact,
        6 => exact - rng.range(1, exact.min(16)),
        7 => exact + rng.range(1, 16),
        8 => rng.below(exact + 1),
        _ => *rng.pick(&[0usize, 1, 4, 8, 15, 16, 31, 32, 33, 65535]),
    };
    let start = out.len();
    rng.bytes(len, out);
    let d = &mut out[start..];
    if let Some(first) = d.first_mut() {
        *first = kind;
    }
    if d.len() >= 4 && rng.chance(4, 5) {
        d[1..4].copy_from_slice(&[0, 0, 0]);
    }
    let index = |rng: &mut Rng| -> u32 {
        let any = rng.u32();
        *rng.pick(&[
            0u32,
            1,
            0xff,
            0x100,
            0x1ff,
            0x200,
            0x300,
            0xffff_ff00,
            u32::MAX,
            any,
        ])
    };
    // Sender index at 4; receiver at 8 in a response, at 4 in cookie replies and data.
    if d.len() >= 8 {
        let i = index(rng);
        d[4..8].copy_from_slice(&i.to_le_bytes());
    }
    if kind == 2 && d.len() >= 12 {
        let i = index(rng);
        d[8..12].copy_from_slice(&i.to_le_bytes());
    }
    if kind == 4 && d.len() >= 16 {
        let any = rng.next_u64();
        let c = *rng.pick(&[0u64, 1, 2, 2047, 2048, u64::MAX - 1, u64::MAX, any]);
        d[8..16].copy_from_slice(&c.to_le_bytes());
    }
}

/// An inner packet as a foreign pod would send it (from foreign's networks, mostly), hostile.
fn inner_packet(rng: &mut Rng, out: &mut Vec<u8>) {
    let v4 = rng.chance(11, 20);
    let src = if rng.chance(4, 5) {
        let nets: Vec<_> = packets::networks()
            .iter()
            .filter(|n| n.cidr.is_ipv4() == v4)
            .collect();
        let net = rng.pick(&nets).cidr;
        packets::host_in(rng, net)
    } else {
        packets::addr(rng, v4)
    };
    let dst: IpAddr = if rng.chance(3, 4) {
        packets::host_in(rng, packets::home_net(v4))
    } else {
        packets::addr(rng, v4)
    };
    let shape = Shape {
        src,
        dst,
        depth: 1,
        hostile: true,
        transport: None,
    };
    packets::build(rng, &shape, out);
}

impl Target for EngineFromNetwork {
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        for _ in 0..rng.range(1, 5) {
            match rng.below(40) {
                0..=9 => {
                    w.u8(op::FORGED).u8(rng.u8()).u8(rng.u8());
                    let at = w.begin_bytes();
                    forged(rng, w.0);
                    w.end_bytes(at);
                }
                10..=19 => {
                    w.u8(op::THROUGH_PEER).u8(rng.u8()).u16(rng.u16());
                    let at = w.begin_bytes();
                    inner_packet(rng, w.0);
                    w.end_bytes(at);
                }
                20..=25 => {
                    w.u8(op::RAW_PEER).u8(rng.u8()).u16(rng.u16());
                    let at = w.begin_bytes();
                    // The bare session encrypts anything: packets no engine would send, too,
                    // and in-tunnel probes (requests home must answer, replies it takes).
                    if rng.chance(1, 10) {
                        let mut p = [0u8; probe::PROBE_LEN];
                        let (seq, nanos) = (rng.u32() % 8, rng.next_u64());
                        if rng.bool() {
                            probe::request(&mut p, seq, nanos);
                        } else {
                            probe::reply(&mut p, seq, nanos);
                        }
                        w.0.extend_from_slice(&p);
                    } else if rng.chance(1, 5) {
                        let n = rng.len(80);
                        rng.bytes(n, w.0);
                    } else {
                        inner_packet(rng, w.0);
                    }
                    w.end_bytes(at);
                }
                26..=28 => {
                    w.u8(op::VALID_INIT)
                        .u8(rng.u8())
                        .u8(rng.u8())
                        .u8(rng.u8())
                        .u16(rng.u16());
                }
                29..=33 => {
                    let parts = rng.range(1, 6) as u8;
                    // Tiny segments split a run into hundreds of datagrams: now and then only.
                    let segment = match rng.below(40) {
                        0 => *rng.pick(&[0u16, 1, 16]),
                        1..=8 => *rng.pick(&[32u16, 64, 92, 148, 1452, 65535]),
                        _ => rng.range(32, 1500) as u16,
                    };
                    w.u8(op::GRO)
                        .u8(rng.u8())
                        .u16(segment)
                        .u8(rng.u8())
                        .u8(parts);
                    for i in 0..parts {
                        // Zero-length datagrams and an oversized last one now and then.
                        let kind = rng.below(3) as u8;
                        w.u8(kind);
                        let at = w.begin_bytes();
                        match kind {
                            1 => inner_packet(rng, w.0),
                            _ if rng.chance(1, 8) => {}
                            _ if i + 1 == parts && rng.chance(1, 4) => {
                                let n = usize::from(segment) + rng.range(1, 3000);
                                rng.bytes(n, w.0);
                            }
                            _ => forged(rng, w.0),
                        }
                        w.end_bytes(at);
                    }
                }
                34 => {
                    w.u8(op::EMPTY).u8(rng.u8());
                }
                35 => {
                    w.u8(op::HUGE)
                        .u8(rng.u8())
                        .u32(rng.range(MAX_PACKET - 8, MAX_PACKET + 100) as u32);
                }
                36 => {
                    w.u8(op::TICK);
                }
                _ => {
                    w.u8(op::REPLAY).u8(rng.u8()).u8(rng.u8());
                }
            }
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        self.since_rebuild += 1;
        if self.since_rebuild > REBUILD_EVERY
            || !self.pair.home.peer_is_up("foreign")
            || !self.pair.home.peer_is_up("quiet")
        {
            self.reset();
        }
        let mut r = Reader::new(input);
        while let Some(result) = self.op(&mut r) {
            result?;
        }
        Ok(())
    }

    fn coverage(&self) -> String {
        let s = &self.stats;
        let n = s.datagrams;
        let mut drops: Vec<String> = DropReason::ALL
            .iter()
            .zip(s.drops)
            .filter(|(_, c)| *c > 0)
            .map(|(r, c)| format!("{} {}", r.name(), pct(c, n)))
            .collect();
        drops.sort();
        format!(
            "{} datagrams = answered {} + dropped {} + keepalives {} + probe replies taken {} + cookie replies taken {}; {} to the TUN, {} cookie replies sent\n\
             drops: {}\n\
             ops: forged {}, through the peer engine {}, through the bare session {}, valid-MAC1 initiations {}, GRO runs {}, replays {}",
            thousands(n),
            thousands(s.answered),
            thousands(s.dropped),
            thousands(s.keepalives),
            thousands(s.probe_replies),
            thousands(s.cookies_in),
            thousands(s.to_tun),
            thousands(s.cookies_out),
            drops.join(", "),
            thousands(s.ops[op::FORGED as usize]),
            thousands(s.ops[op::THROUGH_PEER as usize]),
            thousands(s.ops[op::RAW_PEER as usize]),
            thousands(s.ops[op::VALID_INIT as usize]),
            thousands(s.ops[op::GRO as usize]),
            thousands(s.ops[op::REPLAY as usize]),
        )
    }

    fn reset(&mut self) {
        self.pair = Pair::new();
        self.since_rebuild = 0;
        self.accepted.clear();
        self.cookies_seen = 0;
        self.live_index = 0;
        self.live_counter = 0;
    }
}

impl Default for EngineFromNetwork {
    fn default() -> Self {
        Self::new()
    }
}
