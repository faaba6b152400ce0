//! The gateway's sans-IO core: packets in, packets out, no sockets or devices.
//!
//! The I/O shell feeds it packets read from the TUN ([`Engine::from_tun`]) and datagrams read from
//! UDP ([`Engine::from_network`]), calls [`Engine::tick`] a few times a second, and carries out what
//! the engine hands to its [`Sink`]. One scratch buffer is allocated up front; nothing is allocated
//! per packet once sessions are up (boringtun queues packets only while a handshake is pending).

mod admission;
mod counters;
mod peer;
pub mod probe;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use admission::{Admission, Verdict};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use liqonet_proto::{Key, PrefixTable};

use crate::wire::remap::{self, Field};
use crate::wire::{mss, IpPacket};
pub use counters::{Counters, DropReason, HANDSHAKE_TYPES};
use peer::Peer;
pub use peer::{Network, PeerSpec, EARLY_REINITIATION};
pub use probe::{Latency, Probing, RttHistogram, RTT_BUCKETS};

/// Largest datagram or packet the engine handles (a full IP packet plus WireGuard's overhead).
pub const MAX_PACKET: usize = 65535 + 64;

/// WireGuard message type of a cookie reply: anyone who knows the peer's public key and saw our
/// initiation can forge one, so it must not move the endpoint.
const COOKIE_REPLY: u8 = 3;
/// WireGuard message type of transport data.
const DATA: u8 = 4;

/// WireGuard's data message overhead: a 16-byte header and a 16-byte tag.
const DATA_OVERHEAD: usize = 32;

/// Where the engine's output goes. Implemented by the I/O shell, and by tests.
///
/// A sink that batches may also lend the engine room in its batch, so that data is encrypted or
/// decrypted straight into it instead of into the engine's buffer and then copied: a copy of
/// every byte fewer each way. Sinks that do not (the defaults) get everything through
/// `send_to_network` and `write_to_tun`.
pub trait Sink {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]);
    fn write_to_tun(&mut self, packet: &[u8]);
    /// Room for a datagram of `len` bytes to `dst`, taken by [`Sink::commit_datagram`] with the
    /// bytes written; left alone, it sends nothing. The slice must hold at least `len.max(148)`
    /// bytes: without a session the engine writes a handshake initiation (148 bytes) there.
    fn datagram_room(&mut self, _dst: SocketAddr, _len: usize) -> Option<&mut [u8]> {
        None
    }
    fn commit_datagram(&mut self, _len: usize) {}
    /// Room for a packet of up to `len` bytes for the TUN, taken by [`Sink::commit_packet`].
    fn packet_room(&mut self, _len: usize) -> Option<&mut [u8]> {
        None
    }
    fn commit_packet(&mut self, _len: usize) {}
}

/// What became of a packet that decrypted: for the TUN (this many bytes), or answered here.
enum Decrypted {
    Deliver(usize),
    ProbeRequest { seq: u32, sent_nanos: u64 },
    Consumed,
}

pub struct Engine {
    secret: StaticSecret,
    public: PublicKey,
    admission: Admission,
    /// Peers in stable slots: a slot's index is in its sessions' indices, so a peer keeps its
    /// slot for as long as it exists; removed peers leave a hole for the next one.
    peers: Vec<Option<Peer>>,
    by_key: HashMap<[u8; 32], usize>,
    /// Remapped network → slot in `peers`: the egress longest-prefix match.
    routes: PrefixTable<usize>,
    counters: Counters,
    /// Tunnel MTU, for MSS clamping.
    mtu: u16,
    buf: Box<[u8]>,
    probing: Probing,
    /// Probes carry nanoseconds since this instant.
    epoch: Instant,
    /// See [`Engine::instance`].
    instance: u64,
    /// A peer went up or down since [`Engine::take_up_changed`] last looked.
    up_changed: bool,
}

/// One peer's session and traffic, for status reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub name: String,
    pub public_key: Key,
    pub persistent_keepalive: Option<u16>,
    /// The peer's networks: `cidr` as it numbers them (what the cryptokey check accepts).
    pub networks: Vec<Network>,
    /// Age of the current session; `None` while no handshake has completed (or it expired).
    pub last_handshake_age: Option<std::time::Duration>,
    pub endpoint: Option<SocketAddr>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// A session, and (for a peer that answers probes) no run of unanswered probes.
    pub up: bool,
    pub latency: Latency,
    /// Every answered probe's round trip since the peer was added.
    pub rtt_histogram: RttHistogram,
    /// Which instance of the peer these counts are from: a re-keyed peer starts its byte and
    /// probe counts afresh under a new one, so totals outside the engine carry the old ones on.
    pub incarnation: u64,
}

/// What [`Engine::apply_peers`] changed, by peer name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("peer {peer:?}: network {network} is already routed to peer {other:?}")]
    DuplicateNetwork {
        peer: String,
        network: String,
        other: String,
    },
    #[error("peer {peer:?}: its public key is also peer {other:?}'s")]
    DuplicateKey { peer: String, other: String },
    #[error("peer {peer:?}: its public key is this gateway's own")]
    OwnKey { peer: String },
    #[error("too many peers (at most {0})")]
    TooManyPeers(usize),
}

/// Numbers engines and peers, so readers of their counters can tell a new one from an old one.
static INSTANCES: AtomicU64 = AtomicU64::new(1);

fn next_instance() -> u64 {
    INSTANCES.fetch_add(1, Ordering::Relaxed)
}

impl Engine {
    pub fn new(private_key: &Key, peers: Vec<PeerSpec>, mtu: u16) -> Result<Self, EngineError> {
        let secret = StaticSecret::from(private_key.0);
        let public = PublicKey::from(&secret);
        let mut engine = Engine {
            admission: Admission::new(&public),
            secret,
            public,
            peers: Vec::with_capacity(peers.len()),
            by_key: HashMap::new(),
            routes: PrefixTable::new(),
            counters: Counters::default(),
            mtu,
            buf: vec![0u8; MAX_PACKET].into_boxed_slice(),
            probing: Probing::default(),
            epoch: Instant::now(),
            instance: next_instance(),
            up_changed: false,
        };
        engine.apply_peers(peers)?;
        Ok(engine)
    }

    /// Makes `specs` the peers, live. A peer whose name and key stay keeps its slot and its
    /// session (its networks and endpoint are updated in place); a new or re-keyed peer starts
    /// afresh; a peer not in `specs` goes. Nothing changes if `specs` is inconsistent.
    pub fn apply_peers(&mut self, specs: Vec<PeerSpec>) -> Result<PeerChanges, EngineError> {
        check_unique(&specs)?;
        if let Some(own) = specs
            .iter()
            .find(|s| s.public_key.0 == self.public.to_bytes())
        {
            return Err(EngineError::OwnKey {
                peer: own.name.clone(),
            });
        }
        // Session indices carry the slot in their top 24 bits.
        const MAX_PEERS: usize = 1 << 24;
        if specs.len() > MAX_PEERS {
            return Err(EngineError::TooManyPeers(MAX_PEERS));
        }
        let mut old = std::mem::take(&mut self.peers);
        let mut slots: Vec<Option<Peer>> = (0..old.len()).map(|_| None).collect();
        let mut changes = PeerChanges::default();
        let mut fresh = Vec::new();
        for spec in specs {
            let kept = old.iter().position(|p| {
                p.as_ref().is_some_and(|p| {
                    p.spec.name == spec.name
                        && p.spec.public_key == spec.public_key
                        && p.spec.persistent_keepalive == spec.persistent_keepalive
                })
            });
            match kept.and_then(|i| old[i].take().map(|p| (i, p))) {
                Some((i, mut peer)) => {
                    if peer.spec.networks != spec.networks || peer.spec.endpoint != spec.endpoint {
                        changes.updated.push(spec.name.clone());
                    }
                    if peer.spec.endpoint != spec.endpoint && spec.endpoint.is_some() {
                        peer.endpoint = spec.endpoint;
                        peer.initiate = true;
                    }
                    peer.remaps = spec.networks.iter().any(|n| n.cidr != n.remapped);
                    peer.spec = spec;
                    slots[i] = Some(peer);
                }
                None => fresh.push(spec),
            }
        }
        changes.removed = old.into_iter().flatten().map(|p| p.spec.name).collect();
        for spec in fresh {
            let i = match slots.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    slots.push(None);
                    slots.len() - 1
                }
            };
            changes.added.push(spec.name.clone());
            slots[i] = Some(self.new_peer(i, spec));
        }
        self.peers = slots;
        self.routes = PrefixTable::new();
        self.by_key.clear();
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(p) = p {
                for net in &p.spec.networks {
                    self.routes.insert(net.remapped, i);
                }
                self.by_key.insert(p.spec.public_key.0, i);
            }
        }
        Ok(changes)
    }

    fn new_peer(&self, slot: usize, spec: PeerSpec) -> Peer {
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(spec.public_key.0),
            None,
            spec.persistent_keepalive.filter(|&k| k > 0),
            slot as u32,
            Some(self.admission.session_limiter()),
        );
        Peer {
            remaps: spec.networks.iter().any(|n| n.cidr != n.remapped),
            initiate: spec.endpoint.is_some(),
            endpoint: spec.endpoint,
            spec,
            tunn,
            session_age: None,
            cookie_retry: None,
            last_initiation: None,
            health: probe::Health::default(),
            next_probe: None,
            up: false,
            incarnation: next_instance(),
        }
    }

    /// How often peers are probed through the tunnel, and how many misses make one down.
    pub fn set_probing(&mut self, probing: Probing) {
        self.probing = probing;
    }

    pub fn public_key(&self) -> Key {
        Key(self.public.to_bytes())
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// This engine among those the process has made: a new one's counters start from zero.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Did a peer go up or down since the last call? (Readers are told at once, not at the
    /// next periodic publication.)
    pub fn take_up_changed(&mut self) -> bool {
        std::mem::take(&mut self.up_changed)
    }

    /// Whether handshake messages arrive too fast to answer without a cookie.
    pub fn under_load(&self) -> bool {
        self.admission.under_load(Instant::now())
    }

    /// A packet a local pod sent towards a foreign cluster: encrypt it for the peer that owns the
    /// destination. The packet is mutable so that address rewriting can happen in place.
    pub fn from_tun(&mut self, packet: &mut [u8], sink: &mut impl Sink) {
        // Parsed once: the destination for routing, the transport header for the MSS clamp
        // (remapping changes addresses, not where the headers are).
        let (dst, transport, end) = match IpPacket::new_checked(packet) {
            Ok(p) => (p.dst_addr(), p.transport(), p.present_len()),
            Err(_) => return self.counters.count(DropReason::TunMalformed),
        };
        let Some(&idx) = self.routes.lookup(dst) else {
            return self.counters.count(DropReason::NoRoute);
        };
        if packet.len() + 32 > self.buf.len() {
            return self.counters.count(DropReason::TooBig);
        }
        let Some(peer) = self.peers.get_mut(idx).and_then(Option::as_mut) else {
            return self.counters.count(DropReason::NoRoute);
        };
        if peer.remaps && remap::rewrite(packet, Field::Dst, &|a| peer.to_cidr(a)).is_err() {
            return self.counters.count(DropReason::TunMalformed);
        }
        if let Some(t) = transport {
            mss::clamp_at(packet, t, end, self.mtu);
        }
        // Without an endpoint nothing can be sent, not even a handshake: drop rather than queue.
        let Some(endpoint) = peer.endpoint else {
            return self.counters.count(DropReason::NoEndpoint);
        };
        // Into the sink's batch when it lends room. Anything but a data message (a handshake
        // initiation when no session is up, the packet waiting for it) is rare: it moves to the
        // engine's buffer and leaves as any other datagram.
        let len = packet.len() + DATA_OVERHEAD;
        let sealed = match sink.datagram_room(endpoint, len) {
            Some(room) => match peer.tunn.encapsulate(packet, room) {
                TunnResult::WriteToNetwork(d) if d.first() == Some(&DATA) => {
                    let n = d.len();
                    sink.commit_datagram(n);
                    return;
                }
                TunnResult::WriteToNetwork(d) => {
                    let n = d.len();
                    self.buf[..n].copy_from_slice(d);
                    Ok(Some(n))
                }
                TunnResult::Err(e) => Err(e),
                _ => Ok(None),
            },
            None => match peer.tunn.encapsulate(packet, &mut self.buf) {
                TunnResult::WriteToNetwork(d) => Ok(Some(d.len())),
                TunnResult::Err(e) => Err(e),
                _ => Ok(None),
            },
        };
        match sealed {
            Ok(Some(n)) => {
                let datagram = &self.buf[..n];
                // A handshake initiation when no session is up (the packet waits for it).
                if datagram.first() != Some(&DATA) {
                    peer.note_sent(datagram, Instant::now());
                    self.counters.sent(datagram);
                }
                sink.send_to_network(endpoint, datagram)
            }
            Err(e) => {
                tracing::debug!(peer = %peer.spec.name, error = ?e, "encapsulation failed");
                self.counters.count(drop_reason(&e));
            }
            // No session yet and a handshake under way: boringtun holds the packet for it.
            // If that handshake has gone unanswered for a second, the packet sends a new
            // initiation rather than waiting for the 5 s retry (see EARLY_REINITIATION).
            Ok(None) => {
                self.counters.count_queued();
                let now = Instant::now();
                if peer.early_reinitiation_due(now) {
                    if let TunnResult::WriteToNetwork(init) =
                        peer.tunn.format_handshake_initiation(&mut self.buf, true)
                    {
                        tracing::debug!(peer = %peer.spec.name, endpoint = %endpoint, "handshake unanswered for a second: initiating again");
                        peer.note_sent(init, now);
                        self.counters.sent(init);
                        sink.send_to_network(endpoint, init);
                    }
                }
            }
        }
    }

    /// A datagram from the underlay: authenticate, decrypt, check the inner source, hand it on.
    pub fn from_network(&mut self, src: SocketAddr, datagram: &[u8], sink: &mut impl Sink) {
        if datagram.len() > self.buf.len() {
            return self.counters.count(DropReason::TooBig);
        }
        let Some(idx) = self.identify(src, datagram, sink) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(idx).and_then(Option::as_mut) else {
            return self.counters.count(DropReason::UnknownPeer);
        };
        // Data decrypts straight into the sink's TUN batch when it lends room.
        if datagram.first() == Some(&DATA) {
            if let Some(room) = sink.packet_room(datagram.len()) {
                let (packet, inner_src) = match peer.tunn.decapsulate(
                    Some(src.ip()),
                    datagram,
                    room,
                ) {
                    TunnResult::WriteToTunnelV4(p, inner) => (p, IpAddr::from(inner)),
                    TunnResult::WriteToTunnelV6(p, inner) => (p, IpAddr::from(inner)),
                    // A keepalive: authenticated data, so the peer is where it came from.
                    TunnResult::Done => return peer.roam(src),
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %peer.spec.name, %src, error = ?e, "datagram rejected");
                        return self.counters.count(drop_reason(&e));
                    }
                    // Data never answers with a datagram; nothing to write.
                    TunnResult::WriteToNetwork(_) => return,
                };
                peer.roam(src);
                let decrypted = inner_packet(
                    peer,
                    &mut self.counters,
                    Inner {
                        mtu: self.mtu,
                        epoch: self.epoch,
                        up_changed: &mut self.up_changed,
                    },
                    packet,
                    inner_src,
                );
                return match decrypted {
                    Decrypted::Deliver(n) => sink.commit_packet(n),
                    Decrypted::ProbeRequest { seq, sent_nanos } => {
                        answer_probe(peer, &mut self.buf, src, seq, sent_nanos, sink)
                    }
                    Decrypted::Consumed => {}
                };
            }
        }
        let (packet, inner_src) =
            match peer
                .tunn
                .decapsulate(Some(src.ip()), datagram, &mut self.buf)
            {
                TunnResult::WriteToTunnelV4(packet, inner) => (packet, IpAddr::from(inner)),
                TunnResult::WriteToTunnelV6(packet, inner) => (packet, IpAddr::from(inner)),
                // A cookie reply: the far side is under load and wants our next initiation to
                // prove our address. Send it now rather than at the 5 s retry, at most once a
                // second (a forged reply could ask for one each time).
                TunnResult::Done if datagram.first() == Some(&COOKIE_REPLY) => {
                    self.counters.received_cookie();
                    if let (Some(ep), true) = (peer.endpoint, peer.may_retry_with_cookie()) {
                        if let TunnResult::WriteToNetwork(init) =
                            peer.tunn.format_handshake_initiation(&mut self.buf, true)
                        {
                            peer.note_sent(init, Instant::now());
                            self.counters.sent(init);
                            sink.send_to_network(ep, init);
                        }
                    }
                    return;
                }
                // A keepalive: authenticated data, so the peer is where it came from.
                TunnResult::Done => return peer.roam(src),
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %peer.spec.name, %src, error = ?e, "datagram rejected");
                    return self.counters.count(drop_reason(&e));
                }
                // The answer to a handshake message, which authenticated its sender.
                TunnResult::WriteToNetwork(reply) => {
                    peer.roam(src);
                    self.counters.sent(reply);
                    sink.send_to_network(src, reply);
                    // A completed handshake releases the packets queued while it was pending.
                    while let TunnResult::WriteToNetwork(queued) =
                        peer.tunn.decapsulate(None, &[], &mut self.buf)
                    {
                        sink.send_to_network(src, queued);
                    }
                    return;
                }
            };
        peer.roam(src);
        let inner = Inner {
            mtu: self.mtu,
            epoch: self.epoch,
            up_changed: &mut self.up_changed,
        };
        match inner_packet(peer, &mut self.counters, inner, packet, inner_src) {
            Decrypted::Deliver(n) => sink.write_to_tun(&self.buf[..n]),
            Decrypted::ProbeRequest { seq, sent_nanos } => {
                answer_probe(peer, &mut self.buf, src, seq, sent_nanos, sink)
            }
            Decrypted::Consumed => {}
        }
    }

    /// Which peer a datagram belongs to: by the sender's static key for a handshake initiation, by
    /// our session index otherwise. Handshake messages pass [`Admission`] first, which answers
    /// some with a cookie reply and drops others.
    fn identify(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        sink: &mut impl Sink,
    ) -> Option<usize> {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.counters.count(DropReason::Malformed);
                return None;
            }
        };
        if matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        ) {
            match self
                .admission
                .check(src.ip(), datagram, &mut self.buf, Instant::now())
            {
                Verdict::Admit => {}
                Verdict::Cookie(cookie) => {
                    self.counters.sent(cookie);
                    sink.send_to_network(src, cookie);
                    return None;
                }
                Verdict::Drop(reason) => {
                    self.counters.count(reason);
                    return None;
                }
            }
        }
        let idx = match packet {
            Packet::HandshakeInit(ref init) => {
                match parse_handshake_anon(&self.secret, &self.public, init) {
                    Ok(half) => match self.by_key.get(&half.peer_static_public) {
                        Some(&idx) => idx,
                        None => {
                            self.counters.count(DropReason::UnknownPeer);
                            return None;
                        }
                    },
                    Err(_) => {
                        self.counters.count(DropReason::AuthFailed);
                        return None;
                    }
                }
            }
            Packet::HandshakeResponse(p) => (p.receiver_idx >> 8) as usize,
            Packet::PacketCookieReply(p) => (p.receiver_idx >> 8) as usize,
            Packet::PacketData(p) => (p.receiver_idx >> 8) as usize,
        };
        if self.peers.get(idx).is_some_and(Option::is_some) {
            Some(idx)
        } else {
            self.counters.count(DropReason::UnknownPeer);
            None
        }
    }

    /// Runs WireGuard's timers (handshake retries, rekeys, keepalives); call every ~250 ms.
    pub fn tick(&mut self, sink: &mut impl Sink) {
        let now = Instant::now();
        self.admission.tick(now);
        for peer in self.peers.iter_mut().flatten() {
            if std::mem::take(&mut peer.initiate) {
                if let (Some(ep), TunnResult::WriteToNetwork(init)) = (
                    peer.endpoint,
                    peer.tunn.format_handshake_initiation(&mut self.buf, false),
                ) {
                    tracing::debug!(peer = %peer.spec.name, endpoint = %ep, "starting a handshake");
                    peer.note_sent(init, now);
                    self.counters.sent(init);
                    sink.send_to_network(ep, init);
                }
            }
            match peer.tunn.update_timers(&mut self.buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    if let Some(ep) = peer.endpoint {
                        peer.note_sent(datagram, now);
                        self.counters.sent(datagram);
                        sink.send_to_network(ep, datagram);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %peer.spec.name, error = ?e, "timer error")
                }
                _ => {}
            }
            let age = peer.tunn.stats().0;
            if let (Some(old), Some(new)) = (peer.session_age, age) {
                if new < old {
                    tracing::debug!(peer = %peer.spec.name, "handshake completed (rekey)");
                }
            }
            // Probe once an interval, through the session; without one the round is lost.
            if self.probing.enabled && peer.next_probe.is_none_or(|t| now >= t) {
                peer.next_probe = Some(now + self.probing.interval);
                if age.is_some() {
                    let seq = peer.health.next_probe();
                    let mut request = [0u8; probe::PROBE_LEN];
                    probe::request(&mut request, seq, self.epoch.elapsed().as_nanos() as u64);
                    if let (Some(ep), TunnResult::WriteToNetwork(d)) = (
                        peer.endpoint,
                        peer.tunn.encapsulate(&request, &mut self.buf),
                    ) {
                        sink.send_to_network(ep, d);
                    }
                } else {
                    peer.health.skipped();
                }
            }
            let silent = peer.health.silent(self.probing.misses);
            let up = age.is_some() && !silent;
            if up != peer.up {
                peer.up = up;
                self.up_changed = true;
                let name = &peer.spec.name;
                match (up, age.is_some(), peer.session_age.is_some()) {
                    (true, _, false) => {
                        tracing::info!(peer = %name, endpoint = ?peer.endpoint, "peer up: handshake completed")
                    }
                    (true, _, true) => {
                        tracing::info!(peer = %name, "peer up: probes answered again")
                    }
                    (false, false, _) => tracing::info!(peer = %name, "peer down: session expired"),
                    (false, true, _) => {
                        tracing::info!(peer = %name, misses = peer.health.misses(), "peer down: probes unanswered")
                    }
                }
            }
            peer.session_age = age;
        }
    }

    /// Is a session with this peer established? (By name; for status and tests.)
    pub fn peer_is_up(&self, name: &str) -> bool {
        self.peers
            .iter()
            .flatten()
            .any(|p| p.spec.name == name && p.tunn.stats().0.is_some())
    }

    /// Latency and loss of this peer's probes. (By name; for status and tests.)
    pub fn latency(&self, name: &str) -> Option<Latency> {
        self.peers
            .iter()
            .flatten()
            .find(|p| p.spec.name == name)
            .map(|p| p.health.latency())
    }

    /// Session state and traffic of every peer, into `out` (cleared first).
    pub fn peer_stats(&self, out: &mut Vec<PeerStats>) {
        out.clear();
        out.extend(self.peers.iter().flatten().map(|p| {
            let (age, tx, rx, _, _) = p.tunn.stats();
            PeerStats {
                name: p.spec.name.clone(),
                public_key: p.spec.public_key,
                persistent_keepalive: p.spec.persistent_keepalive,
                networks: p.spec.networks.clone(),
                last_handshake_age: age,
                endpoint: p.endpoint,
                rx_bytes: rx as u64,
                tx_bytes: tx as u64,
                up: p.up,
                latency: p.health.latency(),
                rtt_histogram: *p.health.histogram(),
                incarnation: p.incarnation,
            }
        }));
    }
}

/// What [`inner_packet`] needs of the engine besides the peer and the counters.
struct Inner<'a> {
    mtu: u16,
    epoch: Instant,
    up_changed: &'a mut bool,
}

/// A packet that decrypted, wherever it lies: a probe is taken here; anything else passes
/// cryptokey routing (only packets from the peer's own networks reach the TUN), then its
/// source becomes the address home pods know and its MSS is clamped, in place.
fn inner_packet(
    peer: &mut Peer,
    counters: &mut Counters,
    inner: Inner<'_>,
    packet: &mut [u8],
    inner_src: IpAddr,
) -> Decrypted {
    // boringtun cuts a packet to its header's length field, which may be shorter than an IP
    // header: such a packet must not reach the TUN, where it would spoil the whole batch.
    let least = if packet.first().is_some_and(|v| v >> 4 == 6) {
        40
    } else {
        20
    };
    if packet.len() < least {
        counters.count(DropReason::Malformed);
        return Decrypted::Consumed;
    }
    match probe::parse(packet) {
        probe::Parsed::NotAProbe => {}
        probe::Parsed::Request { seq, sent_nanos } => {
            return Decrypted::ProbeRequest { seq, sent_nanos }
        }
        probe::Parsed::Reply { seq, sent_nanos } => {
            let now = inner.epoch.elapsed().as_nanos() as u64;
            let rtt = std::time::Duration::from_nanos(now.saturating_sub(sent_nanos));
            if peer.health.answered(seq, rtt) && !peer.up && peer.tunn.stats().0.is_some() {
                peer.up = true;
                *inner.up_changed = true;
                tracing::info!(peer = %peer.spec.name, rtt = ?rtt, "peer up: probe answered");
            }
            return Decrypted::Consumed;
        }
    }
    if !peer.allows_source(inner_src) {
        counters.count(DropReason::SourceNotAllowed);
        return Decrypted::Consumed;
    }
    if peer.remaps && remap::rewrite(packet, Field::Src, &|a| peer.to_remapped(a)).is_err() {
        counters.count(DropReason::Malformed);
        return Decrypted::Consumed;
    }
    mss::clamp(packet, inner.mtu);
    Decrypted::Deliver(packet.len())
}

/// A probe is answered through the session it came by and never reaches the TUN.
fn answer_probe(
    peer: &mut Peer,
    buf: &mut [u8],
    src: SocketAddr,
    seq: u32,
    sent_nanos: u64,
    sink: &mut impl Sink,
) {
    let mut answer = [0u8; probe::PROBE_LEN];
    probe::reply(&mut answer, seq, sent_nanos);
    if let TunnResult::WriteToNetwork(d) = peer.tunn.encapsulate(&answer, buf) {
        sink.send_to_network(src, d);
    }
}

/// No two peers share a public key or a routed (remapped) network.
fn check_unique(specs: &[PeerSpec]) -> Result<(), EngineError> {
    for (i, spec) in specs.iter().enumerate() {
        if let Some(other) = specs[..i].iter().find(|o| o.public_key == spec.public_key) {
            return Err(EngineError::DuplicateKey {
                peer: spec.name.clone(),
                other: other.name.clone(),
            });
        }
        for net in &spec.networks {
            let taken = specs[..i]
                .iter()
                .find(|o| o.networks.iter().any(|n| n.remapped == net.remapped));
            if let Some(other) = taken {
                return Err(EngineError::DuplicateNetwork {
                    peer: spec.name.clone(),
                    network: net.remapped.to_string(),
                    other: other.name.clone(),
                });
            }
        }
    }
    Ok(())
}

fn drop_reason(e: &WireGuardError) -> DropReason {
    use WireGuardError::*;
    match e {
        InvalidCounter | DuplicateCounter => DropReason::Replayed,
        NoCurrentSession => DropReason::NoSession,
        WrongKey
        | InvalidMac
        | InvalidAeadTag
        | WrongIndex
        | InvalidTai64nTimestamp
        | WrongTai64nTimestamp
        | UnexpectedPacket => DropReason::AuthFailed,
        _ => DropReason::Malformed,
    }
}

#[cfg(test)]
mod tests;
