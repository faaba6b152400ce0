//! One foreign cluster as the engine sees it: a boringtun session, an endpoint, its networks.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use liqonet_proto::{Cidr, Key};

use super::probe::Health;

/// WireGuard message type of a handshake initiation.
const HANDSHAKE_INIT: u8 = 1;

/// How long a handshake may stay unanswered before a packet waiting for it sends a new
/// initiation, rather than waiting for boringtun's retry at REKEY_TIMEOUT (5 s).
///
/// A deliberate deviation from WireGuard, which sends one initiation per REKEY_TIMEOUT: an
/// initiation lost because the far side was not up yet (both sides installed or restarted
/// together, a failover to a gateway still starting) would otherwise hold every packet for
/// 5 s. At most one such early initiation leaves per second per peer, and only while packets
/// wait; responders accept them (the kernel, wireguard-go and boringtun limit a peer to 50
/// initiations a second and need only a newer timestamp).
pub const EARLY_REINITIATION: Duration = Duration::from_secs(1);

/// A network a peer exports: `cidr` as the peer numbers it, `remapped` as home pods address it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub cidr: Cidr,
    pub remapped: Cidr,
}

/// What the engine needs to know about a peer, resolved from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub networks: Vec<Network>,
}

pub(crate) struct Peer {
    pub spec: PeerSpec,
    pub tunn: Tunn,
    /// Where datagrams go: the configured endpoint, then wherever authenticated packets come from.
    pub endpoint: Option<SocketAddr>,
    /// Age of the current session when last looked at, to log handshakes and up/down changes.
    pub session_age: Option<Duration>,
    /// Whether any network is known by another prefix at home (else packets pass untouched).
    pub remaps: bool,
    /// Start a handshake at the next tick: the peer is new here (a start, a new leader, an
    /// added peer) or got a new endpoint, so the far side learns at once where we are instead
    /// of encrypting to a dead session until its own timers give up.
    pub initiate: bool,
    /// When a cookie reply last made us initiate again at once.
    pub cookie_retry: Option<Instant>,
    /// When our latest handshake initiation to this peer left (see [`EARLY_REINITIATION`]).
    pub last_initiation: Option<Instant>,
    /// In-tunnel probes: latency, loss, silence.
    pub health: Health,
    pub next_probe: Option<Instant>,
    /// Up as reported (metrics, status, logs): a session, and no silence from a peer that answers.
    pub up: bool,
    /// See [`super::PeerStats::incarnation`].
    pub incarnation: u64,
}

impl Peer {
    /// Cryptokey routing: may this peer send packets from `src`?
    pub fn allows_source(&self, src: IpAddr) -> bool {
        self.spec.networks.iter().any(|n| n.cidr.contains(src))
    }

    /// Egress: a home-side (remapped) address of this peer as the peer numbers it.
    pub fn to_cidr(&self, ip: IpAddr) -> Option<IpAddr> {
        self.spec
            .networks
            .iter()
            .find_map(|n| n.remapped.swap_prefix(ip, &n.cidr))
    }

    /// Ingress: an address of this peer as home pods know it.
    pub fn to_remapped(&self, ip: IpAddr) -> Option<IpAddr> {
        self.spec
            .networks
            .iter()
            .find_map(|n| n.cidr.swap_prefix(ip, &n.remapped))
    }

    /// May a cookie reply make us send a new initiation now? At most once a second.
    pub fn may_retry_with_cookie(&mut self) -> bool {
        let now = Instant::now();
        if self
            .cookie_retry
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.cookie_retry = Some(now);
        true
    }

    /// Notes a handshake message about to leave for this peer: an initiation restarts the
    /// clock of [`Peer::early_reinitiation_due`].
    pub fn note_sent(&mut self, datagram: &[u8], now: Instant) {
        if datagram.first() == Some(&HANDSHAKE_INIT) {
            self.last_initiation = Some(now);
        }
    }

    /// A packet has to wait for a handshake that is under way: has our latest initiation gone
    /// unanswered for [`EARLY_REINITIATION`]? (Then the packet sends a new one.)
    pub fn early_reinitiation_due(&self, now: Instant) -> bool {
        self.last_initiation
            .is_some_and(|t| now.saturating_duration_since(t) >= EARLY_REINITIATION)
    }

    /// Follows the peer to the address its latest authenticated packet came from.
    pub fn roam(&mut self, src: SocketAddr) {
        if self.endpoint != Some(src) {
            tracing::info!(peer = %self.spec.name, endpoint = %src, "peer endpoint is now {src}");
            self.endpoint = Some(src);
        }
    }
}
