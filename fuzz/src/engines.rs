//! The engines under test: home (remapping its peers) and foreign, a real peer engine, wired back
//! to back in memory; plus a bare boringtun session as a second peer ("quiet"), which encrypts
//! any bytes at all, a third peer ("silent") that never calls, and a fourth ("pending") at an
//! endpoint that never answers, so its handshake stays pending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use liqonet_gateway::engine::{DropReason, Engine, Network, PeerSpec, Sink, MAX_PACKET};
use liqonet_proto::{Cidr, Key};

use crate::packets;

pub const HOME: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51840);
pub const FOREIGN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51840);
pub const QUIET: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)), 51841);
/// The pending peer's endpoint: what home sends there goes nowhere.
pub const PENDING: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 4)), 51840);
pub const HOME_MTU: u16 = 1420;

/// An address no peer uses: where forged and replayed datagrams come from.
pub fn attacker(i: u8) -> SocketAddr {
    let port = 1024 + u16::from(i) * 7;
    if i % 4 == 3 {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(i), 0, 0, 0, 0, 1)),
            port,
        )
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)), port)
    }
}

pub fn key(seed: u8) -> Key {
    Key::clamped([seed; 32])
}

pub fn public(k: &Key) -> Key {
    Key(PublicKey::from(&StaticSecret::from(k.0)).to_bytes())
}

pub const HOME_KEY: u8 = 1;
pub const FOREIGN_KEY: u8 = 2;
pub const QUIET_KEY: u8 = 3;
pub const SILENT_KEY: u8 = 4;
pub const PENDING_KEY: u8 = 5;

fn cidr(s: &str) -> Cidr {
    s.parse().expect("a CIDR")
}

fn net(c: &str, r: &str) -> Network {
    Network {
        cidr: cidr(c),
        remapped: cidr(r),
    }
}

/// The quiet peer's networks: the same CIDRs as foreign's, known at home by other prefixes.
pub fn quiet_networks() -> Vec<Network> {
    vec![
        net("10.244.0.0/16", "10.247.0.0/16"),
        net("fd00:244::/64", "fd00:247::/64"),
    ]
}

pub fn silent_networks() -> Vec<Network> {
    vec![net("10.244.0.0/16", "10.250.0.0/16")]
}

pub fn pending_networks() -> Vec<Network> {
    vec![net("10.244.0.0/16", "10.251.0.0/16")]
}

/// Records what an engine emits.
#[derive(Default)]
pub struct Recorder {
    pub net: Vec<(SocketAddr, Vec<u8>)>,
    pub tun: Vec<Vec<u8>>,
}

impl Sink for Recorder {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.net.push((dst, datagram.to_vec()));
    }
    fn write_to_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
}

pub fn total_drops(e: &Engine) -> u64 {
    DropReason::ALL.iter().map(|&r| e.counters().get(r)).sum()
}

/// Cookie replies the engine accepted.
pub fn cookies_received(e: &Engine) -> u64 {
    e.counters().cookies_received()
}

pub struct Pair {
    pub home: Engine,
    pub foreign: Engine,
    /// The quiet peer: a bare session with home, under the quiet key.
    pub raw: Tunn,
    pub home_out: Recorder,
    pub foreign_out: Recorder,
    pub scratch: Vec<u8>,
}

impl Pair {
    /// Both engines built, and their sessions (and the quiet peer's) up.
    pub fn new() -> Pair {
        let home = Engine::new(
            &key(HOME_KEY),
            vec![
                PeerSpec {
                    name: "foreign".into(),
                    public_key: public(&key(FOREIGN_KEY)),
                    endpoint: Some(FOREIGN),
                    persistent_keepalive: None,
                    networks: packets::networks().to_vec(),
                },
                PeerSpec {
                    name: "quiet".into(),
                    public_key: public(&key(QUIET_KEY)),
                    endpoint: None,
                    persistent_keepalive: None,
                    networks: quiet_networks(),
                },
                PeerSpec {
                    name: "silent".into(),
                    public_key: public(&key(SILENT_KEY)),
                    endpoint: None,
                    persistent_keepalive: None,
                    networks: silent_networks(),
                },
                PeerSpec {
                    name: "pending".into(),
                    public_key: public(&key(PENDING_KEY)),
                    endpoint: Some(PENDING),
                    persistent_keepalive: None,
                    networks: pending_networks(),
                },
            ],
            HOME_MTU,
        )
        .expect("home's peers are consistent");
        // Foreign sends everything to home (so hostile packets pass its routing untouched) and
        // knows home's pods by another prefix (so its ingress rewrites too).
        let foreign = Engine::new(
            &key(FOREIGN_KEY),
            vec![PeerSpec {
                name: "home".into(),
                public_key: public(&key(HOME_KEY)),
                endpoint: Some(HOME),
                persistent_keepalive: None,
                networks: vec![
                    net("10.246.0.0/16", "10.249.0.0/16"),
                    net("0.0.0.0/0", "0.0.0.0/0"),
                    net("::/0", "::/0"),
                ],
            }],
            u16::MAX,
        )
        .expect("foreign's peer is consistent");
        let raw = Tunn::new(
            StaticSecret::from(key(QUIET_KEY).0),
            PublicKey::from(public(&key(HOME_KEY)).0),
            None,
            None,
            7,
            None,
        );
        let mut pair = Pair {
            home,
            foreign,
            raw,
            home_out: Recorder::default(),
            foreign_out: Recorder::default(),
            scratch: vec![0u8; MAX_PACKET],
        };
        pair.home.tick(&mut pair.home_out);
        pair.foreign.tick(&mut pair.foreign_out);
        if let TunnResult::WriteToNetwork(init) = pair
            .raw
            .format_handshake_initiation(&mut pair.scratch, false)
        {
            let init = init.to_vec();
            pair.home.from_network(QUIET, &init, &mut pair.home_out);
        }
        pair.pump();
        assert!(
            pair.home.peer_is_up("foreign")
                && pair.foreign.peer_is_up("home")
                && pair.home.peer_is_up("quiet"),
            "the engines did not complete their handshakes"
        );
        pair
    }

    /// Carries datagrams between the three until none is left (no checks: set-up only).
    pub fn pump(&mut self) {
        for _ in 0..16 {
            let to_foreign = std::mem::take(&mut self.home_out.net);
            let to_home = std::mem::take(&mut self.foreign_out.net);
            if to_foreign.is_empty() && to_home.is_empty() {
                break;
            }
            for (dst, d) in to_foreign {
                match dst {
                    FOREIGN => self.foreign.from_network(HOME, &d, &mut self.foreign_out),
                    QUIET => {
                        for reply in self.to_raw(&d) {
                            self.home.from_network(QUIET, &reply, &mut self.home_out);
                        }
                    }
                    _ => {}
                }
            }
            for (_, d) in to_home {
                self.home.from_network(FOREIGN, &d, &mut self.home_out);
            }
        }
        self.home_out.tun.clear();
        self.foreign_out.tun.clear();
    }

    /// Hands a datagram from home to the quiet peer; returns what it sends back.
    pub fn to_raw(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        let mut input = datagram;
        while let TunnResult::WriteToNetwork(d) =
            self.raw
                .decapsulate(Some(HOME.ip()), input, &mut self.scratch)
        {
            replies.push(d.to_vec());
            input = &[];
        }
        replies
    }
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}
