//! The engine without devices: two (or three) engines wired back to back in memory.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use liqonet_proto::Cidr;

const HOME: &str = "192.0.2.1:51840";
const FOREIGN: &str = "192.0.2.2:51840";

/// Records what the engine sends. A lending recorder also offers room to encrypt and decrypt
/// into, as the I/O shell's batches do (filled with garbage first: the engine must not rely on
/// what is there); the tests pair a lending one with a plain one, so both paths run both ways.
#[derive(Default)]
struct Recorder {
    net: Vec<(SocketAddr, Vec<u8>)>,
    tun: Vec<Vec<u8>>,
    lend: bool,
    room: Vec<u8>,
    room_dst: Option<SocketAddr>,
    /// Datagrams and packets the engine wrote into lent room.
    committed: usize,
}

impl Recorder {
    fn lending() -> Self {
        Recorder {
            lend: true,
            ..Recorder::default()
        }
    }

    fn lend_room(&mut self, len: usize) -> Option<&mut [u8]> {
        if !self.lend {
            return None;
        }
        self.room.clear();
        self.room.resize(len + 256, 0xAA);
        Some(&mut self.room)
    }
}

impl Sink for Recorder {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.net.push((dst, datagram.to_vec()));
    }
    fn write_to_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
    fn datagram_room(&mut self, dst: SocketAddr, len: usize) -> Option<&mut [u8]> {
        self.room_dst = Some(dst);
        self.lend_room(len)
    }
    fn commit_datagram(&mut self, len: usize) {
        let dst = self.room_dst.take().expect("room was lent");
        self.net.push((dst, self.room[..len].to_vec()));
        self.committed += 1;
    }
    fn packet_room(&mut self, len: usize) -> Option<&mut [u8]> {
        self.lend_room(len)
    }
    fn commit_packet(&mut self, len: usize) {
        self.tun.push(self.room[..len].to_vec());
        self.committed += 1;
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn key(seed: u8) -> Key {
    Key::clamped([seed; 32])
}

fn public(k: &Key) -> Key {
    Key(PublicKey::from(&StaticSecret::from(k.0)).to_bytes())
}

fn net(s: &str) -> Network {
    let c: Cidr = s.parse().unwrap();
    Network {
        cidr: c,
        remapped: c,
    }
}

fn spec(name: &str, key: &Key, endpoint: Option<&str>, networks: &[&str]) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        public_key: public(key),
        endpoint: endpoint.map(addr),
        persistent_keepalive: None,
        networks: networks.iter().map(|n| net(n)).collect(),
    }
}

/// An IPv4/UDP packet with a 4-byte payload (checksums are not the engine's business here).
fn udp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0] = 0x45;
    p[3] = 32;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..32].copy_from_slice(b"ping");
    p
}

struct Pair {
    home: Engine,
    foreign: Engine,
    home_addr: SocketAddr,
    home_out: Recorder,
    foreign_out: Recorder,
}

impl Pair {
    /// home (10.244/16) peers with foreign (10.245/16); `foreign_knows_home` gives foreign an endpoint.
    fn new(foreign_knows_home: bool) -> Self {
        let (hk, fk) = (key(1), key(2));
        let home = Engine::new(
            &hk,
            vec![spec("foreign", &fk, Some(FOREIGN), &["10.245.0.0/16"])],
            1420,
        )
        .unwrap();
        let foreign = Engine::new(
            &fk,
            vec![spec(
                "home",
                &hk,
                foreign_knows_home.then_some(HOME),
                &["10.244.0.0/16"],
            )],
            1420,
        )
        .unwrap();
        Pair {
            home,
            foreign,
            home_addr: addr(HOME),
            home_out: Recorder::lending(),
            foreign_out: Recorder::default(),
        }
    }

    /// Carries datagrams between the two until neither has anything left to send.
    fn pump(&mut self) {
        for _ in 0..16 {
            let to_foreign = std::mem::take(&mut self.home_out.net);
            let to_home = std::mem::take(&mut self.foreign_out.net);
            if to_foreign.is_empty() && to_home.is_empty() {
                return;
            }
            for (dst, d) in to_foreign {
                assert_eq!(dst, addr(FOREIGN));
                self.foreign
                    .from_network(self.home_addr, &d, &mut self.foreign_out);
            }
            for (dst, d) in to_home {
                if dst == self.home_addr {
                    self.home
                        .from_network(addr(FOREIGN), &d, &mut self.home_out);
                }
            }
        }
        panic!("datagrams kept bouncing");
    }
}

#[test]
fn handshake_on_demand_then_data_both_ways() {
    let mut p = Pair::new(true);
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 10]);
    let original = pkt.clone();
    p.home.from_tun(&mut pkt, &mut p.home_out);
    assert_eq!(p.home_out.net.len(), 1, "a handshake initiation goes out");
    p.pump();
    assert_eq!(
        p.foreign_out.tun,
        vec![original.clone()],
        "the queued packet arrives after the handshake"
    );
    assert!(p.home.peer_is_up("foreign") && p.foreign.peer_is_up("home"));

    let mut reply = udp4([10, 245, 0, 10], [10, 244, 0, 10]);
    let reply_orig = reply.clone();
    p.foreign.from_tun(&mut reply, &mut p.foreign_out);
    p.pump();
    assert_eq!(p.home_out.tun, vec![reply_orig]);
    // With a session, home (whose sink lends room) encrypts and decrypts data in place; the
    // handshake went through the engine's own buffer.
    let mut again = original.clone();
    p.home.from_tun(&mut again, &mut p.home_out);
    p.pump();
    assert_eq!(p.foreign_out.tun, vec![original.clone(), original]);
    assert_eq!(p.home_out.committed, 2);
    for r in DropReason::ALL {
        assert_eq!(p.home.counters().get(r), 0, "{r:?}");
        assert_eq!(p.foreign.counters().get(r), 0, "{r:?}");
    }
}

#[test]
fn answer_only_peer_learns_the_endpoint_and_follows_roaming() {
    let mut p = Pair::new(false);
    let mut early = udp4([10, 245, 0, 10], [10, 244, 0, 10]);
    p.foreign.from_tun(&mut early, &mut p.foreign_out);
    assert!(p.foreign_out.net.is_empty());
    assert_eq!(p.foreign.counters().get(DropReason::NoEndpoint), 1);

    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 245, 0, 10]),
        &mut p.home_out,
    );
    p.pump();
    p.foreign.from_tun(
        &mut udp4([10, 245, 0, 10], [10, 244, 0, 10]),
        &mut p.foreign_out,
    );
    assert_eq!(p.foreign_out.net[0].0, addr(HOME));
    p.pump();
    assert_eq!(p.home_out.tun.len(), 1);

    // home moves: its next authenticated packet comes from elsewhere, and replies follow it.
    p.home_addr = addr("198.51.100.7:40000");
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 245, 0, 11]),
        &mut p.home_out,
    );
    p.pump();
    p.foreign.from_tun(
        &mut udp4([10, 245, 0, 11], [10, 244, 0, 10]),
        &mut p.foreign_out,
    );
    assert_eq!(p.foreign_out.net[0].0, addr("198.51.100.7:40000"));
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    let mut p = Pair::new(true);
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 245, 0, 10]),
        &mut p.home_out,
    );
    p.pump();
    // foreign sends from an address outside the networks home accepts from it.
    p.foreign.from_tun(
        &mut udp4([10, 99, 0, 1], [10, 244, 0, 10]),
        &mut p.foreign_out,
    );
    p.pump();
    assert!(p.home_out.tun.is_empty());
    assert_eq!(p.home.counters().get(DropReason::SourceNotAllowed), 1);
}

#[test]
fn wrong_public_key_gets_nothing_through() {
    let (hk, fk) = (key(1), key(2));
    let mut home = Engine::new(
        &hk,
        vec![spec("foreign", &key(9), Some(FOREIGN), &["10.245.0.0/16"])],
        1420,
    )
    .unwrap();
    let mut foreign = Engine::new(
        &fk,
        vec![spec("home", &hk, Some(HOME), &["10.244.0.0/16"])],
        1420,
    )
    .unwrap();
    let (mut ho, mut fo) = (Recorder::default(), Recorder::default());
    home.from_tun(&mut udp4([10, 244, 0, 10], [10, 245, 0, 10]), &mut ho);
    for (_, d) in ho.net.drain(..) {
        foreign.from_network(addr(HOME), &d, &mut fo);
    }
    assert!(fo.net.is_empty() && fo.tun.is_empty());
    assert_eq!(foreign.counters().get(DropReason::AuthFailed), 1);
    assert!(!foreign.peer_is_up("home"));
}

#[test]
fn unknown_peer_and_unrouted_destinations_are_counted() {
    let mut p = Pair::new(true);
    // A third cluster that foreign does not know initiates.
    let mut stranger = Engine::new(
        &key(7),
        vec![spec("foreign", &key(2), Some(FOREIGN), &["10.245.0.0/16"])],
        1420,
    )
    .unwrap();
    let mut so = Recorder::default();
    stranger.from_tun(&mut udp4([10, 246, 0, 1], [10, 245, 0, 10]), &mut so);
    p.foreign
        .from_network(addr("192.0.2.9:1"), &so.net[0].1, &mut p.foreign_out);
    assert_eq!(p.foreign.counters().get(DropReason::UnknownPeer), 1);
    assert!(p.foreign_out.net.is_empty());

    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [192, 168, 1, 1]),
        &mut p.home_out,
    );
    assert_eq!(p.home.counters().get(DropReason::NoRoute), 1);
    assert!(p.home_out.net.is_empty());
}

#[test]
fn routes_by_longest_prefix_over_several_peers() {
    let hk = key(1);
    let mut home = Engine::new(
        &hk,
        vec![
            spec(
                "a",
                &key(2),
                Some("192.0.2.2:1"),
                &["10.245.0.0/16", "10.96.0.0/12"],
            ),
            spec("b", &key(3), Some("192.0.2.3:1"), &["10.246.0.0/16"]),
            spec("c", &key(4), Some("[2001:db8::4]:1"), &["fd00:4::/64"]),
        ],
        1420,
    )
    .unwrap();
    let mut out = Recorder::default();
    home.from_tun(&mut udp4([10, 244, 0, 1], [10, 246, 3, 3]), &mut out);
    home.from_tun(&mut udp4([10, 244, 0, 1], [10, 100, 0, 1]), &mut out);
    let dsts: Vec<_> = out.net.iter().map(|(d, _)| *d).collect();
    assert_eq!(dsts, [addr("192.0.2.3:1"), addr("192.0.2.2:1")]);
}

#[test]
fn garbage_never_panics() {
    let mut p = Pair::new(true);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Make some of it look like WireGuard or IP so the deeper paths get exercised too.
        if let Some(b) = buf.first_mut() {
            *b = match i % 4 {
                0 => 1 + (*b % 4),
                1 => 0x45,
                2 => 0x60,
                _ => *b,
            };
        }
        p.foreign
            .from_network(p.home_addr, &buf, &mut p.foreign_out);
        p.home.from_tun(&mut buf, &mut p.home_out);
    }
    assert!(p.foreign_out.tun.is_empty());
    assert!(p.foreign.counters().get(DropReason::Malformed) > 0);
}

fn remapped(name: &str, key: &Key, endpoint: &str, cidr: &str, alias: &str) -> PeerSpec {
    PeerSpec {
        networks: vec![Network {
            cidr: cidr.parse().unwrap(),
            remapped: alias.parse().unwrap(),
        }],
        ..spec(name, key, Some(endpoint), &[])
    }
}

fn tcp(src: &str, dst: &str, syn: bool) -> Vec<u8> {
    use crate::wire::testing::{build, Spec, L4};
    let mss = [2, 4, 0x05, 0xb4]; // 1460, what a pod with MTU 1500 announces
    build(&Spec {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        ip_options: vec![],
        l4: L4::Tcp {
            syn,
            options: if syn { mss.to_vec() } else { vec![] },
            payload: b"GET /".to_vec(),
        },
    })
}

#[test]
fn overlapping_pod_cidrs_are_remapped_both_ways() {
    use crate::wire::testing::verify;
    use crate::wire::IpPacket;
    // Both clusters number pods from 10.244.0.0/16: home calls foreign 10.245/16, foreign calls home 10.246/16.
    let (hk, fk) = (key(1), key(2));
    let mut home = Engine::new(
        &hk,
        vec![remapped(
            "foreign",
            &fk,
            FOREIGN,
            "10.244.0.0/16",
            "10.245.0.0/16",
        )],
        1420,
    )
    .unwrap();
    let mut foreign = Engine::new(
        &fk,
        vec![remapped(
            "home",
            &hk,
            HOME,
            "10.244.0.0/16",
            "10.246.0.0/16",
        )],
        1420,
    )
    .unwrap();
    let (mut ho, mut fo) = (Recorder::lending(), Recorder::default());
    let shuttle =
        |home: &mut Engine, foreign: &mut Engine, ho: &mut Recorder, fo: &mut Recorder| {
            for _ in 0..8 {
                for (_, d) in std::mem::take(&mut ho.net) {
                    foreign.from_network(addr(HOME), &d, fo);
                }
                for (_, d) in std::mem::take(&mut fo.net) {
                    home.from_network(addr(FOREIGN), &d, ho);
                }
            }
        };
    let addrs = |p: &[u8]| {
        let v = IpPacket::new_checked(p).unwrap();
        (v.src_addr().to_string(), v.dst_addr().to_string())
    };

    home.from_tun(&mut tcp("10.244.1.5", "10.245.2.7", true), &mut ho);
    shuttle(&mut home, &mut foreign, &mut ho, &mut fo);
    let arrived = fo.tun.pop().unwrap();
    assert_eq!(addrs(&arrived), ("10.246.1.5".into(), "10.244.2.7".into()));
    assert_eq!(verify(&arrived), Ok(()));
    // The SYN's MSS was clamped to what fits the 1420-byte tunnel.
    assert_eq!(&arrived[40..44], &[2, 4, 0x05, 0x64]);

    foreign.from_tun(&mut tcp("10.244.2.7", "10.246.1.5", false), &mut fo);
    shuttle(&mut home, &mut foreign, &mut ho, &mut fo);
    let back = ho.tun.pop().unwrap();
    assert_eq!(addrs(&back), ("10.245.2.7".into(), "10.244.1.5".into()));
    assert_eq!(verify(&back), Ok(()));
}

#[test]
fn peers_sharing_a_cidr_are_told_apart_by_their_remapped_networks() {
    let hk = key(1);
    let mut home = Engine::new(
        &hk,
        vec![
            remapped(
                "a",
                &key(2),
                "192.0.2.2:1",
                "10.244.0.0/16",
                "10.245.0.0/16",
            ),
            remapped(
                "b",
                &key(3),
                "192.0.2.3:1",
                "10.244.0.0/16",
                "10.247.0.0/16",
            ),
        ],
        1420,
    )
    .unwrap();
    let mut out = Recorder::default();
    home.from_tun(&mut tcp("10.244.1.5", "10.247.0.9", false), &mut out);
    home.from_tun(&mut tcp("10.244.1.5", "10.245.0.9", false), &mut out);
    let dsts: Vec<_> = out.net.iter().map(|(d, _)| *d).collect();
    assert_eq!(dsts, [addr("192.0.2.3:1"), addr("192.0.2.2:1")]);
}

#[test]
fn peers_change_live_without_disturbing_the_others() {
    let mut p = Pair::new(true);
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 245, 0, 10]),
        &mut p.home_out,
    );
    p.pump();
    assert!(p.home.peer_is_up("foreign"));
    let foreign = spec("foreign", &key(2), Some(FOREIGN), &["10.245.0.0/16"]);
    let third = spec("third", &key(3), Some("192.0.2.3:1"), &["10.247.0.0/16"]);

    // Adding a peer keeps foreign's session: its next packet is data (type 4), not a handshake.
    let changes = p
        .home
        .apply_peers(vec![foreign.clone(), third.clone()])
        .unwrap();
    assert_eq!(
        (changes.added.as_slice(), changes.removed.len()),
        (&["third".to_string()][..], 0)
    );
    assert!(p.home.peer_is_up("foreign"));
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 245, 0, 11]),
        &mut p.home_out,
    );
    assert_eq!(p.home_out.net.last().unwrap().1[0], 4);
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 247, 0, 1]),
        &mut p.home_out,
    );
    assert_eq!(p.home_out.net.last().unwrap().0, addr("192.0.2.3:1"));
    p.home_out.net.clear(); // (third does not exist: nothing answers that handshake)

    // An inconsistent set changes nothing.
    let clash = spec("clash", &key(9), None, &["10.247.0.0/16"]);
    assert!(p
        .home
        .apply_peers(vec![foreign.clone(), third, clash])
        .is_err());
    assert!(p.home.peer_is_up("foreign"));

    // Removing a peer: its networks are no longer routed; foreign's session stays.
    let changes = p.home.apply_peers(vec![foreign.clone()]).unwrap();
    assert_eq!(changes.removed, ["third"]);
    let before = p.home.counters().get(DropReason::NoRoute);
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 247, 0, 1]),
        &mut p.home_out,
    );
    assert_eq!(p.home.counters().get(DropReason::NoRoute), before + 1);
    p.pump();
    assert!(p.home.peer_is_up("foreign"));

    // A new network for foreign is routed at once, through the same session.
    let mut wider = foreign;
    wider.networks.push(net("10.97.0.0/16"));
    let changes = p.home.apply_peers(vec![wider]).unwrap();
    assert_eq!(changes.updated, ["foreign"]);
    p.home
        .from_tun(&mut udp4([10, 244, 0, 10], [10, 97, 0, 1]), &mut p.home_out);
    assert_eq!(p.home_out.net.last().unwrap().1[0], 4);
}

#[test]
fn a_peer_with_an_endpoint_gets_a_handshake_at_the_first_tick() {
    let (hk, fk) = (key(1), key(2));
    let mut home = Engine::new(
        &hk,
        vec![spec("foreign", &fk, Some(FOREIGN), &["10.245.0.0/16"])],
        1420,
    )
    .unwrap();
    let mut foreign =
        Engine::new(&fk, vec![spec("home", &hk, None, &["10.244.0.0/16"])], 1420).unwrap();
    // Foreign knows no endpoint: it has nobody to start with.
    let mut idle = Recorder::default();
    foreign.tick(&mut idle);
    assert!(idle.net.is_empty());
    // Home starts one with no traffic waiting, and the session comes up.
    let mut out = Recorder::default();
    home.tick(&mut out);
    assert_eq!(out.net.len(), 1);
    assert_eq!((out.net[0].0, out.net[0].1[0]), (addr(FOREIGN), 1));
    let mut answer = Recorder::default();
    foreign.from_network(addr(HOME), &out.net[0].1, &mut answer);
    assert_eq!(answer.net.len(), 1);
    // The initiator confirms with a keepalive, which completes the responder's session.
    let mut confirm = Recorder::default();
    home.from_network(addr(FOREIGN), &answer.net[0].1, &mut confirm);
    for (_, d) in &confirm.net {
        foreign.from_network(addr(HOME), d, &mut Recorder::default());
    }
    assert!(home.peer_is_up("foreign") && foreign.peer_is_up("home"));
    // Once only.
    let mut later = Recorder::default();
    home.tick(&mut later);
    assert!(later.net.iter().all(|(_, d)| d[0] != 1), "{:?}", later.net);
    // A new endpoint for a kept peer starts one again, towards it.
    let moved = "192.0.2.3:51840";
    home.apply_peers(vec![spec("foreign", &fk, Some(moved), &["10.245.0.0/16"])])
        .unwrap();
    let mut again = Recorder::default();
    home.tick(&mut again);
    assert!(
        again
            .net
            .iter()
            .any(|(to, d)| *to == addr(moved) && d[0] == 1),
        "{:?}",
        again.net
    );
}

/// A handshake initiation from a key nobody configured, as a flood would send (the lab's).
fn stranger_initiation(to: &Key) -> Vec<u8> {
    liqonet_lab::attack::stranger_initiation(&to.to_base64()).unwrap()
}

#[test]
fn a_forged_cookie_reply_moves_nothing() {
    let mut p = Pair::new(true);
    p.home.tick(&mut p.home_out);
    let init = p.home_out.net.pop().unwrap().1;
    assert_eq!(init[0], 1);
    // Anyone who saw the initiation and knows foreign's public key can write this reply.
    let forger =
        boringtun::noise::rate_limiter::RateLimiter::new(&PublicKey::from(public(&key(2)).0), 0);
    let attacker = addr("192.0.2.66:4444");
    let mut buf = [0u8; 256];
    let cookie = match forger.verify_packet(Some(attacker.ip()), &init, &mut buf) {
        Err(TunnResult::WriteToNetwork(c)) => c.to_vec(),
        _ => panic!("no cookie"),
    };
    let mut out = Recorder::default();
    p.home.from_network(attacker, &cookie, &mut out);
    let mut stats = Vec::new();
    p.home.peer_stats(&mut stats);
    assert_eq!(stats[0].endpoint, Some(addr(FOREIGN)));
    // It may make home try again (with a MAC2), towards the real endpoint, once a second.
    assert!(
        out.net
            .iter()
            .all(|(to, d)| *to == addr(FOREIGN) && d[0] == 1),
        "{:?}",
        out.net
    );
    let mut again = Recorder::default();
    p.home.from_network(attacker, &cookie, &mut again);
    assert!(again.net.is_empty());
    // The session still comes up with the real foreign.
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 10]);
    p.home.from_tun(&mut pkt, &mut p.home_out);
    p.home_out.net.extend(out.net);
    p.pump();
    assert!(p.home.peer_is_up("foreign"));
    p.home.peer_stats(&mut stats);
    assert_eq!(stats[0].endpoint, Some(addr(FOREIGN)));
}

#[test]
fn a_handshake_flood_from_one_source_is_answered_a_few_times_and_a_restarted_peer_still_gets_in() {
    let mut p = Pair::new(true);
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 10]);
    p.home.from_tun(&mut pkt, &mut p.home_out);
    p.pump();
    assert!(p.home.peer_is_up("foreign"));
    let flood = stranger_initiation(&public(&key(1)));
    let flooder = addr("198.51.100.66:9999");
    let mut out = Recorder::default();
    for _ in 0..20_000 {
        p.home.from_network(flooder, &flood, &mut out);
    }
    let c = p.home.counters();
    let cookies = c.handshakes_sent("cookie_reply");
    assert!(cookies <= 10, "{cookies} cookie replies");
    assert!(c.get(DropReason::HandshakeRateLimited) > 19_000);
    assert!(out.net.iter().all(|(to, d)| *to == flooder && d[0] == 3));
    // Data still flows on the established session.
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 10]);
    p.home.from_tun(&mut pkt, &mut p.home_out);
    p.pump();
    assert_eq!(p.foreign_out.tun.len(), 2);
    // Foreign restarts (same key, fresh state) while home is under load: a cookie reply, an
    // initiation with MAC2 at once, and the session is back without waiting for a retry timer.
    p.foreign = Engine::new(
        &key(2),
        vec![spec("home", &key(1), Some(HOME), &["10.244.0.0/16"])],
        1420,
    )
    .unwrap();
    p.foreign.tick(&mut p.foreign_out);
    p.pump();
    assert!(p.foreign.peer_is_up("home"));
    assert_eq!(p.foreign.counters().handshakes_sent("initiation"), 2);
    let mut pkt = udp4([10, 245, 0, 10], [10, 244, 0, 10]);
    p.foreign.from_tun(&mut pkt, &mut p.foreign_out);
    p.pump();
    assert_eq!(p.home_out.tun.len(), 1);
}

/// Initiations in `out`, taken out of it (lost on the way).
fn lose_initiations(out: &mut Recorder) -> usize {
    let before = out.net.len();
    out.net.retain(|(_, d)| d[0] != 1);
    before - out.net.len()
}

#[test]
fn an_unanswered_handshake_is_retried_by_a_waiting_packet_after_a_second_not_five() {
    let mut p = Pair::new(true);
    // The start-up initiation is lost: the far side was not up yet.
    p.home.tick(&mut p.home_out);
    assert_eq!(lose_initiations(&mut p.home_out), 1);
    // A pod sends every 10 ms: its packets wait, and once the handshake has gone unanswered
    // for a second one of them sends a new initiation, at most one a second. These are lost
    // too, until the last.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, sent as u8]);
        p.home.from_tun(&mut pkt, &mut p.home_out);
        p.home.tick(&mut p.home_out);
        sent += 1;
        if started.elapsed() < Duration::from_millis(1500) {
            assert!(lose_initiations(&mut p.home_out) <= 1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // One at the start, one after 1 s, one after 2 s.
    assert_eq!(p.home.counters().handshakes_sent("initiation"), 3);
    assert_eq!(p.home_out.net.len(), 1, "{:?}", p.home_out.net);
    // The far side answers the last one, and the packets that waited go through.
    p.pump();
    assert!(p.home.peer_is_up("foreign"));
    assert_eq!(p.foreign_out.tun.len(), sent.min(256));
}

#[test]
fn a_responder_that_saw_the_first_initiation_answers_the_early_one() {
    let mut p = Pair::new(false);
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 10]);
    p.home.from_tun(&mut pkt, &mut p.home_out);
    // Foreign answers the first initiation, and its response is lost.
    let init = std::mem::take(&mut p.home_out.net);
    assert_eq!(init.len(), 1);
    p.foreign
        .from_network(p.home_addr, &init[0].1, &mut p.foreign_out);
    assert_eq!(p.foreign_out.net.len(), 1);
    p.foreign_out.net.clear();
    // Within the second a waiting packet sends nothing new; after it, a new initiation, which
    // foreign accepts.
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 11]);
    p.home.from_tun(&mut pkt, &mut p.home_out);
    assert!(p.home_out.net.is_empty());
    std::thread::sleep(EARLY_REINITIATION);
    let mut pkt = udp4([10, 244, 0, 10], [10, 245, 0, 12]);
    p.home.from_tun(&mut pkt, &mut p.home_out);
    assert_eq!(p.home_out.net.len(), 1);
    p.pump();
    assert!(p.home.peer_is_up("foreign") && p.foreign.peer_is_up("home"));
    assert_eq!(p.foreign_out.tun.len(), 3);
    assert_eq!(p.home.counters().handshakes_sent("initiation"), 2);
    assert_eq!(p.foreign.counters().get(DropReason::AuthFailed), 0);
}

#[test]
fn the_early_retry_waits_a_second_from_the_latest_initiation() {
    let mut p = Pair::new(true);
    let peer = p.home.peers[0].as_mut().unwrap();
    let t0 = Instant::now();
    assert!(!peer.early_reinitiation_due(t0), "nothing sent yet");
    peer.note_sent(&[1, 0, 0, 0], t0);
    assert!(!peer.early_reinitiation_due(t0 + Duration::from_millis(999)));
    assert!(peer.early_reinitiation_due(t0 + EARLY_REINITIATION));
    // Responses and data do not restart the clock; a new initiation does.
    peer.note_sent(&[2, 0, 0, 0], t0 + Duration::from_millis(900));
    peer.note_sent(&[4, 0, 0, 0], t0 + Duration::from_millis(900));
    assert!(peer.early_reinitiation_due(t0 + EARLY_REINITIATION));
    peer.note_sent(&[1, 0, 0, 0], t0 + EARLY_REINITIATION);
    assert!(!peer.early_reinitiation_due(t0 + Duration::from_millis(1999)));
}

#[test]
fn a_peer_with_the_gateways_own_key_is_refused() {
    let err = Engine::new(
        &key(1),
        vec![spec("me", &key(1), None, &["10.245.0.0/16"])],
        1420,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("this gateway's own"), "{err}");
}

#[test]
fn probes_measure_latency_and_a_silent_peer_goes_down_then_up_again() {
    let mut p = Pair::new(true);
    let probing = Probing {
        enabled: true,
        interval: std::time::Duration::ZERO,
        misses: 3,
    };
    p.home.set_probing(probing);
    p.foreign.set_probing(probing);
    p.home.tick(&mut p.home_out);
    p.pump();
    assert!(p.home.peer_is_up("foreign"));
    // Each tick sends a probe; foreign answers it; nothing reaches either TUN.
    for _ in 0..3 {
        p.home.tick(&mut p.home_out);
        p.pump();
    }
    assert!(p.foreign_out.tun.is_empty() && p.home_out.tun.is_empty());
    let l = p.home.latency("foreign").unwrap();
    assert!(l.last.is_some() && l.average.is_some(), "{l:?}");
    assert_eq!(l.lost, 0);
    let mut stats = Vec::new();
    p.home.peer_stats(&mut stats);
    assert!(stats[0].up);
    // Foreign goes silent (its datagrams are lost): after 3 misses home says down, though
    // WireGuard still has a session.
    for _ in 0..4 {
        p.home.tick(&mut p.home_out);
        let to_foreign = std::mem::take(&mut p.home_out.net);
        for (_, d) in to_foreign {
            p.foreign
                .from_network(p.home_addr, &d, &mut Recorder::default());
        }
    }
    p.home.peer_stats(&mut stats);
    assert!(
        !stats[0].up && p.home.peer_is_up("foreign"),
        "{:?}",
        stats[0]
    );
    assert!(stats[0].latency.lost >= 3);
    // The first answer brings it back.
    p.home.tick(&mut p.home_out);
    p.pump();
    p.home.peer_stats(&mut stats);
    assert!(stats[0].up);
}

#[test]
fn a_peer_that_never_answers_probes_is_judged_by_its_session() {
    // As a stock WireGuard peer: its probes go unanswered, it stays up while the session is.
    let mut p = Pair::new(true);
    p.home.set_probing(Probing {
        enabled: true,
        interval: std::time::Duration::ZERO,
        misses: 2,
    });
    p.home.tick(&mut p.home_out);
    p.pump();
    for _ in 0..5 {
        p.home.tick(&mut p.home_out);
        p.home_out.net.clear();
    }
    let mut stats = Vec::new();
    p.home.peer_stats(&mut stats);
    assert!(stats[0].up, "{:?}", stats[0]);
}

#[test]
fn a_decrypted_packet_shorter_than_an_ip_header_never_reaches_the_tun() {
    let mut p = Pair::new(true);
    p.home.from_tun(
        &mut udp4([10, 244, 0, 10], [10, 245, 0, 10]),
        &mut p.home_out,
    );
    p.pump();
    // A 20-byte header whose total length says 12: boringtun cuts the packet there, and its
    // source (10.245.0.10, past the cut) passes the cryptokey check.
    let mut short = udp4([10, 245, 0, 10], [10, 244, 0, 10]);
    short[2..4].copy_from_slice(&12u16.to_be_bytes());
    let sealed = |engine: &mut Engine| {
        let peer = engine.peers.iter_mut().flatten().next().unwrap();
        let mut buf = vec![0u8; 256];
        match peer.tunn.encapsulate(&short, &mut buf) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no session"),
        }
    };
    let (to_home, to_foreign) = (sealed(&mut p.foreign), sealed(&mut p.home));
    let delivered = (p.home_out.tun.len(), p.foreign_out.tun.len());
    // Home's sink lends room (decrypted in place), foreign's does not.
    p.home
        .from_network(addr(FOREIGN), &to_home, &mut p.home_out);
    p.foreign
        .from_network(p.home_addr, &to_foreign, &mut p.foreign_out);
    assert_eq!((p.home_out.tun.len(), p.foreign_out.tun.len()), delivered);
    assert_eq!(p.home.counters().get(DropReason::Malformed), 1);
    assert_eq!(p.foreign.counters().get(DropReason::Malformed), 1);
}
