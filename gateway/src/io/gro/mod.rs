//! Coalescing one batch of TUN writes (GRO, done here so that the kernel need not): consecutive
//! TCP segments (and, where the TUN takes UDP offloads, same-sized UDP datagrams) of one flow
//! leave as one super-packet that the kernel cuts again (virtio GSO). The segments' payloads
//! are written in place as separate iovecs, so coalescing copies nothing and allocates nothing.
//!
//! The segments' transport checksums are not verified: every packet written here was decrypted
//! and authenticated by the engine (kernel WireGuard marks such packets `CHECKSUM_UNNECESSARY`
//! for the same reason). A super-packet carries only its pseudo-header sum and `NEEDS_CSUM`, as
//! a locally sent one does; a packet written alone keeps its checksums. An IPv4 header with a
//! wrong checksum is written alone, for the kernel to drop as it would.
//!
//! A super-packet the device refuses as invalid (a kernel that checks what this one does not) is
//! not lost: its head gets its own headers back and every segment is written alone; from then on
//! that transport (TCP or UDP) is not coalesced, as a refusal would repeat for every batch.

use std::io::{self, IoSlice};

use crate::wire::checksum;

#[cfg(any(test, feature = "gro-oracle"))]
pub mod kernel;

/// Bytes of the virtio header before each packet.
pub const HEADER_LEN: usize = 10;
/// Segments in one super-packet at most (the kernel's GRO stops at 64 too).
const MAX_SEGMENTS: usize = 64;

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Where coalesced batches go: the TUN device (or a fake).
pub trait Writes {
    /// One packet or super-packet, its virtio header first, in pieces.
    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// A packet that may join a super-packet.
struct Segment {
    udp: bool,
    /// IP header length, then IP and transport headers together.
    ip_len: usize,
    hdr_len: usize,
    payload: usize,
    seq: u32,
    /// TCP PSH: the last of its super-packet.
    last: bool,
}

/// A flow: IP version, transport protocol, addresses (IPv4's in the first 8 of the 32 bytes)
/// and ports.
type Flow = [u8; 38];

/// Packets written as one: a head (whose headers the super-packet takes) and its followers.
struct Group {
    /// The head's flow; only a group of a segment is ever open.
    flow: Flow,
    head: usize,
    last: usize,
    segments: usize,
    /// Header lengths and transport as the head's.
    udp: bool,
    ip_len: usize,
    hdr_len: usize,
    /// Payload bytes of the head: every segment but the last has exactly this many.
    size: usize,
    /// Payload bytes of all segments.
    payload: usize,
    next_seq: u32,
    psh: bool,
    /// Still taking segments.
    open: bool,
    /// The head's IPv4 header checksum (zero for IPv6) and transport checksum as they came, for
    /// writing it alone again.
    checksums: [u8; 4],
}

/// The coalescer's state between batches: two lists, allocated once for a whole batch.
pub struct Gro {
    groups: Vec<Group>,
    /// For each packet of the batch, the next of its group.
    next: Vec<usize>,
    /// The device refused a TCP, a UDP super-packet: that transport is no longer coalesced.
    refused_tcp: bool,
    refused_udp: bool,
}

impl Gro {
    /// Room for batches of up to `batch` packets.
    pub fn new(batch: usize) -> Self {
        Gro {
            groups: Vec::with_capacity(batch),
            next: vec![usize::MAX; batch],
            refused_tcp: false,
            refused_udp: false,
        }
    }

    /// Writes `bufs` (each a packet after `HEADER_LEN` bytes of room for its virtio header),
    /// coalescing what it can, in an order that keeps each flow's packets in sequence. `udp`:
    /// the device takes UDP super-packets. Returns how many packets were lost to write errors
    /// (a refused super-packet whose segments then went through loses none).
    pub fn write(&mut self, out: &impl Writes, bufs: &mut [Vec<u8>], udp: bool) -> u64 {
        if bufs.len() > self.next.len() {
            // Larger than the batches it was made for (never from `TunBatch`): grows once.
            self.next.resize(bufs.len(), usize::MAX);
        }
        self.plan(bufs, udp);
        let mut lost = 0;
        for g in &mut self.groups {
            g.checksums = finish_headers(&mut bufs[g.head], g);
        }
        for g in &self.groups {
            match write_group(out, bufs, g, &self.next) {
                Ok(()) => {}
                Err(e) if g.segments > 1 && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    let (refused, kind) = match g.udp {
                        true => (&mut self.refused_udp, "UDP"),
                        false => (&mut self.refused_tcp, "TCP"),
                    };
                    if !std::mem::replace(refused, true) {
                        tracing::warn!(
                            "the TUN refused a {kind} super-packet ({e}): its segments are \
                             written one by one, and {kind} is no longer coalesced"
                        );
                    }
                    lost += one_by_one(out, bufs, g, &self.next);
                }
                Err(e) => {
                    lost += g.segments as u64;
                    tracing::debug!("TUN write failed: {e}");
                }
            }
        }
        lost
    }

    /// Sorts the batch into groups, in the order of their heads.
    fn plan(&mut self, bufs: &[Vec<u8>], udp: bool) {
        self.groups.clear();
        let (tcp, udp) = (!self.refused_tcp, udp && !self.refused_udp);
        for (i, buf) in bufs.iter().enumerate() {
            let pkt = buf.get(HEADER_LEN..).unwrap_or_default();
            let Some((s, flow)) = segment(pkt, tcp, udp) else {
                // Written alone, after everything before it of its flow; when its ports cannot
                // be read (extension headers, a later fragment), after everything between the
                // same addresses, and with no addresses either, after everything.
                let addrs = addresses(pkt);
                let flow = addrs.and_then(|a| with_ports(pkt, a));
                for g in self.groups.iter_mut().filter(|g| g.open) {
                    g.open = match (&flow, &addrs) {
                        (Some(f), _) => g.flow != *f,
                        (None, Some(a)) => !same_addresses(&g.flow, a),
                        (None, None) => false,
                    };
                }
                self.groups.push(Group::alone(i, pkt.len()));
                continue;
            };
            // At most one group of a flow is open: the one a segment of the flow may join.
            let open = self
                .groups
                .iter_mut()
                .rev()
                .find(|g| g.open && g.flow == flow);
            if let Some(g) = open {
                if joins(g, &bufs[g.head][HEADER_LEN..], pkt, &s) {
                    self.next[g.last] = i;
                    g.last = i;
                    g.segments += 1;
                    g.payload += s.payload;
                    g.next_seq = g.next_seq.wrapping_add(s.payload as u32);
                    g.psh |= s.last;
                    g.open = s.payload == g.size && !s.last && g.segments < MAX_SEGMENTS;
                    continue;
                }
                // Anything else of the flow ends its super-packet, to stay in sequence.
                g.open = false;
            }
            self.groups.push(Group::of(i, &s, flow));
        }
    }
}

impl Group {
    /// A segment that heads a super-packet (its only one, until others join).
    fn of(i: usize, s: &Segment, flow: Flow) -> Self {
        Group {
            flow,
            head: i,
            last: i,
            segments: 1,
            udp: s.udp,
            ip_len: s.ip_len,
            hdr_len: s.hdr_len,
            size: s.payload,
            payload: s.payload,
            next_seq: s.seq.wrapping_add(s.payload as u32),
            psh: s.last,
            open: !s.last,
            checksums: [0; 4],
        }
    }

    /// A packet written as it came.
    fn alone(i: usize, len: usize) -> Self {
        Group {
            flow: [0; 38],
            head: i,
            last: i,
            segments: 1,
            udp: false,
            ip_len: 0,
            hdr_len: 0,
            size: len,
            payload: len,
            next_seq: 0,
            psh: false,
            open: false,
            checksums: [0; 4],
        }
    }
}

/// Whether `pkt` (described by `s`) continues group `g`, whose head is `head`.
fn joins(g: &Group, head: &[u8], pkt: &[u8], s: &Segment) -> bool {
    s.udp == g.udp
        && s.hdr_len == g.hdr_len
        && s.ip_len == g.ip_len
        && s.payload <= g.size
        && (s.udp || s.seq == g.next_seq)
        && g.hdr_len + g.payload + s.payload <= usize::from(u16::MAX)
        && same_headers(head, pkt, g)
}

/// A TCP segment with data and only ACK (or ACK and PSH) set when `tcp`, or a UDP datagram
/// with data when `udp`; IPv4 without options, with DF and a right header checksum, or IPv6 without
/// extension headers; lengths as the headers say. Anything else is written alone.
fn segment(p: &[u8], tcp: bool, udp: bool) -> Option<(Segment, Flow)> {
    let (ip_len, proto) = match p.first()? >> 4 {
        4 if p.len() >= 20
            && p[0] == 0x45
            && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
            && p[6..8] == [0x40, 0]
            && checksum::fold(checksum::sum(&p[..20], 0)) == 0xffff =>
        {
            (20, p[9])
        }
        6 if p.len() >= 40 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len() => {
            (40, p[6])
        }
        _ => return None,
    };
    let l4 = &p[ip_len..];
    let seg = match proto {
        TCP if tcp && l4.len() >= 20 => {
            let doff = usize::from(l4[12] >> 4) * 4;
            let flags = l4[13];
            if doff < 20 || l4.len() <= doff || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
                return None;
            }
            Segment {
                udp: false,
                ip_len,
                hdr_len: ip_len + doff,
                payload: l4.len() - doff,
                seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                last: flags & TCP_PSH != 0,
            }
        }
        UDP if udp
            && l4.len() > 8
            && usize::from(u16::from_be_bytes([l4[4], l4[5]])) == l4.len() =>
        {
            Segment {
                udp: true,
                ip_len,
                hdr_len: ip_len + 8,
                payload: l4.len() - 8,
                seq: 0,
                last: false,
            }
        }
        _ => return None,
    };
    Some((seg, flow_of(p)?))
}

/// The flow of a TCP or UDP packet whose ports can be read: IPv4 (with or without options) but
/// not a later fragment, IPv6 with the transport header first.
fn flow_of(p: &[u8]) -> Option<Flow> {
    with_ports(p, addresses(p)?)
}

/// `key` (the packet's addresses) completed with its protocol and ports, if they can be read.
fn with_ports(p: &[u8], mut key: Flow) -> Option<Flow> {
    let (ip_len, proto) = if key[0] == 4 {
        let later_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0;
        (
            usize::from(p[0] & 0x0f) * 4,
            if later_fragment { 0 } else { p[9] },
        )
    } else {
        (40, p[6])
    };
    if !matches!(proto, TCP | UDP) || ip_len < 20 || p.len() < ip_len + 4 {
        return None;
    }
    key[1] = proto;
    key[34..38].copy_from_slice(&p[ip_len..ip_len + 4]);
    Some(key)
}

/// A flow key with only the IP version and addresses filled in, for any packet whose header
/// holds them.
fn addresses(p: &[u8]) -> Option<Flow> {
    let mut key = [0; 38];
    key[0] = p.first()? >> 4;
    match key[0] {
        4 if p.len() >= 20 => key[2..10].copy_from_slice(&p[12..20]),
        6 if p.len() >= 40 => key[2..34].copy_from_slice(&p[8..40]),
        _ => return None,
    }
    Some(key)
}

/// Same IP version and addresses.
fn same_addresses(a: &Flow, b: &Flow) -> bool {
    a[0] == b[0] && a[2..34] == b[2..34]
}

/// Every header field the super-packet takes from its head is the same in `pkt`: IPv4 TOS, DF,
/// TTL; IPv6 traffic class, flow label, hop limit; TCP acknowledgment, window and options.
fn same_headers(head: &[u8], pkt: &[u8], g: &Group) -> bool {
    let ip = if g.ip_len == 20 {
        head[..2] == pkt[..2] && head[6..9] == pkt[6..9]
    } else {
        head[..4] == pkt[..4] && head[7] == pkt[7]
    };
    let t = g.ip_len;
    ip && (g.udp
        || (head[t + 8..t + 13] == pkt[t + 8..t + 13]
            && head[t + 14..t + 16] == pkt[t + 14..t + 16]
            && head[t + 18..g.hdr_len] == pkt[t + 18..g.hdr_len]))
}

/// The packets of group `g`, head first, in their order.
fn members<'a>(g: &'a Group, next: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    std::iter::successors(Some(g.head), move |&i| (i != g.last).then(|| next[i]))
}

/// Writes a group in one `writev`: the head's headers and payload, then each follower's payload.
fn write_group(out: &impl Writes, bufs: &[Vec<u8>], g: &Group, next: &[usize]) -> io::Result<()> {
    let head = &bufs[g.head][..HEADER_LEN + g.hdr_len + g.size];
    if g.segments == 1 {
        return out.write_vectored(&[IoSlice::new(head)]).map(drop);
    }
    let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
    iov[0] = IoSlice::new(head);
    for (slot, i) in iov[1..g.segments].iter_mut().zip(members(g, next).skip(1)) {
        *slot = IoSlice::new(&bufs[i][HEADER_LEN + g.hdr_len..]);
    }
    out.write_vectored(&iov[..g.segments]).map(drop)
}

/// Writes a refused super-packet's segments one by one, the head with its own headers again.
/// Returns how many the device refused.
fn one_by_one(out: &impl Writes, bufs: &mut [Vec<u8>], g: &Group, next: &[usize]) -> u64 {
    restore_head(&mut bufs[g.head], g);
    let mut refused = 0;
    for i in members(g, next) {
        let buf = &mut bufs[i];
        buf[..HEADER_LEN].fill(0);
        if let Err(e) = out.write_vectored(&[IoSlice::new(buf)]) {
            refused += 1;
            tracing::debug!("TUN write failed: {e}");
        }
    }
    refused
}

/// Undoes [`finish_headers`] on a super-packet's head: its own lengths, no PSH (a head with
/// PSH takes no followers), its checksums as they came.
fn restore_head(buf: &mut [u8], g: &Group) {
    let p = &mut buf[HEADER_LEN..];
    set_lengths(p, g, g.size);
    let t = g.ip_len;
    if t == 20 {
        p[10..12].copy_from_slice(&g.checksums[..2]);
    }
    if !g.udp {
        p[t + 13] &= !TCP_PSH;
    }
    let at = t + csum_offset(g);
    p[at..at + 2].copy_from_slice(&g.checksums[2..]);
}

/// The head's virtio header, and for a super-packet its lengths, PSH and partial checksum.
/// Returns the head's IPv4 header and transport checksums as they were.
fn finish_headers(buf: &mut [u8], g: &Group) -> [u8; 4] {
    let (vnet, p) = buf.split_at_mut(HEADER_LEN);
    if g.segments == 1 {
        vnet.fill(0);
        return [0; 4];
    }
    let t = g.ip_len;
    let csum_at = csum_offset(g);
    let mut was = [0; 4];
    if t == 20 {
        was[..2].copy_from_slice(&p[10..12]);
    }
    was[2..].copy_from_slice(&p[t + csum_at..t + csum_at + 2]);
    set_lengths(p, g, g.payload);
    let (addrs, proto, gso) = match (t, g.udp) {
        (_, true) => (if t == 20 { 12..20 } else { 8..40 }, UDP, GSO_UDP_L4),
        (20, false) => (12..20, TCP, GSO_TCPV4),
        _ => (8..40, TCP, GSO_TCPV6),
    };
    if t == 20 {
        p[10..12].fill(0);
        let c = checksum::finish(checksum::sum(&p[..20], 0));
        checksum::write(p, 10, c);
    }
    if !g.udp && g.psh {
        p[t + 13] |= TCP_PSH;
    }
    let l4_len = g.hdr_len - t + g.payload;
    let (src, dst) = p[addrs].split_at(if t == 20 { 4 } else { 16 });
    let partial = checksum::fold(checksum::pseudo_header(src, dst, proto, l4_len as u32));
    checksum::write(p, t + csum_at, partial);
    vnet[0] = NEEDS_CSUM;
    vnet[1] = gso;
    vnet[2..4].copy_from_slice(&(g.hdr_len as u16).to_ne_bytes());
    vnet[4..6].copy_from_slice(&(g.size as u16).to_ne_bytes());
    vnet[6..8].copy_from_slice(&(t as u16).to_ne_bytes());
    vnet[8..10].copy_from_slice(&(csum_at as u16).to_ne_bytes());
    was
}

/// The IP (and UDP) length fields of a head carrying `payload` bytes after its headers.
fn set_lengths(p: &mut [u8], g: &Group, payload: usize) {
    let t = g.ip_len;
    let l4_len = g.hdr_len - t + payload;
    if t == 20 {
        p[2..4].copy_from_slice(&((t + l4_len) as u16).to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    if g.udp {
        p[t + 4..t + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
}

/// Where the transport checksum sits in its header.
fn csum_offset(g: &Group) -> usize {
    if g.udp {
        6
    } else {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::kernel::{norm, refresh};
    use super::*;
    use crate::wire::checksum::{finish, pseudo_header, sum};
    use crate::wire::testing::verify;
    use std::cell::RefCell;

    /// Records what each write carried, whole.
    #[derive(Default)]
    struct Tun(RefCell<Vec<Vec<u8>>>);

    impl Writes for Tun {
        fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            let whole: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
            let n = whole.len();
            self.0.borrow_mut().push(whole);
            Ok(n)
        }
    }

    const V4: ([u8; 4], [u8; 4]) = ([10, 244, 0, 10], [10, 245, 0, 10]);
    const V6: ([u8; 16], [u8; 16]) = (
        [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    );

    /// An IP packet around `l4` (TCP or UDP) with every checksum right; IPv4 with DF.
    fn ip(v6: bool, proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
        let (src, dst): (&[u8], &[u8]) = if v6 { (&V6.0, &V6.1) } else { (&V4.0, &V4.1) };
        let at = if proto == TCP { 16 } else { 6 };
        let c = finish(sum(&l4, pseudo_header(src, dst, proto, l4.len() as u32)));
        checksum::write(&mut l4, at, c);
        let mut p = if v6 {
            let mut h = vec![0x60, 0, 0, 0, 0, 0, proto, 64];
            h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            h
        } else {
            let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h
        };
        p.extend_from_slice(src);
        p.extend_from_slice(dst);
        if !v6 {
            let c = finish(sum(&p, 0));
            checksum::write(&mut p, 10, c);
        }
        p.extend_from_slice(&l4);
        p
    }

    /// A TCP segment of flow `port` with a timestamp option.
    fn tcp(v6: bool, port: u16, seq: u32, flags: u8, len: usize) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        t[0..2].copy_from_slice(&port.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        t.extend((0..len).map(|i| (seq as usize + i) as u8));
        ip(v6, TCP, t)
    }

    fn udp(v6: bool, port: u16, len: usize, fill: u8) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&port.to_be_bytes());
        u[2..4].copy_from_slice(&53u16.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        u.extend(std::iter::repeat_n(fill, len));
        ip(v6, UDP, u)
    }

    /// The kernel's cut of a write, which must pass its checks.
    fn cut(written: &[u8]) -> Vec<Vec<u8>> {
        kernel::cut(written).unwrap_or_else(|e| panic!("the kernel refuses a write: {e}"))
    }

    /// Writes `pkts` as one batch; returns what was written and the packets the kernel made
    /// (IPv4 IDs cleared).
    fn run(pkts: &[Vec<u8>], udp: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut bufs: Vec<Vec<u8>> = pkts
            .iter()
            .map(|p| [&[0xee; HEADER_LEN][..], p].concat())
            .collect();
        let tun = Tun::default();
        assert_eq!(Gro::new(128).write(&tun, &mut bufs, udp), 0);
        let writes = tun.0.into_inner();
        let out = writes
            .iter()
            .flat_map(|w| cut(w))
            .map(|p| norm(&p))
            .collect();
        (writes, out)
    }

    fn norms(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        pkts.iter().map(|p| norm(p)).collect()
    }

    /// How many segments each write carried.
    fn segments(writes: &[Vec<u8>]) -> Vec<usize> {
        writes.iter().map(|w| cut(w).len()).collect()
    }

    /// A small xorshift: the same walk on every run.
    fn dice(mut seed: u32) -> impl FnMut(u32) -> u32 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % n
        }
    }

    #[test]
    fn a_flows_consecutive_segments_leave_as_one_super_packet_the_kernel_cuts_back() {
        for v6 in [false, true] {
            let mut pkts: Vec<Vec<u8>> = (0..10)
                .map(|i| tcp(v6, 40000, 1000 + i * 1400, TCP_ACK, 1400))
                .collect();
            pkts.push(tcp(v6, 40000, 1000 + 10 * 1400, TCP_ACK | TCP_PSH, 600));
            let (writes, out) = run(&pkts, false);
            assert_eq!(writes.len(), 1);
            assert_eq!(out, norms(&pkts));
            out.iter().for_each(|p| verify(p).unwrap());
        }
    }

    #[test]
    fn udp_datagrams_of_one_size_are_coalesced_only_where_the_device_takes_them() {
        for v6 in [false, true] {
            let mut pkts: Vec<Vec<u8>> = (0..5).map(|i| udp(v6, 5353, 1300, i)).collect();
            pkts.push(udp(v6, 5353, 200, 9));
            let (writes, out) = run(&pkts, true);
            assert_eq!(writes.len(), 1);
            assert_eq!(out, norms(&pkts));
            let (writes, out) = run(&pkts, false);
            assert_eq!(writes.len(), 6);
            assert_eq!(out, norms(&pkts));
        }
    }

    #[test]
    fn a_super_packet_stops_at_a_gap_a_larger_segment_a_push_a_fin_and_another_packet_between_the_same_hosts(
    ) {
        let p = |seq: u32, flags: u8, len: usize| tcp(false, 40000, seq, flags, len);
        // A RST of the flow with IPv4 options: not a segment, so it ends the super-packet.
        let mut options = p(1000, TCP_ACK | 0x04, 0);
        options.splice(20..20, [1, 1, 1, 0]);
        options[0] = 0x46;
        let total = options.len() as u16;
        options[2..4].copy_from_slice(&total.to_be_bytes());
        let pkts = vec![
            p(0, TCP_ACK, 100),
            p(100, TCP_ACK, 100),
            p(300, TCP_ACK, 100), // a gap: a new one
            p(400, TCP_ACK, 150), // larger: a new one
            p(550, TCP_ACK | TCP_PSH, 150),
            p(700, TCP_ACK, 100),
            p(800, TCP_ACK | 0x01, 0), // FIN: alone, and ends the one before
            p(800, TCP_ACK, 100),
            p(900, TCP_ACK, 100),
            options,
            p(1000, TCP_ACK, 100),
        ];
        let (writes, out) = run(&pkts, false);
        assert_eq!(out, norms(&pkts));
        assert_eq!(segments(&writes), [2, 1, 2, 1, 1, 2, 1, 1]);
        // An IPv6 RST behind a hop-by-hop header: its ports cannot be read, so it ends every
        // super-packet between the same addresses.
        let p6 = |seq: u32, flags: u8, len: usize| tcp(true, 40000, seq, flags, len);
        let mut hop = p6(200, TCP_ACK | 0x04, 0);
        hop.splice(40..40, [TCP, 0, 1, 4, 0, 0, 0, 0]);
        hop[6] = 0;
        let len = (hop.len() - 40) as u16;
        hop[4..6].copy_from_slice(&len.to_be_bytes());
        let pkts = vec![
            p6(0, TCP_ACK, 100),
            p6(100, TCP_ACK, 100),
            hop,
            p6(200, TCP_ACK, 100),
        ];
        let (writes, out) = run(&pkts, false);
        assert_eq!(out, norms(&pkts));
        assert_eq!(segments(&writes), [2, 1, 1]);
    }

    /// A TUN that refuses every super-packet with `errno` (EINVAL: as invalid), and with `all`
    /// every write; it counts the super-packets it was offered.
    struct Refusing {
        errno: i32,
        all: bool,
        offered: std::cell::Cell<usize>,
        written: Tun,
    }

    impl Refusing {
        fn new(errno: i32, all: bool) -> Self {
            Refusing {
                errno,
                all,
                offered: Default::default(),
                written: Default::default(),
            }
        }
    }

    impl Writes for Refusing {
        fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            let gso = iov[0][1] != 0;
            self.offered.set(self.offered.get() + usize::from(gso));
            if self.all || gso {
                return Err(io::Error::from_raw_os_error(self.errno));
            }
            self.written.write_vectored(iov)
        }
    }

    #[test]
    fn a_refused_super_packet_is_written_one_segment_at_a_time_as_it_came() {
        use nix::libc::{EINVAL, EIO};
        let mut pkts = vec![];
        for i in 0..6u32 {
            pkts.push(tcp(false, 40000, 1000 + i * 1399, TCP_ACK, 1399));
            pkts.push(udp(true, 5353, 1300, i as u8));
            let flags = if i == 5 { TCP_ACK | TCP_PSH } else { TCP_ACK };
            pkts.push(tcp(true, 40001, 7 + i * 1000, flags, 1000));
            pkts.push(udp(false, 5354, 1301, i as u8));
        }
        pkts.push(tcp(false, 40000, 1000 + 6 * 1399, TCP_ACK | TCP_PSH, 301));
        pkts.push(tcp(false, 40002, 0, 0x02, 0));
        assert_eq!(run(&pkts, true).0.len(), 5, "four super-packets and a SYN");
        let bufs = || -> Vec<Vec<u8>> {
            pkts.iter()
                .map(|p| [&[0xee; HEADER_LEN][..], p].concat())
                .collect()
        };
        let mut gro = Gro::new(64);
        let tun = Refusing::new(EINVAL, false);
        assert_eq!(gro.write(&tun, &mut bufs(), true), 0, "none lost");
        assert_eq!(tun.offered.get(), 4);
        let written = tun.written.0.into_inner();
        assert!(written.iter().all(|w| w[..HEADER_LEN] == [0; HEADER_LEN]));
        let got: Vec<&[u8]> = written.iter().map(|w| &w[HEADER_LEN..]).collect();
        assert_eq!(got.len(), pkts.len());
        // Each flow's packets in their order, each exactly as it came: the head's lengths, PSH
        // and checksums are its own again.
        for flow in pkts.iter().filter_map(|p| flow_of(p)) {
            let of = |p: &&[u8]| flow_of(p) == Some(flow);
            let sent: Vec<&[u8]> = pkts.iter().map(|p| &p[..]).filter(of).collect();
            assert_eq!(got.iter().copied().filter(of).collect::<Vec<_>>(), sent);
        }
        // Refused once, not offered again.
        let tun = Refusing::new(EINVAL, false);
        assert_eq!(gro.write(&tun, &mut bufs(), true), 0);
        assert_eq!(
            (tun.offered.get(), tun.written.0.borrow().len()),
            (0, pkts.len())
        );
        // Any other error is the device's, not a refusal: that write is lost, once counted.
        let tun = Refusing::new(EIO, false);
        assert_eq!(Gro::new(64).write(&tun, &mut bufs(), true), 7 + 6 + 6 + 6);
        assert_eq!(tun.written.0.borrow().len(), 1, "the SYN");
        let tun = Refusing::new(EINVAL, true);
        assert_eq!(
            Gro::new(64).write(&tun, &mut bufs(), true),
            pkts.len() as u64,
            "every packet refused is counted once"
        );
    }

    #[test]
    fn a_super_packet_holds_at_most_64_segments_and_64_kb() {
        let many: Vec<Vec<u8>> = (0..100)
            .map(|i| tcp(false, 40000, i * 10, TCP_ACK, 10))
            .collect();
        let (writes, out) = run(&many, false);
        assert_eq!(out, norms(&many));
        assert_eq!(segments(&writes), [64, 36]);
        for v6 in [false, true] {
            let big: Vec<Vec<u8>> = (0..50)
                .map(|i| tcp(v6, 40000, i * 1400, TCP_ACK, 1400))
                .collect();
            let (writes, out) = run(&big, false);
            assert_eq!(out, norms(&big));
            // 52 or 72 bytes of headers and 46 segments of 1400 fit under 65 535, 47 do not.
            assert_eq!(segments(&writes), [46, 4]);
        }
    }

    #[test]
    fn hostile_packets_are_written_as_they_came_and_nothing_panics() {
        let mut rand = dice(0x9e37_79b9);
        for _ in 0..20_000 {
            let mut pkts: Vec<Vec<u8>> = (0..rand(8) + 1)
                .map(|_| {
                    let mut p: Vec<u8> = (0..rand(120)).map(|_| rand(256) as u8).collect();
                    if let Some(b) = p.first_mut() {
                        *b = [0x45, 0x41, 0x60, 0x4f, *b][rand(5) as usize];
                    }
                    if p.len() > 9 && rand(2) == 0 {
                        p[9] = TCP;
                        p[6] = 0x40;
                    }
                    p
                })
                .collect();
            // A real segment first, so that the hostile ones meet an open super-packet.
            if rand(2) == 0 {
                pkts.insert(0, tcp(rand(2) == 0, 40000, 0, TCP_ACK, 100));
            }
            let mut bufs: Vec<Vec<u8>> = pkts
                .iter()
                .map(|p| [&[0; HEADER_LEN][..], p].concat())
                .collect();
            let tun = Tun::default();
            Gro::new(4).write(&tun, &mut bufs, true);
            let writes = tun.0.into_inner();
            assert!(writes.iter().all(|w| w[..HEADER_LEN] == [0; HEADER_LEN]));
            let written: Vec<&[u8]> = writes.iter().map(|w| &w[HEADER_LEN..]).collect();
            assert_eq!(written, pkts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }
    }

    #[test]
    fn flows_interleaved_stay_in_sequence_each_and_only_equal_headers_join() {
        // A random walk over four flows: segments in and out of order, pure ACKs, UDP, and
        // now and then another hop limit, ECN mark, acknowledgment, window or timestamp. Each
        // flow (by the walk's own numbering) must come out as it went in: a segment merged
        // into a head with other headers would come out with the head's.
        let mut rand = dice(0x2545_f491);
        let (mut packets, mut writes) = (0, 0);
        for _ in 0..300 {
            let mut next = [0u32; 4];
            let mut pkts = Vec::new();
            for _ in 0..rand(128) + 1 {
                let f = rand(4) as usize;
                let (v6, port) = (f % 2 == 1, 40000 + f as u16);
                let len = [1400, 1400, 1400, 700, 0][rand(5) as usize];
                let mut pkt = match rand(10) {
                    0 => tcp(v6, port, next[f].wrapping_sub(1400), TCP_ACK, 1400),
                    1 => udp(v6, port, 1300, 1),
                    _ => tcp(v6, port, next[f], TCP_ACK, len),
                };
                let t = if v6 { 40 } else { 20 };
                let tcp_pkt = pkt[if v6 { 6 } else { 9 }] == TCP;
                match rand(40) {
                    0 => pkt[if v6 { 7 } else { 8 }] = 9,
                    1 if v6 => pkt[1] |= 0x30,
                    1 => pkt[1] |= 0x03,
                    2 if tcp_pkt => pkt[t + 11] ^= 1,
                    3 if tcp_pkt => pkt[t + 15] ^= 1,
                    4 if tcp_pkt => pkt[t + 27] ^= 1,
                    _ => {}
                }
                refresh(&mut pkt);
                next[f] = next[f].wrapping_add(len as u32);
                pkts.push(pkt);
            }
            let (written, out) = run(&pkts, true);
            (packets, writes) = (packets + pkts.len(), writes + written.len());
            // The walk's flow: IP version, protocol and source port.
            let flow = |p: &Vec<u8>| {
                let (proto, t) = if p[0] >> 4 == 4 {
                    (p[9], 20)
                } else {
                    (p[6], 40)
                };
                (p[0] >> 4, proto, [p[t], p[t + 1]])
            };
            let want = norms(&pkts);
            for rep in &pkts {
                let w: Vec<&Vec<u8>> = want.iter().filter(|p| flow(p) == flow(rep)).collect();
                let g: Vec<&Vec<u8>> = out.iter().filter(|p| flow(p) == flow(rep)).collect();
                assert_eq!(g, w);
            }
            assert_eq!(out.len(), pkts.len());
        }
        assert!(
            writes * 4 < packets * 3,
            "{writes} writes for {packets} packets"
        );
    }
}
