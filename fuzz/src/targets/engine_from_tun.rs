//! Hostile packets from the TUN side into an engine with remapping peers (one with a session,
//! one bare boringtun session, one that never called). Each packet must either come out as one
//! datagram to the endpoint of the peer that owns its destination, or be one counted drop; what
//! the quiet peer decrypts must be exactly the packet after home's rewrite; what foreign writes
//! to its TUN must parse.

use std::net::{IpAddr, SocketAddr};

use boringtun::noise::TunnResult;
use liqonet_gateway::engine::{DropReason, MAX_PACKET};
use liqonet_gateway::wire::IpPacket;

use crate::codec::{Reader, Writer};
use crate::driver::pct;
use crate::driver::KNOWN;
use crate::engines::{self, total_drops, Pair, FOREIGN, HOME, PENDING, QUIET};
use crate::packets::{self, Shape};
use crate::rng::Rng;
use crate::targets::Target;

/// Inputs between fresh engines (sessions stay young, replay windows and admission state reset).
const REBUILD_EVERY: u64 = 50_000;

pub struct EngineFromTun {
    pair: Pair,
    since_rebuild: u64,
    packets: u64,
    sent: [u64; 3],
    drops: [u64; DropReason::ALL.len()],
    foreign_tun: u64,
    foreign_drops: u64,
    queued: u64,
}

impl EngineFromTun {
    pub fn new() -> Self {
        EngineFromTun {
            pair: Pair::new(),
            since_rebuild: 0,
            packets: 0,
            sent: [0; 3],
            drops: [0; DropReason::ALL.len()],
            foreign_tun: 0,
            foreign_drops: 0,
            queued: 0,
        }
    }

    fn one(&mut self, packet: &mut [u8]) -> Result<(), String> {
        self.packets += 1;
        let pair = &mut self.pair;
        let route = IpPacket::new_checked(packet)
            .ok()
            .and_then(|p| owner(p.dst_addr()));
        let before: Vec<u64> = DropReason::ALL
            .iter()
            .map(|&r| pair.home.counters().get(r))
            .collect();
        let drops = total_drops(&pair.home);
        let queued = pair.home.counters().queued();
        pair.home.from_tun(packet, &mut pair.home_out);
        let held = pair.home.counters().queued() - queued;
        let dropped = total_drops(&pair.home) - drops;
        let out = std::mem::take(&mut pair.home_out.net);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            self.drops[i] += pair.home.counters().get(*r) - before[i];
        }
        match (dropped, out.len()) {
            (1, 0) | (0, 1) => {}
            // boringtun holds packets while a handshake is pending; the engine counts them.
            (0, 0) if held == 1 && route == Some(Some(PENDING)) => {
                self.queued += 1;
            }
            (d, n) => {
                return Err(format!(
                    "one packet from the TUN gave {n} datagrams and {d} drops"
                ))
            }
        }
        for (dst, d) in out {
            if Some(dst) != route.flatten() {
                return Err(format!(
                    "a datagram went to {dst}, but the destination belongs to {route:?}"
                ));
            }
            match dst {
                FOREIGN => {
                    self.sent[0] += 1;
                    let drops = total_drops(&pair.foreign);
                    pair.foreign.from_network(HOME, &d, &mut pair.foreign_out);
                    self.foreign_drops += total_drops(&pair.foreign) - drops;
                    for p in pair.foreign_out.tun.drain(..) {
                        self.foreign_tun += 1;
                        if let Err(e) = IpPacket::new_checked(&p) {
                            return Err(format!(
                                "foreign wrote a packet that does not parse: {e:?}"
                            ));
                        }
                    }
                    pair.foreign_out.net.clear();
                }
                QUIET => {
                    self.sent[1] += 1;
                    let expect = IpPacket::new_checked(packet)
                        .map(|p| p.total_len())
                        .map_err(|e| format!("home sent a packet that does not parse: {e:?}"))?;
                    match pair.raw.decapsulate(Some(HOME.ip()), &d, &mut pair.scratch) {
                        TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                            if p[..] != packet[..expect] {
                                return Err("the quiet peer decrypted other bytes than home's rewritten packet".into());
                            }
                        }
                        other => {
                            return Err(format!(
                                "the quiet peer could not take home's datagram: {}",
                                describe(&other)
                            ))
                        }
                    }
                }
                // The handshake initiation (or a retry) to the peer that never answers.
                PENDING => self.sent[2] += 1,
                _ => return Err(format!("a datagram to {dst}, which is no peer's endpoint")),
            }
        }
        Ok(())
    }
}

fn describe(r: &TunnResult) -> String {
    match r {
        TunnResult::Done => "nothing".into(),
        TunnResult::Err(e) => format!("{e:?}"),
        TunnResult::WriteToNetwork(_) => "a datagram back".into(),
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => "a packet".into(),
    }
}

/// Which endpoint a destination's packets must go to: `Some(None)` for the peer with none.
fn owner(dst: IpAddr) -> Option<Option<SocketAddr>> {
    if packets::networks().iter().any(|n| n.remapped.contains(dst)) {
        Some(Some(FOREIGN))
    } else if engines::quiet_networks()
        .iter()
        .any(|n| n.remapped.contains(dst))
    {
        Some(Some(QUIET))
    } else if engines::silent_networks()
        .iter()
        .any(|n| n.remapped.contains(dst))
    {
        Some(None)
    } else if engines::pending_networks()
        .iter()
        .any(|n| n.remapped.contains(dst))
    {
        Some(Some(PENDING))
    } else {
        None
    }
}

/// A destination for a packet from a home pod: a remapped network of one of the peers, or none.
fn destination(rng: &mut Rng, v4: bool) -> IpAddr {
    match rng.below(20) {
        // Mostly foreign's remapped networks (the address generator also picks others).
        10..=15 => {
            let nets: Vec<_> = packets::networks()
                .iter()
                .filter(|n| n.remapped.is_ipv4() == v4)
                .collect();
            let net = rng.pick(&nets).remapped;
            packets::host_in(rng, net)
        }
        0..=2 => {
            let net = *rng.pick(&engines::quiet_networks());
            packets::host_in(rng, net.remapped)
        }
        3 if v4 => packets::host_in(rng, engines::silent_networks()[0].remapped),
        4 if v4 => packets::host_in(rng, engines::pending_networks()[0].remapped),
        _ => packets::addr(rng, v4),
    }
}

impl Target for EngineFromTun {
    /// One to six packets, length-prefixed.
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        for _ in 0..rng.range(1, 6) {
            let v4 = rng.chance(11, 20);
            let mut dst = destination(rng, v4);
            if dst.is_ipv4() != v4 {
                dst = packets::addr(rng, v4);
            }
            let src = if rng.chance(4, 5) {
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
            let at = w.begin_bytes();
            packets::build(rng, &shape, w.0);
            // Now and then more than the engine's buffer holds.
            if rng.chance(1, 300) {
                let n = rng.range(MAX_PACKET - 40, MAX_PACKET + 10);
                let len = w.0.len() - at;
                w.0.resize(at + n.max(len), 0);
            }
            w.end_bytes(at);
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        self.since_rebuild += 1;
        if self.since_rebuild > REBUILD_EVERY || !self.pair.home.peer_is_up("foreign") {
            self.reset();
        }
        let mut r = Reader::new(input);
        let mut packet = Vec::new();
        // A known finding is reported once the rest of the input has run too.
        let mut known = Ok(());
        while let Some(p) = r.bytes() {
            packet.clear();
            packet.extend_from_slice(p);
            match self.one(&mut packet) {
                Err(e) if e.contains(KNOWN) => known = known.and(Err(e)),
                other => other?,
            }
        }
        known
    }

    fn coverage(&self) -> String {
        let n = self.packets;
        let mut drops: Vec<String> = DropReason::ALL
            .iter()
            .zip(self.drops)
            .filter(|(_, c)| *c > 0)
            .map(|(r, c)| format!("{} {}", r.name(), pct(c, n)))
            .collect();
        drops.sort();
        format!(
            "{} packets: encrypted to foreign {}, to quiet {}; handshakes to pending {}, queued (counted) behind its handshake {}\n\
             dropped: {}; foreign decrypted and wrote {} of what it got ({} dropped there)",
            crate::driver::thousands(n),
            pct(self.sent[0], n),
            pct(self.sent[1], n),
            pct(self.sent[2], n),
            pct(self.queued, n),
            drops.join(", "),
            pct(self.foreign_tun, self.sent[0]),
            pct(self.foreign_drops, self.sent[0]),
        )
    }

    fn reset(&mut self) {
        self.pair = Pair::new();
        self.since_rebuild = 0;
    }
}

impl Default for EngineFromTun {
    fn default() -> Self {
        Self::new()
    }
}
