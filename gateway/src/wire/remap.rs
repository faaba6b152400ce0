//! Prefix remapping of one address of a packet, in place (userspace NETMAP).
//!
//! The address is swapped, then every checksum that covers it is fixed incrementally (RFC 1624):
//! the IPv4 header checksum, and the TCP, UDP or ICMPv6 checksum through the pseudo-header (only
//! in packets that carry the transport header: not in later IPv4/IPv6 fragments). ICMPv4 has no
//! pseudo-header. An ICMP error quotes the packet that caused it, sent by the host the error goes
//! back to: its other address is remapped too (with its own checksums), and the ICMP checksum is
//! recomputed, so PMTU discovery and traceroute work through the translation.

use std::net::IpAddr;

use super::checksum;
use super::ip::{IpPacket, Malformed, Transport};
use super::proto::{ICMP, ICMPV6, TCP, UDP};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Src,
    Dst,
}

impl Field {
    fn other(self) -> Field {
        match self {
            Field::Src => Field::Dst,
            Field::Dst => Field::Src,
        }
    }
}

/// Rewrites the `field` address of `packet` to `map(address)` (left alone when `map` says `None`).
/// Returns whether the packet changed. A packet too short for what its headers claim is an error
/// and is left as it was.
pub fn rewrite(
    packet: &mut [u8],
    field: Field,
    map: &impl Fn(IpAddr) -> Option<IpAddr>,
) -> Result<bool, Malformed> {
    let v = IpPacket::new_checked(packet)?;
    rewrite_in(packet, v.present_len(), field, map, false)
}

fn rewrite_in(
    buf: &mut [u8],
    end: usize,
    field: Field,
    map: &impl Fn(IpAddr) -> Option<IpAddr>,
    quoted: bool,
) -> Result<bool, Malformed> {
    let v = if quoted {
        IpPacket::new_quoted(&buf[..end])?
    } else {
        IpPacket::new_checked(&buf[..end])?
    };
    let v4 = v.is_ipv4();
    let alen = v.addr_len();
    let at = v.src_offset() + if field == Field::Src { 0 } else { alen };
    let old_ip = if field == Field::Src {
        v.src_addr()
    } else {
        v.dst_addr()
    };
    let transport = v.transport();
    let error = if quoted {
        None
    } else {
        transport.filter(|t| is_icmp_error(buf, end, t))
    };

    // Check before changing anything, so an error leaves the packet intact: the quote of an
    // error must have its header; any other packet with a transport header must hold the
    // transport checksum (a first fragment cut before it cannot be translated, RFC 1858).
    if let Some(t) = error {
        IpPacket::new_quoted(&buf[t.offset + 8..end])?;
    } else if let Some(at) = transport.and_then(checksum_offset) {
        if !quoted && at + 2 > end {
            return Err(Malformed::Truncated);
        }
    }

    let mut changed = false;
    if let Some(new_ip) = map(old_ip).filter(|n| *n != old_ip) {
        let (mut old, mut new) = ([0u8; 16], [0u8; 16]);
        old[..alen].copy_from_slice(&buf[at..at + alen]);
        match new_ip {
            IpAddr::V4(a) if v4 => new[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) if !v4 => new.copy_from_slice(&a.octets()),
            // A mapping never changes the family; refuse rather than corrupt.
            _ => return Err(Malformed::BadVersion),
        }
        let (old, new) = (&old[..alen], &new[..alen]);
        buf[at..at + alen].copy_from_slice(new);
        if v4 {
            let c = checksum::adjust(checksum::read(buf, 10), old, new);
            checksum::write(buf, 10, c);
        }
        if let (Some(t), None) = (transport, error) {
            adjust_transport(buf, end, t, v4, old, new);
        }
        changed = true;
    }

    if let Some(t) = error {
        let quote_changed = rewrite_in(
            &mut buf[t.offset + 8..end],
            end - t.offset - 8,
            field.other(),
            map,
            true,
        )?;
        if changed || quote_changed {
            recompute_icmp(buf, end, t, v4);
        }
        changed |= quote_changed;
    }
    Ok(changed)
}

/// Fixes the transport checksum after an address covered by its pseudo-header changed.
fn adjust_transport(buf: &mut [u8], end: usize, t: Transport, v4: bool, old: &[u8], new: &[u8]) {
    let Some(at) = checksum_offset(t) else {
        return;
    };
    if at + 2 > end {
        return; // Quoted packets are often cut before the checksum.
    }
    let current = checksum::read(buf, at);
    if t.protocol == UDP && v4 && current == 0 {
        return; // An IPv4 UDP checksum of zero means "none" and stays zero.
    }
    let mut c = checksum::adjust(current, old, new);
    if t.protocol == UDP && c == 0 {
        c = 0xffff; // Zero is reserved for "none": a computed zero is sent as all ones.
    }
    checksum::write(buf, at, c);
}

/// Where the checksum covering the pseudo-header is, for the protocols that have one.
fn checksum_offset(t: Transport) -> Option<usize> {
    match t.protocol {
        TCP => Some(t.offset + 16),
        UDP => Some(t.offset + 6),
        ICMPV6 => Some(t.offset + 2),
        _ => None,
    }
}

fn is_icmp_error(buf: &[u8], end: usize, t: &Transport) -> bool {
    if t.offset + 8 > end {
        return false;
    }
    let kind = buf[t.offset];
    match t.protocol {
        // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
        ICMP => matches!(kind, 3 | 4 | 5 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        ICMPV6 => (1..=4).contains(&kind),
        _ => false,
    }
}

/// Recomputes an ICMP/ICMPv6 checksum from scratch (errors only: rare, and their quoted bytes
/// changed in several places).
fn recompute_icmp(buf: &mut [u8], end: usize, t: Transport, v4: bool) {
    checksum::write(buf, t.offset + 2, 0);
    let initial = if v4 {
        0
    } else {
        let len = (end - t.offset) as u32;
        checksum::pseudo_header(&buf[8..24], &buf[24..40], ICMPV6, len)
    };
    let c = checksum::finish(checksum::sum(&buf[t.offset..end], initial));
    checksum::write(buf, t.offset + 2, c);
}

#[cfg(test)]
mod tests;
