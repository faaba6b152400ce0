//! No allocation per packet: a counting global allocator watches two engines carry a million
//! packets each way (remapped both ways, TCP and UDP, small to full-size, timers running), after
//! the session is up, and the TUN batches coalesce a million segments. Its own test binary;
//! allocations are counted per thread, so the tests do not see each other's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;

use boringtun::x25519::{PublicKey, StaticSecret};
use liqonet_gateway::engine::{Engine, Network, PeerSpec, Sink};
use liqonet_gateway::io::batch::{Packets, TunBatch};
use liqonet_gateway::io::gro::Writes;
use liqonet_gateway::wire::checksum;
use liqonet_proto::{Cidr, Key};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

/// Counts from here on this thread; the first allocation is the check that it counts at all.
fn start_counting() {
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(Box::new(7u64)));
    assert_eq!(ALLOCATIONS.with(|a| a.replace(0)), 1);
}

/// Stops counting; returns how many allocations were seen since `start_counting`.
fn stop_counting() -> u64 {
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is passed to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keeps the last datagram and packet in buffers allocated up front, as the I/O shell does; a
/// lending one has the engine encrypt and decrypt straight into them, as the shell's batches do.
struct Wire {
    lend: bool,
    datagram: Vec<u8>,
    datagram_len: usize,
    packet: Vec<u8>,
    packet_len: usize,
    datagrams: u64,
    packets: u64,
}

impl Wire {
    fn new(lend: bool) -> Self {
        Wire {
            lend,
            datagram: vec![0; 65_600],
            datagram_len: 0,
            packet: vec![0; 65_600],
            packet_len: 0,
            datagrams: 0,
            packets: 0,
        }
    }
}

impl Sink for Wire {
    fn send_to_network(&mut self, _dst: SocketAddr, datagram: &[u8]) {
        self.datagram[..datagram.len()].copy_from_slice(datagram);
        self.datagram_len = datagram.len();
        self.datagrams += 1;
    }
    fn write_to_tun(&mut self, packet: &[u8]) {
        self.packet[..packet.len()].copy_from_slice(packet);
        self.packet_len = packet.len();
        self.packets += 1;
    }
    fn datagram_room(&mut self, _dst: SocketAddr, _len: usize) -> Option<&mut [u8]> {
        self.lend.then_some(&mut self.datagram[..])
    }
    fn commit_datagram(&mut self, len: usize) {
        self.datagram_len = len;
        self.datagrams += 1;
    }
    fn packet_room(&mut self, _len: usize) -> Option<&mut [u8]> {
        self.lend.then_some(&mut self.packet[..])
    }
    fn commit_packet(&mut self, len: usize) {
        self.packet_len = len;
        self.packets += 1;
    }
}

fn peer(name: &str, secret: u8, endpoint: &str, cidr: &str, remapped: &str) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        public_key: Key(
            PublicKey::from(&StaticSecret::from(Key::clamped([secret; 32]).0)).to_bytes(),
        ),
        endpoint: Some(endpoint.parse().unwrap()),
        persistent_keepalive: None,
        networks: vec![Network {
            cidr: cidr.parse::<Cidr>().unwrap(),
            remapped: remapped.parse::<Cidr>().unwrap(),
        }],
    }
}

/// An IPv4 packet from `src` to `dst`: TCP (ACK, or SYN with an MSS option) or UDP, `len` bytes.
fn packet(src: [u8; 4], dst: [u8; 4], len: usize, kind: u8) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    if kind == 17 {
        p[9] = 17;
        p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    } else {
        p[9] = 6;
        p[32] = 6 << 4; // data offset: 24 bytes, room for the MSS option
        p[33] = if kind == 2 { 0x02 } else { 0x10 };
        p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    p
}

/// 99 more peers, without endpoints (idle), and 9 more networks for `foreign`, so home routes
/// 1 000 networks of 100 peers: the longest-prefix match and the cryptokey check at that size.
/// Beyond each peer's first network, each is 172.16.k.0/24 as the peer numbers it (they overlap,
/// as clusters built alike do) remapped at home to a prefix of its own.
fn crowd(foreign: &mut PeerSpec) -> Vec<PeerSpec> {
    let overlapping = |k: usize, remapped: String| Network {
        cidr: format!("172.16.{k}.0/24").parse().unwrap(),
        remapped: remapped.parse().unwrap(),
    };
    for k in 1..10 {
        foreign
            .networks
            .push(overlapping(k, format!("10.250.{k}.0/24")));
    }
    (0..99)
        .map(|i| {
            let at = |j: usize| format!("10.{}.{}.0/24", 1 + j / 256, j % 256);
            let mut p = peer(
                &format!("idle{i}"),
                10 + i as u8,
                HOME,
                &at(i * 10),
                &at(i * 10),
            );
            p.endpoint = None;
            p.networks
                .extend((1..10).map(|k| overlapping(k, at(i * 10 + k))));
            p
        })
        .collect()
}

const HOME: &str = "192.0.2.1:51840";

#[test]
fn a_million_packets_each_way_allocate_nothing() {
    const FOREIGN: &str = "192.0.2.2:51840";
    // Both clusters number their pods 10.244/16; each reaches the other as an alias. Home has
    // 99 idle peers besides.
    let mut foreign_spec = peer("foreign", 2, FOREIGN, "10.244.0.0/16", "10.245.0.0/16");
    let mut peers = crowd(&mut foreign_spec);
    peers.insert(0, foreign_spec);
    let mut home = Engine::new(&Key::clamped([1; 32]), peers, 1420).unwrap();
    let mut foreign = Engine::new(
        &Key::clamped([2; 32]),
        vec![peer("home", 1, HOME, "10.244.0.0/16", "10.246.0.0/16")],
        1420,
    )
    .unwrap();
    let (home_addr, foreign_addr): (SocketAddr, SocketAddr) =
        (HOME.parse().unwrap(), FOREIGN.parse().unwrap());
    // Home's sink lends room, foreign's does not: both of the engine's paths, both ways.
    let mut out = Wire::new(true);
    let mut back = Wire::new(false);
    let mut scratch = Wire::new(false);
    // The session comes up (allocations allowed: boringtun queues while a handshake is pending).
    home.tick(&mut out);
    foreign.from_network(home_addr, &out.datagram[..out.datagram_len], &mut back);
    home.from_network(foreign_addr, &back.datagram[..back.datagram_len], &mut out);
    foreign.from_network(home_addr, &out.datagram[..out.datagram_len], &mut scratch);
    assert!(home.peer_is_up("foreign") && foreign.peer_is_up("home"));

    let sizes = [64usize, 576, 1400];
    let mut outbound: Vec<Vec<u8>> = Vec::new();
    let mut inbound: Vec<Vec<u8>> = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        for kind in [17u8, 6, 2] {
            outbound.push(packet(
                [10, 244, 0, 10],
                [10, 245, 0, 20 + i as u8],
                len,
                kind,
            ));
            inbound.push(packet(
                [10, 244, 0, 20 + i as u8],
                [10, 246, 0, 10],
                len,
                kind,
            ));
        }
    }
    let mut buf = vec![0u8; 2048];
    const PACKETS: usize = 1_000_000;
    let (mut carried_out, mut carried_back) = (0u64, 0u64);
    start_counting();
    for n in 0..PACKETS {
        let p = &outbound[n % outbound.len()];
        buf[..p.len()].copy_from_slice(p);
        out.datagram_len = 0;
        home.from_tun(&mut buf[..p.len()], &mut out);
        foreign.from_network(home_addr, &out.datagram[..out.datagram_len], &mut back);
        carried_out += u64::from(back.packet_len == p.len());
        let p = &inbound[n % inbound.len()];
        buf[..p.len()].copy_from_slice(p);
        back.datagram_len = 0;
        foreign.from_tun(&mut buf[..p.len()], &mut back);
        home.from_network(foreign_addr, &back.datagram[..back.datagram_len], &mut out);
        carried_back += u64::from(out.packet_len == p.len());
        if n % 10_000 == 0 {
            home.tick(&mut scratch);
            foreign.tick(&mut scratch);
        }
    }
    let allocations = stop_counting();
    println!(
        "{PACKETS} packets each way ({carried_out} and {carried_back} delivered): {allocations} allocations"
    );
    assert_eq!(
        (carried_out, carried_back),
        (PACKETS as u64, PACKETS as u64)
    );
    assert_eq!(allocations, 0);
    assert!(out.datagrams >= PACKETS as u64 && out.packets >= PACKETS as u64);
}

/// A TUN that takes everything and remembers only how much.
#[derive(Default)]
struct Tun {
    writes: Cell<u64>,
    bytes: Cell<usize>,
}

impl Writes for Tun {
    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = iov.iter().map(|s| s.len()).sum();
        self.writes.set(self.writes.get() + 1);
        self.bytes.set(self.bytes.get() + n);
        Ok(n)
    }
}

impl Packets for Tun {
    fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.writes.set(self.writes.get() + 1);
        Ok(packet.len())
    }
    fn udp_offload(&self) -> bool {
        true
    }
}

/// A TCP segment (ACK, IPv4 with DF) of flow `port`, or a UDP datagram; transport checksums
/// are not the coalescer's business, the IPv4 header's is.
fn segment(port: u16, seq: u32, len: usize, udp: bool) -> Vec<u8> {
    let l4 = if udp { 8 } else { 20 };
    let mut p = vec![0u8; 20 + l4 + len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + l4 + len) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = if udp { 17 } else { 6 };
    p[12..16].copy_from_slice(&[10, 244, 0, 10]);
    p[16..20].copy_from_slice(&[10, 245, 0, 10]);
    let c = checksum::finish(checksum::sum(&p[..20], 0));
    checksum::write(&mut p, 10, c);
    p[20..22].copy_from_slice(&port.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    if udp {
        p[24..26].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    } else {
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x10;
    }
    p
}

#[test]
fn a_million_segments_coalesced_for_the_tun_allocate_nothing() {
    // Four TCP flows and a UDP one, interleaved; all segments built up front.
    const SEGMENTS: usize = 1_000_000;
    let mut seqs = [0u32; 4];
    let pkts: Vec<Vec<u8>> = (0..1000)
        .map(|i| match i % 5 {
            4 => segment(53, 0, 1300, true),
            f => {
                seqs[f] = seqs[f].wrapping_add(1400);
                segment(40000 + f as u16, seqs[f], 1400, false)
            }
        })
        .collect();
    let tun = Tun::default();
    let mut batch = TunBatch::new(true);
    // Warm: the batch's buffers reach their full size.
    for p in &pkts {
        batch.push(&tun, p);
    }
    batch.flush(&tun);
    let before = tun.writes.get();
    start_counting();
    for n in 0..SEGMENTS {
        batch.push(&tun, &pkts[n % pkts.len()]);
        if n % 100 == 99 {
            batch.flush(&tun);
        }
    }
    batch.flush(&tun);
    let allocations = stop_counting();
    let writes = tun.writes.get() - before;
    println!("{SEGMENTS} segments in {writes} writes: {allocations} allocations");
    assert_eq!(allocations, 0);
    assert_eq!(batch.errors, 0);
    // Coalesced: far fewer writes than segments.
    assert!(writes * 4 < SEGMENTS as u64, "{writes} writes");
}
