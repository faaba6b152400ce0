//! Helpers shared by liqonet's benchmarks: two engines with an established session.

use std::net::SocketAddr;

use liqonet_gateway::engine::{Engine, Network, PeerSpec, Sink};
use liqonet_gateway::keys::public_of;
use liqonet_proto::Key;

pub const HOME: &str = "192.0.2.1:51840";
pub const FOREIGN: &str = "192.0.2.2:51840";

/// Counts what went by, keeping the datagrams if asked. Like the gateway's batches, it lends
/// the engine room to encrypt and decrypt into, so the benches measure the path the gateway
/// takes.
pub struct Capture {
    pub datagrams: Vec<Vec<u8>>,
    pub keep: bool,
    pub sent: usize,
    pub delivered: usize,
    /// Lent to the engine.
    pub room: Vec<u8>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            datagrams: Vec::new(),
            keep: false,
            sent: 0,
            delivered: 0,
            room: vec![0; 70_000],
        }
    }
}

impl Sink for Capture {
    fn send_to_network(&mut self, _dst: SocketAddr, datagram: &[u8]) {
        self.sent += 1;
        if self.keep {
            self.datagrams.push(datagram.to_vec());
        }
    }
    fn write_to_tun(&mut self, _packet: &[u8]) {
        self.delivered += 1;
    }
    fn datagram_room(&mut self, _dst: SocketAddr, _len: usize) -> Option<&mut [u8]> {
        Some(&mut self.room)
    }
    fn commit_datagram(&mut self, len: usize) {
        self.sent += 1;
        if self.keep {
            self.datagrams.push(self.room[..len].to_vec());
        }
    }
    fn packet_room(&mut self, _len: usize) -> Option<&mut [u8]> {
        Some(&mut self.room)
    }
    fn commit_packet(&mut self, _len: usize) {
        self.delivered += 1;
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn spec(name: &str, key: &Key, endpoint: &str, cidr: &str) -> PeerSpec {
    let c = cidr.parse().expect("a CIDR");
    PeerSpec {
        name: name.into(),
        public_key: public_of(key),
        endpoint: Some(addr(endpoint)),
        persistent_keepalive: None,
        networks: vec![Network {
            cidr: c,
            remapped: c,
        }],
    }
}

/// An IPv4/TCP packet of `len` bytes from 10.244.0.10 to `dst` (a data segment: the remapping
/// fixes its checksum, the MSS clamp looks at its flags).
pub fn packet(len: usize, dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[32] = 0x50;
    p[33] = 0x18;
    p[12..16].copy_from_slice(&[10, 244, 0, 10]);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Home and foreign engines after a completed handshake. Home has `extra_peers` more peers
/// (10.{1..}.x.0/24), to show that cost per packet does not grow with their number. With
/// `remapped`, home knows foreign's 10.244.0.0/16 as 10.245.0.0/16 (else foreign is 10.245/16).
pub fn connected_pair(extra_peers: usize, remapped: bool) -> (Engine, Engine) {
    connected_pair_with(extra_peers, 1, remapped)
}

/// As [`connected_pair`], with `networks` networks per peer. Beyond each peer's first, every
/// network is 172.16.k.0/24 as the peer numbers it (the same for every peer, as clusters built
/// alike overlap), remapped at home to a prefix of its own: 10.{1..}.x.0/24 for the extra
/// peers, 10.250.k.0/24 for foreign.
pub fn connected_pair_with(
    extra_peers: usize,
    networks: usize,
    remapped: bool,
) -> (Engine, Engine) {
    let (hk, fk) = (Key::clamped([1; 32]), Key::clamped([2; 32]));
    let mut foreign_spec = spec("foreign", &fk, FOREIGN, "10.245.0.0/16");
    if remapped {
        foreign_spec.networks[0].cidr = "10.244.0.0/16".parse().expect("a CIDR");
    }
    let overlapping = |k: usize, remapped: String| Network {
        cidr: format!("172.16.{k}.0/24").parse().expect("a CIDR"),
        remapped: remapped.parse().expect("a CIDR"),
    };
    for k in 1..networks {
        foreign_spec
            .networks
            .push(overlapping(k, format!("10.250.{k}.0/24")));
    }
    let mut peers = vec![foreign_spec];
    for i in 0..extra_peers {
        let mut bytes = [9u8; 32];
        bytes[1..3].copy_from_slice(&(i as u16).to_be_bytes());
        let k = Key::clamped(bytes);
        let at = |j: usize| format!("10.{}.{}.0/24", 1 + j / 256, j % 256);
        let mut s = spec(&format!("p{i}"), &k, "192.0.2.9:1", &at(i * networks));
        for n in 1..networks {
            s.networks.push(overlapping(n, at(i * networks + n)));
        }
        peers.push(s);
    }
    let mut home = Engine::new(&hk, peers, 1420).expect("home engine");
    let mut home_spec = spec("home", &hk, HOME, "10.244.0.0/16");
    if remapped {
        home_spec.networks[0].remapped = "10.246.0.0/16".parse().expect("a CIDR");
    }
    let mut foreign = Engine::new(&fk, vec![home_spec], 1420).expect("foreign engine");
    let mut to_foreign = Capture {
        keep: true,
        ..Default::default()
    };
    home.from_tun(&mut packet(100, [10, 245, 0, 10]), &mut to_foreign);
    for _ in 0..4 {
        let mut to_home = Capture {
            keep: true,
            ..Default::default()
        };
        for d in to_foreign.datagrams.drain(..) {
            foreign.from_network(addr(HOME), &d, &mut to_home);
        }
        for d in to_home.datagrams.drain(..) {
            home.from_network(addr(FOREIGN), &d, &mut to_foreign);
        }
    }
    assert!(home.peer_is_up("foreign"), "handshake did not complete");
    (home, foreign)
}

pub fn foreign_addr() -> SocketAddr {
    addr(FOREIGN)
}

pub fn home_addr() -> SocketAddr {
    addr(HOME)
}

/// Keeps every datagram with where it goes.
#[derive(Default)]
pub struct Routed {
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    pub delivered: usize,
}

impl Sink for Routed {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.datagrams.push((dst, datagram.to_vec()));
    }
    fn write_to_tun(&mut self, _packet: &[u8]) {
        self.delivered += 1;
    }
}

/// Where the `i`th far gateway of [`hub`] listens.
pub fn spoke_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 2], 10_000 + i as u16))
}

/// A home engine with `n` peers, each a far engine of its own with a completed handshake
/// (peer `i` exports 10.{1 + i/256}.{i%256}.0/24), to measure what the peers cost together.
pub fn hub(n: usize) -> (Engine, Vec<Engine>) {
    let hk = Key::clamped([1; 32]);
    let keys: Vec<Key> = (0..n)
        .map(|i| {
            let mut bytes = [9u8; 32];
            bytes[1..3].copy_from_slice(&(i as u16).to_be_bytes());
            Key::clamped(bytes)
        })
        .collect();
    let cidr = |i: usize| format!("10.{}.{}.0/24", 1 + i / 256, i % 256);
    let peers = (0..n)
        .map(|i| {
            let mut s = spec(&format!("p{i}"), &keys[i], HOME, &cidr(i));
            s.endpoint = Some(spoke_addr(i));
            s
        })
        .collect();
    let mut home = Engine::new(&hk, peers, 1420).expect("home engine");
    let mut spokes: Vec<Engine> = keys
        .iter()
        .map(|k| {
            Engine::new(k, vec![spec("home", &hk, HOME, "10.244.0.0/16")], 1420)
                .expect("far engine")
        })
        .collect();
    let mut out = Routed::default();
    for i in 0..n {
        let ip = [10, 1 + (i / 256) as u8, (i % 256) as u8, 10];
        home.from_tun(&mut packet(100, ip), &mut out);
    }
    exchange(&mut home, &mut spokes, out);
    for i in 0..n {
        assert!(
            home.peer_is_up(&format!("p{i}")),
            "handshake {i} did not complete"
        );
    }
    (home, spokes)
}

/// Carries `out` (home's datagrams) to the spokes and their answers back, until both are quiet.
pub fn exchange(home: &mut Engine, spokes: &mut [Engine], mut out: Routed) -> usize {
    let mut carried = 0;
    while !out.datagrams.is_empty() {
        let mut back = Routed::default();
        for (dst, d) in out.datagrams.drain(..) {
            let i = usize::from(dst.port() - 10_000);
            let mut answer = Routed::default();
            spokes[i].from_network(addr(HOME), &d, &mut answer);
            for (_, a) in answer.datagrams {
                home.from_network(spoke_addr(i), &a, &mut back);
            }
            carried += 1;
        }
        out = back;
    }
    carried
}
