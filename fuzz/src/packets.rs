//! Hostile IP packets built layer by layer: mostly well-formed down to the transport header (so
//! they get past the first length check and reach the rewrite), with the odd shapes that break
//! packet code: IPv4 options, IPv6 extension header chains, fragments, TCP option layouts, UDP
//! without checksum, ICMP errors quoting other packets, and lengths that lie.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use liqonet_gateway::engine::Network;
use liqonet_proto::Cidr;

use crate::checksum::{finish, pseudo, sum};
use crate::rng::Rng;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// The remapping peer's networks (as it numbers them → as home pods address them). Mixed prefix
/// lengths, so that prefix swaps cross byte boundaries.
pub fn networks() -> &'static [Network] {
    static NETS: OnceLock<Vec<Network>> = OnceLock::new();
    NETS.get_or_init(|| {
        [
            ("10.244.0.0/16", "10.245.0.0/16"),
            ("10.96.0.0/12", "10.128.0.0/12"),
            ("fd00:244::/64", "fd00:245::/64"),
            ("fd10::/20", "fd20::/20"),
        ]
        .iter()
        .map(|(c, r)| Network {
            cidr: c.parse().expect("a CIDR"),
            remapped: r.parse().expect("a CIDR"),
        })
        .collect()
    })
}

/// Home's own pod network (never remapped), for addresses on the home side.
pub fn home_net(v4: bool) -> Cidr {
    if v4 { "10.246.0.0/16" } else { "fd00:246::/64" }
        .parse()
        .expect("a CIDR")
}

/// A host in `net` with random host bits.
pub fn host_in(rng: &mut Rng, net: Cidr) -> IpAddr {
    let len = u32::from(net.prefix_len());
    match net.addr() {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(len).unwrap_or(0) & rng.u32();
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
        }
        IpAddr::V6(a) => {
            let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let host = u128::MAX.checked_shr(len).unwrap_or(0) & r;
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
        }
    }
}

/// An address of one family: mostly in the remapped networks (on either side of the swap), some
/// at home, some random, some at the edges of the prefixes.
pub fn addr(rng: &mut Rng, v4: bool) -> IpAddr {
    let nets: Vec<&Network> = networks()
        .iter()
        .filter(|n| n.cidr.is_ipv4() == v4)
        .collect();
    let net = *rng.pick(&nets);
    match rng.below(10) {
        0..=2 | 9 => host_in(rng, net.remapped),
        3..=5 => host_in(rng, net.cidr),
        6 => host_in(rng, home_net(v4)),
        7 => {
            if v4 {
                IpAddr::V4(Ipv4Addr::from(rng.u32()))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
                ))
            }
        }
        _ => {
            let edges: &[&str] = if v4 {
                &[
                    "0.0.0.0",
                    "255.255.255.255",
                    "10.245.0.0",
                    "10.245.255.255",
                    "10.244.255.255",
                    "10.143.255.255",
                    "10.128.0.0",
                ]
            } else {
                &[
                    "::",
                    "::1",
                    "::ffff:10.245.1.1",
                    "fd00:245::",
                    "fd00:245::ffff:ffff:ffff:ffff",
                    "fd20:0fff:ffff:ffff:ffff:ffff:ffff:ffff",
                    "ff02::1",
                ]
            };
            rng.pick(edges).parse().expect("an address")
        }
    }
}

pub fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// ICMP errors may quote packets that are errors themselves, this many levels down.
    pub depth: u8,
    /// Lie about lengths, cut, flip bytes (some of the time).
    pub hostile: bool,
    /// Force the transport (else chosen at random).
    pub transport: Option<Transport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    IcmpInfo,
    IcmpError,
    Other,
}

impl Shape {
    pub fn random(rng: &mut Rng) -> Shape {
        let v4 = rng.chance(11, 20);
        Shape {
            src: addr(rng, v4),
            dst: addr(rng, v4),
            depth: 1,
            hostile: true,
            transport: None,
        }
    }
}

/// A hostile IP packet, appended to `out`.
pub fn packet(rng: &mut Rng, out: &mut Vec<u8>) {
    let shape = Shape::random(rng);
    build(rng, &shape, out);
}

/// A packet of `shape`, appended to `out`.
pub fn build(rng: &mut Rng, shape: &Shape, out: &mut Vec<u8>) {
    let v4 = shape.src.is_ipv4();
    let kind = shape.transport.unwrap_or_else(|| match rng.below(20) {
        0..=6 => Transport::Tcp,
        7..=11 => Transport::Udp,
        12..=13 => Transport::IcmpInfo,
        14..=17 => Transport::IcmpError,
        _ => Transport::Other,
    });
    let mut l4 = Vec::new();
    let (mut proto, csum_at) = match kind {
        Transport::Tcp => (TCP, Some(tcp(rng, &mut l4))),
        Transport::Udp => (UDP, Some(udp(rng, &mut l4))),
        Transport::IcmpInfo => (icmp_proto(v4), Some(icmp_info(rng, v4, &mut l4))),
        Transport::IcmpError if shape.depth > 0 => {
            (icmp_proto(v4), Some(icmp_error(rng, shape, &mut l4)))
        }
        Transport::IcmpError => (icmp_proto(v4), Some(icmp_info(rng, v4, &mut l4))),
        Transport::Other => {
            let n = rng.len(64);
            rng.bytes(n, &mut l4);
            (*rng.pick(&[0, 2, 4, 41, 47, 50, 51, 59, 132, 255]), None)
        }
    };
    // ICMP numbered as the other family's (an ICMPv4 message in IPv6, and the reverse).
    if rng.chance(1, 40) && matches!(kind, Transport::IcmpInfo | Transport::IcmpError) {
        proto = icmp_proto(!v4);
    }
    // Transport checksum: right most of the time; UDP sometimes without one.
    if let Some(at) = csum_at {
        let zero_udp = proto == UDP && rng.chance(if v4 { 3 } else { 1 }, 20);
        if zero_udp || rng.chance(1, 12) {
            let v = if zero_udp { 0 } else { rng.u16() };
            l4[at..at + 2].copy_from_slice(&v.to_be_bytes());
        } else {
            let initial = if proto == ICMP && v4 {
                0
            } else {
                pseudo(&octets(shape.src), &octets(shape.dst), proto, l4.len())
            };
            let mut c = finish(sum(&l4, initial));
            if proto == UDP && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    let start = out.len();
    if v4 {
        ipv4(rng, shape, proto, &l4, out);
    } else {
        ipv6(rng, shape, proto, &l4, out);
    }
    if shape.hostile && rng.chance(3, 10) {
        corrupt(rng, v4, out, start);
    }
}

fn icmp_proto(v4: bool) -> u8 {
    if v4 {
        ICMP
    } else {
        ICMPV6
    }
}

fn ipv4(rng: &mut Rng, shape: &Shape, proto: u8, l4: &[u8], out: &mut Vec<u8>) {
    let mut opts = Vec::new();
    if rng.chance(1, 4) {
        ipv4_options(rng, &mut opts);
    }
    let hl = 20 + opts.len();
    let start = out.len();
    out.resize(start + hl, 0);
    let h = &mut out[start..];
    h[0] = 0x40 | (hl / 4) as u8;
    h[1] = rng.u8();
    h[2..4].copy_from_slice(&((hl + l4.len()).min(0xffff) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&rng.u16().to_be_bytes());
    let frag: u16 = match rng.below(25) {
        0..=16 => 0,
        17..=18 => 0x4000, // don't fragment
        19..=20 => 0x2000, // first fragment: more fragments, offset 0
        21..=22 => rng.range(1, 0x1fff) as u16 | (rng.u16() & 0x2000), // a later fragment
        _ => rng.u16(),
    };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = rng.u8();
    h[9] = proto;
    h[12..16].copy_from_slice(&octets(shape.src));
    h[16..20].copy_from_slice(&octets(shape.dst));
    h[20..].copy_from_slice(&opts);
    let c = if rng.chance(1, 15) {
        rng.u16()
    } else {
        finish(sum(h, 0))
    };
    h[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(l4);
}

/// IPv4 options: NOPs, record route, timestamps, router alert, unknown ones, and lengths that
/// run past the header or are too short to mean anything; padded to a multiple of 4, at most 40.
fn ipv4_options(rng: &mut Rng, opts: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        match rng.below(7) {
            0 => opts.push(1),
            1 => opts.push(0),
            2 => {
                let n = rng.range(1, 4);
                opts.extend_from_slice(&[7, (3 + 4 * n) as u8, 4]);
                rng.bytes(4 * n, opts);
            }
            3 => opts.extend_from_slice(&[148, 4, 0, 0]),
            4 => {
                opts.extend_from_slice(&[68, 12, 5, 0]);
                rng.bytes(8, opts);
            }
            5 => opts.extend_from_slice(&[rng.u8(), *rng.pick(&[0u8, 1, 2, 40, 255])]),
            _ => {
                let n = rng.range(2, 10);
                opts.extend_from_slice(&[rng.u8() | 0x80, n as u8]);
                rng.bytes(n - 2, opts);
            }
        }
    }
    opts.truncate(40);
    while opts.len() % 4 != 0 {
        opts.push(if rng.bool() { 1 } else { 0 });
    }
}

fn ipv6(rng: &mut Rng, shape: &Shape, proto: u8, l4: &[u8], out: &mut Vec<u8>) {
    let mut ext = Vec::new();
    let first = if rng.chance(3, 10) {
        ipv6_extensions(rng, proto, &mut ext)
    } else {
        proto
    };
    let start = out.len();
    out.resize(start + 40, 0);
    let h = &mut out[start..];
    h[0] = 0x60 | (rng.u8() & 0x0f);
    h[1..4].copy_from_slice(&[rng.u8(), rng.u8(), rng.u8()]);
    h[4..6].copy_from_slice(&((ext.len() + l4.len()).min(0xffff) as u16).to_be_bytes());
    h[6] = first;
    h[7] = rng.u8();
    h[8..24].copy_from_slice(&octets(shape.src));
    h[24..40].copy_from_slice(&octets(shape.dst));
    out.extend_from_slice(&ext);
    out.extend_from_slice(l4);
}

/// A chain of extension headers ending in `proto`; returns the first header's number.
fn ipv6_extensions(rng: &mut Rng, proto: u8, ext: &mut Vec<u8>) -> u8 {
    let n = rng.range(1, 4);
    let kinds: Vec<u8> = (0..n)
        .map(|i| match rng.below(10) {
            0..=2 if i == 0 => 0,
            0..=2 => *rng.pick(&[0, 43, 60]),
            3..=4 => 43,
            5..=6 => 60,
            _ => 44,
        })
        .collect();
    for (i, &kind) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or_else(|| {
            // Now and then the chain ends in "no next header" or an unwalked AH.
            match rng.below(30) {
                0 => 59,
                1 => 51,
                _ => proto,
            }
        });
        if kind == 44 {
            let offset: u16 = if rng.chance(3, 5) {
                0
            } else {
                rng.range(1, 0x1fff) as u16
            };
            let more = u16::from(rng.chance(4, 5));
            ext.extend_from_slice(&[next, 0]);
            ext.extend_from_slice(&((offset << 3) | more).to_be_bytes());
            rng.bytes(4, ext);
        } else {
            let units = rng.below(3);
            // Now and then a length that claims more than is there (or less than what follows).
            let claimed = if rng.chance(1, 10) {
                *rng.pick(&[255u8, 100, 7, 1])
            } else {
                units as u8
            };
            ext.extend_from_slice(&[next, claimed]);
            // Options: Pad1/PadN, or random bytes.
            if rng.bool() {
                ext.extend(std::iter::repeat_n(0u8, 6 + 8 * units));
            } else {
                rng.bytes(6 + 8 * units, ext);
            }
        }
    }
    kinds[0]
}

/// TCP: SYNs with MSS in odd places (after odd numbers of NOPs), truncated options, wrong option
/// lengths, data offsets that lie. Returns where the checksum goes.
fn tcp(rng: &mut Rng, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + 20, 0);
    let mut header = [0u8; 20];
    rng.fill(&mut header);
    out[start..start + 20].copy_from_slice(&header);
    let flags = match rng.below(20) {
        0..=7 => 0x02,
        8..=11 => 0x12,
        12..=16 => 0x18,
        _ => rng.u8(),
    };
    out[start + 13] = flags;
    let mut opts = Vec::new();
    if rng.chance(4, 5) {
        tcp_options(rng, &mut opts);
    }
    let honest = (20 + opts.len()) / 4;
    let offset = if rng.chance(1, 12) {
        rng.below(16)
    } else {
        honest
    };
    out[start + 12] = ((offset as u8) << 4) | (rng.u8() & 0x0f);
    out[start + 16..start + 18].copy_from_slice(&[0, 0]);
    out.extend_from_slice(&opts);
    payload(rng, out);
    start + 16
}

fn tcp_options(rng: &mut Rng, opts: &mut Vec<u8>) {
    // Leading NOPs: an odd count puts the MSS value at an odd offset.
    opts.extend(std::iter::repeat_n(1u8, rng.below(4)));
    let mss_at = rng.below(4);
    for i in 0..rng.range(1, 5) {
        if i == mss_at || (i == 0 && rng.bool()) {
            let mss: u16 = *rng.pick(&[65535, 9000, 8960, 1460, 1440, 1380, 1360, 1220, 536, 0]);
            let mss = if rng.chance(1, 5) { rng.u16() } else { mss };
            let len = if rng.chance(1, 10) {
                *rng.pick(&[0u8, 1, 2, 3, 5, 255])
            } else {
                4
            };
            opts.extend_from_slice(&[2, len]);
            opts.extend_from_slice(&mss.to_be_bytes());
            continue;
        }
        match rng.below(9) {
            0 => opts.push(1),
            1 => opts.extend_from_slice(&[3, 3, rng.u8()]),
            2 => opts.extend_from_slice(&[4, 2]),
            3 => {
                opts.extend_from_slice(&[8, 10]);
                rng.bytes(8, opts);
            }
            4 => {
                let n = rng.range(1, 3);
                opts.extend_from_slice(&[5, (2 + 8 * n) as u8]);
                rng.bytes(8 * n, opts);
            }
            5 => {
                // End of options, then garbage that must not be read as options.
                opts.push(0);
                let n = rng.below(6);
                rng.bytes(n, opts);
            }
            6 => opts.push(rng.u8()), // a kind with its length cut off
            7 => opts.extend_from_slice(&[rng.u8(), *rng.pick(&[0u8, 1, 40, 255])]),
            _ => {
                let n = rng.range(2, 8);
                opts.extend_from_slice(&[rng.u8(), n as u8]);
                rng.bytes(n - 2, opts);
            }
        }
    }
    opts.truncate(40);
    while opts.len() % 4 != 0 {
        opts.push(*rng.pick(&[1u8, 1, 0, 2]));
    }
}

/// UDP with a length field that is right most of the time. Returns where the checksum goes.
fn udp(rng: &mut Rng, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + 8, 0);
    let ports = rng.u32().to_be_bytes();
    out[start..start + 4].copy_from_slice(&ports);
    payload(rng, out);
    let len = out.len() - start;
    let stated = match rng.below(12) {
        0 => rng.u16(),
        1 => *rng.pick(&[0u16, 7, 8, 0xffff]),
        _ => len.min(0xffff) as u16,
    };
    out[start + 4..start + 6].copy_from_slice(&stated.to_be_bytes());
    start + 6
}

/// Echo requests and replies, neighbour discovery and other non-error ICMP messages.
fn icmp_info(rng: &mut Rng, v4: bool, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let kind = if v4 {
        let any = rng.u8();
        *rng.pick(&[8u8, 0, 13, 14, 9, 10, any])
    } else {
        let any = rng.u8();
        *rng.pick(&[128u8, 129, 133, 134, 135, 136, 137, 143, any])
    };
    out.extend_from_slice(&[kind, rng.u8() & 3, 0, 0]);
    rng.bytes(4, out);
    payload(rng, out);
    start + 2
}

/// An ICMP error quoting a packet: whole, cut after 8 bytes of transport (RFC 792), cut inside
/// its header, or with a quoted header whose lengths lie. Returns where the checksum goes.
pub fn icmp_error(rng: &mut Rng, shape: &Shape, out: &mut Vec<u8>) -> usize {
    let v4 = shape.src.is_ipv4();
    let start = out.len();
    let (kind, code) = if v4 {
        match rng.below(12) {
            0..=3 => (3, *rng.pick(&[0u8, 1, 3, 4, 13])), // unreachable, fragmentation needed
            4..=5 => (11, 0),
            6 => (12, 0),
            7 => (4, 0),
            8 => (5, 1),
            _ => (rng.u8(), rng.u8()),
        }
    } else {
        match rng.below(10) {
            0..=3 => (1, *rng.pick(&[0u8, 3, 4])),
            4..=5 => (2, 0),
            6 => (3, 0),
            7 => (4, 0),
            _ => (rng.u8(), rng.u8()),
        }
    };
    out.extend_from_slice(&[kind, code, 0, 0]);
    // Unused, next-hop MTU or pointer.
    let rest = match rng.below(3) {
        0 => 0u32,
        1 => *rng.pick(&[1280u32, 1420, 576, 0, 65535, u32::MAX]),
        _ => rng.u32(),
    };
    out.extend_from_slice(&rest.to_be_bytes());
    // The quoted packet went from the host receiving the error to the host sending it (mostly
    // the same addresses swapped); now and then of the other family.
    let qv4 = if rng.chance(1, 15) { !v4 } else { v4 };
    let quote = Shape {
        src: if qv4 == v4 && rng.chance(4, 5) {
            shape.dst
        } else {
            addr(rng, qv4)
        },
        dst: if qv4 == v4 && rng.chance(4, 5) {
            shape.src
        } else {
            addr(rng, qv4)
        },
        depth: shape.depth - 1,
        hostile: rng.chance(1, 4),
        transport: None,
    };
    let q_start = out.len();
    build(rng, &quote, out);
    let q_len = out.len() - q_start;
    // (A hostile quote may have been cut to nothing.)
    let hl = match out.get(q_start) {
        Some(b) if qv4 => usize::from(b & 0x0f) * 4,
        _ => 40,
    };
    let keep = match rng.below(10) {
        0..=2 => q_len,
        3..=5 => hl + 8,
        6 => hl,
        7 => rng.below(hl.max(1)),
        8 => rng.below(q_len + 1),
        _ => hl + rng.below(40),
    };
    out.truncate(q_start + keep.min(q_len));
    if rng.chance(1, 5) && out.len() >= q_start + 8 {
        lie_about_length(rng, qv4, &mut out[q_start..]);
    }
    start + 2
}

/// Payload bytes: mostly short, some MTU-sized, now and then near the 64 KB limit.
fn payload(rng: &mut Rng, out: &mut Vec<u8>) {
    let n = match rng.below(100) {
        0..=69 => rng.below(64),
        70..=94 => rng.below(1500),
        95..=98 => rng.range(1500, 9000),
        _ => rng.range(9000, 65400),
    };
    rng.bytes(n, out);
}

/// Rewrites the IPv4 total length / IHL or the IPv6 payload length to a lie.
fn lie_about_length(rng: &mut Rng, v4: bool, p: &mut [u8]) {
    if v4 && p.len() >= 4 {
        let hl = usize::from(p[0] & 0x0f) * 4;
        if rng.chance(1, 3) {
            p[0] = 0x40 | *rng.pick(&[0u8, 1, 4, 5, 6, 15]);
        } else {
            let total = *rng.pick(&[
                0usize,
                4,
                hl.saturating_sub(1),
                hl,
                p.len() - 1,
                p.len() + 1,
                0xffff,
            ]);
            p[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
        }
    } else if !v4 && p.len() >= 6 {
        let payload = p.len().saturating_sub(40);
        let small = rng.below(64);
        let stated = *rng.pick(&[
            0usize,
            payload.saturating_sub(1),
            payload + 1,
            0xffff,
            small,
        ]);
        p[4..6].copy_from_slice(&(stated.min(0xffff) as u16).to_be_bytes());
    }
}

/// Breaks a built packet (at `start` in `out`): lengths that lie, cuts, trailing bytes, flipped
/// bytes, a wrong version.
fn corrupt(rng: &mut Rng, v4: bool, out: &mut Vec<u8>, start: usize) {
    for _ in 0..rng.range(1, 2) {
        let len = out.len() - start;
        match rng.below(6) {
            0 | 1 => {
                lie_about_length(rng, v4, &mut out[start..]);
                // Keep the header checksum right half the time, so only the lie is wrong.
                if v4 && rng.bool() && len >= 20 {
                    let p = &mut out[start..];
                    let hl = (usize::from(p[0] & 0x0f) * 4).clamp(20, len);
                    p[10..12].copy_from_slice(&[0, 0]);
                    let c = finish(sum(&p[..hl], 0));
                    p[10..12].copy_from_slice(&c.to_be_bytes());
                }
            }
            2 => out.truncate(start + rng.below(len + 1)),
            3 => {
                let n = rng.len(64);
                rng.bytes(n, out);
            }
            4 => {
                for _ in 0..rng.range(1, 4) {
                    if len > 0 {
                        let i = start + rng.below(len);
                        out[i] ^= 1 << rng.below(8);
                    }
                }
            }
            _ => {
                if len > 0 {
                    out[start] = (out[start] & 0x0f) | (*rng.pick(&[0u8, 4, 5, 6, 7, 15]) << 4);
                }
            }
        }
    }
}
