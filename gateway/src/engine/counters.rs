//! Why packets were dropped, counted per reason; rendered as Prometheus text.

use std::fmt::Write;

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
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
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
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    pub fn count(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP liqonet_dropped_packets_total Packets dropped by the gateway, by reason.\n",
        );
        out.push_str("# TYPE liqonet_dropped_packets_total counter\n");
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "liqonet_dropped_packets_total{{reason=\"{}\"}} {}",
                reason.name(),
                self.get(reason)
            );
        }
    }
}
