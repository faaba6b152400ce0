//! What the kernel makes of one TUN write with a virtio header: the packet itself, or a
//! super-packet cut back into its segments as `virtio_net_hdr_to_skb` and `tcp_gso_segment` /
//! `__udp_gso_segment` cut it (headers from the transport's own length, IPv4 IDs counted up,
//! checksums completed from the partial sum), after the checks they and the IP and UDP input
//! paths make. The oracle of [`super`]'s tests and of the fuzzer's `gro_writes` target (feature
//! `gro-oracle`); not on the data path.

use super::{
    GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, HEADER_LEN, MAX_SEGMENTS, NEEDS_CSUM, TCP, TCP_PSH, UDP,
};
use crate::wire::checksum;

/// The packets one write makes, or the check of the kernel's that it fails.
pub fn cut(written: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let Some((h, p)) = written.split_at_checked(HEADER_LEN) else {
        return Err(format!("{} bytes: no virtio header", written.len()));
    };
    if h[1] == 0 {
        return match h == [0; HEADER_LEN] {
            true => Ok(vec![p.to_vec()]),
            false => Err(format!("a lone packet's virtio header is not empty: {h:?}")),
        };
    }
    let ne = |at: usize| usize::from(u16::from_ne_bytes([h[at], h[at + 1]]));
    let (hdr_len, size, t, at) = (ne(2), ne(4), ne(6), ne(8));
    let v4 = p.first().is_some_and(|b| b >> 4 == 4);
    let udp = h[1] == GSO_UDP_L4;
    let gso = match (udp, v4) {
        (true, _) => GSO_UDP_L4,
        (false, true) => GSO_TCPV4,
        (false, false) => GSO_TCPV6,
    };
    check(h[0] == NEEDS_CSUM && h[1] == gso, || {
        format!("flags/type {h:?}")
    })?;
    let ip_len = if v4 { usize::from(p[0] & 0x0f) * 4 } else { 40 };
    check(ip_len >= 20 && p.len() >= ip_len, || {
        format!("{} bytes, IP header {ip_len}", p.len())
    })?;
    // ip_rcv_core and ipv6_rcv: a right IPv4 header checksum, and the length the header says
    // (a shorter one would cut the super-packet short).
    if v4 {
        let sum = checksum::fold(checksum::sum(&p[..ip_len], 0));
        check(sum == 0xffff, || {
            format!("IPv4 header checksum sums to {sum:#x}")
        })?;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        check(total == p.len(), || {
            format!("IPv4 total length {total} of {}", p.len())
        })?;
    } else {
        let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
        check(payload + 40 == p.len(), || {
            format!("IPv6 payload length {payload} of {}", p.len())
        })?;
    }
    let min_l4 = if udp { 8 } else { 20 };
    check(t == ip_len && p.len() >= t + min_l4, || {
        format!("csum_start {t}")
    })?;
    check(at == if udp { 6 } else { 16 }, || {
        format!("csum_offset {at}")
    })?;
    let l4_hdr = if udp {
        8
    } else {
        usize::from(p[t + 12] >> 4) * 4
    };
    check(hdr_len == t + l4_hdr, || format!("hdr_len {hdr_len}"))?;
    if udp {
        // udp_rcv trims the datagram to its own length before cutting it.
        let len = usize::from(u16::from_be_bytes([p[t + 4], p[t + 5]]));
        check(len == p.len() - t, || {
            format!("UDP length {len} of {}", p.len() - t)
        })?;
    }
    check(size > 0 && p.len() > hdr_len + size, || {
        format!("gso_size {size}")
    })?;
    check(p.len() <= usize::from(u16::MAX), || {
        format!("{} bytes", p.len())
    })?;
    let (src, dst) = if v4 {
        (&p[12..16], &p[16..20])
    } else {
        (&p[8..24], &p[24..40])
    };
    let proto = if udp { UDP } else { TCP };
    // Independent of the code's own helpers: the ones'-complement sum, folded, not inverted.
    let mut pseudo: u32 = src
        .chunks(2)
        .chain(dst.chunks(2))
        .map(|w| u32::from(w[0]) << 8 | u32::from(w[1]))
        .sum();
    pseudo += u32::from(proto) + (p.len() - t) as u32;
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    let partial = checksum::read(p, t + at);
    check(partial == pseudo as u16, || {
        format!("partial checksum {partial:#x}, not {pseudo:#x}")
    })?;
    let chunks: Vec<&[u8]> = p[hdr_len..].chunks(size).collect();
    let n = chunks.len();
    // The kernel would take one segment as a plain packet; the coalescer never writes fewer
    // than two, nor more than its limit.
    check((2..=MAX_SEGMENTS).contains(&n), || format!("{n} segments"))?;
    let id = u16::from_be_bytes([p[4], p[5]]);
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = p[..hdr_len].to_vec();
            s.extend_from_slice(chunk);
            let l4_len = s.len() - t;
            if v4 {
                let total = s.len() as u16;
                s[2..4].copy_from_slice(&total.to_be_bytes());
                s[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            } else {
                s[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            }
            if udp {
                s[t + 4..t + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            } else {
                let seq = u32::from_be_bytes([s[t + 4], s[t + 5], s[t + 6], s[t + 7]]);
                let seq = seq.wrapping_add((i * size) as u32);
                s[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
                if i + 1 < n {
                    s[t + 13] &= !TCP_PSH;
                }
            }
            refresh(&mut s);
            s
        })
        .collect())
}

/// A packet with its IPv4 ID cleared and its checksums made right (the kernel numbers the
/// segments it cuts, and completes their checksums); a packet too short for that, as it is.
pub fn norm(p: &[u8]) -> Vec<u8> {
    let mut p = p.to_vec();
    if p.len() >= 20 && p[0] == 0x45 {
        p[4..6].fill(0);
        refresh(&mut p);
    } else if p.len() >= 40 && p[0] >> 4 == 6 {
        refresh(&mut p);
    }
    p
}

/// Rewrites the IPv4 header checksum and the TCP or UDP checksum (over the whole packet) of an
/// IPv4 packet without options or an IPv6 one without extension headers; leaves what it cannot
/// read.
pub fn refresh(p: &mut [u8]) {
    let v4 = p.first().is_some_and(|b| b >> 4 == 4);
    let t = if v4 { 20 } else { 40 };
    if p.len() < t {
        return;
    }
    if v4 {
        p[10..12].fill(0);
        let c = checksum::finish(checksum::sum(&p[..20], 0));
        checksum::write(p, 10, c);
    }
    let proto = if v4 { p[9] } else { p[6] };
    let at = t + match proto {
        TCP => 16,
        UDP => 6,
        _ => return,
    };
    if p.len() < at + 2 {
        return;
    }
    p[at..at + 2].fill(0);
    let (src, dst) = if v4 {
        (&p[12..16], &p[16..20])
    } else {
        (&p[8..24], &p[24..40])
    };
    let pseudo = checksum::pseudo_header(src, dst, proto, (p.len() - t) as u32);
    let c = checksum::finish(checksum::sum(&p[t..], pseudo));
    checksum::write(p, at, c);
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    match ok {
        true => Ok(()),
        false => Err(what()),
    }
}
