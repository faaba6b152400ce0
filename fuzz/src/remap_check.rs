//! What a correct rewrite or MSS clamp must have done to a packet, checked byte by byte against
//! the packet before: only the bytes it may change changed, the addresses are the mapped ones,
//! and every checksum still sums to what it summed to (incremental updates preserve the ones'-
//! complement sum, whether or not the packet's checksums were right to begin with); an ICMP error
//! whose bytes changed carries a checksum right from scratch. Errors leave the packet untouched
//! and are only for packets too short for what their headers claim.

use std::net::IpAddr;

use liqonet_gateway::wire::ip::Transport;
use liqonet_gateway::wire::remap::Field;
use liqonet_gateway::wire::{IpPacket, Malformed};

use crate::checksum::{pseudo, read, same, sum};
use crate::packets::{networks, ICMP, ICMPV6, TCP, UDP};

/// Egress (TUN → tunnel): a remapped destination becomes the address the peer uses.
pub fn egress(ip: IpAddr) -> Option<IpAddr> {
    networks()
        .iter()
        .find_map(|n| n.remapped.swap_prefix(ip, &n.cidr))
}

/// Ingress (tunnel → TUN): a source of the peer's becomes the address home pods know.
pub fn ingress(ip: IpAddr) -> Option<IpAddr> {
    networks()
        .iter()
        .find_map(|n| n.cidr.swap_prefix(ip, &n.remapped))
}

/// Which address a direction rewrites, and how.
pub fn direction(field: Field) -> fn(IpAddr) -> Option<IpAddr> {
    match field {
        Field::Dst => egress,
        Field::Src => ingress,
    }
}

/// Byte ranges a rewrite was allowed to change.
#[derive(Default)]
struct Allowed(Vec<(usize, usize)>);

impl Allowed {
    fn add(&mut self, at: usize, len: usize) {
        self.0.push((at, at + len));
    }
    fn contains(&self, i: usize) -> bool {
        self.0.iter().any(|&(a, b)| a <= i && i < b)
    }
}

/// What the rewrite found in a packet, worked out again here (the layout comes from the public
/// `IpPacket` view, sanity-checked).
pub struct Outcome {
    pub icmp_error: bool,
    pub quote_rewritten: bool,
}

pub fn check_rewrite(
    before: &[u8],
    after: &[u8],
    field: Field,
    result: Result<bool, Malformed>,
) -> Result<Outcome, String> {
    let map = direction(field);
    let none = Outcome {
        icmp_error: false,
        quote_rewritten: false,
    };
    let Ok(v) = IpPacket::new_checked(before) else {
        if result.is_ok() {
            return Err(format!(
                "{result:?} for a packet IpPacket::new_checked refuses"
            ));
        }
        return unchanged(before, after, "a rejected packet").map(|()| none);
    };
    let end = v.present_len();
    let v4 = v.is_ipv4();
    let transport = v.transport();
    if let Some(t) = transport {
        sane_transport(&v, t, end)?;
    }
    let error = transport.filter(|t| is_icmp_error(before, end, t));
    let quote_ok = error.map(|t| IpPacket::new_quoted(&before[t.offset + 8..end]).is_ok());
    let csum_beyond = transport
        .and_then(checksum_offset)
        .is_some_and(|c| c + 2 > end);
    let should_fail = match quote_ok {
        Some(ok) => !ok,
        None => csum_beyond,
    };
    let changed = match result {
        Err(e) if should_fail => return unchanged(before, after, &format!("{e:?}")).map(|()| none),
        Err(e) => return Err(format!("rejected a well-formed packet: {e:?}")),
        Ok(_) if should_fail => {
            return Err(format!(
                "accepted a packet that should be refused ({})",
                if error.is_some() {
                    "an ICMP error whose quoted header is cut"
                } else {
                    "its transport checksum is past the end"
                }
            ))
        }
        Ok(false) => {
            if let Some(what) = should_move(before, &v, field, error, end) {
                return Err(format!("Ok(false) but {what} should have been rewritten"));
            }
            return unchanged(before, after, "Ok(false)").map(|()| none);
        }
        Ok(true) => true,
    };
    debug_assert!(changed);
    if before == after {
        return Err("Ok(true) but no byte changed".into());
    }
    if IpPacket::new_checked(after).is_err() {
        return Err("a rewritten packet no longer parses".into());
    }

    let mut allowed = Allowed::default();
    let alen = v.addr_len();
    let at = v.src_offset() + if field == Field::Src { 0 } else { alen };
    let outer = rewrite_address(before, after, at, alen, map, &mut allowed)?;
    if outer && v4 {
        allowed.add(10, 2);
        if !same(
            sum(&before[..v.header_len()], 0),
            sum(&after[..v.header_len()], 0),
        ) {
            return Err("IPv4 header checksum no longer matches the header".into());
        }
    }
    let mut quote_rewritten = false;
    if let Some(t) = error {
        let q = t.offset + 8;
        let other = if field == Field::Src {
            Field::Dst
        } else {
            Field::Src
        };
        quote_rewritten =
            check_quote(&before[q..end], &after[q..end], other, map, q, &mut allowed)?;
        if !outer && !quote_rewritten {
            return Err("Ok(true) for an ICMP error in which nothing was rewritten".into());
        }
        allowed.add(t.offset + 2, 2);
        let initial = if v4 {
            0
        } else {
            pseudo(&after[8..24], &after[24..40], ICMPV6, end - t.offset)
        };
        if sum(&after[t.offset..end], initial) != 0xffff {
            return Err("an ICMP error's checksum is wrong after the rewrite".into());
        }
    } else if outer {
        if let (Some(t), Some(c)) = (transport, transport.and_then(checksum_offset)) {
            transport_checksum(before, after, &v, t, c, &mut allowed)?;
        }
    } else {
        return Err("Ok(true) but the address was not one to rewrite".into());
    }
    for i in 0..before.len() {
        if before[i] != after[i] && !allowed.contains(i) {
            return Err(format!(
                "byte {i} changed ({:#04x} → {:#04x}), which no rewrite may touch",
                before[i], after[i]
            ));
        }
    }
    Ok(Outcome {
        icmp_error: error.is_some(),
        quote_rewritten,
    })
}

/// An address the map moves: the rewritten field, or the other field of an error's quote.
fn should_move(
    p: &[u8],
    v: &IpPacket,
    field: Field,
    error: Option<Transport>,
    end: usize,
) -> Option<&'static str> {
    let map = direction(field);
    let moves = |ip: IpAddr| map(ip).is_some_and(|n| n != ip);
    let outer = if field == Field::Src {
        v.src_addr()
    } else {
        v.dst_addr()
    };
    if moves(outer) {
        return Some("the address");
    }
    let q = IpPacket::new_quoted(&p[error?.offset + 8..end]).ok()?;
    let inner = if field == Field::Src {
        q.dst_addr()
    } else {
        q.src_addr()
    };
    moves(inner).then_some("the quoted address")
}

fn unchanged(before: &[u8], after: &[u8], what: &str) -> Result<(), String> {
    if before != after {
        let i = before
            .iter()
            .zip(after)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "{what}, yet the packet changed (first at byte {i})"
        ));
    }
    Ok(())
}

/// The transport offset must be inside the packet and where the headers put it.
fn sane_transport(v: &IpPacket, t: Transport, end: usize) -> Result<(), String> {
    let ok = if v.is_ipv4() {
        t.offset == v.header_len()
    } else {
        t.offset >= 40 && (t.offset - 40) % 8 == 0
    };
    if !ok || t.offset > v.total_len() || t.offset + t.len != v.total_len() {
        return Err(format!(
            "IpPacket::transport() = {t:?} for a packet of {end} bytes"
        ));
    }
    Ok(())
}

/// The address at `at` is the mapped one if the map moves it, else untouched. Returns whether it
/// moved.
fn rewrite_address(
    before: &[u8],
    after: &[u8],
    at: usize,
    alen: usize,
    map: fn(IpAddr) -> Option<IpAddr>,
    allowed: &mut Allowed,
) -> Result<bool, String> {
    let old = ip_at(before, at, alen);
    match map(old).filter(|n| *n != old) {
        Some(new) => {
            let got = ip_at(after, at, alen);
            if got != new {
                return Err(format!("{old} became {got}, not {new}"));
            }
            allowed.add(at, alen);
            Ok(true)
        }
        None => Ok(false),
    }
}

fn ip_at(buf: &[u8], at: usize, alen: usize) -> IpAddr {
    if alen == 4 {
        IpAddr::from(<[u8; 4]>::try_from(&buf[at..at + 4]).expect("4 bytes"))
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&buf[at..at + 16]).expect("16 bytes"))
    }
}

/// The quote of an ICMP error at `base` in the packet: its `field` address mapped, its IPv4
/// header checksum and (when present in the quote) its transport checksum kept consistent.
fn check_quote(
    before: &[u8],
    after: &[u8],
    field: Field,
    map: fn(IpAddr) -> Option<IpAddr>,
    base: usize,
    allowed: &mut Allowed,
) -> Result<bool, String> {
    let v = IpPacket::new_quoted(before).map_err(|e| format!("quote: {e:?}"))?;
    let alen = v.addr_len();
    let at = v.src_offset() + if field == Field::Src { 0 } else { alen };
    let mut local = Allowed::default();
    let moved = rewrite_address(before, after, at, alen, map, &mut local)?;
    if moved {
        if v.is_ipv4() {
            local.add(10, 2);
            let hl = v.header_len();
            if !same(sum(&before[..hl], 0), sum(&after[..hl], 0)) {
                return Err("quoted IPv4 header checksum no longer matches".into());
            }
        }
        if let Some(t) = v.transport() {
            if let Some(c) = checksum_offset(t).filter(|c| c + 2 <= before.len()) {
                transport_checksum(before, after, &v, t, c, &mut local)?;
            }
        }
    }
    for (a, b) in local.0 {
        allowed.add(base + a, b - a);
    }
    Ok(moved)
}

/// The transport checksum at `c` moved by exactly what the addresses moved (so the segment's
/// sum is what it was), and an IPv4 UDP checksum of zero stayed zero.
fn transport_checksum(
    before: &[u8],
    after: &[u8],
    v: &IpPacket,
    t: Transport,
    c: usize,
    allowed: &mut Allowed,
) -> Result<(), String> {
    allowed.add(c, 2);
    if t.protocol == UDP && v.is_ipv4() && read(before, c) == 0 {
        return if read(after, c) == 0 {
            Ok(())
        } else {
            Err("an absent IPv4 UDP checksum (zero) was filled in".into())
        };
    }
    let addrs = v.src_offset()..v.src_offset() + 2 * v.addr_len();
    let s = |p: &[u8]| sum(&p[addrs.clone()], u32::from(read(p, c)));
    if !same(s(before), s(after)) {
        return Err(format!(
            "transport checksum (protocol {}) not adjusted for the new address",
            t.protocol
        ));
    }
    if t.protocol == UDP && read(after, c) == 0 {
        return Err("a UDP checksum was adjusted to zero (must be sent as 0xffff)".into());
    }
    Ok(())
}

/// Where the checksum covering the pseudo-header is.
pub fn checksum_offset(t: Transport) -> Option<usize> {
    match t.protocol {
        TCP => Some(t.offset + 16),
        UDP => Some(t.offset + 6),
        ICMPV6 => Some(t.offset + 2),
        _ => None,
    }
}

/// ICMP errors, by the protocol number's type table (as the rewrite reads them).
pub fn is_icmp_error(buf: &[u8], end: usize, t: &Transport) -> bool {
    if t.offset + 8 > end {
        return false;
    }
    let kind = buf[t.offset];
    match t.protocol {
        ICMP => matches!(kind, 3 | 4 | 5 | 11 | 12),
        ICMPV6 => (1..=4).contains(&kind),
        _ => false,
    }
}

/// An MSS option the clamp must lower, found by walking the options as RFC 9293 lays them out:
/// its offset in the packet and value.
fn mss_to_clamp(p: &[u8], t: Transport, end: usize, max: u16) -> Option<(usize, u16)> {
    if t.protocol != TCP || end > p.len() || t.offset > end {
        return None;
    }
    let tcp = &p[t.offset..end];
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return None;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let mut i = 20;
    while i < doff {
        match tcp[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*tcp.get(i + 1)?);
                if len < 2 || i + len > doff {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let mss = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    return (mss > max).then_some((t.offset + i + 2, mss));
                }
                i += len;
            }
        }
    }
    None
}

/// The MSS clamp lowered the MSS of a SYN that asked for more than fits `mtu`, to exactly what
/// fits, fixed the TCP checksum, and touched nothing else.
pub fn check_clamp(
    before: &[u8],
    after: &[u8],
    t: Transport,
    end: usize,
    mtu: u16,
    clamped: bool,
) -> Result<(), String> {
    let max = usize::from(mtu)
        .checked_sub(t.offset + 20)
        .map(|m| m.min(usize::from(u16::MAX)) as u16);
    let expect = max.and_then(|max| mss_to_clamp(before, t, end, max));
    match (expect, clamped) {
        (None, false) => unchanged(before, after, "no clamp"),
        (None, true) => Err("clamped a packet with no MSS above the limit".into()),
        (Some((at, mss)), false) => Err(format!("MSS {mss} at byte {at} left above {max:?}")),
        (Some((at, _)), true) => {
            let max = max.expect("a limit");
            let got = u16::from_be_bytes([after[at], after[at + 1]]);
            if got != max {
                return Err(format!("MSS clamped to {got}, not {max}"));
            }
            let c = t.offset + 16;
            for i in 0..before.len() {
                if before[i] != after[i] && !(at..at + 2).contains(&i) && !(c..c + 2).contains(&i) {
                    return Err(format!("the clamp changed byte {i}"));
                }
            }
            let doff = usize::from(before[t.offset + 12] >> 4) * 4;
            let region = t.offset..t.offset + doff;
            if !same(sum(&before[region.clone()], 0), sum(&after[region], 0)) {
                return Err("TCP checksum not adjusted for the new MSS".into());
            }
            Ok(())
        }
    }
}
