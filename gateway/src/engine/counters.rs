//! Why packets were dropped, counted per reason, and the handshake messages sent and received.

/// Every reason the engine drops a packet. The discriminant indexes [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A packet from the TUN that is not a well-formed IP packet.
    TunMalformed,
    /// A packet from the TUN for an address no peer exports.
    NoRoute,
    /// A packet for a peer whose endpoint is not known yet (it has no `endpoint` and has not called).
    NoEndpoint,
    /// A datagram that is not a WireGuard message.
    Malformed,
    /// A WireGuard message for a key or session index that belongs to no peer.
    UnknownPeer,
    /// A message that failed authentication (wrong key, bad MAC or AEAD tag, stale timestamp).
    AuthFailed,
    /// A data message replayed or too old for the replay window.
    Replayed,
    /// A data message for a session that no longer exists.
    NoSession,
    /// A decrypted packet whose inner source is outside the sending peer's networks.
    SourceNotAllowed,
    /// A packet larger than the engine's buffers.
    TooBig,
    /// A handshake message from a source that had its share of answers while under load.
    HandshakeRateLimited,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::TunMalformed,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::AuthFailed,
        DropReason::Replayed,
        DropReason::NoSession,
        DropReason::SourceNotAllowed,
        DropReason::TooBig,
        DropReason::HandshakeRateLimited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::TunMalformed => "tun_malformed",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replayed => "replayed",
            DropReason::NoSession => "no_session",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::TooBig => "too_big",
            DropReason::HandshakeRateLimited => "handshake_rate_limited",
        }
    }
}

/// Handshake message types, as WireGuard numbers them (index = type - 1).
pub const HANDSHAKE_TYPES: [&str; 3] = ["initiation", "response", "cookie_reply"];

#[derive(Debug, Default, Clone)]
pub struct Counters {
    drops: [u64; DropReason::ALL.len()],
    /// Handshake messages sent, by type.
    sent: [u64; 3],
    cookies_received: u64,
    /// Packets boringtun holds while a handshake is pending (sent once it completes; past its
    /// queue of 256, the oldest go).
    queued: u64,
}

impl Counters {
    pub fn count(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Counts a datagram about to be sent if it is a handshake message (data is not counted here).
    pub fn sent(&mut self, datagram: &[u8]) {
        if let Some(n) = datagram
            .first()
            .and_then(|&t| self.sent.get_mut(usize::from(t).wrapping_sub(1)))
        {
            *n += 1;
        }
    }

    /// Cookie replies accepted from peers under load.
    pub fn cookies_received(&self) -> u64 {
        self.cookies_received
    }

    pub fn received_cookie(&mut self) {
        self.cookies_received += 1;
    }

    pub fn count_queued(&mut self) {
        self.queued += 1;
    }

    /// Packets from the TUN held behind a pending handshake.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// Handshake messages of `kind` ("initiation", "response", "cookie_reply") sent.
    pub fn handshakes_sent(&self, kind: &str) -> u64 {
        HANDSHAKE_TYPES
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.sent[i])
    }
}
