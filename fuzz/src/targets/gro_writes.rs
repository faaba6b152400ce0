//! Batches of packets through the TUN writer's coalescer (`io::gro`): runs of TCP segments and
//! UDP datagrams of a few flows, with gaps, retransmits, flags and header fields that differ,
//! among hostile packets and flipped bytes. Every write must pass the kernel's checks and cut
//! back (`io::gro::kernel`) into exactly the packets of the batch (up to IPv4 IDs and
//! checksums for those the kernel cut from a super-packet, byte for byte for the rest), each
//! flow's in its order, and nothing ever panics. Half the time the device refuses every
//! super-packet as invalid: then every packet must come through alone, exactly as it went in.

use std::cell::RefCell;
use std::io::{self, IoSlice};

use liqonet_gateway::io::gro::{kernel, Gro, Writes, HEADER_LEN};

use crate::checksum::{finish, pseudo, sum};
use crate::codec::{Reader, Writer};
use crate::driver::pct;
use crate::packets;
use crate::rng::Rng;
use crate::targets::Target;

const TCP: u8 = 6;
const UDP: u8 = 17;
/// Packets in one batch at most (the data path writes 128 at most).
const BATCH: usize = 128;

/// A TUN that keeps every write, and refuses super-packets when told to.
#[derive(Default)]
struct Tun {
    refuse_super_packets: bool,
    writes: RefCell<Vec<Vec<u8>>>,
}

impl Writes for Tun {
    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut whole = Vec::new();
        iov.iter().for_each(|s| whole.extend_from_slice(s));
        if self.refuse_super_packets && whole.get(1).is_some_and(|&gso| gso != 0) {
            // EINVAL: what the kernel answers a virtio header it will not take.
            return Err(io::Error::from_raw_os_error(22));
        }
        let n = whole.len();
        self.writes.borrow_mut().push(whole);
        Ok(n)
    }
}

#[derive(Default)]
pub struct GroWrites {
    inputs: u64,
    packets: u64,
    writes: u64,
    super_packets: u64,
    coalesced: u64,
    refusing: u64,
}

/// A flow the generator sends segments of.
struct Flow {
    v4: bool,
    proto: u8,
    ports: [u8; 4],
    seq: u32,
    /// Payload bytes of a full segment.
    size: usize,
}

impl Target for GroWrites {
    /// A flags byte (bit 0: the device takes UDP super-packets; bit 1: it refuses every
    /// super-packet), then the batch's packets, length-prefixed.
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(rng.u8() & 3);
        let mut flows: Vec<Flow> = (0..rng.range(1, 5))
            .map(|_| Flow {
                v4: rng.chance(3, 5),
                proto: if rng.chance(3, 4) { TCP } else { UDP },
                ports: [rng.u8(), rng.u8(), 0x14, 0x51],
                seq: rng.u32(),
                // Mostly small (fast inputs); full-sized now and then, for the 64 KB limit.
                size: match rng.chance(1, 4) {
                    true => *rng.pick(&[1368, 1380, 1000]),
                    false => *rng.pick(&[120, 64, 9, 1]),
                },
            })
            .collect();
        for _ in 0..rng.range(1, BATCH + 8) {
            let at = w.begin_bytes();
            match rng.below(12) {
                0 => packets::packet(rng, w.0),
                n => {
                    let f = rng.below(flows.len());
                    flow_packet(rng, &mut flows[f], w.0);
                    // Now and then a flipped byte anywhere.
                    if n == 1 && w.0.len() > at {
                        let i = rng.range(at, w.0.len() - 1);
                        w.0[i] ^= 1 << rng.below(8);
                    }
                }
            }
            w.end_bytes(at);
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut r = Reader::new(input);
        let Some(flags) = r.u8() else {
            return Ok(());
        };
        let (udp, refuse) = (flags & 1 != 0, flags & 2 != 0);
        let mut pkts: Vec<&[u8]> = Vec::new();
        while let (Some(p), true) = (r.bytes(), pkts.len() < BATCH) {
            pkts.push(p);
        }
        self.inputs += 1;
        self.packets += pkts.len() as u64;
        self.refusing += u64::from(refuse);
        let mut bufs: Vec<Vec<u8>> = pkts
            .iter()
            .map(|p| [&[0xee; HEADER_LEN][..], p].concat())
            .collect();
        let tun = Tun {
            refuse_super_packets: refuse,
            ..Tun::default()
        };
        // A fresh coalescer: one that saw a refusal coalesces that transport no more.
        let refused = Gro::new(BATCH).write(&tun, &mut bufs, udp);
        if refused != 0 {
            return Err(format!(
                "{refused} packets refused by a device that takes them"
            ));
        }
        // What the kernel makes of the writes, each packet marked when it was cut from a
        // super-packet: those are compared up to IPv4 IDs and checksums, the rest byte for byte.
        let mut out: Vec<(Vec<u8>, bool)> = Vec::new();
        for (k, w) in tun.writes.into_inner().iter().enumerate() {
            let segments = kernel::cut(w).map_err(|e| format!("write {k}: the kernel: {e}"))?;
            let coalesced = segments.len() > 1;
            self.writes += 1;
            if coalesced {
                self.super_packets += 1;
                self.coalesced += segments.len() as u64;
            }
            out.extend(segments.into_iter().map(|s| (s, coalesced)));
        }
        if out.len() != pkts.len() {
            return Err(format!("{} packets in, {} out", pkts.len(), out.len()));
        }
        // Each packet out is the first unmatched packet in that equals it.
        let norms: Vec<Vec<u8>> = pkts.iter().map(|p| kernel::norm(p)).collect();
        let mut at = vec![usize::MAX; pkts.len()];
        for (k, (o, loose)) in out.iter().enumerate() {
            let o_norm = loose.then(|| kernel::norm(o));
            let same = |i: usize| match &o_norm {
                Some(n) => norms[i] == *n,
                None => pkts[i] == &o[..],
            };
            let i = (0..pkts.len())
                .find(|&i| at[i] == usize::MAX && same(i))
                .ok_or_else(|| {
                    let head = &o[..o.len().min(60)];
                    format!(
                        "packet {k} out ({} bytes) is none of the batch's: {head:02x?}",
                        o.len()
                    )
                })?;
            at[i] = k;
        }
        for j in 0..pkts.len() {
            for i in 0..j {
                if at[i] > at[j] && ordered(pkts[i], pkts[j]) {
                    return Err(format!(
                        "packets {i} and {j} of the same flow (or hosts) left as {} and {}",
                        at[i], at[j]
                    ));
                }
            }
        }
        Ok(())
    }

    fn coverage(&self) -> String {
        format!(
            "{} batches ({} with super-packets refused), {} packets: {} written, {} super-packets \
             carrying {}",
            self.inputs,
            pct(self.refusing, self.inputs),
            self.packets,
            self.writes,
            self.super_packets,
            pct(self.coalesced, self.packets),
        )
    }
}

/// The next packet of flow `f`: mostly its next full segment, sometimes one that must not join
/// (a gap, a retransmit, a short one, flags, other header fields), appended to `out`.
fn flow_packet(rng: &mut Rng, f: &mut Flow, out: &mut Vec<u8>) {
    let mut len = f.size;
    let mut seq = f.seq;
    let mut flags = 0x10u8; // ACK
    let (mut ttl, mut tos, mut window, mut ack, mut df) = (64u8, 0u8, 512u16, 7u32, true);
    match rng.below(30) {
        0 => seq = seq.wrapping_add(f.size as u32),
        1 => seq = seq.wrapping_sub(f.size as u32),
        2 => len = rng.below(f.size),
        3 => flags |= 0x08, // PSH
        4 => flags = *rng.pick(&[0x11, 0x02, 0x12, 0x04, 0x14, 0x18 | 0x20, 0x50, 0]),
        5 => ttl = 63,
        6 => tos = 1, // ECT(1)
        7 => window = 513,
        8 => ack = 8,
        9 => df = false,
        10 => len = f.size + 1,
        _ => {}
    }
    f.seq = seq.wrapping_add(len as u32);
    let mut l4 = Vec::new();
    if f.proto == TCP {
        l4.extend_from_slice(&f.ports);
        l4.extend_from_slice(&seq.to_be_bytes());
        l4.extend_from_slice(&ack.to_be_bytes());
        l4.extend_from_slice(&[8 << 4, flags]);
        l4.extend_from_slice(&window.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]);
        // Timestamps, now and then another one (options must be equal to join).
        let tsval = if rng.chance(1, 20) { 10 } else { 9 };
        l4.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, tsval, 0, 0, 0, 3]);
    } else {
        l4.extend_from_slice(&f.ports);
        l4.extend_from_slice(&((8 + len) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend((0..len).map(|i| (seq as usize).wrapping_add(i) as u8));
    let (src, dst): (&[u8], &[u8]) = match f.v4 {
        true => (&[10, 244, 0, 10], &[10, 245, 0, 10]),
        false => (
            &[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        ),
    };
    let at = if f.proto == TCP { 16 } else { 6 };
    // Right most of the time: the coalescer does not verify transport checksums.
    let c = match rng.chance(1, 20) {
        true => rng.u16(),
        false => finish(sum(&l4, pseudo(src, dst, f.proto, l4.len()))),
    };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    if f.v4 {
        let start = out.len();
        out.extend_from_slice(&[0x45, tos]);
        out.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        out.extend_from_slice(&rng.u16().to_be_bytes());
        out.extend_from_slice(&[if df { 0x40 } else { 0 }, 0, ttl, f.proto, 0, 0]);
        out.extend_from_slice(src);
        out.extend_from_slice(dst);
        let c = finish(sum(&out[start..], 0));
        out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        out.extend_from_slice(&[0x60 | tos >> 4, tos << 4, 0, 0]);
        out.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        out.extend_from_slice(&[f.proto, ttl]);
        out.extend_from_slice(src);
        out.extend_from_slice(dst);
    }
    out.extend_from_slice(&l4);
}

/// Whether `a`, before `b` in the batch, must also be written before it: packets of one flow
/// (protocol, addresses, ports), a packet whose ports cannot be read and any other between the
/// same addresses, and a packet whose addresses cannot be read and any other.
fn ordered(a: &[u8], b: &[u8]) -> bool {
    match (addresses(a), addresses(b)) {
        (Some(x), Some(y)) if x != y => false,
        (Some(_), Some(_)) => match (ports(a), ports(b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        },
        _ => true,
    }
}

fn addresses(p: &[u8]) -> Option<&[u8]> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(&p[12..20]),
        6 if p.len() >= 40 => Some(&p[8..40]),
        _ => None,
    }
}

/// Protocol and ports, where a TCP or UDP header starts right after the IP header (IPv4 with
/// options too, but not a later fragment).
fn ports(p: &[u8]) -> Option<(u8, &[u8])> {
    let (start, proto) = match p.first()? >> 4 {
        4 => {
            let later_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0;
            let ihl = usize::from(p[0] & 0x0f) * 4;
            (ihl, if later_fragment || ihl < 20 { 0 } else { p[9] })
        }
        _ => (40, p[6]),
    };
    match proto {
        TCP | UDP => Some((proto, p.get(start..start + 4)?)),
        _ => None,
    }
}
