//! Test support: builds packets with correct checksums computed from scratch, and verifies them
//! from scratch, independently of the incremental code under test.

use std::net::IpAddr;

use super::checksum::{finish, pseudo_header, sum};
use super::ip::IpPacket;
use super::proto::{ICMP, ICMPV6, TCP, UDP};

#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        syn: bool,
        options: Vec<u8>,
        payload: Vec<u8>,
    },
    /// A payload starting with "NOCSUM" gets a zero (absent) IPv4 UDP checksum.
    Udp { payload: Vec<u8> },
    /// Echo request.
    Echo { payload: Vec<u8> },
    /// An ICMP error quoting `quoted` cut to `keep` bytes.
    Error { quoted: Box<Spec>, keep: usize },
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (a multiple of 4 bytes) or IPv6 hop-by-hop option bytes (6 + 8n).
    pub ip_options: Vec<u8>,
    pub l4: L4,
}

/// A whole packet with every checksum right.
pub fn build(spec: &Spec) -> Vec<u8> {
    let v4 = spec.src.is_ipv4();
    let (proto, body) = l4_bytes(spec);
    let mut p = Vec::new();
    if v4 {
        let hl = 20 + spec.ip_options.len();
        p.resize(hl, 0);
        p[0] = 0x40 | (hl / 4) as u8;
        p[2..4].copy_from_slice(&((hl + body.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&octets(spec.src));
        p[16..20].copy_from_slice(&octets(spec.dst));
        p[20..hl].copy_from_slice(&spec.ip_options);
        let c = finish(sum(&p[..hl], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        let ext = if spec.ip_options.is_empty() {
            0
        } else {
            2 + spec.ip_options.len()
        };
        p.resize(40 + ext, 0);
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((ext + body.len()) as u16).to_be_bytes());
        p[6] = if ext > 0 { 0 } else { proto };
        p[7] = 64;
        p[8..24].copy_from_slice(&octets(spec.src));
        p[24..40].copy_from_slice(&octets(spec.dst));
        if ext > 0 {
            p[40] = proto;
            p[41] = (ext / 8 - 1) as u8;
            p[42..40 + ext].copy_from_slice(&spec.ip_options);
        }
    }
    let l4_at = p.len();
    p.extend_from_slice(&body);
    let c = l4_checksum(&p, l4_at, proto, v4);
    if let Some((at, c)) = c {
        p[l4_at + at..l4_at + at + 2].copy_from_slice(&c.to_be_bytes());
    }
    p
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn l4_bytes(spec: &Spec) -> (u8, Vec<u8>) {
    let v4 = spec.src.is_ipv4();
    match &spec.l4 {
        L4::Tcp {
            syn,
            options,
            payload,
        } => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&40000u16.to_be_bytes());
            t[2..4].copy_from_slice(&80u16.to_be_bytes());
            t[12] = (((20 + options.len()) / 4) << 4) as u8;
            t[13] = if *syn { 0x02 } else { 0x18 };
            t.extend_from_slice(options);
            t.extend_from_slice(payload);
            (TCP, t)
        }
        L4::Udp { payload } => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&5353u16.to_be_bytes());
            u[2..4].copy_from_slice(&53u16.to_be_bytes());
            u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            u.extend_from_slice(payload);
            (UDP, u)
        }
        L4::Echo { payload } => {
            let mut e = vec![if v4 { 8 } else { 128 }, 0, 0, 0, 0, 1, 0, 1];
            e.extend_from_slice(payload);
            (if v4 { ICMP } else { ICMPV6 }, e)
        }
        L4::Error { quoted, keep } => {
            let q = build(quoted);
            let keep = (*keep).min(q.len());
            // Destination unreachable (port), or ICMPv6 destination unreachable.
            let mut e = vec![
                if v4 { 3 } else { 1 },
                if v4 { 3 } else { 4 },
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            e.extend_from_slice(&q[..keep]);
            (if v4 { ICMP } else { ICMPV6 }, e)
        }
    }
}

/// Where the checksum of the transport at `at` goes, and its value.
fn l4_checksum(p: &[u8], at: usize, proto: u8, v4: bool) -> Option<(usize, u16)> {
    let body = &p[at..];
    let pseudo = || {
        let (s, d) = if v4 {
            (&p[12..16], &p[16..20])
        } else {
            (&p[8..24], &p[24..40])
        };
        pseudo_header(s, d, proto, body.len() as u32)
    };
    match proto {
        TCP => Some((16, finish(sum(body, pseudo())))),
        UDP => {
            if body.len() >= 8 && v4 && udp_disabled(body) {
                return None;
            }
            let c = finish(sum(body, pseudo()));
            Some((6, if c == 0 { 0xffff } else { c }))
        }
        ICMP => Some((2, finish(sum(body, 0)))),
        ICMPV6 => Some((2, finish(sum(body, pseudo())))),
        _ => None,
    }
}

/// UDP payloads starting with "NOCSUM" are built with a zero (absent) IPv4 UDP checksum.
fn udp_disabled(udp: &[u8]) -> bool {
    udp.len() >= 14 && &udp[8..14] == b"NOCSUM"
}

/// Checks every checksum of a whole packet from scratch; for an ICMP error, also the quoted IPv4
/// header checksum and, when the quote is whole, the quoted transport checksum.
pub fn verify(p: &[u8]) -> Result<(), String> {
    let v = IpPacket::new_checked(p).map_err(|e| format!("{e:?}"))?;
    let v4 = v.is_ipv4();
    if v4 && fold16(sum(&p[..v.header_len()], 0)) != 0xffff {
        return Err("IPv4 header checksum".into());
    }
    let Some(t) = v.transport() else {
        return Ok(());
    };
    if v4 && p[6] & 0x20 != 0 {
        return Ok(()); // A first fragment: its transport checksum covers the whole datagram.
    }
    let end = v.total_len();
    let body = &p[t.offset..end];
    let (s, d) = if v4 {
        (&p[12..16], &p[16..20])
    } else {
        (&p[8..24], &p[24..40])
    };
    let pseudo = pseudo_header(s, d, t.protocol, body.len() as u32);
    let ok = match t.protocol {
        TCP => fold16(sum(body, pseudo)) == 0xffff,
        UDP => (v4 && body[6..8] == [0, 0]) || fold16(sum(body, pseudo)) == 0xffff,
        ICMP => fold16(sum(body, 0)) == 0xffff,
        ICMPV6 => fold16(sum(body, pseudo)) == 0xffff,
        _ => true,
    };
    if !ok {
        return Err(format!("transport checksum (protocol {})", t.protocol));
    }
    let is_error = (t.protocol == ICMP && body[0] == 3) || (t.protocol == ICMPV6 && body[0] == 1);
    if is_error && body.len() > 8 {
        let q = &body[8..];
        if let Ok(qv) = IpPacket::new_quoted(q) {
            if qv.is_ipv4() && fold16(sum(&q[..qv.header_len()], 0)) != 0xffff {
                return Err("quoted IPv4 header checksum".into());
            }
            if qv.total_len() == q.len() {
                verify(q).map_err(|e| format!("quoted packet: {e}"))?;
            }
        }
    }
    Ok(())
}

fn fold16(s: u32) -> u16 {
    super::checksum::fold(s)
}
